// VSlotTable: chunked descriptor storage, a LIFO free list and striped locks
// (swap/README.md#vslots).
#include "swap/vslot_table.hpp"

namespace swapvisor::swap {

// Constructor and destructor run with no other thread around: relaxed is enough.
VSlotTable::VSlotTable() : chunks_(new std::atomic<Descriptor*>[kMaxChunks]) {
    for (std::uint32_t i = 0; i < kMaxChunks; ++i) chunks_[i].store(nullptr, std::memory_order_relaxed);
}

VSlotTable::~VSlotTable() {
    for (std::uint32_t i = 0; i < kMaxChunks; ++i) delete[] chunks_[i].load(std::memory_order_relaxed);
}

VSlotTable::Descriptor* VSlotTable::find(VSlot v) const {
    // Acquire pairs with the release store that published the chunk in allocate().
    Descriptor* chunk = chunks_[v.value() >> kChunkShift].load(std::memory_order_acquire);
    if (chunk == nullptr) return nullptr;
    return &chunk[v.value() & (kChunkSize - 1)];
}

std::size_t VSlotTable::allocate(std::span<const OwnerTag> owners, std::span<VSlot> out) {
    SWV_ASSERT(out.size() >= owners.size(), "allocate: output span too short");
    std::size_t got = 0;
    {
        std::lock_guard lock(alloc_mutex_);
        while (got < owners.size()) {
            std::uint32_t v;
            if (!free_.empty()) {
                v = free_.back();
                free_.pop_back();
            } else {
                if (next_ > UINT32_MAX) break;  // 32-bit space exhausted
                v = static_cast<std::uint32_t>(next_++);
                std::uint32_t chunk = v >> kChunkShift;
                // Relaxed: chunks_ is only written under alloc_mutex_, which we hold.
                if (chunks_[chunk].load(std::memory_order_relaxed) == nullptr) {
                    // Release pairs with the acquire load in find().
                    chunks_[chunk].store(new Descriptor[kChunkSize](), std::memory_order_release);
                }
            }
            out[got++] = VSlot(v);
        }
    }
    for (std::size_t i = 0; i < got; ++i) {
        Descriptor* d = find(out[i]);
        std::lock_guard lock(stripe(out[i]));
        SWV_ASSERT(d->state == VSlotState::free, "allocate: vslot on the free list is in use");
        d->state = VSlotState::writing;
        d->owner = owners[i];
        d->checksum = 0;
        d->generation++;
    }
    allocated_.fetch_add(got);
    return got;
}

void VSlotTable::set_target(VSlot v, PSlot pslot, std::uint64_t checksum) {
    Descriptor* d = find(v);
    SWV_ASSERT(d != nullptr, "set_target: unknown vslot");
    std::lock_guard lock(stripe(v));
    SWV_ASSERT(d->state == VSlotState::writing, "set_target: vslot is not being written");
    d->device = pslot.device.value();
    d->slot = pslot.slot.value();
    d->checksum = checksum;
}

void VSlotTable::publish(VSlot v) {
    Descriptor* d = find(v);
    SWV_ASSERT(d != nullptr, "publish: unknown vslot");
    std::lock_guard lock(stripe(v));
    SWV_ASSERT(d->state == VSlotState::writing, "publish: vslot is not being written");
    d->state = VSlotState::valid;
}

std::optional<VSlotInfo> VSlotTable::retire(VSlot v) {
    if (v == kNoVSlot) return std::nullopt;
    Descriptor* d = find(v);
    if (d == nullptr) return std::nullopt;
    VSlotInfo info;
    {
        std::lock_guard lock(stripe(v));
        if (d->state == VSlotState::free) return std::nullopt;
        info = VSlotInfo{PSlot{DeviceId(d->device), SlotIdx(d->slot)}, d->checksum, d->generation, d->owner,
                         d->state};
        d->state = VSlotState::free;
        d->generation++;
    }
    allocated_.fetch_sub(1);
    return info;
}

void VSlotTable::recycle(VSlot v) {
    std::lock_guard lock(alloc_mutex_);
    free_.push_back(v.value());
}

VSlotInfo VSlotTable::lookup(VSlot v) const {
    if (v == kNoVSlot) return {};
    Descriptor* d = find(v);
    if (d == nullptr) return {};
    std::lock_guard lock(stripe(v));
    return VSlotInfo{PSlot{DeviceId(d->device), SlotIdx(d->slot)}, d->checksum, d->generation, d->owner, d->state};
}

bool VSlotTable::switch_pslot(VSlot v, std::uint32_t generation, PSlot from, PSlot to) {
    Descriptor* d = find(v);
    if (d == nullptr) return false;
    std::lock_guard lock(stripe(v));
    if (d->state != VSlotState::valid || d->generation != generation || d->device != from.device.value() ||
        d->slot != from.slot.value()) {
        return false;
    }
    d->device = to.device.value();
    d->slot = to.slot.value();
    return true;
}

}  // namespace swapvisor::swap
