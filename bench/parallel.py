"""Worker processes for the parts of a run that are independent and deterministic
(simulator repetitions, report figures): how many, and whether this process may have them.

Workers are forked, so they start with everything this process has imported (numpy,
matplotlib, the C engine) and nothing is re-imported per task.  A daemonic process (a
multiprocessing or Dask worker running a sweep) may not have children, and a platform
without fork runs everything in-process: both get None / 1 here and run serially.
"""
import multiprocessing
import os


def cpus_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def fork_pool(jobs: int):
    """A ProcessPoolExecutor of `jobs` forked workers, or None when jobs <= 1 or this
    process cannot have forked children."""
    if jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods() \
            or multiprocessing.current_process().daemon:
        return None
    from concurrent.futures import ProcessPoolExecutor
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"))
    # with fork, the first submit starts every worker: do it now, before this process
    # starts threads of its own (a progress bar's monitor), which a fork would not carry
    pool.submit(int)
    return pool
