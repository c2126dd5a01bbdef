// Stage2: see stage2.hpp.
#include "guestmem/stage2.hpp"

#include <optional>

namespace swapvisor::guestmem {

const char* to_string(PageState s) {
    switch (s) {
        case PageState::zero: return "zero";
        case PageState::resident: return "resident";
        case PageState::inactive: return "inactive";
        case PageState::writeback: return "writeback";
        case PageState::swapped: return "swapped";
        case PageState::reading: return "reading";
        case PageState::lost: return "lost";
    }
    return "?";
}

Stage2::Stage2(std::uint64_t pages)
    : pages_(pages), entries_(std::make_unique<std::atomic<std::uint64_t>[]>(pages)) {
    for (std::uint64_t i = 0; i < pages; ++i) entries_[i].store(0, std::memory_order_relaxed);
}

std::optional<PageEntry> Stage2::try_lock(std::uint64_t idx) {
    auto& e = entries_[idx];
    std::uint64_t cur = e.load(std::memory_order_relaxed);
    while (!(cur & PageEntry::kLock)) {
        // acquire pairs with the release store in unlock(): we see the previous owner's writes.
        if (e.compare_exchange_weak(cur, cur | PageEntry::kLock, std::memory_order_acquire, std::memory_order_relaxed))
            return PageEntry(cur);
    }
    return std::nullopt;
}

PageEntry Stage2::lock(std::uint64_t idx) {
    auto& e = entries_[idx];
    for (;;) {
        if (auto v = try_lock(idx)) return *v;
        std::uint64_t cur = e.load(std::memory_order_relaxed);
        if (cur & PageEntry::kLock) e.wait(cur, std::memory_order_relaxed);
    }
}

void Stage2::unlock(std::uint64_t idx, PageEntry value) {
    auto& e = entries_[idx];
    // release pairs with the acquire CAS in try_lock().
    e.store(value.raw() & ~PageEntry::kLock, std::memory_order_release);
    e.notify_all();
}

}  // namespace swapvisor::guestmem
