// VmTable: see vm_table.hpp.
#include "vmm/host/vm_table.hpp"

#include "io/result.hpp"

namespace swapvisor::vmm {

const char* lifecycle_name(Lifecycle state) {
    switch (state) {
        case Lifecycle::creating: return "creating";
        case Lifecycle::running: return "running";
        case Lifecycle::paused: return "paused";
        case Lifecycle::snapshotting: return "snapshotting";
        case Lifecycle::ended: return "ended";
        case Lifecycle::released: return "released";
        case Lifecycle::removing: return "removing";
    }
    return "unknown";
}

bool legal_transition(Lifecycle from, Lifecycle to) {
    using L = Lifecycle;
    switch (from) {
        case L::creating: return to == L::running;
        case L::running: return to == L::paused || to == L::ended || to == L::snapshotting;
        case L::paused: return to == L::running || to == L::ended || to == L::snapshotting;
        case L::snapshotting: return to == L::running || to == L::paused;
        case L::ended: return to == L::released || to == L::removing;
        case L::released: return to == L::removing;
        case L::removing: return false;
    }
    return false;
}

control::VmState visible_state(Lifecycle state) {
    switch (state) {
        case Lifecycle::creating: return control::VmState::creating;
        case Lifecycle::running: return control::VmState::running;
        case Lifecycle::paused: return control::VmState::paused;
        case Lifecycle::snapshotting: return control::VmState::snapshotting;
        case Lifecycle::ended:
        case Lifecycle::released:
        case Lifecycle::removing: return control::VmState::ended;
    }
    return control::VmState::ended;
}

const char* end_reason_name(EndReason reason) {
    switch (reason) {
        case EndReason::debug_exit: return "debug_exit";
        case EndReason::triple_fault: return "triple_fault";
        case EndReason::internal_error: return "internal_error";
        case EndReason::fail_entry: return "fail_entry";
        case EndReason::page_lost: return "page_lost";
        case EndReason::halted: return "halted";
        case EndReason::system_event: return "system_event";
        case EndReason::kvm_error: return "kvm_error";
        case EndReason::stopped: return "stopped";
    }
    return "kvm_error";
}

VmEntry& VmTable::add(const VmSpec& spec) {
    SWV_ASSERT(!entries_.contains(spec.name), "a VM name listed twice");
    auto entry = std::make_unique<VmEntry>();
    entry->spec = spec;
    VmEntry& ref = *entry;
    entries_.emplace(spec.name, std::move(entry));
    changed.notify_all();
    return ref;
}

VmEntry* VmTable::find(const std::string& name) const {
    auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : it->second.get();
}

void VmTable::set_state(VmEntry& entry, Lifecycle to) {
    SWV_ASSERT(legal_transition(entry.state, to), "an illegal VM lifecycle transition (vm_table.hpp)");
    entry.state = to;
    changed.notify_all();
}

std::unique_ptr<VmEntry> VmTable::erase(const std::string& name) {
    auto it = entries_.find(name);
    SWV_ASSERT(it != entries_.end(), "erasing a VM that is not listed");
    SWV_ASSERT(it->second->state == Lifecycle::creating || it->second->state == Lifecycle::removing,
               "erasing a VM that is neither being created nor removed");
    std::unique_ptr<VmEntry> entry = std::move(it->second);
    entries_.erase(it);
    changed.notify_all();
    return entry;
}

control::VmInfo VmTable::info(const VmEntry& entry) const {
    control::VmInfo info{.name = entry.spec.name, .state = visible_state(entry.state), .vcpus = entry.spec.vcpus,
                         .memory_bytes = entry.spec.memory_bytes};
    if (entry.restored_from) info.restored_from = entry.restored_from->string();
    if (entry.end) {
        info.exit_code = entry.end->exit_code;
        info.end_reason = end_reason_name(entry.end->reason);
        info.end_message = entry.end->message;
    }
    return info;
}

}  // namespace swapvisor::vmm
