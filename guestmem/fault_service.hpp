// The fault service's one decision, separated from its thread so that it runs on
// the fake kernel too: given a faulting page, choose the row of the transition table
// from the page's entry, resolve under the page lock, release, then wake the guest
// (guestmem/README.md#faults). The wake happens whatever the resolution did: a guest
// left asleep on a failed resolution would hang its vCPU for ever; woken, it retries
// the access and faults again.
#pragma once

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

}  // namespace swapvisor::guestmem
