// manifest_fuzz: the snapshot manifest reader (vmm/snapshot/manifest.hpp) on any
// bytes, as a corrupt or hostile manifest.json would give it.
//
// Properties (fuzz_check aborts on any): parse_manifest never throws (an exception
// escaping here aborts too) and always answers a SnapshotErrc for what it refuses;
// what it accepts keeps its invariants (as many vCPU states as spec.vcpus, each at
// its index, every KVM blob of its ABI size, a balloon state exactly when the spec
// has a balloon, `memory` an object); and an accepted manifest written out again
// reads back equal (the writer and the reader agree).
#include <cstdint>
#include <string_view>

#include "tests/fuzz/fuzz_input.hpp"
#include "vmm/snapshot/manifest.hpp"

using namespace swapvisor::vmm;
using swapvisor::fuzz::fuzz_check;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    auto parsed = snapshot::parse_manifest(text);
    if (!parsed) {
        fuzz_check(parsed.error().code.category() == snapshot::snapshot_category(),
                   "a refused manifest answers a SnapshotErrc");
        return 0;
    }
    const snapshot::Manifest& m = *parsed;
    fuzz_check(m.kvm.vcpus.size() == m.spec.vcpus, "one vCPU state per vCPU");
    for (std::size_t i = 0; i < m.kvm.vcpus.size(); ++i) {
        const kvm::VcpuState& v = m.kvm.vcpus[i];
        fuzz_check(v.index == i, "vCPU states in index order");
        fuzz_check(v.regs.size() == kvm::kRegsBytes && v.lapic.size() == kvm::kLapicBytes &&
                       v.fpu.size() == kvm::kFpuBytes && v.vcpu_events.size() == kvm::kVcpuEventsBytes,
                   "vCPU blobs have their ABI sizes");
        fuzz_check(v.xsave.empty() || v.xsave.size() >= kvm::kXsaveMinBytes, "XSAVE empty or at least 4096 bytes");
    }
    fuzz_check(m.devices.balloon.has_value() == m.spec.balloon, "a balloon state exactly with a balloon");
    fuzz_check(m.memory.is_object(), "memory is an object");
    auto again = snapshot::manifest_from_json(snapshot::manifest_to_json(m));
    fuzz_check(again.has_value() && *again == m, "an accepted manifest round-trips");
    return 0;
}
