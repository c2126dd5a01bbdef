// Helpers shared by the benchmark programs in bench/: command-line flags, the
// "is this a real disk" check, free-space check, latency percentiles, a monotonic
// clock, and a tiny JSON object writer for the one machine-readable line each bench
// prints. Benchmarks are plain programs (not Google Benchmark): each measures a
// distribution or a single long operation on state it builds itself, which does not
// fit Benchmark's "repeat a closure until stable" model (bench/README.md).
#pragma once

#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace swapvisor::bench {

// --name value / --name=value flags; anything else is an error.
class Flags {
public:
    Flags(int argc, char** argv) {
        for (int i = 1; i < argc; ++i) {
            std::string a = argv[i];
            if (a == "-h" || a == "--help") {
                help_ = true;
                continue;
            }
            if (a.rfind("--", 0) != 0) {
                bad_ = a;
                continue;
            }
            a = a.substr(2);
            if (auto eq = a.find('='); eq != std::string::npos) {
                values_[a.substr(0, eq)] = a.substr(eq + 1);
            } else if (i + 1 < argc) {
                values_[a] = argv[++i];
            } else {
                bad_ = "--" + a;
            }
        }
    }
    std::string str(const std::string& name, std::string def) {
        known_.push_back(name);
        auto it = values_.find(name);
        return it == values_.end() ? def : it->second;
    }
    std::uint64_t u64(const std::string& name, std::uint64_t def) {
        std::string v = str(name, "");
        if (v.empty()) return def;
        char* end = nullptr;
        std::uint64_t x = std::strtoull(v.c_str(), &end, 0);
        if (*end != '\0') bad_ = "--" + name + " " + v;
        return x;
    }
    // After every flag was read: unknown flags or --help print usage; returns false.
    bool ok(const char* usage) {
        for (auto& [k, v] : values_)
            if (std::find(known_.begin(), known_.end(), k) == known_.end()) bad_ = "--" + k;
        if (help_ || !bad_.empty()) {
            if (!bad_.empty()) std::fprintf(stderr, "bad argument: %s\n", bad_.c_str());
            std::fprintf(stderr, "%s", usage);
            return false;
        }
        return true;
    }

private:
    std::map<std::string, std::string> values_;
    std::vector<std::string> known_;
    std::string bad_;
    bool help_ = false;
};

inline constexpr long kTmpfsMagic = 0x01021994;
inline constexpr long kRamfsMagic = 0x858458f6;

// A per-run work directory under `dir`, removed with everything in it at scope exit.
class ScratchDir {
public:
    ScratchDir(const std::filesystem::path& dir, const std::string& prefix)
        : path_(dir / (prefix + std::to_string(::getpid()))) {
        std::filesystem::create_directories(path_);
    }
    ~ScratchDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    ScratchDir(const ScratchDir&) = delete;
    ScratchDir& operator=(const ScratchDir&) = delete;
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

// Swap numbers on tmpfs measure memcpy, not a disk: refuse. Prints why.
inline bool on_real_disk(const std::filesystem::path& dir) {
    struct statfs sfs {};
    // Kernel contract: statfs fills f_type with the filesystem magic of the mount.
    if (::statfs(dir.c_str(), &sfs) != 0) {
        std::fprintf(stderr, "statfs %s: %s\n", dir.c_str(), std::strerror(errno));
        return false;
    }
    if (sfs.f_type == kTmpfsMagic || sfs.f_type == kRamfsMagic) {
        std::fprintf(stderr, "%s is on tmpfs/ramfs: swap benchmarks need a real disk (use --dir)\n", dir.c_str());
        return false;
    }
    return true;
}

inline std::uint64_t free_bytes(const std::filesystem::path& dir) {
    struct statvfs v {};
    // Kernel contract: statvfs reports f_bavail blocks of f_frsize bytes for non-root use.
    if (::statvfs(dir.c_str(), &v) != 0) return 0;
    return std::uint64_t{v.f_bavail} * v.f_frsize;
}

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}
inline std::uint64_t now_ns() {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
}

// Nearest-rank percentile of a sample (sorted in place on first use).
class Percentiles {
public:
    explicit Percentiles(std::vector<double> v) : v_(std::move(v)) { std::sort(v_.begin(), v_.end()); }
    double at(double p) const {
        if (v_.empty()) return 0;
        auto rank = static_cast<std::size_t>(p / 100.0 * static_cast<double>(v_.size()) + 0.999999);
        rank = std::clamp<std::size_t>(rank, 1, v_.size());
        return v_[rank - 1];
    }
    double max() const { return v_.empty() ? 0 : v_.back(); }
    double mean() const {
        double s = 0;
        for (double x : v_) s += x;
        return v_.empty() ? 0 : s / static_cast<double>(v_.size());
    }
    std::size_t count() const { return v_.size(); }

private:
    std::vector<double> v_;
};

// Flat JSON object, keys in insertion order.
class JsonLine {
public:
    JsonLine& num(const std::string& k, double v) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.6g", v);
        return raw(k, buf);
    }
    JsonLine& integer(const std::string& k, std::uint64_t v) { return raw(k, std::to_string(v)); }
    JsonLine& str(const std::string& k, const std::string& v) {
        std::string q = "\"";
        for (char c : v) {
            if (c == '"' || c == '\\') q += '\\';
            q += c;
        }
        return raw(k, q + "\"");
    }
    JsonLine& raw(const std::string& k, const std::string& v) {
        // Appended piece by piece: g++ 12 at -O2/-O3 reports a false -Wrestrict on
        // `"literal" + std::string&&` (its insert-at-0 path), which a Release build
        // with -Werror turned into an error.
        if (!body_.empty()) body_ += ',';
        body_ += '"';
        body_ += k;
        body_ += "\":";
        body_ += v;
        return *this;
    }
    std::string text() const { return "{" + body_ + "}"; }

private:
    std::string body_;
};

}  // namespace swapvisor::bench
