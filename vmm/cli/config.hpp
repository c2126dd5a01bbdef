// RunConfig: everything `swapvisor run` was asked to do, validated, plus the small
// parsers the command line uses (sizes, --swap specs, VM names). They return a
// Result (io/result.hpp) instead of throwing, so the CLI layer (cli.hpp) and the
// unit tests use them directly: the code (CliErrc) says which kind of value was
// refused, the context quotes what was given and why, for the operator.
// Sizes are binary: K = KiB = 1024 bytes.
#pragma once

#include <chrono>
#include <cstdint>
#include <system_error>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/result.hpp"
#include "vmm/sandbox/seccomp.hpp"
#include "swap/swap_pool.hpp"
#include "vmm/spec/vm_spec.hpp"

namespace swapvisor::vmm::cli {

enum class CliErrc {
    bad_size = 1,   // a SIZE argument
    bad_swap_spec,  // a --swap PATH[,priority=N][,size=SIZE]
    bad_vm_name,    // --name or name=
    bad_vm_spec,    // a --vm name=..,kernel=..
    out_of_range,   // a size beyond what the host can map, or below a minimum
    bad_file,       // --kernel not a regular file, an output path not writable
    bad_tuning,     // --auto-stall, --auto-floor, --auto-ceiling, --age-scan
};
const std::error_category& cli_category();
inline std::error_code make_error_code(CliErrc e) { return {static_cast<int>(e), cli_category()}; }

}  // namespace swapvisor::vmm::cli

template <>
struct std::is_error_code_enum<swapvisor::vmm::cli::CliErrc> : std::true_type {};

namespace swapvisor::vmm::cli {

// The VM spec and its rules are vmm/spec/vm_spec.hpp (shared with vm-create); the
// names the command line uses from it:
using vmm::kDefaultBalloonStatsInterval;
using vmm::kDefaultMemory;
using vmm::kGuestMemoryAlign;
using vmm::kMaxBalloonStatsInterval;
using vmm::kMaxCmdline;
using vmm::kMaxGuestMemory;
using vmm::kMaxVcpus;
using vmm::kMiB;
using vmm::VmSpec;

// --memory / memory=: parse_size_aligned to 2 MiB, at most kMaxGuestMemory.
Result<std::uint64_t> parse_guest_memory(std::string_view text);
// --resident-limit / --host-budget: vmm::check_memory_limit (4 KiB aligned, 0 or at
// least kMinMemoryLimit: the same rule as the control socket's).
Result<std::uint64_t> parse_memory_limit(std::string_view text, std::string_view what);
// An output file (--stats-json), checked before anything is reserved by
// vmm::check_output_file's rule: creatable or writable, its directory there and
// writable, not a directory. (A kernel's rule is vmm::check_kernel, applied by
// vmm::validate to every VM.)
Result<void> check_output_file(const std::filesystem::path& path);

// "1048576", "512M", "4G", "2GiB", "64k", "1T" (suffixes K/M/G/T, optionally followed
// by "iB", any case for the letter; "B" alone means bytes). Errors: empty, no
// digits, unknown suffix, overflow.
Result<std::uint64_t> parse_size(std::string_view text);

// parse_size plus: not zero, and a multiple of `align` (named in the message).
Result<std::uint64_t> parse_size_aligned(std::string_view text, std::uint64_t align, std::string_view align_name);

struct SwapSpec {
    std::filesystem::path path;
    std::optional<int> priority;         // 0..32767, higher first (swapon(8))
    std::optional<std::uint64_t> size;   // swap space: create a missing file with it; must match an existing one
    swap::Format format = swap::Format::no;  // format=yes: make a blank device swap; force: erase any
    swap::Takeover takeover = swap::Takeover::no;  // takeover=yes: claim a remote device another pool leases
    bool operator==(const SwapSpec&) const = default;
};

// "PATH[,priority=N][,size=SIZE][,format=yes|no|force][,takeover=yes|no]": no empty path, no unknown or
// repeated key, every key needs "=value".
Result<SwapSpec> parse_swap_spec(std::string_view text);

// One memory-tuning option (vmm::MemoryTuning) by its command-line name: `auto-stall`
// (a percentage, "1%" or "1"), `auto-floor` / `auto-ceiling` (sizes), `age-scan`
// (seconds, fractions allowed, or "off" = 0). false when `key` is none of them; the
// value's error names the key. The spec's rules (vmm::check_tuning) apply later.
Result<bool> parse_tuning_option(std::string_view key, std::string_view value, vmm::MemoryTuning& tuning);
// The names parse_tuning_option takes.
inline constexpr std::string_view kTuningOptions[] = {"auto-stall", "auto-floor", "auto-ceiling", "age-scan",
                                                      "age-sample"};

// VM names: 1..64 of [A-Za-z0-9._-], not starting with '.' or '-'.
Result<std::string> parse_vm_name(std::string_view text);

// One VM of a multi-VM host: `--vm name=N,kernel=ELF,memory=SIZE[,vcpus=N]
// [,resident-limit=SIZE|auto][,auto-stall=PCT][,auto-floor=SIZE][,auto-ceiling=SIZE]
// [,age-scan=SECONDS][,balloon][,cmdline=REST]`. cmdline= must come last and
// takes the rest of the text, commas and spaces included.
Result<VmSpec> parse_vm_spec(std::string_view text);

// `swapvisor serve`: the host daemon. No VM at start; VMs come and go through the
// control socket (vm-create, vm-stop, ...), sharing the swap pool and the budget.
struct ServeConfig {
    std::optional<std::filesystem::path> config_file;  // --config: absolute; re-read on SIGHUP
    std::filesystem::path control_socket;
    std::vector<SwapSpec> swaps;
    std::uint64_t host_budget = 0;
    unsigned fault_workers = 0;          // --fault-workers: 0 = guestmem::FaultService::default_workers()
    bool auto_limits = false;            // --auto-limits: VMs created without a limit are sized automatically
    std::optional<std::string> metrics;  // "127.0.0.1:PORT" or a Unix socket path
    std::chrono::milliseconds balloon_stats_interval = kDefaultBalloonStatsInterval;  // VMs made by vm-create
    std::chrono::milliseconds age_scan = vmm::kDefaultAgeScan;  // --age-scan: VMs made by vm-create without their own
    // --snapshots ROOT: each subdirectory holding a manifest.json is a snapshot loaded
    // at start (its slots reserved before the swapons; docs/SNAPSHOT.md#orchestration).
    std::optional<std::filesystem::path> snapshots;
    std::string log_level = "info";
    sandbox::Seccomp seccomp = sandbox::Seccomp::on;  // --no-seccomp: off
    bool operator==(const ServeConfig&) const = default;
};

struct RunConfig {
    std::filesystem::path kernel;
    std::string cmdline;
    std::uint64_t memory_bytes = kDefaultMemory;
    unsigned vcpus = 1;
    std::uint64_t resident_limit = 0;  // 0: no limit
    bool auto_limit = false;           // --resident-limit auto
    vmm::MemoryTuning tuning;          // --auto-stall, --auto-floor, --auto-ceiling, --age-scan (the --kernel VM)
    // --age-scan also sets it for every --vm that names none (the host default).
    std::optional<std::chrono::milliseconds> age_scan;
    std::uint64_t swap_quota = 0;      // 0: no quota
    std::vector<SwapSpec> swaps;
    std::optional<std::filesystem::path> stats_json;
    std::optional<std::filesystem::path> control_socket;
    std::string name = "vm0";
    bool balloon = false;
    std::chrono::milliseconds balloon_stats_interval = kDefaultBalloonStatsInterval;  // every VM's balloon
    // More VMs in the same process (--vm), sharing the swap pool and the host budget.
    std::vector<VmSpec> more_vms;
    std::uint64_t host_budget = 0;     // 0: only per-VM limits
    unsigned fault_workers = 0;        // --fault-workers: 0 = guestmem::FaultService::default_workers()
    std::string log_level = "info";    // --log-level (spdlog level name)
    sandbox::Seccomp seccomp = sandbox::Seccomp::on;  // --no-seccomp: off
    // --restore DIR: one more VM (named by --name), from that snapshot instead of a
    // kernel; --no-fill / --no-prefetch turn off its filler / recorded-order prefetch.
    std::optional<std::filesystem::path> restore;
    bool restore_fill = true;
    bool restore_prefetch = true;

    // Every VM to run: the one the top-level flags describe (if --kernel was given),
    // then each --vm.
    std::vector<VmSpec> all_vms() const;
};

}  // namespace swapvisor::vmm::cli
