"""How the sweep engine scales (prints figures; not a test).

1. Speed-up: the same sweep of POINTS simulator points (x 2 strategies x 1 repetition) on
   an embedded cluster with 1 worker and with the default (one worker per CPU), each from
   an empty cache.  Wall time of run_tasks (cluster start-up reported apart).
2. Engine overhead: what the engine adds per point inside the sweep itself (1 worker: wall
   time less the worker-measured task times, per task; points travel in batches, see
   bench/sweep/engine.py batch_size), against the median task time.  Goal < 5%.  Also the
   raw Dask figures: the round trip of one empty task (submit -> result, one at a time) and
   empty tasks streamed one per Dask task, which is what an unbatched point would pay.
3. Client memory: the client's RSS sampled as results stream in (start, 25%, 50%, 100%).

    python benchmarks/sweep_scale.py [--points 200] [--requests 1500]

Measured on the 2-vCPU VM this suite was built on (2026-12-03, idle but for this run, load
average about 1):
    400 tasks: 1 worker 12.6 s, 2 workers 6.1 s: speed-up 2.08x (another run 1.39x: the
    machine is a shared VM)
    median task 27.9 ms; engine cost per point inside the sweep 1.05 ms (3.5% of it, points
    in batches of 16); raw Dask: one empty task's round trip 11.6 ms (41.7%), empty tasks
    streamed one per Dask task 4.5 ms (16.2%) - why points are batched
    client RSS by results received: 0: 70 MiB, 100: 71, 200: 71, 400: 71 (flat)
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

WORKLOAD = """
[workload]
description = "sweep_scale benchmark workload"
repetitions = 1
seed = 3

[layout]
gmem_page_size = "2m"
shared_backing = "memfd"
shared_page = "thp"
platform = "preserve"

[[layout.memslot]]
gpa = 0
size = "256M"

[[phase]]
name = "churn"
generator = "mixed"
requests = {requests}
"""

SPEC = """
[sweep]
name = "scale"
workloads = ["bench-wl.toml"]
repetitions = 1

[[axis]]
key = "cost.attr_update"
name = "attr_update"
values = [{values}]
"""


def rss_mib() -> float:
    import psutil
    return psutil.Process().memory_info().rss / (1 << 20)


def run(plan, cache: Path, workers: int | None, samples: list | None = None) -> dict:
    from bench.sweep.engine import open_client, run_tasks
    t0 = time.perf_counter()
    with open_client(workers=workers) as client:
        t_up = time.perf_counter() - t0
        n = len(plan.tasks)
        marks = {max(1, n // 4), max(1, n // 2), n}
        count = [0]

        def on_result(res):
            count[0] += 1
            if samples is not None and count[0] in marks:
                samples.append((count[0], rss_mib()))

        if samples is not None:
            samples.append((0, rss_mib()))
        t1 = time.perf_counter()
        stats = run_tasks(client, plan.tasks, cache, on_result=on_result)
        t_run = time.perf_counter() - t1
        overhead = engine_overhead(client) if workers is None else None
    return {"startup_s": t_up, "run_s": t_run, "stats": stats, "overhead": overhead}


def engine_overhead(client, n: int = 200) -> dict:
    from distributed import as_completed
    from bench.sweep.engine import empty_task
    rt = []
    for i in range(n):
        t = time.perf_counter()
        client.submit(empty_task, i, pure=False).result()
        rt.append(time.perf_counter() - t)
    t = time.perf_counter()
    futs = as_completed([client.submit(empty_task, i, pure=False) for i in range(n)])
    for f in futs:
        f.result()
        f.release()
    batch = (time.perf_counter() - t) / n
    return {"round_trip_median_s": statistics.median(rt), "round_trip_p90_s": sorted(rt)[int(0.9 * n)],
            "streamed_per_task_s": batch}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--requests", type=int, default=1500, help="conversion requests per task's stream")
    args = ap.parse_args()
    from bench.sweep.engine import load_cached
    from bench.sweep.plan import make_plan
    from bench.sweep.spec import load_spec
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sweep-scale-") as tmp:
        tmp = Path(tmp)
        (tmp / "bench-wl.toml").write_text(WORKLOAD.format(requests=args.requests))
        values = ", ".join(str(100 + 5 * i) for i in range(args.points))
        (tmp / "scale.toml").write_text(SPEC.format(values=values))
        plan = make_plan(load_spec(str(tmp / "scale.toml")))
        print(f"sweep: {len(plan.points)} simulator points x 2 strategies x 1 repetition = "
              f"{len(plan.tasks)} tasks; {os.cpu_count()} CPUs; load average before {load0[0]:.2f}")
        one = run(plan, tmp / "cache1", workers=1)
        mem = []
        default = run(plan, tmp / "cache2", workers=None, samples=mem)
        for r in (one, default):
            if r["stats"]["failed"]:
                print(f"{r['stats']['failed']} tasks failed: {r['stats']['errors'][:2]}")
                return 2
        task_s = [load_cached(tmp / "cache2", t.key)["task_s"] for t in plan.tasks]
        task1_s = [load_cached(tmp / "cache1", t.key)["task_s"] for t in plan.tasks]
    med = statistics.median(task_s)
    # the engine's cost per point inside a real sweep: with one worker, the run's wall time
    # less the time the worker spent in the tasks themselves, per task
    per_point = (one["run_s"] - sum(task1_s)) / len(task1_s)
    print(f"1 worker:       {one['run_s']:7.1f} s for {one['stats']['computed']} tasks "
          f"(cluster start {one['startup_s']:.1f} s)")
    print(f"default ({os.cpu_count()} workers): {default['run_s']:7.1f} s for "
          f"{default['stats']['computed']} tasks (cluster start {default['startup_s']:.1f} s)")
    print(f"speed-up:       {one['run_s'] / default['run_s']:.2f}x")
    o = default["overhead"]
    print(f"median task time (worker-measured): {1e3 * med:.1f} ms")
    print(f"empty task round trip: median {1e3 * o['round_trip_median_s']:.2f} ms, p90 "
          f"{1e3 * o['round_trip_p90_s']:.2f} ms = {100 * o['round_trip_median_s'] / med:.1f}% of the "
          f"median task")
    print(f"empty tasks streamed (as the sweep submits them): {1e3 * o['streamed_per_task_s']:.2f} ms "
          f"per task = {100 * o['streamed_per_task_s'] / med:.1f}% of the median task")
    print(f"engine cost per point inside the sweep (1 worker: wall - sum of task times, "
          f"batches of {one['stats']['batch']} points per Dask task): {1e3 * per_point:.2f} ms "
          f"= {100 * per_point / statistics.median(task1_s):.1f}% of the median task")
    print("client RSS (MiB) by results received: " +
          ", ".join(f"{n}: {m:.0f}" for n, m in mem))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
