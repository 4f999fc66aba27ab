"""The results directory: results/<run-id>/ with results.json (schema-versioned, written
atomically), samples.npz (raw per-conversion latencies) and, after `report`, report.md,
summary.txt, plots/*.png and pyperf/*.json.

results.json, schema "gmembench-results/1":
{
  "schema": "gmembench-results/1",
  "run_id": str, "created": ISO-8601 UTC, "package_version": str, "command": [argv...],
  "host": {"hostname", "kernel", "cpu", "page_size", "thp": {...}, "hugetlb": {...}, ...},
  "runs": [                                  # one per (workload, strategy)
    {
      "key": "<workload>/<strategy>",
      "workload": str, "workload_file": str, "description": str,
      "strategy": "in-place" | "dual", "strategy_options": {...},
      "backend": "sim" | "host",
      "fidelity": "simulated" | "native" | "emulated" | "mixed",
      "fidelity_steps": {step name: "native" | "emulated" | "simulated" | "unavailable"},
      "layout": {...}, "params": {...}, "seed": int, "scale": float, "quick": bool,
      "cost_profile": {"name", "source", "path", "costs": {...}} | null (host backend),
      "repetitions": int,
      "metrics": {                           # over all repetitions
        "conversions", "failed_conversions", "bytes_converted", "bytes_copied", "copy_time_ns",
        "latency_ns": {"p50", "p90", "p99", "max", "mean", "min", "stdev"},
        "latency_per_4k_ns": {"p50", "mean"},   # latency / (size/4K): comparable across sizes
        "touch_ns": {"total", "p50"},          # time spent by touch steps (faults, reads, writes)
        "footprint_bytes": {"peak", "mean"}, "footprint_ratio": {"peak", "mean"},
        "hugepage_coverage": {"start", "end", "min"},
        "huge_splits", "huge_merges",
        "unusable_index": {"order9", "order18"},    # at the end of the run
        "checks": {"content_pages_checked", "content_mismatch_pages", "sigbus_expected",
                   "sigbus_seen", "unexpected_sigbus"},
        "errors": {"<errno name>": count},
        "directions": {                      # the same, split by conversion direction
          "to_shared" | "to_private": {
            "conversions",                   # conversions of that direction asked for
            "failed_conversions",            # of those, how many failed
            "latency_ns": {"p50", "p90", "p99", "max", "mean", "min", "stdev"}
          }                                  # latency of the successful ones (all null
        }                                    # when there is none), ns per conversion
      },
      "timing": {"wall_s": [per repetition]},  # wall time, kept out of the metrics
      "warmup_repetitions": int,             # run first and discarded (host backend)
      "per_rep": [ {"latency_ns": {...}, "latency_per_4k_ns": {"p50", "mean"}, "conversions",
                    "failed_conversions", "bytes_copied", "copy_time_ns",
                    "directions": {...},       # as in metrics, this repetition only
                    "footprint_bytes": {...}, "huge_splits", "huge_merges", "wall_s"} , ... ],
      "series": {"op_index": [...], "t_ns": [...], "footprint_bytes": [...],
                 "hugepage_coverage": [...], "huge_splits": [...]},   # repetition 0
      "breakdown": {primitive: {"count": n, "ns": total}},
      "phases": {phase: what its generator reported},
      "trace": {phase: replay counts} | null, # trace replay phases only
      "metadata": {...}                       # backend metadata (harness overhead, scale...)
    }
  ]
}
samples.npz: arrays named "<workload>/<strategy>/rep<N>" = int64 latency_ns of each
conversion of repetition N (failed conversions excluded), in execution order, and
"<workload>/<strategy>/rep<N>/direction" = uint8 array aligned with it: the direction of
each of those conversions (1 = to_shared, 2 = to_private: bench.ops.OpKind values).
Results written before the direction arrays existed lack them; readers must cope.
"""
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from bench.errors import InputError

SCHEMA = "gmembench-results/1"


def _umask() -> int:
    # /proc says it without changing it (os.umask can only read by setting, racing threads)
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())     # mkstemp makes 0600; results follow the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n")


def atomic_write_npz(path: Path, arrays: dict) -> None:
    import io
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_results(path) -> dict:
    """Load results.json from a results dir (or the file itself); InputError if not ours."""
    p = Path(path)
    f = p / "results.json" if p.is_dir() else p
    if not f.exists():
        raise InputError("no results.json here (expected a results/<run-id>/ directory)", str(p))
    try:
        data = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e.msg}", str(f), e.lineno)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InputError(f"schema is {data.get('schema') if isinstance(data, dict) else None!r},"
                         f" expected {SCHEMA!r}", str(f))
    data["_dir"] = str(f.parent)
    return data


def load_samples(results: dict) -> dict[str, np.ndarray]:
    """samples.npz of a loaded results dict: {"<workload>/<strategy>/rep<N>": int64 array}."""
    f = Path(results["_dir"]) / "samples.npz"
    if not f.exists():
        return {}
    with np.load(f) as z:
        return {k: z[k] for k in z.files}
