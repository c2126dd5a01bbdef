// SwapPool: every swap device of one swapvisor process, the VSlot table, and the
// swap-out / swap-in engine on top of io::Ring (swap/README.md). Guest memory of all
// VMs shares one pool.
//
// A page goes out with write_out(): it gets a VSlot (what the stage-2 table stores)
// and a PSlot on the highest-priority device with room (round-robin among equal
// priorities); contiguous runs go out as one large write. read_in() reads a VSlot's
// current PSlot under a device reference and verifies the checksum. swapoff()
// removes a device live: it moves the data of each used slot to another device and
// switches the VSlot's descriptor, so nothing above swap notices, or, when no other
// device has room, asks the EvictionSink (guestmem) to bring the page back.
//
// Thread safety: every public member may be called from any thread concurrently
// (fault threads, reclaimers of several VMs, a swapoff thread), each with its own
// io::Ring. Locking rules: swap/README.md#locking.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/block_device.hpp"
#include "io/ring.hpp"
#include "swap/swap_device.hpp"
#include "swap/remote_lease.hpp"
#include "swap/types.hpp"
#include "swap/vslot_table.hpp"

namespace swapvisor::swap {

// The checksum a VSlot descriptor keeps of one 4 KiB page: the low 32 bits of its
// xxh3-64 (32 bits, like the crc32c of dm-integrity or btrfs: the descriptor's
// 16 bytes, swap/README.md#vslots).
std::uint32_t page_checksum(const std::byte* page);
// The name a device is stored and shown under: the absolute, weakly canonical path
// (relative paths are taken against the current directory first, symlinks of the
// existing part resolved), so "a/../swap.img", "./swap.img" and "/abs/swap.img" are
// one name. Identity (the same file or block device by any name) is separate: see
// SwapPool::swapon.
std::string canonical_swap_path(const std::filesystem::path& path);

// swapon of a device without a swapvisor header: refuse (no); write one if the
// device holds no recognisable data (yes: `format=yes`, `ctl swapon --format`; a
// device that already has a valid header is used as it is); write one over whatever
// it holds (force: `format=force`, `--format --force`). The rule: data_probe.hpp.
enum class Format { no, yes, force };

// What swapoff already read of a used slot and verified against its checksum: the
// bytes, and the descriptor (place and generation) they were read under. The bytes
// are the page's content as long as the vslot is still at that place with that
// generation (SwapPool::copy_is_current); bring_back then uses them instead of
// reading the slot again (a second read could fail, issue #16 item 6).
struct SlotCopy {
    std::span<const std::byte> bytes;  // kSlotSize
    PSlot pslot;
    std::uint32_t generation = 0;
};

// Upward interface (defined here, implemented by guestmem): used by swapoff when no
// other device has room, to bring a page back into guest memory.
class EvictionSink {
public:
    virtual ~EvictionSink() = default;
    // How many pages guest memory could take back now (host budget minus resident).
    virtual std::uint64_t bring_back_capacity() const = 0;
    // Make the page `owner` (currently swapped at vslot) resident again and release
    // the vslot: from `copy` when it is given and still current (copy_is_current),
    // else by reading it through SwapPool::read_in. True if done, false if the page no
    // longer refers to vslot (raced with a fault/discard: nothing to do). Called with
    // no swap lock held.
    virtual Result<bool> bring_back(OwnerTag owner, VSlot vslot, const SlotCopy* copy, io::Ring& ring) = 0;
    // How many pages the owner's VM could take back now without going over its own
    // limit or the host budget (bring_back of a page of a VM at 0 is refused with
    // Errc::would_not_fit).
    virtual std::uint64_t bring_back_room(OwnerTag owner) const = 0;
    // The data at vslot cannot be read any more (a failing device swapped off with
    // force): the owner's page becomes lost — poisoned, so the guest is stopped with a
    // memory error only if it touches it — and vslot is released. A clean copy at
    // vslot is only dropped (the page is in memory). False if the page no longer
    // refers to vslot. `why` names device and slot for the log.
    virtual Result<bool> lose(OwnerTag owner, VSlot vslot, const Error& why) = 0;
};

// One page of a write_out batch.
struct PageOut {
    const std::byte* data;            // 4 KiB, page aligned
    OwnerTag owner;
    VSlot vslot = kNoVSlot;           // out: set when written
    std::optional<Errc> error;        // out: nullopt = written (no_space, io_failed)
    // in: page_checksum(data) when the caller has it already (guestmem takes it in the
    // zero check's pass over its staged copy); write_out then does not read the page.
    // It must be the checksum of the bytes at `data` as they are written: the caller
    // keeps them unchanged until write_out returns.
    std::optional<std::uint32_t> checksum;
    bool ok() const { return !error.has_value(); }
};

// One page of a batched read_in.
struct PageIn {
    VSlot vslot;
    std::byte* dst;                   // 4 KiB, aligned
    std::optional<Errc> error;        // out: nullopt = read and checksum verified
                                      // (stale_slot, io_failed, checksum_mismatch)
    bool ok() const { return !error.has_value(); }
};

struct DeviceStats {
    std::string path;
    int priority;
    std::uint64_t total_slots, used_slots;
    bool removing;
    DeviceState state;
    std::uint64_t write_errors;        // write ops that failed
    std::string failure;               // why it failed or degraded; empty otherwise
    std::uint64_t read_errors = 0;     // read ops that failed, and checksum mismatches
    std::uint64_t quarantined_slots = 0;  // slots whose I/O failed: never handed out again
    std::uint64_t read_bytes = 0;      // moved by successful reads (swap-in, readahead, swapoff)
    std::uint64_t written_bytes = 0;   // moved by successful writes (swap-out, swapoff moves)
    std::uint64_t free_slots = 0;      // slots still to hand out (a quarantined slot in use is used, once)
    std::uint64_t read_retries = 0;    // reads the device issued again after a lost connection (NBD)
    std::string uuid;                  // its swap header's uuid (empty for a device swapped on without one)
    std::optional<RemoteStatus> remote;  // a remote device's lease and health probe (remote_lease.hpp)
    // A compressed memory tier (swap/README.md#tiers); the rest is 0 for other devices.
    std::string kind = "disk";         // "disk" (file, block device, NBD) or "memory"
    std::string codec;                 // lz4 / zstd
    std::uint64_t stored_pages = 0;    // objects held
    std::uint64_t compressed_bytes = 0;  // their compressed size
    std::uint64_t arena_bytes = 0;     // host memory held for them (counted in the host budget)
    std::uint64_t capacity_bytes = 0;  // mem:SIZE
    std::uint64_t rejected_pages = 0;  // refused: did not compress below max=, or no room
    std::uint64_t demoted_pages = 0;   // moved to the next tier by demotion
    std::uint64_t swapins_served = 0;  // swap-ins (and readahead) read from the tier
    // stored pages * 4 KiB / compressed bytes (0 when empty).
    double ratio() const { return compressed_bytes == 0 ? 0.0 : double(stored_pages) * kSlotSize / double(compressed_bytes); }
    // Share of the arena not holding compressed bytes (size classes, half-empty blocks).
    double fragmentation() const { return arena_bytes == 0 ? 0.0 : 1.0 - double(compressed_bytes) / double(arena_bytes); }
};

// A slot a snapshot holds moved (swapoff or demotion migrated it): from (device uuid,
// slot) to (device uuid, slot). Persisted references are rewritten from these
// (swap/README.md#held-vslots).
struct HeldSlotMove {
    VSlot vslot;
    DeviceUuid from_uuid{};
    SlotIdx from_slot{};
    DeviceUuid to_uuid{};
    SlotIdx to_slot{};
};
// Told once per swapoff (or demotion) with every held slot it moved, on the calling
// thread, with no swap lock held, including when the swapoff then fails.
using HeldSlotObserver = std::function<void(std::span<const HeldSlotMove>)>;

// A slot a persisted snapshot refers to, to reserve when its device is attached.
struct HeldSlot {
    SlotIdx slot;
    std::uint32_t checksum = 0;
};

// swapoff with a handover (swap/README.md#handover, issue #21 item 6): every page of
// a VM leaves the device as in any swapoff, the slots that only snapshots hold stay
// where they are (their references name the device by uuid, so another pool that
// attaches it adopts them), then this pool drops its references and lets the
// device go (a remote device's lease written released). The pool cannot tell whose
// references those are; its caller (the vmm's snapshot store) can:
struct Handover {
    // Called once the device takes no new slot and no new hold, before anything
    // moves, with every vslot on it that only snapshots refer to (owner
    // kSnapshotOwner). Refusing (an error) leaves everything as it was.
    std::function<Result<void>(const DeviceUuid&, std::span<const VSlot> kept)> check;
    // Called after every other page left the device: drop every reference to the
    // kept vslots (the snapshots are unloaded here). The slots are then free in this
    // pool, which never writes to the device again.
    std::function<void(const DeviceUuid&)> release;
};

struct SwapoffProgress {
    std::uint64_t done, total;
};

struct SwapoffReport {
    std::uint64_t pages_moved, pages_brought_back, pages_skipped /*freed concurrently*/;
    double elapsed_ms;
    std::uint64_t pages_lost = 0;  // unreadable slots handed to EvictionSink::lose (Force::yes)
};

// swapoff of a device with unreadable slots (EIO, checksum mismatch, device gone):
// refuse and report them, nothing lost (no), or take the device out anyway, the
// pages in those slots becoming lost pages of their VMs (yes).
enum class Force : bool { no, yes };

struct SwapPoolConfig {
    std::uint32_t swapoff_batch_pages = 512;  // slots read / written per swapoff round
    std::uint32_t max_run_pages = 256;        // longest single write or read (1 MiB)
    DeviceHealthPolicy health{};              // when a device becomes degraded
    LeaseConfig lease{};                      // remote devices' leases and health probes
    // log2 of the vslots per block of one VM (swap/README.md#vslot-blocks); tests
    // make it small so that blocks change hands within a few pages.
    unsigned vslot_block_shift = VSlotTable::kBlockShift;
};

class SwapPool {
public:
    explicit SwapPool(SwapPoolConfig config = {});
    ~SwapPool();
    SwapPool(const SwapPool&) = delete;
    SwapPool& operator=(const SwapPool&) = delete;

    void set_eviction_sink(EvictionSink* sink);  // may be null

    // Open (or create) a file / block device O_DIRECT and add it with priority
    // (swap/README.md#devices). size_bytes is the swap space (slots); a missing file
    // is created one header page larger, with its space reserved, and gets a fresh
    // header. An existing device must carry a swapvisor header (else
    // Errc::no_signature, unless format is yes or force: Errc::holds_data if it holds
    // recognisable data and format is not force) whose slot count matches the device
    // and, when size_bytes is given, size_bytes (else Errc::size_mismatch).
    // The same device by any name (hard link, symlink, relative path) twice is
    // Errc::exists with both names. Other errors: io::Errc::too_small (less than
    // one 2 MiB cluster of slots), io::Errc::in_use (another process owns it),
    // io::Errc::ram_backed (tmpfs / ramfs), io / errno errors; all name the path.
    // A remote device (NBD) is also claimed for this pool (swap/README.md#ownership):
    // Errc::leased while another pool's lease on it runs, unless takeover is yes.
    // Two names of one device are caught by its header's uuid too.
    Result<DeviceId> swapon(const std::filesystem::path& path, int priority, std::uint64_t size_bytes,
                            Format format = Format::no, Takeover takeover = Takeover::no);
    // Add an already opened device (tests pass a FaultyBlockDevice).
    Result<DeviceId> swapon(std::unique_ptr<io::BlockDevice> device, int priority);

    // Live removal (swap/README.md#removal). `progress` is called after every batch
    // from the calling thread. Errors: no_such_device, device_busy (another swapoff
    // of it runs), would_not_fit (refused up front: nothing changed), and, mid-way,
    // io_failed (a write to another device) / would_not_fit / the sink's error: the
    // device is then active again and pages already moved stay moved.
    // Unreadable slots (read error, checksum mismatch): with Force::no every readable
    // slot is moved, then swapoff fails with unreadable_slots naming how many and the
    // first (nothing lost, the device stays in the pool); with Force::yes each becomes
    // a lost page through EvictionSink::lose (SwapoffReport::pages_lost).
    // With `handover` (swap/README.md#handover): the device is handed to another
    // pool with the slots snapshots hold on it left in place (see Handover).
    Result<SwapoffReport> swapoff(const std::filesystem::path& path, io::Ring& ring,
                                  std::function<void(SwapoffProgress)> progress = {}, Force force = Force::no,
                                  const Handover* handover = nullptr);

    // Write a batch of 4 KiB pages to newly allocated slots. Per page: vslot set and
    // error nullopt on success; on failure error set (no_space, io_failed) and no
    // vslot or slot is leaked. A page whose write failed is written again at once on
    // the next device (one that has not failed a write of this batch); the slot that
    // failed is quarantined (swap/README.md#health).
    // Returns an error (Errc::no_space) only if no page could get a slot.
    Result<void> write_out(io::Ring& ring, std::span<PageOut> pages);

    // Read the page behind vslot into dst (4 KiB, aligned) and verify its checksum:
    // checksum_mismatch, io_failed or stale_slot (vslot not allocated / freed
    // meanwhile); never silently wrong data.
    Result<void> read_in(io::Ring& ring, VSlot vslot, std::byte* dst);
    // Batched read_in (readahead): per page, PageIn::error as the single read_in's
    // error code. Neighbouring slots read into neighbouring buffers merge into runs.
    using PageIn = swap::PageIn;
    Result<void> read_in(io::Ring& ring, std::span<PageIn> pages);

    // Drop the owner's reference to vslot (swap/README.md#held-vslots): the vslot
    // and its pslot are released when it was the last; otherwise the vslot stays
    // valid for its holders, and its owner becomes kSnapshotOwner. Freeing kNoVSlot
    // is a no-op; freeing a vslot that is not allocated is a broken invariant (abort).
    void free(VSlot vslot);
    // One more reference to a valid vslot (a snapshot, a restored VM): the pool frees
    // neither the vslot nor its slot until every reference is dropped (free or
    // drop_hold). The caller keeps vslot from being freed meanwhile (guestmem: the
    // page lock). Errc::stale_slot if vslot is not valid; Errc::device_busy if its
    // device is being handed over (swapoff with a Handover).
    Result<void> hold(VSlot vslot);
    // For a restore that borrows its snapshot's references instead of holding its own
    // (guestmem/README.md#borrowed): Errc::device_busy, naming it, if one of these
    // devices is being handed over (where hold() would refuse), else nothing. A device
    // not attached is not this check's business (its slots are the snapshot's).
    Result<void> check_borrow(std::span<const DeviceUuid> devices) const;
    // Drop a reference taken by hold() (or an adopted one): as free(), but the owner
    // is left as it is while other references remain.
    void drop_hold(VSlot vslot);
    // References beyond the owner's (0 for a vslot nobody shares).
    std::uint32_t extra_refs(VSlot vslot) const;
    // Vslots with extra references (the side table's size).
    std::uint64_t shared_vslots() const;

    // Adoption after a restart (swap/README.md#held-vslots): reserve `slots` of the
    // device whose header uuid is `uuid` when it is attached, before it hands out any
    // slot, as valid vslots owned by kSnapshotOwner with the given checksums (one
    // reference per call naming a slot). A device already attached: Errc::held_slot.
    Result<void> expect_held_slots(const DeviceUuid& uuid, std::span<const HeldSlot> slots);
    // The vslot adopted for (uuid, slot), nullopt if none (not reserved, the device
    // not attached, or its slot could not be reserved: swapon logs why). The caller
    // takes over one of its references.
    std::optional<VSlot> adopted_vslot(const DeviceUuid& uuid, SlotIdx slot) const;
    // The device attached under a header uuid, if any.
    std::optional<DeviceId> device_by_uuid(const DeviceUuid& uuid) const;
    std::optional<DeviceUuid> uuid_of(DeviceId id) const;
    // Told of every held slot that swapoff or demotion moves (may be empty).
    void set_held_slot_observer(HeldSlotObserver observer);

    // Demotion (swap/README.md#tiers): every memory tier above its high watermark
    // moves its coldest (longest stored) pages to the devices below it — never to a
    // memory tier — by swapoff's slot migration (VSlot re-pointed with a
    // compare-and-swap on its generation), down to its low watermark or until
    // nothing below has room. write_out calls it after each batch. Returns pages moved.
    std::uint64_t demote(io::Ring& ring);
    // Demote `pages` of one memory tier (0: down to its low watermark), whatever its
    // watermarks say; 0 if another demotion of it runs. Errc::no_such_device if id is
    // not a memory tier in the pool.
    Result<std::uint64_t> demote_device(io::Ring& ring, DeviceId id, std::uint64_t pages);
    // Host memory the memory tiers hold now (their arenas): counted in the host budget.
    // Lock-free (the host budget asks on fault paths).
    std::uint64_t memory_tier_bytes() const { return memory_tier_bytes_.load(std::memory_order_relaxed); }

    std::vector<DeviceStats> stats() const;
    std::uint64_t allocated_vslots() const { return table_.allocated(); }
    std::optional<OwnerTag> owner_of(VSlot vslot) const;
    // Where vslot's data is now (nullopt if not allocated): for tests and tools.
    std::optional<PSlot> pslot_of(VSlot vslot) const;
    // A valid vslot's descriptor (place, checksum, owner); nullopt if not valid.
    // Snapshots record (uuid, slot, checksum) from it.
    std::optional<VSlotInfo> descriptor(VSlot vslot) const;
    // Whether `copy` is still vslot's content: the vslot is valid, at the same place,
    // with the same generation. Stable while the caller keeps the vslot from being
    // freed (guestmem: the page lock) and is the only one moving its device (swapoff).
    bool copy_is_current(VSlot vslot, const SlotCopy& copy) const;
    // The device `path` names, by its pool name or by identity (any other name of
    // the same file or block device).
    std::optional<DeviceId> find_device(const std::filesystem::path& path) const;
    // The pool name of the device `path` names (by name or identity), or the
    // canonical form of path if no device in the pool is it.
    std::string resolve_name(const std::filesystem::path& path) const;

private:
    // One page being placed: its new slot (device null: no room).
    struct Placement {
        SwapDevice* device = nullptr;
        SlotIdx slot{};
    };
    // Devices write_out / swapoff allocated on: a reference plus one pending write
    // each, ended when the batch is published or freed.
    struct Reservation {
        SwapDeviceRef ref;
        ~Reservation() {
            if (ref) ref->end_write();
        }
        explicit Reservation(SwapDeviceRef r) : ref(std::move(r)) {}
        Reservation(Reservation&&) = default;
        Reservation& operator=(Reservation&&) = delete;
    };
    struct Batch;  // swapoff working set (swapoff.cpp)
    // What a migration batch is for: swapoff (empty the device; pages with no room
    // elsewhere come back to guest memory) or demotion (move what fits below, leave
    // the rest).
    enum class Move : bool { swapoff, demote };
    // Handover's first step (handover.cpp): with dev removing, refuse new holds on
    // it, refuse if a VM shares a held page there, collect the snapshot-only vslots
    // into batch.kept and ask `handover.check`. Undone by end_handover on error.
    Result<void> begin_handover(SwapDevice& dev, Batch& batch, const Handover& handover);
    void end_handover(DeviceId dev);
    // Whether every used slot left on dev is one of batch.kept.
    bool only_kept_left(const SwapDevice& dev, Batch& batch) const;
    // Handover's last step: `handover.release`, then wait until no slot is used.
    Result<void> finish_handover(SwapDevice& dev, const Handover& handover);
    std::vector<const SwapDevice*> memory_tiers_locked() const;
    // The memory tiers where one of `groups` holds its share= already (for
    // allocate_pslots' excluded list: the pointers are only compared).
    std::vector<const SwapDevice*> tiers_at_share(std::span<const std::uint16_t> groups) const;
    void note_swapin(PSlot pslot);

    Result<DeviceId> add_device(std::unique_ptr<io::BlockDevice> device, int priority, std::string key,
                                std::optional<std::array<std::uint8_t, 16>> uuid = std::nullopt);
    // The keeper of remote devices' leases, made at the first remote swapon.
    Result<LeaseKeeper*> lease_keeper();
    SwapDevice* find_locked(const std::string& key) const;
    SwapDevice* find_identity_locked(const io::DeviceIdentity& identity) const;
    // An error naming both names if `identity` (or a swap header `uuid`) is already in the pool.
    Result<void> refuse_duplicate_locked(const std::string& key, const std::optional<io::DeviceIdentity>& identity,
                                         const std::optional<std::array<std::uint8_t, 16>>& uuid = std::nullopt) const;
    // get_swap_device(): a reference, or none if the device is gone.
    SwapDeviceRef get_swap_device(DeviceId id) const;
    // Place vslots[i] on devices by priority; fills placements, returns how many got a
    // slot. Takes devices_mutex_ shared.
    // Devices in `excluded` (failed a write of this batch) are passed over.
    std::size_t allocate_pslots(std::span<const VSlot> vslots, std::span<Placement> placements,
                                std::vector<Reservation>& reservations,
                                std::span<const SwapDevice* const> excluded = {});
    // A read of pslot failed or its data failed its checksum: quarantine the slot
    // (if the device is still there).
    void quarantine_pslot(PSlot pslot);
    // Its data failed the checksum: counted against the device's health, quarantined.
    void note_checksum_error(PSlot pslot);
    void free_pslot(PSlot pslot);
    // slot_context() of vslot's current place, or "vslot V" once it has none.
    std::string describe(VSlot vslot) const;
    Result<void> swapoff_batch(SwapDevice& dev, io::Ring& ring, Batch& batch, std::span<const UsedSlot> candidates,
                               SwapoffReport& report, Force force, Move move = Move::swapoff);
    // Free slots on the active devices other than `dev`.
    std::uint64_t free_elsewhere(const SwapDevice* dev) const;
    // A vslot a snapshot holds: owner kSnapshotOwner or extra references.
    bool is_held(VSlot vslot, OwnerTag owner) const;
    // Drop one reference; true if it was the last (the caller then releases it).
    enum class Drop : bool { holder, owner };
    bool drop_reference(VSlot vslot, Drop who);
    void release(VSlot vslot);
    // Adopt the slots expected for uuid on dev (not yet published).
    void adopt_expected(SwapDevice& dev, const DeviceUuid& uuid);
    void notify_held_moves(std::vector<HeldSlotMove>& moves);

    const SwapPoolConfig config_;
    VSlotTable table_;
    std::atomic<EvictionSink*> sink_{nullptr};
    std::atomic<std::uint64_t> rotor_{0};  // round-robin among equal priorities
    // Arena bytes of every memory tier: kept by the stores (relaxed; a budget figure),
    // declared before devices_ so it outlives them.
    std::atomic<std::uint64_t> memory_tier_bytes_{0};

    // Protects: devices_, by_priority_; Order: before SwapDevice::mutex_; never held
    // with a VSlotTable lock or across I/O or an EvictionSink call.
    mutable std::shared_mutex devices_mutex_;
    std::vector<std::unique_ptr<SwapDevice>> devices_;  // indexed by DeviceId; null once removed
    std::vector<SwapDevice*> by_priority_;              // published devices, highest priority first
    std::map<std::uint16_t, std::array<std::uint8_t, 16>> uuids_;  // swap header uuid per device id

    // Devices being handed over: hold() of a vslot on one is refused (under refs_mutex_).
    std::vector<std::uint16_t> handing_over_;
    // Protects: extra_refs_, handing_over_; Order: leaf (taken with no other swap lock held).
    mutable std::mutex refs_mutex_;
    std::unordered_map<std::uint32_t, std::uint32_t> extra_refs_;  // vslot -> references beyond one
    // extra_refs_.size(), read without the lock on the free path: 0 means no vslot is
    // shared and free() skips the table. Written under refs_mutex_; a free that reads
    // 0 races only with a hold of a vslot it is freeing, which the caller prevents.
    std::atomic<std::uint64_t> shared_count_{0};
    // Protects: expected_, adopted_, held_observer_; Order: after devices_mutex_
    // (add_device adopts under both); before VSlotTable and SwapDevice locks.
    mutable std::mutex adopt_mutex_;
    std::map<DeviceUuid, std::map<std::uint32_t, std::pair<std::uint32_t, std::uint32_t>>> expected_;  // slot -> (checksum, refs)
    std::map<std::pair<DeviceUuid, std::uint32_t>, VSlot> adopted_;
    HeldSlotObserver held_observer_;

    // Protects: leases_ (made once); Order: leaf.
    mutable std::mutex leases_mutex_;
    std::unique_ptr<LeaseKeeper> leases_;  // declared last: its destructor releases every lease first
};

}  // namespace swapvisor::swap
