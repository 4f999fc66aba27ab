#!/usr/bin/env python3
"""Wall and CPU time of the default `gmembench run` (issue 9, goal 4: <= 8 s wall here).

Each of --runs repetitions is a fresh process doing what `gmembench run` does - run the
default suite on the simulator, write the results directory, write the report (report.md,
summary.txt, plots/*.png, pyperf/*.json), print the comparison table - with a clock around
each phase.  Printed per phase: median [min-max] of wall and of CPU (user+sys, this process
and every child it reaped: plot workers included).

    python benchmarks/run_walltime.py [--runs 5] [--python /path/to/venv/bin/python]
    python benchmarks/run_walltime.py -- --quick --workload dma-churn   # other run arguments

--python runs the workers with another interpreter (another installed version of the
package, e.g. the previous commit's) so two versions can be compared in one sitting.
With --baseline, every round also compares the two versions' outputs (same seed): a
speed-up must not change what a run reports (see compare_outputs).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

# The worker: gmembench run's steps (bench.runner.cli_run) with clocks in between.  It uses
# whatever version of the package the interpreter has installed.
WORKER = r'''
import inspect, json, os, resource, sys, time
t_start = time.perf_counter()
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
wall, cpus = {}, {}
def phase(name, fn, *a, **k):
    w, c = time.perf_counter(), cpu()
    out = fn(*a, **k)
    wall[name] = wall.get(name, 0.0) + time.perf_counter() - w
    cpus[name] = cpus.get(name, 0.0) + cpu() - c
    return out
def imports():
    global cli, runner, report, parser
    import bench.cli as cli, bench.runner as runner, bench.report.report as report
    parser = cli.build_parser()          # imports every subcommand's module, as gmembench does
phase("imports", imports)
out_dir, extra = sys.argv[1], sys.argv[2:]
args = parser.parse_args(["run", "--out", out_dir, "--no-report", "--no-progress"] + extra)
import contextlib, io
def run():
    with contextlib.redirect_stdout(io.StringIO()):
        args._func(args)
phase("run", run)
out = out_dir
timings = {}
if "timings" in inspect.signature(report.write_report).parameters:
    phase("report", report.write_report, out, timings=timings)
else:
    import bench.report.plots as plots
    inner = report.write_plots
    def timed(*a, **k):
        w = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            timings["plots_s"] = time.perf_counter() - w
    report.write_plots = timed
    phase("report", report.write_report, out)
wall["plots (in report)"] = timings.get("plots_s", float("nan"))
cpus["plots (in report)"] = float("nan")
wall["in-process total"] = time.perf_counter() - t_start
cpus["in-process total"] = cpu()
print(json.dumps({"wall": wall, "cpu": cpus, "timings": timings}))
'''

PHASES = [
    ("process", "the whole `gmembench run` process as the parent sees it: interpreter start, "
                "imports, run, report, exit (CPU: wait4 of the process and its children)"),
    ("imports", "importing bench.cli and building its parser (imports every subcommand's "
                "module: numpy, matplotlib, ...)"),
    ("run", "gmembench run --no-report: load workloads and the cost profile, generate ops, "
            "compile, simulate every repetition of both strategies, metrics, write "
            "results.json + samples.npz, print the comparison table"),
    ("report", "write_report: plots/*.png, pyperf/*.json, summary.txt, report.md"),
    ("plots (in report)", "from the first figure started to the last one written (wall "
                          "only; overlaps the rest of the report when rendered in parallel)"),
    ("in-process total", "imports + run + report, inside the process"),
]


# what may differ between two runs of the same suite: when and where they ran
_VOLATILE = {"run_id", "created", "elapsed_s", "provenance", "command", "timing", "wall_s",
             "sim_wall_s", "path", "workload_file"}


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in _VOLATILE}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _text(path: str, doc: dict) -> list:
    """A text output with what names this run (its id, creation time, install paths and
    commit) replaced by placeholders."""
    import re
    t = open(path).read().replace(doc["run_id"], "<run>").replace(doc["created"], "<created>")
    t = re.sub(r"/\S*/site-packages/", "<site>/", t)
    t = re.sub(r"git commit .*", "git commit <commit>", t)
    return t.splitlines()


def _first_difference(x, y, path="") -> str:
    """Where two JSON values first differ (a path like runs[2]/metrics/...)."""
    if isinstance(x, dict) and isinstance(y, dict):
        if list(x) != list(y):
            return f"{path} (keys)"
        for k in x:
            d = _first_difference(x[k], y[k], f"{path}/{k}")
            if d:
                return d
        return ""
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (p, q) in enumerate(zip(x, y)):
            d = _first_difference(p, q, f"{path}[{i}]")
            if d:
                return d
        return ""
    return "" if x == y else f"{path}: {str(x)[:40]} != {str(y)[:40]}"


def compare_outputs(a: str, b: str) -> list:
    """How two results directories of the same suite and seed differ, beyond when and
    where they ran: results.json (every value and key order, wall-clock fields and install
    paths left out), samples.npz (every array), summary.txt and report.md (run id, dates,
    paths and commit masked), plots/*.png (every pixel).  [] when they do not."""
    import json
    from matplotlib.image import imread
    out = []
    da, db = (json.load(open(os.path.join(d, "results.json"))) for d in (a, b))
    if json.dumps(_strip(da)) != json.dumps(_strip(db)):
        out.append(f"results.json ({_first_difference(_strip(da), _strip(db))})")
    sa, sb = (np.load(os.path.join(d, "samples.npz")) for d in (a, b))
    if sa.files != sb.files or any(not np.array_equal(sa[k], sb[k]) or sa[k].dtype != sb[k].dtype
                                   for k in sa.files):
        out.append("samples.npz")
    for name in ("summary.txt", "report.md"):
        la, lb = _text(os.path.join(a, name), da), _text(os.path.join(b, name), db)
        if la != lb:
            n = sum(x != y for x, y in zip(la, lb)) + abs(len(la) - len(lb))
            first = next((f"{x[:40]!r} != {y[:40]!r}" for x, y in zip(la, lb) if x != y), "")
            out.append(f"{name} ({n} lines; first: {first})")
    pa, pb = (sorted(os.listdir(os.path.join(d, "plots"))) for d in (a, b))
    if pa != pb:
        out.append(f"plots: files {sorted(set(pa) ^ set(pb))}")
    for f in sorted(set(pa) & set(pb)):
        x, y = imread(os.path.join(a, "plots", f)), imread(os.path.join(b, "plots", f))
        if x.shape != y.shape or not (x == y).all():
            out.append(f"plots/{f}")
    return out


def med(xs):
    xs = sorted(x for x in xs if x == x)
    if not xs:
        return "-"
    return f"{np.median(xs):.2f} [{xs[0]:.2f}-{xs[-1]:.2f}]" if len(xs) > 1 else f"{xs[0]:.2f}"


def version_of(python: str) -> str | None:
    p = subprocess.run([python, "-c", "import bench, os; print(bench.__version__, "
                        "os.path.dirname(bench.__file__))"],
                       capture_output=True, text=True, cwd=tempfile.gettempdir())
    return p.stdout.strip() if p.returncode == 0 else None


def one_run(python: str, out: str, run_args: list, cwd: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([python, "-c", WORKER, out] + run_args, capture_output=True, text=True,
                       cwd=cwd)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"run_walltime: a run with {python} failed (exit {p.returncode})")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall"]["process"] = wall
    r["cpu"]["process"] = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return r


def table(rows: list) -> None:
    print(f"  {'phase':<18} {'wall s, median [min-max]':>26} {'CPU s, median [min-max]':>26}")
    for name, _ in PHASES:
        print(f"  {name:<18} {med([r['wall'][name] for r in rows]):>26} "
              f"{med([r['cpu'][name] for r in rows]):>26}")
    extra = sorted({k for r in rows for k in r.get("timings", {})} - {"plots_s"})
    for k in extra:
        print(f"  {'  ' + k:<18} {med([r['timings'].get(k, float('nan')) for r in rows]):>26}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter whose installed gmembench is measured")
    ap.add_argument("--baseline", metavar="PYTHON",
                    help="also measure this interpreter's installed gmembench, alternating "
                         "run by run with --python, and print the ratios (load-fair)")
    ap.add_argument("run_args", nargs="*", help="after --: extra `gmembench run` arguments")
    a = ap.parse_args()
    if a.runs < 1:
        print("--runs: expected a positive integer", file=sys.stderr)
        return 2
    pythons = ([("baseline", a.baseline)] if a.baseline else []) + [("current", a.python)]
    versions = {}
    for label, py in pythons:
        versions[label] = version_of(py)
        if versions[label] is None:
            print(f"run_walltime: {py} cannot import bench", file=sys.stderr)
            return 2
    load0 = os.getloadavg()
    rows = {label: [] for label, _ in pythons}
    differences = []
    with tempfile.TemporaryDirectory(prefix="run_walltime-") as tmp:
        for i in range(a.runs):
            for label, py in pythons:
                rows[label].append(one_run(py, os.path.join(tmp, f"{label}{i}"), a.run_args, tmp))
            if a.baseline:
                differences.append(compare_outputs(os.path.join(tmp, f"baseline{i}"),
                                                   os.path.join(tmp, f"current{i}")))
    load1 = os.getloadavg()
    print(f"`gmembench run {' '.join(a.run_args)}` (default suite unless arguments say "
          f"otherwise): {a.runs} runs per version, each a fresh process"
          + (", versions alternating" if a.baseline else ""))
    print(f"load average {load0[0]:.2f} -> {load1[0]:.2f} (1 min); {os.cpu_count()} CPUs")
    for label, py in pythons:
        print(f"\n{label}: {py} (package {versions[label]})")
        table(rows[label])
    print("\nwhat each figure includes (wall = perf_counter; CPU = user+sys incl. reaped children):")
    for name, what in PHASES:
        print(f"  {name:<18} {what}")
    cur = rows["current"]
    if a.baseline:
        base = rows["baseline"]
        print("\ncurrent / baseline, ratio of medians (per-round ratios: median [min-max]):")
        for name in ("process", "run", "report"):
            for kind in ("wall", "cpu"):
                ratios = [c[kind][name] / b[kind][name] for c, b in zip(cur, base)]
                print(f"  {name:<8} {kind:<4} "
                      f"{np.median([c[kind][name] for c in cur]) / np.median([b[kind][name] for b in base]):.2f}"
                      f"   {med(ratios)}")
    if a.baseline:
        same = sum(not d for d in differences)
        print(f"\noutputs, current vs baseline (same seed; results.json values and key order "
              f"without wall-clock fields and paths, samples.npz arrays, summary.txt and "
              f"report.md text with run id/dates/paths/commit masked, every plot pixel): "
              f"identical in {same} of {len(differences)} rounds")
        for i, d in enumerate(differences):
            if d:
                print(f"  round {i}: differ in {', '.join(d)}")
    rep = np.median([r["wall"]["report"] for r in cur])
    tot = np.median([r["wall"]["process"] for r in cur])
    print(f"\ncurrent: report share of the process wall {100 * rep / tot:.0f}%; goal: process "
          f"wall <= 8 s -> {'met' if tot <= 8 else 'NOT met'} at this load")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
