"""Closed-loop evaluation of a trained LeRobot policy in the LIBERO simulator.

    from medvtc.robotics.rollout import load_policy, run_rollouts
    policy, pre, post = load_policy("runs/libero/final")
    results = run_rollouts(policy, pre, post, suite="libero_object", task_ids=[0, 1, 2], episodes=10)

Episode e of a task starts from LIBERO's official initial state e (the benchmark's evaluation
protocol: 50 fixed states per task), so results are comparable across methods and runs. The loop
is the LeRobot one: raw observation -> preprocessor -> `policy.select_action` (action chunks are
queued inside the policy) -> postprocessor -> `env.step`, with `policy.reset()` at each episode
start. One environment at a time here; parallel environments and videos come with `medvtc rollout`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medvtc.common.errors import UserError

POLICY_TYPE = "compressor_vla"


def resolve_checkpoint(path: str | Path) -> Path:
    """A trained policy folder: `path` itself or `path/final`; UserError for anything else,
    including a checkpoint of another task (no LeRobot `config.json` of type compressor_vla)."""
    path = Path(path)
    candidates = [path / "final", path]
    for cand in candidates:
        cfg_file = cand / "config.json"
        if cfg_file.is_file():
            try:
                kind = json.loads(cfg_file.read_text()).get("type")
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"cannot read {cfg_file}: {e}") from None
            if kind != POLICY_TYPE:
                raise UserError(
                    f"{cand} holds a {kind!r} model, not a LIBERO {POLICY_TYPE} policy (a checkpoint of another task?)"
                )
            if not (cand / "model.safetensors").is_file():
                raise UserError(f"{cand} has a config.json but no model.safetensors")
            return cand
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    raise UserError(
        f"{path} is not a trained LIBERO policy: expected config.json + model.safetensors in it or in {path / 'final'} "
        "(a checkpoint of another task, or a run that has not finished?)"
    )


def load_policy(path: str | Path, device: str | None = None):
    """(policy, preprocessor, postprocessor) from a folder written by `medvtc train --task libero`."""
    import torch
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    from medvtc.robotics.policies.compressor_vla import CompressorVLAPolicy  # also registers the policy type

    folder = resolve_checkpoint(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = PreTrainedConfig.from_pretrained(folder)
    cfg.device = device
    policy = CompressorVLAPolicy.from_pretrained(folder, config=cfg)
    pre, post = make_pre_post_processors(
        cfg, pretrained_path=str(folder),
        preprocessor_overrides={"device_processor": {"device": device}, "normalizer_processor": {"device": device}},
    )
    return policy, pre, post


def run_episode(env, policy, pre, post, init_state_id: int) -> dict[str, Any]:
    """One closed-loop episode from official init state `init_state_id`."""
    import torch

    from medvtc.robotics.demonstrations import observation_to_batch

    obs, info = env.reset(options={"init_state_id": init_state_id})
    policy.reset()
    steps, success, t_policy = 0, False, 0.0
    while True:
        t0 = time.perf_counter()
        with torch.inference_mode():
            action = post(policy.select_action(pre(observation_to_batch(obs, env.instruction))))
        t_policy += time.perf_counter() - t0
        obs, _, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float32).reshape(-1))
        steps += 1
        if terminated or truncated:
            success = bool(info["is_success"])
            break
    return {"init_state_id": init_state_id, "success": success, "steps": steps,
            "policy_ms_per_step": 1000 * t_policy / max(steps, 1)}


def run_rollouts(
    policy, pre, post, *, suite: str, task_ids: Sequence[int], episodes: int, camera_size: int | None = None,
    max_episode_steps: int | None = None, first_init_state: int = 0, progress: bool = True,
) -> dict[str, Any]:
    """Success per task and overall over `episodes` official init states per task."""
    from tqdm.auto import tqdm

    from medvtc.common.errors import ConfigError
    from medvtc.robotics.libero_env import LiberoEnv, load_suite

    if episodes < 1:
        raise UserError(f"episodes must be >= 1, got {episodes}")
    bench = load_suite(suite)  # an unknown suite: ConfigError listing the valid ones
    n_tasks = bench.get_num_tasks()
    bad = [t for t in task_ids if not 0 <= int(t) < n_tasks]
    if bad or not task_ids:
        names = "\n".join(f"  {i}: {n}" for i, n in enumerate(bench.get_task_names()))
        raise ConfigError(f"task id {bad[0] if bad else '(none given)'} is not in suite {suite!r}: valid ids are "
                          f"0..{n_tasks - 1}:\n{names}")
    shape = next(iter(policy.config.image_features.values())).shape
    size = camera_size or int(shape[-1])
    cams = ("agentview", "wrist")
    results: dict[str, Any] = {"suite": suite, "episodes_per_task": episodes, "tasks": {}}
    bar = tqdm(total=episodes * len(task_ids), desc=f"rollout {suite}", unit="episode", disable=not progress,
               dynamic_ncols=True)
    try:
        for tid in task_ids:
            env = LiberoEnv(suite, int(tid), camera_size=size, cameras=cams, max_episode_steps=max_episode_steps)
            try:
                runs = []
                for e in range(episodes):
                    runs.append(run_episode(env, policy, pre, post, (first_init_state + e) % env.num_init_states))
                    bar.update(1)
                    bar.set_postfix(success=f"{np.mean([r['success'] for r in runs]):.0%}")
                results["tasks"][int(tid)] = {
                    "task": env.task_name, "instruction": env.instruction,
                    "success_rate": float(np.mean([r["success"] for r in runs])), "episodes": runs,
                }
            finally:
                env.close()
    finally:
        bar.close()
    rates = [t["success_rate"] for t in results["tasks"].values()]
    results["success_rate"] = float(np.mean(rates))
    return results


def format_results(results: dict[str, Any]) -> str:
    lines = [f"{results['suite']}: {results['episodes_per_task']} episodes per task on the official initial states"]
    for tid, t in results["tasks"].items():
        ms = np.mean([r["policy_ms_per_step"] for r in t["episodes"]])
        lines.append(f"  task {tid}: success {t['success_rate']:.0%}  ({ms:.1f} ms policy per step) - {t['instruction']}")
    lines.append(f"  overall success: {results['success_rate']:.1%}")
    return "\n".join(lines)


__all__ = ["format_results", "load_policy", "resolve_checkpoint", "run_episode", "run_rollouts"]
