"""The shared trainer: kill-and-resume equivalence, atomic checkpoints, accumulation, schedule."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medvtc.common import checkpoint as ckpt
from medvtc.common.trainer import TrainConfig, lr_lambda, read_training_summary

SCRIPT = Path(__file__).with_name("_tiny_train.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(out), *extra], env=ENV, capture_output=True, text=True, check=check)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.latest_checkpoint(out / "checkpoints") / ckpt.WEIGHTS))


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    steps = 40
    reference = tmp_path / "reference"
    run(reference, "--steps", str(steps))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(killed), "--steps", str(steps), "--sleep", "0.05"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    # Kill (SIGKILL: no cleanup at all) once a checkpoint past the first exists, mid-run.
    while time.time() < deadline:
        latest = ckpt.latest_checkpoint(killed / "checkpoints")
        if latest is not None and latest.name >= "step_00000010":
            break
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = ckpt.latest_checkpoint(killed / "checkpoints")
    assert at_kill is not None and int(at_kill.name.split("_")[1]) < steps, "the kill must land mid-run"

    run(killed, "--steps", str(steps), "--resume")
    ref, res = final_weights(reference), final_weights(killed)
    assert ref.keys() == res.keys()
    for k in ref:
        assert torch.equal(ref[k], res[k]), f"{k} differs after kill and resume"

    # The metrics CSV holds each step once, as if the run had never been interrupted.
    with open(killed / "metrics.csv") as f:
        loss_steps = [int(r["step"]) for r in csv.DictReader(f) if r["metric"] == "loss"]
    assert loss_steps == list(range(1, steps + 1))

    # The training time carries over the resume: the killed part slept 0.05 s per step up to its
    # checkpoint, the resumed part did not sleep at all.
    summary = read_training_summary(killed)
    assert summary["steps"] == steps
    assert summary["train_s"] >= 0.05 * int(at_kill.name.split("_")[1])
    with open(killed / "metrics.csv") as f:
        last_loss = [float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "loss"][-1]
    assert summary["train_loss"] == last_loss


def test_resume_without_checkpoint_refuses_to_overwrite(tmp_path):
    out = tmp_path / "run"
    run(out, "--steps", "5")
    again = run(out, "--steps", "5", check=False)
    assert again.returncode != 0
    assert "already holds a run" in again.stderr


def test_crash_while_saving_keeps_previous_latest(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 5, model, {"step": 5})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(root, 10, model, {"step": 10})
    latest = ckpt.latest_checkpoint(root)
    assert latest.name == "step_00000005"
    assert not any(p.name.startswith(".") for p in root.iterdir()), "temporary folder left behind"
    restored = torch.nn.Linear(3, 2)
    ckpt.load_weights(restored, latest)
    assert torch.equal(restored.weight, before["weight"])
    assert ckpt.load_training_state(latest)["step"] == 5


def test_keep_last_prunes_old_checkpoints(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, model, {"step": step}, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]


def test_weights_of_another_model_are_a_clear_error(tmp_path):
    from medvtc.common.errors import UserError

    ckpt.save_checkpoint(tmp_path, 1, torch.nn.Linear(2, 2), {"step": 1})
    with pytest.raises(UserError, match="do not match"):
        ckpt.load_weights(torch.nn.Linear(3, 3), ckpt.latest_checkpoint(tmp_path))


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    """2 x 4 accumulated must give (almost) the same weights as one batch of 8 on the same data."""
    a = tmp_path / "accum"
    b = tmp_path / "big"
    run(a, "--steps", "6", "--grad-accum", "2", "--batch-size", "4", "--save-every", "0")
    run(b, "--steps", "6", "--grad-accum", "1", "--batch-size", "8", "--save-every", "0")
    wa, wb = final_weights(a), final_weights(b)
    # Same samples in the same order; dropout masks differ in layout, so compare loosely but
    # far tighter than two unrelated runs would be.
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert diff < 0.5
    # A second run of the same config must give bit-identical weights (seeded, deterministic CPU).
    again = tmp_path / "accum_again"
    run(again, "--steps", "6", "--grad-accum", "2", "--batch-size", "4", "--save-every", "0")
    wa_again = final_weights(again)
    assert all(torch.equal(wa[k], wa_again[k]) for k in wa)


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)
    assert f(100) == pytest.approx(0.1)
    lin = lr_lambda(TrainConfig(max_steps=10, schedule="linear"))
    assert lin(5) == pytest.approx(0.5)
    const = lr_lambda(TrainConfig(max_steps=10, schedule="constant"))
    assert const(7) == 1.0


def test_training_summary_of_runs_logged_before_train_s(tmp_path):
    assert read_training_summary(tmp_path) is None
    rows = ["step,split,metric,value,time"]
    for step, t in ((20, 100.0), (40, 110.0), (60, 120.0)):
        rows += [f"{step},train,loss,{1 / step},{t}", f"{step},eval,loss,0.5,{t + 3}"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    summary = read_training_summary(tmp_path)
    # 20 s from step 20 to 60, stretched over the 20 steps logged first: 30 s
    assert summary == {"steps": 60, "train_loss": 1 / 60, "train_s": 30.0}


def test_resuming_a_checkpoint_from_before_train_s_estimates_the_time_already_spent(tmp_path):
    out = tmp_path / "old"
    run(out, "--steps", "10", "--sleep", "0.05")
    # Make it look written before `train_seconds` existed: no state entry, no train_s rows.
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    state = ckpt.load_training_state(latest)
    del state["train_seconds"]
    torch.save(state, latest / ckpt.STATE)
    with open(out / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] != "train_s"]
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run(out, "--steps", "20", "--sleep", "0.05", "--resume")
    # 20 steps of >= 0.05 s each; counting only the resumed 10 would give about half
    assert read_training_summary(out)["train_s"] >= 0.05 * 20 * 0.95


def test_training_cpu_time_is_counted_and_carried_over_a_resume(tmp_path):
    out = tmp_path / "cpu"
    # 10 steps spinning 0.03 s of CPU each, then 10 more sleeping 0.03 s (wall time, no CPU)
    run(out, "--steps", "10", "--busy", "0.03")
    first = read_training_summary(out)
    assert first["train_cpu_s"] >= 10 * 0.03 * 0.95
    run(out, "--steps", "20", "--sleep", "0.03", "--resume")
    summary = read_training_summary(out)
    assert summary["train_cpu_s"] >= first["train_cpu_s"]  # carried over, not restarted
    # the sleeping half adds wall time but (almost) no CPU time
    assert summary["train_s"] - first["train_s"] >= 10 * 0.03 * 0.95
    assert summary["train_cpu_s"] - first["train_cpu_s"] < 10 * 0.03 * 0.8


def test_resuming_a_checkpoint_from_before_cpu_time_leaves_it_unknown(tmp_path):
    out = tmp_path / "old"
    run(out, "--steps", "5")
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    state = ckpt.load_training_state(latest)
    del state["train_cpu_seconds"]
    torch.save(state, latest / ckpt.STATE)
    run(out, "--steps", "10", "--resume")
    with open(out / "metrics.csv") as f:
        cpu_steps = [int(r["step"]) for r in csv.DictReader(f) if r["metric"] == "train_cpu_s"]
    # logged up to the checkpoint, never after the resume: a guess would be worse than none
    assert cpu_steps == [1, 2, 3, 4, 5]
    assert "train_cpu_s" not in read_training_summary(out)


class _Scripted(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        return torch.randn(4)


def _selection_trainer(tmp_path, scores, **cfg):
    """A trainer whose evaluation returns the next of `scores` (one per evaluation)."""
    from medvtc.common.trainer import Trainer

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    it = iter(scores)
    config = TrainConfig(max_steps=8, batch_size=4, eval_every=2, save_every=2, progress=False, select_metric="acc", **cfg)
    return Trainer(model, _Scripted(), config, tmp_path, step_fn=lambda m, x: m(x).pow(2).mean(),
                   eval_fn=lambda m, ds, dev: {"acc": next(it), "w0": float(m.weight[0, 0])}, eval_set=[0])


def test_selection_keeps_the_best_evaluations_weights_and_prefers_the_later_tie(tmp_path):
    t = _selection_trainer(tmp_path, [0.2, 0.5, 0.1, 0.5])  # evaluations at steps 2, 4, 6, 8
    t.fit()
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert (best["step"], best["value"], best["metric"]) == (8, 0.5, "acc")  # tie with step 4: the later wins
    t2 = _selection_trainer(tmp_path / "min", [0.2, 0.5, 0.1, 0.5], select_mode="min")
    t2.fit()
    best = json.loads((tmp_path / "min" / "best" / "best.json").read_text())
    assert (best["step"], best["value"]) == (6, 0.1)
    final = t2.model.weight.detach().clone()
    record = t2.load_best()
    assert record["step"] == 6
    # the kept weights are step 6's: the evaluation logged them, and they differ from the final ones
    assert float(t2.model.weight.detach()[0, 0]) == pytest.approx(best["metrics"]["w0"])
    assert not torch.equal(t2.model.weight.detach(), final)


def test_selection_survives_a_resume(tmp_path):
    from medvtc.common.trainer import Trainer

    torch.manual_seed(0)
    scores = iter([0.9, 0.1, 0.2, 0.3])
    cfg = TrainConfig(max_steps=4, batch_size=4, eval_every=2, save_every=2, progress=False, select_metric="acc")
    t = Trainer(torch.nn.Linear(4, 1), _Scripted(), cfg, tmp_path, step_fn=lambda m, x: m(x).pow(2).mean(),
                eval_fn=lambda m, ds, dev: {"acc": next(scores)}, eval_set=[0])
    t.fit()  # evaluations at steps 2 (0.9) and 4 (0.1): best is step 2
    cfg8 = TrainConfig(max_steps=8, batch_size=4, eval_every=2, save_every=2, progress=False, select_metric="acc")
    t8 = Trainer(torch.nn.Linear(4, 1), _Scripted(), cfg8, tmp_path, step_fn=lambda m, x: m(x).pow(2).mean(),
                 eval_fn=lambda m, ds, dev: {"acc": next(scores)}, eval_set=[0])
    t8.fit(resume=True)  # 0.2 at 6, 0.3 at 8: neither beats 0.9 kept before the resume
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 2


def test_selection_needs_an_evaluation_that_gives_the_metric(tmp_path):
    from medvtc.common.errors import UserError
    from medvtc.common.trainer import Trainer

    cfg = TrainConfig(max_steps=2, batch_size=4, eval_every=1, progress=False, select_metric="acc")
    with pytest.raises(UserError, match="select_metric='acc' needs an evaluation"):
        Trainer(torch.nn.Linear(4, 1), _Scripted(), cfg, tmp_path, step_fn=lambda m, x: m(x).pow(2).mean())
    t = Trainer(torch.nn.Linear(4, 1), _Scripted(), cfg, tmp_path / "b", step_fn=lambda m, x: m(x).pow(2).mean(),
                eval_fn=lambda m, ds, dev: {"loss": 1.0}, eval_set=[0])
    with pytest.raises(UserError, match=r"not a metric of this task's evaluation: it gives \['loss'\]"):
        t.fit()
    with pytest.raises(ValueError, match="select_mode"):
        TrainConfig(select_metric="acc", select_mode="best").validate()


# -- the convergence budget (train.plateau_*) ---------------------------------------------------------
def _plateau_trainer(out, values, **cfg):
    """A trainer whose evaluation at step s returns values(s) (the same at any resume)."""
    from medvtc.common.trainer import Trainer

    torch.manual_seed(0)
    holder: dict = {}
    settings = dict(max_steps=40, batch_size=4, eval_every=2, save_every=4, progress=False, select_metric="acc",
                    plateau_window=0.25, plateau_delta=0.01)
    config = TrainConfig(**{**settings, **cfg})
    config.validate()
    t = Trainer(torch.nn.Linear(4, 1), _Scripted(), config, out, step_fn=lambda m, x: m(x).pow(2).mean(),
                eval_fn=lambda m, ds, dev: {"acc": values(holder["t"].step)}, eval_set=[0])
    holder["t"] = t
    return t


def _peak_at_12(step: int) -> float:
    return 0.05 * step if step <= 12 else 0.59  # rises to 0.6 at step 12, then a little lower


def test_plateau_rule_on_a_scripted_history():
    from medvtc.common.trainer import plateau_reached

    hist = [(s, _peak_at_12(s)) for s in range(2, 41, 2)]
    # step 14: the window starts at 10.5; the best before it (0.5 at 10) is 0.1 below the best now
    assert not plateau_reached(hist, 14, 0.25, 0.01)
    assert plateau_reached(hist, 16, 0.25, 0.01)  # the window starts at 12: nothing gained since
    assert not plateau_reached(hist, 16, 0.25, 0.01, min_steps=20) and plateau_reached(hist, 20, 0.25, 0.01, min_steps=20)
    assert not plateau_reached(hist, 16, None, 0.01) and not plateau_reached(hist, 16, 0.0, 0.01)
    assert not plateau_reached([(2, 0.1)], 2, 0.25, 0.01)  # no evaluation before the window
    # delta is absolute: a gain of 0.1 over the window is a plateau for delta 0.1, not for 0.09
    assert plateau_reached(hist, 14, 0.25, 0.1) and not plateau_reached(hist, 14, 0.25, 0.09)
    # min mode: a loss that stops falling
    loss = [(s, 1.0 / s if s <= 12 else 0.2) for s in range(2, 41, 2)]
    assert plateau_reached(loss, 16, 0.25, 0.001, mode="min") and not plateau_reached(loss, 14, 0.25, 0.001, mode="min")
    assert plateau_reached([(2, 0.5), (4, float("nan"))], 4, 0.25, 0.0)  # NaN never counts as an improvement


def test_plateau_stops_training_at_the_right_step_and_records_it(tmp_path, capsys):
    t = _plateau_trainer(tmp_path, _peak_at_12)
    t.fit()
    assert t.step == 16 and t.plateau_step == 16
    assert "plateau at step 16" in capsys.readouterr().out
    conv = json.loads((tmp_path / "convergence.json").read_text())
    assert (conv["stopped_by"], conv["plateau_step"], conv["steps"], conv["best_step"]) == ("plateau", 16, 16, 12)
    assert conv["history"] == [[s, pytest.approx(_peak_at_12(s))] for s in range(2, 17, 2)]
    assert conv["rule"] == {"plateau_window": 0.25, "plateau_delta": 0.01, "plateau_min_steps": 0, "eval_every": 2,
                            "max_steps": 40}
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 12
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step_00000016"
    with open(tmp_path / "metrics.csv", newline="") as f:  # step 16 evaluated once, not again at the end
        assert [r["step"] for r in csv.DictReader(f) if r["split"] == "eval"] == [str(s) for s in range(2, 17, 2)]
    # not before plateau_min_steps
    late = _plateau_trainer(tmp_path / "late", _peak_at_12, plateau_min_steps=23)
    late.fit()
    assert late.step == 24


def test_no_plateau_while_improving_and_without_the_rule(tmp_path):
    t = _plateau_trainer(tmp_path / "up", lambda s: 0.01 * s, max_steps=20)  # gains 0.02 over every window
    t.fit()
    conv = json.loads((tmp_path / "up" / "convergence.json").read_text())
    assert t.step == 20 and (conv["stopped_by"], conv["plateau_step"], conv["best_step"]) == ("max_steps", None, 20)
    off = _plateau_trainer(tmp_path / "off", _peak_at_12, max_steps=20, plateau_window=None)
    off.fit()
    assert off.step == 20 and json.loads((tmp_path / "off" / "convergence.json").read_text())["stopped_by"] == "max_steps"


class _Killed(Exception):
    pass


@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_a_killed_and_resumed_run_stops_at_the_same_step(tmp_path, old_checkpoint):
    reference = _plateau_trainer(tmp_path / "ref", _peak_at_12)
    reference.fit()

    def dies_at_14(step):
        if step == 14:
            raise _Killed  # after the checkpoint at 12 and the evaluations up to it
        return _peak_at_12(step)

    out = tmp_path / "killed"
    with pytest.raises(_Killed):
        _plateau_trainer(out, dies_at_14).fit()
    if old_checkpoint:  # a checkpoint from before the history was kept: read back from metrics.csv
        state_path = ckpt.latest_checkpoint(out / "checkpoints") / ckpt.STATE
        state = torch.load(state_path, weights_only=True)
        del state["eval_history"], state["plateau_step"]
        torch.save(state, state_path)
    resumed = _plateau_trainer(out, _peak_at_12)
    resumed.fit(resume=True)
    assert resumed.step == resumed.plateau_step == 16
    got, want = (json.loads((d / "convergence.json").read_text()) for d in (out, tmp_path / "ref"))
    if old_checkpoint:  # metrics.csv keeps 6 significant digits
        got["history"] = [[s, pytest.approx(v, rel=1e-5)] for s, v in got["history"]]
    assert got == want
    assert torch.equal(resumed.model.weight, reference.model.weight)
    # resuming a run the rule stopped trains no further, even with a higher cap
    again = _plateau_trainer(out, _peak_at_12, max_steps=80)
    again.fit(resume=True)
    assert again.step == 16 and ckpt.latest_checkpoint(out / "checkpoints").name == "step_00000016"
    assert json.loads((out / "convergence.json").read_text())["plateau_step"] == 16


def test_plateau_settings_are_checked(tmp_path):
    from medvtc.common.config import load_config
    from medvtc.common.errors import ConfigError

    good = dict(select_metric="acc", eval_every=10)
    for bad, match in ((dict(plateau_window=1.0), "plateau_window must be a fraction of the steps so far in \\(0, 1\\)"),
                       (dict(plateau_window=-0.2), "plateau_window must be"),
                       (dict(plateau_window=0.2, plateau_delta=-0.01), "plateau_delta must be a number >= 0"),
                       (dict(plateau_window=0.2, plateau_min_steps=-1), "plateau_min_steps must be an integer >= 0")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**good, **bad).validate()
    # what the rule needs besides valid values: checked when training starts (an old run's
    # config.yaml with today's defaults must still load for evaluation)
    from medvtc.common.errors import UserError
    from medvtc.common.trainer import Trainer

    for lacking, match in ((dict(eval_every=10), r"train\.plateau_window=0\.2 needs train\.select_metric"),
                           (dict(select_metric="acc"), r"needs train\.eval_every >= 1 \(evaluations to watch\), got 0")):
        cfg = TrainConfig(plateau_window=0.2, progress=False, batch_size=4, **lacking)
        cfg.validate()
        with pytest.raises(UserError, match=match):
            Trainer(torch.nn.Linear(4, 1), _Scripted(), cfg, tmp_path, eval_fn=lambda m, d, dev: {"acc": 1.0}, eval_set=[0])
    TrainConfig(plateau_window=0, plateau_delta=0.5).validate()  # off
    with pytest.raises(ConfigError, match=r"^train: plateau_window must be"):
        load_config(_Wrap, None, ["train.plateau_window=1.5", "train.select_metric=acc", "train.eval_every=5"])


@dataclasses.dataclass
class _Wrap:
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
