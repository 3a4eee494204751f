"""How a CPU training step degrades when another process takes a core (issue 20, item 4).

    python benchmarks/thread_contention.py            # prints a table; --json FILE writes it too

The workload is one training step (forward + backward + AdamW) of the default ct-report model
(`CTReportModel(CTReportConfig())` with its 10 HU-interval input channels, batch 8 as in
ct-report.yaml, random volumes and reports), the
step `medvtc train --task ct-report` repeats. Each setting runs in a fresh process (OpenMP reads
its environment once, at start-up), alone and while one single-threaded busy loop runs beside
it, and reports the median step time of `--steps` steps after `--warmup`, each with its 95 %
percentile-bootstrap interval over the steps, and the slowdown (contended / alone medians) with
an interval from resampling the two runs' steps independently.

Settings: torch threads = every usable core (this machine's default) or 1, with GNU OpenMP's
wait policy left at its default (threads spin before sleeping at every barrier) or PASSIVE
(they sleep at once), which `medvtc` sets before torch is imported unless the user set one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

WORKLOAD = r"""
import os, sys, time, json, statistics
import torch
from medvtc.common.threads import configure_threads
from medvtc.medical.ct_report.configuration_ct_report import CTReportConfig
from medvtc.medical.ct_report.modeling_ct_report import CTReportModel
threads = int(sys.argv[1]); steps = int(sys.argv[2]); warmup = int(sys.argv[3])
configure_threads(threads)
torch.manual_seed(0)
cfg = CTReportConfig(in_channels=10, prompt_token_ids=[1, 2, 3])  # a prompt: ids only matter for generation
model = CTReportModel(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randn(8, 10, *cfg.image_size)
ids = torch.randint(4, cfg.text_config.vocab_size, (8, 48))
times = []
for i in range(warmup + steps):
    t0 = time.perf_counter()
    out = model(pixel_values=x, input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    out.loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    if i >= warmup:
        times.append(time.perf_counter() - t0)
print(json.dumps({"median_s": statistics.median(times), "times_s": times, "threads": torch.get_num_threads(),
                  "wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)")}))
"""

BUSY = "while True: pass"


def run(threads: int, wait_policy: str | None, contended: bool, steps: int, warmup: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    if wait_policy is not None:
        env["OMP_WAIT_POLICY"] = wait_policy
    else:
        env["MEDVTC_KEEP_OMP_WAIT_POLICY"] = "1"  # measure OpenMP's own default (medvtc would set PASSIVE)
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if contended else None
    try:
        time.sleep(0.5 if contended else 0.0)
        out = subprocess.run([sys.executable, "-c", WORKLOAD, str(threads), str(steps), str(warmup)],
                             env=env, capture_output=True, text=True, check=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median_ci(times: np.ndarray) -> list[float]:
    from medvtc.common.intervals import bootstrap_interval

    return [round(v, 3) for v in bootstrap_interval(lambda c: float(np.median(c["t"])), {"t": times})]


def _ratio_ci(alone: np.ndarray, contended: np.ndarray) -> list[float]:
    """Percentile bootstrap of median(contended) / median(alone), the two runs resampled
    independently (different processes: nothing pairs their steps)."""
    from scipy.stats import bootstrap

    res = bootstrap((contended, alone), lambda b, a, axis=-1: np.median(b, axis=axis) / np.median(a, axis=axis),
                    n_resamples=2000, method="percentile", vectorized=True, rng=np.random.default_rng(0))
    return [round(float(res.confidence_interval.low), 2), round(float(res.confidence_interval.high), 2)]


def contention_row(threads: int, policy: str | None, figures: dict, alone: np.ndarray, contended: np.ndarray) -> dict:
    """One setting as a row of the project's benchmark json (DESIGN.md): the figures and their
    intervals under `metrics`, every step time under `cases`; `latency_ms` is the median step alone."""
    return {"method": f"threads={threads} wait_policy={policy or '(default)'}", "threads": threads,
            "wait_policy": policy or "(default)", "latency_ms": round(1000 * figures["alone_s"], 1), "metrics": figures,
            "cases": {"alone_times_s": np.asarray(alone).round(4).tolist(),
                      "contended_times_s": np.asarray(contended).round(4).tolist()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    rows = []
    for threads, policy in ((cores, None), (cores, "PASSIVE"), (1, None), (1, "PASSIVE")):
        alone = run(threads, policy, False, args.steps, args.warmup)
        busy = run(threads, policy, True, args.steps, args.warmup)
        a, b = np.asarray(alone["times_s"]), np.asarray(busy["times_s"])
        figures = {"alone_s": round(alone["median_s"], 3), "alone_s_ci": _median_ci(a),
                   "contended_s": round(busy["median_s"], 3), "contended_s_ci": _median_ci(b),
                   "slowdown": round(busy["median_s"] / alone["median_s"], 2), "slowdown_ci": _ratio_ci(a, b)}
        rows.append(contention_row(threads, policy, figures, a, b))
        print(f"threads {threads}, OMP_WAIT_POLICY {policy or '(default)':>9}: alone {figures['alone_s']:.3f} "
              f"{figures['alone_s_ci']} s/step, with one busy process {figures['contended_s']:.3f} "
              f"{figures['contended_s_ci']} s/step ({figures['slowdown']:.2f}x {figures['slowdown_ci']})", flush=True)
    if args.json:
        from medvtc.common.accounting import machine_info
        from medvtc.common.io import atomic_write_json

        atomic_write_json(args.json, {"task": "thread_contention", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                      "machine": machine_info(), "config": {"cores": cores, "steps": args.steps,
                                                                            "warmup": args.warmup},
                                      "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
