// micro_bench: Google Benchmark cases for the small operations on swapvisor's hot
// paths, each run against the real code (no fakes): stage-2 peek / lock / transition
// on a real Stage2 table, VSlotTable allocate + retire + recycle, SwapDevice slot
// allocate + free, page_checksum of one 4 KiB page, and io::Ring::run of 4 KiB
// reads (O_DIRECT from a file in --dir, and /dev/zero for the ring's own cost).
//
// Unlike the other programs in bench/ these ARE Google Benchmark cases: each
// operation is short, stateless enough to repeat, and its mean is what we want.
// Every case runs on the main thread (Benchmark runs thread 0 on the caller), which
// matters for the Ring: it is SINGLE_ISSUER and belongs to the first thread that
// runs it. State is built lazily, once, before a case's timed loop starts, so a
// --benchmark_filter that skips the I/O cases never touches --dir.
//
// Flags: Google Benchmark's own (--benchmark_filter, --benchmark_format=json, ...;
// --benchmark_min_time defaults to 0.2 s here) plus --dir DIR (default /var/tmp,
// must not be tmpfs). See bench/README.md#micro_bench.
#include <fcntl.h>

#include <benchmark/benchmark.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bench/bench_util.hpp"
#include "guestmem/addr.hpp"
#include "guestmem/stage2.hpp"
#include "guestmem/zero_page.hpp"
#include "io/block_device.hpp"
#include "io/ring.hpp"
#include "io/unique_fd.hpp"
#include "swap/swap_device.hpp"
#include "swap/swap_pool.hpp"
#include "swap/types.hpp"
#include "swap/vslot_table.hpp"

using namespace swapvisor;
using guestmem::PageEntry;
using guestmem::PageIdx;
using guestmem::PageState;
using guestmem::Stage2;

namespace {

constexpr std::uint64_t kPage = guestmem::kPageSize;
constexpr std::uint64_t kMiB = 1 << 20;
constexpr std::uint64_t kGiB = 1 << 30;
constexpr std::uint64_t kReadFileBytes = 64 * kMiB;   // BM_RingRead4k's file
constexpr std::uint64_t kSwapFileBytes = 256 * kMiB;  // BM_SwapDeviceAllocFree's device
constexpr unsigned kMaxBatch = 32;                    // largest ring batch measured

std::filesystem::path g_dir = "/var/tmp";

constexpr const char* kUsage =
    "usage: micro_bench [--dir DIR] [Google Benchmark flags]\n"
    "  --dir  directory on a real disk for the O_DIRECT read file and the swap device\n"
    "         of the I/O cases (default /var/tmp; tmpfs/ramfs refused)\n"
    "  --benchmark_filter=REGEX, --benchmark_format=console|json|csv,\n"
    "  --benchmark_min_time=SECONDS (default here 0.2), --benchmark_repetitions=N, ...\n";

// splitmix64: one multiply-xorshift step per index, no memory touched, so a random
// walk over a table does not compete with the table for cache (BM_RandomIndex
// measures it alone).
struct Rng {
    std::uint64_t s;
    std::uint64_t next() {
        std::uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
};

std::string why(const Error& e) { return e.message(); }

// ---- stage-2 -------------------------------------------------------------------

// A table of `gib` GiB of guest pages, every entry written once (so every page of
// entries is backed, as in a guest that touched all its memory): swapped at a
// distinct VSlot. Built once per size, kept for the process.
Stage2* stage2_of(std::uint64_t gib, std::string& error) {
    static std::unique_ptr<Stage2> tables[2];  // [0] 1 GiB, [1] 64 GiB
    SWV_ASSERT(gib == 1 || gib == 64, "stage2_of: 1 or 64 GiB");
    auto& slot = tables[gib == 1 ? 0 : 1];
    if (!slot) {
        const std::uint64_t pages = gib * kGiB / kPage;
        auto t = Stage2::create(pages);
        if (!t) {
            error = why(t.error());
            return nullptr;
        }
        slot = std::make_unique<Stage2>(std::move(*t));
        for (std::uint64_t i = 0; i < pages; ++i) {
            PageIdx idx(i);
            slot->lock(idx);
            slot->unlock(idx, PageEntry::make(PageState::swapped, swap::VSlot(static_cast<std::uint32_t>(i + 1))));
        }
    }
    return slot.get();
}

// Random pages of one of the shared tables, for the stage-2 cases; skips the
// benchmark (nullopt) if the table cannot be made.
struct RandomPages {
    Stage2* table;
    std::uint64_t mask;  // pages is a power of two
    Rng rng;
    PageIdx next() { return PageIdx(rng.next() & mask); }
};
std::optional<RandomPages> random_pages(benchmark::State& state, std::uint64_t gib, std::uint64_t seed) {
    std::string error;
    Stage2* s2 = stage2_of(gib, error);
    if (s2 == nullptr) {
        state.SkipWithError(error.c_str());
        return std::nullopt;
    }
    return RandomPages{s2, s2->pages() - 1, Rng{seed}};
}

// The cost of picking a random page index alone (subtract it from the stage-2 cases).
void BM_RandomIndex(benchmark::State& state) {
    const std::uint64_t mask = (kGiB / kPage) - 1;
    Rng rng{1};
    for (auto _ : state) {
        std::uint64_t i = rng.next() & mask;
        benchmark::DoNotOptimize(i);
    }
}

// Stage2::peek of a random page: what the fault path, the reclaimer's scan and
// discard read before they decide to lock. Arg: guest GiB (1: the 2 MiB of entries
// fit in L2/L3; 64: 128 MiB of entries, mostly a cache and TLB miss).
void BM_Stage2Peek(benchmark::State& state) {
    auto pages = random_pages(state, static_cast<std::uint64_t>(state.range(0)), 2);
    if (!pages) return;
    for (auto _ : state) {
        PageEntry e = pages->table->peek(pages->next());
        benchmark::DoNotOptimize(e);
    }
    state.SetItemsProcessed(state.iterations());
}

// Stage2::try_lock + unlock publishing a new value, on a random page of a 1 GiB
// table: the table part of a one-step transition (the reclaimer's CLOCK step
// resident <-> inactive; here swapped <-> resident keeping the VSlot bits).
// Uncontended; unlock includes std::atomic::notify_all (no waiter).
void BM_Stage2LockUnlock(benchmark::State& state) {
    auto pages = random_pages(state, 1, 3);
    if (!pages) return;
    Stage2* s2 = pages->table;
    for (auto _ : state) {
        PageIdx idx = pages->next();
        std::optional<PageEntry> was = s2->try_lock(idx);
        if (!was) return state.SkipWithError("try_lock failed on an unlocked table");
        PageState next = was->state() == PageState::swapped ? PageState::resident : PageState::swapped;
        s2->unlock(idx, PageEntry::make(next, was->vslot()));
    }
    state.SetItemsProcessed(state.iterations());
}

// The table part of a two-step transition (swap-in: lock, publish `reading` while
// the I/O would run, unlock as resident; swap-out: lock, publish `writeback`,
// unlock as swapped): Stage2::lock + publish_locked + unlock on a random page.
void BM_Stage2Transition(benchmark::State& state) {
    auto pages = random_pages(state, 1, 4);
    if (!pages) return;
    Stage2* s2 = pages->table;
    for (auto _ : state) {
        PageIdx idx = pages->next();
        PageEntry was = s2->lock(idx);
        const bool in = was.state() == PageState::swapped;
        s2->publish_locked(idx, PageEntry::make(in ? PageState::reading : PageState::writeback, was.vslot()));
        s2->unlock(idx, PageEntry::make(in ? PageState::resident : PageState::swapped, was.vslot()));
    }
    state.SetItemsProcessed(state.iterations());
}

// ---- VSlotTable ----------------------------------------------------------------

// A table with 64 Ki vslots allocated and left allocated (a pool in use), so the
// churned vslots are not the first few descriptors of an empty table.
std::unique_ptr<swap::VSlotTable> busy_vslot_table() {
    auto t = std::make_unique<swap::VSlotTable>();
    std::vector<swap::OwnerTag> owners(64 * 1024);
    std::vector<swap::VSlot> out(owners.size());
    for (std::size_t i = 0; i < owners.size(); ++i) owners[i] = i;
    SWV_ASSERT(t->allocate(owners, out) == owners.size(), "busy_vslot_table: allocate");
    return t;
}

// VSlotTable::allocate of a batch of Arg vslots, then retire + recycle of each: the
// table's share of a write_out that fails (or of free() without the pslot part).
void BM_VSlotAllocFree(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    auto table = busy_vslot_table();
    std::vector<swap::OwnerTag> owners(n);
    std::vector<swap::VSlot> out(n);
    for (std::size_t i = 0; i < n; ++i) owners[i] = (std::uint64_t{1} << 32) | i;  // VM 1, page i (guestmem::pack_owner)
    for (auto _ : state) {
        if (table->allocate(owners, out) != n) return state.SkipWithError("allocate: 32-bit space exhausted");
        for (swap::VSlot v : out) {
            auto info = table->retire(v);
            benchmark::DoNotOptimize(info);
            table->recycle(v);
        }
    }
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));
    state.counters["time_per_vslot"] =
        benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate |
                                                       benchmark::Counter::kInvert);
}

// A vslot's whole life in the table, as the pool drives it: allocate (batch of Arg),
// set_target + publish (write_out), lookup (read_in), retire + recycle (free).
void BM_VSlotLifecycle(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    auto table = busy_vslot_table();
    std::vector<swap::OwnerTag> owners(n);
    std::vector<swap::VSlot> out(n);
    for (std::size_t i = 0; i < n; ++i) owners[i] = (std::uint64_t{1} << 32) | i;  // VM 1, page i (guestmem::pack_owner)
    for (auto _ : state) {
        if (table->allocate(owners, out) != n) return state.SkipWithError("allocate: 32-bit space exhausted");
        for (std::size_t i = 0; i < n; ++i)
            table->set_target(out[i], swap::PSlot{swap::DeviceId(0), swap::SlotIdx(static_cast<std::uint32_t>(i))},
                              0x1234 + i);
        for (swap::VSlot v : out) table->publish(v);
        for (swap::VSlot v : out) {
            swap::VSlotInfo info = table->lookup(v);
            benchmark::DoNotOptimize(info);
        }
        for (swap::VSlot v : out) {
            table->retire(v);
            table->recycle(v);
        }
    }
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));
    state.counters["time_per_vslot"] =
        benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate |
                                                       benchmark::Counter::kInvert);
}

// ---- page_checksum ---------------------------------------------------------------

// swap::page_checksum (xxh3-64, low 32 bits kept) of one 4 KiB page. Arg 1: the same page every time
// (in L1: the hash alone). Arg 65536: a random page of a 256 MiB buffer each time
// (from DRAM, as a page the reclaimer has not touched lately; random so that the
// prefetcher cannot stream the next page in ahead of the hash).
void BM_PageChecksum(benchmark::State& state) {
    const auto pages = static_cast<std::uint64_t>(state.range(0));
    auto buf = io::Mapping::anonymous(pages * kPage);
    if (!buf) return state.SkipWithError(why(buf.error()).c_str());
    Rng rng{5};
    auto* w = reinterpret_cast<std::uint64_t*>(buf->data());
    for (std::uint64_t i = 0; i < pages * kPage / 8; ++i) w[i] = rng.next();
    const std::uint64_t mask = pages - 1;  // a power of two
    for (auto _ : state) {
        std::uint64_t sum = swap::page_checksum(buf->data() + (rng.next() & mask) * kPage);
        benchmark::DoNotOptimize(sum);
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(kPage));
}

// ---- zero check + checksum ------------------------------------------------------

// The whole-page OR that guestmem's zero check was before issue #18 item 2: the peer
// of guestmem::is_zero_page (stops at the first non-zero 64-byte block).
bool zero_whole_page(const std::byte* page) {
    const auto* w = reinterpret_cast<const std::uint64_t*>(page);
    std::uint64_t acc = 0;
    for (std::size_t i = 0; i < kPage / 8; ++i) acc |= w[i];
    return acc == 0;
}

// What the reclaimer spends on the content of a cold page it evicts: the zero check,
// then (non-zero) write_out's page_checksum. A random page of a 256 MiB buffer of
// random data each time (from DRAM). Arg early_exit 1: guestmem::is_zero_page;
// 0: the whole-page OR it replaced.
void BM_ZeroCheckThenChecksum(benchmark::State& state) {
    const bool early_exit = state.range(0) != 0;
    constexpr std::uint64_t kPages = 65536;
    auto buf = io::Mapping::anonymous(kPages * kPage);
    if (!buf) return state.SkipWithError(why(buf.error()).c_str());
    Rng rng{7};
    auto* w = reinterpret_cast<std::uint64_t*>(buf->data());
    for (std::uint64_t i = 0; i < kPages * kPage / 8; ++i) w[i] = rng.next();
    for (auto _ : state) {
        const std::byte* page = buf->data() + (rng.next() & (kPages - 1)) * kPage;
        const bool zero = early_exit ? guestmem::is_zero_page(page) : zero_whole_page(page);
        std::uint32_t sum = zero ? 0 : swap::page_checksum(page);
        benchmark::DoNotOptimize(sum);
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(kPage));
}

// ---- SwapDevice --------------------------------------------------------------------

// A 256 MiB swap file in --dir, opened O_DIRECT like swapon does; the allocator never
// does I/O, so its space is only reserved (fallocate), not written.
struct SwapDeviceFixture {
    bench::ScratchDir scratch{g_dir, "swv-micro-dev-"};
    std::unique_ptr<swap::SwapDevice> dev;
};

SwapDeviceFixture* swap_device(std::string& error) {
    static std::unique_ptr<SwapDeviceFixture> f;
    if (f) return f.get();
    auto fx = std::make_unique<SwapDeviceFixture>();
    auto block = io::FileBlockDevice::open(fx->scratch.path() / "dev.swap", io::OpenMode::create_or_open,
                                           kSwapFileBytes);
    if (!block) {
        error = why(block.error());
        return nullptr;
    }
    std::string path = (*block)->path();
    fx->dev = std::make_unique<swap::SwapDevice>(std::move(*block), swap::DeviceId(0), 0, path);
    f = std::move(fx);
    return f.get();
}

// SwapDevice::allocate of Arg slots (one allocating context, as one thread's
// write_out), end_write, then free_slots of them: the cluster allocator's cost per
// slot. 512 = one whole cluster.
void BM_SwapDeviceAllocFree(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    std::string error;
    SwapDeviceFixture* f = swap_device(error);
    if (f == nullptr) return state.SkipWithError(error.c_str());
    std::vector<swap::VSlot> vslots(n);
    for (std::size_t i = 0; i < n; ++i) vslots[i] = swap::VSlot(static_cast<std::uint32_t>(i + 1));
    std::vector<swap::SlotIdx> slots;
    slots.reserve(n);
    for (auto _ : state) {
        slots.clear();
        if (f->dev->allocate(vslots, 0, slots) != n) return state.SkipWithError("allocate: device full");
        f->dev->end_write();
        f->dev->free_slots(slots);
    }
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));
    state.counters["time_per_slot"] =
        benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate |
                                                       benchmark::Counter::kInvert);
}

// ---- io::Ring ------------------------------------------------------------------------

// One Ring (64 entries, as the benches' and the pool's callers use) with a registered
// arena of kMaxBatch pages, so reads go out as READ_FIXED like the pool's.
struct RingFixture {
    io::Ring ring;
    io::Mapping arena;
};

Result<RingFixture> make_ring() {
    io::Ring ring = SWV_TRY(io::Ring::create(64));
    io::Mapping arena = SWV_TRY(io::Mapping::anonymous(kMaxBatch * kPage));
    SWV_TRY(ring.register_arena(arena.span()));
    return RingFixture{std::move(ring), std::move(arena)};
}

// /dev/zero: an op the kernel completes inline without a device (io::Ring has no
// NOP opcode: read, write and fsync only; a 0-byte op never reaches the kernel).
struct ZeroFixture {
    RingFixture r;
    io::UniqueFd fd;
};

ZeroFixture* zero_fixture(std::string& error) {
    static std::unique_ptr<ZeroFixture> f;
    if (f) return f.get();
    auto r = make_ring();
    if (!r) {
        error = why(r.error());
        return nullptr;
    }
    // Kernel contract: open returns a new fd or -1 with errno.
    io::UniqueFd fd(::open("/dev/zero", O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
        error = std::string("open /dev/zero: ") + std::strerror(errno);
        return nullptr;
    }
    f = std::make_unique<ZeroFixture>(ZeroFixture{std::move(*r), std::move(fd)});
    return f.get();
}

// A 64 MiB file in --dir, O_DIRECT, every block written once with non-zero data (a
// read of a never-written, only fallocated extent returns zeros without reaching
// the disk, which would measure nothing).
struct ReadFixture {
    bench::ScratchDir scratch{g_dir, "swv-micro-ring-"};
    std::unique_ptr<io::FileBlockDevice> file;
    std::optional<RingFixture> r;  // set once the file is open
};

Result<void> fill_file(ReadFixture& f) {
    Rng rng{6};
    auto* w = reinterpret_cast<std::uint64_t*>(f.r->arena.data());
    for (std::uint64_t i = 0; i < kMaxBatch * kPage / 8; ++i) w[i] = rng.next() | 1;
    const std::uint64_t chunk = kMaxBatch * kPage;  // 128 KiB per write, all from the arena
    std::vector<io::IoOp> ops;
    for (std::uint64_t off = 0; off < kReadFileBytes; off += chunk) {
        ops.push_back(io::IoOp{io::IoKind::write, f.file->fd(), io::DevOffset(off), f.r->arena.data(),
                               static_cast<std::uint32_t>(chunk)});
        if (ops.size() == 32 || off + chunk >= kReadFileBytes) {
            SWV_TRY(f.r->ring.run(ops));
            for (const io::IoOp& op : ops)
                if (op.result != static_cast<int>(op.len))
                    return errno_error("fill read file", op.result < 0 ? -op.result : EIO);
            ops.clear();
        }
    }
    return {};
}

ReadFixture* read_fixture(std::string& error) {
    static std::unique_ptr<ReadFixture> f;
    if (f) return f.get();
    auto fx = std::make_unique<ReadFixture>();
    auto file = io::FileBlockDevice::open(fx->scratch.path() / "read.dat", io::OpenMode::create_or_open, kReadFileBytes);
    if (!file) {
        error = why(file.error());
        return nullptr;
    }
    fx->file = std::move(*file);
    auto r = make_ring();
    if (!r) {
        error = why(r.error());
        return nullptr;
    }
    fx->r.emplace(std::move(*r));
    if (auto ok = fill_file(*fx); !ok) {
        error = why(ok.error());
        return nullptr;
    }
    f = std::move(fx);
    return f.get();
}

// One io::Ring::run of a batch of Arg 4 KiB reads into distinct arena pages, every
// op checked. Real time: the thread sleeps in io_uring_enter while the op runs.
void ring_reads(benchmark::State& state, io::Ring& ring, std::byte* arena, int fd, std::uint64_t file_pages) {
    const auto n = static_cast<std::size_t>(state.range(0));
    std::vector<io::IoOp> ops(n);
    Rng rng{7};
    for (auto _ : state) {
        for (std::size_t i = 0; i < n; ++i) {
            std::uint64_t page = file_pages > 1 ? rng.next() % file_pages : 0;
            ops[i] = io::IoOp{io::IoKind::read, fd, io::DevOffset(page * kPage), arena + i * kPage,
                              static_cast<std::uint32_t>(kPage)};
        }
        if (auto ok = ring.run(ops); !ok) return state.SkipWithError(why(ok.error()).c_str());
        for (const io::IoOp& op : ops)
            if (op.result != static_cast<int>(kPage)) return state.SkipWithError("a 4 KiB read failed or was short");
    }
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n * kPage));
    state.counters["time_per_op"] =
        benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate |
                                                       benchmark::Counter::kInvert);
}

// The ring's own cost per batch: submit, inline completion, reap.
void BM_RingZeroRead4k(benchmark::State& state) {
    std::string error;
    ZeroFixture* f = zero_fixture(error);
    if (f == nullptr) return state.SkipWithError(error.c_str());
    ring_reads(state, f->r.ring, f->r.arena.data(), f->fd.get(), 1);
}

// 4 KiB O_DIRECT reads at random page offsets of the 64 MiB file: QD1 (a swap-in)
// and a batch of 32 (readahead, swapoff rounds).
void BM_RingRead4k(benchmark::State& state) {
    std::string error;
    ReadFixture* f = read_fixture(error);
    if (f == nullptr) return state.SkipWithError(error.c_str());
    ring_reads(state, f->r->ring, f->r->arena.data(), f->file->fd(), kReadFileBytes / kPage);
}

void register_all() {
    benchmark::RegisterBenchmark("BM_RandomIndex", BM_RandomIndex);
    benchmark::RegisterBenchmark("BM_Stage2Peek", BM_Stage2Peek)->ArgName("guest_gib")->Arg(1)->Arg(64);
    benchmark::RegisterBenchmark("BM_Stage2LockUnlock", BM_Stage2LockUnlock);
    benchmark::RegisterBenchmark("BM_Stage2Transition", BM_Stage2Transition);
    benchmark::RegisterBenchmark("BM_VSlotAllocFree", BM_VSlotAllocFree)->ArgName("batch")->Arg(1)->Arg(64);
    benchmark::RegisterBenchmark("BM_VSlotLifecycle", BM_VSlotLifecycle)->ArgName("batch")->Arg(1)->Arg(64);
    benchmark::RegisterBenchmark("BM_SwapDeviceAllocFree", BM_SwapDeviceAllocFree)
        ->ArgName("slots")
        ->Arg(1)
        ->Arg(64)
        ->Arg(512);
    benchmark::RegisterBenchmark("BM_PageChecksum", BM_PageChecksum)->ArgName("pages")->Arg(1)->Arg(65536);
    benchmark::RegisterBenchmark("BM_ZeroCheckThenChecksum", BM_ZeroCheckThenChecksum)->ArgName("early_exit")->Arg(0)->Arg(1);
    benchmark::RegisterBenchmark("BM_RingZeroRead4k", BM_RingZeroRead4k)->ArgName("batch")->Arg(1)->Arg(32)->UseRealTime();
    benchmark::RegisterBenchmark("BM_RingRead4k", BM_RingRead4k)->ArgName("batch")->Arg(1)->Arg(32)->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
    // A default --benchmark_min_time of 0.2 s (the whole run stays well under a
    // minute); a --benchmark_min_time on the command line comes later and wins.
    std::string min_time = "--benchmark_min_time=0.2";
    std::vector<char*> args;
    args.push_back(argv[0]);
    args.push_back(min_time.data());
    for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
    int n = static_cast<int>(args.size());
    args.push_back(nullptr);
    benchmark::Initialize(&n, args.data(), [] { std::fprintf(stderr, "%s", kUsage); });

    // What Benchmark did not take is ours.
    bench::Flags flags(n, args.data());
    g_dir = flags.str("dir", "/var/tmp");
    if (!flags.ok(kUsage)) return 2;
    if (!bench::on_real_disk(g_dir)) return 2;
    if (bench::free_bytes(g_dir) < kReadFileBytes + kSwapFileBytes + 64 * kMiB) {
        std::fprintf(stderr, "micro_bench: %s has %" PRIu64 " MiB free, need %" PRIu64 " MiB\n", g_dir.c_str(),
                     bench::free_bytes(g_dir) / kMiB, (kReadFileBytes + kSwapFileBytes) / kMiB + 64);
        return 2;
    }

    register_all();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
