/*
 * Ring-3 runtime of the swapvisor example guests: serial output, formatted
 * printing, the PVH command line and memory map, TSC timing and the debug exit.
 *
 * Role: everything a guest program (hello.c, memtouch.c) may call. The program
 * defines `int main(void)`; entry.S enters ring 3 (IOPL 3, interrupts off) and
 * rt_start() parses hvm_start_info, then calls main() and exit()s with its
 * return value.
 *
 * Invariants (examples/README.md):
 *  - all guest code runs in ring 3; port I/O is direct `in`/`out`, allowed by
 *    IOPL 3 or, where the host clears IOPL in ring 3, by the TSS I/O bitmap.
 *  - physical == virtual; [0, rt_mapped_limit()) is identity mapped, RW, user.
 *  - memory below rt_free_start() belongs to the runtime (image, stacks,
 *    page tables); programs must not write it.
 *  - no interrupts, and no exceptions expected: any vector ends the VM with
 *    RT_EXIT_EXCEPTION (runtime/layout.h) after a one-line report on COM1
 *    (entry.S). The BSP (CPU 0) runs main(); APs start only when the
 *    program calls rt_smp_start() and then run rt_run_workers() jobs. Output
 *    (rt_printf, rt_puts) takes a spinlock, so lines from CPUs don't mix;
 *    rt_tsc_hz() is calibrated by rt_smp_start() before any AP runs; the rest
 *    (arguments, memory map) is read-only after rt_start().
 */
#ifndef SWAPVISOR_EXAMPLES_RUNTIME_RT_H
#define SWAPVISOR_EXAMPLES_RUNTIME_RT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RT_PAGE_SIZE ((uint64_t)4096)
#define RT_MIB ((uint64_t)1 << 20)
#define RT_E820_RAM 1u

/* Port numbers of the guest interface (docs: DESIGN.md section 6). */
#define RT_PORT_COM1 0x3f8
#define RT_PORT_DEBUG_EXIT 0xf4

/* One hvm_memmap_table_entry of the PVH memory map. */
struct rt_mem_range {
  uint64_t addr;
  uint64_t size;
  uint32_t type; /* RT_E820_RAM = usable RAM */
  uint32_t reserved;
};

/* ---- port I/O (ring 3, IOPL 3) ---- */
static inline void rt_outb(uint16_t port, uint8_t v) {
  __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}
static inline void rt_outl(uint16_t port, uint32_t v) {
  __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}
static inline uint8_t rt_inb(uint16_t port) {
  uint8_t v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline uint64_t rt_rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}
static inline void rt_pause(void) { __asm__ volatile("pause"); }
static inline uint64_t rt_rflags(void) {
  uint64_t f;
  __asm__ volatile("pushfq; popq %0" : "=r"(f));
  return f;
}

/* ---- console (COM1) ---- */
void rt_putc(char c);
void rt_puts(const char* s); /* no newline appended */
int rt_printf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
int rt_vprintf(const char* fmt, va_list ap);

/* ---- command line: space-separated `key=value` words ---- */
const char* rt_cmdline(void); /* the raw command line, "" if none */
/* Value of the last `key=<n>` word (decimal or 0x-hex), else `def`. A value
 * that is not a number ends the VM with exit(2) and an error line. */
uint64_t arg_u64(const char* key, uint64_t def);
/* Value of the last `key=<s>` word, else `def`. Valid for the whole run. */
const char* arg_str(const char* key, const char* def);

/* ---- memory ---- */
size_t rt_memmap_count(void);
const struct rt_mem_range* rt_memmap(void); /* rt_memmap_count() entries */
uint64_t rt_free_start(void);   /* first byte not used by the runtime, 4K-aligned */
uint64_t rt_mapped_limit(void); /* end of the identity map */

/* ---- time ---- */
/* TSC ticks per second, measured on the first call (~20-60 ms): against PIT
 * channel 2 gated by port 0x61 as Linux does, else against PIT channel 0
 * (machines without the speaker port, e.g. QEMU microvm), else taken from the
 * hypervisor's CPUID 0x40000010 or CPUID 0x15. 0 when all of them fail. */
uint64_t rt_tsc_hz(void);
/* Which method rt_tsc_hz() used: "PIT channel 2", ..., or "none". */
const char* rt_tsc_source(void);

/* ---- SMP (smp.c, examples/README.md#smp) ---- */
/* Starts the APs once and returns the number of CPUs online (BSP included).
 * APIC ids 1, 2, ... are started one at a time through the local APIC; ids
 * below `want` get 5 s to arrive, later ones 200 ms, and the first missing one
 * ends the probe. `cpus=N` on the command line caps it (at most RT_MAX_CPUS).
 * Idle APs spin in ring 3 (no hlt there), so start them only when needed. */
unsigned rt_smp_start(unsigned want);
unsigned rt_cpu_count(void); /* 1 before rt_smp_start() */
typedef void (*rt_worker_fn)(unsigned cpu, void* arg);
/* Runs fn(cpu, arg) on CPUs 0..n-1 (the caller is CPU 0) and returns when all
 * finished. n > rt_cpu_count() ends the VM with exit(2). */
void rt_run_workers(unsigned n, rt_worker_fn fn, void* arg);
/* A reusable barrier for n workers. */
struct rt_barrier {
  uint32_t count;
  uint32_t generation;
  uint32_t n;
};
void rt_barrier_init(struct rt_barrier* b, unsigned n);
void rt_barrier_wait(struct rt_barrier* b);
/* Runtime-internal: reserves the AP blocks after `free_start`, returns the new
 * free start. */
uint64_t rt_smp_reserve(uint64_t free_start);

/* ---- exit: a 32-bit write of `code` to the debug-exit port ---- */
__attribute__((noreturn)) void exit(int code);

/* ---- freestanding string helpers (also what gcc may call) ---- */
void* memset(void* dst, int c, size_t n);
void* memcpy(void* dst, const void* src, size_t n);
void* memmove(void* dst, const void* src, size_t n);
int memcmp(const void* a, const void* b, size_t n);
size_t strlen(const char* s);
int strcmp(const char* a, const char* b);

/* Defined by the guest program. */
int main(void);

#endif
