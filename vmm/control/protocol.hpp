// The control socket's wire protocol (vmm/control/README.md#protocol), without any
// I/O: turning one request line into a typed Request, the stable error codes a reply
// carries, and the reply / progress lines. The server (control_server.cpp) and the
// `swapvisor ctl` client (ctl.cpp) share it, so both sides agree on every name.
//
// Invariants: parse_request never throws and never trusts the line (any bytes, any
// JSON type); every reply line is one JSON object, serialised with invalid UTF-8
// replaced (a request may echo garbage back in a message), and ends in '\n'.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include <nlohmann/json.hpp>

#include "io/result.hpp"
#include "swap/swap_pool.hpp"
#include "vmm/control/vm_control.hpp"

namespace swapvisor::vmm::control {

// Longest request line accepted (without its '\n'); longer: too_large, then close.
inline constexpr std::size_t kMaxLineBytes = 64 * 1024;

// The stable error codes of a reply's error.code (README.md#error-codes).
enum class ReplyCode {
    bad_json,         // the line is not one JSON object
    bad_request,      // missing / ill-typed field, or a bad value (size, priority)
    unknown_command,  // "cmd" names no command
    too_large,        // line over kMaxLineBytes (the connection is then closed)
    no_such_device,   // swapoff of a path not in the pool; swapon of a missing path
    device_busy,      // a swapoff of that device is already running
    would_not_fit,    // swapoff refused: no room elsewhere and no budget
    exists,           // swapon of a path already in the pool
    io_error,         // the swap layer or the file system failed
    permission,       // peer uid not allowed, or EACCES / EPERM from the system
    no_such_vm,       // set-limit of an unknown VM name
    busy,             // too many long commands or connections at once; retry later
    unreadable_slots, // swapoff without force: some slots cannot be read (nothing lost)
    vm_running,       // vm-remove of a VM that has not ended
    vm_ended,         // vm-pause / vm-resume / set-balloon of a VM that has ended
    no_balloon,       // set-balloon of a VM without a balloon device
    unsupported,      // a VM lifecycle command on a server without a VM host
    timeout,          // vm-pause: the vCPUs did not stop in time; NBD: no connection in time; idle client closed
    kvm_error,        // KVM refused (no /dev/kvm, KVM_CREATE_VM failed, ...): the message says what to check
    bad_snapshot,     // a snapshot directory that is not one, or not usable here (version, device, file, checksum)
};
std::string_view code_name(ReplyCode code);
// The reply code for an error from the layers below (swap::Errc, io::Errc, errno).
ReplyCode reply_code_of(const Error& error);

// "1048576", "512M", "4G", "2GiB", "64k" (binary units; "B" alone means bytes), or a
// message saying what is wrong. Same grammar as `swapvisor run --memory`.
std::expected<std::uint64_t, std::string> parse_size(std::string_view text);

// The floor of a resident limit or host budget, on the command line and the socket
// alike, and why it is there: vmm/spec/vm_spec.hpp.
using vmm::check_memory_limit;
using vmm::kMinMemoryLimit;

// Which counters stats_json reports: `status` wants the summary, `stats` and
// --stats-json every counter.
enum class StatsDetail { summary, full };

struct StatusCmd {
    StatsDetail detail = StatsDetail::summary;
};
struct SwaponCmd {
    std::string path;
    int priority = 0;
    std::uint64_t size_bytes = 0;  // 0: the path must exist
    swap::Format format = swap::Format::no;  // "format": true formats a blank device, "force" any device
    swap::Takeover takeover = swap::Takeover::no;  // "takeover": true claims a remote device another pool leases
};
struct SwapoffCmd {
    std::string path;
    swap::Force force = swap::Force::no;  // "force": true loses the pages of unreadable slots
    bool handover = false;                // "handover": true leaves snapshot slots for another swapvisor
};
struct SetLimitCmd {
    std::string vm;
    std::uint64_t bytes = 0;  // 0: no per-VM limit; else at least kMinMemoryLimit
};
struct SetBudgetCmd {
    std::uint64_t bytes = 0;  // 0: no host budget; else at least kMinMemoryLimit
};
struct VmCreateCmd {
    VmSpec spec;  // typed, not yet checked: the VM host validates it (vmm::validate)
    // "restore": DIR — the VM comes from that snapshot (its spec, with this name and
    // serial log); "kernel" / "memory" and the other spec fields are then refused.
    std::optional<RestoreRequest> restore;
};
struct SnapshotCmd {
    std::string vm;
    std::string dir;
    AfterSnapshot after = AfterSnapshot::resume;  // "stop": true stops the VM after the snapshot
};
struct SnapshotDeleteCmd {
    std::string dir;
};
// snapshot-load: a snapshot this daemon should restore from, its devices not
// attached yet (docs/SNAPSHOT.md#load).
struct SnapshotLoadCmd {
    std::string dir;
};
// How long vm-stop gives the guest to exit by itself before forcing it.
inline constexpr std::chrono::milliseconds kDefaultStopTimeout{5000};
inline constexpr std::chrono::milliseconds kMaxStopTimeout{600000};
struct VmStopCmd {
    std::string vm;
    std::chrono::milliseconds timeout = kDefaultStopTimeout;
};
enum class VmAction { pause, resume, remove };
struct VmActionCmd {
    std::string vm;
    VmAction action;
};
struct VmListCmd {};
struct SetBalloonCmd {
    std::string vm;
    std::uint64_t bytes = 0;  // balloon target: how much the guest should give up
};
struct SetQuotaCmd {
    std::string vm;
    std::uint64_t bytes = 0;  // swap quota on the shared pool; 0: none
};
using Command = std::variant<StatusCmd, SwaponCmd, SwapoffCmd, SetLimitCmd, SetBudgetCmd, VmCreateCmd, VmStopCmd,
                             VmActionCmd, VmListCmd, SetBalloonCmd, SetQuotaCmd, SnapshotCmd, SnapshotDeleteCmd,
                             SnapshotLoadCmd>;

// A request id is a JSON integer or string, echoed back verbatim. It is optional,
// as in QMP: a request without one is run and its reply carries "id":null. An id of
// another type is refused (bad_request, "id":null).
struct Request {
    nlohmann::json id;
    Command command;
};
struct RequestError {
    nlohmann::json id;  // null if the id itself was missing or ill-typed
    ReplyCode code;
    std::string message;
};

// One line, without its '\n' (a trailing '\r' is tolerated).
std::expected<Request, RequestError> parse_request(std::string_view line);

// Whether a command changes anything (swap devices, limits, VMs): those are written
// to the audit log (README.md#audit-log); status, stats and vm-list are not.
bool is_mutating(const Command& command);
// The command and its arguments for the audit log, one line: `swapon path=/x
// priority=5 size=1073741824`. Strings are quoted when they hold spaces or quotes.
std::string describe(const Command& command);

nlohmann::json ok_reply(const nlohmann::json& id);
nlohmann::json error_reply(const nlohmann::json& id, ReplyCode code, std::string_view message);
// A VmInfo as the vm-list / vm-create / vm-stop replies show it.
nlohmann::json vm_info_json(const VmInfo& info);
nlohmann::json progress_line(const nlohmann::json& id, std::uint64_t done, std::uint64_t total);

// Serialise one object as a protocol line: compact, invalid UTF-8 replaced, '\n'.
std::string to_line(const nlohmann::json& object);

}  // namespace swapvisor::vmm::control
