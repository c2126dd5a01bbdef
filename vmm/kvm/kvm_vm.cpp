// KvmVm: the VM fd, its x86 platform setup (TSS, identity map, irqchip, PIT) and its
// memslots. Invariant: memslots are added in order, never overlap, and never move.
#include "vmm/kvm/kvm_vm.hpp"

#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "vmm/kvm/vcpu.hpp"

namespace swapvisor::vmm::kvm {

Result<void> KvmVm::setup_platform() {
    // Kernel contract: on Intel VMX, KVM needs three pages of guest-physical space
    // for the real-mode TSS and one for the identity page table; both must lie
    // outside guest RAM. We put them just below the 4 GiB boundary inside the
    // 3-4 GiB hole (vmm/README.md#address-map), where QEMU and Firecracker put them.
    if (::ioctl(fd(), KVM_SET_IDENTITY_MAP_ADDR, &kIdentityMapAddr) < 0) return errno_error("KVM_SET_IDENTITY_MAP_ADDR");
    if (::ioctl(fd(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(kTssAddr)) < 0) return errno_error("KVM_SET_TSS_ADDR");

    // Kernel contract: KVM_CREATE_IRQCHIP creates the PIC pair, the IOAPIC and one
    // LAPIC per vCPU created afterwards; it must precede KVM_CREATE_VCPU. With it,
    // APs start in wait-for-SIPI and HLT is handled in the kernel.
    if (::ioctl(fd(), KVM_CREATE_IRQCHIP, 0) < 0) return errno_error("KVM_CREATE_IRQCHIP");

    // Kernel contract: KVM_CREATE_PIT2 needs the in-kernel irqchip; the dummy speaker
    // port 0x61 keeps Linux's PIT calibration from exiting to userspace.
    kvm_pit_config pit{};
    pit.flags = KVM_PIT_SPEAKER_DUMMY;
    if (::ioctl(fd(), KVM_CREATE_PIT2, &pit) < 0) return errno_error("KVM_CREATE_PIT2");
    return {};
}

Result<void> KvmVm::set_irq_line(std::uint32_t gsi, std::uint32_t level) const {
    kvm_irq_level irq{};
    irq.irq = gsi;
    irq.level = level;
    // Kernel contract: KVM_IRQ_LINE sets the level of one GSI of the in-kernel
    // irqchip; an edge-triggered pin fires on the 0 -> 1 change.
    if (::ioctl(fd(), KVM_IRQ_LINE, &irq) < 0) return errno_error("KVM_IRQ_LINE");
    return {};
}

Result<void> KvmVm::add_memory_region(guestmem::Gpa gpa, std::uint64_t size, std::byte* hva) {
    const std::uint64_t page = 4096;
    if (size == 0 || gpa.value() % page != 0 || size % page != 0 ||
        reinterpret_cast<std::uintptr_t>(hva) % page != 0) {
        return errno_error("KVM_SET_USER_MEMORY_REGION (unaligned region)", EINVAL);
    }
    for (const Slot& s : slots_) {
        if (gpa.value() < s.gpa + s.size && s.gpa < gpa.value() + size) {
            return errno_error("KVM_SET_USER_MEMORY_REGION (overlapping region)", EEXIST);
        }
    }
    kvm_userspace_memory_region region{};
    region.slot = next_slot_;
    region.flags = 0;
    region.guest_phys_addr = gpa.value();
    region.memory_size = size;
    region.userspace_addr = reinterpret_cast<std::uint64_t>(hva);
    // Kernel contract: the range [hva, hva + size) must stay mapped for as long as
    // the slot exists; KVM resolves guest faults through it with get_user_pages, so
    // userfaultfd on that range sees vCPU accesses (guestmem/README.md).
    if (::ioctl(fd(), KVM_SET_USER_MEMORY_REGION, &region) < 0) return errno_error("KVM_SET_USER_MEMORY_REGION");
    ++next_slot_;
    slots_.push_back(Slot{gpa.value(), size});
    return {};
}

Result<Vcpu> KvmVm::create_vcpu(unsigned index) const {
    // Kernel contract: the vCPU id is the initial APIC id; with the in-kernel irqchip
    // id 0 is the BSP (runnable) and every other vCPU waits for INIT/SIPI.
    int vcpu_fd = ::ioctl(fd(), KVM_CREATE_VCPU, static_cast<unsigned long>(index));
    if (vcpu_fd < 0) return errno_error("KVM_CREATE_VCPU");
    io::UniqueFd owner(vcpu_fd);
    // Kernel contract: the vCPU fd is mmap'd shared at offset 0 for
    // KVM_GET_VCPU_MMAP_SIZE bytes to obtain struct kvm_run.
    void* run = ::mmap(nullptr, kvm_->vcpu_mmap_size(), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd, 0);
    if (run == MAP_FAILED) return errno_error("mmap kvm_run");
    return Vcpu(index, std::move(owner), io::Mapping(run, kvm_->vcpu_mmap_size()));
}

}  // namespace swapvisor::vmm::kvm
