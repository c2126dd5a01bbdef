// SplitQueue: the checks on ring placement and the split-ring walk
// (vmm/devices/virtqueue.hpp for the invariants).
#include "vmm/devices/virtqueue.hpp"

#include <atomic>
#include <bit>
#include <span>
#include <string>

#include "vmm/error_category.hpp"

namespace swapvisor::vmm::devices {

using guestmem::Gpa;

namespace {

std::string describe(VirtioErrc e) {
    switch (e) {
        case VirtioErrc::bad_queue_size: return "queue size zero, not a power of two or above the maximum";
        case VirtioErrc::bad_ring_address: return "ring misaligned or not inside guest RAM";
        case VirtioErrc::bad_avail_index: return "available index more than the queue size ahead";
        case VirtioErrc::bad_descriptor_index: return "descriptor index outside the table";
        case VirtioErrc::descriptor_loop: return "descriptor chain longer than the queue (a loop)";
        case VirtioErrc::indirect_descriptor: return "indirect descriptor without VIRTIO_F_INDIRECT_DESC";
        case VirtioErrc::readable_after_writable: return "device-readable descriptor after a writable one";
        case VirtioErrc::bad_saved_state: return "saved device state does not fit this device";
    }
    return "unknown virtio error";
}

}  // namespace

const std::error_category& virtio_category() {
    static const EnumCategory<VirtioErrc> category("virtio", describe);
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

// Ring sizes in bytes (virtio 1.2, 2.7): descriptor table, available ring (flags,
// idx, ring[size], used_event), used ring (flags, idx, ring[size] of {id, len},
// avail_event).
constexpr std::uint64_t kDescBytes = 16;
std::uint64_t avail_bytes(std::uint16_t size) { return 6 + 2 * std::uint64_t{size}; }
std::uint64_t used_bytes(std::uint16_t size) { return 6 + 8 * std::uint64_t{size}; }

}  // namespace

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

QueueState SplitQueue::save() const {
    return QueueState{max_size_, size_, ready_, desc_, driver_, device_, last_avail_, next_used_, used_since_interrupt_};
}

Result<void> SplitQueue::restore(const QueueState& state) {
    if (state.max_size != max_size_) return make_error(VirtioErrc::bad_queue_size, "virtqueue restore");
    if (state.ready) {
        SplitQueue probe(*mem_, max_size_);
        probe.size_ = state.size;
        probe.desc_ = state.desc_addr;
        probe.driver_ = state.driver_addr;
        probe.device_ = state.device_addr;
        SWV_TRY(with_context(probe.enable(), "restore"));
        // Buffers popped but not yet returned: at most the queue size.
        if (static_cast<std::uint16_t>(state.last_avail - state.next_used) > state.size)
            return make_error(VirtioErrc::bad_avail_index, "virtqueue restore");
    }
    size_ = state.size;
    ready_ = state.ready;
    desc_ = state.desc_addr;
    driver_ = state.driver_addr;
    device_ = state.device_addr;
    last_avail_ = state.last_avail;
    next_used_ = state.next_used;
    used_since_interrupt_ = state.used_since_interrupt;
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

}  // namespace swapvisor::vmm::devices
