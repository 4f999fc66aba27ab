"""Peak memory of parsing a large QEMU conversion trace (bench.trace.parse_trace).

Writes a trace of --lines lines (timestamped kvm_convert_memory requests of 4K-64K inside
a 64 GiB guest, with a kvm_memory_fault line before 30% of them, like the shipped
snp-boot-churn trace), then parses it in a fresh process and prints the peak resident set
size that parsing added (VmHWM after minus VmRSS before, from /proc/self/status) and its
ratio to the file size.  --impl FILE parses with another version of bench/trace.py (e.g.
one saved from an older commit) in the same way, for a before/after comparison.

    python benchmarks/trace_memory.py --lines 4000000
    git show OLD:bench/trace.py > /tmp/trace_old.py
    python benchmarks/trace_memory.py --lines 4000000 --impl /tmp/trace_old.py
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

CHILD = r"""
import importlib.util, json, sys, time
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
path, impl = sys.argv[1], sys.argv[2]
from bench.layout import Layout, Memslot
if impl == "installed":
    from bench.trace import parse_trace
else:
    spec = importlib.util.spec_from_file_location("trace_impl", impl)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    parse_trace = mod.parse_trace
import numpy as np
layout = Layout(memslots=(Memslot(0, 64 << 30, 0),))
rss0 = status("VmRSS")
t0 = time.perf_counter()
ops, info = parse_trace(path, layout)
dt = time.perf_counter() - t0
print(json.dumps({"rss_before": rss0, "hwm": status("VmHWM"), "seconds": dt,
                  "requests": int(len(ops)), "lines": info["lines"]}))
"""


def write_trace(path: str, lines: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    chunk = 100_000
    t = 1_700_000_000_000_000
    with open(path, "w") as f:
        f.write("# SYNTHETIC trace for benchmarks/trace_memory.py\n")
        done = 0
        while done < lines:
            n = min(chunk, lines - done)
            gpa = rng.integers(0, (64 << 30) // 65536, n) * 65536
            size = rng.choice([4096, 16384, 65536], n)
            shared = rng.random(n) < 0.5
            fault = rng.random(n) < 0.3
            out = []
            for i in range(n):
                t += int(rng.integers(1, 50))
                pre = f"4242@{t // 1_000_000}.{t % 1_000_000:06d}:"
                d = "private_to_shared" if shared[i] else "shared_to_private"
                if fault[i]:
                    out.append(f"{pre}kvm_memory_fault start 0x{gpa[i]:x} size 0x{size[i]:x} flags 0x0\n")
                out.append(f"{pre}kvm_convert_memory start 0x{gpa[i]:x} size 0x{size[i]:x} {d}\n")
            f.write("".join(out))
            done += n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=2_000_000, help="conversion requests (2,000,000)")
    ap.add_argument("--impl", default="installed",
                    help="bench/trace.py file to measure (default: the installed package's)")
    ap.add_argument("--keep", metavar="FILE", help="write the trace here and keep it (an "
                    "existing FILE is reused as it is)")
    args = ap.parse_args()
    path = args.keep or tempfile.mktemp(prefix="gmembench-trace-", suffix=".log")
    t0 = time.perf_counter()
    if not (args.keep and os.path.exists(args.keep)):
        write_trace(path, args.lines)
    size = os.path.getsize(path)
    print(f"trace: {path}, {size / 2**20:.1f} MiB, written in {time.perf_counter() - t0:.1f} s; "
          f"load {os.getloadavg()[0]:.2f}")
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, path, args.impl], capture_output=True,
                           text=True, check=True)
        m = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep:
            os.unlink(path)
    added = m["hwm"] - m["rss_before"]
    print(f"impl {args.impl}: {m['requests']} requests from {m['lines']} lines in "
          f"{m['seconds']:.1f} s; peak RSS added by parsing {added / 2**20:.1f} MiB = "
          f"{added / size:.2f} x the file size (RSS before {m['rss_before'] / 2**20:.0f} MiB, "
          f"peak {m['hwm'] / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
