"""Write a results dir's samples as pyperf JSON, so `python -m pyperf stats|hist|compare_to`
work on gmembench results.

One file (one pyperf benchmark) per workload x strategy x metric:
  <workload>--<strategy>--latency.json         seconds per conversion
  <workload>--<strategy>--latency_per_4k.json  seconds per 4 KiB converted (p50 per repetition;
                                               only when the runner records it per repetition)
  <workload>--<strategy>--footprint_peak.json  bytes (one value per repetition)
Each repetition is one pyperf run (pyperf's "process"): its values are that repetition's
samples, subsampled to at most MAX_VALUES with a fixed seed when there are more.

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
    """[(file stem, pyperf.Benchmark)] for a loaded results dict."""
    if samples is None:
        samples = load_samples(results)
    out = []
    for run in results.get("runs", []):
        key = run["key"]
        meta = run_metadata(results, run)
        per_rep = run.get("per_rep") or []
        reps = int(run.get("repetitions") or len(per_rep))
        stem = _safe(f"{run['workload']}--{run['strategy']}")

        lat = []
        clamped = 0
        for rep in range(reps):
            arr = samples.get(f"{key}/rep{rep}")
            if arr is None or len(arr) == 0:
                continue
            sec = subsample(np.asarray(arr, dtype=np.int64), f"{key}/rep{rep}") / 1e9
            clamped += int((sec < _MIN_SECONDS).sum())
            lat.append((rep, np.maximum(sec, _MIN_SECONDS)))
        if lat:
            m = dict(meta)
            if clamped:
                m["values_clamped_to_1ns"] = clamped
            out.append((f"{stem}--latency",
                        _benchmark(f"{run['workload']}/{run['strategy']}/latency", "second",
                                   lat, m)))

        per4k = [(i, [r["latency_per_4k_ns"]["p50"] / 1e9]) for i, r in enumerate(per_rep)
                 if (r.get("latency_per_4k_ns") or {}).get("p50", 0) > 0]
        if per4k:
            out.append((f"{stem}--latency_per_4k",
                        _benchmark(f"{run['workload']}/{run['strategy']}/latency_per_4k",
                                   "second", per4k, meta)))

        fp = [(i, [int(r["footprint_bytes"]["peak"])]) for i, r in enumerate(per_rep)
              if (r.get("footprint_bytes") or {}).get("peak", 0) > 0]
        if fp:
            out.append((f"{stem}--footprint_peak",
                        _benchmark(f"{run['workload']}/{run['strategy']}/footprint_peak",
                                   "byte", fp, meta)))
    return out


def write_pyperf(results: dict, outdir) -> list[Path]:
    """Write one pyperf JSON file per workload x strategy x metric into outdir; return paths."""
    import pyperf
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, bench in build_benchmarks(results):
        buf = io.StringIO()
        pyperf.BenchmarkSuite([bench]).dump(buf, compact=False)
        path = outdir / f"{stem}.json"
        atomic_write_text(path, buf.getvalue())
        paths.append(path)
    return paths
