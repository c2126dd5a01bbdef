// The working-set measurement on the real stack (memfd, userfaultfd, reclaimer; no
// KVM, no swap): the age scan zaps resident pages while the reclaimer is idle, a
// host thread playing the guest keeps touching a hot set, and the cold-age histogram
// and working-set estimate published by the hand separate it from pages touched once.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "guestmem/host_memory.hpp"
#include "swap/swap_pool.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kColdPages = 1024, kHotPages = 64;

template <class Pred>
bool eventually(Pred pred, std::chrono::seconds bound) {
    const auto end = std::chrono::steady_clock::now() + bound;
    while (std::chrono::steady_clock::now() < end) {
        if (pred()) return true;
        std::this_thread::sleep_for(50ms);
    }
    return pred();
}

}  // namespace

TEST(PrivilegedWorkingSetTest, TheAgeScanSeparatesAHotSetFromPagesTouchedOnce) {
    if (access("/proc/sys/vm/unprivileged_userfaultfd", F_OK) != 0) GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable";
    swap::SwapPool pool;
    HostMemory host(pool, 0);
    auto created = host.create_vm(MemoryConfig{.name = "ws",
                                               .memory_bytes = 16ULL << 20,
                                               .working_set_window = 1s,
                                               .age_scan_period = 200ms});
    ASSERT_TRUE(created.has_value()) << created.error().message();
    GuestMemory* vm = *created;
    ASSERT_TRUE(vm->start().has_value());
    auto* base = reinterpret_cast<volatile std::uint64_t*>(vm->regions()[0].guest_view);
    // Pages [kHotPages, kHotPages + kColdPages) touched once (every 2nd page: no
    // fault-around, which maps sequential first touches ahead), the first kHotPages all the time.
    for (std::uint64_t p = 0; p < kColdPages; ++p) base[(kHotPages + 2 * p) * kPageSize / 8] = p + 1;
    std::atomic<bool> stop{false};
    std::thread guest([&] {
        std::uint64_t pass = 0;
        while (!stop.load(std::memory_order_relaxed)) {
            for (std::uint64_t p = 0; p < kHotPages; p += 2) base[p * kPageSize / 8] = ++pass;
            std::this_thread::sleep_for(1ms);
        }
    });
    const std::uint64_t hot_touched = kHotPages / 2;
    MemStats s;
    const bool separated = eventually(
        [&] {
            s = vm->stats();
            // A sweep finished after the cold pages aged past the 1 s window.
            return s.cold_age_seconds.count() >= kColdPages + hot_touched &&
                   s.working_set_bytes <= 4 * hot_touched * kPageSize &&
                   s.cold_age_seconds.count() - s.cold_age_seconds.cumulative[0] >= kColdPages;
        },
        60s);
    stop = true;
    guest.join();
    EXPECT_TRUE(separated) << "working set " << s.working_set_bytes / kPageSize << " pages, touched "
                           << s.cold_age_seconds.count() << ", <= 1 s " << s.cold_age_seconds.cumulative[0];
    EXPECT_GE(s.working_set_bytes, hot_touched / 2 * kPageSize) << "the hot set is in use";
    EXPECT_GT(s.minor_faults, 0u) << "the age scan zapped pages that were touched again";
    EXPECT_GT(s.cold_age_seconds.sum_seconds, 0.0);
    vm->stop();
    ASSERT_TRUE(host.remove_vm("ws").has_value());
}
