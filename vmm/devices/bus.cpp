// Bus dispatch and the unknown-address policy (all-ones reads, dropped writes,
// rate-limited debug log: the first kLoggedUnknown accesses, then every
// kLogEveryUnknown-th with a running count).
#include "vmm/devices/bus.hpp"

#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

namespace swapvisor::vmm::devices {
namespace {
constexpr std::uint64_t kLoggedUnknown = 16;
constexpr std::uint64_t kLogEveryUnknown = 4096;
}  // namespace

Result<void> Bus::insert(std::uint64_t base, std::uint64_t len, std::shared_ptr<BusDevice> device) {
    if (len == 0 || base > UINT64_MAX - len || !device) return errno_error("Bus::insert", EINVAL);
    auto next = ranges_.lower_bound(base);
    if (next != ranges_.end() && next->first < base + len) return errno_error("Bus::insert (overlap)", EEXIST);
    if (next != ranges_.begin()) {
        auto prev = std::prev(next);
        if (prev->first + prev->second.len > base) return errno_error("Bus::insert (overlap)", EEXIST);
    }
    ranges_.emplace(base, Range{len, std::move(device)});
    return {};
}

const Bus::Range* Bus::find(std::uint64_t addr, std::uint64_t& base) const {
    auto it = ranges_.upper_bound(addr);
    if (it == ranges_.begin()) return nullptr;
    --it;
    if (addr - it->first >= it->second.len) return nullptr;
    base = it->first;
    return &it->second;
}

void Bus::log_unknown(const char* what, std::uint64_t addr, std::size_t width) {
    std::uint64_t n = unknown_.fetch_add(1, std::memory_order_relaxed) + 1;
    if (n <= kLoggedUnknown || n % kLogEveryUnknown == 0) {
        spdlog::debug("{}: {} of {} bytes at unclaimed address 0x{:x} ({} unclaimed accesses so far)", name_, what,
                      width, addr, n);
    }
}

void Bus::read(std::uint64_t addr, std::span<std::byte> data) {
    std::uint64_t base = 0;
    if (const Range* r = find(addr, base)) {
        r->device->read(addr - base, data);
        return;
    }
    std::fill(data.begin(), data.end(), std::byte{0xff});
    log_unknown("read", addr, data.size());
}

BusAction Bus::write(std::uint64_t addr, std::span<const std::byte> data) {
    std::uint64_t base = 0;
    if (const Range* r = find(addr, base)) return r->device->write(addr - base, data);
    log_unknown("write", addr, data.size());
    return BusAction::resume();
}

}  // namespace swapvisor::vmm::devices
