"""DAgger: on-policy episodes labelled by the expert, aggregated with a base dataset; the expert's
recovery mode; fine-tuning from a trained policy's weights (policy.init_from)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from medvtc.common.errors import ConfigError, UserError
from tests.robotics.conftest import DEMO_ENV_KWARGS, DEMO_SUITE, DEMO_TASK


def test_on_policy_episodes_are_labelled_by_the_expert_and_added_to_the_base(recorded_demos, trained_run, tmp_path):
    """The aggregated dataset holds the base's episode unchanged plus one on-policy episode whose
    actions are the expert's labels of the states the (barely trained) policy visited; the
    recording summary keeps the new scene apart from validation and says what was added. A chained
    round draws its scene from its own stream."""
    from medvtc.robotics import demonstrations as demos
    from medvtc.robotics.dagger import DAGGER_TAG, record_dagger
    from medvtc.robotics.libero_env import LiberoEnv
    from medvtc.robotics.rollout import load_policy
    from medvtc.robotics.scripted_expert import ExpertConfig, ScriptedExpert

    base, base_summary = recorded_demos
    root = tmp_path / "dagger"
    merged = record_dagger(root, base, trained_run, suite=DEMO_SUITE, task_ids=[DEMO_TASK], episodes_per_task=1,
                           max_episode_steps=12, env_kwargs=DEMO_ENV_KWARGS, progress=False)
    ds = demos.load_demonstrations(root)
    assert ds.num_episodes == 2
    base_ds = demos.load_demonstrations(base)
    n_base = len(base_ds)
    assert len(ds) == n_base + 12  # the 12 steps the episode was allowed
    np.testing.assert_array_equal(ds[n_base - 1][demos.ACTION_KEY].numpy(), base_ds[n_base - 1][demos.ACTION_KEY].numpy())
    seed = demos.attempt_seed(0, DEMO_TASK, 0, DAGGER_TAG)
    saved = json.loads((root / demos.RECORDING_FILE).read_text())
    assert saved == merged
    task = saved["tasks"][0]
    assert task["kept_seeds"] == base_summary.tasks[0].kept_seeds + [seed]
    assert task["frames"] == n_base + 12 and task["on_policy_episodes"] == 1
    (round1,) = saved["dagger"]["rounds"]
    assert (round1["episodes"], round1["frames"], round1["policy_share"]) == (1, 12, 1.0)
    assert round1["policy_success"] == {str(DEMO_TASK): [0, 1]}
    assert round1["expert_follow_grasp"] is True  # ExpertConfig's default: the labels follow the policy's grasps
    assert "DAgger round 1: 1 on-policy episodes (12 frames)" in demos.describe_dataset(root)
    assert "labelled by the expert following its grasps" in demos.describe_dataset(root)

    # replay: the policy's own actions drive the scene, the dataset holds the expert's labels of it
    policy, pre, post = load_policy(trained_run, device="cpu")
    env = LiberoEnv(DEMO_SUITE, DEMO_TASK, camera_size=32, cameras=("agentview", "wrist"), **DEMO_ENV_KWARGS)
    try:
        obs, _ = env.reset(seed=seed, options={"init_state": "random"})
        expert = ScriptedExpert(env, ExpertConfig(recover=True))
        expert.reset()
        policy.reset()
        torch.manual_seed(seed % 2**31)
        for t in range(12):
            label = expert.act()
            np.testing.assert_allclose(ds[n_base + t][demos.ACTION_KEY].numpy(), label, atol=1e-6)
            np.testing.assert_allclose(ds[n_base + t][demos.STATE_KEY].numpy(), obs["state"], atol=1e-5)
            with torch.inference_mode():
                action = post(policy.select_action(pre(demos.observation_to_batch(obs, env.instruction))))
            obs, *_ = env.step(np.asarray(action, dtype=np.float32).reshape(-1))
        assert not np.allclose(ds[n_base][demos.ACTION_KEY].numpy(), np.asarray(action).reshape(-1))
    finally:
        env.close()

    # a second round on the aggregate rolls out on a fresh scene (its own seed stream), keeps round 1's
    merged2 = record_dagger(tmp_path / "dagger2", root, trained_run, suite=DEMO_SUITE, task_ids=[DEMO_TASK],
                            episodes_per_task=1, max_episode_steps=4, env_kwargs=DEMO_ENV_KWARGS, progress=False)
    seed2 = demos.attempt_seed(0, DEMO_TASK, 0, DAGGER_TAG + 1)
    assert seed2 != seed
    assert merged2["tasks"][0]["kept_seeds"] == base_summary.tasks[0].kept_seeds + [seed, seed2]
    assert [r["frames"] for r in merged2["dagger"]["rounds"]] == [12, 4]
    assert demos.load_demonstrations(tmp_path / "dagger2").num_episodes == 3


def test_a_worker_process_loads_the_driving_policy_from_its_checkpoint(trained_run, tmp_path):
    """With workers > 1 each process records its task with the policy its driver_factory builds
    (record_dagger's: load_policy on the checkpoint; called here in this process): the policy drives, so the failed 12-step episode is kept, as
    on-policy episodes are, with its DAgger seed; an expert-driven part would have kept nothing."""
    import functools

    from medvtc.robotics import demonstrations as demos
    from medvtc.robotics.dagger import DAGGER_TAG
    from medvtc.robotics.rollout import load_policy
    from medvtc.robotics.scripted_expert import ExpertConfig

    summary = demos.RecordingSummary(root=str(tmp_path / "x"), suite=DEMO_SUITE, seed=0, init="random",
                                     camera_size=(32, 32), fps=demos.CONTROL_FPS, episodes_per_task=1, tasks=[])
    part = tmp_path / ".parts" / f"task_{DEMO_TASK}"
    part.parent.mkdir()
    threads = torch.get_num_threads()
    try:
        count = demos._record_part_worker((str(part), DEMO_TASK, summary, 1, 12, False, ExpertConfig(recover=True),
                                           DEMO_ENV_KWARGS, functools.partial(load_policy, trained_run, device="cpu"),
                                           1.0, DAGGER_TAG))
    finally:
        torch.set_num_threads(threads)  # the worker sets one thread: its process's, here this one's
    written = json.loads((part / demos.RecordingParts.PART_FILE).read_text())
    rec = written["task"]
    assert count == 1 and written["seconds"] > 0
    assert (rec["attempts"], rec["successes"], rec["kept_failures"], rec["frames"]) == (1, 0, 1, 12)
    assert rec["kept_seeds"] == [demos.attempt_seed(0, DEMO_TASK, 0, DAGGER_TAG)]
    assert demos.load_demonstrations(part).num_frames == 12


def test_dagger_refuses_bad_inputs(recorded_demos, trained_run, tmp_path):
    from medvtc.robotics import demonstrations as demos
    from medvtc.robotics.dagger import record_dagger

    base, _ = recorded_demos
    kw = dict(suite=DEMO_SUITE, task_ids=[DEMO_TASK], episodes_per_task=1, progress=False)
    with pytest.raises(ConfigError, match="is data.dagger_base"):
        record_dagger(base, base, trained_run, **kw)
    with pytest.raises(UserError, match="already exists"):
        record_dagger(base.parent, base, trained_run, **kw)
    with pytest.raises(ConfigError, match="tasks \\[0\\]; asked for libero_object tasks \\[3\\]"):
        record_dagger(tmp_path / "x", base, trained_run, **{**kw, "task_ids": [3]})
    with pytest.raises(ConfigError, match="policy_share must lie in"):
        record_dagger(tmp_path / "y", base, trained_run, **{**kw, "policy_share": 1.5})
    older = tmp_path / "older_base"  # recorded before the arm noise was loaded as the official states'
    shutil.copytree(base, older)
    summary = json.loads((older / demos.RECORDING_FILE).read_text())
    assert summary.pop("arm_init") == "loaded"
    (older / demos.RECORDING_FILE).write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match="has arm_init 'reset'.*record a new base"):
        record_dagger(tmp_path / "z", older, trained_run, **kw)
    assert not any((tmp_path / name).exists() for name in ("x", "y", "z"))


def test_dagger_settings_go_together():
    from medvtc.robotics.task import LiberoTask

    with pytest.raises(Exception, match="dagger_policy and dagger_base go together"):
        LiberoTask().load_config(None, ["data.dagger_policy=runs/x"])


@pytest.mark.parametrize("recover, phase", [(False, "descend"), (True, "approach")])
def test_a_drifted_descent_goes_back_up_only_in_recovery_mode(recover, phase):
    from medvtc.robotics.libero_env import LiberoEnv
    from medvtc.robotics.scripted_expert import ExpertConfig, ScriptedExpert

    env = LiberoEnv(DEMO_SUITE, DEMO_TASK, cameras=())
    try:
        env.reset(seed=0, options={"init_state": "random"})
        expert = ScriptedExpert(env, ExpertConfig(recover=recover))
        expert.reset()
        expert.phase = "descend"
        expert.grasp_xy = expert.grasp_xy + np.array([0.05, 0.0])  # the arm is 5 cm beside its descent
        expert.act()
        assert expert.phase == phase
    finally:
        env.close()


@pytest.mark.parametrize("follow", [True, False], ids=["follows", "older_labels"])
def test_the_labelling_expert_carries_an_object_the_policy_grasped(follow):
    """A driver (here a second expert) grasps the object while the labelling expert still plans its
    own approach: following the grasp, the label lifts the object with the gripper closed, and the
    labels alone then finish the task from that grasp; without it the label says "open"."""
    from medvtc.robotics.libero_env import LiberoEnv
    from medvtc.robotics.scripted_expert import CLOSE, OPEN, ExpertConfig, ScriptedExpert

    env = LiberoEnv(DEMO_SUITE, DEMO_TASK, cameras=(), max_episode_steps=280)
    try:
        env.reset(seed=0, options={"init_state": "random"})
        driver = ScriptedExpert(env, ExpertConfig(clip="norm"))
        labeller = ScriptedExpert(env, ExpertConfig(clip="norm", recover=True, follow_grasp=follow))
        driver.reset()
        labeller.reset()
        assert not labeller.holding()
        for _ in range(150):
            if driver.phase == "lift":
                break
            env.step(driver.act())
        assert driver.phase == "lift" and labeller.phase == "approach"
        assert labeller.holding()
        label = labeller.act()
        if not follow:
            assert label[6] == OPEN and labeller.phase in ("approach", "descend")
            return
        assert label[6] == CLOSE and label[2] > 0 and labeller.phase == "lift"
        pos, _ = labeller._eef()
        bottom = labeller._footprint(labeller.object_name)["bottom"]
        assert labeller.grip_above_bottom == pytest.approx(pos[2] - bottom, abs=0.005)
        success = False
        for _ in range(200):
            *_, terminated, truncated, info = env.step(label)
            if terminated or truncated:
                success = bool(terminated)
                break
            label = labeller.act()
        assert success, f"the labels did not finish the task from the policy's grasp (phase {labeller.phase})"
    finally:
        env.close()


def test_init_from_starts_training_from_the_saved_weights(recorded_demos, trained_run, tmp_path):
    from safetensors.torch import load_file

    from medvtc.robotics.task import LiberoTask
    from tests.robotics.test_rollout_bench import overrides

    root, _ = recorded_demos
    task = LiberoTask()
    cfg = task.load_config(None, overrides(root, tmp_path / "ft", f"policy.init_from={trained_run}"))
    policy, *_ = task.build(cfg, "cpu")
    saved = load_file(str(trained_run / "final" / "model.safetensors"))
    for k, v in policy.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    bad = task.load_config(None, overrides(root, tmp_path / "ft2", f"policy.init_from={trained_run}", "policy.dim_model=16"))
    with pytest.raises(ConfigError, match="does not fit this policy's architecture"):
        task.build(bad, "cpu")
