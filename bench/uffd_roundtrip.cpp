// uffd_roundtrip: the bare cost of one userfaultfd fault round trip, the floor under
// every swapvisor swap-in (bench/README.md#uffd). A toucher thread reads one byte of
// a registered, never-populated anonymous page; a handler thread blocked in poll()
// reads the fault event and answers UFFDIO_COPY of a 4 KiB page (with wake); the
// toucher's read then returns. Timed: from just before the touch to just after it,
// on the toucher, one fresh page per sample (no I/O, no checksum, no swapvisor code).
// Prints a table and one JSON line (prefix "JSON "): p50/p99/mean in microseconds.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr std::size_t kPage = 4096;

[[noreturn]] void die(const char* what) {
    std::perror(what);
    std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
    std::size_t samples = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 20000;
    if (samples == 0) samples = 1;
    // Kernel contract: userfaultfd(2) with UFFD_USER_MODE_ONLY handles user-mode faults
    // only, which is all the toucher makes; it needs no privilege where unprivileged
    // userfaultfd is restricted to user-mode faults.
    int uffd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
    if (uffd < 0) uffd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    if (uffd < 0) die("userfaultfd");
    uffdio_api api{};
    api.api = UFFD_API;
    if (::ioctl(uffd, UFFDIO_API, &api) < 0) die("UFFDIO_API");
    std::size_t len = samples * kPage;
    auto* area = static_cast<char*>(::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (area == MAP_FAILED) die("mmap");
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<std::uint64_t>(area);
    reg.range.len = len;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    // Kernel contract: MISSING registration makes the first touch of each page raise
    // an event that blocks the toucher until UFFDIO_COPY fills the page and wakes it.
    if (::ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) die("UFFDIO_REGISTER");

    std::atomic<bool> done{false};
    std::thread handler([&] {
        alignas(kPage) static char page[kPage];
        std::memset(page, 0x5a, sizeof page);
        pollfd pfd{uffd, POLLIN, 0};
        while (!done.load()) {
            if (::poll(&pfd, 1, 100) <= 0) continue;
            uffd_msg msg{};
            if (::read(uffd, &msg, sizeof msg) != sizeof msg) continue;
            if (msg.event != UFFD_EVENT_PAGEFAULT) continue;
            uffdio_copy copy{};
            copy.dst = msg.arg.pagefault.address & ~(kPage - 1);
            copy.src = reinterpret_cast<std::uint64_t>(page);
            copy.len = kPage;
            if (::ioctl(uffd, UFFDIO_COPY, &copy) < 0 && errno != EEXIST) die("UFFDIO_COPY");
        }
    });

    std::vector<double> us(samples);
    unsigned long sum = 0;
    for (std::size_t i = 0; i < samples; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        sum += static_cast<unsigned char>(*static_cast<volatile char*>(area + i * kPage));
        auto t1 = std::chrono::steady_clock::now();
        us[i] = std::chrono::duration<double, std::micro>(t1 - t0).count();
    }
    done.store(true);
    handler.join();
    if (sum != samples * 0x5aUL) {
        std::fprintf(stderr, "uffd_roundtrip: pages read back wrong (sum %lu)\n", sum);
        return 1;
    }
    double mean = 0;
    for (double v : us) mean += v;
    mean /= static_cast<double>(samples);
    std::sort(us.begin(), us.end());
    auto pct = [&](double p) { return us[std::min(samples - 1, static_cast<std::size_t>(p * static_cast<double>(samples)))]; };
    std::printf("%-24s %10s\n", "metric", "value");
    std::printf("%-24s %10zu\n%-24s %10.1f\n%-24s %10.1f\n%-24s %10.1f\n", "samples", samples, "roundtrip_p50_us",
                pct(0.5), "roundtrip_p99_us", pct(0.99), "roundtrip_mean_us", mean);
    std::printf("JSON {\"bench\":\"uffd_roundtrip\",\"samples\":%zu,\"roundtrip_p50_us\":%.2f,\"roundtrip_p99_us\":%.2f,"
                "\"roundtrip_mean_us\":%.2f}\n",
                samples, pct(0.5), pct(0.99), mean);
    return 0;
}
