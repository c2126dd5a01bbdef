// swapvisor's only main(). Like Solo5's hvt_main.c it reads as the boot script:
// parse the command line -> read the kernel -> open swap -> build guest memory ->
// create the VM -> load the kernel -> run -> report. Every step either succeeds or
// ends the process with a message that names what failed (vmm/README.md#exit-codes).
// Objects are declared in dependency order, so they are destroyed in reverse: the
// VM (memslots, vCPUs) before guest memory, guest memory before the swap pool.
#include <unistd.h>

#include <cstdio>
#include <fstream>
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
#include "vmm/kvm/kvm.hpp"
#include "vmm/loader/elf.hpp"
#include "vmm/loader/loader.hpp"
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

void write_stats_json(const std::filesystem::path& path, const swv::guestmem::GuestMemory& mem,
                      const swv::swap::SwapPool& pool, const VmEnd& end) {
    swv::guestmem::MemStats s = mem.stats();
    nlohmann::json j = {
        {"name", s.name},
        {"exit_code", end.exit_code},
        {"memory_bytes", s.memory_bytes},
        {"resident_limit", s.resident_limit},
        {"resident_bytes", s.resident_bytes},
        {"resident_bytes_peak", s.resident_bytes_peak},
        {"swapped_bytes", s.swapped_bytes},
        {"swap_out_pages", s.swap_out_pages},
        {"swap_in_pages", s.swap_in_pages},
        {"major_faults", s.major_faults},
        {"minor_faults", s.minor_faults},
        {"zero_pages", s.zero_pages},
        {"clean_drops", s.clean_drops},
        {"discarded_pages", s.discarded_pages},
        {"lost_pages", s.lost_pages},
    };
    nlohmann::json devices = nlohmann::json::array();
    for (const swv::swap::DeviceStats& d : pool.stats()) {
        devices.push_back({{"path", d.path}, {"priority", d.priority}, {"total_slots", d.total_slots},
                           {"used_slots", d.used_slots}});
    }
    j["swap_devices"] = devices;
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

int main(int argc, char** argv) {
    setup_logging();

    // 1. Parse the command line.
    cli::CliOutcome outcome = cli::parse_command_line(std::vector<std::string>(argv + 1, argv + argc));
    if (const auto* done = std::get_if<cli::CliExit>(&outcome)) {
        std::fputs(done->out.c_str(), stdout);
        std::fputs(done->err.c_str(), stderr);
        return done->status;
    }
    const cli::RunConfig& config = std::get<cli::RunConfig>(outcome);
    if (config.balloon || config.control_socket) {
        spdlog::warn("--balloon and --control are accepted but not wired in this build; ignoring them");
    }

    // 2. Read and validate the kernel before reserving anything.
    auto image = loader::read_elf(config.kernel);
    if (!image) return fail(image.error().message);

    // 3. Open swap.
    swv::swap::SwapPool pool;
    for (const cli::SwapSpec& spec : config.swaps) {
        auto id = pool.swapon(spec.path, spec.priority.value_or(0), spec.size.value_or(0));
        if (!id) return fail(fmt::format("swapon {}: {}", spec.path.string(), id.error().message()));
    }

    // 4. Build guest memory.
    swv::guestmem::HostMemory host(pool, /*budget_bytes=*/0);
    auto mem = host.create_vm(swv::guestmem::MemoryConfig{
        .name = config.name, .memory_bytes = config.memory_bytes, .resident_limit = config.resident_limit});
    if (!mem) return fail(fmt::format("guest memory ({} bytes): {}", config.memory_bytes, mem.error().message()));
    swv::guestmem::GuestMemory& memory = **mem;

    // 5. Create the VM: KVM, memslots, vCPUs, devices.
    auto kvm = kvm::Kvm::open();
    if (!kvm) return fail(fmt::format("KVM: {}", kvm.error().message()));
    if (config.vcpus > kvm->max_vcpus()) {
        return fail(fmt::format("--vcpus {}: this host's KVM allows at most {}", config.vcpus, kvm->max_vcpus()));
    }
    auto vm = Vm::create(*kvm, VmSpec{config.vcpus, memory.regions()}, devices::SerialSink::borrowed(STDOUT_FILENO));
    if (!vm) return fail(fmt::format("creating the VM: {}", vm.error().message()));

    // 6. Load the kernel and the PVH boot data; put the BSP at the entry.
    auto boot = loader::load_kernel(memory, *image, config.cmdline);
    if (!boot) return fail(boot.error().message);
    if (auto r = (*vm)->set_boot_entry(boot->entry, boot->start_info_gpa); !r) {
        return fail(fmt::format("setting the PVH entry state: {}", r.error().message()));
    }

    // 7. Run until the guest exits.
    if (auto r = memory.start(); !r) return fail(fmt::format("starting guest memory: {}", r.error().message()));
    VmEnd end = (*vm)->run();
    memory.stop();

    // 8. Report.
    if (config.stats_json) write_stats_json(*config.stats_json, memory, pool, end);
    return exit_status(end);
}
