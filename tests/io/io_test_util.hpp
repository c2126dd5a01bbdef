// Helpers shared by the io/ tests: a temp directory in /tmp (a real ext4/xfs file
// system, so O_DIRECT and io_uring take their real paths), page-aligned buffers,
// a position-dependent byte pattern, and the io_uring availability gate.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "io/ring.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::io::test {

// A fresh directory under /tmp, removed with everything in it.
class TempDir {
public:
    TempDir() {
        std::string tmpl = "/tmp/swv-io-test-XXXXXX";
        char* p = ::mkdtemp(tmpl.data());
        if (p == nullptr) std::abort();
        path_ = p;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::filesystem::path file(const std::string& name) const { return path_ / name; }
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

inline std::byte pattern_byte(std::uint64_t pos, std::uint32_t seed) {
    return static_cast<std::byte>((pos * 131 + seed * 7 + (pos >> 12) * 3 + 1) & 0xff);
}

// Fill buf as if it sat at device offset `pos`.
inline void fill_pattern(std::span<std::byte> buf, std::uint64_t pos, std::uint32_t seed) {
    for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = pattern_byte(pos + i, seed);
}

// Index of the first byte that differs from the pattern, or -1.
inline long first_mismatch(std::span<const std::byte> buf, std::uint64_t pos, std::uint32_t seed) {
    for (std::size_t i = 0; i < buf.size(); ++i)
        if (buf[i] != pattern_byte(pos + i, seed)) return static_cast<long>(i);
    return -1;
}

// Buffered (page-cache) read of a whole file, to check what O_DIRECT wrote.
inline std::vector<std::byte> read_file(const std::filesystem::path& p) {
    std::vector<std::byte> out(std::filesystem::file_size(p));
    UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return {};
    std::size_t got = 0;
    while (got < out.size()) {
        ssize_t n = ::pread(fd.get(), out.data() + got, out.size() - got, static_cast<off_t>(got));
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
    }
    out.resize(got);
    return out;
}

inline Mapping aligned_buffer(std::size_t len) {
    auto m = Mapping::anonymous(len);
    if (!m) std::abort();
    return std::move(*m);
}

// A loop block device over a backing file (`losetup -f --show`), detached on
// destruction. attached() is false, with the reason in error(), where losetup
// fails (no root, no loop driver, no free device).
class LoopAttach {
public:
    explicit LoopAttach(const std::filesystem::path& backing) {
        std::string cmd = "losetup -f --show '" + backing.string() + "' 2>&1";
        FILE* p = ::popen(cmd.c_str(), "r");
        if (p == nullptr) {
            error_ = "popen failed";
            return;
        }
        char line[256] = {};
        std::string out = std::fgets(line, sizeof line, p) != nullptr ? line : "";
        int rc = ::pclose(p);
        while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
        if (rc != 0 || out.rfind("/dev/loop", 0) != 0) {
            error_ = out.empty() ? "losetup exited with " + std::to_string(rc) : out;
            return;
        }
        dev_ = out;
    }
    ~LoopAttach() {
        if (!dev_.empty()) {
            std::string cmd = "losetup -d " + dev_;
            if (std::system(cmd.c_str()) != 0) ADD_FAILURE() << "could not detach " << dev_;
        }
    }
    LoopAttach(const LoopAttach&) = delete;
    LoopAttach& operator=(const LoopAttach&) = delete;
    bool attached() const { return !dev_.empty(); }
    const std::string& dev() const { return dev_; }
    const std::string& error() const { return error_; }

private:
    std::string dev_;
    std::string error_;
};

// A sparse file of `size` bytes (buffered, for backing loop devices).
inline bool make_sparse_file(const std::filesystem::path& p, std::uint64_t size) {
    UniqueFd fd(::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    return fd.valid() && ::ftruncate(fd.get(), static_cast<off_t>(size)) == 0;
}

inline bool io_uring_absent(const Error& e) {
    return e.is(std::errc::function_not_supported) || e.is(std::errc::operation_not_permitted);
}

}  // namespace swapvisor::io::test

// Declares `Ring var` with `entries`, or skips the test loudly when this kernel has
// no io_uring (ENOSYS) or forbids it (EPERM: io_uring_disabled sysctl, seccomp).
#define SWV_RING_OR_SKIP(var, entries)                                                              \
    auto var##_created = ::swapvisor::io::Ring::create(entries);                                    \
    if (!var##_created && ::swapvisor::io::test::io_uring_absent(var##_created.error()))            \
        GTEST_SKIP() << "*** io_uring is unavailable here (" << var##_created.error().message()     \
                     << "): this test did NOT run ***";                                             \
    ASSERT_TRUE(var##_created) << var##_created.error().message();                                  \
    ::swapvisor::io::Ring var = std::move(*var##_created)
