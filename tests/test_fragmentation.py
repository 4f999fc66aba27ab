"""The kernel's fragmentation indices and the buddyinfo reader (bench/fragmentation.py).
Expected values are worked out by hand from the mm/vmstat.c formulas."""
import os

import pytest

from bench.errors import InputError
from bench.fragmentation import (fragmentation_index, indices, parse_buddyinfo,
                                 read_buddyinfo, total_nr_free, unusable_index)


# ----------------------------------------------------------------- unusable index
@pytest.mark.parametrize("nr_free, order, expected", [
    # [4, 0, 1]: free_pages = 4 + 4 = 8
    ([4, 0, 1], 0, 0.0),          # suitable = 8 pages: everything usable
    ([4, 0, 1], 1, 0.5),          # suitable = 1 block of 4 = 2 order-1 blocks: (8-4)/8
    ([4, 0, 1], 2, 0.5),          # suitable = 1: (8-4)/8
    ([4, 0, 1], 3, 1.0),          # nothing of order 3: (8-0)/8
    # [2, 1, 0, 3]: free_pages = 2 + 2 + 24 = 28
    ([2, 1, 0, 3], 1, 1 / 14),    # suitable = 1 + 3*4 = 13 -> (28-26)/28
    ([2, 1, 0, 3], 3, 1 / 7),     # suitable = 3 -> (28-24)/28
    ([0, 0, 0], 0, 1.0),          # nothing free
    ([], 9, 1.0),
    # /proc/buddyinfo stops at order 10: a 1G target has suitable = 0
    ([0] * 10 + [5], 18, 1.0),
    ([0] * 10 + [5], 9, 0.0),
])
def test_unusable_index_hand_computed(nr_free, order, expected):
    assert unusable_index(nr_free, order) == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------- fragmentation index
@pytest.mark.parametrize("nr_free, order, expected", [
    ([4, 0, 1], 3, 0.6),          # 8 pages, 5 blocks: 1 - (1 + 8/8)/5 (kernel: 600)
    ([4, 0, 1], 2, -1.0),         # an order-2 block is free
    ([4, 0, 1], 1, -1.0),         # a larger block counts as suitable too
    ([8], 1, 0.375),              # 8 pages, 8 blocks: 1 - (1 + 4)/8
    ([0, 0, 2], 3, 0.0),          # 8 pages in 2 blocks: 1 - (1 + 1)/2: lack of memory
    ([0, 0, 0], 4, 0.0),          # nothing free
    ([], 0, 0.0),
    ([0] * 10 + [1], 18, 1 - (1 + 1024 / 2**18) / 1),
])
def test_fragmentation_index_hand_computed(nr_free, order, expected):
    assert fragmentation_index(nr_free, order) == pytest.approx(expected, abs=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError):
        unusable_index([1, 2], -1)
    with pytest.raises(ValueError):
        fragmentation_index([1, -2], 0)


def test_indices_names():
    nr = [0] * 9 + [3] + [0] * 8 + [1]      # three 2M blocks and one 1G block (a model's list)
    got = indices(nr)
    # only orders the kernel defines: the 1G block is folded into 256 order-10 blocks
    assert set(got) == {"order9", "order10", "frag_order9", "frag_order10"}
    assert got["order9"] == 0.0
    free = 3 * 512 + 2**18
    assert got["order10"] == pytest.approx(3 * 512 / free)
    assert got["frag_order9"] is None and got["frag_order10"] is None   # blocks are free


# ----------------------------------------------------------------- buddyinfo
SAMPLE = """\
Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 
Node 0, zone    DMA32      1      1      4      2      5      4      3      3      4      2    752 
Node 0, zone   Normal   1106    450    189    144     86     63     58     32     39     26     92 
Node 1, zone   Normal     10     20     30     40     50     60     70     80     90    100    110 
"""


def test_read_buddyinfo_sample(tmp_path):
    path = tmp_path / "buddyinfo"
    path.write_text(SAMPLE)
    info = read_buddyinfo(str(path))
    assert list(info) == ["node0/DMA", "node0/DMA32", "node0/Normal", "node1/Normal"]
    assert info["node0/DMA"] == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 3]
    assert info["node1/Normal"][10] == 110
    total = total_nr_free(info)
    assert len(total) == 11
    assert total[0] == 1 + 1106 + 10            # DMA left out by default
    assert total[10] == 752 + 92 + 110
    assert total_nr_free(info, zones=("DMA",)) == info["node0/DMA"]
    assert total_nr_free(info, zones=("HighMem",)) == []


def test_total_nr_free_pads_shorter_lists():
    info = {"node0/Normal": [1, 2], "node1/Normal": [1, 0, 0, 4]}
    assert total_nr_free(info) == [2, 2, 0, 4]


@pytest.mark.skipif(not os.path.exists("/proc/buddyinfo"), reason="no /proc/buddyinfo")
def test_real_proc_buddyinfo_parses():
    info = read_buddyinfo()
    assert info and all(len(v) >= 1 for v in info.values())
    assert 0.0 <= unusable_index(total_nr_free(info), 9) <= 1.0


@pytest.mark.parametrize("text, line", [
    ("Node 0, zone Normal 1 2 3\nNode 0, zone DMA32 1 x 3\n", 2),
    ("\nNode 0 zone Normal 1 2 3\n", 2),                 # comma missing
    ("Node 0, zone Normal\n", 1),                         # no counts
    ("Node 0, zone Normal 1 2\nNode 0, zone Normal 3 4\n", 2),   # listed twice
    ("Node 0, zone Normal 1 -2 3\n", 1),
])
def test_malformed_buddyinfo_names_file_and_line(tmp_path, text, line):
    path = tmp_path / "buddyinfo.txt"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        read_buddyinfo(str(path))
    assert err.value.file == str(path)
    assert err.value.line == line
    assert str(err.value).startswith(f"{path}:{line}: ")


def test_missing_buddyinfo_file(tmp_path):
    with pytest.raises(InputError) as err:
        read_buddyinfo(str(tmp_path / "nope"))
    assert err.value.file == str(tmp_path / "nope")


def test_parse_buddyinfo_from_text_names_given_path():
    with pytest.raises(InputError) as err:
        parse_buddyinfo("garbage\n", "saved.txt")
    assert (err.value.file, err.value.line) == ("saved.txt", 1)
