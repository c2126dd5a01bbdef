// `swapvisor ctl`: see ctl.hpp. One connection, one request (id 1); the socket is
// non-blocking and every wait is a poll() bounded by --timeout, so a stuck daemon
// costs the caller --timeout, not forever. Every line the server sends is shown with
// its code, even one that arrives after our send failed (a server that refuses a
// client writes its reason and closes). CLI11 may throw while parsing (main catches
// it); run_ctl itself never throws out (it reports and returns an exit status).
#include "vmm/control/ctl.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <thread>
#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>
#include <filesystem>
#include <iostream>
#include <string_view>
#include <tuple>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "guestmem/latency_histogram.hpp"
#include "io/nbd_device.hpp"
#include "swap/memory_tier.hpp"
#include "io/unique_fd.hpp"
#include "vmm/control/protocol.hpp"

namespace swapvisor::vmm::control {

using nlohmann::json;

namespace {

constexpr int kRequestId = 1;

CLI::Validator size_validator() {
    return CLI::Validator(
        [](std::string& text) -> std::string {
            auto size = parse_size(text);
            return size ? std::string() : size.error();
        },
        "SIZE");
}

std::string_view command_name(CtlCommand command) {
    switch (command) {
        case CtlCommand::none: return "ctl";
        case CtlCommand::status: return "status";
        case CtlCommand::stats: return "stats";
        case CtlCommand::swapon: return "swapon";
        case CtlCommand::swapoff: return "swapoff";
        case CtlCommand::set_limit: return "set-limit";
        case CtlCommand::set_budget: return "set-budget";
        case CtlCommand::vm_create: return "vm-create";
        case CtlCommand::vm_stop: return "vm-stop";
        case CtlCommand::vm_pause: return "vm-pause";
        case CtlCommand::vm_resume: return "vm-resume";
        case CtlCommand::vm_remove: return "vm-remove";
        case CtlCommand::vm_list: return "vm-list";
        case CtlCommand::set_balloon: return "set-balloon";
        case CtlCommand::set_quota: return "set-quota";
        case CtlCommand::snapshot: return "snapshot";
        case CtlCommand::snapshot_delete: return "snapshot-delete";
        case CtlCommand::snapshot_load: return "snapshot-load";
    }
    return "ctl";
}

// "512 B", "64M", "1.5G": binary units, one decimal unless exact.
std::string human_bytes(std::uint64_t bytes) {
    static constexpr const char* kUnits[] = {"K", "M", "G", "T", "P"};
    if (bytes < 1024) return fmt::format("{} B", bytes);
    double value = static_cast<double>(bytes);
    std::size_t unit = 0;
    value /= 1024;
    while (value >= 1024 && unit + 1 < std::size(kUnits)) {
        value /= 1024;
        ++unit;
    }
    if (value == static_cast<double>(static_cast<std::uint64_t>(value))) return fmt::format("{}{}", static_cast<std::uint64_t>(value), kUnits[unit]);
    return fmt::format("{:.1f}{}", value, kUnits[unit]);
}

std::uint64_t u64(const json& object, const char* key) {
    auto it = object.find(key);
    return it != object.end() && it->is_number_unsigned() ? it->get<std::uint64_t>() : 0;
}

std::string str(const json& object, const char* key) {
    auto it = object.find(key);
    return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string limit_text(std::uint64_t bytes) { return bytes == 0 ? "none" : human_bytes(bytes); }

// A histogram's cumulative buckets in bound order ("le<=0.000025:3 ... +Inf:9"), not
// in the JSON object's key order (any histogram: swap-in latency, cold age).
std::string bucket_text(const json& buckets) {
    if (!buckets.is_object()) return buckets.dump();
    std::vector<std::pair<double, std::string>> bounds;
    for (const auto& [key, value] : buckets.items()) {
        char* end = nullptr;
        const double v = key == "+Inf" ? std::numeric_limits<double>::infinity() : std::strtod(key.c_str(), &end);
        bounds.emplace_back(v, key);
    }
    std::sort(bounds.begin(), bounds.end());
    std::string text;
    for (const auto& [bound, key] : bounds)
        text += fmt::format("{}{}:{}", text.empty() ? "le " : " ", key, u64(buckets, key.c_str()));
    return text;
}

double f64(const json& object, const char* key) {
    auto it = object.find(key);
    return it != object.end() && it->is_number() ? it->get<double>() : 0.0;
}

// The working set, memory stall and where the limit comes from, under a VM's row.
std::string pressure_line(const json& vm) {
    if (!vm.contains("stall_some_avg10")) return {};
    std::string line = fmt::format(
        "  working set {} ({} s), stall some {:.2f}%/{:.2f}%/{:.2f}% full {:.2f}%/{:.2f}%/{:.2f}% (10/60/300 s), "
        "refaults {:.1f}/min, limit {}",
        human_bytes(u64(vm, "working_set_bytes")), u64(vm, "working_set_window_seconds"),
        f64(vm, "stall_some_avg10") * 100, f64(vm, "stall_some_avg60") * 100, f64(vm, "stall_some_avg300") * 100,
        f64(vm, "stall_full_avg10") * 100, f64(vm, "stall_full_avg60") * 100, f64(vm, "stall_full_avg300") * 100,
        f64(vm, "refaults_per_min"), str(vm, "limit_source").empty() ? "manual" : str(vm, "limit_source"));
    if (!str(vm, "auto_decision").empty()) line += fmt::format(" ({})", str(vm, "auto_decision"));
    return line + "\n";
}

void print_status(const json& reply, StatsDetail detail, std::ostream& out) {
    const json empty = json::array();
    const json& vms = reply.contains("vms") && reply["vms"].is_array() ? reply["vms"] : empty;
    const json& swaps = reply.contains("swap") && reply["swap"].is_array() ? reply["swap"] : empty;
    out << fmt::format("{:<16} {:>9} {:>19} {:>9} {:>21}\n", "VM", "MEMORY", "RESIDENT/LIMIT", "SWAPPED",
                       "FAULTS (MAJOR/MINOR)");
    for (const json& vm : vms) {
        out << fmt::format("{:<16} {:>9} {:>19} {:>9} {:>21}\n", str(vm, "name"), human_bytes(u64(vm, "memory_bytes")),
                           human_bytes(u64(vm, "resident_bytes")) + "/" + limit_text(u64(vm, "resident_limit")),
                           human_bytes(u64(vm, "swapped_bytes")),
                           fmt::format("{}/{}", u64(vm, "major_faults"), u64(vm, "minor_faults")));
        out << pressure_line(vm);
    }
    if (vms.empty()) out << "(no VMs)\n";
    out << '\n';
    out << fmt::format("{:<32} {:>8} {:>23} {:>9}\n", "SWAP DEVICE", "PRIORITY", "USED/TOTAL (SLOTS)", "STATE");
    for (const json& dev : swaps) {
        int priority = dev.contains("priority") && dev["priority"].is_number_integer() ? dev["priority"].get<int>() : 0;
        bool removing = dev.contains("removing") && dev["removing"].is_boolean() && dev["removing"].get<bool>();
        std::string state = dev.contains("state") && dev["state"].is_string() ? dev["state"].get<std::string>()
                            : removing                                         ? "removing"
                                                                               : "active";
        out << fmt::format("{:<32} {:>8} {:>23} {:>9}\n", str(dev, "path"), priority,
                           fmt::format("{}/{}", u64(dev, "used_slots"), u64(dev, "total_slots")), state);
        if (dev.contains("failure") && dev["failure"].is_string() && !dev["failure"].get<std::string>().empty())
            out << fmt::format("  {}\n", dev["failure"].get<std::string>());
        if (u64(dev, "write_errors") + u64(dev, "read_errors") + u64(dev, "quarantined_slots") != 0)
            out << fmt::format("  errors: {} write, {} read; {} slots quarantined\n", u64(dev, "write_errors"),
                               u64(dev, "read_errors"), u64(dev, "quarantined_slots"));
        if (dev.contains("remote") && dev["remote"].is_object()) {
            const json& r = dev["remote"];
            out << fmt::format("  remote: {}{}\n", str(r, "health"),
                               str(r, "reason").empty() ? std::string() : ": " + str(r, "reason"));
        }
        if (u64(dev, "read_retries_total") != 0)
            out << fmt::format("  reads retried after a lost connection: {}\n", u64(dev, "read_retries_total"));
        if (dev.contains("tier") && dev["tier"].is_object()) {
            const json& t = dev["tier"];
            const double ratio = t.contains("ratio") && t["ratio"].is_number() ? t["ratio"].get<double>() : 0.0;
            const double frag = t.contains("fragmentation") && t["fragmentation"].is_number() ? t["fragmentation"].get<double>() : 0.0;
            out << fmt::format("  memory tier ({}): {} pages in {} bytes compressed, ratio {:.2f}, arena {}/{} bytes "
                               "({:.0f}% fragmented); {} rejected, {} demoted, {} swap-ins served\n",
                               str(t, "codec"), u64(t, "stored_pages"), u64(t, "compressed_bytes"), ratio,
                               u64(t, "arena_bytes"), u64(t, "capacity_bytes"), frag * 100, u64(t, "rejected_pages_total"),
                               u64(t, "demoted_pages_total"), u64(t, "swapins_served_total"));
        }
        if (detail == StatsDetail::full)
            out << fmt::format("  read_bytes_total {}, written_bytes_total {}\n", u64(dev, "read_bytes_total"),
                               u64(dev, "written_bytes_total"));
    }
    if (swaps.empty()) out << "(no swap devices)\n";
    if (reply.contains("host") && reply["host"].is_object()) {
        const json& host = reply["host"];
        out << fmt::format("\nhost: resident {}, budget {}\n", human_bytes(u64(host, "resident_bytes")),
                           limit_text(u64(host, "budget_bytes")));
    }
    if (reply.contains("snapshots") && reply["snapshots"].is_object()) {
        const json& s = reply["snapshots"];
        out << fmt::format("snapshots: {} loaded, {} held slots, {} unavailable; shared vslots {}\n", u64(s, "loaded"),
                           u64(s, "held_vslots"), u64(s, "unavailable"),
                           reply.contains("host") ? u64(reply["host"], "shared_vslots") : 0);
    }
    if (detail != StatsDetail::full) return;
    for (const json& vm : vms) {
        out << fmt::format("\n{}:\n", str(vm, "name"));
        for (const auto& [key, value] : vm.items()) {
            if (key == "name") continue;
            out << fmt::format("  {:<22} {}\n", key, key.ends_with("_bucket") ? bucket_text(value) : value.dump());
        }
    }
}

std::string vm_line(const json& vm) {
    std::string end;
    if (vm.contains("exit_code")) {
        end = fmt::format("{} ({})", u64(vm, "exit_code"), str(vm, "end_reason"));
    }
    if (vm.contains("restored_from")) end += fmt::format("{}restored from {}", end.empty() ? "" : " ", str(vm, "restored_from"));
    return fmt::format("{:<16} {:>8} {:>6} {:>9} {}\n", str(vm, "name"), str(vm, "state"), u64(vm, "vcpus"),
                       human_bytes(u64(vm, "memory_bytes")), end);
}

void print_vm_list(const json& reply, std::ostream& out) {
    out << fmt::format("{:<16} {:>8} {:>6} {:>9} {}\n", "VM", "STATE", "VCPUS", "MEMORY", "EXIT (REASON)");
    const json& vms = reply.contains("vms") && reply["vms"].is_array() ? reply["vms"] : json::array();
    for (const json& vm : vms) out << vm_line(vm);
    if (vms.empty()) out << "(no VMs)\n";
}

void print_result(const CtlOptions& options, const json& reply, std::ostream& out) {
    switch (options.command) {
        case CtlCommand::vm_list: print_vm_list(reply, out); break;
        case CtlCommand::vm_create:
        case CtlCommand::vm_stop:
        case CtlCommand::vm_pause:
        case CtlCommand::vm_resume:
            out << fmt::format("{:<16} {:>8} {:>6} {:>9} {}\n", "VM", "STATE", "VCPUS", "MEMORY", "EXIT (REASON)");
            out << vm_line(reply);
            break;
        case CtlCommand::vm_remove: out << fmt::format("vm-remove {}: removed\n", str(reply, "name")); break;
        case CtlCommand::snapshot: {
            const json& p = reply.contains("pages") ? reply["pages"] : json::object();
            out << fmt::format("snapshot {}: {} ({} image, {} swapped by reference, {} zero pages; {} written, {} ms){}\n",
                               str(reply, "vm"), str(reply, "dir"), u64(p, "image"), u64(p, "swapped"), u64(p, "zero"),
                               human_bytes(u64(reply, "bytes_written")), u64(reply, "elapsed_ms"),
                               reply.value("stopped", false) ? ", VM stopped" : "");
            break;
        }
        case CtlCommand::snapshot_delete: out << fmt::format("snapshot-delete {}: deleted\n", str(reply, "dir")); break;
        case CtlCommand::snapshot_load:
            out << fmt::format("snapshot-load {}: {}\n", str(reply, "dir"), str(reply, "state"));
            break;
        case CtlCommand::set_balloon:
            out << fmt::format("set-balloon {}: target {}\n", str(reply, "vm"), human_bytes(u64(reply, "target_bytes")));
            break;
        case CtlCommand::set_quota:
            out << fmt::format("set-quota {}: swap quota {}\n", str(reply, "vm"), limit_text(u64(reply, "swap_quota")));
            break;
        case CtlCommand::status: print_status(reply, StatsDetail::summary, out); break;
        case CtlCommand::stats: print_status(reply, StatsDetail::full, out); break;
        case CtlCommand::swapon:
            out << fmt::format("swapon {}: device {}, priority {}\n", str(reply, "path"), u64(reply, "device"),
                               options.priority);
            break;
        case CtlCommand::swapoff: {
            std::string line = fmt::format("swapoff {}: moved {} pages, brought back {}", str(reply, "path"),
                                           u64(reply, "pages_moved"), u64(reply, "pages_brought_back"));
            if (std::uint64_t skipped = u64(reply, "pages_skipped")) line += fmt::format(", {} freed meanwhile", skipped);
            if (std::uint64_t lost = u64(reply, "pages_lost")) line += fmt::format(", {} LOST (unreadable)", lost);
            if (reply.contains("handed_over")) line += ", handed over (snapshot slots left on it)";
            out << line << fmt::format(", {} ms\n", u64(reply, "elapsed_ms"));
            break;
        }
        case CtlCommand::set_limit:
            out << fmt::format("set-limit {}: resident limit {}\n", str(reply, "vm"),
                               limit_text(u64(reply, "resident_limit")));
            break;
        case CtlCommand::set_budget:
            out << fmt::format("set-budget: host budget {}\n", limit_text(u64(reply, "budget_bytes")));
            break;
        case CtlCommand::none: break;
    }
}

void draw_progress(std::ostream& out, std::uint64_t done, std::uint64_t total) {
    constexpr std::uint64_t kWidth = 30;
    std::uint64_t filled = total == 0 ? kWidth : std::min(kWidth, done * kWidth / total);
    unsigned percent = total == 0 ? 100u : static_cast<unsigned>(std::min<std::uint64_t>(100, done * 100 / total));
    out << fmt::format("\r[{}{}] {:3}% {}/{} pages", std::string(filled, '#'), std::string(kWidth - filled, '.'),
                       percent, done, total)
        << std::flush;
}

using Clock = std::chrono::steady_clock;

// The time left before --timeout passes: "forever" for a zero timeout.
class Deadline {
public:
    explicit Deadline(std::chrono::milliseconds timeout) : timeout_(timeout) { restart(); }
    void restart() { at_ = Clock::now() + timeout_; }
    void extend(std::chrono::milliseconds more) { at_ += more; }
    // Milliseconds for poll(): -1 forever, 0 once passed.
    int poll_ms() const {
        if (timeout_.count() == 0) return -1;
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(at_ - Clock::now()).count();
        return left <= 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
    }
    bool passed() const { return timeout_.count() != 0 && Clock::now() >= at_; }

private:
    std::chrono::milliseconds timeout_;
    Clock::time_point at_;
};

struct ConnectError {
    int err;  // errno; ETIMEDOUT: the backlog stayed full until the deadline
    std::string message;
};

// A connected non-blocking socket to path, or the reason it is not.
std::expected<io::UniqueFd, ConnectError> connect_to(const std::string& path, const Deadline& deadline) {
    sockaddr_un addr{};
    if (path.empty()) return std::unexpected(ConnectError{EINVAL, "no socket path given (--socket)"});
    if (path.size() >= sizeof addr.sun_path)
        return std::unexpected(ConnectError{ENAMETOOLONG, "path longer than a Unix socket allows"});
    io::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) return std::unexpected(ConnectError{errno, std::strerror(errno)});
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    for (;;) {
        // Kernel contract: a non-blocking AF_UNIX connect connects or fails at once
        // (ENOENT, ECONNREFUSED, EACCES); with the listen backlog full it fails with
        // EAGAIN instead of waiting (a daemon that stopped accepting): retry until
        // the deadline.
        if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) return fd;
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return std::unexpected(ConnectError{errno, std::strerror(errno)});
        if (deadline.passed())
            return std::unexpected(ConnectError{ETIMEDOUT, "the server is not accepting connections (listen backlog full)"});
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

// Wait until fd is ready for `events` or the deadline passes (false).
bool wait_for(int fd, short events, const Deadline& deadline) {
    for (;;) {
        pollfd p{fd, events, 0};
        int rc = ::poll(&p, 1, deadline.poll_ms());
        if (rc > 0) return true;
        if (rc == 0) return false;
        if (errno != EINTR) return true;  // let the send / recv report it
    }
}

enum class SendResult { sent, failed, timed_out };

SendResult send_all(int fd, std::string_view data, const Deadline& deadline) {
    while (!data.empty()) {
        // Kernel contract: MSG_NOSIGNAL turns a write to a closed peer into EPIPE
        // instead of SIGPIPE.
        ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            if (!wait_for(fd, POLLOUT, deadline)) return SendResult::timed_out;
            continue;
        }
        if (n <= 0) return SendResult::failed;
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return SendResult::sent;
}

// The exit status for an error reply's code.
int exit_status_of(const std::string& code) {
    if (code == "busy") return kCtlExitBusy;
    if (code == "permission") return kCtlExitPermission;
    if (code == "timeout") return kCtlExitTimeout;
    return kCtlExitErrorReply;
}

}  // namespace

std::string default_control_socket() {
    const char* env = std::getenv(kSocketEnvVar);
    return env != nullptr && *env != '\0' ? std::string(env) : std::string(kDefaultControlSocket);
}

void add_ctl_subcommand(CLI::App& app, CtlOptions& o) {
    CLI::App* ctl = app.add_subcommand("ctl", "Talk to a running swapvisor through its control socket");
    ctl->add_option("--socket", o.socket,
                    fmt::format("Control socket path (swapvisor serve / run --control); default ${} or {}",
                                kSocketEnvVar, kDefaultControlSocket));
    ctl->add_option_function<double>(
           "--timeout",
           [&o](double seconds) {
               if (!(seconds >= 0) || seconds > 86400) throw CLI::ValidationError("--timeout", "must be 0..86400 seconds");
               o.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000 + 0.5));
           },
           fmt::format("Seconds to wait while the server says nothing (connecting included; each progress line "
                       "starts it again; 0: forever); on expiry the connection is closed and ctl exits 4 "
                       "(default {} s; {} s for swapon, swapoff and the vm-* commands but vm-list; vm-stop adds "
                       "its --timeout-ms)",
                       kDefaultCtlTimeout.count() / 1000, kDefaultLongCtlTimeout.count() / 1000))
        ->type_name("S");
    ctl->add_flag("--json", o.json, "Print the raw JSON reply lines");
    ctl->require_subcommand(1);
    ctl->fallthrough();  // `ctl status --json` as well as `ctl --json status`

    ctl->add_subcommand("status", "VMs and swap devices at a glance")->callback([&o] { o.command = CtlCommand::status; });
    ctl->add_subcommand("stats", "Every counter of every VM and swap device")->callback([&o] {
        o.command = CtlCommand::stats;
    });
    CLI::App* swapon = ctl->add_subcommand("swapon", "Add a swap file or block device");
    swapon->add_option("PATH", o.path, "File, block device or NBD URI (nbd://HOST/EXPORT, nbd+unix:///EXPORT?socket=PATH)")->required();
    swapon->add_option("--priority", o.priority, "Higher is used first (-1..32767)")->check(CLI::Range(-1, 32767));
    swapon->add_option("--size", o.size,
                       "Create a missing file with this much swap space (e.g. 2G); for an existing device it must "
                       "match")
        ->check(size_validator());
    swapon->add_flag("--format", o.format,
                     "Make a device without a swapvisor header swap, if it holds no recognisable data (a file "
                     "system, partition table, kernel swap signature or any non-zero byte in its first MiB)");
    swapon->add_flag("--force", o.force, "With --format: erase the device even if it holds data (it is lost)")
        ->needs("--format");
    swapon->add_flag("--takeover", o.takeover,
                     "Claim a remote (NBD) device whose lease another swap pool still holds: only once that pool is "
                     "gone for good (swap/README.md#ownership)");
    swapon->callback([&o] { o.command = CtlCommand::swapon; });
    CLI::App* swapoff = ctl->add_subcommand("swapoff", "Remove a swap device live (moves its pages elsewhere)");
    swapoff->add_option("PATH", o.path, "A path given to swapon or --swap")->required();
    swapoff->add_flag("--force", o.force,
                      "Remove it even if some slots cannot be read (I/O error, checksum mismatch): their pages "
                      "become lost pages of their VMs (a VM that touches one stops with a memory error)");
    swapoff->add_flag("--handover", o.handover,
                      "Hand the device to another swapvisor: the pages of running VMs leave it, the slots of "
                      "snapshots stay there, those snapshots are unloaded here, and the device (its lease, for NBD) "
                      "is released; the other swapvisor restores them after it attaches the device "
                      "(docs/SNAPSHOT.md#handover)")
        ->excludes("--force");
    swapoff->callback([&o] { o.command = CtlCommand::swapoff; });
    CLI::App* set_limit = ctl->add_subcommand("set-limit", "Set a VM's resident limit (0: none)");
    set_limit->add_option("VM", o.vm, "VM name")->required();
    set_limit->add_option("SIZE", o.bytes, "Resident limit, e.g. 1G")->required()->check(size_validator());
    set_limit->callback([&o] { o.command = CtlCommand::set_limit; });
    CLI::App* set_budget = ctl->add_subcommand("set-budget", "Set the host memory budget over all VMs (0: none)");
    set_budget->add_option("SIZE", o.bytes, "Budget, e.g. 8G")->required()->check(size_validator());
    set_budget->callback([&o] { o.command = CtlCommand::set_budget; });

    CLI::App* create = ctl->add_subcommand("vm-create", "Create and start a VM (swapvisor serve)");
    create->add_option("NAME", o.vm, "VM name ([A-Za-z0-9._-], <= 64)")->required();
    CLI::Option* kernel = create->add_option("--kernel", o.kernel, "Guest image (PVH ELF); required unless --restore");
    create->add_option("--restore", o.restore,
                       "Create the VM from a snapshot directory (ctl snapshot): its spec, vCPUs, devices and memory "
                       "are the snapshot's; only --serial-log, --fill/--no-fill and --no-prefetch go with it")
        ->excludes(kernel);
    CLI::Option* no_fill = create->add_flag(
        "--no-fill", o.no_fill,
        "With --restore: no background filler (the default for a clone: another VM restored from the snapshot runs)");
    create->add_flag("--fill", o.fill, "With --restore: a background filler even for a clone")->excludes(no_fill);
    create->add_flag("--no-prefetch", o.no_prefetch, "With --restore: no recorded-order prefetch");
    create->add_option("--memory", o.memory, "Guest RAM, a multiple of 2 MiB")->check(size_validator())->capture_default_str();
    create->add_option("--vcpus", o.vcpus, "vCPUs (1..255)")->check(CLI::Range(1, 255));
    create->add_option("--resident-limit", o.resident_limit,
                       "Resident limit (at least 16M), or `auto`: sized from the VM's measured memory stall")
        ->check(size_validator() | CLI::IsMember({"auto"}));
    create->add_option("--auto-stall", o.auto_stall_pct,
                       "With --resident-limit auto: the memory stall aimed for, percent of wall time over 60 s (1)")
        ->check(CLI::Range(0.0, 50.0));
    create->add_option("--auto-floor", o.auto_floor, "With --resident-limit auto: never below SIZE (default min(64M, memory/8), at least 16M)")
        ->check(size_validator());
    create->add_option("--auto-ceiling", o.auto_ceiling, "With --resident-limit auto: never above SIZE (memory)")
        ->check(size_validator());
    create->add_option("--age-scan", o.age_scan_s,
                       "Seconds between working-set sweeps (0: off; default: the daemon's --age-scan, 5 with auto)")
        ->check(CLI::Range(0.0, 3600.0));
    create->add_option("--age-sample", o.age_sample,
                       "Each working-set sweep zaps a rotating 1/N of the resident pages (1: all; 1..64; default 1, 8 "
                       "with auto)")
        ->check(CLI::Range(1u, vmm::kMaxAgeSample));
    create->add_option("--swap-quota", o.swap_quota, "Most of the shared swap pool it may fill")->check(size_validator());
    create->add_flag("--balloon", o.balloon, "Add a virtio-balloon device");
    create->add_option("--serial-log", o.serial_log, "Append the guest's serial output to FILE");
    create->add_option("--cmdline", o.cmdline, "Guest command line");
    create->callback([&o] { o.command = CtlCommand::vm_create; });
    CLI::App* stop = ctl->add_subcommand("vm-stop", "Stop a VM: let the guest exit by itself, force it after --timeout-ms");
    stop->add_option("NAME", o.vm, "VM name")->required();
    stop->add_option("--timeout-ms", o.timeout_ms, "Milliseconds before the VM is forced off")->check(CLI::Range(0, 600000))->capture_default_str();
    stop->callback([&o] { o.command = CtlCommand::vm_stop; });
    for (auto [name, help, command] : {std::tuple{"vm-pause", "Hold a VM's vCPUs", CtlCommand::vm_pause},
                                       std::tuple{"vm-resume", "Let a paused VM run again", CtlCommand::vm_resume},
                                       std::tuple{"vm-remove", "Forget an ended VM (its name can be used again)",
                                                  CtlCommand::vm_remove}}) {
        CLI::App* sub = ctl->add_subcommand(name, help);
        sub->add_option("NAME", o.vm, "VM name")->required();
        sub->callback([&o, command] { o.command = command; });
    }
    ctl->add_subcommand("vm-list", "Every VM: state, and how ended ones ended")->callback([&o] {
        o.command = CtlCommand::vm_list;
    });
    CLI::App* snap = ctl->add_subcommand("snapshot", "Snapshot a VM into DIR (pauses it, then resumes it or --stop)");
    snap->add_option("VM", o.vm, "VM name")->required();
    snap->add_option("DIR", o.dir, "Snapshot directory (created; must not hold a snapshot)")->required();
    snap->add_flag("--stop", o.stop, "Stop the VM once its snapshot is written");
    snap->callback([&o] { o.command = CtlCommand::snapshot; });
    CLI::App* snap_delete = ctl->add_subcommand(
        "snapshot-delete", "Delete a snapshot: release its swap slots, remove its files (refused while a VM restored "
                           "from it runs)");
    snap_delete->add_option("DIR", o.dir, "Snapshot directory")->required();
    snap_delete->callback([&o] { o.command = CtlCommand::snapshot_delete; });
    CLI::App* snap_load = ctl->add_subcommand(
        "snapshot-load", "Reserve a snapshot's swap slots before its devices are attached (as serve --snapshots at "
                         "start), so that a restore from it works after their swapon");
    snap_load->add_option("DIR", o.dir, "Snapshot directory")->required();
    snap_load->callback([&o] { o.command = CtlCommand::snapshot_load; });
    CLI::App* balloon = ctl->add_subcommand("set-balloon", "Set a VM's balloon target (what the guest gives back)");
    balloon->add_option("VM", o.vm, "VM name")->required();
    balloon->add_option("SIZE", o.bytes, "Balloon size, e.g. 64M (0: deflate fully)")->required()->check(size_validator());
    balloon->callback([&o] { o.command = CtlCommand::set_balloon; });
    CLI::App* quota = ctl->add_subcommand("set-quota", "Set a VM's swap quota on the shared pool (0: none)");
    quota->add_option("VM", o.vm, "VM name")->required();
    quota->add_option("SIZE", o.bytes, "Swap quota, e.g. 1G")->required()->check(size_validator());
    quota->callback([&o] { o.command = CtlCommand::set_quota; });
}

// A path as the operator meant it: relative to the ctl's directory, not the server's.
static std::string absolute_path(const std::string& path) {
    if (io::is_nbd_uri(path) || swap::is_memory_tier_name(path)) return path;  // a remote export or a memory tier
    std::error_code ec;
    std::filesystem::path abs = std::filesystem::absolute(path, ec);
    return ec ? path : abs.lexically_normal().string();
}

json ctl_request(const CtlOptions& options, int id) {
    json request = {{"id", id}, {"cmd", std::string(command_name(options.command))}};
    auto bytes_of = [](const std::string& text) -> json {
        auto size = parse_size(text);
        return size ? json(*size) : json(text);  // the server reports a bad size itself
    };
    switch (options.command) {
        case CtlCommand::swapon:
            request["path"] = absolute_path(options.path);
            request["priority"] = options.priority;
            if (!options.size.empty()) request["size"] = bytes_of(options.size);
            if (options.format) request["format"] = options.force ? json("force") : json(true);
            if (options.takeover) request["takeover"] = true;
            break;
        case CtlCommand::swapoff:
            request["path"] = absolute_path(options.path);
            if (options.force) request["force"] = true;
            if (options.handover) request["handover"] = true;
            break;
        case CtlCommand::set_limit:
            request["vm"] = options.vm;
            request["bytes"] = bytes_of(options.bytes);
            break;
        case CtlCommand::set_budget: request["bytes"] = bytes_of(options.bytes); break;
        case CtlCommand::set_balloon:
        case CtlCommand::set_quota:
            request["vm"] = options.vm;
            request["bytes"] = bytes_of(options.bytes);
            break;
        case CtlCommand::vm_create:
            request["name"] = options.vm;
            if (!options.restore.empty()) {
                request["restore"] = absolute_path(options.restore);
                if (!options.serial_log.empty()) request["serial_log"] = absolute_path(options.serial_log);
                if (options.no_fill) request["fill"] = false;
                if (options.fill) request["fill"] = true;
                if (options.no_prefetch) request["prefetch"] = false;
                break;
            }
            request["kernel"] = absolute_path(options.kernel);
            request["memory"] = bytes_of(options.memory);
            request["vcpus"] = options.vcpus;
            if (options.resident_limit == "auto") request["resident_limit"] = "auto";
            else if (!options.resident_limit.empty()) request["resident_limit"] = bytes_of(options.resident_limit);
            if (!options.swap_quota.empty()) request["swap_quota"] = bytes_of(options.swap_quota);
            if (options.auto_stall_pct) request["auto_stall_pct"] = *options.auto_stall_pct;
            if (!options.auto_floor.empty()) request["auto_floor"] = bytes_of(options.auto_floor);
            if (!options.auto_ceiling.empty()) request["auto_ceiling"] = bytes_of(options.auto_ceiling);
            if (options.age_scan_s)
                request["age_scan_ms"] = static_cast<std::uint64_t>(*options.age_scan_s * 1000 + 0.5);
            if (options.age_sample) request["age_scan_sample"] = *options.age_sample;
            if (options.balloon) request["balloon"] = true;
            if (!options.serial_log.empty()) request["serial_log"] = absolute_path(options.serial_log);
            if (!options.cmdline.empty()) request["cmdline"] = options.cmdline;
            break;
        case CtlCommand::vm_stop:
            request["vm"] = options.vm;
            request["timeout_ms"] = options.timeout_ms;
            break;
        case CtlCommand::vm_pause:
        case CtlCommand::vm_resume:
        case CtlCommand::vm_remove: request["vm"] = options.vm; break;
        case CtlCommand::snapshot:
            request["vm"] = options.vm;
            request["dir"] = absolute_path(options.dir);
            if (options.stop) request["stop"] = true;
            break;
        case CtlCommand::snapshot_delete:
        case CtlCommand::snapshot_load: request["dir"] = absolute_path(options.dir); break;
        default: break;
    }
    return request;
}

std::chrono::milliseconds effective_timeout(const CtlOptions& options) {
    if (options.timeout) return *options.timeout;
    switch (options.command) {
        case CtlCommand::swapon:
        case CtlCommand::swapoff:
        case CtlCommand::vm_create:
        case CtlCommand::vm_stop:
        case CtlCommand::vm_pause:
        case CtlCommand::vm_resume:
        case CtlCommand::vm_remove:
        case CtlCommand::snapshot:
        case CtlCommand::snapshot_delete:
        case CtlCommand::snapshot_load: return kDefaultLongCtlTimeout;
        default: return kDefaultCtlTimeout;
    }
}

int run_ctl(const CtlOptions& options) { return run_ctl(options, std::cout, std::cerr); }

int run_ctl(const CtlOptions& options, std::ostream& out, std::ostream& err) {
    if (options.command == CtlCommand::none) {
        err << "swapvisor ctl: no command (status, stats, swapon, swapoff, set-limit, set-budget, vm-create, vm-stop, "
               "vm-pause, vm-resume, vm-remove, vm-list, set-balloon, set-quota, snapshot, snapshot-delete, snapshot-load)\n";
        return kCtlExitErrorReply;
    }
    const std::string socket = options.socket.empty() ? default_control_socket() : options.socket;
    const std::chrono::milliseconds timeout = effective_timeout(options);
    Deadline deadline(timeout);
    auto timed_out = [&] {
        err << fmt::format("swapvisor ctl: {}: no answer from control socket {} within {} ms (--timeout); gave up and "
                           "closed the connection\n",
                           command_name(options.command), socket, timeout.count());
        return kCtlExitTimeout;
    };
    auto fd = connect_to(socket, deadline);
    if (!fd) {
        err << fmt::format("swapvisor ctl: cannot connect to control socket {}: {}\n", socket, fd.error().message);
        if (fd.error().err == ETIMEDOUT) return kCtlExitTimeout;
        if (fd.error().err == EACCES || fd.error().err == EPERM) return kCtlExitPermission;
        return kCtlExitNoConnection;
    }
    // vm-stop waits for the guest as long as it was told to, silently.
    if (options.command == CtlCommand::vm_stop && timeout.count() != 0)
        deadline.extend(std::chrono::milliseconds(options.timeout_ms));
    std::string send_error;
    switch (send_all(fd->get(), to_line(ctl_request(options, kRequestId)), deadline)) {
        case SendResult::sent: break;
        case SendResult::timed_out: return timed_out();
        case SendResult::failed:
            // A server that refuses us (busy, permission) writes why and closes: read
            // that line rather than report the broken pipe.
            send_error = std::strerror(errno);
            break;
    }

    const bool bar = !options.json && options.command == CtlCommand::swapoff &&
                     (options.progress == ProgressBar::on ||
                      (options.progress == ProgressBar::auto_detect && &out == &std::cout && isatty(STDOUT_FILENO)));
    bool bar_drawn = false;
    std::string pending;
    char buf[4096];
    for (;;) {
        std::size_t nl;
        while ((nl = pending.find('\n')) != std::string::npos) {
            std::string line = pending.substr(0, nl);
            pending.erase(0, nl + 1);
            json message = json::parse(line, nullptr, /*allow_exceptions=*/false);
            if (message.is_discarded() || !message.is_object()) {
                err << fmt::format("swapvisor ctl: control socket {} sent a line that is not JSON\n", socket);
                return kCtlExitNoConnection;
            }
            deadline.restart();  // the server is alive: the wait starts again
            if (options.json) out << line << '\n' << std::flush;
            auto progress = message.find("progress");
            if (progress != message.end() && progress->is_object()) {
                if (bar) {
                    draw_progress(out, u64(*progress, "done"), u64(*progress, "total"));
                    bar_drawn = true;
                }
                continue;
            }
            auto ok = message.find("ok");
            if (ok == message.end() || !ok->is_boolean()) continue;  // not ours: ignore
            if (bar_drawn) out << "\r\x1b[K" << std::flush;
            if (ok->get<bool>()) {
                if (!options.json) print_result(options, message, out);
                return kCtlExitOk;
            }
            json error = message.value("error", json::object());
            std::string code = error.is_object() ? str(error, "code") : std::string();
            std::string text = error.is_object() ? str(error, "message") : std::string();
            err << fmt::format("swapvisor ctl: {}: {} ({})\n", command_name(options.command), text, code);
            return exit_status_of(code);
        }
        if (!wait_for(fd->get(), POLLIN, deadline)) {
            if (bar_drawn) out << '\n';
            return timed_out();
        }
        ssize_t n = ::recv(fd->get(), buf, sizeof buf, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) {
            if (bar_drawn) out << '\n';
            std::string why = n < 0 ? std::strerror(errno) : send_error;
            err << fmt::format("swapvisor ctl: control socket {} closed the connection before replying{}\n", socket,
                               why.empty() ? "" : fmt::format(" ({})", why));
            return kCtlExitNoConnection;
        }
        pending.append(buf, static_cast<std::size_t>(n));
    }
}

}  // namespace swapvisor::vmm::control
