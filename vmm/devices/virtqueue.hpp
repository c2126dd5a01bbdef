// SplitQueue: one split virtqueue (virtio 1.2, section 2.7) as the driver programmed
// it, over guest memory: the descriptor table, the available ring and the used ring.
// It parses and checks everything the guest controls and hands the device whole
// descriptor chains; it knows nothing of registers or of the transport
// (virtio_mmio.hpp programs it from MMIO writes, a test can program it directly).
//
// Invariants:
//  - guest memory is only ever reached through guestmem (`read` / `write`): never
//    a raw pointer, so a ring in a swapped-out page is swapped in (DESIGN.md §3).
//  - everything the guest controls is validated before use: ring addresses
//    (aligned, inside one RAM region, no overflow), the size (a non-zero power of
//    two <= max), the available index (at most `size` ahead), descriptor indices,
//    chain length (at most `size`, so loops end), flags (no INDIRECT: not offered;
//    readable before writable). A violation is an Error (VirtioErrc); the transport
//    then puts the device into DEVICE_NEEDS_RESET.
//  - a whole descriptor chain is read and checked before the device acts on any
//    of it.
//
// Memory ordering with the guest: the used element is written before the used index
// with a release fence between; the available index is read before the ring slots
// it covers with an acquire fence after it. guestmem copies a 2-byte index with one
// 2-byte store/load (memcpy of a fixed small size), so the guest never sees a torn
// index.
//
// Threads: not thread safe; the owning transport's mutex serialises it.
#pragma once

#include <cstdint>
#include <optional>
#include <system_error>
#include <vector>

#include "guestmem/addr.hpp"
#include "guestmem/guest_memory.hpp"
#include "io/result.hpp"

namespace swapvisor::vmm::devices {

// Why a queue was found malformed (the transport then sets DEVICE_NEEDS_RESET).
enum class VirtioErrc {
    bad_queue_size = 1,       // zero, not a power of two, or above QueueNumMax
    bad_ring_address,         // a ring misaligned, overflowing or not inside RAM
    bad_avail_index,          // the driver claims more than `size` new buffers
    bad_descriptor_index,     // a head or `next` index >= size
    descriptor_loop,          // a chain longer than the queue: it must loop
    indirect_descriptor,      // VIRTQ_DESC_F_INDIRECT without the feature
    readable_after_writable,  // a device-readable descriptor after a writable one
    bad_saved_state,          // a snapshot's transport state does not fit this device
};
const std::error_category& virtio_category();
inline std::error_code make_error_code(VirtioErrc e) { return {static_cast<int>(e), virtio_category()}; }

}  // namespace swapvisor::vmm::devices

template <>
struct std::is_error_code_enum<swapvisor::vmm::devices::VirtioErrc> : std::true_type {};


namespace swapvisor::vmm::devices {

// True if [gpa, gpa + len) lies inside one RAM region of `mem` (len 0 counts as
// inside iff gpa is); false on overflow.
bool ram_contains(const guestmem::GuestMemory& mem, guestmem::Gpa gpa, std::uint64_t len);

// One descriptor as the driver wrote it: addr/len are the guest's raw values, not
// yet checked against RAM (what they mean is the device's business; for a
// free-page report they are the free range itself).
struct VirtqDescriptor {
    guestmem::Gpa addr;
    std::uint32_t len;
    bool device_writable;
};

struct DescriptorChain {
    std::uint16_t head;  // returned to the used ring
    std::vector<VirtqDescriptor> descriptors;
};

// Everything a SplitQueue holds, for a snapshot (docs/SNAPSHOT.md#vcpu-and-device-state):
// the driver's programming and the device's cursors, so a restored queue continues
// at the same ring indices.
struct QueueState {
    std::uint16_t max_size = 0;
    std::uint16_t size = 0;
    bool ready = false;
    std::uint64_t desc_addr = 0;
    std::uint64_t driver_addr = 0;
    std::uint64_t device_addr = 0;
    std::uint16_t last_avail = 0;
    std::uint16_t next_used = 0;
    std::uint32_t used_since_interrupt = 0;
    bool operator==(const QueueState&) const = default;
};

// A split virtqueue as the driver programmed it, with the device's cursors.
class SplitQueue {
public:
    static constexpr std::uint16_t kDescFlagNext = 1;
    static constexpr std::uint16_t kDescFlagWrite = 2;
    static constexpr std::uint16_t kDescFlagIndirect = 4;
    static constexpr std::uint16_t kAvailFlagNoInterrupt = 1;

    SplitQueue(guestmem::GuestMemory& mem, std::uint16_t max_size) : mem_(&mem), max_size_(max_size) {}

    // Driver-programmed configuration (only changed while not ready).
    std::uint16_t max_size() const { return max_size_; }
    std::uint16_t size() const { return size_; }
    bool ready() const { return ready_; }
    std::uint64_t desc_addr() const { return desc_; }
    std::uint64_t driver_addr() const { return driver_; }
    std::uint64_t device_addr() const { return device_; }
    void set_size(std::uint16_t n) { size_ = n; }
    void set_desc_addr(std::uint64_t a) { desc_ = a; }
    void set_driver_addr(std::uint64_t a) { driver_ = a; }
    void set_device_addr(std::uint64_t a) { device_ = a; }

    // QueueReady = 1: check size and ring placement, then start from index 0.
    Result<void> enable();
    void disable() { ready_ = false; }
    // Back to the reset values (size = max, addresses 0, not ready).
    void reset();

    QueueState save() const;
    // Take a saved state over (the queue of the same device in a restored VM). A
    // ready queue is checked as enable() checks it (size, ring placement in this
    // guest memory) and its cursors must be consistent (at most `size` buffers
    // popped and not yet used); unlike enable() the cursors are kept. Errors:
    // VirtioErrc, and nothing is changed.
    Result<void> restore(const QueueState& state);

    // The next available chain, fully read and checked; nullopt if none.
    Result<std::optional<DescriptorChain>> pop();
    // Return a chain to the driver with `written` bytes written into it.
    Result<void> push_used(std::uint16_t head, std::uint32_t written);
    // Used buffers since the last call, and whether the driver wants an interrupt
    // for them (VIRTQ_AVAIL_F_NO_INTERRUPT clear). Resets the count.
    Result<bool> take_interrupt_request();

private:
    Result<std::uint16_t> read_u16(std::uint64_t gpa) const;

    guestmem::GuestMemory* mem_;
    std::uint16_t max_size_;
    std::uint16_t size_ = 0;
    bool ready_ = false;
    std::uint64_t desc_ = 0;    // descriptor table, 16-byte aligned, 16 * size
    std::uint64_t driver_ = 0;  // available ring, 2-byte aligned, 6 + 2 * size
    std::uint64_t device_ = 0;  // used ring, 4-byte aligned, 6 + 8 * size
    std::uint16_t last_avail_ = 0;  // next available-ring slot to consume
    std::uint16_t next_used_ = 0;   // used index to publish next
    std::uint32_t used_since_interrupt_ = 0;
};

}  // namespace swapvisor::vmm::devices
