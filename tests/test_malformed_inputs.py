"""Generated malformed input, fed to every entry point a user reaches: workload files (every
kind of value, and structure), traces replayed strictly, and command-line values
(--param, --option, --seed, --repetitions, --out, --workload).  Every one must end the
same way: exit 2, exactly one line on stderr naming the source (FILE:LINE or the option),
no traceback, no results directory or partial directory left behind.

Outcomes are tallied per kind (clear error / traceback / silently accepted) and printed at
the end of the session (conftest.py), so the figures asked for in issue 11 come from the
run itself.  Cost profiles and `gmembench compare` inputs are validated by their own
modules: MALFORMED_HOOKS below runs them here when those modules offer a fuzzable entry.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bench.cli import main

TALLY: dict[str, dict[str, int]] = {}
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

BASE = """\
[workload]
name = "fuzz"
description = "generated"
repetitions = 1
seed = 1

[layout]
gmem_page_size = "4k"
shared_backing = "anon"
shared_page = "4k"
platform = "preserve"
init_shared = false

[[layout.memslot]]
gpa = 0
size = "64M"
numa_node = 0

[strategy.dual]
copy = "auto"
discard = true

[params]
prefragment = 0.0

[[phase]]
name = "churn"
repeat = 1
generator = "dma-churn"
buffers = 20
in_flight = 4
rate = 0.0
pin_fraction = 0.0
sizes = [4096, 8192]
"""


def toml(v) -> str:
    """A TOML literal for v (strings as basic strings; nan/inf as TOML spells them)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    raise TypeError(v)


def with_value(key: str, value: str, occurrence: int = 0) -> str:
    """BASE with `key = ...` (its n-th occurrence) replaced by `key = value`."""
    lines = BASE.splitlines()
    hits = [i for i, ln in enumerate(lines) if re.match(rf"{re.escape(key)} = ", ln)]
    lines[hits[occurrence]] = f"{key} = {value}"
    return "\n".join(lines) + "\n"


def outcome(kind: str, argv: list[str], source: str | None) -> None:
    """Run gmembench with argv; assert the clear-error contract and tally what happened."""
    tally = TALLY.setdefault(kind, {"tried": 0, "clear error": 0, "traceback": 0,
                                    "silently accepted": 0})
    tally["tried"] += 1
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out"
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    rc = main(["run", "--no-progress", "--no-report", "--out", str(out), *argv])
                except SystemExit as e:        # argparse: usage errors
                    rc = e.code
        except Exception as e:
            tally["traceback"] += 1
            raise AssertionError(f"{kind}: traceback for {argv}: {type(e).__name__}: {e}")
        lines = err.getvalue().strip().splitlines()
        if rc == 0:
            tally["silently accepted"] += 1
            raise AssertionError(f"{kind}: accepted {argv} (stderr {lines})")
        assert rc == 2, (rc, lines)
        assert len(lines) == 1, lines
        assert "Traceback" not in lines[0]
        if source:
            assert source in lines[0], (source, lines[0])
        left = [p.name for p in Path(d).iterdir() if p.name not in ("wl.toml", "trace.log")]
        assert left == [], left
        tally["clear error"] += 1


def run_file(kind: str, text: str, extra=(), trace: str | None = None,
             source: str = "wl.toml:") -> None:
    with tempfile.TemporaryDirectory() as d:
        wl = Path(d) / "wl.toml"
        if trace is not None:
            (Path(d) / "trace.log").write_text(trace)
        wl.write_text(text)
        outcome(kind, ["-w", str(wl), *extra], source)


# ---- values that are wrong for their key -------------------------------------------------------

junk_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
not_int = st.one_of(st.floats(allow_nan=True), junk_text, st.booleans(),
                    st.lists(st.integers(0, 9), max_size=2))
negative = st.integers(max_value=-1)


def bad_int(low: int, high: int):
    return st.one_of(not_int, st.integers(max_value=low - 1),
                     st.integers(min_value=high + 1, max_value=1 << 80))


UNITS = ["", "K", "M", "G", "T", "P", "KiB", "GiB"]
bad_size = st.one_of(
    st.builds(lambda n, u: f"{n}{u}", st.integers(1 << 52, 1 << 70), st.sampled_from(UNITS)),
    st.builds(lambda n, u: f"{n}{u}", st.integers(4, 10 ** 9), st.sampled_from(["P", "PiB"])),
    st.integers(min_value=1 << 52, max_value=1 << 80),
    st.builds(lambda n, k: n * 4096 + k, st.integers(0, 1 << 20), st.integers(1, 4095)),
    negative, st.floats(allow_nan=True), st.booleans(),
    junk_text.filter(lambda s: not re.fullmatch(r"\s*\d+(\.\d+)?\s*[kmgtp]?(i?b)?\s*", s, re.I)),
)
bad_name = st.one_of(st.just(""), st.text(min_size=65, max_size=80, alphabet="abc"),
                     st.builds(lambda a, b: f"{a}/{b}", st.text("ab", min_size=1, max_size=3),
                               st.text("ab", min_size=1, max_size=3)),
                     st.sampled_from([" ", "..", "-x", "a b", "a\\b", "\u00e9t\u00e9"]))


def bad_choice(valid, bools_valid=False):
    return st.one_of(junk_text.filter(lambda s: s not in valid), st.integers(),
                     st.floats(allow_nan=True),
                     *([] if bools_valid else [st.booleans()]))


# (key, occurrence in BASE, strategy of wrong values, raw): raw values are TOML text as is
VALUE_CASES = {
    "workload.name": ("name", 0, bad_name),
    "phase.name": ("name", 1, bad_name),
    "repetitions": ("repetitions", 0, bad_int(1, 10_000)),
    "seed": ("seed", 0, bad_int(0, (1 << 63) - 1)),
    "gmem_page_size": ("gmem_page_size", 0, bad_choice({"4k", "2m", "1g", "4K", "2M", "1G"})),
    "shared_backing": ("shared_backing", 0, bad_choice({"anon", "memfd"})),
    "shared_page": ("shared_page", 0, bad_choice({"4k", "thp", "hugetlb"})),
    "platform": ("platform", 0, bad_choice({"preserve", "zero", "destroy"})),
    "init_shared": ("init_shared", 0, st.one_of(junk_text, st.integers(), st.floats())),
    "memslot.gpa": ("gpa", 0, bad_size),
    "memslot.size": ("size", 0, st.one_of(bad_size, st.just(0), st.just("0"))),
    "numa_node": ("numa_node", 0, bad_int(0, 1023)),
    "dual.copy": ("copy", 0, bad_choice({"auto"}, bools_valid=True)),
    "dual.discard": ("discard", 0, st.one_of(junk_text, st.integers(), st.floats())),
    "params.prefragment": ("prefragment", 0, st.one_of(
        st.floats(allow_nan=True).filter(lambda x: not 0 <= x <= 1), junk_text, st.booleans())),
    "phase.repeat": ("repeat", 0, bad_int(1, 1_000_000)),
    "generator": ("generator", 0, bad_choice({"dma-churn", "swiotlb-boot", "pkvm-share",
                                              "bulk-roundtrip", "hogger", "huge-scatter",
                                              "mixed"})),
    "buffers": ("buffers", 0, bad_int(0, 1_000_000_000)),
    "in_flight": ("in_flight", 0, bad_int(1, 1_000_000_000)),
    "rate": ("rate", 0, st.one_of(st.floats(allow_nan=True).filter(
        lambda x: not (math.isfinite(x) and 0 <= x <= 1e15)), junk_text, st.booleans())),
    "pin_fraction": ("pin_fraction", 0, st.one_of(
        st.floats(allow_nan=True).filter(lambda x: not 0 <= x <= 1), junk_text)),
    "sizes": ("sizes", 0, st.one_of(st.just([]), st.lists(bad_size, min_size=1, max_size=3),
                                    st.lists(st.just(4096), min_size=4097, max_size=4100))),
}


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
@SETTINGS
@given(data=st.data())
def test_workload_value_of_the_wrong_kind(case, data):
    key, occ, strategy = VALUE_CASES[case]
    value = data.draw(strategy)
    run_file(f"workload value ({case})", with_value(key, toml(value), occ))


ident = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)


@SETTINGS
@given(table=st.sampled_from(["[workload]", "[layout]", "[[layout.memslot]]", "[params]",
                              "[strategy.dual]", "[[phase]]"]),
       key=ident, value=st.integers(0, 9))
def test_workload_unknown_key(table, key, value):
    known = {"name", "description", "repetitions", "seed", "gmem_page_size", "shared_backing",
             "shared_page", "platform", "init_shared", "memslot", "gpa", "size", "numa_node",
             "copy", "discard", "repeat", "generator", "trace", "touch", "touch_fraction",
             "touch_size", "buffers", "in_flight", "rate", "pin_fraction", "sizes",
             "size_weights", "placement", "zipf_s", "slots", "start", "span", "prefragment"}
    from bench.params import PARAMS
    if key in known or key in PARAMS:
        return
    text = BASE.replace(table + "\n", f"{table}\n{key} = {value}\n", 1)
    run_file("workload unknown key", text)


@SETTINGS
@given(depth=st.integers(100, 6000), kind=st.sampled_from(["array", "table"]))
def test_workload_nested_too_deep(depth, kind):
    v = "[" * depth + "]" * depth if kind == "array" else "{a = " * depth + "1" + "}" * depth
    run_file("workload structure", BASE + f"\n[quick]\nscale = {v}\n")


@SETTINGS
@given(text=st.text(max_size=200))
def test_workload_garbage_text(text):
    if "[workload]" in text:
        return
    run_file("workload garbage", text)


def test_too_many_memslots():
    slots = "".join(f"[[layout.memslot]]\ngpa = {i << 21}\nsize = \"2M\"\n" for i in range(32765))
    run_file("workload structure", BASE.replace("[[layout.memslot]]\ngpa = 0\nsize = \"64M\"\n"
                                                "numa_node = 0\n", slots))


# ---- traces --------------------------------------------------------------------------------------

TRACE_PHASE = """\
[workload]
name = "fuzz-trace"
description = "generated"
repetitions = 1

[[layout.memslot]]
gpa = 0
size = "64M"

[[phase]]
trace = "trace.log"
strict = true
"""
GOOD = "kvm_convert_memory start 0x1000 size 0x1000 private_to_shared\n"

hexnum = st.integers(0, 1 << 70).map(lambda n: f"0x{n:x}")
bad_trace_line = st.one_of(
    # a conversion that QEMU would reject (size 0, unaligned, outside the memslot) or that
    # does not fit 64 bits
    st.builds(lambda s, z, d: f"kvm_convert_memory start {s} size {z} {d}", hexnum, hexnum,
              st.sampled_from(["private_to_shared", "shared_to_private"]))
    .filter(lambda ln: not _valid_request(ln)),
    # wrong words
    st.builds(lambda a, b: f"kvm_convert_memory start 0x1000 size 0x1000 {a}{b}",
              st.sampled_from(["to_shared", "shared", "", "private_to_sharedX"]), junk_text),
    # timestamps past 64-bit nanoseconds
    st.builds(lambda sec: f"1@{sec}.000001:" + GOOD.strip(), st.integers(10 ** 10, 10 ** 30)),
    # not trace lines at all
    junk_text.filter(lambda s: s.strip() and not s.strip().startswith("#") and "\n" not in s
                     and "\r" not in s and not re.match(r"\s*[a-z][a-z0-9]*(_[a-z0-9]+)+ ", s)),
)


def _valid_request(line: str) -> bool:
    m = re.match(r"kvm_convert_memory start 0x([0-9a-f]+) size 0x([0-9a-f]+) ", line)
    s, z = int(m.group(1), 16), int(m.group(2), 16)
    return (z > 0 and s % 4096 == 0 and z % 4096 == 0 and s + z <= 64 << 20
            and len(m.group(1)) <= 16 and len(m.group(2)) <= 16)


@SETTINGS
@given(line=bad_trace_line, before=st.integers(0, 3))
def test_strict_trace_with_a_bad_line(line, before):
    run_file("trace line", TRACE_PHASE, trace=GOOD * before + line + "\n" + GOOD,
             source=f"trace.log:{before + 1}:")


def test_directory_as_trace_or_workload(tmp_path):
    run_file("trace path", TRACE_PHASE.replace('"trace.log"', '"."'))
    d = tmp_path / "dir.toml"
    d.mkdir()
    outcome("workload path", ["-w", str(d)], "dir.toml")


# ---- command-line values -------------------------------------------------------------------------

from bench.params import PARAMS  # noqa: E402

known_params = sorted(k for k, s in PARAMS.items() if not s.internal)


def bad_param_value(key):
    s = PARAMS[key]
    if s.kind == "bool":
        return junk_text.filter(lambda v: v.strip().lower() not in
                                ("yes", "no", "true", "false", "on", "off", "1", "0"))
    if s.kind == "choice":
        return junk_text.filter(lambda v: v not in s.choices)
    if s.kind == "int":
        return st.one_of(st.integers(max_value=int(s.low) - 1).map(str),
                         st.integers(min_value=int(s.high) + 1).map(str),
                         st.floats(allow_nan=True).map(repr), junk_text.filter(
                             lambda v: not re.fullmatch(r"\s*[+-]?\d+\s*", v)))
    if s.kind == "float":
        return st.one_of(st.sampled_from(["nan", "inf", "-inf", "NaN"]),
                         st.floats(allow_nan=False, allow_infinity=False).filter(
                             lambda x: x < s.low or x > s.high or (s.low_open and x == s.low))
                         .map(repr))
    return st.one_of(bad_size.map(str), st.just("4K").filter(lambda _: s.low > 4096))


@SETTINGS
@given(data=st.data())
def test_cli_param(data):
    key = data.draw(st.sampled_from(known_params))
    backend = data.draw(st.sampled_from(PARAMS[key].backends))
    value = data.draw(bad_param_value(key))
    if not value.strip():
        value = "x" + value
    outcome("--param value", ["-b", backend, "-p", f"{key}={value}", "-w", "dma-churn"],
            f"--param {key}:")


@SETTINGS
@given(key=ident.filter(lambda k: k not in PARAMS))
def test_cli_param_unknown_key(key):
    outcome("--param key", ["-p", f"{key}=1", "-w", "dma-churn"], f"--param {key}:")


@SETTINGS
@given(key=st.sampled_from(known_params))
def test_cli_param_of_the_other_backend(key):
    other = {"sim", "host"} - set(PARAMS[key].backends)
    if not other:
        return
    outcome("--param backend", ["-b", other.pop(), "-p", f"{key}=1", "-w", "dma-churn"],
            f"--param {key}:")


@SETTINGS
@given(opt=st.one_of(
    st.builds(lambda v: f"dual.copy={v}", junk_text.filter(
        lambda v: v.strip().lower() not in ("auto", "yes", "no", "true", "false", "on", "off",
                                            "1", "0", ""))),
    st.builds(lambda v: f"dual.discard={v}", st.sampled_from(["maybe", "nope", "2", "auto"])),
    st.builds(lambda k: f"dual.{k}=yes", ident.filter(lambda k: k not in ("copy", "discard"))),
    st.builds(lambda s: f"{s}.copy=yes", ident.filter(lambda s: s not in ("dual", "in-place"))),
    st.sampled_from(["copy=yes", "=yes", "dual.copy", "dual.copy=", ".copy=yes"])))
def test_cli_option(opt):
    outcome("--option", ["-o", opt, "-w", "dma-churn"], "--option")


@SETTINGS
@given(flag=st.sampled_from(["--seed", "--repetitions"]),
       value=st.one_of(st.integers(max_value=-1), st.integers(min_value=1 << 63),
                       junk_text.filter(lambda v: not re.fullmatch(r"\s*[+-]?\d+\s*", v))))
def test_cli_seed_and_repetitions(flag, value):
    outcome(f"{flag}", [f"{flag}={value}", "-w", "dma-churn"], flag)


def test_repetitions_zero_and_profile_with_host():
    outcome("--repetitions", ["-r", "0", "-w", "dma-churn"], "--repetitions")
    outcome("--profile", ["-b", "host", "--profile", "x.toml", "-w", "dma-churn"], "--profile")


@SETTINGS
@given(name=st.one_of(st.just(""), junk_text.filter(lambda s: "/" not in s)))
def test_cli_workload_name(name):
    from bench.workload import list_workloads
    if name in {n for n, _, _ in list_workloads()}:
        return
    outcome("--workload", ["-w", name], None)


# ---- hooks for the inputs other modules validate -------------------------------------------------

def _cost_profile_hook():
    """Cost profile values (bench.costs, model-costs' validation): every value of the default
    profile replaced by a generated wrong one must be a FILE:LINE error."""
    from bench import costs
    if not hasattr(costs, "load_profile"):
        return None
    return costs


@SETTINGS
@given(value=st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e308", "1e26", "-1", '"x"',
                                        "true", "[1]"]),
                       st.floats(min_value=1e12 + 1, allow_infinity=False).map(repr)))
def test_cost_profile_value(value):
    costs = _cost_profile_hook()
    text = Path(costs.__file__).with_name("profiles").joinpath("default.toml").read_text()
    m = re.search(r"(?m)^\[costs\]\n(?:#.*\n|\s*\n)*([a-z_0-9]+) = ", text)
    if m is None:
        pytest.skip("no [costs] key = value line in the default profile")
    key = m.group(1)
    bad = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text, count=1)
    with tempfile.TemporaryDirectory() as d:
        prof = Path(d) / "prof.toml"
        prof.write_text(bad)
        outcome("cost profile value", ["--profile", str(prof), "-w", "dma-churn"], "prof.toml:")


# ---- `gmembench compare` inputs (validated by bench/compare.py, the "gate" helper's part) --------

_BASE_DIR: list = []


def _compare_base() -> Path:
    """One small clean run (made once) that the corrupted copies are compared against."""
    if not _BASE_DIR:
        import atexit
        import shutil
        d = Path(tempfile.mkdtemp(prefix="gmembench-compare-base-"))
        atexit.register(shutil.rmtree, d, True)
        wl = d / "wl.toml"
        wl.write_text(BASE.replace("repetitions = 1", "repetitions = 2"))
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            assert main(["run", "--no-progress", "--no-report", "-w", str(wl),
                         "--out", str(d / "base")]) == 0
        _BASE_DIR.append(d / "base")
    return _BASE_DIR[0]


def _compare_validated() -> bool:
    """HOOK: True once bench.compare validates its inputs (the gate helper's part of issue
    11: tests/test_compare_inputs.py is its own suite).  Set INPUTS_VALIDATED = False in
    bench.compare to turn this test off."""
    from bench import compare
    return bool(getattr(compare, "INPUTS_VALIDATED", True))


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(corrupt=st.sampled_from(["truncate-json", "per_rep-type", "latency-nan", "no-runs",
                                "truncate-npz"]),
       cut=st.integers(1, 200))
def test_compare_inputs(corrupt, cut):
    if not _compare_validated():
        pytest.skip("bench.compare declares INPUTS_VALIDATED = False (gate's part of issue 11)")
    import shutil
    with tempfile.TemporaryDirectory() as d:
        base = _compare_base()
        cur = Path(d) / "cur"
        shutil.copytree(base, cur)
        doc = json.loads((cur / "results.json").read_text())
        if corrupt == "truncate-json":
            (cur / "results.json").write_text(json.dumps(doc)[:cut])
        elif corrupt == "truncate-npz":
            data = (cur / "samples.npz").read_bytes()
            (cur / "samples.npz").write_bytes(data[:cut])
        else:
            if corrupt == "per_rep-type":
                doc["runs"][0]["per_rep"] = "x" * cut
            elif corrupt == "latency-nan":
                doc["runs"][0]["per_rep"][0]["latency_ns"]["p50"] = float("nan")
            else:
                doc["runs"] = []
            (cur / "results.json").write_text(json.dumps(doc))
        tally = TALLY.setdefault("compare input", {"tried": 0, "clear error": 0, "traceback": 0,
                                                   "silently accepted": 0})
        tally["tried"] += 1
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = main(["compare", str(base), str(cur)])
        except Exception as e:
            tally["traceback"] += 1
            raise AssertionError(f"compare {corrupt}: {type(e).__name__}: {e}")
        if rc == 0:
            tally["silently accepted"] += 1
        assert rc == 2 and len(err.getvalue().strip().splitlines()) == 1, (rc, err.getvalue())
        tally["clear error"] += 1
