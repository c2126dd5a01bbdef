// Every transition of a guest page's stage-2 state, and the races between a guest
// fault, an eviction completion, a VMM access, a discard, a swapoff bring-back and VM
// exit (guestmem/README.md#states), on the real stack: memfd views, a real
// userfaultfd, the real fault-service and reclaimer threads, and a SwapPool on a temp
// file through O_DIRECT io_uring. The one seam is an io::FaultyBlockDevice between
// the pool and the file: its FaultPlan `gate` rules hold a swap write or read at the
// exact moment a race needs (the I/O thread blocks in the hook until the test lets
// it go), and its eio / enospc rules fail one.
//
// The "guest" is a host thread touching vm->regions()[0].guest_view; its faults take
// the same userfaultfd path as a vCPU's. A poisoned (lost) page raises SIGBUS in the
// touching thread; guest_read_page() turns that into a result with siglongjmp.
//
// Forcing eviction: a resident limit of one page makes the reclaimer's target 0, so
// it evicts every present page; the limit is lifted once nothing is present. At that
// moment the reclaimer is in the final flush of its last pass and starts no other
// pass (limit 0), so pages the test then makes present stay as the test left them.
// A VM of 2 MiB is exactly one CLOCK pass (512 entries), which keeps that true.
//
// Every wait is bounded: a gate that is never reached fails the test; a guest
// thread or VM exit that never returns aborts the binary with "HANG: ...".
#include <gtest/gtest.h>

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "guestmem/errc.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/host_memory.hpp"
#include "io/block_device.hpp"
#include "io/fault_injection.hpp"
#include "io/linux_compat.hpp"
#include "io/ring.hpp"
#include "swap/swap_pool.hpp"
#include "tests/guestmem/thread_probe.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
using namespace std::chrono_literals;
namespace st = swapvisor::testing;

namespace {

constexpr std::uint64_t kVmBytes = 2ULL << 20;    // 512 pages: one CLOCK pass
constexpr std::uint64_t kSwapBytes = 32ULL << 20;
constexpr auto kBound = 5s;

Gpa page(std::uint64_t n) { return Gpa(n * kPageSize); }
// The k-th test page: 20 pages apart and never page 0, so that a touch is never
// "sequential" to a previous one and neither zero fault-around nor swap-in
// readahead (fault_service.cpp) brings in pages a test does not name. Those two
// have their own tests below.
Gpa pg(std::uint64_t k) { return page(17 + 20 * k); }

std::uint64_t word(std::uint64_t seed, std::uint64_t i) {
    std::uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ULL ^ (i * 0xBF58476D1CE4E5B9ULL);
    x ^= x >> 29;
    return x | 1;  // never an all-zero page
}

std::vector<std::byte> page_bytes(std::uint64_t seed) {
    std::vector<std::byte> b(kPageSize);
    for (std::uint64_t i = 0; i < kPageSize / 8; ++i) {
        std::uint64_t w = word(seed, i);
        std::memcpy(b.data() + i * 8, &w, 8);
    }
    return b;
}

const std::vector<std::byte>& zero_bytes() {
    static const std::vector<std::byte> z(kPageSize);
    return z;
}

// A future that is not ready within the bound means a thread is stuck in the kernel
// (a fault nobody resolves, a join that never returns): nothing can unstick it, so
// say what hung and stop the binary rather than hang the whole run.
template <class T>
T get_bounded(std::future<T>& f, const char* what) {
    if (f.wait_for(kBound) != std::future_status::ready) {
        std::fprintf(stderr, "HANG: %s did not finish within %lld s\n", what,
                     static_cast<long long>(std::chrono::seconds(kBound).count()));
        std::fflush(stderr);
        std::abort();
    }
    return f.get();
}

// --- guest accesses that may hit a poisoned page ---------------------------------

thread_local sigjmp_buf t_guest_jmp;
thread_local volatile sig_atomic_t t_guest_armed = 0;
thread_local volatile int t_guest_si_code = 0;

void on_sigusr1(int) {}  // only interrupts a blocked fault

void on_sigbus(int sig, siginfo_t* si, void*) {
    if (!t_guest_armed) {  // not a guarded guest access: crash as usual
        ::signal(sig, SIG_DFL);
        ::raise(sig);
        return;
    }
    t_guest_armed = 0;
    t_guest_si_code = si->si_code;
    siglongjmp(t_guest_jmp, 1);
}

__attribute__((noinline)) void copy_from_guest(const std::byte* src, std::byte* dst) {
    const auto* s = reinterpret_cast<const volatile std::uint64_t*>(src);
    for (std::size_t i = 0; i < kPageSize / 8; ++i) {
        std::uint64_t w = s[i];
        std::memcpy(dst + i * 8, &w, 8);
    }
}

// False if the access raised SIGBUS (the page is poisoned).
__attribute__((noinline)) bool guarded_copy_from_guest(const std::byte* src, std::byte* dst) {
    if (sigsetjmp(t_guest_jmp, 1) != 0) return false;
    t_guest_armed = 1;
    copy_from_guest(src, dst);
    t_guest_armed = 0;
    return true;
}

struct GuestRead {
    bool sigbus = false;
    int si_code = 0;
    std::vector<std::byte> bytes;
};

GuestRead guest_read_page(const std::byte* p) {
    GuestRead r;
    r.bytes.resize(kPageSize);
    if (!guarded_copy_from_guest(p, r.bytes.data())) {
        r.sigbus = true;
        r.si_code = t_guest_si_code;
        r.bytes.clear();
    }
    return r;
}

// A guest thread reading one page; tid is known once start() returns.
struct GuestThread {
    std::atomic<pid_t> tid{0};
    std::future<GuestRead> result;

    static std::unique_ptr<GuestThread> start(const std::byte* p) {
        auto g = std::make_unique<GuestThread>();
        GuestThread* raw = g.get();
        g->result = std::async(std::launch::async, [raw, p] {
            raw->tid = st::current_tid();
            return guest_read_page(p);
        });
        EXPECT_TRUE(st::wait_until([raw] { return raw->tid.load() != 0; }));
        return g;
    }
};

// --- holding one swap I/O at a gate -------------------------------------------------

class Hold {
public:
    // Runs on the I/O's submitting thread (reclaimer or fault thread), before issue.
    void hook(const io::BlockIo&) {
        std::unique_lock lk(mu_);
        entered_ = true;
        cv_.notify_all();
        // Bounded so a failed test cannot wedge the I/O thread for ever.
        cv_.wait_for(lk, 10s, [&] { return released_; });
    }
    bool wait_entered() {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, kBound, [&] { return entered_; });
    }
    void release() {
        std::lock_guard lk(mu_);
        released_ = true;
        cv_.notify_all();
    }

private:
    // Protects: entered_, released_; Order: leaf.
    std::mutex mu_;
    std::condition_variable cv_;
    bool entered_ = false;
    bool released_ = false;
};

// Whether this kernel write-protects shmem through userfaultfd (clean copies need it).
bool kernel_has_shmem_wp() {
    // Kernel contract: userfaultfd(2) + UFFDIO_API fails with EINVAL when a requested
    // feature is not supported.
    int fd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC));
    if (fd < 0) return false;
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
    bool ok = ::ioctl(fd, UFFDIO_API, &api) == 0;
    ::close(fd);
    return ok;
}

std::vector<pid_t> other_threads() {
    std::vector<pid_t> out;
    pid_t self = st::current_tid();
    for (const auto& d : std::filesystem::directory_iterator("/proc/self/task")) {
        pid_t tid = static_cast<pid_t>(std::stol(d.path().filename().string()));
        if (tid != self) out.push_back(tid);
    }
    return out;
}

// Every thread but the caller is asleep (a busy loop never is).
bool all_other_threads_asleep() {
    for (pid_t tid : other_threads()) {
        char s = st::thread_state(tid);
        if (s != 'S' && s != 'D' && s != 'I' && s != '?') return false;
    }
    return true;
}

}  // namespace

class PrivilegedTransitionsTest : public ::testing::Test {
protected:
    void SetUp() override {
        // Kernel contract: userfaultfd(2) fails with ENOSYS/EPERM when unavailable.
        int fd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
        if (fd < 0) GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable: " << std::strerror(errno);
        ::close(fd);
        if (auto ring = io::Ring::create(4); !ring)
            GTEST_SKIP() << "SKIPPED LOUDLY: io_uring unavailable: " << ring.error().message();

        struct sigaction sa {};
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        ASSERT_EQ(::sigaction(SIGBUS, &sa, &old_sigbus_), 0);
        struct sigaction usr {};
        usr.sa_handler = on_sigusr1;
        sigemptyset(&usr.sa_mask);
        ASSERT_EQ(::sigaction(SIGUSR1, &usr, &old_sigusr1_), 0);
        sigbus_installed_ = true;

        // Parameterized test names contain '/': keep the directory one level deep so
        // TearDown's remove_all takes all of it.
        std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
        std::replace(name.begin(), name.end(), '/', '-');
        dir_ = std::filesystem::temp_directory_path() / ("swv-tr-" + std::to_string(::getpid()) + "-" + name);
        std::filesystem::create_directories(dir_);
        swap_path_ = dir_ / "swap.img";
        plan_ = std::make_shared<io::FaultPlan>();
        pool_ = std::make_unique<swap::SwapPool>();
        auto file = io::FileBlockDevice::open(swap_path_, io::OpenMode::create_or_open, kSwapBytes);
        ASSERT_TRUE(file.has_value()) << file.error().message();
        auto id = pool_->swapon(std::make_unique<io::FaultyBlockDevice>(std::move(*file), plan_), 0);
        ASSERT_TRUE(id.has_value()) << id.error().message();
        host_ = std::make_unique<HostMemory>(*pool_, 0);
    }

    void TearDown() override {
        for (auto& h : holds_) h->release();
        host_.reset();
        if (pool_) {
            EXPECT_EQ(pool_->allocated_vslots(), 0u) << "VM teardown left swap slots allocated";
        }
        pool_.reset();
        if (sigbus_installed_) {
            ::sigaction(SIGBUS, &old_sigbus_, nullptr);
            ::sigaction(SIGUSR1, &old_sigusr1_, nullptr);
        }
        std::error_code ec;
        if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
    }

    GuestMemory* make_vm(std::uint64_t bytes = kVmBytes, unsigned vcpus = 1) {
        auto vm = host_->create_vm(
            MemoryConfig{.name = "vm", .memory_bytes = bytes, .resident_limit = 0, .vcpus = vcpus});
        EXPECT_TRUE(vm.has_value()) << vm.error().message();
        if (!vm) return nullptr;
        auto started = (*vm)->start();
        EXPECT_TRUE(started.has_value()) << started.error().message();
        vm_ = *vm;
        return vm_;
    }

    std::byte* gptr(Gpa gpa) const { return vm_->regions()[0].guest_view + gpa.value(); }
    PageState state(Gpa gpa) const { return vm_->entry(gpa).state(); }
    MemStats stats() const { return vm_->stats(); }

    // The guest (this thread) writes / checks a page through the guest view.
    void guest_fill(Gpa gpa, std::uint64_t seed) {
        auto* w = reinterpret_cast<volatile std::uint64_t*>(gptr(gpa));
        for (std::uint64_t i = 0; i < kPageSize / 8; ++i) w[i] = word(seed, i);
    }
    void guest_zero(Gpa gpa) {
        auto* w = reinterpret_cast<volatile std::uint64_t*>(gptr(gpa));
        for (std::uint64_t i = 0; i < kPageSize / 8; ++i) w[i] = 0;
    }
    ::testing::AssertionResult guest_sees(Gpa gpa, const std::vector<std::byte>& want) {
        GuestRead r = guest_read_page(gptr(gpa));
        if (r.sigbus) return ::testing::AssertionFailure() << "guest got SIGBUS at GPA " << gpa.value();
        if (r.bytes != want) return ::testing::AssertionFailure() << "guest read wrong bytes at GPA " << gpa.value();
        return ::testing::AssertionSuccess();
    }
    ::testing::AssertionResult guest_sees(Gpa gpa, std::uint64_t seed) { return guest_sees(gpa, page_bytes(seed)); }
    ::testing::AssertionResult vmm_sees(Gpa gpa, const std::vector<std::byte>& want) {
        std::vector<std::byte> got(kPageSize);
        auto r = vm_->read(gpa, got);
        if (!r) return ::testing::AssertionFailure() << "vm->read failed: " << r.error().message();
        if (got != want) return ::testing::AssertionFailure() << "vm->read returned wrong bytes";
        return ::testing::AssertionSuccess();
    }
    void vmm_write(Gpa gpa, std::uint64_t seed) {
        auto bytes = page_bytes(seed);
        auto r = vm_->write(gpa, bytes);
        ASSERT_TRUE(r.has_value()) << r.error().message();
    }

    // See the file comment: evict every present page, then lift the limit.
    ::testing::AssertionResult evict_all() {
        vm_->set_resident_limit(kPageSize);
        // Resident bytes are accounted just before the entry is published (PageLock's
        // release), so "0 resident" can be seen while the last completion still holds
        // its page lock in `writeback`: wait for the entries too (a TSan run hit it).
        auto settled = [&] {
            if (stats().resident_bytes != 0) return false;
            for (std::uint64_t p = 0; p < vm_->stats().memory_bytes / kPageSize; ++p) {
                const PageEntry e = vm_->entry(page(p));
                if (e.locked() || e.state() == PageState::writeback) return false;
            }
            return true;
        };
        bool ok = st::wait_until(settled);
        vm_->set_resident_limit(0);
        if (!ok) return ::testing::AssertionFailure() << "reclaimer left " << stats().resident_bytes << " bytes resident";
        return ::testing::AssertionSuccess();
    }
    // Hold the reclaimer inside its write of the page(s) it is evicting.
    ::testing::AssertionResult start_eviction_held(const std::shared_ptr<Hold>& h) {
        vm_->set_resident_limit(kPageSize);
        if (!h->wait_entered()) return ::testing::AssertionFailure() << "the reclaimer never wrote to swap";
        // No further pass once this one completes.
        vm_->set_resident_limit(0);
        return ::testing::AssertionSuccess();
    }

    std::shared_ptr<Hold> hold_next(io::FaultMatch m, std::uint64_t skip = 0) {
        auto h = std::make_shared<Hold>();
        plan_->add(io::FaultRule{.match = m,
                                 .skip = skip,
                                 .times = 1,
                                 .action = io::fault::Gate{[h](const io::BlockIo& op) { h->hook(op); }}});
        holds_.push_back(h);
        return h;
    }
    // A rule that only counts the ops it sees (a zero delay).
    io::FaultRuleId count(io::FaultMatch m) {
        return plan_->add(io::FaultRule{.match = m, .action = io::fault::Delay{0us}});
    }

    // Wait for a guest read that must end in SIGBUS. A thread that never returns is
    // being re-faulted for ever (no poison was installed): discard the page so it can
    // finish, and fail.
    GuestRead await_poisoned(GuestThread& g, Gpa gpa) {
        if (g.result.wait_for(kBound) != std::future_status::ready) {
            ADD_FAILURE() << "the guest touching the lost page at GPA " << gpa.value()
                          << " neither got SIGBUS nor returned: the fault service re-faults it for ever"
                             " (is UFFDIO_POISON failing? see the fault thread's log)";
            (void)vm_->discard(GpaRange{gpa, kPageSize});
            // Its fault may have been consumed without a wake: interrupt it so the
            // access restarts and faults again, now on a zero page.
            // Kernel contract: a caught signal ends a userfaultfd wait of a user-mode
            // fault (the access is retried after the handler).
            (void)::syscall(SYS_tgkill, ::getpid(), g.tid.load(), SIGUSR1);
        }
        return get_bounded(g.result, "guest touch of a lost page (after discard)");
    }

    void expect_slots_balanced() {
        EXPECT_EQ(pool_->allocated_vslots(), vm_->referenced_vslots())
            << "swap slots leaked or double-referenced";
    }

    std::filesystem::path dir_;
    std::filesystem::path swap_path_;
    std::shared_ptr<io::FaultPlan> plan_;
    std::unique_ptr<swap::SwapPool> pool_;
    std::unique_ptr<HostMemory> host_;
    GuestMemory* vm_ = nullptr;
    std::vector<std::shared_ptr<Hold>> holds_;
    struct sigaction old_sigbus_ {};
    struct sigaction old_sigusr1_ {};
    bool sigbus_installed_ = false;
};

// --- single transitions --------------------------------------------------------------

TEST_F(PrivilegedTransitionsTest, ZeroToResidentOnGuestTouch) {
    make_vm();
    EXPECT_EQ(state(pg(1)), PageState::zero);
    EXPECT_EQ(stats().resident_bytes, 0u);
    EXPECT_TRUE(guest_sees(pg(1), zero_bytes()));
    EXPECT_EQ(state(pg(1)), PageState::resident);
    EXPECT_EQ(stats().resident_bytes, kPageSize);
    EXPECT_EQ(state(pg(0)), PageState::zero) << "a touch must not populate neighbours";
    EXPECT_EQ(state(pg(2)), PageState::zero);
    guest_fill(pg(1), 3);  // mapped writable: no further fault
    EXPECT_TRUE(guest_sees(pg(1), 3));
    EXPECT_TRUE(vmm_sees(pg(1), page_bytes(3)));
    MemStats s = stats();
    EXPECT_EQ(s.minor_faults, 0u);
    EXPECT_EQ(s.major_faults, 0u);
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, ZeroToInactiveOnVmmWriteThenResidentOnMinorFault) {
    make_vm();
    vmm_write(pg(2), 5);
    EXPECT_EQ(state(pg(2)), PageState::inactive) << "a VMM write fills the memfd, not the guest view";
    EXPECT_EQ(stats().resident_bytes, kPageSize);
    EXPECT_TRUE(vmm_sees(pg(2), page_bytes(5)));
    EXPECT_EQ(stats().minor_faults, 0u);
    EXPECT_TRUE(guest_sees(pg(2), 5));
    EXPECT_EQ(state(pg(2)), PageState::resident);
    EXPECT_EQ(stats().minor_faults, 1u);
    EXPECT_EQ(stats().resident_bytes, kPageSize) << "MINOR maps the same page: nothing new is resident";
    // A VMM read of a zero page makes nothing present.
    std::vector<std::byte> buf(kPageSize, std::byte{1});
    ASSERT_TRUE(vm_->read(pg(3), buf).has_value());
    EXPECT_EQ(buf, zero_bytes());
    EXPECT_EQ(state(pg(3)), PageState::zero);
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, ReclaimerDemotesResidentToInactiveAndTouchSamplesIt) {
    // Every swap write fails, so the reclaimer demotes but can never evict the page:
    // it stays inactive for the test to look at. (Without any swap device the
    // reclaimer does not demote at all: zapping a working set it cannot evict only
    // costs the guest faults; see ReclaimerWithoutSwapDoesNotZapTheWorkingSet.)
    auto failing = plan_->add(io::FaultRule{.match = io::FaultMatch::write, .action = io::fault::Eio{}});
    vm_ = make_vm();
    guest_fill(pg(0), 7);
    ASSERT_EQ(state(pg(0)), PageState::resident);
    vm_->set_resident_limit(kPageSize);
    ASSERT_TRUE(st::wait_until([&] { return state(pg(0)) == PageState::inactive && plan_->hits(failing) > 0; }))
        << "reclaimer never demoted the page; state " << to_string(state(pg(0)));
    vm_->set_resident_limit(0);
    // With the limit lifted the reclaimer goes to sleep and starts no further pass.
    ASSERT_TRUE(st::wait_until(all_other_threads_asleep)) << "a guestmem thread never went idle";
    EXPECT_EQ(stats().resident_bytes, kPageSize) << "demotion keeps the page in the memfd";
    EXPECT_EQ(stats().swap_out_pages, 0u);
    EXPECT_TRUE(vmm_sees(pg(0), page_bytes(7)));
    EXPECT_EQ(state(pg(0)), PageState::inactive) << "a VMM read does not map the page";
    EXPECT_TRUE(guest_sees(pg(0), 7));
    EXPECT_EQ(state(pg(0)), PageState::resident);
    EXPECT_EQ(stats().minor_faults, 1u) << "the touch after demotion is the access sample";
    plan_->remove(failing);
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, ReclaimerWithoutSwapDoesNotZapTheWorkingSet) {
    auto vm = create_guest_memory(MemoryConfig{.name = "nopool", .memory_bytes = kVmBytes}, 9, nullptr, nullptr);
    ASSERT_TRUE(vm.has_value()) << vm.error().message();
    vm_ = vm->get();
    ASSERT_TRUE(vm_->start().has_value());
    guest_fill(pg(0), 7);
    vm_->set_resident_limit(kPageSize);
    ASSERT_TRUE(st::wait_until([&] { return stats().limit_state == "no swap device"; }));
    EXPECT_EQ(state(pg(0)), PageState::resident) << "demoted although it could never be evicted";
    EXPECT_TRUE(guest_sees(pg(0), 7));
    EXPECT_EQ(stats().minor_faults, 0u);
    vm_->stop();
    vm->reset();
    vm_ = nullptr;
}

TEST_F(PrivilegedTransitionsTest, InactiveGoesThroughWritebackToSwapped) {
    make_vm();
    vmm_write(pg(0), 11);
    auto writes = count(io::FaultMatch::write);
    auto h = hold_next(io::FaultMatch::write);
    ASSERT_TRUE(start_eviction_held(h));
    PageEntry held = vm_->entry(pg(0));
    EXPECT_EQ(held.state(), PageState::writeback);
    EXPECT_EQ(held.vslot(), swap::kNoVSlot) << "the slot being written is not in the entry until it commits";
    EXPECT_EQ(stats().resident_bytes, kPageSize) << "a page under writeback is still in memory";
    EXPECT_EQ(stats().swap_out_pages, 0u);
    EXPECT_TRUE(vmm_sees(pg(0), page_bytes(11))) << "a VMM read during writeback sees the data";
    EXPECT_EQ(state(pg(0)), PageState::writeback) << "a VMM read does not cancel writeback";
    h->release();
    ASSERT_TRUE(st::wait_until([&] { return stats().resident_bytes == 0; }));
    PageEntry e = vm_->entry(pg(0));
    EXPECT_EQ(e.state(), PageState::swapped);
    EXPECT_NE(e.vslot(), swap::kNoVSlot);
    EXPECT_FALSE(e.clean());
    MemStats s = stats();
    EXPECT_EQ(s.swap_out_pages, 1u);
    EXPECT_EQ(s.swapped_bytes, kPageSize);
    EXPECT_EQ(plan_->matches(writes), 1u);
    EXPECT_TRUE(pool_->owner_of(e.vslot()).has_value());
    expect_slots_balanced();
    EXPECT_EQ(pool_->allocated_vslots(), 1u);
    // Back through the VMM path (swap-in into the memfd, not mapped in the guest view).
    EXPECT_TRUE(vmm_sees(pg(0), page_bytes(11)));
    EXPECT_EQ(state(pg(0)), PageState::inactive);
    EXPECT_EQ(stats().swap_in_pages, 1u);
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, SwappedToResidentOnMissingFaultWithVerifiedChecksum) {
    make_vm();
    for (std::uint64_t p = 0; p < 4; ++p) guest_fill(pg(p), 20 + p);
    ASSERT_TRUE(evict_all());
    for (std::uint64_t p = 0; p < 4; ++p) ASSERT_EQ(state(pg(p)), PageState::swapped) << p;
    EXPECT_EQ(stats().swapped_bytes, 4 * kPageSize);
    EXPECT_EQ(stats().swap_out_pages, 4u);
    expect_slots_balanced();
    for (std::uint64_t p = 0; p < 4; ++p) EXPECT_TRUE(guest_sees(pg(p), 20 + p));
    MemStats s = stats();
    EXPECT_EQ(s.major_faults, 4u);
    EXPECT_EQ(s.swap_in_pages, 4u);
    EXPECT_EQ(s.swapped_bytes, 0u);
    EXPECT_EQ(s.resident_bytes, 4 * kPageSize);
    for (std::uint64_t p = 0; p < 4; ++p) {
        PageEntry e = vm_->entry(pg(p));
        EXPECT_EQ(e.state(), PageState::resident);
        if (kernel_has_shmem_wp()) {
            EXPECT_TRUE(e.clean()) << "a page swapped in by a read keeps its swap copy, write-protected";
            EXPECT_NE(e.vslot(), swap::kNoVSlot);
        }
        // UFFDIO_COPY made the page in the memfd (shmem page cache), not a private
        // copy of the guest view: the VMM view reads the same bytes.
        EXPECT_TRUE(vmm_sees(pg(p), page_bytes(20 + p))) << p;
    }
    expect_slots_balanced();
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, CleanPageIsEvictedAgainWithoutAWrite) {
    if (!kernel_has_shmem_wp()) GTEST_SKIP() << "SKIPPED LOUDLY: kernel lacks userfaultfd WP on shmem";
    make_vm();
    guest_fill(pg(0), 30);
    ASSERT_TRUE(evict_all());
    ASSERT_TRUE(guest_sees(pg(0), 30));
    PageEntry in = vm_->entry(pg(0));
    ASSERT_TRUE(in.clean());
    auto writes = count(io::FaultMatch::write);
    ASSERT_TRUE(evict_all());
    PageEntry out = vm_->entry(pg(0));
    EXPECT_EQ(out.state(), PageState::swapped);
    EXPECT_EQ(out.vslot(), in.vslot()) << "a clean drop reuses the copy already in swap";
    EXPECT_EQ(plan_->matches(writes), 0u) << "a clean page was written again";
    EXPECT_EQ(stats().clean_drops, 1u);
    EXPECT_EQ(stats().swap_out_pages, 1u);
    expect_slots_balanced();
    EXPECT_TRUE(guest_sees(pg(0), 30));
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, GuestWriteToCleanPageTakesWpFaultAndFreesTheCopy) {
    if (!kernel_has_shmem_wp()) GTEST_SKIP() << "SKIPPED LOUDLY: kernel lacks userfaultfd WP on shmem";
    make_vm();
    guest_fill(pg(0), 40);
    ASSERT_TRUE(evict_all());
    ASSERT_TRUE(guest_sees(pg(0), 40));
    ASSERT_TRUE(vm_->entry(pg(0)).clean());
    ASSERT_EQ(pool_->allocated_vslots(), 1u);
    guest_fill(pg(0), 41);  // write-protected: a WP fault drops the swap copy
    PageEntry e = vm_->entry(pg(0));
    EXPECT_EQ(e.state(), PageState::resident);
    EXPECT_FALSE(e.clean());
    EXPECT_EQ(e.vslot(), swap::kNoVSlot);
    EXPECT_EQ(stats().wp_faults, 1u);
    EXPECT_EQ(pool_->allocated_vslots(), 0u) << "the stale swap copy must be freed on the first write";
    EXPECT_TRUE(guest_sees(pg(0), 41));
    EXPECT_TRUE(vmm_sees(pg(0), page_bytes(41)));
    // The dirty page is written again on the next eviction and comes back new.
    ASSERT_TRUE(evict_all());
    EXPECT_EQ(stats().swap_out_pages, 2u);
    EXPECT_TRUE(guest_sees(pg(0), 41));
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, VmmWriteToCleanPageFreesTheCopyAndGuestStillWrites) {
    if (!kernel_has_shmem_wp()) GTEST_SKIP() << "SKIPPED LOUDLY: kernel lacks userfaultfd WP on shmem";
    make_vm();
    guest_fill(pg(0), 50);
    ASSERT_TRUE(evict_all());
    ASSERT_TRUE(guest_sees(pg(0), 50));
    ASSERT_TRUE(vm_->entry(pg(0)).clean());
    std::vector<std::byte> patch(16, std::byte{0xAB});
    ASSERT_TRUE(vm_->write(Gpa(pg(0).value() + 64), patch).has_value());
    EXPECT_FALSE(vm_->entry(pg(0)).clean()) << "the swap copy no longer matches";
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
    auto want = page_bytes(50);
    std::memcpy(want.data() + 64, patch.data(), patch.size());
    EXPECT_TRUE(guest_sees(pg(0), want));
    guest_fill(pg(0), 51);  // the guest view is still write-protected: WP fault
    EXPECT_EQ(stats().wp_faults, 1u);
    EXPECT_TRUE(guest_sees(pg(0), 51));
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, AllZeroPagesBecomeZeroWithoutAWrite) {
    make_vm();
    EXPECT_TRUE(guest_sees(pg(0), zero_bytes()));  // resident, zero content
    ASSERT_TRUE(vm_->write(pg(1), zero_bytes()).has_value());  // inactive, zero content
    guest_fill(pg(2), 60);
    guest_zero(pg(2));  // resident, written back to zeros
    auto writes = count(io::FaultMatch::write);
    ASSERT_TRUE(evict_all());
    for (std::uint64_t p = 0; p < 3; ++p) EXPECT_EQ(state(pg(p)), PageState::zero) << p;
    EXPECT_EQ(stats().zero_pages, 3u);
    EXPECT_EQ(stats().swap_out_pages, 0u);
    EXPECT_EQ(plan_->matches(writes), 0u) << "an all-zero page went to disk";
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
    for (std::uint64_t p = 0; p < 3; ++p) EXPECT_TRUE(guest_sees(pg(p), zero_bytes())) << p;
    vm_->stop();
    expect_slots_balanced();
}

// The zero check leaves at the first non-zero 64-byte line: a page whose only
// non-zero byte is its last one (or the last of its first line) must still be
// written out, never dropped as zero.
TEST_F(PrivilegedTransitionsTest, APageZeroButForOneByteIsWrittenNotDropped) {
    make_vm();
    const std::size_t offsets[] = {kPageSize - 1, 63, 64, kPageSize / 2 + 7};
    for (std::size_t k = 0; k < std::size(offsets); ++k) {
        auto bytes = zero_bytes();
        bytes[offsets[k]] = std::byte{0x5A};
        ASSERT_TRUE(vm_->write(pg(k), bytes).has_value());
    }
    ASSERT_TRUE(evict_all());
    for (std::size_t k = 0; k < std::size(offsets); ++k) {
        EXPECT_EQ(state(pg(k)), PageState::swapped) << "byte " << offsets[k];
        auto want = zero_bytes();
        want[offsets[k]] = std::byte{0x5A};
        EXPECT_TRUE(guest_sees(pg(k), want)) << "byte " << offsets[k];
    }
    EXPECT_EQ(stats().zero_pages, 0u);
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, SequentialFirstTouchesFaultAroundZeroPages) {
    make_vm();
    constexpr std::uint64_t kFirst = 200;
    EXPECT_TRUE(guest_sees(page(kFirst), zero_bytes()));
    EXPECT_EQ(stats().resident_bytes, kPageSize) << "a lone first touch maps one page";
    EXPECT_EQ(state(page(kFirst + 1)), PageState::zero);
    EXPECT_TRUE(guest_sees(page(kFirst + 1), zero_bytes()));  // sequential: the run after it is mapped too
    // Fault-around runs on the fault thread after the guest was woken: wait for the
    // first page of the run, then for every page of it to be unlocked.
    ASSERT_TRUE(st::wait_until([&] {
        if (state(page(kFirst + 2)) != PageState::resident) return false;
        for (std::uint64_t i = 2; i < 2 + 17; ++i)
            if (vm_->entry(page(kFirst + i)).locked()) return false;
        return true;
    })) << "a sequential first touch must fault around";
    std::uint64_t around = 0;
    while (state(page(kFirst + 2 + around)) == PageState::resident) ++around;
    EXPECT_GT(around, 0u) << "a sequential first touch must fault around";
    EXPECT_LE(around, 16u);
    EXPECT_EQ(state(page(kFirst + 2 + around)), PageState::zero);
    EXPECT_EQ(stats().resident_bytes, (2 + around) * kPageSize);
    guest_fill(page(kFirst + 2), 210);  // already mapped writable
    EXPECT_TRUE(guest_sees(page(kFirst + 2), 210));
    // Pages mapped ahead but never used are found all-zero and dropped without a write.
    auto writes = count(io::FaultMatch::write);
    ASSERT_TRUE(evict_all());
    EXPECT_EQ(stats().zero_pages, 1 + around);
    EXPECT_EQ(stats().swap_out_pages, 1u);
    EXPECT_EQ(plan_->matches(writes), 1u);
    EXPECT_EQ(state(page(kFirst + 2)), PageState::swapped);
    EXPECT_EQ(state(page(kFirst + 3)), PageState::zero);
    EXPECT_TRUE(guest_sees(page(kFirst + 2), 210));
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, SequentialSwapInsReadTheRunAheadAsCleanPages) {
    if (!kernel_has_shmem_wp()) GTEST_SKIP() << "SKIPPED LOUDLY: readahead needs userfaultfd WP on shmem";
    make_vm();
    constexpr std::uint64_t kFirst = 300, kRun = 8;
    for (std::uint64_t i = 0; i < kRun; ++i) guest_fill(page(kFirst + i), 300 + i);
    ASSERT_TRUE(evict_all());
    for (std::uint64_t i = 0; i < kRun; ++i) ASSERT_EQ(state(page(kFirst + i)), PageState::swapped) << i;
    EXPECT_TRUE(guest_sees(page(kFirst), 300));  // a lone swap-in reads one page
    EXPECT_EQ(stats().readahead_pages, 0u);
    EXPECT_EQ(state(page(kFirst + 1)), PageState::swapped);
    EXPECT_TRUE(guest_sees(page(kFirst + 1), 301));  // sequential: the rest of the run comes too
    // Readahead runs on the fault thread after the guest was woken.
    ASSERT_TRUE(st::wait_until([&] {
        for (std::uint64_t i = 2; i < kRun; ++i) {
            PageEntry e = vm_->entry(page(kFirst + i));
            if (e.locked() || e.state() == PageState::swapped) return false;
        }
        return true;
    })) << "the run was not read ahead; readahead_pages=" << stats().readahead_pages;
    MemStats s = stats();
    EXPECT_EQ(s.readahead_pages, kRun - 2);
    EXPECT_EQ(s.swap_in_pages, kRun);
    EXPECT_EQ(s.major_faults, 2u);
    EXPECT_EQ(s.swapped_bytes, 0u);
    for (std::uint64_t i = 2; i < kRun; ++i) {
        PageEntry e = vm_->entry(page(kFirst + i));
        EXPECT_TRUE(e.state() == PageState::resident || e.state() == PageState::inactive) << to_string(e.state());
        EXPECT_TRUE(e.clean()) << "read-ahead pages keep their swap copy";
        EXPECT_NE(e.vslot(), swap::kNoVSlot);
    }
    for (std::uint64_t i = 2; i < kRun; ++i) EXPECT_TRUE(guest_sees(page(kFirst + i), 300 + i)) << i;
    EXPECT_EQ(stats().major_faults, 2u) << "read-ahead pages must not be read again";
    EXPECT_EQ(stats().swap_in_pages, kRun);
    expect_slots_balanced();
    // Unused, they go back out without a write.
    auto writes = count(io::FaultMatch::write);
    ASSERT_TRUE(evict_all());
    EXPECT_EQ(plan_->matches(writes), 0u);
    EXPECT_EQ(stats().clean_drops, kRun);
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, DiscardFromEveryStateLeavesZeroAndFreesTheSlot) {
    const bool wp = kernel_has_shmem_wp();
    make_vm();
    guest_fill(pg(2), 72);
    guest_fill(pg(3), 73);
    ASSERT_TRUE(evict_all());
    ASSERT_TRUE(guest_sees(pg(3), 73));  // resident (+clean)
    guest_fill(pg(0), 70);               // resident
    vmm_write(pg(1), 71);                // inactive
    ASSERT_EQ(state(pg(0)), PageState::resident);
    ASSERT_EQ(state(pg(1)), PageState::inactive);
    ASSERT_EQ(state(pg(2)), PageState::swapped);
    ASSERT_EQ(state(pg(3)), PageState::resident);
    ASSERT_EQ(vm_->entry(pg(3)).clean(), wp);
    std::uint64_t slots = pool_->allocated_vslots();
    ASSERT_EQ(slots, wp ? 2u : 1u);

    struct Case {
        std::uint64_t page;
        std::uint64_t frees_slot;
        std::uint64_t leaves_memory;
    } cases[] = {{0, 0, 1}, {1, 0, 1}, {2, 1, 0}, {3, wp ? 1u : 0u, 1}};
    std::uint64_t discarded = 0;
    for (const Case& c : cases) {
        std::uint64_t resident_before = stats().resident_bytes;
        ASSERT_TRUE(vm_->discard(GpaRange{pg(c.page), kPageSize}).has_value());
        PageEntry e = vm_->entry(pg(c.page));
        EXPECT_EQ(e.state(), PageState::zero) << c.page;
        EXPECT_EQ(e.vslot(), swap::kNoVSlot) << c.page;
        EXPECT_FALSE(e.clean()) << c.page;
        slots -= c.frees_slot;
        EXPECT_EQ(pool_->allocated_vslots(), slots) << "discard of page " << c.page;
        EXPECT_EQ(stats().resident_bytes, resident_before - c.leaves_memory * kPageSize) << c.page;
        EXPECT_EQ(stats().discarded_pages, ++discarded);
        expect_slots_balanced();
    }
    EXPECT_EQ(stats().swapped_bytes, 0u);
    // A zero page needs no discard and is not counted.
    ASSERT_TRUE(vm_->discard(GpaRange{pg(9), kPageSize}).has_value());
    EXPECT_EQ(stats().discarded_pages, discarded);
    for (std::uint64_t p = 0; p < 4; ++p) EXPECT_TRUE(guest_sees(pg(p), zero_bytes())) << p;
    EXPECT_TRUE(vmm_sees(pg(1), zero_bytes()));
    vm_->stop();
    expect_slots_balanced();
}

// --- races with an eviction in flight -------------------------------------------------

TEST_F(PrivilegedTransitionsTest, GuestTouchDuringWritebackWinsAndCompletionFreesTheNewSlot) {
    make_vm();
    guest_fill(pg(0), 80);  // resident: the reclaimer demotes it, then writes it
    auto h = hold_next(io::FaultMatch::write);
    ASSERT_TRUE(start_eviction_held(h));
    ASSERT_EQ(state(pg(0)), PageState::writeback);
    ASSERT_EQ(pool_->allocated_vslots(), 1u) << "the slot being written is allocated";
    // The write is held: the guest's MINOR fault must not wait for it.
    EXPECT_TRUE(guest_sees(pg(0), 80));
    EXPECT_EQ(state(pg(0)), PageState::resident);
    EXPECT_EQ(stats().minor_faults, 1u);
    guest_fill(pg(0), 81);  // the copy being written is now stale
    h->release();
    ASSERT_TRUE(st::wait_until([&] { return pool_->allocated_vslots() == 0; }))
        << "the completion did not free the slot of a cancelled eviction";
    PageEntry e = vm_->entry(pg(0));
    EXPECT_EQ(e.state(), PageState::resident);
    EXPECT_EQ(e.vslot(), swap::kNoVSlot);
    EXPECT_EQ(stats().swap_out_pages, 0u);
    EXPECT_EQ(stats().resident_bytes, kPageSize);
    EXPECT_TRUE(guest_sees(pg(0), 81));
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, VmmWriteDuringWritebackWins) {
    make_vm();
    vmm_write(pg(0), 90);
    auto h = hold_next(io::FaultMatch::write);
    ASSERT_TRUE(start_eviction_held(h));
    ASSERT_EQ(state(pg(0)), PageState::writeback);
    vmm_write(pg(0), 91);
    EXPECT_EQ(state(pg(0)), PageState::inactive) << "a VMM write cancels the eviction";
    h->release();
    ASSERT_TRUE(st::wait_until([&] { return pool_->allocated_vslots() == 0; }));
    EXPECT_EQ(state(pg(0)), PageState::inactive);
    EXPECT_EQ(stats().swap_out_pages, 0u);
    EXPECT_EQ(stats().resident_bytes, kPageSize);
    EXPECT_TRUE(vmm_sees(pg(0), page_bytes(91)));
    EXPECT_TRUE(guest_sees(pg(0), 91));
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, DiscardDuringWritebackLeavesZeroAndCompletionFreesTheSlot) {
    make_vm();
    vmm_write(pg(0), 100);
    auto h = hold_next(io::FaultMatch::write);
    ASSERT_TRUE(start_eviction_held(h));
    ASSERT_EQ(state(pg(0)), PageState::writeback);
    ASSERT_TRUE(vm_->discard(GpaRange{pg(0), kPageSize}).has_value());
    EXPECT_EQ(state(pg(0)), PageState::zero);
    EXPECT_EQ(stats().resident_bytes, 0u);
    EXPECT_EQ(stats().discarded_pages, 1u);
    h->release();
    ASSERT_TRUE(st::wait_until([&] { return pool_->allocated_vslots() == 0; }));
    EXPECT_EQ(state(pg(0)), PageState::zero);
    EXPECT_EQ(stats().swap_out_pages, 0u);
    // The next touch reads zeros (and is not served a leftover page).
    auto g = GuestThread::start(gptr(pg(0)));
    GuestRead r = get_bounded(g->result, "guest touch of a page discarded during writeback");
    EXPECT_FALSE(r.sigbus);
    EXPECT_EQ(r.bytes, zero_bytes());
    EXPECT_EQ(state(pg(0)), PageState::resident);
    EXPECT_EQ(stats().resident_bytes, kPageSize);
    vm_->stop();
    expect_slots_balanced();
}

// --- races on swap-in -------------------------------------------------------------------

TEST_F(PrivilegedTransitionsTest, TwoGuestThreadsFaultingOneSwappedPageShareOneSwapIn) {
    make_vm(kVmBytes, /*vcpus=*/2);
    guest_fill(pg(0), 110);
    ASSERT_TRUE(evict_all());
    auto h = hold_next(io::FaultMatch::read);
    auto a = GuestThread::start(gptr(pg(0)));
    ASSERT_TRUE(h->wait_entered()) << "the first fault never read from swap";
    auto b = GuestThread::start(gptr(pg(0)));
    ASSERT_TRUE(st::wait_until_blocked(b->tid)) << "second guest thread never blocked in its fault";
    ASSERT_TRUE(st::wait_until_blocked(a->tid));
    h->release();
    GuestRead ra = get_bounded(a->result, "first guest thread");
    GuestRead rb = get_bounded(b->result, "second guest thread");
    EXPECT_FALSE(ra.sigbus);
    EXPECT_FALSE(rb.sigbus);
    EXPECT_EQ(ra.bytes, page_bytes(110));
    EXPECT_EQ(rb.bytes, page_bytes(110));
    MemStats s = stats();
    EXPECT_EQ(s.swap_in_pages, 1u) << "the page was read from swap twice";
    EXPECT_EQ(s.major_faults, 1u);
    EXPECT_EQ(s.resident_bytes, kPageSize);
    EXPECT_EQ(state(pg(0)), PageState::resident);
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, SwapInReadErrorLosesThePageAndTheGuestGetsSigbus) {
    make_vm();
    guest_fill(pg(0), 120);
    guest_fill(pg(1), 121);
    ASSERT_TRUE(evict_all());
    auto eio = plan_->add(io::FaultRule{.match = io::FaultMatch::read, .times = 1, .action = io::fault::Eio{}});
    auto g = GuestThread::start(gptr(pg(0)));
    GuestRead r = await_poisoned(*g, pg(0));
    EXPECT_EQ(plan_->hits(eio), 1u);
    ASSERT_TRUE(r.sigbus) << "the guest must be told, never handed bytes";
    std::printf("SIGBUS si_code=%d (BUS_MCEERR_AR=%d)\n", r.si_code, BUS_MCEERR_AR);
    EXPECT_EQ(state(pg(0)), PageState::lost);
    MemStats s = stats();
    EXPECT_EQ(s.lost_pages, 1u);
    EXPECT_EQ(s.swapped_bytes, kPageSize) << "only page 1 is still swapped";
    EXPECT_EQ(s.resident_bytes, 0u);
    expect_slots_balanced();
    EXPECT_EQ(pool_->allocated_vslots(), 1u) << "the lost page's slot is freed";
    // Every further access errors too, from the guest and from the VMM.
    auto again = GuestThread::start(gptr(pg(0)));
    EXPECT_TRUE(await_poisoned(*again, pg(0)).sigbus);
    std::vector<std::byte> buf(kPageSize);
    auto vr = vm_->read(pg(0), buf);
    ASSERT_FALSE(vr.has_value());
    EXPECT_EQ(vr.error().code, make_error_code(Errc::page_lost));
    // The neighbour is intact.
    EXPECT_TRUE(guest_sees(pg(1), 121));
    // Discarding the lost page gives the guest a fresh zero page.
    ASSERT_TRUE(vm_->discard(GpaRange{pg(0), kPageSize}).has_value());
    EXPECT_EQ(state(pg(0)), PageState::zero);
    auto fresh = GuestThread::start(gptr(pg(0)));
    GuestRead rf = get_bounded(fresh->result, "touch of a discarded lost page");
    EXPECT_FALSE(rf.sigbus) << "a discarded lost page must read zeros, not raise SIGBUS";
    if (!rf.sigbus) {
        EXPECT_EQ(rf.bytes, zero_bytes());
    }
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, ChecksumMismatchLosesThePageInsteadOfReturningWrongBytes) {
    make_vm();
    guest_fill(pg(0), 130);
    ASSERT_TRUE(evict_all());
    swap::VSlot v = vm_->entry(pg(0)).vslot();
    auto pslot = pool_->pslot_of(v);
    ASSERT_TRUE(pslot.has_value());
    {
        // Corrupt the slot on disk behind the pool's back (buffered fd; the pool's
        // O_DIRECT read sees it once it is written back).
        int fd = ::open(swap_path_.c_str(), O_RDWR | O_CLOEXEC);
        ASSERT_GE(fd, 0) << std::strerror(errno);
        auto junk = page_bytes(999);
        off_t off = static_cast<off_t>(swap::slot_offset(pslot->slot).value());  // after the header page
        ASSERT_EQ(::pwrite(fd, junk.data(), junk.size(), off), static_cast<ssize_t>(junk.size()));
        ASSERT_EQ(::fdatasync(fd), 0);
        ::close(fd);
    }
    auto g = GuestThread::start(gptr(pg(0)));
    GuestRead r = await_poisoned(*g, pg(0));
    ASSERT_TRUE(r.sigbus) << "corrupted swap data reached the guest";
    EXPECT_EQ(state(pg(0)), PageState::lost);
    EXPECT_EQ(stats().lost_pages, 1u);
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
    std::vector<std::byte> buf(kPageSize);
    EXPECT_FALSE(vm_->read(pg(0), buf).has_value());
    vm_->stop();
    expect_slots_balanced();
}

// --- swap-out failures -------------------------------------------------------------------

class PrivilegedWriteOutFailureTest : public PrivilegedTransitionsTest, public ::testing::WithParamInterface<int> {};

TEST_P(PrivilegedWriteOutFailureTest, PageStaysInactiveAndIsRetriedWithNothingLost) {
    make_vm();
    guest_fill(pg(0), 140);
    io::FaultAction fail = GetParam() == EIO ? io::FaultAction{io::fault::Eio{}} : io::FaultAction{io::fault::Enospc{}};
    // The gate runs before the failure is applied: it lets the test lift the limit so
    // the reclaimer stops after this one failed attempt.
    auto h = hold_next(io::FaultMatch::write);
    auto failing = plan_->add(io::FaultRule{.match = io::FaultMatch::write, .times = 1, .action = fail});
    ASSERT_TRUE(start_eviction_held(h));
    h->release();
    ASSERT_TRUE(st::wait_until([&] { return state(pg(0)) == PageState::inactive; }))
        << "after a failed write the page must be inactive again; it is " << to_string(state(pg(0)));
    EXPECT_EQ(plan_->hits(failing), 1u);
    EXPECT_EQ(stats().swap_out_pages, 0u);
    EXPECT_EQ(stats().resident_bytes, kPageSize);
    EXPECT_EQ(pool_->allocated_vslots(), 0u) << "a failed write must not leak its slot";
    EXPECT_TRUE(vmm_sees(pg(0), page_bytes(140)));
    if (GetParam() == ENOSPC) {
        // ENOSPC marks the device failed (issue #12): no more slots on it, so the
        // retry goes to another device.
        ASSERT_EQ(pool_->stats()[0].state, swap::DeviceState::failed);
        ASSERT_TRUE(pool_->swapon(swap_path_.parent_path() / "spare.swap", 0, kSwapBytes));
    }
    // Reclaim again: the retry succeeds.
    ASSERT_TRUE(evict_all());
    EXPECT_EQ(state(pg(0)), PageState::swapped);
    EXPECT_EQ(plan_->hits(failing), 1u);
    EXPECT_EQ(stats().swap_out_pages, 1u);
    expect_slots_balanced();
    EXPECT_TRUE(guest_sees(pg(0), 140));
    vm_->stop();
    expect_slots_balanced();
}

INSTANTIATE_TEST_SUITE_P(Errno, PrivilegedWriteOutFailureTest, ::testing::Values(EIO, ENOSPC),
                         [](const auto& info) { return info.param == EIO ? "Eio" : "Enospc"; });

// --- VM exit ------------------------------------------------------------------------------

TEST_F(PrivilegedTransitionsTest, StopWhileWritebackIsHeldNeitherHangsNorLeaks) {
    make_vm();
    vmm_write(pg(0), 150);
    auto h = hold_next(io::FaultMatch::write);
    ASSERT_TRUE(start_eviction_held(h));
    std::atomic<pid_t> tid{0};
    auto stopper = std::async(std::launch::async, [&] {
        tid = st::current_tid();
        vm_->stop();
    });
    ASSERT_TRUE(st::wait_until([&] { return tid.load() != 0; }));
    ASSERT_TRUE(st::wait_until_blocked(tid)) << "stop() neither returned nor waited";
    h->release();
    get_bounded(stopper, "vm->stop() with a writeback held");
    PageEntry e = vm_->entry(pg(0));
    EXPECT_TRUE(e.state() == PageState::swapped || e.state() == PageState::inactive) << to_string(e.state());
    expect_slots_balanced();
    vm_->stop();  // idempotent
    auto destroy = std::async(std::launch::async, [&] { host_.reset(); });
    get_bounded(destroy, "HostMemory destruction after stop");
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
}

TEST_F(PrivilegedTransitionsTest, HostDestructionWhileWritebackIsHeldNeitherHangsNorLeaks) {
    make_vm();
    vmm_write(pg(0), 160);
    vmm_write(pg(1), 161);
    guest_fill(pg(2), 162);
    ASSERT_TRUE(evict_all());  // some slots in use at exit
    vmm_write(pg(3), 163);
    auto h = hold_next(io::FaultMatch::write);
    ASSERT_TRUE(start_eviction_held(h));
    ASSERT_GE(pool_->allocated_vslots(), 4u);
    std::atomic<pid_t> tid{0};
    auto destroy = std::async(std::launch::async, [&] {
        tid = st::current_tid();
        host_.reset();
    });
    ASSERT_TRUE(st::wait_until([&] { return tid.load() != 0; }));
    ASSERT_TRUE(st::wait_until_blocked(tid));
    h->release();
    get_bounded(destroy, "HostMemory destruction with a writeback held");
    vm_ = nullptr;
    EXPECT_EQ(pool_->allocated_vslots(), 0u) << "VM exit leaked swap slots";
}

TEST_F(PrivilegedTransitionsTest, StopWithFaultsInFlightAndQueuedNeitherHangsNorLeaks) {
    make_vm();  // one fault thread: the second fault queues behind the first
    guest_fill(pg(0), 170);
    guest_fill(pg(1), 171);
    ASSERT_TRUE(evict_all());
    auto h = hold_next(io::FaultMatch::read);
    auto a = GuestThread::start(gptr(pg(0)));
    ASSERT_TRUE(h->wait_entered());
    // The second access is a kernel copy from the guest view (write(2) to a pipe), so
    // that once the VM is gone it ends with EFAULT or the bytes, never a signal.
    int pipefd[2];
    ASSERT_EQ(::pipe2(pipefd, O_CLOEXEC), 0);
    std::atomic<pid_t> btid{0};
    const std::byte* b_src = gptr(pg(1));
    auto b = std::async(std::launch::async, [&btid, b_src, fd = pipefd[1]] {
        btid = st::current_tid();
        return ::write(fd, b_src, kPageSize);
    });
    ASSERT_TRUE(st::wait_until([&] { return btid.load() != 0; }));
    ASSERT_TRUE(st::wait_until_blocked(btid)) << "the queued fault never blocked";
    std::atomic<pid_t> stid{0};
    auto stopper = std::async(std::launch::async, [&] {
        stid = st::current_tid();
        vm_->stop();
    });
    ASSERT_TRUE(st::wait_until([&] { return stid.load() != 0; }));
    ASSERT_TRUE(st::wait_until_blocked(stid));
    h->release();
    get_bounded(stopper, "vm->stop() with a fault in flight");
    GuestRead ra = get_bounded(a->result, "guest whose fault was in flight at stop");
    EXPECT_FALSE(ra.sigbus);
    EXPECT_EQ(ra.bytes, page_bytes(170)) << "the fault in flight at stop must still be resolved correctly";
    expect_slots_balanced();
    // The queued fault is released when the VM's memory goes away.
    auto destroy = std::async(std::launch::async, [&] { host_.reset(); });
    get_bounded(destroy, "HostMemory destruction with a fault queued");
    vm_ = nullptr;
    ssize_t n = get_bounded(b, "kernel access blocked in a fault at VM exit");
    EXPECT_TRUE(n == static_cast<ssize_t>(kPageSize) || n < 0) << n;
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
}

// --- swapoff bring-back ---------------------------------------------------------------------

TEST_F(PrivilegedTransitionsTest, BringBackWaitsForAGuestFaultInFlight) {
    const bool wp = kernel_has_shmem_wp();
    make_vm();
    guest_fill(pg(0), 180);
    ASSERT_TRUE(evict_all());
    swap::VSlot v = vm_->entry(pg(0)).vslot();
    auto owner = pool_->owner_of(v);
    ASSERT_TRUE(owner.has_value());
    auto h = hold_next(io::FaultMatch::read);
    auto a = GuestThread::start(gptr(pg(0)));
    ASSERT_TRUE(h->wait_entered()) << "the guest fault never read from swap";
    std::atomic<pid_t> tid{0};
    auto bring = std::async(std::launch::async, [&]() -> Result<bool> {
        auto ring = io::Ring::create(8);
        if (!ring) return std::unexpected(ring.error());
        tid = st::current_tid();
        return host_->bring_back(*owner, v, nullptr, *ring);
    });
    ASSERT_TRUE(st::wait_until([&] { return tid.load() != 0; }));
    ASSERT_TRUE(st::wait_until_blocked(tid)) << "bring_back did not wait for the page lock";
    h->release();
    GuestRead ra = get_bounded(a->result, "guest fault racing bring_back");
    Result<bool> rb = get_bounded(bring, "bring_back racing a guest fault");
    EXPECT_FALSE(ra.sigbus);
    EXPECT_EQ(ra.bytes, page_bytes(180));
    ASSERT_TRUE(rb.has_value()) << rb.error().message();
    // The fault made it resident and kept the swap copy only as a clean copy;
    // bring_back drops that copy (or finds the slot gone without WP tracking).
    EXPECT_EQ(*rb, wp);
    PageEntry e = vm_->entry(pg(0));
    EXPECT_EQ(e.state(), PageState::resident);
    EXPECT_FALSE(e.clean());
    EXPECT_EQ(pool_->allocated_vslots(), 0u) << "the device's slot must be released";
    EXPECT_EQ(stats().swap_in_pages, 1u);
    guest_fill(pg(0), 181);  // still write-protected: the WP fault must resolve
    EXPECT_TRUE(guest_sees(pg(0), 181));
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, GuestFaultWaitsForABringBackInFlight) {
    make_vm();
    guest_fill(pg(0), 190);
    ASSERT_TRUE(evict_all());
    swap::VSlot v = vm_->entry(pg(0)).vslot();
    auto owner = pool_->owner_of(v);
    ASSERT_TRUE(owner.has_value());
    auto h = hold_next(io::FaultMatch::read);
    auto bring = std::async(std::launch::async, [&]() -> Result<bool> {
        auto ring = io::Ring::create(8);
        if (!ring) return std::unexpected(ring.error());
        return host_->bring_back(*owner, v, nullptr, *ring);
    });
    ASSERT_TRUE(h->wait_entered()) << "bring_back never read from swap";
    auto a = GuestThread::start(gptr(pg(0)));
    ASSERT_TRUE(st::wait_until_blocked(a->tid)) << "the guest never blocked in its fault";
    h->release();
    Result<bool> rb = get_bounded(bring, "bring_back");
    GuestRead ra = get_bounded(a->result, "guest fault waiting for bring_back");
    ASSERT_TRUE(rb.has_value()) << rb.error().message();
    EXPECT_TRUE(*rb);
    EXPECT_FALSE(ra.sigbus);
    EXPECT_EQ(ra.bytes, page_bytes(190));
    MemStats s = stats();
    EXPECT_EQ(s.swap_in_pages, 1u) << "one read: the fault found the page brought back";
    EXPECT_EQ(s.major_faults, 0u);
    EXPECT_EQ(s.minor_faults, 1u);
    PageEntry e = vm_->entry(pg(0));
    EXPECT_EQ(e.state(), PageState::resident);
    EXPECT_FALSE(e.clean()) << "a brought-back page keeps no copy on the device being removed";
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
    // A stale bring-back (the page no longer refers to the slot) changes nothing.
    auto ring = io::Ring::create(8);
    ASSERT_TRUE(ring.has_value());
    auto stale = host_->bring_back(*owner, v, nullptr, *ring);
    ASSERT_TRUE(stale.has_value());
    EXPECT_FALSE(*stale);
    vm_->stop();
    expect_slots_balanced();
}

// --- the resident limit -------------------------------------------------------------------------

TEST_F(PrivilegedTransitionsTest, ResidentLimitHoldsWhileGuestStreamsFourTimesIt) {
    constexpr std::uint64_t kMem = 8ULL << 20, kLimit = 2ULL << 20;
    make_vm(kMem);
    vm_->set_resident_limit(kLimit);
    const std::uint64_t pages = kMem / kPageSize;
    for (std::uint64_t p = 0; p < pages; ++p) guest_fill(page(p), 1000 + p);
    std::uint64_t errors = 0;
    for (std::uint64_t p = 0; p < pages; ++p) errors += guest_sees(page(p), 1000 + p) ? 0 : 1;
    EXPECT_EQ(errors, 0u);
    MemStats s = stats();
    EXPECT_LE(s.resident_bytes_peak, kLimit + kLimit / 10);
    EXPECT_GE(s.swap_out_pages, pages - kLimit / kPageSize);
    EXPECT_EQ(s.limit_overshoots, 0u);
    std::printf("peak=%lu KiB limit=%lu KiB swap_out=%lu swap_in=%lu throttle_waits=%lu\n",
                s.resident_bytes_peak >> 10, kLimit >> 10, s.swap_out_pages, s.swap_in_pages, s.throttle_waits);
    vm_->stop();
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, LoweringTheLimitAtRunTimeShrinksTheVm) {
    constexpr std::uint64_t kMem = 8ULL << 20, kLow = 2ULL << 20;
    make_vm(kMem);
    const std::uint64_t pages = (6ULL << 20) / kPageSize;
    for (std::uint64_t p = 0; p < pages; ++p) guest_fill(page(p), 2000 + p);
    // Fault-around counts its pages after the guest already uses them.
    ASSERT_TRUE(st::wait_until([&] { return stats().resident_bytes >= pages * kPageSize; }));
    vm_->set_resident_limit(kLow);
    EXPECT_EQ(stats().resident_limit, kLow);
    ASSERT_TRUE(st::wait_until([&] { return stats().resident_bytes <= kLow; }))
        << "VM still holds " << (stats().resident_bytes >> 10) << " KiB over a " << (kLow >> 10) << " KiB limit";
    EXPECT_GT(stats().swap_out_pages, 0u);
    std::uint64_t errors = 0;
    for (std::uint64_t p = 0; p < pages; ++p) errors += guest_sees(page(p), 2000 + p) ? 0 : 1;
    EXPECT_EQ(errors, 0u);
    vm_->stop();
    EXPECT_LE(stats().resident_bytes, kLow + kLow / 10);
    expect_slots_balanced();
}

TEST_F(PrivilegedTransitionsTest, ReclaimerSleepsWhenATinyLimitHasNothingLeftToEvict) {
    make_vm();
    guest_fill(pg(0), 200);
    vm_->set_resident_limit(kPageSize);
    ASSERT_TRUE(st::wait_until([&] { return stats().resident_bytes == 0; }));
    // Nothing is present: there is no work, so no guestmem thread may stay runnable.
    EXPECT_TRUE(st::wait_until(all_other_threads_asleep, 3000ms))
        << "a guestmem thread busy-loops while the VM is below a tiny limit";
    vm_->set_resident_limit(0);
    EXPECT_TRUE(guest_sees(pg(0), 200));
    vm_->stop();
    expect_slots_balanced();
}

