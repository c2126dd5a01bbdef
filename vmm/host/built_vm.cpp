// BuiltVm: see built_vm.hpp. build() is the one place a VM is put together, for
// `run`'s VMs and vm-create's alike.
#include "vmm/host/built_vm.hpp"

#include <unistd.h>

#include <algorithm>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "vmm/control/vm_control.hpp"
#include "vmm/loader/elf.hpp"
#include "vmm/loader/loader.hpp"

namespace swapvisor::vmm {

Result<std::unique_ptr<BuiltVm>> BuiltVm::build(const BuildContext& context, const VmSpec& spec, SerialPrefix prefix) {
    std::unique_ptr<BuiltVm> vm(new BuiltVm(spec));
    const std::string& name = vm->spec_.name;
    // The one check that depends on this host rather than on the spec.
    if (spec.vcpus > context.kvm.max_vcpus())
        return make_error(control::VmErrc::bad_spec, "vm-create",
                          fmt::format("field \"vcpus\": {} asked, this host's KVM allows at most {}", spec.vcpus,
                                      context.kvm.max_vcpus()));
    // The kernel is read and validated before any memory is reserved.
    auto image = loader::read_elf(spec.kernel);
    if (!image) return std::unexpected(std::move(image.error()).with_context(name));

    // Guest memory. One fault thread per vCPU: faults from several vCPUs are served at once.
    guestmem::MemoryConfig memory_config{.name = name, .memory_bytes = spec.memory_bytes,
                                         .resident_limit = spec.resident_limit, .fault_threads = spec.vcpus,
                                         .swap_quota = spec.swap_quota};
    // Access ages for the working set (guestmem/README.md#working-set): one MINOR fault per page in use per period.
    memory_config.age_scan_period = age_scan_of(spec, kDefaultAgeScan);
    memory_config.auto_limit = spec.auto_limit;
    if (spec.auto_limit && (spec.tuning.auto_stall_target || spec.tuning.auto_floor || spec.tuning.auto_ceiling)) {
        guestmem::AutoLimitConfig tuned;  // the controller's defaults, where this VM names none
        if (spec.tuning.auto_stall_target) tuned.stall_target = *spec.tuning.auto_stall_target;
        if (spec.tuning.auto_floor) tuned.floor_bytes = spec.tuning.auto_floor;
        if (spec.tuning.auto_ceiling) tuned.ceiling_bytes = spec.tuning.auto_ceiling;
        memory_config.auto_config = tuned;
    }
    if (context.seccomp == sandbox::Seccomp::on) {
        memory_config.on_thread_start = [](guestmem::ThreadRole role) {
            // The writeback thread does what the reclaimer did before it was split off
            // (write_out, punch): the reclaimer's filter.
            const auto cls = role == guestmem::ThreadRole::fault_service ? sandbox::ThreadClass::fault_service
                                                                          : sandbox::ThreadClass::reclaimer;
            auto r = sandbox::confine_thread(cls);
            SWV_ASSERT(r.has_value(), "cannot confine a guestmem thread (seccomp)");
        };
    }
    auto memory = context.host.create_vm(memory_config);
    if (!memory) return std::unexpected(std::move(memory.error()).with_context(fmt::format("guest memory of {}", name)));
    vm->memory_.hold(context.host, **memory, name);
    guestmem::GuestMemory& guest = vm->memory_.get();

    // The KVM VM: memslots, vCPUs.
    VmConfig config{spec.vcpus, guest.regions()};
    if (context.seccomp == sandbox::Seccomp::on)
        config.on_vcpu_thread_start = [] { return sandbox::confine_thread(sandbox::ThreadClass::vcpu); };
    auto created = Vm::create(context.kvm, config);
    if (!created) return std::unexpected(std::move(created.error()).with_context(fmt::format("creating VM {}", name)));
    vm->vm_ = std::move(*created);

    // Devices: COM1 and the debug exit, then each virtio device.
    vm->counters_.hold(context.stats, name);
    vm->devices_ = std::make_unique<devices::DeviceManager>(
        vm->vm_->pio(), vm->vm_->mmio(), [v = vm->vm_.get()](std::uint32_t gsi) { return v->irq_line(gsi); },
        context.stats, name);
    devices::SerialSink serial = devices::SerialSink::borrowed(STDOUT_FILENO);
    if (spec.serial_log) {
        auto file = devices::SerialSink::open_file(*spec.serial_log);
        if (!file) return std::unexpected(std::move(file.error()).with_context(fmt::format("{}: serial log", name)));
        serial = std::move(*file);
    } else if (prefix == SerialPrefix::name) {
        serial = std::move(serial).with_prefix("[" + name + "] ");
    }
    SWV_TRY(with_context(vm->devices_->add_legacy(std::move(serial)), name));
    if (spec.balloon) {
        vm->balloon_ = std::make_shared<devices::VirtioBalloon>(guest, spec.balloon_stats_interval);
        auto transport = vm->devices_->add_virtio("balloon", guest, vm->balloon_);
        if (!transport) return std::unexpected(std::move(transport.error()).with_context(name));
        vm->balloon_transport_ = *transport;
        vm->poller_ = std::make_unique<devices::BalloonStatsPoller>(vm->balloon_, vm->balloon_transport_);
    }
    vm->spec_.cmdline = vm->devices_->append_cmdline(spec.cmdline);

    // The kernel and its PVH boot data; the BSP at its entry; guest memory started.
    auto boot = loader::load_kernel(guest, *image, vm->spec_.cmdline);
    if (!boot) return std::unexpected(std::move(boot.error()).with_context(name));
    SWV_TRY(with_context(vm->vm_->set_boot_entry(boot->entry, boot->start_info_gpa),
                         fmt::format("{}: setting the PVH entry state", name)));
    SWV_TRY(with_context(vm->memory_.start(), fmt::format("{}: starting guest memory", name)));
    return vm;
}

VmEnd BuiltVm::run() {
    VmEnd end = vm_->run();
    devices_->flush_serial();
    return end;
}

Result<std::uint64_t> BuiltVm::set_balloon(std::uint64_t bytes) {
    if (!balloon_) return make_error(control::VmErrc::no_balloon, "set-balloon", spec_.name);
    std::uint64_t pages = std::min<std::uint64_t>(bytes / 4096, spec_.memory_bytes / 4096);
    balloon_->set_target_pages(static_cast<std::uint32_t>(pages));
    // Takes only the transport's interrupt lock, never a queue's: the caller never
    // waits for the guest (devices/README.md).
    balloon_transport_->notify_config_change();
    return pages;
}

Result<void> BuiltVm::MemoryLease::start() {
    SWV_TRY(memory_->start());
    started_ = true;
    return {};
}

void BuiltVm::MemoryLease::stop() {
    if (started_) memory_->stop();
}

// Checked: HostMemory held exactly this VM under its name and removes it; the log
// line gives the VSlots its stage-2 table referred to just before (the tests check
// that the pool's count falls to 0 at rest).
BuiltVm::MemoryLease::~MemoryLease() {
    if (memory_ == nullptr) return;
    stop();
    const std::uint64_t held = memory_->referenced_vslots();
    const std::uint64_t bytes = memory_->memory_bytes();
    // The VM's name is still listed by its host (no new VM can take it yet), so
    // HostMemory must know it exactly until this call removes it.
    auto removed = host_->remove_vm(name_);
    SWV_ASSERT(removed.has_value(), "a VM's guest memory vanished from HostMemory before its release");
    if (started_) spdlog::info("{}: memory released ({} bytes, {} VSlots freed)", name_, bytes, held);
}

}  // namespace swapvisor::vmm
