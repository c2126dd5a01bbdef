// Reclaimer: one thread per VM that keeps its resident pages under the effective
// limit (the VM's own limit, or its share of the host budget when the host is over
// it). CLOCK over access samples (guestmem/README.md#reclaim): the hand zaps a
// resident page from the guest view (-> inactive); a guest touch before the hand
// comes back is a MINOR fault that makes it resident again (recently used); a page
// still inactive when the hand returns is cold and is evicted:
//
//   inactive, all zero bytes      -> zero              no write
//   inactive, clean copy in swap  -> swapped(vslot)    no write (write-protected since swap-in)
//   inactive, otherwise           -> writeback -> swapped(new vslot)   batched write
//
// Writes are batched (kBatch pages per write_out; the pool turns contiguous runs into
// single large writes). The page lock is never held across the I/O: writeback is the
// mark, and the completion re-locks and only finishes the eviction if the state is
// still writeback (a fault, VMM write or discard in between wins, and the new slot is
// freed).
#include <algorithm>
#include <chrono>
#include <vector>

#include <spdlog/spdlog.h>

#include "guestmem/guest_memory_impl.hpp"

namespace swapvisor::guestmem {

bool is_zero_page(const std::byte* p);

namespace {

constexpr std::size_t kBatch = 64;        // pages per write_out
constexpr std::uint64_t kScanChunk = 512; // entries visited per pass
constexpr unsigned kRingEntries = 64;

}  // namespace

void GuestMemory::Impl::reclaim_loop() {
    auto ring = io::Ring::create(kRingEntries);
    if (!ring) {
        spdlog::critical("{}: reclaimer cannot create its io_uring: {}", owner.name(), ring.error().message());
        return;
    }
    auto last_warn = std::chrono::steady_clock::time_point{};
    while (!stopping.load()) {
        {
            std::unique_lock lk(reclaim_mutex);
            reclaim_wake.wait_for(lk, std::chrono::milliseconds(50), [&] { return stopping.load() || needs_reclaim(); });
        }
        if (stopping.load()) break;
        // Work down to the low watermark: limit - slack.
        std::uint64_t idle_sweeps = 0;
        while (!stopping.load()) {
            std::uint64_t limit = effective_limit_pages();
            if (limit == 0) break;
            std::uint64_t slack = std::clamp<std::uint64_t>(limit / 32, 64, 4096);
            std::uint64_t target = limit > slack ? limit - slack : 0;
            if (counters.resident_pages.load() <= target) break;
            std::uint64_t freed = reclaim_pass(*ring);
            if (freed) {
                idle_sweeps = 0;
                room_freed.notify_all();
                continue;
            }
            // Two full sweeps without freeing anything: swap is full or failing. Back
            // off instead of spinning; faulters give up waiting after their bound.
            if (++idle_sweeps * kScanChunk > 2 * table.pages()) {
                auto now = std::chrono::steady_clock::now();
                if (now - last_warn > std::chrono::seconds(10)) {
                    spdlog::warn("{}: reclaim made no progress (swap full or failing)", owner.name());
                    last_warn = now;
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(20));
                idle_sweeps = 0;
                break;
            }
        }
    }
}

// One CLOCK step over kScanChunk entries. Returns the pages that left memory.
std::uint64_t GuestMemory::Impl::reclaim_pass(io::Ring& ring) {
    std::uint64_t& hand = clock_hand;
    std::uint64_t freed = 0;
    const std::uint64_t pages = table.pages();

    std::vector<std::uint64_t> demote;            // locked, resident: zap as runs
    std::vector<std::uint64_t> drop;              // locked, inactive: punch as runs
    std::vector<PageEntry> drop_to;               //   ... and their new entries
    std::vector<std::uint64_t> write_idx;         // writeback (unlocked)
    std::vector<swap::PageOut> outs;

    auto flush_demote = [&] {
        std::size_t i = 0;
        while (i < demote.size()) {
            std::size_t j = i + 1;
            while (j < demote.size() && demote[j] == demote[j - 1] + 1 &&
                   &region_of(demote[j]) == &region_of(demote[i]))
                ++j;
            auto r = zap_guest_view(demote[i], j - i);
            for (std::size_t k = i; k < j; ++k) {
                PageEntry e = table.peek(demote[k]);
                table.unlock(demote[k], r ? PageEntry::make(PageState::inactive, e.vslot(), e.clean()) : e);
            }
            i = j;
        }
        demote.clear();
    };
    auto flush_drop = [&] {
        std::size_t i = 0;
        while (i < drop.size()) {
            std::size_t j = i + 1;
            while (j < drop.size() && drop[j] == drop[j - 1] + 1 && &region_of(drop[j]) == &region_of(drop[i])) ++j;
            auto r = punch(drop[i], j - i);
            for (std::size_t k = i; k < j; ++k) {
                if (r) {
                    if (drop_to[k].state() == PageState::swapped) counters.swapped_pages.fetch_add(1);
                    table.unlock(drop[k], drop_to[k]);
                } else {
                    table.unlock(drop[k], table.peek(drop[k]));
                }
            }
            if (r) {
                pages_left_memory(j - i);
                freed += j - i;
            } else {
                spdlog::error("{}: {}", owner.name(), r.error().message());
            }
            i = j;
        }
        drop.clear();
        drop_to.clear();
    };
    auto flush_writeback = [&] {
        if (outs.empty()) return;
        Result<void> batch = pool ? pool->write_out(ring, outs) : Result<void>(make_error(swap::Errc::no_space, "write_out"));
        for (std::size_t k = 0; k < outs.size(); ++k) {
            std::uint64_t idx = write_idx[k];
            const bool ok = batch && outs[k].ok();
            PageEntry e = table.lock(idx);
            if (e.state() != PageState::writeback) {
                // A fault, VMM write or discard took the page meanwhile: the copy is stale.
                if (ok) free_vslot(outs[k].vslot);
                // A discard punched the page, but write_out then read it through the
                // VMM view (checksum, O_DIRECT write), and that read allocated a fresh
                // page in the memfd. Punch it again so the memfd matches the entry;
                // otherwise the next guest touch is a MINOR fault on a zero entry that
                // UFFDIO_COPY cannot resolve (EEXIST), and the guest faults for ever.
                if (!e.present()) (void)punch(idx, 1);
                table.unlock(idx, e);
                continue;
            }
            if (!ok) {
                table.unlock(idx, PageEntry::make(PageState::inactive));  // retry on a later sweep
                continue;
            }
            counters.swap_out_pages.fetch_add(1, std::memory_order_relaxed);
            drop.push_back(idx);
            drop_to.push_back(PageEntry::make(PageState::swapped, outs[k].vslot));
        }
        // drop[] must be ascending for run detection; write_idx was filled in hand order.
        flush_drop();
        outs.clear();
        write_idx.clear();
    };

    for (std::uint64_t n = 0; n < kScanChunk; ++n) {
        std::uint64_t idx = hand;
        hand = (hand + 1) % pages;
        if (idx == 0 && n != 0) {  // wrapped: runs must not span the wrap
            flush_demote();
            flush_drop();
            flush_writeback();
        }
        PageEntry peek = table.peek(idx);
        if (peek.locked()) continue;
        if (peek.state() != PageState::resident && peek.state() != PageState::inactive) continue;
        auto locked = table.try_lock(idx);
        if (!locked) continue;
        PageEntry e = *locked;
        if (e.state() == PageState::resident) {
            demote.push_back(idx);  // stays locked until zapped
            continue;
        }
        if (e.state() != PageState::inactive) {
            table.unlock(idx, e);
            continue;
        }
        // Cold. Decide without writing where possible.
        if (e.clean()) {
            drop.push_back(idx);
            drop_to.push_back(PageEntry::make(PageState::swapped, e.vslot()));
            counters.clean_drops.fetch_add(1, std::memory_order_relaxed);
            note_clean_outcome(/*dirtied=*/false);
        } else if (is_zero_page(vmm_ptr(idx))) {
            drop.push_back(idx);
            drop_to.push_back(PageEntry::make(PageState::zero));
            counters.zero_pages.fetch_add(1, std::memory_order_relaxed);
        } else if (pool) {
            table.unlock(idx, PageEntry::make(PageState::writeback));
            write_idx.push_back(idx);
            outs.push_back(swap::PageOut{vmm_ptr(idx), owner_tag(idx)});
            if (outs.size() == kBatch) {
                flush_demote();
                flush_drop();
                flush_writeback();
            }
        } else {
            table.unlock(idx, e);
        }
    }
    flush_demote();
    flush_drop();
    flush_writeback();
    return freed;
}

}  // namespace swapvisor::guestmem
