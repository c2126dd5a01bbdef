// LeaseKeeper: see remote_lease.hpp.
#include "swap/remote_lease.hpp"

#include <unistd.h>

#include <ctime>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace swapvisor::swap {

namespace {

// "2026-12-06T10:00:00Z (in 25 s)" for a lease end.
std::string when(std::uint64_t at_ms, std::uint64_t now_ms) {
    std::time_t secs = static_cast<std::time_t>(at_ms / 1000);
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    char text[32];
    std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (at_ms <= now_ms) return fmt::format("{} (over)", text);
    return fmt::format("{} (in {} s)", text, (at_ms - now_ms + 999) / 1000);
}

std::string holder(const OwnerRecord& o) {
    return fmt::format("pool {} on host {} (pid {})", uuid_text(o.pool), o.host.empty() ? "?" : o.host, o.pid);
}

}  // namespace

std::uint64_t realtime_ms() {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
}

Result<PoolIdentity> make_pool_identity() {
    PoolIdentity id;
    id.uuid = SWV_TRY(with_context(random_uuid(), "swap pool"));
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) == 0) id.host = host;
    id.pid = static_cast<std::uint32_t>(::getpid());
    return id;
}

const char* health_name(RemoteHealth health) {
    switch (health) {
        case RemoteHealth::up: return "up";
        case RemoteHealth::degraded: return "degraded";
        case RemoteHealth::down: return "down";
    }
    return "down";
}

LeaseKeeper::LeaseKeeper(PoolIdentity self, LeaseConfig config)
    : self_(std::move(self)), config_(config), thread_([this] { loop(); }) {}

LeaseKeeper::~LeaseKeeper() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
    std::vector<std::uint16_t> ids;
    {
        std::lock_guard lock(mutex_);
        for (const auto& [id, held] : held_) ids.push_back(id);
    }
    for (std::uint16_t id : ids) detach(DeviceId(id));
}

Result<SwapHeader> LeaseKeeper::claim(const std::string& name, io::BlockDevice& probe, Takeover takeover) {
    auto read = SWV_TRY(read_header(probe));
    if (!read) return make_error(Errc::no_signature, "swapon: claiming a remote device", name);
    SwapHeader header = *read;
    const std::uint64_t now = realtime_ms();
    if (header.owner && header.owner->pool != self_.uuid && header.owner->lease_until_ms != 0) {
        const OwnerRecord& o = *header.owner;
        const bool live = o.lease_until_ms > now;
        if (live && takeover == Takeover::no)
            return make_error(Errc::leased, "swapon",
                              fmt::format("{}: held by {}, lease until {}", name, holder(o), when(o.lease_until_ms, now)));
        spdlog::warn("swap device {}: taking it over from {} ({})", name, holder(o),
                     live ? "its lease still ran: takeover asked" : "its lease had run out");
    }
    header.owner = OwnerRecord{.pool = self_.uuid,
                               .lease_until_ms = now + static_cast<std::uint64_t>(config_.lease.count()),
                               .pid = self_.pid,
                               .host = self_.host};
    SWV_TRY(with_context(write_header(probe, header), name));
    return header;
}

void LeaseKeeper::attach(DeviceId id, const std::string& name, std::unique_ptr<io::BlockDevice> probe,
                         SwapHeader header) {
    auto held = std::make_unique<Held>();
    held->name = name;
    held->probe = std::move(probe);
    const std::uint64_t now = realtime_ms();
    held->status = RemoteStatus{.since_ms = now, .last_probe_ms = now,
                                .lease_until_ms = header.owner ? header.owner->lease_until_ms : 0};
    held->header = std::move(header);
    std::lock_guard lock(mutex_);
    held_[id.value()] = std::move(held);
}

void LeaseKeeper::release_claim(io::BlockDevice& probe, SwapHeader header) {
    if (!header.owner) return;
    header.owner->lease_until_ms = 0;
    if (auto r = write_header(probe, header); !r)
        spdlog::warn("swap device {}: could not release its lease: {} (it runs out by itself)", probe.path(),
                     r.error().message());
}

void LeaseKeeper::detach(DeviceId id) {
    std::unique_ptr<Held> held;
    {
        std::lock_guard probing(probe_mutex_);  // not while it is being probed
        std::lock_guard lock(mutex_);
        auto it = held_.find(id.value());
        if (it == held_.end()) return;
        held = std::move(it->second);
        held_.erase(it);
    }
    if (!held->lost) release_claim(*held->probe, held->header);
}

std::optional<RemoteStatus> LeaseKeeper::status(DeviceId id) const {
    std::lock_guard lock(mutex_);
    auto it = held_.find(id.value());
    if (it == held_.end()) return std::nullopt;
    return it->second->status;
}

RemoteStatus LeaseKeeper::probe_one(Held& held) {
    RemoteStatus s = held.status;
    const std::uint64_t now = realtime_ms();
    s.last_probe_ms = now;
    ++s.probes;
    auto down = [&](std::string why) {
        if (s.health != RemoteHealth::down) s.since_ms = now;
        s.health = RemoteHealth::down;
        s.reason = std::move(why);
        return s;
    };
    if (held.lost) return s;
    const auto start = std::chrono::steady_clock::now();
    auto read = read_header(*held.probe);
    if (!read) return down(fmt::format("cannot read its swap header: {}", read.error().message()));
    if (!*read) return down("its swap header is gone (overwritten by something else)");
    const SwapHeader& seen = **read;
    if (seen.uuid != held.header.uuid) return down("its swap header was replaced (another mkswap or format)");
    if (!seen.owner || seen.owner->pool != self_.uuid) {
        held.lost = true;
        return down(seen.owner ? fmt::format("taken over by {}", holder(*seen.owner))
                               : std::string("its owner record was cleared by someone else"));
    }
    SwapHeader renewed = held.header;
    renewed.owner->lease_until_ms = now + static_cast<std::uint64_t>(config_.lease.count());
    if (auto w = write_header(*held.probe, renewed); !w)
        return down(fmt::format("cannot renew its lease: {}", w.error().message()));
    held.header = renewed;
    s.lease_until_ms = renewed.owner->lease_until_ms;
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    const RemoteHealth now_health = took > config_.slow_probe ? RemoteHealth::degraded : RemoteHealth::up;
    if (now_health != s.health) s.since_ms = now;
    s.health = now_health;
    s.reason = now_health == RemoteHealth::degraded ? fmt::format("a header read and write took {} ms", took.count())
                                                    : std::string();
    return s;
}

void LeaseKeeper::probe_all() {
    std::lock_guard probing(probe_mutex_);
    std::vector<std::pair<std::uint16_t, Held*>> work;
    {
        std::lock_guard lock(mutex_);
        for (auto& [id, held] : held_) work.emplace_back(id, held.get());
    }
    for (auto& [id, held] : work) {
        RemoteStatus s = probe_one(*held);
        std::lock_guard lock(mutex_);
        const RemoteStatus before = held->status;
        held->status = s;
        if (s.health != before.health) {
            if (s.health == RemoteHealth::up)
                spdlog::info("swap device {}: remote health {} -> up", held->name, health_name(before.health));
            else
                spdlog::warn("swap device {}: remote health {} -> {}: {}", held->name, health_name(before.health),
                             health_name(s.health), s.reason);
        }
    }
}

void LeaseKeeper::loop() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
        wake_.wait_for(lock, config_.probe_interval, [this] { return stopping_; });
        if (stopping_) break;
        lock.unlock();
        probe_all();
        lock.lock();
    }
}

}  // namespace swapvisor::swap
