"""`gmembench report RESULTS_DIR`: report.md, summary.txt, plots/*.png and pyperf/*.json.

report.md   summary table, the figures, and the method: host facts, backend, scale,
            fidelity of every step, cost profile, seed, package version.  Anything not
            measured natively on the kernel is said to be emulated or simulated, in words.
summary.txt a plain-text table at most 72 columns wide, to paste into a cover letter.

`gmembench run` calls write_report() at the end of every run.
"""
import argparse
import math
import time
import textwrap
from pathlib import Path

from bench.errors import InputError
from bench.report.headline import primitive_unit, ran
from bench.report.plots import collect_figures, copy_share, figure_jobs, runs_by_workload
from bench.report.pyperf_export import write_pyperf
from bench.results import atomic_write_text, load_results, load_samples, write_tidy_csv

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
        steps = {k: v for k, v in steps.items() if ran(r, k)}   # what this run executed
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
        steps = {k: v for k, v in steps.items() if ran(r, k)}   # what this run executed
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
    lead = len(text) - len(text.lstrip(" "))
    return textwrap.wrap(text, WIDTH, break_long_words=True, break_on_hyphens=False,
                         subsequent_indent=" " * (lead + 2 if lead else 0)) or [""]


def _dir_short(d: str) -> str:
    return {"to_shared": "to-sh", "to_private": "to-pr", "all": "both"}[d]


def summary_text(results: dict) -> str:
    """At most 72 columns: per workload who wins on total time and on conversion time, by
    how much, per direction, the primitives behind the difference, failures, memory."""
    from bench.report.headline import DIRS, emulated_steps, winner_text, workload_headlines
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
    head = (f"{'':2}{'strategy':<10}{'dir':<6}{'conv':>9}{'induced':>9}{'total':>9}"
            f"{'p50':>8}{'p99':>8}{'fail':>6}")
    for h in workload_headlines(results):
        fids = sorted({r.get("fidelity", "?") for r in h["runs"].values()})
        lines += _wrap(f"{h['workload']} ({', '.join(fids)})")
        rt = h["ratios"]
        if rt:
            tot, conv = rt[("all", "total")], rt[("all", "conversion")]
            lines += _wrap(f"  TOTAL TIME: {winner_text(tot[0])} (dual/in-place "
                           f"{fmt_ratio(tot[0])}); conversion only: {winner_text(conv[0])} "
                           f"({fmt_ratio(conv[0])}){h['caveat']}")
        lines.append(head)
        for sname, r in h["runs"].items():
            m = r.get("metrics") or {}
            n = max(1, r.get("repetitions") or 1)
            mark = "*" if emulated_steps(r) else ""
            for i, d in enumerate(DIRS):
                dd = (m.get("directions") or {}).get(d) or {}
                lat = dd.get("latency_ns") or {}
                lines.append(f"{'':2}{((sname + mark)[:10] if i == 0 else ''):<10}"
                             f"{_dir_short(d):<6}"
                             f"{fmt_ns(dd.get('conversion_time_ns', 0) / n):>9}"
                             f"{fmt_ns(dd.get('induced_time_ns', 0) / n):>9}"
                             f"{fmt_ns(dd.get('total_time_ns', 0) / n):>9}"
                             f"{fmt_ns(lat.get('p50')):>8}{fmt_ns(lat.get('p99')):>8}"
                             f"{dd.get('failed_conversions', 0):>6}")
            fc, fa, errs = h["failures"][sname]
            if fc or fa or errs:
                lines += _wrap(f"    FAILURES {sname}: {fc} conversion(s), {fa} access(es) "
                               f"failed: {errs or 'no errno recorded'}")
        if rt:
            lines.append(f"{'':2}{'dual/in-pl.':<10}{'':6}")
            for d in ("all",) + DIRS:
                lines.append(f"{'':4}{'':8}{_dir_short(d):<6}"
                             + "".join(f"{fmt_ratio(rt[(d, p)][0]):>9}"
                                       for p in ("conversion", "induced", "total")))
        if h["top"]:
            lines += _wrap("  why (dual - in-place per run): " + ", ".join(
                f"{k} {'+' if v > 0 else '-'}{fmt_ns(abs(v))}" for k, v in h["top"]))
        mem = []
        for sname, r in h["runs"].items():
            hp = _m(r, "huge_pages", default={}) or {}
            s2 = hp.get("stage2_huge_share")
            intact = hp.get("intact_huge_folio_share")
            nm = hp.get("not_measurable") or {}

            def na(k):
                return "n/a" if nm.get(k, "").startswith("not applicable") else "n/m"
            mem.append(f"{sname} fp/guest {fmt_ratio(_m(r, 'footprint_ratio', 'peak'))}, "
                       f"stage-2 huge {fmt_pct(s2['end']) if s2 else na('stage2_huge_share')}, "
                       f"intact huge folios "
                       f"{fmt_pct(intact['end']) if intact else na('intact_huge_folio_share')}")
        lines += _wrap("  memory at end: " + "; ".join(mem))
        lines.append("")
    lines += _wrap("Times are per repetition. conv: time in the conversions; induced: "
                   "time of the later accesses to the converted pages (faults, refaults, "
                   "zeroing, firmware, the access itself); total = conv + induced. "
                   "to-sh/to-pr: direction. dual/in-pl.: ratio of dual to in-place "
                   "(>1: in-place better). fail: failed conversions. n/m: not measurable "
                   "on this backend; n/a: no huge folio size in this layout. *: emulated "
                   "steps (see NOTE).")
    return "\n".join(ln.rstrip() for ln in lines) + "\n"


def _errors(run: dict) -> str:
    errs = _m(run, "errors", default={}) or {}
    return ", ".join(f"{k} x{v}" for k, v in sorted(errs.items())) or "no errno recorded"


# --- report.md ---------------------------------------------------------------------------

def _failures_md(runs: list) -> list[str]:
    out = ["### Failures", ""]
    bad = [r for r in runs if _m(r, "failed_conversions", default=0)
           or _m(r, "failed_accesses", default=0) or _m(r, "errors", default={})]
    if not bad:
        return out + ["No conversion or access failed in any run (no errno recorded).", ""]
    rows = [[r["key"], _m(r, "failed_conversions", default=0),
             _m(r, "failed_accesses", default=0), _errors(r)] for r in bad]
    return out + [_md_table(["run", "failed conversions", "failed accesses",
                             "errors (errno x count, every failed step)"], rows), ""]


def _share_cell(v, why: str = "") -> str:
    if v is None:
        return "n/a" if why.startswith("not applicable") else "not measurable"
    return f"{fmt_pct(v['start'])} -> {fmt_pct(v['end'])} (min {fmt_pct(v['min'])})"


def _huge_md(runs: list) -> list[str]:
    out = ["### Huge pages", "",
           "Three measures, each for what it counts: stage-2 huge = guest memory mapped by "
           "2M/1G stage-2 leaves (KVM's pages_2m/pages_1g); host PMD-mapped = shared memory "
           "the host maps with PMDs, of guest memory; intact folios = physically intact huge "
           "folios of those the memory could hold. Mapping demotions (a huge mapping split to "
           "4K, the folio kept) are counted apart from physical folio splits and merges "
           "(per repetition).", ""]
    rows, notes = [], set()
    for r in runs:
        hp = _m(r, "huge_pages", default={}) or {}
        nm = hp.get("not_measurable") or {}
        for k, why in nm.items():
            if not why.startswith("not applicable"):
                notes.add(f"{r.get('backend')}: {k} - {why}")

        def c(k):
            return "not measurable" if hp.get(k) is None else f"{hp[k]:.0f}"
        rows.append([r["key"], _share_cell(hp.get("stage2_huge_share"), nm.get("stage2_huge_share", "")),
                     _share_cell(hp.get("host_pmd_mapped_share"), nm.get("host_pmd_mapped_share", "")),
                     _share_cell(hp.get("intact_huge_folio_share"), nm.get("intact_huge_folio_share", "")),
                     c("mapping_demotions"), c("folio_splits"), c("folio_merges")])
    out += [_md_table(["run", "stage-2 huge", "host PMD-mapped", "intact huge folios",
                       "mapping demotions", "folio splits", "folio merges"], rows), ""]
    out += [f"- {n}" for n in sorted(notes)] + ([""] if notes else [])
    return out


def _fragmentation_md(runs: list) -> list[str]:
    out = ["### Host memory after the run", "",
           "Unusable free space index and fragmentation index (mm/vmstat.c) per zone, at "
           "order 9 (2M) and MAX_PAGE_ORDER 10 only (the kernel has no larger free block); "
           "fragmentation index '-' where a block of that order is free. Pageblocks: how "
           "many carry each migratetype label. Allocatable: how many 2M / 1G pages could "
           "still be allocated.", ""]
    rows = []
    for r in runs:
        f = _m(r, "fragmentation", default={}) or {}
        pb = f.get("pageblocks")
        alloc = f.get("allocatable_huge")
        notes = f.get("notes") or {}
        pb_text = (", ".join(f"{k} {v}" for k, v in pb.items()) if isinstance(pb, dict)
                   and all(not isinstance(v, dict) for v in pb.values()) else
                   "; ".join(f"{z}: " + ", ".join(f"{k} {v}" for k, v in c.items() if v)
                             for z, c in pb.items()) if isinstance(pb, dict) else
                   notes.get("pageblocks", "not measured"))
        al_text = (", ".join(f"{k} {v}" for k, v in alloc.items()) if isinstance(alloc, dict)
                   else notes.get("allocatable_huge", "not measured"))
        if isinstance(alloc, dict) and notes.get("allocatable_huge"):
            al_text += f" ({notes['allocatable_huge']})"
        for z, zi in (f.get("zones") or {}).items():
            fi = zi.get("fragmentation_index") or {}
            ui = zi.get("unusable_index") or {}
            rows.append([r["key"], z, f"{ui.get('order9', float('nan')):.3f}",
                         f"{ui.get('order10', float('nan')):.3f}",
                         "-" if fi.get("order9") is None else f"{fi['order9']:.3f}",
                         "-" if fi.get("order10") is None else f"{fi['order10']:.3f}",
                         pb_text, al_text])
    return out + [_md_table(["run", "zone", "unusable o9", "unusable o10", "frag o9",
                             "frag o10", "pageblocks", "allocatable"], rows), ""]


def _breakdown_md(runs: list) -> list[str]:
    out = ["### Where the time went", "",
           "By step, over all repetitions: steps = operations executed, pages = 4K pages "
           "they covered. Then by cost-model primitive (simulator) or step (host), with what "
           "each count counts (operations, 4K pages, folios...). The primitive breakdown is "
           "not split by direction (the step breakdown above is).", ""]
    for r in runs:
        rows = []
        for d, parts in (_m(r, "step_breakdown", default={}) or {}).items():
            for part, steps in parts.items():
                for k, v in sorted(steps.items(), key=lambda kv: -kv[1]["ns"]):
                    rows.append([d.replace("_", "-"), part, k, v["steps"], v["pages"],
                                 fmt_ns(v["ns"])])
        prim = r.get("breakdown") or {}
        total = sum(v["ns"] for v in prim.values()) or 1
        out += [f"**{r['key']}**", ""] + _startup_line(r) + [
                _md_table(["direction", "part", "step", "steps (ops)", "4K pages", "time"], rows),
                "", _md_table(["primitive", "count", "unit", "time", "share"],
                              [[k, v["count"], primitive_unit(k, r.get("backend", "sim")),
                                fmt_ns(v["ns"]), fmt_pct(v["ns"] / total)]
                               for k, v in list(prim.items())[:12]]), ""]
    return out


def _startup_line(r: dict) -> list[str]:
    """Start-up work (simulator): done before the first step and in no figure of the run."""
    su = (r.get("metadata") or {}).get("startup")
    if not su:
        return []
    parts = [f"VMM start-up {fmt_ns(su['vmm_ns'])}"] if "vmm_ns" in su else []
    if su.get("accepted_bytes"):
        parts.append(f"the guest's accept of {fmt_bytes(su['accepted_bytes'])} "
                     f"(allocate, prepare, map in stage 2) {fmt_ns(su.get('accept_ns', 0))}")
    top = ", ".join(f"{k} {fmt_ns(v['ns'])}" for k, v in list(su.get("breakdown", {}).items())[:4])
    kind = "measured" if r.get("backend") == "host" else "simulated"
    return [f"Start-up, before measurement and not in any figure of this run ({kind}, per "
            f"repetition): {'; '.join(parts) or fmt_ns(su['ns'])}" + (f" (largest: {top})" if top else "") + ".", ""]


def _uncertain_md(runs: list) -> list[str]:
    profs = {}
    for r in runs:
        p = r.get("cost_profile")
        if p:
            profs[p.get("name")] = p
    out = []
    for name, p in profs.items():
        unc = p.get("uncertain") or {}
        if not unc:
            out += ["", f"Cost profile `{name}` declares no uncertain parameters."]
            continue
        rows = [[k, f"`{(p.get('costs') or {}).get(k)}`", f"`{v.get('low')}`", f"`{v.get('high')}`",
                 (p.get("sources") or {}).get(k, "-")] for k, v in unc.items()]
        out += ["", f"### Uncertain model parameters (profile `{name}`)", "",
                "Costs nobody has published: the value used and its documented range "
                "(`gmembench run --cost KEY=VALUE` to explore).", "",
                _md_table(["parameter", "value used", "low", "high", "source"], rows)]
        if p.get("overrides"):
            out += ["", "Overridden for this run: " + ", ".join(
                f"`{k}={v}`" for k, v in p["overrides"].items())]
        if p.get("outside_range"):
            out += ["", "**Outside their documented range:** " + ", ".join(p["outside_range"])]
    return out


def _provenance_md(results: dict) -> list[str]:
    pv = results.get("provenance")
    if not pv:
        return ["", "- Provenance: not recorded (results written by an older gmembench)"]
    git = pv.get("git") or {}
    commit = (f"{git['commit']}{' (uncommitted changes)' if git.get('dirty') else ''}"
              if git.get("commit") else f"unknown ({git.get('why', '?')})")
    kc = pv.get("kernel_config") or {}
    opts = kc.get("options") or {}
    out = ["", "### Provenance", "",
           f"- gmembench {pv.get('suite_version')}, git commit {commit}",
           f"- kernel {pv.get('kernel_release')}, command line `{pv.get('kernel_cmdline')}`",
           f"- microcode: {pv.get('microcode')}",
           f"- kernel config ({kc.get('source') or kc.get('why', 'unknown')}): "
           + ", ".join(f"{k}={v}" for k, v in opts.items() if v != "absent")]
    return out


def latest_validation(results: dict, outdir: Path) -> dict | None:
    """The newest validation.json of `gmembench validate` among the results dir's siblings
    (results/validate-*/), run on the same host and kernel as these results."""
    import json
    host = results.get("host") or {}
    best = None
    for f in Path(outdir).resolve().parent.glob("*/validation.json"):
        try:
            doc = json.loads(f.read_text())
            hdoc = json.loads((Path(doc["host_results"]) / "results.json").read_text())
        except (OSError, ValueError, KeyError, TypeError):
            continue
        hh = hdoc.get("host") or {}
        if (hh.get("hostname"), hh.get("kernel")) != (host.get("hostname"), host.get("kernel")):
            continue
        if best is None or doc.get("created", "") > best.get("created", ""):
            doc["_path"] = str(f)
            best = doc
    return best


def _validation_md(results: dict, outdir: Path) -> list[str]:
    v = latest_validation(results, outdir)
    if v is None:
        return ["", "### Validation", "", "No `gmembench validate` output for this host and "
                "kernel next to these results: the simulator's agreement with this host is "
                "not known here."]
    rows = [[r.get("workload"), r.get("strategy"), r.get("metric"), r.get("host"), r.get("sim"),
             "-" if r.get("disagreement") is None else f"{100 * r['disagreement']:+.1f}%",
             r.get("tolerance"), r.get("verdict")] for r in v.get("rows") or []]
    return ["", "### Validation", "",
            f"Last `gmembench validate` on this host ({v.get('created')}, `{v['_path']}`): "
            f"{v.get('decided_rows', 0) - v.get('missed_rows', 0)} of {v.get('decided_rows', 0)} "
            "decided rows within tolerance.", "",
            _md_table(["workload", "strategy", "metric", "host", "sim", "disagreement",
                       "tolerance", "verdict"], rows)]


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
                    plots: dict, pyperf_files: list, outdir: Path,
                    skipped: list | None = None) -> str:
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
    md += ["```", summary_text(results).rstrip(), "```", ""]
    md += ["### Time accounting per direction", "",
           "Conversion time: the conversions' own steps. Induced time: the later accesses to "
           "the pages a conversion produced (faults, refaults, zeroing and firmware work "
           "charged at the access, and the access itself), attributed to the direction whose "
           "conversion made the pages shared (to-shared) or private (to-private); accesses to "
           "memory never converted are baseline, in neither. Sums over all repetitions; per "
           "conversion = over every conversion asked for; per GiB = over the bytes converted "
           "successfully.", ""]
    header = ["run", "fidelity", "direction", "conversions", "failed", "p50", "p99",
              "conversion", "induced", "total", "total / conversion", "total / GiB"]
    rows = []
    for r in runs:
        for d in ("to_shared", "to_private"):
            dd = _m(r, "directions", d, default={}) or {}
            if not dd.get("conversions"):
                continue
            lat = dd.get("latency_ns") or {}
            rows.append([r["key"], r.get("fidelity", "?"), d.replace("_", "-"),
                         dd.get("conversions"), dd.get("failed_conversions"),
                         fmt_ns(lat.get("p50")), fmt_ns(lat.get("p99")),
                         fmt_ns(dd.get("conversion_time_ns")), fmt_ns(dd.get("induced_time_ns")),
                         fmt_ns(dd.get("total_time_ns")),
                         fmt_ns((dd.get("per_conversion_ns") or {}).get("total")),
                         fmt_ns((dd.get("per_gib_ns") or {}).get("total"))])
        t = _m(r, "time_ns", default={}) or {}
        if t.get("baseline_access"):
            rows.append([r["key"], "", "baseline access", "", "", "", "", "", "",
                         fmt_ns(t["baseline_access"]), "", ""])
    md += [_md_table(header, rows), ""]
    md += _failures_md(runs)
    md += _huge_md(runs)
    md += _fragmentation_md(runs)
    md += _breakdown_md(runs)

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
    if skipped:
        md += ["Not drawn (nothing to show):", ""]
        md += [f"- {x['workload']}: {x['figure']} - {x['why']}" for x in skipped] + [""]
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
    md += _uncertain_md(runs)
    md += _provenance_md(results)
    md += _validation_md(results, outdir)
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
    slowed = [(r["key"], (r.get("metadata") or {}).get("slowdown_direction", "both"))
              for r in runs if (r.get("metadata") or {}).get("slowdown", 1.0) != 1.0]
    if emulation or slowed:
        md += ["### What the host backend emulated or changed", ""]
        md += [f"- {key}: {note}" for key, note in emulation]
        md += [f"- **{key}: a delay was injected into every conversion step"
               f"{'' if d == 'both' else f' of the {d} conversions'} (slowdown "
               f"parameter, for testing a regression gate): not a measurement of the kernel**"
               for key, d in slowed]
        md += [""]
    md += ["### pyperf", "",
           f"{len(pyperf_files)} suite files in `pyperf/`, one per strategy, with benchmark "
           "names free of the strategy (`<workload>/<metric>`: latency, latency per "
           "direction, total/conversion/induced time per repetition, latency per 4K, "
           "footprint), one pyperf run per repetition; the metadata says whether values were "
           "subsampled, and carries the host facts pyperf does not collect (THP, hugetlb, "
           "KVM). Compare the strategies, with the geometric mean:", "", "```",
           "python -m pyperf compare_to pyperf/in-place.json pyperf/dual.json --table",
           "python -m pyperf stats pyperf/dual.json", "```", "",
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


def _cost(job) -> int:
    """Relative rendering time of a figure job (measured: the summary and the multi-figure
    huge-page job take about twice a latency CDF, which takes about twice a single plot)."""
    fn = job[2][0] if job[2] else None
    name = getattr(fn, "__name__", "")
    return {"plot_summary": 4, "plot_huge_pages": 3, "plot_latency_cdf": 2}.get(name, 1)


class _Figures:
    """Start rendering figure jobs; .paths() waits for them, in job order."""

    def __init__(self, jobs: list, workers: int):
        from bench.parallel import fork_pool
        self.jobs, self.pending, self.workers = jobs, None, 1
        import matplotlib.font_manager  # noqa: F401 - loads the font list once, before any fork
        global _JOBS
        _JOBS = jobs                              # before the fork: workers inherit it
        self.pool = fork_pool(min(workers, len(jobs)))
        if self.pool is not None:
            self.workers = min(workers, len(jobs))
            # longest first, so that no long figure starts last and keeps one worker busy
            # while the others are done
            order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i]))
            futures = {i: self.pool.submit(_render, i) for i in order}
            self.pending = [futures[i] for i in range(len(jobs))]

    def paths(self) -> list:
        if self.pool is None:
            return [fn(*args) for _, fn, args in self.jobs]
        try:
            return [f.result() for f in self.pending]
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
    this process, as in a process that may not have children).  timings, if given,
    receives the wall seconds of each part."""
    t0 = time.perf_counter()
    results = load_results(results_dir)
    outdir = Path(results["_dir"])
    samples = load_samples(results)
    (outdir / "plots").mkdir(parents=True, exist_ok=True)
    fig_jobs = figure_jobs(results, samples, outdir / "plots")
    t_plots = time.perf_counter()
    from bench.parallel import cpus_available
    figures = _Figures(fig_jobs, cpus_available() if jobs is None else max(1, int(jobs)))
    skipped: list = []
    try:
        t = time.perf_counter()
        pyperf_files = write_pyperf(results, outdir / "pyperf")
        atomic_write_text(outdir / "summary.txt", summary_text(results))
        write_tidy_csv(results, outdir / "results.csv")
        t_side = time.perf_counter() - t
        summary_png, plots = collect_figures(fig_jobs, figures.paths(), skipped)
    finally:
        figures.close()
    t_plots = time.perf_counter() - t_plots
    path = outdir / "report.md"
    atomic_write_text(path, report_markdown(results, samples, summary_png, plots,
                                            pyperf_files, outdir, skipped))
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
