// load_kernel(): the production path from a parsed kernel image to a loaded guest
// (plan against the VM's RAM regions -> write through GuestMemory).
#include "vmm/loader/loader.hpp"

#include <vector>

#include "guestmem/guest_memory.hpp"

namespace swapvisor::vmm::loader {

Result<BootEntry> load_kernel(guestmem::GuestMemory& mem, const ElfImage& image, std::string_view cmdline) {
    std::vector<guestmem::GpaRange> ram;
    for (const guestmem::RegionView& r : mem.regions()) ram.push_back(guestmem::GpaRange{r.base, r.size});
    auto plan = plan_boot(image, ram, cmdline);
    if (!plan) return std::unexpected(plan.error());
    if (auto r = apply_plan(mem, image.name, *plan); !r) return std::unexpected(r.error());
    return BootEntry{plan->entry, plan->start_info_gpa};
}

}  // namespace swapvisor::vmm::loader
