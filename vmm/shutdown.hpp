// Shutdown: what SIGTERM and SIGINT do to a running swapvisor (vmm/README.md#shutdown).
// The first signal asks every registered stopper to stop its VM (the vCPUs are kicked
// out of KVM_RUN by Vm::request_stop), and main then runs its normal epilogue:
// --stats-json is written, the control socket removed, and the process exits with
// exit_status(): for `run` 128 + the signal (143 for SIGTERM, 130 for SIGINT), for
// `serve` 0 (a daemon asked to stop has succeeded). The watcher's log line names that
// same status, so the log and the exit agree. A second signal while that runs
// forces the exit: the default action of the signal is restored and it is raised
// again, so a wedged shutdown can always be ended from the keyboard.
//
// Mechanism: install() blocks both signals in the calling thread, which must be
// main before it starts any thread, so every later thread inherits the mask and no
// thread is ever interrupted by them; one watcher thread reads them from a signalfd
// (no async-signal-safety puzzles: the stoppers run on an ordinary thread).
// Thread safety: on_request and signal() may be called from any thread; stoppers run
// on the watcher thread, under the registry mutex, so a Registration's destructor
// waits for a stopper that is running.
#pragma once

#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <thread>

#include "io/result.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::vmm {

// The exit status of a process stopped by SIGTERM / SIGINT: the signal's (128 + it,
// as a shell reports a killed job: `run`), or success (0: `serve`, vmm/README.md#shutdown).
enum class SignalExit : bool { signal_status, success };

class Shutdown {
public:
    using Stopper = std::function<void(int signal)>;

    // Keeps a stopper registered while it lives.
    class Registration {
    public:
        Registration(Shutdown& owner, std::list<Stopper>::iterator it) : owner_(&owner), it_(it) {}
        Registration(Registration&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)), it_(o.it_) {}
        Registration(const Registration&) = delete;
        Registration& operator=(const Registration&) = delete;
        Registration& operator=(Registration&&) = delete;
        ~Registration();

    private:
        Shutdown* owner_;
        std::list<Stopper>::iterator it_;
    };

    static Result<std::unique_ptr<Shutdown>> install(SignalExit on_signal);
    ~Shutdown();
    Shutdown(const Shutdown&) = delete;
    Shutdown& operator=(const Shutdown&) = delete;

    // Run `stop` on the first signal; at once (on this thread) if it already came.
    [[nodiscard]] Registration on_request(Stopper stop);
    // The signal that asked for shutdown; 0 while none has.
    int signal() const;
    // What main returns once a signal ended the process (signal() != 0): 128 +
    // signal() or 0, as install() was told; the watcher logs this same value.
    int exit_status() const { return exit_status_for(signal()); }

private:
    Shutdown(io::UniqueFd signal_fd, io::UniqueFd wake_fd, SignalExit on_signal);
    int exit_status_for(int sig) const { return on_signal_ == SignalExit::success ? 0 : 128 + sig; }
    void watch();

    io::UniqueFd signal_fd_;
    io::UniqueFd wake_fd_;  // eventfd: ends the watcher
    const SignalExit on_signal_;
    // Protects: stoppers_, signal_; Order: leaf (stoppers take VM locks only).
    mutable std::mutex mutex_;
    std::list<Stopper> stoppers_;
    int signal_ = 0;
    std::thread watcher_;  // declared last: started after, joined before, the rest
};

}  // namespace swapvisor::vmm
