// UniqueFd and Mapping: the RAII owners every layer uses for descriptors and mmap'd
// ranges. Invariant: an owner holds either nothing (-1 / nullptr) or exactly one
// live resource, and releases it exactly once (move leaves the source empty).
// Destructors cannot report errors, so UniqueFd::close() exists for callers that
// must know whether a close lost data (swap files).
#include "io/unique_fd.hpp"

#include <sys/mman.h>
#include <unistd.h>

namespace swapvisor::io {

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
        (void)close();  // the destructor's fallback: an error here has no caller to tell
        fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
}

UniqueFd::~UniqueFd() { (void)close(); }

Result<void> UniqueFd::close() {
    if (fd_ < 0) return {};
    int fd = std::exchange(fd_, -1);
    // Kernel contract: close(2) releases the descriptor even when it fails (Linux never
    // leaves it open, also on EINTR), so it must not be retried; the error only tells
    // that earlier writes may be lost.
    if (::close(fd) != 0 && errno != EINTR) return errno_error("close");
    return {};
}

Mapping& Mapping::operator=(Mapping&& o) noexcept {
    if (this != &o) {
        Mapping old(std::move(*this));  // unmapped when `old` leaves scope
        addr_ = std::exchange(o.addr_, nullptr);
        len_ = std::exchange(o.len_, 0);
    }
    return *this;
}

Mapping::~Mapping() {
    if (addr_ == nullptr) return;
    // Kernel contract: munmap of a range we mapped ourselves fails only on a bad
    // address or length, i.e. a broken invariant of this class.
    int rc = ::munmap(addr_, len_);
    SWV_ASSERT(rc == 0, "munmap of an owned mapping failed");
}

Result<Mapping> Mapping::anonymous(std::size_t len) {
    if (len == 0) return errno_error("mmap anonymous", EINVAL);
    // Kernel contract: a private anonymous mapping is zero filled and page aligned,
    // which satisfies O_DIRECT buffer alignment for any logical block size <= 4096.
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return errno_error("mmap anonymous");
    return Mapping(p, len);
}

Result<Mapping> Mapping::shared(int fd, std::size_t len, std::size_t offset, int extra_flags) {
    if (len == 0) return errno_error("mmap shared", EINVAL);
    // Kernel contract: MAP_SHARED writes go to the file's page cache (for a memfd: its
    // pages); offset must be page aligned or mmap fails with EINVAL.
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | extra_flags, fd,
                     static_cast<off_t>(offset));
    if (p == MAP_FAILED) return errno_error("mmap shared");
    return Mapping(p, len);
}

}  // namespace swapvisor::io
