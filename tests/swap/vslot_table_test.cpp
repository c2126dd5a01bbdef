// VSlotTable: allocation never yields VSlot(0), generations, retire/recycle, the
// swapoff compare-and-swap, and growth across chunks while other threads read.
#include "swap/vslot_table.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

namespace swapvisor::swap {
namespace {

TEST(VSlotTable, AllocateSetPublishRetireRecycle) {
    VSlotTable table;
    std::vector<OwnerTag> owners{10, 20, 30};
    std::vector<VSlot> v(3);
    ASSERT_EQ(table.allocate(owners, v), 3u);
    EXPECT_EQ(table.allocated(), 3u);
    std::set<std::uint32_t> ids;
    for (VSlot s : v) {
        EXPECT_NE(s, kNoVSlot);
        ids.insert(s.value());
    }
    EXPECT_EQ(ids.size(), 3u);
    EXPECT_EQ(table.lookup(v[1]).state, VSlotState::writing);
    table.set_target(v[1], PSlot{DeviceId(2), SlotIdx(77)}, 0xabc);
    table.publish(v[1]);
    VSlotInfo info = table.lookup(v[1]);
    EXPECT_EQ(info.state, VSlotState::valid);
    EXPECT_EQ(info.owner, 20u);
    EXPECT_EQ(info.checksum, 0xabcu);
    EXPECT_EQ(info.pslot, (PSlot{DeviceId(2), SlotIdx(77)}));

    auto retired = table.retire(v[1]);
    ASSERT_TRUE(retired);
    EXPECT_EQ(retired->pslot.slot, SlotIdx(77));
    EXPECT_FALSE(table.retire(v[1]));  // second retire: not allocated
    EXPECT_EQ(table.lookup(v[1]).state, VSlotState::free);
    EXPECT_NE(table.lookup(v[1]).generation, info.generation);
    table.recycle(v[1]);
    EXPECT_EQ(table.allocated(), 2u);

    // The recycled vslot comes back with a new generation.
    std::vector<OwnerTag> one{40};
    std::vector<VSlot> w(1);
    ASSERT_EQ(table.allocate(one, w), 1u);
    EXPECT_EQ(w[0], v[1]);
    EXPECT_NE(table.lookup(w[0]).generation, info.generation);
    EXPECT_EQ(table.lookup(w[0]).owner, 40u);
    EXPECT_FALSE(table.retire(kNoVSlot));
    EXPECT_EQ(table.lookup(VSlot(123456)).state, VSlotState::free);
}

TEST(VSlotTable, SwitchPslotIsACompareAndSwapOnGenerationAndPlace) {
    VSlotTable table;
    std::vector<OwnerTag> owners{1};
    std::vector<VSlot> v(1);
    ASSERT_EQ(table.allocate(owners, v), 1u);
    PSlot a{DeviceId(0), SlotIdx(5)}, b{DeviceId(1), SlotIdx(9)}, c{DeviceId(1), SlotIdx(10)};
    table.set_target(v[0], a, 1);
    // Not yet valid: no switch.
    EXPECT_FALSE(table.switch_pslot(v[0], table.lookup(v[0]).generation, a, b));
    table.publish(v[0]);
    std::uint32_t gen = table.lookup(v[0]).generation;
    EXPECT_FALSE(table.switch_pslot(v[0], gen + 1, a, b));  // generation changed
    EXPECT_FALSE(table.switch_pslot(v[0], gen, c, b));      // not at `from`
    EXPECT_TRUE(table.switch_pslot(v[0], gen, a, b));
    EXPECT_EQ(table.lookup(v[0]).pslot, b);
    EXPECT_EQ(table.lookup(v[0]).checksum, 1u);
    EXPECT_FALSE(table.switch_pslot(v[0], gen, a, c));  // already moved
    ASSERT_TRUE(table.retire(v[0]));
    EXPECT_FALSE(table.switch_pslot(v[0], gen, b, c));  // freed
}

TEST(VSlotTable, GrowsAcrossChunksWhileReadersLookUp) {
    VSlotTable table;
    constexpr std::size_t kN = 200'000;  // > 3 chunks of 65536
    std::vector<OwnerTag> owners(kN);
    for (std::size_t i = 0; i < kN; ++i) owners[i] = i;
    std::vector<VSlot> v(kN);
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> bad{0};
    std::thread reader([&] {
        std::uint32_t x = 1;
        while (!stop.load()) {
            VSlotInfo info = table.lookup(VSlot(x));
            if (info.state == VSlotState::valid && info.owner != x - 1) bad++;
            x = x % kN + 1;
        }
    });
    for (std::size_t done = 0; done < kN; done += 1000) {
        auto got = table.allocate(std::span(owners).subspan(done, 1000), std::span(v).subspan(done, 1000));
        ASSERT_EQ(got, 1000u);
        for (std::size_t i = done; i < done + 1000; ++i) {
            table.set_target(v[i], PSlot{DeviceId(0), SlotIdx(static_cast<std::uint32_t>(i))}, i);
            table.publish(v[i]);
        }
    }
    stop = true;
    reader.join();
    EXPECT_EQ(bad.load(), 0u);
    EXPECT_EQ(table.allocated(), kN);
    EXPECT_EQ(v.back(), VSlot(kN));  // fresh table: handed out in order from 1
}

}  // namespace
}  // namespace swapvisor::swap
