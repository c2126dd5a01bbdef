// swap_bench: swap-out throughput and swap-in fault latency of swapvisor's own
// stack (SwapPool on an O_DIRECT file through io_uring, GuestMemory with its
// userfaultfd fault service and CLOCK reclaimer), on a real disk.
//
// Phases, in this order (so the direct measurements run on a quiet process):
//   A2  pool.write_out of batches of 64 contiguous pages from one aligned buffer:
//       pass 1 writes fresh file extents, pass 2 rewrites slots freed by pass 1.
//   B2  pool.read_in of one page at a time, random order, no fault involved.
//   A1  one VM with a small resident limit: a host thread fills N MiB of the guest
//       view with non-zero data; the reclaimer pushes pages out; a sampler thread
//       records stats().swap_out_pages every 5 ms.
//   A3  a second VM filled with no limit (all resident), then given the limit at
//       once: the time the reclaimer takes to bring it under the limit is its
//       swap-out capacity, not paced by the filling thread as A1 is.
//   B1  the same host thread touches swapped-out pages in random order, one
//       volatile read each (a host thread's touch of the guest view takes the same
//       userfaultfd path as a vCPU's), timing every touch; every value is checked.
// Prints a table and one JSON line (prefix "JSON "). See bench/README.md.
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.hpp"
#include "guestmem/host_memory.hpp"
#include "guestmem/stage2.hpp"
#include "io/ring.hpp"
#include "io/unique_fd.hpp"
#include "swap/swap_device.hpp"
#include "swap/swap_pool.hpp"
#include "swap/vslot_table.hpp"

using namespace swapvisor;
using swapvisor::bench::Clock;
using swapvisor::bench::JsonLine;
using swapvisor::bench::Percentiles;

namespace {

constexpr std::uint64_t kPage = guestmem::kPageSize;
constexpr std::uint64_t kMiB = 1 << 20;
constexpr std::size_t kBatchPages = 64;

constexpr const char* kUsage =
    "usage: swap_bench [--dir DIR] [--mib N] [--limit-mib N] [--samples N]\n"
    "                  [--direct-mib N] [--readin-samples N] [--fault-workers N]\n"
    "  --dir             directory on a real disk for the swap file (default /var/tmp)\n"
    "  --mib             guest memory filled through the guest view (default 256)\n"
    "  --limit-mib       the VM's resident limit (default 32)\n"
    "  --samples         swap-in faults timed, random order (default 8192)\n"
    "  --direct-mib      data written per pass by pool.write_out (default 256)\n"
    "  --readin-samples  pool.read_in calls timed (default 4096)\n"
    "  --fault-workers   the host's fault workers (default FaultService::default_workers)\n";

// --fault-workers: read once in main, used by every HostMemory of the run.
unsigned g_fault_workers = 0;

std::uint64_t pattern(std::uint64_t page, std::uint64_t word) {
    std::uint64_t x = page * 0x9E3779B97F4A7C15ULL ^ (word << 17);
    x ^= x >> 31;
    return x | 1;  // never a zero page: the reclaimer would drop it without a write
}

void fill_page(std::byte* p, std::uint64_t page) {
    auto* w = reinterpret_cast<volatile std::uint64_t*>(p);
    for (std::uint64_t i = 0; i < kPage / 8; ++i) w[i] = pattern(page, i);
}

std::string fmt_label(const char* format, const char* name) {
    char out[96];
    std::snprintf(out, sizeof out, format, name);
    return out;
}

double mib_per_s(std::uint64_t bytes, double s) { return s > 0 ? static_cast<double>(bytes) / kMiB / s : 0; }

struct Fail {
    const char* what;
};
template <typename T>
T need(Result<T> r, const char* what) {
    if (!r) {
        std::fprintf(stderr, "swap_bench: %s: %s\n", what, r.error().message().c_str());
        throw Fail{what};
    }
    if constexpr (!std::is_void_v<T>) return std::move(*r);
}

struct DirectWrite {
    double mib_s = 0;
    std::uint64_t bytes = 0;
    double seconds = 0;
};

// A2: one pass of write_out batches; frees every slot it took at the end.
DirectWrite direct_write_pass(swap::SwapPool& pool, io::Ring& ring, std::byte* buf, std::uint64_t bytes) {
    const std::uint64_t batches = bytes / (kBatchPages * kPage);
    std::vector<swap::VSlot> taken;
    taken.reserve(batches * kBatchPages);
    std::vector<swap::PageOut> outs(kBatchPages);
    auto t0 = Clock::now();
    for (std::uint64_t b = 0; b < batches; ++b) {
        for (std::size_t i = 0; i < kBatchPages; ++i)
            outs[i] = swap::PageOut{buf + i * kPage, swap::OwnerTag(b * kBatchPages + i)};
        need(pool.write_out(ring, outs), "write_out");
        for (auto& o : outs) {
            if (!o.ok()) {
                std::fprintf(stderr, "swap_bench: write_out page: %s\n",
                             make_error_code(*o.error).message().c_str());
                throw Fail{"write_out"};
            }
            taken.push_back(o.vslot);
        }
    }
    DirectWrite d;
    d.seconds = bench::seconds_since(t0);
    d.bytes = batches * kBatchPages * kPage;
    d.mib_s = mib_per_s(d.bytes, d.seconds);
    for (swap::VSlot v : taken) pool.free(v);
    return d;
}

// A page that compresses like typical guest memory does well (a random head of
// 256 bytes, then one word repeated): what the memory tier is for.
std::uint64_t tier_pattern(std::uint64_t page, std::uint64_t word) { return pattern(page, word < 32 ? word : 32); }

struct TierFigures {
    Percentiles read_in{{}};
    Percentiles fault{{}};
    double ratio = 0;
    std::uint64_t wrong = 0;
};

// B3: swap-in from a compressed memory tier (`spec`, the only device): read_in alone,
// then the guest's userfaultfd round trip (fault -> decompress into the guest page ->
// UFFDIO_CONTINUE), timed as B1 times it from the file.
TierFigures tier_swap_in(const std::string& spec, std::uint64_t samples) {
    constexpr std::uint64_t kTierMib = 64, kTierLimitMib = 8;
    swap::SwapPool pool;
    need(pool.swapon(spec, 0, 0), "swapon memory tier");
    io::Ring ring = need(io::Ring::create(256), "ring");
    TierFigures f;
    std::mt19937_64 rng(7);
    {
        io::Mapping buf = need(io::Mapping::anonymous(kBatchPages * kPage), "buffer");
        std::vector<swap::VSlot> vs;
        std::vector<swap::PageOut> outs(kBatchPages);
        for (std::uint64_t b = 0; b * kBatchPages < samples; ++b) {
            for (std::size_t i = 0; i < kBatchPages; ++i) {
                auto* w = reinterpret_cast<std::uint64_t*>(buf.data() + i * kPage);
                for (std::uint64_t k = 0; k < kPage / 8; ++k) w[k] = tier_pattern(b * kBatchPages + i, k);
                outs[i] = swap::PageOut{buf.data() + i * kPage, swap::OwnerTag(i)};
            }
            need(pool.write_out(ring, outs), "write_out to the tier");
            for (auto& o : outs) vs.push_back(o.ok() ? o.vslot : swap::kNoVSlot);
        }
        for (const swap::DeviceStats& d : pool.stats()) f.ratio = d.ratio();
        std::vector<std::uint64_t> order(vs.size());
        for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::shuffle(order.begin(), order.end(), rng);
        std::vector<double> us;
        for (std::uint64_t i : order) {
            if (vs[i] == swap::kNoVSlot) continue;
            auto t0 = Clock::now();
            auto r = pool.read_in(ring, vs[i], buf.data());
            auto t1 = Clock::now();
            if (!r || reinterpret_cast<std::uint64_t*>(buf.data())[7] != tier_pattern(i, 7)) ++f.wrong;
            us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
        }
        for (swap::VSlot v : vs)
            if (v != swap::kNoVSlot) pool.free(v);
        f.read_in = Percentiles(std::move(us));
    }
    guestmem::HostMemory host(pool, 0, 0, g_fault_workers);
    auto* vm = need(host.create_vm(guestmem::MemoryConfig{.name = "tier",
                                                           .memory_bytes = kTierMib * kMiB,
                                                           .resident_limit = kTierLimitMib * kMiB}),
                    "create_vm");
    need(vm->start(), "vm start");
    std::byte* g = vm->regions()[0].guest_view;
    const std::uint64_t pages = (kTierMib - 4) * kMiB / kPage;
    for (std::uint64_t p = 0; p < pages; ++p) {
        auto* w = reinterpret_cast<volatile std::uint64_t*>(g + p * kPage);
        for (std::uint64_t k = 0; k < kPage / 8; ++k) w[k] = tier_pattern(p, k);
    }
    for (int i = 0; i < 20000 && vm->stats().resident_bytes > kTierLimitMib * kMiB; ++i)
        std::this_thread::sleep_for(std::chrono::microseconds(500));
    std::vector<std::uint64_t> swapped;
    for (std::uint64_t p = 0; p < pages; ++p)
        if (vm->entry(guestmem::Gpa(p * kPage)).state() == guestmem::PageState::swapped) swapped.push_back(p);
    std::shuffle(swapped.begin(), swapped.end(), rng);
    if (swapped.size() > samples) swapped.resize(samples);
    std::vector<double> us;
    for (std::uint64_t p : swapped) {
        if (vm->entry(guestmem::Gpa(p * kPage)).state() != guestmem::PageState::swapped) continue;
        auto* w = reinterpret_cast<volatile std::uint64_t*>(g + p * kPage) + 1;
        auto t0 = Clock::now();
        std::uint64_t v = *w;
        auto t1 = Clock::now();
        if (v != tier_pattern(p, 1)) ++f.wrong;
        us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    vm->stop();
    need(host.remove_vm("tier"), "remove tier vm");
    f.fault = Percentiles(std::move(us));
    return f;
}

int run(int argc, char** argv) {
    bench::Flags flags(argc, argv);
    std::filesystem::path dir = flags.str("dir", "/var/tmp");
    const std::uint64_t mib = flags.u64("mib", 256);
    const std::uint64_t limit_mib = flags.u64("limit-mib", 32);
    const std::uint64_t samples = flags.u64("samples", 8192);
    const std::uint64_t direct_mib = flags.u64("direct-mib", 256);
    const std::uint64_t readin_samples = flags.u64("readin-samples", 4096);
    g_fault_workers = static_cast<unsigned>(flags.u64("fault-workers", 0));
    if (!flags.ok(kUsage)) return 2;
    if (mib < 2 * limit_mib || limit_mib < 4) {
        std::fprintf(stderr, "swap_bench: need --limit-mib >= 4 and --mib >= 2 x --limit-mib\n");
        return 2;
    }
    if (!bench::on_real_disk(dir)) return 2;

    // A1 and A3 each swap out up to --mib at once.
    const std::uint64_t swap_bytes = ((2 * mib + direct_mib + 64) + 1) / 2 * 2 * kMiB;
    if (bench::free_bytes(dir) < swap_bytes + 256 * kMiB) {
        std::fprintf(stderr, "swap_bench: %s has %" PRIu64 " MiB free, need %" PRIu64 " MiB\n", dir.c_str(),
                     bench::free_bytes(dir) / kMiB, swap_bytes / kMiB + 256);
        return 2;
    }
    bench::ScratchDir scratch(dir, "swv-swap-bench-");
    const std::filesystem::path& work = scratch.path();

    swap::SwapPool pool;
    need(pool.swapon(work / "a.swap", 0, swap_bytes), "swapon");
    io::Ring ring = need(io::Ring::create(64), "ring");
    io::Mapping buf = need(io::Mapping::anonymous(kBatchPages * kPage), "buffer");
    need(ring.register_arena(buf.span()), "register_arena");
    for (std::size_t i = 0; i < kBatchPages; ++i) fill_page(buf.data() + i * kPage, 1'000'000 + i);

    std::printf("swap_bench: dir=%s swap file %" PRIu64 " MiB, guest fill %" PRIu64 " MiB, resident limit %" PRIu64
                " MiB\n",
                dir.c_str(), swap_bytes / kMiB, mib, limit_mib);

    // ---- A2: direct write_out ------------------------------------------------
    DirectWrite w1 = direct_write_pass(pool, ring, buf.data(), direct_mib * kMiB);
    DirectWrite w2 = direct_write_pass(pool, ring, buf.data(), direct_mib * kMiB);

    // ---- B2: read_in alone -----------------------------------------------------
    std::vector<swap::VSlot> rvs;
    {
        std::vector<swap::PageOut> outs(kBatchPages);
        for (std::uint64_t b = 0; b * kBatchPages < readin_samples; ++b) {
            for (std::size_t i = 0; i < kBatchPages; ++i) {
                fill_page(buf.data() + i * kPage, b * kBatchPages + i);
                outs[i] = swap::PageOut{buf.data() + i * kPage, swap::OwnerTag(i)};
            }
            need(pool.write_out(ring, outs), "write_out");
            for (auto& o : outs) rvs.push_back(o.vslot);
        }
    }
    std::vector<std::uint64_t> order(rvs.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::mt19937_64 rng(42);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<double> readin_us;
    readin_us.reserve(order.size());
    std::uint64_t readin_bad = 0;
    for (std::uint64_t i : order) {
        auto t0 = Clock::now();
        auto r = pool.read_in(ring, rvs[i], buf.data());
        auto t1 = Clock::now();
        if (!r || reinterpret_cast<std::uint64_t*>(buf.data())[7] != pattern(i, 7)) ++readin_bad;
        readin_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    for (swap::VSlot v : rvs) pool.free(v);
    Percentiles rin(std::move(readin_us));

    // ---- A1: reclaimer swap-out ------------------------------------------------
    guestmem::HostMemory host(pool, 0, 0, g_fault_workers);
    auto* vm = need(host.create_vm(guestmem::MemoryConfig{.name = "bench",
                                                           .memory_bytes = (mib + 2 + 1) / 2 * 2 * kMiB,
                                                           .resident_limit = limit_mib * kMiB}),
                    "create_vm");
    need(vm->start(), "vm start");
    std::byte* g = vm->regions()[0].guest_view;
    const std::uint64_t pages = mib * kMiB / kPage;

    struct Sample {
        double t;
        std::uint64_t out;
    };
    std::vector<Sample> trace;
    std::atomic<bool> stop_sampler{false};
    auto fill_t0 = Clock::now();
    std::thread sampler([&] {
        while (!stop_sampler.load()) {
            trace.push_back({bench::seconds_since(fill_t0), vm->stats().swap_out_pages});
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        trace.push_back({bench::seconds_since(fill_t0), vm->stats().swap_out_pages});
    });
    for (std::uint64_t p = 0; p < pages; ++p) fill_page(g + p * kPage, p);
    const double fill_s = bench::seconds_since(fill_t0);
    // Let the reclaimer finish bringing the VM under its limit (at most 10 s).
    for (int i = 0; i < 1000; ++i) {
        guestmem::MemStats s = vm->stats();
        if (s.resident_bytes <= limit_mib * kMiB) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    stop_sampler = true;
    sampler.join();
    guestmem::MemStats after_fill = vm->stats();
    // Swap-out rate: from the first to the last sample in which the counter moved.
    double first_t = -1, last_t = 0;
    std::uint64_t first_out = 0, last_out = 0;
    for (std::size_t i = 1; i < trace.size(); ++i) {
        if (trace[i].out == trace[i - 1].out) continue;
        if (first_t < 0) {
            first_t = trace[i - 1].t;
            first_out = trace[i - 1].out;
        }
        last_t = trace[i].t;
        last_out = trace[i].out;
    }
    const double out_s = first_t < 0 ? 0 : last_t - first_t;
    const double reclaim_mib_s = mib_per_s((last_out - first_out) * kPage, out_s);


    // ---- A3: reclaimer drain (capacity, not paced by a filler) ------------------
    double drain_mib_s = 0, unlimited_fill_mib_s = 0;
    std::uint64_t drain_pages = 0;
    {
        auto* dv = need(host.create_vm(guestmem::MemoryConfig{.name = "drain",
                                                               .memory_bytes = (mib + 2 + 1) / 2 * 2 * kMiB}),
                        "create_vm drain");
        need(dv->start(), "drain vm start");
        std::byte* dg = dv->regions()[0].guest_view;
        auto t0 = Clock::now();
        for (std::uint64_t p = 0; p < pages; ++p) fill_page(dg + p * kPage, p);
        unlimited_fill_mib_s = mib_per_s(pages * kPage, bench::seconds_since(t0));
        const std::uint64_t out0 = dv->stats().swap_out_pages;
        t0 = Clock::now();
        dv->set_resident_limit(limit_mib * kMiB);
        for (int i = 0; i < 30000; ++i) {
            if (dv->stats().resident_bytes <= limit_mib * kMiB) break;
            std::this_thread::sleep_for(std::chrono::microseconds(500));
        }
        const double s = bench::seconds_since(t0);
        drain_pages = dv->stats().swap_out_pages - out0;
        drain_mib_s = mib_per_s(drain_pages * kPage, s);
        dv->stop();
        need(host.remove_vm("drain"), "remove drain vm");
    }

    // ---- B1: swap-in fault latency ---------------------------------------------
    std::vector<std::uint64_t> swapped;
    for (std::uint64_t p = 0; p < pages; ++p)
        if (vm->entry(guestmem::Gpa(p * kPage)).state() == guestmem::PageState::swapped) swapped.push_back(p);
    std::shuffle(swapped.begin(), swapped.end(), rng);
    if (swapped.size() > samples) swapped.resize(samples);
    guestmem::MemStats before_touch = vm->stats();
    std::vector<double> fault_us;
    fault_us.reserve(swapped.size());
    std::uint64_t not_swapped_at_touch = 0, wrong = 0;
    for (std::uint64_t p : swapped) {
        if (vm->entry(guestmem::Gpa(p * kPage)).state() != guestmem::PageState::swapped) {
            ++not_swapped_at_touch;  // brought in meanwhile (readahead): not a cold fault
            continue;
        }
        // Word 1 of the page: its value is known, so the read is checked, not just timed.
        auto* w = reinterpret_cast<volatile std::uint64_t*>(g + p * kPage) + 1;
        auto t0 = Clock::now();
        std::uint64_t v = *w;
        auto t1 = Clock::now();
        if (v != pattern(p, 1)) ++wrong;
        fault_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    guestmem::MemStats after_touch = vm->stats();
    vm->stop();
    Percentiles flt(std::move(fault_us));

    // ---- B3: swap-in from a compressed memory tier -------------------------------
    const TierFigures lz4 = tier_swap_in("mem:64M,codec=lz4", std::min<std::uint64_t>(samples, 4096));
    const TierFigures zstd = tier_swap_in("mem:64M,codec=zstd", std::min<std::uint64_t>(samples, 4096));

    // ---- report ------------------------------------------------------------------
    std::printf("\n%-44s %12s\n", "metric", "value");
    std::printf("%-44s %12.1f\n", "A2 write_out 64-page batches, fresh (MiB/s)", w1.mib_s);
    std::printf("%-44s %12.1f\n", "A2 write_out 64-page batches, rewrite (MiB/s)", w2.mib_s);
    std::printf("%-44s %12.1f\n", "A1 reclaimer swap-out (MiB/s)", reclaim_mib_s);
    std::printf("%-44s %12.1f\n", "A1 guest fill under limit (MiB/s)", mib_per_s(pages * kPage, fill_s));
    std::printf("%-44s %12" PRIu64 "\n", "A1 pages swapped out", after_fill.swap_out_pages);
    std::printf("%-44s %12" PRIu64 "\n", "A1 fill throttle waits", after_fill.throttle_waits);
    std::printf("%-44s %12.1f\n", "A3 reclaimer drain to the limit (MiB/s)", drain_mib_s);
    std::printf("%-44s %12" PRIu64 "\n", "A3 pages swapped out", drain_pages);
    std::printf("%-44s %12.1f\n", "A3 guest fill, no limit (MiB/s)", unlimited_fill_mib_s);
    std::printf("%-44s %12zu\n", "B2 read_in samples", rin.count());
    std::printf("%-44s %12.1f\n", "B2 read_in p50 (us)", rin.at(50));
    std::printf("%-44s %12.1f\n", "B2 read_in p99 (us)", rin.at(99));
    std::printf("%-44s %12zu\n", "B1 swap-in faults timed", flt.count());
    std::printf("%-44s %12.1f\n", "B1 fault p50 (us)", flt.at(50));
    std::printf("%-44s %12.1f\n", "B1 fault p90 (us)", flt.at(90));
    std::printf("%-44s %12.1f\n", "B1 fault p99 (us)", flt.at(99));
    std::printf("%-44s %12.1f\n", "B1 fault max (us)", flt.max());
    std::printf("%-44s %12.1f\n", "B1 - B2 at p50: fault path overhead (us)", flt.at(50) - rin.at(50));
    for (const auto& [name, t] : {std::pair{"lz4", &lz4}, std::pair{"zstd", &zstd}}) {
        std::printf("%-44s %12.1f\n", fmt_label("B3 memory tier (%s) read_in p50 (us)", name).c_str(), t->read_in.at(50));
        std::printf("%-44s %12.1f\n", fmt_label("B3 memory tier (%s) read_in p99 (us)", name).c_str(), t->read_in.at(99));
        std::printf("%-44s %12.1f\n", fmt_label("B3 memory tier (%s) fault p50 (us)", name).c_str(), t->fault.at(50));
        std::printf("%-44s %12.1f\n", fmt_label("B3 memory tier (%s) fault p99 (us)", name).c_str(), t->fault.at(99));
        std::printf("%-44s %12zu\n", fmt_label("B3 memory tier (%s) faults timed", name).c_str(), t->fault.count());
        std::printf("%-44s %12.2f\n", fmt_label("B3 memory tier (%s) compression ratio", name).c_str(), t->ratio);
    }
    std::printf("%-44s %12" PRIu64 "\n", "B1 major faults during touches",
                after_touch.major_faults - before_touch.major_faults);
    std::printf("%-44s %12" PRIu64 "\n", "B1 pages no longer swapped at touch", not_swapped_at_touch);
    std::printf("%-44s %12" PRIu64 "\n", "wrong values read (must be 0)", wrong + readin_bad + lz4.wrong + zstd.wrong);
    // Metadata, from the data structures' own sizes: per guest page the stage-2 entry;
    // per swapped page its vslot descriptor plus a device slot's reverse map and bits
    // (a device slot costs that whether used or not).
    const double meta_guest = guestmem::Stage2::bytes_per_page();
    const double meta_swapped = swap::VSlotTable::bytes_per_vslot() + swap::SwapDevice::bytes_per_slot();
    std::printf("%-44s %12.2f\n", "metadata per guest page (B)", meta_guest);
    std::printf("%-44s %12.2f\n", "metadata per swapped page (B)", meta_swapped);

    JsonLine j;
    j.str("bench", "swap_bench")
        .str("dir", dir.string())
        .integer("fill_mib", mib)
        .integer("limit_mib", limit_mib)
        .num("write_out_fresh_mib_s", w1.mib_s)
        .num("write_out_rewrite_mib_s", w2.mib_s)
        .num("reclaim_swap_out_mib_s", reclaim_mib_s)
        .num("guest_fill_mib_s", mib_per_s(pages * kPage, fill_s))
        .integer("swap_out_pages", after_fill.swap_out_pages)
        .num("reclaim_drain_mib_s", drain_mib_s)
        .integer("drain_pages", drain_pages)
        .num("unlimited_fill_mib_s", unlimited_fill_mib_s)
        .integer("read_in_samples", rin.count())
        .num("read_in_p50_us", rin.at(50))
        .num("read_in_p99_us", rin.at(99))
        .integer("fault_samples", flt.count())
        .num("fault_p50_us", flt.at(50))
        .num("fault_p90_us", flt.at(90))
        .num("fault_p99_us", flt.at(99))
        .num("fault_max_us", flt.max())
        .integer("major_faults", after_touch.major_faults - before_touch.major_faults)
        .num("tier_lz4_read_in_p50_us", lz4.read_in.at(50))
        .num("tier_lz4_fault_p50_us", lz4.fault.at(50))
        .num("tier_lz4_fault_p99_us", lz4.fault.at(99))
        .num("tier_lz4_ratio", lz4.ratio)
        .num("tier_zstd_read_in_p50_us", zstd.read_in.at(50))
        .num("tier_zstd_fault_p50_us", zstd.fault.at(50))
        .num("tier_zstd_fault_p99_us", zstd.fault.at(99))
        .num("tier_zstd_ratio", zstd.ratio)
        .num("metadata_bytes_per_guest_page", meta_guest)
        .num("metadata_bytes_per_swapped_page", meta_swapped)
        .integer("errors", wrong + readin_bad + lz4.wrong + zstd.wrong);
    std::printf("JSON %s\n", j.text().c_str());
    return wrong + readin_bad + lz4.wrong + zstd.wrong == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const Fail&) {
        return 1;
    }
}
