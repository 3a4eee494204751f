"""The `libero` task: config, train with the shared trainer on recorded demos, eval rollouts, bad input."""

from __future__ import annotations

import json

import pytest

from medvtc.common.errors import ConfigError, UserError
from medvtc.robotics.task import LiberoTask, LiberoTaskConfig

TINY_POLICY = [
    "policy.dim_model=32", "policy.n_heads=4", "policy.n_layers=1", "policy.chunk_size=4", "policy.n_action_steps=2",
    "policy.text_buckets=64", "policy.tokenizer_max_length=12", "policy.image_shift=2",
    "policy.compressor_args={num_queries: 2, num_heads: 4}",
]


def test_config_defaults_and_unknown_keys():
    task = LiberoTask()
    cfg = task.load_config(None, ["data.tasks=[0,3]", "policy.compressor=none", "train.max_steps=5"])
    assert isinstance(cfg, LiberoTaskConfig)
    assert cfg.data.tasks == [0, 3] and cfg.policy.compressor == "none" and cfg.train.max_steps == 5
    assert cfg.train.batch_size == 32  # the task's default survives a partial train.* override
    with pytest.raises(ConfigError, match="policy.compresor.*valid keys.*compressor"):
        task.load_config(None, ["policy.compresor=none"])
    with pytest.raises(ConfigError, match="init"):
        task.load_config(None, ["data.init=fixed"])
    with pytest.raises(ConfigError, match="expert_clip"):
        task.load_config(None, ["data.expert_clip=box"])


def test_the_default_recording_must_match_the_data_settings(tmp_path, monkeypatch):
    """The embedded default dataset is made on first use: a data.* setting it was not recorded
    with (here the expert's velocity limit; recordings older than the key were made per axis) is
    a one-line error, not a silent training on the old recording."""
    from medvtc.robotics import task as task_module
    from medvtc.robotics.demonstrations import RECORDING_FILE

    root = tmp_path / "demos"
    (root / "meta").mkdir(parents=True)
    summary = {"suite": "libero_object", "tasks": [{"task_id": t} for t in (0, 1, 2)], "episodes_per_task": 20,
               "seed": 0, "init": "random", "camera_size": [128, 128], "robot_init_noise": 0.02, "action_noise": 0.0}
    (root / RECORDING_FILE).write_text(json.dumps(summary))
    monkeypatch.setattr(task_module, "DEFAULT_ROOT", str(root))
    old_expert = "data.expert_hand_clearance=false"
    cfg = LiberoTask().load_config(None, [f"data.root={root}", old_expert])
    task_module.check_recording_matches(cfg.data)  # no expert_clip recorded: per axis, the default
    cfg = LiberoTask().load_config(None, [f"data.root={root}", old_expert, "data.expert_clip=norm"])
    with pytest.raises(UserError, match=r"recorded with data.expert_clip='axis', but the config says 'norm'"):
        task_module.check_recording_matches(cfg.data)
    # a recording from before the palm-clearing grasp plan (no key: without it) against today's default
    cfg = LiberoTask().load_config(None, [f"data.root={root}"])
    with pytest.raises(UserError, match=r"recorded with data.expert_hand_clearance=False, but the config says True"):
        task_module.check_recording_matches(cfg.data)


def test_train_then_eval_on_recorded_demos(recorded_demos, tmp_path, capsys):
    from medvtc.robotics.rollout import load_policy

    root, _ = recorded_demos
    task = LiberoTask()
    out = tmp_path / "run"
    overrides = [f"data.root={root}", f"output_dir={out}", *TINY_POLICY, "train.max_steps=3", "train.batch_size=4",
                 "train.save_every=0", "train.progress=false", "train.device=cpu", "train.warmup_steps=0",
                 "eval.tasks=[0]", "eval.episodes=1", "eval.max_episode_steps=3", "eval.progress=false"]
    cfg = task.load_config(None, overrides)
    assert task.train(cfg) == 0
    final = out / "final"
    names = {p.name for p in final.iterdir()}
    assert {"config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json",
            "medvtc_config.yaml"} <= names
    assert json.loads((final / "medvtc_tokens.json").read_text()) == {
        "visual_tokens": 12, "uncompressed_tokens": 32, "compressor": "compressor_vla"}
    # the recording summary travels with the policy (its training tasks, for rollout --suite)
    assert json.loads((final / "medvtc_recording.json").read_text()) == json.loads(
        (root / "meta" / "medvtc_recording.json").read_text())
    assert (out / "metrics.csv").is_file()
    policy, pre, post = load_policy(out)
    assert policy.config.chunk_size == 4 and policy.num_visual_tokens == 12
    with pytest.raises(UserError, match="already holds"):
        task.train(cfg)

    capsys.readouterr()
    assert task.eval(cfg, None) == 0
    text = capsys.readouterr().out
    assert "task 0: success 0%" in text and "overall success" in text  # 3 steps cannot solve it
    result = json.loads((final / "eval_libero_object.json").read_text())
    assert result["tasks"]["0"]["episodes"][0]["steps"] == 3 and result["visual_tokens"] == 12
    with pytest.raises(ConfigError, match="task id 12 is not in suite 'libero_object': valid ids are 0..9"):
        task.eval(task.load_config(None, [*overrides, "eval.tasks=[12]"]), None)


def test_train_rejects_a_dataset_without_the_policy_features(recorded_demos, tmp_path):
    import shutil

    src, _ = recorded_demos
    root = tmp_path / "demos"
    shutil.copytree(src, root)
    info = json.loads((root / "meta" / "info.json").read_text())
    del info["features"]["observation.images.image2"]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    task = LiberoTask()
    cfg = task.load_config(None, [f"data.root={root}", f"output_dir={tmp_path / 'run'}", "train.device=cpu"])
    with pytest.raises(UserError, match="'observation.images.image2'"):
        task.train(cfg)


def test_eval_rejects_checkpoints_of_other_tasks(tmp_path):
    task = LiberoTask()
    other = tmp_path / "ct"
    (other / "final").mkdir(parents=True)
    (other / "final" / "config.json").write_text(json.dumps({"type": "diffusion"}))
    cfg = task.load_config(None, [])
    with pytest.raises(UserError, match="'diffusion' model, not a LIBERO policy \\(compressor_vla or act"):
        task.eval(cfg, str(other))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "ct_report"}))
    with pytest.raises(UserError, match="None model, not a LIBERO policy"):
        task.eval(cfg, str(hf))
    act = tmp_path / "act"  # an ACT policy is a LIBERO policy (the peer baseline), but this one has no weights
    act.mkdir()
    (act / "config.json").write_text(json.dumps({"type": "act"}))
    with pytest.raises(UserError, match="has a config.json but no model.safetensors"):
        task.eval(cfg, str(act))
    with pytest.raises(UserError, match="does not exist"):
        task.eval(cfg, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a trained LIBERO policy"):
        task.eval(cfg, str(tmp_path / "empty"))


def test_commands_include_rollout_and_bench_and_other_tasks_refuse_rollout():
    from medvtc.tasks import get_task

    task = LiberoTask()
    for command in ("train", "eval", "rollout", "bench", "data"):
        task.check_command(command)
    with pytest.raises(UserError, match="no 'report' command; it supports: train, eval, rollout, bench, data"):
        task.check_command("report")
    with pytest.raises(UserError, match="task 'compressors' has no 'rollout' command; it supports: train, eval, bench, data"):
        get_task("compressors").check_command("rollout")
