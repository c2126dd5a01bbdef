// GuestMemory::Impl: the parts of one VM's memory and the threads that drive them.
// Members are declared in dependency order (teardown is the reverse): the kernel
// (memfds, views, userfaultfd), the table, the counts and policy, then the
// Transitions that use them all.
//
// Threads (guestmem/README.md#threads):
//   fault threads  — poll the userfaultfd, choose the row for each fault;
//   reclaimer      — one per VM, CLOCK over the table, chooses eviction rows;
//   writeback      — kWritebackThreads per VM with swap: each writes a batch the reclaimer
//                    queues and completes them (rows 7 / 7'); stopped after it;
//   callers        — read/write/discard, and the swapoff thread's bring_back.
#pragma once

#include <atomic>
#include <cstdint>
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

struct GuestMemory::Impl {
    Impl(const MemoryConfig& config, VmId id, HostBudget* host, swap::SwapPool* pool,
         std::unique_ptr<MemfdKernel> kernel, Stage2 table, AccessAges ages);

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
    MonoTime last_age_step{0};                       // reclaimer only
    double age_credit = 0;                           // reclaimer only: entries owed to the age scan
    // Protects: last_scan. Order: leaf.
    mutable std::mutex scan_mutex;
    AgeScan last_scan;  // the last full sweep of the hand
    // Protects: limit_source, auto_decision. Order: leaf.
    mutable std::mutex note_mutex;
    std::string limit_source = "manual";
    std::string auto_decision;

    io::UniqueFd stop_event;   // eventfd that wakes the fault threads on stop
    std::atomic<bool> stopping{false};
    std::vector<std::thread> fault_threads;
    std::thread reclaimer;
    std::unique_ptr<WritebackQueue> writeback_queue = std::make_unique<WritebackQueue>();
    std::vector<std::thread> writeback;  // kWritebackThreads, only with a pool
    std::uint64_t clock_hand = 0;  // owned by the reclaimer thread

    // --- a VM restored from a snapshot (snapshot.cpp; README#snapshots) ---------------
    std::unique_ptr<PageImage> image;             // the snapshot's memory image (null: not restored)
    std::unique_ptr<FirstTouchLog> first_touch;   // its first faults, for the working-set file
    std::filesystem::path snapshot_dir;
    std::vector<std::uint32_t> prefetch_order;    // the recorded working set, read at restore
    bool fill_rest = false;                       // the filler reads every image page after it
    std::thread filler;                           // started by start(), joined first by stop()
    void fill_loop();

    // --- fault service (fault_service.cpp) -------------------------------------------
    void fault_loop();
    void handle_fault(std::uint64_t hva, std::uint64_t flags, std::uint32_t tid, MonoTime seen, io::Ring& ring);
    void readahead_after(PageIdx idx, io::Ring& ring);
    void zero_fault_around(PageIdx idx);
    std::vector<PageLock> lock_run_after(PageIdx idx, PageState state, std::uint64_t max);
    // --- reclaimer (reclaimer.cpp) ---------------------------------------------------
    // drop_only: no room in swap; age_only: the age scan (zap resident pages, evict nothing)
    enum class PassMode : std::uint8_t { drop_only, full, age_only };
    struct PassResult {
        std::uint64_t freed = 0;                 // pages that left memory
        std::optional<swap::Errc> write_error;   // the first write failure seen
    };
    void reclaim_loop();
    PassResult reclaim_pass(WritebackQueue& writer, PassMode mode, std::uint64_t entries);
    void age_step(WritebackQueue& writer);
    void writeback_loop(WritebackQueue& queue);
    OverReason swap_verdict() const;
};

}  // namespace swapvisor::guestmem
