// TransitionsSink: swapoff's EvictionSink over one fake VM's Transitions, as
// HostMemory is over a real VM's (the owner tag's index is the page). Used by the
// fake-kernel tests and the schedule explorer to drive SwapPool::swapoff into the
// page-state machine.
#pragma once

#include <cstdint>

#include "guestmem/owner_tag.hpp"
#include "guestmem/transitions.hpp"
#include "swap/swap_pool.hpp"

namespace swapvisor::guestmem::testing {

class TransitionsSink final : public swap::EvictionSink {
public:
    TransitionsSink(Transitions& tr, std::uint64_t room) : tr_(tr), room_(room) {}
    std::uint64_t bring_back_capacity() const override { return room_; }
    std::uint64_t bring_back_room(swap::OwnerTag) const override { return room_; }
    Result<bool> bring_back(swap::OwnerTag owner, swap::VSlot vslot, const swap::SlotCopy* copy,
                            io::Ring& ring) override {
        PageLock lk = tr_.lock(PageIdx(owner_index(owner)));
        return tr_.bring_back(lk, vslot, copy, ring);
    }
    Result<bool> lose(swap::OwnerTag owner, swap::VSlot vslot, const Error& why) override {
        PageLock lk = tr_.lock(PageIdx(owner_index(owner)));
        return tr_.lose_swapped(lk, vslot, why);
    }

private:
    Transitions& tr_;
    std::uint64_t room_;
};

}  // namespace swapvisor::guestmem::testing
