// DeviceStats: the one registry of device counters of a swapvisor process. Each
// device that has counters (today the virtio-balloon) is registered once, by the
// device manager (vmm/devices/device_manager.hpp), as a named source of one VM;
// stats_json() reads every source of a VM into that VM's object under the source's
// name ("balloon": {...}). So the control socket's `status` and `stats` replies and
// `swapvisor run --stats-json` carry the same device counters, and the names of a
// device's counters are written in one place: its own `counters()` function.
//
// Threads: sources are added during setup (main thread) and read from the control
// thread and from main at exit. A source must only load atomics (it runs on the
// control thread, which never waits for a vCPU or for I/O).
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "io/result.hpp"

namespace swapvisor::vmm::control {

// One counter as it appears in the JSON: `name` is a static string (a field name
// of the control protocol: renaming it breaks host agents).
struct Counter {
    std::string_view name;
    std::uint64_t value;
};
using Counters = std::vector<Counter>;
using CounterSource = std::function<Counters()>;

// The counters of one source, read now.
struct DeviceCounters {
    std::string device;  // "balloon"
    Counters counters;
};

class DeviceStats {
public:
    // Register `source` as `device` of VM `vm`. EEXIST if that VM already has a
    // source of that name (it would overwrite the other in the JSON).
    Result<void> add(std::string vm, std::string device, CounterSource source);
    // Drop every source of `vm` (the VM was removed; a new VM may take its name).
    void remove(std::string_view vm);
    // Every source of `vm`, in the order added, each read now.
    std::vector<DeviceCounters> read(std::string_view vm) const;

private:
    struct Source {
        std::string vm;
        std::string device;
        CounterSource read;
    };
    // Protects: sources_; Order: leaf (sources only load atomics).
    mutable std::mutex mutex_;
    std::vector<Source> sources_;
};

}  // namespace swapvisor::vmm::control
