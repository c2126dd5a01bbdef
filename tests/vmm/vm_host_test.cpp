// VmHost on real KVM (suite PrivilegedVmHost): the example guests (built in
// SWV_BUILD_DIR/examples) created, paused, stopped and removed the way `swapvisor
// serve` does it; each VM's memory and VSlots released when it ends, and nothing
// about the other VMs changed when a create failed.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "guestmem/host_memory.hpp"
#include "swap/swap_pool.hpp"
#include "vmm/control/device_stats.hpp"
#include "vmm/kvm/kvm.hpp"
#include "vmm/host/vm_host.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm;
namespace fs = std::filesystem;

namespace {

const fs::path kExamples = fs::path(SWV_BUILD_DIR) / "examples";

class PrivilegedVmHost : public ::testing::Test {
protected:
    void SetUp() override {
        if (::access("/dev/kvm", R_OK | W_OK) != 0) GTEST_SKIP() << "*** /dev/kvm is not available: KVM test SKIPPED ***";
        if (!fs::exists(kExamples / "memtouch.elf") || !fs::exists(kExamples / "hello.elf"))
            GTEST_SKIP() << "*** build the hello and memtouch targets: VmHost test SKIPPED ***";
        dir_ = fs::temp_directory_path() / ("swv-vmhost-" + std::to_string(getpid()) + "-" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
        ASSERT_TRUE(pool_.swapon(dir_ / "a.swap", 0, 128 << 20).has_value());
        auto kvm = kvm::Kvm::open();
        ASSERT_TRUE(kvm.has_value()) << kvm.error().message();
        kvm_.emplace(std::move(*kvm));
        host_.emplace(pool_, 0);
        vms_.emplace(*kvm_, *host_, stats_, Release::when_ended);
    }
    void TearDown() override {
        vms_.reset();
        host_.reset();
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }
    VmSpec memtouch(std::string name, std::string cmdline) {
        return VmSpec{.name = std::move(name), .kernel = kExamples / "memtouch.elf",
                                     .cmdline = std::move(cmdline), .memory_bytes = 64 << 20,
                                     .resident_limit = 16 << 20,
                                     .serial_log = dir_ / "serial.log"};
    }
    control::VmInfo wait_ended(const std::string& name) {
        for (int i = 0; i < 600; ++i) {
            for (const control::VmInfo& info : vms_->list_vms())
                if (info.name == name && info.state == control::VmState::ended) return info;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        ADD_FAILURE() << name << " did not end within 60 s";
        return {};
    }

    fs::path dir_;
    swap::SwapPool pool_;
    std::optional<kvm::Kvm> kvm_;
    std::optional<guestmem::HostMemory> host_;
    control::DeviceStats stats_;
    std::optional<VmHost> vms_;
};

}  // namespace

TEST_F(PrivilegedVmHost, BadSpecsNameTheirFieldAndLeaveNothingBehind) {
    ASSERT_TRUE(vms_->create_vm(memtouch("keep", "mib=8 passes=1000000")).has_value());
    struct Case {
        VmSpec spec;
        const char* field;
    };
    auto base = memtouch("x", "");
    std::vector<Case> cases;
    cases.push_back({base, "\"name\""});
    cases.back().spec.name = "-bad name";
    cases.push_back({base, "\"memory\""});
    cases.back().spec.memory_bytes = 3 << 20;
    cases.push_back({base, "\"vcpus\""});
    cases.back().spec.vcpus = 0;
    cases.push_back({base, "\"kernel\""});
    cases.back().spec.kernel = dir_ / "missing.elf";
    cases.push_back({base, "\"cmdline\""});
    cases.back().spec.cmdline = std::string(5000, 'x');
    for (const Case& c : cases) {
        auto r = vms_->create_vm(c.spec);
        ASSERT_FALSE(r.has_value()) << c.field;
        EXPECT_EQ(r.error().code, SpecErrc::bad_field) << c.field;
        EXPECT_NE(r.error().message().find(c.field), std::string::npos) << r.error().message();
    }
    // Not an ELF: refused after the name was reserved; the name is free again.
    auto not_elf = base;
    not_elf.kernel = dir_ / "a.swap";
    EXPECT_FALSE(vms_->create_vm(not_elf).has_value());
    auto dup = vms_->create_vm(memtouch("keep", ""));
    ASSERT_FALSE(dup.has_value());
    EXPECT_EQ(dup.error().code, control::VmErrc::exists);
    // Only "keep" exists, untouched, and it still runs.
    auto list = vms_->list_vms();
    ASSERT_EQ(list.size(), 1u);
    EXPECT_EQ(list[0].name, "keep");
    EXPECT_EQ(list[0].state, control::VmState::running);
    ASSERT_EQ(host_->vms().size(), 1u);
    EXPECT_EQ(host_->vms()[0]->name(), "keep");
}

TEST_F(PrivilegedVmHost, PauseResumeStopForcedThenRemoveAndReuseTheName) {
    ASSERT_TRUE(vms_->create_vm(memtouch("vm", "mib=40 passes=1000000")).has_value());
    // Let it swap, so that releasing it has VSlots to free.
    for (int i = 0; i < 200 && pool_.allocated_vslots() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_GT(pool_.allocated_vslots(), 0u);
    auto paused = vms_->pause_vm("vm");
    ASSERT_TRUE(paused.has_value()) << paused.error().message();
    EXPECT_EQ(paused->state, control::VmState::paused);
    const auto faults = host_->find("vm")->stats().minor_faults + host_->find("vm")->stats().major_faults;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_EQ(host_->find("vm")->stats().minor_faults + host_->find("vm")->stats().major_faults, faults)
        << "a paused guest kept touching memory";
    EXPECT_EQ(vms_->resume_vm("vm")->state, control::VmState::running);
    auto remove_running = vms_->remove_vm("vm");
    ASSERT_FALSE(remove_running.has_value());
    EXPECT_EQ(remove_running.error().code, control::VmErrc::running);

    auto stopped = vms_->stop_vm("vm", std::chrono::milliseconds(100));
    ASSERT_TRUE(stopped.has_value()) << stopped.error().message();
    EXPECT_EQ(stopped->state, control::VmState::ended);
    EXPECT_EQ(stopped->exit_code, static_cast<std::uint32_t>(kExitStopped));
    EXPECT_EQ(stopped->end_reason, "stopped");
    // Released at once: no memory, no VSlot, no device counters.
    EXPECT_EQ(host_->find("vm"), nullptr);
    EXPECT_EQ(pool_.allocated_vslots(), 0u);
    EXPECT_EQ(vms_->pause_vm("vm").error().code, control::VmErrc::not_running);
    // Still listed until removed; then the name can be used again.
    ASSERT_EQ(vms_->list_vms().size(), 1u);
    ASSERT_TRUE(vms_->remove_vm("vm").has_value());
    EXPECT_TRUE(vms_->list_vms().empty());
    ASSERT_TRUE(vms_->create_vm(memtouch("vm", "mib=8 passes=2")).has_value());
    control::VmInfo end = wait_ended("vm");
    EXPECT_EQ(end.exit_code, 0u) << end.end_message;
    EXPECT_EQ(end.end_reason, "debug_exit");
    EXPECT_EQ(pool_.allocated_vslots(), 0u);
    EXPECT_EQ(vms_->remove_vm("nope").error().code, control::VmErrc::no_such_vm);
}
