// sd_notify wrappers (notify.hpp). A failure to notify is logged, never fatal: the
// service manager then times the start out and says why.
#include "vmm/daemon/notify.hpp"

#include <systemd/sd-daemon.h>

#include <cstring>
#include <string>

#include <spdlog/spdlog.h>

namespace swapvisor::vmm::daemon {

namespace {

void notify(const std::string& state) {
    // sd_notify: 0 when NOTIFY_SOCKET is unset, > 0 when sent, -errno on failure.
    int r = ::sd_notify(0, state.c_str());
    if (r < 0) spdlog::warn("sd_notify({}): {}", state.substr(0, state.find('\n')), std::strerror(-r));
}

}  // namespace

void notify_ready(std::string_view status) { notify("READY=1\nSTATUS=" + std::string(status)); }

void notify_reloading() { notify("RELOADING=1"); }

void notify_stopping(std::string_view status) { notify("STOPPING=1\nSTATUS=" + std::string(status)); }

}  // namespace swapvisor::vmm::daemon
