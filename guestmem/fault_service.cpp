// Fault service: threads that read the VM's userfaultfd and resolve each fault from
// the page's stage-2 entry (guestmem/README.md#faults). The entry, not the fault
// kind, decides: a MINOR report may arrive after the page was swapped out, a
// MISSING report after another thread already resolved it. Every resolution holds
// the page lock, so a fault never races an eviction completion, a discard, a
// VMM access or a swapoff bring-back on the same page.
//
//   zero      --MISSING-->  resident            (UFFDIO_COPY of a zero page)
//   swapped   --MISSING-->  resident[+clean]    (read into memfd, verify, CONTINUE)
//   inactive  --MINOR---->  resident            (CONTINUE: the access sample)
//   writeback --MINOR---->  resident            (cancels the eviction)
//   resident+clean --WP-->  resident            (swap copy dropped, write allowed)
#include <poll.h>
#include <unistd.h>

#include <array>
#include <vector>

#include <spdlog/spdlog.h>

#include "guestmem/errc.hpp"
#include "guestmem/guest_memory_impl.hpp"

namespace swapvisor::guestmem {
namespace {

constexpr std::size_t kEventBatch = 32;
constexpr std::uint64_t kReadaheadPages = 16;
constexpr unsigned kRingEntries = 32;

// Resolved already by someone else (EEXIST) is success: the wake below suffices.
Result<void> tolerate_exists(Result<void> r, Userfault&, std::byte*) {
    if (!r && r.error().code == make_error_code(Errc::page_exists)) return {};
    return r;
}

}  // namespace

void GuestMemory::Impl::fault_loop() {
    auto ring = io::Ring::create(kRingEntries);
    if (!ring) {
        spdlog::critical("{}: fault thread cannot create its io_uring: {}", owner.name(), ring.error().message());
        return;
    }
    std::array<uffd_msg, kEventBatch> msgs{};
    std::array<pollfd, 2> fds{pollfd{uffd->fd(), POLLIN, 0}, pollfd{stop_event.get(), POLLIN, 0}};
    while (!stopping.load(std::memory_order_relaxed)) {
        // Kernel contract: poll(2) on a userfaultfd reports POLLIN while faults are pending.
        int n = ::poll(fds.data(), fds.size(), -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            spdlog::critical("{}: poll on userfaultfd failed: {}", owner.name(), std::strerror(errno));
            return;
        }
        if (fds[1].revents) break;
        auto got = uffd->read_events(msgs);
        if (!got) {
            spdlog::critical("{}: {}", owner.name(), got.error().message());
            return;
        }
        for (std::size_t i = 0; i < *got; ++i) {
            if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
            handle_fault(msgs[i].arg.pagefault.address, msgs[i].arg.pagefault.flags, *ring);
        }
    }
}

void GuestMemory::Impl::handle_fault(std::uint64_t hva, std::uint64_t flags, io::Ring& ring) {
    auto idx_opt = idx_of_guest_addr(hva & ~(kPageSize - 1));
    if (!idx_opt) {
        spdlog::error("{}: fault outside guest memory at {:#x}", owner.name(), hva);
        return;
    }
    const std::uint64_t idx = *idx_opt;
    std::byte* addr = guest_ptr(idx);
    const bool wp_fault = flags & UFFD_PAGEFAULT_FLAG_WP;

    // A fault that will add a page waits (without any page lock) while the VM is at
    // its limit: that is what holds resident memory at the limit, not just near it.
    if (!table.peek(idx).present()) wait_for_room();

    // Resolve without waking, publish the new entry, then wake: when the faulting
    // thread resumes, the stage-2 entry already says what it will find.
    Result<void> r;
    PageState was;
    {
    PageLock lk(table, idx);
    const PageEntry e = lk.entry();
    was = e.state();
    switch (e.state()) {
        case PageState::zero:
            r = uffd->copy(addr, zero_page.data(), kPageSize, WriteProtect::no, Wake::no);
            // EEXIST: a page appeared in the memfd without an owner — only an O_DIRECT
            // write_out pinning a just-discarded page through the VMM view does that,
            // and that page is freshly zeroed (its completion punches it again). Map
            // it rather than fault for ever.
            if (!r && r.error().code == make_error_code(Errc::page_exists))
                r = tolerate_exists(uffd->continue_(addr, kPageSize, WriteProtect::no, Wake::no), *uffd, addr);
            if (r) {
                page_became_present();
                lk.set(PageEntry::make(PageState::resident));
            }
            break;
        case PageState::swapped: {
            counters.major_faults.fetch_add(1, std::memory_order_relaxed);
            if (!swap_in_locked(lk, idx, ring, /*keep_clean=*/true)) break;  // poisoned; woken below: the guest is told
            const PageEntry in = lk.entry();
            r = tolerate_exists(
                uffd->continue_(addr, kPageSize, in.clean() ? WriteProtect::yes : WriteProtect::no, Wake::no), *uffd,
                addr);
            if (r) lk.set(PageEntry::make(PageState::resident, in.vslot(), in.clean()));
            break;
        }
        case PageState::inactive:
        case PageState::writeback:
            counters.minor_faults.fetch_add(1, std::memory_order_relaxed);
            r = tolerate_exists(
                uffd->continue_(addr, kPageSize, e.clean() ? WriteProtect::yes : WriteProtect::no, Wake::no), *uffd,
                addr);
            // From writeback the slot being written is not in the entry: the completion
            // sees the state moved and frees it.
            if (r) lk.set(PageEntry::make(PageState::resident, e.vslot(), e.clean()));
            break;
        case PageState::resident:
            if (wp_fault) {
                counters.wp_faults.fetch_add(1, std::memory_order_relaxed);
                if (e.clean()) {
                    free_vslot(e.vslot());
                    note_clean_outcome(/*dirtied=*/true);
                }
                lk.set(PageEntry::make(PageState::resident));
                r = uffd->write_protect(addr, kPageSize, WriteProtect::no, Wake::no);
            } else {
                // Usually another thread resolved it first (EEXIST: the wake below is
                // all it needs); if the mapping was zapped meanwhile, map it again.
                r = tolerate_exists(
                    uffd->continue_(addr, kPageSize, e.clean() ? WriteProtect::yes : WriteProtect::no, Wake::no),
                    *uffd, addr);
            }
            break;
        case PageState::lost:
            // Re-arm the poison (a discard-less retry) so the access errors again.
            r = tolerate_exists(uffd->poison(addr, kPageSize, Wake::no), *uffd, addr);
            break;
        case PageState::reading:
            SWV_ASSERT(false, "reading state seen by a lock holder");
    }
    }
    if (r) r = uffd->wake(addr, kPageSize);
    if (r && was == PageState::swapped) readahead_after(idx, ring);
    if (r && was == PageState::zero) zero_fault_around(idx);
    if (!r) spdlog::error("{}: resolving fault at GPA {:#x} ({}): {}", owner.name(), gpa_of_idx(idx).value(),
                          to_string(was), r.error().message());
}

}  // namespace swapvisor::guestmem

namespace swapvisor::guestmem {

// Readahead (guestmem/README.md#readahead): when swap-ins follow each other in
// ascending guest order, read the next swapped pages of the run in one batch into
// the memfd and map them (clean and write-protected while clean tracking pays). A later touch is then a MINOR fault, and an
// unused page is dropped again without a write. Runs after the faulting thread was
// woken, so the guest never waits for it; skipped while the VM is at its limit.
void GuestMemory::Impl::readahead_after(std::uint64_t idx, io::Ring& ring) {
    thread_local std::uint64_t last_swapin = ~0ULL;
    const bool sequential = last_swapin != ~0ULL && idx > last_swapin && idx - last_swapin <= kReadaheadPages;
    last_swapin = idx;
    if (!sequential || over_limit()) return;
    // One decision per batch: clean copies mapped write-protected, or writable with
    // their slots freed (adaptive clean tracking, guest_memory_impl.hpp).
    const bool clean = want_clean();
    const Region& region = region_of(idx);
    std::vector<std::uint64_t> locked;
    std::vector<swap::SwapPool::PageIn> ins;
    for (std::uint64_t n = idx + 1; n < region.first_idx + region.pages && locked.size() < kReadaheadPages; ++n) {
        auto e = table.try_lock(n);
        if (!e) break;
        if (e->state() != PageState::swapped) {
            table.unlock(n, *e);
            break;
        }
        locked.push_back(n);
        ins.push_back(swap::SwapPool::PageIn{e->vslot(), vmm_ptr(n)});
    }
    if (ins.empty()) return;
    auto batch = pool->read_in(ring, ins);
    // Map the verified prefix of the run write-protected in one ioctl: reading it
    // then costs the guest no fault at all, writing it one WP fault.
    std::size_t good = 0;
    while (good < ins.size() && batch && ins[good].ok()) ++good;
    const bool mapped = good > 0 && uffd->continue_(guest_ptr(locked[0]), good * kPageSize,
                                                    clean ? WriteProtect::yes : WriteProtect::no, Wake::no)
                                        .has_value();
    for (std::size_t k = 0; k < locked.size(); ++k) {
        const std::uint64_t n = locked[k];
        if (batch && ins[k].ok()) {
            counters.swapped_pages.fetch_sub(1);
            counters.swap_in_pages.fetch_add(1, std::memory_order_relaxed);
            counters.readahead_pages.fetch_add(1, std::memory_order_relaxed);
            page_became_present();
            const PageState now = mapped && k < good ? PageState::resident : PageState::inactive;
            if (clean) {
                table.unlock(n, PageEntry::make(now, ins[k].vslot, true));
            } else {
                free_vslot(ins[k].vslot);
                table.unlock(n, PageEntry::make(now));
            }
        } else {
            // Whatever landed in the memfd is not trusted: drop it, keep the page
            // swapped; a real fault will retry and report a failure properly.
            (void)punch(n, 1);
            table.unlock(n, PageEntry::make(PageState::swapped, ins[k].vslot));
        }
        last_swapin = n;
    }
}

}  // namespace swapvisor::guestmem

namespace swapvisor::guestmem {

// Zero fault-around: a first touch that follows the previous one in guest order
// (a guest filling memory) resolves the next never-touched pages of the run with a
// single UFFDIO_COPY, so a sequential fill takes one fault per kFaultAroundPages.
// Pages that stay unused are found all-zero by the reclaimer and dropped without a
// write. Skipped while the VM is at its limit.
void GuestMemory::Impl::zero_fault_around(std::uint64_t idx) {
    thread_local std::uint64_t last_zero = ~0ULL;
    const bool sequential = last_zero != ~0ULL && idx == last_zero + 1;
    last_zero = idx;
    if (!sequential || over_limit()) return;
    const Region& region = region_of(idx);
    std::vector<std::uint64_t> locked;
    for (std::uint64_t n = idx + 1; n < region.first_idx + region.pages && locked.size() < kFaultAroundPages; ++n) {
        auto e = table.try_lock(n);
        if (!e) break;
        if (e->state() != PageState::zero) {
            table.unlock(n, *e);
            break;
        }
        locked.push_back(n);
    }
    if (locked.empty()) return;
    auto r = uffd->copy(guest_ptr(locked[0]), zero_page.data(), locked.size() * kPageSize, WriteProtect::no, Wake::no);
    if (!r) (void)punch(locked[0], locked.size());  // whatever part landed is dropped again: still zero
    for (std::uint64_t n : locked) {
        if (r) page_became_present();
        table.unlock(n, PageEntry::make(r ? PageState::resident : PageState::zero));
    }
    last_zero = locked.back();
}

}  // namespace swapvisor::guestmem
