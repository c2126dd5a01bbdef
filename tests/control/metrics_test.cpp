// The Prometheus exposition (metrics.hpp) and its HTTP server (metrics_server.hpp),
// and the VM commands of the control socket against a recording VmControl: a real
// SwapPool and HostMemory underneath, raw HTTP and JSON over real sockets.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "guestmem/errc.hpp"
#include "guestmem/host_memory.hpp"
#include "io/ring.hpp"
#include "io/unique_fd.hpp"
#include "swap/swap_pool.hpp"
#include "tests/io/nbd_test_util.hpp"
#include "vmm/control/control_server.hpp"
#include "vmm/control/metrics.hpp"
#include "vmm/control/metrics_server.hpp"
#include "vmm/control/stats_json.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm::control;
using nlohmann::json;

namespace {

// Records what the control socket asked; answers from a small table.
class FakeVms final : public VmControl {
public:
    Result<VmInfo> create_vm(const VmSpec& spec) override {
        std::lock_guard lock(mutex_);
        if (vms_.contains(spec.name)) return make_error(VmErrc::exists, "vm-create", spec.name);
        if (spec.memory_bytes % (2 << 20) != 0)
            return make_error(VmErrc::bad_spec, "vm-create", "field \"memory\": not a multiple of 2 MiB");
        created.push_back(spec);
        vms_[spec.name] = VmInfo{.name = spec.name, .vcpus = spec.vcpus, .memory_bytes = spec.memory_bytes};
        return vms_[spec.name];
    }
    Result<VmInfo> stop_vm(const std::string& name, std::chrono::milliseconds timeout) override {
        std::lock_guard lock(mutex_);
        auto it = vms_.find(name);
        if (it == vms_.end()) return make_error(VmErrc::no_such_vm, "vm-stop", name);
        last_timeout = timeout;
        it->second.state = VmState::ended;
        it->second.exit_code = 143;
        it->second.end_reason = "stopped";
        return it->second;
    }
    Result<VmInfo> pause_vm(const std::string& name) override { return set_state(name, VmState::paused); }
    Result<VmInfo> resume_vm(const std::string& name) override { return set_state(name, VmState::running); }
    Result<void> remove_vm(const std::string& name) override {
        std::lock_guard lock(mutex_);
        auto it = vms_.find(name);
        if (it == vms_.end()) return make_error(VmErrc::no_such_vm, "vm-remove", name);
        if (it->second.state != VmState::ended) return make_error(VmErrc::running, "vm-remove", name);
        vms_.erase(it);
        return {};
    }
    std::vector<VmInfo> list_vms() const override {
        std::lock_guard lock(mutex_);
        std::vector<VmInfo> out;
        for (const auto& [name, info] : vms_) out.push_back(info);
        return out;
    }
    Result<std::uint64_t> set_balloon(const std::string& name, std::uint64_t bytes) override {
        std::lock_guard lock(mutex_);
        if (!vms_.contains(name)) return make_error(VmErrc::no_such_vm, "set-balloon", name);
        if (name != "ballooned") return make_error(VmErrc::no_balloon, "set-balloon", name);
        return bytes / 4096;
    }
    void shut_down() override {}

    std::vector<VmSpec> created;
    std::chrono::milliseconds last_timeout{0};

private:
    Result<VmInfo> set_state(const std::string& name, VmState state) {
        std::lock_guard lock(mutex_);
        auto it = vms_.find(name);
        if (it == vms_.end()) return make_error(VmErrc::no_such_vm, "vm-pause", name);
        if (it->second.state == VmState::ended) return make_error(VmErrc::not_running, "vm-pause", name);
        it->second.state = state;
        return it->second;
    }
    mutable std::mutex mutex_;
    std::map<std::string, VmInfo> vms_;
};

// One request line, one reply line, over a fresh connection.
json call(const std::filesystem::path& socket_path, const json& request) {
    io::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, socket_path.c_str());
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        return json{{"test_error", std::string("connect: ") + std::strerror(errno)}};
    timeval bound{.tv_sec = 30, .tv_usec = 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound);
    std::string line = request.dump() + "\n";
    if (::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) return json();
    std::string in;
    char buf[4096];
    while (in.find('\n') == std::string::npos) {
        ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return json{{"test_error", "recv: " + (n == 0 ? std::string("EOF") : std::strerror(errno))}};
        in.append(buf, static_cast<std::size_t>(n));
    }
    return json::parse(in.substr(0, in.find('\n')));
}

// One GET on a connected socket: the whole reply (the server closes), "" if the
// request cannot be sent.
std::string http_exchange(const io::UniqueFd& fd, const std::string& target) {
    timeval bound{.tv_sec = 10, .tv_usec = 0};  // a hung server fails the test instead of hanging it
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound);
    std::string request = "GET " + target + " HTTP/1.1\r\nHost: localhost\r\n\r\n";
    if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) < 0) return {};
    std::string in;
    char buf[4096];
    for (;;) {
        ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return std::string("recv: ") + std::strerror(errno);
        if (n == 0) break;
        in.append(buf, static_cast<std::size_t>(n));
    }
    return in;
}

std::string http_get(std::uint16_t port, const std::string& target) {
    io::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return {};
    return http_exchange(fd, target);
}

// A small exposition-format parser: every sample line is `name{labels} value`;
// returns name{labels} -> value for integer values, or fails the test on a line it
// cannot read. `all` (if given) gets every sample as a double (histogram sums are
// not integers), `types` the TYPE of each family.
std::map<std::string, std::uint64_t> parse_exposition(const std::string& text,
                                                      std::map<std::string, double>* all = nullptr,
                                                      std::map<std::string, std::string>* types = nullptr) {
    static const std::regex sample(
        R"(^([a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})?) (\S+)$)");
    static const std::regex type(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$)");
    std::map<std::string, std::uint64_t> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        std::smatch m;
        if (line.starts_with("# TYPE ")) {
            EXPECT_TRUE(std::regex_match(line, m, type)) << "bad TYPE: " << line;
            if (types != nullptr && !m.empty()) (*types)[m[1]] = m[2];
            continue;
        }
        if (line.starts_with("# HELP ")) continue;
        EXPECT_TRUE(std::regex_match(line, m, sample)) << "unparsable: " << line;
        if (m.empty()) continue;
        const std::string value = m[5];
        char* end = nullptr;
        const double d = std::strtod(value.c_str(), &end);
        EXPECT_TRUE(end == value.c_str() + value.size() && !value.empty()) << "bad value: " << line;
        if (all != nullptr) (*all)[m[1]] = d;
        if (value.find_first_not_of("0123456789") == std::string::npos) out[m[1]] = std::stoull(value);
    }
    return out;
}

// GET target over the Unix socket `path`: the whole reply, "" if nobody answers.
std::string http_get_unix(const std::filesystem::path& path, const std::string& target) {
    io::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return {};
    return http_exchange(fd, target);
}

class MetricsTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (access("/proc/sys/vm/unprivileged_userfaultfd", F_OK) != 0 && access("/dev/userfaultfd", F_OK) != 0)
            GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable";
        dir_ = std::filesystem::temp_directory_path() /
               ("swv-metrics-" + std::to_string(getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::remove_all(dir_);
        std::filesystem::create_directories(dir_);
        pool_ = std::make_unique<swap::SwapPool>();
        ASSERT_TRUE(pool_->swapon(dir_ / "a.swap", 3, 16 << 20).has_value());
        host_ = std::make_unique<guestmem::HostMemory>(*pool_, 0);
        auto vm = host_->create_vm(
            guestmem::MemoryConfig{.name = "web\"1", .memory_bytes = 8 << 20, .resident_limit = 16 << 20, .swap_quota = 1 << 20});
        ASSERT_TRUE(vm.has_value());
        ASSERT_TRUE(devices_.add("web\"1", "balloon", [] { return Counters{{"target_pages", 7}, {"actual_pages", 5}}; }));
    }
    void TearDown() override {
        host_.reset();
        pool_.reset();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    std::filesystem::path dir_;
    std::unique_ptr<swap::SwapPool> pool_;
    std::unique_ptr<guestmem::HostMemory> host_;
    DeviceStats devices_;
};

}  // namespace

TEST_F(MetricsTest, ExpositionCarriesTheSameNamesAsStatsJson) {
    FakeVms vms;
    ASSERT_TRUE(vms.create_vm(VmSpec{.name = "web\"1", .memory_bytes = 8 << 20}).has_value());
    SwapoffBoard board;
    board.update((dir_ / "a.swap").string(), {10, 40});
    auto samples = parse_exposition(prometheus_text(*host_, devices_, &vms, &board));
    const std::string vm = R"({vm="web\"1"})";
    // Every MemStats field of stats_json is a metric of the same name.
    json stats = stats_json(*host_, devices_, StatsDetail::full);
    for (const guestmem::MemStatField& f : guestmem::kMemStatFields) {
        auto it = samples.find(std::string("swapvisor_vm_") + f.name + vm);
        ASSERT_NE(it, samples.end()) << f.name;
        EXPECT_EQ(it->second, stats["vms"][0][f.name].get<std::uint64_t>()) << f.name;
    }
    // Issue #20: the stall and refault ratios are gauges, the cold-age histogram a
    // histogram with the JSON's buckets, and the limit source a labelled state.
    for (const guestmem::MemRatioField& f : guestmem::kMemRatioFields) {
        EXPECT_TRUE(samples.contains(std::string("swapvisor_vm_") + f.name + vm)) << f.name;
        EXPECT_TRUE(stats["vms"][0][f.name].is_number()) << f.name;
    }
    for (const guestmem::AgeBucket& b : guestmem::kAgeBuckets) {
        const std::string key = R"(swapvisor_vm_cold_age_seconds_bucket{vm="web\"1",le=")" + std::string(b.le) + "\"}";
        ASSERT_TRUE(samples.contains(key)) << key;
        EXPECT_EQ(samples.at(key), stats["vms"][0]["cold_age_seconds_bucket"][b.le].get<std::uint64_t>()) << b.le;
    }
    EXPECT_EQ(samples.at("swapvisor_vm_cold_age_seconds_count" + vm),
              stats["vms"][0]["cold_age_seconds_count"].get<std::uint64_t>());
    EXPECT_EQ(samples.at(R"(swapvisor_vm_limit_source{vm="web\"1",source="manual"})"), 1u);
    EXPECT_EQ(stats["vms"][0]["limit_source"], "manual");
    EXPECT_EQ(samples.at("swapvisor_vm_resident_limit" + vm), 16u << 20);
    EXPECT_EQ(samples.at("swapvisor_vm_swap_quota_bytes" + vm), 1u << 20);
    EXPECT_EQ(samples.at("swapvisor_vm_balloon_target_pages" + vm), 7u);
    EXPECT_EQ(samples.at("swapvisor_vm_balloon_actual_pages" + vm), 5u);
    EXPECT_EQ(samples.at(R"(swapvisor_vm_state{vm="web\"1",state="running"})"), 1u);
    EXPECT_EQ(samples.at(R"(swapvisor_vm_state{vm="web\"1",state="ended"})"), 0u);
    const std::string dev = "{path=\"" + (dir_ / "a.swap").string() + "\"}";
    EXPECT_EQ(samples.at("swapvisor_swap_total_slots" + dev), stats["swap"][0]["total_slots"].get<std::uint64_t>());
    EXPECT_EQ(samples.at("swapvisor_swap_priority" + dev), 3u);
    EXPECT_EQ(samples.at("swapvisor_swap_swapoff_done_slots" + dev), 10u);
    EXPECT_EQ(samples.at("swapvisor_swap_swapoff_total_slots" + dev), 40u);
    EXPECT_EQ(samples.at("swapvisor_host_allocated_vslots"), 0u);
    board.finish((dir_ / "a.swap").string());
    samples = parse_exposition(prometheus_text(*host_, devices_, nullptr, &board));
    EXPECT_EQ(samples.at("swapvisor_swap_swapoff_total_slots" + dev), 0u);
    EXPECT_FALSE(samples.contains(R"(swapvisor_vm_state{vm="web\"1",state="running"})"));
}

TEST_F(MetricsTest, AMemoryTierShowsItsTierFiguresInStatsJsonAndMetrics) {
    auto ring = io::Ring::create(8);
    ASSERT_TRUE(ring);
    ASSERT_TRUE(pool_->swapon("mem:2M,codec=zstd", 9, 0));
    // 8 pages that compress (one repeated word each) and 2 that do not.
    auto buf = io::Mapping::anonymous(10 * guestmem::kPageSize);
    ASSERT_TRUE(buf);
    std::vector<swap::PageOut> outs;
    for (std::uint64_t p = 0; p < 10; ++p) {
        auto* w = reinterpret_cast<std::uint64_t*>(buf->data() + p * guestmem::kPageSize);
        std::uint64_t x = p * 0x9E3779B97F4A7C15ULL + 1;
        for (std::uint64_t i = 0; i < guestmem::kPageSize / 8; ++i) {
            x ^= x >> 29;
            x *= 0xBF58476D1CE4E5B9ULL;
            w[i] = p < 8 ? p + 1 : x;
        }
        outs.push_back(swap::PageOut{buf->data() + p * guestmem::kPageSize, p});
    }
    ASSERT_TRUE(pool_->write_out(*ring, outs));
    json stats = stats_json(*host_, devices_, StatsDetail::full);
    const json* tier = nullptr;
    for (const json& d : stats["swap"])
        if (d["path"] == "mem:2M") tier = &d;
    ASSERT_NE(tier, nullptr) << stats.dump();
    EXPECT_EQ((*tier)["kind"], "memory");
    EXPECT_EQ((*tier)["tier"]["codec"], "zstd");
    EXPECT_EQ((*tier)["tier"]["stored_pages"], 8u);
    EXPECT_EQ((*tier)["tier"]["rejected_pages_total"], 2u);
    EXPECT_GT((*tier)["tier"]["ratio"].get<double>(), 10.0);
    std::map<std::string, double> all;
    parse_exposition(prometheus_text(*host_, devices_, nullptr, nullptr), &all);
    const std::string dev = R"({path="mem:2M"})";
    EXPECT_EQ(all.at("swapvisor_swap_tier_stored_pages" + dev), 8.0);
    EXPECT_EQ(all.at("swapvisor_swap_tier_rejected_pages_total" + dev), 2.0);
    EXPECT_EQ(all.at("swapvisor_swap_tier_arena_bytes" + dev), (*tier)["tier"]["arena_bytes"].get<double>());
    EXPECT_NEAR(all.at("swapvisor_swap_tier_ratio" + dev), (*tier)["tier"]["ratio"].get<double>(), 1e-6);
    EXPECT_FALSE(all.contains("swapvisor_swap_tier_stored_pages{path=\"" + (dir_ / "a.swap").string() + "\"}"))
        << "a disk has no tier figures";
    for (const swap::PageOut& p : outs) pool_->free(p.vslot);
}

TEST_F(MetricsTest, HttpServerAnswersMetricsOnLoopbackOnly) {
    MetricsServer refused(*host_, devices_, nullptr);
    auto wide = refused.start("0.0.0.0:0");
    ASSERT_FALSE(wide.has_value());
    EXPECT_TRUE(wide.error().is(std::errc::invalid_argument));
    EXPECT_FALSE(refused.start("127.0.0.1:99999").has_value());

    MetricsServer server(*host_, devices_, nullptr);
    ASSERT_TRUE(server.start("127.0.0.1:0").has_value());
    ASSERT_NE(server.port(), 0);
    std::string reply = http_get(server.port(), "/metrics");
    ASSERT_TRUE(reply.starts_with("HTTP/1.1 200")) << "[" << reply.substr(0, 200) << "]";
    EXPECT_NE(reply.find("text/plain; version=0.0.4"), std::string::npos);
    auto body = reply.substr(reply.find("\r\n\r\n") + 4);
    auto samples = parse_exposition(body);
    EXPECT_TRUE(samples.contains(R"(swapvisor_vm_memory_bytes{vm="web\"1"})"));
    EXPECT_TRUE(http_get(server.port(), "/nope").starts_with("HTTP/1.1 404"));
    const std::uint16_t port = server.port();
    server.stop();
    EXPECT_EQ(http_get(port, "/metrics"), "") << "still answering after stop()";
}

TEST_F(MetricsTest, ControlSocketRunsVmCommandsThroughTheVmHost) {
    FakeVms vms;
    ControlServer server(*host_, devices_, ControlServerConfig{.socket_path = dir_ / "c.sock", .vms = &vms});
    ASSERT_TRUE(server.start().has_value());
    const auto sock = dir_ / "c.sock";
    json r = call(sock, {{"id", 1}, {"cmd", "vm-create"}, {"name", "a"}, {"kernel", "/k"}, {"memory", "64M"},
                         {"vcpus", 2}, {"swap_quota", "1G"}});
    ASSERT_EQ(r["ok"], true) << r.dump();
    EXPECT_EQ(r["state"], "running");
    ASSERT_EQ(vms.created.size(), 1u);
    EXPECT_EQ(vms.created[0].swap_quota, 1ULL << 30);
    EXPECT_EQ(vms.created[0].vcpus, 2u);
    r = call(sock, {{"id", 2}, {"cmd", "vm-create"}, {"name", "a"}, {"kernel", "/k"}, {"memory", "64M"}});
    EXPECT_EQ(r["error"]["code"], "exists") << r.dump();
    r = call(sock, {{"id", 3}, {"cmd", "vm-create"}, {"name", "b"}, {"kernel", "/k"}, {"memory", 4097}});
    EXPECT_EQ(r["error"]["code"], "bad_request") << r.dump();
    EXPECT_NE(r["error"]["message"].get<std::string>().find("\"memory\""), std::string::npos);
    EXPECT_EQ(call(sock, {{"id", 4}, {"cmd", "vm-pause"}, {"vm", "a"}})["state"], "paused");
    EXPECT_EQ(call(sock, {{"id", 5}, {"cmd", "vm-resume"}, {"vm", "a"}})["state"], "running");
    EXPECT_EQ(call(sock, {{"id", 6}, {"cmd", "vm-remove"}, {"vm", "a"}})["error"]["code"], "vm_running");
    EXPECT_EQ(call(sock, {{"id", 7}, {"cmd", "set-balloon"}, {"vm", "a"}, {"bytes", "8M"}})["error"]["code"], "no_balloon");
    r = call(sock, {{"cmd", "vm-stop"}, {"vm", "a"}, {"timeout_ms", 250}});  // no id: answered with null
    EXPECT_TRUE(r["id"].is_null());
    EXPECT_EQ(r["exit_code"], 143) << r.dump();
    EXPECT_EQ(vms.last_timeout, std::chrono::milliseconds(250));
    EXPECT_EQ(call(sock, {{"id", 8}, {"cmd", "vm-pause"}, {"vm", "a"}})["error"]["code"], "vm_ended");
    r = call(sock, {{"id", 9}, {"cmd", "vm-list"}});
    ASSERT_EQ(r["vms"].size(), 1u);
    EXPECT_EQ(r["vms"][0]["end_reason"], "stopped");
    EXPECT_EQ(call(sock, {{"id", 10}, {"cmd", "vm-remove"}, {"vm", "a"}})["removed"], true);
    EXPECT_EQ(call(sock, {{"id", 11}, {"cmd", "vm-stop"}, {"vm", "a"}})["error"]["code"], "no_such_vm");
    // set-quota goes to guest memory directly.
    r = call(sock, {{"id", 12}, {"cmd", "set-quota"}, {"vm", "web\"1"}, {"bytes", "2M"}});
    ASSERT_EQ(r["ok"], true) << r.dump();
    EXPECT_EQ(host_->find("web\"1")->stats().swap_quota_bytes, 2u << 20);
    EXPECT_EQ(call(sock, {{"id", 13}, {"cmd", "set-quota"}, {"vm", "zz"}, {"bytes", 0}})["error"]["code"], "no_such_vm");
    server.stop();
}

TEST_F(MetricsTest, VmCommandsWithoutAVmHostAreUnsupported) {
    ControlServer server(*host_, devices_, ControlServerConfig{.socket_path = dir_ / "c.sock"});
    ASSERT_TRUE(server.start().has_value());
    EXPECT_EQ(call(dir_ / "c.sock", {{"id", 1}, {"cmd", "vm-list"}})["error"]["code"], "unsupported");
    server.stop();
}

// A second `serve --metrics PATH` on the path of a running one must fail and leave
// the first one answering (it used to unlink the live socket and take the name).
TEST_F(MetricsTest, UnixSocketOfARunningServerIsRefusedAStaleOneReplaced) {
    const auto path = dir_ / "m.sock";
    {
        std::ofstream(path) << "not a socket";
        MetricsServer s(*host_, devices_, nullptr);
        auto r = s.start(path.string());
        ASSERT_FALSE(r.has_value());
        EXPECT_TRUE(r.error().is(std::errc::file_exists)) << r.error().message();
        EXPECT_TRUE(std::filesystem::is_regular_file(path));  // untouched
        std::filesystem::remove(path);
    }
    {
        // A stale socket file: bound, never listening, closed (a crashed server's).
        io::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
        ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    }
    MetricsServer first(*host_, devices_, nullptr);
    ASSERT_TRUE(first.start(path.string()).has_value()) << "a stale socket must be replaced";
    ASSERT_TRUE(http_get_unix(path, "/metrics").starts_with("HTTP/1.1 200"));
    struct stat st {};
    ASSERT_EQ(lstat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0600u);
    {
        MetricsServer second(*host_, devices_, nullptr);
        auto r = second.start(path.string());
        ASSERT_FALSE(r.has_value()) << "a second server took the socket of a running one";
        EXPECT_TRUE(r.error().is(std::errc::address_in_use)) << r.error().message();
        EXPECT_NE(r.error().message().find("in use by a running process"), std::string::npos) << r.error().message();
        EXPECT_NE(r.error().message().find("metrics socket " + path.string()), std::string::npos)
            << r.error().message();
    }  // the refused server's destructor must not remove the first one's file
    std::string reply = http_get_unix(path, "/metrics");
    ASSERT_TRUE(reply.starts_with("HTTP/1.1 200")) << "the first server stopped answering: [" << reply << "]";
    parse_exposition(reply.substr(reply.find("\r\n\r\n") + 4));
    first.stop();
    EXPECT_FALSE(std::filesystem::exists(std::filesystem::symlink_status(path)));
    EXPECT_EQ(http_get_unix(path, "/metrics"), "");
}

// Real swap-ins (a thread touching the guest view of a VM held far under its size)
// fill the VM's swapin_seconds histogram; /metrics shows it as a Prometheus histogram
// (cumulative le buckets, +Inf == _count) with the same numbers as stats_json, and
// each swap device's bytes read and written as counters.
TEST_F(MetricsTest, SwapInHistogramAndDeviceBytesOfRealSwapInsMatchStatsJson) {
    auto created = host_->create_vm(
        guestmem::MemoryConfig{.name = "swapper", .memory_bytes = 32 << 20, .resident_limit = 4 << 20});
    ASSERT_TRUE(created.has_value()) << created.error().message();
    guestmem::GuestMemory* vm = *created;
    ASSERT_TRUE(vm->start().has_value());
    constexpr std::uint64_t kPages = (12 << 20) / guestmem::kPageSize;
    std::uint64_t wrong = 0;
    std::thread guest([&] {
        std::byte* g = vm->regions()[0].guest_view;
        for (int pass = 0; pass < 2; ++pass)
            for (std::uint64_t p = 0; p < kPages; ++p) {
                auto* w = reinterpret_cast<volatile std::uint64_t*>(g + p * guestmem::kPageSize);
                if (pass == 0) w[7] = p + 1;
                else if (w[7] != p + 1) ++wrong;
            }
    });
    guest.join();
    vm->stop();  // every fault recorded; nothing changes from here on
    ASSERT_EQ(wrong, 0u);
    const guestmem::MemStats mem = vm->stats();
    ASSERT_GT(mem.major_faults, 0u) << "the test did not swap anything in";

    std::map<std::string, double> all;
    std::map<std::string, std::string> types;
    auto samples = parse_exposition(prometheus_text(*host_, devices_, nullptr, nullptr), &all, &types);
    const json stats = stats_json(*host_, devices_, StatsDetail::summary);
    json vm_json;
    for (const json& v : stats["vms"])
        if (v["name"] == "swapper") vm_json = v;
    ASSERT_TRUE(vm_json.is_object());

    EXPECT_EQ(types["swapvisor_vm_swapin_seconds"], "histogram");
    const std::string vm_label = R"(vm="swapper")";
    std::uint64_t previous = 0;
    for (const guestmem::LatencyBucket& b : guestmem::kLatencyBuckets) {
        const std::string key = "swapvisor_vm_swapin_seconds_bucket{" + vm_label + ",le=\"" + b.le + "\"}";
        ASSERT_TRUE(samples.contains(key)) << key;
        EXPECT_GE(samples[key], previous) << "buckets are cumulative: " << key;
        previous = samples[key];
        EXPECT_EQ(samples[key], vm_json["swapin_seconds_bucket"][b.le].get<std::uint64_t>()) << b.le;
    }
    const std::string count_key = "swapvisor_vm_swapin_seconds_count{" + vm_label + "}";
    ASSERT_TRUE(samples.contains(count_key));
    EXPECT_EQ(samples[count_key], previous) << "+Inf must equal _count";
    EXPECT_EQ(samples[count_key], mem.major_faults) << "every major fault of this VM read swap and was timed";
    EXPECT_EQ(vm_json["swapin_seconds_count"].get<std::uint64_t>(), mem.major_faults);
    const std::string sum_key = "swapvisor_vm_swapin_seconds_sum{" + vm_label + "}";
    ASSERT_TRUE(all.contains(sum_key));
    EXPECT_GT(all[sum_key], 0.0);
    EXPECT_DOUBLE_EQ(all[sum_key], vm_json["swapin_seconds_sum"].get<double>());

    // The swap device moved at least a page per major fault in and per swap-out out.
    const std::string dev = "{path=\"" + (dir_ / "a.swap").string() + "\"}";
    EXPECT_EQ(types["swapvisor_swap_read_bytes_total"], "counter");
    EXPECT_EQ(types["swapvisor_swap_written_bytes_total"], "counter");
    const json& dev_json = stats["swap"][0];
    EXPECT_EQ(samples.at("swapvisor_swap_read_bytes_total" + dev), dev_json["read_bytes_total"].get<std::uint64_t>());
    EXPECT_EQ(samples.at("swapvisor_swap_written_bytes_total" + dev),
              dev_json["written_bytes_total"].get<std::uint64_t>());
    EXPECT_GE(samples.at("swapvisor_swap_read_bytes_total" + dev), mem.major_faults * guestmem::kPageSize);
    EXPECT_GE(samples.at("swapvisor_swap_written_bytes_total" + dev), mem.swap_out_pages * guestmem::kPageSize);
    EXPECT_EQ(samples.at("swapvisor_swap_read_errors" + dev), 0u);
}

// Issue #16 item 5, end to end: a VM swaps to an NBD export (file plugin: the bytes
// survive a restart), the server is killed and started again on the same socket while
// the guest reads its pages back. Every page comes back intact, none is lost, and the
// device's retries show in stats_json and /metrics under the same name.
TEST_F(MetricsTest, NbdSwapInsSurviveAServerRestartAndTheirRetriesAreCounted) {
    SWV_NBDKIT_OR_SKIP();
    const auto sock = dir_ / "nbd.sock";
    const auto disk = dir_ / "nbd.img";
    std::ofstream(disk).flush();
    std::filesystem::resize_file(disk, 32 << 20);
    const std::vector<std::string> args = {"file", "file=" + disk.string()};
    auto server = std::make_unique<io::test::NbdServer>(sock, args);
    ASSERT_TRUE(server->up());
    const std::string uri = server->uri();
    ASSERT_TRUE(pool_->swapon(uri, 10, 0, swap::Format::yes).has_value());  // above a.swap
    auto created = host_->create_vm(
        guestmem::MemoryConfig{.name = "remote", .memory_bytes = 16 << 20, .resident_limit = 2 << 20});
    ASSERT_TRUE(created.has_value()) << created.error().message();
    guestmem::GuestMemory* vm = *created;
    ASSERT_TRUE(vm->start().has_value());
    constexpr std::uint64_t kPages = (12 << 20) / guestmem::kPageSize;
    std::byte* g = vm->regions()[0].guest_view;
    for (std::uint64_t p = 0; p < kPages; ++p)
        reinterpret_cast<volatile std::uint64_t*>(g + p * guestmem::kPageSize)[7] = p + 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // writeback done
    ASSERT_GT(stats_json(*host_, devices_, StatsDetail::summary)["swap"][0]["used_slots"].get<std::uint64_t>(), 0u)
        << "nothing went to the NBD export";

    // The guest reads while the server is gone; it comes back 500 ms later. (Started
    // from this thread: --exit-with-parent follows the thread that spawned nbdkit.)
    server->kill_now();
    std::uint64_t wrong = 0;
    std::thread guest([&] {
        for (std::uint64_t p = 0; p < kPages; ++p)
            if (reinterpret_cast<volatile std::uint64_t*>(g + p * guestmem::kPageSize)[7] != p + 1) ++wrong;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    server = std::make_unique<io::test::NbdServer>(sock, args);
    guest.join();
    vm->stop();
    EXPECT_EQ(wrong, 0u);
    const json stats = stats_json(*host_, devices_, StatsDetail::full);
    json vm_json, dev_json;
    for (const json& v : stats["vms"])
        if (v["name"] == "remote") vm_json = v;
    for (const json& d : stats["swap"])
        if (d["path"] == uri) dev_json = d;
    ASSERT_TRUE(vm_json.is_object() && dev_json.is_object()) << stats.dump();
    EXPECT_EQ(vm_json["lost_pages"].get<std::uint64_t>(), 0u);
    ASSERT_TRUE(dev_json.contains("read_retries_total")) << dev_json.dump();
    const std::uint64_t retries = dev_json["read_retries_total"].get<std::uint64_t>();
    EXPECT_GE(retries, 1u) << "the restart did not touch a swap-in";
    std::map<std::string, std::string> types;
    auto samples = parse_exposition(prometheus_text(*host_, devices_, nullptr, nullptr), nullptr, &types);
    EXPECT_EQ(types["swapvisor_swap_read_retries_total"], "counter");
    const std::string dev = "{path=\"" + uri + "\"}";
    EXPECT_GE(samples.at("swapvisor_swap_read_retries_total" + dev), retries);
    EXPECT_EQ(samples.at("swapvisor_swap_read_retries_total{path=\"" + (dir_ / "a.swap").string() + "\"}"), 0u);
}

// Issue #16 item 5, the other side: a server gone for longer than the retry window.
// The page is reported lost with a clear error within a bound (no hang), the device
// counted its retries, and the next page of the same outage fails at once.
TEST_F(MetricsTest, NbdSwapInFromAServerGoneForGoodIsALostPageWithinTheRetryWindow) {
    SWV_NBDKIT_OR_SKIP();
    const auto sock = dir_ / "nbd.sock";
    auto server = std::make_unique<io::test::NbdServer>(sock, std::vector<std::string>{"memory", "size=32M"});
    ASSERT_TRUE(server->up());
    const std::string uri = server->uri();
    ASSERT_TRUE(pool_->swapon(uri, 10, 0, swap::Format::yes).has_value());
    auto created = host_->create_vm(
        guestmem::MemoryConfig{.name = "gone", .memory_bytes = 16 << 20, .resident_limit = 2 << 20});
    ASSERT_TRUE(created.has_value()) << created.error().message();
    guestmem::GuestMemory* vm = *created;
    ASSERT_TRUE(vm->start().has_value());
    constexpr std::uint64_t kPages = (12 << 20) / guestmem::kPageSize;
    std::byte* g = vm->regions()[0].guest_view;
    for (std::uint64_t p = 0; p < kPages; ++p)
        reinterpret_cast<volatile std::uint64_t*>(g + p * guestmem::kPageSize)[7] = p + 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // writeback done
    ASSERT_EQ(vm->entry(guestmem::Gpa(0)).state(), guestmem::PageState::swapped);
    ASSERT_EQ(vm->entry(guestmem::Gpa(guestmem::kPageSize)).state(), guestmem::PageState::swapped);
    server->kill_now();

    // Through the VMM's access path (a guest touch would take SIGBUS, by design).
    std::vector<std::byte> buf(guestmem::kPageSize);
    auto t0 = std::chrono::steady_clock::now();
    auto first = vm->read(guestmem::Gpa(0), buf);
    auto waited = std::chrono::steady_clock::now() - t0;
    ASSERT_FALSE(first.has_value()) << "read a page from a dead server";
    EXPECT_EQ(first.error().code, make_error_code(guestmem::Errc::page_lost)) << first.error().message();
    EXPECT_LT(waited, std::chrono::seconds(16)) << "the 10 s window (+ one 5 s try) was overrun";
    t0 = std::chrono::steady_clock::now();
    auto second = vm->read(guestmem::Gpa(guestmem::kPageSize), buf);
    ASSERT_FALSE(second.has_value());
    EXPECT_EQ(second.error().code, make_error_code(guestmem::Errc::page_lost));
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2)) << "a second window for the same outage";
    vm->stop();

    const json stats = stats_json(*host_, devices_, StatsDetail::full);
    for (const json& v : stats["vms"])
        if (v["name"] == "gone") {
            EXPECT_GE(v["lost_pages"].get<std::uint64_t>(), 2u);
        }
    for (const json& d : stats["swap"])
        if (d["path"] == uri) {
            EXPECT_GE(d["read_retries_total"].get<std::uint64_t>(), 1u);
        }
}
