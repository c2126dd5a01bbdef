// StallTracker and AccessAges (guestmem/stall.hpp, access_age.hpp) on a fake clock:
// the PSI-like windows, `full`, per-thread shares, the refault rate, and the access
// ages' wrap and saturation. The fault path that feeds them is covered on the fake
// kernel (transitions_fake_test.cpp, ServeFault*).
#include <gtest/gtest.h>

#include <chrono>

#include "guestmem/access_age.hpp"
#include "guestmem/stall.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
using namespace std::chrono_literals;

namespace {
constexpr MonoTime kStart = 5000s;
}

// One of two vCPUs stalls 1 s out of every 10 for 10 minutes: some = 10 % in every
// window, full = 0; then both stall together for 3 s: full shows it in the 10 s window.
TEST(StallTrackerTest, SomeAndFullOverTheThreeWindows) {
    StallTracker st(2, kStart);
    MonoTime t = kStart;
    for (int i = 0; i < 60; ++i) {
        auto tok = st.begin(101, t + 2s);
        st.end(tok, t + 3s);
        t += 10s;
    }
    StallSnapshot s = st.snapshot(t);
    for (std::size_t w = 0; w < kStallWindows.size(); ++w) {
        EXPECT_NEAR(s.some[w], 0.1, 1e-9) << kStallWindows[w].count();
        EXPECT_EQ(s.full[w], 0.0);
    }
    auto a = st.begin(101, t + 1s);
    auto b = st.begin(102, t + 1s);
    st.end(a, t + 4s);
    st.end(b, t + 4s);
    s = st.snapshot(t + 10s);
    EXPECT_NEAR(s.full[0], 0.3, 1e-9);
    EXPECT_NEAR(s.some[0], 0.3, 1e-9);
    EXPECT_NEAR(s.full[1], 3.0 / 60, 1e-9);
    EXPECT_EQ(s.full_ns, std::uint64_t{3'000'000'000});
    ASSERT_EQ(s.threads.size(), 2u);
    EXPECT_EQ(s.threads[0].tid, 101u);
    EXPECT_EQ(s.threads[0].stalled_ns, std::uint64_t{63'000'000'000});
    EXPECT_NEAR(s.threads[1].share_60s, 3.0 / 60, 1e-9);
}

// A stall still open counts up to now; a young VM's windows cover its life so far.
TEST(StallTrackerTest, AnOpenStallCountsUpToNow) {
    StallTracker st(1, kStart);
    st.begin(7, kStart + 1s);
    const StallSnapshot s = st.snapshot(kStart + 5s);
    EXPECT_NEAR(s.some[0], 4.0 / 5, 1e-9) << "4 s stalled of the 5 s the VM has lived";
    EXPECT_NEAR(s.full[0], 4.0 / 5, 1e-9) << "one vCPU: some = full";
}

// Clocks read outside the tracker's lock may arrive slightly out of order.
TEST(StallTrackerTest, AnEarlierTimeAfterALaterOneIsClamped) {
    StallTracker st(1, kStart);
    auto tok = st.begin(7, kStart + 2s);
    st.end(tok, kStart + 1s);  // read before the begin's clock, delivered after
    const StallSnapshot s = st.snapshot(kStart + 10s);
    EXPECT_EQ(s.some_ns, 0u);
}

TEST(StallTrackerTest, RefaultsPerMinuteOverTheLastMinute) {
    StallTracker st(1, kStart);
    for (int i = 0; i < 120; ++i) st.note_refault(kStart + std::chrono::seconds(i));  // 1 a second for 2 min
    EXPECT_NEAR(st.snapshot(kStart + 120s).refaults_per_min, 60.0, 1.0);
    EXPECT_NEAR(st.snapshot(kStart + 150s).refaults_per_min, 30.0, 1.0) << "half of the last minute was quiet";
}

TEST(StallTrackerTest, UnnamedThreadsShareOneRowAndMayOverlap) {
    StallTracker st(2, kStart);
    auto a = st.begin(0, kStart + 1s);
    auto b = st.begin(0, kStart + 1s);
    st.end(a, kStart + 2s);
    st.end(b, kStart + 2s);
    const StallSnapshot s = st.snapshot(kStart + 10s);
    EXPECT_NEAR(s.full[0], 0.1, 1e-9) << "two faults at once are two stalled vCPUs";
    ASSERT_EQ(s.threads.size(), 1u);
    EXPECT_EQ(s.threads[0].tid, 0u);
}

TEST(AccessAgesTest, AgesAcrossTheTickWrapAndSaturation) {
    AccessAges ages = AccessAges::create(4).value();
    const PageIdx p(1);
    EXPECT_FALSE(ages.age(p, kStart));
    ages.touch(p, kStart);
    EXPECT_EQ(ages.age(p, kStart + 90s), std::chrono::nanoseconds(90s));
    // The tick counter wraps every 65535 quarter seconds: ages stay right across it.
    const MonoTime near_wrap = std::chrono::duration_cast<MonoTime>(AccessAges::kTick * 65534);
    ages.touch(p, near_wrap);
    EXPECT_EQ(ages.age(p, near_wrap + 10s), std::chrono::nanoseconds(10s));
    // Past kSaturateAfter the hand marks the page old, before the wrap could make it young.
    ages.saturate_if_old(p, near_wrap + 3600s);
    EXPECT_TRUE(ages.age(p, near_wrap + 3600s)) << "1 h: still a known age";
    ages.saturate_if_old(p, near_wrap + 3s * 3600);
    EXPECT_FALSE(ages.age(p, near_wrap + 3s * 3600)) << "3 h: old";
}

TEST(AccessAgesTest, BucketsAreInclusiveUpperBounds) {
    AgeScanBuilder b(120s);
    b.visit(PageEntry::make(PageState::resident), std::chrono::nanoseconds(1s));
    b.visit(PageEntry::make(PageState::inactive), std::chrono::nanoseconds(2s));
    b.visit(PageEntry::make(PageState::swapped, swap::VSlot(3)), std::chrono::nanoseconds(121s));
    b.visit(PageEntry::make(PageState::swapped, swap::VSlot(4)), std::nullopt);
    b.visit(PageEntry::make(PageState::zero), std::chrono::nanoseconds(1s));
    b.visit(PageEntry::make(PageState::lost), std::chrono::nanoseconds(1s));
    const AgeScan s = b.finish(kStart);
    EXPECT_EQ(s.ages.cumulative[0], 1u);  // le 1
    EXPECT_EQ(s.ages.cumulative[1], 2u);  // le 5
    EXPECT_EQ(s.ages.cumulative[3], 2u);  // le 120
    EXPECT_EQ(s.ages.cumulative[4], 3u);  // le 600
    EXPECT_EQ(s.ages.count(), 4u);        // +Inf: the never-seen swapped page too
    EXPECT_EQ(s.working_set_pages, 2u);
    EXPECT_EQ(s.finished, kStart);
}

// The sampled age scan (AgeSampling): with N groups rotating, a sweep zaps one group
// in N, and a present page is counted only in the sweep right after its group's zap,
// as N pages; over any N consecutive sweeps each present page is zapped once and
// counted once (weight N), so the estimate is unbiased. A swapped page (any access
// faults) always counts once; N = 1 is the full scan.
TEST(AgeSamplingTest, EachGroupIsZappedOnceAndCountedOnceInNSweeps) {
    constexpr unsigned kN = 4;
    const AgeSampling sampled(kN), full(1);
    const PageEntry present = PageEntry::make(PageState::inactive);
    const PageEntry swapped = PageEntry::make(PageState::swapped, swap::VSlot(9));
    for (std::uint64_t group = 0; group < 3 * kN; ++group) {
        for (std::uint64_t page : {std::uint64_t{0}, AgeSampling::kGroupPages - 1}) {
            const PageIdx idx(group * AgeSampling::kGroupPages + page);
            for (std::uint64_t first = 0; first < 2 * kN; ++first) {
                unsigned zaps = 0, weight = 0;
                for (std::uint64_t sweep = first; sweep < first + kN; ++sweep) {
                    if (sampled.zaps(idx, sweep)) {
                        ++zaps;
                        EXPECT_EQ(sampled.weight(present, idx, sweep + 1), kN) << "counted the sweep after its zap";
                    }
                    weight += sampled.weight(present, idx, sweep);
                    EXPECT_EQ(sampled.weight(swapped, idx, sweep), 1u);
                    EXPECT_TRUE(full.zaps(idx, sweep));
                    EXPECT_EQ(full.weight(present, idx, sweep), 1u);
                }
                EXPECT_EQ(zaps, 1u) << "group " << group << " from sweep " << first;
                EXPECT_EQ(weight, kN) << "group " << group << " from sweep " << first;
            }
        }
    }
    EXPECT_EQ(AgeSampling(0).n(), 1u) << "0 means the full scan";
}

// A VM whose groups are used alike: the weighted sweep gives the full sweep's histogram.
TEST(AgeSamplingTest, AWeightedSweepEstimatesTheFullHistogram) {
    constexpr unsigned kN = 4;
    constexpr std::uint64_t kGroups = 8, kPages = kGroups * AgeSampling::kGroupPages;
    const AgeSampling sampled(kN), full(1);
    AgeScanBuilder exact(120s), estimate(120s);
    for (std::uint64_t i = 0; i < kPages; ++i) {
        const PageIdx idx(i);
        // Per group: a quarter hot (2 s), a quarter swapped long ago, the rest 600 s old.
        const std::uint64_t in_group = i % AgeSampling::kGroupPages;
        const bool swapped = in_group % 4 == 1;
        const PageEntry e = swapped ? PageEntry::make(PageState::swapped, swap::VSlot(i)) : PageEntry::make(PageState::resident);
        const std::chrono::nanoseconds age = in_group % 4 == 0 ? 2s : swapped ? 3000s : 600s;
        exact.visit(e, age, full.weight(e, idx, 5));
        estimate.visit(e, age, sampled.weight(e, idx, 5));
    }
    const AgeScan a = exact.finish(kStart), b = estimate.finish(kStart);
    EXPECT_EQ(a.ages.cumulative, b.ages.cumulative);
    EXPECT_EQ(a.working_set_pages, b.working_set_pages);
    EXPECT_EQ(a.working_set_pages, kPages / 4);
    EXPECT_DOUBLE_EQ(a.ages.sum_seconds, b.ages.sum_seconds);
}
