// VcpuState and VmState: everything KVM holds for one vCPU and for the VM around it
// (in-kernel irqchip, PIT, kvmclock), captured from a VM whose vCPUs are all out of
// KVM_RUN and put back into a freshly created VM before its vCPUs first run
// (docs/SNAPSHOT.md#vcpu-and-device-state). The types are plain (no <linux/kvm.h>):
// vmm/snapshot serialises them, tests build them by hand.
//
// Most parts are the raw bytes of a KVM ABI struct (struct kvm_regs, kvm_sregs2,
// kvm_lapic_state, ...): those layouts are the kernel's stable ABI, so a blob read on
// one host means the same on another. Their sizes are the k*Bytes constants below
// (checked against sizeof in vcpu_state.cpp), so a parser above vmm/kvm/ can refuse a
// blob of the wrong size without seeing the kernel headers. The MSRs and CPUID are
// lists of values, since which ones exist depends on the host and the guest.
//
// Invariants: a VcpuState captured by save_vcpu_state is complete (every blob has its
// exact size; XSAVE at least 4096 bytes or empty where the host has no XSAVE, XCRS
// empty where it has no XCRS). restore_vcpu_state sets the parts in one fixed order
// (vcpu_state.cpp says why) and fails on the first part KVM refuses, naming it; a
// vCPU whose restore failed must not run (the VM builder drops the whole VM).
//
// Threads: both calls need the vCPU out of KVM_RUN (a parked or never-started vCPU
// thread); they may be made from any thread (KVM serialises vCPU ioctls on the
// vCPU's own mutex).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "io/result.hpp"
#include "vmm/kvm/kvm.hpp"

namespace swapvisor::vmm::kvm {

class KvmVm;
class Vcpu;

// Sizes of the KVM ABI structs carried as blobs (x86-64).
inline constexpr std::size_t kRegsBytes = 144;         // struct kvm_regs
inline constexpr std::size_t kSregsBytes = 312;        // struct kvm_sregs
inline constexpr std::size_t kSregs2Bytes = 320;       // struct kvm_sregs2
inline constexpr std::size_t kFpuBytes = 416;          // struct kvm_fpu
inline constexpr std::size_t kXsaveMinBytes = 4096;    // struct kvm_xsave (KVM_CAP_XSAVE2 may say more)
inline constexpr std::size_t kXsaveMaxBytes = 1 << 20; // a sanity bound for parsers
inline constexpr std::size_t kXcrsBytes = 392;         // struct kvm_xcrs
inline constexpr std::size_t kDebugRegsBytes = 128;    // struct kvm_debugregs
inline constexpr std::size_t kLapicBytes = 1024;       // struct kvm_lapic_state
inline constexpr std::size_t kVcpuEventsBytes = 64;    // struct kvm_vcpu_events
inline constexpr std::size_t kIrqchipBytes = 520;      // struct kvm_irqchip
inline constexpr std::size_t kPitBytes = 112;          // struct kvm_pit_state2
inline constexpr std::size_t kMaxSavedMsrs = 256;
inline constexpr std::size_t kMaxSavedCpuid = 256;

using Blob = std::vector<std::uint8_t>;

// Which ioctl pair the segment state came from: KVM_GET_SREGS2 (PDPTRs, no pending
// interrupt bitmap; used where KVM_CAP_SREGS2 exists) or KVM_GET_SREGS.
enum class SregsFormat : std::uint8_t { sregs, sregs2 };

struct MsrValue {
    std::uint32_t index = 0;
    std::uint64_t value = 0;
    bool operator==(const MsrValue&) const = default;
};

struct VcpuState {
    unsigned index = 0;                    // the vCPU id (= initial APIC id)
    std::vector<CpuidEntry> cpuid;         // as set on the vCPU (KVM_GET_CPUID2)
    std::uint32_t tsc_khz = 0;             // KVM_GET_TSC_KHZ; 0: unknown (not restored)
    std::uint32_t mp_state = 0;            // KVM_MP_STATE_*
    Blob regs;                             // kvm_regs
    SregsFormat sregs_format = SregsFormat::sregs2;
    Blob sregs;                            // kvm_sregs or kvm_sregs2 (sregs_format)
    Blob fpu;                              // kvm_fpu
    Blob xsave;                            // kvm_xsave (>= 4096 bytes) or empty
    Blob xcrs;                             // kvm_xcrs or empty
    Blob debug_regs;                       // kvm_debugregs
    Blob lapic;                            // kvm_lapic_state
    std::vector<MsrValue> msrs;            // in restore order (TSC first, TSC deadline last)
    Blob vcpu_events;                      // kvm_vcpu_events
    bool operator==(const VcpuState&) const = default;
};

struct VmState {
    std::uint64_t clock_ns = 0;  // kvmclock (KVM_GET_CLOCK)
    Blob pic_master;             // kvm_irqchip, chip 0
    Blob pic_slave;              // kvm_irqchip, chip 1
    Blob ioapic;                 // kvm_irqchip, chip 2
    Blob pit;                    // kvm_pit_state2
    bool operator==(const VmState&) const = default;
};

// The MSR indices a snapshot saves when the host lists them (KVM_GET_MSR_INDEX_LIST),
// in restore order; see vcpu_state.cpp for why each is there and why others are not.
const std::vector<std::uint32_t>& saved_msr_indices();

// Capture / restore one vCPU of `vm` (vCPU out of KVM_RUN; header comment).
Result<VcpuState> save_vcpu_state(const KvmVm& vm, Vcpu& vcpu);
Result<void> restore_vcpu_state(const KvmVm& vm, Vcpu& vcpu, const VcpuState& state);

// The VM-wide state: PIC pair, IOAPIC, PIT and kvmclock. Restore it after every
// vCPU's state (the IOAPIC re-delivers its pending lines into the restored LAPICs).
Result<VmState> save_vm_state(const KvmVm& vm);
Result<void> restore_vm_state(const KvmVm& vm, const VmState& state);

}  // namespace swapvisor::vmm::kvm
