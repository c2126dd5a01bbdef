// plan_boot(): validation of an ELF image against the guest's memory map and the
// layout of the PVH boot data (address map in pvh.hpp). Pure: no guest memory is
// touched, so every rule here is unit tested.
#include "vmm/loader/pvh.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace swapvisor::vmm::loader {
namespace {

// The file name and what is wrong with it go in the context; the code says which rule.
std::unexpected<Error> fail(const std::string& name, LoadErrc code, std::string what) {
    return make_error(code, "planning the boot", fmt::format("{}: {}", name, what));
}

bool overlaps(std::uint64_t a, std::uint64_t a_end, std::uint64_t b, std::uint64_t b_end) {
    return a < b_end && b < a_end;
}

template <class T>
std::vector<std::byte> bytes_of(std::span<const T> items) {
    std::vector<std::byte> out(items.size_bytes());
    if (!out.empty()) std::memcpy(out.data(), items.data(), out.size());
    return out;
}

}  // namespace

std::vector<HvmMemmapEntry> build_memory_map(std::span<const guestmem::GpaRange> ram) {
    std::vector<HvmMemmapEntry> map;
    auto add = [&](std::uint64_t addr, std::uint64_t end, std::uint32_t type) {
        if (end > addr) map.push_back(HvmMemmapEntry{addr, end - addr, type, 0});
    };
    for (const guestmem::GpaRange& r : ram) {
        std::uint64_t base = r.gpa.value();
        std::uint64_t end = base + r.len;
        if (!overlaps(base, end, kReservedLowBase, kReservedLowEnd)) {
            add(base, end, kMemmapTypeRam);
            continue;
        }
        add(base, kReservedLowBase, kMemmapTypeRam);
        add(std::max(base, kReservedLowBase), std::min(end, kReservedLowEnd), kMemmapTypeReserved);
        add(kReservedLowEnd, end, kMemmapTypeRam);
    }
    std::sort(map.begin(), map.end(), [](const HvmMemmapEntry& a, const HvmMemmapEntry& b) { return a.addr < b.addr; });
    return map;
}

Result<BootPlan> plan_boot(const ElfImage& image, std::span<const guestmem::GpaRange> ram,
                               std::string_view cmdline) {
    BootPlan plan;
    plan.memory_map = build_memory_map(ram);
    if (plan.memory_map.size() > kMemmapMaxEntries) {
        return fail(image.name, LoadErrc::outside_ram,
                    fmt::format("memory map has {} entries; at most {} fit at 0x{:x}", plan.memory_map.size(),
                                kMemmapMaxEntries, kMemmapGpa));
    }
    if (cmdline.size() > kCmdlineMax) {
        return fail(image.name, LoadErrc::cmdline_too_long,
                    fmt::format("command line is {} bytes; at most {} fit at 0x{:x}", cmdline.size(), kCmdlineMax,
                                kCmdlineGpa));
    }
    if (cmdline.find('\0') != std::string_view::npos) {
        return fail(image.name, LoadErrc::cmdline_too_long, "command line contains a NUL byte");
    }

    // The boot data itself must be in RAM (it is, for any memory size >= 2 MiB).
    auto in_ram = [&](std::uint64_t addr, std::uint64_t end) {
        return std::any_of(plan.memory_map.begin(), plan.memory_map.end(), [&](const HvmMemmapEntry& e) {
            return e.type == kMemmapTypeRam && addr >= e.addr && end <= e.addr + e.size;
        });
    };
    if (!in_ram(kStartInfoGpa, kMemmapEnd) || !in_ram(kCmdlineGpa, kCmdlineEnd)) {
        return fail(image.name, LoadErrc::outside_ram, "guest RAM does not cover the boot data below 1 MiB");
    }

    for (const ElfSegment& s : image.segments) {
        std::uint64_t end = s.paddr + s.memsz;  // no overflow: checked by parse_elf
        if (!in_ram(s.paddr, end)) {
            return fail(image.name, LoadErrc::outside_ram,
                        fmt::format("PT_LOAD segment {} [0x{:x}, 0x{:x}) lies outside guest RAM (or in the "
                                    "reserved range [0x{:x}, 0x{:x}))",
                                    s.index, s.paddr, end, kReservedLowBase, kReservedLowEnd));
        }
        if (overlaps(s.paddr, end, kStartInfoGpa, kMemmapEnd) || overlaps(s.paddr, end, kCmdlineGpa, kCmdlineEnd)) {
            return fail(image.name, LoadErrc::overlaps_boot_data,
                        fmt::format("PT_LOAD segment {} [0x{:x}, 0x{:x}) overlaps the PVH boot data "
                                    "[0x{:x}, 0x{:x}) or the command line [0x{:x}, 0x{:x})",
                                    s.index, s.paddr, end, kStartInfoGpa, kMemmapEnd, kCmdlineGpa, kCmdlineEnd));
        }
        if (s.filesz > 0) plan.writes.push_back(BootWrite{guestmem::Gpa(s.paddr), image.file_bytes(s)});
        if (s.memsz > s.filesz) plan.zero_fills.push_back(guestmem::GpaRange{guestmem::Gpa(s.paddr + s.filesz), s.memsz - s.filesz});
    }

    plan.entry = image.pvh_entry;
    plan.start_info_gpa = static_cast<std::uint32_t>(kStartInfoGpa);
    plan.start_info = HvmStartInfo{
        .magic = kHvmStartMagic,
        .version = kHvmStartInfoVersion,
        .flags = 0,
        .nr_modules = 0,
        .modlist_paddr = 0,
        .cmdline_paddr = kCmdlineGpa,
        .rsdp_paddr = 0,  // no ACPI tables
        .memmap_paddr = kMemmapGpa,
        .memmap_entries = static_cast<std::uint32_t>(plan.memory_map.size()),
        .reserved = 0,
    };
    plan.start_info_bytes = bytes_of(std::span<const HvmStartInfo>(&plan.start_info, 1));
    plan.memmap_bytes = bytes_of(std::span<const HvmMemmapEntry>(plan.memory_map));
    plan.cmdline_bytes.resize(cmdline.size() + 1, std::byte{0});
    if (!cmdline.empty()) std::memcpy(plan.cmdline_bytes.data(), cmdline.data(), cmdline.size());

    plan.writes.push_back(BootWrite{guestmem::Gpa(kStartInfoGpa), plan.start_info_bytes});
    plan.writes.push_back(BootWrite{guestmem::Gpa(kMemmapGpa), plan.memmap_bytes});
    plan.writes.push_back(BootWrite{guestmem::Gpa(kCmdlineGpa), plan.cmdline_bytes});
    return plan;
}

}  // namespace swapvisor::vmm::loader
