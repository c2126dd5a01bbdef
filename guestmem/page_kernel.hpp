// PageKernel: the seam between the page-state machine (transitions.cpp) and the
// kernel. A transition changes a stage-2 entry and makes the few kernel calls that
// go with it — punch a hole in the memfd, zap the guest view, UFFDIO_COPY /
// CONTINUE / POISON / WAKE / WRITEPROTECT — and reads or writes page bytes through
// the VMM view. MemfdKernel (memfd_kernel.hpp) does that over memfd + userfaultfd;
// tests/fakes/fake_page_kernel.hpp models the same contract in memory and records
// the history of calls, so every transition and race runs without root in
// microseconds (as Hedron's page-table tests run on fake memory).
//
// The contract a fake must keep (checked on the real kernel by the privileged
// suites):
//   - the memfd page of a PageIdx is `present` or a hole; the guest view of it is
//     unmapped, mapped (optionally write-protected) or poisoned;
//   - vmm_page() gives the page's bytes; touching them makes a hole present (zeros);
//   - copy_out: a run's bytes copied into a buffer, touching neither view (a hole
//     reads as zeros and stays a hole);
//   - punch: memfd hole and the guest mapping gone, a poison marker stays;
//   - zap: the guest mapping gone (poison marker too), the memfd page stays;
//   - copy_zeros: a hole becomes a present zero page, mapped; page_exists if present;
//   - copy_page: the same with the bytes of `src` (one page, optionally write-protected);
//     the page is the memfd's, so vmm_page() then reads those bytes;
//   - continue_: a present page becomes mapped; page_exists if already mapped; a
//     hole is an error (EFAULT);
//   - poison: an unmapped page gets the marker; page_exists if mapped;
//   - run calls may map a prefix of the run before failing: Mapped says how much.
#pragma once

#include <cstddef>
#include <cstdint>

#include "guestmem/addr.hpp"
#include "io/result.hpp"

namespace swapvisor::guestmem {

enum class Wake : bool { no, yes };
enum class WriteProtect : bool { no, yes };

// What a run call (copy_zeros, continue_) did: `pages` of the run, from its first
// page, were mapped before `status` (success, or the error that stopped it).
struct Mapped {
    std::uint64_t pages = 0;
    Result<void> status;
};

class PageKernel {
public:
    virtual ~PageKernel() = default;

    virtual std::uint64_t pages() const = 0;
    // One past the last page of idx's region: a run of pages never crosses it.
    virtual PageIdx region_end(PageIdx idx) const = 0;
    virtual Gpa gpa_of(PageIdx idx) const = 0;

    // The page's bytes through the VMM view (4 KiB, page aligned).
    virtual std::byte* vmm_page(PageIdx idx) = 0;

    // Copy a run's bytes (inside one region) into dst (count * 4 KiB) by reading the
    // memfd: no view is mapped or faulted, a hole reads as zeros and stays a hole.
    // Row 5 stages its pages this way (staging.hpp).
    virtual Result<void> copy_out(PageIdx first, std::uint64_t count, std::byte* dst) = 0;

    virtual Result<void> punch(PageIdx first, std::uint64_t count) = 0;
    virtual Result<void> zap(PageIdx first, std::uint64_t count) = 0;
    virtual Mapped copy_zeros(PageIdx first, std::uint64_t count, Wake wake) = 0;
    virtual Result<void> copy_page(PageIdx idx, const std::byte* src, WriteProtect wp, Wake wake) = 0;
    virtual Mapped continue_(PageIdx first, std::uint64_t count, WriteProtect wp, Wake wake) = 0;
    virtual Result<void> poison(PageIdx idx, Wake wake) = 0;
    virtual Result<void> wake(PageIdx first, std::uint64_t count) = 0;
    virtual Result<void> write_protect(PageIdx idx, WriteProtect wp, Wake wake) = 0;
};

}  // namespace swapvisor::guestmem
