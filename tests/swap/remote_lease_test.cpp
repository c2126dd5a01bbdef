// Remote devices' ownership (swap/remote_lease.hpp, swap/README.md#ownership): the
// owner record of the swap header, and real pools claiming, refusing, taking over,
// releasing and probing an export of a real nbdkit server (issue #17 item 2).
#include "swap/remote_lease.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "io/nbd_device.hpp"
#include "swap/swap_header.hpp"
#include "swap/swap_pool.hpp"
#include "tests/io/nbd_test_util.hpp"

namespace swapvisor::swap {
namespace {

using namespace std::chrono_literals;

std::vector<std::byte> page_of(const SwapHeader& h) {
    std::vector<std::byte> page(kHeaderBytes);
    encode_header(h, page);
    return page;
}

SwapHeader owned_header() {
    SwapHeader h{.slot_count = 1024};
    h.uuid[0] = 0x11;
    h.owner = OwnerRecord{.lease_until_ms = 1'800'000'000'000ULL, .pid = 4242, .host = "host-a.example"};
    h.owner->pool[15] = 0x7e;
    return h;
}

TEST(OwnerRecordTest, RoundTripsWhereTheLayoutSays) {
    const SwapHeader h = owned_header();
    auto page = page_of(h);
    EXPECT_EQ(std::memcmp(page.data() + 64, "SWVOWNER", 8), 0);
    EXPECT_EQ(std::to_integer<int>(page[72 + 15]), 0x7e);  // pool uuid
    EXPECT_EQ(std::to_integer<int>(page[96]), 4242 & 0xff);  // pid, little-endian
    EXPECT_EQ(std::memcmp(page.data() + 104, "host-a.example", 14), 0);
    for (std::size_t i = 176; i < page.size(); ++i) ASSERT_EQ(std::to_integer<int>(page[i]), 0) << i;
    auto back = decode_header(page);
    ASSERT_TRUE(back && back->has_value());
    EXPECT_EQ(**back, h);
}

TEST(OwnerRecordTest, AHeaderWithoutOneHasNone) {
    SwapHeader h = owned_header();
    h.owner.reset();
    auto back = decode_header(page_of(h));
    ASSERT_TRUE(back && back->has_value());
    EXPECT_FALSE((*back)->owner.has_value());
}

TEST(OwnerRecordTest, ADamagedRecordIsACorruptHeader) {
    for (std::size_t at : {64u, 80u, 90u, 97u, 110u, 170u}) {
        auto page = page_of(owned_header());
        page[at] ^= std::byte{0x04};
        auto bad = decode_header(page);
        ASSERT_FALSE(bad) << "byte " << at;
        EXPECT_EQ(bad.error().code, make_error_code(Errc::bad_header)) << at;
    }
}

TEST(OwnerRecordTest, ALongHostNameIsCutNotOverflowed) {
    SwapHeader h = owned_header();
    h.owner->host = std::string(200, 'h');
    auto back = decode_header(page_of(h));
    ASSERT_TRUE(back && back->has_value());
    EXPECT_EQ((*back)->owner->host, std::string(63, 'h'));
}

// Pools on one export of a real nbdkit (memory plugin) on TCP, so that one export
// has two names: nbd://127.0.0.1:P/ and nbd://localhost:P/.
class PrivilegedRemoteLeaseTest : public ::testing::Test {
protected:
    void SetUp() override {
        SWV_NBDKIT_OR_SKIP();
        port_ = io::test::nbd_test_port(17);
        server_ = std::make_unique<io::test::NbdServer>(
            std::filesystem::temp_directory_path() / ("swv-lease-" + std::to_string(::getpid()) + ".sock"),
            std::vector<std::string>{"memory", "size=16M"}, port_);
        ASSERT_TRUE(server_->up()) << "nbdkit did not start on port " << port_;
    }
    std::string uri(const char* host = "127.0.0.1") const {
        return "nbd://" + std::string(host) + ":" + std::to_string(port_) + "/";
    }
    static SwapPoolConfig config(std::chrono::milliseconds lease, std::chrono::milliseconds probe) {
        return SwapPoolConfig{.lease = LeaseConfig{.lease = lease, .probe_interval = probe}};
    }
    static std::optional<RemoteStatus> remote_of(const SwapPool& pool) {
        auto stats = pool.stats();
        return stats.empty() ? std::nullopt : stats[0].remote;
    }
    // The export's header as it is on the server now.
    SwapHeader header_now() const {
        auto dev = io::NbdDevice::open(uri());
        EXPECT_TRUE(dev.has_value());
        auto h = read_header(**dev);
        EXPECT_TRUE(h && h->has_value());
        return **h;
    }

    int port_ = 0;
    std::unique_ptr<io::test::NbdServer> server_;
};

// Issue #17 item 2: nbd://127.0.0.1:P/ and nbd://localhost:P/ were both accepted,
// and the two "devices" overwrote each other's slots.
TEST_F(PrivilegedRemoteLeaseTest, OneExportUnderTwoNamesIsRefused) {
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(uri(), 0, 0, Format::yes).has_value());
    auto again = pool.swapon(uri("localhost"), 0, 0, Format::yes);
    ASSERT_FALSE(again.has_value()) << "the same export was swapped on twice";
    EXPECT_EQ(again.error().code, make_error_code(Errc::exists));
    EXPECT_NE(again.error().message().find("swap header uuid"), std::string::npos) << again.error().message();
    EXPECT_EQ(pool.stats().size(), 1u);
    // The refused second name left the first one's lease alone.
    EXPECT_GT(header_now().owner->lease_until_ms, realtime_ms()) << "the refused alias released the pool's own lease";
}

// Issue #17 item 2: a second daemon attached the same export too.
TEST_F(PrivilegedRemoteLeaseTest, ASecondPoolIsRefusedWhileTheLeaseRunsAndMayTakeItOver) {
    SwapPool first(config(30s, 1h));
    ASSERT_TRUE(first.swapon(uri(), 0, 0, Format::yes).has_value());
    const SwapHeader claimed = header_now();
    ASSERT_TRUE(claimed.owner.has_value());
    EXPECT_GT(claimed.owner->lease_until_ms, realtime_ms());
    EXPECT_EQ(claimed.owner->pid, static_cast<std::uint32_t>(::getpid()));

    SwapPool second(config(30s, 1h));
    auto refused = second.swapon(uri("localhost"), 0, 0);
    ASSERT_FALSE(refused.has_value()) << "a second pool attached an export another pool holds";
    EXPECT_EQ(refused.error().code, make_error_code(Errc::leased));
    EXPECT_NE(refused.error().message().find(uuid_text(claimed.owner->pool)), std::string::npos)
        << refused.error().message();
    EXPECT_TRUE(second.stats().empty());

    ASSERT_TRUE(second.swapon(uri(), 0, 0, Format::no, Takeover::yes).has_value());
    const SwapHeader taken = header_now();
    ASSERT_TRUE(taken.owner.has_value());
    EXPECT_NE(taken.owner->pool, claimed.owner->pool);
    EXPECT_EQ(taken.uuid, claimed.uuid) << "a takeover keeps the device (and its slots' header)";
}

TEST_F(PrivilegedRemoteLeaseTest, ALeaseNotRenewedRunsOut) {
    SwapPool first(config(300ms, 1h));  // never renews within the test
    ASSERT_TRUE(first.swapon(uri(), 0, 0, Format::yes).has_value());
    SwapPool second(config(30s, 1h));
    EXPECT_FALSE(second.swapon(uri(), 0, 0).has_value());
    std::this_thread::sleep_for(700ms);
    EXPECT_TRUE(second.swapon(uri(), 0, 0).has_value()) << "a lease that ran out still held the device";
}

TEST_F(PrivilegedRemoteLeaseTest, SwapoffAndThePoolsEndReleaseTheLease) {
    {
        SwapPool first(config(30s, 1h));
        ASSERT_TRUE(first.swapon(uri(), 0, 0, Format::yes).has_value());
        auto ring = io::Ring::create(8);
        ASSERT_TRUE(ring.has_value());
        ASSERT_TRUE(first.swapoff(uri(), *ring).has_value());
        EXPECT_EQ(header_now().owner->lease_until_ms, 0u) << "swapoff left the lease running";
        ASSERT_TRUE(first.swapon(uri(), 0, 0).has_value());
    }
    EXPECT_EQ(header_now().owner->lease_until_ms, 0u) << "the pool's end left the lease running";
    SwapPool second(config(30s, 1h));
    EXPECT_TRUE(second.swapon(uri(), 0, 0).has_value());
}

// Issue #17: "a dead NBD server shows active with no failure until swap I/O fails".
TEST_F(PrivilegedRemoteLeaseTest, TheProbeSaysUpThenDownWhenTheServerDies) {
    SwapPool pool(config(30s, 100ms));
    ASSERT_TRUE(pool.swapon(uri(), 0, 0, Format::yes).has_value());
    auto wait_for = [&](RemoteHealth want, std::uint64_t min_probes) {
        for (int i = 0; i < 300; ++i) {  // a hang guard, not a timing assertion
            auto r = remote_of(pool);
            if (r && r->health == want && r->probes >= min_probes) return r;
            std::this_thread::sleep_for(100ms);
        }
        return remote_of(pool);
    };
    auto up = wait_for(RemoteHealth::up, 2);
    ASSERT_TRUE(up.has_value());
    EXPECT_EQ(up->health, RemoteHealth::up) << up->reason;
    EXPECT_GT(up->lease_until_ms, realtime_ms());
    server_->kill_now();
    auto down = wait_for(RemoteHealth::down, up->probes + 1);
    ASSERT_TRUE(down.has_value());
    EXPECT_EQ(down->health, RemoteHealth::down);
    EXPECT_FALSE(down->reason.empty());
    EXPECT_GE(down->since_ms, up->last_probe_ms);
}

// Another pool takes the device over: the first one's probe says so (and stops
// renewing: it must not write the record back over the new owner's).
TEST_F(PrivilegedRemoteLeaseTest, AProbeNoticesATakeover) {
    SwapPool first(config(30s, 100ms));
    ASSERT_TRUE(first.swapon(uri(), 0, 0, Format::yes).has_value());
    SwapPool second(config(30s, 1h));
    ASSERT_TRUE(second.swapon(uri(), 0, 0, Format::no, Takeover::yes).has_value());
    const SwapHeader taken = header_now();
    std::optional<RemoteStatus> r;
    for (int i = 0; i < 300; ++i) {
        r = remote_of(first);
        if (r && r->health == RemoteHealth::down) break;
        std::this_thread::sleep_for(100ms);
    }
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->health, RemoteHealth::down);
    EXPECT_NE(r->reason.find("taken over"), std::string::npos) << r->reason;
    std::this_thread::sleep_for(300ms);
    EXPECT_EQ(header_now().owner->pool, taken.owner->pool) << "the first pool wrote its record back";
}

}  // namespace
}  // namespace swapvisor::swap
