// `swapvisor ctl`: the command-line client of the control socket (DESIGN.md §6,
// vmm/control/README.md#ctl). add_ctl_subcommand() defines the CLI11 subcommand
// and fills a CtlOptions; main() then calls run_ctl(), which sends one request,
// reads its progress lines and its reply (socket I/O with every wait bounded by
// --timeout), and prints
// them for a human (a table, a progress bar on a terminal) or, with --json, as the
// raw reply lines.
//
// Exit status (README.md#ctl): 0 the reply was ok, 1 the server refused or the
// command failed (an error reply: message and code on stderr), 2 unreachable (no
// socket, nobody listening, closed before replying; also a bad command line),
// 3 busy (the server's `busy`: retry later), 4 timeout (--timeout passed with no word
// from the server; the connection is closed, so a request not yet started is
// cancelled), 5 permission (the socket or the server refused this user).
#pragma once

#include <chrono>
#include <iosfwd>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace CLI { class App; }

namespace swapvisor::vmm::control {

inline constexpr int kCtlExitOk = 0;
inline constexpr int kCtlExitErrorReply = 1;
inline constexpr int kCtlExitNoConnection = 2;
inline constexpr int kCtlExitBusy = 3;
inline constexpr int kCtlExitTimeout = 4;
inline constexpr int kCtlExitPermission = 5;

// Where `ctl` and `serve` find / put the control socket when --socket / --control is
// not given: $SWAPVISOR_SOCKET if set and not empty, else kDefaultControlSocket.
inline constexpr const char* kDefaultControlSocket = "/run/swapvisor/control.sock";
inline constexpr const char* kSocketEnvVar = "SWAPVISOR_SOCKET";
std::string default_control_socket();

// How long ctl waits while the server says nothing (connecting included): each
// reply or progress line starts it again; vm-stop adds its own --timeout-ms. Without
// --timeout: kDefaultCtlTimeout for the quick commands, kDefaultLongCtlTimeout for
// those the server runs on workers (swapon may create a file or reach an NBD
// server, vm-create loads a kernel, vm-remove frees gigabytes).
inline constexpr std::chrono::milliseconds kDefaultCtlTimeout{5000};
inline constexpr std::chrono::milliseconds kDefaultLongCtlTimeout{60000};

enum class CtlCommand {
    none, status, stats, swapon, swapoff, set_limit, set_budget,
    vm_create, vm_stop, vm_pause, vm_resume, vm_remove, vm_list, set_balloon, set_quota,
    snapshot, snapshot_delete, snapshot_load,
};
// Redraw a progress bar for swapoff: on a terminal (stdout is a tty and `out` is
// std::cout), always, or never.
enum class ProgressBar { auto_detect, on, off };

struct CtlOptions {
    std::string socket;      // empty: default_control_socket()
    std::optional<std::chrono::milliseconds> timeout;  // --timeout; 0: wait forever; none: the default above
    bool json = false;
    CtlCommand command = CtlCommand::none;
    std::string path;        // swapon, swapoff
    int priority = 0;        // swapon
    std::string size;        // swapon (empty: the file must exist); SIZE text, e.g. "2G"
    bool format = false;     // swapon --format: make a blank device swap
    bool takeover = false;   // swapon --takeover: claim a remote device another pool leases
    bool handover = false;  // swapoff --handover
    bool force = false;      // swapoff --force: take out a device with unreadable slots;
                             // swapon --format --force: erase a device that holds data
    std::string vm;          // set-limit, vm-*, set-balloon, set-quota; vm-create: the new VM's name
    std::string bytes;       // set-limit, set-budget, set-balloon, set-quota: SIZE text ("0": no limit)
    // vm-create
    std::string kernel;
    std::string memory = "512M";
    unsigned vcpus = 1;
    std::string resident_limit;  // empty: none
    std::string swap_quota;      // empty: none
    std::optional<double> auto_stall_pct;  // vm-create tuning (vmm::MemoryTuning); none: the default
    std::string auto_floor, auto_ceiling;  // empty: the default
    std::optional<double> age_scan_s;
    std::optional<unsigned> age_sample;
    bool balloon = false;
    std::string serial_log;      // empty: the daemon's stdout
    std::string cmdline;
    unsigned timeout_ms = 5000;  // vm-stop
    std::string restore;         // vm-create --restore DIR (no --kernel then)
    bool no_fill = false, fill = false, no_prefetch = false;  // vm-create --restore
    std::string dir;             // snapshot, snapshot-delete, snapshot-load
    bool stop = false;           // snapshot --stop
    ProgressBar progress = ProgressBar::auto_detect;
};

// `ctl --socket S [--json] <status|stats|swapon PATH [--priority N] [--size SIZE]|
// swapoff [--force] PATH|set-limit VM SIZE|set-budget SIZE>`; SIZE arguments are validated
// while parsing. options.command stays `none` unless `ctl` was given. Without
// --socket, run_ctl uses default_control_socket().
void add_ctl_subcommand(CLI::App& app, CtlOptions& options);

// The request run_ctl sends (sizes already parsed; the server accepts both).
nlohmann::json ctl_request(const CtlOptions& options, int id);

// The timeout run_ctl applies: --timeout, else the default for the command.
std::chrono::milliseconds effective_timeout(const CtlOptions& options);

int run_ctl(const CtlOptions& options);
int run_ctl(const CtlOptions& options, std::ostream& out, std::ostream& err);

}  // namespace swapvisor::vmm::control
