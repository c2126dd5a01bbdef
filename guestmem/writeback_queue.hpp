// WritebackQueue: the reclaimer's scanner -> writeback thread hand-off
// (guestmem/reclaimer.cpp). Bounded: the scanner waits while kQueuedBatches batches
// are queued or being written, so at most that many batches of pages sit in
// writeback and the resident count lags the reclaimer's decisions by at most that.
// Threads: push / take_results / pending_pages / drain from the scanner; pop / done
// from the writeback thread; close from whoever stops the VM. One mutex.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "guestmem/transitions.hpp"

namespace swapvisor::guestmem {

// Two writeback threads: while one punches the batch it wrote (finish_writeback,
// half of a writeback's CPU), the other writes the next. Three batches: one being
// completed, one being written, one queued.
inline constexpr unsigned kWritebackThreads = 2;
inline constexpr std::size_t kQueuedBatches = 3;  // batches queued, being written or completed

class WritebackQueue {
public:
    // Scanner: hand over a batch (no page locks held); waits for room.
    void push(std::vector<Writeback> batch) {
        std::unique_lock lk(mutex_);
        room_.wait(lk, [&] { return batches_.size() + writing_ < kQueuedBatches; });
        pending_pages_ += batch.size();
        batches_.push_back(std::move(batch));
        work_.notify_one();
    }
    // Writeback thread: the next batch, or nullopt once closed and drained.
    std::optional<std::vector<Writeback>> pop() {
        std::unique_lock lk(mutex_);
        work_.wait(lk, [&] { return !batches_.empty() || closed_; });
        if (batches_.empty()) return std::nullopt;
        std::vector<Writeback> batch = std::move(batches_.front());
        batches_.pop_front();
        ++writing_;
        return batch;
    }
    // Writeback thread: a batch popped earlier is complete.
    void done(std::size_t pages, std::uint64_t freed, std::optional<swap::Errc> error) {
        std::lock_guard lk(mutex_);
        --writing_;
        pending_pages_ -= pages;
        freed_ += freed;
        if (error && !error_) error_ = error;
        room_.notify_all();
    }
    // Scanner: pages that left memory through completed writes, and the first write
    // error, since the last call.
    std::pair<std::uint64_t, std::optional<swap::Errc>> take_results() {
        std::lock_guard lk(mutex_);
        return {std::exchange(freed_, 0), std::exchange(error_, std::nullopt)};
    }
    // Pages queued or being written: still resident, already on their way out.
    std::uint64_t pending_pages() const {
        std::lock_guard lk(mutex_);
        return pending_pages_;
    }
    // Scanner: wait until every queued batch is complete.
    void drain() {
        std::unique_lock lk(mutex_);
        room_.wait(lk, [&] { return batches_.empty() && writing_ == 0; });
    }
    // No more batches: the writeback thread ends after the queued ones.
    void close() {
        std::lock_guard lk(mutex_);
        closed_ = true;
        work_.notify_all();
    }

private:
    mutable std::mutex mutex_;
    std::condition_variable work_;  // writeback thread: a batch or close
    std::condition_variable room_;  // scanner: a batch completed
    std::deque<std::vector<Writeback>> batches_;
    std::size_t writing_ = 0;
    std::uint64_t pending_pages_ = 0;
    std::uint64_t freed_ = 0;
    std::optional<swap::Errc> error_;
    bool closed_ = false;
};

}  // namespace swapvisor::guestmem
