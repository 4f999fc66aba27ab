"""Host physical memory: a model of the kernel's buddy page allocator (mm/page_alloc.c).

Free memory is kept as naturally aligned power-of-two blocks on per-order free lists, one
set of lists per migratetype (UNMOVABLE, MOVABLE), as in the kernel.  Every pageblock
(2^pageblock_order pages, 2M) carries a migratetype label; free pages sit on the lists of
their pageblock's label.  All memory starts MOVABLE (as after boot), so unmovable
allocations - guest_memfd pages - must steal pageblocks from movable memory (measured: guest_memfd
pages are unmovable and pollute movable pageblocks); `pageblock_counts()` reports how many pageblocks carry each label.

Rules, with the kernel function they follow:

* Allocation (__rmqueue_smallest): the smallest free block of the caller's own migratetype
  at or above the requested order; it is split, the lowest part is returned and the upper
  halves go back on the lists (expand()).  Lists are LIFO: a freed block is handed out
  first, like the head of the kernel's lists.  Boot memory is listed so that the lowest
  address is handed out first (the kernel frees boot memory to the list tail).
* Fallback when the own lists are empty (__rmqueue_claim, then __rmqueue_steal):
  - claim: try the other type's blocks from the largest order down.  A block of at least
    pageblock order is claimed whole (its pageblocks are relabelled).  A smaller block is
    claimed with its whole pageblock only if at least half of that pageblock is free or
    holds pages compatible with the request (try_to_claim_block); then the pageblock's
    free pages move to the requester's lists and the smallest own block is used.  Movable
    requests do not try to claim below order pageblock_order/2 (should_try_claim_block).
  - steal: otherwise take the smallest block of the other type without relabelling.
* Freeing (__free_one_page): merge with the free buddy while it exists, whatever its
  migratetype.  When two free pageblock-or-larger blocks of different labels merge into a
  block of at most kernel_max_order, the freed block's label wins and the buddy's
  pageblocks are relabelled (the kernel's "match buddy type").  A freed multi-pageblock
  block with mixed labels first takes its last pageblock's label, which is what freeing its
  pageblocks one by one in address order would do.

The kernel's largest block is MAX_PAGE_ORDER = 10 (4M); this model also forms blocks up to
max_order (18 = 1G) so that 1G availability can be measured.  Blocks above
kernel_max_order are kept as type-neutral runs of 4M "kernel blocks", each of which keeps
its own label (no relabelling when they merge):
* a request of order <= kernel_max_order that finds nothing in its own lists first takes a
  4M chunk of its own label out of such a run (the kernel would have that chunk on the
  requester's order-10 list); a claim at order 10 takes the other type's order-10 list
  head, else the lowest 4M chunk of the smallest run, and relabels only that chunk (the
  kernel claims one 4M block, never 1G at once);
* a request above kernel_max_order (a 1G folio: hugetlb/alloc_contig_range in the kernel)
  takes the smallest large-enough free block regardless of labels and relabels all its
  pageblocks to the requester's type (it now holds pages of that type).

Not modelled: per-CPU page lists and their delayed merging (trap 4), watermarks and
reclaim, compaction, the RECLAIMABLE/HIGHATOMIC/CMA types, zones and NUMA nodes.

Cost: every operation on one block is O(max_order) Python steps.  Which pages are free or
held (and for which migratetype) is kept as runs of pages (ranges.AttrRanges), so range
operations and checks (double free) cost per run, not per 4K page.
"""
import numpy as np

from bench.sim.ranges import AttrRanges

UNMOVABLE = 0
MOVABLE = 1
_BIG = 2          # list kind of blocks above kernel_max_order (type-neutral)

# Per-page state byte.  Allocated pages remember their mobility because the claim rule
# counts movable pages in a pageblock.  (state byte of an allocation = its type + 1)
_FREE = 0
_USED_UNMOVABLE = 1
_USED_MOVABLE = 2

KERNEL_MAX_ORDER = 10   # MAX_PAGE_ORDER on x86-64


class OutOfMemory(Exception):
    """No free block large enough (after fallback); the allocator was not changed."""


class BadFree(ValueError):
    """Freeing pages that are free already, or a range outside memory / misaligned."""


def aligned_blocks(pfn: int, npages: int, max_order: int):
    """Split [pfn, pfn+npages) into maximal naturally aligned power-of-two blocks,
    ascending; yields (pfn, order)."""
    while npages > 0:
        order = (pfn & -pfn).bit_length() - 1 if pfn else max_order
        order = min(order, npages.bit_length() - 1, max_order)
        yield pfn, order
        pfn += 1 << order
        npages -= 1 << order


class PageStates(AttrRanges):
    """The state of every page of host memory (_FREE / _USED_*), as runs."""

    def __setitem__(self, page: int, value: int) -> None:
        self.set(int(page), int(page) + 1, value)

    def find(self, value: int, start: int, end: int) -> int:
        """The first page of [start, end) in state `value`, or -1."""
        for s, _, v in self.segments(start, end) if start < end else ():
            if v == value:
                return s
        return -1


class BuddyAllocator:
    def __init__(self, total_pages: int, max_order: int = 18, pageblock_order: int = 9,
                 kernel_max_order: int = KERNEL_MAX_ORDER):
        total_pages = int(total_pages)
        if total_pages < 1:
            raise ValueError(f"total_pages must be >= 1, got {total_pages}")
        if not 0 <= pageblock_order <= max_order:
            raise ValueError(f"need 0 <= pageblock_order ({pageblock_order}) <= "
                             f"max_order ({max_order})")
        kmax = min(kernel_max_order, max_order)
        if kmax < pageblock_order:
            raise ValueError(f"kernel_max_order ({kernel_max_order}) must be >= "
                             f"pageblock_order ({pageblock_order})")
        self.total_pages = total_pages
        self.max_order = max_order
        self.pageblock_order = pageblock_order
        self.kernel_max_order = kmax
        self.free_pages = 0
        self._pbsize = 1 << pageblock_order
        npb = (total_pages + self._pbsize - 1) >> pageblock_order
        self._state = PageStates(total_pages, _FREE)            # all _FREE
        self._labels = bytearray([MOVABLE]) * npb
        # label patterns for _relabel's slice assignment without allocating per call: as
        # long as the largest block has pageblocks
        longest = 1 << max(0, max_order - pageblock_order)
        self._fill = [memoryview(bytes([v]) * longest) for v in (UNMOVABLE, MOVABLE)]
        # free lists: dicts used as ordered sets, the last key is the list head
        self._lists = [[{} for _ in range(kmax + 1)] for _ in (UNMOVABLE, MOVABLE)]
        self._big = [{} for _ in range(max_order + 1)]          # orders > kmax only
        # big blocks holding at least one pageblock labelled t, per order
        self._big_with = [[{} for _ in range(max_order + 1)] for _ in (UNMOVABLE, MOVABLE)]
        self._head = {}     # pfn of every free block -> (order << 2) | list kind
        self._nr = [0] * (max_order + 1)
        # boot memory: lowest address at the list heads (insert highest first)
        for pfn, order in reversed(list(aligned_blocks(0, total_pages, max_order))):
            self._add_free(pfn, order)
        self.free_pages = total_pages

    # ----------------------------------------------------------------- free lists
    def _add_free(self, pfn: int, order: int) -> None:
        """Put a free block (not merged) at the head of the list its labels select."""
        if order > self.kernel_max_order:
            self._big[order][pfn] = None
            pbo = self.pageblock_order
            a = pfn >> pbo
            b = a + (1 << (order - pbo))
            labels = self._labels
            if labels.find(UNMOVABLE, a, b) >= 0:
                self._big_with[UNMOVABLE][order][pfn] = None
            if labels.find(MOVABLE, a, b) >= 0:
                self._big_with[MOVABLE][order][pfn] = None
            self._head[pfn] = (order << 2) | _BIG
        else:
            t = self._labels[pfn >> self.pageblock_order]
            self._lists[t][order][pfn] = None
            self._head[pfn] = (order << 2) | t
        self._nr[order] += 1

    def _remove_free(self, pfn: int, code: int) -> None:
        order = code >> 2
        kind = code & 3
        if kind == _BIG:
            del self._big[order][pfn]
            self._big_with[UNMOVABLE][order].pop(pfn, None)
            self._big_with[MOVABLE][order].pop(pfn, None)
        else:
            del self._lists[kind][order][pfn]
        del self._head[pfn]
        self._nr[order] -= 1

    def _carve(self, block: int, block_order: int, want: int, want_order: int) -> None:
        """`block` was taken off the lists; return all of it except [want, want+2^want_order)
        to the lists, upper halves first, as expand() does."""
        kmax = self.kernel_max_order
        pbo = self.pageblock_order
        labels, lists, head, nr = self._labels, self._lists, self._head, self._nr
        for k in range(block_order - 1, want_order - 1, -1):
            p = (want & ~((1 << k) - 1)) ^ (1 << k)
            if k > kmax:
                self._add_free(p, k)
            else:                       # _add_free inlined: this is the hot path
                t = labels[p >> pbo]
                lists[t][k][p] = None
                head[p] = (k << 2) | t
                nr[k] += 1

    def _relabel(self, pfn: int, order: int, t: int) -> None:
        """Label the pageblocks of a block that is not on any list (allocated or taken)."""
        pbo = self.pageblock_order
        if order >= pbo:
            a = pfn >> pbo
            n = 1 << (order - pbo)
            self._labels[a:a + n] = self._fill[t][:n]

    def _set_pageblock_type(self, pb: int, t: int) -> None:
        """Relabel one pageblock that is not inside a larger free block, moving its free
        blocks to t's lists.  (The kernel moves them to the list tail; here they go to
        the head, lowest address first - a tail insert would cost O(list) on a dict.)"""
        self._labels[pb] = t
        s = pb << self.pageblock_order
        e = min(s + self._pbsize, self.total_pages)
        state, head, lists = self._state, self._head, self._lists
        moved = []
        p = state.find(_FREE, s, e)
        while p >= 0:
            code = head[p]
            if code & 3 != t:
                del lists[code & 3][code >> 2][p]
                moved.append((p, code >> 2))
            p = state.find(_FREE, p + (1 << (code >> 2)), e)
        lists_t = lists[t]
        for p, order in reversed(moved):
            lists_t[order][p] = None
            head[p] = (order << 2) | t

    # ----------------------------------------------------------------- allocation
    def _pop_smallest(self, lists: list, order: int) -> tuple[int, int] | None:
        """Take the head block of the smallest non-empty list of `lists` (one migratetype's
        free lists) at orders order..kernel_max_order off it: (pfn, its order), or None."""
        for o in range(order, self.kernel_max_order + 1):
            d = lists[o]
            if d:
                pfn = d.popitem()[0]
                del self._head[pfn]
                self._nr[o] -= 1
                return pfn, o
        return None

    def alloc(self, order: int, movable: bool = False) -> int:
        """One block of 2^order pages; returns its first pfn (aligned to 2^order)."""
        if not 0 <= order <= self.max_order:
            raise ValueError(f"order {order} outside 0..{self.max_order}")
        t = MOVABLE if movable else UNMOVABLE
        if order > self.kernel_max_order:
            return self._alloc_big(order, t)
        pfn, o = self._pop_smallest(self._lists[t], order) or self._take_slow(order, t)
        if o > order:
            self._carve(pfn, o, pfn, order)
        self._state.set(pfn, pfn + (1 << order), t + 1)
        self.free_pages -= 1 << order
        return pfn

    def alloc_pages(self, n: int, movable: bool = False) -> list[tuple[int, int]]:
        """n order-0 pages, as n successive order-0 allocations would take them, returned as
        runs (pfn, npages).  Successive order-0 allocations empty the smallest block, then
        split the next one and walk through it from its low end, so a block is handed out
        whole or, for the last one, its first pages (the rest stays free as aligned blocks).
        Cost is O(runs) Python steps, except that pages stolen from the other migratetype
        without claiming their pageblock (heavily fragmented memory) go one at a time.
        Raises OutOfMemory, allocating nothing, if fewer than n pages are free.
        """
        n = int(n)
        if n < 0:
            raise ValueError(f"negative page count {n}")
        if n == 0:
            return []
        if n > self.free_pages:
            raise OutOfMemory(f"{n} pages requested, {self.free_pages} free")
        t = MOVABLE if movable else UNMOVABLE
        v = t + 1
        state = self._state
        lists_t = self._lists[t]
        runs = []
        rem = n
        last_end = -1
        lowest = 0          # own lists below this order are empty (until a fallback)
        while rem:
            got = self._pop_smallest(lists_t, lowest)
            if got:
                pfn, o = got
                lowest = o
            else:
                lowest = 0      # a claim may have moved blocks of any order to our lists
                pfn, o = self._take_slow(0, t)
                if o and self._labels[pfn >> self.pageblock_order] != t:
                    # stolen, not claimed: the next order-0 request runs the fallback
                    # again (and may claim the pageblock now), so take one page only
                    self._carve(pfn, o, pfn, 0)
                    o = 0
            size = 1 << o
            if size > rem:
                for p, k in aligned_blocks(pfn + rem, size - rem, self.max_order):
                    self._add_free(p, k)
                size = rem
            state.set(pfn, pfn + size, v)
            rem -= size
            if pfn == last_end:
                runs[-1] = (runs[-1][0], runs[-1][1] + size)
            else:
                runs.append((pfn, size))
            last_end = pfn + size
        self.free_pages -= n
        return runs

    def _take_slow(self, order: int, t: int) -> tuple[int, int]:
        """Own lists are empty at orders order..kernel_max_order: find a block (removed from
        the lists, labels already adjusted) of order >= `order` and <= kernel_max_order."""
        kmax = self.kernel_max_order
        pbo = self.pageblock_order
        # a 4M chunk of our own label inside a large free run (kernel: our order-10 list)
        big_t = self._big_with[t]
        for o in range(kmax + 1, self.max_order + 1):
            d = big_t[o]
            if d:
                block = next(reversed(d))
                self._remove_free(block, self._head[block])
                a = block >> pbo
                pb = self._labels.find(t, a, a + (1 << (o - pbo)))
                chunk = (pb << pbo) & ~((1 << kmax) - 1)
                self._carve(block, o, chunk, kmax)
                return chunk, kmax
        u = 1 - t
        lists_u = self._lists[u]
        state = self._state
        # claim (__rmqueue_claim): largest other-type block first
        for co in range(kmax, order - 1, -1):
            if t == MOVABLE and co < pbo // 2:
                break                     # should_try_claim_block: steal instead
            d = lists_u[co]
            if co >= pbo:
                if d:
                    pfn = d.popitem()[0]
                    del self._head[pfn]
                    self._nr[co] -= 1
                elif co == kmax:
                    pfn = self._take_big_chunk()
                    if pfn is None:
                        continue
                else:
                    continue
                self._relabel(pfn, co, t)
                return pfn, co
            if not d:
                continue
            pfn = next(reversed(d))
            s = (pfn >> pbo) << pbo
            e = s + self._pbsize
            if e > self.total_pages:
                continue                  # partial pageblock: the kernel will not move it
            nfree = state.count_in(s, e, _FREE)
            nmovable = state.count_in(s, e, _USED_MOVABLE)
            alike = nmovable if t == MOVABLE else self._pbsize - nfree - nmovable
            if nfree + alike >= self._pbsize >> 1:
                self._set_pageblock_type(pfn >> pbo, t)
                got = self._pop_smallest(self._lists[t], order)
                if got is None:
                    raise AssertionError("claimed pageblock yielded no block")  # pragma: no cover
                return got
        # steal (__rmqueue_steal): smallest other-type block, labels unchanged
        got = self._pop_smallest(lists_u, order)
        if got is None:
            raise OutOfMemory(f"no free block of order >= {order}")
        return got

    def _take_big_chunk(self) -> int | None:
        """The lowest kernel_max_order chunk of the smallest free run above it, or None."""
        kmax = self.kernel_max_order
        for o in range(kmax + 1, self.max_order + 1):
            d = self._big[o]
            if d:
                block = next(reversed(d))
                self._remove_free(block, self._head[block])
                self._carve(block, o, block, kmax)
                return block
        return None

    def _alloc_big(self, order: int, t: int) -> int:
        for o in range(order, self.max_order + 1):
            d = self._big[o]
            if d:
                block = next(reversed(d))
                self._remove_free(block, self._head[block])
                self._carve(block, o, block, order)
                self._relabel(block, order, t)
                size = 1 << order
                self._state.set(block, block + size, t + 1)
                self.free_pages -= size
                return block
        raise OutOfMemory(f"no free block of order >= {order}")

    # ----------------------------------------------------------------- freeing
    def _check_allocated(self, pfn: int, npages: int) -> None:
        if pfn < 0 or npages < 1 or pfn + npages > self.total_pages:
            raise BadFree(f"range [{pfn}, {pfn + npages}) outside 0..{self.total_pages}")
        p = self._state.find(_FREE, pfn, pfn + npages)
        if p >= 0:
            raise BadFree(f"page {p} in [{pfn}, {pfn + npages}) is already free")

    def free(self, pfn: int, order: int) -> None:
        """Free the block [pfn, pfn + 2^order), merging it with free buddies."""
        pfn = int(pfn)
        order = int(order)
        if not 0 <= order <= self.max_order:
            raise BadFree(f"order {order} outside 0..{self.max_order}")
        if pfn & ((1 << order) - 1):
            raise BadFree(f"pfn {pfn} not aligned to order {order}")
        size = 1 << order
        self._check_allocated(pfn, size)
        self._state.set(pfn, pfn + size, _FREE)
        self.free_pages += size
        self._free_block(pfn, order)

    def free_range(self, pfn: int, npages: int) -> None:
        """Free an arbitrary run of allocated pages (e.g. part of a split huge folio):
        as its maximal aligned blocks, each merged with free buddies."""
        pfn = int(pfn)
        npages = int(npages)
        self._check_allocated(pfn, npages)
        self._state.set(pfn, pfn + npages, _FREE)
        self.free_pages += npages
        for p, order in aligned_blocks(pfn, npages, self.max_order):
            self._free_block(p, order)

    def _free_block(self, pfn: int, order: int) -> None:
        pbo = self.pageblock_order
        kmax = self.kernel_max_order
        if order > pbo:
            self._make_chunks_uniform(pfn, order)
        labels = self._labels
        t = labels[pfn >> pbo]
        head, lists, nr = self._head, self._lists, self._nr
        max_order = self.max_order
        while order < max_order:
            buddy = pfn ^ (1 << order)
            code = head.get(buddy)
            if code is None or code >> 2 != order:
                break
            kind = code & 3
            if kind == _BIG:
                self._remove_free(buddy, code)
            else:
                if kind != t and pbo <= order < kmax:
                    self._relabel(buddy, order, t)     # the kernel's "match buddy type"
                del lists[kind][order][buddy]     # _remove_free inlined (hot path)
                del head[buddy]
                nr[order] -= 1
            pfn &= buddy
            order += 1
        if order > kmax:
            self._add_free(pfn, order)
        else:       # _add_free inlined; the merged block has the freed block's label t
            lists[t][order][pfn] = None
            head[pfn] = (order << 2) | t
            nr[order] += 1

    def _make_chunks_uniform(self, pfn: int, order: int) -> None:
        """A freed block spanning several pageblocks: give each kernel_max_order chunk of
        it one label (its last pageblock's), so merged blocks keep uniform labels."""
        pbo = self.pageblock_order
        a = pfn >> pbo
        b = a + (1 << (order - pbo))
        labels = self._labels
        if labels.count(labels[a], a, b) == b - a:
            return
        per_chunk = 1 << (min(order, self.kernel_max_order) - pbo)
        view = np.frombuffer(labels, dtype=np.uint8)[a:b].reshape(-1, per_chunk)
        mixed = view.min(axis=1) != view.max(axis=1)
        view[mixed] = view[mixed, -1:]
        del view

    # ----------------------------------------------------------------- aging
    def prefragment(self, rng: np.random.Generator, fraction: float) -> int:
        """Model an aged host: pin one unmovable 4K page at a random place inside a random
        `fraction` of the (full) pageblocks.  The pageblock is labelled UNMOVABLE (it
        holds an unmovable page) and its other free pages move to the unmovable lists.
        A chosen page that is in use is replaced by the pageblock's first free page; a
        pageblock with no free page is skipped.  Returns the number of pages pinned."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction {fraction} outside [0, 1]")
        pbo = self.pageblock_order
        full_blocks = self.total_pages >> pbo
        k = int(round(fraction * full_blocks))
        if k == 0:
            return 0
        chosen = np.sort(rng.choice(full_blocks, size=k, replace=False))
        offsets = rng.integers(0, self._pbsize, size=k)
        state, head = self._state, self._head
        pinned = 0
        for pb, off in zip(chosen.tolist(), offsets.tolist()):
            s = pb << pbo
            p = s + off
            if state.get(p) != _FREE:
                p = state.find(_FREE, s, s + self._pbsize)
                if p < 0:
                    continue
            for o in range(self.max_order + 1):
                block = p & ~((1 << o) - 1)
                code = head.get(block)
                if code is not None and p < block + (1 << (code >> 2)):
                    break
            else:  # pragma: no cover - a free page always lies in a free block
                raise AssertionError(f"free page {p} in no free block")
            self._remove_free(block, code)
            self._carve(block, code >> 2, p, 0)
            state.set(p, p + 1, _USED_UNMOVABLE)
            self.free_pages -= 1
            self._set_pageblock_type(pb, UNMOVABLE)
            pinned += 1
        return pinned

    # ----------------------------------------------------------------- reporting
    def nr_free(self) -> list[int]:
        """Free blocks per order 0..max_order, as /proc/buddyinfo lists them."""
        return list(self._nr)

    def allocatable_huge(self, also_free=()) -> dict[str, int]:
        """After a run: how many 2M / 1G aligned ranges of memory hold no unmovable page
        in use, i.e. could become a huge page by migrating the movable pages out
        (alloc_contig_range / the hugetlb pool growing).  `also_free` lists (pfn, order)
        blocks that count as free although allocated (a hugetlb pool's free pages)."""
        n2 = self.total_pages >> 9
        blocked = np.zeros(n2, bool)        # 2M ranges holding an unmovable page in use
        for s, e, v in self._state.segments():
            if v == _USED_UNMOVABLE:
                blocked[s >> 9:min(((e - 1) >> 9) + 1, n2)] = True
        for pfn, o in also_free:
            blocked[pfn >> 9:(pfn + (1 << o)) >> 9] = False
        n1 = self.total_pages >> 18
        return {"2m": int(n2 - np.count_nonzero(blocked)),
                "1g": int(n1 - np.count_nonzero(blocked[:n1 << 9].reshape(n1, 512).any(axis=1)))}

    def pageblock_counts(self) -> dict[str, int]:
        return {"unmovable": self._labels.count(UNMOVABLE),
                "movable": self._labels.count(MOVABLE)}

    def free_blocks(self) -> list[tuple[int, int]]:
        """All free blocks as (pfn, order), by address (for tests and debugging)."""
        return sorted((pfn, code >> 2) for pfn, code in self._head.items())

    def check(self) -> None:
        """Full consistency check (slow; for tests).  Raises AssertionError."""
        pbo, kmax = self.pageblock_order, self.kernel_max_order
        labels = self._labels
        listed = {}
        for t in (UNMOVABLE, MOVABLE):
            for order, d in enumerate(self._lists[t]):
                for pfn in d:
                    assert pfn not in listed, f"block {pfn} on two lists"
                    listed[pfn] = (order << 2) | t
        for order, d in enumerate(self._big):
            for pfn in d:
                assert order > kmax, f"block {pfn} of order {order} on a large-run list"
                assert pfn not in listed, f"block {pfn} on two lists"
                listed[pfn] = (order << 2) | _BIG
        assert listed == self._head, "free lists and the block index disagree"
        free_map = np.zeros(self.total_pages, dtype=bool)
        nr = [0] * (self.max_order + 1)
        total = 0
        for pfn, code in self._head.items():
            order, kind = code >> 2, code & 3
            size = 1 << order
            assert pfn & (size - 1) == 0, f"block {pfn} not aligned to order {order}"
            assert 0 <= pfn and pfn + size <= self.total_pages, f"block {pfn} out of range"
            assert not free_map[pfn:pfn + size].any(), f"block {pfn} overlaps another"
            free_map[pfn:pfn + size] = True
            nr[order] += 1
            total += size
            a = pfn >> pbo
            b = a + max(1, 1 << max(order - pbo, 0))
            if kind == _BIG:
                for t in (UNMOVABLE, MOVABLE):
                    has = labels.find(t, a, b) >= 0
                    assert has == (pfn in self._big_with[t][order]), \
                        f"large run {pfn}: label index wrong for type {t}"
                chunks = np.frombuffer(labels, dtype=np.uint8)[a:b].reshape(
                    -1, 1 << (kmax - pbo))
                assert (chunks.min(axis=1) == chunks.max(axis=1)).all(), \
                    f"large run {pfn}: a {kmax}-order chunk has mixed labels"
            else:
                assert labels.count(kind, a, b) == b - a, \
                    f"block {pfn} order {order} on list {kind} but labels differ"
            buddy = pfn ^ size
            if order < self.max_order:
                bcode = self._head.get(buddy)
                assert bcode is None or bcode >> 2 != order, \
                    f"free buddies {pfn} and {buddy} of order {order} not merged"
        for t in (UNMOVABLE, MOVABLE):
            for order, d in enumerate(self._big_with[t]):
                for pfn in d:
                    assert pfn in self._big[order], f"stale large-run index entry {pfn}"
        state = self._state[:]
        assert ((state >= _FREE) & (state <= _USED_MOVABLE)).all(), "bad page state"
        assert np.array_equal(free_map, state == _FREE), "free pages and free lists disagree"
        assert nr == self._nr, f"nr_free {self._nr} != counted {nr}"
        assert total == self.free_pages, f"free_pages {self.free_pages} != counted {total}"
        assert set(labels) <= {UNMOVABLE, MOVABLE}, "bad pageblock label"
