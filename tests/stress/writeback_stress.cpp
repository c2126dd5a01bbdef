// swv_stress: the real-stack stress shaped like the run that found the writeback ABA
// (issue #16 item 6, docs/RELIABILITY.md#writeback-stress). One small VM (2 MiB,
// real memfd + userfaultfd, its own fault, reclaimer and writeback threads) on a swap
// file through io_uring; two "guest" threads write and verify their pages through the
// guest view (real faults); a toggler moves the resident limit between 1 page and
// 1 MiB every 10 ms, so pages go out, come back and go out again while older writes
// of them are still in flight; half of the swap writes are held 0-20 ms at a gate, so
// batches complete out of order.
//
// --mode clean   no I/O fails: every page must read back as last written, none lost.
// --mode failing one write in 40 and one read in 150 fail (EIO): a page may be lost
//                (the guest gets SIGBUS at that page, and then discards it), never
//                wrong; lost pages <= failed reads.
// Either way, at the end every page is verified and the pool holds exactly the slots
// the VM refers to. Exit 0 only if no byte was wrong and no slot leaked; 77 without
// userfaultfd / io_uring. Usage: swv_stress [--mode clean|failing] [--seconds N]
// [--dir DIR] [--seed S]
#include <setjmp.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "guestmem/guest_memory.hpp"
#include "io/block_device.hpp"
#include "io/fault_injection.hpp"
#include "io/ring.hpp"
#include "swap/swap_pool.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kVmBytes = 2ULL << 20;
constexpr std::uint64_t kPages = kVmBytes / kPageSize;
constexpr std::uint64_t kSwapBytes = 16ULL << 20;
constexpr unsigned kGuests = 2;

std::uint64_t word(std::uint64_t page, std::uint64_t gen, std::uint64_t i) {
    std::uint64_t x = (page + 1) * 0x9E3779B97F4A7C15ULL ^ (gen * 0xBF58476D1CE4E5B9ULL) ^ (i << 7);
    x ^= x >> 31;
    return x | 1;
}

struct Totals {
    std::atomic<std::uint64_t> writes{0}, verified{0}, wrong{0}, sigbus{0}, toggles{0};
};

// SIGBUS on a lost (poisoned) page: the guest thread that touched it jumps back.
thread_local sigjmp_buf* t_jump = nullptr;
thread_local std::uintptr_t t_fault_addr = 0;
void on_sigbus(int, siginfo_t* info, void*) {
    if (t_jump == nullptr) {
        const char msg[] = "swv_stress: SIGBUS outside a guest access\n";
        (void)!::write(2, msg, sizeof msg - 1);
        std::_Exit(3);
    }
    t_fault_addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
    siglongjmp(*t_jump, 1);
}

class Guest {
public:
    Guest(GuestMemory& vm, unsigned index, std::uint64_t seed, Totals& totals)
        : vm_(vm), index_(index), base_(vm.regions()[0].guest_view), gen_(kPages, 0), rng_(seed), totals_(totals) {}

    void run(const std::atomic<bool>& stop) {
        std::uniform_int_distribution<std::uint64_t> pick(0, kPages / kGuests - 1);
        std::uniform_int_distribution<int> what(0, 99);
        while (!stop.load(std::memory_order_relaxed)) {
            const std::uint64_t p = pick(rng_) * kGuests + index_;  // this guest's pages only
            if (what(rng_) < 50) guarded(p, [&] { write(p); });
            else guarded(p, [&] { verify(p); });
        }
    }
    void verify_all() {
        for (std::uint64_t p = index_; p < kPages; p += kGuests) guarded(p, [&] { verify(p); });
    }

private:
    // Runs f; a SIGBUS (the page was lost: a swap read failed) is counted and the
    // page discarded, so it reads zeros from now on.
    template <class F>
    void guarded(std::uint64_t p, F&& f) {
        sigjmp_buf jump;
        if (sigsetjmp(jump, 1) != 0) {
            t_jump = nullptr;
            totals_.sigbus.fetch_add(1);
            const std::uint64_t at = (t_fault_addr - reinterpret_cast<std::uintptr_t>(base_)) / kPageSize;
            if (at != p) {
                std::fprintf(stderr, "swv_stress: SIGBUS at page %llu while touching page %llu\n",
                             (unsigned long long)at, (unsigned long long)p);
                totals_.wrong.fetch_add(1);
            }
            if (!vm_.discard(GpaRange{Gpa(p * kPageSize), kPageSize})) totals_.wrong.fetch_add(1);
            gen_[p] = 0;
            return;
        }
        t_jump = &jump;
        f();
        t_jump = nullptr;
    }
    auto* words(std::uint64_t p) { return reinterpret_cast<volatile std::uint64_t*>(base_ + p * kPageSize); }
    void write(std::uint64_t p) {
        const std::uint64_t g = gen_[p] + 1;
        auto* w = words(p);
        for (std::uint64_t i = 0; i < kPageSize / 8; ++i) w[i] = word(p, g, i);
        gen_[p] = g;
        totals_.writes.fetch_add(1, std::memory_order_relaxed);
    }
    void verify(std::uint64_t p) {
        const std::uint64_t g = gen_[p];
        auto* w = words(p);
        for (std::uint64_t i = 0; i < kPageSize / 8; ++i) {
            const std::uint64_t want = g ? word(p, g, i) : 0;
            const std::uint64_t got = w[i];
            if (got != want) {
                if (totals_.wrong.fetch_add(1) < 10)
                    std::fprintf(stderr, "swv_stress: page %llu word %llu: got %#llx want %#llx (gen %llu)\n",
                                 (unsigned long long)p, (unsigned long long)i, (unsigned long long)got,
                                 (unsigned long long)want, (unsigned long long)g);
                break;
            }
        }
        totals_.verified.fetch_add(1, std::memory_order_relaxed);
    }

    GuestMemory& vm_;
    unsigned index_;
    std::byte* base_;
    std::vector<std::uint64_t> gen_;  // written by a partial write only once it is complete
    std::mt19937_64 rng_;
    Totals& totals_;
};

}  // namespace

int main(int argc, char** argv) {
    int seconds = 20;
    std::filesystem::path dir = "/var/tmp";
    std::uint64_t seed = 1;
    bool failing = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
        if (a == "--mode" && value && (std::string(value) == "clean" || std::string(value) == "failing")) {
            failing = std::string(argv[++i]) == "failing";
        } else if (a == "--seconds" && value) {
            seconds = std::atoi(argv[++i]);
        } else if (a == "--dir" && value) {
            dir = argv[++i];
        } else if (a == "--seed" && value) {
            seed = std::strtoull(argv[++i], nullptr, 10);
        } else {
            std::fprintf(stderr, "usage: swv_stress [--mode clean|failing] [--seconds N] [--dir DIR] [--seed S]\n");
            return 2;
        }
    }
    struct sigaction sa{};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    ::sigaction(SIGBUS, &sa, nullptr);

    const std::filesystem::path file = dir / ("swv-stress-" + std::to_string(::getpid()) + ".swap");
    struct Cleanup {
        std::filesystem::path f;
        ~Cleanup() {
            std::error_code ec;
            std::filesystem::remove(f, ec);
        }
    } cleanup{file};

    auto ring = io::Ring::create(32);
    if (!ring) {
        std::fprintf(stderr, "swv_stress: SKIPPED LOUDLY: io_uring unavailable: %s\n", ring.error().message().c_str());
        return 77;
    }
    auto plan = std::make_shared<io::FaultPlan>();
    // Half of the writes wait 0-20 ms on the writeback thread that issues them: with two
    // writeback threads, a later batch of a page can complete before an earlier one.
    std::mutex delay_mu;
    std::mt19937_64 delay_rng(seed * 31);
    std::atomic<std::uint64_t> delayed{0};
    plan->add(io::FaultRule{.match = io::FaultMatch::write, .action = io::fault::Gate{[&](const io::BlockIo&) {
                                int ms;
                                {
                                    std::lock_guard lock(delay_mu);
                                    ms = delay_rng() % 2 ? static_cast<int>(delay_rng() % 21) : -1;
                                }
                                if (ms < 0) return;
                                delayed.fetch_add(1, std::memory_order_relaxed);
                                std::this_thread::sleep_for(std::chrono::milliseconds(ms));
                            }}});
    // --mode failing: one write in about 40 and one read in about 150 fail. A rule
    // applies once after `skip` matches; the toggler re-arms each one it sees used.
    std::mt19937_64 fail_rng(seed * 131);
    std::uint64_t write_faults = 0, read_faults = 0;
    std::optional<io::FaultRuleId> write_fail, read_fail;
    auto arm = [&](io::FaultMatch match, std::uint64_t every) {
        return plan->add(io::FaultRule{.match = match, .skip = fail_rng() % (2 * every), .times = 1,
                                       .action = io::fault::Eio{}});
    };
    auto rearm = [&] {
        if (!failing) return;
        if (!write_fail || plan->hits(*write_fail) != 0) {
            if (write_fail) write_faults++, plan->remove(*write_fail);
            write_fail = arm(io::FaultMatch::write, 40);
        }
        if (!read_fail || plan->hits(*read_fail) != 0) {
            if (read_fail) read_faults++, plan->remove(*read_fail);
            read_fail = arm(io::FaultMatch::read, 150);
        }
    };
    rearm();
    swap::SwapPool pool;
    {
        auto dev = io::FileBlockDevice::open(file, io::OpenMode::create_or_open, kSwapBytes + 4096);
        if (!dev) {
            std::fprintf(stderr, "swv_stress: %s\n", dev.error().message().c_str());
            return 1;
        }
        if (auto r = pool.swapon(std::make_unique<io::FaultyBlockDevice>(std::move(*dev), plan), 0); !r) {
            std::fprintf(stderr, "swv_stress: swapon: %s\n", r.error().message().c_str());
            return 1;
        }
    }
    auto vm_or = create_guest_memory(
        MemoryConfig{.name = "stress", .memory_bytes = kVmBytes, .resident_limit = 1ULL << 20, .vcpus = 2}, 1,
        nullptr, &pool);
    if (!vm_or || !(*vm_or)->start()) {
        std::fprintf(stderr, "swv_stress: SKIPPED LOUDLY: cannot build guest memory (userfaultfd?)\n");
        return 77;
    }
    GuestMemory& vm = **vm_or;

    Totals totals;
    std::atomic<bool> stop{false};
    std::vector<std::unique_ptr<Guest>> guests;
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < kGuests; ++i) {
        guests.push_back(std::make_unique<Guest>(vm, i, seed + i, totals));
        threads.emplace_back([&, i] { guests[i]->run(stop); });
    }
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    bool small = false;
    // A watchdog: the guests must make progress (a fault that never resolves is a hang).
    std::uint64_t last_progress = 0;
    auto last_change = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() < end && totals.wrong.load() == 0) {
        std::this_thread::sleep_for(10ms);
        const std::uint64_t progress = totals.writes.load() + totals.verified.load() + totals.sigbus.load();
        if (progress != last_progress) {
            last_progress = progress;
            last_change = std::chrono::steady_clock::now();
        } else if (std::chrono::steady_clock::now() - last_change > 10s) {
            std::fprintf(stderr, "swv_stress: no guest progress for 10 s; entries not at rest:\n");
            for (std::uint64_t p = 0; p < kPages; ++p) {
                const PageEntry e = vm.entry(Gpa(p * kPageSize));
                if (e.state() != PageState::swapped && e.state() != PageState::inactive)
                    std::fprintf(stderr, "  page %llu: %s%s%s\n", (unsigned long long)p, to_string(e.state()),
                                 e.clean() ? "+CLN" : "", e.locked() ? " locked" : "");
            }
            std::fflush(stderr);
            std::_Exit(4);
        }
        small = !small;
        vm.set_resident_limit(small ? kPageSize : 1ULL << 20);
        rearm();
        totals.toggles.fetch_add(1, std::memory_order_relaxed);
    }
    stop = true;
    for (auto& t : threads) t.join();
    threads.clear();
    // At rest: no limit, no failures, then every byte checked once more.
    vm.set_resident_limit(0);
    if (failing) {
        write_faults += plan->hits(*write_fail);
        read_faults += plan->hits(*read_fail);
    }
    plan->clear();
    for (auto& g : guests) g->verify_all();
    vm.stop();
    const MemStats s = vm.stats();
    const std::uint64_t allocated = pool.allocated_vslots(), referenced = vm.referenced_vslots();
    std::printf("swv_stress --mode %s: %d s, seed %llu: %llu pages written, %llu verified, %llu limit toggles, "
                "%llu writes delayed, %llu swap-outs, %llu swap-ins, %llu write / %llu read faults injected, "
                "%llu lost pages (%llu SIGBUS), %llu wrong, slots %llu allocated / %llu referenced\n",
                failing ? "failing" : "clean", seconds, (unsigned long long)seed,
                (unsigned long long)totals.writes.load(), (unsigned long long)totals.verified.load(),
                (unsigned long long)totals.toggles.load(), (unsigned long long)delayed.load(),
                (unsigned long long)s.swap_out_pages, (unsigned long long)s.swap_in_pages,
                (unsigned long long)write_faults, (unsigned long long)read_faults, (unsigned long long)s.lost_pages,
                (unsigned long long)totals.sigbus.load(), (unsigned long long)totals.wrong.load(),
                (unsigned long long)allocated, (unsigned long long)referenced);
    bool ok = totals.wrong.load() == 0 && allocated == referenced;
    if (!failing && s.lost_pages != 0) ok = false;   // nothing failed: nothing may be lost
    if (failing && s.lost_pages > read_faults) ok = false;  // a page lost without a failed read
    if (s.swap_out_pages == 0) {
        std::fprintf(stderr, "swv_stress: nothing was swapped out: the stress did not stress\n");
        ok = false;
    }
    return ok ? 0 : 1;
}
