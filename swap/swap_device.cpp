// SwapDevice: cluster allocator, swap_map bitmap, reverse map and removal state
// (swap/README.md#devices). All of it under one mutex per device; the pool never
// holds a vslot stripe lock while calling in here.
#include "swap/swap_device.hpp"

#include "swap/memory_tier.hpp"

#include <spdlog/spdlog.h>

#include <bit>
#include <cstring>

#include "swap/swap_header.hpp"

namespace swapvisor::swap {

const char* state_name(DeviceState state) {
    switch (state) {
        case DeviceState::active: return "active";
        case DeviceState::removing: return "removing";
        case DeviceState::failed: return "failed";
        case DeviceState::degraded: return "degraded";
    }
    return "unknown";
}

// Every I/O of the pool on this device goes through here (SwapDevice::block()), so a
// failed op is seen where it happens, whoever issued it (write_out, read_in,
// swapoff), and the device stops taking slots before the next batch picks it.
class SwapDevice::IoWatch final : public io::BlockDevice {
public:
    IoWatch(SwapDevice& owner, io::BlockDevice& inner) : owner_(owner), inner_(inner) {}
    const std::string& path() const override { return inner_.path(); }
    std::uint64_t size_bytes() const override { return inner_.size_bytes(); }
    std::uint32_t logical_block_size() const override { return inner_.logical_block_size(); }
    std::optional<io::DeviceIdentity> identity() const override { return inner_.identity(); }
    std::uint64_t read_retries() const override { return inner_.read_retries(); }
    bool merges_runs() const override { return inner_.merges_runs(); }
    void release(io::DevOffset offset, std::uint64_t len) override { inner_.release(offset, len); }
    Result<void> submit(io::Ring& ring, std::span<io::BlockIo> ios) override {
        Result<void> r = inner_.submit(ring, ios);
        // A refused batch or a broken ring: no op of it moved anything.
        for (const io::BlockIo& io : ios) owner_.note_io(io.kind, r ? io.result : -EIO, io.buf.size());
        return r;
    }
    Result<void> flush(io::Ring& ring) override {
        Result<void> r = inner_.flush(ring);
        if (!r && r.error().is(std::errc::no_space_on_device)) owner_.note_io(io::IoKind::write, -ENOSPC, 1);
        return r;
    }

private:
    SwapDevice& owner_;
    io::BlockDevice& inner_;
};

SwapDevice::SwapDevice(std::unique_ptr<io::BlockDevice> block, DeviceId id, int priority, std::string path,
                       DeviceHealthPolicy health)
    : block_(std::move(block)),
      watch_(std::make_unique<IoWatch>(*this, *block_)),
      memory_(dynamic_cast<MemoryStore*>(block_.get())),
      id_(id),
      priority_(priority),
      path_(std::move(path)),
      total_slots_(slots_after_header(block_->size_bytes())),
      health_(health) {
    SWV_ASSERT(health_.degrade_after > 0, "SwapDevice: degrade_after must be at least 1");
    SWV_ASSERT(total_slots_ >= kClusterSlots && total_slots_ <= UINT32_MAX, "SwapDevice: size out of range");
    bitmap_.assign((total_slots_ + 63) / 64, 0);
    bad_.assign((total_slots_ + 63) / 64, 0);
    rmap_.assign(total_slots_, 0);
    clusters_.resize((total_slots_ + kClusterSlots - 1) / kClusterSlots);
    for (std::uint32_t c = 0; c < clusters_.size(); ++c) list_push(free_clusters_, c);
}

std::uint32_t SwapDevice::cluster_slots(std::uint32_t c) const {
    std::uint64_t base = std::uint64_t{c} * kClusterSlots;
    return static_cast<std::uint32_t>(std::min<std::uint64_t>(kClusterSlots, total_slots_ - base));
}

DeviceUsage SwapDevice::usage() const {
    std::lock_guard lock(mutex_);
    DeviceState shown = state_ == DeviceState::removing ? state_
                        : failed_                       ? DeviceState::failed
                        : degraded_                     ? DeviceState::degraded
                                                        : state_;
    // A bad slot still allocated is in used_ as well as bad_count_: free space is
    // what is neither used nor quarantined after being freed (quarantined_).
    return DeviceUsage{total_slots_, used_,    shown,    write_errors_, read_errors_, bad_count_,
                       total_slots_ - used_ - quarantined_, failure_, read_bytes_, written_bytes_,
                       block_->read_retries()};
}

void SwapDevice::note_io(io::IoKind kind, int result, std::size_t expected) {
    if (kind == io::IoKind::fsync) return;
    std::lock_guard lock(mutex_);
    if (result >= 0 && static_cast<std::size_t>(result) == expected) {
        errors_in_a_row_ = 0;
        // A read whose data then fails its checksum was still transferred: it counts
        // here and, through note_checksum_error, as a read error.
        (kind == io::IoKind::write ? written_bytes_ : read_bytes_) += expected;
        return;
    }
    // A memory tier refusing a page (it does not compress, or the tier has no room
    // for it) is a placement decision, not a failure of the device: the page goes to
    // the next device (swap/README.md#tiers).
    if (kind == io::IoKind::write && is_rejection(result)) return;
    note_failure_locked(kind, result);
}

void SwapDevice::note_checksum_error() {
    std::lock_guard lock(mutex_);
    note_failure_locked(io::IoKind::read, -EBADMSG);
}

void SwapDevice::note_failure_locked(io::IoKind kind, int result) {
    if (kind == io::IoKind::write) ++write_errors_;
    else ++read_errors_;
    ++errors_in_a_row_;
    const int error = result < 0 ? -result : EIO;  // a short transfer is an I/O error
    if (kind == io::IoKind::write && error == ENOSPC && !failed_) {
        failed_ = true;
        failure_ = Error{std::error_code(ENOSPC, std::system_category()), "swap-out write", path_}.message();
        // Once per device: the reclaimer's "no progress" warnings do not name it.
        spdlog::error("swap device {} failed: {}; no new slots are allocated on it (its pages stay readable; "
                      "swapoff it, free space, and swapon again)",
                      path_, failure_);
    } else if (errors_in_a_row_ >= health_.degrade_after && !degraded_ && !failed_) {
        degraded_ = true;
        failure_ = std::to_string(errors_in_a_row_) + " I/Os in a row failed, the last: " +
                   Error{std::error_code(error, std::system_category()),
                         kind == io::IoKind::write ? "swap-out write" : "swap-in read", path_}
                       .message();
        spdlog::error("swap device {} degraded: {}; no new slots are allocated on it (what it holds stays "
                      "readable; 'swapoff --force' takes it out even with unreadable slots)",
                      path_, failure_);
    }
}

void SwapDevice::quarantine(SlotIdx slot) {
    std::lock_guard lock(mutex_);
    const std::uint32_t s = slot.value();
    SWV_ASSERT(s < total_slots_, "quarantine: slot out of range");
    // A slot freed meanwhile may already belong to someone else: its failure was
    // about the old data, and it is checked again by its next I/O.
    if (bad(s) || !test(s)) return;
    bad_[s / 64] |= std::uint64_t{1} << (s % 64);
    ++bad_count_;
}

bool SwapDevice::quarantined(SlotIdx slot) const {
    std::lock_guard lock(mutex_);
    return slot.value() < total_slots_ && bad(slot.value());
}

void SwapDevice::list_push(ClusterList& list, std::uint32_t c) {
    Cluster& cl = clusters_[c];
    cl.next = kNone;
    cl.prev = list.tail;
    if (list.tail != kNone) clusters_[list.tail].next = c;
    else list.head = c;
    list.tail = c;
}

void SwapDevice::list_remove(ClusterList& list, std::uint32_t c) {
    Cluster& cl = clusters_[c];
    if (cl.prev != kNone) clusters_[cl.prev].next = cl.next;
    else list.head = cl.next;
    if (cl.next != kNone) clusters_[cl.next].prev = cl.prev;
    else list.tail = cl.prev;
    cl.next = cl.prev = kNone;
}

// Whole free clusters first (a batch then lands contiguously), then partly used ones.
std::uint32_t SwapDevice::take_cluster() {
    for (ClusterList* list : {&free_clusters_, &nonfull_clusters_}) {
        std::uint32_t c = list->head;
        if (c != kNone) {
            list_remove(*list, c);
            clusters_[c].state = ClusterState::current;
            return c;
        }
    }
    return kNone;
}

void SwapDevice::release_current(Cursor& cur) {
    std::uint32_t c = std::exchange(cur.cluster, kNone);
    Cluster& cl = clusters_[c];
    if (cl.used == 0) {
        cl.state = ClusterState::free;
        list_push(free_clusters_, c);
    } else if (cl.used == cluster_slots(c)) {
        cl.state = ClusterState::full;
    } else {
        cl.state = ClusterState::nonfull;
        list_push(nonfull_clusters_, c);
    }
}

void SwapDevice::take_slot(std::uint32_t s, VSlot v) {
    SWV_ASSERT(v != kNoVSlot, "take_slot: reverse map needs a vslot");
    bitmap_[s / 64] |= std::uint64_t{1} << (s % 64);
    rmap_[s] = v.value();
    clusters_[s / kClusterSlots].used++;
    used_++;
}

std::size_t SwapDevice::allocate(std::span<const VSlot> vslots, unsigned context, std::vector<SlotIdx>& out) {
    std::lock_guard lock(mutex_);
    if (state_ != DeviceState::active || failed_ || degraded_) return 0;
    std::size_t done = 0;
    Cursor& cur = cursors_[context % kAllocContexts];
    while (done < vslots.size() && used_ + quarantined_ < total_slots_) {
        if (cur.cluster == kNone) {
            cur.cluster = take_cluster();
            cur.next = 0;
            if (cur.cluster == kNone) break;  // every free slot sits in another context's cluster
        }
        std::uint32_t base = cur.cluster * kClusterSlots;
        std::uint32_t limit = cluster_slots(cur.cluster);
        while (done < vslots.size() && cur.next < limit) {
            std::uint32_t s = base + cur.next++;
            if (usable(s)) {
                take_slot(s, vslots[done]);
                out.push_back(SlotIdx(s));
                ++done;
            }
        }
        if (cur.next >= limit) release_current(cur);
    }
    // Steal from the other contexts' current clusters: a device only reports full
    // when every slot is used.
    for (unsigned k = 0; k < kAllocContexts && done < vslots.size() && used_ + quarantined_ < total_slots_; ++k) {
        std::uint32_t c = cursors_[k].cluster;
        if (c == kNone) continue;
        std::uint32_t base = c * kClusterSlots;
        for (std::uint32_t off = 0; off < cluster_slots(c) && done < vslots.size(); ++off) {
            if (usable(base + off)) {
                take_slot(base + off, vslots[done]);
                out.push_back(SlotIdx(base + off));
                ++done;
            }
        }
    }
    if (done > 0) pending_writes_++;
    return done;
}

bool SwapDevice::reserve(SlotIdx slot, VSlot vslot) {
    std::lock_guard lock(mutex_);
    const std::uint32_t s = slot.value();
    if (s >= total_slots_ || !usable(s)) return false;
    take_slot(s, vslot);
    // Keep the cluster lists true: a cluster with a used slot is never on the free list.
    const std::uint32_t c = s / kClusterSlots;
    Cluster& cl = clusters_[c];
    const bool full = cl.used == cluster_slots(c);
    switch (cl.state) {
        case ClusterState::free:
            list_remove(free_clusters_, c);
            cl.state = full ? ClusterState::full : ClusterState::nonfull;
            if (!full) list_push(nonfull_clusters_, c);
            break;
        case ClusterState::nonfull:
            if (full) {
                list_remove(nonfull_clusters_, c);
                cl.state = ClusterState::full;
            }
            break;
        case ClusterState::current:
        case ClusterState::full:
            break;
    }
    return true;
}

void SwapDevice::end_write() {
    std::lock_guard lock(mutex_);
    SWV_ASSERT(pending_writes_ > 0, "end_write without allocate");
    if (--pending_writes_ == 0) writes_done_.notify_all();
}

void SwapDevice::free_slots(std::span<const SlotIdx> slots) {
    std::lock_guard lock(mutex_);
    for (SlotIdx slot : slots) {
        std::uint32_t s = slot.value();
        SWV_ASSERT(s < total_slots_ && test(s), "free_slots: slot not allocated");
        bitmap_[s / 64] &= ~(std::uint64_t{1} << (s % 64));
        rmap_[s] = 0;
        used_--;
        // Under mutex_, before the slot can be handed out again: a memory tier frees
        // the object now, and never drops a newer one written to a reused slot.
        block_->release(slot_offset(slot), kSlotSize);
        if (bad(s)) {
            // Into quarantine: it stays taken in its cluster, so the cluster never
            // offers it again.
            ++quarantined_;
            continue;
        }
        std::uint32_t c = s / kClusterSlots;
        Cluster& cl = clusters_[c];
        cl.used--;
        switch (cl.state) {
            case ClusterState::full:
                if (cl.used == 0) {
                    cl.state = ClusterState::free;
                    list_push(free_clusters_, c);
                } else {
                    cl.state = ClusterState::nonfull;
                    list_push(nonfull_clusters_, c);
                }
                break;
            case ClusterState::nonfull:
                if (cl.used == 0) {
                    list_remove(nonfull_clusters_, c);
                    cl.state = ClusterState::free;
                    list_push(free_clusters_, c);
                }
                break;
            case ClusterState::current:
                break;  // its context releases it when it moves on
            case ClusterState::free:
                SWV_ASSERT(false, "free_slots: slot in a free cluster");
        }
    }
}

VSlot SwapDevice::reverse(SlotIdx slot) const {
    std::lock_guard lock(mutex_);
    return slot.value() < total_slots_ ? VSlot(rmap_[slot.value()]) : kNoVSlot;
}

bool SwapDevice::begin_removal() {
    std::lock_guard lock(mutex_);
    if (state_ != DeviceState::active) return false;
    state_ = DeviceState::removing;
    return true;
}

void SwapDevice::cancel_removal() {
    std::lock_guard lock(mutex_);
    state_ = DeviceState::active;
}

void SwapDevice::wait_writes_done() {
    std::unique_lock lock(mutex_);
    writes_done_.wait(lock, [&] { return pending_writes_ == 0; });
}

std::size_t SwapDevice::scan_used(std::uint64_t& cursor, std::span<UsedSlot> out) const {
    std::lock_guard lock(mutex_);
    std::size_t n = 0;
    std::uint64_t word = cursor / 64;
    std::uint64_t mask = cursor % 64 == 0 ? ~std::uint64_t{0} : ~std::uint64_t{0} << (cursor % 64);
    for (; word < bitmap_.size() && n < out.size(); ++word, mask = ~std::uint64_t{0}) {
        std::uint64_t bits = bitmap_[word] & mask;
        while (bits != 0 && n < out.size()) {
            std::uint32_t s = static_cast<std::uint32_t>(word * 64 + std::countr_zero(bits));
            bits &= bits - 1;
            out[n++] = UsedSlot{SlotIdx(s), VSlot(rmap_[s])};
            cursor = std::uint64_t{s} + 1;
        }
        if (n == out.size()) return n;
    }
    cursor = total_slots_;
    return n;
}

void SwapDevice::put() {
    // Not the last reference: nobody waits for this one.
    std::uint32_t v = refs_.load();
    while (v > 1) {
        if (refs_.compare_exchange_weak(v, v - 1)) return;
    }
    // Possibly the last: drop it and wake the waiter under refs_mutex_. The waiter
    // checks the count under the same mutex, so it cannot see 0 and destroy the
    // device while this thread still touches it (a notify after the decrement,
    // outside the lock, could run on a device already freed).
    std::lock_guard lock(refs_mutex_);
    if (refs_.fetch_sub(1) == 1) refs_drained_.notify_all();
}

void SwapDevice::wait_refs_drained() {
    std::unique_lock lock(refs_mutex_);
    refs_drained_.wait(lock, [&] { return refs_.load() == 0; });
}

}  // namespace swapvisor::swap
