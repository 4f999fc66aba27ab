/* The simulator's model in C (bench/sim/core.c): a second implementation of bench/sim/
 * ranges.py, buddy.py, model.py and SimTarget.execute, kept equal to the Python reference
 * (tests/test_sim_engines.py).  build_core.py feeds the part between the cdef markers to
 * ffibuilder.cdef, so Python and C see one definition. */
#ifndef GMEMBENCH_SIM_CORE_H
#define GMEMBENCH_SIM_CORE_H
#include <stdint.h>

/* cdef-begin */
#define CORE_STEP_SIZE 35
#define CORE_RESULT_SIZE 20
#define CORE_MAX_ORDER 18
/* core_counters() layout */
#define CORE_C_FOOTPRINT 0
#define CORE_C_HUGE_PAGES 1
#define CORE_C_HUGE_SPLITS 2
#define CORE_C_HUGE_MERGES 3
#define CORE_C_HUGE_FALLBACKS 4
#define CORE_C_PINNED_BY_AGING 5
#define CORE_C_FREE_PAGES 6
#define CORE_C_TOTAL_PAGES 7
#define CORE_C_PB_UNMOVABLE 8
#define CORE_C_PB_MOVABLE 9
#define CORE_C_NR_FREE 10
#define CORE_C_COUNT 29
/* core_huge_stats() layout: stage-2 bytes by leaf size, host bytes mapped huge, intact huge
 * folios, huge folios possible, cumulative demotions / splits / merges, allocatable 2M / 1G */
#define CORE_H_S2_4K 0
#define CORE_H_S2_2M 1
#define CORE_H_S2_1G 2
#define CORE_H_HOST_HUGE 3
#define CORE_H_INTACT 4
#define CORE_H_POSSIBLE 5
#define CORE_H_DEMOTIONS 6
#define CORE_H_SPLITS 7
#define CORE_H_MERGES 8
#define CORE_H_ALLOC_2M 9
#define CORE_H_ALLOC_1G 10
#define CORE_H_PRIVATE_TOUCHES 11
#define CORE_H_STALE 12
#define CORE_H_COUNT 13

typedef struct core core_t;

int core_nkeys(void);
const char *core_key_name(int key);
/* fixed/per_page: the cost profile's linear parts, indexed like core_key_name() */
core_t *core_new(int64_t total_pages, const double *fixed, const double *per_page);
void core_free(core_t *c);
/* buddy prefragment with the rng draws made in Python: pageblocks (sorted) and offsets */
int64_t core_prefragment(core_t *c, const int64_t *chosen, const int64_t *offsets, int64_t k);
void core_set_vm(core_t *c, int vm_type, int in_place);
void core_set_vcpus(core_t *c, int vcpus);
void core_set_tdx_private_2m(core_t *c, int on);
/* the VMM's start-up before the guest runs (initial: the attributes the guest starts with) */
void core_start_up(core_t *c, int initial);
int core_accept(core_t *c);
/* forget every charge so far (after start-up) */
void core_ledger_reset(core_t *c);
/* in-place.huge=split for a slot added before (core_add_slot) */
void core_set_split_on_share(core_t *c, int slot, int on);
/* shared_kind: -1 none, 0 anon, 1 memfd; shared_page: 0 4k, 1 thp, 2 hugetlb.
 * Returns 0, or -1 when the hugetlb pool does not fit (nothing to undo: the target is
 * unusable). */
int core_add_slot(core_t *c, int64_t size, int flags, int order, int platform, int promote,
                  int initial, int shared_kind, int shared_page);
/* steps: n packed STEP_DTYPE records; results: n packed RESULT_DTYPE records.
 * Returns 0, or -1 on a step the model cannot run (message in core_error()). */
int core_execute(core_t *c, const void *steps, int64_t n, void *results);
const char *core_error(core_t *c);
void core_counters(core_t *c, int64_t *out);
double core_clock_ns(core_t *c);
/* per op arrival times (ns, -1 = untimed), indexed by step.op; the array must outlive the
 * steps executed with it.  An op advances the clock to its arrival (idle gaps not billed). */
void core_set_arrivals(core_t *c, const int64_t *t_ns, int64_t n);
/* steps whose charge reached the 1e12 ns bound and was cut there */
int64_t core_saturated(core_t *c);

void core_huge_stats(core_t *c, int64_t *out);
/* core_huge_stats by a full scan instead of the counters kept as the model changes */
void core_huge_recount(core_t *c, int64_t *out);
/* per key: count, ns total, order of first charge (-1: never charged) */
void core_ledger(core_t *c, int64_t *count, double *ns, int64_t *first);
/* full consistency check of the buddy model; 0 or -1 (message in core_error()) */
int core_check(core_t *c);
/* the buddy allocator alone (for tests against bench/sim/buddy.py; no argument checks) */
int64_t core_buddy_alloc(core_t *c, int order, int movable);           /* pfn or -1 (OOM) */
int core_buddy_alloc_pages(core_t *c, int64_t n, int movable, int32_t *out);   /* 0 or -1 */
void core_buddy_free(core_t *c, int64_t pfn, int order);
void core_buddy_free_range(core_t *c, int64_t pfn, int64_t npages);
/* free blocks by address, at most cap; returns how many there are */
int64_t core_buddy_free_blocks(core_t *c, int64_t *pfn, int64_t *order, int64_t cap);
/* pageblock labels (0 unmovable, 1 movable), one byte per pageblock */
void core_buddy_labels(core_t *c, uint8_t *out);
/* cdef-end */

#endif
