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

// The sampled age scan zaps one 2 MiB group in N per sweep (group g in sweep g mod
// N), so a VM with every page in memory and nothing touching it has, right after the
// first sweep, groups 0 and 4 zapped (inactive) and groups 2, 3, 6 and 7 untouched:
// their sweeps (2 and 3) cannot start before a whole period has passed. Before
// sampling every resident page was zapped in the first sweep. The period is long
// (12 s: the hand reaches group 0's first chunk after 1.5 s) so that making all 4096
// pages resident, one MINOR fault each, stays ahead of the hand under TSan on a
// loaded 2-core machine (with 3 s it did not once: 0.73 ms per fault was too slow).
TEST(PrivilegedWorkingSetTest, TheSampledAgeScanZapsOneGroupInNPerSweep) {
    if (access("/proc/sys/vm/unprivileged_userfaultfd", F_OK) != 0) GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable";
    constexpr std::uint64_t kGroupBytes = AgeSampling::kGroupPages * kPageSize;
    swap::SwapPool pool;
    HostMemory host(pool, 0);
    auto created = host.create_vm(MemoryConfig{.name = "sampled",
                                               .memory_bytes = 8 * kGroupBytes,
                                               .working_set_window = 1s,
                                               .age_scan_period = 12s,
                                               .age_scan_sample = 4});
    ASSERT_TRUE(created.has_value()) << created.error().message();
    GuestMemory* vm = *created;
    std::vector<std::byte> ones(8 * kGroupBytes, std::byte{1});
    ASSERT_TRUE(vm->write(Gpa(0), ones).has_value());  // every page in memory (inactive: row 2)
    // A touch through the guest view of each page makes it resident (MINOR fault).
    ASSERT_TRUE(vm->start().has_value());
    auto* base = reinterpret_cast<volatile std::uint8_t*>(vm->regions()[0].guest_view);
    for (std::uint64_t p = 0; p < 8 * AgeSampling::kGroupPages; ++p) (void)base[p * kPageSize];
    auto state_of = [&](std::uint64_t group, std::uint64_t page) {
        return vm->entry(Gpa(group * kGroupBytes + page * kPageSize)).state();
    };
    for (std::uint64_t g = 0; g < 8; ++g) ASSERT_EQ(state_of(g, 7), PageState::resident) << g;
    MemStats s;
    ASSERT_TRUE(eventually([&] { return (s = vm->stats()).cold_age_seconds.count() > 0; }, 90s))
        << "no sweep finished";
    EXPECT_EQ(s.age_scan_sample, 4u);
    std::uint64_t zapped_in_sweep0 = 0, untouched = 0;
    for (std::uint64_t g : {0u, 4u})
        for (std::uint64_t p = 0; p < AgeSampling::kGroupPages; ++p) zapped_in_sweep0 += state_of(g, p) == PageState::inactive;
    for (std::uint64_t g : {2u, 3u, 6u, 7u})
        for (std::uint64_t p = 0; p < AgeSampling::kGroupPages; ++p) untouched += state_of(g, p) == PageState::resident;
    EXPECT_EQ(zapped_in_sweep0, 2 * AgeSampling::kGroupPages) << "sweep 0 zaps groups 0 and 4";
    EXPECT_EQ(untouched, 4 * AgeSampling::kGroupPages) << "groups 2, 3, 6, 7 wait for sweeps 2 and 3";
    vm->stop();
    ASSERT_TRUE(host.remove_vm("sampled").has_value());
}

TEST(PrivilegedWorkingSetTest, AnAgeScanSampleOutsideOneToSixtyFourIsRefused) {
    swap::SwapPool pool;
    HostMemory host(pool, 0);
    for (unsigned bad : {0u, AgeSampling::kMax + 1}) {
        auto created = host.create_vm(MemoryConfig{.name = "bad", .memory_bytes = 2ULL << 20, .age_scan_sample = bad});
        ASSERT_FALSE(created.has_value()) << bad;
        EXPECT_NE(created.error().message().find("age scan sample"), std::string::npos) << created.error().message();
    }
}
