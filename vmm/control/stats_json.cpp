// stats_json: see stats_json.hpp. Field names are part of the control protocol and
// of --stats-json: renaming one breaks host agents.
#include "vmm/control/stats_json.hpp"

namespace swapvisor::vmm::control {

using nlohmann::json;

nlohmann::json stats_json(guestmem::HostMemory& host, StatsDetail detail) {
    const bool full = detail == StatsDetail::full;
    json vms = json::array();
    for (guestmem::GuestMemory* vm : host.vms()) {
        guestmem::MemStats s = vm->stats();
        json v = {
            {"name", s.name},
            {"memory_bytes", s.memory_bytes},
            {"resident_bytes", s.resident_bytes},
            {"resident_bytes_peak", s.resident_bytes_peak},
            {"swapped_bytes", s.swapped_bytes},
            {"swap_out_pages", s.swap_out_pages},
            {"swap_in_pages", s.swap_in_pages},
            {"major_faults", s.major_faults},
            {"minor_faults", s.minor_faults},
            {"zero_pages", s.zero_pages},
            {"discarded_pages", s.discarded_pages},
            {"resident_limit", s.resident_limit},
        };
        if (full) {
            v["clean_drops"] = s.clean_drops;
            v["lost_pages"] = s.lost_pages;
            v["wp_faults"] = s.wp_faults;
            v["throttle_waits"] = s.throttle_waits;
            v["limit_overshoots"] = s.limit_overshoots;
            v["readahead_pages"] = s.readahead_pages;
            // A scan of the VM's stage-2 table: slots its pages refer to (leak checks:
            // the sum over VMs equals host.allocated_vslots at rest).
            v["referenced_vslots"] = vm->referenced_vslots();
        }
        vms.push_back(std::move(v));
    }
    json swap = json::array();
    for (const swap::DeviceStats& d : host.pool().stats()) {
        swap.push_back({
            {"path", d.path},
            {"priority", d.priority},
            {"total_slots", d.total_slots},
            {"used_slots", d.used_slots},
            {"removing", d.removing},
            {"state", swap::state_name(d.state)},
            {"write_errors", d.write_errors},
            {"failure", d.failure},
        });
    }
    json host_json = {{"budget_bytes", host.budget()}, {"resident_bytes", host.resident_bytes()}};
    if (full) host_json["allocated_vslots"] = host.pool().allocated_vslots();
    return json{{"vms", std::move(vms)}, {"swap", std::move(swap)}, {"host", std::move(host_json)}};
}

}  // namespace swapvisor::vmm::control
