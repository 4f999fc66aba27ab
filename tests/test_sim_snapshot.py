"""The simulator's huge-page and allocatability snapshot fields, on hand-built cases with known
answers, in both engines (the engines must also agree: run_equal compares every snapshot)."""
import numpy as np
import pytest

from bench.layout import Layout, Memslot
from bench.ops import KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE, NO_CHECK, Obj, Step, Via
from bench.strategies import make_strategy
from tests.test_sim_engines import open_both, run_equal, steps_of

MiB = 1 << 20
K4 = 4096
A2, VM, PUNCH, DISC, W, R = (Step.GMEM_SET_ATTRS, Step.VM_SET_ATTRS, Step.GMEM_PUNCH,
                             Step.SHARED_DISCARD, Step.WRITE, Step.READ)
G, S, H, GU = Obj.GMEM, Obj.SHARED, Via.HOST, Via.GUEST


def targets(strategy="in-place", options=None, host="64M", **kw):
    kw.setdefault("platform", "preserve")
    layout = Layout((Memslot(0, 8 * MiB),), **kw)
    return open_both(layout, make_strategy(strategy, options or {}), {"host_memory": host})


def test_stage2_leaves_demotion_and_host_pmd_in_place_demote():
    py, c = targets(options={"huge": "demote"}, gmem_page_size=2 * MiB)
    run_equal(py, c, steps_of((W, G, GU, 0, 0, 0, 4 * MiB, 1)))          # 2 folios, huge leaves
    snap = c.snapshot()
    assert snap["stage2_bytes"] == {"4k": 0, "2m": 4 * MiB, "1g": 0}
    assert snap["intact_huge_folios"] == 2 and snap["huge_folios_possible"] == 4
    assert snap["mapping_demotions"] == 0
    run_equal(py, c, steps_of((A2, G, H, 0, 1, 8 * K4, K4, 0),            # one 4K page shared
                              (W, G, H, 0, 2, 8 * K4, K4, 2),
                              (A2, G, H, 0, 3, 2 * MiB, 2 * MiB, 0),      # folio 1 whole
                              (W, G, H, 0, 4, 2 * MiB, 2 * MiB, 3)))
    snap = c.snapshot()
    # folio 0's huge leaf split (one demotion), 511 pages still mapped at 4K; folio 1's leaf
    # zapped whole (no demotion) and mapped by one host PMD; the 4K shared page by a PTE
    assert snap["stage2_bytes"] == {"4k": 511 * K4, "2m": 0, "1g": 0}
    assert snap["mapping_demotions"] == 1
    assert snap["host_pmd_mapped_bytes"] == 2 * MiB
    assert snap["intact_huge_folios"] == 2
    assert snap["folio_splits"] == 0 and snap["folio_merges"] == 0


def test_host_pmd_split_counts_one_demotion():
    py, c = targets(options={"huge": "demote"}, gmem_page_size=2 * MiB, init_shared=True)
    run_equal(py, c, steps_of((W, G, H, 0, 0, 0, 2 * MiB, 1),
                              (A2, G, H, 0, 1, 0, K4, PRIVATE)))
    snap = c.snapshot()
    assert snap["mapping_demotions"] == 1 and snap["host_pmd_mapped_bytes"] == 0


def test_dual_physical_splits_and_possible_folios():
    py, c = targets("dual", gmem_page_size=2 * MiB, shared_page="thp", shared_backing="memfd")
    run_equal(py, c, steps_of((W, G, GU, 0, 0, 0, 2 * MiB, 1),
                              (VM, G, H, 0, 1, 0, K4, 0),
                              (PUNCH, G, H, 0, 1, 0, K4, 0),
                              (W, S, H, 0, 2, 0, K4, 2)))
    snap = c.snapshot()
    # the hugetlb gmem folio stays whole (the punch zeroes its page); the shared THP is
    # intact and PMD-mapped by the touch
    assert snap["folio_splits"] == 0 and snap["mapping_demotions"] == 1
    assert snap["intact_huge_folios"] == 2 and snap["huge_folios_possible"] == 4 + 4
    assert snap["host_pmd_mapped_bytes"] == 2 * MiB
    run_equal(py, c, steps_of((VM, G, H, 0, 3, 0, K4, PRIVATE),
                              (DISC, S, H, 0, 3, 0, K4, 0)))
    snap = c.snapshot()
    # a 4K hole in the shmem THP splits it at once
    assert snap["folio_splits"] == 1 and snap["host_pmd_mapped_bytes"] == 0
    assert snap["intact_huge_folios"] == 1


def test_in_place_split_and_merge_counters():
    py, c = targets(gmem_page_size=2 * MiB)
    run_equal(py, c, steps_of((W, G, GU, 0, 0, 0, 4 * MiB, 1),
                              (A2, G, H, 0, 1, 8 * K4, K4, 0),
                              (W, G, H, 0, 2, 8 * K4, K4, 2)))
    snap = c.snapshot()
    assert snap["folio_splits"] == 1 and snap["intact_huge_folios"] == 1
    assert snap["host_pmd_mapped_bytes"] == 0 and snap["mapping_demotions"] == 1
    assert snap["stage2_bytes"] == {"4k": 511 * K4, "2m": 2 * MiB, "1g": 0}
    run_equal(py, c, steps_of((A2, G, H, 0, 3, 8 * K4, K4, PRIVATE),
                              (R, G, GU, 0, 4, 0, 2 * MiB, NO_CHECK)))
    snap = c.snapshot()
    # merged; preserve platform promotes the stage-2 mapping back to one 2M leaf
    assert snap["folio_merges"] == 1 and snap["intact_huge_folios"] == 2
    assert snap["stage2_bytes"] == {"4k": 0, "2m": 4 * MiB, "1g": 0}


def test_hugetlb_pool_pages_count_as_allocatable():
    py, c = targets("dual", gmem_page_size=2 * MiB, host="64M")
    base = c.snapshot()["allocatable_huge"]["2m"]
    run_equal(py, c, steps_of((W, G, GU, 0, 0, 0, 2 * MiB, 1)))
    assert c.snapshot()["allocatable_huge"]["2m"] == base - 1
    run_equal(py, c, steps_of((PUNCH, G, H, 0, 1, 0, 2 * MiB, 0)))
    snap = c.snapshot()
    assert snap["allocatable_huge"]["2m"] == base and snap["footprint_bytes"] == 2 * MiB


@pytest.mark.parametrize("strategy,obj,via,blocked", [("in-place", G, GU, 1), ("dual", S, H, 0)])
def test_allocatable_huge_counts_ranges_without_unmovable_pages(strategy, obj, via, blocked):
    py, c = targets(strategy, host="1024M")
    snap = c.snapshot()
    assert snap["allocatable_huge"] == {"2m": 512, "1g": 1}
    run_equal(py, c, steps_of((W, obj, via, 0, 0, 0, K4, 1)))
    # a guest_memfd page is unmovable and blocks its 2M and 1G range; an anon page migrates
    assert c.snapshot()["allocatable_huge"] == {"2m": 512 - blocked, "1g": 1 - blocked}


def test_allocatable_huge_after_aging():
    layout = Layout((Memslot(0, 8 * MiB),), platform="preserve")
    py, c = open_both(layout, make_strategy("in-place"),
                      {"host_memory": "64M", "prefragment": 0.25, "seed": 3})
    pinned = py.host.pinned_by_aging
    assert pinned == 8                               # one page in each of 8 of 32 pageblocks
    assert py.snapshot()["allocatable_huge"] == c.snapshot()["allocatable_huge"] == \
        {"2m": 32 - pinned, "1g": 0}
