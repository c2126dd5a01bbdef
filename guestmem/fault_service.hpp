// The fault service's one decision, separated from its thread so that it runs on
// the fake kernel too: given a faulting page, choose the row of the transition table
// from the page's entry, resolve under the page lock, release, then wake the guest
// (guestmem/README.md#faults). The wake happens whatever the resolution did: a guest
// left asleep on a failed resolution would hang its vCPU for ever; woken, it retries
// the access and faults again.
#pragma once

#include <atomic>
#include <cstdint>

#include <chrono>
#include <functional>

#include "guestmem/access_age.hpp"
#include "guestmem/limits.hpp"
#include "guestmem/stage2.hpp"
#include "guestmem/stall.hpp"
#include "guestmem/transitions.hpp"
#include "io/result.hpp"

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

// One fault, as a fault thread serves it: the throttle, the row (resolve_fault), the
// wake, and the measurements. A fault on a page in swap or being read in, or one that
// will wait in the throttle, is a stall of thread `tid` (0: unknown) from `seen` (when
// the fault was read from the userfaultfd) until the guest is woken. A resolved fault
// is an access at the time it was resolved.
ServedFault serve_fault(Transitions& tr, Limits& limits, FaultObservers& obs, PageIdx idx, WpFault wp,
                        std::uint32_t tid, MonoTime seen, const std::atomic<bool>& stopping, io::Ring& ring);

}  // namespace swapvisor::guestmem
