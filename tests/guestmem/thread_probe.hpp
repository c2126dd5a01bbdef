// Test helpers shared by the guestmem race tests: observe that another thread is
// really asleep in the kernel (blocked in a userfaultfd fault, a futex or a page
// lock) before the test lets the racing event proceed, and wait for a condition with
// a bound. Nothing here sleeps to synchronise: every wait polls an observable state
// against a deadline and reports which state never came.
#pragma once

#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>

namespace swapvisor::testing {

inline pid_t current_tid() { return static_cast<pid_t>(::syscall(SYS_gettid)); }

// The scheduler state letter of one of our threads ('R', 'S', 'D', ...; '?' if gone).
inline char thread_state(pid_t tid) {
    std::ifstream f("/proc/self/task/" + std::to_string(tid) + "/stat");
    std::string line;
    if (!std::getline(f, line)) return '?';
    auto close = line.rfind(')');
    if (close == std::string::npos || close + 2 >= line.size()) return '?';
    return line[close + 2];
}

// Poll `pred` until it holds or `limit` passes. Returns whether it held.
inline bool wait_until(const std::function<bool()>& pred,
                       std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return true;
}

// Wait until thread `tid` sleeps in the kernel (state S or D). Callers use it after
// the thread announced it is about to block on exactly one thing.
inline bool wait_until_blocked(pid_t tid, std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) {
    return wait_until(
        [tid] {
            char s = thread_state(tid);
            return s == 'S' || s == 'D';
        },
        limit);
}

}  // namespace swapvisor::testing
