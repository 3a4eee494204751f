"""Training samples/s of one LIBERO policy from the images and from the token cache, side by side.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/token_cache_throughput.py --root data/libero_object_demos \
        policy.dim_model=128 --batch-size 16 --threads 1

Both runs are the same policy (frozen ImageNet MobileNetV2, `policy.vision_backbone=mobilenetv2_imagenet`,
same seed, same initial weights) trained as `medvtc train` does (DataLoader with num_workers 0 and
shuffling, the policy's preprocessor, forward, backward, gradient clipping, AdamW): one reads the
LeRobotDataset (PNG decoding, the backbone on every step), the other `TokenDemonstrations` on the
token cache (`policy.cache_tokens=true`). They alternate in rounds of `--steps` steps after a
warm-up, so both see the same machine load; samples/s is the median over rounds, and the time a
step spends waiting for its batch is reported apart. The cache is built first in a fresh
temporary folder (or reused from `--cache-dir`), and its build time and size are reported. The
result is printed as JSON (and written to `-o`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medvtc.common.io import atomic_write_json
from medvtc.tasks import get_task


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="a LeRobotDataset v3 folder (medvtc data --task libero)")
    ap.add_argument("--steps", type=int, default=20, help="steps per round and run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--views", type=int, default=4, help="policy.cache_views")
    ap.add_argument("--cache-dir", default=None, help="token cache root (default: a fresh temporary folder)")
    ap.add_argument("-o", "--output", default=None)
    ap.add_argument("overrides", nargs="*", help="libero config overrides, e.g. policy.dim_model=128")
    args = ap.parse_args(argv)

    from medvtc.robotics.token_dataset import TokenDemonstrations, build_token_cache, cache_root

    torch.set_num_threads(args.threads)
    task = get_task("libero")
    tmp = None if args.cache_dir else tempfile.TemporaryDirectory(prefix="token_cache_")
    cache_dir = args.cache_dir or tmp.name
    common = [f"data.root={args.root}", f"data.cache_dir={cache_dir}", "policy.vision_backbone=mobilenetv2_imagenet",
              f"train.batch_size={args.batch_size}", "train.device=cpu", "train.progress=false", *args.overrides]
    cfg = task.load_config(None, [*common, "policy.cache_tokens=true", f"policy.cache_views={args.views}"])

    runs = {}
    for name in ("images", "cache"):
        policy, pre, _, frames = task.build(task.load_config(None, common), "cpu")  # same seed: same initial weights
        data, info = frames, {}
        if name == "cache":
            t0 = time.perf_counter()
            cache = build_token_cache(policy, pre, frames, cache_root(args.root, cache_dir), data_root=args.root,
                                      views=cfg.policy.cache_views, image_shift=cfg.policy.image_shift)
            info = {"cache_s": round(time.perf_counter() - t0, 1), "frames": len(cache), "views": cache.views,
                    "cache_mb": round(sum(p.stat().st_size for p in cache.path.iterdir()) / 2**20, 1),
                    "token_shape": cache.meta["token_shape"]}
            data = TokenDemonstrations(frames, cache, policy.model.image_keys)
        loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(0), num_workers=0)
        params = [p for p in policy.parameters() if p.requires_grad]
        runs[name] = {"policy": policy.train(), "pre": pre, "loader": loader, "it": iter(loader), "params": params,
                      "opt": torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-4), "rate": [], "wait": [], **info}

    def step(run) -> float:
        t = time.perf_counter()
        try:
            batch = next(run["it"])
        except StopIteration:
            run["it"] = iter(run["loader"])
            batch = next(run["it"])
        waited = time.perf_counter() - t
        loss, _ = run["policy"].forward(run["pre"](batch))
        run["opt"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run["params"], 1.0)
        run["opt"].step()
        return waited

    for run in runs.values():
        for _ in range(args.warmup):
            step(run)
    for _ in range(args.rounds):
        for run in runs.values():
            t, waited = time.perf_counter(), 0.0
            for _ in range(args.steps):
                waited += step(run)
            seconds = time.perf_counter() - t
            run["rate"].append(args.steps * args.batch_size / seconds)
            run["wait"].append(waited / seconds)

    result = {
        "root": str(Path(args.root).resolve()), "overrides": args.overrides, "batch_size": args.batch_size,
        "threads": args.threads, "steps_per_round": args.steps, "rounds": args.rounds,
        "trained_params": sum(p.numel() for p in runs["cache"]["params"]),
        "samples_per_s": {k: round(float(np.median(r["rate"])), 2) for k, r in runs.items()},
        "samples_per_s_rounds": {k: [round(v, 2) for v in r["rate"]] for k, r in runs.items()},
        "data_wait_fraction": {k: round(float(np.median(r["wait"])), 3) for k, r in runs.items()},
        **{k: runs["cache"][k] for k in ("frames", "views", "token_shape", "cache_mb", "cache_s")},
    }
    result["speedup"] = round(result["samples_per_s"]["cache"] / result["samples_per_s"]["images"], 2)
    print(json.dumps(result, indent=1))
    if args.output:
        atomic_write_json(args.output, result)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
