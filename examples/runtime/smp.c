/*
 * SMP for the example guests: start the application processors (APs) through
 * the local APIC and run one worker per CPU in ring 3 (see rt.h and
 * examples/README.md#smp).
 *
 * Role: everything except the few ring-0 instructions (entry.S: the real-mode
 * trampoline and ap_long_entry) runs here, in ring 3 on the BSP, where stores
 * are native: building each AP's GDT, TSS with its I/O bitmap, IRETQ frame and
 * stack, copying the trampoline below 1 MiB and sending INIT-SIPI-SIPI through
 * the xAPIC registers at 0xfee00000 (memory-mapped, reachable from ring 3 as
 * all memory is: the identity map is U/S=1 and KVM's in-kernel LAPIC emulates
 * the access whatever the CPL).
 *
 * How many CPUs: hvm_start_info carries no CPU count and the guests have no
 * ACPI, so APs are probed: APIC ids 1, 2, ... are started one at a time, each
 * with a timeout, and the first that does not arrive ends the probe. A VMM's
 * APIC ids are its vCPU indices (swapvisor: KVM_CREATE_VCPU id; QEMU -smp:
 * 0..N-1 for one socket). `cpus=N` on the command line caps the probe.
 *
 * Invariants:
 *  - APs start one at a time: the trampoline page holds the fields of one AP,
 *    and the BSP waits for that AP to reach ring 3 (it has then read them)
 *    before it rewrites them for the next.
 *  - each AP owns a block of RT_AP_BLOCK bytes reserved by rt_start() below
 *    rt_free_start(); programs never write there.
 *  - the mailbox of a block is written by the BSP (go, fn, arg) and by its AP
 *    (alive, done) only; release/acquire pairs are named where they are used.
 */
#include "layout.h"
#include "rt.h"

#define APIC_BASE 0xfee00000ull
#define APIC_ID 0x20
#define APIC_SVR 0xf0
#define APIC_ICR_LOW 0x300
#define APIC_ICR_HIGH 0x310
#define APIC_SVR_ENABLE 0x100
#define ICR_INIT 0x00004500u    /* delivery INIT, level assert */
#define ICR_STARTUP 0x00004600u /* delivery start-up; low byte = vector */
#define ICR_BUSY 0x1000u

#define SEL_TSS_INDEX 5   /* GDT slot 0x28 (entry.S) */
#define GDT_SLOTS 7
#define TSS_SIZE 104
#define IOBITMAP_BYTES (65536 / 8)

/*
 * One AP's block (RT_AP_BLOCK bytes, 4 KiB aligned):
 *   +0       struct ap_block (GDT, IRETQ frame, mailbox)
 *   +4 KiB   TSS (104 B) + I/O bitmap (8 KiB, all ports allowed) + 0xff
 *   +12 KiB  ring-0 stack of the exception handlers (entry.S), top at +16 KiB
 *   +16 KiB  ring-3 stack, 64 KiB, top at the end of the block
 */
#define RT_AP_BLOCK (80 * 1024)
#define TSS_OFFSET 4096
#define STACK_TOP_OFFSET RT_AP_BLOCK
#define KSTACK_TOP_OFFSET (16 * 1024) /* above the TSS's I/O bitmap, which ends at ~12.1 KiB */
_Static_assert(TSS_OFFSET + TSS_SIZE + IOBITMAP_BYTES + 1 + 1024 <= KSTACK_TOP_OFFSET,
               "the exception handlers' stack needs 1 KiB above the I/O bitmap");

struct ap_block {
  uint64_t gdt[GDT_SLOTS];
  uint64_t frame[5]; /* RIP, CS, RFLAGS, RSP, SS */
  unsigned id;
  uint32_t alive;    /* AP: 1 once in ring 3 (release; BSP acquires) */
  uint64_t go;       /* BSP: generation of the job in fn/arg (release) */
  uint64_t done;     /* AP: last generation finished (release) */
  rt_worker_fn fn;
  void* arg;
};

extern char rt_ap_tramp_start[], rt_ap_tramp_end[], rt_ap_tramp_gdtr[], rt_ap_tramp_arg[],
    rt_ap_tramp_frame[];
extern uint64_t rt_gdt[], rt_gdt_end[];
extern char rt_ap_user_entry[];

static uint64_t g_blocks;  /* address of block 1 (CPU 1); set by rt_smp_reserve */
static unsigned g_cpus = 1;
static bool g_started;

static struct ap_block* block_of(unsigned cpu) {
  return (struct ap_block*)(uintptr_t)(g_blocks + (uint64_t)(cpu - 1) * RT_AP_BLOCK);
}

uint64_t rt_smp_reserve(uint64_t free_start) {
  g_blocks = (free_start + 4095) & ~4095ull;
  return g_blocks + (uint64_t)(RT_MAX_CPUS - 1) * RT_AP_BLOCK;
}

static volatile uint32_t* apic_reg(uint32_t off) {
  return (volatile uint32_t*)(uintptr_t)(APIC_BASE + off);
}

static void delay_us(uint64_t us) {
  uint64_t hz = rt_tsc_hz();
  uint64_t ticks = hz ? hz / 1000000 * us : us * 3000; /* ~3 GHz if uncalibrated */
  uint64_t t0 = rt_rdtsc();
  while (rt_rdtsc() - t0 < ticks) rt_pause();
}

static void send_ipi(unsigned apic_id, uint32_t low) {
  *apic_reg(APIC_ICR_HIGH) = (uint32_t)apic_id << 24;
  *apic_reg(APIC_ICR_LOW) = low;
  for (int i = 0; i < 100000 && (*apic_reg(APIC_ICR_LOW) & ICR_BUSY); ++i) rt_pause();
}

/* Builds CPU `cpu`'s block: GDT (the BSP's, with its own TSS descriptor), TSS
 * with an all-ports I/O bitmap, IRETQ frame into rt_ap_user_entry. */
static void build_block(unsigned cpu) {
  struct ap_block* b = block_of(cpu);
  memset(b, 0, RT_AP_BLOCK - 64 * 1024); /* the stack needs no zeroing */
  for (int i = 0; i < SEL_TSS_INDEX; ++i) b->gdt[i] = rt_gdt[i];
  uint64_t tss = (uint64_t)(uintptr_t)b + TSS_OFFSET;
  uint64_t limit = TSS_SIZE + IOBITMAP_BYTES; /* bitmap + the 0xff byte, minus 1 */
  b->gdt[SEL_TSS_INDEX] = (limit & 0xffff) | ((tss & 0xffffff) << 16) | (0x89ull << 40) |
                          (((limit >> 16) & 0xf) << 48) | (((tss >> 24) & 0xff) << 56);
  b->gdt[SEL_TSS_INDEX + 1] = tss >> 32;
  unsigned char* t = (unsigned char*)(uintptr_t)tss;
  uint64_t rsp0 = (uint64_t)(uintptr_t)b + KSTACK_TOP_OFFSET; /* the exception handlers' (entry.S) */
  memcpy(t + 4, &rsp0, 8);
  uint16_t iomap = TSS_SIZE;
  memcpy(t + 102, &iomap, 2);
  t[TSS_SIZE + IOBITMAP_BYTES] = 0xff;
  b->frame[0] = (uint64_t)(uintptr_t)rt_ap_user_entry;
  b->frame[1] = 0x20 | 3;
  b->frame[2] = 0x3002; /* IOPL 3, IF 0 */
  b->frame[3] = (uint64_t)(uintptr_t)b + STACK_TOP_OFFSET;
  b->frame[4] = 0x18 | 3;
  b->id = cpu;
}

/* Starts APIC id `cpu`; true once it reached ring 3 within timeout_ms. */
static bool start_ap(unsigned cpu, uint64_t timeout_ms) {
  struct ap_block* b = block_of(cpu);
  build_block(cpu);
  char* page = (char*)(uintptr_t)RT_AP_TRAMP_ADDR;
  uint64_t arg = (uint64_t)(uintptr_t)b;
  uint64_t frame = (uint64_t)(uintptr_t)b->frame;
  uint16_t limit = sizeof b->gdt - 1;
  uint32_t base = (uint32_t)(uintptr_t)b->gdt;
  memcpy(page + (rt_ap_tramp_arg - rt_ap_tramp_start), &arg, 8);
  memcpy(page + (rt_ap_tramp_frame - rt_ap_tramp_start), &frame, 8);
  memcpy(page + (rt_ap_tramp_gdtr - rt_ap_tramp_start), &limit, 2);
  memcpy(page + (rt_ap_tramp_gdtr - rt_ap_tramp_start) + 2, &base, 4);
  /* Intel SDM 8.4.4.1: INIT, 10 ms, SIPI, 200 us, SIPI. */
  send_ipi(cpu, ICR_INIT);
  delay_us(10000);
  for (int i = 0; i < 2; ++i) {
    send_ipi(cpu, ICR_STARTUP | (RT_AP_TRAMP_ADDR >> 12));
    delay_us(200);
    if (__atomic_load_n(&b->alive, __ATOMIC_ACQUIRE)) return true;
  }
  uint64_t hz = rt_tsc_hz() ? rt_tsc_hz() : 3000000000ull;
  uint64_t t0 = rt_rdtsc();
  while (rt_rdtsc() - t0 < timeout_ms * (hz / 1000)) {
    /* Pairs with the release store in rt_ap_main: the AP has read its fields. */
    if (__atomic_load_n(&b->alive, __ATOMIC_ACQUIRE)) return true;
    rt_pause();
  }
  return false;
}

unsigned rt_smp_start(unsigned want) {
  if (g_started) return g_cpus;
  g_started = true;
  unsigned cap = (unsigned)arg_u64("cpus", 0);
  if (cap == 0 || cap > RT_MAX_CPUS) cap = RT_MAX_CPUS;
  if (want > cap) want = cap;
  rt_tsc_hz(); /* calibrate before any AP runs: it is not reentrant */
  if (cap == 1) return g_cpus;
  *apic_reg(APIC_SVR) = APIC_SVR_ENABLE | 0xff; /* software-enable; IF stays 0 */
  memcpy((void*)(uintptr_t)RT_AP_TRAMP_ADDR, rt_ap_tramp_start,
         (size_t)(rt_ap_tramp_end - rt_ap_tramp_start));
  unsigned bsp_id = *apic_reg(APIC_ID) >> 24;
  if (bsp_id != 0) {
    rt_printf("rt: warning: BSP has APIC id %u, not 0; running on one CPU\n", bsp_id);
    return g_cpus;
  }
  for (unsigned cpu = 1; cpu < cap; ++cpu) {
    /* CPUs a program asked for get a long time (a loaded host may take long to
     * schedule a vCPU); beyond those, a short probe finds the end. */
    uint64_t timeout_ms = cpu < want ? 5000 : 200;
    if (!start_ap(cpu, timeout_ms)) break;
    g_cpus = cpu + 1;
  }
  return g_cpus;
}

unsigned rt_cpu_count(void) { return g_cpus; }

/* Ring-3 main of an AP (entry.S rt_ap_user_entry): report in, then run jobs. */
__attribute__((noreturn)) void rt_ap_main(struct ap_block* b);

void rt_ap_main(struct ap_block* b) {
  __atomic_store_n(&b->alive, 1, __ATOMIC_RELEASE); /* pairs with start_ap's acquire */
  uint64_t seen = 0;
  for (;;) {
    uint64_t go;
    /* Pairs with the release store of go in rt_run_workers: fn/arg are visible. */
    while ((go = __atomic_load_n(&b->go, __ATOMIC_ACQUIRE)) == seen) rt_pause();
    seen = go;
    b->fn(b->id, b->arg);
    __atomic_store_n(&b->done, go, __ATOMIC_RELEASE); /* pairs with rt_run_workers' wait */
  }
}

void rt_run_workers(unsigned n, rt_worker_fn fn, void* arg) {
  if (n == 0) n = 1;
  if (n > g_cpus) {
    rt_printf("rt: error: %u workers asked, %u CPUs online\n", n, g_cpus);
    exit(2);
  }
  for (unsigned cpu = 1; cpu < n; ++cpu) {
    struct ap_block* b = block_of(cpu);
    b->fn = fn;
    b->arg = arg;
    __atomic_store_n(&b->go, b->go + 1, __ATOMIC_RELEASE);
  }
  fn(0, arg);
  for (unsigned cpu = 1; cpu < n; ++cpu) {
    struct ap_block* b = block_of(cpu);
    uint64_t go = b->go;
    while (__atomic_load_n(&b->done, __ATOMIC_ACQUIRE) != go) rt_pause();
  }
}

void rt_barrier_init(struct rt_barrier* b, unsigned n) {
  b->count = 0;
  b->generation = 0;
  b->n = n;
}

void rt_barrier_wait(struct rt_barrier* b) {
  uint32_t gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
  if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == b->n) {
    __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED); /* ordered by the release below */
    __atomic_add_fetch(&b->generation, 1, __ATOMIC_RELEASE);
    return;
  }
  while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen) rt_pause();
}
