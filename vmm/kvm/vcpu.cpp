// Vcpu: CPUID and PVH register setup, KVM_RUN and decoding of struct kvm_run.
// Invariant: only the owning vCPU thread calls run() and the setters;
// request_immediate_exit() is the one entry point for other threads.
#include "vmm/kvm/vcpu.hpp"

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <atomic>
#include <cerrno>
#include <fmt/format.h>

#include "vmm/kvm/cpuid_table.hpp"

namespace swapvisor::vmm::kvm {
namespace {

constexpr std::uint32_t kCpuidHypervisorBit = 1U << 31;  // leaf 1 ECX[31]
constexpr std::uint64_t kCr0Pe = 1ULL << 0;
constexpr std::uint64_t kCr0Et = 1ULL << 4;

// A flat 4 GiB segment of the given type (0xb: code execute/read accessed,
// 0x3: data read/write accessed), 32-bit (db = 1), page granular.
kvm_segment flat_segment(std::uint16_t selector, std::uint8_t type) {
    kvm_segment s{};
    s.base = 0;
    s.limit = 0xffff'ffff;
    s.selector = selector;
    s.type = type;
    s.present = 1;
    s.dpl = 0;
    s.db = 1;
    s.s = 1;
    s.l = 0;
    s.g = 1;
    return s;
}

}  // namespace

Result<void> Vcpu::set_cpuid(const std::vector<CpuidEntry>& supported) {
    CpuidTable table(static_cast<std::uint32_t>(supported.size()));
    for (std::size_t i = 0; i < supported.size(); ++i) {
        const CpuidEntry& in = supported[i];
        kvm_cpuid_entry2 e = kvm_entry_of(in);
        switch (in.function) {
            case 0x1:
                // Initial APIC id in EBX[31:24]: the guest's view of who it is must
                // match the LAPIC id KVM gave this vCPU (its index).
                e.ebx = (e.ebx & 0x00ff'ffff) | ((index_ & 0xff) << 24);
                e.ecx |= kCpuidHypervisorBit;
                break;
            case 0xb:
            case 0x1f:
                // Extended topology: EDX is the full x2APIC id on every subleaf.
                e.edx = index_;
                break;
            default:
                break;
        }
        table.put(i, e);
    }
    // Kernel contract: KVM_SET_CPUID2 copies nent entries; it must be called before
    // the first KVM_RUN (later changes are refused on recent kernels).
    if (::ioctl(fd_.get(), kKvmSetCpuid2, table.data()) < 0) return errno_error("KVM_SET_CPUID2");
    return {};
}

Result<void> Vcpu::set_pvh_entry_state(std::uint32_t entry, std::uint32_t start_info) {
    kvm_sregs sregs{};
    // Kernel contract: KVM_GET_SREGS returns the reset state (real mode, TR a busy
    // 32-bit TSS, LDT unusable), which we keep except for what PVH fixes below.
    if (::ioctl(fd_.get(), KVM_GET_SREGS, &sregs) < 0) return errno_error("KVM_GET_SREGS");
    // PVH entry (xen/include/public/arch-x86/hvm/start_info.h): 32-bit protected
    // mode with paging disabled, CS a 32-bit flat code segment, DS/ES/SS (and FS/GS
    // here) flat data segments. The selectors are those of a conventional GDT
    // (code 0x10, data 0x18); the guest loads its own GDT before reloading them.
    sregs.cs = flat_segment(0x10, 0xb);
    kvm_segment data = flat_segment(0x18, 0x3);
    sregs.ds = data;
    sregs.es = data;
    sregs.ss = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.cr0 = kCr0Pe | kCr0Et;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    // Kernel contract: KVM_SET_SREGS loads the segment caches directly; no GDT is
    // read, so none needs to exist in guest memory.
    if (::ioctl(fd_.get(), KVM_SET_SREGS, &sregs) < 0) return errno_error("KVM_SET_SREGS");

    kvm_regs regs{};
    regs.rip = entry;
    regs.rbx = start_info;
    regs.rflags = 0x2;  // bit 1 is reserved and always set; IF = 0
    // Kernel contract: KVM_SET_REGS sets the general registers of a vCPU that is not
    // running; it is the owning thread calling before its first KVM_RUN.
    if (::ioctl(fd_.get(), KVM_SET_REGS, &regs) < 0) return errno_error("KVM_SET_REGS");
    return {};
}

Result<VcpuExit> Vcpu::run() {
    // Kernel contract: KVM_RUN returns 0 with kvm_run->exit_reason set, or -1 with
    // errno: EINTR when a signal is pending or immediate_exit is set (exit_reason is
    // then KVM_EXIT_INTR), EFAULT/EHWPOISON when guest memory cannot be faulted in.
    if (::ioctl(fd_.get(), KVM_RUN, 0) < 0) {
        if (errno == EINTR || errno == EAGAIN) return InterruptedExit{};
        return errno_error("KVM_RUN");
    }
    return decode_exit();
}

VcpuExit Vcpu::decode_exit() {
    auto* run = reinterpret_cast<kvm_run*>(run_.data());
    switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            // Kernel contract: the PIO data lives in the kvm_run mapping at
            // data_offset, count * size bytes; for IN it is copied to the guest at
            // the next KVM_RUN.
            auto* base = run_.data() + run->io.data_offset;
            std::size_t len = std::size_t{run->io.size} * run->io.count;
            SWV_ASSERT(run->io.data_offset + len <= run_.size(), "KVM PIO data outside the kvm_run mapping");
            return IoExit{run->io.port, run->io.size,
                          run->io.direction == KVM_EXIT_IO_OUT ? IoDirection::out : IoDirection::in, run->io.count,
                          std::span<std::byte>(base, len)};
        }
        case KVM_EXIT_MMIO: {
            std::uint32_t len = run->mmio.len > 8 ? 8 : run->mmio.len;
            return MmioExit{run->mmio.phys_addr, run->mmio.is_write != 0,
                            std::span<std::byte>(reinterpret_cast<std::byte*>(run->mmio.data), len)};
        }
        case KVM_EXIT_HLT:
            return HltExit{};
        case KVM_EXIT_SHUTDOWN:
            return ShutdownExit{};
        case KVM_EXIT_INTERNAL_ERROR: {
            InternalErrorExit e{run->internal.suberror, {}};
            std::uint32_t n = run->internal.ndata;
            if (n > 16) n = 16;
            for (std::uint32_t i = 0; i < n; ++i) e.data.push_back(run->internal.data[i]);
            return e;
        }
        case KVM_EXIT_FAIL_ENTRY:
            return FailEntryExit{run->fail_entry.hardware_entry_failure_reason, run->fail_entry.cpu};
        case KVM_EXIT_INTR:
            return InterruptedExit{};
        case KVM_EXIT_SYSTEM_EVENT:
            return SystemEventExit{run->system_event.type};
        default:
            return UnknownExit{run->exit_reason};
    }
}

void Vcpu::request_immediate_exit() {
    auto* run = reinterpret_cast<kvm_run*>(run_.data());
    // Pairs with KVM's READ_ONCE(kvm_run->immediate_exit) at KVM_RUN entry; the
    // caller follows with a signal to the vCPU thread, which covers a KVM_RUN that
    // is already inside the guest.
    std::atomic_ref<std::uint8_t>(run->immediate_exit).store(1, std::memory_order_seq_cst);
}

Result<std::optional<VcpuExit>> Vcpu::complete_pending_exit() {
    auto* run = reinterpret_cast<kvm_run*>(run_.data());
    std::atomic_ref<std::uint8_t> flag(run->immediate_exit);
    std::uint8_t expected = 0;
    // Pairs with request_immediate_exit(): if a stop set the flag first, leave it.
    if (!flag.compare_exchange_strong(expected, 1, std::memory_order_seq_cst)) return std::nullopt;
    // Kernel contract: with immediate_exit set, KVM_RUN first runs the pending
    // completion (complete_userspace_io: the PIO/MMIO read result into the guest's
    // register, RIP past the instruction) and then returns EINTR without entering
    // the guest; a vCPU still waiting for SIPI also returns EINTR at once.
    int rc = ::ioctl(fd_.get(), KVM_RUN, 0);
    int err = errno;
    // A stop that lands between our set and this clear is still seen: the stopper
    // sets stopping_ before immediate_exit and the caller re-checks stopping_ before
    // any further KVM_RUN (vm.cpp, Vm::park).
    flag.store(0, std::memory_order_seq_cst);
    // Kernel contract: 0 means the completion itself needed userspace again (an MMIO
    // access split in fragments): a new exit to handle before trying again.
    if (rc == 0) return std::optional<VcpuExit>(decode_exit());
    if (err == EINTR || err == EAGAIN) return std::nullopt;
    return errno_error("KVM_RUN (completing the pending exit)", err);
}

std::string Vcpu::describe_registers() const {
    kvm_regs regs{};
    kvm_sregs sregs{};
    // Kernel contract: KVM_GET_REGS / KVM_GET_SREGS on a vCPU that is not in KVM_RUN
    // (we are its thread, after an exit) return the state at the exit.
    if (::ioctl(fd_.get(), KVM_GET_REGS, &regs) < 0 || ::ioctl(fd_.get(), KVM_GET_SREGS, &sregs) < 0) {
        return fmt::format("(registers unavailable: errno {})", errno);
    }
    return fmt::format(
        "rip=0x{:x} rsp=0x{:x} rflags=0x{:x} rax=0x{:x} rbx=0x{:x} cr0=0x{:x} cr2=0x{:x} cr3=0x{:x} cr4=0x{:x} "
        "efer=0x{:x} cs=0x{:x}(l={} db={})",
        regs.rip, regs.rsp, regs.rflags, regs.rax, regs.rbx, sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer,
        sregs.cs.selector, sregs.cs.l, sregs.cs.db);
}

}  // namespace swapvisor::vmm::kvm
