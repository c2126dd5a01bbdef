// LatencyHistogram: the `le` rule at every bound, cumulative snapshots, +Inf == count,
// the sum, and concurrent records losing nothing. No root needed.
#include "guestmem/latency_histogram.hpp"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

using namespace swapvisor::guestmem;
using std::chrono::nanoseconds;

TEST(LatencyHistogram, BoundsAreAscendingSecondsEndingInInf) {
    for (std::size_t i = 0; i + 1 < kLatencyBucketCount; ++i) {
        EXPECT_LT(kLatencyBuckets[i].le_ns, kLatencyBuckets[i + 1].le_ns) << i;
        // The label is the bound in seconds.
        EXPECT_DOUBLE_EQ(std::stod(kLatencyBuckets[i].le) * 1e9, static_cast<double>(kLatencyBuckets[i].le_ns))
            << kLatencyBuckets[i].le;
    }
    EXPECT_STREQ(kLatencyBuckets[kLatencyBucketCount - 1].le, "+Inf");
    EXPECT_EQ(kLatencyBuckets[0].le_ns, 25'000u);
    EXPECT_EQ(kLatencyBuckets[kLatencyBucketCount - 2].le_ns, 100'000'000u);
}

TEST(LatencyHistogram, ASampleOnABoundCountsInThatBucketOneMoreInTheNext) {
    EXPECT_EQ(LatencyHistogram::bucket_of(0), 0u);
    for (std::size_t i = 0; i + 1 < kLatencyBucketCount; ++i) {
        EXPECT_EQ(LatencyHistogram::bucket_of(kLatencyBuckets[i].le_ns), i) << kLatencyBuckets[i].le;
        EXPECT_EQ(LatencyHistogram::bucket_of(kLatencyBuckets[i].le_ns + 1), i + 1) << kLatencyBuckets[i].le;
    }
    EXPECT_EQ(LatencyHistogram::bucket_of(UINT64_MAX), kLatencyBucketCount - 1);
}

TEST(LatencyHistogram, SnapshotIsCumulativeWithInfEqualToCountAndTheSum) {
    LatencyHistogram h;
    LatencySnapshot empty = h.snapshot();
    EXPECT_EQ(empty.count(), 0u);
    EXPECT_EQ(empty.sum_ns, 0u);
    for (std::uint64_t c : empty.cumulative) EXPECT_EQ(c, 0u);

    h.record(nanoseconds(10'000));       // le 25us
    h.record(nanoseconds(25'000));       // le 25us (on the bound)
    h.record(nanoseconds(25'001));       // le 50us
    h.record(nanoseconds(900'000));      // le 1ms
    h.record(nanoseconds(3'000'000));    // le 5ms
    h.record(nanoseconds(2'000'000'000));  // only +Inf
    h.record(nanoseconds(-5));           // a clock that went backwards counts as 0
    const LatencySnapshot s = h.snapshot();
    const std::vector<std::uint64_t> want = {3, 4, 4, 4, 4, 5, 5, 6, 6, 6, 6, 7};
    ASSERT_EQ(want.size(), kLatencyBucketCount);
    for (std::size_t i = 0; i < kLatencyBucketCount; ++i) EXPECT_EQ(s.cumulative[i], want[i]) << kLatencyBuckets[i].le;
    EXPECT_EQ(s.count(), 7u);
    EXPECT_EQ(s.sum_ns, 10'000u + 25'000 + 25'001 + 900'000 + 3'000'000 + 2'000'000'000);
    EXPECT_DOUBLE_EQ(s.sum_seconds(), static_cast<double>(s.sum_ns) / 1e9);
}

TEST(LatencyHistogram, ConcurrentRecordsAreAllCountedAndSnapshotsStayMonotonic) {
    LatencyHistogram h;
    constexpr int kThreads = 4, kPerThread = 50'000;
    std::atomic<bool> done{false};
    std::thread reader([&] {
        while (!done.load()) {
            LatencySnapshot s = h.snapshot();
            for (std::size_t i = 1; i < kLatencyBucketCount; ++i) ASSERT_LE(s.cumulative[i - 1], s.cumulative[i]);
        }
    });
    std::vector<std::thread> writers;
    for (int t = 0; t < kThreads; ++t)
        writers.emplace_back([&h, t] {
            for (int i = 0; i < kPerThread; ++i) h.record(nanoseconds((i % 7) * 20'000 + t));
        });
    for (auto& w : writers) w.join();
    done = true;
    reader.join();
    const LatencySnapshot s = h.snapshot();
    EXPECT_EQ(s.count(), std::uint64_t{kThreads} * kPerThread);
    std::uint64_t sum = 0;
    for (int t = 0; t < kThreads; ++t)
        for (int i = 0; i < kPerThread; ++i) sum += static_cast<std::uint64_t>((i % 7) * 20'000 + t);
    EXPECT_EQ(s.sum_ns, sum);
}
