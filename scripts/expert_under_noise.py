"""The scripted expert's success under recording noise, and the arm-pose spread it gives
(README, "Demonstrations with variation"): 8 random scenes per libero_object task 0-2 for each
(robot_init_noise, DART action_noise) setting, then the end-effector spread of the official
initial states for comparison. Physics only, no cameras (~10 min on one core).

    MUJOCO_GL=osmesa OMP_NUM_THREADS=1 python scripts/expert_under_noise.py [episodes per task]
"""

import sys

import numpy as np

from medvtc.robotics.demonstrations import attempt_seed, dart_action, set_robot_init_noise
from medvtc.robotics.libero_env import LiberoEnv
from medvtc.robotics.scripted_expert import ScriptedExpert

LEVELS = [(0.0, 0.0), (0.02, 0.0), (0.02, 0.1), (0.02, 0.2), (0.02, 0.3)]

if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    for tid in (0, 1, 2):
        env = LiberoEnv("libero_object", tid, cameras=())
        expert = ScriptedExpert(env)
        for init_noise, action_noise in LEVELS:
            set_robot_init_noise(env, init_noise)
            successes, starts = 0, []
            for a in range(n):
                obs, _ = env.reset(seed=attempt_seed(0, tid, a), options={"init_state": "random"})
                starts.append(obs["state"][:3].copy())
                expert.reset()
                rng = np.random.default_rng([0, tid, a, 1])
                while True:
                    obs, _, terminated, truncated, info = env.step(dart_action(expert.act(), rng, action_noise))
                    if terminated or truncated:
                        break
                successes += bool(info["is_success"])
            spread = np.round(np.std(np.array(starts), axis=0) * 1000, 1)
            print(f"task {tid}, robot_init_noise {init_noise}, action_noise {action_noise}: {successes}/{n} successes, "
                  f"end-effector spread (std, mm) {spread}", flush=True)
        starts = [env.reset(options={"init_state_id": k})[0]["state"][:3] for k in range(env.num_init_states)]
        print(f"task {tid}: official initial states ({env.num_init_states}): end-effector spread (std, mm) "
              f"{np.round(np.std(np.array(starts), axis=0) * 1000, 1)}", flush=True)
        env.close()
