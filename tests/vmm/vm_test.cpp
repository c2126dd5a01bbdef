// The Vm on real KVM (suite Privileged*): tiny 32-bit guests placed straight into an
// anonymous mapping registered as the memslot (the Vm takes RegionViews, so these
// tests need no guestmem), entered in the PVH state. They check each way a VM ends:
// debug exit, serial output, triple fault, unreadable guest memory, a second vCPU
// parked in wait-for-SIPI, and request_stop() from another thread.
#include "vmm/vm.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "io/unique_fd.hpp"
#include "vmm/devices/device_manager.hpp"

namespace swapvisor::vmm {
namespace {

constexpr std::uint64_t kMiB = 1ULL << 20;
constexpr std::uint32_t kEntry = 0x100000;

bool have_kvm() { return ::access("/dev/kvm", R_OK | W_OK) == 0; }

#define SKIP_WITHOUT_KVM()                                                                  \
    do {                                                                                   \
        if (!have_kvm()) GTEST_SKIP() << "*** /dev/kvm is not available: KVM test SKIPPED ***"; \
    } while (0)

struct GuestFixture : ::testing::Test {
    io::Mapping ram;
    io::Mapping no_access;  // second region, PROT_NONE: any guest access fails
    std::vector<guestmem::RegionView> regions;
    int serial_fd = ::memfd_create("vm_test_serial", MFD_CLOEXEC);
    std::optional<kvm::Kvm> kvm;

    void SetUp() override {
        SKIP_WITHOUT_KVM();
        auto k = kvm::Kvm::open();
        ASSERT_TRUE(k.has_value()) << k.error().message();
        kvm.emplace(std::move(*k));
        auto m = io::Mapping::anonymous(2 * kMiB);
        ASSERT_TRUE(m.has_value());
        ram = std::move(*m);
        void* p = ::mmap(nullptr, 2 * kMiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        ASSERT_NE(p, MAP_FAILED);
        no_access = io::Mapping(p, 2 * kMiB);
        regions = {{guestmem::Gpa(0), 2 * kMiB, ram.data()}, {guestmem::Gpa(2 * kMiB), 2 * kMiB, no_access.data()}};
    }
    ~GuestFixture() override { ::close(serial_fd); }

    void place(std::initializer_list<std::uint8_t> code) {
        std::size_t i = 0;
        for (std::uint8_t b : code) ram.data()[kEntry + i++] = std::byte{b};
    }

    VmEnd boot(unsigned vcpus, std::function<void(Vm&)> during = {}) {
        auto vm = Vm::create(*kvm, VmConfig{vcpus, regions});
        EXPECT_TRUE(vm.has_value()) << vm.error().message();
        if (!vm) return VmEnd{EndReason::kvm_error, 0, 0, "create failed"};
        control::DeviceStats stats;
        devices::DeviceManager devices((*vm)->pio(), (*vm)->mmio(), {}, stats, "vm0");
        auto wired = devices.add_legacy(devices::SerialSink::borrowed(serial_fd));
        EXPECT_TRUE(wired.has_value()) << wired.error().message();
        auto r = (*vm)->set_boot_entry(kEntry, 0x6000);
        EXPECT_TRUE(r.has_value()) << r.error().message();
        std::thread helper;
        if (during) helper = std::thread([&] { during(**vm); });
        VmEnd end = (*vm)->run();
        devices.flush_serial();
        if (helper.joinable()) helper.join();
        return end;
    }

    std::string serial_output() {
        std::string s(256, '\0');
        ssize_t n = ::pread(serial_fd, s.data(), s.size(), 0);
        s.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
        return s;
    }
};

TEST_F(GuestFixture, PrivilegedDebugExitCarriesTheValue) {
    place({0xb8, 0x78, 0x56, 0x34, 0x12,   // mov eax, 0x12345678
           0xe7, 0xf4});                   // out 0xf4, eax
    VmEnd end = boot(1);
    EXPECT_EQ(end.reason, EndReason::debug_exit) << end.message;
    EXPECT_EQ(end.exit_code, 0x12345678u);
}

TEST_F(GuestFixture, PrivilegedSerialOutputAndPvhRegisters) {
    place({0x66, 0xba, 0xf8, 0x03,         // mov dx, 0x3f8
           0xb0, 'o', 0xee,                // mov al, 'o'; out dx, al
           0xb0, 'k', 0xee,                // mov al, 'k'; out dx, al
           0xb0, '\n', 0xee,               // mov al, '\n'; out dx, al
           0x89, 0xd8,                     // mov eax, ebx  (start_info address)
           0xe7, 0xf4});                   // out 0xf4, eax
    VmEnd end = boot(1);
    EXPECT_EQ(end.reason, EndReason::debug_exit) << end.message;
    EXPECT_EQ(end.exit_code, 0x6000u);  // EBX held the start_info address
    EXPECT_EQ(serial_output(), "ok\n");
}

TEST_F(GuestFixture, PrivilegedTripleFault) {
    // ud2 with an IDT of zeros: #UD -> #GP -> #DF -> shutdown.
    place({0x0f, 0x0b});
    VmEnd end = boot(1);
    EXPECT_EQ(end.reason, EndReason::triple_fault) << end.message;
    EXPECT_EQ(end.exit_code, static_cast<std::uint32_t>(kExitTripleFault));
    EXPECT_NE(end.message.find("guest triple fault"), std::string::npos) << end.message;
    EXPECT_NE(end.message.find("rip="), std::string::npos) << end.message;
}

// Executing from a memslot whose host memory cannot be faulted in. On bare metal
// KVM_RUN fails with EFAULT (reported as "guest page lost"); on nested KVM, where
// guest ring-0 code is emulated, the instruction fetch fails inside the emulator and
// KVM reports an emulation failure instead. Either way the VM must end at once with
// a diagnosis naming the vCPU, never hang or take swapvisor down.
TEST_F(GuestFixture, PrivilegedUnbackedGuestMemoryEndsTheVm) {
    place({0xb8, 0x00, 0x10, 0x20, 0x00,   // mov eax, 0x201000 (PROT_NONE region)
           0xff, 0xe0});                   // jmp eax
    VmEnd end = boot(1);
    ASSERT_TRUE(end.reason == EndReason::page_lost || end.reason == EndReason::internal_error) << end.message;
    if (end.reason == EndReason::page_lost) {
        EXPECT_EQ(end.exit_code, static_cast<std::uint32_t>(kExitPageLost));
        EXPECT_NE(end.message.find("guest page lost"), std::string::npos) << end.message;
    } else {
        EXPECT_EQ(end.exit_code, static_cast<std::uint32_t>(kExitInternalError));
        EXPECT_NE(end.message.find("vCPU 0"), std::string::npos) << end.message;
        EXPECT_NE(end.message.find("rip=0x201000"), std::string::npos) << end.message;
    }
}

TEST_F(GuestFixture, PrivilegedApsWaitingForSipiAreStopped) {
    place({0xb8, 0x07, 0x00, 0x00, 0x00, 0xe7, 0xf4});  // exit 7
    VmEnd end = boot(3);
    EXPECT_EQ(end.reason, EndReason::debug_exit) << end.message;
    EXPECT_EQ(end.exit_code, 7u);
    EXPECT_EQ(end.vcpu, 0u);
}

TEST_F(GuestFixture, PrivilegedRequestStopEndsASpinningGuest) {
    place({0xeb, 0xfe});  // jmp $
    VmEnd end = boot(2, [](Vm& vm) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        vm.request_stop(VmEnd{EndReason::stopped, static_cast<std::uint32_t>(kExitStopped), 0, "test stop"});
    });
    EXPECT_EQ(end.reason, EndReason::stopped);
    EXPECT_EQ(end.message, "test stop");
}

TEST_F(GuestFixture, PrivilegedUnknownPortsReadAllOnes) {
    place({0x66, 0xba, 0x34, 0x12,         // mov dx, 0x1234
           0xed,                           // in eax, dx
           0xe7, 0xf4});                   // out 0xf4, eax
    VmEnd end = boot(1);
    EXPECT_EQ(end.reason, EndReason::debug_exit) << end.message;
    EXPECT_EQ(end.exit_code, 0xffffffffu);
}

TEST(PrivilegedKvmTest, OpensAndReportsCpuid) {
    SKIP_WITHOUT_KVM();
    auto kvm = kvm::Kvm::open();
    ASSERT_TRUE(kvm.has_value()) << kvm.error().message();
    EXPECT_GE(kvm->vcpu_mmap_size(), 4096u);
    EXPECT_GE(kvm->max_vcpus(), 1u);
    bool leaf1 = false;
    for (const auto& e : kvm->supported_cpuid()) leaf1 |= e.function == 1;
    EXPECT_TRUE(leaf1);
}

TEST(PrivilegedKvmTest, RefusesOverlappingMemslots) {
    SKIP_WITHOUT_KVM();
    auto kvm = kvm::Kvm::open();
    ASSERT_TRUE(kvm.has_value());
    auto vm = kvm->create_vm();
    ASSERT_TRUE(vm.has_value()) << vm.error().message();
    auto m = io::Mapping::anonymous(4 * kMiB);
    ASSERT_TRUE(m.has_value());
    ASSERT_TRUE(vm->add_memory_region(guestmem::Gpa(0), 2 * kMiB, m->data()).has_value());
    EXPECT_FALSE(vm->add_memory_region(guestmem::Gpa(kMiB), 2 * kMiB, m->data() + 2 * kMiB).has_value());
    EXPECT_FALSE(vm->add_memory_region(guestmem::Gpa(0x1001), 4096, m->data() + 2 * kMiB).has_value());
    EXPECT_TRUE(vm->add_memory_region(guestmem::Gpa(2 * kMiB), 2 * kMiB, m->data() + 2 * kMiB).has_value());
}

// FirstEntry (a restore's time to first instruction, docs/SNAPSHOT.md#first-insn):
// of several vCPU threads entering at once, exactly one records, and what it
// recorded is what every reader sees.
TEST(FirstEntry, OnlyTheFirstRecordCountsAndEveryReaderSeesIt) {
    FirstEntry first;
    EXPECT_FALSE(first.recorded());
    EXPECT_FALSE(first.when().has_value());
    const auto base = FirstEntry::Clock::now();
    std::atomic<int> winners{0};
    std::vector<std::thread> vcpus;
    for (int i = 0; i < 8; ++i)
        vcpus.emplace_back([&, i] {
            if (first.record(base + std::chrono::microseconds(i))) winners++;
        });
    for (auto& t : vcpus) t.join();
    EXPECT_EQ(winners.load(), 1);
    ASSERT_TRUE(first.when().has_value());
    const auto recorded = *first.when();
    EXPECT_GE(recorded, base);
    EXPECT_LE(recorded, base + std::chrono::microseconds(7));
    EXPECT_FALSE(first.record(base + std::chrono::seconds(1))) << "a later entry overwrote the first";
    EXPECT_EQ(*first.when(), recorded);
}

// On KVM: the first KVM_RUN of a VM is recorded before it, and on_first_entry runs
// once, after it returned, although the second vCPU enters KVM_RUN too (it waits
// for SIPI there).
TEST_F(GuestFixture, PrivilegedFirstEntryIsRecordedOnceBeforeTheGuestRuns) {
    place({0xb8, 0x07, 0x00, 0x00, 0x00,   // mov eax, 7
           0xe7, 0xf4});                   // out 0xf4, eax
    std::atomic<int> calls{0};
    std::optional<FirstEntry::Clock::time_point> reported;
    VmConfig config{2, regions};
    config.on_first_entry = [&](FirstEntry::Clock::time_point at) {
        calls++;
        reported = at;
    };
    const auto before = FirstEntry::Clock::now();
    auto vm = Vm::create(*kvm, config);
    ASSERT_TRUE(vm.has_value()) << vm.error().message();
    EXPECT_FALSE((*vm)->first_entry().has_value()) << "recorded before run()";
    control::DeviceStats stats;
    devices::DeviceManager devices((*vm)->pio(), (*vm)->mmio(), {}, stats, "vm0");
    ASSERT_TRUE(devices.add_legacy(devices::SerialSink::borrowed(serial_fd)).has_value());
    ASSERT_TRUE((*vm)->set_boot_entry(kEntry, 0x6000).has_value());
    VmEnd end = (*vm)->run();
    EXPECT_EQ(end.reason, EndReason::debug_exit) << end.message;
    EXPECT_EQ(end.exit_code, 7u);
    ASSERT_TRUE((*vm)->first_entry().has_value());
    EXPECT_GE(*(*vm)->first_entry(), before);
    EXPECT_EQ(calls.load(), 1);
    EXPECT_EQ(reported, (*vm)->first_entry());
}

}  // namespace
}  // namespace swapvisor::vmm
