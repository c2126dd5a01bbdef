// The run builder (swap/io_batch.*): where runs split (device boundary, slot gap,
// buffer gap, max_run_pages), that each run is one BlockIo and each device gets one
// submit, and that a failed run fails exactly its own pages (injected EIO and torn
// writes through io::FaultyBlockDevice), on real O_DIRECT files and io_uring.
#include "swap/io_batch.hpp"

#include <gtest/gtest.h>

#include <cstring>

#include "swap/swap_device.hpp"
#include "tests/swap/swap_test_util.hpp"

namespace swapvisor::swap {
namespace {

using test::kClusterBytes;
using test::Pages;

// Devices are only compared by address in plan_runs: two distinct objects suffice.
io::BlockDevice* const kDevA = reinterpret_cast<io::BlockDevice*>(0x1000);
io::BlockDevice* const kDevB = reinterpret_cast<io::BlockDevice*>(0x2000);

// Page i of a batch at (dev, slot), buffer `page` of a fake arena (never touched).
PageIo at(io::BlockDevice* dev, std::uint32_t slot, std::size_t page) {
    return PageIo{dev, SlotIdx(slot), reinterpret_cast<std::byte*>(0x10000000 + page * kSlotSize)};
}

TEST(IoBatchPlan, ConsecutiveSlotsAndBuffersOnOneDeviceFormOneRun) {
    std::vector<PageIo> pages;
    for (std::uint32_t i = 0; i < 8; ++i) pages.push_back(at(kDevA, 100 + i, i));
    EXPECT_EQ(plan_runs(pages, 256), (std::vector<PageRun>{{0, 8}}));
}

TEST(IoBatchPlan, SplitsAtDeviceBoundary) {
    // Slots and buffers continue across the boundary: only the device changes.
    std::vector<PageIo> pages{at(kDevA, 10, 0), at(kDevA, 11, 1), at(kDevB, 12, 2), at(kDevB, 13, 3)};
    EXPECT_EQ(plan_runs(pages, 256), (std::vector<PageRun>{{0, 2}, {2, 2}}));
}

TEST(IoBatchPlan, PagesOfAPageByPageDeviceAreOneRunEach) {
    // A memory tier stores page by page: its neighbours never merge, others still do.
    std::vector<PageIo> pages{at(kDevA, 10, 0), at(kDevA, 11, 1), at(kDevB, 12, 2), at(kDevB, 13, 3)};
    const io::BlockDevice* const single[] = {kDevA};
    EXPECT_EQ(plan_runs(pages, 256, single), (std::vector<PageRun>{{0, 1}, {1, 1}, {2, 2}}));
}

TEST(IoBatchPlan, SplitsAtSlotGapAndAtSlotsOutOfOrder) {
    std::vector<PageIo> gap{at(kDevA, 10, 0), at(kDevA, 11, 1), at(kDevA, 13, 2), at(kDevA, 14, 3)};
    EXPECT_EQ(plan_runs(gap, 256), (std::vector<PageRun>{{0, 2}, {2, 2}}));
    std::vector<PageIo> backwards{at(kDevA, 11, 0), at(kDevA, 10, 1)};
    EXPECT_EQ(plan_runs(backwards, 256), (std::vector<PageRun>{{0, 1}, {1, 1}}));
}

TEST(IoBatchPlan, SplitsWhereBuffersAreNotAdjacent) {
    // One BlockIo has one buffer: consecutive slots in scattered memory are separate runs.
    std::vector<PageIo> pages{at(kDevA, 10, 0), at(kDevA, 11, 1), at(kDevA, 12, 5), at(kDevA, 13, 6)};
    EXPECT_EQ(plan_runs(pages, 256), (std::vector<PageRun>{{0, 2}, {2, 2}}));
}

TEST(IoBatchPlan, SplitsAtMaxRunPages) {
    std::vector<PageIo> pages;
    for (std::uint32_t i = 0; i < 10; ++i) pages.push_back(at(kDevA, i, i));
    EXPECT_EQ(plan_runs(pages, 4), (std::vector<PageRun>{{0, 4}, {4, 4}, {8, 2}}));
    EXPECT_EQ(plan_runs(pages, 1).size(), 10u);
    EXPECT_TRUE(plan_runs({}, 4).empty());
}

TEST(IoBatchPlan, SlotAtTheEndOfTheSpaceDoesNotWrapIntoARun) {
    std::vector<PageIo> pages{at(kDevA, UINT32_MAX, 0), at(kDevA, 0, 1)};
    EXPECT_EQ(plan_runs(pages, 256).size(), 2u);
}

// Two FaultyBlockDevices on real files, a page arena, and a log of the ops each sees.
class PrivilegedIoBatch : public ::testing::Test {
protected:
    struct Op {
        io::IoKind kind;
        std::uint64_t offset;
        std::size_t len;
    };
    void SetUp() override {
        for (int d = 0; d < 2; ++d) {
            plans_[d] = std::make_shared<io::FaultPlan>();
            plans_[d]->add(io::FaultRule{io::FaultMatch::any, {}, {}, 0, {},
                                         io::fault::Gate{[this, d](const io::BlockIo& io) {
                                             ops_[d].push_back(Op{io.kind, io.offset.value(), io.buf.size()});
                                         }}});
            devs_[d] = test::faulty_file(dir_.file("dev" + std::to_string(d)), kClusterBytes, plans_[d]);
            ASSERT_NE(devs_[d], nullptr);
        }
    }
    io::BlockDevice* dev(int d) { return devs_[d].get(); }
    // Append `count` pages of device d from first_slot on, buffers pages[first_page...].
    void append(std::vector<PageIo>& batch, int d, std::uint32_t first_slot, const Pages& pages,
                std::size_t first_page, std::uint32_t count) {
        for (std::uint32_t i = 0; i < count; ++i) {
            batch.push_back(PageIo{dev(d), SlotIdx(first_slot + i), pages[first_page + i]});
        }
    }
    // n pages, page i filled with id i.
    static Pages filled(std::size_t n) {
        Pages pages(n);
        for (std::size_t i = 0; i < n; ++i) test::fill_page(pages[i], i);
        return pages;
    }
    io::FaultPlan& plan(int d) { return *plans_[d]; }
    std::vector<Op>& ops(int d) { return ops_[d]; }

    test::TempDir dir_;
    std::shared_ptr<io::FaultPlan> plans_[2];
    std::unique_ptr<io::BlockDevice> devs_[2];
    std::vector<Op> ops_[2];  // gates run on the submitting thread (this one)
};

TEST_F(PrivilegedIoBatch, OneBlockIoPerRunAndOneSubmitPerDevice) {
    SWV_SWAP_RING_OR_SKIP(ring);
    Pages pages = filled(10);
    // dev0: slots 0..5 (run split by max 4) ; dev1: slots 7,8 then 20 (gap); dev0 again: 40.
    std::vector<PageIo> batch;
    append(batch, 0, 0, pages, 0, 6);
    append(batch, 1, 7, pages, 6, 2);
    append(batch, 1, 20, pages, 8, 1);
    append(batch, 0, 40, pages, 9, 1);
    std::vector<std::optional<Errc>> errors(batch.size(), Errc::stale_slot);
    const std::uint64_t submits_before = ring.submit_calls();
    run_page_io(ring, io::IoKind::write, batch, 4, errors);
    for (std::size_t i = 0; i < batch.size(); ++i) EXPECT_EQ(errors[i], std::nullopt) << i;

    ASSERT_EQ(ops(0).size(), 3u);  // slots 0-3, 4-5, 40
    EXPECT_EQ(ops(0)[0].offset, slot_offset(SlotIdx(0)).value());
    EXPECT_EQ(ops(0)[0].len, 4 * kSlotSize);
    EXPECT_EQ(ops(0)[1].offset, slot_offset(SlotIdx(4)).value());
    EXPECT_EQ(ops(0)[1].len, 2 * kSlotSize);
    EXPECT_EQ(ops(0)[2].offset, slot_offset(SlotIdx(40)).value());
    ASSERT_EQ(ops(1).size(), 2u);  // slots 7-8, 20
    EXPECT_EQ(ops(1)[0].len, 2 * kSlotSize);
    EXPECT_EQ(ops(1)[1].offset, slot_offset(SlotIdx(20)).value());
    // Both runs of a device went down in one batch: one ring submission per device.
    EXPECT_EQ(ring.submit_calls() - submits_before, 2u);

    // Everything written comes back through the builder into fresh buffers.
    Pages back(10);
    std::vector<PageIo> reads;
    for (std::size_t i = 0; i < batch.size(); ++i) reads.push_back(PageIo{batch[i].device, batch[i].slot, back[i]});
    std::vector<std::optional<Errc>> read_errors(reads.size(), Errc::stale_slot);
    run_page_io(ring, io::IoKind::read, reads, 4, read_errors);
    for (std::size_t i = 0; i < reads.size(); ++i) {
        EXPECT_EQ(read_errors[i], std::nullopt) << i;
        EXPECT_TRUE(test::verify_page(back[i], i)) << i;
    }
}

TEST_F(PrivilegedIoBatch, InjectedEioFailsExactlyThePagesOfItsRun) {
    SWV_SWAP_RING_OR_SKIP(ring);
    Pages pages = filled(10);
    // Runs: dev0 slots 0-3 | dev0 slots 10-12 (slot gap) | dev1 slots 0-2.
    std::vector<PageIo> batch;
    append(batch, 0, 0, pages, 0, 4);
    append(batch, 0, 10, pages, 4, 3);
    append(batch, 1, 0, pages, 7, 3);
    // EIO on whatever overlaps slot 11 of dev0: the middle run.
    const io::DevOffset bad = slot_offset(SlotIdx(11));
    auto eio = plan(0).add(io::FaultRule{io::FaultMatch::write, bad, bad.offset_by(kSlotSize), 0, {}, io::fault::Eio{}});
    std::vector<std::optional<Errc>> errors(batch.size());
    run_page_io(ring, io::IoKind::write, batch, 256, errors);
    EXPECT_EQ(plan(0).hits(eio), 1u);
    for (std::size_t i = 0; i < batch.size(); ++i) {
        if (i >= 4 && i < 7) EXPECT_EQ(errors[i], Errc::io_failed) << i;
        else EXPECT_EQ(errors[i], std::nullopt) << i;
    }
}

TEST_F(PrivilegedIoBatch, TornReadFailsItsRunAndLeavesTheOthersGood) {
    SWV_SWAP_RING_OR_SKIP(ring);
    Pages pages = filled(6);
    // Write two runs (slots 0-2 and 5-7) with no faults, then read them back with
    // the second run torn after 512 bytes.
    std::vector<PageIo> batch;
    append(batch, 0, 0, pages, 0, 3);
    append(batch, 0, 5, pages, 3, 3);
    std::vector<std::optional<Errc>> errors(batch.size());
    run_page_io(ring, io::IoKind::write, batch, 256, errors);
    for (auto& e : errors) ASSERT_EQ(e, std::nullopt);

    Pages back(6);
    for (std::size_t i = 0; i < 6; ++i) batch[i].buf = back[i];
    const io::DevOffset torn = slot_offset(SlotIdx(5));
    plan(0).add(io::FaultRule{io::FaultMatch::read, torn, torn.offset_by(kSlotSize), 0, {}, io::fault::ShortIo{512}});
    run_page_io(ring, io::IoKind::read, batch, 256, errors);
    for (std::size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(errors[i], std::nullopt) << i;
        EXPECT_TRUE(test::verify_page(back[i], i)) << i;
    }
    for (std::size_t i = 3; i < 6; ++i) EXPECT_EQ(errors[i], Errc::io_failed) << i;
}

TEST_F(PrivilegedIoBatch, RefusedBatchFailsEveryPageOfThatDeviceOnly) {
    SWV_SWAP_RING_OR_SKIP(ring);
    Pages pages = filled(3);
    // dev0's last slot is in range; the slot after it is not: the device refuses
    // its whole batch, and dev1's page still goes out.
    const auto last = static_cast<std::uint32_t>(dev(0)->size_bytes() / kSlotSize - 1);
    std::vector<PageIo> batch{PageIo{dev(0), SlotIdx(last), pages[0]}, PageIo{dev(1), SlotIdx(0), pages[1]},
                              PageIo{dev(0), SlotIdx(last + 1), pages[2]}};
    std::vector<std::optional<Errc>> errors(batch.size());
    run_page_io(ring, io::IoKind::write, batch, 256, errors);
    EXPECT_EQ(errors[0], Errc::io_failed);
    EXPECT_EQ(errors[1], std::nullopt);
    EXPECT_EQ(errors[2], Errc::io_failed);
    EXPECT_TRUE(ops(0).empty());  // nothing of the refused batch was issued
}

}  // namespace
}  // namespace swapvisor::swap
