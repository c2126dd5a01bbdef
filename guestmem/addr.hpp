// Guest address spaces as distinct types: Gpa (guest-physical byte address), Gfn
// (guest frame number, 4 KiB), PageIdx (a page's index in the stage-2 table: RAM
// pages numbered densely, so the 3-4 GiB hole costs no entries), and the
// conversions between them. Gfn and PageIdx differ above 4 GiB; only the memory
// layer (PageKernel::gpa_of) converts between them.
#pragma once

#include <cstdint>

#include "io/strong_int.hpp"

namespace swapvisor::guestmem {

inline constexpr std::uint64_t kPageSize = 4096;
inline constexpr unsigned kPageShift = 12;

using Gpa = StrongInt<struct GpaTag, std::uint64_t>;
using Gfn = StrongInt<struct GfnTag, std::uint64_t>;
using PageIdx = StrongInt<struct PageIdxTag, std::uint64_t>;

constexpr Gfn gfn_of(Gpa gpa) { return Gfn(gpa.value() >> kPageShift); }
constexpr Gpa gpa_of(Gfn gfn) { return Gpa(gfn.value() << kPageShift); }
constexpr std::uint64_t page_offset(Gpa gpa) { return gpa.value() & (kPageSize - 1); }

// A guest-physical byte range [gpa, gpa + len).
struct GpaRange {
    Gpa gpa;
    std::uint64_t len;
};

}  // namespace swapvisor::guestmem
