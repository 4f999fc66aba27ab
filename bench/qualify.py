"""`gmembench qualify [SPEC]`: hardware qualification.  Run the workloads a spec names on
this machine (or read an existing results dir with --results) and check each limit.

Exit 0: every check passed.  1: at least one failed.  2: bad spec or bad input
(FILE:LINE: message).

Spec (TOML; the default is workloads/qualify-default.toml, which documents every key):

    [qualify]
    name = "default"                 # shown in the verdict
    backend = "host"                 # sim | host; every run must have this backend
    workloads = ["swiotlb-boot"]     # names or files, as `gmembench run -w`
    strategies = ["in-place", "dual"]
    quick = true                     # scaled-down workloads
    repetitions = 3                  # optional override
    params = { }                     # optional backend params (as `run -p KEY=VALUE`)
    require_fidelity = ["native"]    # optional: run fidelity must be one of these
    accept_emulated = false          # optional: true, or a list of step names, to qualify
                                     # runs whose steps were emulated (default: they fail)

    [[check]]
    name = "p99 conversion latency"  # optional, defaults to the metric
    metric = "latency_ns.p99"        # a path into results.json runs[].metrics
    max = 500                        # or min = ..., equals = ..., equals_metric = "..."
    unit = "us"                      # unit of the limit: ns us ms s | B KiB MiB GiB | % ; optional
    workload = "*"                   # optional glob over workload names
    strategy = "in-place"            # optional glob over strategy names

A check applies to every run its globs match; each (check, run) pair gets one verdict with
the measured value and the limit.  verdict.json (written atomically into the results dir,
or --verdict FILE) holds them all.
"""
import argparse
import datetime as dt
import fnmatch
import math
import re
import tomllib
from pathlib import Path

from bench.errors import InputError
from bench.results import atomic_write_json, load_results
from bench.progress import add_progress_arguments

VERDICT_SCHEMA = "gmembench-verdict/1"

# metric paths results.json promises (bench/results.py); a check naming anything else is a
# spec error, not a failing check
KNOWN_METRICS = {
    "conversions", "failed_conversions", "bytes_converted", "bytes_copied", "copy_time_ns",
    "latency_ns.p50", "latency_ns.p90", "latency_ns.p99", "latency_ns.max", "latency_ns.mean",
    "latency_ns.min", "latency_ns.stdev", "latency_per_4k_ns.p50", "latency_per_4k_ns.mean",
    "touch_ns.total", "touch_ns.p50", "footprint_bytes.peak", "footprint_bytes.mean",
    "footprint_ratio.peak", "footprint_ratio.mean", "hugepage_coverage.start",
    "hugepage_coverage.end", "hugepage_coverage.min", "huge_splits", "huge_merges",
    "unusable_index.order9", "unusable_index.order10", "checks.content_pages_checked",
    "failed_accesses", "time_ns.conversion", "time_ns.induced", "time_ns.total",
    *(f"directions.{d}.{m}" for d in ("to_shared", "to_private")
      for m in ("conversions", "failed_conversions", "conversion_time_ns", "induced_time_ns",
                "total_time_ns", "latency_ns.p50", "latency_ns.p99", "latency_ns.max")),
    "checks.content_mismatch_pages", "checks.sigbus_expected", "checks.sigbus_seen",
    "checks.unexpected_sigbus", "wall_s",
}
TIME_UNITS = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}
BYTE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
RATIO_UNITS = {"%": 0.01}
QUALIFY_KEYS = {"name", "description", "backend", "workloads", "strategies", "quick",
                "repetitions", "params", "require_fidelity", "seed", "accept_emulated"}
CHECK_KEYS = {"name", "metric", "max", "min", "equals", "equals_metric", "unit", "workload",
              "strategy", "why"}
OPS = ("max", "min", "equals", "equals_metric")


def default_spec_path() -> Path:
    """qualify-default.toml of the installed workloads (bench.workloads_data)."""
    from bench.workload import packaged_file
    return packaged_file("qualify-default.toml")


# --- spec ------------------------------------------------------------------------------

class _Lines:
    """Line numbers of keys and [[check]] headers, for FILE:LINE errors."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.check_headers = [i + 1 for i, ln in enumerate(self.lines)
                              if re.match(r"^\s*\[\[\s*check\s*\]\]", ln)]
        self.qualify_header = next((i + 1 for i, ln in enumerate(self.lines)
                                    if re.match(r"^\s*\[\s*qualify\s*\]", ln)), None)

    def key_in(self, start: int | None, key: str) -> int | None:
        """First line at or after `start` (1-based) that assigns `key`, before the next table."""
        if start is None:
            return None
        for i in range(start, len(self.lines)):
            ln = self.lines[i]
            if re.match(r"^\s*\[", ln):
                break
            if re.match(rf"^\s*{re.escape(key)}\s*=", ln):
                return i + 1
        return start

    def check(self, index: int, key: str | None = None) -> int | None:
        if index >= len(self.check_headers):
            return None
        head = self.check_headers[index]
        return self.key_in(head, key) if key else head


def _unit_factor(metric: str, unit: str | None, file: str, line: int | None) -> float:
    if unit is None:
        return 1.0
    if metric.endswith("_ns") or "_ns." in metric or metric.startswith("latency"):
        table = TIME_UNITS
    elif metric.endswith("bytes") or "bytes." in metric or metric.startswith("bytes"):
        table = BYTE_UNITS
    elif metric.startswith(("footprint_ratio", "hugepage_coverage", "unusable_index")):
        table = RATIO_UNITS
    elif metric == "wall_s":
        table = {"s": 1.0, "ms": 1e-3}
    else:
        table = {}
    if unit not in table:
        allowed = ", ".join(table) or "none (a count)"
        raise InputError(f"unit {unit!r} does not fit metric {metric!r} (allowed: {allowed})",
                         file, line)
    return float(table[unit])


def load_spec(path) -> dict:
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("qualification spec not found", file)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read spec: {e}", file)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        raise InputError(f"not valid TOML: {str(e).split(' (at line')[0]}", file,
                         int(m.group(1)) if m else None)
    lines = _Lines(text)
    for k in doc:
        if k not in ("qualify", "check"):
            raise InputError(f"unknown table {k!r} (expected [qualify] and [[check]])", file)
    q = doc.get("qualify")
    if not isinstance(q, dict):
        raise InputError("missing [qualify] table", file)
    qline = lines.qualify_header
    for k in q:
        if k not in QUALIFY_KEYS:
            raise InputError(f"unknown key {k!r} in [qualify] (known: "
                             f"{', '.join(sorted(QUALIFY_KEYS))})", file, lines.key_in(qline, k))
    backend = q.get("backend", "host")
    if backend not in ("host", "sim"):
        raise InputError(f"backend must be 'host' or 'sim', got {backend!r}", file,
                         lines.key_in(qline, "backend"))
    workloads = q.get("workloads")
    if (not isinstance(workloads, list) or not workloads
            or not all(isinstance(w, str) and w for w in workloads)):
        raise InputError("workloads must be a non-empty list of workload names", file,
                         lines.key_in(qline, "workloads") if "workloads" in q else qline)
    strategies = q.get("strategies", ["in-place", "dual"])
    if (not isinstance(strategies, list) or not strategies
            or any(s not in ("in-place", "dual") for s in strategies)):
        raise InputError("strategies must be a non-empty list of 'in-place' / 'dual'", file,
                         lines.key_in(qline, "strategies"))
    if not isinstance(q.get("quick", False), bool):
        raise InputError("quick must be true or false", file, lines.key_in(qline, "quick"))
    reps = q.get("repetitions")
    if reps is not None and (not isinstance(reps, int) or isinstance(reps, bool) or reps < 1):
        raise InputError("repetitions must be an integer >= 1", file,
                         lines.key_in(qline, "repetitions"))
    if not isinstance(q.get("params", {}), dict):
        raise InputError("params must be a table", file, lines.key_in(qline, "params"))
    fids = q.get("require_fidelity")
    if fids is not None and (not isinstance(fids, list) or not all(isinstance(f, str) for f in fids)):
        raise InputError("require_fidelity must be a list of fidelity labels", file,
                         lines.key_in(qline, "require_fidelity"))

    acc = q.get("accept_emulated", False)
    if not (isinstance(acc, bool) or (isinstance(acc, list) and all(isinstance(x, str) for x in acc))):
        raise InputError("accept_emulated must be true, false or a list of step names", file,
                         lines.key_in(qline, "accept_emulated"))

    raw_checks = doc.get("check", [])
    if not isinstance(raw_checks, list) or not raw_checks:
        raise InputError("no [[check]] in the spec: nothing to qualify", file)
    checks = []
    for i, c in enumerate(raw_checks):
        for k in c:
            if k not in CHECK_KEYS:
                raise InputError(f"unknown key {k!r} in check {i + 1} (known: "
                                 f"{', '.join(sorted(CHECK_KEYS))})", file, lines.check(i, k))
        metric = c.get("metric")
        if metric not in KNOWN_METRICS:
            raise InputError(f"check {i + 1}: unknown metric {metric!r} (known: "
                             f"{', '.join(sorted(KNOWN_METRICS))})", file,
                             lines.check(i, "metric") if "metric" in c else lines.check(i))
        ops = [op for op in OPS if op in c]
        if len(ops) != 1:
            raise InputError(f"check {i + 1}: give exactly one of {', '.join(OPS)}", file,
                             lines.check(i))
        op = ops[0]
        limit = c[op]
        if op == "equals_metric":
            if limit not in KNOWN_METRICS:
                raise InputError(f"check {i + 1}: unknown metric {limit!r} in equals_metric",
                                 file, lines.check(i, op))
            if "unit" in c:
                raise InputError(f"check {i + 1}: unit makes no sense with equals_metric",
                                 file, lines.check(i, "unit"))
        elif isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit):
            raise InputError(f"check {i + 1}: {op} must be a number", file, lines.check(i, op))
        unit = c.get("unit")
        factor = _unit_factor(metric, unit, file, lines.check(i, "unit"))
        for g in ("workload", "strategy"):
            if g in c and not (isinstance(c[g], str) and c[g]):
                raise InputError(f"check {i + 1}: {g} must be a glob string", file,
                                 lines.check(i, g))
        wglob = c.get("workload", "*")
        if not any(fnmatch.fnmatchcase(Path(w).stem, wglob) for w in workloads):
            raise InputError(f"check {i + 1}: workload {wglob!r} matches none of the spec's "
                             f"workloads ({', '.join(workloads)})", file, lines.check(i, "workload"))
        sglob = c.get("strategy", "*")
        if not any(fnmatch.fnmatchcase(s, sglob) for s in strategies):
            raise InputError(f"check {i + 1}: strategy {sglob!r} matches none of "
                             f"{', '.join(strategies)}", file, lines.check(i, "strategy"))
        checks.append({"name": c.get("name", metric), "metric": metric, "op": op,
                       "limit": limit, "unit": unit, "factor": factor, "workload": wglob,
                       "strategy": sglob, "why": c.get("why"), "line": lines.check(i)})
    return {"path": file, "name": q.get("name", path.stem), "description": q.get("description"),
            "backend": backend, "workloads": workloads, "strategies": strategies,
            "quick": q.get("quick", False), "repetitions": reps, "seed": q.get("seed"),
            "params": q.get("params", {}), "require_fidelity": fids,
            "accept_emulated": acc, "checks": checks}


# --- evaluation --------------------------------------------------------------------------

def metric_value(run: dict, path: str):
    d = run.get("metrics") or {}
    for p in path.split("."):
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d if isinstance(d, (int, float)) and not isinstance(d, bool) else None


def _display(value, check: dict):
    """A metric value in the check's unit (what the limit is written in)."""
    if value is None:
        return None
    return value / check["factor"]


def evaluate(spec: dict, results: dict) -> list[dict]:
    """One verdict dict per (check, matched run), plus per-run backend/fidelity checks and one
    failing verdict per spec workload x strategy missing from the results."""
    verdicts = []
    runs = [r for r in results.get("runs", [])
            if any(r["workload"] == Path(w).stem for w in spec["workloads"])
            and r["strategy"] in spec["strategies"]]
    present = {(r["workload"], r["strategy"]) for r in runs}
    for w in spec["workloads"]:
        for s in spec["strategies"]:
            if (Path(w).stem, s) not in present:
                verdicts.append({"check": "run present", "run": f"{Path(w).stem}/{s}",
                                 "metric": None, "op": "present", "limit": True, "unit": None,
                                 "measured": None, "pass": False,
                                 "detail": "no such run in the results"})
    for r in runs:
        ok = r.get("backend") == spec["backend"]
        verdicts.append({"check": "backend", "run": r["key"], "metric": "backend", "op": "equals",
                         "limit": spec["backend"], "unit": None, "measured": r.get("backend"),
                         "fidelity": r.get("fidelity"), "pass": ok})
        # the operation being qualified must have run natively: a check passed by an
        # emulation qualifies the emulation, not the host
        emulated = sorted(k for k, v in (r.get("fidelity_steps") or {}).items()
                          if v == "emulated")
        acc = spec.get("accept_emulated", False)
        not_accepted = [] if acc is True else [k for k in emulated if k not in (acc or [])]
        verdicts.append({"check": "steps native", "run": r["key"], "metric": "fidelity_steps",
                         "op": "native", "limit": "native" if not acc else
                         ("any (accept_emulated)" if acc is True else "native except " + ", ".join(acc)),
                         "unit": None, "measured": "emulated: " + ", ".join(emulated) if emulated
                         else "native", "pass": not not_accepted,
                         **({"detail": "NOT QUALIFIED: emulated " + ", ".join(not_accepted)}
                            if not_accepted else {})})
        if spec["require_fidelity"]:
            verdicts.append({"check": "fidelity", "run": r["key"], "metric": "fidelity",
                             "op": "in", "limit": spec["require_fidelity"], "unit": None,
                             "measured": r.get("fidelity"),
                             "pass": r.get("fidelity") in spec["require_fidelity"]})
    for c in spec["checks"]:
        for r in runs:
            if not (fnmatch.fnmatchcase(r["workload"], c["workload"])
                    and fnmatch.fnmatchcase(r["strategy"], c["strategy"])):
                continue
            measured = metric_value(r, c["metric"])
            v = {"check": c["name"], "run": r["key"], "metric": c["metric"], "op": c["op"],
                 "unit": c["unit"], "fidelity": r.get("fidelity"), "line": c["line"]}
            if c["op"] == "equals_metric":
                other = metric_value(r, c["limit"])
                v.update(limit=c["limit"], limit_value=other, measured=measured,
                         pass_=measured is not None and other is not None and measured == other)
            else:
                shown = _display(measured, c)
                lim = c["limit"]
                if shown is None:
                    passed = False
                elif c["op"] == "max":
                    passed = shown <= lim
                elif c["op"] == "min":
                    passed = shown >= lim
                else:
                    passed = shown == lim
                v.update(limit=lim, measured=shown, pass_=passed)
            if measured is None:
                v["detail"] = "not measured in this run"
            v["pass"] = v.pop("pass_")
            if c["why"]:
                v["why"] = c["why"]
            verdicts.append(v)
    return verdicts


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "/".join(str(x) for x in v)
    return str(v)


_OP_TEXT = {"max": "<=", "min": ">=", "equals": "==", "equals_metric": "==", "in": "in",
            "present": "", "native": ""}


def format_verdicts(verdicts: list[dict]) -> str:
    rows = [("check", "run", "measured", "limit", "verdict")]
    for v in verdicts:
        unit = f" {v['unit']}" if v.get("unit") else ""
        limit = v["limit"]
        if v["op"] == "equals_metric":
            limit_text = f"== {limit} ({_fmt(v.get('limit_value'))})"
        else:
            limit_text = f"{_OP_TEXT[v['op']]} {_fmt(limit)}{unit}".strip()
        measured = _fmt(v["measured"]) + (unit if v["measured"] is not None else "")
        rows.append((v["check"], v["run"], measured, limit_text,
                     "pass" if v["pass"] else "FAIL" + (f" ({v['detail']})" if v.get("detail") else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = []
    for j, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
        if j == 0:
            out.append("-" * (sum(widths) + 8 + len("verdict")))
    return "\n".join(ln.rstrip() for ln in out)


def write_verdict(path: Path, spec: dict, results: dict, verdicts: list[dict]) -> None:
    failed = [v for v in verdicts if not v["pass"]]
    atomic_write_json(path, {
        "schema": VERDICT_SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec": spec["path"], "spec_name": spec["name"],
        "results": results.get("_dir"), "run_id": results.get("run_id"),
        "host": {k: (results.get("host") or {}).get(k) for k in ("hostname", "kernel", "cpu")},
        "pass": not failed, "checks": len(verdicts), "failed": len(failed),
        "verdicts": verdicts,
    })


# --- CLI ---------------------------------------------------------------------------------

def add_qualify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", nargs="?", default=None,
                        help="qualification spec TOML (default: workloads/qualify-default.toml)")
    parser.add_argument("--results", metavar="DIR",
                        help="evaluate an existing results dir instead of running")
    parser.add_argument("--out", metavar="DIR", help="results directory for the run "
                        "(default results/<run-id>)")
    parser.add_argument("--verdict", metavar="FILE",
                        help="where to write verdict.json (default: inside the results dir)")
    add_progress_arguments(parser)


def cli_qualify(args) -> int:
    spec = load_spec(args.spec or default_spec_path())
    if args.results:
        results_dir = Path(args.results)
    else:
        from bench.runner import run_suite
        kw = {}
        if spec["repetitions"]:
            kw["repetitions"] = spec["repetitions"]
        if spec["seed"] is not None:
            kw["seed"] = spec["seed"]
        results_dir = run_suite(spec["workloads"], spec["strategies"], backend=spec["backend"],
                                params=dict(spec["params"]), out_dir=args.out,
                                quick=spec["quick"], progress_enabled=args.progress, **kw)
    results = load_results(results_dir)
    verdicts = evaluate(spec, results)
    verdict_path = Path(args.verdict) if args.verdict else Path(results["_dir"]) / "verdict.json"
    write_verdict(verdict_path, spec, results, verdicts)
    failed = [v for v in verdicts if not v["pass"]]
    fids = sorted({r.get("fidelity", "?") for r in results.get("runs", [])})
    print(f"qualification {spec['name']!r} ({spec['path']}) on "
          f"{(results.get('host') or {}).get('hostname', '?')}, "
          f"{(results.get('host') or {}).get('kernel', '?')}; results {results['_dir']}; "
          f"fidelity {', '.join(fids)}")
    print(format_verdicts(verdicts))
    if failed:
        names = sorted({f"{v['check']} [{v['run']}]" for v in failed})
        print(f"FAIL: {len(failed)} of {len(verdicts)} checks failed: {'; '.join(names)}")
        emu = sorted({v["run"] for v in failed if v["check"] == "steps native"})
        if emu:
            print(f"NOT QUALIFIED: steps were emulated, not run by this kernel, in "
                  f"{', '.join(emu)} (set accept_emulated in the spec to qualify the "
                  "emulation knowingly)")
    else:
        print(f"PASS: all {len(verdicts)} checks passed")
    print(f"verdict: {verdict_path}")
    return 1 if failed else 0
