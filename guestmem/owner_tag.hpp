// The OwnerTag guestmem hands to swap with every page it writes out: which VM and
// which stage-2 index the page belongs to. swap keeps it opaque (48 bits of it,
// swap::kOwnerTagBits: the VSlot descriptor's size, swap/README.md#vslots) and gives
// it back to HostMemory::bring_back during swapoff.
//
//   63        48 47          32 31                                0
//  +------------+--------------+----------------------------------+
//  |  zero      |    VmId      |  stage-2 index (page within VM)  |
//  +------------+--------------+----------------------------------+
//
// 32 bits of index cover 16 TiB of guest RAM; the largest guest the CLI accepts is
// 3 GiB + 8 TiB - 2 MiB (vmm/cli/config.hpp), under 2^32 - 1 pages: index 2^32-1 is
// swap's kSnapshotOwner's (swap/README.md#vslot-blocks), never a page's.
#pragma once

#include <cstdint>

#include "io/result.hpp"
#include "swap/types.hpp"

namespace swapvisor::guestmem {

using VmId = std::uint16_t;

inline constexpr unsigned kOwnerVmShift = 32;
// swap reads the VM as the owner's group (a memory tier's per-VM share).
static_assert(kOwnerVmShift == swap::kOwnerGroupShift);
inline constexpr std::uint64_t kOwnerIndexMask = (std::uint64_t{1} << kOwnerVmShift) - 1;
static_assert(kOwnerVmShift + 8 * sizeof(VmId) <= swap::kOwnerTagBits, "an owner tag fits swap's 48 bits");

constexpr swap::OwnerTag pack_owner(VmId vm, std::uint64_t page_index) {
    SWV_ASSERT(page_index < kOwnerIndexMask, "pack_owner: stage-2 index beyond 2^32-2");
    return (std::uint64_t{vm} << kOwnerVmShift) | page_index;
}
constexpr VmId owner_vm(swap::OwnerTag tag) { return static_cast<VmId>(tag >> kOwnerVmShift); }
constexpr std::uint64_t owner_index(swap::OwnerTag tag) { return tag & kOwnerIndexMask; }

}  // namespace swapvisor::guestmem
