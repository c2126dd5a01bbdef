// seccomp: see seccomp.hpp. The allow-lists name system calls, not numbers, through
// libseccomp, so they read as what each thread does.
#include "vmm/sandbox/seccomp.hpp"

#include <fcntl.h>
#include <seccomp.h>
#include <signal.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <memory>

namespace swapvisor::vmm::sandbox {
namespace {

// The names of the system calls by number, resolved at install time: the SIGSYS
// handler may not allocate, so it only indexes this table.
constexpr int kMaxSyscall = 512;
std::array<const char*, kMaxSyscall> g_names{};
// The class of each confined thread, for the message (set before the filter loads).
thread_local ThreadClass t_class = ThreadClass::vcpu;
thread_local bool t_confined = false;

void write_str(const char* s) { (void)!::write(STDERR_FILENO, s, std::strlen(s)); }

void on_sigsys(int, siginfo_t* si, void*) {
    // Async-signal-safe: write(2) and _exit(2) only, both in every allow-list.
    const int nr = si->si_syscall;
    char num[16];
    int len = 0;
    for (int v = nr < 0 ? 0 : nr; len == 0 || v > 0; v /= 10) num[len++] = static_cast<char>('0' + v % 10);
    char digits[16];
    for (int i = 0; i < len; ++i) digits[i] = num[len - 1 - i];
    digits[len] = '\0';
    write_str("swapvisor: seccomp: the ");
    write_str(t_confined ? to_string(t_class) : "unconfined");
    write_str(" thread made a forbidden system call: ");
    write_str(nr >= 0 && nr < kMaxSyscall && g_names[nr] ? g_names[nr] : "?");
    write_str(" (");
    write_str(digits);
    write_str("); stopping (run with --no-seccomp to debug)\n");
    ::_exit(kExitSeccomp);
}

using Names = std::initializer_list<const char*>;

// Every class: what glibc, spdlog, std::thread teardown and io::Ring need.
constexpr Names kBase = {
    "read", "write", "writev", "readv", "pread64", "pwrite64", "close", "lseek", "fstat", "newfstatat", "statx",
    "mmap", "munmap", "mremap", "mprotect", "madvise", "brk",
    "futex", "futex_waitv", "set_robust_list", "rseq", "membarrier", "sched_yield", "sched_getaffinity",
    "getpid", "gettid", "getuid", "geteuid", "getrandom", "uname",
    "clock_gettime", "clock_getres", "gettimeofday", "clock_nanosleep", "nanosleep",
    "rt_sigprocmask", "rt_sigreturn", "rt_sigaction", "sigaltstack", "tgkill", "tkill",
    "exit", "exit_group", "restart_syscall",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "fallocate", "fdatasync", "fsync", "eventfd2", "poll", "ppoll", "dup", "fcntl",
    // Swap I/O to an NBD device (io/nbd_device.cpp) runs on these threads too, on
    // connections made elsewhere: the device's connector thread (unconfined) resolves
    // names and connects, so no socket, no connect, no bind, no listen, no accept.
    "sendto", "recvfrom", "sendmsg", "recvmsg", "getsockopt", "setsockopt",
    "getsockname", "getpeername", "shutdown", "pipe2",
};
constexpr Names kVcpu = {"ioctl", "rt_sigtimedwait", "rt_sigsuspend", "pause"};
// The host-wide fault workers (guestmem/fault_service.hpp) wait in one epoll set and
// re-arm each VM's userfaultfd (EPOLLONESHOT) after taking a fault from it.
constexpr Names kFaultService = {"ioctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl"};
constexpr Names kReclaimer = {"ioctl"};

Names extras(ThreadClass c) {
    switch (c) {
        case ThreadClass::vcpu: return kVcpu;
        case ThreadClass::fault_service: return kFaultService;
        case ThreadClass::reclaimer: return kReclaimer;
    }
    return {};
}

struct CtxRelease {
    void operator()(scmp_filter_ctx ctx) const { seccomp_release(ctx); }
};

Result<void> allow(scmp_filter_ctx ctx, Names names) {
    for (const char* name : names) {
        const int nr = seccomp_syscall_resolve_name(name);
        if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture / libseccomp
        if (int rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0); rc < 0)
            return errno_error("seccomp_rule_add", -rc, name);
    }
    return {};
}

}  // namespace

const char* to_string(ThreadClass c) {
    switch (c) {
        case ThreadClass::vcpu: return "vcpu";
        case ThreadClass::fault_service: return "fault-service";
        case ThreadClass::reclaimer: return "reclaimer";
    }
    return "?";
}

Result<void> install_violation_reporter() {
    for (int nr = 0; nr < kMaxSyscall; ++nr) {
        // libseccomp returns a malloc'ed name; kept for the life of the process.
        if (char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr)) g_names[nr] = name;
    }
    struct sigaction sa {};
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    // Kernel contract: SECCOMP_RET_TRAP delivers SIGSYS to the offending thread with
    // si_syscall set; the handler runs on that thread.
    if (::sigaction(SIGSYS, &sa, nullptr) < 0) return errno_error("sigaction(SIGSYS)");
    return {};
}

Result<void> confine_thread(ThreadClass c) {
    std::unique_ptr<void, CtxRelease> ctx(seccomp_init(SCMP_ACT_TRAP));
    if (!ctx) return errno_error("seccomp_init", ENOMEM, to_string(c));
    SWV_TRY(allow(ctx.get(), kBase));
    SWV_TRY(allow(ctx.get(), extras(c)));
    // Read-only opens: no write access, no creating, no truncating. NBD no longer
    // needs them here (TLS certificates are read by the connector thread since issue
    // #16); kept until a run on KVM shows nothing else on these threads reads a file.
    const scmp_datum_t kWriting = O_ACCMODE | O_CREAT | O_TRUNC;
    if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, SCMP_SYS(openat), 1,
                                  SCMP_A2(SCMP_CMP_MASKED_EQ, kWriting, 0));
        rc < 0)
        return errno_error("seccomp_rule_add", -rc, "openat (read-only)");
    // SIGSYS must stay deliverable on this thread, or a violation would hang it.
    sigset_t sys;
    sigemptyset(&sys);
    sigaddset(&sys, SIGSYS);
    ::pthread_sigmask(SIG_UNBLOCK, &sys, nullptr);
    t_class = c;
    t_confined = true;
    // Kernel contract: without TSYNC the filter applies to this thread (and threads it
    // creates later) only; NO_NEW_PRIVS is set by libseccomp's default attributes.
    if (int rc = seccomp_load(ctx.get()); rc < 0) {
        t_confined = false;
        return errno_error("seccomp_load", -rc, to_string(c));
    }
    return {};
}

}  // namespace swapvisor::vmm::sandbox
