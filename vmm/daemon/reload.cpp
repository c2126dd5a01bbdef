// plan_reload (reload.hpp): one comparison per ServeConfig field.
#include "vmm/daemon/reload.hpp"

#include <fmt/format.h>

namespace swapvisor::vmm::daemon {

namespace {

std::string swap_list(const std::vector<cli::SwapSpec>& swaps) {
    std::string text;
    for (const cli::SwapSpec& s : swaps) text += (text.empty() ? "" : " ") + s.path.string();
    return text.empty() ? std::string("none") : text;
}

}  // namespace

ReloadPlan plan_reload(const cli::ServeConfig& running, const cli::ServeConfig& reread) {
    ReloadPlan plan;
    if (reread.log_level != running.log_level) plan.log_level = reread.log_level;
    if (reread.host_budget != running.host_budget) plan.host_budget = reread.host_budget;
    auto restart = [&plan](std::string what, const std::string& was, const std::string& now) {
        plan.not_applied.push_back(fmt::format("{}: {} -> {} needs a restart; still {}", what, was, now, was));
    };
    if (reread.control_socket != running.control_socket)
        restart("control", running.control_socket.string(), reread.control_socket.string());
    if (reread.metrics != running.metrics)
        restart("metrics", running.metrics.value_or("none"), reread.metrics.value_or("none"));
    if (reread.seccomp != running.seccomp)
        restart("no-seccomp", running.seccomp == sandbox::Seccomp::off ? "true" : "false",
                reread.seccomp == sandbox::Seccomp::off ? "true" : "false");
    if (reread.balloon_stats_interval != running.balloon_stats_interval)
        restart("balloon-stats-interval", fmt::format("{} ms", running.balloon_stats_interval.count()),
                fmt::format("{} ms", reread.balloon_stats_interval.count()));
    if (reread.age_scan != running.age_scan)
        restart("age-scan", fmt::format("{} ms", running.age_scan.count()), fmt::format("{} ms", reread.age_scan.count()));
    if (reread.swaps != running.swaps)
        plan.not_applied.push_back(fmt::format(
            "swap: {} -> {} not applied: a reload never erases or removes a device; use 'swapvisor ctl swapon' / "
            "'swapoff' to change the pool live",
            swap_list(running.swaps), swap_list(reread.swaps)));
    return plan;
}

}  // namespace swapvisor::vmm::daemon
