// SwapPool swap-out / swap-in on real io_uring and real O_DIRECT files: round trips
// with every page verified, placement (priority, round-robin, clusters), one large
// write per contiguous run, checksum and I/O error detection through
// FaultyBlockDevice and on-disk corruption, free/reuse, swapon rules, and threads.
#include "swap/swap_pool.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "tests/swap/swap_test_util.hpp"

namespace swapvisor::swap {
namespace {

using test::kClusterBytes;
using test::Pages;

bool is(const Error& e, Errc c) { return e.code == make_error_code(c); }

// Records every op a FaultyBlockDevice sees (kind, offset, length).
struct OpLog {
    struct Op {
        io::IoKind kind;
        std::uint64_t offset;
        std::size_t len;
    };
    std::mutex mu;
    std::vector<Op> ops;
    void attach(io::FaultPlan& plan) {
        plan.add(io::FaultRule{io::FaultMatch::any, {}, {}, 0, {}, io::fault::Gate{[this](const io::BlockIo& io) {
                                   std::lock_guard lock(mu);
                                   ops.push_back(Op{io.kind, io.offset.value(), io.buf.size()});
                               }}});
    }
    std::vector<Op> take(io::IoKind kind) {
        std::lock_guard lock(mu);
        std::vector<Op> out;
        for (const Op& op : ops)
            if (op.kind == kind) out.push_back(op);
        ops.clear();
        return out;
    }
};

TEST(PrivilegedSwapPool, RoundTripOfManyPagesVerifiesEveryPage) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("swap0"), 0, 4 * kClusterBytes));
    constexpr std::size_t kN = 1500;
    Pages pages(kN);
    for (std::size_t i = 0; i < kN; ++i) test::fill_page(pages[i], i);
    std::vector<VSlot> v(kN);
    for (std::size_t first = 0; first < kN; first += 100) {
        auto batch = test::page_outs(pages, first, 100);
        ASSERT_TRUE(pool.write_out(ring, batch));
        for (std::size_t i = 0; i < batch.size(); ++i) {
            ASSERT_EQ(batch[i].error, std::nullopt);
            ASSERT_NE(batch[i].vslot, kNoVSlot);
            v[first + i] = batch[i].vslot;
        }
    }
    EXPECT_EQ(pool.allocated_vslots(), kN);
    EXPECT_EQ(pool.stats().at(0).used_slots, kN);

    Pages back(kN);
    for (std::size_t i = 0; i < kN; i += 2) {  // single reads
        ASSERT_TRUE(pool.read_in(ring, v[i], back[i])) << i;
        ASSERT_TRUE(test::verify_page(back[i], i)) << i;
        EXPECT_EQ(pool.owner_of(v[i]), std::optional<OwnerTag>(i));
    }
    std::vector<SwapPool::PageIn> in;  // batched reads, in reverse order
    for (std::size_t i = kN - 1; i < kN; i -= 2) in.push_back(SwapPool::PageIn{v[i], back[i]});
    ASSERT_TRUE(pool.read_in(ring, in));
    for (const auto& p : in) EXPECT_EQ(p.error, std::nullopt);
    for (std::size_t i = 1; i < kN; i += 2) ASSERT_TRUE(test::verify_page(back[i], i)) << i;

    for (VSlot s : v) pool.free(s);
    EXPECT_EQ(pool.allocated_vslots(), 0u);
    EXPECT_EQ(pool.stats().at(0).used_slots, 0u);
}

TEST(PrivilegedSwapPool, HighestPriorityFirstThenLower) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    auto low = pool.swapon(dir.file("low"), 5, kClusterBytes);
    auto high = pool.swapon(dir.file("high"), 10, kClusterBytes);
    ASSERT_TRUE(low && high);
    Pages pages(600);
    for (std::size_t i = 0; i < 600; ++i) test::fill_page(pages[i], i);
    auto batch = test::page_outs(pages, 0, 600);
    ASSERT_TRUE(pool.write_out(ring, batch));
    for (std::size_t i = 0; i < 600; ++i) {
        ASSERT_EQ(batch[i].error, std::nullopt);
        auto p = pool.pslot_of(batch[i].vslot);
        ASSERT_TRUE(p);
        if (i < kClusterSlots) {
            EXPECT_EQ(p->device, *high);
            EXPECT_EQ(p->slot.value(), i);  // contiguous from the start of the cluster
        } else {
            EXPECT_EQ(p->device, *low);
        }
    }
    auto stats = pool.stats();
    ASSERT_EQ(stats.size(), 2u);
    EXPECT_EQ(stats[0].priority, 10);
    EXPECT_EQ(stats[0].used_slots, kClusterSlots);
    EXPECT_EQ(stats[1].used_slots, 600 - kClusterSlots);
    Pages back(1);
    ASSERT_TRUE(pool.read_in(ring, batch[599].vslot, back[0]));
    EXPECT_TRUE(test::verify_page(back[0], 599));
}

TEST(PrivilegedSwapPool, RoundRobinAmongEqualPriorities) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 1, 2 * kClusterBytes));
    ASSERT_TRUE(pool.swapon(dir.file("b"), 1, 2 * kClusterBytes));
    Pages pages(8);
    std::vector<DeviceId> used;
    for (int round = 0; round < 6; ++round) {
        auto batch = test::page_outs(pages, 0, 8, round * 8);
        ASSERT_TRUE(pool.write_out(ring, batch));
        DeviceId dev = pool.pslot_of(batch[0].vslot)->device;
        for (std::size_t i = 0; i < 8; ++i) {  // a batch stays on one device, contiguous
            EXPECT_EQ(pool.pslot_of(batch[i].vslot)->device, dev);
            EXPECT_EQ(pool.pslot_of(batch[i].vslot)->slot.value(), pool.pslot_of(batch[0].vslot)->slot.value() + i);
        }
        used.push_back(dev);
    }
    for (std::size_t r = 1; r < used.size(); ++r) EXPECT_NE(used[r], used[r - 1]) << r;
    auto stats = pool.stats();
    EXPECT_EQ(stats[0].used_slots, 24u);
    EXPECT_EQ(stats[1].used_slots, 24u);
}

TEST(PrivilegedSwapPool, NoDeviceOrFullDeviceIsNoSpaceAndLeaksNothing) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    Pages pages(kClusterSlots + 3);
    auto one = test::page_outs(pages, 0, 1);
    auto r = pool.write_out(ring, one);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::no_space));
    EXPECT_EQ(one[0].error, Errc::no_space);
    EXPECT_EQ(pool.allocated_vslots(), 0u);

    ASSERT_TRUE(pool.swapon(dir.file("s"), 0, kClusterBytes));
    auto fill = test::page_outs(pages, 0, kClusterSlots);
    ASSERT_TRUE(pool.write_out(ring, fill));
    auto more = test::page_outs(pages, kClusterSlots, 3);
    r = pool.write_out(ring, more);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::no_space));
    for (auto& p : more) {
        EXPECT_EQ(p.error, Errc::no_space);
        EXPECT_EQ(p.vslot, kNoVSlot);
    }
    EXPECT_EQ(pool.allocated_vslots(), kClusterSlots);

    // Two free slots, three pages: two go out, one fails, the call succeeds.
    pool.free(fill[10].vslot);
    pool.free(fill[400].vslot);
    for (std::size_t i = 0; i < 3; ++i) test::fill_page(pages[kClusterSlots + i], 9000 + i);
    more = test::page_outs(pages, kClusterSlots, 3, 9000 - kClusterSlots);
    ASSERT_TRUE(pool.write_out(ring, more));
    EXPECT_EQ(more[0].error, std::nullopt);
    EXPECT_EQ(more[1].error, std::nullopt);
    EXPECT_EQ(more[2].error, Errc::no_space);
    EXPECT_EQ(more[2].vslot, kNoVSlot);
    EXPECT_EQ(pool.allocated_vslots(), kClusterSlots);
    std::set<std::uint32_t> reused{pool.pslot_of(more[0].vslot)->slot.value(), pool.pslot_of(more[1].vslot)->slot.value()};
    EXPECT_EQ(reused, (std::set<std::uint32_t>{10, 400}));
    Pages back(1);
    ASSERT_TRUE(pool.read_in(ring, more[1].vslot, back[0]));
    EXPECT_TRUE(test::verify_page(back[0], 9001));
}

TEST(PrivilegedSwapPool, ContiguousRunGoesOutAsOneLargeWrite) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    OpLog log;
    log.attach(*plan);
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("s"), 2 * kClusterBytes, plan), 0));
    Pages pages(128);
    for (std::size_t i = 0; i < 128; ++i) test::fill_page(pages[i], i);

    std::uint64_t submits = ring.submit_calls();
    auto batch = test::page_outs(pages, 0, 64);
    ASSERT_TRUE(pool.write_out(ring, batch));
    EXPECT_EQ(ring.submit_calls() - submits, 1u);
    auto ops = log.take(io::IoKind::write);
    ASSERT_EQ(ops.size(), 1u);
    EXPECT_EQ(ops[0].len, 64 * kSlotSize);
    EXPECT_EQ(ops[0].offset, kHeaderBytes);  // slot 0 follows the header page

    // Not contiguous in memory (every other page): one op per page.
    std::vector<PageOut> sparse;
    for (std::size_t i = 64; i < 128; i += 2) sparse.push_back(PageOut{pages[i], i});
    ASSERT_TRUE(pool.write_out(ring, sparse));
    EXPECT_EQ(log.take(io::IoKind::write).size(), 32u);

    // Reading the first run back into contiguous memory is one op too.
    Pages back(64);
    std::vector<SwapPool::PageIn> in;
    for (std::size_t i = 0; i < 64; ++i) in.push_back(SwapPool::PageIn{batch[i].vslot, back[i]});
    ASSERT_TRUE(pool.read_in(ring, in));
    auto reads = log.take(io::IoKind::read);
    ASSERT_EQ(reads.size(), 1u);
    EXPECT_EQ(reads[0].len, 64 * kSlotSize);
    for (std::size_t i = 0; i < 64; ++i) {
        EXPECT_EQ(in[i].error, std::nullopt);
        EXPECT_TRUE(test::verify_page(back[i], i)) << i;
    }
    for (const auto& p : sparse) {
        Pages one(1);
        ASSERT_TRUE(pool.read_in(ring, p.vslot, one[0]));
        EXPECT_TRUE(test::verify_page(one[0], p.owner));
    }
}

TEST(PrivilegedSwapPool, RunLengthIsCappedByConfig) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    OpLog log;
    log.attach(*plan);
    SwapPool pool(SwapPoolConfig{.swapoff_batch_pages = 32, .max_run_pages = 16});
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("s"), kClusterBytes, plan), 0));
    Pages pages(64);
    auto batch = test::page_outs(pages, 0, 64);
    ASSERT_TRUE(pool.write_out(ring, batch));
    auto ops = log.take(io::IoKind::write);
    ASSERT_EQ(ops.size(), 4u);
    for (const auto& op : ops) EXPECT_EQ(op.len, 16 * kSlotSize);
}

TEST(PrivilegedSwapPool, CorruptedSlotOnDiskIsAChecksumMismatch) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("s"), 0, kClusterBytes));
    Pages pages(10);
    for (std::size_t i = 0; i < 10; ++i) test::fill_page(pages[i], i);
    auto batch = test::page_outs(pages, 0, 10);
    ASSERT_TRUE(pool.write_out(ring, batch));
    test::corrupt_slot(dir.file("s"), pool.pslot_of(batch[5].vslot)->slot);

    Pages back(10);
    auto r = pool.read_in(ring, batch[5].vslot, back[5]);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::checksum_mismatch)) << r.error().message();

    std::vector<SwapPool::PageIn> in;
    for (std::size_t i = 0; i < 10; ++i) in.push_back(SwapPool::PageIn{batch[i].vslot, back[i]});
    ASSERT_TRUE(pool.read_in(ring, in));
    for (std::size_t i = 0; i < 10; ++i) {
        if (i == 5) {
            EXPECT_EQ(in[i].error, Errc::checksum_mismatch);
        } else {
            EXPECT_EQ(in[i].error, std::nullopt);
            EXPECT_TRUE(test::verify_page(back[i], i));
        }
    }
}

// PageOut::checksum (issue #18 item 2): a caller that hashed the page already hands
// the checksum down and write_out stores it instead of reading the page again. The
// pool trusts it, and every read still checks it: bytes that do not match what the
// caller hashed come back as checksum_mismatch, never as data.
TEST(PrivilegedSwapPool, ACallersChecksumIsStoredAndEveryReadChecksIt) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("s"), 0, kClusterBytes));
    Pages pages(4);
    for (std::size_t i = 0; i < 4; ++i) test::fill_page(pages[i], 50 + i);
    auto batch = test::page_outs(pages, 0, 4);
    for (std::size_t i = 0; i < 3; ++i) batch[i].checksum = page_checksum(pages[i]);
    // Page 3's checksum was taken before its bytes changed: stale.
    batch[3].checksum = page_checksum(pages[3]);
    test::fill_page(pages[3], 999);
    ASSERT_TRUE(pool.write_out(ring, batch));
    Pages back(4);
    for (std::size_t i = 0; i < 3; ++i) {
        ASSERT_TRUE(pool.read_in(ring, batch[i].vslot, back[i]));
        EXPECT_TRUE(test::verify_page(back[i], 50 + i));
    }
    auto r = pool.read_in(ring, batch[3].vslot, back[3]);
    ASSERT_FALSE(r) << "bytes that are not the ones hashed must never come back as data";
    EXPECT_TRUE(is(r.error(), Errc::checksum_mismatch)) << r.error().message();
}

TEST(PrivilegedSwapPool, WriteErrorsFailTheirPagesAndLeakNoSlot) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("s"), kClusterBytes, plan), 0));
    Pages pages(32);
    for (std::size_t i = 0; i < 32; ++i) test::fill_page(pages[i], i);

    // A whole run fails.
    auto eio = plan->add(io::FaultRule{io::FaultMatch::write, {}, {}, 0, 1, io::fault::Eio{}});
    auto batch = test::page_outs(pages, 0, 16);
    ASSERT_TRUE(pool.write_out(ring, batch));
    EXPECT_EQ(plan->hits(eio), 1u);
    for (auto& p : batch) {
        EXPECT_EQ(p.error, Errc::io_failed);
        EXPECT_EQ(p.vslot, kNoVSlot);
    }
    EXPECT_EQ(pool.allocated_vslots(), 0u);
    EXPECT_EQ(pool.stats()[0].used_slots, 0u);

    // Separate ops (every other page); only the one overlapping slot 16+3 fails, and
    // a torn (short) write is a failure too.
    std::vector<PageOut> sparse;
    for (std::size_t i = 0; i < 32; i += 2) sparse.push_back(PageOut{pages[i], i});
    auto fail_at = slot_offset(SlotIdx(16 + 3));
    plan->add(io::FaultRule{io::FaultMatch::write, fail_at, fail_at.offset_by(kSlotSize), 0, 1, io::fault::Eio{}});
    auto torn_at = slot_offset(SlotIdx(16 + 6));
    plan->add(io::FaultRule{io::FaultMatch::write, torn_at, torn_at.offset_by(kSlotSize), 0, 1, io::fault::ShortIo{512}});
    ASSERT_TRUE(pool.write_out(ring, sparse));
    std::size_t ok = 0;
    for (std::size_t i = 0; i < sparse.size(); ++i) {
        if (i == 3 || i == 6) {
            EXPECT_EQ(sparse[i].error, Errc::io_failed) << i;
            EXPECT_EQ(sparse[i].vslot, kNoVSlot);
        } else {
            EXPECT_EQ(sparse[i].error, std::nullopt) << i;
            Pages back(1);
            ASSERT_TRUE(pool.read_in(ring, sparse[i].vslot, back[0]));
            EXPECT_TRUE(test::verify_page(back[0], sparse[i].owner));
            ++ok;
        }
    }
    EXPECT_EQ(pool.allocated_vslots(), ok);
    EXPECT_EQ(pool.stats()[0].used_slots, ok);
}

TEST(PrivilegedSwapPool, ReadErrorIsIoFailedNeverData) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("s"), kClusterBytes, plan), 0));
    Pages pages(4);
    for (std::size_t i = 0; i < 4; ++i) test::fill_page(pages[i], i);
    auto batch = test::page_outs(pages, 0, 4);
    ASSERT_TRUE(pool.write_out(ring, batch));
    auto rule = plan->add(io::FaultRule{io::FaultMatch::read, {}, {}, 0, 1, io::fault::Eio{}});
    Pages back(4);
    auto r = pool.read_in(ring, batch[2].vslot, back[2]);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::io_failed));
    // The error says which page, device and slot it concerns.
    EXPECT_EQ(r.error().context, "device " + canonical_swap_path(dir.file("s")) + ", slot " +
                                     std::to_string(pool.pslot_of(batch[2].vslot)->slot.value()) + ", vslot " +
                                     std::to_string(batch[2].vslot.value()));
    EXPECT_EQ(plan->hits(rule), 1u);
    plan->add(io::FaultRule{io::FaultMatch::read, {}, {}, 0, 1, io::fault::ShortIo{1024}});
    r = pool.read_in(ring, batch[2].vslot, back[2]);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::io_failed));
    ASSERT_TRUE(pool.read_in(ring, batch[2].vslot, back[2]));  // rules used up
    EXPECT_TRUE(test::verify_page(back[2], 2));
}

// The bytes a device moved are counted where its I/O completes (SwapDevice's
// IoWatch): whole successful transfers only, by direction, next to the errors.
TEST(PrivilegedSwapPool, DeviceCountsBytesReadAndWrittenBySuccessfulOps) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("s"), kClusterBytes, plan), 0));
    EXPECT_EQ(pool.stats()[0].written_bytes, 0u) << "the header is written before the device is in the pool";
    Pages pages(8);
    for (std::size_t i = 0; i < 8; ++i) test::fill_page(pages[i], i);
    auto batch = test::page_outs(pages, 0, 8);
    ASSERT_TRUE(pool.write_out(ring, batch));
    EXPECT_EQ(pool.stats()[0].written_bytes, 8 * kSlotSize);
    EXPECT_EQ(pool.stats()[0].read_bytes, 0u);

    Pages back(1);
    ASSERT_TRUE(pool.read_in(ring, batch[1].vslot, back[0]));
    ASSERT_TRUE(pool.read_in(ring, batch[5].vslot, back[0]));
    EXPECT_EQ(pool.stats()[0].read_bytes, 2 * kSlotSize);
    // A failed read and a short one move nothing that counts.
    plan->add(io::FaultRule{io::FaultMatch::read, {}, {}, 0, 1, io::fault::Eio{}});
    EXPECT_FALSE(pool.read_in(ring, batch[2].vslot, back[0]));
    plan->add(io::FaultRule{io::FaultMatch::read, {}, {}, 0, 1, io::fault::ShortIo{1024}});
    EXPECT_FALSE(pool.read_in(ring, batch[2].vslot, back[0]));
    // A failed write: its page goes nowhere (one device), no bytes counted.
    plan->add(io::FaultRule{io::FaultMatch::write, {}, {}, 0, 1, io::fault::Eio{}});
    auto more = test::page_outs(pages, 0, 1);
    ASSERT_TRUE(pool.write_out(ring, more));
    EXPECT_FALSE(more[0].ok());
    DeviceStats d = pool.stats()[0];
    EXPECT_EQ(d.read_bytes, 2 * kSlotSize);
    EXPECT_EQ(d.written_bytes, 8 * kSlotSize);
    EXPECT_EQ(d.read_errors, 2u);
    EXPECT_EQ(d.write_errors, 1u);
}

TEST(PrivilegedSwapPool, FreedVSlotIsStaleAndItsSlotIsReused) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("s"), 0, kClusterBytes));
    Pages pages(kClusterSlots);
    auto batch = test::page_outs(pages, 0, kClusterSlots);
    ASSERT_TRUE(pool.write_out(ring, batch));
    VSlot gone = batch[77].vslot;
    SlotIdx slot = pool.pslot_of(gone)->slot;
    pool.free(gone);
    pool.free(kNoVSlot);  // no-op
    EXPECT_FALSE(pool.owner_of(gone));
    EXPECT_FALSE(pool.pslot_of(gone));
    Pages back(1);
    auto r = pool.read_in(ring, gone, back[0]);
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), Errc::stale_slot));
    EXPECT_EQ(r.error().context, "vslot " + std::to_string(gone.value()));  // no place any more
    EXPECT_EQ(pool.stats()[0].used_slots, kClusterSlots - 1);

    test::fill_page(pages[0], 4242);
    std::vector<PageOut> again{PageOut{pages[0], 4242}};
    ASSERT_TRUE(pool.write_out(ring, again));
    EXPECT_EQ(pool.pslot_of(again[0].vslot)->slot, slot);
    ASSERT_TRUE(pool.read_in(ring, again[0].vslot, back[0]));
    EXPECT_TRUE(test::verify_page(back[0], 4242));
    EXPECT_EQ(pool.owner_of(again[0].vslot), std::optional<OwnerTag>(4242));
}

TEST(PrivilegedSwapPool, SwaponCreatesRejectsDuplicatesAndTooSmall) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    auto id = pool.swapon(dir.file("s"), 3, 3 * kClusterBytes);
    ASSERT_TRUE(id) << id.error().message();
    // size= is the swap space: the file is one header page larger.
    EXPECT_EQ(std::filesystem::file_size(dir.file("s")), 3 * kClusterBytes + kHeaderBytes);
    auto dup = pool.swapon(dir.path() / "." / "s", 3, 3 * kClusterBytes);
    ASSERT_FALSE(dup);
    EXPECT_TRUE(is(dup.error(), Errc::exists));
    EXPECT_NE(dup.error().message().find(canonical_swap_path(dir.file("s"))), std::string::npos) << dup.error().message();
    // A second open of the file is refused by the pool's lock on it.
    auto dup2 = io::FileBlockDevice::open(dir.file("s"), io::OpenMode::existing);
    ASSERT_FALSE(dup2);
    EXPECT_EQ(dup2.error().code, make_error_code(io::Errc::in_use)) << dup2.error().message();
    EXPECT_EQ(pool.find_device(dir.file("s")), std::optional(*id));

    // An existing swapvisor device is used as it is when no size is given.
    ASSERT_TRUE(pool.swapon(dir.file("old"), 0, 2 * kClusterBytes));
    ASSERT_TRUE(pool.swapoff(dir.file("old"), ring));
    ASSERT_TRUE(pool.swapon(dir.file("old"), 0, 0));
    EXPECT_EQ(std::filesystem::file_size(dir.file("old")), 2 * kClusterBytes + kHeaderBytes);

    auto small = pool.swapon(dir.file("small"), 0, kClusterBytes - kSlotSize);
    ASSERT_FALSE(small);
    EXPECT_EQ(small.error().code, make_error_code(io::Errc::too_small)) << small.error().message();
    ASSERT_TRUE(test::open_file(dir.file("small2"), kClusterBytes / 2));
    small = pool.swapon(dir.file("small2"), 0, 0, Format::yes);
    ASSERT_FALSE(small);
    EXPECT_EQ(small.error().code, make_error_code(io::Errc::too_small));
    EXPECT_FALSE(pool.swapon(dir.file("missing"), 0, 0));

    auto stats = pool.stats();
    ASSERT_EQ(stats.size(), 2u);
    EXPECT_EQ(stats[0].path, std::filesystem::weakly_canonical(dir.file("s")).string());
    EXPECT_EQ(stats[0].total_slots, 3u * kClusterSlots);
    EXPECT_EQ(stats[1].total_slots, 2u * kClusterSlots);
    EXPECT_FALSE(stats[0].removing);
}

TEST(PrivilegedSwapPool, ThreadsWriteReadAndFreeConcurrently) {
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a"), 0, 2 * kClusterBytes));
    ASSERT_TRUE(pool.swapon(dir.file("b"), 0, 2 * kClusterBytes));
    constexpr int kThreads = 3;
    std::atomic<int> failures{0};
    std::atomic<bool> skipped{false};
    std::vector<std::vector<VSlot>> kept(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            auto ring = io::Ring::create(32);
            if (!ring) {
                skipped = true;
                return;
            }
            Pages pages(16), back(16);
            for (int round = 0; round < 40; ++round) {
                std::uint64_t base = (std::uint64_t(t) << 32) | (std::uint64_t(round) << 8);
                for (std::size_t i = 0; i < 16; ++i) test::fill_page(pages[i], base + i);
                auto batch = test::page_outs(pages, 0, 16, base);
                if (!pool.write_out(*ring, batch)) {
                    failures++;
                    continue;
                }
                std::vector<SwapPool::PageIn> in;
                for (std::size_t i = 0; i < 16; ++i) {
                    if (!batch[i].ok()) failures++;
                    else in.push_back(SwapPool::PageIn{batch[i].vslot, back[i]});
                }
                if (!pool.read_in(*ring, in)) failures++;
                for (std::size_t i = 0; i < in.size(); ++i) {
                    if (!in[i].ok() || !test::verify_page(back[i], base + i)) failures++;
                    if (i % 2 == 0) pool.free(in[i].vslot);
                    else kept[t].push_back(in[i].vslot);
                }
            }
        });
    }
    for (auto& th : threads) th.join();
    if (skipped) GTEST_SKIP() << "*** io_uring is unavailable here: this test did NOT run ***";
    EXPECT_EQ(failures.load(), 0);
    std::size_t live = 0;
    for (auto& k : kept) live += k.size();
    EXPECT_EQ(pool.allocated_vslots(), live);
    std::uint64_t used = 0;
    for (auto& s : pool.stats()) used += s.used_slots;
    EXPECT_EQ(used, live);
    for (auto& k : kept)
        for (VSlot v : k) pool.free(v);
    EXPECT_EQ(pool.allocated_vslots(), 0u);
}

}  // namespace
}  // namespace swapvisor::swap

namespace swapvisor::swap {
namespace {

// Issue #12: the same file reached by another name is the same device.
TEST(PrivilegedSwapPool, SameDeviceByAnyNameIsRefusedNamingBoth) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("a.swap"), 0, 2 * kClusterBytes));
    const std::string a = std::filesystem::canonical(dir.file("a.swap")).string();

    std::filesystem::create_hard_link(dir.file("a.swap"), dir.file("hard.swap"));
    auto hard = pool.swapon(dir.file("hard.swap"), 0, 0);
    ASSERT_FALSE(hard) << "a hard link of a device in the pool was accepted";
    EXPECT_TRUE(is(hard.error(), Errc::exists)) << hard.error().message();
    EXPECT_NE(hard.error().message().find(a), std::string::npos) << hard.error().message();
    EXPECT_NE(hard.error().message().find("hard.swap"), std::string::npos) << hard.error().message();

    std::filesystem::create_symlink(dir.file("a.swap"), dir.file("sym.swap"));
    auto sym = pool.swapon(dir.file("sym.swap"), 0, 0);
    ASSERT_FALSE(sym);
    EXPECT_TRUE(is(sym.error(), Errc::exists)) << sym.error().message();

    // Any name finds it, and swapoff by the hard link's name removes it.
    EXPECT_TRUE(pool.find_device(dir.file("hard.swap")).has_value());
    auto off = pool.swapoff(dir.file("hard.swap"), ring);
    ASSERT_TRUE(off) << off.error().message();
    EXPECT_TRUE(pool.stats().empty());
}

// Issue #12: `swapon rel.swap` stores an absolute name; both names work afterwards.
TEST(PrivilegedSwapPool, RelativePathIsStoredAbsoluteAndEitherNameWorks) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    const auto cwd = std::filesystem::current_path();
    std::filesystem::current_path(dir.path());
    struct Restore {
        std::filesystem::path p;
        ~Restore() { std::filesystem::current_path(p); }
    } restore{cwd};

    ASSERT_TRUE(pool.swapon("rel.swap", 0, 2 * kClusterBytes));
    const std::string abs = std::filesystem::canonical(dir.file("rel.swap")).string();
    ASSERT_EQ(pool.stats().size(), 1u);
    EXPECT_EQ(pool.stats()[0].path, abs);
    auto again = pool.swapon(abs, 0, 0);
    ASSERT_FALSE(again);
    EXPECT_TRUE(is(again.error(), Errc::exists));
    EXPECT_TRUE(pool.find_device("rel.swap").has_value());
    EXPECT_TRUE(pool.find_device(abs).has_value());
    ASSERT_TRUE(pool.swapoff("./rel.swap", ring));
    ASSERT_TRUE(pool.swapon("rel.swap", 0, 0));
    ASSERT_TRUE(pool.swapoff(abs, ring));
}

// Issue #12: a file of user data is not a swap device unless the operator says so.
TEST(PrivilegedSwapPool, ExistingFileWithoutSignatureIsRefusedAndUntouched) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    const std::string precious(3 * kClusterBytes, 'p');
    {
        std::ofstream out(dir.file("precious.dat"), std::ios::binary);
        out << precious;
    }
    SwapPool pool;
    auto r = pool.swapon(dir.file("precious.dat"), 0, 0);
    ASSERT_FALSE(r) << "a file without a swap signature was accepted";
    EXPECT_TRUE(is(r.error(), Errc::no_signature)) << r.error().message();
    EXPECT_NE(r.error().message().find("precious.dat"), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find("mkswap"), std::string::npos) << r.error().message();
    std::ifstream in(dir.file("precious.dat"), std::ios::binary);
    std::string back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(back, precious);

    // format=yes formats only a blank device (issue #17: one rule with mkswap,
    // swap/data_probe.hpp): this one holds data, and stays as it was.
    auto refused = pool.swapon(dir.file("precious.dat"), 0, 0, Format::yes);
    ASSERT_FALSE(refused) << "format=yes erased a file of data";
    EXPECT_TRUE(is(refused.error(), Errc::holds_data)) << refused.error().message();
    EXPECT_NE(refused.error().message().find("non-zero bytes"), std::string::npos) << refused.error().message();
    {
        std::ifstream again(dir.file("precious.dat"), std::ios::binary);
        EXPECT_EQ(std::string((std::istreambuf_iterator<char>(again)), std::istreambuf_iterator<char>()), precious);
    }
    // format=force: the operator erases it on purpose.
    auto formatted = pool.swapon(dir.file("precious.dat"), 0, 0, Format::force);
    ASSERT_TRUE(formatted) << formatted.error().message();
    EXPECT_EQ(pool.stats()[0].total_slots, 3u * kClusterSlots - 1);
}

// Issue #12: size= that disagrees with an existing device is an error, not ignored.
TEST(PrivilegedSwapPool, SizeThatDisagreesWithAnExistingDeviceIsAnError) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("s"), 0, 2 * kClusterBytes));
    ASSERT_TRUE(pool.swapoff(dir.file("s"), ring));
    auto bigger = pool.swapon(dir.file("s"), 0, 64 * kClusterBytes);
    ASSERT_FALSE(bigger) << "size= of an existing device was silently ignored";
    EXPECT_TRUE(is(bigger.error(), Errc::size_mismatch)) << bigger.error().message();
    EXPECT_TRUE(pool.swapon(dir.file("s"), 0, 2 * kClusterBytes));
}

// Issue #12: a second owner (another swapvisor) of a swap file is refused.
TEST(PrivilegedSwapPool, SecondPoolCannotTakeAFileInUse) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool first, second;
    ASSERT_TRUE(first.swapon(dir.file("s"), 0, 2 * kClusterBytes));
    auto r = second.swapon(dir.file("s"), 0, 0);
    ASSERT_FALSE(r) << "two owners of one swap file";
    EXPECT_EQ(r.error().code, make_error_code(io::Errc::in_use)) << r.error().message();
    ASSERT_TRUE(first.swapoff(dir.file("s"), ring));  // lock released with the device
    EXPECT_TRUE(second.swapon(dir.file("s"), 0, 0));
}

// Issue #12: ENOSPC from a device marks it failed and names it; swap-out goes on
// on the other devices, and the counters show it.
TEST(PrivilegedSwapPool, EnospcMarksTheDeviceFailedAndSwapOutGoesElsewhere) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    plan->add(io::FaultRule{io::FaultMatch::write, {}, {}, 0, {}, io::fault::Enospc{}});
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("sparse"), 2 * kClusterBytes, plan), 10));
    ASSERT_TRUE(pool.swapon(dir.file("other"), 0, 2 * kClusterBytes));
    Pages pages(64);
    for (std::size_t i = 0; i < pages.size(); ++i) test::fill_page(pages[i], i);

    auto first = test::page_outs(pages, 0, 32);
    ASSERT_TRUE(pool.write_out(ring, first));  // failed on the full device, written on the other at once
    for (auto& p : first) {
        ASSERT_TRUE(p.ok()) << "a failed write must be retried on the next device";
        EXPECT_EQ(pool.pslot_of(p.vslot)->device, DeviceId(1));
    }
    auto stats = pool.stats();
    ASSERT_EQ(stats.size(), 2u);
    EXPECT_EQ(stats[0].state, DeviceState::failed);
    EXPECT_GT(stats[0].write_errors, 0u);
    EXPECT_NE(stats[0].failure.find("sparse"), std::string::npos) << stats[0].failure;
    EXPECT_NE(stats[0].failure.find("No space left"), std::string::npos) << stats[0].failure;
    EXPECT_EQ(stats[1].state, DeviceState::active);

    auto second = test::page_outs(pages, 32, 32);
    ASSERT_TRUE(pool.write_out(ring, second));
    for (auto& p : second) {
        ASSERT_TRUE(p.ok()) << "reclaim stays stuck on the full device";
        EXPECT_EQ(pool.pslot_of(p.vslot)->device, DeviceId(1));
    }
    EXPECT_EQ(pool.stats()[0].used_slots, 0u);
    // A failed device can still be removed.
    ASSERT_TRUE(pool.swapoff(dir.file("sparse"), ring));
}

// Issue #9: the top-priority device fails every write (EIO). Each batch is written
// on the next device at once, the failed slots are quarantined (never handed out
// again), the device becomes degraded after DeviceHealthPolicy::degrade_after failed
// I/Os in a row and then gets no batch at all; what it holds stays readable.
TEST(PrivilegedSwapPool, FailingTopDeviceFailsOverQuarantinesAndDegrades) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    SwapPool pool(SwapPoolConfig{.health = DeviceHealthPolicy{.degrade_after = 4}});
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("top"), 2 * kClusterBytes, plan), 10));
    ASSERT_TRUE(pool.swapon(dir.file("next"), 0, 2 * kClusterBytes));
    Pages pages(256);
    for (std::size_t i = 0; i < pages.size(); ++i) test::fill_page(pages[i], i);
    // One page reaches the top device before it starts failing: it must stay readable.
    auto early = test::page_outs(pages, 0, 1);
    ASSERT_TRUE(pool.write_out(ring, early));
    ASSERT_EQ(pool.pslot_of(early[0].vslot)->device, DeviceId(0));
    auto eio = plan->add(io::FaultRule{io::FaultMatch::write, {}, {}, 0, {}, io::fault::Eio{}});

    std::vector<VSlot> live{early[0].vslot};
    std::uint64_t failed_in_first_batch = 0;
    for (std::size_t first = 1; first < 256; first += 15) {
        // Scattered pages: each one its own write, so each failure counts.
        std::vector<PageOut> batch;
        for (std::size_t i = first; i < std::min<std::size_t>(first + 15, 256); i += 2) batch.push_back(PageOut{pages[i], i});
        ASSERT_TRUE(pool.write_out(ring, batch));
        for (auto& p : batch) {
            ASSERT_TRUE(p.ok()) << "page " << p.owner << ": reclaim made no progress";
            EXPECT_EQ(pool.pslot_of(p.vslot)->device, DeviceId(1));
            live.push_back(p.vslot);
        }
        if (first == 1) {
            // 8 separate writes failed: at least degrade_after in a row.
            failed_in_first_batch = plan->hits(eio);
            EXPECT_EQ(failed_in_first_batch, batch.size());
            EXPECT_EQ(pool.stats()[0].state, DeviceState::degraded);
        }
    }
    auto stats = pool.stats();
    EXPECT_EQ(stats[0].state, DeviceState::degraded);
    EXPECT_NE(stats[0].failure.find("in a row"), std::string::npos) << stats[0].failure;
    EXPECT_EQ(stats[0].write_errors, failed_in_first_batch) << "a degraded device gets no more writes";
    EXPECT_EQ(plan->hits(eio), failed_in_first_batch);
    EXPECT_EQ(stats[0].quarantined_slots, failed_in_first_batch);
    EXPECT_EQ(stats[0].used_slots, 1u);
    EXPECT_EQ(stats[1].state, DeviceState::active);
    EXPECT_EQ(pool.allocated_vslots(), live.size());
    Pages back(1);
    for (VSlot v : live) {
        ASSERT_TRUE(pool.read_in(ring, v, back[0]));
        EXPECT_TRUE(test::verify_page(back[0], *pool.owner_of(v)));
    }
    // Degraded: still removable, and it moves what it holds.
    auto off = pool.swapoff(dir.file("top"), ring);
    ASSERT_TRUE(off) << off.error().message();
    EXPECT_EQ(off->pages_moved, 1u);
}

// A slot whose write failed is never handed out again, even on a device that is
// otherwise healthy (one failure does not degrade it).
TEST(PrivilegedSwapPool, SlotWhoseWriteFailedIsQuarantined) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    auto plan = std::make_shared<io::FaultPlan>();
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(test::faulty_file(dir.file("s"), kClusterBytes, plan), 0));
    Pages pages(1);
    test::fill_page(pages[0], 1);
    plan->add(io::FaultRule{io::FaultMatch::write, {}, {}, 0, 1, io::fault::Eio{}});
    std::vector<PageOut> one{PageOut{pages[0], 1}};
    ASSERT_TRUE(pool.write_out(ring, one));
    EXPECT_EQ(one[0].error, Errc::io_failed);  // no other device to retry on
    EXPECT_EQ(pool.stats()[0].quarantined_slots, 1u);
    EXPECT_EQ(pool.stats()[0].state, DeviceState::active);
    // Fill every other slot: the device is full with one slot fewer, and never
    // hands out the bad one.
    std::set<std::uint32_t> seen;
    for (std::uint32_t i = 0; i < kClusterSlots; ++i) {
        std::vector<PageOut> p{PageOut{pages[0], i}};
        ASSERT_TRUE(pool.write_out(ring, p) || i == kClusterSlots - 1);
        if (i < kClusterSlots - 1) {
            ASSERT_TRUE(p[0].ok()) << i;
            seen.insert(pool.pslot_of(p[0].vslot)->slot.value());
        } else {
            EXPECT_EQ(p[0].error, Errc::no_space);
        }
    }
    EXPECT_EQ(seen.size(), kClusterSlots - 1u);
    EXPECT_FALSE(seen.contains(0u)) << "the slot that failed (slot 0) was handed out again";
}

}  // namespace
}  // namespace swapvisor::swap
