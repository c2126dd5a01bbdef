// Memory snapshots on the real stack (guestmem/snapshot.hpp, docs/SNAPSHOT.md): memfd
// views, real userfaultfd faults from a host thread touching the guest view, the
// reclaimer and a SwapPool on O_DIRECT files through io_uring. Save with half the
// memory swapped, destroy, restore, read every byte back; clones that diverge;
// swapoff between save and restore; a restart (a new pool adopting the slots);
// release leaving no slot used; the filler and recorded-order prefetch; bad input.
#include <gtest/gtest.h>

#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#define XXH_INLINE_ALL  // header-only: the test rewrites page tables and their checksums
#include <xxhash.h>

#include "guestmem/guest_memory.hpp"
#include "guestmem/snapshot.hpp"
#include "swap/swap_pool.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kMem = 16ULL << 20;
constexpr std::uint64_t kPages = kMem / kPageSize;
constexpr std::uint64_t kSwapBytes = 32ULL << 20;

std::uint64_t pattern(std::uint64_t seed, std::uint64_t page, std::uint64_t word) {
    std::uint64_t x = (page + 1) * 0x9E3779B97F4A7C15ULL ^ (word << 17) ^ (seed * 0xBF58476D1CE4E5B9ULL);
    x ^= x >> 31;
    return x | 1;  // never an all-zero page
}

void write_page(std::byte* base, std::uint64_t page, std::uint64_t seed) {
    auto* w = reinterpret_cast<volatile std::uint64_t*>(base + page * kPageSize);
    for (std::uint64_t i = 0; i < kPageSize / 8; ++i) w[i] = pattern(seed, page, i);
}

// Pages whose bytes are not what `seed_of(page)` wrote (0: must read zeros).
template <class SeedOf>
std::uint64_t bad_pages(const std::byte* base, SeedOf seed_of) {
    std::uint64_t bad = 0;
    for (std::uint64_t p = 0; p < kPages; ++p) {
        auto* w = reinterpret_cast<const volatile std::uint64_t*>(base + p * kPageSize);
        const std::uint64_t seed = seed_of(p);
        for (std::uint64_t i = 0; i < kPageSize / 8; ++i) {
            if (w[i] != (seed == 0 ? 0 : pattern(seed, p, i))) {
                ++bad;
                break;
            }
        }
    }
    return bad;
}

// Every fourth page is discarded (zero) so the image has holes; the rest carry seed 7.
std::uint64_t original_seed(std::uint64_t page) { return page % 4 == 3 ? 0 : 7; }

std::uint64_t used_slots(const swap::SwapPool& pool) {
    std::uint64_t used = 0;
    for (const auto& d : pool.stats()) used += d.used_slots;
    return used;
}

class SnapshotTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (access("/proc/sys/vm/unprivileged_userfaultfd", F_OK) != 0 && access("/dev/kvm", F_OK) != 0)
            GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable";
        dir_ = fs::temp_directory_path() /
               ("swv-snap-" + std::to_string(getpid()) + "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
        snap_dir_ = dir_ / "snap";
        pool_ = std::make_unique<swap::SwapPool>();
        auto a = pool_->swapon(dir_ / "a.swap", 10, kSwapBytes);
        ASSERT_TRUE(a) << a.error().message();
    }
    void TearDown() override {
        pool_.reset();
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }
    MemoryConfig config(const std::string& name, std::uint64_t limit = 0) {
        return MemoryConfig{.name = name, .memory_bytes = kMem, .resident_limit = limit};
    }
    // A VM with original_seed's content and about half of it swapped out.
    std::unique_ptr<GuestMemory> make_half_swapped(VmId id) {
        auto vm = create_guest_memory(config("orig", kMem / 2), id, nullptr, pool_.get());
        EXPECT_TRUE(vm) << vm.error().message();
        EXPECT_TRUE((*vm)->start());
        std::byte* base = (*vm)->regions()[0].guest_view;
        for (std::uint64_t p = 0; p < kPages; ++p)
            if (original_seed(p) != 0) write_page(base, p, original_seed(p));
        for (std::uint64_t p = 3; p < kPages; p += 4) EXPECT_TRUE((*vm)->discard(GpaRange{Gpa(p * kPageSize), kPageSize}));
        for (int i = 0; i < 400 && (*vm)->stats().swapped_bytes < kMem / 4; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        EXPECT_GE((*vm)->stats().swapped_bytes, kMem / 4);
        return std::move(*vm);
    }
    // make_half_swapped's VM saved into snap_dir_, then stopped and gone (its
    // references with it: only the snapshot's remain).
    std::unique_ptr<MemorySnapshot> saved_half_swapped() {
        auto vm = make_half_swapped(1);
        auto snap = vm->save(snap_dir_);
        EXPECT_TRUE(snap) << snap.error().message();
        vm->stop();
        return snap ? std::move(*snap) : nullptr;
    }
    std::unique_ptr<GuestMemory> restore(const MemorySnapshot& snap, VmId id, RestoreOptions opts = {.fill = false, .prefetch = false}) {
        auto vm = restore_guest_memory(config("clone" + std::to_string(id)), id, nullptr, pool_.get(), snap, opts);
        EXPECT_TRUE(vm) << vm.error().message();
        if (!vm) return nullptr;
        EXPECT_TRUE((*vm)->start());
        return std::move(*vm);
    }
    fs::path dir_, snap_dir_;
    std::unique_ptr<swap::SwapPool> pool_;
};

TEST_F(SnapshotTest, PrivilegedSaveHalfSwappedDestroyRestoreReadsEveryByteAndReleaseLeavesNoSlot) {
    auto vm = make_half_swapped(1);
    auto snap = vm->save(snap_dir_);
    ASSERT_TRUE(snap) << snap.error().message();
    const SnapshotCounts c = (*snap)->counts();
    EXPECT_EQ(c.zero + c.image + c.swapped + c.lost, kPages);
    EXPECT_GE(c.zero, kPages / 4);
    EXPECT_GT(c.swapped, 0u);
    EXPECT_GT(c.image, 0u);
    EXPECT_EQ((*snap)->held_vslots(), c.swapped);
    // Sparse: only image pages are written; zero pages are holes.
    struct stat st{};
    ASSERT_EQ(::stat((snap_dir_ / kMemoryImage).c_str(), &st), 0);
    EXPECT_EQ(static_cast<std::uint64_t>(st.st_size), kMem);
    EXPECT_LE(static_cast<std::uint64_t>(st.st_blocks) * 512, (c.image + 16) * kPageSize);
    EXPECT_LT(c.bytes_written, kMem / 2);
    EXPECT_FALSE(fs::exists(snap_dir_ / ".memory.img.tmp"));

    vm->stop();
    vm.reset();  // the VM's references go; the snapshot's stay
    EXPECT_EQ(pool_->allocated_vslots(), c.swapped);

    auto restored = restore(**snap, 2);
    ASSERT_TRUE(restored);
    EXPECT_EQ(restored->stats().resident_bytes, 0u);  // starts with nothing resident
    EXPECT_EQ(restored->entry(Gpa(0)).state(), (*snap)->kind(0) == PageKind::image ? PageState::image : PageState::swapped);
    EXPECT_EQ(bad_pages(restored->regions()[0].guest_view, original_seed), 0u);
    EXPECT_EQ(restored->stats().lost_pages, 0u);

    restored->stop();
    restored.reset();
    EXPECT_EQ(pool_->allocated_vslots(), c.swapped);
    ASSERT_TRUE(delete_memory_snapshot(std::move(*snap)));
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
    EXPECT_EQ(used_slots(*pool_), 0u);
    EXPECT_EQ(pool_->shared_vslots(), 0u);
    EXPECT_FALSE(fs::exists(snap_dir_ / kMemoryManifest));
}

// A save whose image cannot be written (a full file system: ENOSPC from a writer
// thread of one of the walkers) fails with that error, leaves no snapshot and no
// temporary file, holds no slot (every walker's references are dropped), and the VM
// runs on with every byte; a save elsewhere then works.
TEST_F(SnapshotTest, PrivilegedASaveThatCannotWriteItsImageLeavesNoSnapshotAndHoldsNoSlot) {
    const fs::path small = dir_ / "small";
    fs::create_directories(small);
    // Kernel contract: mount(2) of a tmpfs sized 256 KiB; EPERM without CAP_SYS_ADMIN.
    if (::mount("swv-small", small.c_str(), "tmpfs", 0, "size=256k") != 0)
        GTEST_SKIP() << "SKIPPED LOUDLY: cannot mount a small tmpfs (" << std::strerror(errno) << ")";
    struct Unmount {
        fs::path p;
        ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
    } unmount{small};
    auto vm = make_half_swapped(1);
    const std::uint64_t allocated = pool_->allocated_vslots();
    auto snap = vm->save(small / "snap");
    ASSERT_FALSE(snap) << "a save into 256 KiB succeeded";
    EXPECT_TRUE(snap.error().is(std::errc::no_space_on_device)) << snap.error().message();
    EXPECT_FALSE(fs::exists(small / "snap" / kMemoryManifest));
    EXPECT_FALSE(fs::exists(small / "snap" / ".memory.img.tmp"));
    EXPECT_FALSE(fs::exists(small / "snap" / kMemoryImage));
    EXPECT_EQ(pool_->shared_vslots(), 0u) << "a failed save still holds slots";
    EXPECT_EQ(pool_->allocated_vslots(), allocated);
    EXPECT_EQ(bad_pages(vm->regions()[0].guest_view, original_seed), 0u);
    auto ok = vm->save(snap_dir_);
    ASSERT_TRUE(ok) << ok.error().message();
    EXPECT_EQ((*ok)->held_vslots(), (*ok)->counts().swapped);
    vm->stop();
    vm.reset();
    ASSERT_TRUE(delete_memory_snapshot(std::move(*ok)));
    EXPECT_EQ(used_slots(*pool_), 0u);
}

TEST_F(SnapshotTest, PrivilegedTwoClonesDivergeAndTheRunningVmsWritesNeverReachTheSnapshot) {
    auto vm = make_half_swapped(1);
    auto snap = vm->save(snap_dir_);
    ASSERT_TRUE(snap) << snap.error().message();
    // The original VM goes on and writes every page, held ones included: it drops its
    // own references, the snapshot keeps the slots.
    for (std::uint64_t p = 0; p < kPages; ++p) write_page(vm->regions()[0].guest_view, p, 99);
    EXPECT_EQ(bad_pages(vm->regions()[0].guest_view, [](std::uint64_t) { return 99; }), 0u);

    auto a = restore(**snap, 2);
    auto b = restore(**snap, 3);
    ASSERT_TRUE(a && b);
    std::byte* ga = a->regions()[0].guest_view;
    std::byte* gb = b->regions()[0].guest_view;
    for (std::uint64_t p = 0; p < kPages; p += 2) write_page(ga, p, 11);
    for (std::uint64_t p = 1; p < kPages; p += 2) write_page(gb, p, 22);
    EXPECT_EQ(bad_pages(ga, [](std::uint64_t p) { return p % 2 == 0 ? 11 : original_seed(p); }), 0u);
    EXPECT_EQ(bad_pages(gb, [](std::uint64_t p) { return p % 2 == 1 ? 22 : original_seed(p); }), 0u);
    // Host memory grows with what each touched, not with clones x memory: each is
    // resident only in what it touched (here: everything, since verify reads all).
    EXPECT_LE(a->stats().resident_bytes, kMem);

    a->stop();
    b->stop();
    vm->stop();
    a.reset();
    b.reset();
    vm.reset();
    EXPECT_EQ(pool_->allocated_vslots(), (*snap)->held_vslots());
    (*snap)->release();
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
    EXPECT_EQ(used_slots(*pool_), 0u);
}

// Issue #21 item 3: two clones of one snapshot write different data — one through
// its guest view (faults), the other through GuestMemory::write (the VMM path) —
// while their fillers prefetch and their reclaimers push pages (their own writes
// included) out to new slots and back. Each must read its own bytes where it wrote
// and the snapshot's bytes everywhere else, before and after the evictions; a
// later restore must still see only the snapshot's bytes; and at rest the slots
// are the snapshot's again.
TEST_F(SnapshotTest, PrivilegedClonesDivergeUnderEvictionEachReadsItsOwnBytesAndTheSnapshotStaysUntouched) {
    std::unique_ptr<MemorySnapshot> snap = saved_half_swapped();
    ASSERT_TRUE(snap);
    const std::uint64_t held = snap->held_vslots();
    ASSERT_GT(held, 0u);

    // Fillers on, limited to a quarter: the clones keep evicting while they run.
    auto restore_limited = [&](VmId id) {
        auto m = restore_guest_memory(config("div" + std::to_string(id), kMem / 4), id, nullptr, pool_.get(), *snap,
                                      RestoreOptions{.fill = true, .prefetch = true});
        EXPECT_TRUE(m) << m.error().message();
        if (m) {
            EXPECT_TRUE((*m)->start());
        }
        return m ? std::move(*m) : nullptr;
    };
    auto a = restore_limited(2);
    auto b = restore_limited(3);
    ASSERT_TRUE(a && b);
    const auto seed_a = [](std::uint64_t p) { return p % 3 == 0 ? 11 : original_seed(p); };
    const auto seed_b = [](std::uint64_t p) { return p % 3 == 1 ? 22 : original_seed(p); };
    // A writes its pages as a guest would; B through the VMM path, interleaved in time.
    std::thread guest_a([&] {
        for (std::uint64_t p = 0; p < kPages; p += 3) write_page(a->regions()[0].guest_view, p, 11);
    });
    alignas(4096) static std::byte page[kPageSize];
    for (std::uint64_t p = 1; p < kPages; p += 3) {
        auto* w = reinterpret_cast<std::uint64_t*>(page);
        for (std::uint64_t i = 0; i < kPageSize / 8; ++i) w[i] = pattern(22, p, i);
        ASSERT_TRUE(b->write(Gpa(p * kPageSize), std::span<const std::byte>(page, kPageSize)));
    }
    guest_a.join();
    // Verify A through its guest view and B through GuestMemory::read (both paths).
    auto bad_via_read = [&](GuestMemory& m, auto seed_of) {
        std::uint64_t bad = 0;
        for (std::uint64_t p = 0; p < kPages; ++p) {
            EXPECT_TRUE(m.read(Gpa(p * kPageSize), std::span<std::byte>(page, kPageSize)));
            const auto* w = reinterpret_cast<const std::uint64_t*>(page);
            const std::uint64_t seed = seed_of(p);
            for (std::uint64_t i = 0; i < kPageSize / 8; ++i)
                if (w[i] != (seed == 0 ? 0 : pattern(seed, p, i))) {
                    ++bad;
                    break;
                }
        }
        return bad;
    };
    EXPECT_EQ(bad_pages(a->regions()[0].guest_view, seed_a), 0u);
    EXPECT_EQ(bad_via_read(*b, seed_b), 0u);
    // Both went over their limit: each clone's own writes are swapped out by now or soon.
    for (int i = 0; i < 400 && (a->stats().swapped_bytes == 0 || b->stats().swapped_bytes == 0); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_GT(a->stats().swap_out_pages, 0u);
    EXPECT_GT(b->stats().swap_out_pages, 0u);
    // Again, crosswise: A through read, B through its guest view.
    EXPECT_EQ(bad_via_read(*a, seed_a), 0u);
    EXPECT_EQ(bad_pages(b->regions()[0].guest_view, seed_b), 0u);
    EXPECT_EQ(a->stats().lost_pages + b->stats().lost_pages, 0u);

    // The snapshot saw none of it: a third VM restored now reads the original bytes.
    auto c = restore(*snap, 4);
    ASSERT_TRUE(c);
    EXPECT_EQ(bad_pages(c->regions()[0].guest_view, original_seed), 0u);
    for (auto* m : {a.get(), b.get(), c.get()}) m->stop();
    a.reset();
    b.reset();
    c.reset();
    EXPECT_EQ(pool_->allocated_vslots(), held);  // only the snapshot's slots are left
    ASSERT_TRUE(delete_memory_snapshot(std::move(snap)));
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
    EXPECT_EQ(used_slots(*pool_), 0u);
}

TEST_F(SnapshotTest, PrivilegedDeleteWhileACloneStillReferencesKeepsTheClonesPages) {
    auto vm = make_half_swapped(1);
    auto snap = vm->save(snap_dir_);
    ASSERT_TRUE(snap);
    vm->stop();
    vm.reset();
    auto clone = restore(**snap, 2);
    ASSERT_TRUE(clone);
    const std::uint64_t held = (*snap)->held_vslots();
    ASSERT_GT(held, 0u);
    ASSERT_TRUE(delete_memory_snapshot(std::move(*snap)));
    // Its swapped pages borrow the snapshot's references, which the clone keeps alive
    // past the delete (README#borrowed); its image pages: the image file was unlinked
    // but the clone holds it open.
    EXPECT_EQ(pool_->allocated_vslots(), held);
    EXPECT_EQ(bad_pages(clone->regions()[0].guest_view, original_seed), 0u);
    clone->stop();
    clone.reset();
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
    EXPECT_EQ(used_slots(*pool_), 0u);
}

TEST_F(SnapshotTest, PrivilegedSwapoffBetweenSaveAndRestoreMovesHeldSlotsAndARestartAdoptsThem) {
    ASSERT_TRUE(pool_->swapon(dir_ / "b.swap", 5, kSwapBytes));
    auto vm = make_half_swapped(1);
    auto snap = vm->save(snap_dir_);
    ASSERT_TRUE(snap) << snap.error().message();
    vm->stop();
    vm.reset();
    MemorySnapshot* s = snap->get();
    std::uint64_t moved = 0;
    pool_->set_held_slot_observer([&](std::span<const swap::HeldSlotMove> moves) {
        moved += moves.size();
        auto r = s->apply_moves(moves);
        EXPECT_TRUE(r && *r);
    });
    auto ring = io::Ring::create(32);
    ASSERT_TRUE(ring);
    auto off = pool_->swapoff(dir_ / "a.swap", *ring);
    ASSERT_TRUE(off) << off.error().message();
    EXPECT_EQ(moved, s->held_vslots());
    pool_->set_held_slot_observer({});
    {
        auto restored = restore(*s, 2);
        ASSERT_TRUE(restored);
        EXPECT_EQ(bad_pages(restored->regions()[0].guest_view, original_seed), 0u);
        restored->stop();
    }
    // A restart: the process ends (its pool with it); the files stay.
    const std::uint64_t held = s->held_vslots();
    snap->reset();
    pool_ = std::make_unique<swap::SwapPool>();
    // Before swapon: a snapshot naming a device that is not attached is refused, naming it.
    ASSERT_TRUE(expect_snapshot_slots(snap_dir_, *pool_));
    auto early = MemorySnapshot::open(snap_dir_, pool_.get());
    ASSERT_FALSE(early);
    EXPECT_NE(early.error().message().find("not attached"), std::string::npos) << early.error().message();
    ASSERT_TRUE(pool_->swapon(dir_ / "b.swap", 5, 0));
    EXPECT_EQ(pool_->allocated_vslots(), held);
    auto reopened = MemorySnapshot::open(snap_dir_, pool_.get());
    ASSERT_TRUE(reopened) << reopened.error().message();
    auto restored = restore(**reopened, 3);
    ASSERT_TRUE(restored);
    EXPECT_EQ(bad_pages(restored->regions()[0].guest_view, original_seed), 0u);
    restored->stop();
    restored.reset();
    ASSERT_TRUE(delete_memory_snapshot(std::move(*reopened)));
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
    EXPECT_EQ(used_slots(*pool_), 0u);
}

// Issue #21 item 4, on the real stack: a live swapoff of the device that holds the
// snapshot's slots while a clone faults exactly those pages in. The guest starts its
// pass; swapoff starts once it is under way and, after its first batch of moves,
// holds (a thread-state handshake through its progress callback, no sleep) until the
// guest has faulted more pages, so faults meet slots both before and after their
// move. Every byte the clone reads is the snapshot's, nothing is lost, the swapoff
// moves every held slot (none is brought into the clone), the persisted references
// are rewritten once, and a clone restored afterwards reads from the new device.
TEST_F(SnapshotTest, PrivilegedSwapoffOfTheDeviceHoldingSnapshotSlotsWhileACloneFaultsThemIn) {
    ASSERT_TRUE(pool_->swapon(dir_ / "b.swap", 5, kSwapBytes));
    auto vm = make_half_swapped(1);
    auto snap = vm->save(snap_dir_);
    ASSERT_TRUE(snap) << snap.error().message();
    vm->stop();
    vm.reset();
    MemorySnapshot* s = snap->get();
    const std::uint64_t held = s->held_vslots();
    ASSERT_GT(held, 256u);  // several swapoff batches
    for (const auto& d : pool_->stats()) {
        if (d.path.find("b.swap") != std::string::npos) {
            ASSERT_EQ(d.used_slots, 0u);  // all on a.swap
        }
    }
    std::uint64_t moved = 0, observer_calls = 0;
    pool_->set_held_slot_observer([&](std::span<const swap::HeldSlotMove> moves) {
        moved += moves.size();
        observer_calls++;
        auto r = s->apply_moves(moves);
        EXPECT_TRUE(r && *r);
    });

    auto clone = restore(*s, 2);
    ASSERT_TRUE(clone);
    std::byte* base = clone->regions()[0].guest_view;
    // The guest: every page, ascending; pages swapped in the snapshot fault on their held slots.
    std::atomic<std::uint64_t> touched{0}, bad{0};
    std::thread guest([&] {
        for (std::uint64_t p = 0; p < kPages; ++p) {
            auto* w = reinterpret_cast<const volatile std::uint64_t*>(base + p * kPageSize);
            const std::uint64_t seed = original_seed(p);
            for (std::uint64_t i = 0; i < kPageSize / 8; i += 64)
                if (w[i] != (seed == 0 ? 0 : pattern(seed, p, i))) {
                    bad++;
                    break;
                }
            touched.store(p + 1);
        }
    });
    // Start once the guest is under way (it has faulted a sixteenth of its pages).
    while (touched.load() < kPages / 16) std::this_thread::yield();
    std::uint64_t at_first_batch = 0, after_wait = 0;
    bool first = true;
    auto ring = io::Ring::create(32);
    ASSERT_TRUE(ring);
    auto off = pool_->swapoff(dir_ / "a.swap", *ring, [&](swap::SwapoffProgress) {
        if (!first) return;
        first = false;
        at_first_batch = touched.load();
        // Hold the swapoff mid-way until the guest has faulted 64 more pages (or is done).
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while (touched.load() < std::min(at_first_batch + 64, kPages) && std::chrono::steady_clock::now() < until)
            std::this_thread::yield();
        after_wait = touched.load();
    });
    guest.join();
    ASSERT_TRUE(off) << off.error().message();
    EXPECT_GT(after_wait, at_first_batch) << "the guest faulted nothing while the swapoff was mid-way";
    EXPECT_EQ(bad.load(), 0u);
    EXPECT_EQ(clone->stats().lost_pages, 0u);
    EXPECT_EQ(off->pages_brought_back, 0u);  // held slots move, they never come into a VM
    EXPECT_EQ(moved, held);
    EXPECT_EQ(observer_calls, 1u);
    EXPECT_EQ(bad_pages(base, original_seed), 0u);  // every byte, once more
    pool_->set_held_slot_observer({});
    clone->stop();
    clone.reset();
    EXPECT_EQ(pool_->allocated_vslots(), held);
    auto after = restore(*s, 3);
    ASSERT_TRUE(after);
    EXPECT_EQ(bad_pages(after->regions()[0].guest_view, original_seed), 0u);
    after->stop();
    after.reset();
    ASSERT_TRUE(delete_memory_snapshot(std::move(*snap)));
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
    EXPECT_EQ(used_slots(*pool_), 0u);
}

TEST_F(SnapshotTest, PrivilegedTheFillerAndRecordedOrderPrefetchBringPagesInBeforeTheGuestTouchesThem) {
    auto vm = make_half_swapped(1);
    auto snap = vm->save(snap_dir_);
    ASSERT_TRUE(snap);
    vm->stop();
    vm.reset();
    // First restore: no prefetch (no working set yet), records the first faults.
    std::vector<std::uint64_t> ws;
    std::mt19937_64 rng(5);
    for (std::uint64_t p = 0; p < kPages; ++p)
        if (original_seed(p) != 0 && rng() % 4 == 0) ws.push_back(p);
    std::shuffle(ws.begin(), ws.end(), rng);
    {
        auto first = restore(**snap, 2);
        ASSERT_TRUE(first);
        for (std::uint64_t p : ws) {
            auto* w = reinterpret_cast<const volatile std::uint64_t*>(first->regions()[0].guest_view + p * kPageSize);
            ASSERT_EQ(w[5], pattern(7, p, 5));
        }
        ASSERT_TRUE(first->save_working_set());
        first->stop();
    }
    ASSERT_TRUE(fs::exists(snap_dir_ / kMemoryWorkingSet));
    // Second restore: the working set comes in before the guest asks for it.
    auto second = restore(**snap, 3, RestoreOptions{.fill = false, .prefetch = true});
    ASSERT_TRUE(second);
    auto in_memory = [&](std::uint64_t p) {
        const PageState s = second->entry(Gpa(p * kPageSize)).state();
        return s == PageState::resident || s == PageState::inactive;
    };
    for (int i = 0; i < 500 && !std::all_of(ws.begin(), ws.end(), in_memory); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_TRUE(std::all_of(ws.begin(), ws.end(), in_memory));
    const std::uint64_t majors = second->stats().major_faults;
    for (std::uint64_t p : ws) {
        auto* w = reinterpret_cast<const volatile std::uint64_t*>(second->regions()[0].guest_view + p * kPageSize);
        ASSERT_EQ(w[5], pattern(7, p, 5));
    }
    EXPECT_EQ(second->stats().major_faults, majors) << "a prefetched page took a major fault";
    // Not in the working set, no filler: still in the image or in swap.
    std::uint64_t untouched = 0;
    for (std::uint64_t p = 0; p < kPages; ++p)
        if (original_seed(p) != 0 && !in_memory(p)) ++untouched;
    EXPECT_GT(untouched, 0u);
    second->stop();
    second.reset();
    // The filler: every image page mapped without a fault.
    auto filled = restore(**snap, 4, RestoreOptions{.fill = true, .prefetch = false});
    ASSERT_TRUE(filled);
    auto image_left = [&] {
        std::uint64_t n = 0;
        for (std::uint64_t p = 0; p < kPages; ++p) n += filled->entry(Gpa(p * kPageSize)).state() == PageState::image;
        return n;
    };
    for (int i = 0; i < 500 && image_left() != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(image_left(), 0u);
    EXPECT_EQ(bad_pages(filled->regions()[0].guest_view, original_seed), 0u);
    filled->stop();
}

namespace {
template <class T>
T le(const std::vector<std::uint8_t>& b, std::size_t at) {
    T v;
    std::memcpy(&v, b.data() + at, sizeof v);
    return v;
}
template <class T>
void put_le(std::vector<std::uint8_t>& b, T v) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof v);
}
std::vector<std::uint8_t> read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}
void write_bytes(const fs::path& p, std::vector<std::uint8_t> b, bool checksum) {
    if (checksum) {
        b.resize(b.size() - 8);
        put_le<std::uint64_t>(b, XXH3_64bits(b.data(), b.size()));
    }
    std::ofstream(p, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(b.data()),
                                                               static_cast<std::streamsize>(b.size()));
}
void set_manifest_version(const fs::path& manifest, int from, int to) {
    std::ifstream in(manifest);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    const std::string was = "\"version\": " + std::to_string(from);
    const auto at = text.find(was);
    ASSERT_NE(at, std::string::npos) << text;
    text.replace(at, was.size(), "\"version\": " + std::to_string(to));
    std::ofstream(manifest, std::ios::trunc) << text;
}
// docs/SNAPSHOT.md#format: a version 2 page table (devices once, runs, 8-byte
// references) as version 1 wrote it (a 16-byte device uuid in every reference).
std::vector<std::uint8_t> page_table_v2_to_v1(const std::vector<std::uint8_t>& b) {
    const auto devices = le<std::uint32_t>(b, 12);
    const auto pages = le<std::uint64_t>(b, 16), refs = le<std::uint64_t>(b, 24), runs = le<std::uint64_t>(b, 32);
    const std::size_t uuids = 40, kinds = uuids + devices * 16, run_at = kinds + pages, ref_at = run_at + runs * 8;
    std::vector<std::uint8_t> out(b.begin(), b.begin() + 8);
    put_le<std::uint32_t>(out, 1);
    put_le<std::uint32_t>(out, 0);
    put_le<std::uint64_t>(out, pages);
    put_le<std::uint64_t>(out, refs);
    out.insert(out.end(), b.begin() + static_cast<std::ptrdiff_t>(kinds), b.begin() + static_cast<std::ptrdiff_t>(run_at));
    std::uint64_t k = 0;
    for (std::uint64_t r = 0; r < runs; ++r) {
        const auto count = le<std::uint32_t>(b, run_at + r * 8), device = le<std::uint32_t>(b, run_at + r * 8 + 4);
        for (std::uint32_t i = 0; i < count; ++i, ++k) {
            out.insert(out.end(), b.begin() + static_cast<std::ptrdiff_t>(uuids + device * 16),
                       b.begin() + static_cast<std::ptrdiff_t>(uuids + device * 16 + 16));
            put_le<std::uint32_t>(out, le<std::uint32_t>(b, ref_at + k * 8));
            put_le<std::uint32_t>(out, le<std::uint32_t>(b, ref_at + k * 8 + 4));
        }
    }
    put_le<std::uint64_t>(out, 0);  // the checksum, written by write_bytes
    return out;
}
}  // namespace

// The page table went from version 1 (a device uuid in each of its 24-byte
// references) to version 2 (devices once, 8-byte references: a 1 GiB VM's table
// 4.8 -> 1.6 MB, docs/SNAPSHOT.md#format). A version 1 snapshot on disk is still
// restored, byte for byte, after a restart; a version 2 table whose device runs do
// not fit (a checksum that matches, so the run check is what refuses it) is a clear
// error; a version this swapvisor does not know is named.
TEST_F(SnapshotTest, PrivilegedAVersion1SnapshotIsStillReadAndABadDeviceRunIsNamed) {
    ASSERT_TRUE(pool_->swapon(dir_ / "b.swap", 10, kSwapBytes));  // two devices of one priority: refs on both
    std::unique_ptr<MemorySnapshot> snap = saved_half_swapped();
    ASSERT_TRUE(snap);
    const std::uint64_t held = snap->held_vslots();
    snap.reset();
    const fs::path table = snap_dir_ / kMemoryPageTable, manifest = snap_dir_ / kMemoryManifest;
    const auto v2 = read_bytes(table);
    ASSERT_GE(v2.size(), 48u);
    ASSERT_EQ(le<std::uint32_t>(v2, 8), 2u) << "save writes version 2";
    ASSERT_GE(le<std::uint64_t>(v2, 32), 1u) << "at least one device run";
    EXPECT_EQ(le<std::uint32_t>(v2, 12), 2u) << "references on both devices";
    EXPECT_EQ(v2.size(), 40 + le<std::uint32_t>(v2, 12) * 16 + kPages + le<std::uint64_t>(v2, 32) * 8 +
                             le<std::uint64_t>(v2, 24) * 8 + 8);
    // A restart: a new pool reserves the snapshot's slots (reading its table), attaches
    // the devices and opens it.
    auto reopen = [&]() -> Result<std::unique_ptr<MemorySnapshot>> {
        pool_ = std::make_unique<swap::SwapPool>();
        if (auto e = expect_snapshot_slots(snap_dir_, *pool_); !e) return std::unexpected(e.error());
        EXPECT_TRUE(pool_->swapon(dir_ / "a.swap", 10, 0));
        EXPECT_TRUE(pool_->swapon(dir_ / "b.swap", 10, 0));
        return MemorySnapshot::open(snap_dir_, pool_.get());
    };
    // A device run past the device table, checksum recomputed.
    {
        auto bad = v2;
        const std::size_t run0 = 40 + le<std::uint32_t>(v2, 12) * 16 + kPages;
        const std::uint32_t device = 7;
        std::memcpy(bad.data() + run0 + 4, &device, 4);
        write_bytes(table, bad, true);
        auto r = reopen();
        ASSERT_FALSE(r);
        EXPECT_NE(r.error().message().find("device run 0"), std::string::npos) << r.error().message();
    }
    // Version 1, as an earlier swapvisor wrote it.
    write_bytes(table, page_table_v2_to_v1(v2), true);
    set_manifest_version(manifest, 2, 1);
    auto v1 = reopen();
    ASSERT_TRUE(v1) << v1.error().message();
    EXPECT_EQ(pool_->allocated_vslots(), held);
    EXPECT_EQ((*v1)->held_vslots(), held);
    {
        auto restored = restore(**v1, 2);
        ASSERT_TRUE(restored);
        EXPECT_EQ(bad_pages(restored->regions()[0].guest_view, original_seed), 0u);
        restored->stop();
    }
    v1->reset();
    // A version from the future.
    set_manifest_version(manifest, 1, 3);
    pool_.reset();  // the reservation's pool, before the files are read anew
    auto v3 = reopen();
    ASSERT_FALSE(v3);
    EXPECT_NE(v3.error().message().find("version 3"), std::string::npos) << v3.error().message();
    set_manifest_version(manifest, 3, 1);
    auto last = reopen();
    ASSERT_TRUE(last) << last.error().message();
    ASSERT_TRUE(delete_memory_snapshot(std::move(*last)));
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
    EXPECT_EQ(used_slots(*pool_), 0u);
}

TEST_F(SnapshotTest, PrivilegedBadInputIsAClearErrorAndNoVmIsHalfCreated) {
    auto vm = make_half_swapped(1);
    auto snap = vm->save(snap_dir_);
    ASSERT_TRUE(snap);
    vm->stop();
    vm.reset();
    const std::uint64_t at_rest = pool_->allocated_vslots();
    auto expect_error = [&](Result<std::unique_ptr<GuestMemory>> r, const std::string& says) {
        ASSERT_FALSE(r) << "restored despite: " << says;
        EXPECT_NE(r.error().message().find(says), std::string::npos) << r.error().message();
        EXPECT_EQ(pool_->allocated_vslots(), at_rest);
    };
    // Another memory size.
    MemoryConfig wrong = config("wrong");
    wrong.memory_bytes = kMem * 2;
    expect_error(restore_guest_memory(wrong, 9, nullptr, pool_.get(), **snap), "page table is for");
    // A truncated image.
    fs::copy_file(snap_dir_ / kMemoryImage, dir_ / "img.bak");
    fs::resize_file(snap_dir_ / kMemoryImage, kPageSize);
    expect_error(restore_guest_memory(config("t"), 9, nullptr, pool_.get(), **snap), "truncated");
    // A missing image.
    fs::remove(snap_dir_ / kMemoryImage);
    expect_error(restore_guest_memory(config("t"), 9, nullptr, pool_.get(), **snap), "memory.img");
    fs::copy_file(dir_ / "img.bak", snap_dir_ / kMemoryImage);
    // Files read by open(): a truncated page table, another version.
    fs::copy_file(snap_dir_ / kMemoryPageTable, dir_ / "pages.bak");
    fs::resize_file(snap_dir_ / kMemoryPageTable, fs::file_size(snap_dir_ / kMemoryPageTable) - 10);
    auto t = MemorySnapshot::open(snap_dir_, pool_.get());
    ASSERT_FALSE(t);
    EXPECT_NE(t.error().message().find("memory.pages"), std::string::npos) << t.error().message();
    fs::remove(snap_dir_ / kMemoryPageTable);
    fs::copy_file(dir_ / "pages.bak", snap_dir_ / kMemoryPageTable);
    {
        std::ifstream in(snap_dir_ / kMemoryManifest);
        std::string text((std::istreambuf_iterator<char>(in)), {});
        const auto at = text.find("\"version\": 2");
        ASSERT_NE(at, std::string::npos) << text;
        text.replace(at, 12, "\"version\": 3");
        std::ofstream(snap_dir_ / kMemoryManifest) << text;
    }
    auto v = MemorySnapshot::open(snap_dir_, pool_.get());
    ASSERT_FALSE(v);
    EXPECT_NE(v.error().message().find("version 3"), std::string::npos) << v.error().message();
    // A page table that names slots nobody reserved (this pool did not adopt them).
    {
        std::ifstream in(snap_dir_ / kMemoryManifest);
        std::string text((std::istreambuf_iterator<char>(in)), {});
        text.replace(text.find("\"version\": 3"), 12, "\"version\": 2");
        std::ofstream(snap_dir_ / kMemoryManifest) << text;
    }
    auto unreserved = MemorySnapshot::open(snap_dir_, pool_.get());
    ASSERT_FALSE(unreserved);
    EXPECT_NE(unreserved.error().message().find("not reserved"), std::string::npos) << unreserved.error().message();
    // A snapshot that exists is never overwritten.
    auto again = create_guest_memory(config("again"), 8, nullptr, pool_.get());
    ASSERT_TRUE(again);
    auto over = (*again)->save(snap_dir_);
    ASSERT_FALSE(over);
    EXPECT_EQ(pool_->allocated_vslots(), at_rest);
}

}  // namespace
