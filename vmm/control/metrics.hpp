// Prometheus text exposition (format 0.0.4) of one swapvisor process: the same
// counters as `status` / `stats` / --stats-json, under the same names, prefixed
// `swapvisor_`. Per VM, every guestmem::kMemStatFields entry (the one list of
// memory stat names) as `swapvisor_vm_<field>{vm="name"}`, every kMemHistogramFields
// entry as a histogram (`swapvisor_vm_swapin_seconds_bucket{vm,le}`, `_sum`,
// `_count`), its limit state as `swapvisor_vm_limit_state{vm,state} 1`, its
// lifecycle state, and each registered device counter (vmm/control/device_stats.hpp)
// as `swapvisor_vm_<device>_<counter>{vm}` (so the balloon's target_pages is
// `swapvisor_vm_balloon_target_pages`). Per swap device: slots total / used, read
// and write errors, quarantined slots, bytes read / written (counters), removing,
// state and the progress of a running swapoff.
//
// Pure: prometheus_text() only reads counters (like stats_json), so the metrics
// thread may call it while VMs run; it is unit tested without a socket.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "guestmem/host_memory.hpp"
#include "vmm/control/device_stats.hpp"
#include "vmm/control/vm_control.hpp"

namespace swapvisor::vmm::control {

// Running swapoffs by canonical device path: the control server's swapoff workers
// write it, the metrics endpoint reads it.
class SwapoffBoard {
public:
    struct Progress {
        std::uint64_t done = 0, total = 0;
    };
    void update(const std::string& path, Progress progress);
    void finish(const std::string& path);
    std::map<std::string, Progress> snapshot() const;

private:
    // Protects: running_; Order: leaf.
    mutable std::mutex mutex_;
    std::map<std::string, Progress> running_;
};

// vms and swapoffs may be null (then no lifecycle state / no swapoff progress).
std::string prometheus_text(guestmem::HostMemory& host, const DeviceStats& devices, const VmControl* vms,
                            const SwapoffBoard* swapoffs);

}  // namespace swapvisor::vmm::control
