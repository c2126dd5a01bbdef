/*
 * kvs: an in-guest key-value store driven by a Zipfian key stream; the
 * overcommit workload of bench/run and tests/scripts/kvs_test.sh.
 *
 * Parameters (guest command line), defaults in brackets:
 *   mib=N [64]       table size; open addressing, linear probing, fixed slots
 *   value=B [96]     value bytes (rounded up to 8); slot = 32 B header + value
 *   content=random|text [random]  what a value (and an empty slot's filler)
 *                    holds: random bytes (a page of the table does not compress:
 *                    lz4 1.18x, over zswap's 3/4-page bar), or text-like
 *                    phrases of a 16-entry vocabulary (lz4 2.56x)
 *   keys=K [50% of the slots]  keys preloaded before the timed phase
 *   read=P [90]      percent of operations that are reads (the rest writes)
 *   skew=S [99]      Zipf exponent theta = S/100 (0 = uniform, < 100)
 *   ops=N [100000]   operations in total (split over the workers), or
 *   secs=T [0]       run for T seconds instead (when nonzero)
 *   threads=W [1]    workers, one per CPU (rt_run_workers)
 *   seed=X [1], corrupt=C [0] (self-test: damage C values after the preload)
 *
 * Every value is derived from (key, version) and carries a checksum over key,
 * version and value bytes. A read copies the slot under its lock and checks
 * the checksum; a write bumps the version and rewrites value and checksum.
 * After the timed phase a final scan checks every slot and that exactly K
 * keys are present. errors = bad reads + bad slots in the scan + missing keys.
 *
 * Latency: TSC ticks per operation into a log-linear histogram per worker
 * (16 sub-buckets per power of two, < 6.25 % error), merged at the end.
 *
 * Output:
 *   RESULT {"guest":"kvs","ok":..,"ops":..,"ops_per_s":..,"p50_us":..,"p99_us":..,
 *           "p999_us":..,"errors":..,"threads":..,"keys":..,"mib":..}
 * Exit: 0 without errors, 1 with errors, 2 for bad parameters or too little RAM.
 */
#include "runtime/layout.h"
#include "runtime/rt.h"

#define LOW_SKIP (2 * RT_MIB)
#define HDR_BYTES 32
#define SUB_BITS 4
#define BUCKETS (64 << SUB_BITS)
#define MAX_VALUE 4096
#define GOLDEN 0x9e3779b97f4a7c15ull

struct slot {
  uint64_t key; /* 0 = empty; key ids are 1..K */
  uint32_t lock;
  uint32_t pad;
  uint64_t version;
  uint64_t checksum;
  uint64_t value[]; /* value_words */
};

struct worker_stats {
  uint64_t ops, reads, errors, reported;
  uint64_t hist[BUCKETS];
};

struct job {
  char* table;
  uint64_t slots, slot_bytes, value_words, keys;
  uint64_t ops_total, deadline_ticks, read_pct, seed, corrupt;
  unsigned threads;
  double theta, zetan, eta, alpha, zeta2;
  uint64_t start, end; /* TSC of the timed phase (worker 0) */
  struct rt_barrier barrier;
  struct worker_stats stats[RT_MAX_CPUS];
};

static struct job g_job;

static inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* ---------------------------------------------------------------- math */
/* Freestanding ln/exp for the Zipf generator (relative error ~1e-15). */

static double ln_d(double x) {
  union { double d; uint64_t u; } v = {x};
  int e = (int)((v.u >> 52) & 0x7ff) - 1023;
  v.u = (v.u & 0x000fffffffffffffull) | 0x3ff0000000000000ull; /* m in [1, 2) */
  double m = v.d;
  if (m > 1.4142135623730951) {
    m *= 0.5;
    ++e;
  }
  double s = (m - 1) / (m + 1), s2 = s * s, term = s, sum = 0;
  for (int k = 1; k < 40; k += 2) {
    sum += term / k;
    term *= s2;
  }
  return 2 * sum + e * 0.6931471805599453;
}

static double exp_d(double x) {
  if (x < -700) return 0;
  if (x > 700) x = 700;
  double kf = x / 0.6931471805599453;
  int k = (int)(kf < 0 ? kf - 0.5 : kf + 0.5);
  double r = x - k * 0.6931471805599453, term = 1, sum = 1;
  for (int i = 1; i < 25; ++i) {
    term *= r / i;
    sum += term;
  }
  union { double d; uint64_t u; } v = {sum};
  v.u += (uint64_t)(int64_t)k << 52;
  return v.d;
}

static double pow_d(double b, double e) { return b <= 0 ? 0 : exp_d(e * ln_d(b)); }

/* ---------------------------------------------------------------- Zipf */
/* Gray et al., "Quickly generating billion-record synthetic databases"
 * (SIGMOD 1994): rank 0 is the hottest; theta in [0, 1). */

static void zipf_init(struct job* j) {
  double z = 0;
  for (uint64_t i = 1; i <= j->keys; ++i) z += 1 / pow_d((double)i, j->theta);
  j->zetan = z;
  j->zeta2 = 1 + 1 / pow_d(2, j->theta);
  j->alpha = 1 / (1 - j->theta);
  j->eta = (1 - pow_d(2.0 / (double)j->keys, 1 - j->theta)) / (1 - j->zeta2 / z);
}

static uint64_t zipf_next(const struct job* j, uint64_t* rng) {
  *rng = mix64(*rng + GOLDEN);
  double u = (double)(*rng >> 11) / 9007199254740992.0;
  double uz = u * j->zetan;
  if (uz < 1) return 0;
  if (uz < j->zeta2) return 1;
  uint64_t r = (uint64_t)((double)j->keys * pow_d(j->eta * u - j->eta + 1, j->alpha));
  return r < j->keys ? r : j->keys - 1;
}

/* ---------------------------------------------------------------- table */

static inline struct slot* slot_at(const struct job* j, uint64_t i) {
  return (struct slot*)(j->table + i * j->slot_bytes);
}

static uint64_t checksum(uint64_t key, uint64_t version, const uint64_t* v, uint64_t words) {
  uint64_t c = mix64(key * GOLDEN ^ mix64(version));
  for (uint64_t i = 0; i < words; ++i) c = mix64(c ^ v[i]) + i;
  return c;
}

/* content=text: each value is a run of words and phrases, each chosen by a hash
 * of (key, version, position), so it is still a function of (key, version) alone.
 * Measured on the table's 4 KiB pages (64 MiB, 128 B slots, default load): lz4
 * 2.56x, zstd-1 3.87x; content=random: lz4 1.18x, every page over 3 KiB. */
static const char* const kWords[16] = {"the guest page ", "of the host ", "and a swap slot ", "memory ", "page ",
                                       "cold data ", "guest ", "warm host ", "slot ", "value of a key ", "key ",
                                       "store ", "cold ", "warm ", "data ", "a "};
static bool g_text_values;

static void fill_value(uint64_t key, uint64_t version, uint64_t* v, uint64_t words) {
  uint64_t k = mix64(key ^ (version * 0x632be59bd9b4e019ull));
  if (!g_text_values) {
    for (uint64_t i = 0; i < words; ++i) v[i] = mix64(k + i * GOLDEN);
    return;
  }
  uint8_t* out = (uint8_t*)v;
  uint64_t n = 0, bytes = words * 8;
  for (uint64_t w = 0; n < bytes; ++w) {
    for (const char* c = kWords[mix64(k + w * GOLDEN) & 15]; *c && n < bytes; ++c) out[n++] = (uint8_t)*c;
  }
}

static void slot_lock(struct slot* s) {
  while (__atomic_exchange_n(&s->lock, 1, __ATOMIC_ACQUIRE)) {
    while (__atomic_load_n(&s->lock, __ATOMIC_RELAXED)) rt_pause();
  }
}
static void slot_unlock(struct slot* s) { __atomic_store_n(&s->lock, 0, __ATOMIC_RELEASE); }

/* Rank r (0 = hottest) -> key id; the hash spreads hot keys over the table. */
static inline uint64_t key_of_rank(uint64_t r) { return r + 1; }
static inline uint64_t home_of(const struct job* j, uint64_t key) { return mix64(key * GOLDEN) % j->slots; }

static void insert(struct job* j, uint64_t key) {
  for (uint64_t i = home_of(j, key);; i = i + 1 == j->slots ? 0 : i + 1) {
    struct slot* s = slot_at(j, i);
    uint64_t empty = 0;
    /* Claims the slot; pairs with nothing before the barrier that ends the preload. */
    if (__atomic_compare_exchange_n(&s->key, &empty, key, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      s->version = 1;
      fill_value(key, 1, s->value, j->value_words);
      s->checksum = checksum(key, 1, s->value, j->value_words);
      return;
    }
  }
}

static struct slot* lookup(const struct job* j, uint64_t key) {
  for (uint64_t i = home_of(j, key), n = 0; n < j->slots; ++n, i = i + 1 == j->slots ? 0 : i + 1) {
    struct slot* s = slot_at(j, i);
    uint64_t k = __atomic_load_n(&s->key, __ATOMIC_RELAXED); /* keys never change after the preload */
    if (k == key) return s;
    if (k == 0) return NULL;
  }
  return NULL;
}

static void report_error(struct worker_stats* st, const char* what, uint64_t key, uint64_t version) {
  ++st->errors;
  if (st->reported++ < 3) rt_printf("kvs: ERROR %s: key %lu version %lu\n", what, key, version);
}

/* One operation on key `key`; returns false on a checksum failure. */
static void do_op(struct job* j, struct worker_stats* st, uint64_t key, bool read, uint64_t* buf) {
  struct slot* s = lookup(j, key);
  if (!s) {
    report_error(st, "missing key", key, 0);
    return;
  }
  slot_lock(s);
  if (read) {
    uint64_t version = s->version, sum = s->checksum;
    for (uint64_t i = 0; i < j->value_words; ++i) buf[i] = s->value[i];
    slot_unlock(s);
    if (checksum(key, version, buf, j->value_words) != sum) report_error(st, "checksum mismatch on read", key, version);
    ++st->reads;
  } else {
    uint64_t version = s->version + 1;
    fill_value(key, version, s->value, j->value_words);
    s->checksum = checksum(key, version, s->value, j->value_words);
    s->version = version;
    slot_unlock(s);
  }
}

static inline unsigned bucket_of(uint64_t ticks) {
  if (ticks < (1u << SUB_BITS)) return (unsigned)ticks;
  unsigned msb = 63 - (unsigned)__builtin_clzll(ticks);
  unsigned sub = (unsigned)(ticks >> (msb - SUB_BITS)) & ((1u << SUB_BITS) - 1);
  return ((msb - SUB_BITS + 1) << SUB_BITS) + sub;
}

/* Middle of bucket b, in ticks. */
static uint64_t bucket_mid(unsigned b) {
  if (b < (1u << SUB_BITS)) return b;
  unsigned msb = (b >> SUB_BITS) + SUB_BITS - 1;
  uint64_t lo = ((uint64_t)((1u << SUB_BITS) | (b & ((1u << SUB_BITS) - 1)))) << (msb - SUB_BITS);
  return lo + ((1ull << (msb - SUB_BITS)) >> 1);
}

/* ---------------------------------------------------------------- workers */

static void worker(unsigned cpu, void* arg) {
  struct job* j = arg;
  struct worker_stats* st = &j->stats[cpu];
  /* Preload: zero this worker's share of the table, then insert its keys. */
  uint64_t lo = j->slots * cpu / j->threads, hi = j->slots * (cpu + 1) / j->threads;
  memset(j->table + lo * j->slot_bytes, 0, (hi - lo) * j->slot_bytes);
  rt_barrier_wait(&j->barrier);
  for (uint64_t r = j->keys * cpu / j->threads; r < j->keys * (cpu + 1) / j->threads; ++r) insert(j, key_of_rank(r));
  rt_barrier_wait(&j->barrier);
  if (cpu == 0) {
    for (uint64_t c = 0; c < j->corrupt && c < j->keys; ++c) { /* the hottest keys: read first */
      struct slot* s = lookup(j, key_of_rank(c));
      if (s) s->value[c % j->value_words] ^= 1ull << (c % 64);
    }
    if (j->corrupt) rt_printf("kvs: self-test: corrupted the values of the %lu hottest keys\n", j->corrupt);
    rt_printf("kvs: preloaded %lu keys; timed phase\n", j->keys);
    j->start = rt_rdtsc();
  }
  rt_barrier_wait(&j->barrier);
  uint64_t buf[MAX_VALUE / 8];
  uint64_t rng = mix64(j->seed * GOLDEN + cpu + 1);
  uint64_t my_ops = j->ops_total / j->threads + (cpu < j->ops_total % j->threads);
  uint64_t t_start = rt_rdtsc();
  for (uint64_t n = 0; j->deadline_ticks ? true : n < my_ops; ++n) {
    uint64_t key = key_of_rank(zipf_next(j, &rng));
    rng = mix64(rng ^ n);
    bool read = rng % 100 < j->read_pct;
    uint64_t t0 = rt_rdtsc();
    do_op(j, st, key, read, buf);
    uint64_t t1 = rt_rdtsc();
    ++st->hist[bucket_of(t1 - t0)];
    ++st->ops;
    if (j->deadline_ticks && t1 - t_start >= j->deadline_ticks) break;
  }
  rt_barrier_wait(&j->barrier);
  if (cpu == 0) j->end = rt_rdtsc();
  /* Final scan of this worker's share: every slot's checksum. */
  for (uint64_t i = lo; i < hi; ++i) {
    struct slot* s = slot_at(j, i);
    if (!s->key) continue;
    if (checksum(s->key, s->version, s->value, j->value_words) != s->checksum)
      report_error(st, "checksum mismatch in the final scan", s->key, s->version);
  }
}

/* The first RAM range with `bytes` contiguous above max(2 MiB, runtime end). */
static uint64_t find_table(uint64_t bytes) {
  uint64_t low = rt_free_start() > LOW_SKIP ? rt_free_start() : LOW_SKIP;
  const struct rt_mem_range* m = rt_memmap();
  for (size_t i = 0; i < rt_memmap_count(); ++i) {
    if (m[i].type != RT_E820_RAM) continue;
    uint64_t start = m[i].addr < low ? low : m[i].addr;
    start = (start + RT_PAGE_SIZE - 1) & ~(RT_PAGE_SIZE - 1);
    uint64_t end = m[i].addr + m[i].size;
    if (end > rt_mapped_limit()) end = rt_mapped_limit();
    if (end > start && end - start >= bytes) return start;
  }
  return 0;
}

static void print_us(const char* name, uint64_t ticks, uint64_t hz, bool comma) {
  uint64_t ns = hz ? ticks * 1000000000ull / hz : 0;
  rt_printf("\"%s\":%lu.%lu%s", name, ns / 1000, (ns % 1000) / 100, comma ? "," : "");
}

int main(void) {
  struct job* j = &g_job;
  uint64_t mib = arg_u64("mib", 64);
  uint64_t value = arg_u64("value", 96);
  j->read_pct = arg_u64("read", 90);
  uint64_t skew = arg_u64("skew", 99);
  j->ops_total = arg_u64("ops", 100000);
  uint64_t secs = arg_u64("secs", 0);
  uint64_t threads = arg_u64("threads", 1);
  j->seed = arg_u64("seed", 1);
  j->corrupt = arg_u64("corrupt", 0);
  const char* content = arg_str("content", "random");
  if (strcmp(content, "text") == 0) {
    g_text_values = true;
  } else if (strcmp(content, "random") != 0) {
    rt_printf("kvs: error: content=%s: want random or text\n", content);
    return 2;
  }
  if (mib == 0 || mib > 1u << 20 || value == 0 || value > MAX_VALUE || j->read_pct > 100 || skew >= 100 ||
      threads == 0 || threads > RT_MAX_CPUS || (j->ops_total == 0 && secs == 0)) {
    rt_printf("kvs: error: need mib >= 1, 1 <= value <= %d, read <= 100, skew < 100, 1 <= threads <= %d, "
              "ops or secs\n", MAX_VALUE, RT_MAX_CPUS);
    return 2;
  }
  j->value_words = (value + 7) / 8;
  j->slot_bytes = HDR_BYTES + j->value_words * 8;
  j->slots = mib * RT_MIB / j->slot_bytes;
  j->keys = arg_u64("keys", j->slots / 2);
  if (j->keys < 2 || j->keys > j->slots * 9 / 10) {
    rt_printf("kvs: error: keys=%lu must be in 2..%lu (90%% of %lu slots)\n", j->keys, j->slots * 9 / 10, j->slots);
    return 2;
  }
  uint64_t table = find_table(mib * RT_MIB);
  if (!table) {
    rt_printf("kvs: error: mib=%lu does not fit in one RAM range of the memory map\n", mib);
    return 2;
  }
  j->table = (char*)(uintptr_t)table;
  j->threads = (unsigned)threads;
  j->theta = (double)skew / 100;
  uint64_t hz = rt_tsc_hz();
  if (!hz) rt_printf("kvs: warning: TSC calibration failed, latencies and ops_per_s will be 0\n");
  j->deadline_ticks = secs * hz;
  if (threads > 1) {
    unsigned cpus = rt_smp_start(j->threads);
    if (cpus < threads) {
      rt_printf("kvs: error: threads=%lu but only %u CPU(s) came up\n", threads, cpus);
      return 2;
    }
  }
  zipf_init(j);
  /* Empty slots hold filler of the same content (key 0 still marks them empty), so
   * a page's compressibility is the content's and not the load factor's: with
   * zeros there, random values still compressed 2.2x at the default 50 % load. */
  for (uint64_t i = 0; i < j->slots; ++i) fill_value(0, i + 1, slot_at(j, i)->value, j->value_words);
  rt_printf("kvs: mib=%lu at 0x%lx: %lu slots of %lu B, keys=%lu value=%lu content=%s read=%lu%% skew=0.%02lu "
            "threads=%lu %s=%lu\n",
            mib, table, j->slots, j->slot_bytes, j->keys, j->value_words * 8, g_text_values ? "text" : "random",
            j->read_pct, skew, threads,
            secs ? "secs" : "ops", secs ? secs : j->ops_total);
  rt_barrier_init(&j->barrier, j->threads);
  rt_run_workers(j->threads, worker, j);

  /* Merge the workers' counts; count the keys present. */
  uint64_t ops = 0, reads = 0, errors = 0, present = 0;
  static uint64_t hist[BUCKETS];
  for (unsigned w = 0; w < j->threads; ++w) {
    ops += j->stats[w].ops;
    reads += j->stats[w].reads;
    errors += j->stats[w].errors;
    for (unsigned b = 0; b < BUCKETS; ++b) hist[b] += j->stats[w].hist[b];
  }
  for (uint64_t i = 0; i < j->slots; ++i) present += slot_at(j, i)->key != 0;
  if (present != j->keys) {
    rt_printf("kvs: ERROR %lu keys in the table, %lu preloaded\n", present, j->keys);
    errors += present > j->keys ? present - j->keys : j->keys - present;
  }
  uint64_t q[3] = {0, 0, 0};
  const uint64_t per_mille[3] = {500, 990, 999};
  for (int k = 0; k < 3; ++k) {
    uint64_t rank = (ops * per_mille[k] + 999) / 1000, seen = 0;
    for (unsigned b = 0; b < BUCKETS; ++b) {
      seen += hist[b];
      if (seen >= rank && rank) {
        q[k] = bucket_mid(b);
        break;
      }
    }
  }
  uint64_t cycles = j->end - j->start;
  uint64_t ops_per_s = hz && cycles ? (uint64_t)((double)ops * (double)hz / (double)cycles) : 0;
  rt_printf("kvs: %lu ops (%lu reads) in %lu ms on %u worker(s)\n", ops, reads, hz ? cycles / (hz / 1000) : 0,
            j->threads);
  bool ok = errors == 0;
  rt_printf("RESULT {\"guest\":\"kvs\",\"ok\":%s,\"ops\":%lu,\"ops_per_s\":%lu,", ok ? "true" : "false", ops,
            ops_per_s);
  print_us("p50_us", q[0], hz, true);
  print_us("p99_us", q[1], hz, true);
  print_us("p999_us", q[2], hz, true);
  rt_printf("\"errors\":%lu,\"threads\":%u,\"keys\":%lu,\"mib\":%lu}\n", errors, j->threads, j->keys, mib);
  return ok ? 0 : 1;
}
