// Limits: see limits.hpp.
#include "guestmem/limits.hpp"

#include <algorithm>

#include "guestmem/addr.hpp"

namespace swapvisor::guestmem {

const char* to_string(OverReason r) {
    switch (r) {
        case OverReason::none: return "held";
        case OverReason::no_swap: return "no swap device";
        case OverReason::swap_full: return "swap full";
        case OverReason::swap_failing: return "swap writes failing";
        case OverReason::nothing_evictable: return "nothing evictable";
        case OverReason::swap_quota: return "swap quota reached";
    }
    return "?";
}

std::uint64_t slack_pages(std::uint64_t limit) { return std::clamp<std::uint64_t>(limit / 32, 64, 4096); }

// --- host budget -------------------------------------------------------------------

std::uint64_t HostBudget::charged_pages() const {
    const std::uint64_t also = also_bytes_ ? also_bytes_() : 0;
    return resident_pages() + (also + kPageSize - 1) / kPageSize;
}

bool HostBudget::over_budget() const {
    const std::uint64_t budget = budget_bytes_ / kPageSize;
    if (budget == 0) return false;
    return charged_pages() + slack_pages(budget) / 2 > budget;
}

std::uint64_t HostBudget::share_pages(std::uint64_t vm_memory_bytes) const {
    const std::uint64_t budget = budget_bytes_;
    if (budget == 0 || !over_budget()) return 0;
    const std::uint64_t total = memory_bytes_.load(std::memory_order_relaxed);
    if (total == 0) return 0;
    // What the memory tiers hold is not there to share out among the VMs.
    const std::uint64_t also = also_bytes_ ? also_bytes_() : 0;
    const std::uint64_t shared = budget > also ? budget - also : 0;
    return static_cast<std::uint64_t>(static_cast<long double>(shared) * vm_memory_bytes / total) / kPageSize;
}

std::uint64_t HostBudget::room_pages() const {
    const std::uint64_t budget = budget_bytes_ / kPageSize;
    if (budget == 0) return ~std::uint64_t{0};
    const std::uint64_t used = charged_pages();
    return budget > used ? budget - used : 0;
}

// --- clean copies ---------------------------------------------------------------------

bool CleanCopyPolicy::want_clean() {
    if (!available_) return false;
    if (tracking_.load(std::memory_order_relaxed)) return true;
    return decisions_.fetch_add(1, std::memory_order_relaxed) % kSampleEvery == 0;
}

void CleanCopyPolicy::note(CleanOutcome outcome) {
    const bool dirtied = outcome == CleanOutcome::dirtied;
    const std::uint64_t d = dirtied ? dirtied_.fetch_add(1, std::memory_order_relaxed) + 1
                                    : dirtied_.load(std::memory_order_relaxed);
    const std::uint64_t r = dirtied ? reused_.load(std::memory_order_relaxed)
                                    : reused_.fetch_add(1, std::memory_order_relaxed) + 1;
    if (d + r < kWindow) return;
    // Hysteresis: stop tracking when >80% of copies end dirtied, resume below 50%.
    dirtied_.store(0, std::memory_order_relaxed);
    reused_.store(0, std::memory_order_relaxed);
    const bool tracking = tracking_.load(std::memory_order_relaxed);
    if (tracking && d * 5 > (d + r) * 4) tracking_.store(false, std::memory_order_relaxed);
    else if (!tracking && d * 2 < d + r) tracking_.store(true, std::memory_order_relaxed);
}

// --- one VM ---------------------------------------------------------------------------

Limits::Limits(Occupancy& occupancy, HostBudget* host, std::uint64_t memory_bytes, std::uint64_t limit_bytes)
    : occupancy_(occupancy), host_(host), memory_bytes_(memory_bytes), limit_pages_(limit_bytes / kPageSize) {}

void Limits::set_limit_bytes(std::uint64_t bytes) {
    limit_pages_ = bytes / kPageSize;
    limit_sets_.fetch_add(1, std::memory_order_release);
    kicked_ = true;
    wake_all();
}

bool Limits::replace_limit_bytes(std::uint64_t expected, std::uint64_t bytes) {
    std::uint64_t pages = expected / kPageSize;
    if (!limit_pages_.compare_exchange_strong(pages, bytes / kPageSize)) return false;
    kicked_ = true;
    wake_all();
    return true;
}

void Limits::set_swap_quota_bytes(std::uint64_t bytes) {
    quota_pages_ = bytes / kPageSize;
    kicked_ = true;
    wake_all();
}

std::uint64_t Limits::swap_quota_room() const {
    const std::uint64_t quota = quota_pages_.load(std::memory_order_relaxed);
    if (quota == 0) return ~std::uint64_t{0};
    const std::uint64_t swapped = occupancy_.swapped.load(std::memory_order_relaxed);
    return quota > swapped ? quota - swapped : 0;
}

std::uint64_t Limits::effective_limit() const {
    std::uint64_t limit = limit_pages_.load(std::memory_order_relaxed);
    if (host_) {
        const std::uint64_t share = host_->share_pages(memory_bytes_);
        if (share && (limit == 0 || share < limit)) limit = share;
    }
    return limit;
}

bool Limits::over_limit() const {
    const std::uint64_t limit = effective_limit();
    return limit && occupancy_.resident.load(std::memory_order_relaxed) >= limit;
}

bool Limits::needs_reclaim() const {
    const std::uint64_t limit = effective_limit();
    if (limit == 0) return false;
    const std::uint64_t slack = slack_pages(limit);
    const std::uint64_t resident = occupancy_.resident.load(std::memory_order_relaxed);
    // There is work only above the low watermark (limit - slack, floored at 0): with
    // a limit under slack / 2 the first test alone holds even at 0 resident pages,
    // and the reclaimer would wake, find nothing to do and spin.
    const std::uint64_t low = limit > slack ? limit - slack : 0;
    return resident + slack / 2 > limit && resident > low;
}

bool Limits::reclaim_done(std::uint64_t leaving) const {
    const std::uint64_t limit = effective_limit();
    if (limit == 0) return true;
    const std::uint64_t slack = slack_pages(limit);
    const std::uint64_t low = limit > slack ? limit - slack : 0;
    const std::uint64_t resident = occupancy_.resident.load(std::memory_order_relaxed);
    return resident - std::min(resident, leaving) <= low;
}

std::uint64_t Limits::bring_back_room() const {
    std::uint64_t limit = limit_pages_.load(std::memory_order_relaxed);
    if (limit == 0) limit = memory_bytes_ / kPageSize;
    const std::uint64_t resident = occupancy_.resident.load(std::memory_order_relaxed);
    return limit > resident ? limit - resident : 0;
}

void Limits::pages_added(std::uint64_t n) {
    const std::uint64_t now = occupancy_.resident.fetch_add(n) + n;
    if (host_) host_->note_added(n);
    // Relaxed: the peak is a statistic; only the max matters.
    std::uint64_t peak = occupancy_.peak.load(std::memory_order_relaxed);
    while (now > peak && !occupancy_.peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
    if (needs_reclaim()) wake_reclaimer();
}

void Limits::pages_freed(std::uint64_t n) {
    occupancy_.resident.fetch_sub(n);
    if (host_) host_->note_freed(n);
    notify_sleepers(room_freed_);
    if (parked_.load() != 0 && !holding_at_limit()) notify_room();
}

void Limits::note_parked(int delta) {
    if (delta > 0) {
        parked_.fetch_add(static_cast<std::uint32_t>(delta));
        wake_reclaimer();  // now urgent: served before VMs that are not at their limit
    } else {
        parked_.fetch_sub(static_cast<std::uint32_t>(-delta));
    }
}

void Limits::notify_room() {
    if (RoomListener* l = room_listener_.load()) l->room_made();
}

void Limits::notify_sleepers(std::condition_variable& cv) {
    // Only take the mutex when someone sleeps: this runs on every page release.
    if (sleepers_.load() == 0) return;
    std::lock_guard lk(mutex_);
    cv.notify_all();
}

bool Limits::wait_for_room(const std::atomic<bool>& stopping) {
    if (!over_limit()) return true;
    if (over_reason_.load() != OverReason::none) return true;  // running over, at full speed
    throttled_.fetch_add(1, std::memory_order_relaxed);
    wake_reclaimer();  // now urgent: served before VMs that are not at their limit
    std::unique_lock lk(mutex_);
    sleepers_.fetch_add(1);
    const bool ok = room_freed_.wait_for(lk, kThrottleBound, [&] {
        return stopping.load() || !over_limit() || over_reason_.load() != OverReason::none;
    });
    sleepers_.fetch_sub(1);
    throttled_.fetch_sub(1, std::memory_order_relaxed);
    return ok;
}

std::chrono::milliseconds Limits::next_retry() {
    std::lock_guard lk(mutex_);
    const std::chrono::milliseconds wait = retry_;
    retry_ = std::min(retry_ * 2, kRetryMax);
    return wait;
}

void Limits::wake_reclaimer() {
    if (ReclaimWaker* w = waker_.load()) w->wake_reclaim();
}

bool Limits::cannot_hold(OverReason why) {
    const OverReason before = over_reason_.exchange(why);
    if (before == OverReason::none) {
        std::lock_guard lk(mutex_);
        retry_ = kRetryFirst;
        room_freed_.notify_all();  // throttled faulters stop waiting
    }
    if (parked_.load() != 0) notify_room();  // parked ones too
    return before == OverReason::none;
}

bool Limits::held_again() { return over_reason_.exchange(OverReason::none) != OverReason::none; }

void Limits::kick_reclaimer() {
    kicked_ = true;
    wake_reclaimer();
}

void Limits::wake_all() {
    {
        std::lock_guard lk(mutex_);
        room_freed_.notify_all();
    }
    if (parked_.load() != 0) notify_room();
    wake_reclaimer();
}

}  // namespace swapvisor::guestmem
