// SIGHUP reload planning (vmm/daemon/reload.hpp): what applies live, what is only logged.
#include "vmm/daemon/reload.hpp"

#include <gtest/gtest.h>

namespace swapvisor::vmm::daemon {
namespace {

cli::ServeConfig base() {
    cli::ServeConfig c;
    c.control_socket = "/run/s.sock";
    c.swaps = {cli::SwapSpec{"/a.swap", 5, std::nullopt}};
    c.host_budget = 1ULL << 30;
    return c;
}

TEST(ReloadPlanTest, NothingChangedIsEmpty) { EXPECT_TRUE(plan_reload(base(), base()).empty()); }

TEST(ReloadPlanTest, LogLevelAndBudgetApplyLive) {
    cli::ServeConfig now = base();
    now.log_level = "debug";
    now.host_budget = 2ULL << 30;
    ReloadPlan plan = plan_reload(base(), now);
    EXPECT_EQ(plan.log_level, "debug");
    EXPECT_EQ(plan.host_budget, 2ULL << 30);
    EXPECT_TRUE(plan.not_applied.empty());
    now.host_budget = 0;  // "no budget" is a change too
    EXPECT_EQ(plan_reload(base(), now).host_budget, 0u);
}

TEST(ReloadPlanTest, WhatCannotChangeLiveIsNamedNotApplied) {
    cli::ServeConfig now = base();
    now.control_socket = "/run/other.sock";
    now.metrics = "127.0.0.1:9000";
    now.seccomp = sandbox::Seccomp::off;
    now.balloon_stats_interval = std::chrono::milliseconds(500);
    now.swaps.push_back(cli::SwapSpec{"/b.swap", std::nullopt, 1ULL << 30});
    ReloadPlan plan = plan_reload(base(), now);
    EXPECT_FALSE(plan.log_level);
    EXPECT_FALSE(plan.host_budget);
    ASSERT_EQ(plan.not_applied.size(), 5u);
    auto has = [&plan](const char* text) {
        for (const std::string& line : plan.not_applied)
            if (line.find(text) != std::string::npos) return true;
        return false;
    };
    EXPECT_TRUE(has("control: /run/s.sock -> /run/other.sock needs a restart"));
    EXPECT_TRUE(has("metrics: none -> 127.0.0.1:9000"));
    EXPECT_TRUE(has("no-seccomp: false -> true"));
    EXPECT_TRUE(has("balloon-stats-interval: 2000 ms -> 500 ms"));
    EXPECT_TRUE(has("swap: /a.swap -> /a.swap /b.swap not applied"));
}

}  // namespace
}  // namespace swapvisor::vmm::daemon
