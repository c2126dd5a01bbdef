// Prometheus text exposition: see metrics.hpp. Names come from the lists that the
// JSON reports use (kMemStatFields, device counters()), never spelled here again.
#include "vmm/control/metrics.hpp"

#include <set>

#include <fmt/format.h>

namespace swapvisor::vmm::control {

namespace {

// Label values: backslash, double quote and newline escaped (exposition format).
std::string label(std::string_view value) {
    std::string out;
    for (char c : value) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out += c;
    }
    return out;
}

// Metric names: [a-zA-Z_:][a-zA-Z0-9_:]*; anything else becomes '_'.
std::string metric_name(std::string_view name) {
    std::string out;
    for (char c : name) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == ':';
        out += ok ? c : '_';
    }
    return out;
}

// Sample values: integers as they are; seconds (histogram sums) in fmt's shortest
// round-trip form ("0.00123", "2.5e-05"), which the exposition format accepts.
template <class Value>
std::string value_text(Value value) {
    return fmt::format("{}", value);
}

// One metric family: HELP/TYPE once, then its samples in order. A histogram family
// `name` holds the samples name_bucket, name_sum and name_count.
enum class Type { gauge, counter, histogram };

class Families {
public:
    template <class Value>
    void sample(const std::string& name, const char* help, std::string labels, Value value, Type type = Type::gauge) {
        add(name, name, help, labels, value_text(value), type);
    }
    // The histogram `name` of one label set: cumulative `le` buckets, _sum, _count.
    void histogram(const std::string& name, const char* help, const std::string& labels,
                   const guestmem::LatencySnapshot& h) {
        const std::string sep = labels.empty() ? "" : ",";
        for (std::size_t i = 0; i < guestmem::kLatencyBucketCount; ++i)
            add(name, name + "_bucket", help, fmt::format("{}{}le=\"{}\"", labels, sep, guestmem::kLatencyBuckets[i].le),
                value_text(h.cumulative[i]), Type::histogram);
        add(name, name + "_sum", help, labels, value_text(h.sum_seconds()), Type::histogram);
        add(name, name + "_count", help, labels, value_text(h.count()), Type::histogram);
    }
    // The cold-age histogram (pages by seconds since last access).
    void histogram(const std::string& name, const char* help, const std::string& labels,
                   const guestmem::AgeSnapshot& h) {
        const std::string sep = labels.empty() ? "" : ",";
        for (std::size_t i = 0; i < guestmem::kAgeBucketCount; ++i)
            add(name, name + "_bucket", help, fmt::format("{}{}le=\"{}\"", labels, sep, guestmem::kAgeBuckets[i].le),
                value_text(h.cumulative[i]), Type::histogram);
        add(name, name + "_sum", help, labels, value_text(h.sum_seconds), Type::histogram);
        add(name, name + "_count", help, labels, value_text(h.count()), Type::histogram);
    }
    std::string text() const {
        std::string out;
        for (const std::string& name : order_) {
            const Family& f = families_.at(name);
            out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{}", name, f.help, name, type_name(f.type), f.samples);
        }
        return out;
    }

private:
    struct Family {
        std::string help;
        Type type = Type::gauge;
        std::string samples;
    };
    static const char* type_name(Type type) {
        switch (type) {
            case Type::gauge: return "gauge";
            case Type::counter: return "counter";
            case Type::histogram: return "histogram";
        }
        return "untyped";
    }
    void add(const std::string& family_name, const std::string& sample_name, const char* help,
             const std::string& labels, const std::string& value, Type type) {
        auto& family = families_[family_name];
        if (family.help.empty()) {
            family.help = help;
            family.type = type;
            order_.push_back(family_name);
        }
        family.samples += labels.empty() ? fmt::format("{} {}\n", sample_name, value)
                                         : fmt::format("{}{{{}}} {}\n", sample_name, labels, value);
    }
    std::map<std::string, Family> families_;
    std::vector<std::string> order_;
};

}  // namespace

void SwapoffBoard::update(const std::string& path, Progress progress) {
    std::lock_guard lock(mutex_);
    running_[path] = progress;
}

void SwapoffBoard::finish(const std::string& path) {
    std::lock_guard lock(mutex_);
    running_.erase(path);
}

std::map<std::string, SwapoffBoard::Progress> SwapoffBoard::snapshot() const {
    std::lock_guard lock(mutex_);
    return running_;
}

std::string prometheus_text(guestmem::HostMemory& host, const DeviceStats& devices, const VmControl* vms,
                            const SwapoffBoard* swapoffs) {
    Families f;
    for (const guestmem::VmRef& vm : host.vms()) {
        guestmem::MemStats s = vm->stats();
        const std::string vm_label = fmt::format("vm=\"{}\"", label(s.name));
        for (const guestmem::MemStatField& field : guestmem::kMemStatFields)
            f.sample(metric_name(fmt::format("swapvisor_vm_{}", field.name)), "guest memory counter (see `ctl stats`)",
                     vm_label, s.*field.member);
        for (const guestmem::MemHistogramField& h : guestmem::kMemHistogramFields)
            f.histogram(metric_name(fmt::format("swapvisor_vm_{}", h.name)),
                        "swap-in latency of major faults: picked up to page mapped (see `ctl stats`)", vm_label,
                        s.*h.member);
        f.sample("swapvisor_vm_limit_state", "why the resident limit is or is not held (1 for the current state)",
                 fmt::format("{},state=\"{}\"", vm_label, label(s.limit_state)), 1);
        for (const guestmem::MemRatioField& field : guestmem::kMemRatioFields)
            f.sample(metric_name(fmt::format("swapvisor_vm_{}", field.name)),
                     "memory stall (share of wall time) or refault rate (see `ctl stats`)", vm_label, s.*field.member);
        f.histogram(metric_name(fmt::format("swapvisor_vm_{}", guestmem::kColdAgeField)),
                    "touched guest pages by seconds since their last access (last full CLOCK sweep)", vm_label,
                    s.cold_age_seconds);
        f.sample("swapvisor_vm_limit_source", "where the resident limit comes from (1 for the current source)",
                 fmt::format("{},source=\"{}\"", vm_label, label(s.limit_source)), 1);
        for (const guestmem::ThreadStall& t : s.stall_threads)
            f.sample("swapvisor_vm_stall_thread_share_60s",
                     "share of the last 60 s each faulting thread (vCPU) waited for swap-ins or the throttle",
                     fmt::format("{},tid=\"{}\"", vm_label, t.tid), t.share_60s);
        for (const DeviceCounters& d : devices.read(s.name))
            for (const Counter& c : d.counters)
                f.sample(metric_name(fmt::format("swapvisor_vm_{}_{}", d.device, c.name)), "device counter", vm_label,
                         c.value);
    }
    if (vms != nullptr) {
        for (const VmInfo& info : vms->list_vms()) {
            for (VmState state : {VmState::creating, VmState::running, VmState::paused, VmState::snapshotting,
                                   VmState::ended})
                f.sample("swapvisor_vm_state", "lifecycle state of each listed VM (1 for the current one)",
                         fmt::format("vm=\"{}\",state=\"{}\"", label(info.name), vm_state_name(state)),
                         info.state == state ? 1 : 0);
            if (info.exit_code)
                f.sample("swapvisor_vm_exit_code", "exit code of an ended VM", fmt::format("vm=\"{}\"", label(info.name)),
                         *info.exit_code);
        }
    }
    if (vms != nullptr) {
        const SnapshotSummary s = vms->snapshot_summary();
        f.sample("swapvisor_snapshots", "snapshots this process has loaded (docs/SNAPSHOT.md)", "", s.snapshots);
        f.sample("swapvisor_snapshot_held_vslots", "vslots the loaded snapshots hold a reference on", "", s.held_vslots);
        f.sample("swapvisor_snapshots_unavailable", "snapshots serve --snapshots found but could not load", "",
                 s.unavailable);
    }
    f.sample("swapvisor_shared_vslots", "vslots with references beyond their owner's (snapshots, clones)", "",
             host.pool().shared_vslots());
    auto running = swapoffs != nullptr ? swapoffs->snapshot() : std::map<std::string, SwapoffBoard::Progress>{};
    for (const swap::DeviceStats& d : host.pool().stats()) {
        const std::string dev = fmt::format("path=\"{}\"", label(d.path));
        f.sample("swapvisor_swap_total_slots", "slots of the swap device", dev, d.total_slots);
        f.sample("swapvisor_swap_used_slots", "slots in use", dev, d.used_slots);
        f.sample("swapvisor_swap_write_errors", "write ops of the device that failed", dev, d.write_errors);
        f.sample("swapvisor_swap_read_errors", "read ops of the device that failed, and checksum mismatches", dev,
                 d.read_errors);
        f.sample("swapvisor_swap_read_retries_total", "reads issued again after a lost connection (NBD)", dev,
                 d.read_retries, Type::counter);
        f.sample("swapvisor_swap_quarantined_slots", "slots whose I/O failed: never handed out again", dev,
                 d.quarantined_slots);
        f.sample("swapvisor_swap_read_bytes_total", "bytes read from the device by reads that succeeded", dev,
                 d.read_bytes, Type::counter);
        f.sample("swapvisor_swap_written_bytes_total", "bytes written to the device by writes that succeeded", dev,
                 d.written_bytes, Type::counter);
        if (d.kind == "memory") {  // the compressed memory tier (swap/README.md#tiers)
            f.sample("swapvisor_swap_tier_stored_pages", "pages held compressed in the memory tier", dev, d.stored_pages);
            f.sample("swapvisor_swap_tier_compressed_bytes", "compressed size of the pages the memory tier holds", dev,
                     d.compressed_bytes);
            f.sample("swapvisor_swap_tier_arena_bytes", "host memory the memory tier holds (counted in the host budget)",
                     dev, d.arena_bytes);
            f.sample("swapvisor_swap_tier_ratio", "stored bytes / compressed bytes of the memory tier", dev, d.ratio());
            f.sample("swapvisor_swap_tier_fragmentation", "share of the memory tier's arena not holding compressed bytes",
                     dev, d.fragmentation());
            f.sample("swapvisor_swap_tier_rejected_pages_total", "pages the memory tier refused (did not compress, full)",
                     dev, d.rejected_pages, Type::counter);
            f.sample("swapvisor_swap_tier_demoted_pages_total", "pages demoted from the memory tier to the next device",
                     dev, d.demoted_pages, Type::counter);
            f.sample("swapvisor_swap_tier_swapins_total", "swap-ins served from the memory tier", dev, d.swapins_served,
                     Type::counter);
        }
        f.sample("swapvisor_swap_removing", "1 while a swapoff of the device runs", dev, d.removing ? 1 : 0);
        if (d.remote) {
            for (swap::RemoteHealth h : {swap::RemoteHealth::up, swap::RemoteHealth::degraded, swap::RemoteHealth::down})
                f.sample("swapvisor_swap_remote_health",
                         "health of a remote device by its lease renewal probe (1 for the current state)",
                         fmt::format("{},health=\"{}\"", dev, swap::health_name(h)), d.remote->health == h ? 1 : 0);
            f.sample("swapvisor_swap_remote_lease_seconds", "seconds left of this pool's lease on the remote device",
                     dev, d.remote->lease_until_ms > swap::realtime_ms()
                              ? (d.remote->lease_until_ms - swap::realtime_ms()) / 1000
                              : 0);
        }
        f.sample("swapvisor_swap_priority", "swap priority (higher first)", dev, static_cast<std::uint64_t>(std::max(d.priority, 0)));
        f.sample("swapvisor_swap_state", "device state (1 for the current one)",
                 fmt::format("{},state=\"{}\"", dev, label(swap::state_name(d.state))), 1);
        auto it = running.find(d.path);
        f.sample("swapvisor_swap_swapoff_done_slots", "slots a running swapoff has handled", dev,
                 it == running.end() ? 0 : it->second.done);
        f.sample("swapvisor_swap_swapoff_total_slots", "slots a running swapoff has to handle", dev,
                 it == running.end() ? 0 : it->second.total);
    }
    f.sample("swapvisor_host_budget_bytes", "host budget over all VMs (0: none)", "", host.budget());
    f.sample("swapvisor_host_resident_bytes", "guest memory resident over all VMs", "", host.resident_bytes());
    f.sample("swapvisor_host_allocated_vslots", "virtual swap slots allocated over all VMs", "",
             host.pool().allocated_vslots());
    return f.text();
}

}  // namespace swapvisor::vmm::control
