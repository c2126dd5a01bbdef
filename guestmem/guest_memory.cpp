// GuestMemory: region setup, the VMM-side accessors (read/write/discard) and the
// swap-in transition shared with the fault service. See guest_memory.hpp for the
// layout and guestmem/README.md for the page-state machine.
#include "guestmem/guest_memory.hpp"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

#include "guestmem/errc.hpp"
#include "guestmem/guest_memory_impl.hpp"
#include "guestmem/host_memory.hpp"

namespace swapvisor::guestmem {
namespace {

constexpr std::uint64_t kTwoMiB = 2ULL << 20;

bool page_is_zero(const std::byte* p) {
    const auto* w = reinterpret_cast<const std::uint64_t*>(p);
    std::uint64_t acc = 0;
    for (std::size_t i = 0; i < kPageSize / 8; ++i) acc |= w[i];
    return acc == 0;
}

}  // namespace

bool is_zero_page(const std::byte* p) { return page_is_zero(p); }

GuestMemory::Impl::Impl(GuestMemory& o, HostMemory* h, swap::SwapPool* p, std::uint64_t pages)
    : owner(o), host(h), pool(p), table(pages) {}

GuestMemory::GuestMemory(MemoryConfig config, VmId id) : config_(std::move(config)), id_(id) {}

GuestMemory::~GuestMemory() {
    stop();
    if (!impl_) return;
    if (impl_->host) impl_->host->note_gone(impl_->counters.resident_pages.load());
    // VM teardown: give back every slot this VM still refers to, so the shared pool
    // leaks nothing when one VM of several exits.
    for (std::uint64_t i = 0; i < impl_->table.pages(); ++i) {
        PageEntry e = impl_->table.peek(i);
        if ((e.state() == PageState::swapped || e.clean()) && e.vslot() != swap::kNoVSlot)
            impl_->free_vslot(e.vslot());
    }
}

Result<std::unique_ptr<GuestMemory>> create_guest_memory(const MemoryConfig& config, VmId id, HostMemory* host,
                                                          swap::SwapPool* pool) {
    if (config.memory_bytes == 0 || config.memory_bytes % kTwoMiB != 0)
        return make_error(Errc::misaligned, "guest memory size (must be a non-zero multiple of 2 MiB)");
    std::unique_ptr<GuestMemory> mem(new GuestMemory(config, id));
    const std::uint64_t total_pages = config.memory_bytes / kPageSize;
    mem->impl_ = std::make_unique<GuestMemory::Impl>(*mem, host, pool, total_pages);
    auto& impl = *mem->impl_;
    impl.limit_pages = config.resident_limit / kPageSize;

    // Split RAM around the 3-4 GiB hole (guest_memory.hpp).
    struct Span { std::uint64_t base, bytes; };
    std::vector<Span> spans;
    std::uint64_t low = std::min(config.memory_bytes, kLowRamEnd);
    spans.push_back({0, low});
    if (config.memory_bytes > low) spans.push_back({kHighRamBase, config.memory_bytes - low});

    // POISON is required: without it a page whose swap-in failed could only be shown
    // to the guest as wrong bytes or leave the vCPU blocked for ever.
    impl.uffd.emplace(SWV_TRY(Userfault::create(
        UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_POISON, UFFD_FEATURE_WP_HUGETLBFS_SHMEM)));
    impl.wp_tracking = impl.uffd->has(UFFD_FEATURE_WP_HUGETLBFS_SHMEM);

    std::uint64_t next_idx = 0;
    for (const Span& s : spans) {
        Region r;
        std::string name = "swapvisor-" + config.name;
        // Kernel contract: memfd_create gives an anonymous shmem file; holes read as
        // zeros and FALLOC_FL_PUNCH_HOLE frees pages (and zaps every mapping of them).
        int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC);
        if (fd < 0) return errno_error("memfd_create");
        r.memfd = io::UniqueFd(fd);
        if (::ftruncate(fd, static_cast<off_t>(s.bytes)) < 0) return errno_error("ftruncate memfd");
        r.guest_view = SWV_TRY(io::Mapping::shared(fd, s.bytes, 0, MAP_NORESERVE));
        r.vmm_view = SWV_TRY(io::Mapping::shared(fd, s.bytes, 0, MAP_NORESERVE));
        r.base = Gpa(s.base);
        r.pages = s.bytes / kPageSize;
        r.first_idx = next_idx;
        next_idx += r.pages;
        SWV_TRY(impl.uffd->register_range(r.guest_view.data(), s.bytes,
                                          UffdRegisterMode{.missing = true, .minor = true, .wp = impl.wp_tracking}));
        mem->views_.push_back(RegionView{r.base, s.bytes, r.guest_view.data()});
        impl.regions.push_back(std::move(r));
    }

    impl.zero_page = SWV_TRY(io::Mapping::anonymous(kFaultAroundPages * kPageSize));
    // Kernel contract: eventfd(2) — a counter the fault threads poll next to the uffd.
    int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0) return errno_error("eventfd");
    impl.stop_event = io::UniqueFd(efd);
    return mem;
}

// --- addressing ----------------------------------------------------------------

std::optional<std::uint64_t> GuestMemory::Impl::idx_of(Gpa gpa) const {
    for (const Region& r : regions) {
        if (gpa >= r.base && gpa.value() - r.base.value() < r.pages * kPageSize)
            return r.first_idx + ((gpa.value() - r.base.value()) >> kPageShift);
    }
    return std::nullopt;
}

std::optional<std::uint64_t> GuestMemory::Impl::idx_of_guest_addr(std::uint64_t hva) const {
    for (const Region& r : regions) {
        auto start = reinterpret_cast<std::uint64_t>(r.guest_view.data());
        if (hva >= start && hva - start < r.pages * kPageSize) return r.first_idx + ((hva - start) >> kPageShift);
    }
    return std::nullopt;
}

const Region& GuestMemory::Impl::region_of(std::uint64_t idx) const {
    for (const Region& r : regions)
        if (idx >= r.first_idx && idx < r.first_idx + r.pages) return r;
    SWV_ASSERT(false, "stage-2 index outside every region");
}

std::byte* GuestMemory::Impl::guest_ptr(std::uint64_t idx) const {
    const Region& r = region_of(idx);
    return r.guest_view.data() + (idx - r.first_idx) * kPageSize;
}

std::byte* GuestMemory::Impl::vmm_ptr(std::uint64_t idx) const {
    const Region& r = region_of(idx);
    return r.vmm_view.data() + (idx - r.first_idx) * kPageSize;
}

Gpa GuestMemory::Impl::gpa_of_idx(std::uint64_t idx) const {
    const Region& r = region_of(idx);
    return Gpa(r.base.value() + (idx - r.first_idx) * kPageSize);
}

swap::OwnerTag GuestMemory::Impl::owner_tag(std::uint64_t idx) const {
    return pack_owner(owner.id(), idx);
}

// --- memfd operations ------------------------------------------------------------

Result<void> GuestMemory::Impl::punch(std::uint64_t first, std::uint64_t count) {
    const Region& r = region_of(first);
    SWV_ASSERT(first + count <= r.first_idx + r.pages, "punch run crosses a region");
    // Kernel contract: PUNCH_HOLE|KEEP_SIZE frees the pages and unmaps them from every
    // view; the next guest touch is a MISSING fault.
    if (::fallocate(r.memfd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>((first - r.first_idx) * kPageSize), static_cast<off_t>(count * kPageSize)) < 0)
        return errno_error("fallocate(PUNCH_HOLE) guest memory");
    return {};
}

Result<void> GuestMemory::Impl::zap_guest_view(std::uint64_t first, std::uint64_t count) {
    // Kernel contract: MADV_DONTNEED on a shared mapping drops only the page-table
    // entries (KVM's too, through the MMU notifier); the page stays in the memfd, so
    // the next guest touch is a MINOR fault — the access sample.
    if (::madvise(guest_ptr(first), count * kPageSize, MADV_DONTNEED) < 0)
        return errno_error("madvise(DONTNEED) guest view");
    return {};
}

// --- accounting --------------------------------------------------------------------

void GuestMemory::Impl::page_became_present() {
    std::uint64_t now = counters.resident_pages.fetch_add(1) + 1;
    if (host) host->note_present(1);
    std::uint64_t peak = counters.resident_peak.load(std::memory_order_relaxed);
    while (now > peak && !counters.resident_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
    if (needs_reclaim()) reclaim_wake.notify_one();
}

void GuestMemory::Impl::pages_left_memory(std::uint64_t n) {
    counters.resident_pages.fetch_sub(n);
    if (host) host->note_gone(n);
    room_freed.notify_all();
}

std::uint64_t GuestMemory::Impl::effective_limit_pages() const {
    std::uint64_t limit = limit_pages.load(std::memory_order_relaxed);
    if (host) {
        std::uint64_t share = host->share_pages(owner);
        if (share && (limit == 0 || share < limit)) limit = share;
    }
    return limit;
}

bool GuestMemory::Impl::over_limit() const {
    std::uint64_t limit = limit_pages.load(std::memory_order_relaxed);
    std::uint64_t resident = counters.resident_pages.load(std::memory_order_relaxed);
    if (limit && resident >= limit) return true;
    return host && host->over_budget() && resident >= effective_limit_pages();
}

bool GuestMemory::Impl::needs_reclaim() const {
    std::uint64_t limit = effective_limit_pages();
    if (limit == 0) return false;
    std::uint64_t slack = std::clamp<std::uint64_t>(limit / 32, 64, 4096);
    std::uint64_t resident = counters.resident_pages.load(std::memory_order_relaxed);
    // There is work only above the reclaimer's target (limit - slack, floored at 0):
    // with a limit under slack / 2 the first test alone holds even at 0 resident pages,
    // and the reclaimer would wake, find nothing to do and spin.
    std::uint64_t target = limit > slack ? limit - slack : 0;
    return resident + slack / 2 > limit && resident > target;
}

void GuestMemory::Impl::wait_for_room() {
    if (!over_limit()) return;
    counters.throttle_waits.fetch_add(1, std::memory_order_relaxed);
    std::unique_lock lk(reclaim_mutex);
    reclaim_wake.notify_one();
    // Bounded: if the reclaimer cannot make room (no swap space left), the guest runs
    // over its limit rather than hanging; that is counted and reported.
    bool ok = room_freed.wait_for(lk, std::chrono::seconds(2), [&] { return stopping || !over_limit(); });
    if (!ok && counters.limit_overshoots.fetch_add(1) == 0)
        spdlog::warn("{}: resident limit cannot be held (swap full or unavailable); running over it",
                     owner.name());
}

void GuestMemory::Impl::free_vslot(swap::VSlot v) {
    if (pool && v != swap::kNoVSlot) pool->free(v);
}

bool GuestMemory::Impl::want_clean() {
    if (!wp_tracking) return false;
    if (clean_tracking.load(std::memory_order_relaxed)) return true;
    return clean_decisions.fetch_add(1, std::memory_order_relaxed) % kCleanSampleEvery == 0;
}

void GuestMemory::Impl::note_clean_outcome(bool dirtied) {
    std::uint64_t d = dirtied ? window_dirtied.fetch_add(1) + 1 : window_dirtied.load();
    std::uint64_t r = dirtied ? window_reused.load() : window_reused.fetch_add(1) + 1;
    if (d + r < kCleanWindow) return;
    // Hysteresis: stop tracking when >80% of copies end dirtied, resume below 50%.
    // Racing updaters may evaluate one window twice; the decision is a hint.
    window_dirtied = 0;
    window_reused = 0;
    bool tracking = clean_tracking.load(std::memory_order_relaxed);
    if (tracking && d * 5 > (d + r) * 4) clean_tracking = false;
    else if (!tracking && d * 2 < d + r) clean_tracking = true;
}

// --- swap-in ------------------------------------------------------------------------

Result<void> GuestMemory::Impl::swap_in_locked(PageLock& lk, std::uint64_t idx, io::Ring& ring, bool keep_clean) {
    PageEntry e = lk.entry();
    SWV_ASSERT(e.state() == PageState::swapped, "swap-in of a page that is not swapped");
    SWV_ASSERT(pool != nullptr, "swapped page without a swap pool");
    // Read straight into the memfd through the VMM view: the guest cannot see the page
    // until we map it (UFFDIO_CONTINUE) after the checksum has been verified.
    table.publish_locked(idx, PageEntry::make(PageState::reading, e.vslot()));  // visible to observers only
    auto read = pool->read_in(ring, e.vslot(), vmm_ptr(idx));
    counters.swap_in_pages.fetch_add(1, std::memory_order_relaxed);
    if (!read) {
        // Never hand the guest stale or wrong bytes: drop what was read, poison the
        // guest view so the next access is a memory error, and say so. No wake here:
        // a guest woken now would take its SIGBUS while the entry still says swapped;
        // the fault service wakes it once `lost` is published (fault_service.cpp).
        (void)punch(idx, 1);
        (void)uffd->poison(guest_ptr(idx), kPageSize, Wake::no);
        counters.lost_pages.fetch_add(1);
        counters.swapped_pages.fetch_sub(1);
        free_vslot(e.vslot());
        lk.set(PageEntry::make(PageState::lost));
        spdlog::error("{}: guest page at GPA {:#x} lost: {}", owner.name(), gpa_of_idx(idx).value(),
                      read.error().message());
        return make_error(Errc::page_lost, "swap-in");
    }
    counters.swapped_pages.fetch_sub(1);
    page_became_present();
    if (keep_clean && want_clean()) {
        lk.set(PageEntry::make(PageState::inactive, e.vslot(), true));
    } else {
        free_vslot(e.vslot());
        lk.set(PageEntry::make(PageState::inactive));
    }
    return {};
}

// --- VMM-side accessors ---------------------------------------------------------------

namespace {
enum class Access { read, write };
}

static Result<void> access(GuestMemory::Impl& impl, Gpa gpa, std::byte* out, const std::byte* in, std::uint64_t len,
                           Access kind) {
    if (len == 0) return {};
    // One ring per calling thread, created on first use (a Ring belongs to one thread).
    thread_local std::optional<io::Ring> ring;
    std::uint64_t done = 0;
    while (done < len) {
        Gpa cur(gpa.value() + done);
        auto idx = impl.idx_of(cur);
        if (!idx) return make_error(Errc::out_of_range, "guest memory access");
        std::uint64_t off = page_offset(cur);
        std::uint64_t n = std::min(len - done, kPageSize - off);
        PageLock lk(impl.table, *idx);
        PageEntry e = lk.entry();
        switch (e.state()) {
            case PageState::zero:
                if (kind == Access::read) {
                    std::memset(out + done, 0, n);  // nothing to make present for a read
                    done += n;
                    continue;
                }
                impl.page_became_present();
                lk.set(PageEntry::make(PageState::inactive));
                break;
            case PageState::swapped:
                if (!ring) ring.emplace(SWV_TRY(io::Ring::create(8)));
                SWV_TRY(impl.swap_in_locked(lk, *idx, *ring, kind == Access::read));
                break;
            case PageState::lost:
                return make_error(Errc::page_lost, "guest memory access");
            case PageState::writeback:
                // A write makes the in-flight copy stale: its completion sees the state
                // moved and frees the slot. The page is not mapped in the guest view.
                if (kind == Access::write) lk.set(PageEntry::make(PageState::inactive));
                break;
            case PageState::resident:
            case PageState::inactive:
                if (kind == Access::write && lk.entry().clean()) {
                    // The swap copy no longer matches; the guest view stays write-
                    // protected until the guest's next write fault clears it.
                    impl.free_vslot(lk.entry().vslot());
                    lk.set(PageEntry::make(lk.entry().state()));
                }
                break;
            case PageState::reading:
                SWV_ASSERT(false, "reading state seen by a lock holder");
        }
        std::byte* p = impl.vmm_ptr(*idx) + off;
        if (kind == Access::read) std::memcpy(out + done, p, n);
        else std::memcpy(p, in + done, n);
        done += n;
    }
    return {};
}

Result<void> GuestMemory::write(Gpa gpa, std::span<const std::byte> bytes) {
    return access(*impl_, gpa, nullptr, bytes.data(), bytes.size(), Access::write);
}

Result<void> GuestMemory::read(Gpa gpa, std::span<std::byte> bytes) {
    return access(*impl_, gpa, bytes.data(), nullptr, bytes.size(), Access::read);
}

Result<void> GuestMemory::discard(GpaRange range) {
    auto& impl = *impl_;
    if (page_offset(range.gpa) != 0 || range.len % kPageSize != 0)
        return make_error(Errc::misaligned, "discard");
    auto end = range.gpa.checked_add(range.len);
    if (!end) return make_error(Errc::out_of_range, "discard");
    // Validate the whole range before acting on any of it.
    for (std::uint64_t off = 0; off < range.len; off += kPageSize)
        if (!impl.idx_of(Gpa(range.gpa.value() + off))) return make_error(Errc::out_of_range, "discard");
    for (std::uint64_t off = 0; off < range.len; off += kPageSize) {
        std::uint64_t idx = *impl.idx_of(Gpa(range.gpa.value() + off));
        PageLock lk(impl.table, idx);
        PageEntry e = lk.entry();
        switch (e.state()) {
            case PageState::zero:
                continue;
            case PageState::resident:
            case PageState::inactive:
            case PageState::writeback:
                // writeback: the completion sees the state moved and frees its slot.
                SWV_TRY(impl.punch(idx, 1));
                impl.pages_left_memory(1);
                if (e.clean()) impl.free_vslot(e.vslot());
                break;
            case PageState::swapped:
                impl.free_vslot(e.vslot());
                impl.counters.swapped_pages.fetch_sub(1);
                break;
            case PageState::lost:
                // The guest gave the page up: it may read zeros again. The poison in
                // the guest view is a PTE marker that a hole punch keeps; only
                // zapping the guest view removes it, so the next touch faults.
                SWV_TRY(impl.zap_guest_view(idx, 1));
                break;
            case PageState::reading:
                SWV_ASSERT(false, "reading state seen by a lock holder");
        }
        lk.set(PageEntry::make(PageState::zero));
        impl.counters.discarded_pages.fetch_add(1, std::memory_order_relaxed);
    }
    return {};
}

// --- lifecycle and stats ----------------------------------------------------------------

Result<void> GuestMemory::start() {
    auto& impl = *impl_;
    if (!impl.fault_threads.empty()) return {};
    unsigned n = std::max(1u, config_.fault_threads);
    for (unsigned i = 0; i < n; ++i) impl.fault_threads.emplace_back([&impl] { impl.fault_loop(); });
    impl.reclaimer = std::thread([&impl] { impl.reclaim_loop(); });
    return {};
}

void GuestMemory::stop() {
    if (!impl_) return;
    auto& impl = *impl_;
    impl.stopping = true;
    std::uint64_t one = 1;
    if (impl.stop_event.valid()) (void)!::write(impl.stop_event.get(), &one, sizeof one);
    {
        std::lock_guard lk(impl.reclaim_mutex);
        impl.reclaim_wake.notify_all();
        impl.room_freed.notify_all();
    }
    for (auto& t : impl.fault_threads)
        if (t.joinable()) t.join();
    impl.fault_threads.clear();
    if (impl.reclaimer.joinable()) impl.reclaimer.join();
}

void GuestMemory::set_resident_limit(std::uint64_t bytes) {
    impl_->limit_pages = bytes / kPageSize;  // the one copy readers use (config_ keeps the launch value)
    impl_->reclaim_wake.notify_one();
    impl_->room_freed.notify_all();
}

MemStats GuestMemory::stats() const {
    const Counters& c = impl_->counters;
    MemStats s;
    s.name = config_.name;
    s.memory_bytes = config_.memory_bytes;
    s.resident_limit = impl_->limit_pages.load() * kPageSize;
    s.resident_bytes = c.resident_pages.load() * kPageSize;
    s.resident_bytes_peak = c.resident_peak.load() * kPageSize;
    s.swapped_bytes = c.swapped_pages.load() * kPageSize;
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
    s.limit_overshoots = c.limit_overshoots.load();
    return s;
}

std::uint64_t GuestMemory::referenced_vslots() const {
    std::uint64_t n = 0;
    for (std::uint64_t i = 0; i < impl_->table.pages(); ++i) {
        PageEntry e = impl_->table.peek(i);
        if (e.state() == PageState::swapped || e.clean()) ++n;
    }
    return n;
}

PageEntry GuestMemory::entry(Gpa gpa) const {
    auto idx = impl_->idx_of(gpa);
    SWV_ASSERT(idx.has_value(), "entry() of a GPA outside RAM");
    return impl_->table.peek(*idx);
}

}  // namespace swapvisor::guestmem
