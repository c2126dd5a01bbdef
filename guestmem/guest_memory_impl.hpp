// GuestMemory::Impl: the parts of one VM's memory and the threads that drive them.
// Members are declared in dependency order (teardown is the reverse): the kernel
// (memfds, views, userfaultfd), the table, the counts and policy, then the
// Transitions that use them all.
//
// Threads (guestmem/README.md#threads):
//   fault workers  — host-wide (FaultService, or this VM's own small one): read one
//                    message of its userfaultfd at a time, choose the row, park a
//                    fault that would wait for room (parked, under park_mutex);
//   reclaim workers — host-wide (ReclaimService, shared by every VM of a HostMemory, or
//                    this VM's own small one): this VM is one of their clients. A
//                    worker runs either one CLOCK scan step of it (one worker at a
//                    time: clock_hand and the age scan are the step's) or writes and
//                    completes one of its queued batches (rows 5 / 7 / 7');
//   callers        — read/write/discard, and the swapoff thread's bring_back.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "guestmem/access_age.hpp"
#include "guestmem/fault_service.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/limits.hpp"
#include "guestmem/memfd_kernel.hpp"
#include "guestmem/reclaim_service.hpp"
#include "guestmem/stage2.hpp"
#include "guestmem/snapshot_image.hpp"
#include "guestmem/stall.hpp"
#include "guestmem/transitions.hpp"
#include "guestmem/writeback_queue.hpp"
#include "io/ring.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::guestmem {

inline constexpr std::uint64_t kFaultAroundPages = MemfdKernel::kMaxZeroRun;
inline constexpr std::uint64_t kReadaheadPages = 16;

struct GuestMemory::Impl final : ReclaimClient, ReclaimWaker, FaultClient, RoomListener {
    // service / faults: the host's reclaim and fault workers (null: this VM gets its
    // own, kPrivateWorkers / vcpus + 1).
    Impl(const MemoryConfig& config, VmId id, HostBudget* host, swap::SwapPool* pool, ReclaimService* service,
         FaultService* faults, std::unique_ptr<MemfdKernel> kernel, Stage2 table, AccessAges ages);
    // A VM outside a HostMemory (tests, tools) runs its reclaim on a service of its
    // own this big: the same code as the host's, as many threads as the reclaimer
    // and 2 writeback threads a VM had before (reclaim_service.cpp kMinWorkers).
    static constexpr unsigned kPrivateWorkers = 3;

    // Declared first: destroyed last, after every member its workers could reach
    // (they have left: stop() detached this VM).
    std::unique_ptr<ReclaimService> own_service;
    ReclaimService* service;
    // A VM outside a HostMemory faults on vcpus + 1 workers of its own: its cap
    // (FaultService::cap_for) is then its vCPUs, as many faults at once as it had
    // fault threads before the host-wide service.
    std::unique_ptr<FaultService> own_faults;
    FaultService* faults;

    HostBudget* host;
    swap::SwapPool* pool;
    std::unique_ptr<MemfdKernel> kernel;
    Stage2 table;
    Occupancy occupancy;
    Counters counters;
    LatencyHistogram swapin_latency;  // recorded by handle_fault, read by stats()
    CleanCopyPolicy clean;
    Limits limits;
    Transitions tr;
    std::string name;
    ThreadStartHook on_thread_start;

    // --- working set and stall (access_age.hpp, stall.hpp; README#working-set) -------
    AccessAges ages;
    StallTracker stalls;
    FaultObservers observers;
    const std::chrono::nanoseconds age_scan_period;  // 0: the hand moves only to reclaim
    AgeScanBuilder age_builder;                      // the reclaimer's, filled as the hand moves
    const AgeSampling age_sampling;                  // 1 unless the age scan runs sampled
    std::uint64_t age_sweeps = 0;                    // the scan step's: sweeps of the hand finished
    MonoTime last_age_step{0};                       // reclaimer only
    double age_credit = 0;                           // reclaimer only: entries owed to the age scan
    // Protects: last_scan. Order: leaf.
    mutable std::mutex scan_mutex;
    AgeScan last_scan;  // the last full sweep of the hand
    // Protects: limit_source, auto_decision. Order: leaf.
    mutable std::mutex note_mutex;
    std::string limit_source = "manual";
    std::string auto_decision;

    std::atomic<bool> stopping{false};
    const unsigned vcpus;
    bool faults_attached = false;  // start() .. stop() (the starter / stopper only)
    std::unique_ptr<WritebackQueue> writeback_queue = std::make_unique<WritebackQueue>();
    std::uint64_t clock_hand = 0;  // owned by the scan step (one worker at a time)

    // --- a VM restored from a snapshot (snapshot.cpp; README#snapshots) ---------------
    std::unique_ptr<PageImage> image;             // the snapshot's memory image (null: not restored)
    std::unique_ptr<FirstTouchLog> first_touch;   // its first faults, for the working-set file
    std::filesystem::path snapshot_dir;
    // The snapshot's swap references this VM's borrowed entries use (README#borrowed):
    // kept alive until the VM is gone, whatever happens to the snapshot meanwhile.
    std::shared_ptr<const void> borrowed_refs;
    std::vector<std::uint32_t> prefetch_order;    // the recorded working set, read at restore
    bool fill_rest = false;                       // the filler reads every image page after it
    std::thread filler;                           // started by start(), joined first by stop()
    void fill_loop();

    // --- fault service (fault_service.cpp) -------------------------------------------
    // A fault waiting for room without a worker (fault_service.hpp): until
    // `deadline` (the throttle's bound), then it runs over.
    struct Parked {
        PendingFault fault;
        std::chrono::steady_clock::time_point picked_up;  // its swap-in latency counts from here
        MonoTime deadline{0};
    };
    // Protects: parked. Order: after the fault service's mutex; leaf.
    mutable std::mutex park_mutex;
    std::deque<Parked> parked;  // at most one per faulting thread (each waits for its fault)
    std::condition_variable parked_served;  // stop(): the last parked fault was served
    // The last swap-in / first touch served, for readahead and fault-around's
    // "sequential" (was per fault thread; a worker serves many VMs).
    std::atomic<std::uint64_t> last_swapin{~0ULL};
    std::atomic<std::uint64_t> last_zero{~0ULL};

    // FaultClient / RoomListener
    int userfault_fd() const override { return kernel->uffd_fd(); }
    Turn serve(const uffd_msg& msg, MonoTime seen, io::Ring& ring) override;
    Turn serve_parked(MonoTime now, io::Ring& ring) override;
    bool parked_ready(MonoTime now) const override;
    void room_made() override;

    Turn handle_fault(std::uint64_t hva, std::uint64_t flags, std::uint32_t tid, MonoTime seen, io::Ring& ring);
    void finish(PendingFault& p, std::chrono::steady_clock::time_point picked_up, Throttle throttle, io::Ring& ring);
    // stop(): the parked faults are served by the workers (stopping: they may go,
    // over the limit, as a blocked throttle wait returned at stop); those still
    // parked after Limits::kThrottleBound are dropped (stall closed, thread woken).
    void await_parked();
    void drop_parked();
    void readahead_after(PageIdx idx, io::Ring& ring);
    void zero_fault_around(PageIdx idx);
    std::vector<PageLock> lock_run_after(PageIdx idx, PageState state, std::uint64_t max);
    // --- reclaim (reclaimer.cpp), run by the service's workers ---------------------------
    // drop_only: no room in swap; age_only: the age scan (zap resident pages, evict nothing)
    enum class PassMode : std::uint8_t { drop_only, full, age_only };
    struct PassResult {
        std::uint64_t freed = 0;                 // pages that left memory
        std::optional<swap::Errc> write_error;   // the first write failure seen
    };
    // Where this VM's reclaim stands between two scan steps (what the per-VM
    // reclaimer thread's loop kept on its stack before the host-wide workers):
    //   idle      — waiting for work: needs_reclaim, a throttled fault, a kick, the
    //               tick (the age scan) or the retry back-off while it cannot hold;
    //   sweeping  — an episode: CLOCK passes until the low watermark (ready while
    //               the writeback queue has room);
    //   draining  — passes freed nothing for give_up entries: the verdict waits
    //               for the queued writes (ready once the queue is idle);
    //   finishing — the low watermark reached counting queued writes: "held again"
    //               waits for them (ready once the queue is idle).
    enum class Phase : std::uint8_t { idle, sweeping, draining, finishing };
    // Protects: phase, scanning, writers, reclaim_stopping. Order: after the
    // service's mutex (due() reads only atomics), before the queue's; never held
    // while a unit runs.
    std::mutex reclaim_mutex;
    std::condition_variable reclaim_quiet;  // stop(): no scan step and no batch in hand
    Phase phase = Phase::idle;
    bool scanning = false;           // a worker runs this VM's scan step
    unsigned writers = 0;            // batches of this VM in workers' hands
    bool reclaim_stopping = false;   // stop(): only the queued batches are still taken
    bool reclaim_attached = false;   // start() .. stop() (the starter / stopper only)
    // Idle: when the time-driven look is due (the tick, or the retry back-off).
    // Relaxed: read by the service's tick as a hint; take() decides under reclaim_mutex.
    std::atomic<std::int64_t> idle_due_ns{0};
    // The episode, the scan step's only.
    PassMode episode_mode = PassMode::full;
    std::uint64_t episode_give_up = 0, episode_idle = 0;
    std::optional<swap::Errc> episode_error;

    // ReclaimClient / ReclaimWaker
    bool urgent() const override;
    bool due(MonoTime now) const override;
    ReclaimWork take(unsigned max_writers) override;
    void run(ReclaimWork& work, io::Ring* ring) override;
    void wake_reclaim() override;

    void start_reclaim();
    void stop_reclaim();
    bool scan_ready(MonoTime now) const;  // under reclaim_mutex
    void scan_step();
    void idle_step();
    void write_batch(std::vector<Writeback>& batch, io::Ring* ring);
    PassResult reclaim_pass(WritebackQueue& writer, PassMode mode, std::uint64_t entries);
    void age_step(WritebackQueue& writer);
    OverReason swap_verdict() const;
};

}  // namespace swapvisor::guestmem
