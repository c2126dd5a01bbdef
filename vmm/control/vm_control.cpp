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
            case VmErrc::snapshotting: return "a snapshot of the VM is being taken (retry once it has answered)";
            case VmErrc::bad_snapshot: return "bad snapshot";
            case VmErrc::snapshot_in_use: return "a VM restored from the snapshot still runs (stop it first)";
        }
        return "unknown VM error";
    }
};

Error no_snapshots(const char* op) {
    return Error{std::make_error_code(std::errc::operation_not_supported), op}.with_context(
        "this swapvisor keeps no snapshots");
}

}  // namespace

Result<SnapshotInfo> VmControl::snapshot_vm(const std::string&, const std::filesystem::path&, AfterSnapshot) {
    return std::unexpected(no_snapshots("snapshot"));
}
Result<VmInfo> VmControl::restore_vm(const RestoreRequest&) { return std::unexpected(no_snapshots("restore")); }
Result<void> VmControl::delete_snapshot(const std::filesystem::path&) {
    return std::unexpected(no_snapshots("snapshot-delete"));
}
Result<bool> VmControl::load_snapshot(const std::filesystem::path&) {
    return std::unexpected(no_snapshots("snapshot-load"));
}

swap::Handover VmControl::default_handover(const std::string& device) {
    swap::Handover h;
    h.check = [device](const swap::DeviceUuid&, std::span<const swap::VSlot> kept) -> Result<void> {
        if (kept.empty()) return {};
        return make_error(swap::Errc::held_slot, "swapoff --handover refused, nothing changed",
                          device + ": " + std::to_string(kept.size()) +
                              " slots are held by snapshots this swapvisor does not keep");
    };
    return h;
}

const std::error_category& vm_category() {
    static const VmCategory category;
    return category;
}

const char* vm_state_name(VmState state) {
    switch (state) {
        case VmState::creating: return "creating";
        case VmState::running: return "running";
        case VmState::paused: return "paused";
        case VmState::snapshotting: return "snapshotting";
        case VmState::ended: return "ended";
    }
    return "ended";
}

}  // namespace swapvisor::vmm::control
