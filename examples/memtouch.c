/*
 * memtouch: the swapvisor memory workload and checker.
 *
 * Parameters (guest command line): mib=N passes=P mode=seq|rand seed=S
 * threads=T hot=H, defaults mib=64 passes=2 mode=seq seed=1 threads=1 hot=N;
 * corrupt=K is a self-test that damages K pages after pass 1 (expect errors=K).
 *
 * hot=H (MiB, 1..N) gives the guest a working set: passes after the first
 * sweep only the first H MiB of each worker's share (H/N of it), the rest keeps
 * pass 1's pattern, and the final sweep verifies both parts (a snapshot restore
 * then has a working-set pass to finish: bench/snapshot_guest.sh).
 *
 * threads=T runs T workers, one per CPU (rt_run_workers): worker w owns the
 * page indices [w*pages/T, (w+1)*pages/T) and sweeps only those; all workers
 * meet at a barrier after each sweep, where CPU 0 prints the sweep's line.
 *
 * It takes N MiB of RAM from the PVH memory map above the runtime (and above
 * 2 MiB), possibly split over several ranges (e.g. around the 3-4 GiB hole).
 * Pass 1 fills every 4 KiB page with 512 words derived from (gfn, pass, seed,
 * word); pass p > 1 verifies each word against pass p-1's pattern and rewrites
 * it with pass p's; a final sweep verifies pass P. mode=rand visits the pages
 * in a seeded pseudo-random permutation (new per pass). A page with any wrong
 * word is one error; the first 5 wrong words are printed.
 *
 * Output: one progress line per sweep, then
 *   RESULT {"guest":"memtouch","ok":..,"pages":..,"passes":..,"threads":..,"errors":..,"mib_per_s":..}
 * Exit: 0 without errors, 1 with errors, 2 for bad parameters or too little RAM.
 * mib_per_s counts the MiB swept over P + 1 sweeps (N for pass 1 and the final
 * verify, H for each pass between) divided by the wall time of all sweeps; 0 if
 * the TSC could not be calibrated.
 */
#include "runtime/layout.h"
#include "runtime/rt.h"

#define WORDS_PER_PAGE (RT_PAGE_SIZE / 8)
#define LOW_SKIP (2 * RT_MIB)
#define MAX_SEGMENTS 64
#define MAX_REPORTED 5

/* A run of consecutive usable frames; page indices [first_index, +pages). */
struct segment {
  uint64_t first_gfn;
  uint64_t pages;
  uint64_t first_index;
};

static struct segment g_seg[MAX_SEGMENTS];
static size_t g_nseg;
static uint64_t g_seed;
static uint64_t g_errors;   /* pages with at least one wrong word (atomic: all workers) */
static uint64_t g_reported; /* wrong words printed so far (atomic: all workers) */
static uint64_t g_corrupt;  /* corrupt=K: self-test, damage K pages after pass 1 */

/* splitmix64's finalizer: a cheap, well-mixing bijection on 64 bits. */
static inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

#define GOLDEN 0x9e3779b97f4a7c15ull

static inline uint64_t page_key(uint64_t gfn, uint64_t pass) {
  return mix64(gfn * GOLDEN ^ mix64(g_seed + pass * 0x632be59bd9b4e019ull));
}

static inline uint64_t pattern_word(uint64_t key, uint64_t w) { return mix64(key + w * GOLDEN); }

/* ---------------------------------------------------------------- layout */

static int cmp_addr(const struct rt_mem_range* a, const struct rt_mem_range* b) {
  return a->addr < b->addr ? -1 : a->addr > b->addr;
}

/* Collects `want` pages of RAM in address order; returns the pages found
 * (less than `want` when the memory map has too little). */
static uint64_t select_pages(uint64_t want, uint64_t* low_out) {
  struct rt_mem_range ram[128];
  size_t n = 0;
  const struct rt_mem_range* m = rt_memmap();
  for (size_t i = 0; i < rt_memmap_count() && n < 128; ++i) {
    if (m[i].type == RT_E820_RAM && m[i].size) ram[n++] = m[i];
  }
  for (size_t i = 1; i < n; ++i) { /* insertion sort by address */
    struct rt_mem_range t = ram[i];
    size_t j = i;
    for (; j > 0 && cmp_addr(&ram[j - 1], &t) > 0; --j) ram[j] = ram[j - 1];
    ram[j] = t;
  }
  uint64_t low = rt_free_start() > LOW_SKIP ? rt_free_start() : LOW_SKIP;
  low = (low + RT_PAGE_SIZE - 1) & ~(RT_PAGE_SIZE - 1);
  *low_out = low;
  uint64_t high = rt_mapped_limit();
  uint64_t got = 0;
  for (size_t i = 0; i < n && got < want && g_nseg < MAX_SEGMENTS; ++i) {
    uint64_t start = ram[i].addr;
    uint64_t end = ram[i].addr + ram[i].size;
    if (end < start) end = UINT64_MAX; /* wraps: clamp */
    if (start < low) start = low;
    if (end > high) end = high;
    start = (start + RT_PAGE_SIZE - 1) & ~(RT_PAGE_SIZE - 1);
    end &= ~(RT_PAGE_SIZE - 1);
    if (start >= end) continue;
    /* Ranges may overlap in a sloppy map: never reuse a frame. */
    if (g_nseg) {
      const struct segment* last = &g_seg[g_nseg - 1];
      uint64_t last_end = (last->first_gfn + last->pages) * RT_PAGE_SIZE;
      if (start < last_end) start = last_end;
      if (start >= end) continue;
    }
    uint64_t pages = (end - start) / RT_PAGE_SIZE;
    if (pages > want - got) pages = want - got;
    g_seg[g_nseg++] = (struct segment){start / RT_PAGE_SIZE, pages, got};
    got += pages;
  }
  return got;
}

static uint64_t gfn_of_index(uint64_t index) {
  size_t lo = 0;
  size_t hi = g_nseg; /* binary search for the segment holding index */
  while (hi - lo > 1) {
    size_t mid = (lo + hi) / 2;
    if (g_seg[mid].first_index <= index) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return g_seg[lo].first_gfn + (index - g_seg[lo].first_index);
}

/* ---------------------------------------------------------------- order */

/* A bijection on [0, 2^bits): rounds of add-key, multiply-by-odd and
 * xor-shift, each invertible modulo 2^bits. Cycle-walking over it (skipping
 * values >= pages) visits every page index exactly once. */
struct permutation {
  uint64_t mask;
  unsigned shift;
  uint64_t add[3];
  uint64_t mul[3];
};

static void permutation_init(struct permutation* p, uint64_t pages, uint64_t pass) {
  unsigned bits = 0;
  while (bits < 63 && (1ull << bits) < pages) ++bits;
  p->mask = bits ? (1ull << bits) - 1 : 0;
  p->shift = bits / 2 ? bits / 2 : 1;
  uint64_t k = mix64(g_seed ^ (pass * GOLDEN) ^ 0x5851f42d4c957f2dull);
  for (int r = 0; r < 3; ++r) {
    p->add[r] = k = mix64(k + GOLDEN);
    p->mul[r] = (k = mix64(k + GOLDEN)) | 1;
  }
}

static inline uint64_t permute(const struct permutation* p, uint64_t x) {
  for (int r = 0; r < 3; ++r) {
    x = ((x + p->add[r]) * p->mul[r]) & p->mask;
    x ^= x >> p->shift;
  }
  return x;
}

/* ---------------------------------------------------------------- sweeps */

/* Verifies the page against `check_pass` (if nonzero) and writes the pattern
 * of `write_pass` (if nonzero). */
static void touch_page(uint64_t gfn, uint64_t check_pass, uint64_t write_pass) {
  uint64_t* words = (uint64_t*)(uintptr_t)(gfn * RT_PAGE_SIZE);
  uint64_t ck = check_pass ? page_key(gfn, check_pass) : 0;
  uint64_t wk = write_pass ? page_key(gfn, write_pass) : 0;
  bool bad = false;
  for (uint64_t w = 0; w < WORDS_PER_PAGE; ++w) {
    if (check_pass) {
      uint64_t expected = pattern_word(ck, w);
      uint64_t got = words[w];
      if (got != expected) {
        bad = true;
        if (__atomic_fetch_add(&g_reported, 1, __ATOMIC_RELAXED) < MAX_REPORTED) {
          rt_printf("memtouch: MISMATCH gfn 0x%lx word %lu expected 0x%016lx got 0x%016lx (pass %lu)\n",
                    gfn, w, expected, got, check_pass);
        }
      }
    }
    if (write_pass) words[w] = pattern_word(wk, w);
  }
  if (bad) __atomic_fetch_add(&g_errors, 1, __ATOMIC_RELAXED); /* read after a barrier */
}

static void print_rate(uint64_t mib, uint64_t cycles, uint64_t hz) {
  if (!hz || !cycles) {
    rt_printf("%lu Mcycles", cycles / 1000000);
    return;
  }
  uint64_t ms = cycles / (hz / 1000);
  uint64_t rate10 = mib * 10 * hz / cycles;
  rt_printf("%lu ms, %lu.%lu MiB/s", ms, rate10 / 10, rate10 % 10);
}

/* One sweep over the page indices [lo, hi) in sequential or permuted order
 * (the permutation depends on the sweep and, beyond worker 0, the worker). */
static void sweep(uint64_t lo, uint64_t hi, bool random, uint64_t sweep_no, unsigned worker,
                  uint64_t check_pass, uint64_t write_pass) {
  const uint64_t progress_step = 1024 * (RT_MIB / RT_PAGE_SIZE); /* a line per GiB */
  uint64_t pages = hi - lo;
  uint64_t done = 0;
  if (!random) {
    for (uint64_t i = lo; i < hi; ++i) {
      touch_page(gfn_of_index(i), check_pass, write_pass);
      if (++done % progress_step == 0 && done < pages && worker == 0) {
        rt_printf("memtouch:   %lu/%lu MiB\n", done / 256, pages / 256);
      }
    }
    return;
  }
  struct permutation perm;
  permutation_init(&perm, pages, sweep_no + (uint64_t)worker * 0x10000);
  for (uint64_t x = 0; x <= perm.mask; ++x) {
    uint64_t index = permute(&perm, x);
    if (index >= pages) continue;
    touch_page(gfn_of_index(lo + index), check_pass, write_pass);
    if (++done % progress_step == 0 && done < pages && worker == 0) {
      rt_printf("memtouch:   %lu/%lu MiB\n", done / 256, pages / 256);
    }
  }
}

/* The self-test behind corrupt=K: flips one word in each of K pages spread
 * over the run (after pass 1 wrote them), so the checker must report exactly
 * K bad pages, ok false and exit 1. Proves a harness can see a failure. */
static void corrupt_pages(uint64_t pages) {
  uint64_t k = g_corrupt < pages ? g_corrupt : pages;
  for (uint64_t i = 0; i < k; ++i) {
    uint64_t index = i * (pages / k);
    uint64_t gfn = gfn_of_index(index);
    uint64_t* words = (uint64_t*)(uintptr_t)(gfn * RT_PAGE_SIZE);
    words[(i * 97) % WORDS_PER_PAGE] ^= 1ull << (i % 64);
  }
  rt_printf("memtouch: self-test: corrupted one word in each of %lu pages\n", k);
}

/* What every worker needs; written by main before rt_run_workers. */
struct job {
  uint64_t pages;
  uint64_t passes;
  uint64_t hot_mib; /* passes 2..P sweep hot_mib/mib of each worker's share */
  uint64_t mib;
  bool random;
  unsigned threads;
  uint64_t hz;
  uint64_t cycles; /* written by worker 0: wall time of all sweeps */
  struct rt_barrier barrier;
};

static void worker(unsigned cpu, void* arg) {
  struct job* job = arg;
  uint64_t lo = job->pages * cpu / job->threads;
  uint64_t hi = job->pages * (cpu + 1) / job->threads;
  uint64_t hot_hi = lo + (hi - lo) * job->hot_mib / job->mib; /* [lo, hot_hi): the working set */
  uint64_t start = rt_rdtsc();
  for (uint64_t pass = 1; pass <= job->passes + 1; ++pass) {
    bool last = pass == job->passes + 1;
    uint64_t errors_before = __atomic_load_n(&g_errors, __ATOMIC_RELAXED);
    uint64_t t0 = rt_rdtsc();
    if (pass == 1) {
      sweep(lo, hi, job->random, pass, cpu, 0, last ? 0 : 1);
    } else if (!last) {
      sweep(lo, hot_hi, job->random, pass, cpu, pass - 1, pass);
    } else {
      sweep(lo, hot_hi, job->random, pass, cpu, pass - 1, 0);
      sweep(hot_hi, hi, job->random, pass, cpu, 1, 0); /* the cold part: pass 1's pattern */
    }
    rt_barrier_wait(&job->barrier); /* every slice done: the error count is complete */
    uint64_t t1 = rt_rdtsc();
    if (cpu == 0) {
      uint64_t mib = pass == 1 || last ? job->mib : job->hot_mib;
      if (last) {
        rt_printf("memtouch: final verify of pass %lu: ", job->passes);
      } else if (pass == 1) {
        rt_printf("memtouch: pass 1/%lu write: ", job->passes);
      } else {
        rt_printf("memtouch: pass %lu/%lu verify+write: ", pass, job->passes);
      }
      print_rate(mib, t1 - t0, job->hz);
      rt_printf(", %lu bad pages\n", __atomic_load_n(&g_errors, __ATOMIC_RELAXED) - errors_before);
      if (pass == 1 && g_corrupt) corrupt_pages(job->pages);
      if (last) job->cycles = rt_rdtsc() - start;
    }
    rt_barrier_wait(&job->barrier); /* corruption (pass 1) precedes every verify */
  }
}

int main(void) {
  uint64_t mib = arg_u64("mib", 64);
  uint64_t passes = arg_u64("passes", 2);
  const char* mode = arg_str("mode", "seq");
  g_seed = arg_u64("seed", 1);
  g_corrupt = arg_u64("corrupt", 0);
  uint64_t threads64 = arg_u64("threads", 1);
  uint64_t hot_mib = arg_u64("hot", mib);
  bool random = strcmp(mode, "rand") == 0;
  if (!random && strcmp(mode, "seq") != 0) {
    rt_printf("memtouch: error: mode=%s is not seq or rand\n", mode);
    return 2;
  }
  if (mib == 0 || passes == 0 || mib > (UINT64_MAX / RT_MIB) || passes > 1000000) {
    rt_printf("memtouch: error: need mib >= 1 and 1 <= passes <= 1000000 (mib=%lu passes=%lu)\n",
              mib, passes);
    return 2;
  }
  if (hot_mib == 0 || hot_mib > mib) {
    rt_printf("memtouch: error: hot=%lu is not in 1..mib (%lu)\n", hot_mib, mib);
    return 2;
  }
  if (threads64 == 0 || threads64 > RT_MAX_CPUS) {
    rt_printf("memtouch: error: threads=%lu is not in 1..%d\n", threads64, RT_MAX_CPUS);
    return 2;
  }
  unsigned threads = (unsigned)threads64;
  uint64_t want = mib * (RT_MIB / RT_PAGE_SIZE);
  uint64_t low = 0;
  uint64_t pages = select_pages(want, &low);
  if (pages < want) {
    rt_printf("memtouch: error: mib=%lu does not fit: only %lu MiB of RAM in the memory map "
              "above 0x%lx (below 0x%lx)\n",
              mib, pages / (RT_MIB / RT_PAGE_SIZE), low, rt_mapped_limit());
    return 2;
  }
  rt_printf("memtouch: mib=%lu passes=%lu mode=%s seed=%lu hot=%lu: %lu pages in %zu range(s)\n", mib,
            passes, random ? "rand" : "seq", g_seed, hot_mib, pages, g_nseg);
  for (size_t s = 0; s < g_nseg; ++s) {
    rt_printf("memtouch:   [0x%lx - 0x%lx)\n", g_seg[s].first_gfn * RT_PAGE_SIZE,
              (g_seg[s].first_gfn + g_seg[s].pages) * RT_PAGE_SIZE);
  }
  uint64_t hz = rt_tsc_hz();
  if (!hz) rt_printf("memtouch: warning: TSC calibration failed, mib_per_s will be 0\n");
  if (threads > 1) {
    unsigned cpus = rt_smp_start(threads);
    if (cpus < threads) {
      rt_printf("memtouch: error: threads=%u but only %u CPU(s) came up\n", threads, cpus);
      return 2;
    }
    rt_printf("memtouch: %u workers on %u CPUs\n", threads, cpus);
  }

  struct job job = {pages, passes, hot_mib, mib, random, threads, hz, 0, {0}};
  rt_barrier_init(&job.barrier, threads);
  rt_run_workers(threads, worker, &job);
  uint64_t cycles = job.cycles;

  uint64_t sweeps = passes + 1;
  uint64_t rate10 = 0;
  if (hz && cycles) {
    /* mib * sweeps * 10 * hz may overflow for huge runs: divide first then. */
    uint64_t total_mib = mib * 2 + hot_mib * (sweeps - 2); /* pass 1, hot passes, final */
    if (total_mib < UINT64_MAX / 10 / hz) {
      rate10 = total_mib * 10 * hz / cycles;
    } else {
      rate10 = total_mib * 10 / (cycles / hz ? cycles / hz : 1);
    }
  }
  bool ok = g_errors == 0;
  rt_printf("RESULT {\"guest\":\"memtouch\",\"ok\":%s,\"pages\":%lu,\"passes\":%lu,\"threads\":%u,"
            "\"errors\":%lu,\"mib_per_s\":%lu.%lu}\n",
            ok ? "true" : "false", pages, passes, threads, g_errors, rate10 / 10, rate10 % 10);
  return ok ? 0 : 1;
}
