// VSlotTable: chunked, packed descriptor storage (16 bytes per vslot), blocks of
// vslots per owner group with a LIFO free list each, and striped locks
// (swap/README.md#vslots).
#include "swap/vslot_table.hpp"

#include <algorithm>
#include <utility>

namespace swapvisor::swap {

static_assert(VSlotTable::bytes_per_vslot() == 16, "the VSlot descriptor is 16 bytes (swap/README.md#vslots)");
static_assert((kSnapshotOwner & 0xffff'ffffu) == 0xffff'ffffu, "kSnapshotOwner's index is the reserved one");
static_assert(static_cast<unsigned>(VSlotState::valid) < 4, "a state fits the place word's 2 bits");

// Constructor and destructor run with no other thread around: relaxed is enough.
VSlotTable::VSlotTable(unsigned block_shift)
    : chunks_(new std::atomic<Chunk*>[kMaxChunks]),
      block_shift_(block_shift),
      groups_(new std::unique_ptr<GroupSlots>[kGroups]) {
    SWV_ASSERT(block_shift >= 1 && block_shift <= kBlockShift, "VSlotTable: block_shift out of range");
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

std::atomic<std::uint16_t>& VSlotTable::block_group(std::uint32_t block) const {
    // Relaxed: chunks_ of a made block is published before the block is handed out
    // (under alloc_mutex_, or ordered by the stripe lock of a vslot of it).
    return chunks_[block / blocks_per_chunk()].load(std::memory_order_relaxed)->group[block % blocks_per_chunk()];
}

VSlotInfo VSlotTable::unpack(const Descriptor& d) const {
    const std::uint64_t place = d.place();
    const std::uint32_t index = d.chunk->index[d.i];
    const OwnerTag owner =
        index == kSnapshotIndex
            ? kSnapshotOwner
            : OwnerTag{d.chunk->group[d.i >> block_shift_].load(std::memory_order_relaxed)} << kOwnerGroupShift | index;
    return VSlotInfo{place_pslot(place), d.chunk->checksum[d.i], place_generation(place), owner, place_state(place)};
}

std::optional<VSlotTable::Descriptor> VSlotTable::find(VSlot v) const {
    // Acquire pairs with the release store that published the chunk in allocate().
    Chunk* chunk = chunks_[v.value() >> kChunkShift].load(std::memory_order_acquire);
    if (chunk == nullptr) return std::nullopt;
    return Descriptor{chunk, v.value() & (kChunkSize - 1)};
}

bool VSlotTable::take_block(std::uint16_t group, GroupSlots& slots) {
    if (free_blocks_.empty()) {
        // Before making a block, take back every block of the groups that hold no
        // vslot now (a VM that ended, or shrank to nothing): each such group's list is
        // dropped once, so this is paid for by the frees that emptied it.
        for (const std::uint16_t idle : std::exchange(idle_groups_, {})) {
            std::unique_ptr<GroupSlots>& other = groups_[idle];
            if (!other) continue;
            other->idle_listed = false;
            if (other->used != 0 || idle == group) continue;  // busy again / the asker
            compact(*other);
            other.reset();
        }
    }
    std::uint32_t block;
    if (!free_blocks_.empty()) {
        block = free_blocks_.back();
        free_blocks_.pop_back();
    } else {
        if (next_block_ >= (std::uint64_t{1} << (32 - block_shift_))) return false;  // 32-bit space exhausted
        block = static_cast<std::uint32_t>(next_block_++);
        block_used_.push_back(0);
        const std::uint32_t chunk = block / blocks_per_chunk();
        // Relaxed: chunks_ is only written under alloc_mutex_, which we hold.
        if (chunks_[chunk].load(std::memory_order_relaxed) == nullptr) {
            // Every place word 0 = free, generation 0.
            // Release pairs with the acquire load in find().
            chunks_[chunk].store(new Chunk(blocks_per_chunk()), std::memory_order_release);
        }
    }
    block_group(block).store(group, std::memory_order_relaxed);
    // Highest first, so the LIFO hands the block out in ascending order; VSlot(0)
    // (block 0's first) is never handed out.
    const std::uint32_t first = block << block_shift_;
    for (std::uint32_t v = first + block_size(); v-- > first;)
        if (v != kNoVSlot.value()) slots.free.push_back(v);
    return true;
}

void VSlotTable::compact(GroupSlots& slots) {
    // Every free vslot of a block with none in use is on this list (the block is this
    // group's): drop them and give those blocks back, each once.
    std::vector<std::uint32_t> returned;
    std::erase_if(slots.free, [&](std::uint32_t v) {
        const std::uint32_t block = v >> block_shift_;
        if (block_used_[block] != 0) return false;
        if ((v & (block_size() - 1)) == (block == 0 ? 1u : 0u)) returned.push_back(block);
        return true;
    });
    free_blocks_.insert(free_blocks_.end(), returned.begin(), returned.end());
    slots.compact_at = std::max<std::size_t>(2 * block_size(), 2 * slots.free.size());
}

std::size_t VSlotTable::allocate(std::span<const OwnerTag> owners, std::span<VSlot> out) {
    SWV_ASSERT(out.size() >= owners.size(), "allocate: output span too short");
    for (OwnerTag owner : owners) {
        SWV_ASSERT(owner <= kMaxOwnerTag, "allocate: owner tag wider than kOwnerTagBits");
        SWV_ASSERT(owner == kSnapshotOwner || (owner & 0xffff'ffffu) != kSnapshotIndex,
                   "allocate: owner index 2^32-1 is kSnapshotOwner's");
    }
    std::size_t got = 0;
    {
        std::lock_guard lock(alloc_mutex_);
        GroupSlots* slots = nullptr;
        std::uint16_t group = 0;
        while (got < owners.size()) {
            const std::uint16_t want = owner_group(owners[got]);
            if (slots == nullptr || want != group) {
                group = want;
                std::unique_ptr<GroupSlots>& entry = groups_[group];
                if (!entry) entry = std::make_unique<GroupSlots>(2 * block_size());
                slots = entry.get();
            }
            if (slots->free.empty() && !take_block(group, *slots)) break;
            const std::uint32_t v = slots->free.back();
            slots->free.pop_back();
            ++block_used_[v >> block_shift_];
            ++slots->used;
            out[got++] = VSlot(v);
        }
        if (slots != nullptr && slots->used == 0) groups_[group].reset();  // exhausted before its first
    }
    for (std::size_t i = 0; i < got; ++i) {
        Descriptor d = *find(out[i]);
        std::lock_guard lock(stripe(out[i]));
        const std::uint64_t place = d.place();
        SWV_ASSERT(place_state(place) == VSlotState::free, "allocate: vslot on the free list is in use");
        d.place() = pack_place(place_pslot(place), place_generation(place) + 1, VSlotState::writing);
        d.chunk->index[d.i] = static_cast<std::uint32_t>(owners[i]);
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
    const std::uint32_t block = v.value() >> block_shift_;
    std::lock_guard lock(alloc_mutex_);
    // Relaxed: the block's group was written under alloc_mutex_, which we hold.
    const std::uint16_t group = block_group(block).load(std::memory_order_relaxed);
    SWV_ASSERT(groups_[group] != nullptr && block_used_[block] != 0, "recycle: vslot not allocated");
    GroupSlots& slots = *groups_[group];
    slots.free.push_back(v.value());
    --block_used_[block];
    if (--slots.used == 0) {
        // The group's last vslot: its blocks stay its own (a VM that swaps a page out
        // and in again does not pay for a block each time) until another group needs
        // a block and none is free (take_block).
        if (!slots.idle_listed) {
            slots.idle_listed = true;
            idle_groups_.push_back(group);
        }
    } else if (slots.free.size() >= slots.compact_at) {
        compact(slots);  // amortised: the list doubled since the last one
    }
}

std::uint64_t VSlotTable::blocks_in_use() const {
    std::lock_guard lock(alloc_mutex_);
    return next_block_ - free_blocks_.size();
}

std::uint64_t VSlotTable::blocks_made() const {
    std::lock_guard lock(alloc_mutex_);
    return next_block_;
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
    SWV_ASSERT(owner == kSnapshotOwner ||
                   ((owner & 0xffff'ffffu) != kSnapshotIndex &&
                    owner_group(owner) == d->chunk->group[d->i >> block_shift_].load(std::memory_order_relaxed)),
               "set_owner: a vslot keeps its block's group (or becomes kSnapshotOwner's)");
    d->chunk->index[d->i] = static_cast<std::uint32_t>(owner);
    return true;
}

}  // namespace swapvisor::swap
