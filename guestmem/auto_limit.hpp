// AutoLimit: the decision engine of `resident-limit=auto` (guestmem/README.md#auto-limits).
// Pure: fed one VM's measurements (memory stall, refault rate, resident, working set),
// it returns the limit to set and why, and keeps nothing but its own target and
// timers, so it runs the same on a live VM (AutoLimitDriver) and on a simulated one
// (tests/guestmem/auto_limit_test.cpp).
//
// Senpai's shape (Meta's userspace memory sizer):
//   - the stall that decides is `some` over the last interval (from the tracker's
//     running total: no averaging lag), with the 60 s average as the slow check;
//   - while both are under the target and the last back-off is a minute old, probe
//     down slowly: every interval, shrink by probe_ratio of the limit, scaled by how
//     far under the target the stall is (no shrink at the target);
//   - when the last interval's stall is over the target (or the refault rate is over
//     its optional target), back off fast: grow by backoff_ratio of the limit, scaled
//     by how far over (fully from 11x the target), at least min_backoff_bytes. (A
//     10 s average would keep a burst in view for 10 s and back off on it ten times.)
//   - never below floor, never above ceiling; a limit above what the VM uses costs
//     nothing to lower, so a probe starts from min(limit, resident).
//   - sized by the cold-age histogram where it is fresh (far memory's rule, DESIGN-NOTES
//     58): what the VM touched within `cold_age` (30 s), plus a margin, is its need.
//     With no back-off for cold_age + one interval and the last interval and 10 s under
//     the target, the target drops to that need at once instead of 1 % per interval;
//     the slow probe never goes under that need. A back-off grows by Senpai's step
//     from the limit in force (where the host budget holds the VM under its target,
//     the stall says nothing about the target), and to at least the need once the
//     window no longer holds the VM's start (a boot or fill touches everything: sizing
//     by it then gave every VM its whole memory as a claim; DESIGN-NOTES 58).
//   - with a balloon, a probe first asks the guest (balloon = memory - new target)
//     and lowers the resident limit one interval later, so the guest gives back
//     pages it chooses before the host swaps any; a back-off deflates and raises at once.
//
// split_budget divides a host budget among auto VMs by measured need + headroom.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "guestmem/access_age.hpp"

namespace swapvisor::guestmem {

struct AutoLimitConfig {
    double stall_target = 0.01;              // `some` share of wall time over 60 s (1 %)
    std::optional<double> refault_target;    // refaults per minute / working-set pages
    // Never below (clamped to the ceiling); 0: effective_floor's default,
    // min(64 MiB, memory / 8), at least 16 MiB.
    std::uint64_t floor_bytes = 0;
    std::uint64_t ceiling_bytes = 0;         // never above; 0: the VM's memory size
    std::chrono::seconds interval{5};        // one decision per interval
    double probe_ratio = 0.01;               // largest shrink per interval, of the limit
    double backoff_ratio = 0.25;             // largest growth per interval, of the limit
    std::uint64_t min_backoff_bytes = 16ULL << 20;  // smallest growth of a back-off
    // The cold-age sizing: pages touched within cold_age (a bucket bound of
    // kAgeBuckets; 0: off, Senpai's probe alone) are the need, plus
    // max(hot_margin of it, hot_margin_bytes). Used only while the histogram's last
    // sweep is at most 3 intervals old (the age scan runs every 5 s on auto VMs).
    std::chrono::seconds cold_age{30};
    double hot_margin = 0.1;
    std::uint64_t hot_margin_bytes = 8ULL << 20;
};

// Touched pages accessed within `age` by the histogram: the cumulative count of the
// largest bucket bound <= age (nullopt: age is below the first bound).
std::optional<std::uint64_t> pages_within(const AgeSnapshot& ages, std::chrono::seconds age);

// The floor a VM of `memory_bytes` gets under `config` (before the ceiling): its
// floor_bytes, or by default min(kDefaultFloor, memory / 8), at least kMinFloor. A
// fixed 64 MiB was a fifth of a 288 MiB VM: auto_bench's three small VMs sat at it
// and, floors being served first, held most of the host budget from the one that
// stalled. kMinFloor is the smallest limit vmm lets an operator set
// (vmm::kMinMemoryLimit): below it a vCPU may livelock on its own page faults.
inline constexpr std::uint64_t kDefaultFloor = 64ULL << 20;
inline constexpr std::uint64_t kMinFloor = 16ULL << 20;
std::uint64_t effective_floor(const AutoLimitConfig& config, std::uint64_t memory_bytes);

struct AutoLimitInput {
    MonoTime now{0};
    std::uint64_t memory_bytes = 0;
    std::uint64_t limit_bytes = 0;     // in force now (0: none)
    std::uint64_t resident_bytes = 0;
    std::uint64_t working_set_bytes = 0;
    std::uint64_t stall_some_ns = 0;   // `some` stall since the VM started (the tracker's total)
    double stall_some_avg10 = 0;       // fractions of wall time
    double stall_some_avg60 = 0;
    double refault_ws_per_min = 0;
    bool has_balloon = false;
    // The cold-age histogram's view: bytes touched within config.cold_age (the driver
    // reads them with pages_within) and how old its last full sweep is (0: none yet,
    // then the engine probes as Senpai does).
    std::uint64_t hot_bytes = 0;
    std::uint64_t ages_age_ms = 0;
};

enum class AutoAction : std::uint8_t { hold, probe, back_off };  // a cold-age drop is a probe
const char* to_string(AutoAction a);

struct AutoDecision {
    AutoAction action = AutoAction::hold;
    std::uint64_t limit_bytes = 0;                   // the resident limit to set
    std::optional<std::uint64_t> balloon_bytes;      // what the balloon should hold (with one)
    std::uint64_t target_bytes = 0;                  // the engine's target (limit lags it with a balloon)
    std::string reason;                              // one line, for logs and stats
    bool fresh = false;                              // made by this call (else the last one, repeated)
    // What the VM touched within cold_age, without the margin, where the histogram is
    // fresh and its window no longer holds the VM's start (0: not known). The budget
    // split covers it first when the targets do not fit (split_budget).
    std::uint64_t hot_bytes = 0;
};

class AutoLimit {
public:
    static constexpr std::uint64_t kMinProbe = 1ULL << 20;

    explicit AutoLimit(AutoLimitConfig config) : config_(config) {}
    // One decision; call it every interval or more often (it holds in between).
    AutoDecision decide(const AutoLimitInput& in);
    const AutoLimitConfig& config() const { return config_; }
    std::uint64_t target_bytes() const { return target_; }

private:
    AutoLimitConfig config_;
    std::uint64_t target_ = 0;          // 0: not started
    std::uint64_t lagging_limit_ = 0;   // with a balloon: the limit set one interval behind
    MonoTime last_{0};
    MonoTime started_{0};               // the first decision
    std::uint64_t last_stall_ns_ = 0;   // the input's stall_some_ns at last_
    MonoTime last_backoff_{0};
    AutoDecision last_decision_;
};

// One VM's claim on the host budget.
struct BudgetClaim {
    std::uint64_t need_bytes = 0;   // measured need: the engine's target (budget_claim)
    std::uint64_t floor_bytes = 0;
    std::uint64_t ceiling_bytes = 0;
    // The hot set and the reclaimer's slack under a limit (a limit this much over the
    // hot set keeps it resident: the reclaimer works down to limit - slack); 0: not known.
    std::uint64_t core_bytes = 0;
};

// An auto VM's claim: its engine's target (AutoDecision::target_bytes, the
// stall-driven estimate of what it needs), with its floor and its ceiling (0: its
// memory size). Not the working set: measured over 120 s, it counts a page touched
// once (a boot, a fill, a backup pass) for two minutes, and while every VM claims all
// it touched the budget is split by memory size again (DESIGN-NOTES 54).
BudgetClaim budget_claim(const AutoDecision& decision, const AutoLimitConfig& config, std::uint64_t memory_bytes);

// Shares of `budget_bytes`, one per claim: need * (1 + headroom) clamped to
// [floor, ceiling] is each VM's want, its core clamped to [floor, want] its base. If
// the wants fit, each gets its want and the rest is split in proportion to the wants
// (up to each ceiling); if not but the bases fit, each gets its base and the rest in
// proportion to (want - base): the margins are what a tight budget takes, not the hot
// sets (a sweeping guest a few MiB under its hot set runs as slowly as one far under
// it: DESIGN-NOTES 61); if not even those fit, each gets its floor and the rest in
// proportion to (want - floor); if even the floors do not fit, the floors are scaled
// down alike. So a VM whose want the budget can hold is never given less than it,
// whatever its memory size.
std::vector<std::uint64_t> split_budget(std::uint64_t budget_bytes, std::span<const BudgetClaim> claims,
                                        double headroom);

}  // namespace swapvisor::guestmem
