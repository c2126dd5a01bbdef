// An nbdkit server for tests (tests/io/nbd_device_test.cpp, tests/vmm/seccomp_test.cpp):
// one nbdkit process started with a bounded wait until it accepts connections and
// stopped (SIGTERM, then SIGKILL) on destruction, on a Unix socket or on a TCP port
// (one address, or every address with NbdListen::any). Tests GTEST_SKIP loudly only
// when nbdkit is not installed (SWV_NBDKIT_OR_SKIP).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "io/unique_fd.hpp"

extern char** environ;

namespace swapvisor::io::test {

inline bool nbdkit_installed() { return ::system("nbdkit --version >/dev/null 2>&1") == 0; }

#define SWV_NBDKIT_OR_SKIP()                                                                       \
    do {                                                                                           \
        if (!::swapvisor::io::test::nbdkit_installed())                                            \
            GTEST_SKIP() << "*** nbdkit is NOT installed: NBD device tests did not run "           \
                            "(apt-get install nbdkit; see scripts/install-deps.sh) ***";           \
    } while (0)

// A free-looking TCP port for this process (tests in parallel runs differ by pid).
inline int nbd_test_port(int salt = 0) { return 20000 + static_cast<int>((::getpid() * 7 + salt) % 20000); }

// Where a TCP server listens: 127.0.0.1 only, or every address (0.0.0.0 and ::).
enum class NbdListen : bool { loopback4, any };

// One nbdkit process serving `args` (filters, plugin, plugin params) on socket().
class NbdServer {
public:
    // On a Unix socket (path) or, with tcp_port, on TCP port tcp_port.
    NbdServer(std::filesystem::path socket, std::vector<std::string> args, int tcp_port = 0,
              NbdListen listen = NbdListen::loopback4)
        : socket_(std::move(socket)), port_(tcp_port) {
        using namespace std::chrono_literals;
        std::vector<std::string> argv = {"nbdkit", "--foreground", "--exit-with-parent"};
        if (port_ == 0) {
            argv.insert(argv.end(), {"-U", socket_.string()});
        } else if (listen == NbdListen::loopback4) {
            argv.insert(argv.end(), {"-i", "127.0.0.1", "-p", std::to_string(port_)});
        } else {
            argv.insert(argv.end(), {"-p", std::to_string(port_)});
        }
        argv.insert(argv.end(), args.begin(), args.end());
        std::vector<char*> cargv;
        for (auto& a : argv) cargv.push_back(a.data());
        cargv.push_back(nullptr);
        if (port_ == 0) std::filesystem::remove(socket_);
        if (::posix_spawnp(&pid_, "nbdkit", nullptr, nullptr, cargv.data(), environ) != 0) pid_ = -1;
        for (int i = 0; i < 100 && pid_ > 0 && !listening(); ++i) std::this_thread::sleep_for(50ms);
    }
    // Accepting connections (the socket file appears at bind(), before listen()).
    bool listening() const {
        if (port_ == 0) {
            UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
            sockaddr_un addr{};
            addr.sun_family = AF_UNIX;
            std::strncpy(addr.sun_path, socket_.c_str(), sizeof addr.sun_path - 1);
            return ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
        }
        UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<std::uint16_t>(port_));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    }
    ~NbdServer() { stop(); }
    NbdServer(const NbdServer&) = delete;
    NbdServer& operator=(const NbdServer&) = delete;
    bool up() const { return pid_ > 0 && listening(); }
    std::string uri(std::string_view export_name = "") const {
        return "nbd+unix:///" + std::string(export_name) + "?socket=" + socket_.string();
    }
    void kill_now() { stop(SIGKILL); }
    void stop(int sig = SIGTERM) {
        using namespace std::chrono_literals;
        if (pid_ <= 0) return;
        ::kill(pid_, sig);
        int status = 0;
        for (int i = 0; i < 100; ++i) {
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                return;
            }
            std::this_thread::sleep_for(20ms);
        }
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
    }

private:
    std::filesystem::path socket_;
    int port_ = 0;
    pid_t pid_ = -1;
};

}  // namespace swapvisor::io::test
