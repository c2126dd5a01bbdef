// Stage2: swapvisor's own guest-physical page table, one 8-byte atomic entry per
// guest page, indexed by PageIdx (guestmem/README.md#stage2). An entry is owned by
// one thread at a time through its lock bit: whoever sets LCK may change the state
// and issue the kernel calls that go with the transition; everyone else waits
// (std::atomic::wait). Only guestmem/transitions.cpp takes and releases the lock
// (through PageLock), so every state change is one of the README's transitions.
//
//   63                    32 31      10   9   8   7   6     5     4     3    2    0
//  +------------------------+----------+-----+-----+-----+-----+-----+-----+-------+
//  |         VSlot          | reserved | WTR | ACT | BOR | ACC | CLN | LCK | state |
//  +------------------------+----------+-----+-----+-----+-----+-----+-----+-------+
//   VSlot: swapped / reading -> where the content is; resident / inactive with CLN
//          -> an identical copy still in swap (the page is write-protected), so
//          evicting it again writes nothing. writeback -> the same 32 bits hold the
//          writeback's epoch instead (no slot is in the entry while it is written):
//          the identity its completion must find to adopt the page
//          (guestmem/README.md#writeback-identity).
//   CLN:   clean copy valid (see above). ACC: reserved for hardware-assisted sampling.
//   ACT:   resident only: how many more times the CLOCK hand passes the page without
//          zapping it (0-3). A MINOR fault sets it (the page was used again within a
//          sweep of its zap: it is hot, and each zap would only cost another MINOR
//          fault); each reclaim pass of the hand counts it down (row 4a,
//          guestmem/README.md#reclaim). Every other transition clears it (make()).
//   WTR:   set only while LCK is: a thread sleeps in lock() waiting for this entry,
//          so unlock() must wake it. Without waiters an unlock is one store: a
//          notify on a std::atomic<uint64_t> bumps one of the C++ library's 16 shared
//          waiter counters, a cache line every unlocking thread of the process writes
//          (80-90 ns per unlock on 2 threads, 10 ns without; DESIGN-NOTES 59). Never
//          seen by peek() or in a value lock() returns.
//   BOR:   swapped / reading only: the VSlot is *borrowed* from the snapshot this VM
//          was restored from (row R): the snapshot's reference keeps it, this VM took
//          none, so leaving the state frees nothing (guestmem/README.md#borrowed).
//
// The entries are one MAP_NORESERVE mapping, anonymous (create) or a private mapping
// of a restore's table image (map_image): the kernel backs (copies) a 4 KiB page of
// entries (512 guest pages) only when one of them is first written, so a sparse
// 1 TiB guest costs only what it touches, not 2 GiB up front.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>

#include "guestmem/addr.hpp"
#include "io/result.hpp"
#include "io/unique_fd.hpp"
#include "swap/types.hpp"

namespace swapvisor::guestmem {

enum class PageState : std::uint8_t {
    zero = 0,       // never touched or discarded: no memory, a touch gets zeros
    resident = 1,   // in the memfd and mapped in the guest view
    inactive = 2,   // in the memfd, zapped from the guest view: next touch is a MINOR fault
    writeback = 3,  // being written to swap (page stays in the memfd until completion)
    swapped = 4,    // content only in swap at VSlot; hole punched
    reading = 5,    // swap-in in flight: published while the reader holds the lock
    lost = 6,       // swap-in failed; poisoned in the guest view, guest gets a memory error
    image = 7,      // restored from a snapshot: content in its memory image at this page; hole
};
const char* to_string(PageState s);

enum class Clean : bool { no, yes };

// The identity of one writeback of one page (row 5): a per-VM counter, never 0. Its
// completion adopts the page only if the entry still carries the same epoch, so an
// older write of a page that was touched and queued again frees its own slot instead
// of publishing stale bytes (README#writeback-identity).
using WritebackEpoch = StrongInt<struct WritebackEpochTag, std::uint32_t>;

// A decoded entry value (a snapshot; the table holds the atomic).
class PageEntry {
public:
    static constexpr std::uint64_t kStateMask = 0x7;
    static constexpr std::uint64_t kLock = 1u << 3;
    static constexpr std::uint64_t kClean = 1u << 4;
    static constexpr std::uint64_t kBorrowed = 1u << 6;
    static constexpr unsigned kActiveShift = 7;
    static constexpr std::uint64_t kActiveMask = std::uint64_t{3} << kActiveShift;
    static constexpr unsigned kMaxActive = 3;
    static constexpr std::uint64_t kWaiters = 1u << 9;  // Stage2's lock protocol only

    constexpr PageEntry() = default;
    constexpr explicit PageEntry(std::uint64_t raw) : raw_(raw) {}
    static constexpr PageEntry make(PageState s, swap::VSlot v = swap::kNoVSlot, Clean clean = Clean::no) {
        return PageEntry((std::uint64_t{v.value()} << 32) | static_cast<std::uint64_t>(s) |
                         (clean == Clean::yes ? kClean : 0));
    }
    // A page being written out by the writeback numbered `epoch` (row 5).
    static constexpr PageEntry make_writeback(WritebackEpoch epoch) {
        return PageEntry((std::uint64_t{epoch.value()} << 32) | static_cast<std::uint64_t>(PageState::writeback));
    }

    // A swapped page whose slot v is the restore's snapshot's (row R: BOR set).
    static constexpr PageEntry make_borrowed(swap::VSlot v) {
        return PageEntry(make(PageState::swapped, v).raw() | kBorrowed);
    }
    // The same entry in the reading state (the swap-in's published value), BOR kept.
    constexpr PageEntry as_reading() const {
        return PageEntry(make(PageState::reading, vslot()).raw() | (raw_ & kBorrowed));
    }
    constexpr PageState state() const { return static_cast<PageState>(raw_ & kStateMask); }
    // The slot of a swapped / reading page or of a clean copy; none in writeback.
    constexpr swap::VSlot vslot() const {
        return state() == PageState::writeback ? swap::kNoVSlot : swap::VSlot(static_cast<std::uint32_t>(raw_ >> 32));
    }
    // Which writeback a page in the writeback state belongs to (none otherwise).
    constexpr WritebackEpoch writeback_epoch() const {
        return state() == PageState::writeback ? WritebackEpoch(static_cast<std::uint32_t>(raw_ >> 32)) : WritebackEpoch(0);
    }
    constexpr bool locked() const { return raw_ & kLock; }
    constexpr bool clean() const { return raw_ & kClean; }
    constexpr bool borrowed() const { return raw_ & kBorrowed; }
    // ACT (resident pages): hand passes left before the next zap.
    constexpr unsigned active() const { return static_cast<unsigned>((raw_ & kActiveMask) >> kActiveShift); }
    constexpr PageEntry with_active(unsigned n) const {
        return PageEntry((raw_ & ~kActiveMask) | (std::uint64_t{n < kMaxActive ? n : kMaxActive} << kActiveShift));
    }
    constexpr std::uint64_t raw() const { return raw_; }
    // True if the page occupies memory (counts against the resident limit).
    constexpr bool present() const {
        auto s = state();
        return s == PageState::resident || s == PageState::inactive || s == PageState::writeback ||
               s == PageState::reading;
    }
    // True if the entry refers to a VSlot this VM must free some day (a borrowed one
    // is its snapshot's to free).
    constexpr bool holds_vslot() const {
        return (state() == PageState::swapped || clean()) && vslot() != swap::kNoVSlot && !borrowed();
    }
    friend constexpr bool operator==(PageEntry a, PageEntry b) = default;

private:
    std::uint64_t raw_ = 0;
};

class Stage2 {
public:
    // Reserves (does not back) pages entries; errors only if the address space is short.
    static Result<Stage2> create(std::uint64_t pages);
    // A table image (a restore's starting table, built once per snapshot): a sealed
    // memfd of `pages` entries that fill(entries) writes once, all unlocked.
    static Result<io::UniqueFd> make_image(std::uint64_t pages, const std::function<void(std::uint64_t*)>& fill);
    // A table that starts as `image` (make_image's, `pages` entries), mapped privately:
    // no entry is copied, whatever the size (issue #21: restore time does not grow with
    // memory); the kernel copies a 4 KiB page of entries (512 guest pages) when one of
    // them is first written, and clones of one snapshot share the pages none wrote.
    static Result<Stage2> map_image(const io::UniqueFd& image, std::uint64_t pages);
    std::uint64_t pages() const { return pages_; }
    bool contains(PageIdx idx) const { return idx.value() < pages_; }

    PageEntry peek(PageIdx idx) const {
        return PageEntry(at(idx).load(std::memory_order_acquire) & ~PageEntry::kWaiters);
    }

    // Raw lock protocol; use PageLock (transitions.hpp), which also keeps the counters.
    // lock waits while another owner holds the entry; both return the unlocked value.
    PageEntry lock(PageIdx idx);
    std::optional<PageEntry> try_lock(PageIdx idx);
    // Show a new value to observers (peek) while keeping the lock (and the waiter
    // bit a sleeping locker set: a plain store would lose its wake-up).
    void publish_locked(PageIdx idx, PageEntry value);
    // Publish a new value and release the lock; wakes waiters (if any sleep).
    void unlock(PageIdx idx, PageEntry value);

    static constexpr std::size_t bytes_per_page() { return sizeof(std::atomic<std::uint64_t>); }

private:
    Stage2(io::Mapping entries, std::uint64_t pages) : entries_(std::move(entries)), pages_(pages) {}
    std::atomic<std::uint64_t>& at(PageIdx idx) const {
        SWV_ASSERT(idx.value() < pages_, "stage-2 index out of range");
        return reinterpret_cast<std::atomic<std::uint64_t>*>(entries_.data())[idx.value()];
    }
    io::Mapping entries_;
    std::uint64_t pages_;
};

}  // namespace swapvisor::guestmem
