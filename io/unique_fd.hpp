// UniqueFd and Mapping: move-only owners of a file descriptor and of an mmap'd range.
// A raw int fd elsewhere is always a borrowed parameter.
#pragma once

#include <cstddef>
#include <span>
#include <utility>

#include "io/result.hpp"

namespace swapvisor::io {

class UniqueFd {
public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) : fd_(fd) {}
    UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    UniqueFd& operator=(UniqueFd&& o) noexcept;
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd();

    int get() const { return fd_; }
    bool valid() const { return fd_ >= 0; }
    int release() { return std::exchange(fd_, -1); }
    // Close and report the error (swap files: a failed close may mean lost data).
    Result<void> close();

private:
    int fd_ = -1;
};

// An mmap'd range, unmapped on destruction.
class Mapping {
public:
    Mapping() = default;
    Mapping(void* addr, std::size_t len) : addr_(static_cast<std::byte*>(addr)), len_(len) {}
    Mapping(Mapping&& o) noexcept : addr_(std::exchange(o.addr_, nullptr)), len_(std::exchange(o.len_, 0)) {}
    Mapping& operator=(Mapping&& o) noexcept;
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping();

    // Anonymous private memory (page aligned), e.g. O_DIRECT bounce buffers.
    static Result<Mapping> anonymous(std::size_t len);
    // A shared mapping of fd at offset (MAP_SHARED, read/write).
    static Result<Mapping> shared(int fd, std::size_t len, std::size_t offset = 0, int extra_flags = 0);

    std::byte* data() const { return addr_; }
    std::size_t size() const { return len_; }
    std::span<std::byte> span() const { return {addr_, len_}; }

private:
    std::byte* addr_ = nullptr;
    std::size_t len_ = 0;
};

}  // namespace swapvisor::io
