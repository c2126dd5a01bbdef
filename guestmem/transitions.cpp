// Transitions: see transitions.hpp and guestmem/README.md#transitions. The row
// numbers in the comments are the README's.
#include "guestmem/transitions.hpp"

#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

#include "guestmem/errc.hpp"
#include "guestmem/snapshot_image.hpp"
#include "guestmem/zero_page.hpp"
#include "io/ring.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::guestmem {
namespace {

bool is_exists(const Result<void>& r) { return !r && r.error().code == make_error_code(Errc::page_exists); }

// Resolved already by someone else (EEXIST) is success: the wake that follows suffices.
Result<void> tolerate_exists(Result<void> r) { return is_exists(r) ? Result<void>{} : r; }

WriteProtect wp_if(bool clean) { return clean ? WriteProtect::yes : WriteProtect::no; }
Clean clean_if(bool clean) { return clean ? Clean::yes : Clean::no; }

// Apply f to each maximal run of consecutive pages of `locks` (sorted ascending)
// that stays inside one memory region: f(first, count, locks of the run).
template <class F>
void for_each_run(PageKernel& kernel, std::span<PageLock> locks, F&& f) {
    std::size_t i = 0;
    while (i < locks.size()) {
        const PageIdx first = locks[i].idx();
        const PageIdx end = kernel.region_end(first);
        std::size_t j = i + 1;
        while (j < locks.size() && locks[j].idx().value() == locks[j - 1].idx().value() + 1 && locks[j].idx() < end)
            ++j;
        f(first, j - i, locks.subspan(i, j - i));
        i = j;
    }
}

}  // namespace

// --- the lock and its accounting ----------------------------------------------------

PageLock::~PageLock() {
    if (owner_) owner_->release(idx_, was_, now_);
}

PageLock& PageLock::operator=(PageLock&& o) noexcept {
    if (this != &o) {
        if (owner_) owner_->release(idx_, was_, now_);
        owner_ = std::exchange(o.owner_, nullptr);
        idx_ = o.idx_;
        was_ = o.was_;
        now_ = o.now_;
    }
    return *this;
}

Transitions::Transitions(Deps deps)
    : d_(std::move(deps)), staging_(d_.staging ? *d_.staging : StagingPool(kStagingPages, kStagingKept)) {}

PageLock Transitions::lock(PageIdx idx) { return PageLock(*this, idx, d_.table.lock(idx)); }

std::optional<PageLock> Transitions::try_lock(PageIdx idx) {
    auto e = d_.table.try_lock(idx);
    if (!e) return std::nullopt;
    return PageLock(*this, idx, *e);
}

void Transitions::release(PageIdx idx, PageEntry was, PageEntry now) {
    SWV_ASSERT(now.state() != PageState::reading, "a page lock released in the reading state");
    // Account before publishing: whoever locks the page next sees counts that
    // already include it.
    if (was.present() != now.present()) {
        if (now.present()) d_.limits.pages_added(1);
        else d_.limits.pages_freed(1);
    }
    const bool was_swapped = was.state() == PageState::swapped, now_swapped = now.state() == PageState::swapped;
    if (!was_swapped && now_swapped) d_.occupancy.swapped.fetch_add(1);
    if (was_swapped && !now_swapped) d_.occupancy.swapped.fetch_sub(1);
    d_.table.unlock(idx, now);
}

void Transitions::free_vslot(swap::VSlot v) {
    if (d_.pool && v != swap::kNoVSlot) d_.pool->free(v);
}

void Transitions::drop_slot(PageEntry e) {
    // A borrowed slot is the snapshot's reference, not this VM's (README#borrowed).
    if (!e.borrowed()) free_vslot(e.vslot());
}

bool Transitions::keep_copy(PageEntry e, bool want_clean) {
    // A clean copy is a reference this VM owns and frees as the slot's owner; a
    // borrowed slot is not its own, so it keeps no copy (README#borrowed).
    return want_clean && !e.borrowed();
}

bool Transitions::want_clean_for(std::span<const PageLock> run) {
    // One decision per batch (one mapping call); a batch with a borrowed page maps
    // writable, or that page would take a write fault for a copy it does not keep.
    const bool any_borrowed =
        std::any_of(run.begin(), run.end(), [](const PageLock& lk) { return lk.entry().borrowed(); });
    return !any_borrowed && d_.clean.want_clean();
}

// --- guest faults ----------------------------------------------------------------------

Result<void> Transitions::fault_zero(PageLock& lk) {  // 1
    SWV_ASSERT(lk.entry().state() == PageState::zero, "fault_zero on a page that is not zero");
    Result<void> r = d_.kernel.copy_zeros(lk.idx(), 1, Wake::no).status;
    // EEXIST: a page appeared in the memfd without an owner — only an O_DIRECT
    // write_out pinning a just-discarded page through the VMM view does that, and that
    // page is freshly zeroed (its completion punches it again). Map it rather than
    // fault for ever.
    if (is_exists(r)) r = tolerate_exists(d_.kernel.continue_(lk.idx(), 1, WriteProtect::no, Wake::no).status);
    if (r) lk.set(PageEntry::make(PageState::resident));
    return r;
}

Result<void> Transitions::fault_minor(PageLock& lk) {  // 3, 6
    const PageEntry e = lk.entry();
    SWV_ASSERT(e.state() == PageState::inactive || e.state() == PageState::writeback, "minor fault on a page not in memory");
    d_.counters.minor_faults.fetch_add(1, std::memory_order_relaxed);
    Result<void> r = tolerate_exists(d_.kernel.continue_(lk.idx(), 1, wp_if(e.clean()), Wake::no).status);
    // From writeback the slot being written is not in the entry: the completion sees
    // the state (or the epoch, if the page is queued again) moved and frees it (6).
    if (r) lk.set(PageEntry::make(PageState::resident, e.vslot(), clean_if(e.clean())).with_active(kActiveSweeps));
    return r;
}

std::span<std::byte> Transitions::bounce_page() {
    // One page per thread, allocated on the thread's first swap-in fault (so only fault
    // threads pay for it). Empty if it cannot be allocated: row 10 then reads into the
    // memfd as 11 does.
    thread_local io::Mapping page;
    if (page.data() == nullptr) {
        if (auto m = io::Mapping::anonymous(kPageSize)) page = std::move(*m);
    }
    return page.span();
}

Result<void> Transitions::fault_swapped(PageLock& lk, io::Ring& ring) {  // 10
    d_.counters.major_faults.fetch_add(1, std::memory_order_relaxed);
    const std::span<std::byte> bounce = bounce_page();
    if (bounce.empty()) {
        // A failed swap-in leaves the page lost and poisoned (12): the caller still
        // wakes the guest, which then gets its memory error.
        if (!swap_in(lk, ring, Clean::yes)) return {};
        const PageEntry in = lk.entry();
        Result<void> r = tolerate_exists(d_.kernel.continue_(lk.idx(), 1, wp_if(in.clean()), Wake::no).status);
        if (r) lk.set(PageEntry::make(PageState::resident, in.vslot(), clean_if(in.clean())));
        return r;
    }
    const PageEntry e = lk.entry();
    SWV_ASSERT(e.state() == PageState::swapped, "swap-in fault on a page that is not swapped");
    SWV_ASSERT(d_.pool != nullptr, "swapped page without a swap pool");
    // Read into this thread's bounce page (the fault worker's registered buffer), not
    // into the memfd: no memfd page is allocated and pinned under the O_DIRECT read,
    // and one UFFDIO_COPY allocates, fills and maps the page once its checksum matched
    // (README#transitions row 10, docs/DESIGN-NOTES.md 41).
    d_.table.publish_locked(lk.idx(), e.as_reading());
    auto read = d_.pool->read_in(ring, e.vslot(), bounce.data());
    d_.counters.swap_in_pages.fetch_add(1, std::memory_order_relaxed);
    if (!read) {
        lose(lk, read.error());  // 12: resolved; the woken guest gets its memory error
        return {};
    }
    const bool clean = keep_copy(e, d_.clean.want_clean());
    const swap::VSlot kept = clean ? e.vslot() : swap::kNoVSlot;
    if (!clean) drop_slot(e);
    Result<void> r = d_.kernel.copy_page(lk.idx(), bounce.data(), wp_if(clean), Wake::no);
    if (r) {
        lk.set(PageEntry::make(PageState::resident, kept, clean_if(clean)));
        return r;
    }
    // The copy did not map it. EEXIST: the memfd holds a page already (an O_DIRECT
    // write_out re-allocated it through the VMM view after a punch, see fault_zero):
    // put the verified bytes there and map it with CONTINUE. Any other error leaves
    // them in the memfd as an inactive page; the guest, woken, faults again (MINOR).
    std::memcpy(d_.kernel.vmm_page(lk.idx()), bounce.data(), kPageSize);
    lk.set(PageEntry::make(PageState::inactive, kept, clean_if(clean)));
    if (!is_exists(r)) return r;
    r = tolerate_exists(d_.kernel.continue_(lk.idx(), 1, wp_if(clean), Wake::no).status);
    if (r) lk.set(PageEntry::make(PageState::resident, kept, clean_if(clean)));
    return r;
}

Result<void> Transitions::fault_write_protected(PageLock& lk) {  // 13
    const PageEntry e = lk.entry();
    SWV_ASSERT(e.state() == PageState::resident, "WP fault on a page that is not resident");
    d_.counters.wp_faults.fetch_add(1, std::memory_order_relaxed);
    if (e.clean()) {
        free_vslot(e.vslot());
        d_.clean.note(CleanOutcome::dirtied);
    }
    lk.set(PageEntry::make(PageState::resident));
    return d_.kernel.write_protect(lk.idx(), WriteProtect::no, Wake::no);
}

Result<void> Transitions::fault_resident(PageLock& lk) {
    // Usually another thread resolved it first (EEXIST: the wake is all it needs); if
    // the mapping was zapped meanwhile, map it again.
    const PageEntry e = lk.entry();
    return tolerate_exists(d_.kernel.continue_(lk.idx(), 1, wp_if(e.clean()), Wake::no).status);
}

Result<void> Transitions::fault_lost(PageLock& lk) {
    // Re-arm the poison (EEXIST: still armed) so the access errors again.
    return tolerate_exists(arm_poison(lk.idx()));
}

Result<void> Transitions::arm_poison(PageIdx idx) {
    Result<void> r = d_.kernel.poison(idx, Wake::no);
    if (!is_exists(r)) return r;
    // Kernel contract: UFFDIO_POISON refuses any pte that is not none, uffd-wp pte
    // markers included. Zapping a write-protected page (a clean copy, row 4) leaves
    // such a marker, and neither MADV_DONTNEED nor a hole punch removes it; the next
    // access then raises a MINOR fault again instead of SIGBUS, for ever. Un-protecting
    // the range drops the marker (a poison marker is left alone); then poison again.
    SWV_TRY(d_.kernel.write_protect(idx, WriteProtect::no, Wake::no));
    return d_.kernel.poison(idx, Wake::no);
}

void Transitions::fault_around(std::span<PageLock> run) {  // 1'
    if (run.empty()) return;
    const Mapped m = d_.kernel.copy_zeros(run.front().idx(), run.size(), Wake::no);
    // The mapped prefix is resident; whatever part of the rest landed is dropped again.
    if (m.pages < run.size()) (void)d_.kernel.punch(run[m.pages].idx(), run.size() - m.pages);
    for (std::size_t k = 0; k < m.pages; ++k) run[k].set(PageEntry::make(PageState::resident));
}

void Transitions::read_ahead(std::span<PageLock> run, io::Ring& ring) {  // 10'
    if (run.empty() || !d_.pool) return;
    // One decision per batch: clean copies mapped write-protected, or writable with
    // their slots freed (adaptive clean copies, limits.hpp).
    const bool clean = want_clean_for(run);
    std::vector<swap::SwapPool::PageIn> ins;
    ins.reserve(run.size());
    for (PageLock& lk : run) {
        SWV_ASSERT(lk.entry().state() == PageState::swapped, "readahead of a page that is not swapped");
        ins.push_back(swap::SwapPool::PageIn{lk.entry().vslot(), d_.kernel.vmm_page(lk.idx())});
    }
    const bool batch_ok = d_.pool->read_in(ring, ins).has_value();
    // Map the verified prefix in one call: reading it then costs the guest no fault.
    // The kernel may map only part of it: only what it mapped is resident.
    std::size_t good = 0;
    while (good < ins.size() && batch_ok && ins[good].ok()) ++good;
    const std::uint64_t mapped = good ? d_.kernel.continue_(run.front().idx(), good, wp_if(clean), Wake::no).pages : 0;
    for (std::size_t k = 0; k < run.size(); ++k) {
        PageLock& lk = run[k];
        if (!batch_ok || !ins[k].ok()) {
            // Whatever landed in the memfd is not trusted: drop it, keep the page
            // swapped; a real fault will retry and report a failure properly.
            (void)d_.kernel.punch(lk.idx(), 1);
            continue;
        }
        d_.counters.swap_in_pages.fetch_add(1, std::memory_order_relaxed);
        d_.counters.readahead_pages.fetch_add(1, std::memory_order_relaxed);
        const PageState now = k < mapped ? PageState::resident : PageState::inactive;
        if (keep_copy(lk.entry(), clean)) {
            lk.set(PageEntry::make(now, ins[k].vslot, Clean::yes));
        } else {
            drop_slot(lk.entry());
            lk.set(PageEntry::make(now));
        }
    }
}

Result<void> Transitions::wake_guest(PageIdx idx) { return d_.kernel.wake(idx, 1); }

// --- swap-in and lost pages -------------------------------------------------------------

Result<void> Transitions::swap_in(PageLock& lk, io::Ring& ring, Clean keep) {  // 10, 11, 11'
    const PageEntry e = lk.entry();
    SWV_ASSERT(e.state() == PageState::swapped, "swap-in of a page that is not swapped");
    SWV_ASSERT(d_.pool != nullptr, "swapped page without a swap pool");
    // Read straight into the memfd through the VMM view: the guest cannot see the
    // page until it is mapped, after the checksum has been verified.
    d_.table.publish_locked(lk.idx(), e.as_reading());
    auto read = d_.pool->read_in(ring, e.vslot(), d_.kernel.vmm_page(lk.idx()));
    d_.counters.swap_in_pages.fetch_add(1, std::memory_order_relaxed);
    if (!read) {
        lose(lk, read.error());
        return make_error(Errc::page_lost, "swap-in", fmt::format("GPA {:#x}", d_.kernel.gpa_of(lk.idx()).value()));
    }
    if (keep == Clean::yes && keep_copy(e, d_.clean.want_clean())) {
        lk.set(PageEntry::make(PageState::inactive, e.vslot(), Clean::yes));
    } else {
        drop_slot(e);
        lk.set(PageEntry::make(PageState::inactive));
    }
    return {};
}

void Transitions::lose(PageLock& lk, const Error& why) {  // 12
    // Never hand the guest stale or wrong bytes: drop what was read and poison the
    // guest view so the next access is a memory error. No wake here: a guest woken
    // now would take its SIGBUS while the entry still says swapped.
    (void)d_.kernel.punch(lk.idx(), 1);
    if (auto r = arm_poison(lk.idx()); !r)
        spdlog::error("{}: poisoning the lost page at GPA {:#x}: {}", d_.name, d_.kernel.gpa_of(lk.idx()).value(),
                      r.error().message());
    d_.counters.lost_pages.fetch_add(1, std::memory_order_relaxed);
    drop_slot(lk.entry());
    lk.set(PageEntry::make(PageState::lost));
    spdlog::error("{}: guest page at GPA {:#x} lost: {}", d_.name, d_.kernel.gpa_of(lk.idx()).value(), why.message());
}

// --- VMM accesses ---------------------------------------------------------------------------

void Transitions::vmm_write_zero(PageLock& lk) {  // 2
    SWV_ASSERT(lk.entry().state() == PageState::zero, "vmm_write_zero on a page that is not zero");
    // The caller's write through the VMM view allocates the memfd page.
    lk.set(PageEntry::make(PageState::inactive));
}

Result<void> Transitions::vmm_swap_in(PageLock& lk, io::Ring& ring, Access access) {  // 11
    return swap_in(lk, ring, access == Access::read ? Clean::yes : Clean::no);
}

void Transitions::vmm_write_writeback(PageLock& lk) {  // 6'
    SWV_ASSERT(lk.entry().state() == PageState::writeback, "vmm_write_writeback on a page not in writeback");
    // The copy in flight is stale: its completion sees the state moved and frees the slot.
    lk.set(PageEntry::make(PageState::inactive));
}

void Transitions::vmm_write_clean(PageLock& lk) {  // 13'
    const PageEntry e = lk.entry();
    SWV_ASSERT(e.clean(), "vmm_write_clean on a page without a clean copy");
    // The swap copy no longer matches; the guest view stays write-protected until the
    // guest's next write fault clears it (13 without a slot).
    free_vslot(e.vslot());
    lk.set(PageEntry::make(e.state()));
}

// --- reclaim ----------------------------------------------------------------------------------

void Transitions::deactivate(std::vector<PageLock>& resident) {  // 4
    for_each_run(d_.kernel, resident, [&](PageIdx first, std::uint64_t count, std::span<PageLock> run) {
        if (!d_.kernel.zap(first, count)) return;  // stays resident; the hand comes back
        for (PageLock& lk : run) {
            const PageEntry e = lk.entry();
            lk.set(PageEntry::make(PageState::inactive, e.vslot(), clean_if(e.clean())));
        }
    });
    resident.clear();
}

bool Transitions::pass_active(PageLock& lk) {  // 4a
    const PageEntry e = lk.entry();
    SWV_ASSERT(e.state() == PageState::resident, "pass_active on a page that is not resident");
    if (e.active() == 0) return false;
    lk.set(e.with_active(e.active() - 1));
    return true;
}

bool Transitions::drop_cold(PageLock& lk) {  // 8, 9
    const PageEntry e = lk.entry();
    SWV_ASSERT(e.state() == PageState::inactive, "drop_cold of a page that is not inactive");
    if (e.clean()) {  // 9: an identical copy is in swap
        lk.set(PageEntry::make(PageState::swapped, e.vslot()));
        d_.counters.clean_drops.fetch_add(1, std::memory_order_relaxed);
        d_.clean.note(CleanOutcome::reused);
        return true;
    }
    // 8: nothing worth writing. Read through a copy, not the VMM view: a fault there
    // maps the page in a second view that the punch must then unmap (staging.hpp).
    alignas(64) std::byte copy[kPageSize];
    if (d_.kernel.copy_out(lk.idx(), 1, copy) && is_zero_page(copy)) {
        lk.set(PageEntry::make(PageState::zero));
        d_.counters.zero_pages.fetch_add(1, std::memory_order_relaxed);
        return true;
    }
    return false;
}

Writeback Transitions::writeback_staged(PageLock&& lk, const std::byte* copy, std::uint32_t checksum,
                                        const std::shared_ptr<StagingBuffer>& staging) {  // 5
    SWV_ASSERT(lk.entry().state() == PageState::inactive && !lk.entry().clean(), "writeback of a page that is not dirty inactive");
    PageLock owned(std::move(lk));
    WritebackEpoch epoch(next_epoch_.fetch_add(1, std::memory_order_relaxed));
    if (epoch.value() == 0) epoch = WritebackEpoch(next_epoch_.fetch_add(1, std::memory_order_relaxed));  // wrapped
    owned.set(PageEntry::make_writeback(epoch));
    // The copy was taken under this lock, so it is the page as of entering writeback;
    // while the entry stays in this epoch nobody changes the page (a fault, VMM write
    // or discard changes the entry first), and if it leaves it the completion frees
    // the slot (README#writeback-identity). The checksum is the copy's: never stale.
    swap::PageOut out{copy, owner_tag(owned.idx())};
    out.checksum = checksum;
    return Writeback{owned.idx(), out, epoch, staging};
}

Writeback Transitions::start_writeback(PageLock&& lk) {  // 5
    SWV_ASSERT(lk.entry().state() == PageState::inactive && !lk.entry().clean(), "writeback of a page that is not dirty inactive");
    std::shared_ptr<StagingBuffer> staging = staging_.acquire(1);
    SWV_ASSERT(staging != nullptr, "no memory for a staging buffer");
    std::byte* copy = staging->next();
    if (!d_.kernel.copy_out(lk.idx(), 1, copy)) std::memcpy(copy, d_.kernel.vmm_page(lk.idx()), kPageSize);
    staging->take(1);
    return writeback_staged(std::move(lk), copy, swap::page_checksum(copy), staging);
}

void Transitions::evict_cold(std::vector<PageLock>& cold, const std::shared_ptr<StagingBuffer>& staging,
                             std::vector<PageLock>& dropped, std::vector<Writeback>& writes) {  // 8, 5
    SWV_ASSERT(staging != nullptr && staging->room() >= cold.size(), "staging buffer too small for the batch");
    for_each_run(d_.kernel, cold, [&](PageIdx first, std::uint64_t count, std::span<PageLock> run) {
        std::byte* const at = staging->next();
        if (auto r = d_.kernel.copy_out(first, count, at); !r) {
            // Left inactive (the locks go when `cold` is cleared): a later sweep retries.
            spdlog::error("{}: copying pages out for swap: {}", d_.name, r.error().message());
            return;
        }
        std::size_t kept = 0;
        for (std::size_t k = 0; k < count; ++k) {
            PageLock& lk = run[k];
            SWV_ASSERT(lk.entry().state() == PageState::inactive && !lk.entry().clean(), "evict_cold of a page that is not dirty inactive");
            const std::byte* src = at + k * kPageSize;
            const std::optional<std::uint32_t> checksum = scan_page(src);
            if (!checksum) {  // 8: nothing worth writing
                lk.set(PageEntry::make(PageState::zero));
                d_.counters.zero_pages.fetch_add(1, std::memory_order_relaxed);
                dropped.push_back(std::move(lk));
                continue;
            }
            // Close the gap a zero page left, so the batch's copies stay back to back
            // (one write per run of slots). The copy moves, its bytes do not.
            std::byte* dst = at + kept * kPageSize;
            if (dst != src) std::memcpy(dst, src, kPageSize);
            ++kept;
            writes.push_back(writeback_staged(std::move(lk), dst, *checksum, staging));
        }
        staging->take(kept);
    });
    cold.clear();
}

std::uint64_t Transitions::finish_writeback(std::span<Writeback> batch, bool batch_ok) {  // 7, 7'
    std::vector<PageLock> dropped;
    for (Writeback& wb : batch) {
        const bool ok = batch_ok && wb.out.ok();
        PageLock lk = lock(wb.idx);
        const PageEntry e = lk.entry();
        if (e.state() != PageState::writeback || e.writeback_epoch() != wb.epoch) {
            // A fault, VMM write or discard took the page meanwhile: the copy is stale.
            // So is it when the page is in writeback again under a newer epoch (touched,
            // written and queued again while this write was slow): adopting it would
            // publish this older copy and leak the newer write's slot
            // (README#writeback-identity).
            if (ok) free_vslot(wb.out.vslot);
            // A discard punched the page. write_out writes the staged copy and no
            // longer reads the memfd (before staging its VMM-view read re-allocated
            // the page here), but anything that did would leave a page under a zero
            // entry that the next guest touch could not resolve (UFFDIO_COPY: EEXIST),
            // so a page that should not be present is punched again (a no-op on a
            // hole; only in this race).
            if (!e.present()) (void)d_.kernel.punch(wb.idx, 1);
            continue;
        }
        if (!ok) {  // 7': nothing lost, retried on a later sweep
            lk.set(PageEntry::make(PageState::inactive));
            continue;
        }
        d_.counters.swap_out_pages.fetch_add(1, std::memory_order_relaxed);
        lk.set(PageEntry::make(PageState::swapped, wb.out.vslot));
        dropped.push_back(std::move(lk));
    }
    return punch_dropped(dropped);
}

std::uint64_t Transitions::punch_dropped(std::vector<PageLock>& dropped) {
    std::uint64_t freed = 0;
    // Ascending, so neighbours dropped at different moments (a clean drop while the
    // hand passed, a zero page found when its run was staged) share one punch.
    std::sort(dropped.begin(), dropped.end(), [](const PageLock& a, const PageLock& b) { return a.idx() < b.idx(); });
    for_each_run(d_.kernel, dropped, [&](PageIdx first, std::uint64_t count, std::span<PageLock> run) {
        if (auto r = d_.kernel.punch(first, count); !r) {
            spdlog::error("{}: {}", d_.name, r.error().message());
            // Still in memory: back to the entries they were locked with (a new slot
            // from a completed write is freed; the page is retried later).
            for (PageLock& lk : run) {
                if (lk.locked_as().state() == PageState::writeback) {
                    free_vslot(lk.entry().vslot());
                    lk.set(PageEntry::make(PageState::inactive));
                } else {
                    lk.set(lk.locked_as());
                }
            }
            return;
        }
        freed += count;
    });
    dropped.clear();
    return freed;
}

// --- discard ------------------------------------------------------------------------------

Result<void> Transitions::discard(PageLock& lk) {  // D
    const PageEntry e = lk.entry();
    switch (e.state()) {
        case PageState::zero:
            return {};
        case PageState::resident:
        case PageState::inactive:
        case PageState::writeback:
            // writeback: the completion sees the state moved and frees its slot.
            SWV_TRY(d_.kernel.punch(lk.idx(), 1));
            if (e.clean()) free_vslot(e.vslot());
            break;
        case PageState::swapped:
            drop_slot(e);
            break;
        case PageState::image:
            break;  // a hole here; the image keeps its copy for other restores
        case PageState::lost:
            // The guest gave the page up: it may read zeros again. The poison marker
            // survives a punch; only zapping the guest view removes it.
            SWV_TRY(d_.kernel.zap(lk.idx(), 1));
            break;
        case PageState::reading:
            SWV_ASSERT(false, "reading state seen by a lock holder");
    }
    lk.set(PageEntry::make(PageState::zero));
    d_.counters.discarded_pages.fetch_add(1, std::memory_order_relaxed);
    return {};
}

// --- swapoff ----------------------------------------------------------------------------------

// The slot vslot is going away (swapoff): a page swapped there takes `leave` (read
// back, or lost), a clean copy there is dropped (13': only an optimisation; the page
// is in memory). False when the page no longer refers to vslot (raced with a fault,
// discard or eviction).
template <class Leave>
Result<bool> Transitions::slot_going(PageLock& lk, swap::VSlot vslot, Leave&& leave) {
    const PageEntry e = lk.entry();
    if (e.vslot() != vslot) return false;
    if (e.state() == PageState::swapped) {
        SWV_TRY(leave());
        return true;
    }
    if (!e.clean()) return false;
    free_vslot(vslot);
    lk.set(PageEntry::make(e.state()));
    return true;
}

Result<bool> Transitions::bring_back(PageLock& lk, swap::VSlot vslot, const swap::SlotCopy* copy,
                                     io::Ring& ring) {  // 11', 13'
    return slot_going(lk, vslot, [&]() -> Result<void> {
        // Under the page lock the entry still names vslot, so nobody frees it; if it is
        // still where swapoff read it, those verified bytes are the page: no second
        // read of a device that is going away (and may be failing).
        if (copy == nullptr || !d_.pool->copy_is_current(vslot, *copy)) return swap_in(lk, ring, Clean::no);
        std::memcpy(d_.kernel.vmm_page(lk.idx()), copy->bytes.data(), kPageSize);
        d_.counters.swap_in_pages.fetch_add(1, std::memory_order_relaxed);
        drop_slot(lk.entry());
        lk.set(PageEntry::make(PageState::inactive));
        return {};
    });
}

bool Transitions::lose_swapped(PageLock& lk, swap::VSlot vslot, const Error& why) {  // 12', 13'
    return slot_going(lk, vslot, [&]() -> Result<void> {
               lose(lk, why);
               return {};
           })
        .value_or(false);
}

// --- teardown -----------------------------------------------------------------------------------

void Transitions::free_all_vslots() {
    for (std::uint64_t i = 0; i < d_.table.pages(); ++i) {
        const PageEntry e = d_.table.peek(PageIdx(i));
        if (e.holds_vslot()) free_vslot(e.vslot());
    }
}

std::uint64_t Transitions::referenced_vslots() const {
    std::uint64_t n = 0;
    for (std::uint64_t i = 0; i < d_.table.pages(); ++i)
        if (d_.table.peek(PageIdx(i)).holds_vslot()) ++n;
    return n;
}

// --- snapshots ----------------------------------------------------------------------------

void Transitions::note_first_touch(PageIdx idx, PageState was) {
    if (first_touch_ != nullptr && (was == PageState::image || was == PageState::swapped)) first_touch_->note(idx);
}

Result<void> Transitions::restore_entry(PageLock& lk, PageEntry to) {  // R
    SWV_ASSERT(lk.entry().state() == PageState::zero, "restore_entry of a page that is not zero");
    SWV_ASSERT(!to.borrowed() || to.state() == PageState::swapped, "restore_entry: only a swapped slot is borrowed");
    SWV_ASSERT(to.state() == PageState::image || to.state() == PageState::swapped || to.state() == PageState::lost,
               "restore_entry: only image, swapped or lost");
    if (to.state() == PageState::lost) SWV_TRY(arm_poison(lk.idx()));
    lk.set(to);
    return {};
}

void Transitions::restored_swapped(std::uint64_t pages) {  // R, a borrowed table
    d_.occupancy.swapped.fetch_add(pages, std::memory_order_relaxed);
}

Result<void> Transitions::fill_image(PageLock& lk, Map map) {  // 14'
    SWV_ASSERT(lk.entry().state() == PageState::image, "fill_image of a page that is not image");
    SWV_ASSERT(image_ != nullptr, "image page without a memory image");
    // Read straight into the memfd through the VMM view, as a swap-in does: the guest
    // cannot see the page before it is mapped.
    d_.table.publish_locked(lk.idx(), PageEntry::make(PageState::reading));
    if (auto r = image_->read(lk.idx(), d_.kernel.vmm_page(lk.idx())); !r) {
        lose(lk, r.error());
        return make_error(Errc::page_lost, "memory image", fmt::format("GPA {:#x}", d_.kernel.gpa_of(lk.idx()).value()));
    }
    lk.set(PageEntry::make(PageState::inactive));
    if (map == Map::no) return {};
    Result<void> r = tolerate_exists(d_.kernel.continue_(lk.idx(), 1, WriteProtect::no, Wake::no).status);
    if (r) lk.set(PageEntry::make(PageState::resident));
    return r;
}

std::uint64_t Transitions::prefetch_image(std::span<PageLock> pages, io::Ring& ring) {  // 14', batched
    if (pages.empty()) return 0;
    SWV_ASSERT(image_ != nullptr, "image page without a memory image");
    struct Run {
        PageIdx first;
        std::span<PageLock> locks;
    };
    std::vector<Run> runs;
    std::vector<io::IoOp> ops;
    for_each_run(d_.kernel, pages, [&](PageIdx first, std::uint64_t count, std::span<PageLock> run) {
        for (PageLock& lk : run) {
            SWV_ASSERT(lk.entry().state() == PageState::image, "prefetch_image of a page that is not image");
            SWV_ASSERT(lk.idx().value() < image_->pages(), "prefetch_image: page beyond the image");
            d_.table.publish_locked(lk.idx(), PageEntry::make(PageState::reading));
            (void)d_.kernel.vmm_page(lk.idx());  // each page of the run is written through the VMM view
        }
        runs.push_back(Run{first, run});
        ops.push_back(io::IoOp{io::IoKind::read, image_->fd(), io::DevOffset(first.value() * kPageSize),
                               d_.kernel.vmm_page(first), static_cast<std::uint32_t>(count * kPageSize)});
    });
    // Straight into the memfd through the VMM view, as row 14: the guest cannot see a
    // page before it is mapped. The ring resubmits short reads; end of file is -EIO.
    const bool ring_ok = ring.run(ops).has_value();
    std::uint64_t in = 0;
    for (std::size_t r = 0; r < runs.size(); ++r) {
        const std::uint64_t count = runs[r].locks.size();
        if (!ring_ok || ops[r].result != static_cast<int>(ops[r].len)) {
            // Not trusted: dropped; the entries stay image for the guest's own fault.
            (void)d_.kernel.punch(runs[r].first, count);
            continue;
        }
        const Mapped m = d_.kernel.continue_(runs[r].first, count, WriteProtect::no, Wake::no);
        for (std::uint64_t k = 0; k < count; ++k)
            runs[r].locks[k].set(PageEntry::make(k < m.pages ? PageState::resident : PageState::inactive));
        in += count;
    }
    return in;
}

std::uint64_t Transitions::prefetch_swapped(std::span<PageLock> pages, io::Ring& ring) {  // 10', batched
    if (pages.empty() || !d_.pool) return 0;
    const bool clean = want_clean_for(pages);
    std::vector<swap::SwapPool::PageIn> ins;
    ins.reserve(pages.size());
    for (PageLock& lk : pages) {
        const PageEntry e = lk.entry();
        SWV_ASSERT(e.state() == PageState::swapped, "prefetch_swapped of a page that is not swapped");
        d_.table.publish_locked(lk.idx(), e.as_reading());
        ins.push_back(swap::SwapPool::PageIn{e.vslot(), d_.kernel.vmm_page(lk.idx())});
    }
    const bool batch_ok = d_.pool->read_in(ring, ins).has_value();
    auto ok = [&](std::size_t i) { return batch_ok && ins[i].ok(); };
    std::uint64_t in = 0;
    for_each_run(d_.kernel, pages, [&](PageIdx, std::uint64_t count, std::span<PageLock> run) {
        const std::size_t base = static_cast<std::size_t>(run.data() - pages.data());
        std::size_t k = 0;
        while (k < count) {
            if (!ok(base + k)) {
                // Whatever landed is not trusted: dropped, the page stays swapped; the
                // guest's own fault retries and reports a failure (row 12).
                (void)d_.kernel.punch(run[k].idx(), 1);
                ++k;
                continue;
            }
            std::size_t end = k;
            while (end < count && ok(base + end)) ++end;
            const std::uint64_t mapped = d_.kernel.continue_(run[k].idx(), end - k, wp_if(clean), Wake::no).pages;
            for (std::size_t j = k; j < end; ++j) {
                const PageState now = j - k < mapped ? PageState::resident : PageState::inactive;
                d_.counters.swap_in_pages.fetch_add(1, std::memory_order_relaxed);
                if (keep_copy(run[j].entry(), clean)) {
                    run[j].set(PageEntry::make(now, ins[base + j].vslot, Clean::yes));
                } else {
                    drop_slot(run[j].entry());
                    run[j].set(PageEntry::make(now));
                }
            }
            in += end - k;
            k = end;
        }
    });
    return in;
}

Result<void> Transitions::fault_image(PageLock& lk) {  // 14
    d_.counters.major_faults.fetch_add(1, std::memory_order_relaxed);
    // A failed read leaves the page lost and poisoned: the guest, woken, gets its error.
    Result<void> r = fill_image(lk, Map::yes);
    if (!r && lk.entry().state() == PageState::lost) return {};
    return r;
}

}  // namespace swapvisor::guestmem
