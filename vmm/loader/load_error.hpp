// LoadError: why a kernel image could not be booted. The code lets callers and tests
// branch; the message names the file and the offending value for the operator
// ("guest.elf: PT_LOAD segment 2 [0x100000, 0x300000) lies outside guest RAM").
#pragma once

#include <expected>
#include <string>

namespace swapvisor::vmm::loader {

enum class LoadErrc {
    cannot_open,       // open/read failed (missing file, permissions, directory)
    truncated,         // a header, table or segment points past the end of the file
    not_elf,           // no \x7fELF magic
    unsupported_elf,   // not ELF64, not little endian, not x86-64, not EXEC/DYN
    bad_segment,       // p_filesz > p_memsz, address overflow, overlapping segments
    outside_ram,       // a segment is not inside one RAM range of the memory map
    overlaps_boot_data,  // a segment covers start_info, the memory map or the cmdline
    no_pvh_note,       // no XEN_ELFNOTE_PHYS32_ENTRY note
    bad_pvh_note,      // malformed note or entry outside the loaded image
    cmdline_too_long,  // or contains a NUL byte
    memory_write,      // guest memory refused a write (guestmem error)
};

struct LoadError {
    LoadErrc code;
    std::string message;
};

template <class T>
using LoadResult = std::expected<T, LoadError>;

}  // namespace swapvisor::vmm::loader
