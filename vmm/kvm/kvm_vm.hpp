// KvmVm: one KVM virtual machine fd with the x86 platform pieces every guest gets:
// the TSS and identity-map pages that VMX needs for real-mode emulation (placed in
// the 3-4 GiB hole, see vmm/README.md#address-map), the in-kernel irqchip (PIC,
// IOAPIC, per-vCPU LAPIC) and PIT, and one memslot per guest RAM region.
//
// Invariants: the irqchip exists before any vCPU is created (KVM requires it);
// memslots never overlap and live exactly as long as the VM fd, so they have no
// separate owner: closing the VM fd deletes them all, and it is closed before the
// guest memory they point at is unmapped (declaration order in main.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "guestmem/addr.hpp"
#include "io/result.hpp"
#include "io/unique_fd.hpp"
#include "vmm/kvm/kvm.hpp"

namespace swapvisor::vmm::kvm {

class Vcpu;

class KvmVm {
public:
    KvmVm(KvmVm&&) noexcept = default;
    KvmVm& operator=(KvmVm&&) noexcept = default;

    // Register [gpa, gpa + size) backed by host memory at hva as the next memslot.
    Result<void> add_memory_region(guestmem::Gpa gpa, std::uint64_t size, std::byte* hva);
    // Create vCPU `index` (its APIC id); index 0 is the bootstrap processor.
    Result<Vcpu> create_vcpu(unsigned index) const;
    // Drive GSI `gsi` of the in-kernel irqchip (IOAPIC/PIC) to `level` (0 or 1).
    Result<void> set_irq_line(std::uint32_t gsi, std::uint32_t level) const;

    int fd() const { return fd_.get(); }
    const Kvm& kvm() const { return *kvm_; }

    // Where KVM_SET_TSS_ADDR / KVM_SET_IDENTITY_MAP_ADDR put their pages.
    static constexpr std::uint64_t kIdentityMapAddr = 0xfffb'c000;  // 1 page
    static constexpr std::uint64_t kTssAddr = 0xfffb'd000;          // 3 pages

private:
    friend class Kvm;
    KvmVm(const Kvm& kvm, io::UniqueFd fd) : kvm_(&kvm), fd_(std::move(fd)) {}
    Result<void> setup_platform();

    const Kvm* kvm_;
    io::UniqueFd fd_;
    std::uint32_t next_slot_ = 0;
    struct Slot { std::uint64_t gpa, size; };
    std::vector<Slot> slots_;
};

}  // namespace swapvisor::vmm::kvm
