// MetricsServer: `swapvisor serve --metrics ADDR` — GET /metrics answers the
// Prometheus text exposition (metrics.hpp) over HTTP/1.1 (Boost.Beast, the Asio
// layer: only vmm/control/ uses it, STYLE.md §1). ADDR is `127.0.0.1:PORT` (loopback
// TCP only: the counters name VMs and devices, so they are not for the network) or
// a Unix socket path, created by the control socket's code (unix_listener.hpp): mode
// 0600; a stale socket file is replaced, a live server's socket or a file that is not
// a socket is refused.
//
// Threads: start() spawns one thread that runs the io_context (accept, read one
// request, write the reply, close). Requests only read counters, never block on a
// VM. stop() (also the destructor) closes the acceptor and joins the thread.
// Clients are bounded (README.md#bounded-clients): a connection cap (the oldest
// makes room), a request timeout, back-off on accept errors, and a Unix socket's
// peers checked with SO_PEERCRED like the control socket's.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "guestmem/host_memory.hpp"
#include "io/result.hpp"
#include "vmm/control/device_stats.hpp"
#include "vmm/control/metrics.hpp"
#include "vmm/control/vm_control.hpp"

namespace swapvisor::vmm::control {

class MetricsServer {
public:
    // Everything referred to must outlive the server; vms / swapoffs may be null.
    MetricsServer(guestmem::HostMemory& host, const DeviceStats& devices, const VmControl* vms,
                  const SwapoffBoard* swapoffs = nullptr);
    ~MetricsServer();
    MetricsServer(const MetricsServer&) = delete;
    MetricsServer& operator=(const MetricsServer&) = delete;

    // Listen on `address`: "127.0.0.1:PORT" (PORT 0: any free port, see port()) or a
    // Unix socket path (one containing '/' or no ':'). EINVAL for another host than loopback or a bad port;
    // for a socket path, EADDRINUSE if a running process answers on it, EEXIST if it is not a socket.
    Result<void> start(const std::string& address);
    // The checks of start() that need no listener, for start-up before any file is
    // created: the address's form (EINVAL) and, for a socket path, what
    // check_unix_socket_path refuses.
    static Result<void> check_address(const std::string& address);
    void stop();
    // The TCP port listened on (0 for a Unix socket).
    std::uint16_t port() const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace swapvisor::vmm::control
