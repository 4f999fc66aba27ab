"""From a sweep spec to points and tasks: every point is resolved (workload loaded with its
overrides, cost profile with its overrides, model parameters checked) in the client before
anything runs, so a bad value stops the sweep with SPEC:LINE and no result is written.

A point is one workload at one assignment of the axes (or, for --sensitivity, of the
uncertain costs); its tasks are point x strategy x repetition.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.errors import InputError
from bench.sweep.spec import COST_PREFIX, SweepSpec, label_of
from bench.sweep.task import Task, resolve, suite_version, task_key


@dataclass
class Point:
    index: int
    workload: str
    columns: dict                 # axis column -> value (what the tidy table shows)
    overrides: dict               # workload-file overrides
    cost_overrides: dict
    kind: str = "axes"            # axes | baseline | oat | lhs (sensitivity)
    varied: str | None = None     # oat: the cost parameter varied
    config: dict = field(default_factory=dict)


@dataclass
class Plan:
    spec: SweepSpec
    points: list[Point]
    tasks: list[Task]
    columns: list[str]            # axis columns, in order
    uncertain: dict               # sensitivity: cost -> (low, high)
    sensitivity: bool
    version: str


def _split(assign: dict) -> tuple[dict, dict]:
    wl, cost = {}, {}
    for k, v in assign.items():
        if k.startswith(COST_PREFIX):
            cost[k[len(COST_PREFIX):]] = v
        else:
            wl[k] = v
    return wl, cost


def column_values(axis) -> list:
    """What the table shows for each value of an axis: numbers and strings as they are,
    other values (lists, tables, booleans) by their label."""
    return [v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else lab
            for v, lab in zip(axis.values, axis.labels)]


def _read_text(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        return None


def _lerp(lo, hi, u: float):
    if isinstance(lo, dict):
        return {k: _round(lo[k] + (hi[k] - lo[k]) * u) for k in lo}
    return _round(lo + (hi - lo) * u)


def _round(x: float):
    return float(f"{x:.6g}")


def cost_columns(key: str, value) -> dict:
    """Tidy-table columns of one cost value: cost.KEY, or cost.KEY.4k / cost.KEY.2m."""
    if isinstance(value, dict):
        return {f"cost.{key}.{s}": value[s] for s in value}
    return {f"cost.{key}": value}


def make_plan(spec: SweepSpec, sensitivity: bool = False) -> Plan:
    from bench.workload import _resolve as resolve_workload
    version = suite_version()
    assigns: list[tuple[dict, dict, str, str | None]] = []   # (key->value, columns, kind, varied)
    uncertain: dict = {}
    base_assign = dict(spec.fixed)
    for a in spec.axes:
        base_assign[a.key] = a.baseline
    if not sensitivity:
        for p in spec.points():
            assign = dict(spec.fixed)
            cols = {}
            for a in spec.axes:
                v = a.values[p[a.name]]
                assign[a.key] = v
                cols[a.name] = column_values(a)[p[a.name]]
            assigns.append((assign, cols, "axes", None))
    else:
        uncertain, in_force = _uncertain(spec)
        S = spec.sensitivity
        names = list(uncertain)
        base_cols = {a.name: column_values(a)[a.baseline_index] for a in spec.axes}
        for k in names:       # every point shows the value in force of every varied cost
            base_cols.update(cost_columns(k, in_force[k]))
        assigns.append((dict(base_assign), dict(base_cols), "baseline", None))
        for k in names:
            lo, hi = uncertain[k]
            for u in np.linspace(0.0, 1.0, S.levels):
                v = _lerp(lo, hi, float(u))
                assigns.append((dict(base_assign, **{COST_PREFIX + k: v}),
                                dict(base_cols, **cost_columns(k, v)), "oat", k))
        if S.samples and names:
            from scipy.stats import qmc
            sample = qmc.LatinHypercube(d=len(names), seed=S.seed).random(S.samples)
            for row in sample:
                assign, cols = dict(base_assign), dict(base_cols)
                for k, u in zip(names, row):
                    v = _lerp(*uncertain[k], float(u))
                    assign[COST_PREFIX + k] = v
                    cols.update(cost_columns(k, v))
                assigns.append((assign, cols, "lhs", None))
    workloads = spec.workloads
    profile_text = _read_text(spec.profile)
    points, tasks = [], []
    seen_keys: dict[str, int] = {}
    checked_axes = _check_axes(spec) if not sensitivity else None
    for wname in workloads:
        try:
            wfile = str(resolve_workload(wname))
        except InputError as e:
            spec.error(f"workload {wname!r}: {e}", "sweep", "workloads")
        wtext = _read_text(wfile)
        for assign, cols, kind, varied in assigns:
            wl_over, cost_over = _split(assign)
            try:
                wl, prof, config = resolve(wfile, wl_over, spec.quick, spec.seed, spec.profile,
                                           cost_over, spec.backend)
            except InputError as e:
                _blame(spec, assign, wname, e, checked_axes)
            pt = Point(index=len(points), workload=wname, columns=cols, overrides=wl_over,
                       cost_overrides=cost_over, kind=kind, varied=varied, config=config)
            points.append(pt)
            for s in spec.strategies:
                for r in range(spec.repetitions):
                    key = task_key(config, s, r, version)
                    if key in seen_keys:     # two points that resolve alike: run once
                        continue
                    seen_keys[key] = pt.index
                    tasks.append(Task(key=key, point=pt.index, workload=wname,
                                      workload_file=wfile, workload_text=wtext,
                                      overrides=tuple(sorted(wl_over.items(), key=lambda kv: kv[0])),
                                      cost_overrides=tuple(sorted(cost_over.items())),
                                      profile_file=spec.profile, profile_text=profile_text,
                                      strategy=s, repetition=r, seed=wl.seed,
                                      backend=spec.backend, quick=spec.quick,
                                      suite_version=version))
    columns = []
    for p in points:
        for c in p.columns:
            if c not in columns:
                columns.append(c)
    return Plan(spec=spec, points=points, tasks=tasks, columns=columns, uncertain=uncertain,
                sensitivity=sensitivity, version=version)


def point_tasks(plan: Plan) -> dict[int, list[str]]:
    """Point index -> keys of its tasks (shared keys included)."""
    out: dict[int, list[str]] = {p.index: [] for p in plan.points}
    for p in plan.points:
        for s in plan.spec.strategies:
            for r in range(plan.spec.repetitions):
                out[p.index].append(task_key(p.config, s, r, plan.version))
    return out


def _uncertain(spec: SweepSpec) -> dict:
    from bench.costs import load_profile
    prof = load_profile(spec.profile)
    unc = dict(getattr(prof, "uncertain", {}) or {})
    if not unc:
        spec.error("--sensitivity: the cost profile declares no [uncertain] ranges", "sweep")
    if spec.sensitivity.parameters:
        for k in spec.sensitivity.parameters:
            if k not in unc:
                spec.error(f"{k!r} is not an uncertain cost of the profile (uncertain: "
                           f"{', '.join(sorted(unc))})", "sensitivity", "parameters")
        unc = {k: unc[k] for k in spec.sensitivity.parameters}
    fixed = {k[len(COST_PREFIX):]: v for k, v in spec.fixed.items() if k.startswith(COST_PREFIX)}
    in_force = {k: fixed.get(k, prof.raw[k]) for k in unc}
    return {k: tuple(v) for k, v in unc.items()}, in_force


def _check_axes(spec: SweepSpec) -> dict:
    """Each axis value alone (others at their baseline) on every workload: a bad value is
    reported at its axis; two values that resolve to the same configuration mean the key has
    no effect there (e.g. a [quick] table replaces it), which is reported too."""
    from bench.workload import _resolve as resolve_workload
    for wname in spec.workloads:
        try:
            wfile = str(resolve_workload(wname))
        except InputError as e:
            spec.error(f"workload {wname!r}: {e}", "sweep", "workloads")
        base = dict(spec.fixed, **{a.key: a.baseline for a in spec.axes})
        for i, a in enumerate(spec.axes):
            seen = {}
            for v in a.values:
                wl_over, cost_over = _split(dict(base, **{a.key: v}))
                try:
                    _, _, config = resolve(wfile, wl_over, spec.quick, spec.seed, spec.profile,
                                           cost_over, spec.backend)
                except InputError as e:
                    spec.error(f"value {label_of(v)!r} on workload {wname!r}: {e}", "axis", i, "values")
                import json
                c = json.dumps(config, sort_keys=True)
                if c in seen:
                    spec.error(f"values {label_of(seen[c])!r} and {label_of(v)!r} give the same "
                               f"configuration of workload {wname!r}: key {a.key!r} has no effect "
                               f"there", "axis", i, "values")
                seen[c] = v
    return {}


def _blame(spec: SweepSpec, assign: dict, wname: str, e: InputError, _checked) -> None:
    point = ", ".join(f"{k}={label_of(v)}" for k, v in assign.items())
    spec.error(f"point ({point}) on workload {wname!r}: {e}", "sweep")
