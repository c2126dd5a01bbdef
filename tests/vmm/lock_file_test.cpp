// One daemon per control socket (vmm/daemon/lock_file.hpp).
#include "vmm/daemon/lock_file.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

namespace swapvisor::vmm::daemon {
namespace {

struct Dir {
    std::filesystem::path path =
        std::filesystem::temp_directory_path() / ("swv-lock-" + std::to_string(::getpid()));
    Dir() { std::filesystem::create_directories(path); }
    ~Dir() { std::filesystem::remove_all(path); }
};

TEST(LockFileTest, BesideTheSocket) { EXPECT_EQ(LockFile::path_for("/run/s/control.sock"), "/run/s/control.sock.lock"); }

TEST(LockFileTest, SecondHolderRefusedNamingThePidUntilTheFirstEnds) {
    Dir dir;
    const auto path = LockFile::path_for(dir.path / "c.sock");
    {
        auto first = LockFile::acquire(path);
        ASSERT_TRUE(first) << first.error().message();
        std::ifstream in(path);
        std::string pid;
        in >> pid;
        EXPECT_EQ(pid, std::to_string(::getpid()));
        // flock is per open file: a second acquire, even in this process, is refused.
        auto second = LockFile::acquire(path);
        ASSERT_FALSE(second);
        EXPECT_TRUE(second.error().is(std::errc::resource_unavailable_try_again)) << second.error().message();
        EXPECT_NE(second.error().message().find("pid " + std::to_string(::getpid())), std::string::npos)
            << second.error().message();
        // Another process too.
        pid_t child = ::fork();
        if (child == 0) _exit(LockFile::acquire(path) ? 1 : 0);
        int status = 0;
        ::waitpid(child, &status, 0);
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "a second process took the lock";
    }
    EXPECT_FALSE(std::filesystem::exists(path)) << "the lock file is removed on a clean exit";
    EXPECT_TRUE(LockFile::acquire(path));
}

TEST(LockFileTest, AStaleFileOfADeadOwnerIsTakenOver) {
    Dir dir;
    const auto path = LockFile::path_for(dir.path / "c.sock");
    std::ofstream(path) << "999999\n";  // left by a process that was killed: no flock held
    auto lock = LockFile::acquire(path);
    ASSERT_TRUE(lock) << lock.error().message();
}

}  // namespace
}  // namespace swapvisor::vmm::daemon
