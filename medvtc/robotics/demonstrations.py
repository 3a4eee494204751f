"""Scripted-expert demonstrations from the LIBERO simulator, recorded as a LeRobotDataset (v3).

    from medvtc.robotics.demonstrations import record_demonstrations, load_demonstrations

    summary = record_demonstrations("data/libero_object_demos", suite="libero_object",
                                    task_ids=[0, 1, 2], episodes_per_task=20, seed=0)
    print(summary.describe())                      # successes, failures, expert success rate
    ds = load_demonstrations("data/libero_object_demos",
                             delta_timestamps={"action": [i / 20 for i in range(16)]})

On-disk format: a LeRobotDataset v3 on a local root (no hub), with the feature names of LeRobot's
LIBERO environment and datasets, so a policy trained here reads the real LIBERO LeRobot datasets
unchanged (point `data.root` at one):

    observation.images.image    uint8 image [H, W, 3]   agentview camera (LeRobot orientation)
    observation.images.image2   uint8 image [H, W, 3]   wrist (eye-in-hand) camera
    observation.state           float32 [8]             eef xyz, eef axis-angle, 2 gripper qpos
    action                      float32 [7]             OSC_POSE delta in [-1, 1] + gripper
    task (per frame)            the task's language instruction, e.g. "pick up the ketchup and
                                place it in the basket"

plus LeRobot's own timestamp / frame_index / episode_index / index / task_index; `fps` is the
simulator's control rate (20 Hz). Frame t holds the observation the expert saw and the action it
took from it. Images are stored as PNG inside the parquet files (`dtype: image`, lossless, no
video codec needed); `video=True` stores them as AV1 videos instead, as the hub datasets do
(lossy: ~8/255 mean absolute error at 32 px).

Recording is deterministic from `seed`: attempt a of task t resets the simulator with the seed
`SeedSequence([seed, t, a])` and LIBERO's own randomised object placement (or official init state
a with `init="official"`, which evaluation uses, so training on it leaks test scenes). Only
successful episodes are kept; attempts go on until `episodes_per_task` successes or
`max_attempts_per_task`. The counts of failed attempts and the expert's success rate are written
to `meta/medvtc_recording.json` and returned.

Variation to learn from. LIBERO's `ControlEnv` builds the robot with `initialization_noise=None`
(zero), so without help every recorded episode starts from the very same arm pose, while the
official evaluation states carry 0.004-0.035 rad of joint noise, and a closed-loop policy fitted
to near-identical trajectories never learns to correct its own drift. Two knobs fix that:

* `robot_init_noise` (rad): Gaussian joint noise at each random reset, robosuite's own
  `initialization_noise` mechanism (its "default" is 0.02, which LIBERO's original demonstrations
  used); drawn from the reset seed, so still deterministic. Official init states are never noised.
* `action_noise`: DART (Laskey et al., "DART: Noise Injection for Robust Imitation Learning",
  CoRL 2017): the simulator executes the expert's action plus Gaussian noise of this standard
  deviation on the six arm dimensions (in the [-1, 1] action units; the gripper is left alone),
  while the dataset records the expert's *clean* action as the label. The expert is closed loop on
  the privileged state, so the labels at the perturbed states are corrective actions.

Each task is recorded as its own LeRobotDataset in a hidden folder beside `root`
(`recording_parts_dir`, `RecordingParts`); when every task is done they are joined with LeRobot's
`aggregate_datasets` in a temporary folder that is renamed onto `root`. So an interrupted recording
leaves no half-written dataset, the same call resumes after the last finished task (an hour-long
recording loses at most the task it was in), and an existing dataset is never replaced unless
`overwrite=True`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvtc.common.errors import ConfigError, UserError

# Feature names (LeRobot's LIBERO env: lerobot/envs/configs.py, LiberoEnv.features_map).
IMAGE_KEY = "observation.images.image"
WRIST_IMAGE_KEY = "observation.images.image2"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
CAMERA_TO_KEY: dict[str, str] = {"agentview": IMAGE_KEY, "wrist": WRIST_IMAGE_KEY}

STATE_NAMES = ["eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z",
               "gripper_qpos_left", "gripper_qpos_right"]
ACTION_NAMES = ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]
STATE_DIM = len(STATE_NAMES)
ACTION_DIM = len(ACTION_NAMES)

CONTROL_FPS = 20  # LIBERO / robosuite control frequency
RECORDING_FILE = "meta/medvtc_recording.json"
REPO_PREFIX = "medvtc"
# How this version applies the random scenes' arm noise (RecordingSummary.arm_init): loaded like the
# official initial states (LiberoEnv.robot_init_noise); older recordings say "reset" (robosuite's reset).
ARM_INIT = "loaded"


def arm_init_text(arm_init: str) -> str:
    """How a recording's `arm_init` reads in its description."""
    return "arm noise loaded as the official states start" if arm_init == ARM_INIT else "arm noise from robosuite's reset"


INIT_MODES = ("random", "official")


def libero_features(camera_size: int | tuple[int, int], cameras: Sequence[str] = ("agentview", "wrist"),
                    video: bool = False) -> dict[str, dict[str, Any]]:
    """The LeRobotDataset `features` dict of a recording."""
    if isinstance(camera_size, (int, np.integer)):
        camera_size = (int(camera_size), int(camera_size))
    h, w = (int(v) for v in camera_size)
    feats: dict[str, dict[str, Any]] = {}
    for cam in cameras:
        feats[CAMERA_TO_KEY[cam]] = {
            "dtype": "video" if video else "image",
            "shape": (h, w, 3),
            "names": ["height", "width", "channel"],
        }
    feats[STATE_KEY] = {"dtype": "float32", "shape": (STATE_DIM,), "names": list(STATE_NAMES)}
    feats[ACTION_KEY] = {"dtype": "float32", "shape": (ACTION_DIM,), "names": list(ACTION_NAMES)}
    return feats


def observation_to_frame(obs: Mapping[str, np.ndarray], action: np.ndarray, instruction: str) -> dict[str, Any]:
    """One env observation plus the action taken from it, as a `LeRobotDataset.add_frame` frame."""
    frame: dict[str, Any] = {cam_key: np.asarray(obs[cam]) for cam, cam_key in CAMERA_TO_KEY.items() if cam in obs}
    frame[STATE_KEY] = np.asarray(obs["state"], dtype=np.float32)
    frame[ACTION_KEY] = np.asarray(action, dtype=np.float32)
    frame["task"] = instruction
    return frame


def observation_to_batch(obs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                         instruction: str | Sequence[str]) -> dict[str, Any]:
    """Env observation(s) -> the batch a LeRobot preprocessor expects, as the dataset yields it:
    images float32 [B, 3, H, W] in [0, 1], state float32 [B, 8], task list[str] of length B."""
    import torch

    many = not isinstance(obs, Mapping)
    obs_list = list(obs) if many else [obs]
    texts = [instruction] * len(obs_list) if isinstance(instruction, str) else list(instruction)
    if len(texts) != len(obs_list):
        raise ValueError(f"{len(obs_list)} observations but {len(texts)} instructions")
    batch: dict[str, Any] = {}
    for cam, key in CAMERA_TO_KEY.items():
        if cam in obs_list[0]:
            imgs = np.stack([np.asarray(o[cam]) for o in obs_list])  # [B, H, W, 3] uint8
            batch[key] = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255.0)
    batch[STATE_KEY] = torch.from_numpy(np.stack([np.asarray(o["state"], dtype=np.float32) for o in obs_list]))
    batch["task"] = texts
    return batch


def attempt_seed(seed: int, task_id: int, attempt: int, tag: int | None = None) -> int:
    """The reset seed of attempt `attempt` of task `task_id` (independent streams per task; a `tag`
    opens another stream, e.g. the on-policy episodes of `medvtc.robotics.dagger`)."""
    entropy = [int(seed), int(task_id), int(attempt)] + ([] if tag is None else [int(tag)])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


@dataclass
class TaskRecording:
    task_id: int
    task: str
    instruction: str
    attempts: int = 0
    successes: int = 0
    frames: int = 0
    failed_seeds: list[int] = field(default_factory=list)  # reset seeds (random) or init-state ids (official)
    kept_seeds: list[int] = field(default_factory=list)
    kept_failures: int = 0  # failed episodes kept (on-policy recording: every visited state has an expert label)

    @property
    def failures(self) -> int:
        return self.attempts - self.successes

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else math.nan


@dataclass
class RecordingSummary:
    root: str
    suite: str
    seed: int
    init: str
    camera_size: tuple[int, int]
    fps: int
    episodes_per_task: int
    tasks: list[TaskRecording]
    seconds: float = 0.0
    robot_init_noise: float = 0.0
    action_noise: float = 0.0
    image_stats: str = "uint8"  # how LeRobot computed the image statistics ("float": under image_stats.float_image_stats)
    expert_clip: str = "axis"  # the scripted expert's velocity limit (ExpertConfig.clip)
    expert_hand_clearance: bool = False  # the expert's palm-clearing grasp plan (ExpertConfig.hand_clearance); older recordings: without
    # on-policy recording (DAgger): {"policy": checkpoint, "policy_share": p}; None: the expert drove
    driver: dict[str, Any] | None = None
    # on-policy recording: whether the labelling expert followed the policy's own grasps
    # (ExpertConfig.follow_grasp); None for the expert's own recordings, absent: older, without
    expert_follow_grasp: bool | None = None
    dagger: dict[str, Any] | None = None  # an aggregated dataset: what `medvtc.robotics.dagger` added to which base
    # how the random scenes' arm noise was applied: "loaded" (LiberoEnv.robot_init_noise: as the official
    # states start); absent: older recordings, "reset" (robosuite's own reset drew it; the controller knew the pose)
    arm_init: str = "reset"

    @property
    def episodes(self) -> int:
        return sum(t.successes + t.kept_failures for t in self.tasks)

    @property
    def attempts(self) -> int:
        return sum(t.attempts for t in self.tasks)

    @property
    def failures(self) -> int:
        return sum(t.failures for t in self.tasks)

    @property
    def frames(self) -> int:
        return sum(t.frames for t in self.tasks)

    @property
    def expert_success_rate(self) -> float:
        return self.episodes / self.attempts if self.attempts else math.nan

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["camera_size"] = list(self.camera_size)
        d.update(episodes=self.episodes, attempts=self.attempts, failures=self.failures, frames=self.frames,
                 expert_success_rate=self.expert_success_rate)
        for t, td in zip(self.tasks, d["tasks"]):
            td.update(failures=t.failures, success_rate=t.success_rate)
        return d

    def describe(self) -> str:
        if self.driver is not None:
            return self._describe_on_policy()
        lines = [
            f"{self.episodes} successful episodes ({self.frames} frames) of {self.suite} at {self.fps} fps in "
            f"{self.root}; the expert failed {self.failures} of {self.attempts} attempts "
            f"(success rate {self.expert_success_rate:.1%}, {self.init} initial states, seed {self.seed}, "
            f"robot init noise {self.robot_init_noise:g} rad, DART action noise {self.action_noise:g}, "
            f"expert velocity clipped per {self.expert_clip}, "
            f"{'palm-clearing' if self.expert_hand_clearance else 'plain'} grasp plan, "
            f"{arm_init_text(self.arm_init)})",
        ]
        for t in self.tasks:
            short = "" if t.successes >= self.episodes_per_task else f"  (wanted {self.episodes_per_task})"
            lines.append(f"  task {t.task_id}: {t.successes}/{t.attempts} attempts succeeded, {t.frames} frames"
                         f" - {t.instruction!r}{short}")
        if self.seconds:
            lines.append(f"  recorded in {self.seconds:.0f} s ({self.frames / max(self.seconds, 1e-9):.1f} frames/s)")
        return "\n".join(lines)

    def _describe_on_policy(self) -> str:
        lines = [
            f"{self.episodes} on-policy episodes ({self.frames} frames) of {self.suite} in {self.root}, driven by "
            f"{self.driver['policy']} (its action executed at {self.driver['policy_share']:.0%} of the steps, the "
            f"expert's otherwise) and labelled by the scripted expert; the task succeeded in {self.attempts - self.failures} "
            f"({(self.attempts - self.failures) / max(self.attempts, 1):.1%}; random scenes, seed {self.seed}, robot init noise {self.robot_init_noise:g} rad)",
        ]
        for t in self.tasks:
            lines.append(f"  task {t.task_id}: {t.successes}/{t.attempts} succeeded, {t.frames} frames - {t.instruction!r}")
        if self.seconds:
            lines.append(f"  recorded in {self.seconds:.0f} s ({self.frames / max(self.seconds, 1e-9):.1f} frames/s)")
        return "\n".join(lines)


def _check_record_args(suite, task_ids, episodes_per_task, init, max_attempts_per_task,
                       robot_init_noise: float = 0.0, action_noise: float = 0.0) -> None:
    if init not in INIT_MODES:
        raise ConfigError(f"init must be one of {INIT_MODES}, got {init!r}")
    for name, value in (("robot_init_noise", robot_init_noise), ("action_noise", action_noise)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    if robot_init_noise > 0 and init == "official":
        raise ConfigError("robot_init_noise applies to random initial states only; the official states carry their own")
    if episodes_per_task < 1:
        raise ConfigError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if max_attempts_per_task is not None and max_attempts_per_task < episodes_per_task:
        raise ConfigError(
            f"max_attempts_per_task ({max_attempts_per_task}) must be >= episodes_per_task ({episodes_per_task})"
        )
    if not task_ids:
        raise ConfigError("no task ids given")
    if len(set(task_ids)) != len(task_ids):
        raise ConfigError(f"task ids repeat: {list(task_ids)}")


def set_robot_init_noise(env, magnitude: float, arm_init: str = ARM_INIT) -> None:
    """Gaussian joint noise of `magnitude` rad on the arm at every later random reset of `env` (a
    `LiberoEnv`), drawn from the reset seed. `arm_init` "loaded" (default): the env's
    `robot_init_noise`, loaded the way LIBERO's official initial states are, so the scenes start
    like the test scenes; "reset": robosuite's own reset draws it (how recordings before that were
    made: replaying one of them needs it)."""
    if not math.isfinite(magnitude) or magnitude < 0:
        raise ConfigError(f"robot_init_noise must be a finite number >= 0 (rad), got {magnitude!r}")
    if arm_init not in (ARM_INIT, "reset"):
        raise ConfigError(f"arm_init must be {ARM_INIT!r} or 'reset', got {arm_init!r}")
    env.robot_init_noise = float(magnitude) if arm_init == ARM_INIT else 0.0
    # robosuite rebuilds its robots from `robot_configs` on a hard reset: both get the setting
    noise = {"magnitude": float(magnitude) if arm_init == "reset" else 0.0, "type": "gaussian"}
    robosuite_env = env.libero_env.env
    for config in robosuite_env.robot_configs:
        config["initialization_noise"] = dict(noise)
    for robot in robosuite_env.robots:
        robot.initialization_noise = dict(noise)


def dart_action(clean: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """The action DART executes: `clean` plus N(0, std) on the six arm dimensions, clipped to
    [-1, 1]; the gripper command (last dimension) is executed as the expert gave it."""
    executed = np.asarray(clean, dtype=np.float32).copy()
    if std > 0:
        executed[:6] += rng.normal(0.0, std, size=6).astype(np.float32)
    return np.clip(executed, -1.0, 1.0)


def recording_parts_dir(root: str | Path) -> Path:
    """Where a recording into `root` keeps its finished tasks until the whole recording is written
    (a hidden folder beside `root`; removed once `root` is complete)."""
    root = Path(root)
    return root.parent / f".{root.name}.parts"


class RecordingParts:
    """The finished tasks of an interrupted recording, one LeRobotDataset per task, so that running
    the same recording again resumes after the last finished task instead of starting over.

    `folder/settings.json` holds the recording's settings; parts recorded under other settings are
    discarded when the folder is opened (the recording is deterministic from its settings, so a
    part recorded under the same ones is what recording it again would give). Each task's part is
    `folder/task_<id>/` (the dataset, written atomically, plus `PART_FILE` with its `TaskRecording`).
    """

    PART_FILE = "medvtc_part.json"

    def __init__(self, folder: str | Path, settings: Mapping[str, Any]):
        from medvtc.common.io import atomic_write_json

        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(dict(settings), default=str))  # as it reads back from the file
        settings_file = self.folder / "settings.json"
        if self.folder.exists():
            try:
                stored = json.loads(settings_file.read_text())
            except (OSError, ValueError):
                stored = None
            if stored != self.settings:
                if self.finished():
                    print(f"medvtc: discarding the recorded tasks in {self.folder}: they were recorded under other settings")
                shutil.rmtree(self.folder)
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            atomic_write_json(settings_file, self.settings)

    def path(self, task_id: int) -> Path:
        return self.folder / f"task_{int(task_id)}"

    def finished(self) -> list[int]:
        """Task ids whose part is complete."""
        if not self.folder.is_dir():
            return []
        return sorted(int(p.name.split("_", 1)[1]) for p in self.folder.glob("task_*") if (p / self.PART_FILE).is_file())

    def load(self, task_id: int) -> tuple[TaskRecording, float] | None:
        """(the task's recording, the seconds it took) if its part is complete, else None."""
        f = self.path(task_id) / self.PART_FILE
        if not f.is_file():
            return None
        d = json.loads(f.read_text())
        return TaskRecording(**d["task"]), float(d["seconds"])

    @classmethod
    def write_record(cls, tmp: Path, rec: TaskRecording, seconds: float) -> None:
        """Mark a part (being built in `tmp`, renamed onto `path(task_id)` by the caller) complete."""
        from medvtc.common.io import atomic_write_json

        atomic_write_json(tmp / cls.PART_FILE, {"task": asdict(rec), "seconds": float(seconds)})

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def record_demonstrations(
    root: str | Path,
    suite: str = "libero_object",
    task_ids: Sequence[int] = (0,),
    episodes_per_task: int = 10,
    *,
    seed: int = 0,
    camera_size: int | tuple[int, int] = 128,
    init: str = "random",
    max_attempts_per_task: int | None = None,
    max_episode_steps: int | None = None,
    fps: int = CONTROL_FPS,
    video: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    expert_config: Any = None,
    env_kwargs: Mapping[str, Any] | None = None,
    robot_init_noise: float = 0.0,
    action_noise: float = 0.0,
    driver: tuple[Any, Any, Any] | None = None,
    driver_name: str | None = None,
    policy_share: float = 1.0,
    seed_tag: int | None = None,
    parts_dir: str | Path | None = None,
    workers: int = 1,
    driver_factory: Callable[[], tuple[Any, Any, Any]] | None = None,
) -> RecordingSummary:
    """Roll the scripted expert out and keep its successful episodes as a LeRobotDataset at `root`.

    Args:
        root: the dataset folder (must not exist unless `overwrite`).
        suite, task_ids: which LIBERO tasks (bad names/ids raise a ConfigError listing valid ones).
        episodes_per_task: successful episodes wanted per task.
        seed: every reset seed derives from it (see `attempt_seed`).
        camera_size: image height/width in pixels (int = square).
        init: "random" (LIBERO's placement sampler, seeded) or "official" (init state a for
            attempt a, cycling; these are the evaluation scenes).
        max_attempts_per_task: give up on a task after this many attempts (default
            2 * episodes_per_task + 5); a task with fewer successes is reported, not an error,
            unless no task succeeded at all.
        max_episode_steps: episode limit (default: the suite's).
        video: store cameras as AV1 video instead of PNG frames.
        expert_config: a `scripted_expert.ExpertConfig` (default gains).
        env_kwargs: extra `LiberoEnv` arguments (e.g. ``fast_render=True``).
        robot_init_noise: Gaussian joint noise (rad) of the arm at each random reset (0: none, as
            LIBERO's ControlEnv; 0.02: robosuite's default, as LIBERO's own demonstrations).
        action_noise: DART noise: standard deviation added to the executed arm actions while the
            clean expert action is recorded (0: off).
        driver: on-policy recording (DAgger, Ross et al. 2011): a trained policy's (policy,
            preprocessor, postprocessor) drives the arm, the expert (in its recovery mode) labels
            every visited state, and every episode is kept, failed or not (`episodes_per_task`
            episodes per task, `driver_name` saved as the policy's name).
        policy_share: with a driver, the probability that a step executes the policy's action
            rather than the expert's (DAgger's 1 - beta).
        seed_tag: draw the reset seeds from another stream (`attempt_seed`'s tag).
        parts_dir: where finished tasks wait for the rest (`RecordingParts`; default
            `recording_parts_dir(root)`): a recording stopped part-way resumes after its last
            finished task when run again with the same settings.
        workers: record up to this many tasks at once, each in its own process with one torch
            thread (the recording is the same as with 1: a task's seeds depend only on seed, task
            and attempt); each process writes its task's part, and this one joins them.
        driver_factory: with a driver and workers > 1, a picklable callable that returns the
            driver again (e.g. `functools.partial(rollout.load_policy, checkpoint, device="cpu")`):
            each process builds its own copy; a policy object is not shared across processes.

    Returns the `RecordingSummary` (also saved as meta/medvtc_recording.json).
    """
    from tqdm.auto import tqdm

    from medvtc.common.io import atomic_directory, atomic_write_json
    from medvtc.common.token_cache import module_fingerprint
    from medvtc.robotics.image_stats import FLOAT_MARK
    from medvtc.robotics.libero_env import check_gl_backend, load_suite
    from medvtc.robotics.scripted_expert import ExpertConfig

    root = Path(root)
    task_ids = [int(t) for t in task_ids]
    _check_record_args(suite, task_ids, episodes_per_task, init, max_attempts_per_task, robot_init_noise, action_noise)
    if not 0.0 <= policy_share <= 1.0:
        raise ConfigError(f"policy_share must lie in [0, 1], got {policy_share}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive int (processes recording tasks at once), got {workers!r}")
    if driver is not None and workers > 1 and driver_factory is None:
        raise ConfigError("recording with a driving policy in several processes needs driver_factory "
                          "(what each process builds the policy with)")
    if driver is not None:
        expert_config = dataclasses.replace(expert_config or ExpertConfig(), recover=True)
    expert_config = expert_config or ExpertConfig()
    if root.exists() and not overwrite:
        raise UserError(f"{root} already exists; pass --overwrite (overwrite=True) to replace it or choose another data.root")
    n_tasks = load_suite(suite).get_num_tasks()  # raises for an unknown suite, listing the valid ones
    bad = [t for t in task_ids if not 0 <= t < n_tasks]
    if bad:
        raise ConfigError(f"task id {bad[0]} is out of range for suite {suite!r}: valid ids are 0..{n_tasks - 1}")
    check_gl_backend()
    max_attempts = max_attempts_per_task or 2 * episodes_per_task + 5
    if isinstance(camera_size, (int, np.integer)):
        camera_size = (int(camera_size), int(camera_size))
    summary = RecordingSummary(
        root=str(root), suite=suite, seed=int(seed), init=init, camera_size=tuple(camera_size), fps=int(fps),
        episodes_per_task=int(episodes_per_task), tasks=[], robot_init_noise=float(robot_init_noise),
        action_noise=float(action_noise), image_stats=FLOAT_MARK, expert_clip=expert_config.clip,
        expert_hand_clearance=expert_config.hand_clearance,
        driver=None if driver is None else {"policy": str(driver_name), "policy_share": float(policy_share)},
        expert_follow_grasp=None if driver is None else bool(expert_config.follow_grasp),
        arm_init=ARM_INIT,
    )
    # everything that decides what is recorded: a part recorded under these settings is reused as it is
    settings = {
        "suite": suite, "episodes_per_task": int(episodes_per_task), "seed": int(seed), "camera_size": list(camera_size),
        "init": init, "max_attempts": int(max_attempts), "max_episode_steps": max_episode_steps, "fps": int(fps),
        "video": bool(video), "expert": asdict(expert_config), "env_kwargs": dict(env_kwargs or {}),
        "robot_init_noise": float(robot_init_noise), "action_noise": float(action_noise), "seed_tag": seed_tag,
        "arm_init": summary.arm_init,
        "driver": None if driver is None else {"name": str(driver_name), "policy_share": float(policy_share),
                                                "weights": module_fingerprint(driver[0])},
    }
    parts = RecordingParts(parts_dir if parts_dir is not None else recording_parts_dir(root), settings)
    bar = tqdm(total=episodes_per_task * len(task_ids), desc=f"record {suite}", unit="episode",
               disable=not progress, dynamic_ncols=True)
    try:
        seconds = 0.0
        pending = [t for t in task_ids if parts.load(t) is None]
        in_processes = set(pending) if workers > 1 and len(pending) > 1 else set()
        if in_processes:
            _record_parts_in_processes(parts, pending, min(workers, len(pending)), summary, max_attempts,
                                       max_episode_steps, video, expert_config, env_kwargs,
                                       driver_factory if driver is not None else None, policy_share, seed_tag, bar)
        for task_id in task_ids:
            done = parts.load(task_id)
            if done is None:
                t_task = time.perf_counter()
                with atomic_directory(parts.path(task_id), overwrite=True) as tmp:
                    rec = _record_task(tmp, task_id, summary, max_attempts, max_episode_steps, video, expert_config,
                                       env_kwargs, driver, policy_share, seed_tag, bar)
                    done = rec, time.perf_counter() - t_task
                    parts.write_record(tmp, *done)
            elif task_id not in in_processes:  # those were counted as their processes finished
                bar.update(min(done[0].attempts if driver is not None else done[0].successes, episodes_per_task))
            summary.tasks.append(done[0])
            seconds += done[1]
        if summary.episodes == 0:
            parts.remove()
            raise UserError(
                f"the scripted expert succeeded in none of {summary.attempts} attempts on {suite} tasks "
                f"{task_ids}; nothing to record (it handles single (In ...)/(On ...) pick-and-place goals, "
                "e.g. libero_object and libero_spatial)"
            )
        t_join = time.perf_counter()
        with atomic_directory(root, overwrite=overwrite) as tmp:
            join_parts(tmp, [parts.path(t.task_id) for t in summary.tasks if t.successes + t.kept_failures],
                       repo_id=f"{REPO_PREFIX}/{root.name}")
            summary.seconds = seconds + (time.perf_counter() - t_join)
            atomic_write_json(tmp / RECORDING_FILE, summary.to_dict())
        parts.remove()
    except BaseException:
        kept = parts.finished()
        if kept:
            print(f"medvtc: the recording stopped; the {len(kept)} finished task(s) {kept} are kept in {parts.folder}: "
                  "the same command resumes after them")
        else:
            parts.remove()
        raise
    finally:
        bar.close()
    return summary


def join_parts(dest: Path, sources: Sequence[Path], repo_id: str) -> None:
    """Write the LeRobotDatasets `sources` (in order) as one dataset at `dest`, a folder that exists
    and is empty (LeRobot's `aggregate_datasets`: episodes renumbered, tasks unified, statistics
    combined)."""
    from lerobot.datasets.aggregate import aggregate_datasets

    dest.rmdir()  # LeRobot creates the aggregated dataset's folder itself
    aggregate_datasets([f"{REPO_PREFIX}/{p.name}" for p in sources], repo_id, roots=list(sources), aggr_root=dest)
    shutil.rmtree(dest / "images", ignore_errors=True)  # LeRobot's PNG staging area, empty


def _record_parts_in_processes(parts: RecordingParts, task_ids: Sequence[int], processes: int,
                               summary: RecordingSummary, max_attempts: int, max_episode_steps: int | None,
                               video: bool, expert_config: Any, env_kwargs: Mapping[str, Any] | None,
                               driver_factory: Callable[[], tuple[Any, Any, Any]] | None, policy_share: float,
                               seed_tag: int | None, bar) -> None:
    """Record `task_ids` as `parts`' parts in `processes` worker processes (spawned: MuJoCo's GL
    context and torch's thread pool do not survive a fork). A failing task stops the others; the
    parts finished until then are kept, as when one process stops."""
    import multiprocessing

    args = [(str(parts.path(t)), t, summary, max_attempts, max_episode_steps, video, expert_config,
             dict(env_kwargs or {}), driver_factory, policy_share, seed_tag) for t in task_ids]
    pool = multiprocessing.get_context("spawn").Pool(processes, maxtasksperchild=1)
    try:
        for count in pool.imap_unordered(_record_part_worker, args):
            bar.update(count)
        pool.close()
    except BaseException:
        pool.terminate()  # a part being written is left in its temporary folder, never as finished
        raise
    finally:
        pool.join()


def _record_part_worker(args: tuple) -> int:
    """One task of `_record_parts_in_processes`, in its own process: records the task's part at
    `part` (atomically, with its `TaskRecording`); returns the number of episodes it ran."""
    import torch

    from medvtc.common.io import atomic_directory

    (part, task_id, summary, max_attempts, max_episode_steps, video, expert_config, env_kwargs,
     driver_factory, policy_share, seed_tag) = args
    torch.set_num_threads(1)  # one process per core
    driver = None if driver_factory is None else driver_factory()

    from tqdm.auto import tqdm

    t_task = time.perf_counter()
    with atomic_directory(Path(part), overwrite=True) as tmp:
        rec = _record_task(tmp, task_id, summary, max_attempts, max_episode_steps, video, expert_config, env_kwargs,
                           driver, policy_share, seed_tag, tqdm(disable=True))  # the parent counts tasks
        RecordingParts.write_record(tmp, rec, time.perf_counter() - t_task)
    return min(rec.attempts if driver is not None else rec.successes, summary.episodes_per_task)


def _record_task(tmp: Path, task_id: int, summary: RecordingSummary, max_attempts: int, max_episode_steps: int | None,
                 video: bool, expert_config: Any, env_kwargs: Mapping[str, Any] | None, driver, policy_share: float,
                 seed_tag: int | None, bar) -> TaskRecording:
    """Record one task's episodes (`record_demonstrations`' settings in `summary`) as a LeRobotDataset
    in the empty folder `tmp`; returns its `TaskRecording`."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from medvtc.robotics.image_stats import float_image_stats
    from medvtc.robotics.libero_env import LiberoEnv
    from medvtc.robotics.scripted_expert import ScriptedExpert

    if driver is not None:
        import torch

        policy, pre, post = driver
    seed, init, episodes_per_task, cams = summary.seed, summary.init, summary.episodes_per_task, ("agentview", "wrist")
    with float_image_stats():
        tmp.rmdir()  # LeRobotDataset.create insists on making the folder itself
        ds = LeRobotDataset.create(
            repo_id=f"{REPO_PREFIX}/{tmp.name}", fps=summary.fps, root=tmp, robot_type="panda",
            features=libero_features(summary.camera_size, cams, video=video), use_videos=video,
        )
        try:
            env = LiberoEnv(summary.suite, task_id, camera_size=summary.camera_size, cameras=cams,
                            max_episode_steps=max_episode_steps, **dict(env_kwargs or {}))
            try:
                rec = TaskRecording(task_id=task_id, task=env.task_name, instruction=env.instruction)
                expert = ScriptedExpert(env, expert_config)
                if summary.robot_init_noise > 0:
                    set_robot_init_noise(env, summary.robot_init_noise)
                for attempt in range(max_attempts):
                    if (rec.attempts if driver is not None else rec.successes) >= episodes_per_task:
                        break
                    if init == "random":
                        ident = attempt_seed(seed, task_id, attempt, seed_tag)
                        obs, _ = env.reset(seed=ident, options={"init_state": "random"})
                    else:
                        ident = attempt % env.num_init_states
                        obs, _ = env.reset(options={"init_state_id": ident})
                    expert.reset()
                    noise_rng = np.random.default_rng([int(seed), task_id, attempt, 1])
                    mix_rng = np.random.default_rng([int(seed), task_id, attempt, 2])
                    if driver is not None:
                        policy.reset()
                        torch.manual_seed(ident % 2**31)
                    frames, success = [], False
                    while True:
                        action = expert.act()  # the clean label
                        if driver is not None and expert.phase == "done":
                            break  # released without success: the expert has nothing left to teach here
                        frames.append(observation_to_frame(obs, action, env.instruction))
                        executed = dart_action(action, noise_rng, summary.action_noise)
                        if driver is not None:
                            with torch.inference_mode():  # the policy reads every step to keep its chunk queue in time
                                proposed = post(policy.select_action(pre(observation_to_batch(obs, env.instruction))))
                            if mix_rng.random() < policy_share:
                                executed = np.asarray(proposed, dtype=np.float32).reshape(-1)
                        obs, _, terminated, truncated, info = env.step(executed)
                        if terminated or truncated:
                            success = bool(info["is_success"])
                            break
                    rec.attempts += 1
                    if driver is not None and frames and not success:
                        rec.kept_failures += 1  # DAgger keeps the states of a failed episode too
                        rec.failed_seeds.append(int(ident))
                    elif not success:
                        rec.failed_seeds.append(int(ident))
                        bar.set_postfix(failed=sum(t.failures for t in summary.tasks) + rec.failures)
                        continue
                    for frame in frames:
                        ds.add_frame(frame)
                    ds.save_episode()
                    rec.successes += int(success)
                    rec.frames += len(frames)
                    rec.kept_seeds.append(int(ident))
                    bar.update(1)
            finally:
                env.close()
        finally:
            ds.finalize()
    staging = tmp / "images"  # LeRobot's per-frame PNG staging area, empty once episodes are saved
    if staging.is_dir() and not any(p.is_file() for p in staging.rglob("*")):
        shutil.rmtree(staging)
    return rec


# --------------------------------------------------------------------------------------- loading


def required_features(input_features: Mapping[str, Any] | None = None,
                      output_features: Mapping[str, Any] | None = None) -> dict[str, tuple[int, ...] | None]:
    """Feature keys a policy needs, with the shape each must have (None: any shape).

    From a policy config's `input_features` / `output_features` (PolicyFeature values; images
    channel-first as the policy sees them); with none given, the LIBERO defaults: both cameras,
    the 8-D state and the 7-D action.
    """
    if not input_features and not output_features:
        return {IMAGE_KEY: None, WRIST_IMAGE_KEY: None, STATE_KEY: (STATE_DIM,), ACTION_KEY: (ACTION_DIM,)}
    need: dict[str, tuple[int, ...] | None] = {}
    for key, ft in {**dict(input_features or {}), **dict(output_features or {})}.items():
        shape = getattr(ft, "shape", None)
        need[key] = tuple(int(s) for s in shape) if shape is not None else None
    return need


def _policy_shape(feature: Mapping[str, Any]) -> tuple[int, ...]:
    """A dataset feature's shape as a policy sees it (images channel-first)."""
    shape = tuple(int(s) for s in feature["shape"])
    names = feature.get("names") or []
    if feature.get("dtype") in ("image", "video") and len(shape) == 3 and len(names) == 3 and names[2] in ("channel", "channels"):
        shape = (shape[2], shape[0], shape[1])
    return shape


def check_dataset_features(features: Mapping[str, Mapping[str, Any]], required: Mapping[str, tuple[int, ...] | None],
                           root: str | Path = "the dataset") -> None:
    """UserError naming the first missing key (and the keys there are), or a shape mismatch."""
    present = sorted(k for k in features)
    for key, shape in required.items():
        if key not in features:
            raise UserError(
                f"dataset {root} has no {key!r} feature, which the policy needs; its features are: "
                f"{', '.join(present)}. Record it with `medvtc data --task libero` or rename the dataset's keys"
            )
        if key.startswith("observation.image") and features[key].get("dtype") not in ("image", "video"):
            raise UserError(f"dataset {root}: feature {key!r} has dtype {features[key].get('dtype')!r}, expected image or video")
        if shape is not None:
            got = _policy_shape(features[key])
            if key.startswith("observation.image"):
                ok = len(got) == 3 and got[0] == shape[0]  # any resolution: the policy resizes
            else:
                ok = got == tuple(shape)
            if not ok:
                raise UserError(f"dataset {root}: feature {key!r} has shape {list(got)}, the policy needs {list(shape)}")


def read_info(root: str | Path) -> dict[str, Any]:
    """meta/info.json of a local LeRobotDataset, with UserErrors for anything that is not one."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset root {root} does not exist; record one with `medvtc data --task libero` "
                        "or point data.root at a LeRobotDataset v3 folder")
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise UserError(f"{root} is not a LeRobotDataset: {info_path} is missing")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {info_path}: {e}") from None
    version = str(info.get("codebase_version", "?"))
    if not version.startswith("v3"):
        raise UserError(
            f"{root} is a LeRobotDataset {version}; this reader needs v3.x. Convert it with LeRobot's "
            "`python -m lerobot.datasets.v30.convert_dataset_v21_to_v30`"
        )
    if not isinstance(info.get("features"), dict):
        raise UserError(f"{info_path} has no 'features' mapping")
    for sub in ("data", "meta/episodes"):
        if not any((root / sub).rglob("*.parquet")):
            raise UserError(f"{root} is incomplete: no parquet files under {sub}/ (an interrupted recording?)")
    if not (root / "meta" / "tasks.parquet").is_file():
        raise UserError(f"{root} is incomplete: meta/tasks.parquet is missing")
    return info


def load_demonstrations(
    root: str | Path,
    *,
    required: Mapping[str, tuple[int, ...] | None] | None = None,
    delta_timestamps: Mapping[str, list[float]] | None = None,
    episodes: Sequence[int] | None = None,
    image_transforms: Any = None,
    video_backend: str | None = None,
):
    """Open a local LeRobotDataset v3 (ours or a real LIBERO one) after checking it has `required`
    (default: `required_features()`); never touches the hub.

    `delta_timestamps` as in LeRobot (e.g. ``{"action": [i / fps for i in range(chunk)]}`` for
    action chunks; items then carry ``action_is_pad``).
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    info = read_info(root)
    check_dataset_features(info["features"], required if required is not None else required_features(), root)
    if episodes is not None:
        total = int(info.get("total_episodes", 0))
        bad = [e for e in episodes if not 0 <= int(e) < total]
        if bad:
            raise UserError(f"dataset {root} has episodes 0..{total - 1}; episode {bad[0]} does not exist")
    try:
        return LeRobotDataset(
            repo_id=f"{REPO_PREFIX}/{root.name}", root=root, episodes=list(episodes) if episodes is not None else None,
            delta_timestamps=dict(delta_timestamps) if delta_timestamps else None, image_transforms=image_transforms,
            video_backend=video_backend, download_videos=False,
        )
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - LeRobot raises many types for a malformed folder
        raise UserError(f"cannot open the LeRobotDataset at {root}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def read_recording_summary(root: str | Path) -> dict[str, Any] | None:
    """The recording summary written by `record_demonstrations`, None for datasets made elsewhere."""
    path = Path(root) / RECORDING_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def describe_dataset(root: str | Path) -> str:
    """A few lines about a dataset: episodes, frames, fps, features, tasks, the expert's record."""
    info = read_info(root)
    lines = [
        f"LeRobotDataset {info.get('codebase_version')} at {root}: {info.get('total_episodes')} episodes, "
        f"{info.get('total_frames')} frames at {info.get('fps')} fps, {info.get('total_tasks')} tasks",
    ]
    for key, ft in info["features"].items():
        if key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
            continue
        lines.append(f"  {key}: {ft.get('dtype')} {list(ft.get('shape', []))}")
    try:
        import pandas as pd

        tasks = pd.read_parquet(Path(root) / "meta" / "tasks.parquet")
        for name in list(tasks.index)[:20]:
            lines.append(f"  task: {name}")
    except Exception:  # noqa: BLE001 - describing is best effort
        pass
    rec = read_recording_summary(root)
    if rec is not None:
        lines.append(
            f"  scripted expert: {rec['episodes']} kept of {rec['attempts']} attempts "
            f"({rec['failures']} failed, success rate {rec['expert_success_rate']:.1%}), seed {rec['seed']}, "
            f"{rec['init']} initial states, robot init noise {rec.get('robot_init_noise', 0.0):g} rad, "
            f"DART action noise {rec.get('action_noise', 0.0):g}, expert velocity clipped per {rec.get('expert_clip', 'axis')}, "
            f"{'palm-clearing' if rec.get('expert_hand_clearance', False) else 'plain'} grasp plan, "
            f"{arm_init_text(rec.get('arm_init', 'reset'))}"
        )
        for i, r in enumerate((rec.get("dagger") or {}).get("rounds", []), 1):
            won = sum(s for s, _ in r["policy_success"].values())
            lines.append(f"  DAgger round {i}: {r['episodes']} on-policy episodes ({r['frames']} frames) driven by "
                         f"{r['policy']} (policy share {r['policy_share']:g}; it succeeded in {won}), labelled by the expert"
                         f"{' following its grasps' if r.get('expert_follow_grasp', False) else ''}")
    return "\n".join(lines)


__all__ = [
    "ACTION_KEY", "CAMERA_TO_KEY", "IMAGE_KEY", "STATE_KEY", "WRIST_IMAGE_KEY", "RecordingSummary",
    "TaskRecording", "attempt_seed", "check_dataset_features", "dart_action", "set_robot_init_noise", "describe_dataset", "libero_features",
    "load_demonstrations", "observation_to_batch", "observation_to_frame", "read_info",
    "read_recording_summary", "record_demonstrations", "required_features",
]
