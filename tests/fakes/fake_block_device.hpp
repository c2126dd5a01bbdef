// FakeBlockDevice: a BlockDevice in memory (STYLE.md#7, the seam under swap). Every
// op completes synchronously with a memcpy, after the same alignment and range checks
// as the real device; the caller's ring is not used. Wrap it in io::FaultyBlockDevice
// to inject EIO / ENOSPC / short I/O or to hold an I/O at a gate. `bytes()` lets a
// test corrupt what is "on disk" to provoke a checksum mismatch.
#pragma once

#include <cstring>
#include <string>
#include <vector>

#include "io/block_device.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::testing {

class FakeBlockDevice final : public io::BlockDevice {
public:
    FakeBlockDevice(std::string name, std::uint64_t size_bytes)
        : name_(std::move(name)), data_(io::Mapping::anonymous(size_bytes).value()) {}

    const std::string& path() const override { return name_; }
    std::uint64_t size_bytes() const override { return data_.size(); }
    std::uint32_t logical_block_size() const override { return 4096; }
    Result<void> submit(io::Ring&, std::span<io::BlockIo> ios) override {
        SWV_TRY(io::check_block_io(*this, ios));
        for (io::BlockIo& io : ios) {
            std::byte* at = data_.data() + io.offset.value();
            if (io.kind == io::IoKind::read) std::memcpy(io.buf.data(), at, io.buf.size());
            else if (io.kind == io::IoKind::write) std::memcpy(at, io.buf.data(), io.buf.size());
            io.result = static_cast<int>(io.buf.size());
        }
        return {};
    }
    Result<void> flush(io::Ring&) override { return {}; }
    std::byte* bytes() { return data_.data(); }

private:
    std::string name_;
    io::Mapping data_;
};

}  // namespace swapvisor::testing
