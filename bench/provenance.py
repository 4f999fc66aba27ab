"""Where a result came from: suite version and git commit, kernel command line, the kernel
config options that decide what the benchmark can measure, CPU microcode.

Recorded in every results.json ("provenance").  A fact that cannot be read is recorded as
"unknown" with the reason, never left out silently.
"""
import gzip
import json
import platform
import re
import subprocess
from pathlib import Path

from bench import __version__

# the options that change what a run measures (KVM and its confidential-VM flavours,
# guest_memfd, THP, hugetlb, and what the fragmentation readers can see)
CONFIG_OPTIONS = (
    "CONFIG_KVM", "CONFIG_KVM_INTEL", "CONFIG_KVM_AMD", "CONFIG_KVM_AMD_SEV",
    "CONFIG_INTEL_TDX_HOST", "CONFIG_KVM_SW_PROTECTED_VM", "CONFIG_KVM_GUEST_MEMFD",
    "CONFIG_KVM_PRIVATE_MEM", "CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES",
    "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_TRANSPARENT_HUGEPAGE_ALWAYS",
    "CONFIG_TRANSPARENT_HUGEPAGE_MADVISE", "CONFIG_HUGETLBFS", "CONFIG_HUGETLB_PAGE",
    "CONFIG_CMA", "CONFIG_COMPACTION", "CONFIG_PAGE_OWNER", "CONFIG_ARCH_FORCE_MAX_ORDER",
    "CONFIG_NUMA",
)


def _unknown(why: str) -> dict:
    return {"value": "unknown", "why": why}


def git_commit() -> dict:
    """{"commit", "dirty", "checkout"} of the gmembench checkout the code runs from (or the
    current directory's, when it is a gmembench checkout: an installed package keeps no
    .git), else unknown with the reason."""
    here = Path(__file__).resolve().parent.parent
    for root in (here, Path.cwd()):
        if not (root / "bench" / "__init__.py").is_file() or not (root / ".git").exists():
            continue
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                    capture_output=True, text=True, timeout=5)
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                    "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError) as e:
            return _unknown(f"git not runnable: {e}")
        if commit.returncode == 0:
            return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip()),
                    "checkout": str(root)}
    # an installed package: the commit recorded when it was built (setup.py)
    try:
        info = json.loads((here / "bench" / "build_info.json").read_text())
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict) and info.get("commit"):
        return {"commit": info["commit"], "dirty": bool(info.get("dirty")),
                "checkout": "recorded at install"}
    return _unknown("not run from a git checkout, and the installed package recorded no "
                    "commit (installed from a tree without git)")


def kernel_config(release: str | None = None) -> dict:
    """CONFIG_OPTIONS from /boot/config-<release> or /proc/config.gz: {"source", "options":
    {name: value or "not set"}} or unknown."""
    release = release or platform.release()
    text, source = None, None
    boot = Path(f"/boot/config-{release}")
    try:
        if boot.is_file():
            text, source = boot.read_text(errors="replace"), str(boot)
        elif Path("/proc/config.gz").exists():
            with gzip.open("/proc/config.gz", "rt", errors="replace") as f:
                text, source = f.read(), "/proc/config.gz"
    except OSError as e:
        return _unknown(f"kernel config not readable: {e}")
    if text is None:
        return _unknown(f"neither /boot/config-{release} nor /proc/config.gz exists")
    return {"source": source, "options": parse_kernel_config(text)}


def parse_kernel_config(text: str, options=CONFIG_OPTIONS) -> dict:
    found = {}
    for line in text.splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
        if m and m.group(1) in options:
            found[m.group(1)] = m.group(2).strip('"')
            continue
        m = re.match(r"^# (CONFIG_\w+) is not set", line)
        if m and m.group(1) in options:
            found[m.group(1)] = "not set"
    return {k: found.get(k, "absent") for k in options}


def microcode() -> str | dict:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("microcode"):
                    return line.split(":", 1)[1].strip()
    except OSError as e:
        return _unknown(f"/proc/cpuinfo not readable: {e}")
    return _unknown("/proc/cpuinfo has no microcode line (virtual CPU or non-x86)")


def cmdline() -> str | dict:
    try:
        return Path("/proc/cmdline").read_text().strip()
    except OSError as e:
        return _unknown(f"/proc/cmdline not readable: {e}")


def provenance() -> dict:
    return {"suite_version": __version__, "git": git_commit(), "kernel_release": platform.release(),
            "kernel_cmdline": cmdline(), "kernel_config": kernel_config(),
            "microcode": microcode()}
