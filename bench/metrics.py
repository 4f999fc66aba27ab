"""Metrics, computed the same way for every backend from what the backend reported:
the per-step results of execute() and the snapshots of snapshot().  Nothing here knows
whether the numbers came from the model or from the kernel."""
import errno as errno_mod

import numpy as np

from bench import accounting
from bench.fragmentation import fragmentation_summary, indices
from bench.ops import (Obj, NO_CHECK, OpKind, PAGE_SIZE, SIGBUS_STATUS, SKIPPED, STEP_CONVERSION,
                       Step)


def _errname(code: int) -> str:
    if code == SIGBUS_STATUS:
        return "SIGBUS"
    if code == SKIPPED:
        return "SKIPPED"
    return errno_mod.errorcode.get(code, str(code))


# the two conversion directions, named as results.json names them; the value is the OpKind
# stored in samples.npz's "<key>/rep<N>/direction" arrays
DIRECTIONS = {"to_shared": OpKind.TO_SHARED, "to_private": OpKind.TO_PRIVATE}


def latency_stats(lat: np.ndarray) -> dict:
    if len(lat) == 0:
        return {k: None for k in ("p50", "p90", "p99", "max", "mean", "min", "stdev")}
    q = np.percentile(lat, [50, 90, 99])
    return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": int(lat.max()),
            "mean": float(lat.mean()), "min": int(lat.min()), "stdev": float(lat.std())}


class RepetitionRecord:
    """What one repetition produced: per-conversion latencies and the counters."""

    def __init__(self, ops: np.ndarray, steps: np.ndarray, res: np.ndarray,
                 attribution: np.ndarray | None = None):
        n_ops = len(ops)
        conv_step = (steps["flags"] & STEP_CONVERSION) != 0
        op_idx = steps["op"].astype(np.int64)
        ns = res["ns"].astype(np.int64)
        failed_step = (res["status"] != 0) & (res["status"] != SKIPPED)
        is_conv_op = np.isin(ops["kind"], (OpKind.TO_SHARED, OpKind.TO_PRIVATE))
        lat = np.bincount(op_idx[conv_step], weights=ns[conv_step], minlength=n_ops)
        failed = np.bincount(op_idx[conv_step & failed_step], minlength=n_ops) > 0
        ok_conv = is_conv_op & ~failed
        self.latency_ns = lat[ok_conv].astype(np.int64)
        # aligned with latency_ns: which direction each successful conversion went
        self.direction = ops["kind"][ok_conv].astype(np.uint8)
        self.sizes = ops["size"][ok_conv].astype(np.int64)
        self.conversions = int(is_conv_op.sum())
        self.failed_conversions = int((is_conv_op & failed).sum())
        kinds = ops["kind"]
        self.direction_counts = {d: (int((kinds == k).sum()), int(((kinds == k) & failed).sum()))
                                 for d, k in DIRECTIONS.items()}
        self.bytes_converted = int(self.sizes.sum())
        self.direction_bytes = {d: int(self.sizes[self.direction == k].sum())
                                for d, k in DIRECTIONS.items()}
        # time accounting (bench/accounting.py): conversion vs induced, per direction
        if attribution is None:
            attribution = accounting.attribute_touches(ops)
        per_op = accounting.op_times(steps, res, n_ops)
        self.times = accounting.direction_times(ops, attribution, per_op)
        self.step_breakdown = accounting.step_breakdown(ops, steps, res, attribution)
        copy = steps["code"] == Step.COPY
        self.bytes_copied = int(res["aux"][copy].sum())
        self.copy_time_ns = int(ns[copy].sum())
        self.conversion_time_ns = int(ns[conv_step].sum())
        touch = ~conv_step & (steps["code"] != Step.NOP)
        touch_op_ns = np.bincount(op_idx[touch], weights=ns[touch], minlength=n_ops)
        touch_ops = np.isin(ops["kind"], (OpKind.SHARED_WRITE, OpKind.SHARED_READ,
                                          OpKind.PRIVATE_WRITE, OpKind.PRIVATE_READ,
                                          OpKind.GUEST_SHARED_WRITE, OpKind.GUEST_SHARED_READ))
        self.touch_ns = touch_op_ns[touch_ops].astype(np.int64)
        # semantic checks
        reads = (steps["code"] == Step.READ) & (steps["arg"] != NO_CHECK) & (res["status"] == 0)
        self.content_pages_checked = int((steps["size"][reads] // PAGE_SIZE).sum())
        self.content_mismatch_pages = int(res["aux"][reads].sum())
        probe_op = ops["kind"][op_idx] == OpKind.SHARED_PROBE
        sigbus = res["status"] == SIGBUS_STATUS
        # a host touch of a private GPA faults only where the host maps the guest_memfd
        # itself (in-place); dual's VMM reaches the shared backing, which never faults
        self.sigbus_expected = int(len(np.unique(op_idx[probe_op & (steps["obj"] == Obj.GMEM)])))
        self.sigbus_seen = int((probe_op & sigbus).sum())
        self.unexpected_sigbus = int((~probe_op & sigbus).sum())
        # accesses (not conversions) that failed: allocation errors at a fault (ENOMEM...)
        self.failed_accesses = int((failed_step & ~conv_step & ~(probe_op & sigbus)).sum())
        errs = res["status"][failed_step & ~(probe_op & sigbus)]
        codes, counts = np.unique(errs, return_counts=True)
        self.errors = {_errname(int(c)): int(k) for c, k in zip(codes, counts)}

    def summary(self) -> dict:
        per4k = self.latency_ns / np.maximum(self.sizes // PAGE_SIZE, 1)
        return {
            "conversions": self.conversions,
            "failed_conversions": self.failed_conversions,
            "latency_ns": latency_stats(self.latency_ns),
            "latency_per_4k_ns": {"p50": float(np.median(per4k)) if len(per4k) else None,
                                  "mean": float(per4k.mean()) if len(per4k) else None},
            "bytes_copied": self.bytes_copied,
            "copy_time_ns": self.copy_time_ns,
            "directions": direction_stats([self]),
            "time_ns": time_totals([self]),
            "failed_accesses": self.failed_accesses,
            "errors": dict(self.errors),
        }


def direction_stats(reps: list["RepetitionRecord"]) -> dict:
    """Per conversion direction over the given repetitions: how many conversions were asked
    for, how many failed, and the latency of the successful ones (ns, each conversion's
    summed step time).  Keys: "to_shared", "to_private"."""
    out = {}
    for d, kind in DIRECTIONS.items():
        lat = [r.latency_ns[r.direction == kind] for r in reps]
        out[d] = {"conversions": sum(r.direction_counts[d][0] for r in reps),
                  "failed_conversions": sum(r.direction_counts[d][1] for r in reps),
                  "latency_ns": latency_stats(np.concatenate(lat) if lat
                                              else np.zeros(0, np.int64))}
        # time accounting (bench/accounting.py), summed over the repetitions
        conv = sum(r.times[d]["conversion_time_ns"] for r in reps)
        ind = sum(r.times[d]["induced_time_ns"] for r in reps)
        nbytes = sum(r.direction_bytes[d] for r in reps)
        n = out[d]["conversions"]
        out[d].update({
            "conversion_time_ns": conv, "induced_time_ns": ind, "total_time_ns": conv + ind,
            "induced_ops": sum(r.times[d]["induced_ops"] for r in reps),
            "bytes_converted": nbytes,
            "per_conversion_ns": {k: accounting.per_unit(v, n, nbytes)["per_conversion_ns"]
                                  for k, v in (("conversion", conv), ("induced", ind),
                                               ("total", conv + ind))},
            "per_gib_ns": {k: accounting.per_unit(v, n, nbytes)["per_gib_ns"]
                           for k, v in (("conversion", conv), ("induced", ind),
                                        ("total", conv + ind))},
        })
    return out


def time_totals(reps: list["RepetitionRecord"]) -> dict:
    """Both directions together (ns, summed over the repetitions): "conversion",
    "induced", "total" = conversion + induced, and "baseline_access" (touches of memory
    in its initial state, not caused by any conversion; not in "total")."""
    out = {"conversion": 0, "induced": 0}
    for r in reps:
        for d in DIRECTIONS:
            out["conversion"] += r.times[d]["conversion_time_ns"]
            out["induced"] += r.times[d]["induced_time_ns"]
    out["total"] = out["conversion"] + out["induced"]
    out["baseline_access"] = sum(r.times["baseline_access_time_ns"] for r in reps)
    return out


def series_metrics(series: dict, guest_size: int) -> dict:
    fp = np.asarray(series["footprint_bytes"], dtype=np.float64)
    cov = np.asarray(series["hugepage_coverage"], dtype=np.float64)
    return {
        "footprint_bytes": {"peak": int(fp.max()), "mean": float(fp.mean())},
        "footprint_ratio": {"peak": float(fp.max() / guest_size), "mean": float(fp.mean() / guest_size)},
        "hugepage_coverage": {"start": float(cov[0]), "end": float(cov[-1]), "min": float(cov.min())},
    }


def aggregate(reps: list[RepetitionRecord], rep_series: list[dict], last_snapshots: list[dict],
              guest_size: int) -> dict:
    """Metrics over all repetitions (the names results.json promises)."""
    lat = np.concatenate([r.latency_ns for r in reps]) if reps else np.zeros(0, np.int64)
    sizes = np.concatenate([r.sizes for r in reps]) if reps else np.zeros(0, np.int64)
    per4k = lat / np.maximum(sizes // PAGE_SIZE, 1)
    touch = np.concatenate([r.touch_ns for r in reps]) if reps else np.zeros(0, np.int64)
    fp_peak = max(max(s["footprint_bytes"]) for s in rep_series)
    fp_mean = float(np.mean([np.mean(s["footprint_bytes"]) for s in rep_series]))
    cov = [series_metrics(s, guest_size)["hugepage_coverage"] for s in rep_series]
    errors: dict[str, int] = {}
    for r in reps:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    last = last_snapshots[-1]
    return {
        "conversions": sum(r.conversions for r in reps),
        "failed_conversions": sum(r.failed_conversions for r in reps),
        "latency_ns": latency_stats(lat),
        "latency_per_4k_ns": {"p50": float(np.median(per4k)) if len(per4k) else None,
                              "mean": float(per4k.mean()) if len(per4k) else None},
        "bytes_converted": sum(r.bytes_converted for r in reps),
        "bytes_copied": sum(r.bytes_copied for r in reps),
        "copy_time_ns": sum(r.copy_time_ns for r in reps),
        "conversion_time_ns": sum(r.conversion_time_ns for r in reps),
        "touch_ns": {"total": int(touch.sum()), "p50": float(np.median(touch)) if len(touch) else None},
        "footprint_bytes": {"peak": int(fp_peak), "mean": fp_mean},
        "footprint_ratio": {"peak": fp_peak / guest_size, "mean": fp_mean / guest_size},
        "hugepage_coverage": {"start": cov[0]["start"], "end": float(np.mean([c["end"] for c in cov])),
                              "min": float(min(c["min"] for c in cov))},
        "huge_splits": int(np.mean([s["huge_splits"][-1] - s["huge_splits"][0] for s in rep_series])),
        "huge_merges": int(np.mean([s["huge_merges"][-1] - s["huge_merges"][0] for s in rep_series])),
        # at the end of the run, folded to the kernel's orders (bench/fragmentation.py)
        "unusable_index": {k: v for k, v in indices(last["nr_free"]).items() if k in ("order9", "order10")},
        "huge_pages": huge_page_measures(rep_series, guest_size),
        "checks": {
            "content_pages_checked": sum(r.content_pages_checked for r in reps),
            "content_mismatch_pages": sum(r.content_mismatch_pages for r in reps),
            "sigbus_expected": sum(r.sigbus_expected for r in reps),
            "sigbus_seen": sum(r.sigbus_seen for r in reps),
            "unexpected_sigbus": sum(r.unexpected_sigbus for r in reps),
        },
        "errors": errors,
        "failed_accesses": sum(r.failed_accesses for r in reps),
        "directions": direction_stats(reps),
        "time_ns": time_totals(reps),
    }


# --- huge pages: three measures, each named for what it counts -----------------------------

# snapshot field -> what it is, for "not measurable" notes
HUGE_MEASURES = {
    "stage2_huge_share": "guest memory mapped by huge (2M/1G) stage-2 leaves / guest memory, "
                         "as KVM's pages_2m/pages_1g count it",
    "host_pmd_mapped_share": "shared memory the host maps with PMDs / guest memory",
    "intact_huge_folio_share": "physically intact huge folios / huge folios the guest memory "
                               "could hold at its folio size",
}
HUGE_COUNTERS = ("mapping_demotions", "folio_splits", "folio_merges")


def _share_series(s: dict, measure: str, guest_size: int) -> list | None:
    """One huge-page measure per snapshot of a series, or None when the backend cannot
    read it (missing field or None values)."""
    if measure == "stage2_huge_share":
        v = s.get("stage2_bytes")
        if not v or any(x is None for x in v):
            return None
        return [(d.get("2m", 0) + d.get("1g", 0)) / guest_size for d in v]
    if measure == "host_pmd_mapped_share":
        v = s.get("host_pmd_mapped_bytes")
        if not v or any(x is None for x in v):
            return None
        return [x / guest_size for x in v]
    v, poss = s.get("intact_huge_folios"), s.get("huge_folios_possible")
    if not v or not poss or any(x is None for x in v) or any(not p for p in poss):
        return None
    return [x / p for x, p in zip(v, poss)]


def huge_page_measures(rep_series: list[dict], guest_size: int) -> dict:
    """{"stage2_huge_share"|"host_pmd_mapped_share"|"intact_huge_folio_share": {"start",
    "end" (mean over repetitions), "min"} or None, "mapping_demotions"|"folio_splits"|
    "folio_merges": mean per repetition or None, "not_measurable": {measure: why}}.
    A measure the backend cannot read is None and named in not_measurable - never 0."""
    out: dict = {"not_measurable": {}}
    poss = [s.get("huge_folios_possible") for s in rep_series]
    no_huge = bool(poss) and all(p and not any(p) for p in poss)
    for m in HUGE_MEASURES:
        if m == "intact_huge_folio_share" and no_huge:
            out[m] = None
            out["not_measurable"][m] = ("not applicable: no memory object of this layout "
                                        "has a huge folio size")
            continue
        per = [_share_series(s, m, guest_size) for s in rep_series]
        if not per or any(p is None for p in per):
            out[m] = None
            why = next((s.get("not_measurable", {}).get(m) for s in rep_series
                        if s.get("not_measurable", {}).get(m)), None)
            out["not_measurable"][m] = why or "the backend does not report it"
            continue
        out[m] = {"start": float(per[0][0]), "end": float(np.mean([p[-1] for p in per])),
                  "min": float(min(min(p) for p in per))}
    for c in HUGE_COUNTERS:
        vals = [s.get(c) for s in rep_series]
        if not vals or any(not v or v[-1] is None or v[0] is None for v in vals):
            out[c] = None
            out["not_measurable"][c] = next(
                (s.get("not_measurable", {}).get(c) for s in rep_series
                 if s.get("not_measurable", {}).get(c)), "the backend does not report it")
            continue
        out[c] = float(np.mean([v[-1] - v[0] for v in vals]))
    return out
