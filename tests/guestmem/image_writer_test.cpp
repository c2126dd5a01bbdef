// ImageWriter (guestmem/image_writer.hpp) on real files: kept pages land at page *
// 4 KiB and dropped ones stay holes, across many buffer hand-offs with several
// writer threads; the same on tmpfs (O_DIRECT or buffered, by kernel); a
// failing write is the error of the next stage() or of finish(), never a silent
// short image; a writer dropped before finish() joins its threads.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <vector>

#include "guestmem/image_writer.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
namespace fs = std::filesystem;

namespace {

void fill(std::byte* p, std::uint64_t page) {
    for (std::size_t i = 0; i < kPageSize; i += 8) {
        const std::uint64_t v = (page + 1) * 0x9E3779B97F4A7C15ULL + i;
        std::memcpy(p + i, &v, 8);
    }
}

bool page_is(const std::vector<std::byte>& file, std::uint64_t page, bool kept) {
    std::vector<std::byte> want(kPageSize, std::byte{0});
    if (kept) fill(want.data(), page);
    return std::memcmp(file.data() + page * kPageSize, want.data(), kPageSize) == 0;
}

std::vector<std::byte> read_file(const fs::path& p) {
    std::vector<std::byte> out(fs::file_size(p));
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    std::size_t done = 0;
    while (done < out.size()) {
        const ssize_t n = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(done));
        if (n <= 0) break;
        done += static_cast<std::size_t>(n);
    }
    ::close(fd);
    EXPECT_EQ(done, out.size());
    return out;
}

// A page is kept unless page % 7 == 3 or it lies in [1000, 1200): short runs, long
// runs, and a buffer boundary inside runs.
bool kept(std::uint64_t page) { return page % 7 != 3 && !(page >= 1000 && page < 1200); }

// Writes `pages` pages through a writer into `path`; returns the bytes finish() reported.
std::uint64_t write_image(const fs::path& path, std::uint64_t pages, bool* direct) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(pages * kPageSize)), 0);
    auto w = ImageWriter::start(fd, path);
    EXPECT_TRUE(w.has_value());
    for (std::uint64_t i = 0; i < pages; ++i) {
        auto dst = (*w)->stage(PageIdx(i));
        EXPECT_TRUE(dst.has_value());
        fill(*dst, i);
        if (kept(i)) (*w)->keep();
    }
    auto bytes = (*w)->finish();
    EXPECT_TRUE(bytes.has_value()) << (bytes ? "" : bytes.error().message());
    *direct = (*w)->direct();
    EXPECT_EQ(::fsync(fd), 0);
    ::close(fd);
    return bytes.value_or(0);
}

}  // namespace

TEST(ImageWriterTest, KeptPagesLandAtTheirOffsetsAndDroppedOnesStayHoles) {
    // Well past kBuffers x kBufferPages, so buffers go round several times and the
    // writer threads write concurrently.
    const std::uint64_t pages = ImageWriter::kBuffers * ImageWriter::kBufferPages * 3 + 77;
    const fs::path path = fs::path("/var/tmp") / ("swv-imgw-" + std::to_string(getpid()));
    bool direct = false;
    const std::uint64_t bytes = write_image(path, pages, &direct);
    std::uint64_t want = 0;
    for (std::uint64_t i = 0; i < pages; ++i) want += kept(i) ? kPageSize : 0;
    EXPECT_EQ(bytes, want);
    const auto file = read_file(path);
    ASSERT_EQ(file.size(), pages * kPageSize);
    std::uint64_t bad = 0;
    for (std::uint64_t i = 0; i < pages; ++i) bad += page_is(file, i, kept(i)) ? 0 : 1;
    EXPECT_EQ(bad, 0u);
    // The dropped pages were never written: the file has holes (fewer blocks than bytes).
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_LT(static_cast<std::uint64_t>(st.st_blocks) * 512, pages * kPageSize);
    std::printf("O_DIRECT on /var/tmp: %s\n", direct ? "yes" : "no (buffered)");
    fs::remove(path);
}

// tmpfs: older kernels refuse O_DIRECT there (F_SETFL answers EINVAL and the file is
// written buffered), 6.6 and later take it; the bytes are the same either way.
TEST(ImageWriterTest, AnImageOnTmpfsHasTheSameBytes) {
    if (!fs::is_directory("/dev/shm")) GTEST_SKIP() << "SKIPPED LOUDLY: no /dev/shm (tmpfs)";
    const std::uint64_t pages = ImageWriter::kBufferPages * 2 + 5;
    const fs::path path = fs::path("/dev/shm") / ("swv-imgw-" + std::to_string(getpid()));
    bool direct = true;
    write_image(path, pages, &direct);
    std::printf("O_DIRECT on /dev/shm: %s\n", direct ? "yes" : "no (buffered)");
    const auto file = read_file(path);
    std::uint64_t bad = 0;
    for (std::uint64_t i = 0; i < pages; ++i) bad += page_is(file, i, kept(i)) ? 0 : 1;
    EXPECT_EQ(bad, 0u);
    fs::remove(path);
}

TEST(ImageWriterTest, AFailedWriteIsTheNextStagesOrFinishsErrorAndStopsTheWriting) {
    // A read-only descriptor: every pwrite fails with EBADF.
    const fs::path path = fs::path("/var/tmp") / ("swv-imgw-ro-" + std::to_string(getpid()));
    {
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(::ftruncate(fd, 64 << 20), 0);
        ::close(fd);
    }
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    auto w = ImageWriter::start(fd, path);
    ASSERT_TRUE(w.has_value());
    std::optional<Error> err;
    const std::uint64_t pages = ImageWriter::kBuffers * ImageWriter::kBufferPages * 2;
    for (std::uint64_t i = 0; i < pages && !err; ++i) {
        auto dst = (*w)->stage(PageIdx(i));
        if (!dst) {
            err = dst.error();
            break;
        }
        fill(*dst, i);
        (*w)->keep();
    }
    auto fin = (*w)->finish();
    ASSERT_FALSE(fin.has_value()) << "finish() succeeded although no write could";
    if (!err) err = fin.error();
    EXPECT_EQ(err->code, std::error_code(EBADF, std::system_category())) << err->message();
    EXPECT_NE(err->message().find("memory image: write"), std::string::npos) << err->message();
    EXPECT_NE(err->message().find(path.string()), std::string::npos) << err->message();
    ::close(fd);
    fs::remove(path);
}

TEST(ImageWriterTest, AWriterDroppedBeforeFinishJoinsItsThreads) {
    const fs::path path = fs::path("/var/tmp") / ("swv-imgw-drop-" + std::to_string(getpid()));
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 64 << 20), 0);
    {
        auto w = ImageWriter::start(fd, path);
        ASSERT_TRUE(w.has_value());
        for (std::uint64_t i = 0; i < ImageWriter::kBufferPages * 3; ++i) {
            auto dst = (*w)->stage(PageIdx(i));
            ASSERT_TRUE(dst.has_value());
            fill(*dst, i);
            (*w)->keep();
        }
    }  // the destructor stops and joins the writers (TSan / ASan see any use after)
    ::close(fd);
    fs::remove(path);
}
