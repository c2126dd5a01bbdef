// swapoff_bench: time of a live swapoff against the number of used slots on the
// device being removed, and its independence from the number of VMs and from how
// much guest memory is mapped (DESIGN.md section 4: "linear in the used slots of
// that device and independent of total guest memory and of the number of VMs").
//
// Two swap files on a real disk: A (removed) and B (receives the data). Only A is
// swapped on while it is filled; B is swapped on just before swapoff(A).
//
// Part 1, sweep over K used slots (16Ki, 64Ki, 256Ki, 1Mi by default). A is filled
// with pool.write_out batches of 64 pages whose OwnerTags name real pages of a
// real, started VM (guestmem::pack_owner: vm id and page index), so the
// bring-back path would stay valid; it is not taken because B has room. This is the
// same data swapoff sees after a reclaimer pushed pages out, made in seconds instead
// of minutes (the reclaim fill of part 2 at 64Ki cross-checks it).
//
// Part 2, K = 64Ki used slots made by the real path: VMs whose pages a host thread
// writes through the guest view while the reclaimer pushes them out (their stage-2
// entries really refer to the slots). 1 VM x 1 GiB, 4 VMs x 1 GiB, 1 VM x 8 GiB
// (memfd-backed: mapped, never touched beyond the filled part).
//
// Each case checks, after swapoff, that every slot moved (pages_moved == used) and
// that sampled pages read back with a good checksum from B. Prints a table and one
// JSON line (prefix "JSON ").
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <ctime>
#include <cstdio>
#include <filesystem>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.hpp"
#include "guestmem/host_memory.hpp"
#include "io/ring.hpp"
#include "io/unique_fd.hpp"
#include "swap/swap_pool.hpp"

using namespace swapvisor;
using swapvisor::bench::Clock;
using swapvisor::bench::JsonLine;

namespace {

constexpr std::uint64_t kPage = guestmem::kPageSize;
constexpr std::uint64_t kMiB = 1 << 20;
constexpr std::uint64_t kGiB = kMiB << 10;
constexpr std::size_t kBatchPages = 64;
constexpr std::uint64_t kBigCase = 1 << 20;  // slots from which a sweep case runs once

constexpr const char* kUsage =
    "usage: swapoff_bench [--dir DIR] [--sizes K,K,...] [--compare-slots K] [--skip-compare 1] [--reps N]\n"
    "  --dir            directory on a real disk for the two swap files (default /var/tmp)\n"
    "  --sizes          used-slot counts of the sweep (default 16384,65536,262144,1048576)\n"
    "  --compare-slots  used slots for the VM-count / memory-size comparison (default 65536)\n"
    "  --skip-compare   1: run only the sweep\n"
    "  --reps           runs per case, the median is reported (default 3; K >= 1Mi runs once)\n";

struct Fail {};
template <typename T>
T need(Result<T> r, const char* what) {
    if (!r) {
        std::fprintf(stderr, "swapoff_bench: %s: %s\n", what, r.error().message().c_str());
        throw Fail{};
    }
    if constexpr (!std::is_void_v<T>) return std::move(*r);
}

std::uint64_t round_cluster(std::uint64_t bytes) { return (bytes + 2 * kMiB - 1) / (2 * kMiB) * (2 * kMiB); }

std::uint64_t pattern(std::uint64_t page, std::uint64_t word) {
    std::uint64_t x = page * 0x9E3779B97F4A7C15ULL ^ (word << 17);
    x ^= x >> 31;
    return x | 1;
}

struct Case {
    std::string name;
    std::string fill;  // "write_out" or "reclaim"
    unsigned vms = 1;
    std::uint64_t vm_bytes = 0;
    std::uint64_t used_slots = 0;  // on A when swapoff starts
    double fill_s = 0;
    double swapoff_ms = 0;      // wall time
    double swapoff_cpu_ms = 0;  // CPU time of the thread running swapoff (disk waits excluded)
    swap::SwapoffReport report{};
    std::uint64_t verified = 0, bad = 0;
    double ns_per_slot() const { return used_slots ? swapoff_ms * 1e6 / static_cast<double>(used_slots) : 0; }
    double cpu_ns_per_slot() const {
        return used_slots ? swapoff_cpu_ms * 1e6 / static_cast<double>(used_slots) : 0;
    }
};

double thread_cpu_ms() {
    timespec ts{};
    // Kernel contract: CLOCK_THREAD_CPUTIME_ID counts user + system time of this thread only.
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

std::uint64_t used_on(const swap::SwapPool& pool, const std::filesystem::path& path) {
    std::string key = swap::canonical_swap_path(path);
    for (const auto& d : pool.stats())
        if (d.path == key) return d.used_slots;
    return 0;
}

// swapon B, time swapoff(A), verify a sample of the moved pages.
void swapoff_and_check(Case& c, swap::SwapPool& pool, const std::filesystem::path& a, const std::filesystem::path& b,
                       std::uint64_t b_bytes, const std::vector<swap::VSlot>& sample) {
    need(pool.swapon(b, 0, b_bytes), "swapon B");
    io::Ring ring = need(io::Ring::create(64), "ring");
    c.used_slots = used_on(pool, a);
    double cpu0 = thread_cpu_ms();
    auto t0 = Clock::now();
    c.report = need(pool.swapoff(a, ring), "swapoff A");
    c.swapoff_ms = bench::seconds_since(t0) * 1e3;
    c.swapoff_cpu_ms = thread_cpu_ms() - cpu0;
    io::Mapping page = need(io::Mapping::anonymous(kPage), "page");
    for (swap::VSlot v : sample) {
        ++c.verified;
        if (!pool.read_in(ring, v, page.data())) ++c.bad;
    }
    if (c.report.pages_moved != c.used_slots) {
        std::fprintf(stderr, "swapoff_bench: %s: moved %" PRIu64 " of %" PRIu64 " used slots\n", c.name.c_str(),
                     c.report.pages_moved, c.used_slots);
        ++c.bad;
    }
}

// Part 1: K slots on A by write_out batches owned by pages of one real VM.
Case run_write_out_case(const std::filesystem::path& work, std::uint64_t k) {
    Case c;
    c.name = "sweep K=" + std::to_string(k);
    c.fill = "write_out";
    c.vm_bytes = std::max<std::uint64_t>(round_cluster(k * kPage), kGiB);
    const std::uint64_t dev_bytes = round_cluster(k * kPage) + 2 * kMiB;
    auto a = work / "a.swap", b = work / "b.swap";
    {
        swap::SwapPool pool;
        guestmem::HostMemory host(pool, 0);
        auto* vm = need(host.create_vm(guestmem::MemoryConfig{.name = "owner", .memory_bytes = c.vm_bytes}),
                        "create_vm");
        need(vm->start(), "vm start");
        need(pool.swapon(a, 0, dev_bytes), "swapon A");
        io::Ring ring = need(io::Ring::create(64), "ring");
        io::Mapping buf = need(io::Mapping::anonymous(kBatchPages * kPage), "buffer");
        need(ring.register_arena(buf.span()), "register_arena");
        for (std::size_t i = 0; i < kBatchPages; ++i) {
            auto* w = reinterpret_cast<std::uint64_t*>(buf.data() + i * kPage);
            for (std::uint64_t j = 0; j < kPage / 8; ++j) w[j] = pattern(i, j);
        }
        std::vector<swap::PageOut> outs(kBatchPages);
        std::vector<swap::VSlot> sample;
        std::mt19937_64 rng(k);
        auto t0 = Clock::now();
        for (std::uint64_t first = 0; first < k; first += kBatchPages) {
            std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kBatchPages, k - first));
            for (std::size_t i = 0; i < n; ++i) {
                // Distinct content per page: word 0 carries the page index.
                reinterpret_cast<std::uint64_t*>(buf.data() + i * kPage)[0] = first + i;
                outs[i] = swap::PageOut{buf.data() + i * kPage, guestmem::pack_owner(vm->id(), first + i)};
            }
            auto batch = std::span(outs).first(n);
            need(pool.write_out(ring, batch), "write_out");
            for (auto& o : batch) {
                if (!o.ok()) {
                    std::fprintf(stderr, "swapoff_bench: write_out page: %s\n",
                                 make_error_code(*o.error).message().c_str());
                    throw Fail{};
                }
                if (rng() % 64 == 0) sample.push_back(o.vslot);
            }
        }
        c.fill_s = bench::seconds_since(t0);
        swapoff_and_check(c, pool, a, b, dev_bytes, sample);
        vm->stop();
    }
    std::filesystem::remove(a);
    std::filesystem::remove(b);
    return c;
}

// Part 2: ~k slots on A made by the reclaimer of `vms` VMs of vm_bytes each.
Case run_reclaim_case(const std::filesystem::path& work, std::string name, std::uint64_t k, unsigned vms,
                      std::uint64_t vm_bytes) {
    Case c;
    c.name = std::move(name);
    c.fill = "reclaim";
    c.vms = vms;
    c.vm_bytes = vm_bytes;
    constexpr std::uint64_t kLimit = 16 * kMiB;
    const std::uint64_t per_vm_pages = k / vms + kLimit / kPage;  // what stays resident is not swapped
    const std::uint64_t dev_bytes = round_cluster(k * kPage) + 64 * kMiB;
    auto a = work / "a.swap", b = work / "b.swap";
    {
        swap::SwapPool pool;
        need(pool.swapon(a, 0, dev_bytes), "swapon A");
        guestmem::HostMemory host(pool, 0);
        std::vector<guestmem::GuestMemory*> list;
        for (unsigned i = 0; i < vms; ++i) {
            auto* vm = need(host.create_vm(guestmem::MemoryConfig{.name = "vm" + std::to_string(i),
                                                                  .memory_bytes = vm_bytes,
                                                                  .resident_limit = kLimit}),
                            "create_vm");
            need(vm->start(), "vm start");
            list.push_back(vm);
        }
        auto t0 = Clock::now();
        for (auto* vm : list) {
            std::byte* g = vm->regions()[0].guest_view;
            for (std::uint64_t p = 0; p < per_vm_pages; ++p) {
                auto* w = reinterpret_cast<volatile std::uint64_t*>(g + p * kPage);
                for (std::uint64_t j = 0; j < kPage / 8; ++j) w[j] = pattern(p, j);
            }
        }
        // Let every reclaimer finish (at most 20 s).
        for (int i = 0; i < 2000; ++i) {
            bool done = true;
            for (auto* vm : list) done = done && vm->stats().resident_bytes <= kLimit;
            if (done) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        c.fill_s = bench::seconds_since(t0);
        swapoff_and_check(c, pool, a, b, dev_bytes, {});
        // Every page must still read back right after the move (through the faults).
        for (auto* vm : list) {
            const std::byte* g = vm->regions()[0].guest_view;
            for (std::uint64_t p = 0; p < per_vm_pages; p += 61) {
                ++c.verified;
                if (reinterpret_cast<const volatile std::uint64_t*>(g + p * kPage)[3] != pattern(p, 3)) ++c.bad;
            }
            vm->stop();
        }
    }
    std::filesystem::remove(a);
    std::filesystem::remove(b);
    return c;
}

std::vector<std::uint64_t> parse_sizes(const std::string& s) {
    std::vector<std::uint64_t> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) out.push_back(std::stoull(item, nullptr, 0));
    return out;
}

// One case run `reps` times: the median run (by wall time) stands for it.
struct Row {
    Case median;
    double min_ms = 0, max_ms = 0;
    unsigned reps = 0;
    std::uint64_t bad = 0;
};

Row summarize(std::vector<Case> runs) {
    Row r;
    r.reps = static_cast<unsigned>(runs.size());
    for (const Case& c : runs) r.bad += c.bad;
    std::sort(runs.begin(), runs.end(), [](const Case& x, const Case& y) { return x.swapoff_ms < y.swapoff_ms; });
    r.min_ms = runs.front().swapoff_ms;
    r.max_ms = runs.back().swapoff_ms;
    r.median = runs[runs.size() / 2];
    return r;
}

int run(int argc, char** argv) {
    bench::Flags flags(argc, argv);
    std::filesystem::path dir = flags.str("dir", "/var/tmp");
    std::string sizes_s = flags.str("sizes", "16384,65536,262144,1048576");
    const std::uint64_t compare = flags.u64("compare-slots", 65536);
    const bool skip_compare = flags.u64("skip-compare", 0) != 0;
    const unsigned reps = static_cast<unsigned>(std::max<std::uint64_t>(1, flags.u64("reps", 3)));
    if (!flags.ok(kUsage)) return 2;
    if (!bench::on_real_disk(dir)) return 2;
    bench::ScratchDir scratch(dir, "swv-swapoff-bench-");
    const std::filesystem::path& work = scratch.path();

    std::vector<Row> rows;
    std::vector<std::string> notes;
    for (std::uint64_t k : parse_sizes(sizes_s)) {
        // A and B each hold k slots, plus slack for metadata and other writers.
        std::uint64_t need_bytes = 2 * (round_cluster(k * kPage) + 2 * kMiB) + 256 * kMiB;
        std::uint64_t have = bench::free_bytes(dir);
        if (have < need_bytes) {
            std::string why = "K=" + std::to_string(k) + " skipped: needs " + std::to_string(need_bytes / kMiB) +
                              " MiB free in " + dir.string() + ", have " + std::to_string(have / kMiB) + " MiB";
            std::printf("%s\n", why.c_str());
            notes.push_back(why);
            continue;
        }
        // Each repetition of the 4 GiB case writes 4 GiB and moves 4 GiB: once is enough.
        unsigned n = k >= kBigCase ? 1 : reps;
        if (n != reps) notes.push_back("K=" + std::to_string(k) + " ran once (--reps applies below " +
                                       std::to_string(kBigCase) + " slots)");
        std::vector<Case> runs;
        for (unsigned r = 0; r < n; ++r) {
            std::printf("sweep K=%" PRIu64 " run %u/%u ...\n", k, r + 1, n);
            std::fflush(stdout);
            runs.push_back(run_write_out_case(work, k));
        }
        rows.push_back(summarize(std::move(runs)));
    }
    if (!skip_compare) {
        struct Spec {
            const char* name;
            unsigned vms;
            std::uint64_t bytes;
        };
        for (Spec s : {Spec{"1 VM x 1 GiB", 1, kGiB}, Spec{"4 VMs x 1 GiB", 4, kGiB}, Spec{"1 VM x 8 GiB", 1, 8 * kGiB}}) {
            std::vector<Case> runs;
            for (unsigned r = 0; r < reps; ++r) {
                std::printf("compare %s, K~%" PRIu64 " (reclaim fill) run %u/%u ...\n", s.name, compare, r + 1, reps);
                std::fflush(stdout);
                runs.push_back(run_reclaim_case(work, s.name, compare, s.vms, s.bytes));
            }
            rows.push_back(summarize(std::move(runs)));
        }
    }

    std::printf("\nmedian of N runs by swapoff wall time; ns/slot = wall / used slots; cpu ns/slot = CPU time of the\n"
                "swapoff thread / used slots (what the algorithm costs without disk waits)\n");
    std::printf("%-16s %-9s %3s %4s %10s %7s %10s %10s %10s %8s %8s %8s %4s\n", "case", "fill", "VMs", "GiB",
                "used slots", "fill s", "swapoff ms", "min ms", "max ms", "ns/slot", "cpu ns", "MiB/s", "bad");
    std::uint64_t bad = 0;
    std::string arr;
    for (const Row& row : rows) {
        const Case& c = row.median;
        double mib_s = c.swapoff_ms > 0 ? static_cast<double>(c.used_slots * kPage) / kMiB / (c.swapoff_ms / 1e3) : 0;
        std::printf("%-16s %-9s %3u %4.0f %10" PRIu64 " %7.2f %10.1f %10.1f %10.1f %8.0f %8.0f %8.1f %4" PRIu64 "\n",
                    c.name.c_str(), c.fill.c_str(), c.vms, static_cast<double>(c.vm_bytes) / kGiB, c.used_slots,
                    c.fill_s, c.swapoff_ms, row.min_ms, row.max_ms, c.ns_per_slot(), c.cpu_ns_per_slot(), mib_s,
                    row.bad);
        bad += row.bad;
        JsonLine j;
        j.str("case", c.name)
            .str("fill", c.fill)
            .integer("vms", c.vms)
            .integer("vm_bytes", c.vm_bytes)
            .integer("used_slots", c.used_slots)
            .integer("reps", row.reps)
            .num("swapoff_ms", c.swapoff_ms)
            .num("swapoff_min_ms", row.min_ms)
            .num("swapoff_max_ms", row.max_ms)
            .num("ns_per_slot", c.ns_per_slot())
            .num("cpu_ns_per_slot", c.cpu_ns_per_slot())
            .num("mib_per_s", mib_s)
            .integer("pages_moved", c.report.pages_moved)
            .integer("pages_brought_back", c.report.pages_brought_back)
            .integer("bad", row.bad);
        arr += (arr.empty() ? "" : ",") + j.text();
    }
    for (const auto& s : notes) std::printf("note: %s\n", s.c_str());
    std::string notes_json;
    for (const auto& s : notes) notes_json += (notes_json.empty() ? "\"" : ",\"") + s + "\"";
    JsonLine top;
    top.str("bench", "swapoff_bench").str("dir", dir.string()).raw("cases", "[" + arr + "]").raw(
        "notes", "[" + notes_json + "]");
    std::printf("JSON %s\n", top.text().c_str());
    return bad == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const Fail&) {
        return 1;
    }
}
