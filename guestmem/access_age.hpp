// AccessAges: when each guest page was last seen accessed, in a compact side array
// next to the stage-2 table (2 bytes per guest page: the table's 8 + 2 = 10 B/page),
// and the cold-age histogram built from it (guestmem/README.md#working-set).
//
// What "accessed" means here: swapvisor has no accessed bit. The only access it sees
// is a fault — a first touch, a swap-in, a MINOR fault on a page the CLOCK hand
// zapped (the access sample), a WP fault — so a page's age is the time since its last
// fault. A page that stays mapped is not seen again until the hand zaps it: its age
// is exact to within one sweep of the hand (Impl's age scan runs a full sweep every
// `MemoryConfig::age_scan_period` while the reclaimer is idle, and reclaim sweeps
// are faster). Pages mapped ahead of need (readahead, zero fault-around) count as
// accessed when mapped.
//
//   one uint16 per page:  0          never seen accessed, or older than kSaturateAfter
//                         1..65535   the quarter-second tick of its last access,
//                                    modulo 65535, plus 1 (wraps every 4.55 h)
//
// Ages are computed modulo the wrap, so the hand saturates (sets 0) every page older
// than kSaturateAfter (2 h) when it passes, long before the wrap could make an old
// page look young. Fault threads write ticks with relaxed stores; the hand saturates
// with a compare-exchange, so a fault that lands meanwhile wins.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "guestmem/addr.hpp"
#include "guestmem/stage2.hpp"
#include "io/result.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::guestmem {

// A point on the steady clock (nanoseconds since its epoch). Passed in everywhere,
// never read inside, so tests drive a fake clock.
using MonoTime = std::chrono::nanoseconds;
inline MonoTime mono_now() { return std::chrono::steady_clock::now().time_since_epoch(); }

// The cold-age buckets (`le`, seconds since last access), then +Inf.
struct AgeBucket {
    std::uint64_t le_seconds;
    const char* le;  // as the `le` label and JSON key show it (protocol names)
};
inline constexpr AgeBucket kAgeBuckets[] = {
    {1, "1"}, {5, "5"}, {30, "30"}, {120, "120"}, {600, "600"}, {3600, "3600"}, {UINT64_MAX, "+Inf"},
};
inline constexpr std::size_t kAgeBucketCount = std::size(kAgeBuckets);

// Touched pages (resident or swapped) by time since their last access, cumulative
// like a Prometheus histogram: cumulative[i] counts pages with age <= bound i; the
// last (+Inf) counts every touched page, including those never seen accessed.
struct AgeSnapshot {
    std::array<std::uint64_t, kAgeBucketCount> cumulative{};
    double sum_seconds = 0;  // ages of the pages with a known age (never-seen pages add 0)
    std::uint64_t count() const { return cumulative.back(); }
};

// One full sweep's result: the histogram and the working-set estimate.
struct AgeScan {
    AgeSnapshot ages;
    std::uint64_t working_set_pages = 0;  // touched pages accessed within the window
    MonoTime finished{0};                 // when the sweep that built it ended (0: none yet)
};

class AccessAges {
public:
    static constexpr std::chrono::milliseconds kTick{250};
    static constexpr std::uint32_t kTicks = 65535;  // distinct tick values (1..65535)
    static constexpr std::chrono::seconds kSaturateAfter{2 * 3600};

    static Result<AccessAges> create(std::uint64_t pages);

    // The page was accessed at `now` (a fault resolved it, or it was mapped ahead).
    void touch(PageIdx idx, MonoTime now) {
        // Relaxed: a sample; the hand's compare-exchange is the only other writer.
        at(idx).store(tick_of(now), std::memory_order_relaxed);
    }
    // Time since the page's last access; nullopt if never seen or saturated (older
    // than kSaturateAfter).
    std::optional<std::chrono::nanoseconds> age(PageIdx idx, MonoTime now) const;
    // The hand passes: a page older than kSaturateAfter becomes "old" (0) so the tick
    // wrap never makes it look young.
    void saturate_if_old(PageIdx idx, MonoTime now);

    static std::uint16_t tick_of(MonoTime now) {
        return static_cast<std::uint16_t>((static_cast<std::uint64_t>(now / kTick) % kTicks) + 1);
    }
    static constexpr std::size_t bytes_per_page() { return sizeof(std::uint16_t); }

private:
    AccessAges(io::Mapping ticks, std::uint64_t pages) : ticks_(std::move(ticks)), pages_(pages) {}
    std::atomic<std::uint16_t>& at(PageIdx idx) const {
        SWV_ASSERT(idx.value() < pages_, "access-age index out of range");
        return reinterpret_cast<std::atomic<std::uint16_t>*>(ticks_.data())[idx.value()];
    }
    io::Mapping ticks_;
    std::uint64_t pages_;
};

// The sampled age scan (README#working-set). With a sample of 1 the age scan zaps
// every resident page once per sweep, so a page's age is exact to within one
// period, at one MINOR fault per page in use per period. With N > 1 a sweep zaps
// the resident pages of only every Nth 2 MiB group, rotating (group g in sweep k
// when g = k mod N: zaps stay contiguous runs), so the age scan costs 1/N of the
// faults; the histogram then counts a present page only in the sweep right after
// its group was zapped (when its age says "accessed since the last zap or not" as
// exactly as a full scan would), as N pages, and every page without memory
// (swapped: any access faults, its age is always exact) as one. The estimate is
// unbiased while the groups are not aligned with the guest's use; it is exact for
// N = 1, which is also what a VM without an age scan uses.
class AgeSampling {
public:
    static constexpr std::uint64_t kGroupPages = 512;  // 2 MiB
    static constexpr unsigned kMax = 64;

    explicit AgeSampling(unsigned n = 1) : n_(n == 0 ? 1 : n) {}
    unsigned n() const { return n_; }
    // May the age scan zap this resident page in sweep `sweep`?
    bool zaps(PageIdx idx, std::uint64_t sweep) const { return n_ == 1 || group(idx) == sweep % n_; }
    // How many pages this one stands for in sweep `sweep`'s histogram (0: not counted).
    std::uint32_t weight(PageEntry e, PageIdx idx, std::uint64_t sweep) const {
        if (n_ == 1 || !e.present()) return 1;
        return group(idx) == (sweep + n_ - 1) % n_ ? n_ : 0;
    }

private:
    std::uint64_t group(PageIdx idx) const { return idx.value() / kGroupPages % n_; }
    unsigned n_;
};

// Builds an AgeScan entry by entry as the hand visits them (the reclaimer), so no
// one walks the whole table for a report: stats read the last finished sweep.
class AgeScanBuilder {
public:
    explicit AgeScanBuilder(std::chrono::nanoseconds window) : window_(window) {}
    // One visited page: counted if it holds memory or swap (present or swapped), as
    // `weight` pages (AgeSampling::weight; 0: not counted).
    void visit(PageEntry e, std::optional<std::chrono::nanoseconds> age, std::uint32_t weight = 1);
    // The sweep is complete: return its scan and start the next.
    AgeScan finish(MonoTime now);
    std::chrono::nanoseconds window() const { return window_; }

private:
    std::chrono::nanoseconds window_;
    std::array<std::uint64_t, kAgeBucketCount> per_bucket_{};
    double sum_seconds_ = 0;
    std::uint64_t working_set_ = 0;
};

}  // namespace swapvisor::guestmem
