"""`gmembench table DIR...`: N results directories side by side, mmtests-style.

One column per run; per workload x strategy x metric: the mean over repetitions (each
repetition's own value from results.json per_rep), the spread (sample standard deviation)
and the coefficient of variation, and in every column after the first the change of the
mean against the first column.  `--hide-unchanged` drops rows whose every change is within
--threshold percent.  Text (at most 72 columns when it fits), markdown or CSV.

This describes; it does not decide: `gmembench compare` is the regression gate.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path

import numpy as np

from bench.errors import InputError
from bench.results import load_results

# (label, path into a per_rep dict, unit, scale to unit)
METRICS = [
    ("lat p50", "latency_ns.p50", "us", 1e-3),
    ("lat p99", "latency_ns.p99", "us", 1e-3),
    ("shared p50", "directions.to_shared.latency_ns.p50", "us", 1e-3),
    ("private p50", "directions.to_private.latency_ns.p50", "us", 1e-3),
    ("per-4K p50", "latency_per_4k_ns.p50", "us", 1e-3),
    ("copy time", "copy_time_ns", "ms", 1e-6),
    ("copied", "bytes_copied", "MiB", 1 / (1 << 20)),
    ("fp peak", "footprint_bytes.peak", "MiB", 1 / (1 << 20)),
    ("huge splits", "huge_splits", "", 1.0),
    ("huge merges", "huge_merges", "", 1.0),
    ("failed", "failed_conversions", "", 1.0),
    ("wall", "wall_s", "s", 1.0),
]


def _get(d: dict, path: str):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, (int, float)) and not isinstance(d, bool) else None


def stats(values: list[float]) -> dict | None:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return None
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": mean, "sd": sd, "cv": (sd / abs(mean)) if mean else (0.0 if sd == 0 else math.inf),
            "n": int(len(v))}


def build_rows(docs: list[dict]) -> list[dict]:
    """Rows {group, metric, unit, cells: [stats or None per run], change: [pct or None]}."""
    keys = []
    for doc in docs:
        for r in doc["runs"]:
            if r["key"] not in keys:
                keys.append(r["key"])
    rows = []
    for key in keys:
        runs = [next((r for r in doc["runs"] if r["key"] == key), None) for doc in docs]
        for label, path, unit, scale in METRICS:
            cells = []
            for r in runs:
                if r is None:
                    cells.append(None)
                    continue
                vals = [_get(p, path) for p in r.get("per_rep", [])]
                s = stats([x * scale for x in vals if x is not None])
                cells.append(s)
            if all(c is None for c in cells):
                continue
            base = cells[0]
            change = [None]
            for c in cells[1:]:
                if c is None or base is None:
                    change.append(None)
                elif base["mean"] == 0:
                    change.append(0.0 if c["mean"] == 0 else math.inf)
                else:
                    change.append(100.0 * (c["mean"] - base["mean"]) / abs(base["mean"]))
            rows.append({"group": key, "metric": label, "unit": unit, "cells": cells, "change": change})
    return rows


def _num(x: float) -> str:
    if x is None:
        return "-"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1e5:
        return f"{x:.3g}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _pct(x) -> str:
    if x is None:
        return ""
    if math.isinf(x):
        return "new"
    return f"{x:+.1f}%"


def render_text(rows, names, width=72) -> str:
    n = len(names)
    label_w = max([len(r["metric"]) + len(r["unit"]) + 3 for r in rows] + [10])
    # each run: mean, (cv), change
    cell_w = 18
    if label_w + n * cell_w > width:
        label_w = max(14, width - n * cell_w)
    out = []
    head = " " * label_w + "".join(f"{nm[-(cell_w - 1):]:>{cell_w}}" for nm in names)
    out.append(head)
    out.append(" " * label_w + "".join(f"{'mean (cv) chg':>{cell_w}}" for _ in names))
    group = None
    for r in rows:
        if r["group"] != group:
            group = r["group"]
            out.append(group)
        lab = f"  {r['metric']}" + (f" {r['unit']}" if r["unit"] else "")
        line = f"{lab[:label_w]:<{label_w}}"
        for c, ch in zip(r["cells"], r["change"]):
            if c is None:
                txt = "-"
            else:
                txt = f"{_num(c['mean'])} ({100 * c['cv']:.0f}%)" if math.isfinite(c["cv"]) else f"{_num(c['mean'])} (-)"
                if ch is not None:
                    txt += f" {_pct(ch)}"
            line += f"{txt:>{cell_w}}"
        out.append(line.rstrip())
    return "\n".join(out)


def render_markdown(rows, names) -> str:
    out = ["| workload/strategy | metric | " + " | ".join(names) + " |",
           "|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = []
        for c, ch in zip(r["cells"], r["change"]):
            if c is None:
                cells.append("-")
                continue
            s = f"{_num(c['mean'])} ± {_num(c['sd'])} (cv {100 * c['cv']:.1f}%)"
            if ch is not None:
                s += f" {_pct(ch)}"
            cells.append(s)
        unit = f" ({r['unit']})" if r["unit"] else ""
        out.append(f"| {r['group']} | {r['metric']}{unit} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def render_csv(rows, names) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["group", "metric", "unit", "run", "mean", "sd", "cv", "n", "change_pct"])
    for r in rows:
        for nm, c, ch in zip(names, r["cells"], r["change"]):
            if c is None:
                continue
            w.writerow([r["group"], r["metric"], r["unit"], nm, c["mean"], c["sd"], c["cv"], c["n"],
                        "" if ch is None else ch])
    return buf.getvalue()


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="results directories (the first is the reference)")
    p.add_argument("--format", choices=("text", "markdown", "csv"), default="text")
    p.add_argument("--hide-unchanged", action="store_true",
                   help="drop rows whose every change against the first run is within --threshold")
    p.add_argument("--threshold", type=float, default=1.0, metavar="PCT",
                   help="what --hide-unchanged calls unchanged (default 1%%)")
    p.add_argument("--names", metavar="A,B,...", help="column names (default: directory names)")
    p.add_argument("--width", type=int, default=72, help="text: target width (default 72)")


def cli_table(args) -> int:
    docs = [load_results(d) for d in args.dirs]
    names = [Path(d).name for d in args.dirs]
    if args.names:
        names = args.names.split(",")
        if len(names) != len(docs):
            raise InputError(f"--names: expected {len(docs)} names, got {len(names)}")
    if args.threshold < 0:
        raise InputError("--threshold must be >= 0")
    rows = build_rows(docs)
    if args.hide_unchanged:
        rows = [r for r in rows if any(c is not None and abs(c) > args.threshold for c in r["change"][1:])
                or any(c is None for c in r["cells"])]
    if args.format == "markdown":
        print(render_markdown(rows, names))
    elif args.format == "csv":
        print(render_csv(rows, names), end="")
    else:
        print(render_text(rows, names, args.width))
        backends = sorted({r.get("backend", "?") for d in docs for r in d["runs"]})
        print(f"\nmean over repetitions (cv = sd/mean), change of the mean against {names[0]}; "
              f"backend {', '.join(backends)}")
    return 0
