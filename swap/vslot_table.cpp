// VSlotTable: chunked, packed descriptor storage (18 bytes per vslot), a LIFO free
// list and striped locks (swap/README.md#vslots).
#include "swap/vslot_table.hpp"

namespace swapvisor::swap {

static_assert(VSlotTable::bytes_per_vslot() == 18, "the VSlot descriptor is 18 bytes (swap/README.md#vslots)");
static_assert(static_cast<unsigned>(VSlotState::valid) < 4, "a state fits the place word's 2 bits");

// Constructor and destructor run with no other thread around: relaxed is enough.
VSlotTable::VSlotTable() : chunks_(new std::atomic<Chunk*>[kMaxChunks]) {
    for (std::uint32_t i = 0; i < kMaxChunks; ++i) chunks_[i].store(nullptr, std::memory_order_relaxed);
}

VSlotTable::~VSlotTable() {
    for (std::uint32_t i = 0; i < kMaxChunks; ++i) delete chunks_[i].load(std::memory_order_relaxed);
}

std::uint64_t VSlotTable::pack_place(PSlot pslot, std::uint32_t generation, VSlotState state) {
    return std::uint64_t{pslot.device.value()} << kPlaceDeviceShift |
           std::uint64_t{generation & kGenerationMask} << kPlaceGenShift |
           std::uint64_t{static_cast<std::uint8_t>(state)} << kPlaceStateShift | pslot.slot.value();
}

PSlot VSlotTable::place_pslot(std::uint64_t place) {
    return PSlot{DeviceId(static_cast<std::uint16_t>(place >> kPlaceDeviceShift)),
                 SlotIdx(static_cast<std::uint32_t>(place))};
}

std::uint32_t VSlotTable::place_generation(std::uint64_t place) {
    return static_cast<std::uint32_t>(place >> kPlaceGenShift) & kGenerationMask;
}

VSlotState VSlotTable::place_state(std::uint64_t place) {
    return static_cast<VSlotState>((place >> kPlaceStateShift) & 3);
}

VSlotInfo VSlotTable::unpack(const Descriptor& d) {
    const std::uint64_t place = d.place();
    return VSlotInfo{place_pslot(place), d.chunk->checksum[d.i], place_generation(place),
                     OwnerTag{d.chunk->owner_high[d.i]} << 32 | d.chunk->owner_low[d.i], place_state(place)};
}

std::optional<VSlotTable::Descriptor> VSlotTable::find(VSlot v) const {
    // Acquire pairs with the release store that published the chunk in allocate().
    Chunk* chunk = chunks_[v.value() >> kChunkShift].load(std::memory_order_acquire);
    if (chunk == nullptr) return std::nullopt;
    return Descriptor{chunk, v.value() & (kChunkSize - 1)};
}

std::size_t VSlotTable::allocate(std::span<const OwnerTag> owners, std::span<VSlot> out) {
    SWV_ASSERT(out.size() >= owners.size(), "allocate: output span too short");
    for (OwnerTag owner : owners) SWV_ASSERT(owner <= kMaxOwnerTag, "allocate: owner tag wider than kOwnerTagBits");
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
                    // Value-initialised: every place word 0 = free, generation 0.
                    // Release pairs with the acquire load in find().
                    chunks_[chunk].store(new Chunk(), std::memory_order_release);
                }
            }
            out[got++] = VSlot(v);
        }
    }
    for (std::size_t i = 0; i < got; ++i) {
        Descriptor d = *find(out[i]);
        std::lock_guard lock(stripe(out[i]));
        const std::uint64_t place = d.place();
        SWV_ASSERT(place_state(place) == VSlotState::free, "allocate: vslot on the free list is in use");
        d.place() = pack_place(place_pslot(place), place_generation(place) + 1, VSlotState::writing);
        d.chunk->owner_low[d.i] = static_cast<std::uint32_t>(owners[i]);
        d.chunk->owner_high[d.i] = static_cast<std::uint16_t>(owners[i] >> 32);
        d.chunk->checksum[d.i] = 0;
    }
    allocated_.fetch_add(got);
    return got;
}

void VSlotTable::set_target(VSlot v, PSlot pslot, std::uint32_t checksum) {
    std::optional<Descriptor> d = find(v);
    SWV_ASSERT(d.has_value(), "set_target: unknown vslot");
    std::lock_guard lock(stripe(v));
    const std::uint64_t place = d->place();
    SWV_ASSERT(place_state(place) == VSlotState::writing, "set_target: vslot is not being written");
    d->place() = pack_place(pslot, place_generation(place), VSlotState::writing);
    d->chunk->checksum[d->i] = checksum;
}

void VSlotTable::publish(VSlot v) {
    std::optional<Descriptor> d = find(v);
    SWV_ASSERT(d.has_value(), "publish: unknown vslot");
    std::lock_guard lock(stripe(v));
    const std::uint64_t place = d->place();
    SWV_ASSERT(place_state(place) == VSlotState::writing, "publish: vslot is not being written");
    d->place() = pack_place(place_pslot(place), place_generation(place), VSlotState::valid);
}

std::optional<VSlotInfo> VSlotTable::retire(VSlot v) {
    if (v == kNoVSlot) return std::nullopt;
    std::optional<Descriptor> d = find(v);
    if (!d) return std::nullopt;
    VSlotInfo info;
    {
        std::lock_guard lock(stripe(v));
        info = unpack(*d);
        if (info.state == VSlotState::free) return std::nullopt;
        d->place() = pack_place(info.pslot, info.generation + 1, VSlotState::free);
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
    std::optional<Descriptor> d = find(v);
    if (!d) return {};
    std::lock_guard lock(stripe(v));
    return unpack(*d);
}

bool VSlotTable::switch_pslot(VSlot v, std::uint32_t generation, PSlot from, PSlot to) {
    std::optional<Descriptor> d = find(v);
    if (!d) return false;
    std::lock_guard lock(stripe(v));
    const std::uint64_t place = d->place();
    if (place_state(place) != VSlotState::valid || place_generation(place) != (generation & kGenerationMask) ||
        place_pslot(place) != from) {
        return false;
    }
    d->place() = pack_place(to, generation, VSlotState::valid);
    return true;
}

bool VSlotTable::set_owner(VSlot v, OwnerTag owner) {
    SWV_ASSERT(owner <= kMaxOwnerTag, "set_owner: owner beyond kOwnerTagBits");
    std::optional<Descriptor> d = find(v);
    if (!d) return false;
    std::lock_guard lock(stripe(v));
    if (place_state(d->place()) != VSlotState::valid) return false;
    d->chunk->owner_low[d->i] = static_cast<std::uint32_t>(owner);
    d->chunk->owner_high[d->i] = static_cast<std::uint16_t>(owner >> 32);
    return true;
}

}  // namespace swapvisor::swap
