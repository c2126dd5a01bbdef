// Remote devices: who holds one, and whether it answers (swap/README.md#ownership).
//
// A remote export (NBD) can be reached from several pools at once — another
// swapvisor on this host, or on another host — and each would overwrite the other's
// slots. So a pool that swaps on one claims it: the owner record of its swap header
// (swap_header.hpp) names the pool (a random uuid per SwapPool), its host and pid,
// and a lease end. While the device is attached a LeaseKeeper renews the lease every
// `probe_interval`; a pool that finds a live lease of another pool refuses the device
// (Errc::leased) unless told to take it over (Takeover::yes), and a lease not renewed
// for `lease` (its holder died or lost the device) has simply run out. swapoff and the
// pool's end release the lease (lease end 0).
//
// The renewal is also the device's health probe: the keeper reads the header (is the
// lease still ours?) and writes it back renewed, through a connection of its own, so
// a dead server shows `down` within one interval, not only when swap I/O fails.
//   up        the last probe read and wrote the header within `slow_probe`
//   degraded  it did, but slower than `slow_probe`
//   down      it failed (the reason says how), or another pool took the device over
// Each status change is logged once, with the device's name and the reason.
//
// Threads: claim() runs on the swapon caller's thread (unconfined: it opens the
// keeper's own connection); the keeper thread renews; status() from any thread.
#pragma once

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "io/block_device.hpp"
#include "io/result.hpp"
#include "swap/swap_header.hpp"
#include "swap/types.hpp"

namespace swapvisor::swap {

// swapon of a device another pool holds a live lease on: refuse (no), or take it
// over (yes: `--swap URI,takeover=yes`, `ctl swapon --takeover`).
enum class Takeover : bool { no, yes };

struct LeaseConfig {
    std::chrono::milliseconds lease{30000};          // how long a claim holds without renewal
    std::chrono::milliseconds probe_interval{10000};  // renewal and health probe period
    std::chrono::milliseconds slow_probe{1000};       // a probe slower than this: degraded
};

// This pool as an owner record names it.
struct PoolIdentity {
    std::array<std::uint8_t, 16> uuid{};
    std::string host;
    std::uint32_t pid = 0;
};
// A fresh random uuid, this host's name, this process.
Result<PoolIdentity> make_pool_identity();

enum class RemoteHealth : std::uint8_t { up, degraded, down };
const char* health_name(RemoteHealth health);

struct RemoteStatus {
    RemoteHealth health = RemoteHealth::up;
    std::string reason;                 // why degraded or down; empty when up
    std::uint64_t since_ms = 0;         // CLOCK_REALTIME ms of the last change of health
    std::uint64_t last_probe_ms = 0;    // of the last probe, whatever it found
    std::uint64_t lease_until_ms = 0;   // our lease's end, as last written
    std::uint64_t probes = 0;           // probes made since swapon
};

// The real-time clock in ms (what a lease end is written in: hosts compare it).
std::uint64_t realtime_ms();

class LeaseKeeper {
public:
    LeaseKeeper(PoolIdentity self, LeaseConfig config);
    ~LeaseKeeper();  // releases every lease still held, then stops the thread
    LeaseKeeper(const LeaseKeeper&) = delete;
    LeaseKeeper& operator=(const LeaseKeeper&) = delete;

    // Claim `device` (its header already checked: swapvisor, right size) for this
    // pool under `name`: refuse with Errc::leased when another pool's lease has not
    // run out and takeover is no; else write our owner record (the lease starts).
    // `probe` is a second, independent handle on the same device (its own
    // connection) that the keeper keeps for renewals; it is also what the claim
    // writes through. Returns the header as written; the caller then calls
    // attach() once the device is in the pool, or nothing (the claim is undone by
    // release_claim()).
    Result<SwapHeader> claim(const std::string& name, io::BlockDevice& probe, Takeover takeover);
    // Keep renewing the lease of a claimed device (the keeper owns `probe` now).
    void attach(DeviceId id, const std::string& name, std::unique_ptr<io::BlockDevice> probe, SwapHeader header);
    // A claim that did not end in the pool: write the lease released.
    void release_claim(io::BlockDevice& probe, SwapHeader header);
    // The device left the pool (swapoff): stop renewing, write the lease released.
    void detach(DeviceId id);
    // nullopt: not a remote device of this keeper.
    std::optional<RemoteStatus> status(DeviceId id) const;

private:
    // Probe every device (the thread, every probe_interval).
    void probe_all();
    struct Held {
        std::string name;
        std::unique_ptr<io::BlockDevice> probe;
        SwapHeader header;  // as we last wrote it
        RemoteStatus status;
        bool lost = false;  // another pool took it over: no more renewals
    };
    // One probe of one device: read the header, write it renewed (unless lost).
    // Called with probe_mutex_ held (one probe at a time per keeper), never mutex_.
    RemoteStatus probe_one(Held& held);
    void loop();

    const PoolIdentity self_;
    const LeaseConfig config_;
    // Protects: held_ (the map; each Held's status); Order: leaf, after probe_mutex_.
    mutable std::mutex mutex_;
    // Serialises probes against detach (a device's probe handle is not destroyed
    // while it is probed). Order: before mutex_.
    std::mutex probe_mutex_;
    std::condition_variable wake_;
    bool stopping_ = false;
    std::map<std::uint16_t, std::unique_ptr<Held>> held_;
    std::thread thread_;  // last: started after, joined before, everything above
};

}  // namespace swapvisor::swap
