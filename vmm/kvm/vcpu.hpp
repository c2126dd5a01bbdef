// Vcpu: one KVM vCPU fd and its shared kvm_run page. run() enters the guest and
// decodes why KVM returned into a plain VcpuExit, so that vm.cpp never sees
// <linux/kvm.h>. The data spans inside an exit point into the kvm_run page and are
// valid only until the next run().
//
// Threads: a Vcpu is driven by exactly one thread (its vCPU thread). The only
// cross-thread operation is request_immediate_exit(), which writes one byte of
// kvm_run that KVM reads at the next KVM_RUN entry (vmm/README.md#stopping).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "io/result.hpp"
#include "io/unique_fd.hpp"
#include "vmm/kvm/kvm.hpp"

namespace swapvisor::vmm::kvm {

enum class IoDirection : bool { in, out };

// Port I/O: `count` accesses of `size` bytes each, laid out back to back in data.
struct IoExit {
    std::uint16_t port;
    std::uint8_t size;
    IoDirection direction;
    std::uint32_t count;
    std::span<std::byte> data;
};

struct MmioExit {
    std::uint64_t gpa;
    bool is_write;
    std::span<std::byte> data;  // len bytes (1..8)
};

struct HltExit {};
struct ShutdownExit {};  // triple fault (or an explicit shutdown)
struct InternalErrorExit { std::uint32_t suberror; std::vector<std::uint64_t> data; };
struct FailEntryExit { std::uint64_t hardware_reason; std::uint32_t cpu; };
struct InterruptedExit {};  // KVM_RUN returned EINTR: a signal or immediate_exit
struct SystemEventExit { std::uint32_t type; };
struct UnknownExit { std::uint32_t reason; };

using VcpuExit = std::variant<IoExit, MmioExit, HltExit, ShutdownExit, InternalErrorExit, FailEntryExit,
                              InterruptedExit, SystemEventExit, UnknownExit>;

class Vcpu {
public:
    Vcpu(Vcpu&&) noexcept = default;
    Vcpu& operator=(Vcpu&&) noexcept = default;

    unsigned index() const { return index_; }
    int fd() const { return fd_.get(); }

    // KVM_SET_CPUID2 from the host's supported table, with this vCPU's APIC id in
    // leaf 1 EBX[31:24] and leaf 0xB/0x1F EDX, and the hypervisor bit set.
    Result<void> set_cpuid(const std::vector<CpuidEntry>& supported);
    // The PVH boot state (vmm/loader/README: 32-bit protected mode, paging off, flat
    // segments, CR0 = PE|ET, EIP = entry, EBX = start_info, RFLAGS = 0x2).
    Result<void> set_pvh_entry_state(std::uint32_t entry, std::uint32_t start_info);

    // Enter the guest until the next exit. An errno from KVM_RUN other than EINTR is
    // an Error (EFAULT / EHWPOISON: guest memory could not be provided).
    Result<VcpuExit> run();

    // Make the current or next KVM_RUN return EINTR at once. Safe from any thread and
    // from a signal handler. Only complete_pending_exit() clears it, and only a value
    // it set itself (a vCPU asked to exit stays stopped: vm.hpp).
    void request_immediate_exit();

    // Complete the exit KVM_RUN last returned without running the guest: KVM finishes
    // a port or MMIO read only at the next KVM_RUN (it writes RAX or the register,
    // then advances RIP), so until then the registers are not the guest's state
    // (KVM api.rst, kvm_run::immediate_exit). Sets immediate_exit, enters KVM_RUN,
    // which completes the pending operation and returns EINTR, and clears it again.
    // Called by the vCPU's own thread on its way to park (vm.cpp) so that a paused
    // vCPU's state is consistent. If immediate_exit is already set the VM is being
    // stopped: nothing is done (the flag is never cleared then, vm.hpp).
    // nullopt: settled. A value: completing needed userspace once more (an MMIO
    // access in fragments): handle that exit like any other, then call again.
    Result<std::optional<VcpuExit>> complete_pending_exit();

    // RIP, RSP, RFLAGS, CR0/CR3/CR4, EFER and CS for diagnostics (after an exit).
    std::string describe_registers() const;

private:
    friend class KvmVm;
    VcpuExit decode_exit();  // struct kvm_run after KVM_RUN returned 0
    Vcpu(unsigned index, io::UniqueFd fd, io::Mapping run) : index_(index), fd_(std::move(fd)), run_(std::move(run)) {}

    unsigned index_;
    io::UniqueFd fd_;   // closed after the kvm_run page is unmapped
    io::Mapping run_;   // struct kvm_run, KVM_GET_VCPU_MMAP_SIZE bytes
};

}  // namespace swapvisor::vmm::kvm
