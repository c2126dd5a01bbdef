// SnapshotStore (vmm/host/snapshot_store.hpp) without KVM or a guest: what `serve
// --snapshots` finds under its root, how a snapshot that cannot be loaded is kept as
// unavailable with its error (a restore from it gets that error), the keys, and a
// handover of a device holding a real guest memory snapshot's slots.
// Snapshots taken and restored from real guests: tests/scripts/snapshot_test.sh.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "guestmem/guest_memory.hpp"
#include "guestmem/snapshot.hpp"
#include "io/ring.hpp"
#include "swap/swap_pool.hpp"
#include "tests/guestmem/page_pattern.hpp"
#include "vmm/host/snapshot_store.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm;
namespace fs = std::filesystem;

namespace {

class SnapshotStoreTest : public ::testing::Test {
protected:
    void SetUp() override {
        root_ = fs::temp_directory_path() / ("swv-store-" + std::to_string(::getpid()) + "-" +
                                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(root_);
        fs::create_directories(root_);
    }
    void TearDown() override { fs::remove_all(root_); }
    void write(const fs::path& p, const std::string& text) {
        fs::create_directories(p.parent_path());
        std::ofstream(p) << text;
    }
    fs::path root_;
    swap::SwapPool pool_;
};

}  // namespace

TEST_F(SnapshotStoreTest, OnlyDirectoriesWithAManifestAreSnapshotsAndABrokenOneIsUnavailable) {
    write(root_ / "broken" / "manifest.json", "{}");  // a VM manifest, but no memory files
    write(root_ / "not-a-snapshot" / "notes.txt", "x");
    write(root_ / "loose-file", "x");
    SnapshotStore store(pool_);
    EXPECT_EQ(store.expect_all(root_), 0u) << "the broken one's slots cannot be reserved";
    store.open_all();
    control::SnapshotSummary s = store.summary();
    EXPECT_EQ(s.snapshots, 0u);
    EXPECT_EQ(s.unavailable, 1u);
    EXPECT_EQ(s.held_vslots, 0u);

    // A restore from it gets the error it was found with, naming the file.
    auto key = snapshot_key(root_ / "broken");
    ASSERT_TRUE(key.has_value());
    auto got = store.get(*key);
    ASSERT_FALSE(got.has_value());
    EXPECT_NE(got.error().message().find("memory"), std::string::npos) << got.error().message();
    EXPECT_EQ(store.take(*key), nullptr);
    EXPECT_TRUE(store.forget_unavailable(*key));
    EXPECT_FALSE(store.forget_unavailable(*key));
    EXPECT_EQ(store.summary().unavailable, 0u);
}

TEST_F(SnapshotStoreTest, KeysAreCanonicalAndAMissingDirectoryIsNamed) {
    fs::create_directories(root_ / "s1");
    auto a = snapshot_key(root_ / "s1");
    auto b = snapshot_key(root_ / "s1" / ".." / "s1" / ".");
    ASSERT_TRUE(a.has_value() && b.has_value());
    EXPECT_EQ(*a, *b);
    auto missing = snapshot_key(root_ / "nowhere");
    ASSERT_FALSE(missing.has_value());
    EXPECT_NE(missing.error().message().find("nowhere"), std::string::npos) << missing.error().message();
    // Not loaded, no files: opening it fails and nothing is kept.
    SnapshotStore store(pool_);
    EXPECT_FALSE(store.get(*a).has_value());
    EXPECT_EQ(store.summary().snapshots, 0u);
    EXPECT_EQ(store.summary().unavailable, 0u);
}

TEST_F(SnapshotStoreTest, AnUnreadableRootIsLoggedAndFindsNothing) {
    SnapshotStore store(pool_);
    EXPECT_EQ(store.expect_all(root_ / "absent"), 0u);
    EXPECT_EQ(store.summary().unavailable, 0u);
}

// swapoff --handover (docs/SNAPSHOT.md#handover) with a real snapshot of a guest
// memory (real userfaultfd faults from this thread, io_uring on files): refused while
// a VM restored from the snapshot runs, then the snapshot is unloaded and its slots
// stay on the device, another VM's pages move off it and keep their bytes, and a
// second pool (another daemon) that reserves the slots before attaching the device
// restores every byte.
namespace {

constexpr std::uint64_t kMem = 8ULL << 20;
constexpr std::uint64_t kPages = kMem / guestmem::kPageSize;

std::unique_ptr<guestmem::GuestMemory> half_swapped(swap::SwapPool& pool, guestmem::VmId id, std::uint64_t seed) {
    auto vm = guestmem::create_guest_memory(
        guestmem::MemoryConfig{.name = "vm" + std::to_string(id), .memory_bytes = kMem, .resident_limit = kMem / 2}, id,
        nullptr, &pool);
    EXPECT_TRUE(vm) << vm.error().message();
    if (!vm) return nullptr;
    EXPECT_TRUE((*vm)->start());
    swapvisor::testing::write_pass((*vm)->regions()[0].guest_view, 0, kPages, seed);
    for (int i = 0; i < 400 && (*vm)->stats().swapped_bytes < kMem / 4; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_GE((*vm)->stats().swapped_bytes, kMem / 4);
    return std::move(*vm);
}

// Pages that do not read as half_swapped(seed) wrote them.
std::uint64_t bad_pages(const std::byte* base, std::uint64_t seed) {
    return swapvisor::testing::verify_pass(base, kPages, seed);
}

}  // namespace

TEST_F(SnapshotStoreTest, PrivilegedHandoverUnloadsTheSnapshotAndAnotherPoolRestoresEveryByte) {
    if (access("/proc/sys/vm/unprivileged_userfaultfd", F_OK) != 0 && access("/dev/kvm", F_OK) != 0)
        GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable";
    auto ring = io::Ring::create(64);
    if (!ring) GTEST_SKIP() << "SKIPPED LOUDLY: io_uring unavailable: " << ring.error().message();
    const fs::path a = root_ / "a.swap";
    const fs::path dir = root_ / "s1";
    ASSERT_TRUE(pool_.swapon(a, 10, 32ULL << 20));
    auto alpha = half_swapped(pool_, 1, 7);
    auto omega = half_swapped(pool_, 2, 11);  // keeps running on this pool
    ASSERT_TRUE(alpha && omega);
    ASSERT_TRUE(pool_.swapon(root_ / "b.swap", 5, 32ULL << 20));
    auto saved = alpha->save(dir);
    ASSERT_TRUE(saved) << saved.error().message();
    const std::uint64_t swapped = (*saved)->counts().swapped;
    ASSERT_GT(swapped, 0u);
    alpha->stop();
    alpha.reset();  // snapshot --stop: only the snapshot refers to its slots now
    SnapshotStore store(pool_);
    const fs::path key = *snapshot_key(dir);
    store.add(key, std::move(*saved));

    // Refused while a VM restored from it runs: nothing changes.
    std::string user = "clone1";
    swap::Handover refused = store.handover(a.string(), [&](const fs::path& d) { return d == key ? user : ""; });
    auto r = pool_.swapoff(a, *ring, {}, swap::Force::no, &refused);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("clone1"), std::string::npos) << r.error().message();
    EXPECT_EQ(store.summary().snapshots, 1u);
    EXPECT_EQ(store.summary().held_vslots, swapped);

    user.clear();
    swap::Handover h = store.handover(a.string(), [&](const fs::path& d) { return d == key ? user : ""; });
    auto report = pool_.swapoff(a, *ring, {}, swap::Force::no, &h);
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_GT(report->pages_moved, 0u);  // omega's
    EXPECT_EQ(store.summary().snapshots, 0u);
    EXPECT_EQ(store.summary().unavailable, 1u);
    EXPECT_TRUE(store.handed_over(key));
    auto again = store.get(key);
    ASSERT_FALSE(again);
    EXPECT_NE(again.error().message().find("handed over"), std::string::npos) << again.error().message();
    EXPECT_EQ(bad_pages(omega->regions()[0].guest_view, 11), 0u);
    EXPECT_EQ(omega->stats().lost_pages, 0u);
    omega->stop();
    omega.reset();

    // Another daemon: the slots reserved before the device is attached.
    swap::SwapPool other;
    ASSERT_TRUE(guestmem::expect_snapshot_slots(key, other));
    ASSERT_TRUE(other.swapon(a, 10, 0));
    auto opened = guestmem::MemorySnapshot::open(key, &other);
    ASSERT_TRUE(opened) << opened.error().message();
    EXPECT_EQ((*opened)->held_vslots(), swapped);
    auto restored = guestmem::restore_guest_memory(
        guestmem::MemoryConfig{.name = "beta", .memory_bytes = kMem}, 3, nullptr, &other, **opened,
        guestmem::RestoreOptions{.fill = false, .prefetch = false});
    ASSERT_TRUE(restored) << restored.error().message();
    ASSERT_TRUE((*restored)->start());
    EXPECT_EQ(bad_pages((*restored)->regions()[0].guest_view, 7), 0u);
    EXPECT_EQ((*restored)->stats().lost_pages, 0u);
    (*restored)->stop();
    restored->reset();
    ASSERT_TRUE(guestmem::delete_memory_snapshot(std::move(*opened)));
    std::uint64_t used = 0;
    for (const auto& d : other.stats()) used += d.used_slots;
    EXPECT_EQ(used, 0u);
}

// ctl snapshot-load on a running daemon (SnapshotStore::load): a snapshot whose
// device another swapvisor used is loaded before that device is attached here, waits,
// and is restored byte for byte after the swapon; a second load is refused, and so is
// one whose device is attached already (its slots may have been handed out).
TEST_F(SnapshotStoreTest, PrivilegedLoadReservesASnapshotsSlotsBeforeItsDeviceIsAttached) {
    if (access("/proc/sys/vm/unprivileged_userfaultfd", F_OK) != 0 && access("/dev/kvm", F_OK) != 0)
        GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable";
    const fs::path a = root_ / "a.swap";
    const fs::path s1 = root_ / "s1", s2 = root_ / "s2", s3 = root_ / "s3";
    std::uint64_t swapped = 0;
    {
        swap::SwapPool first;  // the other daemon: it snapshots its VM twice and exits
        ASSERT_TRUE(first.swapon(a, 10, 32ULL << 20));
        auto alpha = half_swapped(first, 1, 5);
        ASSERT_TRUE(alpha);
        auto one = alpha->save(s1);
        ASSERT_TRUE(one) << one.error().message();
        auto two = alpha->save(s2);
        ASSERT_TRUE(two) << two.error().message();
        auto three = alpha->save(s3);
        ASSERT_TRUE(three) << three.error().message();
        swapped = (*one)->counts().swapped;
        ASSERT_GT(swapped, 0u);
        alpha->stop();
    }  // the files keep the data
    ASSERT_TRUE(pool_.swapon(root_ / "b.swap", 5, 32ULL << 20));  // this daemon runs with a device of its own
    SnapshotStore store(pool_);
    const fs::path key = *snapshot_key(s1);

    auto loaded = store.load(s1);
    ASSERT_TRUE(loaded) << loaded.error().message();
    EXPECT_EQ(*loaded, SnapshotStore::LoadState::waiting);
    auto twice = store.load(s1);
    ASSERT_FALSE(twice);
    EXPECT_NE(twice.error().message().find("already"), std::string::npos) << twice.error().message();
    auto missing = store.load(root_ / "nothing");
    ASSERT_FALSE(missing);
    // One reserved at start (serve --snapshots) whose device was missing then stays
    // reserved: loading it again would count its slots twice.
    ASSERT_TRUE(store.expect(s2));
    store.open_all();
    EXPECT_EQ(store.summary().unavailable, 2u) << "s1 and s2 both wait for their device";
    auto reserved = store.load(s2);
    ASSERT_FALSE(reserved) << "s2's slots were reserved at start already";
    EXPECT_NE(reserved.error().message().find("already"), std::string::npos) << reserved.error().message();

    ASSERT_TRUE(pool_.swapon(a, 10, 0));  // adopts s1's slots
    auto late = store.load(s3);
    ASSERT_FALSE(late) << "s3's slots on a were not reserved before its swapon";
    EXPECT_NE(late.error().message().find("attached already"), std::string::npos) << late.error().message();

    auto snap = store.get(key);
    ASSERT_TRUE(snap) << snap.error().message();
    EXPECT_EQ((*snap)->held_vslots(), swapped);
    auto restored = guestmem::restore_guest_memory(
        guestmem::MemoryConfig{.name = "beta", .memory_bytes = kMem}, 3, nullptr, &pool_, **snap,
        guestmem::RestoreOptions{.fill = false, .prefetch = false});
    ASSERT_TRUE(restored) << restored.error().message();
    ASSERT_TRUE((*restored)->start());
    EXPECT_EQ(bad_pages((*restored)->regions()[0].guest_view, 5), 0u);
    EXPECT_EQ((*restored)->stats().lost_pages, 0u);
    (*restored)->stop();
    restored->reset();
    ASSERT_TRUE(guestmem::delete_memory_snapshot(store.take(key)));
    auto second = store.get(*snapshot_key(s2));  // opened now that its device is here
    ASSERT_TRUE(second) << second.error().message();
    ASSERT_TRUE(guestmem::delete_memory_snapshot(store.take(*snapshot_key(s2))));
    std::uint64_t used = 0;
    for (const auto& d : pool_.stats()) used += d.used_slots;
    EXPECT_EQ(used, 0u) << "every adopted slot released, none reserved twice";
}
