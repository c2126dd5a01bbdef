// swapvisor's only main(). Like Solo5's hvt_main.c it reads as the boot script:
// parse the command line -> read the kernels -> open swap -> build guest memory ->
// create the VMs -> load the kernels -> control socket -> run -> report. Every step either succeeds or
// ends the process with a message that names what failed (vmm/README.md#exit-codes).
// Objects are declared in dependency order, so they are destroyed in reverse: the
// VM (memslots, vCPUs) before guest memory, guest memory before the swap pool.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <thread>
#include <string>
#include <variant>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/cfg/env.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "guestmem/host_memory.hpp"
#include "swap/swap_pool.hpp"
#include "vmm/cli/cli.hpp"
#include "vmm/control/control_server.hpp"
#include "vmm/control/ctl.hpp"
#include "vmm/control/stats_json.hpp"
#include "vmm/devices/device_manager.hpp"
#include "vmm/devices/virtio_balloon.hpp"
#include "vmm/kvm/kvm.hpp"
#include "vmm/loader/elf.hpp"
#include "vmm/loader/loader.hpp"
#include "vmm/shutdown.hpp"
#include "vmm/vm.hpp"

namespace swv = swapvisor;
using namespace swapvisor::vmm;

namespace {

int fail(const std::string& message) {
    spdlog::error("{}", message);
    return kExitSetupError;
}

// Serial output owns stdout; logs go to stderr. SPDLOG_LEVEL=debug shows more.
void setup_logging() {
    auto logger = spdlog::stderr_color_mt("swapvisor");
    logger->set_pattern("swapvisor: %^%l%$: %v");
    spdlog::set_default_logger(logger);
    spdlog::cfg::load_env_levels();
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

}  // namespace

// One guest: its memory (owned by HostMemory), its KVM VM and the devices on its
// buses, and how it ended.
struct Guest {
    cli::VmSpec spec;
    swv::guestmem::GuestMemory* memory = nullptr;
    std::unique_ptr<Vm> vm;
    std::unique_ptr<devices::DeviceManager> devices;  // refers to vm's buses: destroyed first
    VmEnd end{};
};

int main(int argc, char** argv) {
    setup_logging();

    // 1. Parse the command line (`ctl` is a client: it only talks to a socket).
    cli::CliOutcome outcome = cli::parse_command_line(std::vector<std::string>(argv + 1, argv + argc));
    if (const auto* done = std::get_if<cli::CliExit>(&outcome)) {
        std::fputs(done->out.c_str(), stdout);
        std::fputs(done->err.c_str(), stderr);
        return done->status;
    }
    if (const auto* ctl = std::get_if<control::CtlOptions>(&outcome)) return control::run_ctl(*ctl);
    if (const auto* mk = std::get_if<cli::MkswapOptions>(&outcome)) return cli::run_mkswap(*mk, std::cout, std::cerr);
    const cli::RunConfig& config = std::get<cli::RunConfig>(outcome);
    if (auto bad = cli::check_run_files(config)) return std::fputs(bad->err.c_str(), stderr), bad->status;
    // SIGTERM / SIGINT stop the VMs and let the epilogue run (before any thread starts).
    auto shutdown = Shutdown::install();
    if (!shutdown) return fail(fmt::format("signal handling: {}", shutdown.error().message()));
    // Device counters of every VM, filled by each VM's DeviceManager (step 5); read by
    // the control socket and --stats-json. Declared before the guests that refer to it.
    control::DeviceStats device_stats;
    std::vector<Guest> guests;
    for (const cli::VmSpec& spec : config.all_vms()) guests.push_back(Guest{spec});

    // 2. Read and validate every kernel before reserving anything.
    std::vector<loader::ElfImage> images;
    for (const Guest& g : guests) {
        auto image = loader::read_elf(g.spec.kernel);
        if (!image) return fail(image.error().message());
        images.push_back(std::move(*image));
    }

    // 3. Open swap: one pool for every VM of this process.
    swv::swap::SwapPool pool;
    for (const cli::SwapSpec& spec : config.swaps) {
        auto id = pool.swapon(spec.path, spec.priority.value_or(0), spec.size.value_or(0), spec.format);
        if (!id) return fail(fmt::format("swapon {}: {}", spec.path.string(), id.error().message()));
    }

    // 4. Build guest memory under the host budget.
    swv::guestmem::HostMemory host(pool, config.host_budget);
    for (Guest& g : guests) {
        auto mem = host.create_vm(swv::guestmem::MemoryConfig{
            .name = g.spec.name, .memory_bytes = g.spec.memory_bytes, .resident_limit = g.spec.resident_limit});
        if (!mem) {
            return fail(fmt::format("guest memory of {} ({} bytes): {}", g.spec.name, g.spec.memory_bytes,
                                    mem.error().message()));
        }
        g.memory = *mem;
    }
    if (pool.stats().empty()) {
        for (const Guest& g : guests)
            if (g.spec.resident_limit)
                spdlog::warn("{}: --resident-limit without --swap: only zero and discarded pages can leave memory",
                             g.spec.name);
    }

    // 5. Create the VMs: KVM, memslots, vCPUs, devices.
    auto kvm = kvm::Kvm::open();
    if (!kvm) return fail(fmt::format("KVM: {}", kvm.error().message()));
    for (Guest& g : guests) {
        if (g.spec.vcpus > kvm->max_vcpus()) {
            return fail(fmt::format("{}: {} vCPUs asked, this host's KVM allows at most {}", g.spec.name,
                                    g.spec.vcpus, kvm->max_vcpus()));
        }
        auto vm = Vm::create(*kvm, VmSpec{g.spec.vcpus, g.memory->regions()});
        if (!vm) return fail(fmt::format("creating VM {}: {}", g.spec.name, vm.error().message()));
        g.vm = std::move(*vm);
        // COM1 + debug exit, then each virtio device in its own window with its own
        // interrupt line (vmm/devices/device_manager.hpp), announced on the guest
        // command line.
        g.devices = std::make_unique<devices::DeviceManager>(
            g.vm->pio(), g.vm->mmio(), [vm = g.vm.get()](std::uint32_t gsi) { return vm->irq_line(gsi); },
            device_stats, g.spec.name);
        auto serial = guests.size() > 1
                          ? devices::SerialSink::borrowed(STDOUT_FILENO).with_prefix("[" + g.spec.name + "] ")
                          : devices::SerialSink::borrowed(STDOUT_FILENO);
        if (auto r = g.devices->add_legacy(std::move(serial)); !r)
            return fail(fmt::format("{}: {}", g.spec.name, r.error().message()));
        if (g.spec.balloon) {
            auto balloon = std::make_shared<devices::VirtioBalloon>(*g.memory);
            if (auto r = g.devices->add_virtio("balloon", *g.memory, balloon); !r)
                return fail(fmt::format("{}: {}", g.spec.name, r.error().message()));
        }
        g.spec.cmdline = g.devices->append_cmdline(g.spec.cmdline);
    }

    // 6. Load each kernel and its PVH boot data; put each BSP at its entry.
    for (std::size_t i = 0; i < guests.size(); ++i) {
        Guest& g = guests[i];
        auto boot = loader::load_kernel(*g.memory, images[i], g.spec.cmdline);
        if (!boot) return fail(boot.error().message());
        if (auto r = g.vm->set_boot_entry(boot->entry, boot->start_info_gpa); !r)
            return fail(fmt::format("{}: setting the PVH entry state: {}", g.spec.name, r.error().message()));
    }

    // 7. The control socket: live swapon/swapoff/set-limit while the VMs run.
    std::optional<control::ControlServer> server;
    if (config.control_socket) {
        server.emplace(host, device_stats, control::ControlServerConfig{.socket_path = *config.control_socket});
        if (auto r = server->start(); !r)
            return fail(fmt::format("--control {}: {}", config.control_socket->string(), r.error().message()));
    }

    // 8. Run every VM until its guest exits.
    for (Guest& g : guests) {
        if (auto r = g.memory->start(); !r)
            return fail(fmt::format("{}: starting guest memory: {}", g.spec.name, r.error().message()));
    }
    auto stopper = (*shutdown)->on_request([&guests](int sig) {
        for (Guest& g : guests) g.vm->request_stop(VmEnd{EndReason::stopped, kExitStopped, 0, fmt::format("stopped by SIG{}", sigabbrev_np(sig))});
    });
    std::vector<std::thread> runners;
    for (Guest& g : guests) runners.emplace_back([&g] { g.end = g.vm->run(); });
    for (std::thread& t : runners) t.join();
    for (Guest& g : guests) g.devices->flush_serial();
    for (Guest& g : guests) g.memory->stop();
    if (server) server->stop();

    // 9. Report: the first VM that did not end with 0 decides the exit status.
    std::vector<std::pair<std::string, VmEnd>> ends;
    for (const Guest& g : guests) ends.emplace_back(g.spec.name, g.end);
    if (config.stats_json) write_stats_json(*config.stats_json, host, device_stats, ends);
    int status = 0;
    for (const Guest& g : guests) {
        int s = exit_status(g.end);
        if (guests.size() > 1) spdlog::info("{}: exit status {}", g.spec.name, s);
        if (s != 0 && status == 0) status = s;
    }
    return (*shutdown)->signal() != 0 ? (*shutdown)->exit_status() : status;
}
