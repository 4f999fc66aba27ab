"""Qualification specs evaluated on synthetic results dirs (--results: no run needed)."""
import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_results import make_results_dir  # noqa: E402

from bench.errors import InputError  # noqa: E402
from bench.qualify import (add_qualify_arguments, cli_qualify, default_spec_path,  # noqa: E402
                           load_spec)

SPEC = """\
[qualify]
name = "test"
backend = "host"
workloads = ["bounce", "virtio"]
strategies = ["in-place", "dual"]
quick = true

[[check]]
name = "no failed conversions"
metric = "failed_conversions"
max = 0

[[check]]
name = "sigbus semantics"
metric = "checks.sigbus_seen"
equals_metric = "checks.sigbus_expected"

[[check]]
name = "p99 in-place"
metric = "latency_ns.p99"
strategy = "in-place"
max = {p99_limit}
unit = "us"

[[check]]
name = "footprint dual"
metric = "footprint_ratio.peak"
strategy = "dual"
workload = "b*"
max = 1.7
"""


def qualify(*argv) -> int:
    parser = argparse.ArgumentParser()
    add_qualify_arguments(parser)
    args = parser.parse_args([str(a) for a in argv])
    try:
        return cli_qualify(args)
    except InputError as e:
        print(f"gmembench: error: {e}", file=sys.stderr)
        return 2


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    return make_results_dir(tmp_path_factory.mktemp("q") / "run", reps=2, n=200)


def write_spec(tmp_path, text, name="spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_passes_and_writes_verdict(tmp_path, results_dir, capsys):
    spec = write_spec(tmp_path, SPEC.format(p99_limit=100))
    verdict = tmp_path / "verdict.json"
    assert qualify(spec, "--results", results_dir, "--verdict", verdict) == 0
    out = capsys.readouterr().out
    assert "PASS" in out
    data = json.loads(verdict.read_text())
    assert data["pass"] is True and data["failed"] == 0
    p99 = [v for v in data["verdicts"] if v["check"] == "p99 in-place"]
    assert {v["run"] for v in p99} == {"bounce/in-place", "virtio/in-place"}
    measured = {v["run"]: v["measured"] for v in p99}
    run = json.loads((results_dir / "results.json").read_text())["runs"]
    truth = {r["key"]: r["metrics"]["latency_ns"]["p99"] / 1000 for r in run}
    for k, v in measured.items():
        assert v == pytest.approx(truth[k])
        assert all(x["limit"] == 100 for x in p99)
    fp = [v for v in data["verdicts"] if v["check"] == "footprint dual"]
    assert [v["run"] for v in fp] == ["bounce/dual"]           # glob b* excludes virtio


def test_tightened_limit_fails_naming_the_check(tmp_path, results_dir, capsys):
    run = json.loads((results_dir / "results.json").read_text())["runs"]
    worst = max(r["metrics"]["latency_ns"]["p99"] for r in run if r["strategy"] == "in-place")
    limit = round(worst / 1000 * 0.9, 3)     # 10% below what was measured
    spec = write_spec(tmp_path, SPEC.format(p99_limit=limit))
    assert qualify(spec, "--results", results_dir, "--verdict", tmp_path / "v.json") == 1
    out = capsys.readouterr().out
    fail_line = next(ln for ln in out.splitlines() if ln.startswith("FAIL:"))
    assert "p99 in-place" in fail_line
    assert "no failed conversions" not in fail_line
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["pass"] is False
    failed = [v for v in data["verdicts"] if not v["pass"]]
    assert {v["check"] for v in failed} == {"p99 in-place"}
    assert all(v["measured"] > v["limit"] for v in failed)


def test_semantic_failure_detected(tmp_path):
    d = make_results_dir(tmp_path / "bad", reps=2, n=100)
    data = json.loads((d / "results.json").read_text())
    data["runs"][1]["metrics"]["checks"]["sigbus_seen"] = 9
    data["runs"][2]["metrics"]["failed_conversions"] = 3
    (d / "results.json").write_text(json.dumps(data))
    spec = write_spec(tmp_path, SPEC.format(p99_limit=1000))
    assert qualify(spec, "--results", d, "--verdict", tmp_path / "v.json") == 1
    failed = {(v["check"], v["run"]) for v in json.loads((tmp_path / "v.json").read_text())["verdicts"]
              if not v["pass"]}
    assert failed == {("sigbus semantics", "bounce/dual"),
                      ("no failed conversions", "virtio/in-place")}


def test_wrong_backend_and_missing_runs_fail(tmp_path):
    d = make_results_dir(tmp_path / "sim", reps=2, n=100, backend="sim", deterministic=True,
                         workloads=("bounce",))
    spec = write_spec(tmp_path, SPEC.format(p99_limit=1000))
    assert qualify(spec, "--results", d, "--verdict", tmp_path / "v.json") == 1
    failed = [v for v in json.loads((tmp_path / "v.json").read_text())["verdicts"] if not v["pass"]]
    assert {v["check"] for v in failed} == {"backend", "run present"}
    assert {v["run"] for v in failed if v["check"] == "run present"} == {"virtio/in-place",
                                                                        "virtio/dual"}


@pytest.mark.parametrize("mutate,line,needle", [
    (lambda s: s.replace('max = 0\n', 'max = "zero"\n', 1), 11, "max must be a number"),
    (lambda s: s.replace('metric = "latency_ns.p99"', 'metric = "latency_ns.p98"'), 20,
     "unknown metric 'latency_ns.p98'"),
    (lambda s: s.replace('unit = "us"', 'unit = "MiB"'), 23, "unit 'MiB' does not fit"),
    (lambda s: s.replace('quick = true', 'quick = true\nspeed = 3'), 7, "unknown key 'speed'"),
    (lambda s: s.replace('workload = "b*"', 'workload = "nosuch"'), 29, "matches none"),
    (lambda s: s.replace('[[check]]\nname = "sigbus', '[[check]]\nx = = 1\nname = "sigbus'), 14,
     "not valid TOML"),
])
def test_bad_spec_exits_2_with_file_and_line(tmp_path, results_dir, capsys, mutate, line, needle):
    text = mutate(SPEC.format(p99_limit=100))
    assert text != SPEC.format(p99_limit=100)
    spec = write_spec(tmp_path, text)
    assert qualify(spec, "--results", results_dir) == 2
    err = capsys.readouterr().err
    assert f"{spec}:{line}: " in err, err
    assert needle in err


def test_two_limits_in_one_check_is_an_error(tmp_path):
    text = SPEC.format(p99_limit=100).replace('max = 1.7', 'max = 1.7\nmin = 0.5')
    with pytest.raises(InputError, match="exactly one of"):
        load_spec(write_spec(tmp_path, text))


def test_default_spec_is_valid_and_documented():
    path = default_spec_path()
    assert path.name == "qualify-default.toml" and path.is_file()
    spec = load_spec(path)
    assert spec["backend"] == "host"
    metrics = {c["metric"] for c in spec["checks"]}
    for m in ("failed_conversions", "checks.content_mismatch_pages", "checks.unexpected_sigbus",
              "checks.sigbus_seen", "latency_ns.p99", "footprint_ratio.peak"):
        assert m in metrics
    text = path.read_text()
    # every check says why its limit is what it is
    assert text.count("[[check]]") == text.count("why = ")
