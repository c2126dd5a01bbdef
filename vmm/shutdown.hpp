// Shutdown: what signals do to a running swapvisor (vmm/README.md#signals).
// SIGTERM, SIGINT and SIGQUIT ask for shutdown. The first asks every registered
// stopper to stop its VM (the vCPUs are kicked
// out of KVM_RUN by Vm::request_stop), and main then runs its normal epilogue:
// --stats-json is written, the control socket removed, and the process exits with
// exit_status(): for `run` 128 + the signal (143 for SIGTERM, 130 for SIGINT), for
// `serve` 0 (a daemon asked to stop has succeeded). The watcher's log line names that
// same status, so the log and the exit agree. A second signal while that runs
// forces the exit: the default action of the signal is restored and it is raised
// again, so a wedged shutdown can always be ended from the keyboard.
// SIGHUP, SIGUSR1 and SIGUSR2 are events: each runs the handlers registered for it
// with on_signal (serve: SIGHUP reloads --config, SIGUSR1 logs a status line), and
// one nobody registered for is logged as ignored. None of them ever ends the process
// silently, which is their default action. SIGPIPE is ignored process-wide
// (ignore_broken_pipes): a write to a pipe or socket whose reader is gone fails
// with EPIPE where it is made (a log line to a closed stderr is dropped), instead
// of killing every VM of the process.
//
// Mechanism: install() blocks these signals in the calling thread, which must be
// main before it starts any thread, so every later thread inherits the mask and no
// thread is ever interrupted by them; one watcher thread reads them from a signalfd
// (no async-signal-safety puzzles: the handlers run on an ordinary thread).
// Thread safety: on_request, on_signal and signal() may be called from any thread;
// handlers run on the watcher thread, under the registry mutex, so a Registration's
// destructor waits for a handler that is running.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <thread>

#include "io/result.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::vmm {

// Called first in main, before any thread: SIGPIPE is ignored, so a write to a
// closed pipe or socket returns EPIPE to its caller (inherited by every thread).
void ignore_broken_pipes();

// The exit status of a process stopped by SIGTERM / SIGINT / SIGQUIT: the signal's (128 + it,
// as a shell reports a killed job: `run`), or success (0: `serve`, vmm/README.md#shutdown).
enum class SignalExit : bool { signal_status, success };

class Shutdown {
public:
    using Stopper = std::function<void(int signal)>;
    using Handler = std::function<void()>;

private:
    // A stopper (event 0) or the handler of one event signal.
    struct Entry {
        int event;
        Stopper stop;
        Handler handle;
    };

public:

    // Keeps a stopper registered while it lives.
    class Registration {
    public:
        Registration(Shutdown& owner, std::list<Entry>::iterator it) : owner_(&owner), it_(it) {}
        Registration(Registration&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)), it_(o.it_) {}
        Registration(const Registration&) = delete;
        Registration& operator=(const Registration&) = delete;
        Registration& operator=(Registration&&) = delete;
        ~Registration();

    private:
        Shutdown* owner_;
        std::list<Entry>::iterator it_;
    };

    static Result<std::unique_ptr<Shutdown>> install(SignalExit on_signal);
    ~Shutdown();
    Shutdown(const Shutdown&) = delete;
    Shutdown& operator=(const Shutdown&) = delete;

    // Run `stop` on the first shutdown signal; at once (on this thread) if it already came.
    [[nodiscard]] Registration on_request(Stopper stop);
    // Run `handle` on the watcher thread each time `sig` (SIGHUP, SIGUSR1 or SIGUSR2)
    // arrives; several may be registered for one signal.
    [[nodiscard]] Registration on_signal(int sig, Handler handle);
    // The signal that asked for shutdown; 0 while none has.
    int signal() const;
    // What main returns once a signal ended the process (signal() != 0): 128 +
    // signal() or 0, as install() was told; the watcher logs this same value.
    int exit_status() const { return exit_status_for(signal()); }

private:
    void handle_event(int sig, std::uint32_t pid);
    Shutdown(io::UniqueFd signal_fd, io::UniqueFd wake_fd, SignalExit on_signal);
    int exit_status_for(int sig) const { return on_signal_ == SignalExit::success ? 0 : 128 + sig; }
    void watch();

    io::UniqueFd signal_fd_;
    io::UniqueFd wake_fd_;  // eventfd: ends the watcher
    const SignalExit on_signal_;
    // Protects: entries_, signal_; Order: leaf (stoppers take VM locks only).
    mutable std::mutex mutex_;
    std::list<Entry> entries_;
    int signal_ = 0;
    std::thread watcher_;  // declared last: started after, joined before, the rest
};

}  // namespace swapvisor::vmm
