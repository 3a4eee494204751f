"""medvtc.datasets.parallel: jobs in spawned worker processes, results in job order."""

from __future__ import annotations

import os

import numpy as np
import pytest

from medvtc.common.errors import UserError
from medvtc.datasets.parallel import available_cores, map_in_order, resolve_workers


def _square(x: int) -> tuple[int, int, str | None]:
    return x, x * x, os.environ.get("OMP_NUM_THREADS")


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("job 3 failed")
    return x


def test_available_cores_and_resolve_workers():
    assert available_cores() == len(os.sched_getaffinity(0))
    assert resolve_workers(None, 1000) == available_cores()
    assert resolve_workers(None, 1) == 1  # at most one process per job
    assert resolve_workers(8, 3) == 3 and resolve_workers(1, 100) == 1
    assert resolve_workers(np.int64(2), 10) == 2
    for bad in (0, -1, 2.0, "2", True):
        with pytest.raises(UserError, match="workers"):
            resolve_workers(bad, 10)


def test_map_in_order_serial_and_in_workers():
    jobs = list(range(7))
    ticks = []
    serial = map_in_order(_square, jobs, 1, lambda: ticks.append(1))
    assert [r[:2] for r in serial] == [(x, x * x) for x in jobs] and len(ticks) == 7
    ticks.clear()
    parallel = map_in_order(_square, jobs, 2, lambda: ticks.append(1))
    assert [r[:2] for r in parallel] == [r[:2] for r in serial] and len(ticks) == 7
    assert {r[2] for r in parallel} == {"1"}  # each worker: one OpenMP/BLAS thread


def test_a_failing_job_raises_its_error():
    with pytest.raises(ValueError, match="job 3 failed"):
        map_in_order(_fail_on_three, list(range(6)), 2)
    with pytest.raises(ValueError, match="job 3 failed"):
        map_in_order(_fail_on_three, list(range(6)), 1)
