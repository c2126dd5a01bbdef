// End-to-end boots of the built swapvisor binary (SWV_BUILD_DIR "/swapvisor") on the
// example guests from examples/: the exit status is the guest's debug-exit code and
// stdout carries its serial output with the `RESULT {json}` line. Also the operator
// errors: a missing kernel and a file that is not ELF. Suites are Privileged*: they
// need /dev/kvm and userfaultfd, and skip loudly only when /dev/kvm is absent.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

namespace fs = std::filesystem;

const fs::path kBuild = SWV_BUILD_DIR;
const fs::path kSwapvisor = kBuild / "swapvisor";

struct ProcessResult {
    int status = -1;
    std::string out;
    std::string err;
};

// Run the binary with args; stdout and stderr captured through temp files.
ProcessResult run_swapvisor(const std::string& args) {
    fs::path out = fs::temp_directory_path() / ("swv_boot_out_" + std::to_string(::getpid()));
    fs::path err = fs::temp_directory_path() / ("swv_boot_err_" + std::to_string(::getpid()));
    std::string cmd = "timeout 120 " + kSwapvisor.string() + " " + args + " >" + out.string() + " 2>" + err.string();
    int rc = std::system(cmd.c_str());
    ProcessResult r;
    r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    auto slurp = [](const fs::path& p) {
        std::ifstream in(p);
        return std::string(std::istreambuf_iterator<char>(in), {});
    };
    r.out = slurp(out);
    r.err = slurp(err);
    fs::remove(out);
    fs::remove(err);
    return r;
}

// The JSON of the one `RESULT {...}` line, or null.
nlohmann::json result_line(const std::string& out) {
    std::size_t pos = out.find("RESULT ");
    if (pos == std::string::npos) return nullptr;
    std::size_t end = out.find('\n', pos);
    return nlohmann::json::parse(out.substr(pos + 7, end - pos - 7), nullptr, false);
}

class PrivilegedBootTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (::access("/dev/kvm", R_OK | W_OK) != 0) {
            GTEST_SKIP() << "*** /dev/kvm is not available: swapvisor boot tests SKIPPED ***";
        }
        ASSERT_TRUE(fs::exists(kSwapvisor)) << kSwapvisor << " not built";
    }
    fs::path example(const char* name) {
        fs::path p = kBuild / "examples" / name;
        EXPECT_TRUE(fs::exists(p)) << p << " not built (target " << name << ")";
        return p;
    }
};

TEST_F(PrivilegedBootTest, HelloPrintsResultAndExitsZero) {
    ProcessResult r = run_swapvisor("run --kernel " + example("hello.elf").string() + " --cmdline 'hello from the test'");
    EXPECT_EQ(r.status, 0) << r.err;
    nlohmann::json res = result_line(r.out);
    ASSERT_TRUE(res.is_object()) << r.out;
    EXPECT_EQ(res["guest"], "hello");
    EXPECT_EQ(res["ok"], true);
    EXPECT_NE(r.out.find("hello from the test"), std::string::npos) << "command line not seen by the guest:\n" << r.out;
}

TEST_F(PrivilegedBootTest, HelloWithSeveralVcpusAndHighMemory) {
    ProcessResult r = run_swapvisor("run --kernel " + example("hello.elf").string() + " --vcpus 2 --memory 4G");
    EXPECT_EQ(r.status, 0) << r.err;
    nlohmann::json res = result_line(r.out);
    ASSERT_TRUE(res.is_object()) << r.out;
    EXPECT_EQ(res["ok"], true);
    // 4 GiB: low RAM to 3 GiB and 1 GiB above 4 GiB, the hole absent.
    EXPECT_NE(r.out.find("0x0000000100000000 - 0x0000000140000000"), std::string::npos) << r.out;
}

// A CPU exception in the guest ends the VM with the runtime's one-line report and
// exit 112 instead of a bare triple fault (examples/README.md#exceptions), on the BSP
// and on an AP (its own ring-0 stack).
TEST_F(PrivilegedBootTest, GuestExceptionIsReportedWithVectorAndAddresses) {
    ProcessResult ud = run_swapvisor("run --kernel " + example("hello.elf").string() + " --cmdline fault=ud");
    EXPECT_EQ(ud.status, 112) << ud.err;
    EXPECT_NE(ud.out.find("rt: guest exception #UD vector 0x06 error 0x00000000 rip 0x"), std::string::npos) << ud.out;

    ProcessResult pf = run_swapvisor("run --kernel " + example("hello.elf").string() +
                                     " --vcpus 2 --cmdline 'fault=pf fault-cpu=1'");
    EXPECT_EQ(pf.status, 112) << pf.err;
    EXPECT_NE(pf.out.find("rt: guest exception #PF vector 0x0e error 0x00000004 rip 0x"), std::string::npos) << pf.out;
    // The read is of the first address past the identity map, whose end depends on the
    // CPU (512 GiB with 1 GiB pages, 4 GiB without: a PVM host has none): the guest
    // prints it, and cr2 must name exactly that address.
    const std::string mapped = "identity map up to 0x";
    const std::size_t at = pf.out.find(mapped);
    ASSERT_NE(at, std::string::npos) << pf.out;
    const std::uint64_t limit = std::stoull(pf.out.substr(at + mapped.size(), 16), nullptr, 16);
    std::array<char, 40> cr2{};
    std::snprintf(cr2.data(), cr2.size(), " cr2 0x%016llx ", static_cast<unsigned long long>(limit));
    EXPECT_NE(pf.out.find(cr2.data()), std::string::npos) << pf.out;
}

TEST_F(PrivilegedBootTest, MemtouchVerifiesEveryPage) {
    ProcessResult r = run_swapvisor("run --kernel " + example("memtouch.elf").string() + " --memory 128M");
    EXPECT_EQ(r.status, 0) << r.err;
    nlohmann::json res = result_line(r.out);
    ASSERT_TRUE(res.is_object()) << r.out;
    EXPECT_EQ(res["guest"], "memtouch");
    EXPECT_EQ(res["ok"], true);
    EXPECT_EQ(res["errors"], 0);
}

TEST_F(PrivilegedBootTest, MemtouchUnderOvercommitWithSwapAndStats) {
    fs::path swap = fs::temp_directory_path() / ("swv_boot_swap_" + std::to_string(::getpid()));
    fs::path stats = fs::temp_directory_path() / ("swv_boot_stats_" + std::to_string(::getpid()) + ".json");
    ProcessResult r = run_swapvisor("run --kernel " + example("memtouch.elf").string() +
                          " --memory 128M --resident-limit 32M --swap " + swap.string() +
                          ",priority=1,size=256M --stats-json " + stats.string());
    EXPECT_EQ(r.status, 0) << r.err;
    nlohmann::json res = result_line(r.out);
    ASSERT_TRUE(res.is_object()) << r.out;
    EXPECT_EQ(res["ok"], true);
    EXPECT_EQ(res["errors"], 0);
    std::ifstream in(stats);
    nlohmann::json s = nlohmann::json::parse(in, nullptr, false);
    ASSERT_TRUE(s.is_object()) << "no stats JSON at " << stats;
    ASSERT_EQ(s["vms"].size(), 1u) << s.dump();
    const nlohmann::json& vm = s["vms"][0];
    EXPECT_GT(vm["swap_out_pages"].get<std::uint64_t>(), 0u) << s.dump();
    EXPECT_EQ(vm["lost_pages"], 0);
    EXPECT_EQ(vm["exit_code"], 0);
    EXPECT_LE(vm["resident_bytes_peak"].get<std::uint64_t>(), (32u << 20) * 11 / 10);
    ASSERT_EQ(s["swap"].size(), 1u);
    EXPECT_EQ(s["swap"][0]["used_slots"], s["host"]["allocated_vslots"]);
    fs::remove(swap);
    fs::remove(stats);
}

// --balloon goes through the device manager: the guest's command line names the
// first virtio-mmio window and GSI 5, and --stats-json carries the balloon's
// counters (the same registry the control socket's status / stats read) for the VM
// that has one and only for it.
TEST_F(PrivilegedBootTest, BalloonIsAnnouncedAndItsCountersReachStatsJson) {
    fs::path stats = fs::temp_directory_path() / ("swv_boot_balloon_" + std::to_string(::getpid()) + ".json");
    const std::string hello = example("hello.elf").string();
    ProcessResult r = run_swapvisor("run --kernel " + hello + " --cmdline 'hi' --balloon --name withb --vm name=nob,kernel=" +
                                    hello + " --stats-json " + stats.string());
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("hi virtio_mmio.device=4K@0xd0000000:5"), std::string::npos)
        << "guest command line without the balloon's entry:\n" << r.out;
    std::ifstream in(stats);
    nlohmann::json s = nlohmann::json::parse(in, nullptr, false);
    ASSERT_TRUE(s.is_object()) << "no stats JSON at " << stats;
    ASSERT_EQ(s["vms"].size(), 2u) << s.dump();
    for (const nlohmann::json& vm : s["vms"]) {
        if (vm["name"] == "withb") {
            ASSERT_TRUE(vm.contains("balloon")) << s.dump();
            for (const char* key : {"reported_pages", "reported_ranges", "refused_ranges", "inflated_pages",
                                    "deflated_pages", "discard_errors", "target_pages", "actual_pages"})
                EXPECT_TRUE(vm["balloon"].contains(key)) << key << ": " << s.dump();
        } else {
            EXPECT_FALSE(vm.contains("balloon")) << "a balloon counted for a VM without one: " << s.dump();
        }
    }
    fs::remove(stats);
}

TEST_F(PrivilegedBootTest, MissingKernelNamesThePath) {
    ProcessResult r = run_swapvisor("run --kernel /nonexistent/swv/kernel.elf");
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("/nonexistent/swv/kernel.elf"), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");
}

TEST_F(PrivilegedBootTest, NonElfFileIsRefusedClearly) {
    fs::path junk = fs::temp_directory_path() / ("swv_boot_junk_" + std::to_string(::getpid()));
    std::ofstream(junk) << "#!/bin/sh\necho not a kernel\n";
    ProcessResult r = run_swapvisor("run --kernel " + junk.string());
    fs::remove(junk);
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find(junk.string()), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("not an ELF file"), std::string::npos) << r.err;
}

TEST_F(PrivilegedBootTest, UsageErrorExitsTwo) {
    ProcessResult r = run_swapvisor("run --kernel x --memory 3M");
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.err.find("2 MiB"), std::string::npos) << r.err;
}

TEST_F(PrivilegedBootTest, HelpListsTheFlags) {
    ProcessResult r = run_swapvisor("run --help");
    EXPECT_EQ(r.status, 0);
    EXPECT_NE(r.out.find("--resident-limit"), std::string::npos) << r.out;
}

}  // namespace
