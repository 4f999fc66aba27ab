"""Who touches guest memory, and what it reaches, in both simulator engines: host processes
other than the VMM, the guest's shared accesses, a host touch of a private GPA under dual
backing, and QEMU's memfd discard (punch hole, then madvise)."""
import errno

import numpy as np
import pytest

from bench.errors import InputError
from bench.layout import Layout, Memslot
from bench.metrics import RepetitionRecord
from bench.ops import (KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE, NO_CHECK, OP_DTYPE, SIGBUS_STATUS,
                       Obj, OpKind, Step, Via)
from bench.strategies import make_strategy
from tests.test_sim_engines import open_both, run_equal, steps_of

MiB = 1 << 20
K4 = 4096
A2, VM, PUNCH, DISC, W, R = (Step.GMEM_SET_ATTRS, Step.VM_SET_ATTRS, Step.GMEM_PUNCH,
                             Step.SHARED_DISCARD, Step.WRITE, Step.READ)
G, S, H, GU, GS = Obj.GMEM, Obj.SHARED, Via.HOST, Via.GUEST, Via.GUEST_SHARED


def targets(strategy="in-place", **kw):
    kw.setdefault("platform", "preserve")
    layout = Layout((Memslot(0, 8 * MiB),), **kw)
    return open_both(layout, make_strategy(strategy), {"host_memory": "64M"})


def ops_of(*rows):
    """rows: (kind, offset, size, token[, proc])"""
    ops = np.zeros(len(rows), OP_DTYPE)
    for i, row in enumerate(rows):
        kind, offset, size, token = row[:4]
        ops[i] = (-1, kind, 0, offset, size, token, row[4] if len(row) > 4 else 0)
    return ops


@pytest.mark.parametrize("strategy", ["in-place", "dual"])
def test_host_touch_of_a_private_gpa(strategy):
    """In-place maps the guest_memfd: SIGBUS.  Dual's VMM reaches the shared backing: the
    touch silently allocates a zero page there, which the guest cannot use."""
    layout = Layout((Memslot(0, 8 * MiB),), platform="preserve")
    strat = make_strategy(strategy)
    py, c = open_both(layout, strat, {"host_memory": "64M"})
    ops = ops_of((OpKind.PRIVATE_WRITE, 0, 4 * K4, 1), (OpKind.SHARED_PROBE, 0, 4 * K4, NO_CHECK))
    steps = strat.compile(ops, layout)
    res = run_equal(py, c, steps)
    snap = c.snapshot()
    rec = RepetitionRecord(ops, steps, res)
    if strategy == "in-place":
        assert res["status"][-1] == SIGBUS_STATUS and rec.sigbus_expected == rec.sigbus_seen == 1
        assert snap["footprint_bytes"] == 4 * K4 and snap["private_host_touch_pages"] == 0
    else:
        assert res["status"][-1] == 0 and rec.sigbus_expected == rec.sigbus_seen == 0
        assert rec.unexpected_sigbus == 0
        assert snap["footprint_bytes"] == 8 * K4, "4 private pages + 4 leaked shared pages"
        assert snap["private_host_touch_pages"] == 4
        assert snap["shared_at_private_bytes"] == 4 * K4


def test_discard_false_keeps_stale_shared_pages_at_private_gpas():
    layout = Layout((Memslot(0, 8 * MiB),), platform="preserve", init_shared=True)
    strat = make_strategy("dual", {"discard": False, "copy": False})
    py, c = open_both(layout, strat, {"host_memory": "64M"})
    run_equal(py, c, strat.compile(ops_of((OpKind.SHARED_WRITE, 0, 8 * K4, 1),
                                          (OpKind.TO_PRIVATE, 0, 2 * K4, 0)), layout))
    snap = c.snapshot()
    assert snap["shared_at_private_bytes"] == 2 * K4 and snap["private_host_touch_pages"] == 0


def test_guest_reads_and_writes_its_shared_pages_in_place():
    """In-place: the guest's shared access reaches the guest_memfd page the host sees."""
    py, c = targets(init_shared=True)
    res = run_equal(py, c, steps_of((W, G, H, 0, 0, 0, 4 * K4, 7),        # host writes
                                    (R, G, GS, 0, 1, 0, 4 * K4, 7),       # guest reads it
                                    (W, G, GS, 0, 2, 0, K4, 9),           # guest writes
                                    (R, G, H, 0, 3, 0, K4, 9),            # host sees it
                                    (R, G, GU, 0, 4, 0, K4, NO_CHECK),    # a private access
                                    (A2, G, H, 0, 5, 4 * K4, K4, PRIVATE),
                                    (R, G, GS, 0, 6, 4 * K4, K4, NO_CHECK)))
    assert list(res["status"]) == [0, 0, 0, 0, errno.EFAULT, 0, errno.EFAULT]
    assert list(res["aux"][:4]) == [0, 0, 0, 0]
    snap = c.snapshot()
    assert snap["stage2_bytes"]["4k"] == 4 * K4 and snap["footprint_bytes"] == 4 * K4


def test_guest_shared_access_under_dual_reaches_the_shared_backing():
    py, c = targets("dual", init_shared=True)
    res = run_equal(py, c, steps_of((W, S, H, 0, 0, 0, 4 * K4, 7),
                                    (R, S, GS, 0, 1, 0, 4 * K4, 7),
                                    (VM, G, H, 0, 2, 0, 4 * K4, PRIVATE),  # zaps stage 2
                                    (R, S, GS, 0, 3, 0, K4, NO_CHECK),     # now private
                                    (R, S, GU, 0, 4, 0, K4, NO_CHECK)))
    assert list(res["status"]) == [0, 0, 0, errno.EFAULT, errno.EFAULT]
    assert res["aux"][1] == 0
    b = c.breakdown()
    assert b["stage2_zap_4k"]["count"] == 4
    assert c.snapshot()["stage2_bytes"]["4k"] == 0


def test_second_host_process_mapping_is_zapped_on_to_private():
    """A second process mapping the guest_memfd (a vhost-user backend, a forked helper) has
    its own PTEs; to-private zaps them too (unmap_mapping_range reaches every process)."""
    py, c = targets(init_shared=True)
    run_equal(py, c, steps_of((W, G, H, 0, 0, 0, 4 * K4, 1, 0),
                              (R, G, H, 0, 1, 0, 4 * K4, 1, 1),           # process 1 maps too
                              (A2, G, H, 0, 2, 0, 4 * K4, PRIVATE)))
    assert c.breakdown()["host_zap_pte"]["count"] == 1
    # process 0's first touch allocates (its fault maps the pages); process 1 faults its
    # own PTEs in for the already-allocated pages
    assert py.ledger.totals["refault_gmem"][0] == 4, "each process faults its own PTEs"
    res = run_equal(py, c, steps_of((R, G, H, 0, 3, 0, K4, NO_CHECK, 1)))
    assert res["status"][0] == SIGBUS_STATUS
    assert not py.gmem[0].host_map[:4].any()


def test_zap_charges_every_process_pte():
    py, c = targets(init_shared=True)
    run_equal(py, c, steps_of((W, G, H, 0, 0, 0, 4 * K4, 1, 0),
                              (W, G, H, 0, 1, 0, 4 * K4, 1, 3),
                              (A2, G, H, 0, 2, 0, 4 * K4, PRIVATE)))
    one = targets(init_shared=True)
    run_equal(*one, steps_of((W, G, H, 0, 0, 0, 4 * K4, 1, 0),
                             (A2, G, H, 0, 2, 0, 4 * K4, PRIVATE)))
    two, single = c.breakdown()["host_zap_pte"]["ns"], one[1].breakdown()["host_zap_pte"]["ns"]
    assert two > single, "8 PTEs zapped cost more than 4"


@pytest.mark.parametrize("backing,status", [("anon", errno.EFAULT), ("memfd", 0)])
def test_other_processes_reach_only_a_memfd_shared_backing(backing, status):
    py, c = targets("dual", init_shared=True, shared_backing=backing)
    res = run_equal(py, c, steps_of((W, S, H, 0, 0, 0, 4 * K4, 1, 2)))
    assert res["status"][0] == status
    if status == 0:
        run_equal(py, c, steps_of((DISC, S, H, 0, 1, 0, 4 * K4, 0)))
        assert not py.shared[0].host_map[:4].any(), "the punch unmaps every process"


def test_memfd_discard_is_punch_then_madvise():
    for backing, madvised in (("memfd", 1), ("anon", 0)):
        py, c = targets("dual", init_shared=True, shared_backing=backing)
        run_equal(py, c, steps_of((W, S, H, 0, 0, 0, 4 * K4, 1),
                                  (DISC, S, H, 0, 1, 0, 4 * K4, 0)))
        b = c.breakdown()
        assert b.get("madvise_dontneed_unmapped", {}).get("count", 0) == madvised


def test_process_number_is_validated_by_the_strategy():
    layout = Layout((Memslot(0, 8 * MiB),))
    with pytest.raises(InputError, match="host process 4"):
        make_strategy("in-place").compile(ops_of((OpKind.SHARED_WRITE, 0, K4, 1, 4)), layout)


def test_workload_names_the_touching_process_and_guest_shared_touches(tmp_path):
    from bench.workload import load_workload
    text = """\
[workload]
description = "test"

[layout]
platform = "preserve"

[[layout.memslot]]
gpa = 0
size = "64M"

[[phase]]
generator = "dma-churn"
buffers = 50
touch = ["guest-shared-write", "host-read"]
touch_process = 1
"""
    p = tmp_path / "w.toml"
    p.write_text(text)
    ops, _ = load_workload(str(p)).ops(repetition=0)
    gw = ops[ops["kind"] == OpKind.GUEST_SHARED_WRITE]
    hr = ops[ops["kind"] == OpKind.SHARED_READ]
    assert len(gw) and len(hr) and (gw["proc"] == 0).all() and (hr["proc"] == 1).all()
    p.write_text(text.replace("touch_process = 1", "touch_process = 4"))
    with pytest.raises(InputError, match="touch_process"):
        load_workload(str(p))
