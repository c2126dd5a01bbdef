// Memory snapshots: save, open, restore, the filler and recorded-order prefetch,
// release (snapshot.hpp, docs/SNAPSHOT.md). Every stage-2 change goes through a row
// of transitions.hpp (R, 14, 14', 11); this file only chooses them.
//
// Files are written atomically: each under a temporary name in the snapshot
// directory, fsync'd, renamed, the manifest last, then the directory fsync'd, so a
// crash leaves either no memory.json or a complete snapshot.
#include "guestmem/snapshot.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "guestmem/byte_io.hpp"
#include "guestmem/errc.hpp"
#include "guestmem/guest_memory_impl.hpp"
#include "guestmem/image_writer.hpp"
#include "guestmem/page_table_file.hpp"
#include "guestmem/zero_page.hpp"
#include "swap/swap_header.hpp"

namespace swapvisor::guestmem {
namespace fs = std::filesystem;

namespace {

// memory.workingset: "SWVWSET1", u64 count, u32 page[count], u64 xxh3-64 of the rest.
constexpr char kWorkingSetMagic[8] = {'S', 'W', 'V', 'W', 'S', 'E', 'T', '1'};

Error bad(std::string what, std::string where) {
    return Error{make_error_code(Errc::bad_snapshot), "memory snapshot", std::move(where) + ": " + std::move(what)};
}

using byte_io::get;
using byte_io::put;
using byte_io::put_bytes;

Result<io::UniqueFd> open_fd(const fs::path& p, int flags, mode_t mode = 0644) {
    // Kernel contract: open(2); O_CLOEXEC so no child inherits the snapshot's files.
    const int fd = ::open(p.c_str(), flags | O_CLOEXEC, mode);
    if (fd < 0) return errno_error("open", errno, p.string());
    return io::UniqueFd(fd);
}

Result<void> write_all(int fd, const void* data, std::size_t len, off_t offset, const fs::path& p) {
    const auto* b = static_cast<const std::uint8_t*>(data);
    std::size_t done = 0;
    while (done < len) {
        // Kernel contract: pwrite(2) may write less than asked; EINTR retried.
        const ssize_t n = ::pwrite(fd, b + done, len - done, offset + static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("write", errno, p.string());
        done += static_cast<std::size_t>(n);
    }
    return {};
}

Result<void> fsync_fd(int fd, const fs::path& p) {
    // Kernel contract: fsync(2) makes the file's data and size durable.
    if (::fsync(fd) != 0) return errno_error("fsync", errno, p.string());
    return {};
}

Result<void> fsync_dir(const fs::path& dir) {
    auto fd = SWV_TRY(open_fd(dir, O_RDONLY | O_DIRECTORY));
    return fsync_fd(fd.get(), dir);
}

// Write bytes to dir/name atomically: a temporary name, fsync, rename (the caller
// fsyncs the directory once after its last rename).
Result<void> write_file_atomic(const fs::path& dir, const char* name, std::span<const std::uint8_t> bytes) {
    const fs::path tmp = dir / (std::string(".") + name + ".tmp");
    {
        auto fd = SWV_TRY(open_fd(tmp, O_WRONLY | O_CREAT | O_TRUNC));
        SWV_TRY(write_all(fd.get(), bytes.data(), bytes.size(), 0, tmp));
        SWV_TRY(fsync_fd(fd.get(), tmp));
    }
    std::error_code ec;
    fs::rename(tmp, dir / name, ec);
    if (ec) return errno_error("rename", ec.value(), tmp.string());
    return {};
}

Result<std::vector<std::uint8_t>> read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    if (!in) return std::unexpected(bad("missing or unreadable", p.string()));
    return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

std::uint64_t xxh3(std::span<const std::uint8_t> b) { return XXH3_64bits(b.data(), b.size()); }

struct PageTable {
    std::uint64_t memory_bytes = 0;
    std::vector<std::uint8_t> kinds;
    std::vector<SlotRef> refs;
    SnapshotCounts counts;
};

std::vector<std::uint8_t> encode_manifest(std::uint64_t memory_bytes, const SnapshotCounts& c,
                                          std::span<const SlotRef> refs) {
    // Distinct device UUIDs first, text last: formatting one per swapped page cost
    // ~0.08 us each: 257-266 -> 244-249 ms for a 1 GiB VM with 198k swapped pages.
    // Neighbouring references are mostly on one device: a set insert only on a change.
    std::set<decltype(SlotRef::uuid)> uuids;
    for (std::size_t k = 0; k < refs.size(); ++k)
        if (k == 0 || refs[k].uuid != refs[k - 1].uuid) uuids.insert(refs[k].uuid);
    std::set<std::string> devices;
    for (const auto& u : uuids) devices.insert(swap::uuid_text(u));
    nlohmann::json j = {
        {"format", "swapvisor-memory-snapshot"},
        {"version", kMemorySnapshotVersion},
        {"memory_bytes", memory_bytes},
        {"page_size", kPageSize},
        {"pages", memory_bytes / kPageSize},
        {"image", kMemoryImage},
        {"page_table", kMemoryPageTable},
        {"counts", {{"zero", c.zero}, {"image", c.image}, {"swapped", c.swapped}, {"lost", c.lost}}},
        {"devices", devices},
    };
    const std::string text = j.dump(2) + "\n";
    return std::vector<std::uint8_t>(text.begin(), text.end());
}

// Read and check memory.json and memory.pages (not the image, not the slots).
Result<PageTable> load_page_table(const fs::path& dir) {
    PageTable t;
    const fs::path manifest_path = dir / kMemoryManifest;
    const auto manifest = SWV_TRY(read_file(manifest_path));
    nlohmann::json j = nlohmann::json::parse(manifest.begin(), manifest.end(), nullptr, false);
    if (j.is_discarded() || !j.is_object()) return std::unexpected(bad("not JSON", manifest_path.string()));
    if (j.value("format", "") != "swapvisor-memory-snapshot")
        return std::unexpected(bad("not a swapvisor memory snapshot manifest", manifest_path.string()));
    const std::uint64_t version =
        j.contains("version") && j["version"].is_number_unsigned() ? j["version"].get<std::uint64_t>() : 0;
    if (version < kOldestMemorySnapshotVersion || version > kMemorySnapshotVersion)
        return std::unexpected(bad(fmt::format("version {} (this swapvisor reads versions {} to {})",
                                               j.contains("version") ? j["version"].dump() : "missing",
                                               kOldestMemorySnapshotVersion, kMemorySnapshotVersion),
                                   manifest_path.string()));
    if (!j.contains("memory_bytes") || !j["memory_bytes"].is_number_unsigned() || j.value("page_size", 0u) != kPageSize)
        return std::unexpected(bad("memory_bytes or page_size missing or wrong", manifest_path.string()));
    t.memory_bytes = j["memory_bytes"].get<std::uint64_t>();
    if (t.memory_bytes == 0 || t.memory_bytes % kPageSize != 0)
        return std::unexpected(bad("memory_bytes is not a whole number of pages", manifest_path.string()));
    const std::uint64_t pages = t.memory_bytes / kPageSize;

    const fs::path table_path = dir / kMemoryPageTable;
    const auto b = SWV_TRY(read_file(table_path));
    auto file = SWV_TRY(decode_page_table(b, pages, table_path.string()));
    t.kinds = std::move(file.kinds);
    t.refs = std::move(file.refs);
    t.counts = file.counts;
    return t;
}

// The image must hold every page up to the last image page.
Result<io::UniqueFd> open_image(const fs::path& dir, const std::vector<std::uint8_t>& kinds) {
    const fs::path p = dir / kMemoryImage;
    auto fd = open_fd(p, O_RDONLY);
    if (!fd) return std::unexpected(bad("memory image missing or unreadable", p.string()));
    struct stat st{};
    // Kernel contract: fstat(2) gives the file's size.
    if (::fstat(fd->get(), &st) != 0) return errno_error("fstat", errno, p.string());
    std::uint64_t need = 0;
    for (std::uint64_t i = kinds.size(); i-- > 0;) {
        if (static_cast<PageKind>(kinds[i]) == PageKind::image) {
            need = (i + 1) * kPageSize;
            break;
        }
    }
    if (static_cast<std::uint64_t>(st.st_size) < need)
        return std::unexpected(bad(fmt::format("memory image truncated: {} bytes, its last page ends at {}", st.st_size, need),
                                   p.string()));
    return std::move(*fd);
}

Result<std::vector<std::uint32_t>> load_working_set(const fs::path& dir, std::uint64_t pages) {
    const fs::path p = dir / kMemoryWorkingSet;
    std::error_code ec;
    if (!fs::exists(p, ec)) return std::vector<std::uint32_t>{};
    const auto b = SWV_TRY(read_file(p));
    if (b.size() < 24 || std::memcmp(b.data(), kWorkingSetMagic, 8) != 0 ||
        get<std::uint64_t>(b.data() + b.size() - 8) != xxh3(std::span(b).first(b.size() - 8)))
        return std::unexpected(bad("not a working-set file, or corrupt", p.string()));
    const std::uint64_t n = get<std::uint64_t>(b.data() + 8);
    if (b.size() != 16 + n * 4 + 8) return std::unexpected(bad("working-set file size does not match its count", p.string()));
    std::vector<std::uint32_t> order(n);
    std::memcpy(order.data(), b.data() + 16, n * 4);
    for (std::uint32_t page : order)
        if (page >= pages) return std::unexpected(bad(fmt::format("working set names page {} of {}", page, pages), p.string()));
    return order;
}

}  // namespace

// --- MemorySnapshot ----------------------------------------------------------------------

MemorySnapshot::~MemorySnapshot() { release(); }

MemorySnapshot::HeldRefs::~HeldRefs() {
    if (pool != nullptr)
        for (swap::VSlot v : vslots) pool->drop_hold(v);
}

void MemorySnapshot::release() { held_.reset(); }

void MemorySnapshot::note_devices() {
    std::vector<swap::DeviceUuid> devices;
    for (std::size_t k = 0; k < refs_.size(); ++k) {
        const auto& u = refs_[k].uuid;
        if (k != 0 && u == refs_[k - 1].uuid) continue;  // neighbours are mostly on one device
        if (std::find(devices.begin(), devices.end(), u) == devices.end()) devices.push_back(u);
    }
    std::lock_guard lock(devices_mutex_);
    devices_ = std::move(devices);
}

std::vector<swap::DeviceUuid> MemorySnapshot::devices() const {
    std::lock_guard lock(devices_mutex_);
    return devices_;
}

Result<void> MemorySnapshot::prepare_restore(std::span<const swap::VSlot> vslots) {
    note_devices();
    if (counts_.image + counts_.swapped == 0) return {};
    table_image_ = SWV_TRY(Stage2::make_image(kinds_.size(), [&](std::uint64_t* entries) {
        std::size_t k = 0;
        for (std::size_t i = 0; i < kinds_.size(); ++i) {
            switch (static_cast<PageKind>(kinds_[i])) {
                case PageKind::image: entries[i] = PageEntry::make(PageState::image).raw(); break;
                case PageKind::swapped: entries[i] = PageEntry::make_borrowed(vslots[k++]).raw(); break;
                case PageKind::zero:
                case PageKind::lost: break;  // zero; a lost page is armed at each restore (its poison)
            }
        }
    }));
    return {};
}

Result<void> MemorySnapshot::write_page_table(const fs::path& to) const {
    const auto bytes = encode_page_table(kinds_, refs_);
    return write_file_atomic(to, kMemoryPageTable, bytes);
}

std::vector<swap::VSlot> MemorySnapshot::held_on(const swap::DeviceUuid& uuid) const {
    std::vector<swap::VSlot> out;
    if (!held_) return out;
    for (std::size_t k = 0; k < held_->vslots.size(); ++k)
        if (refs_[k].uuid == uuid) out.push_back(held_->vslots[k]);
    return out;
}

bool MemorySnapshot::refers_beyond(const swap::DeviceUuid& uuid) const {
    return std::any_of(refs_.begin(), refs_.end(), [&](const SlotRef& r) { return r.uuid != uuid; });
}

Result<bool> MemorySnapshot::apply_moves(std::span<const swap::HeldSlotMove> moves) {
    if (!held_ || held_->vslots.empty() || moves.empty()) return false;
    const std::vector<swap::VSlot>& vslots = held_->vslots;
    std::map<std::uint32_t, const swap::HeldSlotMove*> by_vslot;
    for (const auto& m : moves) by_vslot[m.vslot.value()] = &m;
    bool changed = false;
    for (std::size_t k = 0; k < vslots.size(); ++k) {
        auto it = by_vslot.find(vslots[k].value());
        if (it == by_vslot.end()) continue;
        const swap::HeldSlotMove& m = *it->second;
        if (refs_[k].uuid != m.from_uuid || refs_[k].slot != m.from_slot) continue;
        refs_[k].uuid = m.to_uuid;
        refs_[k].slot = m.to_slot;
        changed = true;
    }
    if (!changed) return false;
    note_devices();  // the vslots (and so the table image) stay; their devices moved
    SWV_TRY(write_page_table(dir_));
    SWV_TRY(write_file_atomic(dir_, kMemoryManifest, encode_manifest(memory_bytes_, counts_, refs_)));
    SWV_TRY(fsync_dir(dir_));
    return true;
}

Result<std::unique_ptr<MemorySnapshot>> MemorySnapshot::open(const fs::path& dir, swap::SwapPool* pool) {
    PageTable t = SWV_TRY(load_page_table(dir));
    if (t.counts.image != 0) SWV_TRY(open_image(dir, t.kinds));
    std::vector<swap::VSlot> vslots;
    vslots.reserve(t.refs.size());
    std::uint64_t page = 0;
    for (const SlotRef& ref : t.refs) {
        while (static_cast<PageKind>(t.kinds[page]) != PageKind::swapped) ++page;
        const std::string where = fmt::format("{}, page {}: device uuid {}, slot {}", (dir / kMemoryPageTable).string(),
                                              page, swap::uuid_text(ref.uuid), ref.slot.value());
        if (pool == nullptr) return std::unexpected(bad("refers to a swap slot and there is no swap pool", where));
        if (!pool->device_by_uuid(ref.uuid)) return std::unexpected(bad("that swap device is not attached", where));
        const std::optional<swap::VSlot> v = pool->adopted_vslot(ref.uuid, ref.slot);
        if (!v)
            return std::unexpected(bad("that slot was not reserved for the snapshot (expect_snapshot_slots before "
                                       "swapon), or could not be (out of range, quarantined)",
                                       where));
        const auto info = pool->descriptor(*v);
        if (!info || info->checksum != ref.checksum)
            return std::unexpected(bad("the slot's reserved checksum differs from the page table's", where));
        vslots.push_back(*v);
        ++page;
    }
    std::unique_ptr<MemorySnapshot> s(new MemorySnapshot());
    s->dir_ = dir;
    s->memory_bytes_ = t.memory_bytes;
    s->pool_ = pool;
    s->kinds_ = std::move(t.kinds);
    s->refs_ = std::move(t.refs);
    s->counts_ = t.counts;
    // Before the references are taken over: a failure here leaves them adopted (still
    // reserved for this snapshot, which stays expected), as every error above does.
    SWV_TRY(s->prepare_restore(vslots));
    s->held_ = std::make_shared<HeldRefs>(pool);
    s->held_->vslots = std::move(vslots);  // takes over the adopted references
    return s;
}

Result<void> expect_snapshot_slots(const fs::path& dir, swap::SwapPool& pool) {
    const PageTable t = SWV_TRY(load_page_table(dir));
    std::map<swap::DeviceUuid, std::vector<swap::HeldSlot>> by_device;
    for (const SlotRef& r : t.refs) by_device[r.uuid].push_back(swap::HeldSlot{r.slot, r.checksum});
    // Every device first: a refusal for the second must not leave the first's slots
    // registered (a retry would count them twice).
    for (const auto& [uuid, slots] : by_device)
        if (pool.device_by_uuid(uuid))
            return make_error(swap::Errc::held_slot, "expect_snapshot_slots",
                              fmt::format("{}: swap device uuid {} is attached already: a snapshot's slots are "
                                          "reserved before its device's swapon",
                                          dir.string(), swap::uuid_text(uuid)));
    for (const auto& [uuid, slots] : by_device) SWV_TRY(with_context(pool.expect_held_slots(uuid, slots), dir.string()));
    return {};
}

Result<std::uint64_t> snapshot_slot_count(const fs::path& dir) {
    const PageTable t = SWV_TRY(load_page_table(dir));
    return t.refs.size();
}

Result<void> delete_memory_snapshot(std::unique_ptr<MemorySnapshot> snapshot) {
    if (!snapshot) return {};
    snapshot->release();
    const fs::path dir = snapshot->dir();
    std::error_code ec;
    // The manifest first: without it the rest is not a snapshot any more.
    for (const char* name : {kMemoryManifest, kMemoryPageTable, kMemoryImage, kMemoryWorkingSet}) {
        fs::remove(dir / name, ec);
        if (ec) return errno_error("remove", ec.value(), (dir / name).string());
    }
    return fsync_dir(dir);
}

// --- save ------------------------------------------------------------------------------------

namespace {
// How many threads walk a VM of `pages` pages (GuestMemory::save): one per 8 MiB chunk,
// at most kSaveWalkers and the host's CPUs.
constexpr std::size_t kSaveWalkers = 4;
std::size_t save_walkers(std::uint64_t pages) {
    const std::size_t cpus = std::max(1u, std::thread::hardware_concurrency());
    const std::uint64_t by_size = std::max<std::uint64_t>(1, pages / 2048);
    return static_cast<std::size_t>(std::min<std::uint64_t>({by_size, kSaveWalkers, cpus}));
}
}  // namespace

Result<std::unique_ptr<MemorySnapshot>> GuestMemory::save(const fs::path& dir) {
    Impl& impl = *impl_;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return errno_error("create snapshot directory", ec.value(), dir.string());
    if (fs::exists(dir / kMemoryManifest, ec))
        return errno_error("save: a memory snapshot exists there already", EEXIST, dir.string());

    const std::uint64_t pages = impl.table.pages();
    using Clock = std::chrono::steady_clock;
    auto lap = [at = Clock::now()]() mutable {
        const auto now = Clock::now();
        return std::chrono::duration<double, std::milli>(now - std::exchange(at, now)).count();
    };
    std::unique_ptr<MemorySnapshot> snap(new MemorySnapshot());
    snap->dir_ = dir;
    snap->memory_bytes_ = config_.memory_bytes;
    snap->pool_ = impl.pool;
    snap->held_ = std::make_shared<MemorySnapshot::HeldRefs>(impl.pool);
    snap->kinds_.assign(pages, static_cast<std::uint8_t>(PageKind::zero));

    const fs::path image_tmp = dir / (std::string(".") + kMemoryImage + ".tmp");
    // On failure: the references taken so far are dropped (snap's destructor) and
    // the temporary image removed; nothing under the final names changed.
    struct RemoveTmp {
        fs::path p;
        bool armed = true;
        ~RemoveTmp() {
            std::error_code ignored;
            if (armed) fs::remove(p, ignored);
        }
    } remove_tmp{image_tmp};
    auto image = SWV_TRY(open_fd(image_tmp, O_WRONLY | O_CREAT | O_TRUNC));
    // Kernel contract: ftruncate(2) sets the size; the pages never written stay holes.
    if (::ftruncate(image.get(), static_cast<off_t>(pages * kPageSize)) != 0)
        return errno_error("ftruncate", errno, image_tmp.string());

    // The walk: page bytes are copied under the page lock into a staging page and
    // the writer threads write the kept ones while it goes on (image_writer.hpp).
    // A large VM is walked by up to kSaveWalkers threads at once (its vCPUs are
    // paused), each with its own writer, taking 8 MiB chunks in turn; the chunks'
    // references are joined in page order after.
    struct Chunk {
        std::vector<SlotRef> refs;
        std::vector<swap::VSlot> vslots;  // refs[i]'s, held
    };
    struct Part {
        SnapshotCounts counts;
        Result<void> result;
    };
    constexpr std::uint64_t kChunkPages = 2048;
    std::vector<Chunk> chunks((pages + kChunkPages - 1) / kChunkPages);
    std::atomic<bool> failed{false};
    auto walk_chunk = [&](std::uint64_t c, ImageWriter& writer, Part& part) -> Result<void> {
        Chunk& chunk = chunks[c];
        for (std::uint64_t i = c * kChunkPages; i < std::min(pages, (c + 1) * kChunkPages); ++i) {
            const PageIdx idx(i);
            std::byte* dst = SWV_TRY(writer.stage(idx));
            PageKind kind = PageKind::zero;
            {
                PageLock lk = impl.tr.lock(idx);
                const PageEntry e = lk.entry();
                switch (e.state()) {
                    case PageState::zero: break;
                    case PageState::lost: kind = PageKind::lost; break;
                    case PageState::swapped: kind = PageKind::swapped; break;
                    case PageState::resident:
                    case PageState::inactive:
                        // A clean copy is the page: refer to it instead of writing it.
                        kind = e.clean() ? PageKind::swapped : PageKind::image;
                        if (kind == PageKind::image) std::memcpy(dst, impl.kernel->vmm_page(idx), kPageSize);
                        break;
                    case PageState::writeback:  // the bytes stay in the memfd until the completion, which needs this lock
                        kind = PageKind::image;
                        std::memcpy(dst, impl.kernel->vmm_page(idx), kPageSize);
                        break;
                    case PageState::image:  // restored and not touched yet: the parent's image has it
                        kind = PageKind::image;
                        SWV_TRY(impl.image->read(idx, dst));
                        break;
                    case PageState::reading: SWV_ASSERT(false, "reading state seen by a lock holder");
                }
                if (kind == PageKind::swapped) {
                    // The reference is taken under the page lock: the VM cannot free the vslot first.
                    const swap::VSlot v = e.vslot();
                    const auto info = impl.pool->descriptor(v);
                    SWV_ASSERT(info.has_value(), "save: a page refers to a vslot that is not valid");
                    SWV_TRY(impl.pool->hold(v));
                    chunk.vslots.push_back(v);
                    chunk.refs.push_back(SlotRef{impl.pool->uuid_of(info->pslot.device).value_or(swap::DeviceUuid{}),
                                                info->pslot.slot, info->checksum});
                }
            }
            if (kind == PageKind::image && is_zero_page(dst)) kind = PageKind::zero;  // not written: a hole
            if (kind == PageKind::image) writer.keep();
            snap->kinds_[i] = static_cast<std::uint8_t>(kind);  // walkers own disjoint chunks
            switch (kind) {
                case PageKind::zero: part.counts.zero++; break;
                case PageKind::image: part.counts.image++; break;
                case PageKind::swapped: part.counts.swapped++; break;
                case PageKind::lost: part.counts.lost++; break;
            }
        }
        return {};
    };
    // The order of the chunks: those with pages to write first, as long as the
    // walker's writer has a free buffer; while the disk is behind (every other buffer
    // queued or in flight), a chunk that only refers to slots, so that the references
    // are taken while the disk writes instead of before or after it. Sorted by a
    // look at the entries without their locks: a guess only; walk_chunk decides each
    // page under its lock, whichever list its chunk is in.
    std::vector<std::uint64_t> write_chunks, ref_chunks;
    for (std::uint64_t c = 0; c < chunks.size(); ++c) {
        bool writes = false;
        for (std::uint64_t i = c * kChunkPages; i < std::min(pages, (c + 1) * kChunkPages) && !writes; ++i) {
            const PageEntry e = impl.table.peek(PageIdx(i));
            writes = e.state() == PageState::writeback || e.state() == PageState::image ||
                     ((e.state() == PageState::resident || e.state() == PageState::inactive) && !e.clean());
        }
        (writes ? write_chunks : ref_chunks).push_back(c);
    }
    std::atomic<std::size_t> next_write{0}, next_ref{0};
    auto take = [](std::atomic<std::size_t>& next, const std::vector<std::uint64_t>& list) -> std::optional<std::uint64_t> {
        if (next.load(std::memory_order_relaxed) >= list.size()) return std::nullopt;
        const std::size_t k = next.fetch_add(1);
        return k < list.size() ? std::optional(list[k]) : std::nullopt;
    };
    auto walk = [&](Part& part) -> Result<void> {
        auto writer = SWV_TRY(ImageWriter::start(image.get(), image_tmp));
        while (!failed.load(std::memory_order_relaxed)) {
            std::optional<std::uint64_t> c;
            if (writer->disk_bound()) c = take(next_ref, ref_chunks);
            if (!c) c = take(next_write, write_chunks);
            if (!c) c = take(next_ref, ref_chunks);
            if (!c) break;
            if (auto r = walk_chunk(*c, *writer, part); !r) {
                failed = true;
                return r;
            }
        }
        part.counts.bytes_written += SWV_TRY(writer->finish());  // written (fsync'd below, once)
        return {};
    };
    const std::size_t walkers = save_walkers(pages);
    std::vector<Part> parts(walkers);
    {
        std::vector<std::thread> helpers;
        for (std::size_t k = 1; k < walkers; ++k)
            helpers.emplace_back([&walk, &failed, &part = parts[k]] {
                part.result = walk(part);
                if (!part.result) failed = true;
            });
        parts[0].result = walk(parts[0]);
        for (auto& t : helpers) t.join();
    }
    // Every chunk's references go to the snapshot first, so that a failure drops them all.
    for (Chunk& chunk : chunks) {
        snap->refs_.insert(snap->refs_.end(), chunk.refs.begin(), chunk.refs.end());
        snap->held_->vslots.insert(snap->held_->vslots.end(), chunk.vslots.begin(), chunk.vslots.end());
    }
    for (Part& part : parts) {
        snap->counts_.zero += part.counts.zero;
        snap->counts_.image += part.counts.image;
        snap->counts_.swapped += part.counts.swapped;
        snap->counts_.lost += part.counts.lost;
        snap->counts_.bytes_written += part.counts.bytes_written;
    }
    for (Part& part : parts) SWV_TRY(part.result);
    snap->save_times_.walk_ms = lap();
    SWV_TRY(fsync_fd(image.get(), image_tmp));
    snap->save_times_.image_sync_ms = lap();
    SWV_TRY(snap->prepare_restore(snap->held_->vslots));  // before any final name: a failure leaves no snapshot
    snap->save_times_.table_image_ms = lap();
    image = io::UniqueFd();
    fs::rename(image_tmp, dir / kMemoryImage, ec);
    if (ec) return errno_error("rename", ec.value(), image_tmp.string());
    remove_tmp.armed = false;
    const auto table = encode_page_table(snap->kinds_, snap->refs_);
    SWV_TRY(write_file_atomic(dir, kMemoryPageTable, table));
    const auto manifest = encode_manifest(snap->memory_bytes_, snap->counts_, snap->refs_);
    SWV_TRY(write_file_atomic(dir, kMemoryManifest, manifest));  // last: its presence means complete
    SWV_TRY(fsync_dir(dir));
    snap->save_times_.files_ms = lap();
    snap->counts_.bytes_written += table.size() + manifest.size();
    return snap;
}

// --- restore ---------------------------------------------------------------------------------

Result<std::unique_ptr<GuestMemory>> restore_guest_memory(const MemoryConfig& config, VmId id, HostBudget* host,
                                                          swap::SwapPool* pool, const MemorySnapshot& snap,
                                                          const RestoreOptions& options, ReclaimService* service,
                                                          FaultService* faults) {
    const std::string where = snap.dir().string();
    if (config.memory_bytes != snap.memory_bytes())
        return std::unexpected(bad(fmt::format("the page table is for {} bytes of memory, the VM has {}",
                                               snap.memory_bytes(), config.memory_bytes),
                                   where));
    if (snap.held_vslots() != snap.refs_.size())
        return std::unexpected(bad("the snapshot was released (deleted)", where));
    if (!snap.refs_.empty() && (pool == nullptr || pool != snap.pool_))
        return std::unexpected(bad("the snapshot's slots belong to another swap pool (or none)", where));
    // Where hold() would refuse (a device being handed over), borrowing is refused
    // too: the handover's check and this one cannot both miss each other (vmm).
    if (const auto devices = snap.devices(); !devices.empty())
        SWV_TRY(with_context(pool->check_borrow(devices), where));
    std::unique_ptr<PageImage> image;
    if (snap.counts().image != 0) {
        auto fd = SWV_TRY(open_image(snap.dir(), snap.kinds_));
        image = std::make_unique<PageImage>(std::move(fd), snap.pages(), (snap.dir() / kMemoryImage).string());
    }
    std::vector<std::uint32_t> order;
    if (options.prefetch) order = SWV_TRY(load_working_set(snap.dir(), snap.pages()));

    auto mem = SWV_TRY(create_guest_memory(config, id, host, pool, service, faults));
    GuestMemory::Impl& impl = *mem->impl_;
    // No thread of this VM exists and HostMemory lists it only when this returns: the
    // table becomes a private mapping of the snapshot's table image, every image and
    // swapped entry in place without a store (its swapped entries borrow the
    // snapshot's references, kept alive by this VM from here), whatever the memory
    // size (docs/SNAPSHOT.md#restore-time).
    if (snap.table_image_.valid()) {
        impl.table = SWV_TRY(Stage2::map_image(snap.table_image_, snap.pages()));
        impl.tr.restored_swapped(snap.counts().swapped);
    }
    impl.borrowed_refs = snap.held_;
    // A lost page arms its poison marker through the locked row (only they are visited).
    if (snap.counts().lost != 0) {
        for (std::uint64_t i = 0; i < snap.pages(); ++i) {
            if (snap.kind(i) != PageKind::lost) continue;
            PageLock lk = impl.tr.lock(PageIdx(i));
            SWV_TRY(impl.tr.restore_entry(lk, PageEntry::make(PageState::lost)));
        }
    }
    impl.image = std::move(image);
    impl.tr.set_image(impl.image.get());
    impl.snapshot_dir = snap.dir();
    std::error_code ec;
    if (options.record_working_set && !fs::exists(snap.dir() / kMemoryWorkingSet, ec)) {
        impl.first_touch = std::make_unique<FirstTouchLog>(snap.pages());
        impl.tr.set_first_touch_log(impl.first_touch.get());
    }
    impl.prefetch_order = std::move(order);
    impl.fill_rest = options.fill && impl.image != nullptr;
    return mem;
}

Result<void> GuestMemory::save_working_set() const {
    const Impl& impl = *impl_;
    if (!impl.first_touch) return {};
    const std::vector<std::uint32_t> order = impl.first_touch->order();
    if (order.empty()) return {};
    std::vector<std::uint8_t> out;
    put_bytes(out, kWorkingSetMagic, 8);
    put<std::uint64_t>(out, order.size());
    put_bytes(out, order.data(), order.size() * 4);
    put<std::uint64_t>(out, xxh3(out));
    SWV_TRY(write_file_atomic(impl.snapshot_dir, kMemoryWorkingSet, out));
    return fsync_dir(impl.snapshot_dir);
}

// --- the filler and recorded-order prefetch ---------------------------------------------------

namespace {
// Pages one prefetch batch locks and reads together, and the reads in flight at once.
// The prefetch is latency-bound (one 4 KiB read at a time left its thread idle in
// io_cqring_wait, docs/PERFORMANCE.md#snapshot): a batch keeps the device busy. The
// guest soon catches up with the prefetch and waits at each batch's first page for
// the whole batch, so batches grow (few hand-overs) from a small first one (the
// guest's first pages come quickly) to a cap that bounds how long a guest fault on a
// locked page can wait (kPrefetchBatchMax reads at kPrefetchInFlight deep).
constexpr std::size_t kPrefetchBatchMin = 16;
constexpr std::size_t kPrefetchBatchMax = 512;
constexpr unsigned kPrefetchInFlight = 128;
}  // namespace

// Prefetch the recorded working set in its order, then, with fill_rest, every image
// page left, in batches: up to batch_pages pages of the order are locked (try_lock
// only, README#lock-bit: a page someone holds is theirs, so the guest is never made to
// wait for a page the filler has not started), sorted, and brought in together —
// image pages by runs read from the image, swapped pages by one batched read_in
// (rows 14' and 10', batched), each run mapped with one UFFDIO_CONTINUE so the guest
// takes no fault. Pages the guest brought in first are skipped, so a guest that gets
// ahead is caught up with cheaply. A batch takes at most the room left under the
// VM's limit; stops at the limit and when the VM stops.
void GuestMemory::Impl::fill_loop() {
    auto ring = io::Ring::create(kPrefetchInFlight);
    if (!ring) {
        spdlog::error("{}: filler cannot create its io_uring: {}", name, ring.error().message());
        return;
    }
    std::vector<std::uint32_t> batch;
    std::vector<PageLock> image_pages, swapped_pages;
    std::size_t batch_pages = kPrefetchBatchMin;
    auto bring_in = [&](bool swapped_too) {
        std::sort(batch.begin(), batch.end());
        batch.erase(std::unique(batch.begin(), batch.end()), batch.end());
        for (std::uint32_t page : batch) {
            auto lk = tr.try_lock(PageIdx(page));
            if (!lk) continue;
            const PageState s = lk->entry().state();
            if (s == PageState::image) image_pages.push_back(std::move(*lk));
            else if (s == PageState::swapped && swapped_too && pool != nullptr) swapped_pages.push_back(std::move(*lk));
        }
        batch.clear();
        batch_pages = std::min(batch_pages * 2, kPrefetchBatchMax);
        (void)tr.prefetch_image(image_pages, *ring);
        (void)tr.prefetch_swapped(swapped_pages, *ring);
        image_pages.clear();  // unlocks: the entries are published
        swapped_pages.clear();
    };
    auto wanted = [&](std::uint64_t page, bool swapped_too) {
        if (page >= table.pages()) return false;
        const PageState s = table.peek(PageIdx(page)).state();  // a hint; the lock decides
        return s == PageState::image || (swapped_too && s == PageState::swapped);
    };
    auto must_stop = [&] { return stopping.load(std::memory_order_relaxed) || limits.holding_at_limit(); };
    // A batch never takes the VM past its limit: at most the room left under it.
    auto batch_room = [&] { return std::min<std::size_t>(batch_pages, limits.bring_back_room()); };
    for (std::size_t at = 0; at < prefetch_order.size();) {
        if (must_stop() || batch_room() == 0) return;
        const std::size_t room = batch_room();
        while (at < prefetch_order.size() && batch.size() < room) {
            const std::uint32_t page = prefetch_order[at++];
            if (wanted(page, true)) batch.push_back(page);
        }
        bring_in(true);
    }
    if (!fill_rest) return;
    for (std::uint64_t i = 0; i < table.pages();) {
        if (must_stop() || batch_room() == 0) return;
        const std::size_t room = batch_room();
        while (i < table.pages() && batch.size() < room) {
            if (wanted(i, false)) batch.push_back(static_cast<std::uint32_t>(i));
            ++i;
        }
        bring_in(false);
    }
}

}  // namespace swapvisor::guestmem
