"""Conformance of the simulator to the reference's rules (guest_memfd.md sections 2 and 4),
one test per rule, through the model's ioctl-shaped methods."""
import errno

import pytest

from bench.ops import KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE
from bench.sim.model import (GARBAGE, GUEST_MEMFD_FLAG_INIT_SHARED as INIT_SHARED,
                             GUEST_MEMFD_FLAG_MMAP as MMAP, SIGBUS, VM_TYPE_DEFAULT)
from sim_helpers import MiB, make_gmem, make_shared

K4 = 4096
SHARED = 0


def shared_gmem(**kw):
    kw.setdefault("flags", MMAP | INIT_SHARED)
    return make_gmem(**kw)


# ---- validation, in the reference's order ------------------------------------------------
def test_enotty_when_in_place_disabled_comes_before_validation():
    g = shared_gmem(in_place=False)
    assert g.set_memory_attributes2(0, K4, PRIVATE, flags=1)[0] == errno.ENOTTY


def test_struct_copy_failure_is_efault_before_einval():
    g = shared_gmem()
    assert g.set_memory_attributes2(1, 0, 0xFF, flags=1, copy_ok=False)[0] == errno.EFAULT


def test_nonzero_flags_einval():
    assert shared_gmem().set_memory_attributes2(0, K4, PRIVATE, flags=1) == (errno.EINVAL, None)


def test_nonzero_reserved_einval():
    g = shared_gmem()
    assert g.set_memory_attributes2(0, K4, PRIVATE, reserved=[0, 0, 7])[0] == errno.EINVAL
    assert g.set_memory_attributes2(0, K4, PRIVATE, reserved=[0] * 11)[0] == 0


def test_vm_without_private_memory_einval():
    g = shared_gmem(vm_type=VM_TYPE_DEFAULT)
    assert g.set_memory_attributes2(0, K4, PRIVATE)[0] == errno.EINVAL


def test_unknown_attribute_bits_einval():
    assert shared_gmem().set_memory_attributes2(0, K4, PRIVATE | 1)[0] == errno.EINVAL


@pytest.mark.parametrize("offset,size", [(0, 0), (K4, (1 << 64) - K4)])
def test_zero_size_or_overflow_einval(offset, size):
    assert shared_gmem().set_memory_attributes2(offset, size, PRIVATE)[0] == errno.EINVAL


@pytest.mark.parametrize("offset,size", [(512, K4), (0, K4 + 1)])
def test_unaligned_einval(offset, size):
    assert shared_gmem().set_memory_attributes2(offset, size, PRIVATE)[0] == errno.EINVAL


@pytest.mark.parametrize("offset,size", [(8 * MiB, K4), (8 * MiB - K4, 2 * K4)])
def test_outside_file_einval(offset, size):
    assert shared_gmem().set_memory_attributes2(offset, size, PRIVATE)[0] == errno.EINVAL


# ---- the conversion itself ------------------------------------------------------------------
def test_initial_state_private_unless_init_shared():
    assert make_gmem(flags=MMAP).attrs.segments() == [(0, 2048, PRIVATE)]
    assert shared_gmem().attrs.segments() == [(0, 2048, SHARED)]


def test_early_return_no_zap_no_refcount_check():
    g = shared_gmem()
    assert g.access(0, 4, False, True, 1) == (0, 0)
    g.pin(0, 4, +1)
    ret = g.set_memory_attributes2(0, 4 * K4, SHARED)      # already shared
    assert ret == (0, None)
    assert g.host_map[:4].all(), "early return must not zap host mappings"
    assert "host_zap_pte" not in g.ledger.totals and "refcount_scan_folio" not in g.ledger.totals


def test_to_private_zaps_host_mappings_of_all_processes():
    g = shared_gmem()
    g.access(0, 8, False, True, 1, proc=0)
    g.access(4, 8, False, False, 1, proc=1)
    assert g.set_memory_attributes2(0, 8 * K4, PRIVATE) == (0, None)
    assert not g.host_map[:8].any()
    # both processes now fault with SIGBUS
    assert g.access(4, 5, False, False, 1, proc=1)[0] == SIGBUS
    assert g.access(0, 1, False, False, 1, proc=0)[0] == SIGBUS


def test_elevated_refcount_eagain_with_error_offset_and_attributes_unchanged():
    g = shared_gmem()
    g.access(0, 16, False, True, 1)
    g.pin(10, 11, +1)
    ret, err_off = g.set_memory_attributes2(4 * K4, 12 * K4, PRIVATE)
    assert ret == errno.EAGAIN and err_off == 10 * K4
    assert g.attrs.segments() == [(0, 2048, SHARED)], "attributes must stay unchanged"
    assert not g.host_map[4:16].any(), "host mappings are zapped before the check"
    assert g.access(4, 5, False, False, 1) == (0, 0), "pages refault while still shared"
    g.pin(10, 11, -1)
    assert g.set_memory_attributes2(4 * K4, 12 * K4, PRIVATE) == (0, None)


def test_error_offset_never_below_requested_start_with_huge_folios():
    g = shared_gmem(order=9)
    g.access(0, 512, False, True, 1)
    g.pin(3, 4, +1)                      # the pin elevates the whole 2M folio
    ret, err_off = g.set_memory_attributes2(64 * K4, 8 * K4, PRIVATE)
    assert ret == errno.EAGAIN and err_off == 64 * K4


def test_lru_batch_reference_is_drained_not_reported():
    g = shared_gmem()
    g.access(0, 1, False, True, 1)       # the fresh folio sits in the per-CPU batch
    assert g.lru
    assert g.set_memory_attributes2(0, K4, PRIVATE) == (0, None)
    assert g.ledger.totals["lru_drain"][0] == 1


def test_stage2_zapped_in_both_directions():
    g = make_gmem(flags=MMAP)
    g.access(0, 8, True, True, 1)          # guest maps private pages
    assert g.s2_map[:8].all()
    assert g.set_memory_attributes2(0, 8 * K4, SHARED) == (0, None)
    assert not g.s2_map[:8].any()
    g.access(0, 8, False, True, 2)
    g.set_memory_attributes2(0, 8 * K4, PRIVATE)
    g.access(0, 8, True, False, 2)
    assert g.s2_map[:8].all()
    g.set_memory_attributes2(0, 4 * K4, SHARED)
    assert not g.s2_map[:4].any() and g.s2_map[4:8].all()


def test_attributes_are_merged_ranges():
    g = shared_gmem()
    g.set_memory_attributes2(K4, K4, PRIVATE)
    g.set_memory_attributes2(3 * K4, K4, PRIVATE)
    assert g.attrs.segments() == [(0, 1, 0), (1, 2, 8), (2, 3, 0), (3, 4, 8), (4, 2048, 0)]
    g.set_memory_attributes2(2 * K4, K4, PRIVATE)
    assert g.attrs.segments() == [(0, 1, 0), (1, 4, 8), (4, 2048, 0)]
    g.set_memory_attributes2(0, 8 * MiB, SHARED)
    assert g.attrs.segments() == [(0, 2048, 0)]


def test_conversion_before_allocation_changes_only_attributes():
    g = shared_gmem()
    assert g.set_memory_attributes2(0, 8 * MiB, PRIVATE) == (0, None)
    assert g.present == 0 and g.host.footprint_pages == 0


# ---- host access, file operations --------------------------------------------------------
def test_host_access_private_or_beyond_eof_is_sigbus():
    g = make_gmem(flags=MMAP)
    assert g.access(0, 1, False, False, 0)[0] == SIGBUS
    g2 = shared_gmem()
    assert g2.access(2047, 2049, False, False, 0)[0] == SIGBUS


def test_no_mmap_flag_host_cannot_map():
    g = make_gmem(flags=INIT_SHARED)
    assert g.access(0, 1, False, False, 0)[0] == SIGBUS


def test_punch_hole_frees_keeps_attributes_next_fault_reads_zero():
    g = shared_gmem()
    g.access(0, 8, False, True, 7)
    g.set_memory_attributes2(0, 4 * K4, PRIVATE)
    before = g.attrs.segments()
    assert g.fallocate_punch_hole(0, 8 * K4) == 0
    assert g.present == 0 and g.host.footprint_pages == 0
    assert g.attrs.segments() == before
    assert g.access(4, 8, False, False, 0) == (0, 0), "refaulted pages read zeros"


def test_punch_rules_alignment_and_past_end():
    g = shared_gmem()
    assert g.fallocate_punch_hole(100, K4) == errno.EINVAL
    assert g.fallocate_punch_hole(8 * MiB, K4) == 0
    assert g.fallocate_punch_hole(16 * MiB, 2 * MiB) == 0


# ---- contents per platform -------------------------------------------------------------------
def _roundtrip(platform):
    g = make_gmem(flags=MMAP, platform=platform)
    g.access(0, 4, True, True, 0xAB)             # guest writes private data
    g.set_memory_attributes2(0, 4 * K4, SHARED)
    return g, int(g.data[0])


def test_preserve_keeps_contents_both_ways():
    g, seen = _roundtrip("preserve")
    assert seen == 0xAB
    g.access(0, 4, False, True, 0xCD)
    g.set_memory_attributes2(0, 4 * K4, PRIVATE)
    assert g.access(0, 4, True, False, 0xCD) == (0, 0)


def test_tdx_zeroes_on_to_shared():
    assert _roundtrip("zero")[1] == 0


def test_snp_leaves_ciphertext():
    assert _roundtrip("destroy")[1] == GARBAGE


# ---- huge folios under in-place -------------------------------------------------------------
def test_partial_conversion_demotes_mapping_keeps_folio():
    g = shared_gmem(order=9, huge="demote")
    g.access(0, 512, False, True, 1)
    assert g.host_pmd[0] == 1 and g.host.huge_pages == 512
    g.set_memory_attributes2(8 * K4, K4, PRIVATE)
    assert g.host_pmd[0] == 0 and g.host.huge_splits == 1
    assert g.host.huge_pages == 512 and g.host.footprint_pages == 512, "physical folio intact"
    assert g.host_map[0] and not g.host_map[8], "the rest stays mapped at 4K"


@pytest.mark.parametrize("promote,merges", [(True, 1), (False, 0)])
def test_uniform_again_promotes_only_if_allowed(promote, merges):
    g = shared_gmem(order=9, promote=promote, huge="demote")
    g.access(0, 512, False, True, 1)
    g.set_memory_attributes2(8 * K4, K4, PRIVATE)
    g.set_memory_attributes2(8 * K4, K4, SHARED)
    g.access(0, 512, False, False, 1)
    assert g.host.huge_merges == merges
    assert bool(g.host_pmd[0]) == promote


# ---- dual backing -------------------------------------------------------------------------------
def test_vm_ioctl_has_no_pin_check_and_returns_early():
    g = make_gmem(flags=0, in_place=False)
    vm = g.vm
    g.pin(0, 4, +1)
    assert vm.set_memory_attributes(0, 0, 4 * K4, SHARED) == 0
    assert vm.slot_attrs[0].segments()[0] == (0, 4, SHARED)
    n = g.ledger.totals["vm_attr_xa_store"][0]
    assert n == 4, "one xarray store per 4K page"
    assert vm.set_memory_attributes(0, 0, 4 * K4, SHARED) == 0
    assert g.ledger.totals["vm_attr_xa_store"][0] == n, "early return"
    assert vm.set_memory_attributes(0, 0, 4 * K4, SHARED, flags=1) == errno.EINVAL
    assert vm.set_memory_attributes(0, 1, 4 * K4, SHARED) == errno.EINVAL


def test_vm_ioctl_rejects_private_when_in_place_mode_on():
    g = shared_gmem(in_place=True)
    assert g.vm.set_memory_attributes(0, 0, K4, PRIVATE) == errno.EINVAL


def test_punching_part_of_a_hugetlb_gmem_folio_zeroes_it_whole_one_returns_to_the_pool():
    # kvm_gmem_truncate_inode_range: a partly covered huge page is zeroed, not freed; a
    # whole one goes back to the hugetlb pool (still held), and the next fault reuses it
    g = make_gmem(flags=0, order=9, in_place=False)
    g.attr_view = g.vm.slot_attrs[0]
    g.access(0, 512, True, True, 1)
    assert g.host.huge_pages == 512
    g.fallocate_punch_hole(4 * K4, K4)
    assert g.host.huge_pages == 512 and g.host.folio_splits == 0
    assert g.present == 512 and g.host.footprint_pages == 512 and g.data[4] == 0
    pfn = int(g.folio_pfn[0])
    free_before = g.host.buddy.free_pages
    g.fallocate_punch_hole(0, 2 * MiB)
    assert g.present == 0 and g.host.huge_pages == 0
    assert g.host.footprint_pages == 512 and g.host.buddy.free_pages == free_before
    assert g.host.hugetlb_pool[9] == [pfn]
    g.access(512, 1024, True, True, 2)
    assert int(g.folio_pfn[1]) == pfn and g.host.hugetlb_pool[9] == []
    assert g.host.footprint_pages == 512


def test_in_place_split_on_share_and_merge_when_all_private():
    # the HugeTLB guest_memfd series: any shared page splits the folio (restoring its
    # vmemmap), the folio is merged back once its whole range is private again
    g = make_gmem(order=9)
    g.access(0, 512, True, True, 1)
    g.set_memory_attributes2(8 * K4, K4, SHARED)
    assert g.folio_state[0] == 2 and g.host.folio_splits == 1 and g.host.huge_pages == 0
    assert g.host.footprint_pages == 512 and g.page_pfn[8] == g.folio_pfn[0] + 9
    assert g.ledger.totals["hugetlb_vmemmap_restore"][0] == 1
    assert g.access(8, 9, False, True, 5) == (0, 0) and not g.host_pmd[0]
    g.set_memory_attributes2(8 * K4, K4, PRIVATE)
    assert g.folio_state[0] == 1 and g.host.folio_merges == 1 and g.host.huge_pages == 512
    assert g.ledger.totals["folio_merge"][0] == 1
    # a shared page in a folio's range splits a new folio at once (kvm_gmem_get_folio)
    g.set_memory_attributes2(2 * MiB, K4, SHARED)
    g.access(513, 514, True, True, 1)
    assert g.folio_state[1] == 2 and g.host.folio_splits == 2


def test_shmem_thp_hole_splits_at_once_and_frees():
    s = make_shared(npages=1024, kind="memfd", page="thp")
    s.access(0, 512, True, 1)
    assert s.host.huge_pages == 512
    s.discard(0, 1)
    assert s.host.huge_splits == 1 and s.host.footprint_pages == 511


def test_anon_thp_hole_frees_nothing_until_deferred_split():
    s = make_shared(npages=1024, kind="anon", page="thp")
    s.access(0, 512, True, 1)
    s.discard(0, 1)
    assert s.host.footprint_pages == 512, "MADV_DONTNEED in a THP frees nothing yet"
    s.access(0, 1, True, 2)                      # re-touch: a new 4K page
    assert s.host.footprint_pages == 513
    assert s.deferred_split()
    assert s.host.footprint_pages == 512
    s.host.buddy.check()


def test_hugetlb_is_preallocated_and_never_discarded():
    s = make_shared(npages=1024, kind="memfd", page="hugetlb")
    assert s.host.footprint_pages == 1024 and s.host.huge_pages == 1024
