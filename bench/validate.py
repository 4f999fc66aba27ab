"""`gmembench validate`: tie the simulator to this host.

1. Calibrate the cost model here (`gmembench calibrate --emulated-host`: the kernel work the
   host's emulated conversion path does not perform is 0), or take --profile FILE.
2. Run the validation workloads (workloads/validate/*.toml, host-sized) on the host backend
   and on the simulator with that profile: same files, same seeds, so both backends replay
   identical op arrays and the strategies compile them to identical step arrays.
3. Compare per workload x strategy x metric and print a table: host value, sim value,
   disagreement, tolerance, verdict.
     median conversion latency    within 25% of the host (relative to the host's value)
     footprint peak (bytes)       exact, where the workload is deterministic
     huge splits / merges         exact, where the workload is deterministic
     bytes copied                 exact
   A metric the host cannot reproduce run to run is labelled "nondeterministic" with the
   reason and does not decide the verdict.  The latency rows that decide are the median of
   each direction (to-shared, to-private) when the op streams give it; the pooled median is
   then an "info" row (see compare_runs for why it is not a typical conversion).
4. Write validation.json atomically into the output directory (with the calibrated profile
   and both results directories beside it).  Exit 0 when every decided row is within
   tolerance, 1 otherwise, 2 on bad input.
"""
import argparse
import datetime as dt
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.errors import InputError
from bench.ops import OpKind
from bench.strategies import STRATEGIES
from bench.progress import add_progress_arguments

LATENCY_TOLERANCE = 0.25
SCHEMA = "gmembench-validation/1"

# verdicts
PASS, FAIL, NONDET, INFO, MISSING = "ok", "MISS", "nondeterministic", "info", "missing"


@dataclass
class Row:
    workload: str
    strategy: str
    metric: str
    host: float | None
    sim: float | None
    tolerance: str          # "25%" | "exact" | "-"
    verdict: str            # ok | MISS | nondeterministic | info | missing
    disagreement: float | None = None    # (sim - host) / host; None when host is 0 or absent
    reason: str = ""

    @property
    def decides(self) -> bool:
        return self.verdict in (PASS, FAIL, MISSING)


def disagreement(host: float | None, sim: float | None) -> float | None:
    """Relative disagreement of the sim with the host: (sim - host) / host."""
    if host is None or sim is None:
        return None
    if host == 0:
        return 0.0 if sim == 0 else None
    return (sim - host) / host


def compare_relative(workload, strategy, metric, host, sim, tolerance=LATENCY_TOLERANCE,
                     decides=True) -> Row:
    """A measured figure: the sim must be within `tolerance` of the host (relative)."""
    d = disagreement(host, sim)
    if host is None or sim is None:
        verdict = MISSING if decides else INFO
        reason = "no value on " + ("the host" if host is None else "the simulator")
        return Row(workload, strategy, metric, host, sim, f"{tolerance:.0%}", verdict, d, reason)
    ok = d is not None and abs(d) <= tolerance
    verdict = (PASS if ok else FAIL) if decides else INFO
    return Row(workload, strategy, metric, host, sim, f"{tolerance:.0%}", verdict, d)


def compare_exact(workload, strategy, metric, host, sim, nondeterministic: str | None = None) -> Row:
    """A count: equal, unless the host's value is not reproducible (then labelled, with why)."""
    d = disagreement(host, sim)
    if nondeterministic:
        return Row(workload, strategy, metric, host, sim, "exact", NONDET, d, nondeterministic)
    if host is None or sim is None:
        return Row(workload, strategy, metric, host, sim, "exact", MISSING, d,
                   "no value on " + ("the host" if host is None else "the simulator"))
    return Row(workload, strategy, metric, host, sim, "exact", PASS if host == sim else FAIL, d)


# ---- what is deterministic on the host ----------------------------------------------------

def nondeterminism(run: dict, metric: str) -> str | None:
    """Why the host's value of `metric` is not reproducible for this run, or None."""
    layout = run["layout"]
    scale = float(run.get("scale", 1) or 1)
    if scale != 1 and metric in ("footprint_peak", "huge_splits", "huge_merges"):
        return f"the host ran the workload scaled down by {scale:g}: counts are of another size"
    thp = layout.get("shared_page") == "thp" and run["strategy"] == "dual"
    if metric == "huge_merges" and thp:
        return ("khugepaged collapses THPs in the background on its own schedule; the host "
                "reads the system-wide thp_collapse_alloc counter")
    if metric == "huge_splits" and thp:
        return ("the host reads THP splits from the system-wide /proc/vmstat counters: other "
                "processes' splits (and re-splits after khugepaged collapses) land in them; "
                "compare on an idle host")
    if metric == "footprint_peak" and thp and layout.get("shared_backing") == "anon":
        return ("an anonymous THP with a 4K hole stays allocated until the deferred split "
                "(kernel shrinker, memory pressure); the host reads the resident set, which "
                "drops at once")
    return None


# ---- comparing two results documents ----------------------------------------------------

def _direction_medians(run: dict, samples: dict, workload) -> dict:
    """Median latency per direction, from samples.npz and the op streams (info rows)."""
    from bench.runner import build_ops
    out = {OpKind.TO_SHARED: [], OpKind.TO_PRIVATE: []}
    for rep in range(run["repetitions"]):
        lat = samples.get(f"{run['workload']}/{run['strategy']}/rep{rep}")
        if lat is None:
            return {}
        ops, _ = build_ops(workload, rep)
        kinds = ops["kind"][np.isin(ops["kind"], (OpKind.TO_SHARED, OpKind.TO_PRIVATE))]
        if len(kinds) != len(lat):        # failed conversions are not in the samples
            return {}
        for k in out:
            out[k].append(lat[kinds == k])
    return {k: float(np.median(np.concatenate(v))) for k, v in out.items()
            if v and sum(len(x) for x in v)}


def compare_runs(host_doc: dict, sim_doc: dict, host_samples: dict | None = None,
                 sim_samples: dict | None = None, workloads: dict | None = None) -> list[Row]:
    """Rows for every (workload, strategy) the two results documents share."""
    sims = {r["key"]: r for r in sim_doc["runs"]}
    rows: list[Row] = []
    for h in host_doc["runs"]:
        s = sims.get(h["key"])
        w, st = h["workload"], h["strategy"]
        if s is None:
            rows.append(Row(w, st, "median conversion latency (ns)", None, None, "25%", MISSING,
                            reason="the simulator has no run of this key"))
            continue
        hm, sm = h["metrics"], s["metrics"]
        hd = sd = {}
        if workloads and w in workloads and host_samples is not None and sim_samples is not None:
            hd = _direction_medians(h, host_samples, workloads[w])
            sd = _direction_medians(s, sim_samples, workloads[w])
        # When each direction has its own median, those decide: a workload that converts every
        # buffer there and back has exactly half its conversions in each direction, and the
        # pooled median is then the midpoint between the slowest conversion of the cheap
        # direction and the fastest of the other - the edges of two clusters, set by the
        # host's noise tails, not a typical conversion.  The pooled median is shown as info.
        split = bool(hd) and bool(sd)
        rows.append(compare_relative(w, st, "median conversion latency (ns)",
                                     hm["latency_ns"]["p50"], sm["latency_ns"]["p50"],
                                     decides=not split))
        for k, name in ((OpKind.TO_SHARED, "to-shared"), (OpKind.TO_PRIVATE, "to-private")):
            if k in hd or k in sd:
                rows.append(compare_relative(w, st, f"  median {name} (ns)", hd.get(k),
                                             sd.get(k), decides=split))
        rows.append(compare_exact(w, st, "footprint peak (bytes)", hm["footprint_bytes"]["peak"],
                                  sm["footprint_bytes"]["peak"], nondeterminism(h, "footprint_peak")))
        rows.append(compare_exact(w, st, "huge splits", hm["huge_splits"], sm["huge_splits"],
                                  nondeterminism(h, "huge_splits")))
        rows.append(compare_exact(w, st, "huge merges", hm["huge_merges"], sm["huge_merges"],
                                  nondeterminism(h, "huge_merges")))
        rows.append(compare_exact(w, st, "bytes copied", hm["bytes_copied"], sm["bytes_copied"]))
    return rows


def _fmt(v, metric: str) -> str:
    if v is None:
        return "-"
    if "ns" in metric:
        return f"{v / 1000:.2f}us"
    if "bytes" in metric:
        return f"{v / (1 << 20):.2f}MiB" if abs(v) >= 1 << 20 else f"{int(v)}B"
    return str(int(v))


def table(rows: list[Row]) -> str:
    head = (f"{'workload':<14} {'strategy':<8} {'metric':<31} {'host':>11} {'sim':>11} "
            f"{'disagree':>8} {'tol':>5}  verdict")
    out = [head, "-" * len(head)]
    for r in rows:
        d = "-" if r.disagreement is None else f"{100 * r.disagreement:+.1f}%"
        line = (f"{r.workload[:14]:<14} {r.strategy:<8} {r.metric[:31]:<31} "
                f"{_fmt(r.host, r.metric):>11} {_fmt(r.sim, r.metric):>11} {d:>8} "
                f"{r.tolerance:>5}  {r.verdict}")
        if r.reason:
            line += f" ({r.reason})"
        out.append(line)
    decided = [r for r in rows if r.decides]
    bad = [r for r in decided if r.verdict != PASS]
    out.append(f"\n{len(decided) - len(bad)} of {len(decided)} decided rows within tolerance; "
               f"{sum(r.verdict == NONDET for r in rows)} nondeterministic, "
               f"{sum(r.verdict == INFO for r in rows)} info")
    return "\n".join(out)


# ---- the command --------------------------------------------------------------------------

def validation_workloads() -> list[Path]:
    """workloads/validate/*.toml from the first workload directory that has them."""
    from bench.workload import workload_dirs
    for d in workload_dirs():
        files = sorted((d / "validate").glob("*.toml"))
        if files:
            return files
    raise InputError("no validation workloads found (workloads/validate/*.toml in the "
                     "workload directories; pass --workload FILE)")


def validate(workloads: list[str], out: Path, profile: str | None = None,
             strategies: list[str] | None = None, repetitions: int | None = None,
             progress_enabled: bool | None = None, calibrate_rounds: int = 4,
             params: dict | None = None, echo=print) -> dict:
    """Calibrate (unless a profile is given), run both backends, compare; returns the
    validation document (also written to out/validation.json)."""
    from bench.workload import load_workload
    loaded = {}
    for w in workloads:
        wl = load_workload(w)
        if wl.name in loaded:
            raise InputError(f"two validation workloads are named {wl.name!r}", str(wl.source))
        loaded[wl.name] = wl
    if profile is not None:
        from bench.costs import load_profile
        load_profile(profile)        # bad input fails before anything runs
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"output directory {out} exists and is not empty")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _validate(loaded, workloads, out, profile, strategies, repetitions,
                         progress_enabled, calibrate_rounds, params, echo)
    except BaseException:
        # the directory holds a complete validation or nothing of ours
        for name in ("calibrated.toml", "host", "sim"):
            p = out / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _validate(loaded, workloads, out, profile, strategies, repetitions, progress_enabled,
              calibrate_rounds, params, echo) -> dict:
    from bench.results import atomic_write_json, load_results, load_samples
    from bench.runner import run_suite
    t0 = time.monotonic()
    cal_s = 0.0
    if profile is None:
        from bench.host.calibrate import calibrate, render_profile, write_atomic
        echo("validate: calibrating the cost model on this host (--emulated-host) ...")
        result = calibrate(rounds=calibrate_rounds, progress=progress_enabled, emulated_host=True)
        profile = str(out / "calibrated.toml")
        write_atomic(profile, render_profile(result, "calibrated-validate",
                                             f"gmembench validate on {os.uname().nodename}, "
                                             f"{calibrate_rounds} rounds, emulated-host profile"))
        cal_s = time.monotonic() - t0
    host_params = dict(params or {})
    echo(f"validate: {len(workloads)} workloads on the host backend ...")
    t1 = time.monotonic()
    host_dir = run_suite(workloads, strategies, "host", host_params, out / "host",
                         progress_enabled=progress_enabled, repetitions=repetitions, report=False)
    host_s = time.monotonic() - t1
    echo(f"validate: the same workloads on the simulator with {profile} ...")
    t2 = time.monotonic()
    sim_dir = run_suite(workloads, strategies, "sim", {}, out / "sim",
                        progress_enabled=progress_enabled, profile=profile,
                        repetitions=repetitions, report=False)
    sim_s = time.monotonic() - t2
    host_doc, sim_doc = load_results(host_dir), load_results(sim_dir)
    rows = compare_runs(host_doc, sim_doc, load_samples(host_doc), load_samples(sim_doc), loaded)
    decided = [r for r in rows if r.decides]
    doc = {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "profile": str(profile),
        "host_results": str(host_dir),
        "sim_results": str(sim_dir),
        "workloads": [str(loaded[n].source) for n in loaded],
        "latency_tolerance": LATENCY_TOLERANCE,
        "elapsed_s": {"calibrate": round(cal_s, 2), "host": round(host_s, 2),
                      "sim": round(sim_s, 2), "total": round(time.monotonic() - t0, 2)},
        "harness_overhead_ns": {r["key"]: r["metadata"].get("harness_overhead_ns")
                                for r in host_doc["runs"]},
        "fidelity": {r["key"]: r["fidelity"] for r in host_doc["runs"]},
        "rows": [asdict(r) | {"decides": r.decides} for r in rows],
        "within_tolerance": all(r.verdict == PASS for r in decided),
        "decided_rows": len(decided),
        "missed_rows": sum(r.verdict != PASS for r in decided),
    }
    atomic_write_json(out / "validation.json", doc)
    doc["_rows"] = rows
    return doc


def add_validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", metavar="FILE",
                   help="cost profile for the simulator (default: calibrate here first, "
                        "--emulated-host)")
    p.add_argument("--workload", "-w", action="append", metavar="NAME|FILE",
                   help="validation workload (repeatable; default workloads/validate/*.toml)")
    p.add_argument("--strategy", "-s", action="append", choices=list(STRATEGIES),
                   help="strategy to validate; repeatable (default: both)")
    p.add_argument("--repetitions", "-r", type=int, help="override the workloads' repetitions")
    p.add_argument("--calibrate-rounds", type=int, default=4,
                   help="rounds per calibrated key, the first discarded (default 4)")
    p.add_argument("--out", metavar="DIR",
                   help="output directory (default results/validate-<UTC time>)")
    add_progress_arguments(p)


def cli_validate(args) -> int:
    if args.repetitions is not None and args.repetitions < 1:
        raise InputError("--repetitions must be >= 1")
    if args.calibrate_rounds < 2:
        raise InputError("--calibrate-rounds must be at least 2 (the first round is discarded)")
    workloads = args.workload or [str(p) for p in validation_workloads()]
    out = Path(args.out) if args.out else Path("results") / (
        "validate-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S"))
    doc = validate(workloads, out, args.profile, args.strategy, args.repetitions,
                   args.progress, args.calibrate_rounds)
    print(table(doc["_rows"]))
    print(f"\nvalidation: {out}/validation.json  (profile {doc['profile']}; "
          f"{doc['elapsed_s']['total']:.0f} s)")
    return 0 if doc["within_tolerance"] else 1
