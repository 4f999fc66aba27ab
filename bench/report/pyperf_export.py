"""Write a results dir's samples as pyperf JSON, so `python -m pyperf stats|hist|compare_to`
work on gmembench results.

One suite file per strategy (pyperf/<strategy>.json), whose benchmarks are named without
the strategy, so two strategies' files compare by name:
  <workload>/latency, latency_to_shared, latency_to_private   seconds per conversion
  <workload>/total_time, conversion_time, induced_time        seconds per repetition
  <workload>/latency_per_4k   seconds per 4 KiB converted (p50 per repetition)
  <workload>/footprint_peak   bytes (one value per repetition)
Each repetition is one pyperf run (pyperf's "process"): its values are that repetition's
samples, subsampled to at most MAX_VALUES with a fixed seed when there are more; the
metadata says so ("subsampled": yes/no, "subsample_note").

pyperf collects nothing about THP, hugetlb pools or KVM capabilities; the host facts of the
results file (and the backend's metadata) are flattened into each run's metadata, next to
backend, fidelity, workload, strategy, scale and cost profile.  The runs carry the metadata of
the machine that produced the results, not of the machine that exports them
(collect_metadata=False), so exporting later or elsewhere does not lie about the host.
"""
import io
import re
import zlib
from pathlib import Path

import numpy as np

from bench.results import atomic_write_text, load_samples

MAX_VALUES = 1000
_MAX_META_LEN = 200
# pyperf refuses values <= 0; a 0 ns sample means "below the clock's resolution" (1 ns)
_MIN_SECONDS = 1e-9


def _meta_value(v):
    """A pyperf-valid metadata value (non-empty str/int/float, no newline), or None."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        if not v or not all(isinstance(x, (str, int, float, bool)) for x in v):
            return None
        v = ",".join(str(x) for x in v)
    if isinstance(v, str):
        v = " ".join(v.split())     # newlines and runs of blanks -> one space
        if not v:
            return None
        return v[:_MAX_META_LEN]
    return None


def _flatten(prefix: str, obj, out: dict) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            name = re.sub(r"[^A-Za-z0-9_]+", "_", str(k)).strip("_")
            _flatten(f"{prefix}_{name}" if prefix else name, v, out)
        return
    v = _meta_value(obj)
    if v is not None and prefix:
        out[prefix] = v


def run_metadata(results: dict, run: dict) -> dict:
    """Metadata common to every pyperf run of one gmembench run."""
    host = results.get("host") or {}
    meta: dict = {}
    # host facts: thp_*, hugetlb_*, kvm_* ... whatever the probe recorded
    _flatten("", {k: v for k, v in host.items() if k not in ("hostname", "kernel", "cpu")}, meta)
    _flatten("backend_meta", run.get("metadata") or {}, meta)
    named = {
        # pyperf's own names, so its `metadata` and `compare_to` checks understand them
        "hostname": host.get("hostname"),
        "platform": host.get("kernel"),
        "cpu_model_name": host.get("cpu"),
        "date": results.get("created"),
        "gmembench_version": results.get("package_version"),
        "gmembench_run_id": results.get("run_id"),
        "command": results.get("command"),
        "backend": run.get("backend"),
        "fidelity": run.get("fidelity"),
        "workload": run.get("workload"),
        "strategy": run.get("strategy"),
        "scale": run.get("scale"),
        "quick": run.get("quick"),
        "seed": run.get("seed"),
        "repetitions": run.get("repetitions"),
        "cost_profile": (run.get("cost_profile") or {}).get("name") or "none (measured on host)",
    }
    for k, v in (run.get("fidelity_steps") or {}).items():
        named[f"fidelity_{k}"] = v
    for k, v in named.items():
        v = _meta_value(v)
        if v is not None:
            meta[k] = v
    return meta


def subsample(values: np.ndarray, key: str, limit: int = MAX_VALUES) -> np.ndarray:
    """At most `limit` values, chosen at random with a seed fixed by `key`, kept in execution
    order.  Random rather than strided: workloads alternate conversion kinds, and a stride can
    alias with that period and keep only one kind."""
    if len(values) <= limit:
        return values
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    idx = np.sort(rng.choice(len(values), size=limit, replace=False))
    return values[idx]


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def _benchmark(name: str, unit: str, per_run_values: list, meta: dict):
    import pyperf
    runs = []
    for rep, vals in per_run_values:
        m = dict(meta)
        m.update({"name": name, "unit": unit, "loops": 1, "gmembench_repetition": rep})
        runs.append(pyperf.Run([float(v) for v in vals], metadata=m, collect_metadata=False))
    return pyperf.Benchmark(runs)


def build_benchmarks(results: dict, samples: dict | None = None) -> list[tuple[str, object]]:
    """[(strategy, pyperf.Benchmark)] for a loaded results dict.  Benchmark names carry no
    strategy ("<workload>/<metric>"), so the suite of one strategy compares with another's
    by name (`python -m pyperf compare_to in-place.json dual.json`)."""
    if samples is None:
        samples = load_samples(results)
    out = []
    for run in results.get("runs", []):
        key = run["key"]
        meta = run_metadata(results, run)
        per_rep = run.get("per_rep") or []
        reps = int(run.get("repetitions") or len(per_rep))
        w, strat = run["workload"], run["strategy"]

        def add(metric, unit, per_run, m=meta):
            out.append((strat, _benchmark(f"{w}/{metric}", unit, per_run, m)))

        # latency per direction (and both together), seconds per conversion
        dirs = {"": None, "to_shared": 1, "to_private": 2}
        for dname, kind in dirs.items():
            vals, clamped, sub = [], 0, 0
            for rep in range(reps):
                arr = samples.get(f"{key}/rep{rep}")
                if arr is None:
                    continue
                arr = np.asarray(arr, dtype=np.int64)
                if kind is not None:
                    d = samples.get(f"{key}/rep{rep}/direction")
                    if d is None or len(d) != len(arr):
                        continue
                    arr = arr[np.asarray(d) == kind]
                if not len(arr):
                    continue
                picked = subsample(arr, f"{key}/rep{rep}/{dname}")
                sub += len(arr) - len(picked)
                sec = picked / 1e9
                clamped += int((sec < _MIN_SECONDS).sum())
                vals.append((rep, np.maximum(sec, _MIN_SECONDS)))
            if not vals:
                continue
            m = dict(meta)
            m["subsampled"] = "yes" if sub else "no"
            if sub:
                m["subsample_note"] = (f"at most {MAX_VALUES} values per repetition, chosen at "
                                       f"random with a fixed seed; {sub} values left out")
            if clamped:
                m["values_clamped_to_1ns"] = clamped
            add("latency" + (f"_{dname}" if dname else ""), "second", vals, m)

        # time accounting per repetition (seconds): total and conversion-only, per direction
        for part in ("total", "conversion", "induced"):
            vals = [(i, [r["time_ns"][part] / 1e9]) for i, r in enumerate(per_rep)
                    if (r.get("time_ns") or {}).get(part, 0) > 0]
            if vals:
                m = dict(meta)
                m["subsampled"] = "no"
                add(f"{part}_time", "second", vals, m)

        per4k = [(i, [r["latency_per_4k_ns"]["p50"] / 1e9]) for i, r in enumerate(per_rep)
                 if ((r.get("latency_per_4k_ns") or {}).get("p50") or 0) > 0]
        if per4k:
            add("latency_per_4k", "second", per4k)

        fp = [(i, [int(r["footprint_bytes"]["peak"])]) for i, r in enumerate(per_rep)
              if (r.get("footprint_bytes") or {}).get("peak", 0) > 0]
        if fp:
            add("footprint_peak", "byte", fp)
    return out


def write_pyperf(results: dict, outdir) -> list[Path]:
    """Write one pyperf suite file per strategy (<strategy>.json) into outdir; return paths.
    `python -m pyperf compare_to in-place.json dual.json` then compares every workload x
    metric with its geometric mean."""
    import pyperf
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("*--*.json"):      # the earlier one-file-per-metric layout
        old.unlink()
    by: dict = {}
    for strat, bench in build_benchmarks(results):
        by.setdefault(strat, []).append(bench)
    paths = []
    for strat, benches in by.items():
        buf = io.StringIO()
        pyperf.BenchmarkSuite(benches).dump(buf, compact=False)
        path = outdir / f"{_safe(strat)}.json"
        atomic_write_text(path, buf.getvalue())
        paths.append(path)
    return paths
