// EventLog: see event_log.hpp.
#include "vmm/host/event_log.hpp"

#include <spdlog/spdlog.h>

namespace swapvisor::vmm {

EventLog::EventLog(guestmem::HostMemory& host) : host_(host), watcher_([this] { watch(); }) {}

EventLog::~EventLog() {
    {
        std::lock_guard lock(mutex_);
        closing_ = true;
    }
    wake_.notify_all();
    watcher_.join();
}

void EventLog::watch() {
    std::unique_lock lock(mutex_);
    while (!closing_) {
        lock.unlock();
        check();
        lock.lock();
        wake_.wait_for(lock, kInterval, [this] { return closing_; });
    }
}

void EventLog::check() {
    std::map<std::string, std::string> now;
    for (const guestmem::VmRef& vm : host_.vms()) {
        guestmem::MemStats s = vm->stats();
        auto& before = limit_states_[s.name];
        if (s.limit_state != before && !(before.empty() && s.limit_state == "held")) {
            if (s.limit_state == "held") spdlog::info("{}: under its limit again", s.name);
            else spdlog::warn("{}: over its limit by {} bytes: {}", s.name, s.overshoot_bytes, s.limit_state);
        }
        before = s.limit_state;
        now[s.name] = s.limit_state;
    }
    std::erase_if(limit_states_, [&](const auto& kv) { return !now.contains(kv.first); });
    for (const swap::DeviceStats& d : host_.pool().stats()) {
        std::string state = swap::state_name(d.state);
        auto& before = device_states_[d.path];
        if (!before.empty() && state != before) {
            std::string vms;
            for (const auto& [name, st] : now) vms += (vms.empty() ? "" : ", ") + name;
            spdlog::warn("swap device {}: {} -> {}{} (VMs: {})", d.path, before, state,
                         d.failure.empty() ? "" : ": " + d.failure, vms.empty() ? "none" : vms);
        }
        before = state;
    }
}

}  // namespace swapvisor::vmm
