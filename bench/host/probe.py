"""What this host's kernel supports for each strategy step (`gmembench probe`).

Nothing is assumed from the kernel version: every capability is read with
KVM_CHECK_EXTENSION and the in-place ioctl is confirmed by a harmless call (a no-op
KVM_SET_MEMORY_ATTRIBUTES2 on a small INIT_SHARED guest_memfd: already-shared -> shared
returns 0 at once when the ioctl exists, ENOTTY when it does not or in-place mode is off).
Works without /dev/kvm or root: it then says so and lists every KVM step as unavailable.
"""
import errno
import json
import os
import platform
import re

from bench.ops import Step

KVM_PATH = "/dev/kvm"
KVM_PARAMS = "/sys/module/kvm/parameters"
THP_DIR = "/sys/kernel/mm/transparent_hugepage"
HUGEPAGES_DIR = "/sys/kernel/mm/hugepages"

CAPS = {
    "USER_MEMORY2": 231,
    "MEMORY_FAULT_INFO": 232,
    "MEMORY_ATTRIBUTES": 233,
    "GUEST_MEMFD": 234,
    "VM_TYPES": 235,
    "PRE_FAULT_MEMORY": 236,
    "GUEST_MEMFD_FLAGS": 244,
    "GUEST_MEMFD_MEMORY_ATTRIBUTES@249": 249,
    "GUEST_MEMFD_MEMORY_ATTRIBUTES@250": 250,
}

# Steps each strategy issues (bench/strategies.py templates).
STRATEGY_STEPS = {
    "in-place": ["GMEM_SET_ATTRS", "WRITE", "READ", "WRITE/guest", "READ/guest",
                 "host-access-fault", "PIN", "UNPIN", "NOP"],
    "dual": ["VM_SET_ATTRS", "COPY", "GMEM_PUNCH", "SHARED_DISCARD", "WRITE", "READ",
             "WRITE/guest", "READ/guest", "host-access-fault", "PIN", "UNPIN", "NOP"],
}


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _choice(path: str) -> str | None:
    text = _read(path)
    if text is None:
        return None
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text


def _errname(e: int) -> str:
    return errno.errorcode.get(e, str(e))


def _helper():
    """The compiled helper, or the reason it is missing."""
    try:
        from bench.host import load_helper
        load_helper()           # a development checkout builds it in place on first use
        from bench.host import kvm
        return kvm, None
    except Exception as e:      # no compiler, no cffi, read-only tree...
        return None, f"C helper not built ({e}); run `pip install .` or build in place"


def kvm_features(kvm_fd: int) -> dict:
    """The facts HostTarget needs: capabilities, VM types, and the confirmed conversion ioctls."""
    from bench.host import kvm
    caps = {}
    for name, num in CAPS.items():
        try:
            caps[name] = kvm.kvm_check_extension(kvm_fd, num)
        except OSError as e:
            caps[name] = f"error {_errname(e.errno)}"
    vm_types = {}
    for t, name in kvm.VM_TYPES.items():
        try:
            fd = kvm.kvm_create_vm(kvm_fd, t)
            os.close(fd)
            vm_types[name] = "ok"
        except OSError as e:
            vm_types[name] = _errname(e.errno)
    feats = {"caps": caps, "vm_types_created": vm_types, "gmem_flags_created": {},
             "attrs2": {"native": False, "reason": ""},
             "vm_attrs": {"native": False, "reason": ""}, "mmap_rules": {}}
    vm = kvm.kvm_create_vm(kvm_fd, 0)
    try:
        for flags in range(4):
            try:
                os.close(kvm.kvm_create_guest_memfd(vm, 2 << 20, flags))
                feats["gmem_flags_created"][flags] = "ok"
            except OSError as e:
                feats["gmem_flags_created"][flags] = _errname(e.errno)
        feats["attrs2"] = _confirm_attrs2(kvm, vm, caps)
        feats["vm_attrs"] = _confirm_vm_attrs(kvm, vm)
        feats["mmap_rules"] = _mmap_rules(kvm, vm)
    finally:
        os.close(vm)
    return feats


def _confirm_attrs2(kvm, vm: int, caps: dict) -> dict:
    cap = max((v for k, v in caps.items() if k.startswith("GUEST_MEMFD_MEMORY_ATTRIBUTES")
               and isinstance(v, int)), default=0)
    try:
        g = kvm.kvm_create_guest_memfd(vm, 2 << 20, kvm.GUEST_MEMFD_FLAG_MMAP |
                                       kvm.GUEST_MEMFD_FLAG_INIT_SHARED)
    except OSError as e:
        return {"native": False, "reason": f"cannot create a test guest_memfd: {_errname(e.errno)}"}
    try:
        kvm.kvm_set_memory_attributes2(g, 0, 4096, 0)
        ok, err = True, None
    except OSError as e:
        ok, err = False, e.errno
    finally:
        os.close(g)
    if ok:
        return {"native": True, "cap": cap,
                "reason": f"KVM_SET_MEMORY_ATTRIBUTES2 no-op call returned 0 (cap {cap:#x})"}
    if err == errno.ENOTTY:
        why = "ioctl absent or in-place mode off" + (
            f" although capability reports {cap:#x}" if cap else "")
        return {"native": False, "cap": cap, "reason": f"KVM_SET_MEMORY_ATTRIBUTES2: ENOTTY ({why})"}
    return {"native": False, "cap": cap,
            "reason": f"KVM_SET_MEMORY_ATTRIBUTES2 exists but the no-op call failed: {_errname(err)}"}


def _confirm_vm_attrs(kvm, vm: int) -> dict:
    try:
        kvm.kvm_set_memory_attributes(vm, 0, 4096, 0)
        return {"native": True, "reason": "KVM_SET_MEMORY_ATTRIBUTES on a DEFAULT VM returned 0"}
    except OSError as e:
        return {"native": False,
                "reason": f"KVM_SET_MEMORY_ATTRIBUTES on the VM fd: {_errname(e.errno)}"}


def _mmap_rules(kvm, vm: int) -> dict:
    rules = {}
    for flags, name in ((0, "flags=0"), (1, "MMAP"), (3, "MMAP|INIT_SHARED")):
        try:
            g = kvm.kvm_create_guest_memfd(vm, 2 << 20, flags)
        except OSError as e:
            rules[name] = f"create: {_errname(e.errno)}"
            continue
        try:
            addr = kvm.mmap(2 << 20, kvm.PROT_READ | kvm.PROT_WRITE, kvm.MAP_SHARED, g)
        except OSError as e:
            rules[name] = f"mmap: {_errname(e.errno)}"
            os.close(g)
            continue
        try:
            st = kvm.touch_pages(addr, 4096, write=False)
            rules[name] = "host read: SIGBUS" if st else "host read: ok"
        finally:
            kvm.munmap(addr, 2 << 20)
            os.close(g)
    return rules


def _pin_available() -> tuple[bool, str]:
    """vmsplice of an anonymous page into a pipe: an extra page reference without GUP_TEST."""
    from bench.host import kvm
    from bench.host._helper import ffi, lib
    import numpy as np
    from bench.ops import RESULT_DTYPE, empty_steps
    addr = kvm.mmap(1 << 20, kvm.PROT_READ | kvm.PROT_WRITE, kvm.MAP_PRIVATE | kvm.MAP_ANONYMOUS)
    try:
        kvm.touch_pages(addr, 1 << 20)
        slots = ffi.new("struct gm_slot[1]")
        slots[0].gmem_fd = slots[0].shared_fd = -1
        slots[0].shared_base = ffi.cast("uint8_t *", addr)
        slots[0].size = 1 << 20
        ctx = ffi.new("struct gm_ctx *")
        ctx.vm_fd, ctx.nslots, ctx.slots = -1, 1, slots
        steps = empty_steps(2)
        steps["code"] = [Step.PIN, Step.UNPIN]
        steps["obj"] = 1
        steps["size"] = 1 << 20
        res = np.zeros(2, RESULT_DTYPE)
        lib.gm_execute(ctx, ffi.from_buffer(steps), ffi.from_buffer(res), 2)
        lib.gm_unpin_all(ctx)
    finally:
        kvm.munmap(addr, 1 << 20)
    if res["status"][0] == 0:
        return True, "vmsplice into a pipe holds page references (GUP get, not a FOLL_LONGTERM pin)"
    return False, f"vmsplice failed: {_errname(int(res['status'][0]))}"


def step_fidelity(feats: dict | None, pin: tuple[bool, str] | None = None) -> dict:
    """strategy -> step -> {"fidelity": native|emulated|unavailable, "reason": str}."""
    out = {}
    if feats is None:
        for strat, steps in STRATEGY_STEPS.items():
            out[strat] = {s: {"fidelity": "unavailable", "reason": "no usable /dev/kvm"}
                          for s in steps}
            out[strat]["NOP"] = {"fidelity": "native", "reason": "harness only"}
        return out
    native2 = feats["attrs2"]["native"]
    vm_native = feats["vm_attrs"]["native"]
    mmap_ok = feats["mmap_rules"].get("MMAP|INIT_SHARED") == "host read: ok"
    pin_ok, pin_why = pin if pin else (False, "not probed")
    common = {
        "WRITE": ("native", "host stores through the mapping") if mmap_ok
        else ("unavailable", "guest_memfd cannot be mmapped"),
        "READ": ("native", "host loads through the mapping") if mmap_ok
        else ("unavailable", "guest_memfd cannot be mmapped"),
        "WRITE/guest": ("emulated", "guest execution is emulated on this host (~1 us/instr): "
                        "guest access done as a host access to the guest_memfd mapping"),
        "READ/guest": ("emulated", "as WRITE/guest"),
        "PIN": ("emulated" if pin_ok else "unavailable", pin_why),
        "UNPIN": ("emulated" if pin_ok else "unavailable", "closing the pipe drops the references"),
        "NOP": ("native", "harness only: two clock_gettime calls"),
    }
    ip = dict(common)
    if native2:
        ip["GMEM_SET_ATTRS"] = ("native", feats["attrs2"]["reason"])
        ip["host-access-fault"] = ("native", "the kernel raises SIGBUS on private pages")
    else:
        ip["GMEM_SET_ATTRS"] = ("emulated", feats["attrs2"]["reason"] +
                                "; timed as the ioctl floor + MADV_DONTNEED zap of the host "
                                "mapping on to-private, lazy refault on to-shared")
        ip["host-access-fault"] = ("emulated", "private state kept per page by the harness; "
                                   "a host access to it reports SIGBUS without touching memory")
    dual = dict(common)
    dual["VM_SET_ATTRS"] = (("native", feats["vm_attrs"]["reason"]) if vm_native else
                            ("emulated", feats["vm_attrs"]["reason"] +
                             "; timed as the ioctl floor, attribute kept by the harness"))
    dual["COPY"] = (("emulated", "the private guest_memfd is created MMAP|INIT_SHARED so the "
                     "host can copy (a real VMM cannot map private memory)") if mmap_ok else
                    ("unavailable", "guest_memfd cannot be mmapped"))
    dual["GMEM_PUNCH"] = ("native", "fallocate(PUNCH_HOLE|KEEP_SIZE) on the guest_memfd")
    dual["SHARED_DISCARD"] = ("native", "memfd: fallocate punch; anon: MADV_DONTNEED; "
                              "hugetlb: skipped by the strategy (preallocated)")
    dual["host-access-fault"] = ("emulated", "dual's guest_memfd has no host mapping in a real "
                                 "VMM; host access to it reports SIGBUS")
    for strat, table in (("in-place", ip), ("dual", dual)):
        out[strat] = {s: {"fidelity": table[s][0], "reason": table[s][1]}
                      for s in STRATEGY_STEPS[strat]}
    return out


def _host_facts() -> dict:
    meminfo = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        k, _, v = line.partition(":")
        meminfo[k] = v.strip()
    cpu = None
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    pools = {}
    try:
        for d in sorted(os.listdir(HUGEPAGES_DIR)):
            base = os.path.join(HUGEPAGES_DIR, d)
            pools[d.replace("hugepages-", "")] = {
                k: int(_read(os.path.join(base, k)) or 0)
                for k in ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages")}
    except OSError:
        pass
    params = {}
    for name in ("gmem_in_place_conversion", "vm_memory_attributes"):
        v = _read(os.path.join(KVM_PARAMS, name))
        params[name] = v if v is not None else "absent"
    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "page_size": os.sysconf("SC_PAGE_SIZE"),
        "mem_total": meminfo.get("MemTotal"),
        "mem_available": meminfo.get("MemAvailable"),
        "thp": {k: _choice(os.path.join(THP_DIR, k)) for k in ("enabled", "shmem_enabled", "defrag")},
        "hugetlb_pools": pools,
        "kvm_params": params,
    }


def probe() -> dict:
    out = {"kvm": {"path": KVM_PATH, "exists": os.path.exists(KVM_PATH), "usable": False,
                   "reason": ""},
           "host": _host_facts(), "features": None}
    out["uid"] = os.geteuid()
    kvm, why = _helper()
    if not out["kvm"]["exists"]:
        out["kvm"]["reason"] = f"{KVM_PATH} does not exist"
    elif kvm is None:
        out["kvm"]["reason"] = why
    else:
        try:
            fd = kvm.kvm_open(KVM_PATH)
        except OSError as e:
            out["kvm"]["reason"] = f"cannot open {KVM_PATH}: {e.strerror}" + (
                " (not root)" if os.geteuid() else "")
        else:
            try:
                out["kvm"]["api_version"] = kvm.kvm_get_api_version(fd)
                out["features"] = kvm_features(fd)
                out["kvm"]["usable"] = True
            finally:
                os.close(fd)
    pin = _pin_available() if kvm is not None else None
    out["steps"] = step_fidelity(out["features"], pin)
    return out


def summary(p: dict) -> dict:
    """The compact form recorded in results metadata."""
    f = p.get("features") or {}
    return {"kvm_usable": p["kvm"]["usable"], "kvm_reason": p["kvm"]["reason"],
            "caps": f.get("caps"), "attrs2_native": (f.get("attrs2") or {}).get("native", False),
            "vm_attrs_native": (f.get("vm_attrs") or {}).get("native", False),
            "kernel": p["host"]["kernel"], "cpu": p["host"]["cpu"],
            "kvm_params": p["host"]["kvm_params"], "thp": p["host"]["thp"]}


def format_table(p: dict) -> str:
    lines = []
    k = p["kvm"]
    lines.append(f"/dev/kvm: {'usable' if k['usable'] else 'NOT usable'}"
                 + (f" ({k['reason']})" if k["reason"] else "")
                 + (f", API version {k['api_version']}" if "api_version" in k else ""))
    h = p["host"]
    lines.append(f"kernel {h['kernel']} {h['machine']}, CPU {h['cpu']} x{h['cpus']}, "
                 f"page size {h['page_size']}, MemAvailable {h['mem_available']}")
    lines.append(f"THP enabled={h['thp']['enabled']} shmem_enabled={h['thp']['shmem_enabled']} "
                 f"defrag={h['thp']['defrag']}")
    lines.append("hugetlb pools: " + ", ".join(
        f"{size}: {v['nr_hugepages']} ({v['free_hugepages']} free)"
        for size, v in h["hugetlb_pools"].items()))
    lines.append("kvm module params: " + ", ".join(f"{n}={v}" for n, v in h["kvm_params"].items()))
    f = p.get("features")
    if f:
        lines.append("")
        lines.append(f"{'capability':40} value")
        for name, v in f["caps"].items():
            lines.append(f"  {name:38} {v:#x}" if isinstance(v, int) else f"  {name:38} {v}")
        lines.append("KVM_CREATE_VM: " + ", ".join(f"{t}={r}" for t, r in f["vm_types_created"].items()))
        lines.append("guest_memfd create flags: " + ", ".join(
            f"{fl}={r}" for fl, r in f["gmem_flags_created"].items()))
        lines.append("guest_memfd mmap: " + "; ".join(f"{n}: {r}" for n, r in f["mmap_rules"].items()))
        lines.append(f"in-place ioctl: {'native' if f['attrs2']['native'] else 'absent'} - "
                     f"{f['attrs2']['reason']}")
        lines.append(f"VM attributes ioctl: {'native' if f['vm_attrs']['native'] else 'absent'} - "
                     f"{f['vm_attrs']['reason']}")
    lines.append("")
    lines.append(f"{'strategy':10} {'step':18} {'here':12} reason")
    for strat, steps in p["steps"].items():
        for step, v in steps.items():
            lines.append(f"{strat:10} {step:18} {v['fidelity']:12} {v['reason']}")
    return "\n".join(lines)


def add_probe_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the probe as JSON")


def cli_probe(args) -> int:
    p = probe()
    if args.json:
        print(json.dumps(p, indent=2, sort_keys=False, default=str))
    else:
        print(format_table(p))
    return 0
