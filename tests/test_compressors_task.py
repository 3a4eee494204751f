"""The compressors task: token-grid data (generator and reader), training, eval and bench."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medvtc.common.errors import UserError
from medvtc.compression.bench import run_benchmark
from medvtc.compression.task import CompressorBenchConfig
from medvtc.compression.token_grids import TokenGridDataset, TokenGridSpec, generate_token_grids

SPEC = TokenGridSpec(grid=(8, 8), dim=16, text_dim=8, num_classes=3, num_train=12, num_val=4, num_test=4, seed=1)


def test_generator_is_deterministic_and_readable(tmp_path):
    a = generate_token_grids(tmp_path / "a", SPEC)
    b = generate_token_grids(tmp_path / "b", SPEC)
    da, db = TokenGridDataset(a, "train"), TokenGridDataset(b, "train")
    assert len(da) == 12 and da.grid == (8, 8)
    for key in ("tokens", "labels", "text", "text_mask", "target"):
        assert torch.equal(da.arrays[key], db.arrays[key])
    item = da[0]
    assert item["tokens"].shape == (64, 16) and item["text"].shape == (4, 8)
    # The instruction names a class present in the scene.
    for i in range(len(da)):
        assert (da.arrays["labels"][i] == da.arrays["target"][i]).any()
    other = generate_token_grids(tmp_path / "c", TokenGridSpec(**{**SPEC.__dict__, "seed": 2}))
    assert not torch.equal(TokenGridDataset(other, "train").arrays["tokens"], da.arrays["tokens"])


def test_generator_never_overwrites(tmp_path):
    generate_token_grids(tmp_path / "a", SPEC)
    with pytest.raises(UserError, match="already exists"):
        generate_token_grids(tmp_path / "a", SPEC)


def test_reader_errors_name_the_file(tmp_path):
    root = generate_token_grids(tmp_path / "a", SPEC)
    with pytest.raises(UserError, match="meta.json"):
        TokenGridDataset(tmp_path, "train")
    save_file({"tokens": torch.zeros(3, 10, 16)}, str(root / "train.safetensors"))
    with pytest.raises(UserError, match=r"train.safetensors.*must be \[M, 64, 16\]"):
        TokenGridDataset(root, "train")
    bad = torch.zeros(3, 64, 16)
    bad[1, 2, 3] = float("nan")
    save_file({"tokens": bad}, str(root / "train.safetensors"))
    with pytest.raises(UserError, match="NaN"):
        TokenGridDataset(root, "train")
    (root / "val.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="val.safetensors"):
        TokenGridDataset(root, "val")
    save_file({"embeddings": torch.zeros(2, 64, 16)}, str(root / "test.safetensors"))
    with pytest.raises(UserError, match="no 'tokens'"):
        TokenGridDataset(root, "test")
    meta = json.loads((root / "meta.json").read_text())
    meta["format"] = "other"
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="format"):
        TokenGridDataset(root, "train")


def test_train_then_eval_from_the_command_line(tmp_path):
    data = generate_token_grids(tmp_path / "tg", SPEC)
    out = tmp_path / "run"
    common = [f"data.root={data}", f"output_dir={out}", "model.budget=16"]
    r = subprocess.run([sys.executable, "-m", "medvtc", "train", "--task", "compressors", *common,
                        "train.max_steps=6", "train.batch_size=4", "train.save_every=3", "train.eval_every=3",
                        "train.progress=false"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "recon_r2=" in r.stdout
    assert (out / "final" / "model.safetensors").is_file() and (out / "config.yaml").is_file()
    r = subprocess.run([sys.executable, "-m", "medvtc", "eval", "--task", "compressors", "--checkpoint", str(out),
                        f"data.root={data}"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "test split" in r.stdout and "recon_r2=" in r.stdout


def test_benchmark_writes_every_method_and_checks_references(tmp_path):
    cfg = CompressorBenchConfig(methods=["identity", "random", "pooling", "divprune", "floc", "stc"],
                                grids=[[8, 8], [4, 4, 4]], dim=16, text_dim=8, batches=[1, 2],
                                budgets=[0.5, 0.25], repeats=1, warmup=0, max_seconds=30.0,
                                target_grid=[4, 4, 4], target_budget=16)
    paths = run_benchmark(cfg, tmp_path, log=lambda s: None)
    doc = json.loads(paths["json"].read_text())
    methods = {r["method"] for r in doc["rows"]}
    assert {"identity", "random", "pooling", "divprune", "floc", "stc", "divprune[reference]", "floc[reference]"} <= methods
    for row in doc["rows"]:
        assert row["flops"] >= 0 and row["latency_ms"] > 0 and row["tokens"] >= 1
    pooled = [r for r in doc["rows"] if r["method"] == "pooling" and r["metrics"]["grid"] == "8x8" and r["metrics"]["batch"] == 1]
    assert sorted(r["tokens"] for r in pooled) == [16, 32]
    for r in pooled:  # per-scene means over info_batch (8) scenes with their bootstrap interval
        m = r["metrics"]
        assert m["info_scenes"] == 8 and len(r["cases"]["seed_0"]["coverage"]) == 8
        assert 0.0 <= m["coverage_ci"][0] <= m["coverage"] <= m["coverage_ci"][1] <= 1.0
        assert m["nearest_kept_ci"][0] <= m["nearest_kept"] <= m["nearest_kept_ci"][1]
        assert m["coverage"] == pytest.approx(float(np.mean(r["cases"]["seed_0"]["coverage"])))
    assert not any("coverage" in r["metrics"] for r in doc["rows"] if r["metrics"].get("batch") == 2)
    assert "nearest_kept" not in next(r for r in doc["rows"] if r["method"] == "stc")["metrics"]
    assert not list(tmp_path.glob("compressors.partial.*")), "a finished run removes its partial results"
    targets = doc["config"]["targets"]
    assert targets["divprune"]["same_output"] is True and targets["floc"]["same_output"] is True


def test_benchmark_methods_take_the_variant_grammar(tmp_path):
    small = dict(grids=[[8, 8]], dim=16, text_dim=8, batches=[1], budgets=[0.5, 0.25], repeats=1, warmup=0,
                 max_seconds=30.0, target_grid=[4, 4, 4], target_budget=16)
    cfg = CompressorBenchConfig(methods=["pooling@0.25", "random", "divprune@8"], **small)
    doc = json.loads(run_benchmark(cfg, tmp_path, log=lambda s: None)["json"].read_text())
    budgets = {}
    for r in doc["rows"]:
        budgets.setdefault(r["method"], []).append(r["metrics"]["budget"])
    # a pinned budget is the method's only one (its reference too); the others take bench.budgets
    assert budgets == {"pooling": [0.25], "random": [0.25, 0.5], "divprune": [8], "divprune[reference]": [8]}
    assert [r["tokens"] for r in doc["rows"] if r["method"] == "divprune"] == [8]
    # intervals only on the information-kept measures (not on speed or memory)
    assert {k for r in doc["rows"] for k in r["metrics"] if k.endswith("_ci")} == {"nearest_kept_ci", "coverage_ci"}
    for methods, message in ((["pooling2"], "unknown method 'pooling2'; valid: adaptive, compressor_vla"),
                             (["pooling@x"], "budget 'x' is not a number"),
                             (["random", "random"], "lists a method twice")):
        with pytest.raises(UserError, match=message):
            run_benchmark(CompressorBenchConfig(methods=methods, **small), tmp_path / "bad", log=lambda s: None)
    assert not (tmp_path / "bad").exists()


def test_bench_from_the_command_line_accepts_retrain(tmp_path):
    """`--retrain` is every bench's flag; this one trains nothing, so it changes nothing."""
    from medvtc.cli import main

    args = ["bench", "--task", "compressors", "bench.methods=[identity, pooling@0.5]", "bench.grids=[[4, 4]]",
            "bench.batches=[1]", "bench.dim=8", "bench.text_dim=4", "bench.repeats=1", "bench.warmup=0",
            "bench.references=false", "--output", str(tmp_path), "--retrain"]
    assert main(args) == 0
    rows = json.loads((tmp_path / "compressors.json").read_text())["rows"]
    assert [(r["method"], r["tokens"]) for r in rows] == [("identity", 16), ("pooling", 8)]
