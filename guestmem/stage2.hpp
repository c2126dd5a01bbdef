// Stage2: swapvisor's own guest-physical page table, one 8-byte atomic entry per
// guest page (guestmem/README.md#stage2). An entry is owned by one thread at a time
// through its lock bit: whoever sets LOCK may change the state and issue the
// syscalls that go with the transition; everyone else waits (std::atomic::wait).
// Long I/O never holds the lock: `writeback` is itself the mark that a write is in
// flight, and its completion re-locks and checks the state did not move.
//
//   63                    32 31             6   5     4     3    2    0
//  +------------------------+---------------+-----+-----+-----+-------+
//  |         VSlot          |   reserved    | ACC | CLN | LCK | state |
//  +------------------------+---------------+-----+-----+-----+-------+
//   VSlot: swapped -> where the content is; resident/inactive with CLN -> an
//          identical copy still in swap (the page is write-protected), so
//          evicting it again writes nothing; writeback -> the slot being written.
//   CLN:   clean copy valid (see above). ACC: reserved for hardware-assisted sampling.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>

#include "io/result.hpp"
#include "swap/types.hpp"

namespace swapvisor::guestmem {

enum class PageState : std::uint8_t {
    zero = 0,       // never touched or discarded: no memory, a touch gets zeros
    resident = 1,   // in the memfd and mapped in the guest view
    inactive = 2,   // in the memfd, zapped from the guest view: next touch is a MINOR fault
    writeback = 3,  // being written to swap (page stays in the memfd until completion)
    swapped = 4,    // content only in swap at VSlot; hole punched
    reading = 5,    // swap-in in flight: only ever seen by peek, the reader holds the lock
    lost = 6,       // swap-in failed; poisoned in the guest view, guest gets a memory error
};
const char* to_string(PageState s);

// A decoded entry value (a snapshot; the table holds the atomic).
class PageEntry {
public:
    static constexpr std::uint64_t kStateMask = 0x7;
    static constexpr std::uint64_t kLock = 1u << 3;
    static constexpr std::uint64_t kClean = 1u << 4;

    constexpr PageEntry() = default;
    constexpr explicit PageEntry(std::uint64_t raw) : raw_(raw) {}
    static constexpr PageEntry make(PageState s, swap::VSlot v = swap::kNoVSlot, bool clean = false) {
        return PageEntry((std::uint64_t{v.value()} << 32) | static_cast<std::uint64_t>(s) | (clean ? kClean : 0));
    }

    constexpr PageState state() const { return static_cast<PageState>(raw_ & kStateMask); }
    constexpr swap::VSlot vslot() const { return swap::VSlot(static_cast<std::uint32_t>(raw_ >> 32)); }
    constexpr bool locked() const { return raw_ & kLock; }
    constexpr bool clean() const { return raw_ & kClean; }
    constexpr std::uint64_t raw() const { return raw_; }
    // True if the page occupies memory (counts against the resident limit).
    constexpr bool present() const {
        auto s = state();
        return s == PageState::resident || s == PageState::inactive || s == PageState::writeback ||
               s == PageState::reading;
    }

private:
    std::uint64_t raw_ = 0;
};

enum class TryLock : bool { no, yes };

class Stage2 {
public:
    explicit Stage2(std::uint64_t pages);
    std::uint64_t pages() const { return pages_; }

    PageEntry peek(std::uint64_t idx) const { return PageEntry(entries_[idx].load(std::memory_order_acquire)); }

    // Take the entry's lock (waiting while another owner holds it); returns the value
    // it had. With TryLock::yes returns nullopt instead of waiting.
    PageEntry lock(std::uint64_t idx);
    std::optional<PageEntry> try_lock(std::uint64_t idx);
    // Show a new value to observers (peek) while keeping the lock.
    void publish_locked(std::uint64_t idx, PageEntry value) {
        entries_[idx].store(value.raw() | PageEntry::kLock, std::memory_order_release);
    }
    // Publish a new value and release the lock; wakes waiters.
    void unlock(std::uint64_t idx, PageEntry value);

    static constexpr std::size_t bytes_per_page() { return sizeof(std::atomic<std::uint64_t>); }

private:
    std::uint64_t pages_;
    std::unique_ptr<std::atomic<std::uint64_t>[]> entries_;
};

// RAII ownership of one entry: unlocks with the value set by `set` (or the value it
// was locked with, if never set).
class PageLock {
public:
    PageLock(Stage2& table, std::uint64_t idx) : table_(&table), idx_(idx), value_(table.lock(idx)) {}
    PageLock(Stage2& table, std::uint64_t idx, PageEntry locked_value) : table_(&table), idx_(idx), value_(locked_value) {}
    PageLock(const PageLock&) = delete;
    PageLock& operator=(const PageLock&) = delete;
    ~PageLock() { table_->unlock(idx_, value_); }
    PageEntry entry() const { return value_; }
    void set(PageEntry v) { value_ = v; }

private:
    Stage2* table_;
    std::uint64_t idx_;
    PageEntry value_;
};

}  // namespace swapvisor::guestmem
