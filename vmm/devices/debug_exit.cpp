// DebugExit: the value decoding (little endian, zero-extended).
#include "vmm/devices/debug_exit.hpp"

#include <algorithm>

namespace swapvisor::vmm::devices {

void DebugExit::read(std::uint64_t, std::span<std::byte> data) { std::fill(data.begin(), data.end(), std::byte{0xff}); }

BusAction DebugExit::write(std::uint64_t, std::span<const std::byte> data) {
    std::uint32_t code = 0;
    std::size_t n = std::min<std::size_t>(data.size(), 4);
    for (std::size_t i = 0; i < n; ++i) code |= std::uint32_t{static_cast<std::uint8_t>(data[i])} << (8 * i);
    return BusAction::exit_vm(code);
}

}  // namespace swapvisor::vmm::devices
