"""report.md of a sweep: what was varied, the conclusions in words, the per-point table of
the headline ratio, the figures, and the accounting of every number."""
from __future__ import annotations

from pathlib import Path

from bench.results import atomic_write_text
from bench.sweep.analysis import A, ACCOUNTING, B, CONCLUSIONS, HEADLINE, TIE, summary_lines


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(plan, result: dict, out: Path, figures: list[Path]) -> Path:
    spec = plan.spec
    fid = ", ".join(result.get("fidelity") or [])
    L = [f"# Sweep {spec.name}", ""]
    if spec.description:
        L += [spec.description, ""]
    L += [f"- spec: `{spec.path}`; backend **{spec.backend}** ({fid}); suite {result['suite_version']}",
          f"- workloads: {', '.join(spec.workloads)}; strategies: {', '.join(spec.strategies)}; "
          f"{spec.repetitions} repetitions per point and strategy"
          + (f"; seed {spec.seed}" if spec.seed is not None else "; seeds from the workload files"),
          f"- {len(plan.points)} points, {result['tasks']['total']} tasks "
          f"({result['tasks']['computed']} computed now, {result['tasks']['cached']} from the cache), "
          f"{result['elapsed_s']} s; tidy table: `tidy.parquet` / `tidy.csv` ({result['rows']} rows)"]
    if spec.fixed:
        L.append("- fixed on every point: " + ", ".join(f"`{k} = {v}`" for k, v in spec.fixed.items()))
    if plan.sensitivity:
        L.append("- sensitivity: each uncertain cost one at a time over "
                 f"{spec.sensitivity.levels} levels from its low to its high end, and "
                 f"{spec.sensitivity.samples} Latin-hypercube points over all of them, at the "
                 "baseline of the spec's axes")
        for k, (lo, hi) in plan.uncertain.items():
            L.append(f"  - `{k}`: {lo} .. {hi} ns")
    else:
        L.append(f"- axes ({spec.mode}):")
        for a in spec.axes:
            L.append(f"  - `{a.name}` = `{a.key}`: {', '.join(a.labels)} (baseline {a.labels[a.baseline_index]})")
    L += ["", "## Conclusions", "",
          f"Who wins each comparison at each point: medians over repetitions; within {TIE:.0%} "
          f"is a tie.  Ratios are {B} / {A}.", ""]
    L += [f"- {line}" for line in summary_lines(result)]
    L += ["", f"## {HEADLINE}: {B} / {A} per point", ""]
    cols = plan.columns[:6]
    L.append("| workload | " + " | ".join(cols) + " | ratio | spread (min..max over reps) | winner |")
    L.append("|---" * (len(cols) + 4) + "|")
    for pt in result["points"][:200]:
        r = pt["results"].get(HEADLINE)
        if not r:
            continue
        L.append(f"| {pt['workload']} | " + " | ".join(_fmt(pt["columns"].get(c)) for c in cols)
                 + f" | {_fmt(r['ratio'])} | {_fmt(r['lo'])}..{_fmt(r['hi'])} | {r['winner']} |")
    if len(result["points"]) > 200:
        L.append(f"\n({len(result['points']) - 200} more points in conclusions.json and the tidy table)")
    if figures:
        L += ["", "## Figures", ""]
        L += [f"![{f.stem}](plots/{f.name})" for f in figures]
    L += ["", "## What the numbers are", ""]
    for name, metric, direction, better in CONCLUSIONS:
        L.append(f"- **{name}** (`{metric}`, direction `{direction}`, {better} is better): {ACCOUNTING[name]}")
    L += ["", "Simulated numbers are what the cost model charges for each kernel primitive "
          "the model performed (the profile's values, with the uncertain ones named above); "
          "host numbers are measured by the host backend, labelled native or emulated per step. "
          "Every row of the tidy table carries its unit, backend, fidelity, seed and task key."]
    path = Path(out) / "report.md"
    atomic_write_text(path, "\n".join(L) + "\n")
    return path
