// AutoLimitDriver: applies AutoLimit's decisions to live VMs (guestmem/README.md#auto-limits).
// One thread (or a caller's step()) that, every period, reads each auto VM's stats,
// asks its AutoLimit for a decision, caps it by the VM's share of the host budget
// (split_budget, by measured need rather than memory size), and applies it through
// the same path as `ctl set-limit` (GuestMemory::set_resident_limit), asking the
// VM's balloon first where the caller says it has one. Every decision that changes
// something is logged; the last one and limit_source "auto" are in the VM's stats.
// A limit set by anyone else (ctl set-limit) takes the VM off auto, logged: the driver
// replaces only the limit it read (GuestMemory::replace_resident_limit), so a limit set
// by hand while a step decides is never overwritten, and the next step sees it.
//
// Threads: step() on the driver thread (or a test's); enable/disable from any
// thread. VMs are reached through HostMemory's VmRefs, one step at a time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "guestmem/auto_limit.hpp"
#include "guestmem/host_memory.hpp"

namespace swapvisor::guestmem {

// What the VMM provides: the balloon of a VM, where it has one. set_balloon asks it to
// hold `balloon_bytes` and returns false when the VM has no balloon (it is then not
// asked again). Empty: no VM has a balloon.
struct AutoLimitHooks {
    std::function<bool(const std::string& vm, std::uint64_t balloon_bytes)> set_balloon;
    // Called by step() after it decided and before it applies, without the driver's
    // lock (tests land a `ctl set-limit` there). Empty: nothing.
    std::function<void()> before_apply;
};

class AutoLimitDriver {
public:
    static constexpr double kBudgetHeadroom = 0.1;  // each auto VM's want: need + 10 %

    AutoLimitDriver(HostMemory& host, AutoLimitHooks hooks);
    ~AutoLimitDriver();
    AutoLimitDriver(const AutoLimitDriver&) = delete;
    AutoLimitDriver& operator=(const AutoLimitDriver&) = delete;

    // The config of VMs the driver puts on auto by itself: those created with
    // MemoryConfig::auto_limit, and with `all_unlimited` (serve --auto-limits) every VM
    // created without a resident limit. A VM taken off auto by hand stays off.
    void set_defaults(AutoLimitConfig config, bool all_unlimited);
    // Put a VM on auto (resident-limit=auto) / take it off (its limit stays where it is).
    void enable(const std::string& vm, AutoLimitConfig config);
    void disable(const std::string& vm);
    bool is_auto(const std::string& vm) const;

    // One round over every auto VM at `now`.
    void step(MonoTime now);
    // Run step() every period on a thread of its own until stop() or destruction.
    void start(std::chrono::milliseconds period = std::chrono::milliseconds(1000));
    void stop();

private:
    struct Vm {
        AutoLimit engine;
        std::optional<std::uint64_t> applied_balloon;
        bool balloon = true;  // until set_balloon says the VM has none
        std::optional<std::uint64_t> limit_sets;       // GuestMemory::resident_limit_sets when first seen
    };
    HostMemory& host_;
    AutoLimitHooks hooks_;
    // Protects: vms_, stopping_. Order: leaf — never held while calling HostMemory,
    // a VM or a hook (step() decides under it, then applies without it).
    mutable std::mutex mutex_;
    std::map<std::string, Vm> vms_;
    std::set<std::string> seen_;  // VMs already considered for auto by the defaults
    AutoLimitConfig defaults_;
    bool all_unlimited_ = false;
    bool stopping_ = false;
    std::condition_variable wake_;
    std::thread thread_;
};

}  // namespace swapvisor::guestmem
