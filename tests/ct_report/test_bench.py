"""The ct-report bench's input-size variants (issue 18, the Argus experiment: full resolution +
compression against downsampled input at equal LM visual tokens): the variant grammar, token
counts at both resolutions and budgets, the shared stages keyed by input size, the per-label F1
statistics, the verdict from the paired interval, and a tiny bench end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medvtc.common.bench_runner import BenchSpec, parse_variant
from medvtc.common.errors import UserError
from medvtc.common.results import ResultRow
from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS
from medvtc.medical.ct_report.bench import (
    CTReportBench,
    per_label_markdown,
    resolution_comparison,
    resolution_markdown,
    resolution_pairs,
    resolution_verdict,
)
from medvtc.medical.ct_report.evaluation import SMALL_FINDINGS, case_statistics, label_key
from medvtc.tasks import get_task

# tiny sizes: the bench reads 16x16x8 (4x4x2 patches: 64 ViT tokens); the phantom is written at 32x32x16 (512)
TINY = [
    "data.num_train=8", "data.num_val=2", "data.num_test=3", "data.phantom_shape=[32,32,16]",
    "data.spatial_size=[16,16,8]", "model.patch_size=[4,4,2]", "model.vision_hidden_size=32", "model.vision_layers=1",
    "model.vision_heads=2", "model.vision_mlp_dim=64", "model.budget=8", "model.lm_hidden_size=32", "model.lm_layers=1",
    "model.lm_heads=2", "model.lm_intermediate_size=64", "model.vocab_size=300", "stages.vision_steps=2",
    "stages.vision_batch_size=2", "stages.align_steps=2", "train.max_steps=2", "train.batch_size=2", "train.save_every=2",
    "train.progress=false", "generation.max_new_tokens=8",
]


def spec_and_config(*overrides: str):
    task = get_task("ct-report")
    return task, CTReportBench(task), task.load_config(None, list(overrides))


def vcfg_of(spec, cfg, name: str, tmp: Path = Path("/tmp/unused")):
    v = parse_variant(name, spec.ablations, spec.methods)
    return spec.variant_config(cfg, v, 0, tmp / v.folder / "seed_0")


# ---------------------------------------------------------------------------- variants, token counts


def test_full_resolution_and_downsampled_variants_at_the_issues_sizes():
    """Default config: 64x64x32 -> 512 ViT tokens, 128x128x64 -> 4096, pixel-shuffled to 64 or
    256 LM tokens (512 for the pair with the uncompressed downsampled model); the full-resolution
    family's shared stages live in their own folder and its volumes are not cached in memory."""
    from medvtc.medical.ct_report.configuration_ct_report import CTReportConfig

    _, spec, cfg = spec_and_config()
    assert tuple(cfg.data.spatial_size) == (64, 64, 32) and tuple(cfg.data.phantom_shape) == (128, 128, 64)
    expected = {"none": ((64, 64, 32), 512, 512), "pixel_shuffle@64": ((64, 64, 32), 512, 64),
                "pixel_shuffle@256": ((64, 64, 32), 512, 256),
                "128x128x64/pixel_shuffle@64": ((128, 128, 64), 4096, 64),
                "128x128x64/pixel_shuffle@256": ((128, 128, 64), 4096, 256),
                "128x128x64/pixel_shuffle@512": ((128, 128, 64), 4096, 512),
                "128x128x64/none": ((128, 128, 64), 4096, 4096)}
    base_shared = str(Path(cfg.bench.output_dir) / "shared" / "seed_0")
    for name, (size, vit, lm) in expected.items():
        vcfg = vcfg_of(spec, cfg, name)
        c = CTReportConfig(image_size=tuple(vcfg.data.spatial_size), patch_size=tuple(vcfg.model.patch_size),
                           compressor=vcfg.model.compressor, compressor_budget=vcfg.model.budget, vocab_size=300)
        assert (tuple(vcfg.data.spatial_size), c.num_patches, c.num_visual_tokens) == (size, vit, lm), name
        full = size == (128, 128, 64)
        assert vcfg.stages.shared_dir == (str(Path(base_shared) / "input_128x128x64") if full else base_shared), name
        assert vcfg.data.cache is (not full), name
        assert spec.input_sizes[name] == size
    assert parse_variant("128x128x64/pixel_shuffle@64", spec.ablations, spec.methods).folder == "128x128x64_pixel_shuffle_64"


def test_a_smaller_input_is_keyed_too_but_stays_cached_and_a_set_shared_dir_is_nested(tmp_path):
    _, spec, cfg = spec_and_config(f"stages.shared_dir={tmp_path / 's'}")
    small = vcfg_of(spec, cfg, "32x32x16/pooling@8")
    assert small.stages.shared_dir == str(tmp_path / "s" / "input_32x32x16") and small.data.cache is True
    assert vcfg_of(spec, cfg, "pooling@8").stages.shared_dir == str(tmp_path / "s")
    same = vcfg_of(spec, cfg, "64x64x32/pooling@8")  # the bench's own size: its shared folder
    assert same.stages.shared_dir == str(tmp_path / "s") and same.data.cache is True


@pytest.mark.parametrize("name, words", [
    ("128x128x64/pixle_shuffle@64", ["128x128x64/pixle_shuffle@64", "unknown method 'pixle_shuffle'", "pixel_shuffle"]),
    ("100x100x50/pixel_shuffle@64", ["100x100x50", "not divisible", "patch_size"]),
    ("128x128x64/pixel_shuffle@7", ["128x128x64/pixel_shuffle@7", "nearest achievable"]),
    ("128x128x64/pooling@x", ["budget 'x' is not a number"]),
])
def test_bad_input_size_variants_are_refused_naming_the_entry(name, words):
    _, spec, cfg = spec_and_config()
    with pytest.raises(UserError) as e:
        vcfg_of(spec, cfg, name)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_token_counts_through_the_model_at_both_inputs(tmp_path):
    """The ViT's positions and token count follow the input: the same config at 16x16x8 (64 ViT
    tokens) and 32x32x16 (512), each compressed to 8 and to 64 LM tokens by pixel shuffle."""
    from medvtc.medical.ct_report.tokenizer import train_report_tokenizer

    task, spec, cfg = spec_and_config(f"data.root={tmp_path}", *TINY)
    tok = train_report_tokenizer(["no pleural effusion.", "a lung nodule."] * 8, vocab_size=300)
    for name, vit, lm in (("pixel_shuffle@8", 64, 8), ("32x32x16/pixel_shuffle@8", 512, 8),
                          ("32x32x16/pixel_shuffle@64", 512, 64), ("none", 64, 64)):
        vcfg = vcfg_of(spec, cfg, name, tmp_path)
        model = task.build_model(vcfg, tok)
        assert model.vision_encoder.num_patches == vit and model.vision_encoder.patch_embedding.position_embeddings.shape[1] == vit
        with torch.no_grad():
            embeds, info = model.encode_images(torch.rand(1, model.config.in_channels, *vcfg.data.spatial_size))
        assert embeds.shape[1] == lm == info["num_visual_tokens"], name


# ------------------------------------------------------------------------------ per-label F1


def test_per_label_f1_statistics():
    stats = case_statistics()
    assert all(label_key(x) in stats for x in CT_RATE_LABELS) and label_key("Lung nodule") == "f1_lung_nodule"
    assert label_key("Interlobular septal thickening") == "f1_interlobular_septal_thickening"
    j = CT_RATE_LABELS.index("Lung nodule")
    true = np.zeros((6, 18), dtype=int)
    pred = np.zeros((6, 18), dtype=int)
    true[:4, j] = 1  # 4 present; predicted on 2 of them and on 1 absent: TP 2, FP 1, FN 2
    pred[[0, 1, 5], j] = 1
    cases = {"pred_labels": pred, "true_labels": true}
    assert stats["f1_lung_nodule"].statistic(cases) == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert math.isnan(stats["f1_bronchiectasis"].statistic(cases))  # neither present nor predicted: undefined
    # the small findings' mean is over the defined ones only (here lung nodule alone)
    assert stats["small_findings_f1"].statistic(cases) == pytest.approx(4 / 7)
    k = CT_RATE_LABELS.index("Lymphadenopathy")
    true[0, k] = 1  # present, never predicted: F1 0
    assert stats["small_findings_f1"].statistic(cases) == pytest.approx((4 / 7 + 0) / 2)
    assert set(SMALL_FINDINGS) <= set(CT_RATE_LABELS) and len(SMALL_FINDINGS) == 4


# --------------------------------------------------------------------------- the verdict


def test_resolution_verdict_from_the_interval():
    assert resolution_verdict([0.01, 0.2]) == "beats"
    assert resolution_verdict([-0.2, -0.01]) == "worse"
    assert resolution_verdict([-0.05, 0.1]) == "no difference shown"
    assert resolution_verdict([0.0, 0.1]) == "no difference shown"  # touching 0 is not beating it
    assert resolution_verdict(None) == resolution_verdict([None, 0.1]) == resolution_verdict([math.nan, 1]) == "no interval"


def _cases(true: np.ndarray, pred: np.ndarray) -> dict[str, list]:
    return {"volume": [f"v{i}" for i in range(len(true))], "pred_labels": pred.tolist(), "ref_labels": true.tolist(),
            "true_labels": true.tolist()}


def _rows(predictions: dict[str, np.ndarray], true: np.ndarray, tokens: dict[str, int], seeds=(0,)) -> list[ResultRow]:
    """Rows as the runner makes them (intervals from the per-case columns, cases kept)."""
    from medvtc.common.bench_runner import add_intervals
    from medvtc.common.intervals import as_columns

    class Spec(BenchSpec):  # the headline metrics and a few labels: every label would only take longer
        reference = None
        statistics = {k: v for k, v in case_statistics().items() if k in (
            "clinical_micro_f1", "label_micro_f1", "small_findings_f1", "f1_cardiomegaly", *map(label_key, SMALL_FINDINGS))}

    rows = [ResultRow(name, tokens[name], 1.0, 1, 1.0, 1.0, {"vit_tokens": 4096 if name.startswith("big") else 512})
            for name in predictions]
    cases = {name: [as_columns(_cases(true, p)) for _ in seeds] for name, p in predictions.items()}
    add_intervals(Spec(), rows, cases)
    for r in rows:
        r.cases = {f"seed_{s}": _cases(true, predictions[r.method]) for s in seeds}
    return rows


def test_the_comparison_pairs_equal_budgets_and_states_what_the_interval_says():
    """Synthetic paired results: the full-resolution variant finds the small findings the
    downsampled one misses (beats), a second pair is the other way round (worse), a third is
    identical (no difference shown); rows at other budgets or of unknown input are not paired."""
    rng = np.random.default_rng(0)
    n = 60
    true = (rng.random((n, 18)) < 0.3).astype(int)
    small = [CT_RATE_LABELS.index(x) for x in SMALL_FINDINGS]
    good = true.copy()
    bad = true.copy()
    bad[:, small] = 1 - true[:, small]  # every small finding wrong
    preds = {"big/ps@64": good, "ps@64": bad, "big/ps@256": bad, "ps@256": good, "big/ps@8": good, "ps@8": good,
             "pooling@64": good, "other@32": good}
    tokens = {"big/ps@64": 64, "ps@64": 64, "big/ps@256": 256, "ps@256": 256, "big/ps@8": 8, "ps@8": 8,
              "pooling@64": 64, "other@32": 32}
    sizes = {k: ((128, 128, 64) if k.startswith("big") else (64, 64, 32)) for k in preds if k != "pooling@64"}
    rows = _rows(preds, true, tokens)
    pairs = [(a.method, b.method) for a, b in resolution_pairs(rows, sizes)]
    assert pairs == [("big/ps@8", "ps@8"), ("big/ps@64", "ps@64"), ("big/ps@256", "ps@256")]

    res = resolution_comparison(rows, sizes, case_statistics())
    by = {p["full"]: p for p in res["pairs"]}
    assert by["big/ps@64"]["verdict"] == "beats" and by["big/ps@64"]["metric"] == "label_micro_f1"
    assert by["big/ps@256"]["verdict"] == "worse" and by["big/ps@8"]["verdict"] == "no difference shown"
    m = by["big/ps@64"]["metrics"]
    assert m["small_findings_f1"]["verdict"] == "beats" and m["f1_lung_nodule"]["verdict"] == "beats"
    assert m["f1_cardiomegaly"]["verdict"] == "no difference shown" and m["f1_cardiomegaly"]["diff"] == 0
    lo, hi = m["label_micro_f1"]["diff_ci"]
    assert 0 < lo <= m["label_micro_f1"]["diff"] <= hi
    assert by["big/ps@64"]["full_vit_tokens"] == 4096 and by["big/ps@64"]["downsampled_input"] == [64, 64, 32]

    md = resolution_markdown(res)
    assert "**64 LM tokens**" in md and "full resolution + compression vs downsampled, on label_micro_f1: **beats**" in md
    assert "**worse**" in md and "**no difference shown**" in md and "| Lung nodule * |" in md
    table = per_label_markdown(rows)
    assert "| Lung nodule * |" in table and "mean of the small findings" in table and "big/ps@64" in table
    assert resolution_comparison(rows, {"ps@64": (64, 64, 32)}, case_statistics()) is None  # nothing to pair
    assert resolution_markdown(None) == ""


def test_the_verdict_follows_the_data_not_the_names():
    """The same rows with the inputs swapped: the verdict flips (nothing is hard-coded)."""
    rng = np.random.default_rng(1)
    true = (rng.random((50, 18)) < 0.3).astype(int)
    worse = true.copy()
    worse[:25] = 1 - worse[:25]
    rows = _rows({"a": true, "b": worse}, true, {"a": 64, "b": 64}, seeds=(0, 1))
    big_a = resolution_comparison(rows, {"a": (32, 32, 16), "b": (16, 16, 8)}, case_statistics())
    big_b = resolution_comparison(rows, {"a": (16, 16, 8), "b": (32, 32, 16)}, case_statistics())
    assert big_a["pairs"][0]["verdict"] == "beats" and big_b["pairs"][0]["verdict"] == "worse"
    d = big_a["pairs"][0]["metrics"]["label_micro_f1"]
    assert d["diff"] == pytest.approx(-big_b["pairs"][0]["metrics"]["label_micro_f1"]["diff"])


# ------------------------------------------------------------------------------- end to end


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medvtc", *args], capture_output=True, text=True, cwd=cwd)


def test_bench_with_a_full_resolution_variant_end_to_end(tmp_path):
    """A tiny bench: pixel_shuffle@8 reads 16x16x8 (64 ViT tokens), 32x32x16/pixel_shuffle@8 the
    phantom at its full 32x32x16 (512 ViT tokens), both 8 LM tokens. Each input size trains its
    own vision stage in its own shared folder; rows carry per-label F1 with intervals; the json's
    config and the markdown state the verdict; bench.name names the files."""
    common = [f"data.root={tmp_path / 'data'}", *TINY]
    r = cli("data", "--task", "ct-report", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "results"
    bench = [*common, f"bench.output_dir={tmp_path / 'bench'}", "bench.variants=[pixel_shuffle@8,32x32x16/pixel_shuffle@8]",
             "bench.scale=false", "bench.throughput_steps=0", "bench.repeats=1", "bench.name=ct-report_resolution"]
    r = cli("bench", "--task", "ct-report", *bench, "--output", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    shared = tmp_path / "bench" / "shared" / "seed_0"
    for folder, size in ((shared, [16, 16, 8]), (shared / "input_32x32x16", [32, 32, 16])):
        done = json.loads((folder / "stage_vision" / "done.json").read_text())
        assert done["fingerprint"]["preprocessing"]["spatial_size"] == size
        assert (folder / "token_cache").is_dir()
    doc = json.loads((out / "ct-report_resolution.json").read_text())
    assert doc["task"] == "ct-report_resolution" and not (out / "ct-report.json").exists()
    rows = {row["method"]: row for row in doc["rows"]}
    full, down = rows["32x32x16/pixel_shuffle@8"], rows["pixel_shuffle@8"]
    assert (full["tokens"], full["metrics"]["vit_tokens"], full["metrics"]["input"]) == (8, 512, "32x32x16")
    assert (down["tokens"], down["metrics"]["vit_tokens"], down["metrics"]["input"]) == (8, 64, "16x16x8")
    for row in (full, down):
        for x in CT_RATE_LABELS:
            assert label_key(x) in row["metrics"] and f"{label_key(x)}_ci" in row["metrics"], x
        assert "small_findings_f1" in row["metrics"]
    (pair,) = doc["config"]["resolution"]["pairs"]
    assert (pair["full"], pair["downsampled"], pair["lm_tokens"]) == ("32x32x16/pixel_shuffle@8", "pixel_shuffle@8", 8)
    assert pair["verdict"] in ("beats", "worse", "no difference shown")
    head = pair["metrics"][pair["metric"]]
    assert head["verdict"] == resolution_verdict(head["diff_ci"])
    md = (out / "ct-report_resolution.md").read_text()
    assert f"on {pair['metric']}: **{pair['verdict']}**" in md and "### Per-label F1" in md
    main_table = md.split("\n\n")[2]
    assert "f1_lung_nodule" not in main_table and "input" in main_table  # per-label F1 in its own table

    # a second run reuses both variants and both shared folders
    r = cli("bench", "--task", "ct-report", *bench, "--output", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "medvtc bench: training" not in r.stdout and r.stdout.count("reusing the evaluation") == 2
