// BuiltVm::save_state and BuiltVm::restore on real KVM (suite PrivilegedBuiltVm,
// skipped without /dev/kvm or the example guests): memtouch, which writes a pattern
// derived from every page's frame and pass into its memory and verifies every word
// on the next pass, is paused after its first pass, saved (vCPUs, KVM VM state,
// devices, and its memory through a test double of the memory side that copies all
// of it), the manifest written and read back from a directory, the VM stopped and
// released; then a new VM is restored from the manifest and the copy. It must finish
// the remaining passes with no bad page, without starting over (its serial log has
// no first pass), and exit 0. With two vCPUs, memtouch runs a worker on each.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "guestmem/host_memory.hpp"
#include "swap/swap_pool.hpp"
#include "vmm/control/device_stats.hpp"
#include "vmm/host/built_vm.hpp"
#include "vmm/kvm/kvm.hpp"
#include "vmm/snapshot/manifest.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm;
namespace fs = std::filesystem;

namespace {

const fs::path kExamples = fs::path(SWV_BUILD_DIR) / "examples";

std::string read_text(const fs::path& p) {
    std::stringstream ss;
    ss << std::ifstream(p).rdbuf();
    return ss.str();
}

class PrivilegedBuiltVm : public ::testing::TestWithParam<unsigned> {
protected:
    void SetUp() override {
        if (::access("/dev/kvm", R_OK | W_OK) != 0) GTEST_SKIP() << "*** /dev/kvm is not available: KVM test SKIPPED ***";
        if (!fs::exists(kExamples / "memtouch.elf"))
            GTEST_SKIP() << "*** build the memtouch target: BuiltVm test SKIPPED ***";
        dir_ = fs::temp_directory_path() / ("swv-builtvm-" + std::to_string(getpid()) + "-" + std::to_string(GetParam()));
        fs::remove_all(dir_);
        fs::create_directories(dir_ / "snap");
        ASSERT_TRUE(pool_.swapon(dir_ / "a.swap", 0, 128 << 20).has_value());
        auto kvm = kvm::Kvm::open();
        ASSERT_TRUE(kvm.has_value()) << kvm.error().message();
        kvm_.emplace(std::move(*kvm));
        host_.emplace(pool_, 0);
    }
    void TearDown() override {
        host_.reset();
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }

    fs::path dir_;
    swap::SwapPool pool_;
    std::optional<kvm::Kvm> kvm_;
    std::optional<guestmem::HostMemory> host_;
    control::DeviceStats stats_;
};

TEST_P(PrivilegedBuiltVm, RestoredMemtouchFinishesItsPassesWithoutStartingOver) {
    const unsigned vcpus = GetParam();
    BuildContext context{*kvm_, *host_, stats_};
    VmSpec spec{.name = "a", .kernel = kExamples / "memtouch.elf",
                .cmdline = "mib=16 passes=6 threads=" + std::to_string(vcpus), .memory_bytes = 64 << 20,
                .vcpus = vcpus, .balloon = true, .serial_log = dir_ / "a.log"};

    // The memory side's stand-in: a full copy of guest RAM, region by region.
    std::vector<std::pair<guestmem::Gpa, std::vector<std::byte>>> copy;
    SaveMemory save_memory = [&](guestmem::GuestMemory& mem) -> Result<snapshot::Json> {
        for (const guestmem::RegionView& r : mem.regions()) {
            copy.emplace_back(r.base, std::vector<std::byte>(r.size));
            SWV_TRY(mem.read(r.base, copy.back().second));
        }
        return snapshot::Json{{"test", "full copy"}, {"regions", copy.size()}};
    };
    RestoreMemory restore_memory = [&](guestmem::HostMemory& host, const guestmem::MemoryConfig& config,
                                       const snapshot::Json& memory) -> Result<guestmem::GuestMemory*> {
        EXPECT_EQ(memory["test"], "full copy");
        guestmem::GuestMemory* mem = SWV_TRY(host.create_vm(config));
        for (const auto& [base, bytes] : copy)
            if (auto w = mem->write(base, bytes); !w) {
                (void)host.remove_vm(config.name);
                return std::unexpected(w.error());
            }
        return mem;
    };

    {
        auto built = BuiltVm::build(context, spec, SerialPrefix::none);
        ASSERT_TRUE(built.has_value()) << built.error().message();
        BuiltVm& vm = **built;
        std::optional<Result<snapshot::Manifest>> saved;
        std::thread helper([&] {
            auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
            while (read_text(spec.serial_log.value()).find("pass 2/") == std::string::npos &&
                   std::chrono::steady_clock::now() < deadline)
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
            EXPECT_TRUE(vm.vm().pause(std::chrono::seconds(2)));
            saved = vm.save_state(save_memory);
            vm.vm().request_stop(VmEnd{EndReason::stopped, kExitStopped, 0, "test"});
        });
        VmEnd end = vm.run();
        helper.join();
        EXPECT_EQ(end.reason, EndReason::stopped) << end.message << "\n" << read_text(*spec.serial_log);
        ASSERT_TRUE(saved.has_value() && saved->has_value()) << (saved && !*saved ? saved->error().message() : "");
        const snapshot::Manifest& m = **saved;
        EXPECT_EQ(m.kvm.vcpus.size(), vcpus);
        ASSERT_TRUE(m.devices.balloon.has_value());
        ASSERT_EQ(m.devices.virtio.size(), 1u);
        EXPECT_EQ(m.devices.virtio[0].name, "balloon");
        ASSERT_TRUE(snapshot::write_manifest(dir_ / "snap", m).has_value());
    }  // the first VM is released here

    auto manifest = snapshot::read_manifest(dir_ / "snap");
    ASSERT_TRUE(manifest.has_value()) << manifest.error().message();
    VmSpec restored_spec = manifest->spec;
    restored_spec.name = "b";
    restored_spec.serial_log = dir_ / "b.log";
    const auto requested = FirstEntry::Clock::now();
    auto restored = BuiltVm::restore(context, restored_spec, *manifest, SerialPrefix::none, restore_memory, requested);
    ASSERT_TRUE(restored.has_value()) << restored.error().message();
    auto restore_source = [&]() -> std::optional<control::Counters> {
        for (const control::DeviceCounters& d : stats_.read("b"))
            if (d.device == "restore") return d.counters;
        return std::nullopt;
    };
    ASSERT_TRUE(restore_source().has_value()) << "a restored VM has \"restore\" counters";
    EXPECT_TRUE(restore_source()->empty()) << "no vCPU has entered the guest yet";
    VmEnd end = (*restored)->run();
    // Time to first instruction: counted from the request, once a vCPU entered.
    const std::optional<control::Counters> timing = restore_source();
    ASSERT_TRUE(timing.has_value() && timing->size() == 1u);
    EXPECT_EQ((*timing)[0].name, "to_first_insn_us");
    ASSERT_TRUE((*restored)->vm().first_entry().has_value());
    EXPECT_EQ((*timing)[0].value,
              static_cast<std::uint64_t>(
                  std::chrono::duration_cast<std::chrono::microseconds>(*(*restored)->vm().first_entry() - requested)
                      .count()));
    const std::string log = read_text(dir_ / "b.log");
    EXPECT_EQ(end.reason, EndReason::debug_exit) << end.message << "\n" << log;
    EXPECT_EQ(end.exit_code, 0u) << log;
    EXPECT_NE(log.find("\"errors\":0"), std::string::npos) << log;
    EXPECT_NE(log.find("final verify"), std::string::npos) << log;
    EXPECT_EQ(log.find("pass 1/"), std::string::npos) << "the restored guest started over:\n" << log;
}

TEST_P(PrivilegedBuiltVm, RestoreRefusesASpecThatIsNotTheSnapshots) {
    BuildContext context{*kvm_, *host_, stats_};
    snapshot::Manifest m;
    m.spec = VmSpec{.name = "a", .memory_bytes = 64 << 20, .vcpus = GetParam()};
    m.kvm.vcpus.resize(GetParam());
    VmSpec other = m.spec;
    other.vcpus = GetParam() + 1;
    bool called = false;
    auto r = BuiltVm::restore(context, other, m, SerialPrefix::none, [&](guestmem::HostMemory&, const guestmem::MemoryConfig&, const snapshot::Json&) {
        called = true;
        return Result<guestmem::GuestMemory*>{nullptr};
    });
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.error().message().find("\"vcpus\""), std::string::npos) << r.error().message();
    EXPECT_FALSE(called) << "nothing is built for a spec that does not fit";
    EXPECT_EQ(host_->vms().size(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Vcpus, PrivilegedBuiltVm, ::testing::Values(1u, 2u));

}  // namespace

// The "restore" counters (status / stats / --stats-json / /metrics): none until a
// vCPU entered the guest, then the microseconds from the restore request; an entry
// stamped before the request (clock skew cannot happen on steady_clock, but the
// counter is unsigned) counts as 0.
TEST(RestoreCounters, EmptyUntilTheFirstEntryThenMicrosecondsSinceTheRequest) {
    const auto requested = FirstEntry::Clock::now();
    EXPECT_TRUE(restore_counters(requested, std::nullopt).empty());
    control::Counters c = restore_counters(requested, requested + std::chrono::microseconds(12345));
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(c[0].name, "to_first_insn_us");
    EXPECT_EQ(c[0].value, 12345u);
    c = restore_counters(requested, requested - std::chrono::milliseconds(1));
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(c[0].value, 0u);
}
