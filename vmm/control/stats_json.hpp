// stats_json: the counters of one swapvisor process as JSON, in the one shape that
// both the control socket's `status` / `stats` replies and `swapvisor run
// --stats-json FILE` use (vmm/control/README.md#status):
//
//   {"vms":  [{"name", "memory_bytes", "resident_bytes", "resident_bytes_peak",
//              "swapped_bytes", "swap_out_pages", "swap_in_pages", "major_faults",
//              "minor_faults", "zero_pages", "discarded_pages", "resident_limit", ...
//              every guestmem::kMemStatFields entry of the level,
//              "swapin_seconds_bucket": {"0.000025": n, ..., "+Inf": count} (cumulative),
//              "swapin_seconds_sum" (seconds), "swapin_seconds_count" (kMemHistogramFields),
//              full only: "clean_drops", "lost_pages", "wp_faults",
//                         "throttle_waits", "limit_overshoots", "readahead_pages",
//                         "referenced_vslots" (a stage-2 scan: sum == allocated_vslots at rest)}],
//    "swap": [{"path", "priority", "total_slots", "used_slots", "removing", "state",
//              "write_errors", "read_errors", "read_retries_total", "read_bytes_total", "written_bytes_total",
//              "quarantined_slots", "failure"}],
//    "host": {"budget_bytes", "resident_bytes", full only: "allocated_vslots"}}
//
// It only reads counters (atomics and short shared locks), so the control thread
// may call it while VMs run.
#pragma once

#include <nlohmann/json.hpp>

#include "guestmem/host_memory.hpp"
#include "vmm/control/device_stats.hpp"
#include "vmm/control/protocol.hpp"

namespace swapvisor::vmm::control {

nlohmann::json stats_json(guestmem::HostMemory& host, const DeviceStats& devices,
                          StatsDetail detail = StatsDetail::full);

}  // namespace swapvisor::vmm::control
