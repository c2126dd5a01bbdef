// VmHost: the VMs of one swapvisor process, each built the same way whether `run`
// names it on the command line or `serve` gets it over the control socket
// (vm-create): read the kernel, build its guest memory under the host budget, create
// the KVM VM and its devices, load the kernel, start guest memory, and run its vCPUs
// on a runner thread (vmm/README.md#daemon). It implements control::VmControl, the
// interface through which the control socket reaches the VMs.
//
// Lifecycle of one VM:  running <-> paused -> ended -> (vm-remove) gone.
// When a VM ends (its guest exits, or vm-stop / a signal stops it) its runner thread
// flushes the serial line and stops guest memory; with Release::when_ended (serve)
// it then destroys the devices and the Vm and removes the guest memory from
// HostMemory, which frees its VSlots, and checks that none is left. The VM stays
// listed with its exit code until vm-remove. With Release::at_exit (`run`) memory
// is kept until the VmHost is destroyed, so --stats-json can still read it.
//
// Invariants: names are unique among listed VMs (ended ones included); a create
// that fails leaves nothing behind (no memory, no device counters, no entry), so no
// other VM changes; a Vm is destroyed before the guest memory it maps.
//
// Threads: methods are called from main, the control thread and control workers;
// mutex_ protects the table. Each VM has its runner thread (joined by remove_vm or
// the destructor).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "guestmem/host_memory.hpp"
#include "io/result.hpp"
#include "vmm/cli/config.hpp"
#include "vmm/control/device_stats.hpp"
#include "vmm/control/vm_control.hpp"
#include "vmm/devices/device_manager.hpp"
#include "vmm/devices/virtio_balloon.hpp"
#include "vmm/kvm/kvm.hpp"
#include "vmm/sandbox/seccomp.hpp"
#include "vmm/vm.hpp"

namespace swapvisor::vmm {

// When an ended VM's guest memory goes back to the host (see the file comment).
enum class Release { when_ended, at_exit };
// Serial lines of several VMs sharing stdout carry "[name] ".
enum class SerialPrefix { none, name };

class VmHost final : public control::VmControl {
public:
    // `kvm`, `host` and `stats` must outlive the VmHost.
    VmHost(const kvm::Kvm& kvm, guestmem::HostMemory& host, control::DeviceStats& stats, Release release);
    ~VmHost() override;  // stops every VM still running and joins its runner
    VmHost(const VmHost&) = delete;
    VmHost& operator=(const VmHost&) = delete;

    // Build one VM and start it running. Errors: VmErrc::exists, VmErrc::bad_spec
    // (context names the field), or the failing step's error with the VM as context.
    Result<control::VmInfo> start(const cli::VmSpec& spec, SerialPrefix prefix);
    // Confine the threads of VMs started from now on (vmm/sandbox); off by default.
    void set_seccomp(sandbox::Seccomp s) { seccomp_ = s; }
    // How often the balloon of a VM made by vm-create asks its guest for statistics
    // (serve --balloon-stats-interval; 0: only when status / stats read them).
    void set_balloon_stats_interval(std::chrono::milliseconds interval) { balloon_stats_interval_ = interval; }
    // Block until every VM listed now has ended (`run`).
    void wait_all();
    // End every running VM with `end` (a signal).
    void stop_all(const VmEnd& end);
    // How each listed VM ended so far (running ones are absent).
    std::vector<std::pair<std::string, VmEnd>> ends() const;

    // control::VmControl
    Result<control::VmInfo> create_vm(const control::VmCreateSpec& spec) override;
    Result<control::VmInfo> stop_vm(const std::string& name, std::chrono::milliseconds timeout) override;
    Result<control::VmInfo> pause_vm(const std::string& name) override;
    Result<control::VmInfo> resume_vm(const std::string& name) override;
    Result<void> remove_vm(const std::string& name) override;
    std::vector<control::VmInfo> list_vms() const override;
    Result<std::uint64_t> set_balloon(const std::string& name, std::uint64_t bytes) override;
    void shut_down() override;

private:
    sandbox::Seccomp seccomp_ = sandbox::Seccomp::off;
    std::chrono::milliseconds balloon_stats_interval_ = devices::VirtioBalloon::kDefaultStatsInterval;
    struct Hosted;
    void run_vm(Hosted& vm);
    void release(Hosted& vm);
    control::VmInfo info_of(const Hosted& vm) const;  // mutex_ held
    Hosted* find(const std::string& name) const;      // mutex_ held

    const kvm::Kvm& kvm_;
    guestmem::HostMemory& host_;
    control::DeviceStats& stats_;
    const Release release_;
    // Protects: vms_ and every Hosted's state; Order: before HostMemory's and
    // DeviceStats' own locks (never taken while holding those).
    mutable std::mutex mutex_;
    std::condition_variable changed_;  // a VM ended or was released
    std::map<std::string, std::unique_ptr<Hosted>> vms_;
    bool closing_ = false;  // the watcher ends
    bool shutting_down_ = false;  // shut_down(): no new VM, vm-stop waits no grace period

    // The event watcher: every 500 ms, one log line per change of a VM's limit
    // state (over its limit, and why) and of a swap device's state (degraded,
    // failed). Reads counters only. Declared last: started after, joined before,
    // everything above.
    void watch();
    std::thread watcher_;
};

}  // namespace swapvisor::vmm
