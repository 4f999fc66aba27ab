"""Workload files: every shipped file loads and generates; bad files name file and line."""
import textwrap
import re
from pathlib import Path

import numpy as np
import pytest

from bench.errors import InputError
from bench.generators import check_ops
from bench.ops import OpKind
from bench.workload import (DEFAULT_SUITE, QUICK_FACTOR, TomlLines, list_workloads, load_workload,
                            workload_dirs)

ROOT = Path(__file__).resolve().parent.parent
# workload files are the .toml files with a [workload] table (others, e.g. qualify specs,
# may share the directory)
SHIPPED = sorted(p.stem for p in (ROOT / "workloads").glob("*.toml")
                 if re.search(r"^\[workload\]", p.read_text(), re.M))
G = 1 << 30
M = 1 << 20

GOOD = """\
[workload]
description = "test"
seed = 3

[layout]
gmem_page_size = "4k"
platform = "preserve"

[[layout.memslot]]
gpa = 0
size = "64M"

[[layout.memslot]]
gpa = "4G"
size = "64M"
numa_node = 1

[strategy.dual]
copy = "auto"

[params]
host_memory = "16G"

[[phase]]
name = "churn"
generator = "dma-churn"
buffers = 400
in_flight = 8
sizes = ["4K", "64K"]
rate = 1000
"""


def write(tmp_path, text, name="w.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def line_of(text, needle):
    return next(i for i, l in enumerate(text.splitlines(), 1) if needle in l)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_workload_loads_and_generates_quick(name):
    full = load_workload(name)
    assert full.description and "\n" not in full.description
    w = load_workload(name, quick=True)
    assert w.quick and 0 < w.scale < 1
    assert w.layout.guest_size <= full.layout.guest_size
    total = 0
    for phase, r, ops, info in w.streams(0):
        assert check_ops(ops, w.layout) is None
        total += len(ops)
        assert "ops" in info
    assert total > 0


def test_default_suite_is_shipped():
    assert set(DEFAULT_SUITE) <= set(SHIPPED)


def test_hogger_layout_is_the_seeds():
    w = load_workload("hogger-120g")
    assert [m.size for m in w.layout.memslots] == [60 * G, 60 * G]
    assert [m.numa_node for m in w.layout.memslots] == [0, 1]
    assert w.layout.guest_size == 120 * G
    assert w.phases[0].generator == "hogger"


def test_good_file_resolves(tmp_path):
    w = load_workload(str(write(tmp_path, GOOD)))
    assert w.name == "w" and w.seed == 3 and w.repetitions == 5
    assert [(m.gpa, m.size, m.numa_node) for m in w.layout.memslots] == [(0, 64 * M, 0), (4 * G, 64 * M, 1)]
    assert w.params == {"host_memory": 16 * G}
    assert w.strategy_options == {"dual": {"copy": "auto"}}
    ph = w.phases[0]
    assert ph.params["sizes"] == [4096, 65536] and ph.params["buffers"] == 400
    assert ph.touch.actions == ("host-write", "guest-read")     # the generator's default


def test_quick_divides_counts_and_sizes_but_keeps_the_shape(tmp_path):
    text = GOOD.replace('size = "64M"', 'size = "256M"')
    p = write(tmp_path, text)
    full, quick = load_workload(str(p)), load_workload(str(p), quick=True)
    assert quick.scale == 1 / QUICK_FACTOR
    assert [m.size for m in quick.layout.memslots] == [256 * M // QUICK_FACTOR] * 2
    assert [m.gpa for m in quick.layout.memslots] == [m.gpa for m in full.layout.memslots]
    assert quick.phases[0].params["buffers"] == 400 // QUICK_FACTOR
    assert quick.phases[0].params["sizes"] == full.phases[0].params["sizes"]
    assert quick.phases[0].params["in_flight"] == full.phases[0].params["in_flight"]
    assert quick.repetitions == 3


def test_quick_table_overrides(tmp_path):
    text = GOOD + textwrap.dedent("""
        [quick]
        scale = 0.1
        repetitions = 1
        [[quick.memslot]]
        gpa = 0
        size = "32M"
        [quick.phase.churn]
        buffers = 40
        """)
    p = write(tmp_path, text)
    w = load_workload(str(p), quick=True)
    assert w.scale == 0.1 and w.repetitions == 1
    assert [m.size for m in w.layout.memslots] == [32 * M]
    assert w.phases[0].params["buffers"] == 40
    full = load_workload(str(p))
    assert full.phases[0].params["buffers"] == 400 and len(full.layout.memslots) == 2


def test_ops_concatenates_phases_and_shifts_time(tmp_path):
    text = GOOD.replace("[[phase]]\nname = \"churn\"", "[[phase]]\nname = \"churn\"\nrepeat = 2")
    w = load_workload(str(write(tmp_path, text)))
    ops, infos = w.ops()
    assert [i["repeat"] for i in infos] == [0, 1]
    assert infos[1]["first_op"] == infos[0]["n_ops"] and len(ops) == sum(i["n_ops"] for i in infos)
    assert (np.diff(ops["t_ns"]) >= 0).all()
    assert (ops["kind"] == OpKind.TO_SHARED).sum() == 800


@pytest.mark.parametrize("edit,needle,message", [
    (("seed = 3", "seed = 3\ncolour = 1"), "colour", "unknown key 'colour'"),
    (("rate = 1000", "rate = 1000\nbogus = 2"), "bogus", "unknown key 'bogus'"),
    (("buffers = 400", "buffers = \"many\""), "buffers =", "expected an integer"),
    (('size = "64M"\n\n[[layout.memslot]]', 'size = "65K"\n\n[[layout.memslot]]'), '"65K"',
     "not a multiple of 4 KiB"),
    (('sizes = ["4K", "64K"]', 'sizes = ["4K", "6000"]'), "sizes =", "not a positive multiple of 4K"),
    (('generator = "dma-churn"', 'generator = "dma-crunch"'), "generator =", "unknown generator 'dma-crunch'"),
    (('platform = "preserve"', 'platform = "sev"'), "platform =", "expected one of"),
    (('gmem_page_size = "4k"', 'gmem_page_size = "3m"'), "gmem_page_size", "expected one of 4k, 2m, 1g"),
    (('gpa = "4G"', 'gpa = "32M"'), 'gpa = "32M"', "overlaps memslot"),
    (('copy = "auto"', 'copy = "sometimes"'), "copy =", "expected one of"),
    (("[strategy.dual]", "[strategy.triple]"), "[strategy.triple]", "unknown key 'triple'"),
    (('rate = 1000', 'rate = 1000\ntouch = "host-poke"'), "touch =", "unknown touch 'host-poke'"),
    (('rate = 1000', 'rate = 1000\ntrace = "traces/x.log"'), "[[phase]]", "exactly one of generator"),
])
def test_malformed_file_names_file_and_line(tmp_path, edit, needle, message):
    text = GOOD.replace(*edit, 1)
    assert text != GOOD
    p = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_workload(str(p))
    assert message in e.value.message
    assert e.value.file == str(p)
    assert e.value.line == line_of(text, needle), str(e.value)
    assert str(e.value).startswith(f"{p}:{e.value.line}: ")


def test_toml_syntax_error_has_a_line(tmp_path):
    text = GOOD.replace("seed = 3", "seed = = 3")
    p = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_workload(str(p))
    assert e.value.line == line_of(text, "seed = = 3") and "not valid TOML" in e.value.message


def test_missing_trace_file_and_missing_description(tmp_path):
    text = GOOD.replace('generator = "dma-churn"\nbuffers = 400\nin_flight = 8\nsizes = ["4K", "64K"]\nrate = 1000',
                        'trace = "traces/nothing.log"')
    p = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_workload(str(p))
    assert "nothing.log" in e.value.message and e.value.line == line_of(text, "trace =")
    p = write(tmp_path, GOOD.replace('description = "test"\n', ""), "nodesc.toml")
    with pytest.raises(InputError) as e:
        load_workload(str(p))
    assert "missing key 'description'" in e.value.message and e.value.line == 1


def test_quick_table_needs_scale_and_known_phases(tmp_path):
    p = write(tmp_path, GOOD + "\n[quick]\nrepetitions = 1\n")
    with pytest.raises(InputError, match="scale"):
        load_workload(str(p), quick=True)
    with pytest.raises(InputError, match="scale"):
        load_workload(str(p))        # checked without --quick too
    text = GOOD + "\n[quick]\nscale = 0.5\n[quick.phase.steady]\nbuffers = 1\n"
    p = write(tmp_path, text, "q2.toml")
    with pytest.raises(InputError) as e:
        load_workload(str(p), quick=True)
    assert "no phase named 'steady'" in e.value.message and e.value.line == line_of(text, "[quick.phase.steady]")


def test_generator_param_errors_found_at_generate_time_name_the_phase(tmp_path):
    text = GOOD.replace("in_flight = 8", "in_flight = 5000")     # region too small
    w = load_workload(str(write(tmp_path, text)))
    with pytest.raises(InputError) as e:
        w.ops()
    assert "phase 'churn'" in e.value.message and e.value.line == line_of(text, "[[phase]]")


def test_trace_phase_relative_path_and_touch(tmp_path):
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "a.log").write_text(
        "kvm_convert_memory start 0x1000 size 0x2000 private_to_shared\n"
        "garbage\n"
        "kvm_convert_memory start 0x1000 size 0x2000 shared_to_private\n")
    text = GOOD.replace('generator = "dma-churn"\nbuffers = 400\nin_flight = 8\nsizes = ["4K", "64K"]\nrate = 1000',
                        'trace = "traces/a.log"\ntouch = ["host-write", "guest-read"]\ntouch_size = "4K"')
    w = load_workload(str(write(tmp_path, text)))
    ops, infos = w.ops()
    assert list(ops["kind"]) == [OpKind.TO_SHARED, OpKind.SHARED_WRITE, OpKind.TO_PRIVATE, OpKind.PRIVATE_READ]
    assert ops["size"][1] == 4096
    assert infos[0]["unparsable"] == 1 and infos[0]["valid"] == 2


def test_workload_dirs_env_shadows_packaged(tmp_path, monkeypatch):
    (tmp_path / "dma-churn.toml").write_text(GOOD.replace('"test"', '"my own churn"'))
    monkeypatch.setenv("GMEMBENCH_WORKLOADS", str(tmp_path))
    assert workload_dirs()[0] == tmp_path
    rows = {n: (d, p) for n, d, p in list_workloads()}
    assert rows["dma-churn"] == ("my own churn", tmp_path / "dma-churn.toml")
    assert "bulk-roundtrip" in rows
    assert load_workload("dma-churn").description == "my own churn"
    with pytest.raises(InputError, match="unknown workload 'nope'"):
        load_workload("nope")


def test_toml_lines_locates_keys_in_arrays_of_tables():
    text = textwrap.dedent("""\
        [a]
        x = 1
        [[p]]
        n = "one"
        v = [
          1,
          2,
        ]
        [[p]]
        n = "two"
        [p.sub]
        y = 2
        """)
    L = TomlLines(text)
    assert L.line(("a", "x")) == 2
    assert L.line(("p", 0, "n")) == 4 and L.line(("p", 0, "v")) == 5
    assert L.line(("p", 1, "n")) == 10 and L.line(("p", 1, "sub", "y")) == 12
    assert L.line(("p", 1, "missing")) == 9          # falls back to the enclosing table


def test_readme_documents_every_generator_and_key():
    readme = (ROOT / "workloads" / "README.md").read_text()
    from bench.generators import GENERATORS
    for name, g in GENERATORS.items():
        assert f"### `{name}`" in readme, name
        for key in g.params:
            assert f"| `{key}` |" in readme, (name, key)


def test_readme_example_file_loads(tmp_path):
    readme = (ROOT / "workloads" / "README.md").read_text()
    example = readme.split("## File format", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "my-guest.log").write_text(
        "kvm_convert_memory start 0x1000 size 0x1000 private_to_shared\n")
    p = tmp_path / "example.toml"
    p.write_text(example)
    w = load_workload(str(p))
    assert [ph.name for ph in w.phases] == ["boot", "steady", "replay"]
    assert w.params["host_memory"] == 160 * G
    q = load_workload(str(p), quick=True)
    assert q.scale == 0.1 and q.phases[1].params["buffers"] == 2000
    assert [m.size for m in q.layout.memslots] == [1 * G]


def test_toml_files_that_are_not_workloads_are_skipped(tmp_path, monkeypatch):
    (tmp_path / "spec.toml").write_text('[qualify]\nname = "x"\n')
    (tmp_path / "broken.toml").write_text('[workload\n')
    monkeypatch.setenv("GMEMBENCH_WORKLOADS", str(tmp_path))
    rows = {n: d for n, d, _ in list_workloads()}
    assert "spec" not in rows
    assert rows["broken"].startswith("(unreadable")
    with pytest.raises(InputError) as e:
        load_workload("spec")
    assert "not a workload file" in e.value.message and e.value.file.endswith("spec.toml")


@pytest.mark.parametrize("quick", [False, True])
def test_shipped_swiotlb_boot_converts_the_clamped_6_percent(quick):
    from bench.generators import swiotlb_pool_size
    w = load_workload("swiotlb-boot", quick=quick)
    ops, infos = w.ops()
    conv = ops[ops["kind"] == OpKind.TO_SHARED]
    pool = swiotlb_pool_size(w.layout.guest_size)
    assert int(conv["size"].sum()) == pool == infos[0]["pool_bytes"]
    assert 64 * M < pool < 1 * G          # 6% itself, not a clamp, in both variants
    assert (ops["kind"] != OpKind.TO_PRIVATE).all()


def test_shipped_hogger_quick_keeps_two_nodes_and_fills_private_memory():
    w = load_workload("hogger-120g", quick=True)
    assert [m.numa_node for m in w.layout.memslots] == [0, 1]
    assert [m.size for m in w.layout.memslots] == [60 * G // QUICK_FACTOR] * 2
    ops, _ = w.ops()
    hog = ops[ops["kind"] == OpKind.PRIVATE_WRITE]
    assert int(hog["size"].sum()) > 0.85 * w.layout.guest_size
    conv = ops[np.isin(ops["kind"], (OpKind.TO_SHARED, OpKind.TO_PRIVATE))]
    assert set(conv["slot"].tolist()) == {0, 1}


def test_duplicate_phase_names_and_quick_mistakes_found_without_quick(tmp_path):
    text = GOOD + '\n[[phase]]\nname = "churn"\ngenerator = "mixed"\n'
    p = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_workload(str(p))
    assert "used twice" in e.value.message and e.value.line == len(text.splitlines()) - 1
    text = GOOD + "\n[quick]\nscale = 0.5\n[quick.phase.churn]\nbufers = 1\n"
    p = write(tmp_path, text, "q.toml")
    with pytest.raises(InputError) as e:
        load_workload(str(p))                   # not --quick: [quick] is checked all the same
    assert "quick.phase.churn.bufers: unknown key 'bufers'" in e.value.message
    assert e.value.line == len(text.splitlines())


def test_ops_matches_the_runners_per_phase_seeding():
    runner = pytest.importorskip("bench.runner")
    if not hasattr(runner, "build_ops"):
        pytest.skip("the runner builds streams through Workload.ops")
    build_ops = runner.build_ops
    w = load_workload("snp-guest", quick=True)
    mine, infos = w.ops(repetition=1)
    theirs, _ = build_ops(w, 1)
    for f in ("kind", "slot", "offset", "size", "token"):
        assert (mine[f] == theirs[f]).all()
    # steady-state times follow the boot (untimed here) and never go backwards
    timed = mine["t_ns"][mine["t_ns"] >= 0]
    assert len(timed) and (np.diff(timed) >= 0).all()
    other, _ = w.ops(repetition=2)
    assert len(other) != len(mine) or not (other["offset"] == mine["offset"]).all()


@pytest.mark.parametrize("platform, default", [("zero", True), ("destroy", True),
                                               ("preserve", False)])
def test_accepted_defaults_to_the_platforms_that_accept_memory(tmp_path, platform, default):
    w = load_workload(str(write(tmp_path, GOOD.replace('platform = "preserve"',
                                                       f'platform = "{platform}"'))))
    assert w.layout.accepted is default and w.layout.tdx_private_2m is False
    w = load_workload(str(write(tmp_path, GOOD.replace(
        'platform = "preserve"', f'platform = "{platform}"\naccepted = {str(not default).lower()}'),
        "b.toml")))
    assert w.layout.accepted is (not default)
    assert load_workload(str(tmp_path / "b.toml"), quick=True).layout.accepted is (not default)


@pytest.mark.parametrize("edit, message", [
    ('platform = "zero"\ninit_shared = true\naccepted = true', "expected false with init_shared"),
    ('platform = "destroy"\ntdx_private_2m = true', "is not TDX"),
])
def test_layout_accept_and_tdx_keys_are_checked(tmp_path, edit, message):
    text = GOOD.replace('platform = "preserve"', edit)
    p = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_workload(str(p))
    assert message in e.value.message and e.value.file == str(p)
