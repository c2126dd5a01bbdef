// page_table_file: see page_table_file.hpp.
#include "guestmem/page_table_file.hpp"

#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include "guestmem/byte_io.hpp"
#include "guestmem/errc.hpp"

namespace swapvisor::guestmem {

namespace {

constexpr char kPagesMagic[8] = {'S', 'W', 'V', 'P', 'A', 'G', 'E', 'S'};
constexpr std::size_t kPagesHeaderV1 = 32;
constexpr std::size_t kRefBytesV1 = 24;
constexpr std::size_t kPagesHeader = 40;
constexpr std::size_t kUuidBytes = 16;
constexpr std::size_t kRunBytes = 8;
constexpr std::size_t kRefBytes = 8;

Error bad(std::string what, const std::string& where) {
    return Error{make_error_code(Errc::bad_snapshot), "memory snapshot", where + ": " + std::move(what)};
}

using byte_io::get;
using byte_io::put;
using byte_io::put_bytes;
std::uint64_t xxh3(std::span<const std::uint8_t> b) { return XXH3_64bits(b.data(), b.size()); }

}  // namespace

std::vector<std::uint8_t> encode_page_table(std::span<const std::uint8_t> kinds, std::span<const SlotRef> refs) {
    // The devices in order of first reference, and the runs of references on one device.
    std::vector<swap::DeviceUuid> devices;
    std::vector<std::pair<std::uint32_t, std::uint32_t>> runs;  // count, device index
    for (std::size_t k = 0; k < refs.size(); ++k) {
        if (k != 0 && refs[k].uuid == refs[k - 1].uuid) {
            ++runs.back().first;
            continue;
        }
        auto at = std::find(devices.begin(), devices.end(), refs[k].uuid);
        if (at == devices.end()) at = devices.insert(devices.end(), refs[k].uuid);
        runs.emplace_back(1, static_cast<std::uint32_t>(at - devices.begin()));
    }
    static_assert(sizeof(swap::DeviceUuid) == kUuidBytes);
    const std::size_t bytes = kPagesHeader + devices.size() * kUuidBytes + kinds.size() + runs.size() * kRunBytes +
                              refs.size() * kRefBytes + 8;
    // One allocation, every byte written once below (no zero fill, no resize per field).
    std::vector<std::uint8_t> out;
    out.reserve(bytes);
    put_bytes(out, kPagesMagic, 8);
    put<std::uint32_t>(out, kMemorySnapshotVersion);
    put<std::uint32_t>(out, static_cast<std::uint32_t>(devices.size()));
    put<std::uint64_t>(out, kinds.size());
    put<std::uint64_t>(out, refs.size());
    put<std::uint64_t>(out, runs.size());
    for (const auto& d : devices) put_bytes(out, d.data(), kUuidBytes);
    put_bytes(out, kinds.data(), kinds.size());
    for (const auto& [count, device] : runs) {
        put<std::uint32_t>(out, count);
        put<std::uint32_t>(out, device);
    }
    std::size_t at = out.size();
    out.resize(at + refs.size() * kRefBytes);
    for (const SlotRef& r : refs) {
        const std::uint32_t slot = r.slot.value(), checksum = r.checksum;
        std::memcpy(out.data() + at, &slot, 4);
        std::memcpy(out.data() + at + 4, &checksum, 4);
        at += kRefBytes;
    }
    put<std::uint64_t>(out, xxh3(out));
    SWV_ASSERT(out.size() == bytes, "page table size");
    return out;
}

Result<PageTableFile> decode_page_table(std::span<const std::uint8_t> b, std::uint64_t pages,
                                        const std::string& where) {
    PageTableFile t;
    if (b.size() < kPagesHeaderV1 + 8 || std::memcmp(b.data(), kPagesMagic, 8) != 0)
        return std::unexpected(bad("not a page table", where));
    if (get<std::uint64_t>(b.data() + b.size() - 8) != xxh3(std::span(b).first(b.size() - 8)))
        return std::unexpected(bad("page table checksum mismatch (corrupt or truncated)", where));
    // The table's own version decides its layout: a version 1 snapshot whose slots a
    // swapoff moved has its table and manifest rewritten, one rename after the other.
    const std::uint32_t table_version = get<std::uint32_t>(b.data() + 8);
    if (table_version < kOldestMemorySnapshotVersion || table_version > kMemorySnapshotVersion)
        return std::unexpected(bad(fmt::format("page table version {} (this swapvisor reads versions {} to {})",
                                               table_version, kOldestMemorySnapshotVersion, kMemorySnapshotVersion),
                                   where));
    const std::uint32_t version = t.version = table_version;
    const std::uint64_t table_pages = get<std::uint64_t>(b.data() + 16);
    const std::uint64_t nrefs = get<std::uint64_t>(b.data() + 24);
    // A page needs its kind byte: more pages than bytes cannot fit (and the sizes
    // below could wrap around for a count near 2^64).
    if (pages > b.size())
        return std::unexpected(bad(fmt::format("page table of {} bytes cannot hold {} pages", b.size(), pages), where));
    if (table_pages != pages)
        return std::unexpected(bad(fmt::format("page table has {} pages, the manifest's memory size {} bytes needs {}",
                                               table_pages, pages * kPageSize, pages),
                                   where));
    // Where each part starts, by version; every count is checked against the size
    // before any part is read (a count is at most the page count: no overflow).
    const std::uint64_t ndevices = version == 1 ? 0 : get<std::uint32_t>(b.data() + 12);
    const std::uint64_t nruns = version == 1 ? 0 : (b.size() >= kPagesHeader + 8 ? get<std::uint64_t>(b.data() + 32) : ~0ull);
    const std::uint64_t header = version == 1 ? kPagesHeaderV1 : kPagesHeader;
    const std::uint64_t ref_bytes = version == 1 ? kRefBytesV1 : kRefBytes;
    if (nrefs > pages || nruns > nrefs || ndevices > nrefs)
        return std::unexpected(bad(fmt::format("page table counts {} slot references, {} device runs and {} devices "
                                               "for {} pages",
                                               nrefs, nruns, ndevices, pages),
                                   where));
    const std::uint64_t want = header + ndevices * kUuidBytes + pages + nruns * kRunBytes + nrefs * ref_bytes + 8;
    if (b.size() != want)
        return std::unexpected(bad(fmt::format("page table is {} bytes, {} pages and {} slot references need {}", b.size(),
                                               pages, nrefs, want),
                                   where));
    const std::uint8_t* devices = b.data() + header;
    const std::uint8_t* kinds = devices + ndevices * kUuidBytes;
    t.kinds.assign(kinds, kinds + pages);
    for (std::uint64_t i = 0; i < pages; ++i) {
        switch (static_cast<PageKind>(t.kinds[i])) {
            case PageKind::zero: t.counts.zero++; break;
            case PageKind::image: t.counts.image++; break;
            case PageKind::swapped: t.counts.swapped++; break;
            case PageKind::lost: t.counts.lost++; break;
            default: return std::unexpected(bad(fmt::format("page {} has unknown kind {}", i, t.kinds[i]), where));
        }
    }
    if (t.counts.swapped != nrefs)
        return std::unexpected(bad(fmt::format("{} swapped pages but {} slot references", t.counts.swapped, nrefs),
                                   where));
    const std::uint8_t* runs = kinds + pages;
    const std::uint8_t* r = runs + nruns * kRunBytes;
    t.refs.resize(nrefs);
    if (version == 1) {
        for (std::uint64_t k = 0; k < nrefs; ++k, r += kRefBytesV1) {
            std::memcpy(t.refs[k].uuid.data(), r, kUuidBytes);
            t.refs[k].slot = swap::SlotIdx(get<std::uint32_t>(r + 16));
            t.refs[k].checksum = get<std::uint32_t>(r + 20);
        }
        return t;
    }
    std::uint64_t k = 0;
    for (std::uint64_t n = 0; n < nruns; ++n) {
        const std::uint32_t count = get<std::uint32_t>(runs + n * kRunBytes);
        const std::uint32_t device = get<std::uint32_t>(runs + n * kRunBytes + 4);
        if (device >= ndevices || count == 0 || count > nrefs - k)
            return std::unexpected(bad(fmt::format("device run {} (device {} of {}, {} references) does not fit", n,
                                                   device, ndevices, count),
                                       where));
        swap::DeviceUuid uuid;
        std::memcpy(uuid.data(), devices + device * kUuidBytes, kUuidBytes);
        for (std::uint32_t i = 0; i < count; ++i, ++k, r += kRefBytes) {
            t.refs[k].uuid = uuid;
            t.refs[k].slot = swap::SlotIdx(get<std::uint32_t>(r));
            t.refs[k].checksum = get<std::uint32_t>(r + 4);
        }
    }
    if (k != nrefs)
        return std::unexpected(bad(fmt::format("the device runs cover {} of {} slot references", k, nrefs),
                                   where));
    return t;
}

}  // namespace swapvisor::guestmem
