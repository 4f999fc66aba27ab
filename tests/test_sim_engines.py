"""The C engine (bench/sim/fast.py CoreTarget, bench/sim/core.c) equals the Python reference
(bench/sim/backend.py SimTarget): same per-step results, same snapshot after every batch,
same cost breakdown, same fragmentation, over random layouts and op sequences, and on the
conformance scenarios of test_sim_conformance.py expressed as steps."""
import errno

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bench.errors import InputError
from bench.layout import Layout, Memslot
from bench.ops import (KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE, NO_CHECK, OP_DTYPE, SIGBUS_STATUS,
                       SKIPPED, STEP_ABORT_ON_FAIL, STEP_DTYPE, Obj, OpKind, Step, Via)
from bench.sim.backend import SimTarget
from bench.sim.fast import CoreTarget, core_available, make_sim_target
from bench.strategies import make_strategy

pytestmark = pytest.mark.skipif(not core_available(), reason="the C core cannot be built here")

HOST_KINDS = (OpKind.SHARED_WRITE, OpKind.SHARED_READ, OpKind.SHARED_PROBE)
MiB = 1 << 20
GiB = 1 << 30
K4 = 4096
SIZES = [1, 2, 3, 16, 511, 512, 513, 1024]
KINDS = [OpKind.TO_SHARED, OpKind.TO_PRIVATE, OpKind.SHARED_WRITE, OpKind.SHARED_READ,
         OpKind.PRIVATE_WRITE, OpKind.PRIVATE_READ, OpKind.SHARED_PROBE, OpKind.PIN,
         OpKind.UNPIN, OpKind.GUEST_SHARED_WRITE, OpKind.GUEST_SHARED_READ]


def open_both(layout, strategy, params):
    """Both engines, or the InputError both raise (same message)."""
    errors = []
    targets = []
    for cls in (SimTarget, CoreTarget):
        try:
            targets.append(cls(layout, strategy, dict(params)))
        except InputError as e:
            errors.append(str(e))
    assert len(errors) in (0, 2), f"only one engine refused the layout: {errors}"
    if errors:
        assert errors[0] == errors[1]
        return None
    return targets


def run_equal(py, c, steps, cuts=()):
    """Execute steps in batches split at `cuts` on both; assert equal results and
    snapshots after every batch; return the concatenated results."""
    bounds = [0] + sorted(set(int(x) for x in cuts if 0 < x < len(steps))) + [len(steps)]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        rp, rc = py.execute(steps[a:b]), c.execute(steps[a:b])
        bad = np.flatnonzero(rp != rc)
        assert not len(bad), (f"step {a + bad[0]} ({steps[a + bad[0]]}): python {rp[bad[0]]} "
                              f"c {rc[bad[0]]}")
        assert py.snapshot() == c.snapshot(), f"after steps [{a}, {b})"
        # the huge-page measures are counters kept as the model changes: in both engines
        # they equal a full recount of every page and folio
        assert py.snapshot(recount=True) == py.snapshot(), f"python, after steps [{a}, {b})"
        assert c.snapshot(recount=True) == c.snapshot(), f"c, after steps [{a}, {b})"
        out.append(rc)
    assert py.breakdown() == c.breakdown()
    assert py.metadata()["fragmentation"] == c.metadata()["fragmentation"]
    assert py.metadata()["pageblocks"] == c.metadata()["pageblocks"]
    assert py.metadata()["huge_fallbacks"] == c.metadata()["huge_fallbacks"]
    assert py.host.buddy.free_pages + py.host.footprint_pages + py.host.pinned_by_aging == \
        py.host.buddy.total_pages
    c.check()
    return np.concatenate(out) if out else np.zeros(0, py.execute(steps[:0]).dtype)


# ---- random layouts and op sequences ---------------------------------------------------------
@st.composite
def scenario(draw):
    folio = draw(st.sampled_from([K4, 2 * MiB, 2 * MiB, GiB]))
    if folio == GiB:
        nslots, slot = 1, GiB
        host = draw(st.sampled_from(["1040M", "1536M", "2600M"]))
    else:
        nslots = draw(st.sampled_from([1, 1, 2]))
        slot = draw(st.sampled_from([4 * MiB, 8 * MiB]))
        host = draw(st.sampled_from(["6M", "9M", "10M", "12M", "12M", "16M", "24M", "64M"]))
    layout = Layout(tuple(Memslot(i * 4 * GiB, slot) for i in range(nslots)),
                    gmem_page_size=folio,
                    shared_backing=draw(st.sampled_from(["anon", "memfd"])),
                    shared_page=draw(st.sampled_from(["4k", "thp", "hugetlb"])),
                    platform=draw(st.sampled_from(["preserve", "zero", "destroy"])),
                    init_shared=draw(st.booleans()))
    name = draw(st.sampled_from(["in-place", "dual"]))
    options = {}
    if name == "dual":
        options["copy"] = draw(st.sampled_from(["auto", True, False]))
        options["discard"] = draw(st.sampled_from([True, True, False]))
    else:
        if draw(st.booleans()):
            options["promote"] = draw(st.booleans())
        options["huge"] = draw(st.sampled_from(["split", "split", "demote"]))
    params = {"host_memory": host, "seed": draw(st.integers(0, 3)),
              "prefragment": draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))}
    npages = slot // K4
    nops = draw(st.integers(1, 50))
    ops = np.zeros(nops, OP_DTYPE)
    for i in range(nops):
        kind = draw(st.sampled_from(KINDS))
        s = draw(st.integers(0, nslots - 1))
        if folio == GiB and draw(st.booleans()):      # stay near a few places of the 1G folio
            page = draw(st.sampled_from([0, 1, 511, 512, 100000, npages - 1024]))
        else:
            page = draw(st.integers(0, npages - 1))
        n = min(draw(st.sampled_from(SIZES + [npages])), npages - page)
        token = draw(st.sampled_from([1, 2, 3, NO_CHECK]))
        offset, size = page * K4, n * K4
        if kind in (OpKind.TO_SHARED, OpKind.TO_PRIVATE):
            # invalid requests as bench.generators makes them: empty, or 2K off alignment
            bad = draw(st.sampled_from([None] * 8 + ["empty", "unaligned"]))
            if bad == "empty":
                size = 0
            elif bad == "unaligned":
                offset, size = offset + K4 // 2, size - K4
        proc = draw(st.sampled_from([0, 0, 0, 1, 3])) if kind in HOST_KINDS else 0
        ops[i] = (-1, kind, s, offset, size, token, proc)
    cuts = draw(st.lists(st.integers(1, 3 * nops), max_size=4))
    return layout, make_strategy(name, options), params, ops, cuts


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(scenario())
def test_c_engine_equals_python_reference(sc):
    layout, strategy, params, ops, cuts = sc
    targets = open_both(layout, strategy, params)
    if targets is None:
        return
    py, c = targets
    # every third op carries an arrival time (some in the past, some in the future)
    t = np.where(np.arange(len(ops)) % 3 == 0, np.arange(len(ops)) * 40_000, -1)
    py.set_arrivals(t)
    c.set_arrivals(t)
    run_equal(py, c, strategy.compile(ops, layout), cuts)
    assert py.clock_ns == c.clock_ns


# ---- conformance scenarios, as steps ---------------------------------------------------------
def steps_of(*rows):
    """rows: (code, obj, via, flags, op, offset, size, arg[, host process])"""
    out = np.zeros(len(rows), STEP_DTYPE)
    for i, row in enumerate(rows):
        code, obj, via, flags, op, offset, size, arg = row[:8]
        out[i] = (code, obj, via, flags, 0, op, offset, size, arg, row[8] if len(row) > 8 else 0)
    return out


def both(strategy="in-place", host="64M", **kw):
    kw.setdefault("gmem_page_size", K4)
    layout = Layout((Memslot(0, 8 * MiB),), **kw)
    py, c = open_both(layout, make_strategy(strategy), {"host_memory": host})
    return py, c


A2, VM, PUNCH, DISC, COPY, W, R, PIN, UNPIN = (Step.GMEM_SET_ATTRS, Step.VM_SET_ATTRS,
                                               Step.GMEM_PUNCH, Step.SHARED_DISCARD, Step.COPY,
                                               Step.WRITE, Step.READ, Step.PIN, Step.UNPIN)
G, S, H, GU = Obj.GMEM, Obj.SHARED, Via.HOST, Via.GUEST


def test_ioctl2_validation_order():
    py, c = both(init_shared=True)
    res = run_equal(py, c, steps_of(
        (A2, G, H, 0, 0, 512, K4, PRIVATE),                # unaligned
        (A2, G, H, 0, 1, 0, K4 + 1, PRIVATE),
        (A2, G, H, 0, 2, 0, 0, PRIVATE),                   # zero size
        (A2, G, H, 0, 3, K4, (1 << 64) - K4, PRIVATE),     # overflow
        (A2, G, H, 0, 4, 8 * MiB, K4, PRIVATE),            # outside the file
        (A2, G, H, 0, 5, 8 * MiB - K4, 2 * K4, PRIVATE),
        (A2, G, H, 0, 6, 0, K4, PRIVATE | 1),              # unknown attribute
        (VM, G, H, 0, 7, 0, K4, PRIVATE),                  # VM ioctl with in-place on
    ))
    assert list(res["status"]) == [errno.EINVAL] * 8


def test_vm_ioctl_enotty_gmem_ioctl_under_dual():
    py, c = both("dual", init_shared=True)
    res = run_equal(py, c, steps_of((A2, G, H, 0, 0, 0, K4, PRIVATE),
                                    (VM, G, H, 0, 1, 0, 4 * K4, PRIVATE),
                                    (VM, G, H, 0, 2, 0, 4 * K4, PRIVATE),
                                    (VM, G, H, 0, 3, 1, 4 * K4, PRIVATE)))
    assert list(res["status"]) == [errno.ENOTTY, 0, 0, errno.EINVAL]
    assert res["ns"][2] == 148, "early return: ioctl entry only"


def test_elevated_refcount_eagain_error_offset_then_success():
    py, c = both(init_shared=True)
    res = run_equal(py, c, steps_of(
        (W, G, H, 0, 0, 0, 16 * K4, 1),
        (PIN, G, H, 0, 1, 10 * K4, K4, 0),
        (A2, G, H, STEP_ABORT_ON_FAIL, 2, 4 * K4, 12 * K4, PRIVATE),
        (R, G, H, 0, 2, 4 * K4, K4, 1),                    # skipped: same op failed
        (R, G, H, 0, 3, 4 * K4, K4, 1),                    # still shared: refaults
        (UNPIN, G, H, 0, 4, 10 * K4, K4, 0),
        (A2, G, H, 0, 5, 4 * K4, 12 * K4, PRIVATE),
        (R, G, H, 0, 6, 4 * K4, K4, NO_CHECK),             # now private: SIGBUS
    ))
    assert res["status"][2] == errno.EAGAIN and res["aux"][2] == 10 * K4
    assert res["status"][3] == SKIPPED
    assert list(res["status"][4:]) == [0, 0, 0, SIGBUS_STATUS] and res["aux"][4] == 0


def test_error_offset_not_below_start_with_huge_folio():
    py, c = both(init_shared=True, gmem_page_size=2 * MiB)
    res = run_equal(py, c, steps_of((W, G, H, 0, 0, 0, 2 * MiB, 1),
                                    (PIN, G, H, 0, 1, 3 * K4, K4, 0),
                                    (A2, G, H, 0, 2, 64 * K4, 8 * K4, PRIVATE)))
    assert res["status"][2] == errno.EAGAIN and res["aux"][2] == 64 * K4


def test_lru_drain_and_stage2_zap_are_charged():
    py, c = both()
    run_equal(py, c, steps_of((W, G, GU, 0, 0, 0, 8 * K4, 1),
                              (A2, G, H, 0, 1, 0, 8 * K4, 0),
                              (W, G, H, 0, 2, 0, K4, 2),
                              (A2, G, H, 0, 3, 0, K4, PRIVATE)))
    b = c.breakdown()
    assert b["lru_drain"]["count"] == 1 and b["stage2_zap_4k"]["count"] == 8


@pytest.mark.parametrize("platform,seen", [("preserve", 0xAB), ("zero", 0),
                                           ("destroy", 0xDEADBEEF)])
def test_contents_on_to_shared_per_platform(platform, seen):
    py, c = both(platform=platform)
    res = run_equal(py, c, steps_of((W, G, GU, 0, 0, 0, 4 * K4, 0xAB),
                                    (A2, G, H, 0, 1, 0, 4 * K4, 0),
                                    (R, G, H, 0, 2, 0, 4 * K4, seen)))
    assert list(res["status"]) == [0, 0, 0] and res["aux"][2] == 0


def test_punch_frees_and_refault_reads_zero():
    py, c = both(init_shared=True)
    res = run_equal(py, c, steps_of((W, G, H, 0, 0, 0, 8 * K4, 7),
                                    (PUNCH, G, H, 0, 1, 0, 8 * K4, 0),
                                    (PUNCH, G, H, 0, 2, 100, K4, 0),
                                    (R, G, H, 0, 3, 4 * K4, 4 * K4, 0)))
    assert list(res["status"]) == [0, 0, errno.EINVAL, 0] and res["aux"][3] == 0
    assert c.snapshot()["footprint_bytes"] == 4 * K4


@pytest.mark.parametrize("promote,merges", [(True, 1), (False, 0)])
def test_partial_conversion_demotes_then_promotes_if_allowed(promote, merges):
    layout = Layout((Memslot(0, 8 * MiB),), gmem_page_size=2 * MiB, init_shared=True)
    strat = make_strategy("in-place", {"promote": promote, "huge": "demote"})
    py, c = open_both(layout, strat, {"host_memory": "64M"})
    run_equal(py, c, steps_of((W, G, H, 0, 0, 0, 2 * MiB, 1),
                              (A2, G, H, 0, 1, 8 * K4, K4, PRIVATE),
                              (A2, G, H, 0, 2, 8 * K4, K4, 0),
                              (R, G, H, 0, 3, 0, 2 * MiB, 1)), cuts=[2])
    snap = c.snapshot()
    assert snap["huge_splits"] == 1 and snap["huge_merges"] == merges
    assert snap["footprint_bytes"] == snap["huge_bytes"] == 2 * MiB


def test_dual_punch_zeroes_part_of_a_hugetlb_gmem_folio_and_copies():
    py, c = both("dual", gmem_page_size=2 * MiB)
    res = run_equal(py, c, steps_of((W, G, GU, 0, 0, 0, 2 * MiB, 1),
                                    (VM, G, H, 0, 1, 4 * K4, K4, 0),
                                    (COPY, S, H, 0, 1, 4 * K4, K4, 0),
                                    (PUNCH, G, H, 0, 1, 4 * K4, K4, 0),
                                    (R, S, H, 0, 2, 4 * K4, K4, 1)))
    assert res["aux"][2] == K4 and res["aux"][4] == 0
    snap = c.snapshot()
    # the VM ioctl splits the huge stage-2 leaf (a demotion); the punch only zeroes the
    # page inside the hugetlb folio (kvm_gmem_truncate_inode_range), which stays whole
    assert snap["huge_splits"] == 1 and snap["huge_bytes"] == 2 * MiB
    assert snap["folio_splits"] == 0 and snap["mapping_demotions"] == 1
    assert snap["footprint_bytes"] == 2 * MiB + K4   # the whole folio + 1 shared page


def test_anon_thp_deferred_split_runs_under_memory_pressure():
    # 8M guest, 10M host (2560 pages): the last THP, partly discarded, waits for its
    # deferred split; the guest's 1600 pages fit only once the shrinker has run
    py, c = both("dual", host="10M", init_shared=True, shared_page="thp", shared_backing="anon")
    res = run_equal(py, c, steps_of((W, S, H, 0, 0, 0, 8 * MiB, 1),
                                    (DISC, S, H, 0, 1, 0, 8 * MiB - 4 * K4, 0),
                                    (W, S, H, 0, 2, 0, K4, 1),
                                    (VM, G, H, 0, 3, 0, 8 * MiB, PRIVATE),
                                    (W, G, GU, 0, 4, 0, 1600 * K4, 2)), cuts=[3])
    assert list(res["status"]) == [0, 0, 0, 0, 0]
    assert py.shared[0].deferred == [] and py.shared[0].chunk[3] == 2   # split by the shrinker
    assert c.snapshot()["footprint_bytes"] == (512 + 4 + 1600) * K4


def test_out_of_memory_is_enomem_and_skips_the_op():
    py, c = both("dual", host="10M")
    res = run_equal(py, c, steps_of((W, G, GU, 0, 0, 0, 8 * MiB, 1),
                                    (VM, G, H, STEP_ABORT_ON_FAIL, 1, 0, 8 * MiB, 0),
                                    (COPY, S, H, STEP_ABORT_ON_FAIL, 1, 0, 8 * MiB, 0),
                                    (PUNCH, G, H, 0, 1, 0, 8 * MiB, 0)))
    assert list(res["status"]) == [0, 0, errno.ENOMEM, SKIPPED]


def test_hugetlb_pool_preallocated_or_layout_refused():
    py, c = both("dual", shared_page="hugetlb", shared_backing="memfd")
    assert c.snapshot()["footprint_bytes"] == 8 * MiB == py.snapshot()["footprint_bytes"]
    layout = Layout((Memslot(0, 8 * MiB),), shared_page="hugetlb")
    with pytest.raises(InputError, match="too small"):
        CoreTarget(layout, make_strategy("dual"), {"host_memory": "6M"})


def test_make_sim_target_selects_engine():
    layout = Layout((Memslot(0, 8 * MiB),))
    strat = make_strategy("in-place")
    assert isinstance(make_sim_target(layout, strat, {}), CoreTarget)
    assert isinstance(make_sim_target(layout, strat, {"engine": "python"}), SimTarget)
    with pytest.raises(InputError):
        make_sim_target(layout, strat, {"engine": "fortran"})


# ---- the buddy allocator alone: same pfns for the same calls -------------------------------
class CBuddy:
    """The C core's buddy allocator, driven directly."""

    def __init__(self, total_pages, rng=None, fraction=0.0):
        from bench.sim import _core
        from bench.sim.fast import prefragment_draws
        self.ffi, self.lib = _core.ffi, _core.lib
        zeros = [0.0] * self.lib.core_nkeys()
        self.c = self.ffi.gc(self.lib.core_new(total_pages, zeros, zeros), self.lib.core_free)
        self.total_pages = total_pages
        self.pinned = 0
        draws = prefragment_draws(rng, fraction, total_pages) if fraction else None
        if draws is not None:
            ch, off = draws
            self.pinned = self.lib.core_prefragment(
                self.c, self.ffi.cast("int64_t *", self.ffi.from_buffer(ch)),
                self.ffi.cast("int64_t *", self.ffi.from_buffer(off)), len(ch))

    def alloc(self, order, movable):
        return int(self.lib.core_buddy_alloc(self.c, order, int(movable)))

    def alloc_pages(self, n, movable):
        out = np.zeros(n, np.int32)
        rc = self.lib.core_buddy_alloc_pages(self.c, n, int(movable),
                                             self.ffi.cast("int32_t *", self.ffi.from_buffer(out)))
        return None if rc else out

    def free(self, pfn, order):
        self.lib.core_buddy_free(self.c, pfn, order)

    def free_range(self, pfn, n):
        self.lib.core_buddy_free_range(self.c, pfn, n)

    def counters(self):
        out = np.zeros(self.lib.CORE_C_COUNT, np.int64)
        self.lib.core_counters(self.c, self.ffi.cast("int64_t *", self.ffi.from_buffer(out)))
        return out

    def nr_free(self):
        return self.counters()[self.lib.CORE_C_NR_FREE:].tolist()

    def labels(self):
        out = np.zeros((self.total_pages + 511) >> 9, np.uint8)
        self.lib.core_buddy_labels(self.c, self.ffi.cast("uint8_t *", self.ffi.from_buffer(out)))
        return out.tobytes()

    def free_blocks(self):
        n = self.lib.core_buddy_free_blocks(self.c, self.ffi.NULL, self.ffi.NULL, 0)
        pfn, order = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.lib.core_buddy_free_blocks(self.c, self.ffi.cast("int64_t *", self.ffi.from_buffer(pfn)),
                                        self.ffi.cast("int64_t *", self.ffi.from_buffer(order)), n)
        return list(zip(pfn.tolist(), order.tolist()))


buddy_op = st.one_of(
    st.tuples(st.just("alloc"), st.sampled_from([0, 0, 0, 1, 2, 3, 5, 8, 9, 9, 10, 11, 12, 18]),
              st.booleans()),
    st.tuples(st.just("pages"), st.one_of(st.integers(1, 3000),
                                           st.sampled_from([511, 512, 513, 4096, 70000])),
              st.booleans()),
    st.tuples(st.just("free"), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(total=st.sampled_from([(1 << 18) + 1000, 3 << 17, (1 << 19) + 4096 + 77]),
       fraction=st.sampled_from([0.0, 0.0, 0.1, 0.6]), seed=st.integers(0, 3),
       ops=st.lists(buddy_op, min_size=1, max_size=120))
def test_c_buddy_equals_python_buddy(total, fraction, seed, ops):
    from bench.sim.buddy import BuddyAllocator, OutOfMemory
    py = BuddyAllocator(total)
    pinned = py.prefragment(np.random.default_rng(seed), fraction) if fraction else 0
    c = CBuddy(total, np.random.default_rng(seed), fraction)
    assert c.pinned == pinned
    held = []                      # (pfn, npages, order or None: order = freeable whole)
    for kind, a, b, *rest in ops:
        if kind == "alloc":
            try:
                want = py.alloc(a, b)
            except OutOfMemory:
                want = -1
            assert c.alloc(a, b) == want, f"alloc({a}, {b})"
            if want >= 0:
                held.append((want, 1 << a, a))
        elif kind == "pages":
            try:
                runs = py.alloc_pages(a, b)
            except OutOfMemory:
                runs = None
            got = c.alloc_pages(a, b)
            if runs is None:
                assert got is None
                continue
            want = [p for s, n in runs for p in range(s, s + n)]
            assert got.tolist() == want, f"alloc_pages({a}, {b})"
            held += [(s, n, None) for s, n in runs]
        elif held:
            i = int(a * (len(held) - 1))
            pfn, n, order = held.pop(i)
            s = int(b * (n - 1))
            e = s + 1 + int(rest[0] * (n - s - 1))
            if order is not None and (s, e) == (0, n):
                py.free(pfn, order)
                c.free(pfn, order)
            else:
                py.free_range(pfn + s, e - s)
                c.free_range(pfn + s, e - s)
            held += [(pfn, s, None)] * (s > 0) + [(pfn + e, n - e, None)] * (e < n)
        assert c.nr_free() == py.nr_free()
        assert c.counters()[c.lib.CORE_C_FREE_PAGES] == py.free_pages
    assert c.labels() == bytes(py._labels)
    assert c.free_blocks() == py.free_blocks()
    py.check()
    assert c.lib.core_check(c.c) == 0, c.ffi.string(c.lib.core_error(c.c)).decode()


def test_c_buddy_equals_python_buddy_long_mixed_runs():
    """Long interleavings of movable and unmovable 4K allocations freed as address runs:
    these reach the rare rules (stealing whole pageblocks, freeing a block > pageblock
    order whose pageblocks carry different labels)."""
    from bench.sim.buddy import BuddyAllocator, OutOfMemory

    mixed = []

    class Counting(BuddyAllocator):
        def _make_chunks_uniform(self, pfn, order):
            a = pfn >> 9
            b = a + (1 << (order - 9))
            if self._labels.count(self._labels[a], a, b) != b - a:
                mixed.append(pfn)
            super()._make_chunks_uniform(pfn, order)

    total = 1 << 14
    for seed in range(6):
        rng = np.random.default_rng(seed)
        py, c = Counting(total), CBuddy(total)
        held = []
        for _ in range(400):
            if rng.random() < 0.5:
                n = int(rng.choice([1, 3, 64, 300, 700, 1500]))
                movable = bool(rng.random() < 0.5)
                try:
                    want = [p for s, k in py.alloc_pages(n, movable) for p in range(s, s + k)]
                except OutOfMemory:
                    assert c.alloc_pages(n, movable) is None
                    continue
                assert c.alloc_pages(n, movable).tolist() == want
                held += want
            elif held:
                held.sort()
                i = int(rng.integers(len(held)))
                j = min(len(held), i + int(rng.choice([1, 50, 600, 2000])))
                sel, held[i:j] = held[i:j], []
                start = 0
                for k in range(1, len(sel) + 1):
                    if k == len(sel) or sel[k] != sel[k - 1] + 1:
                        py.free_range(sel[start], k - start)
                        c.free_range(sel[start], k - start)
                        start = k
            assert c.nr_free() == py.nr_free()
        assert c.labels() == bytes(py._labels)
        assert c.free_blocks() == py.free_blocks()
        assert c.lib.core_check(c.c) == 0
    assert mixed, "no freed block with mixed pageblock labels: the rare rule went untested"


def test_anon_thp_rediscard_frees_pages_faulted_into_its_holes():
    # a partly discarded anon THP waits for its deferred split; a 4K page faulted into one
    # of its holes is an ordinary page, and discarding it again frees it at once
    py, c = both("dual", init_shared=True, shared_page="thp", shared_backing="anon")
    res = run_equal(py, c, steps_of((W, S, H, 0, 0, 0, 2 * MiB, 1),
                                    (DISC, S, H, 0, 1, 0, 8 * K4, 0),
                                    (W, S, H, 0, 2, 2 * K4, K4, 5),
                                    (Step.NOP, G, H, 0, 3, 0, 0, 0),
                                    (DISC, S, H, 0, 4, 0, 16 * K4, 0)))
    assert list(res["status"]) == [0] * 5 and res["ns"][3] == 0
    assert c.snapshot()["footprint_bytes"] == 2 * MiB      # the THP whole, the 4K page gone
    assert c.breakdown()["discard_anon"]["count"] == 2


@pytest.mark.parametrize("row,message", [
    ((10, G, H, 0, 0, 0, K4, 0), "unknown step code"),
    ((W, S, H, 0, 0, 0, K4, 1), "no shared backing"),
    ((W, G, GU, 0, 0, 8 * MiB, K4, 1), None),             # beyond the file: EFAULT, defined
    ((PIN, G, H, 0, 0, 8 * MiB - K4, 2 * K4, 0), "not a range inside the memslot"),
    ((W, G, H, 0, 0, 0, 0, 1), "not a range inside the memslot"),
    ((W, G, H, 0, 0, 0, K4, 1, 4), "process 4 / via 0 out of range"),
])
def test_steps_the_c_engine_refuses(row, message):
    py, c = both(init_shared=True)
    steps = steps_of(row)
    if message is None:
        assert run_equal(py, c, steps)["status"][0] == errno.EFAULT
        return
    with pytest.raises(ValueError, match=message):
        c.execute(steps)
    steps["slot"] = 1
    with pytest.raises(ValueError, match="slot 1 out of range|unknown step code|process 4"):
        c.execute(steps)
    assert c.snapshot() == py.snapshot(), "the refused step changed nothing"


def test_arrival_times_advance_the_clock_without_billing_idle_time():
    py, c = both("in-place", init_shared=True)
    steps = steps_of((A2, G, H, 1, 0, 0, K4, PRIVATE), (A2, G, H, 1, 1, 0, K4, 0),
                     (A2, G, H, 1, 2, 0, K4, PRIVATE), (A2, G, H, 1, 3, 0, K4, 0))
    arrivals = np.array([0, 5_000_000, -1, 9_000_000], np.int64)   # op 2 is untimed
    for t in (py, c):
        t.set_arrivals(arrivals)
    res = run_equal(py, c, steps, cuts=[2])
    assert py.clock_ns == c.clock_ns
    # the clock jumped to the last op's arrival and then added its work; the idle gaps are
    # in the clock, not in any step's charge
    assert c.clock_ns == 9_000_000 + int(res["ns"][3])
    assert sum(v["ns"] for v in c.breakdown().values()) == int(res["ns"].sum())


def test_a_huge_charge_saturates_instead_of_overflowing():
    from bench.costs import load_profile
    prof = load_profile(overrides={"touch_page": {"4k": 1e12, "2m": 1e12}, "fault_gmem": 1e12
                                   if False else {"4k": 1e12, "2m": 1e12}})
    layout = Layout((Memslot(0, 8 * MiB),), gmem_page_size=K4, init_shared=True)
    py, c = open_both(layout, make_strategy("in-place"), {"host_memory": "64M", "_profile": prof})
    res = run_equal(py, c, steps_of((W, G, H, 0, 0, 0, 8 * MiB, 7)))
    assert res["ns"][0] == 10**12 and res["ns"][0] > 0
    assert py.metadata()["saturated_steps"] == c.metadata()["saturated_steps"] == 1
