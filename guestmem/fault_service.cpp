// Fault service: threads that read the VM's userfaultfd and resolve each fault by
// choosing a row of the transition table from the page's stage-2 entry
// (guestmem/README.md#faults). The entry, not the fault kind, decides: a MINOR report
// may arrive after the page was swapped out, a MISSING report after another thread
// already resolved it.
//
//   zero      --MISSING-->  resident            fault_zero       (1), then fault-around (1')
//   swapped   --MISSING-->  resident[+clean]    fault_swapped    (10), then readahead (10')
//   inactive  --MINOR---->  resident            fault_minor      (3: the access sample)
//   writeback --MINOR---->  resident            fault_minor      (6: cancels the eviction)
//   resident+clean --WP-->  resident            fault_write_protected (13)
#include <poll.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <optional>
#include <vector>

#include <spdlog/spdlog.h>

#include "guestmem/fault_service.hpp"

#include "guestmem/errc.hpp"
#include "guestmem/guest_memory_impl.hpp"

namespace swapvisor::guestmem {
namespace {

constexpr std::size_t kEventBatch = 32;
constexpr unsigned kRingEntries = 32;

}  // namespace

void GuestMemory::Impl::fault_loop() {
    auto ring = io::Ring::create(kRingEntries);
    if (!ring) {
        spdlog::critical("{}: fault thread cannot create its io_uring: {}", name, ring.error().message());
        return;
    }
    // Row 10 reads into this thread's bounce page: registered, the read is READ_FIXED
    // (no pinning per I/O). Without it the reads still work, unregistered.
    if (auto r = ring->register_arena(Transitions::bounce_page()); !r)
        spdlog::warn("{}: fault thread cannot register its bounce page: {}", name, r.error().message());
    if (on_thread_start) on_thread_start(ThreadRole::fault_service);
    std::array<uffd_msg, kEventBatch> msgs{};
    std::array<pollfd, 2> fds{pollfd{kernel->uffd_fd(), POLLIN, 0}, pollfd{stop_event.get(), POLLIN, 0}};
    while (!stopping.load(std::memory_order_relaxed)) {
        // Kernel contract: poll(2) on a userfaultfd reports POLLIN while faults are pending.
        int n = ::poll(fds.data(), fds.size(), -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            spdlog::critical("{}: poll on userfaultfd failed: {}", name, std::strerror(errno));
            return;
        }
        if (fds[1].revents) break;
        auto got = kernel->uffd().read_events(msgs);
        if (!got) {
            spdlog::critical("{}: {}", name, got.error().message());
            return;
        }
        // Every fault of the batch has been waiting since at least now (stall.hpp).
        const MonoTime seen = mono_now();
        for (std::size_t i = 0; i < *got; ++i) {
            if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
            // feat.ptid: the faulting thread with UFFD_FEATURE_THREAD_ID, else 0 (the
            // kernel zeroes the message).
            handle_fault(msgs[i].arg.pagefault.address, msgs[i].arg.pagefault.flags, msgs[i].arg.pagefault.feat.ptid,
                         seen, *ring);
        }
    }
}

FaultResult resolve_fault(Transitions& tr, PageIdx idx, WpFault wp, io::Ring& ring) {
    FaultResult out{PageState::zero, {}, {}};
    {
        PageLock lk = tr.lock(idx);
        out.was = lk.entry().state();
        switch (out.was) {
            case PageState::zero: out.resolved = tr.fault_zero(lk); break;
            case PageState::swapped: out.resolved = tr.fault_swapped(lk, ring); break;
            case PageState::inactive:
            case PageState::writeback: out.resolved = tr.fault_minor(lk); break;
            case PageState::resident:
                out.resolved = wp == WpFault::yes ? tr.fault_write_protected(lk) : tr.fault_resident(lk);
                break;
            case PageState::lost: out.resolved = tr.fault_lost(lk); break;
            case PageState::image: out.resolved = tr.fault_image(lk); break;  // 14 (snapshot restore)
            case PageState::reading: SWV_ASSERT(false, "reading state seen by a lock holder");
        }
        tr.note_first_touch(idx, out.was);
    }
    // Wake after publish: the entry already says what the guest will find.
    out.woken = tr.wake_guest(idx);
    return out;
}

// A fault that will add a page waits (without any page lock) while the VM is at its
// limit: that is what holds resident memory at the limit, not just near it. While the
// limit cannot be held (Limits::cannot_hold) it runs over at full speed. A fault that
// adds no page (issue #16: a touch of a `lost` page) never waits: holding it back
// frees nothing and only stalls the vCPU for the throttle's bound.
Throttle throttle_fault(Limits& limits, PageEntry e, const std::atomic<bool>& stopping) {
    if (!fault_adds_page(e) || !limits.over_limit()) return Throttle::none;
    if (limits.over_reason() != OverReason::none) {
        limits.note_overshoot();
        return Throttle::overshoot;
    }
    if (!limits.wait_for_room(stopping)) limits.note_overshoot();
    return Throttle::waited;
}

ServedFault serve_fault(Transitions& tr, Limits& limits, FaultObservers& obs, PageIdx idx, WpFault wp,
                        std::uint32_t tid, MonoTime seen, const std::atomic<bool>& stopping, io::Ring& ring) {
    ServedFault out{FaultResult{PageState::zero, {}, {}}};
    const PageEntry e = tr.peek(idx);
    const bool waits_for_swap = e.state() == PageState::swapped || e.state() == PageState::reading;
    const bool will_throttle = fault_adds_page(e) && limits.over_limit() && limits.over_reason() == OverReason::none;
    out.stalled = waits_for_swap || will_throttle;
    std::optional<StallTracker::Token> token;
    if (out.stalled) token = obs.stalls.begin(tid, seen);
    // Before this fault's own touch: how long ago the page was last accessed.
    std::optional<std::chrono::nanoseconds> age_before;
    if (e.state() == PageState::swapped) age_before = obs.ages.age(idx, obs.clock());
    out.throttle = throttle_fault(limits, e, stopping);
    out.f = resolve_fault(tr, idx, wp, ring);
    const MonoTime done = obs.clock();
    if (token) obs.stalls.end(*token, done);
    if (!out.f.resolved || tr.peek(idx).state() == PageState::lost) return out;
    obs.ages.touch(idx, done);
    if (out.f.was == PageState::swapped && age_before && *age_before <= obs.working_set_window) {
        out.refault = true;
        obs.stalls.note_refault(done);
    }
    return out;
}

void GuestMemory::Impl::handle_fault(std::uint64_t hva, std::uint64_t flags, std::uint32_t tid, MonoTime seen,
                                     io::Ring& ring) {
    auto idx_opt = kernel->idx_of_guest_addr(hva & ~(kPageSize - 1));
    if (!idx_opt) {
        spdlog::error("{}: fault outside guest memory at {:#x}", name, hva);
        return;
    }
    const PageIdx idx = *idx_opt;
    // Picked up: a swap-in's latency counts from here (README#faults).
    const auto picked_up = std::chrono::steady_clock::now();

    const ServedFault served = serve_fault(tr, limits, observers, idx,
                                           (flags & UFFD_PAGEFAULT_FLAG_WP) ? WpFault::yes : WpFault::no, tid, seen,
                                           stopping, ring);
    if (served.throttle == Throttle::waited) counters.throttle_waits.fetch_add(1, std::memory_order_relaxed);
    const FaultResult& f = served.f;
    if (!f.resolved) {
        spdlog::error("{}: resolving fault at GPA {:#x} ({}): {}", name, kernel->gpa_of(idx).value(), to_string(f.was),
                      f.resolved.error().message());
        return;
    }
    if (!f.woken) return;
    if (f.was == PageState::swapped) {
        // A failed read leaves the page lost (resolved, woken, not mapped): not a swap-in.
        if (table.peek(idx).state() != PageState::lost)
            swapin_latency.record(std::chrono::steady_clock::now() - picked_up);
        readahead_after(idx, ring);
    }
    if (f.was == PageState::zero) zero_fault_around(idx);
}

// The pages after idx in one region that are in `state`, up to `max`, as long as
// each can be locked without waiting (only try_lock: README#lock-bit's lock order).
std::vector<PageLock> GuestMemory::Impl::lock_run_after(PageIdx idx, PageState state, std::uint64_t max) {
    std::vector<PageLock> run;
    const PageIdx end = kernel->region_end(idx);
    for (PageIdx n(idx.value() + 1); n < end && run.size() < max; n = PageIdx(n.value() + 1)) {
        auto lk = tr.try_lock(n);
        if (!lk || lk->entry().state() != state) break;
        run.push_back(std::move(*lk));
    }
    return run;
}

// Readahead (guestmem/README.md#readahead): when swap-ins follow each other in
// ascending guest order, read the next swapped pages of the run in one batch and map
// them (read_ahead, 10'). Runs after the faulting thread was woken, so the guest never
// waits for it; skipped while the VM is at its limit.
void GuestMemory::Impl::readahead_after(PageIdx idx, io::Ring& ring) {
    thread_local std::uint64_t last_swapin = ~0ULL;
    const bool sequential =
        last_swapin != ~0ULL && idx.value() > last_swapin && idx.value() - last_swapin <= kReadaheadPages;
    last_swapin = idx.value();
    if (!sequential || limits.holding_at_limit()) return;
    std::vector<PageLock> run = lock_run_after(idx, PageState::swapped, kReadaheadPages);
    if (run.empty()) return;
    const MonoTime now = mono_now();  // mapped ahead of need: counted as accessed (access_age.hpp)
    for (const PageLock& lk : run) ages.touch(lk.idx(), now);
    tr.read_ahead(run, ring);
    last_swapin = run.back().idx().value();
}

// Zero fault-around: a first touch that follows the previous one in guest order (a
// guest filling memory) maps the next never-touched pages of the run with one call
// (fault_around, 1'), so a sequential fill takes one fault per kFaultAroundPages.
// Pages that stay unused are found all-zero by the reclaimer and dropped without a
// write. Skipped while the VM is at its limit.
void GuestMemory::Impl::zero_fault_around(PageIdx idx) {
    thread_local std::uint64_t last_zero = ~0ULL;
    const bool sequential = last_zero != ~0ULL && idx.value() == last_zero + 1;
    last_zero = idx.value();
    if (!sequential || limits.holding_at_limit()) return;
    std::vector<PageLock> run = lock_run_after(idx, PageState::zero, kFaultAroundPages);
    if (run.empty()) return;
    const MonoTime now = mono_now();
    for (const PageLock& lk : run) ages.touch(lk.idx(), now);
    tr.fault_around(run);
    last_zero = run.back().idx().value();
}

}  // namespace swapvisor::guestmem
