// GuestMemory::Impl: the state behind one VM's memory, shared by the fault service
// (fault_service.cpp), the reclaimer (reclaimer.cpp) and the VMM-side accessors
// (guest_memory.cpp). Every page transition happens with the page's stage-2 lock
// held (stage2.hpp); the counters below are updated by whoever makes the transition.
//
// Threads (guestmem/README.md#threads):
//   fault threads  — poll the userfaultfd, resolve MISSING / MINOR / WP faults;
//   reclaimer      — one per VM, keeps resident pages under the effective limit;
//   callers        — vCPU/device/loader threads calling read/write/discard, and
//                    the swapoff thread calling bring_back.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "guestmem/guest_memory.hpp"
#include "guestmem/stage2.hpp"
#include "guestmem/userfault.hpp"
#include "io/ring.hpp"
#include "io/unique_fd.hpp"
#include "swap/swap_pool.hpp"

namespace swapvisor::guestmem {

// One memfd with its two views.
struct Region {
    io::UniqueFd memfd;
    io::Mapping guest_view;   // KVM memslot + userfaultfd; never touched by swapvisor
    io::Mapping vmm_view;     // swapvisor's own accesses and swap I/O buffers
    Gpa base;
    std::uint64_t pages = 0;
    std::uint64_t first_idx = 0;  // stage-2 index of the region's first page
};

inline constexpr std::uint64_t kFaultAroundPages = 16;
inline constexpr std::uint64_t kCleanSampleEvery = 8;
inline constexpr std::uint64_t kCleanWindow = 1024;

struct Counters {
    std::atomic<std::uint64_t> resident_pages{0};   // present in a memfd
    std::atomic<std::uint64_t> resident_peak{0};
    std::atomic<std::uint64_t> swapped_pages{0};    // state swapped
    std::atomic<std::uint64_t> swap_out_pages{0};
    std::atomic<std::uint64_t> swap_in_pages{0};
    std::atomic<std::uint64_t> major_faults{0};
    std::atomic<std::uint64_t> minor_faults{0};
    std::atomic<std::uint64_t> wp_faults{0};
    std::atomic<std::uint64_t> zero_pages{0};
    std::atomic<std::uint64_t> clean_drops{0};
    std::atomic<std::uint64_t> discarded_pages{0};
    std::atomic<std::uint64_t> lost_pages{0};
    std::atomic<std::uint64_t> throttle_waits{0};
    std::atomic<std::uint64_t> readahead_pages{0};
    std::atomic<std::uint64_t> limit_overshoots{0};
};

struct GuestMemory::Impl {
    Impl(GuestMemory& owner, HostMemory* host, swap::SwapPool* pool, std::uint64_t pages);

    GuestMemory& owner;
    HostMemory* host;          // null for a VM outside a HostMemory (tests)
    swap::SwapPool* pool;      // null: no swap, reclaim only drops zero/clean pages
    std::vector<Region> regions;
    Stage2 table;
    std::optional<Userfault> uffd;
    bool wp_tracking = false;  // clean copies kept write-protected (UFFD WP on shmem)
    // Adaptive clean tracking (guestmem/README.md#clean-copies): keeping a swap copy
    // costs a WP fault when the guest then writes the page. While most clean copies
    // end dirtied, swap-ins are mapped writable instead (one in kCleanSampleEvery
    // still tracked, to notice when the workload turns read-mostly again).
    std::atomic<bool> clean_tracking{true};
    std::atomic<std::uint64_t> clean_decisions{0};
    std::atomic<std::uint64_t> window_dirtied{0};   // clean copies lost to a guest write
    std::atomic<std::uint64_t> window_reused{0};    // clean copies evicted without a write
    io::Mapping zero_page;     // kFaultAroundPages zero pages: UFFDIO_COPY source for never-touched pages
    io::UniqueFd stop_event;   // eventfd that wakes the fault threads on stop
    std::atomic<std::uint64_t> limit_pages{0};  // 0 = unlimited
    Counters counters;

    std::atomic<bool> stopping{false};
    std::vector<std::thread> fault_threads;
    std::thread reclaimer;
    std::uint64_t clock_hand = 0;          // owned by the reclaimer thread
    // Protects: nothing but the wait below (the predicate reads atomics);
    // Order: leaf, never held with a page lock.
    std::mutex reclaim_mutex;
    std::condition_variable reclaim_wake;   // reclaimer: there may be work
    std::condition_variable room_freed;     // throttled faulters: resident dropped

    // --- addressing -----------------------------------------------------------
    std::optional<std::uint64_t> idx_of(Gpa gpa) const;
    std::optional<std::uint64_t> idx_of_guest_addr(std::uint64_t hva) const;
    const Region& region_of(std::uint64_t idx) const;
    std::byte* guest_ptr(std::uint64_t idx) const;
    std::byte* vmm_ptr(std::uint64_t idx) const;
    Gpa gpa_of_idx(std::uint64_t idx) const;
    swap::OwnerTag owner_tag(std::uint64_t idx) const;

    // --- memfd operations (caller holds the page locks) -------------------------
    Result<void> punch(std::uint64_t first_idx, std::uint64_t count);
    Result<void> zap_guest_view(std::uint64_t first_idx, std::uint64_t count);

    // --- accounting -----------------------------------------------------------
    void page_became_present();
    void pages_left_memory(std::uint64_t n);
    std::uint64_t effective_limit_pages() const;
    bool over_limit() const;
    bool needs_reclaim() const;
    // Block a faulting thread while the VM (or host) is at its limit; bounded.
    void wait_for_room();

    // --- transitions used by several threads (guest_memory.cpp) -----------------
    // Bring a swapped page into the memfd through the VMM view (not mapped in the
    // guest view). On failure the page is poisoned and marked lost.
    Result<void> swap_in_locked(PageLock& lk, std::uint64_t idx, io::Ring& ring, bool keep_clean);
    void free_vslot(swap::VSlot v);
    // Whether the next swap-in (or readahead batch) keeps its swap copy write-protected.
    bool want_clean();
    // One clean copy's fate: dirtied (WP fault, VMM write) or reused (evicted again).
    void note_clean_outcome(bool dirtied);

    // --- threads ----------------------------------------------------------------
    void fault_loop();
    void handle_fault(std::uint64_t hva, std::uint64_t flags, io::Ring& ring);
    void readahead_after(std::uint64_t idx, io::Ring& ring);
    void zero_fault_around(std::uint64_t idx);
    void reclaim_loop();
    std::uint64_t reclaim_pass(io::Ring& ring);
};

}  // namespace swapvisor::guestmem
