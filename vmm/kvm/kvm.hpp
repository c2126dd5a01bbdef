// Kvm: the process's handle on /dev/kvm. It checks the stable API version and the
// capabilities swapvisor relies on, and caches what every VM needs from the system
// fd: the vCPU mmap size and the host's supported CPUID table. Invariant: a Kvm that
// exists has passed those checks, so VMs and vCPUs never re-check them.
//
// vmm/kvm/ is the only folder that includes <linux/kvm.h>; everything above it sees
// the plain types declared here and in kvm_vm.hpp / vcpu.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "io/result.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::vmm::kvm {

class KvmVm;

// One CPUID leaf/subleaf as KVM reports and accepts it (struct kvm_cpuid_entry2
// without the padding).
struct CpuidEntry {
    std::uint32_t function = 0;
    std::uint32_t index = 0;
    std::uint32_t flags = 0;
    std::uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
    bool operator==(const CpuidEntry&) const = default;
};

class Kvm {
public:
    // Open /dev/kvm, check KVM_GET_API_VERSION == 12 and the required capabilities,
    // read the vCPU mmap size and KVM_GET_SUPPORTED_CPUID.
    static Result<Kvm> open();

    int fd() const { return fd_.get(); }
    std::size_t vcpu_mmap_size() const { return vcpu_mmap_size_; }
    const std::vector<CpuidEntry>& supported_cpuid() const { return supported_cpuid_; }
    // Highest vCPU count KVM accepts for one VM (KVM_CAP_MAX_VCPUS).
    unsigned max_vcpus() const { return max_vcpus_; }

    Result<KvmVm> create_vm() const;

private:
    Kvm() = default;
    io::UniqueFd fd_;
    std::size_t vcpu_mmap_size_ = 0;
    unsigned max_vcpus_ = 0;
    std::vector<CpuidEntry> supported_cpuid_;
};

}  // namespace swapvisor::vmm::kvm
