"""`medvtc.common.bench_runner` on a toy benchmark: no torch, no training; `train` writes a final/
folder and `evaluate` returns fixed per-case results, so every rule of the runner is checked in
milliseconds: train-or-reuse by settings (refusal naming the key, --retrain), seeds, the
evaluation cache, partial files and resuming after a crash, intervals, and a spec that does
not train."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from medvtc.common.bench_runner import BenchSpec, CaseStatistic, Evaluation, parse_variant, run_bench
from medvtc.common.config import load_config
from medvtc.common.errors import UserError
from medvtc.common.intervals import mean_of


@dataclass
class ToyModel:
    compressor: str = "none"
    budget: float | None = None
    width: int = 4
    args: dict = field(default_factory=dict)


@dataclass
class ToyTrain:
    max_steps: int = 2
    progress: bool = True  # bookkeeping: never part of the settings


@dataclass
class ToyBench:
    variants: list[str] = field(default_factory=lambda: ["none", "pooling@8"])
    seeds: list[int] = field(default_factory=lambda: [0])
    output_dir: str = "runs/toy"


@dataclass
class ToyConfig:
    seed: int = 0
    output_dir: str = "runs/toy-run"
    model: ToyModel = field(default_factory=ToyModel)
    train: ToyTrain = field(default_factory=ToyTrain)
    bench: ToyBench = field(default_factory=ToyBench)


SCORES = {"none": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], "pooling@8": [0.8, 0.8, 0.6, 0.6, 0.4, 0.4],
          "wide": [0.7, 0.7, 0.7, 0.7, 0.7, 0.7], "random": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}


class ToyBenchSpec(BenchSpec):
    task = "toy"
    reference = "none"
    settings_sections = ("seed", "model", "train")
    keep_whole = ("args",)
    ablations = {"wide": ["model.width=8"]}
    methods = ("none", "pooling", "random")
    statistics = {"score": CaseStatistic(mean_of("score")),
                  "success_rate": CaseStatistic(mean_of("success"), interval="wilson", column="success")}

    def __init__(self, fail_on: str | None = None, output: Path | None = None) -> None:
        self.trained: list[str] = []
        self.evaluated: list[str] = []
        self.partials_seen: list[list[str]] = []
        self.fail_on = fail_on
        self.output = output

    def train(self, vcfg) -> None:
        run = Path(vcfg.output_dir)
        if self.output is not None:  # what the partial results held when this variant started
            partial = self.output / "toy.partial.json"
            self.partials_seen.append([r["method"] for r in json.loads(partial.read_text())["rows"]]
                                      if partial.is_file() else [])
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)  # a crash leaves a partial run
        if self.fail_on is not None and run.parent.name == self.fail_on:
            raise RuntimeError("simulated crash")
        (run / "final").mkdir(parents=True, exist_ok=True)
        (run / "final" / "weights.txt").write_text(f"{vcfg.model.compressor} {vcfg.model.budget} {vcfg.seed}")
        self.trained.append(f"{run.parent.name}/{run.name}")

    def evaluate(self, vcfg, variant) -> Evaluation:
        self.evaluated.append(f"{variant.name}/seed_{vcfg.seed}")
        score = [s + 0.01 * vcfg.seed for s in SCORES[variant.name]]
        return Evaluation(cases={"case": [f"c{i}" for i in range(6)], "score": score,
                                 "success": [int(s >= 0.6) for s in score]},
                          metrics={"diag": 1.5},
                          cost={"tokens": 8 if variant.budget else 64, "flops": 1e6, "params": 10, "latency_ms": 1.0,
                                "peak_mem_mb": 2.0})


def toy_config(tmp_path: Path, *overrides: str) -> ToyConfig:
    return load_config(ToyConfig, None, [f"bench.output_dir={tmp_path / 'runs'}", *overrides])


def rows_of(output: Path, name: str = "toy") -> dict[str, dict]:
    return {r["method"]: r for r in json.loads((output / f"{name}.json").read_text())["rows"]}


# ------------------------------------------------------------------------------------ variants


def test_the_variant_grammar():
    ablations = {"stc_only": ["model.compressor=stc"]}
    v = parse_variant("pixel_shuffle@64", ablations)
    assert (v.method, v.budget, v.overrides, v.folder) == ("pixel_shuffle", 64, (), "pixel_shuffle_64")
    assert parse_variant("tome@0.25").budget == 0.25
    assert parse_variant("none").method == "none" and parse_variant("none").budget is None
    a = parse_variant("stc_only", ablations)
    assert a.method is None and a.overrides == ("model.compressor=stc",)
    with pytest.raises(UserError, match="budget 'x' is not a number"):
        parse_variant("pooling@x")
    with pytest.raises(UserError, match="expected 'method', 'method@budget'"):
        parse_variant("pooling@")
    with pytest.raises(UserError, match="unknown method 'poling'; valid: none, pooling, stc_only"):
        parse_variant("poling", ablations, methods=["none", "pooling"])
    spec = ToyBenchSpec()
    assert spec.variant_overrides(parse_variant("pooling@8")) == ["model.compressor=pooling", "model.budget=8"]


# ------------------------------------------------------------------------- train, reuse, retrain


def test_runs_train_once_then_are_reused_with_their_evaluation(tmp_path):
    cfg, out = toy_config(tmp_path), tmp_path / "results"
    spec = ToyBenchSpec()
    rows = run_bench(spec, cfg, out, log=lambda s: None)
    assert [r.method for r in rows] == ["none", "pooling@8"]
    assert spec.trained == ["none/seed_0", "pooling_8/seed_0"]
    run = tmp_path / "runs" / "pooling_8" / "seed_0"
    assert (run / "final" / "weights.txt").read_text() == "pooling 8.0 0"
    settings = json.loads((run / "bench_settings.json").read_text())["settings"]
    assert settings["model.compressor"] == "pooling" and settings["model.budget"] == 8
    assert "train.progress" not in settings and "output_dir" not in settings
    assert (run / "bench_eval.json").is_file() and (run / "bench_train.json").is_file()

    doc = rows_of(out)
    for name, r in doc.items():
        m = r["metrics"]
        assert m["run"] == "trained" and m["diag"] == 1.5 and "train_s" in m
        assert m["score"] == pytest.approx(np.mean(SCORES[name]), abs=1e-4)
        lo, hi = m["score_ci"]
        assert lo <= m["score"] <= hi and hi > lo
        assert 0 <= m["success_rate_ci"][0] <= m["success_rate"] <= m["success_rate_ci"][1] <= 1
        assert r["cases"]["seed_0"]["score"] == SCORES[name]  # per-case results in the json
    assert "score_diff_ci" not in doc["none"]["metrics"]  # the reference has no difference to itself
    p = doc["pooling@8"]["metrics"]
    assert p["score_diff"] == pytest.approx(np.mean(SCORES["pooling@8"]) - np.mean(SCORES["none"]), abs=1e-4)
    assert p["score_diff_ci"][0] <= p["score_diff"] <= p["score_diff_ci"][1]
    assert "success_rate_diff_ci" in p
    assert doc["pooling@8"]["tokens"] == 8 and doc["none"]["tokens"] == 64
    md = (out / "toy.md").read_text()
    assert "Paired differences to none" in md and "[" in md

    # a second run: nothing trained, nothing evaluated
    again = ToyBenchSpec()
    run_bench(again, cfg, out, log=lambda s: None)
    assert again.trained == [] and again.evaluated == []
    assert [r["metrics"]["run"] for r in rows_of(out).values()] == ["reused", "reused"]
    assert rows_of(out)["pooling@8"]["metrics"]["score_ci"] == p["score_ci"]


class SpinningSpec(ToyBenchSpec):
    """Training and evaluation that use CPU time (0.02 s each), so the ledger has something to sum."""

    @staticmethod
    def _spin(seconds: float) -> None:
        import time

        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    def train(self, vcfg) -> None:
        self._spin(0.02)
        super().train(vcfg)

    def evaluate(self, vcfg, variant) -> Evaluation:
        self._spin(0.02)
        return super().evaluate(vcfg, variant)


def test_the_bench_reports_its_total_cpu_time_over_calls(tmp_path):
    cfg, out = toy_config(tmp_path), tmp_path / "results"
    run_bench(SpinningSpec(), cfg, out, log=lambda s: None)
    cpu = json.loads((out / "toy.json").read_text())["config"]["cpu_time"]
    assert set(cpu["per_run"]) == {"none/seed_0", "pooling@8/seed_0", "bench"}
    for run in ("none/seed_0", "pooling@8/seed_0"):
        assert cpu["per_run"][run]["train"] >= 0.015 and cpu["per_run"][run]["eval"] >= 0.015
    assert cpu["total_cpu_s"] == pytest.approx(cpu["train_cpu_s"] + cpu["eval_cpu_s"] + cpu["costs_cpu_s"], abs=0.15)
    assert cpu["unknown"] == []
    assert rows_of(out)["none"]["metrics"]["eval_cpu_s"] == cpu["per_run"]["none/seed_0"]["eval"]
    assert "Total CPU time" in (out / "toy.md").read_text()

    # a second call reuses both runs: their CPU times are read back, not reset to this call's
    run_bench(SpinningSpec(), cfg, out, log=lambda s: None)
    again = json.loads((out / "toy.json").read_text())["config"]["cpu_time"]
    for run in ("none/seed_0", "pooling@8/seed_0"):
        assert again["per_run"][run] == cpu["per_run"][run]

    # an evaluation kept before CPU time was recorded is still reused, and named as not recorded
    path = tmp_path / "runs" / "none" / "seed_0" / "bench_eval.json"
    doc = json.loads(path.read_text())
    del doc["eval_cpu_s"]
    path.write_text(json.dumps(doc))
    spec = SpinningSpec()
    run_bench(spec, cfg, out, log=lambda s: None)
    assert spec.evaluated == []
    cpu = json.loads((out / "toy.json").read_text())["config"]["cpu_time"]
    assert cpu["unknown"] == ["none/seed_0 (eval)"]
    assert "eval_cpu_s" not in rows_of(out)["none"]["metrics"]
    assert "not recorded" in (out / "toy.md").read_text() and "none/seed_0 (eval)" in (out / "toy.md").read_text()


def test_a_changed_training_key_is_refused_by_name_and_retrain_trains_again(tmp_path):
    cfg, out = toy_config(tmp_path), tmp_path / "results"
    run_bench(ToyBenchSpec(), cfg, out, log=lambda s: None)
    changed = toy_config(tmp_path, "train.max_steps=5")
    spec = ToyBenchSpec()
    with pytest.raises(UserError, match=r"other settings \(train\.max_steps: 2 there, 5 now\); pass --retrain"):
        run_bench(spec, changed, out, log=lambda s: None)
    assert spec.trained == []
    # bookkeeping keys never count
    quiet = ToyBenchSpec()
    run_bench(quiet, toy_config(tmp_path, "train.progress=false"), out, log=lambda s: None)
    assert quiet.trained == []
    logs: list[str] = []
    retrain = ToyBenchSpec()
    run_bench(retrain, changed, out, retrain=True, log=logs.append)
    assert retrain.trained == ["none/seed_0", "pooling_8/seed_0"]
    assert any("--retrain: removing" in line for line in logs)
    assert [r["metrics"]["run"] for r in rows_of(out).values()] == ["trained", "trained"]
    saved = json.loads((tmp_path / "runs" / "none" / "seed_0" / "bench_settings.json").read_text())["settings"]
    assert saved["train.max_steps"] == 5
    # --retrain on runs that match: nothing is deleted, they are reused
    again = ToyBenchSpec()
    run_bench(again, changed, out, retrain=True, log=lambda s: None)
    assert again.trained == [] and [r["metrics"]["run"] for r in rows_of(out).values()] == ["reused", "reused"]


def test_a_run_made_by_hand_is_checked_against_its_config_yaml(tmp_path):
    from medvtc.common.config import replace, save_config

    cfg = toy_config(tmp_path, "bench.variants=[none]")
    run = tmp_path / "runs" / "none" / "seed_0"
    (run / "final").mkdir(parents=True)
    save_config(replace(cfg, model=replace(cfg.model, width=16)), run / "config.yaml")
    with pytest.raises(UserError, match=r"model\.width: 16 there, 4 now"):
        run_bench(ToyBenchSpec(), cfg, tmp_path / "results", log=lambda s: None)
    save_config(replace(cfg, output_dir="elsewhere", train=replace(cfg.train, progress=False)), run / "config.yaml")
    spec = ToyBenchSpec()
    run_bench(spec, cfg, tmp_path / "results", log=lambda s: None)
    assert spec.trained == [] and spec.evaluated == ["none/seed_0"]  # reused, evaluated once


def test_named_ablations_apply_their_overrides(tmp_path):
    cfg = toy_config(tmp_path, "bench.variants=[none, wide]")
    run_bench(ToyBenchSpec(), cfg, tmp_path / "results", log=lambda s: None)
    settings = json.loads((tmp_path / "runs" / "wide" / "seed_0" / "bench_settings.json").read_text())["settings"]
    assert settings["model.width"] == 8 and settings["model.compressor"] == "none"
    with pytest.raises(UserError, match="unknown method 'narrow'"):
        run_bench(ToyBenchSpec(), toy_config(tmp_path, "bench.variants=[narrow]"), tmp_path / "r2", log=lambda s: None)
    with pytest.raises(UserError, match="lists a variant twice"):
        run_bench(ToyBenchSpec(), toy_config(tmp_path, "bench.variants=[none, none]"), tmp_path / "r2", log=lambda s: None)
    assert not (tmp_path / "r2").exists()


def test_a_generated_ablation_table_that_lists_no_names_is_still_asked():
    """A table that recognises names by their form (ct-report's `<X>x<Y>x<Z>/method@K`) has no
    fixed entries to list (len 0): parse_variant must still look names up in it."""
    class Sized(dict):
        def __contains__(self, key):
            return str(key).startswith("big/")

        def __getitem__(self, key):
            return ["model.width=16", f"model.compressor={key[4:]}"]

    v = parse_variant("big/pooling", Sized(), methods=["none", "pooling"])
    assert len(Sized()) == 0 and v.overrides == ("model.width=16", "model.compressor=pooling") and v.folder == "big_pooling"


def test_compare_rows_before_every_write_and_hidden_metrics_only_in_the_json(tmp_path):
    """compare_rows sees every write's rows with their intervals and cases (what it adds is in the
    files); metrics of hide_in_table stay in the json, out of the markdown's tables."""
    seen: list[list[str]] = []

    class Spec(ToyBenchSpec):
        statistics = {**ToyBenchSpec.statistics, "extra_a": CaseStatistic(mean_of("score")),
                      "extra_b": CaseStatistic(mean_of("success"))}
        hide_in_table = ("extra_",)

        def compare_rows(self, rows, cfg):
            seen.append([r.method for r in rows])
            for r in rows:
                assert r.cases and "score_ci" in r.metrics
                r.metrics["compared_with"] = len(rows) - 1

        def results_config(self, cfg):
            return {"compared": len(seen)}

    out = tmp_path / "results"
    run_bench(Spec(), toy_config(tmp_path), out, log=lambda s: None)
    assert seen == [["none"], ["none", "pooling@8"], ["none", "pooling@8"]]  # two partial writes, the final
    rows = rows_of(out)
    assert rows["pooling@8"]["metrics"]["compared_with"] == 1 and json.loads((out / "toy.json").read_text())["config"]["compared"] == 3
    m = rows["pooling@8"]["metrics"]
    assert {"extra_a", "extra_a_ci", "extra_a_diff_ci", "extra_b"} <= set(m)
    md = (out / "toy.md").read_text()
    assert "extra_" not in md and "score" in md and "compared_with" in md


# ----------------------------------------------------------------------------------------- seeds


def test_two_seeds_train_one_run_each_and_report_per_seed_values(tmp_path):
    cfg, out = toy_config(tmp_path, "bench.seeds=[0, 1]"), tmp_path / "results"
    spec = ToyBenchSpec()
    run_bench(spec, cfg, out, log=lambda s: None)
    assert spec.trained == ["none/seed_0", "none/seed_1", "pooling_8/seed_0", "pooling_8/seed_1"]
    assert (tmp_path / "runs" / "none" / "seed_1" / "final" / "weights.txt").read_text() == "none None 1"
    doc = json.loads((out / "toy.json").read_text())
    assert doc["config"]["seeds"] == [0, 1]
    r = {row["method"]: row for row in doc["rows"]}["pooling@8"]
    m = r["metrics"]
    per_seed = [np.mean(SCORES["pooling@8"]), np.mean(SCORES["pooling@8"]) + 0.01]
    assert m["score_per_seed"] == pytest.approx(per_seed, abs=1e-4)
    assert m["score"] == pytest.approx(np.mean(per_seed), abs=1e-4)
    assert m["run"] == ["trained", "trained"] and set(r["cases"]) == {"seed_0", "seed_1"}
    assert "score_ci" in m and "score_diff_ci" in m and "success_rate_ci" in m


# ------------------------------------------------------------------------ partial results, resume


def test_partial_results_after_each_variant_and_resume_after_a_crash(tmp_path):
    cfg, out = toy_config(tmp_path, "bench.variants=[none, pooling@8, random]"), tmp_path / "results"
    crashing = ToyBenchSpec(fail_on="pooling_8", output=out)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_bench(crashing, cfg, out, log=lambda s: None)
    assert crashing.trained == ["none/seed_0"]
    partial = json.loads((out / "toy.partial.json").read_text())
    assert partial["config"]["partial"] is True and [r["method"] for r in partial["rows"]] == ["none"]
    assert "score_ci" in partial["rows"][0]["metrics"] and (out / "toy.partial.md").is_file()
    assert not (out / "toy.json").exists()

    resumed = ToyBenchSpec(output=out)
    logs: list[str] = []
    run_bench(resumed, cfg, out, log=logs.append)
    # the finished variant is neither retrained nor re-evaluated; the crashed one resumes
    assert resumed.trained == ["pooling_8/seed_0", "random/seed_0"]
    assert resumed.evaluated == ["pooling@8/seed_0", "random/seed_0"]
    assert any("resuming" in line and "pooling_8" in line for line in logs)
    # partial results were there (and growing) when each later variant started
    assert resumed.partials_seen == [["none"], ["none", "pooling@8"]]
    assert not list(out.glob("toy.partial.*"))
    assert [r["metrics"]["run"] for r in rows_of(out).values()] == ["reused", "resumed", "trained"]


# ---------------------------------------------------------------------------------- no training


@dataclass
class BareBench:
    variants: list[str] = field(default_factory=lambda: ["none"])


@dataclass
class BareConfig:
    seed: int = 0
    output_dir: str = "x"
    model: ToyModel = field(default_factory=ToyModel)
    bench: BareBench = field(default_factory=BareBench)


class UntrainedSpec(ToyBenchSpec):
    task = "toy-untrained"
    trains = False

    def train(self, vcfg) -> None:
        raise AssertionError("a spec with trains = False is never trained")


def test_a_spec_that_does_not_train(tmp_path):
    cfg, out = toy_config(tmp_path), tmp_path / "results"
    spec = UntrainedSpec()
    rows = run_bench(spec, cfg, out, log=lambda s: None)
    assert [r.method for r in rows] == ["none", "pooling@8"] and spec.evaluated == ["none/seed_0", "pooling@8/seed_0"]
    doc = rows_of(out, "toy-untrained")
    assert doc["none"]["metrics"]["run"] == "untrained" and "train_s" not in doc["none"]["metrics"]
    assert "score_ci" in doc["pooling@8"]["metrics"] and "score_diff_ci" in doc["pooling@8"]["metrics"]
    assert not (tmp_path / "runs").exists()  # nothing written into run folders
    assert not list(out.glob("*.partial.*"))
    # nor does it need bench.output_dir (nor bench.seeds)
    rows = run_bench(UntrainedSpec(), BareConfig(), out, log=lambda s: None)
    assert [r.method for r in rows] == ["none"]


def test_selection_and_the_convergence_budget_in_the_settings():
    """eval_every counts once evaluations choose the weights; train keys added later (selection,
    plateau_*) left at off match runs whose settings predate them."""
    from medvtc.common.bench_runner import comparable_settings

    spec = ToyBenchSpec()
    base = {"seed": 0, "train": {"max_steps": 2, "eval_every": 10, "progress": True}}
    assert "train.eval_every" not in spec.settings(base)  # bookkeeping without selection
    selecting = {"seed": 0, "train": {**base["train"], "select_metric": "dice", "plateau_window": 0.2}}
    assert spec.settings(selecting)["train.eval_every"] == 10
    old = spec.settings(base)
    off = spec.settings({"seed": 0, "train": {**base["train"], "select_metric": None, "select_mode": "max",
                                              "plateau_window": None, "plateau_delta": 0.0, "plateau_min_steps": 0}})
    assert comparable_settings(off) == comparable_settings(old) == old
    on = comparable_settings(spec.settings(selecting))
    assert on["train.plateau_window"] == 0.2 and on["train.select_metric"] == "dice"
