"""`medvtc bench --task ct-report`: compressors side by side inside the report generator.

Run through the shared runner (`medvtc.common.bench_runner`): each variant of `bench.variants`
(`none`: all ViT tokens go to the LM; `compressor@budget`, e.g. `pixel_shuffle@64`; or a named
ablation of `ABLATIONS`) is trained once per seed of `bench.seeds` with the same config, data and
stage budgets (the task's `stages.*` and `train.*`) under `bench.output_dir/<variant>/seed_<s>`,
reused on a later run only when its training settings match (`--retrain` retrains). The
compressor-independent warm-ups (tokenizer, `lm`, `vision`) and the frozen ViT's token cache
(the `align` stage reads it) are made once per seed under `bench.output_dir/shared/seed_<s>` and
shared by every variant. Then on the test split, per volume: the report, the labels the labeler
reads from it and from the reference (and the label CSV's), ROUGE-L, METEOR and BLEU's n-gram
counts; from these clinical micro/macro F1, label F1, corpus BLEU-4, ROUGE-L and METEOR with 95 %
bootstrap intervals and paired differences to `none`. Cost per volume: visual tokens, FLOPs of
encoder + compressor + LM prefill, latency of that prefill and of writing the whole report, and
peak memory. The align stage's training throughput with and without the token cache is measured
side by side once (`align_throughput`).

With `bench.scale`, the full-size figures (Argus reads CTs up to 512 x 512 x 256): a phantom CT
rendered at that size and written as NIfTI is read, preprocessed (channels stored in
`scale_dtype`, float16 by default: the ViT casts them slab by slab) and encoded by a model built
for that input (patch `scale_patch`), once through the compressed path (pixel-shuffle to
`scale_budget` tokens) and once uncompressed, each in its own subprocess so one's peak memory
cannot hide the other's. These are untrained models: the figures are cost, not quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvtc.common import accounting
from medvtc.common.bench_runner import BenchSpec, Evaluation, Variant, run_bench
from medvtc.common.compressors import list_compressors
from medvtc.common.config import load_config, to_dict
from medvtc.common.intervals import target_status
from medvtc.common.results import ResultRow, quality_cost_plot
from medvtc.medical.ct_report.evaluation import (
    ReportCollator,
    case_statistics,
    generate_reports,
    report_cases,
    score_reports,
    validation_loss,
)

TOKEN_RATIO_TARGET = 8
F1_MARGIN = 0.01  # "clinical micro F1 within 1 point of the uncompressed model"
# Named ablations: variant name -> config overrides (none yet beyond method@budget).
ABLATIONS: dict[str, list[str]] = {}


def _cost(model, pixel_values: torch.Tensor, repeats: int, gen) -> dict[str, float]:
    """FLOPs, latency and peak memory of the prefill (encoder + compressor + LM over the prefix)
    and the latency of writing a whole report, for one volume."""
    prefill = lambda: model(pixel_values=pixel_values)  # noqa: E731
    write = lambda: model.generate(pixel_values, max_new_tokens=gen.max_new_tokens, num_beams=gen.num_beams)  # noqa: E731
    return {
        "flops": accounting.count_flops(prefill),
        "peak_mem_mb": accounting.measure_peak_memory(prefill),
        "latency_ms": accounting.measure_latency(prefill, warmup=1, repeats=repeats),
        "report_latency_ms": accounting.measure_latency(write, warmup=0, repeats=max(1, repeats // 2)),
    }


class CTReportBench(BenchSpec):
    task = "ct-report"
    reference = "none"
    method_key = "model.compressor"
    budget_key = "model.budget"
    ablations = ABLATIONS
    methods = ("none", "identity", *list_compressors())
    settings_sections = ("seed", "data", "model", "stages", "train")
    keep_whole = ("compressor_args",)

    def __init__(self, task) -> None:
        self.ct_task = task
        self.statistics = case_statistics()
        self._test_set = None
        self.plot = _plot

    def variant_config(self, cfg, variant: Variant, seed: int, run_dir: Path):
        from medvtc.common.compressors import resolve_compressor_args
        from medvtc.common.errors import UserError

        vcfg = super().variant_config(cfg, variant, seed, run_dir)
        # the tokenizer, lm/vision warm-ups and the ViT token cache do not depend on the compressor
        shared = cfg.stages.shared_dir or str(Path(cfg.bench.output_dir) / "shared" / f"seed_{seed}")
        vcfg = load_config(type(cfg), None, [f"stages.shared_dir={shared}"], base=to_dict(vcfg))
        m = vcfg.model
        if m.compressor not in ("none", "identity"):  # a budget the method cannot lay out: now, not hours later
            grid = tuple(s // p for s, p in zip(vcfg.data.spatial_size, m.patch_size))
            try:
                resolve_compressor_args(m.compressor, m.budget, dict(m.compressor_args), grid=grid,
                                        dim=m.vision_hidden_size, heads=m.vision_heads)
            except ValueError as e:
                raise UserError(f"bench.variants entry {variant.name!r}: {e}") from None
        return vcfg

    def prepare(self, cfg) -> None:
        """Data, and the shared warm-up stages of every seed checked before the first variant:
        stages trained under other settings stop the bench naming the key, or with --retrain are
        removed so that they train again."""
        import shutil

        from medvtc.common.errors import UserError

        seeds = list(cfg.bench.seeds) or [cfg.seed]
        if cfg.stages.shared_dir and len(seeds) > 1:
            raise UserError(f"stages.shared_dir={cfg.stages.shared_dir} holds one seed's warm-up stages; with "
                            f"bench.seeds={seeds} leave it unset (each seed gets bench.output_dir/shared/seed_<s>)")
        self.ct_task._ensure_data(cfg)
        for seed in seeds:
            vcfg = self.variant_config(cfg, Variant("none", "none"), seed, Path(cfg.bench.output_dir) / "none" / f"seed_{seed}")
            for stage in ("lm", "vision"):
                done = Path(vcfg.stages.shared_dir) / f"stage_{stage}" / "done.json"
                if not done.is_file():
                    continue
                try:
                    self.ct_task._check_fingerprint(done, self.ct_task._fingerprint(vcfg, stage), stage)
                except UserError:
                    if not self.retrain:
                        raise
                    print(f"medvtc bench: --retrain: removing {done.parent}")
                    shutil.rmtree(done.parent)

    def train_seconds(self, run_dir: Path) -> float | None:
        """The variant's own stages' training time (align + finetune, from their logs, carried
        over resumes); the shared warm-ups are not counted."""
        from medvtc.common.trainer import read_training_summary

        times = [read_training_summary(d) for d in sorted(run_dir.glob("stage_*")) if (d / "metrics.csv").is_file()]
        times = [t["train_s"] for t in times if t and "train_s" in t]
        return float(sum(times)) if times else None

    def settings(self, cfg_tree):
        flat = super().settings(cfg_tree)
        flat.pop("stages.shared_dir", None)  # where the shared stages live, not what they are
        flat.pop("data.cache", None)  # in-memory caching of volumes changes no weight
        flat.pop("data.persistent_cache_dir", None)  # nor does caching them on disk
        if flat.get("data.dtype") == "float32":  # the default; runs made before the key existed stay comparable
            flat.pop("data.dtype")
        return flat

    def eval_settings(self, cfg) -> dict[str, Any]:
        return {"generation": to_dict(cfg.generation), "test_root": str(Path(cfg.data.root).resolve()),
                "repeats": cfg.bench.repeats}

    def test_set(self, cfg):
        if self._test_set is None:
            self._test_set = self.ct_task.datasets(cfg, ("test",))["test"]
        return self._test_set

    def train(self, vcfg) -> None:
        self.ct_task.train(vcfg, resume=True)

    def evaluate(self, vcfg, variant: Variant) -> Evaluation:
        from medvtc.medical.ct_report.pipeline import CTReportGenerator

        gen = CTReportGenerator.from_pretrained(Path(vcfg.output_dir) / "final", device="cpu")
        model, test_set, cpu = gen.model, self.test_set(vcfg), torch.device("cpu")
        predictions = generate_reports(model, gen.tokenizer, test_set, cpu, vcfg.generation)
        scores = score_reports(predictions, test_set)
        diag = validation_loss(model, test_set, cpu, ReportCollator(gen.tokenizer, vcfg.model.max_report_tokens))
        cost = _cost(model, test_set[0]["image"][None], vcfg.bench.repeats, vcfg.generation)
        metrics = {"distinct_reports": round(scores["distinct_reports"], 4), "image_gain": round(diag["image_gain"], 4),
                   "test_loss": round(diag["loss"], 4)}
        return Evaluation(
            cases=report_cases(predictions, test_set), metrics=metrics,
            cost={"tokens": int(model.num_visual_tokens), "flops": cost["flops"], "params": accounting.count_params(model),
                  "latency_ms": cost["latency_ms"], "peak_mem_mb": cost["peak_mem_mb"],
                  "metrics": {"report_latency_ms": round(cost["report_latency_ms"], 1),
                              "vit_tokens": int(model.config.num_patches)}},
        )

    def after_all(self, cfg, vcfgs) -> None:
        # once every variant is trained and scored: the cache's speed-up and the full-size cost
        if cfg.bench.throughput_steps > 0:
            self.throughput = align_throughput(self.ct_task, cfg, cfg.bench.throughput_steps)
        self.scale = run_scale(cfg) if cfg.bench.scale else None

    def markdown_extra(self, rows: list[ResultRow], cfg) -> str:
        return _targets_markdown(rows, self.scale, self.throughput)

    def results_config(self, cfg) -> dict[str, Any]:
        return {**to_dict(cfg), "scale": getattr(self, "scale", None), "align_throughput": getattr(self, "throughput", None)}

    scale: dict[str, Any] | None = None
    throughput: dict[str, Any] | None = None


def run_benchmark(task, cfg, output: str, retrain: bool = False) -> list[ResultRow]:
    torch.manual_seed(cfg.seed)
    return run_bench(CTReportBench(task), cfg, output, retrain=retrain)


def align_throughput(task, cfg, steps: int) -> dict[str, Any]:
    """Training samples/s of the align stage (ViT frozen; compressor + projector + LM train) from
    the volumes and from the token cache, measured side by side in one process: the same model,
    batches of the same volumes and reports, the two paths alternating step by step. The volumes
    are preprocessed and held in memory beforehand (as the training loop's data.cache does), so
    the figure is the ViT forward the cache saves, not disk reading."""
    from medvtc.common.token_cache import CachedTokenDataset
    from medvtc.datasets.ct_rate import report_text

    seed = int(cfg.bench.seeds[0]) if cfg.bench.seeds else cfg.seed
    vcfg = CTReportBench(task).variant_config(cfg, Variant("pixel_shuffle@64", "pixel_shuffle", 64), seed,
                                              Path(cfg.bench.output_dir) / "throughput")
    shared = Path(vcfg.stages.shared_dir)
    train_set = task.datasets(vcfg, ("train",))["train"]
    tokenizer = task.tokenizer(vcfg, train_set, shared)
    torch.manual_seed(seed)
    model = task.build_model(vcfg, tokenizer)
    from medvtc.common import checkpoint as ckpt

    vision_ckpt = ckpt.latest_checkpoint(shared / "stage_vision" / "checkpoints") if (shared / "stage_vision").exists() else None
    if vision_ckpt is not None:  # the cache of the shared, trained ViT is the one every variant reuses
        from medvtc.medical.ct_report.pretraining import LabelProbe

        labels = torch.as_tensor(np.stack([r.labels for r in train_set.records]))
        ckpt.load_weights(LabelProbe(model, labels.shape[1], torch.ones(labels.shape[1])), vision_ckpt)
    t0 = time.perf_counter()
    cache = task.token_cache(vcfg, model, train_set, shared)
    cache_s = time.perf_counter() - t0
    if model.token_standardizer is not None:
        model.token_standardizer.fit(torch.stack([cache.tokens(i) for i in range(s, min(len(cache), s + 16))])
                                     for s in range(0, len(cache), 16))
    model.freeze_for_stage(1, train_language_model=vcfg.stages.align_language_model)
    model.train()
    collate = ReportCollator(tokenizer, vcfg.model.max_report_tokens)
    cached = CachedTokenDataset(cache, [{"report": report_text(r)} for r in train_set.records], key="vision_tokens")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=vcfg.stages.align_lr)
    bs = vcfg.train.batch_size
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_set))[: bs * (steps + 1)]
    for i in order:  # preprocess (and hold in memory) the volumes first
        train_set[int(i)]
    times = {"volumes": [], "cache": []}
    for step in range(steps + 1):
        idx = [int(i) for i in order[step * bs : (step + 1) * bs]] or [int(i) for i in order[:bs]]
        for path in ("volumes", "cache"):
            t = time.perf_counter()
            batch = collate([train_set[i] for i in idx] if path == "volumes" else [cached[i] for i in idx])
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step > 0:  # the first step warms both paths up
                times[path].append(time.perf_counter() - t)
    out = {path: round(bs * len(v) / sum(v), 2) for path, v in times.items()}
    result = {"batch_size": bs, "steps": steps, "samples_per_s_volumes": out["volumes"], "samples_per_s_cache": out["cache"],
              "speedup": round(out["cache"] / out["volumes"], 2), "threads": torch.get_num_threads(),
              "cache_build_or_open_s": round(cache_s, 1), "cache": str(cache.path)}
    print(f"medvtc bench: align stage {out['volumes']:.1f} samples/s from volumes, {out['cache']:.1f} from the token cache "
          f"({result['speedup']:.2f}x)")
    return result


def _targets_markdown(rows: list[ResultRow], scale: dict[str, Any] | None, throughput: dict[str, Any] | None = None) -> str:
    lines = ["", f"### Target: >= {TOKEN_RATIO_TARGET}x fewer visual tokens, clinical micro F1 within {F1_MARGIN * 100:.0f} point of "
             "uncompressed (met only when the whole paired-difference interval lies above -1 point)", ""]
    base = next((r for r in rows if r.method == "none"), None)
    if base is None:
        lines.append("(no `none` variant in this run)")
    else:
        f0 = base.metrics.get("clinical_micro_f1")
        if base.metrics.get("distinct_reports", 1.0) < 0.5:
            lines.append(f"(the uncompressed model writes the same report for most volumes: distinct reports "
                         f"{base.metrics['distinct_reports']:.2f}; F1 differences below say little about the compressors)")
        if base.metrics.get("image_gain", 1.0) < 0.01:
            lines.append(f"(the uncompressed model's test loss barely depends on its own image: image gain "
                         f"{base.metrics['image_gain']:.4f} nats per token against mismatched volumes)")
        for r in rows:
            if r is base:
                continue
            ratio = base.tokens / max(r.tokens, 1)
            f1, diff, ci = r.metrics.get("clinical_micro_f1"), r.metrics.get("clinical_micro_f1_diff"), r.metrics.get("clinical_micro_f1_diff_ci")
            if f1 is None or f0 is None or ci is None or None in ci:
                lines.append(f"- {r.method}: no paired difference")
                continue
            status = target_status(ci, F1_MARGIN)
            if ratio < TOKEN_RATIO_TARGET:
                status = f"{status} on F1, but only {ratio:.1f}x fewer tokens"
            lines.append(f"- {r.method}: {ratio:.0f}x fewer tokens, micro F1 {f1:.3f} vs {f0:.3f}, difference "
                         f"{diff * 100:+.1f} points [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}], FLOPs "
                         f"{base.flops / max(r.flops, 1):.1f}x fewer: **{status}**")
    if throughput:
        lines += ["", "### Align stage (ViT frozen): training throughput with the token cache", "",
                  f"- batch {throughput['batch_size']}, {throughput['steps']} steps each, alternating, {throughput['threads']} threads: "
                  f"{throughput['samples_per_s_volumes']:.1f} samples/s from the volumes, {throughput['samples_per_s_cache']:.1f} "
                  f"from the token cache: **{throughput['speedup']:.2f}x**"]
    if scale:
        lines += ["", *_scale_lines(scale)]
    return "\n".join(lines) + "\n"


def _scale_lines(scale: dict[str, Any]) -> list[str]:
    """The full-size CT section (`run_scale`'s result) as markdown lines."""
    lines = ["### Full-size CT (untrained model: cost only)", ""]
    for item in scale.get("runs", []):
        if item.get("ok"):
            lines.append(
                f"- {item['path']} {tuple(item['size'])}: {item['vit_tokens']} ViT tokens -> {item['visual_tokens']} LM tokens; "
                f"read+preprocess {item['load_s']:.1f} s, encode+prefill+16 tokens {item['report_s']:.1f} s, "
                f"peak RSS {item['peak_rss_mb']:.0f} MiB"
                + (f" (after read+preprocess {item['load_peak_rss_mb']:.0f} MiB; {item['base_rss_mb']:.0f} MiB before "
                   f"reading: interpreter, libraries, model; the model's input alone {item['input_mb']:.0f} MiB"
                   + (f" in {item['dtype']}" if "dtype" in item else "") + ")"
                   if "load_peak_rss_mb" in item else "")
            )
        else:
            lines.append(f"- {item['path']} {tuple(item['size'])}: failed ({item.get('error', '?')})")
    return lines


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    quality_cost_plot(rows, path, "clinical_micro_f1", "clinical micro F1 (test, 95 % CI)",
                      [("tokens", "visual tokens given to the LM", True),
                       ("flops", "encoder + prefill GFLOPs per volume", False)], scale={"flops": 1e9})


# ------------------------------------------------------------------------------------------------
# Full-size CT: each path in a subprocess, so peak memory is that path's alone
# ------------------------------------------------------------------------------------------------
def run_scale(cfg) -> dict[str, Any]:
    from medvtc.datasets.ct_phantom import render_phantom, sample_case

    b = cfg.bench
    size = tuple(int(s) for s in b.scale_size)
    work = Path(b.output_dir) / "scale"
    work.mkdir(parents=True, exist_ok=True)
    volume = work / f"phantom_{'x'.join(map(str, size))}.nii.gz"
    if not volume.is_file():
        import nibabel as nib

        from medvtc.common.io import atomic_path

        rng = np.random.default_rng([cfg.seed, 512])
        hu, affine = render_phantom(sample_case(rng), rng, shape=size)
        with atomic_path(volume) as tmp:
            nib.save(nib.Nifti1Image(hu, affine), str(tmp) + ".nii.gz")
            os.replace(str(tmp) + ".nii.gz", tmp)
        del hu
    runs = []
    for path, compressor, budget in (("compressed", "pixel_shuffle", b.scale_budget), ("uncompressed", "none", None)):
        spec = {"volume": str(volume), "size": list(size), "patch": list(b.scale_patch), "compressor": compressor,
                "budget": budget, "seed": cfg.seed, "hu_bins": list(cfg.data.hu_bins), "dtype": b.scale_dtype}
        proc = subprocess.run([sys.executable, "-m", "medvtc.medical.ct_report.bench", json.dumps(spec)],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            item = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["killed"]
            item = {"ok": False, "error": f"exit {proc.returncode}: {tail[0][:200]}"}
        item.update(path=path, size=list(size))
        print(f"medvtc bench: scale {path}: {item}")
        runs.append(item)
    return {"volume": str(volume), "runs": runs}


def _scale_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Read the full-size NIfTI and write 16 report tokens with an untrained model built for it."""
    import psutil

    from medvtc.common.accounting import _vm_hwm_bytes
    from medvtc.datasets.ct_rate import ct_input_channels, load_ct_volume
    from medvtc.medical.ct_report.configuration_ct_report import CTReportConfig
    from medvtc.medical.ct_report.modeling_ct_report import CTReportModel
    from medvtc.medical.ct_report.tokenizer import train_report_tokenizer

    torch.manual_seed(spec["seed"])
    tok = train_report_tokenizer(["no pleural effusion. heart size is normal. no lung nodule."] * 4, vocab_size=300)
    config = CTReportConfig.from_tokenizer(
        tok, image_size=tuple(spec["size"]), in_channels=ct_input_channels(spec.get("hu_bins")),
        patch_size=tuple(spec["patch"]), compressor=spec["compressor"],
        compressor_budget=spec["budget"] or 1, vision_gradient_checkpointing=False,
        text_config={"max_position_embeddings": 32768},
    )
    model = CTReportModel(config).eval()
    base_rss = psutil.Process().memory_info().rss  # interpreter, libraries and the model, before the CT
    t0 = time.perf_counter()
    pixels = load_ct_volume(spec["volume"], spatial_size=spec["size"], hu_bins=spec.get("hu_bins") or (),
                            dtype=spec.get("dtype", "float32"))[None]
    load_s = time.perf_counter() - t0
    load_peak = _vm_hwm_bytes() or 0
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(pixels, max_new_tokens=16, min_new_tokens=16)
    report_s = time.perf_counter() - t0
    return {"ok": True, "load_s": load_s, "report_s": report_s, "vit_tokens": int(config.num_patches),
            "visual_tokens": int(model.num_visual_tokens), "peak_rss_mb": (_vm_hwm_bytes() or 0) / 2**20,
            "load_peak_rss_mb": load_peak / 2**20, "base_rss_mb": base_rss / 2**20,
            "input_mb": pixels.numel() * pixels.element_size() / 2**20, "dtype": str(pixels.dtype).removeprefix("torch.")}


if __name__ == "__main__":  # the scale subprocess
    print(json.dumps(_scale_child(json.loads(sys.argv[1]))))
