// ImageWriter: writes a snapshot's memory image (docs/SNAPSHOT.md#format,
// guestmem/README.md#snapshots) while the saver walks the stage-2 table. The saver
// copies each resident page, under its page lock, into a staging page the writer
// hands out (stage()) and keeps it (keep()) unless it turned out zero; kept pages of
// consecutive indices form runs. A full staging buffer goes to a writer thread,
// which writes its runs at page i * 4 KiB with O_DIRECT (no copy into the page cache;
// buffered where the file system refuses O_DIRECT), while the saver fills the next
// buffer (kWriters threads take full buffers, so that many writes are in flight).
// So a snapshot costs the copy of what is resident plus the disk's time for
// it, overlapped, not a second copy into the page cache and its writeback in fsync.
//
// Threads: the saver (the thread that calls stage/keep/finish) and the kWriters
// writer threads this object starts and joins. They share only the buffer queues (mutex_).
// Errors: the first write error stops further writes; the saver sees it at its next
// buffer hand-off or at finish(). The file is the caller's: it creates it (sized,
// sparse) and renames or removes it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "guestmem/addr.hpp"
#include "io/result.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::guestmem {

class ImageWriter {
public:
    static constexpr std::size_t kBufferPages = 256;  // 1 MiB per staging buffer
    static constexpr std::size_t kBuffers = 6;
    // Writes in flight per walker, so that the disk has a queue while the walker
    // copies. On the development host's disk the snapshot ran at fio's speed for its
    // bytes with 1 walker and with 2 (3 and 6 writes in flight) alike; a faster NVMe
    // needs the depth (docs/PERFORMANCE.md, "Snapshot time, since the O_DIRECT image
    // writer"; DESIGN-NOTES 57).
    static constexpr std::size_t kWriters = 3;

    // Writes into fd (borrowed; open for writing; O_DIRECT is set on it here where
    // the file system takes it). `path` names it in errors.
    static Result<std::unique_ptr<ImageWriter>> start(int fd, std::filesystem::path path);
    ~ImageWriter();  // stops and joins the writer; what was not written is not written
    ImageWriter(const ImageWriter&) = delete;
    ImageWriter& operator=(const ImageWriter&) = delete;

    // A staging page for page `idx` (each page at most once; consecutive indices
    // kept one after the other become one write); the previous staging page is dropped unless keep() was called for it. Fails only
    // with an earlier write's error.
    Result<std::byte*> stage(PageIdx idx);
    // The last staged page goes into the image.
    void keep();
    // Writes what is staged and waits for every write: bytes written. No fsync: the
    // caller syncs the file once (several writers may share it; O_DIRECT writes into
    // holes allocate blocks, which are metadata an fsync makes durable).
    Result<std::uint64_t> finish();

    bool direct() const { return direct_.load(); }  // writes go around the page cache
    // True while every staging buffer but the one being filled waits for the disk:
    // staging more would soon wait too, so the saver may do work that writes nothing
    // first (GuestMemory::save walks the chunks it holds slots in then).
    bool disk_bound();

private:
    struct Run {
        std::uint64_t first_page;
        std::uint32_t pages;
        std::uint32_t at;  // first staging page in the buffer
    };
    struct Buffer {
        std::byte* base;  // in staging_
        std::vector<Run> runs;
        std::uint32_t used = 0;  // staging pages kept
    };

    ImageWriter(int fd, std::filesystem::path path, bool direct) : fd_(fd), path_(std::move(path)), direct_(direct) {}
    Result<void> hand_off();  // the current buffer to the writer; take a free one
    void writer_loop();
    Result<void> write_run(const Buffer& b, const Run& r);

    int fd_;
    std::filesystem::path path_;
    std::atomic<bool> direct_;  // cleared by the writer if the file system refuses an O_DIRECT write
    io::Mapping staging_;  // every buffer; its pages fault in as they are first used
    std::vector<Buffer> buffers_;
    // Saver-only: the buffer being filled and the staged page.
    std::size_t current_ = 0;
    std::optional<std::uint64_t> staged_;
    std::byte* staged_at_ = nullptr;

    // Protects: free_, full_, stop_, error_, bytes_; Order: leaf.
    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<std::size_t> free_;
    std::deque<std::size_t> full_;
    bool stop_ = false;
    std::optional<Error> error_;
    std::uint64_t bytes_ = 0;
    std::vector<std::thread> writers_;
};

}  // namespace swapvisor::guestmem
