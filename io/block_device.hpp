// BlockDevice: where swap slots live. FileBlockDevice is a regular file or a block
// device opened O_DIRECT; every offset, length and buffer address must be a multiple
// of logical_block_size() (checked: io::Errc::misaligned, never a silent bounce).
// FaultyBlockDevice (io/fault_injection.hpp) wraps any device for fault tests.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>

#include "io/ring.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::io {

enum class Errc {
    misaligned = 1,      // offset, length or buffer not aligned to the logical block size
    out_of_range,        // I/O beyond the end of the device
    short_io,            // transfer ended early and could not be completed
    not_file_or_block,   // path is neither a regular file nor a block device
    too_small,           // device smaller than one unit of use
    in_use,              // another process holds the device (file lock held, or block device claimed)
    ram_backed,          // a file on tmpfs / ramfs: swapping to it would swap RAM to RAM
    no_reservation,      // the file system cannot reserve space (no fallocate): a sparse file could hit ENOSPC
};
const std::error_category& io_category();
inline std::error_code make_error_code(Errc e) { return {static_cast<int>(e), io_category()}; }

// What a device is, whatever name reaches it (hard link, symlink, relative path):
// a regular file is its (st_dev, st_ino), a block device its device number st_rdev.
struct DeviceIdentity {
    enum class Kind : std::uint8_t { file, block };
    Kind kind = Kind::file;
    std::uint64_t dev = 0;  // st_dev of a file, st_rdev of a block device
    std::uint64_t ino = 0;  // st_ino of a file; 0 for a block device
    bool operator==(const DeviceIdentity&) const = default;
};
// The identity of what path names now (stat follows symlinks): ENOENT if missing,
// Errc::not_file_or_block if it is neither a regular file nor a block device.
Result<DeviceIdentity> identity_of(const std::filesystem::path& path);

// One I/O against a BlockDevice: `result` as IoOp::result.
struct BlockIo {
    IoKind kind = IoKind::read;
    DevOffset offset{};
    std::span<std::byte> buf;
    int result = 0;
};

class BlockDevice {
public:
    virtual ~BlockDevice() = default;
    virtual const std::string& path() const = 0;
    virtual std::uint64_t size_bytes() const = 0;
    virtual std::uint32_t logical_block_size() const = 0;
    // Run a batch on the caller's ring. Alignment and range are checked first
    // (check_block_io): if any op is bad, NOTHING is issued and the Errc is returned.
    // Otherwise every op gets its own result (bytes or -errno; see io_status) and the
    // call fails only if the ring does.
    virtual Result<void> submit(Ring& ring, std::span<BlockIo> ios) = 0;
    // Make written data durable (fdatasync equivalent through the ring).
    virtual Result<void> flush(Ring& ring) = 0;
    // Which device this is (files and block devices); none for in-memory fakes.
    virtual std::optional<DeviceIdentity> identity() const { return std::nullopt; }
    // Reads the device issued again after a transient failure, inside one submit
    // (NbdDevice: a broken or late connection); 0 for devices that never retry.
    virtual std::uint64_t read_retries() const { return 0; }
    // Whether neighbouring pages may go as one op (false: one page per op, for a
    // device that stores pages one by one, swap's compressed memory tier).
    virtual bool merges_runs() const { return true; }
    // [offset, offset + len) will not be read again until it is written: a device
    // that holds data in memory frees it; files and block devices ignore it.
    virtual void release(DevOffset /*offset*/, std::uint64_t /*len*/) {}
};

// The checks every BlockDevice::submit runs before issuing anything: each read/write
// op's offset, length and buffer address are multiples of dev.logical_block_size()
// (else Errc::misaligned) and [offset, offset + len) lies inside the device (else
// Errc::out_of_range). On failure nothing may be issued; the offending op's result is
// -EINVAL (misaligned) or -ERANGE (out of range), every other op's is -ECANCELED.
Result<void> check_block_io(const BlockDevice& dev, std::span<BlockIo> ios);

// One finished op as a Result: ok when it moved its whole buffer (fsync: result 0),
// else the errno it carries (op names what failed, e.g. "swap-in read").
Result<void> io_status(const BlockIo& io, const char* op);

enum class OpenMode { existing, create_or_open };
// Whether FileBlockDevice::open made the file (a new file holds no one's data).
enum class FileOrigin : bool { existing, created };

class FileBlockDevice final : public BlockDevice {
public:
    // existing: the path must exist (file or block device) and hold at least
    // size_bytes. create_or_open: a missing regular file is created (mode 0600) and
    // its space reserved with fallocate (Errc::no_reservation where the file system
    // cannot: never a sparse file that fails with ENOSPC later); an existing file
    // shorter than size_bytes is extended the same way; a block device must already
    // be big enough. Regular files on tmpfs / ramfs are refused (Errc::ram_backed).
    // O_DIRECT always. Ownership across processes: block devices are opened O_EXCL
    // (refused while mounted or claimed), regular files carry an OFD write lock on
    // the whole file for the device's life (Errc::in_use when another open file
    // description, e.g. another swapvisor, holds it). size_bytes() is rounded down
    // to whole logical blocks. Errors carry the path as context.
    static Result<std::unique_ptr<FileBlockDevice>> open(const std::filesystem::path& path, OpenMode mode,
                                                         std::uint64_t size_bytes = 0);
    const std::string& path() const override { return path_; }
    std::uint64_t size_bytes() const override { return size_; }
    std::uint32_t logical_block_size() const override { return block_size_; }
    Result<void> submit(Ring& ring, std::span<BlockIo> ios) override;
    Result<void> flush(Ring& ring) override;
    std::optional<DeviceIdentity> identity() const override { return identity_; }
    FileOrigin origin() const { return origin_; }
    // Close now and report the error (a failed close may mean lost writes); the
    // destructor is the fallback.
    Result<void> close() { return fd_.close(); }
    int fd() const { return fd_.get(); }

private:
    FileBlockDevice(UniqueFd fd, std::string path, std::uint64_t size, std::uint32_t block_size,
                    DeviceIdentity identity, FileOrigin origin);
    // open() without the device path in its errors' context (open adds it).
    static Result<std::unique_ptr<FileBlockDevice>> open_unnamed(const std::filesystem::path& path, OpenMode mode,
                                                                 std::uint64_t size_bytes);
    UniqueFd fd_;  // its OFD lock (files) lives and dies with it
    std::string path_;
    std::uint64_t size_;
    std::uint32_t block_size_;
    DeviceIdentity identity_;
    FileOrigin origin_;
};

}  // namespace swapvisor::io

template <>
struct std::is_error_code_enum<swapvisor::io::Errc> : std::true_type {};
