"""`gmembench report RESULTS_DIR`: report.md, summary.txt, plots/*.png and pyperf/*.json.

report.md   summary table, the figures, and the method: host facts, backend, scale,
            fidelity of every step, cost profile, seed, package version.  Anything not
            measured natively on the kernel is said to be emulated or simulated, in words.
summary.txt a plain-text table at most 72 columns wide, to paste into a cover letter.

`gmembench run` calls write_report() at the end of every run.
"""
import argparse
import math
import os
import time
import textwrap
from pathlib import Path

from bench.errors import InputError
from bench.report.plots import collect_figures, copy_share, figure_jobs, runs_by_workload
from bench.report.pyperf_export import write_pyperf
from bench.results import atomic_write_text, load_results, load_samples

WIDTH = 72


# --- formatting helpers ------------------------------------------------------------------

def fmt_ns(ns) -> str:
    if ns is None or (isinstance(ns, float) and not math.isfinite(ns)):
        return "-"
    ns = float(ns)
    if ns >= 1e9:
        return f"{ns / 1e9:.3g}s"
    if ns >= 1e6:
        return f"{ns / 1e6:.3g}ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.3g}us"
    return f"{ns:.3g}ns"


def fmt_bytes(b) -> str:
    if b is None:
        return "-"
    b = float(b)
    for div, u in ((1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if b >= div:
            return f"{b / div:.3g}{u}"
    return f"{b:.0f}B"


def fmt_ratio(x) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.2f}x" if x < 10 else f"{x:.3g}x"


def fmt_pct(x) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:.0f}%"


def _m(run: dict, *path, default=None):
    d = run.get("metrics") or {}
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _ratio(a, b):
    try:
        return float(a) / float(b) if a is not None and b else None
    except (TypeError, ValueError):
        return None


# --- what is native, what is not -----------------------------------------------------------

def fidelity_notes_short(results: dict) -> list[str]:
    """The same facts as fidelity_statements, grouped so a cover letter gets a few lines:
    runs sharing a strategy and the same non-native steps are named together."""
    runs = results.get("runs", [])
    if runs and all(r.get("backend") == "sim" for r in runs):
        return fidelity_statements(results)
    groups: dict = {}
    for r in runs:
        if r.get("fidelity") == "native":
            continue
        steps = r.get("fidelity_steps") or {}
        by_label: dict = {}
        for k, v in steps.items():
            if v != "native":
                by_label.setdefault(v, []).append(k)
        key = (r["strategy"], tuple((lab, tuple(sorted(ks))) for lab, ks in sorted(by_label.items())))
        groups.setdefault(key, []).append(r["workload"])
    out = []
    for (strategy, labels), workloads in groups.items():
        what = "; ".join(f"{lab}: {', '.join(ks)}" for lab, ks in labels) or "see report.md"
        out.append(f"{strategy} ({', '.join(workloads)}) not all native - {what}.")
    return out


def fidelity_statements(results: dict) -> list[str]:
    """Plain sentences about every result that is not a native measurement."""
    out = []
    runs = results.get("runs", [])
    if runs and all(r.get("backend") == "sim" for r in runs):
        names = sorted({(r.get("cost_profile") or {}).get("name", "?") for r in runs})
        out.append("All numbers in this report are SIMULATED: they come from the cost model "
                   f"(profile {', '.join(names)}), not from running the kernel.")
        return out
    for r in runs:
        fid = r.get("fidelity", "?")
        if fid == "native":
            continue
        steps = r.get("fidelity_steps") or {}
        not_native = sorted(f"{k} {v}" for k, v in steps.items() if v != "native")
        detail = f" (steps: {', '.join(not_native)})" if not_native else ""
        if fid == "simulated":
            out.append(f"{r['key']} is SIMULATED by the cost model{detail}.")
        elif fid == "emulated" or fid.startswith("mixed"):
            out.append(f"{r['key']} is {fid.upper()}: not every step ran as the real kernel "
                       f"interface{detail}.")
        else:
            out.append(f"{r['key']}: fidelity {fid}{detail}.")
    return out


# --- summary.txt -------------------------------------------------------------------------

def summary_rows(results: dict) -> list[dict]:
    """Per workload: its runs in strategy order and the dual/in-place ratios."""
    rows = []
    for w, runs in runs_by_workload(results).items():
        by = {r["strategy"]: r for r in runs}
        ratios = {}
        if "in-place" in by and "dual" in by:
            for q in ("p50", "p99"):
                ratios[q] = _ratio(_m(by["dual"], "latency_ns", q), _m(by["in-place"], "latency_ns", q))
            ratios["fp"] = _ratio(_m(by["dual"], "footprint_bytes", "peak"),
                                  _m(by["in-place"], "footprint_bytes", "peak"))
        rows.append({"workload": w, "runs": runs, "ratios": ratios})
    return rows


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, break_long_words=True, break_on_hyphens=False) or [""]


def summary_text(results: dict) -> str:
    runs = results.get("runs", [])
    backends = sorted({r.get("backend", "?") for r in runs})
    reps = sorted({r.get("repetitions") for r in runs if r.get("repetitions")})
    host = results.get("host") or {}
    lines = []
    lines += _wrap(f"gmembench {results.get('package_version', '?')}, run "
                   f"{results.get('run_id', '?')}, backend {'/'.join(backends)}, "
                   f"{'/'.join(str(r) for r in reps)} repetition(s)")
    scales = sorted({r.get("scale") for r in runs if r.get("scale") is not None})
    quick = " QUICK (scaled-down workloads)," if any(r.get("quick") for r in runs) else ""
    lines += _wrap(f"host: {host.get('kernel', '?')}, {host.get('cpu', '?')};{quick} "
                   f"scale {'/'.join(f'{s:g}' for s in scales) or '?'}")
    for s in fidelity_notes_short(results):
        lines += _wrap("NOTE: " + s)
    lines.append("")
    head = f"{'':2}{'strategy':<12}{'p50':>8}{'p99':>8}{'copied':>9}{'fp/guest':>10}{'huge end':>10}"
    lines.append(head)
    lines.append("-" * len(head))
    for row in summary_rows(results):
        fids = sorted({r.get("fidelity", "?") for r in row["runs"]})
        lines += _wrap(f"{row['workload']} ({', '.join(fids)})")
        for r in row["runs"]:
            lines.append(f"{'':2}{r['strategy'][:12]:<12}"
                         f"{fmt_ns(_m(r, 'latency_ns', 'p50')):>8}"
                         f"{fmt_ns(_m(r, 'latency_ns', 'p99')):>8}"
                         f"{fmt_bytes(_m(r, 'bytes_copied')):>9}"
                         f"{fmt_ratio(_m(r, 'footprint_ratio', 'peak')):>10}"
                         f"{fmt_pct(_m(r, 'hugepage_coverage', 'end')):>10}")
            failed = _m(r, "failed_conversions", default=0)
            if failed:
                lines.append(f"{'':4}{failed} failed conversion(s): {_errors(r)}"[:WIDTH])
        rt = row["ratios"]
        if rt:
            lines.append(f"{'':2}{'dual/in-pl.':<12}{fmt_ratio(rt.get('p50')):>8}"
                         f"{fmt_ratio(rt.get('p99')):>8}{'':>9}{fmt_ratio(rt.get('fp')):>10}")
    lines.append("")
    lines += _wrap("p50/p99: conversion latency; copied: bytes copied per run (all "
                   "repetitions); fp/guest: peak host footprint / guest memory; huge end: "
                   "guest memory on huge pages at the end; dual/in-pl.: ratio of dual to "
                   "in-place (>1: in-place better).")
    return "\n".join(ln.rstrip() for ln in lines) + "\n"


def _errors(run: dict) -> str:
    errs = _m(run, "errors", default={}) or {}
    return ", ".join(f"{k} x{v}" for k, v in sorted(errs.items())) or "no errno recorded"


# --- report.md ---------------------------------------------------------------------------

def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _flat(prefix: str, obj, out: list) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out.append((prefix, obj))


def report_markdown(results: dict, samples: dict, summary_png: Path | None,
                    plots: dict, pyperf_files: list, outdir: Path) -> str:
    runs = results.get("runs", [])
    backends = sorted({r.get("backend", "?") for r in runs})
    md = ["# gmembench: in-place vs dual-backing guest_memfd conversion",
          "",
          f"Run `{results.get('run_id', '?')}`, created {results.get('created', '?')}, "
          f"gmembench {results.get('package_version', '?')}, backend **{'/'.join(backends)}**.",
          ""]
    notes = fidelity_statements(results)
    if notes:
        md += ["## Fidelity", ""] + [f"- **{n}**" for n in notes] + [""]
    else:
        md += ["All results were measured natively on the running kernel.", ""]

    md += ["## Summary", ""]
    header = ["workload", "strategy", "fidelity", "p50", "p99", "max", "failed",
              "copied", "copy share", "footprint peak", "fp/guest", "huge end", "splits"]
    rows = []
    for row in summary_rows(results):
        for r in row["runs"]:
            share = copy_share(r, samples)
            rows.append([row["workload"], r["strategy"], r.get("fidelity", "?"),
                         fmt_ns(_m(r, "latency_ns", "p50")), fmt_ns(_m(r, "latency_ns", "p99")),
                         fmt_ns(_m(r, "latency_ns", "max")), _m(r, "failed_conversions", default="-"),
                         fmt_bytes(_m(r, "bytes_copied")),
                         fmt_pct(share) if share is not None else "-",
                         fmt_bytes(_m(r, "footprint_bytes", "peak")),
                         fmt_ratio(_m(r, "footprint_ratio", "peak")),
                         fmt_pct(_m(r, "hugepage_coverage", "end")),
                         _m(r, "huge_splits", default="-")])
        rt = row["ratios"]
        if rt:
            rows.append([row["workload"], "**dual / in-place**", "", fmt_ratio(rt.get("p50")),
                         fmt_ratio(rt.get("p99")), "", "", "", "", fmt_ratio(rt.get("fp")),
                         "", "", ""])
    md += [_md_table(header, rows), ""]
    md += ["Latency: per conversion, all repetitions pooled (per-repetition values are in "
           "results.json `per_rep`). Copied: bytes copied over all repetitions. "
           "fp/guest: peak host memory held for the guest divided by guest memory.", ""]

    checks = []
    for r in runs:
        c = _m(r, "checks", default={}) or {}
        checks.append([r["key"], c.get("content_pages_checked", "-"),
                       c.get("content_mismatch_pages", "-"), c.get("sigbus_expected", "-"),
                       c.get("sigbus_seen", "-"), c.get("unexpected_sigbus", "-")])
    md += ["### Semantic checks", "",
           _md_table(["run", "pages checked", "mismatching pages", "SIGBUS expected",
                      "SIGBUS seen", "unexpected SIGBUS"], checks), ""]

    md += ["## Figures", ""]
    if summary_png:
        md += [f"![dual/in-place ratios]({summary_png.relative_to(outdir).as_posix()})", ""]
    for w, paths in plots.items():
        if paths:
            md += [f"### {w}", ""]
            desc = next((r.get("description") for r in runs if r["workload"] == w
                         and r.get("description")), None)
            if desc:
                md += [desc, ""]
            for p in paths:
                md += [f"![{w} {p.stem}]({p.relative_to(outdir).as_posix()})", ""]

    md += ["## Method", ""]
    host = results.get("host") or {}
    md += [f"- Command: `{' '.join(str(c) for c in results.get('command') or [])}`"]
    for r0 in runs[:1]:
        md += [f"- Scale: {r0.get('scale')}, quick: {r0.get('quick')}"]
    seeds = sorted({(r["workload"], r.get("seed")) for r in runs}, key=str)
    md += [f"- Seeds: {', '.join(f'{w}={s}' for w, s in seeds)}"]
    reps = sorted({(r["workload"], r.get("repetitions")) for r in runs}, key=str)
    md += [f"- Repetitions: {', '.join(f'{w}={n}' for w, n in reps)}"]
    profiles = {(r.get("cost_profile") or {}).get("name"): r.get("cost_profile")
                for r in runs if r.get("cost_profile")}
    if profiles:
        for name, p in profiles.items():
            md += [f"- Cost profile: `{name}` ({p.get('source', '?')}; {p.get('path', '')})"]
    else:
        md += ["- Cost profile: none (host backend: measured on the kernel)"]
    md += ["", "### Host", ""]
    facts: list = []
    _flat("", host, facts)
    md += [_md_table(["fact", "value"], [[k, f"`{v}`"] for k, v in facts]), ""]
    md += ["### Fidelity of each step", ""]
    steps = sorted({s for r in runs for s in (r.get("fidelity_steps") or {})})
    if steps:
        md += [_md_table(["run"] + steps,
                         [[r["key"]] + [(r.get("fidelity_steps") or {}).get(s, "-") for s in steps]
                          for r in runs]), ""]
    emulation = [(r["key"], note) for r in runs
                 for note in (r.get("metadata") or {}).get("emulation") or []]
    slowed = [r["key"] for r in runs if (r.get("metadata") or {}).get("slowdown", 1.0) != 1.0]
    if emulation or slowed:
        md += ["### What the host backend emulated or changed", ""]
        md += [f"- {key}: {note}" for key, note in emulation]
        md += [f"- **{key}: a delay was injected into every conversion step (slowdown "
               f"parameter, for testing a regression gate): not a measurement of the kernel**"
               for key in slowed]
        md += [""]
    md += ["### pyperf", "",
           f"{len(pyperf_files)} files in `pyperf/`, one per workload x strategy x metric, "
           "one pyperf run per repetition; host facts pyperf does not collect (THP, hugetlb, "
           "KVM) are in each run's metadata. Examples:", "", "```",
           "python -m pyperf stats pyperf/<workload>--dual--latency.json",
           "python -m pyperf hist pyperf/<workload>--in-place--latency.json",
           "python -m pyperf compare_to OLD/pyperf/X.json NEW/pyperf/X.json", "```", "",
           "For a CI regression gate use `gmembench compare BASE CUR` (per-repetition "
           "statistics, exit 1 on regression), not `pyperf compare_to`.", ""]
    return "\n".join(md)


# --- rendering the figures in parallel ----------------------------------------------------
#
# The figures are independent and take most of a report's time (matplotlib layout and PNG
# encoding), so they render in worker processes while this one writes the pyperf files and
# the text.  Workers are forked: they inherit matplotlib (imported, fonts loaded) and the
# results and samples through _JOBS, so nothing but a job's index and the path it wrote
# crosses a pipe.

_JOBS: list = []


def _render(i: int):
    _, fn, args = _JOBS[i]
    return fn(*args)


def _workers(jobs: int | None) -> int:
    if jobs is not None:
        return max(1, int(jobs))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class _Figures:
    """Start rendering figure jobs; .paths() waits for them, in job order."""

    def __init__(self, jobs: list, workers: int):
        import multiprocessing
        self.jobs, self.pool, self.pending, self.workers = jobs, None, None, 1
        if workers > 1 and len(jobs) > 1 and "fork" in multiprocessing.get_all_start_methods():
            import matplotlib.font_manager
            matplotlib.font_manager.fontManager   # load the font list once, before the fork
            from concurrent.futures import ProcessPoolExecutor
            global _JOBS
            _JOBS = jobs
            self.workers = min(workers, len(jobs))
            self.pool = ProcessPoolExecutor(self.workers,
                                            mp_context=multiprocessing.get_context("fork"))
            self.pending = self.pool.map(_render, range(len(jobs)))

    def paths(self) -> list:
        if self.pool is None:
            return [fn(*args) for _, fn, args in self.jobs]
        try:
            return list(self.pending)
        finally:
            self.close()

    def close(self) -> None:
        global _JOBS
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        _JOBS = []


def write_report(results_dir, jobs: int | None = None, timings: dict | None = None) -> Path:
    """Write report.md, summary.txt, plots/*.png and pyperf/*.json; return report.md.
    jobs: processes rendering figures (default: the CPUs this process may run on; 1 = in
    this process).  timings, if given, receives the wall seconds of each part."""
    t0 = time.perf_counter()
    results = load_results(results_dir)
    outdir = Path(results["_dir"])
    samples = load_samples(results)
    (outdir / "plots").mkdir(parents=True, exist_ok=True)
    fig_jobs = figure_jobs(results, samples, outdir / "plots")
    t_plots = time.perf_counter()
    figures = _Figures(fig_jobs, _workers(jobs))
    try:
        t = time.perf_counter()
        pyperf_files = write_pyperf(results, outdir / "pyperf")
        atomic_write_text(outdir / "summary.txt", summary_text(results))
        t_side = time.perf_counter() - t
        summary_png, plots = collect_figures(fig_jobs, figures.paths())
    finally:
        figures.close()
    t_plots = time.perf_counter() - t_plots
    path = outdir / "report.md"
    atomic_write_text(path, report_markdown(results, samples, summary_png, plots,
                                            pyperf_files, outdir))
    if timings is not None:
        timings.update({"plots_s": t_plots, "pyperf+summary_s": t_side,
                        "report_s": time.perf_counter() - t0,
                        "plot_workers": figures.workers})
    return path


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", metavar="RESULTS_DIR",
                        help="a results/<run-id>/ directory written by `gmembench run`")
    parser.add_argument("--print", dest="print_summary", action="store_true", default=True,
                        help="print summary.txt (default)")
    parser.add_argument("--quiet", dest="print_summary", action="store_false",
                        help="only print where the report went")


def cli_report(args) -> int:
    if not Path(args.results_dir).exists():
        raise InputError("no such results directory", args.results_dir)
    path = write_report(args.results_dir)
    if args.print_summary:
        print((path.parent / "summary.txt").read_text(), end="")
    print(f"report: {path}")
    return 0
