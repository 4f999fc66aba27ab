"""Small builders for simulator tests: a model with a VM and one guest_memfd."""
from bench.costs import load_profile
from bench.sim.model import (GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, GuestMemfd,
                             Host, Ledger, SharedBacking, VM, VM_TYPE_SW_PROTECTED)

MiB = 1 << 20
PROFILE = load_profile()


def make_gmem(size=8 * MiB, order=0, flags=GUEST_MEMFD_FLAG_MMAP, platform="preserve",
              vm_type=VM_TYPE_SW_PROTECTED, in_place=True, promote=True, host_pages=1 << 16,
              huge="split"):
    ledger = Ledger(PROFILE)
    host = Host(host_pages, ledger)
    vm = VM(vm_type, ledger, in_place=in_place)
    g = GuestMemfd(host, vm, size, flags, order, platform, promote, huge)
    vm.add_slot(g, 0 if flags & GUEST_MEMFD_FLAG_INIT_SHARED else 8)
    return g


def make_shared(npages=2048, kind="anon", page="4k", host_pages=1 << 16):
    ledger = Ledger(PROFILE)
    host = Host(host_pages, ledger)
    return SharedBacking(host, npages, kind, page)
