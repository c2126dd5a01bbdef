// Vm: one running guest: the KVM VM with its memslots, N vCPUs each driven by its own
// thread, and the port-I/O and MMIO buses. The devices on the buses (COM1, debug
// exit, virtio) are put there by a devices::DeviceManager before run(). Guest memory is owned by guestmem; the Vm only registers its regions
// as memslots, so it must be destroyed before that memory (main.cpp).
//
// Threads (vmm/README.md#threads): run() starts one thread per vCPU and blocks until
// all of them have returned. vCPU 0 starts at the PVH entry; the others wait for
// INIT/SIPI in the in-kernel LAPIC (their KVM_RUN blocks). The first vCPU that ends
// the VM records why (VmEnd) and stops the others (vmm/README.md#stopping):
// stopping_ is set, every vCPU's kvm_run->immediate_exit is set, then each thread
// gets kKickSignal. A thread between its stopping_ check and KVM_RUN is caught by
// immediate_exit; one inside KVM_RUN by the signal. stopping_ is never cleared, and
// immediate_exit only by a vCPU settling its exit on the way to park, which then
// checks stopping_ before any KVM_RUN (vmm/README.md#pausing), so no interleaving
// leaves a vCPU running.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "guestmem/guest_memory.hpp"
#include "io/result.hpp"
#include "vmm/devices/bus.hpp"
#include "vmm/devices/virtio_mmio.hpp"
#include "vmm/kvm/kvm.hpp"
#include "vmm/kvm/kvm_vm.hpp"
#include "vmm/kvm/vcpu.hpp"
#include "vmm/kvm/vcpu_state.hpp"

namespace swapvisor::vmm {

// Process exit statuses for VM ends that are not a guest debug exit (vmm/README.md#exit-codes).
inline constexpr int kExitSetupError = 1;
inline constexpr int kExitTripleFault = 129;
inline constexpr int kExitInternalError = 130;
inline constexpr int kExitFailEntry = 131;
inline constexpr int kExitPageLost = 132;
inline constexpr int kExitHalted = 133;
inline constexpr int kExitSystemEvent = 134;
inline constexpr int kExitKvmError = 135;
inline constexpr int kExitStopped = 143;  // 128 + SIGTERM: stopped from outside

enum class EndReason {
    debug_exit,      // port 0xf4
    triple_fault,    // KVM_EXIT_SHUTDOWN
    internal_error,  // KVM_EXIT_INTERNAL_ERROR
    fail_entry,      // KVM_EXIT_FAIL_ENTRY
    page_lost,       // KVM_RUN EFAULT/EHWPOISON or SIGBUS: guest memory could not be restored
    halted,          // KVM_EXIT_HLT (only without an in-kernel irqchip)
    system_event,    // KVM_EXIT_SYSTEM_EVENT (PSCI-style shutdown/reset/crash)
    kvm_error,       // KVM_RUN failed otherwise, or an unknown exit
    stopped,         // request_stop() from outside the guest
};

struct VmEnd {
    EndReason reason;
    std::uint32_t exit_code;  // the guest's 32-bit value for debug_exit, else a kExit* status
    unsigned vcpu = 0;        // the vCPU that ended the VM
    std::string message;      // empty for a debug exit
};

// When a vCPU of a VM first entered the guest (its first KVM_RUN): recorded once, by
// whichever vCPU thread gets there first; read from any thread (status / stats read
// it on the control thread). A restored VM's "time to first instruction" is this
// against the restore request (docs/SNAPSHOT.md#first-insn). Strictly it is the
// entry into KVM_RUN: the guest's first instruction follows it at once, unless its
// first access faults on a page not yet in memory (then that swap-in is the guest's
// first wait, as on any fault).
class FirstEntry {
public:
    using Clock = std::chrono::steady_clock;
    // Record `now` unless an entry is recorded; true for the one call that recorded.
    bool record(Clock::time_point now) {
        std::int64_t none = 0;
        const std::int64_t ns = std::max<std::int64_t>(1, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                              now.time_since_epoch()).count());
        return ns_.compare_exchange_strong(none, ns);
    }
    bool recorded() const { return ns_.load() != 0; }
    std::optional<Clock::time_point> when() const {
        const std::int64_t ns = ns_.load();
        if (ns == 0) return std::nullopt;
        return Clock::time_point(std::chrono::duration_cast<Clock::duration>(std::chrono::nanoseconds(ns)));
    }

private:
    std::atomic<std::int64_t> ns_{0};  // steady_clock ns since its epoch; 0: no entry yet
};

// The KVM side of one VM: its vCPUs and memslots (the operator's VmSpec, vmm/spec, is
// turned into this by the VM builder).
struct VmConfig {
    unsigned vcpus = 1;
    std::span<const guestmem::RegionView> regions;  // registered as memslots in order
    // Run first on each vCPU thread (vmm/sandbox confines it); an error ends the VM.
    std::function<Result<void>()> on_vcpu_thread_start = {};
    // Called once, on the vCPU thread that entered the guest first, after that first
    // KVM_RUN returned (not before it: the guest is not kept waiting for a log line),
    // with the time it entered.
    std::function<void(FirstEntry::Clock::time_point)> on_first_entry = {};
};

// What KVM holds for a VM: every vCPU's state (in vCPU order) and the VM-wide
// irqchip / PIT / clock (vmm/kvm/vcpu_state.hpp). Taken from a paused VM by
// Vm::save_state, given to Vm::create_restored.
struct SavedVm {
    std::vector<kvm::VcpuState> vcpus;
    kvm::VmState vm;
    bool operator==(const SavedVm&) const = default;
};

class Vm {
public:
    // Create the VM, its memslots and vCPUs (with CPUID); the buses start empty.
    static Result<std::unique_ptr<Vm>> create(const kvm::Kvm& kvm, const VmConfig& config);
    // Create the VM and its memslots as create() does, then its vCPUs from `saved`
    // instead of from reset: each vCPU's state (CPUID included: the saved table, not
    // this host's), then the irqchip, PIT and clock. No boot entry is set; run()
    // continues the guest where it was saved. `config.vcpus` must equal the saved
    // count (EINVAL otherwise); a state KVM refuses fails the whole create.
    static Result<std::unique_ptr<Vm>> create_restored(const kvm::Kvm& kvm, const VmConfig& config,
                                                       const SavedVm& saved);
    ~Vm();
    Vm(const Vm&) = delete;
    Vm& operator=(const Vm&) = delete;

    // Put the BSP at the PVH entry (vmm/loader/pvh.hpp).
    Result<void> set_boot_entry(std::uint32_t entry, std::uint32_t start_info_gpa);

    devices::Bus& pio() { return pio_; }
    devices::Bus& mmio() { return mmio_; }
    // A device interrupt line on `gsi` of the in-kernel irqchip (virtio-mmio).
    devices::IrqCallback irq_line(std::uint32_t gsi);

    // Run all vCPUs until the VM ends; returns why. Call once.
    VmEnd run();
    // End the VM from another thread (signal forwarding, control socket). The first
    // end recorded wins.
    void request_stop(VmEnd end);
    // Hold every vCPU outside KVM_RUN (vm-pause) until resume(); returns once each
    // vCPU thread is parked, or the VM ended, or `bound` passed (false then). Guest
    // memory threads keep running (a paused VM can still be swapped and swapped off).
    bool pause(std::chrono::milliseconds bound);
    void resume();
    bool paused() const { return paused_.load(); }
    // When a vCPU first entered the guest (FirstEntry); empty until then.
    std::optional<FirstEntry::Clock::time_point> first_entry() const { return first_entry_.when(); }
    // Every vCPU's state and the VM's, for a snapshot. Only while pause() holds the
    // VM (every vCPU thread parked, its pending exit completed: vmm/README.md#pausing);
    // EBUSY otherwise, or if the VM is ending. Runs on the caller's thread and holds
    // the pause lock throughout, so no vCPU resumes half way. Resume afterwards as
    // usual (a snapshot does not change the running VM).
    Result<SavedVm> save_state();

private:
    Vm(kvm::KvmVm vm, std::vector<guestmem::RegionView> regions);
    void vcpu_thread(unsigned index);
    void park();  // a vCPU thread waits here while paused_
    // On the way to park: complete the exit KVM_RUN last returned (kvm::Vcpu::
    // complete_pending_exit); a value means the VM ends.
    std::optional<VmEnd> settle(kvm::Vcpu& vcpu);
    // Handle one exit; a value means the VM ends.
    std::optional<VmEnd> handle_exit(kvm::Vcpu& vcpu, kvm::VcpuExit& exit);
    std::optional<VmEnd> handle_run_error(kvm::Vcpu& vcpu, const Error& error);
    void finish(VmEnd end);
    void stop_all();
    std::string describe_hva(const void* hva) const;

    kvm::KvmVm vm_;
    std::vector<guestmem::RegionView> regions_;
    std::vector<kvm::Vcpu> vcpus_;  // closed before vm_ (declared after it)
    std::function<Result<void>()> on_vcpu_thread_start_;
    std::function<void(FirstEntry::Clock::time_point)> on_first_entry_;
    FirstEntry first_entry_;
    devices::Bus pio_{"port I/O"};
    devices::Bus mmio_{"MMIO"};

    std::atomic<bool> stopping_{false};
    std::atomic<bool> paused_{false};
    std::atomic<bool> threads_ready_{false};  // threads_ is filled: pause() may read it
    // Protects: parked_ (vCPU threads waiting while paused_); Order: leaf.
    std::mutex pause_mutex_;
    std::condition_variable pause_cv_;
    unsigned parked_ = 0;
    // Protects: end_; Order: leaf.
    std::mutex end_mutex_;
    std::optional<VmEnd> end_;
    // Filled before any vCPU thread passes its start gate, then immutable, so
    // stop_all() may read it from any vCPU thread without a lock.
    std::vector<std::thread> threads_;
};

}  // namespace swapvisor::vmm
