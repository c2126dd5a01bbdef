// Reclaim of one VM: keeps its resident pages under the limit Limits puts in force.
// CLOCK over access samples (guestmem/README.md#reclaim): the hand zaps a resident
// page from the guest view (deactivate, 4); a guest touch before the hand comes back
// is a MINOR fault that makes it resident again (recently used); a page still
// inactive when the hand returns is cold and is evicted:
//
//   inactive, clean copy in swap  -> swapped(vslot)    no write   (drop_cold, 9)
//   inactive, all zero bytes      -> zero              no write   (evict_cold / drop_cold, 8)
//   inactive, otherwise           -> writeback -> swapped(new vslot)  (evict_cold 5,
//                                                                      finish_writeback 7)
//
// A cold dirty page is copied out of the memfd with its run into the batch's staging
// buffer (staging.hpp); the zero check and the checksum are one pass over the copy,
// and the copy is what is written: the VMM view is not touched.
//
// No thread of its own: the VM is a client of the host-wide ReclaimService
// (reclaim_service.hpp), whose workers run its units one at a time — a scan step
// (scan_step: one CLOCK pass of kScanChunk entries that zaps and punches as runs and
// queues a batch of up to kBatch writebacks, or the verdict after an episode) or a
// queued batch (write_batch: one write_out, the pool turning contiguous pages into
// large writes, several in flight, then finish_writeback: rows 7 / 7', punched as
// runs). One worker scans a VM at a time; up to max_writers() write its batches, so
// the scan of the next batch overlaps the write of this one, as the per-VM scanner
// and writeback threads did before. No page lock is held across a write, and a
// worker never waits for a VM's queue: a step that would have to wait is simply not
// ready (scan_ready) until a completion signals the VM again.
#include <algorithm>
#include <optional>
#include <vector>

#include <spdlog/spdlog.h>

#include "guestmem/guest_memory_impl.hpp"
#include "guestmem/writeback_queue.hpp"

namespace swapvisor::guestmem {
namespace {

constexpr std::size_t kBatch = kStagingPages;  // pages per write_out (2 MiB), one staging buffer
constexpr std::uint64_t kScanChunk = 512; // entries visited per pass

}  // namespace

// Why swap cannot take a page now, from the pool's device list (none: it can).
OverReason GuestMemory::Impl::swap_verdict() const {
    if (!pool) return OverReason::no_swap;
    const auto devices = pool->stats();
    if (devices.empty()) return OverReason::no_swap;
    if (limits.swap_quota_room() == 0) return OverReason::swap_quota;
    bool unhealthy = false;  // devices that take no new slots: failed (ENOSPC) or degraded
    for (const auto& d : devices) {
        if (d.state != swap::DeviceState::active) {
            unhealthy |= d.state != swap::DeviceState::removing;
            continue;
        }
        if (d.free_slots > 0) return OverReason::none;
    }
    return unhealthy ? OverReason::swap_failing : OverReason::swap_full;
}

// One batch: written with one write_out and completed (rows 7 / 7'). Every batch the
// scan step queues is written and completed, including those queued before a stop
// (their pages are in writeback and must end swapped or inactive again).
void GuestMemory::Impl::write_batch(std::vector<Writeback>& batch, io::Ring* ring) {
    std::optional<swap::Errc> error;
    bool batch_ok = false;
    if (ring != nullptr) {
        std::vector<swap::PageOut> outs;
        outs.reserve(batch.size());
        for (const Writeback& wb : batch) outs.push_back(wb.out);
        const auto written = pool->write_out(*ring, outs);
        for (std::size_t k = 0; k < batch.size(); ++k) {
            batch[k].out = outs[k];
            if (!outs[k].ok() && !error) error = outs[k].error;
        }
        if (!written && !error) error = swap::Errc::no_space;
        batch_ok = written.has_value();
    } else {
        error = swap::Errc::io_failed;  // no ring: every page goes back to inactive (7')
    }
    const std::uint64_t freed = tr.finish_writeback(batch, batch_ok);
    writeback_queue->done(batch.size(), freed, error);
}

// The age scan (access_age.hpp, README#working-set): while the reclaimer is idle the
// hand still sweeps every page once per age_scan_period, zapping resident pages (row
// 4) so that the next access is seen as a MINOR fault, and evicting nothing (with a
// sample of N, only the resident pages of this sweep's groups: AgeSampling). Paced by
// elapsed time, in steps of at least kScanChunk entries.
void GuestMemory::Impl::age_step(WritebackQueue& writer) {
    if (age_scan_period.count() <= 0) return;
    const MonoTime now = mono_now();
    if (last_age_step.count() == 0) last_age_step = now;
    age_credit += static_cast<double>(table.pages()) * static_cast<double>((now - last_age_step).count()) /
                  static_cast<double>(age_scan_period.count());
    last_age_step = now;
    if (age_credit < static_cast<double>(std::min<std::uint64_t>(kScanChunk, table.pages()))) return;
    auto entries = static_cast<std::uint64_t>(age_credit);
    age_credit -= static_cast<double>(entries);
    // In chunks: a pass holds the locks of the resident pages it zaps until its flush.
    while (entries > 0 && !stopping.load(std::memory_order_relaxed)) {
        const std::uint64_t n = std::min(entries, kScanChunk);
        (void)reclaim_pass(writer, PassMode::age_only, n);
        entries -= n;
    }
}

// --- the VM as a client of the reclaim service ---------------------------------------

namespace {

MonoTime due_after(MonoTime now, std::chrono::milliseconds wait) {
    return now + std::chrono::duration_cast<std::chrono::nanoseconds>(wait);
}

}  // namespace

void GuestMemory::Impl::start_reclaim() {
    {
        std::lock_guard lk(reclaim_mutex);
        reclaim_stopping = false;
    }
    limits.set_waker(this);
    service->attach(*this);
    reclaim_attached = true;
}

// VM exit: no new scan step; every batch queued is still written and completed (its
// pages are in writeback), then the VM leaves the service once no worker is in it.
void GuestMemory::Impl::stop_reclaim() {
    if (!reclaim_attached) return;
    {
        std::lock_guard lk(reclaim_mutex);
        reclaim_stopping = true;
    }
    service->signal(*this);  // the batches still queued
    {
        std::unique_lock lk(reclaim_mutex);
        reclaim_quiet.wait(lk, [&] { return !scanning && writers == 0 && writeback_queue->idle(); });
    }
    service->detach(*this);
    limits.set_waker(nullptr);
    reclaim_attached = false;
}

void GuestMemory::Impl::wake_reclaim() { service->signal(*this); }

bool GuestMemory::Impl::urgent() const { return limits.faults_waiting() || limits.holding_at_limit(); }

bool GuestMemory::Impl::due(MonoTime now) const {
    return now.count() >= idle_due_ns.load(std::memory_order_relaxed) || writeback_queue->has_queued();
}

// Under reclaim_mutex: may the scan step run now?
bool GuestMemory::Impl::scan_ready(MonoTime now) const {
    switch (phase) {
        case Phase::idle:
            if (now.count() >= idle_due_ns.load(std::memory_order_relaxed)) return true;
            // Not holdable: no sweeping until a retry is due or someone says things changed.
            return limits.over_reason() == OverReason::none ? limits.needs_reclaim() : limits.kicked();
        case Phase::sweeping: return writeback_queue->has_room();
        case Phase::draining:
        case Phase::finishing: return writeback_queue->idle();
    }
    return false;
}

ReclaimWork GuestMemory::Impl::take(unsigned max_writers) {
    std::lock_guard lk(reclaim_mutex);
    ReclaimWork work;
    if (writers < max_writers) {
        if (auto batch = writeback_queue->try_pop()) {
            ++writers;
            work.kind = ReclaimWork::Kind::write;
            work.batch = std::move(*batch);
            return work;
        }
    }
    if (scanning || reclaim_stopping || stopping.load(std::memory_order_relaxed) || !scan_ready(mono_now()))
        return work;
    scanning = true;
    work.kind = ReclaimWork::Kind::scan;
    return work;
}

void GuestMemory::Impl::run(ReclaimWork& work, io::Ring* ring) {
    if (work.kind == ReclaimWork::Kind::write) write_batch(work.batch, ring);
    else scan_step();
    std::lock_guard lk(reclaim_mutex);
    if (work.kind == ReclaimWork::Kind::write) --writers;
    else scanning = false;
    reclaim_quiet.notify_all();
}

// Idle: the look the reclaimer thread took after each wait. Held: the age scan;
// not holdable and nothing changed: nothing; else an episode starts.
void GuestMemory::Impl::idle_step() {
    (void)limits.take_kick();
    const MonoTime now = mono_now();
    auto rest = [&] {
        // The next look: the tick while the limit is held, else the retry back-off.
        const auto wait = limits.over_reason() == OverReason::none ? Limits::kReclaimTick : limits.next_retry();
        idle_due_ns.store(due_after(now, wait).count(), std::memory_order_relaxed);
    };
    if (limits.reclaim_done()) {
        if (limits.held_again()) spdlog::info("{}: resident limit held again", name);
        age_step(*writeback_queue);
        rest();
        return;
    }
    // Not holdable and nothing has changed that could make it so: no sweep (a
    // sweep zaps the working set for nothing).
    const OverReason verdict = swap_verdict();
    const bool over = limits.over_reason() != OverReason::none;
    if (over && verdict != OverReason::none) {
        limits.cannot_hold(verdict);
        rest();
        return;
    }
    // Work down to the low watermark. Without room in swap only zero and clean
    // pages can leave, so the sweep does not demote (zap) resident pages.
    episode_mode = verdict == OverReason::none ? PassMode::full : PassMode::drop_only;
    episode_give_up = (episode_mode == PassMode::full ? 2 : 1) * table.pages();
    episode_idle = 0;
    episode_error.reset();
    phase = Phase::sweeping;
}

// One unit of this VM's reclaim (one worker at a time): the loop the per-VM
// reclaimer thread ran, cut at each of its waits.
void GuestMemory::Impl::scan_step() {
    WritebackQueue& queue = *writeback_queue;
    auto done = [&] { return limits.reclaim_done(queue.pending_pages()); };
    auto back_to_idle = [&] {
        phase = Phase::idle;
        const auto wait = limits.over_reason() == OverReason::none ? Limits::kReclaimTick : limits.next_retry();
        idle_due_ns.store(due_after(mono_now(), wait).count(), std::memory_order_relaxed);
    };
    switch (phase) {
        case Phase::idle:
            idle_step();
            if (phase != Phase::sweeping) return;
            [[fallthrough]];
        case Phase::sweeping: {
            if (done()) {
                // The queued writes complete the episode: wait for them, so "held
                // again" is said when it is true.
                phase = Phase::finishing;
                return;
            }
            const PassResult pass = reclaim_pass(queue, episode_mode, kScanChunk);
            if (pass.write_error) episode_error = pass.write_error;
            if (pass.freed) {
                // Progress, but the episode ends only when the limit is really held
                // again (reclaim_done): a few clean drops while every write fails
                // must not bring back 2 s throttle waits on every fault.
                episode_idle = 0;
                return;
            }
            // Sweeps without freeing anything: this limit cannot be held now. Let the
            // queued writes finish first: they may free pages or say why not.
            if (++episode_idle * kScanChunk >= episode_give_up) phase = Phase::draining;
            return;
        }
        case Phase::draining: {
            const auto [freed, error] = queue.take_results();
            if (error) episode_error = error;
            if (freed) {
                episode_idle = 0;
                phase = Phase::sweeping;
                return;
            }
            OverReason why = swap_verdict();  // the quota or the pool may have filled meanwhile
            if (why == OverReason::none) {
                why = !episode_error ? OverReason::nothing_evictable
                      : *episode_error == swap::Errc::no_space ? OverReason::swap_full
                                                                : OverReason::swap_failing;
            }
            if (limits.cannot_hold(why)) {
                spdlog::warn("{}: resident limit of {} KiB cannot be held ({}); running over it", name,
                             limits.effective_limit() * kPageSize >> 10, to_string(why));
            }
            if (done()) {
                phase = Phase::finishing;  // ready at once: the queue is idle
                return;
            }
            back_to_idle();
            return;
        }
        case Phase::finishing:
            (void)queue.take_results();
            if (limits.reclaim_done() && limits.held_again()) spdlog::info("{}: resident limit held again", name);
            back_to_idle();
            return;
    }
}

// One CLOCK step over `entries` entries. Returns the pages that left memory (dropped
// here, or through writes the workers completed since the last pass). Every
// entry the hand passes is also counted into the cold-age histogram, which is
// published when the hand wraps (one full sweep).
GuestMemory::Impl::PassResult GuestMemory::Impl::reclaim_pass(WritebackQueue& writer, PassMode mode,
                                                              std::uint64_t entries) {
    std::uint64_t freed = 0;
    const std::uint64_t pages = table.pages();
    std::vector<PageLock> demote;    // resident: zapped as runs
    std::vector<PageLock> dropped;   // cold, no write needed: punched as runs
    std::vector<PageLock> cold;      // cold, dirty: staged as runs, then zero (8) or written (5)
    std::vector<Writeback> writes;   // cold, dirty: queued as one batch (unlocked)
    std::shared_ptr<StagingBuffer> staging;  // the copies `writes` are written from
    // Writes this pass may still start: queued pages count against the quota already.
    const std::uint64_t quota = limits.swap_quota_room();
    const std::uint64_t queued = writer.pending_pages();
    std::uint64_t quota_room = quota > queued ? quota - queued : 0;

    // Copy out, check and hash the cold pages gathered (one read per run); the zero
    // ones join `dropped` and give their quota back.
    auto stage = [&] {
        if (cold.empty()) return;
        const std::size_t before = writes.size(), candidates = cold.size();
        tr.evict_cold(cold, staging, dropped, writes);
        quota_room += candidates - (writes.size() - before);
    };
    auto flush = [&] {
        // Every lock is released (stage, zap, punch) before the queue may make us wait.
        stage();
        tr.deactivate(demote);
        freed += tr.punch_dropped(dropped);
        if (writes.empty()) return;
        writer.push(std::move(writes));
        writes = {};
        writes.reserve(kBatch);
        staging.reset();
    };

    writes.reserve(kBatch);
    const MonoTime now = mono_now();
    for (std::uint64_t n = 0; n < entries; ++n) {
        const PageIdx idx(clock_hand);
        clock_hand = (clock_hand + 1) % pages;
        if (idx.value() == 0 && n != 0) flush();  // wrapped: runs must not span the wrap
        const PageEntry peek = table.peek(idx);
        ages.saturate_if_old(idx, now);
        age_builder.visit(peek, ages.age(idx, now), age_sampling.weight(peek, idx, age_sweeps));
        const bool zap = mode != PassMode::age_only || age_sampling.zaps(idx, age_sweeps);
        if (clock_hand == 0) {
            std::lock_guard lock(scan_mutex);
            last_scan = age_builder.finish(now);
            ++age_sweeps;
        }
        if (peek.locked()) continue;
        if (peek.state() != PageState::resident && peek.state() != PageState::inactive) continue;
        if (!zap) continue;  // sampled age scan: not this sweep's group (access_age.hpp)
        auto lk = tr.try_lock(idx);
        if (!lk) continue;
        switch (lk->entry().state()) {
            case PageState::resident:
                if (mode == PassMode::drop_only) break;
                // Used again since its last zap: pass it by this time (4a). The age
                // scan zaps it anyway: it measures, and a zap is its sample.
                if (mode == PassMode::full && tr.pass_active(*lk)) break;
                demote.push_back(std::move(*lk));  // stays locked until zapped
                break;
            case PageState::inactive:
                if (mode == PassMode::age_only) break;  // the age scan evicts nothing
                // Cold. A dirty page that may be written is staged with its run (the
                // zero check and the checksum in one pass over its copy); otherwise
                // drop it without a write where possible (clean copy, zero).
                if (!lk->entry().clean() && mode == PassMode::full && pool && quota_room > 0) {
                    if (!staging) staging = tr.staging().acquire();
                    if (staging) {
                        --quota_room;
                        cold.push_back(std::move(*lk));
                        if (writes.size() + cold.size() >= kBatch) flush();
                        break;
                    }
                }
                if (tr.drop_cold(*lk)) dropped.push_back(std::move(*lk));
                break;
            default:
                break;
        }
    }
    flush();
    const auto [written, write_error] = writer.take_results();
    return PassResult{freed + written, write_error};
}

}  // namespace swapvisor::guestmem
