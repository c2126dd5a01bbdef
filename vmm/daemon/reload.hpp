// What a SIGHUP reload of `serve --config FILE` changes (vmm/daemon/README.md#reload).
// plan_reload compares the running ServeConfig with the one just re-read (the same
// command line, the file read again, flags still winning over the file) and sorts
// every difference: applied live (log level, host budget) or only logged, because
// it cannot change under a running daemon (control socket, metrics address, seccomp,
// balloon statistics interval: a restart applies them; the swap list: `ctl swapon` /
// `swapoff` change the pool live, a reload never erases or removes a device).
// Pure, so tests check the sorting without a daemon.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "vmm/cli/config.hpp"

namespace swapvisor::vmm::daemon {

struct ReloadPlan {
    std::optional<std::string> log_level;      // apply: spdlog level name
    std::optional<std::uint64_t> host_budget;  // apply: bytes, 0 = none
    std::vector<std::string> not_applied;      // one operator-readable line each
    bool empty() const { return !log_level && !host_budget && not_applied.empty(); }
};

ReloadPlan plan_reload(const cli::ServeConfig& running, const cli::ServeConfig& reread);

}  // namespace swapvisor::vmm::daemon
