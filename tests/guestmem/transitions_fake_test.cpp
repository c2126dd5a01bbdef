// Every row of the page-state machine (guestmem/transitions.hpp) and every race the
// README lists, on FakePageKernel: no root, no userfaultfd, no threads of guestmem's
// own. A race is an interleaving of row calls — what the threads of the real VM would
// do in that order — so each one runs in microseconds and deterministically. Swap is
// a real SwapPool over an in-memory FakeBlockDevice (wrapped in FaultyBlockDevice
// when a test needs an I/O to fail or to be held). After every step the tests check
// the invariant: each entry matches the fake kernel's model of its page, the
// occupancy counters match the table, and at rest the pool holds exactly the slots
// the table refers to. The real-stack versions stay in transitions_test.cpp.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "guestmem/fault_service.hpp"
#include "guestmem/owner_tag.hpp"
#include "guestmem/snapshot_image.hpp"
#include "guestmem/transitions.hpp"
#include "io/fault_injection.hpp"
#include "io/ring.hpp"
#include "swap/swap_device.hpp"
#include "swap/swap_pool.hpp"
#include "tests/fakes/fake_block_device.hpp"
#include "tests/fakes/fake_page_kernel.hpp"
#include "tests/guestmem/transitions_sink.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
using swapvisor::testing::FakeBlockDevice;
using swapvisor::testing::FakePageKernel;
using Op = FakePageKernel::Op;
using View = FakePageKernel::View;

namespace {

constexpr std::uint64_t kPages = 64;
constexpr std::uint64_t kRegionPages = 32;  // two regions: runs must split at 32

PageIdx P(std::uint64_t i) { return PageIdx(i); }

void fill(std::byte* page, std::uint64_t seed) {
    for (std::uint64_t w = 0; w < kPageSize / 8; ++w) {
        std::uint64_t v = (seed + 1) * 0x9E3779B97F4A7C15ULL ^ (w * 0xBF58476D1CE4E5B9ULL);
        v |= 1;
        std::memcpy(page + w * 8, &v, 8);
    }
}
bool holds(const std::byte* page, std::uint64_t seed) {
    std::vector<std::byte> want(kPageSize);
    fill(want.data(), seed);
    return std::memcmp(page, want.data(), kPageSize) == 0;
}

class FakeTransitionsTest : public ::testing::Test {
protected:
    void SetUp() override {
        auto ring_or = io::Ring::create(8);
        if (!ring_or) GTEST_SKIP() << "LOUD SKIP: io_uring unavailable here: " << ring_or.error().message();
        ring_.emplace(std::move(*ring_or));
        auto dev = std::make_unique<FakeBlockDevice>("fake-swap", 4ULL << 20);
        disk_ = dev.get();
        plan_ = std::make_shared<io::FaultPlan>();
        ASSERT_TRUE(pool_.swapon(std::make_unique<io::FaultyBlockDevice>(std::move(dev), plan_), 0));
    }

    // The README's invariants, checked after every step.
    void expect_consistent() {
        std::uint64_t resident = 0, swapped = 0;
        for (std::uint64_t i = 0; i < kPages; ++i) {
            const PageEntry e = table_.peek(P(i));
            EXPECT_FALSE(e.locked()) << "page " << i << " left locked";
            EXPECT_TRUE(kernel_.consistent(P(i), e))
                << "page " << i << ": entry " << to_string(e.state()) << (e.clean() ? "+CLN" : "")
                << " does not match the kernel (present " << kernel_.present(P(i)) << ", view "
                << static_cast<int>(kernel_.view(P(i))) << ")";
            resident += e.present();
            swapped += e.state() == PageState::swapped;
        }
        EXPECT_EQ(occupancy_.resident.load(), resident) << "resident counter";
        EXPECT_EQ(occupancy_.swapped.load(), swapped) << "swapped counter";
        EXPECT_EQ(pool_.allocated_vslots(), tr_.referenced_vslots()) << "slot leak or double use";
    }

    // --- bring a page into a state through the rows themselves -----------------------
    void make_inactive(std::uint64_t i, std::uint64_t seed) {
        PageLock lk = tr_.lock(P(i));
        tr_.vmm_write_zero(lk);
        fill(kernel_.vmm_page(P(i)), seed);
    }
    void make_resident(std::uint64_t i, std::uint64_t seed) {
        make_inactive(i, seed);
        PageLock lk = tr_.lock(P(i));
        ASSERT_TRUE(tr_.fault_minor(lk));
    }
    swap::VSlot make_swapped(std::uint64_t i, std::uint64_t seed) {
        make_inactive(i, seed);
        Writeback wb = tr_.start_writeback(tr_.lock(P(i)));
        write({&wb, 1});
        EXPECT_EQ(table_.peek(P(i)).state(), PageState::swapped);
        return table_.peek(P(i)).vslot();
    }
    // Swapped, then swapped in by a read: inactive with a clean copy.
    void make_clean_inactive(std::uint64_t i, std::uint64_t seed) {
        make_swapped(i, seed);
        PageLock lk = tr_.lock(P(i));
        ASSERT_TRUE(tr_.vmm_swap_in(lk, *ring_, Access::read));
        ASSERT_TRUE(lk.entry().clean());
    }
    // The reclaimer's scan of cold dirty pages [first, first + n): rows 8 / 5 through
    // evict_cold with one staging buffer, as reclaim_pass does. Zero pages are punched.
    std::vector<Writeback> evict(std::uint64_t first, std::uint64_t n) {
        std::vector<PageLock> cold, dropped;
        for (std::uint64_t i = first; i < first + n; ++i) cold.push_back(tr_.lock(P(i)));
        std::vector<Writeback> writes;
        tr_.evict_cold(cold, tr_.staging().acquire(), dropped, writes);
        (void)tr_.punch_dropped(dropped);
        return writes;
    }
    // The reclaimer's write: write_out, then the completion row.
    std::uint64_t write(std::span<Writeback> batch) {
        std::vector<swap::PageOut> outs;
        for (const Writeback& wb : batch) outs.push_back(wb.out);
        const bool ok = pool_.write_out(*ring_, outs).has_value();
        for (std::size_t k = 0; k < batch.size(); ++k) batch[k].out = outs[k];
        return tr_.finish_writeback(batch, ok);
    }

    FakePageKernel kernel_{kPages, kRegionPages};
    Stage2 table_ = Stage2::create(kPages).value();
    Occupancy occupancy_;
    Counters counters_;
    CleanCopyPolicy clean_{true};
    Limits limits_{occupancy_, nullptr, kPages * kPageSize, 0};
    // Writes of at most 4 pages, so one batch can be split by a write that fails.
    swap::SwapPool pool_{swap::SwapPoolConfig{.max_run_pages = 4}};
    Transitions tr_{Transitions::Deps{table_, kernel_, &pool_, limits_, occupancy_, counters_, clean_, "fake", 1}};
    std::optional<io::Ring> ring_;
    FakeBlockDevice* disk_ = nullptr;
    std::shared_ptr<io::FaultPlan> plan_;
};

// --- the lock --------------------------------------------------------------------------

TEST_F(FakeTransitionsTest, AnUnchangedLockPublishesWhatItLockedAndCountsNothing) {
    make_inactive(3, 1);
    { PageLock lk = tr_.lock(P(3)); }
    EXPECT_EQ(table_.peek(P(3)).state(), PageState::inactive);
    EXPECT_EQ(occupancy_.resident.load(), 1u);
    EXPECT_FALSE(tr_.try_lock(P(3)) == std::nullopt);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, TryLockFailsWhileAnotherOwnerHoldsThePage) {
    PageLock held = tr_.lock(P(5));
    std::thread([&] { EXPECT_FALSE(tr_.try_lock(P(5)).has_value()); }).join();
}

// --- rows ------------------------------------------------------------------------------

TEST_F(FakeTransitionsTest, Row1ZeroFaultMapsAZeroPage) {
    {
        PageLock lk = tr_.lock(P(2));
        ASSERT_TRUE(tr_.fault_zero(lk));
    }
    EXPECT_EQ(table_.peek(P(2)).state(), PageState::resident);
    EXPECT_EQ(kernel_.view(P(2)), View::mapped);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row1ZeroFaultOnAnOwnerlessPresentPageMapsIt) {
    // A write_out that read a just-discarded page through the VMM view allocated it:
    // UFFDIO_COPY says EEXIST, and CONTINUE maps the (zero) page instead.
    (void)kernel_.vmm_page(P(4));
    {
        PageLock lk = tr_.lock(P(4));
        ASSERT_TRUE(tr_.fault_zero(lk));
    }
    EXPECT_EQ(table_.peek(P(4)).state(), PageState::resident);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row1FaultAroundMarksOnlyThePagesTheKernelMapped) {
    std::vector<PageLock> run;
    for (std::uint64_t i = 10; i < 16; ++i) run.push_back(tr_.lock(P(i)));
    kernel_.fail_next(Op::copy_zeros, std::make_error_code(std::errc::no_such_process), 2);
    tr_.fault_around(run);
    run.clear();
    EXPECT_EQ(table_.peek(P(10)).state(), PageState::resident);
    EXPECT_EQ(table_.peek(P(11)).state(), PageState::resident);
    for (std::uint64_t i = 12; i < 16; ++i) EXPECT_EQ(table_.peek(P(i)).state(), PageState::zero) << i;
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row2And3VmmWriteMakesInactiveThenAMinorFaultMapsIt) {
    make_inactive(7, 7);
    EXPECT_EQ(table_.peek(P(7)).state(), PageState::inactive);
    expect_consistent();
    {
        PageLock lk = tr_.lock(P(7));
        ASSERT_TRUE(tr_.fault_minor(lk));
    }
    EXPECT_EQ(table_.peek(P(7)).state(), PageState::resident);
    EXPECT_EQ(counters_.minor_faults.load(), 1u);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row3AMinorFaultMarksThePageActiveAndEveryOtherRowClearsIt) {
    make_inactive(7, 7);
    {
        PageLock lk = tr_.lock(P(7));
        ASSERT_TRUE(tr_.fault_minor(lk));
    }
    EXPECT_EQ(table_.peek(P(7)).state(), PageState::resident);
    EXPECT_EQ(table_.peek(P(7)).active(), Transitions::kActiveSweeps) << "used again since its zap: hot";
    // A first touch or a zap leaves no ACT behind.
    {
        PageLock lk = tr_.lock(P(8));
        ASSERT_TRUE(tr_.fault_zero(lk));
    }
    EXPECT_EQ(table_.peek(P(8)).active(), 0u);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row4aTheHandPassesAnActivePageKActiveSweepsTimesThenZapsIt) {
    make_inactive(7, 7);
    {
        PageLock lk = tr_.lock(P(7));
        ASSERT_TRUE(tr_.fault_minor(lk));
    }
    kernel_.clear_history();
    for (unsigned pass = 0; pass < Transitions::kActiveSweeps; ++pass) {
        PageLock lk = tr_.lock(P(7));
        ASSERT_TRUE(tr_.pass_active(lk)) << pass;
        EXPECT_EQ(lk.entry().active(), Transitions::kActiveSweeps - pass - 1);
    }
    EXPECT_TRUE(kernel_.history().empty()) << "passing an active page makes no kernel call";
    EXPECT_EQ(kernel_.view(P(7)), View::mapped);
    expect_consistent();
    std::vector<PageLock> batch;
    batch.push_back(tr_.lock(P(7)));
    EXPECT_FALSE(tr_.pass_active(batch.front())) << "ACT 0: the hand zaps it (4)";
    tr_.deactivate(batch);
    EXPECT_EQ(table_.peek(P(7)).state(), PageState::inactive);
    EXPECT_EQ(table_.peek(P(7)).active(), 0u);
    EXPECT_EQ(kernel_.history(), (std::vector<FakePageKernel::Call>{{Op::zap, 7, 1}}));
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row4aACleanCopyKeepsItsSlotAndWriteProtectionWhileActive) {
    // Swapped in clean (row 10, WP), zapped (4), used again (3: ACT set, still WP).
    make_swapped(12, 12);
    {
        PageLock lk = tr_.lock(P(12));
        ASSERT_TRUE(tr_.fault_swapped(lk, *ring_));
    }
    {
        std::vector<PageLock> batch;
        batch.push_back(tr_.lock(P(12)));
        tr_.deactivate(batch);
    }
    {
        PageLock lk = tr_.lock(P(12));
        ASSERT_TRUE(tr_.fault_minor(lk));
    }
    const PageEntry e = table_.peek(P(12));
    ASSERT_EQ(e.state(), PageState::resident);
    ASSERT_TRUE(e.clean());
    EXPECT_EQ(e.active(), Transitions::kActiveSweeps);
    {
        PageLock lk = tr_.lock(P(12));
        ASSERT_TRUE(tr_.pass_active(lk));
        EXPECT_TRUE(lk.entry().clean());
        EXPECT_EQ(lk.entry().vslot(), e.vslot());
    }
    EXPECT_EQ(kernel_.view(P(12)), View::mapped_wp);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row4DeactivateZapsContiguousRunsButNeverAcrossARegion) {
    for (std::uint64_t i = 29; i < 36; ++i) make_resident(i, i);
    kernel_.clear_history();
    std::vector<PageLock> batch;
    for (std::uint64_t i = 29; i < 36; ++i) batch.push_back(tr_.lock(P(i)));
    tr_.deactivate(batch);
    const std::vector<FakePageKernel::Call> want{{Op::zap, 29, 3}, {Op::zap, 32, 4}};
    EXPECT_EQ(kernel_.history(), want);
    for (std::uint64_t i = 29; i < 36; ++i) EXPECT_EQ(table_.peek(P(i)).state(), PageState::inactive);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row4AFailedZapLeavesThePagesResident) {
    make_resident(1, 1);
    kernel_.fail_next(Op::zap, std::make_error_code(std::errc::invalid_argument));
    std::vector<PageLock> batch;
    batch.push_back(tr_.lock(P(1)));
    tr_.deactivate(batch);
    EXPECT_EQ(table_.peek(P(1)).state(), PageState::resident);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Rows5And7WritebackEndsSwappedWithTheBytesInSwap) {
    for (std::uint64_t i = 40; i < 44; ++i) make_inactive(i, 100 + i);
    std::vector<Writeback> batch;
    for (std::uint64_t i = 40; i < 44; ++i) batch.push_back(tr_.start_writeback(tr_.lock(P(i))));
    EXPECT_EQ(table_.peek(P(41)).state(), PageState::writeback);
    EXPECT_FALSE(table_.peek(P(41)).locked()) << "the lock is never held across swap I/O";
    kernel_.clear_history();
    EXPECT_EQ(write(batch), 4u);
    EXPECT_EQ(kernel_.history(), (std::vector<FakePageKernel::Call>{{Op::punch, 40, 4}})) << "one punch per run";
    EXPECT_EQ(counters_.swap_out_pages.load(), 4u);
    expect_consistent();
    // And back: a read swap-in returns the same bytes.
    PageLock lk = tr_.lock(P(42));
    ASSERT_TRUE(tr_.vmm_swap_in(lk, *ring_, Access::read));
    EXPECT_TRUE(holds(kernel_.vmm_page(P(42)), 142));
}

TEST_F(FakeTransitionsTest, Row7FailedWriteLeavesThePageInactiveAndNothingLost) {
    make_inactive(9, 9);
    plan_->add(io::FaultRule{.match = io::FaultMatch::write, .action = io::fault::Eio{}});
    Writeback wb = tr_.start_writeback(tr_.lock(P(9)));
    EXPECT_EQ(write({&wb, 1}), 0u);
    EXPECT_EQ(table_.peek(P(9)).state(), PageState::inactive);
    EXPECT_TRUE(holds(kernel_.vmm_page(P(9)), 9));
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row7AFailedPunchKeepsThePageInMemoryAndFreesTheNewSlot) {
    make_inactive(9, 9);
    Writeback wb = tr_.start_writeback(tr_.lock(P(9)));
    kernel_.fail_next(Op::punch, std::make_error_code(std::errc::io_error));
    EXPECT_EQ(write({&wb, 1}), 0u);
    EXPECT_EQ(table_.peek(P(9)).state(), PageState::inactive);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row8AnAllZeroPageIsDroppedWithoutAWrite) {
    {
        PageLock lk = tr_.lock(P(6));
        tr_.vmm_write_zero(lk);  // present, but nothing was written
    }
    std::vector<PageLock> dropped;
    dropped.push_back(tr_.lock(P(6)));
    ASSERT_TRUE(tr_.drop_cold(dropped.back()));
    EXPECT_EQ(tr_.punch_dropped(dropped), 1u);
    EXPECT_EQ(table_.peek(P(6)).state(), PageState::zero);
    EXPECT_EQ(counters_.zero_pages.load(), 1u);
    EXPECT_EQ(pool_.allocated_vslots(), 0u);
    expect_consistent();
}

// Rows 8 and 5 as the reclaimer runs them (issue #18 item 2): one copy_out per run,
// the zero check and the checksum in one pass over the copy, the copies written from
// one buffer with the gap of the zero page closed, and no access through the VMM view.
TEST_F(FakeTransitionsTest, Rows8And5StageEachRunOnceAndWriteTheCopyWithoutTheVmmView) {
    for (std::uint64_t i = 40; i < 48; ++i) {
        if (i == 43) {
            PageLock lk = tr_.lock(P(i));
            tr_.vmm_write_zero(lk);  // present, all zero
        } else {
            make_inactive(i, 100 + i);
        }
    }
    kernel_.clear_history();
    const std::size_t touches = kernel_.vmm_touches();
    std::vector<Writeback> batch = evict(40, 8);
    ASSERT_EQ(batch.size(), 7u);
    EXPECT_EQ(table_.peek(P(43)).state(), PageState::zero) << "row 8: the zero page is dropped";
    EXPECT_EQ(counters_.zero_pages.load(), 1u);
    for (std::size_t k = 0; k < batch.size(); ++k) {
        EXPECT_EQ(batch[k].out.data, batch[0].out.data + k * kPageSize) << "copies back to back";
        ASSERT_TRUE(batch[k].out.checksum.has_value());
        EXPECT_EQ(*batch[k].out.checksum, swap::page_checksum(batch[k].out.data)) << "the checksum is the copy's";
        EXPECT_EQ(table_.peek(batch[k].idx).state(), PageState::writeback);
        EXPECT_FALSE(table_.peek(batch[k].idx).locked());
    }
    EXPECT_EQ(write(batch), 7u);
    EXPECT_EQ(kernel_.vmm_touches(), touches) << "no page was read through the VMM view";
    EXPECT_EQ(kernel_.history(), (std::vector<FakePageKernel::Call>{
                                     {Op::copy_out, 40, 8}, {Op::punch, 43, 1}, {Op::punch, 40, 3}, {Op::punch, 44, 4}}))
        << "one copy per run, one punch per run";
    expect_consistent();
    for (std::uint64_t i = 40; i < 48; ++i) {
        if (i == 43) continue;
        PageLock lk = tr_.lock(P(i));
        ASSERT_TRUE(tr_.vmm_swap_in(lk, *ring_, Access::read));
        EXPECT_TRUE(holds(kernel_.vmm_page(P(i)), 100 + i)) << "page " << i;
    }
    expect_consistent();
}

// A run whose middle page the guest touched while the batch was being written: the
// completion punches the pages around it and never the touched one (issue #18 item 2).
TEST_F(FakeTransitionsTest, Row7ARunWithAPageRetouchedMidBatchIsPunchedAroundIt) {
    for (std::uint64_t i = 40; i < 48; ++i) make_inactive(i, 200 + i);
    std::vector<Writeback> batch = evict(40, 8);
    ASSERT_EQ(batch.size(), 8u);
    {
        PageLock lk = tr_.lock(P(44));
        ASSERT_TRUE(tr_.fault_minor(lk));  // 6: the guest touches it, then writes it
        fill(kernel_.vmm_page(P(44)), 999);
    }
    kernel_.clear_history();
    EXPECT_EQ(write(batch), 7u);
    EXPECT_EQ(kernel_.history(), (std::vector<FakePageKernel::Call>{{Op::punch, 40, 4}, {Op::punch, 45, 3}}));
    EXPECT_EQ(table_.peek(P(44)).state(), PageState::resident);
    EXPECT_EQ(kernel_.view(P(44)), View::mapped);
    EXPECT_TRUE(holds(kernel_.vmm_page(P(44)), 999)) << "the guest's write survives";
    expect_consistent();  // and the write's slot for 44 was freed
}

// A batch whose second write fails: those pages go back to inactive (7') and only the
// run that was written is punched.
TEST_F(FakeTransitionsTest, Row7ARunSplitByAFailedWriteIsPunchedOnlyWhereWritten) {
    for (std::uint64_t i = 40; i < 48; ++i) make_inactive(i, 300 + i);
    std::vector<Writeback> batch = evict(40, 8);
    ASSERT_EQ(batch.size(), 8u);
    // Slots 0-7 of a fresh device; writes of 4 pages: the one of slots 4-7 fails.
    plan_->add(io::FaultRule{.match = io::FaultMatch::write,
                             .begin = io::DevOffset(5 * kPageSize),
                             .end = io::DevOffset(9 * kPageSize),
                             .action = io::fault::Eio{}});
    kernel_.clear_history();
    EXPECT_EQ(write(batch), 4u);
    EXPECT_EQ(kernel_.history(), (std::vector<FakePageKernel::Call>{{Op::punch, 40, 4}}));
    for (std::uint64_t i = 40; i < 44; ++i) EXPECT_EQ(table_.peek(P(i)).state(), PageState::swapped);
    for (std::uint64_t i = 44; i < 48; ++i) {
        EXPECT_EQ(table_.peek(P(i)).state(), PageState::inactive) << "7': nothing lost";
        EXPECT_TRUE(holds(kernel_.vmm_page(P(i)), 300 + i));
    }
    expect_consistent();
}

// The fused checksum (issue #18 item 2): the checksum is taken from the staged copy
// when the page enters writeback. If the guest changes the page before that write
// completes, the write must never be adopted with its older bytes (its checksum
// matches them, so a read would not catch it): the entry left this writeback, the
// completion frees the slot, and the page's newer bytes are what swap ends up with.
TEST_F(FakeTransitionsTest, Row5APageChangedAfterItsScanIsNeverStoredUnderTheScansChecksum) {
    make_inactive(40, 1);
    std::vector<Writeback> first = evict(40, 1);  // staged: bytes of seed 1 and their checksum
    ASSERT_EQ(first.size(), 1u);
    {
        PageLock lk = tr_.lock(P(40));
        ASSERT_TRUE(tr_.fault_minor(lk));  // 6
        fill(kernel_.vmm_page(P(40)), 2);  // the guest's store
    }
    {
        std::vector<PageLock> run;
        run.push_back(tr_.lock(P(40)));
        tr_.deactivate(run);  // 4: the hand comes back
    }
    std::vector<Writeback> second = evict(40, 1);  // 5 again, a newer epoch: bytes of seed 2
    ASSERT_EQ(second.size(), 1u);
    EXPECT_NE(*first[0].out.checksum, *second[0].out.checksum);
    // The older write completes last or first: it never becomes the page.
    EXPECT_EQ(write(first), 0u);
    EXPECT_EQ(table_.peek(P(40)).state(), PageState::writeback);
    EXPECT_EQ(write(second), 1u);
    expect_consistent();
    PageLock lk = tr_.lock(P(40));
    ASSERT_TRUE(tr_.vmm_swap_in(lk, *ring_, Access::read));
    EXPECT_TRUE(holds(kernel_.vmm_page(P(40)), 2)) << "the newer bytes, never the scan's";
}

TEST_F(FakeTransitionsTest, Row9ACleanCopyIsDroppedWithoutAWriteKeepingItsSlot) {
    make_clean_inactive(12, 12);
    const swap::VSlot v = table_.peek(P(12)).vslot();
    std::vector<PageLock> dropped;
    dropped.push_back(tr_.lock(P(12)));
    ASSERT_TRUE(tr_.drop_cold(dropped.back()));
    EXPECT_EQ(tr_.punch_dropped(dropped), 1u);
    EXPECT_EQ(table_.peek(P(12)), PageEntry::make(PageState::swapped, v));
    EXPECT_EQ(counters_.clean_drops.load(), 1u);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row10MajorFaultVerifiesThenMapsWriteProtectedAndRow13FreesTheCopy) {
    make_swapped(20, 20);
    {
        PageLock lk = tr_.lock(P(20));
        ASSERT_TRUE(tr_.fault_swapped(lk, *ring_));
    }
    EXPECT_EQ(table_.peek(P(20)).state(), PageState::resident);
    EXPECT_TRUE(table_.peek(P(20)).clean());
    EXPECT_EQ(kernel_.view(P(20)), View::mapped_wp);
    EXPECT_TRUE(holds(kernel_.vmm_page(P(20)), 20));
    expect_consistent();
    {
        PageLock lk = tr_.lock(P(20));
        ASSERT_TRUE(tr_.fault_write_protected(lk));
    }
    EXPECT_FALSE(table_.peek(P(20)).clean());
    EXPECT_EQ(kernel_.view(P(20)), View::mapped);
    EXPECT_EQ(pool_.allocated_vslots(), 0u);
    expect_consistent();
}

// Row 10 reads into the fault thread's bounce page and maps the verified bytes with
// one UFFDIO_COPY (docs/DESIGN-NOTES.md 41): no memfd page exists while the read is
// in flight (none is allocated and pinned under the O_DIRECT read), no CONTINUE
// follows, and the memfd page the copy made is the one the VMM view reads.
TEST_F(FakeTransitionsTest, Row10ReadsIntoTheBouncePageAndMapsWithOneCopy) {
    make_swapped(23, 23);
    std::optional<bool> present_during_read;
    const auto gate = plan_->add(io::FaultRule{.match = io::FaultMatch::read, .times = 1,
                                               .action = io::fault::Gate{[&](const io::BlockIo&) {
                                                   present_during_read = kernel_.present(P(23));
                                               }}});
    kernel_.clear_history();
    {
        PageLock lk = tr_.lock(P(23));
        ASSERT_TRUE(tr_.fault_swapped(lk, *ring_));
    }
    EXPECT_EQ(plan_->hits(gate), 1u);
    ASSERT_TRUE(present_during_read.has_value());
    EXPECT_FALSE(*present_during_read) << "the memfd page was allocated under the read";
    EXPECT_EQ(kernel_.count(Op::copy_page), 1u);
    EXPECT_EQ(kernel_.count(Op::continue_), 0u);
    EXPECT_EQ(table_.peek(P(23)).state(), PageState::resident);
    EXPECT_TRUE(table_.peek(P(23)).clean());
    EXPECT_EQ(kernel_.view(P(23)), View::mapped_wp) << "a clean copy is mapped write-protected";
    EXPECT_TRUE(holds(kernel_.vmm_page(P(23)), 23)) << "the VMM view reads what the copy mapped";
    expect_consistent();
}

// A memfd page already there (an O_DIRECT write_out re-allocated it through the VMM
// view after a punch): UFFDIO_COPY answers EEXIST; the verified bytes go into that
// page and CONTINUE maps it.
TEST_F(FakeTransitionsTest, Row10FallsBackToContinueWhenTheMemfdAlreadyHoldsAPage) {
    make_swapped(24, 24);
    std::memset(kernel_.vmm_page(P(24)), 0x5a, kPageSize);  // a stray page, stale bytes
    kernel_.clear_history();
    {
        PageLock lk = tr_.lock(P(24));
        ASSERT_TRUE(tr_.fault_swapped(lk, *ring_));
    }
    EXPECT_EQ(kernel_.count(Op::copy_page), 1u);
    EXPECT_EQ(kernel_.count(Op::continue_), 1u);
    EXPECT_EQ(table_.peek(P(24)).state(), PageState::resident);
    EXPECT_EQ(kernel_.view(P(24)), View::mapped_wp);
    EXPECT_TRUE(holds(kernel_.vmm_page(P(24)), 24)) << "the verified bytes, not the stray page's";
    expect_consistent();
}

// Any other copy failure maps nothing: the verified bytes stay in the memfd as an
// inactive page (its clean copy kept), and the guest's next fault is a MINOR one.
TEST_F(FakeTransitionsTest, Row10ACopyThatFailsLeavesTheVerifiedPageInactive) {
    make_swapped(25, 25);
    kernel_.fail_next(Op::copy_page, std::make_error_code(std::errc::no_such_process));
    {
        PageLock lk = tr_.lock(P(25));
        EXPECT_FALSE(tr_.fault_swapped(lk, *ring_));
    }
    EXPECT_EQ(table_.peek(P(25)).state(), PageState::inactive);
    EXPECT_TRUE(table_.peek(P(25)).clean());
    EXPECT_TRUE(holds(kernel_.vmm_page(P(25)), 25));
    expect_consistent();
    {
        PageLock lk = tr_.lock(P(25));
        ASSERT_TRUE(tr_.fault_minor(lk));
    }
    EXPECT_EQ(kernel_.view(P(25)), View::mapped_wp);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row10ReadaheadMarksResidentOnlyWhatContinueReallyMapped) {
    // Issue #9: UFFDIO_CONTINUE maps a prefix, then fails. Pages it mapped must be
    // recorded as mapped (resident), the rest as inactive, or a later zap/writeback
    // works from a wrong picture and a guest write can be lost.
    for (std::uint64_t i = 50; i < 54; ++i) make_swapped(i, i);
    std::vector<PageLock> run;
    for (std::uint64_t i = 50; i < 54; ++i) run.push_back(tr_.lock(P(i)));
    kernel_.fail_next(Op::continue_, std::make_error_code(std::errc::resource_unavailable_try_again), 2);
    tr_.read_ahead(run, *ring_);
    run.clear();
    EXPECT_EQ(table_.peek(P(50)).state(), PageState::resident);
    EXPECT_EQ(table_.peek(P(51)).state(), PageState::resident);
    EXPECT_EQ(table_.peek(P(52)).state(), PageState::inactive);
    EXPECT_EQ(table_.peek(P(53)).state(), PageState::inactive);
    EXPECT_EQ(counters_.readahead_pages.load(), 4u);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row10ReadaheadKeepsAFailedPageSwapped) {
    for (std::uint64_t i = 50; i < 53; ++i) make_swapped(i, i);
    // Corrupt the middle page on "disk": its checksum no longer matches.
    const auto where = pool_.pslot_of(table_.peek(P(51)).vslot());
    ASSERT_TRUE(where);
    std::memset(disk_->bytes() + swap::slot_offset(where->slot).value(), 0xAB, 64);
    std::vector<PageLock> run;
    for (std::uint64_t i = 50; i < 53; ++i) run.push_back(tr_.lock(P(i)));
    tr_.read_ahead(run, *ring_);
    run.clear();
    EXPECT_EQ(table_.peek(P(50)).state(), PageState::resident);
    EXPECT_EQ(table_.peek(P(51)).state(), PageState::swapped) << "a real fault reports the failure";
    EXPECT_EQ(table_.peek(P(52)).state(), PageState::inactive) << "after the gap: read, not mapped";
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row12ReadErrorLosesThePoisonsItAndFreesTheSlot) {
    make_swapped(22, 22);
    plan_->add(io::FaultRule{.match = io::FaultMatch::read, .action = io::fault::Eio{}});
    {
        PageLock lk = tr_.lock(P(22));
        EXPECT_TRUE(tr_.fault_swapped(lk, *ring_)) << "resolved: the guest is woken to take its memory error";
    }
    EXPECT_EQ(table_.peek(P(22)).state(), PageState::lost);
    EXPECT_EQ(kernel_.view(P(22)), View::poisoned);
    EXPECT_EQ(counters_.lost_pages.load(), 1u);
    expect_consistent();
    // Touched again: the poison is re-armed (already there: EEXIST is fine).
    PageLock lk = tr_.lock(P(22));
    EXPECT_TRUE(tr_.fault_lost(lk));
}

TEST_F(FakeTransitionsTest, Row12ChecksumMismatchNeverReachesTheGuest) {
    make_swapped(23, 23);
    const auto where = pool_.pslot_of(table_.peek(P(23)).vslot());
    ASSERT_TRUE(where);
    disk_->bytes()[swap::slot_offset(where->slot).value() + 100] ^= std::byte{1};
    PageLock lk = tr_.lock(P(23));
    auto r = tr_.vmm_swap_in(lk, *ring_, Access::read);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, make_error_code(Errc::page_lost));
    EXPECT_EQ(lk.entry().state(), PageState::lost);
    EXPECT_FALSE(kernel_.present(P(23))) << "the bytes read were dropped";
}

TEST_F(FakeTransitionsTest, Row11VmmReadKeepsTheCleanCopyAndVmmWriteDropsIt) {
    make_swapped(24, 24);
    make_swapped(25, 25);
    {
        PageLock lk = tr_.lock(P(24));
        ASSERT_TRUE(tr_.vmm_swap_in(lk, *ring_, Access::read));
        EXPECT_TRUE(lk.entry().clean());
    }
    {
        PageLock lk = tr_.lock(P(25));
        ASSERT_TRUE(tr_.vmm_swap_in(lk, *ring_, Access::write));
        EXPECT_FALSE(lk.entry().clean());
    }
    EXPECT_EQ(pool_.allocated_vslots(), 1u);
    expect_consistent();
    {  // 13': a VMM write to the clean page frees its copy
        PageLock lk = tr_.lock(P(24));
        tr_.vmm_write_clean(lk);
    }
    EXPECT_EQ(pool_.allocated_vslots(), 0u);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, DiscardFromEveryStateLeavesZeroAndFreesEverySlot) {
    make_resident(30, 1);         // resident
    make_inactive(31, 2);         // inactive
    make_swapped(33, 3);          // swapped
    make_clean_inactive(34, 4);   // inactive + clean copy
    make_swapped(35, 5);          // -> lost
    plan_->add(io::FaultRule{.match = io::FaultMatch::read, .times = 1, .action = io::fault::Eio{}});
    {
        PageLock lk = tr_.lock(P(35));
        (void)tr_.fault_swapped(lk, *ring_);
    }
    make_inactive(32, 6);         // -> writeback
    Writeback wb = tr_.start_writeback(tr_.lock(P(32)));
    for (std::uint64_t i = 30; i < 37; ++i) {  // 36 stays zero
        PageLock lk = tr_.lock(P(i));
        ASSERT_TRUE(tr_.discard(lk)) << i;
    }
    EXPECT_EQ(write({&wb, 1}), 0u);  // the completion finds the page moved: frees its slot
    for (std::uint64_t i = 30; i < 37; ++i) EXPECT_EQ(table_.peek(P(i)).state(), PageState::zero) << i;
    EXPECT_EQ(kernel_.view(P(35)), View::unmapped) << "the poison marker is gone: the next touch reads zeros";
    EXPECT_EQ(pool_.allocated_vslots(), 0u);
    EXPECT_EQ(counters_.discarded_pages.load(), 6u);
    expect_consistent();
}

// --- the races of guestmem/README.md#races ------------------------------------------------

TEST_F(FakeTransitionsTest, RaceFaultDuringWritebackWinsAndTheCompletionFreesTheNewSlot) {
    make_inactive(14, 14);
    Writeback wb = tr_.start_writeback(tr_.lock(P(14)));
    {
        PageLock lk = tr_.lock(P(14));
        ASSERT_TRUE(tr_.fault_minor(lk));  // 6
    }
    EXPECT_EQ(write({&wb, 1}), 0u);
    EXPECT_EQ(table_.peek(P(14)).state(), PageState::resident);
    EXPECT_EQ(pool_.allocated_vslots(), 0u);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, RaceVmmWriteDuringWritebackWins) {
    make_inactive(15, 15);
    Writeback wb = tr_.start_writeback(tr_.lock(P(15)));
    {
        PageLock lk = tr_.lock(P(15));
        tr_.vmm_write_writeback(lk);  // 6'
        fill(kernel_.vmm_page(P(15)), 999);
    }
    EXPECT_EQ(write({&wb, 1}), 0u);
    EXPECT_EQ(table_.peek(P(15)).state(), PageState::inactive);
    EXPECT_TRUE(holds(kernel_.vmm_page(P(15)), 999)) << "the newer bytes stay";
    EXPECT_EQ(pool_.allocated_vslots(), 0u);
    expect_consistent();
}

// Issue #16 item 1, the writeback ABA: page P goes out in batch A (its bytes taken,
// the write slow), the guest touches and rewrites P, the hand zaps it and queues it
// again in batch B. Whichever batch completes first, only B (the page's current
// writeback) may adopt P; A's slot holds the older bytes and is freed.
class WritebackAbaTest : public FakeTransitionsTest, public ::testing::WithParamInterface<bool> {};

TEST_P(WritebackAbaTest, OnlyTheNewestWritebackOfAPageAdoptsIt) {
    const bool older_first = GetParam();
    make_inactive(17, 1);
    Writeback a = tr_.start_writeback(tr_.lock(P(17)));
    std::vector<swap::PageOut> out_a{a.out};
    const bool a_ok = pool_.write_out(*ring_, out_a).has_value();  // A's bytes: seed 1
    a.out = out_a[0];
    {
        PageLock lk = tr_.lock(P(17));
        ASSERT_TRUE(tr_.fault_minor(lk));  // 6: the guest touches P
    }
    fill(kernel_.vmm_page(P(17)), 2);  // and writes new bytes
    {
        std::vector<PageLock> res;
        res.push_back(tr_.lock(P(17)));
        tr_.deactivate(res);  // 4: the hand comes back
    }
    Writeback b = tr_.start_writeback(tr_.lock(P(17)));  // 5 again: batch B
    std::vector<swap::PageOut> out_b{b.out};
    const bool b_ok = pool_.write_out(*ring_, out_b).has_value();  // B's bytes: seed 2
    b.out = out_b[0];
    if (older_first) {
        EXPECT_EQ(tr_.finish_writeback({&a, 1}, a_ok), 0u) << "A is not the page's writeback any more";
        EXPECT_EQ(table_.peek(P(17)).state(), PageState::writeback);
        EXPECT_EQ(tr_.finish_writeback({&b, 1}, b_ok), 1u);
    } else {
        EXPECT_EQ(tr_.finish_writeback({&b, 1}, b_ok), 1u);
        EXPECT_EQ(tr_.finish_writeback({&a, 1}, a_ok), 0u);
    }
    ASSERT_EQ(table_.peek(P(17)).state(), PageState::swapped);
    EXPECT_EQ(table_.peek(P(17)).vslot(), b.out.vslot) << "the entry must point at B's slot";
    EXPECT_EQ(pool_.allocated_vslots(), 1u) << "A's slot is freed, B's kept";
    expect_consistent();
    PageLock lk = tr_.lock(P(17));
    ASSERT_TRUE(tr_.vmm_swap_in(lk, *ring_, Access::read));
    EXPECT_TRUE(holds(kernel_.vmm_page(P(17)), 2)) << "the guest must read its newest bytes, not A's";
}

INSTANTIATE_TEST_SUITE_P(BothCompletionOrders, WritebackAbaTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "OlderFirst" : "NewerFirst"; });


// Found by swv_stress --mode failing (a vCPU faulting for ever) and then by the
// explorer once the fake kept uffd-wp markers: a clean copy mapped write-protected,
// zapped (a uffd-wp marker stays), dropped, and then a swap-in that fails. UFFDIO_POISON
// refused the marker (EEXIST), the page was `lost` without a poison marker, and every
// touch was a MINOR fault that fault_lost "re-armed" with another EEXIST.
TEST_F(FakeTransitionsTest, ALostPageIsPoisonedOverTheWriteProtectMarkerOfItsCleanCopy) {
    make_swapped(22, 22);
    {
        PageLock lk = tr_.lock(P(22));
        ASSERT_TRUE(tr_.fault_swapped(lk, *ring_));  // 10: resident + CLN, write-protected
        ASSERT_TRUE(lk.entry().clean());
    }
    {
        std::vector<PageLock> res;
        res.push_back(tr_.lock(P(22)));
        tr_.deactivate(res);  // 4: the zap leaves a uffd-wp marker
    }
    {
        std::vector<PageLock> dropped;
        dropped.push_back(tr_.lock(P(22)));
        ASSERT_TRUE(tr_.drop_cold(dropped.back()));  // 9: clean drop, punched
        tr_.punch_dropped(dropped);
    }
    const auto eio = plan_->add(io::FaultRule{io::FaultMatch::read, std::nullopt, std::nullopt, 0, 1, io::fault::Eio{}});
    {
        PageLock lk = tr_.lock(P(22));
        ASSERT_TRUE(tr_.fault_swapped(lk, *ring_));  // 12: the read fails
    }
    EXPECT_EQ(plan_->hits(eio), 1u);
    EXPECT_EQ(table_.peek(P(22)).state(), PageState::lost);
    EXPECT_EQ(kernel_.view(P(22)), View::poisoned) << "else the guest faults for ever instead of getting SIGBUS";
    expect_consistent();
    {
        PageLock lk = tr_.lock(P(22));
        EXPECT_TRUE(tr_.fault_lost(lk));
    }
    EXPECT_EQ(kernel_.view(P(22)), View::poisoned);
}

// Issue #16 item 6: swapoff brings a page back from the bytes it already read and
// verified. Reading the slot of the device being removed a second time (every read
// after the first fails here) lost the page under Force::no, which promises nothing is.
TEST_F(FakeTransitionsTest, SwapoffBringsBackFromItsVerifiedCopyWithoutASecondRead) {
    make_swapped(20, 20);
    make_swapped(21, 21);
    const auto reads_after_the_first =
        plan_->add(io::FaultRule{io::FaultMatch::read, std::nullopt, std::nullopt, 1, std::nullopt, io::fault::Eio{}});
    guestmem::testing::TransitionsSink sink(tr_, kPages);
    pool_.set_eviction_sink(&sink);
    auto r = pool_.swapoff(pool_.stats().at(0).path, *ring_);
    pool_.set_eviction_sink(nullptr);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->pages_brought_back, 2u);
    EXPECT_EQ(plan_->hits(reads_after_the_first), 0u) << "the device was read again";
    EXPECT_EQ(counters_.lost_pages.load(), 0u);
    for (std::uint64_t i : {20u, 21u}) {
        EXPECT_EQ(table_.peek(P(i)).state(), PageState::inactive) << i;
        EXPECT_TRUE(holds(kernel_.vmm_page(P(i)), i)) << i;
    }
    EXPECT_TRUE(pool_.stats().empty());
    expect_consistent();
}

TEST_F(FakeTransitionsTest, RaceDiscardDuringWritebackPunchesAgainWhatTheWriteReallocated) {
    make_inactive(16, 16);
    Writeback wb = tr_.start_writeback(tr_.lock(P(16)));
    {
        PageLock lk = tr_.lock(P(16));
        ASSERT_TRUE(tr_.discard(lk));
    }
    // write_out writes the staged copy and leaves the memfd alone now; before staging
    // its VMM-view read re-allocated the page here. Anything that still touched the
    // page through the VMM view would do the same, and the completion must cope.
    (void)kernel_.vmm_page(P(16));
    EXPECT_EQ(write({&wb, 1}), 0u);
    EXPECT_EQ(table_.peek(P(16)).state(), PageState::zero);
    EXPECT_FALSE(kernel_.present(P(16))) << "else the next touch is an EEXIST loop";
    expect_consistent();
    PageLock lk = tr_.lock(P(16));
    EXPECT_TRUE(tr_.fault_zero(lk));
}

// The same race as the reclaimer runs it now: the write of the staged copy touches
// nothing in the memfd, so the discarded page stays a hole through the completion.
TEST_F(FakeTransitionsTest, RaceDiscardDuringAStagedWritebackLeavesAHole) {
    make_inactive(16, 16);
    std::vector<Writeback> batch = evict(16, 1);
    ASSERT_EQ(batch.size(), 1u);
    {
        PageLock lk = tr_.lock(P(16));
        ASSERT_TRUE(tr_.discard(lk));
    }
    const std::size_t touches = kernel_.vmm_touches();
    std::vector<swap::PageOut> outs{batch[0].out};
    const bool ok = pool_.write_out(*ring_, outs).has_value();
    batch[0].out = outs[0];
    EXPECT_FALSE(kernel_.present(P(16))) << "the write did not re-allocate the page";
    EXPECT_EQ(tr_.finish_writeback(batch, ok), 0u);
    EXPECT_EQ(kernel_.vmm_touches(), touches);
    EXPECT_EQ(table_.peek(P(16)).state(), PageState::zero);
    expect_consistent();
    PageLock lk = tr_.lock(P(16));
    EXPECT_TRUE(tr_.fault_zero(lk));
}

TEST_F(FakeTransitionsTest, RaceTwoFaultsOnOneSwappedPageShareOneRead) {
    make_swapped(26, 26);
    // Hold the swap-in read until the second faulter is waiting on the page lock.
    std::promise<void> at_gate, release;
    auto released = release.get_future().share();
    auto gate = plan_->add(io::FaultRule{.match = io::FaultMatch::read, .times = 1,
                                         .action = io::fault::Gate{[&](const io::BlockIo&) {
                                             at_gate.set_value();
                                             released.wait();
                                         }}});
    auto first = std::async(std::launch::async, [&] {
        auto ring = io::Ring::create(8).value();
        PageLock lk = tr_.lock(P(26));
        return tr_.fault_swapped(lk, ring).has_value();
    });
    ASSERT_EQ(at_gate.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
    EXPECT_EQ(table_.peek(P(26)).state(), PageState::reading) << "observers see the read in flight";
    std::atomic<bool> second_locked{false};
    auto second = std::async(std::launch::async, [&] {
        PageLock lk = tr_.lock(P(26));
        second_locked = true;
        EXPECT_EQ(lk.entry().state(), PageState::resident);
        return tr_.fault_resident(lk).has_value();
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_FALSE(second_locked.load()) << "the second fault must wait for the read";
    release.set_value();
    EXPECT_TRUE(first.get());
    EXPECT_TRUE(second.get());
    EXPECT_EQ(plan_->matches(gate), 1u) << "one read for both faults";
    expect_consistent();
}

TEST_F(FakeTransitionsTest, RaceBringBackAfterAFaultDropsOnlyTheCleanCopy) {
    const swap::VSlot v = make_swapped(27, 27);
    {
        PageLock lk = tr_.lock(P(27));
        ASSERT_TRUE(tr_.fault_swapped(lk, *ring_));  // keeps a clean copy at v
    }
    PageLock lk = tr_.lock(P(27));
    auto done = tr_.bring_back(lk, v, nullptr, *ring_);
    ASSERT_TRUE(done);
    EXPECT_TRUE(*done);
    EXPECT_EQ(lk.entry().state(), PageState::resident);
    EXPECT_FALSE(lk.entry().clean());
}

TEST_F(FakeTransitionsTest, RaceFaultAfterABringBackIsAMinorFault) {
    const swap::VSlot v = make_swapped(28, 28);
    {
        PageLock lk = tr_.lock(P(28));
        auto done = tr_.bring_back(lk, v, nullptr, *ring_);
        ASSERT_TRUE(done && *done);
        EXPECT_EQ(lk.entry(), PageEntry::make(PageState::inactive));
    }
    EXPECT_EQ(pool_.allocated_vslots(), 0u) << "bring-back frees the slot";
    {
        PageLock lk = tr_.lock(P(28));
        ASSERT_TRUE(tr_.fault_minor(lk));
    }
    EXPECT_TRUE(holds(kernel_.vmm_page(P(28)), 28));
    expect_consistent();
}

TEST_F(FakeTransitionsTest, RaceBringBackOfAStaleSlotDoesNothing) {
    const swap::VSlot v = make_swapped(29, 29);
    {
        PageLock lk = tr_.lock(P(29));
        ASSERT_TRUE(tr_.discard(lk));
    }
    PageLock lk = tr_.lock(P(29));
    auto done = tr_.bring_back(lk, v, nullptr, *ring_);
    ASSERT_TRUE(done);
    EXPECT_FALSE(*done);
    EXPECT_EQ(lk.entry().state(), PageState::zero);
}

// Issue #9: a fault whose resolution failed never woke the faulting thread, so its
// vCPU slept for ever. Now it is always woken (after the entry is published) and
// retries the access.
TEST_F(FakeTransitionsTest, AFaultWhoseResolutionFailsStillWakesTheGuest) {
    make_inactive(8, 8);
    kernel_.fail_next(Op::continue_, std::make_error_code(std::errc::no_such_process));
    kernel_.clear_history();
    const FaultResult f = resolve_fault(tr_, P(8), WpFault::no, *ring_);
    EXPECT_FALSE(f.resolved);
    EXPECT_EQ(f.was, PageState::inactive);
    EXPECT_EQ(kernel_.count(Op::wake), 1u) << "the faulting thread must be woken";
    EXPECT_EQ(table_.peek(P(8)).state(), PageState::inactive) << "nothing mapped, nothing claimed";
    expect_consistent();
    // The retry resolves it.
    EXPECT_TRUE(resolve_fault(tr_, P(8), WpFault::no, *ring_).resolved);
    EXPECT_EQ(table_.peek(P(8)).state(), PageState::resident);
}

TEST_F(FakeTransitionsTest, FaultsChooseTheRowFromTheEntryNotTheFaultKind) {
    make_swapped(3, 3);
    make_inactive(4, 4);
    EXPECT_EQ(resolve_fault(tr_, P(2), WpFault::no, *ring_).was, PageState::zero);
    EXPECT_EQ(resolve_fault(tr_, P(3), WpFault::no, *ring_).was, PageState::swapped);
    EXPECT_EQ(resolve_fault(tr_, P(4), WpFault::no, *ring_).was, PageState::inactive);
    // A write to the clean page swapped in above: the WP row frees its copy.
    EXPECT_TRUE(table_.peek(P(3)).clean());
    EXPECT_TRUE(resolve_fault(tr_, P(3), WpFault::yes, *ring_).resolved);
    EXPECT_FALSE(table_.peek(P(3)).clean());
    for (std::uint64_t i : {2, 3, 4}) EXPECT_EQ(table_.peek(P(i)).state(), PageState::resident) << i;
    EXPECT_EQ(kernel_.count(Op::wake), 4u);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, TeardownFreesEverySlotTheTableRefersTo) {
    make_swapped(1, 1);
    make_clean_inactive(2, 2);
    EXPECT_EQ(pool_.allocated_vslots(), 2u);
    tr_.free_all_vslots();
    EXPECT_EQ(pool_.allocated_vslots(), 0u);
}

}  // namespace

namespace {

TEST_F(FakeTransitionsTest, LoseSwappedPoisonsAnUnreadablePageAndFreesItsSlot) {
    const swap::VSlot v = make_swapped(40, 40);
    const Error why{make_error_code(swap::Errc::io_failed), "swapoff --force", "device fake, slot 1"};
    {
        PageLock lk = tr_.lock(P(40));
        EXPECT_TRUE(tr_.lose_swapped(lk, v, why));
    }
    EXPECT_EQ(table_.peek(P(40)).state(), PageState::lost);
    EXPECT_EQ(kernel_.view(P(40)), View::poisoned);
    EXPECT_EQ(counters_.lost_pages.load(), 1u);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, LoseSwappedOfACleanCopyKeepsThePage) {
    make_clean_inactive(41, 41);
    const swap::VSlot v = table_.peek(P(41)).vslot();
    const Error why{make_error_code(swap::Errc::io_failed), "swapoff --force", {}};
    {
        PageLock lk = tr_.lock(P(41));
        EXPECT_TRUE(tr_.lose_swapped(lk, v, why));
        EXPECT_EQ(lk.entry(), PageEntry::make(PageState::inactive));
    }
    EXPECT_TRUE(holds(kernel_.vmm_page(P(41)), 41)) << "the data was in memory: nothing lost";
    EXPECT_EQ(counters_.lost_pages.load(), 0u);
    {
        PageLock lk = tr_.lock(P(41));
        EXPECT_FALSE(tr_.lose_swapped(lk, v, why)) << "a stale slot changes nothing";
    }
    expect_consistent();
}

}  // namespace

// --- issue #20: the fault path's measurements (serve_fault), with a fake clock --------

// A fault on a page in swap is a stall of its thread from when the fault was read to
// the wake; every resolved fault is an access; a swap-in of a page accessed within
// the working-set window is a refault, one of a page accessed longer ago is not, and
// one of a page never seen accessed is not either. The cold-age histogram of the
// table then puts each page in the bucket of its last access.
TEST_F(FakeTransitionsTest, ServeFaultAgesPagesAndCountsSwapInStallsAndRefaults) {
    using namespace std::chrono_literals;
    const MonoTime t0 = 1000s;
    MonoTime now = t0;
    AccessAges ages = AccessAges::create(kPages).value();
    StallTracker stalls(2, t0);
    FaultObservers obs{ages, stalls, 120s, [&] { return now; }};
    std::atomic<bool> stopping{false};
    auto evict = [&](std::uint64_t i) {  // rows 4 then 9 (clean copy: no write)
        std::vector<PageLock> zap;
        zap.push_back(tr_.lock(P(i)));
        tr_.deactivate(zap);
        std::vector<PageLock> drop;
        drop.push_back(tr_.lock(P(i)));
        ASSERT_TRUE(tr_.drop_cold(drop.back()));
        tr_.punch_dropped(drop);
        ASSERT_EQ(table_.peek(P(i)).state(), PageState::swapped);
    };

    // A first touch is no stall (no limit) and makes the page 0 s old.
    ServedFault f = serve_fault(tr_, limits_, obs, P(1), WpFault::no, 11, now, stopping, *ring_);
    ASSERT_TRUE(f.f.resolved);
    EXPECT_FALSE(f.stalled);
    EXPECT_EQ(ages.age(P(1), now), std::chrono::nanoseconds(0));
    EXPECT_FALSE(ages.age(P(2), now)) << "never accessed";

    // Pages 2 and 3 swapped without ever being seen accessed: their swap-ins are
    // stalls but not refaults.
    make_swapped(2, 2);
    make_swapped(3, 3);
    for (std::uint64_t i : {2, 3}) {
        f = serve_fault(tr_, limits_, obs, P(i), WpFault::no, 11, now, stopping, *ring_);
        ASSERT_TRUE(f.f.resolved);
        EXPECT_EQ(f.f.was, PageState::swapped);
        EXPECT_TRUE(f.stalled);
        EXPECT_FALSE(f.refault) << i;
    }
    evict(2);
    evict(3);
    expect_consistent();

    // 30 s later page 2 is needed again (accessed 30 s ago: within the window): a
    // refault, and thread 11 stalled for the second since the fault was read.
    now = t0 + 30s;
    f = serve_fault(tr_, limits_, obs, P(2), WpFault::no, 11, t0 + 29s, stopping, *ring_);
    EXPECT_TRUE(f.stalled);
    EXPECT_TRUE(f.refault);
    EXPECT_TRUE(holds(kernel_.vmm_page(P(2)), 2));
    // 600 s after its last access page 3 is no refault (the limit was right to evict it).
    now = t0 + 600s;
    f = serve_fault(tr_, limits_, obs, P(3), WpFault::no, 12, t0 + 599s, stopping, *ring_);
    EXPECT_TRUE(f.stalled);
    EXPECT_FALSE(f.refault);
    expect_consistent();

    const StallSnapshot s = stalls.snapshot(now);
    EXPECT_EQ(s.stalls, 4u);
    EXPECT_EQ(s.refaults, 1u);
    EXPECT_EQ(s.some_ns, std::uint64_t{2'000'000'000});
    EXPECT_EQ(s.full_ns, 0u) << "never both vCPUs at once";
    EXPECT_NEAR(s.some[0], 0.1, 1e-9) << "1 s of the last 10";
    EXPECT_NEAR(s.some[1], 1.0 / 60, 1e-9);
    EXPECT_NEAR(s.some[2], 1.0 / 300, 1e-9) << "the stall at t0+30 is outside the 300 s window";
    EXPECT_DOUBLE_EQ(s.refaults_per_min, 0) << "the refault was 570 s ago";
    ASSERT_EQ(s.threads.size(), 2u);
    for (const ThreadStall& t : s.threads) {
        EXPECT_EQ(t.stalled_ns, std::uint64_t{1'000'000'000}) << t.tid;
        EXPECT_NEAR(t.share_60s, t.tid == 12 ? 1.0 / 60 : 0.0, 1e-9) << t.tid;
    }

    // The histogram over the table: page 1 (600 s) and 2 (570 s) in the 600 s bucket,
    // page 3 (0 s) in the 1 s bucket and the working set.
    AgeScanBuilder scan(120s);
    for (std::uint64_t i = 0; i < kPages; ++i) scan.visit(table_.peek(P(i)), ages.age(P(i), now));
    const AgeScan a = scan.finish(now);
    EXPECT_EQ(a.ages.count(), 3u) << "zero pages hold nothing";
    EXPECT_EQ(a.ages.cumulative[0], 1u);                 // <= 1 s
    EXPECT_EQ(a.ages.cumulative[3], 1u);                 // <= 120 s
    EXPECT_EQ(a.ages.cumulative[4], 3u);                 // <= 600 s
    EXPECT_EQ(a.working_set_pages, 1u);
    EXPECT_NEAR(a.ages.sum_seconds, 1170.0, 1e-6);
}

// A fault held in the over-limit throttle is a stall too (of its thread, from the read
// to the wake), though it reads no swap; a fault on a resident page is none.
TEST_F(FakeTransitionsTest, ServeFaultCountsAThrottledFirstTouchAsAStall) {
    using namespace std::chrono_literals;
    const MonoTime t0 = 2000s;
    AccessAges ages = AccessAges::create(kPages).value();
    StallTracker stalls(1, t0 - 10s);
    FaultObservers obs{ages, stalls, 120s, [&] { return t0; }};
    for (std::uint64_t i = 5; i < 9; ++i) make_resident(i, i);
    limits_.set_limit_bytes(4 * kPageSize);  // at the limit: a page added must wait
    ASSERT_TRUE(limits_.over_limit());
    std::atomic<bool> stopping{true};  // the wait for room returns at once (a VM stopping)
    ServedFault f = serve_fault(tr_, limits_, obs, P(20), WpFault::no, 7, t0 - 2s, stopping, *ring_);
    EXPECT_TRUE(f.stalled);
    EXPECT_EQ(f.throttle, Throttle::waited);
    EXPECT_EQ(f.f.was, PageState::zero);
    // A touch of a page already resident adds none: no throttle, no stall.
    f = serve_fault(tr_, limits_, obs, P(5), WpFault::no, 7, t0, stopping, *ring_);
    EXPECT_FALSE(f.stalled);
    EXPECT_EQ(f.throttle, Throttle::none);
    const StallSnapshot s = stalls.snapshot(t0);
    EXPECT_EQ(s.stalls, 1u);
    EXPECT_EQ(s.some_ns, std::uint64_t{2'000'000'000});
    EXPECT_NEAR(s.some[0], 0.2, 1e-9);
    EXPECT_EQ(s.refaults, 0u);
    limits_.set_limit_bytes(0);
    expect_consistent();
}

// --- snapshots: rows R, 14, 14' (guestmem/README.md#snapshots) -----------------------------

namespace {

// A memory image whose page i holds fill(i + 1000), `pages` pages long.
PageImage make_image(std::uint64_t pages) {
    char name[] = "/tmp/swv-image-XXXXXX";
    const int fd = ::mkstemp(name);
    SWV_ASSERT(fd >= 0, "mkstemp");
    ::unlink(name);
    alignas(4096) std::byte page[kPageSize];
    for (std::uint64_t i = 0; i < pages; ++i) {
        fill(page, i + 1000);
        SWV_ASSERT(::pwrite(fd, page, kPageSize, static_cast<off_t>(i * kPageSize)) == static_cast<ssize_t>(kPageSize),
                   "pwrite");
    }
    return PageImage(io::UniqueFd(fd), kPages, name);
}

}  // namespace

TEST_F(FakeTransitionsTest, RowRAndRow14AnImagePageIsReadAtItsFirstTouch) {
    PageImage image = make_image(kPages);
    tr_.set_image(&image);
    {
        PageLock lk = tr_.lock(P(5));
        ASSERT_TRUE(tr_.restore_entry(lk, PageEntry::make(PageState::image)));
    }
    EXPECT_EQ(table_.peek(P(5)).state(), PageState::image);
    EXPECT_EQ(occupancy_.resident.load(), 0u);
    expect_consistent();
    {
        PageLock lk = tr_.lock(P(5));
        ASSERT_TRUE(tr_.fault_image(lk));
    }
    EXPECT_EQ(table_.peek(P(5)).state(), PageState::resident);
    EXPECT_EQ(kernel_.view(P(5)), View::mapped);
    EXPECT_TRUE(holds(kernel_.vmm_page(P(5)), 1005));
    EXPECT_EQ(counters_.major_faults.load(), 1u);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, RaceAFaultOnAnImagePageAfterTheFillerMappedItIsAResidentFault) {
    PageImage image = make_image(kPages);
    tr_.set_image(&image);
    for (std::uint64_t i : {7, 8}) {
        PageLock lk = tr_.lock(P(i));
        ASSERT_TRUE(tr_.restore_entry(lk, PageEntry::make(PageState::image)));
    }
    // Filler first (try_lock: it never waits), then the guest's fault finds it resident.
    {
        auto lk = tr_.try_lock(P(7));
        ASSERT_TRUE(lk);
        ASSERT_TRUE(tr_.fill_image(*lk, Transitions::Map::yes));
    }
    ASSERT_TRUE(resolve_fault(tr_, P(7), WpFault::no, *ring_).resolved);
    EXPECT_EQ(counters_.major_faults.load(), 0u);
    // Fault first: the filler's try_lock fails while the fault holds the page, and
    // afterwards it finds no image page to fill.
    {
        PageLock fault = tr_.lock(P(8));
        EXPECT_FALSE(tr_.try_lock(P(8)).has_value());
        ASSERT_TRUE(tr_.fault_image(fault));
    }
    EXPECT_NE(table_.peek(P(8)).state(), PageState::image);
    for (std::uint64_t i : {7, 8}) {
        EXPECT_EQ(table_.peek(P(i)).state(), PageState::resident);
        EXPECT_TRUE(holds(kernel_.vmm_page(P(i)), 1000 + i));
    }
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row14APageTheImageDoesNotHoldIsLostNeverZeros) {
    PageImage image = make_image(4);  // pages 4.. are beyond its end (truncated)
    tr_.set_image(&image);
    {
        PageLock lk = tr_.lock(P(9));
        ASSERT_TRUE(tr_.restore_entry(lk, PageEntry::make(PageState::image)));
        ASSERT_TRUE(tr_.fault_image(lk));  // resolved: the guest is woken into its memory error
    }
    EXPECT_EQ(table_.peek(P(9)).state(), PageState::lost);
    EXPECT_EQ(kernel_.view(P(9)), View::poisoned);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, RaceAVmWritingAHeldPageDropsOnlyItsReference) {
    const swap::VSlot v = make_swapped(12, 12);
    ASSERT_TRUE(pool_.hold(v));  // a snapshot holds it
    {
        PageLock lk = tr_.lock(P(12));
        ASSERT_TRUE(tr_.vmm_swap_in(lk, *ring_, Access::write));
    }
    fill(kernel_.vmm_page(P(12)), 99);
    EXPECT_EQ(table_.peek(P(12)).state(), PageState::inactive);
    EXPECT_EQ(tr_.referenced_vslots(), 0u);
    EXPECT_EQ(pool_.allocated_vslots(), 1u);  // the snapshot's
    EXPECT_EQ(pool_.owner_of(v), swap::kSnapshotOwner);
    alignas(4096) std::byte back[kPageSize];
    ASSERT_TRUE(pool_.read_in(*ring_, v, back));
    EXPECT_TRUE(holds(back, 12));
    pool_.drop_hold(v);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, RowRALostPageIsPoisonedAndDiscardOfAnImagePageFreesNothing) {
    PageImage image = make_image(kPages);
    tr_.set_image(&image);
    {
        PageLock lk = tr_.lock(P(3));
        ASSERT_TRUE(tr_.restore_entry(lk, PageEntry::make(PageState::lost)));
    }
    EXPECT_EQ(kernel_.view(P(3)), View::poisoned);
    {
        PageLock lk = tr_.lock(P(4));
        ASSERT_TRUE(tr_.restore_entry(lk, PageEntry::make(PageState::image)));
        ASSERT_TRUE(tr_.discard(lk));
    }
    EXPECT_EQ(table_.peek(P(4)).state(), PageState::zero);
    expect_consistent();
}

// --- the recorded-order prefetch, batched (rows 14' and 10' for a set of locked pages) ------

namespace {
std::vector<FakePageKernel::Call> calls_of(const FakePageKernel& k, FakePageKernel::Op op) {
    std::vector<FakePageKernel::Call> out;
    for (const auto& c : k.history())
        if (c.op == op) out.push_back(c);
    return out;
}
}  // namespace

TEST_F(FakeTransitionsTest, Row14PrimeBatchedPrefetchReadsRunsAndMapsEachWithOneContinue) {
    PageImage image = make_image(kPages);
    tr_.set_image(&image);
    // 30, 31 | 32, 33 straddle the region boundary: two runs; 40 alone; 45 left out.
    const std::vector<std::uint64_t> pages{30, 31, 32, 33, 40, 45};
    for (std::uint64_t i : pages) {
        PageLock lk = tr_.lock(P(i));
        ASSERT_TRUE(tr_.restore_entry(lk, PageEntry::make(PageState::image)));
    }
    kernel_.clear_history();
    {
        std::vector<PageLock> locked;
        for (std::uint64_t i : {30, 31, 32, 33, 40}) locked.push_back(*tr_.try_lock(P(i)));
        EXPECT_EQ(tr_.prefetch_image(locked, *ring_), 5u);
    }
    for (std::uint64_t i : {30, 31, 32, 33, 40}) {
        EXPECT_EQ(table_.peek(P(i)).state(), PageState::resident) << i;
        EXPECT_TRUE(holds(kernel_.vmm_page(P(i)), 1000 + i)) << i;
    }
    EXPECT_EQ(table_.peek(P(45)).state(), PageState::image);
    using C = FakePageKernel::Call;
    EXPECT_EQ(calls_of(kernel_, Op::continue_),
              (std::vector<C>{C{Op::continue_, 30, 2}, C{Op::continue_, 32, 2}, C{Op::continue_, 40, 1}}));
    EXPECT_EQ(counters_.major_faults.load(), 0u);  // the guest takes no fault on them
    expect_consistent();
    ASSERT_TRUE(resolve_fault(tr_, P(31), WpFault::no, *ring_).resolved);  // a late fault: resident
    EXPECT_EQ(counters_.major_faults.load(), 0u);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row14PrimeBatchedPrefetchOfPagesTheImageDoesNotHoldLeavesThemForTheGuestsFault) {
    PageImage image = make_image(4);  // pages 4.. are beyond the file's end
    tr_.set_image(&image);
    for (std::uint64_t i : {1, 2, 3, 4, 5}) {
        PageLock lk = tr_.lock(P(i));
        ASSERT_TRUE(tr_.restore_entry(lk, PageEntry::make(PageState::image)));
    }
    {
        // 1..5 is one run: its read comes back short, so none of it is trusted.
        std::vector<PageLock> locked;
        for (std::uint64_t i : {1, 2, 3, 4, 5}) locked.push_back(*tr_.try_lock(P(i)));
        EXPECT_EQ(tr_.prefetch_image(locked, *ring_), 0u);
    }
    for (std::uint64_t i : {1, 2, 3, 4, 5}) {
        EXPECT_EQ(table_.peek(P(i)).state(), PageState::image) << i;  // never lost, never zeros
        EXPECT_FALSE(kernel_.present(P(i))) << i;
    }
    EXPECT_EQ(counters_.lost_pages.load(), 0u);
    expect_consistent();
    // The guest's own faults: a page the image holds is read, one it does not is lost.
    ASSERT_TRUE(resolve_fault(tr_, P(2), WpFault::no, *ring_).resolved);
    EXPECT_EQ(table_.peek(P(2)).state(), PageState::resident);
    EXPECT_TRUE(holds(kernel_.vmm_page(P(2)), 1002));
    ASSERT_TRUE(resolve_fault(tr_, P(5), WpFault::no, *ring_).resolved);
    EXPECT_EQ(table_.peek(P(5)).state(), PageState::lost);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, Row10PrimeBatchedPrefetchReadsEverySlotAtOnceAndKeepsFailedOnesSwapped) {
    for (std::uint64_t i : {3, 4, 9, 31, 32}) make_swapped(i, 100 + i);
    // Every read fails: nothing is trusted, every page stays swapped, no slot lost.
    const auto rule = plan_->add(io::FaultRule{io::FaultMatch::read, {}, {}, 0, {}, io::fault::Eio{}});
    {
        std::vector<PageLock> locked;
        for (std::uint64_t i : {3, 4, 9, 31, 32}) locked.push_back(*tr_.try_lock(P(i)));
        EXPECT_EQ(tr_.prefetch_swapped(locked, *ring_), 0u);
    }
    plan_->remove(rule);
    for (std::uint64_t i : {3, 4, 9, 31, 32}) EXPECT_EQ(table_.peek(P(i)).state(), PageState::swapped) << i;
    EXPECT_EQ(counters_.lost_pages.load(), 0u);
    expect_consistent();
    kernel_.clear_history();
    {
        std::vector<PageLock> locked;
        for (std::uint64_t i : {3, 4, 9, 31, 32}) locked.push_back(*tr_.try_lock(P(i)));
        EXPECT_EQ(tr_.prefetch_swapped(locked, *ring_), 5u);
    }
    for (std::uint64_t i : {3, 4, 9, 31, 32}) {
        const PageEntry e = table_.peek(P(i));
        EXPECT_EQ(e.state(), PageState::resident) << i;
        EXPECT_TRUE(e.clean()) << i;  // the slot kept: a clean copy, mapped write-protected
        EXPECT_EQ(kernel_.view(P(i)), View::mapped_wp) << i;
        EXPECT_TRUE(holds(kernel_.vmm_page(P(i)), 100 + i)) << i;
    }
    using C = FakePageKernel::Call;
    EXPECT_EQ(calls_of(kernel_, Op::continue_), (std::vector<C>{C{Op::continue_, 3, 2}, C{Op::continue_, 9, 1},
                                                                 C{Op::continue_, 31, 1}, C{Op::continue_, 32, 1}}));
    expect_consistent();
}

// --- borrowed slots (row R of a restore: README#borrowed) -------------------------------

namespace {

// Page i as a restore leaves it: swapped in a slot a snapshot holds (written for a
// parent VM that has gone), borrowed by this VM, which took no reference of its own.
swap::VSlot make_borrowed(swap::SwapPool& pool, io::Ring& ring, Transitions& tr, std::uint64_t i,
                          std::uint64_t seed) {
    alignas(4096) std::byte page[kPageSize];
    fill(page, seed);
    swap::PageOut out{page, pack_owner(VmId(7), static_cast<std::uint32_t>(i))};
    EXPECT_TRUE(pool.write_out(ring, std::span(&out, 1)).has_value() && out.ok());
    EXPECT_TRUE(pool.hold(out.vslot));  // the snapshot's
    pool.free(out.vslot);               // the parent has gone
    PageLock lk = tr.lock(P(i));
    EXPECT_TRUE(tr.restore_entry(lk, PageEntry::make_borrowed(out.vslot)));
    return out.vslot;
}

bool slot_holds(swap::SwapPool& pool, io::Ring& ring, swap::VSlot v, std::uint64_t seed) {
    alignas(4096) std::byte back[kPageSize];
    return pool.read_in(ring, v, back).has_value() && holds(back, seed);
}

TEST_F(FakeTransitionsTest, RowRABorrowedPageIsReadInWithoutACleanCopyAndTheSnapshotKeepsItsSlot) {
    // Clean copies are on (clean_), yet a borrowed slot never becomes one: the VM
    // would free it as its owner later (README#borrowed). Mapped writable, no slot.
    const swap::VSlot v = make_borrowed(pool_, *ring_, tr_, 5, 5);
    EXPECT_TRUE(table_.peek(P(5)).borrowed());
    EXPECT_EQ(tr_.referenced_vslots(), 0u);  // the snapshot's, not this VM's
    EXPECT_EQ(occupancy_.swapped.load(), 1u);
    {
        PageLock lk = tr_.lock(P(5));
        ASSERT_TRUE(tr_.fault_swapped(lk, *ring_));
    }
    const PageEntry e = table_.peek(P(5));
    EXPECT_EQ(e.state(), PageState::resident);
    EXPECT_FALSE(e.clean());
    EXPECT_FALSE(e.borrowed());
    EXPECT_EQ(e.vslot(), swap::kNoVSlot);
    EXPECT_EQ(kernel_.view(P(5)), View::mapped);
    EXPECT_TRUE(holds(kernel_.vmm_page(P(5)), 5));
    EXPECT_EQ(tr_.referenced_vslots(), 0u);
    EXPECT_EQ(pool_.allocated_vslots(), 1u);  // the snapshot's is still there
    EXPECT_EQ(pool_.owner_of(v), swap::kSnapshotOwner);
    EXPECT_TRUE(slot_holds(pool_, *ring_, v, 5));
    pool_.drop_hold(v);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, RaceACloneReadingAndWritingASlotItsRunningParentOwnsLeavesTheParentItsOwner) {
    // A snapshot taken without --stop: the parent (page 8) still owns v, the snapshot
    // holds it, a clone (page 9 here) borrows it. The clone reading the page in and
    // writing it must not change whose v is: were it freed as the clone's own, the
    // pool would call v the snapshot's alone, and a handover would take the parent's
    // page away with the device.
    const swap::VSlot v = make_swapped(8, 8);
    ASSERT_TRUE(pool_.hold(v));  // the snapshot's
    {
        PageLock lk = tr_.lock(P(9));
        ASSERT_TRUE(tr_.restore_entry(lk, PageEntry::make_borrowed(v)));
    }
    {
        PageLock lk = tr_.lock(P(9));
        ASSERT_TRUE(tr_.fault_swapped(lk, *ring_));
    }
    {
        PageLock lk = tr_.lock(P(9));
        if (lk.entry().clean()) {
            ASSERT_TRUE(tr_.fault_write_protected(lk));  // the write (13)
        }
    }
    EXPECT_EQ(pool_.owner_of(v), pack_owner(VmId(1), 8)) << "the parent's slot was relabelled";
    EXPECT_EQ(pool_.extra_refs(v), 1u);  // the snapshot's, nothing of the clone's
    EXPECT_TRUE(slot_holds(pool_, *ring_, v, 8));
    pool_.drop_hold(v);
    expect_consistent();
}

TEST_F(FakeTransitionsTest, RowRBorrowedPagesLeavingWithoutACopyFreeNothingTheSnapshotHolds) {
    // A VMM write (11 without a copy), a discard (D), a failed read (12) and teardown:
    // none of them may free a slot this VM only borrows.
    const swap::VSlot a = make_borrowed(pool_, *ring_, tr_, 1, 1);
    const swap::VSlot b = make_borrowed(pool_, *ring_, tr_, 2, 2);
    const swap::VSlot c = make_borrowed(pool_, *ring_, tr_, 3, 3);
    const swap::VSlot d = make_borrowed(pool_, *ring_, tr_, 4, 4);
    {
        PageLock lk = tr_.lock(P(1));
        ASSERT_TRUE(tr_.vmm_swap_in(lk, *ring_, Access::write));
    }
    EXPECT_EQ(table_.peek(P(1)).state(), PageState::inactive);
    EXPECT_TRUE(holds(kernel_.vmm_page(P(1)), 1));
    {
        PageLock lk = tr_.lock(P(2));
        ASSERT_TRUE(tr_.discard(lk));
    }
    const auto rule = plan_->add(io::FaultRule{io::FaultMatch::read, {}, {}, 0, {}, io::fault::Eio{}});
    {
        PageLock lk = tr_.lock(P(3));
        EXPECT_TRUE(tr_.fault_swapped(lk, *ring_));  // resolved as lost
    }
    plan_->remove(rule);
    EXPECT_EQ(table_.peek(P(3)).state(), PageState::lost);
    tr_.free_all_vslots();  // page 4 is still borrowed
    EXPECT_TRUE(table_.peek(P(4)).borrowed());
    EXPECT_EQ(pool_.allocated_vslots(), 4u);
    const std::uint64_t seeds[] = {1, 2, 3, 4};
    const swap::VSlot slots[] = {a, b, c, d};
    for (int k = 0; k < 4; ++k) {
        EXPECT_EQ(pool_.owner_of(slots[k]), swap::kSnapshotOwner) << k;
        EXPECT_TRUE(slot_holds(pool_, *ring_, slots[k], seeds[k])) << k;
        pool_.drop_hold(slots[k]);
    }
    EXPECT_EQ(pool_.allocated_vslots(), 0u);
}

TEST_F(FakeTransitionsTest, Row10PrimeBatchedPrefetchAndReadaheadOfBorrowedPagesMapThemWritableWithNoSlot) {
    std::vector<swap::VSlot> snap;
    for (std::uint64_t i : {20, 21, 22, 40, 41}) snap.push_back(make_borrowed(pool_, *ring_, tr_, i, i));
    {
        std::vector<PageLock> locked;
        for (std::uint64_t i : {20, 21, 22}) locked.push_back(*tr_.try_lock(P(i)));
        EXPECT_EQ(tr_.prefetch_swapped(locked, *ring_), 3u);
    }
    {
        std::vector<PageLock> run;
        for (std::uint64_t i : {40, 41}) run.push_back(tr_.lock(P(i)));
        tr_.read_ahead(run, *ring_);
    }
    for (std::uint64_t i : {20, 21, 22, 40, 41}) {
        const PageEntry e = table_.peek(P(i));
        EXPECT_TRUE(e.present() && !e.clean() && !e.borrowed() && e.vslot() == swap::kNoVSlot) << i;
        EXPECT_NE(kernel_.view(P(i)), View::mapped_wp) << i << ": no copy to protect";
        EXPECT_TRUE(holds(kernel_.vmm_page(P(i)), i)) << i;
    }
    EXPECT_EQ(tr_.referenced_vslots(), 0u);
    EXPECT_EQ(pool_.allocated_vslots(), 5u);  // the snapshot's, untouched
    for (std::size_t k = 0; k < snap.size(); ++k) pool_.drop_hold(snap[k]);
    EXPECT_EQ(pool_.allocated_vslots(), 0u);
    expect_consistent();
}

}  // namespace
