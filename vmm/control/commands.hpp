// The control commands: what each request does, with no socket in sight. The
// server (control_server.cpp) frames lines, checks peers, audits and schedules;
// it hands every parsed Command to run_command and sends back what it returns.
// Tests call run_command directly (tests/control/commands_test.cpp).
//
// To add a command: its struct, parser and audit text in protocol.{hpp,cpp}; its
// body here (a `run` overload in commands.cpp); say in runs_on_worker whether it may
// block; document it in README.md.
//
// Threads: quick commands (runs_on_worker false: they read counters or store a
// value) run on the control thread; the others may block for seconds (open or size
// a file, wait for a guest, move gigabytes) and run on a worker thread each. Both
// may run at once: everything a command touches locks itself (HostMemory, the pool,
// VmControl).
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "guestmem/host_memory.hpp"
#include "vmm/control/device_stats.hpp"
#include "vmm/control/metrics.hpp"
#include "vmm/control/protocol.hpp"
#include "vmm/control/vm_control.hpp"

namespace swapvisor::vmm::control {

// What the commands act on. Everything referred to outlives every command run.
struct CommandContext {
    guestmem::HostMemory& host;
    const DeviceStats& devices;
    // The VM host for vm-create / vm-stop / ... / set-balloon; null: those answer
    // `kvm_error` with no_vms_reason when it is set (no KVM here), else `unsupported`.
    VmControl* vms = nullptr;
    std::string no_vms_reason;
    SwapoffBoard* swapoffs = nullptr;  // where a running swapoff reports progress (/metrics); may be null
    unsigned ring_entries = 64;        // the io::Ring a swapoff makes for itself
    std::chrono::milliseconds progress_interval{100};  // at most one swapoff progress line per interval
};

// Whether `command` may block (see the file comment): the server runs it on a worker.
// A VM command on a swapvisor without a VM host is refused at once: not a worker.
bool runs_on_worker(const CommandContext& context, const Command& command);

// A line a command sends before its reply (swapoff's progress); called on the
// thread that runs the command.
using ProgressSink = std::function<void(const nlohmann::json& line)>;

// Run one command and return its reply: ok_reply(id) with the command's fields, or
// error_reply(id, code, message). Never throws: an exception inside a command
// (nlohmann, bad_alloc) becomes an io_error reply and everything else carries on.
nlohmann::json run_command(const CommandContext& context, const nlohmann::json& id, const Command& command,
                           const ProgressSink& progress);

}  // namespace swapvisor::vmm::control
