// Thread confinement (vmm/sandbox/seccomp.hpp): a confined thread keeps doing its
// work (memory, futexes, io_uring, its ioctls), and a system call outside its list
// ends the process with kExitSeccomp and a message naming the class and the call.
// Each case runs in a forked child, since a filter cannot be removed.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <thread>

#include "io/ring.hpp"
#include "vmm/sandbox/seccomp.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm::sandbox;

namespace {

struct Child {
    int status = -1;
    std::string err;
};

// Run body in a child whose stderr is captured; the child exits with body's value.
Child in_child(const std::function<int()>& body) {
    int pipefd[2];
    EXPECT_EQ(::pipe(pipefd), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(pipefd[1], STDERR_FILENO);
        ::close(pipefd[0]);
        ::_exit(body());
    }
    ::close(pipefd[1]);
    Child c;
    char buf[512];
    for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) > 0;) c.err.append(buf, static_cast<std::size_t>(n));
    ::close(pipefd[0]);
    int st = 0;
    ::waitpid(pid, &st, 0);
    c.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return c;
}

}  // namespace

TEST(SeccompTest, AConfinedThreadStillDoesItsWork) {
    Child c = in_child([] {
        if (!install_violation_reporter() || !confine_thread(ThreadClass::fault_service)) return 2;
        std::vector<int> v(1 << 20, 7);  // malloc: mmap / brk
        auto ring = io::Ring::create(8);  // io_uring_setup + mmap
        if (!ring) return 3;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return v[12345] == 7 ? 0 : 4;
    });
    EXPECT_EQ(c.status, 0) << c.err;
}

TEST(SeccompTest, AForbiddenSystemCallEndsTheProcessWithAClearMessage) {
    Child c = in_child([] {
        if (!install_violation_reporter() || !confine_thread(ThreadClass::reclaimer)) return 2;
        // A reclaimer may talk to an NBD server, but never listen for anyone.
        int s = ::socket(AF_INET, SOCK_STREAM, 0);
        (void)::listen(s, 1);
        return 0;
    });
    EXPECT_EQ(c.status, kExitSeccomp) << c.err;
    EXPECT_NE(c.err.find("reclaimer thread made a forbidden system call: listen"), std::string::npos) << c.err;
}

TEST(SeccompTest, FiltersArePerThread) {
    Child c = in_child([] {
        if (!install_violation_reporter()) return 2;
        std::thread([] { (void)confine_thread(ThreadClass::vcpu); }).join();
        // This thread was never confined: opening a file is fine here.
        int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        return fd >= 0 ? 0 : 3;
    });
    EXPECT_EQ(c.status, 0) << c.err;
}

TEST(SeccompTest, AVcpuCannotOpenFilesForWriting) {
    Child c = in_child([] {
        if (!install_violation_reporter() || !confine_thread(ThreadClass::vcpu)) return 2;
        (void)::open("/tmp/swv-seccomp-test", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        return 0;
    });
    EXPECT_EQ(c.status, kExitSeccomp) << c.err;
    EXPECT_NE(c.err.find("vcpu thread made a forbidden system call: openat"), std::string::npos) << c.err;
}
