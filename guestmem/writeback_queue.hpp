// WritebackQueue: one VM's batches between its CLOCK scan step and the host-wide
// reclaim workers that write them (guestmem/reclaimer.cpp, reclaim_service.hpp).
// Bounded: the scan step runs only while fewer than kQueuedBatches batches are
// queued or being written (has_room), so at most that many batches of pages (plus
// the one or two a single step can add when the hand wraps) sit in writeback and the
// resident count lags the reclaimer's decisions by at most that. Nothing here blocks
// a worker: a worker that would wait returns to the service instead, and the
// completion that makes room signals the VM again.
// Threads: push / take_results / pending_pages / has_room / idle from the VM's scan
// step (one worker at a time); try_pop / done from any worker; wait_idle from whoever
// stops the VM. One mutex.
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

// Three batches: one being completed, one being written, one queued.
inline constexpr std::size_t kQueuedBatches = 3;  // batches queued, being written or completed

class WritebackQueue {
public:
    // Scan step: hand over a batch (no page locks held). Never waits: the step is
    // started only with room (has_room).
    void push(std::vector<Writeback> batch) {
        std::lock_guard lk(mutex_);
        pending_pages_ += batch.size();
        batches_.push_back(std::move(batch));
    }
    // Worker: the next batch, if one is queued.
    std::optional<std::vector<Writeback>> try_pop() {
        std::lock_guard lk(mutex_);
        if (batches_.empty()) return std::nullopt;
        std::vector<Writeback> batch = std::move(batches_.front());
        batches_.pop_front();
        ++writing_;
        return batch;
    }
    // Worker: a batch popped earlier is complete.
    void done(std::size_t pages, std::uint64_t freed, std::optional<swap::Errc> error) {
        std::lock_guard lk(mutex_);
        --writing_;
        pending_pages_ -= pages;
        freed_ += freed;
        if (error && !error_) error_ = error;
        idle_cv_.notify_all();
    }
    // Scan step: pages that left memory through completed writes, and the first write
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
    bool has_queued() const {
        std::lock_guard lk(mutex_);
        return !batches_.empty();
    }
    // Room for the scan step to queue more.
    bool has_room() const {
        std::lock_guard lk(mutex_);
        return batches_.size() + writing_ < kQueuedBatches;
    }
    // Every batch queued so far is written and complete.
    bool idle() const {
        std::lock_guard lk(mutex_);
        return batches_.empty() && writing_ == 0;
    }
    // The VM's stop: wait until every batch queued is complete (the workers write them).
    void wait_idle() {
        std::unique_lock lk(mutex_);
        idle_cv_.wait(lk, [&] { return batches_.empty() && writing_ == 0; });
    }

private:
    // Protects: everything below. Order: leaf (taken with no page lock held, under
    // the VM's reclaim_mutex at most).
    mutable std::mutex mutex_;
    std::condition_variable idle_cv_;  // wait_idle: a batch completed
    std::deque<std::vector<Writeback>> batches_;
    std::size_t writing_ = 0;
    std::uint64_t pending_pages_ = 0;
    std::uint64_t freed_ = 0;
    std::optional<swap::Errc> error_;
};

}  // namespace swapvisor::guestmem
