"""CPU threads: how many torch uses, and how its OpenMP threads wait.

On a small shared machine the default of PyTorch's OpenMP build degrades badly when another
process takes a core: every parallel region ends at a barrier, GNU OpenMP's threads spin there
before sleeping, and a thread whose core was taken keeps the others spinning. Measured with
`python benchmarks/thread_contention.py` (the README quotes the figures). Two defaults follow:

* `OMP_WAIT_POLICY=PASSIVE` unless the user set a policy: threads sleep at a barrier instead of
  spinning. OpenMP reads it once, when torch is first imported, so `medvtc/__init__.py` sets it
  before anything imports torch (importing torch before medvtc keeps OpenMP's default).
* `train.threads` (0 = `default_threads()`): `OMP_NUM_THREADS` when the user set it, else the
  cores this process may run on (`os.sched_getaffinity`, which respects `taskset` and container
  CPU sets, unlike `os.cpu_count`).
"""

from __future__ import annotations

import os

# Set to keep OpenMP's own wait policy (benchmarks/thread_contention.py measures it so).
KEEP_WAIT_POLICY_ENV = "MEDVTC_KEEP_OMP_WAIT_POLICY"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """`OMP_NUM_THREADS` when it is set to a positive integer, else `usable_cores()`."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    return usable_cores()


def configure_threads(threads: int = 0) -> int:
    """Use `threads` torch intra-op threads (0: `default_threads()`); returns the number set."""
    import torch

    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: the default), got {threads}")
    n = threads or default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def prefer_passive_wait() -> None:
    """Make OpenMP threads sleep at barriers unless the user chose a wait policy (call before
    torch is imported; see the module docstring)."""
    if os.environ.get(KEEP_WAIT_POLICY_ENV):
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


__all__ = ["KEEP_WAIT_POLICY_ENV", "configure_threads", "default_threads", "prefer_passive_wait", "usable_cores"]
