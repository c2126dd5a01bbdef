// AccessAges and AgeScanBuilder: see access_age.hpp.
#include "guestmem/access_age.hpp"

#include <sys/mman.h>

namespace swapvisor::guestmem {

Result<AccessAges> AccessAges::create(std::uint64_t pages) {
    if (pages == 0) return errno_error("access-age table", EINVAL);
    const std::size_t bytes = pages * bytes_per_page();
    // Kernel contract: like the stage-2 table, a private anonymous MAP_NORESERVE
    // mapping reads as zeros ("never seen") and is backed only where written.
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return errno_error("mmap access-age table");
    return AccessAges(io::Mapping(p, bytes), pages);
}

namespace {

// Ticks from `then` to `now`, modulo the wrap (both 1..kTicks).
std::uint32_t ticks_between(std::uint16_t then, std::uint16_t now) {
    return (static_cast<std::uint32_t>(now) + AccessAges::kTicks - then) % AccessAges::kTicks;
}

}  // namespace

std::optional<std::chrono::nanoseconds> AccessAges::age(PageIdx idx, MonoTime now) const {
    const std::uint16_t then = at(idx).load(std::memory_order_relaxed);  // pairs with touch()'s store: a sample
    if (then == 0) return std::nullopt;
    return std::chrono::nanoseconds(kTick) * ticks_between(then, tick_of(now));
}

void AccessAges::saturate_if_old(PageIdx idx, MonoTime now) {
    auto& a = at(idx);
    std::uint16_t then = a.load(std::memory_order_relaxed);
    if (then == 0) return;
    if (std::chrono::nanoseconds(kTick) * ticks_between(then, tick_of(now)) <= kSaturateAfter) return;
    // Relaxed: if a fault stored a fresh tick meanwhile the exchange fails and the
    // fresh tick stays (it is the truth); nothing else is published through it.
    a.compare_exchange_strong(then, 0, std::memory_order_relaxed);
}

void AgeScanBuilder::visit(PageEntry e, std::optional<std::chrono::nanoseconds> age, std::uint32_t weight) {
    const PageState s = e.state();
    if (weight == 0) return;
    if (!e.present() && s != PageState::swapped) return;  // zero and lost pages hold nothing
    if (!age) {
        per_bucket_[kAgeBucketCount - 1] += weight;
        return;
    }
    const double seconds = std::chrono::duration<double>(*age).count();
    std::size_t b = 0;
    while (b + 1 < kAgeBucketCount && seconds > static_cast<double>(kAgeBuckets[b].le_seconds)) ++b;
    per_bucket_[b] += weight;
    sum_seconds_ += seconds * weight;
    if (*age <= window_) working_set_ += weight;
}

AgeScan AgeScanBuilder::finish(MonoTime now) {
    AgeScan out;
    std::uint64_t running = 0;
    for (std::size_t i = 0; i < kAgeBucketCount; ++i) {
        running += per_bucket_[i];
        out.ages.cumulative[i] = running;
    }
    out.ages.sum_seconds = sum_seconds_;
    out.working_set_pages = working_set_;
    out.finished = now;
    *this = AgeScanBuilder(window_);
    return out;
}

}  // namespace swapvisor::guestmem
