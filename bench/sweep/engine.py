"""Running tasks on Dask distributed, with a result cache keyed by the task key.

By default an embedded LocalCluster (one single-threaded worker process per CPU: the
simulator holds the GIL); `--scheduler ADDRESS` or `--scheduler-file F` use an existing
cluster unchanged.  Results stream back as they finish (as_completed) and each one is
written at once, atomically, to CACHE/<key>.json, so a killed sweep loses only the batches
in flight and a rerun - or a larger sweep containing this one - computes only what is missing.
The client keeps a bounded window of tasks in flight and holds no result after writing
it, so its memory stays flat however long the sweep.

Host-backend tasks ask for the worker resource HOSTLOCK (1 unit): a worker host must offer
it on exactly one worker (`dask worker --resources hostlock=1`), so at most one task that
measures the host runs per machine.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from bench.errors import InputError
from bench.results import atomic_write_json

HOSTLOCK = "hostlock"


def cache_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"{key}.json"


def cached(cache_dir: Path, key: str) -> bool:
    return cache_path(cache_dir, key).is_file()


def load_cached(cache_dir: Path, key: str) -> dict:
    with open(cache_path(cache_dir, key), encoding="utf-8") as f:
        return json.load(f)


@contextmanager
def open_client(scheduler: str | None = None, scheduler_file: str | None = None,
                workers: int | None = None, host_backend: bool = False):
    """A dask.distributed Client: to an existing scheduler, or to an embedded LocalCluster
    (for host measurements: one worker holding the host lock, as nothing else may measure
    this machine at the same time)."""
    import logging
    from distributed import Client, LocalCluster
    logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler or scheduler_file:
        try:
            client = Client(scheduler, scheduler_file=scheduler_file, timeout="20s")
        except (OSError, TimeoutError, ValueError) as e:
            where = scheduler or scheduler_file
            raise InputError(f"--scheduler {where}: cannot connect ({e})")
        try:
            if host_backend:
                check_hostlocks(client)
            yield client
        finally:
            client.close()
        return
    n = 1 if host_backend else (workers or os.cpu_count() or 1)
    kw = {"resources": {HOSTLOCK: 1}} if host_backend else {}
    # a host repetition runs in a fresh child process (as `gmembench run`): the worker
    # process must be allowed children
    import dask
    dask.config.set({"distributed.worker.daemon": False})
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.CRITICAL, **kw)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def worker_hosts(client) -> dict[str, list[dict]]:
    """Host -> its workers (address, resources, threads)."""
    info = client.scheduler_info(n_workers=-1)["workers"] if _takes_n(client) else \
        client.scheduler_info()["workers"]
    hosts: dict[str, list[dict]] = defaultdict(list)
    for addr, w in info.items():
        hosts[w.get("host") or addr.rsplit(":", 1)[0]].append(
            {"address": addr, "resources": dict(w.get("resources") or {}),
             "nthreads": w.get("nthreads", 1)})
    return dict(hosts)


def _takes_n(client) -> bool:
    import inspect
    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def check_hostlocks(client) -> None:
    """Every host offers the host lock on at most one worker, and some host offers it."""
    hosts = worker_hosts(client)
    offering = 0
    for host, ws in hosts.items():
        total = sum(w["resources"].get(HOSTLOCK, 0) for w in ws)
        if total > 1:
            raise InputError(f"host {host} offers {HOSTLOCK}={total:g} over its workers: host "
                             f"measurements would overlap (start one worker per host with "
                             f"--resources {HOSTLOCK}=1, the others without)")
        offering += total > 0
    if not offering:
        raise InputError(f"no worker offers the {HOSTLOCK} resource that host-backend tasks "
                         f"need (start one worker per host with --resources {HOSTLOCK}=1)")


def cluster_threads(client) -> int:
    return sum(w["nthreads"] for ws in worker_hosts(client).values() for w in ws) or 1


def run_batch(func, tasks) -> list:
    """Run several tasks in one Dask task: [(result, None) | (None, "Type: message")], one per
    task, so a failing task does not take its batch-mates with it."""
    out = []
    for t in tasks:
        try:
            out.append((func(t), None))
        except Exception as e:        # reported by the client like a failed Dask task
            out.append((None, f"{type(e).__name__}: {e}"))
    return out


def batch_size(n_todo: int, threads: int) -> int:
    """Simulator tasks per Dask task.  A simulator point takes tens of ms while a Dask round
    trip costs a few ms, so points travel in batches - but never so few batches that a
    worker idles: at least 8 batches per worker thread, at most 16 points per batch."""
    return max(1, min(16, n_todo // (8 * max(1, threads))))


def run_tasks(client, tasks, cache_dir: Path, func=None, bar=None, window: int | None = None,
              on_result=None, batch: int | None = None) -> dict:
    """Run the tasks whose key is not cached; write each result to the cache as it comes.
    Simulator tasks go to the workers in batches (`batch_size`; host tasks always alone, each
    holding the host lock).  Returns counts {"cached", "computed", "failed"} and the first
    failures."""
    from distributed import as_completed
    from bench.sweep.task import run_task
    func = func or run_task
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    todo = [t for t in tasks if not cached(cache_dir, t.key)]
    stats = {"cached": len(tasks) - len(todo), "computed": 0, "failed": 0, "errors": [],
             "batch": 0}
    if bar is not None:
        bar.update(stats["cached"])
    if not todo:
        return stats
    threads = cluster_threads(client)
    batch = batch or batch_size(sum(t.backend != "host" for t in todo), threads)
    stats["batch"] = batch
    groups = [[t] for t in todo if t.backend == "host"]
    sim = [t for t in todo if t.backend != "host"]
    groups += [sim[i:i + batch] for i in range(0, len(sim), batch)]
    window = window or max(8, 4 * threads)
    it = iter(groups)
    futures = as_completed()
    sizes = {}

    def submit(n):
        for g in it:
            kw = {"resources": {HOSTLOCK: 1}} if g[0].backend == "host" else {}
            key = f"gmembench-{g[0].key}" + (f"+{len(g) - 1}" if len(g) > 1 else "")
            fut = client.submit(run_batch, func, g, key=key, pure=False, **kw)
            sizes[fut.key] = len(g)
            futures.add(fut)
            n -= 1
            if n == 0:
                break

    def failed(msg):
        stats["failed"] += 1
        if len(stats["errors"]) < 5:
            stats["errors"].append(msg)

    submit(window)
    for fut in futures:
        try:
            outs = fut.result()
        except Exception as e:        # the batch itself died (worker lost, ...)
            outs = [(None, f"{type(e).__name__}: {e}")] * sizes[fut.key]
        sizes.pop(fut.key, None)
        fut.release()
        for res, err in outs:
            if err is not None:
                failed(err)
            elif res is not None:
                atomic_write_json(cache_path(cache_dir, res["key"]), res)
                stats["computed"] += 1
                if on_result:
                    on_result(res)
            if bar is not None:
                bar.update(1)
        submit(1)
    return stats


def empty_task(x):
    """The engine's own cost: a task that does nothing (benchmarks/sweep_scale.py)."""
    return x

