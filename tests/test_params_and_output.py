"""What valid input does (the generated malformed inputs are in test_malformed_inputs.py):
parameters and options read by kind from every source, [params] honoured, duplicate
workloads and strategies, unique run ids, partial directories of other runs left alone,
a finished run kept when it cannot be put in place, the trace parser's line classes."""
import json
import os
from pathlib import Path

import pytest

from bench import output
from bench.errors import InputError
from bench.params import cli_options, cli_params
from bench.runner import run_suite
from bench.workload import STRATEGY_OPTIONS

SMALL = """\
[workload]
name = "{name}"
description = "small"
repetitions = 1
[[layout.memslot]]
gpa = 0
size = "64M"
{params}
[[phase]]
generator = "dma-churn"
buffers = 20
"""


def wl(tmp_path, name="small", params="", file=None):
    p = tmp_path / (file or f"{name}.toml")
    p.write_text(SMALL.format(name=name, params=params))
    return str(p)


def test_cli_values_are_read_by_kind():
    assert cli_params(["host_memory=32G", "prefragment=0.25", "engine=python",
                       "series_points=7", "warmup_repetitions=0"], "sim") == {
        "host_memory": 32 << 30, "prefragment": 0.25, "engine": "python",
        "series_points": 7, "warmup_repetitions": 0}
    assert cli_params(["kpageflags=no", "slowdown=1.1"], "host") == {"kpageflags": False,
                                                                    "slowdown": 1.1}
    assert cli_options(["dual.copy=yes", "dual.discard=no", "in-place.huge=demote",
                        "dual.copy=auto"], STRATEGY_OPTIONS) == {
        "dual": {"copy": "auto", "discard": False}, "in-place": {"huge": "demote"}}


def test_typo_gets_a_suggestion():
    with pytest.raises(InputError, match=r"--param prefragement: .*did you mean 'prefragment'"):
        cli_params(["prefragement=0.3"], "sim")
    with pytest.raises(InputError, match=r"--option dual.cpy: .*did you mean 'copy'"):
        cli_options(["dual.cpy=yes"], STRATEGY_OPTIONS)


def test_workload_params_are_checked_and_honoured(tmp_path):
    with pytest.raises(InputError, match=r"bad.toml:\d+: params.warmup_repetitons: unknown"):
        run_suite([wl(tmp_path, "bad", "[params]\nwarmup_repetitons = 1")], out_dir=tmp_path / "x",
                  progress_enabled=False, report=False)
    out = run_suite([wl(tmp_path, "ok", "[params]\nwarmup_repetitions = 2")], ["in-place"],
                    out_dir=tmp_path / "o", progress_enabled=False, report=False)
    doc = json.loads((out / "results.json").read_text())
    assert [r["warmup_repetitions"] for r in doc["runs"]] == [2]


def test_duplicate_workloads_and_strategies(tmp_path):
    a = wl(tmp_path, "same")
    out = run_suite([a, a], ["dual", "dual"], out_dir=tmp_path / "o", progress_enabled=False,
                    report=False)
    doc = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in doc["runs"]] == ["same/dual"]
    b = wl(tmp_path, "same", file="other.toml")
    with pytest.raises(InputError, match="two workloads are named 'same'"):
        run_suite([a, b], out_dir=tmp_path / "p", progress_enabled=False, report=False)
    assert not (tmp_path / "p").exists()


def test_run_ids_are_unique_within_a_second(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(output, "new_run_id", lambda backend: "20260101-000000-sim")
    (o1, t1), (o2, t2) = output.claim(None, "sim"), output.claim(None, "sim")
    assert o1 != o2 and t1 != t2 and t1.is_dir() and t2.is_dir()


def test_another_runs_partial_directory_is_never_touched(tmp_path):
    out, tmp = output.claim(tmp_path / "r", "sim")
    (tmp / "work").write_text("mine")
    with pytest.raises(output.OutputError, match=rf"another run \(pid {os.getpid()}\)"):
        output.claim(tmp_path / "r", "sim")
    assert (tmp / "work").read_text() == "mine"


def test_a_finished_run_is_kept_when_it_cannot_be_put_in_place(tmp_path):
    out, tmp = output.claim(tmp_path / "r", "sim")
    out.mkdir()
    (out / "someone-elses").write_text("x")      # appeared during the run
    with pytest.raises(output.OutputError, match="its results are kept in") as e:
        output.finish(tmp, out, lambda d: (d / "results.json").write_text("{}"))
    kept = Path(str(e.value).rsplit("kept in ", 1)[1])
    assert (kept / "results.json").exists()
    assert (out / "someone-elses").exists()


def test_trace_lines_that_are_not_events_are_unparsable(tmp_path):
    from bench.layout import Layout, Memslot
    from bench.trace import parse_trace
    t = tmp_path / "t.log"
    t.write_text("hello world\nkvm_memory_fault start 0x0 size 0x1000 flags 0x0\n"
                 "kvm_convert_memory start 0x1000 size 0x1000 private_to_shared\n"
                 "kvm_convert_memory start 0x1000 size 0x100000000000000000 private_to_shared\n"
                 "1@99999999999.000001:kvm_convert_memory start 0x0 size 0x1000 shared_to_private\n"
                 "kvm_convert_memory start 0x2000 size 0x10")
    ops, info = parse_trace(t, Layout(memslots=(Memslot(0, 1 << 20, 0),)))
    assert info["foreign_events"] == 1 and info["foreign_by_event"] == {"kvm_memory_fault": 1}
    assert info["unparsable"] == 4 and info["valid"] == 1 and len(ops) == 1
    assert [e["line"] for e in info["unparsable_examples"]] == [1, 4, 5, 6]
    assert info["unparsable_examples"][-1]["why"] == "truncated line"
    assert info["lines"] == 6 and info["last_line_unterminated"]


def test_memory_guard_scaling_keeps_invalid_requests_invalid():
    """The host memory guard divides offsets and sizes; a request that fails validation at
    full size (unaligned, size 0, past its memslot) must still fail scaled."""
    from types import SimpleNamespace

    import numpy as np

    from bench.host.backend import HostTarget
    from bench.layout import Layout, Memslot
    from bench.ops import STEP_DTYPE
    M = 1 << 20
    t = SimpleNamespace(scale=8, layout=Layout(memslots=(Memslot(0, 256 * M, 0),)),
                        slot_sizes=[32 * M])
    cases = [(0, 64 * 4096), (40 * M, 4096), (4096 + 512, 4096), (8192, 4096 + 100), (4096, 0),
             (255 * M, 2 * M), (256 * M - 4096, 8192)]
    steps = np.zeros(len(cases), STEP_DTYPE)
    steps["offset"] = [c[0] for c in cases]
    steps["size"] = [c[1] for c in cases]

    def valid(off, size, slot):
        return size > 0 and off % 4096 == 0 and size % 4096 == 0 and off + size <= slot

    scaled = HostTarget.scale_steps(t, steps)
    for (off, size), s in zip(cases, scaled):
        assert valid(off, size, 256 * M) == valid(int(s["offset"]), int(s["size"]), 32 * M), \
            (off, size, int(s["offset"]), int(s["size"]))
