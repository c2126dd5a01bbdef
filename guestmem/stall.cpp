// StallTracker: see stall.hpp.
#include "guestmem/stall.hpp"

#include <algorithm>

namespace swapvisor::guestmem {

StallTracker::StallTracker(unsigned vcpus, MonoTime start) : vcpus_(std::max(1u, vcpus)), last_(start) {
    threads_.push_back(Thread{0});
    ring_.push_back(Totals{start, 0, 0, 0, {0}});
}

void StallTracker::advance(MonoTime t) {
    if (t < last_) t = last_;  // callers' clocks are read outside the mutex
    const auto dt = static_cast<std::uint64_t>((t - last_).count());
    if (dt == 0) return;
    if (open_ > 0) some_ns_ += dt;
    if (open_ >= vcpus_) full_ns_ += dt;
    for (Thread& th : threads_) th.ns += th.open * dt;
    last_ = t;
}

// Between two events the totals grow linearly (the number of stalled vCPUs is
// constant), so the ring keeps the totals just before and just after each event:
// interpolating between them is then exact. Events less than kSampleEvery after the
// first of a run share one pair of points (the run's start before, its latest event
// after), which bounds the ring to two points a second.
void StallTracker::record(const Totals& before) {
    Totals after = totals_at_now();
    if (pair_open_ && after.t - pair_start_ < kSampleEvery) {
        ring_.back() = std::move(after);
    } else {
        ring_.push_back(before);
        ring_.push_back(std::move(after));
        pair_start_ = last_;
        pair_open_ = true;
    }
    // Keep the newest point at or before the longest window's start, drop older ones.
    const MonoTime horizon = last_ - kStallWindows.back();
    while (ring_.size() > 2 && ring_[1].t <= horizon) ring_.pop_front();
}

StallTracker::Totals StallTracker::totals_at_now() const {
    Totals out{last_, some_ns_, full_ns_, refaults_, {}};
    out.thread_ns.reserve(threads_.size());
    for (const Thread& th : threads_) out.thread_ns.push_back(th.ns);
    return out;
}

StallTracker::Totals StallTracker::totals_at(MonoTime t) const {
    // The newest sample at or before t; the one after it (or now) bounds the segment.
    auto after = std::upper_bound(ring_.begin(), ring_.end(), t, [](MonoTime v, const Totals& s) { return v < s.t; });
    if (after == ring_.begin()) return ring_.front();  // before the VM started: from its start
    const Totals& a = *std::prev(after);
    const Totals b = after == ring_.end() ? totals_at_now() : *after;
    if (b.t <= a.t) return a;
    const double f = static_cast<double>((t - a.t).count()) / static_cast<double>((b.t - a.t).count());
    auto lerp = [f](std::uint64_t x, std::uint64_t y) {
        return x + static_cast<std::uint64_t>(f * static_cast<double>(y - x));
    };
    // refaults jump only at points (the pair around each event), so between two
    // points they are constant: take the earlier point's.
    Totals out{t, lerp(a.some_ns, b.some_ns), lerp(a.full_ns, b.full_ns), a.refaults, {}};
    for (std::size_t i = 0; i < b.thread_ns.size(); ++i)
        out.thread_ns.push_back(lerp(i < a.thread_ns.size() ? a.thread_ns[i] : 0, b.thread_ns[i]));
    return out;
}

StallTracker::Token StallTracker::begin(std::uint32_t tid, MonoTime t) {
    std::lock_guard lock(mutex_);
    advance(t);
    const Totals before = totals_at_now();
    Token token = 0;
    if (tid != 0) {
        auto it = std::find_if(threads_.begin(), threads_.end(), [tid](const Thread& th) { return th.tid == tid; });
        if (it != threads_.end()) token = static_cast<Token>(it - threads_.begin());
        else if (threads_.size() < kMaxThreads) {
            threads_.push_back(Thread{tid});
            token = static_cast<Token>(threads_.size() - 1);
        }
    }
    ++threads_[token].open;
    ++open_;
    ++stalls_;
    record(before);
    return token;
}

void StallTracker::end(Token token, MonoTime t) {
    std::lock_guard lock(mutex_);
    advance(t);
    const Totals before = totals_at_now();
    SWV_ASSERT(token < threads_.size() && threads_[token].open > 0 && open_ > 0, "stall ended that never began");
    --threads_[token].open;
    --open_;
    record(before);
}

void StallTracker::note_refault(MonoTime t) {
    std::lock_guard lock(mutex_);
    advance(t);
    const Totals before = totals_at_now();
    ++refaults_;
    record(before);
}

StallSnapshot StallTracker::snapshot(MonoTime now) {
    std::lock_guard lock(mutex_);
    advance(now);
    const Totals cur = totals_at_now();
    StallSnapshot s;
    const MonoTime start = ring_.front().t;
    for (std::size_t w = 0; w < kStallWindows.size(); ++w) {
        const MonoTime from = std::max(start, cur.t - kStallWindows[w]);
        const Totals then = totals_at(from);
        const double span = static_cast<double>((cur.t - then.t).count());
        if (span <= 0) continue;
        s.some[w] = std::min(1.0, static_cast<double>(cur.some_ns - then.some_ns) / span);
        s.full[w] = std::min(1.0, static_cast<double>(cur.full_ns - then.full_ns) / span);
        if (kStallWindows[w] == std::chrono::seconds(60)) {
            s.refaults_per_min = static_cast<double>(cur.refaults - then.refaults) * 60e9 / span;
            for (std::size_t i = 0; i < threads_.size(); ++i) {
                const std::uint64_t before = i < then.thread_ns.size() ? then.thread_ns[i] : 0;
                if (threads_[i].tid == 0 && cur.thread_ns[i] == 0) continue;  // no unnamed stalls: no row
                s.threads.push_back(ThreadStall{threads_[i].tid,
                                                static_cast<double>(cur.thread_ns[i] - before) / span,
                                                cur.thread_ns[i]});
            }
        }
    }
    s.some_ns = some_ns_;
    s.full_ns = full_ns_;
    s.stalls = stalls_;
    s.refaults = refaults_;
    return s;
}

}  // namespace swapvisor::guestmem
