// HostMemory: every VM's GuestMemory in one swapvisor process, the host budget over
// all of them, and the shared swap pool. It is the swap pool's EvictionSink: when a
// swapoff finds no room on other devices it asks HostMemory to bring pages back into
// the owning VM (swap/README.md#removal).
#pragma once

#include <cstdint>
#include <atomic>
#include <memory>
#include <string>
#include <mutex>
#include <vector>

#include "guestmem/guest_memory.hpp"
#include "swap/swap_pool.hpp"

namespace swapvisor::guestmem {

class HostMemory final : public swap::EvictionSink {
public:
    // budget_bytes = 0: no host-wide budget, only per-VM limits.
    HostMemory(swap::SwapPool& pool, std::uint64_t budget_bytes);
    ~HostMemory() override;

    Result<GuestMemory*> create_vm(const MemoryConfig& config);
    std::vector<GuestMemory*> vms() const;
    GuestMemory* find(const std::string& name) const;
    swap::SwapPool& pool() { return pool_; }

    void set_budget(std::uint64_t bytes);
    std::uint64_t budget() const;
    std::uint64_t resident_bytes() const;   // sum over VMs
    // Host budget in force and exceeded (minus a little slack so reclaim starts early).
    bool over_budget() const;
    // A VM's share of the budget, proportional to its memory size (0 = no budget).
    std::uint64_t share_pages(const GuestMemory& vm) const;

    // Accounting hooks for GuestMemory (any thread).
    void note_present(std::uint64_t pages) { resident_pages_.fetch_add(pages, std::memory_order_relaxed); }
    void note_gone(std::uint64_t pages) { resident_pages_.fetch_sub(pages, std::memory_order_relaxed); }

    // swap::EvictionSink
    std::uint64_t bring_back_capacity() const override;
    Result<bool> bring_back(swap::OwnerTag owner, swap::VSlot vslot, io::Ring& ring) override;

private:
    swap::SwapPool& pool_;
    std::atomic<std::uint64_t> budget_;
    // Kept by every VM's accounting (page_became_present / pages_left_memory) so the
    // fault path's budget check reads two atomics instead of walking the VM list.
    std::atomic<std::uint64_t> resident_pages_{0};
    std::atomic<std::uint64_t> memory_bytes_{0};  // sum of the VMs' sizes
    // Protects: vms_ (the list, not the VMs); Order: leaf.
    mutable std::mutex mutex_;
    std::vector<std::unique_ptr<GuestMemory>> vms_;
};

}  // namespace swapvisor::guestmem
