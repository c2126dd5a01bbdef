// The one VM spec (vmm/spec/vm_spec.hpp): its rules, and that the command line and
// the control socket's vm-create refuse the same values with the same words
// (issue #17 item 10: the vCPU count used to be checked three times, three ways).
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "vmm/cli/cli.hpp"
#include "vmm/cli/config.hpp"
#include "vmm/control/protocol.hpp"
#include "vmm/spec/vm_spec.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm;

namespace {

class VmSpecTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() / ("swv-spec-" + std::to_string(::getpid()));
        std::filesystem::create_directories(dir_);
        kernel_ = dir_ / "k.elf";
        std::ofstream(kernel_) << "not an ELF, but a regular file";
    }
    void TearDown() override { std::filesystem::remove_all(dir_); }

    VmSpec good() const { return VmSpec{.name = "web-1", .kernel = kernel_, .memory_bytes = 64 * kMiB}; }
    // The message of validate(spec), or "" if it passes.
    static std::string refusal(const VmSpec& spec) {
        auto r = validate(spec);
        if (r) return {};
        EXPECT_EQ(r.error().code, make_error_code(SpecErrc::bad_field));
        return r.error().message();
    }

    std::filesystem::path dir_;
    std::filesystem::path kernel_;
};

}  // namespace

TEST_F(VmSpecTest, AGoodSpecPasses) { EXPECT_EQ(refusal(good()), ""); }

TEST_F(VmSpecTest, EachFieldIsCheckedAndNamed) {
    struct Case {
        const char* field;
        void (*spoil)(VmSpec&);
    };
    const Case cases[] = {
        {"name", [](VmSpec& s) { s.name = ""; }},
        {"name", [](VmSpec& s) { s.name = "-x"; }},
        {"name", [](VmSpec& s) { s.name = "a/b"; }},
        {"name", [](VmSpec& s) { s.name = std::string(65, 'a'); }},
        {"kernel", [](VmSpec& s) { s.kernel = "/nonexistent/k.elf"; }},
        {"kernel", [](VmSpec& s) { s.kernel = "/tmp"; }},
        {"kernel", [](VmSpec& s) { s.kernel.clear(); }},
        {"memory", [](VmSpec& s) { s.memory_bytes = 0; }},
        {"memory", [](VmSpec& s) { s.memory_bytes = 3 * kMiB; }},
        {"memory", [](VmSpec& s) { s.memory_bytes = kMaxGuestMemory + kGuestMemoryAlign; }},
        {"vcpus", [](VmSpec& s) { s.vcpus = 0; }},
        {"vcpus", [](VmSpec& s) { s.vcpus = kMaxVcpus + 1; }},
        {"cmdline", [](VmSpec& s) { s.cmdline.assign(kMaxCmdline + 1, 'x'); }},
        {"cmdline", [](VmSpec& s) { s.cmdline = std::string("a\0b", 3); }},
        {"resident_limit", [](VmSpec& s) { s.resident_limit = 4096; }},
        {"resident_limit", [](VmSpec& s) { s.resident_limit = kMinMemoryLimit + 1; }},
        {"tuning", [](VmSpec& s) { s.tuning.auto_floor = 32 * kMiB; }},  // auto-* without resident-limit=auto
        {"tuning", [](VmSpec& s) { s.auto_limit = true; s.tuning.auto_stall_target = 0; }},
        {"tuning", [](VmSpec& s) { s.auto_limit = true; s.tuning.auto_stall_target = 0.6; }},
        {"tuning", [](VmSpec& s) { s.auto_limit = true; s.tuning.auto_floor = 4096; }},
        {"tuning", [](VmSpec& s) { s.auto_limit = true; s.tuning.auto_ceiling = 128 * kMiB; }},
        {"tuning", [](VmSpec& s) { s.auto_limit = true; s.tuning.auto_floor = 48 * kMiB; s.tuning.auto_ceiling = 32 * kMiB; }},
        {"tuning", [](VmSpec& s) { s.tuning.age_scan = kMaxAgeScan * 2; }},
        {"balloon_stats_interval", [](VmSpec& s) { s.balloon_stats_interval = kMaxBalloonStatsInterval * 2; }},
        {"serial_log", [](VmSpec& s) { s.serial_log = "/nonexistent-dir/serial.log"; }},
        {"serial_log", [](VmSpec& s) { s.serial_log = "/tmp"; }},
    };
    for (const Case& c : cases) {
        VmSpec spec = good();
        c.spoil(spec);
        EXPECT_NE(refusal(spec).find(std::string("field \"") + c.field + "\""), std::string::npos)
            << "expected a refusal naming " << c.field << ", got: " << refusal(spec);
    }
}

TEST_F(VmSpecTest, BoundariesPass) {
    VmSpec spec = good();
    spec.vcpus = kMaxVcpus;
    spec.cmdline.assign(kMaxCmdline, 'x');
    spec.resident_limit = kMinMemoryLimit;
    spec.memory_bytes = kMaxGuestMemory;
    spec.balloon_stats_interval = kMaxBalloonStatsInterval;
    spec.serial_log = dir_ / "serial.log";  // not there yet: its directory is
    EXPECT_EQ(refusal(spec), "");
}

// The same vCPU count refused on the command line (--vcpus, --vm vcpus=) and on the
// socket (vm-create), in the words of the one rule.
TEST_F(VmSpecTest, CommandLineAndSocketRefuseTheSameVcpusAlike) {
    const std::string rule = check_vcpus(256);
    ASSERT_FALSE(rule.empty());
    auto run = cli::parse_command_line({"run", "--kernel", kernel_.string(), "--vcpus", "256"});
    ASSERT_TRUE(std::holds_alternative<cli::CliExit>(run));
    EXPECT_NE(std::get<cli::CliExit>(run).err.find(rule), std::string::npos) << std::get<cli::CliExit>(run).err;

    auto vm = cli::parse_vm_spec("name=a,kernel=" + kernel_.string() + ",vcpus=256");
    ASSERT_FALSE(vm.has_value());
    EXPECT_NE(vm.error().message().find(rule), std::string::npos) << vm.error().message();

    auto request = vmm::control::parse_request(
        R"({"cmd":"vm-create","name":"a","kernel":")" + kernel_.string() + R"(","memory":"64M","vcpus":256})");
    ASSERT_FALSE(request.has_value());
    EXPECT_NE(request.error().message.find(rule), std::string::npos) << request.error().message;
}

// A `run` VM is validated whole, by validate, before anything is made: a serial log
// or a limit the CLI parsers let through would still be caught here.
TEST_F(VmSpecTest, RunChecksEveryVmByTheSameRules) {
    auto parsed = cli::parse_command_line(
        {"run", "--kernel", kernel_.string(), "--vm", "name=b,kernel=/nonexistent/b.elf,memory=64M"});
    ASSERT_TRUE(std::holds_alternative<cli::RunConfig>(parsed));
    auto refused = cli::check_run_files(std::get<cli::RunConfig>(parsed));
    ASSERT_TRUE(refused.has_value());
    EXPECT_NE(refused->err.find("field \"kernel\""), std::string::npos) << refused->err;
    EXPECT_NE(refused->err.find("/nonexistent/b.elf"), std::string::npos) << refused->err;
}

// vm-create's request becomes the same type `run` fills in.
TEST_F(VmSpecTest, VmCreateParsesIntoTheOneSpec) {
    auto request = vmm::control::parse_request(R"({"cmd":"vm-create","name":"a","kernel":")" + kernel_.string() +
                                               R"(","memory":"64M","vcpus":2,"balloon":true,"cmdline":"x=1"})");
    ASSERT_TRUE(request.has_value());
    const VmSpec& spec = std::get<vmm::control::VmCreateCmd>(request->command).spec;
    EXPECT_EQ(spec, (VmSpec{.name = "a", .kernel = kernel_, .cmdline = "x=1", .memory_bytes = 64 * kMiB, .vcpus = 2,
                            .balloon = true}));
    EXPECT_EQ(refusal(spec), "");
}

// Per-VM tuning (issue #20): the controller's stall target, floor and ceiling and the
// age scan, the same from run's flags, --vm, and vm-create; the age scan a VM gets.
TEST_F(VmSpecTest, TuningIsTheSameFromEveryEntry) {
    const MemoryTuning want{.auto_stall_target = 0.005, .auto_floor = 32 * kMiB, .auto_ceiling = 48 * kMiB,
                            .age_scan = std::chrono::milliseconds(2500), .age_sample = 4};
    auto run = cli::parse_command_line({"run", "--kernel", kernel_.string(), "--memory", "64M", "--resident-limit", "auto",
                                        "--auto-stall", "0.5%", "--auto-floor", "32M", "--auto-ceiling", "48M",
                                        "--age-scan", "2.5", "--age-sample", "4", "--vm",
                                        "name=b,kernel=" + kernel_.string() + ",memory=64M,resident-limit=auto,"
                                        "auto-stall=0.5,auto-floor=32M,auto-ceiling=48M,age-scan=2.5,age-sample=4"});
    ASSERT_TRUE(std::holds_alternative<cli::RunConfig>(run)) << std::get<cli::CliExit>(run).err;
    for (const VmSpec& vm : std::get<cli::RunConfig>(run).all_vms()) EXPECT_EQ(vm.tuning, want) << vm.name;
    auto created = control::parse_request(
        R"({"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M","resident_limit":"auto",)"
        R"("auto_stall_pct":0.5,"auto_floor":"32M","auto_ceiling":"48M","age_scan_ms":2500,"age_scan_sample":4})");
    ASSERT_TRUE(created.has_value()) << created.error().message;
    EXPECT_EQ(std::get<control::VmCreateCmd>(created->command).spec.tuning, want);

    // run --age-scan is the default of every --vm that names none; off is 0; an auto VM
    // without its own scans every 5 s.
    auto defaults = cli::parse_command_line({"run", "--kernel", kernel_.string(), "--age-scan", "off", "--vm",
                                             "name=b,kernel=k,age-scan=7", "--vm", "name=c,kernel=k,resident-limit=auto"});
    ASSERT_TRUE(std::holds_alternative<cli::RunConfig>(defaults)) << std::get<cli::CliExit>(defaults).err;
    auto vms = std::get<cli::RunConfig>(defaults).all_vms();
    ASSERT_EQ(vms.size(), 3u);
    EXPECT_EQ(age_scan_of(vms[0], kDefaultAgeScan), std::chrono::milliseconds(0));
    EXPECT_EQ(age_scan_of(vms[1], kDefaultAgeScan), std::chrono::milliseconds(7000));
    EXPECT_EQ(age_scan_of(vms[2], kDefaultAgeScan), kAutoAgeScan);
    EXPECT_EQ(age_scan_of(good(), kDefaultAgeScan), kDefaultAgeScan);
    // The sample: an auto VM's default zaps 1/8 of its pages per period; a spec's own
    // sample wins, auto or not; otherwise every page.
    EXPECT_EQ(age_sample_of(vms[2]), kAutoAgeSample);
    EXPECT_EQ(age_sample_of(good()), 1u);
    VmSpec sampled = vms[2];
    sampled.tuning.age_sample = 1;
    EXPECT_EQ(age_sample_of(sampled), 1u) << "an auto VM asked for a full scan gets one";
    EXPECT_EQ(kDefaultAgeScan, std::chrono::milliseconds(0)) << "off unless asked for (DESIGN-NOTES 44)";

    // Bad values are refused by name, before anything is built.
    for (std::vector<std::string> bad : {std::vector<std::string>{"--auto-stall", "lots"},
                                         {"--age-scan", "-1"}, {"--age-scan", "7200"}, {"--age-sample", "0"},
                                         {"--age-sample", "65"}, {"--age-sample", "2.5"}, {"--auto-floor", "0"},
                                         {"--auto-floor", "32M"} /* without auto */}) {
        std::vector<std::string> args{"run", "--kernel", kernel_.string()};
        args.insert(args.end(), bad.begin(), bad.end());
        auto out = cli::parse_command_line(args);
        ASSERT_TRUE(std::holds_alternative<cli::CliExit>(out)) << bad[0] << " " << bad[1];
        EXPECT_NE(std::get<cli::CliExit>(out).err.find(bad[0] == "--auto-floor" && bad[1] == "32M" ? "auto-floor" : bad[0]),
                  std::string::npos)
            << std::get<cli::CliExit>(out).err;
    }
    EXPECT_FALSE(control::parse_request(R"({"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M","age_scan_ms":-5})")
                     .has_value());
    EXPECT_FALSE(control::parse_request(R"({"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M","auto_floor":0})")
                     .has_value());
    for (const char* bad : {"0", "65", "-1", "2.5", "\"4\""})
        EXPECT_FALSE(control::parse_request(fmt::format(
                                                R"({{"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M","age_scan_sample":{}}})",
                                                bad))
                         .has_value())
            << bad;
}
