"""The headline of a run: per workload, which strategy wins on total time and on
conversion time, by how much, per direction, and which primitives explain the difference.

Total time = conversion time + induced time (bench/accounting.py: the accesses, faults,
zeroing and firmware work that conversions cause later).  Ratios are dual / in-place of
the medians of per-repetition totals, with the 25th-75th percentile of the ratios of every
pair of repetitions as the spread (repetitions are not paired across strategies).  The
console table, summary.txt, report.md and summary.png all read from here.
"""
import math

import numpy as np

DIRS = ("to_shared", "to_private")
DIR_LABEL = {"to_shared": "to-shared", "to_private": "to-private", "all": "both"}


def ratio_with_spread(num, den) -> tuple[float, float, float]:
    """Ratio of medians, and the 25th/75th percentiles of the ratios of every pair."""
    num = np.asarray([x for x in num if x is not None], dtype=float)
    den = np.asarray([x for x in den if x is not None], dtype=float)
    num, den = num[np.isfinite(num)], den[np.isfinite(den) & (den > 0)]
    if not len(num) or not len(den) or np.median(den) <= 0:
        return float("nan"), float("nan"), float("nan")
    ratios = (num[:, None] / den[None, :]).ravel()
    return (float(np.median(num) / np.median(den)), float(np.percentile(ratios, 25)),
            float(np.percentile(ratios, 75)))


def per_rep_time(run: dict, direction: str, part: str) -> list:
    """Per-repetition time (ns) of one direction ("all" = both) and part ("conversion",
    "induced", "total")."""
    out = []
    for r in run.get("per_rep") or []:
        if direction == "all":
            t = r.get("time_ns") or {}
            out.append(t.get(part))
        else:
            d = (r.get("directions") or {}).get(direction) or {}
            out.append(d.get(f"{part}_time_ns"))
    return out


def winner_text(ratio: float) -> str:
    """'in-place 3.2x faster' from a dual / in-place ratio of times."""
    if ratio is None or not math.isfinite(ratio):
        return "no comparison"
    if abs(ratio - 1) < 0.005:
        return "tie"
    if ratio > 1:
        return f"in-place {fmt_x(ratio)} faster"
    return f"dual {fmt_x(1 / ratio)} faster"


def fmt_x(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.2f}x" if x < 10 else f"{x:.3g}x"


def top_primitives(a: dict, b: dict, n: int = 3) -> list[tuple[str, float]]:
    """Primitives whose time differs most between two runs: [(name, dual - in-place ns per
    repetition)], largest |difference| first (breakdowns cover all repetitions)."""
    ra, rb = max(1, int(a.get("repetitions") or 1)), max(1, int(b.get("repetitions") or 1))
    ba, bb = a.get("breakdown") or {}, b.get("breakdown") or {}
    diffs = [(k, (bb.get(k, {}).get("ns", 0) / rb) - (ba.get(k, {}).get("ns", 0) / ra))
             for k in dict.fromkeys([*ba, *bb])]     # not a set: ties keep one order
    diffs = [d for d in diffs if d[1] != 0]
    diffs.sort(key=lambda kv: -abs(kv[1]))
    return diffs[:n]


def errors_text(run: dict) -> str:
    m = run.get("metrics") or {}
    errs = m.get("errors") or {}
    return ", ".join(f"{k} x{v}" for k, v in sorted(errs.items(), key=lambda kv: -kv[1]))


def emulated_steps(run: dict) -> list[str]:
    """Steps of a run that did not run as the real kernel interface (host backend)."""
    if run.get("backend") == "sim":
        return []
    return sorted(k for k, v in (run.get("fidelity_steps") or {}).items()
                  if v == "emulated" and ran(run, k))


def _step_keys() -> set:
    from bench.ops import Step
    return ({s.name for s in Step} | {f"{s.name}/guest" for s in Step}
            | {"host-access-fault"})


def ran(run: dict, key: str) -> bool:
    """Whether a fidelity key concerns this run: a step it executed (runs record
    steps_used), or a fact that is not a step (e.g. gmem_huge_folios)."""
    used = run.get("steps_used")
    return used is None or key in used or key not in _step_keys()


def workload_headlines(results: dict) -> list[dict]:
    """One dict per workload: {"workload", "runs": {strategy: run}, "ratios": {(direction,
    part): (ratio, lo, hi)}, "total": ..., "conversion": ..., "top": [(primitive, ns)],
    "failures": {strategy: (failed conversions, failed accesses, errors text)}}."""
    by_w: dict = {}
    for r in results.get("runs", []):
        by_w.setdefault(r["workload"], {})[r["strategy"]] = r
    out = []
    for w, runs in by_w.items():
        h = {"workload": w, "runs": runs, "ratios": {}, "top": [], "failures": {}}
        for s, r in runs.items():
            m = r.get("metrics") or {}
            h["failures"][s] = (m.get("failed_conversions", 0) or 0,
                                m.get("failed_accesses", 0) or 0, errors_text(r))
        # a comparison of runs in which steps failed compares work not done
        h["caveat"] = (" - STEPS FAILED, not a like-for-like comparison"
                       if any(fc or fa for fc, fa, _ in h["failures"].values()) else "")
        if "in-place" in runs and "dual" in runs:
            ip, du = runs["in-place"], runs["dual"]
            for d in ("all",) + DIRS:
                for part in ("conversion", "induced", "total"):
                    h["ratios"][(d, part)] = ratio_with_spread(per_rep_time(du, d, part),
                                                               per_rep_time(ip, d, part))
            h["top"] = top_primitives(ip, du)
        out.append(h)
    return out


# What a primitive's "count" counts.  The simulator's ledger counts one per call
# (Ledger.op: one operation, whatever its size) except for the per-event charges
# (Ledger.each in bench/sim/model.py), which count their events; the host backend's
# breakdown is by step, one per executed step.
PRIMITIVE_UNITS = {
    "stage2_zap_4k": "4K pages",
    "vm_attr_xa_store": "4K pages",
    "guest_pvalidate_snp": "4K pages",
    "hyp_share_sw": "4K pages",
    "fw_snp_to_private": "4K pages",
    "fw_snp_to_shared": "4K pages",
    "fw_tdx_to_private": "4K pages",
    "fw_tdx_to_shared": "4K pages",
    "tdx_block": "leaves",
    "tdx_track": "leaves",
    "vcpu_kick": "multicast kicks",
    "vcpu_kick_per_vcpu": "vCPUs kicked",
    "fw_tdx_to_private_2m": "2M accepts",
    "folio_split": "folios",
    "folio_merge": "folios",
    "tdx_demote": "huge mappings",
    "refault_gmem": "4K pages",
    "stage2_zap_huge": "huge mappings",
    "refcount_scan_folio": "folios",
}


def primitive_unit(name: str, backend: str = "sim") -> str:
    if backend == "host":
        return "steps"
    return PRIMITIVE_UNITS.get(name, "operations")
