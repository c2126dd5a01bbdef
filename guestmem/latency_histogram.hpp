// LatencyHistogram: a fixed-bucket latency histogram that the fault path records
// into without a lock (guestmem/README.md#stats): one relaxed fetch_add on the bucket
// the sample falls in and one on the running sum. Readers (stats(), from the control
// and metrics threads) take a LatencySnapshot, whose buckets are cumulative like a
// Prometheus histogram's `le` buckets: bucket i counts the samples <= kLatencyBuckets[i],
// the last one (+Inf) counts them all and is the sample count.
//
// Buckets are stored per range, not cumulatively, so a record touches one counter;
// the snapshot adds them up. A snapshot taken while samples arrive is still
// monotonic and its +Inf bucket equals its count by construction (both come from the
// same loads); only `sum_ns` may be a sample ahead of or behind the buckets.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace swapvisor::guestmem {

// One upper bound: `le_ns` in nanoseconds, `le` the same bound in seconds as the
// `le` label and JSON key show it (a protocol name: changing one breaks dashboards).
struct LatencyBucket {
    std::uint64_t le_ns;
    const char* le;
};

// 25 us (a fast NVMe read plus the fault round trip) up to 100 ms (a stalled device
// or a fault that waited for the reclaimer), then +Inf.
inline constexpr LatencyBucket kLatencyBuckets[] = {
    {25'000, "0.000025"},     {50'000, "0.00005"},     {100'000, "0.0001"},   {250'000, "0.00025"},
    {500'000, "0.0005"},      {1'000'000, "0.001"},    {2'500'000, "0.0025"}, {5'000'000, "0.005"},
    {10'000'000, "0.01"},     {25'000'000, "0.025"},   {100'000'000, "0.1"},  {UINT64_MAX, "+Inf"},
};
inline constexpr std::size_t kLatencyBucketCount = std::size(kLatencyBuckets);

struct LatencySnapshot {
    std::array<std::uint64_t, kLatencyBucketCount> cumulative{};  // per kLatencyBuckets entry
    std::uint64_t sum_ns = 0;
    std::uint64_t count() const { return cumulative.back(); }
    double sum_seconds() const { return static_cast<double>(sum_ns) / 1e9; }
};

class LatencyHistogram {
public:
    // Index of the bucket a sample of `ns` belongs to: the first bound >= ns (the
    // `le` rule: a sample equal to a bound counts in that bound's bucket).
    static constexpr std::size_t bucket_of(std::uint64_t ns) {
        return static_cast<std::size_t>(
            std::find_if(std::begin(kLatencyBuckets), std::end(kLatencyBuckets),
                         [ns](const LatencyBucket& b) { return ns <= b.le_ns; }) -
            std::begin(kLatencyBuckets));
    }

    void record(std::chrono::nanoseconds elapsed) {
        const std::uint64_t ns = elapsed.count() > 0 ? static_cast<std::uint64_t>(elapsed.count()) : 0;
        // Relaxed: counters only; snapshot() pairs with nothing but these increments
        // and tolerates seeing some of a concurrent record and not the rest.
        counts_[bucket_of(ns)].fetch_add(1, std::memory_order_relaxed);
        sum_ns_.fetch_add(ns, std::memory_order_relaxed);
    }

    LatencySnapshot snapshot() const {
        LatencySnapshot s;
        std::uint64_t running = 0;
        for (std::size_t i = 0; i < kLatencyBucketCount; ++i) {
            running += counts_[i].load(std::memory_order_relaxed);  // pairs with record()'s fetch_add
            s.cumulative[i] = running;
        }
        s.sum_ns = sum_ns_.load(std::memory_order_relaxed);  // pairs with record()'s fetch_add
        return s;
    }

private:
    std::array<std::atomic<std::uint64_t>, kLatencyBucketCount> counts_{};
    std::atomic<std::uint64_t> sum_ns_{0};
};

}  // namespace swapvisor::guestmem
