"""The kernel objects the simulator models (docs/model.md: what each stands for) and the
costs of bench/costs.py they charge.

Host       physical memory (buddy allocator) and what is held for the guest
Ledger     the cost model's charges: per primitive totals and the current step's sum
VM         KVM_SET_MEMORY_ATTRIBUTES (dual backing's per-VM attributes), stage-2 zaps
GuestMemfd a guest_memfd file: attributes as merged ranges (v8), folios of a given order,
           host mappings per process, stage-2 mappings, pins, KVM_SET_MEMORY_ATTRIBUTES2,
           fallocate(PUNCH_HOLE), faults and SIGBUS on host access to private pages
SharedBacking  dual backing's shared memory: anon or memfd, 4K pages, THP or hugetlb

Page state is kept in numpy arrays indexed by 4K page (allocated lazily by calloc, so
untouched parts of a 128 GiB guest cost no memory); every operation works on whole
ranges with vectorised calls, never a Python loop per 4K page.
"""
import errno
from collections import deque

import numpy as np

from bench.ops import KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE, NO_CHECK, PAGE_SIZE
from bench.sim.buddy import BuddyAllocator, OutOfMemory
from bench.sim.ranges import AttrRanges, PfnMap, Runs, complement

SHARED = 0
GUEST_MEMFD_FLAG_MMAP = 1 << 0
GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1
VM_TYPE_DEFAULT, VM_TYPE_SW_PROTECTED, VM_TYPE_SEV, VM_TYPE_SEV_ES, VM_TYPE_SNP, VM_TYPE_TDX = range(6)
PLATFORM_VM_TYPE = {"preserve": VM_TYPE_SW_PROTECTED, "zero": VM_TYPE_TDX, "destroy": VM_TYPE_SNP}
GARBAGE = 0xDEADBEEF          # what SNP ciphertext reads as from the host
SIGBUS = "SIGBUS"             # access() outcome: the host access faulted
LRU_BATCH = 31                # folios a per-CPU folio_batch holds (PAGEVEC_SIZE; extra ref each)
# cost-key suffix of each platform (a VM type): SW_PROTECTED/pKVM, TDX, SNP
PLATFORM_KEY = {"preserve": "sw", "zero": "tdx", "destroy": "snp"}
VM_TYPE_KEY = {VM_TYPE_DEFAULT: "sw", VM_TYPE_SW_PROTECTED: "sw", VM_TYPE_TDX: "tdx",
               VM_TYPE_SNP: "snp", VM_TYPE_SEV: "snp", VM_TYPE_SEV_ES: "snp"}

ABSENT, INTACT, SPLIT, DEFERRED = 0, 1, 2, 3   # state of a huge folio / huge shared chunk
# a guest_memfd huge folio that SPLIT holds as 4K folios of its own hugetlb page, versus
# FALLBACK: no huge page was free at fault time, its pages are 4K pages from the buddy allocator
FALLBACK = 4
U64 = (1 << 64) - 1


class Ledger:
    """Charges of the cost model.  `step_ns` is the running sum of the current step."""

    def __init__(self, profile):
        self.linear = profile.linear
        self.totals: dict[str, list] = {}
        self.step_ns = 0.0
        self.clock_ns = 0.0

    def op(self, key: str, pages: int = 1) -> None:
        """One operation of `key` over `pages` 4K pages."""
        fixed, per_page = self.linear[key]
        ns = fixed + per_page * pages
        self._add(key, 1, ns)

    def op_beyond(self, key: str, base: str, pages: int) -> None:
        """What one operation of `key` over `pages` costs beyond `base` over as many pages
        (the part of a measured figure that another charge has not already covered)."""
        fk, pk = self.linear[key]
        fb, pb = self.linear[base]
        self._add(key, 1, max(0.0, (fk - fb) + (pk - pb) * pages))

    def each(self, key: str, n: int) -> None:
        """n events of a per-event cost."""
        if n:
            self._add(key, n, self.linear[key][0] * n)

    def _add(self, key, n, ns):
        t = self.totals.get(key)
        if t is None:
            self.totals[key] = [n, ns]
        else:
            t[0] += n
            t[1] += ns
        self.step_ns += ns
        self.clock_ns += ns


class Host:
    """Host physical memory and what it holds for the guest."""

    def __init__(self, total_pages: int, ledger: Ledger, rng=None, prefragment: float = 0.0):
        self.buddy = BuddyAllocator(total_pages)
        self.ledger = ledger
        self.pinned_by_aging = self.buddy.prefragment(rng, prefragment) if prefragment else 0
        self.footprint_pages = 0      # pages held for the guest, all objects
        self.huge_pages = 0           # guest pages backed by intact huge folios
        self.huge_splits = 0
        self.huge_merges = 0
        self.huge_fallbacks = 0       # huge faults that fell back to 4K pages
        # snapshot counters (cumulative): a huge mapping (stage-2 leaf or a process's host
        # PMD) split into 4K ones; a huge folio split into 4K folios; 4K folios merged back
        self.mapping_demotions = 0
        self.folio_splits = 0
        self.folio_merges = 0
        self.private_host_touch_pages = 0   # dual: host touches of private GPAs (zero pages)
        # snapshot statistics, kept up to date where folios and mappings change (the
        # recount methods of GuestMemfd / SharedBacking compute the same by a full scan):
        # 4K pages mapped at 4K in stage 2; bytes mapped by huge stage-2 leaves; bytes some
        # host process maps with one PMD/PUD; intact huge folios (gmem and shared backing);
        # shared-backing pages held at VM-private GPAs
        self.st_s2_4k_pages = 0
        self.st_s2_huge_bytes = {"2m": 0, "1g": 0}
        self.st_host_huge_bytes = 0
        self.st_intact_folios = 0
        self.st_stale_pages = 0
        self.shrinkers = []           # callables freeing memory under pressure (deferred split)
        # hugetlb pages that huge guest_memfd folios returned (free_huge_folio enqueues them
        # on the hstate's free list): reused by the next huge fault, never given back to the
        # buddy allocator, still held for the guest (counted in footprint_pages)
        self.hugetlb_pool: dict[int, list[int]] = {9: [], 18: []}

    def alloc_huge(self, order: int, movable: bool) -> int | None:
        try:
            return self.buddy.alloc(order, movable)
        except OutOfMemory:
            if self._shrink():
                try:
                    return self.buddy.alloc(order, movable)
                except OutOfMemory:
                    pass
            self.huge_fallbacks += 1
            return None

    def alloc_hugetlb(self, order: int) -> tuple[int | None, bool]:
        """A huge guest_memfd folio (alloc_hugetlb_folio): a free page of the pool, else a
        new one from the buddy allocator.  Returns (pfn or None, taken from the pool)."""
        pool = self.hugetlb_pool[order]
        if pool:
            return pool.pop(), True
        return self.alloc_huge(order, movable=False), False

    def free_hugetlb(self, pfn: int, order: int) -> None:
        self.hugetlb_pool[order].append(pfn)

    def pool_blocks(self) -> list[tuple[int, int]]:
        return [(p, o) for o, pool in self.hugetlb_pool.items() for p in pool]

    def alloc_pages(self, n: int, movable: bool) -> list[tuple[int, int]]:
        """n order-0 pages as (pfn, npages) runs in the order taken.  Raises OutOfMemory."""
        try:
            return self.buddy.alloc_pages(n, movable)
        except OutOfMemory:
            if not self._shrink():
                raise
            return self.buddy.alloc_pages(n, movable)

    def free_runs(self, runs) -> None:
        """Free held pages given as (pfn, npages) runs: by address, as maximal contiguous
        runs."""
        runs = sorted(runs)
        i = 0
        while i < len(runs):
            p, k = runs[i]
            i += 1
            while i < len(runs) and runs[i][0] == p + k:
                k += runs[i][1]
                i += 1
            self.buddy.free_range(p, k)

    def _shrink(self) -> bool:
        return any([s() for s in self.shrinkers])


class VM:
    """A KVM VM: type, vCPUs, the per-VM attribute store of KVM_SET_MEMORY_ATTRIBUTES,
    and the per-conversion path every strategy pays (request exit, VMM dispatch, flushes)."""

    def __init__(self, vm_type: int, ledger: Ledger, in_place: bool, vcpus: int = 1):
        self.vm_type = vm_type
        self.ledger = ledger
        self.in_place = in_place       # kvm.gmem_in_place_conversion (v8 module parameter)
        self.vcpus = vcpus
        self.plat = VM_TYPE_KEY[vm_type]
        self.slot_attrs: list[AttrRanges] = []
        self.slot_gmem: list["GuestMemfd"] = []
        self.slot_shared: dict[int, "SharedBacking"] = {}    # dual: the slot's shared memory

    def conversion_request(self, pages: int, continues: bool = False) -> None:
        """What one guest conversion request costs before the VMM's ioctl, in both
        strategies: the guest's exit (TDX TDG.VP.VMCALL<MapGPA> / SNP page-state-change
        VMGEXIT / KVM_HC_MAP_GPA_RANGE or an implicit memory fault), KVM's exit to userspace
        (KVM_EXIT_HYPERCALL / KVM_EXIT_MEMORY_FAULT) and re-entry, QEMU's dispatch in
        kvm_convert_memory() under the BQL; and the guest's own per-page step where the
        platform has one at request time (SNP PVALIDATE; pKVM share/unshare).  `continues`:
        a further chunk of the same guest request (TDX: tdx_complete_vmcall_map_gpa hands
        the next 2 MiB to userspace without re-entering the TD), so no new guest exit."""
        led = self.ledger
        if not continues:
            led.op(f"exit_request_{self.plat}")
        led.op("exit_to_userspace")
        led.op("vmm_dispatch")
        if self.plat == "snp":
            led.each("guest_pvalidate_snp", pages)
        elif self.plat == "sw":
            led.each("hyp_share_sw", pages)

    def kick_vcpus(self, n: int = 1) -> None:
        """n kicks of the VM's vCPUs (kvm_make_vcpus_request_mask -> kvm_kick_many_cpus):
        each one multicast IPI with wait (smp_call_function_many) to the vCPUs in guest
        mode - a fixed part plus a small part per vCPU (all counted as running)."""
        self.ledger.each("vcpu_kick", n)
        self.ledger.each("vcpu_kick_per_vcpu", n * self.vcpus)

    def flush_tlbs(self) -> None:
        """kvm_flush_remote_tlbs() after a zap: a request plus one multicast kick."""
        self.ledger.op("tlb_flush")
        self.kick_vcpus()

    def tdx_track(self) -> None:
        """tdx_track(): TDH.MEM.TRACK and one multicast kick of the vCPUs out of the TD."""
        self.ledger.op("tdx_track")
        self.kick_vcpus()

    @property
    def has_private_mem(self) -> bool:
        return self.vm_type != VM_TYPE_DEFAULT

    def supported_attributes(self) -> int:
        # With in-place conversion on, PRIVATE is tracked by guest_memfd, not the VM.
        return PRIVATE if self.has_private_mem and not self.in_place else 0

    def add_slot(self, gmem: "GuestMemfd", initial: int) -> None:
        self.slot_attrs.append(AttrRanges(gmem.npages, initial))
        self.slot_gmem.append(gmem)

    def attach_shared(self, slot: int, shared: "SharedBacking") -> None:
        """Dual backing: the slot's shared memory, told before its attributes change."""
        self.slot_shared[slot] = shared

    def set_memory_attributes(self, slot: int, offset: int, size: int, attributes: int,
                              flags: int = 0) -> int:
        """KVM_SET_MEMORY_ATTRIBUTES on the VM fd: errno or 0.  No pin check, no error_offset."""
        self.ledger.op("ioctl_entry")
        if not self.supported_attributes():
            return errno.ENOTTY if not self.has_private_mem else errno.EINVAL
        if flags or attributes & ~self.supported_attributes():
            return errno.EINVAL
        if size == 0 or offset + size > U64 or (offset | size) & (PAGE_SIZE - 1):
            return errno.EINVAL
        attrs = self.slot_attrs[slot]
        gmem = self.slot_gmem[slot]
        p0, p1 = offset >> 12, min((offset + size) >> 12, attrs.npages)
        if p0 >= p1 or attrs.is_uniform(p0, p1, attributes):
            return 0
        gmem.zap_stage2(p0, p1, private_leaves=not attributes & PRIVATE)
        sh = self.slot_shared.get(slot)
        if sh is not None:
            sh.attrs_changing(p0, p1, attributes)
        attrs.set(p0, p1, attributes)
        # kvm_vm_set_mem_attributes(): xa_reserve + xa_store per 4K page under slots_lock
        self.ledger.each("vm_attr_xa_store", p1 - p0)
        return 0


class GuestMemfd:
    """One guest_memfd file."""

    def __init__(self, host: Host, vm: VM, size: int, flags: int, folio_order: int,
                 platform: str, promote: bool = True, huge: str = "split",
                 tdx_private_2m: bool = False):
        self.host, self.vm, self.ledger = host, vm, host.ledger
        self.size = size
        self.flags = flags
        self.npages = size >> 12
        self.order = folio_order
        self.fpages = 1 << folio_order
        self.platform = platform
        self.promote = promote           # map huge again once a folio is uniform
        # TDX private leaves: 4K only upstream (tdx_sept_set_private_spte rejects other
        # levels); the TDX huge-page series maps 2M where the guest accepts a whole 2M folio
        self.tdx_private_2m = tdx_private_2m and folio_order == 9
        # in-place with huge folios, as the HugeTLB guest_memfd series does it: a folio with
        # any shared page is split into 4K folios, merged back once all private ("split");
        # or only its mappings are demoted, the folio stays whole ("demote")
        self.split_on_share = huge == "split" and vm.in_place and folio_order > 0
        initial = SHARED if flags & GUEST_MEMFD_FLAG_INIT_SHARED else PRIVATE
        self.attrs = AttrRanges(self.npages, initial)
        self.attr_view = self.attrs      # dual backing: the VM's attributes decide instead
        self.page_pfn = PfnMap(self.npages)    # pfns of 4K folios / split parts, as runs
        self.host_map = Runs(self.npages)     # bit per host process (PTE level), as runs
        self.s2_map = Runs(self.npages)       # guest stage-2, 4K leaves (1), as runs
        self.data = Runs(self.npages)                      # a content token per page, as runs
        self.pins = Runs(self.npages)                      # extra references (GUP pins)
        # the platform's private state is set up (SNP: RMP entry private, TDX: page added to
        # the S-EPT and accepted); done at the guest's fault, undone where the kernel does it
        self.prepared = Runs(self.npages)                  # 1 = prepared, as runs
        self.lru = deque(maxlen=LRU_BATCH)                 # folios with an lru_add reference
        self.present = 0
        if folio_order:
            n = self.npages >> folio_order
            self.folio_state = np.zeros(n, np.uint8)
            self.folio_pfn = np.zeros(n, np.int64)
            self.host_pmd = np.zeros(n, np.uint8)        # bit per process mapping it huge
            self.s2_huge = np.zeros(n, np.uint8)
            self.demoted = np.zeros(n, bool)             # a huge mapping was split

    # ---- snapshot counters: folio states and huge mappings change only through these ----
    def _set_folio_state(self, f: int, st: int) -> None:
        self.host.st_intact_folios += int(st == INTACT) - int(self.folio_state[f] == INTACT)
        self.folio_state[f] = st

    def _huge_bytes_key(self) -> str:
        return "2m" if self.order == 9 else "1g"

    def set_s2_4k(self, a: int, b: int) -> None:
        """Map [a, b) at 4K in stage 2."""
        self.host.st_s2_4k_pages += sum(e - s for s, e in self.s2_map.or_bits(a, b, 1))

    # ---- allocation -------------------------------------------------------------------
    def _alloc_4k(self, holes: list[tuple[int, int]]) -> int:
        """Fault in order-0 folios for the absent pages `holes` ((start, end) runs)."""
        n = sum(e - s for s, e in holes)
        fill(self.page_pfn, holes, self.host.alloc_pages(n, movable=False))   # unmovable
        self.present += n
        self.host.footprint_pages += n
        self.ledger.op("fault_gmem", n)
        # order-0 folios enter the per-CPU LRU batch (folio_may_be_lru_cached)
        self.lru.extend(last_pages(holes, LRU_BATCH) >> self.order)
        return n

    def populate(self, p0: int, p1: int) -> int:
        """Allocate what is absent in [p0, p1): returns pages faulted in."""
        if not self.order:
            holes = self.page_pfn.holes(p0, p1)
            return self._alloc_4k(holes) if holes else 0
        fp, o = self.fpages, self.order
        f0, f1 = p0 >> o, ((p1 - 1) >> o) + 1
        st = self.folio_state[f0:f1]
        if (st == INTACT).all():
            return 0
        faulted = 0
        for k in np.flatnonzero(st != INTACT):
            f = f0 + int(k)
            a, b = max(p0, f * fp), min(p1, (f + 1) * fp)
            if st[k] == ABSENT:
                pfn, pooled = self.host.alloc_hugetlb(o)
                if pfn is not None:
                    self._set_folio_state(f, INTACT)
                    self.folio_pfn[f] = pfn
                    self.present += fp
                    if not pooled:
                        self.host.footprint_pages += fp
                    self.host.huge_pages += fp
                    self.ledger.op("fault_gmem_2m" if o == 9 else "fault_1g")
                    # a large folio never enters the per-CPU LRU batch (folio_may_be_lru_cached)
                    faulted += fp
                    # kvm_gmem_get_folio -> kvm_gmem_try_split_folio_in_filemap: a new folio
                    # over a range with a shared page is split at once
                    if self.split_on_share and not self.attrs.is_uniform(f * fp, (f + 1) * fp,
                                                                          PRIVATE):
                        self._split_folio(f)
                    continue
                self._set_folio_state(f, FALLBACK)   # no aligned block free: 4K folios
            holes = self.page_pfn.holes(a, b)
            if holes:
                faulted += self._alloc_4k(holes)
        return faulted

    def present_runs(self, p0: int, p1: int) -> list[tuple[int, int]]:
        """Allocated pages of [p0, p1) as (start, end) runs, ascending."""
        runs = [(s, e) for s, e, _ in self.page_pfn.runs(p0, p1)]
        if self.order:
            o, fp = self.order, self.fpages
            for k in np.flatnonzero(self.folio_state[p0 >> o:((p1 - 1) >> o) + 1] == INTACT):
                f = (p0 >> o) + int(k)
                runs.append((max(p0, f * fp), min(p1, (f + 1) * fp)))
            runs.sort()
        return runs

    def count_present(self, p0: int, p1: int) -> int:
        return sum(e - s for s, e in self.present_runs(p0, p1))

    def absent_runs(self, p0: int, p1: int) -> list[tuple[int, int]]:
        return complement(self.present_runs(p0, p1), p0, p1)

    def _split_folio(self, f: int) -> None:
        """Split an intact huge folio into 4K folios of the same hugetlb page
        (kvm_gmem_split_folio_in_filemap -> the hugetlb allocator's split_folio, which first
        restores the vmemmap that HVO freed: hugetlb_vmemmap_restore_folio)."""
        fp = self.fpages
        base = int(self.folio_pfn[f])
        self.page_pfn.set(f * fp, (f + 1) * fp, base)
        self._set_folio_state(f, SPLIT)
        if not self.demoted[f]:      # a demoted mapping already counted this folio
            self.host.huge_splits += 1
        self.demoted[f] = True       # its mappings can only be 4K now
        self.host.huge_pages -= fp
        self.host.folio_splits += 1
        # O(pages): every 4K folio goes back into the page cache (__kvm_gmem_filemap_add_folio)
        self.ledger.op("folio_split", fp)
        self.ledger.op("hugetlb_vmemmap_restore", fp)

    def _merge_folio(self, f: int) -> None:
        """Merge a split folio's 4K folios back into its huge folio
        (kvm_gmem_merge_folio_in_filemap -> merge_folio, then HVO frees the vmemmap
        again: hugetlb_vmemmap_optimize_folio).  Mappings stay 4K until promoted."""
        fp = self.fpages
        self.page_pfn.clear(f * fp, (f + 1) * fp)
        self._set_folio_state(f, INTACT)
        self.host.huge_pages += fp
        self.host.folio_merges += 1
        # O(pages): every 4K folio leaves the page cache (filemap_remove_folio_for_restructuring)
        self.ledger.op("folio_merge", fp)
        self.ledger.op("hugetlb_vmemmap_optimize", fp)

    # ---- mappings ---------------------------------------------------------------------
    def _demote(self, f: int) -> None:
        if not self.demoted[f]:
            self.demoted[f] = True
            self.host.huge_splits += 1

    def zap_host(self, p0: int, p1: int, charge: bool = True) -> int:
        """Unmap [p0, p1) from every host process (unmap_mapping_range on the file's
        mapping reaches every process that maps it); returns PTEs + PMDs zapped."""
        n = self.host_map.popcount_sum(p0, p1)
        if n:
            self.host_map.set(p0, p1, 0)
            if charge:
                # the zap inside the ioctl: the measured MADV_DONTNEED figure less its
                # syscall entry, which ioctl_entry already charged
                self.ledger.op_beyond("host_zap_pte", "ioctl_entry", n)
        if self.order:
            o, fp = self.order, self.fpages
            f0 = p0 >> o
            pmd = self.host_pmd[f0:((p1 - 1) >> o) + 1]
            for k in np.flatnonzero(pmd):
                f = f0 + int(k)
                a, b = f * fp, (f + 1) * fp
                if a < p0 or b > p1:       # partial: the PMD is split into PTEs first
                    self.host_map.or_bits(a, p0, int(pmd[k]))
                    self.host_map.or_bits(p1, b, int(pmd[k]))
                    self._demote(f)
                    self.host.mapping_demotions += int(pmd[k]).bit_count()
                n += int(pmd[k]).bit_count()
                if charge:
                    for _ in range(int(pmd[k]).bit_count()):
                        self.ledger.op("host_zap_pmd")
                pmd[k] = 0
                self.host.st_host_huge_bytes -= fp * PAGE_SIZE
        return n

    def zap_stage2(self, p0: int, p1: int, private_leaves: bool = False) -> None:
        """Zap the guest's stage-2 leaves in [p0, p1) (the TDP MMU's zap, per leaf), then one
        remote TLB flush (kvm_flush_remote_tlbs) if anything was zapped.  private_leaves: the
        leaves map private memory (a to-shared conversion, a punch).  On TDX removing a
        private leaf is tdx_sept_remove_private_spte(): TDH.MEM.RANGE.BLOCK, tdx_track()
        (TDH.MEM.TRACK + a kick of every vCPU), TDH.MEM.PAGE.REMOVE, the page's write-back
        and clear - per leaf; splitting a huge private leaf first demotes it (block + track
        + kick + TDH.MEM.PAGE.DEMOTE)."""
        tdx = private_leaves and self.vm.plat == "tdx"
        n = self.s2_map.count_nonzero(p0, p1)
        leaves = n
        if n:
            self.s2_map.set(p0, p1, 0)
            self.host.st_s2_4k_pages -= n
            self.ledger.each("stage2_zap_4k", n)
            if tdx:
                self._tdx_remove(n, n)
        if self.order:
            o, fp = self.order, self.fpages
            f0 = p0 >> o
            huge = self.s2_huge[f0:((p1 - 1) >> o) + 1]
            for k in np.flatnonzero(huge):
                f = f0 + int(k)
                a, b = f * fp, (f + 1) * fp
                if a < p0 or b > p1:       # split the huge leaf, keep the rest mapped at 4K
                    self.set_s2_4k(a, p0)
                    self.set_s2_4k(p1, b)
                    self._demote(f)
                    self.host.mapping_demotions += 1
                    if tdx:
                        self.ledger.op("tdx_block")
                        self.vm.tdx_track()
                        self.ledger.op("tdx_demote")
                        inside = min(b, p1) - max(a, p0)
                        self._tdx_remove(inside, inside)
                elif tdx:
                    self._tdx_remove(1, fp)
                huge[k] = 0
                self.host.st_s2_huge_bytes[self._huge_bytes_key()] -= fp * PAGE_SIZE
                self.ledger.each("stage2_zap_huge", 1)
                leaves += 1
        if leaves:
            if tdx:
                self.prepared.set(p0, p1, 0)     # no longer in the S-EPT: re-added at fault
            self.vm.flush_tlbs()

    def _tdx_remove(self, leaves: int, pages: int) -> None:
        """tdx_sept_remove_private_spte() for `leaves` private leaves holding `pages` 4K pages."""
        led = self.ledger
        led.each("tdx_block", leaves)
        led.each("tdx_track", leaves)
        self.vm.kick_vcpus(leaves)
        led.each("fw_tdx_to_shared", pages)

    def _prepare(self, p0: int, p1: int) -> set:
        """The guest faults private pages in: the platform's step for each page not yet
        prepared (kvm_gmem_prepare_folio -> SNP sev_gmem_prepare, RMPUPDATE to private;
        TDX tdx_sept_set_private_spte, TDH.MEM.PAGE.AUG, and the guest's accept).  With the
        TDX huge-page series (tdx_private_2m), a whole intact 2M folio none of whose pages is
        accepted yet is added and accepted at 2M (one AUG + accept of 2M); returns those
        folios, the only private ones _map may map huge on TDX."""
        acc2m = set()
        if self.tdx_private_2m and self.vm.plat == "tdx":
            fp = self.fpages
            for f in range(-(-p0 // fp), p1 // fp):
                if self.folio_state[f] != INTACT or self.s2_huge[f]:
                    continue
                if self.demoted[f] and not self.promote:
                    continue
                if self.prepared.count_nonzero(f * fp, (f + 1) * fp):
                    continue
                self.prepared.set(f * fp, (f + 1) * fp, 1)
                self.ledger.op("fw_tdx_to_private_2m")
                acc2m.add(f)
        n = (p1 - p0) - self.prepared.count_nonzero(p0, p1)
        if n:
            self.prepared.set(p0, p1, 1)
            if self.vm.plat != "sw":
                self.ledger.each(f"fw_{self.vm.plat}_to_private", n)
        return acc2m

    def _map(self, p0: int, p1: int, guest: bool, proc: int, state: int,
             fresh: list[tuple[int, int]] | None = None, acc2m: set = frozenset()) -> None:
        """Map [p0, p1) for the host process `proc` or the guest: huge where the folio is
        intact and uniform (and, after a demotion, only if promotion is allowed).  TDX
        private memory: huge only for the folios the guest accepted at 2M (acc2m)."""
        tdx_private = guest and state == PRIVATE and self.vm.plat == "tdx"
        bit = 1 << proc
        if self.order:
            ptes, pmds = (self.s2_map, self.s2_huge) if guest else (self.host_map, self.host_pmd)
            o, fp = self.order, self.fpages
            f0, f1 = p0 >> o, ((p1 - 1) >> o) + 1
            st = self.folio_state[f0:f1]
            for k in np.flatnonzero(st == INTACT):
                f = f0 + int(k)
                if pmds[f] & bit:
                    continue
                if tdx_private and f not in acc2m:
                    continue
                if self.demoted[f] and not self.promote:
                    continue
                if not self.attr_view.is_uniform(f * fp, (f + 1) * fp, state):
                    continue
                if guest:
                    self.host.st_s2_huge_bytes[self._huge_bytes_key()] += fp * PAGE_SIZE
                elif not pmds[f]:
                    self.host.st_host_huge_bytes += fp * PAGE_SIZE
                pmds[f] |= bit
                cleared = ptes.clear_bits(f * fp, (f + 1) * fp, bit)
                if guest:
                    self.host.st_s2_4k_pages -= cleared
                if self.demoted[f]:
                    self.demoted[f] = False
                    self.host.huge_merges += 1
            # pages under a huge mapping need no PTE: map the rest, folio by folio
            ranges = [(max(p0, f * fp), min(p1, (f + 1) * fp)) for f in range(f0, f1)
                      if not pmds[f] & bit]
        else:
            ptes = self.s2_map if guest else self.host_map
            ranges = [(p0, p1)]
        new = [r for a, b in ranges for r in ptes.or_bits(a, b, bit)]
        n = sum(e - s for s, e in new)
        if n:
            if guest:
                self.host.st_s2_4k_pages += n
            else:
                # the first touch of a fresh page was its fault: only the others refault
                refaults = n if fresh is None else n - sum(overlap(fresh, s, e) for s, e in new)
                self.ledger.each("refault_gmem", refaults)

    # ---- the v8 guest_memfd ioctl ---------------------------------------------------------
    def set_memory_attributes2(self, offset: int, size: int, attributes: int, flags: int = 0,
                               reserved=(), copy_ok: bool = True) -> tuple[int, int | None]:
        """KVM_SET_MEMORY_ATTRIBUTES2: (0 or errno, error_offset or None)."""
        self.ledger.op("ioctl_entry")
        if not self.vm.in_place:
            return errno.ENOTTY, None
        if not copy_ok:
            return errno.EFAULT, None
        if flags:
            return errno.EINVAL, None
        if any(reserved):
            return errno.EINVAL, None
        if not self.vm.has_private_mem:
            return errno.EINVAL, None
        if attributes & ~PRIVATE:
            return errno.EINVAL, None
        if size == 0 or offset + size > U64:
            return errno.EINVAL, None
        if (offset | size) & (PAGE_SIZE - 1):
            return errno.EINVAL, None
        if offset >= self.size or offset + size > self.size:
            return errno.EINVAL, None
        p0, p1 = offset >> 12, (offset + size) >> 12
        if self.attrs.is_uniform(p0, p1, attributes):
            return 0, None                             # early return: no zap, no check
        if attributes & PRIVATE:
            self.zap_host(p0, p1)
            bad = self._first_elevated(p0, p1)
            if bad is not None:
                return errno.EAGAIN, max(offset, bad * PAGE_SIZE)
        self.zap_stage2(p0, p1, private_leaves=not attributes & PRIVATE)
        if not attributes & PRIVATE:
            self._arch_invalidate(p0, p1)
        self.attrs.set(p0, p1, attributes)
        self.ledger.op("attr_update")
        if self.split_on_share:
            self._restructure(p0, p1, split=not attributes & PRIVATE)
        return 0, None

    def _restructure(self, p0: int, p1: int, split: bool) -> None:
        """kvm_gmem_restructure_folios_in_range: to shared, split every huge folio the
        range touches; to private, merge each split folio whose whole range is private."""
        o, fp = self.order, self.fpages
        f0, f1 = p0 >> o, ((p1 - 1) >> o) + 1
        st = self.folio_state[f0:f1]
        for k in np.flatnonzero(st == (INTACT if split else SPLIT)):
            f = f0 + int(k)
            if split:
                self._split_folio(f)
            elif self.attrs.is_uniform(f * fp, (f + 1) * fp, PRIVATE):
                self._merge_folio(f)

    def _first_elevated(self, p0: int, p1: int) -> int | None:
        """First page of the first folio in range with references beyond its mappings,
        after one drain of the per-CPU LRU batches if that could be the cause."""
        o, fp = self.order, self.fpages
        f0, f1 = p0 >> o, ((p1 - 1) >> o) + 1
        if self.order:
            nfolios = int(np.count_nonzero(self.folio_state[f0:f1])) 
        else:
            nfolios = self.page_pfn.count(p0, p1)
        self.ledger.each("refcount_scan_folio", nfolios)
        in_lru = any(f0 <= f < f1 for f in self.lru)
        if in_lru:
            self.ledger.op("lru_drain")
            self.lru.clear()
        for s, _, v in self.pins.segments(f0 * fp, f1 * fp):   # a pin elevates its folio
            if v:
                return (s >> o) << o
        return None

    def _arch_invalidate(self, p0: int, p1: int) -> None:
        """Private -> shared: the platform's hook on the contents (TDX zeroes, SNP leaves
        ciphertext, SW_PROTECTED/pKVM keeps the data)."""
        if self.platform == "preserve":
            return
        # TDX cleared each page when it left the S-EPT (charged in zap_stage2)
        value = 0 if self.platform == "zero" else GARBAGE
        for s, e in self.present_runs(p0, p1):
            self.data.set(s, e, value)
        if self.platform != "zero":
            self._snp_make_shared(p0, p1)

    def _snp_make_shared(self, p0: int, p1: int) -> None:
        """SNP: kvm_arch_gmem_invalidate -> sev_gmem_invalidate, RMPUPDATE to shared and
        cache flush, for each prepared page (at in-place to-shared, and when a prepared page
        is freed: kvm_gmem_free_folio)."""
        n = self.prepared.count_nonzero(p0, p1)
        if n:
            self.prepared.set(p0, p1, 0)
            if self.vm.plat == "snp":
                self.ledger.each("fw_snp_to_shared", n)

    # ---- file operations ----------------------------------------------------------------
    def fallocate_punch_hole(self, offset: int, size: int) -> int:
        """fallocate(PUNCH_HOLE|KEEP_SIZE): frees folios, never changes attributes."""
        if size <= 0 or (offset | size) & (PAGE_SIZE - 1):
            return errno.EINVAL
        p0, p1 = offset >> 12, min(self.npages, (offset + size) >> 12)
        if p0 >= p1:
            return 0                                   # at or past the end: succeeds
        mapped = self.zap_host(p0, p1, charge=False) > 0
        self.zap_stage2(p0, p1, private_leaves=True)
        self._snp_make_shared(p0, p1)        # freeing a prepared folio (kvm_gmem_free_folio)
        freed = zeroed = pooled = 0
        if self.order:
            # kvm_gmem_truncate_inode_range: whole huge pages are truncated (a split one is
            # merged first, kvm_gmem_merge_truncate_indices) and go back to the hugetlb
            # pool; the part of a huge page the range covers only partly is zeroed in place
            # (kvm_gmem_zero_range), nothing is freed
            o, fp = self.order, self.fpages
            f0, f1 = p0 >> o, ((p1 - 1) >> o) + 1
            for k in np.flatnonzero(self.folio_state[f0:f1]):
                f = f0 + int(k)
                a, b = f * fp, (f + 1) * fp
                state = self.folio_state[f]
                if state == FALLBACK:
                    freed += self._free_4k(max(a, p0), min(b, p1))
                    if not self.page_pfn.count(a, b):
                        self._set_folio_state(f, ABSENT)
                elif p0 <= a and b <= p1:
                    if state == SPLIT:
                        self._merge_folio(f)
                    self.host.free_hugetlb(int(self.folio_pfn[f]), o)
                    self._set_folio_state(f, ABSENT)
                    self.demoted[f] = False
                    self.host.huge_pages -= fp
                    pooled += fp
                else:
                    zeroed += min(b, p1) - max(a, p0)
        else:
            freed = self._free_4k(p0, p1)
        self.present -= freed + pooled
        self.host.footprint_pages -= freed
        self.data.set(p0, p1, 0)
        if zeroed:
            self.ledger.op("zero_fill", zeroed)
        freed += pooled
        # The kernel walks the whole range whether or not it holds pages (a punch over a
        # large unallocated range is not free); each freed page then costs what the
        # populated-range figures add on top of that walk.
        self.ledger.op("punch_gmem_empty", p1 - p0)
        if freed:
            self.ledger.op_beyond("punch_gmem_mapped" if mapped else "punch_gmem_unmapped",
                                  "punch_gmem_empty", freed)
        return 0

    def _free_4k(self, a: int, b: int) -> int:
        return free_pages(self.host, self.page_pfn, a, b)

    # ---- accesses -----------------------------------------------------------------------
    def access(self, p0: int, p1: int, guest: bool, write: bool, token: int, proc: int = 0,
               shared: bool = False):
        """A host (guest=False; host process `proc`) or guest access to every page of
        [p0, p1); a guest access is private, or shared (`shared`: through a shared mapping
        of the guest's page tables).  Returns (status, mismatching pages): status 0, SIGBUS,
        or an errno."""
        if p1 > self.npages:
            return (errno.EFAULT if guest else SIGBUS), 0
        want = PRIVATE if guest and not shared else SHARED
        if not guest:
            if not self.flags & GUEST_MEMFD_FLAG_MMAP:
                return SIGBUS, 0                       # the host cannot map it at all
            if not self.attr_view.is_uniform(p0, p1, SHARED):
                return SIGBUS, 0                       # kvm_gmem_fault_user_mapping
        elif shared and not self.vm.in_place:
            return errno.EFAULT, 0                     # dual: shared GPAs map the shared backing
        elif not self.attr_view.is_uniform(p0, p1, want):
            return errno.EFAULT, 0                     # KVM_EXIT_MEMORY_FAULT
        # the host's first touch of a fresh page is its fault (fault_gmem installs the PTE):
        # only pages that were already allocated pay a refault when mapped again
        fresh = None if guest else self.absent_runs(p0, p1)
        self.populate(p0, p1)
        acc2m = self._prepare(p0, p1) if guest and want == PRIVATE else frozenset()
        # in-place: a shared page is mapped in stage 2 like a private one, from the same
        # guest_memfd folio (kvm_gmem_get_pfn serves both states)
        self._map(p0, p1, guest, 0 if guest else proc, want, fresh, acc2m)
        return 0, touch(self.data, self.ledger, p0, p1, write, token)

    # ---- snapshot measures ---------------------------------------------------------------
    def stage2_bytes(self) -> tuple[int, int]:
        """(bytes mapped by 4K stage-2 leaves, bytes mapped by huge leaves)."""
        small = self.s2_map.count_nonzero() * PAGE_SIZE
        huge = int(np.count_nonzero(self.s2_huge)) * self.fpages * PAGE_SIZE if self.order else 0
        return small, huge

    def host_huge_mapped_bytes(self) -> int:
        """Bytes some host process maps with one huge entry (PMD; PUD for 1G folios)."""
        if not self.order:
            return 0
        return int(np.count_nonzero(self.host_pmd)) * self.fpages * PAGE_SIZE

    def intact_folios(self) -> int:
        return int(np.count_nonzero(self.folio_state == INTACT)) if self.order else 0

    def pin(self, p0: int, p1: int, delta: int) -> int:
        return pin_pages(self.pins, p0, p1, delta)


def pin_pages(pins: AttrRanges, p0: int, p1: int, delta: int) -> int:
    """Add one reference to every page of [p0, p1), or drop one (EINVAL, nothing changed,
    if a page holds none); counts are 16 bits and wrap, as the C engine's."""
    if delta < 0 and pins.count_in(p0, p1, 0):
        return errno.EINVAL
    for s, e, v in pins.segments(p0, p1):
        pins.set(s, e, (v + (1 if delta > 0 else 0xFFFF)) & 0xFFFF)
    return 0


def free_pages(host: Host, page_pfn: PfnMap, a: int, b: int) -> int:
    """Free the allocated 4K pages among [a, b) of a pfn map; returns how many."""
    runs = page_pfn.runs(a, b)
    if runs:
        page_pfn.clear(a, b)
        host.free_runs([(p, e - s) for s, e, p in runs])
    return sum(e - s for s, e, _ in runs)


def fill(page_pfn: PfnMap, holes: list[tuple[int, int]], runs: list[tuple[int, int]]) -> None:
    """Give the pages of `holes` ((start, end), in order) the pages of `runs` ((pfn, n), in
    the order taken)."""
    r, used = 0, 0
    for s, e in holes:
        while s < e:
            p, k = runs[r]
            take = min(e - s, k - used)
            page_pfn.set(s, s + take, p + used)
            s += take
            used += take
            if used == k:
                r, used = r + 1, 0


def last_pages(holes: list[tuple[int, int]], n: int) -> np.ndarray:
    """The last n pages of `holes` ((start, end) runs), in order."""
    out = []
    for s, e in reversed(holes):
        take = min(n - len(out), e - s)
        out.extend(range(e - 1, e - 1 - take, -1))
        if len(out) == n:
            break
    return np.array(out[::-1], dtype=np.int64)


def overlap(runs: list[tuple[int, int]], s: int, e: int) -> int:
    """Pages of [s, e) inside `runs` ((start, end), ascending)."""
    return sum(max(0, min(e, b) - max(s, a)) for a, b in runs if a < e and b > s)


def touch(data: AttrRanges, ledger: Ledger, p0: int, p1: int, write: bool, token: int) -> int:
    """Write a token to, or check the token of, every page; returns mismatching pages."""
    ledger.op("touch_page", p1 - p0)
    if write:
        data.set(p0, p1, int(token) & 0xFFFFFFFF)
        return 0
    if token == NO_CHECK:
        return 0
    return (p1 - p0) - data.count_in(p0, p1, int(token))


class SharedBacking:
    """Dual backing's shared memory for one memslot: anon or memfd; 4K, THP or hugetlb."""

    def __init__(self, host: Host, npages: int, kind: str, page: str,
                 attrs: AttrRanges | None = None):
        self.host, self.ledger = host, host.ledger
        self.npages, self.kind, self.page = npages, kind, page
        # the VM's attributes of this memslot (VM.attach_shared keeps the count of pages
        # held at private GPAs up to date through attrs_changing)
        self.attrs = attrs if attrs is not None else AttrRanges(npages, SHARED)
        self.page_pfn = PfnMap(npages)       # pfns of 4K pages / split parts, as runs
        self.host_map = Runs(npages)      # bit per host process mapping the page, as runs
        self.data = Runs(npages)                         # content tokens, as runs
        self.pins = Runs(npages)
        self.present = 0
        self.huge = page in ("thp", "hugetlb")
        if self.huge:
            n = (npages + 511) >> 9
            self.chunk = np.zeros(n, np.uint8)           # ABSENT / INTACT / SPLIT / DEFERRED
            self.chunk_pfn = np.zeros(n, np.int64)
            self.chunk_mapped = np.zeros(n, np.int32)    # pages some host process maps
        self.deferred: list[int] = []                    # anon THPs awaiting deferred split
        if kind == "anon" and page == "thp":
            host.shrinkers.append(self.deferred_split)
        if page == "hugetlb":
            self._preallocate()

    def _fault_key(self) -> str:
        return "fault_anon" if self.kind == "anon" else "fault_shmem"

    # ---- snapshot counters: chunk states and host mappings change only through these -----
    def _set_chunk(self, c: int, st: int) -> None:
        delta = int(st == INTACT) - int(self.chunk[c] == INTACT)
        self.host.st_intact_folios += delta
        if self.chunk_mapped[c]:
            self.host.st_host_huge_bytes += delta * 512 * PAGE_SIZE
        self.chunk[c] = st

    def _chunks_mapped(self, runs: list[tuple[int, int]], delta: int) -> None:
        """Runs of pages that became mapped (delta 1) / unmapped (-1) by the host."""
        if not self.huge:
            return
        for a, e in runs:
            for c in range(a >> 9, ((e - 1) >> 9) + 1):
                k = min(e, (c + 1) << 9) - max(a, c << 9)
                before = self.chunk_mapped[c] != 0
                self.chunk_mapped[c] += delta * k
                if before != (self.chunk_mapped[c] != 0) and self.chunk[c] == INTACT:
                    self.host.st_host_huge_bytes += delta * 512 * PAGE_SIZE

    def _present_where(self, p0: int, p1: int, private: bool) -> int:
        """Pages held in [p0, p1) whose VM attribute is (private) / is not PRIVATE."""
        if p0 >= p1:
            return 0
        return sum(self.count_present(a, b)
                   for a, b, v in self.attrs.segments(p0, p1) if (v == PRIVATE) == private)

    def attrs_changing(self, p0: int, p1: int, value: int) -> None:
        """The VM's attributes of [p0, p1) are about to become `value`."""
        if value == PRIVATE:
            self.host.st_stale_pages += self._present_where(p0, p1, False)
        else:
            self.host.st_stale_pages -= self._present_where(p0, p1, True)

    def _preallocate(self) -> None:
        """hugetlb pool pages are reserved up front (QEMU never discards them)."""
        for c in range(len(self.chunk)):
            pfn = self.host.alloc_huge(9, movable=False)
            if pfn is None:
                raise OutOfMemory("host memory too small for the hugetlb pool")
            self._set_chunk(c, INTACT)
            self.chunk_pfn[c] = pfn
        self.host.st_stale_pages += self.attrs.count(PRIVATE)
        n = len(self.chunk) * 512
        self.present += n
        self.host.footprint_pages += n
        self.host.huge_pages += n

    def populate(self, p0: int, p1: int) -> int:
        if not self.huge:
            holes = self.page_pfn.holes(p0, p1)
            return self._alloc_4k(holes) if holes else 0
        c0, c1 = p0 >> 9, ((p1 - 1) >> 9) + 1
        st = self.chunk[c0:c1]
        if (st == INTACT).all():
            return 0
        faulted = 0
        for k in np.flatnonzero(st != INTACT):
            c = c0 + int(k)
            a, b = max(p0, c << 9), min(p1, (c + 1) << 9)
            if st[k] == ABSENT:
                pfn = self.host.alloc_huge(9, movable=True)
                if pfn is not None:
                    self._set_chunk(c, INTACT)
                    self.chunk_pfn[c] = pfn
                    self.host.st_stale_pages += self.attrs.count_in(
                        c << 9, min((c + 1) << 9, self.npages), PRIVATE)
                    self.present += 512
                    self.host.footprint_pages += 512
                    self.host.huge_pages += 512
                    self.ledger.op("fault_thp_anon" if self.kind == "anon" else "fault_thp_shmem")
                    faulted += 512
                    continue
                self._set_chunk(c, SPLIT)              # thp_fault_fallback
            holes = self.page_pfn.holes(a, b)
            if holes:
                faulted += self._alloc_4k(holes)
        return faulted

    def _alloc_4k(self, holes: list[tuple[int, int]]) -> int:
        n = sum(e - s for s, e in holes)
        fill(self.page_pfn, holes, self.host.alloc_pages(n, movable=True))
        self.host.st_stale_pages += sum(self.attrs.count_in(s, e, PRIVATE) for s, e in holes)
        self.present += n
        self.host.footprint_pages += n
        self.ledger.op(self._fault_key(), n)
        return n

    def count_present(self, p0: int, p1: int) -> int:
        """Pages held in [p0, p1)."""
        n = self.page_pfn.count(p0, p1)
        if self.huge:
            for k in np.flatnonzero(self.chunk[p0 >> 9:((p1 - 1) >> 9) + 1] == INTACT):
                c = (p0 >> 9) + int(k)
                n += min(p1, (c + 1) << 9) - max(p0, c << 9)
        return n

    def access(self, p0: int, p1: int, write: bool, token: int, proc: int = 0):
        """A host access by process `proc`.  Only the VMM maps anonymous memory (another
        process cannot map it, and QEMU marks guest RAM MADV_DONTFORK); a memfd can be
        mapped by any process it is passed to."""
        if proc and self.kind == "anon":
            return errno.EFAULT, 0
        self.populate(p0, p1)
        self._chunks_mapped([(s, e) for s, e, v in self.host_map.segments(p0, p1) if not v], 1)
        self.host_map.or_bits(p0, p1, 1 << proc)
        return 0, touch(self.data, self.ledger, p0, p1, write, token)

    def guest_access(self, p0: int, p1: int, write: bool, token: int, gmem: "GuestMemfd"):
        """A guest access to shared GPAs under dual backing: KVM maps the shared backing's
        page (through the memslot's userspace address) into the slot's stage 2 at 4K."""
        self.populate(p0, p1)
        gmem.set_s2_4k(p0, p1)
        return 0, touch(self.data, self.ledger, p0, p1, write, token)

    def discard(self, p0: int, p1: int) -> int:
        """QEMU's ram_block_discard_range: MADV_DONTNEED (anon) / PUNCH_HOLE then
        MADV_DONTNEED (memfd)."""
        if self.page == "hugetlb":
            return 0      # never reached from the strategy; hugetlb stays preallocated
        # nothing in [p0, p1) stays held, nothing outside changes
        self.host.st_stale_pages -= self._present_where(p0, p1, True)
        was_mapped = [(s, e) for s, e, v in self.host_map.segments(p0, p1) if v]
        mapped = bool(was_mapped)
        self._chunks_mapped(was_mapped, -1)
        self.host_map.set(p0, p1, 0)
        freed = 0
        if self.huge:
            for k in np.flatnonzero(self.chunk[p0 >> 9:((p1 - 1) >> 9) + 1]):
                c = (p0 >> 9) + int(k)
                a, b = c << 9, (c + 1) << 9
                state = self.chunk[c]
                if state == INTACT and p0 <= a and b <= p1:
                    self.host.buddy.free(int(self.chunk_pfn[c]), 9)
                    self._set_chunk(c, ABSENT)
                    self.host.huge_pages -= 512
                    freed += 512
                    continue
                if state == INTACT:
                    base = int(self.chunk_pfn[c])
                    self.page_pfn.set(a, b, base)
                    self.host.huge_pages -= 512
                    self.host.huge_splits += 1
                    self.host.folio_splits += 1
                    if self.kind == "anon":
                        # the PMD goes, the THP stays whole until a deferred split
                        self._set_chunk(c, DEFERRED)
                        self.deferred.append(c)
                        # the same madvise call as discard_anon: only what the split adds
                        self.ledger.op_beyond("thp_split_anon", "discard_anon", 1)
                        self.page_pfn.clear(max(a, p0), min(b, p1))   # unmapped, still held
                        continue
                    self._set_chunk(c, SPLIT)                   # shmem splits at once
                    # the same punch call as punch_shmem_*: only what the split adds
                    self.ledger.op_beyond("thp_split_shmem", "punch_shmem_unmapped", 1)
                if self.chunk[c] == DEFERRED:
                    # the THP's own subpages wait for the deferred split; 4K pages faulted
                    # into its holes since then are ordinary pages and go now
                    lo, hi = max(a, p0), min(b, p1)
                    base = int(self.chunk_pfn[c])
                    foreign = [(p, e - s) for s, e, p in self.page_pfn.runs(lo, hi)
                               if p != base + (s - a)]
                    if foreign:
                        self.host.free_runs(foreign)
                        freed += sum(k for _, k in foreign)
                    self.page_pfn.clear(lo, hi)
                    continue
                freed += self._free_4k(max(a, p0), min(b, p1))
                if not self.page_pfn.count(a, b):
                    self._set_chunk(c, ABSENT)
        else:
            freed = self._free_4k(p0, p1)
        self.present -= freed
        self.host.footprint_pages -= freed
        self.data.set(p0, p1, 0)
        if self.kind == "anon":
            self.ledger.op("discard_anon", max(freed, 1))
        else:
            self.ledger.op("punch_shmem_mapped" if mapped else "punch_shmem_unmapped", freed)
            # ram_block_discard_range (QEMU system/physmem.c) follows the punch with
            # madvise(MADV_DONTNEED) whenever the block's page size is the host's (memfd with
            # 4K pages or THP; not hugetlbfs): it walks the range, whose PTEs the punch's
            # unmap_mapping_range has already zapped
            self.ledger.op("madvise_dontneed_unmapped", p1 - p0)
        return 0

    def _free_4k(self, a: int, b: int) -> int:
        return free_pages(self.host, self.page_pfn, a, b)

    # ---- snapshot measures ---------------------------------------------------------------
    def intact_folios(self) -> int:
        return int(np.count_nonzero(self.chunk == INTACT)) if self.huge else 0

    def present_at(self, attrs: AttrRanges, value: int) -> int:
        """Pages held at GPAs whose attribute is `value` (PRIVATE: memory the shared
        backing holds for private GPAs - leaked by host touches, or kept by discard=false)."""
        return sum(self.count_present(a, b) for a, b, v in attrs.segments() if v == value)

    def host_huge_mapped_bytes(self) -> int:
        """An intact THP / hugetlb page that the host touched is mapped by one PMD
        (do_huge_pmd_anonymous_page, shmem/hugetlb faults map the whole folio)."""
        if not self.huge:
            return 0
        touched = sum(1 for c in np.flatnonzero(self.chunk == INTACT).tolist()
                      if self.host_map.count_nonzero(c << 9, min((c + 1) << 9, self.npages)))
        return touched * 512 * PAGE_SIZE

    def deferred_split(self) -> bool:
        """The deferred-split shrinker: free the unmapped parts of partially unmapped THPs."""
        if not self.deferred:
            return False
        freed = 0
        for c in self.deferred:
            if self.chunk[c] != DEFERRED:
                continue
            a = c << 9
            base = int(self.chunk_pfn[c])
            # subpages no longer mapped (discarded) go back; re-touched holes have new pages
            own = [(s, e) for s, e, pfn in self.page_pfn.runs(a, a + 512)
                   if pfn == base + (s - a)]      # the THP's own subpages, still mapped
            holes = [(base + s - a, e - s) for s, e in complement(own, a, a + 512)]
            self.host.free_runs(holes)
            n = sum(k for _, k in holes)
            freed += n
            self._set_chunk(c, SPLIT)
            self.present -= n
        self.host.footprint_pages -= freed
        self.deferred.clear()
        return freed > 0
