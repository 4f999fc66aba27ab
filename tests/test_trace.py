"""QEMU kvm_convert_memory trace replay: both line forms, foreign events, bad lines."""
from pathlib import Path

import numpy as np
import pytest

from bench.errors import InputError
from bench.layout import Layout, Memslot
from bench.ops import OpKind
from bench.trace import SYNTHETIC, parse_trace, synthetic_trace

G = 1 << 30
LAYOUT = Layout(memslots=(Memslot(0, 2 * G, 0), Memslot(4 * G, 2 * G, 1)))
TRACES = Path(__file__).resolve().parent.parent / "workloads" / "traces"


def write(tmp_path, text, name="t.log"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_plain_lines(tmp_path):
    p = write(tmp_path, "kvm_convert_memory start 0x1000 size 0x2000 private_to_shared\n"
                        "kvm_convert_memory start 0x100003000 size 0x1000 private_to_shared\n"
                        "kvm_convert_memory start 0x1000 size 0x2000 shared_to_private\n")
    ops, info = parse_trace(p, LAYOUT)
    assert list(ops["kind"]) == [OpKind.TO_SHARED, OpKind.TO_SHARED, OpKind.TO_PRIVATE]
    assert list(ops["slot"]) == [0, 1, 0]
    assert list(ops["offset"]) == [0x1000, 0x3000, 0x1000]      # relative to the memslot
    assert list(ops["size"]) == [0x2000, 0x1000, 0x2000]
    assert (ops["t_ns"] == -1).all() and info["timestamps"] == "none"
    assert info["valid"] == info["parsed"] == 3 and info["unparsable"] == 0


def test_timestamped_lines_keep_inter_arrival_times(tmp_path):
    p = write(tmp_path,
              "1234@1700000010.000100:kvm_convert_memory start 0x1000 size 0x1000 private_to_shared\n"
              "1234@1700000010.000350:kvm_convert_memory start 0x2000 size 0x1000 private_to_shared\n"
              "1235@1700000011.000000:kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n")
    ops, info = parse_trace(p, LAYOUT)
    assert list(ops["t_ns"]) == [0, 250_000, 999_900_000]
    assert info["timestamps"] == "all"


def test_foreign_events_are_counted_not_replayed(tmp_path):
    p = write(tmp_path,
              "5@1.000001:kvm_memory_fault start 0x1000 size 0x1000 flags 0x0\n"
              "5@1.000002:kvm_convert_memory start 0x1000 size 0x1000 private_to_shared\n"
              "5@1.000003:kvm_run_exit cpu_index 0, reason 39\n"
              "kvm_set_user_memory Slot#0 flags=0x4 gpa=0x0 size=0x80000000\n"
              "5@1.000004:kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n")
    ops, info = parse_trace(p, LAYOUT)
    assert len(ops) == 2
    assert info["foreign_events"] == 3
    assert info["foreign_by_event"] == {"kvm_memory_fault": 1, "kvm_run_exit": 1, "kvm_set_user_memory": 1}
    assert info["timestamps"] == "all"     # only conversion lines count
    assert list(ops["t_ns"]) == [0, 2000]


def test_truncated_last_line_is_reported(tmp_path):
    p = write(tmp_path, "kvm_convert_memory start 0x1000 size 0x1000 private_to_shared\n"
                        "kvm_convert_memory start 0x2000 size 0x")
    ops, info = parse_trace(p, LAYOUT)
    assert len(ops) == 1
    assert info["unparsable"] == 1 and info["last_line_unterminated"]
    ex = info["unparsable_examples"][0]
    assert ex["line"] == 2 and ex["why"] == "truncated line"


def test_garbage_is_counted_with_line_numbers(tmp_path):
    lines = ["kvm_convert_memory start 0x1000 size 0x1000 private_to_shared"]
    lines += ["\x00\x01 binary junk", "!!!", "kvm_convert_memory start 0xZZ size 0x1000 private_to_shared",
              "kvm_convert_memory start 0x1000 size 0x1000 sideways", "12@abc:kvm_convert_memory", "",
              "# a comment"]
    lines += [f"@@ garbage {i}" for i in range(10)]
    p = write(tmp_path, "\n".join(lines) + "\n")
    ops, info = parse_trace(p, LAYOUT)
    assert len(ops) == 1
    assert info["unparsable"] == 15
    assert [e["line"] for e in info["unparsable_examples"]] == [2, 3, 4, 5, 6]   # first five kept
    assert info["blank"] == 1 and info["comments"] == 1
    assert info["lines"] == len(lines)


def test_binary_file_does_not_crash(tmp_path):
    p = tmp_path / "bin.log"
    p.write_bytes(bytes(range(256)) * 8)
    ops, info = parse_trace(p, LAYOUT)
    assert len(ops) == 0 and info["unparsable"] >= 1 and "warning" in info


def test_invalid_requests_are_reported_not_dropped_silently(tmp_path):
    p = write(tmp_path,
              "kvm_convert_memory start 0x1000 size 0x0 private_to_shared\n"          # zero size
              "kvm_convert_memory start 0x1800 size 0x1000 private_to_shared\n"       # unaligned start
              "kvm_convert_memory start 0x1000 size 0x1800 private_to_shared\n"       # unaligned size
              "kvm_convert_memory start 0x80000000 size 0x1000 private_to_shared\n"   # in the PCI hole
              "kvm_convert_memory start 0x7ffff000 size 0x2000 private_to_shared\n"   # straddles slot end
              "kvm_convert_memory start 0x1000 size 0x1000 private_to_shared\n")
    ops, info = parse_trace(p, LAYOUT)
    assert len(ops) == 1
    inv = info["invalid"]
    assert (inv["zero_size"], inv["unaligned"], inv["outside_memslot"]) == (1, 2, 2)
    assert [e["line"] for e in inv["examples"]] == [1, 2, 3, 4, 5]
    assert info["parsed"] == 6 and info["valid"] == 1


def test_strict_mode_raises_at_the_first_bad_line(tmp_path):
    p = write(tmp_path, "kvm_convert_memory start 0x1000 size 0x1000 private_to_shared\n"
                        "kvm_memory_fault start 0x1000 size 0x1000 flags 0x8\n"
                        "kvm_convert_memory start 0x1000 size 0x1000 private_to\n")
    with pytest.raises(InputError) as e:
        parse_trace(p, LAYOUT, strict=True)
    assert e.value.file == str(p) and e.value.line == 3
    q = write(tmp_path, "kvm_convert_memory start 0x1001 size 0x1000 private_to_shared\n", "q.log")
    with pytest.raises(InputError) as e:
        parse_trace(q, LAYOUT, strict=True)
    assert e.value.line == 1 and "unaligned" in str(e.value)


def test_zero_valid_requests_is_reported_not_an_error(tmp_path):
    p = write(tmp_path, "kvm_memory_fault start 0x1000 size 0x1000 flags 0x0\n")
    ops, info = parse_trace(p, LAYOUT)
    assert len(ops) == 0 and info["valid"] == 0 and "no valid" in info["warning"]


def test_limit_and_missing_file(tmp_path):
    p = write(tmp_path, "".join(f"kvm_convert_memory start 0x{0x1000 * (i + 1):x} size 0x1000 "
                                f"private_to_shared\n" for i in range(10)))
    ops, info = parse_trace(p, LAYOUT, limit=4)
    assert len(ops) == 4 and info["stopped_at_limit"] == 4
    with pytest.raises(InputError) as e:
        parse_trace(tmp_path / "nope.log", LAYOUT)
    assert "nope.log" in str(e.value)


def test_backwards_timestamps_are_counted_and_made_monotonic(tmp_path):
    p = write(tmp_path, "1@5.000000:kvm_convert_memory start 0x1000 size 0x1000 private_to_shared\n"
                        "2@4.999000:kvm_convert_memory start 0x2000 size 0x1000 private_to_shared\n"
                        "1@5.002000:kvm_convert_memory start 0x3000 size 0x1000 private_to_shared\n")
    ops, info = parse_trace(p, LAYOUT)
    assert info["time_backwards"] == 1
    assert list(ops["t_ns"]) == [0, 0, 2_000_000]


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_shipped_synthetic_traces_are_labelled_and_reproducible(name):
    path = TRACES / f"{name}.log"
    text = path.read_text()
    assert text.splitlines()[0].startswith("# SYNTHETIC")
    assert text == "\n".join(synthetic_trace(name)) + "\n"
    slots = SYNTHETIC[name]["slots"]
    lay = Layout(memslots=tuple(Memslot(g, s, n) for g, s, n in slots))
    ops, info = parse_trace(path, lay, strict=True)
    assert info["valid"] > 500 and info["unparsable"] == 0
    assert info["timestamps"] == ("all" if SYNTHETIC[name]["timestamps"] else "none")
    if SYNTHETIC[name]["fault_fraction"]:
        assert info["foreign_by_event"]["kvm_memory_fault"] > 0
    t = ops["t_ns"]
    assert (np.diff(t) >= 0).all()


def test_line_cut_inside_the_event_name_is_a_truncated_line(tmp_path):
    p = write(tmp_path, "kvm_convert_memory start 0x1000 size 0x1000 private_to_shared\nkvm_conv")
    ops, info = parse_trace(p, LAYOUT)
    assert len(ops) == 1 and info["unparsable_examples"][0]["why"] == "truncated line"
    q = write(tmp_path, "kvm_convert_memory start 0x1000 size 0x1000 private_to_shared\ngarbage\n", "q.log")
    ops, info = parse_trace(q, LAYOUT)
    assert info["unparsable"] == 1 and info["foreign_events"] == 0
    assert info["unparsable_examples"][0]["why"] == "not a trace event line"


def test_replay_invalid_keeps_rejected_requests_inside_memslots(tmp_path):
    p = write(tmp_path,
              "kvm_convert_memory start 0x1000 size 0x0 private_to_shared\n"
              "kvm_convert_memory start 0x1800 size 0x1000 private_to_shared\n"
              "kvm_convert_memory start 0x80000000 size 0x1000 private_to_shared\n"   # no memslot
              "kvm_convert_memory start 0x1000 size 0x1000 private_to_shared\n")
    ops, info = parse_trace(p, LAYOUT, replay_invalid=True)
    assert list(ops["size"]) == [0, 0x1000, 0x1000] and list(ops["offset"]) == [0x1000, 0x1800, 0x1000]
    assert info["replayed_invalid"] == 2 and info["invalid"]["outside_memslot"] == 1


from hypothesis import given, settings, strategies as st

_GOOD = st.builds(lambda s, n, d: f"kvm_convert_memory start 0x{s:x} size 0x{n:x} {d}",
                  st.integers(0, 8 << 30), st.integers(0, 1 << 24),
                  st.sampled_from(["private_to_shared", "shared_to_private"]))
_LINES = st.lists(st.one_of(_GOOD, st.text(max_size=40).map(lambda t: t.replace("\n", " ")),
                            st.just("kvm_memory_fault start 0x1000 size 0x1000 flags 0x0"),
                            st.just("# comment"), st.just("")), max_size=30)


@settings(max_examples=60, deadline=None)
@given(_LINES, st.booleans())
def test_every_line_is_accounted_for(tmp_path_factory, lines, final_newline):
    """Nothing is dropped silently: each line is a comment, blank, conversion (valid or
    invalid), foreign event or unparsable."""
    p = tmp_path_factory.mktemp("h") / "t.log"
    p.write_text("\n".join(lines) + ("\n" if final_newline and lines else ""))
    ops, info = parse_trace(p, LAYOUT)
    inv = info["invalid"]
    n_invalid = inv["zero_size"] + inv["unaligned"] + inv["outside_memslot"]
    assert info["parsed"] == info["valid"] + n_invalid
    assert info["comments"] + info["blank"] + info["parsed"] + info["foreign_events"] \
        + info["unparsable"] == info["lines"]
    assert len(ops) == info["valid"]
    assert ((ops["offset"] % 4096 == 0) & (ops["size"] % 4096 == 0) & (ops["size"] > 0)).all()
