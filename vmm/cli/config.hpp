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

namespace swapvisor::vmm::cli {

enum class CliErrc {
    bad_size = 1,   // a SIZE argument
    bad_swap_spec,  // a --swap PATH[,priority=N][,size=SIZE]
    bad_vm_name,    // --name or name=
    bad_vm_spec,    // a --vm name=..,kernel=..
    out_of_range,   // a size beyond what the host can map, or below a minimum
    bad_file,       // --kernel not a regular file, an output path not writable
};
const std::error_category& cli_category();
inline std::error_code make_error_code(CliErrc e) { return {static_cast<int>(e), cli_category()}; }

}  // namespace swapvisor::vmm::cli

template <>
struct std::is_error_code_enum<swapvisor::vmm::cli::CliErrc> : std::true_type {};

namespace swapvisor::vmm::cli {

inline constexpr std::uint64_t kMiB = 1ULL << 20;
inline constexpr std::uint64_t kGuestMemoryAlign = 2 * kMiB;  // guestmem maps RAM in 2 MiB units
inline constexpr std::uint64_t kDefaultMemory = 512 * kMiB;
// --balloon-stats-interval: default and bounds (seconds on the command line).
inline constexpr std::chrono::milliseconds kDefaultBalloonStatsInterval{2000};
inline constexpr std::chrono::milliseconds kMaxBalloonStatsInterval{3600 * 1000};
inline constexpr unsigned kMaxVcpus = 255;   // the APIC id must fit CPUID leaf 1 EBX[31:24]
inline constexpr std::size_t kMaxCmdline = 4095;  // hvm_start_info's command line, without its NUL
// The most guest RAM the host can map for one VM. RAM above 3 GiB is one KVM memory
// slot, and KVM refuses a slot of more than 2^31 - 1 pages (KVM_MEM_MAX_NR_PAGES,
// just under 8 TiB); rounded down to the 2 MiB unit. Both views of it (guest and
// VMM, guestmem/README.md) then fit the 128 TiB of a 47-bit user address space.
inline constexpr std::uint64_t kMaxGuestMemory =
    0xC000'0000ULL + ((((1ULL << 31) - 1) * 4096) / kGuestMemoryAlign) * kGuestMemoryAlign;

// --memory / memory=: parse_size_aligned to 2 MiB, at most kMaxGuestMemory.
Result<std::uint64_t> parse_guest_memory(std::string_view text);
// --resident-limit / --host-budget: 4 KiB aligned, 0 (none) or at least
// control::kMinMemoryLimit (the same floor as the control socket).
Result<std::uint64_t> parse_memory_limit(std::string_view text, std::string_view what);
// The operator's files, checked before anything is reserved: a kernel must be a
// regular file (a FIFO would block the open forever); an output file must be
// creatable or writable (its directory exists and is writable) and not a directory.
Result<void> check_kernel_file(const std::filesystem::path& path);
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
    bool operator==(const SwapSpec&) const = default;
};

// "PATH[,priority=N][,size=SIZE][,format=yes|no|force]": no empty path, no unknown or
// repeated key, every key needs "=value".
Result<SwapSpec> parse_swap_spec(std::string_view text);

// VM names: 1..64 of [A-Za-z0-9._-], not starting with '.' or '-'.
Result<std::string> parse_vm_name(std::string_view text);

// One VM of a multi-VM host: `--vm name=N,kernel=ELF,memory=SIZE[,vcpus=N]
// [,resident-limit=SIZE][,balloon][,cmdline=REST]`. cmdline= must come last and
// takes the rest of the text, commas and spaces included.
struct VmSpec {
    std::string name;
    std::filesystem::path kernel;
    std::string cmdline;
    std::uint64_t memory_bytes = kDefaultMemory;
    unsigned vcpus = 1;
    std::uint64_t resident_limit = 0;  // 0: no limit
    std::uint64_t swap_quota = 0;      // bytes of the shared swap pool this VM may fill; 0: no quota
    bool balloon = false;
    // How often the balloon asks the guest for statistics; 0: only when read.
    std::chrono::milliseconds balloon_stats_interval = kDefaultBalloonStatsInterval;
    std::optional<std::filesystem::path> serial_log;  // none: stdout
    bool operator==(const VmSpec&) const = default;
};

Result<VmSpec> parse_vm_spec(std::string_view text);

// `swapvisor serve`: the host daemon. No VM at start; VMs come and go through the
// control socket (vm-create, vm-stop, ...), sharing the swap pool and the budget.
struct ServeConfig {
    std::optional<std::filesystem::path> config_file;  // --config: absolute; re-read on SIGHUP
    std::filesystem::path control_socket;
    std::vector<SwapSpec> swaps;
    std::uint64_t host_budget = 0;
    std::optional<std::string> metrics;  // "127.0.0.1:PORT" or a Unix socket path
    std::chrono::milliseconds balloon_stats_interval = kDefaultBalloonStatsInterval;  // VMs made by vm-create
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
    std::string log_level = "info";    // --log-level (spdlog level name)
    sandbox::Seccomp seccomp = sandbox::Seccomp::on;  // --no-seccomp: off

    // Every VM to run: the one the top-level flags describe (if --kernel was given),
    // then each --vm.
    std::vector<VmSpec> all_vms() const;
};

}  // namespace swapvisor::vmm::cli
