"""Do the default suite's conclusions survive the uncertain costs?

Runs the default suite on the simulator three times - with the default profile, with every
cost of the profile's [uncertain] table at its low end, and with every one at its high end
(run_suite's cost_overrides, as `gmembench run --cost KEY=low|high`) - and prints, per
workload, the dual/in-place ratios of

  p50     the median conversion latency (ns per conversion, both directions),
  conv    total conversion time (sum of every conversion's steps, all repetitions),
  total   conversion time + the time conversions induce afterwards (refaults, faults of
          fresh pages, copies; metrics["time_ns"]["total"], bench/accounting.py),

and whether each ratio stays on the same side of 1 over the three profiles ("holds") or
crosses it ("FLIPS").  All figures are simulated.  `--results DIR` adds an existing results
directory (e.g. one made by an older version) as a first column, read with the same code.

    python benchmarks/cost_ranges.py [--quick] [--results DIR] [-w NAME]...
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path


def ratios(doc: dict) -> dict:
    by = {}
    for r in doc["runs"]:
        by.setdefault(r["workload"], {})[r["strategy"]] = r["metrics"]
    out = {}
    for w, m in by.items():
        if "dual" not in m or "in-place" not in m:
            continue
        d, i = m["dual"], m["in-place"]

        def total(x):
            t = x.get("time_ns")
            # results without the time accounting: conversion time + every touch
            return t["total"] if t else x["conversion_time_ns"] + x["touch_ns"]["total"]

        def div(a, b):
            return a / b if b else float("nan")
        out[w] = {"p50": div(d["latency_ns"]["p50"], i["latency_ns"]["p50"]),
                  "conv": div(d["conversion_time_ns"], i["conversion_time_ns"]),
                  "total": div(total(d), total(i))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the scaled-down suite")
    ap.add_argument("--results", metavar="DIR", help="an existing results dir as first column")
    ap.add_argument("-w", "--workload", action="append", help="workloads (default: the suite)")
    args = ap.parse_args(argv)
    from bench.costs import load_profile
    from bench.runner import run_suite
    from bench.workload import DEFAULT_SUITE
    workloads = args.workload or DEFAULT_SUITE
    unc = sorted(load_profile().uncertain)
    columns = []
    if args.results:
        columns.append(("given", json.loads((Path(args.results) / "results.json").read_text())))
    with tempfile.TemporaryDirectory() as tmp:
        for label, over in (("default", None), ("all low", {k: "low" for k in unc}),
                            ("all high", {k: "high" for k in unc})):
            out = run_suite(workloads, out_dir=Path(tmp) / label.replace(" ", "-"),
                            quick=args.quick, progress_enabled=False, report=False,
                            cost_overrides=over)
            columns.append((label, json.loads((out / "results.json").read_text())))
    table = {label: ratios(doc) for label, doc in columns}
    print(f"dual / in-place, simulated; {len(unc)} uncertain costs moved together "
          f"({'quick' if args.quick else 'full'} suite)")
    print(f"{'workload':<16} {'ratio':<6} " + " ".join(f"{c:>9}" for c, _ in columns) + "  verdict")
    for w in workloads:
        for part in ("p50", "conv", "total"):
            vals = [table[c].get(w, {}).get(part) for c, _ in columns]
            cells = " ".join(f"{v:>8.2f}x" if v is not None else f"{'-':>9}" for v in vals)
            moved = [v for (c, _), v in zip(columns, vals) if c != "given" and v is not None]
            verdict = ("holds (dual slower)" if all(v > 1 for v in moved) else
                       "holds (in-place slower)" if all(v < 1 for v in moved) else "FLIPS")
            print(f"{w[:16]:<16} {part:<6} {cells}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
