// The compressed RAM tier: codecs, the size-class arena and MemoryStore
// (memory_tier.hpp, swap/README.md#tiers).
#include "swap/memory_tier.hpp"

#include <sys/mman.h>

#include <lz4.h>
#include <zstd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstring>

namespace swapvisor::swap {

const char* codec_name(Codec codec) { return codec == Codec::lz4 ? "lz4" : "zstd"; }

namespace {

// zstd's fastest level: the tier sits on the reclaim path. Its contexts are per
// thread (each is ~1 MiB to create; reclaim and fault threads reuse theirs).
constexpr int kZstdLevel = 1;

struct ZstdContexts {
    ZSTD_CCtx* c = ZSTD_createCCtx();
    ZSTD_DCtx* d = ZSTD_createDCtx();
    ~ZstdContexts() {
        ZSTD_freeCCtx(c);
        ZSTD_freeDCtx(d);
    }
};
ZstdContexts& zstd_contexts() {
    thread_local ZstdContexts contexts;
    return contexts;
}

}  // namespace

std::size_t compress_page(Codec codec, const std::byte* page, std::span<std::byte> dst) {
    if (codec == Codec::lz4) {
        const int n = LZ4_compress_default(reinterpret_cast<const char*>(page), reinterpret_cast<char*>(dst.data()),
                                           static_cast<int>(kSlotSize), static_cast<int>(dst.size()));
        return n > 0 ? static_cast<std::size_t>(n) : 0;
    }
    const std::size_t n = ZSTD_compressCCtx(zstd_contexts().c, dst.data(), dst.size(), page, kSlotSize, kZstdLevel);
    return ZSTD_isError(n) ? 0 : n;
}

bool decompress_page(Codec codec, std::span<const std::byte> src, std::byte* page) {
    if (codec == Codec::lz4) {
        const int n = LZ4_decompress_safe(reinterpret_cast<const char*>(src.data()), reinterpret_cast<char*>(page),
                                          static_cast<int>(src.size()), static_cast<int>(kSlotSize));
        return n == static_cast<int>(kSlotSize);
    }
    const std::size_t n = ZSTD_decompressDCtx(zstd_contexts().d, page, kSlotSize, src.data(), src.size());
    return !ZSTD_isError(n) && n == kSlotSize;
}

// --- spec ----------------------------------------------------------------------

namespace {

constexpr std::string_view kPrefix = "mem:";

std::optional<std::uint64_t> parse_bytes(std::string_view text) {
    std::uint64_t value = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || ptr == text.data()) return std::nullopt;
    std::string_view unit(ptr, static_cast<std::size_t>(text.data() + text.size() - ptr));
    unsigned shift = 0;
    if (unit == "" || unit == "B") shift = 0;
    else if (unit == "K" || unit == "KiB" || unit == "k") shift = 10;
    else if (unit == "M" || unit == "MiB") shift = 20;
    else if (unit == "G" || unit == "GiB") shift = 30;
    else if (unit == "T" || unit == "TiB") shift = 40;
    else return std::nullopt;
    if (shift != 0 && value > (UINT64_MAX >> shift)) return std::nullopt;
    return value << shift;
}

std::optional<std::uint32_t> parse_u32(std::string_view text) {
    std::uint32_t value = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
    return value;
}

}  // namespace

bool is_memory_tier_name(std::string_view text) { return text.starts_with(kPrefix); }

std::string MemoryTierSpec::name() const {
    static constexpr std::pair<unsigned, const char*> kUnits[] = {{40, "T"}, {30, "G"}, {20, "M"}, {10, "K"}};
    for (auto [shift, unit] : kUnits) {
        if (size_bytes % (std::uint64_t{1} << shift) == 0)
            return std::string(kPrefix) + std::to_string(size_bytes >> shift) + unit;
    }
    return std::string(kPrefix) + std::to_string(size_bytes);
}

Result<MemoryTierSpec> parse_memory_tier(std::string_view text) {
    auto bad = [text](std::string what) {
        return errno_error("memory tier", EINVAL, "'" + std::string(text) + "': " + what);
    };
    if (!is_memory_tier_name(text)) return bad("a memory tier is named mem:SIZE");
    text.remove_prefix(kPrefix.size());
    MemoryTierSpec spec;
    std::size_t comma = text.find(',');
    auto size = parse_bytes(text.substr(0, comma));
    if (!size) return bad("SIZE must be a byte count such as 256M or 2G");
    if (*size < (std::uint64_t{1} << 20)) return bad("SIZE must be at least 1M");
    spec.size_bytes = *size;
    while (comma != std::string_view::npos) {
        const std::size_t start = comma + 1;
        comma = text.find(',', start);
        std::string_view option = text.substr(start, comma == std::string_view::npos ? comma : comma - start);
        const std::size_t eq = option.find('=');
        if (eq == std::string_view::npos) return bad("option '" + std::string(option) + "' needs a value");
        std::string_view key = option.substr(0, eq);
        std::string_view value = option.substr(eq + 1);
        if (key == "codec") {
            if (value == "lz4") spec.codec = Codec::lz4;
            else if (value == "zstd") spec.codec = Codec::zstd;
            else return bad("codec must be lz4 or zstd");
        } else if (key == "max") {
            auto max = parse_bytes(value);
            if (!max || *max < 64 || *max > kSlotSize) return bad("max must lie in 64..4096 bytes");
            spec.max_stored = static_cast<std::uint32_t>(*max);
        } else if (key == "high" || key == "low" || key == "share") {
            auto pct = parse_u32(value);
            if (!pct || *pct == 0 || *pct > 100) return bad(std::string(key) + " must be a percentage in 1..100");
            (key == "high" ? spec.high_pct : key == "low" ? spec.low_pct : spec.share_pct) = *pct;
        } else {
            return bad("unknown option '" + std::string(key) + "' (accepted: codec=lz4|zstd, max=BYTES, high=PCT, low=PCT, share=PCT)");
        }
    }
    if (spec.low_pct >= spec.high_pct) return bad("low must be below high");
    return spec;
}

// --- SizeClassArena ------------------------------------------------------------

Result<SizeClassArena> SizeClassArena::create(std::uint64_t capacity_bytes) {
    const std::size_t blocks = std::max<std::uint64_t>(1, capacity_bytes / kBlockBytes);
    if (blocks > (kNoHandle >> 8)) return errno_error("memory tier: larger than 2^24 blocks (256 GiB)", EFBIG);
    const std::size_t len = blocks * kBlockBytes;
    // Kernel contract: MAP_NORESERVE anonymous memory costs nothing until touched;
    // MADV_DONTNEED on a private anonymous range gives the pages back (reads zero).
    void* addr = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (addr == MAP_FAILED) return errno_error("memory tier: mmap of the arena");
    return SizeClassArena(io::Mapping(addr, len), blocks);
}

SizeClassArena::SizeClassArena(io::Mapping region, std::size_t blocks)
    : region_(std::move(region)), blocks_(blocks), partial_(kClasses + 1, kNone) {}

void SizeClassArena::link(std::uint32_t cls, std::uint32_t b) {
    Block& block = blocks_[b];
    block.prev = kNone;
    block.next = partial_[cls];
    if (block.next != kNone) blocks_[block.next].prev = b;
    partial_[cls] = b;
    block.listed = true;
}

void SizeClassArena::unlink(std::uint32_t cls, std::uint32_t b) {
    Block& block = blocks_[b];
    if (block.prev != kNone) blocks_[block.prev].next = block.next;
    else partial_[cls] = block.next;
    if (block.next != kNone) blocks_[block.next].prev = block.prev;
    block.prev = block.next = kNone;
    block.listed = false;
}

std::uint32_t SizeClassArena::allocate(std::uint32_t bytes) {
    SWV_ASSERT(bytes > 0 && bytes <= kSlotSize, "arena: object size out of range");
    const std::uint32_t size = class_size(bytes);
    const std::uint32_t cls = size / kClassStep;
    std::uint32_t b = partial_[cls];
    if (b == kNone) {
        if (!free_blocks_.empty()) {
            b = free_blocks_.back();
            free_blocks_.pop_back();
        } else if (fresh_ < blocks_.size()) {
            b = fresh_++;
        } else {
            return kNoHandle;
        }
        blocks_[b] = Block{};
        blocks_[b].object_size = static_cast<std::uint16_t>(size);
        blocks_in_use_++;
        link(cls, b);
    }
    Block& block = blocks_[b];
    std::uint32_t index = kNone;
    for (std::uint32_t w = 0; w < 4 && index == kNone; ++w) {
        if (~block.bits[w] != 0) index = w * 64 + static_cast<std::uint32_t>(std::countr_one(block.bits[w]));
    }
    SWV_ASSERT(index < capacity_of(block), "arena: a listed block is full");
    block.bits[index / 64] |= std::uint64_t{1} << (index % 64);
    if (++block.used == capacity_of(block)) unlink(cls, b);
    return b << 8 | index;
}

void SizeClassArena::free(std::uint32_t handle) {
    const std::uint32_t b = handle >> 8;
    const std::uint32_t index = handle & 0xff;
    SWV_ASSERT(b < blocks_.size() && blocks_[b].object_size != 0, "arena: free of a handle in a free block");
    Block& block = blocks_[b];
    const std::uint64_t bit = std::uint64_t{1} << (index % 64);
    SWV_ASSERT((block.bits[index / 64] & bit) != 0, "arena: double free");
    block.bits[index / 64] &= ~bit;
    const std::uint32_t cls = block.object_size / kClassStep;
    const bool was_full = block.used == capacity_of(block);
    if (--block.used == 0) {
        if (block.listed) unlink(cls, b);
        block.object_size = 0;
        blocks_in_use_--;
        // Kernel contract: see create(); the block reads zero when reused.
        ::madvise(region_.data() + std::size_t{b} * kBlockBytes, kBlockBytes, MADV_DONTNEED);
        free_blocks_.push_back(b);
    } else if (was_full) {
        link(cls, b);
    }
}

std::byte* SizeClassArena::address(std::uint32_t handle) const {
    const std::uint32_t b = handle >> 8;
    return region_.data() + std::size_t{b} * kBlockBytes + std::size_t{handle & 0xff} * blocks_[b].object_size;
}

// --- MemoryStore ---------------------------------------------------------------

Result<std::unique_ptr<MemoryStore>> MemoryStore::create(const MemoryTierSpec& spec,
                                                        std::atomic<std::uint64_t>* account) {
    auto arena = SWV_TRY(SizeClassArena::create(spec.size_bytes));
    const std::uint64_t slots =
        std::max<std::uint64_t>(kClusterSlots, spec.size_bytes / kSlotSize * 4 / kClusterSlots * kClusterSlots);
    if (slots > UINT32_MAX - 1) return errno_error("memory tier: more than 2^32 slots", EFBIG);
    return std::unique_ptr<MemoryStore>(new MemoryStore(spec, std::move(arena), slots, account));
}

MemoryStore::MemoryStore(MemoryTierSpec spec, SizeClassArena arena, std::uint64_t slots,
                         std::atomic<std::uint64_t>* account)
    : spec_(spec),
      name_(spec.name()),
      slots_(slots),
      arena_(std::move(arena)),
      objects_(slots),
      group_(spec.share_pct < 100 ? slots : 0),
      group_pages_(spec.share_pct < 100 ? std::size_t{1} << 16 : 0),
      account_(account) {}

void MemoryStore::assign(SlotIdx slot, std::uint16_t group) {
    if (group_.empty()) return;
    std::lock_guard lock(mutex_);
    SWV_ASSERT(slot.value() < slots_ && objects_[slot.value()].handle == kEmpty, "memory tier: assign of a used slot");
    group_[slot.value()] = group;
}

bool MemoryStore::at_share(std::uint16_t group) const {
    if (group_pages_.empty()) return false;
    std::lock_guard lock(mutex_);
    return std::uint64_t{group_pages_[group]} * 100 >= slots_ * spec_.share_pct;
}

std::uint64_t MemoryStore::group_pages(std::uint16_t group) const {
    if (group_pages_.empty()) return 0;
    std::lock_guard lock(mutex_);
    return group_pages_[group];
}

void MemoryStore::account_locked() {
    const std::uint64_t now = arena_.bytes_in_use();
    const std::uint64_t before = host_bytes_.exchange(now, std::memory_order_relaxed);
    // Unsigned wrap-around makes this a subtraction when the arena shrank.
    if (account_ != nullptr && now != before) account_->fetch_add(now - before, std::memory_order_relaxed);
}

Result<void> MemoryStore::submit(io::Ring&, std::span<io::BlockIo> ios) {
    SWV_TRY(io::check_block_io(*this, ios));
    for (io::BlockIo& io : ios) {
        if (io.kind == io::IoKind::fsync) {
            io.result = 0;
            continue;
        }
        // One page per op (merges_runs is false); a longer op is done page by page
        // and fails whole if any page does.
        int result = static_cast<int>(io.buf.size());
        for (std::size_t off = 0; off < io.buf.size(); off += kSlotSize) {
            const std::uint64_t slot = io.offset.value() / kSlotSize - 1 + off / kSlotSize;
            const int r = io.kind == io::IoKind::write ? store(slot, io.buf.data() + off) : load(slot, io.buf.data() + off);
            if (r < 0) {
                result = r;
                break;
            }
        }
        io.result = result;
    }
    return {};
}

int MemoryStore::store(std::uint64_t slot, const std::byte* page) {
    SWV_ASSERT(slot < slots_, "memory tier: slot out of range");
    // Compressed outside the lock; objects never exceed max_stored.
    alignas(64) thread_local std::byte scratch[kSlotSize];
    const std::size_t bytes = compress_page(spec_.codec, page, std::span(scratch, spec_.max_stored));
    std::lock_guard lock(mutex_);
    drop_locked(slot);  // a slot written again replaces its object
    if (bytes == 0) {
        rejected_++;
        return -EMSGSIZE;
    }
    const std::uint32_t handle = arena_.allocate(static_cast<std::uint32_t>(bytes));
    if (handle == kEmpty) {
        full_rejects_++;
        return -ENOBUFS;
    }
    std::memcpy(arena_.address(handle), scratch, bytes);
    Object& o = objects_[slot];
    o.handle = handle;
    o.bytes = static_cast<std::uint16_t>(bytes);
    // Newest at the tail: demotion takes from the head (stored longest ago, coldest:
    // a page that is touched again leaves the tier by its swap-in).
    o.older = newest_;
    o.newer = kNone;
    if (newest_ != kNone) objects_[newest_].newer = static_cast<std::uint32_t>(slot);
    else oldest_ = static_cast<std::uint32_t>(slot);
    newest_ = static_cast<std::uint32_t>(slot);
    stored_++;
    compressed_bytes_ += bytes;
    if (!group_pages_.empty()) group_pages_[group_[slot]]++;
    account_locked();
    return 0;
}

int MemoryStore::load(std::uint64_t slot, std::byte* page) {
    SWV_ASSERT(slot < slots_, "memory tier: slot out of range");
    alignas(64) thread_local std::byte scratch[kSlotSize];
    std::size_t bytes = 0;
    {
        // Copied out under the lock (the object may be freed or replaced the moment
        // it is let go), decompressed outside it.
        std::lock_guard lock(mutex_);
        const Object& o = objects_[slot];
        if (o.handle != kEmpty) {
            bytes = o.bytes;
            std::memcpy(scratch, arena_.address(o.handle), bytes);
        }
    }
    if (bytes == 0) {
        // A free slot reads as zeros, as a disk slot reads whatever it last held: a
        // reader racing a move (demotion, swapoff) then fails the checksum and reads
        // the vslot's new place (swap/README.md#removal).
        std::memset(page, 0, kSlotSize);
        return 0;
    }
    return decompress_page(spec_.codec, std::span(scratch, bytes), page) ? 0 : -EIO;
}

void MemoryStore::drop_locked(std::uint64_t slot) {
    Object& o = objects_[slot];
    if (o.handle == kEmpty) return;
    arena_.free(o.handle);
    if (o.older != kNone) objects_[o.older].newer = o.newer;
    else oldest_ = o.newer;
    if (o.newer != kNone) objects_[o.newer].older = o.older;
    else newest_ = o.older;
    stored_--;
    compressed_bytes_ -= o.bytes;
    if (!group_pages_.empty()) group_pages_[group_[slot]]--;
    o = Object{};
    account_locked();
}

void MemoryStore::release(io::DevOffset offset, std::uint64_t len) {
    std::lock_guard lock(mutex_);
    for (std::uint64_t off = 0; off < len; off += kSlotSize) {
        const std::uint64_t slot = (offset.value() + off) / kSlotSize - 1;
        if (slot < slots_) drop_locked(slot);
    }
}

MemoryTierStats MemoryStore::stats() const {
    std::lock_guard lock(mutex_);
    return MemoryTierStats{stored_,
                           compressed_bytes_,
                           arena_.bytes_in_use(),
                           arena_.capacity(),
                           rejected_,
                           full_rejects_,
                           demoted_.load(std::memory_order_relaxed),
                           swapins_.load(std::memory_order_relaxed)};
}

bool MemoryStore::above_high() const {
    std::lock_guard lock(mutex_);
    return arena_.bytes_in_use() * 100 > arena_.capacity() * spec_.high_pct || stored_ * 100 > slots_ * spec_.high_pct;
}

std::uint64_t MemoryStore::excess_over_low() const {
    std::lock_guard lock(mutex_);
    // Bytes are turned into objects at the current average object footprint.
    const std::uint64_t low_bytes = arena_.capacity() * spec_.low_pct / 100;
    const std::uint64_t low_slots = slots_ * spec_.low_pct / 100;
    std::uint64_t excess = stored_ > low_slots ? stored_ - low_slots : 0;
    if (arena_.bytes_in_use() > low_bytes && stored_ != 0) {
        const std::uint64_t per_object = std::max<std::uint64_t>(1, arena_.bytes_in_use() / stored_);
        excess = std::max(excess, (arena_.bytes_in_use() - low_bytes + per_object - 1) / per_object);
    }
    return std::min(excess, stored_);
}

std::vector<SlotIdx> MemoryStore::oldest(std::size_t skip, std::size_t max) const {
    std::lock_guard lock(mutex_);
    std::vector<SlotIdx> out;
    std::uint32_t s = oldest_;
    for (; s != kNone && skip > 0; --skip) s = objects_[s].newer;
    for (; s != kNone && out.size() < max; s = objects_[s].newer) out.push_back(SlotIdx(s));
    return out;
}

}  // namespace swapvisor::swap
