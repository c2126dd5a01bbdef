// The OwnerTag guestmem hands to swap with every page it writes out: which VM and
// which stage-2 index the page belongs to. swap keeps it opaque and gives it back
// to HostMemory::bring_back during swapoff.
//
//   63        48 47                                  0
//  +------------+-------------------------------------+
//  |   VmId     |  stage-2 index (page within the VM)  |
//  +------------+-------------------------------------+
#pragma once

#include <cstdint>

#include "swap/types.hpp"

namespace swapvisor::guestmem {

using VmId = std::uint16_t;

inline constexpr unsigned kOwnerVmShift = 48;
// swap reads the VM as the owner's group (a memory tier's per-VM share).
static_assert(kOwnerVmShift == swap::kOwnerGroupShift);
inline constexpr std::uint64_t kOwnerIndexMask = (std::uint64_t{1} << kOwnerVmShift) - 1;

constexpr swap::OwnerTag pack_owner(VmId vm, std::uint64_t page_index) {
    return (std::uint64_t{vm} << kOwnerVmShift) | (page_index & kOwnerIndexMask);
}
constexpr VmId owner_vm(swap::OwnerTag tag) { return static_cast<VmId>(tag >> kOwnerVmShift); }
constexpr std::uint64_t owner_index(swap::OwnerTag tag) { return tag & kOwnerIndexMask; }

}  // namespace swapvisor::guestmem
