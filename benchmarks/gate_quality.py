"""How good is `gmembench compare` on this machine?  False alarms on identical code (A/A) and
detection of a known 10% slowdown (A/B).

    python benchmarks/gate_quality.py [--runs K] [--repetitions R] [--workload NAME] ...

1. Runs the same host-backend workload K times through the real path (bench.runner.run_suite:
   VM, guest_memfd, C step executor, per-conversion clock), each run R repetitions of both
   strategies, strategies interleaved as the runner does.  The runs are sequential, so
   whatever drifts on the machine between runs (other load, THP pool, frequency) is in them,
   as it would be between a CI baseline and a later build.
2. A/A: every pair of runs (i, j), i < j, goes through the gate exactly as
   `gmembench compare RUN_i RUN_j` would; any regression verdict is a false alarm.
   Disjoint pairs (0,1), (2,3), ... are independent; all pairs use the data fully but are
   correlated (each run takes part in K-1 pairs).  Both counts are reported.
   Back-to-back pairs (i, i+1) show what a CI job gets when it measures the baseline and
   the candidate in the same job, minutes apart, rather than against an old baseline.
3. A/B: K more runs, interleaved with the A runs (A0 B0 A1 B1 ...), are made with the host
   backend's `slowdown` parameter: the C executor busy-waits inside the timed region of
   every conversion step for (slowdown - 1) x that step's measured time, so each conversion
   really takes 10% longer, measured by the same clock, with the noise of the machine on
   it.  Every pair (A_i, B_j) goes through the gate; it must report a regression.
   Disjoint pairs (A_i, B_i) are independent.

Writes gate_quality.json into --out.

Measured on the 2-vCPU reference VM (dma-churn --quick, host backend, 8 A runs and 8 B runs
x 8 repetitions, each repetition in its own process, machine otherwise idle, 11 minutes;
A/A over 28 run pairs, A/B over 64):
  defaults (p50 5%, p99 25%):           false alarms 8/28 (28.6%), detected 61/64 (95.3%)
  latency_p50=7%, latency_p99=35%:      false alarms 2/28 (7.1%),  detected 53/64 (82.8%)
  latency_p50=8%, latency_p99=35%:      false alarms 1/28 (3.6%),  detected 47/64 (73.4%)
  back-to-back pairs (i, i+1), defaults: false alarms 1/7
A second batch, 12 A + 12 B runs, latency_p50=7%, latency_p99=35% (17 minutes):
  false alarms 1/66 (1.5%), back-to-back 0/11; detected 108/144 (75.0%), back-to-back 9/12
The same two batches re-judged with latency_min added (each repetition's fastest conversion,
drift < 2%): false alarms 3/94, detected 208/208.  Then a fresh confirmation batch with that
configuration fixed beforehand (10 A + 10 B runs, latency_min 5%, p50 7%, p99 35%):
  false alarms 0/45 (0.0%, 95% CI 0-7.9%), detected 100/100 (100%, 95% CI 96.3-100%)
Per-repetition spread inside a run is 2-4%; between runs minutes apart the median drifted
by up to 6.7% (95th percentile), slowly and in the same direction for both strategies.
That drift, not the repetitions' spread, limits a gate on the medians: no p50 threshold
alone gives <= 5% false alarms and >= 90% detection of a 10% slowdown here; deciding on
latency_min too does.
"""
import argparse
import itertools
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compare import DEFAULT_ALPHA, DEFAULT_THRESHOLDS, METRICS, compare_results  # noqa: E402
from bench.results import atomic_write_json, load_results  # noqa: E402


def gate(a: Path, b: Path, thresholds: dict, alpha: float, metrics=METRICS) -> list:
    return compare_results(load_results(a), load_results(b), thresholds, alpha,
                           metrics=metrics)


def rate(hits: int, n: int) -> str:
    if not n:
        return "n/a"
    # Wilson 95% interval: with tens of pairs the uncertainty is the main message
    z = 1.96
    p = hits / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return f"{hits}/{n} = {100 * p:.1f}% (95% CI {100 * max(0, mid - half):.1f}-{100 * min(1, mid + half):.1f}%)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="dma-churn")
    ap.add_argument("--backend", default="host", choices=("host",),
                    help="the injected delay lives in the host executor (bench/host/helper.c)")
    ap.add_argument("--runs", type=int, default=12, help="independent runs K (default 12)")
    ap.add_argument("--repetitions", type=int, default=8, help="repetitions per run (default 8)")
    ap.add_argument("--no-quick", dest="quick", action="store_false",
                    help="full-size workload (default: --quick)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="backend parameter for run_suite")
    ap.add_argument("--slowdown", type=float, default=0.10, help="A/B slowdown (default 0.10)")
    ap.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    ap.add_argument("--metrics", type=lambda t: tuple(m.strip() for m in t.split(",")),
                    default=METRICS, metavar="M1,M2,...",
                    help=f"metrics the gate decides on (default: all, {','.join(METRICS)})")
    ap.add_argument("--threshold", type=float, default=None,
                    help="minimum change in %% for every metric (default: compare's defaults)")
    ap.add_argument("--metric-threshold", action="append", default=[], metavar="METRIC=PCT",
                    help="minimum change in %% for one metric")
    ap.add_argument("--out", default="results/gate-quality", help="working and output dir")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse runs already in --out (run-NN dirs) instead of running")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(p.split("=", 1) for p in args.param)
    thresholds = dict(DEFAULT_THRESHOLDS)
    if args.threshold is not None:
        thresholds = {m: args.threshold / 100 for m in METRICS}
    for item in args.metric_threshold:
        name, _, pct = item.partition("=")
        if name not in METRICS:
            ap.error(f"--metric-threshold: unknown metric {name!r}")
        thresholds[name] = float(pct) / 100

    # A private copy of the workload file: an edit to workloads/ during the hour this can
    # take would otherwise split the runs into two different benchmarks (compare refuses)
    wl_file = Path(args.workload)
    if not wl_file.is_file():
        from bench.workload import workload_dirs
        wl_file = next((d / f"{args.workload}.toml" for d in workload_dirs()
                        if (d / f"{args.workload}.toml").is_file()), None)
        if wl_file is None:
            ap.error(f"unknown workload {args.workload!r}")
    frozen = out / "workload" / wl_file.name
    if not (args.reuse and frozen.is_file()):
        frozen.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wl_file, frozen)

    def run_one(d: Path, extra: dict, label: str):
        if args.reuse and (d / "results.json").exists():
            return d
        shutil.rmtree(d, ignore_errors=True)
        from bench.runner import run_suite
        ts = time.time()
        run_suite([str(frozen)], ["in-place", "dual"], backend=args.backend,
                  params={**params, **extra}, out_dir=d, quick=args.quick,
                  progress_enabled=False, repetitions=args.repetitions, report=False)
        print(f"{label}: {time.time() - ts:.1f}s", file=sys.stderr, flush=True)
        return d

    runs, slowed = [], []
    t0 = time.time()
    for k in range(args.runs):       # A and B interleaved: drift hits both alike
        runs.append(run_one(out / f"run-{k:02d}", {}, f"A run {k + 1}/{args.runs}"))
        slowed.append(run_one(out / f"slowed-{k:02d}", {"slowdown": 1 + args.slowdown},
                              f"B run {k + 1}/{args.runs} (slowdown {1 + args.slowdown:g})"))
    run_time = time.time() - t0

    first = load_results(runs[0])
    fid = sorted({r.get("fidelity") for r in first["runs"]})
    rows_per_gate = None

    # A/A
    aa_all, aa_disjoint, aa_adjacent, aa_alarm_rows, drift = [], [], [], {}, {}
    for i, j in itertools.combinations(range(len(runs)), 2):
        rows = gate(runs[i], runs[j], thresholds, args.alpha, args.metrics)
        rows_per_gate = len(rows)
        for r in rows:
            if np.isfinite(r.change):
                drift.setdefault(r.metric, []).append(abs(r.change))
        alarm = [r for r in rows if r.verdict == "regression"]
        aa_all.append(bool(alarm))
        if j == i + 1:
            aa_adjacent.append(bool(alarm))
        if j == i + 1 and i % 2 == 0:
            aa_disjoint.append(bool(alarm))
        for r in alarm:
            key = f"{r.key} {r.metric}"
            aa_alarm_rows[key] = aa_alarm_rows.get(key, 0) + 1

    # A/B: baseline A_i against slowed B_j
    ab_all, ab_disjoint, p50_rows_flagged, p50_rows = [], [], 0, 0
    for i, j in itertools.product(range(len(runs)), repeat=2):
        rows = gate(runs[i], slowed[j], thresholds, args.alpha, args.metrics)
        hit = any(r.verdict == "regression" for r in rows)
        ab_all.append(hit)
        if i == j:
            ab_disjoint.append(hit)
        for r in rows:
            if r.metric == "latency_p50":
                p50_rows += 1
                p50_rows_flagged += r.verdict == "regression"

    # what identical runs differ by: the least threshold that keeps A/A alarms rare
    drift95 = {m: float(np.percentile(v, 95)) for m, v in drift.items()}
    summary = {
        "workload": args.workload, "backend": args.backend, "quick": args.quick,
        "fidelity": fid, "runs": len(runs), "repetitions": args.repetitions,
        "rows_per_gate": rows_per_gate, "alpha": args.alpha, "thresholds": thresholds,
        "metrics": list(args.metrics),
        "slowdown": args.slowdown, "slowdown_method": "host executor busy-waits inside each timed conversion step",
        "run_time_s": round(run_time, 1), "aa_change_p95": drift95,
        "aa": {"disjoint_pairs": len(aa_disjoint), "disjoint_false_alarms": sum(aa_disjoint),
               "adjacent_pairs": len(aa_adjacent), "adjacent_false_alarms": sum(aa_adjacent),
               "all_pairs": len(aa_all), "all_false_alarms": sum(aa_all),
               "alarm_rows": aa_alarm_rows},
        "ab": {"disjoint_pairs": len(ab_disjoint), "disjoint_detected": sum(ab_disjoint),
               "all_pairs": len(ab_all), "all_detected": sum(ab_all),
               "latency_p50_rows": p50_rows, "latency_p50_rows_flagged": p50_rows_flagged},
    }
    atomic_write_json(out / "gate_quality.json", summary)
    print(f"gate quality: {args.workload}{' (quick)' if args.quick else ''}, backend "
          f"{args.backend} ({', '.join(fid)}), {len(runs)} runs x {args.repetitions} "
          f"repetitions x 2 strategies, {rows_per_gate} rows per gate, alpha {args.alpha}")
    print("metrics: " + ", ".join(f"{m} {100 * thresholds[m]:g}%" for m in args.metrics))
    print(f"A/A false alarms, disjoint pairs: {rate(sum(aa_disjoint), len(aa_disjoint))}")
    print(f"A/A false alarms, all pairs:      {rate(sum(aa_all), len(aa_all))}")
    print(f"A/A false alarms, back-to-back runs (i, i+1): {rate(sum(aa_adjacent), len(aa_adjacent))}")
    if aa_alarm_rows:
        print("  alarms by row: " + ", ".join(f"{k} x{v}" for k, v in sorted(aa_alarm_rows.items())))
    print("A/A |change| 95th percentile per metric (thresholds below this alarm often): "
          + ", ".join(f"{m} {100 * v:.1f}% (threshold {100 * thresholds[m]:.0f}%)"
                      for m, v in drift95.items()))
    print(f"A/B (+{100 * args.slowdown:.0f}%) detected, back-to-back pairs (A_i, B_i): "
          f"{rate(sum(ab_disjoint), len(ab_disjoint))}")
    print(f"A/B (+{100 * args.slowdown:.0f}%) detected, all pairs:      {rate(sum(ab_all), len(ab_all))}")
    print(f"  latency_p50 rows flagged as regression: {rate(p50_rows_flagged, p50_rows)}")
    print(f"slowdown: a real delay inside each timed conversion step (host executor); "
          f"runs took {run_time:.0f}s; details: {out / 'gate_quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
