// VSlotTable: allocation never yields VSlot(0), generations, retire/recycle, the
// swapoff compare-and-swap, and growth across chunks while other threads read; the
// packed descriptor's edges: fields at their widest, owner tags at kOwnerTagBits,
// the 14-bit generation wrapping.
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

// Every field of the packed descriptor at its widest, through every transition:
// no field bleeds into another (swap/README.md#vslots).
TEST(VSlotTable, PackedFieldsAtTheirLimitsSurviveEveryTransition) {
    VSlotTable table;
    const std::vector<OwnerTag> owners{kMaxOwnerTag, OwnerTag{0xffff} << 32, 0xffff'ffffu, 0};
    std::vector<VSlot> v(owners.size());
    ASSERT_EQ(table.allocate(owners, v), owners.size());
    const PSlot widest{DeviceId(0xffff), SlotIdx(0xffff'ffffu)};
    const PSlot zero{DeviceId(0), SlotIdx(0)};
    for (std::size_t i = 0; i < v.size(); ++i) {
        const PSlot place = i % 2 == 0 ? widest : zero;
        const std::uint32_t sum = i % 2 == 0 ? 0xffff'ffffu : 0u;
        VSlotInfo writing = table.lookup(v[i]);
        EXPECT_EQ(writing.state, VSlotState::writing);
        EXPECT_EQ(writing.owner, owners[i]);
        table.set_target(v[i], place, sum);
        VSlotInfo targeted = table.lookup(v[i]);
        EXPECT_EQ(targeted.state, VSlotState::writing);
        EXPECT_EQ(targeted.generation, writing.generation);
        table.publish(v[i]);
        VSlotInfo info = table.lookup(v[i]);
        EXPECT_EQ(info.state, VSlotState::valid);
        EXPECT_EQ(info.pslot, place);
        EXPECT_EQ(info.checksum, sum);
        EXPECT_EQ(info.owner, owners[i]);
        EXPECT_EQ(info.generation, writing.generation);
        EXPECT_LE(info.generation, VSlotTable::kGenerationMask);
        const PSlot other = i % 2 == 0 ? zero : widest;
        ASSERT_TRUE(table.switch_pslot(v[i], info.generation, place, other));
        VSlotInfo moved = table.lookup(v[i]);
        EXPECT_EQ(moved.pslot, other);
        EXPECT_EQ(moved.checksum, sum);
        EXPECT_EQ(moved.owner, owners[i]);
        EXPECT_EQ(moved.generation, info.generation);
        EXPECT_EQ(moved.state, VSlotState::valid);
        auto retired = table.retire(v[i]);
        ASSERT_TRUE(retired);
        EXPECT_EQ(retired->pslot, other);
        EXPECT_EQ(retired->owner, owners[i]);
        EXPECT_EQ(table.lookup(v[i]).state, VSlotState::free);
        EXPECT_EQ(table.lookup(v[i]).generation, (info.generation + 1) & VSlotTable::kGenerationMask);
    }
}

TEST(VSlotTable, OwnerWiderThanKOwnerTagBitsIsABrokenInvariant) {
    VSlotTable table;
    const std::vector<OwnerTag> owners{kMaxOwnerTag + 1};
    std::vector<VSlot> v(1);
    EXPECT_DEATH((void)table.allocate(owners, v), "owner tag wider than kOwnerTagBits");
}

// The generation is 14 bits: it changes on every allocation and every free, and comes
// back to a value after 2^14 changes (8192 allocate/free cycles of one vslot).
TEST(VSlotTable, GenerationWrapsButChangesOnEveryAllocateAndFree) {
    VSlotTable table;
    const std::vector<OwnerTag> owner{7};
    std::vector<VSlot> v(1);
    ASSERT_EQ(table.allocate(owner, v), 1u);
    const VSlot slot = v[0];
    const std::uint32_t first = table.lookup(slot).generation;
    std::uint32_t last = first;
    bool wrapped = false;
    constexpr std::uint32_t kCycles = (VSlotTable::kGenerationMask + 1) / 2;
    for (std::uint32_t c = 0; c < kCycles; ++c) {
        ASSERT_TRUE(table.retire(slot));
        const std::uint32_t freed = table.lookup(slot).generation;
        EXPECT_NE(freed, last);
        table.recycle(slot);
        ASSERT_EQ(table.allocate(owner, v), 1u);
        ASSERT_EQ(v[0], slot);  // LIFO: the same vslot comes back
        const std::uint32_t now = table.lookup(slot).generation;
        EXPECT_NE(now, freed);
        EXPECT_LE(now, VSlotTable::kGenerationMask);
        if (now < last) wrapped = true;
        last = now;
    }
    EXPECT_TRUE(wrapped);
    EXPECT_EQ(last, first);  // 2^14 changes later: the same value again
    // A wrapped generation alone does not make a stale switch succeed: the place
    // must match too, and a vslot reallocated during a swapoff never lands on the
    // removing device's slot (no allocation there).
    const PSlot old_place{DeviceId(3), SlotIdx(11)}, new_place{DeviceId(4), SlotIdx(12)};
    table.set_target(slot, PSlot{DeviceId(5), SlotIdx(1)}, 9);
    table.publish(slot);
    EXPECT_FALSE(table.switch_pslot(slot, first, old_place, new_place));
    EXPECT_EQ(table.lookup(slot).pslot, (PSlot{DeviceId(5), SlotIdx(1)}));
}

TEST(VSlotTable, DescriptorIs18BytesPerVslot) {
    // The figure bench/swap_bench reports as metadata per swapped page, with the
    // device's per-slot costs (swap/README.md#vslots).
    EXPECT_EQ(VSlotTable::bytes_per_vslot(), 18u);
}

}  // namespace
}  // namespace swapvisor::swap
