"""report.md, summary.txt, plots and pyperf files for a results dir."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_results import make_results_dir  # noqa: E402

from bench.report.pyperf_export import MAX_VALUES, subsample, write_pyperf  # noqa: E402
from bench.report.report import add_report_arguments, cli_report, fmt_ns, write_report  # noqa: E402
from bench.results import load_results  # noqa: E402


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    d = make_results_dir(tmp_path_factory.mktemp("r") / "run1", n=1500, reps=3)
    return d, write_report(d)


def test_report_md_embeds_existing_plots(reported):
    d, md_path = reported
    md = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    # summary + 4 per workload x 2 workloads (the synthetic series have no huge-page
    # measures: those figures are skipped, and the report says so)
    assert len(links) == 9
    for link in links:
        png = d / link
        assert png.exists() and png.stat().st_size > 10_000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for w in ("bounce", "virtio"):
        for kind in ("time", "latency-cdf", "footprint", "copy-share"):
            assert f"plots/{w}-{kind}.png" in links


def test_report_md_states_method(reported):
    _, md_path = reported
    md = md_path.read_text()
    for needle in ("## Method", "6.18.0-test", "testhost", "Test CPU", "thp.enabled",
                   "Seeds: bounce=7", "Repetitions: bounce=3", "Cost profile: none",
                   "gmembench 0.1.0", "backend **host**", "measured natively"):
        assert needle in md, needle


def test_summary_txt_fits_72_columns_and_has_the_numbers(reported):
    d, _ = reported
    text = (d / "summary.txt").read_text()
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 72
    results = load_results(d)
    run = next(r for r in results["runs"] if r["key"] == "bounce/dual")
    ip = next(r for r in results["runs"] if r["key"] == "bounce/in-place")
    # the dual to-shared row: per-direction p50 and the per-repetition total time
    dd = run["metrics"]["directions"]["to_shared"]
    dual_line = next(ln for ln in lines if ln.strip().startswith("dual") and "to-sh" in ln)
    assert fmt_ns(dd["latency_ns"]["p50"]) in dual_line
    assert fmt_ns(dd["total_time_ns"] / run["repetitions"]) in dual_line
    # the verdict on total time: ratio of the medians of per-repetition totals
    tot = np.median([r["time_ns"]["total"] for r in run["per_rep"]]) / np.median(
        [r["time_ns"]["total"] for r in ip["per_rep"]])
    verdict = next(i for i, ln in enumerate(lines) if "TOTAL TIME" in ln)
    assert f"in-place {tot:.2f}x faster" in " ".join(lines[verdict:verdict + 2])
    assert "conversion" in lines[verdict] + lines[verdict + 1]


def test_simulated_and_emulated_results_are_said_plainly(tmp_path):
    d = make_results_dir(tmp_path / "sim", backend="sim", deterministic=True, reps=2, n=100)
    write_report(d)
    assert "SIMULATED" in (d / "report.md").read_text()
    assert "SIMULATED" in (d / "summary.txt").read_text()
    h = make_results_dir(tmp_path / "emu", reps=2, n=100)
    data = json.loads((h / "results.json").read_text())
    data["runs"][0]["fidelity"] = "emulated"
    data["runs"][0]["fidelity_steps"]["GMEM_SET_ATTRS"] = "emulated"
    (h / "results.json").write_text(json.dumps(data))
    write_report(h)
    md = (h / "report.md").read_text()
    assert "bounce/in-place is EMULATED" in md and "GMEM_SET_ATTRS emulated" in md
    assert max(len(ln) for ln in (h / "summary.txt").read_text().splitlines()) <= 72


def _bench(path, name):
    import pyperf
    suite = pyperf.BenchmarkSuite.load(str(path))
    return next(b for b in suite.get_benchmarks() if b.get_name() == name)


def test_pyperf_one_suite_per_strategy_compares_across_strategies(reported):
    d, _ = reported
    files = sorted((d / "pyperf").glob("*.json"))
    assert [f.name for f in files] == ["dual.json", "in-place.json"]
    for f in files:
        r = subprocess.run([sys.executable, "-m", "pyperf", "stats", str(f)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "Number of run with values: 3" in r.stdout
    # strategy-free names: the two files share every benchmark, and compare_to gives the
    # comparison with its geometric mean
    r = subprocess.run([sys.executable, "-m", "pyperf", "compare_to", str(d / "pyperf" / "in-place.json"),
                        str(d / "pyperf" / "dual.json"), "--table"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Geometric mean" in r.stdout
    assert "bounce/latency_to_shared" in r.stdout and "slower" in r.stdout


def test_pyperf_values_units_and_metadata(reported):
    d, _ = reported
    bench = _bench(d / "pyperf" / "dual.json", "bounce/latency")
    assert bench.get_unit() == "second"
    runs = bench.get_runs()
    assert len(runs) == 3
    assert all(len(r.values) == MAX_VALUES for r in runs)     # 1500 subsampled to 1000
    results = load_results(d)
    run = next(r for r in results["runs"] if r["key"] == "bounce/dual")
    # the pooled median of what pyperf holds is close to the run's own median
    assert bench.median() * 1e9 == pytest.approx(run["metrics"]["latency_ns"]["p50"], rel=0.05)
    meta = bench.get_metadata()
    for k, v in {"backend": "host", "fidelity": "native", "strategy": "dual",
                 "workload": "bounce", "hostname": "testhost", "platform": "6.18.0-test",
                 "thp_enabled": "always [madvise] never", "kvm_caps_GUEST_MEMFD": 1,
                 "cost_profile": "none (measured on host)", "subsampled": "yes",
                 "backend_meta_note": "line one line two"}.items():
        assert meta[k] == v, k
    assert "1500 values left out" in meta["subsample_note"]     # 3 repetitions x 500
    # per direction: the to-shared benchmark holds exactly the to-shared conversions
    tos = _bench(d / "pyperf" / "dual.json", "bounce/latency_to_shared")
    assert tos.get_metadata()["subsampled"] == "no"          # 750 per repetition
    assert tos.get_nvalue() == 3 * 750
    assert tos.median() * 1e9 == pytest.approx(
        run["metrics"]["directions"]["to_shared"]["latency_ns"]["p50"], rel=0.02)
    tot = _bench(d / "pyperf" / "dual.json", "bounce/total_time")
    assert sorted(tot.get_values()) == sorted(r["time_ns"]["total"] / 1e9 for r in run["per_rep"])
    fp = _bench(d / "pyperf" / "dual.json", "bounce/footprint_peak")
    assert fp.get_unit() == "byte"
    assert fp.get_nvalue() == 3


def test_subsample_is_deterministic_and_keeps_order():
    a = np.arange(5000)
    s1, s2 = subsample(a, "k/rep0"), subsample(a, "k/rep0")
    assert len(s1) == MAX_VALUES and np.array_equal(s1, s2)
    assert np.all(np.diff(s1) > 0)
    # both halves of an alternating pattern survive (no aliasing with a stride)
    assert 0.4 < np.mean(s1 % 2) < 0.6
    assert len(subsample(a[:10], "x")) == 10


def test_zero_latency_samples_do_not_break_pyperf(tmp_path):
    d = make_results_dir(tmp_path / "z", reps=2, n=50, workloads=("bounce",))
    from bench.results import atomic_write_npz
    arrays = {f"bounce/{s}/rep{i}": np.array([0, 5, 7] * 10, dtype=np.int64)
              for s in ("in-place", "dual") for i in range(2)}
    atomic_write_npz(d / "samples.npz", arrays)
    paths = write_pyperf(load_results(d), d / "pyperf")
    import pyperf
    suite = pyperf.BenchmarkSuite.load(str(next(p for p in paths if p.name == "dual.json")))
    b = next(x for x in suite.get_benchmarks() if x.get_name() == "bounce/latency")
    assert min(b.get_values()) == pytest.approx(1e-9)
    assert b.get_metadata()["values_clamped_to_1ns"] == 20
    assert b.get_metadata()["subsampled"] == "no"


def test_cli_report_prints_summary(reported, capsys):
    import argparse
    d, _ = reported
    p = argparse.ArgumentParser()
    add_report_arguments(p)
    assert cli_report(p.parse_args([str(d)])) == 0
    out = capsys.readouterr().out
    assert "dual/in-pl." in out and "report:" in out


# --- bench/progress.py (the runner's progress display) -------------------------------------

def test_progress_off_under_ci_unless_forced(monkeypatch, capsys):
    from bench.progress import progress, progress_enabled
    monkeypatch.setenv("CI", "true")
    assert progress_enabled(None) is False
    assert progress_enabled(True) is True
    with progress(10, "w1/in-place", "op") as bar:
        bar.update(4)
        bar.set_description("w2/dual")
        assert bar.n == 4
    assert capsys.readouterr().err == ""


def test_progress_off_when_stderr_is_not_a_tty(monkeypatch):
    from bench.progress import progress_enabled
    monkeypatch.delenv("CI", raising=False)
    # pytest captures stderr: not a terminal
    assert progress_enabled(None) is False


def test_progress_forced_shows_workload_and_count(monkeypatch, capsys):
    from bench.progress import progress
    monkeypatch.setenv("CI", "true")
    import time
    with progress(100, "swiotlb-boot dual rep 1/3", "op", enabled=True) as bar:
        bar.update(1)
        time.sleep(0.6)            # the bar redraws at most every 0.5 s
        bar.update(49)
        assert bar.n == 50 and bar.total == 100
    err = capsys.readouterr().err
    assert "swiotlb-boot dual rep 1/3" in err and "50/100" in err


def test_progress_bar_accepts_new_phase_lengths(monkeypatch, capsys):
    # the runner sets .total per workload/repetition and resets .n; both bar kinds take it
    from bench.progress import progress
    for enabled in (True, False):
        with progress(None, "gmembench", "op", enabled=enabled) as bar:
            bar.total = 100
            bar.n = 0
            bar.update(60)
            bar.total = 40
            bar.n = 0
            bar.update(40)
            assert (bar.n, bar.total) == (40, 40)
