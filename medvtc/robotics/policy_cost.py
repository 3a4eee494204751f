"""Visual tokens, FLOPs, parameters and CPU latency of the Compressor-VLA policy variants.

    python -m medvtc.robotics.policy_cost                 # all variants, 128 px, 2 cameras
    python -m medvtc.robotics.policy_cost --variants none,compressor_vla --threads 2

Untrained weights (costs do not depend on them). FLOPs come from torch's counter through
`medvtc.common.accounting` on one `predict_action_chunk` call at batch 1 (the whole policy:
backbone, instruction encoder, compressor, head); latency is its median over repeated calls
after warm-up (variants interleaved round by round), and the per-step figure divides it by `n_action_steps` (actions executed per
chunk, ACT-style), which is what a 20 Hz control loop pays on average.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Sequence

# name -> CompressorVLAConfig overrides. A budget of "match" means: as many tokens per camera as
# the compressor_vla variant keeps on the same grid (the paper's comparison at equal tokens).
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"compressor": "none"},
    "compressor_vla": {"compressor": "compressor_vla"},
    "compressor_vla_no_instruction": {"compressor": "compressor_vla", "compressor_args": {"use_instruction": False}},
    "stc_only": {"compressor": "stc", "compressor_budget": 16},
    "src_only": {"compressor": "src"},
    "pooling": {"compressor": "pooling", "compressor_budget": "match"},
    "random": {"compressor": "random", "compressor_budget": "match"},
    "tome": {"compressor": "tome", "compressor_budget": "match"},
    "divprune": {"compressor": "divprune", "compressor_budget": "match"},
}


def default_features(image_size: int = 128, cameras: int = 2):
    from lerobot.configs.types import FeatureType, PolicyFeature

    from medvtc.robotics.demonstrations import ACTION_DIM, IMAGE_KEY, STATE_DIM, STATE_KEY, WRIST_IMAGE_KEY

    keys = [IMAGE_KEY, WRIST_IMAGE_KEY][:cameras]
    inputs = {k: PolicyFeature(FeatureType.VISUAL, (3, image_size, image_size)) for k in keys}
    inputs[STATE_KEY] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
    return inputs, {"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))}


def variant_configs(base, names: Sequence[str]):
    """`base` CompressorVLAConfig -> {name: config} with "match" budgets resolved."""
    from medvtc.robotics.policies.compressor_vla import CompressorVLAPolicy

    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; valid: {', '.join(VARIANTS)}")
    match = None
    out = {}
    for name in names:
        over = dict(VARIANTS[name])
        if over.get("compressor_budget") == "match":
            if match is None:
                ref = CompressorVLAPolicy(replace(base, compressor="compressor_vla", compressor_budget=None,
                                                  compressor_args={}))
                match = ref.model.visual_tokens_per_camera
            over["compressor_budget"] = match
        out[name] = replace(base, **over)
    return out


def measure_variants(names: Sequence[str] = tuple(VARIANTS), image_size: int = 128, repeats: int = 20,
                     warmup: int = 3, base_overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    import torch

    from medvtc.common.accounting import count_flops, count_params
    from medvtc.robotics.policies.compressor_vla import (
        CompressorVLAConfig,
        CompressorVLAPolicy,
        make_compressor_vla_pre_post_processors,
    )

    inputs, outputs = default_features(image_size)
    base = CompressorVLAConfig(input_features=inputs, output_features=outputs, device="cpu", **(base_overrides or {}))
    gen = torch.Generator().manual_seed(0)
    obs = {k: torch.rand(3, image_size, image_size, generator=gen) for k in inputs if k.startswith("observation.images")}
    obs["observation.state"] = torch.zeros(8)
    obs["task"] = "pick up the alphabet soup and place it in the basket"
    built = {}
    for name, cfg in variant_configs(base, names).items():
        torch.manual_seed(0)
        policy = CompressorVLAPolicy(cfg).eval()
        pre, _ = make_compressor_vla_pre_post_processors(cfg, None)
        batch = pre(dict(obs))
        built[name] = (cfg, policy, batch, count_flops(lambda: policy.predict_action_chunk(batch)))
    # Rounds interleave the variants, so load from other processes slows them all alike.
    times: dict[str, list[float]] = {name: [] for name in built}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name, (_, policy, batch, _) in built.items():
                t0 = time.perf_counter()
                policy.predict_action_chunk(batch)
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    rows = []
    for name, (cfg, policy, _, flops) in built.items():
        ts = sorted(times[name])
        chunk_ms = 1000 * ts[len(ts) // 2]
        rows.append({
            "method": name, "tokens": policy.num_visual_tokens, "uncompressed_tokens": policy.num_uncompressed_tokens,
            "flops": flops, "params": count_params(policy), "chunk_latency_ms": chunk_ms,
            "chunk_latency_min_ms": 1000 * ts[0], "step_latency_ms": chunk_ms / cfg.n_action_steps,
            "n_action_steps": cfg.n_action_steps,
        })
    base_row = next((r for r in rows if r["method"] == "none"), None)
    for r in rows:
        if base_row is not None:
            r["flops_vs_none"] = r["flops"] / base_row["flops"]
            r["tokens_vs_none"] = r["tokens"] / base_row["tokens"]
            r["latency_vs_none"] = r["chunk_latency_ms"] / base_row["chunk_latency_ms"]
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = ("| variant | visual tokens | GFLOPs/chunk | vs none | params | chunk ms (median) | chunk ms (min) | step ms |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        rel = f"{r['flops_vs_none']:.2f}" if "flops_vs_none" in r else "-"
        lines.append(f"| {r['method']} | {r['tokens']} | {r['flops'] / 1e9:.2f} | {rel} | {r['params'] / 1e6:.2f}M | "
                     f"{r['chunk_latency_ms']:.1f} | {r['chunk_latency_min_ms']:.1f} | {r['step_latency_ms']:.1f} |")
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure_variants([v for v in args.variants.split(",") if v], args.image_size, args.repeats)
    print(f"torch threads: {torch.get_num_threads()}")
    print(format_rows(rows))


if __name__ == "__main__":
    _main()
