// Kvm: opening /dev/kvm and the system-wide queries (API version, capabilities,
// vCPU mmap size, supported CPUID). Invariant: every capability swapvisor depends on
// is checked here once, so a missing one fails at startup with its name instead of
// as an obscure ioctl error later.
#include "vmm/kvm/kvm.hpp"

#include <fcntl.h>
#include <cerrno>
#include <linux/kvm.h>
#include <sys/ioctl.h>

#include "vmm/kvm/cpuid_table.hpp"
#include "vmm/kvm/kvm_vm.hpp"

namespace swapvisor::vmm::kvm {
namespace {

constexpr int kKvmApiVersion = 12;

struct RequiredCap {
    long cap;
    const char* op;
};

// Each entry's op names the capability so the error message says which is missing.
constexpr RequiredCap kRequiredCaps[] = {
    {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
    {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
    {KVM_CAP_PIT2, "KVM_CAP_PIT2"},
    {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"},
    {KVM_CAP_SET_IDENTITY_MAP_ADDR, "KVM_CAP_SET_IDENTITY_MAP_ADDR"},
    {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"},
    {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
};

Result<std::vector<CpuidEntry>> read_supported_cpuid(int kvm_fd) {
    // Kernel contract: KVM_GET_SUPPORTED_CPUID fails with E2BIG when nent is too
    // small; on success it rewrites nent with the number of entries filled in.
    for (std::uint32_t nent = 64; nent <= 4096; nent *= 2) {
        CpuidTable table(nent);
        if (::ioctl(kvm_fd, kKvmGetSupportedCpuid, table.data()) < 0) {
            if (errno == E2BIG) continue;
            return errno_error("KVM_GET_SUPPORTED_CPUID");
        }
        std::vector<CpuidEntry> out;
        out.reserve(table.nent());
        for (std::uint32_t i = 0; i < table.nent(); ++i) {
            kvm_cpuid_entry2 e = table.get(i);
            out.push_back(CpuidEntry{e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx});
        }
        return out;
    }
    return errno_error("KVM_GET_SUPPORTED_CPUID", E2BIG);
}

}  // namespace

Result<Kvm> Kvm::open() {
    Kvm kvm;
    // Kernel contract: /dev/kvm is opened read/write; O_CLOEXEC keeps it out of
    // anything swapvisor might exec.
    kvm.fd_ = io::UniqueFd(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!kvm.fd_.valid()) return errno_error("open /dev/kvm");

    // Kernel contract: KVM_GET_API_VERSION returns 12 on every kernel with the stable
    // API; anything else means an incompatible interface.
    int version = ::ioctl(kvm.fd(), KVM_GET_API_VERSION, 0);
    if (version < 0) return errno_error("KVM_GET_API_VERSION");
    if (version != kKvmApiVersion) return errno_error("KVM_GET_API_VERSION (not 12)", ENOTSUP);

    for (const RequiredCap& c : kRequiredCaps) {
        // Kernel contract: KVM_CHECK_EXTENSION returns 0 when unsupported, > 0 when
        // supported (some caps return a count).
        int rc = ::ioctl(kvm.fd(), KVM_CHECK_EXTENSION, c.cap);
        if (rc < 0) return errno_error(c.op);
        if (rc == 0) return errno_error(c.op, ENOTSUP);
    }

    // Kernel contract: KVM_CAP_MAX_VCPUS is the per-VM vCPU limit; 0 means the
    // older KVM_CAP_NR_VCPUS value applies.
    int max = ::ioctl(kvm.fd(), KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
    if (max <= 0) max = ::ioctl(kvm.fd(), KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS);
    kvm.max_vcpus_ = max > 0 ? static_cast<unsigned>(max) : 1;

    // Kernel contract: KVM_GET_VCPU_MMAP_SIZE is the size of the per-vCPU mapping
    // (struct kvm_run plus the PIO data page and any coalesced-MMIO ring).
    int mmap_size = ::ioctl(kvm.fd(), KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size < 0) return errno_error("KVM_GET_VCPU_MMAP_SIZE");
    if (static_cast<std::size_t>(mmap_size) < sizeof(kvm_run)) return errno_error("KVM_GET_VCPU_MMAP_SIZE", EINVAL);
    kvm.vcpu_mmap_size_ = static_cast<std::size_t>(mmap_size);

    kvm.supported_cpuid_ = SWV_TRY(read_supported_cpuid(kvm.fd()));
    return kvm;
}

Result<KvmVm> Kvm::create_vm() const {
    // Kernel contract: KVM_CREATE_VM with type 0 is the default x86 VM; the new fd
    // owns the VM (closing it destroys the VM, its vCPUs and its memslots once the
    // vCPU fds are closed too). It fails with EINTR when a signal arrives while it
    // registers the VM's MMU notifier (mm_take_all_locks gives up on a pending
    // signal; the longer the process's VMA list, the wider the window): nothing was
    // created, so it is retried, as QEMU does. Seen under nested KVM in CI, where a
    // `run` with a swap file failed to start one time in several.
    int vm_fd = -1;
    for (int attempt = 0; attempt < 1000; ++attempt) {
        vm_fd = ::ioctl(fd(), KVM_CREATE_VM, 0UL);
        if (vm_fd >= 0 || errno != EINTR) break;
    }
    if (vm_fd < 0) return errno_error("KVM_CREATE_VM");
    KvmVm vm(*this, io::UniqueFd(vm_fd));
    SWV_TRY(vm.setup_platform());
    return vm;
}

}  // namespace swapvisor::vmm::kvm
