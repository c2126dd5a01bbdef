// guestmem's error codes: the errno values callers branch on, given names.
#pragma once

#include <system_error>

namespace swapvisor::guestmem {

enum class Errc {
    page_exists = 1,     // UFFDIO_COPY/CONTINUE: the page is already mapped (EEXIST)
    retry,               // UFFDIO_*: the mapping changed under us (EAGAIN)
    uffd_closed,         // the userfaultfd is gone (ESRCH)
    out_of_range,        // a guest-physical range outside RAM
    misaligned,          // a range that must be page aligned is not
    page_lost,           // swap-in failed: the page is poisoned and the guest told
    unsupported,         // a kernel feature swapvisor needs is missing
    bad_snapshot,        // a memory snapshot that is missing, truncated, of another version or size
};

const std::error_category& guestmem_category();
inline std::error_code make_error_code(Errc e) { return {static_cast<int>(e), guestmem_category()}; }

}  // namespace swapvisor::guestmem

template <>
struct std::is_error_code_enum<swapvisor::guestmem::Errc> : std::true_type {};
