"""The results directory: results/<run-id>/ with results.json (schema-versioned, written
atomically), samples.npz (raw per-conversion latencies) and, after `report`, report.md,
summary.txt, plots/*.png and pyperf/*.json.

results.json, schema "gmembench-results/1":
{
  "schema": "gmembench-results/1",
  "run_id": str, "created": ISO-8601 UTC, "package_version": str, "command": [argv...],
  "host": {"hostname", "kernel", "cpu", "page_size", "thp": {...}, "hugetlb": {...}, ...},
  "provenance": {"suite_version", "git": {"commit", "dirty"} | unknown, "kernel_release",
                 "kernel_cmdline", "kernel_config": {"source", "options"}, "microcode"},
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
        "huge_splits", "huge_merges",           # kept for compare; see huge_pages
        "unusable_index": {"order9", "order10"},    # end of run, kernel orders only
        "failed_accesses",                     # touch steps that failed (ENOMEM at a fault...)
        "directions": {"to_shared"|"to_private": {
            "conversions", "failed_conversions", "latency_ns": {...},
            "conversion_time_ns", "induced_time_ns", "total_time_ns", "induced_ops",
            "bytes_converted", "per_conversion_ns": {"conversion", "induced", "total"},
            "per_gib_ns": {...}}},             # time accounting: bench/accounting.py
        "time_ns": {"conversion", "induced", "total", "baseline_access"},
        "huge_pages": {"stage2_huge_share", "host_pmd_mapped_share",
                       "intact_huge_folio_share": {"start", "end", "min"} | null,
                       "mapping_demotions", "folio_splits", "folio_merges": per rep | null,
                       "not_measurable": {measure: why}},
        "fragmentation": {"zones": {zone: {"nr_free", "unusable_index": {"order0".."order10"},
                                           "fragmentation_index": {...: value | null}}},
                          "pageblocks", "allocatable_huge": {"2m", "1g"} | null, "notes"},
        "step_breakdown": {direction: {"conversion"|"induced"|"access": {STEP: {"steps",
                           "pages", "ns"}}}},  # all repetitions
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
                    "footprint_bytes": {...}, "huge_splits", "huge_merges", "directions",
                    "time_ns", "errors", "failed_accesses", "mapping_demotions",
                    "folio_splits", "folio_merges", "wall_s"} , ... ],
      "series": {"op_index": [...], "t_ns": [...], "footprint_bytes": [...],
                 "hugepage_coverage": [...], "huge_splits": [...]},   # repetition 0
      "breakdown": {primitive: {"count": n, "ns": total}},   # all repetitions
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


# --- the JSON Schema of results.json, and the tidy export --------------------------------

def results_schema() -> dict:
    """The JSON Schema of results.json shipped with the package (bench/schemas/)."""
    from importlib import resources
    return json.loads((resources.files("bench") / "schemas" / "results.schema.json").read_text())


def validate_results(doc: dict) -> None:
    """Raise jsonschema.ValidationError when `doc` (a loaded results.json) does not follow
    the schema.  Needs the jsonschema package (a test dependency)."""
    import jsonschema
    doc = {k: v for k, v in doc.items() if not k.startswith("_")}
    jsonschema.validate(doc, results_schema())


# metric name -> (unit, how to read it from a per-repetition dict), per direction
_DIR_METRICS = {
    "conversions": ("count", lambda d: d.get("conversions")),
    "failed_conversions": ("count", lambda d: d.get("failed_conversions")),
    "conversion_time": ("ns", lambda d: d.get("conversion_time_ns")),
    "induced_time": ("ns", lambda d: d.get("induced_time_ns")),
    "total_time": ("ns", lambda d: d.get("total_time_ns")),
    **{f"latency_{q}": ("ns", (lambda q: lambda d: (d.get("latency_ns") or {}).get(q))(q))
       for q in ("p50", "p90", "p99", "max", "mean", "min", "stdev")},
}
_ALL_METRICS = {
    "conversion_time": ("ns", lambda r: (r.get("time_ns") or {}).get("conversion")),
    "induced_time": ("ns", lambda r: (r.get("time_ns") or {}).get("induced")),
    "total_time": ("ns", lambda r: (r.get("time_ns") or {}).get("total")),
    "baseline_access_time": ("ns", lambda r: (r.get("time_ns") or {}).get("baseline_access")),
    "conversions": ("count", lambda r: r.get("conversions")),
    "failed_conversions": ("count", lambda r: r.get("failed_conversions")),
    "failed_accesses": ("count", lambda r: r.get("failed_accesses")),
    "bytes_copied": ("bytes", lambda r: r.get("bytes_copied")),
    "copy_time": ("ns", lambda r: r.get("copy_time_ns")),
    "footprint_peak": ("bytes", lambda r: (r.get("footprint_bytes") or {}).get("peak")),
    "footprint_mean": ("bytes", lambda r: (r.get("footprint_bytes") or {}).get("mean")),
    "mapping_demotions": ("count", lambda r: r.get("mapping_demotions")),
    "folio_splits": ("count", lambda r: r.get("folio_splits")),
    "folio_merges": ("count", lambda r: r.get("folio_merges")),
}
TIDY_COLUMNS = ("workload", "strategy", "direction", "metric", "repetition", "value", "unit",
                "backend", "fidelity")


def tidy_rows(doc: dict) -> list[dict]:
    """One row per workload x strategy x direction x metric x repetition (direction "all"
    for metrics of the whole repetition), with its unit, backend and fidelity: the long
    ("tidy") form that pandas, R and spreadsheets pivot.  Values missing from a
    repetition (not measurable on its backend) are left out, never written as 0."""
    rows = []
    for run in doc.get("runs", []):
        base = {"workload": run.get("workload"), "strategy": run.get("strategy"),
                "backend": run.get("backend"), "fidelity": run.get("fidelity")}
        for i, rep in enumerate(run.get("per_rep") or []):
            for d, dd in (rep.get("directions") or {}).items():
                for name, (unit, get) in _DIR_METRICS.items():
                    v = get(dd)
                    if v is not None:
                        rows.append({**base, "direction": d, "metric": name, "repetition": i,
                                     "value": v, "unit": unit})
            for name, (unit, get) in _ALL_METRICS.items():
                v = get(rep)
                if v is not None:
                    rows.append({**base, "direction": "all", "metric": name, "repetition": i,
                                 "value": v, "unit": unit})
    return [{k: r[k] for k in TIDY_COLUMNS} for r in rows]


def write_tidy_csv(doc: dict, path) -> Path:
    """tidy_rows(doc) as CSV (header TIDY_COLUMNS), written atomically."""
    import csv
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TIDY_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(tidy_rows(doc))
    atomic_write_text(Path(path), buf.getvalue())
    return Path(path)
