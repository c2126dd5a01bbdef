// Memory snapshots: save a VM's memory into a directory, restore or clone VMs from it,
// release it (docs/SNAPSHOT.md, guestmem/README.md#snapshots, issue #21).
//
// A snapshot costs what is resident, not what the VM has: resident pages go into a
// sparse memory image (zero pages not written), swapped pages and clean copies stay
// in their slots and are recorded by reference (device uuid, slot, checksum), each
// vslot held (swap/README.md#held-vslots) for as long as the snapshot lives. A VM
// restored from it starts with no page resident: `image` pages are read from the
// image at their first touch (row 14), swapped ones are swapped in as any other (row
// 10) from slots it *borrows*: the snapshot's references, kept until the snapshot is
// released and the last VM restored from it is gone (guestmem/README.md#borrowed).
// Its stage-2 table starts as a private mapping of the snapshot's table image, so a
// restore costs the same whatever the memory size. Clones share the image (page
// cache), the table image and the slots read-only; their writes are private.
//
// Threads: save runs on the caller's thread while the VM's vCPUs are paused (its
// reclaimer and writeback may run: each page is read under its page lock). A
// MemorySnapshot may be used from any thread, one operation at a time (the vmm keeps
// one per directory).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "guestmem/guest_memory.hpp"
#include "io/result.hpp"
#include "io/unique_fd.hpp"
#include "swap/swap_pool.hpp"

namespace swapvisor::guestmem {

// The memory part's format version (memory.json "version"; docs/SNAPSHOT.md#format):
// what save writes. Version 1 (a 16-byte device uuid in every slot reference) is
// still read.
inline constexpr std::uint32_t kMemorySnapshotVersion = 2;
inline constexpr std::uint32_t kOldestMemorySnapshotVersion = 1;

// What the page table says of one guest page.
enum class PageKind : std::uint8_t {
    zero = 0,     // reads zeros (never touched, discarded, or all-zero content)
    image = 1,    // content in the memory image at page * 4 KiB
    swapped = 2,  // content in a swap slot (the next SlotRef)
    lost = 3,     // lost before the snapshot: stays lost (the guest gets a memory error)
};

// A swapped page by reference: where its data is, and its checksum.
struct SlotRef {
    swap::DeviceUuid uuid{};
    swap::SlotIdx slot{};
    std::uint32_t checksum = 0;
};

struct SnapshotCounts {
    std::uint64_t zero = 0, image = 0, swapped = 0, lost = 0;
    std::uint64_t bytes_written = 0;  // image pages + page table + manifest
};

// Where GuestMemory::save's time went (ms), for the snapshot's log line: the walk
// (page copies, slot references, the image writes overlapped with them), the
// image's fsync, the table image for restores, the page table and manifest files
// (each written, fsync'd, renamed; the directory fsync'd).
struct SaveTimes {
    double walk_ms = 0, image_sync_ms = 0, table_image_ms = 0, files_ms = 0;
};

struct RestoreOptions {
    // Read every image page not touched yet in the background, after the prefetch
    // (the filler). Stops at the VM's resident limit.
    bool fill = true;
    // Prefetch the pages of the snapshot's working-set file, in its order, first.
    bool prefetch = true;
    // Record the order of first faults (written by save_working_set / stop, only if
    // the snapshot has no working-set file yet).
    bool record_working_set = true;
};

class MemorySnapshot {
public:
    ~MemorySnapshot();  // release()
    MemorySnapshot(const MemorySnapshot&) = delete;
    MemorySnapshot& operator=(const MemorySnapshot&) = delete;

    // A snapshot persisted by an earlier process: the page table is read and checked,
    // and each slot reference takes over the reference the pool adopted for it at
    // swapon (expect_snapshot_slots before swapon). Errors (Errc::bad_snapshot unless
    // said): a missing or unreadable manifest or page table, another version, a page
    // table that does not match its size or checksum, a truncated image, a device
    // uuid that is not attached, a slot that was not reserved or whose checksum
    // differs — each naming the file, page, device or slot; nothing is held then.
    static Result<std::unique_ptr<MemorySnapshot>> open(const std::filesystem::path& dir, swap::SwapPool* pool);

    const std::filesystem::path& dir() const { return dir_; }
    std::uint64_t memory_bytes() const { return memory_bytes_; }
    std::uint64_t pages() const { return kinds_.size(); }
    const SnapshotCounts& counts() const { return counts_; }
    const SaveTimes& save_times() const { return save_times_; }  // zero unless made by save()
    // Swap references this snapshot holds now (0 once released; VMs restored from it
    // may still be borrowing them, which keeps them in the pool until they end).
    std::uint64_t held_vslots() const { return held_ ? held_->vslots.size() : 0; }
    PageKind kind(std::uint64_t page) const { return static_cast<PageKind>(kinds_.at(page)); }
    // For a handover of a device (swap/README.md#handover): the held vslots whose
    // slots are on it, and whether a reference names any other device.
    std::vector<swap::VSlot> held_on(const swap::DeviceUuid& uuid) const;
    bool refers_beyond(const swap::DeviceUuid& uuid) const;

    // Drop every slot reference (snapshot delete). Idempotent. The references VMs
    // restored from it borrow go when the last of them has gone.
    void release();
    // Swapoff moved held slots (a swap::HeldSlotObserver): rewrite the persisted
    // references of this snapshot that moved, once, atomically. Returns whether any did.
    Result<bool> apply_moves(std::span<const swap::HeldSlotMove> moves);

private:
    friend class GuestMemory;
    friend Result<std::unique_ptr<GuestMemory>> restore_guest_memory(const MemoryConfig&, VmId, HostBudget*,
                                                                      swap::SwapPool*, const MemorySnapshot&,
                                                                      const RestoreOptions&, ReclaimService*,
                                                                      FaultService*);
    // The swap references of a snapshot: one per swapped page, held by the snapshot
    // and borrowed by the VMs restored from it (shared with them; dropped when the
    // snapshot is released and the last of those VMs has gone).
    struct HeldRefs {
        explicit HeldRefs(swap::SwapPool* p) : pool(p) {}
        HeldRefs(const HeldRefs&) = delete;
        HeldRefs& operator=(const HeldRefs&) = delete;
        ~HeldRefs();
        swap::SwapPool* pool;
        std::vector<swap::VSlot> vslots;  // refs_[i]'s vslot
    };

    MemorySnapshot() = default;
    Result<void> write_page_table(const std::filesystem::path& to) const;
    // After the page table is complete (open, save): the devices it names and the
    // stage-2 table image a restore maps (image entries, and swapped entries
    // borrowing vslots[k], the k-th swapped page's).
    Result<void> prepare_restore(std::span<const swap::VSlot> vslots);
    // devices_ from refs_ (again after apply_moves, on a swapoff's thread), and a copy
    // of it for a restore (on a control thread).
    void note_devices();
    std::vector<swap::DeviceUuid> devices() const;

    std::filesystem::path dir_;
    std::uint64_t memory_bytes_ = 0;
    swap::SwapPool* pool_ = nullptr;
    std::vector<std::uint8_t> kinds_;  // PageKind per page
    std::vector<SlotRef> refs_;        // one per swapped page, in page order
    std::shared_ptr<HeldRefs> held_;   // refs_[i]'s vslots, held (null once released)
    // Protects: devices_. Order: leaf.
    mutable std::mutex devices_mutex_;
    std::vector<swap::DeviceUuid> devices_;  // the distinct devices refs_ names
    io::UniqueFd table_image_;         // Stage2::make_image's (none: no image or swapped page)
    SnapshotCounts counts_;
    SaveTimes save_times_;
};

// After a restart, before swapon: register the slots the snapshot in dir refers to,
// so each device reserves them when it is attached (swap::SwapPool::expect_held_slots).
// All or none: refused, with nothing registered, if a device it names is attached
// already (its slots may have been handed out since).
Result<void> expect_snapshot_slots(const std::filesystem::path& dir, swap::SwapPool& pool);
// How many swap slots the snapshot in dir refers to (its page table read and checked).
Result<std::uint64_t> snapshot_slot_count(const std::filesystem::path& dir);

// A VM whose memory is the snapshot's: no page resident, `image` pages read from the
// image at first touch, swapped pages from the snapshot's slots (borrowed: the VM
// keeps the snapshot's references alive until it ends; a page read back from one
// never keeps it as a clean copy), lost pages lost. config.memory_bytes must be the snapshot's.
// Its time does not grow with memory size (the table is mapped, not written; only
// lost pages are visited). Nothing is half-created: on error no VM exists.
Result<std::unique_ptr<GuestMemory>> restore_guest_memory(const MemoryConfig& config, VmId id, HostBudget* host,
                                                          swap::SwapPool* pool, const MemorySnapshot& snapshot,
                                                          const RestoreOptions& options = {},
                                                          ReclaimService* service = nullptr,
                                                          FaultService* faults = nullptr);

// Release the snapshot's references and remove its memory files (manifest first).
Result<void> delete_memory_snapshot(std::unique_ptr<MemorySnapshot> snapshot);

// File names inside a snapshot directory (docs/SNAPSHOT.md#format).
inline constexpr const char* kMemoryManifest = "memory.json";
inline constexpr const char* kMemoryImage = "memory.img";
inline constexpr const char* kMemoryPageTable = "memory.pages";
inline constexpr const char* kMemoryWorkingSet = "memory.workingset";

}  // namespace swapvisor::guestmem
