/*
 * balloon: free page reporting through virtio-balloon, checked end to end.
 *
 * Parameters (guest command line): mib=N rounds=R chunk_kib=C bogus=K
 * pool_mib=P cycle=0|1, defaults mib=16 rounds=3 chunk_kib=2048 bogus=0
 * pool_mib=0 cycle=0; plus the virtio_mmio.device= entry the VMM appends
 * (swapvisor run --balloon).
 *
 * Inflate / deflate (pool_mib > 0): P MiB after the workload are the balloon's
 * pool, filled with a pattern at start. Before each round (and after the last,
 * while it waits) the guest reads the host's target (config num_pages) and moves
 * towards it: inflating sends the PFNs of pool pages, lowest first, on inflateq
 * (queue 0) and never touches them again; deflating sends the highest inflated
 * PFNs on deflateq (queue 1) and then checks that each page it got back reads as
 * zeros (the host discarded it). `actual` is written back to the config space.
 * At the end every pool page never inflated must still hold its pattern.
 * cycle=1: after the rounds, keep polling until the balloon has been inflated
 * and deflated back to 0 (bounded: about a minute), so a host can squeeze the
 * guest and then let it finish.
 *
 * It finds the virtio-balloon device (id 5) on the command line, negotiates
 * VIRTIO_F_VERSION_1 + VIRTIO_BALLOON_F_REPORTING and sets up the reporting
 * queue only. Each round writes a round-specific pattern to N MiB of RAM,
 * verifies it, reports the second half as free in C KiB ranges (several
 * ranges per request, as Linux's page reporting does), waits for each request
 * to come back, then expects the second half to read all zeros (the VMM
 * dropped it) and the first half to still hold the pattern. bogus=K adds one
 * request per round of K malformed ranges (unaligned, outside RAM) that the
 * device must refuse without touching memory or needing a reset.
 *
 * Queue numbering: reporting_vq follows inflateq, deflateq and any offered
 * statsq / free_page_vq (QEMU offers statsq; swapvisor does not, so it is
 * queue 2 there). STATS_VQ and FREE_PAGE_HINT are accepted when offered (and
 * their queues left unused), so that numbering by offered and by negotiated
 * features gives the same index.
 *
 * Output: a line per round, then
 *   RESULT {"guest":"balloon","ok":..,"mib":..,"rounds":..,"reported_pages":..,"errors":..}
 * errors = pages with a wrong word (first half) or a non-zero word (second
 * half), plus requests the device failed to return. Exit 0 if ok, 1 on
 * errors, 2 on bad parameters, too little RAM or no usable device.
 */
#include "runtime/rt.h"
#include "runtime/virtio.h"

#define BALLOON_F_STATS_VQ (1ull << 1)
#define BALLOON_F_FREE_PAGE_HINT (1ull << 3)
#define BALLOON_F_REPORTING (1ull << 5)

#define WORDS_PER_PAGE (RT_PAGE_SIZE / 8)
#define RANGES_PER_REQUEST 16
#define QUEUE_SIZE 64
#define RING_AREA (256 * 1024)
#define WAIT_SPINS 100000000ull
#define MAX_REPORTED 5
#define PFNS_PER_REQUEST 256
#define MAX_POOL_PAGES (256u * 256u) /* 256 MiB */
#define CONFIG_NUM_PAGES 0x100u
#define CONFIG_ACTUAL 0x104u
#define POOL_ROUND 0x5151ull

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
static uint8_t g_returned[MAX_POOL_PAGES]; /* 1: deflated, must read zeros until reused */

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

/* One PFN buffer on inflateq or deflateq, waited for. */
static bool send_pfns(struct virtq* q, uint64_t first_page, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) g_pfns[i] = (uint32_t)((g_pool + (first_page + i) * RT_PAGE_SIZE) >> 12);
  struct virtq_buf buf = {(uint64_t)(uintptr_t)g_pfns, n * 4u, false};
  int head = virtq_add(q, &buf, 1);
  if (head < 0) return false;
  virtq_kick(q);
  uint32_t written = 0;
  return virtq_wait_used(q, &written, WAIT_SPINS) == head;
}

/* Moves the balloon towards the host's target; returns the target. */
static uint64_t balloon_poll(void) {
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
  while (g_actual > target) {
    uint32_t n = (uint32_t)(g_actual - target < PFNS_PER_REQUEST ? g_actual - target : PFNS_PER_REQUEST);
    if (!send_pfns(&g_deflateq, g_actual - n, n)) {
      rt_printf("balloon: deflate request not returned\n");
      ++g_errors;
      break;
    }
    g_actual -= n;
    /* The host dropped what we gave it: each page must come back as zeros. */
    g_errors += check(g_pool + g_actual * RT_PAGE_SIZE, (uint64_t)n * RT_PAGE_SIZE, 0, "deflated page");
    for (uint32_t i = 0; i < n; ++i) g_returned[g_actual + i] = 1;
  }
  if (g_actual > g_peak) g_peak = g_actual;
  virtio_write32(&g_dev, CONFIG_ACTUAL, (uint32_t)g_actual);
  return target;
}

/* Reports [base, base + bytes) in chunk-sized ranges. Returns pages reported. */
static uint64_t report_free(uint64_t base, uint64_t bytes, uint64_t chunk) {
  struct virtq_buf ranges[RANGES_PER_REQUEST];
  uint16_t n = 0;
  uint64_t pages = 0;
  for (uint64_t at = base; at < base + bytes; at += chunk) {
    uint64_t len = base + bytes - at < chunk ? base + bytes - at : chunk;
    /* Linux adds reported pages as device-writable buffers (virtqueue_add_inbuf). */
    ranges[n++] = (struct virtq_buf){at, (uint32_t)len, true};
    pages += len / RT_PAGE_SIZE;
    if (n == RANGES_PER_REQUEST || at + chunk >= base + bytes) {
      if (!report(ranges, n)) ++g_errors;
      n = 0;
    }
  }
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

int main(void) {
  uint64_t mib = arg_u64("mib", 16);
  uint64_t rounds = arg_u64("rounds", 3);
  uint64_t chunk = arg_u64("chunk_kib", 2048) * 1024;
  uint64_t bogus = arg_u64("bogus", 0);
  uint64_t pool_mib = arg_u64("pool_mib", 0);
  uint64_t cycle = arg_u64("cycle", 0);
  if (mib == 0 || mib > (1ull << 20) || rounds == 0 || rounds > 1000000 || chunk == 0 ||
      chunk % RT_PAGE_SIZE != 0 || chunk > (1ull << 31) || bogus > RANGES_PER_REQUEST ||
      pool_mib * (RT_MIB / RT_PAGE_SIZE) > MAX_POOL_PAGES || cycle > 1) {
    rt_printf("balloon: error: need mib >= 1, 1 <= rounds <= 1000000, chunk_kib a multiple of 4 "
              "below 2 GiB, bogus <= %d, pool_mib <= 256, cycle 0 or 1\n", RANGES_PER_REQUEST);
    return 2;
  }
  uint64_t bytes = mib * RT_MIB;
  uint64_t ram_end = 0;
  uint64_t area = find_ram(2 * RT_MIB + bytes + pool_mib * RT_MIB, &ram_end);
  if (!area) {
    rt_printf("balloon: error: mib=%lu does not fit in one RAM range below 0x%lx\n", mib, rt_mapped_limit());
    return 2;
  }
  uint64_t rings = area;             /* the queue: 256 KiB at the start */
  uint64_t data = area + 2 * RT_MIB; /* the workload: 2 MiB aligned */
  uint64_t half = (bytes / 2) & ~(RT_PAGE_SIZE - 1);
  uint64_t kept = bytes - half;      /* first part keeps its data */

  if (virtio_find(VIRTIO_ID_BALLOON, &g_dev) != 0) {
    rt_printf("balloon: error: no virtio-balloon (start swapvisor with --balloon)\n");
    rt_printf("RESULT {\"guest\":\"balloon\",\"ok\":false,\"mib\":%lu,\"rounds\":0,\"reported_pages\":0,"
              "\"errors\":1}\n", mib);
    return 2;
  }
  if (virtio_negotiate(&g_dev, BALLOON_F_REPORTING | BALLOON_F_STATS_VQ | BALLOON_F_FREE_PAGE_HINT) != 0 ||
      !(g_dev.negotiated & BALLOON_F_REPORTING)) {
    rt_printf("balloon: error: device does not offer VIRTIO_BALLOON_F_REPORTING (offered 0x%lx)\n",
              g_dev.offered);
    return 2;
  }
  uint16_t qindex = 2;
  if (g_dev.offered & BALLOON_F_STATS_VQ) ++qindex;
  if (g_dev.offered & BALLOON_F_FREE_PAGE_HINT) ++qindex;
  /* The ring area: reporting queue, inflateq, deflateq (64 KiB each), then the PFN buffer. */
  if (virtq_bytes(QUEUE_SIZE) > RING_AREA / 4 || virtq_setup(&g_dev, &g_vq, qindex, QUEUE_SIZE, rings) != 0) {
    rt_printf("balloon: error: cannot set up the reporting queue %u\n", qindex);
    return 2;
  }
  g_pool = data + bytes;
  g_pool_pages = pool_mib * (RT_MIB / RT_PAGE_SIZE);
  g_pfns = (uint32_t*)(uintptr_t)(rings + 3 * (RING_AREA / 4));
  if (g_pool_pages && (virtq_setup(&g_dev, &g_inflateq, 0, QUEUE_SIZE, rings + RING_AREA / 4) != 0 ||
                       virtq_setup(&g_dev, &g_deflateq, 1, QUEUE_SIZE, rings + 2 * (RING_AREA / 4)) != 0)) {
    rt_printf("balloon: error: cannot set up inflateq / deflateq\n");
    return 2;
  }
  if (g_pool_pages) write_pattern(g_pool, g_pool_pages * RT_PAGE_SIZE, POOL_ROUND);
  virtio_driver_ok(&g_dev);
  rt_printf("balloon: device at 0x%lx (irq %u), features 0x%lx, reporting queue %u size %u\n", g_dev.base,
            g_dev.irq, g_dev.negotiated, qindex, g_vq.size);
  rt_printf("balloon: mib=%lu rounds=%lu chunk_kib=%lu bogus=%lu: data [0x%lx - 0x%lx), reporting the "
            "upper %lu KiB\n", mib, rounds, chunk / 1024, bogus, data, data + bytes, half / 1024);

  uint64_t reported_pages = 0;
  for (uint64_t r = 1; r <= rounds; ++r) {
    uint64_t before = g_errors;
    if (g_pool_pages) balloon_poll();
    write_pattern(data, bytes, r);
    uint64_t bad_written = check(data, bytes, r, "written");
    if (bogus) report_bogus(bogus, data + kept, ram_end);
    reported_pages += report_free(data + kept, half, chunk);
    if (virtio_status(&g_dev) & VIRTIO_STATUS_NEEDS_RESET) {
      rt_printf("balloon: device entered NEEDS_RESET\n");
      ++g_errors;
    }
    uint64_t bad_kept = check(data, kept, r, "kept half");
    uint64_t bad_freed = check(data + kept, half, 0, "reported half");
    g_errors += bad_written + bad_kept + bad_freed;
    rt_printf("balloon: round %lu/%lu: %lu pages reported, bad pages: written %lu, kept %lu, reported %lu%s\n", r,
              rounds, half / RT_PAGE_SIZE, bad_written, bad_kept, bad_freed,
              g_errors - before > bad_written + bad_kept + bad_freed ? ", request errors" : "");
  }
  if (g_pool_pages) {
    /* cycle=1: wait (bounded) until the host has inflated the balloon and let it go again. */
    uint64_t deadline = rt_rdtsc() + 60 * rt_tsc_hz();
    uint64_t target = balloon_poll();
    while (cycle && (g_peak == 0 || target != 0 || g_actual != 0) && rt_rdtsc() < deadline) {
      for (volatile uint64_t spin = 0; spin < 1000000; ++spin) {}
      target = balloon_poll();
    }
    if (cycle && (g_peak == 0 || g_actual != 0)) {
      rt_printf("balloon: the host did not inflate and deflate the balloon in time (peak %lu, now %lu)\n", g_peak,
                g_actual);
      ++g_errors;
    }
    /* Pool pages never given away hold their pattern; returned ones read zeros. */
    uint64_t bad_pool = 0;
    for (uint64_t i = g_actual; i < g_pool_pages; ++i)
      bad_pool += check(g_pool + i * RT_PAGE_SIZE, RT_PAGE_SIZE, g_returned[i] ? 0 : POOL_ROUND, "pool page");
    g_errors += bad_pool;
    rt_printf("balloon: pool %lu pages, balloon peak %lu pages, %lu now, bad pool pages %lu\n", g_pool_pages, g_peak,
              g_actual, bad_pool);
  }
  bool ok = g_errors == 0;
  rt_printf("RESULT {\"guest\":\"balloon\",\"ok\":%s,\"mib\":%lu,\"rounds\":%lu,\"reported_pages\":%lu,"
            "\"errors\":%lu}\n", ok ? "true" : "false", mib, rounds, reported_pages, g_errors);
  return ok ? 0 : 1;
}
