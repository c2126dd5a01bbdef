// DeviceManager: puts one VM's devices on its buses. It owns the guest-visible
// device layout, so a new device needs no address or interrupt chosen by hand:
//
//   port I/O   0x3f8..0x3ff  COM1 (Serial16550)          add_legacy()
//              0xf4          debug exit (DebugExit)      add_legacy()
//   MMIO       0xd000_0000 + n * 0x1000, n = 0, 1, ...   add_virtio(): one virtio-mmio
//              window per virtio device, in the order added
//   GSI        5 + n for virtio device n (5..23)         wired with KVM_IRQ_LINE
//
// and announces each virtio device on the guest command line in Linux's form
// `virtio_mmio.device=4K@0xd0000000:5` (cmdline()). Each virtio device's counters
// are registered under its name for the VM in the process's DeviceStats, which
// `status`, `stats` and --stats-json read (vmm/control/device_stats.hpp).
//
// GSIs 5..23: the in-kernel IOAPIC has 24 pins; 0..4 are the PIT, keyboard, the
// PIC cascade and the COM ports a PC guest expects. So at most 19 virtio devices;
// the 20th gets DeviceErrc::no_virtio_slot.
//
// Threads: setup only (main thread, before the first vCPU runs): the buses are
// immutable once vCPUs run (vmm/README.md#invariants).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "guestmem/guest_memory.hpp"
#include "io/result.hpp"
#include "vmm/control/device_stats.hpp"
#include "vmm/devices/bus.hpp"
#include "vmm/devices/serial.hpp"
#include "vmm/devices/virtio_balloon.hpp"
#include "vmm/devices/virtio_mmio.hpp"

namespace swapvisor::vmm::devices {

inline constexpr std::uint32_t kFirstVirtioGsi = 5;
inline constexpr std::uint32_t kLastVirtioGsi = 23;
inline constexpr unsigned kMaxVirtioDevices = kLastVirtioGsi - kFirstVirtioGsi + 1;

enum class DeviceErrc {
    no_virtio_slot = 1,  // every virtio-mmio window / interrupt line is taken
    duplicate_name,      // two devices of one VM with the same name
    saved_layout,        // a snapshot's devices are not this VM's devices
};
const std::error_category& device_category();
inline std::error_code make_error_code(DeviceErrc e) { return {static_cast<int>(e), device_category()}; }

}  // namespace swapvisor::vmm::devices

template <>
struct std::is_error_code_enum<swapvisor::vmm::devices::DeviceErrc> : std::true_type {};

namespace swapvisor::vmm::devices {

// Where virtio device n lives: its MMIO window and its interrupt line.
struct VirtioSlot {
    std::uint64_t mmio_base;
    std::uint32_t gsi;
};

// Slot n of the layout above (n < kMaxVirtioDevices).
VirtioSlot virtio_slot(unsigned n);
// "virtio_mmio.device=4K@0xd0000000:5"
std::string virtio_cmdline_entry(VirtioSlot slot);

// One virtio device's saved transport, with where it sat.
struct VirtioDeviceState {
    std::string name;  // as given to add_virtio ("balloon")
    std::uint64_t mmio_base = 0;
    std::uint32_t gsi = 0;
    VirtioMmioState transport;
    bool operator==(const VirtioDeviceState&) const = default;
};

// Every device of one VM for a snapshot (docs/SNAPSHOT.md#vcpu-and-device-state).
// The debug-exit port has no state. The balloon's own part is filled by whoever
// holds the balloon (the VM builder), not by the manager.
struct DeviceStates {
    SerialState serial;
    std::vector<VirtioDeviceState> virtio;  // in window order
    std::optional<BalloonState> balloon;
    bool operator==(const DeviceStates&) const = default;
};

// The VM's interrupt line for a GSI (Vm::irq_line, or a recorder in tests).
using IrqLineFactory = std::function<IrqCallback(std::uint32_t gsi)>;

class DeviceManager {
public:
    // `pio`, `mmio` and `stats` must outlive the manager; `vm_name` names the VM in
    // `stats`.
    DeviceManager(Bus& pio, Bus& mmio, IrqLineFactory irq_line, control::DeviceStats& stats, std::string vm_name);

    // COM1 writing to `serial`, and the debug-exit port.
    Result<void> add_legacy(SerialSink serial);

    // Put `device` behind a virtio-mmio transport in the next free window with the
    // next interrupt line, and register its counters as `name` (e.g. "balloon").
    // `mem` must outlive the VM. The transport is returned for config changes
    // (VirtioMmio::notify_config_change).
    Result<std::shared_ptr<VirtioMmio>> add_virtio(std::string name, guestmem::GuestMemory& mem,
                                                   std::shared_ptr<VirtioDevice> device);

    // The guest command-line entries of every virtio device, space separated, in
    // window order ("" if none).
    std::string cmdline() const;
    // `base` with cmdline() appended (one space between, none if either is empty).
    std::string append_cmdline(const std::string& base) const;

    const std::vector<VirtioSlot>& virtio_slots() const { return slots_; }

    // Write out COM1's partial line (the VM has ended).
    void flush_serial();

    // Hold or release every virtio device's own work (VirtioMmio::set_device_work):
    // a snapshot holds it between pausing the VM and resuming it.
    void set_device_work(DeviceWork work);
    // COM1 and every virtio transport (`balloon` left empty). Only while the VM is
    // paused and device work is held.
    DeviceStates save();
    // Put saved state into the devices of a restored VM, built with the same
    // devices in the same order, before its vCPUs run. Errors:
    // DeviceErrc::saved_layout (context: which device differs) or a transport's
    // error; a failed restore leaves the VM unusable (the builder drops it).
    Result<void> restore(const DeviceStates& states);

private:
    Bus& pio_;
    Bus& mmio_;
    IrqLineFactory irq_line_;
    control::DeviceStats& stats_;
    std::string vm_name_;
    std::shared_ptr<Serial16550> serial_;
    std::vector<VirtioSlot> slots_;
    std::vector<std::string> names_;  // per slot
    std::vector<std::shared_ptr<VirtioMmio>> transports_;  // per slot
};

}  // namespace swapvisor::vmm::devices
