// snapshot_bench: the memory part of issue #21's snapshot figures, one run
// (docs/SNAPSHOT.md). A VM of MEM MiB is filled with non-zero pages and held at a
// resident limit of a quarter of it (75 % swapped), then:
//   - a full copy (every guest byte read through the VMM view and written to a file,
//     fsync'd: what other VMMs write) against GuestMemory::save (bytes and time);
//   - restore: restore_guest_memory + start + the first page read by the "guest";
//   - a working-set pass (10 % of pages, random order) on a lazy restore, which
//     records it, then on a restore that prefetches it in that order.
// Usage: snapshot_bench [MEM_MiB=256] [DIR=/var/tmp]; prints a table and one JSON line.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "guestmem/guest_memory.hpp"
#include "guestmem/snapshot.hpp"
#include "swap/swap_pool.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

void die(const std::string& what) {
    std::fprintf(stderr, "snapshot_bench: %s\n", what.c_str());
    std::exit(1);
}

template <class T>
T must(Result<T> r, const char* what) {
    if (!r) die(std::string(what) + ": " + r.error().message());
    return std::move(*r);
}

void check(Result<void> r, const char* what) {
    if (!r) die(std::string(what) + ": " + r.error().message());
}

double ws_pass(GuestMemory& vm, const std::vector<std::uint64_t>& pages) {
    const auto t0 = Clock::now();
    std::uint64_t sum = 0;
    for (std::uint64_t p : pages) sum += *reinterpret_cast<volatile std::uint64_t*>(vm.regions()[0].guest_view + p * kPageSize);
    if (sum == 42) std::puts("");
    return ms_since(t0);
}

}  // namespace

int main(int argc, char** argv) {
    const std::uint64_t mem = (argc > 1 ? std::stoull(argv[1]) : 256) << 20;
    const fs::path dir = fs::path(argc > 2 ? argv[2] : "/var/tmp") / ("swv-snapbench-" + std::to_string(getpid()));
    fs::create_directories(dir);
    const std::uint64_t pages = mem / kPageSize;
    swap::SwapPool pool;
    if (auto r = pool.swapon(dir / "a.swap", 0, mem + (64 << 20)); !r) die("swapon: " + r.error().message());

    auto vm = must(create_guest_memory(MemoryConfig{.name = "bench", .memory_bytes = mem, .resident_limit = mem / 4}, 1,
                                       nullptr, &pool),
                   "create");
    check(vm->start(), "start");
    std::mt19937_64 rng(1);
    for (std::uint64_t p = 0; p < pages; ++p) {
        auto* w = reinterpret_cast<volatile std::uint64_t*>(vm->regions()[0].guest_view + p * kPageSize);
        for (std::uint64_t i = 0; i < kPageSize / 8; i += 8) w[i] = rng() | 1;
    }
    for (int i = 0; i < 3000 && vm->stats().swapped_bytes < mem * 7 / 10; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const double swapped_frac = static_cast<double>(vm->stats().swapped_bytes) / static_cast<double>(mem);

    // Full copy: every byte, as a VMM that ignores swap writes it.
    auto t0 = Clock::now();
    {
        const int fd = ::open((dir / "full.img").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) die("open full.img");
        std::vector<std::byte> buf(1 << 20);
        for (std::uint64_t off = 0; off < mem; off += buf.size()) {
            check(vm->read(Gpa(off), buf), "read");
            if (::pwrite(fd, buf.data(), buf.size(), static_cast<off_t>(off)) != static_cast<ssize_t>(buf.size())) die("write");
        }
        ::fsync(fd);
        ::close(fd);
    }
    const double full_ms = ms_since(t0);
    const std::uint64_t full_bytes = mem;
    // The full copy's reads swapped everything in; evict again to the same fraction.
    for (int i = 0; i < 3000 && vm->stats().swapped_bytes < mem * 7 / 10; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const double swapped_at_snap = static_cast<double>(vm->stats().swapped_bytes) / static_cast<double>(mem);

    t0 = Clock::now();
    auto snap = must(vm->save(dir / "snap"), "save");
    const double snap_ms = ms_since(t0);
    const std::uint64_t snap_bytes = snap->counts().bytes_written;
    vm->stop();
    vm.reset();

    // Restore to the first page the guest reads.
    t0 = Clock::now();
    auto lazy = must(restore_guest_memory(MemoryConfig{.name = "lazy", .memory_bytes = mem}, 2, nullptr, &pool, *snap,
                                          RestoreOptions{.fill = false, .prefetch = false}),
                     "restore");
    check(lazy->start(), "start");
    (void)*reinterpret_cast<volatile std::uint64_t*>(lazy->regions()[0].guest_view);
    const double first_ms = ms_since(t0);

    std::vector<std::uint64_t> ws;
    for (std::uint64_t p = 0; p < pages; ++p)
        if (rng() % 10 == 0) ws.push_back(p);
    std::shuffle(ws.begin(), ws.end(), rng);
    const double lazy_ms = ws_pass(*lazy, ws);
    check(lazy->save_working_set(), "save_working_set");
    lazy->stop();
    lazy.reset();

    // Both passes find the image in the page cache after the first restore; the swap
    // file is read O_DIRECT by both.
    auto pre = must(restore_guest_memory(MemoryConfig{.name = "prefetch", .memory_bytes = mem}, 3, nullptr, &pool, *snap,
                                         RestoreOptions{.fill = false, .prefetch = true}),
                    "restore");
    check(pre->start(), "start");
    const double pre_ms = ws_pass(*pre, ws);
    pre->stop();
    pre.reset();
    check(delete_memory_snapshot(std::move(snap)), "delete");

    std::printf("memory %llu MiB, swapped %.0f %% (%.0f %% at snapshot)\n", static_cast<unsigned long long>(mem >> 20),
                swapped_frac * 100, swapped_at_snap * 100);
    std::printf("full copy  %10.1f ms %12llu bytes\n", full_ms, static_cast<unsigned long long>(full_bytes));
    std::printf("snapshot   %10.1f ms %12llu bytes\n", snap_ms, static_cast<unsigned long long>(snap_bytes));
    std::printf("restore to first page %.2f ms\n", first_ms);
    std::printf("working-set pass (%zu pages): lazy %.1f ms, recorded-order prefetch %.1f ms\n", ws.size(), lazy_ms, pre_ms);
    std::printf("{\"memory_mib\": %llu, \"swapped_fraction\": %.3f, \"snap_bytes_ratio_vs_full\": %.4f, "
                "\"snap_ms_ratio_vs_full\": %.4f, \"restore_first_page_ms\": %.3f, \"restore_prefetch_speedup\": %.2f}\n",
                static_cast<unsigned long long>(mem >> 20), swapped_at_snap,
                static_cast<double>(snap_bytes) / static_cast<double>(full_bytes), snap_ms / full_ms, first_ms,
                lazy_ms / pre_ms);
    std::error_code ec;
    fs::remove_all(dir, ec);
    return 0;
}
