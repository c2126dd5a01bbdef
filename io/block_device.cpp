// FileBlockDevice: a swap backend that is a regular file or a block device, always
// opened O_DIRECT so swap traffic never pollutes (or is hidden by) the page cache.
// Invariants: size_bytes() and logical_block_size() are fixed at open; size_bytes()
// is a whole number of logical blocks; submit() issues nothing unless every op of the
// batch is aligned and in range (check_block_io), so O_DIRECT never sees an I/O the
// kernel would reject or silently bounce. Ownership: a regular file carries an OFD
// write lock for as long as its fd is open (so a second swapvisor is refused, not
// silently sharing slots), a block device is opened O_EXCL; files on tmpfs/ramfs are
// refused and new files get their space reserved up front (no sparse files). Thread use: a FileBlockDevice holds no
// mutable state after open, so any number of threads may submit on their own Rings.
#include "io/block_device.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <linux/magic.h>
#include <unistd.h>

#include <cerrno>
#include <limits>
#include <vector>

namespace swapvisor::io {

namespace {

// Files use the page size as their O_DIRECT unit. st_blksize is the preferred I/O
// size, not the alignment the kernel demands, so it cannot be trusted here; the real
// DIO alignment of every local filesystem we run on (ext4, xfs, btrfs, tmpfs) is at
// most the page size, and swap slots are pages anyway. statx(STATX_DIOALIGN) can
// only raise this (a filesystem on a 64 KiB-sector device).
constexpr std::uint32_t kFileBlockSize = 4096;

class IoCategory final : public std::error_category {
public:
    const char* name() const noexcept override { return "swapvisor.io"; }
    std::string message(int c) const override {
        switch (static_cast<Errc>(c)) {
        case Errc::misaligned:
            return "offset, length or buffer address is not a multiple of the device's logical block size";
        case Errc::out_of_range: return "I/O reaches beyond the end of the device";
        case Errc::short_io: return "transfer ended early and could not be completed";
        case Errc::not_file_or_block: return "not a regular file or a block device";
        case Errc::too_small: return "device is smaller than requested or than one block";
        case Errc::in_use:
            return "in use by another process (a swap file is locked by its owner, a block device claimed "
                   "exclusively): another swapvisor, or the kernel's swapon, already swaps to it";
        case Errc::ram_backed:
            return "the file is on tmpfs or ramfs, which keep files in RAM: swapping there would swap RAM to RAM";
        case Errc::no_reservation:
            return "this file system cannot reserve space (fallocate unsupported); a sparse swap file would fail "
                   "with ENOSPC later: use another file system or a block device";
        }
        return "unknown io error";
    }
    std::error_condition default_error_condition(int c) const noexcept override {
        switch (static_cast<Errc>(c)) {
        case Errc::misaligned: return std::errc::invalid_argument;
        case Errc::out_of_range: return std::errc::result_out_of_range;
        case Errc::short_io: return std::errc::io_error;
        case Errc::not_file_or_block: return std::errc::no_such_device;
        case Errc::too_small: return std::errc::no_space_on_device;
        case Errc::in_use: return std::errc::device_or_resource_busy;
        case Errc::ram_backed: return std::errc::invalid_argument;
        case Errc::no_reservation: return std::errc::operation_not_supported;
        }
        return {c, *this};
    }
};

std::uint32_t file_dio_align(int fd) {
    struct statx stx {};
    // Kernel contract: statx with STATX_DIOALIGN (Linux 6.1+) reports the DIO offset
    // alignment in stx_dio_offset_align when stx_mask has the bit; older kernels
    // leave the bit clear.
    if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN) != 0 &&
        stx.stx_dio_offset_align > kFileBlockSize &&
        (stx.stx_dio_offset_align & (stx.stx_dio_offset_align - 1)) == 0) {
        return stx.stx_dio_offset_align;
    }
    return kFileBlockSize;
}

bool aligned(std::uint64_t v, std::uint32_t block) { return v % block == 0; }

}  // namespace

const std::error_category& io_category() {
    static const IoCategory category;
    return category;
}

Result<void> check_block_io(const BlockDevice& dev, std::span<BlockIo> ios) {
    const std::uint32_t block = dev.logical_block_size();
    const std::uint64_t size = dev.size_bytes();
    for (std::size_t i = 0; i < ios.size(); ++i) {
        const BlockIo& io = ios[i];
        if (io.kind == IoKind::fsync) continue;
        std::optional<Errc> bad;
        const auto addr = reinterpret_cast<std::uintptr_t>(io.buf.data());
        const std::uint64_t off = io.offset.value();
        if (!aligned(off, block) || !aligned(io.buf.size(), block) || !aligned(addr, block)) {
            bad = Errc::misaligned;
        } else if (io.buf.size() > std::numeric_limits<std::int32_t>::max() - block + 1 || off > size ||
                   io.buf.size() > size - off) {
            // (results are ints: one op moves less than 2 GiB)
            bad = Errc::out_of_range;
        }
        if (bad) {
            for (BlockIo& other : ios) other.result = -ECANCELED;
            ios[i].result = *bad == Errc::misaligned ? -EINVAL : -ERANGE;
            return make_error(*bad, "block io", "device " + dev.path() + ", offset " + std::to_string(off));
        }
    }
    return {};
}

Result<void> io_status(const BlockIo& io, const char* op) {
    if (io.result < 0) return errno_error(op, -io.result);
    const std::size_t want = io.kind == IoKind::fsync ? 0 : io.buf.size();
    if (static_cast<std::size_t>(io.result) != want) return make_error(Errc::short_io, op);
    return {};
}

FileBlockDevice::FileBlockDevice(UniqueFd fd, std::string path, std::uint64_t size, std::uint32_t block_size,
                                 DeviceIdentity identity, FileOrigin origin)
    : fd_(std::move(fd)),
      path_(std::move(path)),
      size_(size),
      block_size_(block_size),
      identity_(identity),
      origin_(origin) {}

static DeviceIdentity identity_of_stat(const struct stat& st) {
    if (S_ISBLK(st.st_mode)) return DeviceIdentity{DeviceIdentity::Kind::block, st.st_rdev, 0};
    return DeviceIdentity{DeviceIdentity::Kind::file, st.st_dev, st.st_ino};
}

Result<DeviceIdentity> identity_of(const std::filesystem::path& path) {
    struct stat st {};
    // Kernel contract: stat follows symlinks; st_dev/st_ino name a file on one
    // mounted file system, st_rdev the device a block special file stands for.
    if (::stat(path.c_str(), &st) != 0) return with_context<DeviceIdentity>(errno_error("stat swap device"), path.string());
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        return make_error(Errc::not_file_or_block, "stat swap device", path.string());
    }
    return identity_of_stat(st);
}

namespace {

// Swap on a file system that keeps its files in RAM would move guest pages from
// RAM to RAM: refused. `dir_or_file` is the file, or for a new file its directory.
Result<void> refuse_ram_backed(const std::filesystem::path& dir_or_file) {
    struct statfs fs {};
    // Kernel contract: statfs reports the file system type of the path in f_type
    // (TMPFS_MAGIC for tmpfs and /dev/shm, RAMFS_MAGIC for ramfs).
    if (::statfs(dir_or_file.c_str(), &fs) != 0) return errno_error("statfs swap file");
    if (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC) return make_error(Errc::ram_backed, "open swap file");
    return {};
}

// The whole-file OFD write lock that says "this swapvisor owns the file".
Result<void> lock_whole_file(int fd) {
    struct flock lk {};
    lk.l_type = F_WRLCK;
    lk.l_whence = SEEK_SET;
    lk.l_start = 0;
    lk.l_len = 0;  // to the end, however the file grows
    // Kernel contract: F_OFD_SETLK takes a lock owned by the open file description
    // (not the process), so it conflicts with any other open of the file, in this
    // process or another, and is released when the last fd of the description
    // closes; a conflict fails at once with EAGAIN (or EACCES), never blocks.
    if (::fcntl(fd, F_OFD_SETLK, &lk) != 0) {
        if (errno == EAGAIN || errno == EACCES) return make_error(Errc::in_use, "lock swap file");
        return errno_error("lock swap file");
    }
    return {};
}

// Reserve [0, size) so that later writes cannot fail with ENOSPC.
Result<void> reserve_space(int fd, std::uint64_t size) {
    // Kernel contract: fallocate mode 0 allocates blocks for [0, size) and raises
    // i_size; file systems that cannot answer EOPNOTSUPP. No sparse fallback: a hole
    // would be allocated by swap-out writes, which then fail with ENOSPC mid-run.
    if (::fallocate(fd, 0, 0, static_cast<off_t>(size)) == 0) return {};
    if (errno == EOPNOTSUPP) return make_error(Errc::no_reservation, "reserve swap file space (fallocate)");
    return errno_error("reserve swap file space (fallocate)");
}

}  // namespace

Result<std::unique_ptr<FileBlockDevice>> FileBlockDevice::open(const std::filesystem::path& path, OpenMode mode,
                                                               std::uint64_t size_bytes) {
    // Every error below names the device it concerns once, here.
    return with_context(open_unnamed(path, mode, size_bytes), "device " + path.string());
}

Result<std::unique_ptr<FileBlockDevice>> FileBlockDevice::open_unnamed(const std::filesystem::path& path,
                                                                       OpenMode mode, std::uint64_t size_bytes) {
    const char* p = path.c_str();
    int flags = O_RDWR | O_DIRECT | O_CLOEXEC;
    FileOrigin origin = FileOrigin::existing;
    struct stat st {};
    // open() adds the device path to every error's context.
    auto fail = [](std::unexpected<Error> e) -> Result<std::unique_ptr<FileBlockDevice>> { return e; };
    // Kernel contract: stat follows symlinks, so /dev/disk/by-id/... names work; the
    // type is checked before open() so that opening never has side effects on a
    // FIFO or character device.
    if (::stat(p, &st) == 0) {
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
            return fail(make_error(Errc::not_file_or_block, "open swap device"));
        if (S_ISBLK(st.st_mode)) flags |= O_EXCL;  // on a block device: exclusive claim
        if (S_ISREG(st.st_mode)) {
            if (auto r = refuse_ram_backed(path); !r) return fail(std::unexpected(r.error()));
        }
    } else if (errno != ENOENT || mode == OpenMode::existing) {
        return fail(errno_error("open swap device"));
    } else {
        std::filesystem::path dir = std::filesystem::absolute(path).parent_path();
        // A missing name under /dev is a device that is not there, not a file to
        // create (devtmpfs would be refused as "tmpfs", which points the wrong way).
        if (dir == "/dev" || dir.string().starts_with("/dev/"))
            return fail(errno_error("open swap device: no such block device", ENOENT));
        if (auto r = refuse_ram_backed(dir); !r) return fail(std::unexpected(r.error()));
        flags |= O_CREAT | O_EXCL;  // a concurrent creator is an error, not a shared file
        origin = FileOrigin::created;
    }
    const bool created = origin == FileOrigin::created;

    // Kernel contract: open with O_DIRECT fails with EINVAL on filesystems without
    // direct I/O; O_EXCL on a block device fails with EBUSY while it is mounted or
    // claimed (by another swapvisor, or the kernel's own swapon).
    int raw = ::open(p, flags, 0600);
    if (raw < 0) {
        if (errno == EBUSY && (flags & O_CREAT) == 0 && S_ISBLK(st.st_mode))
            return fail(make_error(Errc::in_use, "open swap device (O_EXCL)"));
        return fail(errno_error(created ? "create swap file" : "open swap device"));
    }
    UniqueFd fd(raw);
    // A file we created and then failed to size must not stay behind.
    struct Unlinker {
        const char* path;
        bool armed;
        ~Unlinker() {
            if (armed) (void)::unlink(path);
        }
    } unlinker{p, created};

    if (::fstat(fd.get(), &st) != 0) return fail(errno_error("stat swap device"));

    std::uint64_t size = 0;
    std::uint32_t block = 0;
    if (S_ISREG(st.st_mode)) {
        if (auto r = lock_whole_file(fd.get()); !r) return fail(std::unexpected(r.error()));
        size = static_cast<std::uint64_t>(st.st_size);
        if (size < size_bytes && mode == OpenMode::existing) return fail(make_error(Errc::too_small, "open swap device"));
        if (size < size_bytes) {
            if (auto r = reserve_space(fd.get(), size_bytes); !r) return fail(std::unexpected(r.error()));
            size = size_bytes;
        }
        block = file_dio_align(fd.get());
    } else if (S_ISBLK(st.st_mode)) {
        int ssz = 0;
        // Kernel contract: BLKGETSIZE64 gives the device size in bytes, BLKSSZGET the
        // logical sector size, which is the O_DIRECT alignment unit.
        if (::ioctl(fd.get(), BLKGETSIZE64, &size) != 0) return fail(errno_error("BLKGETSIZE64"));
        if (::ioctl(fd.get(), BLKSSZGET, &ssz) != 0) return fail(errno_error("BLKSSZGET"));
        if (ssz <= 0) return fail(errno_error("BLKSSZGET", EINVAL));
        block = static_cast<std::uint32_t>(ssz);
        if (size < size_bytes) return fail(make_error(Errc::too_small, "open swap device"));
    } else {
        // The path was replaced by something else between stat() and open().
        return fail(make_error(Errc::not_file_or_block, "open swap device"));
    }

    size -= size % block;
    if (size < block) return fail(make_error(Errc::too_small, "open swap device"));
    unlinker.armed = false;
    return std::unique_ptr<FileBlockDevice>(
        new FileBlockDevice(std::move(fd), path.string(), size, block, identity_of_stat(st), origin));
}

Result<void> FileBlockDevice::submit(Ring& ring, std::span<BlockIo> ios) {
    SWV_TRY(check_block_io(*this, ios));
    std::vector<IoOp> ops(ios.size());
    for (std::size_t i = 0; i < ios.size(); ++i) {
        ops[i].kind = ios[i].kind;
        ops[i].fd = fd_.get();
        ops[i].offset = ios[i].offset;
        ops[i].buf = ios[i].buf.data();
        ops[i].len = static_cast<std::uint32_t>(ios[i].buf.size());
    }
    Result<void> ran = ring.run(ops);
    for (std::size_t i = 0; i < ios.size(); ++i) ios[i].result = ops[i].result;
    return ran;
}

Result<void> FileBlockDevice::flush(Ring& ring) {
    IoOp op;
    op.kind = IoKind::fsync;
    op.fd = fd_.get();
    SWV_TRY(ring.run(std::span<IoOp>(&op, 1)));
    if (op.result < 0) return errno_error("flush swap device", -op.result, "device " + path_);
    return {};
}

}  // namespace swapvisor::io
