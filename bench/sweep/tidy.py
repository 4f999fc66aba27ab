"""The tidy table of a sweep: one row per point x strategy x direction x repetition x
metric, every axis value a column, written as Apache Parquet (pyarrow) and CSV.

It is built from the cache one point at a time (ParquetWriter / CSVWriter), so its size is
not bounded by memory.  `direction` is "all" (every conversion of the repetition) or
to_shared / to_private (the per-direction statistics of the same repetition).
"""
from __future__ import annotations

import os
from pathlib import Path

from bench.sweep.engine import cache_path, load_cached

# metric name -> unit (what a number in `value` is)
def unit_of(metric: str) -> str:
    if metric.endswith("_s"):
        return "s"
    if metric.startswith("footprint_ratio") or metric.startswith("hugepage_coverage"):
        return "fraction of guest memory"
    if "_share" in metric:
        return "fraction"
    if metric.startswith("footprint_bytes") or metric.startswith("bytes_"):
        return "bytes"
    if "_ns" in metric:
        return "ns"
    return "count"


FIXED_COLUMNS = ["sweep", "workload", "point", "kind", "varied"]
ROW_COLUMNS = ["strategy", "direction", "repetition", "metric", "value", "unit", "backend",
               "fidelity", "seed", "key", "hostname"]


def _arrow_type(values):
    import pyarrow as pa
    vals = [v for v in values if v is not None]
    if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return pa.int64()
    if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return pa.float64()
    return pa.string()


def schema(plan):
    import pyarrow as pa
    fields = [pa.field("sweep", pa.string()), pa.field("workload", pa.string()),
              pa.field("point", pa.int64()), pa.field("kind", pa.string()),
              pa.field("varied", pa.string())]
    for c in plan.columns:
        fields.append(pa.field(c, _arrow_type([p.columns.get(c) for p in plan.points])))
    fields += [pa.field("strategy", pa.string()), pa.field("direction", pa.string()),
               pa.field("repetition", pa.int64()), pa.field("metric", pa.string()),
               pa.field("value", pa.float64()), pa.field("unit", pa.string()),
               pa.field("backend", pa.string()), pa.field("fidelity", pa.string()),
               pa.field("seed", pa.int64()), pa.field("key", pa.string()),
               pa.field("hostname", pa.string())]
    return pa.schema(fields)


def _cast(v, typ):
    import pyarrow as pa
    if v is None:
        return None
    if typ == pa.string():
        return str(v)
    return v


def write_tidy(plan, cache_dir: Path, out_dir: Path, keep=None) -> dict:
    """Write tidy.parquet and tidy.csv (atomically: temporary names, then rename).
    keep(point, strategy, repetition, direction, metric, value) is called for each row so
    the caller can retain what it needs; returns row and missing-task counts."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    from bench.sweep.plan import point_tasks
    sch = schema(plan)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_pq, tmp_csv = out_dir / ".tidy.parquet.tmp", out_dir / ".tidy.csv.tmp"
    rows = missing = 0
    keys_of = point_tasks(plan)
    types = {f.name: f.type for f in sch}
    try:
        with pq.ParquetWriter(tmp_pq, sch) as pw, pcsv.CSVWriter(str(tmp_csv), sch) as cw:
            for p in plan.points:
                cols = {n: [] for n in sch.names}
                for key in keys_of[p.index]:
                    if not cache_path(cache_dir, key).is_file():
                        missing += 1
                        continue
                    res = load_cached(cache_dir, key)
                    t = res["task"]
                    for direction, metrics in res["metrics"].items():
                        for metric, value in metrics.items():
                            if isinstance(value, bool) or not isinstance(value, (int, float)):
                                continue        # not measured here (None) or not a number
                            cols["sweep"].append(plan.spec.name)
                            cols["workload"].append(p.workload)
                            cols["point"].append(p.index)
                            cols["kind"].append(p.kind)
                            cols["varied"].append(p.varied)
                            for c in plan.columns:
                                cols[c].append(_cast(p.columns.get(c), types[c]))
                            cols["strategy"].append(t["strategy"])
                            cols["direction"].append(direction)
                            cols["repetition"].append(t["repetition"])
                            cols["metric"].append(metric)
                            cols["value"].append(float(value))
                            cols["unit"].append(unit_of(metric))
                            cols["backend"].append(res["backend"])
                            cols["fidelity"].append(res["fidelity"])
                            cols["seed"].append(t["seed"])
                            cols["key"].append(key)
                            cols["hostname"].append(res.get("hostname"))
                            if keep is not None:
                                keep(p, t["strategy"], t["repetition"], direction, metric, value)
                if cols["metric"]:
                    batch = pa.RecordBatch.from_pydict(cols, schema=sch)
                    pw.write_batch(batch)
                    cw.write_batch(batch)
                    rows += batch.num_rows
        os.replace(tmp_pq, out_dir / "tidy.parquet")
        os.replace(tmp_csv, out_dir / "tidy.csv")
    finally:
        for f in (tmp_pq, tmp_csv):
            if f.exists():
                f.unlink()
    return {"rows": rows, "missing_tasks": missing}
