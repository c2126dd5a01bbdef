// ReclaimService: see reclaim_service.hpp.
#include "guestmem/reclaim_service.hpp"

#include <pthread.h>

#include <algorithm>

#include <spdlog/spdlog.h>

#include "io/ring.hpp"

namespace swapvisor::guestmem {
namespace {

constexpr unsigned kRingEntries = 64;
// At least 3 workers: one VM alone keeps the pipeline it had on its own threads (a
// scan step beside 2 batches, one written while the other is punched: the second
// writer took swap-out from 0.33 to 0.62 of fio, docs/PERFORMANCE.md), and while its
// writes hang one worker is still free for the other VMs (max_writers = workers - 1).
constexpr unsigned kMinWorkers = 3;

}  // namespace

unsigned ReclaimService::default_workers(std::size_t swap_devices) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    const std::size_t by_devices = 2 * std::max<std::size_t>(1, swap_devices);
    return std::max(kMinWorkers, static_cast<unsigned>(std::min<std::size_t>(cores, by_devices)));
}

ReclaimService::ReclaimService(unsigned workers, ThreadStartHook hook)
    : workers_(workers ? workers : default_workers(1)),
      // Kept for reuse: what the workers can have in flight (kStagingKept per
      // worker), not a set per VM.
      staging_(kStagingPages, kStagingKept * workers_),
      hook_(std::move(hook)) {}

ReclaimService::~ReclaimService() {
    {
        std::lock_guard lk(mutex_);
        SWV_ASSERT(clients_.empty(), "a reclaim service destroyed with VMs attached");
        stopping_ = true;
        work_.notify_all();
    }
    for (std::thread& t : threads_) t.join();
}

void ReclaimService::set_thread_start_hook(ThreadStartHook hook) {
    std::lock_guard lk(mutex_);
    SWV_ASSERT(threads_.empty(), "the reclaim workers' start hook set after they started");
    hook_ = std::move(hook);
}

std::size_t ReclaimService::threads() const {
    std::lock_guard lk(mutex_);
    return threads_.size();
}

void ReclaimService::start_threads_locked() {
    if (!threads_.empty()) return;
    for (unsigned i = 0; i < workers_; ++i) {
        threads_.emplace_back([this] { worker_loop(); });
        // Thread names (15 bytes at most) let top -H and perf tell the roles apart.
        ::pthread_setname_np(threads_.back().native_handle(), "swv-reclaim");
    }
}

void ReclaimService::attach(ReclaimClient& client) {
    std::lock_guard lk(mutex_);
    SWV_ASSERT(!client.attached_, "a reclaim client attached twice");
    start_threads_locked();
    client.attached_ = true;
    clients_.push_back(&client);
    enqueue_locked(client);  // a first look: it may be over its limit already
}

void ReclaimService::enqueue_locked(ReclaimClient& client) {
    if (!client.attached_ || client.queued_.exchange(true)) return;
    queue_.push_back(&client);
    work_.notify_one();
}

void ReclaimService::signal(ReclaimClient& client) {
    if (client.queued_.load()) return;  // queued: a worker will take() after this change
    std::lock_guard lk(mutex_);
    enqueue_locked(client);
}

void ReclaimService::detach(ReclaimClient& client) {
    std::unique_lock lk(mutex_);
    if (!client.attached_) return;
    client.attached_ = false;
    std::erase(clients_, &client);
    if (client.queued_.exchange(false)) std::erase(queue_, &client);
    departed_.wait(lk, [&] { return client.active_ == 0; });
}

// Round robin, urgent first: the first client whose faults wait for room, else the
// front of the queue.
ReclaimClient* ReclaimService::pick_locked() {
    if (queue_.empty()) return nullptr;
    auto it = std::find_if(queue_.begin(), queue_.end(), [](const ReclaimClient* c) { return c->urgent(); });
    if (it == queue_.end()) it = queue_.begin();
    ReclaimClient* c = *it;
    queue_.erase(it);
    c->queued_.store(false);
    return c;
}

void ReclaimService::tick_locked(MonoTime now) {
    next_tick_ = now + std::chrono::duration_cast<std::chrono::nanoseconds>(kTick);
    for (ReclaimClient* c : clients_)
        if (!c->queued_.load() && c->due(now)) enqueue_locked(*c);
}

void ReclaimService::worker_loop() {
    auto ring = io::Ring::create(kRingEntries);
    if (!ring) spdlog::critical("reclaim worker cannot create its io_uring: {}", ring.error().message());
    {
        ThreadStartHook hook;
        {
            std::lock_guard lk(mutex_);
            hook = hook_;
        }
        if (hook) hook(ThreadRole::reclaimer);
    }
    std::unique_lock lk(mutex_);
    while (!stopping_) {
        const MonoTime now = mono_now();
        if (now >= next_tick_) tick_locked(now);
        ReclaimClient* c = pick_locked();
        if (c == nullptr) {
            work_.wait_for(lk, next_tick_ - now);
            continue;
        }
        ++c->active_;
        lk.unlock();
        // Without a ring a batch cannot be written: run() completes it as failed (7').
        ReclaimWork work = c->take(max_writers());
        if (work.kind != ReclaimWork::Kind::none) {
            signal(*c);  // its next unit may go to another worker meanwhile
            c->run(work, ring ? &*ring : nullptr);
            signal(*c);  // the step may have left more (or made room)
        }
        lk.lock();
        if (--c->active_ == 0 && !c->attached_) departed_.notify_all();
    }
}

}  // namespace swapvisor::guestmem
