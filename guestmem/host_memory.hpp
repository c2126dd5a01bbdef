// HostMemory: every VM's GuestMemory in one swapvisor process, the host budget over
// all of them (HostBudget, limits.hpp), and the shared swap pool. It is the swap
// pool's EvictionSink: when a swapoff finds no room on other devices it asks
// HostMemory to bring pages back into the owning VM (swap/README.md#removal). It uses
// only GuestMemory's public interface.
//
// VM lifetimes (guestmem/README.md#vm-lifetimes): a VM's memory may end (remove_vm)
// while other threads use it — swapoff's bring-back, the budget watcher, `ctl
// stats`, a /metrics scrape, set-limit. Every such user holds a VmRef, taken under
// mutex_ while the VM is listed; remove_vm unlists the VM, so no new reference can
// be taken, then waits for the references out to be dropped (get/put, as the
// kernel's get_swap_device / put_swap_device) before it stops and destroys the VM.
// Only the creator (the caller of create_vm, which also calls remove_vm) may keep the
// raw pointer create_vm returns: it ends the VM itself.
//
// It also owns the host-wide reclaim workers (ReclaimService, reclaim_service.hpp)
// and fault workers (FaultService, fault_service.hpp): every VM it creates is a
// client of both, so the reclaim, writeback and fault threads do not grow with the
// number of VMs.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "guestmem/fault_service.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/limits.hpp"
#include "guestmem/reclaim_service.hpp"
#include "guestmem/snapshot.hpp"
#include "swap/swap_pool.hpp"

namespace swapvisor::guestmem {

// A counted reference to a listed VM's memory: the VM is not destroyed while one
// exists (remove_vm waits for the last). Hold it for the length of one operation
// (a stats read, a bring-back), never across a wait on something remove_vm's caller
// may hold. Copies share the count; null when the VM was not found.
using VmRef = std::shared_ptr<GuestMemory>;

class HostMemory final : public swap::EvictionSink {
public:
    // budget_bytes = 0: no host-wide budget, only per-VM limits. reclaim_workers = 0:
    // ReclaimService::default_workers of the devices the pool has now; fault_workers
    // = 0: FaultService::default_workers().
    HostMemory(swap::SwapPool& pool, std::uint64_t budget_bytes, unsigned reclaim_workers = 0,
               unsigned fault_workers = 0);
    ~HostMemory() override;

    // The pointer is the creator's own: valid until it calls remove_vm. Everyone else
    // takes a VmRef (vms(), find()).
    Result<GuestMemory*> create_vm(const MemoryConfig& config);
    // create_vm for a VM whose memory is a snapshot's (snapshot.hpp: restore or clone;
    // nothing is listed on error).
    Result<GuestMemory*> restore_vm(const MemoryConfig& config, const MemorySnapshot& snapshot,
                                    const RestoreOptions& options);
    // Unlist the VM, wait until no VmRef to it is left, then stop its memory threads
    // and destroy its GuestMemory, which frees every VSlot its pages hold (a VM ended
    // at run time, vmm/README.md#daemon). The caller must have ended the VM's own
    // users of its memory (vCPUs, devices) first and must hold no VmRef to it.
    // ENOENT for an unknown name.
    Result<void> remove_vm(const std::string& name);
    // References to every listed VM / to the VM of that name (null: none).
    std::vector<VmRef> vms() const;
    VmRef find(const std::string& name) const;
    swap::SwapPool& pool() { return pool_; }
    // The host-wide reclaim workers (their number, threads started, for reports and tests).
    const ReclaimService& reclaim_service() const { return reclaim_; }
    // The host-wide fault workers (their number, threads started, VMs attached).
    const FaultService& fault_service() const { return faults_; }
    // Called on each reclaim worker (ThreadRole::reclaimer) and fault worker
    // (ThreadRole::fault_service) as it starts (vmm confines it); before the first VM
    // starts.
    void set_worker_start_hook(const ThreadStartHook& hook) {
        reclaim_.set_thread_start_hook(hook);
        faults_.set_thread_start_hook(hook);
    }

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
    Result<GuestMemory*> create_or_restore(const MemoryConfig& config, const MemorySnapshot* snapshot,
                                           const RestoreOptions& options);
    // One listed VM. `users` owns nothing: every VmRef handed out shares its count,
    // and its deleter (run when the listing's own copy and every VmRef are gone)
    // fulfils `drained`, which remove_vm waits for.
    struct Listed {
        std::unique_ptr<GuestMemory> vm;
        VmRef users;
        std::shared_future<void> drained;
    };
    VmRef vm_of(swap::OwnerTag owner) const;
    // A VM already unlisted (no new VmRef can be taken): wait for the references out
    // to be dropped, then stop and destroy it. Without mutex_.
    static void retire(Listed listed);
    swap::SwapPool& pool_;
    HostBudget budget_;
    // Outlives every VM (they are its clients): declared before vms_, and the
    // destructor retires the VMs first.
    ReclaimService reclaim_;
    FaultService faults_;
    // Protects: vms_ (the list, not the VMs: those are kept alive by their VmRefs);
    // Order: leaf (never held while waiting for references to drain; only a listed
    // VM's name and id are read under it).
    mutable std::mutex mutex_;
    std::vector<Listed> vms_;
    // Never reused: a removed VM's id must not name a later VM (swap owner tags).
    VmId next_id_ = 1;
};

}  // namespace swapvisor::guestmem
