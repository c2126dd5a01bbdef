// Fault service: the host-wide workers that read every VM's userfaultfd
// (FaultService, fault_service.hpp) and the fault decision they run: resolve each
// fault by choosing a row of the transition table from the page's stage-2 entry
// (guestmem/README.md#faults). The entry, not the fault kind, decides: a MINOR report
// may arrive after the page was swapped out, a MISSING report after another thread
// already resolved it.
//
//   zero      --MISSING-->  resident            fault_zero       (1), then fault-around (1')
//   swapped   --MISSING-->  resident[+clean]    fault_swapped    (10), then readahead (10')
//   inactive  --MINOR---->  resident            fault_minor      (3: the access sample)
//   writeback --MINOR---->  resident            fault_minor      (6: cancels the eviction)
//   resident+clean --WP-->  resident            fault_write_protected (13)
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
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

constexpr unsigned kRingEntries = 32;
constexpr unsigned kMinWorkers = 4;
// Faults of one VM a worker serves in a row while the VM is at its cap (serve_event).
constexpr unsigned kStreak = 64;
// Epoll data of the service's own eventfds; clients' ids count up from 1.
constexpr std::uint64_t kKickId = ~std::uint64_t{0};
constexpr std::uint64_t kStopId = ~std::uint64_t{0} - 1;

}  // namespace

unsigned FaultService::default_workers() {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    return std::max(kMinWorkers, 2 * cores);
}

unsigned FaultService::cap_for(unsigned vcpus) const {
    return std::clamp(vcpus, 1u, workers_ > 1 ? workers_ - 1 : 1u);
}

FaultService::FaultService(unsigned workers, ThreadStartHook hook)
    : workers_(workers ? workers : default_workers()), hook_(std::move(hook)) {
    // Kernel contract: epoll_create1(2) and eventfd(2). Without them no VM can fault:
    // a host that cannot make three fds at start is broken.
    epoll_ = io::UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
    kick_ = io::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    stop_ = io::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    SWV_ASSERT(epoll_.valid() && kick_.valid() && stop_.valid(), "the fault service cannot create its fds");
    epoll_event kick{.events = EPOLLIN | EPOLLONESHOT, .data = {.u64 = kKickId}};
    epoll_event stop{.events = EPOLLIN, .data = {.u64 = kStopId}};
    SWV_ASSERT(::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, kick_.get(), &kick) == 0 &&
                   ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, stop_.get(), &stop) == 0,
               "the fault service cannot watch its eventfds");
}

FaultService::~FaultService() {
    {
        std::lock_guard lk(mutex_);
        SWV_ASSERT(clients_.empty(), "a fault service destroyed with VMs attached");
    }
    std::uint64_t one = 1;
    // Kernel contract: an eventfd write makes it readable; nobody reads stop_, so
    // every worker's epoll_wait returns it from now on.
    (void)!::write(stop_.get(), &one, sizeof one);
    for (std::thread& t : threads_) t.join();
}

void FaultService::set_thread_start_hook(ThreadStartHook hook) {
    std::lock_guard lk(mutex_);
    SWV_ASSERT(threads_.empty(), "the fault workers' start hook set after they started");
    hook_ = std::move(hook);
}

std::size_t FaultService::threads() const {
    std::lock_guard lk(mutex_);
    return threads_.size();
}

std::size_t FaultService::attached() const {
    std::lock_guard lk(mutex_);
    return clients_.size();
}

void FaultService::start_threads_locked() {
    if (!threads_.empty()) return;
    for (unsigned i = 0; i < workers_; ++i) {
        threads_.emplace_back([this] { worker_loop(); });
        // Thread names (15 bytes at most) let top -H and perf tell the roles apart.
        ::pthread_setname_np(threads_.back().native_handle(), "swv-fault");
    }
}

void FaultService::arm_locked(FaultClient& client, int op) {
    epoll_event ev{.events = EPOLLIN | EPOLLONESHOT, .data = {.u64 = client.id_}};
    // Kernel contract: epoll_ctl(2) ADD / MOD of a ONESHOT fd arms it for one event.
    const int r = ::epoll_ctl(epoll_.get(), op, client.userfault_fd(), &ev);
    SWV_ASSERT(r == 0, "cannot arm a userfaultfd in the fault service's epoll set");
    client.armed_ = true;
}

Result<void> FaultService::attach(FaultClient& client, unsigned vcpus) {
    std::lock_guard lk(mutex_);
    SWV_ASSERT(client.id_ == 0, "a fault client attached twice");
    client.id_ = next_id_++;
    client.leaving_.store(false, std::memory_order_release);
    client.cap_ = cap_for(vcpus);
    client.serving_ = client.active_ = client.parked_ = 0;
    epoll_event ev{.events = EPOLLIN | EPOLLONESHOT, .data = {.u64 = client.id_}};
    // Kernel contract: epoll_ctl(2) ADD; a userfaultfd supports poll.
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, client.userfault_fd(), &ev) != 0) {
        client.id_ = 0;
        return errno_error("epoll_ctl(ADD userfaultfd)");
    }
    client.armed_ = true;
    clients_.emplace(client.id_, &client);
    order_.push_back(&client);
    start_threads_locked();
    return {};
}

void FaultService::detach(FaultClient& client) {
    std::unique_lock lk(mutex_);
    if (client.id_ == 0) return;
    clients_.erase(client.id_);
    std::erase(order_, &client);
    client.id_ = 0;
    client.leaving_.store(true, std::memory_order_release);  // a worker polling it stops
    // Kernel contract: epoll_ctl(2) DEL; an event already returned to a worker names
    // the old id, which no longer finds the client.
    (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, client.userfault_fd(), nullptr);
    client.armed_ = false;
    parked_total_ -= client.parked_;
    client.parked_ = 0;
    departed_.wait(lk, [&] { return client.active_ == 0; });
}

void FaultService::kick() {
    if (kick_pending_.exchange(true)) return;  // one kick in flight is enough
    std::uint64_t one = 1;
    // Kernel contract: an eventfd write adds to its counter and makes it readable.
    (void)!::write(kick_.get(), &one, sizeof one);
}

// A worker leaves a client: re-arm its uffd if it went unarmed at its cap and a fault
// of it finished; wake a detach waiting for the last worker.
void FaultService::leave_locked(FaultClient& client) {
    --client.active_;
    if (client.id_ == 0) {
        if (client.active_ == 0) departed_.notify_all();
        return;
    }
    if (!client.armed_ && client.serving_ < client.cap_) arm_locked(client, EPOLL_CTL_MOD);
}

// Parked faults first, round robin over the VMs that have one ready, at most the
// VM's cap in service.
FaultClient* FaultService::pick_parked_locked(MonoTime now) {
    if (parked_total_ == 0 || order_.empty()) return nullptr;
    for (std::size_t i = 0; i < order_.size(); ++i) {
        FaultClient* c = order_[(next_parked_ + i) % order_.size()];
        if (c->parked_ == 0 || c->serving_ >= c->cap_ || !c->parked_ready(now)) continue;
        next_parked_ = (next_parked_ + i + 1) % order_.size();
        // The slot this fault takes may be the one the armed uffd would give its next
        // fault: disarm it (leave_locked re-arms it when a slot is free again). An
        // event already returned to a worker may still take it: the cap is then
        // passed by one for one fault.
        if (c->armed_ && c->serving_ + 1 >= c->cap_) {
            epoll_event none{.events = 0, .data = {.u64 = c->id_}};
            // Kernel contract: epoll_ctl(2) MOD with no events: the fd reports nothing.
            SWV_ASSERT(::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c->userfault_fd(), &none) == 0,
                       "cannot disarm a userfaultfd in the fault service's epoll set");
            c->armed_ = false;
        }
        return c;
    }
    return nullptr;
}

void FaultService::serve_event(std::uint64_t id, io::Ring& ring) {
    FaultClient* c = nullptr;
    {
        std::lock_guard lk(mutex_);
        auto it = clients_.find(id);
        if (it == clients_.end()) return;  // detached since epoll_wait returned
        c = it->second;
        c->armed_ = false;  // ONESHOT: disarmed by this event
        ++c->active_;
        // This worker's slot under the cap, from before its read: an fd is armed only
        // while serving_ < cap_, and each arming gives one event, so serving_ never
        // passes the cap however reads and re-arms interleave.
        ++c->serving_;
    }
    // One message at a time: the next may go to another worker while this one is
    // served. At its cap the VM's fd stays disarmed while this worker serves; the
    // worker then reads the VM's next fault itself (a vCPU faults again right after
    // its wake, during this worker's bookkeeping), up to kStreak in a row: re-arming
    // would hand it to another worker, a thread wake-up and cold caches per fault
    // (B3 of swap_bench: +10-20 us at p50 on 4 workers, docs/PERFORMANCE.md).
    for (unsigned streak = 1;; ++streak) {
        uffd_msg msg{};
        // Kernel contract: read(2) of a non-blocking userfaultfd returns whole
        // messages; EAGAIN when there is none (a spurious wake-up, or the end of a
        // streak).
        ssize_t got = ::read(c->userfault_fd(), &msg, sizeof msg);
        // None yet, after one of this VM's faults: its vCPU may fault again at once.
        if (got < 0 && streak > 1) got = poll_next(*c, msg);
        const MonoTime seen = mono_now();  // the fault has waited since at least now (stall.hpp)
        const bool fault = got == static_cast<ssize_t>(sizeof msg) && msg.event == UFFD_EVENT_PAGEFAULT;
        {
            std::lock_guard lk(mutex_);
            if (!fault) --c->serving_;  // nothing to serve: another worker got it
            if (c->id_ != 0 && !c->armed_ && c->serving_ < c->cap_) arm_locked(*c, EPOLL_CTL_MOD);
            if (!fault) {
                leave_locked(*c);
                return;
            }
        }
        const FaultClient::Turn turn = c->serve(msg, seen, ring);
        std::lock_guard lk(mutex_);
        if (turn == FaultClient::Turn::parked && c->id_ != 0) {
            ++c->parked_;
            ++parked_total_;
        }
        // Keep the slot for the VM's next fault while nobody else could take it (fd
        // disarmed at the cap) and no parked fault anywhere waits for a worker.
        if (streak < kStreak && c->id_ != 0 && !c->armed_ && parked_total_ == 0) continue;
        --c->serving_;
        leave_locked(*c);
        return;
    }
}

ssize_t FaultService::poll_next(FaultClient& client, uffd_msg& msg) {
    const std::chrono::microseconds window(poll_us_.load(std::memory_order_relaxed));
    if (window.count() <= 0 || polling_.exchange(true, std::memory_order_acquire)) return -1;
    ssize_t got = -1;
    const MonoTime until = mono_now() + window;
    while (got < 0 && !client.leaving_.load(std::memory_order_acquire) && mono_now() < until) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
        // Kernel contract: as serve_event's read (whole messages, EAGAIN when none).
        got = ::read(client.userfault_fd(), &msg, sizeof msg);
    }
    polling_.store(false, std::memory_order_release);
    if (got == static_cast<ssize_t>(sizeof msg)) polled_faults_.fetch_add(1, std::memory_order_relaxed);
    return got;
}

void FaultService::worker_loop() {
    auto ring = io::Ring::create(kRingEntries);
    if (!ring) {
        spdlog::critical("fault worker cannot create its io_uring: {}", ring.error().message());
        return;
    }
    // Row 10 reads into this thread's bounce page: registered, the read is READ_FIXED
    // (no pinning per I/O). Without it the reads still work, unregistered.
    if (auto r = ring->register_arena(Transitions::bounce_page()); !r)
        spdlog::warn("fault worker cannot register its bounce page: {}", r.error().message());
    {
        ThreadStartHook hook;
        {
            std::lock_guard lk(mutex_);
            hook = hook_;
        }
        if (hook) hook(ThreadRole::fault_service);
    }
    for (;;) {
        int timeout_ms = -1;
        {
            std::unique_lock lk(mutex_);
            const MonoTime now = mono_now();
            if (FaultClient* c = pick_parked_locked(now)) {
                ++c->active_;
                ++c->serving_;
                // More may be ready: let another worker look while this one serves.
                if (parked_total_ > 1) kick();
                lk.unlock();
                const FaultClient::Turn turn = c->serve_parked(now, *ring);
                lk.lock();
                --c->serving_;
                if (turn == FaultClient::Turn::served && c->id_ != 0) {
                    --c->parked_;
                    --parked_total_;
                }
                leave_locked(*c);
                continue;
            }
            if (parked_total_ != 0) timeout_ms = static_cast<int>(kParkTick.count());
        }
        epoll_event ev{};
        // Kernel contract: epoll_wait(2) returns ready fds; ONESHOT ones are disarmed
        // as they are returned, so each uffd event goes to one worker.
        const int n = ::epoll_wait(epoll_.get(), &ev, 1, timeout_ms);
        if (n < 0 && errno != EINTR) {
            spdlog::critical("fault worker: epoll_wait failed: {}", std::strerror(errno));
            return;
        }
        if (n <= 0) continue;
        if (ev.data.u64 == kStopId) return;
        if (ev.data.u64 == kKickId) {
            std::uint64_t count = 0;
            // Kernel contract: a read of a non-blocking eventfd resets it (EAGAIN if 0).
            (void)!::read(kick_.get(), &count, sizeof count);
            kick_pending_.store(false);
            std::lock_guard lk(mutex_);
            epoll_event again{.events = EPOLLIN | EPOLLONESHOT, .data = {.u64 = kKickId}};
            SWV_ASSERT(::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, kick_.get(), &again) == 0,
                       "cannot re-arm the fault service's kick");
            continue;  // the parked faults are looked at first, at the top
        }
        serve_event(ev.data.u64, *ring);
    }
}

// --- one VM as a client of the fault workers -----------------------------------------

FaultClient::Turn GuestMemory::Impl::serve(const uffd_msg& msg, MonoTime seen, io::Ring& ring) {
    return handle_fault(msg.arg.pagefault.address, msg.arg.pagefault.flags, msg.arg.pagefault.feat.ptid, seen,
                        ring);
}

bool GuestMemory::Impl::parked_ready(MonoTime now) const {
    if (stopping.load() || !limits.holding_at_limit()) return true;
    std::lock_guard lk(park_mutex);
    return !parked.empty() && parked.front().deadline <= now;
}

FaultClient::Turn GuestMemory::Impl::serve_parked(MonoTime now, io::Ring& ring) {
    Parked p;
    Throttle how = Throttle::waited;
    {
        std::lock_guard lk(park_mutex);
        if (parked.empty()) return Turn::parked;
        const bool room = stopping.load() || !limits.holding_at_limit();
        if (!room && parked.front().deadline > now) return Turn::parked;
        p = std::move(parked.front());
        parked.pop_front();
        if (parked.empty()) parked_served.notify_all();
        // The bound passed without room: it runs over, counted, as a blocked wait did.
        if (!room) limits.note_overshoot();
    }
    limits.note_parked(-1);
    finish(p.fault, p.picked_up, how, ring);
    return Turn::served;
}

void GuestMemory::Impl::await_parked() {
    std::unique_lock lk(park_mutex);
    parked_served.wait_for(lk, Limits::kThrottleBound, [&] { return parked.empty(); });
}

void GuestMemory::Impl::drop_parked() {
    std::deque<Parked> doomed;
    {
        std::lock_guard lk(park_mutex);
        doomed.swap(parked);
    }
    for (Parked& p : doomed) {
        drop_fault(observers, p.fault);
        limits.note_parked(-1);
        // Woken, the guest thread retries its access: it faults again, and the fault
        // stays pending in the userfaultfd until the VM's memory is gone.
        (void)tr.wake_guest(p.fault.idx);
    }
}

// Limits (a RoomListener): room was made, or the limit went away, while faults of
// this VM are parked.
void GuestMemory::Impl::room_made() { faults->kick(); }

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

PendingFault begin_fault(Transitions& tr, Limits& limits, FaultObservers& obs, PageIdx idx, WpFault wp,
                         std::uint32_t tid, MonoTime seen) {
    PendingFault p{.idx = idx, .wp = wp, .tid = tid, .seen = seen};
    const PageEntry e = tr.peek(idx);
    const bool waits_for_swap = e.state() == PageState::swapped || e.state() == PageState::reading;
    const bool adds_over = fault_adds_page(e) && limits.over_limit();
    p.must_wait = adds_over && limits.over_reason() == OverReason::none;
    p.runs_over = adds_over && !p.must_wait;
    p.stalled = waits_for_swap || p.must_wait;
    if (p.stalled) p.token = obs.stalls.begin(tid, seen);
    // Before this fault's own touch: how long ago the page was last accessed.
    if (e.state() == PageState::swapped) p.age_before = obs.ages.age(idx, obs.clock());
    return p;
}

ServedFault finish_fault(Transitions& tr, FaultObservers& obs, PendingFault& p, Throttle throttle, io::Ring& ring) {
    ServedFault out{FaultResult{PageState::zero, {}, {}}};
    out.stalled = p.stalled;
    out.throttle = throttle;
    out.f = resolve_fault(tr, p.idx, p.wp, ring);
    const MonoTime done = obs.clock();
    if (p.token) obs.stalls.end(*std::exchange(p.token, std::nullopt), done);
    if (!out.f.resolved || tr.peek(p.idx).state() == PageState::lost) return out;
    obs.ages.touch(p.idx, done);
    if (out.f.was == PageState::swapped && p.age_before && *p.age_before <= obs.working_set_window) {
        out.refault = true;
        obs.stalls.note_refault(done);
    }
    return out;
}

void drop_fault(FaultObservers& obs, PendingFault& p) {
    if (p.token) obs.stalls.end(*std::exchange(p.token, std::nullopt), obs.clock());
}

ServedFault serve_fault(Transitions& tr, Limits& limits, FaultObservers& obs, PageIdx idx, WpFault wp,
                        std::uint32_t tid, MonoTime seen, const std::atomic<bool>& stopping, io::Ring& ring) {
    PendingFault p = begin_fault(tr, limits, obs, idx, wp, tid, seen);
    const Throttle throttle = throttle_fault(limits, tr.peek(idx), stopping);
    return finish_fault(tr, obs, p, throttle, ring);
}

FaultClient::Turn GuestMemory::Impl::handle_fault(std::uint64_t hva, std::uint64_t flags, std::uint32_t tid,
                                                  MonoTime seen, io::Ring& ring) {
    auto idx_opt = kernel->idx_of_guest_addr(hva & ~(kPageSize - 1));
    if (!idx_opt) {
        spdlog::error("{}: fault outside guest memory at {:#x}", name, hva);
        return Turn::served;
    }
    // Picked up: a swap-in's latency counts from here (README#faults), a park included.
    const auto picked_up = std::chrono::steady_clock::now();
    PendingFault p = begin_fault(tr, limits, observers, *idx_opt,
                                 (flags & UFFD_PAGEFAULT_FLAG_WP) ? WpFault::yes : WpFault::no, tid, seen);
    if (p.must_wait && !stopping.load()) {
        // Throttled: parked in this VM, not waiting on the worker (fault_service.hpp).
        {
            std::lock_guard lk(park_mutex);
            const auto bound = std::chrono::duration_cast<std::chrono::nanoseconds>(Limits::kThrottleBound);
            parked.push_back(Parked{std::move(p), picked_up, mono_now() + bound});
        }
        // Counted before the re-check (seq_cst, pairs with pages_freed's): room made
        // meanwhile either sees this park and kicks, or this re-check sees the room.
        limits.note_parked(+1);
        if (!limits.holding_at_limit()) room_made();
        return Turn::parked;
    }
    // As throttle_fault, without the wait: over a limit it cannot hold, the fault runs
    // over, counted; a VM stopping no longer waits.
    Throttle throttle = Throttle::none;
    if (p.must_wait) throttle = Throttle::waited;
    else if (p.runs_over) {
        limits.note_overshoot();
        throttle = Throttle::overshoot;
    }
    finish(p, picked_up, throttle, ring);
    return Turn::served;
}

void GuestMemory::Impl::finish(PendingFault& p, std::chrono::steady_clock::time_point picked_up, Throttle throttle,
                               io::Ring& ring) {
    const PageIdx idx = p.idx;
    const ServedFault served = finish_fault(tr, observers, p, throttle, ring);
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
    // Per VM (a worker serves many VMs). Relaxed: a hint; two workers serving this VM
    // at once may each miss the other's swap-in.
    const std::uint64_t last = last_swapin.exchange(idx.value(), std::memory_order_relaxed);
    const bool sequential = last != ~0ULL && idx.value() > last && idx.value() - last <= kReadaheadPages;
    if (!sequential || limits.holding_at_limit()) return;
    std::vector<PageLock> run = lock_run_after(idx, PageState::swapped, kReadaheadPages);
    if (run.empty()) return;
    const MonoTime now = mono_now();  // mapped ahead of need: counted as accessed (access_age.hpp)
    for (const PageLock& lk : run) ages.touch(lk.idx(), now);
    tr.read_ahead(run, ring);
    last_swapin.store(run.back().idx().value(), std::memory_order_relaxed);
}

// Zero fault-around: a first touch that follows the previous one in guest order (a
// guest filling memory) maps the next never-touched pages of the run with one call
// (fault_around, 1'), so a sequential fill takes one fault per kFaultAroundPages.
// Pages that stay unused are found all-zero by the reclaimer and dropped without a
// write. Skipped while the VM is at its limit.
void GuestMemory::Impl::zero_fault_around(PageIdx idx) {
    // Per VM, relaxed: as last_swapin.
    const std::uint64_t last = last_zero.exchange(idx.value(), std::memory_order_relaxed);
    const bool sequential = last != ~0ULL && idx.value() == last + 1;
    if (!sequential || limits.holding_at_limit()) return;
    std::vector<PageLock> run = lock_run_after(idx, PageState::zero, kFaultAroundPages);
    if (run.empty()) return;
    const MonoTime now = mono_now();
    for (const PageLock& lk : run) ages.touch(lk.idx(), now);
    tr.fault_around(run);
    last_zero.store(run.back().idx().value(), std::memory_order_relaxed);
}

}  // namespace swapvisor::guestmem
