// VmHost: the VMs of one swapvisor process, whether `run` names them on the command
// line or `serve` gets them over the control socket (vm-create); it implements
// control::VmControl, the interface through which the socket reaches them
// (vmm/README.md#daemon). It is three parts put together:
//   - BuiltVm (built_vm.hpp): how one VM is built and torn down;
//   - VmTable (vm_table.hpp): the VMs listed, each with its lifecycle state and the
//     legal moves between states;
//   - EventLog (event_log.hpp): the log lines for limit and device state changes.
// What is left here is each command's walk through the table: validate, reserve the
// name, build, run on a runner thread, stop, pause, release, remove.
//
// When a VM ends (its guest exits, or vm-stop / a signal stops it) its runner thread
// flushes the serial line; with Release::when_ended (serve) it then destroys the
// BuiltVm — devices, KVM VM, guest memory (whose VSlots are freed) — and the VM
// stays listed (released) with its exit code until vm-remove. With
// Release::at_exit (`run`) guest memory is only stopped, kept until the VmHost is
// destroyed, so --stats-json can still read it.
//
// Invariants: names are unique among listed VMs (ended ones included); a create
// that fails leaves nothing behind (no memory, no device counters, no entry), so no
// other VM changes; a BuiltVm is destroyed outside the table's mutex.
//
// Threads: methods are called from main, the control thread and control workers;
// the table's mutex protects every entry. Each VM has its runner thread (joined by
// remove_vm or the destructor).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "guestmem/host_memory.hpp"
#include "io/result.hpp"
#include "vmm/control/device_stats.hpp"
#include "vmm/control/vm_control.hpp"
#include "vmm/devices/virtio_balloon.hpp"
#include "vmm/host/built_vm.hpp"
#include "vmm/host/event_log.hpp"
#include "vmm/host/snapshot_store.hpp"
#include "vmm/host/vm_table.hpp"
#include "vmm/kvm/kvm.hpp"
#include "vmm/sandbox/seccomp.hpp"
#include "vmm/spec/vm_spec.hpp"
#include "vmm/vm.hpp"

namespace swapvisor::vmm {

// When an ended VM's guest memory goes back to the host (see the file comment).
enum class Release { when_ended, at_exit };

class VmHost final : public control::VmControl {
public:
    // `kvm`, `host` and `stats` must outlive the VmHost.
    VmHost(const kvm::Kvm& kvm, guestmem::HostMemory& host, control::DeviceStats& stats, Release release);
    ~VmHost() override;  // stops every VM still running, joins its runner, releases it
    VmHost(const VmHost&) = delete;
    VmHost& operator=(const VmHost&) = delete;

    // Validate (vmm::validate), build one VM and start it running. Errors:
    // VmErrc::exists, SpecErrc::bad_field / VmErrc::bad_spec (the context names the
    // field), or the failing step's error with the VM as context.
    Result<control::VmInfo> start(const VmSpec& spec, SerialPrefix prefix);
    // Confine the threads of VMs started from now on (vmm/sandbox), and the host-wide
    // reclaim workers (before the first VM starts them); off by default.
    void set_seccomp(sandbox::Seccomp s);
    // How often the balloon of a VM made by vm-create asks its guest for statistics
    // (serve --balloon-stats-interval; 0: only when status / stats read them).
    void set_balloon_stats_interval(std::chrono::milliseconds interval) { balloon_stats_interval_ = interval; }
    // The age scan of a VM made by vm-create that names none and is not on auto
    // (serve --age-scan; vmm::age_scan_of).
    void set_age_scan(std::chrono::milliseconds period) { age_scan_ = period; }
    // serve --auto-limits: a VM made by vm-create without a resident limit is made
    // with resident-limit=auto (so it also gets the auto age scan).
    void set_auto_unlimited(bool on) { auto_unlimited_ = on; }
    // The snapshots of this process (snapshot_store.hpp); must outlive the VmHost.
    // Without one, snapshot / restore / snapshot-delete answer `unsupported`.
    void set_snapshots(SnapshotStore* store) { snapshots_ = store; }
    // `run --restore` / vm-create --restore (docs/SNAPSHOT.md#orchestration).
    Result<control::VmInfo> restore(const control::RestoreRequest& request, SerialPrefix prefix);
    // Block until every VM listed now has ended (`run`).
    void wait_all();
    // End every running VM with `end` (a signal).
    void stop_all(const VmEnd& end);
    // How each listed VM ended so far (running ones are absent).
    std::vector<std::pair<std::string, VmEnd>> ends() const;

    // control::VmControl
    Result<control::VmInfo> create_vm(const VmSpec& spec) override;
    Result<control::VmInfo> stop_vm(const std::string& name, std::chrono::milliseconds timeout) override;
    Result<control::VmInfo> pause_vm(const std::string& name) override;
    Result<control::VmInfo> resume_vm(const std::string& name) override;
    Result<void> remove_vm(const std::string& name) override;
    std::vector<control::VmInfo> list_vms() const override;
    Result<std::uint64_t> set_balloon(const std::string& name, std::uint64_t bytes) override;
    void shut_down() override;
    Result<control::SnapshotInfo> snapshot_vm(const std::string& name, const std::filesystem::path& dir,
                                              control::AfterSnapshot after) override;
    Result<control::VmInfo> restore_vm(const control::RestoreRequest& request) override;
    Result<void> delete_snapshot(const std::filesystem::path& dir) override;
    Result<bool> load_snapshot(const std::filesystem::path& dir) override;
    control::SnapshotSummary snapshot_summary() const override;
    swap::Handover handover(const std::string& device) override;

private:
    void run_vm(VmEntry& entry);
    // A VM restored from snapshot `dir` that has not been released ("" if none);
    // the caller holds table_.mutex.
    std::string restored_user_locked(const std::filesystem::path& dir);
    // Reserve spec.name, build with `build`, start the runner (start and restore).
    template <class Build>
    Result<control::VmInfo> start_built(const VmSpec& spec, const std::optional<std::filesystem::path>& restored_from,
                                        Build&& build);
    // Destroy the entry's BuiltVm (outside the mutex) and mark it released.
    void release(VmEntry& entry);
    // The entry of a VM a command may act on now; errors: no_such_vm, creating.
    Result<VmEntry*> find_settled(const std::string& name, const char* op) const;  // table_.mutex held

    BuildContext context_;
    const Release release_;
    std::chrono::milliseconds balloon_stats_interval_ = kDefaultBalloonStatsInterval;
    std::chrono::milliseconds age_scan_ = kDefaultAgeScan;
    bool auto_unlimited_ = false;
    SnapshotStore* snapshots_ = nullptr;
    mutable VmTable table_;
    bool shutting_down_ = false;  // table_.mutex: shut_down(): no new VM, vm-stop waits no grace period
    EventLog events_;  // last: started after, stopped before, everything above
};

}  // namespace swapvisor::vmm
