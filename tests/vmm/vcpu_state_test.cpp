// vCPU and VM state on real KVM (suite Privileged*, skipped without /dev/kvm): a
// tiny 32-bit guest runs a counting loop that exits to userspace on every turn (a
// read of the UART's line status), is paused, saved (Vm::save_state), stopped, and
// its state and a copy of its memory go into a fresh VM (Vm::create_restored). The
// restored guest must continue where it was: its counter goes on from the saved
// value (not from 0), and the port read that was pending when it paused completed
// with the UART's value. The saved state also goes through the manifest's JSON both
// ways first, so what is restored is what a snapshot file would carry.
#include "vmm/kvm/vcpu_state.hpp"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <thread>

#include "io/unique_fd.hpp"
#include "vmm/devices/device_manager.hpp"
#include "vmm/snapshot/manifest.hpp"
#include "vmm/vm.hpp"

namespace swapvisor::vmm {
namespace {

constexpr std::uint64_t kRam = 2ULL << 20;
constexpr std::uint32_t kEntry = 0x100000;
constexpr std::uint32_t kCounter = 0x2000;  // the guest stores its count here
constexpr std::uint32_t kGoFlag = 0x3000;   // the host sets it to 1 in the restored copy

bool have_kvm() { return ::access("/dev/kvm", R_OK | W_OK) == 0; }

// ecx = 0; loop: al = inb(0x3fd); ++ecx; [kCounter] = ecx; until [kGoFlag] != 0;
// then exit with (ecx << 8) | al.
const std::uint8_t kLoop[] = {
    0x31, 0xc9,                    // xor ecx, ecx
    0x66, 0xba, 0xfd, 0x03,        // mov dx, 0x3fd (COM1 LSR)
    // loop:
    0xec,                          // in al, dx          (an exit to userspace every turn)
    0x41,                          // inc ecx
    0x89, 0x0d, 0x00, 0x20, 0x00, 0x00,  // mov [0x2000], ecx
    0x8b, 0x1d, 0x00, 0x30, 0x00, 0x00,  // mov ebx, [0x3000]
    0x85, 0xdb,                    // test ebx, ebx
    0x74, 0xee,                    // jz loop (-18)
    0xc1, 0xe1, 0x08,              // shl ecx, 8
    0x88, 0xc1,                    // mov cl, al
    0x89, 0xc8,                    // mov eax, ecx
    0xe7, 0xf4,                    // out 0xf4, eax
};

// 2 MiB of guest RAM in an anonymous mapping (the Vm takes RegionViews, so no
// guestmem is needed) and a memfd for COM1.
struct Guest {
    io::Mapping ram;
    std::vector<guestmem::RegionView> regions;
    int serial_fd = ::memfd_create("vcpu_state_test_serial", MFD_CLOEXEC);
    Guest() {
        auto m = io::Mapping::anonymous(kRam);
        SWV_ASSERT(m.has_value(), "test guest RAM");
        ram = std::move(*m);
        regions = {{guestmem::Gpa(0), kRam, ram.data()}};
    }
    ~Guest() { ::close(serial_fd); }
    Guest(const Guest&) = delete;
    Guest& operator=(const Guest&) = delete;

    std::uint32_t u32(std::uint32_t gpa) const {
        std::uint32_t v;
        std::memcpy(&v, ram.data() + gpa, 4);
        return v;
    }
    void set_u32(std::uint32_t gpa, std::uint32_t v) { std::memcpy(ram.data() + gpa, &v, 4); }
};

class PrivilegedVcpuStateTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (!have_kvm()) GTEST_SKIP() << "*** /dev/kvm is not available: KVM test SKIPPED ***";
        auto k = kvm::Kvm::open();
        ASSERT_TRUE(k.has_value()) << k.error().message();
        kvm_.emplace(std::move(*k));
    }

    // Run `vm` on a thread with COM1 and the debug exit wired; returns its end.
    static VmEnd run_with_devices(Vm& vm, int serial_fd, const std::function<void(Vm&)>& during) {
        control::DeviceStats stats;
        devices::DeviceManager devices(vm.pio(), vm.mmio(), {}, stats, "vm0");
        EXPECT_TRUE(devices.add_legacy(devices::SerialSink::borrowed(serial_fd)).has_value());
        std::thread helper;
        if (during) helper = std::thread([&] { during(vm); });
        VmEnd end = vm.run();
        if (helper.joinable()) helper.join();
        return end;
    }

    // Boot kLoop on `vcpus` vCPUs, let it count past 1000, pause, save, stop.
    SavedVm run_and_save(Guest& guest, unsigned vcpus) {
        std::memcpy(guest.ram.data() + kEntry, kLoop, sizeof kLoop);
        auto vm = Vm::create(*kvm_, VmConfig{vcpus, guest.regions});
        EXPECT_TRUE(vm.has_value()) << vm.error().message();
        EXPECT_TRUE((*vm)->set_boot_entry(kEntry, 0x6000).has_value());
        std::optional<Result<SavedVm>> saved;
        VmEnd end = run_with_devices(**vm, guest.serial_fd, [&](Vm& v) {
            auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
            while (guest.u32(kCounter) < 1000 && std::chrono::steady_clock::now() < deadline)
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            EXPECT_TRUE(v.pause(std::chrono::seconds(2)));
            saved = v.save_state();
            v.request_stop(VmEnd{EndReason::stopped, kExitStopped, 0, "test"});
        });
        EXPECT_EQ(end.reason, EndReason::stopped) << end.message;
        EXPECT_TRUE(saved.has_value() && saved->has_value()) << (saved && !*saved ? saved->error().message() : "");
        return saved && *saved ? std::move(**saved) : SavedVm{};
    }

    std::optional<kvm::Kvm> kvm_;
};

TEST_F(PrivilegedVcpuStateTest, SaveRefusedWhileRunning) {
    Guest guest;
    std::memcpy(guest.ram.data() + kEntry, kLoop, sizeof kLoop);
    auto vm = Vm::create(*kvm_, VmConfig{1, guest.regions});
    ASSERT_TRUE(vm.has_value()) << vm.error().message();
    ASSERT_TRUE((*vm)->set_boot_entry(kEntry, 0x6000).has_value());
    VmEnd end = run_with_devices(**vm, guest.serial_fd, [&](Vm& v) {
        while (guest.u32(kCounter) < 10) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        auto saved = v.save_state();
        EXPECT_FALSE(saved.has_value());
        if (!saved) {
            EXPECT_TRUE(saved.error().is(std::errc::device_or_resource_busy)) << saved.error().message();
        }
        v.request_stop(VmEnd{EndReason::stopped, kExitStopped, 0, "test"});
    });
    EXPECT_EQ(end.reason, EndReason::stopped) << end.message;
}

TEST_F(PrivilegedVcpuStateTest, RestoredGuestContinuesWhereItWasSaved) {
    Guest source;
    SavedVm saved = run_and_save(source, 1);
    ASSERT_EQ(saved.vcpus.size(), 1u);
    const std::uint32_t counted = source.u32(kCounter);
    ASSERT_GE(counted, 1000u);

    // Every blob has its ABI size; the MSRs start with the TSC.
    const kvm::VcpuState& v = saved.vcpus[0];
    EXPECT_EQ(v.regs.size(), kvm::kRegsBytes);
    EXPECT_EQ(v.lapic.size(), kvm::kLapicBytes);
    EXPECT_GE(v.xsave.size(), kvm::kXsaveMinBytes);
    ASSERT_FALSE(v.msrs.empty());
    EXPECT_EQ(v.msrs.front().index, 0x10u);
    EXPECT_FALSE(v.cpuid.empty());

    // Through the manifest's JSON, as a snapshot file carries it.
    snapshot::Manifest manifest;
    manifest.spec.name = "vm0";
    manifest.spec.vcpus = 1;
    manifest.kvm = saved;
    auto parsed = snapshot::manifest_from_json(snapshot::manifest_to_json(manifest));
    ASSERT_TRUE(parsed.has_value()) << parsed.error().message();
    ASSERT_EQ(parsed->kvm, saved);

    // A fresh VM over a copy of the memory, with the go flag set.
    Guest copy;
    std::memcpy(copy.ram.data(), source.ram.data(), kRam);
    copy.set_u32(kGoFlag, 1);
    auto restored = Vm::create_restored(*kvm_, VmConfig{1, copy.regions}, parsed->kvm);
    ASSERT_TRUE(restored.has_value()) << restored.error().message();
    VmEnd end = run_with_devices(**restored, copy.serial_fd, {});
    ASSERT_EQ(end.reason, EndReason::debug_exit) << end.message;
    // The pending IN completed with the UART's idle LSR, and the count went on from
    // the saved one: at most one more turn (the pause may fall before or after the
    // store), never from zero.
    EXPECT_EQ(end.exit_code & 0xff, devices::Serial16550::kLsrIdle);
    const std::uint32_t count = end.exit_code >> 8;
    EXPECT_GE(count, counted) << "the restored guest started over";
    EXPECT_LE(count, counted + 1);
}

TEST_F(PrivilegedVcpuStateTest, ApWaitingForSipiIsSavedAndRestored) {
    Guest source;
    SavedVm saved = run_and_save(source, 2);
    ASSERT_EQ(saved.vcpus.size(), 2u);
    EXPECT_EQ(saved.vcpus[1].index, 1u);
    EXPECT_NE(saved.vcpus[0].mp_state, saved.vcpus[1].mp_state) << "the BSP runs, the AP waits for SIPI";

    Guest copy;
    std::memcpy(copy.ram.data(), source.ram.data(), kRam);
    copy.set_u32(kGoFlag, 1);
    auto restored = Vm::create_restored(*kvm_, VmConfig{2, copy.regions}, saved);
    ASSERT_TRUE(restored.has_value()) << restored.error().message();
    VmEnd end = run_with_devices(**restored, copy.serial_fd, {});
    ASSERT_EQ(end.reason, EndReason::debug_exit) << end.message;
    EXPECT_GE(end.exit_code >> 8, source.u32(kCounter));
}

TEST_F(PrivilegedVcpuStateTest, RestoreRefusesAWrongVcpuCountAndACorruptState) {
    Guest source;
    SavedVm saved = run_and_save(source, 1);
    ASSERT_EQ(saved.vcpus.size(), 1u);
    Guest copy;
    auto two = Vm::create_restored(*kvm_, VmConfig{2, copy.regions}, saved);
    ASSERT_FALSE(two.has_value());
    EXPECT_NE(two.error().message().find("1 vCPU states for 2 vCPUs"), std::string::npos) << two.error().message();

    SavedVm bad = saved;
    bad.vcpus[0].msrs.push_back(kvm::MsrValue{0xdead'beef, 1});  // no such MSR
    auto refused = Vm::create_restored(*kvm_, VmConfig{1, copy.regions}, bad);
    ASSERT_FALSE(refused.has_value());
    EXPECT_NE(refused.error().message().find("0xdeadbeef"), std::string::npos) << refused.error().message();
}

}  // namespace
}  // namespace swapvisor::vmm
