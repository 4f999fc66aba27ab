"""How good is `gmembench compare` on this machine, met the way a CI system meets it?

    python benchmarks/gate_quality.py [--workload NAME] [--calibration K] [--baselines K]
                                      [--delayed K] [--repetitions R] [--param KEY=VALUE]
                                      [--base-runs J] [--out DIR] [--reuse] [--judge-only]
                                      [--metrics ...]

1. Measures through the command line a CI job uses (`gmembench run --backend host --quick
   -w ci-dma-churn -r R --no-progress`, each run its own process, each repetition its own
   process): K calibration runs (C) and K baseline runs (A) of identical code, K runs
   with a real uniform delay (B: `--param slowdown=1.1`, the host executor busy-waits
   inside every timed conversion step for 10% of that step's measured time) and K runs
   with the delay confined to one conversion direction (P: also `--param slowdown_direction=to_private`).  Runs interleave C_k A_k
   B_k P_k, so drifts of the machine hit all kinds alike, and each records the load average
   (os.getloadavg) before and after it.  Each finished run is recorded in runs.json in
   --out, so an interrupted measurement resumes with --reuse.
2. Learns per-row thresholds from the C runs only (`gmembench thresholds`, as a CI system
   does once per host from its baseline build), so no judged run took part in learning
   them; `--calibration 0` judges with the configured thresholds alone.
3. Judges every pair through `gmembench compare --thresholds` (bench.cli.main, its exit
   status is the verdict): A/A every ordered pair (A_i as BASE, A_j as CUR, i != j), A/B
   and A/P every (A_i, B_j) / (A_i, P_j).  With --base-runs J each baseline is J
   consecutive A runs pooled into one BASE (`compare A_i ... A_i+J-1 CUR`; the README's CI
   configuration is J = 2), judged against every A run outside it and every B and P run.
   Exit 1 on A/A is a false alarm; on A/B and A/P exit 1 is a detection, exit 3
   (inconclusive) and exit 0 are not.  Rates are given per baseline and overall with
   Wilson 95% intervals; pairs share runs, so the overall intervals are optimistic (each
   run takes part in several pairs).
4. Checks the gate's own honesty: no delayed pair may exit 0 while a row's estimated change
   is at or beyond its (effective) threshold (a silent pass of a change it saw).

The measured figures and their history are in the README's CI section.

Writes gate_quality.json (or --report; every pair: exit status, rows beyond threshold,
load) and the learned thresholds (thresholds.json, or REPORT.thresholds.json) in --out.
"""
import argparse
import contextlib
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.compare import CI_METRICS, DEFAULT_THRESHOLDS, METRICS
from bench.results import atomic_write_json

KINDS = {"C": [], "A": [], "B": ["--param", "slowdown=1.1"],
         "P": ["--param", "slowdown=1.1", "--param", "slowdown_direction=to_private"]}
KIND_NAMES = {"C": "calibration baseline", "A": "baseline", "B": "uniform 10% delay", "P": "10% delay, to_private only"}


def wilson(hits: int, n: int) -> str:
    if not n:
        return "n/a"
    z = 1.96
    p = hits / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (f"{hits}/{n} = {100 * p:.1f}% (95% CI {100 * max(0, mid - half):.1f}-"
            f"{100 * min(1, mid + half):.1f}%)")


def measure(args, out: Path, frozen: Path) -> list[dict]:
    log_path = out / "runs.json"
    done = json.loads(log_path.read_text()) if args.reuse and log_path.exists() else []
    have = {r["name"] for r in done if r["exit"] == 0}
    k = max(args.baselines, args.delayed, args.calibration)
    for i in range(k):
        for kind, extra in KINDS.items():
            if i >= {"C": args.calibration, "A": args.baselines}.get(kind, args.delayed):
                continue
            name = f"{kind}{i:02d}"
            if name in have:
                continue
            d = out / name
            shutil.rmtree(d, ignore_errors=True)
            argv = [sys.executable, "-m", "bench", "run", "--backend", "host", "--quick",
                    "-w", str(frozen), "-r", str(args.repetitions), "--no-progress",
                    "--no-report", "--out", str(d),
                    *(a for kv in args.param for a in ("--param", kv)), *extra]
            load0, t0 = os.getloadavg(), time.time()
            p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            rec = {"name": name, "kind": kind, "dir": str(d), "exit": p.returncode,
                   "start": time.strftime("%H:%M:%S", time.gmtime(t0)),
                   "seconds": round(time.time() - t0, 1),
                   "load_before": [round(x, 2) for x in load0],
                   "load_after": [round(x, 2) for x in os.getloadavg()]}
            if p.returncode:
                rec["stderr"] = p.stderr[-500:]
            done = [r for r in done if r["name"] != name] + [rec]
            atomic_write_json(log_path, done)
            print(f"{name} ({KIND_NAMES[kind]}): exit {p.returncode}, {rec['seconds']}s, "
                  f"load {rec['load_before'][0]} -> {rec['load_after'][0]}"
                  + (f": {p.stderr.strip().splitlines()[-1]}" if p.returncode and p.stderr.strip()
                     else ""), file=sys.stderr, flush=True)
    return done


def gate(base: list[Path], cur: Path, metrics, thresholds: list[str], tmp: Path,
         learned: Path | None) -> tuple[int, dict]:
    """`gmembench compare BASE... CUR ...` in this process; (exit status, its JSON)."""
    from bench.cli import main
    j = tmp / "gate.json"
    if j.exists():
        j.unlink()
    argv = ["compare", *map(str, base), str(cur), "--metrics", ",".join(metrics), "--json", str(j)]
    for t in thresholds:
        argv += ["--metric-threshold", t]
    if learned is not None:
        argv += ["--thresholds", str(learned)]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        status = main(argv)
    if status == 2:
        raise SystemExit(f"compare refused {' '.join(map(str, base))} vs {cur}: "
                         f"{err.getvalue().strip()}")
    return status, json.loads(j.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="ci-dma-churn",
                    help="workload name or file (default ci-dma-churn, the README's CI "
                         "configuration)")
    ap.add_argument("--baselines", type=int, default=6, help="A runs (default 6)")
    ap.add_argument("--delayed", type=int, default=6, help="B and P runs each (default 6)")
    ap.add_argument("--calibration", type=int, default=8,
                    help="C runs (baseline code) from which `gmembench thresholds` learns the "
                         "per-row thresholds compare then uses; 0: the configured thresholds "
                         "only (default 8)")
    ap.add_argument("--repetitions", type=int, default=24, help="per run (default 24)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to every run (e.g. folio_fallback=yes for dma-churn, which "
                         "asks for 2M guest_memfd folios this kernel lacks)")
    ap.add_argument("--metrics", default=",".join(CI_METRICS), metavar="M1,M2,...",
                    help=f"what compare decides on (default: the README's CI configuration "
                         f"{','.join(CI_METRICS)})")
    ap.add_argument("--metric-threshold", action="append", default=[], metavar="METRIC=PCT")
    ap.add_argument("--base-runs", type=int, default=1, metavar="J",
                    help="runs pooled into one BASE (compare BASE... CUR): baseline i is A runs "
                         "iJ..iJ+J-1, judged against every other A run and every B and P run "
                         "(default 1: one run per baseline)")
    ap.add_argument("--out", default="results/gate-quality", help="working and output dir")
    ap.add_argument("--reuse", action="store_true", help="keep runs already measured in --out")
    ap.add_argument("--judge-only", action="store_true", help="no new runs (implies --reuse)")
    ap.add_argument("--report", default="gate_quality.json",
                    help="name of the result file in --out (to judge one set of runs under "
                         "several gate configurations)")
    args = ap.parse_args(argv)
    if args.judge_only:
        args.reuse = True
    if not 1 <= args.base_runs < max(2, args.baselines):
        ap.error(f"--base-runs {args.base_runs}: need 1 <= J < --baselines ({args.baselines}), "
                 f"so that A runs outside each pooled baseline remain for the A/A pairs")
    metrics = tuple(m.strip() for m in args.metrics.split(","))
    if any(m not in METRICS for m in metrics):
        ap.error(f"--metrics: choose from {', '.join(METRICS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # a private copy of the workload: an edit to workloads/ during the measurement would
    # otherwise split the runs into two benchmarks (compare refuses those)
    frozen = out / "workload" / f"{Path(args.workload).stem}.toml"
    if not (args.reuse and frozen.is_file()):
        src = Path(args.workload)
        if not src.is_file():
            from bench.workload import workload_dirs
            src = next((d / f"{args.workload}.toml" for d in workload_dirs()
                        if (d / f"{args.workload}.toml").is_file()), None)
            if src is None:
                ap.error(f"unknown workload {args.workload!r}")
        frozen.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, frozen)

    if args.judge_only:
        runs = json.loads((out / "runs.json").read_text())
    else:
        runs = measure(args, out, frozen)
    ok = {r["name"]: r for r in runs if r["exit"] == 0}
    if not ok:
        print("gate quality: no run succeeded - nothing to judge", file=sys.stderr)
        return 2
    by_kind = {k: sorted(n for n in ok if ok[n]["kind"] == k) for k in KINDS}
    tmp = out / ".judge"
    tmp.mkdir(exist_ok=True)
    th = dict(DEFAULT_THRESHOLDS)
    for t in args.metric_threshold:
        name, _, pct = t.partition("=")
        th[name] = float(pct) / 100
    learned_path, learned_lines = None, []
    if by_kind["C"] and args.calibration:
        # learned once from runs that take no part in any judged pair, as a CI system
        # learns them from the baseline build before it judges changes
        from bench import thresholds as thr
        doc = thr.learn([ok[n]["dir"] for n in by_kind["C"]], metrics)
        # one file per report: re-judging with other options must not overwrite the
        # thresholds an earlier report was judged with
        learned_path = out / ("thresholds.json" if args.report == "gate_quality.json"
                              else f"{Path(args.report).stem}.thresholds.json")
        atomic_write_json(learned_path, doc)
        learned_lines = [f"thresholds learned from the {len(by_kind['C'])} C runs "
                         f"(`gmembench thresholds`, alpha {doc['alpha']:g}); compare uses "
                         f"max(configured, learned):", thr.format_table(doc), ""]

    # baselines: one A run each, or --base-runs J consecutive A runs pooled into one BASE
    j = args.base_runs
    if len(by_kind["A"]) <= j:
        ap.error(f"--base-runs {j}: only {len(by_kind['A'])} A runs succeeded; need more than "
                 f"J for pooled baselines and A/A pairs")
    groups = [by_kind["A"][i:i + j] for i in range(0, len(by_kind["A"]) - j + 1, j)]
    baselines = {"+".join(g): g for g in groups}
    pairs, drift = [], {}
    for kind in KINDS:
        if kind == "C":
            continue
        curs = by_kind[kind]
        for a, members in baselines.items():
            for c in curs:
                if c in members:
                    continue
                status, doc = gate([Path(ok[m]["dir"]) for m in members], Path(ok[c]["dir"]),
                                   metrics, args.metric_threshold, tmp, learned_path)
                beyond = [f"{r['key']} {r['metric']} {100 * float(r['change']):+.1f}%"
                          for r in doc["rows"] if float(r["change"]) >= r["threshold"]]
                if kind == "A":     # what identical runs differ by, per metric
                    for r in doc["rows"]:
                        if r["change"] not in ("inf", "-inf"):
                            drift.setdefault(r["metric"], []).append(abs(float(r["change"])))
                pairs.append({"base": a, "cur": c, "kind": kind, "exit": status,
                              "counts": doc["counts"], "beyond_threshold": beyond,
                              "set_aside": sum(r["set_aside_base"] + r["set_aside_cur"]
                                               for r in doc["rows"]),
                              "undecided_rows": [f"{r['key']} {r['metric']}" for r in doc["rows"]
                                                 if r["verdict"] in ("inconclusive", "undecided")],
                              "load": [ok[members[0]]["load_before"][0],
                                       ok[c]["load_before"][0]]})
    shutil.rmtree(tmp, ignore_errors=True)

    lines = [f"gate quality: {args.workload} --quick, host backend, {args.repetitions} "
             f"repetitions per run, each its own process; runs: "
             + ", ".join(f"{len(by_kind[k])} {k} ({KIND_NAMES[k]})" for k in KINDS)
             + (f"; each baseline pools {j} A runs (compare BASE... CUR)" if j > 1 else ""),
             "compare --metrics " + ",".join(metrics) + " (thresholds "
             + ", ".join(f"{m} {100 * th[m]:g}%" for m in metrics) + ")",
             "load average (1 min) at run start: " + ", ".join(
                 f"{k} {min(ok[n]['load_before'][0] for n in by_kind[k]):.2f}-"
                 f"{max(ok[n]['load_before'][0] for n in by_kind[k]):.2f}"
                 for k in KINDS if by_kind[k]), ""] + learned_lines
    table = {}
    for kind in KINDS:
        sel = [p for p in pairs if p["kind"] == kind]
        if not sel:
            continue
        word = "false alarms (exit 1)" if kind == "A" else "detected (exit 1)"
        lines.append(f"{'A/A' if kind == 'A' else 'A/' + kind} - CUR: {KIND_NAMES[kind]}")
        wid = max(9, *(len(a) for a in baselines))
        lines.append(f"  {'baseline':<{wid}} {'pairs':>5} {'exit 1':>6} {'exit 3':>6} {'exit 0':>6}"
                     f"  {word} per baseline, 95% CI")
        for a in baselines:
            ps = [p for p in sel if p["base"] == a]
            n1, n3, n0 = (sum(p["exit"] == e for p in ps) for e in (1, 3, 0))
            lines.append(f"  {a:<{wid}} {len(ps):>5} {n1:>6} {n3:>6} {n0:>6}  {wilson(n1, len(ps))}")
        n1, n3, n0 = (sum(p["exit"] == e for p in sel) for e in (1, 3, 0))
        lines.append(f"  {'all':<{wid}} {len(sel):>5} {n1:>6} {n3:>6} {n0:>6}  {wilson(n1, len(sel))}")
        lines.append(f"  inconclusive (exit 3): {wilson(n3, len(sel))}")
        if kind != "A":
            silent = [p for p in sel if p["exit"] == 0 and p["beyond_threshold"]]
            lines.append(f"  passed (exit 0) although a row's change was beyond its threshold: "
                         f"{len(silent)}")
        lines.append("")
        table[kind] = {"pairs": len(sel), "exit1": n1, "exit3": n3, "exit0": n0}
    if drift:
        lines.append("A/A |change| per metric, median / 95th percentile / max (a threshold "
                     "below the 95th percentile alarms often):")
        lines += [f"  {m:<24} {100 * np.median(v):5.1f}% {100 * np.percentile(v, 95):5.1f}% "
                  f"{100 * max(v):5.1f}%  (configured threshold {100 * th[m]:g}%)"
                  for m, v in drift.items()]
    report = "\n".join(lines)
    print(report)
    atomic_write_json(out / args.report,
                      {"workload": args.workload, "repetitions": args.repetitions, "base_runs": j,
                       "metrics": list(metrics), "thresholds": {m: th[m] for m in metrics},
                       "learned_thresholds": str(learned_path) if learned_path else None,
                       "runs": runs, "summary": table, "pairs": pairs, "report": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
