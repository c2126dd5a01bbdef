// DeviceManager: slot allocation, bus wiring and counter registration
// (vmm/devices/device_manager.hpp for the layout).
#include "vmm/devices/device_manager.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "vmm/devices/debug_exit.hpp"
#include "vmm/error_category.hpp"

namespace swapvisor::vmm::devices {

namespace {

std::string describe(DeviceErrc e) {
    switch (e) {
        case DeviceErrc::no_virtio_slot:
            return fmt::format("no free virtio-mmio slot (at most {} virtio devices, GSIs {}..{})",
                               kMaxVirtioDevices, kFirstVirtioGsi, kLastVirtioGsi);
        case DeviceErrc::duplicate_name: return "a device of that name already exists in this VM";
        case DeviceErrc::saved_layout: return "the saved devices are not this VM's devices";
    }
    return "unknown device error";
}

}  // namespace

const std::error_category& device_category() {
    static const EnumCategory<DeviceErrc> category("devices", describe);
    return category;
}

VirtioSlot virtio_slot(unsigned n) {
    SWV_ASSERT(n < kMaxVirtioDevices, "virtio slot index out of range");
    return VirtioSlot{kVirtioMmioBase + std::uint64_t{n} * kVirtioMmioSize, kFirstVirtioGsi + n};
}

std::string virtio_cmdline_entry(VirtioSlot slot) {
    return fmt::format("virtio_mmio.device=4K@{:#x}:{}", slot.mmio_base, slot.gsi);
}

DeviceManager::DeviceManager(Bus& pio, Bus& mmio, IrqLineFactory irq_line, control::DeviceStats& stats,
                             std::string vm_name)
    : pio_(pio), mmio_(mmio), irq_line_(std::move(irq_line)), stats_(stats), vm_name_(std::move(vm_name)) {}

Result<void> DeviceManager::add_legacy(SerialSink serial) {
    auto com1 = std::make_shared<Serial16550>(std::move(serial));
    SWV_TRY(with_context(pio_.insert(kCom1Base, kCom1Len, com1), "COM1"));
    SWV_TRY(with_context(pio_.insert(kDebugExitPort, 1, std::make_shared<DebugExit>()), "debug exit"));
    serial_ = std::move(com1);
    return {};
}

Result<std::shared_ptr<VirtioMmio>> DeviceManager::add_virtio(std::string name, guestmem::GuestMemory& mem,
                                                              std::shared_ptr<VirtioDevice> device) {
    if (slots_.size() >= kMaxVirtioDevices) return make_error(DeviceErrc::no_virtio_slot, "adding a virtio device", name);
    if (std::find(names_.begin(), names_.end(), name) != names_.end())
        return make_error(DeviceErrc::duplicate_name, "adding a virtio device", name);
    VirtioSlot slot = virtio_slot(static_cast<unsigned>(slots_.size()));
    auto transport = std::make_shared<VirtioMmio>(mem, device, irq_line_ ? irq_line_(slot.gsi) : IrqCallback{});
    SWV_TRY(with_context(mmio_.insert(slot.mmio_base, kVirtioMmioSize, transport),
                         fmt::format("{} at {:#x}", name, slot.mmio_base)));
    // The source holds the device, so its counters stay readable after the VM ends.
    SWV_TRY(stats_.add(vm_name_, name, [device] { return device->counters(); }));
    slots_.push_back(slot);
    names_.push_back(std::move(name));
    transports_.push_back(transport);
    return transport;
}

std::string DeviceManager::cmdline() const {
    std::string out;
    for (const VirtioSlot& slot : slots_) {
        if (!out.empty()) out += ' ';
        out += virtio_cmdline_entry(slot);
    }
    return out;
}

std::string DeviceManager::append_cmdline(const std::string& base) const {
    std::string entries = cmdline();
    if (base.empty() || entries.empty()) return base + entries;
    return base + " " + entries;
}

void DeviceManager::flush_serial() {
    if (serial_) serial_->flush();
}

void DeviceManager::set_device_work(DeviceWork work) {
    for (const auto& t : transports_) t->set_device_work(work);
}

DeviceStates DeviceManager::save() {
    DeviceStates out;
    if (serial_) out.serial = serial_->save();
    for (std::size_t i = 0; i < transports_.size(); ++i)
        out.virtio.push_back(VirtioDeviceState{names_[i], slots_[i].mmio_base, slots_[i].gsi, transports_[i]->save()});
    return out;
}

Result<void> DeviceManager::restore(const DeviceStates& states) {
    if (!serial_) return make_error(DeviceErrc::saved_layout, "restoring devices", "no COM1 in this VM");
    if (states.virtio.size() != transports_.size())
        return make_error(DeviceErrc::saved_layout, "restoring devices",
                          fmt::format("{} virtio devices saved, this VM has {}", states.virtio.size(), transports_.size()));
    for (std::size_t i = 0; i < transports_.size(); ++i) {
        const VirtioDeviceState& d = states.virtio[i];
        if (d.name != names_[i] || d.mmio_base != slots_[i].mmio_base || d.gsi != slots_[i].gsi)
            return make_error(DeviceErrc::saved_layout, "restoring devices",
                              fmt::format("virtio device {} saved as {} at {:#x} GSI {}, this VM has {} at {:#x} GSI {}",
                                          i, d.name, d.mmio_base, d.gsi, names_[i], slots_[i].mmio_base, slots_[i].gsi));
    }
    for (std::size_t i = 0; i < transports_.size(); ++i)
        SWV_TRY(with_context(transports_[i]->restore(states.virtio[i].transport), names_[i]));
    serial_->restore(states.serial);
    return {};
}

}  // namespace swapvisor::vmm::devices
