"""Visual tokens, FLOPs, parameters and CPU latency of the Compressor-VLA policy variants.

    python -m medvtc.robotics.policy_cost                 # all variants, 128 px, 2 cameras
    python -m medvtc.robotics.policy_cost --variants none,compressor_vla --threads 2
    python -m medvtc.robotics.policy_cost --variants none,compressor_vla vision_backbone=mobilenetv2_imagenet dim_model=128
    python -m medvtc.robotics.policy_cost --variants none,compressor_vla --compile   # + torch.compile'd twins

Untrained weights (costs do not depend on them). FLOPs come from torch's counter through
`medvtc.common.accounting` on one `predict_action_chunk` call at batch 1 (the whole policy:
backbone, instruction encoder, compressor, head); latency is its median over repeated calls
after warm-up (variants interleaved round by round), and the per-step figure divides it by `n_action_steps` (actions executed per
chunk, ACT-style), which is what a 20 Hz control loop pays on average.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Any, Sequence

# name -> CompressorVLAConfig overrides. A budget of "match" means: as many tokens per camera as
# the compressor_vla variant keeps on the same grid (the paper's comparison at equal tokens);
# "queries": STC's query count (its only tokens). Compressor arguments are the base config's,
# kept where the variant's compressor takes them (num_queries, num_heads, window, ...).
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"compressor": "none"},
    "compressor_vla": {"compressor": "compressor_vla"},
    "compressor_vla_no_instruction": {"compressor": "compressor_vla", "compressor_args": {"use_instruction": False}},
    "stc_only": {"compressor": "stc", "compressor_budget": "queries"},
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


def variant_overrides(name: str, compressor_args: dict[str, Any], budget: int | float | None,
                      match: int | None) -> dict[str, Any]:
    """{compressor, compressor_budget, compressor_args} of variant `name` on a base policy whose
    compressor arguments are `compressor_args` and budget `budget` (used by the compressor_vla
    variants); `match`: compressor_vla's tokens per camera (needed by the "match" variants)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}")
    from medvtc.common.compressors import accepted_args

    over = VARIANTS[name]
    comp = over["compressor"]
    # the base arguments the variant's compressor takes (the policy's resolver adds its defaults)
    args = accepted_args(comp, {**compressor_args, **over.get("compressor_args", {})})
    b = over.get("compressor_budget", budget if comp == "compressor_vla" else None)
    if b == "match":
        if match is None:
            raise ValueError(f"variant {name!r} needs compressor_vla's token count (match)")
        b = match
    elif b == "queries":
        b = int(args.get("num_queries", 16))
    return {"compressor": comp, "compressor_budget": b, "compressor_args": args}


def variant_configs(base, names: Sequence[str]):
    """`base` CompressorVLAConfig -> {name: config} with "match" budgets resolved."""
    from medvtc.robotics.policies.compressor_vla import CompressorVLAPolicy

    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; valid: {', '.join(VARIANTS)}")
    match = None
    if any(VARIANTS[n].get("compressor_budget") == "match" for n in names):
        ref_over = variant_overrides("compressor_vla", dict(base.compressor_args), base.compressor_budget, None)
        match = CompressorVLAPolicy(replace(base, **ref_over)).model.visual_tokens_per_camera
    return {name: replace(base, **variant_overrides(name, dict(base.compressor_args), base.compressor_budget, match))
            for name in names}


def visual_tokens(policy) -> tuple[int, int]:
    """(visual tokens the policy's transformer reads per step, tokens before compression), all
    cameras together. Compressor-VLA reports its own; LeRobot's ACT reads every pixel of its
    ResNet's last feature map (stride 32) for every camera."""
    import torch

    if hasattr(policy, "num_visual_tokens"):
        return int(policy.num_visual_tokens), int(policy.num_uncompressed_tokens)
    cfg = policy.config
    images = list(cfg.image_features)
    backbone = getattr(policy.model, "backbone", None)
    if not images or backbone is None:
        return 0, 0
    shape = tuple(cfg.image_features[images[0]].shape)
    was = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            dev = next(backbone.parameters()).device
            fmap = backbone(torch.zeros(1, *shape, device=dev))["feature_map"]
    finally:
        backbone.train(was)
    n = int(fmap.shape[-2] * fmap.shape[-1]) * len(images)
    return n, n


def example_observation(config, task: str = "pick up the alphabet soup and place it in the basket", seed: int = 0):
    """One raw observation (as the env gives it, unbatched) for a policy config's inputs."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    obs: dict[str, Any] = {k: torch.rand(*tuple(f.shape), generator=gen) for k, f in config.image_features.items()}
    state = config.robot_state_feature
    if state is not None:
        obs["observation.state"] = torch.zeros(*tuple(state.shape))
    obs["task"] = task
    return obs


COMPILED_SUFFIX = "+compile"  # the row of a policy's torch.compile'd twin (`measure_policies(compiled=True)`)


def measure_policies(policies: dict[str, tuple[Any, Any]], repeats: int = 20, warmup: int = 3,
                     memory: bool = False, compiled: bool = False) -> dict[str, dict[str, Any]]:
    """{name: (policy, preprocessor)} -> {name: tokens, FLOPs, params, chunk / step latency}.

    FLOPs: torch's counter on one `predict_action_chunk` at batch 1 (the whole policy); latency:
    the median over `repeats` calls after `warmup`, the policies interleaved round by round so
    load from other processes slows them all alike; per step = per chunk / n_action_steps (the
    actions executed from each chunk). `memory`: also the call's peak memory (MiB).
    `compiled`: also time a copy of each policy whose network runs through `torch.compile`
    (inductor, static shapes; compiled before the timing, its FLOPs the eager policy's), as
    `<name>+compile`, interleaved with the eager ones. No stage breakdown for those (the stages
    are separate eager calls).
    """
    import copy

    import torch

    from medvtc.common.accounting import count_flops, count_params, measure_peak_memory

    built = {}
    for name, (policy, pre) in policies.items():
        policy.eval()
        batch = pre(example_observation(policy.config)) if pre is not None else example_observation(policy.config)
        device = next(policy.parameters()).device
        fn = (lambda p=policy, b=batch: p.predict_action_chunk(b))  # noqa: E731
        with torch.inference_mode():
            fn()  # warm-up before the counters
        flops = count_flops(fn)
        peak = measure_peak_memory(fn, device) if memory else None
        built[name] = (policy, fn, flops, peak, device)
        for stage, stage_fn in _stage_fns(policy, batch).items():
            built[f"{name}\0{stage}"] = (policy, stage_fn, None, None, device)
        if compiled:
            twin = copy.deepcopy(policy)
            net = twin.model
            net.forward = torch.compile(net.forward, dynamic=False)
            twin_fn = (lambda p=twin, b=batch: p.predict_action_chunk(b))  # noqa: E731
            with torch.inference_mode():
                twin_fn()  # compiles here, not in the timed calls
            built[name + COMPILED_SUFFIX] = (twin, twin_fn, flops, None, device)
    times: dict[str, list[float]] = {name: [] for name in built}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name, (_, fn, _, _, device) in built.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    out = {}
    for name, (policy, _, flops, peak, _) in built.items():
        if "\0" in name:
            continue
        ts = sorted(times[name])
        chunk_ms = 1000 * ts[len(ts) // 2]
        stages = {key.split("\0", 1)[1]: 1000 * statistics.median(v) for key, v in times.items()
                  if key.startswith(f"{name}\0")}
        if stages:  # what the chunk's latency is spent on; the head is the rest
            stages["head"] = max(0.0, chunk_ms - sum(stages.values()))
        tokens, uncompressed = visual_tokens(policy)
        n_steps = int(policy.config.n_action_steps)
        out[name] = {
            "tokens": tokens, "uncompressed_tokens": uncompressed, "flops": flops, "flops_per_action": flops / n_steps,
            "params": count_params(policy), "chunk_latency_ms": chunk_ms, "chunk_latency_min_ms": 1000 * ts[0],
            "step_latency_ms": chunk_ms / n_steps, "n_action_steps": n_steps, "peak_mem_mb": peak,
        }
        if stages:
            out[name]["stage_ms"] = {k: round(v, 3) for k, v in stages.items()}
    return out


def _stage_fns(policy, batch) -> dict[str, Any]:
    """Compressor-VLA's stages as separate calls on the same batch (medians are timed like the
    whole chunk): instruction encoder, image encoder, compressor; {} for other policies."""
    model = getattr(policy, "model", None)
    if not all(hasattr(model, m) for m in ("encode_text", "encode_images", "compress")):
        return {}
    import torch

    with torch.inference_mode():
        text, text_mask, _ = model.encode_text(batch)
        visual = model.encode_images(batch)
    return {"text": lambda: model.encode_text(batch), "images": lambda: model.encode_images(batch),
            "compress": lambda: model.compress(visual, text, text_mask)}


def measure_variants(names: Sequence[str] = tuple(VARIANTS), image_size: int = 128, repeats: int = 20,
                     warmup: int = 3, base_overrides: dict[str, Any] | None = None,
                     compiled: bool = False) -> list[dict[str, Any]]:
    """Untrained Compressor-VLA variants at `image_size` with two cameras (see the module docstring);
    `compiled`: also their torch.compile'd twins (`measure_policies`)."""
    import torch

    from medvtc.robotics.policies.compressor_vla import (
        CompressorVLAConfig,
        CompressorVLAPolicy,
        make_compressor_vla_pre_post_processors,
    )

    inputs, outputs = default_features(image_size)
    base = CompressorVLAConfig(input_features=inputs, output_features=outputs, device="cpu", **(base_overrides or {}))
    policies = {}
    for name, cfg in variant_configs(base, names).items():
        torch.manual_seed(0)
        policies[name] = (CompressorVLAPolicy(cfg).eval(), make_compressor_vla_pre_post_processors(cfg, None)[0])
    measured = measure_policies(policies, repeats=repeats, warmup=warmup, compiled=compiled)
    rows = [{"method": name, **{k: v for k, v in m.items() if k != "peak_mem_mb"}} for name, m in measured.items()]
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict[str, Any]], baseline: str = "none") -> None:
    """flops / tokens / latency relative to the `baseline` row, in place (rows as dicts); a
    compiled row (`<name>+compile`) relative to the compiled baseline."""
    for r in rows:
        ref = baseline + COMPILED_SUFFIX if r["method"].endswith(COMPILED_SUFFIX) else baseline
        base_row = next((b for b in rows if b["method"] == ref), None)
        if base_row is None:
            continue
        r["flops_vs_none"] = r["flops"] / base_row["flops"]
        r["tokens_vs_none"] = r["tokens"] / base_row["tokens"]
        r["latency_vs_none"] = r["chunk_latency_ms"] / base_row["chunk_latency_ms"]


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = ("| variant | visual tokens | GFLOPs/chunk | vs none | params | chunk ms (median) | chunk ms (min) | step ms "
            "| latency vs none |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        rel = f"{r['flops_vs_none']:.2f}" if "flops_vs_none" in r else "-"
        lat = f"{r['latency_vs_none']:.2f}x" if "latency_vs_none" in r else "-"
        lines.append(f"| {r['method']} | {r['tokens']} | {r['flops'] / 1e9:.2f} | {rel} | {r['params'] / 1e6:.2f}M | "
                     f"{r['chunk_latency_ms']:.1f} | {r['chunk_latency_min_ms']:.1f} | {r['step_latency_ms']:.1f} | {lat} |")
    stages = [r for r in rows if r.get("stage_ms")]
    if stages:
        names = list(stages[0]["stage_ms"])
        lines += ["", "chunk latency by stage, ms (median of separate calls; head = the rest):", "",
                  "| variant | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {r['method']} | " + " | ".join(f"{r['stage_ms'].get(n, 0.0):.2f}" for n in names) + " |"
                  for r in stages]
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    import torch
    import yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--compile", action="store_true",
                   help="also time each variant's network through torch.compile (rows <variant>+compile; needs a C++ compiler)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="CompressorVLAConfig fields for every variant, e.g. vision_backbone=mobilenetv2_imagenet dim_model=128")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"override {item!r} is not key=value")
        base[key] = yaml.safe_load(value)
    try:
        rows = measure_variants([v for v in args.variants.split(",") if v], args.image_size, args.repeats,
                                base_overrides=base, compiled=args.compile)
    except TypeError as e:  # an unknown CompressorVLAConfig field
        p.error(str(e).splitlines()[0])
    print(f"torch threads: {torch.get_num_threads()}")
    print(format_rows(rows))


if __name__ == "__main__":
    _main()
