// swv_soak: guest memory under everything at once, for a given time (issue #9,
// docs/RELIABILITY.md#soak). Two VMs share one SwapPool of three swap files, one of
// which fails some of its writes (io::FaultyBlockDevice); one "guest" thread per VM
// writes and verifies pages through the guest view (real userfaultfd faults, as a vCPU
// takes them) and discards some, while a chaos thread swaps devices off and on again,
// changes limits, the host budget and swap quotas. After every step the guests pause
// and the VMs come to rest, and the soak checks that the pool holds exactly the slots
// the VMs refer to; every page read is checked against what was last written (or
// zeros after a discard). Exit 0 only if no byte was wrong and no slot leaked.
//
// Usage: swv_soak [--seconds N] [--dir DIR] [--seed S]. Needs root (userfaultfd).
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "guestmem/host_memory.hpp"
#include "guestmem/owner_tag.hpp"
#include "io/block_device.hpp"
#include "io/fault_injection.hpp"
#include "io/ring.hpp"
#include "swap/swap_pool.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kVmBytes = 16ULL << 20;
constexpr std::uint64_t kPages = kVmBytes / kPageSize;
constexpr std::uint64_t kSwapBytes = 24ULL << 20;

std::uint64_t word(std::uint64_t page, std::uint64_t gen, std::uint64_t i) {
    std::uint64_t x = (page + 1) * 0x9E3779B97F4A7C15ULL ^ (gen * 0xBF58476D1CE4E5B9ULL) ^ (i << 7);
    x ^= x >> 31;
    return x | 1;
}

struct Totals {
    std::atomic<std::uint64_t> writes{0}, verified{0}, discards{0}, errors{0};
    std::atomic<std::uint64_t> swapoffs{0}, swapoffs_refused{0}, swapons{0}, limit_changes{0}, leak_checks{0};
};

// One VM's guest: owns its shadow (the generation last written to each page).
class Guest {
public:
    Guest(GuestMemory& vm, std::uint64_t seed, Totals& totals)
        : vm_(vm), base_(vm.regions()[0].guest_view), gen_(kPages, 0), rng_(seed), totals_(totals) {}

    void run(const std::atomic<bool>& stop, std::atomic<bool>& pause, std::atomic<int>& paused) {
        std::uniform_int_distribution<std::uint64_t> pick(0, kPages - 1);
        std::uniform_int_distribution<int> what(0, 99);
        while (!stop.load()) {
            if (pause.load()) {
                paused.fetch_add(1);
                while (pause.load() && !stop.load()) std::this_thread::sleep_for(1ms);
                paused.fetch_sub(1);
                continue;
            }
            // Mostly sequential runs (readahead, fault-around), some random pages.
            const std::uint64_t first = pick(rng_);
            const std::uint64_t run = what(rng_) < 70 ? 16 : 1;
            const int action = what(rng_);
            for (std::uint64_t p = first; p < std::min(first + run, kPages); ++p) {
                if (action < 45) write(p);
                else if (action < 97) verify(p);
                else discard(p);
            }
        }
    }

    // Verify every page (end of the soak).
    void verify_all() {
        for (std::uint64_t p = 0; p < kPages; ++p) verify(p);
    }

private:
    auto* words(std::uint64_t p) { return reinterpret_cast<volatile std::uint64_t*>(base_ + p * kPageSize); }
    void write(std::uint64_t p) {
        const std::uint64_t g = ++gen_[p];
        auto* w = words(p);
        for (std::uint64_t i = 0; i < kPageSize / 8; ++i) w[i] = word(p, g, i);
        totals_.writes.fetch_add(1, std::memory_order_relaxed);
    }
    void verify(std::uint64_t p) {
        const std::uint64_t g = gen_[p];
        auto* w = words(p);
        for (std::uint64_t i = 0; i < kPageSize / 8; ++i) {
            const std::uint64_t want = g ? word(p, g, i) : 0;
            if (w[i] != want) {
                if (totals_.errors.fetch_add(1) < 10)
                    std::fprintf(stderr, "soak: %s page %llu word %llu: got %#llx want %#llx (gen %llu)\n",
                                 vm_.name().c_str(), static_cast<unsigned long long>(p),
                                 static_cast<unsigned long long>(i), static_cast<unsigned long long>(w[i]),
                                 static_cast<unsigned long long>(want), static_cast<unsigned long long>(g));
                break;
            }
        }
        totals_.verified.fetch_add(1, std::memory_order_relaxed);
    }
    void discard(std::uint64_t p) {
        if (!vm_.discard(GpaRange{Gpa(p * kPageSize), kPageSize})) {
            totals_.errors.fetch_add(1);
            return;
        }
        gen_[p] = 0;
        totals_.discards.fetch_add(1, std::memory_order_relaxed);
    }

    GuestMemory& vm_;
    std::byte* base_;
    std::vector<std::uint64_t> gen_;
    std::mt19937_64 rng_;
    Totals& totals_;
};

}  // namespace

int main(int argc, char** argv) {
    int seconds = 20;
    std::filesystem::path dir = "/var/tmp";
    std::uint64_t seed = 1;
    bool faults = true, swapoffs = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
        if (a == "--no-faults") faults = false;
        else if (a == "--no-swapoff") swapoffs = false;
        else if (a == "--seconds" && value) seconds = std::atoi(argv[++i]);
        else if (a == "--dir" && value) dir = argv[++i];
        else if (a == "--seed" && value) seed = std::strtoull(argv[++i], nullptr, 10);
        else {
            std::fprintf(stderr, "usage: swv_soak [--seconds N] [--dir DIR] [--seed S] [--no-faults] [--no-swapoff]\n");
            return 2;
        }
    }
    dir /= "swv-soak-" + std::to_string(::getpid());
    std::filesystem::create_directories(dir);
    struct Cleanup {
        std::filesystem::path d;
        ~Cleanup() {
            std::error_code ec;
            std::filesystem::remove_all(d, ec);
        }
    } cleanup{dir};

    auto ring = io::Ring::create(32);
    if (!ring) {
        std::fprintf(stderr, "soak: SKIPPED LOUDLY: io_uring unavailable: %s\n", ring.error().message().c_str());
        return 77;
    }
    swap::SwapPool pool;
    // Device 0 (priority 10) fails some writes when the chaos thread says so (failover,
    // quarantine, degraded); devices 1 and 2 are plain and go off and on again.
    auto plan = std::make_shared<io::FaultPlan>();
    std::mt19937_64 chaos_rng(seed * 7919);
    const std::vector<std::filesystem::path> paths{dir / "a.swap", dir / "b.swap", dir / "c.swap"};
    {
        auto faulty = io::FileBlockDevice::open(paths[0], io::OpenMode::create_or_open, kSwapBytes + 4096);
        if (!faulty) {
            std::fprintf(stderr, "soak: %s\n", faulty.error().message().c_str());
            return 1;
        }
        auto r = pool.swapon(std::make_unique<io::FaultyBlockDevice>(std::move(*faulty), plan), 10);
        if (!r) {
            std::fprintf(stderr, "soak: swapon faulty: %s\n", r.error().message().c_str());
            return 1;
        }
    }
    for (int i = 1; i < 3; ++i) {
        if (auto r = pool.swapon(paths[i], 10 - 5 * i, kSwapBytes); !r) {
            std::fprintf(stderr, "soak: swapon: %s\n", r.error().message().c_str());
            return 1;
        }
    }
    HostMemory host(pool, 0);
    std::vector<GuestMemory*> vms;
    for (int i = 0; i < 2; ++i) {
        auto vm = host.create_vm(MemoryConfig{.name = "vm" + std::to_string(i), .memory_bytes = kVmBytes,
                                              .resident_limit = 4ULL << 20, .vcpus = 2});
        if (!vm || !(*vm)->start()) {
            std::fprintf(stderr, "soak: SKIPPED LOUDLY: cannot build guest memory (userfaultfd?)\n");
            return 77;
        }
        vms.push_back(*vm);
    }

    Totals totals;
    std::atomic<bool> stop{false}, pause{false};
    std::atomic<int> paused{0};
    std::vector<std::unique_ptr<Guest>> guests;
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < vms.size(); ++i) {
        guests.push_back(std::make_unique<Guest>(*vms[i], seed + i, totals));
        threads.emplace_back([&, i] { guests[i]->run(stop, pause, paused); });
    }

    // A step at rest: pause the guests, lift the limits so no writeback is in flight,
    // and compare the pool's slots with the VMs' references.
    auto check_at_rest = [&]() -> bool {
        pause = true;
        while (paused.load() < static_cast<int>(guests.size())) std::this_thread::sleep_for(1ms);
        for (GuestMemory* vm : vms) vm->set_resident_limit(0);
        // The reclaimers finish the pass they are in (a write batch in flight holds
        // slots nobody refers to yet); a leak is what is still there after that.
        std::uint64_t referenced = 0, allocated = 0;
        for (int tries = 0; tries < 60; ++tries) {
            std::this_thread::sleep_for(50ms);
            referenced = 0;
            for (GuestMemory* vm : vms) referenced += vm->referenced_vslots();
            allocated = pool.allocated_vslots();
            if (allocated == referenced) break;
        }
        totals.leak_checks.fetch_add(1);
        if (allocated != referenced) {
            std::fprintf(stderr, "soak: slot leak: pool holds %llu, VMs refer to %llu\n",
                         static_cast<unsigned long long>(allocated), static_cast<unsigned long long>(referenced));
            totals.errors.fetch_add(1);
            // Name a few: valid VSlots whose owner's entry does not refer to them.
            int shown = 0;
            for (std::uint32_t v = 1; v < 1u << 20 && shown < 5; ++v) {
                auto owner = pool.owner_of(swap::VSlot(v));
                if (!owner) continue;
                GuestMemory* vm = nullptr;
                for (GuestMemory* c : vms)
                    if (c->id() == owner_vm(*owner)) vm = c;
                const std::uint64_t page = owner_index(*owner);
                if (!vm || page >= kPages) continue;
                const PageEntry e = vm->entry(Gpa(page * kPageSize));
                if (e.vslot() == swap::VSlot(v) && e.holds_vslot()) continue;
                auto where = pool.pslot_of(swap::VSlot(v));
                std::fprintf(stderr, "soak:   vslot %u (device %u slot %u) owned by %s page %llu, whose entry is %s%s vslot %u\n",
                             v, where ? unsigned(where->device.value()) : 0u, where ? unsigned(where->slot.value()) : 0u,
                             vm->name().c_str(), static_cast<unsigned long long>(page), to_string(e.state()),
                             e.clean() ? "+CLN" : "", unsigned(e.vslot().value()));
                ++shown;
            }
        }
        std::uniform_int_distribution<int> mib(2, 8);
        for (GuestMemory* vm : vms) vm->set_resident_limit(std::uint64_t(mib(chaos_rng)) << 20);
        totals.limit_changes.fetch_add(vms.size());
        pause = false;
        return allocated == referenced;
    };

    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    std::vector<bool> off(paths.size(), false);
    std::uniform_int_distribution<int> step(0, 99);
    while (std::chrono::steady_clock::now() < end && totals.errors.load() == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100 + step(chaos_rng)));
        const int s = step(chaos_rng);
        if (s < 30 && swapoffs) {
            // Swap a device off (live) or back on.
            const std::size_t d = 1 + static_cast<std::size_t>(step(chaos_rng)) % 2;
            if (!off[d]) {
                auto r = pool.swapoff(paths[d], *ring);
                if (r) {
                    off[d] = true;
                    totals.swapoffs.fetch_add(1);
                } else {
                    totals.swapoffs_refused.fetch_add(1);  // refused up front: nothing changed
                }
            } else if (pool.swapon(paths[d], 10 - 5 * static_cast<int>(d), 0)) {
                off[d] = false;
                totals.swapons.fetch_add(1);
            }
        } else if (s < 45 && faults) {
            // Device 0 starts or stops failing one write in 20.
            plan->clear();
            if (step(chaos_rng) < 50)
                plan->add(io::FaultRule{.match = io::FaultMatch::write, .skip = 19, .times = 1, .action = io::fault::Eio{}});
        } else if (s < 55) {
            host.set_budget(step(chaos_rng) < 50 ? 0 : (10ULL << 20));
        } else if (s < 65) {
            const std::uint64_t quota = step(chaos_rng) < 50 ? 0 : (4ULL << 20);
            vms[static_cast<std::size_t>(step(chaos_rng)) % vms.size()]->set_swap_quota(quota);
        } else {
            check_at_rest();
        }
    }
    check_at_rest();
    pause = true;
    while (paused.load() < static_cast<int>(guests.size())) std::this_thread::sleep_for(1ms);
    for (auto& g : guests) g->verify_all();
    stop = true;
    for (auto& t : threads) t.join();
    for (GuestMemory* vm : vms) vm->stop();

    std::uint64_t lost = 0;
    for (GuestMemory* vm : vms) lost += vm->stats().lost_pages;
    std::printf("soak: %d s, seed %llu: %llu pages written, %llu verified, %llu discarded, %llu swapoffs "
                "(%llu refused), %llu swapons, %llu limit changes, %llu leak checks, %llu write faults injected, "
                "%llu lost pages, errors %llu\n",
                seconds, static_cast<unsigned long long>(seed), (unsigned long long)totals.writes.load(),
                (unsigned long long)totals.verified.load(), (unsigned long long)totals.discards.load(),
                (unsigned long long)totals.swapoffs.load(), (unsigned long long)totals.swapoffs_refused.load(),
                (unsigned long long)totals.swapons.load(), (unsigned long long)totals.limit_changes.load(),
                (unsigned long long)totals.leak_checks.load(), (unsigned long long)pool.stats()[0].write_errors,
                (unsigned long long)lost, (unsigned long long)totals.errors.load());
    return totals.errors.load() == 0 && lost == 0 ? 0 : 1;
}
