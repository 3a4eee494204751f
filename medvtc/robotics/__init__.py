"""Robot control (Compressor-VLA on LIBERO).

- `libero_env`: the LIBERO gymnasium environment (`medvtc/LIBERO-v0`);
- `scripted_expert`: a privileged-state pick-and-place expert;
- `demonstrations`: expert demonstrations recorded as a LeRobotDataset v3, and its checked loader;
- `policies.compressor_vla`: the Compressor-VLA policy in LeRobot's layout (config, model, processors);
- `rollout`: closed-loop evaluation on the official initial states (parallel environments, videos);
- `token_video`: the kept visual tokens drawn over camera frames, mp4 episode videos;
- `policy_cost`: visual tokens, FLOPs and CPU latency of the policy variants (and of LeRobot's ACT);
- `bench`: `medvtc bench --task libero` (every variant trained, rolled out and costed);
- `task`: the `libero` task of the `medvtc` command line (data, train, eval, rollout, bench).

Importing `medvtc.robotics.libero_env` picks the headless OpenGL backend (EGL with a GPU, OSMesa
otherwise) before MuJoCo loads, and `register_envs()` makes
`gymnasium.make("medvtc/LIBERO-v0", suite="libero_object", task_id=0)` work. Nothing heavy is
imported here, so `import medvtc.robotics` stays cheap.
"""


def register_envs() -> None:
    from medvtc.robotics.libero_env import register_envs as _register

    _register()
