// The fault service (guestmem/README.md#faults, #threads, docs/DESIGN-NOTES.md 50).
//
// FaultService: the host-wide fault workers. A fixed number of threads, each with its
// own io_uring and registered bounce page, wait in one epoll set that holds every
// attached VM's userfaultfd (EPOLLONESHOT). A worker woken by a VM's userfaultfd reads
// ONE message, re-arms that fd at once while the VM has fewer than its cap of faults
// in service (cap = min(its vCPUs, workers - 1): two vCPUs of one VM fault in
// parallel, and one VM never holds every worker), else when one of them finishes,
// then serves the fault (FaultClient::serve). So the threads do not grow with the
// number of VMs:
//
//   epoll set:  [uffd vm1] [uffd vm2] ... [kick] [stop]    (uffds and kick: ONESHOT)
//   a worker:   parked fault that may go now?  -> serve it  (VMs at their limit first)
//               else epoll_wait -> one uffd_msg -> re-arm (under cap) -> serve
//
// A fault that would wait in the over-limit throttle does not hold a worker: the VM
// parks it (bounded by its faulting threads: each waits for its one fault) and the
// worker goes on. A parked fault is served when its VM has room (Limits tells the VM,
// which kicks the service through the kick eventfd), when the throttle's bound
// (Limits::kThrottleBound) has passed (it then runs over, counted, as a blocked wait
// did), or when the VM stops. Workers look for a parked fault that may go before
// they take a new fault, so a VM held at its limit is served first when room appears.
//
// Lifetimes: attach before the VM's vCPUs run (start()); detach (stop()) takes its
// uffd out of the set and waits until no worker is inside the VM, like
// ReclaimService::detach, so the VM may be destroyed at once after. Epoll events
// carry a client id, not a pointer: a worker that got an event for a client detached
// meanwhile finds no client under that id. The threads start on the first attach and
// end with the service, which must outlive its clients.
//
// The fault decision itself, separated from the threads so that it runs on the fake
// kernel too: given a faulting page, choose the row of the transition table from the
// page's entry, resolve under the page lock, release, then wake the guest. The wake
// happens whatever the resolution did: a guest left asleep on a failed resolution
// would hang its vCPU for ever; woken, it retries the access and faults again.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "guestmem/access_age.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/limits.hpp"
#include "guestmem/stage2.hpp"
#include "guestmem/stall.hpp"
#include "guestmem/transitions.hpp"
#include "io/linux_compat.hpp"
#include "io/result.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::io { class Ring; }

namespace swapvisor::guestmem {

enum class WpFault : bool { no, yes };

struct FaultResult {
    PageState was;          // the page's state when the fault was taken
    Result<void> resolved;  // the row's result
    Result<void> woken;     // UFFDIO_WAKE's
};

FaultResult resolve_fault(Transitions& tr, PageIdx idx, WpFault wp, io::Ring& ring);

// Whether resolving a fault on a page whose entry is `e` adds a resident page: a
// first touch (zero) or a swap-in (swapped). Only those wait in the over-limit
// throttle; a `lost` page (poison re-armed), a page already in the memfd, or one
// another fault is reading in adds none (README.md#faults).
constexpr bool fault_adds_page(PageEntry e) {
    return e.state() == PageState::zero || e.state() == PageState::swapped || e.state() == PageState::image;
}

// The over-limit throttle before a fault on a page whose entry is `e`: a fault that
// adds a page waits (no page lock held) while the VM is over its limit and the
// limit can be held; while it cannot (Limits::cannot_hold) it runs over, counted.
enum class Throttle : std::uint8_t { none, waited, overshoot };
Throttle throttle_fault(Limits& limits, PageEntry e, const std::atomic<bool>& stopping);

// What the fault path measures besides resolving (guestmem/README.md#working-set,
// #memory-stall): the page's access time, the stall of the faulting vCPU, refaults.
struct FaultObservers {
    AccessAges& ages;
    StallTracker& stalls;
    std::chrono::nanoseconds working_set_window;
    std::function<MonoTime()> clock;  // mono_now, or a test's fake clock
};

struct ServedFault {
    FaultResult f;
    Throttle throttle = Throttle::none;
    bool stalled = false;   // counted as a memory stall of its thread
    bool refault = false;   // a swap-in of a page accessed within the working-set window
};

// One fault, in two halves so that a fault that would wait for room can be parked
// between them without holding a thread (FaultService):
//   begin_fault  — reads the entry, opens the stall (a fault on a page in swap or being
//                  read in, or one that will wait for room, is a stall of thread `tid`,
//                  0: unknown, from `seen`, when the fault was read from the
//                  userfaultfd, until the guest is woken) and says whether it must
//                  wait for room (`must_wait`);
//   finish_fault — the row (resolve_fault), the wake, and the measurements, given how
//                  the throttle went. A resolved fault is an access at the time it was
//                  resolved.
struct PendingFault {
    PageIdx idx{0};
    WpFault wp = WpFault::no;
    std::uint32_t tid = 0;
    MonoTime seen{0};
    bool stalled = false;
    bool must_wait = false;  // adds a page while the VM is at its limit, holding it
    bool runs_over = false;  // adds a page while the VM is over a limit it cannot hold
    std::optional<StallTracker::Token> token;
    std::optional<std::chrono::nanoseconds> age_before;  // a swapped page's age before this touch
};
PendingFault begin_fault(Transitions& tr, Limits& limits, FaultObservers& obs, PageIdx idx, WpFault wp,
                         std::uint32_t tid, MonoTime seen);
ServedFault finish_fault(Transitions& tr, FaultObservers& obs, PendingFault& pending, Throttle throttle,
                         io::Ring& ring);
// Close a parked fault's stall without serving it (its VM stopped).
void drop_fault(FaultObservers& obs, PendingFault& pending);

// One fault served at once on the calling thread: begin_fault, the throttle
// (throttle_fault, which blocks this thread while it waits for room), finish_fault.
ServedFault serve_fault(Transitions& tr, Limits& limits, FaultObservers& obs, PageIdx idx, WpFault wp,
                        std::uint32_t tid, MonoTime seen, const std::atomic<bool>& stopping, io::Ring& ring);

// What a VM offers the fault workers (GuestMemory::Impl implements it, fault_service.cpp).
class FaultClient {
public:
    enum class Turn : std::uint8_t { served, parked };
    // Its userfaultfd (non-blocking), for the epoll set.
    virtual int userfault_fd() const = 0;
    // Serve the page fault in `msg`, read from the userfaultfd at `seen`; park it
    // instead of waiting for room (Turn::parked).
    virtual Turn serve(const uffd_msg& msg, MonoTime seen, io::Ring& ring) = 0;
    // Serve the first parked fault if it may go at `now` (room, its bound passed, the
    // VM stopping); Turn::parked when none may (nothing was served).
    virtual Turn serve_parked(MonoTime now, io::Ring& ring) = 0;
    // Whether serve_parked would serve one now. Called under the service's mutex:
    // reads atomics and takes leaf locks only.
    virtual bool parked_ready(MonoTime now) const = 0;

protected:
    ~FaultClient() = default;

private:
    friend class FaultService;
    // All under the service's mutex.
    std::uint64_t id_ = 0;    // its epoll events' data (0: not attached)
    unsigned cap_ = 1;        // faults of this VM in workers' hands at most
    unsigned serving_ = 0;    // workers reading or serving a fault of this VM now (<= cap_)
    unsigned active_ = 0;     // workers holding this client (reading or serving)
    unsigned parked_ = 0;     // faults serve() parked and serve_parked has not served
    bool armed_ = false;      // its uffd armed in the epoll set
    // Set by detach (and cleared by attach) under the mutex; read without it by a
    // worker polling this uffd, which stops at once (FaultService::poll_next).
    std::atomic<bool> leaving_{false};
};

class FaultService {
public:
    // How long a worker sleeps at most while a fault is parked: a parked fault runs
    // over at most this late after its bound.
    static constexpr std::chrono::milliseconds kParkTick{50};
    // max(4, 2 x cores): faults block in reads from swap, so more workers than cores
    // keep the devices busy; at least 4 so a VM of 2 vCPUs and another VM fault at once.
    static unsigned default_workers();
    // The cap of a VM with `vcpus` vCPUs on this service.
    unsigned cap_for(unsigned vcpus) const;

    // workers = 0: default_workers(). hook: called on each worker once its ring exists.
    explicit FaultService(unsigned workers, ThreadStartHook hook = {});
    ~FaultService();
    FaultService(const FaultService&) = delete;
    FaultService& operator=(const FaultService&) = delete;

    // Before the first attach (the threads start then).
    void set_thread_start_hook(ThreadStartHook hook);
    unsigned workers() const { return workers_; }
    // Threads started so far (0 until the first attach).
    std::size_t threads() const;
    // VMs whose uffd is in the epoll set now.
    std::size_t attached() const;

    Result<void> attach(FaultClient& client, unsigned vcpus);
    // Take the client's uffd out of the set and wait until no worker is inside it.
    // Its parked faults stay parked: the client drops them after (FaultClient).
    void detach(FaultClient& client);
    // A parked fault may be able to go (room was made, the VM stops). Any thread;
    // cheap when a kick is already pending.
    void kick();

    // After serving a VM's fault, one worker at a time reads that VM's uffd again for
    // up to this long before it goes back to epoll_wait, so a vCPU that faults again
    // soon is served without a thread wake-up (on a PVM host a wake-up across CPUs
    // costs ~45 us, one poll ~1 us). 0: off. It burns the worker's CPU while it polls.
    // kvs at 1.33x: +16 % ops/s with 50 us, +22 % with 200 us (docs/PERFORMANCE.md#poll).
    static constexpr std::chrono::microseconds kPollWindow{50};
    void set_poll_window(std::chrono::microseconds window) { poll_us_.store(window.count()); }
    // Faults picked up by that poll instead of an epoll wake-up.
    std::uint64_t polled_faults() const { return polled_faults_.load(std::memory_order_relaxed); }

private:
    void worker_loop();
    void start_threads_locked();
    void arm_locked(FaultClient& client, int op);
    void leave_locked(FaultClient& client);
    FaultClient* pick_parked_locked(MonoTime now);
    void serve_event(std::uint64_t id, io::Ring& ring);
    ssize_t poll_next(FaultClient& client, uffd_msg& msg);

    const unsigned workers_;
    ThreadStartHook hook_;
    io::UniqueFd epoll_;
    io::UniqueFd kick_;   // eventfd, ONESHOT: one worker takes each kick
    io::UniqueFd stop_;   // eventfd, level: every worker sees it
    // A kick is written and not yet taken. seq_cst: pairs with the worker's clear
    // before it looks at the parked faults.
    std::atomic<bool> kick_pending_{false};
    std::atomic<std::int64_t> poll_us_{kPollWindow.count()};
    std::atomic<bool> polling_{false};  // a worker polls a uffd now (one at a time)
    std::atomic<std::uint64_t> polled_faults_{0};
    // Protects: clients_, every client's service fields, parked_total_, next_id_,
    // threads_ (creation), epoll_ctl on the clients' uffds. Order: before a VM's
    // park_mutex (parked_ready); never held while a fault is served.
    mutable std::mutex mutex_;
    std::condition_variable departed_;  // detach: a worker left a detached client
    std::unordered_map<std::uint64_t, FaultClient*> clients_;
    std::vector<FaultClient*> order_;   // clients_ in attach order: parked faults' round robin
    std::size_t next_parked_ = 0;
    unsigned parked_total_ = 0;
    std::uint64_t next_id_ = 1;
    std::vector<std::thread> threads_;
};

}  // namespace swapvisor::guestmem
