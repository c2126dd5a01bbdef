// Staging: the copies that pages on their way to swap are written from
// (guestmem/README.md#reclaim, issue #18 item 2). Row 5 copies a cold page out of
// the memfd (PageKernel::copy_out: a read of the file, no mapping of either view)
// into a StagingBuffer while it holds the page's lock; the zero check and the
// checksum run over that copy in one pass, and write_out writes the copy. So the
// bytes stored are exactly the bytes hashed, the VMM view is never faulted in for a
// write (on a shadow-paged host each of those faults, and each unmap of it at the
// punch, traps), and a batch's pages sit back to back in one buffer, so slots
// allocated contiguously become one write whatever guest pages they came from.
//
// A buffer is shared by the Writebacks staged in it (shared_ptr) and goes back to its
// pool when the last of them is gone, i.e. after the batch's write completed. The
// pool keeps a few buffers of the reclaimer's batch size so steady reclaim maps
// nothing: one pool per ReclaimService (4 per worker), shared by its VMs, so what is
// kept does not grow with the number of VMs.
//
// Threads: a buffer is filled by one thread (the scanner, under the page locks),
// then only read (write_out on a writeback thread; the queue hand-off orders it).
// The pool's free list has its own mutex (a leaf).
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "guestmem/addr.hpp"
#include "io/result.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::guestmem {

// The reclaimer's write batch (2 MiB), and the buffers kept per reclaim worker (a
// worker's batch being filled, written and completed, and one spare).
inline constexpr std::size_t kStagingPages = 512;
inline constexpr std::size_t kStagingKept = 4;

class StagingBuffer {
public:
    explicit StagingBuffer(io::Mapping mem) : mem_(std::move(mem)) {}

    std::size_t capacity() const { return mem_.size() / kPageSize; }
    std::size_t used() const { return used_; }
    std::size_t room() const { return capacity() - used_; }
    // The first free page; `take(n)` marks n pages from there as used.
    std::byte* next() const { return mem_.data() + used_ * kPageSize; }
    void take(std::size_t pages) { used_ += pages; }
    void reset() { used_ = 0; }

private:
    io::Mapping mem_;
    std::size_t used_ = 0;
};

class StagingPool {
public:
    // `pages`: the size of the buffers kept for reuse; `keep`: how many are kept.
    StagingPool(std::size_t pages, std::size_t keep) : state_(std::make_shared<State>(pages, keep)) {}

    // A buffer with room for at least `pages` pages (the pool's size if 0); empty
    // (null) if memory for it could not be mapped.
    std::shared_ptr<StagingBuffer> acquire(std::size_t pages = 0) {
        State& s = *state_;
        if (pages == 0) pages = s.pages;
        std::unique_ptr<StagingBuffer> buf;
        if (pages <= s.pages) {
            std::lock_guard lock(s.mutex);
            if (!s.free.empty()) {
                buf = std::move(s.free.back());
                s.free.pop_back();
            }
        }
        if (!buf) {
            const std::size_t n = pages <= s.pages ? s.pages : pages;
            auto mem = io::Mapping::anonymous(n * kPageSize);
            if (!mem) return nullptr;
            // Kernel contract: MADV_POPULATE_WRITE faults the whole buffer in now, once,
            // instead of one fault per page on its first copy (a buffer is reused).
            (void)::madvise(mem->data(), mem->size(), MADV_POPULATE_WRITE);
            buf = std::make_unique<StagingBuffer>(std::move(*mem));
        }
        buf->reset();
        // The deleter returns the buffer to the pool (kept alive by the deleter's
        // reference to its state, whatever outlives whom).
        return std::shared_ptr<StagingBuffer>(buf.release(), [state = state_](StagingBuffer* b) {
            std::unique_ptr<StagingBuffer> owned(b);
            if (owned->capacity() != state->pages) return;
            std::lock_guard lock(state->mutex);
            if (state->free.size() < state->keep) state->free.push_back(std::move(owned));
        });
    }

    // Buffers kept for reuse now.
    std::size_t kept() const {
        std::lock_guard lock(state_->mutex);
        return state_->free.size();
    }

private:
    struct State {
        State(std::size_t p, std::size_t k) : pages(p), keep(k) {}
        const std::size_t pages;
        const std::size_t keep;
        // Protects: free; Order: leaf.
        std::mutex mutex;
        std::vector<std::unique_ptr<StagingBuffer>> free;
    };
    std::shared_ptr<State> state_;
};

}  // namespace swapvisor::guestmem
