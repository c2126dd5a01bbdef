// swapoff with a handover (swap/README.md#handover, issue #21 item 6): the pages of
// VMs leave the device, the slots only snapshots hold stay where they are, no hold
// on the device succeeds while it runs, a refusal changes nothing, and another pool
// that attaches the device afterwards adopts the slots with their data. Real files
// through io_uring (Privileged*).
#include <gtest/gtest.h>

#include <algorithm>
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

std::optional<DeviceStats> stats_of(const SwapPool& pool, const std::string& path) {
    for (const auto& d : pool.stats())
        if (d.path == path) return d;
    return std::nullopt;
}

// A pool with file a (64 pages written, every fourth held by a snapshot only) and
// file b below it (room for the rest).
struct TwoDevices {
    test::TempDir dir;
    SwapPool pool;
    std::vector<VSlot> v;
    std::vector<VSlot> snapshot_only;  // v[i], i % 4 == 0
    DeviceUuid uuid{};

    void set_up(io::Ring& ring) {
        ASSERT_TRUE(pool.swapon(dir.file("a"), 10, 2 * kClusterBytes));
        v = write_pages(pool, ring, 64, 0);
        ASSERT_TRUE(pool.swapon(dir.file("b"), 5, 2 * kClusterBytes));
        uuid = *pool.uuid_of(*pool.find_device(dir.file("a")));
        for (std::size_t i = 0; i < v.size(); i += 4) {
            ASSERT_TRUE(pool.hold(v[i]));
            pool.free(v[i]);  // the VM rewrote it: only the snapshot refers to it
            snapshot_only.push_back(v[i]);
        }
        std::sort(snapshot_only.begin(), snapshot_only.end(), [](VSlot x, VSlot y) { return x.value() < y.value(); });
    }
};

TEST(PrivilegedHandover, SnapshotSlotsStayAndAnotherPoolAdoptsThemWithTheirData) {
    SWV_SWAP_RING_OR_SKIP(ring);
    TwoDevices t;
    ASSERT_NO_FATAL_FAILURE(t.set_up(ring));
    std::vector<HeldSlot> held;
    std::map<std::uint32_t, std::uint64_t> id_of_slot;
    for (std::size_t i = 0; i < t.v.size(); i += 4) {
        Pages back(1);
        ASSERT_TRUE(t.pool.read_in(ring, t.v[i], back[0]));
        const SlotIdx slot = t.pool.pslot_of(t.v[i])->slot;
        held.push_back(HeldSlot{slot, page_checksum(back[0])});
        id_of_slot[slot.value()] = i;
    }
    std::vector<HeldSlotMove> moved;
    t.pool.set_held_slot_observer(
        [&](std::span<const HeldSlotMove> m) { moved.insert(moved.end(), m.begin(), m.end()); });

    std::vector<VSlot> told;
    Result<void> hold_during = {};
    bool released = false;
    Handover h;
    h.check = [&](const DeviceUuid& uuid, std::span<const VSlot> kept) -> Result<void> {
        EXPECT_EQ(uuid, t.uuid);
        told.assign(kept.begin(), kept.end());
        hold_during = t.pool.hold(kept.front());  // a snapshot or restore starting now
        return {};
    };
    h.release = [&](const DeviceUuid& uuid) {
        EXPECT_EQ(uuid, t.uuid);
        released = true;
        for (VSlot s : t.snapshot_only) t.pool.drop_hold(s);
    };
    auto report = t.pool.swapoff(t.dir.file("a"), ring, {}, Force::no, &h);
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_TRUE(released);
    EXPECT_EQ(told, t.snapshot_only);
    ASSERT_FALSE(hold_during);
    EXPECT_TRUE(is(hold_during.error(), Errc::device_busy)) << hold_during.error().message();
    EXPECT_TRUE(moved.empty()) << "a handover moves no held slot";
    EXPECT_EQ(report->pages_moved, t.v.size() - t.snapshot_only.size());
    EXPECT_FALSE(stats_of(t.pool, t.dir.file("a")).has_value());
    // The VM's pages are on b, whole.
    for (std::size_t i = 0; i < t.v.size(); ++i) {
        if (i % 4 == 0) continue;
        expect_reads_as(t.pool, ring, t.v[i], i);
        t.pool.free(t.v[i]);
    }
    EXPECT_EQ(t.pool.allocated_vslots(), 0u);

    // Another pool (another daemon) attaches a after registering the snapshot's slots.
    SwapPool other;
    ASSERT_TRUE(other.expect_held_slots(t.uuid, held));
    ASSERT_TRUE(other.swapon(t.dir.file("a"), 10, 0));
    for (const HeldSlot& s : held) {
        auto adopted = other.adopted_vslot(t.uuid, s.slot);
        ASSERT_TRUE(adopted) << s.slot.value();
        expect_reads_as(other, ring, *adopted, id_of_slot[s.slot.value()]);
        other.drop_hold(*adopted);
    }
    EXPECT_EQ(other.allocated_vslots(), 0u);
}

TEST(PrivilegedHandover, APageAVmSharesWithASnapshotRefusesItAndChangesNothing) {
    SWV_SWAP_RING_OR_SKIP(ring);
    TwoDevices t;
    ASSERT_NO_FATAL_FAILURE(t.set_up(ring));
    ASSERT_TRUE(t.pool.hold(t.v[1]));  // a snapshot of a VM that still runs
    bool checked = false;
    Handover h;
    h.check = [&](const DeviceUuid&, std::span<const VSlot>) -> Result<void> {
        checked = true;
        return {};
    };
    h.release = [&](const DeviceUuid&) { ADD_FAILURE() << "released after a refusal"; };
    auto report = t.pool.swapoff(t.dir.file("a"), ring, {}, Force::no, &h);
    ASSERT_FALSE(report);
    EXPECT_TRUE(is(report.error(), Errc::held_slot)) << report.error().message();
    EXPECT_NE(report.error().message().find("stop that VM"), std::string::npos) << report.error().message();
    EXPECT_FALSE(checked);
    auto a = stats_of(t.pool, t.dir.file("a"));
    ASSERT_TRUE(a);
    EXPECT_EQ(a->state, DeviceState::active);
    EXPECT_EQ(a->used_slots, t.v.size());
    // Holds work again on it, and every page still reads back.
    ASSERT_TRUE(t.pool.hold(t.v[2]));
    t.pool.drop_hold(t.v[2]);
    for (std::size_t i = 0; i < t.v.size(); ++i) expect_reads_as(t.pool, ring, t.v[i], i);
}

TEST(PrivilegedHandover, ARefusingCheckChangesNothingAndAPlainSwapoffStillMovesHeldSlots) {
    SWV_SWAP_RING_OR_SKIP(ring);
    TwoDevices t;
    ASSERT_NO_FATAL_FAILURE(t.set_up(ring));
    Handover h;
    h.check = [&](const DeviceUuid&, std::span<const VSlot>) -> Result<void> {
        return make_error(Errc::held_slot, "test", "a VM restored from the snapshot runs");
    };
    h.release = [&](const DeviceUuid&) { ADD_FAILURE() << "released after a refusal"; };
    auto report = t.pool.swapoff(t.dir.file("a"), ring, {}, Force::no, &h);
    ASSERT_FALSE(report);
    EXPECT_NE(report.error().message().find("restored"), std::string::npos) << report.error().message();
    auto a = stats_of(t.pool, t.dir.file("a"));
    ASSERT_TRUE(a);
    EXPECT_EQ(a->state, DeviceState::active);
    EXPECT_EQ(a->used_slots, t.v.size());
    ASSERT_TRUE(t.pool.hold(t.v[1]));  // no longer refused
    t.pool.drop_hold(t.v[1]);
    // A plain swapoff afterwards moves everything, held slots included.
    auto plain = t.pool.swapoff(t.dir.file("a"), ring);
    ASSERT_TRUE(plain) << plain.error().message();
    EXPECT_EQ(plain->pages_moved, t.v.size());
    for (std::size_t i = 0; i < t.v.size(); ++i) expect_reads_as(t.pool, ring, t.v[i], i);
}

// A restore borrows its snapshot's references instead of holding its own
// (guestmem/README.md#borrowed): while a device is handed over, borrowing slots there
// is refused as a hold is (the handover's check and a restore cannot both miss each
// other); another device, or one no longer handed over, borrows freely.
TEST(PrivilegedHandover, BorrowingSlotsOfADeviceBeingHandedOverIsRefusedAsAHoldIs) {
    SWV_SWAP_RING_OR_SKIP(ring);
    TwoDevices t;
    ASSERT_NO_FATAL_FAILURE(t.set_up(ring));
    const DeviceUuid other = *t.pool.uuid_of(*t.pool.find_device(t.dir.file("b")));
    ASSERT_TRUE(t.pool.check_borrow(std::vector<DeviceUuid>{t.uuid, other}));
    bool checked = false;
    Handover h;
    h.check = [&](const DeviceUuid&, std::span<const VSlot>) -> Result<void> {
        checked = true;
        auto refused = t.pool.check_borrow(std::vector<DeviceUuid>{other, t.uuid});
        EXPECT_FALSE(refused.has_value());
        if (!refused) {
            EXPECT_TRUE(is(refused.error(), Errc::device_busy)) << refused.error().message();
            EXPECT_NE(refused.error().message().find(uuid_text(t.uuid)), std::string::npos) << refused.error().message();
        }
        EXPECT_TRUE(t.pool.check_borrow(std::vector<DeviceUuid>{other}));
        return make_error(Errc::held_slot, "test", "refused to end the handover here");
    };
    ASSERT_FALSE(t.pool.swapoff(t.dir.file("a"), ring, {}, Force::no, &h));
    EXPECT_TRUE(checked);
    EXPECT_TRUE(t.pool.check_borrow(std::vector<DeviceUuid>{t.uuid})) << "no handover runs any more";
}

TEST(PrivilegedHandover, WithoutSnapshotsItIsASwapoff) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, 2 * kClusterBytes));
    auto v = write_pages(pool, ring, 16, 0);
    ASSERT_TRUE(pool.swapon(dir.file("b"), 5, 2 * kClusterBytes));
    std::size_t told = 99;
    Handover h;
    h.check = [&](const DeviceUuid&, std::span<const VSlot> kept) -> Result<void> {
        told = kept.size();
        return {};
    };
    auto report = pool.swapoff(dir.file("a"), ring, {}, Force::no, &h);
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_EQ(told, 0u);
    EXPECT_EQ(report->pages_moved, v.size());
    for (std::size_t i = 0; i < v.size(); ++i) expect_reads_as(pool, ring, v[i], i);
}

TEST(PrivilegedHandover, AMemoryTierIsNotHandedOver) {
    SWV_SWAP_RING_OR_SKIP(ring);
    SwapPool pool;
    ASSERT_TRUE(pool.swapon("mem:2M", 100, 0));
    Handover h;
    auto report = pool.swapoff("mem:2M", ring, {}, Force::no, &h);
    ASSERT_FALSE(report);
    EXPECT_NE(report.error().message().find("memory tier"), std::string::npos) << report.error().message();
    EXPECT_TRUE(stats_of(pool, "mem:2M").has_value());
}

}  // namespace
}  // namespace swapvisor::swap
