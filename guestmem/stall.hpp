// StallTracker: memory stall of one VM, PSI-style (guestmem/README.md#memory-stall).
//
// A vCPU that faults on a page is blocked in the kernel until a fault worker
// resolves the fault and wakes it. The fault workers report the waits that are
// memory pressure: a fault on a page in swap (or being read in by another fault)
// and a fault held in the over-limit throttle. Each such wait is an interval
// [seen, woken]: `seen` is when a fault worker read the fault from the
// userfaultfd (the time between the vCPU's fault and that read is not seen by
// anyone and is not counted), `woken` when UFFDIO_WAKE returned.
//
//   some  = share of wall time during which at least one vCPU was in such a wait
//   full  = share of wall time during which every vCPU (`vcpus`) was
//   per thread = share of wall time each faulting thread (by its tid, from
//                UFFD_FEATURE_THREAD_ID: under KVM the vCPU threads) spent in them
//
// over the last 10 s, 60 s and 300 s. A vCPU can have only one fault outstanding (it
// is blocked in it), so the number of open intervals is the number of stalled
// vCPUs. `full` counts a halted (idle) vCPU as not stalled, unlike the kernel's PSI,
// which leaves idle tasks out: it under-reports full when some vCPUs idle.
//
// Windows: the tracker integrates the stalled time exactly at every begin / end and
// keeps the running totals just before and after each event in a ring covering 300 s
// (events within a second of each other share one pair), so a window's start is
// interpolated between two points with no event between them: exact, except that a
// window edge falling inside a burst of events (less than a second) is placed
// linearly within it. Refaults (swap-ins of pages accessed within the working-set
// window) are counted the same way, per minute.
//
// Threads: any; one mutex (stalls are waits of tens of microseconds or more).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

#include "guestmem/access_age.hpp"

namespace swapvisor::guestmem {

inline constexpr std::array<std::chrono::seconds, 3> kStallWindows{std::chrono::seconds(10), std::chrono::seconds(60),
                                                                   std::chrono::seconds(300)};

struct ThreadStall {
    std::uint32_t tid = 0;      // 0: faults whose thread the kernel did not name
    double share_60s = 0;       // of wall time over the last 60 s
    std::uint64_t stalled_ns = 0;  // since the VM started
};

struct StallSnapshot {
    std::array<double, kStallWindows.size()> some{};  // fractions of wall time, per kStallWindows
    std::array<double, kStallWindows.size()> full{};
    std::uint64_t some_ns = 0;  // totals since the VM started
    std::uint64_t full_ns = 0;
    std::uint64_t stalls = 0;   // intervals begun
    std::uint64_t refaults = 0;
    double refaults_per_min = 0;  // over the last 60 s
    std::vector<ThreadStall> threads;
};

class StallTracker {
public:
    // Distinct threads tracked one by one; more share the tid-0 row.
    static constexpr std::size_t kMaxThreads = 64;
    static constexpr std::chrono::seconds kSampleEvery{1};

    // vcpus: how many vCPUs can stall (the `full` condition); start: the VM's start.
    StallTracker(unsigned vcpus, MonoTime start);

    // A stall of thread `tid` (0: unknown) began / ended. One open stall per thread
    // at a time except for tid 0 (each begin is then its own interval).
    using Token = std::uint32_t;
    Token begin(std::uint32_t tid, MonoTime t);
    void end(Token token, MonoTime t);
    void note_refault(MonoTime t);

    StallSnapshot snapshot(MonoTime now);

private:
    struct Thread {
        std::uint32_t tid;
        std::uint32_t open = 0;  // open intervals (only tid 0 may have several)
        std::uint64_t ns = 0;    // stalled time closed or integrated so far
    };
    struct Totals {
        MonoTime t{0};
        std::uint64_t some_ns = 0, full_ns = 0, refaults = 0;
        std::vector<std::uint64_t> thread_ns;  // per threads_ index
    };
    // Integrate up to t (clamped to be monotonic).
    void advance(MonoTime t);
    // An event happened at last_: keep the totals before and after it (see stall.cpp).
    void record(const Totals& before);
    Totals totals_at_now() const;
    // Totals at `t`, interpolated from the ring (t is in the past).
    Totals totals_at(MonoTime t) const;

    const unsigned vcpus_;
    // Protects: everything below. Order: leaf (taken with no page lock).
    std::mutex mutex_;
    MonoTime last_{0};
    std::uint32_t open_ = 0;  // stalled vCPUs now
    std::uint64_t some_ns_ = 0, full_ns_ = 0, stalls_ = 0, refaults_ = 0;
    std::vector<Thread> threads_;  // threads_[0] is tid 0
    std::deque<Totals> ring_;      // oldest first; two points per event run (stall.cpp)
    MonoTime pair_start_{0};
    bool pair_open_ = false;
};

}  // namespace swapvisor::guestmem
