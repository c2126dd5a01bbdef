// VmSpec: what one VM is, the same for every way of asking for one: `run`'s flags,
// `run --vm name=..,kernel=..`, `serve --config`, and the control socket's
// vm-create. Each front end only turns its text into these fields; the rules a
// field must obey live here once (`check_*`, `validate`), so the CLI and the socket
// cannot drift apart (issue #17 item 10). What depends on the host (the vCPUs its
// KVM allows, the balloon-statistics interval of `serve`) is checked or filled in by
// the VM builder (vmm/host/built_vm.hpp), not here.
//
// Errors: `validate` answers SpecErrc::bad_field with the context
// `field "NAME": why`; each `check_*` returns "" or the reason alone, so a front end
// can wrap it in its own code (the CLI's CliErrc, exit 2) while quoting the same words.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include "io/result.hpp"

namespace swapvisor::vmm {

enum class SpecErrc {
    bad_field = 1,  // a field breaks its rule; the context names the field and why
};
const std::error_category& spec_category();
inline std::error_code make_error_code(SpecErrc e) { return {static_cast<int>(e), spec_category()}; }

}  // namespace swapvisor::vmm

template <>
struct std::is_error_code_enum<swapvisor::vmm::SpecErrc> : std::true_type {};

namespace swapvisor::vmm {

inline constexpr std::uint64_t kMiB = 1ULL << 20;
inline constexpr std::uint64_t kGuestMemoryAlign = 2 * kMiB;  // guestmem maps RAM in 2 MiB units
inline constexpr std::uint64_t kDefaultMemory = 512 * kMiB;
inline constexpr unsigned kMaxVcpus = 255;        // the APIC id must fit CPUID leaf 1 EBX[31:24]
inline constexpr std::size_t kMaxCmdline = 4095;  // hvm_start_info's command line, without its NUL
inline constexpr std::size_t kMaxVmName = 64;
// The most guest RAM the host can map for one VM. RAM above 3 GiB is one KVM memory
// slot, and KVM refuses a slot of more than 2^31 - 1 pages (KVM_MEM_MAX_NR_PAGES,
// just under 8 TiB); rounded down to the 2 MiB unit. Both views of it (guest and
// VMM, guestmem/README.md) then fit the 128 TiB of a 47-bit user address space.
inline constexpr std::uint64_t kMaxGuestMemory =
    0xC000'0000ULL + ((((1ULL << 31) - 1) * 4096) / kGuestMemoryAlign) * kGuestMemoryAlign;
// The smallest resident limit or host budget accepted (0 still means "none"), on the
// command line and the socket alike. Below it a VM livelocks instead of running:
// every guest instruction may need a dozen pages resident at once (code, stack, data
// on both sides of a page boundary, four page-table levels, GDT/IDT), per vCPU, and
// the reclaimer evicts in runs of up to 1 MiB while the CLOCK sampler needs inactive
// pages to choose from. 16 MiB = 4096 pages leaves room for that with the largest
// batch in flight and a working set for a handful of vCPUs; a guest that cannot
// live in 16 MiB resident is not one to overcommit this hard.
inline constexpr std::uint64_t kMinMemoryLimit = 16ULL << 20;
// How often a balloon asks its guest for statistics: default and bound.
inline constexpr std::chrono::milliseconds kDefaultBalloonStatsInterval{2000};
inline constexpr std::chrono::milliseconds kMaxBalloonStatsInterval{3600 * 1000};

// Per-VM tuning of the working-set measurement and of the auto-limit controller
// (guestmem/README.md#working-set, #auto-limits). Unset fields take the defaults.
struct MemoryTuning {
    std::optional<double> auto_stall_target;  // auto: `some` stall share over 60 s, a fraction (default 0.01)
    std::uint64_t auto_floor = 0;             // auto: the limit never goes below (0: the controller's 64 MiB)
    std::uint64_t auto_ceiling = 0;           // auto: never above (0: the VM's memory)
    // The age scan's period (one MINOR fault per page in use per period); 0: off; none:
    // 5 s for an auto VM, else the host's default (serve/run --age-scan, off).
    std::optional<std::chrono::milliseconds> age_scan;
    // The sampled age scan (guestmem AgeSampling): each sweep zaps a rotating
    // 1/age_sample of the resident pages, so it costs 1/N of the faults; ages above one
    // period are then exact to within N periods. None: kAutoAgeSample for an auto VM,
    // else 1 (every page).
    std::optional<unsigned> age_sample;
    bool operator==(const MemoryTuning&) const = default;
};
// Off unless asked for: each sweep zaps every resident page, so every page in use
// takes one MINOR fault per period. Measured nested (swapvisor under KVM in a TCG VM,
// where a fault costs ~5 ms): memtouch's second pass over 32 MiB took 45.6 s with a
// 30 s scan and 50 ms without; on a host with a 20-40 us userfaultfd round trip, a
// 1 GiB working set pays ~9k faults/s, ~0.3 of a vCPU (docs/DESIGN-NOTES.md 44).
inline constexpr std::chrono::milliseconds kDefaultAgeScan{0};
inline constexpr std::chrono::milliseconds kAutoAgeScan{5'000};
// An auto VM's age scan zaps 1/8 of its resident pages per period (each group every
// 40 s), unless its spec says otherwise. With every page zapped every 5 s, a guest
// sweeping its hot set faster than the scan but slower than its faults (a 144 MiB
// set on a host where a MINOR fault costs ~240 us: 8.8 s per sweep) never caught up:
// every access was a fault, 4-5k per second, with no stall to show for it, and it ran
// ~2800x slower than with the same limit and no scan (auto_bench, DESIGN-NOTES 61).
inline constexpr unsigned kAutoAgeSample = 8;
inline constexpr std::chrono::milliseconds kMaxAgeScan{3'600'000};
inline constexpr unsigned kMaxAgeSample = 64;  // guestmem::AgeSampling::kMax
inline constexpr double kMaxStallTarget = 0.5;

struct VmSpec {
    std::string name;
    std::filesystem::path kernel;
    std::string cmdline;
    std::uint64_t memory_bytes = kDefaultMemory;
    unsigned vcpus = 1;
    std::uint64_t resident_limit = 0;  // 0: no limit
    bool auto_limit = false;           // resident-limit=auto (guestmem/README.md#auto-limits)
    MemoryTuning tuning;
    std::uint64_t swap_quota = 0;      // bytes of the shared swap pool this VM may fill; 0: no quota
    bool balloon = false;
    // How often the balloon asks the guest for statistics; 0: only when read. `run`
    // sets it from --balloon-stats-interval; for vm-create the daemon's own setting
    // applies (the socket has no such field).
    std::chrono::milliseconds balloon_stats_interval = kDefaultBalloonStatsInterval;
    std::optional<std::filesystem::path> serial_log;  // none: stdout ("[name] " prefixed under serve)
    bool operator==(const VmSpec&) const = default;
};

// The rules, one per field: "" if the value is acceptable, else why not (the value
// quoted). check_kernel and check_serial_log look at the file system (stat, never
// open: a FIFO must not block).
std::string check_name(std::string_view name);
std::string check_kernel(const std::filesystem::path& kernel);
std::string check_memory(std::uint64_t bytes);
std::string check_vcpus(std::uint64_t vcpus);
std::string check_cmdline(std::string_view cmdline);
// The floor of a resident limit or host budget (0, or at least kMinMemoryLimit);
// `what` names the limit in the message ("resident limit", "host budget"). The
// socket's set-limit / set-budget apply only this rule.
std::string check_memory_limit(std::uint64_t bytes, std::string_view what);
// A limit given with a VM or on the command line: a multiple of 4 KiB and the floor.
std::string check_aligned_memory_limit(std::uint64_t bytes, std::string_view what);
std::string check_balloon_stats_interval(std::chrono::milliseconds interval);
// The tuning against the rest of the spec: the auto-* fields need resident-limit=auto,
// a stall target in (0, 50 %], a floor of at least kMinMemoryLimit, a ceiling not under
// the floor nor over the VM's memory, an age scan of at most an hour.
std::string check_tuning(const MemoryTuning& tuning, bool auto_limit, std::uint64_t memory_bytes);
// The age scan period a VM built from `spec` runs with, `host_default` when it names none.
std::chrono::milliseconds age_scan_of(const VmSpec& spec, std::chrono::milliseconds host_default);
// The age scan's sample N (MemoryTuning::age_sample): the spec's, else kAutoAgeSample
// for an auto VM, else 1.
unsigned age_sample_of(const VmSpec& spec);
// An output file (a serial log, --stats-json): creatable or writable, its directory
// there and writable, not a directory.
std::string check_output_file(const std::filesystem::path& path);

// Every rule above, in field order; the first broken one is the error.
Result<void> validate(const VmSpec& spec);

}  // namespace swapvisor::vmm
