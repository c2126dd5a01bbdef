// recognise_data / find_data (data_probe.hpp, swap/README.md#erase). libblkid probes
// a memfd copy of the bytes read, so a remote (NBD) device is judged exactly like a
// local one and the probe never opens the device a second time.
#include "swap/data_probe.hpp"

#include <blkid/blkid.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include <fmt/format.h>

#include "io/ring.hpp"
#include "io/unique_fd.hpp"
#include "swap/swap_header.hpp"
#include "swap/types.hpp"

namespace swapvisor::swap {

namespace {

// The kernel's swap signature: the last 10 bytes of the first page (mkswap(8),
// include/linux/swap.h `union swap_header`), for either of its two versions.
bool kernel_swap_signature(std::span<const std::byte> head, std::size_t page) {
    if (head.size() < page) return false;
    const char* end = reinterpret_cast<const char*>(head.data()) + page - 10;
    return std::memcmp(end, "SWAPSPACE2", 10) == 0 || std::memcmp(end, "SWAP-SPACE", 10) == 0;
}

struct ProbeFree {
    void operator()(blkid_probe p) const { blkid_free_probe(p); }
};

std::string value_of(blkid_probe probe, const char* name) {
    const char* value = nullptr;
    if (blkid_probe_lookup_value(probe, name, &value, nullptr) != 0 || value == nullptr) return {};
    return value;
}

// libblkid's verdict on the bytes, or "" if it recognises nothing.
std::string blkid_verdict(std::span<const std::byte> head) {
    // Kernel contract: memfd_create gives an anonymous file that libblkid can read
    // like a device of head.size() bytes; it goes away with the fd.
    io::UniqueFd fd(::memfd_create("swapvisor-probe", MFD_CLOEXEC));
    if (!fd.valid()) return {};
    if (::write(fd.get(), head.data(), head.size()) != static_cast<ssize_t>(head.size())) return {};
    std::unique_ptr<blkid_struct_probe, ProbeFree> probe(blkid_new_probe());
    if (!probe || blkid_probe_set_device(probe.get(), fd.get(), 0, static_cast<blkid_loff_t>(head.size())) != 0) return {};
    blkid_probe_enable_superblocks(probe.get(), 1);
    blkid_probe_set_superblocks_flags(probe.get(), BLKID_SUBLKS_TYPE | BLKID_SUBLKS_USAGE | BLKID_SUBLKS_LABEL | BLKID_SUBLKS_UUID);
    blkid_probe_enable_partitions(probe.get(), 1);
    blkid_probe_set_partitions_flags(probe.get(), BLKID_PARTS_ENTRY_DETAILS);
    // safeprobe: 0 one result, 1 nothing, -2 several signatures that contradict
    // each other (still data), -1 error (then the non-zero check decides).
    const int r = blkid_do_safeprobe(probe.get());
    if (r == -2) return "more than one file-system or partition-table signature (libblkid: ambivalent)";
    if (r != 0) return {};
    std::string type = value_of(probe.get(), "TYPE");
    std::string pttype = value_of(probe.get(), "PTTYPE");
    std::string usage = value_of(probe.get(), "USAGE");
    if (type.empty() && !pttype.empty()) return fmt::format("a partition table (PTTYPE {})", pttype);
    if (type.empty()) return {};
    std::string what = usage == "filesystem" ? "a file system" : usage.empty() ? "a signature" : "a " + usage + " signature";
    what += fmt::format(" (TYPE {}", type);
    if (std::string label = value_of(probe.get(), "LABEL"); !label.empty()) what += fmt::format(", LABEL \"{}\"", label);
    if (std::string uuid = value_of(probe.get(), "UUID"); !uuid.empty()) what += fmt::format(", UUID {}", uuid);
    what += ")";
    return what;
}

}  // namespace

std::optional<std::string> recognise_data(std::span<const std::byte> head) {
    auto nonzero = std::find_if(head.begin(), head.end(), [](std::byte b) { return b != std::byte{0}; });
    if (nonzero == head.end()) return std::nullopt;
    if (head.size() >= kHeaderBytes) {
        auto header = decode_header(head.first(kHeaderBytes));
        if (!header) return "a damaged swapvisor swap header";
        if (header->has_value())
            return fmt::format("a swapvisor swap header (UUID {}, {} slots): it is a swap device already, perhaps "
                               "another pool's",
                               uuid_text((*header)->uuid), (*header)->slot_count);
    }
    if (kernel_swap_signature(head, 4096)) return "a Linux swap area made by mkswap(8) (signature SWAPSPACE2)";
    if (std::string what = blkid_verdict(head); !what.empty()) return what;
    return fmt::format("non-zero bytes in its first {} KiB (the first at byte {}), of no format libblkid knows",
                       head.size() / 1024, nonzero - head.begin());
}

Result<std::optional<std::string>> find_data(io::BlockDevice& device) {
    const std::uint64_t block = std::max<std::uint64_t>(device.logical_block_size(), 1);
    const std::uint64_t len = std::min(kProbeBytes, device.size_bytes()) / block * block;
    if (len == 0) return std::optional<std::string>{};
    auto buffer = SWV_TRY(io::Mapping::anonymous(len));
    auto ring = SWV_TRY(io::Ring::create(2));
    io::BlockIo op{io::IoKind::read, io::DevOffset(0), buffer.span(), 0};
    SWV_TRY(device.submit(ring, std::span(&op, 1)));
    SWV_TRY(io::io_status(op, "read the device's first MiB"));
    return recognise_data(buffer.span());
}

Result<void> check_erasable(io::BlockDevice& device, Erase erase) {
    if (erase == Erase::anything) return {};
    std::optional<std::string> found = SWV_TRY(find_data(device));
    if (found) return make_error(Errc::holds_data, "format", "it holds " + *found);
    return {};
}

}  // namespace swapvisor::swap
