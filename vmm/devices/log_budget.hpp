// LogBudget: a cap on log lines a guest can trigger. A guest that misbehaves in a
// loop (bad registers, bad buffers) must not flood the host's log: each budget lets
// `n` lines through, then none. Threads: take() from any thread (relaxed: a log
// throttle orders nothing).
#pragma once

#include <atomic>

namespace swapvisor::vmm::devices {

class LogBudget {
public:
    explicit constexpr LogBudget(unsigned n) : left_(n) {}
    // True while the budget lasts (and spends one line of it).
    bool take() {
        unsigned n = left_.load(std::memory_order_relaxed);
        while (n > 0 && !left_.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) {
        }
        return n > 0;
    }

private:
    std::atomic<unsigned> left_;
};

}  // namespace swapvisor::vmm::devices
