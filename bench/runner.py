"""gmembench run: drive workloads under both strategies on one backend, measure with
bench/metrics.py, and write results/<run-id>/ (results.json, samples.npz, report).

Both strategies of a repetition replay the same op array (generated once from the
workload's seed), and repetitions interleave the strategies (A B A B ...) so that slow
drifts of a real host hit both alike.
"""
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench import __version__, interrupts
from bench.backend import open_target
from bench.errors import InputError
from bench.accounting import attribute_touches, merge_step_breakdowns
from bench.fragmentation import fragmentation_summary
from bench.metrics import RepetitionRecord, aggregate
from bench.progress import add_progress_arguments, progress
from bench.provenance import provenance
from bench.results import SCHEMA, atomic_write_json, atomic_write_npz
from bench.strategies import STRATEGIES, make_strategy

SERIES_POINTS = 200
SERIES_KEYS = ("t_ns", "footprint_bytes", "huge_bytes", "huge_splits", "huge_merges")
# snapshot fields of the huge-page measures (bench/backend.py); absent on backends that
# cannot read them
OPTIONAL_SERIES_KEYS = ("stage2_bytes", "host_pmd_mapped_bytes", "intact_huge_folios",
                        "huge_folios_possible", "mapping_demotions", "folio_splits",
                        "folio_merges")


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
    # optional snapshot fields (huge-page measures) are recorded when the backend has them
    keys = SERIES_KEYS + tuple(k for k in OPTIONAL_SERIES_KEYS if k in snap)
    series = {"op_index": [0], "time_ns": [now()]}
    for key in keys:
        series[key] = [snap[key]]
    for k in range(len(bounds) - 1):
        a, b = int(bounds[k]), int(bounds[k + 1])
        if a == b and k:
            continue
        interrupts.check()
        results.append(target.execute(steps[a:b]))
        snap = target.snapshot()
        series["op_index"].append(min(n_ops, (k + 1) * chunk))
        for key in keys:
            series[key].append(snap.get(key))
        series["time_ns"].append(now())
        if bar is not None:
            bar.update(min(n_ops, (k + 1) * chunk) - min(n_ops, k * chunk))
    series["nr_free"] = snap["nr_free"]
    series["not_measurable"] = dict(snap.get("not_measurable") or {})
    final = getattr(target, "final_state", None)
    series["final"] = final() if final else {"zones": {"model": list(snap["nr_free"])},
                                             "allocatable_huge": snap.get("allocatable_huge"),
                                             "pageblocks": snap.get("pageblocks")
                                             or target.metadata().get("pageblocks")}
    res = np.concatenate(results) if results else np.zeros(0, dtype=target.execute(steps[:0]).dtype)
    return res, series


def steps_used(steps: np.ndarray, probes: bool) -> list[str]:
    """The fidelity keys (bench/host/probe.py) of the steps a run executed: the step name,
    "/guest" for guest accesses, and "host-access-fault" when the host probed private
    pages, so labels name only what actually ran."""
    from bench.ops import Step, Via
    used = set()
    pairs = np.unique(steps["code"].astype(np.int64) << 8 | steps["via"].astype(np.int64))
    for code, via in ((int(k) >> 8, int(k) & 0xFF) for k in pairs):
        name = Step(code).name
        if via == Via.GUEST and code in (Step.READ, Step.WRITE):
            name += "/guest"
        used.add(name)
    if probes:
        used.add("host-access-fault")
    return sorted(used)


def ops_probe(ops) -> bool:
    """Whether an op stream probes private pages from the host."""
    from bench.ops import OpKind
    return bool((ops["kind"] == OpKind.SHARED_PROBE).any())


def merge_breakdowns(items: list[dict]) -> dict:
    """Primitive breakdowns of several repetitions summed, largest time first."""
    tot: dict = {}
    for bd in items:
        for k, v in bd.items():
            t = tot.setdefault(k, {"count": 0, "ns": 0})
            t["count"] += int(v["count"])
            t["ns"] += int(v["ns"])
    return dict(sorted(tot.items(), key=lambda kv: -kv[1]["ns"]))


def repetition(backend, layout, strategy, params, ops, steps, points=SERIES_POINTS) -> dict:
    """One repetition on a fresh target: results, series, and what the backend reports."""
    interrupts.check()
    target = open_target(backend, layout, strategy, params)
    try:
        t0 = time.perf_counter()
        res, series = execute_repetition(target, ops, steps, None, points)
        return {"res": res, "series": series, "wall_s": time.perf_counter() - t0,
                "fidelity_steps": target.fidelity(), "breakdown": target.breakdown(),
                "metadata": target.metadata()}
    finally:
        target.close()


def _worker_main(conn, args) -> None:
    """A spawned repetition worker: dies with its parent (PR_SET_PDEATHSIG), restores what
    it changed on SIGTERM/SIGHUP/SIGINT (sysfs handlers), sends back its result or error."""
    _die_with_parent()
    for sig in (signal.SIGTERM, signal.SIGHUP):     # the parent stops a worker with SIGTERM
        signal.signal(sig, interrupts.on_signal)
    try:
        out = ("ok", repetition(*args))
    except BaseException as e:     # the parent re-raises it (InputError stays one line)
        out = ("error", e)
    try:
        try:
            conn.send(out)
        except (OSError, EOFError):
            pass                   # the parent is gone or stopped listening
        except Exception as e:     # an unpicklable error: send its text
            conn.send(("error", RuntimeError(f"{type(out[1]).__name__}: {out[1]} ({e})")))
    except (OSError, EOFError):
        pass
    finally:
        conn.close()


def _die_with_parent() -> None:
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)      # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:          # the parent is already gone
        raise SystemExit(128 + signal.SIGTERM)


def repetition_in_worker(*args) -> dict:
    """repetition() in a new process (spawned, so nothing of this one is inherited).  If
    this process is interrupted, the worker is stopped (SIGTERM: it restores its settings)
    and waited for, then killed; a worker that dies without an answer is an error."""
    import multiprocessing
    interrupts.check()
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker_main, args=(send, args), daemon=True)
    try:
        # whole: a start cut short by a signal would leave a worker reading half its
        # arguments (and printing a traceback) that nobody stops
        with interrupts.uninterrupted():
            proc.start()
        send.close()
        while not recv.poll(0.2):
            if not proc.is_alive() and not recv.poll(0):
                raise RuntimeError(f"repetition worker (pid {proc.pid}) died with exit code "
                                   f"{proc.exitcode} without a result")
        status, value = recv.recv()
        proc.join(10)
    except BaseException:
        if proc.pid is not None and proc.is_alive():
            proc.terminate()
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        raise
    finally:
        send.close()
        recv.close()
    if status == "error":
        raise value
    return value


def run_suite(workloads: list[str], strategies: list[str] | None = None, backend: str = "sim",
              params: dict | None = None, out_dir=None, quick: bool = False,
              progress_enabled: bool | None = None, profile: str | None = None,
              repetitions: int | None = None, seed: int | None = None,
              strategy_options: dict | None = None, report: bool = True,
              cost_overrides: dict | None = None, jobs: int = 1) -> Path:
    """Run and write a results directory; returns its path.  Everything is validated
    before the first op runs, and the directory appears only when complete.
    cost_overrides: {cost key: value} replacing single values of the simulator's profile
    (bench.costs.load_profile)."""
    from bench import output
    from bench.params import check_params, check_run
    from bench.workload import load_workload
    # a strategy or workload named twice runs once (same file) or is refused (two files
    # with one name: results, samples and plots are keyed by name)
    strategies = list(dict.fromkeys(strategies or list(STRATEGIES)))
    for s in strategies:
        make_strategy(s)
    loaded, by_name = [], {}
    for w in workloads:
        wl = load_workload(w, quick=quick)
        first = by_name.get(wl.name)
        if first is not None:
            if Path(first.source).resolve() == Path(wl.source).resolve():
                continue
            raise InputError(f"two workloads are named {wl.name!r} ({first.source} and "
                             f"{wl.source}): results are keyed by name; rename one "
                             f"([workload] name)")
        by_name[wl.name] = wl
        loaded.append(wl)

    def bad_param(key, msg):
        raise InputError(f"--param {key}: {msg}")
    params = check_params(dict(params or {}), backend, True, bad_param)
    for wl in loaded:
        check_run(wl, {**wl.params, **params}, backend)
    prof = None
    if backend == "sim":
        from bench.costs import load_profile
        prof = load_profile(profile, cost_overrides)
        params["_profile"] = prof
    elif cost_overrides:
        raise InputError("--cost: cost overrides apply to the simulator only (--backend sim)")
    out, tmp = output.claim(out_dir, backend)
    interrupts.forget()
    try:
        # a host run changes host settings and measures the host: one at a time
        if backend == "host":
            from bench.host.state import host_lock
            lock = host_lock()
        else:
            import contextlib
            lock = contextlib.nullcontext()
        with lock:
            doc = _run(loaded, strategies, backend, params, prof, quick, progress_enabled,
                       repetitions, seed, strategy_options or {}, tmp, jobs)
            interrupts.check()        # never results of a run that was told to stop
    except BaseException:
        output.discard(tmp)       # interrupted or failed: this run's own partial directory
        raise
    samples = doc.pop("_samples", None)
    doc["run_id"] = out.name

    def write(d: Path) -> None:
        if samples:
            atomic_write_npz(d / "samples.npz", samples)
        atomic_write_json(d / "results.json", doc)
    out = output.finish(tmp, out, write)
    if report:
        try:
            from bench.report.report import write_report
        except ModuleNotFoundError:
            write_report = None
        if write_report:
            try:
                write_report(out, jobs=jobs)
            except OSError as e:      # the results are complete; the report can be rebuilt
                print(f"gmembench: warning: report not written ({e.strerror or e}); the "
                      f"results are complete in {out}: run `gmembench report {out}` later",
                      file=sys.stderr)
    return out


def _simulator_pool(backend: str, jobs: int):
    """Worker processes for simulator repetitions, or None (run them here).  The simulator
    is deterministic and each repetition builds its own target from its arguments, so
    where it runs changes nothing it returns but its wall_s.  The host backend never runs
    repetitions side by side: they would disturb each other's timings."""
    from bench.parallel import fork_pool
    return fork_pool(jobs) if backend == "sim" else None


def _strategy_for(wl, sname, cli_options):
    opts = dict(wl.strategy_options.get(sname, {}))
    opts.update(cli_options.get(sname, {}))
    return make_strategy(sname, opts)


def _backend_params(wl, params) -> dict:
    bparams = dict(wl.params)
    bparams.update(params)
    bparams["seed"] = wl.seed
    return bparams


def _compiled(wl, sname, cli_options, params, ops):
    """One strategy's steps for an op stream and what its backend needs to run them:
    (strategy, steps, backend parameters, series points)."""
    strategy = _strategy_for(wl, sname, cli_options)
    steps = strategy.compile(ops, wl.layout)
    bparams = _backend_params(wl, params)
    return strategy, steps, bparams, int(bparams.get("series_points", SERIES_POINTS))


def _measured(ops, steps, attribution, out, rep) -> dict:
    """What the run keeps of one measured repetition: its record (latencies, time
    accounting) and what the backend reported, without the per-step results."""
    return {"rec": RepetitionRecord(ops, steps, out["res"], attribution),
            "out": {k: v for k, v in out.items() if k != "res"},
            "steps": steps if rep == 0 else None, "n_ops": len(ops),
            "probes": ops_probe(ops) if rep == 0 else None}


# The simulator run's plan, set before the pool's workers are forked, so that they inherit
# the workloads, parameters and first op streams instead of receiving them through pipes
# (under a lock: two runs started from two threads must not swap plans).
_PLAN: dict = {}
_PLAN_LOCK = threading.Lock()


def _sim_repetition_job(w: int, rep: int) -> tuple[dict, dict]:
    """Repetition `rep` of workload `w` of _PLAN, whole, in a pool worker: its op stream
    (generated here), which direction induced each touch, every strategy compiled, run
    and measured.  Returns ({strategy: _measured()}, the op stream's phase info)."""
    p = _PLAN
    wl, ops0 = p["plans"][w][0], p["first_ops"][w]
    ops, info = ops0 if rep == 0 else build_ops(wl, rep)
    attribution = attribute_touches(ops)
    out = {}
    for sname in p["strategies"]:
        strategy, steps, bparams, points = _compiled(wl, sname, p["cli_options"], p["params"],
                                                     ops)
        res = repetition(p["backend"], wl.layout, strategy, bparams, ops, steps, points)
        out[sname] = _measured(ops, steps, attribution, res, rep)
    return out, info


def _run(loaded, strategies, backend, params, prof, quick, progress_enabled, repetitions,
         seed, cli_options, tmp, jobs=1) -> dict:
    global _PLAN
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
    first_ops = [build_ops(wl, 0) for wl, _ in plans]       # reused by repetition 0
    total = sum(len(o[0]) * reps * len(strategies) for o, (wl, reps) in zip(first_ops, plans))
    with _PLAN_LOCK:
        _PLAN = {"plans": plans, "first_ops": first_ops, "strategies": strategies,
                 "cli_options": cli_options, "params": params, "backend": backend}
        try:
            pool = _simulator_pool(backend, jobs)
        finally:
            _PLAN = {}           # the workers have their copy
    with pool or contextlib.nullcontext(), \
            progress(total=total, desc="gmembench", unit="op", enabled=progress_enabled) as bar:
        def submit(w, wl, reps, ops0):
            """Run a workload's repetitions, or queue them on the pool; returns what
            collects them and adds the workload's runs."""
            recs = {s: [] for s in strategies}
            serieses = {s: [] for s in strategies}
            info = {}
            extras = {}
            # On real hardware the first iteration pays lazy initialisation and page
            # reporting (first-touch and cold-cache effects): run it, discard it.
            warmups = int({**wl.params, **params}.get("warmup_repetitions",
                                                      1 if backend == "host" else 0))
            breakdowns = {s: [] for s in strategies}
            pending = []      # parallel simulator repetitions, collected in order

            def finish(rep, sname, isolate, m):
                out, rec = m["out"], m["rec"]
                bar.update(m["n_ops"])
                breakdowns[sname].append(out["breakdown"])
                rec.wall_s = out["wall_s"]
                recs[sname].append(rec)
                serieses[sname].append(out["series"])
                samples[f"{wl.name}/{sname}/rep{rep}"] = rec.latency_ns
                samples[f"{wl.name}/{sname}/rep{rep}/direction"] = rec.direction
                if rep == 0:
                    extras[sname] = {"strategy": _strategy_for(wl, sname, cli_options),
                                     "steps": m["steps"], "probes": m["probes"],
                                     **{k: out[k] for k in ("fidelity_steps", "breakdown",
                                                            "metadata")}}
                    extras[sname]["metadata"]["process_per_repetition"] = isolate
                    scale = extras[sname]["metadata"].get("scale", 1) or 1
                    if backend == "host" and float(scale) > 1:
                        print(f"gmembench: {wl.name} {sname}: the host memory guard scaled this "
                              f"run down by {scale} to fit MemAvailable (offsets and sizes "
                              f"divided; see the run's labels)", file=sys.stderr)

            if pool is not None and not warmups:
                # the simulator: each repetition whole in a worker
                for rep in range(reps):
                    pending.append((rep, pool.submit(_sim_repetition_job, w, rep)))
            else:
                for rep in range(-warmups, reps):
                    ops, info = build_ops(wl, max(rep, 0)) if rep or ops0 is None else ops0
                    ops0 = None
                    # which direction induced each touch: from the op stream, once per stream
                    attribution = attribute_touches(ops) if rep >= 0 else None
                    for sname in strategies:
                        strategy, steps, bparams, points = _compiled(wl, sname, cli_options,
                                                                     params, ops)
                        bar.set_description(f"{wl.name} {sname} " + (
                            f"rep {rep + 1}/{reps}" if rep >= 0 else "warm-up"))
                        args = (backend, wl.layout, strategy, bparams, ops, steps, points)
                        if rep < 0:
                            repetition(*args)
                            continue
                        # On real hardware each measured repetition runs in a fresh process
                        # (pyperf's worker model): run-to-run variance lives largely in the
                        # process (memory placement), and only per-process values show it.
                        isolate = backend == "host" and bool(bparams.get("process_per_repetition",
                                                                         True))
                        out = (repetition_in_worker if isolate else repetition)(*args)
                        finish(rep, sname, isolate, _measured(ops, steps, attribution, out, rep))

            def complete():
                nonlocal info
                for rep, fut in pending:
                    bar.set_description(f"{wl.name} rep {rep + 1}/{reps}")
                    by_strategy, info = fut.result()
                    for sname in strategies:
                        finish(rep, sname, False, by_strategy[sname])
                for sname in strategies:
                    extras[sname]["breakdown"] = merge_breakdowns(breakdowns[sname])
                    runs.append(_run_entry(wl, sname, backend, recs[sname], serieses[sname],
                                           extras[sname], prof, quick, info))
                    runs[-1]["warmup_repetitions"] = warmups
            return complete

        # every workload's repetitions are queued before any is collected, so the pool's
        # workers do not wait for this process between workloads; without a pool submit()
        # runs them and complete() only collects
        completions = [submit(w, wl, reps, ops0)
                       for w, ((wl, reps), ops0) in enumerate(zip(plans, first_ops))]
        for complete in completions:
            complete()
    elapsed = time.time() - t_start
    return {
        "_samples": samples,      # written with results.json, when the run is complete
        "schema": SCHEMA,
        "run_id": None,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
        "command": ["gmembench"] + sys.argv[1:],
        "host": host_facts(),
        "provenance": provenance(),
        "elapsed_s": round(elapsed, 3),
        "runs": runs,
    }


def _run_entry(wl, sname, backend, recs, serieses, extra, prof, quick, info) -> dict:
    guest = wl.layout.guest_size
    for s in serieses:
        s["hugepage_coverage"] = [h / guest for h in s["huge_bytes"]]
    metrics = aggregate(recs, serieses, [{"nr_free": s["nr_free"]} for s in serieses], guest)
    per_rep = []
    hp = metrics["huge_pages"]
    for r, s in zip(recs, serieses):
        fp = np.asarray(s["footprint_bytes"])
        d = r.summary()
        d["footprint_bytes"] = {"peak": int(fp.max()), "mean": float(fp.mean())}
        d["huge_splits"] = int(s["huge_splits"][-1] - s["huge_splits"][0])
        d["huge_merges"] = int(s["huge_merges"][-1] - s["huge_merges"][0])
        for c in ("mapping_demotions", "folio_splits", "folio_merges"):
            v = s.get(c)
            d[c] = None if hp.get(c) is None else int(v[-1] - v[0])
        d["wall_s"] = round(r.wall_s, 4)
        per_rep.append(d)
    # a measure the host reads only once, at the end (smaps perturbs timing)
    fin = [s["final"].get("host_pmd_mapped_bytes") for s in serieses]
    if hp.get("host_pmd_mapped_share") is None and fin and None not in fin:
        hp["host_pmd_mapped_share"] = {"start": None, "end": float(np.mean(fin)) / guest,
                                       "min": None}
        hp["not_measurable"].pop("host_pmd_mapped_share", None)
    final = serieses[-1]["final"]
    metrics["fragmentation"] = {
        "zones": fragmentation_summary(final.get("zones") or {}),
        "pageblocks": final.get("pageblocks"),
        "allocatable_huge": final.get("allocatable_huge"),
        "notes": final.get("notes") or {},
    }
    metrics["step_breakdown"] = merge_step_breakdowns([r.step_breakdown for r in recs])
    s0 = serieses[0]
    meta = extra["metadata"]
    return {
        "key": f"{wl.name}/{sname}",
        "workload": wl.name, "workload_file": str(wl.source), "description": wl.description,
        "strategy": sname, "strategy_options": extra["strategy"].describe()["options"],
        "backend": backend,
        "fidelity": "simulated" if backend == "sim" else fidelity_label(extra["fidelity_steps"], extra["steps"]),
        "fidelity_steps": extra["fidelity_steps"],
        "steps_used": steps_used(extra["steps"], extra["probes"]),
        "layout": wl.layout.to_dict(), "params": {k: v for k, v in wl.params.items()},
        "seed": wl.seed, "scale": float(meta.get("scale", wl.scale)), "quick": quick,
        "cost_profile": prof.describe() if prof else None,
        "repetitions": len(recs),
        "metrics": metrics,
        "per_rep": per_rep,
        "series": {k: s0[k] for k in ("op_index", "t_ns", "time_ns", "footprint_bytes",
                                     "hugepage_coverage", "huge_splits", "huge_merges")
                   + OPTIONAL_SERIES_KEYS if k in s0},
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


def _share(v, why=""):
    if v is None:
        return "n/a" if why.startswith("not applicable") else "n/m"
    return f"{100 * v['end']:.0f}%"


def comparison_table(doc: dict) -> str:
    """The console headline: per workload x strategy x direction the conversions, failures,
    latency and the time accounting (ms per repetition), then who wins and why; a second
    table with memory and huge-page state.  '*' marks runs with emulated steps."""
    from bench.report.headline import (DIR_LABEL, DIRS, emulated_steps, fmt_x, winner_text,
                                       workload_headlines)
    from bench.report.report import fmt_ns
    head = (f"{'workload':<16} {'strategy':<10} {'direction':<10} {'conv':>7} {'fail':>5} "
            f"{'p50':>8} {'p99':>8} {'conv/run':>9} {'induc/run':>9} {'total/run':>9}")
    lines = [head, "-" * len(head)]
    notes = []
    for h in workload_headlines(doc):
        first = True
        for sname, r in h["runs"].items():
            m = r["metrics"]
            reps = max(1, r.get("repetitions") or 1)
            mark = "*" if emulated_steps(r) else ""
            if mark:
                notes.append(f"* {r['key']}: emulated steps {', '.join(emulated_steps(r))}")
            for i, d in enumerate(DIRS):
                dd = (m.get("directions") or {}).get(d) or {}
                lat = dd.get("latency_ns") or {}
                lines.append(
                    f"{(h['workload'][:16] if first else ''):<16} "
                    f"{((sname + mark) if i == 0 else ''):<10} {DIR_LABEL[d]:<10} "
                    f"{dd.get('conversions', 0):>7} {dd.get('failed_conversions', 0):>5} "
                    f"{fmt_ns(lat.get('p50')):>8} {fmt_ns(lat.get('p99')):>8} "
                    f"{fmt_ns(dd.get('conversion_time_ns', 0) / reps):>9} "
                    f"{fmt_ns(dd.get('induced_time_ns', 0) / reps):>9} "
                    f"{fmt_ns(dd.get('total_time_ns', 0) / reps):>9}")
                first = False
            fc, fa, errs = h["failures"][sname]
            if fc or fa or errs:
                lines.append(f"{'':16} !! {sname}: {fc} failed conversion(s), {fa} failed "
                             f"access(es): {errs or 'no errno recorded'}")
        rt = h["ratios"]
        if rt:
            tot, conv = rt[("all", "total")][0], rt[("all", "conversion")][0]
            per_dir = ", ".join(f"{DIR_LABEL[d]} {fmt_x(rt[(d, 'total')][0])}" for d in DIRS)
            lines.append(f"{'':16} => total time: {winner_text(tot)} (dual/in-place "
                         f"{fmt_x(tot)}; {per_dir}); conversion only: {winner_text(conv)}"
                         f"{h['caveat']}")
            if h["top"]:
                lines.append(f"{'':16}    most of the difference (dual - in-place, per run): "
                             + ", ".join(f"{k} {'+' if v > 0 else '-'}{fmt_ns(abs(v))}"
                                         for k, v in h["top"]))
    lines.append("")
    lines.append("conv/induc/total per run: time per repetition spent in conversions / in "
                 "the accesses they caused later / both (bench/accounting.py); p50/p99: "
                 "conversion latency")
    lines += sorted(set(notes))
    return "\n".join(lines) + "\n\n" + memory_table(doc)


def memory_table(doc: dict) -> str:
    """Footprint, the three huge-page measures (end of run; n/m: not measurable on this
    backend), mapping demotions vs physical splits/merges, unusable index at 2M."""
    head = (f"{'workload':<16} {'strategy':<9} {'fp.peak':>7} {'s2.huge':>7} {'pmd.map':>7} "
            f"{'intact':>7} {'demote':>7} {'splits':>7} {'merges':>7} {'unus.o9':>7}")
    lines = [head, "-" * len(head)]
    for r in doc["runs"]:
        m = r["metrics"]
        hp = m.get("huge_pages") or {}
        nm = hp.get("not_measurable") or {}

        def cnt(k):
            return "n/m" if hp.get(k) is None else f"{hp[k]:.0f}"
        lines.append(
            f"{r['workload'][:16]:<16} {r['strategy']:<9} {m['footprint_ratio']['peak']:>7.3f} "
            f"{_share(hp.get('stage2_huge_share')):>7} {_share(hp.get('host_pmd_mapped_share')):>7} "
            f"{_share(hp.get('intact_huge_folio_share'), nm.get('intact_huge_folio_share', '')):>7} "
            f"{cnt('mapping_demotions'):>7} "
            f"{cnt('folio_splits'):>7} {cnt('folio_merges'):>7} "
            f"{m['unusable_index']['order9']:>7.3f}")
    lines.append("fp.peak: host memory / guest memory; s2.huge: guest memory mapped huge in "
                 "stage 2; pmd.map: shared memory PMD-mapped by the host; intact: intact huge "
                 "folios (all at the end of the run); demote/splits/merges: per repetition; n/m: not "
                 "measurable on this backend, n/a: no huge folio size in this layout")
    return "\n".join(lines)


def explain_table(doc: dict) -> str:
    """What each run's time is made of, over all repetitions: by step (operations and 4K
    pages) per direction and conversion/induced, then by cost-model primitive."""
    out = []
    for r in doc["runs"]:
        reps = r.get("repetitions") or 1
        out.append(f"\n{r['key']} ({r['fidelity']}): where the time went, all {reps} "
                   "repetition(s)")
        sb = (r["metrics"].get("step_breakdown") or {})
        out.append(f"  {'direction':<11} {'part':<10} {'step':<15} {'steps (ops)':>11} "
                   f"{'4K pages':>11} {'total ms':>10}")
        for d, parts in sb.items():
            for part, steps in parts.items():
                for k, v in sorted(steps.items(), key=lambda kv: -kv[1]["ns"]):
                    out.append(f"  {d:<11} {part:<10} {k:<15} {v['steps']:>11} {v['pages']:>11} "
                               f"{v['ns'] / 1e6:>10.2f}")
        total = sum(v["ns"] for v in r["breakdown"].values()) or 1
        from bench.report.headline import primitive_unit
        out.append(f"  {'primitive':<22} {'count':>10} {'unit':<14} {'total ms':>10} {'share':>6}")
        for k, v in r["breakdown"].items():
            out.append(f"  {k:<22} {v['count']:>10} {primitive_unit(k, r['backend']):<14} "
                       f"{v['ns'] / 1e6:>10.2f} {100 * v['ns'] / total:>5.1f}%")
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
    p.add_argument("--jobs", "-j", type=int, metavar="N",
                   help="processes for simulator repetitions and report figures (default: "
                        "the CPUs available; results do not depend on it; the host backend "
                        "always runs one repetition at a time)")
    add_progress_arguments(p)


def cli_run(args) -> int:
    from bench.parallel import cpus_available
    from bench.costs import parse_cost_value
    from bench.params import MAX_REPETITIONS, MAX_SEED, check_value, cli_options, cli_params
    from bench.workload import DEFAULT_SUITE, STRATEGY_OPTIONS
    # every command-line value is checked here, before any workload file is read or run
    params = cli_params(args.param, args.backend)
    options = cli_options(args.option, STRATEGY_OPTIONS)
    check_value("--seed", args.seed, 0, MAX_SEED)
    check_value("--repetitions", args.repetitions, 1, MAX_REPETITIONS)
    if args.profile is not None and args.backend != "sim":
        raise InputError(f"--profile: a cost profile drives the simulator only; the "
                         f"{args.backend} backend measures real costs (drop --profile)")
    if args.jobs is not None and args.jobs < 1:
        raise InputError("--jobs must be >= 1")
    costs = {}
    for it in args.cost:
        if "=" not in it:
            raise InputError(f"--cost {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        costs[k.strip()] = parse_cost_value(v)
    if costs and args.backend != "sim":
        raise InputError("--cost: cost overrides drive the simulator only; the "
                         f"{args.backend} backend measures real costs (drop --cost)")
    out = run_suite(args.workload or DEFAULT_SUITE, args.strategy, args.backend, params, args.out,
                    args.quick, args.progress, args.profile, args.repetitions, args.seed,
                    options, report=not args.no_report, cost_overrides=costs or None,
                    jobs=args.jobs or cpus_available())
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
