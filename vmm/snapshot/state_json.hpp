// The JSON form of the VM side of a snapshot: each vCPU's KVM state, the VM-wide
// KVM state, the devices' states and the VM spec (docs/SNAPSHOT.md#vcpu-and-device-state
// has the layout). One writer and one strict reader per type, side by side, so the
// two cannot drift apart.
//
// Strictness: every member must be present with its type and range, KVM blobs
// (lowercase hex) must have their ABI size (vmm/kvm/vcpu_state.hpp), and an unknown
// member is an error too (a newer writer must bump the format version). Errors are
// SnapshotErrc::bad_manifest with the context naming the member by its path
// ("vcpus[1].lapic: 1000 bytes, expected 1024"). The readers never throw.
#pragma once

#include <string>
#include <system_error>

#include <nlohmann/json.hpp>

#include "io/result.hpp"
#include "vmm/devices/device_manager.hpp"
#include "vmm/kvm/vcpu_state.hpp"
#include "vmm/spec/vm_spec.hpp"

namespace swapvisor::vmm::snapshot {

enum class SnapshotErrc {
    bad_manifest = 1,     // malformed: a member missing, of the wrong type or out of range (context: its path)
    unsupported_version,  // a format this build does not read
    vcpu_count,           // the number of vCPU states is not the spec's vCPU count
    truncated,            // the manifest file ends early (not valid JSON)
};
const std::error_category& snapshot_category();
inline std::error_code make_error_code(SnapshotErrc e) { return {static_cast<int>(e), snapshot_category()}; }

}  // namespace swapvisor::vmm::snapshot

template <>
struct std::is_error_code_enum<swapvisor::vmm::snapshot::SnapshotErrc> : std::true_type {};

namespace swapvisor::vmm::snapshot {

using Json = nlohmann::json;

// True for a JSON integer >= 0, signed or unsigned.
bool is_uint(const Json& value);

Json to_json(const kvm::VcpuState& state);
Json to_json(const kvm::VmState& state);
Json to_json(const devices::DeviceStates& state);
Json to_json(const VmSpec& spec);

// `path` names the value in error messages ("vcpus[0]").
Result<kvm::VcpuState> vcpu_state_from_json(const Json& json, const std::string& path);
Result<kvm::VmState> vm_state_from_json(const Json& json, const std::string& path);
Result<devices::DeviceStates> device_states_from_json(const Json& json, const std::string& path);
// The spec's fields and their rules (vmm/spec: name, memory, vCPUs, cmdline, limits);
// the kernel and serial log paths are kept as written and not looked at (a restore
// reads no kernel).
Result<VmSpec> vm_spec_from_json(const Json& json, const std::string& path);

}  // namespace swapvisor::vmm::snapshot
