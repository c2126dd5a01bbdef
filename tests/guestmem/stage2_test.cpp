// Stage2 and PageEntry: the bit layout of a stage-2 entry, and the per-entry lock bit
// that makes one thread at a time the owner of a page (guestmem/README.md#lock-bit).
// The lock tests use real threads: a waiter must really sleep until the owner
// publishes, every waiter must be woken, and a value published under the lock must
// never be lost when many threads update the same entry.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include <atomic>
#include <future>
#include <thread>
#include <vector>

#include "guestmem/stage2.hpp"
#include "tests/guestmem/thread_probe.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
using swapvisor::testing::current_tid;
using swapvisor::testing::wait_until_blocked;

namespace {

constexpr PageState kAllStates[] = {PageState::zero,    PageState::resident, PageState::inactive, PageState::writeback,
                                    PageState::swapped, PageState::reading,  PageState::lost};

}  // namespace

TEST(PageEntryTest, DefaultIsUnlockedZeroWithoutSlot) {
    PageEntry e;
    EXPECT_EQ(e.raw(), 0u);
    EXPECT_EQ(e.state(), PageState::zero);
    EXPECT_EQ(e.vslot(), swap::kNoVSlot);
    EXPECT_FALSE(e.locked());
    EXPECT_FALSE(e.clean());
    EXPECT_FALSE(e.present());
}

TEST(PageEntryTest, EveryStateRoundTripsWithSlotAndCleanBit) {
    for (PageState s : kAllStates) {
        for (std::uint32_t v : {0u, 1u, 0x1234'5678u, 0xFFFF'FFFFu}) {
            for (bool clean : {false, true}) {
                PageEntry e = PageEntry::make(s, swap::VSlot(v), clean ? Clean::yes : Clean::no);
                EXPECT_EQ(e.state(), s) << to_string(s);
                // In writeback the upper bits are the writeback's epoch, not a slot.
                EXPECT_EQ(e.vslot().value(), s == PageState::writeback ? 0u : v);
                EXPECT_EQ(e.writeback_epoch().value(), s == PageState::writeback ? v : 0u);
                EXPECT_EQ(e.clean(), clean);
                EXPECT_FALSE(e.locked()) << "make() must never produce a locked value";
                // The documented layout: state in bits 0-2, LCK 3, CLN 4, VSlot 32-63.
                EXPECT_EQ(e.raw() & PageEntry::kStateMask, static_cast<std::uint64_t>(s));
                EXPECT_EQ(e.raw() >> 32, v);
                EXPECT_EQ((e.raw() & PageEntry::kClean) != 0, clean);
                EXPECT_EQ(e.raw() & 0xFFFF'FFE0u, 0u) << "reserved bits 5-31 must stay clear";
            }
        }
    }
}

TEST(PageEntryTest, AWritebackCarriesItsEpochAndNoSlot) {
    const PageEntry e = PageEntry::make_writeback(WritebackEpoch(0xABCD'0123u));
    EXPECT_EQ(e.state(), PageState::writeback);
    EXPECT_EQ(e.writeback_epoch(), WritebackEpoch(0xABCD'0123u));
    EXPECT_EQ(e.vslot(), swap::kNoVSlot);
    EXPECT_FALSE(e.holds_vslot()) << "an epoch must never be freed as a slot";
    EXPECT_FALSE(e.clean());
}

TEST(PageEntryTest, ABorrowedSlotIsSwappedKeepsBorIntoReadingAndIsNotTheVmsToFree) {
    const PageEntry e = PageEntry::make_borrowed(swap::VSlot(0x1234));
    EXPECT_EQ(e.state(), PageState::swapped);
    EXPECT_EQ(e.vslot(), swap::VSlot(0x1234));
    EXPECT_TRUE(e.borrowed());
    EXPECT_FALSE(e.holds_vslot()) << "the snapshot's reference, not the VM's";
    const PageEntry r = e.as_reading();
    EXPECT_EQ(r.state(), PageState::reading);
    EXPECT_EQ(r.vslot(), swap::VSlot(0x1234));
    EXPECT_TRUE(r.borrowed());
    EXPECT_FALSE(PageEntry::make(PageState::swapped, swap::VSlot(0x1234)).as_reading().borrowed());
    EXPECT_TRUE(PageEntry::make(PageState::swapped, swap::VSlot(0x1234)).holds_vslot());
}

TEST(PageEntryTest, PresentIsExactlyTheStatesHoldingMemory) {
    EXPECT_FALSE(PageEntry::make(PageState::zero).present());
    EXPECT_TRUE(PageEntry::make(PageState::resident).present());
    EXPECT_TRUE(PageEntry::make(PageState::inactive).present());
    EXPECT_TRUE(PageEntry::make(PageState::writeback).present());
    EXPECT_FALSE(PageEntry::make(PageState::swapped, swap::VSlot(7)).present());
    EXPECT_TRUE(PageEntry::make(PageState::reading).present());
    EXPECT_FALSE(PageEntry::make(PageState::lost).present());
}

TEST(PageEntryTest, StatesHaveDistinctNames) {
    std::vector<std::string> names;
    for (PageState s : kAllStates) names.emplace_back(to_string(s));
    for (std::size_t i = 0; i < names.size(); ++i)
        for (std::size_t j = i + 1; j < names.size(); ++j) EXPECT_NE(names[i], names[j]);
    EXPECT_STREQ(to_string(PageState::writeback), "writeback");
}

TEST(Stage2Test, TableStartsZeroAndSizedToPages) {
    Stage2 t = Stage2::create(1000).value();
    EXPECT_EQ(t.pages(), 1000u);
    EXPECT_EQ(Stage2::bytes_per_page(), 8u);
    for (std::uint64_t i = 0; i < t.pages(); ++i) ASSERT_EQ(t.peek(PageIdx(i)).raw(), 0u);
}

TEST(Stage2Test, LockReturnsOldValueAndUnlockPublishesNew) {
    Stage2 t = Stage2::create(4).value();
    PageEntry old = t.lock(PageIdx(2));
    EXPECT_EQ(old.state(), PageState::zero);
    EXPECT_FALSE(old.locked()) << "lock() returns the value without the lock bit";
    EXPECT_TRUE(t.peek(PageIdx(2)).locked());
    EXPECT_FALSE(t.peek(PageIdx(1)).locked()) << "locks are per entry";
    t.unlock(PageIdx(2), PageEntry::make(PageState::swapped, swap::VSlot(42)));
    PageEntry now = t.peek(PageIdx(2));
    EXPECT_FALSE(now.locked());
    EXPECT_EQ(now.state(), PageState::swapped);
    EXPECT_EQ(now.vslot().value(), 42u);
}

TEST(Stage2Test, UnlockClearsALockBitPassedByMistake) {
    Stage2 t = Stage2::create(1).value();
    PageEntry held = t.lock(PageIdx(0));
    t.unlock(PageIdx(0), PageEntry(held.raw() | PageEntry::kLock));
    EXPECT_FALSE(t.peek(PageIdx(0)).locked());
    EXPECT_TRUE(t.try_lock(PageIdx(0)).has_value());
}

TEST(Stage2Test, TryLockFailsWhileHeldAndSucceedsAfter) {
    Stage2 t = Stage2::create(2).value();
    ASSERT_TRUE(t.try_lock(PageIdx(0)).has_value());
    EXPECT_FALSE(t.try_lock(PageIdx(0)).has_value());
    EXPECT_TRUE(t.try_lock(PageIdx(1)).has_value());
    // From another thread too: the bit is the owner, not the thread.
    std::thread([&] { EXPECT_FALSE(t.try_lock(PageIdx(0)).has_value()); }).join();
    t.unlock(PageIdx(0), PageEntry::make(PageState::inactive));
    auto v = t.try_lock(PageIdx(0));
    ASSERT_TRUE(v.has_value());
    EXPECT_EQ(v->state(), PageState::inactive);
    t.unlock(PageIdx(0), *v);
    t.unlock(PageIdx(1), PageEntry());
}

TEST(Stage2Test, WaiterSleepsUntilOwnerPublishesAndSeesTheNewValue) {
    Stage2 t = Stage2::create(1).value();
    t.lock(PageIdx(0));
    std::atomic<pid_t> tid{0};
    std::atomic<bool> published{false};
    auto waiter = std::async(std::launch::async, [&] {
        tid = current_tid();
        PageEntry got = t.lock(PageIdx(0));
        bool after = published.load();
        t.unlock(PageIdx(0), got);
        return std::pair(got, after);
    });
    ASSERT_TRUE(swapvisor::testing::wait_until([&] { return tid.load() != 0; }));
    ASSERT_TRUE(wait_until_blocked(tid)) << "the waiter never went to sleep on the held entry";
    EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout)
        << "lock() returned while another owner held the entry";
    published = true;
    t.unlock(PageIdx(0), PageEntry::make(PageState::swapped, swap::VSlot(77)));
    ASSERT_EQ(waiter.wait_for(std::chrono::seconds(5)), std::future_status::ready) << "waiter never woken";
    auto [got, after] = waiter.get();
    EXPECT_TRUE(after);
    EXPECT_EQ(got.state(), PageState::swapped);
    EXPECT_EQ(got.vslot().value(), 77u);
}

TEST(Stage2Test, EveryWaiterIsWokenAndEachGetsItsTurn) {
    constexpr int kWaiters = 4;
    Stage2 t = Stage2::create(1).value();
    t.lock(PageIdx(0));
    std::vector<std::atomic<pid_t>> tids(kWaiters);
    std::vector<std::future<void>> done;
    for (int i = 0; i < kWaiters; ++i) {
        done.push_back(std::async(std::launch::async, [&, i] {
            tids[i] = current_tid();
            PageEntry e = t.lock(PageIdx(0));
            t.unlock(PageIdx(0), PageEntry::make(PageState::resident, swap::VSlot(e.vslot().value() + 1)));
        }));
    }
    for (int i = 0; i < kWaiters; ++i) {
        ASSERT_TRUE(swapvisor::testing::wait_until([&] { return tids[i].load() != 0; }));
        ASSERT_TRUE(wait_until_blocked(tids[i])) << "waiter " << i << " never slept";
    }
    t.unlock(PageIdx(0), PageEntry::make(PageState::inactive, swap::VSlot(100)));
    for (auto& f : done) ASSERT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready) << "lost wake-up";
    EXPECT_EQ(t.peek(PageIdx(0)).vslot().value(), 100u + kWaiters);
    EXPECT_FALSE(t.peek(PageIdx(0)).locked());
}

TEST(Stage2Test, AValuePublishedWhileAWaiterSleepsKeepsItsWakeUp) {
    // The owner shows a new value (publish_locked, as a swap-in publishes `reading`)
    // while a locker sleeps on the entry: the unlock after it must still wake it, and
    // nobody looking at the entry sees the waiter bit.
    Stage2 t = Stage2::create(1).value();
    t.lock(PageIdx(0));
    std::atomic<pid_t> tid{0};
    auto waiter = std::async(std::launch::async, [&] {
        tid = current_tid();
        PageEntry got = t.lock(PageIdx(0));
        t.unlock(PageIdx(0), got);
        return got;
    });
    ASSERT_TRUE(swapvisor::testing::wait_until([&] { return tid.load() != 0; }));
    ASSERT_TRUE(wait_until_blocked(tid)) << "the waiter never went to sleep on the held entry";
    const PageEntry reading = PageEntry::make(PageState::reading, swap::VSlot(9));
    t.publish_locked(PageIdx(0), reading);
    EXPECT_EQ(t.peek(PageIdx(0)).raw(), reading.raw() | PageEntry::kLock) << "peek shows the published value, locked";
    EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout)
        << "a publish let a waiter in while the owner still held the entry";
    t.unlock(PageIdx(0), PageEntry::make(PageState::resident, swap::VSlot(9), Clean::yes));
    ASSERT_EQ(waiter.wait_for(std::chrono::seconds(5)), std::future_status::ready)
        << "the waiter's wake-up was lost when the owner published a value";
    const PageEntry got = waiter.get();
    EXPECT_EQ(got.raw(), PageEntry::make(PageState::resident, swap::VSlot(9), Clean::yes).raw())
        << "lock() returns the value without the lock or waiter bits";
    EXPECT_EQ(t.peek(PageIdx(0)).raw(), got.raw()) << "no waiter bit is left behind";
}

TEST(Stage2Test, ContendedLocksWithPublishesNeverLoseAWakeUp) {
    // Threads contend on one entry with lock, publish_locked (between the lock and the
    // unlock) and try_lock; each round must end (a lost wake-up hangs a locker: the
    // test times out) and every update must be there at the end.
    constexpr int kThreads = 4;
    constexpr int kRounds = 20000;
    Stage2 t = Stage2::create(1).value();
    std::vector<std::future<void>> done;
    for (int th = 0; th < kThreads; ++th) {
        done.push_back(std::async(std::launch::async, [&, th] {
            for (int r = 0; r < kRounds; ++r) {
                std::optional<PageEntry> v = (r + th) % 4 == 0 ? t.try_lock(PageIdx(0)) : std::nullopt;
                PageEntry e = v ? *v : t.lock(PageIdx(0));
                EXPECT_EQ(e.raw() & (PageEntry::kLock | PageEntry::kWaiters), 0u);
                const auto n = static_cast<std::uint32_t>(e.raw() >> 32) + 1;
                if (r % 2 == 0) t.publish_locked(PageIdx(0), PageEntry::make(PageState::reading, swap::VSlot(n)));
                t.unlock(PageIdx(0), PageEntry::make(PageState::swapped, swap::VSlot(n)));
            }
        }));
    }
    for (auto& f : done) ASSERT_EQ(f.wait_for(std::chrono::seconds(120)), std::future_status::ready) << "lost wake-up";
    EXPECT_EQ(t.peek(PageIdx(0)).raw() >> 32, std::uint64_t{kThreads} * kRounds);
    EXPECT_EQ(t.peek(PageIdx(0)).raw() & (PageEntry::kLock | PageEntry::kWaiters), 0u);
}

TEST(Stage2Test, ContendedUpdatesAreNeverLost) {
    // Several threads do read-modify-write through the lock on a few shared entries,
    // mixing lock() and try_lock(); neighbours of the contended entries must not move.
    constexpr int kThreads = 4;
    constexpr int kRounds = 20000;
    constexpr std::uint64_t kEntries = 3;
    Stage2 t = Stage2::create(kEntries + 2).value();  // entries 0 and kEntries+1 are guards
    std::vector<std::thread> threads;
    for (int th = 0; th < kThreads; ++th) {
        threads.emplace_back([&, th] {
            for (int r = 0; r < kRounds; ++r) {
                std::uint64_t idx = 1 + static_cast<std::uint64_t>(r + th) % kEntries;
                PageEntry e;
                if (r % 3 == 0) {
                    auto v = t.try_lock(PageIdx(idx));
                    e = v ? *v : t.lock(PageIdx(idx));
                } else {
                    e = t.lock(PageIdx(idx));
                }
                // Publish a different state each time so a torn or lost store shows.
                auto next = static_cast<PageState>((static_cast<int>(e.state()) + 1) % 5);
                // The counter rides in the entry's upper 32 bits (the VSlot, or the epoch in writeback).
                t.unlock(PageIdx(idx), PageEntry::make(next, swap::VSlot(static_cast<std::uint32_t>(e.raw() >> 32) + 1),
                                                       r % 2 == 0 ? Clean::yes : Clean::no));
            }
        });
    }
    for (auto& th : threads) th.join();
    std::uint64_t total = 0;
    for (std::uint64_t i = 1; i <= kEntries; ++i) {
        EXPECT_FALSE(t.peek(PageIdx(i)).locked());
        total += t.peek(PageIdx(i)).raw() >> 32;
    }
    EXPECT_EQ(total, std::uint64_t{kThreads} * kRounds) << "an update under the lock was lost";
    EXPECT_EQ(t.peek(PageIdx(0)).raw(), 0u);
    EXPECT_EQ(t.peek(PageIdx(kEntries + 1)).raw(), 0u);
}

namespace {
std::uint64_t rss_bytes() {
    std::FILE* f = std::fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (f) {
        if (std::fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
        std::fclose(f);
    }
    return std::uint64_t{resident} * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}
}  // namespace

TEST(Stage2Test, ASparseTerabyteGuestCostsOnlyTheEntriesItTouches) {
    // 1 TiB of guest pages: 2 GiB of entries if allocated up front (issue #12 saw 15 s
    // and 2 GB of RSS to boot `hello` with --memory 1T).
    constexpr std::uint64_t kPages = (1ULL << 40) / kPageSize;
    const std::uint64_t before = rss_bytes();
    Stage2 t = Stage2::create(kPages).value();
    EXPECT_EQ(t.peek(PageIdx(kPages - 1)).raw(), 0u);
    t.unlock(PageIdx(kPages / 2), PageEntry::make(PageState::resident));
    EXPECT_EQ(t.peek(PageIdx(kPages / 2)).state(), PageState::resident);
    EXPECT_LT(rss_bytes() - std::min(before, rss_bytes()), 16ULL << 20) << "the table was backed up front";
}

namespace {

// A restore's table (guestmem/README.md#borrowed): two tables mapped from one image
// (two clones) start as the image, lock and change entries on pages of entries not
// copied yet, never see each other's changes, and the sealed image stays as built.
TEST(Stage2ImageTest, ClonesMappedFromOneImageStartAsItAndNeverSeeEachOthersWrites) {
    constexpr std::uint64_t kPages = 4096;  // 8 pages of entries
    const PageEntry image = PageEntry::make(PageState::image);
    const PageEntry borrowed = PageEntry::make_borrowed(swap::VSlot(77));
    auto fd = Stage2::make_image(kPages, [&](std::uint64_t* e) {
        e[3] = image.raw();
        e[1000] = borrowed.raw();
    });
    ASSERT_TRUE(fd) << fd.error().message();
    auto a = Stage2::map_image(*fd, kPages);
    auto b = Stage2::map_image(*fd, kPages);
    ASSERT_TRUE(a && b);
    EXPECT_EQ(a->peek(PageIdx(3)), image);
    EXPECT_EQ(b->peek(PageIdx(1000)), borrowed);
    EXPECT_EQ(a->peek(PageIdx(4095)), PageEntry{});
    // Lock (a CAS) and publish on a page of entries neither has written yet.
    EXPECT_EQ(a->lock(PageIdx(1000)), borrowed);
    a->unlock(PageIdx(1000), PageEntry::make(PageState::resident));
    EXPECT_EQ(a->peek(PageIdx(1000)), PageEntry::make(PageState::resident));
    EXPECT_EQ(b->peek(PageIdx(1000)), borrowed) << "a clone's write reached another clone";
    b->unlock(PageIdx(3), PageEntry::make(PageState::zero));
    EXPECT_EQ(a->peek(PageIdx(3)), image);
    auto c = Stage2::map_image(*fd, kPages);
    ASSERT_TRUE(c);
    EXPECT_EQ(c->peek(PageIdx(1000)), borrowed) << "the image changed";
    EXPECT_EQ(c->peek(PageIdx(3)), image);
    // Sealed: nobody can write the image itself.
    const std::uint64_t junk = 1;
    EXPECT_EQ(::pwrite(fd->get(), &junk, sizeof junk, 0), -1);
}

}  // namespace
