"""Guest memory layout: what both backends build before a workload runs."""
from dataclasses import dataclass, field, asdict

from bench.ops import PAGE_SIZE, SIZE_1G, SIZE_2M

GMEM_PAGE_SIZES = {"4k": PAGE_SIZE, "2m": SIZE_2M, "1g": SIZE_1G}
SHARED_BACKINGS = ("anon", "memfd")
SHARED_PAGES = ("4k", "thp", "hugetlb")
PLATFORMS = ("preserve", "zero", "destroy")   # SW_PROTECTED/pKVM, TDX, SNP


@dataclass(frozen=True)
class Memslot:
    gpa: int          # guest physical start
    size: int         # bytes; also the size of its guest_memfd
    numa_node: int = 0


@dataclass(frozen=True)
class Layout:
    memslots: tuple[Memslot, ...]
    gmem_page_size: int = PAGE_SIZE   # guest_memfd folio size: 4K (upstream), 2M, 1G
    shared_backing: str = "anon"      # dual backing's shared memory: anon | memfd
    shared_page: str = "4k"           # 4k | thp | hugetlb
    platform: str = "preserve"        # content on conversion: preserve | zero | destroy
    init_shared: bool = False         # guest_memfd created with INIT_SHARED
    # vCPUs: every remote TLB flush / TDX track kicks each one.  Default 8: a mid-size
    # cloud confidential VM; the kick cost grows linearly, so set it to the VM you model.
    vcpus: int = 8
    # The guest accepted its memory before the workload starts (TDX/SNP: memblock and the
    # buddy allocator hand out accepted memory, accept_memory()): every memslot is private,
    # allocated in guest_memfd, prepared and mapped in stage 2 at start-up (reported apart,
    # never billed to the workload).  Workload files default it to true on zero/destroy;
    # a Layout built in code says so explicitly.
    accepted: bool = False
    # TDX huge-page series (not upstream): 2M private S-EPT leaves where the guest accepts a
    # whole 2M folio.  Upstream TDX maps private memory at 4K only.
    tdx_private_2m: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def guest_size(self) -> int:
        return sum(m.size for m in self.memslots)

    def slot_of(self, gpa: int, size: int) -> int | None:
        """Index of the memslot that holds [gpa, gpa+size) entirely, else None."""
        for i, m in enumerate(self.memslots):
            if m.gpa <= gpa and gpa + size <= m.gpa + m.size:
                return i
        return None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memslots"] = [asdict(m) for m in self.memslots]
        return d
