// EventLog: the host's log of what changes without anyone asking — every 500 ms, one
// line per change of a VM's limit state (over its limit, and why; under it again)
// and of a swap device's state (degraded, failed, with the VMs that use the pool).
// It reads counters only, through a guestmem::VmRef per VM (never a VM's own
// objects), so it needs nothing from the VM host and can live beside it.
//
// Threads: one watcher thread, started by the constructor and joined by the
// destructor (promptly: it waits on a condition variable, not a sleep).
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "guestmem/host_memory.hpp"

namespace swapvisor::vmm {

class EventLog {
public:
    static constexpr std::chrono::milliseconds kInterval{500};

    explicit EventLog(guestmem::HostMemory& host);  // `host` must outlive the EventLog
    ~EventLog();
    EventLog(const EventLog&) = delete;
    EventLog& operator=(const EventLog&) = delete;

private:
    void watch();
    // One pass: compare with the states seen last and log each change.
    void check();

    guestmem::HostMemory& host_;
    // Watcher thread only.
    std::map<std::string, std::string> limit_states_;   // per VM
    std::map<std::string, std::string> device_states_;  // per swap device
    // Protects: closing_; Order: leaf.
    std::mutex mutex_;
    std::condition_variable wake_;
    bool closing_ = false;
    std::thread watcher_;  // last: started after, joined before, everything above
};

}  // namespace swapvisor::vmm
