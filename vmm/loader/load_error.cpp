// The loader's error category (load_error.hpp).
#include "vmm/loader/load_error.hpp"

#include <string>

#include "vmm/error_category.hpp"

namespace swapvisor::vmm::loader {

namespace {

std::string describe(LoadErrc e) {
    switch (e) {
        case LoadErrc::cannot_open: return "cannot read the kernel image";
        case LoadErrc::truncated: return "kernel image truncated";
        case LoadErrc::not_elf: return "not an ELF image";
        case LoadErrc::unsupported_elf: return "unsupported ELF image";
        case LoadErrc::bad_segment: return "bad PT_LOAD segment";
        case LoadErrc::outside_ram: return "kernel or boot data not inside guest RAM";
        case LoadErrc::overlaps_boot_data: return "kernel segment overlaps the PVH boot data";
        case LoadErrc::no_pvh_note: return "no PVH entry note";
        case LoadErrc::bad_pvh_note: return "bad PVH entry note";
        case LoadErrc::cmdline_too_long: return "guest command line too long or with a NUL byte";
    }
    return "unknown loader error";
}

}  // namespace

const std::error_category& load_category() {
    static const EnumCategory<LoadErrc> category("loader", describe);
    return category;
}

}  // namespace swapvisor::vmm::loader
