// Buses and devices (vmm/devices): range dispatch and overlap rules, the unknown
// address policy, the debug-exit value decoding and the 16550 registers and output.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <string>

#include "vmm/devices/bus.hpp"
#include "vmm/devices/debug_exit.hpp"
#include "vmm/devices/serial.hpp"

namespace swapvisor::vmm::devices {
namespace {

// Records the last access.
struct Recorder final : BusDevice {
    std::uint64_t last_offset = ~0ULL;
    std::size_t last_width = 0;
    void read(std::uint64_t offset, std::span<std::byte> data) override {
        last_offset = offset;
        last_width = data.size();
        for (auto& b : data) b = std::byte{0x42};
    }
    BusAction write(std::uint64_t offset, std::span<const std::byte> data) override {
        last_offset = offset;
        last_width = data.size();
        return BusAction::resume();
    }
};

std::span<const std::byte> bytes_of(const std::uint32_t& v, std::size_t n) {
    return {reinterpret_cast<const std::byte*>(&v), n};
}

TEST(BusTest, DispatchesWithOffset) {
    Bus bus("test");
    auto dev = std::make_shared<Recorder>();
    ASSERT_TRUE(bus.insert(0x100, 8, dev).has_value());
    std::array<std::byte, 2> buf{};
    bus.read(0x105, buf);
    EXPECT_EQ(dev->last_offset, 5u);
    EXPECT_EQ(dev->last_width, 2u);
    EXPECT_EQ(buf[0], std::byte{0x42});
    std::uint32_t v = 7;
    EXPECT_FALSE(bus.write(0x100, bytes_of(v, 4)).exit_code.has_value());
    EXPECT_EQ(dev->last_offset, 0u);
    EXPECT_EQ(bus.unknown_accesses(), 0u);
}

TEST(BusTest, RefusesOverlapsAndEmptyRanges) {
    Bus bus("test");
    auto dev = std::make_shared<Recorder>();
    ASSERT_TRUE(bus.insert(0x100, 0x10, dev).has_value());
    EXPECT_TRUE(bus.insert(0x10f, 1, dev).error().is(std::errc::file_exists));
    EXPECT_TRUE(bus.insert(0xf0, 0x11, dev).error().is(std::errc::file_exists));
    EXPECT_TRUE(bus.insert(0x0, 0x1000, dev).error().is(std::errc::file_exists));
    EXPECT_TRUE(bus.insert(0x200, 0, dev).error().is(std::errc::invalid_argument));
    EXPECT_TRUE(bus.insert(~0ULL, 2, dev).error().is(std::errc::invalid_argument));
    EXPECT_TRUE(bus.insert(0xf0, 0x10, dev).has_value());   // adjacent below
    EXPECT_TRUE(bus.insert(0x110, 0x10, dev).has_value());  // adjacent above
}

TEST(BusTest, UnknownAddressesReadAllOnesAndDropWrites) {
    Bus bus("test");
    auto dev = std::make_shared<Recorder>();
    ASSERT_TRUE(bus.insert(0x100, 8, dev).has_value());
    std::array<std::byte, 4> buf{};
    bus.read(0x108, buf);  // one past the range
    for (auto b : buf) EXPECT_EQ(b, std::byte{0xff});
    std::uint32_t v = 1;
    EXPECT_FALSE(bus.write(0x80, bytes_of(v, 4)).exit_code.has_value());
    EXPECT_EQ(bus.unknown_accesses(), 2u);
    EXPECT_EQ(dev->last_width, 0u);  // never called
}

TEST(DebugExitTest, ValueOfEachWidth) {
    DebugExit dev;
    std::uint32_t v = 0xdeadbeef;
    EXPECT_EQ(dev.write(0, bytes_of(v, 4)).exit_code, 0xdeadbeefu);
    EXPECT_EQ(dev.write(0, bytes_of(v, 2)).exit_code, 0xbeefu);
    EXPECT_EQ(dev.write(0, bytes_of(v, 1)).exit_code, 0xefu);
    std::uint32_t zero = 0;
    EXPECT_EQ(dev.write(0, bytes_of(zero, 4)).exit_code, 0u);
}

TEST(DebugExitTest, OnThePortBus) {
    Bus bus("port I/O");
    ASSERT_TRUE(bus.insert(kDebugExitPort, 1, std::make_shared<DebugExit>()).has_value());
    std::uint32_t v = 3;
    EXPECT_EQ(bus.write(kDebugExitPort, bytes_of(v, 4)).exit_code, 3u);
    EXPECT_FALSE(bus.write(kDebugExitPort + 1, bytes_of(v, 1)).exit_code.has_value());
}

struct SerialFixture : ::testing::Test {
    int fd = ::memfd_create("serial_test", MFD_CLOEXEC);
    std::string output() {
        std::string s(4096, '\0');
        ssize_t n = ::pread(fd, s.data(), s.size(), 0);
        s.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
        return s;
    }
    ~SerialFixture() override { ::close(fd); }
    static std::uint8_t in(Serial16550& s, std::uint64_t reg) {
        std::array<std::byte, 1> b{};
        s.read(reg, b);
        return static_cast<std::uint8_t>(b[0]);
    }
    static void out(Serial16550& s, std::uint64_t reg, std::uint8_t v) {
        std::array<std::byte, 1> b{std::byte{v}};
        s.write(reg, b);
    }
};

TEST_F(SerialFixture, LineBufferedOutput) {
    ASSERT_GE(fd, 0);
    Serial16550 serial(SerialSink::borrowed(fd));
    for (char c : std::string("hello\nwor")) out(serial, 0, static_cast<std::uint8_t>(c));
    EXPECT_EQ(output(), "hello\n");
    serial.flush();
    EXPECT_EQ(output(), "hello\nwor");
}

TEST_F(SerialFixture, PrefixStartsEveryLineOnce) {
    ASSERT_GE(fd, 0);
    Serial16550 serial(SerialSink::borrowed(fd).with_prefix("[a] "));
    for (char c : std::string("one\ntwo\n\nthr")) out(serial, 0, static_cast<std::uint8_t>(c));
    serial.flush();
    for (char c : std::string("ee\n")) out(serial, 0, static_cast<std::uint8_t>(c));
    EXPECT_EQ(output(), "[a] one\n[a] two\n[a] \n[a] three\n");
}

TEST_F(SerialFixture, Registers) {
    Serial16550 serial(SerialSink::borrowed(fd));
    EXPECT_EQ(in(serial, 5), 0x60);  // THR empty, transmitter idle
    EXPECT_EQ(in(serial, 2), 0x01);  // no interrupt pending
    out(serial, 7, 0x5a);
    EXPECT_EQ(in(serial, 7), 0x5a);  // scratch
    out(serial, 1, 0x0f);
    EXPECT_EQ(in(serial, 1), 0x0f);  // IER
    // DLAB: offsets 0/1 become the divisor latch and nothing is transmitted.
    out(serial, 3, 0x83);
    out(serial, 0, 0x01);
    out(serial, 1, 0x00);
    EXPECT_EQ(in(serial, 0), 0x01);
    EXPECT_EQ(in(serial, 3), 0x83);
    out(serial, 3, 0x03);
    EXPECT_EQ(in(serial, 1), 0x0f);  // IER again
    serial.flush();
    EXPECT_EQ(output(), "");
    EXPECT_EQ(in(serial, 0), 0x00);  // no input
}

// Snapshot: a restored UART reads back every register the guest wrote; a partial
// line is written out by save() (the output belongs to the saved VM's sink), and the
// restored UART starts a fresh line on its own sink, with its own prefix.
TEST_F(SerialFixture, SaveFlushesAndRestoreCarriesTheRegisters) {
    Serial16550 serial(SerialSink::borrowed(fd));
    out(serial, 1, 0x05);  // IER
    out(serial, 4, 0x0b);  // MCR
    out(serial, 7, 0xa5);  // SCR
    out(serial, 3, 0x80);  // DLAB
    out(serial, 0, 0x0c);  // DLL
    out(serial, 1, 0x01);  // DLM
    out(serial, 3, 0x83);  // 8N1, DLAB still set
    out(serial, 3, 0x03);
    for (char c : std::string("part")) out(serial, 0, static_cast<std::uint8_t>(c));
    SerialState saved = serial.save();
    EXPECT_EQ(output(), "part");
    EXPECT_EQ(saved, (SerialState{0x05, 0x03, 0x0b, 0xa5, 0x0c, 0x01}));

    int fd2 = ::memfd_create("serial_restored", MFD_CLOEXEC);
    ASSERT_GE(fd2, 0);
    {
        Serial16550 restored(SerialSink::borrowed(fd2).with_prefix("[b] "));
        restored.restore(saved);
        EXPECT_EQ(restored.save(), saved);
        EXPECT_EQ(in(restored, 1), 0x05);
        EXPECT_EQ(in(restored, 4), 0x0b);
        EXPECT_EQ(in(restored, 7), 0xa5);
        out(restored, 3, 0x83);
        EXPECT_EQ(in(restored, 0), 0x0c);
        EXPECT_EQ(in(restored, 1), 0x01);
        out(restored, 3, 0x03);
        for (char c : std::string("more\n")) out(restored, 0, static_cast<std::uint8_t>(c));
    }
    std::string s(64, '\0');
    ssize_t n = ::pread(fd2, s.data(), s.size(), 0);
    s.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    EXPECT_EQ(s, "[b] more\n");
    ::close(fd2);
}

TEST(SerialSinkTest, LogFile) {
    char path[] = "/tmp/swv_serial_XXXXXX";
    int fd = ::mkstemp(path);
    ASSERT_GE(fd, 0);
    ::close(fd);
    {
        auto sink = SerialSink::open_file(path);
        ASSERT_TRUE(sink.has_value());
        Serial16550 serial(std::move(*sink));
        std::array<std::byte, 1> b{std::byte{'x'}};
        serial.write(0, b);
    }  // the destructor flushes
    char buf[8] = {};
    fd = ::open(path, O_RDONLY);
    EXPECT_EQ(::read(fd, buf, sizeof buf), 1);
    EXPECT_EQ(buf[0], 'x');
    ::close(fd);
    ::unlink(path);
    EXPECT_FALSE(SerialSink::open_file("/nonexistent/dir/log").has_value());
}

}  // namespace
}  // namespace swapvisor::vmm::devices
