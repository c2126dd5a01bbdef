// Shutdown: the signalfd watcher thread (shutdown.hpp, vmm/README.md#signals).
#include "vmm/shutdown.hpp"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstring>
#include <exception>

#include <spdlog/spdlog.h>

namespace swapvisor::vmm {

namespace {

bool is_shutdown_signal(int sig) { return sig == SIGTERM || sig == SIGINT || sig == SIGQUIT; }

// What a signal nobody registered for would have done had it not been caught here.
const char* unhandled_meaning(int sig) {
    switch (sig) {
        case SIGHUP: return "there is no --config file to reload";
        case SIGUSR1: return "no status to report";
        default: return "it has no meaning for swapvisor";
    }
}

sigset_t watched_signals() {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : {SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2}) sigaddset(&set, sig);
    return set;
}

}  // namespace

void ignore_broken_pipes() {
    // Kernel contract: with SIGPIPE ignored, write/send to a pipe or stream socket
    // whose reading end is closed fails with EPIPE instead of raising the signal; the
    // disposition is per process and survives in every thread created later.
    ::signal(SIGPIPE, SIG_IGN);
}

Shutdown::Registration::~Registration() {
    if (owner_ == nullptr) return;
    std::lock_guard lock(owner_->mutex_);
    owner_->entries_.erase(it_);
}

Result<std::unique_ptr<Shutdown>> Shutdown::install(SignalExit on_signal) {
    ignore_broken_pipes();
    sigset_t set = watched_signals();
    // Kernel contract: a blocked signal stays pending until a signalfd read takes
    // it; the mask is per thread and inherited by threads created later, which is
    // why this runs in main before any other thread exists.
    if (int err = ::pthread_sigmask(SIG_BLOCK, &set, nullptr); err != 0) return errno_error("pthread_sigmask", err);
    // Kernel contract: signalfd reports the signals of `set` that are pending for
    // the process or the reading thread, one signalfd_siginfo per read.
    io::UniqueFd sfd(::signalfd(-1, &set, SFD_CLOEXEC));
    if (!sfd.valid()) return errno_error("signalfd");
    // Kernel contract: an eventfd becomes readable once written.
    io::UniqueFd wake(::eventfd(0, EFD_CLOEXEC));
    if (!wake.valid()) return errno_error("eventfd");
    std::unique_ptr<Shutdown> s(new Shutdown(std::move(sfd), std::move(wake), on_signal));
    s->watcher_ = std::thread([p = s.get()] { p->watch(); });
    return s;
}

Shutdown::Shutdown(io::UniqueFd signal_fd, io::UniqueFd wake_fd, SignalExit on_signal)
    : signal_fd_(std::move(signal_fd)), wake_fd_(std::move(wake_fd)), on_signal_(on_signal) {}

Shutdown::~Shutdown() {
    std::uint64_t one = 1;
    // Kernel contract: an 8-byte write adds to the eventfd counter and wakes poll.
    (void)::write(wake_fd_.get(), &one, sizeof one);
    if (watcher_.joinable()) watcher_.join();
}

Shutdown::Registration Shutdown::on_request(Stopper stop) {
    std::lock_guard lock(mutex_);
    if (signal_ != 0) stop(signal_);
    entries_.push_back(Entry{0, std::move(stop), nullptr});
    return Registration(*this, std::prev(entries_.end()));
}

Shutdown::Registration Shutdown::on_signal(int sig, Handler handle) {
    SWV_ASSERT(sig == SIGHUP || sig == SIGUSR1 || sig == SIGUSR2, "on_signal: not an event signal");
    std::lock_guard lock(mutex_);
    entries_.push_back(Entry{sig, nullptr, std::move(handle)});
    return Registration(*this, std::prev(entries_.end()));
}

// Called with mutex_ held (a Registration cannot end while its handler runs).
void Shutdown::handle_event(int sig, std::uint32_t pid) {
    bool handled = false;
    for (Entry& e : entries_) {
        if (e.event != sig) continue;
        if (!handled) spdlog::info("SIG{} from pid {}", sigabbrev_np(sig), pid);
        handled = true;
        // A handler's failure (a config file that cannot be read, bad_alloc) is
        // logged; it never ends the watcher, so later signals are still handled.
        try {
            e.handle();
        } catch (const std::exception& ex) {
            spdlog::error("SIG{}: {}", sigabbrev_np(sig), ex.what());
        }
    }
    if (!handled) spdlog::info("SIG{} from pid {} ignored: {}", sigabbrev_np(sig), pid, unhandled_meaning(sig));
}

int Shutdown::signal() const {
    std::lock_guard lock(mutex_);
    return signal_;
}

void Shutdown::watch() {
    for (;;) {
        pollfd fds[2] = {{signal_fd_.get(), POLLIN, 0}, {wake_fd_.get(), POLLIN, 0}};
        // Kernel contract: poll waits until one fd is readable; EINTR cannot happen
        // for the blocked signals but may for others (the vCPU kick), so it is retried.
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            spdlog::error("shutdown watcher: poll: {}", std::strerror(errno));
            return;
        }
        if (fds[1].revents != 0) return;
        signalfd_siginfo info{};
        // Kernel contract: a read of a readable signalfd returns whole records.
        if (::read(signal_fd_.get(), &info, sizeof info) != static_cast<ssize_t>(sizeof info)) continue;
        const int sig = static_cast<int>(info.ssi_signo);
        std::lock_guard lock(mutex_);
        if (!is_shutdown_signal(sig)) {
            handle_event(sig, info.ssi_pid);
            continue;
        }
        if (signal_ != 0) {
            spdlog::warn("second SIG{}: exiting at once, without cleanup", sigabbrev_np(sig));
            // Kernel contract: with the default action restored and the signal
            // unblocked in this thread, raising it terminates the whole process.
            ::signal(sig, SIG_DFL);
            sigset_t set;
            sigemptyset(&set);
            sigaddset(&set, sig);
            ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
            ::raise(sig);
            return;
        }
        signal_ = sig;
        // The status main will return (exit_status()), not a guess: `serve` exits 0.
        spdlog::warn("SIG{} from pid {}: stopping every VM, then exiting with {} (send it again to exit at once)",
                     sigabbrev_np(sig), info.ssi_pid, exit_status_for(sig));
        for (Entry& e : entries_)
            if (e.event == 0) e.stop(sig);
    }
}

}  // namespace swapvisor::vmm
