"""The ct-report task end to end on a tiny phantom set: data, the staged training with resume,
eval, `medvtc report` on good and bad volumes, and the two-line Python API."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medvtc.datasets.ct_rate_layout import volume_relpath

TINY = [
    "data.num_train=10", "data.num_val=2", "data.num_test=2", "data.phantom_shape=[32,32,16]",
    "data.spatial_size=[16,16,8]", "model.patch_size=[4,4,2]", "model.vision_hidden_size=32", "model.vision_layers=1",
    "model.vision_heads=2", "model.vision_mlp_dim=64", "model.budget=8", "model.lm_hidden_size=32", "model.lm_layers=1",
    "model.lm_heads=2", "model.lm_intermediate_size=64", "model.vocab_size=300", "stages.lm_steps=4", "stages.lm_batch_size=4",
    "stages.vision_steps=2", "stages.vision_batch_size=2", "stages.align_steps=2", "train.max_steps=4", "train.batch_size=2", "train.save_every=2", "train.progress=false",
    "generation.max_new_tokens=12",
]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medvtc", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny dataset and one trained run, shared by the tests below."""
    work = tmp_path_factory.mktemp("ct")
    common = [f"data.root={work / 'data'}", f"output_dir={work / 'run'}", *TINY]
    r = cli("data", "--task", "ct-report", *common, cwd=work)
    assert r.returncode == 0, r.stderr
    assert "train: 10 volumes" in r.stdout
    r = cli("train", "--task", "ct-report", *common, cwd=work)
    assert r.returncode == 0, r.stderr
    return work, common, r


def test_train_runs_all_stages_and_prints_metrics(run):
    work, _, r = run
    out = work / "run"
    for stage in ("lm", "vision", "align", "finetune"):
        done = json.loads((out / f"stage_{stage}" / "done.json").read_text())
        assert done["stage"] == stage
    final = out / "final"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (final / name).is_file(), name
    assert "clinical_micro_f1=" in r.stdout and "bleu4=" in r.stdout
    assert "generated:" in r.stdout and "reference:" in r.stdout
    # the visual-token statistics are fitted once, after the warm-ups, and saved with the model
    assert r.stdout.count("visual-token statistics fitted on 10 training volumes") == 1
    from safetensors.torch import load_file

    weights = load_file(str(final / "model.safetensors"))
    assert bool(weights["token_standardizer.fitted"]) and weights["token_standardizer.std"].shape == (64, 32)
    # the default input: the HU window plus one channel per interval of data.hu_bins
    preprocessing = json.loads((final / "preprocessor_config.json").read_text())
    bins = preprocessing["hu_bins"]
    assert bins == [-950.0, -700.0, -250.0, -30.0, 20.0, 100.0, 130.0, 700.0, 1000.0]
    assert json.loads((final / "config.json").read_text())["in_channels"] == 1 + len(bins) + 1
    saved = json.loads((final / "val_metrics.json").read_text())
    assert len(saved["reports"]) == 2 and 0.0 <= saved["metrics"]["clinical_micro_f1"] <= 1.0
    distinct = len({r["generated"] for r in saved["reports"]}) / 2
    assert saved["metrics"]["distinct_reports"] == distinct and "distinct_reports=" in r.stdout


def test_second_train_refuses_then_resume_skips_finished_stages(run):
    work, common, _ = run
    r = cli("train", "--task", "ct-report", *common, cwd=work)
    assert r.returncode == 2 and "--resume" in r.stderr
    before = (work / "run" / "final" / "model.safetensors").read_bytes()
    r = cli("train", "--task", "ct-report", *common, "--resume", cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("already finished") == 4
    # Nothing retrained: the same weights are written again.
    assert (work / "run" / "final" / "model.safetensors").read_bytes() == before


def test_shared_stages_are_reused_across_compressors_and_checked(run):
    work, common, _ = run
    shared = [f"stages.shared_dir={work / 'shared'}"]
    r = cli("train", "--task", "ct-report", *common, *shared, f"output_dir={work / 'pool'}", "model.compressor=pooling", cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / "shared" / "stage_lm" / "done.json").is_file() and (work / "shared" / "stage_vision" / "done.json").is_file()
    assert not (work / "pool" / "stage_lm").exists() and (work / "pool" / "stage_align" / "done.json").is_file()
    r = cli("train", "--task", "ct-report", *common, *shared, f"output_dir={work / 'none'}", "model.compressor=none", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "stage lm already finished" in r.stdout and "stage vision already finished" in r.stdout
    assert "stage align: " in r.stdout  # the compressor-dependent stages train anew
    # align read the frozen ViT's tokens from one cache in the shared folder, encoded once
    assert "token cache reused" in r.stdout and len(list((work / "shared" / "token_cache").glob("*/cache.json"))) == 1
    r = cli("train", "--task", "ct-report", *common, *shared, f"output_dir={work / 'nocache'}", "stages.cache_tokens=false", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "token cache" not in r.stdout and (work / "nocache" / "final").is_dir()
    r = cli("train", "--task", "ct-report", *common, *shared, f"output_dir={work / 'deeper'}", "model.vision_layers=2", cwd=work)
    assert r.returncode == 2 and "stage vision" in r.stderr and "vision_layers" in r.stderr
    assert not (work / "deeper" / "final").exists()


def test_eval_on_test_split(run):
    work, common, _ = run
    r = cli("eval", "--task", "ct-report", *common, cwd=work)
    assert r.returncode == 0, r.stderr
    assert "test split (2 volumes, 8 visual tokens)" in r.stdout


def _test_volumes(work: Path) -> list[Path]:
    return sorted((work / "data" / "dataset" / "valid_fixed").rglob("*.nii.gz"))


def test_python_api_path_and_array(run):
    from medvtc.medical.ct_report.pipeline import CTReportGenerator

    work, _, _ = run
    volume = _test_volumes(work)[0]
    generator = CTReportGenerator.from_pretrained(work / "run")
    from_path = generator(volume)
    img = nib.load(str(volume))
    from_array = generator(np.asarray(img.dataobj), spacing=img.header.get_zooms()[:3])
    assert isinstance(from_path, str) and from_path
    assert from_path == from_array  # same volume, same preprocessing, greedy decoding
    assert generator.preprocess(volume).shape == (11, 16, 16, 8)  # the window + 10 HU intervals
    # a model saved before data.hu_bins existed has no such key: its input is the window alone
    del generator.preprocessing["hu_bins"]
    assert generator.preprocess(volume).shape == (1, 16, 16, 8)


def test_report_command_files_folders_and_failures(run, tmp_path):
    work, _, _ = run
    good = _test_volumes(work)
    ckpt = str(work / "run")
    r = cli("report", "--checkpoint", ckpt, str(good[0]), cwd=work)
    assert r.returncode == 0, r.stderr
    single = r.stdout.strip()
    assert single

    # -o for one volume writes the file; a second call refuses to overwrite it.
    out_txt = tmp_path / "one.txt"
    assert cli("report", "--checkpoint", ckpt, str(good[0]), "-o", str(out_txt), cwd=work).returncode == 0
    assert out_txt.read_text().strip() == single
    r = cli("report", "--checkpoint", ckpt, str(good[0]), "-o", str(out_txt), cwd=work)
    assert r.returncode == 2 and "already exists" in r.stderr

    # A folder with good volumes and bad ones: the bad ones are listed at the end, the rest done.
    folder = tmp_path / "scans"
    folder.mkdir()
    for v in good:
        (folder / v.name).write_bytes(v.read_bytes())
    data = gzip.decompress(good[0].read_bytes())
    (folder / "truncated.nii.gz").write_bytes(gzip.compress(data[: len(data) // 3]))
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.int16), np.eye(4)), str(folder / "flat.nii.gz"))
    nan = np.zeros((16, 16, 8), np.float32)
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(folder / "nan.nii.gz"))
    out_csv = tmp_path / "reports.csv"
    r = cli("report", "--checkpoint", ckpt, str(folder), "-o", str(out_csv), cwd=work)
    assert r.returncode == 1
    assert "3 of 5 volume(s) failed" in r.stderr
    for name in ("truncated.nii.gz", "flat.nii.gz", "nan.nii.gz"):
        assert name in r.stderr
    rows = out_csv.read_text().strip().splitlines()
    assert rows[0] == "VolumeName,Report" and len(rows) == 1 + len(good)
    assert any(line.startswith(good[0].name) and single in line for line in rows)


def test_report_command_bad_checkpoint_and_missing_input(run, tmp_path):
    work, _, _ = run
    r = cli("report", "--checkpoint", str(tmp_path), str(_test_volumes(work)[0]), cwd=work)
    assert r.returncode == 2 and "not a trained ct-report model folder" in r.stderr
    r = cli("report", "--checkpoint", str(work / "run"), str(tmp_path / "nope.nii.gz"), cwd=work)
    assert r.returncode == 2 and "nope.nii.gz does not exist" in r.stderr


def test_reader_rejects_a_volume_without_its_report(run, tmp_path):
    """The layout check runs before training: a stray volume in the split folder is named."""
    import shutil

    work, common, _ = run
    data = tmp_path / "data"
    shutil.copytree(work / "data", data)
    stray = data / "dataset" / volume_relpath("train_999_a_1.nii.gz")
    stray.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(stray))
    args = [a for a in common if not a.startswith(("data.root=", "output_dir="))]
    r = cli("train", "--task", "ct-report", f"data.root={data}", f"output_dir={tmp_path / 'run'}", *args, cwd=work)
    assert r.returncode == 2 and "train_999_a_1.nii.gz" in r.stderr
    assert not (tmp_path / "run" / "final").exists()


def test_instruction_guided_and_uncompressed_variants_build(run):
    """Each bench variant kind builds from the task config with the right visual token count."""
    from medvtc.common.bench_runner import parse_variant
    from medvtc.common.config import load_config
    from medvtc.medical.ct_report.bench import CTReportBench
    from medvtc.medical.ct_report.task import CTReportTask, CTReportTaskConfig
    from medvtc.medical.ct_report.tokenizer import train_report_tokenizer

    work, common, _ = run
    task = CTReportTask()
    cfg = load_config(CTReportTaskConfig, None, common)
    spec = CTReportBench(task)
    tok = train_report_tokenizer(["no pleural effusion.", "a lung nodule."] * 8, vocab_size=300)
    expected = {"none": 4 * 4 * 4, "qg_vtc@8": 8, "pooling@8": 8, "perceiver@4": 4}
    for variant, k in expected.items():
        vcfg = spec.variant_config(cfg, parse_variant(variant), 0, work / "v")
        assert vcfg.stages.shared_dir == str(Path(cfg.bench.output_dir) / "shared" / "seed_0") and vcfg.seed == 0
        model = task.build_model(vcfg, tok)
        with torch.no_grad():
            embeds, info = model.encode_images(torch.rand(1, model.config.in_channels, 16, 16, 8))
        assert embeds.shape[1] == k == info["num_visual_tokens"], variant


def test_phantom_written_under_other_settings_is_used_with_a_note(run, capsys):
    """An existing phantom set is never rewritten behind the user's back; a config asking for
    other generator settings (an older default, say) gets a note naming the differing keys."""
    from medvtc.tasks import get_task

    work, common, _ = run
    task = get_task("ct-report")
    task._ensure_data(task.load_config(None, common))
    assert "note:" not in capsys.readouterr().out
    task._ensure_data(task.load_config(None, [*common, "data.num_train=11"]))
    out = capsys.readouterr().out
    assert "num_train=10" in out and "num_train=11" in out and "--overwrite" in out
    assert len(list((work / "data").rglob("*.nii.gz"))) == 14  # nothing was rewritten


def test_bench_through_the_runner_with_intervals_reuse_and_retrain(run, tmp_path):
    """`medvtc bench --task ct-report` on two variants: rows with intervals, paired differences
    and per-volume cases; a second run reuses both; a changed training key is refused with its
    name; --retrain trains again."""
    work, common, _ = run
    bench = [*common, f"bench.output_dir={tmp_path / 'bench'}", "bench.variants=[none,pooling@8]", "bench.scale=false",
             "bench.throughput_steps=2", "bench.repeats=1"]
    out = tmp_path / "results"
    r = cli("bench", "--task", "ct-report", *bench, "--output", str(out), cwd=work)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "ct-report.json").read_text())
    rows = {row["method"]: row for row in doc["rows"]}
    assert set(rows) == {"none", "pooling@8"} and rows["pooling@8"]["tokens"] == 8
    for name in ("clinical_micro_f1", "label_micro_f1", "bleu4", "rouge_l", "meteor"):
        lo, hi = rows["pooling@8"]["metrics"][f"{name}_ci"]
        assert lo <= rows["pooling@8"]["metrics"][name] <= hi, name
        assert len(rows["pooling@8"]["metrics"][f"{name}_diff_ci"]) == 2 and f"{name}_diff_ci" not in rows["none"]["metrics"]
    cases = rows["none"]["cases"]["seed_0"]
    assert len(cases["volume"]) == 2 and len(cases["pred_labels"][0]) == 18
    assert doc["config"]["align_throughput"]["samples_per_s_cache"] > 0
    md = (out / "ct-report.md").read_text()
    assert "Paired differences to none" in md and not (out / "ct-report.partial.json").exists()
    assert (tmp_path / "bench" / "pooling_8" / "seed_0" / "final").is_dir()

    r = cli("bench", "--task", "ct-report", *bench, "--output", str(out), cwd=work)
    assert r.returncode == 0, r.stderr
    assert "medvtc bench: training" not in r.stdout and r.stdout.count("reusing the evaluation") == 2
    assert json.loads((out / "ct-report.json").read_text())["rows"][0]["metrics"]["run"] == "reused"

    r = cli("bench", "--task", "ct-report", *bench, "train.lr=0.001", "--output", str(out), cwd=work)
    assert r.returncode == 2 and "train.lr" in r.stderr and "--retrain" in r.stderr
    r = cli("bench", "--task", "ct-report", *bench, "train.lr=0.001", "--retrain", "--output", str(out), cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("--retrain: removing") == 2
    assert {row["metrics"]["run"] for row in json.loads((out / "ct-report.json").read_text())["rows"]} == {"trained"}


def test_bench_refuses_bad_variants_before_any_training(run, tmp_path):
    work, common, _ = run
    bench = [*common, f"bench.output_dir={tmp_path / 'bench'}", "bench.scale=false"]
    for variants, words in (("[none,pixle_shuffle@8]", ["pixle_shuffle", "pixel_shuffle"]),
                            ("[none,pixel_shuffle@7]", ["pixel_shuffle@7", "nearest"])):
        r = cli("bench", "--task", "ct-report", *bench, f"bench.variants={variants}", "--output", str(tmp_path / "r"), cwd=work)
        assert r.returncode == 2 and all(w in r.stderr for w in words), r.stderr
    assert not (tmp_path / "bench").exists()
    r = cli("bench", "--task", "ct-report", *bench, "bench.seeds=[0,1]", f"stages.shared_dir={tmp_path / 's'}",
            "--output", str(tmp_path / "r"), cwd=work)
    assert r.returncode == 2 and "bench.seeds" in r.stderr


def test_data_dtype_float16_is_a_setting_only_when_chosen(tmp_path):
    """data.dtype (float32 by default): float16 reaches the datasets and the preprocessor file a
    report is written with, and counts in the fingerprints and bench settings; float32 leaves
    them as they were before the key existed, so earlier runs, caches and models stay valid."""
    from medvtc.common.config import to_dict
    from medvtc.common.errors import UserError
    from medvtc.medical.ct_report.bench import CTReportBench
    from medvtc.medical.ct_report.pipeline import CTReportGenerator
    from medvtc.tasks import get_task

    task = get_task("ct-report")
    default, half = (task.load_config(None, [f"data.root={tmp_path}", *o]) for o in ([], ["data.dtype=float16"]))
    assert default.data.dtype == "float32" and default.bench.scale_dtype == "float16"
    assert "dtype" not in default.data.preprocessing() and half.data.preprocessing()["dtype"] == "float16"
    settings = [CTReportBench(task).settings(to_dict(c)) for c in (default, half)]
    assert "data.dtype" not in settings[0] and settings[1]["data.dtype"] == "float16"
    with pytest.raises((UserError, ValueError), match="data.dtype"):
        task.load_config(None, ["data.dtype=bfloat16"])

    hu = np.random.default_rng(0).uniform(-1000, 1000, (20, 20, 10)).astype(np.float32)
    pre = {**half.data.preprocessing(), "spatial_size": [8, 8, 4]}
    gen16 = CTReportGenerator(torch.nn.Identity(), None, pre, device="cpu")
    gen32 = CTReportGenerator(torch.nn.Identity(), None, {k: v for k, v in pre.items() if k != "dtype"}, device="cpu")
    x16, x32 = gen16.preprocess(hu), gen32.preprocess(hu)
    assert x16.dtype == torch.float16 and x32.dtype == torch.float32 and torch.equal(x16, x32.half())


def test_stages_select_and_stop_by_their_own_rules_and_the_finding_head(run):
    """train.*'s convergence budget is the end-to-end stage's; a stage before it evaluates,
    selects and stops only by its stages.overrides entry (the vision stage by default keeps its
    best validation AUC, logged per label too). The same run has the finding head
    (model.finding_loss_weight; its tokens off, so the LM's input is the volume's alone): a head on the compressed tokens learns the 18 findings beside the
    LM (from the cached tokens in align, from the volumes in finetune), is saved with the model,
    and eval says what it reads."""
    work, common, _ = run
    out = work / "converged"
    rule = ["train.eval_every=1", "train.select_metric=loss", "train.select_mode=min", "train.plateau_window=0.5",
            "train.max_steps=6", "stages.vision_steps=3", "model.finding_loss_weight=0.5", "model.finding_tokens=false",
            "stages.overrides={vision: {eval_every: 1, select_metric: auc, plateau_window: 0.5, plateau_min_steps: 2}}"]
    r = cli("train", "--task", "ct-report", *common, f"output_dir={out}", *rule, cwd=work)
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file

    from medvtc.common.trainer import BEST_FILE

    vision = json.loads((out / "stage_vision" / "done.json").read_text())
    assert vision["selected"]["metric"] == "auc" and vision["fingerprint"]["overrides"]["plateau_window"] == 0.5
    per_label = [k for k in vision["selected"]["metrics"] if k.startswith("auc_")]
    assert per_label and all(k == "auc_" + "_".join(k[4:].split("_")) for k in per_label)  # auc_<label in snake case>
    assert "stage vision: kept step" in r.stdout and "stage finetune: kept step" in r.stdout
    finetune = json.loads((out / "stage_finetune" / "done.json").read_text())
    best = json.loads((out / "stage_finetune" / "best" / BEST_FILE).read_text())
    assert finetune["selected"]["step"] == best["step"] and best["metric"] == "loss"
    # the final model is the selected one, not the last step's
    chosen, final = load_file(str(out / "stage_finetune" / "best" / "model.safetensors")), load_file(str(out / "final" / "model.safetensors"))
    shared = [k for k in chosen if k in final]
    assert shared and all(torch.equal(chosen[k], final[k]) for k in shared)

    # the finding head
    assert "finding_head " in r.stdout  # a trainable part in align and finetune
    assert "finding_head_micro_f1=" in r.stdout and "finding_head_auc=" in r.stdout
    saved = json.loads((out / "final" / "val_metrics.json").read_text())["metrics"]
    assert 0.0 <= saved["finding_head_micro_f1"] <= 1.0
    from medvtc.medical.ct_report.evaluation import ReportCollator
    from medvtc.medical.ct_report.pipeline import CTReportGenerator
    from medvtc.medical.ct_report.task import CTReportTask

    gen = CTReportGenerator.from_pretrained(out / "final")
    assert gen.model.finding_head is not None and gen.model.config.finding_loss_weight == 0.5
    w = gen.model.finding_pos_weight
    assert w.shape == (18,) and not torch.equal(w, torch.ones(18))  # set from the training prevalence, saved
    # the head's loss is in the training loss (not in the validation loss, which stays the LM's)
    task = CTReportTask()
    sets = task.datasets(task.load_config(None, [f"data.root={work / 'data'}", *TINY]), ("val",))
    items = [sets["val"][i] for i in range(2)]
    plain = ReportCollator(gen.tokenizer, 64)(items)
    both = ReportCollator(gen.tokenizer, 64, findings=True)(items)
    assert both["finding_labels"].shape == (2, 18) and "finding_labels" not in plain
    gen.model.eval()
    with torch.no_grad():
        assert float(gen.model(**both).loss) > float(gen.model(**plain).loss)

    bad = cli("train", "--task", "ct-report", *common, f"output_dir={work / 'bad'}", "stages.overrides={vison: {eval_every: 1}}", cwd=work)
    assert bad.returncode == 2 and "unknown stage 'vison'" in bad.stderr and not (work / "bad").exists()
    bad = cli("train", "--task", "ct-report", *common, f"output_dir={work / 'bad'}", "stages.overrides={align: {plateau_window: 0.5}}", cwd=work)
    assert bad.returncode == 2 and "stages.overrides.align" in bad.stderr and "select_metric" in bad.stderr


def test_finding_tokens_train_evaluate_and_write_through_the_cli(run, tmp_path):
    """model.finding_tokens: the LM reads one present/absent token per finding, teacher-forced in
    align and finetune (from the cached tokens and from the volumes), the head's decisions when
    eval and report write (the default); the setting travels with the saved model. Without the
    head it is a one-line error before anything is written."""
    work, common, _ = run
    out = work / "finding_tokens"
    tokens = ["model.finding_loss_weight=0.5", "model.finding_tokens=true", "model.finding_threshold=0.4"]
    r = cli("train", "--task", "ct-report", *common, f"stages.shared_dir={work / 'shared'}", f"output_dir={out}", *tokens, cwd=work)
    assert r.returncode == 0, r.stderr
    assert "finding_embedding " in r.stdout  # trains in align and finetune
    assert "token cache" in r.stdout  # align read the cached ViT tokens
    from medvtc.medical.ct_report.pipeline import CTReportGenerator

    gen = CTReportGenerator.from_pretrained(out / "final")
    # the threshold the model writes with was chosen on the val split (calibrate_finding_threshold, default on)
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["configured_threshold"] == 0.4 and calibration["val_volumes"] == 2
    assert gen.model.config.finding_tokens and gen.model.config.finding_threshold == calibration["finding_threshold"]
    assert calibration["val_best_micro_f1"] == pytest.approx(max(calibration["curve"].values()), abs=1e-6)
    assert calibration["val_head_micro_f1"] >= calibration["val_best_micro_f1"] - calibration["bootstrap_se"] - 1e-9
    assert f"finding threshold {calibration['finding_threshold']:g}, chosen on the 2 val volumes" in r.stdout
    assert gen.model.finding_embedding.weight.shape == (36, 32)
    r = cli("eval", "--task", "ct-report", *common, "--checkpoint", str(out / "final"), cwd=work)
    assert r.returncode == 0, r.stderr
    assert "finding_head_micro_f1=" in r.stdout and "clinical_micro_f1" in r.stdout
    texts = [gen(v) for v in _test_volumes(work)[:2]]
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    # resuming the finished run without calibration re-saves it with the configured threshold
    r = cli("train", "--task", "ct-report", "--resume", *common, f"stages.shared_dir={work / 'shared'}", f"output_dir={out}", *tokens,
            "model.calibrate_finding_threshold=false", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "finding threshold" not in r.stdout and not (out / "calibration.json").exists()
    assert CTReportGenerator.from_pretrained(out / "final").model.config.finding_threshold == 0.4

    bad = cli("train", "--task", "ct-report", *common, f"output_dir={tmp_path / 'bad'}", "model.finding_loss_weight=0", cwd=work)
    assert bad.returncode == 2 and "model.finding_loss_weight" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_standardized_vision_input_is_fitted_before_the_vision_stage_and_saved(run, tmp_path):
    """model.standardize_vision_input: the input channels' statistics are fitted on the training
    volumes once, before the vision stage, travel with the saved model and its shared vision stage
    (whose fingerprint names the setting: a shared folder trained without it is refused)."""
    from safetensors.torch import load_file

    work, common, _ = run
    out = tmp_path / "std_input"
    shared = f"stages.shared_dir={tmp_path / 'shared'}"
    r = cli("train", "--task", "ct-report", *common, shared, f"output_dir={out}", "model.standardize_vision_input=true", cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("input channel statistics fitted on 10 training volumes") == 1
    weights = load_file(str(out / "final" / "model.safetensors"))
    assert bool(weights["vision_encoder.input_standardizer.fitted"])
    std = weights["vision_encoder.input_standardizer.std"]
    assert std.shape == (11,) and float(std.min()) == pytest.approx(0.01) and float(std.max()) < 1.0
    assert json.loads((out / "final" / "config.json").read_text())["standardize_vision_input"] is True
    r = cli("train", "--task", "ct-report", *common, shared, f"output_dir={tmp_path / 'plain'}",
            "model.standardize_vision_input=false", cwd=work)
    assert r.returncode == 2 and "standardize_vision_input" in r.stderr
