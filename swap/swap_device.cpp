// SwapDevice: cluster allocator, swap_map bitmap, reverse map and removal state
// (swap/README.md#devices). All of it under one mutex per device; the pool never
// holds a vslot stripe lock while calling in here.
#include "swap/swap_device.hpp"

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
    }
    return "unknown";
}

// Every I/O of the pool on this device goes through here (SwapDevice::block()), so a
// failed write is seen where it happens, whoever issued it (write_out, swapoff), and
// the device stops taking slots before the next batch picks it.
class SwapDevice::WriteWatch final : public io::BlockDevice {
public:
    WriteWatch(SwapDevice& owner, io::BlockDevice& inner) : owner_(owner), inner_(inner) {}
    const std::string& path() const override { return inner_.path(); }
    std::uint64_t size_bytes() const override { return inner_.size_bytes(); }
    std::uint32_t logical_block_size() const override { return inner_.logical_block_size(); }
    std::optional<io::DeviceIdentity> identity() const override { return inner_.identity(); }
    Result<void> submit(io::Ring& ring, std::span<io::BlockIo> ios) override {
        Result<void> r = inner_.submit(ring, ios);
        if (r) {
            for (const io::BlockIo& io : ios)
                if (io.kind == io::IoKind::write && (io.result == -ENOSPC || io.result == -EIO))
                    owner_.note_write_error(io.result);
        }
        return r;
    }
    Result<void> flush(io::Ring& ring) override {
        Result<void> r = inner_.flush(ring);
        if (!r && r.error().is(std::errc::no_space_on_device)) owner_.note_write_error(-ENOSPC);
        return r;
    }

private:
    SwapDevice& owner_;
    io::BlockDevice& inner_;
};

SwapDevice::SwapDevice(std::unique_ptr<io::BlockDevice> block, DeviceId id, int priority, std::string path)
    : block_(std::move(block)),
      watch_(std::make_unique<WriteWatch>(*this, *block_)),
      id_(id),
      priority_(priority),
      path_(std::move(path)),
      total_slots_(slots_after_header(block_->size_bytes())) {
    SWV_ASSERT(total_slots_ >= kClusterSlots && total_slots_ <= UINT32_MAX, "SwapDevice: size out of range");
    bitmap_.assign((total_slots_ + 63) / 64, 0);
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
    DeviceState shown = state_ == DeviceState::removing ? state_ : failed_ ? DeviceState::failed : state_;
    return DeviceUsage{total_slots_, used_, shown, write_errors_, failure_};
}

void SwapDevice::note_write_error(int error) {
    std::lock_guard lock(mutex_);
    ++write_errors_;
    if (error != -ENOSPC || failed_) return;
    failed_ = true;
    failure_ = Error{std::error_code(-error, std::system_category()), "swap-out write", path_}.message();
    // Once per device: the reclaimer's "no progress" warnings do not name it.
    spdlog::error("swap device {} failed: {}; no new slots are allocated on it (its pages stay readable; "
                  "swapoff it, free space, and swapon again)",
                  path_, failure_);
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
    if (state_ != DeviceState::active || failed_) return 0;
    std::size_t done = 0;
    Cursor& cur = cursors_[context % kAllocContexts];
    while (done < vslots.size() && used_ < total_slots_) {
        if (cur.cluster == kNone) {
            cur.cluster = take_cluster();
            cur.next = 0;
            if (cur.cluster == kNone) break;  // every free slot sits in another context's cluster
        }
        std::uint32_t base = cur.cluster * kClusterSlots;
        std::uint32_t limit = cluster_slots(cur.cluster);
        while (done < vslots.size() && cur.next < limit) {
            std::uint32_t s = base + cur.next++;
            if (!test(s)) {
                take_slot(s, vslots[done]);
                out.push_back(SlotIdx(s));
                ++done;
            }
        }
        if (cur.next >= limit) release_current(cur);
    }
    // Steal from the other contexts' current clusters: a device only reports full
    // when every slot is used.
    for (unsigned k = 0; k < kAllocContexts && done < vslots.size() && used_ < total_slots_; ++k) {
        std::uint32_t c = cursors_[k].cluster;
        if (c == kNone) continue;
        std::uint32_t base = c * kClusterSlots;
        for (std::uint32_t off = 0; off < cluster_slots(c) && done < vslots.size(); ++off) {
            if (!test(base + off)) {
                take_slot(base + off, vslots[done]);
                out.push_back(SlotIdx(base + off));
                ++done;
            }
        }
    }
    if (done > 0) pending_writes_++;
    return done;
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
    // Wake a swapoff waiting in wait_refs_drained() (atomic wait has no missed
    // wakeups: it re-checks the value before sleeping).
    if (refs_.fetch_sub(1) == 1) refs_.notify_all();
}

void SwapDevice::wait_refs_drained() {
    for (std::uint32_t v = refs_.load(); v != 0; v = refs_.load()) refs_.wait(v);
}

}  // namespace swapvisor::swap
