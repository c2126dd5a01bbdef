// SwapDevice (≈ the kernel's swap_info_struct): one block device or file in the swap
// pool, its slot allocator and its removal state (swap/README.md#devices).
//
// Slots are handed out from clusters of kClusterSlots (512 slots, 2 MiB). Each
// allocating context (a hash of the calling thread, like the kernel's per-CPU
// cluster) owns a current cluster and takes its slots in order, so one batch of
// allocations lands contiguously and goes out as one large write. Clusters move
// between a free list (no slot used), a nonfull list, `current` (owned by a context)
// and `full`.
//
// Invariants (under mutex_):
//  - bitmap bit s set  <=>  slot s allocated  <=>  rmap_[s] != 0 (its VSlot).
//  - used_ == popcount(bitmap) == sum of clusters' used counts.
//  - A cluster is on the free list iff its state is `free` (used 0), on the nonfull
//    list iff `nonfull`.
//  - No slot is allocated while state_ is `removing`, or once the device is failed
//    or degraded.
//  - bad_ bit s set  <=>  slot s is quarantined: an I/O on it failed (write, read or
//    checksum). It is never handed out again. While still allocated (a read failed,
//    the page is still swapped there) it stays in bitmap_ and used_; once freed it
//    counts in quarantined_ and stays counted in its cluster's used, so clusters
//    and the "full" test treat it as taken for good.
//  - pending_writes_ counts allocate() calls whose data is not yet final (the writer
//    still has to publish or free those slots); swapoff waits for 0 after it marks
//    the device removing, so every allocated slot it scans holds final data.
// The reference count (refs_) is separate: every I/O on the device holds a
// SwapDeviceRef; the pool destroys the device only after refs_ drains to 0.
#pragma once

#include <array>
#include <cerrno>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "io/block_device.hpp"
#include "swap/types.hpp"

namespace swapvisor::swap {

// Byte offset of a slot on its device: slots start after the header page
// (swap_header.hpp), so a slot write can never destroy the signature.
inline io::DevOffset slot_offset(SlotIdx slot) {
    return io::DevOffset((std::uint64_t{slot.value()} + 1) * kSlotSize);
}

// "device PATH, slot S, vslot V": the Error::context of a failure about one slot.
inline std::string slot_context(const std::string& device_path, SlotIdx slot, VSlot vslot) {
    return "device " + device_path + ", slot " + std::to_string(slot.value()) + ", vslot " +
           std::to_string(vslot.value());
}

// removing: swapoff runs. failed: a write hit ENOSPC (a sparse or shrunken file, a
// thin device out of space). degraded: `degrade_after` I/Os in a row failed (EIO,
// short transfer, checksum mismatch). Failed and degraded devices get no new slots;
// what they hold stays readable and swapoff can still empty them.
enum class DeviceState : std::uint8_t { active, removing, failed, degraded };
const char* state_name(DeviceState state);

struct DeviceUsage {
    std::uint64_t total_slots = 0;
    std::uint64_t used_slots = 0;
    DeviceState state = DeviceState::active;
    std::uint64_t write_errors = 0;       // write ops that failed (ENOSPC, EIO, short)
    std::uint64_t read_errors = 0;        // read ops that failed, and checksum mismatches
    std::uint64_t quarantined_slots = 0;  // slots never handed out again (bad_), in use or not
    std::uint64_t free_slots = 0;         // slots allocate() may still hand out: total - used - freed bad
    std::string failure;                  // why the device failed or degraded (else empty)
    std::uint64_t read_bytes = 0;         // moved by read ops that succeeded (whole buffer)
    std::uint64_t written_bytes = 0;      // moved by write ops that succeeded (whole buffer)
    std::uint64_t read_retries = 0;       // reads the device itself issued again (NBD: a lost connection)
};

// How many failed I/Os in a row make a device degraded (SwapPoolConfig).
struct DeviceHealthPolicy {
    std::uint32_t degrade_after = 8;
};

// The write results by which a memory tier refuses a page (memory_tier.hpp):
// -EMSGSIZE (it does not compress enough), -ENOBUFS (no room in the tier's arena).
inline bool is_rejection(int result) { return result == -EMSGSIZE || result == -ENOBUFS; }

class MemoryStore;

// A slot that swapoff found allocated, and the vslot the reverse map names for it.
struct UsedSlot {
    SlotIdx slot;
    VSlot vslot;
};

class SwapDevice {
public:
    static constexpr unsigned kAllocContexts = 8;

    // total_slots = slots after the header page (a partial last cluster is used).
    // The device watches its own I/O (IoWatch in swap_device.cpp): an ENOSPC marks
    // it failed, health.degrade_after failures in a row degraded.
    SwapDevice(std::unique_ptr<io::BlockDevice> block, DeviceId id, int priority, std::string path,
               DeviceHealthPolicy health = {});
    SwapDevice(const SwapDevice&) = delete;
    SwapDevice& operator=(const SwapDevice&) = delete;

    DeviceId id() const { return id_; }
    int priority() const { return priority_; }
    const std::string& path() const { return path_; }
    io::BlockDevice& block() { return *watch_; }
    // The compressed store behind a memory tier; null for files, block devices, NBD.
    MemoryStore* memory() const { return memory_; }
    std::optional<io::DeviceIdentity> identity() const { return block_->identity(); }
    std::uint64_t total_slots() const { return total_slots_; }
    // Host memory per slot of the device, used or not: the reverse map, the
    // allocation and quarantine bits and a share of the cluster record.
    static constexpr double bytes_per_slot();
    std::uint64_t cluster_count() const { return clusters_.size(); }
    DeviceUsage usage() const;

    // Allocate up to vslots.size() slots for the context (0..kAllocContexts-1),
    // recording vslots[i] in the reverse map of the i-th slot; appends the slots to
    // `out` and returns how many. Returns 0 if the device is removing or full. A
    // non-zero return opens a pending write: the caller calls end_write() once its
    // slots are published or freed.
    std::size_t allocate(std::span<const VSlot> vslots, unsigned context, std::vector<SlotIdx>& out);
    void end_write();
    // Take one given slot for vslot (adoption of a slot a snapshot holds, before the
    // device is published: swap/README.md#held-vslots). False if it is out of range,
    // used or quarantined.
    bool reserve(SlotIdx slot, VSlot vslot);
    // Release slots (bitmap, reverse map, cluster counts). A quarantined slot is
    // released into quarantine instead: it is never allocated again.
    void free_slots(std::span<const SlotIdx> slots);
    // An I/O on this allocated slot failed, or its data failed its checksum:
    // quarantine it (takes effect when it is freed; counted once). A slot that is
    // free already is left alone (it may have been handed out again).
    void quarantine(SlotIdx slot);
    bool quarantined(SlotIdx slot) const;
    // A read's data failed its checksum: counts as a failed read (health).
    void note_checksum_error();
    // The vslot the reverse map names for an allocated slot (kNoVSlot if free).
    VSlot reverse(SlotIdx slot) const;

    // Removal (swap/README.md#removal).
    bool begin_removal();   // active or failed -> removing; false if already removing
    void cancel_removal();  // removing -> active (or failed, if it failed)
    // The outcome of one op on the device (`result` as in io::BlockIo, `expected`
    // its length): failures are counted, `degrade_after` in a row mark the device
    // degraded, ENOSPC on a write marks it failed (each once, logged with its name);
    // a success ends the run of failures and counts its bytes (DeviceUsage::read_bytes,
    // written_bytes: only whole transfers; a short one is a failure and counts none).
    void note_io(io::IoKind kind, int result, std::size_t expected);
    void wait_writes_done();
    // Collect allocated slots at or after `cursor` into out, scanning the bitmap a
    // word at a time and skipping empty words; advances cursor past the last one
    // returned. Returns how many (0: none left after cursor).
    std::size_t scan_used(std::uint64_t& cursor, std::span<UsedSlot> out) const;

    // References (get_swap_device / put_swap_device). get() is called only by the
    // pool, under its device-table lock, so no new reference appears once the
    // device is unpublished.
    void get() { refs_.fetch_add(1); }
    void put();
    void wait_refs_drained();

private:
    enum class ClusterState : std::uint8_t { free, current, nonfull, full };
    static constexpr std::uint32_t kNone = UINT32_MAX;
    struct Cluster {
        std::uint32_t used = 0;
        std::uint32_t next = kNone;  // list links (free or nonfull list)
        std::uint32_t prev = kNone;
        ClusterState state = ClusterState::free;
    };
    struct ClusterList {
        std::uint32_t head = kNone;
        std::uint32_t tail = kNone;
    };
    struct Cursor {
        std::uint32_t cluster = kNone;
        std::uint32_t next = 0;  // next slot offset within the cluster to try
    };

    std::uint32_t cluster_slots(std::uint32_t c) const;
    bool test(std::uint32_t s) const { return (bitmap_[s / 64] >> (s % 64)) & 1; }
    bool bad(std::uint32_t s) const { return (bad_[s / 64] >> (s % 64)) & 1; }
    bool usable(std::uint32_t s) const { return !test(s) && !bad(s); }
    void note_failure_locked(io::IoKind kind, int result);
    void take_slot(std::uint32_t s, VSlot v);
    std::uint32_t take_cluster();
    void release_current(Cursor& cur);
    void list_push(ClusterList& list, std::uint32_t c);
    void list_remove(ClusterList& list, std::uint32_t c);

    class IoWatch;

    const std::unique_ptr<io::BlockDevice> block_;
    const std::unique_ptr<io::BlockDevice> watch_;  // block_ seen through IoWatch
    MemoryStore* const memory_;                      // block_ if it is a memory tier
    const DeviceId id_;
    const int priority_;
    const std::string path_;
    const std::uint64_t total_slots_;
    const DeviceHealthPolicy health_;

    // Protects: everything below up to refs_; Order: after SwapPool::devices_mutex_.
    mutable std::mutex mutex_;
    std::condition_variable writes_done_;
    DeviceState state_ = DeviceState::active;
    bool failed_ = false;    // sticky: survives a swapoff that is cancelled
    bool degraded_ = false;  // sticky too
    std::string failure_;
    std::uint64_t write_errors_ = 0;
    std::uint64_t read_errors_ = 0;
    std::uint64_t read_bytes_ = 0;
    std::uint64_t written_bytes_ = 0;
    std::uint32_t errors_in_a_row_ = 0;
    std::uint64_t used_ = 0;
    std::uint64_t quarantined_ = 0;       // bad and no longer allocated
    std::uint64_t bad_count_ = 0;         // popcount(bad_)
    std::vector<std::uint64_t> bad_;      // quarantined slots, one bit per slot
    std::uint64_t pending_writes_ = 0;
    std::vector<std::uint64_t> bitmap_;   // the swap_map, one bit per slot
    std::vector<std::uint32_t> rmap_;     // PSlot -> VSlot
    std::vector<Cluster> clusters_;
    ClusterList free_clusters_;
    ClusterList nonfull_clusters_;
    std::array<Cursor, kAllocContexts> cursors_{};

    std::atomic<std::uint32_t> refs_{0};
    // Protects: the 1 -> 0 step of refs_ and its wake-up (put, wait_refs_drained);
    // Order: leaf.
    std::mutex refs_mutex_;
    std::condition_variable refs_drained_;
};

// RAII device reference: the device stays alive (not destroyed by swapoff) while
// one is held.
constexpr double SwapDevice::bytes_per_slot() {
    return sizeof(std::uint32_t) + 2.0 / 8 + static_cast<double>(sizeof(Cluster)) / kClusterSlots;
}

class SwapDeviceRef {
public:
    SwapDeviceRef() = default;
    explicit SwapDeviceRef(SwapDevice* dev) : dev_(dev) {}  // adopts a get()
    SwapDeviceRef(SwapDeviceRef&& o) noexcept : dev_(std::exchange(o.dev_, nullptr)) {}
    SwapDeviceRef& operator=(SwapDeviceRef&& o) noexcept {
        if (this != &o) {
            reset();
            dev_ = std::exchange(o.dev_, nullptr);
        }
        return *this;
    }
    SwapDeviceRef(const SwapDeviceRef&) = delete;
    SwapDeviceRef& operator=(const SwapDeviceRef&) = delete;
    ~SwapDeviceRef() { reset(); }

    void reset() {
        if (dev_ != nullptr) std::exchange(dev_, nullptr)->put();
    }
    SwapDevice* get() const { return dev_; }
    SwapDevice* operator->() const { return dev_; }
    explicit operator bool() const { return dev_ != nullptr; }

private:
    SwapDevice* dev_ = nullptr;
};

}  // namespace swapvisor::swap
