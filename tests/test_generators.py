"""Each generator family's defining property, checked on the stream it produces."""
import numpy as np
import pytest

from bench.generators import (GENERATORS, Touch, check_ops, format_size, parse_size,
                              swiotlb_pool_size)
from bench.layout import Layout, Memslot
from bench.ops import NO_CHECK, PAGE_SIZE, SIZE_1G, SIZE_2M, OpKind

G = 1 << 30
M = 1 << 20


def params(name, **over):
    p = {k: v.default for k, v in GENERATORS[name].params.items()}
    p.update(over)
    return p


def gen(name, layout, seed=0, touch=None, **over):
    g = GENERATORS[name]
    t = touch if touch is not None else Touch(g.default_touch)
    ops, info = g.func(layout, np.random.default_rng(seed), params(name, **over), t)
    assert check_ops(ops, layout) is None
    return ops, info


def layout(*slots, **kw):
    return Layout(memslots=tuple(Memslot(g, s, n) for g, s, n in slots), **kw)


# ----------------------------------------------------------------------------- sizes

def test_parse_size_units_and_errors():
    assert parse_size("4K") == 4096
    assert parse_size("512M") == 512 * M
    assert parse_size("4G") == 4 * G
    assert parse_size("64KiB") == 65536
    assert parse_size("1.5G") == 3 * G // 2
    assert parse_size(8192) == 8192
    for bad in ("4X", "", "G", True, -1, "1.00001K", [1]):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_format_size_exact_and_inexact():
    assert format_size(64 * M) == "64 MiB"
    assert format_size(515399680) == "491.52 MiB (515399680 B)"


# ----------------------------------------------------------------------------- swiotlb-boot

@pytest.mark.parametrize("guest,expected", [
    (8 * G, 515399680),         # 6% of 8 GiB, page aligned
    (512 * M, 64 * M),          # clamped up to 64 MiB
    (32 * G, 1 * G),            # clamped down to 1 GiB
])
def test_swiotlb_boot_converts_exactly_the_clamped_6_percent(guest, expected):
    low = min(guest, 2 * G)
    slots = [(0, low, 0)] + ([(4 * G, guest - low, 0)] if guest > low else [])
    lay = layout(*slots)
    assert swiotlb_pool_size(guest) == expected
    ops, info = gen("swiotlb-boot", lay, bounces=1000)
    conv = ops[np.isin(ops["kind"], (OpKind.TO_SHARED, OpKind.TO_PRIVATE))]
    assert (conv["kind"] == OpKind.TO_SHARED).all()
    assert int(conv["size"].sum()) == expected == info["pool_bytes"]
    assert (conv["size"] <= 64 * M).all()
    # contiguous, ascending, in slot 0, ending at the top of low memory
    assert (conv["slot"] == 0).all()
    assert (conv["offset"][1:] == conv["offset"][:-1] + conv["size"][:-1]).all()
    assert int(conv["offset"][-1] + conv["size"][-1]) == low
    # conversions come first (boot), then every bounce lands inside the pool
    nconv = len(conv)
    assert (ops["kind"][:nconv] == OpKind.TO_SHARED).all()
    b = ops[nconv:]
    assert len(b) == 1000
    assert np.isin(b["kind"], (OpKind.SHARED_WRITE, OpKind.SHARED_READ)).all()
    base = int(conv["offset"][0])
    assert (b["offset"] >= base).all() and (b["offset"] + b["size"] <= base + expected).all()


def test_swiotlb_boot_chunk_param():
    lay = layout((0, 2 * G, 0), (4 * G, 6 * G, 0))
    ops, _ = gen("swiotlb-boot", lay, chunk=2 * M, bounces=0)
    assert len(ops) == -(-515399680 // (2 * M))
    assert (ops["size"][:-1] == 2 * M).all()


# ----------------------------------------------------------------------------- dma-churn

def replay_live_set(ops):
    """Walk the stream: every TO_PRIVATE must undo a live TO_SHARED exactly, and live
    buffers never overlap.  Returns the live set at the end."""
    live = {}
    pages = set()
    for op in ops:
        k = int(op["kind"])
        key = (int(op["slot"]), int(op["offset"]), int(op["size"]))
        span = {(key[0], p) for p in range(key[1], key[1] + key[2], PAGE_SIZE)}
        if k == OpKind.TO_SHARED:
            assert not (span & pages), f"buffer {key} overlaps a live buffer"
            live[key] = True
            pages |= span
        elif k == OpKind.TO_PRIVATE:
            assert key in live, f"TO_PRIVATE {key} undoes no live buffer"
            del live[key]
            pages -= span
    return live


@pytest.mark.parametrize("placement,lifetime", [("uniform", "exponential"), ("zipf", "fifo"),
                                                ("zipf", "exponential")])
def test_dma_churn_every_to_private_undoes_a_live_buffer(placement, lifetime):
    lay = layout((4 * G, 64 * M, 0))
    ops, info = gen("dma-churn", lay, buffers=3000, in_flight=32, placement=placement,
                    lifetime=lifetime, zipf_s=1.3, rate=50000.0)
    conv = ops[np.isin(ops["kind"], (OpKind.TO_SHARED, OpKind.TO_PRIVATE))]
    assert (conv["kind"] == OpKind.TO_SHARED).sum() == 3000
    assert (conv["kind"] == OpKind.TO_PRIVATE).sum() == 3000
    assert replay_live_set(ops) == {}
    assert ((conv["size"] >= 4096) & (conv["size"] <= 65536)).all()
    assert info["peak_live"] >= 32 if lifetime == "fifo" else info["peak_live"] > 16
    t = ops["t_ns"]
    assert (t >= 0).all() and (np.diff(t) >= 0).all()


def test_dma_churn_zipf_concentrates_on_hot_spots():
    lay = layout((0, 256 * M, 0))
    u, _ = gen("dma-churn", lay, buffers=4000, in_flight=8, placement="uniform", sizes=[65536])
    z, _ = gen("dma-churn", lay, buffers=4000, in_flight=8, placement="zipf", zipf_s=1.2, sizes=[65536])

    def top10_share(ops):
        offs = ops["offset"][ops["kind"] == OpKind.TO_SHARED]
        _, counts = np.unique(offs, return_counts=True)
        return np.sort(counts)[::-1][:10].sum() / len(offs)

    assert top10_share(z) > 5 * top10_share(u)


def test_dma_churn_touch_tokens_and_pins():
    lay = layout((0, 64 * M, 0), platform="preserve")
    ops, info = gen("dma-churn", lay, buffers=500, in_flight=8, pin_fraction=1.0)
    k = ops["kind"]
    # pinned: TO_SHARED, PIN, SHARED_WRITE ... UNPIN, TO_PRIVATE, PRIVATE_READ
    sh = np.flatnonzero(k == OpKind.TO_SHARED)
    assert (k[sh + 1] == OpKind.PIN).all() and (k[sh + 2] == OpKind.SHARED_WRITE).all()
    pr = np.flatnonzero(k == OpKind.TO_PRIVATE)
    assert (k[pr - 1] == OpKind.UNPIN).all() and (k[pr + 1] == OpKind.PRIVATE_READ).all()
    # the guest reads back what the host wrote into the same buffer
    written, tokens = {}, []
    for o in ops:
        key = (int(o["offset"]), int(o["size"]))
        if o["kind"] == OpKind.SHARED_WRITE:
            written[key] = int(o["token"])
            tokens.append(int(o["token"]))
        elif o["kind"] == OpKind.PRIVATE_READ:
            assert int(o["token"]) == written[key]
    assert len(set(tokens)) == 500 and 0 not in tokens
    # on TDX (zero) the guest cannot know: unchecked
    tdx = layout((0, 64 * M, 0), platform="zero")
    ops, _ = gen("dma-churn", tdx, buffers=100, in_flight=8)
    assert (ops["token"][ops["kind"] == OpKind.PRIVATE_READ] == NO_CHECK).all()


def test_dma_churn_region_too_small_is_an_error():
    lay = layout((0, 1 * M, 0))
    with pytest.raises(ValueError, match="in_flight"):
        gen("dma-churn", lay, buffers=10, in_flight=64)


# ----------------------------------------------------------------------------- pkvm-share

def test_pkvm_share_token_sequence():
    lay = layout((0, 64 * M, 0), platform="preserve")
    ops, info = gen("pkvm-share", lay, buffers=200)
    assert len(ops) == 200 * 7
    seq = ops.reshape(200, 7)
    expected = [OpKind.PRIVATE_WRITE, OpKind.TO_SHARED, OpKind.SHARED_READ, OpKind.SHARED_WRITE,
                OpKind.TO_PRIVATE, OpKind.PRIVATE_READ, OpKind.SHARED_PROBE]
    assert (seq["kind"] == np.array(expected, dtype=np.uint8)).all()
    a, b = seq["token"][:, 0], seq["token"][:, 3]
    assert (seq["token"][:, 2] == a).all()           # host reads the guest's data
    assert (seq["token"][:, 5] == b).all()           # guest reads the host's reply
    assert (a != b).all() and (a != 0).all() and (b != 0).all()
    assert (a != NO_CHECK).all() and (b != NO_CHECK).all()
    # each group acts on one range; the probe hits a page of it, now private
    for col in range(1, 6):
        assert (seq["offset"][:, col] == seq["offset"][:, 0]).all()
        assert (seq["size"][:, col] == seq["size"][:, 0]).all()
    assert (seq["offset"][:, 6] == seq["offset"][:, 0]).all() and (seq["size"][:, 6] == PAGE_SIZE).all()


def test_pkvm_share_expectations_follow_the_platform():
    ops, _ = gen("pkvm-share", layout((0, 64 * M, 0), platform="zero"), buffers=10)
    seq = ops.reshape(10, 7)
    assert (seq["token"][:, 2] == 0).all()           # TDX zeroes on to-shared
    assert (seq["token"][:, 5] == NO_CHECK).all()
    ops, _ = gen("pkvm-share", layout((0, 64 * M, 0), platform="destroy"), buffers=10, probe=False)
    seq = ops.reshape(10, 6)
    assert (seq["token"][:, 2] == NO_CHECK).all()    # SNP: ciphertext


# ----------------------------------------------------------------------------- bulk-roundtrip

def test_bulk_roundtrip_covers_4g_ten_times_both_ways():
    lay = layout((4 * G, 4 * G, 0))
    ops, info = gen("bulk-roundtrip", lay)
    k = ops["kind"]
    for kind in (OpKind.TO_SHARED, OpKind.TO_PRIVATE):
        m = k == kind
        assert m.sum() == 10 and (ops["size"][m] == 4 * G).all() and (ops["offset"][m] == 0).all()
    # strictly alternating, starting with to-shared
    conv = k[np.isin(k, (OpKind.TO_SHARED, OpKind.TO_PRIVATE))]
    assert list(conv) == [OpKind.TO_SHARED, OpKind.TO_PRIVATE] * 10
    # every page touched after every conversion: a whole-range touch follows each one
    for i in np.flatnonzero(np.isin(k, (OpKind.TO_SHARED, OpKind.TO_PRIVATE))):
        nxt = ops[i + 1]
        want = OpKind.SHARED_WRITE if k[i] == OpKind.TO_SHARED else OpKind.PRIVATE_WRITE
        assert nxt["kind"] == want and nxt["offset"] == 0 and nxt["size"] == 4 * G
    assert len(ops) < 100        # range ops, not one op per page


def test_bulk_roundtrip_verify_reads_what_was_written():
    lay = layout((0, 64 * M, 0), platform="preserve")
    ops, _ = gen("bulk-roundtrip", lay, rounds=3, verify=True)
    last = {}
    for o in ops:
        k = int(o["kind"])
        if k in (OpKind.SHARED_WRITE, OpKind.PRIVATE_WRITE):
            last["w"] = int(o["token"])
        elif k in (OpKind.SHARED_READ, OpKind.PRIVATE_READ):
            assert int(o["token"]) == last["w"]


# ----------------------------------------------------------------------------- huge-scatter

@pytest.mark.parametrize("folio,size", [("2M", SIZE_2M), ("1G", SIZE_1G)])
def test_huge_scatter_touches_each_huge_folio_once(folio, size):
    slot = 4 * G if folio == "1G" else 256 * M
    lay = layout((4 * G, slot, 0), gmem_page_size=size)
    ops, info = gen("huge-scatter", lay, folio=folio)
    nf = slot // size
    assert info["folios"] == nf
    for kind in (OpKind.TO_SHARED, OpKind.TO_PRIVATE):
        c = ops[ops["kind"] == kind]
        assert len(c) == nf and (c["size"] == PAGE_SIZE).all()
        folios = c["offset"] // np.uint64(size)
        assert sorted(folios.tolist()) == list(range(nf))      # each folio exactly once
    sh = ops[ops["kind"] == OpKind.TO_SHARED]
    assert not (np.diff(sh["offset"].astype(np.int64)) > 0).all()   # scattered, not a sweep
    pop = ops[0]
    assert pop["kind"] == OpKind.PRIVATE_WRITE and pop["size"] == slot


# ----------------------------------------------------------------------------- hogger

def test_hogger_fills_private_memory_outside_the_io_region():
    lay = layout((0, 2 * G, 0), (2 * G, 2 * G, 1))
    ops, info = gen("hogger", lay, buffers=2000, in_flight=16, io_span=64 * M, chunk=16 * M)
    hog = ops[ops["kind"] == OpKind.PRIVATE_WRITE]
    assert (hog["offset"] + hog["size"] <= 2 * G - 64 * M).all()
    for s in (0, 1):
        assert int(hog["size"][hog["slot"] == s].sum()) == int((2 * G - 64 * M) * 0.9) // PAGE_SIZE * PAGE_SIZE
    conv = ops[np.isin(ops["kind"], (OpKind.TO_SHARED, OpKind.TO_PRIVATE))]
    assert (conv["offset"] >= 2 * G - 64 * M).all()
    assert set(conv["slot"].tolist()) == {0, 1}
    assert replay_live_set(ops) == {}
    # hogger steps never split a conversion from its touch
    k = ops["kind"]
    sh = np.flatnonzero(k == OpKind.TO_SHARED)
    assert (k[sh + 1] == OpKind.SHARED_WRITE).all()
    # and they are spread through the I/O, not all at one end
    pos = np.flatnonzero(k == OpKind.PRIVATE_WRITE)
    assert pos[0] < len(ops) // 4 and pos[-1] > 3 * len(ops) // 4


# ----------------------------------------------------------------------------- mixed

def test_mixed_direction_mix_sizes_and_locality():
    lay = layout((0, 1 * G, 0))
    ops, info = gen("mixed", lay, requests=20000, shared_fraction=0.8, size_dist="log-uniform",
                    size_min=8192, size_max=256 * 1024, locality="uniform")
    conv = ops[np.isin(ops["kind"], (OpKind.TO_SHARED, OpKind.TO_PRIVATE))]
    assert len(conv) == 20000
    frac = (conv["kind"] == OpKind.TO_SHARED).mean()
    assert 0.78 < frac < 0.82
    assert set(np.unique(conv["size"]).tolist()) == {8192 << i for i in range(6)}
    # host-write (the default touch) follows only the conversions to shared
    assert (ops["kind"] == OpKind.SHARED_WRITE).sum() == (conv["kind"] == OpKind.TO_SHARED).sum()
    seq, _ = gen("mixed", lay, requests=100, sizes=[65536], locality="sequential", touch=Touch())
    assert (np.diff(seq["offset"].astype(np.int64)) == 65536).all()


def test_every_generator_is_reproducible_from_its_seed():
    lay = layout((0, 1 * G, 0), (2 * G, 1 * G, 1))
    for name in GENERATORS:
        over = {"buffers": 200} if "buffers" in GENERATORS[name].params else {}
        if name == "hogger":
            over.update(io_span=64 * M, in_flight=8)
        if name == "mixed":
            over["requests"] = 500
        if name == "swiotlb-boot":
            over["bounces"] = 100
        a, _ = gen(name, lay, seed=5, **over)
        b, _ = gen(name, lay, seed=5, **over)
        c, _ = gen(name, lay, seed=6, **over)
        assert (a == b).all(), name
        assert len(a) > 0, name
        if name != "bulk-roundtrip":    # bulk only differs in its tokens
            assert len(a) != len(c) or not (a == c).all(), name


def test_mixed_invalid_fraction_makes_rejected_requests_without_touches():
    from bench.generators import invalid_conversions
    lay = layout((0, 256 * M, 0))
    ops, info = GENERATORS["mixed"].func(lay, np.random.default_rng(3),
                                         params("mixed", requests=4000, invalid_fraction=0.1),
                                         Touch(("host-write", "guest-write")))
    assert check_ops(ops, lay) is not None                      # not a valid stream ...
    assert check_ops(ops, lay, allow_invalid_conversions=True) is None   # ... on purpose
    bad = invalid_conversions(ops)
    assert bad.sum() == info["invalid_requests"] and 300 < bad.sum() < 500
    # a rejected request is never followed by a touch of its range
    conv_idx = np.flatnonzero(np.isin(ops["kind"], (OpKind.TO_SHARED, OpKind.TO_PRIVATE)))
    nxt = conv_idx[bad[conv_idx]] + 1
    nxt = nxt[nxt < len(ops)]
    assert np.isin(ops["kind"][nxt], (OpKind.TO_SHARED, OpKind.TO_PRIVATE)).all()


from hypothesis import given, settings, strategies as st


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 400), st.integers(1, 16), st.sampled_from(["fifo", "exponential"]),
       st.sampled_from(["uniform", "zipf"]), st.floats(0.5, 3.0), st.integers(0, 2**32 - 1),
       st.lists(st.sampled_from([4096, 8192, 12288, 65536]), min_size=1, max_size=4))
def test_dma_churn_never_overlaps_live_buffers(buffers, in_flight, lifetime, placement, s, seed, sizes):
    lay = layout((0, 8 * M, 0), (1 * G, 4 * M, 1))
    ops, _ = gen("dma-churn", lay, seed=seed, buffers=buffers, in_flight=in_flight,
                 lifetime=lifetime, placement=placement, zipf_s=s, sizes=sizes)
    assert replay_live_set(ops) == {}
    assert (ops["kind"] == OpKind.TO_SHARED).sum() == buffers
