// The ioctl numbers of the KVM calls whose argument struct ends in a flexible array
// (struct kvm_msrs, kvm_msr_list, kvm_xsave, kvm_cpuid2), computed from the kernel
// ABI sizes of their fixed parts. The 6.1 uapi headers declare those arrays with
// __DECLARE_FLEX_ARRAY, which in C++ wraps an empty struct around the array and
// changes sizeof, and with it the size the _IOW/_IOR macros encode: KVM then answers
// EINVAL or ENOTTY (cpuid_table.hpp has the long story). Private to vmm/kvm/.
#pragma once

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstdint>

#include "vmm/kvm/cpuid_table.hpp"

namespace swapvisor::vmm::kvm::abi {

struct MsrsHeader {  // struct kvm_msrs without entries[]
    std::uint32_t nmsrs;
    std::uint32_t pad;
};
static_assert(sizeof(MsrsHeader) == 8);
static_assert(sizeof(kvm_msr_entry) == 16);

struct MsrListHeader {  // struct kvm_msr_list without indices[]
    std::uint32_t nmsrs;
};
static_assert(sizeof(MsrListHeader) == 4);

struct XsaveRegion {  // struct kvm_xsave without extra[]
    std::uint32_t region[1024];
};
static_assert(sizeof(XsaveRegion) == 4096);

// Kernel contract: the numbers below are those of <linux/kvm.h> with the C sizes of
// the structs (8, 4, 4096 and 8 bytes).
inline constexpr unsigned long kGetMsrIndexList = _IOWR(KVMIO, 0x02, MsrListHeader);
inline constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
inline constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
inline constexpr unsigned long kGetXsave = _IOR(KVMIO, 0xa4, XsaveRegion);
inline constexpr unsigned long kSetXsave = _IOW(KVMIO, 0xa5, XsaveRegion);
inline constexpr unsigned long kGetXsave2 = _IOR(KVMIO, 0xcf, XsaveRegion);
inline constexpr unsigned long kGetCpuid2 = _IOWR(KVMIO, 0x91, CpuidHeader);

}  // namespace swapvisor::vmm::kvm::abi
