"""Robot control: the LIBERO gymnasium environment and its scripted expert (Compressor-VLA work).

Importing `medvtc.robotics.libero_env` picks the headless OpenGL backend (EGL with a GPU, OSMesa
otherwise) before MuJoCo loads, and `register_envs()` makes
`gymnasium.make("medvtc/LIBERO-v0", suite="libero_object", task_id=0)` work. Nothing heavy is
imported here, so `import medvtc.robotics` stays cheap.
"""


def register_envs() -> None:
    from medvtc.robotics.libero_env import register_envs as _register

    _register()
