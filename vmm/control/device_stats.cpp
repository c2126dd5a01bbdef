// DeviceStats: see device_stats.hpp.
#include "vmm/control/device_stats.hpp"

#include <cerrno>

namespace swapvisor::vmm::control {

Result<void> DeviceStats::add(std::string vm, std::string device, CounterSource source) {
    std::lock_guard lock(mutex_);
    for (const Source& s : sources_) {
        if (s.vm == vm && s.device == device) {
            return std::unexpected(
                errno_error("registering device counters", EEXIST).error().with_context(vm + " " + device));
        }
    }
    sources_.push_back(Source{std::move(vm), std::move(device), std::move(source)});
    return {};
}

void DeviceStats::remove(std::string_view vm) {
    std::lock_guard lock(mutex_);
    std::erase_if(sources_, [vm](const Source& s) { return s.vm == vm; });
}

std::vector<DeviceCounters> DeviceStats::read(std::string_view vm) const {
    std::lock_guard lock(mutex_);
    std::vector<DeviceCounters> out;
    for (const Source& s : sources_)
        if (s.vm == vm) out.push_back(DeviceCounters{s.device, s.read()});
    return out;
}

}  // namespace swapvisor::vmm::control
