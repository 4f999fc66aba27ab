"""The regression gate on synthetic results with known answers."""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_results import make_results_dir  # noqa: E402

from bench.compare import (add_compare_arguments, cli_compare, compare_results,  # noqa: E402
                           permutation_pvalue)
from bench.errors import InputError  # noqa: E402
from bench.results import load_results  # noqa: E402


def gate(*argv) -> int:
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    args = parser.parse_args([str(a) for a in argv])
    try:
        return cli_compare(args)
    except InputError:
        return 2


def rows_by(rows):
    return {(r.key, r.metric): r for r in rows}


def test_clear_regression_exits_1_and_names_it(tmp_path, capsys):
    a = make_results_dir(tmp_path / "a", seed=1)
    b = make_results_dir(tmp_path / "b", seed=2, latency_factor={"virtio/dual": 1.3})
    assert gate(a, b) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("virtio/dual") and "latency_p50" in ln)
    assert "REGRESSION" in line and "+3" in line
    rows = rows_by(compare_results(load_results(a), load_results(b)))
    regressed = {k for k, r in rows.items() if r.verdict == "regression"}
    assert regressed <= {("virtio/dual", "latency_p50"), ("virtio/dual", "latency_p99")}
    assert ("virtio/dual", "latency_p50") in regressed
    assert rows[("virtio/dual", "latency_p50")].p <= 0.05


def test_clear_improvement_exits_0_reported_as_improvement(tmp_path, capsys):
    a = make_results_dir(tmp_path / "a", seed=1)
    b = make_results_dir(tmp_path / "b", seed=2, latency_factor={"bounce/in-place": 0.7})
    assert gate(a, b) == 0
    rows = rows_by(compare_results(load_results(a), load_results(b)))
    assert rows[("bounce/in-place", "latency_p50")].verdict == "improvement"
    assert rows[("bounce/in-place", "latency_p50")].change == pytest.approx(-0.3, abs=0.05)
    assert "improvement" in capsys.readouterr().out


def test_footprint_regression_detected(tmp_path):
    a = make_results_dir(tmp_path / "a", seed=1)
    b = make_results_dir(tmp_path / "b", seed=2, footprint_factor={"bounce/dual": 1.2})
    rows = rows_by(compare_results(load_results(a), load_results(b)))
    assert rows[("bounce/dual", "footprint_peak")].verdict == "regression"
    assert rows[("bounce/in-place", "footprint_peak")].verdict == "no-change"


def test_pure_noise_rarely_alarms(tmp_path):
    # A/A: both dirs drawn from one distribution, 30 independent pairs.  Process-level
    # noise 2% per repetition, conversion-level noise 30%.
    alarms = 0
    pairs = 30
    for s in range(pairs):
        a = make_results_dir(tmp_path / f"a{s}", seed=1000 + s, n=200)
        b = make_results_dir(tmp_path / f"b{s}", seed=2000 + s, n=200)
        alarms += gate(a, b) == 1
    assert alarms <= 1, f"{alarms}/{pairs} false alarms on identical distributions"


def test_noise_bigger_than_threshold_is_noisy_not_regression(tmp_path):
    # Repetitions that swing by 8% around the same value: medians often differ by more than
    # the 5% threshold, but the permutation test must not call that a regression often.
    alarms, noisy = 0, 0
    pairs = 20
    for s in range(pairs):
        a = make_results_dir(tmp_path / f"a{s}", seed=3000 + s, n=100, rep_sigma=0.08,
                             workloads=("bounce",), strategies=("dual",))
        b = make_results_dir(tmp_path / f"b{s}", seed=4000 + s, n=100, rep_sigma=0.08,
                             workloads=("bounce",), strategies=("dual",))
        rows = compare_results(load_results(a), load_results(b))
        alarms += any(r.verdict == "regression" for r in rows)
        noisy += sum(r.verdict == "noisy" for r in rows)
    assert noisy > 0                 # the situation the test is about did occur
    assert alarms <= 2, f"{alarms}/{pairs} false alarms"


def test_sim_results_compare_exactly_with_threshold(tmp_path):
    kw = dict(backend="sim", deterministic=True, reps=3)
    a = make_results_dir(tmp_path / "a", seed=1, **kw)
    b = make_results_dir(tmp_path / "b", seed=1, copied_factor={"bounce/dual": 1.06}, **kw)
    c = make_results_dir(tmp_path / "c", seed=1, copied_factor={"bounce/dual": 1.04}, **kw)
    rows = rows_by(compare_results(load_results(a), load_results(b)))
    r = rows[("bounce/dual", "bytes_copied")]
    assert (r.verdict, r.method, r.p) == ("regression", "exact", None)
    assert gate(a, b) == 1
    assert gate(a, c) == 0
    assert gate(a, a) == 0


def test_sim_baseline_from_another_machine_is_comparable(tmp_path):
    kw = dict(backend="sim", deterministic=True)
    a = make_results_dir(tmp_path / "a", **kw)
    b = make_results_dir(tmp_path / "b", host={"hostname": "elsewhere", "kernel": "6.1",
                                               "cpu": "other"}, **kw)
    assert gate(a, b) == 0


@pytest.mark.parametrize("change,needle", [
    (dict(backend="sim"), "backend differs"),
    (dict(host={"hostname": "otherhost", "kernel": "6.18.0-test", "cpu": "Test CPU @ 2.0GHz"}),
     "host hostname differs"),
    (dict(host={"hostname": "testhost", "kernel": "6.19.0", "cpu": "Test CPU @ 2.0GHz"}),
     "host kernel differs"),
    (dict(scale=0.5), "scale differs"),
    (dict(quick=True), "quick differs"),
    (dict(workloads=("bounce",)), "runs only in BASE: virtio/in-place"),
])
def test_incomparable_pairs_exit_2(tmp_path, capsys, change, needle):
    a = make_results_dir(tmp_path / "a")
    b = make_results_dir(tmp_path / "b", **change)
    assert gate(a, b) == 2
    assert needle in capsys.readouterr().err


def test_sim_cost_profile_mismatch_exit_2(tmp_path, capsys):
    a = make_results_dir(tmp_path / "a", backend="sim", deterministic=True)
    b = make_results_dir(tmp_path / "b", backend="sim", deterministic=True,
                         cost_profile="calibrated")
    assert gate(a, b) == 2
    assert "cost profile" in capsys.readouterr().err


def test_allow_missing_compares_common_runs(tmp_path):
    a = make_results_dir(tmp_path / "a")
    b = make_results_dir(tmp_path / "b", workloads=("bounce",), seed=5)
    assert gate(a, b, "--allow-missing") == 0


def test_schema_mismatch_and_missing_dir_exit_2(tmp_path):
    a = make_results_dir(tmp_path / "a")
    b = make_results_dir(tmp_path / "b")
    data = json.loads((b / "results.json").read_text())
    data["schema"] = "gmembench-results/0"
    (b / "results.json").write_text(json.dumps(data))
    assert gate(a, b) == 2
    assert gate(a, tmp_path / "nothing") == 2


def test_thresholds_are_configurable(tmp_path):
    a = make_results_dir(tmp_path / "a", seed=1)
    b = make_results_dir(tmp_path / "b", seed=2, latency_factor={"virtio/dual": 1.3})
    assert gate(a, b, "--threshold", "50") == 0
    assert gate(a, b, "--metric-threshold", "latency_p50=50",
                "--metric-threshold", "latency_p99=50") == 0
    assert gate(a, b, "--metric-threshold", "latency_p99=50") == 1
    with pytest.raises(SystemExit):
        gate(a, b, "--metric-threshold", "nosuch=5")


def test_too_few_repetitions_is_noisy_with_warning(tmp_path, capsys):
    a = make_results_dir(tmp_path / "a", reps=2, seed=1)
    b = make_results_dir(tmp_path / "b", reps=2, seed=2, latency_factor={"bounce/dual": 1.5})
    assert gate(a, b) == 0
    captured = capsys.readouterr()
    assert "fewer than 3 values per side" in captured.err and "bounce/dual latency_p50" in captured.err
    line = next(ln for ln in captured.out.splitlines()
                if ln.startswith("bounce/dual") and "latency_p50" in ln)
    assert "noisy" in line


def test_permutation_pvalue_exact_values():
    # 3 vs 3, complete separation: 1 of C(6,3)=20 relabellings is as extreme
    assert permutation_pvalue([1, 2, 3], [4, 5, 6]) == pytest.approx(1 / 20)
    assert permutation_pvalue([4, 5, 6], [1, 2, 3], greater=False) == pytest.approx(1 / 20)
    assert permutation_pvalue([1, 2, 3], [1, 2, 3]) > 0.5
    # large n takes the seeded random path and is still right about a huge shift
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, 15), rng.normal(3, 1, 15)
    p = permutation_pvalue(x, y)
    assert p < 0.001
    assert p == permutation_pvalue(x, y)     # seeded: the gate's answer is reproducible


def test_json_output_written(tmp_path):
    a = make_results_dir(tmp_path / "a", seed=1)
    b = make_results_dir(tmp_path / "b", seed=2, latency_factor={"virtio/dual": 1.3})
    out = tmp_path / "gate.json"
    assert gate(a, b, "--json", out) == 1
    data = json.loads(out.read_text())
    assert data["regressions"] >= 1
    assert any(r["verdict"] == "regression" and r["key"] == "virtio/dual" for r in data["rows"])


def test_host_run_totals_without_per_rep_values_are_not_gated(tmp_path):
    # huge_splits is only a run total here: one value per side cannot show noise, so a
    # change is "noisy" on the host, while the simulator's totals are exact
    a = make_results_dir(tmp_path / "a", seed=1)
    b = make_results_dir(tmp_path / "b", seed=2)
    data = json.loads((b / "results.json").read_text())
    data["runs"][1]["metrics"]["huge_splits"] = 80          # bounce/dual: 40 -> 80
    (b / "results.json").write_text(json.dumps(data))
    rows = rows_by(compare_results(load_results(a), load_results(b)))
    r = rows[("bounce/dual", "huge_splits")]
    assert (r.verdict, r.method) == ("noisy", "too-few")
    assert gate(a, b) == 0
    s1 = make_results_dir(tmp_path / "s1", backend="sim", deterministic=True)
    s2 = make_results_dir(tmp_path / "s2", backend="sim", deterministic=True)
    data = json.loads((s2 / "results.json").read_text())
    data["runs"][1]["metrics"]["huge_splits"] = 80
    (s2 / "results.json").write_text(json.dumps(data))
    assert rows_by(compare_results(load_results(s1), load_results(s2)))[
        ("bounce/dual", "huge_splits")].verdict == "regression"
    assert gate(s1, s2) == 1


def test_latency_min_is_opt_in_and_detects_a_uniform_slowdown(tmp_path):
    """latency_min: each repetition's fastest conversion.  Not decided on by default; with
    --metrics it flags a 10% uniform slowdown and stays quiet on identical code."""
    kw = dict(reps=8, rep_sigma=0.005, sample_sigma=0.05)
    a = make_results_dir(tmp_path / "a", seed=1, **kw)
    a2 = make_results_dir(tmp_path / "a2", seed=2, **kw)
    b = make_results_dir(tmp_path / "b", seed=3, latency_factor={"virtio/dual": 1.10}, **kw)
    default = rows_by(compare_results(load_results(a), load_results(b)))
    assert not any(m == "latency_min" for _, m in default)
    only_min = ("latency_min",)
    rows = rows_by(compare_results(load_results(a), load_results(b), metrics=only_min))
    assert rows[("virtio/dual", "latency_min")].verdict == "regression"
    assert rows[("virtio/dual", "latency_min")].change == pytest.approx(0.10, abs=0.03)
    assert {r.verdict for k, r in rows.items() if k[0] != "virtio/dual"} <= {"no-change"}
    same = compare_results(load_results(a), load_results(a2), metrics=only_min)
    assert not any(r.verdict == "regression" for r in same)
    assert gate(a, b, "--metrics", "latency_min,latency_p50") == 1
    with pytest.raises(SystemExit):
        gate(a, b, "--metrics", "latency_max")
