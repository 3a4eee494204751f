"""Where does a policy close its gripper? One policy, one task, held-out random scenes started the
way the official states start (arm noise loaded; never the official states, the test set):

    MUJOCO_GL=osmesa OMP_NUM_THREADS=1 python scripts/libero_grasp_probe.py \\
        --checkpoint benchmarks/checkpoints/libero/compressor_vla_loaded --task 2 --episodes 12

Per episode: the step of the policy's first close command, the hand's offset (mm) at that step from
the grasp point the scripted expert plans for the same scene, the finger gap 12 steps later, whether
both finger pads touch the object then (robosuite's grasp check), and success. A policy that closes
at the same step in every scene, wherever its hand is, has learned when to close, not where.
"""

from __future__ import annotations

import argparse

import numpy as np

SCENE_SEED = 90_000  # random scenes 90000.. (the start check uses 5000.., validation other seeds)
SETTLE = 12  # steps after the close command at which the grasp is read (the expert closes for 10)


def main(argv: list[str] | None = None) -> None:
    import torch

    from medvtc.robotics.demonstrations import observation_to_batch, set_robot_init_noise
    from medvtc.robotics.libero_env import LiberoEnv
    from medvtc.robotics.rollout import load_policy, policy_cameras
    from medvtc.robotics.scripted_expert import CLOSE, ScriptedExpert

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--task", type=int, required=True)
    ap.add_argument("--episodes", type=int, default=12)
    ap.add_argument("--suite", default="libero_object")
    ap.add_argument("--robot-init-noise", type=float, default=0.02, help="rad, loaded as the official states are")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    policy, pre, post = load_policy(args.checkpoint, device="cpu")
    cams = policy_cameras(policy.config)
    size = int(policy.config.image_features[next(iter(policy.config.image_features))].shape[-1])
    env = LiberoEnv(args.suite, args.task, camera_size=size, cameras=cams)
    set_robot_init_noise(env, args.robot_init_noise, "loaded")
    wins = []
    try:
        for e in range(args.episodes):
            torch.manual_seed(e)
            obs, info = env.reset(seed=SCENE_SEED + e, options={"init_state": "random"})
            policy.reset()
            expert = ScriptedExpert(env)
            expert.reset()  # plans the grasp for this scene; only its plan is read
            grasp = np.array([*expert.grasp_xy, expert.grasp_z])
            closed_at, offset, gap, held = None, None, float("nan"), None
            for step in range(env.max_episode_steps):
                with torch.inference_mode():
                    action = post(policy.select_action(pre(observation_to_batch(obs, env.instruction))))
                action = np.asarray(action, dtype=np.float32).reshape(-1)
                state = np.asarray(obs["state"])
                if closed_at is None and np.sign(action[6]) == CLOSE:
                    closed_at, offset = step, (state[:3] - grasp) * 1000
                if closed_at is not None and step == closed_at + SETTLE:
                    gap, held = float(state[6] - state[7]), expert.holding()
                obs, _, term, trunc, info = env.step(action)
                if term or trunc:
                    break
            wins.append(bool(info.get("is_success")))
            where = "never" if closed_at is None else f"{closed_at:3d}, offset {np.round(offset, 1)} mm"
            print(f"episode {e:2d}: success {int(wins[-1])}, steps {step + 1:3d}, closed at {where}, "
                  f"gap {gap:.3f} m, holding {held}", flush=True)
    finally:
        env.close()
    print(f"{sum(wins)}/{len(wins)} succeeded")


if __name__ == "__main__":
    main()
