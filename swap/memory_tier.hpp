// The compressed RAM tier (swap/README.md#tiers): a swap device whose slots are
// compressed objects in host memory instead of 4 KiB on a disk.
//
// MemoryStore is an io::BlockDevice, so a memory tier is an ordinary SwapDevice:
// the same slot allocator, reverse map, VSlot descriptors, checksums, placement by
// priority, swapoff and stats. What differs is inside submit(): a write compresses
// the page (lz4 or zstd) and keeps the object in a size-class arena, a read
// decompresses it straight into the caller's buffer (the guest page, for a
// swap-in). Both complete synchronously on the calling thread; the ring is not used.
//
// A page that does not compress below `max_stored` bytes is refused with
// -EMSGSIZE, a page for which the arena has no room with -ENOBUFS: the pool maps
// both to Errc::rejected and writes the page to the next device by priority; neither
// is a device failure.
//
// SizeClassArena: objects are rounded up to classes of 64 B steps (64 .. 4096) and
// packed into 16 KiB blocks of one anonymous region (MAP_NORESERVE), one class per
// block, like zsmalloc's zspages:
//
//   region: | block 0 (class 1024: 16 objects) | block 1 (class 192: 85) | free | ...
//   handle: block << 8 | object index          (a block holds at most 256 objects)
//
// A block whose last object is freed is given back to the kernel (MADV_DONTNEED)
// and to the free-block list. The tier's host memory is the blocks in use; what
// that costs beyond the compressed bytes is fragmentation (MemoryTierStats).
//
// Invariants (under MemoryStore::mutex_):
//  - a slot holds an object iff objects_[slot].handle != kEmpty; it is then on the
//    age list (oldest stored first), and its bytes are in a block of its class.
//  - arena bytes in use == blocks in use * kBlockBytes <= capacity.
// Order: MemoryStore::mutex_ is taken after SwapDevice::mutex_ (release() runs under
// it) and nothing is taken while it is held.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/block_device.hpp"
#include "io/unique_fd.hpp"
#include "swap/types.hpp"

namespace swapvisor::swap {

enum class Codec : std::uint8_t { lz4, zstd };
const char* codec_name(Codec codec);

// Compress one 4 KiB page into dst; the compressed size, or 0 if it does not fit
// in dst.size() bytes (the page is then not worth storing).
std::size_t compress_page(Codec codec, const std::byte* page, std::span<std::byte> dst);
// Decompress src into a 4 KiB page; false if src is not a valid object of a whole page.
bool decompress_page(Codec codec, std::span<const std::byte> src, std::byte* page);

// `mem:SIZE[,codec=lz4|zstd][,max=BYTES][,high=PCT][,low=PCT][,share=PCT]`, as swapon takes it
// (--swap and the control socket's swapon path). SIZE (K/M/G suffixes, at least
// 1 MiB) is the host memory the tier may use for compressed objects; max the
// largest object kept (default 3072: a page must compress to 3/4 or better);
// high / low the watermarks, in percent of SIZE (and of the tier's slots), between
// which demotion moves the coldest pages to the next tier; share the most of the
// tier's slots one owner group (guestmem: one VM, types.hpp owner_group) may hold
// before its pages go to the next device (100: no cap).
struct MemoryTierSpec {
    std::uint64_t size_bytes = 0;
    Codec codec = Codec::lz4;
    std::uint32_t max_stored = 3072;
    std::uint32_t high_pct = 90;
    std::uint32_t low_pct = 75;
    std::uint32_t share_pct = 100;
    // The pool's name of the tier: "mem:" and the size ("mem:256M"); two tiers of one
    // size are one name (swapon refuses the second: Errc::exists).
    std::string name() const;
};
bool is_memory_tier_name(std::string_view text);
Result<MemoryTierSpec> parse_memory_tier(std::string_view text);

struct MemoryTierStats {
    std::uint64_t stored_pages = 0;
    std::uint64_t compressed_bytes = 0;  // sum of the stored objects' sizes
    std::uint64_t arena_bytes = 0;       // host memory held: blocks in use
    std::uint64_t capacity_bytes = 0;
    std::uint64_t rejected_pages = 0;    // did not compress below max_stored
    std::uint64_t full_rejects = 0;      // compressed, but the arena had no room
    std::uint64_t demoted_pages = 0;     // moved to the next tier by demotion
    std::uint64_t swapins_served = 0;    // pages read in from the tier (swap-in, readahead)
};

class SizeClassArena {
public:
    static constexpr std::uint32_t kBlockBytes = 16384;
    static constexpr std::uint32_t kClassStep = 64;
    static constexpr std::uint32_t kClasses = 4096 / kClassStep;  // 64 .. 4096
    static constexpr std::uint32_t kNoHandle = UINT32_MAX;

    // capacity rounded down to whole blocks (at least one).
    static Result<SizeClassArena> create(std::uint64_t capacity_bytes);
    SizeClassArena(SizeClassArena&&) = default;
    SizeClassArena& operator=(SizeClassArena&&) = default;

    // An object of `bytes` (1 .. 4096), or kNoHandle when no block has room.
    std::uint32_t allocate(std::uint32_t bytes);
    void free(std::uint32_t handle);
    std::byte* address(std::uint32_t handle) const;
    std::uint64_t bytes_in_use() const { return blocks_in_use_ * std::uint64_t{kBlockBytes}; }
    std::uint64_t capacity() const { return std::uint64_t{blocks_.size()} * kBlockBytes; }
    static std::uint32_t class_size(std::uint32_t bytes) { return (bytes + kClassStep - 1) / kClassStep * kClassStep; }

private:
    static constexpr std::uint32_t kNone = UINT32_MAX;
    struct Block {
        std::uint16_t object_size = 0;  // 0: free block
        std::uint16_t used = 0;
        std::uint32_t prev = kNone, next = kNone;  // the class's list of blocks with room
        bool listed = false;
        std::uint64_t bits[4] = {};                // allocated objects
    };
    explicit SizeClassArena(io::Mapping region, std::size_t blocks);
    std::uint32_t capacity_of(const Block& b) const { return kBlockBytes / b.object_size; }
    void unlink(std::uint32_t cls, std::uint32_t b);
    void link(std::uint32_t cls, std::uint32_t b);

    io::Mapping region_;
    std::vector<Block> blocks_;
    std::vector<std::uint32_t> free_blocks_;        // released blocks, reused first
    std::uint32_t fresh_ = 0;                       // blocks below it have been used once
    std::vector<std::uint32_t> partial_;            // per class: head of blocks with room
    std::uint64_t blocks_in_use_ = 0;
};

class MemoryStore final : public io::BlockDevice {
public:
    // Slots: four per 4 KiB of SIZE (objects of 1 KiB on average; a tier out of slots
    // is full like a disk), at least one cluster.
    // `account` (may be null) is kept up to date with the arena bytes this store holds,
    // added to whatever else it counts (the pool's total over its tiers); it must
    // outlive the store.
    static Result<std::unique_ptr<MemoryStore>> create(const MemoryTierSpec& spec,
                                                       std::atomic<std::uint64_t>* account = nullptr);

    const std::string& path() const override { return name_; }
    std::uint64_t size_bytes() const override { return (slots_ + 1) * kSlotSize; }
    std::uint32_t logical_block_size() const override { return static_cast<std::uint32_t>(kSlotSize); }
    Result<void> submit(io::Ring& ring, std::span<io::BlockIo> ios) override;
    Result<void> flush(io::Ring&) override { return {}; }
    bool merges_runs() const override { return false; }
    void release(io::DevOffset offset, std::uint64_t len) override;

    const MemoryTierSpec& spec() const { return spec_; }
    MemoryTierStats stats() const;
    // Above the high watermark (arena bytes or slots), and how many of its oldest
    // objects demotion should move to get under the low one.
    bool above_high() const;
    std::uint64_t excess_over_low() const;
    // Up to `max` slots holding objects, oldest stored first, starting after the
    // `skip` oldest (demotion passes over slots it could not move).
    std::vector<SlotIdx> oldest(std::size_t skip, std::size_t max) const;
    std::uint64_t host_bytes() const { return host_bytes_.load(std::memory_order_relaxed); }
    // Per-group share: the group whose page is about to be written to `slot` (an
    // allocated slot, before its write), and whether a group holds its share already.
    void assign(SlotIdx slot, std::uint16_t group);
    bool at_share(std::uint16_t group) const;
    std::uint64_t group_pages(std::uint16_t group) const;
    // Held by the pool while it demotes this tier (one demotion at a time).
    std::mutex& demotion_mutex() { return demotion_mutex_; }
    // Relaxed counters: statistics only.
    void note_demoted(std::uint64_t pages) { demoted_.fetch_add(pages, std::memory_order_relaxed); }
    void note_swapin() { swapins_.fetch_add(1, std::memory_order_relaxed); }

private:
    static constexpr std::uint32_t kEmpty = SizeClassArena::kNoHandle;
    static constexpr std::uint32_t kNone = UINT32_MAX;
    struct Object {
        std::uint32_t handle = kEmpty;
        std::uint16_t bytes = 0;
        std::uint32_t older = kNone, newer = kNone;  // age list
    };
    MemoryStore(MemoryTierSpec spec, SizeClassArena arena, std::uint64_t slots, std::atomic<std::uint64_t>* account);
    void account_locked();  // host_bytes_ and account_ follow the arena
    int store(std::uint64_t slot, const std::byte* page);
    int load(std::uint64_t slot, std::byte* page);
    void drop_locked(std::uint64_t slot);

    const MemoryTierSpec spec_;
    const std::string name_;
    const std::uint64_t slots_;

    // Protects: arena_, objects_, the age list, the counters below it; Order: after
    // SwapDevice::mutex_, leaf.
    mutable std::mutex mutex_;
    SizeClassArena arena_;
    std::vector<Object> objects_;
    std::vector<std::uint16_t> group_;        // per slot: its page's owner group
    std::vector<std::uint32_t> group_pages_;  // per group: objects stored (share= only)
    std::uint32_t oldest_ = kNone, newest_ = kNone;
    std::uint64_t stored_ = 0;
    std::uint64_t compressed_bytes_ = 0;
    std::uint64_t rejected_ = 0;
    std::uint64_t full_rejects_ = 0;
    // Relaxed: a figure the host budget reads; mirrors arena_.bytes_in_use().
    std::atomic<std::uint64_t> host_bytes_{0};
    std::atomic<std::uint64_t>* const account_;  // relaxed, like host_bytes_
    std::atomic<std::uint64_t> demoted_{0};
    std::atomic<std::uint64_t> swapins_{0};
    // Protects: nothing but the right to demote this tier; Order: taken before any
    // swap lock, held across the moves' I/O.
    std::mutex demotion_mutex_;
};

}  // namespace swapvisor::swap
