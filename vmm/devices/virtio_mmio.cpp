// VirtioMmio and SplitQueue: register decoding, feature negotiation, the queue
// checks and the split-ring walk (vmm/devices/virtio_mmio.hpp for the invariants).
#include "vmm/devices/virtio_mmio.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>

#include <spdlog/spdlog.h>

namespace swapvisor::vmm::devices {

using guestmem::Gpa;

const std::error_category& virtio_category() {
    struct Category final : std::error_category {
        const char* name() const noexcept override { return "virtio"; }
        std::string message(int c) const override {
            switch (static_cast<VirtioErrc>(c)) {
                case VirtioErrc::bad_queue_size: return "queue size zero, not a power of two or above the maximum";
                case VirtioErrc::bad_ring_address: return "ring misaligned or not inside guest RAM";
                case VirtioErrc::bad_avail_index: return "available index more than the queue size ahead";
                case VirtioErrc::bad_descriptor_index: return "descriptor index outside the table";
                case VirtioErrc::descriptor_loop: return "descriptor chain longer than the queue (a loop)";
                case VirtioErrc::indirect_descriptor: return "indirect descriptor without VIRTIO_F_INDIRECT_DESC";
                case VirtioErrc::readable_after_writable: return "device-readable descriptor after a writable one";
            }
            return "unknown virtio error";
        }
    };
    static const Category category;
    return category;
}

bool ram_contains(const guestmem::GuestMemory& mem, Gpa gpa, std::uint64_t len) {
    auto end = gpa.checked_add(len);
    if (!end) return false;
    for (const guestmem::RegionView& r : mem.regions()) {
        std::uint64_t rbase = r.base.value();
        std::uint64_t rend = rbase + r.size;
        if (gpa.value() >= rbase && end->value() <= rend && (len != 0 || gpa.value() < rend)) return true;
    }
    return false;
}

namespace {

std::uint32_t load_le(std::span<const std::byte> data) {
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < std::min<std::size_t>(data.size(), 4); ++i)
        v |= std::uint32_t{static_cast<std::uint8_t>(data[i])} << (8 * i);
    return v;
}

void store_le(std::span<std::byte> data, std::uint32_t v) {
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = i < 4 ? static_cast<std::byte>(v >> (8 * i)) : std::byte{0};
}

// Ring sizes in bytes (virtio 1.2, 2.7): descriptor table, available ring (flags,
// idx, ring[size], used_event), used ring (flags, idx, ring[size] of {id, len},
// avail_event).
constexpr std::uint64_t kDescBytes = 16;
std::uint64_t avail_bytes(std::uint16_t size) { return 6 + 2 * std::uint64_t{size}; }
std::uint64_t used_bytes(std::uint16_t size) { return 6 + 8 * std::uint64_t{size}; }

// A guest that misbehaves in a loop must not flood the log.
bool log_budget() {
    static std::atomic<unsigned> left{32};  // relaxed: a log throttle, orders nothing
    unsigned n = left.load(std::memory_order_relaxed);
    while (n > 0 && !left.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) {
    }
    return n > 0;
}

}  // namespace

// --- SplitQueue --------------------------------------------------------------------------

Result<void> SplitQueue::enable() {
    if (size_ == 0 || size_ > max_size_ || !std::has_single_bit(size_))
        return make_error(VirtioErrc::bad_queue_size, "virtqueue enable");
    bool placed = desc_ % 16 == 0 && driver_ % 2 == 0 && device_ % 4 == 0 &&
                  ram_contains(*mem_, Gpa(desc_), kDescBytes * size_) &&
                  ram_contains(*mem_, Gpa(driver_), avail_bytes(size_)) &&
                  ram_contains(*mem_, Gpa(device_), used_bytes(size_));
    if (!placed) return make_error(VirtioErrc::bad_ring_address, "virtqueue enable");
    last_avail_ = 0;
    next_used_ = 0;
    used_since_interrupt_ = 0;
    ready_ = true;
    return {};
}

void SplitQueue::reset() {
    size_ = max_size_;
    ready_ = false;
    desc_ = driver_ = device_ = 0;
    last_avail_ = next_used_ = 0;
    used_since_interrupt_ = 0;
}

Result<std::uint16_t> SplitQueue::read_u16(std::uint64_t gpa) const {
    std::uint16_t v = 0;
    SWV_TRY(mem_->read(Gpa(gpa), std::as_writable_bytes(std::span(&v, 1))));
    return v;
}

Result<std::optional<DescriptorChain>> SplitQueue::pop() {
    SWV_ASSERT(ready_, "pop from a queue that is not ready");
    std::uint16_t avail_idx = SWV_TRY(read_u16(driver_ + 2));
    // Pairs with the driver's write barrier between filling ring slots and idx.
    std::atomic_thread_fence(std::memory_order_acquire);
    std::uint16_t pending = static_cast<std::uint16_t>(avail_idx - last_avail_);
    if (pending == 0) return std::optional<DescriptorChain>{};
    if (pending > size_) return make_error(VirtioErrc::bad_avail_index, "virtqueue pop");

    std::uint16_t head = SWV_TRY(read_u16(driver_ + 4 + 2 * std::uint64_t{static_cast<std::uint16_t>(last_avail_ % size_)}));
    if (head >= size_) return make_error(VirtioErrc::bad_descriptor_index, "virtqueue pop");

    DescriptorChain chain{head, {}};
    std::uint16_t idx = head;
    bool seen_writable = false;
    for (;;) {
        // A chain visits each descriptor at most once, so more than `size` steps is a loop.
        if (chain.descriptors.size() >= size_) return make_error(VirtioErrc::descriptor_loop, "virtqueue pop");
        struct {
            std::uint64_t addr;
            std::uint32_t len;
            std::uint16_t flags;
            std::uint16_t next;
        } raw;
        static_assert(sizeof raw == kDescBytes);
        SWV_TRY(mem_->read(Gpa(desc_ + kDescBytes * idx), std::as_writable_bytes(std::span(&raw, 1))));
        if (raw.flags & kDescFlagIndirect) return make_error(VirtioErrc::indirect_descriptor, "virtqueue pop");
        bool writable = raw.flags & kDescFlagWrite;
        if (!writable && seen_writable) return make_error(VirtioErrc::readable_after_writable, "virtqueue pop");
        seen_writable = seen_writable || writable;
        chain.descriptors.push_back(VirtqDescriptor{Gpa(raw.addr), raw.len, writable});
        if (!(raw.flags & kDescFlagNext)) break;
        if (raw.next >= size_) return make_error(VirtioErrc::bad_descriptor_index, "virtqueue pop");
        idx = raw.next;
    }
    ++last_avail_;
    return std::optional<DescriptorChain>(std::move(chain));
}

Result<void> SplitQueue::push_used(std::uint16_t head, std::uint32_t written) {
    SWV_ASSERT(ready_, "push to a queue that is not ready");
    struct {
        std::uint32_t id;
        std::uint32_t len;
    } elem{head, written};
    std::uint64_t slot = static_cast<std::uint16_t>(next_used_ % size_);
    SWV_TRY(mem_->write(Gpa(device_ + 4 + 8 * slot), std::as_bytes(std::span(&elem, 1))));
    // The element must be visible before the index that publishes it (pairs with the
    // driver's read barrier after reading used->idx).
    std::atomic_thread_fence(std::memory_order_release);
    ++next_used_;
    std::uint16_t idx = next_used_;
    SWV_TRY(mem_->write(Gpa(device_ + 2), std::as_bytes(std::span(&idx, 1))));
    ++used_since_interrupt_;
    return {};
}

Result<bool> SplitQueue::take_interrupt_request() {
    if (used_since_interrupt_ == 0) return false;
    used_since_interrupt_ = 0;
    // The used index is published before the driver's flags are read (a full fence:
    // the driver may set NO_INTERRUPT concurrently and then re-check the used ring).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    std::uint16_t flags = SWV_TRY(read_u16(driver_));
    return !(flags & kAvailFlagNoInterrupt);
}

// --- VirtioMmio --------------------------------------------------------------------------

VirtioMmio::VirtioMmio(guestmem::GuestMemory& mem, std::shared_ptr<VirtioDevice> device, IrqCallback irq)
    : mem_(mem), device_(std::move(device)), irq_(std::move(irq)) {
    SWV_ASSERT(device_ != nullptr, "virtio-mmio without a device");
    unsigned n = device_->queue_count(device_->device_features());
    queues_.reserve(n);
    for (unsigned i = 0; i < n; ++i) {
        queues_.emplace_back(mem_, device_->queue_max_size());
        queues_.back().reset();
    }
}

unsigned VirtioMmio::existing_queues() const {
    return std::min<unsigned>(device_->queue_count(driver_features_), static_cast<unsigned>(queues_.size()));
}

SplitQueue* VirtioMmio::selected_queue() {
    return queue_sel_ < existing_queues() ? &queues_[queue_sel_] : nullptr;
}

const SplitQueue* VirtioMmio::selected_queue() const {
    return queue_sel_ < existing_queues() ? &queues_[queue_sel_] : nullptr;
}

void VirtioMmio::read(std::uint64_t offset, std::span<std::byte> data) {
    std::lock_guard lock(mutex_);
    if (offset >= virtio_reg::kConfig) {
        std::fill(data.begin(), data.end(), std::byte{0});
        device_->read_config(offset - virtio_reg::kConfig, data);
        return;
    }
    // Registers are 32 bits wide and 32-bit aligned; anything else reads as zero.
    if (data.size() != 4 || offset % 4 != 0) {
        std::fill(data.begin(), data.end(), std::byte{0});
        return;
    }
    store_le(data, read_register(offset));
}

std::uint32_t VirtioMmio::read_register(std::uint64_t offset) const {
    namespace r = virtio_reg;
    const SplitQueue* q = selected_queue();
    switch (offset) {
        case r::kMagic: return kVirtioMmioMagic;
        case r::kVersion: return kVirtioMmioVersion;
        case r::kDeviceId: return device_->device_id();
        case r::kVendorId: return kVirtioVendorId;
        case r::kDeviceFeatures: {
            std::uint64_t f = device_->device_features();
            if (device_features_sel_ == 0) return static_cast<std::uint32_t>(f);
            if (device_features_sel_ == 1) return static_cast<std::uint32_t>(f >> 32);
            return 0;
        }
        case r::kQueueNumMax: return q ? q->max_size() : 0;
        case r::kQueueReady: return q && q->ready() ? 1 : 0;
        case r::kInterruptStatus: return interrupt_status_;
        case r::kStatus: return status_;
        case r::kShmLenLow:
        case r::kShmLenHigh:
        case r::kShmBaseLow:
        case r::kShmBaseHigh: return 0xffff'ffff;  // no shared memory regions
        case r::kConfigGeneration: return config_generation_;
        default: return 0;  // write-only or reserved
    }
}

BusAction VirtioMmio::write(std::uint64_t offset, std::span<const std::byte> data) {
    std::lock_guard lock(mutex_);
    if (offset >= virtio_reg::kConfig) {
        device_->write_config(offset - virtio_reg::kConfig, data);
        return BusAction::resume();
    }
    if (data.size() != 4 || offset % 4 != 0) {
        if (log_budget()) spdlog::debug("virtio-mmio: {}-byte write to register {:#x} ignored", data.size(), offset);
        return BusAction::resume();
    }
    write_register(offset, load_le(data));
    return BusAction::resume();
}

void VirtioMmio::write_register(std::uint64_t offset, std::uint32_t value) {
    namespace r = virtio_reg;
    // Queue registers may change only after FEATURES_OK, while that queue is not
    // ready, and not once the device has given up (NEEDS_RESET).
    SplitQueue* q = selected_queue();
    bool queue_writable = q && !q->ready() && (status_ & kStatusFeaturesOk) && !(status_ & kStatusNeedsReset);
    auto set_half = [](std::uint64_t old, std::uint32_t v, bool high) {
        return high ? (old & 0xffff'ffffULL) | (std::uint64_t{v} << 32) : (old & ~0xffff'ffffULL) | v;
    };
    switch (offset) {
        case r::kDeviceFeaturesSel: device_features_sel_ = value; return;
        case r::kDriverFeaturesSel: driver_features_sel_ = value; return;
        case r::kDriverFeatures:
            // Only between DRIVER and FEATURES_OK (virtio 1.2, 3.1.1).
            if (!(status_ & kStatusDriver) || (status_ & kStatusFeaturesOk) || driver_features_sel_ > 1) return;
            driver_features_ = set_half(driver_features_, value, driver_features_sel_ == 1);
            return;
        case r::kQueueSel: queue_sel_ = value; return;
        case r::kQueueNum:
            // A size that does not fit 16 bits becomes 0, which QueueReady refuses.
            if (queue_writable) q->set_size(value > 0xffff ? 0 : static_cast<std::uint16_t>(value));
            return;
        case r::kQueueDescLow:
        case r::kQueueDescHigh:
            if (queue_writable) q->set_desc_addr(set_half(q->desc_addr(), value, offset == r::kQueueDescHigh));
            return;
        case r::kQueueDriverLow:
        case r::kQueueDriverHigh:
            if (queue_writable) q->set_driver_addr(set_half(q->driver_addr(), value, offset == r::kQueueDriverHigh));
            return;
        case r::kQueueDeviceLow:
        case r::kQueueDeviceHigh:
            if (queue_writable) q->set_device_addr(set_half(q->device_addr(), value, offset == r::kQueueDeviceHigh));
            return;
        case r::kQueueReady:
            if (!q || !(status_ & kStatusFeaturesOk) || (status_ & kStatusNeedsReset)) return;
            if (value == 0) {
                q->disable();
            } else if (!q->ready()) {
                if (auto ok = q->enable(); !ok) needs_reset(queue_sel_, ok.error());
            }
            return;
        case r::kQueueNotify: notify(value); return;
        case r::kInterruptAck: {
            std::uint32_t before = interrupt_status_;
            interrupt_status_ &= ~value;
            if (before != 0 && interrupt_status_ == 0 && irq_) irq_(IrqLevel::low);
            return;
        }
        case r::kStatus: write_status(value); return;
        default:
            if (log_budget()) spdlog::debug("virtio-mmio: write {:#x} to read-only/reserved register {:#x}", value, offset);
            return;
    }
}

void VirtioMmio::write_status(std::uint32_t value) {
    if (value == 0) {
        reset_locked();
        return;
    }
    std::uint32_t old = status_;
    // NEEDS_RESET is the device's bit: the driver can neither set nor clear it.
    std::uint32_t next = (value & ~kStatusNeedsReset) | (old & kStatusNeedsReset);
    if ((next & kStatusFeaturesOk) && !(old & kStatusFeaturesOk)) {
        std::uint64_t offered = device_->device_features();
        bool acceptable = (driver_features_ & ~offered) == 0 && (driver_features_ & kVirtioFVersion1);
        // Refused: FEATURES_OK stays clear, which the driver reads back (3.1.1 step 6).
        if (!acceptable) next &= ~kStatusFeaturesOk;
    }
    status_ = next;
    if ((next & kStatusDriverOk) && !(old & kStatusDriverOk) && config_change_pending_) {
        config_change_pending_ = false;
        raise(kInterruptConfigChange);
    }
}

void VirtioMmio::notify(std::uint32_t index) {
    bool usable = (status_ & kStatusDriverOk) && !(status_ & kStatusNeedsReset) && index < existing_queues() &&
                  queues_[index].ready();
    if (!usable) {
        ++stats_.ignored_notifies;
        return;
    }
    ++stats_.notifies;
    SplitQueue& q = queues_[index];
    if (auto done = device_->process_queue(index, q, driver_features_); !done) {
        needs_reset(index, done.error());
        return;
    }
    auto wanted = q.take_interrupt_request();
    if (!wanted) {
        needs_reset(index, wanted.error());
        return;
    }
    if (*wanted) raise(kInterruptUsedBuffer);
}

void VirtioMmio::needs_reset(unsigned index, const Error& why) {
    if (log_budget())
        spdlog::warn("virtio-mmio (device {}): queue {} malformed, device needs reset: {}", device_->device_id(),
                     index, why.message());
    if (!(status_ & kStatusNeedsReset)) ++stats_.needs_reset;
    status_ |= kStatusNeedsReset;
    for (SplitQueue& q : queues_) q.disable();
    // The driver learns of it through a configuration change notification (2.1.2).
    if (status_ & kStatusDriverOk) raise(kInterruptConfigChange);
}

void VirtioMmio::raise(std::uint32_t bits) {
    std::uint32_t before = interrupt_status_;
    interrupt_status_ |= bits;
    ++stats_.interrupts;
    if (before == 0 && irq_) irq_(IrqLevel::high);
}

void VirtioMmio::reset_locked() {
    device_->reset();
    for (SplitQueue& q : queues_) q.reset();
    bool line_high = interrupt_status_ != 0;
    status_ = 0;
    device_features_sel_ = driver_features_sel_ = 0;
    driver_features_ = 0;
    queue_sel_ = 0;
    interrupt_status_ = 0;
    config_change_pending_ = false;
    ++stats_.resets;
    if (line_high && irq_) irq_(IrqLevel::low);
}

void VirtioMmio::notify_config_change() {
    std::lock_guard lock(mutex_);
    ++config_generation_;
    if ((status_ & kStatusDriverOk) && !(status_ & kStatusNeedsReset)) {
        raise(kInterruptConfigChange);
    } else {
        config_change_pending_ = true;
    }
}

std::uint32_t VirtioMmio::status() const {
    std::lock_guard lock(mutex_);
    return status_;
}

VirtioMmioStats VirtioMmio::stats() const {
    std::lock_guard lock(mutex_);
    return stats_;
}

}  // namespace swapvisor::vmm::devices
