"""Run independent jobs (one phantom volume each) in worker processes, results in job order.

`map_in_order(fn, jobs, workers)` is `[fn(job) for job in jobs]`; with `workers > 1` the calls run
in a `ProcessPoolExecutor` whose processes are started with `spawn` (a fresh interpreter: safe
with torch and OpenMP threads in the parent, unlike `fork`), each limited to one
OpenMP/BLAS/torch thread so `workers` processes use `workers` cores. `fn` and the jobs must be
picklable (a module-level function, or a `functools.partial` of one, and plain data). The
results are the same objects the serial loop would return, in the same order, so a caller that
writes them (and the files `fn` writes) gets the same bytes with any number of workers.

On an error in a job (or Ctrl-C) the jobs not yet started are cancelled and the running ones are
waited for before the error is raised, so no worker is still writing when the caller cleans up.
Spawned workers import the main script again, so a script that calls this with `workers > 1`
needs the usual `if __name__ == "__main__":` guard (the `medvtc` command has it).
"""

from __future__ import annotations

import multiprocessing
import operator
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

from medvtc.common.errors import UserError

__all__ = ["available_cores", "resolve_workers", "map_in_order"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; the CPU count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | None, jobs: int) -> int:
    """How many processes to use for `jobs` jobs: `workers` (None = `available_cores()`), at most
    one per job; 1 inside a daemonic process (a DataLoader or pool worker cannot have children)."""
    if workers is None:
        count = available_cores()
    else:
        try:
            count = -1 if isinstance(workers, bool) else operator.index(workers)  # an int, numpy's included
        except TypeError:
            count = -1
        if count < 1:
            raise UserError(f"workers={workers!r}: expected a positive integer (1 = no worker processes) or None (all cores)")
    if multiprocessing.current_process().daemon:
        return 1
    return max(1, min(count, jobs))


def _one_thread() -> None:
    """Worker initializer: one OpenMP/BLAS thread. The variables cover libraries loaded from now
    on (the job's module, numpy, is imported after this runs); threadpoolctl and torch cover any
    already loaded (a `__main__` script that imported numpy, re-imported by spawn)."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(1)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def map_in_order(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int = 1,
                 progress: Callable[[], None] | None = None) -> list[Any]:
    """`[fn(job) for job in jobs]`, in `workers` processes when `workers > 1` (see the module
    docstring); `progress()` is called once per finished job."""
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            results.append(fn(job))
            if progress is not None:
                progress()
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_one_thread) as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        try:
            for future in as_completed(futures):
                future.result()  # raises the job's error
                if progress is not None:
                    progress()
        except BrokenProcessPool as exc:
            pool.shutdown(wait=True, cancel_futures=True)
            raise RuntimeError(
                f"a worker process ended abruptly ({exc}): it was killed or ran out of memory, or the script that "
                "started it has no `if __name__ == \"__main__\":` guard, which spawned workers need (they import the "
                "main script again); pass workers=1 to work in this process"
            ) from exc
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        return [future.result() for future in futures]
