"""One sweep task: a point x strategy x repetition, carrying everything it needs to run on
any worker (the workload and profile files' text, the overrides, the seed), and its key:
the SHA-256 of the fully resolved configuration (resolved workload, model parameters, cost
values in force, strategy and options, seed, repetition, backend, suite version).  Two
tasks with the same key compute the same thing, so a result stored under its key is reused
by any later sweep that contains it.

run_task() executes the repetition exactly as `gmembench run` does (bench.runner's
build_ops / repetition, bench.metrics' RepetitionRecord) and returns per-repetition metrics
for all conversions and per direction - what was measured (sim: charged by the model; host:
timed by the kernel), never samples.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import __version__

DIRECTIONS = ("to_shared", "to_private")


@functools.lru_cache(maxsize=1)
def suite_version() -> str:
    """Package version plus a digest of the installed code and data: a result computed by
    different code must not be reused, even if nobody bumped the version."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.suffix in (".py", ".c", ".h", ".toml") and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"


@dataclass(frozen=True)
class Task:
    key: str
    point: int                      # index of the point in the sweep
    workload: str                   # name as given in the spec
    workload_file: str
    workload_text: str
    overrides: tuple                # ((dotted key, value), ...) applied to the workload file
    cost_overrides: tuple           # ((cost key, value), ...)
    profile_file: str | None
    profile_text: str | None
    strategy: str
    repetition: int
    seed: int
    backend: str
    quick: bool
    suite_version: str

    def describe(self) -> dict:
        return {"workload": self.workload, "strategy": self.strategy,
                "repetition": self.repetition, "seed": self.seed, "backend": self.backend,
                "overrides": dict(self.overrides), "cost_overrides": dict(self.cost_overrides)}


def _jsonable(v):
    return json.loads(json.dumps(v, default=str, sort_keys=True))


def resolve(workload_file: str, overrides: dict, quick: bool, seed: int | None,
            profile_file: str | None, cost_overrides: dict, backend: str):
    """Load and validate one point (InputError on bad input): the workload, its seed, the
    profile (sim) and the configuration that goes into the key (strategy and repetition
    excluded: the caller adds them)."""
    from bench.workload import load_workload
    wl = load_workload(workload_file, quick=quick, overrides=overrides)
    if seed is not None:
        wl.seed = seed
    prof = None
    if backend == "sim":
        from bench.costs import load_profile
        prof = load_profile(profile_file, overrides=cost_overrides or None)
        from bench.sim.backend import model_parameters
        model_parameters(wl.layout, wl.params)
    d = wl.describe()
    d.pop("source", None)
    d.pop("name", None)          # a renamed copy of a workload computes the same thing
    d.pop("description", None)
    d.pop("repetitions", None)   # the sweep decides repetitions; each task is one of them
    for ph in d["phases"]:
        if "trace" in ph:        # a trace by content, not by where it lies
            ph["trace"] = hashlib.sha256(Path(ph["trace"]).read_bytes()).hexdigest()
    config = {"workload": d, "backend": backend, "seed": wl.seed,
              "costs": prof.raw if prof is not None else None}
    return wl, prof, _jsonable(config)


def task_key(config: dict, strategy: str, repetition: int, version: str) -> str:
    doc = dict(config, strategy=strategy, repetition=repetition, suite_version=version)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def _local_file(path: str | None, text: str | None, tmpdir: str, name: str) -> str | None:
    """The task's file on this worker: the original path if it holds the same text (keeps
    relative trace paths working), else a copy written into tmpdir."""
    if path is None or text is None:
        return path
    try:
        if Path(path).read_text(encoding="utf-8") == text:
            return path
    except OSError:
        pass
    out = Path(tmpdir) / name
    out.write_text(text, encoding="utf-8")
    return str(out)


def run_task(task: Task) -> dict:
    """Run one repetition of one strategy at one point; return its metrics."""
    from bench.metrics import RepetitionRecord, series_metrics
    from bench.runner import SERIES_POINTS, build_ops, repetition, repetition_in_worker
    from bench.strategies import make_strategy
    if task.suite_version != suite_version():
        raise RuntimeError(f"worker {socket.gethostname()} runs gmembench {suite_version()}, "
                           f"the sweep was planned with {task.suite_version}: install the same "
                           f"code on every worker")
    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="gmembench-task-")
    try:
        wfile = _local_file(task.workload_file, task.workload_text, tmp, "workload.toml")
        pfile = _local_file(task.profile_file, task.profile_text, tmp, "profile.toml")
        wl, prof, _ = resolve(wfile, dict(task.overrides), task.quick, task.seed, pfile,
                              dict(task.cost_overrides), task.backend)
        ops, _info = build_ops(wl, task.repetition)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    opts = dict(wl.strategy_options.get(task.strategy, {}))
    strategy = make_strategy(task.strategy, opts)
    steps = strategy.compile(ops, wl.layout)
    bparams = dict(wl.params)
    if prof is not None:
        bparams["_profile"] = prof
    bparams["seed"] = wl.seed
    points = int(bparams.get("series_points", SERIES_POINTS))
    if task.backend == "host":
        # as `gmembench run --backend host`: a discarded warm-up, then the measured
        # repetition in a fresh process
        for _ in range(int(bparams.get("warmup_repetitions", 1))):
            repetition(task.backend, wl.layout, strategy, bparams, ops, steps, points)
        run = repetition_in_worker if bparams.get("process_per_repetition", True) else repetition
    else:
        run = repetition
    out = run(task.backend, wl.layout, strategy, bparams, ops, steps, points)
    rec = RepetitionRecord(ops, steps, out["res"])
    series = out["series"]
    guest = wl.layout.guest_size
    series["hugepage_coverage"] = [h / guest for h in series["huge_bytes"]]
    summ = rec.summary()
    ns = out["res"]["ns"].astype(np.int64)
    flat = {
        "conversions": summ["conversions"],
        "failed_conversions": summ["failed_conversions"],
        **{f"latency_ns.{k}": v for k, v in summ["latency_ns"].items()},
        **{f"latency_per_4k_ns.{k}": v for k, v in summ["latency_per_4k_ns"].items()},
        "bytes_converted": rec.bytes_converted,
        "bytes_copied": rec.bytes_copied,
        "copy_time_ns": rec.copy_time_ns,
        "conversion_time_ns": rec.conversion_time_ns,
        "touch_time_ns": int(rec.touch_ns.sum()),
        "total_time_ns": int(ns.sum()),
        "clock_ns": int(series["t_ns"][-1] - series["t_ns"][0]),
        "huge_splits": int(series["huge_splits"][-1] - series["huge_splits"][0]),
        "huge_merges": int(series["huge_merges"][-1] - series["huge_merges"][0]),
        "wall_s": round(out["wall_s"], 4),
    }
    sm = series_metrics(series, guest)
    for group in ("footprint_bytes", "footprint_ratio", "hugepage_coverage"):
        for k, v in sm[group].items():
            flat[f"{group}.{k}"] = v
    dirs = {}
    for d, vals in (summ.get("directions") or {}).items():
        dirs[d] = {}
        for k, v in vals.items():
            if isinstance(v, dict):
                dirs[d].update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                dirs[d][k] = v
    if prof is not None:
        fidelity = "simulated"
    else:
        from bench.runner import fidelity_label
        fidelity = fidelity_label(out["fidelity_steps"], steps)
    return {"key": task.key, "suite_version": task.suite_version, "task": task.describe(),
            "backend": task.backend, "fidelity": fidelity, "hostname": socket.gethostname(),
            "pid": os.getpid(), "task_s": round(time.perf_counter() - t0, 4),
            "metrics": {"all": _jsonable(flat), **_jsonable(dirs)}}
