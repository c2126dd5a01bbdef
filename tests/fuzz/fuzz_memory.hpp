// One real guestmem::GuestMemory per fuzz process (memfd + userfaultfd, as the VMM
// builds it), for targets whose code under test reads or writes guest memory. It is
// made once, on first use, because making one per input would cost more than the
// input itself; targets leave it as they found it (see each target). Call it first
// from LLVMFuzzerInitialize: it needs userfaultfd (root or
// vm.unprivileged_userfaultfd=1), and without it the process exits with status 77
// (scripts/fuzz.sh: a loud skip) before any input runs, since a fuzz run that cannot
// reach its code proves nothing. (Exiting inside LLVMFuzzerTestOneInput would be
// reported as a crash.)
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "guestmem/guest_memory.hpp"

namespace swapvisor::fuzz {

inline guestmem::GuestMemory& fuzz_guest_memory(std::uint64_t bytes) {
    static std::unique_ptr<guestmem::GuestMemory> mem = [bytes] {
        auto made = guestmem::create_guest_memory(guestmem::MemoryConfig{.name = "fuzz", .memory_bytes = bytes}, 1,
                                                  nullptr, nullptr);
        if (!made) {
            std::fprintf(stderr, "fuzz: cannot create guest memory (userfaultfd needed): %s\n",
                         made.error().message().c_str());
            std::exit(77);
        }
        return std::move(*made);
    }();
    return *mem;
}

}  // namespace swapvisor::fuzz
