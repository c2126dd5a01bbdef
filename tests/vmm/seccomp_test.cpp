// Thread confinement (vmm/sandbox/seccomp.hpp): a confined thread keeps doing its
// work (memory, futexes, io_uring, its ioctls), and a system call outside its list
// ends the process with kExitSeccomp and a message naming the class and the call.
// Each case runs in a forked child, since a filter cannot be removed.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <netdb.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <functional>
#include <latch>
#include <string>
#include <thread>

#include "io/nbd_device.hpp"
#include "io/ring.hpp"
#include "tests/io/io_test_util.hpp"
#include "tests/io/nbd_test_util.hpp"
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
        // A reclaimer talks to an NBD server on connections made for it by the
        // device's connector thread: it never opens a socket itself.
        int s = ::socket(AF_INET, SOCK_STREAM, 0);
        (void)::listen(s, 1);
        return 0;
    });
    EXPECT_EQ(c.status, kExitSeccomp) << c.err;
    EXPECT_NE(c.err.find("reclaimer thread made a forbidden system call: socket"), std::string::npos) << c.err;
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

// NBD over TCP under the real filters (issue #16 item 3). The device is opened on the
// unconfined thread, as swapon does; swap I/O then runs on confined threads, which
// must never resolve a name or open a socket: the second connection of the pool and a
// reconnect after a server restart are made elsewhere. The host name has two
// addresses (::1 and 127.0.0.1), the case where glibc's getaddrinfo sorts them with a
// netlink socket and bind(2): the child gets a private /etc/hosts that says so (a
// mount namespace; root only). nbdkit listens on 127.0.0.1 only, so the first
// address (::1) is refused and the second must be tried.
namespace {

constexpr int kSkipped = 77;
constexpr const char* kTwoAddressName = "swv-nbd-two-addrs";

// In the child: `kTwoAddressName` resolves to ::1 and 127.0.0.1 from here on.
bool private_hosts_with_two_addresses(const std::filesystem::path& dir) {
    if (::unshare(CLONE_NEWNS) != 0) return false;
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return false;
    auto hosts = dir / "hosts";
    std::ofstream(hosts) << "127.0.0.1 localhost\n::1 " << kTwoAddressName << "\n127.0.0.1 " << kTwoAddressName << "\n";
    if (::mount(hosts.c_str(), "/etc/hosts", nullptr, MS_BIND, nullptr) != 0) return false;
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* list = nullptr;
    if (::getaddrinfo(kTwoAddressName, "10809", &hints, &list) != 0) return false;
    int n = 0;
    for (addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) ++n;
    ::freeaddrinfo(list);
    return n >= 2;
}

// nbdkit's arguments for a file-backed export (it survives a server restart):
// filters, the plugin, then its and the filters' parameters.
std::vector<std::string> file_export(const std::filesystem::path& disk, std::vector<std::string> filters = {},
                                     const std::vector<std::string>& params = {}) {
    std::vector<std::string> args = std::move(filters);
    args.insert(args.end(), {"file", "file=" + disk.string()});
    args.insert(args.end(), params.begin(), params.end());
    return args;
}

bool make_disk(const std::filesystem::path& disk) {
    std::ofstream(disk).flush();
    std::error_code ec;
    std::filesystem::resize_file(disk, 16 << 20, ec);
    return !ec;
}

// One read of `len` bytes at `off` on the calling (confined) thread's ring: whether
// the bytes are the pattern written with `seed`.
bool read_back(io::NbdDevice& dev, io::Ring& ring, std::uint64_t off, std::uint32_t seed) {
    io::Mapping buf = io::test::aligned_buffer(4096);
    std::span<std::byte> page(static_cast<std::byte*>(buf.data()), 4096);
    io::BlockIo r{io::IoKind::read, io::DevOffset(off), page};
    if (!dev.submit(ring, std::span(&r, 1)) || r.result != 4096) return false;
    return io::test::first_mismatch(page, off, seed) == -1;
}

bool write_pattern(io::NbdDevice& dev, io::Ring& ring, std::uint64_t off, std::uint32_t seed) {
    io::Mapping buf = io::test::aligned_buffer(4096);
    std::span<std::byte> page(static_cast<std::byte*>(buf.data()), 4096);
    io::test::fill_pattern(page, off, seed);
    io::BlockIo w{io::IoKind::write, io::DevOffset(off), page};
    return dev.submit(ring, std::span(&w, 1)) && w.result == 4096 && dev.flush(ring);
}

#define SWV_CHILD_SKIPPED_OR(c)                                                                             \
    if ((c).status == kSkipped)                                                                             \
        GTEST_SKIP() << "*** needs root for a private /etc/hosts (mount namespace): NBD-under-seccomp "     \
                        "test did NOT run ***"

}  // namespace

TEST(SeccompTest, NbdOverTcpOpensASecondConnectionForAConfinedThreadWithATwoAddressHostName) {
    SWV_NBDKIT_OR_SKIP();
    io::test::TempDir dir;
    const int port = io::test::nbd_test_port(1);
    Child c = in_child([&] {
        if (!private_hosts_with_two_addresses(dir.path())) return kSkipped;
        if (!install_violation_reporter()) return 2;
        auto disk = dir.file("disk.img");
        if (!make_disk(disk)) return 3;
        // Every read takes 300 ms: two confined threads reading at once need two
        // connections, and the second is made after both are confined.
        io::test::NbdServer server(dir.file("unused.sock"), file_export(disk, {"--filter=delay"}, {"delay-read=300ms"}),
                                   port);
        if (!server.up()) return 4;
        auto dev = io::NbdDevice::open("nbd://" + std::string(kTwoAddressName) + ":" + std::to_string(port) + "/");
        if (!dev) return 5;
        std::atomic<int> ok{0};
        std::latch both_confined(2);
        auto worker = [&](ThreadClass cls, std::uint64_t off, std::uint32_t seed) {
            auto ring = io::Ring::create(8);
            bool fine = ring && confine_thread(cls) && write_pattern(**dev, *ring, off, seed);
            both_confined.arrive_and_wait();  // then both read at once, 300 ms each
            if (fine && read_back(**dev, *ring, off, seed)) ++ok;
        };
        std::thread a(worker, ThreadClass::fault_service, 0, 1);
        std::thread b(worker, ThreadClass::reclaimer, 1 << 20, 2);
        a.join();
        b.join();
        if (ok.load() != 2) return 6;
        return (*dev)->reconnects() >= 1 ? 0 : 7;  // the second connection was made
    });
    SWV_CHILD_SKIPPED_OR(c);
    EXPECT_EQ(c.status, 0) << c.err;
    EXPECT_EQ(c.err.find("forbidden system call"), std::string::npos) << c.err;
}

TEST(SeccompTest, NbdOverTcpReconnectsForAConfinedThreadAfterTheServerRestarts) {
    SWV_NBDKIT_OR_SKIP();
    io::test::TempDir dir;
    const int port = io::test::nbd_test_port(2);
    Child c = in_child([&] {
        if (!private_hosts_with_two_addresses(dir.path())) return kSkipped;
        if (!install_violation_reporter()) return 2;
        auto disk = dir.file("disk.img");
        if (!make_disk(disk)) return 3;
        auto server = std::make_unique<io::test::NbdServer>(dir.file("unused.sock"), file_export(disk), port);
        if (!server->up()) return 4;
        io::NbdConfig config;
        config.timeout = std::chrono::seconds(2);
        config.read_retry_window = std::chrono::seconds(8);
        auto dev = io::NbdDevice::open("nbd://" + std::string(kTwoAddressName) + ":" + std::to_string(port) + "/", config);
        if (!dev) return 5;
        // The confined thread writes, waits while this (unconfined) thread kills the
        // server and starts it again on the same port, then reads its page back.
        std::atomic<int> phase{0};
        std::atomic<int> result{10};
        std::thread vcpu([&] {
            auto ring = io::Ring::create(8);
            if (!ring || !confine_thread(ThreadClass::vcpu)) return;
            if (!write_pattern(**dev, *ring, 8192, 7)) {
                result = 11;
                phase = 1;
                return;
            }
            phase = 1;
            while (phase.load() != 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
            result = read_back(**dev, *ring, 8192, 7) ? 0 : 12;
        });
        while (phase.load() != 1) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        server->kill_now();
        phase = 2;  // the read starts against a dead server and retries
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        server = std::make_unique<io::test::NbdServer>(dir.file("unused.sock"), file_export(disk), port);
        vcpu.join();
        if (result.load() == 0 && (*dev)->reconnects() < 1) return 13;
        return result.load();
    });
    SWV_CHILD_SKIPPED_OR(c);
    EXPECT_EQ(c.status, 0) << c.err;
    EXPECT_EQ(c.err.find("forbidden system call"), std::string::npos) << c.err;
}
