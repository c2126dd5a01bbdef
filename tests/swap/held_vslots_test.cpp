// Held vslots (swap/README.md#held-vslots): extra references that keep a vslot and
// its slot alive for snapshots, the owner becoming kSnapshotOwner when only holders
// remain, swapoff migrating held slots (never bringing them back into a VM) and
// telling the observer where they went, and adoption of persisted references at
// swapon after a restart, before the device hands out any slot. Real files through
// io_uring (Privileged*).
#include <gtest/gtest.h>

#include <set>

#include "swap/swap_header.hpp"
#include "swap/swap_pool.hpp"
#include "tests/swap/swap_test_util.hpp"

namespace swapvisor::swap {
namespace {

using test::kClusterBytes;
using test::Pages;

bool is(const Error& e, Errc c) { return e.code == make_error_code(c); }

using test::expect_reads_as;
using test::write_pages;

std::uint64_t used_slots(const SwapPool& pool) {
    std::uint64_t used = 0;
    for (const auto& d : pool.stats()) used += d.used_slots;
    return used;
}

TEST(HeldVSlots, NothingSharedCostsNothingAndHoldOfAFreeVSlotIsStale) {
    SwapPool pool;
    EXPECT_EQ(pool.shared_vslots(), 0u);
    auto r = pool.hold(VSlot(42));
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::stale_slot));
    EXPECT_EQ(pool.shared_vslots(), 0u);
}

TEST(PrivilegedHeldVSlots, TheLastReferenceFreesAndTheOwnerBecomesTheSnapshot) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, 2 * kClusterBytes));
    auto v = write_pages(pool, ring, 4, 100);
    ASSERT_TRUE(pool.hold(v[0]));
    ASSERT_TRUE(pool.hold(v[0]));  // two snapshots
    ASSERT_TRUE(pool.hold(v[1]));
    EXPECT_EQ(pool.extra_refs(v[0]), 2u);
    EXPECT_EQ(pool.shared_vslots(), 2u);

    // The VM writes the pages again: it drops its references.
    pool.free(v[0]);
    pool.free(v[1]);
    pool.free(v[2]);
    EXPECT_EQ(pool.allocated_vslots(), 3u);  // v0, v1 held; v3 the VM's
    EXPECT_EQ(pool.owner_of(v[0]), kSnapshotOwner);
    EXPECT_EQ(pool.owner_of(v[3]), 103u);
    expect_reads_as(pool, ring, v[0], 100);
    expect_reads_as(pool, ring, v[1], 101);

    // A holder dropping while the owner still refers keeps the owner.
    ASSERT_TRUE(pool.hold(v[3]));
    pool.drop_hold(v[3]);
    EXPECT_EQ(pool.owner_of(v[3]), 103u);

    pool.drop_hold(v[0]);
    EXPECT_EQ(pool.allocated_vslots(), 3u);
    pool.drop_hold(v[0]);
    pool.drop_hold(v[1]);
    pool.free(v[3]);
    EXPECT_EQ(pool.allocated_vslots(), 0u);
    EXPECT_EQ(used_slots(pool), 0u);
    EXPECT_EQ(pool.shared_vslots(), 0u);
}

TEST(PrivilegedHeldVSlots, SwapoffMovesHeldSlotsAndTellsTheObserverWhere) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    test::MemorySink sink(pool, 1000);  // room to bring everything back: held slots must still move
    pool.set_eviction_sink(&sink);
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, 2 * kClusterBytes));
    auto v = write_pages(pool, ring, 64, 0);
    for (std::size_t i = 0; i < v.size(); ++i) sink.set_swapped(i, v[i]);
    ASSERT_TRUE(pool.swapon(dir.file("b"), 5, 2 * kClusterBytes));
    const DeviceUuid ua = *pool.uuid_of(*pool.find_device(dir.file("a")));
    const DeviceUuid ub = *pool.uuid_of(*pool.find_device(dir.file("b")));
    // Even pages held by a snapshot; of those, every fourth only by it.
    std::map<VSlot, PSlot> before;
    for (std::size_t i = 0; i < v.size(); i += 2) {
        ASSERT_TRUE(pool.hold(v[i]));
        before[v[i]] = *pool.pslot_of(v[i]);
        if (i % 4 == 0) pool.free(v[i]);  // the VM rewrote it
    }
    std::vector<HeldSlotMove> seen;
    int calls = 0;
    pool.set_held_slot_observer([&](std::span<const HeldSlotMove> moves) {
        ++calls;
        seen.insert(seen.end(), moves.begin(), moves.end());
    });
    // Low priority for b: the sink would take pages back first if allowed.
    auto report = pool.swapoff(dir.file("a"), ring);
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_EQ(calls, 1);
    ASSERT_EQ(seen.size(), before.size());
    for (const HeldSlotMove& m : seen) {
        ASSERT_TRUE(before.contains(m.vslot));
        EXPECT_EQ(m.from_uuid, ua);
        EXPECT_EQ(m.from_slot, before[m.vslot].slot);
        EXPECT_EQ(m.to_uuid, ub);
        EXPECT_EQ(pool.pslot_of(m.vslot)->slot, m.to_slot);
    }
    // Every held page is on b, readable; none came back into the "VM" as a held one.
    for (std::size_t i = 0; i < v.size(); i += 2) {
        EXPECT_FALSE(sink.resident(i).has_value()) << i;
        expect_reads_as(pool, ring, v[i], i);
    }
    for (std::size_t i = 0; i < v.size(); i += 2) {
        pool.drop_hold(v[i]);
        if (i % 4 != 0) pool.free(v[i]);
    }
    for (std::size_t i = 1; i < v.size(); i += 2)
        if (!sink.resident(i)) pool.free(v[i]);
    EXPECT_EQ(pool.allocated_vslots(), 0u);
    EXPECT_EQ(used_slots(pool), 0u);
}

TEST(PrivilegedHeldVSlots, SwapoffWithNoRoomForAHeldSlotIsRefusedAndLeavesItReadable) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    test::MemorySink sink(pool, 1000);
    pool.set_eviction_sink(&sink);
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, 2 * kClusterBytes));
    auto v = write_pages(pool, ring, 8, 0);
    for (std::size_t i = 0; i < v.size(); ++i) sink.set_swapped(i, v[i]);
    ASSERT_TRUE(pool.hold(v[3]));
    pool.free(v[3]);
    auto report = pool.swapoff(dir.file("a"), ring);
    ASSERT_FALSE(report);
    EXPECT_TRUE(is(report.error(), Errc::would_not_fit)) << report.error().message();
    EXPECT_TRUE(pool.find_device(dir.file("a")).has_value());
    expect_reads_as(pool, ring, v[3], 3);
    EXPECT_EQ(sink.resident_count(), 0u);  // refused up front: nothing changed
    pool.drop_hold(v[3]);
    for (std::size_t i = 0; i < v.size(); ++i)
        if (i != 3) pool.free(v[i]);
    EXPECT_EQ(used_slots(pool), 0u);
}

TEST(PrivilegedHeldVSlots, AdoptedAtSwaponBeforeAnySlotIsHandedOut) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    DeviceUuid uuid{};
    std::vector<HeldSlot> held;
    {
        SwapPool first;
        ASSERT_TRUE(first.swapon(dir.file("a"), 10, 2 * kClusterBytes));
        uuid = *first.uuid_of(*first.find_device(dir.file("a")));
        auto v = write_pages(first, ring, 32, 0);
        Pages back(1);
        for (std::size_t i = 0; i < v.size(); i += 3) {
            ASSERT_TRUE(first.read_in(ring, v[i], back[0]));
            held.push_back(HeldSlot{first.pslot_of(v[i])->slot, page_checksum(back[0])});
        }
    }  // the daemon exits; the file keeps the data
    SwapPool pool;
    ASSERT_TRUE(pool.expect_held_slots(uuid, held));
    ASSERT_TRUE(pool.expect_held_slots(uuid, std::span(held).first(1)));  // a second snapshot names slot 0 too
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, 0));
    EXPECT_EQ(pool.allocated_vslots(), held.size());
    EXPECT_EQ(used_slots(pool), held.size());
    // Slot 0 carries two references (one per snapshot).
    const VSlot v0 = *pool.adopted_vslot(uuid, held[0].slot);
    EXPECT_EQ(pool.extra_refs(v0), 1u);
    EXPECT_EQ(pool.owner_of(v0), kSnapshotOwner);
    // New pages never land on an adopted slot.
    auto fresh = write_pages(pool, ring, 200, 1000);
    std::set<std::uint32_t> reserved;
    for (const HeldSlot& h : held) reserved.insert(h.slot.value());
    for (VSlot f : fresh) EXPECT_FALSE(reserved.contains(pool.pslot_of(f)->slot.value()));
    for (std::size_t k = 0; k < held.size(); ++k) {
        auto v = pool.adopted_vslot(uuid, held[k].slot);
        ASSERT_TRUE(v) << k;
        expect_reads_as(pool, ring, *v, k * 3);
    }
    // A second expectation after swapon is refused (it could race allocation).
    auto late = pool.expect_held_slots(uuid, held);
    ASSERT_FALSE(late);
    EXPECT_TRUE(is(late.error(), Errc::held_slot));
    for (VSlot f : fresh) pool.free(f);
    pool.drop_hold(v0);
    for (const HeldSlot& h : held) pool.drop_hold(*pool.adopted_vslot(uuid, h.slot));
    EXPECT_EQ(pool.allocated_vslots(), 0u);
    EXPECT_EQ(used_slots(pool), 0u);
}

TEST(PrivilegedHeldVSlots, AnAdoptedSlotWhoseChecksumDoesNotMatchIsAnErrorNamingIt) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    DeviceUuid uuid{};
    SlotIdx slot{};
    {
        SwapPool first;
        ASSERT_TRUE(first.swapon(dir.file("a"), 10, 2 * kClusterBytes));
        uuid = *first.uuid_of(*first.find_device(dir.file("a")));
        auto v = write_pages(first, ring, 1, 7);
        slot = first.pslot_of(v[0])->slot;
    }
    SwapPool pool;
    const HeldSlot wrong{slot, 0x1234};
    ASSERT_TRUE(pool.expect_held_slots(uuid, std::span(&wrong, 1)));
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, 0));
    const VSlot v = *pool.adopted_vslot(uuid, slot);
    Pages back(1);
    auto r = pool.read_in(ring, v, back[0]);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::checksum_mismatch));
    EXPECT_NE(r.error().message().find("slot " + std::to_string(slot.value())), std::string::npos) << r.error().message();
    pool.drop_hold(v);
    EXPECT_EQ(used_slots(pool), 0u);
}

}  // namespace
}  // namespace swapvisor::swap
