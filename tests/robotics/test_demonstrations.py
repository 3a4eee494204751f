"""Scripted-expert demonstrations as a LeRobotDataset v3: round trip, values, atomicity, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from medvtc.common.errors import ConfigError, UserError
from medvtc.robotics import demonstrations as demos
from medvtc.robotics.demonstrations import (
    ACTION_KEY,
    IMAGE_KEY,
    STATE_KEY,
    WRIST_IMAGE_KEY,
    attempt_seed,
    load_demonstrations,
    observation_to_batch,
    record_demonstrations,
)
from tests.robotics.conftest import DEMO_ENV_KWARGS, DEMO_SIZE, DEMO_SUITE, DEMO_TASK

INSTRUCTION = "pick up the alphabet soup and place it in the basket"


def test_round_trip_features_shapes_and_metadata(recorded_demos):
    root, summary = recorded_demos
    assert summary.episodes == 1 and summary.tasks[0].successes == 1
    assert summary.attempts == summary.tasks[0].attempts >= 1
    assert summary.failures == summary.attempts - 1
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"].startswith("v3")
    assert info["fps"] == 20 and info["total_episodes"] == 1 and info["total_tasks"] == 1
    assert info["total_frames"] == summary.frames > 20

    ds = load_demonstrations(root, delta_timestamps={ACTION_KEY: [i / 20 for i in range(4)]})
    assert len(ds) == summary.frames and ds.num_episodes == 1
    first, last = ds[0], ds[len(ds) - 1]
    for key in (IMAGE_KEY, WRIST_IMAGE_KEY):
        assert first[key].shape == (3, DEMO_SIZE, DEMO_SIZE) and first[key].dtype == torch.float32
        # PNG is lossless: pixel values are exact multiples of 1/255 of the uint8 frame
        assert torch.allclose(first[key] * 255, (first[key] * 255).round(), atol=1e-3)
        assert first[key].std() > 0.02  # a rendered scene, not a blank buffer
    assert first[STATE_KEY].shape == (8,)
    assert first[ACTION_KEY].shape == (4, 7) and first["action_is_pad"].tolist() == [False] * 4
    assert last["action_is_pad"].tolist() == [False, True, True, True]  # chunks pad past the episode end
    assert first["task"] == INSTRUCTION
    actions = torch.stack([ds[i][ACTION_KEY][0] for i in range(len(ds))])
    assert actions.abs().max() <= 1.0
    assert set(actions[:, 6].tolist()) == {-1.0, 1.0}  # the expert opens and closes the gripper

    rec = demos.read_recording_summary(root)
    assert rec["episodes"] == 1 and rec["attempts"] == summary.attempts and rec["suite"] == DEMO_SUITE
    assert rec["tasks"][0]["kept_seeds"] == [attempt_seed(0, DEMO_TASK, summary.attempts - 1)]
    text = demos.describe_dataset(root)
    assert "1 episodes" in text and INSTRUCTION in text and "failed" in text
    assert not any(p.name.endswith(".tmp") for p in root.parent.iterdir())  # the temp build folder is gone
    assert not (root / "images").exists()  # LeRobot's PNG staging folder is not left behind


def test_recorded_values_replay_in_the_simulator(recorded_demos):
    """Frame t holds the observation the expert saw and the action it took: resetting with the
    recorded seed and replaying the actions reproduces states and images exactly."""
    from medvtc.robotics.libero_env import LiberoEnv

    root, summary = recorded_demos
    ds = load_demonstrations(root)
    seed = summary.tasks[0].kept_seeds[0]
    env = LiberoEnv(DEMO_SUITE, DEMO_TASK, camera_size=DEMO_SIZE, **DEMO_ENV_KWARGS)
    try:
        obs, _ = env.reset(seed=seed, options={"init_state": "random"})
        for t in range(6):
            item = ds[t]
            np.testing.assert_array_equal(item[STATE_KEY].numpy(), obs["state"])
            for cam, key in (("agentview", IMAGE_KEY), ("wrist", WRIST_IMAGE_KEY)):
                stored = (item[key] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                np.testing.assert_array_equal(stored, obs[cam])
            obs, *_ = env.step(item[ACTION_KEY].numpy())
    finally:
        env.close()


def test_dart_action_perturbs_the_arm_only():
    clean = np.array([0.1, -0.2, 0.95, 0.0, 0.3, -0.99, 1.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(demos.dart_action(clean, rng, 0.0), clean)
    draws = np.stack([demos.dart_action(np.zeros(7, np.float32), rng, 0.2) for _ in range(4000)])
    assert np.all(draws[:, 6] == 0.0)  # the gripper command is executed as given
    np.testing.assert_allclose(draws[:, :6].std(axis=0), 0.2, rtol=0.06)
    np.testing.assert_allclose(draws[:, :6].mean(axis=0), 0.0, atol=0.02)
    near_limit = np.stack([demos.dart_action(clean, rng, 0.5) for _ in range(200)])
    assert near_limit.min() >= -1.0 and near_limit.max() <= 1.0 and np.any(near_limit[:, 2] == 1.0)


def test_robot_init_noise_is_seeded_and_off_by_default():
    """LIBERO's ControlEnv starts the arm at the same pose for every seed; with the noise each
    seed gives its own pose, the same one every time."""
    from medvtc.robotics.libero_env import LiberoEnv

    env = LiberoEnv(DEMO_SUITE, DEMO_TASK, cameras=())
    try:
        def start(seed):
            obs, _ = env.reset(seed=seed, options={"init_state": "random"})
            return obs["state"][:3].copy()

        assert np.array_equal(start(1), start(2))  # no noise: one arm pose
        demos.set_robot_init_noise(env, 0.02)
        a, b, a2 = start(1), start(2), start(1)
        assert np.array_equal(a, a2) and np.linalg.norm(a - b) > 1e-3
    finally:
        env.close()


def test_recording_with_noise_keeps_the_clean_expert_actions(tmp_path):
    """DART: the simulator executed label + noise (replaying that reproduces the recorded states),
    while the dataset holds the expert's clean action; the arm starts from a noised pose. The
    expert here limits the length of its translation (clip="norm"), which the summary records."""
    from medvtc.robotics.libero_env import LiberoEnv
    from medvtc.robotics.scripted_expert import ExpertConfig

    root = tmp_path / "demos"
    summary = record_demonstrations(root, suite=DEMO_SUITE, task_ids=[DEMO_TASK], episodes_per_task=1, seed=0,
                                    camera_size=16, progress=False, env_kwargs=DEMO_ENV_KWARGS,
                                    robot_init_noise=0.02, action_noise=0.3, expert_config=ExpertConfig(clip="norm"))
    assert (summary.robot_init_noise, summary.action_noise, summary.expert_clip) == (0.02, 0.3, "norm")
    assert "robot init noise 0.02 rad, DART action noise 0.3, expert velocity clipped per norm" in summary.describe()
    assert "palm-clearing grasp plan" in summary.describe()  # ExpertConfig.hand_clearance, the default
    recorded = json.loads((root / demos.RECORDING_FILE).read_text())
    assert (recorded["action_noise"], recorded["expert_clip"], recorded["expert_hand_clearance"]) == (0.3, "norm", True)
    assert recorded["arm_init"] == "loaded" and "arm noise loaded as the official states start" in summary.describe()
    attempt = len(summary.tasks[0].failed_seeds)  # the kept episode's attempt index
    ds = load_demonstrations(root)
    states = [ds[t][STATE_KEY].numpy() for t in range(9)]
    labels = [ds[t][ACTION_KEY].numpy() for t in range(8)]
    speeds = [float(np.linalg.norm(a[:3])) for a in labels]
    assert max(speeds) <= 1.0 + 1e-5 and max(speeds) > 0.9  # the approach runs at full speed, no axis beyond it
    env = LiberoEnv(DEMO_SUITE, DEMO_TASK, cameras=())
    try:
        demos.set_robot_init_noise(env, 0.02)
        rng = np.random.default_rng([0, DEMO_TASK, attempt, 1])
        obs, _ = env.reset(seed=summary.tasks[0].kept_seeds[0], options={"init_state": "random"})
        for t in range(8):
            np.testing.assert_allclose(obs["state"], states[t], atol=1e-6)
            obs, *_ = env.step(demos.dart_action(labels[t], rng, 0.3))
        obs, _ = env.reset(seed=summary.tasks[0].kept_seeds[0], options={"init_state": "random"})
        for t in range(8):  # the labels alone are not what was executed
            obs, *_ = env.step(labels[t])
        assert np.abs(obs["state"][:3] - states[8][:3]).max() > 1e-3
    finally:
        env.close()


def test_existing_dataset_is_never_overwritten(recorded_demos):
    root, _ = recorded_demos
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(UserError, match="already exists.*overwrite"):
        record_demonstrations(root, suite=DEMO_SUITE, task_ids=[0], episodes_per_task=1, progress=False)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_interrupted_recording_leaves_nothing(tmp_path, monkeypatch):
    from medvtc.robotics import libero_env

    calls = {"n": 0}
    real_step = libero_env.LiberoEnv.step

    def failing_step(self, action):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("simulated crash")
        return real_step(self, action)

    monkeypatch.setattr(libero_env.LiberoEnv, "step", failing_step)
    root = tmp_path / "demos"
    with pytest.raises(RuntimeError, match="simulated crash"):
        record_demonstrations(root, suite=DEMO_SUITE, task_ids=[0], episodes_per_task=1, camera_size=16,
                              progress=False, env_kwargs=DEMO_ENV_KWARGS)
    assert calls["n"] == 6
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary build folder


def test_a_stopped_recording_resumes_after_its_finished_tasks(tmp_path, monkeypatch, capsys):
    """A recording stopped in its second task keeps the first one's episodes (not the dataset: that
    is written only when complete); the same call then records only the second task and joins both."""
    from medvtc.robotics import libero_env

    real_step, real_reset = libero_env.LiberoEnv.step, libero_env.LiberoEnv.reset

    def step_crashing_in_task_1(self, action):
        if self.task_id == 1:
            raise RuntimeError("simulated crash")
        return real_step(self, action)

    root = tmp_path / "demos"
    kw = dict(suite=DEMO_SUITE, task_ids=[0, 1], episodes_per_task=1, camera_size=16, progress=False,
              env_kwargs=DEMO_ENV_KWARGS)
    monkeypatch.setattr(libero_env.LiberoEnv, "step", step_crashing_in_task_1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        record_demonstrations(root, **kw)
    parts = demos.recording_parts_dir(root)
    assert not root.exists()
    assert (parts / "task_0" / demos.RecordingParts.PART_FILE).is_file() and not (parts / "task_1").exists()
    assert "finished task(s) [0] are kept" in capsys.readouterr().out
    reset_tasks = []

    def counting_reset(self, *args, **kwargs):
        reset_tasks.append(self.task_id)
        return real_reset(self, *args, **kwargs)

    monkeypatch.setattr(libero_env.LiberoEnv, "step", real_step)
    monkeypatch.setattr(libero_env.LiberoEnv, "reset", counting_reset)
    summary = record_demonstrations(root, **kw)
    assert set(reset_tasks) == {1}  # task 0 came from its part
    assert [t.task_id for t in summary.tasks] == [0, 1] and summary.episodes == 2
    assert not parts.exists()
    ds = load_demonstrations(root)
    assert ds.num_episodes == 2 and ds.num_frames == summary.frames
    starts = [0, summary.tasks[0].frames]
    assert [ds[i]["task"] for i in starts] == [t.instruction for t in summary.tasks]
    recorded = json.loads((root / demos.RECORDING_FILE).read_text())
    assert [t["kept_seeds"] for t in recorded["tasks"]] == [t.kept_seeds for t in summary.tasks]


def test_tasks_recorded_in_processes_give_the_same_dataset(recorded_demos, tmp_path):
    """workers=2 records each task in its own process and joins the parts in task order: task 0's
    episode equals the session's one-process recording of it (a task's seeds depend only on seed,
    task and attempt), task 1 follows with its own seeds."""
    root, one = recorded_demos
    two = record_demonstrations(tmp_path / "two", suite=DEMO_SUITE, task_ids=[DEMO_TASK, 1], episodes_per_task=1,
                                seed=0, camera_size=DEMO_SIZE, progress=False, env_kwargs=DEMO_ENV_KWARGS, workers=2)
    assert [t.task_id for t in two.tasks] == [DEMO_TASK, 1] and two.episodes == 2
    (a,), b = one.tasks, two.tasks[0]
    assert (a.kept_seeds, a.frames, a.attempts) == (b.kept_seeds, b.frames, b.attempts)
    assert two.tasks[1].kept_seeds == [attempt_seed(0, 1, i) for i in range(two.tasks[1].attempts)][-1:]
    assert not demos.recording_parts_dir(tmp_path / "two").exists()
    da, db = load_demonstrations(root), load_demonstrations(tmp_path / "two")
    assert db.num_frames == two.frames and db.num_episodes == 2
    for i in (0, a.frames - 1):
        for key in (ACTION_KEY, STATE_KEY, IMAGE_KEY):
            assert torch.equal(da[i][key], db[i][key]), (i, key)
    assert db[a.frames]["task"] == two.tasks[1].instruction != db[0]["task"]


def test_recording_parts_are_kept_only_under_the_same_settings(tmp_path, capsys):
    from medvtc.robotics.demonstrations import RecordingParts, TaskRecording

    folder = tmp_path / ".demos.parts"
    parts = RecordingParts(folder, {"seed": 0, "camera_size": (16, 16)})
    assert parts.finished() == [] and parts.load(0) is None
    rec = TaskRecording(task_id=0, task="t", instruction="pick", attempts=3, successes=2, frames=50, kept_seeds=[4, 7])
    parts.path(0).mkdir()
    parts.write_record(parts.path(0), rec, 12.5)
    (folder / "task_1").mkdir()  # a part still being written: not finished
    again = RecordingParts(folder, {"seed": 0, "camera_size": [16, 16]})  # the same settings, as read back
    assert again.finished() == [0] and again.load(0) == (rec, 12.5) and again.load(1) is None
    other = RecordingParts(folder, {"seed": 1, "camera_size": [16, 16]})
    assert other.finished() == [] and not parts.path(0).exists()
    assert "discarding the recorded tasks" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"suite": "libero_objekt"}, ConfigError, "libero_spatial"),
        ({"task_ids": [12]}, ConfigError, "0..9"),
        ({"init": "fixed"}, ConfigError, "random"),
        ({"episodes_per_task": 0}, ConfigError, "episodes_per_task"),
        ({"action_noise": -0.1}, ConfigError, "action_noise must be a finite number >= 0"),
        ({"robot_init_noise": float("nan")}, ConfigError, "robot_init_noise must be a finite number >= 0"),
        ({"robot_init_noise": 0.02, "init": "official"}, ConfigError, "random initial states only"),
        ({"workers": 0}, ConfigError, "workers must be a positive int"),
        ({"workers": 2, "driver": (None, None, None)}, ConfigError, "needs driver_factory"),
    ],
)
def test_bad_recording_arguments(tmp_path, kwargs, error, pattern):
    args = {"suite": DEMO_SUITE, "task_ids": [0], "episodes_per_task": 1, "progress": False, **kwargs}
    with pytest.raises(error, match=pattern):
        record_demonstrations(tmp_path / "demos", **args)
    assert not (tmp_path / "demos").exists()


# ------------------------------------------------------------------------------------- loader


def _copy(root, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def test_loader_names_a_missing_feature(recorded_demos, tmp_path):
    root = _copy(recorded_demos[0], tmp_path)
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    del info["features"][STATE_KEY]
    info_path.write_text(json.dumps(info))
    with pytest.raises(UserError) as e:
        load_demonstrations(root)
    msg = str(e.value)
    assert repr(STATE_KEY) in msg and IMAGE_KEY in msg and ACTION_KEY in msg  # names it, lists what there is


def test_loader_checks_the_policy_features(recorded_demos):
    root, _ = recorded_demos
    with pytest.raises(UserError, match="'observation.images.front'"):
        load_demonstrations(root, required={"observation.images.front": None, ACTION_KEY: (7,)})
    with pytest.raises(UserError, match=r"observation.state.*shape \[8\].*\[9\]"):
        load_demonstrations(root, required={STATE_KEY: (9,)})
    ds = load_demonstrations(root, required={IMAGE_KEY: (3, 64, 64), ACTION_KEY: (7,)})  # any resolution
    assert len(ds) > 0


def test_loader_rejects_what_is_not_a_v3_dataset(recorded_demos, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_demonstrations(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a LeRobotDataset"):
        load_demonstrations(tmp_path / "empty")
    root = _copy(recorded_demos[0], tmp_path)
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["codebase_version"] = "v2.1"
    info_path.write_text(json.dumps(info))
    with pytest.raises(UserError, match="v2.1.*convert"):
        load_demonstrations(root)
    info["codebase_version"] = "v3.0"
    info_path.write_text(json.dumps(info))
    shutil.rmtree(root / "data")
    with pytest.raises(UserError, match="incomplete"):
        load_demonstrations(root)


def test_observation_to_batch_matches_the_dataset_layout():
    obs = {"agentview": np.full((8, 8, 3), 255, np.uint8), "wrist": np.zeros((8, 8, 3), np.uint8),
           "state": np.arange(8, dtype=np.float32)}
    batch = observation_to_batch(obs, INSTRUCTION)
    assert batch[IMAGE_KEY].shape == (1, 3, 8, 8) and batch[IMAGE_KEY].max() == 1.0
    assert batch[WRIST_IMAGE_KEY].max() == 0.0
    assert batch[STATE_KEY].tolist() == [list(range(8))]
    assert batch["task"] == [INSTRUCTION]
    two = observation_to_batch([obs, obs], [INSTRUCTION, "other"])
    assert two[IMAGE_KEY].shape == (2, 3, 8, 8) and two["task"] == [INSTRUCTION, "other"]


def test_attempt_seeds_are_fixed_and_distinct():
    seeds = {attempt_seed(0, t, a) for t in range(3) for a in range(20)}
    assert len(seeds) == 60
    assert attempt_seed(0, 0, 0) == attempt_seed(0, 0, 0) != attempt_seed(1, 0, 0)
    # the documented derivation: numpy SeedSequence([seed, task, attempt])
    assert attempt_seed(7, 2, 5) == int(np.random.SeedSequence([7, 2, 5]).generate_state(1)[0])


@pytest.mark.parametrize("clip", ["axis", "norm"])
def test_expert_velocity_limit(clip):
    """"axis" clips each axis to the speed (a diagonal move runs every far axis at full speed);
    "norm" keeps the direction to the goal and caps the length."""
    from medvtc.robotics.scripted_expert import POS_SCALE, ExpertConfig, ScriptedExpert

    expert = ScriptedExpert.__new__(ScriptedExpert)  # _move needs only the config and the pose
    expert.cfg = ExpertConfig(clip=clip)
    rot = np.diag([1.0, -1.0, -1.0])  # gripper pointing down, already at the grasp orientation
    expert.grasp_rot = rot
    expert._eef = lambda: (np.zeros(3), rot)
    goal = np.array([0.02, -0.3, -0.2])
    a = expert._move(goal, speed=0.8)
    if clip == "axis":
        np.testing.assert_allclose(a[:3], [min(0.8, 2.0 * 0.02 / POS_SCALE), -0.8, -0.8], atol=1e-9)
    else:
        np.testing.assert_allclose(np.linalg.norm(a[:3]), 0.8, atol=1e-9)
        np.testing.assert_allclose(a[:3] / np.linalg.norm(a[:3]), goal / np.linalg.norm(goal), atol=1e-9)
    near = expert._move(np.array([0.001, 0.0, 0.0]), speed=0.8)  # inside the speed limit: proportional either way
    np.testing.assert_allclose(near[:3], [2.0 * 0.001 / POS_SCALE, 0.0, 0.0], atol=1e-9)
    with pytest.raises(ValueError, match="expert clip must be 'axis' or 'norm'"):
        ExpertConfig(clip="box")
