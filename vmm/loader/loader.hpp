// load_kernel(): take a PVH ELF kernel read by read_elf(), plan its boot (pvh.hpp)
// against the VM's RAM and copy it into guest memory. All guest writes go through the memory's
// write()/discard() (never through the guest view), so guestmem keeps its page
// table exact: loaded pages become resident, bss pages stay `zero` (DESIGN.md §3).
//
// apply_plan() is a template over the memory type (any type with
// write(Gpa, span<const byte>) and discard(GpaRange) returning Result<void>), the
// policy style of STYLE.md §7: production code uses guestmem::GuestMemory, tests can
// use a plain buffer to check exactly which bytes land where.
#pragma once

#include <algorithm>
#include <array>
#include <filesystem>
#include <string_view>

#include <fmt/format.h>

#include "guestmem/addr.hpp"
#include "io/result.hpp"
#include "vmm/loader/elf.hpp"
#include "vmm/loader/pvh.hpp"

namespace swapvisor::guestmem { class GuestMemory; }

namespace swapvisor::vmm::loader {

// Where the BSP starts: EIP and EBX of the PVH entry state.
struct BootEntry {
    std::uint32_t entry;
    std::uint32_t start_info_gpa;
};

template <class Memory>
Result<void> apply_plan(Memory& mem, const std::string& name, const BootPlan& plan) {
    // guestmem's error (its code and op) goes up with the file and the range added.
    auto failed = [&](guestmem::Gpa gpa, std::uint64_t len, const swapvisor::Error& e) {
        return std::unexpected(swapvisor::Error(e).with_context(
            fmt::format("{}: loading [0x{:x}, 0x{:x}) into guest memory", name, gpa.value(), gpa.value() + len)));
    };
    for (const BootWrite& w : plan.writes) {
        if (auto r = mem.write(w.gpa, w.bytes); !r) return failed(w.gpa, w.bytes.size(), r.error());
    }
    // [p_filesz, p_memsz): zero the partial pages at either end by writing, and drop
    // the whole pages in between so they stay unallocated until the guest uses them.
    static constexpr std::array<std::byte, guestmem::kPageSize> kZeros{};
    for (const guestmem::GpaRange& z : plan.zero_fills) {
        std::uint64_t pos = z.gpa.value();
        std::uint64_t end = pos + z.len;
        while (pos < end) {
            std::uint64_t page_end = (pos | (guestmem::kPageSize - 1)) + 1;
            if (pos % guestmem::kPageSize == 0 && end >= pos + guestmem::kPageSize) {
                std::uint64_t whole_end = end & ~(guestmem::kPageSize - 1);
                guestmem::GpaRange pages{guestmem::Gpa(pos), whole_end - pos};
                if (auto r = mem.discard(pages); !r) return failed(pages.gpa, pages.len, r.error());
                pos = whole_end;
                continue;
            }
            std::uint64_t n = std::min(page_end, end) - pos;
            if (auto r = mem.write(guestmem::Gpa(pos), std::span<const std::byte>(kZeros.data(), n)); !r) {
                return failed(guestmem::Gpa(pos), n, r.error());
            }
            pos += n;
        }
    }
    return {};
}

// Check `image` (from read_elf) against mem's RAM and load it with `cmdline` (boot
// data at the fixed addresses of pvh.hpp). Errors name the file and the problem.
Result<BootEntry> load_kernel(guestmem::GuestMemory& mem, const ElfImage& image, std::string_view cmdline);

}  // namespace swapvisor::vmm::loader
