// ReclaimService: the host-wide reclaim and writeback workers (guestmem/README.md#threads,
// docs/DESIGN-NOTES.md 47). A fixed number of threads, sized to cores and swap
// devices, each with its own io_uring, serve every VM of a HostMemory; a VM is a
// ReclaimClient, a work item in a run queue, not a set of threads. So the threads
// do not grow with the number of VMs.
//
// A worker pops one client and asks it for one unit of work (ReclaimClient::take):
// one CLOCK scan step of that VM (reclaim_pass over 512 entries, or a verdict), or one
// of its queued writeback batches (write_out + finish_writeback, rows 5 / 7 / 7').
// Before running it, the worker puts the client back at the end of the queue, so
// another worker may take the same VM's next batch meanwhile, and VMs take turns:
//
//   run queue:  [vm3] [vm1*] [vm2] ...      * = urgent
//   pick:       the first urgent client (faults of that VM wait in the over-limit
//               throttle, or it is at its limit and holding it), else the front
//   one unit:   a scan step (one worker per VM at a time) or a batch (at most
//               max_writers() workers per VM at a time, so a VM whose device hangs
//               in write_out holds at most workers - 1 of them)
//
// Nothing a worker runs waits for another worker: a VM whose queue is full, or that
// waits for its writes to drain, simply has no work until a completion signals it.
// Time-driven work (the 50 ms re-check, the back-off while a limit cannot be held,
// the age scan) comes from a tick: every kTick the first idle worker offers each
// attached client whose due time passed.
//
// Lifetimes: attach before the client's first signal; detach (the VM's stop) unlists
// it and waits until no worker is inside it, like put_swap_device, so the VM may be
// destroyed at once after. The threads start on the first attach (so the start hook
// can be set after construction) and end with the service, which must outlive its
// clients.
//
// Threads: signal from any thread (one atomic exchange when already queued);
// attach / detach from the VM's starter / stopper. One mutex.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "guestmem/access_age.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/staging.hpp"
#include "guestmem/transitions.hpp"

namespace swapvisor::io { class Ring; }

namespace swapvisor::guestmem {

// One unit of a VM's reclaim work, handed from take() to run().
struct ReclaimWork {
    enum class Kind : std::uint8_t { none, scan, write } kind = Kind::none;
    std::vector<Writeback> batch;  // Kind::write
};

class ReclaimService;

// What a VM offers the workers (GuestMemory::Impl implements it, reclaimer.cpp).
class ReclaimClient {
public:
    // Faults of this VM wait for room: serve it before VMs that are not at their limit.
    virtual bool urgent() const = 0;
    // Time-driven work has come due at `now` (the tick). Called under the service's
    // mutex: reads atomics and takes leaf locks only (the VM's queue).
    virtual bool due(MonoTime now) const = 0;
    // The next unit of work, or Kind::none. At most `writers` batches of this client
    // may be in the workers' hands at once.
    virtual ReclaimWork take(unsigned writers) = 0;
    // Run what take() returned, on this worker's ring (null: the worker has none, a
    // batch then completes as failed, 7'). Signals nothing itself: the worker offers
    // the client again after it.
    virtual void run(ReclaimWork& work, io::Ring* ring) = 0;

protected:
    ~ReclaimClient() = default;

private:
    friend class ReclaimService;
    // In the run queue. seq_cst: a signaller changes the client's state, then reads
    // this; a worker clears it, then take() reads the state (one of them sees the other).
    std::atomic<bool> queued_{false};
    bool attached_ = false;  // under the service's mutex
    unsigned active_ = 0;    // workers inside take()/run(); under the service's mutex
};

class ReclaimService {
public:
    static constexpr std::chrono::milliseconds kTick{50};
    // min(cores, 2 x swap devices), at least 3 (reclaim_service.cpp kMinWorkers:
    // one VM keeps a scan beside 2 writes; a VM whose writes hang leaves one).
    static unsigned default_workers(std::size_t swap_devices);

    // workers = 0: default_workers(1). hook: called on each worker once its ring exists.
    explicit ReclaimService(unsigned workers, ThreadStartHook hook = {});
    ~ReclaimService();
    ReclaimService(const ReclaimService&) = delete;
    ReclaimService& operator=(const ReclaimService&) = delete;

    // Before the first attach (the threads start then).
    void set_thread_start_hook(ThreadStartHook hook);
    unsigned workers() const { return workers_; }
    // Batches of one VM that may be written at once.
    unsigned max_writers() const { return workers_ > 1 ? workers_ - 1 : 1; }
    // Threads started so far (0 until the first attach).
    std::size_t threads() const;
    // The staging buffers of every client VM's swap-outs (staging.hpp): one pool per
    // service, so the buffers kept for reuse are bounded by the workers, not by the
    // number of VMs (an idle VM keeps none). Copies share the pool.
    StagingPool staging() const { return staging_; }

    void attach(ReclaimClient& client);
    // There may be work for this client now. Cheap when it is already queued; a
    // detached client is ignored.
    void signal(ReclaimClient& client);
    // Unlist the client and wait until no worker is inside it.
    void detach(ReclaimClient& client);

private:
    void worker_loop();
    void start_threads_locked();
    void enqueue_locked(ReclaimClient& client);
    ReclaimClient* pick_locked();
    void tick_locked(MonoTime now);

    const unsigned workers_;
    StagingPool staging_;
    ThreadStartHook hook_;
    // Protects: queue_, clients_, each client's attached_ / active_, next_tick_,
    // stopping_, threads_ (creation). Order: before a VM's reclaim_mutex (due() and
    // take() are not called under it except due, which takes none); never held while
    // a worker runs a unit.
    mutable std::mutex mutex_;
    std::condition_variable work_;      // workers: a client was queued, or stop
    std::condition_variable departed_;  // detach: a worker left a detached client
    std::deque<ReclaimClient*> queue_;
    std::vector<ReclaimClient*> clients_;
    MonoTime next_tick_{0};
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

}  // namespace swapvisor::guestmem
