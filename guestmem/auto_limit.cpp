// AutoLimit and split_budget: see auto_limit.hpp.
#include "guestmem/auto_limit.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "guestmem/addr.hpp"
#include "guestmem/limits.hpp"

namespace swapvisor::guestmem {

const char* to_string(AutoAction a) {
    switch (a) {
        case AutoAction::hold: return "hold";
        case AutoAction::probe: return "probe";
        case AutoAction::back_off: return "back-off";
    }
    return "?";
}

namespace {

std::uint64_t page_align(std::uint64_t bytes) { return bytes / kPageSize * kPageSize; }

std::string mib(std::uint64_t bytes) { return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20)); }

}  // namespace

AutoDecision AutoLimit::decide(const AutoLimitInput& in) {
    const std::uint64_t ceiling = config_.ceiling_bytes ? std::min(config_.ceiling_bytes, in.memory_bytes) : in.memory_bytes;
    const std::uint64_t floor = std::min(effective_floor(config_, in.memory_bytes), ceiling);
    auto clamp = [&](std::uint64_t v) { return page_align(std::clamp(v, floor, ceiling)); };

    if (target_ == 0) {
        // Start from the limit in force, or from what the VM holds now.
        target_ = clamp(in.limit_bytes ? in.limit_bytes : std::max(in.resident_bytes, floor));
        lagging_limit_ = target_;
        last_ = in.now;
        started_ = in.now;
        last_stall_ns_ = in.stall_some_ns;
        last_backoff_ = in.now - std::chrono::hours(1);
        last_decision_ = AutoDecision{AutoAction::hold, target_, std::nullopt, target_,
                                      fmt::format("start at {} (floor {}, ceiling {})", mib(target_), mib(floor),
                                                  mib(ceiling))};
        if (in.has_balloon) last_decision_.balloon_bytes = in.memory_bytes - target_;
        last_decision_.fresh = true;
        return last_decision_;
    }
    if (in.now - last_ < config_.interval) {  // one decision per interval
        AutoDecision same = last_decision_;
        same.fresh = false;
        return same;
    }
    // The stall over this interval, from the running total.
    const double span = static_cast<double>((in.now - last_).count());
    const double p_now =
        in.stall_some_ns >= last_stall_ns_ ? static_cast<double>(in.stall_some_ns - last_stall_ns_) / span : 0.0;
    last_ = in.now;
    last_stall_ns_ = in.stall_some_ns;

    const double t = config_.stall_target;
    const double p60 = in.stall_some_avg60;
    // The 60 s average still shows the stall that caused the last back-off for a
    // minute: no probe until it has passed (and shows the target held).
    const bool settled = in.now - last_backoff_ >= std::chrono::seconds(60);
    const bool refaulting = config_.refault_target && in.refault_ws_per_min > *config_.refault_target;
    const bool over = p_now > t || refaulting;
    // The need by the cold-age histogram (0: not fresh enough to size by).
    const bool ages_fresh = config_.cold_age.count() > 0 && in.ages_age_ms > 0 &&
                            std::chrono::milliseconds(in.ages_age_ms) <= 3 * config_.interval;
    const std::uint64_t hot_need =
        ages_fresh ? clamp(in.hot_bytes + std::max(static_cast<std::uint64_t>(static_cast<double>(in.hot_bytes) * config_.hot_margin),
                                                   config_.hot_margin_bytes))
                   : 0;
    // A drop to the need waits until the histogram's window holds no time the VM spent
    // under a limit a back-off found too small (it would have touched less then).
    const bool calm = in.now - last_backoff_ >= config_.cold_age + config_.interval && p_now <= t &&
                      in.stall_some_avg10 <= t;

    AutoDecision d;
    const std::uint64_t before = target_;
    if (over) {
        const double p = p_now;
        // Full back-off from 11x the target (a VM thrashing); a stall a little over the
        // target (the probe just went below the working set) grows the limit a little.
        const double excess = p > t ? std::min(1.0, (p - t) / (10 * t)) : 1.0;  // refaults alone: fully
        // The stall was measured under the limit in force: where the host budget held
        // the VM under its target, it says nothing about the target, and growing the
        // target on it only inflates the VM's claim (auto_bench: steady and grow
        // climbed to their whole memory while their shares stayed at 100-135 MiB, and
        // claimed the budget from the others). So grow from the limit in force.
        const std::uint64_t base = in.limit_bytes && in.limit_bytes < target_ ? in.limit_bytes : target_;
        const auto grow = std::max<std::uint64_t>(
            config_.min_backoff_bytes, static_cast<std::uint64_t>(static_cast<double>(base) * config_.backoff_ratio * excess));
        std::uint64_t grown = clamp(base + grow);
        // A VM that stalls touches its hot set within the window: where the histogram
        // is fresh and the window no longer holds the VM's start (its boot and fill,
        // which touch everything), that is what it needs, capped or not.
        if (hot_need > 0 && in.now - started_ >= config_.cold_age + config_.interval) grown = std::max(grown, hot_need);
        target_ = std::max(target_, grown);
        last_backoff_ = in.now;
        d.action = AutoAction::back_off;
        d.reason = refaulting && !(p_now > t)
                       ? fmt::format("back-off: refaults {:.4f}/min of the working set over {:.4f}; {} -> {}",
                                     in.refault_ws_per_min, *config_.refault_target, mib(before), mib(target_))
                       : fmt::format("back-off: stall {:.2f}% over the last {:.0f} s, over {:.2f}%; {} -> {}",
                                     p_now * 100, span / 1e9, t * 100, mib(before), mib(target_));
    } else if (hot_need > 0 && calm && hot_need < std::min(target_, std::max(page_align(in.resident_bytes), floor))) {
        target_ = hot_need;
        d.action = AutoAction::probe;
        d.reason = fmt::format("probe: {} touched within {} s (+ margin), stall {:.2f}% under {:.2f}%; {} -> {}",
                               mib(in.hot_bytes), config_.cold_age.count(), p_now * 100, t * 100, mib(before),
                               mib(target_));
    } else if (p60 <= t && settled) {
        // A limit above what the VM holds is free to lower to it.
        const std::uint64_t base = std::min(target_, std::max(page_align(in.resident_bytes), floor));
        const double room = 1.0 - std::max(p_now, p60) / t;  // 1 with no stall, 0 at the target
        const auto shrink = std::max<std::uint64_t>(
            room > 0 ? kMinProbe : 0, static_cast<std::uint64_t>(static_cast<double>(base) * config_.probe_ratio * room));
        // A fresh histogram says what the VM touched within cold_age: the probe does
        // not dip under it (that would be a stall by construction).
        target_ = std::max(clamp(base > shrink ? base - shrink : 0), std::min(hot_need, before));
        d.action = target_ < before ? AutoAction::probe : AutoAction::hold;
        d.reason = d.action == AutoAction::probe
                       ? fmt::format("probe: stall {:.2f}% (60 s) under {:.2f}%; {} -> {}", p60 * 100, t * 100,
                                     mib(before), mib(target_))
                       : fmt::format("hold at {}: {}", mib(target_), target_ == floor ? "at the floor" : "at the target");
    } else {
        d.action = AutoAction::hold;
        d.reason = fmt::format("hold at {}: stall {:.2f}% (60 s) settling after a back-off", mib(target_), p60 * 100);
    }
    d.target_bytes = target_;
    if (ages_fresh && in.now - started_ >= config_.cold_age + config_.interval) d.hot_bytes = in.hot_bytes;
    if (in.has_balloon) {
        // Ask the guest first: the balloon takes memory - target now; the resident
        // limit follows one interval later when it falls, at once when it rises.
        d.balloon_bytes = in.memory_bytes - target_;
        d.limit_bytes = target_ < lagging_limit_ ? lagging_limit_ : target_;
        lagging_limit_ = target_;
    } else {
        d.limit_bytes = target_;
    }
    d.fresh = true;
    last_decision_ = d;
    return d;
}

std::optional<std::uint64_t> pages_within(const AgeSnapshot& ages, std::chrono::seconds age) {
    std::optional<std::uint64_t> pages;
    for (std::size_t i = 0; i + 1 < kAgeBucketCount; ++i)
        if (kAgeBuckets[i].le_seconds <= static_cast<std::uint64_t>(age.count())) pages = ages.cumulative[i];
    return pages;
}

std::uint64_t effective_floor(const AutoLimitConfig& config, std::uint64_t memory_bytes) {
    return config.floor_bytes ? config.floor_bytes : std::max(kMinFloor, page_align(std::min(kDefaultFloor, memory_bytes / 8)));
}

BudgetClaim budget_claim(const AutoDecision& decision, const AutoLimitConfig& config, std::uint64_t memory_bytes) {
    const std::uint64_t hot_pages = decision.hot_bytes / kPageSize;
    const std::uint64_t core = decision.hot_bytes ? (hot_pages + slack_pages(hot_pages)) * kPageSize : 0;
    return BudgetClaim{decision.target_bytes, effective_floor(config, memory_bytes),
                       config.ceiling_bytes ? config.ceiling_bytes : memory_bytes, core};
}

std::vector<std::uint64_t> split_budget(std::uint64_t budget, std::span<const BudgetClaim> claims, double headroom) {
    std::vector<std::uint64_t> want(claims.size()), floor(claims.size()), ceiling(claims.size());
    for (std::size_t i = 0; i < claims.size(); ++i) {
        ceiling[i] = claims[i].ceiling_bytes ? claims[i].ceiling_bytes : UINT64_MAX;
        floor[i] = std::min(claims[i].floor_bytes, ceiling[i]);
        const auto padded = static_cast<std::uint64_t>(static_cast<double>(claims[i].need_bytes) * (1.0 + headroom));
        want[i] = std::clamp(padded, floor[i], ceiling[i]);
    }
    auto sum = [](const std::vector<std::uint64_t>& v) {
        return std::accumulate(v.begin(), v.end(), std::uint64_t{0}, [](std::uint64_t a, std::uint64_t b) {
            return b > UINT64_MAX - a ? UINT64_MAX : a + b;
        });
    };
    std::vector<std::uint64_t> share(claims.size());
    // Give `base` to each, then `rest` in proportion to weight, up to each ceiling,
    // again over those left below their ceiling until nothing is left (water filling).
    auto fill = [&](const std::vector<std::uint64_t>& base, std::vector<std::uint64_t> weight, std::uint64_t rest) {
        share = base;
        for (int round = 0; round < 8 && rest > 0; ++round) {
            std::uint64_t total = 0;
            for (std::size_t i = 0; i < share.size(); ++i)
                if (share[i] >= ceiling[i]) weight[i] = 0;
            total = sum(weight);
            if (total == 0) break;
            std::uint64_t given = 0;
            for (std::size_t i = 0; i < share.size(); ++i) {
                if (weight[i] == 0) continue;
                const auto add = static_cast<std::uint64_t>(static_cast<long double>(rest) * weight[i] / total);
                const std::uint64_t room = ceiling[i] - share[i];
                share[i] += std::min(add, room);
                given += std::min(add, room);
            }
            if (given == 0) break;
            rest -= given;
        }
    };
    std::vector<std::uint64_t> base(claims.size());
    for (std::size_t i = 0; i < claims.size(); ++i) base[i] = std::clamp(claims[i].core_bytes, floor[i], want[i]);
    const std::uint64_t wants = sum(want), bases = sum(base), floors = sum(floor);
    if (wants <= budget) {
        fill(want, want, budget - wants);
    } else if (bases <= budget) {
        std::vector<std::uint64_t> margin(claims.size());
        for (std::size_t i = 0; i < claims.size(); ++i) margin[i] = want[i] - base[i];
        fill(base, margin, budget - bases);
        for (std::size_t i = 0; i < claims.size(); ++i) share[i] = std::min(share[i], want[i]);
    } else if (floors <= budget) {
        std::vector<std::uint64_t> above(claims.size());
        for (std::size_t i = 0; i < claims.size(); ++i) above[i] = want[i] - floor[i];
        fill(floor, above, budget - floors);
        for (std::size_t i = 0; i < claims.size(); ++i) share[i] = std::min(share[i], want[i]);
    } else {
        for (std::size_t i = 0; i < claims.size(); ++i)
            share[i] = static_cast<std::uint64_t>(static_cast<long double>(floor[i]) * budget / floors);
    }
    for (auto& s : share) s = page_align(s);
    return share;
}

}  // namespace swapvisor::guestmem
