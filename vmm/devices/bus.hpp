// Bus: address ranges -> device handlers, one instance for port I/O and one for
// MMIO. A vCPU exit is dispatched to the device whose range holds the address, with
// the offset inside that range. Unknown addresses behave like an empty ISA/PCI bus:
// reads return all-ones, writes are dropped, and both are logged at debug level,
// rate limited so a guest probing ports cannot flood the log.
//
// Invariants: ranges never overlap; devices are inserted before the first vCPU runs
// and never removed, so dispatch reads the table without a lock from every vCPU
// thread. Devices do their own locking (vCPUs call them concurrently).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "io/result.hpp"

namespace swapvisor::vmm::devices {

// What the vCPU does after a device access: go on, or end the VM with a code.
struct BusAction {
    std::optional<std::uint32_t> exit_code;
    static BusAction resume() { return {}; }
    static BusAction exit_vm(std::uint32_t code) { return BusAction{code}; }
};

class BusDevice {
public:
    virtual ~BusDevice() = default;
    // data.size() is the access width (1, 2, 4 or 8); offset is from the range base.
    virtual void read(std::uint64_t offset, std::span<std::byte> data) = 0;
    virtual BusAction write(std::uint64_t offset, std::span<const std::byte> data) = 0;
};

class Bus {
public:
    explicit Bus(std::string name) : name_(std::move(name)) {}

    // Claim [base, base + len) for `device`. EEXIST if it overlaps a claimed range.
    Result<void> insert(std::uint64_t base, std::uint64_t len, std::shared_ptr<BusDevice> device);

    void read(std::uint64_t addr, std::span<std::byte> data);
    BusAction write(std::uint64_t addr, std::span<const std::byte> data);

    // Accesses that hit no device (for tests and stats).
    std::uint64_t unknown_accesses() const { return unknown_.load(std::memory_order_relaxed); }

private:
    struct Range {
        std::uint64_t len;
        std::shared_ptr<BusDevice> device;
    };
    // The range holding addr (with its base), or nullptr.
    const Range* find(std::uint64_t addr, std::uint64_t& base) const;
    void log_unknown(const char* what, std::uint64_t addr, std::size_t width);

    std::string name_;
    std::map<std::uint64_t, Range> ranges_;  // by base; immutable once vCPUs run
    std::atomic<std::uint64_t> unknown_{0};  // relaxed: a statistic, orders nothing
};

}  // namespace swapvisor::vmm::devices
