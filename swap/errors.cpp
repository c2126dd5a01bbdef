// The swap layer's error category: messages for swap::Errc.
#include "swap/types.hpp"

namespace swapvisor::swap {

namespace {
class SwapCategory final : public std::error_category {
public:
    const char* name() const noexcept override { return "swap"; }
    std::string message(int e) const override {
        switch (static_cast<Errc>(e)) {
            case Errc::no_space: return "no swap device has a free slot";
            case Errc::checksum_mismatch: return "swap slot checksum mismatch";
            case Errc::no_such_device: return "no such swap device";
            case Errc::device_busy: return "swapoff of this device already running";
            case Errc::would_not_fit: return "pages would not fit on other devices or in memory";
            case Errc::stale_slot: return "virtual swap slot not allocated";
            case Errc::io_failed: return "swap I/O failed";
            case Errc::exists: return "already a swap device";
            case Errc::no_signature:
                return "no swapvisor swap signature: refusing to overwrite what may be someone's data (prepare a "
                       "file or block device with 'swapvisor mkswap PATH'; for an NBD export, or to erase any "
                       "device, add format=yes, or --format to ctl swapon)";
            case Errc::bad_header:
                return "swapvisor swap header is corrupt, of another version, or does not match the device's size "
                       "(re-create it, losing its contents: 'swapvisor mkswap PATH' for a file or block device, "
                       "format=yes for an NBD export)";
            case Errc::size_mismatch: return "the size given disagrees with the size of the existing device";
            case Errc::unreadable_slots:
                return "some swapped pages cannot be read back (I/O error or checksum mismatch); nothing was lost, "
                       "the device stays in the pool (swapoff with force takes it out, and those pages are lost)";
            case Errc::holds_data:
                return "refusing to erase it (swap/README.md#erase); if that data may go, force it: 'swapvisor "
                       "mkswap --force PATH', '--swap PATH,format=force' or 'swapvisor ctl swapon --format --force "
                       "PATH'";
            case Errc::leased:
                return "another swap pool (another swapvisor, here or on another host) holds this device and keeps "
                       "renewing its lease; swapping on it too would overwrite its slots. Remove it there, or, once "
                       "that pool is gone for good, take it over: '--swap URI,takeover=yes' or 'swapvisor ctl swapon "
                       "--takeover URI' (swap/README.md#ownership)";
            case Errc::rejected: return "the memory tier refused the page (it does not compress, or the tier is full)";
            case Errc::held_slot:
                return "a slot a snapshot holds cannot be moved or reserved (swap/README.md#held-vslots)";
        }
        return "unknown swap error";
    }
};
}  // namespace

const std::error_category& swap_category() {
    static const SwapCategory category;
    return category;
}

}  // namespace swapvisor::swap
