// The snapshot manifest (vmm/snapshot/manifest.cpp) without KVM: a hand-built
// manifest written into a directory and read back equal (the memory side's member
// untouched), no temporary file left; and each way a manifest can be wrong answered
// with an error that says what is wrong.
#include "vmm/snapshot/manifest.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <numeric>

using namespace swapvisor;
using namespace swapvisor::vmm;
using snapshot::Json;
using snapshot::SnapshotErrc;

namespace {

kvm::Blob bytes(std::size_t n, std::uint8_t seed) {
    kvm::Blob b(n);
    std::iota(b.begin(), b.end(), seed);
    return b;
}

snapshot::Manifest sample(unsigned vcpus) {
    snapshot::Manifest m;
    m.spec.name = "vm0";
    m.spec.kernel = "/k.elf";
    m.spec.cmdline = "console=ttyS0";
    m.spec.memory_bytes = 64ULL << 20;
    m.spec.vcpus = vcpus;
    m.spec.balloon = false;
    for (unsigned i = 0; i < vcpus; ++i) {
        kvm::VcpuState v;
        v.index = i;
        v.cpuid = {{1, 0, 0, 0x806f8, i << 24, 0x80000000, 0}};
        v.regs = bytes(kvm::kRegsBytes, static_cast<std::uint8_t>(i));
        v.sregs = bytes(kvm::kSregs2Bytes, 1);
        v.fpu = bytes(kvm::kFpuBytes, 2);
        v.xsave = bytes(kvm::kXsaveMinBytes, 3);
        v.xcrs = bytes(kvm::kXcrsBytes, 4);
        v.debug_regs = bytes(kvm::kDebugRegsBytes, 5);
        v.lapic = bytes(kvm::kLapicBytes, 6);
        v.msrs = {{0x10, 123456789}};
        v.vcpu_events = bytes(kvm::kVcpuEventsBytes, 7);
        m.kvm.vcpus.push_back(v);
    }
    m.kvm.vm = {42, bytes(kvm::kIrqchipBytes, 1), bytes(kvm::kIrqchipBytes, 2), bytes(kvm::kIrqchipBytes, 3),
                bytes(kvm::kPitBytes, 4)};
    m.devices.serial.lcr = 3;
    m.memory = Json{{"file", "memory.img"}, {"pages", 12}, {"slots", Json::array({1, 2, 3})}};
    return m;
}

class ManifestTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() / ("swv-manifest-test-" + std::to_string(::getpid()));
        std::filesystem::remove_all(dir_);
        std::filesystem::create_directories(dir_);
    }
    void TearDown() override { std::filesystem::remove_all(dir_); }
    void write_text(const std::string& text) { std::ofstream(dir_ / "manifest.json") << text; }
    std::string text_of(const snapshot::Manifest& m) { return snapshot::manifest_to_json(m).dump(1); }
    std::filesystem::path dir_;
};

TEST_F(ManifestTest, WrittenAndReadBackEqual) {
    snapshot::Manifest m = sample(2);
    auto written = snapshot::write_manifest(dir_, m);
    ASSERT_TRUE(written.has_value()) << written.error().message();
    EXPECT_TRUE(std::filesystem::exists(dir_ / "manifest.json"));
    EXPECT_FALSE(std::filesystem::exists(dir_ / "manifest.json.tmp"));
    auto back = snapshot::read_manifest(dir_);
    ASSERT_TRUE(back.has_value()) << back.error().message();
    EXPECT_EQ(*back, m);
    EXPECT_EQ(back->memory["file"], "memory.img");

    // Writing again replaces it whole.
    m.spec.cmdline = "quiet";
    ASSERT_TRUE(snapshot::write_manifest(dir_, m).has_value());
    auto again = snapshot::read_manifest(dir_);
    ASSERT_TRUE(again.has_value()) << again.error().message();
    EXPECT_EQ(again->spec.cmdline, "quiet");
}

TEST_F(ManifestTest, AnotherVersionIsNamedAsSuch) {
    Json j = snapshot::manifest_to_json(sample(1));
    j["version"] = snapshot::kFormatVersion + 1;
    j.erase("devices");  // a newer layout: the version is what is reported
    auto r = snapshot::manifest_from_json(j);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, snapshot::make_error_code(SnapshotErrc::unsupported_version));
    EXPECT_NE(r.error().message().find("version 2, this build reads version 1"), std::string::npos)
        << r.error().message();
    Json other = snapshot::manifest_to_json(sample(1));
    other["format"] = "firecracker";
    auto f = snapshot::manifest_from_json(other);
    ASSERT_FALSE(f.has_value());
    EXPECT_NE(f.error().message().find("format: not \"swapvisor-snapshot\""), std::string::npos) << f.error().message();
}

TEST_F(ManifestTest, MissingAndUnknownMembersAreNamed) {
    for (const char* key : {"spec", "vm", "vcpus", "devices", "memory"}) {
        Json j = snapshot::manifest_to_json(sample(1));
        j.erase(key);
        auto r = snapshot::manifest_from_json(j);
        ASSERT_FALSE(r.has_value()) << key;
        EXPECT_EQ(r.error().code, snapshot::make_error_code(SnapshotErrc::bad_manifest)) << key;
        EXPECT_NE(r.error().message().find(std::string(key) + ": member missing"), std::string::npos)
            << r.error().message();
    }
    Json j = snapshot::manifest_to_json(sample(1));
    j["extra"] = 1;
    auto r = snapshot::manifest_from_json(j);
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.error().message().find("extra: unknown member"), std::string::npos) << r.error().message();
    Json mem = snapshot::manifest_to_json(sample(1));
    mem["memory"] = Json::array();
    auto m = snapshot::manifest_from_json(mem);
    ASSERT_FALSE(m.has_value());
    EXPECT_NE(m.error().message().find("memory: not an object"), std::string::npos) << m.error().message();
}

TEST_F(ManifestTest, VcpuCountMustMatchTheSpec) {
    Json j = snapshot::manifest_to_json(sample(2));
    j["spec"]["vcpus"] = 3;
    auto r = snapshot::manifest_from_json(j);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, snapshot::make_error_code(SnapshotErrc::vcpu_count));
    EXPECT_NE(r.error().message().find("2 vCPU states, spec.vcpus is 3"), std::string::npos) << r.error().message();

    Json order = snapshot::manifest_to_json(sample(2));
    std::swap(order["vcpus"][0], order["vcpus"][1]);
    auto o = snapshot::manifest_from_json(order);
    ASSERT_FALSE(o.has_value());
    EXPECT_NE(o.error().message().find("vcpus[0].index: 1, expected 0"), std::string::npos) << o.error().message();
}

TEST_F(ManifestTest, BalloonStateMustMatchTheSpec) {
    Json j = snapshot::manifest_to_json(sample(1));
    j["spec"]["balloon"] = true;
    auto r = snapshot::manifest_from_json(j);
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.error().message().find("devices.balloon: null but spec.balloon is true"), std::string::npos)
        << r.error().message();
}

TEST_F(ManifestTest, ATruncatedFileIsReportedWithItsPath) {
    std::string text = text_of(sample(1));
    write_text(text.substr(0, text.size() / 2));
    auto r = snapshot::read_manifest(dir_);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, snapshot::make_error_code(SnapshotErrc::truncated));
    EXPECT_NE(r.error().message().find((dir_ / "manifest.json").string()), std::string::npos) << r.error().message();

    write_text("");
    auto empty = snapshot::read_manifest(dir_);
    ASSERT_FALSE(empty.has_value());
    EXPECT_EQ(empty.error().code, snapshot::make_error_code(SnapshotErrc::truncated));
}

TEST_F(ManifestTest, ADirectoryWithoutAManifestIsNoSnapshot) {
    auto r = snapshot::read_manifest(dir_);
    ASSERT_FALSE(r.has_value());
    EXPECT_TRUE(r.error().is(std::errc::no_such_file_or_directory)) << r.error().message();
    EXPECT_NE(r.error().message().find("manifest.json"), std::string::npos) << r.error().message();
    auto w = snapshot::write_manifest(dir_ / "absent", sample(1));
    ASSERT_FALSE(w.has_value());
}

TEST_F(ManifestTest, ABadVcpuBlobIsNamedByItsPath) {
    Json j = snapshot::manifest_to_json(sample(2));
    j["vcpus"][1]["lapic"] = "00";
    auto r = snapshot::manifest_from_json(j);
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.error().message().find("vcpus[1].lapic: 1 bytes, expected 1024"), std::string::npos)
        << r.error().message();
}

}  // namespace
