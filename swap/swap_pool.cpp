// SwapPool: device table, slot placement, swap-out and swap-in (swap/README.md).
// swapoff lives in swapoff.cpp.
#include "swap/swap_pool.hpp"

#include <xxhash.h>

#include "io/nbd_device.hpp"
#include "swap/data_probe.hpp"
#include "swap/memory_tier.hpp"
#include "swap/swap_header.hpp"

#include <algorithm>
#include <thread>

#include "swap/io_batch.hpp"

namespace swapvisor::swap {

namespace {

// The allocating context of the calling thread (the kernel uses the CPU).
unsigned alloc_context() {
    return static_cast<unsigned>(std::hash<std::thread::id>{}(std::this_thread::get_id()) %
                                 SwapDevice::kAllocContexts);
}

}  // namespace

std::uint32_t page_checksum(const std::byte* page) { return static_cast<std::uint32_t>(XXH3_64bits(page, kSlotSize)); }

std::string canonical_swap_path(const std::filesystem::path& path) {
    // An NBD URI is named by its normalised form (it is not a file system path).
    if (io::is_nbd_uri(path.native())) return io::normalise_nbd_uri(path.native()).value_or(path.native());
    // A memory tier is named by its size (memory_tier.hpp), whatever options follow.
    if (is_memory_tier_name(path.native())) {
        Result<MemoryTierSpec> spec = parse_memory_tier(path.native());
        return spec ? spec->name() : path.native();
    }
    std::error_code ec;
    std::filesystem::path absolute = std::filesystem::absolute(path, ec);
    if (ec) absolute = path;
    std::filesystem::path canonical = std::filesystem::weakly_canonical(absolute, ec);
    return ec ? absolute.lexically_normal().string() : canonical.string();
}

SwapPool::SwapPool(SwapPoolConfig config) : config_(config), table_(config.vslot_block_shift) {
    SWV_ASSERT(config_.swapoff_batch_pages > 0 && config_.max_run_pages > 0, "SwapPool: zero batch size");
}

SwapPool::~SwapPool() = default;

void SwapPool::set_eviction_sink(EvictionSink* sink) { sink_.store(sink); }

namespace {

// The header an existing device must carry to be swapped on (or gets, with
// format=yes), returned as it is now on the device. size_bytes: the swap space the
// operator asked for, 0 if none.
Result<SwapHeader> check_or_format(io::BlockDevice& block, std::uint64_t size_bytes, Format format) {
    const std::uint64_t slots = slots_after_header(block.size_bytes());
    if (size_bytes != 0 && size_bytes != slots * kSlotSize) {
        return make_error(Errc::size_mismatch, "swapon",
                          "size= asks for " + std::to_string(size_bytes) + " bytes of swap, the device holds " +
                              std::to_string(slots * kSlotSize) + " after its 4 KiB header; leave size= out to use it as it is");
    }
    Result<std::optional<SwapHeader>> header = read_header(block);
    if (format == Format::yes && header && header->has_value() && (*header)->slot_count == slots) return **header;
    if (format != Format::no) {
        // The operator asked to format it: only a blank device, unless forced (one rule
        // with mkswap, data_probe.hpp); a header is then written even over a corrupt one.
        SWV_TRY(check_erasable(block, format == Format::force ? Erase::anything : Erase::blank_only));
        SwapHeader fresh = SWV_TRY(new_header(block.size_bytes()));
        SWV_TRY(write_header(block, fresh));
        return fresh;
    }
    if (!header) return std::unexpected(header.error());
    if (!header->has_value()) return make_error(Errc::no_signature, "swapon");
    if ((*header)->slot_count != slots) {
        return make_error(Errc::bad_header, "swapon",
                          "header says " + std::to_string((*header)->slot_count) + " slots, the device now holds " +
                              std::to_string(slots));
    }
    return **header;
}

}  // namespace

Result<DeviceId> SwapPool::swapon(const std::filesystem::path& path, int priority, std::uint64_t size_bytes,
                                  Format format, Takeover takeover) {
    const std::string key = canonical_swap_path(path);
    auto fail = [&](Error e) -> Result<DeviceId> { return std::unexpected(std::move(e).with_context("device " + key)); };
    if (size_bytes != 0 && size_bytes < std::uint64_t{kClusterSlots} * kSlotSize && !is_memory_tier_name(path.native())) {
        return fail(make_error(io::Errc::too_small, "swapon: swap size smaller than one 2 MiB cluster").error());
    }
    if (is_memory_tier_name(path.native())) {
        // A compressed tier in host memory (swap/README.md#tiers): no file, no header,
        // no size= (SIZE is part of its name), nothing to format.
        Result<MemoryTierSpec> spec = parse_memory_tier(path.native());
        if (!spec) return fail(spec.error());
        if (size_bytes != 0 || format != Format::no)
            return fail(errno_error("swapon: a memory tier takes its size from mem:SIZE and is never formatted "
                                    "(no size=, no format=)",
                                    EINVAL)
                            .error());
        {
            std::shared_lock lock(devices_mutex_);
            if (auto r = refuse_duplicate_locked(key, std::nullopt); !r) return std::unexpected(r.error());
        }
        auto store = MemoryStore::create(*spec, &memory_tier_bytes_);
        if (!store) return fail(store.error());
        return add_device(std::move(*store), priority, key);
    }
    if (io::is_nbd_uri(path.native())) {
        // A remote export (io/README.md#nbd): its size is fixed by the server; the
        // duplicate check (by normalised URI) comes before anything is written to it.
        {
            std::shared_lock lock(devices_mutex_);
            if (auto r = refuse_duplicate_locked(key, std::nullopt); !r) return std::unexpected(r.error());
        }
        auto block = SWV_TRY(io::NbdDevice::open(path.native()));
        auto seen = check_or_format(*block, size_bytes, format);
        if (!seen) return fail(seen.error());
        {
            // Another name of an export already here (its header's uuid): refused
            // before the claim, which would renew, and on failure release, the lease
            // this pool holds on it under its first name.
            std::shared_lock lock(devices_mutex_);
            if (auto r = refuse_duplicate_locked(key, std::nullopt, seen->uuid); !r) return std::unexpected(r.error());
        }
        // Claimed for this pool through a connection of the keeper's own, which then
        // renews the lease and probes the server (swap/README.md#ownership).
        LeaseKeeper* keeper = SWV_TRY(lease_keeper());
        // One connection, no read retries: a probe reports what the server does now.
        auto probe = SWV_TRY(io::NbdDevice::open(path.native(), io::NbdConfig{.max_connections = 1,
                                                                              .read_retry_window = std::chrono::milliseconds(0)}));
        auto header = keeper->claim(key, *block, takeover);
        if (!header) return fail(header.error());
        auto id = add_device(std::move(block), priority, key, header->uuid);
        if (!id) {
            keeper->release_claim(*probe, *header);
            return id;
        }
        keeper->attach(*id, key, std::move(probe), *header);
        return id;
    }
    // Same device twice, by any name: refused before the device is opened (its lock
    // would refuse it too, with a less helpful message).
    Result<io::DeviceIdentity> identity = io::identity_of(path);
    const bool exists = identity.has_value();
    if (!exists && !identity.error().is(std::errc::no_such_file_or_directory)) return fail(identity.error());
    {
        std::shared_lock lock(devices_mutex_);
        if (auto r = refuse_duplicate_locked(key, exists ? std::optional(*identity) : std::nullopt); !r)
            return std::unexpected(r.error());
    }
    if (!exists && size_bytes == 0)
        return fail(errno_error("swapon: a missing swap file needs a size (size=)", ENOENT).error());

    auto block = SWV_TRY(io::FileBlockDevice::open(path, exists ? io::OpenMode::existing : io::OpenMode::create_or_open,
                                                   exists ? 0 : size_bytes + kHeaderBytes));
    std::optional<std::array<std::uint8_t, 16>> uuid;
    if (block->origin() == io::FileOrigin::created) {
        // A file we just made holds nobody's data: it gets its header now, and goes
        // away again if that fails.
        auto header = new_header(block->size_bytes());
        Result<void> written = header ? write_header(*block, *header) : Result<void>(std::unexpected(header.error()));
        if (!written) {
            std::error_code ignored;
            std::filesystem::remove(path, ignored);
            return fail(written.error());
        }
        uuid = header->uuid;
    } else {
        auto header = check_or_format(*block, size_bytes, format);
        if (!header) return fail(header.error());
        uuid = header->uuid;
    }
    return add_device(std::move(block), priority, key, uuid);
}

Result<DeviceId> SwapPool::swapon(std::unique_ptr<io::BlockDevice> device, int priority) {
    SWV_ASSERT(device != nullptr, "swapon: null device");
    std::string key = canonical_swap_path(device->path());
    return add_device(std::move(device), priority, std::move(key));
}

Result<LeaseKeeper*> SwapPool::lease_keeper() {
    std::lock_guard lock(leases_mutex_);
    if (!leases_) leases_ = std::make_unique<LeaseKeeper>(SWV_TRY(make_pool_identity()), config_.lease);
    return leases_.get();
}

Result<DeviceId> SwapPool::add_device(std::unique_ptr<io::BlockDevice> device, int priority, std::string key,
                                      std::optional<std::array<std::uint8_t, 16>> uuid) {
    if (slots_after_header(device->size_bytes()) < kClusterSlots) {
        return make_error(io::Errc::too_small, "swapon: device smaller than its header and one 2 MiB cluster", "device " + key);
    }
    if (slots_after_header(device->size_bytes()) > UINT32_MAX) {
        return errno_error("swapon: device larger than 2^32 slots", EFBIG, "device " + key);
    }
    std::uint32_t block = device->logical_block_size();
    if (block == 0 || block > kSlotSize || kSlotSize % block != 0) {
        return make_error(io::Errc::misaligned, "swapon: logical block size does not divide 4 KiB", "device " + key);
    }
    std::unique_lock lock(devices_mutex_);
    SWV_TRY(refuse_duplicate_locked(key, device->identity(), uuid));
    if (devices_.size() > UINT16_MAX) return errno_error("swapon: device ids exhausted", EMFILE, "device " + key);
    // Device ids are never reused, so a stale PSlot can never name a newer device.
    DeviceId id(static_cast<std::uint16_t>(devices_.size()));
    auto dev = std::make_unique<SwapDevice>(std::move(device), id, priority, std::move(key), config_.health);
    // Stable among equals: a new device goes after those of the same priority.
    auto pos = std::find_if(by_priority_.begin(), by_priority_.end(),
                            [&](const SwapDevice* d) { return d->priority() < priority; });
    // Slots persisted snapshots hold are taken before the device is published: no
    // allocation can hand one out first (swap/README.md#held-vslots).
    if (uuid) adopt_expected(*dev, *uuid);
    by_priority_.insert(pos, dev.get());
    devices_.push_back(std::move(dev));
    if (uuid) uuids_[id.value()] = *uuid;
    return id;
}

SwapDevice* SwapPool::find_locked(const std::string& key) const {
    for (SwapDevice* d : by_priority_) {
        if (d->path() == key) return d;
    }
    return nullptr;
}

SwapDevice* SwapPool::find_identity_locked(const io::DeviceIdentity& identity) const {
    for (SwapDevice* d : by_priority_) {
        if (d->identity() == identity) return d;
    }
    return nullptr;
}

Result<void> SwapPool::refuse_duplicate_locked(const std::string& key,
                                               const std::optional<io::DeviceIdentity>& identity,
                                               const std::optional<std::array<std::uint8_t, 16>>& uuid) const {
    const SwapDevice* same = find_locked(key);
    if (same == nullptr && identity) same = find_identity_locked(*identity);
    if (same == nullptr && uuid) {
        // Another name of a device already here that neither its name nor its
        // identity tells (an NBD export by a second host name or address): its swap
        // header's uuid does.
        for (const auto& [id, known] : uuids_) {
            if (known != *uuid || devices_[id] == nullptr) continue;
            return make_error(Errc::exists, "swapon",
                              key + " is the same device as " + devices_[id]->path() + " (swap header uuid " +
                                  uuid_text(*uuid) + "), already in the swap pool");
        }
    }
    if (same == nullptr) return {};
    if (same->path() == key) return make_error(Errc::exists, "swapon", key + " is already in the swap pool");
    return make_error(Errc::exists, "swapon",
                      key + " is the same device as " + same->path() + ", already in the swap pool");
}

std::string SwapPool::resolve_name(const std::filesystem::path& path) const {
    std::string key = canonical_swap_path(path);
    Result<io::DeviceIdentity> identity = io::identity_of(path);  // outside the lock: may block on I/O
    std::shared_lock lock(devices_mutex_);
    if (find_locked(key) != nullptr) return key;
    if (identity) {
        if (const SwapDevice* d = find_identity_locked(*identity)) return d->path();
    }
    return key;
}

std::optional<DeviceId> SwapPool::find_device(const std::filesystem::path& path) const {
    std::string key = resolve_name(path);
    std::shared_lock lock(devices_mutex_);
    SwapDevice* d = find_locked(key);
    return d ? std::optional(d->id()) : std::nullopt;
}

SwapDeviceRef SwapPool::get_swap_device(DeviceId id) const {
    std::shared_lock lock(devices_mutex_);
    if (id.value() >= devices_.size() || devices_[id.value()] == nullptr) return {};
    SwapDevice* d = devices_[id.value()].get();
    d->get();
    return SwapDeviceRef(d);
}

std::size_t SwapPool::allocate_pslots(std::span<const VSlot> vslots, std::span<Placement> placements,
                                      std::vector<Reservation>& reservations,
                                      std::span<const SwapDevice* const> excluded) {
    unsigned context = alloc_context();
    std::size_t placed = 0;
    std::vector<SlotIdx> slots;
    std::shared_lock lock(devices_mutex_);
    for (std::size_t g0 = 0; g0 < by_priority_.size() && placed < vslots.size();) {
        std::size_t g1 = g0 + 1;
        while (g1 < by_priority_.size() && by_priority_[g1]->priority() == by_priority_[g0]->priority()) ++g1;
        std::size_t group = g1 - g0;
        std::size_t start = group > 1 ? rotor_.fetch_add(1) % group : 0;
        for (std::size_t k = 0; k < group && placed < vslots.size(); ++k) {
            SwapDevice* dev = by_priority_[g0 + (start + k) % group];
            if (std::find(excluded.begin(), excluded.end(), dev) != excluded.end()) continue;
            slots.clear();
            std::size_t got = dev->allocate(vslots.subspan(placed), context, slots);
            if (got == 0) continue;
            dev->get();
            reservations.emplace_back(SwapDeviceRef(dev));
            for (std::size_t i = 0; i < got; ++i) placements[placed + i] = Placement{dev, slots[i]};
            placed += got;
        }
        g0 = g1;
    }
    return placed;
}

void SwapPool::quarantine_pslot(PSlot pslot) {
    std::shared_lock lock(devices_mutex_);
    if (pslot.device.value() < devices_.size() && devices_[pslot.device.value()] != nullptr)
        devices_[pslot.device.value()]->quarantine(pslot.slot);
}

void SwapPool::note_swapin(PSlot pslot) {
    std::shared_lock lock(devices_mutex_);
    if (pslot.device.value() < devices_.size() && devices_[pslot.device.value()] != nullptr &&
        devices_[pslot.device.value()]->memory() != nullptr)
        devices_[pslot.device.value()]->memory()->note_swapin();
}

void SwapPool::note_checksum_error(PSlot pslot) {
    std::shared_lock lock(devices_mutex_);
    if (pslot.device.value() < devices_.size() && devices_[pslot.device.value()] != nullptr) {
        devices_[pslot.device.value()]->note_checksum_error();
        devices_[pslot.device.value()]->quarantine(pslot.slot);
    }
}

std::uint64_t SwapPool::free_elsewhere(const SwapDevice* dev) const {
    std::shared_lock lock(devices_mutex_);
    std::uint64_t free = 0;
    for (const SwapDevice* other : by_priority_) {
        // Moves never target a memory tier (swap/README.md#tiers).
        if (other == dev || other->memory() != nullptr) continue;
        DeviceUsage u = other->usage();
        if (u.state == DeviceState::active) free += u.free_slots;
    }
    return free;
}

void SwapPool::free_pslot(PSlot pslot) {
    std::shared_lock lock(devices_mutex_);
    SWV_ASSERT(pslot.device.value() < devices_.size() && devices_[pslot.device.value()] != nullptr,
               "free_pslot: a vslot points at a removed device");
    devices_[pslot.device.value()]->free_slots(std::span(&pslot.slot, 1));
}

Result<void> SwapPool::write_out(io::Ring& ring, std::span<PageOut> pages) {
    for (PageOut& p : pages) {
        p.vslot = kNoVSlot;
        p.error.reset();
    }
    if (pages.empty()) return {};
    const std::size_t n = pages.size();

    std::vector<OwnerTag> owners(n);
    for (std::size_t i = 0; i < n; ++i) owners[i] = pages[i].owner;
    std::vector<VSlot> vslots(n, kNoVSlot);
    const std::size_t with_vslot = table_.allocate(owners, vslots);
    for (std::size_t i = with_vslot; i < n; ++i) pages[i].error = Errc::no_space;

    // Rounds: every page still to write is placed by priority on devices that have
    // not failed a write of this batch; a page whose write fails goes to the next
    // round (the next device, at once). At most one round per device.
    std::vector<std::size_t> todo(with_vslot);  // indices into pages
    for (std::size_t i = 0; i < with_vslot; ++i) todo[i] = i;
    std::vector<const SwapDevice*> failed_devices;
    std::vector<VSlot> round_vslots;
    std::vector<Placement> placements;
    std::vector<PageIo> ios;
    std::vector<std::optional<Errc>> errors;
    std::vector<std::size_t> retry;
    bool any_placed = false;
    while (!todo.empty()) {
        round_vslots.clear();
        for (std::size_t i : todo) round_vslots.push_back(vslots[i]);
        placements.assign(todo.size(), Placement{});
        std::vector<Reservation> reservations;  // end their pending writes at the end of the round
        // A memory tier where an owner group of this round holds its share already
        // is passed over this round (a batch comes from one VM: all or none of it).
        std::vector<const SwapDevice*> excluded = failed_devices;
        {
            std::vector<std::uint16_t> groups;
            for (std::size_t i : todo) {
                const std::uint16_t g = owner_group(pages[i].owner);
                if (std::find(groups.begin(), groups.end(), g) == groups.end()) groups.push_back(g);
            }
            const std::vector<const SwapDevice*> full = tiers_at_share(groups);
            excluded.insert(excluded.end(), full.begin(), full.end());
        }
        const std::size_t placed = allocate_pslots(round_vslots, placements, reservations, excluded);
        for (std::size_t k = placed; k < todo.size(); ++k) {
            const std::size_t i = todo[k];
            // No device (left) with room: an earlier failure says more than "no space".
            if (!pages[i].error) pages[i].error = Errc::no_space;
        }
        if (placed == 0) break;
        any_placed = true;

        // Pages are in allocation order, so slots ascend within each device and pages
        // contiguous in memory and in slots become one write (swap/README.md#io-batches).
        ios.resize(placed);
        for (std::size_t k = 0; k < placed; ++k) {
            const std::size_t i = todo[k];
            table_.set_target(vslots[i], PSlot{placements[k].device->id(), placements[k].slot},
                              pages[i].checksum ? *pages[i].checksum : page_checksum(pages[i].data));
            if (MemoryStore* tier = placements[k].device->memory())
                tier->assign(placements[k].slot, owner_group(pages[i].owner));
            // The device only reads this buffer (IoKind::write).
            ios[k] = PageIo{&placements[k].device->block(), placements[k].slot, const_cast<std::byte*>(pages[i].data)};
        }
        errors.assign(placed, std::nullopt);
        run_page_io(ring, io::IoKind::write, ios, config_.max_run_pages, errors);

        retry.clear();
        for (std::size_t k = 0; k < placed; ++k) {
            const std::size_t i = todo[k];
            SwapDevice* dev = placements[k].device;
            if (!errors[k]) {
                table_.publish(vslots[i]);
                pages[i].vslot = vslots[i];
                pages[i].error.reset();
                continue;
            }
            pages[i].error = errors[k];
            // The slot that failed is never handed out again; we hold a reference on
            // the device, so freeing through it is safe. A memory tier's refusal is
            // not a failure: its slot is simply freed, the page goes to the next device.
            if (errors[k] != Errc::rejected) dev->quarantine(placements[k].slot);
            dev->free_slots(std::span(&placements[k].slot, 1));
            if (std::find(failed_devices.begin(), failed_devices.end(), dev) == failed_devices.end())
                failed_devices.push_back(dev);
            retry.push_back(i);
        }
        todo.swap(retry);
    }
    for (std::size_t i = 0; i < with_vslot; ++i) {
        if (pages[i].ok()) continue;
        // Refused by a memory tier and no device after it: to the caller, no room.
        if (pages[i].error == Errc::rejected) pages[i].error = Errc::no_space;
        table_.retire(vslots[i]);
        table_.recycle(vslots[i]);
    }
    // A tier this batch filled past its high watermark sends its coldest pages down
    // now, on this (reclaim) thread: demotion is paced by the writes that need it.
    demote(ring);
    if (!any_placed) return make_error(Errc::no_space, "swap write_out: no device has a free slot");
    return {};
}

std::vector<const SwapDevice*> SwapPool::tiers_at_share(std::span<const std::uint16_t> groups) const {
    std::shared_lock lock(devices_mutex_);  // the stores stay alive while we ask them
    std::vector<const SwapDevice*> out;
    for (const SwapDevice* d : by_priority_) {
        if (d->memory() == nullptr) continue;
        for (std::uint16_t g : groups) {
            if (d->memory()->at_share(g)) {
                out.push_back(d);
                break;
            }
        }
    }
    return out;
}

std::vector<const SwapDevice*> SwapPool::memory_tiers_locked() const {
    std::vector<const SwapDevice*> tiers;
    for (const SwapDevice* d : by_priority_)
        if (d->memory() != nullptr) tiers.push_back(d);
    return tiers;
}

std::uint64_t SwapPool::demote(io::Ring& ring) {
    std::vector<DeviceId> above;
    {
        std::shared_lock lock(devices_mutex_);
        for (const SwapDevice* d : by_priority_) {
            if (d->memory() != nullptr && d->memory()->above_high()) above.push_back(d->id());
        }
    }
    std::uint64_t moved = 0;
    for (DeviceId id : above) {
        Result<std::uint64_t> r = demote_device(ring, id, 0);
        if (r) moved += *r;
    }
    return moved;
}


Result<void> SwapPool::read_in(io::Ring& ring, VSlot vslot, std::byte* dst) {
    PageIn page{vslot, dst, std::nullopt};
    SWV_TRY(read_in(ring, std::span(&page, 1)));
    if (page.error) return make_error(*page.error, "swap read_in", describe(vslot));
    return {};
}

Result<void> SwapPool::read_in(io::Ring& ring, std::span<PageIn> pages) {
    // A page whose descriptor moved (swapoff switched it) between our lookup and the
    // checksum check is read again from its new place.
    constexpr int kAttempts = 4;
    enum class Pending : bool { no, yes };
    std::vector<Pending> pending(pages.size(), Pending::yes);
    auto settle = [&](std::size_t i, std::optional<Errc> error) {
        pages[i].error = error;
        pending[i] = Pending::no;
    };
    for (PageIn& p : pages) p.error.reset();
    std::vector<VSlotInfo> infos(pages.size());
    std::vector<std::size_t> order;
    std::vector<SwapDeviceRef> refs;
    std::vector<PageIo> ios;
    std::vector<std::size_t> page_of;  // ios[k] reads pages[page_of[k]]
    std::vector<std::optional<Errc>> errors;

    for (int attempt = 0; attempt < kAttempts; ++attempt) {
        order.clear();
        for (std::size_t i = 0; i < pages.size(); ++i) {
            if (pending[i] == Pending::no) continue;
            infos[i] = table_.lookup(pages[i].vslot);
            if (infos[i].state != VSlotState::valid) {
                settle(i, Errc::stale_slot);
                continue;
            }
            order.push_back(i);
        }
        if (order.empty()) break;
        // Group by device, slot order within a device, so neighbours merge into runs.
        std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
            return std::pair(infos[a].pslot.device, infos[a].pslot.slot) <
                   std::pair(infos[b].pslot.device, infos[b].pslot.slot);
        });
        refs.clear();
        ios.clear();
        page_of.clear();
        for (std::size_t g0 = 0; g0 < order.size();) {
            DeviceId id = infos[order[g0]].pslot.device;
            std::size_t g1 = g0;
            while (g1 < order.size() && infos[order[g1]].pslot.device == id) ++g1;
            // get_swap_device(): fails only if the device was removed after our lookup,
            // which means the descriptor moved: those pages stay pending for the next pass.
            if (SwapDeviceRef ref = get_swap_device(id)) {
                for (std::size_t k = g0; k < g1; ++k) {
                    ios.push_back(PageIo{&ref->block(), infos[order[k]].pslot.slot, pages[order[k]].dst});
                    page_of.push_back(order[k]);
                }
                refs.push_back(std::move(ref));
            }
            g0 = g1;
        }
        errors.assign(ios.size(), std::nullopt);
        run_page_io(ring, io::IoKind::read, ios, config_.max_run_pages, errors);
        refs.clear();  // the checksum check below reads only our buffers

        for (std::size_t k = 0; k < ios.size(); ++k) {
            const std::size_t i = page_of[k];
            if (errors[k]) {
                settle(i, errors[k]);
                quarantine_pslot(infos[i].pslot);  // counted by the device's IoWatch
            } else if (page_checksum(pages[i].dst) == infos[i].checksum) {
                settle(i, std::nullopt);
                note_swapin(infos[i].pslot);
            } else {
                VSlotInfo now = table_.lookup(pages[i].vslot);
                if (now.state != VSlotState::valid || now.generation != infos[i].generation) {
                    settle(i, Errc::stale_slot);
                } else if (!(now.pslot == infos[i].pslot)) {
                    continue;  // moved under us: read the new place on the next pass
                } else {
                    settle(i, Errc::checksum_mismatch);
                    note_checksum_error(infos[i].pslot);
                }
            }
        }
    }
    for (std::size_t i = 0; i < pages.size(); ++i) {
        if (pending[i] == Pending::yes) settle(i, Errc::stale_slot);
    }
    return {};
}

std::string SwapPool::describe(VSlot vslot) const {
    VSlotInfo info = table_.lookup(vslot);
    if (info.state == VSlotState::valid) {
        std::shared_lock lock(devices_mutex_);
        const std::size_t dev = info.pslot.device.value();
        if (dev < devices_.size() && devices_[dev] != nullptr) {
            return slot_context(devices_[dev]->path(), info.pslot.slot, vslot);
        }
    }
    return "vslot " + std::to_string(vslot.value());  // freed, or its device is gone
}

void SwapPool::free(VSlot vslot) {
    if (vslot == kNoVSlot) return;
    if (!drop_reference(vslot, Drop::owner)) return;
    release(vslot);
}

void SwapPool::drop_hold(VSlot vslot) {
    if (vslot == kNoVSlot) return;
    if (!drop_reference(vslot, Drop::holder)) return;
    release(vslot);
}

Result<void> SwapPool::check_borrow(std::span<const DeviceUuid> devices) const {
    std::vector<std::pair<std::uint16_t, DeviceUuid>> ids;
    for (const DeviceUuid& uuid : devices)  // the device table's lock, before the leaf
        if (const std::optional<DeviceId> id = device_by_uuid(uuid)) ids.emplace_back(id->value(), uuid);
    std::lock_guard lock(refs_mutex_);
    for (const auto& [id, uuid] : ids)
        if (std::find(handing_over_.begin(), handing_over_.end(), id) != handing_over_.end())
            return make_error(Errc::device_busy, "swap borrow: its device is being handed over",
                              "device uuid " + uuid_text(uuid));
    return {};
}

bool SwapPool::drop_reference(VSlot vslot, Drop who) {
    // The cheap check: nothing is shared (the common case), so this is the last reference.
    if (shared_count_.load() == 0) return true;
    std::lock_guard lock(refs_mutex_);
    auto it = extra_refs_.find(vslot.value());
    if (it == extra_refs_.end()) return true;
    if (--it->second == 0) {
        extra_refs_.erase(it);
        shared_count_.store(extra_refs_.size());
    }
    // The owner's reference went while holders remain: no VM refers to it through its
    // owner tag any more (a snapshot-only vslot: swapoff never brings it back).
    if (who == Drop::owner) table_.set_owner(vslot, kSnapshotOwner);
    return false;
}

Result<void> SwapPool::hold(VSlot vslot) {
    {
        std::lock_guard lock(refs_mutex_);
        const VSlotInfo info = table_.lookup(vslot);
        if (info.state == VSlotState::valid) {
            if (std::find(handing_over_.begin(), handing_over_.end(), info.pslot.device.value()) != handing_over_.end())
                return make_error(Errc::device_busy, "swap hold: its device is being handed over", describe(vslot));
            ++extra_refs_[vslot.value()];
            shared_count_.store(extra_refs_.size());
            return {};
        }
    }
    return make_error(Errc::stale_slot, "swap hold", describe(vslot));
}

std::uint32_t SwapPool::extra_refs(VSlot vslot) const {
    std::lock_guard lock(refs_mutex_);
    auto it = extra_refs_.find(vslot.value());
    return it == extra_refs_.end() ? 0 : it->second;
}

std::uint64_t SwapPool::shared_vslots() const { return shared_count_.load(); }

bool SwapPool::is_held(VSlot vslot, OwnerTag owner) const {
    return owner == kSnapshotOwner || (shared_count_.load() != 0 && extra_refs(vslot) != 0);
}

Result<void> SwapPool::expect_held_slots(const DeviceUuid& uuid, std::span<const HeldSlot> slots) {
    std::shared_lock devices(devices_mutex_);
    for (const auto& [id, known] : uuids_) {
        if (known == uuid && devices_[id] != nullptr)
            return make_error(Errc::held_slot, "expect_held_slots",
                              "device " + devices_[id]->path() + " (uuid " + uuid_text(uuid) +
                                  ") is attached already: snapshot slots are reserved before swapon");
    }
    std::lock_guard lock(adopt_mutex_);
    auto& expected = expected_[uuid];
    for (const HeldSlot& h : slots) {
        auto [it, fresh] = expected.try_emplace(h.slot.value(), h.checksum, 0);
        if (!fresh && it->second.first != h.checksum)
            return make_error(Errc::held_slot, "expect_held_slots",
                              "device uuid " + uuid_text(uuid) + ", slot " + std::to_string(h.slot.value()) +
                                  ": two snapshots name it with different checksums");
        it->second.second++;
    }
    return {};
}

void SwapPool::adopt_expected(SwapDevice& dev, const DeviceUuid& uuid) {
    std::lock_guard lock(adopt_mutex_);
    auto it = expected_.find(uuid);
    if (it == expected_.end()) return;
    std::vector<OwnerTag> owners(1, kSnapshotOwner);
    for (const auto& [slot, want] : it->second) {
        const auto [checksum, refs] = want;
        VSlot v = kNoVSlot;
        if (table_.allocate(owners, std::span(&v, 1)) != 1) break;
        if (!dev.reserve(SlotIdx(slot), v)) {
            // Out of range, or quarantined: the snapshot that names it fails to open,
            // naming the slot (never wrong data).
            table_.retire(v);
            table_.recycle(v);
            continue;
        }
        table_.set_target(v, PSlot{dev.id(), SlotIdx(slot)}, checksum);
        table_.publish(v);
        if (refs > 1) {
            std::lock_guard refs_lock(refs_mutex_);
            extra_refs_[v.value()] = refs - 1;
            shared_count_.store(extra_refs_.size());
        }
        adopted_[{uuid, slot}] = v;
    }
    expected_.erase(it);
}

std::optional<VSlot> SwapPool::adopted_vslot(const DeviceUuid& uuid, SlotIdx slot) const {
    const std::optional<DeviceId> dev = device_by_uuid(uuid);
    if (!dev) return std::nullopt;
    std::lock_guard lock(adopt_mutex_);
    auto it = adopted_.find({uuid, slot.value()});
    if (it == adopted_.end()) return std::nullopt;
    // Still that slot's vslot (an adopted vslot released since may have been reused).
    const VSlotInfo info = table_.lookup(it->second);
    if (info.state != VSlotState::valid || !(info.pslot == PSlot{*dev, slot})) return std::nullopt;
    return it->second;
}

std::optional<DeviceId> SwapPool::device_by_uuid(const DeviceUuid& uuid) const {
    std::shared_lock lock(devices_mutex_);
    for (const auto& [id, known] : uuids_)
        if (known == uuid && devices_[id] != nullptr) return DeviceId(id);
    return std::nullopt;
}

std::optional<DeviceUuid> SwapPool::uuid_of(DeviceId id) const {
    std::shared_lock lock(devices_mutex_);
    auto it = uuids_.find(id.value());
    if (it == uuids_.end()) return std::nullopt;
    return it->second;
}

void SwapPool::set_held_slot_observer(HeldSlotObserver observer) {
    std::lock_guard lock(adopt_mutex_);
    held_observer_ = std::move(observer);
}

void SwapPool::notify_held_moves(std::vector<HeldSlotMove>& moves) {
    if (moves.empty()) return;
    HeldSlotObserver observer;
    {
        std::lock_guard lock(adopt_mutex_);
        observer = held_observer_;
        // An adopted vslot is found by its new place from now on.
        for (const HeldSlotMove& m : moves) {
            auto it = adopted_.find({m.from_uuid, m.from_slot.value()});
            if (it != adopted_.end() && it->second == m.vslot) {
                adopted_.erase(it);
                adopted_[{m.to_uuid, m.to_slot.value()}] = m.vslot;
            }
        }
    }
    if (observer) observer(moves);
    moves.clear();
}

void SwapPool::release(VSlot vslot) {
    std::optional<VSlotInfo> info = table_.retire(vslot);
    SWV_ASSERT(info.has_value(), "swap free: vslot not allocated (double free?)");
    SWV_ASSERT(info->state == VSlotState::valid, "swap free: vslot still being written");
    // The pslot is released before the vslot can be reused, so the reverse map never
    // names a vslot that is already somewhere else for long; swapoff checks anyway.
    free_pslot(info->pslot);
    table_.recycle(vslot);
}

std::vector<DeviceStats> SwapPool::stats() const {
    std::shared_lock lock(devices_mutex_);
    std::vector<DeviceStats> out;
    std::vector<DeviceId> ids;
    out.reserve(by_priority_.size());
    for (const SwapDevice* d : by_priority_) {
        ids.push_back(d->id());
        DeviceUsage u = d->usage();
        out.push_back(DeviceStats{d->path(), d->priority(), u.total_slots, u.used_slots,
                                  u.state == DeviceState::removing, u.state, u.write_errors, u.failure,
                                  u.read_errors, u.quarantined_slots, u.read_bytes, u.written_bytes, u.free_slots,
                                  u.read_retries});
        if (auto it = uuids_.find(d->id().value()); it != uuids_.end()) out.back().uuid = uuid_text(it->second);
        if (const MemoryStore* store = d->memory()) {
            const MemoryTierStats m = store->stats();
            DeviceStats& st = out.back();
            st.kind = "memory";
            st.codec = codec_name(store->spec().codec);
            st.stored_pages = m.stored_pages;
            st.compressed_bytes = m.compressed_bytes;
            st.arena_bytes = m.arena_bytes;
            st.capacity_bytes = m.capacity_bytes;
            st.rejected_pages = m.rejected_pages + m.full_rejects;
            st.demoted_pages = m.demoted_pages;
            st.swapins_served = m.swapins_served;
        }
    }
    lock.unlock();
    // The keeper's own lock is a leaf: read after the devices' lock is gone.
    LeaseKeeper* keeper = nullptr;
    {
        std::lock_guard leases(leases_mutex_);
        keeper = leases_.get();
    }
    if (keeper != nullptr)
        for (std::size_t i = 0; i < out.size(); ++i) out[i].remote = keeper->status(ids[i]);
    return out;
}

std::optional<OwnerTag> SwapPool::owner_of(VSlot vslot) const {
    VSlotInfo info = table_.lookup(vslot);
    if (info.state != VSlotState::valid) return std::nullopt;
    return info.owner;
}

bool SwapPool::copy_is_current(VSlot vslot, const SlotCopy& copy) const {
    VSlotInfo info = table_.lookup(vslot);
    return info.state == VSlotState::valid && info.pslot == copy.pslot && info.generation == copy.generation &&
           copy.bytes.size() == kSlotSize;
}

std::optional<VSlotInfo> SwapPool::descriptor(VSlot vslot) const {
    VSlotInfo info = table_.lookup(vslot);
    if (info.state != VSlotState::valid) return std::nullopt;
    return info;
}

std::optional<PSlot> SwapPool::pslot_of(VSlot vslot) const {
    VSlotInfo info = table_.lookup(vslot);
    if (info.state != VSlotState::valid) return std::nullopt;
    return info.pslot;
}

}  // namespace swapvisor::swap
