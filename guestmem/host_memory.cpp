// HostMemory: see host_memory.hpp. The budget policy itself is HostBudget's
// (limits.hpp); this file keeps the VM list, the references to its VMs
// (README.md#vm-lifetimes) and answers swapoff.
#include "guestmem/host_memory.hpp"

#include <algorithm>
#include <future>

#include <fmt/format.h>

#include "guestmem/errc.hpp"

namespace swapvisor::guestmem {

HostMemory::HostMemory(swap::SwapPool& pool, std::uint64_t budget_bytes, unsigned reclaim_workers,
                       unsigned fault_workers)
    : pool_(pool),
      budget_(budget_bytes),
      reclaim_(reclaim_workers ? reclaim_workers : ReclaimService::default_workers(pool.stats().size())),
      faults_(fault_workers) {
    // The compressed memory tiers live in host RAM: the budget covers them too
    // (swap/README.md#tiers). The pool outlives this object.
    budget_.count_also([&pool] { return pool.memory_tier_bytes(); });
    pool_.set_eviction_sink(this);
}

HostMemory::~HostMemory() {
    pool_.set_eviction_sink(nullptr);
    std::vector<Listed> doomed;
    {
        std::lock_guard lk(mutex_);
        doomed.swap(vms_);
    }
    for (Listed& listed : doomed) retire(std::move(listed));
}

Result<GuestMemory*> HostMemory::create_vm(const MemoryConfig& config) { return create_or_restore(config, nullptr, {}); }

Result<GuestMemory*> HostMemory::restore_vm(const MemoryConfig& config, const MemorySnapshot& snapshot,
                                            const RestoreOptions& options) {
    return create_or_restore(config, &snapshot, options);
}

Result<GuestMemory*> HostMemory::create_or_restore(const MemoryConfig& config, const MemorySnapshot* snapshot,
                                                   const RestoreOptions& options) {
    std::lock_guard lk(mutex_);
    for (auto& listed : vms_)
        if (listed.vm->name() == config.name)
            return make_error(Errc::unsupported, "create_vm: a VM with that name exists", config.name);
    auto id = next_id_;
    auto vm = SWV_TRY(snapshot ? restore_guest_memory(config, id, &budget_, &pool_, *snapshot, options, &reclaim_, &faults_)
                               : create_guest_memory(config, id, &budget_, &pool_, &reclaim_, &faults_));
    next_id_ = static_cast<VmId>(next_id_ + 1);
    // The users' count: a shared_ptr that owns nothing (the listing owns the VM) and
    // whose deleter says that the last reference is gone.
    auto drained = std::make_shared<std::promise<void>>();
    Listed listed{.vm = std::move(vm), .users = {}, .drained = drained->get_future().share()};
    listed.users = VmRef(listed.vm.get(), [drained](GuestMemory*) { drained->set_value(); });
    vms_.push_back(std::move(listed));
    return vms_.back().vm.get();
}

void HostMemory::retire(Listed listed) {
    // Drop the listing's own reference, then wait for the users' (a bring-back in a
    // swap-in, a stats read): none can be taken any more, so this ends.
    listed.users.reset();
    listed.drained.wait();
    // Outside mutex_ (the caller's contract): stopping joins the VM's threads.
    listed.vm->stop();
    listed.vm.reset();
}

Result<void> HostMemory::remove_vm(const std::string& name) {
    Listed doomed;
    {
        std::lock_guard lk(mutex_);
        auto it = std::find_if(vms_.begin(), vms_.end(), [&](const Listed& l) { return l.vm->name() == name; });
        if (it == vms_.end()) return errno_error("HostMemory::remove_vm (no such VM)", ENOENT, name);
        doomed = std::move(*it);
        vms_.erase(it);
    }
    retire(std::move(doomed));
    return {};
}

std::vector<VmRef> HostMemory::vms() const {
    std::lock_guard lk(mutex_);
    std::vector<VmRef> out;
    out.reserve(vms_.size());
    for (const Listed& listed : vms_) out.push_back(listed.users);
    return out;
}

VmRef HostMemory::find(const std::string& name) const {
    std::lock_guard lk(mutex_);
    for (const Listed& listed : vms_)
        if (listed.vm->name() == name) return listed.users;
    return nullptr;
}

void HostMemory::set_budget(std::uint64_t bytes) {
    budget_.set_budget(bytes);
    for (const VmRef& vm : vms()) vm->kick_reclaimer();
}

std::uint64_t HostMemory::bring_back_capacity() const {
    std::uint64_t room = 0;
    for (const VmRef& vm : vms()) room += vm->bring_back_room();
    return std::min(room, budget_.room_pages());
}

VmRef HostMemory::vm_of(swap::OwnerTag owner) const {
    const VmId vm_id = owner_vm(owner);
    std::lock_guard lk(mutex_);
    for (const Listed& listed : vms_)
        if (listed.vm->id() == vm_id) return listed.users;
    return nullptr;
}

std::uint64_t HostMemory::bring_back_room(swap::OwnerTag owner) const {
    VmRef vm = vm_of(owner);
    return vm ? std::min(vm->bring_back_room(), budget_.room_pages()) : 0;
}

Result<bool> HostMemory::bring_back(swap::OwnerTag owner, swap::VSlot vslot, const swap::SlotCopy* copy,
                                    io::Ring& ring) {
    // Held across the swap-in: the VM cannot be destroyed under it (a remove_vm
    // meanwhile waits for this reference).
    VmRef vm = vm_of(owner);
    if (!vm) return false;
    // Issue #9: each page goes into its own VM only while that VM (and the host) has
    // room; the sum over all VMs is not room in this one.
    if (std::min(vm->bring_back_room(), budget_.room_pages()) == 0) {
        return make_error(swap::Errc::would_not_fit, "bring back a swapped page",
                          fmt::format("{} is at its resident limit", vm->name()));
    }
    return vm->bring_back(PageIdx(owner_index(owner)), vslot, copy, ring);
}

Result<bool> HostMemory::lose(swap::OwnerTag owner, swap::VSlot vslot, const Error& why) {
    VmRef vm = vm_of(owner);
    if (!vm) return false;
    return vm->lose_page(PageIdx(owner_index(owner)), vslot, why);
}

}  // namespace swapvisor::guestmem
