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
    std::uint64_t checksum = 0;
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

    // Allocate one vslot per owner, in state `writing`; returns how many were
    // allocated (fewer only when the 32-bit space is exhausted), written to out[0..k).
    std::size_t allocate(std::span<const OwnerTag> owners, std::span<VSlot> out);
    // Record where a `writing` vslot's data goes and its checksum.
    void set_target(VSlot v, PSlot pslot, std::uint64_t checksum);
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

    std::uint64_t allocated() const { return allocated_.load(); }
    // Memory per vslot ever allocated: its descriptor (chunks grow 64 Ki at a time,
    // and a freed vslot keeps its descriptor and adds a free-list entry).
    static constexpr std::size_t bytes_per_vslot();

private:
    struct Descriptor {
        OwnerTag owner = 0;
        std::uint64_t checksum = 0;
        std::uint32_t slot = 0;
        std::uint32_t generation = 0;
        std::uint16_t device = 0;
        VSlotState state = VSlotState::free;
    };
    static constexpr unsigned kChunkShift = 16;
    static constexpr std::uint32_t kChunkSize = 1u << kChunkShift;  // 2 MiB of descriptors
    static constexpr std::uint32_t kMaxChunks = 1u << (32 - kChunkShift);
    static constexpr std::size_t kStripes = 1024;

    Descriptor* find(VSlot v) const;  // nullptr if beyond the grown part
    std::mutex& stripe(VSlot v) const { return stripes_[v.value() % kStripes]; }

    // Chunk pointers: written once (release) under alloc_mutex_, read lock-free
    // (acquire, pairs with the release store in allocate()).
    std::unique_ptr<std::atomic<Descriptor*>[]> chunks_;

    // Protects: the fields of descriptors whose vslot % kStripes is the index;
    // Order: leaf (nothing else is taken while one is held).
    mutable std::array<std::mutex, kStripes> stripes_;

    // Protects: free_, next_, growth of chunks_; Order: leaf.
    std::mutex alloc_mutex_;
    std::vector<std::uint32_t> free_;
    std::uint64_t next_ = 1;  // first never-used vslot

    std::atomic<std::uint64_t> allocated_{0};
};

constexpr std::size_t VSlotTable::bytes_per_vslot() { return sizeof(Descriptor); }

}  // namespace swapvisor::swap
