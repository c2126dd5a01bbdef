// VirtioMmio: the virtio-mmio transport (virtio 1.2, section 4.2, register layout
// version 2, no legacy). One VirtioMmio is one 4 KiB window on the MMIO bus; the
// device manager (device_manager.hpp) picks the window (0xd0000000 + n * 0x1000)
// and the interrupt line and announces it as `virtio_mmio.device=4K@<base>:<gsi>`
// (DESIGN.md section 6). The rings are SplitQueue (virtqueue.hpp); the
// device-specific part (VirtioDevice) supplies the device id, features, config
// space and what a buffer on each queue means.
//
// Invariants:
//  - a malformed queue (any SplitQueue error) puts the device into
//    DEVICE_NEEDS_RESET (status 0x40) and stops all its queues until the driver
//    resets it; it never crashes or aborts the VMM.
//  - features may change only between DRIVER and FEATURES_OK; queue registers only
//    after FEATURES_OK while that queue is not ready.
//  - no offered feature other than VIRTIO_F_VERSION_1 and the device's own, so no
//    event index, no indirect descriptors, no packed ring, no notification data.
//
// Threads: vCPU threads call read()/write() concurrently; one mutex per transport
// serialises the registers, the queues and the device callbacks (queue processing
// runs on the vCPU that wrote QueueNotify, and may take as long as the guest's
// request: an inflate of gigabytes, swap-ins). The interrupt state (InterruptStatus,
// ConfigGeneration, the status bits the interrupt depends on, the line) has its own
// leaf lock, so notify_config_change() and status() — called from any thread (the
// control socket's set-balloon) — never wait for a queue's work.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <system_error>
#include <vector>

#include "guestmem/addr.hpp"
#include "guestmem/guest_memory.hpp"
#include "io/result.hpp"
#include "vmm/control/device_stats.hpp"
#include "vmm/devices/bus.hpp"
#include "vmm/devices/log_budget.hpp"
#include "vmm/devices/virtqueue.hpp"

namespace swapvisor::vmm::devices {

// The MMIO window of virtio device n is [kVirtioMmioBase + n * kVirtioMmioSize, +kVirtioMmioSize).
inline constexpr std::uint64_t kVirtioMmioBase = 0xd000'0000;
inline constexpr std::uint64_t kVirtioMmioSize = 0x1000;

inline constexpr std::uint32_t kVirtioMmioMagic = 0x7472'6976;  // "virt", little endian
inline constexpr std::uint32_t kVirtioMmioVersion = 2;
inline constexpr std::uint32_t kVirtioVendorId = 0x5357'5653;      // "SVWS" read as bytes

inline constexpr std::uint64_t kVirtioFVersion1 = 1ULL << 32;

// Device status bits (virtio 1.2, 2.1).
inline constexpr std::uint32_t kStatusAcknowledge = 0x01;
inline constexpr std::uint32_t kStatusDriver = 0x02;
inline constexpr std::uint32_t kStatusDriverOk = 0x04;
inline constexpr std::uint32_t kStatusFeaturesOk = 0x08;
inline constexpr std::uint32_t kStatusNeedsReset = 0x40;
inline constexpr std::uint32_t kStatusFailed = 0x80;

// InterruptStatus bits.
inline constexpr std::uint32_t kInterruptUsedBuffer = 0x1;
inline constexpr std::uint32_t kInterruptConfigChange = 0x2;

// Register offsets of the version-2 layout (all 32 bits wide):
//
//   0x000 MagicValue        0x030 QueueSel          0x070 Status
//   0x004 Version           0x034 QueueNumMax       0x080/084 QueueDesc   lo/hi
//   0x008 DeviceID          0x038 QueueNum          0x090/094 QueueDriver lo/hi (avail)
//   0x00c VendorID          0x044 QueueReady        0x0a0/0a4 QueueDevice lo/hi (used)
//   0x010 DeviceFeatures    0x050 QueueNotify (w)   0x0ac SHMSel, 0x0b0.. SHMLen/Base
//   0x014 DeviceFeaturesSel 0x060 InterruptStatus   0x0c0 QueueReset
//   0x020 DriverFeatures    0x064 InterruptACK (w)  0x0fc ConfigGeneration
//   0x024 DriverFeaturesSel                         0x100 config space
namespace virtio_reg {
inline constexpr std::uint64_t kMagic = 0x000, kVersion = 0x004, kDeviceId = 0x008, kVendorId = 0x00c;
inline constexpr std::uint64_t kDeviceFeatures = 0x010, kDeviceFeaturesSel = 0x014;
inline constexpr std::uint64_t kDriverFeatures = 0x020, kDriverFeaturesSel = 0x024;
inline constexpr std::uint64_t kQueueSel = 0x030, kQueueNumMax = 0x034, kQueueNum = 0x038, kQueueReady = 0x044;
inline constexpr std::uint64_t kQueueNotify = 0x050, kInterruptStatus = 0x060, kInterruptAck = 0x064;
inline constexpr std::uint64_t kStatus = 0x070;
inline constexpr std::uint64_t kQueueDescLow = 0x080, kQueueDescHigh = 0x084;
inline constexpr std::uint64_t kQueueDriverLow = 0x090, kQueueDriverHigh = 0x094;
inline constexpr std::uint64_t kQueueDeviceLow = 0x0a0, kQueueDeviceHigh = 0x0a4;
inline constexpr std::uint64_t kShmSel = 0x0ac, kShmLenLow = 0x0b0, kShmLenHigh = 0x0b4;
inline constexpr std::uint64_t kShmBaseLow = 0x0b8, kShmBaseHigh = 0x0bc, kQueueReset = 0x0c0;
inline constexpr std::uint64_t kConfigGeneration = 0x0fc, kConfig = 0x100;
}  // namespace virtio_reg

// The device-specific half of a virtio device. Called with the transport's mutex
// held, so implementations need no lock for state only these calls touch.
class VirtioDevice {
public:
    virtual ~VirtioDevice() = default;
    virtual std::uint32_t device_id() const = 0;
    // Offered features, including kVirtioFVersion1.
    virtual std::uint64_t device_features() const = 0;
    // Queues that exist once `features` are negotiated (indices 0 .. n-1).
    virtual unsigned queue_count(std::uint64_t features) const = 0;
    virtual std::uint16_t queue_max_size() const { return 256; }
    // Config space accesses at `offset` from 0x100 (any width; out of range reads 0).
    virtual void read_config(std::uint64_t offset, std::span<std::byte> data) = 0;
    virtual void write_config(std::uint64_t offset, std::span<const std::byte> data) = 0;
    // Consume the available buffers of queue `index` (< queue_count). An error
    // means the queue is malformed: the transport sets DEVICE_NEEDS_RESET.
    virtual Result<void> process_queue(unsigned index, SplitQueue& queue, std::uint64_t features) = 0;
    // Work the device starts itself (a timer, not a driver notify), e.g. the
    // balloon giving its statistics buffer back. The transport calls it from
    // VirtioMmio::poll_device() under its mutex, only while the driver is running
    // (DRIVER_OK, no NEEDS_RESET); `queues` are those that exist (ready or not). An
    // error means a queue is malformed, as for process_queue.
    virtual Result<void> poll(std::span<SplitQueue> queues, std::uint64_t features) {
        (void)queues;
        (void)features;
        return {};
    }
    // True for a queue whose buffers the driver may make available and notify
    // before DRIVER_OK although 3.1.1 says it must not (Linux's balloon kicks its
    // first statistics buffer from init_vqs, before virtio_device_ready): such a
    // notify is ignored like any other, and the transport processes the queue once
    // when DRIVER_OK is set, so the buffer is not lost.
    virtual bool process_when_live(unsigned index, std::uint64_t features) const {
        (void)index;
        (void)features;
        return false;
    }
    // Status 0 written: forget the driver's state (statistics survive).
    virtual void reset() = 0;
    // The device's counters for `status` / `stats` / --stats-json (device_stats.hpp).
    // Called from any thread without the transport's mutex: load atomics only.
    virtual control::Counters counters() const { return {}; }
};

// Whether the device's own work (VirtioDevice::poll, e.g. the balloon's statistics
// poller) is held: a snapshot holds it so that nothing writes the rings or guest
// memory while the paused VM is saved.
enum class DeviceWork : bool { run, hold };

// Level of the device's interrupt line: high while InterruptStatus is non-zero.
enum class IrqLevel : bool { low, high };
using IrqCallback = std::function<void(IrqLevel)>;

struct VirtioMmioStats {
    std::uint64_t notifies = 0;          // QueueNotify writes acted on
    std::uint64_t ignored_notifies = 0;  // before DRIVER_OK / queue ready, bad index, or after NEEDS_RESET
    std::uint64_t needs_reset = 0;       // times the device entered DEVICE_NEEDS_RESET
    std::uint64_t interrupts = 0;        // InterruptStatus bits raised
    std::uint64_t resets = 0;            // Status 0 written
};

// The transport's registers and queues, for a snapshot (the device-specific part,
// e.g. the balloon's, is saved by its own type). The interrupt line's level follows
// from interrupt_status.
struct VirtioMmioState {
    std::uint32_t device_id = 0;  // checked on restore: the same kind of device
    std::uint32_t device_features_sel = 0;
    std::uint32_t driver_features_sel = 0;
    std::uint64_t driver_features = 0;
    std::uint32_t queue_sel = 0;
    std::uint32_t status = 0;
    std::uint32_t interrupt_status = 0;
    std::uint32_t config_generation = 0;
    bool config_change_pending = false;
    std::vector<QueueState> queues;  // every queue slot, existing or not
    bool operator==(const VirtioMmioState&) const = default;
};

class VirtioMmio final : public BusDevice {
public:
    // `mem` must outlive the transport. `irq` may be empty: the guest polls.
    VirtioMmio(guestmem::GuestMemory& mem, std::shared_ptr<VirtioDevice> device, IrqCallback irq = {});

    void read(std::uint64_t offset, std::span<std::byte> data) override;
    BusAction write(std::uint64_t offset, std::span<const std::byte> data) override;

    // The device's config space changed (e.g. a new balloon target): bump
    // ConfigGeneration and raise the config-change interrupt once the driver runs.
    void notify_config_change();

    // Run the device's own work (VirtioDevice::poll) now, and raise the used-buffer
    // interrupt for any queue it returned buffers on that wants one. Any thread.
    void poll_device();

    std::uint32_t status() const;
    VirtioMmioStats stats() const;

    // Hold or release the device's own work (poll_device does nothing while held).
    void set_device_work(DeviceWork work);

    // Snapshot: the registers and every queue. Only while the VM is paused (no vCPU
    // in read/write; the caller's guarantee), though both take the locks.
    VirtioMmioState save() const;
    // Take a saved state over, in a restored VM before its vCPUs run: same device
    // id and queue count, features the device offers, every ready queue valid in
    // this guest memory (SplitQueue::restore). Raises the interrupt line if the
    // saved InterruptStatus is non-zero (the restored IOAPIC may not know it was
    // asserted by us). Errors: VirtioErrc::bad_saved_state (context: which part) or
    // a queue's VirtioErrc; nothing is changed then.
    Result<void> restore(const VirtioMmioState& state);

private:
    std::uint32_t read_register(std::uint64_t offset) const;
    void write_register(std::uint64_t offset, std::uint32_t value);
    void write_status(std::uint32_t value);
    void notify(std::uint32_t index);
    void needs_reset(unsigned index, const Error& why);
    void raise(std::uint32_t bits);         // takes irq_mutex_
    void raise_locked(std::uint32_t bits);  // irq_mutex_ held
    void reset_locked();
    SplitQueue* selected_queue();
    const SplitQueue* selected_queue() const;
    unsigned existing_queues() const;

    guestmem::GuestMemory& mem_;
    std::shared_ptr<VirtioDevice> device_;
    IrqCallback irq_;

    // Protects: the members down to irq_mutex_ and all calls into device_; Order:
    // before irq_mutex_ and the guestmem page locks (queue processing reads guest
    // memory and discards pages).
    mutable std::mutex mutex_;
    std::vector<SplitQueue> queues_;  // device_->queue_count(all offered features) slots
    std::uint32_t device_features_sel_ = 0;
    std::uint32_t driver_features_sel_ = 0;
    std::uint64_t driver_features_ = 0;
    std::uint32_t queue_sel_ = 0;
    DeviceWork device_work_ = DeviceWork::run;
    VirtioMmioStats stats_;  // all but `interrupts` (interrupts_ below)
    // Log lines this transport's guest can cause (LogBudget: per device, refilled).
    LogBudget log_budget_;

    // Protects: the members below and calls of irq_; status_ is written with both
    // mutex_ and irq_mutex_ held, so either lock reads it. Order: after mutex_, leaf
    // (never held across device or queue work, only across the irq_ call).
    mutable std::mutex irq_mutex_;
    std::uint32_t status_ = 0;
    std::uint32_t interrupt_status_ = 0;
    std::uint32_t config_generation_ = 0;
    bool config_change_pending_ = false;  // changed before DRIVER_OK: raised at DRIVER_OK
    std::uint64_t interrupts_ = 0;        // InterruptStatus bits raised
};

}  // namespace swapvisor::vmm::devices
