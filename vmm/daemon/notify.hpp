// Readiness and state notifications to the service manager (sd_notify(3), the
// `Type=notify` unit of packaging/; vmm/daemon/README.md#notify). Without
// NOTIFY_SOCKET in the environment (not started by systemd) each call does nothing.
// `serve` sends READY=1 only once the swap pool is open and the control socket (and
// --metrics) listen, so a unit ordered After=swapvisor.service can use the socket at
// once; RELOADING=1 then READY=1 around a SIGHUP reload; STOPPING=1 when a signal
// starts the shutdown.
#pragma once

#include <string_view>

namespace swapvisor::vmm::daemon {

void notify_ready(std::string_view status);
void notify_reloading();
void notify_stopping(std::string_view status);

}  // namespace swapvisor::vmm::daemon
