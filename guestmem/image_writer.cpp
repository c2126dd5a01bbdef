// ImageWriter (image_writer.hpp): staging buffers filled by the saver, written by one
// thread. Invariants:
//   - a buffer is in exactly one place: the saver's (current_), full_ (to write), the
//     writer's hands, or free_; finish() returns only when all kBuffers are free, so
//     no write is in flight once it returns;
//   - runs are written at page * 4 KiB, whole pages, so O_DIRECT's alignment holds
//     (the buffers are page-aligned mappings);
//   - after the first error nothing more is written, and that error is what
//     stage() and finish() return.
#include "guestmem/image_writer.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

namespace swapvisor::guestmem {

Result<std::unique_ptr<ImageWriter>> ImageWriter::start(int fd, std::filesystem::path path) {
    // Kernel contract: F_SETFL may set O_DIRECT; a file system without direct I/O
    // (tmpfs, some FUSE) answers EINVAL and the file stays buffered.
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0) return errno_error("fcntl(F_GETFL)", errno, path.string());
    const bool direct = ::fcntl(fd, F_SETFL, flags | O_DIRECT) == 0;
    std::unique_ptr<ImageWriter> w(new ImageWriter(fd, std::move(path), direct));
    constexpr std::size_t kBufferBytes = kBufferPages * kPageSize;
    w->staging_ = SWV_TRY(io::Mapping::anonymous(kBuffers * kBufferBytes));
    // Kernel contract: MADV_HUGEPAGE lets the kernel back the mapping with 2 MiB
    // pages at the first touch of each (where THP is "madvise" or "always"); a
    // kernel or host without THP answers EINVAL and 4 KiB pages back it as before.
    (void)::madvise(w->staging_.data(), w->staging_.size(), MADV_HUGEPAGE);
    // Not populated up front: a snapshot of a mostly swapped VM uses little of it,
    // and populating every walker's buffers cost more than the whole walk there.
    w->buffers_.reserve(kBuffers);
    for (std::size_t i = 0; i < kBuffers; ++i) {
        w->buffers_.push_back(Buffer{w->staging_.data() + i * kBufferBytes, {}, 0});
        if (i != 0) w->free_.push_back(i);
    }
    w->current_ = 0;
    for (std::size_t i = 0; i < kWriters; ++i) w->writers_.emplace_back([p = w.get()] { p->writer_loop(); });
    return w;
}

ImageWriter::~ImageWriter() {
    {
        std::lock_guard lock(mutex_);
        stop_ = true;
        if (!error_) error_ = errno_error("memory image: abandoned", ECANCELED, path_.string()).error();
    }
    cv_.notify_all();
    for (auto& t : writers_)
        if (t.joinable()) t.join();
}

Result<std::byte*> ImageWriter::stage(PageIdx idx) {
    if (buffers_[current_].used == kBufferPages) SWV_TRY(hand_off());
    Buffer& b = buffers_[current_];
    staged_ = idx.value();
    return b.base + static_cast<std::size_t>(b.used) * kPageSize;
}

void ImageWriter::keep() {
    SWV_ASSERT(staged_.has_value(), "ImageWriter::keep without a staged page");
    Buffer& b = buffers_[current_];
    const std::uint64_t page = *staged_;
    staged_.reset();
    if (!b.runs.empty() && b.runs.back().first_page + b.runs.back().pages == page)
        ++b.runs.back().pages;  // its staging page is b.used: right after the run's
    else
        b.runs.push_back(Run{page, 1, b.used});
    ++b.used;
}

Result<void> ImageWriter::hand_off() {
    std::unique_lock lock(mutex_);
    full_.push_back(current_);
    cv_.notify_all();
    cv_.wait(lock, [&] { return !free_.empty(); });  // the writer frees buffers even after an error
    current_ = free_.front();
    free_.pop_front();
    if (error_) return std::unexpected(*error_);
    return {};
}

bool ImageWriter::disk_bound() {
    std::lock_guard lock(mutex_);
    return free_.empty();
}

Result<std::uint64_t> ImageWriter::finish() {
    staged_.reset();
    std::unique_lock lock(mutex_);
    if (buffers_[current_].runs.empty()) free_.push_back(current_);
    else full_.push_back(current_);
    cv_.notify_all();
    cv_.wait(lock, [&] { return free_.size() == kBuffers; });
    stop_ = true;
    cv_.notify_all();
    lock.unlock();
    for (auto& t : writers_) t.join();
    if (error_) return std::unexpected(*error_);
    return bytes_;
}

Result<void> ImageWriter::write_run(const Buffer& b, const Run& r) {
    const std::byte* src = b.base + static_cast<std::size_t>(r.at) * kPageSize;
    const std::size_t len = static_cast<std::size_t>(r.pages) * kPageSize;
    const auto offset = static_cast<off_t>(r.first_page * kPageSize);
    std::size_t done = 0;
    while (done < len) {
        // Kernel contract: pwrite(2) may write less than asked; EINTR retried. With
        // O_DIRECT a file system may still refuse an I/O (EINVAL): clear the flag
        // and write it buffered.
        const ssize_t n = ::pwrite(fd_, src + done, len - done, offset + static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EINVAL && direct_) {
            const int flags = ::fcntl(fd_, F_GETFL);
            if (flags >= 0 && ::fcntl(fd_, F_SETFL, flags & ~O_DIRECT) == 0) {
                direct_ = false;
                continue;
            }
            errno = EINVAL;
        }
        if (n < 0) return errno_error("memory image: write", errno, path_.string());
        if (n == 0) return errno_error("memory image: write made no progress", EIO, path_.string());
        done += static_cast<std::size_t>(n);
    }
    return {};
}

void ImageWriter::writer_loop() {
    std::unique_lock lock(mutex_);
    for (;;) {
        cv_.wait(lock, [&] { return stop_ || !full_.empty(); });
        if (full_.empty()) return;  // stop_ and nothing left
        const std::size_t i = full_.front();
        full_.pop_front();
        bool failed = error_.has_value();
        lock.unlock();
        Buffer& b = buffers_[i];
        std::uint64_t written = 0;
        std::optional<Error> err;
        for (const Run& r : b.runs) {
            if (failed) break;
            if (auto w = write_run(b, r); !w) {
                err = w.error();
                failed = true;
            } else {
                written += static_cast<std::uint64_t>(r.pages) * kPageSize;
            }
        }
        b.runs.clear();
        b.used = 0;
        lock.lock();
        if (err && !error_) error_ = std::move(err);
        bytes_ += written;
        free_.push_back(i);
        cv_.notify_all();
    }
}

}  // namespace swapvisor::guestmem
