// stats_json: see stats_json.hpp. Field names are part of the control protocol and
// of --stats-json: renaming one breaks host agents.
#include "vmm/control/stats_json.hpp"

namespace swapvisor::vmm::control {

using nlohmann::json;

nlohmann::json stats_json(guestmem::HostMemory& host, const DeviceStats& devices, StatsDetail detail) {
    const bool full = detail == StatsDetail::full;
    json vms = json::array();
    for (const guestmem::VmRef& vm : host.vms()) {
        guestmem::MemStats s = vm->stats();
        json v = {{"name", s.name}, {"limit_state", s.limit_state}, {"limit_source", s.limit_source}};
        if (!s.auto_decision.empty()) v["auto_decision"] = s.auto_decision;
        for (const guestmem::MemStatField& f : guestmem::kMemStatFields)
            if (full || f.level == guestmem::StatLevel::basic) v[f.name] = s.*f.member;
        for (const guestmem::MemRatioField& f : guestmem::kMemRatioFields)
            if (full || f.level == guestmem::StatLevel::basic) v[f.name] = s.*f.member;
        {
            // The cold-age histogram (guestmem/README.md#working-set), keyed like swapin_seconds.
            json buckets = json::object();
            for (std::size_t i = 0; i < guestmem::kAgeBucketCount; ++i)
                buckets[guestmem::kAgeBuckets[i].le] = s.cold_age_seconds.cumulative[i];
            const std::string name = guestmem::kColdAgeField;
            v[name + "_bucket"] = std::move(buckets);
            v[name + "_sum"] = s.cold_age_seconds.sum_seconds;
            v[name + "_count"] = s.cold_age_seconds.count();
        }
        if (full) {
            json threads = json::array();
            for (const guestmem::ThreadStall& t : s.stall_threads)
                threads.push_back({{"tid", t.tid}, {"stall_share_60s", t.share_60s}, {"stalled_ns", t.stalled_ns}});
            v["stall_threads"] = std::move(threads);
        }
        for (const guestmem::MemHistogramField& h : guestmem::kMemHistogramFields) {
            if (!full && h.level != guestmem::StatLevel::basic) continue;
            const guestmem::LatencySnapshot& snapshot = s.*h.member;
            json buckets = json::object();
            for (std::size_t i = 0; i < guestmem::kLatencyBucketCount; ++i)
                buckets[guestmem::kLatencyBuckets[i].le] = snapshot.cumulative[i];
            const std::string name = h.name;
            v[name + "_bucket"] = std::move(buckets);
            v[name + "_sum"] = snapshot.sum_seconds();
            v[name + "_count"] = snapshot.count();
        }
        if (full) {
            // A scan of the VM's stage-2 table: slots its pages refer to (leak checks:
            // the sum over VMs equals host.allocated_vslots at rest).
            v["referenced_vslots"] = vm->referenced_vslots();
        }
        for (const DeviceCounters& d : devices.read(s.name)) {
            json counters = json::object();
            for (const Counter& c : d.counters) counters[std::string(c.name)] = c.value;
            v[d.device] = std::move(counters);
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
            {"read_errors", d.read_errors},
            {"read_retries_total", d.read_retries},
            {"read_bytes_total", d.read_bytes},
            {"written_bytes_total", d.written_bytes},
            {"quarantined_slots", d.quarantined_slots},
            {"failure", d.failure},
            {"uuid", d.uuid},
        });
        if (d.remote) {
            // A remote device's lease and health probe (swap/README.md#ownership).
            swap.back()["remote"] = {{"health", swap::health_name(d.remote->health)},
                                     {"reason", d.remote->reason},
                                     {"since_ms", d.remote->since_ms},
                                     {"last_probe_ms", d.remote->last_probe_ms},
                                     {"lease_until_ms", d.remote->lease_until_ms},
                                     {"probes", d.remote->probes}};
        }
        if (d.kind == "memory") {
            // The compressed memory tier (swap/README.md#tiers).
            swap.back()["kind"] = d.kind;
            swap.back()["tier"] = {{"codec", d.codec},
                                   {"stored_pages", d.stored_pages},
                                   {"compressed_bytes", d.compressed_bytes},
                                   {"arena_bytes", d.arena_bytes},
                                   {"capacity_bytes", d.capacity_bytes},
                                   {"ratio", d.ratio()},
                                   {"fragmentation", d.fragmentation()},
                                   {"rejected_pages_total", d.rejected_pages},
                                   {"demoted_pages_total", d.demoted_pages},
                                   {"swapins_served_total", d.swapins_served}};
        }
    }
    json host_json = {{"budget_bytes", host.budget()}, {"resident_bytes", host.resident_bytes()}};
    // Host memory the compressed memory tiers hold: charged to the budget too.
    if (const std::uint64_t tiers = host.pool().memory_tier_bytes(); tiers != 0) host_json["memory_tier_bytes"] = tiers;
    if (full) host_json["allocated_vslots"] = host.pool().allocated_vslots();
    // Vslots that snapshots share with a VM or hold alone (swap/README.md#held-vslots).
    host_json["shared_vslots"] = host.pool().shared_vslots();
    return json{{"vms", std::move(vms)}, {"swap", std::move(swap)}, {"host", std::move(host_json)}};
}

}  // namespace swapvisor::vmm::control
