// GuestMemory: construction, the VMM-side accessors (read/write/discard), bring-back
// and lifecycle. Each accessor only chooses rows of the transition table
// (transitions.hpp) for the pages it touches; guestmem/README.md has the table.
#include "guestmem/guest_memory.hpp"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "guestmem/errc.hpp"
#include "guestmem/guest_memory_impl.hpp"

namespace swapvisor::guestmem {

GuestMemory::Impl::Impl(const MemoryConfig& config, VmId id, HostBudget* h, swap::SwapPool* p,
                        ReclaimService* s, FaultService* f, std::unique_ptr<MemfdKernel> k, Stage2 t,
                        AccessAges a)
    : own_service(s ? nullptr : std::make_unique<ReclaimService>(kPrivateWorkers, config.on_thread_start)),
      service(s ? s : own_service.get()),
      own_faults(f ? nullptr : std::make_unique<FaultService>(std::max(1u, config.vcpus) + 1, config.on_thread_start)),
      faults(f ? f : own_faults.get()),
      host(h),
      pool(p),
      kernel(std::move(k)),
      table(std::move(t)),
      clean(kernel->write_tracking() == WriteTracking::on),
      limits(occupancy, h, config.memory_bytes, config.resident_limit),
      tr(Transitions::Deps{table, *kernel, pool, limits, occupancy, counters, clean, config.name, id,
                           service->staging()}),
      name(config.name),
      on_thread_start(config.on_thread_start),
      ages(std::move(a)),
      stalls(std::max(1u, config.vcpus), mono_now()),
      observers{ages, stalls, config.working_set_window, mono_now},
      age_scan_period(config.age_scan_period),
      age_builder(config.working_set_window),
      age_sampling(config.age_scan_period.count() > 0 ? config.age_scan_sample : 1),
      vcpus(std::max(1u, config.vcpus)) {}

GuestMemory::GuestMemory(MemoryConfig config, VmId id) : config_(std::move(config)), id_(id) {}

GuestMemory::~GuestMemory() {
    stop();
    if (!impl_) return;
    if (impl_->host) {
        impl_->host->note_freed(impl_->occupancy.resident.load());
        impl_->host->vm_removed(config_.memory_bytes);
    }
    // VM teardown: give back every slot this VM still refers to, so the shared pool
    // leaks nothing when one VM of several exits.
    impl_->tr.free_all_vslots();
}

Result<std::unique_ptr<GuestMemory>> create_guest_memory(const MemoryConfig& config, VmId id, HostBudget* host,
                                                          swap::SwapPool* pool, ReclaimService* service,
                                                          FaultService* faults) {
    if (config.age_scan_sample < 1 || config.age_scan_sample > AgeSampling::kMax)
        return errno_error("create guest memory", EINVAL,
                           fmt::format("{}: age scan sample {} is not in 1..{}", config.name, config.age_scan_sample,
                                       AgeSampling::kMax));
    auto kernel = SWV_TRY(with_context(MemfdKernel::create(config.name, config.memory_bytes), config.name));
    auto table = SWV_TRY(Stage2::create(kernel->pages()));
    auto ages = SWV_TRY(AccessAges::create(kernel->pages()));
    std::unique_ptr<GuestMemory> mem(new GuestMemory(config, id));
    mem->impl_ = std::make_unique<GuestMemory::Impl>(config, id, host, pool, service, faults, std::move(kernel),
                                                     std::move(table), std::move(ages));
    if (host) host->vm_added(config.memory_bytes);
    if (config.swap_quota) mem->impl_->limits.set_swap_quota_bytes(config.swap_quota);
    return mem;
}

std::span<const RegionView> GuestMemory::regions() const { return impl_->kernel->views(); }

// --- VMM-side accessors ---------------------------------------------------------------

namespace {

Result<void> access(GuestMemory::Impl& impl, Gpa gpa, std::byte* out, const std::byte* in, std::uint64_t len,
                    Access kind) {
    if (len == 0) return {};
    // One ring per calling thread, created on first use (a Ring belongs to one thread).
    thread_local std::optional<io::Ring> ring;
    Transitions& tr = impl.tr;
    std::uint64_t done = 0;
    while (done < len) {
        const Gpa cur(gpa.value() + done);
        auto idx = impl.kernel->idx_of(cur);
        if (!idx) return make_error(Errc::out_of_range, "guest memory access", fmt::format("GPA {:#x}", cur.value()));
        const std::uint64_t off = page_offset(cur);
        const std::uint64_t n = std::min(len - done, kPageSize - off);
        PageLock lk = tr.lock(*idx);
        switch (lk.entry().state()) {
            case PageState::zero:
                if (kind == Access::read) {
                    std::memset(out + done, 0, n);  // nothing to make present for a read
                    done += n;
                    continue;
                }
                tr.vmm_write_zero(lk);
                break;
            case PageState::swapped:
                if (!ring) ring.emplace(SWV_TRY(io::Ring::create(8)));
                SWV_TRY(tr.vmm_swap_in(lk, *ring, kind));
                break;
            case PageState::lost:
                return make_error(Errc::page_lost, "guest memory access", fmt::format("GPA {:#x}", cur.value()));
            case PageState::writeback:
                if (kind == Access::write) tr.vmm_write_writeback(lk);
                break;
            case PageState::resident:
            case PageState::inactive:
                if (kind == Access::write && lk.entry().clean()) tr.vmm_write_clean(lk);
                break;
            case PageState::image:
                SWV_TRY(tr.fill_image(lk, Transitions::Map::no));  // 14'
                break;
            case PageState::reading:
                SWV_ASSERT(false, "reading state seen by a lock holder");
        }
        std::byte* p = impl.kernel->vmm_page(*idx) + off;
        if (kind == Access::read) std::memcpy(out + done, p, n);
        else std::memcpy(p, in + done, n);
        done += n;
    }
    return {};
}

}  // namespace

Result<void> GuestMemory::write(Gpa gpa, std::span<const std::byte> bytes) {
    return access(*impl_, gpa, nullptr, bytes.data(), bytes.size(), Access::write);
}

Result<void> GuestMemory::read(Gpa gpa, std::span<std::byte> bytes) {
    return access(*impl_, gpa, bytes.data(), nullptr, bytes.size(), Access::read);
}

Result<void> GuestMemory::discard(GpaRange range) {
    auto& impl = *impl_;
    // Built only on failure: discard runs once per reported range (balloon).
    auto where = [&] { return fmt::format("GPA {:#x} + {:#x}", range.gpa.value(), range.len); };
    if (page_offset(range.gpa) != 0 || range.len % kPageSize != 0) return make_error(Errc::misaligned, "discard", where());
    if (!range.gpa.checked_add(range.len)) return make_error(Errc::out_of_range, "discard", where());
    // Validate the whole range before acting on any of it.
    for (std::uint64_t off = 0; off < range.len; off += kPageSize)
        if (!impl.kernel->idx_of(Gpa(range.gpa.value() + off))) return make_error(Errc::out_of_range, "discard", where());
    for (std::uint64_t off = 0; off < range.len; off += kPageSize) {
        PageLock lk = impl.tr.lock(*impl.kernel->idx_of(Gpa(range.gpa.value() + off)));
        if (auto r = impl.tr.discard(lk); !r) return std::unexpected(std::move(r.error()).with_context(where()));
    }
    return {};
}

// --- swapoff -----------------------------------------------------------------------------

Result<bool> GuestMemory::bring_back(PageIdx page, swap::VSlot vslot, const swap::SlotCopy* copy, io::Ring& ring) {
    if (!impl_->table.contains(page)) return false;
    PageLock lk = impl_->tr.lock(page);
    return impl_->tr.bring_back(lk, vslot, copy, ring);
}

bool GuestMemory::lose_page(PageIdx page, swap::VSlot vslot, const Error& why) {
    if (!impl_->table.contains(page)) return false;
    PageLock lk = impl_->tr.lock(page);
    return impl_->tr.lose_swapped(lk, vslot, why);
}

std::uint64_t GuestMemory::bring_back_room() const { return impl_->limits.bring_back_room(); }

void GuestMemory::kick_reclaimer() { impl_->limits.kick_reclaimer(); }

// --- lifecycle and stats -------------------------------------------------------------------

Result<void> GuestMemory::start() {
    auto& impl = *impl_;
    if (impl.faults_attached || impl.reclaim_attached) return {};
    // A client of the fault workers (fault_service.hpp): room made while its faults
    // are parked kicks them.
    impl.limits.set_room_listener(&impl);
    SWV_TRY(impl.faults->attach(impl, impl.vcpus));
    impl.faults_attached = true;
    impl.start_reclaim();  // a client of the reclaim workers (reclaim_service.hpp)
    if (impl.fill_rest || !impl.prefetch_order.empty()) {  // fill_rest only with an image
        impl.filler = std::thread([&impl] { impl.fill_loop(); });  // snapshot.cpp
        ::pthread_setname_np(impl.filler.native_handle(), "swv-fill");
    }
    return {};
}

void GuestMemory::stop() {
    if (!impl_) return;
    auto& impl = *impl_;
    impl.stopping = true;
    impl.limits.wake_all();  // parked faults may go now (stopping): the workers are kicked
    if (impl.filler.joinable()) impl.filler.join();
    // The parked faults go now (over the limit, as a throttle wait returned at stop);
    // then out of the epoll set, no worker inside the VM any more; faults still
    // parked (every worker busy elsewhere for the throttle's bound) are dropped,
    // their threads woken (they fault again, unread, until the userfaultfd closes).
    if (impl.faults_attached) {
        impl.await_parked();
        impl.faults->detach(impl);
        impl.faults_attached = false;
    }
    impl.drop_parked();
    impl.limits.set_room_listener(nullptr);
    // No new scan step; the batches it queued are still written and completed (their
    // pages are in writeback and must end swapped or inactive again), then the VM
    // leaves the workers, none of them inside it any more.
    impl.stop_reclaim();
}

void GuestMemory::set_resident_limit(std::uint64_t bytes) { impl_->limits.set_limit_bytes(bytes); }

bool GuestMemory::replace_resident_limit(std::uint64_t expected, std::uint64_t bytes) {
    return impl_->limits.replace_limit_bytes(expected, bytes);
}

std::uint64_t GuestMemory::resident_limit_sets() const { return impl_->limits.limit_sets(); }

void GuestMemory::set_swap_quota(std::uint64_t bytes) { impl_->limits.set_swap_quota_bytes(bytes); }

MemStats GuestMemory::stats() const {
    const Counters& c = impl_->counters;
    const Occupancy& o = impl_->occupancy;
    MemStats s;
    s.name = config_.name;
    s.memory_bytes = config_.memory_bytes;
    s.resident_limit = impl_->limits.limit_pages() * kPageSize;
    s.swap_quota_bytes = impl_->limits.swap_quota_pages() * kPageSize;
    s.resident_bytes = o.resident.load() * kPageSize;
    s.resident_bytes_peak = o.peak.load() * kPageSize;
    s.swapped_bytes = o.swapped.load() * kPageSize;
    s.swap_out_pages = c.swap_out_pages.load();
    s.swap_in_pages = c.swap_in_pages.load();
    s.major_faults = c.major_faults.load();
    s.minor_faults = c.minor_faults.load();
    s.wp_faults = c.wp_faults.load();
    s.zero_pages = c.zero_pages.load();
    s.clean_drops = c.clean_drops.load();
    s.discarded_pages = c.discarded_pages.load();
    s.lost_pages = c.lost_pages.load();
    s.throttle_waits = c.throttle_waits.load();
    s.readahead_pages = c.readahead_pages.load();
    s.limit_overshoots = impl_->limits.overshoot_events();
    const std::uint64_t limit = impl_->limits.effective_limit();
    const std::uint64_t resident = o.resident.load();
    s.overshoot_bytes = limit && resident > limit ? (resident - limit) * kPageSize : 0;
    s.limit_state = to_string(impl_->limits.over_reason());
    s.swapin_seconds = impl_->swapin_latency.snapshot();

    const MonoTime now = mono_now();
    AgeScan scan;
    {
        std::lock_guard lock(impl_->scan_mutex);
        scan = impl_->last_scan;
    }
    s.cold_age_seconds = scan.ages;
    s.working_set_bytes = scan.working_set_pages * kPageSize;
    s.working_set_window_seconds = static_cast<std::uint64_t>(config_.working_set_window.count());
    s.age_scan_age_ms = scan.finished.count() == 0
                            ? 0
                            : static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                             now - scan.finished).count());
    s.age_scan_sample = impl_->age_sampling.n();
    const StallSnapshot st = impl_->stalls.snapshot(now);
    s.refaults = st.refaults;
    s.stalls = st.stalls;
    s.stall_some_ns = st.some_ns;
    s.stall_full_ns = st.full_ns;
    s.refaults_per_min = st.refaults_per_min;
    s.refault_ws_per_min = scan.working_set_pages ? st.refaults_per_min / static_cast<double>(scan.working_set_pages) : 0;
    s.stall_some_avg10 = st.some[0];
    s.stall_some_avg60 = st.some[1];
    s.stall_some_avg300 = st.some[2];
    s.stall_full_avg10 = st.full[0];
    s.stall_full_avg60 = st.full[1];
    s.stall_full_avg300 = st.full[2];
    s.stall_threads = st.threads;
    {
        std::lock_guard lock(impl_->note_mutex);
        s.limit_source = impl_->limit_source;
        s.auto_decision = impl_->auto_decision;
    }
    return s;
}

void GuestMemory::set_limit_note(std::string source, std::string decision) {
    std::lock_guard lock(impl_->note_mutex);
    impl_->limit_source = std::move(source);
    impl_->auto_decision = std::move(decision);
}

std::uint64_t GuestMemory::referenced_vslots() const { return impl_->tr.referenced_vslots(); }

PageEntry GuestMemory::entry(Gpa gpa) const {
    auto idx = impl_->kernel->idx_of(gpa);
    SWV_ASSERT(idx.has_value(), "entry() of a GPA outside RAM");
    return impl_->table.peek(*idx);
}

}  // namespace swapvisor::guestmem
