// The PVH boot protocol as swapvisor speaks it: our own definitions of Xen's
// hvm_start_info (version 1) and hvm_memmap_table_entry (layouts from
// xen/include/public/arch-x86/hvm/start_info.h, not included), the fixed low
// addresses where the boot data goes, and plan_boot(), which turns a validated ELF
// image, the guest's RAM ranges and a command line into the list of writes that
// boot it. plan_boot() touches no memory, so it is tested byte for byte
// (tests/vmm/pvh_test.cpp); load_kernel() in loader.hpp performs the writes.
//
// Boot-data address map (guest-physical, all below 1 MiB):
//
//   0x0000_0000 +-----------------------------+
//               | unused (real-mode IVT/BDA)  |
//   0x0000_6000 +-----------------------------+ kStartInfoGpa
//               | hvm_start_info (56 bytes)   |  <- EBX at the PVH entry
//   0x0000_7000 +-----------------------------+ kMemmapGpa
//               | hvm_memmap_table_entry[]    |  24 bytes each, <= 170
//   0x0000_8000 +-----------------------------+
//               | unused                      |
//   0x0002_0000 +-----------------------------+ kCmdlineGpa
//               | command line, NUL-terminated|  <= kCmdlineMax bytes + NUL
//   0x0002_1000 +-----------------------------+
//               | unused                      |
//   0x0009_fc00 +-----------------------------+ kReservedLowBase
//               | reserved (EBDA, VGA, ROMs)  |  memmap type 2, as on PCs
//   0x0010_0000 +-----------------------------+ 1 MiB
//               | kernel PT_LOAD segments     |  (examples: 1 MiB, Linux: 16 MiB)
//               | ... RAM up to min(mem,3GiB) |
//   0xc000_0000 +-----------------------------+ 3-4 GiB hole: absent from the map
//   0x1_0000_0000 high RAM (memory > 3 GiB)   |
//
// Kernel segments must lie inside RAM entries of this map (not in the reserved
// range) and must not overlap the boot data [0x6000, 0x8000) or the command line
// page [0x20000, 0x21000).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "guestmem/addr.hpp"
#include "vmm/loader/elf.hpp"
#include "io/result.hpp"
#include "vmm/loader/load_error.hpp"

namespace swapvisor::vmm::loader {

inline constexpr std::uint32_t kHvmStartMagic = 0x336e'c578;
inline constexpr std::uint32_t kHvmStartInfoVersion = 1;

inline constexpr std::uint32_t kMemmapTypeRam = 1;
inline constexpr std::uint32_t kMemmapTypeReserved = 2;

inline constexpr std::uint64_t kStartInfoGpa = 0x6000;
inline constexpr std::uint64_t kMemmapGpa = 0x7000;
inline constexpr std::uint64_t kMemmapEnd = 0x8000;
inline constexpr std::uint64_t kCmdlineGpa = 0x2'0000;
inline constexpr std::uint64_t kCmdlineEnd = 0x2'1000;
inline constexpr std::uint64_t kCmdlineMax = kCmdlineEnd - kCmdlineGpa - 1;  // 4095 characters + NUL
inline constexpr std::uint64_t kReservedLowBase = 0x9'fc00;
inline constexpr std::uint64_t kReservedLowEnd = 0x10'0000;

struct HvmStartInfo {
    std::uint32_t magic;
    std::uint32_t version;
    std::uint32_t flags;
    std::uint32_t nr_modules;
    std::uint64_t modlist_paddr;
    std::uint64_t cmdline_paddr;
    std::uint64_t rsdp_paddr;
    // version >= 1
    std::uint64_t memmap_paddr;
    std::uint32_t memmap_entries;
    std::uint32_t reserved;
};
static_assert(sizeof(HvmStartInfo) == 56, "hvm_start_info v1 is 56 bytes");

struct HvmMemmapEntry {
    std::uint64_t addr;
    std::uint64_t size;
    std::uint32_t type;
    std::uint32_t reserved;
};
static_assert(sizeof(HvmMemmapEntry) == 24, "hvm_memmap_table_entry is 24 bytes");

inline constexpr std::size_t kMemmapMaxEntries = (kMemmapEnd - kMemmapGpa) / sizeof(HvmMemmapEntry);

// The guest's memory map from its RAM ranges (sorted, non-overlapping): RAM as
// type 1 except [0x9fc00, 0x100000), which becomes one type-2 entry where RAM
// covers it. Gaps between ranges (the 3-4 GiB hole) are simply absent.
std::vector<HvmMemmapEntry> build_memory_map(std::span<const guestmem::GpaRange> ram);

// Bytes to copy to one guest-physical address.
struct BootWrite {
    guestmem::Gpa gpa;
    std::span<const std::byte> bytes;  // into the ElfImage or the BootPlan
};

struct BootPlan {
    std::uint32_t entry = 0;          // EIP at the PVH entry
    std::uint32_t start_info_gpa = 0; // EBX at the PVH entry
    HvmStartInfo start_info{};
    std::vector<HvmMemmapEntry> memory_map;
    // The boot data as bytes. Writes point into these heap buffers, which a move of
    // the plan does not relocate.
    std::vector<std::byte> start_info_bytes;
    std::vector<std::byte> memmap_bytes;
    std::vector<std::byte> cmdline_bytes;  // with its NUL
    std::vector<BootWrite> writes;    // segment file bytes, then the boot data
    std::vector<guestmem::GpaRange> zero_fills;  // [p_filesz, p_memsz) of each segment
};

// Check the image against the memory map and lay out the boot data. The plan's
// writes point into `image`: keep it alive until the plan has been loaded.
Result<BootPlan> plan_boot(const ElfImage& image, std::span<const guestmem::GpaRange> ram,
                               std::string_view cmdline);

}  // namespace swapvisor::vmm::loader
