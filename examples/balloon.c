/*
 * balloon: virtio-balloon from the guest side, checked end to end: free page
 * reporting, inflate / deflate, guest memory statistics and deflate-on-OOM.
 *
 * Parameters (guest command line): mib=N rounds=R chunk_kib=C bogus=K
 * pool_mib=P cycle=0|1 stats=0|1 oom_mib=M, defaults mib=16 rounds=3
 * chunk_kib=2048 bogus=0 pool_mib=0 cycle=0 stats=1 oom_mib=0; plus the
 * virtio_mmio.device= entry the VMM appends (swapvisor run --balloon).
 *
 * Free page reporting (always): each round r writes a round-specific pattern
 * to N MiB of RAM, verifies it, then frees half of it and reports that half:
 * the N MiB are blocks of C KiB taken in pairs, and of each pair round r frees
 * the block a hash of (pair, r) picks, so the freed half changes from round to
 * round (exactly half of the blocks; an odd last block is always kept). Freed
 * blocks go out as ranges, several per request as Linux's page reporting
 * sends them; the guest waits for each request to come back, then expects
 * every freed block to read all zeros (the VMM dropped it) and every kept
 * block to still hold pattern r. bogus=K adds one request per round of K
 * malformed ranges (unaligned, outside RAM, empty) that the device must refuse
 * without touching memory or needing a reset.
 *
 * Inflate / deflate (pool_mib > 0): P MiB after the workload are the balloon's
 * pool, filled with a pattern at start. Before each round (and while it waits)
 * the guest reads the host's target (config num_pages) and moves towards it:
 * inflating sends the PFNs of pool pages, lowest first, on inflateq and never
 * touches them again; deflating sends the highest inflated PFNs on deflateq
 * and then checks that each page it got back reads as zeros. `actual` is
 * written back to the config space. cycle=1: after the rounds, keep polling
 * until the balloon has been inflated and deflated back to 0 (bounded: about
 * a minute), so a host can squeeze the guest while the rounds run and then
 * let it finish. At the end every pool page not in the balloon must hold what
 * the guest last put there (the pattern, zeros, or the OOM pattern).
 *
 * Deflate-on-OOM (oom_mib=M, needs pool_mib >= M): after the rounds (and the
 * cycle), the guest waits (bounded) until the host has inflated the balloon
 * and it has settled on the target, then its workload needs the top M MiB of
 * the pool. Whatever of them is in the balloon it takes back without being
 * asked: with VIRTIO_BALLOON_F_DEFLATE_ON_OOM negotiated it sends their PFNs
 * on deflateq, checks each reads zeros, then writes and verifies an OOM
 * pattern on all M MiB. Without the feature it must not deflate, and says so
 * (an error: both swapvisor and QEMU offer it). It stops following the target
 * after that: inflating again would take pages its workload now uses.
 *
 * Statistics (stats=1, when VIRTIO_BALLOON_F_STATS_VQ is offered): after
 * DRIVER_OK the guest puts one buffer of {le16 tag; le64 val} entries on
 * statsq and kicks; whenever the device gives the buffer back (it polls) the
 * guest refills it with fresh figures and puts it back. The figures are what
 * this guest knows: MEMTOT = the RAM of its memory map; MEMFREE = AVAIL = that
 * RAM minus what it uses (the runtime below rt_free_start, its 2 MiB ring
 * area, the workload's data while it holds data, the pool pages outside the
 * balloon that hold data, and the balloon itself); SWAP_IN, SWAP_OUT, MAJFLT,
 * MINFLT and CACHES = 0 (it has no swap, no page cache, and never takes a
 * page fault: memory is identity mapped up front). stats=0 declines the
 * feature (the device then numbers reporting_vq 2; QEMU always has a statsq,
 * so stats=0 is for swapvisor only).
 *
 * It finds the virtio-balloon device (id 5) on the command line and
 * negotiates VIRTIO_F_VERSION_1 + REPORTING (required), + STATS_VQ,
 * DEFLATE_ON_OOM and FREE_PAGE_HINT when offered (the free page hint queue is
 * never used).
 *
 * Queue numbering: inflateq 0, deflateq 1, then statsq and free_page_vq if
 * negotiated, then reporting_vq, as the Linux driver numbers them (absent
 * queues take no index). Accepting every offered feature makes this agree with
 * QEMU, which numbers by its own configuration (statsq always): reporting_vq
 * is 3 on both when statsq is accepted.
 *
 * Output: a line per round, then
 *   RESULT {"guest":"balloon","ok":..,"mib":..,"rounds":..,"stats_sent":..,
 *           "oom_deflated_pages":..,"reported_pages":..,"errors":..}
 * errors = pages with a wrong word (kept blocks, pool, OOM pages) or a
 * non-zero word (freed blocks, deflated pages), plus requests the device
 * failed to return, a NEEDS_RESET seen, a host that never inflated when
 * cycle=1 / oom_mib asked for it. Exit 0 if ok, 1 on errors, 2 on bad
 * parameters, too little RAM or no usable device.
 */
#include "runtime/rt.h"
#include "runtime/virtio.h"

#define BALLOON_F_STATS_VQ (1ull << 1)
#define BALLOON_F_DEFLATE_ON_OOM (1ull << 2)
#define BALLOON_F_FREE_PAGE_HINT (1ull << 3)
#define BALLOON_F_REPORTING (1ull << 5)

#define WORDS_PER_PAGE (RT_PAGE_SIZE / 8)
#define RANGES_PER_REQUEST 16
#define QUEUE_SIZE 64
#define RING_SLOT (64 * 1024) /* the 2 MiB ring area: one 64 KiB slot per queue / buffer */
#define WAIT_SPINS 100000000ull
#define MAX_REPORTED 5
#define PFNS_PER_REQUEST 256
#define MAX_POOL_PAGES (256u * 256u) /* 256 MiB */
#define MAX_BLOCKS 65536u
#define CONFIG_NUM_PAGES 0x100u
#define CONFIG_ACTUAL 0x104u
#define POOL_ROUND 0x5151ull
#define OOM_ROUND 0x00aaull

/* Statistics tags (virtio 1.2, 5.5.6.3). */
#define S_SWAP_IN 0
#define S_SWAP_OUT 1
#define S_MAJFLT 2
#define S_MINFLT 3
#define S_MEMFREE 4
#define S_MEMTOT 5
#define S_AVAIL 6
#define S_CACHES 7
#define STAT_ENTRIES 8
#define STAT_ENTRY_BYTES 10

/* What a pool page outside the balloon holds. */
enum pool_state { POOL_PATTERN = 0, POOL_ZERO = 1, POOL_OOM = 2 };

static struct virtio_dev g_dev;
static struct virtq g_vq;
static uint64_t g_errors;
static uint64_t g_printed;
/* The inflate/deflate path: its queues, the PFN buffer, the pool. */
static struct virtq g_inflateq, g_deflateq;
static uint32_t* g_pfns;
static uint64_t g_pool;            /* first pool page */
static uint64_t g_pool_pages;
static uint64_t g_actual;          /* pool pages [0, g_actual) are in the balloon */
static uint64_t g_peak;            /* most pages ever in the balloon */
static uint8_t g_pool_state[MAX_POOL_PAGES]; /* enum pool_state, for pages outside the balloon */
/* Statistics: the queue, the buffer, what the figures are made of. */
static struct virtq g_statsq;
static uint8_t* g_stats_buf;
static uint64_t g_stats_sent;
static uint64_t g_ram_total;       /* RAM in the memory map */
static uint64_t g_fixed_used;      /* runtime RAM + the 2 MiB ring area */
static uint64_t g_data_in_use;     /* workload bytes holding data now */
/* Which blocks round r frees (1) or keeps (0). */
static uint8_t g_freed[MAX_BLOCKS];

static inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline uint64_t word_of(uint64_t gpa, uint64_t round) {
  return mix64(gpa * 0x9e3779b97f4a7c15ull ^ round) | 1; /* never zero */
}

static void write_pattern(uint64_t base, uint64_t bytes, uint64_t round) {
  for (uint64_t p = base; p < base + bytes; p += RT_PAGE_SIZE) {
    uint64_t* w = (uint64_t*)(uintptr_t)p;
    for (uint64_t i = 0; i < WORDS_PER_PAGE; ++i) w[i] = word_of(p + 8 * i, round);
  }
}

/* Counts bad pages: expect the pattern of `round`, or zeros if round == 0. */
static uint64_t check(uint64_t base, uint64_t bytes, uint64_t round, const char* what) {
  uint64_t bad_pages = 0;
  for (uint64_t p = base; p < base + bytes; p += RT_PAGE_SIZE) {
    const volatile uint64_t* w = (const volatile uint64_t*)(uintptr_t)p;
    bool bad = false;
    for (uint64_t i = 0; i < WORDS_PER_PAGE; ++i) {
      uint64_t expected = round ? word_of(p + 8 * i, round) : 0;
      uint64_t got = w[i];
      if (got != expected) {
        if (g_printed < MAX_REPORTED) {
          ++g_printed;
          rt_printf("balloon: MISMATCH (%s) at 0x%lx: expected 0x%016lx got 0x%016lx\n", what, p + 8 * i,
                    expected, got);
        }
        bad = true;
        break;
      }
    }
    bad_pages += bad;
  }
  return bad_pages;
}

/* ------------------------------------------------------------- statistics */

static void put_stat(uint8_t* at, uint16_t tag, uint64_t val) {
  at[0] = (uint8_t)tag; /* le16 tag, le64 val, packed */
  at[1] = (uint8_t)(tag >> 8);
  for (unsigned i = 0; i < 8; ++i) at[2 + i] = (uint8_t)(val >> (8 * i));
}

/* RAM of the memory map inside [0, limit). */
static uint64_t ram_below(uint64_t limit) {
  const struct rt_mem_range* m = rt_memmap();
  uint64_t sum = 0;
  for (size_t i = 0; i < rt_memmap_count(); ++i) {
    if (m[i].type != RT_E820_RAM || m[i].addr >= limit) continue;
    uint64_t end = m[i].addr + m[i].size < limit ? m[i].addr + m[i].size : limit;
    sum += end - m[i].addr;
  }
  return sum;
}

/* Fills the statistics buffer with what this guest knows now and puts it on statsq. */
static void stats_send(void) {
  uint64_t pool_used = 0;
  for (uint64_t i = g_actual; i < g_pool_pages; ++i) pool_used += g_pool_state[i] != POOL_ZERO;
  uint64_t used = g_fixed_used + g_data_in_use + (pool_used + g_actual) * RT_PAGE_SIZE;
  uint64_t free_bytes = g_ram_total > used ? g_ram_total - used : 0;
  const uint64_t values[STAT_ENTRIES][2] = {
      {S_SWAP_IN, 0},         {S_SWAP_OUT, 0},   {S_MAJFLT, 0},          {S_MINFLT, 0},
      {S_MEMFREE, free_bytes}, {S_MEMTOT, g_ram_total}, {S_AVAIL, free_bytes}, {S_CACHES, 0},
  };
  for (unsigned i = 0; i < STAT_ENTRIES; ++i)
    put_stat(g_stats_buf + i * STAT_ENTRY_BYTES, (uint16_t)values[i][0], values[i][1]);
  struct virtq_buf buf = {(uint64_t)(uintptr_t)g_stats_buf, STAT_ENTRIES * STAT_ENTRY_BYTES, false};
  if (virtq_add(&g_statsq, &buf, 1) < 0) {
    rt_printf("balloon: statistics queue full\n");
    ++g_errors;
    return;
  }
  virtq_kick(&g_statsq);
  ++g_stats_sent;
}

/* If the device gave the statistics buffer back (it wants fresh figures), answer. */
static void stats_service(void) {
  if (!g_statsq.size) return;
  uint32_t written = 0;
  if (virtq_get_used(&g_statsq, &written) >= 0) stats_send();
}

/* ------------------------------------------------------------- reporting */

/* Sends one request of n ranges and waits for it. Returns false on timeout. */
static bool report(const struct virtq_buf* ranges, uint16_t n) {
  int head = virtq_add(&g_vq, ranges, n);
  if (head < 0) {
    rt_printf("balloon: queue full (%u free, need %u)\n", g_vq.num_free, n);
    return false;
  }
  virtq_kick(&g_vq);
  uint32_t written = 0;
  int got = virtq_wait_used(&g_vq, &written, WAIT_SPINS);
  if (got != head) {
    rt_printf("balloon: request %d not returned (got %d, device status 0x%x)\n", head, got, virtio_status(&g_dev));
    return false;
  }
  return true;
}

/* One PFN buffer of pool pages [first_page, first_page + n) on inflateq or deflateq, waited for. */
static bool send_pfns(struct virtq* q, uint64_t first_page, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) g_pfns[i] = (uint32_t)((g_pool + (first_page + i) * RT_PAGE_SIZE) >> 12);
  struct virtq_buf buf = {(uint64_t)(uintptr_t)g_pfns, n * 4u, false};
  int head = virtq_add(q, &buf, 1);
  if (head < 0) return false;
  virtq_kick(q);
  uint32_t written = 0;
  return virtq_wait_used(q, &written, WAIT_SPINS) == head;
}

/* Takes the top pages of the balloon back until it holds `target` pages; each
 * page must read zeros (the host dropped what it was given). */
static void deflate_to(uint64_t target, const char* what) {
  while (g_actual > target) {
    uint32_t n = (uint32_t)(g_actual - target < PFNS_PER_REQUEST ? g_actual - target : PFNS_PER_REQUEST);
    if (!send_pfns(&g_deflateq, g_actual - n, n)) {
      rt_printf("balloon: deflate request not returned\n");
      ++g_errors;
      return;
    }
    g_actual -= n;
    g_errors += check(g_pool + g_actual * RT_PAGE_SIZE, (uint64_t)n * RT_PAGE_SIZE, 0, what);
    for (uint32_t i = 0; i < n; ++i) g_pool_state[g_actual + i] = POOL_ZERO;
  }
}

/* Moves the balloon towards the host's target; returns the target. */
static uint64_t balloon_poll(void) {
  stats_service();
  uint64_t target = virtio_read32(&g_dev, CONFIG_NUM_PAGES);
  if (target > g_pool_pages) target = g_pool_pages;
  while (g_actual < target) {
    uint32_t n = (uint32_t)(target - g_actual < PFNS_PER_REQUEST ? target - g_actual : PFNS_PER_REQUEST);
    if (!send_pfns(&g_inflateq, g_actual, n)) {
      rt_printf("balloon: inflate request not returned\n");
      ++g_errors;
      break;
    }
    g_actual += n;
  }
  deflate_to(target, "deflated page");
  if (g_actual > g_peak) g_peak = g_actual;
  virtio_write32(&g_dev, CONFIG_ACTUAL, (uint32_t)g_actual);
  return target;
}

/* Reports the blocks g_freed marks, in ranges of one block, RANGES_PER_REQUEST
 * per request. Returns pages reported. */
static uint64_t report_freed(uint64_t data, uint64_t blocks, uint64_t chunk) {
  struct virtq_buf ranges[RANGES_PER_REQUEST];
  uint16_t n = 0;
  uint64_t pages = 0;
  for (uint64_t b = 0; b < blocks; ++b) {
    if (!g_freed[b]) continue;
    /* Linux adds reported pages as device-writable buffers (virtqueue_add_inbuf). */
    ranges[n++] = (struct virtq_buf){data + b * chunk, (uint32_t)chunk, true};
    pages += chunk / RT_PAGE_SIZE;
    if (n == RANGES_PER_REQUEST) {
      if (!report(ranges, n)) ++g_errors;
      n = 0;
    }
  }
  if (n && !report(ranges, n)) ++g_errors;
  return pages;
}

/* One request of k malformed ranges: the device must refuse them all. */
static void report_bogus(uint64_t k, uint64_t data, uint64_t ram_end) {
  struct virtq_buf ranges[RANGES_PER_REQUEST];
  uint16_t n = 0;
  for (uint64_t i = 0; i < k && n < RANGES_PER_REQUEST; ++i) {
    switch (i % 3) {
      case 0: ranges[n++] = (struct virtq_buf){data + 8, (uint32_t)RT_PAGE_SIZE, true}; break;   /* unaligned */
      case 1: ranges[n++] = (struct virtq_buf){ram_end, (uint32_t)RT_PAGE_SIZE, true}; break;    /* outside RAM */
      default: ranges[n++] = (struct virtq_buf){data, 0, true}; break;                           /* empty */
    }
  }
  if (n && !report(ranges, n)) ++g_errors;
}

/* The first RAM range holding [start, start + need) with start 2 MiB aligned
 * above the runtime; returns start or 0. *ram_end = end of all RAM seen. */
static uint64_t find_ram(uint64_t need, uint64_t* ram_end) {
  const struct rt_mem_range* m = rt_memmap();
  uint64_t low = rt_free_start() > 2 * RT_MIB ? rt_free_start() : 2 * RT_MIB;
  low = (low + 2 * RT_MIB - 1) & ~(2 * RT_MIB - 1);
  uint64_t found = 0;
  *ram_end = 0;
  for (size_t i = 0; i < rt_memmap_count(); ++i) {
    if (m[i].type != RT_E820_RAM) continue;
    uint64_t start = m[i].addr > low ? m[i].addr : low;
    start = (start + 2 * RT_MIB - 1) & ~(2 * RT_MIB - 1);
    uint64_t end = m[i].addr + m[i].size;
    if (end > *ram_end) *ram_end = end;
    if (end > rt_mapped_limit()) end = rt_mapped_limit();
    if (!found && start < end && end - start >= need) found = start;
  }
  return found;
}

/* Spins about a millisecond's worth, answering the device meanwhile. */
static void idle(void) {
  for (volatile uint64_t spin = 0; spin < 1000000; ++spin) {}
  stats_service();
}

/* The deflate-on-OOM step: the workload needs the top oom_pages of the pool. */
static uint64_t oom_phase(uint64_t oom_pages) {
  /* Wait (bounded) for the host to inflate and the balloon to settle on its target. */
  uint64_t deadline = rt_rdtsc() + 60 * rt_tsc_hz();
  rt_printf("balloon: oom: waiting for the host to inflate the balloon\n");
  uint64_t target = balloon_poll();
  while ((g_actual == 0 || g_actual != target) && rt_rdtsc() < deadline) {
    idle();
    target = balloon_poll();
  }
  if (g_actual == 0) {
    rt_printf("balloon: oom: the host never inflated the balloon\n");
    ++g_errors;
    return 0;
  }
  uint64_t first = g_pool_pages - oom_pages; /* the workload's pages: [first, g_pool_pages) */
  uint64_t taken = 0;
  rt_printf("balloon: oom: need %lu pages, %lu free outside a balloon of %lu (target %lu)\n", oom_pages,
            g_pool_pages - g_actual, g_actual, target);
  if (g_actual > first) {
    if (!(g_dev.negotiated & BALLOON_F_DEFLATE_ON_OOM)) {
      rt_printf("balloon: oom: VIRTIO_BALLOON_F_DEFLATE_ON_OOM not negotiated: may not deflate unasked\n");
      ++g_errors;
      return 0;
    }
    taken = g_actual - first;
    deflate_to(first, "OOM-deflated page");
    virtio_write32(&g_dev, CONFIG_ACTUAL, (uint32_t)g_actual);
  }
  /* Now the workload uses them. */
  write_pattern(g_pool + first * RT_PAGE_SIZE, oom_pages * RT_PAGE_SIZE, OOM_ROUND);
  for (uint64_t i = first; i < g_pool_pages; ++i) g_pool_state[i] = POOL_OOM;
  uint64_t bad = check(g_pool + first * RT_PAGE_SIZE, oom_pages * RT_PAGE_SIZE, OOM_ROUND, "OOM page");
  g_errors += bad;
  rt_printf("balloon: oom: deflated %lu pages unasked, balloon now %lu, target %lu, bad OOM pages %lu\n", taken,
            g_actual, target, bad);
  stats_service();
  return taken;
}

int main(void) {
  uint64_t mib = arg_u64("mib", 16);
  uint64_t rounds = arg_u64("rounds", 3);
  uint64_t chunk = arg_u64("chunk_kib", 2048) * 1024;
  uint64_t bogus = arg_u64("bogus", 0);
  uint64_t pool_mib = arg_u64("pool_mib", 0);
  uint64_t cycle = arg_u64("cycle", 0);
  uint64_t want_stats = arg_u64("stats", 1);
  uint64_t oom_mib = arg_u64("oom_mib", 0);
  if (mib == 0 || mib > (1ull << 20) || rounds == 0 || rounds > 1000000 || chunk == 0 ||
      chunk % RT_PAGE_SIZE != 0 || chunk > (1ull << 31) || bogus > RANGES_PER_REQUEST ||
      pool_mib * (RT_MIB / RT_PAGE_SIZE) > MAX_POOL_PAGES || cycle > 1 || want_stats > 1 || oom_mib > pool_mib ||
      (mib * RT_MIB + chunk - 1) / chunk > MAX_BLOCKS) {
    rt_printf("balloon: error: need mib >= 1, 1 <= rounds <= 1000000, chunk_kib a multiple of 4 below 2 GiB "
              "and at most %u blocks of it in mib, bogus <= %d, pool_mib <= 256, cycle and stats 0 or 1, "
              "oom_mib <= pool_mib\n", MAX_BLOCKS, RANGES_PER_REQUEST);
    return 2;
  }
  uint64_t bytes = mib * RT_MIB;
  uint64_t ram_end = 0;
  uint64_t area = find_ram(2 * RT_MIB + bytes + pool_mib * RT_MIB, &ram_end);
  if (!area) {
    rt_printf("balloon: error: mib=%lu does not fit in one RAM range below 0x%lx\n", mib, rt_mapped_limit());
    return 2;
  }
  uint64_t rings = area;             /* queues and buffers: 64 KiB slots in the first 2 MiB */
  uint64_t data = area + 2 * RT_MIB; /* the workload: 2 MiB aligned */
  /* Blocks of `chunk`, the last one possibly shorter; pairs (2i, 2i+1). */
  uint64_t blocks = bytes / chunk;   /* whole blocks only are ever freed */
  uint64_t pairs = blocks / 2;

  if (virtio_find(VIRTIO_ID_BALLOON, &g_dev) != 0) {
    rt_printf("balloon: error: no virtio-balloon (start swapvisor with --balloon)\n");
    rt_printf("RESULT {\"guest\":\"balloon\",\"ok\":false,\"mib\":%lu,\"rounds\":0,\"reported_pages\":0,"
              "\"errors\":1}\n", mib);
    return 2;
  }
  uint64_t wanted = BALLOON_F_REPORTING | BALLOON_F_DEFLATE_ON_OOM | BALLOON_F_FREE_PAGE_HINT |
                    (want_stats ? BALLOON_F_STATS_VQ : 0);
  if (virtio_negotiate(&g_dev, wanted) != 0 || !(g_dev.negotiated & BALLOON_F_REPORTING)) {
    rt_printf("balloon: error: device does not offer VIRTIO_BALLOON_F_REPORTING (offered 0x%lx)\n",
              g_dev.offered);
    return 2;
  }
  /* Linux's numbering: a queue takes an index only if its feature was negotiated. */
  uint16_t stats_index = 2;
  uint16_t qindex = 2;
  if (g_dev.negotiated & BALLOON_F_STATS_VQ) ++qindex;
  if (g_dev.negotiated & BALLOON_F_FREE_PAGE_HINT) ++qindex;
  if (virtq_bytes(QUEUE_SIZE) > RING_SLOT || virtq_setup(&g_dev, &g_vq, qindex, QUEUE_SIZE, rings) != 0) {
    rt_printf("balloon: error: cannot set up the reporting queue %u\n", qindex);
    return 2;
  }
  g_pool = data + bytes;
  g_pool_pages = pool_mib * (RT_MIB / RT_PAGE_SIZE);
  g_pfns = (uint32_t*)(uintptr_t)(rings + 3 * RING_SLOT);
  if (g_pool_pages && (virtq_setup(&g_dev, &g_inflateq, 0, QUEUE_SIZE, rings + RING_SLOT) != 0 ||
                       virtq_setup(&g_dev, &g_deflateq, 1, QUEUE_SIZE, rings + 2 * RING_SLOT) != 0)) {
    rt_printf("balloon: error: cannot set up inflateq / deflateq\n");
    return 2;
  }
  g_stats_buf = (uint8_t*)(uintptr_t)(rings + 5 * RING_SLOT);
  if ((g_dev.negotiated & BALLOON_F_STATS_VQ) &&
      virtq_setup(&g_dev, &g_statsq, stats_index, QUEUE_SIZE, rings + 4 * RING_SLOT) != 0) {
    rt_printf("balloon: error: cannot set up the statistics queue %u\n", stats_index);
    return 2;
  }
  if (g_pool_pages) write_pattern(g_pool, g_pool_pages * RT_PAGE_SIZE, POOL_ROUND);
  g_ram_total = ram_below(UINT64_MAX);
  g_fixed_used = ram_below(rt_free_start()) + 2 * RT_MIB;
  virtio_driver_ok(&g_dev);
  /* The first statistics buffer goes out once the device is live (3.1.1: no notify before DRIVER_OK). */
  if (g_statsq.size) stats_send();
  rt_printf("balloon: device at 0x%lx (irq %u), features 0x%lx, reporting queue %u size %u%s\n", g_dev.base,
            g_dev.irq, g_dev.negotiated, qindex, g_vq.size, g_statsq.size ? ", statistics queue 2" : "");
  rt_printf("balloon: mib=%lu rounds=%lu chunk_kib=%lu bogus=%lu: data [0x%lx - 0x%lx), freeing %lu of %lu "
            "blocks a round\n", mib, rounds, chunk / 1024, bogus, data, data + bytes, pairs, blocks);

  uint64_t reported_pages = 0;
  for (uint64_t r = 1; r <= rounds; ++r) {
    uint64_t before = g_errors;
    if (g_pool_pages) balloon_poll();
    stats_service();
    write_pattern(data, bytes, r);
    g_data_in_use = bytes;
    uint64_t bad_written = check(data, bytes, r, "written");
    /* This round's half: one block of each pair, picked by a hash of (pair, round). */
    for (uint64_t b = 0; b < blocks + 1 && b < MAX_BLOCKS; ++b) g_freed[b] = 0;
    for (uint64_t i = 0; i < pairs; ++i) g_freed[2 * i + (mix64(i * 0x9e3779b97f4a7c15ull + r) & 1)] = 1;
    if (bogus) report_bogus(bogus, data, ram_end);
    uint64_t freed_pages = report_freed(data, blocks, chunk);
    reported_pages += freed_pages;
    g_data_in_use = bytes - freed_pages * RT_PAGE_SIZE;
    stats_service();
    if (virtio_status(&g_dev) & VIRTIO_STATUS_NEEDS_RESET) {
      rt_printf("balloon: device entered NEEDS_RESET\n");
      ++g_errors;
    }
    uint64_t bad_kept = 0, bad_freed = 0;
    for (uint64_t b = 0; b * chunk < bytes; ++b) {
      uint64_t len = bytes - b * chunk < chunk ? bytes - b * chunk : chunk;
      if (b < blocks && g_freed[b]) {
        bad_freed += check(data + b * chunk, len, 0, "freed block");
      } else {
        bad_kept += check(data + b * chunk, len, r, "kept block");
      }
    }
    g_errors += bad_written + bad_kept + bad_freed;
    rt_printf("balloon: round %lu/%lu: %lu pages reported, bad pages: written %lu, kept %lu, freed %lu; "
              "balloon %lu pages%s\n", r, rounds, freed_pages, bad_written, bad_kept, bad_freed, g_actual,
              g_errors - before > bad_written + bad_kept + bad_freed ? ", request errors" : "");
  }
  uint64_t oom_deflated = 0;
  if (g_pool_pages) {
    /* cycle=1: wait (bounded) until the host has inflated the balloon and let it go again. */
    uint64_t deadline = rt_rdtsc() + 60 * rt_tsc_hz();
    uint64_t target = balloon_poll();
    while (cycle && (g_peak == 0 || target != 0 || g_actual != 0) && rt_rdtsc() < deadline) {
      idle();
      target = balloon_poll();
    }
    if (cycle && (g_peak == 0 || g_actual != 0)) {
      rt_printf("balloon: the host did not inflate and deflate the balloon in time (peak %lu, now %lu)\n", g_peak,
                g_actual);
      ++g_errors;
    }
    if (oom_mib) oom_deflated = oom_phase(oom_mib * (RT_MIB / RT_PAGE_SIZE));
    /* Pool pages outside the balloon hold what the guest last put there. */
    uint64_t bad_pool = 0;
    for (uint64_t i = g_actual; i < g_pool_pages; ++i) {
      uint64_t round = g_pool_state[i] == POOL_PATTERN ? POOL_ROUND : g_pool_state[i] == POOL_OOM ? OOM_ROUND : 0;
      bad_pool += check(g_pool + i * RT_PAGE_SIZE, RT_PAGE_SIZE, round, "pool page");
    }
    g_errors += bad_pool;
    rt_printf("balloon: pool %lu pages, balloon peak %lu pages, %lu now, bad pool pages %lu\n", g_pool_pages, g_peak,
              g_actual, bad_pool);
  }
  stats_service();
  bool ok = g_errors == 0;
  rt_printf("RESULT {\"guest\":\"balloon\",\"ok\":%s,\"mib\":%lu,\"rounds\":%lu,\"stats_sent\":%lu,"
            "\"oom_deflated_pages\":%lu,\"reported_pages\":%lu,\"errors\":%lu}\n",
            ok ? "true" : "false", mib, rounds, g_stats_sent, oom_deflated, reported_pages, g_errors);
  return ok ? 0 : 1;
}
