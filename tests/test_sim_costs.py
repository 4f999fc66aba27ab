"""Where the simulator charges costs (docs/model.md): the per-conversion path both strategies
pay, platform page-state steps per direction, no double charges, the VM attribute xarray and
start-up, per-vCPU flushes.  Every scenario runs on both engines, which must agree."""
import numpy as np
import pytest

from bench.layout import Layout, Memslot
from bench.ops import (KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE, OP_DTYPE, STEP_DTYPE, Obj, OpKind,
                       Step, Via)
from bench.sim.backend import SimTarget
from bench.sim.fast import CoreTarget, core_available
from bench.strategies import make_strategy

pytestmark = pytest.mark.skipif(not core_available(), reason="the C core cannot be built here")

MiB = 1 << 20
K4 = 4096


def ops_of(*rows):
    """rows: (kind, offset, size[, token]) -> an op array (slot 0, untimed)."""
    out = np.zeros(len(rows), OP_DTYPE)
    for i, r in enumerate(rows):
        kind, off, size = r[:3]
        out[i] = (-1, kind, 0, off, size, r[3] if len(r) > 3 else 7, 0)
    return out


def run(strategy, ops, platform="zero", page=K4, vcpus=4, init_shared=False, accepted=False,
        tdx_private_2m=False, **opts):
    """Run ops on both engines; assert they agree; return (python target, results)."""
    layout = Layout((Memslot(0, 8 * MiB),), gmem_page_size=page, shared_backing="memfd",
                    platform=platform, init_shared=init_shared, vcpus=vcpus, accepted=accepted,
                    tdx_private_2m=tdx_private_2m)
    st = make_strategy(strategy, opts)
    steps = st.compile(ops, layout)
    py = SimTarget(layout, st, {"host_memory": "64M"})
    c = CoreTarget(layout, st, {"host_memory": "64M"})
    rp, rc = py.execute(steps), c.execute(steps)
    assert (rp == rc).all()
    assert py.breakdown() == c.breakdown() and py.snapshot() == c.snapshot()
    assert py.metadata()["startup"] == c.metadata()["startup"]
    return py, rp


def counts(t):
    return {k: v["count"] for k, v in t.breakdown().items()}



ROUND = (
    (OpKind.PRIVATE_WRITE, 0, 16 * K4),      # the guest faults 16 private pages in
    (OpKind.TO_SHARED, 0, 16 * K4),
    (OpKind.SHARED_WRITE, 0, 16 * K4),
    (OpKind.TO_PRIVATE, 0, 16 * K4),
    (OpKind.PRIVATE_WRITE, 0, 16 * K4),
)


@pytest.mark.parametrize("platform, exit_key", [("zero", "exit_request_tdx"),
                                                ("destroy", "exit_request_snp"),
                                                ("preserve", "exit_request_sw")])
def test_every_conversion_pays_the_common_path_in_both_strategies(platform, exit_key):
    ops = ops_of(*ROUND)
    for strategy in ("in-place", "dual"):
        t, _ = run(strategy, ops, platform=platform)
        n = counts(t)
        assert n[exit_key] == 2 and n["exit_to_userspace"] == 2 and n["vmm_dispatch"] == 2
        others = {"exit_request_tdx", "exit_request_snp", "exit_request_sw"} - {exit_key}
        assert not others & set(n)


@pytest.mark.parametrize("platform, keys", [
    ("destroy", ("fw_snp_to_private", "fw_snp_to_shared", "guest_pvalidate_snp")),
    ("zero", ("fw_tdx_to_private", "fw_tdx_to_shared", "tdx_block", "tdx_track", "vcpu_kick")),
])
def test_platform_steps_are_charged_alike_in_both_strategies(platform, keys):
    ops = ops_of(*ROUND)
    inp, _ = run("in-place", ops, platform=platform)
    dual, _ = run("dual", ops, platform=platform)
    a, b = counts(inp), counts(dual)
    for k in keys:
        assert a.get(k, 0) == b.get(k, 0) > 0, (k, a.get(k), b.get(k))
    # to-private at the guest's fault: 16 pages at first, 16 again after the round trip
    key = "fw_snp_to_private" if platform == "destroy" else "fw_tdx_to_private"
    assert a[key] == 32
    assert a["fw_snp_to_shared" if platform == "destroy" else "fw_tdx_to_shared"] == 16


def test_tdx_zap_is_per_leaf_block_track_and_one_multicast_kick():
    ops = ops_of(*ROUND[:2])
    ns = {}
    for vcpus in (1, 8):
        t, _ = run("in-place", ops, platform="zero", vcpus=vcpus)
        n = counts(t)
        assert n["tdx_block"] == 16 and n["tdx_track"] == 16
        # one multicast kick per tracked leaf plus the range's flush, each with a part
        # per vCPU (kvm_kick_many_cpus: one IPI to all, not one kick per vCPU)
        assert n["vcpu_kick"] == 16 + 1
        assert n["vcpu_kick_per_vcpu"] == (16 + 1) * vcpus
        assert n["tlb_flush"] == 1
        ns[vcpus] = {k: v["ns"] for k, v in t.breakdown().items()}
    assert ns[8]["vcpu_kick"] == ns[1]["vcpu_kick"]
    assert ns[8]["vcpu_kick_per_vcpu"] == 8 * ns[1]["vcpu_kick_per_vcpu"]


def test_flush_cost_grows_with_vcpus():
    ops = ops_of(*ROUND)
    lat = []
    for vcpus in (1, 64):
        t, res = run("dual", ops, platform="destroy", vcpus=vcpus)
        lat.append(int(res["ns"].sum()))
    assert lat[1] > lat[0]


def test_sw_protected_has_no_firmware_step():
    ops = ops_of(*ROUND)
    t, _ = run("in-place", ops, platform="preserve")
    assert not {k for k in counts(t) if k.startswith(("fw_", "tdx_"))}


def test_first_host_touch_of_a_fresh_gmem_page_is_not_a_refault():
    ops = ops_of((OpKind.SHARED_WRITE, 0, 8 * K4),       # fresh pages: the fault maps them
                 (OpKind.TO_PRIVATE, 0, 8 * K4), (OpKind.TO_SHARED, 0, 8 * K4),
                 (OpKind.SHARED_WRITE, 0, 8 * K4))       # zapped, still allocated: refault
    t, _ = run("in-place", ops, platform="preserve", init_shared=True)
    n = counts(t)
    assert n["fault_gmem"] == 1 and n["refault_gmem"] == 8


def test_large_folios_never_enter_the_lru_batch():
    ops = ops_of((OpKind.SHARED_WRITE, 0, 2 * MiB), (OpKind.TO_PRIVATE, 0, 2 * MiB))
    t, res = run("in-place", ops, platform="preserve", page=2 * MiB, init_shared=True)
    assert (res["status"] == 0).all()
    assert "lru_drain" not in counts(t)
    # 4K folios do: the conversion right after their fault drains the batch
    t, _ = run("in-place", ops, platform="preserve", init_shared=True)
    assert counts(t)["lru_drain"] == 1


def test_thp_split_and_discard_share_one_syscall():
    from bench.costs import load_profile
    prof = load_profile()
    ops = ops_of((OpKind.TO_SHARED, 0, 2 * MiB), (OpKind.SHARED_WRITE, 0, 2 * MiB),
                 (OpKind.TO_PRIVATE, 0, K4))
    layout = Layout((Memslot(0, 8 * MiB),), shared_backing="anon", shared_page="thp",
                    platform="destroy")
    st = make_strategy("dual")
    t = SimTarget(layout, st, {"host_memory": "64M"})
    t.execute(st.compile(ops, layout))
    split = t.breakdown()["thp_split_anon"]["ns"]
    assert split == round(prof.cost("thp_split_anon") - prof.cost("discard_anon", 1))


def test_vm_attributes_cost_per_page_and_start_up_is_reported_apart():
    ops = ops_of((OpKind.TO_SHARED, 0, 64 * K4))
    dual, _ = run("dual", ops)
    inp, _ = run("in-place", ops)
    assert counts(dual)["vm_attr_xa_store"] == 64              # the conversion: per 4K page
    assert counts(inp)["attr_update"] == 1                     # in-place: one range store
    su_d, su_i = dual.metadata()["startup"], inp.metadata()["startup"]
    # QEMU marks all 8 MiB private before the guest runs: one store per 4K page
    assert su_d["breakdown"]["vm_attr_xa_store"]["count"] == 2048
    assert su_i["breakdown"] == {"attr_update": {"count": 1, "ns": su_i["ns"]}}
    assert su_d["ns"] > 100 * su_i["ns"]
    # start-up is not part of the run's breakdown or clock
    assert counts(dual)["vm_attr_xa_store"] == 64
    assert dual.clock_ns == sum(v["ns"] for v in dual.breakdown().values())


@pytest.mark.parametrize("platform, to_shared_key", [("zero", "fw_tdx_to_shared"),
                                                      ("destroy", "fw_snp_to_shared")])
def test_accepted_memory_pays_the_to_shared_platform_work_in_both_strategies(platform,
                                                                            to_shared_key):
    """Memory the guest accepted before the workload (layout.accepted): a to-shared
    conversion of it removes private pages (TDX) / makes them shared (SNP) in both
    strategies, dual also frees what its punch covers; the accept itself is start-up work,
    reported apart and in no figure of the run."""
    ops = ops_of((OpKind.TO_SHARED, 0, 16 * K4))
    for strategy in ("in-place", "dual"):
        never, _ = run(strategy, ops, platform=platform)
        acc, res = run(strategy, ops, platform=platform, accepted=True)
        assert to_shared_key not in counts(never)       # nothing was ever accepted
        assert counts(acc)[to_shared_key] == 16
        # the run's clock and steps hold the conversion only (rounding aside)
        assert abs(acc.clock_ns - sum(v["ns"] for v in acc.breakdown().values())) <= 2
        assert abs(int(res["ns"].sum()) - acc.clock_ns) <= 2
        to_private = f"fw_{'tdx' if platform == 'zero' else 'snp'}_to_private"
        assert to_private not in counts(acc) and "fault_gmem" not in counts(acc)
        su = acc.metadata()["startup"]
        assert su["accepted_bytes"] == 8 * MiB
        assert su["breakdown"][to_private]["count"] == 2048
        assert su["breakdown"]["fault_gmem"]["ns"] > 0      # one fault op over the slot
        assert su["ns"] == su["vmm_ns"] + su["accept_ns"] and su["accept_ns"] > 0
        assert never.metadata()["startup"]["accepted_bytes"] == 0
        assert acc.snapshot()["footprint_bytes"] >= 8 * MiB - 16 * K4
    # dual's punch frees the 16 accepted pages (mapped in stage 2) and pays for it
    dual, _ = run("dual", ops, platform=platform, accepted=True)
    assert dual.snapshot()["footprint_bytes"] == 8 * MiB - 16 * K4


def test_accepted_guest_memory_is_mapped_in_stage2_before_the_run():
    acc, _ = run("in-place", ops_of((OpKind.PRIVATE_READ, 0, K4, 0)), accepted=True)
    assert acc.snapshot()["stage2_bytes"]["4k"] == 8 * MiB
    assert set(counts(acc)) == {"touch_page"}     # the read finds its page mapped and accepted


M2 = 2 * MiB


@pytest.mark.parametrize("strategy", ["in-place", "dual"])
def test_tdx_maps_private_memory_at_4k_upstream(strategy):
    """Upstream TDX maps private memory at 4K only (tdx_sept_set_private_spte): a guest write
    of a whole 2M folio gives 512 4K leaves; a 4K to-shared conversion removes one leaf and
    demotes nothing."""
    ops = ops_of((OpKind.PRIVATE_WRITE, 0, M2), (OpKind.TO_SHARED, 0, K4))
    t, _ = run(strategy, ops, page=M2)
    n = counts(t)
    assert n["fw_tdx_to_private"] == 512 and "fw_tdx_to_private_2m" not in n
    assert "tdx_demote" not in n and n["tdx_block"] == 1 and n["fw_tdx_to_shared"] == 1
    assert t.snapshot()["stage2_bytes"] == {"4k": M2 - K4, "2m": 0, "1g": 0}


@pytest.mark.parametrize("strategy", ["in-place", "dual"])
def test_tdx_huge_page_series_maps_2m_only_where_the_guest_accepts_2m(strategy):
    """tdx_private_2m (the TDX huge-page series): a whole-folio private write is one 2M
    AUG + accept and a 2M leaf with all 512 pages accepted; a 4K to-shared conversion
    demotes it and removes one 4K leaf; a later one removes another accepted 4K leaf.  A
    partial write accepts at 4K and maps 4K."""
    ops = ops_of((OpKind.PRIVATE_WRITE, 0, M2), (OpKind.TO_SHARED, 0, K4),
                 (OpKind.TO_SHARED, K4, K4), (OpKind.PRIVATE_WRITE, M2, K4))
    t, _ = run(strategy, ops, page=M2, tdx_private_2m=True)
    n = counts(t)
    assert n["fw_tdx_to_private_2m"] == 1 and n["fw_tdx_to_private"] == 1   # 2nd folio: 4K
    assert n["tdx_demote"] == 1 and n["fw_tdx_to_shared"] == 2 and n["tdx_block"] == 3
    assert t.snapshot()["stage2_bytes"] == {"4k": M2 - 2 * K4 + K4, "2m": 0, "1g": 0}
    t, _ = run(strategy, ops_of((OpKind.PRIVATE_WRITE, 0, M2)), page=M2, tdx_private_2m=True)
    assert t.snapshot()["stage2_bytes"] == {"4k": 0, "2m": M2, "1g": 0}


def test_folio_split_and_merge_cost_grows_with_the_folios_pages():
    """HugeTLB guest_memfd: a split re-inserts every 4K folio into the page cache and a
    merge removes every one (O(pages)), charged over the folio's 4K pages."""
    from bench.costs import load_profile
    prof = load_profile()
    ops = ops_of((OpKind.PRIVATE_WRITE, 0, M2), (OpKind.TO_SHARED, 0, K4),
                 (OpKind.TO_PRIVATE, 0, K4))
    t, _ = run("in-place", ops, page=M2)
    b = t.breakdown()
    assert b["folio_split"]["count"] == 1 and b["folio_merge"]["count"] == 1
    assert b["folio_split"]["ns"] == round(prof.cost("folio_split", 512))
    assert b["folio_merge"]["ns"] == round(prof.cost("folio_merge", 512))
    # a 1G folio (262,144 pages) costs far more than a 2M one
    assert prof.cost("folio_split", 1 << 18) > 100 * prof.cost("folio_split", 512)


def test_tdx_map_gpa_chunks_of_one_request_pay_one_td_exit():
    """KVM hands a TDX MapGPA to userspace in 2 MiB chunks and issues the next one without
    re-entering the TD (tdx_complete_vmcall_map_gpa): consecutive contiguous chunks after a
    full 2 MiB one are one guest request - one TD exit, an exit to userspace per chunk."""
    chunks = [(OpKind.TO_SHARED, i * M2, M2) for i in range(3)]
    for strategy in ("in-place", "dual"):
        n = counts(run(strategy, ops_of(*chunks))[0])
        assert n["exit_request_tdx"] == 1 and n["exit_to_userspace"] == 3
        # a guest touch in between: a new request
        n = counts(run(strategy, ops_of(chunks[0], (OpKind.PRIVATE_WRITE, 3 * M2, K4),
                                        *chunks[1:]))[0])
        assert n["exit_request_tdx"] == 2
        # a short chunk ends the request; SNP requests are not chunked by KVM
        n = counts(run(strategy, ops_of((OpKind.TO_SHARED, 0, M2 - K4),
                                        (OpKind.TO_SHARED, M2 - K4, M2)))[0])
        assert n["exit_request_tdx"] == 2
        n = counts(run(strategy, ops_of(*chunks), platform="destroy")[0])
        assert n["exit_request_snp"] == 3
