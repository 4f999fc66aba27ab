/* The simulator's model in C: the same model as bench/sim/ranges.py, buddy.py, model.py and
 * SimTarget.execute (backend.py), rule for rule, so that both give identical results,
 * snapshots and cost breakdowns (tests/test_sim_engines.py).  The Python files are the
 * readable reference: every function here names the Python method it ports, and the order
 * of ledger charges inside a step follows Python exactly (step ns are float sums).
 *
 * State is kept as extents, not per 4K page: every per-page quantity (a page's pfn + 1, its
 * mapping/prepared flags, content token and pin count, in guest_memfd and in the shared
 * backing; the memory attributes; the state of every page of host memory) is a run map
 * (rmap_t): per 2 MiB chunk one word holding the chunk's single run inline, or a few runs of
 * small values packed into the word, or a pointer to its sorted list of runs (a chunk broken
 * into more than RM_DENSE runs keeps one value per page instead, bounding the cost where
 * memory is fragmented into single pages).  Pfn maps
 * are linear (a run holds contiguous pfns), so pages are
 * allocated from and freed to the buddy allocator as runs.  A range operation costs per run
 * and per chunk, and memory grows with the runs a workload creates plus 8 bytes per 2 MiB
 * per map.  Per huge folio / pageblock there are small arrays (folio state, pageblock
 * labels).  The buddy allocator's free blocks are hash entries keyed by pfn (head, list
 * node, order and list kind), linked in typed free lists, and in small arrays indexed by
 * pfn >> 11 (lists of blocks above kernel_max_order).  Pfns are 64-bit; a run map holds
 * pfn + 1 in 32 bits, so host memory is limited to 16 TiB.
 *
 * Errors that Python raises as OutOfMemory inside a step unwind with longjmp to the step
 * dispatcher (status ENOMEM), leaving the partial state exactly as Python's exception does;
 * nothing between holds heap memory of its own (scratch buffers belong to the core).
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

/* ------------------------------------------------------------------ constants */
#define PAGE_SHIFT 12
#define PAGE_SIZE 4096ull
#define PRIVATE 8
#define SHARED_ATTR 0
#define CHUNK_SHIFT 9
#define TDX_MAP_GPA_MAX_LEN (2u << 20)    /* KVM hands a MapGPA to userspace in 2 MiB chunks */
#define CHUNK (1 << CHUNK_SHIFT)
#define GMEM_FLAG_MMAP 1

#define ABSENT 0
#define INTACT 1
#define SPLIT 2
#define DEFERRED 3
#define FALLBACK 4      /* gmem folio held as 4K pages from the buddy allocator */
#define GARBAGE 0xDEADBEEFu
#define NO_CHECK 0xFFFFFFFFull
#define SIGBUS_STATUS 1000
#define SKIPPED 1001
#define LRU_BATCH 31        /* a per-CPU folio_batch (PAGEVEC_SIZE) */
#define STEP_NS_MAX 1e12    /* a step's charge saturates here (SimTarget.STEP_NS_MAX) */
#define PLATFORM_PRESERVE 0
#define PLATFORM_ZERO 1
#define VM_TYPE_DEFAULT 0
#define VM_TYPE_TDX 5
#define PLAT_SW 0
#define PLAT_TDX 1
#define PLAT_SNP 2

/* buddy */
#define UNMOVABLE 0
#define MOVABLE 1
#define BIG 2
#define ST_FREE 0
#define ST_USED_UNMOVABLE 1
#define ST_USED_MOVABLE 2
#define MAXO 18
#define PBO 9
#define KMAX 10

/* per-page flags of a guest_memfd / shared backing page */
#define PF_HOST 1      /* host process 0 maps it (PTE level); processes 1..3: pf_host() */
#define PF_S2 2        /* guest stage-2 maps it at 4K */
#define PF_PREP 0x40   /* the platform's private state is set up (GuestMemfd.prepared) */
/* per-folio bits */
#define FB_HOST_PMD 1
#define FB_S2_HUGE 2
#define FB_DEMOTED 4
#define FB_ACC2M 64    /* transient: accepted at 2M by this access (TDX huge-page series) */
#define MAX_PROCS 4    /* bench.ops.MAX_HOST_PROCS */
#define PF_HOST_ALL (1 | 4 | 8 | 16)
#define FB_PMD_ALL (1 | 8 | 16 | 32)
static inline uint8_t pf_host(int proc) { return proc ? (uint8_t)(4 << (proc - 1)) : PF_HOST; }
static inline uint8_t fb_pmd(int proc) { return proc ? (uint8_t)(8 << (proc - 1)) : FB_HOST_PMD; }

enum {
    K_IOCTL_ENTRY, K_ATTR_UPDATE, K_REFCOUNT_SCAN_FOLIO, K_LRU_DRAIN, K_HOST_ZAP_PTE,
    K_HOST_ZAP_PMD, K_STAGE2_ZAP_4K, K_STAGE2_ZAP_HUGE, K_FAULT_GMEM, K_FAULT_SHMEM,
    K_FAULT_ANON, K_FAULT_THP_ANON, K_FAULT_THP_SHMEM, K_FAULT_GMEM_2M, K_FAULT_1G,
    K_REFAULT_GMEM, K_PUNCH_GMEM_UNMAPPED, K_PUNCH_GMEM_MAPPED, K_PUNCH_SHMEM_UNMAPPED,
    K_PUNCH_SHMEM_MAPPED, K_DISCARD_ANON, K_THP_SPLIT_SHMEM, K_THP_SPLIT_ANON, K_FOLIO_SPLIT,
    K_MEMCPY, K_ZERO_FILL, K_TOUCH_PAGE, K_PUNCH_GMEM_EMPTY, K_VM_ATTR_XA_STORE,
    K_EXIT_REQUEST_SW, K_EXIT_REQUEST_TDX, K_EXIT_REQUEST_SNP, K_EXIT_TO_USERSPACE,
    K_VMM_DISPATCH, K_GUEST_PVALIDATE_SNP, K_HYP_SHARE_SW, K_TLB_FLUSH, K_VCPU_KICK,
    K_FW_SNP_TO_PRIVATE, K_FW_SNP_TO_SHARED, K_FW_TDX_TO_PRIVATE, K_FW_TDX_TO_SHARED,
    K_TDX_BLOCK, K_TDX_TRACK, K_TDX_DEMOTE,
    K_FOLIO_MERGE, K_HUGETLB_VMEMMAP_RESTORE, K_HUGETLB_VMEMMAP_OPTIMIZE,
    K_MADVISE_DONTNEED_UNMAPPED, K_FW_TDX_TO_PRIVATE_2M, K_VCPU_KICK_PER_VCPU,
    NKEYS
};
static const char *const key_names[NKEYS] = {
    "ioctl_entry", "attr_update", "refcount_scan_folio", "lru_drain", "host_zap_pte",
    "host_zap_pmd", "stage2_zap_4k", "stage2_zap_huge", "fault_gmem", "fault_shmem",
    "fault_anon", "fault_thp_anon", "fault_thp_shmem", "fault_gmem_2m", "fault_1g",
    "refault_gmem", "punch_gmem_unmapped", "punch_gmem_mapped", "punch_shmem_unmapped",
    "punch_shmem_mapped", "discard_anon", "thp_split_shmem", "thp_split_anon", "folio_split",
    "memcpy", "zero_fill", "touch_page", "punch_gmem_empty", "vm_attr_xa_store",
    "exit_request_sw", "exit_request_tdx", "exit_request_snp", "exit_to_userspace",
    "vmm_dispatch", "guest_pvalidate_snp", "hyp_share_sw", "tlb_flush", "vcpu_kick",
    "fw_snp_to_private", "fw_snp_to_shared", "fw_tdx_to_private", "fw_tdx_to_shared",
    "tdx_block", "tdx_track", "tdx_demote",
    "folio_merge", "hugetlb_vmemmap_restore", "hugetlb_vmemmap_optimize",
    "madvise_dontneed_unmapped", "fw_tdx_to_private_2m", "vcpu_kick_per_vcpu",
};

typedef struct __attribute__((packed)) {
    uint8_t code, obj, via, flags;
    uint16_t slot;
    uint32_t op;
    uint64_t offset, size, arg;
    uint8_t proc;
} step_t;

typedef struct __attribute__((packed)) {
    int32_t status;
    int64_t ns;
    int64_t aux;
} result_t;

_Static_assert(sizeof(step_t) == CORE_STEP_SIZE, "STEP_DTYPE layout");
_Static_assert(sizeof(result_t) == CORE_RESULT_SIZE, "RESULT_DTYPE layout");

/* ------------------------------------------------------------------ structures */
typedef struct {            /* a block on a typed free list; links are node indices */
    int64_t pfn;
    int32_t older, newer;
} lnode_t;

typedef struct {            /* a free block's head: pfn, its list node (-1: above KMAX), code */
    int64_t key;
    int32_t node, code;     /* code: order << 2 | list kind */
} hent_t;

typedef struct {            /* hash: pfn -> head entry (open addressing, linear probing) */
    hent_t *e;
    uint64_t mask;
    int64_t count;
    int shift;
} lhash_t;

/* run maps: see rm_seg() */
#define RM_CHUNK 512
typedef struct { uint16_t start; uint16_t pad_; uint32_t v; } run_t;
typedef struct { int32_t n, cap; run_t r[]; } rlist_t;
/* a chunk that has more than RM_DENSE runs keeps one value per page instead (n == -1), so
 * that a chunk broken into many small runs costs what a per-page array costs, not more */
#define RM_DENSE 16
typedef struct { int32_t n, cap; uint32_t v[RM_CHUNK]; } rdense_t;
typedef struct {
    int64_t npages, nchunks;
    int linear;
    uint32_t any;           /* plain maps: every bit a page's value has ever had */
    uint64_t *ent;
} rmap_t;

typedef struct {
    int64_t total, free_pages, npb, pbsize;
    rmap_t st;              /* per page ST_FREE / ST_USED_*, as runs */
    uint8_t *labels;
    int64_t nr[MAXO + 1];
    int32_t lhead[2][KMAX + 1];      /* node of the most recently listed block, -1 empty */
    lhash_t h;                       /* every free block's head */
    lnode_t *nodes;
    int64_t cap_nodes, used_nodes;
    int32_t free_node;               /* chain of free nodes through .older */
    /* lists of blocks above KMAX: 0 = all (_big), 1 + t = holding a pageblock of type t */
    int64_t bhead[3][MAXO + 1];
    int64_t *bolder[3], *bnewer[3];  /* indexed by pfn >> (KMAX + 1) */
    uint8_t *bin[3];
    int64_t nbig;
} buddy_t;


typedef rmap_t attrs_t;     /* ranges.py AttrRanges: attribute runs */

typedef struct {
    int64_t size, npages, fpages, nfolios;
    int flags, order, platform, promote;
    int split_on_share;     /* in-place.huge=split: GuestMemfd.split_on_share */
    rmap_t page_pfn;        /* pfn + 1 of 4K folios / split parts, as linear runs */
    rmap_t pflags;          /* PF_* bits per page, as runs */
    rmap_t data;            /* content token per page, as runs */
    rmap_t pins;            /* extra references (GUP pins) per page, as runs */
    int64_t npinned;        /* pages with a pin (skip scans when 0) */
    uint8_t *fstate, *fbits;
    int64_t *fpfn;
    int64_t lru[LRU_BATCH];
    int lru_len, lru_start;
    int64_t present;
} gmem_t;

typedef struct {
    int64_t npages, nchunks;
    int kind, page, huge;   /* kind 0 anon 1 memfd; page 0 4k 1 thp 2 hugetlb */
    rmap_t page_pfn;        /* pfn + 1 of 4K pages / split parts, as linear runs */
    rmap_t host_map;        /* bit per host process mapping the page, as runs */
    rmap_t data;            /* content token per page, as runs */
    rmap_t pins;
    uint8_t *chunk;
    int64_t *chunk_pfn;
    int64_t *deferred;
    int64_t ndeferred, cap_deferred;
    int64_t present;
    uint16_t *chunk_mapped; /* per huge chunk: pages some host process maps */
    int slot;               /* index of its slot (whose attrs are the VM's attributes) */
} shared_t;

typedef struct {
    gmem_t g;
    shared_t *s;            /* NULL: no shared backing */
    attrs_t attrs;          /* in-place: the gmem's; dual: the VM's (the other is unused) */
} slot_t;

struct core {
    buddy_t b;
    double fixed[NKEYS], per_page[NKEYS];
    int64_t lcount[NKEYS], lfirst[NKEYS], lseq;
    double lns[NKEYS];
    double step_ns, clock_ns;
    const int64_t *arrival;  /* per op: arrival time (ns) or -1; owned by the caller */
    int64_t narrival, last_op, saturated;
    int64_t footprint, huge_pages, huge_splits, huge_merges, huge_fallbacks, pinned_by_aging;
    int64_t mapping_demotions, folio_splits, folio_merges;    /* snapshot counters */
    /* snapshot statistics kept up to date where folios and mappings change (summed over
     * slots; core_huge_recount() computes the same by a full scan, for tests): 4K pages
     * mapped at 4K in stage 2, bytes mapped by huge stage-2 leaves ([0] 2M, [1] 1G),
     * bytes some host process maps with one PMD/PUD, intact huge folios (gmem and shared
     * backing), shared-backing pages held at VM-private GPAs */
    int64_t st_s2_4k, st_s2_huge[2], st_host_huge, st_intact, st_stale;
    int64_t private_host_touch_pages;
    int64_t *pool[2];       /* Host.hugetlb_pool: free hugetlb pages, [0] 2M, [1] 1G */
    int64_t npool[2], cap_pool[2];
    int vm_type, in_place;
    int plat, vcpus;        /* cost platform (PLAT_*), vCPUs kicked by a flush */
    int tdx_private_2m;     /* TDX huge-page series: 2M private leaves where accepted at 2M */
    int64_t conv_op;        /* the last conversion request: op, slot, attributes, end, size */
    uint64_t conv_slot, conv_arg, conv_end, conv_size;
    slot_t *slots;
    int nslots;
    int *shrinkers;         /* slot indices with an anon THP backing, in creation order */
    int nshrinkers;
    jmp_buf oom;
    int in_step;
    /* scratch buffers */
    int64_t *miss; int64_t cap_miss;
    int64_t *aruns; int64_t cap_aruns, naruns;   /* (pfn, npages) runs allocated */
    int64_t *fruns; int64_t cap_fruns;            /* (pfn, npages) runs to free */
    int64_t *fresh; int64_t cap_fresh;   /* runs (start, end) of pages absent before a fault */
    char err[256];
};

static void fail(core_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (!p) abort();
    return p;
}


static void grow_keep64(int64_t **buf, int64_t *cap, int64_t need)   /* keeps contents */
{
    if (need <= *cap) return;
    int64_t n = *cap ? *cap : 1024;
    while (n < need) n *= 2;
    *buf = realloc(*buf, (size_t)n * sizeof(int64_t));
    if (!*buf) abort();
    *cap = n;
}


/* ------------------------------------------------------------------ ledger */
static void led_add(core_t *c, int k, int64_t n, double ns)
{
    if (c->lfirst[k] < 0) c->lfirst[k] = c->lseq++;
    c->lcount[k] += n;
    c->lns[k] += ns;
    c->step_ns += ns;
    c->clock_ns += ns;
}

static void led_op(core_t *c, int k, int64_t pages)       /* Ledger.op */
{
    double ns = c->fixed[k] + c->per_page[k] * (double)pages;
    led_add(c, k, 1, ns);
}

static void led_op_beyond(core_t *c, int k, int base, int64_t pages)  /* Ledger.op_beyond */
{
    double ns = (c->fixed[k] - c->fixed[base]) + (c->per_page[k] - c->per_page[base]) * (double)pages;
    led_add(c, k, 1, ns > 0.0 ? ns : 0.0);
}

static void led_each(core_t *c, int k, int64_t n)         /* Ledger.each */
{
    if (n) led_add(c, k, n, c->fixed[k] * (double)n);
}

/* ------------------------------------------------------------------ run maps (extents) */
/* A value per page of [0, npages) kept as runs of pages, per 512-page chunk: one word per
 * chunk holds the chunk's run when it has one (v << 2, low bits 00; calloc'd = all 0), up to
 * RM_PACK runs of values below 256 packed into the word itself (low bits 10, see rm_pack),
 * or a pointer (low bit 1) to the chunk's sorted list of runs.  Memory grows with the runs a
 * run of the model creates (and 8 bytes per 2 MiB of guest), not with pages, and a range
 * operation costs per run and per chunk, never per 4K page.
 * The packed form is there for speed over a long run: the flags and attributes of memory
 * that conversions have cut into a few runs stay in the chunk's word, one cache line
 * away like a pristine chunk's, instead of behind a pointer to a list (a second cold miss
 * per map and step on a large guest, which made a run's late conversions cost ~2x its
 * first ones).
 * Linear maps hold pfn + 1 of contiguous memory: a run (start, v != 0) gives page p the value
 * v + (p - start); v == 0 (no page) is constant. */

#define RM_PACK 4           /* runs a chunk word holds: 4 + 8 + 3 x (9 + 8) = 63 bits */
#define RM_PACK_VMAX 255u

static inline uint64_t rm_one(uint32_t v) { return (uint64_t)v << 2; }
static inline int rm_is_one(uint64_t e) { return (e & 3) == 0; }
static inline int rm_is_packed(uint64_t e) { return (e & 3) == 2; }

/* the runs of a packed word: bits 2-3 n - 1, bits 4-11 the first run's value (it starts at
 * 0), then per further run 9 bits start and 8 bits value */
static inline int rm_unpack(uint64_t e, run_t *r)
{
    int n = (int)((e >> 2) & 3) + 1;
    r[0] = (run_t){0, 0, (uint32_t)((e >> 4) & 0xff)};
    for (int i = 1; i < n; i++) {
        uint64_t f = e >> (12 + 17 * (i - 1));
        r[i] = (run_t){(uint16_t)(f & 0x1ff), 0, (uint32_t)((f >> 9) & 0xff)};
    }
    return n;
}

/* *out = the packed word of runs r[0..n) when they fit (2..RM_PACK runs, values < 256) */
static inline int rm_pack(const run_t *r, int n, uint64_t *out)
{
    if (n < 2 || n > RM_PACK || r[0].start || r[0].v > RM_PACK_VMAX) return 0;
    uint64_t e = 2 | (uint64_t)(n - 1) << 2 | (uint64_t)r[0].v << 4;
    for (int i = 1; i < n; i++) {
        if (r[i].v > RM_PACK_VMAX) return 0;
        e |= ((uint64_t)r[i].start | (uint64_t)r[i].v << 9) << (12 + 17 * (i - 1));
    }
    *out = e;
    return 1;
}

static void rm_init(rmap_t *m, int64_t npages, int linear, uint32_t initial)
{
    m->npages = npages;
    m->nchunks = (npages + RM_CHUNK - 1) / RM_CHUNK;
    m->linear = linear;
    m->any = initial;
    m->ent = xcalloc((size_t)(m->nchunks ? m->nchunks : 1), sizeof(uint64_t));
    if (initial)
        for (int64_t c = 0; c < m->nchunks; c++)
            m->ent[c] = rm_one(linear ? initial + (uint32_t)(c * RM_CHUNK) : initial);
}

static void rm_destroy(rmap_t *m)
{
    if (!m->ent) return;
    for (int64_t c = 0; c < m->nchunks; c++)
        if (m->ent[c] & 1) free((void *)(uintptr_t)(m->ent[c] & ~1ull));
    free(m->ent);
    m->ent = NULL;
}

static inline uint32_t rm_at(const rmap_t *m, uint32_t v, int64_t start, int64_t p)
{
    return m->linear && v ? v + (uint32_t)(p - start) : v;
}

/* the value at page p (*val) and the end of its run, at most lim; a run continues into
 * following chunks that carry its continuation inline */
static int64_t rm_seg(const rmap_t *m, int64_t p, int64_t lim, uint32_t *val)
{
    int64_t c = p / RM_CHUNK, base = c * RM_CHUNK, off = p - base, end = base + RM_CHUNK;
    uint64_t e = m->ent[c];
    uint32_t v;
    if (rm_is_one(e)) {
        v = rm_at(m, (uint32_t)(e >> 2), base, p);
        /* uniform chunks after it with the same run */
        while (end < lim && end < m->npages) {
            uint64_t n = m->ent[end / RM_CHUNK];
            if (!rm_is_one(n) || (uint32_t)(n >> 2) != rm_at(m, v, p, end)) break;
            end += RM_CHUNK;
        }
    } else if (rm_is_packed(e)) {
        int n = (int)((e >> 2) & 3) + 1;
        int64_t start = 0;
        uint64_t f = e >> 12;
        v = (uint32_t)((e >> 4) & 0xff);
        for (int i = 1; i < n; i++, f >>= 17) {
            int64_t st = (int64_t)(f & 0x1ff);
            if (st > off) {
                end = base + st;
                break;
            }
            start = st;
            v = (uint32_t)((f >> 9) & 0xff);
        }
        v = rm_at(m, v, base + start, p);
    } else {
        const rlist_t *l = (const rlist_t *)(uintptr_t)(e & ~1ull);
        if (l->n < 0) {
            const rdense_t *d = (const rdense_t *)l;
            uint32_t x = d->v[off];
            int64_t k = off + 1;
            if (m->linear && x)
                while (k < RM_CHUNK && d->v[k] == x + (uint32_t)(k - off)) k++;
            else
                while (k < RM_CHUNK && d->v[k] == x) k++;
            *val = x;
            end = base + k;
            return end < lim ? end : lim;
        }
        int lo = 0, hi = l->n - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) >> 1;
            if (l->r[mid].start <= off) lo = mid;
            else hi = mid - 1;
        }
        v = rm_at(m, l->r[lo].v, base + l->r[lo].start, p);
        if (lo + 1 < l->n) end = base + l->r[lo + 1].start;
    }
    *val = v;
    return end < lim ? end : lim;
}

static inline uint32_t rm_get(const rmap_t *m, int64_t p)
{
    uint32_t v;
    rm_seg(m, p, p + 1, &v);
    return v;
}

/* run b continues run a (they merge) */
static inline int rm_continues(const rmap_t *m, const run_t *a, const run_t *b)
{
    if (!m->linear || !a->v) return a->v == b->v;
    return b->v == a->v + (uint32_t)(b->start - a->start);
}

static void rm_chunk_store(rmap_t *m, int64_t c, rlist_t *l, run_t *tmp, int k);

/* chunk c: pages [s, e) (chunk offsets, s < e <= RM_CHUNK) get v (the value at s) */
static void rm_chunk_set(rmap_t *m, int64_t c, int s, int e, uint32_t v)
{
    uint64_t ent = m->ent[c];
    m->any |= v;
    run_t word[RM_PACK];
    rlist_t *l = ent & 1 ? (rlist_t *)(uintptr_t)(ent & ~1ull) : NULL;
    if (l && l->n < 0) {
        uint32_t *d = ((rdense_t *)l)->v;
        if (m->linear && v)
            for (int i = s; i < e; i++) d[i] = v + (uint32_t)(i - s);
        else
            for (int i = s; i < e; i++) d[i] = v;
        return;
    }
    const run_t *old = l ? l->r : word;
    int n = 1;
    if (l) n = l->n;
    else if (rm_is_packed(ent)) n = rm_unpack(ent, word);
    else word[0] = (run_t){0, 0, (uint32_t)(ent >> 2)};
    run_t tmp[RM_DENSE + 3];     /* a list holds at most RM_DENSE runs; a set adds two */
    int k = 0, i = 0;
    for (; i < n && old[i].start < s; i++) tmp[k++] = old[i];
    /* the run holding page e - 1 continues at e */
    int j = i > 0 ? i - 1 : 0;
    for (int q = i; q < n && old[q].start < e; q++) j = q;
    run_t tail = {(uint16_t)e, 0, rm_at(m, old[j].v, old[j].start, e)};
    tmp[k++] = (run_t){(uint16_t)s, 0, v};
    if (e < RM_CHUNK) {
        int q = j + 1;
        if (!(q < n && old[q].start == e)) tmp[k++] = tail;
        for (; q < n; q++) tmp[k++] = old[q];
    }
    rm_chunk_store(m, c, l, tmp, k);
}

/* chunk c := runs tmp[0..k) (tmp[0] starts at 0, sorted; runs that continue each other are
 * merged here), in the smallest form that holds them; l is the chunk's list, if it has one */
static void rm_chunk_store(rmap_t *m, int64_t c, rlist_t *l, run_t *tmp, int k)
{
    int w = 0;
    if (m->linear) {
        for (int q = 1; q < k; q++)
            if (!rm_continues(m, &tmp[w], &tmp[q])) tmp[++w] = tmp[q];
    } else {
        for (int q = 1; q < k; q++)
            if (tmp[q].v != tmp[w].v) tmp[++w] = tmp[q];
    }
    k = w + 1;
    if (k == 1) {
        if (l) free(l);
        m->ent[c] = rm_one(tmp[0].v);
        return;
    }
    uint64_t packed;
    if (rm_pack(tmp, k, &packed)) {
        if (l) free(l);
        m->ent[c] = packed;
        return;
    }
    if (k > RM_DENSE) {
        rdense_t *d = malloc(sizeof(rdense_t));
        if (!d) abort();
        d->n = -1;
        d->cap = 0;
        for (int q = 0; q < k; q++) {
            int end = q + 1 < k ? tmp[q + 1].start : RM_CHUNK;
            for (int i = tmp[q].start; i < end; i++) d->v[i] = rm_at(m, tmp[q].v, tmp[q].start, i);
        }
        free(l);
        m->ent[c] = (uint64_t)(uintptr_t)d | 1;
        return;
    }
    if (!l || l->cap < k || l->cap > 4 * k + 8) {
        int cap = k + 4;
        rlist_t *nl = realloc(l, sizeof(rlist_t) + (size_t)cap * sizeof(run_t));
        if (!nl) abort();
        nl->cap = cap;
        l = nl;
    }
    l->n = k;
    memcpy(l->r, tmp, (size_t)k * sizeof(run_t));
    m->ent[c] = (uint64_t)(uintptr_t)l | 1;
}

/* pages [a, b) get v (linear maps: v at a, v + (p - a) at p, when v != 0) */
static void rm_set(rmap_t *m, int64_t a, int64_t b, uint32_t v)
{
    m->any |= v;
    for (int64_t c = a / RM_CHUNK; a < b; c++) {
        int64_t base = c * RM_CHUNK, e = b < base + RM_CHUNK ? b : base + RM_CHUNK;
        int64_t cend = base + RM_CHUNK < m->npages ? base + RM_CHUNK : m->npages;
        if (a == base && e >= cend) {
            if (m->ent[c] & 1) free((void *)(uintptr_t)(m->ent[c] & ~1ull));
            m->ent[c] = rm_one(v);
        } else {
            rm_chunk_set(m, c, (int)(a - base), (int)(e - base), v);
        }
        if (m->linear && v) v += (uint32_t)(e - a);
        a = e;
    }
}

static int rm_is_uniform(const rmap_t *m, int64_t a, int64_t b, uint32_t v)
{
    while (a < b) {
        uint32_t x;
        int64_t e = rm_seg(m, a, b, &x);
        if (x != v) return 0;
        a = e;
    }
    return 1;
}

static int64_t rm_count_eq(const rmap_t *m, int64_t a, int64_t b, uint32_t v)
{
    int64_t n = 0;
    while (a < b) {
        uint32_t x;
        int64_t e = rm_seg(m, a, b, &x);
        if (x == v) n += e - a;
        a = e;
    }
    return n;
}

static int64_t rm_count_nz(const rmap_t *m, int64_t a, int64_t b)
{
    return (b - a) - rm_count_eq(m, a, b, 0);
}

/* dst [a, b) = src [a, b) (both plain maps) */
static void rm_copy(rmap_t *dst, const rmap_t *src, int64_t a, int64_t b)
{
    while (a < b) {
        uint32_t x;
        int64_t e = rm_seg(src, a, b, &x);
        rm_set(dst, a, e, x);
        a = e;
    }
}

/* pages of [a, b) (a plain map) get (x & ~clear) | set; returns the bits that changed, summed
 * over the pages (for a single bit: the pages that changed).  One pass per chunk: the chunk's
 * runs are rewritten once, not once per run that changes */
static int64_t rm_update_bits(rmap_t *m, int64_t a, int64_t b, uint32_t clear, uint32_t set)
{
    /* no page has a bit to clear and none is set: nothing to look at (the common case of
     * clearing a kind of mapping a run never made) */
    if (!set && !(m->any & clear)) return 0;
    m->any |= set;
    int64_t n = 0;
    for (int64_t c = a / RM_CHUNK; a < b; c++) {
        int64_t base = c * RM_CHUNK, e = b < base + RM_CHUNK ? b : base + RM_CHUNK;
        int s = (int)(a - base), t = (int)(e - base);
        uint64_t ent = m->ent[c];
        a = e;
        if (rm_is_one(ent)) {
            uint32_t x = (uint32_t)(ent >> 2), y = (x & ~clear) | set;
            if (y == x) continue;
            n += (int64_t)(t - s) * __builtin_popcount(x ^ y);
            int64_t cend = base + RM_CHUNK < m->npages ? base + RM_CHUNK : m->npages;
            if (s == 0 && base + t >= cend) m->ent[c] = rm_one(y);
            else rm_chunk_set(m, c, s, t, y);
            continue;
        }
        rlist_t *l = ent & 1 ? (rlist_t *)(uintptr_t)(ent & ~1ull) : NULL;
        if (l && l->n < 0) {
            uint32_t *d = ((rdense_t *)l)->v;
            for (int i = s; i < t; i++) {
                uint32_t y = (d[i] & ~clear) | set;
                n += __builtin_popcount(d[i] ^ y);
                d[i] = y;
            }
            continue;
        }
        run_t word[RM_PACK], tmp[RM_DENSE + 3];    /* each run kept or cut in up to 3 */
        const run_t *old = l ? l->r : word;
        int k = 0, cnt = l ? l->n : rm_unpack(ent, word);
        int64_t changed = 0;
        for (int i = 0; i < cnt; i++) {
            int rs = old[i].start, re = i + 1 < cnt ? old[i + 1].start : RM_CHUNK;
            uint32_t x = old[i].v, y = (x & ~clear) | set;
            int lo = rs > s ? rs : s, hi = re < t ? re : t;
            if (lo >= hi || y == x) {               /* outside [s, t) or unchanged */
                tmp[k++] = old[i];
                continue;
            }
            changed += (int64_t)(hi - lo) * __builtin_popcount(x ^ y);
            if (rs < lo) tmp[k++] = (run_t){(uint16_t)rs, 0, x};
            tmp[k++] = (run_t){(uint16_t)lo, 0, y};
            if (hi < re) tmp[k++] = (run_t){(uint16_t)hi, 0, x};
        }
        if (!changed) continue;
        n += changed;
        rm_chunk_store(m, c, l, tmp, k);
    }
    return n;
}

/* pages of [a, b) whose value has `bit`: clear it; returns how many */
static int64_t rm_clear_bit(rmap_t *m, int64_t a, int64_t b, uint32_t bit)
{
    return rm_update_bits(m, a, b, bit, 0);
}

/* pages of [a, b) whose value lacks `bit`: set it; returns how many */
static int64_t rm_set_bit(rmap_t *m, int64_t a, int64_t b, uint32_t bit)
{
    return rm_update_bits(m, a, b, 0, bit);
}

static int rm_any_bit(const rmap_t *m, int64_t a, int64_t b, uint32_t bits)
{
    if (!(m->any & bits)) return 0;
    while (a < b) {
        uint32_t x;
        int64_t e = rm_seg(m, a, b, &x);
        if (x & bits) return 1;
        a = e;
    }
    return 0;
}

/* ------------------------------------------------------------------ pfn hash */
static inline uint64_t h_idx(const lhash_t *h, int64_t k)
{
    return ((uint64_t)k * 0x9E3779B97F4A7C15ull) >> h->shift;
}

static void h_init(lhash_t *h, int bits)
{
    uint64_t cap = 1ull << bits;
    h->e = malloc(cap * sizeof(hent_t));
    if (!h->e) abort();
    memset(h->e, 0xff, cap * sizeof(hent_t));
    h->mask = cap - 1;
    h->count = 0;
    h->shift = 64 - bits;
}

static inline int64_t h_find(const lhash_t *h, int64_t k)
{
    uint64_t i = h_idx(h, k);
    for (;;) {
        int64_t x = h->e[i].key;
        if (x == k) return (int64_t)i;
        if (x < 0) return -1;
        i = (i + 1) & h->mask;
    }
}

static void h_insert_raw(lhash_t *h, int64_t k, int32_t node, int32_t code)
{
    uint64_t i = h_idx(h, k);
    while (h->e[i].key >= 0) i = (i + 1) & h->mask;
    h->e[i].key = k;
    h->e[i].node = node;
    h->e[i].code = code;
    h->count++;
}

static void h_grow(lhash_t *h)
{
    lhash_t old = *h;
    h_init(h, 64 - old.shift + 1);
    for (uint64_t i = 0; i <= old.mask; i++)
        if (old.e[i].key >= 0) h_insert_raw(h, old.e[i].key, old.e[i].node, old.e[i].code);
    free(old.e);
}

static void h_insert(lhash_t *h, int64_t k, int32_t node, int32_t code)
{
    if ((uint64_t)(h->count + 1) * 2 > h->mask + 1) h_grow(h);
    h_insert_raw(h, k, node, code);
}

static void h_delete_at(lhash_t *h, uint64_t i)
{
    /* backward-shift deletion (linear probing) */
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & h->mask;
        int64_t kj = h->e[j].key;
        if (kj < 0) break;
        uint64_t home = h_idx(h, kj);
        /* kj may move to i unless its home lies cyclically in (i, j] */
        int move = (j > i) ? (home <= i || home > j) : (home <= i && home > j);
        if (move) {
            h->e[i] = h->e[j];
            i = j;
        }
    }
    h->e[i].key = -1;
    h->count--;
}

/* ------------------------------------------------------------------ buddy (buddy.py) */
/* Host memory without per-page arrays: which pages are free or held (and for which
 * migratetype) is a run map over host pages (BuddyAllocator._state), every free block's
 * head is a hash entry pfn -> (list node, order << 2 | list kind), and the typed free lists
 * are linked nodes; pageblock labels are one byte per 2 MiB. */
static inline int ctz64(uint64_t x) { return __builtin_ctzll(x); }
static inline int flog2(uint64_t x) { return 63 - __builtin_clzll(x); }

/* the code of the free block whose head is pfn, or -1 */
static inline int head_code(const buddy_t *b, int64_t pfn)
{
    int64_t i = h_find(&b->h, pfn);
    return i < 0 ? -1 : b->h.e[i].code;
}

static int32_t node_alloc(buddy_t *b)
{
    if (b->free_node >= 0) {
        int32_t n = b->free_node;
        b->free_node = b->nodes[n].older;
        return n;
    }
    if (b->used_nodes == b->cap_nodes) {
        b->cap_nodes = b->cap_nodes ? 2 * b->cap_nodes : 4096;
        b->nodes = realloc(b->nodes, (size_t)b->cap_nodes * sizeof(lnode_t));
        if (!b->nodes) abort();
    }
    return (int32_t)b->used_nodes++;
}

static void list_push(buddy_t *b, int t, int o, int64_t pfn)
{
    int32_t h = b->lhead[t][o];
    int32_t n = node_alloc(b);
    b->nodes[n].pfn = pfn;
    b->nodes[n].older = h;
    b->nodes[n].newer = -1;
    if (h >= 0) b->nodes[h].newer = n;
    b->lhead[t][o] = n;
    h_insert(&b->h, pfn, n, (o << 2) | t);
}

static void list_unlink(buddy_t *b, int t, int o, int32_t n)
{
    int32_t older = b->nodes[n].older, newer = b->nodes[n].newer;
    if (newer >= 0) b->nodes[newer].older = older;
    else b->lhead[t][o] = older;
    if (older >= 0) b->nodes[older].newer = newer;
    b->nodes[n].older = b->free_node;
    b->free_node = n;
}

static void list_del(buddy_t *b, int t, int o, int64_t pfn)
{
    int64_t i = h_find(&b->h, pfn);
    if (i < 0) abort();
    list_unlink(b, t, o, b->h.e[i].node);
    h_delete_at(&b->h, (uint64_t)i);
}

static inline int64_t list_head_pfn(const buddy_t *b, int t, int o)
{
    int32_t n = b->lhead[t][o];
    return n >= 0 ? b->nodes[n].pfn : -1;
}

static void blist_push(buddy_t *b, int l, int o, int64_t pfn)
{
    int64_t e = pfn >> (KMAX + 1);
    int64_t h = b->bhead[l][o];
    b->bolder[l][e] = h;
    b->bnewer[l][e] = -1;
    if (h >= 0) b->bnewer[l][h >> (KMAX + 1)] = pfn;
    b->bhead[l][o] = pfn;
    b->bin[l][e] = 1;
}

static void blist_del(buddy_t *b, int l, int o, int64_t pfn)
{
    int64_t e = pfn >> (KMAX + 1);
    if (!b->bin[l][e]) return;
    int64_t older = b->bolder[l][e], newer = b->bnewer[l][e];
    if (newer >= 0) b->bolder[l][newer >> (KMAX + 1)] = older;
    else b->bhead[l][o] = older;
    if (older >= 0) b->bnewer[l][older >> (KMAX + 1)] = newer;
    b->bin[l][e] = 0;
}

static int labels_has(const buddy_t *b, int t, int64_t a, int64_t e)
{
    return memchr(b->labels + a, t, (size_t)(e - a)) != NULL;
}

static void add_free(buddy_t *b, int64_t pfn, int order)           /* _add_free */
{
    if (order > KMAX) {
        blist_push(b, 0, order, pfn);
        int64_t a = pfn >> PBO, e = a + (1ll << (order - PBO));
        if (labels_has(b, UNMOVABLE, a, e)) blist_push(b, 1 + UNMOVABLE, order, pfn);
        if (labels_has(b, MOVABLE, a, e)) blist_push(b, 1 + MOVABLE, order, pfn);
        h_insert(&b->h, pfn, -1, (order << 2) | BIG);
    } else {
        list_push(b, b->labels[pfn >> PBO], order, pfn);
    }
    b->nr[order]++;
}

static void remove_free(buddy_t *b, int64_t pfn)                     /* _remove_free */
{
    int64_t i = h_find(&b->h, pfn);
    if (i < 0) abort();
    int code = b->h.e[i].code;
    int order = code >> 2, kind = code & 3;
    if (kind == BIG) {
        blist_del(b, 0, order, pfn);
        blist_del(b, 1, order, pfn);
        blist_del(b, 2, order, pfn);
    } else {
        list_unlink(b, kind, order, b->h.e[i].node);
    }
    h_delete_at(&b->h, (uint64_t)i);
    b->nr[order]--;
}

static int64_t list_pop(buddy_t *b, int t, int o)   /* d.popitem(); del head; nr -= 1 */
{
    int64_t pfn = list_head_pfn(b, t, o);
    list_del(b, t, o, pfn);
    b->nr[o]--;
    return pfn;
}

static void carve(buddy_t *b, int64_t block, int bo, int64_t want, int wo)   /* _carve */
{
    (void)block;
    for (int k = bo - 1; k >= wo; k--) {
        int64_t p = (want & ~((1ll << k) - 1)) ^ (1ll << k);
        add_free(b, p, k);
    }
}

static void relabel(buddy_t *b, int64_t pfn, int order, int t)       /* _relabel */
{
    if (order >= PBO) memset(b->labels + (pfn >> PBO), t, (size_t)1 << (order - PBO));
}

/* the first free page of [s, e), or -1 */
static int64_t find_free(const buddy_t *b, int64_t s, int64_t e)
{
    while (s < e) {
        uint32_t v;
        int64_t n = rm_seg(&b->st, s, e, &v);
        if (v == ST_FREE) return s;
        s = n;
    }
    return -1;
}

static void set_pageblock_type(buddy_t *b, int64_t pb, int t)      /* _set_pageblock_type */
{
    b->labels[pb] = (uint8_t)t;
    int64_t s = pb << PBO, e = s + b->pbsize;
    if (e > b->total) e = b->total;
    int64_t moved[1 << PBO];
    int8_t mo[1 << PBO];
    int nm = 0;
    int64_t p = find_free(b, s, e);
    while (p >= 0) {
        int code = head_code(b, p);
        if (code < 0) abort();
        int order = code >> 2, kind = code & 3;
        if (kind != t) {
            list_del(b, kind, order, p);
            moved[nm] = p;
            mo[nm++] = (int8_t)order;
        }
        p = find_free(b, p + (1ll << order), e);
    }
    for (int i = nm - 1; i >= 0; i--) list_push(b, t, mo[i], moved[i]);
}

static int64_t take_big_chunk(buddy_t *b)                            /* _take_big_chunk */
{
    for (int o = KMAX + 1; o <= MAXO; o++) {
        int64_t block = b->bhead[0][o];
        if (block >= 0) {
            remove_free(b, block);
            carve(b, block, o, block, KMAX);
            return block;
        }
    }
    return -1;
}

/* _take_slow: returns 0 and sets *pfn_out and *o_out, or -1 (OutOfMemory, nothing changed) */
static int take_slow(buddy_t *b, int order, int t, int64_t *pfn_out, int *o_out)
{
    for (int o = KMAX + 1; o <= MAXO; o++) {
        int64_t block = b->bhead[1 + t][o];
        if (block >= 0) {
            remove_free(b, block);
            int64_t a = block >> PBO;
            const uint8_t *q = memchr(b->labels + a, t, (size_t)1 << (o - PBO));
            int64_t pb = q - b->labels;
            int64_t chunk = (pb << PBO) & ~((1ll << KMAX) - 1);
            carve(b, block, o, chunk, KMAX);
            *pfn_out = chunk;
            *o_out = KMAX;
            return 0;
        }
    }
    int u = 1 - t;
    for (int co = KMAX; co >= order; co--) {
        if (t == MOVABLE && co < PBO / 2) break;     /* should_try_claim_block */
        int64_t head = list_head_pfn(b, u, co);
        if (co >= PBO) {
            int64_t pfn;
            if (head >= 0) pfn = list_pop(b, u, co);
            else if (co == KMAX) {
                pfn = take_big_chunk(b);
                if (pfn < 0) continue;
            } else continue;
            relabel(b, pfn, co, t);
            *pfn_out = pfn;
            *o_out = co;
            return 0;
        }
        if (head < 0) continue;
        int64_t s = (head >> PBO) << PBO, e = s + b->pbsize;
        if (e > b->total) continue;
        int64_t nfree = rm_count_eq(&b->st, s, e, ST_FREE);
        int64_t nmovable = rm_count_eq(&b->st, s, e, ST_USED_MOVABLE);
        int64_t alike = t == MOVABLE ? nmovable : b->pbsize - nfree - nmovable;
        if (nfree + alike >= (b->pbsize >> 1)) {
            set_pageblock_type(b, head >> PBO, t);
            for (int o = order; o <= KMAX; o++) {
                if (b->lhead[t][o] >= 0) {
                    *pfn_out = list_pop(b, t, o);
                    *o_out = o;
                    return 0;
                }
            }
            abort();    /* claimed pageblock yielded no block */
        }
    }
    for (int co = order; co <= KMAX; co++) {
        if (b->lhead[u][co] >= 0) {
            *pfn_out = list_pop(b, u, co);
            *o_out = co;
            return 0;
        }
    }
    return -1;
}

static int64_t alloc_big(buddy_t *b, int order, int t)             /* _alloc_big */
{
    for (int o = order; o <= MAXO; o++) {
        int64_t block = b->bhead[0][o];
        if (block >= 0) {
            remove_free(b, block);
            carve(b, block, o, block, order);
            relabel(b, block, order, t);
            int64_t size = 1ll << order;
            rm_set(&b->st, block, block + size, (uint32_t)(t + 1));
            b->free_pages -= size;
            return block;
        }
    }
    return -1;
}

static int64_t buddy_alloc(buddy_t *b, int order, int movable)     /* alloc; -1 = OOM */
{
    int t = movable ? MOVABLE : UNMOVABLE;
    if (order > KMAX) return alloc_big(b, order, t);
    int64_t pfn = -1;
    int o;
    for (o = order; o <= KMAX; o++)
        if (b->lhead[t][o] >= 0) {
            pfn = list_pop(b, t, o);
            break;
        }
    if (pfn < 0 && take_slow(b, order, t, &pfn, &o) < 0) return -1;
    if (o > order) carve(b, pfn, o, pfn, order);
    int64_t size = 1ll << order;
    rm_set(&b->st, pfn, pfn + size, (uint32_t)(t + 1));
    b->free_pages -= size;
    return pfn;
}

/* aligned_blocks(): next maximal aligned block of [pfn, pfn + npages) */
static inline int aligned_order(int64_t pfn, int64_t npages)
{
    int order = pfn ? ctz64((uint64_t)pfn) : MAXO;
    int lim = flog2((uint64_t)npages);
    if (lim < order) order = lim;
    if (MAXO < order) order = MAXO;
    return order;
}

/* alloc_pages: n order-0 pages as (pfn, npages) runs in the order taken, adjacent ones
 * merged (*runs grows as needed, *nruns set); -1 = OOM, nothing changed */
static int buddy_alloc_pages(buddy_t *b, int64_t n, int movable, int64_t **runs, int64_t *cap,
                             int64_t *nruns)
{
    *nruns = 0;
    if (n == 0) return 0;
    if (n > b->free_pages) return -1;
    int t = movable ? MOVABLE : UNMOVABLE;
    int64_t rem = n, k = 0, last_end = -1;
    int lowest = 0;
    while (rem) {
        int64_t pfn = -1;
        int o;
        for (o = lowest; o <= KMAX; o++)
            if (b->lhead[t][o] >= 0) {
                pfn = list_pop(b, t, o);
                lowest = o;
                break;
            }
        if (pfn < 0) {
            lowest = 0;
            if (take_slow(b, 0, t, &pfn, &o) < 0) abort();   /* n <= free_pages */
            if (o && b->labels[pfn >> PBO] != t) {
                carve(b, pfn, o, pfn, 0);
                o = 0;
            }
        }
        int64_t size = 1ll << o;
        if (size > rem) {
            int64_t p = pfn + rem, np = size - rem;
            while (np > 0) {
                int ko = aligned_order(p, np);
                add_free(b, p, ko);
                p += 1ll << ko;
                np -= 1ll << ko;
            }
            size = rem;
        }
        rm_set(&b->st, pfn, pfn + size, (uint32_t)(t + 1));
        if (pfn == last_end) {
            (*runs)[2 * k - 1] += size;
        } else {
            grow_keep64(runs, cap, 2 * k + 2);
            (*runs)[2 * k] = pfn;
            (*runs)[2 * k + 1] = size;
            k++;
        }
        last_end = pfn + size;
        rem -= size;
    }
    b->free_pages -= n;
    *nruns = k;
    return 0;
}

static void make_chunks_uniform(buddy_t *b, int64_t pfn, int order)  /* _make_chunks_uniform */
{
    int64_t a = pfn >> PBO, e = a + (1ll << (order - PBO));
    uint8_t first = b->labels[a];
    int64_t i;
    for (i = a; i < e; i++)
        if (b->labels[i] != first) break;
    if (i == e) return;
    int64_t per = 1ll << ((order < KMAX ? order : KMAX) - PBO);
    for (int64_t s = a; s < e; s += per) {
        uint8_t last = b->labels[s + per - 1];
        for (i = s; i < s + per; i++)
            if (b->labels[i] != last) break;
        if (i < s + per) memset(b->labels + s, last, (size_t)per);
    }
}

static void free_block(buddy_t *b, int64_t pfn, int order)          /* _free_block */
{
    if (order > PBO) make_chunks_uniform(b, pfn, order);
    int t = b->labels[pfn >> PBO];
    while (order < MAXO) {
        int64_t buddy = pfn ^ (1ll << order);
        if (buddy >= b->total) break;
        int64_t i = h_find(&b->h, buddy);
        if (i < 0 || (b->h.e[i].code >> 2) != order) break;
        int kind = b->h.e[i].code & 3;
        if (kind == BIG) {
            remove_free(b, buddy);
        } else {
            if (kind != t && PBO <= order && order < KMAX) relabel(b, buddy, order, t);
            list_unlink(b, kind, order, b->h.e[i].node);
            h_delete_at(&b->h, (uint64_t)i);
            b->nr[order]--;
        }
        pfn &= buddy;
        order++;
    }
    add_free(b, pfn, order);
}

static void buddy_free(buddy_t *b, int64_t pfn, int order)          /* free */
{
    int64_t size = 1ll << order;
    rm_set(&b->st, pfn, pfn + size, ST_FREE);
    b->free_pages += size;
    free_block(b, pfn, order);
}

static void buddy_free_range(buddy_t *b, int64_t pfn, int64_t npages)   /* free_range */
{
    rm_set(&b->st, pfn, pfn + npages, ST_FREE);
    b->free_pages += npages;
    while (npages > 0) {
        int o = aligned_order(pfn, npages);
        free_block(b, pfn, o);
        pfn += 1ll << o;
        npages -= 1ll << o;
    }
}

static void buddy_init(buddy_t *b, int64_t total)
{
    memset(b, 0, sizeof(*b));
    b->total = total;
    b->pbsize = 1 << PBO;
    b->npb = (total + b->pbsize - 1) >> PBO;
    rm_init(&b->st, total, 0, ST_FREE);
    b->labels = malloc((size_t)b->npb);
    if (!b->labels) abort();
    memset(b->labels, MOVABLE, (size_t)b->npb);
    memset(b->lhead, 0xff, sizeof(b->lhead));
    memset(b->bhead, 0xff, sizeof(b->bhead));
    h_init(&b->h, 10);
    b->free_node = -1;
    b->nbig = (total >> (KMAX + 1)) + 1;
    for (int l = 0; l < 3; l++) {
        b->bolder[l] = xcalloc((size_t)b->nbig, sizeof(int64_t));
        b->bnewer[l] = xcalloc((size_t)b->nbig, sizeof(int64_t));
        b->bin[l] = xcalloc((size_t)b->nbig, 1);
    }
    /* boot memory: lowest address at the list heads (insert highest first) */
    int64_t nblk = 0, p = 0, np = total;
    while (np > 0) { int o = aligned_order(p, np); p += 1ll << o; np -= 1ll << o; nblk++; }
    int64_t *bp = malloc((size_t)nblk * sizeof(int64_t));
    int *bo = malloc((size_t)nblk * sizeof(int));
    p = 0; np = total; nblk = 0;
    while (np > 0) {
        int o = aligned_order(p, np);
        bp[nblk] = p; bo[nblk++] = o;
        p += 1ll << o; np -= 1ll << o;
    }
    for (int64_t i = nblk - 1; i >= 0; i--) add_free(b, bp[i], bo[i]);
    free(bp);
    free(bo);
    b->free_pages = total;
}

static void buddy_destroy(buddy_t *b)
{
    rm_destroy(&b->st);
    free(b->labels);
    free(b->h.e);
    free(b->nodes);
    for (int l = 0; l < 3; l++) {
        free(b->bolder[l]);
        free(b->bnewer[l]);
        free(b->bin[l]);
    }
}

/* ------------------------------------------------------------------ attributes (ranges.py) */
static void attrs_init(attrs_t *a, int64_t npages, int initial)
{
    rm_init(a, npages, 0, (uint32_t)initial);
}

static int attrs_is_uniform(const attrs_t *a, int64_t start, int64_t end, int v)
{
    return rm_is_uniform(a, start, end, (uint32_t)v);
}

static void attrs_set(attrs_t *a, int64_t start, int64_t end, int v)
{
    rm_set(a, start, end, (uint32_t)v);
}

/* ------------------------------------------------------------------ host (model.py Host) */
static int shrink(core_t *c);

static int64_t host_alloc_huge(core_t *c, int order, int movable)    /* alloc_huge */
{
    int64_t pfn = buddy_alloc(&c->b, order, movable);
    if (pfn >= 0) return pfn;
    if (shrink(c)) {
        pfn = buddy_alloc(&c->b, order, movable);
        if (pfn >= 0) return pfn;
    }
    c->huge_fallbacks++;
    return -1;
}

static int64_t host_alloc_hugetlb(core_t *c, int order, int *pooled)   /* alloc_hugetlb */
{
    int i = order == 9 ? 0 : 1;
    if (c->npool[i]) {
        *pooled = 1;
        return c->pool[i][--c->npool[i]];
    }
    *pooled = 0;
    return host_alloc_huge(c, order, 0);
}

static void host_free_hugetlb(core_t *c, int64_t pfn, int order)      /* free_hugetlb */
{
    int i = order == 9 ? 0 : 1;
    if (c->npool[i] == c->cap_pool[i]) {
        c->cap_pool[i] = c->cap_pool[i] ? 2 * c->cap_pool[i] : 64;
        c->pool[i] = realloc(c->pool[i], (size_t)c->cap_pool[i] * sizeof(int64_t));
        if (!c->pool[i]) abort();
    }
    c->pool[i][c->npool[i]++] = pfn;
}

/* alloc_pages: n pages as runs in c->aruns (c->naruns); OutOfMemory unwinds to the step */
static void host_alloc_pages(core_t *c, int64_t n, int movable)
{
    buddy_t *b = &c->b;
    if (buddy_alloc_pages(b, n, movable, &c->aruns, &c->cap_aruns, &c->naruns) == 0) return;
    if (!shrink(c) || buddy_alloc_pages(b, n, movable, &c->aruns, &c->cap_aruns, &c->naruns) < 0) {
        if (c->in_step) longjmp(c->oom, 1);
        abort();
    }
}

static int cmp_run(const void *x, const void *y)
{
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

/* free_pfns: k (pfn, npages) runs of held pages, freed by address as maximal contiguous runs
 * (runs is reordered) */
static void host_free_runs(core_t *c, int64_t *runs, int64_t k)
{
    if (!k) return;
    int64_t i;
    for (i = 1; i < k; i++)
        if (runs[2 * i] < runs[2 * i - 2]) break;
    if (i < k) qsort(runs, (size_t)k, 2 * sizeof(int64_t), cmp_run);
    int64_t s = runs[0], n = runs[1];
    for (i = 1; i <= k; i++) {
        if (i < k && runs[2 * i] == s + n) {
            n += runs[2 * i + 1];
            continue;
        }
        buddy_free_range(&c->b, s, n);
        if (i < k) {
            s = runs[2 * i];
            n = runs[2 * i + 1];
        }
    }
}

static void push_run(int64_t **v, int64_t *cap, int64_t *k, int64_t start, int64_t n)
{
    grow_keep64(v, cap, 2 * *k + 2);
    (*v)[2 * *k] = start;
    (*v)[2 * *k + 1] = n;
    (*k)++;
}

static int64_t rm_count_bit(const rmap_t *m, int64_t a, int64_t b, uint32_t bit)
{
    int64_t n = 0;
    while (a < b) {
        uint32_t x;
        int64_t e = rm_seg(m, a, b, &x);
        if (x & bit) n += e - a;
        a = e;
    }
    return n;
}

/* ------------------------------------------------------------------ touch */
static int64_t touch(core_t *c, rmap_t *data, int64_t p0, int64_t p1, int write, uint64_t token)
{
    led_op(c, K_TOUCH_PAGE, p1 - p0);
    if (write) {
        rm_set(data, p0, p1, (uint32_t)token);
        return 0;
    }
    if (token == NO_CHECK) return 0;
    if (token > UINT32_MAX) return p1 - p0;
    return (p1 - p0) - rm_count_eq(data, p0, p1, (uint32_t)token);
}

/* ------------------------------------------------------------------ GuestMemfd */
static void lru_push(gmem_t *g, int64_t f)
{
    if (g->lru_len < LRU_BATCH) {
        g->lru[(g->lru_start + g->lru_len) % LRU_BATCH] = f;
        g->lru_len++;
    } else {
        g->lru[g->lru_start] = f;
        g->lru_start = (g->lru_start + 1) % LRU_BATCH;
    }
}

/* A huge folio's state and huge-mapping bits change only through these two, which keep
 * the snapshot counters (core_t st_*) equal to a recount */
static void gmem_set_fstate(core_t *c, gmem_t *g, int64_t f, int st)
{
    c->st_intact += (st == INTACT) - (g->fstate[f] == INTACT);
    g->fstate[f] = (uint8_t)st;
}

static void gmem_set_fbits(core_t *c, gmem_t *g, int64_t f, uint8_t bits)
{
    uint8_t old = g->fbits[f];
    int64_t bytes = g->fpages * (int64_t)PAGE_SIZE;
    c->st_s2_huge[g->order == 9 ? 0 : 1] +=
        (((bits & FB_S2_HUGE) != 0) - ((old & FB_S2_HUGE) != 0)) * bytes;
    c->st_host_huge += (((bits & FB_PMD_ALL) != 0) - ((old & FB_PMD_ALL) != 0)) * bytes;
    g->fbits[f] = bits;
}

/* give the absent pages of `map` (nholes (start, end) runs in c->miss, n pages) the pages
 * of c->aruns in order */
static void fill_holes(core_t *c, rmap_t *map, int64_t nholes)
{
    int64_t r = 0, used = 0;
    for (int64_t h = 0; h < nholes; h++) {
        int64_t p = c->miss[2 * h], e = c->miss[2 * h + 1];
        while (p < e) {
            int64_t avail = c->aruns[2 * r + 1] - used, k = e - p < avail ? e - p : avail;
            rm_set(map, p, p + k, (uint32_t)(c->aruns[2 * r] + used + 1));
            p += k;
            used += k;
            if (used == c->aruns[2 * r + 1]) {
                r++;
                used = 0;
            }
        }
    }
}

static void gmem_alloc_4k(core_t *c, gmem_t *g, int64_t nholes, int64_t n)   /* _alloc_4k */
{
    host_alloc_pages(c, n, 0);
    fill_holes(c, &g->page_pfn, nholes);
    g->present += n;
    c->footprint += n;
    led_op(c, K_FAULT_GMEM, n);
    /* the last LRU_BATCH pages faulted enter the per-CPU LRU batch */
    int64_t skip = n > LRU_BATCH ? n - LRU_BATCH : 0, i = 0;
    for (int64_t h = 0; h < nholes; h++) {
        int64_t a = c->miss[2 * h], e = c->miss[2 * h + 1];
        if (i + (e - a) <= skip) {
            i += e - a;
            continue;
        }
        for (int64_t p = a; p < e; p++, i++)
            if (i >= skip) lru_push(g, p >> g->order);
    }
}

/* the absent pages of [a, b) as (start, end) runs in c->miss; returns the run count, *n pages */
static int64_t collect_missing(core_t *c, const rmap_t *map, int64_t a, int64_t b, int64_t *n)
{
    int64_t k = 0;
    *n = 0;
    while (a < b) {
        uint32_t v;
        int64_t e = rm_seg(map, a, b, &v);
        if (!v) {
            push_run(&c->miss, &c->cap_miss, &k, a, e);     /* (start, end) */
            *n += e - a;
        }
        a = e;
    }
    return k;
}

static void gmem_split_folio(core_t *c, gmem_t *g, int64_t f);

/* populate; view: the slot's attributes (only read with split_on_share, i.e. in-place) */
static int64_t gmem_populate(core_t *c, gmem_t *g, const attrs_t *view, int64_t p0, int64_t p1)
{
    if (!g->order) {
        int64_t n, k = collect_missing(c, &g->page_pfn, p0, p1, &n);
        if (n) gmem_alloc_4k(c, g, k, n);
        return n;
    }
    int o = g->order;
    int64_t fp = g->fpages, f0 = p0 >> o, f1 = ((p1 - 1) >> o) + 1, faulted = 0;
    for (int64_t f = f0; f < f1; f++) {
        if (g->fstate[f] == INTACT) continue;
        int64_t a = p0 > f * fp ? p0 : f * fp, b = p1 < (f + 1) * fp ? p1 : (f + 1) * fp;
        if (g->fstate[f] == ABSENT) {
            int pooled;
            int64_t pfn = host_alloc_hugetlb(c, o, &pooled);
            if (pfn >= 0) {
                gmem_set_fstate(c, g, f, INTACT);
                g->fpfn[f] = pfn;
                g->present += fp;
                if (!pooled) c->footprint += fp;
                c->huge_pages += fp;
                led_op(c, o == 9 ? K_FAULT_GMEM_2M : K_FAULT_1G, 1);
                faulted += fp;          /* a large folio never enters the LRU batch */
                if (g->split_on_share && !attrs_is_uniform(view, f * fp, (f + 1) * fp, PRIVATE))
                    gmem_split_folio(c, g, f);
                continue;
            }
            gmem_set_fstate(c, g, f, FALLBACK);
        }
        int64_t n, k = collect_missing(c, &g->page_pfn, a, b, &n);
        if (n) {
            gmem_alloc_4k(c, g, k, n);
            faulted += n;
        }
    }
    return faulted;
}

/* the run of pages from p (< lim) that are present or absent as p is (*pr) */
static int64_t gmem_present_seg(const gmem_t *g, int64_t p, int64_t lim, int *pr)
{
    int first = -1, o = g->order;
    while (p < lim) {
        int v;
        int64_t e;
        if (o && g->fstate[p >> o] == INTACT) {
            v = 1;
            e = ((p >> o) + 1) << o;
            if (e > lim) e = lim;
        } else {
            uint32_t x;
            e = rm_seg(&g->page_pfn, p, lim, &x);
            v = x != 0;
            if (o && e > (((p >> o) + 1) << o)) e = ((p >> o) + 1) << o;
        }
        if (first < 0) first = v;
        else if (v != first) break;
        p = e;
    }
    *pr = first;
    return p;
}

/* pages of [p0, p1) that hold a page: the part of an intact huge unit (state[u] == INTACT,
 * units of 1 << order pages) in full, the others by their pfn map; order 0: no huge units */
static int64_t count_present(const rmap_t *page_pfn, const uint8_t *state, int order,
                             int64_t p0, int64_t p1)
{
    if (!order) return rm_count_nz(page_pfn, p0, p1);
    int64_t up = (int64_t)1 << order, n = 0;
    for (int64_t u = p0 >> order; u <= (p1 - 1) >> order; u++) {
        int64_t a = p0 > u * up ? p0 : u * up, b = p1 < (u + 1) * up ? p1 : (u + 1) * up;
        n += state[u] == INTACT ? b - a : rm_count_nz(page_pfn, a, b);
    }
    return n;
}

static int64_t gmem_count_present(const gmem_t *g, int64_t p0, int64_t p1)
{
    return count_present(&g->page_pfn, g->fstate, g->order, p0, p1);
}

static void gmem_split_folio(core_t *c, gmem_t *g, int64_t f)        /* _split_folio */
{
    int64_t fp = g->fpages, base = g->fpfn[f];
    rm_set(&g->page_pfn, f * fp, (f + 1) * fp, (uint32_t)(base + 1));
    gmem_set_fstate(c, g, f, SPLIT);
    if (!(g->fbits[f] & FB_DEMOTED))      /* a demoted mapping already counted this folio */
        c->huge_splits++;
    g->fbits[f] |= FB_DEMOTED;            /* its mappings can only be 4K now */
    c->huge_pages -= fp;
    c->folio_splits++;
    led_op(c, K_FOLIO_SPLIT, fp);          /* O(pages): every 4K folio re-inserted */
    led_op(c, K_HUGETLB_VMEMMAP_RESTORE, fp);
}

static void gmem_merge_folio(core_t *c, gmem_t *g, int64_t f)        /* _merge_folio */
{
    int64_t fp = g->fpages;
    rm_set(&g->page_pfn, f * fp, (f + 1) * fp, 0);
    gmem_set_fstate(c, g, f, INTACT);
    c->huge_pages += fp;
    c->folio_merges++;
    led_op(c, K_FOLIO_MERGE, fp);          /* O(pages): every 4K folio removed */
    led_op(c, K_HUGETLB_VMEMMAP_OPTIMIZE, fp);
}

static void gmem_restructure(core_t *c, gmem_t *g, const attrs_t *a, int64_t p0, int64_t p1,
                             int split)                                /* _restructure */
{
    int o = g->order;
    int64_t fp = g->fpages, f0 = p0 >> o, f1 = ((p1 - 1) >> o) + 1;
    for (int64_t f = f0; f < f1; f++) {
        if (g->fstate[f] != (split ? INTACT : SPLIT)) continue;
        if (split) gmem_split_folio(c, g, f);
        else if (attrs_is_uniform(a, f * fp, (f + 1) * fp, PRIVATE)) gmem_merge_folio(c, g, f);
    }
}

static void gmem_demote(core_t *c, gmem_t *g, int64_t f)            /* _demote */
{
    if (!(g->fbits[f] & FB_DEMOTED)) {
        g->fbits[f] |= FB_DEMOTED;
        c->huge_splits++;
    }
}


/* zap_host: every process's PTEs and PMDs (unmap_mapping_range) */
static int64_t gmem_zap_host(core_t *c, gmem_t *g, int64_t p0, int64_t p1, int charge)
{
    /* pages each host process maps, summed over the processes */
    int64_t n = rm_update_bits(&g->pflags, p0, p1, PF_HOST_ALL, 0);
    /* inside the ioctl: the measured MADV_DONTNEED figure less its syscall entry */
    if (n && charge) led_op_beyond(c, K_HOST_ZAP_PTE, K_IOCTL_ENTRY, n);
    if (g->order) {
        int o = g->order;
        int64_t fp = g->fpages, f0 = p0 >> o, f1 = ((p1 - 1) >> o) + 1;
        for (int64_t f = f0; f < f1; f++) {
            uint8_t pm = g->fbits[f] & FB_PMD_ALL;
            if (!pm) continue;
            int k = __builtin_popcount(pm);
            int64_t a = f * fp, b = (f + 1) * fp;
            if (a < p0 || b > p1) {
                uint32_t bits = 0;      /* the PMD mappers map the rest of the folio by PTEs */
                for (int q = 0; q < MAX_PROCS; q++)
                    if (pm & fb_pmd(q)) bits |= pf_host(q);
                if (a < p0) rm_update_bits(&g->pflags, a, p0, 0, bits);
                if (b > p1) rm_update_bits(&g->pflags, p1, b, 0, bits);
                gmem_demote(c, g, f);
                c->mapping_demotions += k;
            }
            n += k;
            if (charge)
                for (int i = 0; i < k; i++) led_op(c, K_HOST_ZAP_PMD, 1);
            gmem_set_fbits(c, g, f, g->fbits[f] & ~FB_PMD_ALL);
        }
    }
    return n;
}

static void vm_kick_vcpus(core_t *c, int64_t n)                   /* VM.kick_vcpus */
{
    led_each(c, K_VCPU_KICK, n);                        /* one multicast IPI with wait */
    led_each(c, K_VCPU_KICK_PER_VCPU, n * c->vcpus);
}

static void vm_flush_tlbs(core_t *c)                               /* VM.flush_tlbs */
{
    led_op(c, K_TLB_FLUSH, 1);
    vm_kick_vcpus(c, 1);
}

static void vm_tdx_track(core_t *c)                                /* VM.tdx_track */
{
    led_op(c, K_TDX_TRACK, 1);
    vm_kick_vcpus(c, 1);
}

static void tdx_remove(core_t *c, int64_t leaves, int64_t pages)   /* _tdx_remove */
{
    led_each(c, K_TDX_BLOCK, leaves);
    led_each(c, K_TDX_TRACK, leaves);
    vm_kick_vcpus(c, leaves);
    led_each(c, K_FW_TDX_TO_SHARED, pages);
}

static void gmem_zap_stage2(core_t *c, gmem_t *g, int64_t p0, int64_t p1, int private_leaves)
{
    int tdx = private_leaves && c->plat == PLAT_TDX;
    int64_t n = rm_clear_bit(&g->pflags, p0, p1, PF_S2), leaves = n;
    c->st_s2_4k -= n;
    led_each(c, K_STAGE2_ZAP_4K, n);
    if (n && tdx) tdx_remove(c, n, n);
    if (g->order) {
        int o = g->order;
        int64_t fp = g->fpages, f0 = p0 >> o, f1 = ((p1 - 1) >> o) + 1;
        for (int64_t f = f0; f < f1; f++) {
            if (!(g->fbits[f] & FB_S2_HUGE)) continue;
            int64_t a = f * fp, b = (f + 1) * fp;
            if (a < p0 || b > p1) {
                c->st_s2_4k += rm_set_bit(&g->pflags, a, p0, PF_S2)
                               + rm_set_bit(&g->pflags, p1, b, PF_S2);
                gmem_demote(c, g, f);
                c->mapping_demotions++;
                if (tdx) {
                    led_op(c, K_TDX_BLOCK, 1);
                    vm_tdx_track(c);
                    led_op(c, K_TDX_DEMOTE, 1);
                    int64_t inside = (b < p1 ? b : p1) - (a > p0 ? a : p0);
                    tdx_remove(c, inside, inside);
                }
            } else if (tdx) {
                tdx_remove(c, 1, fp);
            }
            gmem_set_fbits(c, g, f, g->fbits[f] & ~FB_S2_HUGE);
            led_each(c, K_STAGE2_ZAP_HUGE, 1);
            leaves++;
        }
    }
    if (leaves) {
        if (tdx) rm_clear_bit(&g->pflags, p0, p1, PF_PREP);
        vm_flush_tlbs(c);
    }
}

static void gmem_prepare(core_t *c, gmem_t *g, int64_t p0, int64_t p1)   /* _prepare */
{
    if (c->tdx_private_2m && c->plat == PLAT_TDX && g->order == 9) {
        int64_t fp = g->fpages;    /* whole intact folios none of whose pages is accepted */
        for (int64_t f = (p0 + fp - 1) / fp; (f + 1) * fp <= p1; f++) {
            if (g->fstate[f] != INTACT || (g->fbits[f] & FB_S2_HUGE)) continue;
            if ((g->fbits[f] & FB_DEMOTED) && !g->promote) continue;
            if (rm_any_bit(&g->pflags, f * fp, (f + 1) * fp, PF_PREP)) continue;
            rm_set_bit(&g->pflags, f * fp, (f + 1) * fp, PF_PREP);
            led_op(c, K_FW_TDX_TO_PRIVATE_2M, 1);
            g->fbits[f] |= FB_ACC2M;
        }
    }
    int64_t n = rm_set_bit(&g->pflags, p0, p1, PF_PREP);
    if (n && c->plat != PLAT_SW)
        led_each(c, c->plat == PLAT_TDX ? K_FW_TDX_TO_PRIVATE : K_FW_SNP_TO_PRIVATE, n);
}

static void gmem_snp_make_shared(core_t *c, gmem_t *g, int64_t p0, int64_t p1)  /* _snp_make_shared */
{
    int64_t n = rm_clear_bit(&g->pflags, p0, p1, PF_PREP);
    if (n && c->plat == PLAT_SNP) led_each(c, K_FW_SNP_TO_SHARED, n);
}

/* set `bit` on [a, b); count the pages newly set that are not fresh (fresh: nfresh sorted
 * runs (start, end) of pages that were absent before the access faulted them in) */
static int64_t set_flag_count_old(rmap_t *fl, int64_t a, int64_t b, uint32_t bit,
                                  const int64_t *fresh, int64_t nfresh)
{
    int64_t n = 0, k = 0;
    while (a < b) {
        uint32_t x;
        int64_t e = rm_seg(fl, a, b, &x);
        if (!(x & bit)) {
            rm_set(fl, a, e, x | bit);
            n += e - a;
            while (k < nfresh && fresh[2 * k + 1] <= a) k++;
            for (int64_t q = k; q < nfresh && fresh[2 * q] < e; q++) {
                int64_t lo = fresh[2 * q] > a ? fresh[2 * q] : a;
                int64_t hi = fresh[2 * q + 1] < e ? fresh[2 * q + 1] : e;
                if (lo < hi) n -= hi - lo;
            }
        }
        a = e;
    }
    return n;
}

static void gmem_map(core_t *c, gmem_t *g, const attrs_t *view, int64_t p0, int64_t p1,
                     int guest, int proc, int state, const int64_t *fresh,
                     int64_t nfresh)   /* _map */
{
    uint8_t pte = guest ? PF_S2 : pf_host(proc);
    int64_t n = 0;
    if (g->order) {
        uint8_t pmd = guest ? FB_S2_HUGE : fb_pmd(proc);
        int o = g->order;
        int64_t fp = g->fpages, f0 = p0 >> o, f1 = ((p1 - 1) >> o) + 1;
        int tdx_private = guest && state == PRIVATE && c->plat == PLAT_TDX;
        for (int64_t f = f0; f < f1; f++) {
            int acc2m = g->fbits[f] & FB_ACC2M;
            g->fbits[f] &= ~FB_ACC2M;
            if (g->fstate[f] != INTACT) continue;
            if (g->fbits[f] & pmd) continue;
            if (tdx_private && !acc2m) continue;      /* upstream TDX: 4K private leaves */
            if ((g->fbits[f] & FB_DEMOTED) && !g->promote) continue;
            if (!attrs_is_uniform(view, f * fp, (f + 1) * fp, state)) continue;
            gmem_set_fbits(c, g, f, g->fbits[f] | pmd);
            int64_t cleared = rm_clear_bit(&g->pflags, f * fp, (f + 1) * fp, pte);
            if (guest) c->st_s2_4k -= cleared;
            if (g->fbits[f] & FB_DEMOTED) {
                g->fbits[f] &= ~FB_DEMOTED;
                c->huge_merges++;
            }
        }
        for (int64_t f = f0; f < f1; f++) {
            if (g->fbits[f] & pmd) continue;
            int64_t a = p0 > f * fp ? p0 : f * fp, b = p1 < (f + 1) * fp ? p1 : (f + 1) * fp;
            n += set_flag_count_old(&g->pflags, a, b, pte, fresh, nfresh);
        }
    } else {
        n = set_flag_count_old(&g->pflags, p0, p1, pte, fresh, nfresh);
    }
    if (guest) c->st_s2_4k += n;          /* fresh is NULL for the guest: n pages newly set */
    if (n && !guest) led_each(c, K_REFAULT_GMEM, n);
}

/* _first_elevated: page index, or -1 */
static int64_t gmem_first_elevated(core_t *c, gmem_t *g, int64_t p0, int64_t p1)
{
    int o = g->order;
    int64_t fp = g->fpages, f0 = p0 >> o, f1 = ((p1 - 1) >> o) + 1, nfolios = 0;
    if (o) {
        for (int64_t f = f0; f < f1; f++) nfolios += g->fstate[f] != 0;
    } else {
        nfolios = rm_count_nz(&g->page_pfn, p0, p1);
    }
    led_each(c, K_REFCOUNT_SCAN_FOLIO, nfolios);
    int in_lru = 0;
    for (int i = 0; i < g->lru_len; i++) {
        int64_t f = g->lru[(g->lru_start + i) % LRU_BATCH];
        if (f0 <= f && f < f1) in_lru = 1;
    }
    if (in_lru) {
        led_op(c, K_LRU_DRAIN, 1);
        g->lru_len = 0;
        g->lru_start = 0;
    }
    if (g->npinned)
        for (int64_t p = f0 * fp, e; p < f1 * fp; p = e) {
            uint32_t v;
            e = rm_seg(&g->pins, p, f1 * fp, &v);
            if (v) return ((p >> o)) << o;
        }
    return -1;
}

static void gmem_arch_invalidate(core_t *c, gmem_t *g, int64_t p0, int64_t p1)
{
    if (g->platform == PLATFORM_PRESERVE) return;
    uint32_t v = g->platform == PLATFORM_ZERO ? 0 : GARBAGE;
    for (int64_t p = p0; p < p1;) {          /* runs of present pages */
        int pr;
        int64_t e = gmem_present_seg(g, p, p1, &pr);
        if (pr) rm_set(&g->data, p, e, v);
        p = e;
    }
    /* TDX cleared each page when it left the S-EPT (gmem_zap_stage2) */
    if (g->platform != PLATFORM_ZERO) gmem_snp_make_shared(c, g, p0, p1);
}

static int vm_has_private(const core_t *c) { return c->vm_type != VM_TYPE_DEFAULT; }
static void slot_attrs_set(core_t *c, slot_t *s, int64_t p0, int64_t p1, int v);

/* set_memory_attributes2 (flags 0, no reserved bits, struct copied): status, *err_off */
static int gmem_set_attrs2(core_t *c, slot_t *s, uint64_t offset, uint64_t size,
                           uint64_t attributes, int64_t *err_off)
{
    gmem_t *g = &s->g;
    led_op(c, K_IOCTL_ENTRY, 1);
    if (!c->in_place) return ENOTTY;
    if (!vm_has_private(c)) return EINVAL;
    if (attributes & ~(uint64_t)PRIVATE) return EINVAL;
    if (size == 0 || size > UINT64_MAX - offset) return EINVAL;
    if ((offset | size) & (PAGE_SIZE - 1)) return EINVAL;
    if (offset >= (uint64_t)g->size || offset + size > (uint64_t)g->size) return EINVAL;
    int64_t p0 = (int64_t)(offset >> PAGE_SHIFT), p1 = (int64_t)((offset + size) >> PAGE_SHIFT);
    int v = (int)attributes;
    if (attrs_is_uniform(&s->attrs, p0, p1, v)) return 0;
    if (v & PRIVATE) {
        gmem_zap_host(c, g, p0, p1, 1);
        int64_t bad = gmem_first_elevated(c, g, p0, p1);
        if (bad >= 0) {
            uint64_t bo = (uint64_t)bad * PAGE_SIZE;
            *err_off = (int64_t)(offset > bo ? offset : bo);
            return EAGAIN;
        }
    }
    gmem_zap_stage2(c, g, p0, p1, !(v & PRIVATE));
    if (!(v & PRIVATE)) gmem_arch_invalidate(c, g, p0, p1);
    slot_attrs_set(c, s, p0, p1, v);
    led_op(c, K_ATTR_UPDATE, 1);
    if (g->split_on_share) gmem_restructure(c, g, &s->attrs, p0, p1, !(v & PRIVATE));
    return 0;
}

/* the pages [a, b) hold as (pfn, n) runs in c->fruns, leaving out those that hold their own
 * page of a THP at own_pfn (the pfn of page own_at; own_at < 0: none); *k runs, returns pages */
static int64_t collect_pages(core_t *c, const rmap_t *page_pfn, int64_t a, int64_t b,
                             int64_t own_at, int64_t own_pfn, int64_t *k)
{
    int64_t n = 0;
    *k = 0;
    for (int64_t p = a; p < b;) {
        uint32_t v;
        int64_t e = rm_seg(page_pfn, p, b, &v);
        if (v && (own_at < 0 || v != (uint32_t)(own_pfn + 1 + p - own_at))) {
            push_run(&c->fruns, &c->cap_fruns, k, (int64_t)v - 1, e - p);
            n += e - p;
        }
        p = e;
    }
    return n;
}

static int64_t free_4k(core_t *c, rmap_t *page_pfn, int64_t a, int64_t b)   /* _free_4k */
{
    int64_t k, n = collect_pages(c, page_pfn, a, b, -1, 0, &k);
    if (n) rm_set(page_pfn, a, b, 0);
    host_free_runs(c, c->fruns, k);
    return n;
}

static int any_pfn(const rmap_t *page_pfn, int64_t a, int64_t b)
{
    return !rm_is_uniform(page_pfn, a, b, 0);
}

static int gmem_punch(core_t *c, gmem_t *g, uint64_t offset, uint64_t size)  /* fallocate_punch_hole */
{
    if (size == 0 || (offset | size) & (PAGE_SIZE - 1)) return EINVAL;
    int64_t p0 = (int64_t)(offset >> PAGE_SHIFT);
    unsigned __int128 end = ((unsigned __int128)offset + size) >> PAGE_SHIFT;
    int64_t p1 = end < (unsigned __int128)g->npages ? (int64_t)end : g->npages;
    if (offset >> PAGE_SHIFT >= (uint64_t)g->npages || p0 >= p1) return 0;
    int o = g->order;
    int64_t fp = g->fpages;
    int mapped = gmem_zap_host(c, g, p0, p1, 0) > 0;
    gmem_zap_stage2(c, g, p0, p1, 1);
    gmem_snp_make_shared(c, g, p0, p1);     /* freeing a prepared folio (kvm_gmem_free_folio) */
    int64_t freed = 0, zeroed = 0, pooled = 0;
    if (o) {
        /* kvm_gmem_truncate_inode_range: whole huge pages go back to the hugetlb pool (a
           split one merged first), a partly covered one is only zeroed */
        int64_t f0 = p0 >> o, f1 = ((p1 - 1) >> o) + 1;
        for (int64_t f = f0; f < f1; f++) {
            int state = g->fstate[f];
            if (!state) continue;
            int64_t a = f * fp, b = (f + 1) * fp;
            int64_t a2 = a > p0 ? a : p0, b2 = b < p1 ? b : p1;
            if (state == FALLBACK) {
                freed += free_4k(c, &g->page_pfn, a2, b2);
                if (!any_pfn(&g->page_pfn, a, b)) gmem_set_fstate(c, g, f, ABSENT);
            } else if (p0 <= a && b <= p1) {
                if (state == SPLIT) gmem_merge_folio(c, g, f);
                host_free_hugetlb(c, g->fpfn[f], o);
                gmem_set_fstate(c, g, f, ABSENT);
                g->fbits[f] &= ~FB_DEMOTED;
                c->huge_pages -= fp;
                pooled += fp;
            } else {
                zeroed += b2 - a2;
            }
        }
    } else {
        freed = free_4k(c, &g->page_pfn, p0, p1);
    }
    g->present -= freed + pooled;
    c->footprint -= freed;
    rm_set(&g->data, p0, p1, 0);
    if (zeroed) led_op(c, K_ZERO_FILL, zeroed);
    freed += pooled;
    /* the kernel walks the whole range; each freed page adds what the populated-range
       figures add on top of that walk */
    led_op(c, K_PUNCH_GMEM_EMPTY, p1 - p0);
    if (freed)
        led_op_beyond(c, mapped ? K_PUNCH_GMEM_MAPPED : K_PUNCH_GMEM_UNMAPPED, K_PUNCH_GMEM_EMPTY, freed);
    return 0;
}

/* access: status (0, SIGBUS_STATUS or errno), *mism */
/* access: guest 0 = host process proc, 1 = guest private access, 2 = guest shared access */
static int gmem_access(core_t *c, slot_t *s, int64_t p0, int64_t p1, int guest, int proc,
                       int write, uint64_t token, int64_t *mism)
{
    gmem_t *g = &s->g;
    if (p1 > g->npages) return guest ? EFAULT : SIGBUS_STATUS;
    int want = guest == 1 ? PRIVATE : SHARED_ATTR;
    if (!guest) {
        if (!(g->flags & GMEM_FLAG_MMAP)) return SIGBUS_STATUS;
        if (!attrs_is_uniform(&s->attrs, p0, p1, SHARED_ATTR)) return SIGBUS_STATUS;
    } else if (guest == 2 && !c->in_place) {
        return EFAULT;
    } else if (!attrs_is_uniform(&s->attrs, p0, p1, want)) {
        return EFAULT;
    }
    int64_t nfresh = 0;
    if (!guest) {       /* the first touch of a fresh page is its fault: no refault */
        for (int64_t p = p0; p < p1;) {
            int pr;
            int64_t e = gmem_present_seg(g, p, p1, &pr);
            if (!pr) {
                grow_keep64(&c->fresh, &c->cap_fresh, 2 * nfresh + 2);
                c->fresh[2 * nfresh] = p;
                c->fresh[2 * nfresh + 1] = e;
                nfresh++;
            }
            p = e;
        }
    }
    gmem_populate(c, g, &s->attrs, p0, p1);
    if (guest && want == PRIVATE) gmem_prepare(c, g, p0, p1);
    gmem_map(c, g, &s->attrs, p0, p1, guest != 0, guest ? 0 : proc, want, c->fresh, nfresh);
    *mism = touch(c, &g->data, p0, p1, write, token);
    return 0;
}

static int pin_pages(rmap_t *pins, int64_t *npinned, int64_t p0, int64_t p1, int delta)
{
    if (delta < 0 && rm_count_eq(pins, p0, p1, 0)) return EINVAL;
    for (int64_t p = p0, e; p < p1; p = e) {
        uint32_t old;
        e = rm_seg(pins, p, p1, &old);
        uint32_t v = (old + (delta > 0 ? 1u : 0xFFFFu)) & 0xFFFFu;    /* a uint16 count */
        rm_set(pins, p, e, v);
        if (npinned) *npinned += ((v != 0) - (old != 0)) * (e - p);
    }
    return 0;
}

/* ------------------------------------------------------------------ SharedBacking */
static int64_t attrs_count(const attrs_t *a, int64_t start, int64_t end, int v);

static inline const attrs_t *shared_vm_attrs(const core_t *c, const shared_t *s)
{
    return &c->slots[s->slot].attrs;
}

/* A huge chunk's state and the host's mappings change only through these, which keep the
 * snapshot counters (intact folios, PMD-mapped bytes) equal to a recount */
static void shared_set_chunk(core_t *c, shared_t *s, int64_t ch, int st)
{
    int delta = (st == INTACT) - (s->chunk[ch] == INTACT);
    c->st_intact += delta;
    if (s->chunk_mapped[ch]) c->st_host_huge += delta * 512 * (int64_t)PAGE_SIZE;
    s->chunk[ch] = (uint8_t)st;
}

/* pages [a, e) of one run of host_map were (mapped = 1: become) mapped or unmapped: the
 * per-chunk count of mapped pages, and a chunk's PMD-mapped bytes while it is intact */
static void shared_count_mapped(core_t *c, shared_t *s, int64_t a, int64_t e, int mapped)
{
    if (!s->huge) return;
    for (int64_t ch = a >> 9; ch <= (e - 1) >> 9; ch++) {
        int64_t lo = a > (ch << 9) ? a : (ch << 9), hi = e < ((ch + 1) << 9) ? e : ((ch + 1) << 9);
        uint16_t old = s->chunk_mapped[ch];
        s->chunk_mapped[ch] = (uint16_t)(mapped ? old + (hi - lo) : old - (hi - lo));
        if (s->chunk[ch] == INTACT && (old == 0) != (s->chunk_mapped[ch] == 0))
            c->st_host_huge += (mapped ? 512 : -512) * (int64_t)PAGE_SIZE;
    }
}

static void shared_host_map(core_t *c, shared_t *s, int64_t p0, int64_t p1, uint8_t bit)
{
    for (int64_t p = p0, e; p < p1; p = e) {
        uint32_t v;
        e = rm_seg(&s->host_map, p, p1, &v);
        if (!v) shared_count_mapped(c, s, p, e, 1);
        if (!(v & bit)) rm_set(&s->host_map, p, e, v | bit);
    }
}

/* unmap [p0, p1) from every process; whether anything was mapped */
static int shared_host_unmap(core_t *c, shared_t *s, int64_t p0, int64_t p1)
{
    int mapped = 0;
    for (int64_t p = p0, e; p < p1; p = e) {
        uint32_t v;
        e = rm_seg(&s->host_map, p, p1, &v);
        if (v) {
            mapped = 1;
            shared_count_mapped(c, s, p, e, 0);
        }
    }
    if (mapped) rm_set(&s->host_map, p0, p1, 0);
    return mapped;
}

static int64_t shared_count_present(const shared_t *s, int64_t p0, int64_t p1);

/* pages of [p0, p1) the shared backing holds whose attribute in `a` is (private = 1) or is
 * not (private = 0) PRIVATE */
static int64_t shared_present_where(const shared_t *s, const attrs_t *a, int64_t p0,
                                    int64_t p1, int private)
{
    /* no shared page at all, or none in the range (memory the guest never touched shared):
     * nothing to count and no walk over the attribute runs; when the range holds pages, the
     * pre-count is one extra walk of the shared backing's map */
    if (!s->present || !shared_count_present(s, p0, p1)) return 0;
    int64_t n = 0;
    for (int64_t p = p0, e; p < p1; p = e) {
        uint32_t v;
        e = rm_seg(a, p, p1, &v);
        if ((v == PRIVATE) == private) n += shared_count_present(s, p, e);
    }
    return n;
}

/* the slot's attributes set to v on [p0, p1), keeping the count of shared-backing pages
 * held at private GPAs */
static void slot_attrs_set(core_t *c, slot_t *s, int64_t p0, int64_t p1, int v)
{
    if (s->s) {
        if (v == PRIVATE) c->st_stale += shared_present_where(s->s, &s->attrs, p0, p1, 0);
        else c->st_stale -= shared_present_where(s->s, &s->attrs, p0, p1, 1);
    }
    attrs_set(&s->attrs, p0, p1, v);
}

static void shared_alloc_4k(core_t *c, shared_t *s, int64_t nholes, int64_t n)
{
    host_alloc_pages(c, n, 1);
    fill_holes(c, &s->page_pfn, nholes);
    const attrs_t *a = shared_vm_attrs(c, s);
    for (int64_t h = 0; h < nholes; h++)
        c->st_stale += attrs_count(a, c->miss[2 * h], c->miss[2 * h + 1], PRIVATE);
    s->present += n;
    c->footprint += n;
    led_op(c, s->kind == 0 ? K_FAULT_ANON : K_FAULT_SHMEM, n);
}

static int64_t shared_populate(core_t *c, shared_t *s, int64_t p0, int64_t p1)
{
    if (!s->huge) {
        int64_t n, k = collect_missing(c, &s->page_pfn, p0, p1, &n);
        if (n) shared_alloc_4k(c, s, k, n);
        return n;
    }
    int64_t c0 = p0 >> 9, c1 = ((p1 - 1) >> 9) + 1, faulted = 0;
    for (int64_t ch = c0; ch < c1; ch++) {
        if (s->chunk[ch] == INTACT) continue;
        int64_t a = p0 > (ch << 9) ? p0 : (ch << 9), b = p1 < ((ch + 1) << 9) ? p1 : ((ch + 1) << 9);
        if (s->chunk[ch] == ABSENT) {
            int64_t pfn = host_alloc_huge(c, 9, 1);
            if (pfn >= 0) {
                shared_set_chunk(c, s, ch, INTACT);
                int64_t e = (ch + 1) << 9 < s->npages ? (ch + 1) << 9 : s->npages;
                c->st_stale += attrs_count(shared_vm_attrs(c, s), ch << 9, e, PRIVATE);
                s->chunk_pfn[ch] = pfn;
                s->present += 512;
                c->footprint += 512;
                c->huge_pages += 512;
                led_op(c, s->kind == 0 ? K_FAULT_THP_ANON : K_FAULT_THP_SHMEM, 1);
                faulted += 512;
                continue;
            }
            shared_set_chunk(c, s, ch, SPLIT);
        }
        int64_t n, k = collect_missing(c, &s->page_pfn, a, b, &n);
        if (n) {
            shared_alloc_4k(c, s, k, n);
            faulted += n;
        }
    }
    return faulted;
}


static int64_t shared_count_present(const shared_t *s, int64_t p0, int64_t p1)
{
    return count_present(&s->page_pfn, s->chunk, s->huge ? 9 : 0, p0, p1);
}

/* access by host process proc: status; *mism */
static int shared_access(core_t *c, shared_t *s, int64_t p0, int64_t p1, int proc, int write,
                         uint64_t token, int64_t *mism)
{
    if (proc && s->kind == 0) return EFAULT;     /* anonymous memory: the VMM's only */
    shared_populate(c, s, p0, p1);
    shared_host_map(c, s, p0, p1, (uint8_t)(1 << proc));
    *mism = touch(c, &s->data, p0, p1, write, token);
    return 0;
}

static int64_t shared_guest_access(core_t *c, shared_t *s, gmem_t *g, int64_t p0, int64_t p1,
                                   int write, uint64_t token)            /* guest_access */
{
    shared_populate(c, s, p0, p1);
    c->st_s2_4k += rm_set_bit(&g->pflags, p0, p1, PF_S2);
    return touch(c, &s->data, p0, p1, write, token);
}

static int64_t attrs_count(const attrs_t *a, int64_t start, int64_t end, int v)
{
    return rm_count_eq(a, start, end, (uint32_t)v);
}

static int shared_discard(core_t *c, shared_t *s, int64_t p0, int64_t p1)   /* discard */
{
    if (s->page == 2) return 0;
    /* nothing in [p0, p1) stays held, nothing outside changes */
    c->st_stale -= shared_present_where(s, shared_vm_attrs(c, s), p0, p1, 1);
    int mapped = shared_host_unmap(c, s, p0, p1);
    int64_t freed = 0;
    if (s->huge) {
        int64_t c0 = p0 >> 9, c1 = ((p1 - 1) >> 9) + 1;
        for (int64_t ch = c0; ch < c1; ch++) {
            if (!s->chunk[ch]) continue;
            int64_t a = ch << 9, b = (ch + 1) << 9;
            int64_t lo = a > p0 ? a : p0, hi = b < p1 ? b : p1;
            int state = s->chunk[ch];
            if (state == INTACT && p0 <= a && b <= p1) {
                buddy_free(&c->b, s->chunk_pfn[ch], 9);
                shared_set_chunk(c, s, ch, ABSENT);
                c->huge_pages -= 512;
                freed += 512;
                continue;
            }
            if (state == INTACT) {
                int64_t base = s->chunk_pfn[ch];
                rm_set(&s->page_pfn, a, b, (uint32_t)(base + 1));
                c->huge_pages -= 512;
                c->huge_splits++;
                c->folio_splits++;
                if (s->kind == 0) {
                    shared_set_chunk(c, s, ch, DEFERRED);
                    if (s->ndeferred == s->cap_deferred) {
                        s->cap_deferred = s->cap_deferred ? 2 * s->cap_deferred : 64;
                        s->deferred = realloc(s->deferred, (size_t)s->cap_deferred * sizeof(int64_t));
                        if (!s->deferred) abort();
                    }
                    s->deferred[s->ndeferred++] = ch;
                    led_op_beyond(c, K_THP_SPLIT_ANON, K_DISCARD_ANON, 1);
                    rm_set(&s->page_pfn, lo, hi, 0);
                    continue;
                }
                shared_set_chunk(c, s, ch, SPLIT);
                led_op_beyond(c, K_THP_SPLIT_SHMEM, K_PUNCH_SHMEM_UNMAPPED, 1);
            }
            if (s->chunk[ch] == DEFERRED) {
                int64_t k, n = collect_pages(c, &s->page_pfn, lo, hi, a, s->chunk_pfn[ch], &k);
                rm_set(&s->page_pfn, lo, hi, 0);
                if (n) {
                    host_free_runs(c, c->fruns, k);
                    freed += n;
                }
                continue;
            }
            freed += free_4k(c, &s->page_pfn, lo, hi);
            if (!any_pfn(&s->page_pfn, a, b)) shared_set_chunk(c, s, ch, ABSENT);
        }
    } else {
        freed = free_4k(c, &s->page_pfn, p0, p1);
    }
    s->present -= freed;
    c->footprint -= freed;
    rm_set(&s->data, p0, p1, 0);
    if (s->kind == 0) led_op(c, K_DISCARD_ANON, freed > 1 ? freed : 1);
    else {
        led_op(c, mapped ? K_PUNCH_SHMEM_MAPPED : K_PUNCH_SHMEM_UNMAPPED, freed);
        led_op(c, K_MADVISE_DONTNEED_UNMAPPED, p1 - p0);   /* then madvise(MADV_DONTNEED) */
    }
    return 0;
}

static int shared_deferred_split(core_t *c, shared_t *s)           /* deferred_split */
{
    if (!s->ndeferred) return 0;
    int64_t freed = 0;
    for (int64_t i = 0; i < s->ndeferred; i++) {
        int64_t ch = s->deferred[i];
        if (s->chunk[ch] != DEFERRED) continue;
        int64_t a = ch << 9, base = s->chunk_pfn[ch], n = 0, k = 0;
        /* subpages no longer mapped (discarded) go back; re-touched holes have new pages */
        for (int64_t p = a; p < a + 512;) {
            uint32_t v;
            int64_t e = rm_seg(&s->page_pfn, p, a + 512, &v);
            if (v != (uint32_t)(base + 1 + p - a)) {
                push_run(&c->fruns, &c->cap_fruns, &k, base + p - a, e - p);
                n += e - p;
            }
            p = e;
        }
        host_free_runs(c, c->fruns, k);
        freed += n;
        shared_set_chunk(c, s, ch, SPLIT);
        s->present -= n;
    }
    c->footprint -= freed;
    s->ndeferred = 0;
    return freed > 0;
}

static int shrink(core_t *c)                                       /* Host._shrink */
{
    int any = 0;
    for (int i = 0; i < c->nshrinkers; i++)
        any |= shared_deferred_split(c, c->slots[c->shrinkers[i]].s);
    return any;
}

/* ------------------------------------------------------------------ VM */
static int vm_set_attrs(core_t *c, slot_t *s, uint64_t offset, uint64_t size, uint64_t attributes)
{
    led_op(c, K_IOCTL_ENTRY, 1);
    int supported = vm_has_private(c) && !c->in_place ? PRIVATE : 0;
    if (!supported) return !vm_has_private(c) ? ENOTTY : EINVAL;
    if (attributes & ~(uint64_t)supported) return EINVAL;
    if (size == 0 || size > UINT64_MAX - offset || (offset | size) & (PAGE_SIZE - 1)) return EINVAL;
    int64_t p0 = (int64_t)(offset >> PAGE_SHIFT);
    uint64_t e = (offset + size) >> PAGE_SHIFT;
    int64_t p1 = e < (uint64_t)s->attrs.npages ? (int64_t)e : s->attrs.npages;
    if (offset >> PAGE_SHIFT >= (uint64_t)s->attrs.npages || p0 >= p1) return 0;
    if (attrs_is_uniform(&s->attrs, p0, p1, (int)attributes)) return 0;
    gmem_zap_stage2(c, &s->g, p0, p1, !(attributes & PRIVATE));
    slot_attrs_set(c, s, p0, p1, (int)attributes);
    led_each(c, K_VM_ATTR_XA_STORE, p1 - p0);   /* xa_store per 4K under slots_lock */
    return 0;
}

static void vm_conversion_request(core_t *c, int64_t pages, int continues)   /* VM.conversion_request */
{
    if (!continues)
        led_op(c, c->plat == PLAT_TDX ? K_EXIT_REQUEST_TDX
                  : c->plat == PLAT_SNP ? K_EXIT_REQUEST_SNP : K_EXIT_REQUEST_SW, 1);
    led_op(c, K_EXIT_TO_USERSPACE, 1);
    led_op(c, K_VMM_DISPATCH, 1);
    if (c->plat == PLAT_SNP) led_each(c, K_GUEST_PVALIDATE_SNP, pages);
    else if (c->plat == PLAT_SW) led_each(c, K_HYP_SHARE_SW, pages);
}

/* ------------------------------------------------------------------ public */
int core_nkeys(void) { return NKEYS; }

const char *core_key_name(int key) { return key >= 0 && key < NKEYS ? key_names[key] : NULL; }

core_t *core_new(int64_t total_pages, const double *fixed, const double *per_page)
{
    if (total_pages < 1 || total_pages > (int64_t)UINT32_MAX - 1) return NULL;   /* pfn + 1 in a uint32 */
    core_t *c = xcalloc(1, sizeof(*c));
    memcpy(c->fixed, fixed, sizeof(c->fixed));
    memcpy(c->per_page, per_page, sizeof(c->per_page));
    for (int k = 0; k < NKEYS; k++) c->lfirst[k] = -1;
    c->last_op = -1;
    c->conv_op = -2;
    c->vcpus = 1;
    buddy_init(&c->b, total_pages);
    c->vm_type = 1;
    return c;
}

int64_t core_prefragment(core_t *c, const int64_t *chosen, const int64_t *offsets, int64_t k)
{
    buddy_t *b = &c->b;
    int64_t pinned = 0;
    for (int64_t i = 0; i < k; i++) {
        int64_t pb = chosen[i], s = pb << PBO, p = s + offsets[i];
        if (rm_get(&b->st, p) != ST_FREE) {
            p = find_free(b, s, s + b->pbsize);
            if (p < 0) continue;
        }
        int64_t block = -1;
        int order = 0;
        for (int o = 0; o <= MAXO; o++) {
            int64_t blk = p & ~((1ll << o) - 1);
            int code = head_code(b, blk);
            if (code >= 0 && p < blk + (1ll << (code >> 2))) {
                block = blk;
                order = code >> 2;
                break;
            }
        }
        if (block < 0) abort();
        remove_free(b, block);
        carve(b, block, order, p, 0);
        rm_set(&b->st, p, p + 1, ST_USED_UNMOVABLE);
        b->free_pages--;
        set_pageblock_type(b, pb, UNMOVABLE);
        pinned++;
    }
    c->pinned_by_aging = pinned;
    return pinned;
}

void core_set_split_on_share(core_t *c, int slot, int on)
{
    gmem_t *g = &c->slots[slot].g;
    g->split_on_share = on && c->in_place && g->order > 0;
}

void core_set_vm(core_t *c, int vm_type, int in_place)
{
    c->vm_type = vm_type;
    c->in_place = in_place;
    c->plat = vm_type == VM_TYPE_TDX ? PLAT_TDX : vm_type >= 2 ? PLAT_SNP : PLAT_SW;  /* VM_TYPE_KEY */
}

void core_set_vcpus(core_t *c, int vcpus) { c->vcpus = vcpus; }
void core_set_tdx_private_2m(core_t *c, int on) { c->tdx_private_2m = on; }

void core_start_up(core_t *c, int initial)                     /* SimTarget._start_up */
{
    for (int i = 0; i < c->nslots; i++) {
        slot_t *s = &c->slots[i];
        if (c->in_place) led_op(c, K_ATTR_UPDATE, 1);
        else if (initial == PRIVATE) vm_set_attrs(c, s, 0, (uint64_t)s->g.size, PRIVATE);
    }
}

/* SimTarget._start_up, layout.accepted: the guest's private write of every memslot
 * (allocated in guest_memfd, prepared, mapped in stage 2).  0, or -1 when host memory ran out */
int core_accept(core_t *c)
{
    for (volatile int i = 0; i < c->nslots; i++) {
        slot_t *s = &c->slots[i];
        int64_t mism = 0;
        c->in_step = 1;
        if (setjmp(c->oom)) {
            c->in_step = 0;
            fail(c, "host memory too small to accept the guest's memory");
            return -1;
        }
        int st = gmem_access(c, s, 0, s->g.npages, 1, 0, 1, 0, &mism);
        c->in_step = 0;
        if (st) {           /* SimTarget._start_up asserts the accept succeeded */
            fail(c, "the guest's accept of memslot %d failed (status %d)", (int)i, st);
            return -1;
        }
    }
    return 0;
}

void core_ledger_reset(core_t *c)
{
    memset(c->lcount, 0, sizeof(c->lcount));
    memset(c->lns, 0, sizeof(c->lns));
    for (int k = 0; k < NKEYS; k++) c->lfirst[k] = -1;
    c->lseq = 0;
    c->step_ns = c->clock_ns = 0.0;
}

int core_add_slot(core_t *c, int64_t size, int flags, int order, int platform, int promote,
                  int initial, int shared_kind, int shared_page)
{
    c->slots = realloc(c->slots, (size_t)(c->nslots + 1) * sizeof(slot_t));
    if (!c->slots) abort();
    int idx = c->nslots++;
    slot_t *s = &c->slots[idx];
    memset(s, 0, sizeof(*s));
    gmem_t *g = &s->g;
    g->size = size;
    g->npages = size >> PAGE_SHIFT;
    g->flags = flags;
    g->order = order;
    g->fpages = 1ll << order;
    g->platform = platform;
    g->promote = promote;
    rm_init(&g->page_pfn, g->npages, 1, 0);
    rm_init(&g->pflags, g->npages, 0, 0);
    rm_init(&g->data, g->npages, 0, 0);
    rm_init(&g->pins, g->npages, 0, 0);
    if (order) {
        g->nfolios = g->npages >> order;
        g->fstate = xcalloc((size_t)g->nfolios, 1);
        g->fbits = xcalloc((size_t)g->nfolios, 1);
        g->fpfn = xcalloc((size_t)g->nfolios, sizeof(int64_t));
    }
    attrs_init(&s->attrs, g->npages, initial);
    if (shared_kind < 0) return 0;
    shared_t *sh = xcalloc(1, sizeof(shared_t));
    s->s = sh;
    sh->npages = g->npages;
    sh->kind = shared_kind;
    sh->page = shared_page;
    sh->huge = shared_page != 0;
    sh->slot = idx;
    rm_init(&sh->page_pfn, sh->npages, 1, 0);
    rm_init(&sh->host_map, sh->npages, 0, 0);
    rm_init(&sh->data, sh->npages, 0, 0);
    rm_init(&sh->pins, sh->npages, 0, 0);
    if (sh->huge) {
        sh->nchunks = (sh->npages + 511) >> 9;
        sh->chunk = xcalloc((size_t)sh->nchunks, 1);
        sh->chunk_pfn = xcalloc((size_t)sh->nchunks, sizeof(int64_t));
        sh->chunk_mapped = xcalloc((size_t)sh->nchunks, sizeof(uint16_t));
    }
    if (shared_kind == 0 && shared_page == 1) {
        c->shrinkers = realloc(c->shrinkers, (size_t)(c->nshrinkers + 1) * sizeof(int));
        c->shrinkers[c->nshrinkers++] = idx;
    }
    if (shared_page == 2) {                 /* _preallocate: the hugetlb pool */
        for (int64_t ch = 0; ch < sh->nchunks; ch++) {
            int64_t pfn = host_alloc_huge(c, 9, 0);
            if (pfn < 0) {
                fail(c, "host memory too small for the hugetlb pool");
                return -1;
            }
            shared_set_chunk(c, sh, ch, INTACT);
            sh->chunk_pfn[ch] = (int32_t)pfn;
        }
        c->st_stale += attrs_count(&s->attrs, 0, sh->npages, PRIVATE);
        int64_t n = sh->nchunks * 512;
        sh->present += n;
        c->footprint += n;
        c->huge_pages += n;
    }
    return 0;
}

/* a step this engine can run; else -1 with the reason (checked before any step of the batch
 * runs; page ranges are checked when a step runs, see range_ok()) */
static int validate_step(core_t *c, int64_t i, const step_t *sp)
{
    const step_t st = *sp;
    if (st.code > 9) {
        fail(c, "step %lld: unknown step code %u", (long long)i, st.code);
        return -1;
    }
    if (st.proc >= MAX_PROCS || st.via > 2) {
        fail(c, "step %lld: process %u / via %u out of range", (long long)i, st.proc, st.via);
        return -1;
    }
    if (st.code != 0 && st.slot >= c->nslots) {
        fail(c, "step %lld: slot %u out of range", (long long)i, st.slot);
        return -1;
    }
    const slot_t *s = st.code ? &c->slots[st.slot] : NULL;
    int needs_shared = (st.code == 4 || st.code == 5 ||
                        ((st.code >= 6) && st.obj == 1));
    if (needs_shared && !s->s) {
        fail(c, "step %lld: the strategy has no shared backing", (long long)i);
        return -1;
    }
    return 0;
}

/* page ranges of touches, copies, pins and discards are not validated by the model;
 * Python's numpy slicing gives empty or out-of-memslot ones odd meanings that this engine
 * does not reproduce, so it refuses them (bench.generators.check_ops never lets them
 * through; skipped steps of a failed conversion are not checked, and the runner splits
 * batches between ops) */
static int range_ok(core_t *c, int64_t i, const step_t *sp, const slot_t *s, int64_t p0, int64_t p1)
{
    if (sp->code < 4) return 1;
    int64_t np = sp->code == 4 || sp->obj == 1 ? s->s->npages : s->g.npages;
    int gmem_touch = (sp->code == 6 || sp->code == 7) && sp->obj == 0;
    /* an empty copy or discard is defined (a batch may start inside a failed conversion) */
    int may_be_empty = sp->code == 4 || sp->code == 5;
    if ((p0 < p1 || (may_be_empty && p0 == p1)) && (p1 <= np || gmem_touch)) return 1;
    fail(c, "step %lld: pages [%lld, %lld) are not a range inside the memslot (%lld pages)",
         (long long)i, (long long)p0, (long long)p1, (long long)np);
    return 0;
}

int core_execute(core_t *c, const void *steps_v, int64_t n, void *results_v)
{
    const step_t *steps = steps_v;
    result_t *res = results_v;
    int64_t failed_op = -1;
    for (int64_t i = 0; i < n; i++)
        if (validate_step(c, i, &steps[i])) return -1;
    for (int64_t i = 0; i < n; i++) {
        const step_t st = steps[i];
        result_t *r = &res[i];
        if ((int64_t)st.op != c->last_op) {      /* SimTarget.execute: an op arrives */
            c->last_op = st.op;
            if ((int64_t)st.op < c->narrival && c->arrival[st.op] >= 0
                && (double)c->arrival[st.op] > c->clock_ns)
                c->clock_ns = (double)c->arrival[st.op];   /* idle until then: not billed */
        }
        if ((int64_t)st.op == failed_op) {
            r->status = SKIPPED;
            r->ns = 0;
            r->aux = 0;
            continue;
        }
        slot_t *s = st.code ? &c->slots[st.slot] : NULL;
        int64_t p0 = (int64_t)(st.offset >> PAGE_SHIFT);
        unsigned __int128 end = ((unsigned __int128)st.offset + st.size) >> PAGE_SHIFT;
        int64_t p1 = end > (unsigned __int128)INT64_MAX ? INT64_MAX : (int64_t)end;
        if (!range_ok(c, i, &st, s, p0, p1)) return -1;
        c->step_ns = 0.0;
        if ((st.code == 1 || st.code == 2) && (st.flags & 1)) {  /* STEP_CONVERSION */
            /* SimTarget.execute: a TDX MapGPA chunk right after a full 2 MiB chunk of the
             * same request continues it (tdx_complete_vmcall_map_gpa): no new TD exit */
            int cont = c->plat == PLAT_TDX && (int64_t)st.op == c->conv_op + 1
                       && st.slot == c->conv_slot && st.arg == c->conv_arg
                       && st.offset == c->conv_end && c->conv_size == TDX_MAP_GPA_MAX_LEN;
            c->conv_op = st.op;
            c->conv_slot = st.slot;
            c->conv_arg = st.arg;
            c->conv_end = st.offset + st.size;
            c->conv_size = st.size;
            vm_conversion_request(c, (int64_t)(st.size >> PAGE_SHIFT), cont);
        }
        volatile int status = 0;
        int64_t aux = 0;
        c->in_step = 1;
        if (setjmp(c->oom)) {
            status = ENOMEM;
            aux = 0;
        } else {
            switch (st.code) {
            case 0:
                break;
            case 1: {
                int64_t eo = 0;
                status = gmem_set_attrs2(c, s, st.offset, st.size, st.arg, &eo);
                aux = eo;
                break;
            }
            case 2:
                status = vm_set_attrs(c, s, st.offset, st.size, st.arg);
                break;
            case 3:
                status = gmem_punch(c, &s->g, st.offset, st.size);
                break;
            case 4:
                status = shared_discard(c, s->s, p0, p1);
                break;
            case 5: {
                int64_t np = 0;
                if (st.obj == 1) {          /* gmem -> shared */
                    np = p0 < p1 ? gmem_count_present(&s->g, p0, p1) : 0;
                    if (np) {
                        shared_populate(c, s->s, p0, p1);
                        rm_copy(&s->s->data, &s->g.data, p0, p1);
                        led_op(c, K_MEMCPY, np);
                    }
                } else {
                    np = p0 < p1 ? shared_count_present(s->s, p0, p1) : 0;
                    if (np) {
                        gmem_populate(c, &s->g, &s->attrs, p0, p1);
                        rm_copy(&s->g.data, &s->s->data, p0, p1);
                        led_op(c, K_MEMCPY, np);
                    }
                }
                aux = np * (int64_t)PAGE_SIZE;
                break;
            }
            case 6:
            case 7: {
                int write = st.code == 6;
                if (st.obj == 1) {              /* SimTarget._access_shared */
                    if (st.via == 1) {
                        status = EFAULT;
                    } else if (st.via == 2) {
                        if (!attrs_is_uniform(&s->attrs, p0, p1, SHARED_ATTR)) status = EFAULT;
                        else aux = shared_guest_access(c, s->s, &s->g, p0, p1, write, st.arg);
                    } else {
                        status = shared_access(c, s->s, p0, p1, st.proc, write, st.arg, &aux);
                        if (!status) c->private_host_touch_pages += attrs_count(&s->attrs, p0, p1, PRIVATE);
                    }
                } else {
                    status = gmem_access(c, s, p0, p1, st.via, st.proc, write, st.arg, &aux);
                }
                break;
            }
            case 8:
            case 9: {
                int delta = st.code == 8 ? 1 : -1;
                if (st.obj == 0) {
                    if (delta > 0) gmem_populate(c, &s->g, &s->attrs, p0, p1);
                    status = pin_pages(&s->g.pins, &s->g.npinned, p0, p1, delta);
                } else {
                    status = pin_pages(&s->s->pins, NULL, p0, p1, delta);
                }
                break;
            }
            }
        }
        c->in_step = 0;
        r->status = status;
        if (c->step_ns > STEP_NS_MAX) {            /* bounded: sums stay far from int64 */
            c->clock_ns -= c->step_ns - STEP_NS_MAX;
            c->step_ns = STEP_NS_MAX;
            c->saturated++;
        }
        r->ns = (int64_t)nearbyint(c->step_ns);
        r->aux = aux;
        if (status && (st.flags & 2)) failed_op = st.op;
    }
    return 0;
}

const char *core_error(core_t *c) { return c->err; }

void core_counters(core_t *c, int64_t *out)
{
    int64_t pb[2] = {0, 0};
    for (int64_t i = 0; i < c->b.npb; i++) pb[c->b.labels[i] & 1]++;
    out[CORE_C_FOOTPRINT] = c->footprint;
    out[CORE_C_HUGE_PAGES] = c->huge_pages;
    out[CORE_C_HUGE_SPLITS] = c->huge_splits;
    out[CORE_C_HUGE_MERGES] = c->huge_merges;
    out[CORE_C_HUGE_FALLBACKS] = c->huge_fallbacks;
    out[CORE_C_PINNED_BY_AGING] = c->pinned_by_aging;
    out[CORE_C_FREE_PAGES] = c->b.free_pages;
    out[CORE_C_TOTAL_PAGES] = c->b.total;
    out[CORE_C_PB_UNMOVABLE] = pb[UNMOVABLE];
    out[CORE_C_PB_MOVABLE] = pb[MOVABLE];
    for (int o = 0; o <= MAXO; o++) out[CORE_C_NR_FREE + o] = c->b.nr[o];
}

double core_clock_ns(core_t *c) { return c->clock_ns; }

void core_set_arrivals(core_t *c, const int64_t *t_ns, int64_t n)
{
    c->arrival = t_ns;
    c->narrival = n;
    c->last_op = -1;
    c->conv_op = -2;
}

int64_t core_saturated(core_t *c) { return c->saturated; }

static int64_t count_flag(const uint8_t *fl, int64_t n, uint8_t bit)
{
    int64_t k = 0;
    for (int64_t p = 0; p < n; p++) k += (fl[p] & bit) != 0;
    return k;
}

/* 2M / 1G aligned ranges of host memory without an unmovable page in use
 * (Host.buddy.allocatable_huge) */
static void allocatable_huge(const core_t *c, int64_t *out2m, int64_t *out1g)
{
    const buddy_t *b = &c->b;
    int64_t n2 = b->total >> 9, n1 = n2 >> 9, blocked2 = 0, blocked1 = 0;
    uint8_t *pool = NULL;                  /* 2M ranges held by a free hugetlb pool page */
    if (c->npool[0] || c->npool[1]) {
        pool = xcalloc((size_t)n2 + 1, 1);
        for (int k = 0; k < 2; k++)
            for (int64_t j = 0; j < c->npool[k]; j++) {
                int64_t a = c->pool[k][j] >> 9, n = k ? 512 : 1;
                if (a < n2) memset(pool + a, 1, (size_t)(a + n <= n2 ? n : n2 - a));
            }
    }
    /* the 2M ranges holding an unmovable page in use, from the runs of such pages */
    int64_t last2 = -1, last1 = -1;
    for (int64_t p = 0; p < n2 << 9;) {
        uint32_t v;
        int64_t e = rm_seg(&b->st, p, n2 << 9, &v);
        if (v == ST_USED_UNMOVABLE)
            for (int64_t i = p >> 9; i <= (e - 1) >> 9; i++) {
                if (i == last2 || (pool && pool[i])) continue;
                last2 = i;
                blocked2++;
                if (i >> 9 != last1 && (i >> 9) < n1) {
                    last1 = i >> 9;
                    blocked1++;
                }
            }
        p = e;
    }
    free(pool);
    *out2m = n2 - blocked2;
    *out1g = n1 - blocked1;
}

/* SimTarget.snapshot from the counters kept as the model changes: O(slots) but for
 * allocatable_huge, which scans host memory */
/* what core_huge_stats and core_huge_recount both report the same way: the cumulative
 * counters and a scan of host memory for allocatable huge ranges */
static void huge_stats_common(core_t *c, int64_t *out)
{
    out[CORE_H_DEMOTIONS] = c->mapping_demotions;
    out[CORE_H_SPLITS] = c->folio_splits;
    out[CORE_H_MERGES] = c->folio_merges;
    out[CORE_H_PRIVATE_TOUCHES] = c->private_host_touch_pages;
    allocatable_huge(c, &out[CORE_H_ALLOC_2M], &out[CORE_H_ALLOC_1G]);
}

void core_huge_stats(core_t *c, int64_t *out)
{
    memset(out, 0, CORE_H_COUNT * sizeof(int64_t));
    out[CORE_H_S2_4K] = c->st_s2_4k * (int64_t)PAGE_SIZE;
    out[CORE_H_S2_2M] = c->st_s2_huge[0];
    out[CORE_H_S2_1G] = c->st_s2_huge[1];
    out[CORE_H_HOST_HUGE] = c->st_host_huge;
    out[CORE_H_INTACT] = c->st_intact;
    out[CORE_H_STALE] = c->st_stale * (int64_t)PAGE_SIZE;
    for (int i = 0; i < c->nslots; i++) {
        const gmem_t *g = &c->slots[i].g;
        const shared_t *s = c->slots[i].s;
        if (g->order) out[CORE_H_POSSIBLE] += g->nfolios;
        if (s && s->huge) out[CORE_H_POSSIBLE] += s->nchunks;
    }
    huge_stats_common(c, out);
}

/* the same as core_huge_stats by a full scan of every page and folio (tests: the counters
 * must equal it after any sequence of steps) */
void core_huge_recount(core_t *c, int64_t *out)
{
    memset(out, 0, CORE_H_COUNT * sizeof(int64_t));
    for (int i = 0; i < c->nslots; i++) {
        const gmem_t *g = &c->slots[i].g;
        const shared_t *s = c->slots[i].s;
        out[CORE_H_S2_4K] += rm_count_bit(&g->pflags, 0, g->npages, PF_S2) * (int64_t)PAGE_SIZE;
        if (g->order) {
            int64_t bytes = g->fpages * (int64_t)PAGE_SIZE;
            out[g->order == 9 ? CORE_H_S2_2M : CORE_H_S2_1G] +=
                count_flag(g->fbits, g->nfolios, FB_S2_HUGE) * bytes;
            out[CORE_H_HOST_HUGE] += count_flag(g->fbits, g->nfolios, FB_PMD_ALL) * bytes;
            for (int64_t f = 0; f < g->nfolios; f++) out[CORE_H_INTACT] += g->fstate[f] == INTACT;
            out[CORE_H_POSSIBLE] += g->nfolios;
        }
        if (s && s->huge) {
            for (int64_t ch = 0; ch < s->nchunks; ch++) {
                if (s->chunk[ch] != INTACT) continue;
                out[CORE_H_INTACT]++;
                int64_t a = ch << 9, e = a + 512 < s->npages ? a + 512 : s->npages;
                if (rm_any_bit(&s->host_map, a, e, 0xff)) out[CORE_H_HOST_HUGE] += 512 * (int64_t)PAGE_SIZE;
            }
            out[CORE_H_POSSIBLE] += s->nchunks;
        }
        if (s)                              /* SharedBacking.present_at(VM attrs, PRIVATE) */
            out[CORE_H_STALE] += shared_present_where(s, &c->slots[i].attrs, 0,
                                                      c->slots[i].attrs.npages, 1) * (int64_t)PAGE_SIZE;
    }
    huge_stats_common(c, out);
}

void core_ledger(core_t *c, int64_t *count, double *ns, int64_t *first)
{
    for (int k = 0; k < NKEYS; k++) {
        count[k] = c->lcount[k];
        ns[k] = c->lns[k];
        first[k] = c->lfirst[k];
    }
}

static int cmp_i64(const void *x, const void *y)
{
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

/* the heads of all free blocks, by address (malloc'd; *n set) */
static int64_t *free_heads(const buddy_t *b, int64_t *n)
{
    int64_t *v = malloc((size_t)(b->h.count + 1) * sizeof(int64_t)), k = 0;
    if (!v) abort();
    for (uint64_t i = 0; i <= b->h.mask; i++)
        if (b->h.e[i].key >= 0) v[k++] = b->h.e[i].key;
    qsort(v, (size_t)k, sizeof(int64_t), cmp_i64);
    *n = k;
    return v;
}

int core_check(core_t *c)
{
    buddy_t *b = &c->b;
    int64_t nr[MAXO + 1] = {0}, total = 0, nheads, end = 0;
    int64_t *heads = free_heads(b, &nheads);
    int rc = -1;
    for (int64_t k = 0; k < nheads; k++) {
        int64_t p = heads[k];
        int code = head_code(b, p);
        int order = code >> 2, kind = code & 3;
        int64_t size = 1ll << order;
        if (p & (size - 1) || p + size > b->total || p < end) { fail(c, "block %lld bad or overlapping", (long long)p); goto out; }
        end = p + size;
        if (!rm_is_uniform(&b->st, p, p + size, ST_FREE)) { fail(c, "block %lld holds pages in use", (long long)p); goto out; }
        if (kind == BIG) {
            if (order <= KMAX || !b->bin[0][p >> (KMAX + 1)]) { fail(c, "big block %lld not listed", (long long)p); goto out; }
            int64_t a = p >> PBO, e = a + (1ll << (order - PBO));
            for (int t = 0; t < 2; t++)
                if (labels_has(b, t, a, e) != b->bin[1 + t][p >> (KMAX + 1)]) { fail(c, "big block %lld label index", (long long)p); goto out; }
        } else {
            int64_t i = h_find(&b->h, p);
            if (order > KMAX || b->h.e[i].node < 0) { fail(c, "block %lld not listed", (long long)p); goto out; }
            int64_t a = p >> PBO, e = a + (order > PBO ? (1ll << (order - PBO)) : 1);
            for (int64_t q = a; q < e; q++)
                if (b->labels[q] != kind) { fail(c, "block %lld on list %d but labels differ", (long long)p, kind); goto out; }
        }
        if (order < MAXO) {
            int64_t bud = p ^ size;
            int bc = bud < b->total ? head_code(b, bud) : -1;
            if (bc >= 0 && (bc >> 2) == order) {
                fail(c, "free buddies %lld %lld not merged", (long long)p, (long long)bud);
                goto out;
            }
        }
        nr[order]++;
        total += size;
    }
    /* free pages (the page-state runs) are exactly the pages of the free blocks */
    if (rm_count_eq(&b->st, 0, b->total, ST_FREE) != total) { fail(c, "free pages outside free blocks"); goto out; }
    int64_t listed = 0;
    for (int t = 0; t < 2; t++)
        for (int o = 0; o <= KMAX; o++)
            for (int32_t n = b->lhead[t][o]; n >= 0; n = b->nodes[n].older) {
                int64_t x = b->nodes[n].pfn;
                int64_t i = h_find(&b->h, x);
                if (i < 0 || b->h.e[i].node != n) { fail(c, "list %d/%d: block %lld not indexed", t, o, (long long)x); goto out; }
                if (b->h.e[i].code != ((o << 2) | t)) { fail(c, "list %d/%d holds %lld", t, o, (long long)x); goto out; }
                listed++;
            }
    int64_t big = 0;
    for (int o = 0; o <= MAXO; o++) big += o > KMAX ? nr[o] : 0;
    if (listed + big != b->h.count) { fail(c, "hash holds %lld, lists %lld", (long long)b->h.count, (long long)(listed + big)); goto out; }
    for (int o = 0; o <= MAXO; o++)
        if (nr[o] != b->nr[o]) { fail(c, "nr_free[%d] %lld != counted %lld", o, (long long)b->nr[o], (long long)nr[o]); goto out; }
    if (total != b->free_pages) { fail(c, "free_pages %lld != counted %lld", (long long)b->free_pages, (long long)total); goto out; }
    rc = 0;
out:
    free(heads);
    return rc;
}

int64_t core_buddy_alloc(core_t *c, int order, int movable)
{
    return buddy_alloc(&c->b, order, movable);
}

int core_buddy_alloc_pages(core_t *c, int64_t n, int movable, int32_t *out)
{
    if (buddy_alloc_pages(&c->b, n, movable, &c->aruns, &c->cap_aruns, &c->naruns)) return -1;
    for (int64_t r = 0, k = 0; r < c->naruns; r++)
        for (int64_t i = 0; i < c->aruns[2 * r + 1]; i++) out[k++] = (int32_t)(c->aruns[2 * r] + i);
    return 0;
}

void core_buddy_free(core_t *c, int64_t pfn, int order) { buddy_free(&c->b, pfn, order); }

void core_buddy_free_range(core_t *c, int64_t pfn, int64_t npages)
{
    buddy_free_range(&c->b, pfn, npages);
}

int64_t core_buddy_free_blocks(core_t *c, int64_t *pfn, int64_t *order, int64_t cap)
{
    int64_t n;
    int64_t *heads = free_heads(&c->b, &n);
    for (int64_t k = 0; k < n && k < cap; k++) {
        pfn[k] = heads[k];
        order[k] = head_code(&c->b, heads[k]) >> 2;
    }
    free(heads);
    return n;
}

void core_buddy_labels(core_t *c, uint8_t *out) { memcpy(out, c->b.labels, (size_t)c->b.npb); }

void core_free(core_t *c)
{
    if (!c) return;
    for (int i = 0; i < c->nslots; i++) {
        slot_t *s = &c->slots[i];
        rm_destroy(&s->g.page_pfn); rm_destroy(&s->g.pflags); rm_destroy(&s->g.data); rm_destroy(&s->g.pins);
        free(s->g.fstate); free(s->g.fbits); free(s->g.fpfn);
        rm_destroy(&s->attrs);
        if (s->s) {
            rm_destroy(&s->s->page_pfn); rm_destroy(&s->s->host_map); rm_destroy(&s->s->data); rm_destroy(&s->s->pins);
            free(s->s->chunk); free(s->s->chunk_pfn); free(s->s->deferred);
            free(s->s->chunk_mapped);
            free(s->s);
        }
    }
    free(c->slots);
    free(c->shrinkers);
    free(c->pool[0]); free(c->pool[1]);
    free(c->miss); free(c->aruns); free(c->fruns); free(c->fresh);
    buddy_destroy(&c->b);
    free(c);
}
