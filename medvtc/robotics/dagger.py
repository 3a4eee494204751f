"""DAgger for the LIBERO policies: on-policy episodes labelled by the scripted expert, added to a dataset.

A policy trained on the expert's demonstrations drifts off them closed loop and has never seen how
to come back (behaviour cloning's compounding error). DAgger (Ross, Gordon and Bagnell, AISTATS
2011) lets the trained policy drive, asks the expert what it would do in every state the policy
visits, and trains the next policy on the union of the demonstrations and these labelled states.
Our expert reads the simulator's privileged state, so it can label any state; in its recovery mode
(`ExpertConfig.recover`) it also re-aligns a drifted descent, retries failed grasps, picks up a
dropped object, and carries on from a grasp the policy made itself (`ExpertConfig.follow_grasp`)
rather than labelling "open" while the policy holds the object.

    medvtc data --task libero data.root=data/libero_object_dagger1 \\
        data.dagger_base=data/libero_object_dart50_norm data.dagger_policy=runs/libero/final \\
        data.episodes_per_task=30 data.policy_share=1.0

writes `data.root` = every episode of `data.dagger_base` + `episodes_per_task` on-policy episodes
per task (random scenes from their own seed stream, one per round, failed ones kept), aggregated with LeRobot's
`aggregate_datasets`; train on it as on any dataset (`policy.init_from` starts from the driving
policy's weights). Its `meta/medvtc_recording.json` is the base's, with the on-policy scenes added
to each task's seeds (validation rollouts never reuse them) and a `dagger` section.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medvtc.common.errors import ConfigError, UserError

DAGGER_TAG = 0x646167  # "dag": the on-policy episodes' reset-seed stream (demonstrations.attempt_seed's tag)


def round_seed_tag(base_summary: Mapping[str, Any]) -> int:
    """The reset-seed stream of the round added to a dataset with this recording summary: round 1
    draws from `DAGGER_TAG`, round k from `DAGGER_TAG + k - 1`, so a chained round rolls its policy
    out on fresh scenes rather than on the earlier rounds' ones."""
    return DAGGER_TAG + len((base_summary.get("dagger") or {}).get("rounds", []))


def record_dagger(
    root: str | Path,
    base: str | Path,
    checkpoint: str | Path,
    *,
    suite: str,
    task_ids: Sequence[int],
    episodes_per_task: int,
    seed: int = 0,
    policy_share: float = 1.0,
    robot_init_noise: float = 0.0,
    action_noise: float = 0.0,
    max_episode_steps: int | None = None,
    expert_config: Any = None,
    env_kwargs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Record `episodes_per_task` on-policy episodes of `checkpoint` per task and write `root` =
    `base`'s episodes + them. Returns the saved recording summary (a dict).

    Args:
        root: the aggregated dataset folder (must not exist unless `overwrite`).
        base: the dataset the episodes are added to (a folder written by `medvtc data --task libero`).
        checkpoint: the policy that drives (a `medvtc train --task libero` run or its final folder).
        policy_share: probability that a step executes the policy's action, the expert's otherwise
            (1 - DAgger's beta; 1: the policy alone, as in DAgger's later rounds).
        robot_init_noise, action_noise, max_episode_steps, expert_config, env_kwargs: as in
            `record_demonstrations` (DART noise applies to the expert's executed steps only).
        workers: tasks recorded at once, each in its own process (`record_demonstrations`).
    """
    from medvtc.common.io import atomic_directory, atomic_write_json
    from medvtc.robotics.demonstrations import (
        ARM_INIT,
        RECORDING_FILE,
        REPO_PREFIX,
        join_parts,
        read_info,
        read_recording_summary,
        record_demonstrations,
        recording_parts_dir,
    )
    from medvtc.robotics.rollout import load_policy

    root, base = Path(root), Path(base)
    if root.resolve() == base.resolve():
        raise ConfigError(f"data.root {root} is data.dagger_base: write the aggregated dataset to another folder")
    if root.exists() and not overwrite:
        raise UserError(f"{root} already exists; pass --overwrite (overwrite=True) to replace it or choose another data.root")
    base_info = read_info(base)  # one-line error when base is not a dataset
    base_summary = read_recording_summary(base)
    if base_summary is None:
        raise UserError(f"{base / RECORDING_FILE} is missing: data.dagger_base must be a dataset written by "
                        "`medvtc data --task libero` (its recording summary keeps the demonstrations' scenes apart)")
    known = {int(t["task_id"]) for t in base_summary["tasks"]}
    if base_summary["suite"] != suite or not set(task_ids) <= known:
        raise ConfigError(f"data.dagger_base {base} holds {base_summary['suite']} tasks {sorted(known)}; "
                          f"asked for {suite} tasks {list(task_ids)}")
    if base_summary.get("arm_init", "reset") != ARM_INIT:
        raise ConfigError(f"data.dagger_base {base} has arm_init {base_summary.get('arm_init', 'reset')!r} (its scenes' arm noise "
                          f"came from robosuite's reset); this version loads it as the official states start (arm_init "
                          f"{ARM_INIT!r}), so the on-policy scenes would start differently: record a new base")
    camera = base_info["features"]["observation.images.image"]["shape"]
    camera_size = (int(camera[0]), int(camera[1]))
    policy, pre, post = load_policy(checkpoint, device="cpu")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{root.name}.on_policy.", dir=root.parent) as staging:
        on_policy = Path(staging) / "on_policy"
        summary = record_demonstrations(
            on_policy, suite=suite, task_ids=task_ids, episodes_per_task=episodes_per_task, seed=seed,
            camera_size=camera_size, init="random", max_attempts_per_task=episodes_per_task,
            max_episode_steps=max_episode_steps, progress=progress, expert_config=expert_config,
            env_kwargs=env_kwargs, robot_init_noise=robot_init_noise, action_noise=action_noise,
            driver=(policy, pre, post), driver_name=str(checkpoint), policy_share=policy_share, seed_tag=round_seed_tag(base_summary),
            parts_dir=recording_parts_dir(root.parent / f"{root.name}.on_policy"),  # a stable place: a stopped round resumes
            workers=workers, driver_factory=functools.partial(load_policy, checkpoint, device="cpu"),
        )
        if progress:
            print(summary.describe())
        t_join = time.perf_counter()
        with atomic_directory(root, overwrite=overwrite) as tmp:
            join_parts(tmp, [base, on_policy], repo_id=f"{REPO_PREFIX}/{root.name}")
            merged = _merged_summary(base_summary, summary.to_dict(), root, base, checkpoint, policy_share)
            merged["seconds"] = float(base_summary.get("seconds", 0.0)) + summary.seconds + (time.perf_counter() - t_join)
            atomic_write_json(tmp / RECORDING_FILE, merged)
    return merged


def _merged_summary(base: dict[str, Any], added: dict[str, Any], root: Path, base_root: Path,
                    checkpoint: str | Path, policy_share: float) -> dict[str, Any]:
    """The base's recording summary with the on-policy episodes' scenes and frames added per task,
    and a `dagger` section saying what was added (chained rounds keep the earlier rounds)."""
    merged = dict(base)  # episodes/attempts/failures stay the expert's own demonstrations
    merged["root"] = str(root)
    merged["tasks"] = [dict(t) for t in base["tasks"]]
    by_id = {int(t["task_id"]): t for t in merged["tasks"]}
    for t in added["tasks"]:
        m = by_id[int(t["task_id"])]
        m["kept_seeds"] = list(m.get("kept_seeds", [])) + list(t["kept_seeds"])
        m["frames"] = int(m["frames"]) + int(t["frames"])
        m["on_policy_episodes"] = int(m.get("on_policy_episodes", 0)) + int(t["attempts"])
    merged["frames"] = int(base["frames"]) + int(added["frames"])
    rounds = list((base.get("dagger") or {}).get("rounds", []))
    rounds.append({
        "base": str(base_root), "policy": str(checkpoint), "policy_share": float(policy_share),
        "episodes": int(added["episodes"]), "frames": int(added["frames"]),
        "policy_success": {str(t["task_id"]): [int(t["successes"]), int(t["attempts"])] for t in added["tasks"]},
        "seconds": float(added["seconds"]),
        "expert_hand_clearance": bool(added.get("expert_hand_clearance", False)),  # the labelling expert's grasp plan
        # whether it followed the policy's own grasps (ExpertConfig.follow_grasp); older rounds: without
        "expert_follow_grasp": bool(added.get("expert_follow_grasp") or False),
    })
    merged["dagger"] = {"rounds": rounds}
    return merged


__all__ = ["DAGGER_TAG", "record_dagger", "round_seed_tag"]
