"""The two vocabularies every backend shares.

Workload *ops* say what the guest and host do (convert a range, touch pages).  A strategy
(bench/strategies.py) compiles ops into *steps*: the kernel-level primitives it performs
(ioctl, punch hole, discard, copy, touch).  Both backends execute the same step arrays,
the simulator on its model (bench/sim/), the host in C on the real kernel (bench/host/),
and return the same per-step result arrays, so one piece of code (bench/metrics.py)
measures both.
"""
from enum import IntEnum

import numpy as np

PAGE_SIZE = 4096
SIZE_2M = 2 << 20
SIZE_1G = 1 << 30
KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3


class OpKind(IntEnum):
    TO_SHARED = 1      # guest asks: private -> shared
    TO_PRIVATE = 2     # guest asks: shared -> private
    SHARED_WRITE = 3   # host (VMM/device) writes shared pages; token written per page
    SHARED_READ = 4    # host reads shared pages; each must hold token
    PRIVATE_WRITE = 5  # guest writes its private pages
    PRIVATE_READ = 6   # guest reads its private pages; each must hold token
    SHARED_PROBE = 7   # host touches pages that are private: in-place faults (SIGBUS); under
                       # dual the VMM reaches the shared backing and a zero page appears there
    PIN = 8            # an extra reference on the pages (GUP pin, e.g. in-flight DMA)
    UNPIN = 9
    GUEST_SHARED_WRITE = 10   # the guest writes pages it has shared (a shared mapping in its
    GUEST_SHARED_READ = 11    # page tables: the page the host sees); READ checks the token


CONVERSIONS = (OpKind.TO_SHARED, OpKind.TO_PRIVATE)

# One workload op.  offset is relative to the memslot start (= guest_memfd offset).
# t_ns: arrival time from the workload start, -1 when the stream has no timing.
# token: value written (WRITE) or expected (READ); 0 = expect zeros; NO_CHECK = don't check.
# proc: which host process touches (host ops only): 0 = the VMM; 1..MAX_HOST_PROCS-1 = other
#       processes with their own mapping of the guest memory (a forked VMM helper, a
#       vhost-user backend that mmaps the memfd / guest_memfd it was passed).
OP_DTYPE = np.dtype([
    ("t_ns", "<i8"),
    ("kind", "u1"),
    ("slot", "<u2"),
    ("offset", "<u8"),
    ("size", "<u8"),
    ("token", "<u4"),
    ("proc", "u1"),
])
MAX_HOST_PROCS = 4
NO_CHECK = 0xFFFFFFFF


class Obj(IntEnum):
    """Which memory object a step acts on."""
    GMEM = 0     # the memslot's guest_memfd
    SHARED = 1   # the memslot's separate shared backing (dual backing only)


class Via(IntEnum):
    """Who touches: the host through its mmap (SIGBUS on private gmem pages), or the guest
    through a private or a shared mapping of its own page tables."""
    HOST = 0
    GUEST = 1          # a private access (KVM_EXIT_MEMORY_FAULT if the page is shared)
    GUEST_SHARED = 2   # a shared access (KVM_EXIT_MEMORY_FAULT if the page is private)


class Step(IntEnum):
    NOP = 0             # nothing: measures the harness itself
    GMEM_SET_ATTRS = 1  # KVM_SET_MEMORY_ATTRIBUTES2 on the guest_memfd (in-place); arg = attrs
    VM_SET_ATTRS = 2    # KVM_SET_MEMORY_ATTRIBUTES on the VM fd (dual); arg = attrs
    GMEM_PUNCH = 3      # fallocate(PUNCH_HOLE|KEEP_SIZE) on the guest_memfd
    SHARED_DISCARD = 4  # QEMU ram_block_discard_range on the shared backing
    COPY = 5            # copy contents; obj = destination, the other object is the source
    WRITE = 6           # touch + write token to every page; obj, via; arg = token
    READ = 7            # touch + read every page; result aux = pages whose token != arg
    PIN = 8
    UNPIN = 9


# A step.  op = index of the workload op it belongs to (its latency is charged there).
# flags: STEP_CONVERSION marks steps that are part of a conversion's latency;
#        STEP_ABORT_ON_FAIL: a failure skips the rest of the same op's steps (QEMU aborts).
STEP_DTYPE = np.dtype([
    ("code", "u1"),
    ("obj", "u1"),
    ("via", "u1"),
    ("flags", "u1"),
    ("slot", "<u2"),
    ("op", "<u4"),
    ("offset", "<u8"),
    ("size", "<u8"),
    ("arg", "<u8"),
    ("proc", "u1"),    # host process of a host touch (OP_DTYPE proc); 0 otherwise
])
STEP_CONVERSION = 1
STEP_ABORT_ON_FAIL = 2

# Per-step results, filled by a backend's execute():
#   status: 0 or a positive errno; SIGBUS_STATUS when a host access faulted;
#           SKIPPED when an earlier step of the same op failed.
#   ns:     time of the step (measured on the host, the cost model's sum in the simulator)
#   aux:    bytes copied (COPY), mismatching pages (READ), error_offset (failed SET_ATTRS)
RESULT_DTYPE = np.dtype([("status", "<i4"), ("ns", "<i8"), ("aux", "<i8")])
SIGBUS_STATUS = 1000
SKIPPED = 1001


def empty_ops(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=OP_DTYPE)


def empty_steps(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=STEP_DTYPE)
