// PageImage: the memory image of a snapshot as a restored VM reads it (docs/SNAPSHOT.md,
// guestmem/README.md#snapshots): a sparse file, page i of the guest at byte i * 4 KiB,
// opened read-only. Several VMs restored from one snapshot each open it and read
// their pages with pread into their own memfds, so they share its page cache and
// never its pages. Pages in the `image` state (stage2.hpp) are read from here (rows
// 14 / 14'); a page the image does not hold (a short read: the file was truncated
// after it was opened) is an error, never zeros.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "guestmem/addr.hpp"
#include "io/result.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::guestmem {

class PageImage {
public:
    PageImage(io::UniqueFd fd, std::uint64_t pages, std::string path)
        : fd_(std::move(fd)), pages_(pages), path_(std::move(path)) {}
    std::uint64_t pages() const { return pages_; }
    const std::string& path() const { return path_; }
    int fd() const { return fd_.get(); }  // borrowed

    // Page idx's 4 KiB into dst.
    Result<void> read(PageIdx idx, std::byte* dst) const {
        if (idx.value() >= pages_) return errno_error("memory image: page beyond the image", ERANGE, path_);
        std::size_t done = 0;
        while (done < kPageSize) {
            // Kernel contract: pread(2) on a regular file; 0 = end of file.
            const ssize_t n = ::pread(fd_.get(), dst + done, kPageSize - done,
                                      static_cast<off_t>(idx.value() * kPageSize + done));
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return errno_error("memory image: read", errno, path_);
            if (n == 0) return errno_error("memory image: truncated", EIO, path_ + ", page " + std::to_string(idx.value()));
            done += static_cast<std::size_t>(n);
        }
        return {};
    }

private:
    io::UniqueFd fd_;
    std::uint64_t pages_;
    std::string path_;
};

// The order of a restored VM's first faults on pages it did not have yet (`image`
// or `swapped`): the working set a later restore prefetches in that order
// (docs/SNAPSHOT.md#working-set). Each page once. Fault threads append; the saver reads.
class FirstTouchLog {
public:
    explicit FirstTouchLog(std::uint64_t pages) : seen_(pages, false) {}
    void note(PageIdx idx) {
        std::lock_guard lock(mutex_);
        if (idx.value() >= seen_.size() || seen_[idx.value()]) return;
        seen_[idx.value()] = true;
        order_.push_back(static_cast<std::uint32_t>(idx.value()));
    }
    std::vector<std::uint32_t> order() const {
        std::lock_guard lock(mutex_);
        return order_;
    }

private:
    // Protects: seen_, order_; Order: leaf (taken under a page lock).
    mutable std::mutex mutex_;
    std::vector<bool> seen_;
    std::vector<std::uint32_t> order_;
};

}  // namespace swapvisor::guestmem
