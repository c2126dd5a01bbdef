/* memhog: the workload of bench/kernel_swapoff_peer.sh. Allocates SIZE_MIB of
 * private anonymous memory, writes non-zero, page-distinct data to every page (so
 * neither zero-page detection nor same-page merging can skip a write), prints
 * "filled", then sleeps. On SIGUSR1 it re-reads every page, checks it, and prints
 * "verified errors=N"; SIGTERM ends it. The kernel swaps its pages out when the
 * script puts it in a small memory cgroup.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t verify_requested;

static void on_usr1(int sig) {
  (void)sig;
  verify_requested = 1;
}

static uint64_t pattern(uint64_t page, uint64_t word) {
  uint64_t x = page * 0x9E3779B97F4A7C15ULL ^ (word << 17);
  x ^= x >> 31;
  return x | 1;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: memhog SIZE_MIB\n");
    return 2;
  }
  uint64_t mib = strtoull(argv[1], NULL, 0);
  uint64_t pages = mib * 256;
  size_t len = (size_t)(mib << 20);
  /* Kernel contract: MAP_PRIVATE|MAP_ANONYMOUS memory is swap-backed. */
  uint64_t* mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  signal(SIGUSR1, on_usr1);
  for (uint64_t p = 0; p < pages; ++p)
    for (uint64_t w = 0; w < 512; ++w) mem[p * 512 + w] = pattern(p, w);
  printf("filled %llu pages\n", (unsigned long long)pages);
  fflush(stdout);
  for (;;) {
    if (verify_requested) {
      verify_requested = 0;
      uint64_t errors = 0;
      for (uint64_t p = 0; p < pages; ++p)
        for (uint64_t w = 0; w < 512; w += 61)
          if (mem[p * 512 + w] != pattern(p, w)) {
            ++errors;
            break;
          }
      printf("verified errors=%llu\n", (unsigned long long)errors);
      fflush(stdout);
    }
    pause();
  }
}
