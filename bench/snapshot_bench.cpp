// snapshot_bench: the memory part of issue #21's snapshot figures, one run
// (docs/SNAPSHOT.md). A VM of MEM MiB is filled with non-zero pages and held at a
// resident limit of a quarter of it (75 % swapped), then:
//   - a full copy (every guest byte read through the VMM view and written to a file,
//     fsync'd: what other VMMs write) against GuestMemory::save (bytes and time);
//   - restore: restore_guest_memory + start + the first page read by the "guest";
//   - a working-set pass (10 % of pages, random order) on a lazy restore, which
//     records it, then on a restore that prefetches it in that order, then lazily
//     again (the speedup is taken against the faster of the two lazy passes, so a
//     disk cache warmed by the first pass cannot flatter the prefetch);
//   - the prefetcher alone (no guest): time until the working set is in memory;
//   - clones: a VM of CLONE_MiB (75 % swapped) saved, 8 VMs restored from that one
//     snapshot (lazy: no filler, no prefetch), each touching its own random 10 % of
//     its pages through its guest view (a read and a write of one word per page, 8
//     host threads at once, as 8 guests), then host memory: the clones' memfd pages
//     (fstat st_blocks of each clone's memfd: every page the host holds for a clone,
//     whether it came from the image or from swap or was written), plus the page
//     cache the memory image occupies (mincore; shared by all clones, counted once),
//     plus the process's anonymous memory added by the clones (VmRSS's RssAnon delta:
//     stage-2 tables, buffers, thread stacks). Not a cgroup figure: this host's
//     memory cgroup is shared with other processes, whose memory would be counted.
// Usage: snapshot_bench [MEM_MiB=256] [DIR=/var/tmp] [CLONE_MiB=1024] (CLONE_MiB 0:
// no clones); prints a table and one JSON line (a line starting with `{`; bench/snapshot_sweep.sh
// runs it over memory sizes and plots it).
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
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

// Bytes the memfds named swapvisor-<prefix>* hold (allocated shmem pages), over the
// process's open files: each clone's private guest pages.
std::uint64_t memfd_bytes(const std::string& prefix) {
    std::uint64_t total = 0;
    for (const auto& e : fs::directory_iterator("/proc/self/fd")) {
        std::error_code ec;
        const fs::path target = fs::read_symlink(e.path(), ec);
        if (ec || target.string().rfind("/memfd:swapvisor-" + prefix, 0) != 0) continue;
        struct stat st{};
        if (::stat(e.path().c_str(), &st) == 0) total += static_cast<std::uint64_t>(st.st_blocks) * 512;
    }
    return total;
}

// Bytes of a file in the page cache (mincore over a read-only mapping).
std::uint64_t cached_bytes(const fs::path& p) {
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat st{};
    std::uint64_t cached = 0;
    if (::fstat(fd, &st) == 0 && st.st_size > 0) {
        const std::size_t len = static_cast<std::size_t>(st.st_size);
        void* m = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
        if (m != MAP_FAILED) {
            std::vector<unsigned char> vec((len + kPageSize - 1) / kPageSize);
            if (::mincore(m, len, vec.data()) == 0)
                for (unsigned char c : vec) cached += (c & 1) ? kPageSize : 0;
            ::munmap(m, len);
        }
    }
    ::close(fd);
    return cached;
}

// RssAnon of this process, bytes.
std::uint64_t rss_anon() {
    std::ifstream in("/proc/self/status");
    std::string key;
    while (in >> key) {
        if (key == "RssAnon:") {
            std::uint64_t kib = 0;
            in >> kib;
            return kib << 10;
        }
        in.ignore(1 << 10, '\n');
    }
    return 0;
}

struct CloneFigures {
    std::uint64_t memory = 0, touched_pages = 0;
    std::uint64_t memfd = 0, image_cache = 0, anon = 0;
    double touch_ms = 0;
    std::uint64_t bad = 0;
    double host_mib() const { return static_cast<double>(memfd + image_cache + anon) / (1 << 20); }
};

// 8 clones of one snapshot of a `mem`-byte VM, each touching 10 %: host memory.
CloneFigures clones8(std::uint64_t mem, const fs::path& dir) {
    constexpr int kClones = 8;
    const std::uint64_t pages = mem / kPageSize;
    swap::SwapPool pool;
    if (auto r = pool.swapon(dir / "clones.swap", 0, mem + (64 << 20)); !r) die("swapon: " + r.error().message());
    auto vm = must(create_guest_memory(MemoryConfig{.name = "cbase", .memory_bytes = mem, .resident_limit = mem / 4}, 11,
                                       nullptr, &pool),
                   "create");
    check(vm->start(), "start");
    // Each page's first word says which page it is: a clone checks it on every touch.
    for (std::uint64_t p = 0; p < pages; ++p) {
        auto* w = reinterpret_cast<volatile std::uint64_t*>(vm->regions()[0].guest_view + p * kPageSize);
        w[0] = p + 1;
        w[1] = 0x5a5a5a5a5a5a5a5aULL ^ p;
    }
    for (int i = 0; i < 6000 && vm->stats().swapped_bytes < mem * 7 / 10; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    auto snap = must(vm->save(dir / "csnap"), "save");
    vm->stop();
    vm.reset();

    CloneFigures f;
    f.memory = mem;
    const std::uint64_t anon0 = rss_anon();
    std::vector<std::unique_ptr<GuestMemory>> clones;
    for (int c = 0; c < kClones; ++c) {
        clones.push_back(must(restore_guest_memory(MemoryConfig{.name = "clone" + std::to_string(c), .memory_bytes = mem},
                                                   static_cast<VmId>(20 + c), nullptr, &pool, *snap,
                                                   RestoreOptions{.fill = false, .prefetch = false}),
                              "restore clone"));
        check(clones.back()->start(), "start clone");
    }
    const auto t0 = Clock::now();
    std::vector<std::thread> guests;
    std::vector<std::uint64_t> bad(kClones, 0), touched(kClones, 0);
    for (int c = 0; c < kClones; ++c) {
        guests.emplace_back([&, c] {
            std::mt19937_64 rng(100 + c);
            std::byte* base = clones[c]->regions()[0].guest_view;
            // Random order, as the working-set pass: an ascending sweep with gaps of
            // ~10 pages looks sequential to swap readahead (10'), which would bring
            // in the next 16 swapped pages on every fault (docs/SNAPSHOT.md#measured).
            std::vector<std::uint64_t> mine;
            for (std::uint64_t p = 0; p < pages; ++p)
                if (rng() % 10 == 0) mine.push_back(p);
            std::shuffle(mine.begin(), mine.end(), rng);
            for (std::uint64_t p : mine) {
                auto* w = reinterpret_cast<volatile std::uint64_t*>(base + p * kPageSize);
                if (w[0] != p + 1) bad[c]++;  // the snapshot's byte, read through the clone
                w[1] = 0xc10e0000ULL + static_cast<std::uint64_t>(c);  // the clone's own write
                touched[c]++;
            }
        });
    }
    for (auto& t : guests) t.join();
    f.touch_ms = ms_since(t0);
    for (int c = 0; c < kClones; ++c) {
        f.bad += bad[c];
        f.touched_pages += touched[c];
    }
    f.memfd = memfd_bytes("clone");
    f.image_cache = cached_bytes(snap->dir() / kMemoryImage);
    const std::uint64_t anon1 = rss_anon();
    f.anon = anon1 > anon0 ? anon1 - anon0 : 0;
    for (auto& c : clones) c->stop();
    clones.clear();
    check(delete_memory_snapshot(std::move(snap)), "delete");
    return f;
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

    // Restore to the first page the guest reads, in its three parts: the page table
    // built from the snapshot, guest memory started, the first read (a fault).
    t0 = Clock::now();
    auto lazy = must(restore_guest_memory(MemoryConfig{.name = "lazy", .memory_bytes = mem}, 2, nullptr, &pool, *snap,
                                          RestoreOptions{.fill = false, .prefetch = false}),
                     "restore");
    const double restore_table_ms = ms_since(t0);
    check(lazy->start(), "start");
    const double restore_started_ms = ms_since(t0);
    (void)*reinterpret_cast<volatile std::uint64_t*>(lazy->regions()[0].guest_view);
    const double first_ms = ms_since(t0);

    const std::uint64_t clone_mib = argc > 3 ? std::stoull(argv[3]) : 1024;
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
    // Lazy again, after the prefetch pass: whatever the first lazy pass left warm in
    // the disk's caches, this one finds too.
    auto lazy2 = must(restore_guest_memory(MemoryConfig{.name = "lazy2", .memory_bytes = mem}, 5, nullptr, &pool, *snap,
                                           RestoreOptions{.fill = false, .prefetch = false}),
                      "restore");
    check(lazy2->start(), "start");
    const double lazy2_ms = ws_pass(*lazy2, ws);
    lazy2->stop();
    lazy2.reset();
    const double lazy_best_ms = std::min(lazy_ms, lazy2_ms);
    // The prefetcher alone: time until every page of the recorded working set is in
    // memory, no guest. The recorded set is memory.workingset ("SWVWSET1", u64 count,
    // u32 page[count], xxh3): pages the recording restore got through swap readahead
    // took no fault there, so they are not in it and no prefetch brings them.
    std::vector<std::uint64_t> recorded;
    {
        std::ifstream in(snap->dir() / kMemoryWorkingSet, std::ios::binary);
        char magic[8];
        std::uint64_t count = 0;
        in.read(magic, 8);
        in.read(reinterpret_cast<char*>(&count), 8);
        for (std::uint64_t k = 0; in && k < count; ++k) {
            std::uint32_t page = 0;
            in.read(reinterpret_cast<char*>(&page), 4);
            recorded.push_back(page);
        }
        if (!in || recorded.size() != count) die("cannot read the working-set file");
    }
    t0 = Clock::now();
    auto alone = must(restore_guest_memory(MemoryConfig{.name = "alone", .memory_bytes = mem}, 4, nullptr, &pool, *snap,
                                           RestoreOptions{.fill = false, .prefetch = true}),
                      "restore");
    check(alone->start(), "start");
    auto in_memory = [&](std::uint64_t p) {
        const PageState s = alone->entry(Gpa(p * kPageSize)).state();
        return s == PageState::resident || s == PageState::inactive;
    };
    while (!std::all_of(recorded.begin(), recorded.end(), in_memory) && ms_since(t0) < 10000)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    const double alone_ms = ms_since(t0);
    alone->stop();
    alone.reset();
    check(delete_memory_snapshot(std::move(snap)), "delete");
    CloneFigures cl;
    if (clone_mib != 0) cl = clones8(clone_mib << 20, dir);

    std::printf("memory %llu MiB, swapped %.0f %% (%.0f %% at snapshot)\n", static_cast<unsigned long long>(mem >> 20),
                swapped_frac * 100, swapped_at_snap * 100);
    std::printf("full copy  %10.1f ms %12llu bytes\n", full_ms, static_cast<unsigned long long>(full_bytes));
    std::printf("snapshot   %10.1f ms %12llu bytes\n", snap_ms, static_cast<unsigned long long>(snap_bytes));
    std::printf("restore to first page %.2f ms (restore_guest_memory %.2f ms, start %.2f ms, first read %.2f ms)\n",
                first_ms, restore_table_ms, restore_started_ms - restore_table_ms, first_ms - restore_started_ms);
    std::printf("working-set pass (%zu pages): lazy %.1f ms, recorded-order prefetch %.1f ms, lazy again %.1f ms "
                "(speedup %.2fx against the faster lazy pass)\n",
                ws.size(), lazy_ms, pre_ms, lazy2_ms, lazy_best_ms / pre_ms);
    std::printf("prefetcher alone (no guest): the %zu recorded pages in memory after %.1f ms\n", recorded.size(),
                alone_ms);
    if (clone_mib != 0)
        std::printf("8 clones of a %llu MiB snapshot, %llu pages touched (%.1f %% each), %llu wrong: memfds %.1f MiB + "
                    "image page cache %.1f MiB + anon %.1f MiB = %.1f MiB host (full copies: %llu MiB); touch %.0f ms\n",
                    static_cast<unsigned long long>(clone_mib), static_cast<unsigned long long>(cl.touched_pages),
                    100.0 * static_cast<double>(cl.touched_pages) / 8 / static_cast<double>(cl.memory / kPageSize),
                    static_cast<unsigned long long>(cl.bad), static_cast<double>(cl.memfd) / (1 << 20),
                    static_cast<double>(cl.image_cache) / (1 << 20), static_cast<double>(cl.anon) / (1 << 20),
                    cl.host_mib(), static_cast<unsigned long long>(8 * clone_mib), cl.touch_ms);
    std::printf("{\"memory_mib\": %llu, \"swapped_fraction\": %.3f, \"snap_bytes_ratio_vs_full\": %.4f, "
                "\"snap_ms_ratio_vs_full\": %.4f, \"restore_first_page_ms\": %.3f, \"restore_prefetch_speedup\": %.2f, "
                "\"ws_lazy_ms\": %.1f, \"ws_lazy_again_ms\": %.1f, \"ws_prefetch_ms\": %.1f, \"prefetch_alone_ms\": %.1f, "
                "\"full_ms\": %.1f, \"full_bytes\": %llu, \"snap_ms\": %.1f, \"snap_bytes\": %llu, \"ws_pages\": %zu, "
                "\"restore_table_ms\": %.3f, \"restore_start_ms\": %.3f",
                static_cast<unsigned long long>(mem >> 20), swapped_at_snap,
                static_cast<double>(snap_bytes) / static_cast<double>(full_bytes), snap_ms / full_ms, first_ms,
                lazy_best_ms / pre_ms, lazy_ms, lazy2_ms, pre_ms, alone_ms, full_ms,
                static_cast<unsigned long long>(full_bytes), snap_ms, static_cast<unsigned long long>(snap_bytes),
                ws.size(), restore_table_ms, restore_started_ms - restore_table_ms);
    if (clone_mib != 0)
        std::printf(", \"clone_snapshot_mib\": %llu, \"clones8_host_mib\": %.1f, \"clones8_memfd_mib\": %.1f, "
                    "\"clones8_image_cache_mib\": %.1f, \"clones8_anon_mib\": %.1f, \"clones8_wrong_pages\": %llu",
                    static_cast<unsigned long long>(clone_mib), cl.host_mib(), static_cast<double>(cl.memfd) / (1 << 20),
                    static_cast<double>(cl.image_cache) / (1 << 20), static_cast<double>(cl.anon) / (1 << 20),
                    static_cast<unsigned long long>(cl.bad));
    std::printf("}\n");
    std::error_code ec;
    fs::remove_all(dir, ec);
    return cl.bad == 0 ? 0 : 1;  // a clone that read wrong bytes fails the bench
}
