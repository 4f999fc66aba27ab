"""Strategy.compile (table-driven) produces byte-identical steps to the straightforward
per-kind, per-position implementation it replaced, on random op arrays."""
from dataclasses import dataclass

import numpy as np
import pytest

from bench.errors import InputError
from bench.layout import Layout, Memslot
from bench.ops import OP_DTYPE, STEP_DTYPE, Obj, OpKind, Step, Via
from bench.strategies import TOKEN, DualBacking, InPlace, Strategy, make_strategy


def reference_compile(strategy, ops, layout):
    """The previous implementation of Strategy.compile, kept as the oracle."""
    tmpl = strategy.templates(layout)
    counts = np.zeros(len(ops), dtype=np.int64)
    for kind, steps in tmpl.items():
        counts[ops["kind"] == kind] = len(steps)
    unknown = ~np.isin(ops["kind"], list(tmpl))
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise InputError(f"op {i}: kind {int(ops['kind'][i])} is not supported by {strategy.name}")
    out = np.zeros(int(counts.sum()), dtype=STEP_DTYPE)
    op_index = np.repeat(np.arange(len(ops), dtype=np.uint32), counts)
    first = np.concatenate(([0], np.cumsum(counts)[:-1])) if len(ops) else counts
    pos = np.arange(len(out)) - np.repeat(first, counts)
    src = ops[op_index]
    out["op"] = op_index
    out["slot"] = src["slot"]
    out["offset"] = src["offset"]
    out["size"] = src["size"]
    for kind, steps in tmpl.items():
        is_kind = src["kind"] == kind
        for j, (code, obj, via, flags, arg) in enumerate(steps):
            m = is_kind & (pos == j)
            out["code"][m] = code
            out["obj"][m] = obj
            out["via"][m] = via
            out["flags"][m] = flags
            out["arg"][m] = src["token"][m] if arg == TOKEN else arg
    return out


def random_ops(rng, n, kinds=tuple(OpKind)):
    ops = np.zeros(n, dtype=OP_DTYPE)
    ops["t_ns"] = rng.integers(-1, 1 << 40, n)
    ops["kind"] = rng.choice([int(k) for k in kinds], n)
    ops["slot"] = rng.integers(0, 4, n)
    ops["offset"] = rng.integers(0, 1 << 30, n) * 4096
    ops["size"] = rng.integers(1, 513, n) * 4096
    ops["token"] = rng.integers(0, 1 << 32, n, dtype=np.uint64)
    return ops


LAYOUTS = [Layout((Memslot(0, 1 << 30),), shared_page=page, platform=platform,
                  init_shared=init)
           for page in ("4k", "thp", "hugetlb") for platform in ("preserve", "zero", "destroy")
           for init in (False, True)]
OPTIONS = [("in-place", {}), ("dual", {}), ("dual", {"copy": True}), ("dual", {"copy": False}),
           ("dual", {"discard": False}), ("dual", {"copy": True, "discard": False})]


@pytest.mark.parametrize("name,options", OPTIONS)
def test_identical_to_reference_on_random_ops(name, options):
    rng = np.random.default_rng(abs(hash((name, tuple(options.items())))) % 2**32)
    strategy = make_strategy(name, options)
    for layout in LAYOUTS:
        for n in (0, 1, 7, 1000, 20000):
            ops = random_ops(rng, n)
            new = strategy.compile(ops, layout)
            old = reference_compile(strategy, ops, layout)
            assert new.dtype == old.dtype
            assert new.tobytes() == old.tobytes()


def test_ops_of_one_kind_and_conversions_only():
    rng = np.random.default_rng(5)
    layout = LAYOUTS[0]
    for strategy in (InPlace(), DualBacking()):
        for kinds in ((OpKind.TO_SHARED,), (OpKind.TO_SHARED, OpKind.TO_PRIVATE),
                      (OpKind.SHARED_WRITE, OpKind.PRIVATE_READ)):
            ops = random_ops(rng, 5000, kinds)
            assert strategy.compile(ops, layout).tobytes() == \
                reference_compile(strategy, ops, layout).tobytes()


@dataclass
class _Custom(Strategy):
    """Templates of other shapes: an empty one, a token arg after the first step."""
    name: str = "custom"

    def templates(self, layout):
        return {
            OpKind.TO_SHARED: [],
            OpKind.TO_PRIVATE: [(Step.NOP, Obj.GMEM, Via.HOST, 0, 7),
                                (Step.WRITE, Obj.SHARED, Via.GUEST, 3, TOKEN),
                                (Step.READ, Obj.GMEM, Via.HOST, 1, TOKEN),
                                (Step.PIN, Obj.SHARED, Via.HOST, 2, 2**64 - 1)],
            OpKind.PIN: [(Step.PIN, Obj.SHARED, Via.HOST, 0, TOKEN)],
        }


def test_other_template_shapes():
    rng = np.random.default_rng(9)
    ops = random_ops(rng, 3000, (OpKind.TO_SHARED, OpKind.TO_PRIVATE, OpKind.PIN))
    new = _Custom().compile(ops, LAYOUTS[0])
    assert new.tobytes() == reference_compile(_Custom(), ops, LAYOUTS[0]).tobytes()
    assert len(new) == 4 * (ops["kind"] == OpKind.TO_PRIVATE).sum() + (ops["kind"] == OpKind.PIN).sum()


def test_unsupported_kind_names_the_first_such_op():
    rng = np.random.default_rng(3)
    ops = random_ops(rng, 100, (OpKind.TO_SHARED, OpKind.TO_PRIVATE))
    ops["kind"][[40, 70]] = [42, OpKind.SHARED_WRITE]
    for strategy in (InPlace(), _Custom()):
        with pytest.raises(InputError) as new:
            strategy.compile(ops, LAYOUTS[0])
        with pytest.raises(InputError) as old:
            reference_compile(strategy, ops, LAYOUTS[0])
        assert str(new.value) == str(old.value)
        assert str(new.value).startswith("op 40: kind 42 is not supported by ")
