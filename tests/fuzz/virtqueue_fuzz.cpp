// virtqueue_fuzz: a split virtqueue (vmm/devices/virtqueue.hpp) and the
// virtio-balloon's queue handling (virtio_balloon.hpp) over a real 2 MiB
// GuestMemory, with everything the guest controls taken from the input:
//
//   byte  0      queue: which balloon queue is notified (mod the queue count), or
//                with bit 7 set, a bare SplitQueue popped by this target
//   byte  1      bit 0: the driver negotiated VIRTIO_BALLOON_F_REPORTING
//   bytes 2..3   QueueNum (any value: enable() must refuse the bad ones)
//   bytes 4..27  descriptor table, available ring and used ring addresses (u64 each)
//   rest         guest bytes written at GPA 0x10000 (at most 64 KiB): descriptor
//                tables, rings and PFN buffers the addresses above may point at
//
// Properties (fuzz_check aborts on any): a queue is only ever a malformed-queue
// error (VirtioErrc), never a guest memory error, because every ring access must be
// checked before it is made; a popped chain has its head and length inside the
// queue and no readable descriptor after a writable one; every used buffer is
// published (once one is, used idx = chains consumed); the balloon refuses a bad
// range or PFN (counted) instead of asking guestmem to discard it, so
// discard_errors stays 0.
// After each input the pages it wrote are discarded: the next input starts from zero
// pages, so a crash reproduces from its input alone.
#include <cstdint>
#include <span>
#include <vector>

#include "guestmem/guest_memory.hpp"
#include "tests/fuzz/fuzz_input.hpp"
#include "tests/fuzz/fuzz_memory.hpp"
#include "vmm/devices/virtio_balloon.hpp"
#include "vmm/devices/virtqueue.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm::devices;
using swapvisor::fuzz::fuzz_check;
using swapvisor::fuzz::FuzzInput;

namespace {

constexpr std::uint64_t kGuestBytes = 2ULL << 20;
constexpr std::uint64_t kWindow = 0x10000;
constexpr std::size_t kMaxWindowBytes = 64 * 1024;
constexpr std::uint16_t kMaxQueueSize = 256;

void check_queue_error(const Error& e) {
    fuzz_check(e.code.category() == virtio_category(), "a bad queue is a VirtioErrc, not a guest memory error");
}

std::uint16_t used_idx(guestmem::GuestMemory& mem, std::uint64_t used) {
    std::uint16_t idx = 0;
    fuzz_check(mem.read(guestmem::Gpa(used + 2), std::as_writable_bytes(std::span(&idx, 1))).has_value(),
               "the used ring is readable");
    return idx;
}

// Pop chains until none is left or the queue is refused (or 64 Ki chains: rings
// that overlap can make used elements look like new available buffers); return the
// chains consumed.
std::uint16_t pop_all(SplitQueue& queue) {
    std::uint16_t consumed = 0;
    for (unsigned n = 0; n < 0x10000; ++n) {
        auto chain = queue.pop();
        if (!chain) {
            check_queue_error(chain.error());
            return consumed;
        }
        if (!*chain) return consumed;
        const DescriptorChain& c = **chain;
        fuzz_check(c.head < queue.size(), "a chain's head is inside the table");
        fuzz_check(!c.descriptors.empty() && c.descriptors.size() <= queue.size(), "1 <= chain length <= size");
        bool writable = false;
        for (const VirtqDescriptor& d : c.descriptors) {
            fuzz_check(writable <= d.device_writable, "no readable descriptor after a writable one");
            writable = d.device_writable;
        }
        fuzz_check(queue.push_used(c.head, 0).has_value(), "a used element can be written");
        ++consumed;
    }
    return consumed;
}

// Discard the pages of [gpa, gpa + len) (a range inside RAM).
void wipe(guestmem::GuestMemory& mem, std::uint64_t gpa, std::uint64_t len) {
    if (len == 0) return;
    std::uint64_t first = gpa & ~(guestmem::kPageSize - 1);
    std::uint64_t end = (gpa + len + guestmem::kPageSize - 1) & ~(guestmem::kPageSize - 1);
    fuzz_check(mem.discard(guestmem::GpaRange{guestmem::Gpa(first), end - first}).has_value(),
               "written guest pages can be wiped between inputs");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::fuzz_guest_memory(kGuestBytes);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    guestmem::GuestMemory& mem = fuzz::fuzz_guest_memory(kGuestBytes);
    FuzzInput in(data, size);
    auto which = in.take<std::uint8_t>();
    auto features = in.take<std::uint8_t>();
    auto queue_num = in.take<std::uint16_t>();
    auto desc = in.take<std::uint64_t>();
    auto avail = in.take<std::uint64_t>();
    auto used = in.take<std::uint64_t>();
    auto guest = in.rest().first(std::min(in.rest().size(), kMaxWindowBytes));
    fuzz_check(mem.write(guestmem::Gpa(kWindow), guest).has_value(), "the window is guest RAM");

    SplitQueue queue(mem, kMaxQueueSize);
    queue.reset();
    queue.set_size(queue_num);
    queue.set_desc_addr(desc);
    queue.set_driver_addr(avail);
    queue.set_device_addr(used);
    auto enabled = queue.enable();
    if (!enabled) {
        check_queue_error(enabled.error());
    } else if (which & 0x80) {
        // Until the device publishes a buffer, used idx is whatever the guest left there.
        std::uint16_t consumed = pop_all(queue);
        if (consumed != 0) fuzz_check(used_idx(mem, used) == consumed, "used idx counts the chains consumed");
        if (auto irq = queue.take_interrupt_request(); !irq) check_queue_error(irq.error());
    } else {
        VirtioBalloon balloon(mem);
        std::uint64_t negotiated = kVirtioFVersion1 | ((features & 1) ? kBalloonFReporting : 0);
        unsigned index = which % balloon.queue_count(negotiated);
        if (auto done = balloon.process_queue(index, queue, negotiated); !done) check_queue_error(done.error());
        BalloonStats stats = balloon.stats();
        fuzz_check(stats.discard_errors == 0, "the balloon only discards ranges it checked");
        if (auto irq = queue.take_interrupt_request(); !irq) check_queue_error(irq.error());
    }

    // Only the window and the used ring were written (the balloon's discards leave
    // zero pages): dropping those pages restores an all-zero guest.
    wipe(mem, kWindow, guest.size());
    if (enabled) wipe(mem, used, 6 + 8 * std::uint64_t{queue_num});
    return 0;
}
