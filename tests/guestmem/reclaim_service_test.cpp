// ReclaimService (guestmem/reclaim_service.hpp): the host-wide reclaim workers.
//
// ReclaimServiceTest: the scheduling itself, on clients that record what the
// workers ran and hold a unit at a gate where a test needs a worker inside one —
// an urgent VM goes before a backlog queued ahead of it, equals take turns, detach
// waits for the worker inside, a VM whose writes hang keeps at most workers - 1.
//
// PrivilegedReclaimServiceTest: the real stack (memfd, userfaultfd, io_uring on an
// O_DIRECT file, FaultyBlockDevice gates): the threads do not grow with the number
// of VMs; a VM over its limit is served while another's write hangs with a backlog
// behind it; a VM removed while a worker writes its batch waits for it and leaves
// no slot behind.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "guestmem/host_memory.hpp"
#include "guestmem/reclaim_service.hpp"
#include "io/block_device.hpp"
#include "io/fault_injection.hpp"
#include "io/ring.hpp"
#include "swap/swap_pool.hpp"
#include "tests/guestmem/page_pattern.hpp"
#include "tests/guestmem/thread_probe.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
using namespace std::chrono_literals;
namespace st = swapvisor::testing;

namespace {

constexpr auto kBound = 10s;

// A gate a worker waits at inside a unit until the test opens it.
class Gate {
public:
    void pass() {
        std::unique_lock lk(mu_);
        ++inside_;
        cv_.notify_all();
        cv_.wait_for(lk, kBound, [&] { return open_; });  // bounded: a failed test never wedges a worker
        --inside_;
    }
    bool wait_inside(unsigned n = 1) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, kBound, [&] { return inside_ >= n; });
    }
    void open() {
        std::lock_guard lk(mu_);
        open_ = true;
        cv_.notify_all();
    }

private:
    // Protects: inside_, open_. Order: leaf.
    std::mutex mu_;
    std::condition_variable cv_;
    unsigned inside_ = 0;
    bool open_ = false;
};

// The log of units the workers ran, in order, by client name.
class Log {
public:
    void add(char who) {
        std::lock_guard lk(mu_);
        order_.push_back(who);
        cv_.notify_all();
    }
    bool wait_size(std::size_t n) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, kBound, [&] { return order_.size() >= n; });
    }
    std::string order() {
        std::lock_guard lk(mu_);
        return order_;
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::string order_;
};

// A VM as the service sees it: `backlog` batches to write, each a unit; honours the
// writers cap the way GuestMemory::Impl does; optionally urgent; the first unit may
// wait at a gate.
class FakeClient final : public ReclaimClient {
public:
    FakeClient(char name, Log& log) : name_(name), log_(log) {}
    void add_backlog(unsigned n) {
        std::lock_guard lk(mu_);
        backlog_ += n;
    }
    void set_urgent(bool u) { urgent_ = u; }
    void gate_units(Gate* gate, unsigned units) {
        std::lock_guard lk(mu_);
        gate_ = gate;
        gated_ = units;
    }
    unsigned most_writers() {
        std::lock_guard lk(mu_);
        return most_writers_;
    }

    bool urgent() const override { return urgent_.load(); }
    bool due(MonoTime) const override { return false; }
    ReclaimWork take(unsigned max_writers) override {
        std::lock_guard lk(mu_);
        ReclaimWork w;
        if (backlog_ == 0 || writers_ >= max_writers) return w;
        --backlog_;
        ++writers_;
        most_writers_ = std::max(most_writers_, writers_);
        w.kind = ReclaimWork::Kind::write;
        return w;
    }
    void run(ReclaimWork&, io::Ring*) override {
        Gate* gate = nullptr;
        {
            std::lock_guard lk(mu_);
            if (gated_ > 0) {
                --gated_;
                gate = gate_;
            }
        }
        if (gate) gate->pass();
        log_.add(name_);
        std::lock_guard lk(mu_);
        --writers_;
    }

private:
    const char name_;
    Log& log_;
    std::atomic<bool> urgent_{false};
    std::mutex mu_;
    unsigned backlog_ = 0;
    unsigned writers_ = 0;
    unsigned most_writers_ = 0;
    Gate* gate_ = nullptr;
    unsigned gated_ = 0;
};

}  // namespace

// One worker is inside A's first batch; A (with more backlog) is queued again ahead
// of B. B's faults now wait for room (urgent): the worker's next unit is B's, not A's.
TEST(ReclaimServiceTest, AnUrgentVmIsServedBeforeABacklogQueuedAheadOfIt) {
    Log log;
    Gate gate;
    FakeClient a('A', log), b('B', log);
    a.add_backlog(8);
    a.gate_units(&gate, 1);
    ReclaimService service(1);
    service.attach(a);
    ASSERT_TRUE(gate.wait_inside()) << "the worker never ran A's first batch";
    service.attach(b);  // queued behind A
    b.add_backlog(1);
    b.set_urgent(true);
    service.signal(b);
    gate.open();
    ASSERT_TRUE(log.wait_size(9));
    EXPECT_EQ(log.order().substr(0, 2), "AB") << "order: " << log.order();
    service.detach(a);
    service.detach(b);
}

// Two VMs with backlogs and neither urgent: one batch each in turn, so neither's
// writeback starves the other's.
TEST(ReclaimServiceTest, VmsThatAreNotUrgentTakeTurnsOneBatchEach) {
    Log log;
    Gate gate;
    FakeClient a('A', log), b('B', log);
    a.add_backlog(4);
    a.gate_units(&gate, 1);
    ReclaimService service(1);
    service.attach(a);
    ASSERT_TRUE(gate.wait_inside());
    b.add_backlog(4);
    service.attach(b);
    gate.open();
    ASSERT_TRUE(log.wait_size(8));
    // A's second batch was queued (as the worker took its first) before B arrived;
    // from then on they alternate until A's backlog is gone.
    EXPECT_EQ(log.order(), "AABABABB");
    service.detach(a);
    service.detach(b);
}

// detach (a VM's stop) returns only once no worker is inside the client: after it the
// VM may be destroyed.
TEST(ReclaimServiceTest, DetachWaitsForTheWorkerInsideTheClient) {
    Log log;
    Gate gate;
    auto a = std::make_unique<FakeClient>('A', log);
    a->add_backlog(1);
    a->gate_units(&gate, 1);
    ReclaimService service(2);
    service.attach(*a);
    ASSERT_TRUE(gate.wait_inside());
    std::atomic<pid_t> tid{0};
    auto detached = std::async(std::launch::async, [&] {
        tid = st::current_tid();
        service.detach(*a);
    });
    ASSERT_TRUE(st::wait_until([&] { return tid.load() != 0; }));
    ASSERT_TRUE(st::wait_until_blocked(tid.load()));
    EXPECT_EQ(detached.wait_for(0s), std::future_status::timeout) << "detach returned with a worker inside";
    gate.open();
    ASSERT_EQ(detached.wait_for(kBound), std::future_status::ready);
    EXPECT_EQ(log.order(), "A");
    a.reset();  // no worker can reach it any more
}

// A's writes hang (its device stalls) and it has more batches than workers: it holds
// at most workers - 1 of them, and B's batches are still written.
TEST(ReclaimServiceTest, AVmWhoseWritesHangHoldsAtMostAllButOneWorker) {
    Log log;
    Gate gate;
    FakeClient a('A', log), b('B', log);
    a.add_backlog(16);
    a.gate_units(&gate, 16);
    ReclaimService service(3);
    ASSERT_EQ(service.max_writers(), 2u);
    service.attach(a);
    ASSERT_TRUE(gate.wait_inside(2));
    b.add_backlog(4);
    service.attach(b);
    ASSERT_TRUE(log.wait_size(4)) << "B was not served while A's writes hung";
    EXPECT_EQ(log.order(), "BBBB");
    EXPECT_EQ(a.most_writers(), 2u);
    gate.open();
    ASSERT_TRUE(log.wait_size(20));
    service.detach(a);
    service.detach(b);
}

TEST(ReclaimServiceTest, DefaultWorkersFollowDevicesUpToTheCores) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    constexpr unsigned kMin = 3;  // a scan beside 2 writes; one left while a VM's writes hang
    EXPECT_EQ(ReclaimService::default_workers(0), std::max(kMin, std::min(cores, 2u)));
    EXPECT_EQ(ReclaimService::default_workers(1), std::max(kMin, std::min(cores, 2u)));
    EXPECT_EQ(ReclaimService::default_workers(64), std::max(kMin, cores));
}

// --- the real stack -------------------------------------------------------------------------

namespace {

using swapvisor::testing::threads_named;
using swapvisor::testing::verify_pass;

void write_pass(std::byte* base, std::uint64_t pages, std::uint64_t pass) {
    swapvisor::testing::write_pass(base, 0, pages, pass);
}
std::size_t all_threads() { return threads_named("", true); }

// A swap-out write held at a FaultPlan gate.
class Hold {
public:
    void hook() {
        std::unique_lock lk(mu_);
        entered_ = true;
        cv_.notify_all();
        cv_.wait_for(lk, kBound, [&] { return released_; });
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
    std::mutex mu_;
    std::condition_variable cv_;
    bool entered_ = false;
    bool released_ = false;
};

}  // namespace

class PrivilegedReclaimServiceTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (access("/proc/sys/vm/unprivileged_userfaultfd", F_OK) != 0)
            GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable";
        if (auto ring = io::Ring::create(4); !ring)
            GTEST_SKIP() << "SKIPPED LOUDLY: io_uring unavailable: " << ring.error().message();
        dir_ = std::filesystem::temp_directory_path() /
               ("swv-rs-" + std::to_string(getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::create_directories(dir_);
    }
    void TearDown() override {
        for (auto& h : holds_) h->release();
        host_.reset();
        if (pool_) {
            EXPECT_EQ(pool_->allocated_vslots(), 0u) << "VM teardown left swap slots allocated";
        }
        pool_.reset();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    // A pool on one O_DIRECT file behind a FaultPlan, and a host with `workers`.
    void make_host(unsigned workers, std::uint64_t swap_bytes = 256ULL << 20) {
        pool_ = std::make_unique<swap::SwapPool>();
        auto file = io::FileBlockDevice::open(dir_ / "a.swap", io::OpenMode::create_or_open, swap_bytes);
        ASSERT_TRUE(file.has_value()) << file.error().message();
        auto id = pool_->swapon(std::make_unique<io::FaultyBlockDevice>(std::move(*file), plan_), 0);
        ASSERT_TRUE(id.has_value()) << id.error().message();
        host_ = std::make_unique<HostMemory>(*pool_, 0, workers);
    }
    GuestMemory* make_vm(const std::string& name, std::uint64_t mem, std::uint64_t limit) {
        auto vm = host_->create_vm(MemoryConfig{.name = name, .memory_bytes = mem, .resident_limit = limit});
        EXPECT_TRUE(vm.has_value()) << vm.error().message();
        if (!vm) return nullptr;
        EXPECT_TRUE((*vm)->start().has_value());
        return *vm;
    }
    // Hold the next swap-out write (whichever VM's it is) at a gate.
    std::shared_ptr<Hold> hold_next_write() {
        auto h = std::make_shared<Hold>();
        plan_->add(io::FaultRule{.match = io::FaultMatch::write,
                                 .times = 1,
                                 .action = io::fault::Gate{[h](const io::BlockIo&) { h->hook(); }}});
        holds_.push_back(h);
        return h;
    }
    std::filesystem::path dir_;
    std::shared_ptr<io::FaultPlan> plan_ = std::make_shared<io::FaultPlan>();
    std::unique_ptr<swap::SwapPool> pool_;
    std::unique_ptr<HostMemory> host_;
    std::vector<std::shared_ptr<Hold>> holds_;
};

// 1, 4 and 16 VMs, each reclaiming: the reclaim workers are the same threads, and so
// are the fault workers (fault_service_test.cpp has the fault side).
TEST_F(PrivilegedReclaimServiceTest, ReclaimThreadsDoNotGrowWithTheNumberOfVms) {
    constexpr std::uint64_t kMem = 4ULL << 20, kLimit = 1ULL << 20;
    std::vector<std::size_t> others;  // every thread of ours
    for (unsigned n : {1u, 4u, 16u}) {
        make_host(2);
        std::vector<GuestMemory*> vms;
        for (unsigned i = 0; i < n; ++i) vms.push_back(make_vm("vm" + std::to_string(i), kMem, kLimit));
        for (unsigned i = 0; i < n; ++i) write_pass(vms[i]->regions()[0].guest_view, kMem / kPageSize, i + 1);
        for (unsigned i = 0; i < n; ++i) {
            EXPECT_GT(vms[i]->stats().swap_out_pages, 0u) << "vm" << i << " was never reclaimed";
            EXPECT_EQ(verify_pass(vms[i]->regions()[0].guest_view, kMem / kPageSize, i + 1), 0u);
        }
        EXPECT_EQ(threads_named("swv-reclaim"), 2u) << n << " VMs";
        EXPECT_EQ(threads_named("swv-writeback"), 0u) << n << " VMs";
        EXPECT_EQ(threads_named("swv-fault"), host_->fault_service().workers()) << n << " VMs";
        // Staging buffers kept for reuse are the workers', whatever the number of VMs.
        EXPECT_LE(host_->reclaim_service().staging().kept(), kStagingKept * 2) << n << " VMs";
        EXPECT_GT(host_->reclaim_service().staging().kept(), 0u) << "the VMs' swap-outs staged in the host's pool";
        others.push_back(all_threads());
        host_.reset();
        EXPECT_EQ(pool_->allocated_vslots(), 0u);
        pool_.reset();
        std::filesystem::remove(dir_ / "a.swap");
    }
    EXPECT_EQ(others[0], others[1]);
    EXPECT_EQ(others[0], others[2]);
}

// A's first write hangs at the gate, with more of A's batches queued behind it (a
// backlog far over its limit). B, over its limit with faults waiting for room, is
// still served: its pages go out, its guest finishes its pass and reads it back.
TEST_F(PrivilegedReclaimServiceTest, AVmOverItsLimitIsServedWhileAnotherHasABacklogOnAHungWrite) {
    constexpr std::uint64_t kMemA = 32ULL << 20, kMemB = 8ULL << 20, kLimitB = 2ULL << 20;
    make_host(2);
    GuestMemory* a = make_vm("a", kMemA, 0);
    write_pass(a->regions()[0].guest_view, kMemA / kPageSize, 1);
    const auto hold = hold_next_write();
    a->set_resident_limit(1ULL << 20);
    ASSERT_TRUE(hold->wait_entered()) << "A never wrote to swap";
    GuestMemory* b = make_vm("b", kMemB, kLimitB);
    auto guest_b = std::async(std::launch::async, [&] {
        write_pass(b->regions()[0].guest_view, kMemB / kPageSize, 2);
        return verify_pass(b->regions()[0].guest_view, kMemB / kPageSize, 2);
    });
    ASSERT_EQ(guest_b.wait_for(30s), std::future_status::ready) << "B's guest never finished while A's write hung";
    EXPECT_EQ(guest_b.get(), 0u);
    const MemStats sb = b->stats();
    EXPECT_GT(sb.swap_out_pages, 0u);
    EXPECT_EQ(sb.limit_state, "held");
    const MemStats sa = a->stats();
    EXPECT_EQ(sa.swap_out_pages, 0u) << "A's write was still held: none of A's pages may have left";
    EXPECT_GT(sa.resident_bytes, 16ULL << 20) << "A's backlog is still there";
    hold->release();
    ASSERT_TRUE(st::wait_until([&] { return a->stats().resident_bytes <= (1ULL << 20); }, 30s));
    EXPECT_EQ(verify_pass(a->regions()[0].guest_view, kMemA / kPageSize, 1), 0u);
}

// remove_vm while a worker is inside A's write: the removal waits for the batch (its
// pages end swapped, none lost), B keeps being served meanwhile, and no slot is left.
TEST_F(PrivilegedReclaimServiceTest, RemovingAVmWhileAWorkerWritesItsBatchWaitsAndLeaksNothing) {
    constexpr std::uint64_t kMem = 16ULL << 20;
    make_host(2);
    GuestMemory* a = make_vm("a", kMem, 0);
    GuestMemory* b = make_vm("b", kMem, 2ULL << 20);
    write_pass(a->regions()[0].guest_view, kMem / kPageSize, 1);
    const auto hold = hold_next_write();
    a->set_resident_limit(1ULL << 20);
    ASSERT_TRUE(hold->wait_entered());
    std::atomic<pid_t> remover{0};
    auto removed = std::async(std::launch::async, [&] {
        remover = st::current_tid();
        return host_->remove_vm("a");
    });
    ASSERT_TRUE(st::wait_until([&] { return remover.load() != 0; }));
    ASSERT_TRUE(st::wait_until_blocked(remover.load()));
    EXPECT_EQ(removed.wait_for(0s), std::future_status::timeout) << "A was destroyed with its batch in a worker";
    // B is not held up by A's hung write or by A's removal.
    write_pass(b->regions()[0].guest_view, kMem / kPageSize, 2);
    EXPECT_EQ(verify_pass(b->regions()[0].guest_view, kMem / kPageSize, 2), 0u);
    EXPECT_GT(b->stats().swap_out_pages, 0u);
    hold->release();
    ASSERT_EQ(removed.wait_for(kBound), std::future_status::ready);
    EXPECT_TRUE(removed.get().has_value());
    EXPECT_EQ(host_->find("a"), nullptr);
    // Only B's references are left.
    ASSERT_TRUE(st::wait_until([&] { return pool_->allocated_vslots() == b->referenced_vslots(); }));
}

// A VM outside any HostMemory runs on a small service of its own (3 workers), the same code.
TEST_F(PrivilegedReclaimServiceTest, AVmWithoutAHostRunsOnItsOwnWorkers) {
    pool_ = std::make_unique<swap::SwapPool>();
    ASSERT_TRUE(pool_->swapon(dir_ / "own.swap", 0, 64ULL << 20).has_value());
    constexpr std::uint64_t kMem = 8ULL << 20;
    const std::size_t before = threads_named("swv-reclaim");
    {
        auto vm = create_guest_memory(MemoryConfig{.name = "own", .memory_bytes = kMem, .resident_limit = 1ULL << 20},
                                      1, nullptr, pool_.get());
        ASSERT_TRUE(vm.has_value()) << vm.error().message();
        ASSERT_TRUE((*vm)->start().has_value());
        write_pass((*vm)->regions()[0].guest_view, kMem / kPageSize, 3);
        EXPECT_EQ(verify_pass((*vm)->regions()[0].guest_view, kMem / kPageSize, 3), 0u);
        EXPECT_GT((*vm)->stats().swap_out_pages, 0u);
        EXPECT_EQ(threads_named("swv-reclaim"), before + 3);
    }
    EXPECT_EQ(threads_named("swv-reclaim"), before);
}
