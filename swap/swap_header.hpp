// The swapvisor swap header: the first 4 KiB page of every swap device says "this is
// a swapvisor swap device, with this many slots", so that a mistyped --swap path is
// refused instead of overwritten (like the kernel's mkswap signature). Slots start
// after it: slot s lives at byte (s + 1) * 4096 (slot_offset, swap_device.hpp).
//
// Layout (little-endian; the rest of the page is zero; swap/README.md#header):
//
//   byte 0        8          12           16                  32           40          48 ... 4095
//   +-------------+----------+------------+-------------------+------------+-----------+----------+
//   | magic       | version  | page size  | uuid              | slot count | checksum  |  zeros   |
//   | "SWAPVISR"  | u32 = 1  | u32 = 4096 | 16 random bytes   | u64        | xxh3-64 of|          |
//   |             |          |            |                   |            | bytes 0-39|          |
//   +-------------+----------+------------+-------------------+------------+-----------+----------+
//
//   byte 64       72                 88              96      100       104           168        176
//   +-------------+------------------+---------------+-------+---------+-------------+----------+
//   | "SWVOWNER"  | pool uuid        | lease until   | pid   | 0       | host name   | checksum |
//   |             | 16 bytes         | u64 unix ms   | u32   |         | 64 B, NUL   | xxh3-64  |
//   |             |                  | (0: released) |       |         | padded      | of 64-167|
//   +-------------+------------------+---------------+-------+---------+-------------+----------+
//
// The owner record (bytes 64-175) is optional: all zero when no pool holds a lease
// on the device, which is what version-1 headers written before it carry. A pool
// that swaps on a remote device writes it and renews the lease while attached
// (remote_lease.hpp); another pool refuses the device while the lease runs unless
// told to take it over (swap/README.md#ownership).
//
// The slot count is fixed when the header is written: size of the device minus the
// header page, in whole slots. A header whose magic is right but whose checksum,
// version, page size or slot count is not is corrupt (Errc::bad_header), never
// guessed at.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>

#include "io/block_device.hpp"
#include "io/result.hpp"
#include "swap/data_probe.hpp"
#include "swap/types.hpp"

namespace swapvisor::swap {

inline constexpr std::uint64_t kHeaderBytes = kSlotSize;  // one page before slot 0
inline constexpr std::uint32_t kHeaderVersion = 1;

// Who holds a device, and until when (the owner record above).
struct OwnerRecord {
    std::array<std::uint8_t, 16> pool{};  // the holding SwapPool's uuid (random per pool)
    std::uint64_t lease_until_ms = 0;     // CLOCK_REALTIME ms; 0: released
    std::uint32_t pid = 0;
    std::string host;                     // at most 63 bytes are kept
    bool operator==(const OwnerRecord&) const = default;
};

struct SwapHeader {
    std::array<std::uint8_t, 16> uuid{};
    std::uint64_t slot_count = 0;
    std::optional<OwnerRecord> owner;  // none: no pool has claimed it
    bool operator==(const SwapHeader&) const = default;
};

// A random (version 4) uuid: a device's, or a pool's (remote_lease.hpp).
Result<std::array<std::uint8_t, 16>> random_uuid();
// A uuid as text: 8-4-4-4-12 lower-case hex.
std::string uuid_text(const std::array<std::uint8_t, 16>& uuid);

// Slots a device of `device_bytes` holds after its header page (0 if none).
inline std::uint64_t slots_after_header(std::uint64_t device_bytes) {
    return device_bytes < kHeaderBytes ? 0 : (device_bytes - kHeaderBytes) / kSlotSize;
}

// A header for a device of `device_bytes` with a fresh random UUID.
Result<SwapHeader> new_header(std::uint64_t device_bytes);

// The page image of a header (page.size() == kHeaderBytes).
void encode_header(const SwapHeader& header, std::span<std::byte> page);
// nullopt: no swapvisor magic at all (not a swapvisor device). Errc::bad_header: the
// magic is there but the rest does not check out.
Result<std::optional<SwapHeader>> decode_header(std::span<const std::byte> page);

// Read and decode the first page of a device (a short-lived ring of its own: swapon
// is not a hot path).
Result<std::optional<SwapHeader>> read_header(io::BlockDevice& device);
// Write the header page and flush it, so a crash never leaves a half-made device.
Result<void> write_header(io::BlockDevice& device, const SwapHeader& header);

// `swapvisor mkswap PATH [--size SIZE] [--force]`: make a swap device. A missing file
// is created with size_bytes of swap space (plus the header page, space reserved); an
// existing file or block device gets a new header after the same checks swapon makes
// (not in use, not on tmpfs; size_bytes, when given, must match), and only if it
// holds no recognisable data (Errc::holds_data, data_probe.hpp) unless erase is anything.
// Returns the header written.
Result<SwapHeader> mkswap(const std::filesystem::path& path, std::uint64_t size_bytes, Erase erase);

}  // namespace swapvisor::swap
