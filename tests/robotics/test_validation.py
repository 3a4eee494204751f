"""Checkpoint selection by validation rollouts on held-out random scenes (`val.*`)."""

from __future__ import annotations

import json

import pytest

from medvtc.common.errors import ConfigError
from medvtc.robotics.demonstrations import attempt_seed
from medvtc.robotics.rollout import validation_scenes, validation_seed
from medvtc.robotics.task import LiberoTask
from tests.robotics.test_rollout_bench import TINY_POLICY


def test_validation_scenes_are_deterministic_apart_from_the_recording_and_skip_recorded_seeds():
    scenes = validation_scenes(0, [0, 1], 3)
    assert scenes == validation_scenes(0, [0, 1], 3)
    assert [t for t, _ in scenes] == [0, 0, 0, 1, 1, 1] and len({s for _, s in scenes}) == 6
    recorded = {attempt_seed(0, t, a) for t in (0, 1) for a in range(200)}
    assert not recorded & {s for _, s in scenes}  # another stream than the recording's reset seeds
    # a seed the demonstrations were recorded from is skipped, the next one taken
    taken = {0: {validation_seed(0, 0, 1)}}
    assert validation_scenes(0, [0], 3, taken) == [(0, validation_seed(0, 0, e)) for e in (0, 2, 3)]
    assert validation_scenes(1, [0], 1) != validation_scenes(0, [0], 1)


def test_training_with_validation_rollouts_makes_the_best_evaluation_final(recorded_demos, tmp_path, capsys):
    from medvtc.robotics.rollout import load_policy

    root, _ = recorded_demos
    task = LiberoTask()
    out = tmp_path / "run"
    overrides = [f"data.root={root}", f"output_dir={out}", *TINY_POLICY, "train.max_steps=4", "train.batch_size=4",
                 "train.save_every=0", "train.progress=false", "train.device=cpu", "train.warmup_steps=0",
                 "train.eval_every=2", "val.episodes=1", "val.max_episode_steps=3"]
    assert task.train(task.load_config(None, overrides)) == 0
    log = capsys.readouterr().out
    # two evaluations (steps 2 and 4), both 0 % in 3 steps: the tie goes to the later step
    selection = json.loads((out / "final" / "medvtc_selection.json").read_text())
    assert selection["step"] == 4 and selection["metric"] == "val_success" and selection["value"] == 0.0
    assert selection["metrics"]["val_success_task_0"] == 0.0
    assert "final policy = step 4 (val_success 0.000" in log
    evals = [r for r in (out / "metrics.csv").read_text().splitlines() if "val_success" in r]
    assert evals, "the validation success is logged"
    load_policy(out)  # the final folder is a complete policy
    with pytest.raises(ConfigError, match="val.episodes > 0 needs train.eval_every > 0"):
        task.train(task.load_config(None, [*overrides, "train.eval_every=0", f"output_dir={tmp_path / 'b'}"]))


def test_act_is_selected_by_validation_rollouts_too(recorded_demos, tmp_path, capsys):
    """LeRobot's ACT gets the same checkpoint selection as Compressor-VLA (same data and budget
    rule), rolled out in eval mode and handed back to training."""
    from tests.robotics.test_rollout_bench import TINY_ACT, overrides

    root, _ = recorded_demos
    task = LiberoTask()
    out = tmp_path / "act"
    cfg = task.load_config(None, overrides(root, out, "policy.name=act", TINY_ACT, "train.max_steps=2", "train.eval_every=2",
                                           "val.episodes=1", "val.max_episode_steps=3"))
    assert task.train(cfg) == 0
    selection = json.loads((out / "final" / "medvtc_selection.json").read_text())
    assert selection["step"] == 2 and selection["metric"] == "val_success"
    assert "final policy = step 2 (val_success" in capsys.readouterr().out


def test_bench_settings_count_the_validation_only_when_it_selects():
    from medvtc.robotics.bench import _training_settings

    base = {"seed": 0, "data": {"root": "d"}, "policy": {"name": "compressor_vla"},
            "train": {"max_steps": 10, "eval_every": 5, "select_metric": None, "select_mode": "max"},
            "val": {"episodes": 0, "seed": 0}}
    plain = _training_settings(base)
    assert "train.eval_every" not in plain and not any(k.startswith("val.") for k in plain)
    assert "train.select_metric" not in plain  # at its default: runs made before the key stay reusable
    selecting = _training_settings({**base, "val": {"episodes": 2, "seed": 0}})
    assert selecting["train.eval_every"] == 5 and selecting["val.episodes"] == 2
