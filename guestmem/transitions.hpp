// Transitions: the page-state machine of guestmem, in one place. Each public
// function is one row (or a batch of one row) of the transition table in
// guestmem/README.md#transitions: it runs with the page's lock held (a PageLock),
// makes the kernel calls the row needs through PageKernel, and sets the page's new
// entry. Nothing else in guestmem changes an entry: the fault service, the
// reclaimer, readahead, fault-around, discard and bring-back only choose rows and
// batch them.
//
// The counters hold by construction: PageLock, when released, compares the entry it
// locked with the one it publishes and moves Occupancy (resident, swapped) and the
// host budget by that difference — no row counts by hand.
//
// Threads: any; each PageLock belongs to the thread that took it. Lock order: a
// thread holds one page lock at a time and waits for no other (`try_lock` only for
// more), except the reclaimer's writeback completion, which locks its batch in
// ascending order (README#lock-bit).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <string>
#include <vector>

#include "guestmem/limits.hpp"
#include "guestmem/owner_tag.hpp"
#include "guestmem/page_kernel.hpp"
#include "guestmem/stage2.hpp"
#include "guestmem/staging.hpp"
#include "io/result.hpp"
#include "swap/swap_pool.hpp"

namespace swapvisor::io { class Ring; }

namespace swapvisor::guestmem {

class Transitions;
class PageImage;
class FirstTouchLog;

// Event counts of one VM (statistics; the occupancy counts are in Occupancy).
// Relaxed increments throughout: nothing orders against them.
struct Counters {
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
};

// Ownership of one stage-2 entry. Released by the destructor, which publishes the
// entry the transitions set and accounts for the change. Only Transitions sets it.
class PageLock {
public:
    PageLock(PageLock&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)), idx_(o.idx_), was_(o.was_), now_(o.now_) {}
    PageLock& operator=(PageLock&& o) noexcept;  // releases the page it held first
    PageLock(const PageLock&) = delete;
    PageLock& operator=(const PageLock&) = delete;
    ~PageLock();

    PageIdx idx() const { return idx_; }
    PageEntry entry() const { return now_; }      // what release will publish
    PageEntry locked_as() const { return was_; }  // what the entry was when locked

private:
    friend class Transitions;
    PageLock(Transitions& owner, PageIdx idx, PageEntry was) : owner_(&owner), idx_(idx), was_(was), now_(was) {}
    void set(PageEntry e) { now_ = e; }
    Transitions* owner_;
    PageIdx idx_;
    PageEntry was_;
    PageEntry now_;
};

enum class Access : bool { read, write };

// A page on its way to swap (row 5): the PageOut handed to SwapPool::write_out (its
// data is the page's staged copy, with its checksum), the epoch its entry carries
// while this write is the page's current one, and the buffer holding the copy
// (released when the last Writeback staged in it is gone).
struct Writeback {
    PageIdx idx;
    swap::PageOut out;
    WritebackEpoch epoch;
    std::shared_ptr<const StagingBuffer> staging;
};

class Transitions {
public:
    struct Deps {
        Stage2& table;
        PageKernel& kernel;
        swap::SwapPool* pool;  // null: no swap; only zero and clean pages leave memory
        Limits& limits;
        Occupancy& occupancy;
        Counters& counters;
        CleanCopyPolicy& clean;
        std::string name;      // the VM, for messages
        VmId vm;
        // Where swap-out copies are staged (staging.hpp): the host's reclaim workers'
        // pool, shared by the VMs; empty: a pool of this VM's own.
        std::optional<StagingPool> staging = std::nullopt;
    };
    explicit Transitions(Deps deps);

    PageLock lock(PageIdx idx);
    std::optional<PageLock> try_lock(PageIdx idx);
    PageEntry peek(PageIdx idx) const { return d_.table.peek(idx); }
    std::uint64_t pages() const { return d_.table.pages(); }
    PageKernel& kernel() { return d_.kernel; }

    // --- guest faults (fault worker). Resolve without waking: the caller releases
    // the lock, then wakes the guest (wake_guest), so a guest that resumes and an
    // observer of the entry agree (README#lock-bit "wake after publish").
    Result<void> fault_zero(PageLock& lk);                      // 1   zero -> resident
    Result<void> fault_minor(PageLock& lk);                     // 3,6 inactive|writeback -> resident
    Result<void> fault_swapped(PageLock& lk, io::Ring& ring);   // 10  swapped -> resident[+CLN] (12 on failure)
    Result<void> fault_write_protected(PageLock& lk);           // 13  resident+CLN -> resident
    Result<void> fault_resident(PageLock& lk);                  // —   resolved by another thread: re-map if zapped
    Result<void> fault_lost(PageLock& lk);                      // —   lost -> lost: poison re-armed
    void fault_around(std::span<PageLock> zero_run);           // 1'  zero run after a first touch -> resident
    void read_ahead(std::span<PageLock> swapped_run, io::Ring& ring);  // 10' swapped run -> resident|inactive[+CLN]
    Result<void> wake_guest(PageIdx idx);
    // This thread's bounce page for row 10's read (4 KiB, page aligned; empty if it
    // could not be allocated). A fault worker registers it as its ring's arena, so
    // the read is a READ_FIXED into pages pinned once.
    static std::span<std::byte> bounce_page();

    // --- VMM accesses (any caller): make the page's bytes usable through vmm_page().
    void vmm_write_zero(PageLock& lk);                                     // 2   zero -> inactive
    Result<void> vmm_swap_in(PageLock& lk, io::Ring& ring, Access access);  // 11  swapped -> inactive[+CLN on read]
    void vmm_write_writeback(PageLock& lk);                                // 6'  writeback -> inactive
    void vmm_write_clean(PageLock& lk);                                    // 13' +CLN -> no CLN

    // --- reclaim (reclaimer thread)
    // 4: resident -> inactive for a batch (ascending): zaps runs, releases every lock.
    void deactivate(std::vector<PageLock>& resident);
    // 4a: the hand passes a resident page with ACT > 0 (used again since its last
    // zap): ACT counts down, the page stays mapped. False (nothing set) at ACT 0:
    // the caller zaps it (4).
    bool pass_active(PageLock& lk);
    // How many reclaim passes of the hand a MINOR fault buys a page before its next
    // zap (ACT). A hot page then costs one MINOR fault per 4 sweeps instead of one
    // per sweep; a page that went cold stays mapped at most 3 sweeps longer. Chosen
    // by kvs (Zipf 0.99) on KVM: 0..3 gave 27.9k / 31.2k / 31.5k / 32.6k ops/s at
    // 1.33x overcommit, MINOR faults 177k -> 100k (docs/PERFORMANCE.md#active).
    static constexpr unsigned kActiveSweeps = PageEntry::kMaxActive;
    // A cold inactive page: 8 (all zero -> zero) or 9 (clean copy -> swapped) set the
    // entry and return true (the caller punches it with punch_dropped); otherwise false.
    bool drop_cold(PageLock& lk);
    // 5: inactive -> writeback; releases the lock (never held across swap I/O). The
    // page is copied out of the memfd into a staging buffer under the lock and its
    // checksum taken there (staging.hpp): the copy is what write_out writes.
    Writeback start_writeback(PageLock&& lk);
    // 8 and 5 for a batch of cold, dirty pages (inactive, no CLN, ascending, each
    // locked): each run is copied out of the memfd into `staging` (one read per run,
    // no view mapped), then one pass per page over its copy: all zero -> 8 (the lock
    // moves to `dropped`, for punch_dropped); otherwise its checksum is taken in that
    // pass and it starts writeback (5) with the copy and the checksum as its PageOut
    // (appended to `writes`; lock released). The non-zero copies end up back to back
    // in `staging`. `staging` must have room for every page of `cold`. A run that
    // cannot be copied stays inactive. `cold` is left empty.
    void evict_cold(std::vector<PageLock>& cold, const std::shared_ptr<StagingBuffer>& staging,
                    std::vector<PageLock>& dropped, std::vector<Writeback>& writes);
    // The buffers row 5 stages pages in (one per batch in flight is kept).
    StagingPool& staging() { return staging_; }
    // 7 / 7' and the races: complete a write_out batch. Re-locks each page
    // (ascending); a page still in *this* writeback (same epoch) becomes swapped
    // (punched) or, if its write failed, inactive again; a page that moved meanwhile
    // — touched, written, discarded, or touched and queued again by a newer
    // writeback — keeps its new state and this write's slot is freed. Returns the
    // pages that left memory.
    std::uint64_t finish_writeback(std::span<Writeback> batch, bool batch_ok);
    // Punch the memfd under pages drop_cold / finish_writeback set to leave memory,
    // as runs; on a failed punch they keep their old entries. Releases every lock.
    // Returns the pages that left memory.
    std::uint64_t punch_dropped(std::vector<PageLock>& dropped);

    // --- discard (balloon reports, inflate): D any -> zero
    Result<void> discard(PageLock& lk);

    // --- swapoff: 11' swapped(vslot) -> inactive (slot freed), or a clean copy at
    // vslot dropped (13'). The bytes come from `copy` (what swapoff already read and
    // verified) while it is still the slot's content, else from a read. False when
    // the page no longer refers to vslot.
    Result<bool> bring_back(PageLock& lk, swap::VSlot vslot, const swap::SlotCopy* copy, io::Ring& ring);

    // --- swapoff --force of a failing device: 12 swapped(vslot) -> lost without a
    // read, or a clean copy at vslot dropped (13'). False when the page no longer
    // refers to vslot.
    bool lose_swapped(PageLock& lk, swap::VSlot vslot, const Error& why);

    // --- snapshots (guestmem/README.md#snapshots, docs/SNAPSHOT.md). Set before the
    // threads start (not synchronised): the image `image` pages are read from, and the
    // log of first touches a restored VM keeps (both may be null).
    void set_image(const PageImage* image) { image_ = image; }
    void set_first_touch_log(FirstTouchLog* log) { first_touch_ = log; }
    // A fault found the page in `was`: log it if it is a restored page's first touch.
    void note_first_touch(PageIdx idx, PageState was);
    // R: zero -> image / swapped(v) (borrowed or with the caller's reference) / lost,
    // while a restore builds the table (no thread running, nothing mapped). A lost page
    // gets its poison marker now, as row 12 leaves it.
    Result<void> restore_entry(PageLock& lk, PageEntry to);
    // R for a table mapped from its snapshot's table image (Stage2::map_image: every
    // image and borrowed swapped entry there already, no store per page): count its
    // swapped pages. Only before the VM's threads exist.
    void restored_swapped(std::uint64_t pages);
    // 14: image -> resident: guest touch (MISSING): read the page from the image into
    // the memfd through the VMM view, UFFDIO_CONTINUE (no wake). A read that fails
    // makes the page lost (12 without a slot).
    Result<void> fault_image(PageLock& lk);
    // 14': image -> inactive (VMM access, the filler) or resident (Map::yes: the
    // recorded-order prefetch maps it so the guest takes no fault at all).
    enum class Map : bool { no, yes };
    Result<void> fill_image(PageLock& lk, Map map);
    // The recorded-order prefetch, batched (issue #21): pages the caller locked
    // (try_lock), ascending, with any gaps between them.
    // 14' for `image` pages -> resident: each run of neighbours is one read from the
    // image, every run in flight at once on `ring`, then one UFFDIO_CONTINUE per run.
    // A run whose read fails or comes back short stays `image` (what landed is
    // punched): the guest's own fault reads it again and reports the failure (row 14),
    // so the prefetch never makes a page lost or wrong. Returns the pages it brought in.
    std::uint64_t prefetch_image(std::span<PageLock> pages, io::Ring& ring);
    // 10' for `swapped` pages -> resident[+CLN] (inactive where CONTINUE mapped less):
    // one batched read_in (every slot in flight at once, neighbours merged), one
    // UFFDIO_CONTINUE per run of verified neighbours; clean copies kept or freed as
    // read_ahead decides. A page whose read or checksum fails stays swapped (punched).
    std::uint64_t prefetch_swapped(std::span<PageLock> pages, io::Ring& ring);

    // --- teardown: free every VSlot the table refers to (threads stopped).
    void free_all_vslots();
    std::uint64_t referenced_vslots() const;

private:
    friend class PageLock;
    void release(PageIdx idx, PageEntry was, PageEntry now);
    // 10/11/11' (and 12 on failure): read into the memfd through the VMM view and
    // verify; the page ends inactive (not mapped) with or without its clean copy.
    Result<void> swap_in(PageLock& lk, io::Ring& ring, Clean keep);
    void lose(PageLock& lk, const Error& why);  // 12
    // UFFDIO_POISON the guest view of idx, over a uffd-wp marker if one is there.
    Result<void> arm_poison(PageIdx idx);
    template <class Leave>
    Result<bool> slot_going(PageLock& lk, swap::VSlot vslot, Leave&& leave);
    void free_vslot(swap::VSlot v);
    // Free e's slot unless it is borrowed (README#borrowed): what leaving a swapped or
    // reading entry does with its reference.
    void drop_slot(PageEntry e);
    // Whether a page read in from e's slot keeps it as a clean copy: want_clean and
    // the slot this VM's own (a borrowed one never becomes a clean copy).
    bool keep_copy(PageEntry e, bool want_clean);
    // The clean-copy decision of a batch read in together (10', 10' batched).
    bool want_clean_for(std::span<const PageLock> run);
    // 5 for a page whose copy (and its checksum) is staged at `copy`.
    Writeback writeback_staged(PageLock&& lk, const std::byte* copy, std::uint32_t checksum,
                               const std::shared_ptr<StagingBuffer>& staging);
    swap::OwnerTag owner_tag(PageIdx idx) const { return pack_owner(d_.vm, idx.value()); }

    Deps d_;
    const PageImage* image_ = nullptr;
    FirstTouchLog* first_touch_ = nullptr;
    // The next writeback epoch (row 5). Relaxed: only uniqueness matters; the epoch
    // reaches the completion through the page lock's release/acquire.
    std::atomic<std::uint32_t> next_epoch_{1};
    StagingPool staging_;
};

}  // namespace swapvisor::guestmem
