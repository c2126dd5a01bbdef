// HostMemory: see host_memory.hpp. The budget policy itself is HostBudget's
// (limits.hpp); this file keeps the VM list and answers swapoff.
#include "guestmem/host_memory.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "guestmem/errc.hpp"

namespace swapvisor::guestmem {

HostMemory::HostMemory(swap::SwapPool& pool, std::uint64_t budget_bytes) : pool_(pool), budget_(budget_bytes) {
    pool_.set_eviction_sink(this);
}

HostMemory::~HostMemory() {
    pool_.set_eviction_sink(nullptr);
    // Stop without holding mutex_: a reclaimer being joined may be inside vms().
    for (GuestMemory* vm : vms()) vm->stop();
    std::vector<std::unique_ptr<GuestMemory>> doomed;
    {
        std::lock_guard lk(mutex_);
        doomed.swap(vms_);
    }
}

Result<GuestMemory*> HostMemory::create_vm(const MemoryConfig& config) {
    std::lock_guard lk(mutex_);
    for (auto& vm : vms_)
        if (vm->name() == config.name) return make_error(Errc::unsupported, "create_vm: a VM with that name exists", config.name);
    auto id = next_id_;
    auto vm = SWV_TRY(create_guest_memory(config, id, &budget_, &pool_));
    next_id_ = static_cast<VmId>(next_id_ + 1);
    vms_.push_back(std::move(vm));
    return vms_.back().get();
}

Result<void> HostMemory::remove_vm(const std::string& name) {
    std::unique_ptr<GuestMemory> doomed;
    {
        std::lock_guard lk(mutex_);
        auto it = std::find_if(vms_.begin(), vms_.end(), [&](const auto& vm) { return vm->name() == name; });
        if (it == vms_.end()) return errno_error("HostMemory::remove_vm (no such VM)", ENOENT, name);
        doomed = std::move(*it);
        vms_.erase(it);
    }
    // Outside mutex_: stopping joins the reclaimer, which may be inside vms().
    doomed->stop();
    doomed.reset();
    return {};
}

std::vector<GuestMemory*> HostMemory::vms() const {
    std::lock_guard lk(mutex_);
    std::vector<GuestMemory*> out;
    for (auto& vm : vms_) out.push_back(vm.get());
    return out;
}

GuestMemory* HostMemory::find(const std::string& name) const {
    std::lock_guard lk(mutex_);
    for (auto& vm : vms_)
        if (vm->name() == name) return vm.get();
    return nullptr;
}

void HostMemory::set_budget(std::uint64_t bytes) {
    budget_.set_budget(bytes);
    for (GuestMemory* vm : vms()) vm->kick_reclaimer();
}

std::uint64_t HostMemory::bring_back_capacity() const {
    std::uint64_t room = 0;
    for (GuestMemory* vm : vms()) room += vm->bring_back_room();
    return std::min(room, budget_.room_pages());
}

GuestMemory* HostMemory::vm_of(swap::OwnerTag owner) const {
    const VmId vm_id = owner_vm(owner);
    std::lock_guard lk(mutex_);
    for (auto& v : vms_)
        if (v->id() == vm_id) return v.get();
    return nullptr;
}

std::uint64_t HostMemory::bring_back_room(swap::OwnerTag owner) const {
    GuestMemory* vm = vm_of(owner);
    return vm ? std::min(vm->bring_back_room(), budget_.room_pages()) : 0;
}

Result<bool> HostMemory::bring_back(swap::OwnerTag owner, swap::VSlot vslot, const swap::SlotCopy* copy,
                                    io::Ring& ring) {
    GuestMemory* vm = vm_of(owner);
    if (!vm) return false;
    // Issue #9: each page goes into its own VM only while that VM (and the host) has
    // room; the sum over all VMs is not room in this one.
    if (bring_back_room(owner) == 0) {
        return make_error(swap::Errc::would_not_fit, "bring back a swapped page",
                          fmt::format("{} is at its resident limit", vm->name()));
    }
    return vm->bring_back(PageIdx(owner_index(owner)), vslot, copy, ring);
}

Result<bool> HostMemory::lose(swap::OwnerTag owner, swap::VSlot vslot, const Error& why) {
    GuestMemory* vm = vm_of(owner);
    if (!vm) return false;
    return vm->lose_page(PageIdx(owner_index(owner)), vslot, why);
}

}  // namespace swapvisor::guestmem
