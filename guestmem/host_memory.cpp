// HostMemory: see host_memory.hpp. The budget is shared in proportion to each VM's
// memory size; a VM is asked to shrink to its share only while the host as a whole
// is over budget, so an idle neighbour's unused share is not wasted.
#include "guestmem/host_memory.hpp"

#include <algorithm>

#include "guestmem/errc.hpp"
#include "guestmem/guest_memory_impl.hpp"

namespace swapvisor::guestmem {
HostMemory::HostMemory(swap::SwapPool& pool, std::uint64_t budget_bytes) : pool_(pool), budget_(budget_bytes) {
    pool_.set_eviction_sink(this);
}

HostMemory::~HostMemory() {
    pool_.set_eviction_sink(nullptr);
    // Stop without holding mutex_: a reclaimer being joined may be inside vms()
    // (share_pages) waiting for it.
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
        if (vm->name() == config.name) return make_error(Errc::unsupported, "create_vm: a VM with that name exists");
    auto id = static_cast<VmId>(vms_.size() + 1);
    auto vm = SWV_TRY(create_guest_memory(config, id, this, &pool_));
    memory_bytes_.fetch_add(vm->memory_bytes(), std::memory_order_relaxed);
    vms_.push_back(std::move(vm));
    return vms_.back().get();
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
    budget_ = bytes;
    for (GuestMemory* vm : vms()) vm->impl_->reclaim_wake.notify_one();
}

std::uint64_t HostMemory::budget() const { return budget_; }

std::uint64_t HostMemory::resident_bytes() const {
    return resident_pages_.load(std::memory_order_relaxed) * kPageSize;
}

bool HostMemory::over_budget() const {
    std::uint64_t budget = budget_;
    if (budget == 0) return false;
    std::uint64_t slack = std::clamp<std::uint64_t>(budget / 32, 64 * kPageSize, 4096 * kPageSize);
    return resident_bytes() + slack / 2 > budget;
}

std::uint64_t HostMemory::share_pages(const GuestMemory& vm) const {
    std::uint64_t budget = budget_;
    if (budget == 0 || !over_budget()) return 0;
    const std::uint64_t total = memory_bytes_.load(std::memory_order_relaxed);
    if (total == 0) return 0;
    return static_cast<std::uint64_t>(static_cast<long double>(budget) * vm.memory_bytes() / total) / kPageSize;
}

std::uint64_t HostMemory::bring_back_capacity() const {
    std::uint64_t room = 0;
    for (GuestMemory* vm : vms()) {
        std::uint64_t limit = vm->impl_->limit_pages.load();
        if (limit == 0) limit = vm->memory_bytes() / kPageSize;
        std::uint64_t resident = vm->impl_->counters.resident_pages.load();
        if (limit > resident) room += limit - resident;
    }
    if (std::uint64_t budget = budget_) {
        std::uint64_t used = resident_bytes() / kPageSize;
        std::uint64_t host_room = budget / kPageSize > used ? budget / kPageSize - used : 0;
        room = std::min(room, host_room);
    }
    return room;
}

Result<bool> HostMemory::bring_back(swap::OwnerTag owner, swap::VSlot vslot, io::Ring& ring) {
    const VmId vm_id = owner_vm(owner);
    const std::uint64_t idx = owner_index(owner);
    GuestMemory* vm = nullptr;
    {
        std::lock_guard lk(mutex_);
        for (auto& v : vms_)
            if (v->id() == vm_id) vm = v.get();
    }
    if (!vm || idx >= vm->impl_->table.pages()) return false;
    auto& impl = *vm->impl_;
    PageLock lk(impl.table, idx);
    PageEntry e = lk.entry();
    if (e.vslot() != vslot) return false;  // raced with a fault, discard or eviction
    if (e.state() == PageState::swapped) {
        SWV_TRY(impl.swap_in_locked(lk, idx, ring, /*keep_clean=*/false));
        return true;
    }
    if (e.clean()) {
        // A clean copy is only an optimisation: drop it; the page stays resident.
        impl.free_vslot(vslot);
        lk.set(PageEntry::make(e.state()));
        return true;
    }
    return false;
}

}  // namespace swapvisor::guestmem
