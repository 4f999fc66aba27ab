"""The cost profile: format, documentation of every key, overrides, bad values."""
import tomllib
from importlib import resources

import pytest

from bench.cli import main
from bench.costs import MAX_NS, load_profile
from bench.errors import InputError
from bench.results import load_results

DEFAULT_TEXT = (resources.files("bench") / "profiles" / "default.toml").read_text()

SMALL = """
[workload]
description = "tiny"
repetitions = 1
seed = 3

[layout]
gmem_page_size = "4k"
platform = "zero"

[[layout.memslot]]
gpa = 0
size = "16M"

[[phase]]
name = "churn"
generator = "mixed"
requests = 60
"""


def _line(text, needle):
    return text.splitlines().index(needle) + 1


def test_default_documents_every_key():
    p = load_profile()
    assert set(p.sources) == set(p.raw)
    for key, src in p.sources.items():
        assert src.split(":")[0] in ("calibrated", "cited", "estimate"), key
    # every estimate has a range, every range holds the default
    for key, src in p.sources.items():
        if src.startswith("estimate"):
            assert key in p.uncertain, f"{key} is an estimate without a range"
    for key, (lo, hi) in p.uncertain.items():
        v = p.raw[key]
        if isinstance(v, dict):
            assert all(lo[s] <= v[s] <= hi[s] for s in ("4k", "2m")), key
        else:
            assert lo <= v <= hi, key
    assert p.outside_range() == []
    d = p.describe()
    assert d["sources"] == p.sources and set(d["uncertain"]) == set(p.uncertain)
    assert d["overrides"] == {}


def test_overrides_replace_values_and_are_described():
    base = load_profile()
    key = next(iter(base.uncertain))
    lo, hi = base.uncertain[key]
    p = load_profile(overrides={key: "high", "fault_gmem.4k": 2500, "ioctl_entry": 300})
    assert p.raw[key] == hi and p.raw["ioctl_entry"] == 300
    assert p.raw["fault_gmem"] == {"4k": 2500, "2m": base.raw["fault_gmem"]["2m"]}
    assert p.cost("ioctl_entry") == 300
    d = p.describe()
    assert d["overrides"] == {key: hi, "fault_gmem": p.raw["fault_gmem"], "ioctl_entry": 300}
    assert d["name"] != "default"          # runs with other values are not the same profile
    assert "--cost ioctl_entry" in d["sources"]["ioctl_entry"]
    assert load_profile(overrides={key: "low"}).raw[key] == lo
    outside = load_profile(overrides={key: hi * 2 if not isinstance(hi, dict) else
                                      {s: hi[s] * 2 for s in hi}})
    assert outside.outside_range() == [key]


@pytest.mark.parametrize("value, expect", [
    (float("nan"), "finite"), (float("inf"), "finite"), (-1, "negative"),
    (MAX_NS * 10, "bound"), ("fast", "number"), (True, "number"),
])
def test_bad_override_values_name_the_key(value, expect):
    with pytest.raises(InputError) as e:
        load_profile(overrides={"ioctl_entry": value})
    assert str(e.value).startswith("--cost ioctl_entry: ") and expect in str(e.value)


def test_bad_override_keys():
    with pytest.raises(InputError, match="--cost nosuch: unknown cost"):
        load_profile(overrides={"nosuch": 1})
    with pytest.raises(InputError, match="no documented range"):
        load_profile(overrides={"ioctl_entry": "low"})
    with pytest.raises(InputError, match="only pair costs"):
        load_profile(overrides={"ioctl_entry.4k": 1})


@pytest.mark.parametrize("old, new, expect", [
    ("ioctl_entry = 148", "ioctl_entry = nan", "finite"),
    ("ioctl_entry = 148", "ioctl_entry = inf", "finite"),
    ("ioctl_entry = 148", "ioctl_entry = 1e15", "bound"),
    ("fault_gmem = { 4k = 1890, 2m = 1060000 }", "fault_gmem = { 4k = 1890, 2m = -inf }", "finite"),
    ("ioctl_entry = 148", "ioctl_entry = 148 = 2", "not valid TOML"),
    ("ioctl_entry = 148", "ioctl_entry = 14 8", "not valid TOML"),
])
def test_bad_file_values_name_file_and_line(tmp_path, old, new, expect):
    prof = tmp_path / "bad.toml"
    prof.write_text(DEFAULT_TEXT.replace(old, new, 1))
    with pytest.raises(InputError) as e:
        load_profile(prof)
    msg = str(e.value)
    assert msg.startswith(f"{prof}:{_line(DEFAULT_TEXT, old)}: "), msg
    assert expect in msg


def test_range_must_hold_the_value(tmp_path):
    doc = tomllib.loads(DEFAULT_TEXT)
    key, rng = next(iter(doc["uncertain"].items()))
    old = next(l for l in DEFAULT_TEXT.splitlines() if l.startswith(f"{key} = {{ low"))
    prof = tmp_path / "r.toml"
    prof.write_text(DEFAULT_TEXT.replace(old, f"{key} = {{ low = {rng['high']}, high = {rng['low']} }}"))
    with pytest.raises(InputError, match=f"r.toml:{_line(DEFAULT_TEXT, old)}: .*above high"):
        load_profile(prof)


def test_source_kind_is_checked(tmp_path):
    old = next(l for l in DEFAULT_TEXT.splitlines() if l.startswith("ioctl_entry = \""))
    prof = tmp_path / "s.toml"
    prof.write_text(DEFAULT_TEXT.replace(old, 'ioctl_entry = "I measured it"'))
    with pytest.raises(InputError, match=f"s.toml:{_line(DEFAULT_TEXT, old)}: \\[sources\\] ioctl_entry"):
        load_profile(prof)


def test_costs_only_file_inherits_documentation_of_unchanged_values(tmp_path):
    doc = tomllib.loads(DEFAULT_TEXT)
    costs = dict(doc["costs"])
    changed = next(iter(doc["uncertain"]))
    v = costs[changed]
    costs[changed] = {s: x + 1 for s, x in v.items()} if isinstance(v, dict) else v + 1
    lines = ["[costs]"] + [f"{k} = {{ 4k = {v['4k']}, 2m = {v['2m']} }}" if isinstance(v, dict)
                           else f"{k} = {v}" for k, v in costs.items()]
    prof = tmp_path / "mine.toml"
    prof.write_text("\n".join(lines) + "\n")
    p = load_profile(prof)
    assert changed not in p.uncertain and "without a source" in p.sources[changed]
    other = next(k for k in doc["uncertain"] if k != changed)
    assert other in p.uncertain and p.sources[other] == doc["sources"][other]


def test_cli_cost_override_reaches_the_results(tmp_path, capsys):
    wl = tmp_path / "tiny.toml"
    wl.write_text(SMALL)
    out = tmp_path / "r"
    assert main(["run", "--no-progress", "--no-report", "-w", str(wl), "--out", str(out),
                 "--cost", "ioctl_entry=1000", "--cost", "fault_gmem={4k = 3000, 2m = 2000000}"]) == 0
    doc = load_results(out)
    prof = doc["runs"][0]["cost_profile"]
    assert prof["costs"]["ioctl_entry"] == 1000
    assert prof["overrides"]["fault_gmem"] == {"4k": 3000, "2m": 2000000}
    base = tmp_path / "b"
    assert main(["run", "--no-progress", "--no-report", "-w", str(wl), "--out", str(base)]) == 0
    b = load_results(base)
    # the override changes what the model charges: every conversion pays the ioctl entry
    for r, rb in zip(doc["runs"], b["runs"]):
        assert r["metrics"]["latency_ns"]["p50"] > rb["metrics"]["latency_ns"]["p50"]


@pytest.mark.parametrize("arg, expect", [
    ("ioctl_entry=nan", "--cost ioctl_entry: value is nan"),
    ("ioctl_entry", "expected KEY=VALUE"),
    ("nosuch=1", "--cost nosuch: unknown cost"),
])
def test_cli_bad_cost_is_one_line_exit_2(tmp_path, capsys, arg, expect):
    wl = tmp_path / "tiny.toml"
    wl.write_text(SMALL)
    out = tmp_path / "never"
    assert main(["run", "--no-progress", "--no-report", "-w", str(wl), "--out", str(out),
                 "--cost", arg]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert not out.exists()
