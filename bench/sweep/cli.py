"""`gmembench sweep SPEC`: plan, run on Dask (embedded or --scheduler), write the tidy
table, conclusions, plots and report.md into results/sweeps/<name>/ (the cache of finished
tasks in its cache/ folder).  `--sensitivity` varies the profile's uncertain costs instead
of the axes; `--qualify [QSPEC]` gathers one qualification verdict per worker machine.

Exit 0: done.  2: bad input, or tasks failed (the finished ones stay cached; nothing else is
written).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench.errors import InputError
from bench.progress import add_progress_arguments, progress


def add_sweep_arguments(p) -> None:
    p.add_argument("spec", nargs="?", metavar="SPEC",
                   help="sweep file or the name of a shipped sweep (omit to list them)")
    p.add_argument("--sensitivity", action="store_true",
                   help="vary each uncertain cost of the profile (low..high, one at a time, "
                        "and Latin-hypercube points) at the spec's baseline point")
    p.add_argument("--qualify", nargs="?", const="", metavar="QSPEC",
                   help="fleet mode: run a qualification spec once on every worker machine "
                        "(default spec: workloads/qualify-default.toml)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="existing Dask scheduler, e.g. tcp://h:8786")
    p.add_argument("--scheduler-file", metavar="FILE", help="Dask scheduler file of an existing cluster")
    p.add_argument("--workers", type=int, metavar="N",
                   help="embedded cluster: worker processes (default: one per CPU)")
    p.add_argument("--out", metavar="DIR", help="output directory (default results/sweeps/<name>)")
    p.add_argument("--cache", metavar="DIR", help="task cache (default OUT/cache)")
    p.add_argument("--dry-run", action="store_true", help="check the spec, print the plan, run nothing")
    p.add_argument("--no-plots", action="store_true", help="skip plots/ (report.md still written)")
    add_progress_arguments(p)


def cli_sweep(args) -> int:
    from bench.sweep.spec import list_sweeps, load_spec
    if args.scheduler and args.scheduler_file:
        raise InputError("give --scheduler or --scheduler-file, not both")
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be >= 1")
    if args.qualify is not None:
        from bench.sweep.fleet import run_fleet
        return run_fleet(args)
    if not args.spec:
        for f in list_sweeps():
            import tomllib
            d = tomllib.loads(f.read_text(encoding="utf-8")).get("sweep", {})
            print(f"{f.stem:<20} {str(d.get('description', '')).splitlines()[0] if d.get('description') else ''}")
        return 0
    spec = load_spec(args.spec)
    return run_sweep(spec, sensitivity=args.sensitivity, scheduler=args.scheduler,
                     scheduler_file=args.scheduler_file, workers=args.workers, out=args.out,
                     cache=args.cache, dry_run=args.dry_run, plots=not args.no_plots,
                     progress_enabled=args.progress)


def run_sweep(spec, sensitivity=False, scheduler=None, scheduler_file=None, workers=None,
              out=None, cache=None, dry_run=False, plots=True, progress_enabled=None,
              echo=print) -> int:
    from bench.sweep.analysis import Collector, analyse, summary_lines
    from bench.sweep.engine import cached, open_client, run_tasks
    from bench.sweep.plan import make_plan
    from bench.sweep.tidy import write_tidy
    plan = make_plan(spec, sensitivity=sensitivity)
    out = Path(out) if out else Path("results") / "sweeps" / spec.name
    cache = Path(cache) if cache else out / "cache"
    table_dir = out / "sensitivity" if sensitivity else out
    n_cached = sum(cached(cache, t.key) for t in plan.tasks)
    echo(f"sweep {spec.name} ({spec.path}): {len(plan.points)} points x "
         f"{len(spec.strategies)} strategies x {spec.repetitions} repetitions = "
         f"{len(plan.tasks)} tasks ({n_cached} cached), backend {spec.backend}, "
         f"{'sensitivity over ' + str(len(plan.uncertain)) + ' uncertain costs' if sensitivity else spec.mode}")
    if dry_run:
        for p in plan.points[:50]:
            cols = ", ".join(f"{k}={v}" for k, v in p.columns.items())
            echo(f"  point {p.index}: {p.workload} {p.kind} {cols}")
        if len(plan.points) > 50:
            echo(f"  ... {len(plan.points) - 50} more")
        return 0
    t0 = time.time()
    stats = {"cached": len(plan.tasks), "computed": 0, "failed": 0, "errors": []}
    if n_cached < len(plan.tasks):
        with open_client(scheduler, scheduler_file, workers, spec.backend == "host") as client, \
                progress(total=len(plan.tasks), desc=f"sweep {spec.name}", unit="task",
                         enabled=progress_enabled) as bar:
            stats = run_tasks(client, plan.tasks, cache, bar=bar,
                              on_result=_points_done(plan, cache, bar))
    elapsed = time.time() - t0
    if stats["failed"]:
        for e in stats["errors"]:
            echo(f"  task failed: {e}")
        echo(f"sweep {spec.name}: {stats['failed']} of {len(plan.tasks)} tasks failed; "
             f"{stats['computed'] + stats['cached']} finished tasks are cached in {cache} "
             f"(rerun to retry the rest); no table written")
        return 2
    col = Collector()
    counts = write_tidy(plan, cache, table_dir, keep=col)
    if counts["missing_tasks"]:
        echo(f"sweep {spec.name}: {counts['missing_tasks']} results missing from {cache}")
        return 2
    result = analyse(plan, col)
    result.update(sweep=spec.name, spec=str(spec.path), backend=spec.backend,
                  fidelity=_fidelities(plan, cache), suite_version=plan.version,
                  tasks={"total": len(plan.tasks), "computed": stats["computed"],
                         "cached": stats["cached"]}, elapsed_s=round(elapsed, 2),
                  rows=counts["rows"])
    from bench.results import atomic_write_json
    atomic_write_json(table_dir / "conclusions.json", result)
    figures = []
    if plots:
        from bench.sweep.plots import write_plots
        figures = write_plots(plan, result, table_dir / "plots")
    from bench.sweep.report import write_report
    write_report(plan, result, table_dir, figures)
    for line in summary_lines(result):
        echo(line)
    echo(f"tasks: {stats['computed']} computed, {stats['cached']} cached, in {elapsed:.1f} s; "
         f"table: {table_dir}/tidy.parquet ({counts['rows']} rows, also tidy.csv)")
    echo(f"report: {table_dir}/report.md")
    return 0


def _points_done(plan, cache, bar):
    """A result callback that shows on the bar how many points are complete."""
    from bench.sweep.engine import cached
    from bench.sweep.plan import point_tasks
    left = {}
    owners: dict[str, list[int]] = {}
    for point, keys in point_tasks(plan).items():
        missing = {k for k in keys if not cached(cache, k)}
        left[point] = len(missing)
        for k in missing:
            owners.setdefault(k, []).append(point)
    total = len(left)
    state = {"done": sum(1 for n in left.values() if n == 0)}
    bar.set_postfix_str(f"points {state['done']}/{total}")

    def on_result(res):
        for point in owners.pop(res["key"], []):
            left[point] -= 1
            if left[point] == 0:
                state["done"] += 1
        bar.set_postfix_str(f"points {state['done']}/{total}")
    return on_result


def _fidelities(plan, cache) -> list[str]:
    from bench.sweep.engine import load_cached
    seen = set()
    for t in plan.tasks[:: max(1, len(plan.tasks) // 50)]:
        try:
            seen.add(load_cached(cache, t.key)["fidelity"])
        except (OSError, json.JSONDecodeError, KeyError):
            pass
    return sorted(seen)
