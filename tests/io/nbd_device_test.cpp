// NbdDevice against a real NBD server: nbdkit (memory or file plugin) on a Unix socket
// in a temp directory, started per test with a bounded wait for its socket and stopped
// (SIGTERM, then SIGKILL) by the fixture (tests/io/nbd_test_util.hpp). Faults come from nbdkit's own filters:
// `error` (EIO while a trigger file exists), `delay` (a reply slower than the device
// timeout), `blocksize-policy` (server block size constraints), and from killing the
// server. Tests GTEST_SKIP loudly only when nbdkit is not installed.
#include "io/nbd_device.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>

#include "tests/io/io_test_util.hpp"
#include "tests/io/nbd_test_util.hpp"

namespace swapvisor::io {
namespace {

using namespace std::chrono_literals;
using test::NbdServer;
using test::TempDir;

class NbdDeviceTest : public ::testing::Test {
protected:
    TempDir dir;
    std::filesystem::path sock = dir.file("nbd.sock");
};

TEST(NbdUri, NormalisedForms) {
    EXPECT_TRUE(is_nbd_uri("nbd://host/x"));
    EXPECT_TRUE(is_nbd_uri("NBD+UNIX:///?socket=/s"));
    EXPECT_FALSE(is_nbd_uri("/var/tmp/a.swap"));
    EXPECT_FALSE(is_nbd_uri("http://host/x"));
    EXPECT_EQ(normalise_nbd_uri("NBD://Mem.Example:10809").value(), "nbd://mem.example/");
    EXPECT_EQ(normalise_nbd_uri("nbd://10.0.0.1:10810/swap").value(), "nbd://10.0.0.1:10810/swap");
    EXPECT_EQ(normalise_nbd_uri("nbd://[::1]:10809/e").value(), "nbd://[::1]/e");
    EXPECT_EQ(normalise_nbd_uri("nbd+unix:///e?socket=/run/x/../nbd.sock").value(), "nbd+unix:///e?socket=/run/nbd.sock");
    EXPECT_EQ(normalise_nbd_uri("nbd+unix://?tls=off&socket=/s").value(), "nbd+unix:///?socket=/s&tls=off");
    auto rel = normalise_nbd_uri("nbd+unix:///?socket=rel.sock").value();
    EXPECT_EQ(rel, "nbd+unix:///?socket=" + (std::filesystem::current_path() / "rel.sock").string());
    for (const char* bad : {"nbd+unix:///e", "nbd+unix://host/e?socket=/s", "nbd:///e", "nbd://h:0/e", "nbd://h:x/e",
                            "nbd://h/e?socket=/s", "nbd+unix:///?socket="}) {
        auto r = normalise_nbd_uri(bad);
        ASSERT_FALSE(r.has_value()) << bad;
        EXPECT_TRUE(r.error().is(std::errc::invalid_argument)) << bad;
    }
}

TEST_F(NbdDeviceTest, OpenReportsSizeAndRoundTripsManyOpsInFlight) {
    SWV_NBDKIT_OR_SKIP();
    SWV_RING_OR_SKIP(ring, 64);
    NbdServer server(sock, {"memory", "size=64M"});
    ASSERT_TRUE(server.up());
    auto dev = NbdDevice::open(server.uri()).value();
    EXPECT_EQ(dev->size_bytes(), 64u << 20);
    EXPECT_EQ(dev->path(), server.uri());
    EXPECT_EQ(dev->logical_block_size(), 512u);
    EXPECT_FALSE(dev->identity().has_value());

    // 16 writes of 4 KiB scattered over the device plus one 1 MiB run, one batch.
    Mapping buf = test::aligned_buffer(2 << 20);
    std::span<std::byte> all(static_cast<std::byte*>(buf.data()), 2 << 20);
    std::vector<BlockIo> ios;
    for (int i = 0; i < 16; ++i) {
        std::uint64_t off = std::uint64_t(i) * 3 * 1024 * 1024 + 8192;
        auto piece = all.subspan(i * 4096, 4096);
        test::fill_pattern(piece, off, 1);
        ios.push_back({IoKind::write, DevOffset(off), piece});
    }
    auto run = all.subspan(1 << 20, 1 << 20);
    test::fill_pattern(run, 50 << 20, 1);
    ios.push_back({IoKind::write, DevOffset(50 << 20), run});
    ASSERT_TRUE(dev->submit(ring, ios).has_value());
    for (auto& io : ios) EXPECT_EQ(io.result, static_cast<int>(io.buf.size()));
    ASSERT_TRUE(dev->flush(ring).has_value());

    std::memset(buf.data(), 0, 2 << 20);
    for (auto& io : ios) io.kind = IoKind::read;
    ASSERT_TRUE(dev->submit(ring, ios).has_value());
    for (auto& io : ios) {
        ASSERT_EQ(io.result, static_cast<int>(io.buf.size()));
        EXPECT_EQ(test::first_mismatch(io.buf, io.offset.value(), 1), -1) << "offset " << io.offset.value();
    }
}

TEST_F(NbdDeviceTest, HonoursServerBlockSizeAndSplitsOversizedRuns) {
    SWV_NBDKIT_OR_SKIP();
    SWV_RING_OR_SKIP(ring, 8);
    NbdServer server(sock, {"--filter=blocksize-policy", "memory", "size=16M", "blocksize-minimum=4096",
                            "blocksize-preferred=4096", "blocksize-maximum=65536", "blocksize-error-policy=error"});
    ASSERT_TRUE(server.up());
    auto dev = NbdDevice::open(server.uri()).value();
    EXPECT_EQ(dev->logical_block_size(), 4096u);

    // Not a multiple of the server's 4 KiB minimum: refused before anything is sent.
    Mapping buf = test::aligned_buffer(1 << 20);
    std::span<std::byte> all(static_cast<std::byte*>(buf.data()), 1 << 20);
    BlockIo small{IoKind::write, DevOffset(512), all.subspan(0, 512)};
    auto refused = dev->submit(ring, std::span(&small, 1));
    ASSERT_FALSE(refused.has_value());
    EXPECT_EQ(refused.error().code, make_error_code(Errc::misaligned));

    // 1 MiB against a 64 KiB server maximum: split into 16 requests, one result.
    test::fill_pattern(all, 4 << 20, 7);
    BlockIo w{IoKind::write, DevOffset(4 << 20), all};
    ASSERT_TRUE(dev->submit(ring, std::span(&w, 1)).has_value());
    ASSERT_EQ(w.result, 1 << 20);
    std::memset(buf.data(), 0, 1 << 20);
    BlockIo r{IoKind::read, DevOffset(4 << 20), all};
    ASSERT_TRUE(dev->submit(ring, std::span(&r, 1)).has_value());
    ASSERT_EQ(r.result, 1 << 20);
    EXPECT_EQ(test::first_mismatch(all, 4 << 20, 7), -1);
}

TEST_F(NbdDeviceTest, ServerErrorsArePerOpAndTheConnectionStaysUsable) {
    SWV_NBDKIT_OR_SKIP();
    SWV_RING_OR_SKIP(ring, 8);
    auto trigger = dir.file("fail-now");
    NbdServer server(sock, {"--filter=error", "memory", "size=16M", "error=EIO", "error-pread-rate=100%",
                            "error-file=" + trigger.string()});
    ASSERT_TRUE(server.up());
    auto dev = NbdDevice::open(server.uri()).value();
    Mapping buf = test::aligned_buffer(8192);
    std::span<std::byte> all(static_cast<std::byte*>(buf.data()), 8192);
    test::fill_pattern(all, 0, 3);
    BlockIo w{IoKind::write, DevOffset(0), all};
    ASSERT_TRUE(dev->submit(ring, std::span(&w, 1)).has_value());
    ASSERT_EQ(w.result, 8192);

    std::ofstream(trigger).put('x');
    BlockIo ios[2] = {{IoKind::read, DevOffset(0), all.subspan(0, 4096)},
                      {IoKind::write, DevOffset(4096), all.subspan(4096, 4096)}};
    ASSERT_TRUE(dev->submit(ring, ios).has_value());
    EXPECT_EQ(ios[0].result, -EIO);  // the read failed on the server
    EXPECT_EQ(ios[1].result, 4096);  // the write in the same batch did not

    std::filesystem::remove(trigger);
    std::memset(buf.data(), 0, 8192);
    BlockIo r{IoKind::read, DevOffset(0), all};
    ASSERT_TRUE(dev->submit(ring, std::span(&r, 1)).has_value());
    ASSERT_EQ(r.result, 8192);
    EXPECT_EQ(test::first_mismatch(all, 0, 3), -1);
    EXPECT_EQ(dev->reconnects(), 0u);  // an error reply is not a broken connection
    EXPECT_EQ(dev->read_retries(), 0u);  // and the server's answer stands: no retry
}

TEST_F(NbdDeviceTest, SilentServerTimesOutWithinTheDeadlineThenReconnects) {
    SWV_NBDKIT_OR_SKIP();
    SWV_RING_OR_SKIP(ring, 8);
    NbdServer server(sock, {"--filter=delay", "memory", "size=16M", "delay-read=4"});
    ASSERT_TRUE(server.up());
    NbdConfig config;
    config.timeout = 400ms;
    config.read_retry_window = 0ms;  // one try: this is about the deadline of one batch
    auto dev = NbdDevice::open(server.uri(), config).value();
    Mapping buf = test::aligned_buffer(4096);
    std::span<std::byte> page(static_cast<std::byte*>(buf.data()), 4096);

    auto t0 = std::chrono::steady_clock::now();
    BlockIo r{IoKind::read, DevOffset(0), page};
    ASSERT_TRUE(dev->submit(ring, std::span(&r, 1)).has_value());
    auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(r.result, -ETIMEDOUT);
    EXPECT_GE(waited, 390ms);
    EXPECT_LT(waited, 1500ms);

    // The late connection was dropped; writes (not delayed) go through a new one.
    test::fill_pattern(page, 8192, 5);
    BlockIo w{IoKind::write, DevOffset(8192), page};
    ASSERT_TRUE(dev->submit(ring, std::span(&w, 1)).has_value());
    EXPECT_EQ(w.result, 4096);
    EXPECT_EQ(dev->reconnects(), 1u);
}

TEST_F(NbdDeviceTest, KilledServerFailsOpsFastBacksOffAndReconnectsToANewOne) {
    SWV_NBDKIT_OR_SKIP();
    SWV_RING_OR_SKIP(ring, 8);
    auto server = std::make_unique<NbdServer>(sock, std::vector<std::string>{"memory", "size=16M"});
    ASSERT_TRUE(server->up());
    NbdConfig config;
    config.timeout = 2s;
    config.min_backoff = 300ms;
    config.read_retry_window = 0ms;  // reads fail like writes: no retry (see the Retry tests)
    auto dev = NbdDevice::open(server->uri(), config).value();
    Mapping buf = test::aligned_buffer(4096);
    std::span<std::byte> page(static_cast<std::byte*>(buf.data()), 4096);
    test::fill_pattern(page, 0, 9);
    BlockIo w{IoKind::write, DevOffset(0), page};
    ASSERT_TRUE(dev->submit(ring, std::span(&w, 1)).has_value());
    ASSERT_EQ(w.result, 4096);

    server->kill_now();
    auto t0 = std::chrono::steady_clock::now();
    BlockIo r{IoKind::read, DevOffset(0), page};
    ASSERT_TRUE(dev->submit(ring, std::span(&r, 1)).has_value());
    EXPECT_EQ(r.result, -EIO);  // connection gone: no data, not stale data
    // Reconnect fails (nobody listens) and arms the backoff; the next submit inside
    // it fails at once without touching the network.
    ASSERT_TRUE(dev->submit(ring, std::span(&r, 1)).has_value());
    EXPECT_EQ(r.result, -EIO);
    ASSERT_TRUE(dev->submit(ring, std::span(&r, 1)).has_value());
    EXPECT_EQ(r.result, -EIO);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);

    server = std::make_unique<NbdServer>(sock, std::vector<std::string>{"memory", "size=16M"});
    ASSERT_TRUE(server->up());
    std::this_thread::sleep_for(700ms);  // past the (doubled) backoff
    ASSERT_TRUE(dev->submit(ring, std::span(&w, 1)).has_value());
    EXPECT_EQ(w.result, 4096);
    EXPECT_EQ(dev->reconnects(), 1u);
}

// Issue #16 item 5: a read whose connection broke is not a lost page while the bytes
// are intact on the server. The file plugin keeps them across a server restart.
TEST_F(NbdDeviceTest, RetryAReadAcrossAServerRestartAndGetThePageBackIntact) {
    SWV_NBDKIT_OR_SKIP();
    SWV_RING_OR_SKIP(ring, 8);
    auto disk = dir.file("disk.img");
    { std::ofstream(disk).flush(); }
    std::filesystem::resize_file(disk, 16 << 20);
    const std::vector<std::string> args = {"file", "file=" + disk.string()};
    auto server = std::make_unique<NbdServer>(sock, args);
    ASSERT_TRUE(server->up());
    NbdConfig config;
    config.timeout = 2s;
    config.min_backoff = 100ms;
    config.read_retry_window = 5s;
    auto dev = NbdDevice::open(server->uri(), config).value();
    Mapping buf = test::aligned_buffer(8192);
    std::span<std::byte> pages(static_cast<std::byte*>(buf.data()), 8192);
    test::fill_pattern(pages, 40960, 21);
    BlockIo w{IoKind::write, DevOffset(40960), pages};
    ASSERT_TRUE(dev->submit(ring, std::span(&w, 1)).has_value());
    ASSERT_EQ(w.result, 8192);
    ASSERT_TRUE(dev->flush(ring).has_value());

    // The server dies with the connection idle in the pool, and comes back on the same
    // socket 600 ms later, while the read is being retried. (The servers are started
    // from this thread: --exit-with-parent follows the thread that spawned them.)
    server->kill_now();
    std::memset(buf.data(), 0, 8192);
    BlockIo r{IoKind::read, DevOffset(40960), pages};
    std::chrono::steady_clock::duration waited{};
    std::thread reader([&] {
        auto own = Ring::create(8);
        if (!own) return;
        auto t0 = std::chrono::steady_clock::now();
        if (!dev->submit(*own, std::span(&r, 1))) r.result = -EINVAL;
        waited = std::chrono::steady_clock::now() - t0;
    });
    std::this_thread::sleep_for(600ms);
    server = std::make_unique<NbdServer>(sock, args);
    reader.join();
    ASSERT_TRUE(server->up());
    EXPECT_EQ(r.result, 8192) << "the page was lost although the server has it";
    EXPECT_EQ(test::first_mismatch(pages, 40960, 21), -1);
    EXPECT_GE(dev->read_retries(), 1u);
    EXPECT_GE(dev->reconnects(), 1u);
    EXPECT_LT(waited, 5s);
}

// A connection that breaks under a batch (the server killed while the read waits
// for its reply): the read is retried on a new connection to the restarted server.
TEST_F(NbdDeviceTest, RetryAReadWhoseConnectionBrokeInFlight) {
    SWV_NBDKIT_OR_SKIP();
    SWV_RING_OR_SKIP(ring, 8);
    auto disk = dir.file("disk.img");
    { std::ofstream(disk).flush(); }
    std::filesystem::resize_file(disk, 16 << 20);
    const std::vector<std::string> slow = {"--filter=delay", "file", "file=" + disk.string(), "delay-read=3"};
    const std::vector<std::string> fast = {"file", "file=" + disk.string()};
    auto server = std::make_unique<NbdServer>(sock, fast);
    ASSERT_TRUE(server->up());
    NbdConfig config;
    config.timeout = 2s;
    config.read_retry_window = 6s;
    auto dev = NbdDevice::open(server->uri(), config).value();
    Mapping buf = test::aligned_buffer(4096);
    std::span<std::byte> page(static_cast<std::byte*>(buf.data()), 4096);
    test::fill_pattern(page, 4096, 22);
    BlockIo w{IoKind::write, DevOffset(4096), page};
    ASSERT_TRUE(dev->submit(ring, std::span(&w, 1)).has_value());
    ASSERT_EQ(w.result, 4096);
    ASSERT_TRUE(dev->flush(ring).has_value());
    server.reset();  // stopped (SIGTERM) before the slow one takes the socket
    server = std::make_unique<NbdServer>(sock, slow);
    ASSERT_TRUE(server->up());

    std::memset(buf.data(), 0, 4096);
    BlockIo r{IoKind::read, DevOffset(4096), page};
    std::thread reader([&] {
        auto own = Ring::create(8);
        if (!own || !dev->submit(*own, std::span(&r, 1))) r.result = -EINVAL;
    });
    std::this_thread::sleep_for(500ms);  // the read is in flight, its reply 3 s away
    server->kill_now();
    server = std::make_unique<NbdServer>(sock, fast);
    reader.join();
    EXPECT_EQ(r.result, 4096);
    EXPECT_EQ(test::first_mismatch(page, 4096, 22), -1);
    EXPECT_GE(dev->read_retries(), 1u);
}

// The backoff does not fail a read while a connection exists: a read that finds the
// only connection busy and the server refusing a second one waits for the first.
TEST_F(NbdDeviceTest, ReadsDuringTheBackoffGoToABusyConnectionInsteadOfFailing) {
    SWV_NBDKIT_OR_SKIP();
    SWV_RING_OR_SKIP(ring, 8);
    // limit=1: a second client is refused (the connect fails, the backoff is armed);
    // every read takes 700 ms, so the first connection is busy when the second is asked.
    NbdServer server(sock, {"--filter=limit", "--filter=delay", "memory", "size=16M", "limit=1", "delay-read=700ms"});
    ASSERT_TRUE(server.up());
    NbdConfig config;
    config.timeout = 3s;
    config.min_backoff = 2s;
    config.read_retry_window = 0ms;  // no retries: only the checkout's wait is tested
    auto dev = NbdDevice::open(server.uri(), config).value();
    std::atomic<int> first_result{0};
    std::thread first([&] {
        auto own = Ring::create(8);
        if (!own) return;
        Mapping b = test::aligned_buffer(4096);
        BlockIo r{IoKind::read, DevOffset(0), std::span(static_cast<std::byte*>(b.data()), 4096)};
        if (dev->submit(*own, std::span(&r, 1))) first_result = r.result;
    });
    std::this_thread::sleep_for(200ms);  // the first read holds the only connection
    Mapping buf = test::aligned_buffer(4096);
    BlockIo r{IoKind::read, DevOffset(4096), std::span(static_cast<std::byte*>(buf.data()), 4096)};
    ASSERT_TRUE(dev->submit(ring, std::span(&r, 1)).has_value());
    first.join();
    EXPECT_EQ(first_result.load(), 4096);
    EXPECT_EQ(r.result, 4096) << "failed in the backoff although a connection was only busy";
}

// A server gone for longer than the retry window: the read fails (the page is lost,
// with a clear errno), after the window and not much later, never a hang.
TEST_F(NbdDeviceTest, AReadWhoseServerStaysGoneFailsWhenTheRetryWindowCloses) {
    SWV_NBDKIT_OR_SKIP();
    SWV_RING_OR_SKIP(ring, 8);
    NbdServer server(sock, {"memory", "size=16M"});
    ASSERT_TRUE(server.up());
    NbdConfig config;
    config.timeout = 2s;
    config.min_backoff = 100ms;
    config.read_retry_window = 800ms;
    auto dev = NbdDevice::open(server.uri(), config).value();
    server.kill_now();
    Mapping buf = test::aligned_buffer(4096);
    auto t0 = std::chrono::steady_clock::now();
    BlockIo r{IoKind::read, DevOffset(0), std::span(static_cast<std::byte*>(buf.data()), 4096)};
    ASSERT_TRUE(dev->submit(ring, std::span(&r, 1)).has_value());
    auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_TRUE(r.result == -EIO || r.result == -ETIMEDOUT) << r.result;
    EXPECT_GE(waited, 750ms) << "gave up before the retry window closed";
    EXPECT_LT(waited, 2s) << "waited past the retry window";
    EXPECT_GE(dev->read_retries(), 1u);
    EXPECT_EQ(dev->reconnects(), 0u);

    // The window is per outage: the server has now been away for a whole one, so the
    // next read fails at once instead of waiting another window (a swapoff of a dead
    // device must not wait one per page).
    t0 = std::chrono::steady_clock::now();
    BlockIo again{IoKind::read, DevOffset(4096), std::span(static_cast<std::byte*>(buf.data()), 4096)};
    ASSERT_TRUE(dev->submit(ring, std::span(&again, 1)).has_value());
    EXPECT_TRUE(again.result == -EIO || again.result == -ETIMEDOUT) << again.result;
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 400ms);

    // Writes are not retried: they fail at once in the backoff (the pool places them
    // elsewhere).
    t0 = std::chrono::steady_clock::now();
    BlockIo w{IoKind::write, DevOffset(0), std::span(static_cast<std::byte*>(buf.data()), 4096)};
    ASSERT_TRUE(dev->submit(ring, std::span(&w, 1)).has_value());
    EXPECT_EQ(w.result, -EIO);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 500ms);
}

// Issue #16 item 3: a TCP host name is looked up once, at open, into addresses; every
// later connection (and reconnect) goes to those, so the threads doing swap I/O
// never resolve a name. The pool name stays the name the operator gave.
TEST_F(NbdDeviceTest, ATcpHostNameIsResolvedAtOpenAndReconnectsUseItsAddresses) {
    SWV_NBDKIT_OR_SKIP();
    SWV_RING_OR_SKIP(ring, 8);
    auto disk = dir.file("disk.img");
    { std::ofstream(disk).flush(); }
    std::filesystem::resize_file(disk, 16 << 20);
    const int port = test::nbd_test_port(3);
    const std::vector<std::string> args = {"file", "file=" + disk.string()};
    auto server = std::make_unique<NbdServer>(sock, args, port);
    ASSERT_TRUE(server->up()) << "nbdkit did not listen on 127.0.0.1:" << port;
    const std::string name = "nbd://localhost:" + std::to_string(port) + "/";
    auto dev = NbdDevice::open(name).value();
    EXPECT_EQ(dev->path(), name);
    const std::string v4 = "nbd://127.0.0.1:" + std::to_string(port) + "/";
    const auto& targets = dev->connect_targets();
    EXPECT_NE(std::find(targets.begin(), targets.end(), v4), targets.end());
    for (const std::string& t : targets) EXPECT_EQ(t.find("localhost"), std::string::npos) << t;

    Mapping buf = test::aligned_buffer(4096);
    std::span<std::byte> page(static_cast<std::byte*>(buf.data()), 4096);
    test::fill_pattern(page, 0, 31);
    BlockIo w{IoKind::write, DevOffset(0), page};
    ASSERT_TRUE(dev->submit(ring, std::span(&w, 1)).has_value());
    ASSERT_EQ(w.result, 4096);
    ASSERT_TRUE(dev->flush(ring).has_value());
    server.reset();  // stopped (SIGTERM) before the new one binds the port
    server = std::make_unique<NbdServer>(sock, args, port);
    ASSERT_TRUE(server->up());
    std::memset(buf.data(), 0, 4096);
    BlockIo r{IoKind::read, DevOffset(0), page};
    ASSERT_TRUE(dev->submit(ring, std::span(&r, 1)).has_value());
    EXPECT_EQ(r.result, 4096);
    EXPECT_EQ(test::first_mismatch(page, 0, 31), -1);
    EXPECT_GE(dev->reconnects(), 1u);

    // Numeric hosts and Unix sockets are kept as they are.
    auto numeric = NbdDevice::open(v4).value();
    EXPECT_EQ(numeric->connect_targets(), std::vector<std::string>{v4});
}

TEST_F(NbdDeviceTest, ConcurrentThreadsEachOnTheirOwnRing) {
    SWV_NBDKIT_OR_SKIP();
    SWV_RING_OR_SKIP(probe, 8);
    NbdServer server(sock, {"memory", "size=32M"});
    ASSERT_TRUE(server.up());
    auto dev = NbdDevice::open(server.uri()).value();
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            auto ring = Ring::create(16);
            if (!ring) {
                ++failures;
                return;
            }
            Mapping buf = test::aligned_buffer(64 * 1024);
            std::span<std::byte> all(static_cast<std::byte*>(buf.data()), 64 * 1024);
            for (int round = 0; round < 50; ++round) {
                std::uint64_t off = (std::uint64_t(t) * 8 << 20) + std::uint64_t(round) * 64 * 1024;
                test::fill_pattern(all, off, t + round);
                BlockIo w{IoKind::write, DevOffset(off), all};
                if (!dev->submit(*ring, std::span(&w, 1)) || w.result != 64 * 1024) ++failures;
                std::memset(buf.data(), 0, all.size());
                BlockIo r{IoKind::read, DevOffset(off), all};
                if (!dev->submit(*ring, std::span(&r, 1)) || r.result != 64 * 1024) ++failures;
                if (test::first_mismatch(all, off, t + round) != -1) ++failures;
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
}

TEST_F(NbdDeviceTest, UnreachableServerFailsOpenWithinTheTimeout) {
    SWV_NBDKIT_OR_SKIP();
    auto t0 = std::chrono::steady_clock::now();
    NbdConfig config;
    config.timeout = 500ms;
    auto dev = NbdDevice::open("nbd+unix:///?socket=" + sock.string(), config);
    ASSERT_FALSE(dev.has_value());
    EXPECT_NE(dev.error().message().find(sock.string()), std::string::npos) << dev.error().message();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
}

// A CA and a server certificate made here with openssl (nothing checked in): TLS is
// required by the server; a client with the CA connects and moves data, a plaintext
// client and a client trusting another CA are refused.
bool make_certs(const std::filesystem::path& dir, const std::string& cn_ca) {
    std::string d = dir.string();
    std::filesystem::create_directories(dir / "client");
    std::string cmd = "cd " + d + " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca-cert.pem"
                      " -days 2 -subj /CN=" + cn_ca + " && openssl req -newkey rsa:2048 -nodes -keyout server-key.pem"
                      " -out server.csr -subj /CN=localhost && printf 'subjectAltName=DNS:localhost\\nextendedKeyUsage=serverAuth\\n'"
                      " > ext.cnf && openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial"
                      " -out server-cert.pem -days 2 -extfile ext.cnf && cp ca-cert.pem client/ ) >/dev/null 2>&1";
    return ::system(("( " + cmd).c_str()) == 0;
}

TEST_F(NbdDeviceTest, TlsWithASelfSignedCertificate) {
    SWV_NBDKIT_OR_SKIP();
    SWV_RING_OR_SKIP(ring, 8);
    if (::system("openssl version >/dev/null 2>&1") != 0) GTEST_SKIP() << "*** openssl is NOT installed: TLS not tested ***";
    auto certs = dir.file("pki");
    auto other = dir.file("other-pki");
    ASSERT_TRUE(make_certs(certs, "swv-test-ca"));
    ASSERT_TRUE(make_certs(other, "another-ca"));
    // Loopback TCP: libnbd checks the server's certificate against the CA and the
    // host name (over a Unix socket it has no host name and checks nothing: there the
    // socket's permissions say who the server is; docs/REMOTE.md#security).
    const int port = test::nbd_test_port();
    NbdServer server(sock, {"--tls=require", "--tls-certificates=" + certs.string(), "memory", "size=16M"}, port);
    ASSERT_TRUE(server.up()) << "nbdkit did not listen on 127.0.0.1:" << port;
    NbdConfig config;
    config.timeout = 2s;
    const std::string host = "localhost:" + std::to_string(port);

    auto dev = NbdDevice::open("nbds://" + host + "/?tls-certificates=" + (certs / "client").string(), config);
    ASSERT_TRUE(dev.has_value()) << dev.error().message();
    // TLS keeps the host name: the certificate is checked against it on every connect.
    EXPECT_EQ((*dev)->connect_targets(), std::vector<std::string>{(*dev)->path()});
    Mapping buf = test::aligned_buffer(4096);
    std::span<std::byte> page(static_cast<std::byte*>(buf.data()), 4096);
    test::fill_pattern(page, 4096, 11);
    BlockIo w{IoKind::write, DevOffset(4096), page};
    ASSERT_TRUE((*dev)->submit(ring, std::span(&w, 1)).has_value());
    ASSERT_EQ(w.result, 4096);
    std::memset(buf.data(), 0, 4096);
    BlockIo r{IoKind::read, DevOffset(4096), page};
    ASSERT_TRUE((*dev)->submit(ring, std::span(&r, 1)).has_value());
    ASSERT_EQ(r.result, 4096);
    EXPECT_EQ(test::first_mismatch(page, 4096, 11), -1);

    EXPECT_FALSE(NbdDevice::open("nbd://" + host + "/", config).has_value()) << "plaintext accepted by a TLS-only server";
    auto wrong_ca = NbdDevice::open("nbds://" + host + "/?tls-certificates=" + (other / "client").string(), config);
    EXPECT_FALSE(wrong_ca.has_value()) << "a server certificate from an untrusted CA accepted";
}

}  // namespace
}  // namespace swapvisor::io
