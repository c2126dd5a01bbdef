// VSlotTable: allocation never yields VSlot(0), generations, retire/recycle, the
// swapoff compare-and-swap, and growth across chunks while other threads read; the
// packed descriptor's edges: fields at their widest, owner tags at kOwnerTagBits,
// the 14-bit generation wrapping; blocks of vslots per owner group (the group kept
// once per block), returned when free and taken by other groups.
#include "swap/vslot_table.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <random>
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
    // kMaxOwnerTag is kSnapshotOwner; index 2^32-2 is the widest any other owner has.
    const std::vector<OwnerTag> owners{kMaxOwnerTag, OwnerTag{0xffff} << 32, 0xffff'fffeu, 0,
                                       OwnerTag{0xfffe} << 32 | 0xffff'fffeu};
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

// Index 2^32-1 stands for kSnapshotOwner (the group is the block's): no other owner
// may have it, and a vslot changes group only by becoming kSnapshotOwner's.
TEST(VSlotTable, SnapshotOwnersIndexIsReservedAndAGroupIsTheBlocks) {
    VSlotTable table;
    std::vector<VSlot> v(1);
    const std::vector<OwnerTag> reserved{OwnerTag{3} << 32 | 0xffff'ffffu};
    EXPECT_DEATH((void)table.allocate(reserved, v), "owner index 2\\^32-1 is kSnapshotOwner's");
    const std::vector<OwnerTag> mine{OwnerTag{3} << 32 | 17};
    ASSERT_EQ(table.allocate(mine, v), 1u);
    table.set_target(v[0], PSlot{DeviceId(1), SlotIdx(5)}, 77);
    table.publish(v[0]);
    EXPECT_DEATH((void)table.set_owner(v[0], OwnerTag{4} << 32 | 17), "keeps its block's group");
    ASSERT_TRUE(table.set_owner(v[0], OwnerTag{3} << 32 | 18));  // same group: allowed
    EXPECT_EQ(table.lookup(v[0]).owner, OwnerTag{3} << 32 | 18);
    ASSERT_TRUE(table.set_owner(v[0], kSnapshotOwner));
    EXPECT_EQ(table.lookup(v[0]).owner, kSnapshotOwner);
    EXPECT_EQ(owner_group(table.lookup(v[0]).owner), 0xffff);  // a memory tier's share counts it there
}

// Each block of kBlockSize vslots serves one owner group: interleaved owners of
// three groups never share a block, and each gets its own back from lookup.
TEST(VSlotTable, OwnersOfDifferentGroupsNeverShareABlock) {
    VSlotTable table;
    constexpr std::size_t kN = 3 * VSlotTable::kBlockSize + 100;
    std::vector<OwnerTag> owners(kN);
    for (std::size_t i = 0; i < kN; ++i) owners[i] = OwnerTag{i % 3 + 1} << 32 | i;
    std::vector<VSlot> v(kN);
    ASSERT_EQ(table.allocate(owners, v), kN);
    std::map<std::uint32_t, std::uint16_t> block_group;
    std::set<std::uint32_t> seen;
    for (std::size_t i = 0; i < kN; ++i) {
        ASSERT_NE(v[i], kNoVSlot);
        ASSERT_TRUE(seen.insert(v[i].value()).second) << "vslot handed out twice";
        const std::uint32_t block = v[i].value() >> VSlotTable::kBlockShift;
        auto [it, fresh] = block_group.emplace(block, owner_group(owners[i]));
        EXPECT_EQ(it->second, owner_group(owners[i])) << "block " << block << " serves two groups";
        EXPECT_EQ(table.lookup(v[i]).owner, owners[i]);
    }
    EXPECT_EQ(block_group.size(), 6u);  // 1124 vslots per group: two blocks each (block 0 has 1023)
    EXPECT_EQ(table.blocks_in_use(), 6u);
}

// A group whose last vslot is freed keeps its blocks until another group needs one
// and none is free: then they are taken back, so the table does not grow with the
// number of groups over time (VMs come and go).
TEST(VSlotTable, AnIdleGroupsBlocksGoToTheNextGroupThatNeedsOne) {
    VSlotTable table;
    std::vector<VSlot> v(2 * VSlotTable::kBlockSize);
    for (std::uint16_t group = 1; group <= 50; ++group) {
        std::vector<OwnerTag> owners(v.size());
        for (std::size_t i = 0; i < owners.size(); ++i) owners[i] = OwnerTag{group} << 32 | i;
        ASSERT_EQ(table.allocate(owners, v), v.size());
        for (VSlot x : v) {
            ASSERT_TRUE(table.retire(x));
            table.recycle(x);
        }
        EXPECT_GT(table.blocks_in_use(), 0u) << "group " << group << " (idle) keeps its blocks";
    }
    EXPECT_EQ(table.blocks_made(), 3u);  // 2048 vslots from 1: blocks 0-2, made once
    EXPECT_EQ(table.allocated(), 0u);
}

// A group that keeps one vslot but frees the rest gives back its empty blocks too
// (the amortised compaction of its free list), while the block it still uses stays
// its own; a vslot freed there comes back to the same group.
TEST(VSlotTable, CompactionReturnsAGroupsEmptyBlocksAndKeepsItsUsedOne) {
    VSlotTable table;
    constexpr std::size_t kN = 8 * VSlotTable::kBlockSize;
    std::vector<OwnerTag> owners(kN);
    for (std::size_t i = 0; i < kN; ++i) owners[i] = OwnerTag{1} << 32 | i;
    std::vector<VSlot> v(kN);
    ASSERT_EQ(table.allocate(owners, v), kN);
    const std::uint64_t made = table.blocks_made();
    for (std::size_t i = 1; i < kN; ++i) {  // keep v[0] (block 0)
        ASSERT_TRUE(table.retire(v[i]));
        table.recycle(v[i]);
    }
    // Its free list is compacted whenever it doubled (at 2048 entries at least): the
    // block in use and fewer than 2048 free entries' worth of blocks stay, not 8.
    EXPECT_LE(table.blocks_in_use(), 3u) << "a group of one vslot still holds " << table.blocks_in_use() << " blocks";
    // Another group's vslots come from the returned blocks: nothing new is made.
    std::vector<OwnerTag> other(4 * VSlotTable::kBlockSize, OwnerTag{2} << 32);
    std::vector<VSlot> w(other.size());
    ASSERT_EQ(table.allocate(other, w), w.size());
    EXPECT_EQ(table.blocks_made(), made);
    std::set<std::uint32_t> blocks_of_2;
    for (VSlot x : w) blocks_of_2.insert(x.value() >> VSlotTable::kBlockShift);
    EXPECT_FALSE(blocks_of_2.contains(v[0].value() >> VSlotTable::kBlockShift)) << "group 2 got group 1's used block";
    EXPECT_EQ(table.lookup(v[0]).owner, owners[0]);
    // Group 1 allocates again from a block it still holds: nothing new, none of 2's.
    std::vector<OwnerTag> again(VSlotTable::kBlockSize, OwnerTag{1} << 32 | 5);
    std::vector<VSlot> a(again.size());
    ASSERT_EQ(table.allocate(again, a), a.size());
    for (VSlot x : a) EXPECT_FALSE(blocks_of_2.contains(x.value() >> VSlotTable::kBlockShift));
    EXPECT_EQ(table.blocks_made(), made);
}

// Threads of several groups allocate and free at once while a reader looks up:
// no vslot is handed out twice, every lookup of a valid vslot names its owner's
// group, and the table stays as small as the groups' peak.
TEST(VSlotTable, ConcurrentGroupsAllocateAndFreeWithoutSharingAVslot) {
    VSlotTable table;
    constexpr int kThreads = 4;
    constexpr int kRounds = 200;
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> bad{0};
    std::vector<std::atomic<std::uint8_t>> holder(16 * VSlotTable::kBlockSize);
    std::thread reader([&] {
        std::uint32_t x = 1;
        while (!stop.load()) {
            const VSlotInfo info = table.lookup(VSlot(x));
            const std::uint64_t index = info.owner & 0xffff'ffffu;
            const std::uint16_t group = owner_group(info.owner);
            if (info.state == VSlotState::valid && ((index != 0 && index != x) || group < 1 || group > kThreads)) bad++;
            x = x % static_cast<std::uint32_t>(holder.size() - 1) + 1;
        }
    });
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            const OwnerTag group = OwnerTag{static_cast<std::uint16_t>(t + 1)} << 32;
            std::vector<VSlot> v(300);
            std::vector<OwnerTag> owners(v.size(), group);
            for (int r = 0; r < kRounds; ++r) {
                const std::size_t n = table.allocate(owners, v);
                if (n != v.size()) bad++;
                for (std::size_t i = 0; i < n; ++i) {
                    if (v[i].value() >= holder.size() || holder[v[i].value()].exchange(1) != 0) bad++;
                    table.set_target(v[i], PSlot{DeviceId(1), SlotIdx(v[i].value())}, 0);
                    table.publish(v[i]);
                    ASSERT_TRUE(table.set_owner(v[i], group | v[i].value()));  // its own group: allowed
                }
                for (std::size_t i = 0; i < n; ++i) {
                    ASSERT_TRUE(table.retire(v[i]));
                    holder[v[i].value()].store(0);
                    table.recycle(v[i]);
                }
            }
        });
    }
    for (auto& th : threads) th.join();
    stop = true;
    reader.join();
    EXPECT_EQ(bad.load(), 0u);
    EXPECT_EQ(table.allocated(), 0u);
    EXPECT_LE(table.blocks_made(), 2u * kThreads);  // 300 in use per group at most
}

// Blocks of 2 and 4 vslots (the explorer's sizes): random allocations and frees of
// five groups, checked against a model after every operation. Blocks change hands
// all the time here (taken back from idle groups, compacted), and still no vslot is
// handed out twice, every allocated vslot names its owner, no two groups' allocated
// vslots share a block, and the table holds no more blocks than the groups' vslots
// in use could need plus what compaction is allowed to keep.
TEST(VSlotTable, SmallBlocksChangeHandsWithoutMixingGroups) {
    for (unsigned shift : {1u, 2u}) {
        VSlotTable table(shift);
        ASSERT_EQ(table.block_size(), 1u << shift);
        std::mt19937_64 rng(shift);
        std::map<std::uint32_t, OwnerTag> live;  // vslot -> owner
        std::uint64_t next_index = 0;
        for (int op = 0; op < 20000; ++op) {
            const OwnerTag group = OwnerTag{1 + rng() % 5} << 32;
            if (live.size() < 40 && (live.empty() || rng() % 2 == 0)) {  // 45 in use at most
                std::vector<OwnerTag> owners(1 + rng() % 6);
                for (OwnerTag& o : owners) o = group | (next_index++ % 0xffff'fff0u);
                std::vector<VSlot> v(owners.size());
                ASSERT_EQ(table.allocate(owners, v), v.size());
                for (std::size_t i = 0; i < v.size(); ++i) {
                    ASSERT_NE(v[i], kNoVSlot);
                    ASSERT_TRUE(live.emplace(v[i].value(), owners[i]).second) << "vslot " << v[i].value() << " twice";
                }
            } else {
                auto it = live.begin();
                std::advance(it, static_cast<long>(rng() % live.size()));
                ASSERT_TRUE(table.retire(VSlot(it->first)));
                table.recycle(VSlot(it->first));
                live.erase(it);
            }
            std::map<std::uint32_t, std::uint16_t> block_of;
            for (const auto& [v, owner] : live) {
                ASSERT_EQ(table.lookup(VSlot(v)).owner, owner) << "shift " << shift << ", op " << op;
                auto [b, fresh] = block_of.emplace(v >> shift, owner_group(owner));
                ASSERT_EQ(b->second, owner_group(owner)) << "block " << (v >> shift) << " serves two groups";
            }
        }
        EXPECT_EQ(table.allocated(), live.size());
        // With at most 45 vslots in use, the table stays small: blocks go back and are
        // reused (a group keeps its used blocks and a compaction's slack at most).
        EXPECT_LT(table.blocks_made(), 120u) << "blocks of " << table.block_size();
        std::printf("blocks of %u: %llu made, %llu in use, %zu vslots in use\n", table.block_size(),
                    static_cast<unsigned long long>(table.blocks_made()),
                    static_cast<unsigned long long>(table.blocks_in_use()), live.size());
    }
}

// A group that swaps one page out and in again, over and over, keeps its block:
// it is not handed back and taken again each time (the free's cost stays flat).
TEST(VSlotTable, AGroupGoingToZeroAndBackKeepsItsBlock) {
    VSlotTable table;
    std::vector<OwnerTag> one{OwnerTag{7} << 32 | 1};
    std::vector<VSlot> v(1);
    ASSERT_EQ(table.allocate(one, v), 1u);
    const VSlot first = v[0];
    for (int i = 0; i < 1000; ++i) {
        ASSERT_TRUE(table.retire(v[0]));
        table.recycle(v[0]);
        ASSERT_EQ(table.allocate(one, v), 1u);
        ASSERT_EQ(v[0], first) << "round " << i;  // LIFO on its own block
    }
    EXPECT_EQ(table.blocks_made(), 1u);
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

TEST(VSlotTable, DescriptorIs16BytesPerVslot) {
    // The figure bench/swap_bench reports as metadata per swapped page, with the
    // device's per-slot costs (swap/README.md#vslots).
    EXPECT_EQ(VSlotTable::bytes_per_vslot(), 16u);
}

}  // namespace
}  // namespace swapvisor::swap
