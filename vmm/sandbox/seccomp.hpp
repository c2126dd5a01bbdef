// Least privilege for swapvisor's threads (issue #9, docs/RELIABILITY.md#seccomp).
// Each kind of thread installs, once its setup is done, a seccomp filter (libseccomp)
// that allows only the system calls that kind of work makes; anything else traps.
// The SIGSYS reporter then names the thread class and the system call on stderr and
// ends the process with kExitSeccomp, so a violation is a clear message, never a
// silent kill or a hang.
//
//   class          | installs it           | what it may do beyond the base set
//   ---------------+-----------------------+-----------------------------------------
//   vcpu           | each vCPU thread      | KVM ioctls, signals, guest-memory swap-ins
//   fault_service  | guestmem fault worker | userfaultfd ioctls, poll, epoll, swap-in I/O
//   reclaimer      | guestmem reclaimer    | punch, zap, swap-out I/O
//
// The base set (every class): memory management (mmap, munmap, madvise, brk, ...),
// futex, read/write on fds already open, io_uring, time and sleep, thread exit,
// signal masks and returns, the calls glibc makes on its own (rseq, getrandom), the
// socket calls of swap I/O on an NBD connection that already exists (send, receive,
// shutdown: no socket, connect, bind, listen or accept: new connections and name
// lookups happen on the device's unconfined connector thread, io/README.md#nbd),
// and read-only openat; no file is ever opened for writing, created or truncated.
// Filters are per thread (no TSYNC) and inherited by threads the confined thread
// creates: confine only leaf threads. The control thread and main are not confined:
// they open swap files, accept connections and start VMs (DESIGN-NOTES item 17).
#pragma once

#include <cstdint>

#include "io/result.hpp"

namespace swapvisor::vmm::sandbox {

enum class ThreadClass : std::uint8_t { vcpu, fault_service, reclaimer };
enum class Seccomp : bool { off, on };
const char* to_string(ThreadClass c);

// 128 + SIGSYS: the process exit code after a forbidden system call.
inline constexpr int kExitSeccomp = 159;

// Install the SIGSYS reporter (once per process, before any thread is confined).
Result<void> install_violation_reporter();
// Confine the calling thread to `c`'s system calls.
Result<void> confine_thread(ThreadClass c);

}  // namespace swapvisor::vmm::sandbox
