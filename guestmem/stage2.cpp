// Stage2: see stage2.hpp.
#include "guestmem/stage2.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <optional>

namespace swapvisor::guestmem {

const char* to_string(PageState s) {
    switch (s) {
        case PageState::zero: return "zero";
        case PageState::resident: return "resident";
        case PageState::inactive: return "inactive";
        case PageState::writeback: return "writeback";
        case PageState::swapped: return "swapped";
        case PageState::reading: return "reading";
        case PageState::lost: return "lost";
        case PageState::image: return "image";
    }
    return "?";
}

Result<Stage2> Stage2::create(std::uint64_t pages) {
    if (pages == 0) return errno_error("stage-2 table", EINVAL);
    const std::size_t bytes = pages * bytes_per_page();
    // Kernel contract: a private anonymous MAP_NORESERVE mapping reads as zeros (the
    // `zero` state) and is backed page by page on first write, without charging the
    // whole size against the overcommit limit.
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return errno_error("mmap stage-2 table");
    return Stage2(io::Mapping(p, bytes), pages);
}

Result<io::UniqueFd> Stage2::make_image(std::uint64_t pages, const std::function<void(std::uint64_t*)>& fill) {
    if (pages == 0) return errno_error("stage-2 table image", EINVAL);
    const std::size_t bytes = pages * bytes_per_page();
    io::UniqueFd fd(::memfd_create("swv-stage2-image", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd.valid()) return errno_error("memfd_create stage-2 table image");
    if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) return errno_error("ftruncate stage-2 table image");
    {
        auto map = SWV_TRY(io::Mapping::shared(fd.get(), bytes));
        fill(reinterpret_cast<std::uint64_t*>(map.data()));
    }
    // Kernel contract: with F_SEAL_WRITE (no writable shared mapping left: ours is
    // gone) nobody can change the file, so a private mapping of it shows exactly these
    // entries in every page it has not written itself.
    if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
        return errno_error("seal stage-2 table image");
    return fd;
}

Result<Stage2> Stage2::map_image(const io::UniqueFd& image, std::uint64_t pages) {
    if (pages == 0) return errno_error("stage-2 table", EINVAL);
    const std::size_t bytes = pages * bytes_per_page();
    // Kernel contract: a private file mapping reads the file's pages until one is
    // written, then that page becomes an anonymous copy of its own (copy on write);
    // MAP_NORESERVE: no charge for copies not made yet.
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, image.get(), 0);
    if (p == MAP_FAILED) return errno_error("mmap stage-2 table image");
    return Stage2(io::Mapping(p, bytes), pages);
}

std::optional<PageEntry> Stage2::try_lock(PageIdx idx) {
    auto& e = at(idx);
    std::uint64_t cur = e.load(std::memory_order_relaxed);
    while (!(cur & PageEntry::kLock)) {
        // acquire pairs with the release exchange in unlock(): we see the previous owner's writes.
        if (e.compare_exchange_weak(cur, cur | PageEntry::kLock, std::memory_order_acquire, std::memory_order_relaxed))
            return PageEntry(cur);
    }
    return std::nullopt;
}

PageEntry Stage2::lock(PageIdx idx) {
    auto& e = at(idx);
    for (;;) {
        if (auto v = try_lock(idx)) return *v;
        std::uint64_t cur = e.load(std::memory_order_relaxed);
        if (!(cur & PageEntry::kLock)) continue;
        // Tell the owner someone sleeps here (its unlock() wakes only then); a change
        // meanwhile (unlocked, republished, another waiter's bit) is looked at again.
        if (!(cur & PageEntry::kWaiters) &&
            !e.compare_exchange_strong(cur, cur | PageEntry::kWaiters, std::memory_order_relaxed))
            continue;
        e.wait(cur | PageEntry::kWaiters, std::memory_order_relaxed);
    }
}

void Stage2::publish_locked(PageIdx idx, PageEntry value) {
    auto& e = at(idx);
    std::uint64_t cur = e.load(std::memory_order_relaxed);
    const std::uint64_t next = (value.raw() & ~PageEntry::kWaiters) | PageEntry::kLock;
    // release: observers that peek() the new value see what the owner wrote before it.
    while (!e.compare_exchange_weak(cur, next | (cur & PageEntry::kWaiters), std::memory_order_release,
                                    std::memory_order_relaxed)) {
    }
}

void Stage2::unlock(PageIdx idx, PageEntry value) {
    auto& e = at(idx);
    // release pairs with the acquire CAS in try_lock(). The waiter bit goes with the
    // lock; whoever set it sleeps (or is about to, on the value it set) and is woken.
    const std::uint64_t old =
        e.exchange(value.raw() & ~(PageEntry::kLock | PageEntry::kWaiters), std::memory_order_release);
    if (old & PageEntry::kWaiters) e.notify_all();
}

}  // namespace swapvisor::guestmem
