// 16550 register file and the line-buffered output sink.
//
//   offset  DLAB=0 read / write      DLAB=1
//     0     RBR (0)  / THR -> sink   DLL
//     1     IER                      DLM
//     2     IIR (0x01: none pending) / FCR (ignored)
//     3     LCR (bit 7 = DLAB)
//     4     MCR
//     5     LSR (always 0x60)
//     6     MSR (0xb0: DCD, DSR, CTS)
//     7     SCR
#include "vmm/devices/serial.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

namespace swapvisor::vmm::devices {
namespace {
constexpr std::uint8_t kLcrDlab = 0x80;
constexpr std::uint8_t kIirNoInterrupt = 0x01;
constexpr std::uint8_t kMsrConnected = 0xb0;
constexpr std::size_t kFlushBytes = 4096;
}  // namespace

Result<SerialSink> SerialSink::open_file(const std::filesystem::path& path) {
    // Kernel contract: O_APPEND makes every write(2) land at the current end, so
    // several VMs may share one log file without tearing lines that fit one write.
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return errno_error("open serial log");
    return SerialSink(fd, io::UniqueFd(fd));
}

Serial16550::~Serial16550() { flush(); }

void Serial16550::read(std::uint64_t offset, std::span<std::byte> data) {
    std::lock_guard lock(mutex_);
    std::uint8_t v = 0;
    bool dlab = (lcr_ & kLcrDlab) != 0;
    switch (offset) {
        case 0: v = dlab ? dll_ : 0; break;
        case 1: v = dlab ? dlm_ : ier_; break;
        case 2: v = kIirNoInterrupt; break;
        case 3: v = lcr_; break;
        case 4: v = mcr_; break;
        case 5: v = kLsrIdle; break;
        case 6: v = kMsrConnected; break;
        case 7: v = scr_; break;
        default: v = 0xff; break;
    }
    std::fill(data.begin(), data.end(), std::byte{0});
    if (!data.empty()) data[0] = std::byte{v};
}

BusAction Serial16550::write(std::uint64_t offset, std::span<const std::byte> data) {
    if (data.empty()) return BusAction::resume();
    auto v = static_cast<std::uint8_t>(data[0]);
    std::lock_guard lock(mutex_);
    bool dlab = (lcr_ & kLcrDlab) != 0;
    switch (offset) {
        case 0:
            if (dlab) {
                dll_ = v;
            } else {
                if (at_line_start_) buffer_ += sink_.prefix();
                buffer_.push_back(static_cast<char>(v));
                at_line_start_ = v == '\n';
                if (v == '\n' || buffer_.size() >= kFlushBytes) flush_locked();
            }
            break;
        case 1: (dlab ? dlm_ : ier_) = v; break;
        case 3: lcr_ = v; break;
        case 4: mcr_ = v; break;
        case 7: scr_ = v; break;
        default: break;  // FCR, LSR, MSR: nothing to keep
    }
    return BusAction::resume();
}

void Serial16550::flush() {
    std::lock_guard lock(mutex_);
    flush_locked();
}

SerialState Serial16550::save() {
    std::lock_guard lock(mutex_);
    flush_locked();
    return SerialState{ier_, lcr_, mcr_, scr_, dll_, dlm_};
}

void Serial16550::restore(const SerialState& state) {
    std::lock_guard lock(mutex_);
    ier_ = state.ier;
    lcr_ = state.lcr;
    mcr_ = state.mcr;
    scr_ = state.scr;
    dll_ = state.dll;
    dlm_ = state.dlm;
    buffer_.clear();
    at_line_start_ = true;
}

void Serial16550::flush_locked() {
    std::size_t done = 0;
    while (done < buffer_.size()) {
        // Kernel contract: write(2) may be short or interrupted; retry until all
        // bytes are out. A failing sink (closed stdout) drops the output: the guest
        // must not be stopped by where its console goes.
        ssize_t n = ::write(sink_.fd(), buffer_.data() + done, buffer_.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        done += static_cast<std::size_t>(n);
    }
    buffer_.clear();
}

}  // namespace swapvisor::vmm::devices
