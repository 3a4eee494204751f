"""`medvtc rollout --task libero` (results, JSON, videos with kept tokens, parallel environments,
bad input), the ACT peer baseline, and `medvtc bench --task libero` end to end on a tiny config.

Policies are tiny (32 px cameras -> 4 x 4 token grids, width 32, one block) and trained for a
couple of steps on the session's one-episode recording; episodes last 3-5 steps.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from medvtc.cli import main
from medvtc.common.config import replace, to_dict
from medvtc.common.errors import ConfigError, UserError
from medvtc.common.trainer import read_training_summary
from medvtc.robotics.task import LiberoTask

TINY_POLICY = [
    "policy.dim_model=32", "policy.n_heads=4", "policy.n_layers=1", "policy.chunk_size=4", "policy.n_action_steps=2",
    "policy.text_buckets=64", "policy.tokenizer_max_length=12", "policy.image_shift=2",
    "policy.compressor_args={num_queries: 2, num_heads: 4}",
]
TINY_TRAIN = ["train.batch_size=4", "train.save_every=0", "train.progress=false", "train.device=cpu",
              "train.warmup_steps=0", "eval.progress=false"]
TINY_ACT = "policy.act_args={dim_model: 32, n_heads: 4, dim_feedforward: 64, n_encoder_layers: 1, " \
           "n_vae_encoder_layers: 1, latent_dim: 8}"


def overrides(root, out, *extra):
    return [f"data.root={root}", f"output_dir={out}", *TINY_POLICY, *TINY_TRAIN, *extra]


# ----------------------------------------------------------------------------------- token maps


def test_token_maps_and_drawing_show_what_each_compressor_kept():
    from medvtc.robotics.policies.compressor_vla import CompressorVLAPolicy
    from medvtc.robotics.token_video import DIMMED, KEPT_COLOR, draw_token_map, token_maps
    from tests.robotics.test_compressor_vla_policy import batch_of, tiny_config

    torch.manual_seed(0)
    cvla = CompressorVLAPolicy(tiny_config())
    cvla.model.keep_inputs = True
    cvla.predict_action_chunk(batch_of(1))
    maps = token_maps(cvla)
    assert len(maps) == 2 and maps[0].grid == (4, 4)
    # SRC: one most-attended cell per 2 x 2 window; STC: attention over all 16 cells as the tint
    for m in maps:
        kept = np.flatnonzero(m.kept)
        assert len(kept) == 4 and sorted({(int(k) // 4 // 2, int(k) % 4 // 2) for k in kept}) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert m.weight.shape == (16,) and m.weight.min() == 0.0 and m.weight.max() == pytest.approx(1.0)
        assert not m.dim_rest and "2 STC + 4 SRC of 16" in m.label

    rnd = CompressorVLAPolicy(tiny_config(compressor="random", compressor_budget=6, compressor_args={}))
    rnd.predict_action_chunk(batch_of(1))
    rmap = token_maps(rnd)[0]
    assert rmap.kept.sum() == 6 and rmap.dim_rest and rmap.weight is None
    assert set(np.flatnonzero(rmap.kept)) == set(rnd.model.last_compression[0].index[0].tolist())

    none = CompressorVLAPolicy(tiny_config(compressor="none", compressor_args={}))
    none.predict_action_chunk(batch_of(1))
    assert token_maps(none) is None

    frame = np.full((32, 32, 3), 200, dtype=np.uint8)  # 8 px cells, drawn at 2x: 16 px
    img = draw_token_map(frame, rmap, scale=2)
    assert img.shape == (64, 64, 3)
    for cell in range(16):
        r, c = divmod(cell, 4)
        centre = img[r * 16 + 8, c * 16 + 8]
        if rmap.kept[cell]:
            assert (centre == 200).all() and (img[r * 16, c * 16 + 8] == KEPT_COLOR).all()  # boxed, not dimmed
        else:
            assert (centre == round(200 * DIMMED)).all()  # dropped: darkened
    tinted = draw_token_map(frame, maps[0], scale=2)
    hottest = int(np.argmax(maps[0].weight))
    r, c = divmod(hottest, 4)
    assert tinted[r * 16 + 8, c * 16 + 8, 0] > tinted[r * 16 + 8, c * 16 + 8, 2]  # red tint where STC attends
    assert draw_token_map(frame, None, scale=3).shape == (96, 96, 3)


# --------------------------------------------------------------------------------------- rollout


def test_rollout_command_prints_success_and_writes_json_and_videos(trained_run, tmp_path, capsys):
    import av

    out_json, videos = tmp_path / "results.json", tmp_path / "videos"
    rc = main(["rollout", "--task", "libero", "--checkpoint", str(trained_run), "--suite", "libero_object",
               "--tasks", "0", "--episodes", "2", "--max-episode-steps", "3", "--video-dir", str(videos),
               "--video-episodes", "1", "-o", str(out_json), "eval.progress=false"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "task 0: success 0%" in text and "overall success: 0.0%" in text and "videos: 1" in text
    res = json.loads(out_json.read_text())
    eps = res["tasks"]["0"]["episodes"]
    assert [e["init_state_id"] for e in eps] == [0, 1] and all(e["steps"] == 3 for e in eps)
    assert res["visual_tokens"] == 12 and res["uncompressed_tokens"] == 32 and res["policy"] == "compressor_vla"
    assert res["max_episode_steps"] == 3 and res["success_rate"] == 0.0
    assert eps[0]["final_state"] != eps[1]["final_state"]  # two different official initial states
    assert [p.name for p in videos.iterdir()] == ["libero_object_task0_init00.mp4"] and "video" not in eps[1]
    with av.open(str(videos / "libero_object_task0_init00.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4  # the 3 observations acted on + the last one
    assert frames[0].shape == (16 + 32 * 8, 2 * 32 * 8, 3)  # caption + agentview | wrist at 8x
    body = frames[1][16:].astype(int)
    green = (body[..., 1] > 200) & (body[..., 0] < 120) & (body[..., 2] < 120)
    assert green.sum() > 500  # the kept-token boxes survive the H.264 encoding


@pytest.mark.slow
def test_parallel_environments_give_the_sequential_results(trained_run):
    from medvtc.robotics.rollout import load_policy, run_rollouts

    policy, pre, post = load_policy(trained_run, device="cpu")
    kw = dict(suite="libero_object", task_ids=[0], episodes=2, max_episode_steps=3, progress=False)
    serial = run_rollouts(policy, pre, post, **kw)
    parallel = run_rollouts(policy, pre, post, num_envs=2, checkpoint=trained_run / "final", device="cpu", **kw)
    assert parallel["num_envs"] == 2
    for a, b in zip(serial["tasks"][0]["episodes"], parallel["tasks"][0]["episodes"], strict=True):
        assert (a["init_state_id"], a["steps"], a["success"]) == (b["init_state_id"], b["steps"], b["success"])
        assert a["final_state"] == b["final_state"]  # same policy, same init state: the same episode
    with pytest.raises(ValueError, match="needs `checkpoint`"):
        run_rollouts(policy, pre, post, num_envs=2, **kw)


def test_rollout_bad_input_exits_2_with_a_clear_message_and_no_output(trained_run, tmp_path, capsys):
    out_json, videos = tmp_path / "r.json", tmp_path / "v"
    base = ["rollout", "--task", "libero", "--checkpoint", str(trained_run), "-o", str(out_json),
            "--video-dir", str(videos)]
    other = tmp_path / "diffusion"
    (other / "final").mkdir(parents=True)
    (other / "final" / "config.json").write_text(json.dumps({"type": "diffusion"}))
    cases = [
        ([*base, "--suite", "libero_objekt"], "unknown LIBERO suite 'libero_objekt'; valid suites: libero_spatial, libero_object"),
        ([*base, "--tasks", "0,12"], "task id 12 is not in suite 'libero_object': valid ids are 0..9"),
        ([*base, "--episodes", "0"], "episodes must be >= 1"),
        ([*base, "--num-envs", "0"], "num_envs must be >= 1"),
        ([*base[:4], str(other), *base[5:]], "holds a 'diffusion' model, not a LIBERO policy"),
        ([*base[:4], str(tmp_path / "missing"), *base[5:]], "does not exist"),
        (["rollout", "--task", "libero", "--checkpoint", str(trained_run), "--video-episodes", "2"], "needs --video-dir"),
        (["rollout", "--task", "compressors", "--checkpoint", str(trained_run)],
         "task 'compressors' has no 'rollout' command; it supports: train, eval, bench, data"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    with pytest.raises(SystemExit) as e:
        main([*base, "--tasks", "zero"])
    assert e.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
    assert not out_json.exists() and not videos.exists()


def test_a_policy_for_another_robot_is_refused():
    from lerobot.configs.types import FeatureType, PolicyFeature

    from medvtc.robotics.rollout import policy_cameras
    from tests.robotics.test_compressor_vla_policy import tiny_config

    assert policy_cameras(tiny_config()) == ("agentview", "wrist")
    cfg = tiny_config(input_features={"observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
                                      "observation.state": PolicyFeature(FeatureType.STATE, (14,))})
    with pytest.raises(UserError, match=r"image inputs \['observation.images.top'\].*\(14,\) state"):
        policy_cameras(cfg)


# ------------------------------------------------------------------------------------------- ACT


def test_act_peer_trains_one_step_and_loads_for_rollouts(recorded_demos, tmp_path):
    from lerobot.policies.act.modeling_act import ACTPolicy

    from medvtc.robotics.policy_cost import visual_tokens
    from medvtc.robotics.rollout import load_policy, policy_cameras

    root, _ = recorded_demos
    task = LiberoTask()
    cfg = task.load_config(None, overrides(root, tmp_path / "act", "policy.name=act", TINY_ACT, "train.max_steps=1"))
    fresh, _, _, _ = task.build(cfg, "cpu")
    assert isinstance(fresh, ACTPolicy) and fresh.config.pretrained_backbone_weights is None
    assert (fresh.config.chunk_size, fresh.config.n_action_steps, fresh.config.dim_model) == (4, 2, 32)
    assert visual_tokens(fresh) == (2, 2)  # ResNet-18 at stride 32: one cell per 32 px camera
    before = {k: v.clone() for k, v in fresh.state_dict().items()}

    assert task.train(cfg) == 0  # one optimiser step with the shared trainer
    final = tmp_path / "act" / "final"
    assert json.loads((final / "config.json").read_text())["type"] == "act"
    assert json.loads((final / "medvtc_tokens.json").read_text()) == {
        "visual_tokens": 2, "uncompressed_tokens": 2, "compressor": "act"}
    with open(tmp_path / "act" / "metrics.csv") as f:
        logged = {(r["split"], r["metric"]): float(r["value"]) for r in csv.DictReader(f)}
    assert np.isfinite(logged["train", "loss"]) and logged["train", "l1_loss"] > 0 and ("train", "kld_loss") in logged
    policy, pre, post = load_policy(tmp_path / "act", device="cpu")
    assert isinstance(policy, ACTPolicy) and policy_cameras(policy.config) == ("agentview", "wrist")
    after = policy.state_dict()
    changed = [k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])]
    assert changed  # the step moved the weights
    obs = {"observation.images.image": torch.rand(3, 32, 32), "observation.images.image2": torch.rand(3, 32, 32),
           "observation.state": torch.zeros(8), "task": "pick up the alphabet soup"}
    assert post(policy.select_action(pre(obs))).shape == (1, 7)

    with pytest.raises(ConfigError, match="'dim_modle' is not an ACTConfig field.*dim_model"):
        task.build(task.load_config(None, overrides(root, tmp_path / "x", "policy.name=act",
                                                    "policy.act_args={dim_modle: 8}")), "cpu")


# ----------------------------------------------------------------------------------------- bench


def test_bench_trains_rolls_out_and_costs_each_variant(recorded_demos, tmp_path, monkeypatch, capsys):
    root, _ = recorded_demos
    task = LiberoTask()
    results = tmp_path / "results"
    bench = [f"bench.output_dir={tmp_path / 'bench'}", "bench.variants=[none, compressor_vla]", "bench.tasks=[0]",
             "bench.episodes=2", "bench.max_episode_steps=5", "bench.latency_repeats=2", "bench.latency_warmup=1"]
    cfg = task.load_config(None, overrides(root, tmp_path / "unused", "train.max_steps=2", *bench))
    task.check_command("bench")
    assert task.bench(cfg, str(results)) == 0
    assert sorted(p.name for p in results.iterdir()) == ["libero.json", "libero.md", "libero.png"]  # no partials left
    doc = json.loads((results / "libero.json").read_text())
    rows = {r["method"]: r for r in doc["rows"]}
    assert list(rows) == ["none", "compressor_vla"]
    none, cv = rows["none"], rows["compressor_vla"]
    assert (none["tokens"], cv["tokens"]) == (32, 12)
    assert 0 < cv["flops"] < none["flops"] and cv["params"] > none["params"] > 0
    for r in (none, cv):
        m = r["metrics"]
        assert m["success_rate"] == 0.0 and m["success_task_0"] == 0.0 and m["run"] == "trained"
        # Wilson interval of 0 successes in 2 episodes; a per-task bootstrap interval
        assert m["success_rate_ci"][0] == 0.0 and m["success_rate_ci"][1] == pytest.approx(0.6576, abs=1e-3)
        assert m["success_task_0_ci"] == [0.0, 0.0]
        # the episodes themselves: task, official initial state, success, steps
        cases = r["cases"]["seed_0"]
        assert (cases["task"], cases["init_state"], cases["success"]) == ([0, 0], [0, 1], [0, 0])
        assert len(cases["steps"]) == 2 and all(1 <= n <= 5 for n in cases["steps"])
        assert m["n_action_steps"] == 2 and m["chunk_latency_ms"] == pytest.approx(2 * r["latency_ms"], rel=1e-3)
        assert m["gflops_per_action"] == pytest.approx(r["flops"] / 2e9, abs=1e-4) and r["peak_mem_mb"] >= 0
        run_dir = tmp_path / "bench" / r["method"] / "seed_0"
        assert (run_dir / "final" / "model.safetensors").is_file() and (run_dir / "bench_eval.json").is_file()
        logged = read_training_summary(run_dir)
        assert logged["steps"] == 2 and m["train_s"] >= 0
        assert m["train_loss"] == round(logged["train_loss"], 4) and m["train_loss"] > 0  # from the run's own log
    # paired over the same episodes: the difference to none (both failed every episode)
    assert cv["metrics"]["success_rate_diff"] == 0.0 and cv["metrics"]["success_rate_diff_ci"] == [0.0, 0.0]
    assert "success_rate_diff_ci" not in none["metrics"]
    assert cv["metrics"]["tokens_vs_none"] == pytest.approx(12 / 32, abs=1e-4)
    assert cv["metrics"]["flops_vs_none"] == pytest.approx(cv["flops"] / none["flops"], abs=1e-4)
    assert doc["config"]["variants"]["compressor_vla"]["compressor"] == "compressor_vla"
    assert doc["config"]["bench"]["episodes"] == 2 and doc["config"]["reference"] == "none"
    md = (results / "libero.md").read_text()
    assert "| none | 32 |" in md and "| compressor_vla | 12 |" in md
    assert "visual tokens: 12 vs 32, 2.67x fewer (target >= 3x): not met" in md
    assert "compressed policy step:" in md and "(target < 50 ms, 20 Hz): met" in md
    assert "the success comparison is not meaningful" in md  # 2 training steps solve nothing
    # where each chunk's time goes (in the json, and one line under the targets instead of table columns)
    stages = {k: v for k, v in cv["metrics"].items() if k.startswith("latency_stage_")}
    assert sorted(stages) == [f"latency_stage_{n}_ms" for n in ("compress", "head", "images", "text")]
    assert all(v >= 0 for v in stages.values()) and "latency_stage_" not in md.split("Columns:")[0]
    assert f"{cv['metrics']['latency_vs_none']:.2f}x (target <= 0.5x)" in md
    assert "by stage, ms (text / images / compress / head)" in md and "a compressor costing nothing" in md
    assert "Paired differences to none" in md

    # A second run reuses the trained policies and their rollouts: no training at all.
    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(task, "train", no_training)
    capsys.readouterr()
    assert task.bench(cfg, str(results)) == 0
    assert capsys.readouterr().out.count("reusing the evaluation") == 2
    doc2 = json.loads((results / "libero.json").read_text())
    assert [r["metrics"]["run"] for r in doc2["rows"]] == ["reused", "reused"]
    # the training time and loss of a reused run are those recorded when it was trained
    for key in ("train_s", "train_loss"):
        assert [r["metrics"][key] for r in doc2["rows"]] == [r["metrics"][key] for r in doc["rows"]]
    assert [r["tokens"] for r in doc2["rows"]] == [32, 12]
    # ... but not one trained with another budget: refused by name, or trained again with --retrain
    longer = task.load_config(None, overrides(root, tmp_path / "unused", "train.max_steps=3", *bench,
                                              "bench.variants=[none]"))
    with pytest.raises(UserError, match=r"trained with other settings \(train.max_steps: 2 there, 3 now\); pass --retrain"):
        task.bench(longer, str(results))
    monkeypatch.undo()
    assert task.bench(longer, str(results), retrain=True) == 0
    doc3 = json.loads((results / "libero.json").read_text())
    assert [(r["method"], r["metrics"]["run"]) for r in doc3["rows"]] == [("none", "trained")]
    assert read_training_summary(tmp_path / "bench" / "none" / "seed_0")["steps"] == 3


def test_bench_variants_through_the_grammar(recorded_demos, tmp_path):
    """Every variant of policy_cost.VARIANTS resolves to the same policy through the bench's
    grammar (methods and named ablations) as through `variant_overrides`; method@budget pins
    the budget; ACT is the peer."""
    from medvtc.common.bench_runner import parse_variant
    from medvtc.robotics.bench import ABLATIONS, LiberoBench
    from medvtc.robotics.policy_cost import VARIANTS, variant_overrides
    from medvtc.robotics.task import DEFAULT_BENCH_VARIANTS

    root, _ = recorded_demos
    task = LiberoTask()
    cfg = task.load_config(None, overrides(root, tmp_path / "unused", f"bench.output_dir={tmp_path / 'b'}"))
    spec = LiberoBench(task, cfg)
    assert set(DEFAULT_BENCH_VARIANTS) == {*VARIANTS, "act", "replay"}

    def resolve(text):
        v = parse_variant(text, ABLATIONS, spec.methods)
        return spec.variant_config(cfg, v, 0, tmp_path / "b" / v.folder / "seed_0")

    match = spec.match_tokens(cfg)
    assert match == 6  # compressor_vla's tokens per camera on the 4 x 4 grid (2 STC + 4 SRC)
    p = cfg.policy
    for name in VARIANTS:
        want = variant_overrides(name, dict(p.compressor_args), p.budget, match)
        got = resolve(name).policy
        assert (got.name, got.compressor, got.budget, got.compressor_args) == (
            "compressor_vla", want["compressor"], want["compressor_budget"], want["compressor_args"]), name
    act = resolve("act")
    assert act.policy.name == "act" and act.seed == 0 and act.output_dir == str(tmp_path / "b" / "act" / "seed_0")
    pinned = resolve("pooling@5").policy
    assert (pinned.compressor, pinned.budget) == ("pooling", 5)
    assert resolve("visionzip").policy.budget == match  # any registered compressor, at the matched count
    with pytest.raises(UserError, match="unknown method 'pooling2'; valid: .*act, adaptive, compressor_vla"):
        parse_variant("pooling2", ABLATIONS, spec.methods)
    # ACT's settings leave out Compressor-VLA's keys and the other way round
    s_act, s_cv = spec.settings(to_dict(act)), spec.settings(to_dict(resolve("compressor_vla")))
    assert "policy.compressor" not in s_act and "policy.act_args" in s_act
    assert "policy.act_args" not in s_cv and "policy.compressor_args" in s_cv and "train.progress" not in s_cv
    # keys at their defaults that older runs did not have are left out; in use, they count
    assert not {"policy.freeze_backbone", "policy.image_size", "policy.cache_tokens", "policy.cache_views"} & set(s_cv)
    resized = replace(resolve("compressor_vla"), policy=replace(resolve("compressor_vla").policy, image_size=256))
    assert spec.settings(to_dict(resized))["policy.image_size"] == 256
    cached = replace(resolve("compressor_vla"), policy=replace(resolve("compressor_vla").policy, cache_tokens=True))
    assert {"policy.cache_tokens", "policy.cache_views"} <= set(spec.settings(to_dict(cached)))
    # the replay floor depends on the data only: no policy or training keys
    s_floor = spec.settings(to_dict(resolve("replay")))
    assert s_floor == {"seed": 0, "data.root": str(root), "policy.name": "replay"}
    assert not (tmp_path / "b").exists()  # configs only


def test_bench_replay_floor_row(recorded_demos, tmp_path):
    """The no-vision floor: its "training" keeps the first demonstration of each task, its
    rollouts replay it from the same official initial states as the policies, paired with them;
    it has no network to cost."""
    root, _ = recorded_demos
    task = LiberoTask()
    results = tmp_path / "results"
    bench = [f"bench.output_dir={tmp_path / 'bench'}", "bench.variants=[none, replay]", "bench.tasks=[0]",
             "bench.episodes=2", "bench.max_episode_steps=5", "bench.latency_repeats=2", "bench.latency_warmup=1"]
    cfg = task.load_config(None, overrides(root, tmp_path / "unused", "train.max_steps=1", *bench))
    assert task.bench(cfg, str(results)) == 0
    doc = json.loads((results / "libero.json").read_text())
    floor = {r["method"]: r for r in doc["rows"]}["replay"]
    assert floor["tokens"] == 0 and floor["params"] == 0 and math.isnan(floor["flops"])  # nothing to cost
    cases = floor["cases"]["seed_0"]
    assert (cases["task"], cases["init_state"]) == ([0, 0], [0, 1])  # the policies' episodes
    assert all(1 <= n <= 5 for n in cases["steps"])
    assert "success_rate_diff_ci" in floor["metrics"]  # paired with none over the same episodes
    final = tmp_path / "bench" / "replay" / "seed_0" / "final"
    assert (final / "replay.safetensors").is_file() and not (final / "model.safetensors").exists()
    md = (results / "libero.md").read_text()
    assert "### The no-vision floor" in md and "above the floor by the paired interval:" in md
    assert "uncompressed policy at >= 80.0 % (met only when its whole 95 % interval [0.0, 65.8] lies at or above it): missed" in md


def test_bench_config_is_checked_before_any_training(tmp_path):
    task = LiberoTask()
    with pytest.raises(ConfigError, match="variants must be a non-empty list without repeats"):
        task.load_config(None, ["bench.variants=[none, none]"])
    cfg = task.load_config(None, [f"bench.output_dir={tmp_path / 'b'}", "bench.variants=[none, pooling2]",
                                  f"data.root={tmp_path / 'no-data'}"])
    with pytest.raises(UserError, match="unknown method 'pooling2'"):
        task.bench(cfg, str(tmp_path / "out"))
    cfg = task.load_config(None, [f"bench.output_dir={tmp_path / 'b'}", "bench.tasks=[0, 10]"])
    with pytest.raises(ConfigError, match="task id 10 is not in suite 'libero_object'"):
        task.bench(cfg, str(tmp_path / "out"))
    assert not (tmp_path / "b").exists() and not (tmp_path / "out").exists()


def test_a_stopped_rollout_resumes_after_its_last_finished_episode(trained_run, tmp_path, monkeypatch):
    from medvtc.robotics import rollout
    from medvtc.robotics.rollout import load_policy, run_rollouts

    policy, pre, post = load_policy(trained_run, device="cpu")
    journal = tmp_path / "episodes.jsonl"
    kw = dict(suite="libero_object", task_ids=[0, 1], episodes=2, max_episode_steps=3, progress=False,
              checkpoint=trained_run / "final", journal=journal)
    real = rollout.run_episode
    calls = []

    def killed_after_three(*a, **k):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the session ends mid-evaluation
        calls.append(a[4])
        return real(*a, **k)

    monkeypatch.setattr(rollout, "run_episode", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_rollouts(policy, pre, post, **kw)
    assert len(journal.read_text().splitlines()) == 1 + 3  # the key, then one line per finished episode
    with open(journal, "a") as f:
        f.write('{"task": 1, "init_st')  # a line torn by the kill

    calls.clear()
    monkeypatch.setattr(rollout, "run_episode", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    resumed = run_rollouts(policy, pre, post, **kw)
    assert calls == [1] and resumed["resumed_episodes"] == 3  # only task 1's second episode ran
    # the same results as an evaluation never stopped
    monkeypatch.setattr(rollout, "run_episode", real)
    whole = run_rollouts(policy, pre, post, **{**kw, "journal": None})
    for t in (0, 1):
        for a, b in zip(resumed["tasks"][t]["episodes"], whole["tasks"][t]["episodes"], strict=True):
            assert (a["init_state_id"], a["steps"], a["success"], a["final_state"]) == \
                   (b["init_state_id"], b["steps"], b["success"], b["final_state"])
    assert resumed["success_rate"] == whole["success_rate"]

    # other settings (or other weights) make another key: every episode runs again
    calls.clear()
    monkeypatch.setattr(rollout, "run_episode", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    again = run_rollouts(policy, pre, post, **{**kw, "max_episode_steps": 4})
    assert len(calls) == 4 and again["resumed_episodes"] == 0
    with pytest.raises(ValueError, match="journal needs `checkpoint`"):
        run_rollouts(policy, pre, post, **{**kw, "checkpoint": None})


def test_steps_inside_an_action_chunk_render_nothing_and_change_nothing(trained_run):
    from medvtc.robotics.libero_env import LiberoEnv
    from medvtc.robotics.rollout import load_policy, run_episode

    policy, pre, post = load_policy(trained_run, device="cpu")
    assert policy.config.n_action_steps == 2
    env = LiberoEnv("libero_object", 0, camera_size=32, cameras=("agentview", "wrist"), max_episode_steps=7)
    rendered = []
    real = env._render_camera
    env._render_camera = lambda cam: rendered.append(cam) or real(cam)
    try:
        every = run_episode(env, policy, pre, post, 0, seed=3, render_every_step=True)
        n_every = len(rendered)
        rendered.clear()
        lazy = run_episode(env, policy, pre, post, 0, seed=3)
    finally:
        env.close()
    assert every["steps"] == lazy["steps"] == 7
    assert (every["success"], every["final_state"]) == (lazy["success"], lazy["final_state"])  # the same episode
    assert n_every == 2 * (7 + 1)  # both cameras at the reset and after every step
    # the policy reads the observations of steps 0, 2, 4 and 6: rendered at the reset and for those steps
    assert len(rendered) == 2 * 4 and not env.skip_cameras
