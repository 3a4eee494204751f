"""Measure a module on an input: FLOPs, parameters, latency and peak memory.

- FLOPs come from torch's own `FlopCounterMode` (matmuls, convolutions and attention, counted
  as 2 x multiply-adds); element-wise work is not counted, as in torch.
- Latency is the median of repeated runs after warm-up, CUDA-synchronised on GPU.
- Peak memory is the extra memory a call needs above what was in use before it: on CUDA,
  `max_memory_allocated`; on CPU, the process's peak resident set (VmHWM), reset before the call
  through /proc/self/clear_refs, with a sampling thread as the fallback where that is refused.
- CPU time (`cpu_seconds`) is the user + system time of this process and of its finished child
  processes (rollout workers, DataLoader workers), as the kernel accounts it.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of aten._scaled_dot_product_flash_attention_for_cpu: QK^T and AV, 2 x MACs.

    torch's counter knows the CUDA attention kernels but not this CPU one, so without this
    every CPU call of F.scaled_dot_product_attention would count as 0 FLOPs.
    """
    *batch, lq, e = query_shape
    lk, ev = key_shape[-2], value_shape[-1]
    b = math.prod(batch)
    return 2 * b * lq * lk * e + 2 * b * lq * lk * ev


def _custom_flop_mapping() -> dict[Any, Callable[..., int]]:
    mapping: dict[Any, Callable[..., int]] = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_flash_attention_flops
    return mapping


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, taught the CPU attention kernel."""
    return FlopCounterMode(display=False, custom_mapping=_custom_flop_mapping())


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of `fn` (no arguments: wrap the module call in a lambda)."""
    with torch.no_grad(), flop_counter() as counter:
        fn()
    return float(counter.get_total_flops())


def module_flops(module: torch.nn.Module, *args: Any, **kwargs: Any) -> float:
    return count_flops(lambda: module(*args, **kwargs))


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    fn: Callable[[], Any],
    device: torch.device | str | None = None,
    warmup: int = 2,
    repeats: int = 5,
    max_seconds: float | None = None,
) -> float:
    """Median wall time of `fn()` in milliseconds after `warmup` calls.

    `max_seconds` caps the total time spent: slow calls get fewer repeats (at least one).
    """
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        _sync(device)
        times: list[float] = []
        start = time.perf_counter()
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
    return statistics.median(times)


_libc = None


def _trim_heap() -> None:
    """Give freed heap back to the OS so an earlier call's memory does not hide this one's."""
    global _libc
    gc.collect()
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, self.proc.memory_info().rss)


def measure_peak_memory(fn: Callable[[], Any], device: torch.device | str | None = None) -> float:
    """Extra peak memory of one `fn()` call in MiB (see the module docstring)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with torch.no_grad():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            fn()
            torch.cuda.synchronize(dev)
            return (torch.cuda.max_memory_allocated(dev) - base) / 2**20
        _trim_heap()
        base = psutil.Process().memory_info().rss
        if _reset_peak_rss() and _vm_hwm_bytes() is not None:
            fn()
            peak = _vm_hwm_bytes() or base
        else:
            sampler = _RssSampler()
            sampler.start()
            try:
                fn()
            finally:
                peak = sampler.stop()
        return max(0.0, (peak - base) / 2**20)


@dataclass
class Measurement:
    flops: float
    params: int
    latency_ms: float
    peak_mem_mb: float


def measure(
    module: torch.nn.Module | None,
    fn: Callable[[], Any],
    device: torch.device | str | None = None,
    warmup: int = 2,
    repeats: int = 5,
    max_seconds: float | None = None,
) -> Measurement:
    """All four figures for `fn` (which calls `module`)."""
    flops = count_flops(fn)
    peak = measure_peak_memory(fn, device)
    latency = measure_latency(fn, device, warmup=warmup, repeats=repeats, max_seconds=max_seconds)
    return Measurement(
        flops=flops,
        params=count_params(module) if module is not None else 0,
        latency_ms=latency,
        peak_mem_mb=peak,
    )


def cpu_seconds() -> float:
    """User + system CPU seconds used so far by this process (all its threads) and by the child
    processes it has waited for (process pools, DataLoader workers once they exit). A difference
    of two calls is the CPU time of the work between them, whatever the thread count."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def machine_info() -> dict[str, Any]:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": f"{cpu} ({os.cpu_count()} cores)",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
