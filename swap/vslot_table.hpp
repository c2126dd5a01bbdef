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
//  - A vslot is on its group's free list iff its state is `free` (a retired vslot
//    not yet recycled is on none); a block belongs to at most one group, and its
//    group changes only while every vslot of it is free.
//  - Owner index 2^32-1 is kSnapshotOwner's: allocate() refuses it for any other
//    owner (asserted); guestmem never makes one (guestmem/owner_tag.hpp).
//
// Packing (swap/README.md#vslots has the byte table): 16 bytes per vslot, kept as
// parallel arrays in each chunk so nothing is padded:
//
//   place (u64)
//    63          48 47            34 33  32 31                            0
//   +--------------+----------------+------+-------------------------------+
//   | device (16)  | generation (14)|state |           slot (32)           |
//   +--------------+----------------+------+-------------------------------+
//   checksum (u32)  low 32 bits of xxh3-64 (page_checksum)
//   index    (u32)  the owner's bits 31-0; 2^32-1 means kSnapshotOwner
//
// The owner's group (bits 47-32, guestmem: the VM) is kept per *block*: 1024
// consecutive vslots are handed out to one group only (its own free list), so the
// group is stored once per block (2 bytes per 1024 vslots), not per vslot. A block
// whose vslots are all free goes back to the table for any group to take: by the
// amortised compaction of its group's free list, or, once its group holds no vslot at
// all (a VM that ended), when another group needs a block and none is free.
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
    // block_shift: log2 of the vslots per block (kBlockShift; tests use smaller blocks
    // so that blocks are taken, compacted and given back within a few pages).
    explicit VSlotTable(unsigned block_shift = kBlockShift);
    ~VSlotTable();
    VSlotTable(const VSlotTable&) = delete;
    VSlotTable& operator=(const VSlotTable&) = delete;

    // Generations count modulo 2^kGenerationBits.
    static constexpr unsigned kGenerationBits = 14;
    static constexpr std::uint32_t kGenerationMask = (1u << kGenerationBits) - 1;

    // Allocate one vslot per owner, in state `writing`; returns how many were
    // allocated (fewer only when the 32-bit space is exhausted), written to out[0..k).
    // Every owner must fit kOwnerTagBits and must not have index 2^32-1 unless it is
    // kSnapshotOwner (asserted). An owner gets a vslot of a block of its group's.
    std::size_t allocate(std::span<const OwnerTag> owners, std::span<VSlot> out);
    // Record where a `writing` vslot's data goes and its checksum.
    void set_target(VSlot v, PSlot pslot, std::uint32_t checksum);
    // `writing` -> `valid`: the data is on the device.
    void publish(VSlot v);
    // `writing` or `valid` -> `free` (generation bumped); returns the snapshot it had,
    // or nullopt if the vslot was not allocated. The vslot is NOT yet reusable:
    // call recycle() once its pslot is released.
    std::optional<VSlotInfo> retire(VSlot v);
    // Put a retired vslot back on its group's free list (its block back to the table
    // at a compaction, or when the group holds no vslot and another group needs one).
    void recycle(VSlot v);
    // Snapshot of a descriptor (state `free` for never-allocated vslots).
    VSlotInfo lookup(VSlot v) const;
    // Swapoff's compare-and-swap: move a `valid` vslot from `from` to `to` only if
    // its generation is still `generation` and it still points at `from`.
    bool switch_pslot(VSlot v, std::uint32_t generation, PSlot from, PSlot to);
    // Give a `valid` vslot a new owner (a shared vslot whose owner's reference went:
    // kSnapshotOwner, swap/README.md#held-vslots), or another page of its own group
    // (a new group is a broken invariant: the group is its block's). False if it is
    // not valid.
    bool set_owner(VSlot v, OwnerTag owner);

    std::uint64_t allocated() const { return allocated_.load(); }
    // Blocks groups hold now (each kBlockSize vslots; an idle group's count until
    // they are taken back), and blocks ever made.
    std::uint64_t blocks_in_use() const;
    std::uint64_t blocks_made() const;
    // Memory per vslot ever allocated: its descriptor (chunks grow 64 Ki at a time,
    // and a free vslot of a group's block keeps its descriptor and a free-list entry;
    // the per-block group, 128 bytes per chunk, rounds away).
    static constexpr std::size_t bytes_per_vslot();

    static constexpr unsigned kBlockShift = 10;
    static constexpr std::uint32_t kBlockSize = 1u << kBlockShift;
    std::uint32_t block_size() const { return 1u << block_shift_; }

private:
    static constexpr unsigned kChunkShift = 16;
    static constexpr std::uint32_t kChunkSize = 1u << kChunkShift;
    static constexpr std::uint32_t kMaxChunks = 1u << (32 - kChunkShift);
    static constexpr std::size_t kStripes = 1024;
    static constexpr std::uint32_t kSnapshotIndex = 0xffff'ffffu;  // kSnapshotOwner's index
    static constexpr std::size_t kGroups = std::size_t{1} << 16;   // owner_group's range

    // The place word (diagram above).
    static constexpr unsigned kPlaceStateShift = 32;
    static constexpr unsigned kPlaceGenShift = 34;
    static constexpr unsigned kPlaceDeviceShift = 48;

    // One chunk of descriptors as parallel arrays (16 bytes per vslot, no padding),
    // and the group of each of its blocks (kChunkSize >> block_shift_ of them):
    // written under alloc_mutex_ while the block is all free, read under a
    // descriptor's stripe lock (relaxed: an allocated vslot's reader is ordered after
    // the write by that stripe lock).
    struct Chunk {
        explicit Chunk(std::uint32_t blocks) : group(new std::atomic<std::uint16_t>[blocks]()) {}
        std::uint64_t place[kChunkSize]{};
        std::uint32_t checksum[kChunkSize]{};
        std::uint32_t index[kChunkSize]{};
        std::unique_ptr<std::atomic<std::uint16_t>[]> group;
    };
    // A group's vslots to hand out (LIFO) and how many it holds.
    struct GroupSlots {
        explicit GroupSlots(std::size_t first_compaction) : compact_at(first_compaction) {}
        std::vector<std::uint32_t> free;
        std::uint64_t used = 0;
        std::size_t compact_at;                   // compact the free list at this size
        bool idle_listed = false;                 // on idle_groups_
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
    VSlotInfo unpack(const Descriptor& d) const;
    std::uint32_t blocks_per_chunk() const { return kChunkSize >> block_shift_; }
    std::atomic<std::uint16_t>& block_group(std::uint32_t block) const;

    std::optional<Descriptor> find(VSlot v) const;  // nullopt if beyond the grown part
    // Under alloc_mutex_: give `group` a block (a returned one, else a new one);
    // false if the 32-bit space is exhausted.
    bool take_block(std::uint16_t group, GroupSlots& slots);
    // Under alloc_mutex_: return the blocks of `slots` with no vslot in use.
    void compact(GroupSlots& slots);
    std::mutex& stripe(VSlot v) const { return stripes_[v.value() % kStripes]; }

    // Chunk pointers: written once (release) under alloc_mutex_, read lock-free
    // (acquire, pairs with the release store in allocate()).
    std::unique_ptr<std::atomic<Chunk*>[]> chunks_;
    const unsigned block_shift_;  // log2 of the vslots per block (kBlockShift but in tests)

    // Protects: the fields of descriptors whose vslot % kStripes is the index;
    // Order: leaf (nothing else is taken while one is held).
    mutable std::array<std::mutex, kStripes> stripes_;

    // Protects: groups_, block_used_, free_blocks_, next_block_, the blocks' groups
    // (writes), growth of chunks_; Order: leaf.
    mutable std::mutex alloc_mutex_;
    std::unique_ptr<std::unique_ptr<GroupSlots>[]> groups_;  // by group (65536), null: holds no block
    std::vector<std::uint16_t> block_used_;   // per block made: its vslots not free
    std::vector<std::uint32_t> free_blocks_;  // blocks no group has (all free)
    std::vector<std::uint16_t> idle_groups_;  // groups that reached 0 vslots in use since the last take-back
    std::uint64_t next_block_ = 0;            // first block never made

    std::atomic<std::uint64_t> allocated_{0};
};

constexpr std::size_t VSlotTable::bytes_per_vslot() { return sizeof(Chunk) / kChunkSize; }

}  // namespace swapvisor::swap
