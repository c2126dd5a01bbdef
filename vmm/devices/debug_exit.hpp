// DebugExit: port 0xf4. A write ends the VM with the written value as its exit code:
// a 4-byte OUT gives exactly that 32-bit value, 1- and 2-byte writes give the
// zero-extended byte or word (unlike QEMU's isa-debug-exit, no (v << 1) | 1).
// Reads return all-ones like an unclaimed port. Stateless, so no lock.
#pragma once

#include "vmm/devices/bus.hpp"

namespace swapvisor::vmm::devices {

inline constexpr std::uint16_t kDebugExitPort = 0xf4;

class DebugExit final : public BusDevice {
public:
    void read(std::uint64_t offset, std::span<std::byte> data) override;
    BusAction write(std::uint64_t offset, std::span<const std::byte> data) override;
};

}  // namespace swapvisor::vmm::devices
