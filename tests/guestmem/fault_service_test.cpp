// The fault service's decisions that need no thread of guestmem's own
// (guestmem/fault_service.hpp): which faults wait in the over-limit throttle. The
// row choice itself (resolve_fault) is covered on the fake kernel in
// transitions_fake_test.cpp.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "guestmem/fault_service.hpp"
#include "guestmem/limits.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;

namespace {

constexpr std::uint64_t kMem = 4ULL << 20, kLimit = 1ULL << 20;

// A VM over its limit and holding it (no reclaimer here, so nothing makes room).
struct OverLimit {
    Occupancy occupancy;
    Limits limits{occupancy, nullptr, kMem, kLimit};
    OverLimit() { limits.pages_added(kLimit / kPageSize + 8); }
};

}  // namespace

TEST(FaultServiceTest, OnlyAFirstTouchOrASwapInAddsAPage) {
    EXPECT_TRUE(fault_adds_page(PageEntry::make(PageState::zero)));
    EXPECT_TRUE(fault_adds_page(PageEntry::make(PageState::swapped, swap::VSlot(7))));
    EXPECT_FALSE(fault_adds_page(PageEntry::make(PageState::lost)));
    EXPECT_FALSE(fault_adds_page(PageEntry::make(PageState::resident)));
    EXPECT_FALSE(fault_adds_page(PageEntry::make(PageState::inactive)));
    EXPECT_FALSE(fault_adds_page(PageEntry::make_writeback(WritebackEpoch(3))));
    EXPECT_FALSE(fault_adds_page(PageEntry::make(PageState::reading, swap::VSlot(7))));
}

// Issue #16 item 9: a touch of a `lost` page waited the full throttle bound (2 s per
// touch) in a VM over its limit, though resolving it adds no page.
TEST(FaultServiceTest, ATouchOfALostPageNeverWaitsInTheThrottle) {
    OverLimit vm;
    ASSERT_TRUE(vm.limits.over_limit());
    ASSERT_EQ(vm.limits.over_reason(), OverReason::none);
    std::atomic<bool> stopping{false};
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(throttle_fault(vm.limits, PageEntry::make(PageState::lost), stopping), Throttle::none);
    EXPECT_EQ(throttle_fault(vm.limits, PageEntry::make(PageState::resident), stopping), Throttle::none);
    EXPECT_LT(std::chrono::steady_clock::now() - start, Limits::kThrottleBound / 2);
    EXPECT_EQ(vm.limits.overshoot_events(), 0u);
}

// A fault that adds a page does wait (until room, the bound, or stop) while the
// limit is held, and runs over, counted, while it cannot be.
TEST(FaultServiceTest, AFaultThatAddsAPageWaitsWhileTheLimitIsHeld) {
    OverLimit vm;
    std::atomic<bool> stopping{false};
    auto waiter = std::async(std::launch::async, [&] {
        return throttle_fault(vm.limits, PageEntry::make(PageState::zero), stopping);
    });
    EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout) << "it did not wait";
    vm.limits.pages_freed(16);  // room: under the limit again
    vm.limits.wake_all();
    ASSERT_EQ(waiter.wait_for(std::chrono::seconds(5)), std::future_status::ready);
    EXPECT_EQ(waiter.get(), Throttle::waited);

    vm.limits.pages_added(16);
    ASSERT_TRUE(vm.limits.cannot_hold(OverReason::no_swap));
    EXPECT_EQ(throttle_fault(vm.limits, PageEntry::make(PageState::swapped, swap::VSlot(1)), stopping),
              Throttle::overshoot);
    EXPECT_EQ(vm.limits.overshoot_events(), 1u);
}
