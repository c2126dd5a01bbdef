// Helpers shared by the swap/ tests: page contents that identify their page, a
// page arena, swap files on a real file system (tests/io/io_test_util.hpp's TempDir),
// FaultyBlockDevice wrappers, a gate that holds one I/O until the test opens it, and
// an EvictionSink that keeps brought-back pages in memory (the seam guestmem fills).
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <map>
#include <set>
#include <mutex>

#include "io/fault_injection.hpp"
#include "swap/swap_header.hpp"
#include "swap/swap_pool.hpp"
#include "tests/io/io_test_util.hpp"

namespace swapvisor::swap::test {

using io::test::TempDir;

inline constexpr std::uint64_t kClusterBytes = std::uint64_t{kClusterSlots} * kSlotSize;

// Fill a page so that its content names (id, version): a swapped page read back
// in the wrong place or stale is caught by verify_page.
inline void fill_page(std::byte* page, std::uint64_t id, std::uint32_t version = 0) {
    auto* words = reinterpret_cast<std::uint64_t*>(page);
    std::uint64_t x = id * 0x9E3779B97F4A7C15ull + version + 1;
    for (std::size_t i = 0; i < kSlotSize / 8; ++i) {
        x ^= x >> 31;
        x *= 0xBF58476D1CE4E5B9ull;
        words[i] = x ^ id;
    }
}
inline bool verify_page(const std::byte* page, std::uint64_t id, std::uint32_t version = 0) {
    alignas(4096) static thread_local std::byte expect[kSlotSize];
    fill_page(expect, id, version);
    return std::memcmp(page, expect, kSlotSize) == 0;
}

// n page-aligned pages.
class Pages {
public:
    explicit Pages(std::size_t n) : map_(io::test::aligned_buffer(n * kSlotSize)), n_(n) {}
    std::byte* operator[](std::size_t i) const { return map_.data() + i * kSlotSize; }
    std::size_t size() const { return n_; }

private:
    io::Mapping map_;
    std::size_t n_;
};

// PageOut batch for pages [first, first+count) of `pages`, owner = id = first + i.
inline std::vector<PageOut> page_outs(const Pages& pages, std::size_t first, std::size_t count,
                                      std::uint64_t id_base = 0) {
    std::vector<PageOut> out;
    for (std::size_t i = first; i < first + count; ++i) out.push_back(PageOut{pages[i], id_base + i});
    return out;
}

// A file device with `size` bytes of slots (plus the header page before slot 0;
// size 0: an existing file as it is). No header is written: the device-object
// swapon trusts its caller.
inline std::unique_ptr<io::BlockDevice> open_file(const std::filesystem::path& p, std::uint64_t size) {
    auto dev = io::FileBlockDevice::open(p, io::OpenMode::create_or_open, size == 0 ? 0 : size + kHeaderBytes);
    if (!dev) {
        ADD_FAILURE() << "open " << p << ": " << dev.error().message();
        return nullptr;
    }
    return std::move(*dev);
}

inline std::unique_ptr<io::BlockDevice> faulty_file(const std::filesystem::path& p, std::uint64_t size,
                                                    std::shared_ptr<io::FaultPlan> plan) {
    return std::make_unique<io::FaultyBlockDevice>(open_file(p, size), std::move(plan));
}

// Overwrite one slot of a swap file behind the pool's back (buffered + fsync, so the
// pool's next O_DIRECT read sees it).
inline void corrupt_slot(const std::filesystem::path& file, SlotIdx slot) {
    // Kernel contract: a buffered pwrite + fsync lands in the file; a later O_DIRECT
    // read of the range first writes back any cached pages, so it sees these bytes.
    io::UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    std::vector<std::byte> junk(kSlotSize, std::byte{0x5a});
    ASSERT_EQ(::pwrite(fd.get(), junk.data(), junk.size(), static_cast<off_t>(slot_offset(slot).value())),
              static_cast<ssize_t>(kSlotSize));
    ASSERT_EQ(::fsync(fd.get()), 0);
}

// Holds the thread that enters it until open(); the test waits for entered().
class Latch {
public:
    void enter() {
        std::unique_lock lock(mu_);
        entered_ = true;
        cv_.notify_all();
        cv_.wait(lock, [&] { return open_; });
    }
    void wait_entered() {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return entered_; });
    }
    void open() {
        std::lock_guard lock(mu_);
        open_ = true;
        cv_.notify_all();
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    bool entered_ = false;
    bool open_ = false;
};

// A gate rule that holds the first matching op in `latch`.
inline io::FaultRuleId hold_once(io::FaultPlan& plan, io::FaultMatch match, Latch& latch,
                                 std::optional<io::DevOffset> begin = std::nullopt,
                                 std::optional<io::DevOffset> end = std::nullopt) {
    return plan.add(io::FaultRule{match, begin, end, 0, 1, io::fault::Gate{[&latch](const io::BlockIo&) { latch.enter(); }}});
}

// EvictionSink that keeps brought-back pages in memory: what guestmem does with the
// guest page, minus the guest.
class MemorySink final : public EvictionSink {
public:
    MemorySink(SwapPool& pool, std::uint64_t capacity) : pool_(pool), capacity_(capacity) {}
    std::uint64_t bring_back_capacity() const override {
        std::lock_guard lock(mu_);
        return capacity_ - pages_.size();
    }
    // Like guestmem: swapoff's verified copy while it is current, else a read.
    Result<bool> bring_back(OwnerTag owner, VSlot vslot, const SlotCopy* copy, io::Ring& ring) override {
        std::vector<std::byte> page(kSlotSize);
        Pages bounce(1);
        {
            std::lock_guard lock(mu_);
            auto it = swapped_.find(owner);
            if (it == swapped_.end() || it->second != vslot) return false;
        }
        if (copy != nullptr && pool_.copy_is_current(vslot, *copy)) {
            std::memcpy(page.data(), copy->bytes.data(), kSlotSize);
            copies_used_++;
        } else {
            SWV_TRY(pool_.read_in(ring, vslot, bounce[0]));
            std::memcpy(page.data(), bounce[0], kSlotSize);
        }
        std::lock_guard lock(mu_);
        pages_[owner] = std::move(page);
        swapped_.erase(owner);
        pool_.free(vslot);
        return true;
    }
    std::uint64_t bring_back_room(OwnerTag) const override { return bring_back_capacity(); }
    Result<bool> lose(OwnerTag owner, VSlot vslot, const Error&) override {
        std::lock_guard lock(mu_);
        auto it = swapped_.find(owner);
        if (it == swapped_.end() || it->second != vslot) return false;
        swapped_.erase(it);
        lost_.insert(owner);
        pool_.free(vslot);
        return true;
    }
    bool lost(OwnerTag owner) const {
        std::lock_guard lock(mu_);
        return lost_.contains(owner);
    }
    // The "page table": which owner is swapped where.
    void set_swapped(OwnerTag owner, VSlot v) {
        std::lock_guard lock(mu_);
        swapped_[owner] = v;
    }
    std::optional<std::vector<std::byte>> resident(OwnerTag owner) const {
        std::lock_guard lock(mu_);
        auto it = pages_.find(owner);
        if (it == pages_.end()) return std::nullopt;
        return it->second;
    }
    std::uint64_t copies_used() const { return copies_used_.load(); }
    std::size_t resident_count() const {
        std::lock_guard lock(mu_);
        return pages_.size();
    }

private:
    SwapPool& pool_;
    // Protects: everything below; Order: before the pool's locks (free() under it).
    mutable std::mutex mu_;
    std::uint64_t capacity_;
    std::map<OwnerTag, std::vector<std::byte>> pages_;
    std::map<OwnerTag, VSlot> swapped_;
    std::set<OwnerTag> lost_;
    std::atomic<std::uint64_t> copies_used_{0};
};

// Write n pages with contents id_base + i (owner tag id_base + i); their vslots.
inline std::vector<VSlot> write_pages(SwapPool& pool, io::Ring& ring, std::size_t n, std::uint64_t id_base = 0) {
    Pages pages(n);
    for (std::size_t i = 0; i < n; ++i) fill_page(pages[i], id_base + i);
    auto batch = page_outs(pages, 0, n, id_base);
    EXPECT_TRUE(pool.write_out(ring, batch));
    std::vector<VSlot> v;
    for (auto& p : batch) {
        EXPECT_EQ(p.error, std::nullopt);
        v.push_back(p.vslot);
    }
    return v;
}

// vslot reads back (checksum verified) as the page fill_page(id) wrote.
inline void expect_reads_as(SwapPool& pool, io::Ring& ring, VSlot v, std::uint64_t id) {
    Pages back(1);
    auto r = pool.read_in(ring, v, back[0]);
    ASSERT_TRUE(r) << v.value() << ": " << r.error().message();
    EXPECT_TRUE(verify_page(back[0], id)) << "vslot " << v.value() << " id " << id;
}

}  // namespace swapvisor::swap::test

#define SWV_SWAP_RING_OR_SKIP(var) SWV_RING_OR_SKIP(var, 64)
