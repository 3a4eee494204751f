"""Does a policy start its episodes like the official test scenes? One policy, one task, four ways
of starting an episode, success over the same number of episodes each:

    MUJOCO_GL=osmesa OMP_NUM_THREADS=1 python scripts/libero_start_check.py \\
        --checkpoint benchmarks/checkpoints/libero/compressor_vla --task 2 --episodes 20 [--starts ...]

* ``random-reset``: random scenes (held-out seeds), arm noise drawn by robosuite's reset, so the
  arm's OSC controller knows the start pose (how recordings with `arm_init` "reset" were made);
* ``random-loaded``: the same scenes, the noise loaded the way the official states are
  (`LiberoEnv.robot_init_noise`: reset at the un-noised pose, then `set_init_state`);
* ``official``: the official initial states 0..N-1 (the benchmark's test scenes, as it runs them);
* ``official-told``: the same states, the controller told the loaded pose right after loading
  (its state re-read, goal and nullspace target set to it), a diagnosis only: the benchmark
  runs the official states as LIBERO's own evaluation does.

A policy whose ``random-reset`` and ``official`` rates differ, while ``official-told`` matches
``random-reset`` and ``random-loaded`` matches ``official``, learned from scenes that start
differently from the test scenes. The episodes use the bench's torch seeds and settings.
"""

from __future__ import annotations

import argparse

import numpy as np

STARTS = ("random-reset", "random-loaded", "official", "official-told")
SCENE_SEED = 5000  # random scenes 5000.. (validation uses other seeds; the recordings' are hashed)


def tell_controller_after_loading(env) -> None:
    """Wrap the env's `set_init_state` so each arm controller re-reads the loaded pose and takes it
    as goal and nullspace target."""
    load = env.libero_env.set_init_state

    def set_init_state(state):
        obs = load(state)
        rs = env.libero_env.env
        for robot in rs.robots:
            robot.controller.update(force=True)
            robot.controller.update_initial_joints(np.array(rs.sim.data.qpos[robot._ref_joint_pos_indexes]))
        return obs

    env.libero_env.set_init_state = set_init_state


def main(argv: list[str] | None = None) -> None:
    import torch

    from medvtc.robotics.demonstrations import set_robot_init_noise
    from medvtc.robotics.libero_env import LiberoEnv
    from medvtc.robotics.rollout import episode_seed, load_policy, policy_cameras, run_episode

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--task", type=int, required=True)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--suite", default="libero_object")
    ap.add_argument("--robot-init-noise", type=float, default=0.02, help="rad, for the random scenes")
    ap.add_argument("--starts", default=",".join(STARTS), help=f"comma-separated subset of {STARTS}")
    args = ap.parse_args(argv)
    starts = args.starts.split(",")
    unknown = [s for s in starts if s not in STARTS]
    if unknown:
        raise SystemExit(f"unknown start {unknown[0]!r}; choose from {', '.join(STARTS)}")

    torch.set_num_threads(1)
    policy, pre, post = load_policy(args.checkpoint, device="cpu")
    cams = policy_cameras(policy.config)
    size = int(policy.config.image_features[next(iter(policy.config.image_features))].shape[-1])
    for start in starts:
        env = LiberoEnv(args.suite, args.task, camera_size=size, cameras=cams)
        try:
            if start.startswith("random"):
                set_robot_init_noise(env, args.robot_init_noise, "reset" if start == "random-reset" else "loaded")
                runs = [run_episode(env, policy, pre, post, None, seed=episode_seed(args.task, SCENE_SEED + e),
                                    scene_seed=SCENE_SEED + e, cameras=cams) for e in range(args.episodes)]
            else:
                if start == "official-told":
                    tell_controller_after_loading(env)
                runs = [run_episode(env, policy, pre, post, k, seed=episode_seed(args.task, k), cameras=cams)
                        for k in range(args.episodes)]
        finally:
            env.close()
        wins = [bool(r["success"]) for r in runs]
        print(f"{start:14s} {sum(wins):3d}/{len(wins)}  {''.join('1' if w else '0' for w in wins)}", flush=True)


if __name__ == "__main__":
    main()
