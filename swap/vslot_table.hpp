// VSlotTable: the descriptor behind every virtual swap slot (swap/README.md#vslots).
// A VSlot names a swapped page for as long as the page is swapped, wherever its data
// lives: the descriptor says which PSlot holds it now, the checksum of the data, the
// owner (opaque to swap) and a generation that changes on every allocation and free,
// so a swapoff that copied a slot can switch the descriptor with a compare-and-swap
// and lose cleanly to a concurrent free.
//
// Invariants:
//  - VSlot(0) is never handed out.
//  - Descriptors live in fixed-size chunks that are never moved or freed while the
//    table lives: a reader that got a descriptor's address keeps a valid address.
//  - A descriptor's fields are read and written only under its stripe lock; a
//    reader copies a snapshot (VSlotInfo) and lets go.
//  - A vslot is on the free list iff its state is `free`.
//
// Packing (swap/README.md#vslots has the byte table): 18 bytes per vslot, kept as
// parallel arrays in each chunk so nothing is padded:
//
//   place (u64)
//    63          48 47            34 33  32 31                            0
//   +--------------+----------------+------+-------------------------------+
//   | device (16)  | generation (14)|state |           slot (32)           |
//   +--------------+----------------+------+-------------------------------+
//   checksum (u32)  low 32 bits of xxh3-64 (page_checksum)
//   owner    (u32 + u16)  the 48 bits of an OwnerTag (kOwnerTagBits)
//
// The generation is 14 bits and wraps: it still changes on every allocation and
// every free. switch_pslot and SwapPool::copy_is_current also compare the place,
// a slot on a removing device that no reallocated vslot can land on again, and
// read_in compares generations only after a checksum failed (to name the error), so
// a wrap never lets data through (tests: GenerationWraps...).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "swap/types.hpp"

namespace swapvisor::swap {

enum class VSlotState : std::uint8_t {
    free,     // on the free list
    writing,  // allocated by write_out, its data not yet on the device
    valid,    // data on the device at `pslot`, checksum set
};

struct VSlotInfo {
    PSlot pslot{};
    std::uint32_t checksum = 0;
    std::uint32_t generation = 0;
    OwnerTag owner = 0;
    VSlotState state = VSlotState::free;
};

class VSlotTable {
public:
    VSlotTable();
    ~VSlotTable();
    VSlotTable(const VSlotTable&) = delete;
    VSlotTable& operator=(const VSlotTable&) = delete;

    // Generations count modulo 2^kGenerationBits.
    static constexpr unsigned kGenerationBits = 14;
    static constexpr std::uint32_t kGenerationMask = (1u << kGenerationBits) - 1;

    // Allocate one vslot per owner, in state `writing`; returns how many were
    // allocated (fewer only when the 32-bit space is exhausted), written to out[0..k).
    // Every owner must fit kOwnerTagBits (asserted).
    std::size_t allocate(std::span<const OwnerTag> owners, std::span<VSlot> out);
    // Record where a `writing` vslot's data goes and its checksum.
    void set_target(VSlot v, PSlot pslot, std::uint32_t checksum);
    // `writing` -> `valid`: the data is on the device.
    void publish(VSlot v);
    // `writing` or `valid` -> `free` (generation bumped); returns the snapshot it had,
    // or nullopt if the vslot was not allocated. The vslot is NOT yet reusable:
    // call recycle() once its pslot is released.
    std::optional<VSlotInfo> retire(VSlot v);
    // Put a retired vslot back on the free list.
    void recycle(VSlot v);
    // Snapshot of a descriptor (state `free` for never-allocated vslots).
    VSlotInfo lookup(VSlot v) const;
    // Swapoff's compare-and-swap: move a `valid` vslot from `from` to `to` only if
    // its generation is still `generation` and it still points at `from`.
    bool switch_pslot(VSlot v, std::uint32_t generation, PSlot from, PSlot to);
    // Give a `valid` vslot a new owner (a shared vslot whose owner's reference went:
    // kSnapshotOwner, swap/README.md#held-vslots). False if it is not valid.
    bool set_owner(VSlot v, OwnerTag owner);

    std::uint64_t allocated() const { return allocated_.load(); }
    // Memory per vslot ever allocated: its descriptor (chunks grow 64 Ki at a time,
    // and a freed vslot keeps its descriptor and adds a free-list entry).
    static constexpr std::size_t bytes_per_vslot();

private:
    static constexpr unsigned kChunkShift = 16;
    static constexpr std::uint32_t kChunkSize = 1u << kChunkShift;
    static constexpr std::uint32_t kMaxChunks = 1u << (32 - kChunkShift);
    static constexpr std::size_t kStripes = 1024;

    // The place word (diagram above).
    static constexpr unsigned kPlaceStateShift = 32;
    static constexpr unsigned kPlaceGenShift = 34;
    static constexpr unsigned kPlaceDeviceShift = 48;

    // One chunk of descriptors as parallel arrays (18 bytes per vslot, no padding).
    struct Chunk {
        std::uint64_t place[kChunkSize];
        std::uint32_t checksum[kChunkSize];
        std::uint32_t owner_low[kChunkSize];
        std::uint16_t owner_high[kChunkSize];
    };
    // A descriptor: its chunk and index there (valid while the table lives).
    struct Descriptor {
        Chunk* chunk;
        std::uint32_t i;
        std::uint64_t& place() const { return chunk->place[i]; }
    };
    static std::uint64_t pack_place(PSlot pslot, std::uint32_t generation, VSlotState state);
    static PSlot place_pslot(std::uint64_t place);
    static std::uint32_t place_generation(std::uint64_t place);
    static VSlotState place_state(std::uint64_t place);
    static VSlotInfo unpack(const Descriptor& d);

    std::optional<Descriptor> find(VSlot v) const;  // nullopt if beyond the grown part
    std::mutex& stripe(VSlot v) const { return stripes_[v.value() % kStripes]; }

    // Chunk pointers: written once (release) under alloc_mutex_, read lock-free
    // (acquire, pairs with the release store in allocate()).
    std::unique_ptr<std::atomic<Chunk*>[]> chunks_;

    // Protects: the fields of descriptors whose vslot % kStripes is the index;
    // Order: leaf (nothing else is taken while one is held).
    mutable std::array<std::mutex, kStripes> stripes_;

    // Protects: free_, next_, growth of chunks_; Order: leaf.
    std::mutex alloc_mutex_;
    std::vector<std::uint32_t> free_;
    std::uint64_t next_ = 1;  // first never-used vslot

    std::atomic<std::uint64_t> allocated_{0};
};

constexpr std::size_t VSlotTable::bytes_per_vslot() { return sizeof(Chunk) / kChunkSize; }

}  // namespace swapvisor::swap
