// HostMemory: every VM's GuestMemory in one swapvisor process, the host budget over
// all of them (HostBudget, limits.hpp), and the shared swap pool. It is the swap
// pool's EvictionSink: when a swapoff finds no room on other devices it asks
// HostMemory to bring pages back into the owning VM (swap/README.md#removal). It uses
// only GuestMemory's public interface.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "guestmem/guest_memory.hpp"
#include "guestmem/limits.hpp"
#include "swap/swap_pool.hpp"

namespace swapvisor::guestmem {

class HostMemory final : public swap::EvictionSink {
public:
    // budget_bytes = 0: no host-wide budget, only per-VM limits.
    HostMemory(swap::SwapPool& pool, std::uint64_t budget_bytes);
    ~HostMemory() override;

    Result<GuestMemory*> create_vm(const MemoryConfig& config);
    // Stop the VM's memory threads and destroy its GuestMemory, which frees every
    // VSlot its pages hold (a VM ended at run time, vmm/README.md#daemon). The caller
    // must have ended every user of its memory (vCPUs, devices) first. Errc::not_found
    // for an unknown name.
    Result<void> remove_vm(const std::string& name);
    std::vector<GuestMemory*> vms() const;
    GuestMemory* find(const std::string& name) const;
    swap::SwapPool& pool() { return pool_; }

    void set_budget(std::uint64_t bytes);
    std::uint64_t budget() const { return budget_.budget_bytes(); }
    std::uint64_t resident_bytes() const { return budget_.resident_pages() * kPageSize; }
    bool over_budget() const { return budget_.over_budget(); }

    // swap::EvictionSink
    std::uint64_t bring_back_capacity() const override;
    Result<bool> bring_back(swap::OwnerTag owner, swap::VSlot vslot, const swap::SlotCopy* copy,
                            io::Ring& ring) override;
    std::uint64_t bring_back_room(swap::OwnerTag owner) const override;
    Result<bool> lose(swap::OwnerTag owner, swap::VSlot vslot, const Error& why) override;

private:
    GuestMemory* vm_of(swap::OwnerTag owner) const;
    swap::SwapPool& pool_;
    HostBudget budget_;
    // Protects: vms_ (the list, not the VMs); Order: leaf.
    mutable std::mutex mutex_;
    std::vector<std::unique_ptr<GuestMemory>> vms_;
    // Never reused: a removed VM's id must not name a later VM (swap owner tags).
    VmId next_id_ = 1;
};

}  // namespace swapvisor::guestmem
