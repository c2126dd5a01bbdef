// Ring against a real file on /tmp opened O_DIRECT: round trips, batching (submit
// count), fixed buffers, short transfers and EOF, per-op errors, thread ownership.
#include "io/ring.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <thread>

#include "tests/io/io_test_util.hpp"

namespace swapvisor::io {
namespace {

using test::fill_pattern;
using test::first_mismatch;

constexpr std::uint32_t kBlock = 4096;

struct DirectFile {
    test::TempDir dir;
    UniqueFd fd;
    std::filesystem::path path;

    explicit DirectFile(std::uint64_t size) : path(dir.file("ring.img")) {
        fd = UniqueFd(::open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600));
        if (!fd.valid() || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) std::abort();
    }
};

IoOp op(IoKind kind, int fd, std::uint64_t off, std::byte* buf, std::uint32_t len) {
    IoOp o;
    o.kind = kind;
    o.fd = fd;
    o.offset = DevOffset{off};
    o.buf = buf;
    o.len = len;
    return o;
}

TEST(Ring, CreateRejectsZeroEntries) {
    auto r = Ring::create(0);
    ASSERT_FALSE(r);
    EXPECT_TRUE(r.error().is(std::errc::invalid_argument));
}

TEST(Ring, WriteThenReadBackRoundTrip) {
    SWV_RING_OR_SKIP(ring, 16);
    DirectFile f(64 * kBlock);
    Mapping out = test::aligned_buffer(16 * kBlock);
    Mapping in = test::aligned_buffer(16 * kBlock);
    fill_pattern(out.span(), 8 * kBlock, 1);

    std::vector<IoOp> writes;
    for (std::uint32_t i = 0; i < 16; ++i)
        writes.push_back(op(IoKind::write, f.fd.get(), (8 + i) * kBlock, out.data() + i * kBlock, kBlock));
    ASSERT_TRUE(ring.run(writes));
    for (const IoOp& w : writes) EXPECT_EQ(w.result, static_cast<int>(kBlock));

    // One big read across all 16 blocks.
    std::vector<IoOp> reads{op(IoKind::read, f.fd.get(), 8 * kBlock, in.data(), 16 * kBlock)};
    ASSERT_TRUE(ring.run(reads));
    EXPECT_EQ(reads[0].result, static_cast<int>(16 * kBlock));
    EXPECT_EQ(first_mismatch(in.span(), 8 * kBlock, 1), -1);

    // And the page cache view of the file agrees (the write really reached the file).
    auto bytes = test::read_file(f.path);
    ASSERT_EQ(bytes.size(), 64 * kBlock);
    EXPECT_EQ(first_mismatch(std::span(bytes).subspan(8 * kBlock, 16 * kBlock), 8 * kBlock, 1), -1);
}

TEST(Ring, LargeBatchUsesFewSubmitCalls) {
    constexpr unsigned kEntries = 32;
    constexpr std::uint32_t kOps = 256;
    SWV_RING_OR_SKIP(ring, kEntries);
    ASSERT_EQ(ring.entries(), kEntries);
    DirectFile f(kOps * kBlock);
    Mapping out = test::aligned_buffer(kOps * kBlock);
    Mapping in = test::aligned_buffer(kOps * kBlock);
    fill_pattern(out.span(), 0, 2);

    std::vector<IoOp> ops;
    for (std::uint32_t i = 0; i < kOps; ++i)
        ops.push_back(op(IoKind::write, f.fd.get(), i * kBlock, out.data() + i * kBlock, kBlock));
    const auto before = ring.submit_calls();
    ASSERT_TRUE(ring.run(ops));
    const auto calls = ring.submit_calls() - before;
    for (const IoOp& o : ops) ASSERT_EQ(o.result, static_cast<int>(kBlock));
    // At most `entries` per call, and every call after the first refills at least half
    // a ring: 256 ops on a 32-entry ring take 8..15 calls, never one per op.
    EXPECT_GE(calls, kOps / kEntries);
    EXPECT_LE(calls, 1 + (kOps - kEntries) / (kEntries / 2));

    std::vector<IoOp> reads;
    for (std::uint32_t i = 0; i < kOps; ++i)
        reads.push_back(op(IoKind::read, f.fd.get(), i * kBlock, in.data() + i * kBlock, kBlock));
    ASSERT_TRUE(ring.run(reads));
    for (const IoOp& o : reads) ASSERT_EQ(o.result, static_cast<int>(kBlock));
    EXPECT_EQ(first_mismatch(in.span(), 0, 2), -1);
}

TEST(Ring, OpsInsideTheRegisteredArenaUseFixedBuffers) {
    SWV_RING_OR_SKIP(ring, 8);
    DirectFile f(32 * kBlock);
    Mapping arena = test::aligned_buffer(8 * kBlock);
    Mapping outside = test::aligned_buffer(2 * kBlock);
    ASSERT_TRUE(ring.register_arena(arena.span()));

    fill_pattern(arena.span().first(4 * kBlock), 0, 3);
    fill_pattern(outside.span(), 16 * kBlock, 3);
    std::vector<IoOp> writes{
        op(IoKind::write, f.fd.get(), 0, arena.data(), 4 * kBlock),                // inside: fixed
        op(IoKind::write, f.fd.get(), 16 * kBlock, outside.data(), 2 * kBlock),    // outside: plain
    };
    const auto fixed_before = ring.fixed_ops();
    ASSERT_TRUE(ring.run(writes));
    EXPECT_EQ(writes[0].result, static_cast<int>(4 * kBlock));
    EXPECT_EQ(writes[1].result, static_cast<int>(2 * kBlock));
    EXPECT_EQ(ring.fixed_ops() - fixed_before, 1u);

    // Read back into the second half of the arena: fixed read.
    std::vector<IoOp> reads{op(IoKind::read, f.fd.get(), 0, arena.data() + 4 * kBlock, 4 * kBlock)};
    ASSERT_TRUE(ring.run(reads));
    EXPECT_EQ(reads[0].result, static_cast<int>(4 * kBlock));
    EXPECT_EQ(ring.fixed_ops() - fixed_before, 2u);
    EXPECT_EQ(first_mismatch(arena.span().subspan(4 * kBlock, 4 * kBlock), 0, 3), -1);

    auto bytes = test::read_file(f.path);
    EXPECT_EQ(first_mismatch(std::span(bytes).subspan(16 * kBlock, 2 * kBlock), 16 * kBlock, 3), -1);

    // Re-registering replaces the arena: the old one is no longer fixed.
    ASSERT_TRUE(ring.register_arena(outside.span()));
    std::vector<IoOp> again{op(IoKind::read, f.fd.get(), 0, arena.data(), kBlock),
                            op(IoKind::read, f.fd.get(), 16 * kBlock, outside.data(), kBlock)};
    const auto fixed_mid = ring.fixed_ops();
    ASSERT_TRUE(ring.run(again));
    EXPECT_EQ(again[0].result, static_cast<int>(kBlock));
    EXPECT_EQ(again[1].result, static_cast<int>(kBlock));
    EXPECT_EQ(ring.fixed_ops() - fixed_mid, 1u);
    EXPECT_EQ(first_mismatch(outside.span().first(kBlock), 16 * kBlock, 3), -1);
}

TEST(Ring, ReadPastEndOfFileFailsInsteadOfReturningZeros) {
    SWV_RING_OR_SKIP(ring, 8);
    DirectFile f(2 * kBlock);
    Mapping buf = test::aligned_buffer(4 * kBlock);
    std::vector<IoOp> ops{
        op(IoKind::read, f.fd.get(), 0, buf.data(), 4 * kBlock),               // 2 blocks, then EOF
        op(IoKind::read, f.fd.get(), 8 * kBlock, buf.data(), kBlock),          // wholly past EOF
        op(IoKind::read, f.fd.get(), 0, buf.data(), 2 * kBlock),               // fine
    };
    ASSERT_TRUE(ring.run(ops));
    EXPECT_EQ(ops[0].result, -EIO);
    EXPECT_EQ(ops[1].result, -EIO);
    EXPECT_EQ(ops[2].result, static_cast<int>(2 * kBlock));
}

TEST(Ring, ShortPipeReadIsResubmittedForTheRemainder) {
    SWV_RING_OR_SKIP(ring, 4);
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    UniqueFd rd(p[0]), wr(p[1]);
    std::vector<std::byte> first(100), second(100), got(200);
    fill_pattern(first, 0, 4);
    fill_pattern(second, 100, 4);
    ASSERT_EQ(::write(wr.get(), first.data(), first.size()), 100);
    // The rest arrives later: the first read returns 100 bytes (a short transfer)
    // unless the writer wins the race; either way the op must end with all 200.
    std::thread writer([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        (void)!::write(wr.get(), second.data(), second.size());
    });
    std::vector<IoOp> ops{op(IoKind::read, rd.get(), 0, got.data(), 200)};
    auto ran = ring.run(ops);
    writer.join();
    ASSERT_TRUE(ran);
    EXPECT_EQ(ops[0].result, 200);
    EXPECT_EQ(first_mismatch(got, 0, 4), -1);

    // EOF half way: 50 bytes, then the writer closes; the op fails, not "50 of 100".
    ASSERT_EQ(::write(wr.get(), first.data(), 50), 50);
    ASSERT_TRUE(wr.close());
    std::vector<IoOp> eof{op(IoKind::read, rd.get(), 0, got.data(), 100)};
    ASSERT_TRUE(ring.run(eof));
    EXPECT_EQ(eof[0].result, -EIO);
}

TEST(Ring, PerOpErrorsLandInResultsAndTheBatchCompletes) {
    SWV_RING_OR_SKIP(ring, 8);
    DirectFile f(4 * kBlock);
    Mapping buf = test::aligned_buffer(2 * kBlock);
    fill_pattern(buf.span(), 0, 5);
    UniqueFd read_only(::open(f.path.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(read_only.valid());
    std::vector<IoOp> ops{
        op(IoKind::write, -1, 0, buf.data(), kBlock),                           // bad fd
        op(IoKind::write, read_only.get(), 0, buf.data(), kBlock),              // not writable
        op(IoKind::write, f.fd.get(), 0, buf.data() + 1, kBlock),               // O_DIRECT misaligned
        op(IoKind::write, f.fd.get(), kBlock, buf.data(), kBlock),              // fine
        op(IoKind::fsync, f.fd.get(), 0, nullptr, 0),                           // fine
        op(IoKind::write, f.fd.get(), 0, buf.data(), 0),                        // empty: no-op
    };
    ASSERT_TRUE(ring.run(ops));
    EXPECT_EQ(ops[0].result, -EBADF);
    EXPECT_EQ(ops[1].result, -EBADF);
    EXPECT_EQ(ops[2].result, -EINVAL);
    EXPECT_EQ(ops[3].result, static_cast<int>(kBlock));
    EXPECT_EQ(ops[4].result, 0);
    EXPECT_EQ(ops[5].result, 0);
}

TEST(Ring, FirstRunOnAnotherThreadMakesThatThreadTheOwner) {
    // Created here, used there: the ring starts disabled so the I/O thread that first
    // runs it becomes the SINGLE_ISSUER owner (io/README.md#threads).
    SWV_RING_OR_SKIP(ring, 8);
    DirectFile f(4 * kBlock);
    Mapping buf = test::aligned_buffer(kBlock);
    Mapping arena = test::aligned_buffer(kBlock);
    ASSERT_TRUE(ring.register_arena(arena.span()));  // before the owner is fixed: allowed
    fill_pattern(buf.span(), 0, 6);
    Ring moved = std::move(ring);
    Result<void> ran;
    std::vector<IoOp> ops{op(IoKind::write, f.fd.get(), 0, buf.data(), kBlock)};
    std::thread io_thread([&] { ran = moved.run(ops); });
    io_thread.join();
    ASSERT_TRUE(ran) << ran.error().message();
    EXPECT_EQ(ops[0].result, static_cast<int>(kBlock));
}

}  // namespace
}  // namespace swapvisor::io
