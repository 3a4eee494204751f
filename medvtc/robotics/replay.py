"""The no-vision floor: replay one recorded demonstration of a task, open loop, from the official
initial states.

    from medvtc.robotics.replay import demonstration_actions, replay_rollouts

    actions = demonstration_actions("data/libero_object_demos", "pick up the ketchup and place it in the basket")
    results = replay_rollouts({0: actions}, suite="libero_object", task_ids=[0], episodes=20)

LIBERO's official initial states differ from each other by a few millimetres of object placement
and arm pose, so the same action sequence, blind to the scene, already solves many of them. A
visual policy has to beat this floor to show it uses its images (`medvtc bench --task libero`
reports it as the `replay` row). After the recorded actions run out the arm holds still with the
last gripper command until the episode limit.

The results have the layout of `rollout.run_rollouts`' (tasks -> episodes with init_state_id,
success, steps), so the bench treats the floor like any policy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvtc.common.errors import UserError


def demonstration_actions(root: str | Path, instruction: str, episode: int = 0) -> np.ndarray:
    """The actions [T, 7] of the `episode`-th recorded demonstration (in recording order) whose
    task is `instruction`; a UserError naming the dataset when it holds fewer such episodes."""
    from medvtc.robotics.demonstrations import ACTION_KEY, load_demonstrations

    ds = load_demonstrations(root)
    tasks = ds.meta.tasks  # DataFrame indexed by the task string, column task_index
    if instruction not in tasks.index:
        known = "; ".join(map(str, list(tasks.index)[:10]))
        raise UserError(f"dataset {root} has no demonstration of the task {instruction!r}; its tasks: {known}")
    task_index = int(tasks.loc[instruction, "task_index"])
    columns = ds.hf_dataset.select_columns([ACTION_KEY, "episode_index", "task_index"]).with_format("numpy")
    episodes = np.asarray(columns["episode_index"])
    mine = np.asarray(columns["task_index"]) == task_index
    ids = list(dict.fromkeys(episodes[mine].tolist()))  # episode ids of this task, in recording order
    if not 0 <= episode < len(ids):
        raise UserError(f"dataset {root} holds {len(ids)} demonstrations of {instruction!r}; episode {episode} does not exist")
    rows = np.flatnonzero(mine & (episodes == ids[episode]))
    actions = np.stack([np.asarray(a, dtype=np.float32) for a in columns[ACTION_KEY][rows]])
    if actions.ndim != 2 or actions.shape[1] != 7:
        raise UserError(f"dataset {root}: {ACTION_KEY!r} has shape {list(actions.shape[1:])}, expected [7]")
    return actions


def replay_episode(env, actions: np.ndarray, init_state_id: int) -> dict[str, Any]:
    """Reset `env` (a `LiberoEnv`) to official state `init_state_id` and execute `actions`, then
    hold still (zero arm motion, last gripper command) until success or the episode limit."""
    env.reset(options={"init_state_id": int(init_state_id)})
    hold = np.zeros(7, dtype=np.float32)
    hold[6] = actions[-1, 6]
    steps, success = 0, False
    while True:
        action = actions[steps] if steps < len(actions) else hold
        _, _, terminated, truncated, info = env.step(action)
        steps += 1
        if terminated or truncated:
            success = bool(info["is_success"])
            break
    return {"init_state_id": int(init_state_id), "success": success, "steps": steps, "policy_ms_per_step": 0.0}


def replay_rollouts(actions: Mapping[int, np.ndarray], *, suite: str, task_ids: Sequence[int], episodes: int,
                    first_init_state: int = 0, max_episode_steps: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Success per task of replaying `actions[task_id]` from official initial states
    `first_init_state .. first_init_state + episodes - 1` (no cameras are rendered)."""
    from tqdm.auto import tqdm

    from medvtc.robotics.libero_env import LiberoEnv, suite_max_steps

    missing = [t for t in task_ids if t not in actions]
    if missing:
        raise UserError(f"no demonstration actions for task {missing[0]} of {suite!r}")
    t0 = time.perf_counter()
    results: dict[str, Any] = {"suite": suite, "episodes_per_task": episodes, "first_init_state": first_init_state,
                               "max_episode_steps": max_episode_steps or suite_max_steps(suite), "tasks": {}}
    bar = tqdm(total=episodes * len(task_ids), desc=f"replay {suite}", unit="episode", disable=not progress,
               dynamic_ncols=True)
    try:
        for tid in task_ids:
            env = LiberoEnv(suite, int(tid), cameras=(), max_episode_steps=max_episode_steps)
            try:
                eps = []
                for k in range(first_init_state, first_init_state + episodes):
                    eps.append(replay_episode(env, np.asarray(actions[tid], dtype=np.float32), k))
                    bar.update(1)
                results["tasks"][int(tid)] = {"task": env.task_name, "instruction": env.instruction,
                                              "success_rate": float(np.mean([e["success"] for e in eps])), "episodes": eps}
            finally:
                env.close()
    finally:
        bar.close()
    results["success_rate"] = float(np.mean([t["success_rate"] for t in results["tasks"].values()]))
    results["wall_s"] = round(time.perf_counter() - t0, 2)
    return results


REPLAY_FILE = "replay.safetensors"


def save_replay(folder: str | Path, root: str | Path, episode: int = 0) -> dict[str, int]:
    """Write the floor's "policy": the `episode`-th demonstration of every task of the dataset at
    `root`, as `folder/replay.safetensors` (the caller makes `folder` atomic) (one [T, 7] tensor per task; the instructions in the
    file's metadata). Returns {instruction: number of actions}."""
    from safetensors.numpy import save_file

    from medvtc.robotics.demonstrations import load_demonstrations

    instructions = [str(t) for t in load_demonstrations(root).meta.tasks.index]
    tensors = {f"task_{i}": demonstration_actions(root, text, episode) for i, text in enumerate(instructions)}
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(Path(folder) / REPLAY_FILE), metadata={f"task_{i}": t for i, t in enumerate(instructions)})
    return {text: int(tensors[f"task_{i}"].shape[0]) for i, text in enumerate(instructions)}


def load_replay(folder: str | Path) -> dict[str, np.ndarray]:
    """{instruction: actions [T, 7]} from a folder written by `save_replay`."""
    from safetensors import safe_open

    path = Path(folder) / REPLAY_FILE
    if not path.is_file():
        raise UserError(f"{folder} holds no replayed demonstrations ({REPLAY_FILE} is missing)")
    with safe_open(str(path), framework="numpy") as f:
        names = f.metadata() or {}
        return {names[key]: f.get_tensor(key) for key in f.keys()}


__all__ = ["REPLAY_FILE", "demonstration_actions", "load_replay", "replay_episode", "replay_rollouts", "save_replay"]
