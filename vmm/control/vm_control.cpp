// VmControl's error category and state names: see vm_control.hpp.
#include "vmm/control/vm_control.hpp"

namespace swapvisor::vmm::control {

namespace {

class VmCategory final : public std::error_category {
public:
    const char* name() const noexcept override { return "vm"; }
    std::string message(int value) const override {
        switch (static_cast<VmErrc>(value)) {
            case VmErrc::no_such_vm: return "no VM of that name";
            case VmErrc::exists: return "a VM of that name exists (remove it first)";
            case VmErrc::running: return "the VM is still running (stop it first)";
            case VmErrc::not_running: return "the VM has ended";
            case VmErrc::bad_spec: return "bad VM spec";
            case VmErrc::no_balloon: return "the VM has no balloon (create it with \"balloon\": true)";
            case VmErrc::creating: return "the VM is still being created (retry once vm-create has answered)";
        }
        return "unknown VM error";
    }
};

}  // namespace

const std::error_category& vm_category() {
    static const VmCategory category;
    return category;
}

const char* vm_state_name(VmState state) {
    switch (state) {
        case VmState::creating: return "creating";
        case VmState::running: return "running";
        case VmState::paused: return "paused";
        case VmState::ended: return "ended";
    }
    return "ended";
}

}  // namespace swapvisor::vmm::control
