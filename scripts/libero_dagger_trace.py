"""Re-run one on-policy episode of a DAgger round and trace what the labelling expert saw:

    MUJOCO_GL=osmesa OMP_NUM_THREADS=1 python scripts/libero_dagger_trace.py \\
        --checkpoint benchmarks/checkpoints/libero/compressor_vla --task 0 --attempt 0 [--round 1] \\
        [--data data/libero_object_clear_cvla_dagger1_follow]

The episode is rolled out as `medvtc.robotics.dagger` records it (scene seed
`attempt_seed(seed, task, attempt, DAGGER_TAG + round - 1)`, the recording's arm noise, the policy
driving every step with the same torch seed, the expert in its recovery mode), and one line is
printed whenever the expert's phase, its grasp check (`ScriptedExpert.holding`: both finger pads on
the object) or "label open while the gripper is partly closed" changes, with the finger gap, the
end-effector height and how far the object has been lifted. With `--data` (the round's recording;
episode index = base episodes + earlier rounds' + this task's earlier attempts) the re-run states
are compared with the recorded ones at the end, so the trace is known to be of the same episode.
This is how README's "On-policy data (DAgger)" tells a partly closed gripper on air from one on the
object (`scripts/libero_label_conflict.py` cannot: the dataset holds no object pose).
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
import torch


def recorded_states(root: Path, task: int, attempt: int, round_: int) -> np.ndarray:
    """The recorded states [T, 8] of this task's `attempt`-th on-policy episode of `round_`."""
    import pandas as pd

    summary = json.loads((root / "meta" / "medvtc_recording.json").read_text())
    rounds = (summary.get("dagger") or {}).get("rounds", [])
    if not 1 <= round_ <= len(rounds):
        raise SystemExit(f"{root}: has {len(rounds)} DAgger round(s), not round {round_}")
    df = pd.concat([pd.read_parquet(f, columns=["observation.state", "episode_index", "task_index"])
                    for f in sorted(glob.glob(str(root / "data" / "*" / "*.parquet")))])
    first = int(summary["episodes"]) + sum(int(r["episodes"]) for r in rounds[:round_ - 1])
    last = first + int(rounds[round_ - 1]["episodes"])
    in_round = df[(df.episode_index >= first) & (df.episode_index < last) & (df.task_index == task)]
    episodes = sorted(set(in_round.episode_index.tolist()))
    if attempt >= len(episodes):
        raise SystemExit(f"{root}: round {round_} has {len(episodes)} episodes of task {task}, not attempt {attempt}")
    return np.stack(in_round[in_round.episode_index == episodes[attempt]]["observation.state"].to_numpy())


def main(argv: list[str] | None = None) -> None:
    from medvtc.robotics.dagger import DAGGER_TAG
    from medvtc.robotics.demonstrations import attempt_seed, observation_to_batch, set_robot_init_noise
    from medvtc.robotics.libero_env import LiberoEnv
    from medvtc.robotics.rollout import load_policy
    from medvtc.robotics.scripted_expert import ExpertConfig, ScriptedExpert

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="the round's driving policy (data.dagger_policy)")
    ap.add_argument("--task", type=int, required=True)
    ap.add_argument("--attempt", type=int, default=0, help="the task's on-policy episode within the round (0-based)")
    ap.add_argument("--round", type=int, default=1, help="which DAgger round of the dataset (1-based)")
    ap.add_argument("--suite", default="libero_object")
    ap.add_argument("--seed", type=int, default=0, help="the recording's data.seed")
    ap.add_argument("--robot-init-noise", type=float, default=0.02)
    ap.add_argument("--camera-size", type=int, default=128)
    ap.add_argument("--no-follow-grasp", action="store_true", help="label as before ExpertConfig.follow_grasp")
    ap.add_argument("--data", type=Path, default=None, help="the round's recording: check the re-run states against it")
    ap.add_argument("--arm-init", default="loaded", choices=["loaded", "reset"],
                    help="how the recording applied its arm noise (its summary's arm_init; absent: reset)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    policy, pre, post = load_policy(args.checkpoint, device="cpu")
    env = LiberoEnv(args.suite, args.task, camera_size=(args.camera_size, args.camera_size), cameras=("agentview", "wrist"))
    try:
        if args.robot_init_noise > 0:
            set_robot_init_noise(env, args.robot_init_noise, args.arm_init)
        ident = attempt_seed(args.seed, args.task, args.attempt, DAGGER_TAG + args.round - 1)
        obs, _ = env.reset(seed=ident, options={"init_state": "random"})
        expert = ScriptedExpert(env, ExpertConfig(clip="norm", recover=True, follow_grasp=not args.no_follow_grasp))
        expert.reset()
        policy.reset()
        torch.manual_seed(ident % 2**31)
        states, last = [], None
        for step in range(10_000):
            label = expert.act()
            if expert.phase == "done":
                print(f"step {step}: the expert let go without success (the recording stops here)")
                break
            state = np.asarray(obs["state"])
            states.append(state)
            gap = float(state[6] - state[7])
            key = (expert.phase, expert.holding(), bool(0.01 < gap < 0.07 and label[6] < 0))
            if key != last:
                lifted = expert._footprint(expert.object_name)["bottom"] - expert.obj_bottom0
                print(f"step {step}: phase {key[0]}, grasp check {key[1]}, finger gap {gap:.3f} m, z {state[2]:.3f} m, "
                      f"object lifted {lifted:+.3f} m, label gripper {'close' if label[6] > 0 else 'open'}"
                      f"{', label open while partly closed' if key[2] else ''}")
                last = key
            with torch.inference_mode():
                action = post(policy.select_action(pre(observation_to_batch(obs, env.instruction))))
            obs, _, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float32).reshape(-1))
            if terminated or truncated:
                print(f"step {step}: episode ends, success {bool(info['is_success'])}")
                break
    finally:
        env.close()
    if args.data is not None:
        rec = recorded_states(args.data, args.task, args.attempt, args.round)
        n = min(len(rec), len(states))
        diff = float(np.abs(rec[:n] - np.stack(states[:n])).max())
        print(f"recorded episode: {len(rec)} frames, re-run {len(states)}; max state difference over the first {n}: {diff:.2e}")


if __name__ == "__main__":
    main()
