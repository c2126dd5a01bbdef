// AutoLimitDriver: see auto_limit_driver.hpp.
#include "guestmem/auto_limit_driver.hpp"

#include <vector>

#include <spdlog/spdlog.h>

#include "guestmem/addr.hpp"

namespace swapvisor::guestmem {

namespace {

void log_enabled(const std::string& vm, const AutoLimitConfig& config) {
    spdlog::info("{}: resident limit auto (stall target {:.2f}%, floor {}, ceiling {})", vm,
                 config.stall_target * 100,
                 config.floor_bytes ? fmt::format("{} MiB", config.floor_bytes >> 20) : "min(64 MiB, memory / 8), at least 16 MiB",
                 config.ceiling_bytes ? fmt::format("{} MiB", config.ceiling_bytes >> 20) : "memory size");
}

}  // namespace

AutoLimitDriver::AutoLimitDriver(HostMemory& host, AutoLimitHooks hooks) : host_(host), hooks_(std::move(hooks)) {}

AutoLimitDriver::~AutoLimitDriver() { stop(); }

void AutoLimitDriver::set_defaults(AutoLimitConfig config, bool all_unlimited) {
    std::lock_guard lock(mutex_);
    defaults_ = config;
    all_unlimited_ = all_unlimited;
}

void AutoLimitDriver::enable(const std::string& vm, AutoLimitConfig config) {
    {
        std::lock_guard lock(mutex_);
        vms_.insert_or_assign(vm, Vm{AutoLimit(config), std::nullopt, true});
        seen_.insert(vm);
    }
    log_enabled(vm, config);
    if (VmRef ref = host_.find(vm)) ref->set_limit_note("auto", "starting");
}

void AutoLimitDriver::disable(const std::string& vm) {
    {
        std::lock_guard lock(mutex_);
        if (vms_.erase(vm) == 0) return;
    }
    if (VmRef ref = host_.find(vm)) ref->set_limit_note("manual", "");
}

bool AutoLimitDriver::is_auto(const std::string& vm) const {
    std::lock_guard lock(mutex_);
    return vms_.contains(vm);
}

void AutoLimitDriver::step(MonoTime now) {
    struct Work {
        VmRef vm;
        MemStats stats;
        AutoDecision decision;
        std::optional<std::uint64_t> applied_balloon;
        bool overridden = false;
    };
    std::vector<Work> work;
    std::uint64_t others = 0;  // resident memory of the VMs not on auto (taken off the budget first)
    std::vector<std::pair<std::string, AutoLimitConfig>> adopted;
    {
        std::vector<VmRef> vms = host_.vms();
        std::vector<MemStats> stats;
        std::vector<std::uint64_t> sets;  // read before the stats: a set after them shows next step
        for (const VmRef& vm : vms) {
            sets.push_back(vm->resident_limit_sets());
            stats.push_back(vm->stats());
        }
        std::lock_guard lock(mutex_);
        auto listed = [&](const std::string& name) {
            return std::any_of(vms.begin(), vms.end(), [&](const VmRef& v) { return v->name() == name; });
        };
        std::erase_if(vms_, [&](const auto& kv) { return !listed(kv.first); });
        std::erase_if(seen_, [&](const std::string& name) { return !listed(name); });
        // New VMs that asked for auto (or have no limit, under --auto-limits).
        for (std::size_t i = 0; i < vms.size(); ++i) {
            const std::string& name = vms[i]->name();
            if (!seen_.insert(name).second) continue;
            if (!vms[i]->auto_limit_requested() && !(all_unlimited_ && stats[i].resident_limit == 0)) continue;
            const AutoLimitConfig config = vms[i]->auto_limit_config().value_or(defaults_);
            vms_.insert_or_assign(name, Vm{AutoLimit(config), std::nullopt, true});
            adopted.emplace_back(name, config);
        }
        for (std::size_t i = 0; i < vms.size(); ++i) {
            const MemStats& s = stats[i];
            auto it = vms_.find(s.name);
            if (it == vms_.end()) {
                others += s.resident_limit ? std::min(s.resident_limit, s.resident_bytes) : s.resident_bytes;
                continue;
            }
            Vm& state = it->second;
            if (!state.limit_sets) state.limit_sets = sets[i];
            // Set by hand: a set_resident_limit since the driver took the VM, even of the
            // value the driver had set (the driver's own sets are replace_resident_limit,
            // which does not count, so nothing else changes the limit).
            if (sets[i] != *state.limit_sets) {
                work.push_back(Work{vms[i], s, {}, {}, true});
                vms_.erase(it);
                continue;
            }
            const bool balloon = hooks_.set_balloon && state.balloon;
            AutoLimitInput in{now,
                              s.memory_bytes,
                              s.resident_limit,
                              s.resident_bytes,
                              s.working_set_bytes,
                              s.stall_some_ns,
                              s.stall_some_avg10,
                              s.stall_some_avg60,
                              s.refault_ws_per_min,
                              balloon,
                              pages_within(s.cold_age_seconds, state.engine.config().cold_age).value_or(0) * kPageSize,
                              s.age_scan_age_ms};
            work.push_back(Work{vms[i], s, state.engine.decide(in), state.applied_balloon, false});
        }
        // The host budget, split among the auto VMs by measured need.
        const std::uint64_t budget = host_.budget();
        if (budget > 0) {
            std::vector<BudgetClaim> claims;
            std::vector<Work*> auto_work;
            for (Work& w : work) {
                if (w.overridden) continue;
                const AutoLimitConfig& c = vms_.at(w.stats.name).engine.config();
                claims.push_back(budget_claim(w.decision, c, w.stats.memory_bytes));
                auto_work.push_back(&w);
            }
            const std::uint64_t room = budget > others ? budget - others : 0;
            const std::vector<std::uint64_t> shares = split_budget(room, claims, kBudgetHeadroom);
            for (std::size_t i = 0; i < auto_work.size(); ++i) {
                AutoDecision& d = auto_work[i]->decision;
                if (shares[i] >= d.limit_bytes) continue;
                d.reason += fmt::format("; host budget share {:.1f} MiB", static_cast<double>(shares[i]) / (1 << 20));
                d.limit_bytes = shares[i];
                d.fresh = d.fresh || auto_work[i]->stats.resident_limit != shares[i];
            }
        }
        for (Work& w : work) {
            if (w.overridden) continue;
            if (w.decision.balloon_bytes) vms_.at(w.stats.name).applied_balloon = w.decision.balloon_bytes;
        }
    }
    // Apply, without the driver's lock.
    if (hooks_.before_apply) hooks_.before_apply();
    for (const auto& [name, config] : adopted) log_enabled(name, config);
    for (Work& w : work) {
        const std::string& name = w.stats.name;
        if (w.overridden) {
            spdlog::info("{}: resident limit set to {} bytes by hand; auto off", name, w.stats.resident_limit);
            w.vm->set_limit_note("manual", "auto off: the limit was set by hand");
            continue;
        }
        const AutoDecision& d = w.decision;
        // Only over the limit this step read: one set by hand since stays, and the next
        // step takes the VM off auto for it (resident_limit_sets moved).
        if (d.limit_bytes != w.stats.resident_limit && !w.vm->replace_resident_limit(w.stats.resident_limit, d.limit_bytes))
            continue;
        if (d.balloon_bytes && d.balloon_bytes != w.applied_balloon && !hooks_.set_balloon(name, *d.balloon_bytes)) {
            std::lock_guard lock(mutex_);
            if (auto it = vms_.find(name); it != vms_.end()) it->second.balloon = false;  // none: limits only
        }
        if (!d.fresh) continue;
        const std::string note = fmt::format("{}: {}", to_string(d.action), d.reason);
        if (d.limit_bytes != w.stats.resident_limit || d.action != AutoAction::hold) spdlog::info("{}: auto limit {}", name, d.reason);
        else spdlog::debug("{}: auto limit {}", name, d.reason);
        w.vm->set_limit_note("auto", note);
    }
}

void AutoLimitDriver::start(std::chrono::milliseconds period) {
    if (thread_.joinable()) return;
    thread_ = std::thread([this, period] {
        std::unique_lock lock(mutex_);
        while (!stopping_) {
            lock.unlock();
            step(mono_now());
            lock.lock();
            wake_.wait_for(lock, period, [this] { return stopping_; });
        }
    });
}

void AutoLimitDriver::stop() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
}

}  // namespace swapvisor::guestmem
