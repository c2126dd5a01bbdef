// The fault service's one decision, separated from its thread so that it runs on
// the fake kernel too: given a faulting page, choose the row of the transition table
// from the page's entry, resolve under the page lock, release, then wake the guest
// (guestmem/README.md#faults). The wake happens whatever the resolution did: a guest
// left asleep on a failed resolution would hang its vCPU for ever; woken, it retries
// the access and faults again.
#pragma once

#include <atomic>
#include <cstdint>

#include "guestmem/limits.hpp"
#include "guestmem/stage2.hpp"
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
    return e.state() == PageState::zero || e.state() == PageState::swapped;
}

// The over-limit throttle before a fault on a page whose entry is `e`: a fault that
// adds a page waits (no page lock held) while the VM is over its limit and the
// limit can be held; while it cannot (Limits::cannot_hold) it runs over, counted.
enum class Throttle : std::uint8_t { none, waited, overshoot };
Throttle throttle_fault(Limits& limits, PageEntry e, const std::atomic<bool>& stopping);

}  // namespace swapvisor::guestmem
