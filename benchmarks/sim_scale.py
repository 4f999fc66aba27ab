#!/usr/bin/env python3
"""How fast and how big is the simulator at scale?  (issue 9, goals 2, 3 and 5)

The stream: a guest with 2M guest_memfd folios first writes all of its memory (private,
1 GiB ops), then N conversions of mixed sizes (4K-2M, random 4K-aligned offsets, random
direction) run under each strategy.  Every run is a fresh process, so its peak RSS is its
own; each strategy runs --runs times and the table shows the median and the range.

Three parts:
  1. time per phase, wall and CPU (user+sys), median [min-max] of --runs processes;
  2. cost per block of 100k conversions over the run (flat cost = goal 3), median over runs;
  3. peak RSS per guest size with the same stream (--rss-guests; one process each).

The engine is the C core unless --engine python; when the C core cannot be loaded the
benchmark stops with exit 2 instead of falling back to the (~40x slower) Python reference.

    python benchmarks/sim_scale.py                       # 128 GiB, 1M conversions, 3 runs
    python benchmarks/sim_scale.py --conversions 2000000 --runs 1 --rss-guests ''  # goal 3
    python benchmarks/sim_scale.py --rss-guests 8G,128G,1T,4T
    python benchmarks/sim_scale.py --guest 1T --conversions 2000000 --warmup 2000000 --rss-guests 1T
                                                          # control: blocks after a warm-up
    python benchmarks/sim_scale.py --dual-copy            # dual copies contents (copy=auto)
    python benchmarks/sim_scale.py --engine python --conversions 50000 --guest 16G
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

GiB = 1 << 30
MiB = 1 << 20
BLOCK = 100_000          # conversions per block of the per-block cost figures
SUBBLOCKS = 10           # timed parts per block: the burst-robust block figure is their median

# What each figure includes (printed under the table).
PHASES = [
    ("build", "generate the op stream with numpy (boot writes + conversions)"),
    ("compile", "Strategy.compile: ops -> kernel-level steps"),
    ("setup", "build the simulator target: host memory model, guest_memfd, memslots"),
    ("execute", "target.execute of every step (boot writes, then the conversions in blocks "
                "of 100k), the simulated kernel work"),
    ("measure", "per-op latencies and counts from the results (RepetitionRecord) and one "
                "snapshot (footprint, huge pages, free lists)"),
    ("total", "build + compile + setup + execute + measure"),
    ("process", "the whole worker process as its parent sees it: interpreter start, imports, "
                "total, exit (CPU: the child's user+sys from wait4)"),
]


def build_ops(guest: int, conversions: int, seed: int):
    from bench.ops import OP_DTYPE, OpKind
    rng = np.random.default_rng(seed)
    boot = np.zeros(guest // GiB, OP_DTYPE)
    boot["kind"] = OpKind.PRIVATE_WRITE
    boot["offset"] = np.arange(len(boot)) * GiB
    boot["size"] = GiB
    boot["token"] = 1
    conv = np.zeros(conversions, OP_DTYPE)
    pages = rng.integers(1, 513, conversions)                    # 4K .. 2M
    start = rng.integers(0, guest // 4096 - pages + 1)
    conv["kind"] = np.where(rng.random(conversions) < 0.5, OpKind.TO_SHARED, OpKind.TO_PRIVATE)
    conv["offset"] = start * 4096
    conv["size"] = pages * 4096
    conv["t_ns"] = -1
    boot["t_ns"] = -1
    return np.concatenate([boot, conv])


class EngineMissing(Exception):
    pass


def make_target(engine: str, layout, strategy, params: dict):
    """The requested engine and no other: bench.sim.fast.make_sim_target would fall back to
    the Python reference when the C core is missing, which would make every figure ~40x
    off without saying so."""
    if engine == "python":
        from bench.sim.backend import SimTarget
        return SimTarget(layout, strategy, params)
    try:
        from bench.sim.build_core import ensure_built
        ensure_built()
        from bench.sim import _core  # noqa: F401
    except Exception as e:
        raise EngineMissing(f"{type(e).__name__}: {e}") from None
    from bench.sim.fast import CoreTarget
    return CoreTarget(layout, strategy, params)


class Clock:
    """Wall (perf_counter) and CPU (process_time = user + sys of this process) per phase."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def __call__(self, name, fn, *args):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
        return out


def one(strategy: str, guest: int, conversions: int, seed: int, engine: str,
        dual_copy: bool = False, warmup: int = 0) -> dict:
    from bench.layout import Layout, Memslot
    from bench.metrics import RepetitionRecord
    from bench.ops import RESULT_DTYPE
    from bench.strategies import make_strategy
    clock = Clock()
    # the warm-up conversions are the first `warmup` of the same stream (one draw of
    # warmup + conversions), executed but not timed per block
    ops = clock("build", build_ops, guest, warmup + conversions, seed)
    layout = Layout((Memslot(0, guest),), gmem_page_size=2 << 20, shared_backing="anon",
                    shared_page="thp", platform="preserve")
    # dual copies the contents on conversion only on request (QEMU never copies)
    strat = make_strategy(strategy, {"copy": "auto"} if dual_copy and strategy == "dual" else {})
    steps = clock("compile", strat.compile, ops, layout)
    target = clock("setup", make_target, engine, layout, strat, {"seed": seed})
    # block boundaries in ops: the boot writes (+ the warm-up), then every BLOCK
    # conversions, each timed in SUBBLOCKS parts
    boot = guest // GiB + warmup
    sub = BLOCK // SUBBLOCKS
    op_cuts = sorted(set([0, boot] + list(range(boot + sub, len(ops), sub)) + [len(ops)]))
    step_cuts = np.searchsorted(steps["op"], op_cuts)
    res = np.empty(len(steps), RESULT_DTYPE)
    blocks = []
    for i in range(len(step_cuts) - 1):
        a, b = int(step_cuts[i]), int(step_cuts[i + 1])
        w0, c0 = clock.wall.get("execute", 0.0), clock.cpu.get("execute", 0.0)
        res[a:b] = clock("execute", target.execute, steps[a:b])
        part = {"ops": op_cuts[i + 1] - op_cuts[i], "wall_s": clock.wall["execute"] - w0,
                "cpu_s": clock.cpu["execute"] - c0}
        if i == 0:
            blocks.append(dict(part, boot=True))
            continue
        if (i - 1) % SUBBLOCKS == 0:
            blocks.append({"ops": 0, "boot": False, "wall_s": 0.0, "cpu_s": 0.0,
                           "sub_cpu_us": []})
        bl = blocks[-1]
        for k in ("ops", "wall_s", "cpu_s"):
            bl[k] += part[k]
        bl["sub_cpu_us"].append(part["cpu_s"] * 1e6 / part["ops"])
    rec = clock("measure", RepetitionRecord, ops, steps, res)
    snap = clock("measure", target.snapshot)
    clock.wall["total"] = sum(clock.wall.values())
    clock.cpu["total"] = sum(clock.cpu.values())
    return {
        "strategy": strategy, "engine": engine, "target": type(target).__name__,
        "conversions": rec.conversions - warmup, "failed": rec.failed_conversions,
        "warmup": warmup,
        "wall_s": clock.wall, "cpu_s": clock.cpu, "blocks": blocks,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "footprint_gib": snap["footprint_bytes"] / GiB,
        "huge_coverage": snap["huge_bytes"] / guest,
        "p50_us": float(np.median(rec.latency_ns)) / 1000,
    }


def one_cmd(strategy, guest_arg, conversions, seed, engine, dual_copy=False, warmup=0):
    """The command line that runs one() in a process of its own (this script, --one)."""
    return ([sys.executable, os.path.abspath(__file__), "--one", strategy, "--guest", guest_arg,
             "--conversions", str(conversions), "--seed", str(seed), "--engine", engine,
             "--warmup", str(warmup)] + (["--dual-copy"] if dual_copy else []))


def worker(strategy, guest_arg, conversions, seed, engine, dual_copy=False, warmup=0):
    """Run one() in a fresh process; returns (exit code, stdout, stderr, process wall s)."""
    cmd = one_cmd(strategy, guest_arg, conversions, seed, engine, dual_copy, warmup)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    return proc.returncode, out, err, wall


def run_worker(strategy, guest_arg, conversions, seed, engine, dual_copy=False, warmup=0):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    rc, out, err, wall = worker(strategy, guest_arg, conversions, seed, engine, dual_copy, warmup)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc == 2:
        sys.stderr.write(err)
        raise SystemExit(2)
    if rc:
        sys.stderr.write(err)
        raise SystemExit(f"sim_scale: worker for {strategy} failed with exit {rc}")
    r = json.loads(out)
    if r["engine"] != engine:
        raise SystemExit(f"sim_scale: asked for the {engine} engine, the worker ran {r['engine']}")
    r["wall_s"]["process"] = wall
    r["cpu_s"]["process"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return r


def med(xs):
    xs = sorted(xs)
    if not xs:
        return "n/a"
    return f"{np.median(xs):.2f} [{xs[0]:.2f}-{xs[-1]:.2f}]" if len(xs) > 1 else f"{xs[0]:.2f}"


def mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def stream_work(guest: int, warmup: int, conversions: int, seed: int) -> list[dict]:
    """Per block of the measured conversions: how many change the memory attribute of at
    least one page, and how many pages change.  Computed from the op stream alone (a replay
    of one shared/private bit per page, independent of the engine and of the strategy: in this
    stream no conversion fails, so both strategies change the same attributes), so that the
    per-block costs can be read against the work the stream asks for."""
    from bench.ops import OpKind
    ops = build_ops(guest, warmup + conversions, seed)[guest // GiB:]
    shared = np.zeros(guest // 4096, bool)     # all memory starts private (the boot writes fill it)
    p0 = (ops["offset"] // 4096).astype(np.int64)
    p1 = (p0 + (ops["size"] // 4096).astype(np.int64)).tolist()
    p0 = p0.tolist()
    to_shared = (ops["kind"] == OpKind.TO_SHARED).tolist()
    changed = np.zeros(len(ops), np.int64)
    for i in range(len(ops)):
        seg = shared[p0[i]:p1[i]]
        k = int(np.count_nonzero(seg))
        changed[i] = len(seg) - k if to_shared[i] else k
        seg[:] = to_shared[i]
    out = []
    for b in range(warmup, len(ops), BLOCK):
        ch = changed[b:b + BLOCK]
        out.append({"changing": int(np.count_nonzero(ch)), "pages": int(ch.sum()), "ops": len(ch)})
    return out


def robust_us(block: dict) -> float:
    """A block's burst-robust cost: the median of its timed parts' CPU us per conversion."""
    return float(np.median(block["sub_cpu_us"]))


def print_blocks(results: dict, strategies: list, guest: int, a) -> None:
    """The per-block table (goal 3) and the last / first block ratios."""
    # in a child process: the replay's page map (1 byte per 4K page) must not raise the
    # peak RSS this process passes on to the workers it forks later
    cmd = [sys.executable, os.path.abspath(__file__), "--stream-work", "--guest", a.guest,
           "--conversions", str(a.conversions), "--seed", str(a.seed), "--warmup", str(a.warmup)]
    avail = mem_available()
    # a byte per 4K page, and ~100 bytes per op for the replay's Python lists
    replay_need = guest // 4096 + (a.warmup + a.conversions) * 100
    failed = sum(r["failed"] for s in strategies for r in results[s])
    if failed:
        work = None
        print(f"\n(the stream's work per block is not computed: {failed:,} conversions failed, "
              "so the replay, which assumes every conversion succeeds, would not match the runs)")
    elif avail is not None and replay_need > avail // 2:
        work = None
        print(f"\n(the stream's work per block is not computed: its replay needs "
              f"{replay_need // MiB:,} MiB, more than half of the {avail // MiB:,} MiB available)")
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"sim_scale: the stream replay failed with exit {proc.returncode}")
        work = json.loads(proc.stdout)
    print(f"\ncost per block of {BLOCK:,} conversions (execute only, CPU us per conversion, median "
          f"of {a.runs} process(es)).  'block' = the block's CPU time / its conversions; 'robust' "
          f"= the median of its {SUBBLOCKS} parts' CPU per conversion (a burst of other work on "
          "the machine moves one part, not the median).  'changing' = conversions of the block "
          "that change the attribute of at least one page (share of the block), 'pages' = pages "
          "whose attribute changes, per conversion (from the op stream, the same for both "
          "strategies; the attribute work only: dual also punches or discards on every "
          "conversion, changing or not)."
          + (f"  The first {a.warmup:,} conversions of the stream ran before block 1, untimed "
             "(--warmup)." if a.warmup else "  Block 1 starts from the freshly written guest "
             "(all memory private)."))
    print(f"  {'block':<6} {'changing':>9} {'pages':>6} "
          + " ".join(f"{s + ' block':>15} {s + ' robust':>16}" for s in strategies))
    boot = results[strategies[0]][0]["blocks"][0]
    print(f"  {'boot':<6} {'':>9} {'':>6} " + " ".join(
        f"{np.median([r['blocks'][0]['cpu_s'] for r in results[s]]):>13.2f} s {'':>16}"
        for s in strategies) + f"   ({guest // GiB:,} writes of 1 GiB"
        + (f" + {a.warmup:,} warm-up conversions)" if a.warmup else ")"))
    nblocks = len(results[strategies[0]][0]["blocks"]) - 1
    for i in range(1, nblocks + 1):
        cells = []
        for s in strategies:
            bl = [r["blocks"][i] for r in results[s]]
            cells.append(f"{np.median([b['cpu_s'] * 1e6 / b['ops'] for b in bl]):>15.3f} "
                         f"{np.median([robust_us(b) for b in bl]):>16.3f}")
        w = (f"{100 * work[i - 1]['changing'] / work[i - 1]['ops']:>8.1f}% "
             f"{work[i - 1]['pages'] / work[i - 1]['ops']:>6.0f}" if work else f"{'-':>9} {'-':>6}")
        print(f"  {i:<6} {w} " + " ".join(cells))
    if nblocks < 2:
        return
    frac = [w["changing"] / w["ops"] for w in work] if work else []
    wr = frac[-1] / frac[0] if frac and frac[0] else float("nan")
    if work:
        print(f"  the stream: share of changing conversions, last / first block {wr:.2f} "
              f"({100 * frac[0]:.1f}% -> {100 * frac[-1]:.1f}%); above 1: the last block asks "
              "for more attribute changes than the first")
    for s in strategies:
        robust = []
        for name, fig in (("block", lambda b: b["cpu_s"] / b["ops"]),
                          ("robust", robust_us),
                          ("wall", lambda b: b["wall_s"] / b["ops"])):
            ratios = [fig(r["blocks"][-1]) / fig(r["blocks"][1]) for r in results[s]
                      if fig(r["blocks"][1]) > 0]
            print(f"  {s}: last / first block, {name}: {med(ratios)} "
                  f"(goal 3: <= 1.2 over 2M conversions)")
            if name == "robust":
                robust = ratios
        if not work:
            continue
        robust = [x / wr for x in robust]
        print(f"  {s}: last / first block, robust, per changing conversion (robust / the "
              f"stream's ratio): {med(robust)}")


# Counted per block under callgrind (--callgrind): the events of one dump and the weights of
# the cycle estimate (cachegrind manual: an L1 miss costs ~10 cycles, a last-level miss up
# to ~200, a mispredicted branch 10-30; 100 and 15 are mid-range picks, an estimate only)
CG_WEIGHTS = {"Ir": 1, "L1m": 10, "LLm": 100, "Bm": 15}


def host_llc() -> str | None:
    """--LL=size,assoc,line of this host's last-level cache, from sysfs (None: unknown, and
    callgrind guesses)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        best = None
        for idx in sorted(os.listdir(base)):
            d = os.path.join(base, idx)
            rd = lambda f: open(os.path.join(d, f)).read().strip()
            if not idx.startswith("index") or rd("type") == "Instruction":
                continue
            level = int(rd("level"))
            size = rd("size")
            size = int(size[:-1]) * 1024 if size.endswith("K") else int(size)
            if best is None or level > best[0]:
                best = (level, size, int(rd("ways_of_associativity")), int(rd("coherency_line_size")))
        return f"{best[1]},{best[2]},{best[3]}" if best else None
    except (OSError, ValueError):
        return None


def callgrind_blocks(strategy: str, a) -> list[dict]:
    """One worker process under callgrind, counting only inside core_execute and dumping after
    every call, so each dump holds one timed part (the boot, then 10k conversions each);
    returns per block the summed events (simulated CPU: deterministic, no machine noise)."""
    import shutil
    import tempfile
    if not shutil.which("valgrind"):
        print("sim_scale: --callgrind needs valgrind on PATH", file=sys.stderr)
        raise SystemExit(2)
    llc = host_llc()
    with tempfile.TemporaryDirectory(prefix="sim_scale_cg_") as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no",
               "--toggle-collect=core_execute", "--dump-after=core_execute", "--cache-sim=yes",
               "--branch-sim=yes", f"--callgrind-out-file={out}"] + ([f"--LL={llc}"] if llc else [])
        cmd += one_cmd(strategy, a.guest, a.conversions, a.seed, a.engine, a.dual_copy, a.warmup)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"sim_scale: the callgrind worker for {strategy} failed with exit "
                             f"{proc.returncode}")
        parts = []
        n = 1
        while os.path.exists(f"{out}.{n}"):
            events = totals = None
            with open(f"{out}.{n}") as f:
                for line in f:
                    if line.startswith("events:"):
                        events = line.split()[1:]
                    elif line.startswith("summary:") or line.startswith("totals:"):
                        totals = [int(x) for x in line.split()[1:]]
            if events is None or totals is None:
                raise SystemExit(f"sim_scale: callgrind dump {out}.{n} has no events/summary line")
            parts.append(dict(zip(events, totals)))
            n += 1
    r = json.loads(proc.stdout)
    sizes = [b["ops"] for b in r["blocks"][1:]]           # conversions per block
    nparts = [len(b["sub_cpu_us"]) for b in r["blocks"][1:]]
    if len(parts) != 1 + sum(nparts):
        raise SystemExit(f"sim_scale: expected {1 + sum(nparts)} callgrind dumps (one per "
                         f"execute call), found {len(parts)}")
    blocks, i = [], 1
    for ops, k in zip(sizes, nparts):
        ev = {}
        for p in parts[i:i + k]:
            for key, v in p.items():
                ev[key] = ev.get(key, 0) + v
        i += k
        g = lambda *names: sum(ev.get(x, 0) for x in names)
        c = {"ops": ops, "Ir": g("Ir"), "L1m": g("I1mr", "D1mr", "D1mw"),
             "LLm": g("ILmr", "DLmr", "DLmw"), "Bm": g("Bcm", "Bim")}
        c["est"] = sum(CG_WEIGHTS[k] * c[k] for k in CG_WEIGHTS)
        blocks.append(c)
    return blocks, llc


def print_callgrind(strategies: list, a) -> None:
    print(f"\ncounted by callgrind (one process per strategy; simulated CPU: instructions, an "
          f"L1 and a last-level cache, a branch predictor; deterministic, so no machine noise): "
          f"per conversion, inside core_execute only (the simulated kernel work)")
    res = {}
    for s in strategies:
        res[s], llc = callgrind_blocks(s, a)
    print(f"  last-level cache simulated: {llc or 'callgrind default (host LLC unknown)'} "
          "(size, ways, line; this host's, from sysfs)")
    print(f"  est = Ir + {CG_WEIGHTS['L1m']} x L1 misses + {CG_WEIGHTS['LLm']} x LL misses + "
          f"{CG_WEIGHTS['Bm']} x mispredicted branches (an estimate of cycles; weights from "
          "the cachegrind manual's ranges)")
    print(f"  {'block':<6} " + " ".join(f"{s + ' Ir':>12} {'LLm':>6} {'Bm':>6} {'est':>7}"
                                        for s in strategies))
    for i in range(len(res[strategies[0]])):
        cells = []
        for s in strategies:
            c = res[s][i]
            cells.append(f"{c['Ir'] / c['ops']:>12.0f} {c['LLm'] / c['ops']:>6.2f} "
                         f"{c['Bm'] / c['ops']:>6.2f} {c['est'] / c['ops']:>7.0f}")
        print(f"  {i + 1:<6} " + " ".join(cells))
    if len(res[strategies[0]]) >= 2:
        for s in strategies:
            f, l = res[s][0], res[s][-1]
            ratio = lambda k: (l[k] / l["ops"]) / (f[k] / f["ops"]) if f[k] else float("nan")
            print(f"  {s}: last / first block: Ir {ratio('Ir'):.2f}, L1 misses {ratio('L1m'):.2f}, "
                  f"LL misses {ratio('LLm'):.2f}, mispredicted branches {ratio('Bm'):.2f}, "
                  f"est {ratio('est'):.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guest", default="128G", help="guest size of the timed runs")
    ap.add_argument("--conversions", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3, help="processes per strategy (median)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strategy", action="append", choices=["in-place", "dual"])
    ap.add_argument("--engine", choices=["c", "python"], default="c",
                    help="simulator engine: the C core (default) or the Python reference")
    ap.add_argument("--rss-guests", default="8G,128G,1T",
                    help="comma-separated guest sizes for the RSS table ('' = skip); the "
                         "timed runs' size is taken from them, the others run once")
    ap.add_argument("--dual-copy", action="store_true",
                    help="dual copies the contents at each conversion (strategy option "
                         "copy=auto; the default dual, like QEMU, discards without copying)")
    ap.add_argument("--warmup", type=int, default=0, metavar="N",
                    help="run N conversions before the measured ones, untimed (a control: the "
                         "per-block figures then start from the state the stream has reached, "
                         "not from a freshly written guest; warm-up and measured conversions are "
                         "drawn as one stream of N + --conversions)")
    ap.add_argument("--callgrind", action="store_true",
                    help="count instead of timing: one process per strategy under valgrind's "
                         "callgrind (cache and branch simulation, this host's last-level cache); "
                         "prints instructions, cache misses and mispredicted branches per "
                         "conversion per block (deterministic; ~20-50x slower than a timed run)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--stream-work", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    from bench.sim.backend import parse_size
    guest = parse_size(a.guest, "--guest")
    if guest < GiB or guest % GiB:
        print(f"--guest {a.guest}: expected a whole number of GiB (the boot writes the guest "
              "in 1 GiB ops)", file=sys.stderr)
        return 2
    if a.runs < 1 or a.conversions < 1 or a.warmup < 0:
        print("--runs and --conversions: expected a positive integer; --warmup: expected an "
              "integer >= 0", file=sys.stderr)
        return 2
    if a.stream_work:
        print(json.dumps(stream_work(guest, a.warmup, a.conversions, a.seed)))
        return 0
    if a.one:
        try:
            print(json.dumps(one(a.one, guest, a.conversions, a.seed, a.engine, a.dual_copy,
                                  a.warmup)))
        except EngineMissing as e:
            print(f"sim_scale: the C engine (bench.sim._core) cannot be loaded ({e}); "
                  "install the package with a C compiler and cffi (pip install .), or pass "
                  "--engine python to measure the reference on purpose. Not falling back.",
                  file=sys.stderr)
            return 2
        return 0
    strategies = a.strategy or ["in-place", "dual"]
    load0 = os.getloadavg()
    print(f"simulator scale: guest {a.guest} ({guest / GiB:.0f} GiB), 2M folios, anon THP shared "
          f"backing, {a.conversions:,} conversions of 4K-2M at random offsets after the guest "
          f"wrote all memory"
          f"{f' and {a.warmup:,} untimed warm-up conversions of the same stream' if a.warmup else ''}"
          f"; seed {a.seed}; dual "
          f"{'copies contents (copy=auto)' if a.dual_copy else 'discards without copying (default)'}")
    print(f"engine: {a.engine} ({'C core, bench/sim/core.c' if a.engine == 'c' else 'Python reference, bench/sim/model.py'})"
          f"; {'1 process per strategy under callgrind' if a.callgrind else f'{a.runs} process(es) per strategy'}; load average {load0[0]:.2f} {load0[1]:.2f}"
          f" {load0[2]:.2f}; {os.cpu_count()} CPUs")
    if a.callgrind:
        print_callgrind(strategies, a)
        return 0
    results = {s: [run_worker(s, a.guest, a.conversions, a.seed, a.engine, a.dual_copy,
                              a.warmup)
                   for _ in range(a.runs)]
               for s in strategies}
    for s in strategies:
        names = {r["target"] for r in results[s]}
        print(f"\n{s}: target {', '.join(sorted(names))}; conversions "
              f"{results[s][0]['conversions']:,} ({results[s][0]['failed']:,} failed)")
        print(f"  {'phase':<9} {'wall s, median [min-max]':>26} {'CPU s, median [min-max]':>26}")
        for name, _ in PHASES:
            print(f"  {name:<9} {med([r['wall_s'][name] for r in results[s]]):>26} "
                  f"{med([r['cpu_s'][name] for r in results[s]]):>26}")
        r0 = results[s][0]
        print(f"  peak RSS {med([r['peak_rss_mib'] for r in results[s]])} MiB; footprint "
              f"{r0['footprint_gib']:.2f} GiB; huge coverage {r0['huge_coverage']:.3f}; "
              f"p50 latency (simulated) {r0['p50_us']:.2f} us")
    print("\nwhat each figure includes (wall = perf_counter, CPU = user+sys of the process):")
    for name, what in PHASES:
        print(f"  {name:<9} {what}")
    print("  peak RSS  ru_maxrss of the worker process: Python, numpy, op and step arrays, "
          "the model's state")

    print_blocks(results, strategies, guest, a)

    guests = [g for g in a.rss_guests.split(",") if g.strip()]
    if guests:
        print(f"\npeak RSS by guest size, same stream ({a.conversions:,} conversions), one "
              "process each (the timed runs' median for their size):")
        print(f"  {'guest':<7} " + " ".join(f"{s + ' MiB':>14} {'MiB/GiB':>8} {'wall s':>7}"
                                           for s in strategies))
        for g in guests:
            size = parse_size(g.strip(), "--rss-guests")
            cells = []
            for s in strategies:
                if size == guest:
                    rs = results[s]
                    rss = float(np.median([r["peak_rss_mib"] for r in rs]))
                    wall = float(np.median([r["wall_s"]["process"] for r in rs]))
                else:
                    # the last measured MiB/GiB predicts the need; don't push a shared
                    # machine into the OOM killer
                    per_gib = max(r["peak_rss_mib"] for r in results[s]) / (guest / GiB)
                    need = per_gib * size / GiB * MiB * 1.2
                    avail = mem_available()
                    if avail is not None and need > avail:
                        cells.append(f"{'skipped: needs ~' + str(int(need / MiB)) + ' MiB':>31}")
                        continue
                    rc, out, err, wall = worker(s, g.strip(), a.conversions, a.seed, a.engine,
                                                a.dual_copy, a.warmup)
                    if rc:
                        msg = (err.strip().splitlines() or ["?"])[-1]
                        cells.append(f"does not fit: {msg[-60:]}")
                        continue
                    rss = json.loads(out)["peak_rss_mib"]
                cells.append(f"{rss:>14.0f} {rss / (size / GiB):>8.2f} {wall:>7.1f}")
            print(f"  {g.strip():<7} " + " ".join(cells))
    load1 = os.getloadavg()
    print(f"\nload average at the end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print("issue 9 targets: goal 2: 1 TiB guest <= 5 s per strategy, <= 1 GiB peak RSS; "
          "goal 3: last/first block <= 1.2 over 2,000,000 conversions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
