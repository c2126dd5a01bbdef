// Reclaimer: one thread per VM that keeps its resident pages under the limit Limits
// puts in force. CLOCK over access samples (guestmem/README.md#reclaim): the hand
// zaps a resident page from the guest view (deactivate, 4); a guest touch before the
// hand comes back is a MINOR fault that makes it resident again (recently used); a
// page still inactive when the hand returns is cold and is evicted:
//
//   inactive, clean copy in swap  -> swapped(vslot)    no write   (drop_cold, 9)
//   inactive, all zero bytes      -> zero              no write   (drop_cold, 8)
//   inactive, otherwise           -> writeback -> swapped(new vslot)  (start_writeback 5,
//                                                                      finish_writeback 7)
//
// This file only walks the hand and batches: kBatch pages per write_out (the pool
// turns contiguous runs into single large writes), zaps and punches as runs. The page
// lock is never held across the write: writeback is the mark.
#include <algorithm>
#include <chrono>
#include <vector>

#include <spdlog/spdlog.h>

#include "guestmem/guest_memory_impl.hpp"

namespace swapvisor::guestmem {
namespace {

constexpr std::size_t kBatch = 64;        // pages per write_out
constexpr std::uint64_t kScanChunk = 512; // entries visited per pass
constexpr unsigned kRingEntries = 64;
constexpr auto kIdleBackoff = std::chrono::milliseconds(20);

}  // namespace

void GuestMemory::Impl::reclaim_loop() {
    auto ring = io::Ring::create(kRingEntries);
    if (!ring) {
        spdlog::critical("{}: reclaimer cannot create its io_uring: {}", name, ring.error().message());
        return;
    }
    auto last_warn = std::chrono::steady_clock::time_point{};
    while (!stopping.load()) {
        limits.wait_for_work(stopping);
        if (stopping.load()) break;
        // Work down to the low watermark.
        std::uint64_t idle_sweeps = 0;
        while (!stopping.load() && !limits.reclaim_done()) {
            if (reclaim_pass(*ring)) {
                idle_sweeps = 0;
                continue;
            }
            // Two full sweeps without freeing anything: swap is full or failing. Back
            // off instead of spinning; faulters give up waiting after their bound.
            if (++idle_sweeps * kScanChunk > 2 * table.pages()) {
                auto now = std::chrono::steady_clock::now();
                if (now - last_warn > std::chrono::seconds(10)) {
                    spdlog::warn("{}: reclaim made no progress (swap full or failing)", name);
                    last_warn = now;
                }
                std::this_thread::sleep_for(kIdleBackoff);
                break;
            }
        }
    }
}

// One CLOCK step over kScanChunk entries. Returns the pages that left memory.
std::uint64_t GuestMemory::Impl::reclaim_pass(io::Ring& ring) {
    std::uint64_t freed = 0;
    const std::uint64_t pages = table.pages();
    std::vector<PageLock> demote;    // resident: zapped as runs
    std::vector<PageLock> dropped;   // cold, no write needed: punched as runs
    std::vector<Writeback> writes;   // cold, dirty: written as one batch (unlocked)

    auto flush = [&] {
        tr.deactivate(demote);
        freed += tr.punch_dropped(dropped);
        if (writes.empty()) return;
        std::vector<swap::PageOut> outs;
        outs.reserve(writes.size());
        for (const Writeback& wb : writes) outs.push_back(wb.out);
        const bool batch_ok = pool->write_out(ring, outs).has_value();
        for (std::size_t k = 0; k < writes.size(); ++k) writes[k].out = outs[k];
        freed += tr.finish_writeback(writes, batch_ok);
        writes.clear();
    };

    for (std::uint64_t n = 0; n < kScanChunk; ++n) {
        const PageIdx idx(clock_hand);
        clock_hand = (clock_hand + 1) % pages;
        if (idx.value() == 0 && n != 0) flush();  // wrapped: runs must not span the wrap
        const PageEntry peek = table.peek(idx);
        if (peek.locked()) continue;
        if (peek.state() != PageState::resident && peek.state() != PageState::inactive) continue;
        auto lk = tr.try_lock(idx);
        if (!lk) continue;
        switch (lk->entry().state()) {
            case PageState::resident:
                demote.push_back(std::move(*lk));  // stays locked until zapped
                break;
            case PageState::inactive:
                // Cold. Drop it without a write where possible.
                if (tr.drop_cold(*lk)) {
                    dropped.push_back(std::move(*lk));
                } else if (pool) {
                    writes.push_back(tr.start_writeback(std::move(*lk)));
                    if (writes.size() == kBatch) flush();
                }
                break;
            default:
                break;
        }
    }
    flush();
    return freed;
}

}  // namespace swapvisor::guestmem
