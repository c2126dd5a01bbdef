// Swap header encoding and its one read / write at swapon or mkswap (swap_header.hpp,
// swap/README.md#header). Fields are stored little-endian byte by byte, so the
// layout does not depend on the host's byte order or on struct padding.
#include "swap/swap_header.hpp"

#include <sys/random.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "io/ring.hpp"
#include "swap/data_probe.hpp"

namespace swapvisor::swap {

namespace {

constexpr std::array<char, 8> kMagic{'S', 'W', 'A', 'P', 'V', 'I', 'S', 'R'};
constexpr std::size_t kVersionAt = 8, kPageSizeAt = 12, kUuidAt = 16, kSlotCountAt = 32, kChecksumAt = 40;
// The owner record (swap_header.hpp).
constexpr std::array<char, 8> kOwnerMagic{'S', 'W', 'V', 'O', 'W', 'N', 'E', 'R'};
constexpr std::size_t kOwnerAt = 64, kOwnerPoolAt = 72, kOwnerLeaseAt = 88, kOwnerPidAt = 96, kOwnerHostAt = 104,
                      kOwnerHostBytes = 64, kOwnerChecksumAt = 168, kOwnerEnd = 176;

void put_le(std::span<std::byte> page, std::size_t at, std::uint64_t v, std::size_t bytes) {
    for (std::size_t i = 0; i < bytes; ++i) page[at + i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}

std::uint64_t get_le(std::span<const std::byte> page, std::size_t at, std::size_t bytes) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < bytes; ++i) v |= std::uint64_t{std::to_integer<std::uint8_t>(page[at + i])} << (8 * i);
    return v;
}

// One page-aligned page, and a ring for its single I/O.
struct PageIo {
    io::Mapping page;
    io::Ring ring;
};

Result<PageIo> page_io() {
    auto page = SWV_TRY(io::Mapping::anonymous(kHeaderBytes));
    auto ring = SWV_TRY(io::Ring::create(2));
    return PageIo{std::move(page), std::move(ring)};
}

}  // namespace

Result<std::array<std::uint8_t, 16>> random_uuid() {
    std::array<std::uint8_t, 16> uuid{};
    // Kernel contract: getrandom without flags blocks only until the pool is
    // initialised at boot, and returns up to 256 bytes in one call.
    if (::getrandom(uuid.data(), uuid.size(), 0) != static_cast<ssize_t>(uuid.size()))
        return errno_error("uuid (getrandom)");
    uuid[6] = static_cast<std::uint8_t>((uuid[6] & 0x0f) | 0x40);  // RFC 4122 version 4
    uuid[8] = static_cast<std::uint8_t>((uuid[8] & 0x3f) | 0x80);  // RFC 4122 variant
    return uuid;
}

Result<SwapHeader> new_header(std::uint64_t device_bytes) {
    SwapHeader h;
    h.slot_count = slots_after_header(device_bytes);
    h.uuid = SWV_TRY(random_uuid());
    return h;
}

void encode_header(const SwapHeader& header, std::span<std::byte> page) {
    SWV_ASSERT(page.size() == kHeaderBytes, "encode_header: one page");
    std::memset(page.data(), 0, page.size());
    std::memcpy(page.data(), kMagic.data(), kMagic.size());
    put_le(page, kVersionAt, kHeaderVersion, 4);
    put_le(page, kPageSizeAt, kSlotSize, 4);
    std::memcpy(page.data() + kUuidAt, header.uuid.data(), header.uuid.size());
    put_le(page, kSlotCountAt, header.slot_count, 8);
    put_le(page, kChecksumAt, XXH3_64bits(page.data(), kChecksumAt), 8);
    if (header.owner) {
        const OwnerRecord& o = *header.owner;
        std::memcpy(page.data() + kOwnerAt, kOwnerMagic.data(), kOwnerMagic.size());
        std::memcpy(page.data() + kOwnerPoolAt, o.pool.data(), o.pool.size());
        put_le(page, kOwnerLeaseAt, o.lease_until_ms, 8);
        put_le(page, kOwnerPidAt, o.pid, 4);
        std::memcpy(page.data() + kOwnerHostAt, o.host.data(), std::min(o.host.size(), kOwnerHostBytes - 1));
        put_le(page, kOwnerChecksumAt, XXH3_64bits(page.data() + kOwnerAt, kOwnerChecksumAt - kOwnerAt), 8);
    }
}

std::string uuid_text(const std::array<std::uint8_t, 16>& uuid) {
    std::string out;
    constexpr char kHex[] = "0123456789abcdef";
    for (std::size_t i = 0; i < uuid.size(); ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
        out += kHex[uuid[i] >> 4];
        out += kHex[uuid[i] & 0xf];
    }
    return out;
}

Result<std::optional<SwapHeader>> decode_header(std::span<const std::byte> page) {
    SWV_ASSERT(page.size() == kHeaderBytes, "decode_header: one page");
    if (std::memcmp(page.data(), kMagic.data(), kMagic.size()) != 0) return std::optional<SwapHeader>{};
    if (get_le(page, kChecksumAt, 8) != XXH3_64bits(page.data(), kChecksumAt))
        return make_error(Errc::bad_header, "swap header", "checksum mismatch");
    if (get_le(page, kVersionAt, 4) != kHeaderVersion)
        return make_error(Errc::bad_header, "swap header", "unsupported version " + std::to_string(get_le(page, kVersionAt, 4)));
    if (get_le(page, kPageSizeAt, 4) != kSlotSize)
        return make_error(Errc::bad_header, "swap header", "page size " + std::to_string(get_le(page, kPageSizeAt, 4)));
    SwapHeader h;
    std::memcpy(h.uuid.data(), page.data() + kUuidAt, h.uuid.size());
    h.slot_count = get_le(page, kSlotCountAt, 8);
    // The owner record: all zero (none), or whole and checked.
    auto owner = page.subspan(kOwnerAt, kOwnerEnd - kOwnerAt);
    if (std::any_of(owner.begin(), owner.end(), [](std::byte b) { return b != std::byte{0}; })) {
        if (std::memcmp(owner.data(), kOwnerMagic.data(), kOwnerMagic.size()) != 0 ||
            get_le(page, kOwnerChecksumAt, 8) != XXH3_64bits(page.data() + kOwnerAt, kOwnerChecksumAt - kOwnerAt))
            return make_error(Errc::bad_header, "swap header", "owner record corrupt");
        OwnerRecord o;
        std::memcpy(o.pool.data(), page.data() + kOwnerPoolAt, o.pool.size());
        o.lease_until_ms = get_le(page, kOwnerLeaseAt, 8);
        o.pid = static_cast<std::uint32_t>(get_le(page, kOwnerPidAt, 4));
        const char* host = reinterpret_cast<const char*>(page.data() + kOwnerHostAt);
        o.host.assign(host, ::strnlen(host, kOwnerHostBytes - 1));
        h.owner = std::move(o);
    }
    return std::optional(h);
}

Result<std::optional<SwapHeader>> read_header(io::BlockDevice& device) {
    if (device.size_bytes() < kHeaderBytes) return std::optional<SwapHeader>{};
    PageIo pio = SWV_TRY(page_io());
    io::BlockIo op{io::IoKind::read, io::DevOffset(0), pio.page.span(), 0};
    SWV_TRY(device.submit(pio.ring, std::span(&op, 1)));
    SWV_TRY(io::io_status(op, "read swap header"));
    return decode_header(pio.page.span());
}

Result<void> write_header(io::BlockDevice& device, const SwapHeader& header) {
    PageIo pio = SWV_TRY(page_io());
    encode_header(header, pio.page.span());
    io::BlockIo op{io::IoKind::write, io::DevOffset(0), pio.page.span(), 0};
    SWV_TRY(device.submit(pio.ring, std::span(&op, 1)));
    SWV_TRY(io::io_status(op, "write swap header"));
    return device.flush(pio.ring);
}

Result<SwapHeader> mkswap(const std::filesystem::path& path, std::uint64_t size_bytes, Erase erase) {
    const std::string name = path.string();
    if (size_bytes != 0 && size_bytes < std::uint64_t{kClusterSlots} * kSlotSize)
        return make_error(io::Errc::too_small, "mkswap: swap size smaller than one 2 MiB cluster", name);
    std::error_code ec;
    const bool exists = std::filesystem::exists(path, ec);
    if (!exists && size_bytes == 0)
        return with_context<SwapHeader>(errno_error("mkswap: a new swap file needs --size", ENOENT), name);
    auto block = SWV_TRY(io::FileBlockDevice::open(path, exists ? io::OpenMode::existing : io::OpenMode::create_or_open,
                                                   exists ? 0 : size_bytes + kHeaderBytes));
    const std::uint64_t slots = slots_after_header(block->size_bytes());
    if (size_bytes != 0 && size_bytes != slots * kSlotSize) {
        return make_error(Errc::size_mismatch, "mkswap",
                          name + ": --size asks for " + std::to_string(size_bytes) + " bytes of swap, the device holds " +
                              std::to_string(slots * kSlotSize) + " after its 4 KiB header");
    }
    if (slots < kClusterSlots)
        return make_error(io::Errc::too_small, "mkswap: device smaller than its header and one 2 MiB cluster", name);
    if (block->origin() == io::FileOrigin::existing) SWV_TRY(with_context(check_erasable(*block, erase), name));
    SwapHeader header = SWV_TRY(new_header(block->size_bytes()));
    Result<void> written = write_header(*block, header);
    if (!written) {
        if (block->origin() == io::FileOrigin::created) std::filesystem::remove(path, ec);
        return with_context<SwapHeader>(std::unexpected(written.error()), name);
    }
    SWV_TRY(with_context(block->close(), name));
    return header;
}

}  // namespace swapvisor::swap
