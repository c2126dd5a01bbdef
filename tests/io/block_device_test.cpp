// FileBlockDevice on real files in /tmp and, where losetup works, on a loop block
// device: open modes and sizing, alignment and range checks, round trips through
// io_uring, and reads past a truncated end that must fail rather than read zeros.
#include "io/block_device.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/io/io_test_util.hpp"

namespace swapvisor::io {
namespace {

using test::fill_pattern;
using test::first_mismatch;

constexpr std::uint32_t kBlock = 4096;

BlockIo block_io(IoKind kind, std::uint64_t off, std::span<std::byte> buf) {
    return BlockIo{kind, DevOffset{off}, buf};
}

bool has_errc(const Error& e, Errc want) { return e.code == make_error_code(want); }

TEST(FileBlockDevice, CreateOrOpenCreatesAPrivateAllocatedFile) {
    test::TempDir dir;
    auto path = dir.file("swap.img");
    auto dev = FileBlockDevice::open(path, OpenMode::create_or_open, 1 << 20);
    ASSERT_TRUE(dev) << dev.error().message();
    EXPECT_EQ((*dev)->size_bytes(), 1u << 20);
    EXPECT_EQ((*dev)->logical_block_size(), kBlock);
    EXPECT_EQ((*dev)->path(), path.string());
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0600u);
    EXPECT_EQ(st.st_size, 1 << 20);
    EXPECT_GE(static_cast<std::uint64_t>(st.st_blocks) * 512, 1u << 20) << "fallocate should allocate, not leave a hole";
    // The descriptor is O_DIRECT.
    EXPECT_NE(::fcntl((*dev)->fd(), F_GETFL) & O_DIRECT, 0);
}

TEST(FileBlockDevice, CreateOrOpenExtendsAShorterFileAndKeepsItsData) {
    test::TempDir dir;
    auto path = dir.file("swap.img");
    {
        auto dev = FileBlockDevice::open(path, OpenMode::create_or_open, 8 * kBlock);
        ASSERT_TRUE(dev);
        SWV_RING_OR_SKIP(ring, 4);
        Mapping buf = test::aligned_buffer(kBlock);
        fill_pattern(buf.span(), 0, 9);
        std::vector<BlockIo> w{block_io(IoKind::write, 0, buf.span())};
        ASSERT_TRUE((*dev)->submit(ring, w));
        ASSERT_EQ(w[0].result, static_cast<int>(kBlock));
    }
    auto bigger = FileBlockDevice::open(path, OpenMode::create_or_open, 32 * kBlock);
    ASSERT_TRUE(bigger) << bigger.error().message();
    EXPECT_EQ((*bigger)->size_bytes(), 32u * kBlock);
    EXPECT_EQ(std::filesystem::file_size(path), 32u * kBlock);
    auto bytes = test::read_file(path);
    EXPECT_EQ(first_mismatch(std::span(bytes).first(kBlock), 0, 9), -1);

    // A larger existing file is not shrunk; its whole size is usable (once the
    // previous owner closed it: an open device holds the file's lock).
    bigger->reset();
    auto same = FileBlockDevice::open(path, OpenMode::create_or_open, 4 * kBlock);
    ASSERT_TRUE(same);
    EXPECT_EQ((*same)->size_bytes(), 32u * kBlock);
}

TEST(FileBlockDevice, SizeIsRoundedDownToWholeBlocks) {
    test::TempDir dir;
    auto path = dir.file("odd.img");
    auto dev = FileBlockDevice::open(path, OpenMode::create_or_open, 3 * kBlock + 100);
    ASSERT_TRUE(dev);
    EXPECT_EQ((*dev)->size_bytes(), 3u * kBlock);
}

TEST(FileBlockDevice, ExistingModeReportsAMissingPathAsEnoent) {
    test::TempDir dir;
    auto dev = FileBlockDevice::open(dir.file("missing.img"), OpenMode::existing);
    ASSERT_FALSE(dev);
    EXPECT_TRUE(dev.error().is(std::errc::no_such_file_or_directory)) << dev.error().message();
    EXPECT_FALSE(std::filesystem::exists(dir.file("missing.img")));
}

TEST(FileBlockDevice, ExistingModeRefusesAFileSmallerThanAsked) {
    test::TempDir dir;
    auto path = dir.file("small.img");
    ASSERT_TRUE(FileBlockDevice::open(path, OpenMode::create_or_open, 4 * kBlock));
    auto dev = FileBlockDevice::open(path, OpenMode::existing, 8 * kBlock);
    ASSERT_FALSE(dev);
    EXPECT_TRUE(has_errc(dev.error(), Errc::too_small)) << dev.error().message();
    EXPECT_EQ(std::filesystem::file_size(path), 4u * kBlock) << "existing mode must not resize";
}

TEST(FileBlockDevice, RefusesDirectoriesAndCharacterDevices) {
    test::TempDir dir;
    for (const std::filesystem::path& p : {dir.path(), std::filesystem::path("/dev/null")}) {
        for (OpenMode mode : {OpenMode::existing, OpenMode::create_or_open}) {
            auto dev = FileBlockDevice::open(p, mode, kBlock);
            ASSERT_FALSE(dev) << p;
            EXPECT_TRUE(has_errc(dev.error(), Errc::not_file_or_block)) << dev.error().message();
            EXPECT_EQ(dev.error().message(),
                      "open swap device (device " + p.string() + "): not a regular file or a block device");
        }
    }
}

TEST(FileBlockDevice, AnEmptyNewFileIsTooSmallAndIsNotLeftBehind) {
    test::TempDir dir;
    auto path = dir.file("empty.img");
    auto dev = FileBlockDevice::open(path, OpenMode::create_or_open, 0);
    ASSERT_FALSE(dev);
    EXPECT_TRUE(has_errc(dev.error(), Errc::too_small));
    EXPECT_FALSE(std::filesystem::exists(path));
}

class FileDeviceIo : public ::testing::Test {
protected:
    void SetUp() override {
        auto r = Ring::create(32);
        if (!r && test::io_uring_absent(r.error()))
            GTEST_SKIP() << "*** io_uring is unavailable here (" << r.error().message() << "): this test did NOT run ***";
        ASSERT_TRUE(r) << r.error().message();
        ring_.emplace(std::move(*r));
        auto d = FileBlockDevice::open(dir_.file("dev.img"), OpenMode::create_or_open, kSize);
        ASSERT_TRUE(d) << d.error().message();
        dev_ = std::move(*d);
    }
    static constexpr std::uint64_t kSize = 64 * kBlock;
    test::TempDir dir_;
    std::optional<Ring> ring_;
    std::unique_ptr<FileBlockDevice> dev_;
};

TEST_F(FileDeviceIo, WriteFlushReadRoundTrip) {
    Mapping out = test::aligned_buffer(kSize);
    Mapping in = test::aligned_buffer(kSize);
    fill_pattern(out.span(), 0, 11);
    std::vector<BlockIo> writes;
    for (std::uint64_t off = 0; off < kSize; off += 4 * kBlock)
        writes.push_back(block_io(IoKind::write, off, out.span().subspan(off, 4 * kBlock)));
    ASSERT_TRUE(dev_->submit(*ring_, writes));
    for (const BlockIo& w : writes) {
        EXPECT_EQ(w.result, static_cast<int>(4 * kBlock));
        EXPECT_TRUE(io_status(w, "test write"));
    }
    ASSERT_TRUE(dev_->flush(*ring_));

    std::vector<BlockIo> reads{block_io(IoKind::read, 0, in.span())};
    ASSERT_TRUE(dev_->submit(*ring_, reads));
    EXPECT_EQ(reads[0].result, static_cast<int>(kSize));
    EXPECT_EQ(first_mismatch(in.span(), 0, 11), -1);
}

TEST_F(FileDeviceIo, MisalignedOffsetLengthOrBufferIssuesNothing) {
    Mapping buf = test::aligned_buffer(4 * kBlock);
    fill_pattern(buf.span(), 0, 12);
    struct Case {
        const char* what;
        std::uint64_t off;
        std::size_t buf_at;
        std::size_t len;
    };
    for (const Case& c : {Case{"offset", 512, 0, kBlock}, Case{"length", 0, 0, kBlock + 512},
                          Case{"buffer", 0, 512, kBlock}, Case{"offset by one", kBlock + 1, 0, kBlock}}) {
        // A good write first in the same batch: it must not be issued either.
        std::vector<BlockIo> ios{block_io(IoKind::write, 8 * kBlock, buf.span().first(kBlock)),
                                 block_io(IoKind::write, c.off, buf.span().subspan(c.buf_at, c.len))};
        auto r = dev_->submit(*ring_, ios);
        ASSERT_FALSE(r) << c.what;
        EXPECT_TRUE(has_errc(r.error(), Errc::misaligned)) << c.what << ": " << r.error().message();
        EXPECT_TRUE(r.error().is(std::errc::invalid_argument));
        EXPECT_EQ(ios[0].result, -ECANCELED) << c.what;
        EXPECT_EQ(ios[1].result, -EINVAL) << c.what;
    }
    auto bytes = test::read_file(dir_.file("dev.img"));
    ASSERT_EQ(bytes.size(), kSize);
    for (std::byte b : bytes) ASSERT_EQ(b, std::byte{0}) << "a rejected batch wrote data";
}

TEST_F(FileDeviceIo, OutOfRangeIssuesNothing) {
    Mapping buf = test::aligned_buffer(2 * kBlock);
    for (std::uint64_t off : {kSize, kSize - kBlock, kSize + 1024 * kBlock, ~std::uint64_t{0} - kBlock + 1}) {
        std::vector<BlockIo> ios{block_io(IoKind::read, off, buf.span())};
        auto r = dev_->submit(*ring_, ios);
        ASSERT_FALSE(r) << off;
        EXPECT_TRUE(has_errc(r.error(), Errc::out_of_range)) << r.error().message();
        EXPECT_EQ(ios[0].result, -ERANGE);
    }
    // The last block itself is in range.
    std::vector<BlockIo> last{block_io(IoKind::read, kSize - kBlock, buf.span().first(kBlock))};
    ASSERT_TRUE(dev_->submit(*ring_, last));
    EXPECT_EQ(last[0].result, static_cast<int>(kBlock));
}

TEST_F(FileDeviceIo, ReadPastATruncatedBackingFileFailsInsteadOfReadingZeros) {
    Mapping buf = test::aligned_buffer(8 * kBlock);
    fill_pattern(buf.span(), 0, 13);
    std::vector<BlockIo> w{block_io(IoKind::write, 0, buf.span())};
    ASSERT_TRUE(dev_->submit(*ring_, w));
    ASSERT_EQ(w[0].result, static_cast<int>(8 * kBlock));

    // Someone truncates the swap file under us (operator error, full disk tooling).
    ASSERT_EQ(::truncate(dir_.file("dev.img").c_str(), 2 * kBlock), 0);
    std::vector<BlockIo> reads{block_io(IoKind::read, 0, buf.span().first(4 * kBlock)),         // straddles EOF
                               block_io(IoKind::read, 4 * kBlock, buf.span().subspan(4 * kBlock, kBlock)),  // past
                               block_io(IoKind::read, 0, buf.span().subspan(5 * kBlock, kBlock))};  // inside
    ASSERT_TRUE(dev_->submit(*ring_, reads));
    EXPECT_EQ(reads[0].result, -EIO);
    EXPECT_EQ(reads[1].result, -EIO);
    EXPECT_EQ(reads[2].result, static_cast<int>(kBlock));
    auto st = io_status(reads[1], "swap-in read");
    ASSERT_FALSE(st);
    EXPECT_TRUE(st.error().is(std::errc::io_error));
    EXPECT_EQ(first_mismatch(buf.span().subspan(5 * kBlock, kBlock), 0, 13), -1);
}

TEST(IoStatus, ShortResultIsShortIo) {
    std::array<std::byte, 8192> storage{};
    BlockIo io{IoKind::read, DevOffset{0}, std::span(storage), 4096};
    auto r = io_status(io, "read");
    ASSERT_FALSE(r);
    EXPECT_TRUE(has_errc(r.error(), Errc::short_io));
    io.result = 8192;
    EXPECT_TRUE(io_status(io, "read"));
}

// A real block device: a 16 MiB file attached to a loop device. Needs root and a
// kernel with loop support; skipped loudly otherwise.
class LoopDevice : public ::testing::Test {
protected:
    void SetUp() override {
        auto r = Ring::create(16);
        if (!r && test::io_uring_absent(r.error()))
            GTEST_SKIP() << "*** io_uring is unavailable here (" << r.error().message() << "): this test did NOT run ***";
        ASSERT_TRUE(r);
        ring_.emplace(std::move(*r));
        backing_ = dir_.file("loop.img");
        ASSERT_TRUE(test::make_sparse_file(backing_, kSize));
        loop_.emplace(backing_);
        if (!loop_->attached())
            GTEST_SKIP() << "*** losetup failed (" << loop_->error() << "): the loop block device test did NOT run ***";
    }
    static constexpr std::uint64_t kSize = 16 << 20;
    test::TempDir dir_;
    std::filesystem::path backing_;
    std::optional<test::LoopAttach> loop_;  // detached before dir_ is removed
    std::optional<Ring> ring_;
};

TEST_F(LoopDevice, OpensAsABlockDeviceAndRoundTrips) {
    std::uint64_t sector = 0;
    {
        auto dev = FileBlockDevice::open(loop_->dev(), OpenMode::existing);
        ASSERT_TRUE(dev) << dev.error().message();
        EXPECT_EQ((*dev)->size_bytes(), kSize);
        sector = (*dev)->logical_block_size();
        EXPECT_TRUE(sector == 512 || sector == 4096) << sector;

        // A second exclusive open is refused while the first holds the device.
        auto twice = FileBlockDevice::open(loop_->dev(), OpenMode::existing);
        ASSERT_FALSE(twice);
        EXPECT_TRUE(twice.error().is(std::errc::device_or_resource_busy)) << twice.error().message();

        // A block device that is too small for the request is refused.
        auto big = FileBlockDevice::open(loop_->dev(), OpenMode::create_or_open, 2 * kSize);
        ASSERT_FALSE(big);

        Mapping out = test::aligned_buffer(64 * kBlock);
        Mapping in = test::aligned_buffer(64 * kBlock);
        fill_pattern(out.span(), kSize - 64 * kBlock, 14);
        // Sector-sized ops work on a block device (not only 4 KiB ones), up to the end.
        std::vector<BlockIo> w{block_io(IoKind::write, kSize - 64 * kBlock, out.span().first(32 * kBlock)),
                               block_io(IoKind::write, kSize - 32 * kBlock, out.span().subspan(32 * kBlock, sector)),
                               block_io(IoKind::write, kSize - 32 * kBlock + sector,
                                        out.span().subspan(32 * kBlock + sector, 32 * kBlock - sector))};
        ASSERT_TRUE((*dev)->submit(*ring_, w));
        for (const BlockIo& io : w) EXPECT_TRUE(io_status(io, "loop write")) << io.result;
        ASSERT_TRUE((*dev)->flush(*ring_));

        std::vector<BlockIo> r{block_io(IoKind::read, kSize - 64 * kBlock, in.span())};
        ASSERT_TRUE((*dev)->submit(*ring_, r));
        EXPECT_EQ(r[0].result, static_cast<int>(64 * kBlock));
        EXPECT_EQ(first_mismatch(in.span(), kSize - 64 * kBlock, 14), -1);

        std::vector<BlockIo> past{block_io(IoKind::read, kSize, in.span().first(sector))};
        auto pr = (*dev)->submit(*ring_, past);
        ASSERT_FALSE(pr);
        EXPECT_TRUE(has_errc(pr.error(), Errc::out_of_range));

        if (sector < kBlock) {
            std::vector<BlockIo> half{block_io(IoKind::read, sector / 2, in.span().first(sector))};
            auto hr = (*dev)->submit(*ring_, half);
            ASSERT_FALSE(hr);
            EXPECT_TRUE(has_errc(hr.error(), Errc::misaligned));
        }
    }
    // What the loop device wrote is in the backing file.
    auto bytes = test::read_file(backing_);
    ASSERT_EQ(bytes.size(), kSize);
    EXPECT_EQ(first_mismatch(std::span(bytes).subspan(kSize - 64 * kBlock), kSize - 64 * kBlock, 14), -1);
}

}  // namespace
}  // namespace swapvisor::io
