// Limits: the one reclaim policy of guestmem (guestmem/README.md#reclaim). Every
// question "how much may this VM hold, when does the reclaimer start and stop, may
// this fault add a page now, how much can swapoff bring back, should a swap-in keep
// its clean copy" is answered here, for the reclaimer, the fault path and
// HostMemory alike.
//
//   resident pages
//     ^
//     | limit ............ a fault that adds a page waits here (throttle)
//     | limit - slack/2 .. high watermark: the reclaimer wakes above it
//     | limit - slack .... low watermark: the reclaimer works down to it
//     |                    slack = clamp(limit / 32, 64, 4096) pages
//
// The limit in force ("effective") is the VM's own, or its share of the host budget
// (proportional to memory size) while the host as a whole is over budget, so an idle
// neighbour's unused share is not wasted.
//
// A limit that cannot be held (no swap device, swap full, every write failing,
// nothing evictable) is not a reason to stall the guest: the reclaimer reports it
// (cannot_hold), the VM then runs over its limit at full speed — faults no longer
// wait, each page added over the limit is counted, the state and its reason are in
// the stats — and the reclaimer retries on a back-off instead of sweeping. Freeing
// something is not enough to end that episode (a few clean drops while every write
// fails would bring back 2 s throttle waits on every fault): the limit counts as held
// again (held_again) only once a retry has brought resident memory down to the low
// watermark (reclaim_done) and the writes it queued have completed.
//
// Threads: any. Occupancy is written only by PageLock (transitions.cpp); the rest are
// atomics, plus one mutex for the throttled faulters' sleep. The reclaimer is no
// thread of its own (reclaim_service.hpp): Limits tells it that there may be work
// through a ReclaimWaker, and the scan step asks next_retry() for its back-off.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>

namespace swapvisor::guestmem {

// Slack under a limit of `limit` pages (see the diagram).
std::uint64_t slack_pages(std::uint64_t limit);

// How much of a VM is in memory and in swap. Written only by PageLock on release,
// from the (from, to) states of the page, so the counts match the table by
// construction (README invariants).
struct Occupancy {
    std::atomic<std::uint64_t> resident{0};  // entries in a present state
    std::atomic<std::uint64_t> peak{0};
    std::atomic<std::uint64_t> swapped{0};   // entries in `swapped`
};

// The host budget over every VM of one process (HostMemory owns it).
class HostBudget {
public:
    explicit HostBudget(std::uint64_t budget_bytes) : budget_bytes_(budget_bytes) {}
    void set_budget(std::uint64_t bytes) { budget_bytes_ = bytes; }
    std::uint64_t budget_bytes() const { return budget_bytes_; }
    std::uint64_t resident_pages() const { return resident_pages_.load(std::memory_order_relaxed); }
    // Host memory held outside guest RAM that the budget covers too: the swap pool's
    // compressed memory tiers (swap/README.md#tiers). Set once, before any VM.
    void count_also(std::function<std::uint64_t()> bytes) { also_bytes_ = std::move(bytes); }
    // What the budget is measured against: resident guest pages plus those bytes, in pages.
    std::uint64_t charged_pages() const;
    // Budget in force and (nearly: slack/2) exceeded, so reclaim starts early.
    bool over_budget() const;
    // A VM's share while over budget (0: no budget, or not over it).
    std::uint64_t share_pages(std::uint64_t vm_memory_bytes) const;
    // Pages the host could still take (unbounded without a budget).
    std::uint64_t room_pages() const;

    void vm_added(std::uint64_t memory_bytes) { memory_bytes_.fetch_add(memory_bytes, std::memory_order_relaxed); }
    void vm_removed(std::uint64_t memory_bytes) { memory_bytes_.fetch_sub(memory_bytes, std::memory_order_relaxed); }
    // Relaxed: a statistic summed from every VM's PageLock releases; readers need no order.
    void note_added(std::uint64_t pages) { resident_pages_.fetch_add(pages, std::memory_order_relaxed); }
    void note_freed(std::uint64_t pages) { resident_pages_.fetch_sub(pages, std::memory_order_relaxed); }

private:
    std::atomic<std::uint64_t> budget_bytes_;
    std::atomic<std::uint64_t> resident_pages_{0};
    std::atomic<std::uint64_t> memory_bytes_{0};
    std::function<std::uint64_t()> also_bytes_;
};

// Whether a swap-in keeps its slot as a clean copy (write-protected): adaptive, per
// VM (guestmem/README.md#clean-copies).
enum class CleanOutcome : bool { reused, dirtied };
class CleanCopyPolicy {
public:
    static constexpr std::uint64_t kWindow = 1024;     // outcomes per decision
    static constexpr std::uint64_t kSampleEvery = 8;   // swap-ins still tracked while off
    explicit CleanCopyPolicy(bool available) : available_(available) {}
    bool want_clean();
    void note(CleanOutcome outcome);
    bool tracking() const { return tracking_.load(std::memory_order_relaxed); }

private:
    const bool available_;  // UFFD WP on shmem: without it there are no clean copies
    // Relaxed throughout: the decision is a hint; racing updaters may evaluate one
    // window twice.
    std::atomic<bool> tracking_{true};
    std::atomic<std::uint64_t> decisions_{0};
    std::atomic<std::uint64_t> dirtied_{0};
    std::atomic<std::uint64_t> reused_{0};
};

// Told that this VM may have reclaim work now (GuestMemory::Impl: signals the
// reclaim service). Called from any thread, often (page releases): must be cheap.
class ReclaimWaker {
public:
    virtual void wake_reclaim() = 0;

protected:
    ~ReclaimWaker() = default;
};

// Told that faults parked for room may go now (GuestMemory::Impl: kicks the fault
// service, fault_service.hpp). Called from any thread while faults are parked.
class RoomListener {
public:
    virtual void room_made() = 0;

protected:
    ~RoomListener() = default;
};

// Why a limit is not being held (none: it is).
enum class OverReason : std::uint8_t { none, no_swap, swap_full, swap_failing, nothing_evictable, swap_quota };
const char* to_string(OverReason r);

class Limits {
public:
    // How long a fault that would add a page waits for room before it runs over.
    static constexpr std::chrono::milliseconds kThrottleBound{2000};
    // The reclaimer re-checks this often even without a wake-up.
    static constexpr std::chrono::milliseconds kReclaimTick{50};
    // While the limit cannot be held: first retry after kRetryFirst, doubling to kRetryMax.
    static constexpr std::chrono::milliseconds kRetryFirst{250};
    static constexpr std::chrono::milliseconds kRetryMax{4000};

    Limits(Occupancy& occupancy, HostBudget* host, std::uint64_t memory_bytes, std::uint64_t limit_bytes);

    void set_limit_bytes(std::uint64_t bytes);
    // set_limit_bytes only if the limit is still `expected` bytes; false (nothing
    // changed) if someone set another one since it was read.
    bool replace_limit_bytes(std::uint64_t expected, std::uint64_t bytes);
    // How many times set_limit_bytes ran (not replace_limit_bytes): a controller that
    // sets limits with replace tells by it that someone set one, even the same value.
    std::uint64_t limit_sets() const { return limit_sets_.load(std::memory_order_acquire); }
    // Per-VM swap quota on the shared pool (0 = none): at most this many pages of the
    // VM live only in swap, so one VM cannot fill the pool for all.
    void set_swap_quota_bytes(std::uint64_t bytes);
    std::uint64_t swap_quota_pages() const { return quota_pages_.load(std::memory_order_relaxed); }
    // Pages the VM may still write to swap (unbounded without a quota).
    std::uint64_t swap_quota_room() const;
    std::uint64_t limit_pages() const { return limit_pages_.load(std::memory_order_relaxed); }
    std::uint64_t memory_bytes() const { return memory_bytes_; }
    // The VM's own limit or its host share, whichever is lower; 0 = unlimited.
    std::uint64_t effective_limit() const;
    // At or above the limit: a fault that adds a page must wait.
    bool over_limit() const;
    // At the limit and holding it: no page may be added ahead of need (fault-around,
    // readahead). False while the limit cannot be held: the VM then runs at full speed.
    bool holding_at_limit() const { return over_limit() && over_reason_.load() == OverReason::none; }
    // Above the high watermark: the reclaimer has work.
    bool needs_reclaim() const;
    // At or below the low watermark (or unlimited): the reclaimer may stop.
    // `leaving`: resident pages already on their way out (queued writebacks).
    bool reclaim_done(std::uint64_t leaving = 0) const;
    // Pages this VM can take back (swapoff bring-back) without going over its limit.
    std::uint64_t bring_back_room() const;

    // PageLock's hooks (any thread).
    void pages_added(std::uint64_t n);
    void pages_freed(std::uint64_t n);

    // Throttle: block a faulting thread while over the limit, bounded by
    // kThrottleBound; returns false if it gave up (the VM runs over its limit).
    // Returns true at once while the limit cannot be held.
    bool wait_for_room(const std::atomic<bool>& stopping);
    // Faults waiting for room now (in wait_for_room, or parked by the fault service):
    // the reclaim service serves this VM first.
    bool faults_waiting() const { return throttled_.load(std::memory_order_relaxed) != 0 || parked_.load() != 0; }
    // The fault service parked (+1) or served / dropped (-1) a fault that waits for
    // room instead of blocking in wait_for_room. While one is parked, room made (a
    // page freed under the limit, the limit raised, cannot_hold, stop) tells the
    // listener.
    void note_parked(int delta);
    void set_room_listener(RoomListener* listener) { room_listener_.store(listener); }

    // The reclaimer (reclaim_service.hpp): who is told of work (null: nobody). Set
    // when the VM's reclaim starts, cleared once it stopped.
    void set_waker(ReclaimWaker* waker) { waker_.store(waker); }
    // Someone said things changed (set-limit, budget, quota) since the last call.
    bool take_kick() { return kicked_.exchange(false); }
    bool kicked() const { return kicked_.load(); }
    // While the limit cannot be held: how long until the next retry (doubling, from
    // kRetryFirst after cannot_hold to kRetryMax). Reclaim step only.
    std::chrono::milliseconds next_retry();

    // The reclaimer's verdicts. cannot_hold returns true when it starts an episode
    // (log it once); held_again returns true when it ends one.
    bool cannot_hold(OverReason why);
    bool held_again();
    OverReason over_reason() const { return over_reason_.load(); }
    // Pages added while over the limit that could not be held.
    std::uint64_t overshoot_events() const { return overshoots_.load(std::memory_order_relaxed); }
    void note_overshoot() { overshoots_.fetch_add(1, std::memory_order_relaxed); }
    // Wake the reclaimer / throttled faulters (limit changed, stopping, room made).
    void kick_reclaimer();
    void wake_all();
    void wake_reclaimer();

private:
    Occupancy& occupancy_;
    HostBudget* host_;  // null for a VM outside a HostMemory (tests)
    const std::uint64_t memory_bytes_;
    std::atomic<std::uint64_t> limit_pages_;  // 0 = unlimited
    std::atomic<std::uint64_t> limit_sets_{0};
    std::atomic<std::uint64_t> quota_pages_{0};  // 0 = no swap quota
    // Protects: retry_ and the throttle's wait (its predicate reads atomics);
    // notifies are made holding it so a wake-up between a waiter's check and its
    // sleep is not lost. Order: leaf, never held with a page lock.
    std::mutex mutex_;
    std::condition_variable room_freed_;    // throttled faulters: resident dropped
    // Sleepers on room_freed_. seq_cst, pairs with the seq_cst counter updates in
    // pages_added / pages_freed: a notifier that reads 0 here ran before the
    // sleeper's increment, so the sleeper's predicate sees the new count.
    std::atomic<std::uint32_t> sleepers_{0};
    // Faults in wait_for_room. Relaxed: a scheduling hint for the reclaim service.
    std::atomic<std::uint32_t> throttled_{0};
    std::atomic<ReclaimWaker*> waker_{nullptr};
    // Parked faults. seq_cst: pages_freed lowers resident, then reads this; a parker
    // raises this, then reads resident (over_limit): one of them sees the other.
    std::atomic<std::uint32_t> parked_{0};
    std::atomic<RoomListener*> room_listener_{nullptr};
    void notify_room();
    std::atomic<OverReason> over_reason_{OverReason::none};
    std::atomic<bool> kicked_{false};                 // reclaimer: retry now
    std::chrono::milliseconds retry_{kRetryFirst};
    std::atomic<std::uint64_t> overshoots_{0};
    void notify_sleepers(std::condition_variable& cv);
};

}  // namespace swapvisor::guestmem
