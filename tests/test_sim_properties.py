"""Invariants of the simulator over random operation sequences (hypothesis)."""
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from bench.backend import open_target
from bench.layout import Layout, Memslot
from bench.metrics import RepetitionRecord
from bench.ops import OP_DTYPE, OpKind
from bench.sim.model import DEFERRED, INTACT
from bench.strategies import make_strategy

MiB = 1 << 20
SLOT = 8 * MiB
NPAGES = SLOT // 4096

op_st = st.tuples(
    st.sampled_from([OpKind.TO_SHARED, OpKind.TO_PRIVATE, OpKind.SHARED_WRITE,
                     OpKind.SHARED_READ, OpKind.PRIVATE_WRITE, OpKind.PRIVATE_READ,
                     OpKind.PIN, OpKind.UNPIN]),
    st.integers(0, NPAGES - 1),
    st.sampled_from([1, 2, 3, 16, 511, 512, 513, 1024]),
    st.integers(1, 5),
)
layout_st = st.fixed_dictionaries({
    "gmem_page_size": st.sampled_from([4096, 2 * MiB]),
    "shared_backing": st.sampled_from(["anon", "memfd"]),
    "shared_page": st.sampled_from(["4k", "thp", "hugetlb"]),
    "platform": st.sampled_from(["preserve", "zero", "destroy"]),
    "init_shared": st.booleans(),
})


def counted_pages(target) -> int:
    """Pages held for the guest, counted from object state independently of the counters."""
    n = 0
    for g in target.gmem:
        n += int(np.count_nonzero(g.page_pfn))
        if g.order:
            n += int(np.count_nonzero(g.folio_state == INTACT)) * g.fpages
    for s in target.shared:
        if s is None:
            continue
        n += int(np.count_nonzero(s.page_pfn))
        if s.huge:
            n += int(np.count_nonzero(s.chunk == INTACT)) * 512
            for c in np.flatnonzero(s.chunk == DEFERRED):
                base = int(s.chunk_pfn[c])
                seg = s.page_pfn[c * 512:(c + 1) * 512]
                own = seg == np.arange(base + 1, base + 513)
                n += 512 - int(np.count_nonzero(own))   # the THP whole, its own pages once
    # free hugetlb pages that guest_memfd folios returned stay held for the guest
    n += sum(len(pool) << order for order, pool in target.host.hugetlb_pool.items())
    return n


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout_kw=layout_st, strategy=st.sampled_from(["in-place", "dual"]),
       raw=st.lists(op_st, min_size=1, max_size=60))
def test_invariants(layout_kw, strategy, raw):
    layout = Layout((Memslot(0, SLOT),), **layout_kw)
    ops = np.zeros(len(raw), OP_DTYPE)
    for i, (kind, page, npages, token) in enumerate(raw):
        npages = min(npages, NPAGES - page)
        ops[i] = (-1, kind, 0, page * 4096, npages * 4096, token, 0)
    strat = make_strategy(strategy)
    steps = strat.compile(ops, layout)
    target = open_target("sim", layout, strat, {"host_memory": "64M", "engine": "python"})
    res = target.execute(steps)
    host = target.host
    # pages are never lost or double-counted
    host.buddy.check()
    assert host.buddy.free_pages + host.footprint_pages == host.buddy.total_pages
    # footprint equals allocated folios
    assert host.footprint_pages == counted_pages(target)
    # a private page is never host-mapped
    for g in target.gmem:
        for s, e, v in g.attr_view.segments():
            if v:
                assert not g.host_map[s:e].any()
        if g.order:
            for f in np.flatnonzero(g.host_pmd):
                assert g.attr_view.is_uniform(f * g.fpages, (f + 1) * g.fpages, 0)
    rec = RepetitionRecord(ops, steps, res)
    if strategy == "in-place":
        assert rec.bytes_copied == 0 and rec.copy_time_ns == 0
    # every latency is explained by the breakdown
    assert sum(v["ns"] for v in target.breakdown().values()) >= res["ns"].sum() - len(res)
