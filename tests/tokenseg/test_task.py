"""The tokenseg task through the `medvtc` CLI (in-process `main`, as the entry point calls it):
data, train (TokenSeg and a MONAI network), eval, segment (files, folders, bad inputs, the
input's grid and header kept), and a tiny benchmark."""

from __future__ import annotations

import gzip
import json
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
    for name in ("model.safetensors", "config.yaml", "dataset_info.json", "val_metrics.json"):
        assert (final / name).is_file(), name
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


def test_tiny_benchmark_writes_results_and_partial_files_are_removed(run, tmp_path, capsys):
    work, common = run
    results = tmp_path / "results"
    # bench.output_dir=work: the finished tokenseg and unet runs above (3 steps, the same settings) are reused;
    # only the ablation trains
    args = [*common, f"bench.output_dir={work}", "bench.models=[tokenseg,unet]", "bench.ablations=[random]",
            "bench.sizes=[32]", "bench.repeats=1", "bench.max_steps=3", "bench.device=cpu", "eval.max_volumes=1"]
    trained = (work / "tokenseg" / "final" / "model.safetensors").stat().st_mtime_ns
    assert main(["bench", "--task", "tokenseg", *args, "--output", str(results)]) == 0
    doc = json.loads((results / "tokenseg.json").read_text())
    rows = {r["method"]: r for r in doc["rows"]}
    assert set(rows) == {"tokenseg", "unet", "tokenseg+random"}
    for r in rows.values():
        assert r["flops"] > 0 and r["params"] > 0 and r["latency_ms"] > 0 and r["peak_mem_mb"] >= 0
        assert 0.0 <= r["metrics"]["dice_mean"] <= 1.0 and r["metrics"]["gflops_32"] is not None
    assert rows["tokenseg"]["tokens"] == 10 and rows["unet"]["tokens"] == 0
    assert "kept_boundary_fraction" in rows["tokenseg+random"]["metrics"]
    assert (results / "tokenseg.md").is_file() and (results / "tokenseg.png").is_file()
    assert not list(results.glob("tokenseg.partial.*"))
    assert (work / "tokenseg-random" / "final" / "model.safetensors").is_file()
    assert (work / "tokenseg" / "final" / "model.safetensors").stat().st_mtime_ns == trained  # reused, not retrained
    assert "no SwinUNETR figures" in (results / "tokenseg.md").read_text()


def test_ratios_and_targets_against_swinunetr():
    from medvtc.common.results import ResultRow
    from medvtc.medical.tokenseg.bench import _add_ratios, targets_markdown

    rows = [ResultRow("swinunetr", 0, 100.0, 1, 50.0, 1000.0, {"dice_mean": 0.90}),
            ResultRow("unet", 0, 80.0, 1, 20.0, 500.0, {"dice_mean": 0.91}),
            ResultRow("tokenseg", 100, 10.0, 1, 10.0, 300.0, {"dice_mean": 0.895, "kept_boundary_fraction": 0.7})]
    costs = {r.method: {128: {"flops": r.flops, "latency_ms": r.latency_ms, "peak_mem_mb": r.peak_mem_mb}} for r in rows}
    _add_ratios(rows, costs, [128])
    ts = rows[2].metrics
    assert ts["mem_vs_swinunetr_128"] == 0.3 and ts["latency_vs_swinunetr_128"] == 0.2 and ts["flops_vs_swinunetr_128"] == 0.1
    md = targets_markdown(rows, [128])
    assert "peak memory 0.300x SwinUNETR (met)" in md and "latency 0.200x (met)" in md
    assert "best MONAI network unet 0.9100 (-1.50 points): met" in md and "70.0%" in md


def test_bench_refuses_to_reuse_a_run_trained_with_other_settings(tmp_path):
    """A finished bench run is reused only under the settings it was trained with: TokenSeg's own
    keys matter for TokenSeg rows, not for the MONAI networks; bookkeeping keys never matter."""
    from medvtc.common.config import replace, save_config
    from medvtc.common.errors import UserError
    from medvtc.medical.tokenseg import bench
    from medvtc.tasks import get_task

    cfg = get_task("tokenseg").load_config(None, [f"bench.output_dir={tmp_path}"])
    ts = bench._variant_config(cfg, "tokenseg", "boundary", "tokenseg")
    unet = bench._variant_config(cfg, "unet", "boundary", "unet")
    saved = tmp_path / "config.yaml"
    save_config(replace(ts, model=replace(ts.model, feature_size=4)), saved)
    with pytest.raises(UserError, match=r"model\.feature_size: 4 there, 16 now"):
        bench._check_reusable(ts, saved, "tokenseg")
    save_config(replace(unet, model=replace(unet.model, feature_size=4), train=replace(unet.train, progress=False)), saved)
    bench._check_reusable(unet, saved, "unet")  # TokenSeg's width and logging do not change a UNet
    save_config(replace(unet, train=replace(unet.train, max_steps=7)), saved)
    with pytest.raises(UserError, match=r"train\.max_steps: 7 there"):
        bench._check_reusable(unet, saved, "unet")
