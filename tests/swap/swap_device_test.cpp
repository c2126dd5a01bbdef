// SwapDevice: cluster allocator (contiguity, contexts, full, reuse), bitmap scan and
// removal state. Real swap files; no I/O is issued.
#include "swap/swap_device.hpp"

#include <gtest/gtest.h>

#include <numeric>
#include <set>

#include "tests/swap/swap_test_util.hpp"

namespace swapvisor::swap {
namespace {

using test::kClusterBytes;

std::vector<VSlot> vslots(std::size_t n, std::uint32_t first = 1) {
    std::vector<VSlot> v;
    for (std::size_t i = 0; i < n; ++i) v.push_back(VSlot(first + static_cast<std::uint32_t>(i)));
    return v;
}

std::unique_ptr<SwapDevice> make_device(const test::TempDir& dir, std::uint64_t bytes) {
    return std::make_unique<SwapDevice>(test::open_file(dir.file("swap"), bytes), DeviceId(0), 0, "swap");
}

TEST(SwapDevice, ConsecutiveAllocationsAreContiguous) {
    test::TempDir dir;
    auto dev = make_device(dir, 4 * kClusterBytes);
    ASSERT_EQ(dev->total_slots(), 4u * kClusterSlots);
    ASSERT_EQ(dev->cluster_count(), 4u);
    std::vector<SlotIdx> out;
    auto v = vslots(100);
    ASSERT_EQ(dev->allocate(v, 0, out), 100u);
    auto w = vslots(50, 101);
    ASSERT_EQ(dev->allocate(w, 0, out), 50u);
    for (std::uint32_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i].value(), i);
    EXPECT_EQ(dev->reverse(SlotIdx(0)), VSlot(1));
    EXPECT_EQ(dev->reverse(SlotIdx(149)), VSlot(150));
    EXPECT_EQ(dev->reverse(SlotIdx(150)), kNoVSlot);
    EXPECT_EQ(dev->usage().used_slots, 150u);
    dev->end_write();
    dev->end_write();
}

TEST(SwapDevice, BatchCrossesIntoTheNextFreeCluster) {
    test::TempDir dir;
    auto dev = make_device(dir, 4 * kClusterBytes);
    std::vector<SlotIdx> out;
    auto v = vslots(kClusterSlots + 10);
    ASSERT_EQ(dev->allocate(v, 0, out), v.size());
    for (std::uint32_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i].value(), i);
    dev->end_write();
}

TEST(SwapDevice, EachContextHasItsOwnCluster) {
    test::TempDir dir;
    auto dev = make_device(dir, 4 * kClusterBytes);
    std::vector<SlotIdx> a, b;
    auto v = vslots(10);
    ASSERT_EQ(dev->allocate(v, 0, a), 10u);
    ASSERT_EQ(dev->allocate(v, 1, b), 10u);
    ASSERT_EQ(dev->allocate(v, 0, a), 10u);
    // Context 0 keeps going in cluster 0; context 1 took cluster 1.
    for (std::uint32_t i = 0; i < 20; ++i) EXPECT_EQ(a[i].value(), i);
    for (std::uint32_t i = 0; i < 10; ++i) EXPECT_EQ(b[i].value(), kClusterSlots + i);
    for (int i = 0; i < 3; ++i) dev->end_write();
}

TEST(SwapDevice, FillsEverySlotIncludingOtherContextsClustersThenReportsFull) {
    test::TempDir dir;
    // 2 clusters + a partial third one of 100 slots.
    auto dev = make_device(dir, 2 * kClusterBytes + 100 * kSlotSize);
    const std::uint64_t total = 2 * kClusterSlots + 100;
    ASSERT_EQ(dev->total_slots(), total);
    ASSERT_EQ(dev->cluster_count(), 3u);
    std::vector<SlotIdx> out;
    auto v = vslots(total + 5);
    ASSERT_EQ(dev->allocate(std::span(v).first(5), 1, out), 5u);  // context 1 holds cluster 0
    ASSERT_EQ(dev->allocate(std::span(v).subspan(5), 0, out), total - 5);
    std::set<std::uint32_t> distinct;
    for (SlotIdx s : out) distinct.insert(s.value());
    EXPECT_EQ(distinct.size(), total);
    EXPECT_EQ(*distinct.rbegin(), total - 1);
    EXPECT_EQ(dev->usage().used_slots, total);
    std::vector<SlotIdx> more;
    EXPECT_EQ(dev->allocate(std::span(v).first(1), 2, more), 0u);
    EXPECT_TRUE(more.empty());
    dev->end_write();
    dev->end_write();
}

TEST(SwapDevice, FreedSlotsAreReusedAndEmptyClustersReturnToTheFreeList) {
    test::TempDir dir;
    auto dev = make_device(dir, 2 * kClusterBytes);
    std::vector<SlotIdx> out;
    auto v = vslots(2 * kClusterSlots);
    ASSERT_EQ(dev->allocate(v, 0, out), v.size());
    dev->end_write();
    // Free a hole in cluster 0 and all of cluster 1.
    std::vector<SlotIdx> hole{SlotIdx(7), SlotIdx(8)};
    dev->free_slots(hole);
    std::vector<SlotIdx> second(out.begin() + kClusterSlots, out.end());
    dev->free_slots(second);
    EXPECT_EQ(dev->usage().used_slots, kClusterSlots - 2);
    EXPECT_EQ(dev->reverse(SlotIdx(7)), kNoVSlot);
    // A whole free cluster is preferred (contiguity), then the holes.
    std::vector<SlotIdx> again;
    auto w = vslots(kClusterSlots + 2, 5000);
    ASSERT_EQ(dev->allocate(w, 3, again), w.size());
    for (std::uint32_t i = 0; i < kClusterSlots; ++i) EXPECT_EQ(again[i].value(), kClusterSlots + i);
    EXPECT_EQ(again[kClusterSlots].value(), 7u);
    EXPECT_EQ(again[kClusterSlots + 1].value(), 8u);
    EXPECT_EQ(dev->reverse(SlotIdx(7)), VSlot(5000 + kClusterSlots));
    dev->end_write();
}

TEST(SwapDevice, ScanUsedVisitsOnlyAllocatedSlotsInOrder) {
    test::TempDir dir;
    auto dev = make_device(dir, 8 * kClusterBytes);
    std::vector<SlotIdx> out;
    auto v = vslots(8 * kClusterSlots);
    ASSERT_EQ(dev->allocate(v, 0, out), v.size());
    dev->end_write();
    // Keep a sparse set: slot s kept iff s % 97 == 3 or s == last.
    std::vector<SlotIdx> drop;
    std::vector<std::uint32_t> keep;
    for (SlotIdx s : out) {
        if (s.value() % 97 == 3 || s.value() == out.back().value()) keep.push_back(s.value());
        else drop.push_back(s);
    }
    dev->free_slots(drop);
    std::vector<UsedSlot> buf(5);
    std::vector<std::uint32_t> seen;
    std::uint64_t cursor = 0;
    for (std::size_t n; (n = dev->scan_used(cursor, buf)) != 0;) {
        for (std::size_t i = 0; i < n; ++i) {
            seen.push_back(buf[i].slot.value());
            EXPECT_EQ(buf[i].vslot, VSlot(buf[i].slot.value() + 1));
        }
    }
    EXPECT_EQ(seen, keep);
    EXPECT_EQ(cursor, dev->total_slots());
}

TEST(SwapDevice, RemovingDeviceAllocatesNothingAndOnlyOneRemovalWins) {
    test::TempDir dir;
    auto dev = make_device(dir, kClusterBytes);
    ASSERT_TRUE(dev->begin_removal());
    EXPECT_FALSE(dev->begin_removal());
    std::vector<SlotIdx> out;
    auto v = vslots(3);
    EXPECT_EQ(dev->allocate(v, 0, out), 0u);
    EXPECT_EQ(dev->usage().state, DeviceState::removing);
    dev->wait_writes_done();  // none pending: returns at once
    dev->cancel_removal();
    EXPECT_EQ(dev->allocate(v, 0, out), 3u);
    dev->end_write();
}

TEST(SwapDevice, CountsBytesOfWholeTransfersByDirection) {
    test::TempDir dir;
    auto dev = make_device(dir, kClusterBytes);
    dev->note_io(io::IoKind::write, 8192, 8192);
    dev->note_io(io::IoKind::read, 4096, 4096);
    dev->note_io(io::IoKind::write, 512, 4096);   // short: a failure, no bytes
    dev->note_io(io::IoKind::read, -EIO, 4096);   // failed: no bytes
    dev->note_io(io::IoKind::fsync, 0, 0);        // moves nothing
    DeviceUsage u = dev->usage();
    EXPECT_EQ(u.written_bytes, 8192u);
    EXPECT_EQ(u.read_bytes, 4096u);
    EXPECT_EQ(u.write_errors, 1u);
    EXPECT_EQ(u.read_errors, 1u);
    // A read whose data fails its checksum was transferred: bytes and an error.
    dev->note_io(io::IoKind::read, 4096, 4096);
    dev->note_checksum_error();
    u = dev->usage();
    EXPECT_EQ(u.read_bytes, 8192u);
    EXPECT_EQ(u.read_errors, 2u);
}

TEST(SwapDevice, ReferencesDrain) {
    test::TempDir dir;
    auto dev = make_device(dir, kClusterBytes);
    dev->get();
    SwapDeviceRef ref(dev.get());
    std::atomic<bool> drained{false};
    std::thread waiter([&] {
        dev->wait_refs_drained();
        drained = true;
    });
    SwapDeviceRef moved = std::move(ref);
    EXPECT_FALSE(ref);
    moved.reset();
    waiter.join();
    EXPECT_TRUE(drained);
}

}  // namespace
}  // namespace swapvisor::swap
