// LogBudget: a cap on the log lines a guest can trigger. A guest that misbehaves in
// a loop (bad registers, bad buffers) must not flood the host's log, and one noisy
// guest must not silence the others: each device of each VM owns its budget (a
// member of the transport / device, never a process-wide one), a token bucket that
// lets `burst` lines through at once and then one more per `refill` interval, so a
// device that misbehaves again an hour later is heard again.
// Threads: take() from any thread; one small mutex (a log line is the slow path).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>

namespace swapvisor::vmm::devices {

class LogBudget {
public:
    using Clock = std::chrono::steady_clock;
    static constexpr unsigned kDefaultBurst = 32;
    static constexpr Clock::duration kDefaultRefill = std::chrono::seconds(1);

    explicit LogBudget(unsigned burst = kDefaultBurst, Clock::duration refill = kDefaultRefill)
        : burst_(std::max(burst, 1u)), refill_(std::max(refill, Clock::duration(1))), tokens_(burst_) {}

    // True while the budget lasts (and spends one line of it).
    bool take() { return take(Clock::now()); }
    // The same at a given time (tests step the clock).
    bool take(Clock::time_point now) {
        std::lock_guard lock(mutex_);
        if (!last_) last_ = now;
        if (now > *last_) {
            const auto intervals = static_cast<std::uint64_t>((now - *last_) / refill_);
            if (intervals > 0) {
                tokens_ = static_cast<unsigned>(std::min<std::uint64_t>(burst_, tokens_ + intervals));
                // Whole intervals only: the remainder counts toward the next line.
                *last_ += refill_ * static_cast<Clock::rep>(intervals);
            }
        }
        if (tokens_ == 0) {
            ++suppressed_;
            return false;
        }
        --tokens_;
        return true;
    }
    // Lines refused so far.
    std::uint64_t suppressed() const {
        std::lock_guard lock(mutex_);
        return suppressed_;
    }

private:
    const unsigned burst_;
    const Clock::duration refill_;
    // Protects: tokens_, last_, suppressed_; Order: leaf.
    mutable std::mutex mutex_;
    unsigned tokens_;
    std::optional<Clock::time_point> last_;  // the refill clock, from the first take()
    std::uint64_t suppressed_ = 0;
};

}  // namespace swapvisor::vmm::devices
