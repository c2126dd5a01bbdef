// vCPU and VM state through KVM's GET/SET ioctls (vcpu_state.hpp). The order of the
// calls is the point of this file: both lists below say why each step is where it
// is. They follow what KVM's api.rst requires and what Firecracker
// (vstate/vcpu/x86_64.rs) and QEMU (target/i386/kvm.c) learned the hard way.
#include "vmm/kvm/vcpu_state.hpp"

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "vmm/kvm/cpuid_table.hpp"
#include "vmm/kvm/kvm_abi.hpp"
#include "vmm/kvm/kvm_vm.hpp"
#include "vmm/kvm/vcpu.hpp"

namespace swapvisor::vmm::kvm {

static_assert(sizeof(kvm_regs) == kRegsBytes);
static_assert(sizeof(kvm_sregs) == kSregsBytes);
static_assert(sizeof(kvm_sregs2) == kSregs2Bytes);
static_assert(sizeof(kvm_fpu) == kFpuBytes);
static_assert(sizeof(kvm_xcrs) == kXcrsBytes);
static_assert(sizeof(kvm_debugregs) == kDebugRegsBytes);
static_assert(sizeof(kvm_lapic_state) == kLapicBytes);
static_assert(sizeof(kvm_vcpu_events) == kVcpuEventsBytes);
static_assert(sizeof(kvm_irqchip) == kIrqchipBytes);
static_assert(sizeof(kvm_pit_state2) == kPitBytes);

namespace {

// The MSRs a snapshot carries, in restore order. An allowlist, not "everything KVM
// lists": a listed MSR that the guest's CPUID does not enable may be readable and
// still refused on write, and an MSR we do not understand is one we cannot promise
// restores safely. EFER, FS/GS base and the APIC base are part of sregs; they are
// listed too in case a host reports them, where writing the same value again is
// harmless.
const std::vector<std::uint32_t> kSavedMsrs = {
    0x0000'0010,  // IA32_TSC: first, TSC_ADJUST and the TSC deadline are relative to it
    0x0000'003b,  // IA32_TSC_ADJUST
    0x0000'001b,  // IA32_APIC_BASE (also sregs.apic_base)
    0xc000'0080,  // EFER (also sregs.efer)
    0x0000'0174, 0x0000'0175, 0x0000'0176,                  // SYSENTER_CS / ESP / EIP
    0xc000'0081, 0xc000'0082, 0xc000'0083, 0xc000'0084,     // STAR, LSTAR, CSTAR, SFMASK
    0xc000'0100, 0xc000'0101,                               // FS_BASE, GS_BASE (also sregs)
    0xc000'0102,                                            // KERNEL_GS_BASE
    0xc000'0103,                                            // TSC_AUX
    0x0000'0277,                                            // PAT
    0x0000'01a0,                                            // MISC_ENABLE
    0x0000'0048,                                            // SPEC_CTRL
    0x0000'0da0,                                            // XSS
    0x0000'02ff,                                            // MTRRdefType
    0x0000'0250, 0x0000'0258, 0x0000'0259,                  // fixed-range MTRRs
    0x0000'0268, 0x0000'0269, 0x0000'026a, 0x0000'026b,
    0x0000'026c, 0x0000'026d, 0x0000'026e, 0x0000'026f,
    0x0000'0200, 0x0000'0201, 0x0000'0202, 0x0000'0203,     // variable-range MTRRs 0-7
    0x0000'0204, 0x0000'0205, 0x0000'0206, 0x0000'0207,
    0x0000'0208, 0x0000'0209, 0x0000'020a, 0x0000'020b,
    0x0000'020c, 0x0000'020d, 0x0000'020e, 0x0000'020f,
    // KVM paravirtual MSRs (kvmclock, steal time, PV EOI, async PF). ASYNC_PF_INT
    // before ASYNC_PF_EN: enabling interrupt-based delivery needs the vector set.
    0x0000'0011, 0x0000'0012,                               // WALL_CLOCK, SYSTEM_TIME (old)
    0x4b56'4d00, 0x4b56'4d01,                               // WALL_CLOCK_NEW, SYSTEM_TIME_NEW
    0x4b56'4d03,                                            // STEAL_TIME
    0x4b56'4d04,                                            // PV_EOI_EN
    0x4b56'4d05,                                            // POLL_CONTROL
    0x4b56'4d06,                                            // ASYNC_PF_INT
    0x4b56'4d02,                                            // ASYNC_PF_EN
    0x0000'06e0,  // IA32_TSC_DEADLINE: last, after the TSC and after the LAPIC (KVM
                  // drops the write unless the LVT timer is already in deadline mode)
};

template <class T>
Blob to_blob(const T& value) {
    Blob b(sizeof(T));
    std::memcpy(b.data(), &value, sizeof(T));
    return b;
}

// The blob into a zeroed T; false if its size is not sizeof(T).
template <class T>
bool from_blob(const Blob& b, T& out) {
    if (b.size() != sizeof(T)) return false;
    std::memcpy(&out, b.data(), sizeof(T));
    return true;
}

int check_extension(int fd, long cap) {
    // Kernel contract: KVM_CHECK_EXTENSION on a VM fd answers for that VM: 0 when
    // unsupported, > 0 when supported (KVM_CAP_XSAVE2: the XSAVE buffer size).
    int rc = ::ioctl(fd, KVM_CHECK_EXTENSION, cap);
    return rc < 0 ? 0 : rc;
}

std::unexpected<Error> vcpu_error(const char* op, unsigned index, int err = errno) {
    return errno_error(op, err, fmt::format("vCPU {}", index));
}

// KVM_GET_MSR_INDEX_LIST on the system fd: every MSR KVM can save and restore.
Result<std::vector<std::uint32_t>> msr_index_list(int kvm_fd) {
    for (std::uint32_t n = 256; n <= 16384; n *= 2) {
        std::vector<std::uint32_t> buf(1 + n);
        buf[0] = n;
        // Kernel contract: E2BIG (with nmsrs set to the count needed) when nmsrs is too small.
        if (::ioctl(kvm_fd, abi::kGetMsrIndexList, buf.data()) < 0) {
            if (errno == E2BIG) continue;
            return errno_error("KVM_GET_MSR_INDEX_LIST");
        }
        std::uint32_t got = std::min(buf[0], n);
        return std::vector<std::uint32_t>(buf.begin() + 1, buf.begin() + 1 + got);
    }
    return errno_error("KVM_GET_MSR_INDEX_LIST", E2BIG);
}

// A struct kvm_msrs buffer of `n` entries (8-byte aligned).
struct MsrBuffer {
    explicit MsrBuffer(std::size_t n) : words(1 + 2 * n, 0) {
        abi::MsrsHeader h{static_cast<std::uint32_t>(n), 0};
        std::memcpy(words.data(), &h, sizeof h);
    }
    void put(std::size_t i, std::uint32_t index, std::uint64_t data) {
        kvm_msr_entry e{};
        e.index = index;
        e.data = data;
        std::memcpy(&words[1 + 2 * i], &e, sizeof e);
    }
    kvm_msr_entry get(std::size_t i) const {
        kvm_msr_entry e;
        std::memcpy(&e, &words[1 + 2 * i], sizeof e);
        return e;
    }
    std::vector<std::uint64_t> words;
};

// Reads `indices` with as few KVM_GET_MSRS calls as possible. Kernel contract:
// KVM_GET_MSRS returns how many entries it read, stopping at the first MSR it
// refuses (one this guest's CPUID does not have): that one is left out and the read
// goes on after it.
Result<std::vector<MsrValue>> read_msrs(int vcpu_fd, unsigned vcpu, const std::vector<std::uint32_t>& indices) {
    std::vector<MsrValue> out;
    std::size_t start = 0;
    while (start < indices.size()) {
        const std::size_t n = indices.size() - start;
        MsrBuffer buf(n);
        for (std::size_t i = 0; i < n; ++i) buf.put(i, indices[start + i], 0);
        int rc = ::ioctl(vcpu_fd, abi::kGetMsrs, buf.words.data());
        if (rc < 0) return vcpu_error("KVM_GET_MSRS", vcpu);
        if (static_cast<std::size_t>(rc) > n) return vcpu_error("KVM_GET_MSRS (more entries than asked)", vcpu, EPROTO);
        for (int i = 0; i < rc; ++i) out.push_back(MsrValue{buf.get(i).index, buf.get(i).data});
        start += static_cast<std::size_t>(rc);
        if (static_cast<std::size_t>(rc) < n) ++start;  // the refused MSR
    }
    return out;
}

Result<std::vector<CpuidEntry>> read_cpuid(int vcpu_fd, unsigned vcpu) {
    for (std::uint32_t nent = 64; nent <= 4096; nent *= 2) {
        CpuidTable table(nent);
        // Kernel contract: KVM_GET_CPUID2 returns the table KVM_SET_CPUID2 set; E2BIG
        // (nent rewritten to the count) when nent is too small.
        if (::ioctl(vcpu_fd, abi::kGetCpuid2, table.data()) < 0) {
            if (errno == E2BIG) continue;
            return vcpu_error("KVM_GET_CPUID2", vcpu);
        }
        std::vector<CpuidEntry> out;
        for (std::uint32_t i = 0; i < table.nent(); ++i) {
            kvm_cpuid_entry2 e = table.get(i);
            out.push_back(CpuidEntry{e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx});
        }
        return out;
    }
    return vcpu_error("KVM_GET_CPUID2", vcpu, E2BIG);
}

template <class T>
Result<Blob> get_blob(int fd, unsigned long request, const char* op, unsigned vcpu) {
    T value{};
    // Kernel contract: each KVM_GET_* below fills the whole struct of a vCPU that is
    // not in KVM_RUN.
    if (::ioctl(fd, request, &value) < 0) return vcpu_error(op, vcpu);
    return to_blob(value);
}

template <class T>
Result<void> set_blob(int fd, unsigned long request, const char* op, unsigned vcpu, const Blob& blob) {
    T value{};
    if (!from_blob(blob, value)) return errno_error(op, EINVAL, fmt::format("vCPU {}: {} bytes, expected {}", vcpu,
                                                                          blob.size(), sizeof(T)));
    if (::ioctl(fd, request, &value) < 0) return vcpu_error(op, vcpu);
    return {};
}

}  // namespace

const std::vector<std::uint32_t>& saved_msr_indices() { return kSavedMsrs; }

// Capture order:
//  1. MP state first: KVM_GET_MP_STATE runs kvm_apic_accept_events, which may change
//     the LAPIC and the registers (a latched INIT), so everything read after it
//     agrees with it.
//  2. regs, sregs, FPU, XSAVE, XCRS, debug registers, LAPIC (KVM_GET_LAPIC may sync
//     the PIR into the IRR, so after the MP state), CPUID, TSC frequency, MSRs.
//  3. vCPU events last: the other GETs may still move pending events about.
Result<VcpuState> save_vcpu_state(const KvmVm& vm, Vcpu& vcpu) {
    const int fd = vcpu.fd();
    const unsigned i = vcpu.index();
    VcpuState s;
    s.index = i;

    kvm_mp_state mp{};
    if (::ioctl(fd, KVM_GET_MP_STATE, &mp) < 0) return vcpu_error("KVM_GET_MP_STATE", i);
    s.mp_state = mp.mp_state;

    s.regs = SWV_TRY(get_blob<kvm_regs>(fd, KVM_GET_REGS, "KVM_GET_REGS", i));
    if (check_extension(vm.fd(), KVM_CAP_SREGS2) > 0) {
        s.sregs_format = SregsFormat::sregs2;
        s.sregs = SWV_TRY(get_blob<kvm_sregs2>(fd, KVM_GET_SREGS2, "KVM_GET_SREGS2", i));
    } else {
        s.sregs_format = SregsFormat::sregs;
        s.sregs = SWV_TRY(get_blob<kvm_sregs>(fd, KVM_GET_SREGS, "KVM_GET_SREGS", i));
    }
    s.fpu = SWV_TRY(get_blob<kvm_fpu>(fd, KVM_GET_FPU, "KVM_GET_FPU", i));

    // XSAVE: KVM_GET_XSAVE2 with the size KVM_CAP_XSAVE2 gives (more than 4096 bytes
    // once dynamic features such as AMX are enabled), else the 4096-byte KVM_GET_XSAVE.
    if (int size = check_extension(vm.fd(), KVM_CAP_XSAVE2); size > 0) {
        s.xsave.assign(std::max<std::size_t>(static_cast<std::size_t>(size), kXsaveMinBytes), 0);
        // Kernel contract: KVM_GET_XSAVE2 writes exactly the KVM_CAP_XSAVE2 size.
        if (::ioctl(fd, abi::kGetXsave2, s.xsave.data()) < 0) return vcpu_error("KVM_GET_XSAVE2", i);
    } else if (check_extension(vm.fd(), KVM_CAP_XSAVE) > 0) {
        s.xsave.assign(kXsaveMinBytes, 0);
        if (::ioctl(fd, abi::kGetXsave, s.xsave.data()) < 0) return vcpu_error("KVM_GET_XSAVE", i);
    }
    if (check_extension(vm.fd(), KVM_CAP_XCRS) > 0)
        s.xcrs = SWV_TRY(get_blob<kvm_xcrs>(fd, KVM_GET_XCRS, "KVM_GET_XCRS", i));
    s.debug_regs = SWV_TRY(get_blob<kvm_debugregs>(fd, KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", i));
    s.lapic = SWV_TRY(get_blob<kvm_lapic_state>(fd, KVM_GET_LAPIC, "KVM_GET_LAPIC", i));
    s.cpuid = SWV_TRY(read_cpuid(fd, i));

    // Kernel contract: KVM_GET_TSC_KHZ returns the vCPU's TSC frequency in kHz, or
    // fails where the host cannot tell (then the restore keeps its own).
    if (int khz = ::ioctl(fd, KVM_GET_TSC_KHZ, 0); khz > 0) s.tsc_khz = static_cast<std::uint32_t>(khz);

    const std::vector<std::uint32_t> listed = SWV_TRY(msr_index_list(vm.kvm().fd()));
    std::vector<std::uint32_t> wanted;
    for (std::uint32_t msr : kSavedMsrs)
        if (std::find(listed.begin(), listed.end(), msr) != listed.end()) wanted.push_back(msr);
    s.msrs = SWV_TRY(read_msrs(fd, i, wanted));

    s.vcpu_events = SWV_TRY(get_blob<kvm_vcpu_events>(fd, KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", i));
    return s;
}

// Restore order (a freshly created vCPU that has never run):
//  1. CPUID: the XSAVE layout, the MSRs that exist and the LAPIC's x2APIC ability
//     all follow from it.
//  2. TSC frequency, before any TSC value is written (scaling applies to it).
//  3. regs, then sregs: before the LAPIC (the APIC base and x2APIC mode decide how
//     the LAPIC state is read) and before the MSRs (EFER, segment bases).
//  4. FPU, XSAVE (after CPUID: KVM checks its header against the guest's XCR0
//     features), XCRS, debug registers.
//  5. LAPIC, then the MSRs in one KVM_SET_MSRS whose count is checked (TSC first,
//     TSC deadline last: KVM ignores the deadline unless the LAPIC timer is already
//     in deadline mode).
//  6. MP state, then vCPU events last: pending exception, NMI, SMM and interrupt
//     shadow, which the earlier SETs may have reset.
Result<void> restore_vcpu_state(const KvmVm& vm, Vcpu& vcpu, const VcpuState& s) {
    const int fd = vcpu.fd();
    const unsigned i = vcpu.index();
    if (s.index != i)
        return errno_error("restore vCPU state", EINVAL, fmt::format("state of vCPU {} given to vCPU {}", s.index, i));

    CpuidTable table(static_cast<std::uint32_t>(s.cpuid.size()));
    for (std::size_t k = 0; k < s.cpuid.size(); ++k) table.put(k, kvm_entry_of(s.cpuid[k]));
    // Kernel contract: KVM_SET_CPUID2 before the first KVM_RUN (see Vcpu::set_cpuid).
    if (::ioctl(fd, kKvmSetCpuid2, table.data()) < 0) return vcpu_error("KVM_SET_CPUID2", i);

    if (s.tsc_khz != 0) {
        int now = ::ioctl(fd, KVM_GET_TSC_KHZ, 0);
        if (now > 0 && static_cast<std::uint32_t>(now) != s.tsc_khz) {
            // Kernel contract: KVM_SET_TSC_KHZ (KVM_CAP_TSC_CONTROL) scales this
            // vCPU's TSC; without TSC scaling in hardware it fails, and a guest
            // whose TSC changed frequency under it would keep wrong time.
            if (::ioctl(fd, KVM_SET_TSC_KHZ, static_cast<unsigned long>(s.tsc_khz)) < 0)
                return errno_error("KVM_SET_TSC_KHZ", errno,
                                   fmt::format("vCPU {}: saved at {} kHz, this host runs {} kHz", i, s.tsc_khz, now));
        }
    }

    SWV_TRY(set_blob<kvm_regs>(fd, KVM_SET_REGS, "KVM_SET_REGS", i, s.regs));
    if (s.sregs_format == SregsFormat::sregs2) {
        if (check_extension(vm.fd(), KVM_CAP_SREGS2) == 0)
            return errno_error("KVM_SET_SREGS2", ENOTSUP, fmt::format("vCPU {}: saved with SREGS2, this host lacks KVM_CAP_SREGS2", i));
        SWV_TRY(set_blob<kvm_sregs2>(fd, KVM_SET_SREGS2, "KVM_SET_SREGS2", i, s.sregs));
    } else {
        SWV_TRY(set_blob<kvm_sregs>(fd, KVM_SET_SREGS, "KVM_SET_SREGS", i, s.sregs));
    }

    SWV_TRY(set_blob<kvm_fpu>(fd, KVM_SET_FPU, "KVM_SET_FPU", i, s.fpu));
    if (!s.xsave.empty()) {
        // Kernel contract: KVM_SET_XSAVE reads the vCPU's XSAVE size (KVM_CAP_XSAVE2,
        // at least 4096) from the buffer: pad a smaller saved area with zeros (an
        // absent component is then "in its initial state" by its XSTATE_BV bit).
        std::size_t size = std::max(s.xsave.size(), kXsaveMinBytes);
        if (int cap = check_extension(vm.fd(), KVM_CAP_XSAVE2); cap > 0)
            size = std::max(size, static_cast<std::size_t>(cap));
        Blob area(size, 0);
        std::copy(s.xsave.begin(), s.xsave.end(), area.begin());
        if (::ioctl(fd, abi::kSetXsave, area.data()) < 0) return vcpu_error("KVM_SET_XSAVE", i);
    }
    if (!s.xcrs.empty()) SWV_TRY(set_blob<kvm_xcrs>(fd, KVM_SET_XCRS, "KVM_SET_XCRS", i, s.xcrs));
    SWV_TRY(set_blob<kvm_debugregs>(fd, KVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", i, s.debug_regs));

    SWV_TRY(set_blob<kvm_lapic_state>(fd, KVM_SET_LAPIC, "KVM_SET_LAPIC", i, s.lapic));

    if (!s.msrs.empty()) {
        MsrBuffer buf(s.msrs.size());
        for (std::size_t k = 0; k < s.msrs.size(); ++k) buf.put(k, s.msrs[k].index, s.msrs[k].value);
        // Kernel contract: KVM_SET_MSRS returns how many entries it wrote, stopping
        // at the first one it refuses: anything short of all of them is an error
        // naming that MSR (a partly restored vCPU must not run).
        int rc = ::ioctl(fd, abi::kSetMsrs, buf.words.data());
        if (rc < 0) return vcpu_error("KVM_SET_MSRS", i);
        if (static_cast<std::size_t>(rc) > s.msrs.size()) return vcpu_error("KVM_SET_MSRS (more entries than given)", i, EPROTO);
        if (static_cast<std::size_t>(rc) != s.msrs.size())
            return errno_error("KVM_SET_MSRS", EINVAL,
                               fmt::format("vCPU {}: MSR {:#x} = {:#x} refused ({} of {} written)", i,
                                           s.msrs[rc].index, s.msrs[rc].value, rc, s.msrs.size()));
    }

    kvm_mp_state mp{};
    mp.mp_state = s.mp_state;
    if (::ioctl(fd, KVM_SET_MP_STATE, &mp) < 0) return vcpu_error("KVM_SET_MP_STATE", i);

    kvm_vcpu_events events{};
    if (!from_blob(s.vcpu_events, events))
        return errno_error("KVM_SET_VCPU_EVENTS", EINVAL, fmt::format("vCPU {}: {} bytes", i, s.vcpu_events.size()));
    // KVM_GET_VCPU_EVENTS does not flag the SIPI vector as valid, but an AP waiting
    // for its SIPI needs it back.
    events.flags |= KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    if (::ioctl(fd, KVM_SET_VCPU_EVENTS, &events) < 0) return vcpu_error("KVM_SET_VCPU_EVENTS", i);
    return {};
}

namespace {

Result<Blob> get_irqchip(int vm_fd, std::uint32_t chip) {
    kvm_irqchip c{};
    c.chip_id = chip;
    // Kernel contract: KVM_GET_IRQCHIP copies chip 0 (PIC master), 1 (PIC slave) or
    // 2 (IOAPIC) of the in-kernel irqchip.
    if (::ioctl(vm_fd, KVM_GET_IRQCHIP, &c) < 0) return errno_error("KVM_GET_IRQCHIP", errno, fmt::format("chip {}", chip));
    return to_blob(c);
}

Result<void> set_irqchip(int vm_fd, std::uint32_t chip, const Blob& blob) {
    kvm_irqchip c{};
    if (!from_blob(blob, c) || c.chip_id != chip)
        return errno_error("KVM_SET_IRQCHIP", EINVAL, fmt::format("chip {}: malformed state", chip));
    if (::ioctl(vm_fd, KVM_SET_IRQCHIP, &c) < 0) return errno_error("KVM_SET_IRQCHIP", errno, fmt::format("chip {}", chip));
    return {};
}

}  // namespace

Result<VmState> save_vm_state(const KvmVm& vm) {
    VmState s;
    s.pic_master = SWV_TRY(get_irqchip(vm.fd(), KVM_IRQCHIP_PIC_MASTER));
    s.pic_slave = SWV_TRY(get_irqchip(vm.fd(), KVM_IRQCHIP_PIC_SLAVE));
    s.ioapic = SWV_TRY(get_irqchip(vm.fd(), KVM_IRQCHIP_IOAPIC));
    kvm_pit_state2 pit{};
    // Kernel contract: KVM_GET_PIT2 (KVM_CAP_PIT_STATE2) copies the in-kernel PIT.
    if (::ioctl(vm.fd(), KVM_GET_PIT2, &pit) < 0) return errno_error("KVM_GET_PIT2");
    s.pit = to_blob(pit);
    kvm_clock_data clock{};
    // Kernel contract: KVM_GET_CLOCK returns the VM's kvmclock in ns; last, so the
    // clock is read as late as possible before the snapshot is written.
    if (::ioctl(vm.fd(), KVM_GET_CLOCK, &clock) < 0) return errno_error("KVM_GET_CLOCK");
    s.clock_ns = clock.clock;
    return s;
}

// PIT, then the irqchips (after the vCPUs' LAPICs: the IOAPIC re-injects its
// pending level lines into them), then kvmclock, so the guest's clock resumes at
// the saved value (the time the VM spent saved does not pass for it).
Result<void> restore_vm_state(const KvmVm& vm, const VmState& s) {
    kvm_pit_state2 pit{};
    if (!from_blob(s.pit, pit)) return errno_error("KVM_SET_PIT2", EINVAL, "malformed PIT state");
    if (::ioctl(vm.fd(), KVM_SET_PIT2, &pit) < 0) return errno_error("KVM_SET_PIT2");
    SWV_TRY(set_irqchip(vm.fd(), KVM_IRQCHIP_PIC_MASTER, s.pic_master));
    SWV_TRY(set_irqchip(vm.fd(), KVM_IRQCHIP_PIC_SLAVE, s.pic_slave));
    SWV_TRY(set_irqchip(vm.fd(), KVM_IRQCHIP_IOAPIC, s.ioapic));
    kvm_clock_data clock{};
    clock.clock = s.clock_ns;
    // Kernel contract: KVM_SET_CLOCK with flags 0 sets kvmclock to `clock` now.
    if (::ioctl(vm.fd(), KVM_SET_CLOCK, &clock) < 0) return errno_error("KVM_SET_CLOCK");
    return {};
}

}  // namespace swapvisor::vmm::kvm
