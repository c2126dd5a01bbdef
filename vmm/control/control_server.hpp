// ControlServer: the host agent's way into a running swapvisor (DESIGN.md §6,
// vmm/control/README.md). A Unix stream socket, mode 0600, every peer's uid checked
// with SO_PEERCRED; one JSON request per line in, one JSON reply per line out.
//
// Threads (README.md#threads): start() spawns the control thread, which runs the
// Boost.Asio io_context (accept, read, parse, reply, the quick commands). swapon and
// swapoff run on their own worker thread each, with their own io::Ring, and post
// their progress and result back to the control thread, so neither a long swapoff
// nor a client that never reads its replies can stall the control thread, a VM, or
// another client. This header keeps Asio out of its includers (pimpl): Asio is used
// only in control_server.cpp.
//
// Invariants: no request, however malformed, touches a VM except through the typed
// commands; a connection's queued output is bounded (overflow drops that
// connection); connections are capped and idle ones time out, so no client can lock
// the operator out (README.md#bounded-clients); every mutating request is written
// to the audit log with the peer's uid and pid (README.md#audit-log); stop() closes every connection, waits for running swapon / swapoff
// workers, joins the control thread, and removes the socket file it created.
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <memory>

#include "guestmem/host_memory.hpp"
#include "io/result.hpp"
#include "vmm/control/device_stats.hpp"
#include "vmm/control/metrics.hpp"
#include "vmm/control/protocol.hpp"
#include "vmm/control/vm_control.hpp"

namespace swapvisor::vmm::control {

struct ControlServerConfig {
    std::filesystem::path socket_path;
    std::size_t max_line_bytes = kMaxLineBytes;
    std::size_t max_output_bytes = 1 << 20;    // queued reply bytes per connection before it is dropped
    // More clients than this: the one idle the longest is closed to make room
    // (README.md#bounded-clients); if none is idle, the newcomer gets "busy".
    std::size_t max_connections = 64;
    // A client with no command running and nothing sent for idle_timeout is closed;
    // a request line begun must be complete within read_timeout.
    std::chrono::milliseconds idle_timeout{60000};
    std::chrono::milliseconds read_timeout{10000};
    std::size_t max_workers = 8;               // concurrent swapon / swapoff; more: "busy"
    unsigned ring_entries = 64;                // each worker's io::Ring
    std::chrono::milliseconds progress_interval{100};  // at most ~10 progress lines a second
    // The VM host for vm-create / vm-stop / ... / set-balloon (must outlive the
    // server); null: those commands answer `unsupported`.
    VmControl* vms = nullptr;
    // Why there is no VM host, when it is for want of KVM: the VM commands then answer
    // `kvm_error` with it (the operator's hint) instead of `unsupported`.
    std::string no_vms_reason;
    // Where running swapoffs report progress for the metrics endpoint; may be null.
    SwapoffBoard* swapoffs = nullptr;
};

class ControlServer {
public:
    // `devices` (the device counters status / stats show) must outlive the server.
    ControlServer(guestmem::HostMemory& host, const DeviceStats& devices, ControlServerConfig config);
    ~ControlServer();  // stop()
    ControlServer(const ControlServer&) = delete;
    ControlServer& operator=(const ControlServer&) = delete;

    // Create the socket and start the control thread. Refuses (and touches nothing)
    // if the path is not a socket (EEXIST) or a live server listens on it
    // (EADDRINUSE); a stale socket file nobody listens on is replaced.
    Result<void> start();
    // Idempotent; safe if start() failed or never ran.
    void stop();

    const std::filesystem::path& socket_path() const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace swapvisor::vmm::control
