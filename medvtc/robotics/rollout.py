"""Closed-loop evaluation of a trained LeRobot policy in the LIBERO simulator.

    from medvtc.robotics.rollout import load_policy, run_rollouts
    policy, pre, post = load_policy("runs/libero/final")
    results = run_rollouts(policy, pre, post, suite="libero_object", task_ids=[0, 1, 2], episodes=10)

    # several environments in parallel processes, mp4 videos of the first 2 episodes per task
    results = run_rollouts(policy, pre, post, suite="libero_object", task_ids=[0, 1, 2], episodes=10,
                           num_envs=2, checkpoint="runs/libero/final", video_dir="videos", video_episodes=2)

Episode e of a task starts from LIBERO's official initial state e (the benchmark's evaluation
protocol: 50 fixed states per task), so results are comparable across methods and runs. The loop
is the LeRobot one: raw observation -> preprocessor -> `policy.select_action` (action chunks are
queued inside the policy) -> postprocessor -> `env.step`, with `policy.reset()` at each episode
start. Torch's RNG is seeded per (task, init state), so an episode gives the same result however
the episodes are spread over processes.

`num_envs > 1` runs the (task, init state) episodes in a pool of `num_envs` worker processes
(spawned: MuJoCo's GL contexts and torch do not survive a fork), each with its own copy of the
policy loaded from `checkpoint` and one environment per task, so rendering, physics and policy
inference use that many cores. Policies: Compressor-VLA (`compressor_vla`) and LeRobot's ACT
(`act`), in LeRobot's saved layout.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medvtc.common.errors import ConfigError, UserError

POLICY_TYPE = "compressor_vla"
POLICY_TYPES = ("compressor_vla", "act")  # what `medvtc train --task libero` writes (policy.name)


def resolve_checkpoint(path: str | Path) -> Path:
    """A trained policy folder: `path` itself or `path/final`; UserError for anything else,
    including a checkpoint of another task (no LeRobot `config.json` of a LIBERO policy type)."""
    path = Path(path)
    candidates = [path / "final", path]
    for cand in candidates:
        cfg_file = cand / "config.json"
        if cfg_file.is_file():
            try:
                kind = json.loads(cfg_file.read_text()).get("type")
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"cannot read {cfg_file}: {e}") from None
            if kind not in POLICY_TYPES:
                raise UserError(
                    f"{cand} holds a {kind!r} model, not a LIBERO policy ({' or '.join(POLICY_TYPES)}; "
                    "a checkpoint of another task?)"
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
    """(policy, preprocessor, postprocessor) from a folder written by `medvtc train --task libero`
    (Compressor-VLA or LeRobot's ACT: the class comes from the saved config's type)."""
    import torch
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    import medvtc.robotics.policies.compressor_vla  # noqa: F401  registers the compressor_vla type

    folder = resolve_checkpoint(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = PreTrainedConfig.from_pretrained(folder)
    cfg.device = device
    if getattr(cfg, "pretrained_backbone_weights", None) is not None:
        cfg.pretrained_backbone_weights = None  # ACT: the saved weights replace them; never download
    policy = get_policy_class(cfg.type).from_pretrained(folder, config=cfg)
    policy.eval()
    pre, post = make_pre_post_processors(
        cfg, pretrained_path=str(folder),
        preprocessor_overrides={"device_processor": {"device": device}, "normalizer_processor": {"device": device}},
    )
    return policy, pre, post


def policy_cameras(config: Any) -> tuple[str, ...]:
    """The env cameras a policy reads, in its image-feature order; UserError for inputs the LIBERO
    env does not give (a policy trained on another robot)."""
    from medvtc.robotics.demonstrations import ACTION_DIM, CAMERA_TO_KEY, STATE_DIM, STATE_KEY

    key_to_cam = {v: k for k, v in CAMERA_TO_KEY.items()}
    images = list(config.image_features)
    unknown = [k for k in images if k not in key_to_cam]
    state = config.input_features.get(STATE_KEY) if config.input_features else None
    action = config.output_features.get("action") if config.output_features else None
    problems = []
    if unknown or not images:
        problems.append(f"image inputs {unknown or '(none)'} (the env gives {sorted(key_to_cam)})")
    if state is not None and tuple(state.shape) != (STATE_DIM,):
        problems.append(f"a {tuple(state.shape)} state (the env gives ({STATE_DIM},))")
    if action is None or tuple(action.shape) != (ACTION_DIM,):
        problems.append(f"actions of shape {None if action is None else tuple(action.shape)} (the env takes ({ACTION_DIM},))")
    extra = [k for k in (config.input_features or {}) if k not in images and k != STATE_KEY]
    if extra:
        problems.append(f"inputs {extra} the env does not give")
    if problems:
        raise UserError("this policy does not fit the LIBERO environment: it expects " + "; ".join(problems))
    return tuple(key_to_cam[k] for k in images)


def check_rollout_args(suite: str, task_ids: Sequence[int], episodes: int, num_envs: int = 1,
                       video_episodes: int = 0, max_episode_steps: int | None = None):
    """Validate a rollout before anything runs or is written; returns the LIBERO suite object.

    Unknown suite or task id: a ConfigError listing the valid ones."""
    from medvtc.robotics.libero_env import load_suite

    if episodes < 1:
        raise UserError(f"episodes must be >= 1, got {episodes}")
    if num_envs < 1:
        raise UserError(f"num_envs must be >= 1, got {num_envs}")
    if video_episodes < 0:
        raise UserError(f"video_episodes must be >= 0, got {video_episodes}")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise UserError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    bench = load_suite(suite)  # an unknown suite: ConfigError listing the valid ones
    n_tasks = bench.get_num_tasks()
    bad = [t for t in task_ids if not 0 <= int(t) < n_tasks]
    if bad or not task_ids:
        names = "\n".join(f"  {i}: {n}" for i, n in enumerate(bench.get_task_names()))
        raise ConfigError(f"task id {bad[0] if bad else '(none given)'} is not in suite {suite!r}: valid ids are "
                          f"0..{n_tasks - 1}:\n{names}")
    if len(set(int(t) for t in task_ids)) != len(task_ids):
        raise ConfigError(f"task ids repeat: {list(task_ids)}")
    return bench


def episode_seed(task_id: int, init_state_id: int) -> int:
    """Torch seed of one episode (random compressors, dropout-free sampling): the same in any process."""
    return int(np.random.SeedSequence([int(task_id), int(init_state_id)]).generate_state(1)[0])


def video_name(suite: str, task_id: int, init_state_id: int) -> str:
    return f"{suite}_task{int(task_id)}_init{int(init_state_id):02d}.mp4"


def run_episode(env, policy, pre, post, init_state_id: int, *, seed: int | None = None,
                video_path: str | Path | None = None, cameras: Sequence[str] = ("agentview", "wrist")) -> dict[str, Any]:
    """One closed-loop episode from official init state `init_state_id`; with `video_path`, an mp4
    of the episode with the kept visual tokens drawn over the frames."""
    import torch

    from medvtc.robotics.demonstrations import observation_to_batch

    if seed is not None:
        torch.manual_seed(seed)
    obs, info = env.reset(options={"init_state_id": init_state_id})
    policy.reset()
    recorder = None
    if video_path is not None:
        from medvtc.robotics.token_video import EpisodeRecorder

        caption = f"task {env.task_id} init {init_state_id}"
        recorder = EpisodeRecorder(video_path, policy, cameras=cameras, caption=caption,
                                   fps=env.metadata.get("render_fps", 20))
    steps, success, t_policy, ok = 0, False, 0.0, False
    try:
        while True:
            t0 = time.perf_counter()
            with torch.inference_mode():
                action = post(policy.select_action(pre(observation_to_batch(obs, env.instruction))))
            t_policy += time.perf_counter() - t0
            if recorder is not None:
                recorder.add(obs, steps)
            obs, _, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float32).reshape(-1))
            steps += 1
            if terminated or truncated:
                success = bool(info["is_success"])
                break
        if recorder is not None:
            recorder.add(obs, steps)
        ok = True
    finally:
        if recorder is not None:
            recorder.close(keep=ok)
    state = np.asarray(obs["state"], dtype=np.float64)
    out = {"init_state_id": int(init_state_id), "success": success, "steps": steps,
           "policy_ms_per_step": 1000 * t_policy / max(steps, 1), "final_state": [round(float(v), 6) for v in state]}
    if video_path is not None:
        out["video"] = str(video_path)
    return out


# ----------------------------------------------------------------------------- worker processes

_WORKER: dict[str, Any] = {}


def _worker_init(checkpoint: str, device: str | None, threads: int, env_kwargs: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    policy, pre, post = load_policy(checkpoint, device=device)
    _WORKER.clear()
    _WORKER.update(policy=policy, pre=pre, post=post, env=None, env_task=None, env_kwargs=env_kwargs)


def _worker_episode(job: tuple[int, int, str | None]) -> dict[str, Any]:
    from medvtc.robotics.libero_env import LiberoEnv

    tid, init_state_id, video = job
    w = _WORKER
    if w["env_task"] != tid:
        if w["env"] is not None:
            w["env"].close()
            w["env"] = None
        kw = dict(w["env_kwargs"])
        suite = kw.pop("suite")
        w["env"] = LiberoEnv(suite, tid, **kw)
        w["env_task"] = tid
    return run_episode(w["env"], w["policy"], w["pre"], w["post"], init_state_id,
                       seed=episode_seed(tid, init_state_id), video_path=video, cameras=w["env_kwargs"]["cameras"])


def run_rollouts(
    policy, pre, post, *, suite: str, task_ids: Sequence[int], episodes: int, camera_size: int | None = None,
    max_episode_steps: int | None = None, first_init_state: int = 0, progress: bool = True, num_envs: int = 1,
    checkpoint: str | Path | None = None, device: str | None = None, video_dir: str | Path | None = None,
    video_episodes: int = 0,
) -> dict[str, Any]:
    """Success per task and overall over `episodes` official init states per task.

    num_envs > 1: episodes run in that many worker processes, each loading the policy from
    `checkpoint` (required then) on `device` (default: CUDA if available). video_dir /
    video_episodes: mp4s of the first `video_episodes` episodes of every task, named
    `<suite>_task<t>_init<k>.mp4`, with the kept tokens drawn over the frames.
    """
    from tqdm.auto import tqdm

    from medvtc.robotics.libero_env import LiberoEnv

    task_ids = [int(t) for t in task_ids]
    bench = check_rollout_args(suite, task_ids, episodes, num_envs, video_episodes if video_dir else 0,
                               max_episode_steps)
    cams = policy_cameras(policy.config)
    if num_envs > 1 and checkpoint is None:
        raise ValueError("num_envs > 1 needs `checkpoint`: the worker processes load the policy from it")
    shape = next(iter(policy.config.image_features.values())).shape
    size = camera_size or int(shape[-1])
    env_kwargs = {"suite": suite, "camera_size": size, "cameras": cams, "max_episode_steps": max_episode_steps}
    jobs = []
    for tid in task_ids:
        n_states = len(bench.get_task_init_states(tid))
        for e in range(episodes):
            k = (first_init_state + e) % n_states
            video = str(Path(video_dir) / video_name(suite, tid, k)) if video_dir and e < video_episodes else None
            jobs.append((tid, k, video))

    by_job: list[dict[str, Any] | None] = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=f"rollout {suite}", unit="episode", disable=not progress, dynamic_ncols=True)

    def done(i: int, res: dict[str, Any]) -> None:
        by_job[i] = res
        bar.update(1)
        bar.set_postfix(success=f"{np.mean([r['success'] for r in by_job if r is not None]):.0%}")

    t0 = time.perf_counter()
    try:
        if num_envs <= 1:
            env, env_task = None, None
            try:
                for i, (tid, k, video) in enumerate(jobs):
                    if env_task != tid:
                        if env is not None:
                            env.close()
                        env = LiberoEnv(suite, tid, camera_size=size, cameras=cams, max_episode_steps=max_episode_steps)
                        env_task = tid
                    done(i, run_episode(env, policy, pre, post, k, seed=episode_seed(tid, k), video_path=video,
                                          cameras=cams))
            finally:
                if env is not None:
                    env.close()
        else:
            import multiprocessing as mp
            from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

            workers = min(num_envs, len(jobs))
            threads = max(1, (os.cpu_count() or 1) // workers)
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                     initargs=(str(checkpoint), device, threads, env_kwargs)) as pool:
                futures = {pool.submit(_worker_episode, job): i for i, job in enumerate(jobs)}
                pending = set(futures)
                try:
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                        for f in finished:
                            done(futures[f], f.result())  # re-raises a worker's exception
                except BaseException:
                    for f in pending:
                        f.cancel()
                    raise
    finally:
        bar.close()
    results: dict[str, Any] = {"suite": suite, "episodes_per_task": episodes, "first_init_state": first_init_state,
                               "max_episode_steps": max_episode_steps or env_limit(suite), "num_envs": num_envs,
                               "tasks": {}}
    for tid in task_ids:
        task = bench.get_task(tid)
        eps = [r for (t, _, _), r in zip(jobs, by_job) if t == tid]
        results["tasks"][tid] = {
            "task": task.name, "instruction": task.language,
            "success_rate": float(np.mean([r["success"] for r in eps])), "episodes": eps,
        }
    rates = [t["success_rate"] for t in results["tasks"].values()]
    results["success_rate"] = float(np.mean(rates))
    results["wall_s"] = round(time.perf_counter() - t0, 2)
    return results


def env_limit(suite: str) -> int | None:
    from medvtc.robotics.libero_env import suite_max_steps

    return suite_max_steps(suite)


def format_results(results: dict[str, Any]) -> str:
    lines = [f"{results['suite']}: {results['episodes_per_task']} episodes per task on the official initial states"]
    for tid, t in results["tasks"].items():
        ms = np.mean([r["policy_ms_per_step"] for r in t["episodes"]])
        lines.append(f"  task {tid}: success {t['success_rate']:.0%}  ({ms:.1f} ms policy per step) - {t['instruction']}")
    lines.append(f"  overall success: {results['success_rate']:.1%}")
    videos = [r["video"] for t in results["tasks"].values() for r in t["episodes"] if "video" in r]
    if videos:
        lines.append(f"  videos: {len(videos)} in {Path(videos[0]).parent}")
    return "\n".join(lines)


__all__ = [
    "POLICY_TYPES", "check_rollout_args", "episode_seed", "format_results", "load_policy", "policy_cameras",
    "resolve_checkpoint", "run_episode", "run_rollouts",
]
