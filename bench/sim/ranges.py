"""Per-page attributes kept as merged ranges, like the kernel's maple tree.

Two levels, so that range operations never iterate per 4K page and lists stay short:
a chunk of 512 pages (2 MiB) is either uniform (one value in a numpy array) or mixed,
and a mixed chunk keeps its own merged list of (start, value) segments.  A conversion of
a 1 GiB range touches 512 array entries in one numpy call; a 4K conversion edits one
short list.  Adjacent equal segments are always merged, across chunks too (segments()).

The same structure keeps any per-page value as runs (dtype chooses the value range; values
must be >= 0): the simulator's content tokens are one (Runs).
"""
from bisect import bisect_right

import numpy as np

CHUNK_SHIFT = 9
CHUNK = 1 << CHUNK_SHIFT
MIXED = -1


class AttrRanges:
    def __init__(self, npages: int, initial: int, dtype=np.int16):
        self.npages = npages
        nchunks = (npages + CHUNK - 1) >> CHUNK_SHIFT
        self.uniform = np.full(nchunks, initial, dtype=dtype)
        self.mixed: dict[int, tuple[list[int], list[int]]] = {}
        last = npages - ((nchunks - 1) << CHUNK_SHIFT) if nchunks else CHUNK
        # a partial last chunk: pages past npages hold a sentinel and are never queried
        self._last_len = last

    def _chunk_len(self, c: int) -> int:
        return self._last_len if c == len(self.uniform) - 1 else CHUNK

    def get(self, page: int) -> int:
        c = page >> CHUNK_SHIFT
        v = int(self.uniform[c])
        if v != MIXED:
            return v
        starts, vals = self.mixed[c]
        return vals[bisect_right(starts, page & (CHUNK - 1)) - 1]

    def _chunk_uniform(self, c: int, s: int, e: int, value: int) -> bool:
        v = int(self.uniform[c])
        if v != MIXED:
            return v == value
        starts, vals = self.mixed[c]
        i = bisect_right(starts, s) - 1
        j = bisect_right(starts, e - 1) - 1
        return all(x == value for x in vals[i:j + 1])

    def is_uniform(self, start: int, end: int, value: int) -> bool:
        """True if every page in [start, end) has `value`."""
        c0, c1 = start >> CHUNK_SHIFT, (end - 1) >> CHUNK_SHIFT
        s0 = start & (CHUNK - 1)
        if c0 == c1:
            return self._chunk_uniform(c0, s0, end - (c0 << CHUNK_SHIFT), value)
        if not self._chunk_uniform(c0, s0, CHUNK, value):
            return False
        if not self._chunk_uniform(c1, 0, end - (c1 << CHUNK_SHIFT), value):
            return False
        return c1 - c0 < 2 or bool((self.uniform[c0 + 1:c1] == value).all())

    def _set_in_chunk(self, c: int, s: int, e: int, value: int) -> None:
        if s == 0 and e >= self._chunk_len(c):
            self.uniform[c] = value
            self.mixed.pop(c, None)
            return
        old = int(self.uniform[c])
        if old == value:
            return
        if old != MIXED:
            starts, vals = [0], [old]
        else:
            starts, vals = self.mixed[c]
        i = bisect_right(starts, s) - 1
        j = bisect_right(starts, e - 1) - 1
        tail_value = vals[j]
        ls, lv = starts[:i + 1], vals[:i + 1]
        if ls[-1] == s:
            ls.pop()
            lv.pop()
        if not lv or lv[-1] != value:
            ls.append(s)
            lv.append(value)
        rs, rv = starts[j + 1:], vals[j + 1:]
        if e < self._chunk_len(c) and (not rs or rs[0] != e):
            rs.insert(0, e)
            rv.insert(0, tail_value)
        if rv and rv[0] == lv[-1]:
            rs.pop(0)
            rv.pop(0)
        ls += rs
        lv += rv
        if len(ls) == 1:
            self.uniform[c] = lv[0]
            self.mixed.pop(c, None)
        else:
            self.uniform[c] = MIXED
            self.mixed[c] = (ls, lv)

    def set(self, start: int, end: int, value: int) -> None:
        """Give every page in [start, end) `value`."""
        c0, c1 = start >> CHUNK_SHIFT, (end - 1) >> CHUNK_SHIFT
        base0 = c0 << CHUNK_SHIFT
        if c0 == c1:
            self._set_in_chunk(c0, start - base0, end - base0, value)
            return
        self._set_in_chunk(c0, start - base0, CHUNK, value)
        self._set_in_chunk(c1, 0, end - (c1 << CHUNK_SHIFT), value)
        if c1 - c0 >= 2:
            inner = self.uniform[c0 + 1:c1]
            if self.mixed:
                for k in np.flatnonzero(inner == MIXED):
                    del self.mixed[c0 + 1 + int(k)]
            inner[:] = value

    def segments(self, start: int = 0, end: int | None = None) -> list[tuple[int, int, int]]:
        """Merged (start, end, value) ranges covering [start, end): the maple-tree view."""
        end = self.npages if end is None else end
        out: list[list[int]] = []

        def emit(s, e, v):
            if s >= e:
                return
            if out and out[-1][2] == v and out[-1][1] == s:
                out[-1][1] = e
            else:
                out.append([s, e, v])

        c0, c1 = start >> CHUNK_SHIFT, (end - 1) >> CHUNK_SHIFT
        c = c0
        while c <= c1:
            base = c << CHUNK_SHIFT
            v = int(self.uniform[c])
            if v != MIXED:
                # run of uniform chunks with the same value
                run_end = c + 1
                while run_end <= c1 and int(self.uniform[run_end]) == v:
                    run_end += 1
                emit(max(start, base), min(end, run_end << CHUNK_SHIFT), v)
                c = run_end
                continue
            starts, vals = self.mixed[c]
            bounds = starts[1:] + [self._chunk_len(c)]
            for s, e, val in zip(starts, bounds, vals):
                emit(max(start, base + s), min(end, base + e), val)
            c += 1
        return [tuple(x) for x in out]

    def count(self, value: int) -> int:
        """Pages holding `value`."""
        full = int(np.count_nonzero(self.uniform == value)) * CHUNK
        if len(self.uniform) and self.uniform[-1] == value:
            full -= CHUNK - self._last_len
        for c, (starts, vals) in self.mixed.items():
            bounds = starts[1:] + [self._chunk_len(c)]
            full += sum(e - s for s, e, v in zip(starts, bounds, vals) if v == value)
        return full

    def __getitem__(self, key):
        """The value of a page, or (a slice) the values of a range as an array (tests)."""
        if isinstance(key, slice):
            start, end, step = key.indices(self.npages)
            out = np.zeros(max(end - start, 0), np.int64)
            if start < end:
                for s, e, v in self.segments(start, end):
                    out[s - start:e - start] = v
            return out[::step]
        return self.get(int(key))

    def count_nonzero(self, start: int = 0, end: int | None = None) -> int:
        end = self.npages if end is None else end
        return 0 if start >= end else (end - start) - self.count_in(start, end, 0)

    def popcount_sum(self, start: int, end: int) -> int:
        """Set bits summed over the pages of [start, end)."""
        return sum((e - s) * int(v).bit_count() for s, e, v in self.segments(start, end))

    def or_bits(self, start: int, end: int, bits: int) -> list[tuple[int, int]]:
        """Set `bits` on every page of [start, end); returns the runs of pages that lacked
        some of them, now set."""
        changed = []
        if start < end:
            for s, e, v in self.segments(start, end):
                if v | bits != v:
                    self.set(s, e, v | bits)
                    changed.append((s, e))
        return changed

    def clear_bits(self, start: int, end: int, bits: int) -> int:
        """Clear `bits` on every page of [start, end); returns pages that had any of them."""
        n = 0
        if start < end:
            for s, e, v in self.segments(start, end):
                if v & bits:
                    self.set(s, e, v & ~bits)
                    n += e - s
        return n

    def count_in(self, start: int, end: int, value: int) -> int:
        """Pages in [start, end) holding `value`."""
        return sum(e - s for s, e, v in self.segments(start, end) if v == value)

    def copy_from(self, other: "AttrRanges", start: int, end: int) -> None:
        """[start, end) takes other's values there."""
        for s, e, v in other.segments(start, end):
            self.set(s, e, v)


def complement(runs, a: int, b: int) -> list[tuple[int, int]]:
    """The pages of [a, b) outside `runs` ((start, end) pairs inside [a, b), ascending; they
    may touch or overlap), as (start, end) runs, ascending."""
    out, p = [], a
    for s, e in runs:
        if s > p:
            out.append((p, s))
        p = max(p, e)
    if p < b:
        out.append((p, b))
    return out


def Runs(npages: int) -> AttrRanges:
    """A content token (uint32) per page, kept as runs; 0 = never written / zeroed."""
    return AttrRanges(npages, 0, dtype=np.int64)


class PfnMap:
    """The host page (pfn) behind each page of a file, kept as runs of contiguous pfns:
    per 2 MiB chunk of the file a sorted list of [start, end, pfn] (chunk offsets, the pfn
    of `start`); pages in no run hold no page.  Indexing gives pfn + 1, 0 for no page (the
    per-page view tests read)."""

    def __init__(self, npages: int):
        self.npages = npages
        self.chunks: dict[int, list[list[int]]] = {}

    def _chunk_set(self, c: int, s: int, e: int, pfn: int | None) -> None:
        out = []
        for rs, re, rp in self.chunks.get(c, ()):
            if re <= s or rs >= e:
                out.append([rs, re, rp])
                continue
            if rs < s:
                out.append([rs, s, rp])
            if re > e:
                out.append([e, re, rp + (e - rs)])
        if pfn is not None:
            out.append([s, e, pfn])
            out.sort()
            merged = []
            for r in out:          # runs of contiguous pfns merge
                m = merged[-1] if merged else None
                if m and m[1] == r[0] and m[2] + (r[0] - m[0]) == r[2]:
                    m[1] = r[1]
                else:
                    merged.append(r)
            out = merged
        if out:
            self.chunks[c] = out
        else:
            self.chunks.pop(c, None)

    def set(self, a: int, b: int, pfn: int | None) -> None:
        """Pages [a, b) get pfns pfn, pfn + 1, ... (None: no page)."""
        while a < b:
            c = a >> CHUNK_SHIFT
            e = min(b, (c + 1) << CHUNK_SHIFT)
            if pfn is not None or c in self.chunks:
                self._chunk_set(c, a - (c << CHUNK_SHIFT), e - (c << CHUNK_SHIFT), pfn)
            if pfn is not None:
                pfn += e - a
            a = e

    def clear(self, a: int, b: int) -> None:
        self.set(a, b, None)

    def runs(self, a: int, b: int) -> list[tuple[int, int, int]]:
        """Pages of [a, b) that hold a page, as (start, end, pfn of start), ascending."""
        out = []
        if a >= b:
            return out
        if len(self.chunks) < ((b - a) >> CHUNK_SHIFT):
            cs = sorted(c for c in self.chunks if a >> CHUNK_SHIFT <= c <= (b - 1) >> CHUNK_SHIFT)
        else:
            cs = [c for c in range(a >> CHUNK_SHIFT, ((b - 1) >> CHUNK_SHIFT) + 1)
                  if c in self.chunks]
        for c in cs:
            base = c << CHUNK_SHIFT
            for rs, re, rp in self.chunks[c]:
                s, e = max(a, base + rs), min(b, base + re)
                if s < e:
                    out.append((s, e, rp + (s - base - rs)))
        return out

    def holes(self, a: int, b: int) -> list[tuple[int, int]]:
        """Pages of [a, b) that hold no page, as (start, end) runs, ascending."""
        return complement(((s, e) for s, e, _ in self.runs(a, b)), a, b)

    def count(self, a: int = 0, b: int | None = None) -> int:
        b = self.npages if b is None else b
        return sum(e - s for s, e, _ in self.runs(a, b))

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, end, step = key.indices(self.npages)
            out = np.zeros(max(end - start, 0), np.int64)
            for s, e, p in self.runs(start, end):
                out[s - start:e - start] = np.arange(p + 1, p + 1 + e - s)
            return out[::step]
        key = int(key)
        r = self.runs(key, key + 1)
        return r[0][2] + 1 if r else 0

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)
