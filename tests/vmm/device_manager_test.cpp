// DeviceManager: the guest-visible device layout. Without KVM: the virtio slot
// layout (windows 0xd0000000 + n * 0x1000, GSIs 5..23), the command-line entries,
// COM1 and debug exit on the port bus. With a real GuestMemory (userfaultfd):
// virtio devices land in consecutive windows with consecutive interrupt lines, the
// 20th is refused with nothing changed, names are unique, and each device's
// counters are registered for stats_json.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "guestmem/errc.hpp"
#include "guestmem/host_memory.hpp"
#include "swap/swap_pool.hpp"
#include "vmm/control/stats_json.hpp"
#include "vmm/devices/debug_exit.hpp"
#include "vmm/devices/device_manager.hpp"
#include "vmm/devices/virtio_balloon.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm;
using namespace swapvisor::vmm::devices;

namespace {

std::uint32_t read_u32(Bus& bus, std::uint64_t addr) {
    std::uint32_t v = 0;
    bus.read(addr, std::as_writable_bytes(std::span(&v, 1)));
    return v;
}

TEST(DeviceManagerLayout, VirtioSlotsFollowTheAddressMap) {
    EXPECT_EQ(virtio_slot(0).mmio_base, 0xd000'0000u);
    EXPECT_EQ(virtio_slot(0).gsi, 5u);
    EXPECT_EQ(virtio_slot(1).mmio_base, 0xd000'1000u);
    EXPECT_EQ(virtio_slot(1).gsi, 6u);
    EXPECT_EQ(virtio_slot(kMaxVirtioDevices - 1).mmio_base, 0xd001'2000u);
    EXPECT_EQ(virtio_slot(kMaxVirtioDevices - 1).gsi, 23u) << "the IOAPIC's last pin";
    EXPECT_EQ(kMaxVirtioDevices, 19u);
}

TEST(DeviceManagerLayout, CmdlineEntryIsLinuxForm) {
    EXPECT_EQ(virtio_cmdline_entry(virtio_slot(0)), "virtio_mmio.device=4K@0xd0000000:5");
    EXPECT_EQ(virtio_cmdline_entry(virtio_slot(2)), "virtio_mmio.device=4K@0xd0002000:7");
}

TEST(DeviceManagerLegacy, WiresCom1AndDebugExit) {
    Bus pio("port I/O"), mmio("MMIO");
    control::DeviceStats stats;
    DeviceManager devices(pio, mmio, {}, stats, "vm0");
    int fd = ::memfd_create("dm_serial", MFD_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(devices.add_legacy(SerialSink::borrowed(fd)).has_value());

    for (char c : std::string("hi\n")) pio.write(kCom1Base, std::as_bytes(std::span(&c, 1)));
    devices.flush_serial();
    char out[8] = {};
    EXPECT_EQ(::pread(fd, out, sizeof out, 0), 3);
    EXPECT_STREQ(out, "hi\n");

    std::uint32_t code = 42;
    BusAction action = pio.write(kDebugExitPort, std::as_bytes(std::span(&code, 1)));
    ASSERT_TRUE(action.exit_code.has_value()) << "nothing on port 0xf4";
    EXPECT_EQ(*action.exit_code, 42u);
    EXPECT_EQ(pio.unknown_accesses(), 0u);
    EXPECT_EQ(devices.cmdline(), "") << "no virtio device, no entry";
    EXPECT_EQ(devices.append_cmdline("console=ttyS0"), "console=ttyS0");

    auto again = devices.add_legacy(SerialSink::borrowed(fd));
    EXPECT_FALSE(again.has_value()) << "COM1 wired twice";
    ::close(fd);
}

// Devices on a real GuestMemory (the transports refer to it).
class PrivilegedDeviceManagerTest : public ::testing::Test {
protected:
    void SetUp() override {
        host_ = std::make_unique<guestmem::HostMemory>(pool_, 0);
        auto vm = host_->create_vm(guestmem::MemoryConfig{.name = "vm0", .memory_bytes = 16ULL << 20});
        if (!vm && (vm.error().is(std::errc::function_not_supported) || vm.error().is(std::errc::operation_not_permitted) ||
                    vm.error().code == guestmem::make_error_code(guestmem::Errc::unsupported)))
            GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable: " << vm.error().message();
        ASSERT_TRUE(vm.has_value()) << vm.error().message();
        mem_ = *vm;
        devices_ = std::make_unique<DeviceManager>(
            pio_, mmio_,
            [this](std::uint32_t gsi) {
                gsis_.push_back(gsi);
                return [this, gsi](IrqLevel level) { raised_.emplace_back(gsi, level); };
            },
            stats_, "vm0");
    }

    swap::SwapPool pool_;
    std::unique_ptr<guestmem::HostMemory> host_;
    guestmem::GuestMemory* mem_ = nullptr;
    Bus pio_{"port I/O"}, mmio_{"MMIO"};
    control::DeviceStats stats_;
    std::vector<std::uint32_t> gsis_;
    std::vector<std::pair<std::uint32_t, IrqLevel>> raised_;
    std::unique_ptr<DeviceManager> devices_;
};

TEST_F(PrivilegedDeviceManagerTest, VirtioDevicesGetConsecutiveWindowsAndLines) {
    auto first = devices_->add_virtio("balloon", *mem_, std::make_shared<VirtioBalloon>(*mem_));
    ASSERT_TRUE(first.has_value()) << first.error().message();
    auto second = devices_->add_virtio("balloon1", *mem_, std::make_shared<VirtioBalloon>(*mem_));
    ASSERT_TRUE(second.has_value()) << second.error().message();

    ASSERT_EQ(devices_->virtio_slots().size(), 2u);
    EXPECT_EQ(devices_->virtio_slots()[1].mmio_base, 0xd000'1000u);
    EXPECT_EQ(gsis_, (std::vector<std::uint32_t>{5, 6}));
    // Both windows answer as virtio-mmio devices on the bus; the next one is empty.
    EXPECT_EQ(read_u32(mmio_, 0xd000'0000), kVirtioMmioMagic);
    EXPECT_EQ(read_u32(mmio_, 0xd000'1000), kVirtioMmioMagic);
    EXPECT_EQ(read_u32(mmio_, 0xd000'1000 + virtio_reg::kDeviceId), kVirtioIdBalloon);
    EXPECT_EQ(read_u32(mmio_, 0xd000'2000), 0xffff'ffffu);
    EXPECT_EQ(devices_->cmdline(), "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6");
    EXPECT_EQ(devices_->append_cmdline("console=ttyS0"),
              "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6");

    // The second transport's interrupt goes to GSI 6: a config change after DRIVER_OK raises it.
    std::uint32_t status = kStatusAcknowledge | kStatusDriver | kStatusDriverOk;
    (*second)->write(virtio_reg::kStatus, std::as_bytes(std::span(&status, 1)));
    (*second)->notify_config_change();
    ASSERT_EQ(raised_.size(), 1u);
    EXPECT_EQ(raised_[0].first, 6u);
    EXPECT_EQ(raised_[0].second, IrqLevel::high);
}

TEST_F(PrivilegedDeviceManagerTest, TwentiethVirtioDeviceIsRefused) {
    for (unsigned i = 0; i < kMaxVirtioDevices; ++i) {
        auto r = devices_->add_virtio("balloon" + std::to_string(i), *mem_, std::make_shared<VirtioBalloon>(*mem_));
        ASSERT_TRUE(r.has_value()) << i << ": " << r.error().message();
    }
    const std::string before = devices_->cmdline();
    auto r = devices_->add_virtio("one-too-many", *mem_, std::make_shared<VirtioBalloon>(*mem_));
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, make_error_code(DeviceErrc::no_virtio_slot)) << r.error().message();
    EXPECT_NE(r.error().message().find("one-too-many"), std::string::npos) << r.error().message();
    EXPECT_EQ(devices_->virtio_slots().size(), kMaxVirtioDevices);
    EXPECT_EQ(devices_->cmdline(), before);
    EXPECT_EQ(gsis_.size(), kMaxVirtioDevices) << "no interrupt line asked for the refused device";
}

TEST_F(PrivilegedDeviceManagerTest, DuplicateNameIsRefused) {
    ASSERT_TRUE(devices_->add_virtio("balloon", *mem_, std::make_shared<VirtioBalloon>(*mem_)).has_value());
    auto r = devices_->add_virtio("balloon", *mem_, std::make_shared<VirtioBalloon>(*mem_));
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, make_error_code(DeviceErrc::duplicate_name));
    EXPECT_EQ(devices_->virtio_slots().size(), 1u);
}

// The balloon's counters reach stats_json (hence status, stats and --stats-json)
// under "balloon", live.
TEST_F(PrivilegedDeviceManagerTest, BalloonCountersAppearInStatsJson) {
    auto balloon = std::make_shared<VirtioBalloon>(*mem_);
    ASSERT_TRUE(devices_->add_virtio("balloon", *mem_, balloon).has_value());
    balloon->set_target_pages(77);
    for (auto detail : {control::StatsDetail::summary, control::StatsDetail::full}) {
        nlohmann::json j = control::stats_json(*host_, stats_, detail);
        ASSERT_EQ(j["vms"].size(), 1u);
        const nlohmann::json& b = j["vms"][0]["balloon"];
        ASSERT_TRUE(b.is_object()) << j.dump();
        for (const char* key : {"reported_pages", "reported_ranges", "refused_ranges", "inflated_pages",
                                "deflated_pages", "discard_errors", "target_pages", "actual_pages"})
            EXPECT_TRUE(b.contains(key)) << key;
        EXPECT_EQ(b["target_pages"], 77u);
        EXPECT_EQ(b["reported_pages"], 0u);
    }
}

}  // namespace
