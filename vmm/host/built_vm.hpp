// BuiltVm: one VM and everything it owns — its guest memory in the host's pool, the
// KVM VM, its devices, the balloon and its statistics poller — built in one place
// (BuiltVm::build, step by step in the order below) and torn down by its destructor
// alone. The members are declared in build order, so C++ destroys them in teardown
// order; a build that fails half way returns, and the members built so far go in
// that same order. There is no other teardown path (no scope guard, no release()).
//
// Teardown order (reverse of the declarations), and why:
//   poller_      calls into the balloon's transport from its thread: stopped first;
//   counters_    the VM's device counters leave DeviceStats before the devices go
//                (status / stats / /metrics read them from other threads);
//   balloon_*    our references to the balloon and its transport;
//   devices_     sit on the Vm's buses: before the Vm;
//   vm_          maps the guest memory (memslots): before the memory;
//   memory_      stops guest memory's threads, removes it from HostMemory (which
//                waits for every VmRef and frees its VSlots): last.
//
// Threads: build and the destructor run on the caller's thread (a control worker,
// main, or the VM's runner); run() on the VM's runner thread; the rest from any
// thread, as the VmHost's lock allows (vm_host.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "guestmem/host_memory.hpp"
#include "io/result.hpp"
#include "vmm/control/device_stats.hpp"
#include "vmm/devices/device_manager.hpp"
#include "vmm/devices/virtio_balloon.hpp"
#include "vmm/kvm/kvm.hpp"
#include "vmm/sandbox/seccomp.hpp"
#include "vmm/snapshot/manifest.hpp"
#include "vmm/spec/vm_spec.hpp"
#include "vmm/vm.hpp"

namespace swapvisor::vmm {

// Serial lines of several VMs sharing stdout carry "[name] ".
enum class SerialPrefix { none, name };

// What every VM of one host is built against. All must outlive the VMs built.
struct BuildContext {
    const kvm::Kvm& kvm;
    guestmem::HostMemory& host;
    control::DeviceStats& stats;
    sandbox::Seccomp seccomp = sandbox::Seccomp::off;  // confine the VM's threads (vmm/sandbox)
};

// The memory side of a snapshot, as the VM side calls it (docs/SNAPSHOT.md): save
// the paused VM's guest memory into the snapshot directory and return what the
// manifest's `memory` member should hold; or, for a restore, create the VM's guest
// memory in `host` *from* the snapshot (HostMemory::restore_vm: every page starts
// as an image / swapped / zero entry, nothing resident) with the config the VM
// would be built with, and the manifest's `memory` member. It runs before guest
// memory starts and before any vCPU exists; on error nothing may be listed.
using SaveMemory = std::function<Result<snapshot::Json>(guestmem::GuestMemory&)>;
using RestoreMemory = std::function<Result<guestmem::GuestMemory*>(
    guestmem::HostMemory& host, const guestmem::MemoryConfig& config, const snapshot::Json& memory)>;

// The "restore" counters of a VM restored from a snapshot, registered as a
// DeviceStats source, so status / stats / --stats-json carry them as
// `"restore": {"to_first_insn_us": N}` and /metrics as
// swapvisor_vm_restore_to_first_insn_us (vmm/control/README.md#status):
// the time from the restore request (`requested`) to the first entry of one of its
// vCPUs into the guest (Vm::first_entry, FirstEntry). Empty before that entry.
control::Counters restore_counters(FirstEntry::Clock::time_point requested,
                                   std::optional<FirstEntry::Clock::time_point> entered);

class BuiltVm {
public:
    // Build the VM of a validated spec (vmm::validate) and start its guest memory;
    // its vCPUs run once run() is called. Steps, in order: read and check the kernel
    // ELF (before any memory is reserved), guest memory under the host budget, the
    // KVM VM (memslots, vCPUs), COM1 and the debug exit, the virtio devices, the
    // kernel and its PVH boot data, the BSP at the entry, guest memory started.
    // Errors: VmErrc::bad_spec (more vCPUs than this host's KVM allows), or the
    // failing step's error with the VM as context; nothing of the VM is left.
    static Result<std::unique_ptr<BuiltVm>> build(const BuildContext& context, const VmSpec& spec, SerialPrefix prefix);
    ~BuiltVm() = default;  // the member order is the teardown (file comment)
    BuiltVm(const BuiltVm&) = delete;
    BuiltVm& operator=(const BuiltVm&) = delete;

    // Build a VM from a snapshot instead of from a kernel: `spec` is the manifest's
    // spec, the name (and serial log) possibly changed by the caller; its vCPUs,
    // memory size and balloon must be the manifest's (VmErrc::bad_spec otherwise).
    // Steps: guest memory under the host budget, created by `restore_memory` from
    // `manifest.memory`, the KVM VM with its vCPUs and irqchip from the saved state
    // (Vm::create_restored), COM1, the debug exit and the virtio devices put back
    // into their saved state, the balloon's poller, guest memory started. No kernel
    // is read and no loader runs; run() continues the guest where it was saved.
    // `requested` is when the restore was asked for (VmHost::restore's start): the
    // first vCPU's entry into the guest is logged against it and counted in the
    // VM's "restore" counters (restore_counters).
    // Errors: the failing step's, with the VM as context; nothing of the VM is left.
    static Result<std::unique_ptr<BuiltVm>> restore(
        const BuildContext& context, const VmSpec& spec, const snapshot::Manifest& manifest, SerialPrefix prefix,
        const RestoreMemory& restore_memory,
        FirstEntry::Clock::time_point requested = FirstEntry::Clock::now());

    // The VM side of a snapshot of this VM, which the caller has paused
    // (vm().pause() returned true): holds the devices' own work (the balloon's
    // poller), captures every vCPU, the VM-wide KVM state and every device, then
    // calls `save_memory` while still held and puts its answer in `memory`;
    // releases the device work on every path. The caller writes the manifest
    // (snapshot::write_manifest) and resumes the VM (or stops it). Errors: EBUSY if
    // the VM is not paused, a KVM GET's error, or save_memory's.
    Result<snapshot::Manifest> save_state(const SaveMemory& save_memory);

    // The spec it was built from, with the devices' entries appended to the cmdline.
    const VmSpec& spec() const { return spec_; }
    // Run every vCPU until the VM ends, then flush its serial line. Call once.
    VmEnd run();
    // The VM's own controls (Vm: request_stop, pause, resume).
    Vm& vm() { return *vm_; }
    // Stop guest memory's threads but keep its pages (`run` reads them for
    // --stats-json after the guest ended).
    void stop_memory() { memory_.stop(); }
    // The VM's guest memory (a restored VM's save_working_set at its end).
    guestmem::GuestMemory& memory() { return memory_.get(); }
    // The balloon's target in pages (bytes rounded down, at most guest memory), and
    // the guest told of it. Errors: VmErrc::no_balloon.
    Result<std::uint64_t> set_balloon(std::uint64_t bytes);

private:
    explicit BuiltVm(const VmSpec& spec) : spec_(spec) {}
    // The build steps that build() and restore() share, in that order.
    // Guest memory under the host budget: empty (build), or from a snapshot (restore).
    Result<void> create_memory(const BuildContext& context, const RestoreMemory* from = nullptr,
                               const snapshot::Json* memory = nullptr);
    VmConfig vm_config(const BuildContext& context) const;
    Result<void> create_devices(const BuildContext& context, SerialPrefix prefix);
    void start_poller();

    // The VM's guest memory in HostMemory; stopped and removed when this goes.
    class MemoryLease {
    public:
        MemoryLease() = default;
        MemoryLease(const MemoryLease&) = delete;
        MemoryLease& operator=(const MemoryLease&) = delete;
        ~MemoryLease();
        void hold(guestmem::HostMemory& host, guestmem::GuestMemory& memory, std::string name) {
            host_ = &host;
            memory_ = &memory;
            name_ = std::move(name);
        }
        Result<void> start();
        void stop();
        guestmem::GuestMemory& get() const { return *memory_; }

    private:
        guestmem::HostMemory* host_ = nullptr;
        guestmem::GuestMemory* memory_ = nullptr;
        std::string name_;
        bool started_ = false;
    };
    // The VM's device counters in DeviceStats (registered by the DeviceManager);
    // dropped when this goes.
    class CountersLease {
    public:
        CountersLease() = default;
        CountersLease(const CountersLease&) = delete;
        CountersLease& operator=(const CountersLease&) = delete;
        ~CountersLease() {
            if (stats_ != nullptr) stats_->remove(name_);
        }
        void hold(control::DeviceStats& stats, std::string name) {
            stats_ = &stats;
            name_ = std::move(name);
        }

    private:
        control::DeviceStats* stats_ = nullptr;
        std::string name_;
    };

    VmSpec spec_;
    // A restored VM: when its restore was asked for (restore_counters).
    std::optional<FirstEntry::Clock::time_point> restore_requested_;
    // Build order = declaration order; teardown is the reverse (file comment).
    MemoryLease memory_;
    std::unique_ptr<Vm> vm_;
    std::unique_ptr<devices::DeviceManager> devices_;
    std::shared_ptr<devices::VirtioBalloon> balloon_;
    std::shared_ptr<devices::VirtioMmio> balloon_transport_;
    CountersLease counters_;
    std::unique_ptr<devices::BalloonStatsPoller> poller_;
};

}  // namespace swapvisor::vmm
