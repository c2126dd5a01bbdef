/*
 * phases: a guest whose working set changes by phases, for resident-limit=auto
 * (guestmem/README.md#auto-limits). Runs under swapvisor, or QEMU microvm
 * (tests/scripts/qemu_boot_test.sh checks it there).
 *
 * Parameters (guest command line): mib=N hot=A,B,... period=T cycles=C seed=S,
 * defaults mib=64 hot=16,48,0 period=20 cycles=2 seed=1.
 *
 * It takes N MiB of RAM above the runtime (as memtouch does) and fills every page
 * once: word 0 of each page holds a key derived from (gfn, seed). Then, C times,
 * it runs one phase per entry of hot=: for T seconds it sweeps the first A MiB
 * over and over, checking word 0 of each page and writing a counter into word 1
 * (a hot set of A MiB, dirtied); A = 0 is an idle phase: T seconds without a
 * memory access (the vCPU spins on the TSC with `pause`: it is busy, not halted).
 * A page whose word 0 is wrong is one error (the first 5 are printed).
 *
 * Output: one line per phase,
 *   phases: cycle=c phase=p hot_mib=A seconds=T sweeps=S mib_per_s=X
 * then
 *   RESULT {"guest":"phases","ok":..,"pages":..,"phases":..,"errors":..}
 * Exit: 0 without errors, 1 with errors, 2 for bad parameters, too little RAM or
 * no TSC (phases are timed).
 */
#include "runtime/layout.h"
#include "runtime/rt.h"

#define LOW_SKIP (2 * RT_MIB)
#define MAX_SEGMENTS 64
#define MAX_PHASES 16
#define MAX_REPORTED 5

struct segment {
  uint64_t first_gfn;
  uint64_t pages;
  uint64_t first_index;
};

static struct segment g_seg[MAX_SEGMENTS];
static size_t g_nseg;
static uint64_t g_seed;
static uint64_t g_errors;

static inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline uint64_t page_key(uint64_t gfn) { return mix64(gfn * 0x9e3779b97f4a7c15ull ^ mix64(g_seed)); }

/* `want` pages of RAM in address order above the runtime (memtouch's layout; the
 * memory map is assumed sorted, as swapvisor and QEMU give it). */
static uint64_t select_pages(uint64_t want) {
  const struct rt_mem_range* m = rt_memmap();
  uint64_t low = rt_free_start() > LOW_SKIP ? rt_free_start() : LOW_SKIP;
  low = (low + RT_PAGE_SIZE - 1) & ~(RT_PAGE_SIZE - 1);
  uint64_t high = rt_mapped_limit();
  uint64_t got = 0;
  for (size_t i = 0; i < rt_memmap_count() && got < want && g_nseg < MAX_SEGMENTS; ++i) {
    if (m[i].type != RT_E820_RAM || !m[i].size) continue;
    uint64_t start = m[i].addr;
    uint64_t end = m[i].addr + m[i].size;
    if (end < start) end = UINT64_MAX;
    if (start < low) start = low;
    if (end > high) end = high;
    start = (start + RT_PAGE_SIZE - 1) & ~(RT_PAGE_SIZE - 1);
    end &= ~(RT_PAGE_SIZE - 1);
    if (g_nseg) {
      const struct segment* last = &g_seg[g_nseg - 1];
      uint64_t last_end = (last->first_gfn + last->pages) * RT_PAGE_SIZE;
      if (start < last_end) start = last_end;
    }
    if (start >= end) continue;
    uint64_t pages = (end - start) / RT_PAGE_SIZE;
    if (pages > want - got) pages = want - got;
    g_seg[g_nseg++] = (struct segment){start / RT_PAGE_SIZE, pages, got};
    got += pages;
  }
  return got;
}

static volatile uint64_t* page_at(uint64_t index, uint64_t* gfn_out) {
  size_t s = 0;
  while (s + 1 < g_nseg && g_seg[s + 1].first_index <= index) ++s;
  uint64_t gfn = g_seg[s].first_gfn + (index - g_seg[s].first_index);
  *gfn_out = gfn;
  return (volatile uint64_t*)(gfn * RT_PAGE_SIZE);
}

/* hot=A,B,...: up to MAX_PHASES sizes in MiB; returns how many, 0 if malformed. */
static size_t parse_hot(const char* s, uint64_t* out) {
  size_t n = 0;
  while (*s && *s != ' ') {
    if (n == MAX_PHASES || *s < '0' || *s > '9') return 0;
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (uint64_t)(*s++ - '0');
    out[n++] = v;
    if (*s == ',') ++s;
  }
  return n;
}

static void check_and_touch(uint64_t index, uint64_t stamp) {
  uint64_t gfn;
  volatile uint64_t* w = page_at(index, &gfn);
  if (w[0] != page_key(gfn)) {
    if (g_errors < MAX_REPORTED)
      rt_printf("phases: MISMATCH gfn 0x%lx expected 0x%lx got 0x%lx\n", gfn, page_key(gfn), w[0]);
    ++g_errors;
    w[0] = page_key(gfn); /* count each damaged page once */
  }
  w[1] = stamp;
}

int main(void) {
  uint64_t mib = arg_u64("mib", 64);
  uint64_t period = arg_u64("period", 20);
  uint64_t cycles = arg_u64("cycles", 2);
  g_seed = arg_u64("seed", 1);
  uint64_t hot[MAX_PHASES];
  size_t nphases = parse_hot(arg_str("hot", "16,48,0"), hot);
  if (mib == 0 || period == 0 || cycles == 0 || nphases == 0) {
    rt_printf("phases: error: need mib, period, cycles >= 1 and hot=A,B,... (at most %d)\n", MAX_PHASES);
    return 2;
  }
  for (size_t p = 0; p < nphases; ++p) {
    if (hot[p] > mib) {
      rt_printf("phases: error: hot=%lu is more than mib=%lu\n", hot[p], mib);
      return 2;
    }
  }
  uint64_t want = mib * (RT_MIB / RT_PAGE_SIZE);
  uint64_t pages = select_pages(want);
  if (pages < want) {
    rt_printf("phases: error: mib=%lu does not fit in the memory map\n", mib);
    return 2;
  }
  uint64_t hz = rt_tsc_hz();
  if (!hz) {
    rt_printf("phases: error: TSC calibration failed: phases cannot be timed\n");
    return 2;
  }
  rt_printf("phases: mib=%lu period=%lu s cycles=%lu, %zu phase(s)\n", mib, period, cycles, nphases);
  for (uint64_t i = 0; i < pages; ++i) {
    uint64_t gfn;
    volatile uint64_t* w = page_at(i, &gfn);
    w[0] = page_key(gfn);
  }
  uint64_t stamp = 0;
  for (uint64_t c = 0; c < cycles; ++c) {
    for (size_t p = 0; p < nphases; ++p) {
      uint64_t hot_pages = hot[p] * (RT_MIB / RT_PAGE_SIZE);
      uint64_t start = rt_rdtsc();
      uint64_t end = start + period * hz;
      uint64_t sweeps = 0;
      uint64_t touched = 0;
      while (rt_rdtsc() < end) {
        if (!hot_pages) {
          rt_pause();
          continue;
        }
        for (uint64_t i = 0; i < hot_pages; ++i) check_and_touch(i, ++stamp);
        touched += hot_pages;
        ++sweeps;
      }
      uint64_t elapsed = rt_rdtsc() - start;
      uint64_t mib10 = touched * RT_PAGE_SIZE / RT_MIB * 10 * hz / (elapsed ? elapsed : 1);
      rt_printf("phases: cycle=%lu phase=%zu hot_mib=%lu seconds=%lu sweeps=%lu mib_per_s=%lu.%lu\n", c, p, hot[p],
                period, sweeps, mib10 / 10, mib10 % 10);
    }
  }
  bool ok = g_errors == 0;
  rt_printf("RESULT {\"guest\":\"phases\",\"ok\":%s,\"pages\":%lu,\"phases\":%lu,\"errors\":%lu}\n", ok ? "true" : "false",
            pages, cycles * nphases, g_errors);
  return ok ? 0 : 1;
}
