// VirtioMmio: register decoding, feature negotiation, DEVICE_NEEDS_RESET and the
// interrupt status (vmm/devices/virtio_mmio.hpp for the invariants; the rings
// themselves are virtqueue.cpp).
#include "vmm/devices/virtio_mmio.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace swapvisor::vmm::devices {

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

}  // namespace

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
        case r::kInterruptStatus: {
            std::lock_guard irq(irq_mutex_);
            return interrupt_status_;
        }
        case r::kStatus: return status_;
        case r::kShmLenLow:
        case r::kShmLenHigh:
        case r::kShmBaseLow:
        case r::kShmBaseHigh: return 0xffff'ffff;  // no shared memory regions
        case r::kConfigGeneration: {
            std::lock_guard irq(irq_mutex_);
            return config_generation_;
        }
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
        if (log_budget_.take()) spdlog::debug("virtio-mmio: {}-byte write to register {:#x} ignored", data.size(), offset);
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
    // A 64-bit address is written as two 32-bit registers; `half` says which.
    enum class Half : bool { low, high };
    auto set_half = [](std::uint64_t old, std::uint32_t v, Half half) {
        return half == Half::high ? (old & 0xffff'ffffULL) | (std::uint64_t{v} << 32) : (old & ~0xffff'ffffULL) | v;
    };
    auto half_at = [](std::uint64_t offset, std::uint64_t high_offset) {
        return offset == high_offset ? Half::high : Half::low;
    };
    switch (offset) {
        case r::kDeviceFeaturesSel: device_features_sel_ = value; return;
        case r::kDriverFeaturesSel: driver_features_sel_ = value; return;
        case r::kDriverFeatures:
            // Only between DRIVER and FEATURES_OK (virtio 1.2, 3.1.1).
            if (!(status_ & kStatusDriver) || (status_ & kStatusFeaturesOk) || driver_features_sel_ > 1) return;
            driver_features_ = set_half(driver_features_, value, half_at(driver_features_sel_, 1));
            return;
        case r::kQueueSel: queue_sel_ = value; return;
        case r::kQueueNum:
            // A size that does not fit 16 bits becomes 0, which QueueReady refuses.
            if (queue_writable) q->set_size(value > 0xffff ? 0 : static_cast<std::uint16_t>(value));
            return;
        case r::kQueueDescLow:
        case r::kQueueDescHigh:
            if (queue_writable) q->set_desc_addr(set_half(q->desc_addr(), value, half_at(offset, r::kQueueDescHigh)));
            return;
        case r::kQueueDriverLow:
        case r::kQueueDriverHigh:
            if (queue_writable) q->set_driver_addr(set_half(q->driver_addr(), value, half_at(offset, r::kQueueDriverHigh)));
            return;
        case r::kQueueDeviceLow:
        case r::kQueueDeviceHigh:
            if (queue_writable) q->set_device_addr(set_half(q->device_addr(), value, half_at(offset, r::kQueueDeviceHigh)));
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
            std::lock_guard irq(irq_mutex_);
            std::uint32_t before = interrupt_status_;
            interrupt_status_ &= ~value;
            if (before != 0 && interrupt_status_ == 0 && irq_) irq_(IrqLevel::low);
            return;
        }
        case r::kStatus: write_status(value); return;
        default:
            if (log_budget_.take()) spdlog::debug("virtio-mmio: write {:#x} to read-only/reserved register {:#x}", value, offset);
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
    {
        // A config change noted before DRIVER_OK is raised now; under irq_mutex_ with
        // the status change, so a notify_config_change() racing it is either pending
        // here or sees DRIVER_OK and raises it itself.
        std::lock_guard irq(irq_mutex_);
        status_ = next;
        if ((next & kStatusDriverOk) && !(old & kStatusDriverOk) && config_change_pending_) {
            config_change_pending_ = false;
            raise_locked(kInterruptConfigChange);
        }
    }
    if ((next & kStatusDriverOk) && !(old & kStatusDriverOk)) {
        for (unsigned i = 0; i < existing_queues(); ++i)
            if (queues_[i].ready() && device_->process_when_live(i, driver_features_)) notify(i);
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

void VirtioMmio::set_device_work(DeviceWork work) {
    std::lock_guard lock(mutex_);
    device_work_ = work;
}

void VirtioMmio::poll_device() {
    std::lock_guard lock(mutex_);
    if (device_work_ == DeviceWork::hold) return;
    if (!(status_ & kStatusDriverOk) || (status_ & kStatusNeedsReset)) return;
    const unsigned n = existing_queues();
    if (auto done = device_->poll(std::span(queues_).first(n), driver_features_); !done) {
        needs_reset(n, done.error());  // n: no single queue is to blame
        return;
    }
    for (unsigned i = 0; i < n; ++i) {
        if (!queues_[i].ready()) continue;
        auto wanted = queues_[i].take_interrupt_request();
        if (!wanted) {
            needs_reset(i, wanted.error());
            return;
        }
        if (*wanted) raise(kInterruptUsedBuffer);
    }
}

void VirtioMmio::needs_reset(unsigned index, const Error& why) {
    if (log_budget_.take())
        spdlog::warn("virtio-mmio (device {}): queue {} malformed, device needs reset: {}", device_->device_id(),
                     index, why.message());
    if (!(status_ & kStatusNeedsReset)) ++stats_.needs_reset;
    for (SplitQueue& q : queues_) q.disable();
    std::lock_guard irq(irq_mutex_);
    status_ |= kStatusNeedsReset;
    // The driver learns of it through a configuration change notification (2.1.2).
    if (status_ & kStatusDriverOk) raise_locked(kInterruptConfigChange);
}

void VirtioMmio::raise(std::uint32_t bits) {
    std::lock_guard irq(irq_mutex_);
    raise_locked(bits);
}

void VirtioMmio::raise_locked(std::uint32_t bits) {
    std::uint32_t before = interrupt_status_;
    interrupt_status_ |= bits;
    ++interrupts_;
    if (before == 0 && irq_) irq_(IrqLevel::high);
}

void VirtioMmio::reset_locked() {
    device_->reset();
    for (SplitQueue& q : queues_) q.reset();
    device_features_sel_ = driver_features_sel_ = 0;
    driver_features_ = 0;
    queue_sel_ = 0;
    ++stats_.resets;
    std::lock_guard irq(irq_mutex_);
    bool line_high = interrupt_status_ != 0;
    status_ = 0;
    interrupt_status_ = 0;
    config_change_pending_ = false;
    if (line_high && irq_) irq_(IrqLevel::low);
}

// Issue #16 item 8: only irq_mutex_, never mutex_, which a vCPU holds across a
// queue's work (a balloon inflate over gigabytes, swap-ins included): the control
// socket's set-balloon must not wait for that.
void VirtioMmio::notify_config_change() {
    std::lock_guard irq(irq_mutex_);
    ++config_generation_;
    if ((status_ & kStatusDriverOk) && !(status_ & kStatusNeedsReset)) {
        raise_locked(kInterruptConfigChange);
    } else {
        config_change_pending_ = true;
    }
}

std::uint32_t VirtioMmio::status() const {
    std::lock_guard irq(irq_mutex_);
    return status_;
}

VirtioMmioState VirtioMmio::save() const {
    std::lock_guard lock(mutex_);
    VirtioMmioState out;
    out.device_id = device_->device_id();
    out.device_features_sel = device_features_sel_;
    out.driver_features_sel = driver_features_sel_;
    out.driver_features = driver_features_;
    out.queue_sel = queue_sel_;
    for (const SplitQueue& q : queues_) out.queues.push_back(q.save());
    std::lock_guard irq(irq_mutex_);
    out.status = status_;
    out.interrupt_status = interrupt_status_;
    out.config_generation = config_generation_;
    out.config_change_pending = config_change_pending_;
    return out;
}

Result<void> VirtioMmio::restore(const VirtioMmioState& state) {
    std::lock_guard lock(mutex_);
    auto bad = [](std::string what) { return make_error(VirtioErrc::bad_saved_state, "virtio-mmio restore", std::move(what)); };
    if (state.device_id != device_->device_id())
        return bad(fmt::format("device id {} saved, this device is {}", state.device_id, device_->device_id()));
    if (state.queues.size() != queues_.size())
        return bad(fmt::format("{} queues saved, this device has {}", state.queues.size(), queues_.size()));
    if (state.driver_features & ~device_->device_features())
        return bad(fmt::format("driver features {:#x} not all offered ({:#x})", state.driver_features,
                               device_->device_features()));
    // Check every queue before changing any (all or nothing).
    for (std::size_t i = 0; i < queues_.size(); ++i) {
        SplitQueue probe(mem_, device_->queue_max_size());
        probe.reset();
        if (auto r = probe.restore(state.queues[i]); !r)
            return std::unexpected(std::move(r.error()).with_context(fmt::format("queue {}", i)));
    }
    for (std::size_t i = 0; i < queues_.size(); ++i) SWV_ASSERT(queues_[i].restore(state.queues[i]).has_value(), "a checked queue state refused");
    device_features_sel_ = state.device_features_sel;
    driver_features_sel_ = state.driver_features_sel;
    driver_features_ = state.driver_features;
    queue_sel_ = state.queue_sel;
    std::lock_guard irq(irq_mutex_);
    status_ = state.status;
    interrupt_status_ = state.interrupt_status;
    config_generation_ = state.config_generation;
    config_change_pending_ = state.config_change_pending;
    if (interrupt_status_ != 0 && irq_) irq_(IrqLevel::high);
    return {};
}

VirtioMmioStats VirtioMmio::stats() const {
    std::lock_guard lock(mutex_);
    VirtioMmioStats out = stats_;
    std::lock_guard irq(irq_mutex_);
    out.interrupts = interrupts_;
    return out;
}

}  // namespace swapvisor::vmm::devices
