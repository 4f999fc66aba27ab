"""Sweep files: which workloads, strategies and axes a sweep covers (TOML; schema in
sweeps/README.md).  Every mistake is an InputError naming the spec file and the line of
the offending key, as for workload files; a value that makes a workload, a model parameter
or a cost invalid is reported at the line of that axis.

    [sweep]
    name = "folio-size"
    workloads = ["dma-churn"]          # names or .toml files (relative to this file)
    strategies = ["in-place", "dual"]
    repetitions = 3
    mode = "grid"                      # or "one-at-a-time"
    set = { "params.prefragment" = 0.2 }   # fixed overrides of every point

    [[axis]]
    key = "layout.gmem_page_size"      # a workload key, params.*, strategy.*.*, or cost.*
    values = ["4k", "2m", "1g"]
"""
from __future__ import annotations

import itertools
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import InputError
from bench.workload import TomlLines, _fmt_path

SWEEP_KEYS = {"name", "description", "workloads", "strategies", "backend", "repetitions",
              "seed", "quick", "mode", "profile", "set"}
AXIS_KEYS = {"key", "name", "values", "labels", "baseline"}
SENSITIVITY_KEYS = {"levels", "samples", "seed", "parameters", "workloads"}
TOP_KEYS = {"sweep", "axis", "sensitivity"}
MODES = ("grid", "one-at-a-time")
# workload-file tables an axis may reach (the rest of a workload file is not a knob)
WORKLOAD_TABLES = ("layout", "phase", "params", "strategy", "workload")
COST_PREFIX = "cost."
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Axis:
    key: str                  # "cost.X" or a dotted workload key
    name: str                 # its column in the tidy table
    values: list
    labels: list[str]
    baseline_index: int = 0
    line: int | None = None
    value_lines: list = field(default_factory=list)

    @property
    def is_cost(self) -> bool:
        return self.key.startswith(COST_PREFIX)

    @property
    def baseline(self):
        return self.values[self.baseline_index]


@dataclass
class Sensitivity:
    levels: int = 3           # values per uncertain parameter, low..high, one at a time
    samples: int = 8          # Latin-hypercube points over all uncertain parameters at once
    seed: int = 0
    parameters: list[str] | None = None   # None: every uncertain parameter of the profile
    line: int | None = None


@dataclass
class SweepSpec:
    name: str
    description: str
    path: Path
    workloads: list[str]
    strategies: list[str]
    backend: str
    repetitions: int
    seed: int | None
    quick: bool
    mode: str
    profile: str | None
    fixed: dict               # key -> value set on every point
    axes: list[Axis]
    sensitivity: Sensitivity
    lines: TomlLines

    def line(self, *path) -> int | None:
        return self.lines.line(path)

    def error(self, message: str, *path):
        where = _fmt_path(path)
        raise InputError(f"{where}: {message}" if where else message, str(self.path),
                         self.lines.line(path))

    def points(self) -> list[dict]:
        """Axis assignments {axis name: value index}: the grid, or one axis at a time away
        from the baseline (the baseline point once)."""
        if not self.axes:
            return [{}]
        if self.mode == "grid":
            return [dict(zip([a.name for a in self.axes], combo))
                    for combo in itertools.product(*[range(len(a.values)) for a in self.axes])]
        base = {a.name: a.baseline_index for a in self.axes}
        out = [dict(base)]
        for a in self.axes:
            for i in range(len(a.values)):
                if i != a.baseline_index:
                    out.append(dict(base, **{a.name: i}))
        return out


def _read(path: Path) -> tuple[dict, TomlLines]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read sweep file: {e.strerror}", str(path))
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", str(path))
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        raise InputError(f"not valid TOML: {re.sub(r' *[(]at line.*[)]', '', str(e))}",
                         str(path), int(m.group(1)) if m else None)
    return doc, TomlLines(text)


def sweep_dirs() -> list[Path]:
    """Where sweep names are looked up: ./sweeps, then the packaged copy."""
    import importlib
    dirs = [Path.cwd() / "sweeps"]
    try:
        mod = importlib.import_module("bench.sweeps_data")
        dirs += [Path(d) for d in getattr(mod, "__path__", [])]
    except ModuleNotFoundError:
        pass
    dirs.append(Path(__file__).resolve().parent.parent.parent / "sweeps")
    return [d for d in dirs if d.is_dir()]


def list_sweeps() -> list[Path]:
    seen, out = set(), []
    for d in sweep_dirs():
        for f in sorted(d.glob("*.toml")):
            if f.stem not in seen:
                try:
                    if "sweep" not in tomllib.loads(f.read_text(encoding="utf-8")):
                        continue
                except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
                    continue
                seen.add(f.stem)
                out.append(f)
    return out


def resolve_spec_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or os.sep in name_or_path or p.is_file():
        if not p.is_file():
            raise InputError("sweep file not found", str(p))
        return p
    for d in sweep_dirs():
        if (d / f"{name_or_path}.toml").is_file():
            return d / f"{name_or_path}.toml"
    known = ", ".join(f.stem for f in list_sweeps())
    raise InputError(f"unknown sweep {name_or_path!r} (known: {known or 'none'}; or give a .toml file)")


def load_spec(name_or_path: str) -> SweepSpec:
    """Read and check a sweep file's own structure.  Whether each point makes a valid
    workload, parameter set and cost profile is checked by bench.sweep.task.plan()."""
    path = resolve_spec_path(name_or_path)
    doc, lines = _read(path)
    spec = SweepSpec(name=path.stem, description="", path=path, workloads=[], strategies=[],
                     backend="sim", repetitions=3, seed=None, quick=False, mode="grid",
                     profile=None, fixed={}, axes=[], sensitivity=Sensitivity(), lines=lines)
    if "sweep" not in doc:
        raise InputError("not a sweep file: it has no [sweep] table", str(path), 1)
    for k in doc:
        if k not in TOP_KEYS:
            spec.error(f"unknown key {k!r} (expected one of: {', '.join(sorted(TOP_KEYS))})", k)
    sw = doc["sweep"]
    if not isinstance(sw, dict):
        spec.error("expected a table", "sweep")
    for k in sw:
        if k not in SWEEP_KEYS:
            spec.error(f"unknown key {k!r} (expected one of: {', '.join(sorted(SWEEP_KEYS))})", "sweep", k)
    P = ("sweep",)

    def string(key, default=None, choices=None):
        v = sw.get(key, default)
        if not isinstance(v, str):
            spec.error(f"expected a string, got {v!r}", *P, key)
        if choices and v not in choices:
            spec.error(f"expected one of {', '.join(map(repr, choices))}, got {v!r}", *P, key)
        return v

    def integer(key, default, minimum):
        v = sw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            spec.error(f"expected an integer >= {minimum}, got {v!r}", *P, key)
        return v

    name = string("name", path.stem)
    if not NAME_RE.match(name):
        spec.error(f"expected a name of letters, digits, '_', '-', '.', got {name!r}", *P, "name")
    spec.name = name
    spec.description = string("description", "")
    wls = sw.get("workloads")
    if isinstance(wls, str):
        wls = [wls]
    if not isinstance(wls, list) or not wls or not all(isinstance(w, str) for w in wls):
        spec.error("expected a list of workload names or files", *P, *(("workloads",) if "workloads" in sw else ()))
    spec.workloads = [_relative(path, w) for w in wls]
    from bench.strategies import STRATEGIES
    strats = sw.get("strategies", list(STRATEGIES))
    if not isinstance(strats, list) or not strats:
        spec.error("expected a list of strategies", *P, "strategies")
    for s in strats:
        if s not in STRATEGIES:
            spec.error(f"unknown strategy {s!r} (expected one of: {', '.join(STRATEGIES)})", *P, "strategies")
    spec.strategies = list(dict.fromkeys(strats))
    spec.backend = string("backend", "sim", ("sim", "host"))
    spec.repetitions = integer("repetitions", 3, 1)
    spec.seed = integer("seed", 0, 0) if "seed" in sw else None
    q = sw.get("quick", False)
    if not isinstance(q, bool):
        spec.error(f"expected true or false, got {q!r}", *P, "quick")
    spec.quick = q
    spec.mode = string("mode", "grid", MODES)
    if "profile" in sw:
        spec.profile = _relative(path, string("profile"), must_exist=True, spec=spec, where=P + ("profile",))
    fixed = sw.get("set", {})
    if not isinstance(fixed, dict):
        spec.error("expected a table of KEY = VALUE", *P, "set")
    for k in fixed:
        _check_key(spec, k, P + ("set", k))
    spec.fixed = dict(fixed)

    raw_axes = doc.get("axis", [])
    if not isinstance(raw_axes, list):
        spec.error("expected [[axis]] tables", "axis")
    names = set()
    for i, ax in enumerate(raw_axes):
        A = ("axis", i)
        if not isinstance(ax, dict):
            spec.error("expected a table", *A)
        for k in ax:
            if k not in AXIS_KEYS:
                spec.error(f"unknown key {k!r} (expected one of: {', '.join(sorted(AXIS_KEYS))})", *A, k)
        key = ax.get("key")
        if not isinstance(key, str):
            spec.error("missing key 'key' (a workload key such as \"layout.gmem_page_size\", "
                       "\"params.prefragment\", \"strategy.dual.copy\", or \"cost.NAME\")", *A)
        _check_key(spec, key, A + ("key",))
        if key in spec.fixed:
            spec.error(f"{key!r} is also fixed in [sweep] set", *A, "key")
        aname = ax.get("name", key)
        if not isinstance(aname, str) or not NAME_RE.match(aname):
            spec.error(f"expected a column name of letters, digits, '_', '-', '.', got {aname!r}", *A, "name")
        if aname in names or aname in RESERVED_COLUMNS:
            spec.error(f"axis name {aname!r} is used twice or is a column of the table", *A, "name")
        names.add(aname)
        values = ax.get("values")
        if not isinstance(values, list) or len(values) < 1:
            spec.error("expected values = [ ... ] with at least one value", *A, *(("values",) if "values" in ax else ()))
        reprs = [_canon(v) for v in values]
        if len(set(reprs)) != len(reprs):
            spec.error("the same value appears twice", *A, "values")
        labels = ax.get("labels")
        if labels is None:
            labels = [label_of(v) for v in values]
        elif (not isinstance(labels, list) or len(labels) != len(values)
              or not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels)):
            spec.error(f"expected {len(values)} distinct strings, one per value", *A, "labels")
        base = 0
        if "baseline" in ax:
            if _canon(ax["baseline"]) not in reprs:
                spec.error(f"baseline {ax['baseline']!r} is not one of the values", *A, "baseline")
            base = reprs.index(_canon(ax["baseline"]))
        spec.axes.append(Axis(key=key, name=aname, values=list(values), labels=list(labels),
                              baseline_index=base, line=lines.line(A + ("values",))))

    sens = doc.get("sensitivity", {})
    if not isinstance(sens, dict):
        spec.error("expected a table", "sensitivity")
    S = ("sensitivity",)
    for k in sens:
        if k not in SENSITIVITY_KEYS:
            spec.error(f"unknown key {k!r} (expected one of: {', '.join(sorted(SENSITIVITY_KEYS))})", *S, k)
    st = Sensitivity(line=lines.line(S))
    for k, lo in (("levels", 2), ("samples", 0), ("seed", 0)):
        if k in sens:
            v = sens[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                spec.error(f"expected an integer >= {lo}, got {v!r}", *S, k)
            setattr(st, k, v)
    if "parameters" in sens:
        v = sens["parameters"]
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            spec.error("expected a list of uncertain cost names", *S, "parameters")
        st.parameters = list(v)
    spec.sensitivity = st
    return spec


RESERVED_COLUMNS = {"sweep", "workload", "strategy", "direction", "repetition", "metric", "value",
                    "unit", "backend", "fidelity", "seed", "key", "point", "hostname"}


def _check_key(spec: SweepSpec, key, where):
    if not isinstance(key, str) or not key:
        spec.error("expected a dotted key", *where)
    if key.startswith(COST_PREFIX):
        if len(key) == len(COST_PREFIX):
            spec.error("expected cost.NAME", *where)
        return
    if key.split(".")[0] not in WORKLOAD_TABLES or "." not in key:
        spec.error(f"key {key!r}: expected cost.NAME or a key inside a workload file's "
                   f"{', '.join('[' + t + ']' for t in WORKLOAD_TABLES)} table", *where)


def _relative(spec_path: Path, name: str, must_exist=False, spec=None, where=()) -> str:
    """A file named relative to the spec file, else the name as given (a workload name)."""
    cand = spec_path.parent / name
    if not os.path.isabs(name) and (name.endswith(".toml") or os.sep in name) and cand.is_file():
        return str(cand)
    if must_exist and not Path(name).is_file():
        spec.error(f"file {name!r} not found (looked next to the sweep file and in {os.getcwd()})", *where)
    return name


def _canon(v) -> str:
    import json
    return json.dumps(v, sort_keys=True)


def label_of(v) -> str:
    """A short text for a value (lists joined, booleans as TOML writes them)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "+".join(label_of(x) for x in v)
    if isinstance(v, dict):
        return ",".join(f"{k}:{label_of(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
