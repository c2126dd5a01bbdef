// The fault service (guestmem/fault_service.hpp): which faults wait in the over-limit
// throttle, and the host-wide workers' scheduling on fake VMs (the cap, parked
// faults, detach). The row choice itself (resolve_fault) is covered on the fake
// kernel in transitions_fake_test.cpp; the workers on real VMs at the end (Privileged*).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "guestmem/fault_service.hpp"
#include "guestmem/limits.hpp"
#include "guestmem/host_memory.hpp"
#include "io/block_device.hpp"
#include "io/fault_injection.hpp"
#include "io/ring.hpp"
#include "io/unique_fd.hpp"
#include "swap/swap_pool.hpp"
#include "tests/guestmem/page_pattern.hpp"
#include "tests/guestmem/thread_probe.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;

namespace {

constexpr std::uint64_t kMem = 4ULL << 20, kLimit = 1ULL << 20;

// A VM over its limit and holding it (no reclaimer here, so nothing makes room).
struct OverLimit {
    Occupancy occupancy;
    Limits limits{occupancy, nullptr, kMem, kLimit};
    OverLimit() { limits.pages_added(kLimit / kPageSize + 8); }
};

}  // namespace

TEST(FaultServiceTest, OnlyAFirstTouchOrASwapInAddsAPage) {
    EXPECT_TRUE(fault_adds_page(PageEntry::make(PageState::zero)));
    EXPECT_TRUE(fault_adds_page(PageEntry::make(PageState::swapped, swap::VSlot(7))));
    EXPECT_FALSE(fault_adds_page(PageEntry::make(PageState::lost)));
    EXPECT_FALSE(fault_adds_page(PageEntry::make(PageState::resident)));
    EXPECT_FALSE(fault_adds_page(PageEntry::make(PageState::inactive)));
    EXPECT_FALSE(fault_adds_page(PageEntry::make_writeback(WritebackEpoch(3))));
    EXPECT_FALSE(fault_adds_page(PageEntry::make(PageState::reading, swap::VSlot(7))));
}

// Issue #16 item 9: a touch of a `lost` page waited the full throttle bound (2 s per
// touch) in a VM over its limit, though resolving it adds no page.
TEST(FaultServiceTest, ATouchOfALostPageNeverWaitsInTheThrottle) {
    OverLimit vm;
    ASSERT_TRUE(vm.limits.over_limit());
    ASSERT_EQ(vm.limits.over_reason(), OverReason::none);
    std::atomic<bool> stopping{false};
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(throttle_fault(vm.limits, PageEntry::make(PageState::lost), stopping), Throttle::none);
    EXPECT_EQ(throttle_fault(vm.limits, PageEntry::make(PageState::resident), stopping), Throttle::none);
    EXPECT_LT(std::chrono::steady_clock::now() - start, Limits::kThrottleBound / 2);
    EXPECT_EQ(vm.limits.overshoot_events(), 0u);
}

// A fault that adds a page does wait (until room, the bound, or stop) while the
// limit is held, and runs over, counted, while it cannot be.
TEST(FaultServiceTest, AFaultThatAddsAPageWaitsWhileTheLimitIsHeld) {
    OverLimit vm;
    std::atomic<bool> stopping{false};
    auto waiter = std::async(std::launch::async, [&] {
        return throttle_fault(vm.limits, PageEntry::make(PageState::zero), stopping);
    });
    EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout) << "it did not wait";
    vm.limits.pages_freed(16);  // room: under the limit again
    vm.limits.wake_all();
    ASSERT_EQ(waiter.wait_for(std::chrono::seconds(5)), std::future_status::ready);
    EXPECT_EQ(waiter.get(), Throttle::waited);

    vm.limits.pages_added(16);
    ASSERT_TRUE(vm.limits.cannot_hold(OverReason::no_swap));
    EXPECT_EQ(throttle_fault(vm.limits, PageEntry::make(PageState::swapped, swap::VSlot(1)), stopping),
              Throttle::overshoot);
    EXPECT_EQ(vm.limits.overshoot_events(), 1u);
}

// --- FaultService, with fake clients ------------------------------------------------------
//
// A fake VM's "userfaultfd" is a non-blocking pipe: the test writes uffd_msg records
// into it, a worker reads one at a time, as from a userfaultfd. serve() blocks at a
// gate or parks, as the test says, and counts how many workers are inside at once.

namespace {

using namespace std::chrono_literals;
constexpr auto kBound = 10s;

class FakeVm final : public FaultClient {
public:
    enum class Mode : std::uint8_t { serve, hold, park };
    explicit FakeVm(Mode mode) : mode_(mode) {
        int fds[2];
        EXPECT_EQ(::pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
        read_ = io::UniqueFd(fds[0]);
        write_ = io::UniqueFd(fds[1]);
    }
    // One fault, as the kernel would queue it.
    void fault(std::uint64_t addr) {
        uffd_msg msg{};
        msg.event = UFFD_EVENT_PAGEFAULT;
        msg.arg.pagefault.address = addr;
        ASSERT_EQ(::write(write_.get(), &msg, sizeof msg), static_cast<ssize_t>(sizeof msg));
    }
    int userfault_fd() const override { return read_.get(); }
    Turn serve(const uffd_msg&, MonoTime, io::Ring&) override {
        std::unique_lock lk(mu_);
        ++inside_;
        max_inside_ = std::max(max_inside_, inside_);
        cv_.notify_all();
        if (mode_ == Mode::park) {
            --inside_;
            ++parked_;
            cv_.notify_all();
            return Turn::parked;
        }
        if (mode_ == Mode::hold) cv_.wait_for(lk, kBound, [&] { return released_; });
        --inside_;
        ++served_;
        cv_.notify_all();
        return Turn::served;
    }
    Turn serve_parked(MonoTime, io::Ring&) override {
        std::lock_guard lk(mu_);
        if (parked_ == 0 || !room_) return Turn::parked;
        --parked_;
        ++served_;
        cv_.notify_all();
        return Turn::served;
    }
    bool parked_ready(MonoTime) const override {
        std::lock_guard lk(mu_);
        return parked_ != 0 && room_;
    }
    void release() {
        std::lock_guard lk(mu_);
        released_ = true;
        cv_.notify_all();
    }
    void make_room() {
        std::lock_guard lk(mu_);
        room_ = true;
    }
    bool wait_for(const std::function<bool(const FakeVm&)>& pred) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, kBound, [&] { return pred(*this); });
    }
    unsigned inside() const { return inside_; }
    unsigned max_inside() const { return max_inside_; }
    unsigned served() const { return served_; }
    unsigned parked() const { return parked_; }

private:
    const Mode mode_;
    io::UniqueFd read_, write_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    unsigned inside_ = 0, max_inside_ = 0, served_ = 0, parked_ = 0;
    bool released_ = false, room_ = false;
};

bool ring_available() { return io::Ring::create(4).has_value(); }

// Detaches on every way out of a test (a failed ASSERT returns early): a service
// destroyed with clients attached aborts.
struct Attached {
    FaultService& service;
    FaultClient& client;
    ~Attached() { service.detach(client); }
};

}  // namespace

TEST(FaultServiceTest, AVmHoldsAtMostItsCapOfWorkersAndAnotherVmIsServedMeanwhile) {
    if (!ring_available()) GTEST_SKIP() << "SKIPPED LOUDLY: io_uring unavailable";
    FaultService service(3);
    EXPECT_EQ(service.cap_for(8), 2u) << "workers - 1";
    EXPECT_EQ(service.cap_for(1), 1u);
    FakeVm a(FakeVm::Mode::hold), b(FakeVm::Mode::serve);
    ASSERT_TRUE(service.attach(a, 8).has_value());
    Attached guard_a{service, a};
    ASSERT_TRUE(service.attach(b, 1).has_value());
    Attached guard_b{service, b};
    for (std::uint64_t i = 0; i < 8; ++i) a.fault(i << 12);  // 8 vCPUs of A fault at once
    ASSERT_TRUE(a.wait_for([](const FakeVm& v) { return v.inside() == 2; }));
    for (std::uint64_t i = 0; i < 16; ++i) b.fault(i << 12);
    const bool b_served = b.wait_for([](const FakeVm& v) { return v.served() == 16; });
    EXPECT_TRUE(b_served) << "B starved behind A's held faults";
    EXPECT_EQ(a.max_inside(), 2u) << "A held more workers than its cap";
    a.release();
    ASSERT_TRUE(a.wait_for([](const FakeVm& v) { return v.served() == 8; })) << "A's faults past its cap were lost";
    EXPECT_EQ(a.max_inside(), 2u);
    a.release();  // also on a failed ASSERT above: the guards' detach waits for the workers inside
}

// A VM at its limit: its faults park and hold no worker. With more of them than
// workers, another VM's faults are still served; once there is room, the parked
// faults are served when the service is kicked.
TEST(FaultServiceTest, ParkedFaultsHoldNoWorkerAndGoWhenKicked) {
    if (!ring_available()) GTEST_SKIP() << "SKIPPED LOUDLY: io_uring unavailable";
    FaultService service(2);
    FakeVm a(FakeVm::Mode::park), b(FakeVm::Mode::serve);
    ASSERT_TRUE(service.attach(a, 8).has_value());
    Attached guard_a{service, a};
    ASSERT_TRUE(service.attach(b, 1).has_value());
    Attached guard_b{service, b};
    for (std::uint64_t i = 0; i < 8; ++i) a.fault(i << 12);
    ASSERT_TRUE(a.wait_for([](const FakeVm& v) { return v.parked() == 8; }));
    for (std::uint64_t i = 0; i < 8; ++i) b.fault(i << 12);
    ASSERT_TRUE(b.wait_for([](const FakeVm& v) { return v.served() == 8; }));
    EXPECT_EQ(a.served(), 0u);
    a.make_room();
    service.kick();
    ASSERT_TRUE(a.wait_for([](const FakeVm& v) { return v.served() == 8 && v.parked() == 0; }))
        << "parked faults were not served once there was room";
}

// Detach takes the VM out of the epoll set at once and waits for the worker inside it.
TEST(FaultServiceTest, DetachWaitsForTheWorkerInsideAndTheUffdLeavesTheSet) {
    if (!ring_available()) GTEST_SKIP() << "SKIPPED LOUDLY: io_uring unavailable";
    FaultService service(2);
    FakeVm a(FakeVm::Mode::hold);
    ASSERT_TRUE(service.attach(a, 1).has_value());
    EXPECT_EQ(service.attached(), 1u);
    a.fault(0);
    ASSERT_TRUE(a.wait_for([](const FakeVm& v) { return v.inside() == 1; }));
    auto detached = std::async(std::launch::async, [&] { service.detach(a); });
    EXPECT_EQ(detached.wait_for(200ms), std::future_status::timeout) << "detach did not wait for the worker inside";
    EXPECT_EQ(service.attached(), 0u) << "the uffd is still in the set";
    a.fault(1 << 12);  // not read any more
    a.release();
    ASSERT_EQ(detached.wait_for(kBound), std::future_status::ready);
    std::this_thread::sleep_for(50ms);
    EXPECT_EQ(a.served(), 1u) << "a worker read a detached VM's uffd";
}

// After serving a VM's fault a worker reads that VM's uffd again for a while (the
// poll window): the next fault is picked up without an epoll wake-up. A detach stops
// the poll at once, and a window of 0 turns it off.
TEST(FaultServiceTest, AWorkerPollsTheVmItJustServedAndDetachStopsThePoll) {
    if (!ring_available()) GTEST_SKIP() << "SKIPPED LOUDLY: io_uring unavailable";
    FaultService service(2);
    service.set_poll_window(std::chrono::microseconds(5s));
    FakeVm a(FakeVm::Mode::serve);
    ASSERT_TRUE(service.attach(a, 1).has_value());
    {
        Attached guard{service, a};
        a.fault(0);
        ASSERT_TRUE(a.wait_for([](const FakeVm& v) { return v.served() == 1; }));
        std::this_thread::sleep_for(50ms);  // the worker polls; epoll has nothing
        a.fault(1 << 12);
        ASSERT_TRUE(a.wait_for([](const FakeVm& v) { return v.served() == 2; }));
        EXPECT_EQ(service.polled_faults(), 1u) << "the second fault came through epoll, not the poll";
        // The worker polls again (5 s): detach must not wait for the window.
        std::this_thread::sleep_for(50ms);
        const auto t0 = std::chrono::steady_clock::now();
        service.detach(a);
        EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s) << "detach waited for the poll window";
    }
    a.fault(2 << 12);  // detached: nobody reads it
    std::this_thread::sleep_for(50ms);
    EXPECT_EQ(a.served(), 2u);

    FaultService off(2);
    off.set_poll_window(std::chrono::microseconds(0));
    FakeVm b(FakeVm::Mode::serve);
    ASSERT_TRUE(off.attach(b, 1).has_value());
    Attached guard_b{off, b};
    b.fault(0);
    ASSERT_TRUE(b.wait_for([](const FakeVm& v) { return v.served() == 1; }));
    std::this_thread::sleep_for(20ms);
    b.fault(1 << 12);
    ASSERT_TRUE(b.wait_for([](const FakeVm& v) { return v.served() == 2; }));
    EXPECT_EQ(off.polled_faults(), 0u);
}

TEST(FaultServiceTest, DefaultWorkersAreTwicePerCoreAtLeastFour) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    EXPECT_EQ(FaultService::default_workers(), std::max(4u, 2 * cores));
}

// --- the host-wide fault workers on real VMs ---------------------------------------------

namespace {

namespace st = swapvisor::testing;

using st::threads_named;
using st::verify_pass;
using st::write_pass;

// Every swap-out write waits here until released: a VM at its limit stays there.
class WriteGate {
public:
    void hook() {
        std::unique_lock lk(mu_);
        ++entered_;
        cv_.notify_all();
        cv_.wait_for(lk, 60s, [&] { return released_; });
    }
    bool wait_entered() {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, kBound, [&] { return entered_ > 0; });
    }
    void release() {
        std::lock_guard lk(mu_);
        released_ = true;
        cv_.notify_all();
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    unsigned entered_ = 0;
    bool released_ = false;
};

}  // namespace

class PrivilegedFaultWorkersTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (access("/proc/sys/vm/unprivileged_userfaultfd", F_OK) != 0)
            GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable";
        if (!ring_available()) GTEST_SKIP() << "SKIPPED LOUDLY: io_uring unavailable";
        dir_ = std::filesystem::temp_directory_path() /
               ("swv-fw-" + std::to_string(getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::create_directories(dir_);
    }
    void TearDown() override {
        gate_->release();
        host_.reset();
        if (pool_) {
            EXPECT_EQ(pool_->allocated_vslots(), 0u) << "VM teardown left swap slots allocated";
        }
        pool_.reset();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    void make_host(unsigned fault_workers) {
        pool_ = std::make_unique<swap::SwapPool>();
        auto file = io::FileBlockDevice::open(dir_ / "a.swap", io::OpenMode::create_or_open, 256ULL << 20);
        ASSERT_TRUE(file.has_value()) << file.error().message();
        auto id = pool_->swapon(std::make_unique<io::FaultyBlockDevice>(std::move(*file), plan_), 0);
        ASSERT_TRUE(id.has_value()) << id.error().message();
        host_ = std::make_unique<HostMemory>(*pool_, 0, 3, fault_workers);
    }
    GuestMemory* make_vm(const std::string& name, std::uint64_t mem, std::uint64_t limit, unsigned vcpus = 1) {
        auto vm = host_->create_vm(MemoryConfig{.name = name, .memory_bytes = mem, .resident_limit = limit, .vcpus = vcpus});
        EXPECT_TRUE(vm.has_value()) << vm.error().message();
        if (!vm) return nullptr;
        EXPECT_TRUE((*vm)->start().has_value());
        return *vm;
    }
    // From now on every swap-out write waits at gate_ (until TearDown at the latest).
    void hang_writes() {
        plan_->add(io::FaultRule{.match = io::FaultMatch::write,
                                 .action = io::fault::Gate{[g = gate_](const io::BlockIo&) { g->hook(); }}});
    }
    // A VM at its limit that stays there: its writes hang, so reclaim frees nothing.
    GuestMemory* make_vm_held_at_limit(const std::string& name, unsigned vcpus) {
        constexpr std::uint64_t kMem = 8ULL << 20, kLimit = 1ULL << 20;
        GuestMemory* vm = make_vm(name, kMem, 0, vcpus);
        write_pass(vm->regions()[0].guest_view, 0, kLimit / kPageSize + 64, 9);
        vm->set_resident_limit(kLimit);
        return vm;
    }
    std::filesystem::path dir_;
    std::shared_ptr<io::FaultPlan> plan_ = std::make_shared<io::FaultPlan>();
    std::shared_ptr<WriteGate> gate_ = std::make_shared<WriteGate>();
    std::unique_ptr<swap::SwapPool> pool_;
    std::unique_ptr<HostMemory> host_;
};

// Before the host-wide service each VM started a fault thread per vCPU (16 VMs: 16
// fault threads); now the fault workers are the same threads whatever the number of VMs.
TEST_F(PrivilegedFaultWorkersTest, FaultThreadsDoNotGrowWithTheNumberOfVms) {
    constexpr std::uint64_t kMem = 4ULL << 20, kLimit = 1ULL << 20;
    std::vector<std::size_t> ours;
    for (unsigned n : {1u, 4u, 16u}) {
        make_host(3);
        std::vector<GuestMemory*> vms;
        for (unsigned i = 0; i < n; ++i) vms.push_back(make_vm("vm" + std::to_string(i), kMem, kLimit, 2));
        for (unsigned i = 0; i < n; ++i) write_pass(vms[i]->regions()[0].guest_view, 0, kMem / kPageSize, i + 1);
        for (unsigned i = 0; i < n; ++i) {
            EXPECT_EQ(verify_pass(vms[i]->regions()[0].guest_view, kMem / kPageSize, i + 1), 0u);
            EXPECT_GT(vms[i]->stats().swap_in_pages, 0u) << "vm" << i << " never swapped in";
        }
        EXPECT_EQ(threads_named("swv-fault"), 3u) << n << " VMs";
        EXPECT_EQ(host_->fault_service().attached(), n);
        ours.push_back(threads_named("", true));
        host_.reset();
        EXPECT_EQ(pool_->allocated_vslots(), 0u);
        pool_.reset();
        std::filesystem::remove(dir_ / "a.swap");
    }
    EXPECT_EQ(ours[0], ours[1]);
    EXPECT_EQ(ours[0], ours[2]);
}

// Two VMs held at their limits (their writes hang), 4 guest threads each faulting on
// fresh pages, all throttled: 8 faults that would wait for room, on 3 workers. Their
// faults are parked, not held in the workers, so a third VM's guest thread reading
// back its swapped pages finishes while they stay parked. (A throttle that blocked
// its worker would hold all 3 workers for 2 s at a time: B would crawl.)
TEST_F(PrivilegedFaultWorkersTest, VmsHeldAtTheirLimitDoNotStopAnotherVmsSwapIns) {
    constexpr std::uint64_t kMemB = 4ULL << 20;
    make_host(3);
    GuestMemory* b = make_vm("b", kMemB, 1ULL << 20);
    write_pass(b->regions()[0].guest_view, 0, kMemB / kPageSize, 2);
    ASSERT_TRUE(st::wait_until([&] { return b->stats().resident_bytes <= (1ULL << 20); }, kBound));
    b->set_resident_limit(0);  // B's swap-ins never wait for room
    hang_writes();
    std::vector<GuestMemory*> held{make_vm_held_at_limit("a1", 4), make_vm_held_at_limit("a2", 4)};
    ASSERT_TRUE(gate_->wait_entered()) << "no reclaim write started";
    std::vector<std::future<void>> guests;
    std::atomic<unsigned> done{0};
    for (GuestMemory* a : held)
        for (unsigned t = 0; t < 4; ++t)
            guests.push_back(std::async(std::launch::async, [a, t, &done] {
                // Fresh pages, 64 per thread: each waits for room (up to 2 s).
                write_pass(a->regions()[0].guest_view, 1024 + t * 64, 64, 5);
                ++done;
            }));
    std::this_thread::sleep_for(300ms);  // every one of them parked by now
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(verify_pass(b->regions()[0].guest_view, kMemB / kPageSize, 2), 0u);
    const auto took = std::chrono::steady_clock::now() - start;
    // Unloaded, B's pass takes a few hundred ms; behind faults that block their
    // workers it would wait a throttle bound (2 s) per turn of the workers.
    EXPECT_LT(took, 2 * Limits::kThrottleBound) << "B's swap-ins waited behind the throttled faults";
    EXPECT_EQ(done.load(), 0u) << "the held VMs' guests finished: they were not held at their limit";
    EXPECT_GT(b->stats().swap_in_pages, 0u);
    gate_->release();
    for (auto& g : guests) ASSERT_EQ(g.wait_for(60s), std::future_status::ready);
}

// Stop a VM with faults parked: they are served (the VM stops, they need not wait
// any more), stop returns, no worker is left inside, its uffd leaves the epoll set,
// and another VM still faults.
TEST_F(PrivilegedFaultWorkersTest, StoppingAVmWithParkedFaultsServesThemAndItsUffdLeavesTheSet) {
    make_host(3);
    GuestMemory* other = make_vm("other", 4ULL << 20, 0);
    hang_writes();
    GuestMemory* a = make_vm_held_at_limit("a", 2);
    ASSERT_TRUE(gate_->wait_entered());
    std::vector<std::future<void>> guests;
    for (unsigned t = 0; t < 2; ++t)
        guests.push_back(std::async(std::launch::async, [a, t] { write_pass(a->regions()[0].guest_view, 1024 + t, 1, 6); }));
    std::this_thread::sleep_for(200ms);
    for (auto& g : guests) EXPECT_EQ(g.wait_for(0s), std::future_status::timeout) << "a fault was not held at the limit";
    EXPECT_EQ(host_->fault_service().attached(), 2u);
    auto stopped = std::async(std::launch::async, [a] { a->stop(); });
    // The parked faults go at stop, before the queued writes drain.
    for (auto& g : guests) ASSERT_EQ(g.wait_for(kBound), std::future_status::ready) << "a parked fault hung at stop";
    gate_->release();  // stop() completes the queued writes
    ASSERT_EQ(stopped.wait_for(kBound), std::future_status::ready);
    EXPECT_EQ(host_->fault_service().attached(), 1u) << "the stopped VM's uffd is still in the set";
    write_pass(other->regions()[0].guest_view, 0, 64, 7);
    EXPECT_EQ(verify_pass(other->regions()[0].guest_view, 64, 7), 0u);
    ASSERT_TRUE(host_->remove_vm("a").has_value());
}
