// VmControl: what the control socket may ask of the VMs of a `swapvisor serve` (or a
// `run` with --control): create, stop, pause, resume, list and remove VMs, and set a
// VM's balloon target (limits and swap quotas go to guest memory directly). The control layer defines this interface and
// the VM host (vmm/host/vm_host.hpp) implements it, so calls go upward only through it
// (STYLE.md §1). A server without one (a test over bare guest memory) answers the VM
// lifecycle commands with `unsupported`.
//
// Errors: a VmErrc (below) with the VM name or the field as context; the server maps
// each to its reply code (protocol.cpp, reply_code_of).
//
// Threads: every method may be called from the control thread or a control worker
// concurrently; the implementation locks its own state. create and stop may block
// (loading a kernel, waiting for a guest): the server runs them on workers.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "io/result.hpp"
#include "swap/swap_pool.hpp"
#include "vmm/spec/vm_spec.hpp"

namespace swapvisor::vmm::control {

enum class VmErrc {
    no_such_vm = 1,  // no VM of that name
    exists,          // vm-create of a name in use (running or ended, until vm-remove)
    running,         // vm-remove of a VM that has not ended
    not_running,     // vm-pause / vm-resume / set-balloon of an ended VM
    bad_spec,        // a field of a vm-create is out of range (the context names it)
    no_balloon,      // set-balloon of a VM created without a balloon
    creating,        // any command but vm-create / vm-list on a VM still being built: retry
    snapshotting,    // vm-stop / vm-pause / vm-resume / vm-remove / set-balloon / snapshot while one is taken: retry
    bad_snapshot,    // snapshot of a directory that holds one; restore / snapshot-delete of a missing or unloadable one
    snapshot_in_use, // snapshot-delete of a snapshot a VM restored from still runs on
};
const std::error_category& vm_category();
inline std::error_code make_error_code(VmErrc e) { return {static_cast<int>(e), vm_category()}; }

}  // namespace swapvisor::vmm::control

template <>
struct std::is_error_code_enum<swapvisor::vmm::control::VmErrc> : std::true_type {};

namespace swapvisor::vmm::control {

// A vm-create request is a vmm::VmSpec (vmm/spec/vm_spec.hpp), the type `run`'s
// flags fill in too; the host validates it (vmm::validate) before it builds anything.
using vmm::VmSpec;

// What a client sees of a VM's lifecycle (the host's own states, vmm/host/vm_table.hpp,
// map onto these): creating (vm-create still building it), running, paused, ended
// (until vm-remove; its memory may still be on its way back to the host).
enum class VmState { creating, running, paused, snapshotting, ended };
const char* vm_state_name(VmState state);

struct VmInfo {
    std::string name;
    VmState state = VmState::running;
    unsigned vcpus = 1;
    std::uint64_t memory_bytes = 0;
    std::optional<std::uint32_t> exit_code;  // once ended
    std::string end_reason;                  // "debug_exit", "stopped", ... once ended
    std::string end_message;
    std::string restored_from;  // the snapshot directory of a restored VM (empty otherwise)
};

// ctl snapshot: what was written (docs/SNAPSHOT.md).
struct SnapshotInfo {
    std::string vm;
    std::filesystem::path dir;  // canonical
    std::uint64_t image_pages = 0, swapped_pages = 0, zero_pages = 0, lost_pages = 0;
    std::uint64_t bytes_written = 0;
    std::uint64_t elapsed_ms = 0;
    bool stopped = false;  // --stop: the VM was stopped after the snapshot
};
// ctl vm-create --restore / run --restore: a VM from a snapshot directory. The spec
// is the snapshot's, with this name and serial log.
struct RestoreRequest {
    std::string name;
    std::filesystem::path dir;
    std::optional<std::filesystem::path> serial_log;
    // The background filler: --no-fill false, --fill true; unset, it runs unless this
    // VM is a clone (another VM restored from the same snapshot has not ended: a
    // filler per clone would copy the image into every clone, docs/SNAPSHOT.md#clones).
    std::optional<bool> fill;
    bool prefetch = true;  // --no-prefetch: no recorded-order prefetch
};
// The snapshots this process has loaded (status / stats / metrics).
struct SnapshotSummary {
    std::uint64_t snapshots = 0;    // loaded (taken here, opened by serve --snapshots or a restore)
    std::uint64_t held_vslots = 0;  // vslots they hold a reference on
    std::uint64_t unavailable = 0;  // found by serve --snapshots but not loadable (a device missing, ...)
};
enum class AfterSnapshot { resume, stop };

// vm-stop: how the VM ended (graceful: the guest exited by itself within the
// timeout; forced: it was stopped from outside).
enum class StopKind { graceful, forced };

class VmControl {
public:
    virtual ~VmControl() = default;
    // Validates the spec (vmm::validate; the error names the field), then builds
    // and starts the VM; returns once it runs.
    virtual Result<VmInfo> create_vm(const VmSpec& spec) = 0;
    // The guests have no shutdown request to receive (no ACPI), so graceful means:
    // give the guest `timeout` to exit by itself, then force it (vCPUs stopped, exit
    // 143). Returns once the VM has ended and its memory and VSlots are released.
    virtual Result<VmInfo> stop_vm(const std::string& name, std::chrono::milliseconds timeout) = 0;
    virtual Result<VmInfo> pause_vm(const std::string& name) = 0;
    virtual Result<VmInfo> resume_vm(const std::string& name) = 0;
    virtual Result<void> remove_vm(const std::string& name) = 0;
    virtual std::vector<VmInfo> list_vms() const = 0;
    // Balloon target in bytes (rounded down to 4 KiB pages); the guest inflates or
    // deflates towards it.
    virtual Result<std::uint64_t> set_balloon(const std::string& name, std::uint64_t bytes) = 0;
    // The control plane is going away (ControlServer::stop calls it before it joins
    // the commands' workers): refuse new VMs and cut every wait a command is in
    // short — a vm-stop waiting out its grace period stops its VM now — so that
    // shutdown never waits for a client's timeout (issue #16 item 7). Returns at once;
    // the VMs themselves are stopped by whoever shuts the host down.
    virtual void shut_down() = 0;

    // Snapshots (docs/SNAPSHOT.md). Defaults: `unsupported` for a host without them.
    virtual Result<SnapshotInfo> snapshot_vm(const std::string& name, const std::filesystem::path& dir, AfterSnapshot after);
    virtual Result<VmInfo> restore_vm(const RestoreRequest& request);
    // Release a snapshot's slot references and remove its files.
    virtual Result<void> delete_snapshot(const std::filesystem::path& dir);
    // ctl snapshot-load (docs/SNAPSHOT.md#load): reserve a snapshot's slots before its
    // devices are attached, as `serve --snapshots` does at start. True: loaded now (it
    // refers to no swap slot); false: waiting for the swapon of its devices.
    virtual Result<bool> load_snapshot(const std::filesystem::path& dir);
    virtual SnapshotSummary snapshot_summary() const { return {}; }
    // The hooks of `swapoff --handover` of `device` (docs/SNAPSHOT.md#handover): the
    // snapshots holding slots there are checked (no VM restored from them running,
    // no reference elsewhere) and then unloaded. Default, for a host without
    // snapshots: refuse if any slot on the device is held.
    virtual swap::Handover handover(const std::string& device) { return default_handover(device); }
    static swap::Handover default_handover(const std::string& device);
};

}  // namespace swapvisor::vmm::control
