"""The headline's definitions, on hand-built cases whose answers are worked out by hand:
time accounting (conversion / induced / total per direction, the attribution rule),
huge-page measures, fragmentation at kernel orders, failures in the tables, the tidy
export and the schema, qualification of emulated steps, provenance, the bare command."""
import json

import numpy as np
import pytest

from bench import accounting
from bench.metrics import RepetitionRecord, huge_page_measures
from bench.ops import OpKind, RESULT_DTYPE, STEP_CONVERSION, Step, empty_ops, empty_steps

S, P = OpKind.TO_SHARED, OpKind.TO_PRIVATE
SW, SR, PW, PR, PROBE = (OpKind.SHARED_WRITE, OpKind.SHARED_READ, OpKind.PRIVATE_WRITE,
                         OpKind.PRIVATE_READ, OpKind.SHARED_PROBE)
K = 4096


def stream(rows):
    """rows: (kind, offset in 4K pages, pages, ns, status) -> ops, steps, res with one step
    per op (a conversion step for conversions, a touch step otherwise)."""
    ops = empty_ops(len(rows))
    steps = empty_steps(len(rows))
    res = np.zeros(len(rows), dtype=RESULT_DTYPE)
    for i, (kind, off, pages, ns, st) in enumerate(rows):
        ops[i]["kind"], ops[i]["offset"], ops[i]["size"] = kind, off * K, pages * K
        conv = kind in (S, P)
        steps[i]["op"], steps[i]["offset"], steps[i]["size"] = i, off * K, pages * K
        steps[i]["code"] = Step.GMEM_SET_ATTRS if conv else (
            Step.WRITE if kind in (SW, PW) else Step.READ)
        steps[i]["flags"] = STEP_CONVERSION if conv else 0
        res[i]["ns"], res[i]["status"] = ns, st
    return ops, steps, res


# ---------------------------------------------------------------- attribution rule
def test_touches_are_attributed_to_the_conversion_that_produced_their_state():
    ops, _, _ = stream([
        (PW, 0, 4, 0, 0),     # 0 private write, nothing converted yet: baseline
        (SW, 8, 1, 0, 0),     # 1 shared write of memory never converted: baseline
        (S, 0, 2, 0, 0),      # 2 pages 0-1 -> shared
        (SW, 1, 2, 0, 0),     # 3 pages 1-2: page 1 was converted -> to_shared
        (SR, 2, 1, 0, 0),     # 4 page 2 never converted to shared -> baseline
        (P, 0, 2, 0, 0),      # 5 pages 0-1 -> private
        (PR, 0, 1, 0, 0),     # 6 private read of a page converted to private -> to_private
        (PROBE, 1, 1, 0, 0),  # 7 host probe of a private page converted -> to_private
        (PW, 3, 1, 0, 0),     # 8 private page 3, never converted -> baseline
        (OpKind.PIN, 0, 1, 0, 0),   # 9 neither
    ])
    a = accounting.attribute_touches(ops)
    assert a.tolist() == [accounting.BASELINE, accounting.BASELINE, accounting.TO_SHARED,
                          accounting.TO_SHARED, accounting.BASELINE, accounting.TO_PRIVATE,
                          accounting.TO_PRIVATE, accounting.TO_PRIVATE, accounting.BASELINE,
                          accounting.OTHER]


def test_a_touch_before_the_conversion_is_not_induced_by_it():
    ops, _, _ = stream([(SW, 0, 1, 0, 0), (S, 0, 1, 0, 0), (SW, 0, 1, 0, 0)])
    assert accounting.attribute_touches(ops).tolist() == [accounting.BASELINE,
                                                          accounting.TO_SHARED,
                                                          accounting.TO_SHARED]


def test_slots_are_separate():
    ops, _, _ = stream([(S, 0, 1, 0, 0), (SW, 0, 1, 0, 0)])
    ops["slot"][1] = 1
    assert accounting.attribute_touches(ops)[1] == accounting.BASELINE


# ---------------------------------------------------------------- time accounting
def test_conversion_induced_and_total_per_direction_with_per_unit_figures():
    ops, steps, res = stream([
        (PW, 0, 4, 1000, 0),     # baseline 1000
        (S, 0, 2, 100, 0),       # to_shared conversion 100 (8 KiB)
        (SW, 0, 2, 700, 0),      # induced by to_shared 700
        (S, 2, 2, 300, 0),       # to_shared conversion 300
        (SR, 2, 2, 200, 0),      # induced 200
        (P, 0, 4, 50, 0),        # to_private conversion 50 (16 KiB)
        (PR, 0, 4, 5000, 0),     # induced by to_private 5000
        (P, 8, 1, 40, 16),       # failed to_private (EBUSY): its time counts, its bytes not
    ])
    rec = RepetitionRecord(ops, steps, res)
    d = rec.summary()["directions"]
    ts, tp = d["to_shared"], d["to_private"]
    assert (ts["conversion_time_ns"], ts["induced_time_ns"], ts["total_time_ns"]) == (400, 900, 1300)
    assert (tp["conversion_time_ns"], tp["induced_time_ns"], tp["total_time_ns"]) == (90, 5000, 5090)
    assert ts["per_conversion_ns"] == {"conversion": 200, "induced": 450, "total": 650}
    assert tp["per_conversion_ns"]["total"] == pytest.approx(5090 / 2)   # 2 asked for
    assert ts["bytes_converted"] == 4 * K and tp["bytes_converted"] == 4 * K
    assert ts["per_gib_ns"]["total"] == pytest.approx(1300 * (1 << 30) / (4 * K))
    t = rec.summary()["time_ns"]
    assert t == {"conversion": 490, "induced": 5900, "total": 6390, "baseline_access": 1000}
    sb = rec.step_breakdown
    assert sb["to_shared"]["induced"]["WRITE"] == {"steps": 1, "pages": 2, "ns": 700}
    assert sb["to_shared"]["conversion"]["GMEM_SET_ATTRS"] == {"steps": 2, "pages": 4, "ns": 400}
    assert sb["baseline"]["access"]["WRITE"] == {"steps": 1, "pages": 4, "ns": 1000}


def test_failed_accesses_and_errno_counts():
    ops, steps, res = stream([(S, 0, 1, 10, 0), (SW, 0, 1, 5, 12), (SW, 0, 1, 5, 12),
                              (P, 0, 1, 10, 22)])
    rec = RepetitionRecord(ops, steps, res)
    assert rec.failed_accesses == 2 and rec.failed_conversions == 1
    assert rec.errors == {"ENOMEM": 2, "EINVAL": 1}


# ---------------------------------------------------------------- huge pages
def test_three_huge_page_measures_and_counters_from_snapshots():
    g = 8 << 20      # 8 MiB guest: 4 possible 2M folios
    series = [{"stage2_bytes": [{"4k": 0, "2m": g, "1g": 0}, {"4k": g // 2, "2m": g // 2, "1g": 0}],
               "host_pmd_mapped_bytes": [0, 2 << 20],
               "intact_huge_folios": [4, 3], "huge_folios_possible": [4, 4],
               "mapping_demotions": [0, 5], "folio_splits": [1, 2], "folio_merges": [0, 0]},
              {"stage2_bytes": [{"4k": 0, "2m": g, "1g": 0}, {"4k": g, "2m": 0, "1g": 0}],
               "host_pmd_mapped_bytes": [0, 0],
               "intact_huge_folios": [4, 1], "huge_folios_possible": [4, 4],
               "mapping_demotions": [0, 3], "folio_splits": [0, 0], "folio_merges": [0, 1]}]
    m = huge_page_measures(series, g)
    assert m["stage2_huge_share"] == {"start": 1.0, "end": 0.25, "min": 0.0}
    assert m["host_pmd_mapped_share"] == {"start": 0.0, "end": 0.125, "min": 0.0}
    assert m["intact_huge_folio_share"] == {"start": 1.0, "end": 0.5, "min": 0.25}
    assert (m["mapping_demotions"], m["folio_splits"], m["folio_merges"]) == (4.0, 0.5, 0.5)
    assert m["not_measurable"] == {}


def test_a_measure_the_backend_cannot_read_is_none_with_the_reason_never_zero():
    s = {"stage2_bytes": [None, None], "host_pmd_mapped_bytes": [0, 0],
         "not_measurable": {"stage2_huge_share": "not measurable on this host"}}
    m = huge_page_measures([s], 1 << 30)
    assert m["stage2_huge_share"] is None
    assert m["not_measurable"]["stage2_huge_share"] == "not measurable on this host"
    assert m["mapping_demotions"] is None and "mapping_demotions" in m["not_measurable"]


# ---------------------------------------------------------------- fragmentation
def test_zone_indices_only_at_kernel_orders_and_never_below_zero():
    from bench.fragmentation import MAX_PAGE_ORDER, zone_indices
    z = zone_indices([0] * 18 + [1])        # one free 1G run: 256 order-10 blocks
    assert len(z["nr_free"]) == MAX_PAGE_ORDER + 1 and z["nr_free"][10] == 256
    assert set(z["unusable_index"]) == {f"order{o}" for o in range(11)}
    assert z["fragmentation_index"]["order10"] is None        # a block is free
    one = zone_indices([0, 0, 0, 0, 0, 0, 0, 0, 1])          # one order-8 block only
    # kernel formula at order 9: 1 - (1 + 256/512) / 1 = -0.5: lack of memory -> 0
    assert one["fragmentation_index"]["order9"] == 0.0
    assert one["unusable_index"]["order9"] == 1.0


def test_pagetypeinfo_block_counts():
    from bench.fragmentation import parse_pagetypeinfo
    text = ("Page block order: 9\n\nNumber of blocks type     Unmovable      Movable  Reclaimable\n"
            "Node 0, zone      DMA            1            7            0\n"
            "Node 0, zone   Normal          168         1781          163\n")
    assert parse_pagetypeinfo(text) == {
        "node0/DMA": {"Unmovable": 1, "Movable": 7, "Reclaimable": 0},
        "node0/Normal": {"Unmovable": 168, "Movable": 1781, "Reclaimable": 163}}


# ---------------------------------------------------------------- tables, export, schema
WL = """[workload]
description = "tiny"
repetitions = 2
seed = 3
[layout]
gmem_page_size = "2m"
shared_backing = "anon"
shared_page = "thp"
[[layout.memslot]]
gpa = 0
size = "64M"
[[phase]]
generator = "dma-churn"
buffers = 300
in_flight = 16
touch = ["host-write", "guest-read"]
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from bench.runner import run_suite
    d = tmp_path_factory.mktemp("tiny")
    wl = d / "tiny.toml"
    wl.write_text(WL)
    return run_suite([str(wl)], out_dir=d / "res", progress_enabled=False)


def test_tidy_rows_and_csv(tiny_run):
    from bench.results import TIDY_COLUMNS, load_results, tidy_rows
    doc = load_results(tiny_run)
    rows = tidy_rows(doc)
    assert all(tuple(r) == TIDY_COLUMNS for r in rows)
    run = next(r for r in doc["runs"] if r["strategy"] == "dual")
    got = [r["value"] for r in rows if r["strategy"] == "dual" and r["direction"] == "to_shared"
           and r["metric"] == "total_time"]
    assert got == [p["directions"]["to_shared"]["total_time_ns"] for p in run["per_rep"]]
    assert len({(r["workload"], r["strategy"], r["direction"], r["metric"], r["repetition"])
                for r in rows}) == len(rows)
    csv = (tiny_run / "results.csv").read_text().splitlines()
    assert csv[0] == ",".join(TIDY_COLUMNS) and len(csv) == len(rows) + 1


def test_schema_accepts_the_run_and_rejects_a_broken_one(tiny_run):
    import jsonschema
    from bench.results import load_results, validate_results
    doc = load_results(tiny_run)
    validate_results(doc)
    bad = json.loads(json.dumps({k: v for k, v in doc.items() if k != "_dir"}))
    bad["runs"][0]["metrics"]["unusable_index"]["order18"] = 1.0   # not a kernel order
    with pytest.raises(jsonschema.ValidationError):
        validate_results(bad)
    bad = json.loads(json.dumps({k: v for k, v in doc.items() if k != "_dir"}))
    del bad["runs"][0]["metrics"]["directions"]["to_private"]
    with pytest.raises(jsonschema.ValidationError):
        validate_results(bad)


def test_provenance_is_recorded(tiny_run):
    from bench.results import load_results
    pv = load_results(tiny_run)["provenance"]
    assert pv["suite_version"]
    assert "commit" in pv["git"] or pv["git"]["value"] == "unknown"
    assert pv["kernel_cmdline"]


def test_kernel_config_options_parsed():
    from bench.provenance import parse_kernel_config
    got = parse_kernel_config("CONFIG_KVM=y\n# CONFIG_KVM_INTEL is not set\nCONFIG_X=1\n",
                              ("CONFIG_KVM", "CONFIG_KVM_INTEL", "CONFIG_HUGETLBFS"))
    assert got == {"CONFIG_KVM": "y", "CONFIG_KVM_INTEL": "not set", "CONFIG_HUGETLBFS": "absent"}


def test_headline_says_who_wins_on_total_and_conversion(tiny_run):
    from bench.report.headline import workload_headlines
    from bench.results import load_results
    doc = load_results(tiny_run)
    (h,) = workload_headlines(doc)
    by = h["runs"]
    med = {s: np.median([r["time_ns"]["total"] for r in by[s]["per_rep"]]) for s in by}
    assert h["ratios"][("all", "total")][0] == pytest.approx(med["dual"] / med["in-place"])
    text = (tiny_run / "summary.txt").read_text()
    assert "TOTAL TIME" in text and "conversion" in text and "why" in text
    assert max(len(ln) for ln in text.splitlines()) <= 72


def test_failures_show_in_every_table(tmp_path):
    """Allocation errors are headline facts: a 16 MiB host cannot back the churn."""
    from bench.report.report import summary_text
    from bench.results import load_results
    from bench.runner import comparison_table, run_suite
    wl = tmp_path / "tiny.toml"
    wl.write_text(WL)
    out = run_suite([str(wl)], params={"host_memory": "8M"}, out_dir=tmp_path / "r",
                    progress_enabled=False)
    doc = load_results(out)
    errs = {k: v for r in doc["runs"] for k, v in r["metrics"]["errors"].items()}
    assert errs.get("ENOMEM", 0) > 0
    n = next(r for r in doc["runs"] if r["metrics"]["errors"].get("ENOMEM"))
    tag = f"ENOMEM x{n['metrics']['errors']['ENOMEM']}"
    assert tag in comparison_table(doc)
    assert tag in " ".join(summary_text(doc).split())
    assert tag in (out / "report.md").read_text()


# ---------------------------------------------------------------- qualify, bare command
def test_qualify_fails_on_emulated_steps_unless_the_spec_accepts_them(tmp_path, capsys):
    from synthetic_results import make_results_dir
    from bench.cli import main
    d = make_results_dir(tmp_path / "r", reps=2, n=50)
    data = json.loads((d / "results.json").read_text())
    data["runs"][0]["fidelity_steps"]["GMEM_SET_ATTRS"] = "emulated"
    (d / "results.json").write_text(json.dumps(data))
    spec = tmp_path / "q.toml"
    body = ('backend = "host"\nworkloads = ["bounce", "virtio"]\n\n[[check]]\n'
            'metric = "failed_conversions"\nmax = 0\n')
    spec.write_text("[qualify]\n" + body)
    assert main(["qualify", str(spec), "--results", str(d), "--verdict", str(tmp_path / "v.json")]) == 1
    out = capsys.readouterr().out
    assert "NOT QUALIFIED" in out and "bounce/in-place" in out
    spec.write_text("[qualify]\naccept_emulated = true\n" + body)
    assert main(["qualify", str(spec), "--results", str(d), "--verdict", str(tmp_path / "v.json")]) == 0


def test_default_qualification_on_this_kernel_is_not_qualified_where_emulated(tmp_path, capsys):
    """On a kernel without KVM_SET_MEMORY_ATTRIBUTES2 (the one this suite was built on)
    in-place conversions are emulated: qualification must not pass them."""
    import os
    if os.geteuid() != 0 or not os.path.exists("/dev/kvm"):
        pytest.skip("needs root and /dev/kvm (the real kernel)")
    from bench.host.probe import probe
    p = probe()
    if not p["features"] or p["features"]["attrs2"]["native"]:
        pytest.skip("the in-place ioctl is native here: nothing is emulated")
    from bench.cli import main
    spec = tmp_path / "q.toml"
    spec.write_text('[qualify]\nbackend = "host"\nworkloads = ["dma-churn"]\nquick = true\n'
                    'repetitions = 1\nstrategies = ["in-place"]\n'
                    'params = { warmup_repetitions = 0, series_points = 4, '
                    'folio_fallback = "yes" }\n\n'
                    '[[check]]\nmetric = "failed_conversions"\nmax = 0\n')
    assert main(["qualify", str(spec), "--out", str(tmp_path / "r"), "--no-progress"]) == 1
    assert "NOT QUALIFIED" in capsys.readouterr().out


def test_bare_command_prints_help_and_exits_2(capsys):
    from bench.cli import main
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: gmembench" in err and "run" in err


def test_attribution_equals_a_page_by_page_reading_of_the_rule():
    """Random streams: attribute_touches (vectorised) against the rule applied page by
    page, op by op."""
    rng = np.random.default_rng(5)
    kinds = [S, P, SW, SR, PW, PR, PROBE, OpKind.PIN]
    for _ in range(30):
        n = 60
        ops = empty_ops(n)
        ops["kind"] = rng.choice(kinds, n)
        ops["slot"] = rng.integers(0, 2, n)
        ops["offset"] = rng.integers(0, 24, n) * K
        ops["size"] = rng.integers(1, 6, n) * K
        got = accounting.attribute_touches(ops)
        shared = {0: set(), 1: set()}
        private = {0: set(), 1: set()}
        for i, o in enumerate(ops):
            pages = set(range(int(o["offset"]) // K, (int(o["offset"]) + int(o["size"])) // K))
            k, sl = int(o["kind"]), int(o["slot"])
            if k == S:
                want = accounting.TO_SHARED
            elif k == P:
                want = accounting.TO_PRIVATE
            elif k in (SW, SR):
                want = accounting.TO_SHARED if pages & shared[sl] else accounting.BASELINE
            elif k in (PW, PR, PROBE):
                want = accounting.TO_PRIVATE if pages & private[sl] else accounting.BASELINE
            else:
                want = accounting.OTHER
            assert got[i] == want, (i, k)
            if k == S:
                shared[sl] |= pages
            elif k == P:
                private[sl] |= pages


def test_emulation_marks_name_only_what_ran():
    from bench.report.headline import emulated_steps
    run = {"backend": "host", "steps_used": ["VM_SET_ATTRS", "WRITE"],
           "fidelity_steps": {"VM_SET_ATTRS": "emulated", "COPY": "emulated",
                              "WRITE": "native", "gmem_huge_folios": "emulated"}}
    # COPY never ran; gmem_huge_folios is a fact about the run, not a step
    assert emulated_steps(run) == ["VM_SET_ATTRS", "gmem_huge_folios"]
    assert emulated_steps({**run, "backend": "sim"}) == []


def test_report_carries_the_last_validation_of_this_host(tmp_path):
    """`gmembench validate` writes results/validate-*/validation.json; the report of a run
    in results/ on the same host and kernel shows its newest table."""
    from synthetic_results import make_results_dir
    from bench.report.report import write_report
    results = tmp_path / "results"
    run = make_results_dir(results / "run1", reps=2, n=50)
    host_run = make_results_dir(results / "validate-1" / "host", reps=2, n=50)
    row = {"workload": "v1", "strategy": "dual", "metric": "latency p50 to_shared",
           "host": 1000.0, "sim": 1100.0, "tolerance": "25%", "verdict": "ok",
           "disagreement": 0.1, "reason": "", "decides": True}
    for name, created, verdict in (("validate-1", "2026-11-26T10:00:00+00:00", "ok"),
                                   ("validate-0", "2026-11-25T10:00:00+00:00", "MISS")):
        (results / name).mkdir(exist_ok=True)
        (results / name / "validation.json").write_text(json.dumps({
            "created": created, "host_results": str(host_run),
            "rows": [dict(row, verdict=verdict)], "decided_rows": 1,
            "missed_rows": int(verdict != "ok")}))
    md = write_report(run).read_text()
    sec = md[md.index("### Validation"):]
    assert "2026-11-26T10:00:00" in sec and "1 of 1 decided rows within tolerance" in sec
    assert "latency p50 to_shared" in sec and "+10.0%" in sec and "MISS" not in sec
