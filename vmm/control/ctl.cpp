// `swapvisor ctl`: see ctl.hpp. One connection, one request (id 1), blocking I/O:
// the client has nothing else to do while it waits. CLI11 may throw while parsing
// (main catches it); run_ctl itself never throws out (it reports and returns 1/2).
#include "vmm/control/ctl.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string_view>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "io/nbd_device.hpp"
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
    }
    if (swaps.empty()) out << "(no swap devices)\n";
    if (reply.contains("host") && reply["host"].is_object()) {
        const json& host = reply["host"];
        out << fmt::format("\nhost: resident {}, budget {}\n", human_bytes(u64(host, "resident_bytes")),
                           limit_text(u64(host, "budget_bytes")));
    }
    if (detail != StatsDetail::full) return;
    for (const json& vm : vms) {
        out << fmt::format("\n{}:\n", str(vm, "name"));
        for (const auto& [key, value] : vm.items()) {
            if (key == "name") continue;
            out << fmt::format("  {:<22} {}\n", key, value.dump());
        }
    }
}

void print_result(const CtlOptions& options, const json& reply, std::ostream& out) {
    switch (options.command) {
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

// A connected socket to path, or the reason it is not.
std::expected<io::UniqueFd, std::string> connect_to(const std::string& path) {
    sockaddr_un addr{};
    if (path.empty()) return std::unexpected(std::string("no socket path given (--socket)"));
    if (path.size() >= sizeof addr.sun_path) return std::unexpected(std::string("path longer than a Unix socket allows"));
    io::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return std::unexpected(std::string(std::strerror(errno)));
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    // Kernel contract: a blocking AF_UNIX connect either connects or fails at once
    // (ENOENT, ECONNREFUSED, EACCES); it waits only while the listen backlog is full.
    int rc;
    do {
        rc = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) return std::unexpected(std::string(std::strerror(errno)));
    return fd;
}

bool send_all(int fd, std::string_view data) {
    while (!data.empty()) {
        // Kernel contract: MSG_NOSIGNAL turns a write to a closed peer into EPIPE
        // instead of SIGPIPE.
        ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

}  // namespace

void add_ctl_subcommand(CLI::App& app, CtlOptions& o) {
    CLI::App* ctl = app.add_subcommand("ctl", "Talk to a running swapvisor through its control socket");
    // Checked after parsing (cli.cpp): CLI11 2.x reports a required option of a
    // subcommand that was never given, which hides the real usage error.
    ctl->add_option("--socket", o.socket, "Control socket path (swapvisor run --control); required");
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
                     "Erase a device that has no swapvisor header and make it swap (its contents are lost)");
    swapon->callback([&o] { o.command = CtlCommand::swapon; });
    CLI::App* swapoff = ctl->add_subcommand("swapoff", "Remove a swap device live (moves its pages elsewhere)");
    swapoff->add_option("PATH", o.path, "A path given to swapon or --swap")->required();
    swapoff->add_flag("--force", o.force,
                      "Remove it even if some slots cannot be read (I/O error, checksum mismatch): their pages "
                      "become lost pages of their VMs (a VM that touches one stops with a memory error)");
    swapoff->callback([&o] { o.command = CtlCommand::swapoff; });
    CLI::App* set_limit = ctl->add_subcommand("set-limit", "Set a VM's resident limit (0: none)");
    set_limit->add_option("VM", o.vm, "VM name")->required();
    set_limit->add_option("SIZE", o.bytes, "Resident limit, e.g. 1G")->required()->check(size_validator());
    set_limit->callback([&o] { o.command = CtlCommand::set_limit; });
    CLI::App* set_budget = ctl->add_subcommand("set-budget", "Set the host memory budget over all VMs (0: none)");
    set_budget->add_option("SIZE", o.bytes, "Budget, e.g. 8G")->required()->check(size_validator());
    set_budget->callback([&o] { o.command = CtlCommand::set_budget; });
}

// A path as the operator meant it: relative to the ctl's directory, not the server's.
static std::string absolute_path(const std::string& path) {
    if (io::is_nbd_uri(path)) return path;  // a remote export, not a path
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
            if (options.format) request["format"] = true;
            break;
        case CtlCommand::swapoff:
            request["path"] = absolute_path(options.path);
            if (options.force) request["force"] = true;
            break;
        case CtlCommand::set_limit:
            request["vm"] = options.vm;
            request["bytes"] = bytes_of(options.bytes);
            break;
        case CtlCommand::set_budget: request["bytes"] = bytes_of(options.bytes); break;
        default: break;
    }
    return request;
}

int run_ctl(const CtlOptions& options) { return run_ctl(options, std::cout, std::cerr); }

int run_ctl(const CtlOptions& options, std::ostream& out, std::ostream& err) {
    if (options.command == CtlCommand::none) {
        err << "swapvisor ctl: no command (status, stats, swapon, swapoff, set-limit, set-budget)\n";
        return kCtlExitErrorReply;
    }
    auto fd = connect_to(options.socket);
    if (!fd) {
        err << fmt::format("swapvisor ctl: cannot connect to control socket {}: {}\n", options.socket, fd.error());
        return kCtlExitNoConnection;
    }
    if (!send_all(fd->get(), to_line(ctl_request(options, kRequestId)))) {
        err << fmt::format("swapvisor ctl: sending to control socket {} failed: {}\n", options.socket,
                           std::strerror(errno));
        return kCtlExitNoConnection;
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
                err << fmt::format("swapvisor ctl: control socket {} sent a line that is not JSON\n", options.socket);
                return kCtlExitNoConnection;
            }
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
            return kCtlExitErrorReply;
        }
        ssize_t n = ::recv(fd->get(), buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (bar_drawn) out << '\n';
            err << fmt::format("swapvisor ctl: control socket {} closed the connection before replying{}\n",
                               options.socket, n < 0 ? fmt::format(" ({})", std::strerror(errno)) : "");
            return kCtlExitNoConnection;
        }
        pending.append(buf, static_cast<std::size_t>(n));
    }
}

}  // namespace swapvisor::vmm::control
