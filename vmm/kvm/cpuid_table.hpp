// CpuidTable: the memory layout of struct kvm_cpuid2 (an 8-byte header followed by
// nent struct kvm_cpuid_entry2), built by hand. The 6.1 uapi headers declare its
// `entries` with __DECLARE_FLEX_ARRAY, which in C++ wraps an empty struct (size 1)
// around the array: sizeof(kvm_cpuid2) becomes 12, the entries move to offset 12 and
// the ioctl numbers derived from the type encode size 12, which KVM rejects with
// EINVAL. So the header, the entry offset and both ioctl numbers are defined here
// from the kernel ABI (8-byte header, 40-byte entries). Private to vmm/kvm/.
#pragma once

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vmm/kvm/kvm.hpp"

namespace swapvisor::vmm::kvm {

struct CpuidHeader {
    std::uint32_t nent;
    std::uint32_t padding;
};
static_assert(sizeof(CpuidHeader) == 8, "kvm_cpuid2 header is 8 bytes");
static_assert(sizeof(kvm_cpuid_entry2) == 40, "kvm_cpuid_entry2 is 40 bytes");

// Kernel contract: _IOWR(KVMIO, 0x05, struct kvm_cpuid2) and _IOW(KVMIO, 0x90, struct
// kvm_cpuid2) with the ABI size of struct kvm_cpuid2, 8 bytes.
inline constexpr unsigned long kKvmGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
inline constexpr unsigned long kKvmSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);

// One entry as KVM takes it (the fields KVM_SET_CPUID2 reads; padding zero).
inline kvm_cpuid_entry2 kvm_entry_of(const CpuidEntry& in) {
    kvm_cpuid_entry2 e{};
    e.function = in.function;
    e.index = in.index;
    e.flags = in.flags;
    e.eax = in.eax;
    e.ebx = in.ebx;
    e.ecx = in.ecx;
    e.edx = in.edx;
    return e;
}

class CpuidTable {
public:
    explicit CpuidTable(std::uint32_t nent)
        : bytes_(sizeof(CpuidHeader) + std::size_t{nent} * sizeof(kvm_cpuid_entry2)) {
        set_nent(nent);
    }
    void* data() { return bytes_.data(); }
    std::uint32_t nent() const {
        CpuidHeader h;
        std::memcpy(&h, bytes_.data(), sizeof h);
        return h.nent;
    }
    void set_nent(std::uint32_t n) {
        CpuidHeader h{n, 0};
        std::memcpy(bytes_.data(), &h, sizeof h);
    }
    kvm_cpuid_entry2 get(std::size_t i) const {
        kvm_cpuid_entry2 e;
        std::memcpy(&e, bytes_.data() + offset(i), sizeof e);
        return e;
    }
    void put(std::size_t i, const kvm_cpuid_entry2& e) { std::memcpy(bytes_.data() + offset(i), &e, sizeof e); }

private:
    static std::size_t offset(std::size_t i) { return sizeof(CpuidHeader) + i * sizeof(kvm_cpuid_entry2); }
    std::vector<std::byte> bytes_;
};

}  // namespace swapvisor::vmm::kvm
