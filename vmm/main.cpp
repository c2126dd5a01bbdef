// swapvisor's only main(). Like Solo5's hvt_main.c it reads as the boot script:
// parse the command line -> read the kernels -> open swap -> host memory -> control
// socket -> build and start each VM (guest memory, KVM VM, devices, kernel: VmHost,
// host/vm_host.hpp, built by host/built_vm.hpp) -> run -> report. `serve` is the same host without VMs at start: they
// come and go through the control socket until a signal (SIGHUP reloads its --config,
// vmm/daemon/). Every step either succeeds or ends the process with a message that
// names what failed (vmm/README.md#exit-codes). Start-up checks everything it can
// (KVM, kernels, socket and metrics addresses) before it creates any file, and
// removes the swap files it created if start-up fails after all
// (vmm/README.md#start-up).
// Objects are declared in dependency order, so they are destroyed in reverse: the
// VM (memslots, vCPUs) before guest memory, guest memory before the swap pool.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <future>
#include <optional>
#include <thread>
#include <string>
#include <variant>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "guestmem/auto_limit_driver.hpp"
#include "guestmem/host_memory.hpp"
#include "swap/swap_pool.hpp"
#include "vmm/cli/cli.hpp"
#include "vmm/control/control_server.hpp"
#include "vmm/control/ctl.hpp"
#include "vmm/control/metrics_server.hpp"
#include "vmm/control/stats_json.hpp"
#include "vmm/daemon/lock_file.hpp"
#include "vmm/daemon/notify.hpp"
#include "vmm/daemon/reload.hpp"
#include "vmm/devices/device_manager.hpp"
#include "vmm/devices/virtio_balloon.hpp"
#include "vmm/kvm/kvm.hpp"
#include "vmm/loader/elf.hpp"
#include "vmm/loader/loader.hpp"
#include "vmm/logging.hpp"
#include "vmm/shutdown.hpp"
#include "vmm/startup.hpp"
#include "vmm/vm.hpp"
#include "vmm/sandbox/seccomp.hpp"
#include "vmm/host/vm_host.hpp"

namespace swv = swapvisor;
using namespace swapvisor::vmm;

namespace {

// Least privilege (vmm/sandbox): each vCPU, fault-service and reclaimer thread
// confines itself to its system calls; a violation is reported and ends the process.
swv::Result<void> confine(sandbox::Seccomp seccomp, VmHost& vms) {
    if (seccomp == sandbox::Seccomp::off) {
        spdlog::warn("--no-seccomp: VM threads are not confined");
        return {};
    }
    SWV_TRY(sandbox::install_violation_reporter());
    vms.set_seccomp(seccomp);
    return {};
}

int fail(const std::string& message) {
    spdlog::error("{}", message);
    return kExitSetupError;
}

int usage_failure(const std::string& message) {
    spdlog::error("{}", message);
    return cli::kExitUsage;
}

// The same document the control socket's `status`/`stats` replies carry (device
// counters included), plus how each VM ended: one shape for scripts, live or after
// the fact.
void write_stats_json(const std::filesystem::path& path, swv::guestmem::HostMemory& host,
                      const control::DeviceStats& devices, const std::vector<std::pair<std::string, VmEnd>>& ends) {
    nlohmann::json j = control::stats_json(host, devices, control::StatsDetail::full);
    for (auto& vm : j["vms"]) {
        for (const auto& [name, end] : ends)
            if (vm["name"] == name) vm["exit_code"] = end.exit_code;
    }
    std::ofstream out(path);
    out << j.dump(2) << "\n";
    if (!out) spdlog::error("--stats-json: cannot write {}", path.string());
}

// Every --swap into the pool; the message of the first that fails ("" if none).
std::string swapon_all(swv::swap::SwapPool& pool, const std::vector<cli::SwapSpec>& swaps) {
    for (const cli::SwapSpec& spec : swaps) {
        auto id = pool.swapon(spec.path, spec.priority.value_or(0), spec.size.value_or(0), spec.format, spec.takeover);
        if (!id) return fmt::format("swapon {}: {}", spec.path.string(), id.error().message());
        spdlog::info("swapon {}: device {}, priority {}", pool.resolve_name(spec.path.string()), id->value(),
                     spec.priority.value_or(0));
    }
    return {};
}

int exit_status(const VmEnd& end) {
    if (end.reason != EndReason::debug_exit) {
        spdlog::error("{}", end.message);
        return static_cast<int>(end.exit_code);
    }
    if (end.exit_code > 255) {
        spdlog::warn("guest exit code {} (0x{:x}) does not fit a process exit status; exiting with {}", end.exit_code,
                     end.exit_code, end.exit_code & 0xff);
    }
    return static_cast<int>(end.exit_code & 0xff);
}

// One daemon per control socket (vmm/daemon/lock_file.hpp): taken before any swap
// device is opened, so a second one changes nothing.
swv::Result<daemon::LockFile> lock_control(const std::filesystem::path& socket) {
    auto lock = daemon::LockFile::acquire(daemon::LockFile::path_for(socket));
    if (!lock) return std::unexpected(std::move(lock.error()).with_context("--control " + socket.string()));
    return lock;
}

// SIGHUP under `serve --config`: parse the same command line again (the file is read
// again; flags still win) and apply what can change live (vmm/daemon/reload.hpp).
// Runs on the signal watcher thread, the only writer of `running`.
void reload(const std::vector<std::string>& args, cli::ServeConfig& running, swv::guestmem::HostMemory& host) {
    if (!running.config_file) {
        spdlog::info("SIGHUP: serve was started without --config: nothing to reload");
        return;
    }
    daemon::notify_reloading();
    const std::string file = running.config_file->string();
    cli::CliOutcome outcome = cli::parse_command_line(args);
    const auto* reread = std::get_if<cli::ServeConfig>(&outcome);
    if (reread == nullptr) {
        std::string why = std::get<cli::CliExit>(outcome).err;
        if (auto nl = why.find('\n'); nl != std::string::npos) why.resize(nl);
        spdlog::error("SIGHUP: {} not reloaded, the running configuration stays: {}", file, why);
        daemon::notify_ready("reload failed; running configuration unchanged");
        return;
    }
    daemon::ReloadPlan plan = daemon::plan_reload(running, *reread);
    if (plan.log_level) {
        spdlog::info("SIGHUP: log-level {} -> {}", running.log_level, *plan.log_level);
        spdlog::set_level(spdlog::level::from_str(*plan.log_level));
        running.log_level = *plan.log_level;
    }
    if (plan.host_budget) {
        spdlog::info("SIGHUP: host-budget {} -> {} bytes", running.host_budget, *plan.host_budget);
        host.set_budget(*plan.host_budget);
        running.host_budget = *plan.host_budget;
    }
    for (const std::string& line : plan.not_applied) spdlog::warn("SIGHUP: {}", line);
    spdlog::info("SIGHUP: reloaded {}: {}", file,
                 plan.empty() ? std::string("no change")
                              : fmt::format("{} change(s) applied, {} not applied",
                                            int(plan.log_level.has_value()) + int(plan.host_budget.has_value()),
                                            plan.not_applied.size()));
    daemon::notify_ready("reloaded");
}

// SIGUSR1: one status line in the log (what `ctl status` says, in brief), for an
// operator without the socket at hand.
void log_status(swv::swap::SwapPool& pool, swv::guestmem::HostMemory& host) {
    std::uint64_t used = 0, total = 0;
    const auto devices = pool.stats();
    for (const auto& d : devices) used += d.used_slots, total += d.total_slots;
    spdlog::info("status: resident {} bytes, host budget {}, {} swap device(s), {} of {} slots used", host.resident_bytes(),
                 host.budget() == 0 ? std::string("none") : std::to_string(host.budget()), devices.size(), used, total);
}

}  // namespace

int run_host(const cli::RunConfig& config);
int serve_host(const cli::ServeConfig& config, const std::vector<std::string>& args);

// The auto-limit driver asks a VM's balloon first (guestmem/README.md#auto-limits).
swv::guestmem::AutoLimitHooks balloon_hooks(VmHost* vms) {
    if (vms == nullptr) return {};
    return {.set_balloon = [vms](const std::string& vm, std::uint64_t bytes) { return vms->set_balloon(vm, bytes).has_value(); }};
}

int main(int argc, char** argv) {
    // 0. A write to a closed pipe (stderr to a collector that went away, a client
    // gone from a socket) fails with EPIPE where it is made; it never ends the process.
    ignore_broken_pipes();
    setup_logging();  // vmm/logging.hpp: timestamps, or journald priorities under systemd

    // 1. Parse the command line (`ctl` is a client: it only talks to a socket).
    const std::vector<std::string> args(argv + 1, argv + argc);
    cli::CliOutcome outcome = cli::parse_command_line(args);
    if (const auto* done = std::get_if<cli::CliExit>(&outcome)) {
        std::fputs(done->out.c_str(), stdout);
        std::fputs(done->err.c_str(), stderr);
        return done->status;
    }
    if (const auto* ctl = std::get_if<control::CtlOptions>(&outcome)) return control::run_ctl(*ctl);
    if (const auto* mk = std::get_if<cli::MkswapOptions>(&outcome)) return cli::run_mkswap(*mk, std::cout, std::cerr);
    raise_fd_limit();
    if (const auto* serve = std::get_if<cli::ServeConfig>(&outcome)) return serve_host(*serve, args);
    return run_host(std::get<cli::RunConfig>(outcome));
}

// `run`: the VMs of the command line, then exit with the first non-zero guest code.
int run_host(const cli::RunConfig& config) {
    spdlog::set_level(spdlog::level::from_str(config.log_level));
    // 2. SIGTERM / SIGINT stop the VMs and let the epilogue run (before any thread
    // starts); the process then exits with 128 + the signal. First of all: from here
    // on a signal is held until the watcher reads it, whatever start-up is doing
    // (vmm/README.md#shutdown).
    auto shutdown = Shutdown::install(SignalExit::signal_status);
    if (!shutdown) return fail(fmt::format("signal handling: {}", shutdown.error().message()));
    if (auto bad = cli::check_run_files(config)) return std::fputs(bad->err.c_str(), stderr), bad->status;
    std::optional<daemon::LockFile> lock;
    if (config.control_socket) {
        auto taken = lock_control(*config.control_socket);
        if (!taken) return fail(taken.error().message());
        lock.emplace(std::move(*taken));
    }
    const std::vector<VmSpec> specs = config.all_vms();
    // 3. Check everything before creating anything: every kernel, KVM, the control
    // socket's path.
    for (const VmSpec& spec : specs)
        if (auto image = loader::read_elf(spec.kernel); !image) return fail(image.error().message());
    auto kvm = kvm::Kvm::open();
    if (!kvm) return fail(kvm_failure(kvm.error()));
    if (config.control_socket) {
        if (auto r = check_control_socket(*config.control_socket); !r)
            return fail(fmt::format("--control: {}", r.error().message()));
    }

    // 4. Open swap: one pool for every VM of this process. Files it creates are
    // removed again if start-up fails (declared first: removed after the pool closed
    // them).
    CreatedSwapFiles created;
    created.note_missing(config.swaps);
    swv::swap::SwapPool pool;
    SnapshotStore snapshots(pool);  // --restore, ctl snapshot (as for serve)
    pool.set_held_slot_observer(snapshots.observer());
    // --restore: its slots are reserved before the swapons (as serve --snapshots does),
    // so the swap files hand none of them out; opened (taken over) once attached.
    if (config.restore) snapshots.expect(*config.restore);
    if (auto r = swapon_all(pool, config.swaps); !r.empty()) return fail(r);
    snapshots.open_all();
    swv::guestmem::HostMemory host(pool, config.host_budget, 0, config.fault_workers);
    if (pool.stats().empty()) {
        for (const VmSpec& spec : specs)
            if (spec.resident_limit)
                spdlog::warn("{}: --resident-limit without --swap: only zero and discarded pages can leave memory",
                             spec.name);
    }
    // Device counters of every VM, filled by each VM's DeviceManager; read by the
    // control socket and --stats-json. Declared before the VMs that refer to it.
    control::DeviceStats device_stats;
    VmHost vms(*kvm, host, device_stats, Release::at_exit);
    vms.set_balloon_stats_interval(config.balloon_stats_interval);
    if (config.age_scan) vms.set_age_scan(*config.age_scan);
    vms.set_snapshots(&snapshots);
    swv::guestmem::AutoLimitDriver auto_limits(host, balloon_hooks(&vms));  // resident-limit=auto
    auto_limits.start();
    if (auto r = confine(config.seccomp, vms); !r) return fail(r.error().message());

    // 5. The control socket: live swapon/swapoff/set-limit while the VMs run.
    std::optional<control::ControlServer> server;
    if (config.control_socket) {
        server.emplace(host, device_stats,
                       control::ControlServerConfig{.socket_path = *config.control_socket, .vms = &vms});
        if (auto r = server->start(); !r)
            return fail(fmt::format("--control {}: {}", config.control_socket->string(), r.error().message()));
    }

    // 6. Build and start each VM (guest memory, KVM VM, devices, kernel), then run.
    auto stopper = (*shutdown)->on_request([&vms](int sig) {
        vms.stop_all(VmEnd{EndReason::stopped, kExitStopped, 0, fmt::format("stopped by SIG{}", sigabbrev_np(sig))});
    });
    const std::size_t vm_count = specs.size() + (config.restore ? 1 : 0);
    const SerialPrefix prefix = vm_count > 1 ? SerialPrefix::name : SerialPrefix::none;
    auto give_up = [&](const swv::Error& error) {
        vms.stop_all(VmEnd{EndReason::stopped, kExitStopped, 0, "another VM failed to start"});
        vms.wait_all();
        // Asked to stop while VMs were still being started: that is the signal's
        // doing, not a failure; it ends as a signal does at any other time.
        if (const int sig = (*shutdown)->signal(); sig != 0) {
            spdlog::warn("stopped by SIG{} before every VM had started ({})", sigabbrev_np(sig), error.message());
            if (config.stats_json) write_stats_json(*config.stats_json, host, device_stats, vms.ends());
            return (*shutdown)->exit_status();
        }
        return fail(error.message());
    };
    if (config.restore) {
        // --restore DIR: the snapshot's VM, named by --name (docs/SNAPSHOT.md#orchestration).
        control::RestoreRequest request{.name = config.name, .dir = *config.restore, .fill = config.restore_fill,
                                        .prefetch = config.restore_prefetch};
        if (auto r = vms.restore(request, prefix); !r) return give_up(r.error());
    }
    for (const VmSpec& spec : specs) {
        if (auto r = vms.start(spec, prefix); !r) return give_up(r.error());
    }
    created.keep();  // started: the swap files are the operator's now
    vms.wait_all();
    if (server) server->stop();

    // 7. Report: the first VM that did not end with 0 decides the exit status.
    std::vector<std::pair<std::string, VmEnd>> ends;
    std::vector<std::string> names;
    if (config.restore) names.push_back(config.name);
    for (const VmSpec& spec : specs) names.push_back(spec.name);
    for (const std::string& name : names)
        for (const auto& end : vms.ends())
            if (end.first == name) ends.push_back(end);
    if (config.stats_json) write_stats_json(*config.stats_json, host, device_stats, ends);
    int status = 0;
    for (const auto& [name, end] : ends) {
        int s = exit_status(end);
        if (vm_count > 1) spdlog::info("{}: exit status {}", name, s);
        if (s != 0 && status == 0) status = s;
    }
    return (*shutdown)->signal() != 0 ? (*shutdown)->exit_status() : status;
}

// `serve`: the host daemon. Lock, swap pool and budget, then the control socket (and
// the metrics endpoint), then READY=1 to systemd; VMs come and go through the socket
// until SIGTERM / SIGINT / SIGQUIT. SIGHUP re-reads --config, SIGUSR1 logs a status line.
int serve_host(const cli::ServeConfig& config, const std::vector<std::string>& args) {
    spdlog::set_level(spdlog::level::from_str(config.log_level));
    // A daemon asked to stop by SIGTERM / SIGINT / SIGQUIT has done its job: exit 0.
    auto shutdown = Shutdown::install(SignalExit::success);
    if (!shutdown) return fail(fmt::format("signal handling: {}", shutdown.error().message()));
    // Check the addresses before creating anything: a bad --metrics is a usage error
    // (2) and no socket or swap file is made.
    if (config.metrics) {
        if (auto r = control::MetricsServer::check_address(*config.metrics); !r)
            return r.error().is(std::errc::invalid_argument)
                       ? usage_failure(fmt::format("--metrics {}: {}", *config.metrics, r.error().message()))
                       : fail(fmt::format("--metrics {}: {}", *config.metrics, r.error().message()));
    }
    // The lock first: a second daemon on this socket is refused naming the first one's
    // pid, even when the socket file was deleted (daemon/README.md#lock).
    if (auto r = make_default_socket_dir(config.control_socket); !r) return fail(r.error().message());
    auto lock = lock_control(config.control_socket);
    if (!lock) return fail(lock.error().message());
    if (auto r = check_control_socket(config.control_socket); !r)
        return fail(fmt::format("--control: {}", r.error().message()));
    // KVM is needed only for VMs: without it the daemon still serves the pool and
    // limits, and vm-create answers kvm_error with the same hint.
    std::optional<kvm::Kvm> kvm;
    std::string no_kvm;
    if (auto opened = kvm::Kvm::open()) {
        kvm.emplace(std::move(*opened));
    } else {
        no_kvm = kvm_failure(opened.error());
        spdlog::warn("{}; serving without VMs (vm-create answers kvm_error)", no_kvm);
    }

    CreatedSwapFiles created;  // removed again if start-up fails
    created.note_missing(config.swaps);
    swv::swap::SwapPool pool;
    // Snapshots (docs/SNAPSHOT.md#orchestration): after the pool (their references
    // are released into it), before the VMs (restored ones read them). --snapshots:
    // each one's slots are reserved before any device is attached, so no VM is ever
    // given one; they are opened (the references taken over) once attached.
    SnapshotStore snapshots(pool);
    pool.set_held_slot_observer(snapshots.observer());  // a live swapoff rewrites their references
    if (config.snapshots) {
        const std::size_t n = snapshots.expect_all(*config.snapshots);
        spdlog::info("snapshots {}: {} found", config.snapshots->string(), n);
    }
    if (auto r = swapon_all(pool, config.swaps); !r.empty()) return fail(r);
    snapshots.open_all();
    swv::guestmem::HostMemory host(pool, config.host_budget, 0, config.fault_workers);
    control::DeviceStats device_stats;
    control::SwapoffBoard swapoffs;
    std::optional<VmHost> vms;
    if (kvm) {
        vms.emplace(*kvm, host, device_stats, Release::when_ended);
        vms->set_balloon_stats_interval(config.balloon_stats_interval);
        vms->set_age_scan(config.age_scan);
        vms->set_auto_unlimited(config.auto_limits);
        vms->set_snapshots(&snapshots);
        if (auto r = confine(config.seccomp, *vms); !r) return fail(r.error().message());
    }
    VmHost* vm_host = vms ? &*vms : nullptr;
    swv::guestmem::AutoLimitDriver auto_limits(host, balloon_hooks(vm_host));  // resident-limit=auto, --auto-limits
    auto_limits.set_defaults(swv::guestmem::AutoLimitConfig{}, config.auto_limits);
    auto_limits.start();

    std::optional<control::MetricsServer> metrics;
    if (config.metrics) {
        metrics.emplace(host, device_stats, vm_host, &swapoffs);
        if (auto r = metrics->start(*config.metrics); !r)
            return fail(fmt::format("--metrics {}: {}", *config.metrics, r.error().message()));
    }
    control::ControlServer server(host, device_stats,
                                  control::ControlServerConfig{.socket_path = config.control_socket,
                                                               .vms = vm_host,
                                                               .no_vms_reason = no_kvm,
                                                               .swapoffs = &swapoffs});
    if (auto r = server.start(); !r)
        return fail(fmt::format("--control {}: {}", config.control_socket.string(), r.error().message()));
    created.keep();  // serving: the swap files are the operator's now
    spdlog::info("serving: control socket {}, {} swap device(s), host budget {}", config.control_socket.string(),
                 pool.stats().size(), config.host_budget);
    daemon::notify_ready(fmt::format("serving on {}", config.control_socket.string()));

    // Until a signal: then every VM is stopped and released, and the sockets closed.
    cli::ServeConfig running = config;  // the watcher thread's: reload() updates it
    auto reloader = (*shutdown)->on_signal(SIGHUP, [&] { reload(args, running, host); });
    auto status = (*shutdown)->on_signal(SIGUSR1, [&] { log_status(pool, host); });
    std::promise<int> signalled;
    auto stopper = (*shutdown)->on_request([&signalled](int sig) { signalled.set_value(sig); });
    int sig = signalled.get_future().get();
    daemon::notify_stopping(fmt::format("stopping on SIG{}", sigabbrev_np(sig)));
    spdlog::info("shutting down on SIG{}", sigabbrev_np(sig));
    server.stop();
    if (metrics) metrics->stop();
    if (vms) {
        vms->stop_all(VmEnd{EndReason::stopped, kExitStopped, 0, fmt::format("stopped by SIG{}", sigabbrev_np(sig))});
        vms->wait_all();
    }
    return (*shutdown)->exit_status();  // 0, as the watcher logged
}
