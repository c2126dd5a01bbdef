// LoadErrc: why a kernel image could not be booted, as the error codes of the
// loader's Result<T> (io/result.hpp). The code lets callers and tests branch; the
// Error's context names the file and the offending value for the operator, e.g.
//   "reading the kernel (guest.elf: PT_LOAD segment 2 [0x100000, 0x300000) ...):
//    kernel segment not inside guest RAM".
#pragma once

#include <system_error>

namespace swapvisor::vmm::loader {

enum class LoadErrc {
    cannot_open = 1,     // open/read failed (missing file, permissions, directory)
    truncated,           // a header, table or segment points past the end of the file
    not_elf,             // no \x7fELF magic
    unsupported_elf,     // not ELF64, not little endian, not x86-64, not EXEC/DYN
    bad_segment,         // p_filesz > p_memsz, address overflow, overlapping segments
    outside_ram,         // a segment is not inside one RAM range of the memory map
    overlaps_boot_data,  // a segment covers start_info, the memory map or the cmdline
    no_pvh_note,         // no XEN_ELFNOTE_PHYS32_ENTRY note
    bad_pvh_note,        // malformed note or entry outside the loaded image
    cmdline_too_long,    // or contains a NUL byte
};
// A guest memory write or discard that fails while loading is guestmem's own
// Error, passed up with the file and the guest range added to its context.

const std::error_category& load_category();
inline std::error_code make_error_code(LoadErrc e) { return {static_cast<int>(e), load_category()}; }

}  // namespace swapvisor::vmm::loader

template <>
struct std::is_error_code_enum<swapvisor::vmm::loader::LoadErrc> : std::true_type {};
