// What a device holds that writing a swap header over it would destroy
// (swap/README.md#erase). One rule for every path that formats an existing device:
// `swapvisor mkswap` (swap::mkswap), `--swap PATH,format=yes` and `ctl swapon
// --format` (SwapPool::swapon with Format::yes): each refuses a device whose first
// MiB shows recognisable data, unless forced (mkswap --force, format=force, ctl
// swapon --format --force). Recognisable means, in this order:
//   - a swapvisor swap header (another pool's device: it may hold swapped pages);
//   - a kernel swap signature (mkswap(8): "SWAPSPACE2" at the end of the first page);
//   - a file system, RAID / LVM member or partition table that libblkid recognises
//     in those bytes (ext4, xfs, btrfs, LUKS, dos / gpt, ...);
//   - any non-zero byte in them.
// Only an all-zero first MiB (a new disk, a file made by fallocate or dd from
// /dev/zero) is formatted without being forced. Signatures further in (a partition
// table's backup at the end of a disk) are not looked for: the first MiB is where
// every format swapvisor knows writes its own.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "io/block_device.hpp"
#include "io/result.hpp"

namespace swapvisor::swap {

inline constexpr std::uint64_t kProbeBytes = 1ULL << 20;

// Format a device that holds recognisable data: never (blank_only), or because the
// operator said so (anything: mkswap --force, format=force, --format --force).
enum class Erase : bool { blank_only, anything };

// What the bytes at the start of a device show, worded for an operator ("an ext4
// file system (LABEL \"data\", UUID ...)", "a Linux swap area made by mkswap(8)",
// "non-zero bytes (the first at byte 4096)"); nullopt when every byte is zero.
std::optional<std::string> recognise_data(std::span<const std::byte> head);

// Read the first min(kProbeBytes, size) bytes of `device` (a short-lived ring of its
// own, as read_header) and recognise_data them.
Result<std::optional<std::string>> find_data(io::BlockDevice& device);

// The rule itself: ok when the device may be erased (find_data found nothing, or
// erase is anything); else Errc::holds_data, its context naming what was found.
Result<void> check_erasable(io::BlockDevice& device, Erase erase);

}  // namespace swapvisor::swap
