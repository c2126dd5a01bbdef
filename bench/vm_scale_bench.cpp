// vm_scale_bench: guestmem at 1, 4, 16 ... VMs in one HostMemory (issue #18 item 1,
// the guestmem-level part of bench/scale_bench.sh, which needs KVM). The same total
// guest memory is split among N VMs, so every N does the same work:
//
//   out   each VM filled with no limit (host threads play the guests, one per VM),
//         then every VM's limit set at once to 1/8 of its memory: the time until
//         all are under their limits is the aggregate swap-out rate;
//   in    the limits lifted, one guest thread per VM reads its swapped pages in a
//         random order (each read checked), all at once: the aggregate swap-in rate
//         and the fault latency (p50 / p99) of every touch;
//   threads  the process's threads during the run: the reclaim workers
//         (swv-reclaim), the host-wide fault workers (swv-fault; one per VM before
//         the fault service, guestmem/fault_service.hpp), all of ours, and
//         apart from those io_uring's kernel workers (iou-*), which the kernel
//         adds on demand.
//
// Prints a table with each figure as a ratio to the first N of the same run, and one
// JSON line (prefix "JSON "). See bench/README.md#vm_scale_bench.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.hpp"
#include "guestmem/host_memory.hpp"
#include "swap/swap_pool.hpp"

using namespace swapvisor;
using swapvisor::bench::Clock;
using swapvisor::bench::JsonLine;
using swapvisor::bench::Percentiles;

namespace {

constexpr std::uint64_t kPage = guestmem::kPageSize;
constexpr std::uint64_t kMiB = 1 << 20;

constexpr const char* kUsage =
    "usage: vm_scale_bench [--dir DIR] [--total-mib N] [--vms LIST] [--workers N] [--fault-workers N]\n"
    "  --dir        directory on a real disk for the swap file (default /var/tmp)\n"
    "  --total-mib  guest memory of all VMs together (default 256)\n"
    "  --vms        comma-separated VM counts (default 1,4,16)\n"
    "  --workers    reclaim workers (default: ReclaimService::default_workers)\n"
    "  --fault-workers  fault workers (default: FaultService::default_workers)\n";

std::uint64_t pattern(std::uint64_t vm, std::uint64_t page) { return (vm * 0x9E3779B97F4A7C15ULL ^ page * 0xBF58476D1CE4E5B9ULL) | 1; }

void fill(std::byte* g, std::uint64_t vm, std::uint64_t pages) {
    for (std::uint64_t p = 0; p < pages; ++p) {
        auto* w = reinterpret_cast<volatile std::uint64_t*>(g + p * kPage);
        for (std::uint64_t i = 0; i < kPage / 8; ++i) w[i] = pattern(vm, p) + i;
    }
}

// Our threads named `name` (null: all of ours); io_uring's kernel workers (`iou-*`,
// added by the kernel on demand per submitting thread) are counted apart.
std::size_t threads_named(const char* name) {
    std::size_t n = 0;
    for (const auto& d : std::filesystem::directory_iterator("/proc/self/task")) {
        std::ifstream f(d.path() / "comm");
        std::string comm;
        if (!std::getline(f, comm) || comm.rfind("iou-", 0) == 0) continue;
        if (name == nullptr || comm == name) ++n;
    }
    return n;
}
std::size_t io_uring_workers() {
    std::size_t n = 0;
    for (const auto& d : std::filesystem::directory_iterator("/proc/self/task")) {
        std::ifstream f(d.path() / "comm");
        std::string comm;
        if (std::getline(f, comm) && comm.rfind("iou-", 0) == 0) ++n;
    }
    return n;
}

template <class T>
T need(Result<T> r, const char* what) {
    if (!r) {
        std::fprintf(stderr, "%s: %s\n", what, r.error().message().c_str());
        std::exit(1);
    }
    return std::move(*r);
}
void need(Result<void> r, const char* what) {
    if (!r) {
        std::fprintf(stderr, "%s: %s\n", what, r.error().message().c_str());
        std::exit(1);
    }
}

struct Row {
    unsigned vms = 0;
    double out_mib_s = 0, in_mib_s = 0, p50_us = 0, p99_us = 0;
    std::size_t workers = 0, fault_threads = 0, threads = 0, iou = 0;
    std::uint64_t wrong = 0, out_pages = 0, in_pages = 0;
};

Row run(unsigned n, std::uint64_t total_mib, unsigned workers, unsigned fault_workers,
        const std::filesystem::path& dir) {
    Row row;
    row.vms = n;
    // 2 MiB granules per VM; the swap file holds everything with room to spare.
    const std::uint64_t vm_bytes = std::max<std::uint64_t>(2, total_mib / n / 2 * 2) * kMiB;
    const std::uint64_t pages = vm_bytes / kPage;
    const std::uint64_t limit = std::max<std::uint64_t>(2 * kMiB, vm_bytes / 8 / (2 * kMiB) * (2 * kMiB));
    swap::SwapPool pool;
    need(pool.swapon(dir / "scale.swap", 0, vm_bytes * n * 2), "swapon");
    {
        guestmem::HostMemory host(pool, 0, workers, fault_workers);
        std::vector<guestmem::GuestMemory*> vms;
        for (unsigned i = 0; i < n; ++i) {
            auto* vm = need(host.create_vm(guestmem::MemoryConfig{.name = "vm" + std::to_string(i),
                                                                  .memory_bytes = vm_bytes}),
                            "create_vm");
            need(vm->start(), "start");
            vms.push_back(vm);
        }
        {
            std::vector<std::thread> guests;
            for (unsigned i = 0; i < n; ++i) guests.emplace_back([&, i] { fill(vms[i]->regions()[0].guest_view, i, pages); });
            for (auto& t : guests) t.join();
        }
        // ---- out: every limit at once; until all are under it ------------------------
        std::uint64_t out0 = 0;
        for (auto* vm : vms) out0 += vm->stats().swap_out_pages;
        auto t0 = Clock::now();
        for (auto* vm : vms) vm->set_resident_limit(limit);
        for (int i = 0; i < 120000; ++i) {
            bool all = true;
            for (auto* vm : vms) all = all && vm->stats().resident_bytes <= limit;
            if (all) break;
            std::this_thread::sleep_for(std::chrono::microseconds(500));
        }
        const double out_s = bench::seconds_since(t0);
        for (auto* vm : vms) row.out_pages += vm->stats().swap_out_pages;
        row.out_pages -= out0;
        row.out_mib_s = static_cast<double>(row.out_pages * kPage) / kMiB / out_s;
        row.workers = threads_named("swv-reclaim");
        row.fault_threads = threads_named("swv-fault");
        row.threads = threads_named(nullptr);
        row.iou = io_uring_workers();
        // Let the last batches complete before the limits are lifted.
        std::this_thread::sleep_for(std::chrono::milliseconds(200));

        // ---- in: all guests read their swapped pages at once --------------------------
        for (auto* vm : vms) vm->set_resident_limit(0);
        std::vector<std::vector<double>> lat(n);
        std::vector<std::uint64_t> wrong(n, 0);
        std::vector<std::vector<std::uint64_t>> todo(n);
        std::uint64_t in0 = 0;
        for (unsigned i = 0; i < n; ++i) {
            std::mt19937_64 rng(i + 1);
            for (std::uint64_t p = 0; p < pages; ++p)
                if (vms[i]->entry(guestmem::Gpa(p * kPage)).state() == guestmem::PageState::swapped) todo[i].push_back(p);
            std::shuffle(todo[i].begin(), todo[i].end(), rng);
            in0 += vms[i]->stats().swap_in_pages;
        }
        t0 = Clock::now();
        {
            std::vector<std::thread> guests;
            for (unsigned i = 0; i < n; ++i) {
                guests.emplace_back([&, i] {
                    std::byte* g = vms[i]->regions()[0].guest_view;
                    lat[i].reserve(todo[i].size());
                    for (std::uint64_t p : todo[i]) {
                        auto* w = reinterpret_cast<volatile std::uint64_t*>(g + p * kPage) + 1;
                        const auto a = Clock::now();
                        const std::uint64_t v = *w;
                        lat[i].push_back(std::chrono::duration<double, std::micro>(Clock::now() - a).count());
                        if (v != pattern(i, p) + 1) ++wrong[i];
                    }
                });
            }
            for (auto& t : guests) t.join();
        }
        const double in_s = bench::seconds_since(t0);
        std::vector<double> all;
        for (unsigned i = 0; i < n; ++i) {
            row.in_pages += vms[i]->stats().swap_in_pages;
            row.wrong += wrong[i];
            all.insert(all.end(), lat[i].begin(), lat[i].end());
        }
        row.in_pages -= in0;
        row.in_mib_s = static_cast<double>(row.in_pages * kPage) / kMiB / in_s;
        Percentiles pc(std::move(all));
        row.p50_us = pc.at(50);
        row.p99_us = pc.at(99);
        for (unsigned i = 0; i < n; ++i) need(host.remove_vm("vm" + std::to_string(i)), "remove_vm");
    }
    return row;
}

std::vector<unsigned> parse_list(const std::string& s) {
    std::vector<unsigned> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(static_cast<unsigned>(std::stoul(item)));
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    bench::Flags flags(argc, argv);
    const std::filesystem::path base = flags.str("dir", "/var/tmp");
    const std::uint64_t total_mib = flags.u64("total-mib", 256);
    const std::vector<unsigned> counts = parse_list(flags.str("vms", "1,4,16"));
    const unsigned workers = static_cast<unsigned>(flags.u64("workers", 0));
    const unsigned fault_workers = static_cast<unsigned>(flags.u64("fault-workers", 0));
    if (!flags.ok(kUsage) || counts.empty()) return 2;
    if (!bench::on_real_disk(base)) return 1;
    bench::ScratchDir dir(base, "swv-vmscale-");
    std::vector<Row> rows;
    for (unsigned n : counts) rows.push_back(run(n, total_mib, workers, fault_workers, dir.path()));

    const Row& r0 = rows.front();
    std::printf("vm_scale_bench: %" PRIu64 " MiB of guest memory split among N VMs, limits 1/8 (ratios to N=%u)\n",
                total_mib, r0.vms);
    std::printf("%5s %12s %7s %12s %7s %9s %9s %8s %7s %8s %5s %6s\n", "vms", "out MiB/s", "ratio", "in MiB/s", "ratio",
                "p50 us", "p99 us", "workers", "faultT", "threads", "iou", "wrong");
    JsonLine j;
    for (const Row& r : rows) {
        std::printf("%5u %12.1f %7.2f %12.1f %7.2f %9.1f %9.1f %8zu %7zu %8zu %5zu %6" PRIu64 "\n", r.vms,
                    r.out_mib_s, r.out_mib_s / r0.out_mib_s, r.in_mib_s, r.in_mib_s / r0.in_mib_s, r.p50_us, r.p99_us,
                    r.workers, r.fault_threads, r.threads, r.iou, r.wrong);
        const std::string k = "vms" + std::to_string(r.vms) + "_";
        j.num(k + "swapout_mib_s", r.out_mib_s)
            .num(k + "swapout_ratio", r.out_mib_s / r0.out_mib_s)
            .num(k + "swapin_mib_s", r.in_mib_s)
            .num(k + "swapin_ratio", r.in_mib_s / r0.in_mib_s)
            .num(k + "p50_fault_us", r.p50_us)
            .num(k + "p99_fault_us", r.p99_us)
            .integer(k + "reclaim_threads", r.workers)
            .integer(k + "fault_threads", r.fault_threads)
            .integer(k + "threads", r.threads)
            .integer(k + "io_uring_workers", r.iou)
            .integer(k + "wrong", r.wrong);
    }
    std::printf("JSON %s\n", j.text().c_str());
    std::uint64_t wrong = 0;
    for (const Row& r : rows) wrong += r.wrong;
    return wrong == 0 ? 0 : 1;
}
