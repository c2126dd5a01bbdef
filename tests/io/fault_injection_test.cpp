// FaultPlan + FaultyBlockDevice over a real FileBlockDevice on a /tmp file (and over
// a loop block device where losetup works): every action, rule matching (kind,
// offset range, skip, times), hit counting across threads, gates that hold an I/O
// while another thread looks, and reordered issue.
#include "io/fault_injection.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <thread>

#include "tests/io/io_test_util.hpp"

namespace swapvisor::io {
namespace {

using test::fill_pattern;
using test::first_mismatch;

constexpr std::uint32_t kBlock = 4096;
constexpr std::uint64_t kSize = 64 * kBlock;

BlockIo block_io(IoKind kind, std::uint64_t off, std::span<std::byte> buf) {
    return BlockIo{kind, DevOffset{off}, buf};
}

FaultRule rule(FaultMatch m, FaultAction a) {
    FaultRule r;
    r.match = m;
    r.action = std::move(a);
    return r;
}

class Faulty : public ::testing::Test {
protected:
    void SetUp() override {
        auto r = Ring::create(32);
        if (!r && test::io_uring_absent(r.error()))
            GTEST_SKIP() << "*** io_uring is unavailable here (" << r.error().message() << "): this test did NOT run ***";
        ASSERT_TRUE(r) << r.error().message();
        ring_.emplace(std::move(*r));
        path_ = dir_.file("faulty.img");
        auto d = FileBlockDevice::open(path_, OpenMode::create_or_open, kSize);
        ASSERT_TRUE(d) << d.error().message();
        plan_ = std::make_shared<FaultPlan>();
        dev_ = std::make_unique<FaultyBlockDevice>(std::move(*d), plan_);
        buf_ = test::aligned_buffer(16 * kBlock);
    }

    // Writes `blocks` blocks of pattern `seed` at `block` through the inner device,
    // bypassing the plan.
    void prefill(std::uint64_t block, std::uint64_t blocks, std::uint32_t seed) {
        Mapping m = test::aligned_buffer(blocks * kBlock);
        fill_pattern(m.span(), block * kBlock, seed);
        std::vector<BlockIo> w{block_io(IoKind::write, block * kBlock, m.span())};
        ASSERT_TRUE(dev_->inner().submit(*ring_, w));
        ASSERT_EQ(w[0].result, static_cast<int>(blocks * kBlock));
    }

    // -1 when the file holds pattern `seed` over those blocks.
    long file_mismatch(std::uint64_t block, std::uint64_t blocks, std::uint32_t seed) {
        auto bytes = test::read_file(path_);
        if (bytes.size() != kSize) return -2;
        return first_mismatch(std::span(bytes).subspan(block * kBlock, blocks * kBlock), block * kBlock, seed);
    }

    std::span<std::byte> block_buf(std::size_t i, std::size_t n = 1) { return buf_.span().subspan(i * kBlock, n * kBlock); }

    test::TempDir dir_;
    std::filesystem::path path_;
    std::optional<Ring> ring_;
    std::shared_ptr<FaultPlan> plan_;
    std::unique_ptr<FaultyBlockDevice> dev_;
    Mapping buf_;
};

TEST_F(Faulty, WithoutRulesItIsTheInnerDevice) {
    EXPECT_EQ(dev_->size_bytes(), kSize);
    EXPECT_EQ(dev_->logical_block_size(), kBlock);
    EXPECT_EQ(dev_->path(), path_.string());
    fill_pattern(block_buf(0, 4), 0, 1);
    std::vector<BlockIo> w{block_io(IoKind::write, 0, block_buf(0, 4))};
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(w[0].result, static_cast<int>(4 * kBlock));
    ASSERT_TRUE(dev_->flush(*ring_));
    EXPECT_EQ(file_mismatch(0, 4, 1), -1);
}

TEST_F(Faulty, EioWriteIsNotIssuedAndOthersProceed) {
    prefill(0, 2, 1);
    auto id = plan_->add([] {
        FaultRule r = rule(FaultMatch::write, fault::Eio{});
        r.times = 1;
        return r;
    }());
    fill_pattern(block_buf(0, 2), 0, 2);
    std::vector<BlockIo> w{block_io(IoKind::write, 0, block_buf(0)), block_io(IoKind::write, kBlock, block_buf(1))};
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(w[0].result, -EIO);
    EXPECT_EQ(w[1].result, static_cast<int>(kBlock));
    EXPECT_EQ(plan_->hits(id), 1u);
    EXPECT_EQ(plan_->matches(id), 2u);
    EXPECT_EQ(file_mismatch(0, 1, 1), -1) << "the failed write must not reach the device";
    EXPECT_EQ(file_mismatch(1, 1, 2), -1);
    auto st = io_status(w[0], "swap-out write");
    ASSERT_FALSE(st);
    EXPECT_TRUE(st.error().is(std::errc::io_error));
}

TEST_F(Faulty, EnospcWrite) {
    auto id = plan_->add(rule(FaultMatch::write, fault::Enospc{}));
    std::vector<BlockIo> w{block_io(IoKind::write, 0, block_buf(0))};
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(w[0].result, -ENOSPC);
    EXPECT_TRUE(io_status(w[0], "w").error().is(std::errc::no_space_on_device));
    EXPECT_EQ(plan_->hits(id), 1u);
    // Reads are not matched by a write rule.
    std::vector<BlockIo> r{block_io(IoKind::read, 0, block_buf(1))};
    ASSERT_TRUE(dev_->submit(*ring_, r));
    EXPECT_EQ(r[0].result, static_cast<int>(kBlock));
    EXPECT_EQ(plan_->matches(id), 1u);
}

TEST_F(Faulty, EioReadLeavesTheBufferUntouched) {
    prefill(3, 1, 3);
    auto id = plan_->add(rule(FaultMatch::read, fault::Eio{}));
    std::fill(block_buf(0).begin(), block_buf(0).end(), std::byte{0xa5});
    std::vector<BlockIo> r{block_io(IoKind::read, 3 * kBlock, block_buf(0))};
    ASSERT_TRUE(dev_->submit(*ring_, r));
    EXPECT_EQ(r[0].result, -EIO);
    for (std::byte b : block_buf(0)) ASSERT_EQ(b, std::byte{0xa5});
    EXPECT_EQ(plan_->hits(id), 1u);
}

TEST_F(Faulty, SkipThenApplyTimes) {
    auto id = plan_->add([] {
        FaultRule r = rule(FaultMatch::any, fault::Eio{});
        r.skip = 2;
        r.times = 1;
        return r;
    }());
    std::vector<BlockIo> w;
    for (std::size_t i = 0; i < 5; ++i) w.push_back(block_io(IoKind::write, i * kBlock, block_buf(i)));
    ASSERT_TRUE(dev_->submit(*ring_, w));
    for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(w[i].result, i == 2 ? -EIO : static_cast<int>(kBlock)) << i;
    ASSERT_TRUE(dev_->submit(*ring_, w));
    for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(w[i].result, static_cast<int>(kBlock)) << i;
    EXPECT_EQ(plan_->hits(id), 1u);
    EXPECT_EQ(plan_->matches(id), 10u);
}

TEST_F(Faulty, OffsetRangeMatchesOverlappingOpsOnly) {
    auto id = plan_->add([] {
        FaultRule r = rule(FaultMatch::any, fault::Eio{});
        r.begin = DevOffset{10 * kBlock};
        r.end = DevOffset{12 * kBlock};
        return r;
    }());
    std::vector<BlockIo> ios{
        block_io(IoKind::write, 8 * kBlock, block_buf(0, 2)),   // [8,10): no
        block_io(IoKind::write, 10 * kBlock, block_buf(2)),     // yes
        block_io(IoKind::read, 11 * kBlock, block_buf(3, 2)),   // [11,13): overlaps
        block_io(IoKind::write, 12 * kBlock, block_buf(5)),     // no
        block_io(IoKind::read, 9 * kBlock, block_buf(6, 4)),    // [9,13): covers it
    };
    ASSERT_TRUE(dev_->submit(*ring_, ios));
    EXPECT_EQ(ios[0].result, static_cast<int>(2 * kBlock));
    EXPECT_EQ(ios[1].result, -EIO);
    EXPECT_EQ(ios[2].result, -EIO);
    EXPECT_EQ(ios[3].result, static_cast<int>(kBlock));
    EXPECT_EQ(ios[4].result, -EIO);
    EXPECT_EQ(plan_->hits(id), 3u);
    // A ranged rule never matches a flush.
    EXPECT_TRUE(dev_->flush(*ring_));
}

TEST_F(Faulty, ShortWriteTearsTheWriteAndReportsFailure) {
    prefill(0, 4, 4);
    auto id = plan_->add(rule(FaultMatch::write, fault::ShortIo{kBlock + 100}));
    fill_pattern(block_buf(0, 4), 0, 5);
    std::vector<BlockIo> w{block_io(IoKind::write, 0, block_buf(0, 4))};
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(w[0].result, -EIO);
    EXPECT_EQ(plan_->hits(id), 1u);
    EXPECT_EQ(file_mismatch(0, 1, 5), -1) << "the prefix (one whole block) is really written";
    EXPECT_EQ(file_mismatch(1, 3, 4), -1) << "the rest keeps the old data";
}

TEST_F(Faulty, ShortReadFillsOnlyThePrefix) {
    prefill(0, 4, 6);
    plan_->add(rule(FaultMatch::read, fault::ShortIo{2 * kBlock}));
    std::fill(block_buf(0, 4).begin(), block_buf(0, 4).end(), std::byte{0x5a});
    std::vector<BlockIo> r{block_io(IoKind::read, 0, block_buf(0, 4))};
    ASSERT_TRUE(dev_->submit(*ring_, r));
    EXPECT_EQ(r[0].result, -EIO);
    EXPECT_EQ(first_mismatch(block_buf(0, 2), 0, 6), -1);
    for (std::byte b : block_buf(2, 2)) ASSERT_EQ(b, std::byte{0x5a});
}

TEST_F(Faulty, DelayRunsAndTheOpSucceeds) {
    auto id = plan_->add(rule(FaultMatch::any, fault::Delay{std::chrono::microseconds(2000)}));
    fill_pattern(block_buf(0), 0, 7);
    std::vector<BlockIo> w{block_io(IoKind::write, 0, block_buf(0))};
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(w[0].result, static_cast<int>(kBlock));
    EXPECT_EQ(plan_->hits(id), 1u);
    EXPECT_EQ(file_mismatch(0, 1, 7), -1);
}

TEST_F(Faulty, DelayThenEioBothApply) {
    auto delay = plan_->add(rule(FaultMatch::write, fault::Delay{std::chrono::microseconds(100)}));
    auto eio = plan_->add(rule(FaultMatch::write, fault::Eio{}));
    std::vector<BlockIo> w{block_io(IoKind::write, 0, block_buf(0))};
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(w[0].result, -EIO);
    EXPECT_EQ(plan_->hits(delay), 1u);
    EXPECT_EQ(plan_->hits(eio), 1u);
}

TEST_F(Faulty, FirstTerminalRuleWins) {
    auto enospc = plan_->add(rule(FaultMatch::write, fault::Enospc{}));
    auto eio = plan_->add(rule(FaultMatch::write, fault::Eio{}));
    std::vector<BlockIo> w{block_io(IoKind::write, 0, block_buf(0))};
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(w[0].result, -ENOSPC);
    EXPECT_EQ(plan_->hits(enospc), 1u);
    EXPECT_EQ(plan_->matches(eio), 0u);
}

TEST_F(Faulty, GateHoldsAnIoWhileAnotherThreadObservesIt) {
    prefill(5, 1, 8);
    std::promise<DevOffset> entered;
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    auto id = plan_->add([&] {
        FaultRule r = rule(FaultMatch::write, fault::Gate{[&](const BlockIo& io) {
            entered.set_value(io.offset);
            released.wait();
        }});
        r.times = 1;
        return r;
    }());

    std::atomic<bool> done{false};
    Result<void> ran;
    std::vector<BlockIo> w{block_io(IoKind::write, 5 * kBlock, block_buf(0))};
    fill_pattern(block_buf(0), 5 * kBlock, 9);
    std::thread io_thread([&] {
        auto ring = Ring::create(4);  // a Ring belongs to one thread: this one has its own
        if (!ring) {
            ran = std::unexpected(ring.error());
        } else {
            ran = dev_->submit(*ring, w);
        }
        done = true;
    });

    auto f = entered.get_future();
    EXPECT_EQ(f.get(), DevOffset{5 * kBlock});  // the hook sees the op it holds
    EXPECT_FALSE(done.load());
    EXPECT_EQ(file_mismatch(5, 1, 8), -1) << "a gated write must not be issued yet";
    release.set_value();
    io_thread.join();
    ASSERT_TRUE(done.load());
    ASSERT_TRUE(ran) << ran.error().message();
    EXPECT_EQ(w[0].result, static_cast<int>(kBlock));
    EXPECT_EQ(file_mismatch(5, 1, 9), -1);
    EXPECT_EQ(plan_->hits(id), 1u);
}

class IssueOrder {
public:
    FaultAction gate() {
        return fault::Gate{[this](const BlockIo& io) {
            std::lock_guard lock(mu_);
            order_.push_back(io.offset.value() / kBlock);
        }};
    }
    std::vector<std::uint64_t> take() {
        std::lock_guard lock(mu_);
        return std::exchange(order_, {});
    }

private:
    std::mutex mu_;  // Protects: order_; Order: leaf
    std::vector<std::uint64_t> order_;
};

TEST_F(Faulty, ReorderIssuesTheBatchLastOpFirst) {
    IssueOrder order;
    plan_->add(rule(FaultMatch::write, order.gate()));
    std::vector<BlockIo> w;
    for (std::size_t i = 0; i < 4; ++i) w.push_back(block_io(IoKind::write, i * kBlock, block_buf(i)));

    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(order.take(), (std::vector<std::uint64_t>{0, 1, 2, 3}));

    auto reorder = plan_->add([] {
        FaultRule r = rule(FaultMatch::write, fault::Reorder{});
        r.times = 1;
        return r;
    }());
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(order.take(), (std::vector<std::uint64_t>{3, 2, 1, 0}));
    for (const BlockIo& io : w) EXPECT_EQ(io.result, static_cast<int>(kBlock));
    EXPECT_EQ(plan_->hits(reorder), 1u);  // once per batch, not per op
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(order.take(), (std::vector<std::uint64_t>{0, 1, 2, 3}));
}

TEST_F(Faulty, ReorderMakesAnEarlierWriteLandLast) {
    // Two writes to the same block in one batch: issued in reverse, one at a time, so
    // the first op's data is what stays on the device.
    plan_->add(rule(FaultMatch::write, fault::Reorder{}));
    fill_pattern(block_buf(0), 7 * kBlock, 10);
    fill_pattern(block_buf(1), 7 * kBlock, 11);
    std::vector<BlockIo> w{block_io(IoKind::write, 7 * kBlock, block_buf(0)),
                           block_io(IoKind::write, 7 * kBlock, block_buf(1))};
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(w[0].result, static_cast<int>(kBlock));
    EXPECT_EQ(w[1].result, static_cast<int>(kBlock));
    EXPECT_EQ(file_mismatch(7, 1, 10), -1);
}

TEST_F(Faulty, FlushFaults) {
    auto id = plan_->add([] {
        FaultRule r = rule(FaultMatch::flush, fault::Eio{});
        r.times = 1;
        return r;
    }());
    auto r = dev_->flush(*ring_);
    ASSERT_FALSE(r);
    EXPECT_TRUE(r.error().is(std::errc::io_error));
    EXPECT_TRUE(dev_->flush(*ring_));
    EXPECT_EQ(plan_->hits(id), 1u);
    // A flush rule does not match reads or writes.
    std::vector<BlockIo> w{block_io(IoKind::write, 0, block_buf(0))};
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(plan_->matches(id), 2u);
}

TEST_F(Faulty, RemovedRulesStopMatchingAndKeepTheirCounts) {
    auto id = plan_->add(rule(FaultMatch::any, fault::Eio{}));
    std::vector<BlockIo> w{block_io(IoKind::write, 0, block_buf(0))};
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(w[0].result, -EIO);
    plan_->remove(id);
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(w[0].result, static_cast<int>(kBlock));
    EXPECT_EQ(plan_->hits(id), 1u);
    auto other = plan_->add(rule(FaultMatch::any, fault::Eio{}));
    EXPECT_NE(other, id);
    plan_->clear();
    ASSERT_TRUE(dev_->submit(*ring_, w));
    EXPECT_EQ(w[0].result, static_cast<int>(kBlock));
}

TEST_F(Faulty, MisalignedBatchesAreRejectedBeforeThePlanSeesThem) {
    auto id = plan_->add(rule(FaultMatch::any, fault::Eio{}));
    std::vector<BlockIo> w{block_io(IoKind::write, 512, block_buf(0))};
    auto r = dev_->submit(*ring_, w);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, make_error_code(Errc::misaligned));
    EXPECT_EQ(plan_->matches(id), 0u);
}

TEST_F(Faulty, ThreadsSharingOnePlanConsumeExactlyTimesHits) {
    constexpr int kPerThread = 40;
    auto id = plan_->add([] {
        FaultRule r = rule(FaultMatch::write, fault::Eio{});
        r.times = 10;
        return r;
    }());
    std::atomic<int> failures{0};
    std::atomic<int> ring_errors{0};
    auto worker = [&](std::size_t slot) {
        auto ring = Ring::create(4);
        if (!ring) {
            ++ring_errors;
            return;
        }
        Mapping b = test::aligned_buffer(kBlock);
        for (int i = 0; i < kPerThread; ++i) {
            std::vector<BlockIo> w{block_io(IoKind::write, slot * kBlock, b.span())};
            if (!dev_->submit(*ring, w)) ++ring_errors;
            if (w[0].result == -EIO) ++failures;
        }
    };
    std::thread a(worker, 0), b(worker, 1);
    a.join();
    b.join();
    EXPECT_EQ(ring_errors.load(), 0);
    EXPECT_EQ(failures.load(), 10);
    EXPECT_EQ(plan_->hits(id), 10u);
    EXPECT_EQ(plan_->matches(id), 2u * kPerThread);
}

TEST(FaultyLoopDevice, FaultsApplyOnARealBlockDevice) {
    auto rr = Ring::create(8);
    if (!rr && test::io_uring_absent(rr.error()))
        GTEST_SKIP() << "*** io_uring is unavailable here (" << rr.error().message() << "): this test did NOT run ***";
    ASSERT_TRUE(rr);
    Ring ring = std::move(*rr);
    test::TempDir dir;
    auto backing = dir.file("loop.img");
    ASSERT_TRUE(test::make_sparse_file(backing, 16 << 20));
    test::LoopAttach loop(backing);
    if (!loop.attached())
        GTEST_SKIP() << "*** losetup failed (" << loop.error() << "): the loop block device test did NOT run ***";
    {
        auto inner = FileBlockDevice::open(loop.dev(), OpenMode::existing);
        ASSERT_TRUE(inner) << inner.error().message();
        auto plan = std::make_shared<FaultPlan>();
        FaultyBlockDevice dev(std::move(*inner), plan);
        auto id = plan->add([] {
            FaultRule r = rule(FaultMatch::write, fault::Eio{});
            r.begin = DevOffset{kBlock};
            r.end = DevOffset{2 * kBlock};
            return r;
        }());
        Mapping buf = test::aligned_buffer(2 * kBlock);
        fill_pattern(buf.span(), 0, 12);
        std::vector<BlockIo> w{block_io(IoKind::write, 0, buf.span().first(kBlock)),
                               block_io(IoKind::write, kBlock, buf.span().subspan(kBlock))};
        ASSERT_TRUE(dev.submit(ring, w));
        EXPECT_EQ(w[0].result, static_cast<int>(kBlock));
        EXPECT_EQ(w[1].result, -EIO);
        ASSERT_TRUE(dev.flush(ring));
        EXPECT_EQ(plan->hits(id), 1u);

        Mapping in = test::aligned_buffer(2 * kBlock);
        std::vector<BlockIo> r{block_io(IoKind::read, 0, in.span())};
        ASSERT_TRUE(dev.submit(ring, r));
        EXPECT_EQ(r[0].result, static_cast<int>(2 * kBlock));
        EXPECT_EQ(first_mismatch(in.span().first(kBlock), 0, 12), -1);
        for (std::byte b : in.span().subspan(kBlock)) ASSERT_EQ(b, std::byte{0}) << "the failed write reached the device";
    }
}

}  // namespace
}  // namespace swapvisor::io
