// setup_logging: see logging.hpp. The `<N>` prefix is a custom spdlog pattern flag
// so the level-to-priority mapping lives in one place (kPriorities).
#include "vmm/logging.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <spdlog/cfg/env.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace swapvisor::vmm {

namespace {

// syslog(3) priorities by spdlog level: trace, debug, info, warn, error, critical, off.
constexpr char kPriorities[] = {'7', '7', '6', '4', '3', '2', '6'};

class JournalPriority final : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
        auto level = static_cast<std::size_t>(msg.level);
        const char prefix[3] = {'<', level < sizeof kPriorities ? kPriorities[level] : '6', '>'};
        dest.append(prefix, prefix + 3);
    }
    std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<JournalPriority>(); }
};

}  // namespace

bool stderr_is_journal() {
    const char* stream = std::getenv("JOURNAL_STREAM");
    if (stream == nullptr) return false;
    unsigned long long dev = 0, ino = 0;
    if (std::sscanf(stream, "%llu:%llu", &dev, &ino) != 2) return false;
    struct stat st {};
    // Kernel contract: fstat on fd 2 names the pipe or socket stderr is; systemd sets
    // JOURNAL_STREAM to the journal stream's "dev:ino", so a match means stderr was
    // not redirected since.
    if (fstat(STDERR_FILENO, &st) != 0) return false;
    return st.st_dev == dev && st.st_ino == ino;
}

void setup_logging() {
    auto logger = spdlog::stderr_color_mt("swapvisor");
    if (stderr_is_journal()) {
        auto formatter = std::make_unique<spdlog::pattern_formatter>();
        formatter->add_flag<JournalPriority>('*').set_pattern("%*%l: %v");
        logger->set_formatter(std::move(formatter));
    } else {
        logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z swapvisor: %^%l%$: %v");
    }
    spdlog::set_default_logger(logger);
    spdlog::cfg::load_env_levels();
}

}  // namespace swapvisor::vmm
