// elf_fuzz: the PVH kernel loader (vmm/loader) on any bytes as the kernel file:
// parse_elf (elf.hpp), plan_boot against a 4 MiB guest (pvh.hpp) and load_kernel into
// a real GuestMemory (loader.hpp), the path `swapvisor run --kernel` takes.
//
// Properties (fuzz_check aborts on any): an accepted image keeps ElfImage's
// invariant (segments sorted, not overlapping, no address overflow, file bytes
// inside the file, filesz <= memsz, the PVH entry inside a segment's file bytes); a
// boot plan accepted for the guest's RAM only writes and zero-fills inside RAM,
// outside the boot data, and loads without error; after loading, each segment's
// file bytes read back from guest memory unchanged.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "guestmem/guest_memory.hpp"
#include "tests/fuzz/fuzz_input.hpp"
#include "tests/fuzz/fuzz_memory.hpp"
#include "vmm/loader/elf.hpp"
#include "vmm/loader/loader.hpp"
#include "vmm/loader/pvh.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm::loader;
using swapvisor::fuzz::fuzz_check;

namespace {

constexpr std::uint64_t kGuestBytes = 4ULL << 20;

void check_image(const ElfImage& img, std::size_t file_size) {
    fuzz_check(!img.segments.empty(), "an image has a segment");
    bool entry_inside = false;
    for (std::size_t i = 0; i < img.segments.size(); ++i) {
        const ElfSegment& s = img.segments[i];
        fuzz_check(s.memsz != 0 && s.filesz <= s.memsz, "0 < filesz <= memsz");
        fuzz_check(s.file_offset <= file_size && s.filesz <= file_size - s.file_offset, "file bytes inside the file");
        fuzz_check(s.paddr <= UINT64_MAX - s.memsz, "no segment wraps around");
        if (i > 0) {
            const ElfSegment& prev = img.segments[i - 1];
            fuzz_check(prev.paddr + prev.memsz <= s.paddr, "segments sorted and not overlapping");
        }
        entry_inside = entry_inside || (img.pvh_entry >= s.paddr && img.pvh_entry - s.paddr < s.filesz);
    }
    fuzz_check(entry_inside, "the PVH entry lies in a segment's file bytes");
}

bool inside(std::uint64_t gpa, std::uint64_t len, const std::vector<guestmem::GpaRange>& ram) {
    return std::any_of(ram.begin(), ram.end(), [&](const guestmem::GpaRange& r) {
        return gpa >= r.gpa.value() && len <= r.len && gpa - r.gpa.value() <= r.len - len;
    });
}

void check_plan(const ElfImage& img, const BootPlan& plan, const std::vector<guestmem::GpaRange>& ram) {
    for (const BootWrite& w : plan.writes) fuzz_check(inside(w.gpa.value(), w.bytes.size(), ram), "writes inside RAM");
    for (const guestmem::GpaRange& z : plan.zero_fills) fuzz_check(inside(z.gpa.value(), z.len, ram), "zero fills inside RAM");
    for (const ElfSegment& s : img.segments) {
        fuzz_check(s.paddr + s.memsz <= kStartInfoGpa || s.paddr >= kMemmapEnd, "segments clear of the boot data");
        fuzz_check(s.paddr + s.memsz <= kCmdlineGpa || s.paddr >= kCmdlineEnd, "segments clear of the command line");
        fuzz_check(s.paddr + s.memsz <= kReservedLowBase || s.paddr >= kReservedLowEnd, "segments clear of 0x9fc00..1M");
    }
    fuzz_check(plan.entry == img.pvh_entry && plan.start_info_gpa == kStartInfoGpa, "the plan enters at the PVH entry");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::fuzz_guest_memory(kGuestBytes);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    guestmem::GuestMemory& mem = fuzz::fuzz_guest_memory(kGuestBytes);
    const auto* first = reinterpret_cast<const std::byte*>(data);
    auto image = parse_elf("fuzz.elf", std::vector<std::byte>(first, first + size));
    if (!image) {
        fuzz_check(!image.error().message().empty(), "a refused image says why");
        return 0;
    }
    check_image(*image, size);

    std::vector<guestmem::GpaRange> ram;
    for (const guestmem::RegionView& r : mem.regions()) ram.push_back(guestmem::GpaRange{r.base, r.size});
    auto plan = plan_boot(*image, ram, "console=ttyS0");
    if (!plan) return 0;
    check_plan(*image, *plan, ram);

    auto entry = load_kernel(mem, *image, "console=ttyS0");
    fuzz_check(entry.has_value(), "an image whose plan was accepted loads");
    std::vector<std::byte> back;
    for (const ElfSegment& s : image->segments) {
        back.resize(s.filesz);
        fuzz_check(mem.read(guestmem::Gpa(s.paddr), back).has_value(), "loaded segments read back");
        auto want = image->file_bytes(s);
        fuzz_check(std::equal(back.begin(), back.end(), want.begin(), want.end()), "segments land byte for byte");
    }
    return 0;
}
