// Serial16550: the COM1 UART at ports 0x3f8..0x3ff as far as a polling guest needs
// it. Bytes written to THR go to an output sink (stdout or a log file), line
// buffered; LSR always reports the transmitter empty and idle (0x60), so a guest
// polling for THRE never waits; there is no input and no interrupt. The other
// registers hold what the guest writes (IER, LCR, MCR, SCR, divisor latch) and read
// back plausibly, which is what Linux's 8250 probe and console need.
//
// Threads: any vCPU may write; one mutex serialises the registers and the buffer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>

#include "io/result.hpp"
#include "io/unique_fd.hpp"
#include "vmm/devices/bus.hpp"

namespace swapvisor::vmm::devices {

inline constexpr std::uint16_t kCom1Base = 0x3f8;
inline constexpr std::uint16_t kCom1Len = 8;

// Where serial output goes: a borrowed fd (stdout) or an owned log file.
class SerialSink {
public:
    static SerialSink borrowed(int fd) { return SerialSink(fd, io::UniqueFd()); }
    static Result<SerialSink> open_file(const std::filesystem::path& path);  // append, create 0644

    int fd() const { return fd_; }
    // Text put before every line (several VMs sharing one stdout: "[name] ").
    SerialSink with_prefix(std::string prefix) && {
        prefix_ = std::move(prefix);
        return std::move(*this);
    }
    const std::string& prefix() const { return prefix_; }

private:
    SerialSink(int fd, io::UniqueFd owned) : fd_(fd), owned_(std::move(owned)) {}
    int fd_;
    io::UniqueFd owned_;
    std::string prefix_;
};

// The UART's registers for a snapshot. No output is carried: save() writes a
// partial line out first, and a restored UART starts a fresh line on its own sink
// (with its own prefix).
struct SerialState {
    std::uint8_t ier = 0, lcr = 0, mcr = 0, scr = 0, dll = 0, dlm = 0;
    bool operator==(const SerialState&) const = default;
};

class Serial16550 final : public BusDevice {
public:
    explicit Serial16550(SerialSink sink) : sink_(std::move(sink)) {}
    ~Serial16550() override;

    void read(std::uint64_t offset, std::span<std::byte> data) override;
    BusAction write(std::uint64_t offset, std::span<const std::byte> data) override;

    // Write out a partial line (VM exit).
    void flush();

    // Snapshot (the line so far is flushed first) and restore (any values: the
    // registers hold whatever the guest wrote).
    SerialState save();
    void restore(const SerialState& state);

    static constexpr std::uint8_t kLsrIdle = 0x60;  // THRE | TEMT

private:
    void flush_locked();

    SerialSink sink_;
    // Protects: the registers and buffer_; Order: leaf.
    std::mutex mutex_;
    std::uint8_t ier_ = 0, lcr_ = 0, mcr_ = 0, scr_ = 0, dll_ = 0, dlm_ = 0;
    std::string buffer_;
    bool at_line_start_ = true;
};

}  // namespace swapvisor::vmm::devices
