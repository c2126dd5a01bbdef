// CLI11 wiring for `swapvisor run` and `serve`. Options are read as strings and
// validated with the parsers of config.hpp, so the messages are ours and the same as
// in tests. `serve --config FILE` is read here too (expand_config): its keys become
// the same flags, so a file and a command line are validated by one path.
#include "vmm/cli/cli.hpp"

#include <algorithm>
#include <sstream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "vmm/control/ctl.hpp"
#include "vmm/version.hpp"

namespace swapvisor::vmm::cli {
namespace {

struct RawRun {
    std::string kernel;
    std::string cmdline;
    std::string memory = "512M";
    unsigned vcpus = 1;
    std::string resident_limit;
    std::vector<std::string> swaps;
    std::string stats_json;
    std::string control;
    std::string name = "vm0";
    bool balloon = false;
    std::vector<std::string> vms;
    std::string host_budget;
    unsigned fault_workers = 0;
    std::string swap_quota;
    std::string log_level = "info";
    bool no_seccomp = false;
    double balloon_stats_interval = 2.0;  // seconds
    std::string auto_stall, auto_floor, auto_ceiling, age_scan, age_sample;  // parse_tuning_option
    std::string restore;
    bool no_fill = false, no_prefetch = false;
};

struct RawServe {
    std::string config;
    std::string control;
    std::vector<std::string> swaps;
    std::string host_budget;
    unsigned fault_workers = 0;
    bool auto_limits = false;
    std::string age_scan;
    std::string metrics;
    std::string snapshots;
    std::string log_level = "info";
    bool no_seccomp = false;
    double balloon_stats_interval = 2.0;  // seconds
};

// --balloon-stats-interval SECONDS: 0 (only when status / stats ask) or up to an
// hour, to the millisecond.
std::expected<std::chrono::milliseconds, std::string> stats_interval(double seconds) {
    if (!(seconds >= 0) || seconds * 1000 > static_cast<double>(kMaxBalloonStatsInterval.count()))
        return std::unexpected(fmt::format("--balloon-stats-interval: {} is not in 0..{} seconds", seconds,
                                           kMaxBalloonStatsInterval.count() / 1000));
    return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000 + 0.5));
}

const std::vector<std::string> kLogLevels = {"trace", "debug", "info", "warn", "error", "critical", "off"};

CliExit serve_error(std::string message) {
    return CliExit{kExitUsage, "",
                   fmt::format("swapvisor serve: {}\nRun 'swapvisor serve --help' for the options.\n", message)};
}

// Every --swap, or the message naming the one that is wrong.
std::expected<std::vector<SwapSpec>, std::string> parse_swaps(const std::vector<std::string>& texts) {
    std::vector<SwapSpec> swaps;
    for (const std::string& s : texts) {
        auto spec = parse_swap_spec(s);
        if (!spec) return std::unexpected(spec.error().message());
        for (const SwapSpec& other : swaps)
            if (other.path == spec->path) return std::unexpected(fmt::format("--swap '{}' is given twice", s));
        swaps.push_back(*spec);
    }
    return swaps;
}

CliOutcome validate_serve(const RawServe& raw) {
    ServeConfig config;
    if (!raw.config.empty()) config.config_file = std::filesystem::absolute(raw.config);
    // The same default as `ctl`: $SWAPVISOR_SOCKET, else /run/swapvisor/control.sock.
    config.control_socket = raw.control.empty() ? control::default_control_socket() : raw.control;
    auto swaps = parse_swaps(raw.swaps);
    if (!swaps) return serve_error(swaps.error());
    config.swaps = std::move(*swaps);
    if (!raw.host_budget.empty()) {
        auto budget = parse_memory_limit(raw.host_budget, "host budget");
        if (!budget) return serve_error(std::move(budget.error()).with_context("--host-budget").message());
        config.host_budget = *budget;
    }
    config.fault_workers = raw.fault_workers;
    if (!raw.metrics.empty()) config.metrics = raw.metrics;
    if (!raw.snapshots.empty()) config.snapshots = std::filesystem::absolute(raw.snapshots);
    config.auto_limits = raw.auto_limits;
    if (!raw.age_scan.empty()) {
        MemoryTuning tuning;
        if (auto ok = parse_tuning_option("age-scan", raw.age_scan, tuning); !ok)
            return serve_error(std::move(ok.error()).with_context("--age-scan").message());
        config.age_scan = *tuning.age_scan;
    }
    auto interval = stats_interval(raw.balloon_stats_interval);
    if (!interval) return serve_error(interval.error());
    config.balloon_stats_interval = *interval;
    config.log_level = raw.log_level;
    config.seccomp = raw.no_seccomp ? sandbox::Seccomp::off : sandbox::Seccomp::on;
    return config;
}

CliExit usage_error(std::string message) {
    return CliExit{kExitUsage, "", fmt::format("swapvisor run: {}\nRun 'swapvisor run --help' for the options.\n", message)};
}

CliOutcome validate(const RawRun& raw) {
    RunConfig config;
    config.kernel = raw.kernel;
    config.cmdline = raw.cmdline;
    auto memory = parse_guest_memory(raw.memory);
    if (!memory) return usage_error(std::move(memory.error()).with_context("--memory").message());
    config.memory_bytes = *memory;
    if (auto why = vmm::check_vcpus(raw.vcpus); !why.empty()) return usage_error(fmt::format("--vcpus: {}", why));
    config.vcpus = raw.vcpus;
    if (raw.resident_limit == "auto") {
        config.auto_limit = true;
    } else if (!raw.resident_limit.empty()) {
        auto limit = parse_memory_limit(raw.resident_limit, "resident limit");
        if (!limit) return usage_error(std::move(limit.error()).with_context("--resident-limit").message());
        config.resident_limit = *limit;
    }
    for (auto [key, value] : {std::pair{"auto-stall", &raw.auto_stall}, std::pair{"auto-floor", &raw.auto_floor},
                              std::pair{"auto-ceiling", &raw.auto_ceiling}, std::pair{"age-scan", &raw.age_scan},
                              std::pair{"age-sample", &raw.age_sample}}) {
        if (value->empty()) continue;
        auto ok = parse_tuning_option(key, *value, config.tuning);
        if (!ok) return usage_error(std::move(ok.error()).with_context(fmt::format("--{}", key)).message());
    }
    config.age_scan = config.tuning.age_scan;
    auto swaps = parse_swaps(raw.swaps);
    if (!swaps) return usage_error(swaps.error());
    config.swaps = std::move(*swaps);
    if (!raw.swap_quota.empty()) {
        auto quota = parse_size(raw.swap_quota);
        if (!quota) return usage_error(std::move(quota.error()).with_context("--swap-quota").message());
        config.swap_quota = *quota;
    }
    config.log_level = raw.log_level;
    config.seccomp = raw.no_seccomp ? sandbox::Seccomp::off : sandbox::Seccomp::on;
    if (!raw.stats_json.empty()) config.stats_json = raw.stats_json;
    if (!raw.control.empty()) config.control_socket = raw.control;
    auto name = parse_vm_name(raw.name);
    if (!name) return usage_error(std::move(name.error()).with_context("--name").message());
    config.name = *name;
    config.balloon = raw.balloon;
    auto interval = stats_interval(raw.balloon_stats_interval);
    if (!interval) return usage_error(interval.error());
    config.balloon_stats_interval = *interval;
    for (const std::string& text : raw.vms) {
        auto spec = parse_vm_spec(text);
        if (!spec) return usage_error(spec.error().message());
        config.more_vms.push_back(*spec);
    }
    if (!raw.host_budget.empty()) {
        auto budget = parse_memory_limit(raw.host_budget, "host budget");
        if (!budget) return usage_error(std::move(budget.error()).with_context("--host-budget").message());
        config.host_budget = *budget;
    }
    config.fault_workers = raw.fault_workers;
    if (!raw.restore.empty()) {
        if (!raw.kernel.empty())
            return usage_error("--restore and --kernel: a restored VM takes its spec from the snapshot (use --vm for others)");
        config.restore = raw.restore;
    } else if (raw.no_fill || raw.no_prefetch) {
        return usage_error("--no-fill / --no-prefetch need --restore");
    }
    config.restore_fill = !raw.no_fill;
    config.restore_prefetch = !raw.no_prefetch;
    auto vms = config.all_vms();
    if (vms.empty() && !config.restore) return usage_error("no VM to run: give --kernel, --restore, or one --vm per VM");
    for (const VmSpec& vm : vms) {
        if (auto why = vmm::check_cmdline(vm.cmdline); !why.empty())
            return usage_error(fmt::format("{}: the command line: {}", vm.name, why));
        if (auto why = vmm::check_tuning(vm.tuning, vm.auto_limit, vm.memory_bytes); !why.empty())
            return usage_error(fmt::format("{}: {}", vm.name, why));
    }
    for (std::size_t i = 0; i < vms.size(); ++i)
        for (std::size_t j = i + 1; j < vms.size(); ++j)
            if (vms[i].name == vms[j].name)
                return usage_error(fmt::format("two VMs are named '{}' (use --name / name=)", vms[i].name));
    if (config.restore)
        for (const VmSpec& vm : vms)
            if (vm.name == config.name)
                return usage_error(fmt::format("two VMs are named '{}' (use --name / name=)", vm.name));
    return config;
}

// Edit distance, for "did you mean": small words only.
std::size_t distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diag = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            std::size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diag = up;
        }
    }
    return row[b.size()];
}

std::string did_you_mean(std::string_view given, const std::vector<std::string>& known) {
    for (const std::string& k : known)
        if (distance(given, k) <= 2) return fmt::format(" (did you mean '{}'?)", k);
    return "";
}

// The first word must name a command (or be --help / --version). CLI11 alone answers
// a typo, an unknown option or nothing at all with "A subcommand is required".
std::optional<CliExit> check_command_word(const std::vector<std::string>& args, const CLI::App& app) {
    std::vector<std::string> commands;
    for (const CLI::App* sub : app.get_subcommands({})) commands.push_back(sub->get_name());
    const std::string list = fmt::format("{}", fmt::join(commands, ", "));
    if (args.empty())
        return CliExit{kExitUsage, "",
                       fmt::format("swapvisor: a subcommand is required: {}\nRun 'swapvisor --help' for more.\n", list)};
    const std::string& word = args[0];
    if (word == "--help" || word == "-h" || word == "--help-all" || word == "--version" || word == "-V") return std::nullopt;
    if (std::find(commands.begin(), commands.end(), word) != commands.end()) return std::nullopt;
    if (word.starts_with("-"))
        return CliExit{kExitUsage, "",
                       fmt::format("swapvisor: unknown option '{}'{}: before the command only --help and --version "
                                   "are accepted\nRun 'swapvisor --help' for more.\n",
                                   word, did_you_mean(word, {"--help", "--help-all", "--version"}))};
    return CliExit{kExitUsage, "",
                   fmt::format("swapvisor: unknown command '{}'{}; the commands are: {}\nRun 'swapvisor --help' for "
                               "more.\n",
                               word, did_you_mean(word, commands), list)};
}

// `serve ... --config FILE ...`: the file's settings as flags, inserted before the
// command line's (args[0] is "serve"). A key is a serve option without its "--"
// (`host-budget = "8G"`, `swap = ["/dev/nvme1n1,priority=5"]`, `no-seccomp = true`), at
// the top of the file or in a [serve] section; a flag given on the command line wins
// over the file. An unknown key or section is an error naming the file.
std::expected<std::vector<std::string>, std::string> expand_config(const std::vector<std::string>& args,
                                                                   const CLI::App& serve) {
    std::string file;
    for (std::size_t i = 1; i < args.size(); ++i) {
        if (args[i] == "--config" && i + 1 < args.size()) file = args[i + 1];
        if (args[i].starts_with("--config=")) file = args[i].substr(9);
    }
    if (file.empty()) return args;
    std::vector<CLI::ConfigItem> items;
    try {
        items = CLI::ConfigTOML().from_file(file);
    } catch (const CLI::Error& e) {
        return std::unexpected(fmt::format("--config {}: {}", file, e.what()));
    }
    auto on_command_line = [&args](const std::string& flag) {
        return std::any_of(args.begin() + 1, args.end(),
                           [&flag](const std::string& a) { return a == flag || a.starts_with(flag + "="); });
    };
    std::vector<std::string> expanded{args[0]};
    for (const CLI::ConfigItem& item : items) {
        if (item.name == "++" || item.name == "--") continue;  // CLI11's section open / close markers
        if (!item.parents.empty() && item.parents != std::vector<std::string>{"serve"})
            return std::unexpected(
                fmt::format("--config {}: unknown section [{}] (keys go at the top or in [serve])", file, item.parents[0]));
        const std::string flag = "--" + item.name;
        const CLI::Option* option = serve.get_option_no_throw(flag);
        if (option == nullptr || item.name == "config" || item.name == "help")
            return std::unexpected(fmt::format("--config {}: unknown key '{}'{} (a key is a 'swapvisor serve' option "
                                               "without its --)",
                                               file, item.name,
                                               did_you_mean(item.name, {"control", "swap", "host-budget", "fault-workers", "metrics", "snapshots",
                                                                        "balloon-stats-interval", "no-seccomp",
                                                                        "log-level"})));
        if (on_command_line(flag)) continue;
        if (option->get_type_size() == 0) {  // a flag: true / false
            expanded.push_back(flag + "=" + (item.inputs.empty() ? std::string("true") : item.inputs.front()));
            continue;
        }
        for (const std::string& value : item.inputs) expanded.push_back(flag + "=" + value);
    }
    expanded.insert(expanded.end(), args.begin() + 1, args.end());
    return expanded;
}

}  // namespace

std::string version_text() { return fmt::format("swapvisor {} ({})", kVersion, kGitDescribe); }

std::optional<CliExit> check_run_files(const RunConfig& config) {
    // The whole spec of each VM, by the same rules vm-create applies (vmm/spec).
    for (const VmSpec& vm : config.all_vms()) {
        if (auto ok = vmm::validate(vm); !ok) return usage_error(std::move(ok.error()).with_context(vm.name).message());
    }
    if (config.stats_json) {
        if (auto ok = check_output_file(*config.stats_json); !ok) return usage_error(std::move(ok.error()).with_context("--stats-json").message());
    }
    return std::nullopt;
}

CliOutcome parse_command_line(const std::vector<std::string>& given) {
    CLI::App app{"swapvisor: a KVM virtual machine monitor that overcommits guest memory onto swap devices", "swapvisor"};
    app.require_subcommand(1);
    app.set_help_all_flag("--help-all", "Print the help of every subcommand");
    app.set_version_flag("--version,-V", version_text(), "Print the version (project version and git describe) and exit");

    RawRun raw;
    CLI::App* run = app.add_subcommand("run", "Boot a PVH ELF guest and run it until it exits; the exit status is "
                                              "the guest's debug-exit code (port 0xf4)");
    run->add_option("--kernel", raw.kernel,
                    "Guest image: a 64-bit x86 ELF with the PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), e.g. the "
                    "examples/ guests or a Linux vmlinux built with CONFIG_PVH. Required unless --vm gives the VMs")
        ->type_name("ELF");
    run->add_option("--restore", raw.restore,
                    "Run the VM of a snapshot (ctl snapshot) instead of booting a kernel: its spec, vCPUs, devices and "
                    "memory are the snapshot's (named by --name); pages come in at first touch")
        ->type_name("DIR");
    run->add_flag("--no-fill", raw.no_fill, "With --restore: no background filler (pages come only at first touch)");
    run->add_flag("--no-prefetch", raw.no_prefetch,
                  "With --restore: do not prefetch in the order the last restore of the snapshot touched its pages");
    run->add_option("--cmdline", raw.cmdline, "Guest command line, passed in hvm_start_info (at most 4095 bytes)")
        ->type_name("STR");
    run->add_option("--memory", raw.memory,
                    "Guest RAM: bytes or K/M/G/T (KiB/MiB/GiB/TiB), a multiple of 2 MiB; RAM above 3 GiB is placed "
                    "above 4 GiB")
        ->type_name("SIZE")
        ->capture_default_str();
    run->add_option("--vcpus", raw.vcpus, "Number of vCPUs (1..255); vCPU 0 boots, the others wait for INIT/SIPI")
        ->type_name("N")
        ->capture_default_str();
    run->add_option("--resident-limit", raw.resident_limit,
                    "Most guest RAM kept in host memory, at least 16M; colder pages go to swap (default: no limit); "
                    "`auto`: sized from the VM's measured memory stall (guestmem/README.md#auto-limits)")
        ->type_name("SIZE|auto");
    run->add_option("--auto-stall", raw.auto_stall,
                    "With --resident-limit auto: the memory stall the controller aims for, a share of wall time "
                    "over 60 s (default 1%; --vm takes auto-stall=)")
        ->type_name("PCT");
    run->add_option("--auto-floor", raw.auto_floor,
                    "With --resident-limit auto: the limit never goes below SIZE (default the smaller of 64M and an eighth of the memory, at least 16M)")
        ->type_name("SIZE");
    run->add_option("--auto-ceiling", raw.auto_ceiling,
                    "With --resident-limit auto: the limit never goes above SIZE (default: the VM's memory)")
        ->type_name("SIZE");
    run->add_option("--age-scan", raw.age_scan,
                    "Seconds between sweeps that sample which pages are in use, for the working set and the cold-age "
                    "histogram; each costs one minor fault per page in use (default off: only reclaim sweeps sample; "
                    "5 with --resident-limit auto). Also the default of every --vm (age-scan=)")
        ->type_name("SECONDS|off");
    run->add_option("--age-sample", raw.age_sample,
                    "Each age-scan sweep zaps only a rotating 1/N of the resident pages (2 MiB groups) and "
                    "extrapolates: 1/N of the faults, ages beyond one period exact to within N periods (default 1: "
                    "every page, 8 with --resident-limit auto; 1..64)")
        ->type_name("N");
    run->add_option("--swap", raw.swaps,
                    "Swap device or file, repeatable: PATH[,priority=N][,size=SIZE][,format=yes|force][,takeover=yes], "
                    "or a compressed tier in host RAM: mem:SIZE[,codec=lz4|zstd][,max=BYTES][,high=PCT][,low=PCT]"
                    "[,share=PCT][,priority=N] (counted in the host budget; pages not compressing to max= (3072) go to "
                    "the next device; past high=% (90) its coldest pages move down to low=% (75); one VM holds at most "
                    "share=% of it). Higher priority is used first (0..32767); a missing file is created with size= of "
                    "swap space and a swap header. An existing device must carry the header ('swapvisor mkswap PATH') "
                    "and match size=, unless format=yes erases it. An NBD export another swapvisor holds (a live "
                    "lease) is refused unless takeover=yes")
        ->type_name("PATH[,priority=N][,size=SIZE][,format=yes][,takeover=yes]")
        ->take_all();
    run->add_option("--stats-json", raw.stats_json, "Write the final memory and swap counters as JSON to FILE on exit")
        ->type_name("FILE");
    run->add_option("--control", raw.control,
                    "Unix control socket (mode 0600) for 'swapvisor ctl': swapon, swapoff, set-limit, stats")
        ->type_name("SOCKET");
    run->add_option("--name", raw.name, "VM name in logs, stats and control replies ([A-Za-z0-9._-], <= 64)")
        ->type_name("NAME")
        ->capture_default_str();
    run->add_flag("--balloon", raw.balloon,
                  "Add a virtio-balloon device (free page reporting, guest statistics, deflate-on-OOM)");
    run->add_option("--balloon-stats-interval", raw.balloon_stats_interval,
                    "Seconds between the balloon's requests for guest memory statistics (0: only when status / "
                    "stats ask); every VM of this run")
        ->type_name("SECONDS")
        ->capture_default_str();
    run->add_option("--vm", raw.vms,
                    "Another VM in this process, repeatable: name=NAME,kernel=ELF,memory=SIZE[,vcpus=N]"
                    "[,resident-limit=SIZE|auto][,auto-stall=PCT][,auto-floor=SIZE][,auto-ceiling=SIZE][,age-scan=SECONDS]"
                    "[,swap-quota=SIZE][,balloon][,cmdline=REST] (cmdline= last: it takes the rest). All VMs "
                    "share the swap pool and the host budget; the exit status is the first non-zero guest code")
        ->type_name("SPEC")
        ->take_all();
    run->add_option("--swap-quota", raw.swap_quota,
                    "Most of the shared swap pool the --kernel VM may fill (e.g. 1G); at it the VM stays resident, "
                    "over its limit if it must (default: no quota; --vm takes swap-quota=)")
        ->type_name("SIZE");
    run->add_option("--log-level", raw.log_level, "Log level: trace, debug, info, warn, error, critical, off")
        ->check(CLI::IsMember(kLogLevels))
        ->capture_default_str();
    run->add_flag("--no-seccomp", raw.no_seccomp,
                  "Do not confine vCPU, fault-service and reclaimer threads with seccomp (debugging only)");
    run->add_option("--host-budget", raw.host_budget,
                    "Most guest RAM kept in host memory over all VMs together; each VM is held to its share "
                    "(proportional to its memory) while the host is over it; at least 16M (default: no budget)")
        ->type_name("SIZE");
    run->add_option("--fault-workers", raw.fault_workers,
                    "Threads that serve the guest page faults of every VM together, each with its own io_uring "
                    "(one VM takes at most min(its vCPUs, N - 1) of them at once; default: twice the cores, "
                    "at least 4)")
        ->type_name("N")
        ->check(CLI::Range(1u, 1024u));

    RawServe raw_serve;
    CLI::App* serve = app.add_subcommand("serve", "Run the host daemon: no VM at start; VMs are created, stopped and "
                                                  "removed through the control socket (swapvisor ctl vm-create ...)");
    serve->add_option("--config", raw_serve.config,
                      "TOML file setting any of these options (key = option without --, e.g. host-budget = \"8G\", "
                      "swap = [\"/dev/nvme1n1,priority=5\"]); flags on the command line win; re-read on SIGHUP "
                      "(log-level and host-budget apply live)")
        ->type_name("FILE");
    serve->add_option("--control", raw_serve.control,
                      fmt::format("Unix control socket (mode 0600); default ${} or {} (as for ctl). A second daemon "
                                  "for it is refused (lock: SOCKET.lock)",
                                  control::kSocketEnvVar, control::kDefaultControlSocket))
        ->type_name("SOCKET");
    serve->add_option("--swap", raw_serve.swaps, "Swap device or file, repeatable (as for run)")
        ->type_name("PATH[,priority=N][,size=SIZE][,format=yes][,takeover=yes]")
        ->take_all();
    serve->add_option("--host-budget", raw_serve.host_budget, "Host memory budget over all VMs (as for run)")
        ->type_name("SIZE");
    serve->add_option("--fault-workers", raw_serve.fault_workers,
                      "Threads that serve every VM's guest page faults (as for run; read at start only)")
        ->type_name("N")
        ->check(CLI::Range(1u, 1024u));
    serve->add_flag("--auto-limits", raw_serve.auto_limits,
                    "Size the resident limit of every VM created without one from its measured memory stall "
                    "(resident-limit=auto; a VM may also ask for it in vm-create)");
    serve->add_option("--age-scan", raw_serve.age_scan,
                      "Seconds between the working-set sweeps of a VM created without its own age scan (as for "
                      "run; default off, 5 for resident-limit=auto VMs)")
        ->type_name("SECONDS|off");
    serve->add_option("--snapshots", raw_serve.snapshots,
                      "Directory of snapshots (one per subdirectory, as `ctl snapshot` writes them): their swap slots "
                      "are kept from reuse and they can be restored (ctl vm-create NAME --restore DIR)")
        ->type_name("DIR");
    serve->add_option("--metrics", raw_serve.metrics,
                      "Serve Prometheus metrics over HTTP on 127.0.0.1:PORT (loopback only) or a Unix socket PATH")
        ->type_name("ADDR");
    serve->add_option("--balloon-stats-interval", raw_serve.balloon_stats_interval,
                      "Seconds between the balloon's requests for guest memory statistics, for VMs created with "
                      "a balloon (0: only when status / stats ask)")
        ->type_name("SECONDS")
        ->capture_default_str();
    serve->add_flag("--no-seccomp", raw_serve.no_seccomp,
                    "Do not confine vCPU, fault-service and reclaimer threads with seccomp (debugging only)");
    serve->add_option("--log-level", raw_serve.log_level, "Log level: trace, debug, info, warn, error, critical, off")
        ->check(CLI::IsMember(kLogLevels))
        ->capture_default_str();

    control::CtlOptions ctl;
    control::add_ctl_subcommand(app, ctl);
    MkswapOptions mkswap;
    std::string mkswap_size;
    CLI::App* mkswap_cmd = add_mkswap_subcommand(app, mkswap, mkswap_size);

    if (auto bad = check_command_word(given, app)) return *bad;
    std::vector<std::string> args = given;
    if (given[0] == "serve") {
        auto expanded = expand_config(given, *serve);
        if (!expanded) return serve_error(expanded.error());
        args = std::move(*expanded);
    }
    std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 parses a reversed vector
    std::ostringstream out;
    std::ostringstream err;
    try {
        app.parse(reversed);
    } catch (const CLI::ParseError& e) {
        int status = app.exit(e, out, err);
        return CliExit{status == 0 ? 0 : kExitUsage, out.str(), err.str()};
    }
    if (ctl.command != control::CtlCommand::none) return ctl;  // no --socket: run_ctl uses the default
    if (mkswap_cmd->parsed()) {
        if (!mkswap_size.empty()) {
            auto size = parse_size_aligned(mkswap_size, 4096, "4 KiB");
            if (!size)
                return CliExit{kExitUsage, "", fmt::format("swapvisor mkswap: --size: {}\n", size.error().message())};
            mkswap.size_bytes = *size;
        }
        return mkswap;
    }
    if (serve->parsed()) return validate_serve(raw_serve);
    return validate(raw);
}

}  // namespace swapvisor::vmm::cli
