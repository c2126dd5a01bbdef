// age_scan_bench: what the age scan costs and how well it measures, full against
// sampled (issue #20; guestmem/README.md#working-set, docs/DESIGN-NOTES.md 51).
//
// One VM (no swap, no limit: the age scan alone moves the hand) per sample N. A host
// thread playing the guest touches a cold part of memory once, then writes one word
// of every page of a hot part, over and over, through the guest view (the real
// userfaultfd path). Each age-scan sweep zaps resident pages; every zapped hot page
// costs one MINOR fault when the guest comes back to it. Reported per N:
//   - faults/s: the age scan's cost (MINOR faults per second, after a warm-up);
//   - the working-set estimate against the hot set (the truth), and the histogram's
//     count of touched pages against the pages touched.
// Guest-memory level (no KVM). Usage: age_scan_bench [--mib 256] [--hot-mib 64]
// [--period-ms 1000] [--seconds 10] [--samples 1,2,4,8]
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.hpp"
#include "guestmem/host_memory.hpp"
#include "swap/swap_pool.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
using namespace std::chrono_literals;

namespace {

struct Figures {
    unsigned sample = 1;
    double faults_per_s = 0;
    double ws_mib = 0;
    double touched_estimate = 0;  // the histogram's touched pages / pages touched
    std::uint64_t sweeps_seen = 0;
};

Figures run(unsigned sample, std::uint64_t mib, std::uint64_t hot_mib, std::chrono::milliseconds period,
            std::uint64_t seconds) {
    swap::SwapPool pool;
    HostMemory host(pool, 0);
    auto created = host.create_vm(MemoryConfig{.name = "age" + std::to_string(sample),
                                               .memory_bytes = mib << 20,
                                               .working_set_window = 2s,
                                               .age_scan_period = period,
                                               .age_scan_sample = sample});
    if (!created) {
        std::fprintf(stderr, "age_scan_bench: %s\n", created.error().message().c_str());
        std::exit(1);
    }
    GuestMemory* vm = *created;
    if (auto r = vm->start(); !r) {
        std::fprintf(stderr, "age_scan_bench: start: %s\n", r.error().message().c_str());
        std::exit(1);
    }
    auto* base = reinterpret_cast<volatile std::uint64_t*>(vm->regions()[0].guest_view);
    const std::uint64_t hot = (hot_mib << 20) / kPageSize, cold_end = ((mib << 20) / kPageSize) * 3 / 4;
    for (std::uint64_t p = hot; p < cold_end; ++p) base[p * kPageSize / 8] = p;  // the cold part, once
    std::atomic<bool> stop{false};
    std::thread guest([&] {
        for (std::uint64_t pass = 1; !stop.load(std::memory_order_relaxed); ++pass)
            for (std::uint64_t p = 0; p < hot; ++p) base[p * kPageSize / 8] = pass;
    });
    // Warm up for three periods (the first touches, the first sweeps), then count.
    std::this_thread::sleep_for(3 * period);
    const std::uint64_t minor0 = vm->stats().minor_faults;
    const auto t0 = bench::Clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(seconds));
    const MemStats s = vm->stats();
    const double elapsed = bench::seconds_since(t0);
    stop = true;
    guest.join();
    Figures f;
    f.sample = sample;
    f.faults_per_s = static_cast<double>(s.minor_faults - minor0) / elapsed;
    f.ws_mib = static_cast<double>(s.working_set_bytes) / (1 << 20);
    f.touched_estimate = static_cast<double>(s.cold_age_seconds.count()) / static_cast<double>(cold_end);
    vm->stop();
    (void)host.remove_vm(vm->name());
    return f;
}

}  // namespace

int main(int argc, char** argv) {
    bench::Flags flags(argc, argv);
    const std::uint64_t mib = flags.u64("mib", 256), hot_mib = flags.u64("hot-mib", 64);
    const auto period = std::chrono::milliseconds(flags.u64("period-ms", 1000));
    const std::uint64_t seconds = flags.u64("seconds", 10);
    const std::string samples = flags.str("samples", "1,2,4,8");
    if (!flags.ok("age_scan_bench [--mib 256] [--hot-mib 64] [--period-ms 1000] [--seconds 10] [--samples 1,2,4,8]"))
        return 2;
    if (hot_mib * 4 > mib * 3 || mib % 2 != 0) {
        std::fprintf(stderr, "age_scan_bench: --hot-mib must be under 3/4 of --mib, --mib even\n");
        return 2;
    }
    std::vector<Figures> all;
    std::stringstream list(samples);
    for (std::string item; std::getline(list, item, ',');) all.push_back(run(std::stoul(item), mib, hot_mib, period, seconds));

    std::printf("VM %llu MiB, hot %llu MiB written continuously, %llu MiB touched once; age scan every %lld ms, "
                "window 2 s, %llu s measured\n",
                static_cast<unsigned long long>(mib), static_cast<unsigned long long>(hot_mib),
                static_cast<unsigned long long>(mib * 3 / 4 - hot_mib), static_cast<long long>(period.count()),
                static_cast<unsigned long long>(seconds));
    std::printf("%8s %14s %14s %18s %20s\n", "sample", "faults/s", "vs sample 1", "working set MiB", "touched (estimate)");
    bench::JsonLine json;
    json.integer("age_mib", mib).integer("age_hot_mib", hot_mib).integer("age_period_ms", static_cast<std::uint64_t>(period.count()));
    for (const Figures& f : all) {
        const double ratio = all.front().faults_per_s > 0 ? f.faults_per_s / all.front().faults_per_s : 0;
        std::printf("%8u %14.0f %14.3f %18.1f %19.3fx\n", f.sample, f.faults_per_s, ratio, f.ws_mib, f.touched_estimate);
        const std::string k = "age_sample" + std::to_string(f.sample);
        json.num(k + "_faults_per_s", f.faults_per_s).num(k + "_ws_mib", f.ws_mib).num(k + "_touched_ratio", f.touched_estimate);
    }
    std::printf("%s\n", json.text().c_str());
    return 0;
}
