// Command-line parsing (vmm/cli): the size, --swap and name parsers, and the whole
// `swapvisor run` parse through CLI11, including --help and usage errors.
#include "vmm/cli/cli.hpp"
#include "vmm/version.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

namespace swapvisor::vmm::cli {
namespace {

TEST(CliSizeTest, AcceptedForms) {
    EXPECT_EQ(parse_size("1048576").value(), 1048576u);
    EXPECT_EQ(parse_size("512M").value(), 512ULL << 20);
    EXPECT_EQ(parse_size("4G").value(), 4ULL << 30);
    EXPECT_EQ(parse_size("2GiB").value(), 2ULL << 30);
    EXPECT_EQ(parse_size("64k").value(), 64ULL << 10);
    EXPECT_EQ(parse_size("1T").value(), 1ULL << 40);
    EXPECT_EQ(parse_size("3mib").value(), 3ULL << 20);
    EXPECT_EQ(parse_size("4096B").value(), 4096u);
    EXPECT_EQ(parse_size("0").value(), 0u);
}

TEST(CliSizeTest, Rejections) {
    auto has = [](const Result<std::uint64_t>& r, const char* fragment) {
        return !r.has_value() && r.error().message().find(fragment) != std::string::npos;
    };
    EXPECT_TRUE(has(parse_size(""), "empty"));
    EXPECT_TRUE(has(parse_size("M"), "not a size"));
    EXPECT_TRUE(has(parse_size("-5M"), "not a size"));
    EXPECT_TRUE(has(parse_size("12X"), "unknown suffix 'X'"));
    EXPECT_TRUE(has(parse_size("12MB"), "unknown suffix 'MB'"));
    EXPECT_TRUE(has(parse_size("1.5G"), "unknown suffix '.5G'"));
    EXPECT_TRUE(has(parse_size("16777216T"), "overflows"));
    EXPECT_TRUE(has(parse_size("99999999999999999999999"), "too large"));
}

TEST(CliSizeTest, Aligned) {
    EXPECT_EQ(parse_size_aligned("4M", 2ULL << 20, "2 MiB").value(), 4ULL << 20);
    auto zero = parse_size_aligned("0", 2ULL << 20, "2 MiB");
    ASSERT_FALSE(zero.has_value());
    EXPECT_NE(zero.error().message().find("zero"), std::string::npos);
    auto odd = parse_size_aligned("3M", 2ULL << 20, "2 MiB");
    ASSERT_FALSE(odd.has_value());
    EXPECT_NE(odd.error().message().find("not a multiple of 2 MiB"), std::string::npos) << odd.error().message();
}

TEST(CliSwapSpecTest, Forms) {
    EXPECT_EQ(parse_swap_spec("/dev/nvme0n1").value(), (SwapSpec{"/dev/nvme0n1", std::nullopt, std::nullopt}));
    EXPECT_EQ(parse_swap_spec("/s.img,priority=5,size=1G").value(), (SwapSpec{"/s.img", 5, 1ULL << 30}));
    EXPECT_EQ(parse_swap_spec("s.img,size=64M,priority=0").value(), (SwapSpec{"s.img", 0, 64ULL << 20}));
}

TEST(CliSwapSpecTest, AMemoryTierKeepsItsOptionsInItsName) {
    auto spec = parse_swap_spec("mem:256M,codec=zstd,priority=7,max=2048,high=80,low=50");
    ASSERT_TRUE(spec) << spec.error().message();
    EXPECT_EQ(spec->path, "mem:256M,codec=zstd,max=2048,high=80,low=50");
    EXPECT_EQ(spec->priority, 7);
    EXPECT_EQ(spec->size, std::nullopt);
    EXPECT_EQ(parse_swap_spec("mem:1G").value().path, "mem:1G");
    for (auto [bad, fragment] : {std::pair{"mem:1G,size=1G", "no size="}, {"mem:1G,format=yes", "no format="},
                                 {"mem:1G,codec=gzip", "lz4 or zstd"}, {"mem:huge", "SIZE"},
                                 {"mem:1G,high=50,low=60", "below high"}, {"mem:1G,bogus=1", "unknown option"},
                                 {"/s.img,codec=lz4", "unknown option 'codec'"}}) {
        auto r = parse_swap_spec(bad);
        ASSERT_FALSE(r) << bad;
        EXPECT_NE(r.error().message().find(fragment), std::string::npos) << r.error().message();
    }
}

TEST(CliSwapSpecTest, StrictSubOptions) {
    auto rejects = [](const char* spec, const char* fragment) {
        auto r = parse_swap_spec(spec);
        ASSERT_FALSE(r.has_value()) << spec;
        EXPECT_NE(r.error().message().find(fragment), std::string::npos) << r.error().message();
    };
    rejects("", "path is empty");
    rejects(",priority=1", "path is empty");
    rejects("a,", "empty option");
    rejects("a,priority", "needs a value");
    rejects("a,priority=", "needs a value");
    rejects("a,prio=1", "unknown option 'prio'");
    rejects("a,priority=1,priority=2", "priority given twice");
    rejects("a,size=1G,size=2G", "size given twice");
    rejects("a,priority=-1", "0..32767");
    rejects("a,priority=40000", "0..32767");
    rejects("a,priority=1x", "0..32767");
    rejects("a,size=100", "multiple of 4 KiB");
    rejects("a,size=0", "zero");
    rejects("a,size=1Q", "unknown suffix");
}

TEST(CliNameTest, Names) {
    EXPECT_EQ(parse_vm_name("web-01.prod_a").value(), "web-01.prod_a");
    EXPECT_FALSE(parse_vm_name("").has_value());
    EXPECT_FALSE(parse_vm_name("-x").has_value());
    EXPECT_FALSE(parse_vm_name("a b").has_value());
    EXPECT_FALSE(parse_vm_name("a/b").has_value());
    EXPECT_FALSE(parse_vm_name(std::string(65, 'a')).has_value());
}

RunConfig run_ok(std::vector<std::string> args) {
    CliOutcome out = parse_command_line(args);
    if (auto* e = std::get_if<CliExit>(&out)) {
        ADD_FAILURE() << "unexpected exit " << e->status << ": " << e->err;
        return {};
    }
    return std::get<RunConfig>(out);
}

CliExit run_exit(std::vector<std::string> args) {
    CliOutcome out = parse_command_line(args);
    if (auto* e = std::get_if<CliExit>(&out)) return *e;
    ADD_FAILURE() << "expected the parse to end the program";
    return {};
}

TEST(CliParseTest, Defaults) {
    RunConfig c = run_ok({"run", "--kernel", "k.elf"});
    EXPECT_EQ(c.kernel, "k.elf");
    EXPECT_EQ(c.cmdline, "");
    EXPECT_EQ(c.memory_bytes, kDefaultMemory);
    EXPECT_EQ(c.vcpus, 1u);
    EXPECT_EQ(c.resident_limit, 0u);
    EXPECT_TRUE(c.swaps.empty());
    EXPECT_FALSE(c.stats_json.has_value());
    EXPECT_FALSE(c.control_socket.has_value());
    EXPECT_EQ(c.name, "vm0");
    EXPECT_FALSE(c.balloon);
}

TEST(CliParseTest, EveryOption) {
    RunConfig c = run_ok({"run", "--kernel", "/k", "--cmdline", "console=ttyS0 a=b", "--memory", "4G", "--vcpus", "4",
                          "--resident-limit", "1G", "--swap", "/dev/nvme0n1,priority=10", "--swap",
                          "/var/swap.img,size=8G", "--stats-json", "/tmp/s.json", "--control", "/run/swv.sock",
                          "--name", "vm-a", "--balloon"});
    EXPECT_EQ(c.kernel, "/k");
    EXPECT_EQ(c.cmdline, "console=ttyS0 a=b");
    EXPECT_EQ(c.memory_bytes, 4ULL << 30);
    EXPECT_EQ(c.vcpus, 4u);
    EXPECT_EQ(c.resident_limit, 1ULL << 30);
    ASSERT_EQ(c.swaps.size(), 2u);
    EXPECT_EQ(c.swaps[0], (SwapSpec{"/dev/nvme0n1", 10, std::nullopt}));
    EXPECT_EQ(c.swaps[1], (SwapSpec{"/var/swap.img", std::nullopt, 8ULL << 30}));
    EXPECT_EQ(c.stats_json.value(), "/tmp/s.json");
    EXPECT_EQ(c.control_socket.value(), "/run/swv.sock");
    EXPECT_EQ(c.name, "vm-a");
    EXPECT_TRUE(c.balloon);
}

TEST(CliParseTest, HelpExplainsEveryFlag) {
    CliExit e = run_exit({"run", "--help"});
    EXPECT_EQ(e.status, 0);
    for (const char* flag : {"--kernel", "--cmdline", "--memory", "--vcpus", "--resident-limit", "--swap",
                             "--stats-json", "--control", "--name", "--balloon"}) {
        EXPECT_NE(e.out.find(flag), std::string::npos) << flag << " missing from:\n" << e.out;
    }
    EXPECT_NE(e.out.find("2 MiB"), std::string::npos);
    CliExit top = run_exit({"--help"});
    EXPECT_EQ(top.status, 0);
    EXPECT_NE(top.out.find("run"), std::string::npos);
}

TEST(CliParseTest, UsageErrors) {
    auto usage = [](std::vector<std::string> args, const char* fragment) {
        CliExit e = run_exit(args);
        EXPECT_EQ(e.status, kExitUsage);
        EXPECT_NE(e.err.find(fragment), std::string::npos) << e.err;
    };
    usage({}, "subcommand");
    usage({"run"}, "--kernel");
    // `ctl status` without --socket is no error: run_ctl uses $SWAPVISOR_SOCKET or the default.
    EXPECT_TRUE(std::holds_alternative<control::CtlOptions>(parse_command_line({"ctl", "status"})));
    usage({"run", "--vm", "name=a,memory=1G"}, "kernel= is required");
    usage({"run", "--vm", "name=a,kernel=k,colour=red"}, "unknown option 'colour'");
    usage({"run", "--kernel", "k", "--vm", "name=vm0,kernel=k"}, "two VMs are named 'vm0'");
    usage({"run", "--kernel", "k", "--host-budget", "1X"}, "--host-budget");
    usage({"run", "--kernel", "k", "--memory", "3M"}, "not a multiple of 2 MiB");
    usage({"run", "--kernel", "k", "--memory", "0"}, "zero");
    usage({"run", "--kernel", "k", "--memory", "4X"}, "unknown suffix");
    usage({"run", "--kernel", "k", "--vcpus", "0"}, "--vcpus");
    usage({"run", "--kernel", "k", "--vcpus", "256"}, "--vcpus");
    usage({"run", "--kernel", "k", "--vcpus", "two"}, "--vcpus");
    usage({"run", "--kernel", "k", "--swap", "a,bogus=1"}, "unknown option 'bogus'");
    usage({"run", "--kernel", "k", "--swap", "a", "--swap", "a"}, "given twice");
    usage({"run", "--kernel", "k", "--resident-limit", "100"}, "--resident-limit");
    usage({"run", "--kernel", "k", "--name", "bad name"}, "--name");
    usage({"run", "--kernel", "k", "--frobnicate"}, "frobnicate");
    usage({"ctl"}, "subcommand");  // `ctl` belongs to the control-socket work, not here
}

TEST(CliParseTest, SeveralVmsShareOneProcess) {
    auto outcome = parse_command_line({"run", "--kernel", "a.elf", "--name", "a", "--memory", "1G", "--host-budget",
                                       "512M", "--vm",
                                       "name=b,kernel=b.elf,memory=2G,vcpus=2,resident-limit=128M,balloon,"
                                       "cmdline=mib=100 passes=2,x=y"});
    ASSERT_TRUE(std::holds_alternative<RunConfig>(outcome));
    const RunConfig& c = std::get<RunConfig>(outcome);
    EXPECT_EQ(c.host_budget, 512ULL << 20);
    auto vms = c.all_vms();
    ASSERT_EQ(vms.size(), 2u);
    EXPECT_EQ(vms[0].name, "a");
    EXPECT_EQ(vms[0].memory_bytes, 1ULL << 30);
    EXPECT_EQ(vms[1], (VmSpec{.name = "b", .kernel = "b.elf", .cmdline = "mib=100 passes=2,x=y", .memory_bytes = 2ULL << 30,
                              .vcpus = 2, .resident_limit = 128ULL << 20, .balloon = true}));
    // resident-limit=auto (issue #20), in --vm and at the top level; serve --auto-limits.
    auto with_auto = parse_command_line(
        {"run", "--kernel", "a.elf", "--resident-limit", "auto", "--vm", "name=b,kernel=b.elf,resident-limit=auto"});
    ASSERT_TRUE(std::holds_alternative<RunConfig>(with_auto));
    for (const VmSpec& v : std::get<RunConfig>(with_auto).all_vms()) {
        EXPECT_TRUE(v.auto_limit) << v.name;
        EXPECT_EQ(v.resident_limit, 0u) << v.name;
    }
    auto serve = parse_command_line({"serve", "--control", "/tmp/x.sock", "--auto-limits"});
    ASSERT_TRUE(std::holds_alternative<ServeConfig>(serve));
    EXPECT_TRUE(std::get<ServeConfig>(serve).auto_limits);
    // --vm alone (no top-level --kernel) is enough.
    auto only = parse_command_line({"run", "--vm", "name=c,kernel=c.elf"});
    ASSERT_TRUE(std::holds_alternative<RunConfig>(only));
    EXPECT_EQ(std::get<RunConfig>(only).all_vms().size(), 1u);
}

// The parsers' errors are Results in the project's error model: the code names the
// kind of value refused, and an inner error (a bad size inside --swap or --vm) goes
// up with its own code and the outer value added to its context.
TEST(CliErrorModel, CodesAndContext) {
    auto size = parse_size("12X");
    ASSERT_FALSE(size.has_value());
    EXPECT_EQ(size.error().code, make_error_code(CliErrc::bad_size));
    auto swap = parse_swap_spec("a.img,priority=1,priority=2");
    ASSERT_FALSE(swap.has_value());
    EXPECT_EQ(swap.error().code, make_error_code(CliErrc::bad_swap_spec));
    auto nested = parse_swap_spec("a.img,size=12X");
    ASSERT_FALSE(nested.has_value());
    EXPECT_EQ(nested.error().code, make_error_code(CliErrc::bad_size)) << nested.error().message();
    EXPECT_NE(nested.error().message().find("--swap 'a.img,size=12X'"), std::string::npos) << nested.error().message();
    EXPECT_NE(nested.error().message().find("unknown suffix 'X'"), std::string::npos) << nested.error().message();
    auto name = parse_vm_spec("name=-x,kernel=k.elf");
    ASSERT_FALSE(name.has_value());
    EXPECT_EQ(name.error().code, make_error_code(CliErrc::bad_vm_name)) << name.error().message();
}

// Issue #12: inputs that aborted, hung or livelocked on main are usage errors (2).
TEST(CliBoundsTest, OutOfRangeInputsAreUsageErrorsNamingTheBound) {
    auto usage = [](std::vector<std::string> args, const char* fragment) {
        CliExit e = run_exit(args);
        EXPECT_EQ(e.status, kExitUsage) << e.err;
        EXPECT_NE(e.err.find(fragment), std::string::npos) << e.err;
    };
    usage({"run", "--kernel", "k", "--memory", "16T"}, "more than this host can map");
    usage({"run", "--vm", "name=a,kernel=k,memory=9T"}, "more than this host can map");
    usage({"run", "--kernel", "k", "--resident-limit", "4K"}, "minimum of 16 MiB");
    usage({"run", "--kernel", "k", "--host-budget", "4K"}, "minimum of 16 MiB");
    usage({"run", "--vm", "name=a,kernel=k,resident-limit=8M"}, "minimum of 16 MiB");
    usage({"run", "--kernel", "k", "--cmdline", std::string(5000, 'a')}, "at most 4095");
    usage({"run", "--kernel", "k", "--swap", "a,format=maybe"}, "yes, no or force");
    // The largest accepted values still parse.
    EXPECT_EQ(run_ok({"run", "--kernel", "k", "--memory", std::to_string(kMaxGuestMemory)}).memory_bytes,
              kMaxGuestMemory);
    EXPECT_EQ(run_ok({"run", "--kernel", "k", "--resident-limit", "16M"}).resident_limit, 16ULL << 20);
    EXPECT_EQ(run_ok({"run", "--kernel", "k", "--cmdline", std::string(4095, 'a')}).cmdline.size(), 4095u);
    EXPECT_EQ(parse_swap_spec("a,format=yes").value().format, swap::Format::yes);
}

// Issue #12: a FIFO as --kernel blocked forever in open; --stats-json into a missing
// directory was reported after the guest ran, with exit 0.
TEST(CliBoundsTest, KernelMustBeARegularFileAndOutputsWritable) {
    std::string tmpl = "/tmp/swv-cli-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    const std::filesystem::path dir = tmpl;
    ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
    { std::ofstream(dir / "k.elf") << "x"; }
    auto config = [&](std::vector<std::string> args) { return run_ok(std::move(args)); };

    auto fifo = check_run_files(config({"run", "--kernel", (dir / "fifo").string()}));
    ASSERT_TRUE(fifo.has_value());
    EXPECT_EQ(fifo->status, kExitUsage);
    EXPECT_NE(fifo->err.find("not a regular file"), std::string::npos) << fifo->err;
    auto missing = check_run_files(
        config({"run", "--kernel", (dir / "k.elf").string(), "--stats-json", (dir / "no/such/dir/s.json").string()}));
    ASSERT_TRUE(missing.has_value());
    EXPECT_EQ(missing->status, kExitUsage);
    EXPECT_NE(missing->err.find("does not exist"), std::string::npos) << missing->err;
    auto isdir = check_run_files(config({"run", "--kernel", (dir / "k.elf").string(), "--stats-json", dir.string()}));
    ASSERT_TRUE(isdir.has_value());
    EXPECT_FALSE(check_run_files(
                     config({"run", "--kernel", (dir / "k.elf").string(), "--stats-json", (dir / "s.json").string()}))
                     .has_value());
    std::filesystem::remove_all(dir);
}

TEST(CliMkswapTest, ParsesPathAndSize) {
    auto out = parse_command_line({"mkswap", "/x.swap", "--size", "64M"});
    ASSERT_TRUE(std::holds_alternative<MkswapOptions>(out));
    EXPECT_EQ(std::get<MkswapOptions>(out).path, "/x.swap");
    EXPECT_EQ(std::get<MkswapOptions>(out).size_bytes, 64ULL << 20);
    EXPECT_EQ(std::get<MkswapOptions>(parse_command_line({"mkswap", "/dev/sdz"})).size_bytes, 0u);
    CliExit bad = run_exit({"mkswap", "/x", "--size", "100"});
    EXPECT_EQ(bad.status, kExitUsage);
    EXPECT_EQ(run_exit({"mkswap"}).status, kExitUsage);
}

}  // namespace

TEST(CliParseTest, SwapQuotaAndLogLevelOnRunAndInVmSpecs) {
    RunConfig c = run_ok({"run", "--kernel", "k.elf", "--swap-quota", "1G", "--log-level", "debug", "--vm",
                          "name=b,kernel=b.elf,memory=64M,swap-quota=256M"});
    EXPECT_EQ(c.swap_quota, 1ULL << 30);
    EXPECT_EQ(c.log_level, "debug");
    auto vms = c.all_vms();
    ASSERT_EQ(vms.size(), 2u);
    EXPECT_EQ(vms[0].swap_quota, 1ULL << 30);
    EXPECT_EQ(vms[1].swap_quota, 256ULL << 20);
    EXPECT_EQ(run_exit({"run", "--kernel", "k.elf", "--swap-quota", "lots"}).status, kExitUsage);
    EXPECT_EQ(run_exit({"run", "--kernel", "k.elf", "--log-level", "chatty"}).status, kExitUsage);
    auto twice = parse_vm_spec("name=b,kernel=b.elf,swap-quota=1M,swap-quota=2M");
    ASSERT_FALSE(twice.has_value());
    EXPECT_NE(twice.error().message().find("swap-quota given twice"), std::string::npos);
}

TEST(CliParseTest, ServeNeedsAControlSocketAndTakesSwapBudgetMetrics) {
    CliOutcome out = parse_command_line({"serve", "--control", "/run/s.sock", "--swap", "/a.swap,size=1G",
                                         "--swap", "/b.swap,priority=3", "--host-budget", "2G", "--metrics",
                                         "127.0.0.1:9477", "--log-level", "warn"});
    auto* serve = std::get_if<ServeConfig>(&out);
    ASSERT_NE(serve, nullptr) << (std::holds_alternative<CliExit>(out) ? std::get<CliExit>(out).err : "");
    EXPECT_EQ(serve->control_socket, "/run/s.sock");
    ASSERT_EQ(serve->swaps.size(), 2u);
    EXPECT_EQ(serve->swaps[1].priority, 3);
    EXPECT_EQ(serve->host_budget, 2ULL << 30);
    EXPECT_EQ(serve->metrics, "127.0.0.1:9477");
    EXPECT_EQ(serve->log_level, "warn");
    // Without --control: $SWAPVISOR_SOCKET, else the default ctl uses too.
    unsetenv("SWAPVISOR_SOCKET");
    CliOutcome no_socket = parse_command_line({"serve", "--swap", "/a.swap"});
    ASSERT_TRUE(std::holds_alternative<ServeConfig>(no_socket));
    EXPECT_EQ(std::get<ServeConfig>(no_socket).control_socket, "/run/swapvisor/control.sock");
    setenv("SWAPVISOR_SOCKET", "/tmp/env.sock", 1);
    EXPECT_EQ(std::get<ServeConfig>(parse_command_line({"serve"})).control_socket, "/tmp/env.sock");
    unsetenv("SWAPVISOR_SOCKET");
    EXPECT_EQ(run_exit({"serve", "--control", "s", "--swap", "/a,/b"}).status, kExitUsage);
    EXPECT_EQ(run_exit({"serve", "--control", "s", "--host-budget", "1M"}).status, kExitUsage);
    EXPECT_EQ(run_exit({"serve", "--control", "s", "--swap", "/a", "--swap", "/a"}).status, kExitUsage);
}

TEST(CliParseTest, BalloonStatsIntervalOnRunAndServe) {
    using std::chrono::milliseconds;
    RunConfig d = run_ok({"run", "--kernel", "k.elf", "--balloon"});
    EXPECT_EQ(d.balloon_stats_interval, milliseconds(2000));
    RunConfig c = run_ok({"run", "--kernel", "k.elf", "--balloon", "--balloon-stats-interval", "0.25", "--vm",
                          "name=b,kernel=b.elf,balloon"});
    EXPECT_EQ(c.balloon_stats_interval, milliseconds(250));
    for (const VmSpec& vm : c.all_vms()) EXPECT_EQ(vm.balloon_stats_interval, milliseconds(250)) << vm.name;
    EXPECT_EQ(run_ok({"run", "--kernel", "k.elf", "--balloon-stats-interval", "0"}).balloon_stats_interval,
              milliseconds(0));
    for (const char* bad : {"-1", "3601", "nan", "soon"}) {
        CliExit e = run_exit({"run", "--kernel", "k.elf", "--balloon-stats-interval", bad});
        EXPECT_EQ(e.status, kExitUsage) << bad;
    }
    CliExit negative = run_exit({"run", "--kernel", "k.elf", "--balloon-stats-interval", "-1"});
    EXPECT_NE(negative.err.find("0..3600"), std::string::npos) << negative.err;
    CliOutcome out = parse_command_line({"serve", "--control", "s", "--balloon-stats-interval", "5"});
    auto* serve = std::get_if<ServeConfig>(&out);
    ASSERT_NE(serve, nullptr) << (std::holds_alternative<CliExit>(out) ? std::get<CliExit>(out).err : "");
    EXPECT_EQ(serve->balloon_stats_interval, milliseconds(5000));
    EXPECT_EQ(run_exit({"serve", "--control", "s", "--balloon-stats-interval", "-0.5"}).status, kExitUsage);
}

}  // namespace swapvisor::vmm::cli

namespace swapvisor::vmm::cli {

// Issue #17 item 8/9: --version answers, and a typo is named, not "A subcommand is required".
TEST(CliParseTest, VersionAndUnknownCommands) {
    CliExit v = run_exit({"--version"});
    EXPECT_EQ(v.status, 0);
    EXPECT_NE(v.out.find("swapvisor " + std::string(kVersion)), std::string::npos) << v.out;
    EXPECT_EQ(v.out, version_text() + "\n");
    CliExit typo = run_exit({"sreve", "--control", "s"});
    EXPECT_EQ(typo.status, kExitUsage);
    EXPECT_NE(typo.err.find("unknown command 'sreve'"), std::string::npos) << typo.err;
    EXPECT_NE(typo.err.find("did you mean 'serve'"), std::string::npos) << typo.err;
    EXPECT_EQ(typo.err.find("A subcommand is required"), std::string::npos) << typo.err;
    CliExit option = run_exit({"--verison"});
    EXPECT_EQ(option.status, kExitUsage);
    EXPECT_NE(option.err.find("unknown option '--verison'"), std::string::npos) << option.err;
    EXPECT_NE(option.err.find("did you mean '--version'"), std::string::npos) << option.err;
    CliExit nothing = run_exit({});
    EXPECT_NE(nothing.err.find("run, serve, ctl, mkswap"), std::string::npos) << nothing.err;
}

// Issue #17 item 9: `serve --config FILE`: every serve option from a TOML file, the
// command line winning; unknown keys and sections are errors naming the file.
TEST(CliParseTest, ServeConfigFile) {
    const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("swv-cli-config-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto write = [&dir](const char* name, const char* text) {
        std::ofstream(dir / name) << text;
        return (dir / name).string();
    };
    const std::string full = write("full.toml",
                                   "# every serve option\n"
                                   "control = \"/run/swapvisor/control.sock\"\n"
                                   "swap = [\"/a.swap,size=1G\", \"/b.swap,priority=3,format=force\"]\n"
                                   "host-budget = \"2G\"\n"
                                   "metrics = \"127.0.0.1:9477\"\n"
                                   "balloon-stats-interval = 0.5\n"
                                   "no-seccomp = true\n"
                                   "log-level = \"debug\"\n");
    CliOutcome out = parse_command_line({"serve", "--config", full});
    auto* serve = std::get_if<ServeConfig>(&out);
    ASSERT_NE(serve, nullptr) << std::get<CliExit>(out).err;
    EXPECT_EQ(serve->config_file, std::filesystem::path(full));
    EXPECT_EQ(serve->control_socket, "/run/swapvisor/control.sock");
    ASSERT_EQ(serve->swaps.size(), 2u);
    EXPECT_EQ(serve->swaps[0].size, 1ULL << 30);
    EXPECT_EQ(serve->swaps[1].priority, 3);
    EXPECT_EQ(serve->swaps[1].format, swap::Format::force);
    EXPECT_EQ(serve->host_budget, 2ULL << 30);
    EXPECT_EQ(serve->metrics, "127.0.0.1:9477");
    EXPECT_EQ(serve->balloon_stats_interval, std::chrono::milliseconds(500));
    EXPECT_EQ(serve->seccomp, sandbox::Seccomp::off);
    EXPECT_EQ(serve->log_level, "debug");

    // The command line wins, option by option (a flag given replaces the file's).
    out = parse_command_line({"serve", "--log-level", "warn", "--config=" + full, "--swap", "/c.swap"});
    serve = std::get_if<ServeConfig>(&out);
    ASSERT_NE(serve, nullptr) << std::get<CliExit>(out).err;
    EXPECT_EQ(serve->log_level, "warn");
    ASSERT_EQ(serve->swaps.size(), 1u);
    EXPECT_EQ(serve->swaps[0].path, "/c.swap");
    EXPECT_EQ(serve->host_budget, 2ULL << 30);

    // A [serve] section is the same as the top of the file.
    out = parse_command_line({"serve", "--config", write("section.toml", "[serve]\ncontrol = \"/s\"\n")});
    ASSERT_TRUE(std::holds_alternative<ServeConfig>(out));
    EXPECT_EQ(std::get<ServeConfig>(out).control_socket, "/s");

    auto refused = [](std::vector<std::string> args, const char* fragment) {
        CliExit e = run_exit(args);
        EXPECT_EQ(e.status, kExitUsage);
        EXPECT_NE(e.err.find(fragment), std::string::npos) << e.err;
    };
    refused({"serve", "--config", write("typo.toml", "contrl = \"/s\"\n")}, "unknown key 'contrl' (did you mean 'control'?)");
    refused({"serve", "--config", write("sect.toml", "[run]\ncontrol = \"/s\"\n")}, "unknown section [run]");
    refused({"serve", "--config", write("bad.toml", "control = \"/s\"\nhost-budget = \"lots\"\n")}, "--host-budget");
    refused({"serve", "--config", (dir / "missing.toml").string()}, "missing.toml");
    std::filesystem::remove_all(dir);
}

TEST(CliSwapSpecTest, FormatForce) {
    EXPECT_EQ(parse_swap_spec("a,format=force").value().format, swap::Format::force);
    EXPECT_EQ(parse_swap_spec("a,format=no").value().format, swap::Format::no);
    EXPECT_FALSE(parse_swap_spec("a,format=erase").has_value());
}

// Issue #17 item 2: taking a remote device from another pool is asked for by name.
TEST(CliSwapSpecTest, Takeover) {
    EXPECT_EQ(parse_swap_spec("nbd://h/x").value().takeover, swap::Takeover::no);
    EXPECT_EQ(parse_swap_spec("nbd://h/x,takeover=yes").value().takeover, swap::Takeover::yes);
    EXPECT_EQ(parse_swap_spec("nbd://h/x,takeover=no,priority=3").value().takeover, swap::Takeover::no);
    EXPECT_FALSE(parse_swap_spec("nbd://h/x,takeover=maybe").has_value());
    EXPECT_FALSE(parse_swap_spec("nbd://h/x,takeover=yes,takeover=yes").has_value());
}

TEST(CliMkswapTest, Force) {
    EXPECT_FALSE(std::get<MkswapOptions>(parse_command_line({"mkswap", "/x"})).force);
    EXPECT_TRUE(std::get<MkswapOptions>(parse_command_line({"mkswap", "/x", "--force"})).force);
}

}  // namespace swapvisor::vmm::cli
