// The compressed memory tier under the page-state machine, on FakePageKernel: a
// real SwapPool with a memory tier (priority 10) in front of an in-memory
// FakeBlockDevice (priority 0, wrapped in FaultyBlockDevice so a test can hold a
// write). Pages that compress are stored in the tier and swapped in from it,
// pages that do not go to the disk; demotion races a fault on the same page;
// swapoff of the tier runs under faults; the tier's arena counts in the host
// budget. After every step: each entry matches the fake kernel, the counters match
// the table, and the pool holds exactly the vslots the table refers to.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <future>
#include <thread>
#include <vector>

#include "guestmem/limits.hpp"
#include "guestmem/transitions.hpp"
#include "io/fault_injection.hpp"
#include "io/ring.hpp"
#include "io/unique_fd.hpp"
#include "swap/memory_tier.hpp"
#include "swap/swap_pool.hpp"
#include "tests/fakes/fake_block_device.hpp"
#include "tests/fakes/fake_page_kernel.hpp"
#include "tests/guestmem/transitions_sink.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
using swapvisor::testing::FakeBlockDevice;
using swapvisor::testing::FakePageKernel;

namespace {

constexpr std::uint64_t kPages = 256;
constexpr std::uint64_t kRegionPages = 128;

PageIdx P(std::uint64_t i) { return PageIdx(i); }

// Compressible content naming its seed: a random head, then one repeated word.
void fill_compressible(std::byte* page, std::uint64_t seed) {
    std::uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ULL;
    for (std::uint64_t w = 0; w < 32; ++w) {
        x ^= x >> 29;
        x *= 0xBF58476D1CE4E5B9ULL;
        std::memcpy(page + w * 8, &x, 8);
    }
    const std::uint64_t word = seed | 1;
    for (std::uint64_t off = 256; off < kPageSize; off += 8) std::memcpy(page + off, &word, 8);
}
// Content that does not compress.
void fill_random(std::byte* page, std::uint64_t seed) {
    std::uint64_t x = (seed + 7) * 0xD6E8FEB86659FD93ULL;
    for (std::uint64_t w = 0; w < kPageSize / 8; ++w) {
        x ^= x >> 31;
        x *= 0x9E3779B97F4A7C15ULL;
        x ^= seed;
        std::memcpy(page + w * 8, &x, 8);
    }
}
bool holds(const std::byte* page, std::uint64_t seed, bool compressible = true) {
    std::vector<std::byte> want(kPageSize);
    compressible ? fill_compressible(want.data(), seed) : fill_random(want.data(), seed);
    return std::memcmp(page, want.data(), kPageSize) == 0;
}

class FakeMemoryTierTest : public ::testing::Test {
protected:
    void SetUp() override {
        auto ring_or = io::Ring::create(8);
        if (!ring_or) GTEST_SKIP() << "LOUD SKIP: io_uring unavailable here: " << ring_or.error().message();
        ring_.emplace(std::move(*ring_or));
        auto t = pool_.swapon("mem:1M,codec=lz4", 10, 0);
        ASSERT_TRUE(t) << t.error().message();
        tier_ = *t;
        auto dev = std::make_unique<FakeBlockDevice>("fake-disk", 4ULL << 20);
        plan_ = std::make_shared<io::FaultPlan>();
        auto d = pool_.swapon(std::make_unique<io::FaultyBlockDevice>(std::move(dev), plan_), 0);
        ASSERT_TRUE(d);
        disk_ = *d;
    }

    void expect_consistent() {
        std::uint64_t resident = 0, swapped = 0;
        for (std::uint64_t i = 0; i < kPages; ++i) {
            const PageEntry e = table_.peek(P(i));
            EXPECT_FALSE(e.locked()) << "page " << i << " left locked";
            EXPECT_TRUE(kernel_.consistent(P(i), e)) << "page " << i << ": entry " << to_string(e.state());
            resident += e.present();
            swapped += e.state() == PageState::swapped;
        }
        EXPECT_EQ(occupancy_.resident.load(), resident) << "resident counter";
        EXPECT_EQ(occupancy_.swapped.load(), swapped) << "swapped counter";
        EXPECT_EQ(pool_.allocated_vslots(), tr_.referenced_vslots()) << "slot leak or double use";
        std::uint64_t used = 0;
        for (const swap::DeviceStats& d : pool_.stats()) used += d.used_slots;
        EXPECT_EQ(used, pool_.allocated_vslots()) << "a page in two tiers or in none";
    }
    swap::DeviceStats tier_stats() {
        for (const swap::DeviceStats& d : pool_.stats())
            if (d.kind == "memory") return d;
        return {};
    }
    std::optional<swap::DeviceId> device_of(std::uint64_t i) {
        auto p = pool_.pslot_of(table_.peek(P(i)).vslot());
        return p ? std::optional(p->device) : std::nullopt;
    }

    void make_inactive(std::uint64_t i, std::uint64_t seed, bool compressible = true) {
        PageLock lk = tr_.lock(P(i));
        tr_.vmm_write_zero(lk);
        compressible ? fill_compressible(kernel_.vmm_page(P(i)), seed) : fill_random(kernel_.vmm_page(P(i)), seed);
    }
    // The reclaimer's write of pages [first, first + n): write_out, then the completion row.
    void swap_out(std::uint64_t first, std::uint64_t n, bool compressible = true) {
        std::vector<Writeback> batch;
        for (std::uint64_t i = first; i < first + n; ++i) {
            make_inactive(i, i, compressible);
            batch.push_back(tr_.start_writeback(tr_.lock(P(i))));
        }
        std::vector<swap::PageOut> outs;
        for (const Writeback& wb : batch) outs.push_back(wb.out);
        const bool ok = pool_.write_out(*ring_, outs).has_value();
        for (std::size_t k = 0; k < batch.size(); ++k) batch[k].out = outs[k];
        EXPECT_EQ(tr_.finish_writeback(batch, ok), n);
    }

    FakePageKernel kernel_{kPages, kRegionPages};
    Stage2 table_ = Stage2::create(kPages).value();
    Occupancy occupancy_;
    Counters counters_;
    CleanCopyPolicy clean_{true};
    Limits limits_{occupancy_, nullptr, kPages * kPageSize, 0};
    swap::SwapPool pool_;
    Transitions tr_{Transitions::Deps{table_, kernel_, &pool_, limits_, occupancy_, counters_, clean_, "fake", 1}};
    std::optional<io::Ring> ring_;
    swap::DeviceId tier_{};
    swap::DeviceId disk_{};
    std::shared_ptr<io::FaultPlan> plan_;
};

TEST_F(FakeMemoryTierTest, ACompressiblePageIsStoredInTheTierAndSwappedInFromIt) {
    swap_out(10, 4);
    for (std::uint64_t i = 10; i < 14; ++i) {
        EXPECT_EQ(table_.peek(P(i)).state(), PageState::swapped);
        EXPECT_EQ(device_of(i), tier_) << i;
    }
    EXPECT_EQ(tier_stats().stored_pages, 4u);
    EXPECT_GT(tier_stats().arena_bytes, 0u);
    expect_consistent();
    // A guest read fault: decompressed into the page, verified, mapped write-protected
    // (a clean copy stays in the tier); a write then frees the object.
    {
        PageLock lk = tr_.lock(P(11));
        ASSERT_TRUE(tr_.fault_swapped(lk, *ring_));
    }
    EXPECT_TRUE(holds(kernel_.vmm_page(P(11)), 11));
    EXPECT_EQ(tier_stats().swapins_served, 1u);
    expect_consistent();
    {
        PageLock lk = tr_.lock(P(11));
        ASSERT_TRUE(tr_.fault_write_protected(lk));
    }
    EXPECT_EQ(tier_stats().stored_pages, 3u);
    // A VMM write swap-in (a device writing guest memory) frees its slot at once.
    {
        PageLock lk = tr_.lock(P(12));
        ASSERT_TRUE(tr_.vmm_swap_in(lk, *ring_, Access::write));
    }
    EXPECT_TRUE(holds(kernel_.vmm_page(P(12)), 12));
    EXPECT_EQ(tier_stats().stored_pages, 2u);
    expect_consistent();
}

TEST_F(FakeMemoryTierTest, APageThatDoesNotCompressIsRejectedToTheDisk) {
    swap_out(20, 3, /*compressible=*/false);
    swap_out(23, 3, /*compressible=*/true);
    for (std::uint64_t i = 20; i < 23; ++i) EXPECT_EQ(device_of(i), disk_) << i;
    for (std::uint64_t i = 23; i < 26; ++i) EXPECT_EQ(device_of(i), tier_) << i;
    EXPECT_EQ(tier_stats().rejected_pages, 3u);
    EXPECT_EQ(tier_stats().write_errors, 0u);
    expect_consistent();
    for (std::uint64_t i = 20; i < 26; ++i) {
        PageLock lk = tr_.lock(P(i));
        ASSERT_TRUE(tr_.fault_swapped(lk, *ring_));
        EXPECT_TRUE(holds(kernel_.vmm_page(P(i)), i, i >= 23)) << i;
    }
    expect_consistent();
}

// Demotion has read the page from the tier and is writing it to the disk (held
// there) when the guest faults the page in — by a read (the slot stays as a clean
// copy, so demotion's switch succeeds and the copy now lives on the disk) or a
// write (the slot is freed, the switch fails and demotion frees its new slot).
// Either way: the guest gets its bytes, no slot leaks, no page is in two tiers.
class DemotionRace : public FakeMemoryTierTest, public ::testing::WithParamInterface<Access> {};

TEST_P(DemotionRace, DemotionRacingAFaultOnTheSamePage) {
    const Access access = GetParam();
    swap_out(30, 1);
    ASSERT_EQ(device_of(30), tier_);
    std::promise<void> entered, release;
    std::shared_future<void> go = release.get_future().share();
    std::atomic<bool> first{true};
    plan_->add(io::FaultRule{io::FaultMatch::write, {}, {}, 0, {}, io::fault::Gate{[&](const io::BlockIo&) {
                                 if (!first.exchange(false)) return;
                                 entered.set_value();
                                 go.wait();
                             }}});
    std::future<Result<std::uint64_t>> demotion = std::async(std::launch::async, [&]() -> Result<std::uint64_t> {
        auto ring = io::Ring::create(8);
        if (!ring) return std::unexpected(ring.error());
        return pool_.demote_device(*ring, tier_, 1);
    });
    entered.get_future().wait();  // the page is read and being written below
    {
        PageLock lk = tr_.lock(P(30));
        ASSERT_TRUE(access == Access::read ? tr_.fault_swapped(lk, *ring_) : tr_.vmm_swap_in(lk, *ring_, Access::write));
    }
    EXPECT_TRUE(holds(kernel_.vmm_page(P(30)), 30));
    release.set_value();
    auto moved = demotion.get();
    ASSERT_TRUE(moved) << moved.error().message();
    const PageEntry e = table_.peek(P(30));
    if (access == Access::read) {
        // The clean copy moved with its vslot: the page keeps it, now on the disk.
        EXPECT_EQ(*moved, 1u);
        ASSERT_TRUE(e.clean());
        EXPECT_EQ(pool_.pslot_of(e.vslot())->device, disk_);
    } else {
        EXPECT_EQ(*moved, 0u) << "the switch must lose to the free";
        EXPECT_FALSE(e.clean());
    }
    EXPECT_EQ(tier_stats().stored_pages, 0u);
    EXPECT_EQ(tier_stats().arena_bytes, 0u);
    expect_consistent();
}

INSTANTIATE_TEST_SUITE_P(ReadAndWrite, DemotionRace, ::testing::Values(Access::read, Access::write),
                         [](const auto& info) { return info.param == Access::read ? "Read" : "Write"; });

TEST_F(FakeMemoryTierTest, DemotionOfAPageFaultedInBeforeItsReadMovesNothingAndLeaksNothing) {
    swap_out(40, 8);
    {
        PageLock lk = tr_.lock(P(41));
        ASSERT_TRUE(tr_.vmm_swap_in(lk, *ring_, Access::write));  // gone from the tier
    }
    auto moved = pool_.demote_device(*ring_, tier_, 8);
    ASSERT_TRUE(moved);
    EXPECT_EQ(*moved, 7u);
    for (std::uint64_t i = 40; i < 48; ++i) {
        if (i == 41) continue;
        EXPECT_EQ(device_of(i), disk_) << i;
        PageLock lk = tr_.lock(P(i));
        ASSERT_TRUE(tr_.fault_swapped(lk, *ring_));
        EXPECT_TRUE(holds(kernel_.vmm_page(P(i)), i)) << i;
    }
    EXPECT_EQ(tier_stats().demoted_pages, 7u);
    expect_consistent();
}

TEST_F(FakeMemoryTierTest, SwapoffOfTheTierUnderFaultsMovesEveryPageDownAndLosesNone) {
    swap_out(0, 200);
    ASSERT_EQ(tier_stats().stored_pages, 200u);
    guestmem::testing::TransitionsSink sink(tr_, 0);  // no room in memory: everything goes down
    pool_.set_eviction_sink(&sink);
    std::future<Result<swap::SwapoffReport>> off = std::async(std::launch::async, [&]() -> Result<swap::SwapoffReport> {
        auto ring = io::Ring::create(8);
        if (!ring) return std::unexpected(ring.error());
        return pool_.swapoff("mem:1M", *ring);
    });
    // The guest touches pages while the tier goes away: reads and writes, odd pages.
    for (std::uint64_t i = 1; i < 200; i += 2) {
        PageLock lk = tr_.lock(P(i));
        ASSERT_TRUE(i % 4 == 1 ? tr_.fault_swapped(lk, *ring_) : tr_.vmm_swap_in(lk, *ring_, Access::write)) << i;
        EXPECT_TRUE(holds(kernel_.vmm_page(P(i)), i)) << i;
    }
    auto report = off.get();
    pool_.set_eviction_sink(nullptr);
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_EQ(report->pages_brought_back, 0u);
    EXPECT_EQ(report->pages_lost, 0u);
    EXPECT_LE(report->pages_moved + report->pages_skipped, 200u);
    EXPECT_GE(report->pages_moved, 100u);  // at least every page nobody touched
    ASSERT_EQ(pool_.stats().size(), 1u) << "the tier is gone";
    for (std::uint64_t i = 0; i < 200; i += 2) {
        EXPECT_EQ(device_of(i), disk_) << i;
        PageLock lk = tr_.lock(P(i));
        ASSERT_TRUE(tr_.fault_swapped(lk, *ring_));
        EXPECT_TRUE(holds(kernel_.vmm_page(P(i)), i)) << i;
    }
    EXPECT_EQ(pool_.memory_tier_bytes(), 0u);
    expect_consistent();
}

TEST(FakeMemoryTierBudget, TheTiersArenaCountsAgainstTheHostBudget) {
    auto ring = io::Ring::create(8);
    if (!ring) GTEST_SKIP() << "LOUD SKIP: io_uring unavailable here: " << ring.error().message();
    swap::SwapPool pool;
    auto tier = pool.swapon("mem:4M", 0, 0);
    ASSERT_TRUE(tier);
    HostBudget budget(8ULL << 20);  // 2048 pages
    budget.count_also([&pool] { return pool.memory_tier_bytes(); });
    budget.vm_added(16ULL << 20);
    budget.note_added(1024);
    EXPECT_EQ(budget.charged_pages(), 1024u);
    EXPECT_EQ(budget.room_pages(), 1024u);
    EXPECT_FALSE(budget.over_budget());
    // 600 pages stored compressed: their arena is charged, the pages themselves are not.
    auto mapping = io::Mapping::anonymous(600 * kPageSize);  // page aligned, as guest pages are
    ASSERT_TRUE(mapping);
    std::span<std::byte> pages = mapping->span();
    std::vector<swap::PageOut> outs;
    for (std::uint64_t i = 0; i < 600; ++i) {
        fill_compressible(pages.data() + i * kPageSize, i);
        outs.push_back(swap::PageOut{pages.data() + i * kPageSize, i});
    }
    ASSERT_TRUE(pool.write_out(*ring, outs));
    const std::uint64_t arena = pool.memory_tier_bytes();
    ASSERT_GT(arena, 0u);
    EXPECT_LT(arena, 600 * kPageSize / 4) << "it compressed";
    EXPECT_EQ(budget.charged_pages(), 1024u + (arena + kPageSize - 1) / kPageSize);
    EXPECT_EQ(budget.room_pages(), 2048u - budget.charged_pages());
    // The budget a VM may hold shrinks by what the tier holds when the host is over it.
    budget.note_added(1000);
    ASSERT_TRUE(budget.over_budget());
    EXPECT_EQ(budget.share_pages(16ULL << 20), ((8ULL << 20) - arena) / kPageSize);
    for (const swap::PageOut& p : outs) pool.free(p.vslot);
    EXPECT_EQ(pool.memory_tier_bytes(), 0u);
    EXPECT_EQ(budget.charged_pages(), 2024u);
}

}  // namespace
