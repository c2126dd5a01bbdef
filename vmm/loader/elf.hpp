// ElfImage: a 64-bit x86 ELF kernel read into memory and validated: its PT_LOAD
// segments (where each goes in guest-physical memory, p_paddr) and its PVH entry
// point from the XEN_ELFNOTE_PHYS32_ENTRY note. Invariant: an ElfImage that exists
// has every segment's file bytes inside `bytes`, p_filesz <= p_memsz, no address
// overflow, no two segments overlapping, and a PVH entry inside a loaded segment.
// Whether the segments fit the guest's RAM is the boot plan's check (pvh.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "io/result.hpp"
#include "vmm/loader/load_error.hpp"

namespace swapvisor::vmm::loader {

// The Xen ELF note that carries the 32-bit PVH entry (xen/include/public/elfnote.h):
// name "Xen", type 18, descriptor = the physical entry address.
inline constexpr std::uint32_t kXenElfnotePhys32Entry = 18;

struct ElfSegment {
    unsigned index;            // program header index, for messages
    std::uint64_t paddr;       // guest-physical load address
    std::uint64_t file_offset;
    std::uint64_t filesz;      // bytes copied from the file
    std::uint64_t memsz;       // bytes in memory; [filesz, memsz) is zeroed
};

struct ElfImage {
    std::string name;                 // file name for messages
    std::vector<std::byte> bytes;     // the whole file
    std::vector<ElfSegment> segments; // PT_LOAD with p_memsz > 0, sorted by paddr
    std::uint32_t pvh_entry = 0;

    std::span<const std::byte> file_bytes(const ElfSegment& s) const {
        return std::span<const std::byte>(bytes).subspan(s.file_offset, s.filesz);
    }
};

// Parse and validate an image already in memory; `name` is used in messages.
Result<ElfImage> parse_elf(std::string name, std::vector<std::byte> bytes);
// Read `path` (at most 1 GiB) and parse it.
Result<ElfImage> read_elf(const std::filesystem::path& path);

}  // namespace swapvisor::vmm::loader
