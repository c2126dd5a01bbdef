// The JSON form of vCPU, VM, device and spec state (vmm/snapshot/state_json.cpp),
// without KVM: states built by hand with every field distinct, written and read
// back equal; and the strict reader's answers to bad input, each naming the member.
#include "vmm/snapshot/state_json.hpp"

#include <gtest/gtest.h>

#include <numeric>

using namespace swapvisor;
using namespace swapvisor::vmm;
using snapshot::Json;

namespace {

// `n` bytes counting up from `seed`, so two blobs never look alike.
kvm::Blob pattern(std::size_t n, std::uint8_t seed) {
    kvm::Blob b(n);
    std::iota(b.begin(), b.end(), seed);
    return b;
}

kvm::VcpuState sample_vcpu(unsigned index) {
    kvm::VcpuState s;
    s.index = index;
    s.cpuid = {{0, 0, 0, 0xd, 0x756e6547, 0x6c65746e, 0x49656e69}, {0xd, 1, 1, 0xf, 2, 3, 4}};
    s.tsc_khz = 2'900'000;
    s.mp_state = 2;
    s.regs = pattern(kvm::kRegsBytes, 1);
    s.sregs_format = kvm::SregsFormat::sregs2;
    s.sregs = pattern(kvm::kSregs2Bytes, 2);
    s.fpu = pattern(kvm::kFpuBytes, 3);
    s.xsave = pattern(kvm::kXsaveMinBytes + 64, 4);
    s.xcrs = pattern(kvm::kXcrsBytes, 5);
    s.debug_regs = pattern(kvm::kDebugRegsBytes, 6);
    s.lapic = pattern(kvm::kLapicBytes, 7);
    s.msrs = {{0x10, 0xffff'ffff'ffff'fff0ULL}, {0xc000'0082, 0xffff'ffff'8100'0000ULL}, {0x6e0, 0}};
    s.vcpu_events = pattern(kvm::kVcpuEventsBytes, 8);
    return s;
}

devices::DeviceStates sample_devices() {
    devices::DeviceStates d;
    d.serial = {1, 3, 0xb, 0x55, 12, 0};
    devices::VirtioMmioState t;
    t.device_id = 5;
    t.device_features_sel = 1;
    t.driver_features_sel = 1;
    t.driver_features = (1ULL << 32) | 0x26;
    t.queue_sel = 2;
    t.status = 0xf;
    t.interrupt_status = 1;
    t.config_generation = 7;
    t.config_change_pending = true;
    t.queues = {{256, 64, true, 0x10000, 0x11000, 0x12000, 70, 69, 3}, {256, 256, false, 0, 0, 0, 0, 0, 0}};
    d.virtio.push_back({"balloon", 0xd000'0000, 5, t});
    devices::BalloonState b;
    b.stats.target_pages = 1000;
    b.stats.actual_pages = 900;
    b.stats.balloon_pages = 901;
    b.stats.reported_pages = 4;
    b.stats.stats_requests = 9;
    devices::GuestStats g;
    g.values[4] = 123456789;
    g.values[9] = 0;
    g.unknown_tags = 2;
    b.stats.guest = g;
    b.stats_head = 17;
    b.stats_queue = 2;
    d.balloon = b;
    return d;
}

template <class T>
std::string error_of(const Result<T>& r) {
    return r ? std::string("(no error)") : r.error().message();
}

#define EXPECT_REFUSED_WITH(result, text)                                                     \
    do {                                                                                     \
        auto&& r_ = (result);                                                                \
        ASSERT_FALSE(r_.has_value()) << "accepted";                                          \
        EXPECT_EQ(r_.error().code, snapshot::make_error_code(snapshot::SnapshotErrc::bad_manifest)) \
            << r_.error().message();                                                         \
        EXPECT_NE(r_.error().message().find(text), std::string::npos) << r_.error().message(); \
    } while (0)

TEST(VcpuStateJson, RoundTripsEveryField) {
    kvm::VcpuState s = sample_vcpu(3);
    Json j = snapshot::to_json(s);
    auto back = snapshot::vcpu_state_from_json(j, "vcpus[3]");
    ASSERT_TRUE(back.has_value()) << error_of(back);
    EXPECT_EQ(*back, s);
    // Through text too (the manifest is a file).
    auto reparsed = snapshot::vcpu_state_from_json(Json::parse(j.dump()), "vcpus[3]");
    ASSERT_TRUE(reparsed.has_value()) << error_of(reparsed);
    EXPECT_EQ(*reparsed, s);
}

TEST(VcpuStateJson, RoundTripsTheOldSregsAndAHostWithoutXsave) {
    kvm::VcpuState s = sample_vcpu(0);
    s.sregs_format = kvm::SregsFormat::sregs;
    s.sregs = pattern(kvm::kSregsBytes, 9);
    s.xsave.clear();
    s.xcrs.clear();
    s.msrs.clear();
    auto back = snapshot::vcpu_state_from_json(snapshot::to_json(s), "v");
    ASSERT_TRUE(back.has_value()) << error_of(back);
    EXPECT_EQ(*back, s);
}

TEST(VcpuStateJson, RefusesBlobsOfTheWrongSize) {
    Json j = snapshot::to_json(sample_vcpu(1));
    Json lapic = j;
    lapic["lapic"] = std::string(2000, 'a');  // 1000 bytes
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(lapic, "vcpus[1]"), "vcpus[1].lapic: 1000 bytes, expected 1024");
    Json sregs = j;
    sregs["sregs_format"] = "sregs";  // a 320-byte sregs2 blob is not an sregs
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(sregs, "v"), "v.sregs: 320 bytes, expected 312");
    Json xsave = j;
    xsave["xsave"] = std::string(2 * 100, '0');
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(xsave, "v"), "v.xsave: 100 bytes, expected none or at least 4096");
    Json xcrs = j;
    xcrs["xcrs"] = "00";
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(xcrs, "v"), "v.xcrs: 1 bytes, expected none or 392");
}

TEST(VcpuStateJson, RefusesMalformedMembers) {
    Json j = snapshot::to_json(sample_vcpu(1));
    Json missing = j;
    missing.erase("vcpu_events");
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(missing, "v"), "v.vcpu_events: member missing");
    Json unknown = j;
    unknown["nested_state"] = "00";
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(unknown, "v"), "v.nested_state: unknown member");
    Json odd = j;
    odd["regs"] = "abc";
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(odd, "v"), "v.regs: odd number of hex digits");
    Json upper = j;
    std::string regs = upper["regs"];
    regs[0] = 'G';
    upper["regs"] = regs;
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(upper, "v"), "v.regs: not lowercase hex at byte 0");
    Json format = j;
    format["sregs_format"] = "sregs3";
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(format, "v"), "\"sregs3\" is neither");
    Json negative = j;
    negative["mp_state"] = -1;
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(negative, "v"), "v.mp_state: not an unsigned integer");
    Json wide = j;
    wide["tsc_khz"] = 1ULL << 32;
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(wide, "v"), "v.tsc_khz: 4294967296 is above 4294967295");
    Json msr = j;
    msr["msrs"][1] = Json::array({0x10});
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(msr, "v"), "v.msrs[1]: not an array of 2 integers");
    Json cpuid = j;
    cpuid["cpuid"][0][3] = 1ULL << 33;
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(cpuid, "v"), "v.cpuid[0]: a value above 32 bits");
    Json empty = j;
    empty["cpuid"] = Json::array();
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(empty, "v"), "v.cpuid: empty");
    EXPECT_REFUSED_WITH(snapshot::vcpu_state_from_json(Json::array(), "v"), "v: not an object");
}

TEST(VmStateJson, RoundTripsAndChecksSizes) {
    kvm::VmState s{0x1234'5678'9abcULL, pattern(kvm::kIrqchipBytes, 1), pattern(kvm::kIrqchipBytes, 2),
                   pattern(kvm::kIrqchipBytes, 3), pattern(kvm::kPitBytes, 4)};
    auto back = snapshot::vm_state_from_json(snapshot::to_json(s), "vm");
    ASSERT_TRUE(back.has_value()) << error_of(back);
    EXPECT_EQ(*back, s);
    Json pit = snapshot::to_json(s);
    pit["pit"] = "00";
    EXPECT_REFUSED_WITH(snapshot::vm_state_from_json(pit, "vm"), "vm.pit: 1 bytes, expected 112");
}

TEST(DeviceStatesJson, RoundTripsSerialTransportQueuesAndBalloon) {
    devices::DeviceStates d = sample_devices();
    auto back = snapshot::device_states_from_json(Json::parse(snapshot::to_json(d).dump()), "devices");
    ASSERT_TRUE(back.has_value()) << error_of(back);
    EXPECT_EQ(*back, d);
    EXPECT_EQ(back->virtio[0].transport.queues[0].last_avail, 70);

    devices::DeviceStates none = d;
    none.balloon.reset();
    none.virtio.clear();
    auto back_none = snapshot::device_states_from_json(snapshot::to_json(none), "devices");
    ASSERT_TRUE(back_none.has_value()) << error_of(back_none);
    EXPECT_EQ(*back_none, none);
}

TEST(DeviceStatesJson, RefusesOutOfRangeValues) {
    Json j = snapshot::to_json(sample_devices());
    Json idx = j;
    idx["virtio"][0]["transport"]["queues"][0]["last_avail"] = 65536;
    EXPECT_REFUSED_WITH(snapshot::device_states_from_json(idx, "devices"),
                        "devices.virtio[0].transport.queues[0].last_avail: 65536 is above 65535");
    Json serial = j;
    serial["serial"]["lcr"] = 256;
    EXPECT_REFUSED_WITH(snapshot::device_states_from_json(serial, "devices"), "devices.serial.lcr: 256 is above 255");
    Json values = j;
    values["balloon"]["guest_stats"]["values"].erase(0);
    EXPECT_REFUSED_WITH(snapshot::device_states_from_json(values, "devices"), "9 values, expected 10");
    Json ready = j;
    ready["virtio"][0]["transport"]["queues"][1]["ready"] = 1;
    EXPECT_REFUSED_WITH(snapshot::device_states_from_json(ready, "devices"), "queues[1].ready: not true or false");
}

TEST(VmSpecJson, RoundTripsAndAppliesTheSpecRules) {
    VmSpec spec;
    spec.name = "web-1";
    spec.kernel = "/boot/guest.elf";
    spec.cmdline = "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5";
    spec.memory_bytes = 1ULL << 30;
    spec.vcpus = 4;
    spec.resident_limit = 256ULL << 20;
    spec.swap_quota = 2ULL << 30;
    spec.balloon = true;
    spec.balloon_stats_interval = std::chrono::milliseconds(500);
    spec.serial_log = "/var/log/web-1.log";
    auto back = snapshot::vm_spec_from_json(snapshot::to_json(spec), "spec");
    ASSERT_TRUE(back.has_value()) << error_of(back);
    EXPECT_EQ(*back, spec);

    Json vcpus = snapshot::to_json(spec);
    vcpus["vcpus"] = 0;
    EXPECT_REFUSED_WITH(snapshot::vm_spec_from_json(vcpus, "spec"), "spec.vcpus:");
    Json name = snapshot::to_json(spec);
    name["name"] = "";
    EXPECT_REFUSED_WITH(snapshot::vm_spec_from_json(name, "spec"), "spec.name:");
    Json log = snapshot::to_json(spec);
    log["serial_log"] = 5;
    EXPECT_REFUSED_WITH(snapshot::vm_spec_from_json(log, "spec"), "spec.serial_log: not a string");
}

}  // namespace
