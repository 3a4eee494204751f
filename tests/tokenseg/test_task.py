"""The tokenseg task through the `medvtc` CLI (in-process `main`, as the entry point calls it):
data, train (TokenSeg and a MONAI network), eval, segment (files, folders, bad inputs, the
input's grid and header kept), and a tiny benchmark."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medvtc.cli import main

TINY = [
    "data.num_train=3", "data.num_val=1", "data.num_test=2", "data.phantom_shape=[40,32,32]",
    "data.phantom_spacing=[3,3,3]", "data.spacing=[3,3,3]", "model.img_size=[32,32,32]", "model.feature_size=4",
    "model.num_tokens=40", "model.keep_tokens=10", "model.token_dim=32", "model.codebook_size=16", "model.mixer_layers=1",
    "model.mixer_heads=2", "train.max_steps=3", "train.batch_size=2", "train.save_every=2", "train.progress=false",
    "model.baseline_args={unet: {channels: [4, 8, 16], strides: [2, 2], num_res_units: 1}}",
    "train.eval_every=1",  # validation Dice after every step: the best step's weights are the model
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("tokenseg")
    common = [f"data.root={work / 'data'}", f"output_dir={work / 'tokenseg'}", *TINY]
    assert main(["data", "--task", "tokenseg", *common]) == 0
    assert main(["train", "--task", "tokenseg", *common]) == 0
    return work, common


def _scan(work: Path, n: int = 5) -> Path:
    return work / "data" / "imagesTr" / f"phantom_{n:03d}.nii.gz"  # a test-split case


def test_data_train_writes_a_complete_run(run, capsys):
    work, _ = run
    final = work / "tokenseg" / "final"
    for name in ("model.safetensors", "config.yaml", "dataset_info.json", "val_metrics.json", "medvtc_selection.json",
                 "convergence.json"):
        assert (final / name).is_file(), name
    selected = json.loads((final / "medvtc_selection.json").read_text())
    conv = json.loads((final / "convergence.json").read_text())
    assert conv["metric"] == "dice_mean" and [s for s, _ in conv["history"]] == [1, 2, 3] and conv["stopped_by"] == "max_steps"
    assert selected["step"] == conv["best_step"] and selected["last_step"] == 3
    assert json.loads((final / "val_metrics.json").read_text())["step"] == selected["step"]
    info = json.loads((final / "dataset_info.json").read_text())
    assert info["modalities"] == ["T1w", "T2w"] and info["labels"]["2"] == "lesion"
    metrics = json.loads((final / "val_metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["dice_mean"] <= 1.0 and 0.0 <= metrics["kept_boundary_fraction"] <= 1.0
    assert 0.0 <= metrics["candidate_boundary_fraction"] <= 1.0
    assert {"dice_organ", "iou_lesion", "hd95_organ", "nsd_lesion"} <= set(metrics)
    logged = (work / "tokenseg" / "metrics.csv").read_text()
    for key in ("seg", "commitment", "boundary", "kept_boundary_fraction", "candidate_boundary_fraction"):
        assert f",train,{key}," in logged


def test_second_train_refuses_and_eval_reports_the_test_split(run, capsys):
    work, common = run
    capsys.readouterr()
    assert main(["train", "--task", "tokenseg", *common]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["eval", "--task", "tokenseg", *common]) == 0
    out = capsys.readouterr().out
    assert "test split" in out
    for key in ("dice_mean=", "iou_mean=", "hd95_mean=", "nsd_mean=", "dice_organ=", "hd95_lesion=", "kept_boundary_fraction="):
        assert key in out, key


def test_a_monai_network_trains_on_the_same_data(run, capsys):
    work, common = run
    args = [a for a in common if not a.startswith("output_dir=")] + [f"output_dir={work / 'unet'}", "model.name=unet"]
    # (the benchmark test below reuses this run and the fixture's as its tokenseg and unet rows)
    assert main(["train", "--task", "tokenseg", *args]) == 0
    capsys.readouterr()
    assert main(["eval", "--task", "tokenseg", *args]) == 0
    out = capsys.readouterr().out
    assert "unet" in out and "dice_mean=" in out and "kept_boundary_fraction" not in out


def test_segment_writes_a_mask_in_the_scans_grid_and_a_png(run, tmp_path, capsys):
    work, _ = run
    scan = _scan(work)
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", "--checkpoint", str(work / "tokenseg"), str(scan), "-o", str(out), "--png"]) == 0
    ref, mask = nib.load(str(scan)), nib.load(str(out))
    assert mask.shape == ref.shape[:3] and mask.get_data_dtype() == np.uint8
    assert np.allclose(mask.affine, ref.affine) and np.allclose(mask.header.get_zooms(), ref.header.get_zooms()[:3])
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    png = tmp_path / "mask.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # existing outputs are kept unless --overwrite
    capsys.readouterr()
    assert main(["segment", "--checkpoint", str(work / "tokenseg"), str(scan), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["segment", "--checkpoint", str(work / "tokenseg"), str(scan), "-o", str(out), "--overwrite"]) == 0
    # the same scan stored flipped (another orientation): the mask follows it voxel for voxel
    img = nib.load(str(scan))
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = img.shape[0] - 1
    flipped = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine @ flip), str(flipped))
    out2 = tmp_path / "flipped_mask.nii.gz"
    assert main(["segment", "--checkpoint", str(work / "tokenseg"), str(flipped), "-o", str(out2)]) == 0
    a = np.asarray(nib.load(str(out)).dataobj)
    b = np.asarray(nib.load(str(out2)).dataobj)
    assert np.array_equal(a, b[::-1])


def test_segment_folder_lists_bad_scans_and_writes_only_good_masks(run, tmp_path, capsys):
    work, _ = run
    folder = tmp_path / "scans"
    folder.mkdir()
    good = [_scan(work, 5), _scan(work, 6)]
    for g in good:
        (folder / g.name).write_bytes(g.read_bytes())
    raw = gzip.decompress(good[0].read_bytes())
    (folder / "truncated.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 3]))
    (folder / "text.nii.gz").write_text("not a scan")
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), str(folder / "flat.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.float32), np.eye(4)), str(folder / "onechannel.nii.gz"))
    nan = np.ones((16, 16, 16, 2), np.float32)
    nan[1, 2, 3, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(folder / "nan.nii.gz"))
    out = tmp_path / "masks"
    capsys.readouterr()
    assert main(["segment", "--checkpoint", str(work / "tokenseg"), str(folder), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "5 of 7 scan(s) failed" in err
    for name, why in (("truncated", "truncated"), ("text", "not a NIfTI"), ("flat", "2D"), ("onechannel", "expected 2 (T1w, T2w)"),
                      ("nan", "NaN")):
        line = next(line for line in err.splitlines() if f"{name}.nii.gz:" in line)
        assert why in line, line
    assert sorted(p.name for p in out.iterdir()) == sorted(g.name for g in good)


def test_segment_one_bad_scan_fails_cleanly_with_no_output(run, tmp_path, capsys):
    work, _ = run
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16, 3), np.float32), np.eye(4)), str(bad))
    out = tmp_path / "out.nii.gz"
    capsys.readouterr()
    assert main(["segment", "--checkpoint", str(work / "tokenseg"), str(bad), "-o", str(out), "--png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.nii.gz" in err[0] and "3 channel(s)" in err[0]
    assert list(tmp_path.iterdir()) == [bad]  # no mask, no png, no temporary file
    assert main(["segment", "--checkpoint", str(tmp_path), str(_scan(work)), "-o", str(out)]) == 2
    assert "not a trained tokenseg model folder" in capsys.readouterr().err


def _bench_args(common, out, *extra):
    return [*common, f"bench.output_dir={out}", "bench.sizes=[32]", "bench.repeats=1", "bench.max_steps=3",
            "bench.device=cpu", "eval.max_volumes=1", *extra]


def test_tiny_benchmark_writes_results_and_partial_files_are_removed(run, tmp_path, capsys, monkeypatch):
    from medvtc.medical.tokenseg.bench import TokenSegBench, class_mean

    work, common = run
    results, out = tmp_path / "results", tmp_path / "bench"
    # the finished tokenseg and unet runs above (`medvtc train`, 3 steps, the same settings) are
    # reused from their config.yaml; only the ablation trains
    shutil.copytree(work / "tokenseg", out / "tokenseg" / "seed_0")
    shutil.copytree(work / "unet", out / "unet" / "seed_0")
    # SwinUNETR is too slow to train here: the paired differences are taken against UNet
    monkeypatch.setattr(TokenSegBench, "reference", "unet")
    args = _bench_args(common, out, "bench.variants=[tokenseg, unet, tokenseg_random]")
    trained = out / "tokenseg" / "seed_0" / "final" / "model.safetensors"
    mtime = trained.stat().st_mtime_ns
    assert main(["bench", "--task", "tokenseg", *args, "--output", str(results)]) == 0
    doc = json.loads((results / "tokenseg.json").read_text())
    rows = {r["method"]: r for r in doc["rows"]}
    assert list(rows) == ["tokenseg", "unet", "tokenseg_random"]
    assert [r["metrics"]["run"] for r in rows.values()] == ["reused", "reused", "trained"]
    for r in rows.values():
        m = r["metrics"]
        assert r["flops"] > 0 and r["params"] > 0 and r["latency_ms"] > 0 and r["peak_mem_mb"] >= 0
        assert 0.0 <= m["dice_mean"] <= 1.0 and m["gflops_32"] is not None
        for key in ("dice_mean", "iou_mean", "hd95_mean", "nsd_mean", "dice_organ", "dice_lesion"):
            lo, hi = m[f"{key}_ci"]  # one test volume: a zero-width interval
            assert lo <= m[key] <= hi, key
        # per-volume results, from which the row's figures are recomputed
        cases = r["cases"]["seed_0"]
        assert len(cases["case"]) == 1 and {"dice_mean", "dice_organ", "iou_lesion", "hd95_organ", "nsd_mean"} <= set(cases)
        cols = {k: np.asarray(v, dtype=float) for k, v in cases.items() if k != "case"}
        assert m["dice_mean"] == pytest.approx(class_mean("dice", ["organ", "lesion"])(cols), abs=1e-4)
    assert "dice_mean_diff_ci" not in rows["unet"]["metrics"]
    for name in ("tokenseg", "tokenseg_random"):
        m = rows[name]["metrics"]
        assert m["dice_mean_diff"] == pytest.approx(m["dice_mean"] - rows["unet"]["metrics"]["dice_mean"], abs=2e-4)
        assert "dice_mean_diff_ci" in m and "hd95_mean_diff_ci" in m
    assert rows["tokenseg"]["tokens"] == 10 and rows["unet"]["tokens"] == 0
    assert "kept_boundary_fraction" in rows["tokenseg_random"]["metrics"]
    assert (results / "tokenseg.md").is_file() and (results / "tokenseg.png").is_file()
    assert not list(results.glob("tokenseg.partial.*"))
    assert (out / "tokenseg_random" / "seed_0" / "final" / "model.safetensors").is_file()
    assert trained.stat().st_mtime_ns == mtime  # reused, not retrained
    md = (results / "tokenseg.md").read_text()
    assert "no SwinUNETR figures" in md and "Paired differences to unet" in md and "tokenseg_random: mean Dice" in md

    # again: every run and its evaluation reused (only the costs are measured again)
    capsys.readouterr()
    assert main(["bench", "--task", "tokenseg", *args, "--output", str(results)]) == 0
    assert capsys.readouterr().out.count("reusing the evaluation") == 3
    again = json.loads((results / "tokenseg.json").read_text())
    assert [r["metrics"]["run"] for r in again["rows"]] == ["reused"] * 3
    assert [r["metrics"]["dice_mean_ci"] for r in again["rows"]] == [r["metrics"]["dice_mean_ci"] for r in doc["rows"]]

    # another training budget: refused, naming the key; --retrain trains that run again
    longer = _bench_args(common, out, "bench.variants=[unet]", "bench.max_steps=4")
    assert main(["bench", "--task", "tokenseg", *longer, "--output", str(results)]) == 2
    err = capsys.readouterr().err
    assert "train.max_steps: 3 there, 4 now" in err and "--retrain" in err
    assert main(["bench", "--task", "tokenseg", *longer, "--output", str(results), "--retrain"]) == 0
    doc = json.loads((results / "tokenseg.json").read_text())
    assert [(r["method"], r["metrics"]["run"]) for r in doc["rows"]] == [("unet", "trained")]
    assert json.loads((out / "unet" / "seed_0" / "bench_settings.json").read_text())["settings"]["train.max_steps"] == 4
    assert (work / "unet" / "final" / "model.safetensors").is_file()  # the copied-from run is untouched


def test_bench_variants_are_checked_before_any_work(run, tmp_path, capsys):
    work, common = run
    out = tmp_path / "bench"
    for variants, message in (("[vnet]", "unknown method 'vnet'; valid: mednext, segresnet, swinunetr, swinunetr24, tokenseg, tokenseg_divprune"),
                              ("[unet@50]", "'unet@50': a budget (kept tokens) applies to tokenseg only"),
                              ("[unet, unet]", "lists a variant twice")):
        assert main(["bench", "--task", "tokenseg", *_bench_args(common, out, f"bench.variants={variants}"),
                     "--output", str(tmp_path / "results")]) == 2
        assert message in capsys.readouterr().err, variants
    assert main(["bench", "--task", "tokenseg", *common, "bench.models=[unet]"]) == 2
    assert "unknown config key bench.models" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "results").exists()


def test_variants_through_the_grammar():
    from medvtc.common.bench_runner import parse_variant
    from medvtc.medical.tokenseg.bench import ABLATIONS, SELECTION_ABLATIONS, TokenSegBench
    from medvtc.tasks import get_task

    task = get_task("tokenseg")
    cfg = task.load_config(None, ["bench.max_steps=7", "model.baseline_args={unet: {channels: [4, 8]}}"])
    spec = TokenSegBench(task, cfg)
    assert cfg.bench.variants[-3:] == list(SELECTION_ABLATIONS) and {"mednext", "swinunetr24"} <= set(cfg.bench.variants)
    s24 = spec.variant_config(cfg, parse_variant("swinunetr24", ABLATIONS), 0, Path("/tmp/s"))
    assert s24.model.name == "swinunetr"
    assert s24.model.baseline_args == {"unet": {"channels": [4, 8]}, "swinunetr": {"feature_size": 24}}  # merged
    med = spec.variant_config(cfg, parse_variant("mednext", ABLATIONS, spec.methods), 0, Path("/tmp/m"))
    assert med.model.name == "mednext" and spec.task == "tokenseg"
    assert TokenSegBench(task, task.load_config(None, ["data.dataset=mni152"])).task == "tokenseg_mni152"
    div = spec.variant_config(cfg, parse_variant("tokenseg_divprune", ABLATIONS), 1, Path("/tmp/x/seed_1"))
    assert (div.model.name, div.model.selection, div.seed, div.train.max_steps) == ("tokenseg", "divprune", 1, 7)
    assert div.output_dir == "/tmp/x/seed_1"
    k50 = spec.variant_config(cfg, parse_variant("tokenseg@50", ABLATIONS, spec.methods), 0, Path("/tmp/y"))
    assert (k50.model.name, k50.model.keep_tokens, k50.model.selection) == ("tokenseg", 50, "boundary")
    swin = spec.variant_config(cfg, parse_variant("swinunetr", ABLATIONS, spec.methods), 0, Path("/tmp/z"))
    assert swin.model.name == "swinunetr" and spec.reference == "swinunetr"


def test_ratios_and_targets_against_swinunetr():
    from medvtc.common.results import ResultRow
    from medvtc.medical.tokenseg.bench import ratios, targets_markdown

    def row(name, tokens, flops, latency, mem, organ, lesion, **extra):
        cases = {"seed_0": {"dice_organ": organ, "dice_lesion": lesion}}
        dice = (np.mean(organ) + np.mean(lesion)) / 2
        return ResultRow(name, tokens, flops, 1, latency, mem, {"dice_mean": dice, **extra}, cases)

    organ = [0.90, 0.92, 0.88, 0.91, 0.93, 0.89]
    rows = [row("swinunetr", 0, 100.0, 50.0, 1000.0, organ, [0.90] * 6),
            row("unet", 0, 80.0, 20.0, 500.0, [o + 0.01 for o in organ], [0.91] * 6),
            # 1.5 points below UNet on every volume: the whole interval above -2 points
            row("tokenseg", 100, 10.0, 10.0, 300.0, [o - 0.005 for o in organ], [0.895] * 6, kept_boundary_fraction=0.7),
            row("tokenseg_random", 100, 10.0, 10.0, 300.0, [o - 0.1 for o in organ], [0.80] * 6, kept_boundary_fraction=0.3)]
    costs = {r.method: {128: {"flops": r.flops, "latency_ms": r.latency_ms, "peak_mem_mb": r.peak_mem_mb}} for r in rows}
    rel = ratios(costs, [128])
    assert rel["tokenseg"] == {"mem_vs_swinunetr_128": 0.3, "latency_vs_swinunetr_128": 0.2, "flops_vs_swinunetr_128": 0.1}
    for r in rows:
        r.metrics.update(rel[r.method])
    md = targets_markdown(rows, [128])
    assert "peak memory 0.300x SwinUNETR (met)" in md and "latency 0.200x (met)" in md
    assert "best MONAI network unet 0.9125 (-1.50 points [-1.50, -1.50]): **met**" in md and "70.0%" in md
    assert "tokenseg_random: mean Dice 0.80" in md and "-0.095 [-0.095, -0.095]" in md
    # 3 points below with noise: missed; an interval straddling -2 points: not shown
    rows[2].cases["seed_0"]["dice_lesion"] = [0.85] * 6
    rows[2].metrics["dice_mean"] = (np.mean(rows[2].cases["seed_0"]["dice_organ"]) + 0.85) / 2
    assert "**missed**" in targets_markdown(rows, [128])
    rows[2].cases["seed_0"]["dice_lesion"] = [0.80, 0.95, 0.80, 0.95, 0.88, 0.93]
    assert "**not shown**" in targets_markdown(rows, [128])
    alone = targets_markdown([row("tokenseg", 100, 10.0, 10.0, 300.0, organ, organ)], [128])
    assert "no SwinUNETR figures" in alone and "mean Dice" not in alone.split("\n", 3)[-1]


def test_bench_refuses_to_reuse_a_run_trained_with_other_settings(tmp_path):
    """A finished bench run is reused only under the settings it was trained with: TokenSeg's own
    keys matter for TokenSeg rows, not for the MONAI networks; bookkeeping keys never matter."""
    from medvtc.common.bench_runner import parse_variant, settings_diff, train_or_reuse
    from medvtc.common.config import replace, save_config, to_dict
    from medvtc.common.errors import UserError
    from medvtc.medical.tokenseg.bench import TokenSegBench
    from medvtc.tasks import get_task

    task = get_task("tokenseg")
    cfg = task.load_config(None, [f"bench.output_dir={tmp_path}"])
    spec = TokenSegBench(task, cfg)
    ts = spec.variant_config(cfg, parse_variant("tokenseg"), 0, tmp_path / "tokenseg" / "seed_0")
    unet = spec.variant_config(cfg, parse_variant("unet"), 0, tmp_path / "unet" / "seed_0")
    settings = lambda c: spec.settings(to_dict(c))  # noqa: E731
    assert settings_diff(settings(replace(ts, model=replace(ts.model, feature_size=4))), settings(ts)) == [
        ("model.feature_size", 4, 16)]
    assert "model.baseline_args" not in settings(ts) and "model.feature_size" not in settings(unet)
    # the convergence budget and, since the evaluations then choose the weights, eval_every count
    assert settings(unet)["train.eval_every"] == 100 and settings(unet)["train.plateau_window"] == 0.2
    assert settings_diff(settings(replace(unet, train=replace(unet.train, eval_every=50))), settings(unet)) == [
        ("train.eval_every", 50, 100)]
    # TokenSeg's width, the data cache and logging do not change a UNet
    other = replace(unet, model=replace(unet.model, feature_size=4), data=replace(unet.data, cache=False),
                    train=replace(unet.train, progress=False))
    assert settings_diff(settings(other), settings(unet)) == []
    assert settings_diff(settings(replace(unet, model=replace(unet.model, baseline_args={"unet": {"channels": [4]}}))),
                         settings(unet))[0][0] == "model.baseline_args"
    # through the runner: a run made by hand (config.yaml) with another budget is refused by name
    run_dir = Path(unet.output_dir)
    (run_dir / "final").mkdir(parents=True)
    save_config(replace(unet, train=replace(unet.train, max_steps=7)), run_dir / "config.yaml")
    with pytest.raises(UserError, match=r"train\.max_steps: 7 there, 6000 now"):
        train_or_reuse(spec, unet, run_dir, False, print)
    save_config(other, run_dir / "config.yaml")
    (run_dir / "final" / "model.safetensors").write_bytes(b"")
    assert train_or_reuse(spec, unet, run_dir, False, print) == ("reused", None)


def test_bench_trains_each_seed_to_its_plateau_and_draws_the_validation_curves(run, tmp_path, capsys):
    """Three seeds of one network under the convergence budget: each run stops by the rule, the
    row records where (plateau_step, best_step per seed) and the validation curves; the md says
    it, the PNG draws them; a different eval_every is another training."""
    from medvtc.medical.tokenseg.bench import convergence_markdown  # noqa: F401 (the md section below)

    work, common = run
    results, out = tmp_path / "results", tmp_path / "bench"
    # stop once the best validation Dice gained <= 1 (always) over the last half of the steps, not
    # before step 2: every run stops at step 2 of the cap of 5
    rule = ["bench.max_steps=5", "train.plateau_window=0.5", "train.plateau_delta=1.0", "train.plateau_min_steps=2"]
    args = _bench_args(common, out, "bench.variants=[unet]", "bench.seeds=[0, 1, 2]", *rule)
    assert main(["bench", "--task", "tokenseg", *args, "--output", str(results)]) == 0
    assert capsys.readouterr().out.count("medvtc: plateau at step 2:") == 3
    row = json.loads((results / "tokenseg.json").read_text())["rows"][0]
    m = row["metrics"]
    assert m["plateau_step_per_seed"] == [2, 2, 2] and m["train_steps_per_seed"] == [2, 2, 2]
    assert all(b in (1, 2) for b in m["best_step_per_seed"]) and len(m["val_dice_best_per_seed"]) == 3
    curves = m["dice_mean_val_curve"]
    assert len(curves) == 3 and all([s for s, _ in c] == [1, 2] for c in curves)
    for seed, best in zip((0, 1, 2), m["best_step_per_seed"]):
        run_dir = out / "unet" / f"seed_{seed}"
        assert json.loads((run_dir / "final" / "medvtc_selection.json").read_text())["step"] == best
        assert json.loads((run_dir / "convergence.json").read_text())["plateau_step"] == 2
    assert len(row["cases"]) == 3 and m["dice_mean_ci"][0] <= m["dice_mean"] <= m["dice_mean_ci"][1]
    md = (results / "tokenseg.md").read_text()
    assert "### Convergence: validation mean Dice every 1 steps" in md and "- unet: plateau at step 2, 2, 2" in md
    assert "val_curve" not in md.split("###")[0]  # the curve is in the json and the PNG, not a table column
    assert (results / "tokenseg.png").stat().st_size > 0
    # evaluations choose the weights here: another eval_every is another run
    assert main(["bench", "--task", "tokenseg", *args, "train.eval_every=2", "--output", str(results)]) == 2
    assert "train.eval_every: 1 there, 2 now" in capsys.readouterr().err
    # the rule without evaluations to watch: refused before any training
    assert main(["bench", "--task", "tokenseg", *args, "train.eval_every=0", "--output", str(results)]) == 2
    assert "train.plateau_window=0.5 needs train.eval_every >= 1" in capsys.readouterr().err


def test_a_run_saved_before_the_convergence_keys_still_loads(tmp_path):
    """An older run's config.yaml (no plateau keys, eval_every 0, no selection) gets today's
    defaults for the missing keys and still loads for eval / segment."""
    from medvtc.common.config import load_config
    from medvtc.medical.tokenseg.config import TokenSegTaskConfig

    path = tmp_path / "config.yaml"
    path.write_text("model: {name: unet}\ntrain: {max_steps: 300, eval_every: 0, select_metric: null}\n")
    cfg = load_config(TokenSegTaskConfig, path)
    assert cfg.model.name == "unet" and cfg.train.plateau_window == 0.2
    assert "needs train.select_metric" in cfg.train.plateau_problem()  # it would not train as it is


def test_bench_on_the_mni152_subject_writes_its_own_files_and_says_it_is_one_subject(mni152_root, tmp_path, capsys):
    """The second dataset row: nilearn's MNI152 (real MRI, one subject) through the bench."""
    results, out = tmp_path / "results", tmp_path / "bench"
    args = [f"data.root={mni152_root}", "data.dataset=mni152", "data.spacing=[3,3,3]", "model.img_size=[32,32,32]",
            "model.name=unet", "model.baseline_args={unet: {channels: [4, 8, 16], strides: [2, 2], num_res_units: 1}}",
            "train.batch_size=1", "data.samples_per_volume=2", "train.max_steps=2", "train.eval_every=1",
            "train.progress=false", f"bench.output_dir={out}", "bench.variants=[unet]", "bench.sizes=[32]",
            "bench.repeats=1", "bench.device=cpu"]
    assert main(["bench", "--task", "tokenseg", *args, "--output", str(results)]) == 0
    assert not (results / "tokenseg.json").exists()  # the phantom's results are not replaced
    doc = json.loads((results / "tokenseg_mni152.json").read_text())
    assert doc["config"]["dataset"]["name"] == "MNI152" and "ONE subject" in doc["config"]["dataset"]["note"]
    row = doc["rows"][0]
    assert len(row["cases"]["seed_0"]["case"]) == 3  # the three test blocks of the right hemisphere
    assert {"dice_grey_matter", "dice_white_matter"} <= set(row["metrics"])
    md = (results / "tokenseg_mni152.md").read_text()
    assert "**Data: MNI152, ONE subject.**" in md and "not subjects" in md
