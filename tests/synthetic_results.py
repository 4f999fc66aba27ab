"""Synthetic results dirs in the schema of bench/results.py, for the report/compare/qualify
tests (the runner is not needed to test what reads its output)."""
from pathlib import Path

import numpy as np

from bench.results import SCHEMA, atomic_write_json, atomic_write_npz

HOST = {"hostname": "testhost", "kernel": "6.18.0-test", "cpu": "Test CPU @ 2.0GHz",
        "page_size": 4096,
        "thp": {"enabled": "always [madvise] never", "shmem_enabled": "never [advise]"},
        "hugetlb": {"nr_hugepages_2M": 0, "nr_hugepages_1G": 0},
        "kvm": {"caps": {"GUEST_MEMFD": 1, "MEMORY_ATTRIBUTES": 8, "VM_TYPES": 3}}}

BASE_LATENCY_NS = {"in-place": 4000.0, "dual": 30000.0}
# induced time = this x conversion time, per strategy (what conversions cost later)
induced_factor = {"in-place": 3.0, "dual": 1.0}


def make_results_dir(path, *, workloads=("bounce", "virtio"), strategies=("in-place", "dual"),
                     reps=5, n=400, backend="host", seed=1, rep_sigma=0.02, sample_sigma=0.3,
                     latency_factor=None, footprint_factor=None, copied_factor=None,
                     host=None, scale=1.0, quick=False, cost_profile="default",
                     deterministic=False, directions=False,
                     direction_factor=None) -> Path:
    """Write results.json + samples.npz under path and return path.

    latency_factor / footprint_factor / copied_factor: {key: multiplier} applied to the
    run with that key ("<workload>/<strategy>"), to plant a known regression.
    rep_sigma: per-repetition (process) noise; sample_sigma: per-conversion noise.
    deterministic: every repetition produces the same samples (what the simulator does).
    directions: to_private conversions are 1.5x slower than to_shared ones (times
    direction_factor[key]), a split the per-direction metrics must see.
    """
    direction_factor = direction_factor or {}
    path = Path(path)
    rng = np.random.default_rng(seed)
    latency_factor = latency_factor or {}
    footprint_factor = footprint_factor or {}
    copied_factor = copied_factor or {}
    guest_bytes = 256 << 20
    runs, arrays = [], {}
    for wi, w in enumerate(workloads):
        for s in strategies:
            key = f"{w}/{s}"
            per_rep, all_lat, all_dir = [], [], []
            base = BASE_LATENCY_NS[s] * (1 + 0.5 * wi) * latency_factor.get(key, 1.0)
            fp_peak = guest_bytes * (1.0 if s == "in-place" else 1.6) * footprint_factor.get(key, 1.0)
            copied = (0 if s == "in-place" else 64 << 20) * copied_factor.get(key, 1.0)
            det = rng.lognormal(0, sample_sigma, n) if deterministic else None
            for r in range(reps):
                if deterministic:
                    lat = (base * det).astype(np.int64)
                else:
                    shift = np.exp(rng.normal(0, rep_sigma))
                    lat = (base * shift * rng.lognormal(0, sample_sigma, n)).astype(np.int64)
                arrays[f"{key}/rep{r}"] = lat
                # conversions alternate to-shared / to-private (the OpKind values 1 / 2)
                direction = (1 + np.arange(n) % 2).astype(np.uint8)
                if directions:      # to_private costs 1.5x (x direction_factor): a known split
                    lat[direction == 2] = (lat[direction == 2] * 1.5
                                           * direction_factor.get(key, 1.0)).astype(np.int64)
                arrays[f"{key}/rep{r}/direction"] = direction
                all_lat.append(lat)
                all_dir.append(direction)
                fp = int(fp_peak * (1 if deterministic else 1 + rng.normal(0, 0.002)))
                per_rep.append({
                    "latency_ns": _lat_stats(lat),
                    "latency_per_4k_ns": {"p50": float(np.median(lat)) / 16,
                                          "mean": float(lat.mean()) / 16},
                    "conversions": n, "failed_conversions": 0,
                    "bytes_copied": int(copied),
                    "copy_time_ns": int(copied / 4096 * 300),
                    "footprint_bytes": {"peak": fp, "mean": int(fp * 0.9)},
                    "directions": _directions([lat], [direction], induced_factor[s]),
                    "time_ns": _times([lat], [direction], induced_factor[s]),
                    "wall_s": float(lat.sum() / 1e9)})
            pooled = np.concatenate(all_lat)
            steps = np.arange(50)
            cov_end = 0.9 if s == "in-place" else 0.4
            metrics = {
                "conversions": n * reps, "failed_conversions": 0,
                "bytes_converted": n * reps * 65536, "bytes_copied": int(copied) * reps,
                "copy_time_ns": int(copied / 4096 * 300) * reps,
                "latency_ns": _lat_stats(pooled),
                "latency_per_4k_ns": {"p50": float(np.median(pooled)) / 16,
                                      "mean": float(pooled.mean()) / 16},
                "touch_ns": {"total": 123456, "p50": 800},
                "footprint_bytes": {"peak": int(fp_peak), "mean": int(fp_peak * 0.9)},
                "footprint_ratio": {"peak": fp_peak / guest_bytes,
                                    "mean": 0.9 * fp_peak / guest_bytes},
                "hugepage_coverage": {"start": 1.0, "end": cov_end, "min": cov_end},
                "huge_splits": 0 if s == "in-place" else 40, "huge_merges": 0,
                "unusable_index": {"order9": 0.1, "order18": 0.9},
                "checks": {"content_pages_checked": 1000, "content_mismatch_pages": 0,
                           "sigbus_expected": 10, "sigbus_seen": 10, "unexpected_sigbus": 0},
                "errors": {},
                "failed_accesses": 0,
                "directions": _directions(all_lat, all_dir, induced_factor[s]),
                "time_ns": _times(all_lat, all_dir, induced_factor[s]),
                "wall_s": float(pooled.sum() / 1e9),
            }
            runs.append({
                "key": key, "workload": w, "workload_file": f"workloads/{w}.toml",
                "description": f"synthetic {w}", "strategy": s, "strategy_options": {},
                "backend": backend,
                "fidelity": "simulated" if backend == "sim" else "native",
                "fidelity_steps": {"GMEM_SET_ATTRS": "native" if s == "in-place" else "unavailable",
                                   "VM_SET_ATTRS": "native"},
                "layout": {"guest_bytes": guest_bytes}, "params": {}, "seed": 7,
                "scale": scale, "quick": quick,
                "cost_profile": ({"name": cost_profile, "source": "test", "path": "x.toml",
                                  "costs": {}} if backend == "sim" else None),
                "repetitions": reps, "metrics": metrics, "per_rep": per_rep,
                "series": {"op_index": steps.tolist(), "t_ns": (steps * 1000).tolist(),
                           "footprint_bytes": (guest_bytes * (1 + 0.6 * steps / 49
                                               * (s == "dual"))).astype(int).tolist(),
                           "hugepage_coverage": np.linspace(1.0, cov_end, 50).tolist(),
                           "huge_splits": (steps * (s == "dual")).tolist()},
                "breakdown": {"ioctl": {"count": n, "ns": int(pooled.sum() // 2)}},
                "metadata": {"harness_overhead_ns": 35, "note": "line one\nline two"},
            })
    results = {"schema": SCHEMA, "run_id": path.name, "created": "2026-11-26T17:00:00Z",
               "package_version": "0.1.0", "command": ["gmembench", "run"],
               "host": dict(host or HOST), "runs": runs,
               "synthetic": True}       # hand-written, not produced by gmembench
    atomic_write_json(path / "results.json", results)
    atomic_write_npz(path / "samples.npz", arrays)
    return path


def _lat_stats(lat: np.ndarray) -> dict:
    return {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
            "p99": float(np.percentile(lat, 99)), "max": int(lat.max()),
            "mean": float(lat.mean()), "min": int(lat.min()), "stdev": float(lat.std())}


def _directions(lats, dirs, factor) -> dict:
    out = {}
    for name, kind in (("to_shared", 1), ("to_private", 2)):
        sel = np.concatenate([a[d == kind] for a, d in zip(lats, dirs)])
        conv = int(sel.sum())
        ind = int(conv * factor)
        out[name] = {"conversions": len(sel), "failed_conversions": 0,
                     "latency_ns": _lat_stats(sel), "conversion_time_ns": conv,
                     "induced_time_ns": ind, "total_time_ns": conv + ind}
    return out


def _times(lats, dirs, factor) -> dict:
    conv = int(sum(int(a.sum()) for a in lats))
    ind = int(sum(int(a.sum() * factor) for a in lats))
    return {"conversion": conv, "induced": ind, "total": conv + ind, "baseline_access": 0}
