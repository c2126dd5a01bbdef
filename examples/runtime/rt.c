/*
 * Ring-3 runtime library of the swapvisor example guests (see rt.h).
 *
 * Role: turn the PVH hvm_start_info into a parsed command line and a copy of
 * the memory map, provide COM1 printing, TSC calibration against PIT channel 2
 * and the debug-exit port, then run the program's main().
 *
 * Invariants: runs in ring 3 with IOPL 3 without interrupts. The static state
 * below is written once by rt_start() (and once by rt_tsc_hz(), which
 * rt_smp_start() calls before any AP runs) before anything reads it; only the
 * console is shared by running CPUs, under g_console_lock.
 */
#include "rt.h"

/* struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h). */
#define HVM_START_MAGIC 0x336ec578u
struct hvm_start_info {
  uint32_t magic;
  uint32_t version;
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;
  uint64_t cmdline_paddr;
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr; /* version >= 1 */
  uint32_t memmap_entries;
  uint32_t reserved;
};

#define CMDLINE_MAX 4096
#define ARGS_MAX 128
#define MEMMAP_MAX 128

static char g_cmdline[CMDLINE_MAX];  /* raw copy, NUL-terminated */
static char g_arg_buf[CMDLINE_MAX];  /* split copy: words, '=' replaced by NUL */
static const char* g_arg_key[ARGS_MAX];
static const char* g_arg_val[ARGS_MAX];
static size_t g_nargs;

static struct rt_mem_range g_memmap[MEMMAP_MAX];
static size_t g_memmap_count;
static uint64_t g_free_start;
static uint64_t g_mapped_limit;

static uint64_t g_tsc_hz;
static bool g_tsc_calibrated;

/* ------------------------------------------------------------- strings */

void* memset(void* dst, int c, size_t n) {
  unsigned char* d = dst;
  while (n--) *d++ = (unsigned char)c;
  return dst;
}

void* memcpy(void* dst, const void* src, size_t n) {
  unsigned char* d = dst;
  const unsigned char* s = src;
  while (n--) *d++ = *s++;
  return dst;
}

void* memmove(void* dst, const void* src, size_t n) {
  unsigned char* d = dst;
  const unsigned char* s = src;
  if (d < s) {
    while (n--) *d++ = *s++;
  } else {
    while (n--) d[n] = s[n];
  }
  return dst;
}

int memcmp(const void* a, const void* b, size_t n) {
  const unsigned char* x = a;
  const unsigned char* y = b;
  for (; n; --n, ++x, ++y) {
    if (*x != *y) return *x < *y ? -1 : 1;
  }
  return 0;
}

size_t strlen(const char* s) {
  size_t n = 0;
  while (s[n]) ++n;
  return n;
}

int strcmp(const char* a, const char* b) {
  while (*a && *a == *b) ++a, ++b;
  return (unsigned char)*a - (unsigned char)*b;
}

/* ------------------------------------------------------------- console */

#define COM1_LSR (RT_PORT_COM1 + 5)
#define LSR_THR_EMPTY 0x20
#define LSR_POLL_LIMIT 100000 /* a missing UART must not hang the guest */

/* Protects: the UART between CPUs, for one rt_puts/rt_vprintf call. */
static uint32_t g_console_lock;

static void console_lock(void) {
  while (__atomic_exchange_n(&g_console_lock, 1, __ATOMIC_ACQUIRE)) {
    while (__atomic_load_n(&g_console_lock, __ATOMIC_RELAXED)) rt_pause();
  }
}

static void console_unlock(void) { __atomic_store_n(&g_console_lock, 0, __ATOMIC_RELEASE); }

void rt_putc(char c) {
  for (int i = 0; i < LSR_POLL_LIMIT; ++i) {
    if (rt_inb(COM1_LSR) & LSR_THR_EMPTY) break;
    rt_pause();
  }
  rt_outb(RT_PORT_COM1, (uint8_t)c);
}

void rt_puts(const char* s) {
  console_lock();
  while (*s) rt_putc(*s++);
  console_unlock();
}

/* Emits `len` chars of `s` padded to `width` (left- or right-aligned). */
static int emit_padded(const char* s, int len, int width, bool left, char pad) {
  int n = 0;
  if (!left) {
    for (; n + len < width; ++n) rt_putc(pad);
  }
  for (int i = 0; i < len; ++i) rt_putc(s[i]);
  n += len;
  for (; n < width; ++n) rt_putc(' ');
  return n;
}

static int vprintf_locked(const char* fmt, va_list ap);

int rt_vprintf(const char* fmt, va_list ap) {
  console_lock();
  int n = vprintf_locked(fmt, ap);
  console_unlock();
  return n;
}

static int vprintf_locked(const char* fmt, va_list ap) {
  int total = 0;
  for (; *fmt; ++fmt) {
    if (*fmt != '%') {
      rt_putc(*fmt);
      ++total;
      continue;
    }
    ++fmt;
    bool left = false;
    char pad = ' ';
    for (;; ++fmt) {
      if (*fmt == '-') {
        left = true;
      } else if (*fmt == '0') {
        pad = '0';
      } else {
        break;
      }
    }
    int width = 0;
    while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
    int longs = 0; /* 0: int, 1+: long / long long / size_t (all 64-bit) */
    for (;; ++fmt) {
      if (*fmt == 'l' || *fmt == 'z' || *fmt == 'j') {
        ++longs;
      } else if (*fmt != 'h') {
        break;
      }
    }
    char buf[24];
    int len = 0;
    uint64_t u = 0;
    bool neg = false;
    unsigned base = 10;
    switch (*fmt) {
      case 'd':
      case 'i': {
        int64_t v = longs ? va_arg(ap, int64_t) : va_arg(ap, int);
        neg = v < 0;
        u = neg ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
        break;
      }
      case 'u':
        u = longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
        break;
      case 'x':
      case 'X':
        u = longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
        base = 16;
        break;
      case 'p':
        u = (uint64_t)(uintptr_t)va_arg(ap, void*);
        base = 16;
        total += emit_padded("0x", 2, 0, false, ' ');
        break;
      case 'c': {
        char c = (char)va_arg(ap, int);
        total += emit_padded(&c, 1, width, left, ' ');
        continue;
      }
      case 's': {
        const char* s = va_arg(ap, const char*);
        if (!s) s = "(null)";
        total += emit_padded(s, (int)strlen(s), width, left, ' ');
        continue;
      }
      case '%':
        rt_putc('%');
        ++total;
        continue;
      default: /* unknown conversion: print it verbatim */
        rt_putc('%');
        ++total;
        if (!*fmt) return total;
        rt_putc(*fmt);
        ++total;
        continue;
    }
    const char* digits = *fmt == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
    do {
      buf[sizeof buf - 1 - len++] = digits[u % base];
      u /= base;
    } while (u);
    if (neg) {
      if (pad == '0') { /* sign goes before the zero padding */
        rt_putc('-');
        ++total;
        width = width > 0 ? width - 1 : 0;
      } else {
        buf[sizeof buf - 1 - len++] = '-';
      }
    }
    total += emit_padded(buf + sizeof buf - len, len, width, left, left ? ' ' : pad);
  }
  return total;
}

int rt_printf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = rt_vprintf(fmt, ap);
  va_end(ap);
  return n;
}

/* ------------------------------------------------------------- exit */

void exit(int code) {
  rt_outl(RT_PORT_DEBUG_EXIT, (uint32_t)code);
  /* The VMM ends the VM on that write; ring 3 may not hlt, so spin. */
  for (;;) rt_pause();
}

/* ------------------------------------------------------------- command line */

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Splits g_arg_buf into `key=value` words (in place); words without '=' are
 * kept with an empty value. */
static void split_cmdline(void) {
  memcpy(g_arg_buf, g_cmdline, sizeof g_arg_buf);
  char* p = g_arg_buf;
  while (*p) {
    while (is_space(*p)) *p++ = '\0';
    if (!*p) break;
    char* key = p;
    char* val = NULL;
    while (*p && !is_space(*p)) {
      if (*p == '=' && !val) {
        *p = '\0';
        val = p + 1;
      }
      ++p;
    }
    if (g_nargs < ARGS_MAX) {
      g_arg_key[g_nargs] = key;
      g_arg_val[g_nargs] = val ? val : p; /* p is at a NUL or a space turned NUL next */
      ++g_nargs;
    }
    if (*p) *p++ = '\0';
  }
}

const char* rt_cmdline(void) { return g_cmdline; }

const char* arg_str(const char* key, const char* def) {
  for (size_t i = g_nargs; i-- > 0;) {
    if (strcmp(g_arg_key[i], key) == 0) return g_arg_val[i];
  }
  return def;
}

uint64_t arg_u64(const char* key, uint64_t def) {
  const char* s = arg_str(key, NULL);
  if (!s) return def;
  const char* p = s;
  unsigned base = 10;
  if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
    base = 16;
    p += 2;
  }
  uint64_t v = 0;
  bool any = false;
  for (; *p; ++p) {
    unsigned d;
    if (*p >= '0' && *p <= '9') {
      d = (unsigned)(*p - '0');
    } else if (base == 16 && *p >= 'a' && *p <= 'f') {
      d = (unsigned)(*p - 'a' + 10);
    } else if (base == 16 && *p >= 'A' && *p <= 'F') {
      d = (unsigned)(*p - 'A' + 10);
    } else {
      any = false;
      break;
    }
    if (v > (UINT64_MAX - d) / base) {
      any = false;
      break;
    }
    v = v * base + d;
    any = true;
  }
  if (!any) {
    rt_printf("rt: error: %s=%s is not a number\n", key, s);
    exit(2);
  }
  return v;
}

/* ------------------------------------------------------------- memory */

size_t rt_memmap_count(void) { return g_memmap_count; }
const struct rt_mem_range* rt_memmap(void) { return g_memmap; }
uint64_t rt_free_start(void) { return g_free_start; }
uint64_t rt_mapped_limit(void) { return g_mapped_limit; }

/* ------------------------------------------------------------- TSC */

#define PIT_HZ 1193182u
#define PIT_CH0 0x40
#define PIT_CH2 0x42
#define PIT_CMD 0x43
#define PORT_61 0x61     /* bit 0: gate 2, bit 1: speaker, bit 5: OUT2 */
#define CAL_MS 20u
#define CAL_TICKS (PIT_HZ * CAL_MS / 1000u)
#define CAL_MIN_LOOPS 16 /* fewer polls than this: the PIT is not counting */
#define CAL_MAX_LOOPS 50000000ull

static const char* g_tsc_source = "none";

/* Accepts a measured frequency only within 100 MHz .. 20 GHz. */
static uint64_t plausible_hz(uint64_t hz) {
  return hz >= 100000000ull && hz <= 20000000000ull ? hz : 0;
}

/* Outcome of one calibration run: Hz > 0, or one of these. */
#define CAL_RETRY 0          /* disturbed (vCPU preempted): try again */
#define CAL_UNAVAILABLE (-1) /* this timer does not exist or does not count */

/* Linux's pit_calibrate_tsc(): PIT channel 2 in mode 0 counts CAL_MS down,
 * gated by port 0x61 bit 0; poll OUT2 (port 0x61 bit 5) and read the TSC.
 * Needs the speaker port (a PC's, or KVM's in-kernel PIT without
 * KVM_PIT_SPEAKER_DUMMY). */
static int64_t pit_ch2_calibrate_once(void) {
  uint8_t p61 = rt_inb(PORT_61);
  if (p61 == 0xff) return CAL_UNAVAILABLE; /* nothing decodes the port */
  rt_outb(PORT_61, (uint8_t)((p61 & ~0x02) | 0x01)); /* gate high, speaker off */
  rt_outb(PIT_CMD, 0xb0);                            /* ch 2, lo/hi, mode 0, binary */
  rt_outb(PIT_CH2, (uint8_t)(CAL_TICKS & 0xff));
  uint64_t t0 = rt_rdtsc();
  rt_outb(PIT_CH2, (uint8_t)(CAL_TICKS >> 8)); /* counting starts here */
  uint64_t t1 = rt_rdtsc();
  uint64_t prev = t1;
  uint64_t t2 = t1;
  uint64_t loops = 0;
  while ((rt_inb(PORT_61) & 0x20) == 0) {
    prev = t2;
    t2 = rt_rdtsc();
    if (++loops > CAL_MAX_LOOPS) break;
  }
  /* OUT2 rose after the poll that followed `prev` began and before the
   * final poll ended (t3). */
  uint64_t t3 = rt_rdtsc();
  rt_outb(PORT_61, p61);
  if (loops < CAL_MIN_LOOPS || loops > CAL_MAX_LOOPS) return CAL_UNAVAILABLE;
  /* Unlike Linux, which drops a run with any slow poll, only the two end
   * points matter: a vCPU preempted in between does not change the result
   * (this host preempts for ~4 ms in most 20 ms windows). */
  uint64_t start = t0 + (t1 - t0) / 2;
  uint64_t end = prev + (t3 - prev) / 2;
  uint64_t delta = end - start;
  if (((t1 - t0) + (t3 - prev)) * 100 > delta) return CAL_RETRY;
  return (int64_t)plausible_hz(delta * 1000u / CAL_MS);
}

/* Latches and reads the PIT channel 0 count. *tsc = TSC at the latch command
 * (midpoint), *window = the TSC ticks that command took (its uncertainty). */
static uint16_t pit_ch0_read(uint64_t* tsc, uint64_t* window) {
  uint64_t a = rt_rdtsc();
  rt_outb(PIT_CMD, 0x00); /* counter latch, channel 0 */
  uint64_t b = rt_rdtsc();
  uint8_t lo = rt_inb(PIT_CH0);
  uint8_t hi = rt_inb(PIT_CH0);
  *tsc = a + (b - a) / 2;
  *window = b - a;
  return (uint16_t)(lo | hi << 8);
}

/* Without the speaker port (e.g. QEMU microvm): channel 0, whose gate is
 * always high, counts down from 0xffff in mode 0; compare TSC and count after
 * CAL_TICKS ticks. Both end points must come from a quick latch command (at
 * most 4x the quickest seen, and under 1% of the interval). Interrupts are
 * off, so channel 0's IRQ 0 is never taken. */
static int64_t pit_ch0_calibrate_once(void) {
  rt_outb(PIT_CMD, 0x30); /* ch 0, lo/hi, mode 0, binary */
  rt_outb(PIT_CH0, 0xff);
  rt_outb(PIT_CH0, 0xff);
  uint64_t t1, w1;
  uint16_t c1 = pit_ch0_read(&t1, &w1);
  uint64_t min_window = w1;
  uint16_t prev = c1;
  int same = 0;
  for (uint64_t loops = 0; loops < CAL_MAX_LOOPS; ++loops) {
    uint64_t t2, w2;
    uint16_t c = pit_ch0_read(&t2, &w2);
    if (c > prev) return loops < CAL_MIN_LOOPS ? CAL_UNAVAILABLE : CAL_RETRY; /* wrapped */
    same = c == prev ? same + 1 : 0;
    if (same > 100) return CAL_UNAVAILABLE; /* not counting */
    prev = c;
    if (w2 < min_window) min_window = w2;
    if (loops < CAL_MIN_LOOPS) {
      if (w2 <= min_window) { /* (re)start from the quickest early reading */
        c1 = c;
        t1 = t2;
        w1 = w2;
      }
      continue;
    }
    if ((uint32_t)(c1 - c) < CAL_TICKS || w2 > 4 * min_window) continue;
    uint64_t dt = t2 - t1;
    if (w1 > 4 * min_window || (w1 + w2) * 100 > dt) return CAL_RETRY;
    return (int64_t)plausible_hz(dt * PIT_HZ / (uint32_t)(c1 - c));
  }
  return CAL_UNAVAILABLE;
}

/* Hypervisor-reported frequencies: leaf 0x40000010 (VMware/KVM timing leaf,
 * EAX = TSC kHz) or leaf 0x15 (TSC/crystal ratio and crystal Hz). */
static void cpuid(uint32_t leaf, uint32_t r[4]) {
  __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(0));
}

static uint64_t cpuid_tsc_hz(const char** source) {
  uint32_t r[4];
  cpuid(1, r);
  if (r[2] & (1u << 31)) { /* running under a hypervisor */
    cpuid(0x40000000, r);
    if (r[0] >= 0x40000010 && r[0] < 0x40010000) {
      cpuid(0x40000010, r);
      if (plausible_hz((uint64_t)r[0] * 1000)) {
        *source = "cpuid 0x40000010";
        return (uint64_t)r[0] * 1000;
      }
    }
  }
  cpuid(0, r);
  if (r[0] >= 0x15) {
    cpuid(0x15, r);
    if (r[0] && r[1] && r[2] && plausible_hz((uint64_t)r[2] * r[1] / r[0])) {
      *source = "cpuid 0x15";
      return (uint64_t)r[2] * r[1] / r[0];
    }
  }
  return 0;
}

uint64_t rt_tsc_hz(void) {
  if (g_tsc_calibrated) return g_tsc_hz;
  g_tsc_calibrated = true;
  int64_t (*const methods[])(void) = {pit_ch2_calibrate_once, pit_ch0_calibrate_once};
  const char* const names[] = {"PIT channel 2", "PIT channel 0"};
  for (int m = 0; m < 2 && !g_tsc_hz; ++m) {
    /* Median of 3 good runs (up to 8 tries): one preempted run can't skew it. */
    uint64_t good[3];
    int n = 0;
    for (int i = 0; i < 8 && n < 3; ++i) {
      int64_t hz = methods[m]();
      if (hz == CAL_UNAVAILABLE) break;
      if (hz > 0) good[n++] = (uint64_t)hz;
    }
    for (int i = 1; i < n; ++i) { /* insertion sort */
      for (int j = i; j > 0 && good[j - 1] > good[j]; --j) {
        uint64_t t = good[j];
        good[j] = good[j - 1];
        good[j - 1] = t;
      }
    }
    if (n) {
      g_tsc_hz = good[(n - 1) / 2];
      g_tsc_source = names[m];
    }
  }
  if (!g_tsc_hz) g_tsc_hz = cpuid_tsc_hz(&g_tsc_source);
  return g_tsc_hz;
}

const char* rt_tsc_source(void) {
  rt_tsc_hz();
  return g_tsc_source;
}

/* ------------------------------------------------------------- start */

/* Copies a NUL-terminated string from guest-physical `paddr` (bounded). */
static void copy_cmdline(uint64_t paddr) {
  if (!paddr || paddr >= g_mapped_limit) return;
  const char* s = (const char*)(uintptr_t)paddr;
  size_t n = 0;
  while (n + 1 < sizeof g_cmdline && s[n]) {
    g_cmdline[n] = s[n];
    ++n;
  }
  g_cmdline[n] = '\0';
}

/* ------------------------------------------------------------- exceptions */

/* entry.S: 256 handler stubs of 16 bytes each, and the IDT its ring-0 code loaded. */
extern char rt_trap_stubs[];
extern uint64_t rt_idt[2 * 256];

/* Fills the IDT (ring 3 may: every page is user-writable) with one 64-bit
 * interrupt gate per stub: present, DPL 0, kernel code selector 0x08. From then on
 * an exception prints what the CPU saw and ends the VM with RT_EXIT_EXCEPTION
 * instead of a triple fault (examples/README.md#exceptions). */
static void fill_idt(void) {
  for (unsigned v = 0; v < 256; ++v) {
    uint64_t h = (uint64_t)(uintptr_t)rt_trap_stubs + 16u * v;
    rt_idt[2 * v] = (h & 0xffff) | (0x08ull << 16) | (0x8eull << 40) | (((h >> 16) & 0xffff) << 48);
    rt_idt[2 * v + 1] = h >> 32;
  }
}

/* Called from entry.S in ring 3 after .bss is zeroed. */
__attribute__((noreturn)) void rt_start(const struct hvm_start_info* si, uint64_t free_start,
                                        uint64_t mapped_limit);

void rt_start(const struct hvm_start_info* si, uint64_t free_start, uint64_t mapped_limit) {
  fill_idt();
  g_free_start = rt_smp_reserve(free_start);
  g_mapped_limit = mapped_limit;
  if (!si || si->magic != HVM_START_MAGIC) {
    rt_printf("rt: warning: no hvm_start_info at %p (bad magic); no command line or memory map\n",
              (const void*)si);
  } else {
    copy_cmdline(si->cmdline_paddr);
    if (si->version >= 1 && si->memmap_paddr && si->memmap_paddr < mapped_limit) {
      const struct rt_mem_range* m = (const struct rt_mem_range*)(uintptr_t)si->memmap_paddr;
      size_t n = si->memmap_entries;
      if (n > MEMMAP_MAX) {
        rt_printf("rt: warning: memory map has %zu entries, using the first %d\n", n, MEMMAP_MAX);
        n = MEMMAP_MAX;
      }
      memcpy(g_memmap, m, n * sizeof *m);
      g_memmap_count = n;
    }
  }
  split_cmdline();
  exit(main());
}
