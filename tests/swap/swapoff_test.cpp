// Live swapoff on real io_uring and real files: everything moved and verified,
// refusal that changes nothing, bringing pages back through an EvictionSink, two
// swapoffs of one device, and races with free(), read_in() and write_out() made
// deterministic by FaultPlan gates that hold one I/O at the critical moment.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "swap/swap_pool.hpp"
#include "tests/swap/swap_test_util.hpp"

namespace swapvisor::swap {
namespace {

using test::kClusterBytes;
using test::Pages;

bool is(const Error& e, Errc c) { return e.code == make_error_code(c); }

// Writes pages [0, n) with ids = owners = index; returns their vslots.
std::vector<VSlot> fill_pool(SwapPool& pool, io::Ring& ring, std::size_t n, std::uint64_t id_base = 0) {
    Pages pages(n);
    std::vector<VSlot> v;
    for (std::size_t first = 0; first < n; first += 128) {
        std::size_t count = std::min<std::size_t>(128, n - first);
        for (std::size_t i = first; i < first + count; ++i) test::fill_page(pages[i], id_base + i);
        auto batch = test::page_outs(pages, first, count, id_base);
        EXPECT_TRUE(pool.write_out(ring, batch));
        for (auto& p : batch) {
            EXPECT_EQ(p.error, std::nullopt);
            v.push_back(p.vslot);
        }
    }
    return v;
}

// Every live vslot reads back as the page it was written as (id = owner).
void verify_all(SwapPool& pool, io::Ring& ring, const std::vector<VSlot>& live) {
    Pages back(1);
    for (VSlot v : live) {
        auto owner = pool.owner_of(v);
        ASSERT_TRUE(owner) << v.value();
        auto r = pool.read_in(ring, v, back[0]);
        ASSERT_TRUE(r) << v.value() << ": " << r.error().message();
        ASSERT_TRUE(test::verify_page(back[0], *owner)) << v.value();
    }
}

std::optional<DeviceStats> stats_of(const std::vector<DeviceStats>& stats, const std::filesystem::path& p) {
    for (const auto& s : stats)
        if (s.path == std::filesystem::weakly_canonical(p).string()) return s;
    return std::nullopt;
}

TEST(PrivilegedSwapoff, MovesEveryUsedSlotToAnotherDevice) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, 3 * kClusterBytes));
    auto b = pool.swapon(dir.file("b"), 0, 4 * kClusterBytes);
    ASSERT_TRUE(b);
    auto v = fill_pool(pool, ring, 1000);
    std::vector<VSlot> live;
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (i % 7 == 3) pool.free(v[i]);  // holes in the bitmap
        else live.push_back(v[i]);
    }
    ASSERT_EQ(stats_of(pool.stats(), dir.file("a"))->used_slots, live.size());

    std::vector<SwapoffProgress> progress;
    auto report = pool.swapoff(dir.file("a"), ring, [&](SwapoffProgress p) { progress.push_back(p); });
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_EQ(report->pages_moved, live.size());
    EXPECT_EQ(report->pages_brought_back, 0u);
    EXPECT_EQ(report->pages_skipped, 0u);
    EXPECT_GE(report->elapsed_ms, 0.0);
    ASSERT_GE(progress.size(), 2u);
    EXPECT_EQ(progress.back().done, live.size());
    EXPECT_EQ(progress.back().total, live.size());

    auto stats = pool.stats();
    ASSERT_EQ(stats.size(), 1u);
    EXPECT_EQ(stats[0].used_slots, live.size());
    for (VSlot s : live) EXPECT_EQ(pool.pslot_of(s)->device, *b);
    verify_all(pool, ring, live);
    EXPECT_EQ(pool.allocated_vslots(), live.size());
    EXPECT_FALSE(pool.find_device(dir.file("a")));
    // The path can be swapped on again.
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, 0));
}

TEST(PrivilegedSwapoff, EmptyDeviceAndUnknownPath) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 0, kClusterBytes));
    auto r = pool.swapoff(dir.file("nope"), ring);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::no_such_device));
    EXPECT_EQ(r.error().context, "device " + canonical_swap_path(dir.file("nope")));
    auto report = pool.swapoff(dir.file("a"), ring);
    ASSERT_TRUE(report);
    EXPECT_EQ(report->pages_moved + report->pages_brought_back + report->pages_skipped, 0u);
    EXPECT_TRUE(pool.stats().empty());
    r = pool.swapoff(dir.file("a"), ring);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::no_such_device));
}

TEST(PrivilegedSwapoff, RefusedUpFrontWhenNothingHasRoomAndChangesNothing) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    auto a = pool.swapon(dir.file("a"), 10, 2 * kClusterBytes);
    ASSERT_TRUE(a);
    ASSERT_TRUE(pool.swapon(dir.file("b"), 0, kClusterBytes));
    auto v = fill_pool(pool, ring, 700);  // 700 used on a, 512 free on b
    auto before = pool.stats();

    auto r = pool.swapoff(dir.file("a"), ring);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::would_not_fit)) << r.error().message();

    test::MemorySink small(pool, 100);  // 188 would have to come back
    pool.set_eviction_sink(&small);
    r = pool.swapoff(dir.file("a"), ring);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::would_not_fit));
    EXPECT_EQ(small.resident_count(), 0u);
    pool.set_eviction_sink(nullptr);

    auto after = pool.stats();
    ASSERT_EQ(after.size(), before.size());
    for (std::size_t i = 0; i < after.size(); ++i) {
        EXPECT_EQ(after[i].path, before[i].path);
        EXPECT_EQ(after[i].used_slots, before[i].used_slots);
        EXPECT_FALSE(after[i].removing);
    }
    for (VSlot s : v) EXPECT_EQ(pool.pslot_of(s)->device, *a);
    verify_all(pool, ring, v);
    // Still active: new pages go to a (highest priority) again.
    Pages one(1);
    std::vector<PageOut> out{PageOut{one[0], 1}};
    ASSERT_TRUE(pool.write_out(ring, out));
    EXPECT_EQ(pool.pslot_of(out[0].vslot)->device, *a);
    pool.free(out[0].vslot);
    EXPECT_EQ(pool.allocated_vslots(), v.size());
}

TEST(PrivilegedSwapoff, BringsBackThroughTheSinkWhatDoesNotFitElsewhere) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, 2 * kClusterBytes));
    auto b = pool.swapon(dir.file("b"), 0, kClusterBytes);
    ASSERT_TRUE(b);
    auto v = fill_pool(pool, ring, 700);
    test::MemorySink sink(pool, 300);
    for (std::size_t i = 0; i < v.size(); ++i) sink.set_swapped(i, v[i]);
    pool.set_eviction_sink(&sink);

    auto report = pool.swapoff(dir.file("a"), ring);
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_EQ(report->pages_moved, kClusterSlots);
    EXPECT_EQ(report->pages_brought_back, 700 - kClusterSlots);
    EXPECT_EQ(report->pages_skipped, 0u);
    EXPECT_EQ(sink.resident_count(), 700 - kClusterSlots);

    std::vector<VSlot> still;
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (auto page = sink.resident(i)) {
            EXPECT_TRUE(test::verify_page(page->data(), i)) << i;
            EXPECT_FALSE(pool.owner_of(v[i]));  // released by bring_back
        } else {
            EXPECT_EQ(pool.pslot_of(v[i])->device, *b);
            still.push_back(v[i]);
        }
    }
    EXPECT_EQ(still.size(), kClusterSlots);
    verify_all(pool, ring, still);
    EXPECT_EQ(pool.allocated_vslots(), still.size());
    pool.set_eviction_sink(nullptr);
}

TEST(PrivilegedSwapoff, WithNoOtherDeviceEverythingComesBack) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 0, kClusterBytes));
    auto v = fill_pool(pool, ring, 50);
    test::MemorySink sink(pool, 50);
    for (std::size_t i = 0; i < v.size(); ++i) sink.set_swapped(i, v[i]);
    pool.set_eviction_sink(&sink);
    auto report = pool.swapoff(dir.file("a"), ring);
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_EQ(report->pages_brought_back, 50u);
    for (std::size_t i = 0; i < 50; ++i) EXPECT_TRUE(test::verify_page(sink.resident(i)->data(), i));
    EXPECT_EQ(pool.allocated_vslots(), 0u);
    EXPECT_TRUE(pool.stats().empty());
    pool.set_eviction_sink(nullptr);
}

// Bring-backs hand the bytes swapoff read to a VM, so those are checked first: a
// corrupt slot is never brought back, the others are, verified (issue #18 item 4:
// any reordering of a batch's hashing must keep this).
TEST(PrivilegedSwapoff, ACorruptSlotIsNeverBroughtBack) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 0, kClusterBytes));
    auto v = fill_pool(pool, ring, 100);
    test::corrupt_slot(dir.file("a"), pool.pslot_of(v[40])->slot);
    test::MemorySink sink(pool, 100);
    for (std::size_t i = 0; i < v.size(); ++i) sink.set_swapped(i, v[i]);
    pool.set_eviction_sink(&sink);
    auto r = pool.swapoff(dir.file("a"), ring);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::unreadable_slots)) << r.error().message();
    EXPECT_FALSE(sink.resident(40)) << "bytes that fail their checksum never reach a VM";
    EXPECT_EQ(sink.resident_count(), 99u);
    for (std::size_t i = 0; i < 100; ++i) {
        if (i == 40) continue;
        EXPECT_TRUE(test::verify_page(sink.resident(i)->data(), i)) << i;
    }
    pool.set_eviction_sink(nullptr);
}

// Pages that only move (room elsewhere): with Force::yes a corrupt one among them is
// lost to its owner, the rest arrive intact, and no slot leaks or is quarantined on
// the target (issue #18 item 4: a batch that hashed while it wrote would have written
// the corrupt pages too; their slots must then be freed).
TEST(PrivilegedSwapoff, ACorruptSlotAmongMovedPagesIsLostWithForceAndLeaksNothing) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, kClusterBytes));
    ASSERT_TRUE(pool.swapon(dir.file("b"), 0, kClusterBytes));
    auto v = fill_pool(pool, ring, 200);
    test::corrupt_slot(dir.file("a"), pool.pslot_of(v[7])->slot);
    test::corrupt_slot(dir.file("a"), pool.pslot_of(v[150])->slot);
    test::MemorySink sink(pool, 0);
    for (std::size_t i = 0; i < v.size(); ++i) sink.set_swapped(i, v[i]);
    pool.set_eviction_sink(&sink);
    auto r = pool.swapoff(dir.file("a"), ring, {}, Force::yes);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->pages_moved, 198u);
    EXPECT_EQ(r->pages_lost, 2u);
    EXPECT_TRUE(sink.lost(7));
    EXPECT_TRUE(sink.lost(150));
    auto stats = pool.stats();
    ASSERT_EQ(stats.size(), 1u);
    EXPECT_EQ(stats[0].used_slots, 198u) << "no slot kept for the corrupt pages";
    EXPECT_EQ(stats[0].quarantined_slots, 0u);
    std::vector<VSlot> good;
    for (std::size_t i = 0; i < v.size(); ++i)
        if (i != 7 && i != 150) good.push_back(v[i]);
    verify_all(pool, ring, good);
    EXPECT_EQ(pool.allocated_vslots(), good.size());
    pool.set_eviction_sink(nullptr);
}

TEST(PrivilegedSwapoff, TwoSwapoffsOfOneDeviceExactlyOneWins) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("a"), kClusterBytes, plan), 10));
    ASSERT_TRUE(pool.swapon(dir.file("b"), 0, kClusterBytes));
    auto v = fill_pool(pool, ring, 200);

    // Deterministic: hold the first swapoff inside its first read of a.
    test::Latch latch;
    test::hold_once(*plan, io::FaultMatch::read, latch);
    Result<SwapoffReport> first = std::unexpected(Error{});
    std::thread t([&] {
        auto r = io::Ring::create(32);
        ASSERT_TRUE(r);
        first = pool.swapoff(dir.file("a"), *r);
    });
    latch.wait_entered();
    EXPECT_TRUE(stats_of(pool.stats(), dir.file("a"))->removing);
    auto second = pool.swapoff(dir.file("a"), ring);
    ASSERT_FALSE(second);
    EXPECT_TRUE(is(second.error(), Errc::device_busy)) << second.error().message();
    latch.open();
    t.join();
    ASSERT_TRUE(first) << first.error().message();
    EXPECT_EQ(first->pages_moved, 200u);
    auto third = pool.swapoff(dir.file("a"), ring);
    ASSERT_FALSE(third);
    EXPECT_TRUE(is(third.error(), Errc::no_such_device));
    verify_all(pool, ring, v);

    // Free-running: two threads at once, exactly one wins.
    ASSERT_TRUE(pool.swapon(dir.file("c"), 10, kClusterBytes));
    auto w = fill_pool(pool, ring, 100, 1000);
    std::atomic<int> wins{0}, losses{0};
    std::vector<std::thread> racers;
    for (int i = 0; i < 2; ++i) {
        racers.emplace_back([&] {
            auto r = io::Ring::create(32);
            ASSERT_TRUE(r);
            auto rep = pool.swapoff(dir.file("c"), *r);
            if (rep) wins++;
            else if (is(rep.error(), Errc::device_busy) || is(rep.error(), Errc::no_such_device)) losses++;
        });
    }
    for (auto& r : racers) r.join();
    EXPECT_EQ(wins.load(), 1);
    EXPECT_EQ(losses.load(), 1);
    verify_all(pool, ring, w);
    EXPECT_EQ(pool.allocated_vslots(), v.size() + w.size());
}

TEST(PrivilegedSwapoff, RacesWithFreeBeforeTheReadAndBeforeTheSwitch) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan_a = std::make_shared<io::FaultPlan>();
    auto plan_b = std::make_shared<io::FaultPlan>();
    SwapPool pool(SwapPoolConfig{.swapoff_batch_pages = 128});  // the race needs two batches
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("a"), kClusterBytes, plan_a), 10));
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("b"), kClusterBytes, plan_b), 0));
    auto v = fill_pool(pool, ring, 256);  // two swapoff batches of 128

    // Hold swapoff (1) in its first read of a: batch 1 is resolved, its slots not yet
    // read; (2) in its first write to b: batch 1 is read and copied, not switched.
    test::Latch in_read, in_write;
    test::hold_once(*plan_a, io::FaultMatch::read, in_read);
    test::hold_once(*plan_b, io::FaultMatch::write, in_write);
    Result<SwapoffReport> report = std::unexpected(Error{});
    std::thread t([&] {
        auto r = io::Ring::create(32);
        ASSERT_TRUE(r);
        report = pool.swapoff(dir.file("a"), *r);
    });
    std::set<std::size_t> freed;
    in_read.wait_entered();
    for (std::size_t i = 0; i < 10; ++i) freed.insert(i);            // batch 1, before the read
    for (std::size_t i = 200; i < 210; ++i) freed.insert(i);         // batch 2, before its scan
    for (std::size_t i : freed) pool.free(v[i]);
    in_read.open();
    in_write.wait_entered();
    for (std::size_t i = 20; i < 30; ++i) {                          // batch 1, before the switch
        pool.free(v[i]);
        freed.insert(i);
    }
    in_write.open();
    t.join();
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_EQ(report->pages_moved, 256 - freed.size());
    EXPECT_EQ(report->pages_skipped, 20u);  // the batch-1 pages; batch 2's frees were never seen
    std::vector<VSlot> live;
    for (std::size_t i = 0; i < v.size(); ++i)
        if (!freed.count(i)) live.push_back(v[i]);
    verify_all(pool, ring, live);
    EXPECT_EQ(pool.allocated_vslots(), live.size());
    auto stats = pool.stats();
    ASSERT_EQ(stats.size(), 1u);
    EXPECT_EQ(stats[0].used_slots, live.size());  // the lost-race copies were freed
}

TEST(PrivilegedSwapoff, WaitsForAReaderHoldingTheOldDevice) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("a"), kClusterBytes, plan), 10));
    auto b = pool.swapon(dir.file("b"), 0, kClusterBytes);
    auto v = fill_pool(pool, ring, 300);
    const VSlot target = v[5];
    const SlotIdx old_slot = pool.pslot_of(target)->slot;

    // The reader looks up vslot 5 (on a), takes a device reference, and is held
    // just before its read of the old slot.
    test::Latch reader_held;
    auto at = slot_offset(old_slot);
    test::hold_once(*plan, io::FaultMatch::read, reader_held, at, at.offset_by(kSlotSize));
    Pages page(1);
    Result<void> read = std::unexpected(Error{});
    std::thread reader([&] {
        auto r = io::Ring::create(8);
        ASSERT_TRUE(r);
        read = pool.read_in(*r, target, page[0]);
    });
    reader_held.wait_entered();

    std::mutex mu;
    std::condition_variable cv;
    bool all_moved = false, finished = false;
    Result<SwapoffReport> report = std::unexpected(Error{});
    std::thread off([&] {
        auto r = io::Ring::create(32);
        ASSERT_TRUE(r);
        auto rep = pool.swapoff(dir.file("a"), *r, [&](SwapoffProgress p) {
            std::lock_guard lock(mu);
            if (p.done == p.total) all_moved = true;
            cv.notify_all();
        });
        std::lock_guard lock(mu);
        report = std::move(rep);
        finished = true;
        cv.notify_all();
    });
    {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return all_moved || finished; });
        // Every slot moved, but the reader's reference keeps the device alive.
        EXPECT_FALSE(finished);
    }
    EXPECT_EQ(pool.pslot_of(target)->device, *b);  // descriptor switched under the reader
    // a is either still listed (removing, empty) or already unpublished, its
    // destruction waiting for the reader.
    if (auto a_stats = stats_of(pool.stats(), dir.file("a"))) {
        EXPECT_EQ(a_stats->used_slots, 0u);
        EXPECT_TRUE(a_stats->removing);
    }

    reader_held.open();
    reader.join();
    off.join();
    ASSERT_TRUE(read) << read.error().message();
    EXPECT_TRUE(test::verify_page(page[0], 5));  // the old slot was not reused
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_EQ(report->pages_moved, 300u);
    verify_all(pool, ring, v);
    EXPECT_EQ(pool.allocated_vslots(), v.size());
}

TEST(PrivilegedSwapoff, ReaderOfAMovedAndReusedSlotRetriesAtTheNewPlace) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    SwapPool pool;
    auto a = pool.swapon(test::faulty_file(dir.file("a"), kClusterBytes, plan), 10);
    auto b = pool.swapon(dir.file("b"), 0, kClusterBytes);
    auto v = fill_pool(pool, ring, kClusterSlots);  // a is full
    const VSlot target = v[5];
    auto at = slot_offset(pool.pslot_of(target)->slot);

    // Reader held before reading slot 5 of a.
    test::Latch reader_held;
    test::hold_once(*plan, io::FaultMatch::read, reader_held, at, at.offset_by(kSlotSize));
    Pages page(1);
    Result<void> read = std::unexpected(Error{});
    std::thread reader([&] {
        auto r = io::Ring::create(8);
        ASSERT_TRUE(r);
        read = pool.read_in(*r, target, page[0]);
    });
    reader_held.wait_entered();

    // swapoff moves every readable page (slot 5 included) to b, then refuses over
    // the corrupt slot: a is active again with its other slots free.
    test::corrupt_slot(dir.file("a"), pool.pslot_of(v[200])->slot);
    auto r = pool.swapoff(dir.file("a"), ring);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::unreadable_slots));
    EXPECT_EQ(pool.pslot_of(target)->device, *b);
    // New pages reuse a's freed slots, slot 5 among them.
    auto fresh = fill_pool(pool, ring, 128, 10'000);
    std::set<std::uint32_t> on_a;
    for (VSlot s : fresh)
        if (pool.pslot_of(s)->device == *a) on_a.insert(pool.pslot_of(s)->slot.value());
    EXPECT_TRUE(on_a.count(static_cast<std::uint32_t>(at.value() / kSlotSize)));

    // The reader now reads someone else's page at the old place: the checksum
    // catches it, the descriptor shows the move, and it reads the new place.
    reader_held.open();
    reader.join();
    ASSERT_TRUE(read) << read.error().message();
    EXPECT_TRUE(test::verify_page(page[0], 5));
}

TEST(PrivilegedSwapoff, WaitsForAWriteInFlightOnTheDeviceAndMovesItsPages) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("a"), kClusterBytes, plan), 10));
    auto b = pool.swapon(dir.file("b"), 0, kClusterBytes);
    auto v = fill_pool(pool, ring, 40);

    test::Latch writer_held;
    test::hold_once(*plan, io::FaultMatch::write, writer_held);
    Pages pages(8);
    for (std::size_t i = 0; i < 8; ++i) test::fill_page(pages[i], 500 + i);
    auto batch = test::page_outs(pages, 0, 8, 500);
    std::thread writer([&] {
        auto r = io::Ring::create(8);
        ASSERT_TRUE(r);
        EXPECT_TRUE(pool.write_out(*r, batch));
    });
    writer_held.wait_entered();  // slots on a allocated, data not written

    Result<SwapoffReport> report = std::unexpected(Error{});
    std::thread off([&] {
        auto r = io::Ring::create(32);
        ASSERT_TRUE(r);
        report = pool.swapoff(dir.file("a"), *r);
    });
    // swapoff has marked a removing (and now waits for the write); new writes avoid a.
    while (!stats_of(pool.stats(), dir.file("a"))->removing) std::this_thread::yield();
    Pages one(1);
    test::fill_page(one[0], 999);
    std::vector<PageOut> other{PageOut{one[0], 999}};
    ASSERT_TRUE(pool.write_out(ring, other));
    EXPECT_EQ(pool.pslot_of(other[0].vslot)->device, *b);

    writer_held.open();
    writer.join();
    off.join();
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_EQ(report->pages_moved, 48u);
    EXPECT_EQ(report->pages_skipped, 0u);  // it waited for the write instead of skipping its slots
    for (auto& p : batch) {
        ASSERT_EQ(p.error, std::nullopt);
        v.push_back(p.vslot);
    }
    v.push_back(other[0].vslot);
    for (VSlot s : v) EXPECT_EQ(pool.pslot_of(s)->device, *b);
    verify_all(pool, ring, v);
    EXPECT_EQ(pool.allocated_vslots(), v.size());
}

// Issue #9: a slot that fails its checksum does not stop the others from moving;
// without force swapoff then refuses, names the slot and loses nothing; with force
// the page becomes a lost page of its owner and the device goes.
// Issue #16 item 4: a slot quarantined while still in use counted in both used_slots
// and quarantined_slots, so "free elsewhere" wrapped around (unsigned) and a swapoff
// that had to be refused started, and the reclaimer saw "swap full" with free slots.
TEST(PrivilegedSwapoff, SlotsQuarantinedInUseAreCountedOnceInTheRoomElsewhere) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, kClusterBytes));
    ASSERT_TRUE(pool.swapon(dir.file("b"), 0, kClusterBytes));
    auto v = fill_pool(pool, ring, 812);  // a full (512), 300 on b
    Pages back(1);
    for (std::size_t i = 0; i < 9; ++i) {  // 9 slots of a fail their checksum while in use
        test::corrupt_slot(dir.file("a"), pool.pslot_of(v[i * 50])->slot);
        ASSERT_FALSE(pool.read_in(ring, v[i * 50], back[0]));
    }
    auto a = stats_of(pool.stats(), dir.file("a"));
    EXPECT_EQ(a->used_slots, 512u);
    EXPECT_EQ(a->quarantined_slots, 9u);
    EXPECT_EQ(a->free_slots, 0u) << "a quarantined slot still in use is one used slot, not two";

    auto r = pool.swapoff(dir.file("b"), ring);
    ASSERT_FALSE(r) << "300 pages cannot fit in a, which has no free slot";
    EXPECT_TRUE(is(r.error(), Errc::would_not_fit)) << r.error().message();
    EXPECT_EQ(stats_of(pool.stats(), dir.file("b"))->used_slots, 300u) << "refused up front: nothing moved";

    for (std::size_t i = 1; i <= 5; ++i) pool.free(v[i]);  // 5 good slots of a free again
    EXPECT_EQ(stats_of(pool.stats(), dir.file("a"))->free_slots, 5u);
}

TEST(PrivilegedSwapoff, ChecksumMismatchWithoutForceMovesTheRestAndRefusesThenForceLosesIt) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    auto a = pool.swapon(dir.file("a"), 10, kClusterBytes);
    auto b = pool.swapon(dir.file("b"), 0, kClusterBytes);
    auto v = fill_pool(pool, ring, 300);
    const SlotIdx corrupted = pool.pslot_of(v[200])->slot;
    test::corrupt_slot(dir.file("a"), corrupted);  // in the second batch

    auto r = pool.swapoff(dir.file("a"), ring);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::unreadable_slots)) << r.error().message();
    const std::string where = "device " + canonical_swap_path(dir.file("a")) + ", slot " +
                              std::to_string(corrupted.value()) + ", vslot " + std::to_string(v[200].value());
    EXPECT_NE(r.error().context.find("1 unreadable slots"), std::string::npos) << r.error().context;
    EXPECT_NE(r.error().context.find(where), std::string::npos) << r.error().context;
    auto stats = pool.stats();
    ASSERT_EQ(stats.size(), 2u);
    EXPECT_FALSE(stats_of(stats, dir.file("a"))->removing);
    EXPECT_EQ(stats_of(stats, dir.file("a"))->used_slots, 1u);  // only the unreadable one stayed
    EXPECT_EQ(stats_of(stats, dir.file("a"))->quarantined_slots, 1u);
    EXPECT_EQ(stats_of(stats, dir.file("a"))->read_errors, 1u);
    // Nothing of it reached b: no slot used or quarantined there for it.
    EXPECT_EQ(stats_of(stats, dir.file("b"))->used_slots, 299u);
    EXPECT_EQ(stats_of(stats, dir.file("b"))->quarantined_slots, 0u);
    EXPECT_EQ(pool.pslot_of(v[200])->device, *a);

    std::vector<VSlot> good;
    for (std::size_t i = 0; i < v.size(); ++i)
        if (i != 200) good.push_back(v[i]);
    verify_all(pool, ring, good);
    Pages back(1);
    auto bad = pool.read_in(ring, v[200], back[0]);
    ASSERT_FALSE(bad);
    EXPECT_TRUE(is(bad.error(), Errc::checksum_mismatch));
    // Active again: a takes new pages, never in the quarantined slot.
    Pages more(64);
    std::vector<PageOut> out = test::page_outs(more, 0, 64, 5000);
    ASSERT_TRUE(pool.write_out(ring, out));
    for (auto& p : out) {
        EXPECT_EQ(pool.pslot_of(p.vslot)->device, *a);
        EXPECT_NE(pool.pslot_of(p.vslot)->slot, corrupted);
        pool.free(p.vslot);
    }
    EXPECT_EQ(pool.allocated_vslots(), v.size());

    // With force: the page is lost to its owner, the device goes.
    test::MemorySink sink(pool, 0);
    for (std::size_t i = 0; i < v.size(); ++i) sink.set_swapped(i, v[i]);
    pool.set_eviction_sink(&sink);
    auto forced = pool.swapoff(dir.file("a"), ring, {}, Force::yes);
    ASSERT_TRUE(forced) << forced.error().message();
    EXPECT_EQ(forced->pages_lost, 1u);
    EXPECT_EQ(forced->pages_moved, 0u);
    EXPECT_TRUE(sink.lost(200));
    EXPECT_EQ(pool.stats().size(), 1u);
    verify_all(pool, ring, good);
    EXPECT_EQ(pool.allocated_vslots(), good.size());
    pool.set_eviction_sink(nullptr);
}

// A read error that goes away is retried page by page: nothing is unreadable.
TEST(PrivilegedSwapoff, TransientReadErrorIsRetriedPageByPage) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("a"), kClusterBytes, plan), 10));
    ASSERT_TRUE(pool.swapon(dir.file("b"), 0, kClusterBytes));
    auto v = fill_pool(pool, ring, 64);
    auto once = plan->add(io::FaultRule{io::FaultMatch::read, {}, {}, 0, 1, io::fault::Eio{}});
    auto r = pool.swapoff(dir.file("a"), ring);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(plan->hits(once), 1u);
    EXPECT_EQ(r->pages_moved, 64u);
    EXPECT_EQ(r->pages_lost, 0u);
    verify_all(pool, ring, v);
    EXPECT_EQ(pool.allocated_vslots(), v.size());
}

// A slot that never reads (EIO every time): refused without force, naming it and
// losing nothing; with force it is the one lost page.
TEST(PrivilegedSwapoff, PersistentReadErrorRefusesWithoutForceAndIsLostWithForce) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("a"), kClusterBytes, plan), 10));
    ASSERT_TRUE(pool.swapon(dir.file("b"), 0, kClusterBytes));
    auto v = fill_pool(pool, ring, 64);
    const SlotIdx bad_slot = pool.pslot_of(v[10])->slot;
    auto at = slot_offset(bad_slot);
    plan->add(io::FaultRule{io::FaultMatch::read, at, at.offset_by(kSlotSize), 0, {}, io::fault::Eio{}});
    test::MemorySink sink(pool, 0);
    for (std::size_t i = 0; i < v.size(); ++i) sink.set_swapped(i, v[i]);
    pool.set_eviction_sink(&sink);

    auto r = pool.swapoff(dir.file("a"), ring);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::unreadable_slots)) << r.error().message();
    EXPECT_NE(r.error().context.find("slot " + std::to_string(bad_slot.value())), std::string::npos)
        << r.error().context;
    EXPECT_FALSE(sink.lost(10));
    EXPECT_EQ(stats_of(pool.stats(), dir.file("a"))->used_slots, 1u);
    EXPECT_EQ(stats_of(pool.stats(), dir.file("a"))->quarantined_slots, 1u);

    auto forced = pool.swapoff(dir.file("a"), ring, {}, Force::yes);
    ASSERT_TRUE(forced) << forced.error().message();
    EXPECT_EQ(forced->pages_lost, 1u);
    EXPECT_TRUE(sink.lost(10));
    std::vector<VSlot> good;
    for (std::size_t i = 0; i < v.size(); ++i)
        if (i != 10) good.push_back(v[i]);
    verify_all(pool, ring, good);
    EXPECT_EQ(pool.allocated_vslots(), good.size());
    pool.set_eviction_sink(nullptr);
}

// A sink whose first bring_back of one owner reports "raced" without releasing the
// vslot (a fault was reading it): the next pass brings it back. Counted once.
class RacingSink final : public EvictionSink {
public:
    explicit RacingSink(test::MemorySink& inner, OwnerTag racing) : inner_(inner), racing_(racing) {}
    std::uint64_t bring_back_capacity() const override { return inner_.bring_back_capacity(); }
    Result<bool> bring_back(OwnerTag owner, VSlot vslot, const SlotCopy* copy, io::Ring& ring) override {
        if (owner == racing_ && !raced_) {
            raced_ = true;
            return false;
        }
        return inner_.bring_back(owner, vslot, copy, ring);
    }
    std::uint64_t bring_back_room(OwnerTag owner) const override { return inner_.bring_back_room(owner); }
    Result<bool> lose(OwnerTag owner, VSlot vslot, const Error& why) override { return inner_.lose(owner, vslot, why); }

private:
    test::MemorySink& inner_;
    OwnerTag racing_;
    bool raced_ = false;
};

TEST(PrivilegedSwapoff, APageSkippedThenBroughtBackIsCountedOnce) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 0, kClusterBytes));
    auto v = fill_pool(pool, ring, 20);
    test::MemorySink inner(pool, 20);
    for (std::size_t i = 0; i < v.size(); ++i) inner.set_swapped(i, v[i]);
    RacingSink sink(inner, 7);
    pool.set_eviction_sink(&sink);
    auto report = pool.swapoff(dir.file("a"), ring);
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_EQ(report->pages_brought_back, 20u);
    EXPECT_EQ(report->pages_skipped, 0u) << "page 7 counted both skipped and brought back";
    EXPECT_EQ(pool.allocated_vslots(), 0u);
    pool.set_eviction_sink(nullptr);
}

// Issue #9: the up-front check is per owner. Pages of a VM with no room cannot come
// back: if they do not fit on the other devices, refuse before anything moves.
class RoomPerOwnerSink final : public EvictionSink {
public:
    explicit RoomPerOwnerSink(test::MemorySink& inner, OwnerTag first_without_room)
        : inner_(inner), first_without_room_(first_without_room) {}
    std::uint64_t bring_back_capacity() const override { return inner_.bring_back_capacity(); }
    Result<bool> bring_back(OwnerTag owner, VSlot vslot, const SlotCopy* copy, io::Ring& ring) override {
        if (bring_back_room(owner) == 0) return make_error(Errc::would_not_fit, "test bring_back");
        return inner_.bring_back(owner, vslot, copy, ring);
    }
    std::uint64_t bring_back_room(OwnerTag owner) const override {
        return owner >= first_without_room_ ? 0 : inner_.bring_back_room(owner);
    }
    Result<bool> lose(OwnerTag owner, VSlot vslot, const Error& why) override { return inner_.lose(owner, vslot, why); }

private:
    test::MemorySink& inner_;
    OwnerTag first_without_room_;
};

TEST(PrivilegedSwapoff, UpFrontCheckIsPerOwnerAndRoomElsewhereGoesToOwnersWithout) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, 2 * kClusterBytes));
    ASSERT_TRUE(pool.swapon(dir.file("b"), 0, kClusterBytes));
    // 700 pages on a; b has 512 free. Owners >= 400 ("VM 2") have no room; VM 1 has.
    auto v = fill_pool(pool, ring, 700);
    test::MemorySink inner(pool, 1000);
    for (std::size_t i = 0; i < v.size(); ++i) inner.set_swapped(i, v[i]);
    {
        // 600 pages of a VM without room cannot all go to b: refused, nothing moved,
        // although the total capacity would suffice.
        RoomPerOwnerSink sink(inner, 100);
        pool.set_eviction_sink(&sink);
        auto r = pool.swapoff(dir.file("a"), ring);
        ASSERT_FALSE(r);
        EXPECT_TRUE(is(r.error(), Errc::would_not_fit)) << r.error().message();
        EXPECT_EQ(stats_of(pool.stats(), dir.file("b"))->used_slots, 0u);
        EXPECT_EQ(inner.resident_count(), 0u);
    }
    {
        // 300 pages without room fit on b; VM 1's 400 pages are brought back first
        // where needed, so nothing fails mid-way.
        RoomPerOwnerSink sink(inner, 400);
        pool.set_eviction_sink(&sink);
        auto r = pool.swapoff(dir.file("a"), ring);
        ASSERT_TRUE(r) << r.error().message();
        EXPECT_EQ(r->pages_moved + r->pages_brought_back, 700u);
        for (std::size_t i = 400; i < 700; ++i) EXPECT_FALSE(inner.resident(i)) << i;
    }
    pool.set_eviction_sink(nullptr);
}

TEST(PrivilegedSwapoff, WriteErrorOnTheTargetAbortsWithoutLosingData) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan_b = std::make_shared<io::FaultPlan>();
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, kClusterBytes));
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("b"), kClusterBytes, plan_b), 0));
    auto v = fill_pool(pool, ring, 64);
    plan_b->add(io::FaultRule{io::FaultMatch::write, {}, {}, 0, 1, io::fault::Eio{}});
    auto r = pool.swapoff(dir.file("a"), ring);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::io_failed));
    // The target that failed is named, not the device being removed.
    EXPECT_TRUE(r.error().context.starts_with("device " + canonical_swap_path(dir.file("b")) + ", slot "))
        << r.error().context;
    EXPECT_EQ(stats_of(pool.stats(), dir.file("b"))->used_slots, 0u);  // failed copies freed
    verify_all(pool, ring, v);
    ASSERT_TRUE(pool.swapoff(dir.file("a"), ring));
    verify_all(pool, ring, v);
    EXPECT_EQ(pool.allocated_vslots(), v.size());
}

}  // namespace
}  // namespace swapvisor::swap

namespace swapvisor::swap {
namespace {

// Free-running: two workers write, read back (verifying every page) and free while
// the main thread swaps devices off and on again. Every read must return the page
// that was written, and at rest nothing leaks.
TEST(PrivilegedSwapoff, StressWithConcurrentWritersReadersAndFrees) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 10, 2 * kClusterBytes));
    ASSERT_TRUE(pool.swapon(dir.file("b"), 0, 2 * kClusterBytes));
    ASSERT_TRUE(pool.swapon(dir.file("c"), 0, 2 * kClusterBytes));
    std::atomic<bool> stop{false};
    std::atomic<int> bad{0};
    std::vector<std::vector<VSlot>> kept(2);
    std::vector<std::thread> workers;
    for (int t = 0; t < 2; ++t) {
        workers.emplace_back([&, t] {
            auto r = io::Ring::create(32);
            if (!r) {
                bad++;
                return;
            }
            Pages pages(8), back(8);
            std::vector<std::pair<VSlot, std::uint64_t>> held;
            for (std::uint64_t round = 0; !stop.load() || round < 20; ++round) {
                std::uint64_t base = (std::uint64_t(t + 1) << 40) | (round << 4);
                for (std::size_t i = 0; i < 8; ++i) test::fill_page(pages[i], base + i);
                auto batch = test::page_outs(pages, 0, 8, base);
                if (pool.write_out(*r, batch)) {
                    for (auto& p : batch)
                        if (p.ok()) held.emplace_back(p.vslot, p.owner);
                }
                // Read back (batched) the most recent pages and some old ones.
                std::vector<SwapPool::PageIn> in;
                std::vector<std::uint64_t> ids;
                for (std::size_t k = 0; k < 8 && k < held.size(); ++k) {
                    auto& [v, id] = held[(round * 5 + k * 13) % held.size()];
                    in.push_back(SwapPool::PageIn{v, back[k]});
                    ids.push_back(id);
                }
                if (!pool.read_in(*r, in)) bad++;
                for (std::size_t k = 0; k < in.size(); ++k)
                    if (!in[k].ok() || !test::verify_page(back[k], ids[k])) bad++;
                // Keep the set bounded: free the oldest beyond 300.
                while (held.size() > 300) {
                    pool.free(held.front().first);
                    held.erase(held.begin());
                }
            }
            for (auto& [v, id] : held) kept[t].push_back(v);
        });
    }
    std::uint64_t moved = 0;
    for (const char* name : {"a", "b", "a", "c", "a", "b"}) {
        // Let the workers put some pages out first.
        while (pool.allocated_vslots() < 200 && bad.load() == 0) std::this_thread::yield();
        auto report = pool.swapoff(dir.file(name), ring);
        EXPECT_TRUE(report) << name << ": " << report.error().message();
        if (report) moved += report->pages_moved;
        ASSERT_TRUE(pool.swapon(dir.file(name), name[0] == 'a' ? 10 : 0, 0));
    }
    EXPECT_GT(moved, 0u);
    stop = true;
    for (auto& w : workers) w.join();
    EXPECT_EQ(bad.load(), 0);
    std::vector<VSlot> live;
    for (auto& k : kept) live.insert(live.end(), k.begin(), k.end());
    verify_all(pool, ring, live);
    EXPECT_EQ(pool.allocated_vslots(), live.size());
    std::uint64_t used = 0;
    for (auto& s : pool.stats()) used += s.used_slots;
    EXPECT_EQ(used, live.size());
}

}  // namespace
}  // namespace swapvisor::swap
