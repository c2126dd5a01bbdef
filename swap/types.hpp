// The nouns of the swap layer: devices (DeviceId), slots on a device (SlotIdx, PSlot,
// like the kernel's swp_slot_t), virtual swap slots (VSlot, what a stage-2 entry
// stores, like vswap's swp_entry_t), the owner tag handed back upward by swapoff, and
// the layer's error codes. VSlot(0) is never allocated: it means "no slot".
#pragma once

#include <array>
#include <cstdint>
#include <system_error>

#include "io/result.hpp"
#include "io/strong_int.hpp"

namespace swapvisor::swap {

using DeviceId = StrongInt<struct DeviceIdTag, std::uint16_t>;
using SlotIdx = StrongInt<struct SlotIdxTag, std::uint32_t>;

// A slot on one device.
struct PSlot {
    DeviceId device;
    SlotIdx slot;
    friend constexpr bool operator==(const PSlot&, const PSlot&) = default;
};

using VSlot = StrongInt<struct VSlotTag, std::uint32_t>;
inline constexpr VSlot kNoVSlot{0};

// Opaque to swap: guestmem packs (vm id, gfn); swapoff hands it back upward. Only
// the low kOwnerTagBits may be set: the VSlot descriptor keeps 48 bits of it
// (swap/README.md#vslots). Swap reads only bits 32..47, the owner's group
// (guestmem: the VM), for a memory tier's per-group share (memory_tier.hpp, share=).
using OwnerTag = std::uint64_t;
inline constexpr unsigned kOwnerTagBits = 48;
inline constexpr OwnerTag kMaxOwnerTag = (OwnerTag{1} << kOwnerTagBits) - 1;
inline constexpr unsigned kOwnerGroupShift = 32;
constexpr std::uint16_t owner_group(OwnerTag owner) { return static_cast<std::uint16_t>(owner >> kOwnerGroupShift); }
// The owner of a vslot that only snapshots hold (swap/README.md#held-vslots): no VM
// refers to it, so swapoff moves it and never brings it back. All 48 bits set: its
// group 0xffff, index 2^32-1, a page no guest has (guestmem/owner_tag.hpp).
inline constexpr OwnerTag kSnapshotOwner = kMaxOwnerTag;

// A swap device's identity across processes and hosts: its header's uuid
// (swap_header.hpp). Snapshots name slots by (uuid, slot).
using DeviceUuid = std::array<std::uint8_t, 16>;

inline constexpr std::uint64_t kSlotSize = 4096;
// Slots per cluster: 512 x 4 KiB = 2 MiB, so a 2 MiB page fits one cluster.
inline constexpr std::uint32_t kClusterSlots = 512;

enum class Errc {
    no_space = 1,        // no active device has a free slot
    checksum_mismatch,   // data read back does not match what was written
    no_such_device,      // swapoff of a path that is not swapped on
    device_busy,         // a swapoff of that device is already running
    would_not_fit,       // swapoff refused: no room elsewhere and no budget to bring pages back
    stale_slot,          // the vslot is not (or no longer) allocated
    io_failed,           // the device reported an I/O error
    exists,              // swapon of a device already in the pool (by any name)
    no_signature,        // swapon of a device without a swapvisor header (format not asked)
    bad_header,          // a swapvisor header that is corrupt, of another version or another size
    size_mismatch,       // size= disagrees with the size of an existing device
    unreadable_slots,    // swapoff without force: some used slots cannot be read
    holds_data,          // format / mkswap of a device holding recognisable data, not forced
    leased,              // swapon of a remote device another pool holds a live lease on, no takeover
    rejected,            // a memory tier refused the page (does not compress, tier full): try the next device
    held_slot,           // a snapshot-held slot cannot be moved (no room elsewhere) or reserved (taken, out of range)
};
const std::error_category& swap_category();
inline std::error_code make_error_code(Errc e) { return {static_cast<int>(e), swap_category()}; }

}  // namespace swapvisor::swap

template <>
struct std::is_error_code_enum<swapvisor::swap::Errc> : std::true_type {};
