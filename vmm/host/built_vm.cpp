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

    SWV_TRY(vm->create_memory(context));
    guestmem::GuestMemory& guest = vm->memory_.get();
    auto created = Vm::create(context.kvm, vm->vm_config(context));
    if (!created) return std::unexpected(std::move(created.error()).with_context(fmt::format("creating VM {}", name)));
    vm->vm_ = std::move(*created);
    SWV_TRY(vm->create_devices(context, prefix));
    vm->spec_.cmdline = vm->devices_->append_cmdline(spec.cmdline);
    vm->start_poller();

    // The kernel and its PVH boot data; the BSP at its entry; guest memory started.
    auto boot = loader::load_kernel(guest, *image, vm->spec_.cmdline);
    if (!boot) return std::unexpected(std::move(boot.error()).with_context(name));
    SWV_TRY(with_context(vm->vm_->set_boot_entry(boot->entry, boot->start_info_gpa),
                         fmt::format("{}: setting the PVH entry state", name)));
    SWV_TRY(with_context(vm->memory_.start(), fmt::format("{}: starting guest memory", name)));
    return vm;
}

control::Counters restore_counters(FirstEntry::Clock::time_point requested,
                                   std::optional<FirstEntry::Clock::time_point> entered) {
    if (!entered) return {};
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(*entered - requested).count();
    return {{"to_first_insn_us", static_cast<std::uint64_t>(std::max<std::int64_t>(0, us))}};
}

Result<std::unique_ptr<BuiltVm>> BuiltVm::restore(const BuildContext& context, const VmSpec& spec,
                                                  const snapshot::Manifest& manifest, SerialPrefix prefix,
                                                  const RestoreMemory& restore_memory,
                                                  FirstEntry::Clock::time_point requested) {
    std::unique_ptr<BuiltVm> vm(new BuiltVm(spec));
    vm->restore_requested_ = requested;
    const std::string& name = vm->spec_.name;
    auto differs = [&](const char* field, std::string why) {
        return make_error(control::VmErrc::bad_spec, "restore",
                          fmt::format("{}: field \"{}\": {}", name, field, why));
    };
    if (spec.vcpus != manifest.spec.vcpus || spec.vcpus != manifest.kvm.vcpus.size())
        return differs("vcpus", fmt::format("{} asked, the snapshot has {}", spec.vcpus, manifest.kvm.vcpus.size()));
    if (spec.memory_bytes != manifest.spec.memory_bytes)
        return differs("memory", fmt::format("{} bytes asked, the snapshot has {}", spec.memory_bytes,
                                             manifest.spec.memory_bytes));
    if (spec.balloon != manifest.spec.balloon || spec.balloon != manifest.devices.balloon.has_value())
        return differs("balloon", "the devices must be the snapshot's");
    if (spec.vcpus > context.kvm.max_vcpus())
        return differs("vcpus", fmt::format("this host's KVM allows at most {}", context.kvm.max_vcpus()));

    SWV_TRY(vm->create_memory(context, &restore_memory, &manifest.memory));
    auto created = Vm::create_restored(context.kvm, vm->vm_config(context), manifest.kvm);
    if (!created) return std::unexpected(std::move(created.error()).with_context(fmt::format("restoring VM {}", name)));
    vm->vm_ = std::move(*created);
    SWV_TRY(vm->create_devices(context, prefix));
    // Dropped with the other counters (counters_), before the Vm it reads goes.
    SWV_TRY(with_context(context.stats.add(name, "restore",
                                           [v = vm->vm_.get(), requested] {
                                               return restore_counters(requested, v->first_entry());
                                           }),
                         name));
    SWV_TRY(with_context(vm->devices_->restore(manifest.devices), fmt::format("{}: restoring devices", name)));
    if (vm->balloon_) SWV_TRY(with_context(vm->balloon_->restore(*manifest.devices.balloon), name));
    vm->spec_.cmdline = manifest.spec.cmdline;  // already carries the devices' entries
    vm->start_poller();
    SWV_TRY(with_context(vm->memory_.start(), fmt::format("{}: starting guest memory", name)));
    return vm;
}

Result<snapshot::Manifest> BuiltVm::save_state(const SaveMemory& save_memory) {
    // Device work is held from before the first capture until the memory is saved:
    // the balloon's poller would otherwise write a used ring into guest memory in
    // between (the released state is restored on every path).
    struct Hold {
        devices::DeviceManager& devices;
        ~Hold() { devices.set_device_work(devices::DeviceWork::run); }
    } hold{*devices_};
    devices_->set_device_work(devices::DeviceWork::hold);

    snapshot::Manifest manifest;
    manifest.spec = spec_;
    manifest.kvm = SWV_TRY(with_context(vm_->save_state(), spec_.name));
    manifest.devices = devices_->save();
    if (balloon_) manifest.devices.balloon = balloon_->save();
    manifest.memory = SWV_TRY(with_context(save_memory(memory_.get()), fmt::format("{}: saving guest memory", spec_.name)));
    if (!manifest.memory.is_object())
        return make_error(snapshot::SnapshotErrc::bad_manifest, "saving guest memory", "the memory side's answer is not a JSON object");
    return manifest;
}

// Guest memory under the host budget. Its faults go to the host's fault workers,
// up to one per vCPU at once (guestmem/fault_service.hpp).
Result<void> BuiltVm::create_memory(const BuildContext& context, const RestoreMemory* from,
                                    const snapshot::Json* memory_json) {
    const VmSpec& spec = spec_;
    const std::string& name = spec.name;
    guestmem::MemoryConfig memory_config{.name = name, .memory_bytes = spec.memory_bytes,
                                         .resident_limit = spec.resident_limit, .vcpus = spec.vcpus,
                                         .swap_quota = spec.swap_quota};
    // Access ages for the working set (guestmem/README.md#working-set): one MINOR fault per page in use per period.
    memory_config.age_scan_period = age_scan_of(spec, kDefaultAgeScan);
    memory_config.age_scan_sample = age_sample_of(spec);
    static_assert(kMaxAgeSample == guestmem::AgeSampling::kMax);
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
            // The VM's own thread is a restore's filler; the host-wide fault and
            // reclaim workers are confined by VmHost::set_seccomp.
            const auto cls = role == guestmem::ThreadRole::fault_service ? sandbox::ThreadClass::fault_service
                                                                          : sandbox::ThreadClass::reclaimer;
            auto r = sandbox::confine_thread(cls);
            SWV_ASSERT(r.has_value(), "cannot confine a guestmem thread (seccomp)");
        };
    }
    auto memory = from != nullptr ? (*from)(context.host, memory_config, *memory_json) : context.host.create_vm(memory_config);
    if (!memory)
        return std::unexpected(std::move(memory.error())
                                   .with_context(from != nullptr ? fmt::format("{}: restoring guest memory", name)
                                                                 : fmt::format("guest memory of {}", name)));
    memory_.hold(context.host, **memory, name);
    return {};
}

// The KVM side: memslots over guest memory, the vCPUs' threads confined.
VmConfig BuiltVm::vm_config(const BuildContext& context) const {
    VmConfig config{spec_.vcpus, memory_.get().regions()};
    if (context.seccomp == sandbox::Seccomp::on)
        config.on_vcpu_thread_start = [] { return sandbox::confine_thread(sandbox::ThreadClass::vcpu); };
    if (restore_requested_) {
        // docs/SNAPSHOT.md#first-insn; runs on the vCPU thread after its first exit.
        config.on_first_entry = [name = spec_.name, requested = *restore_requested_](FirstEntry::Clock::time_point at) {
            spdlog::info("{}: restored: first vCPU entered the guest {:.2f} ms after the restore request", name,
                         std::chrono::duration<double, std::milli>(at - requested).count());
        };
    }
    return config;
}

// Devices: COM1 and the debug exit, then each virtio device (the balloon's poller
// starts separately, once the devices hold their final state).
Result<void> BuiltVm::create_devices(const BuildContext& context, SerialPrefix prefix) {
    const VmSpec& spec = spec_;
    const std::string& name = spec.name;
    guestmem::GuestMemory& guest = memory_.get();
    counters_.hold(context.stats, name);
    devices_ = std::make_unique<devices::DeviceManager>(
        vm_->pio(), vm_->mmio(), [v = vm_.get()](std::uint32_t gsi) { return v->irq_line(gsi); }, context.stats, name);
    devices::SerialSink serial = devices::SerialSink::borrowed(STDOUT_FILENO);
    if (spec.serial_log) {
        auto file = devices::SerialSink::open_file(*spec.serial_log);
        if (!file) return std::unexpected(std::move(file.error()).with_context(fmt::format("{}: serial log", name)));
        serial = std::move(*file);
    } else if (prefix == SerialPrefix::name) {
        serial = std::move(serial).with_prefix("[" + name + "] ");
    }
    SWV_TRY(with_context(devices_->add_legacy(std::move(serial)), name));
    if (spec.balloon) {
        balloon_ = std::make_shared<devices::VirtioBalloon>(guest, spec.balloon_stats_interval);
        auto transport = devices_->add_virtio("balloon", guest, balloon_);
        if (!transport) return std::unexpected(std::move(transport.error()).with_context(name));
        balloon_transport_ = *transport;
    }
    return {};
}

void BuiltVm::start_poller() {
    if (balloon_) poller_ = std::make_unique<devices::BalloonStatsPoller>(balloon_, balloon_transport_);
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
