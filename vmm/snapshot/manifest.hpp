// Manifest: the snapshot directory's manifest.json, the one file that makes a
// directory a snapshot (docs/SNAPSHOT.md). It carries the format version, the VM
// spec, every vCPU's KVM state and the VM-wide KVM state, the devices' states, and
// `memory`: an opaque JSON object that the memory side (guestmem/snapshot*) fills
// and reads; its files live beside the manifest in the same directory.
//
// Invariants:
//  - the manifest is written last and atomically (a temporary name, fsync, rename,
//    fsync of the directory): a directory without manifest.json is no snapshot, and
//    a manifest.json is always whole. The memory side writes its files (fsynced)
//    before write_manifest is called.
//  - the reader is strict (state_json.hpp): another format version, a missing or
//    unknown member, a blob of the wrong size, a vCPU count other than the spec's, a
//    truncated file: each is an Error naming what is wrong, never a partial Manifest.
//
// Threads: none of its own; the functions may run on any thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string_view>

#include "io/result.hpp"
#include "vmm/devices/device_manager.hpp"
#include "vmm/snapshot/state_json.hpp"
#include "vmm/spec/vm_spec.hpp"
#include "vmm/vm.hpp"

namespace swapvisor::vmm::snapshot {

// Bump on any change to the layout (docs/SNAPSHOT.md#versions); the reader accepts
// exactly this version.
inline constexpr std::uint32_t kFormatVersion = 1;
inline constexpr std::string_view kFormatName = "swapvisor-snapshot";
inline constexpr std::string_view kManifestFile = "manifest.json";
// A bound for the reader: 255 vCPUs with large XSAVE areas stay far below it.
inline constexpr std::uint64_t kMaxManifestBytes = 256ULL << 20;

struct Manifest {
    VmSpec spec;                    // as built (its cmdline includes the devices' entries)
    SavedVm kvm;                    // vCPU states (vCPU order) and the VM-wide KVM state
    devices::DeviceStates devices;  // serial, virtio transports, the balloon
    Json memory = Json::object();   // the memory side's, opaque here
    bool operator==(const Manifest&) const = default;
};

Json manifest_to_json(const Manifest& manifest);
// Strict (file comment). Errors: SnapshotErrc.
Result<Manifest> manifest_from_json(const Json& json);
// Parse the text of a manifest.json. Errors: SnapshotErrc::truncated for text that is
// not JSON (a cut-off file), otherwise as manifest_from_json.
Result<Manifest> parse_manifest(std::string_view text);

// Write `dir`/manifest.json atomically (file comment); `dir` must exist.
Result<void> write_manifest(const std::filesystem::path& dir, const Manifest& manifest);
// Read and check `dir`/manifest.json. Errors: the file's errno (context: its path),
// or SnapshotErrc with the path as context.
Result<Manifest> read_manifest(const std::filesystem::path& dir);

}  // namespace swapvisor::vmm::snapshot
