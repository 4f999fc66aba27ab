"""The buddy allocator model (bench/sim/buddy.py): conservation, coalescing, alignment,
the kernel's migratetype fallback rules, and the aging model."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from bench.fragmentation import unusable_index
from bench.sim.buddy import BadFree, BuddyAllocator, OutOfMemory

# a small allocator that still has every mechanism: pageblocks of 8 pages, typed lists up
# to order 5 (the "kernel max"), type-neutral runs up to order 7, and a partial pageblock
SMALL = dict(total_pages=1000, max_order=7, pageblock_order=3, kernel_max_order=5)


def small() -> BuddyAllocator:
    return BuddyAllocator(**SMALL)


def snapshot(b: BuddyAllocator):
    return (b.free_pages, b.nr_free(), b.free_blocks(), b.pageblock_counts())


def pages_of(runs):
    return [p for start, n in runs for p in range(start, start + n)]


# ----------------------------------------------------------------- construction
def test_initial_state_is_maximal_aligned_blocks():
    b = BuddyAllocator(3 * 64 + 8 + 1, max_order=6, pageblock_order=2, kernel_max_order=4)
    b.check()
    assert b.free_pages == b.total_pages == 201
    assert b.free_blocks() == [(0, 6), (64, 6), (128, 6), (192, 3), (200, 0)]
    assert b.nr_free() == [1, 0, 0, 1, 0, 0, 3]
    assert b.pageblock_counts() == {"unmovable": 0, "movable": 51}   # boot: all movable


def test_160g_default_shape():
    b = BuddyAllocator(160 << 18)
    assert b.nr_free() == [0] * 18 + [160]
    assert b.free_pages == 160 << 18
    assert b.pageblock_counts() == {"unmovable": 0, "movable": 160 * 512}


@pytest.mark.parametrize("args", [dict(total_pages=0), dict(total_pages=8, max_order=2,
                                  pageblock_order=3), dict(total_pages=8, max_order=6,
                                  pageblock_order=4, kernel_max_order=3)])
def test_bad_parameters_rejected(args):
    with pytest.raises(ValueError):
        BuddyAllocator(**args)


# ----------------------------------------------------------------- allocation order
def test_lowest_address_first_and_buddy_split_order():
    b = BuddyAllocator(16, max_order=4, pageblock_order=2, kernel_max_order=4)
    # movable requests on all-movable memory: no fallback involved
    assert b.alloc(0, movable=True) == 0         # 16 split: 8(o3) 4(o2) 2(o1) 1(o0) free
    assert b.nr_free() == [1, 1, 1, 1, 0]
    assert b.alloc(0, movable=True) == 1
    assert b.alloc(1, movable=True) == 2
    assert b.alloc(0, movable=True) == 4         # 4(o2) split: 6(o1), 5(o0)
    assert b.alloc(0, movable=True) == 5         # LIFO head of order 0
    assert b.nr_free() == [0, 1, 0, 1, 0]
    assert b.free_pages == 16 - 6
    b.check()


def test_alignment_of_every_order():
    b = BuddyAllocator(1 << 14, max_order=12, pageblock_order=4, kernel_max_order=8)
    rng = np.random.default_rng(0)
    for _ in range(300):
        order = int(rng.integers(0, 13))
        try:
            pfn = b.alloc(order, movable=bool(rng.integers(2)))
        except OutOfMemory:
            continue
        assert pfn % (1 << order) == 0
        assert 0 <= pfn and pfn + (1 << order) <= b.total_pages
    b.check()


# ----------------------------------------------------------------- coalescing
def test_free_coalesces_buddies_back_to_one_block():
    b = BuddyAllocator(64, max_order=6, pageblock_order=2, kernel_max_order=6)
    pfns = [b.alloc(0, movable=True) for _ in range(64)]
    assert b.free_pages == 0 and b.nr_free() == [0] * 7
    for p in pfns[::2]:
        b.free(p, 0)
    assert b.nr_free() == [32, 0, 0, 0, 0, 0, 0]     # no free buddies among even pages
    for p in pfns[1::2]:
        b.free(p, 0)
    assert b.nr_free() == [0, 0, 0, 0, 0, 0, 1]
    b.check()


def test_free_range_splits_into_aligned_blocks_and_merges():
    b = BuddyAllocator(64, max_order=6, pageblock_order=2, kernel_max_order=6)
    assert b.alloc(6, movable=True) == 0
    b.free_range(3, 10)                               # 3 | 4-7 | 8-11 | 12
    assert b.free_blocks() == [(3, 0), (4, 2), (8, 2), (12, 0)]
    b.free_range(0, 3)                                # 0-3 merges with 4-7, then 8-11
    assert b.free_blocks() == [(0, 3), (8, 2), (12, 0)]
    b.free_range(13, 51)
    assert b.free_blocks() == [(0, 6)]
    b.check()


def test_full_free_restores_initial_free_lists():
    b = small()
    initial = (b.nr_free(), b.free_blocks())
    rng = np.random.default_rng(5)
    held = []
    while b.free_pages > 50:
        if rng.random() < 0.5:
            held += b.alloc_pages(int(rng.integers(1, 40)), movable=bool(rng.integers(2)))
        else:
            order = int(rng.integers(0, 6))
            try:
                held.append((b.alloc(order, movable=bool(rng.integers(2))), 1 << order))
            except OutOfMemory:
                pass
    for i in rng.permutation(len(held)).tolist():
        b.free_range(*held[i])
    b.check()
    assert (b.nr_free(), b.free_blocks()) == initial
    assert b.free_pages == b.total_pages


# ----------------------------------------------------------------- errors
def test_double_free_and_bad_ranges_raise_and_change_nothing():
    b = small()
    p = b.alloc(2, movable=True)
    q = b.alloc(0, movable=True)
    b.free(q, 0)
    before = snapshot(b)
    with pytest.raises(BadFree):
        b.free(q, 0)                                  # already free
    with pytest.raises(BadFree):
        b.free_range(p, 8)                            # runs past the allocated block
    with pytest.raises(BadFree):
        b.free(p + 1, 1)                              # misaligned
    with pytest.raises(BadFree):
        b.free_range(b.total_pages - 1, 2)            # past the end
    with pytest.raises(BadFree):
        b.free(p, 99)
    assert snapshot(b) == before
    b.check()
    b.free(p, 2)
    with pytest.raises(BadFree):
        b.free_range(p, 1)
    b.check()


def test_out_of_memory_leaves_state_unchanged():
    b = small()
    held = b.alloc_pages(b.total_pages, movable=True)
    assert sorted(pages_of(held)) == list(range(b.total_pages))
    assert held[0] == (992, 8)                        # smallest free blocks first
    # leave 12 free pages, no two of them buddies: alloc(1) must fail
    for p in range(0, 24, 2):
        b.free(p, 0)
    before = snapshot(b)
    assert b.free_pages == 12
    for order, movable in [(1, True), (1, False), (7, False), (6, True)]:
        with pytest.raises(OutOfMemory):
            b.alloc(order, movable=movable)
        assert snapshot(b) == before
    with pytest.raises(OutOfMemory):
        b.alloc_pages(13, movable=False)
    assert snapshot(b) == before
    runs = b.alloc_pages(12, movable=False)           # exactly what is free: fine
    assert sorted(runs) == [(p, 1) for p in range(0, 24, 2)] and b.free_pages == 0
    with pytest.raises(OutOfMemory):
        b.alloc(0)
    b.check()


# ----------------------------------------------------------------- alloc_pages
def test_alloc_pages_runs_cover_exactly_n_free_pages():
    b = small()
    rng = np.random.default_rng(2)
    held = [(b.alloc(int(rng.integers(0, 4)), movable=True), 0) for _ in range(60)]
    free_before = {p for blk, o in b.free_blocks() for p in range(blk, blk + (1 << o))}
    runs = b.alloc_pages(300, movable=True)
    pages = pages_of(runs)
    assert len(pages) == 300 == len(set(pages))
    assert set(pages) <= free_before
    assert all(runs[i][0] + runs[i][1] != runs[i + 1][0] for i in range(len(runs) - 1)), \
        "adjacent runs are returned merged"
    assert b.free_pages == len(free_before) - 300
    del held
    b.check()


def test_alloc_pages_on_fresh_memory_is_one_run_from_the_bottom():
    b = BuddyAllocator(160 << 18)
    runs = b.alloc_pages(128 << 18, movable=False)
    assert runs == [(0, 128 << 18)]
    # unmovable 4K pages claimed exactly the pageblocks they fill (trap 5)
    assert b.pageblock_counts()["unmovable"] == 128 * 512
    assert b.nr_free()[18] == 32


def _apply(b, ops):
    """Replay a list of (kind, a, c) on an allocator; returns the allocated runs."""
    held = []
    for kind, a, c in ops:
        if kind == 0:
            try:
                held.append((b.alloc(a % 6, movable=bool(c)), 1 << (a % 6)))
            except OutOfMemory:
                pass
        elif kind == 1 and held:
            p, n = held.pop(a % len(held))
            cut = c % n
            if cut:
                b.free_range(p, cut)
                held.append((p + cut, n - cut))
            else:
                b.free_range(p, n)
        elif kind == 2 and b.free_pages:
            held += b.alloc_pages(1 + a % min(b.free_pages, 50), movable=bool(c))
    return held


OPS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1000), st.integers(0, 1000)),
               max_size=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.integers(1, 400), st.booleans(), st.floats(0, 0.6))
def test_alloc_pages_equals_repeated_order0_allocations(ops, n, movable, aging):
    """alloc_pages(n) must take the same pages, and leave the same free lists, as n calls
    to alloc(0) - the kernel's own way of filling a 4K-folio backing."""
    a, b = small(), small()
    for x in (a, b):
        x.prefragment(np.random.default_rng(7), aging)
        _apply(x, ops)
    n = min(n, a.free_pages)
    runs = a.alloc_pages(n, movable)
    one_by_one = [b.alloc(0, movable) for _ in range(n)]
    assert sorted(pages_of(runs)) == sorted(one_by_one)
    assert snapshot(a) == snapshot(b)
    # the list order matches too: the same later requests get the same pages
    assert [a.alloc(0, not movable) for _ in range(min(20, a.free_pages))] == \
        [b.alloc(0, not movable) for _ in range(min(20, b.free_pages))]
    a.check()


# ----------------------------------------------------------------- conservation (property)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.floats(0, 0.8))
def test_random_sequences_conserve_pages(ops, aging):
    b = small()
    pinned = b.prefragment(np.random.default_rng(11), aging)
    held = _apply(b, ops)
    b.check()
    allocated = sum(n for _, n in held) + pinned
    assert b.free_pages + allocated == b.total_pages
    pages = pages_of(held)
    assert len(pages) == len(set(pages))
    # everything still held is really allocated: freeing it twice fails
    for p, n in held:
        b.free_range(p, n)
    b.check()
    assert b.free_pages == b.total_pages - pinned
    for p, n in held[:3]:
        with pytest.raises(BadFree):
            b.free_range(p, n)


def test_deterministic_for_same_calls():
    def run():
        b = small()
        b.prefragment(np.random.default_rng(3), 0.3)
        rng = np.random.default_rng(4)
        ops = [(int(rng.integers(3)), int(rng.integers(1000)), int(rng.integers(2)))
               for _ in range(300)]
        held = _apply(b, ops)
        return held, b.free_blocks(), b.pageblock_counts()
    assert run() == run()


# ----------------------------------------------------------------- migratetypes
def pb_alloc():
    # 64 pages: 8 pageblocks of 8, typed lists up to order 4 (2 pageblocks), runs to 6
    return BuddyAllocator(64, max_order=6, pageblock_order=3, kernel_max_order=4)


def test_unmovable_claims_and_keeps_pageblocks():
    b = pb_alloc()
    runs = b.alloc_pages(8 * 2 + 1, movable=False)     # 17 unmovable pages
    assert runs == [(0, 17)]
    # claims take whole 4M-equivalent chunks (order 4 = 2 pageblocks) at a time
    assert b.pageblock_counts() == {"unmovable": 4, "movable": 4}
    b.free_range(0, 17)
    assert b.free_blocks() == [(0, 6)]                 # memory merges back regardless
    assert b.pageblock_counts()["unmovable"] == 4      # but the labels stay (trap 5)
    # the next unmovable allocation reuses those pageblocks instead of stealing more
    b.alloc_pages(30, movable=False)
    assert b.pageblock_counts()["unmovable"] == 4
    # movable allocations take movable pageblocks while there are any
    runs = b.alloc_pages(32, movable=True)
    assert runs == [(32, 32)]
    assert b.pageblock_counts()["unmovable"] == 4
    b.check()


def test_small_block_claims_its_pageblock_only_when_half_free():
    b = pb_alloc()
    b.alloc_pages(64, movable=True)
    b.free_range(0, 3)                # pageblock 0: 3 free, 5 movable in use
    b.free_range(8, 4)                # pageblock 1: 4 free, 4 movable in use
    # largest other-type block first: the order-2 block at 8; its pageblock is half
    # free, so it is claimed and its pages move to the unmovable lists
    assert b.alloc(0, movable=False) == 8
    assert b.pageblock_counts()["unmovable"] == 1
    assert b.alloc(1, movable=False) == 10
    assert b.alloc(0, movable=False) == 9
    # now only pageblock 0's pages: 3 free + 0 unmovable < half: stolen, not claimed
    p = b.alloc(0, movable=False)
    assert p in (0, 1, 2)
    assert b.pageblock_counts()["unmovable"] == 1
    b.check()


def test_movable_small_requests_steal_without_claiming():
    b = pb_alloc()
    b.alloc_pages(64, movable=False)
    assert b.pageblock_counts()["unmovable"] == 8
    for p in (16, 18, 20, 22):        # pageblock 2: half free, in order-0 blocks only
        b.free(p, 0)
    # movable requests do not try to claim below order pageblock_order/2: steal
    assert b.alloc(0, movable=True) == 22          # LIFO head of the order-0 list
    assert b.pageblock_counts()["unmovable"] == 8
    b.check()


def test_movable_claims_a_mostly_free_unmovable_pageblock():
    b = pb_alloc()
    b.alloc_pages(64, movable=False)
    b.free_range(16, 6)               # pageblock 2: blocks 16 (order 2) and 20 (order 1)
    assert b.alloc(0, movable=True) == 20          # claimed; smallest own block is 20
    assert b.pageblock_counts()["unmovable"] == 7
    assert b.alloc(2, movable=True) == 16
    b.check()


def test_match_buddy_type_rule():
    """Pageblocks 0 (unmovable) and 1 (movable) freed in either order: the block freed
    last decides the label of the merged order-4 block, as in __free_one_page."""
    for freed_last, expected_unmovable in [(0, 2), (8, 0)]:
        b = BuddyAllocator(16, max_order=4, pageblock_order=3, kernel_max_order=4)
        b.alloc_pages(16, movable=True)               # both pageblocks movable, in use
        b.free_range(0, 8)
        assert b.alloc(0, movable=False) == 0         # whole free pageblock 0: claimed
        b.alloc_pages(7, movable=False)
        assert b.pageblock_counts() == {"unmovable": 1, "movable": 1}
        first = 8 if freed_last == 0 else 0
        b.free_range(first, 8)
        b.free_range(freed_last, 8)
        assert b.free_blocks() == [(0, 4)]
        assert b.pageblock_counts()["unmovable"] == expected_unmovable
        b.check()


def test_large_runs_keep_chunk_labels_and_reuse_them():
    b = pb_alloc()
    p = b.alloc(0, movable=False)          # claims the lowest order-4 chunk of the run
    assert p == 0
    assert b.pageblock_counts()["unmovable"] == 2
    b.free(p, 0)
    assert b.free_blocks() == [(0, 6)]     # merged into one run, chunk labels kept
    assert b.pageblock_counts()["unmovable"] == 2
    b.alloc_pages(40, movable=True)        # movable chunks first, then steals/claims
    b.check()
    b2 = pb_alloc()
    b2.alloc(0, movable=True)
    b2.free(0, 0)
    q = b2.alloc(0, movable=False)
    assert b2.pageblock_counts()["unmovable"] == 2 and q == 0
    b2.free(q, 0)
    # an unmovable request finds the unmovable chunk inside the run, not a new one
    b2.alloc(2, movable=True)             # takes from a movable chunk
    assert b2.alloc(0, movable=False) == 0
    assert b2.pageblock_counts()["unmovable"] == 2
    b2.check()


def test_huge_allocation_relabels_its_pageblocks():
    b = pb_alloc()
    p = b.alloc(6, movable=False)          # order above kernel_max_order: type-neutral
    assert p == 0 and b.pageblock_counts() == {"unmovable": 8, "movable": 0}
    b.free(p, 6)
    p = b.alloc(5, movable=True)
    assert b.pageblock_counts() == {"unmovable": 4, "movable": 4}
    b.check()


# ----------------------------------------------------------------- aging
def test_prefragment_breaks_2m_availability_deterministically():
    gib = 1 << 18
    b = BuddyAllocator(4 * gib)
    assert unusable_index(b.nr_free(), 9) == 0.0
    pinned = b.prefragment(np.random.default_rng(42), 0.25)
    b.check()
    assert pinned == 512                               # 25% of 2048 pageblocks
    assert b.free_pages == 4 * gib - pinned
    assert b.pageblock_counts()["unmovable"] == pinned
    nr = b.nr_free()
    assert nr[9] > 0
    u9 = unusable_index(nr, 9)
    assert 0.2 < u9 < 0.3                              # ~ the pinned pageblocks' share
    assert unusable_index(nr, 18) == 1.0               # every 1G region has a pin
    again = BuddyAllocator(4 * gib)
    again.prefragment(np.random.default_rng(42), 0.25)
    assert again.free_blocks() == b.free_blocks()
    more = BuddyAllocator(4 * gib)
    more.prefragment(np.random.default_rng(42), 0.75)
    assert unusable_index(more.nr_free(), 9) > u9


def test_prefragment_edges():
    b = small()
    assert b.prefragment(np.random.default_rng(0), 0.0) == 0
    assert b.free_pages == b.total_pages
    with pytest.raises(ValueError):
        b.prefragment(np.random.default_rng(0), 1.5)
    full = BuddyAllocator(64, max_order=6, pageblock_order=3, kernel_max_order=4)
    full.alloc_pages(60, movable=True)                 # pageblock 7 has 4 free pages
    assert full.prefragment(np.random.default_rng(0), 1.0) == 1
    full.check()


def test_alloc_pages_reruns_fallback_after_each_stolen_page():
    """After a steal from one pageblock, the next order-0 request looks at the other
    type's lists again and may claim a different pageblock (the kernel checks only each
    list's head), so alloc_pages must not finish the stolen block first."""
    def setup():
        b = pb_alloc()
        b.alloc_pages(64, movable=True)
        b.free_range(8, 2)            # pageblock 1: 4 free pages in two order-1 blocks
        b.free_range(12, 2)
        b.free_range(0, 2)            # pageblock 0: 2 free; its block is the list head
        return b
    seq = setup()
    first = seq.alloc(0, movable=False)       # head pageblock 0 can't be claimed: steal
    assert first == 0 and seq.pageblock_counts()["unmovable"] == 0
    second = seq.alloc(0, movable=False)      # next head is in pageblock 1: claimed
    assert second in (8, 12) and seq.pageblock_counts()["unmovable"] == 1
    bulk = setup()
    assert sorted(pages_of(bulk.alloc_pages(2, movable=False))) == sorted([first, second])
    assert snapshot(bulk) == snapshot(seq)


def test_freeing_a_mixed_label_block_at_once_equals_freeing_its_pageblocks_in_order():
    def setup():
        b = BuddyAllocator(16, max_order=4, pageblock_order=3, kernel_max_order=4)
        b.alloc_pages(16, movable=True)
        b.free_range(0, 8)
        b.alloc(0, movable=False)                     # claims pageblock 0
        b.alloc_pages(7, movable=False)
        assert b.pageblock_counts() == {"unmovable": 1, "movable": 1}
        return b
    whole, parts = setup(), setup()
    whole.free_range(0, 16)                           # one order-4 block, mixed labels
    parts.free_range(0, 8)
    parts.free_range(8, 8)
    assert whole.free_blocks() == parts.free_blocks() == [(0, 4)]
    assert whole.pageblock_counts() == parts.pageblock_counts() == \
        {"unmovable": 0, "movable": 2}
    whole.check()


def test_argument_validation():
    b = small()
    with pytest.raises(ValueError):
        b.alloc(8)                                    # above max_order
    with pytest.raises(ValueError):
        b.alloc(-1)
    with pytest.raises(ValueError):
        b.alloc_pages(-1)
    assert b.alloc_pages(0) == []
    assert b.free_pages == b.total_pages


def test_check_detects_corruption():
    """check() is what the property tests lean on: it must notice broken invariants.
    (This test reaches into private state on purpose, to break it.)"""
    b = small()
    p = b.alloc(0, movable=True)
    b._state[p] = 0                                   # page marked free but on no list
    with pytest.raises(AssertionError):
        b.check()
    b = small()
    b.alloc(3, movable=True)
    b.free_pages += 1
    with pytest.raises(AssertionError):
        b.check()
    b = small()
    p = b.alloc(0, movable=True)
    b._add_free(p, 0)                                 # listed without merging its buddy
    with pytest.raises(AssertionError):
        b.check()
