"""`medvtc bench --task libero`: Compressor-VLA against the uncompressed policy, generic
compressors at the same token count, its own ablations and LeRobot's ACT, all trained on the same
demonstrations with the same budget and rolled out in the LIBERO simulator.

For every variant of `bench.variants` (default: compressor_vla, none, pooling, random, tome,
divprune, stc_only, src_only, compressor_vla_no_instruction, act; see
`medvtc.robotics.policy_cost.VARIANTS`):

1. train it with the task's data / policy / train config under `bench.output_dir/<variant>`
   (`medvtc train --task libero` with the variant's `policy.*`); a finished run is reused (after
   checking it was trained with the same settings), an interrupted one resumes from its latest
   checkpoint;
2. roll it out on `bench.episodes` official initial states of each of `bench.tasks` of
   `bench.suite` (`bench.num_envs` environments in parallel; optional videos with the kept
   tokens), cached in `<variant>/bench_rollout.json` for the same settings and weights;
3. cost it on the CPU with `medvtc.robotics.policy_cost.measure_policies`: visual tokens the
   policy's transformer reads, FLOPs of one forward pass (an action chunk) and per executed
   action (chunk / n_action_steps), median latency per chunk and per control step, parameters,
   peak memory; the trained policies are timed together, round by round, so load from other
   processes slows them all alike.

Partial results (success only) are written after each variant to `<output>/libero.partial.*`;
the final ones to `<output>/libero.{json,md,png}`, with the issue's targets checked in the
markdown: at least 3x fewer visual tokens and 59 % fewer policy FLOPs than `none`, success within
2 points of `none` or better, a compressed policy step under 50 ms on the CPU, and the
uncompressed baseline at >= 50 % success (otherwise the success comparison is reported as not
meaningful).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from medvtc.common import checkpoint as ckpt
from medvtc.common.config import TRAIN_BOOKKEEPING, flatten_config, read_yaml, replace, to_dict
from medvtc.common.errors import UserError
from medvtc.common.io import atomic_write_json
from medvtc.common.results import ResultRow, quality_cost_plot, write_results
from medvtc.common.trainer import read_training_summary

BASELINE = "none"
PROPOSED = "compressor_vla"
PEER = "act"
TOKEN_RATIO_TARGET = 3.0
FLOP_REDUCTION_TARGET = 0.59
SUCCESS_MARGIN = 0.02
STEP_MS_TARGET = 50.0
BASELINE_SUCCESS_MIN = 0.5

def variant_config(cfg, name: str, match: int | None):
    """The task config of variant `name`: the base config with the variant's `policy.*`, trained
    under `bench.output_dir/<name>`. `match`: compressor_vla's tokens per camera."""
    from medvtc.robotics.policy_cost import variant_overrides

    p = cfg.policy
    if name == PEER:
        policy = replace(p, name="act")
    else:
        try:
            over = variant_overrides(name, dict(p.compressor_args), p.budget, match)
        except ValueError as e:
            raise UserError(f"bench.variants: {e}") from None
        policy = replace(p, name="compressor_vla", compressor=over["compressor"], budget=over["compressor_budget"],
                         compressor_args=over["compressor_args"])
    return replace(cfg, policy=policy, output_dir=str(Path(cfg.bench.output_dir) / name))


# policy.* keys an ACT run depends on (the others configure Compressor-VLA).
_ACT_KEYS = {"name", "act_args", "chunk_size", "n_action_steps", "dropout"}


def _training_settings(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    policy = dict(cfg_dict.get("policy", {}))
    if policy.get("name") == "act":
        policy = {k: v for k, v in policy.items() if k in _ACT_KEYS}
    else:
        policy.pop("act_args", None)
    flat = flatten_config({"seed": cfg_dict.get("seed"), "data": {"root": cfg_dict.get("data", {}).get("root")},
                  "policy": policy, "train": cfg_dict.get("train", {})}, keep_whole=("compressor_args", "act_args"))
    return {k: v for k, v in flat.items() if not (k.startswith("train.") and k.split(".", 1)[1] in TRAIN_BOOKKEEPING)}


def check_same_run(vcfg, saved: Path, name: str) -> None:
    """UserError if the run config saved at `saved` was trained with other settings than `vcfg`
    (seed, data.root, the policy.* keys its policy uses, train.* except bookkeeping); keys only
    one side has are skipped."""
    if not saved.is_file():
        return
    old = _training_settings(read_yaml(saved))
    new = _training_settings(to_dict(vcfg))
    diff = [k for k in new if k in old and old[k] != new[k]]
    if diff:
        k = diff[0]
        raise UserError(
            f"{Path(vcfg.output_dir)} holds a {name!r} run trained with other settings ({k}: {old[k]!r} there, "
            f"{new[k]!r} now{f', and {len(diff) - 1} more' if len(diff) > 1 else ''}); remove that folder or set "
            "bench.output_dir to another one"
        )


def train_or_reuse(task, vcfg, name: str) -> tuple[Path, str]:
    """(final folder, "reused" | "resumed" | "trained")."""
    out = Path(vcfg.output_dir)
    final = out / "final"
    if (final / "model.safetensors").is_file():
        check_same_run(vcfg, final / "medvtc_config.yaml", name)
        return final, "reused"
    resumed = ckpt.latest_checkpoint(out / "checkpoints") is not None
    if resumed:
        check_same_run(vcfg, out / "config.yaml", name)
    print(f"medvtc bench: {'resuming' if resumed else 'training'} {name} in {out}")
    task.train(vcfg, resume=True)  # from step 0 when there is no checkpoint
    (out / "bench_rollout.json").unlink(missing_ok=True)  # results of older weights
    return final, "resumed" if resumed else "trained"


def rollout_or_reuse(cfg, vcfg, final: Path) -> dict[str, Any]:
    """Rollout results of the policy in `final` on the bench settings, cached beside the run."""
    from medvtc.robotics.rollout import load_policy, run_rollouts

    b = cfg.bench
    settings = {"suite": b.suite, "tasks": [int(t) for t in b.tasks], "episodes": b.episodes,
                "first_init_state": b.first_init_state, "max_episode_steps": b.max_episode_steps,
                "video_episodes": b.video_episodes, "weights_mtime_ns": (final / "model.safetensors").stat().st_mtime_ns}
    cache = Path(vcfg.output_dir) / "bench_rollout.json"
    if cache.is_file():
        try:
            doc = json.loads(cache.read_text())
            if doc.get("settings") == settings:
                print(f"medvtc bench: reusing the rollouts in {cache}")
                return doc["results"]
        except (OSError, json.JSONDecodeError):
            pass
    policy, pre, post = load_policy(final)
    videos = Path(vcfg.output_dir) / "videos" if b.video_episodes else None
    results = run_rollouts(policy, pre, post, suite=b.suite, task_ids=b.tasks, episodes=b.episodes,
                           max_episode_steps=b.max_episode_steps, first_init_state=b.first_init_state,
                           progress=cfg.eval.progress, num_envs=b.num_envs, checkpoint=final, video_dir=videos,
                           video_episodes=b.video_episodes)
    del policy, pre, post
    atomic_write_json(cache, {"settings": settings, "results": results})
    return results


def _match_tokens(task, cfg, features: dict[str, Any]) -> int:
    import torch

    from medvtc.robotics.policies.compressor_vla import CompressorVLAPolicy
    from medvtc.robotics.task import policy_config

    torch.manual_seed(0)
    pcfg = policy_config(variant_config(cfg, PROPOSED, None), features, "cpu")
    try:
        return int(CompressorVLAPolicy(pcfg).model.visual_tokens_per_camera)
    except ValueError as e:
        raise UserError(f"policy: {e}") from None


def _success_row(results: dict[str, Any], status: str) -> dict[str, Any]:
    import numpy as np

    metrics: dict[str, Any] = {"success_rate": round(results["success_rate"], 4)}
    for tid, t in results["tasks"].items():
        metrics[f"success_task_{tid}"] = round(t["success_rate"], 4)
    eps = [r for t in results["tasks"].values() for r in t["episodes"]]
    metrics["rollout_policy_ms_per_step"] = round(float(np.mean([r["policy_ms_per_step"] for r in eps])), 2)
    metrics["run"] = status
    return metrics


def run_benchmark(task, cfg, output: str) -> list[ResultRow]:
    import torch

    from medvtc.robotics.demonstrations import check_dataset_features, read_info, required_features
    from medvtc.robotics.policy_cost import VARIANTS, measure_policies
    from medvtc.robotics.rollout import check_rollout_args, load_policy
    from medvtc.robotics.task import policy_config

    b = cfg.bench
    # Everything that can be wrong is checked before the first (long) training run.
    check_rollout_args(b.suite, b.tasks, b.episodes, b.num_envs, b.video_episodes, b.max_episode_steps)
    task._ensure_data(cfg)
    info = read_info(cfg.data.root)
    check_dataset_features(info["features"], required_features(), cfg.data.root)
    needs_match = any(VARIANTS.get(v, {}).get("compressor_budget") == "match" for v in b.variants)
    match = _match_tokens(task, cfg, info["features"]) if needs_match else None
    vcfgs = {name: variant_config(cfg, name, match) for name in b.variants}
    for name, vcfg in vcfgs.items():
        policy_config(vcfg, info["features"], "cpu")  # config errors now, not after hours of training

    metrics: dict[str, dict[str, Any]] = {}
    finals: dict[str, Path] = {}
    partial_rows: list[ResultRow] = []
    for name, vcfg in vcfgs.items():
        final, status = train_or_reuse(task, vcfg, name)
        results = rollout_or_reuse(cfg, vcfg, final)
        finals[name] = final
        metrics[name] = _success_row(results, status)
        # from the run's own log, so a reused run reports them too
        training = read_training_summary(vcfg.output_dir) or {}
        if "train_s" in training:
            metrics[name]["train_s"] = round(training["train_s"], 1)
        if "train_loss" in training:
            metrics[name]["train_loss"] = round(training["train_loss"], 4)
        print(f"medvtc bench: {name:30s} success {results['success_rate']:.1%} ({status})")
        partial_rows.append(ResultRow(method=name, tokens=0, flops=math.nan, params=0, latency_ms=math.nan,
                                      peak_mem_mb=math.nan, metrics=dict(metrics[name])))
        write_results("libero", partial_rows, {"partial": True, **to_dict(cfg)}, output, name="libero.partial",
                      plot=_plot)

    # Costs of the trained policies on the CPU, measured together.
    threads = torch.get_num_threads()
    if b.threads:
        torch.set_num_threads(b.threads)
    try:
        loaded = {}
        for name, final in finals.items():
            policy, pre, _ = load_policy(final, device="cpu")
            loaded[name] = (policy, pre)
        costs = measure_policies(loaded, repeats=b.latency_repeats, warmup=b.latency_warmup, memory=True)
        cost_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    del loaded

    rows: list[ResultRow] = []
    base = costs.get(BASELINE)
    for name in vcfgs:
        c = costs[name]
        m: dict[str, Any] = dict(metrics[name])
        # the row's flops / latency_ms are per chunk / per control step; these complete them
        m.update(uncompressed_tokens=c["uncompressed_tokens"], gflops_per_action=round(c["flops_per_action"] / 1e9, 4),
                 n_action_steps=c["n_action_steps"], chunk_latency_ms=round(c["chunk_latency_ms"], 3))
        if base is not None:
            m["tokens_vs_none"] = round(c["tokens"] / base["tokens"], 4) if base["tokens"] else None
            m["flops_vs_none"] = round(c["flops"] / base["flops"], 4) if base["flops"] else None
            m["latency_vs_none"] = round(c["chunk_latency_ms"] / base["chunk_latency_ms"], 4)
        rows.append(ResultRow(method=name, tokens=c["tokens"], flops=c["flops"], params=c["params"],
                              latency_ms=c["step_latency_ms"], peak_mem_mb=c["peak_mem_mb"], metrics=m))
    extra_md = targets_markdown(rows, cfg, cost_threads, demos=info.get("total_episodes"))
    config = {**to_dict(cfg), "cpu_threads": cost_threads,
              "variants": {name: to_dict(v.policy) for name, v in vcfgs.items()}}
    write_results("libero", rows, config, output, plot=_plot, markdown_extra=extra_md)
    for suffix in ("json", "md", "png"):
        Path(output, f"libero.partial.{suffix}").unlink(missing_ok=True)
    print(extra_md)
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def targets_markdown(rows: list[ResultRow], cfg, threads: int, demos: int | None = None) -> str:
    b = cfg.bench
    by = {r.method: r for r in rows}
    n_ep = b.episodes * len(b.tasks)
    lines = [
        "",
        "Columns: GFLOPs = one forward pass of the policy (an action chunk of "
        f"{cfg.policy.chunk_size}); latency ms = per control step (chunk latency / n_action_steps), median on the "
        f"CPU with {threads} torch threads; tokens = visual tokens the policy's transformer reads per step. Success "
        f"on {b.suite} tasks {list(b.tasks)}, {b.episodes} episodes each (official initial states "
        f"{b.first_init_state}..{b.first_init_state + b.episodes - 1}), {n_ep} episodes per row; every variant "
        f"trained for {cfg.train.max_steps} steps of batch {cfg.train.batch_size} on {cfg.data.root}"
        + (f" ({demos} demonstration episodes)." if demos is not None else "."),
        "",
        "### Targets (issue 6): Compressor-VLA against the uncompressed policy (`none`)",
        "",
    ]
    cv, no = by.get(PROPOSED), by.get(BASELINE)
    if cv is None or no is None:
        missing = " and ".join(n for n, r in ((PROPOSED, cv), (BASELINE, no)) if r is None)
        return "\n".join(lines + [f"(no {missing} row in this run: the targets cannot be checked)"]) + "\n"

    def met(ok: bool) -> str:
        return "met" if ok else "not met"

    ratio = no.tokens / cv.tokens if cv.tokens else math.inf
    lines.append(f"- visual tokens: {cv.tokens} vs {no.tokens}, {ratio:.2f}x fewer (target >= {TOKEN_RATIO_TARGET:.0f}x): "
                 f"{met(ratio >= TOKEN_RATIO_TARGET)}")
    red = 1 - cv.flops / no.flops
    lines.append(f"- policy FLOPs: {cv.flops / 1e9:.3f} vs {no.flops / 1e9:.3f} GFLOPs per chunk "
                 f"({cv.metrics['gflops_per_action']:.3f} vs {no.metrics['gflops_per_action']:.3f} per action), "
                 f"{_pct(red)} fewer (target >= {FLOP_REDUCTION_TARGET:.0%}): {met(red >= FLOP_REDUCTION_TARGET)}")
    step, chunk = cv.latency_ms, cv.metrics["chunk_latency_ms"]
    lines.append(f"- compressed policy step: {step:.1f} ms (chunk {chunk:.1f} ms / {cv.metrics['n_action_steps']} actions; "
                 f"uncompressed {no.latency_ms:.1f} ms) on the CPU (target < {STEP_MS_TARGET:.0f} ms, "
                 f"20 Hz): {met(step < STEP_MS_TARGET)}"
                 + ("" if chunk < STEP_MS_TARGET else f"; a whole chunk takes {chunk:.1f} ms, so the step that "
                    "computes one exceeds the 20 Hz period"))
    s_cv, s_no = cv.metrics["success_rate"], no.metrics["success_rate"]
    gap = (s_cv - s_no) * 100
    meaningful = s_no >= BASELINE_SUCCESS_MIN
    success_line = (f"- success: {_pct(s_cv)} vs {_pct(s_no)} ({gap:+.1f} points; target: within "
                    f"{SUCCESS_MARGIN * 100:.0f} points or better)")
    if meaningful:
        lines.append(f"{success_line}: {met(s_cv >= s_no - SUCCESS_MARGIN - 1e-9)}")
        lines.append(f"- baseline: the uncompressed policy reaches {_pct(s_no)} (>= {BASELINE_SUCCESS_MIN:.0%}), so "
                     "the success comparison means something")
    else:
        lines.append(f"{success_line}: not judged (see below)")
        lines.append(
            f"- baseline: the uncompressed policy reaches only {_pct(s_no)} (< {BASELINE_SUCCESS_MIN:.0%} on these "
            f"tasks), so **the success comparison is not meaningful** at this budget ({cfg.train.max_steps} training "
            f"steps{f', {demos} demonstrations' if demos is not None else ''}). It needs a baseline that solves the tasks: "
            "more training steps (train.max_steps), more demonstrations (data.episodes_per_task) or a GPU to afford "
            "both; the token, FLOP and latency figures above do not depend on it."
        )
    peer = by.get(PEER)
    if peer is not None:
        lines += ["", "### Peer: LeRobot's ACT (same data, same budget, ResNet-18 from scratch)", "",
                  f"- success {_pct(peer.metrics['success_rate'])} (Compressor-VLA {_pct(s_cv)}), {peer.tokens} visual "
                  f"tokens, {peer.flops / 1e9:.3f} GFLOPs per chunk, {peer.latency_ms:.1f} ms per step, "
                  f"{peer.params / 1e6:.2f}M parameters"]
    others = [r for r in rows if r.method not in (PROPOSED, BASELINE, PEER)]
    if others:
        lines += ["", "### Generic compressors and ablations (success, visual tokens, GFLOPs per chunk)", ""]
        for r in [cv, *others]:
            lines.append(f"- {r.method}: {_pct(r.metrics['success_rate'])}, {r.tokens} tokens, {r.flops / 1e9:.3f} GFLOPs")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    quality_cost_plot(rows, path, "success_rate", "success rate (0-1)",
                      [("flops", "policy GFLOPs per action chunk", False),
                       ("latency_ms", "policy latency per control step (ms, CPU)", False)], scale={"flops": 1e9})


__all__ = ["check_same_run", "run_benchmark", "targets_markdown", "train_or_reuse", "variant_config"]
