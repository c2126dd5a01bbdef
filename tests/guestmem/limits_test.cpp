// Limits, HostBudget and CleanCopyPolicy: the one reclaim policy (guestmem/limits.hpp).
// Pure arithmetic on counters, plus the throttle's wake-up.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <thread>

#include "guestmem/addr.hpp"
#include "guestmem/limits.hpp"

using namespace swapvisor::guestmem;
using namespace std::chrono_literals;

TEST(LimitsTest, SlackIsAThirtySecondClampedTo64And4096Pages) {
    EXPECT_EQ(slack_pages(1000), 64u);
    EXPECT_EQ(slack_pages(32 * 100), 100u);
    EXPECT_EQ(slack_pages(1u << 30), 4096u);
}

TEST(LimitsTest, WatermarksFollowTheLimit) {
    Occupancy occ;
    Limits limits(occ, nullptr, 1ULL << 30, 10000 * kPageSize);  // slack 312
    occ.resident = 9000;
    EXPECT_FALSE(limits.needs_reclaim());
    EXPECT_FALSE(limits.over_limit());
    occ.resident = 9900;  // above limit - slack/2
    EXPECT_TRUE(limits.needs_reclaim());
    EXPECT_FALSE(limits.reclaim_done());
    occ.resident = 10000;
    EXPECT_TRUE(limits.over_limit());
    occ.resident = 10000 - 312;
    EXPECT_TRUE(limits.reclaim_done()) << "the low watermark is limit - slack";
}

TEST(LimitsTest, NoLimitMeansNoWork) {
    Occupancy occ;
    Limits limits(occ, nullptr, 1ULL << 30, 0);
    occ.resident = 1000;
    EXPECT_FALSE(limits.needs_reclaim());
    EXPECT_FALSE(limits.over_limit());
    EXPECT_TRUE(limits.reclaim_done());
    EXPECT_EQ(limits.bring_back_room(), (1ULL << 30) / kPageSize - 1000);
}

TEST(LimitsTest, ATinyLimitDoesNotWakeTheReclaimerWithNothingLeft) {
    Occupancy occ;
    Limits limits(occ, nullptr, 1ULL << 30, 8 * kPageSize);
    occ.resident = 0;
    EXPECT_FALSE(limits.needs_reclaim());
}

TEST(LimitsTest, TheHostShareAppliesOnlyWhileTheHostIsOverBudget) {
    HostBudget host(1000 * kPageSize);
    Occupancy a_occ, b_occ;
    host.vm_added(3000 * kPageSize);
    host.vm_added(1000 * kPageSize);
    Limits a(a_occ, &host, 3000 * kPageSize, 0);
    Limits b(b_occ, &host, 1000 * kPageSize, 0);
    EXPECT_EQ(a.effective_limit(), 0u) << "under budget: no share imposed";
    a.pages_added(990);
    EXPECT_TRUE(host.over_budget());
    EXPECT_EQ(a.effective_limit(), 750u) << "3/4 of the budget by memory size";
    EXPECT_EQ(b.effective_limit(), 250u);
    EXPECT_EQ(host.room_pages(), 10u);
    a.pages_freed(990);
    EXPECT_EQ(host.resident_pages(), 0u);
}

TEST(LimitsTest, AThrottledFaultIsWokenWhenRoomIsFreed) {
    Occupancy occ;
    Limits limits(occ, nullptr, 1ULL << 30, 100 * kPageSize);
    limits.pages_added(100);
    std::atomic<bool> stopping{false};
    auto waiter = std::async(std::launch::async, [&] {
        auto start = std::chrono::steady_clock::now();
        bool ok = limits.wait_for_room(stopping);
        return std::pair{ok, std::chrono::steady_clock::now() - start};
    });
    std::this_thread::sleep_for(20ms);
    limits.pages_freed(1);
    auto [ok, took] = waiter.get();
    EXPECT_TRUE(ok);
    EXPECT_LT(took, Limits::kThrottleBound) << "the wake-up was lost: the waiter ran to its bound";
}

TEST(CleanCopyPolicyTest, StopsTrackingWhenMostCopiesEndDirtiedAndResumes) {
    CleanCopyPolicy p(true);
    EXPECT_TRUE(p.want_clean());
    for (std::uint64_t i = 0; i < CleanCopyPolicy::kWindow; ++i) p.note(CleanOutcome::dirtied);
    EXPECT_FALSE(p.tracking());
    int tracked = 0;
    for (int i = 0; i < 80; ++i) tracked += p.want_clean();
    EXPECT_EQ(tracked, 10) << "one swap-in in kSampleEvery is still tracked";
    for (std::uint64_t i = 0; i < CleanCopyPolicy::kWindow; ++i) p.note(CleanOutcome::reused);
    EXPECT_TRUE(p.tracking());
    EXPECT_FALSE(CleanCopyPolicy(false).want_clean()) << "no WP on shmem: never";
}
