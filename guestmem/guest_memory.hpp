// GuestMemory: one VM's RAM (guestmem/README.md). It wires the pieces together —
// MemfdKernel (the memfds, their two views and the userfaultfd), the Stage2 table,
// Limits (the reclaim policy) and Transitions (the page-state machine) — and is a
// client of the host-wide workers that drive them: the fault workers that resolve
// its userfaultfd faults (fault_service.cpp) and the reclaim workers that keep it
// under its limit (reclaimer.cpp). Devices and the loader never touch the guest view: they call
// read/write/discard here, which make the page present first.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "guestmem/access_age.hpp"
#include "guestmem/addr.hpp"
#include "guestmem/auto_limit.hpp"
#include "guestmem/latency_histogram.hpp"
#include "guestmem/memfd_kernel.hpp"
#include "guestmem/owner_tag.hpp"
#include "guestmem/stage2.hpp"
#include "guestmem/stall.hpp"
#include "io/result.hpp"

namespace swapvisor::io { class Ring; }
namespace swapvisor::swap {
class SwapPool;
struct SlotCopy;
}  // namespace swapvisor::swap

namespace swapvisor::guestmem {

class HostBudget;
class GuestMemory;
class ReclaimService;
class FaultService;
class MemorySnapshot;
struct RestoreOptions;

// The threads guestmem starts, for a caller that confines each kind (vmm installs
// a seccomp filter per role from this hook). The fault workers (fault_service.hpp)
// are `fault_service`; the reclaim workers (reclaim_service.hpp) are `reclaimer`:
// they scan and write back. `writeback` is no longer started.
enum class ThreadRole : std::uint8_t { fault_service, reclaimer, writeback };
// Called on each such thread once its own resources (io_uring) exist, before it
// serves anything. Must not fail: a hook that cannot confine the thread aborts.
using ThreadStartHook = std::function<void(ThreadRole)>;

struct MemoryConfig {
    std::string name = "vm0";
    std::uint64_t memory_bytes = 0;      // multiple of 2 MiB
    std::uint64_t resident_limit = 0;    // 0 = no per-VM limit
    // The VM's vCPUs (its faulting threads): the stall's "full" is all of them stalled,
    // and at most this many of its faults are served at once (FaultService::cap_for).
    unsigned vcpus = 1;
    std::uint64_t swap_quota = 0;        // bytes of swap this VM may fill; 0 = no quota
    // May be empty. Called on this VM's own thread (a restore's filler), and on the
    // workers of a fault and a reclaim service of its own (a VM outside a
    // HostMemory); the host's workers call HostMemory::set_worker_start_hook's instead.
    ThreadStartHook on_thread_start;
    // Working-set measurement (README#working-set): pages accessed within this window
    // are the working set; a swap-in of one is a refault.
    std::chrono::seconds working_set_window{120};
    // The age scan: the CLOCK hand also sweeps every page once per period while the
    // reclaimer is idle, zapping resident pages so the next access is seen (one MINOR
    // fault per page in use per period). 0: the hand moves only to reclaim, and the
    // cold-age histogram is only as fresh as the last reclaim sweep.
    std::chrono::milliseconds age_scan_period{0};
    // The sampled age scan (access_age.hpp AgeSampling): each sweep of the age scan
    // zaps a rotating 1/age_scan_sample of the resident pages (2 MiB groups) and the
    // histogram extrapolates from them: 1/N of the faults, ages above one period
    // exact only to within N periods. 1: every page (1..AgeSampling::kMax).
    unsigned age_scan_sample = 1;
    // resident-limit=auto: an AutoLimitDriver over this VM's HostMemory sizes its limit
    // (auto_limit_driver.hpp); resident_limit is then only the starting point.
    bool auto_limit = false;
    // This VM's controller settings under auto (stall target, floor, ceiling); none:
    // the driver's defaults (AutoLimitDriver::set_defaults).
    std::optional<AutoLimitConfig> auto_config;
};

// Build one VM's memory (HostMemory::create_vm is the usual way). host: the host
// budget this VM counts against (null: none); pool: its swap (null: no swap);
// service / faults: the host-wide reclaim and fault workers it is a client of (null:
// a small service of its own, reclaim_service.hpp, fault_service.hpp). They must
// outlive the VM.
Result<std::unique_ptr<GuestMemory>> create_guest_memory(const MemoryConfig& config, VmId id, HostBudget* host,
                                                          swap::SwapPool* pool, ReclaimService* service = nullptr,
                                                          FaultService* faults = nullptr);

struct MemStats {
    std::string name;
    std::uint64_t memory_bytes = 0;
    std::uint64_t resident_limit = 0;
    std::uint64_t swap_quota_bytes = 0;  // 0 = none
    std::uint64_t resident_bytes = 0;
    std::uint64_t resident_bytes_peak = 0;
    std::uint64_t swapped_bytes = 0;
    std::uint64_t swap_out_pages = 0;
    std::uint64_t swap_in_pages = 0;
    std::uint64_t major_faults = 0;
    std::uint64_t minor_faults = 0;
    std::uint64_t zero_pages = 0;       // evicted as zero without any write
    std::uint64_t clean_drops = 0;      // evicted again without a write (clean copy in swap)
    std::uint64_t discarded_pages = 0;
    std::uint64_t lost_pages = 0;       // swap-in failed: page poisoned, VM told
    std::uint64_t wp_faults = 0;        // first write to a clean page (its swap copy dropped)
    std::uint64_t throttle_waits = 0;   // faults that waited for the reclaimer
    std::uint64_t readahead_pages = 0;  // swapped in ahead of a sequential run
    std::uint64_t limit_overshoots = 0; // pages added over a limit that could not be held
    std::uint64_t overshoot_bytes = 0;  // resident above the limit in force, now
    std::string limit_state;            // "held", or why not ("no swap device", "swap full", ...)
    LatencySnapshot swapin_seconds;     // major faults: picked up -> page mapped (README#faults)

    // --- working set and memory stall (README#working-set, #memory-stall) ---
    AgeSnapshot cold_age_seconds;        // touched pages by time since last access (last full sweep)
    std::uint64_t working_set_bytes = 0; // touched pages accessed within working_set_window
    std::uint64_t working_set_window_seconds = 0;
    std::uint64_t age_scan_age_ms = 0;   // how old the last full sweep is (0: none yet)
    std::uint64_t age_scan_sample = 1;   // the sweep zaps 1/N of the resident pages (1: all)
    std::uint64_t refaults = 0;          // swap-ins of pages accessed within the window
    std::uint64_t stalls = 0;            // faults that were memory stalls
    std::uint64_t stall_some_ns = 0;     // totals since start
    std::uint64_t stall_full_ns = 0;
    double refaults_per_min = 0;         // over the last 60 s
    double refault_ws_per_min = 0;       // refaults_per_min / working-set pages
    double stall_some_avg10 = 0, stall_some_avg60 = 0, stall_some_avg300 = 0;  // fractions of wall time
    double stall_full_avg10 = 0, stall_full_avg60 = 0, stall_full_avg300 = 0;
    std::vector<ThreadStall> stall_threads;  // per faulting thread (vCPU), share over 60 s
    std::string limit_source = "manual";     // "manual", or "auto" (auto_limit.hpp)
    std::string auto_decision;               // the controller's last decision and reason
};

// The numeric MemStats fields by their protocol names (the control socket's
// status/stats and --stats-json print exactly these): one list, so a new counter is
// added here and in the struct, and every report has it.
enum class StatLevel : bool { basic, full };  // full: only in `stats` / --stats-json
struct MemStatField {
    const char* name;
    std::uint64_t MemStats::*member;
    StatLevel level;
};
inline constexpr MemStatField kMemStatFields[] = {
    {"memory_bytes", &MemStats::memory_bytes, StatLevel::basic},
    {"resident_limit", &MemStats::resident_limit, StatLevel::basic},
    {"swap_quota_bytes", &MemStats::swap_quota_bytes, StatLevel::basic},
    {"resident_bytes", &MemStats::resident_bytes, StatLevel::basic},
    {"resident_bytes_peak", &MemStats::resident_bytes_peak, StatLevel::basic},
    {"swapped_bytes", &MemStats::swapped_bytes, StatLevel::basic},
    {"swap_out_pages", &MemStats::swap_out_pages, StatLevel::basic},
    {"swap_in_pages", &MemStats::swap_in_pages, StatLevel::basic},
    {"major_faults", &MemStats::major_faults, StatLevel::basic},
    {"minor_faults", &MemStats::minor_faults, StatLevel::basic},
    {"zero_pages", &MemStats::zero_pages, StatLevel::basic},
    {"discarded_pages", &MemStats::discarded_pages, StatLevel::basic},
    {"overshoot_bytes", &MemStats::overshoot_bytes, StatLevel::basic},
    {"clean_drops", &MemStats::clean_drops, StatLevel::full},
    {"lost_pages", &MemStats::lost_pages, StatLevel::full},
    {"wp_faults", &MemStats::wp_faults, StatLevel::full},
    {"throttle_waits", &MemStats::throttle_waits, StatLevel::full},
    {"readahead_pages", &MemStats::readahead_pages, StatLevel::full},
    {"limit_overshoots", &MemStats::limit_overshoots, StatLevel::full},
    {"working_set_bytes", &MemStats::working_set_bytes, StatLevel::basic},
    {"working_set_window_seconds", &MemStats::working_set_window_seconds, StatLevel::full},
    {"age_scan_age_ms", &MemStats::age_scan_age_ms, StatLevel::full},
    {"age_scan_sample", &MemStats::age_scan_sample, StatLevel::full},
    {"refaults", &MemStats::refaults, StatLevel::basic},
    {"stalls", &MemStats::stalls, StatLevel::full},
    {"stall_some_ns", &MemStats::stall_some_ns, StatLevel::full},
    {"stall_full_ns", &MemStats::stall_full_ns, StatLevel::full},
};

// The MemStats ratios (doubles) by their protocol names, like kMemStatFields.
struct MemRatioField {
    const char* name;
    double MemStats::*member;
    StatLevel level;
};
inline constexpr MemRatioField kMemRatioFields[] = {
    {"stall_some_avg10", &MemStats::stall_some_avg10, StatLevel::basic},
    {"stall_some_avg60", &MemStats::stall_some_avg60, StatLevel::basic},
    {"stall_some_avg300", &MemStats::stall_some_avg300, StatLevel::basic},
    {"stall_full_avg10", &MemStats::stall_full_avg10, StatLevel::basic},
    {"stall_full_avg60", &MemStats::stall_full_avg60, StatLevel::basic},
    {"stall_full_avg300", &MemStats::stall_full_avg300, StatLevel::basic},
    {"refaults_per_min", &MemStats::refaults_per_min, StatLevel::basic},
    {"refault_ws_per_min", &MemStats::refault_ws_per_min, StatLevel::full},
};

// The cold-age histogram by its protocol name (buckets kAgeBuckets, in seconds):
// `cold_age_seconds_bucket`, `_sum`, `_count` like kMemHistogramFields.
inline constexpr const char* kColdAgeField = "cold_age_seconds";

// The MemStats histograms by their protocol names, like kMemStatFields: each is
// `<name>_bucket` (cumulative, keyed by its `le` bound in seconds), `<name>_sum`
// (seconds) and `<name>_count` in every report, as Prometheus names a histogram.
struct MemHistogramField {
    const char* name;
    LatencySnapshot MemStats::*member;
    StatLevel level;
};
inline constexpr MemHistogramField kMemHistogramFields[] = {
    {"swapin_seconds", &MemStats::swapin_seconds, StatLevel::basic},
};

class GuestMemory {
public:
    ~GuestMemory();
    GuestMemory(const GuestMemory&) = delete;
    GuestMemory& operator=(const GuestMemory&) = delete;

    std::span<const RegionView> regions() const;
    std::uint64_t memory_bytes() const { return config_.memory_bytes; }
    const std::string& name() const { return config_.name; }
    bool auto_limit_requested() const { return config_.auto_limit; }
    const std::optional<AutoLimitConfig>& auto_limit_config() const { return config_.auto_config; }
    VmId id() const { return id_; }

    // Copy bytes into / out of guest memory through the VMM view, swapping pages in
    // first where needed. Ranges must lie inside RAM.
    Result<void> write(Gpa gpa, std::span<const std::byte> bytes);
    Result<void> read(Gpa gpa, std::span<std::byte> bytes);
    // Drop the pages of a page-aligned range: the next touch reads zeros.
    Result<void> discard(GpaRange range);

    // Join the fault and reclaim services (after the loader has written the image).
    Result<void> start();
    // Leave them (VM exit): the VM's uffd leaves the fault workers' set, its parked
    // faults are dropped (their threads woken), the batches already queued are
    // written and completed, the VM leaves the reclaim service. Idempotent.
    void stop();

    void set_resident_limit(std::uint64_t bytes);
    // set_resident_limit only if the limit is still `expected` (what a controller read
    // before deciding); false, with nothing changed, if it was set since (by hand).
    bool replace_resident_limit(std::uint64_t expected, std::uint64_t bytes);
    // How many times set_resident_limit ran (replace_resident_limit does not count).
    std::uint64_t resident_limit_sets() const;
    // Per-VM swap quota on the shared pool (0 = none); at it, the VM stays resident
    // (over its limit if it must: limit_state "swap quota reached").
    void set_swap_quota(std::uint64_t bytes);
    MemStats stats() const;
    // The auto-limit controller's notes (auto_limit.hpp): where the limit comes from
    // and its last decision, shown in stats.
    void set_limit_note(std::string source, std::string decision);

    // Swapoff (through HostMemory): bring the page at `page` back from vslot, or drop
    // its clean copy there; false when it no longer refers to vslot.
    Result<bool> bring_back(PageIdx page, swap::VSlot vslot, const swap::SlotCopy* copy, io::Ring& ring);
    // Pages this VM could take back without going over its own limit.
    std::uint64_t bring_back_room() const;
    // Swapoff --force: the data at vslot is unreadable; the page becomes lost (or its
    // clean copy is dropped). False when the page no longer refers to vslot.
    bool lose_page(PageIdx page, swap::VSlot vslot, const Error& why);
    // Wake the reclaimer (the host budget changed).
    void kick_reclaimer();

    // Snapshots (docs/SNAPSHOT.md, snapshot.hpp). Save this VM's memory into dir while
    // no vCPU runs (the reclaimer and writeback may): resident pages into a sparse
    // image, swapped pages and clean copies by reference (each vslot held), written
    // atomically. The returned snapshot holds those references until released.
    Result<std::unique_ptr<MemorySnapshot>> save(const std::filesystem::path& dir);
    // A VM restored from a snapshot: write the order of its first faults so far as
    // the snapshot's working-set file (atomically); the next restore prefetches it.
    Result<void> save_working_set() const;

    // Introspection for tests and leak checks: the stage-2 entry of a page, and how
    // many VSlots this VM's entries refer to (swapped pages + clean copies).
    PageEntry entry(Gpa gpa) const;
    std::uint64_t referenced_vslots() const;

    struct Impl;

private:
    friend Result<std::unique_ptr<GuestMemory>> create_guest_memory(const MemoryConfig&, VmId, HostBudget*,
                                                                     swap::SwapPool*, ReclaimService*, FaultService*);
    friend Result<std::unique_ptr<GuestMemory>> restore_guest_memory(const MemoryConfig&, VmId, HostBudget*,
                                                                      swap::SwapPool*, const MemorySnapshot&,
                                                                      const RestoreOptions&, ReclaimService*,
                                                                      FaultService*);
    GuestMemory(MemoryConfig config, VmId id);
    MemoryConfig config_;
    VmId id_;
    std::unique_ptr<Impl> impl_;
};

}  // namespace swapvisor::guestmem
