"""gmembench run: drive workloads under both strategies on one backend, measure with
bench/metrics.py, and write results/<run-id>/ (results.json, samples.npz, report).

Both strategies of a repetition replay the same op array (generated once from the
workload's seed), and repetitions interleave the strategies (A B A B ...) so that slow
drifts of a real host hit both alike.
"""
import datetime as dt
import os
import platform
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np

from bench import __version__
from bench.backend import open_target
from bench.errors import InputError
from bench.metrics import RepetitionRecord, aggregate
from bench.progress import add_progress_arguments, progress
from bench.results import SCHEMA, atomic_write_json, atomic_write_npz
from bench.strategies import STRATEGIES, make_strategy

SERIES_POINTS = 200


def host_facts() -> dict:
    def read(p):
        try:
            return Path(p).read_text().strip()
        except OSError:
            return None
    cpu = None
    info = read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": cpu or platform.processor() or "unknown",
        "cpus": os.cpu_count(),
        "page_size": os.sysconf("SC_PAGE_SIZE"),
        "python": platform.python_version(),
        "thp": {"enabled": read("/sys/kernel/mm/transparent_hugepage/enabled"),
                "shmem_enabled": read("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
                "defrag": read("/sys/kernel/mm/transparent_hugepage/defrag")},
        "hugetlb": {"nr_hugepages": read("/proc/sys/vm/nr_hugepages")},
    }


def build_ops(workload, rep: int) -> tuple[np.ndarray, dict]:
    """The op stream of one repetition (every phase, repeated, timed parts shifted so
    time only goes forward) and what the phases reported (e.g. trace replay counts)."""
    ops, infos = workload.ops(repetition=rep)
    info = {f"{i['phase']}#{i['repeat']}" if i.get("repeat") else str(i["phase"]): i
            for i in infos}
    return ops, info


def fidelity_label(fid_steps: dict, steps: np.ndarray) -> str:
    from bench.ops import Step
    used = {Step(c).name for c in np.unique(steps["code"])}
    labels = {fid_steps.get(n, "unavailable") for n in used}
    return labels.pop() if len(labels) == 1 else "mixed(" + "+".join(sorted(labels)) + ")"


def execute_repetition(target, ops, steps, bar=None, points: int = SERIES_POINTS) -> tuple[np.ndarray, dict]:
    """Execute in chunks, snapshotting between chunks for the time series (`points`
    snapshots per repetition: on the host each one reads /proc, so short workloads may
    want fewer)."""
    n_ops = len(ops)
    chunk = max(1, -(-n_ops // max(1, points)))
    bounds = np.searchsorted(steps["op"], np.arange(0, n_ops + chunk, chunk))
    results = []
    if hasattr(target, "set_arrivals"):      # the simulator: ops arrive at their t_ns
        target.set_arrivals(ops["t_ns"])
    t0 = time.monotonic_ns()

    def now() -> int:
        # simulated time on the simulator, measured time since the start on the host
        return int(target.clock_ns) if hasattr(target, "clock_ns") else time.monotonic_ns() - t0

    snap = target.snapshot()
    series = {"op_index": [0], "t_ns": [snap["t_ns"]], "time_ns": [now()],
              "footprint_bytes": [snap["footprint_bytes"]],
              "huge_bytes": [snap["huge_bytes"]], "huge_splits": [snap["huge_splits"]],
              "huge_merges": [snap["huge_merges"]]}
    for k in range(len(bounds) - 1):
        a, b = int(bounds[k]), int(bounds[k + 1])
        if a == b and k:
            continue
        results.append(target.execute(steps[a:b]))
        snap = target.snapshot()
        series["op_index"].append(min(n_ops, (k + 1) * chunk))
        for key in ("t_ns", "footprint_bytes", "huge_bytes", "huge_splits", "huge_merges"):
            series[key].append(snap[key])
        series["time_ns"].append(now())
        if bar is not None:
            bar.update(min(n_ops, (k + 1) * chunk) - min(n_ops, k * chunk))
    series["nr_free"] = snap["nr_free"]
    res = np.concatenate(results) if results else np.zeros(0, dtype=target.execute(steps[:0]).dtype)
    return res, series


def repetition(backend, layout, strategy, params, ops, steps, points=SERIES_POINTS) -> dict:
    """One repetition on a fresh target: results, series, and what the backend reports."""
    target = open_target(backend, layout, strategy, params)
    try:
        t0 = time.perf_counter()
        res, series = execute_repetition(target, ops, steps, None, points)
        return {"res": res, "series": series, "wall_s": time.perf_counter() - t0,
                "fidelity_steps": target.fidelity(), "breakdown": target.breakdown(),
                "metadata": target.metadata()}
    finally:
        target.close()


def repetition_in_worker(*args) -> dict:
    """repetition() in a new process (spawned, so nothing of this one is inherited)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                             max_tasks_per_child=1) as ex:
        return ex.submit(repetition, *args).result()


def run_suite(workloads: list[str], strategies: list[str] | None = None, backend: str = "sim",
              params: dict | None = None, out_dir=None, quick: bool = False,
              progress_enabled: bool | None = None, profile: str | None = None,
              repetitions: int | None = None, seed: int | None = None,
              strategy_options: dict | None = None, report: bool = True,
              cost_overrides: dict | None = None) -> Path:
    """Run and write a results directory; returns its path.  Everything is validated
    before the first op runs, and the directory appears only when complete.
    cost_overrides: {cost key: value} replacing single values of the simulator's profile
    (bench.costs.load_profile)."""
    from bench.workload import load_workload
    strategies = strategies or list(STRATEGIES)
    for s in strategies:
        make_strategy(s)
    loaded = [load_workload(w, quick=quick) for w in workloads]
    params = dict(params or {})
    prof = None
    if backend == "sim":
        from bench.costs import load_profile
        prof = load_profile(profile, cost_overrides)
        params["_profile"] = prof
    elif cost_overrides:
        raise InputError("--cost: cost overrides apply to the simulator only (--backend sim)")
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S") + f"-{backend}"
    out = Path(out_dir) if out_dir else Path("results") / run_id
    if out.exists() and any(out.iterdir()):
        raise InputError(f"results directory {out} exists and is not empty")
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        doc = _run(loaded, strategies, backend, params, prof, quick, progress_enabled,
                   repetitions, seed, strategy_options or {}, tmp)
        doc["run_id"] = out.name
        atomic_write_json(tmp / "results.json", doc)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if report:
        try:
            from bench.report.report import write_report
        except ModuleNotFoundError:
            write_report = None
        if write_report:
            write_report(out)
    return out


def _run(loaded, strategies, backend, params, prof, quick, progress_enabled, repetitions,
         seed, cli_options, tmp) -> dict:
    runs, samples = [], {}
    total = 0
    plans = []
    for wl in loaded:
        reps = repetitions or wl.repetitions
        s = wl.seed if seed is None else seed
        wl.seed = s
        plans.append((wl, reps))
    t_start = time.time()
    # one bar over every op of every measured run, so its rate and time left cover the
    # whole suite (repetitions of a workload have streams of the same length)
    total = sum(len(build_ops(wl, 0)[0]) * reps * len(strategies) for wl, reps in plans)
    with progress(total=total, desc="gmembench", unit="op", enabled=progress_enabled) as bar:
        for wl, reps in plans:
            recs = {s: [] for s in strategies}
            serieses = {s: [] for s in strategies}
            info = {}
            extras = {}
            # On real hardware the first iteration pays lazy initialisation and page
            # reporting (host-costs.md traps 1-2): run it, discard it.
            warmups = int(params.get("warmup_repetitions", 1 if backend == "host" else 0))
            for rep in range(-warmups, reps):
                ops, info = build_ops(wl, max(rep, 0))
                for sname in strategies:
                    opts = dict(wl.strategy_options.get(sname, {}))
                    opts.update(cli_options.get(sname, {}))
                    strategy = make_strategy(sname, opts)
                    steps = strategy.compile(ops, wl.layout)
                    bparams = dict(wl.params)
                    bparams.update(params)
                    bparams["seed"] = wl.seed
                    bar.set_description(f"{wl.name} {sname} "
                                        + (f"rep {rep + 1}/{reps}" if rep >= 0 else "warm-up"))
                    points = int(bparams.get("series_points", SERIES_POINTS))
                    if rep < 0:
                        repetition(backend, wl.layout, strategy, bparams, ops, steps, points)
                        continue
                    # On real hardware each measured repetition runs in a fresh process
                    # (pyperf's worker model): run-to-run variance lives largely in the
                    # process (memory placement), and only per-process values show it.
                    isolate = backend == "host" and bool(bparams.get("process_per_repetition", True))
                    out = (repetition_in_worker if isolate else repetition)(
                        backend, wl.layout, strategy, bparams, ops, steps, points)
                    bar.update(len(ops))
                    res, series = out["res"], out["series"]
                    rec = RepetitionRecord(ops, steps, res)
                    rec.wall_s = out["wall_s"]
                    recs[sname].append(rec)
                    serieses[sname].append(series)
                    samples[f"{wl.name}/{sname}/rep{rep}"] = rec.latency_ns
                    samples[f"{wl.name}/{sname}/rep{rep}/direction"] = rec.direction
                    if rep == 0:
                        extras[sname] = {"strategy": strategy, "steps": steps,
                                         **{k: out[k] for k in ("fidelity_steps", "breakdown",
                                                                "metadata")}}
                        extras[sname]["metadata"]["process_per_repetition"] = isolate
            for sname in strategies:
                runs.append(_run_entry(wl, sname, backend, recs[sname], serieses[sname],
                                       extras[sname], prof, quick, info))
                runs[-1]["warmup_repetitions"] = warmups
    elapsed = time.time() - t_start
    if samples:
        atomic_write_npz(tmp / "samples.npz", samples)
    return {
        "schema": SCHEMA,
        "run_id": None,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
        "command": ["gmembench"] + sys.argv[1:],
        "host": host_facts(),
        "elapsed_s": round(elapsed, 3),
        "runs": runs,
    }


def _run_entry(wl, sname, backend, recs, serieses, extra, prof, quick, info) -> dict:
    guest = wl.layout.guest_size
    for s in serieses:
        s["hugepage_coverage"] = [h / guest for h in s["huge_bytes"]]
    metrics = aggregate(recs, serieses, [{"nr_free": s["nr_free"]} for s in serieses], guest)
    per_rep = []
    for r, s in zip(recs, serieses):
        fp = np.asarray(s["footprint_bytes"])
        d = r.summary()
        d["footprint_bytes"] = {"peak": int(fp.max()), "mean": float(fp.mean())}
        d["huge_splits"] = int(s["huge_splits"][-1] - s["huge_splits"][0])
        d["huge_merges"] = int(s["huge_merges"][-1] - s["huge_merges"][0])
        d["wall_s"] = round(r.wall_s, 4)
        per_rep.append(d)
    s0 = serieses[0]
    meta = extra["metadata"]
    return {
        "key": f"{wl.name}/{sname}",
        "workload": wl.name, "workload_file": str(wl.source), "description": wl.description,
        "strategy": sname, "strategy_options": extra["strategy"].describe()["options"],
        "backend": backend,
        "fidelity": "simulated" if backend == "sim" else fidelity_label(extra["fidelity_steps"], extra["steps"]),
        "fidelity_steps": extra["fidelity_steps"],
        "layout": wl.layout.to_dict(), "params": {k: v for k, v in wl.params.items()},
        "seed": wl.seed, "scale": float(meta.get("scale", wl.scale)), "quick": quick,
        "cost_profile": prof.describe() if prof else None,
        "repetitions": len(recs),
        "metrics": metrics,
        "per_rep": per_rep,
        "series": {k: s0[k] for k in ("op_index", "t_ns", "time_ns", "footprint_bytes", "hugepage_coverage",
                                     "huge_splits", "huge_merges")},
        "breakdown": extra["breakdown"],
        "phases": info,
        "trace": {k: v for k, v in info.items() if "lines" in v} or None,
        "metadata": meta,
        "timing": {"wall_s": [round(r.wall_s, 4) for r in recs]},
    }


# ---- console output ------------------------------------------------------------------
def _us(ns):
    return "-" if ns is None else f"{ns / 1000:.1f}"


def _mib(b):
    return f"{b / (1 << 20):.0f}"


def comparison_table(doc: dict) -> str:
    head = (f"{'workload':<16} {'strategy':<9} {'conv':>8} {'fail':>5} {'p50us':>8} {'p99us':>8} "
            f"{'copiedMiB':>9} {'fp.peak':>7} {'cov.end':>7} {'splits':>7}")
    lines = [head, "-" * len(head)]
    for r in doc["runs"]:
        m = r["metrics"]
        lines.append(
            f"{r['workload'][:16]:<16} {r['strategy']:<9} {m['conversions']:>8} {m['failed_conversions']:>5} "
            f"{_us(m['latency_ns']['p50']):>8} {_us(m['latency_ns']['p99']):>8} "
            f"{_mib(m['bytes_copied']):>9} {m['footprint_ratio']['peak']:>7.3f} "
            f"{m['hugepage_coverage']['end']:>7.3f} {m['huge_splits']:>7}")
    return "\n".join(lines)


def explain_table(doc: dict) -> str:
    out = []
    for r in doc["runs"]:
        total = sum(v["ns"] for v in r["breakdown"].values()) or 1
        out.append(f"\n{r['key']} ({r['fidelity']}): where the time went")
        out.append(f"  {'primitive':<22} {'count':>10} {'total ms':>10} {'share':>6}")
        for k, v in r["breakdown"].items():
            out.append(f"  {k:<22} {v['count']:>10} {v['ns'] / 1e6:>10.2f} {100 * v['ns'] / total:>5.1f}%")
    return "\n".join(out)


def add_run_arguments(p) -> None:
    p.add_argument("--workload", "-w", action="append", metavar="NAME|FILE",
                   help="workload name (see `gmembench workloads`) or TOML file; repeatable "
                        "(default: the default suite)")
    p.add_argument("--strategy", "-s", action="append", choices=list(STRATEGIES),
                   help="strategy to run; repeatable (default: both)")
    p.add_argument("--backend", "-b", choices=["sim", "host"], default="sim",
                   help="sim: the simulator (default); host: this machine's kernel")
    p.add_argument("--quick", action="store_true", help="scaled-down variant of each workload (same shape)")
    p.add_argument("--profile", metavar="FILE", help="cost profile TOML for the simulator (default: built in)")
    p.add_argument("--cost", action="append", default=[], metavar="KEY=VALUE",
                   help="replace one cost of the simulator's profile: ns, {4k = ns, 2m = ns}, "
                        "KEY.4k=ns, or low / high (the end of the key's documented range); "
                        "repeatable")
    p.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                   help="backend parameter, e.g. host_memory=64G prefragment=0.3 (repeatable)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="STRATEGY.KEY=VALUE",
                   help="strategy option, e.g. dual.copy=yes, dual.discard=no, in-place.promote=no")
    p.add_argument("--seed", type=int, help="override the workloads' seed")
    p.add_argument("--repetitions", "-r", type=int, help="override the workloads' repetitions")
    p.add_argument("--out", metavar="DIR", help="results directory (default results/<run-id>)")
    p.add_argument("--explain", action="store_true", help="print what each run's time is made of")
    p.add_argument("--no-report", action="store_true", help="skip report.md, plots and pyperf files")
    add_progress_arguments(p)


def _value(v: str):
    low = v.lower()
    if low in ("yes", "true", "on"):
        return True
    if low in ("no", "false", "off"):
        return False
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def _kv(items, what):
    out = {}
    for it in items:
        if "=" not in it:
            raise InputError(f"{what} {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        out[k.strip()] = _value(v.strip())
    return out


def cli_run(args) -> int:
    from bench.costs import parse_cost_value
    from bench.workload import DEFAULT_SUITE
    params = _kv(args.param, "--param")
    options: dict = {}
    for k, v in _kv(args.option, "--option").items():
        if "." not in k:
            raise InputError(f"--option {k}: expected STRATEGY.KEY=VALUE")
        s, key = k.split(".", 1)
        if s not in STRATEGIES:
            raise InputError(f"--option {k}: unknown strategy {s!r}")
        options.setdefault(s, {})[key] = v
    if args.repetitions is not None and args.repetitions < 1:
        raise InputError("--repetitions must be >= 1")
    costs = {}
    for it in args.cost:
        if "=" not in it:
            raise InputError(f"--cost {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        costs[k.strip()] = parse_cost_value(v)
    out = run_suite(args.workload or DEFAULT_SUITE, args.strategy, args.backend, params, args.out,
                    args.quick, args.progress, args.profile, args.repetitions, args.seed,
                    options, report=not args.no_report, cost_overrides=costs or None)
    from bench.results import load_results
    doc = load_results(out)
    print(comparison_table(doc))
    if args.explain:
        print(explain_table(doc))
    print(f"\nresults: {out}/results.json  (backend {args.backend}, "
          f"{'simulated' if args.backend == 'sim' else 'see fidelity per run'})")
    if (out / "report.md").exists():
        print(f"report:  {out}/report.md")
    return 0
