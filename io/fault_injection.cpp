// FaultPlan and FaultyBlockDevice (semantics in fault_injection.hpp and
// io/README.md#fault-injection). Invariant: the plan decides every op of a batch
// before any hook runs or anything is issued, so hit counts do not depend on how
// long hooks block; faulted ops never reach the inner device except the prefix of a
// short_io.
#include "io/fault_injection.hpp"

#include <cerrno>
#include <limits>
#include <thread>

namespace swapvisor::io {

namespace {

bool is_batch_rule(const FaultRule& r) { return std::holds_alternative<fault::Reorder>(r.action); }
bool is_pass_through(const FaultAction& a) {
    return std::holds_alternative<fault::Delay>(a) || std::holds_alternative<fault::Gate>(a);
}

void run_before(const FaultPlan::Decision& d, const BlockIo& io) {
    for (const FaultAction& a : d.before) {
        if (const auto* delay = std::get_if<fault::Delay>(&a)) std::this_thread::sleep_for(delay->duration);
        if (const auto* gate = std::get_if<fault::Gate>(&a); gate != nullptr && gate->hook) gate->hook(io);
    }
}

int outcome_errno(const FaultAction& a) { return std::holds_alternative<fault::Enospc>(a) ? ENOSPC : EIO; }

}  // namespace

FaultRuleId FaultPlan::add(FaultRule rule) {
    std::lock_guard lock(mu_);
    FaultRuleId id(next_id_++);
    entries_.push_back(Entry{id, std::move(rule)});
    return id;
}

void FaultPlan::remove(FaultRuleId id) {
    std::lock_guard lock(mu_);
    for (Entry& e : entries_)
        if (e.id == id) e.active = false;
}

void FaultPlan::clear() {
    std::lock_guard lock(mu_);
    for (Entry& e : entries_) e.active = false;
}

const FaultPlan::Entry* FaultPlan::find(FaultRuleId id) const {
    for (const Entry& e : entries_)
        if (e.id == id) return &e;
    return nullptr;
}

std::uint64_t FaultPlan::hits(FaultRuleId id) const {
    std::lock_guard lock(mu_);
    const Entry* e = find(id);
    return e != nullptr ? e->hits : 0;
}

std::uint64_t FaultPlan::matches(FaultRuleId id) const {
    std::lock_guard lock(mu_);
    const Entry* e = find(id);
    return e != nullptr ? e->matched : 0;
}

bool FaultPlan::matches_op(const FaultRule& rule, const BlockIo& io) {
    switch (rule.match) {
    case FaultMatch::read:
        if (io.kind != IoKind::read) return false;
        break;
    case FaultMatch::write:
        if (io.kind != IoKind::write) return false;
        break;
    case FaultMatch::flush:
        if (io.kind != IoKind::fsync) return false;
        break;
    case FaultMatch::any: break;
    }
    if (!rule.begin && !rule.end) return true;
    if (io.kind == IoKind::fsync) return false;
    const std::uint64_t lo = io.offset.value();
    const std::uint64_t hi = lo + std::max<std::uint64_t>(io.buf.size(), 1);
    const std::uint64_t begin = rule.begin ? rule.begin->value() : 0;
    const std::uint64_t end = rule.end ? rule.end->value() : std::numeric_limits<std::uint64_t>::max();
    return lo < end && begin < hi;
}

bool FaultPlan::take(Entry& e) {
    ++e.matched;
    if (e.matched <= e.rule.skip) return false;
    if (e.rule.times && e.hits >= *e.rule.times) return false;
    ++e.hits;
    return true;
}

FaultPlan::Decision FaultPlan::decide(const BlockIo& io) {
    Decision d;
    std::lock_guard lock(mu_);
    for (Entry& e : entries_) {
        if (!e.active || is_batch_rule(e.rule) || !matches_op(e.rule, io)) continue;
        if (!take(e)) continue;
        if (is_pass_through(e.rule.action)) {
            d.before.push_back(e.rule.action);
        } else {
            d.outcome = e.rule.action;
            break;
        }
    }
    return d;
}

bool FaultPlan::decide_reorder(std::span<const BlockIo> batch) {
    std::lock_guard lock(mu_);
    for (Entry& e : entries_) {
        if (!e.active || !is_batch_rule(e.rule)) continue;
        bool any = false;
        for (const BlockIo& io : batch) any = any || matches_op(e.rule, io);
        if (any && take(e)) return true;
    }
    return false;
}

FaultyBlockDevice::FaultyBlockDevice(std::unique_ptr<BlockDevice> inner, std::shared_ptr<FaultPlan> plan)
    : inner_(std::move(inner)), plan_(std::move(plan)) {
    SWV_ASSERT(inner_ != nullptr && plan_ != nullptr, "FaultyBlockDevice needs a device and a plan");
}

Result<void> FaultyBlockDevice::submit(Ring& ring, std::span<BlockIo> ios) {
    SWV_TRY(check_block_io(*this, ios));
    const bool reorder = plan_->decide_reorder(ios);
    std::vector<FaultPlan::Decision> decisions;
    decisions.reserve(ios.size());
    for (const BlockIo& io : ios) decisions.push_back(plan_->decide(io));

    // What really goes to the inner device: the op itself, a prefix (short_io) or
    // nothing (eio, enospc, or a short_io shorter than one block).
    const std::uint32_t block = logical_block_size();
    std::vector<std::optional<BlockIo>> issued(ios.size());
    for (std::size_t i = 0; i < ios.size(); ++i) {
        const auto& outcome = decisions[i].outcome;
        if (!outcome) {
            issued[i] = ios[i];
        } else if (const auto* s = std::get_if<fault::ShortIo>(&*outcome)) {
            std::size_t n = std::min<std::size_t>(s->bytes, ios[i].buf.size());
            n -= n % block;
            if (n > 0) issued[i] = BlockIo{ios[i].kind, ios[i].offset, ios[i].buf.first(n)};
        }
        if (issued[i]) issued[i]->result = -ECANCELED;  // until the inner device ran it
    }

    Result<void> ran;
    if (reorder) {
        for (std::size_t k = ios.size(); k-- > 0;) {
            run_before(decisions[k], ios[k]);
            if (issued[k] && ran) ran = inner_->submit(ring, std::span<BlockIo>(&*issued[k], 1));
        }
    } else {
        std::vector<BlockIo> batch;
        std::vector<std::size_t> origin;
        for (std::size_t i = 0; i < ios.size(); ++i) {
            run_before(decisions[i], ios[i]);
            if (issued[i]) {
                batch.push_back(*issued[i]);
                origin.push_back(i);
            }
        }
        if (!batch.empty()) ran = inner_->submit(ring, batch);
        for (std::size_t k = 0; k < batch.size(); ++k) issued[origin[k]] = batch[k];
    }

    for (std::size_t i = 0; i < ios.size(); ++i) {
        const auto& outcome = decisions[i].outcome;
        const int inner_result = issued[i] ? issued[i]->result : 0;
        if (!outcome) {
            ios[i].result = inner_result;
        } else if (issued[i] && inner_result < 0) {
            ios[i].result = inner_result;  // the real prefix failed: report the real error
        } else {
            ios[i].result = -outcome_errno(*outcome);
        }
    }
    return ran;
}

Result<void> FaultyBlockDevice::flush(Ring& ring) {
    BlockIo io{IoKind::fsync, DevOffset{0}, {}};
    FaultPlan::Decision d = plan_->decide(io);
    run_before(d, io);
    if (d.outcome) return errno_error("flush swap device", outcome_errno(*d.outcome), "device " + path());
    return inner_->flush(ring);
}

}  // namespace swapvisor::io
