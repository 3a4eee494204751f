"""`medvtc bench --task ct-report`: compressors side by side inside the report generator.

Each variant `compressor@budget` (or `none`: all ViT tokens go to the LM) is trained with the same
config, data, seed and step budget (the task's `stages.*` and `train.*`), under
`bench.output_dir/<variant>`; the compressor-independent warm-ups (tokenizer, `lm`, `vision`) are
trained once under `bench.output_dir/shared` and loaded by every variant; a finished variant is reused when the bench is run again (its
training resumes instead of restarting). Then on the test split: clinical efficacy (micro/macro
F1 from the labeler on generated vs reference reports, and against the label CSV), BLEU-4,
ROUGE-L, METEOR; and per volume: visual tokens, FLOPs of encoder + compressor + LM prefill,
latency of that prefill and of writing the whole report, and peak memory.

With `bench.scale`, the full-size figures (Argus reads CTs up to 512 x 512 x 256): a phantom CT
rendered at that size and written as NIfTI is read, preprocessed and encoded by a model built
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvtc.common import accounting
from medvtc.common.errors import UserError
from medvtc.common.results import ResultRow, quality_cost_plot, write_results


def parse_variant(text: str) -> tuple[str, int | float | None]:
    if text in ("none", "identity"):
        return "none", None
    name, _, budget = text.partition("@")
    if not budget:
        raise UserError(f"bench.variants entry {text!r}: expected 'compressor@budget' (e.g. pixel_shuffle@64) or 'none'")
    try:
        value: int | float = int(budget)
    except ValueError:
        try:
            value = float(budget)
        except ValueError:
            raise UserError(f"bench.variants entry {text!r}: budget {budget!r} is not a number") from None
    return name, value


def _variant_config(cfg, variant: str):
    name, budget = parse_variant(variant)
    model = replace(cfg.model, compressor=name, budget=budget if budget is not None else cfg.model.budget)
    out = Path(cfg.bench.output_dir) / variant.replace("@", "_")
    # The tokenizer and the lm/vision warm-ups do not depend on the compressor: train them once.
    shared = cfg.stages.shared_dir or str(Path(cfg.bench.output_dir) / "shared")
    return replace(cfg, model=model, output_dir=str(out), stages=replace(cfg.stages, shared_dir=shared))


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


def run_benchmark(task, cfg, output: str) -> list[ResultRow]:
    from medvtc.medical.ct_report.pipeline import CTReportGenerator
    from medvtc.medical.ct_report.task import ReportCollator, generate_reports, score_reports, validation_loss

    torch.manual_seed(cfg.seed)
    task._ensure_data(cfg)
    test_set = task.datasets(cfg, ("test",))["test"]
    rows: list[ResultRow] = []
    log: list[str] = []
    for variant in cfg.bench.variants:
        vcfg = _variant_config(cfg, variant)
        final = Path(vcfg.output_dir) / "final"
        t0 = time.perf_counter()
        trained_here = not (final / "config.json").is_file()
        if trained_here:
            print(f"medvtc bench: training {variant} in {vcfg.output_dir}")
            task.train(vcfg, resume=True)
        train_s = time.perf_counter() - t0
        gen = CTReportGenerator.from_pretrained(final, device="cpu")
        model = gen.model
        predictions = generate_reports(model, gen.tokenizer, test_set, torch.device("cpu"), cfg.generation)
        metrics = score_reports(predictions, test_set)
        metrics.update(validation_loss(model, test_set, torch.device("cpu"), ReportCollator(gen.tokenizer, cfg.model.max_report_tokens)))
        pixel_values = test_set[0]["image"][None]
        cost = _cost(model, pixel_values, cfg.bench.repeats, cfg.generation)
        keep = ["clinical_micro_f1", "clinical_macro_f1", "label_micro_f1", "label_macro_f1", "bleu4", "rouge_l", "meteor",
                "distinct_reports", "image_gain"]
        row = ResultRow(
            method=variant, tokens=int(model.num_visual_tokens), flops=cost["flops"],
            params=accounting.count_params(model), latency_ms=cost["latency_ms"], peak_mem_mb=cost["peak_mem_mb"],
            metrics={**{k: round(float(metrics[k]), 4) for k in keep if k in metrics},
                     "report_latency_ms": round(cost["report_latency_ms"], 1), "vit_tokens": int(model.config.num_patches),
                     # wall time of task.train when this run trained the variant (the first one trained also
                     # pays for the shared warm-ups)
                     **({"train_s": round(train_s, 1)} if trained_here else {})},
        )
        rows.append(row)
        msg = (f"{variant:18s} K={row.tokens:5d} micro-F1={metrics.get('clinical_micro_f1', float('nan')):.4f} "
               f"BLEU-4={metrics.get('bleu4', float('nan')):.4f} GFLOPs={row.flops / 1e9:.2f} prefill={row.latency_ms:.1f} ms"
               + (f" (trained in {train_s:.0f} s)" if trained_here else ""))
        print("medvtc bench: " + msg)
        log.append(msg)
        write_results("ct-report", rows, {"partial": True, "variants": list(cfg.bench.variants)}, output, name="ct-report.partial")

    scale = run_scale(cfg) if cfg.bench.scale else None
    extra = _targets_markdown(rows, scale)
    from medvtc.common.config import to_dict

    config = {**to_dict(cfg), "scale": scale}
    write_results("ct-report", rows, config, output, plot=_plot, markdown_extra=extra)
    for suffix in ("json", "md", "png"):
        Path(output, f"ct-report.partial.{suffix}").unlink(missing_ok=True)
    print(extra)
    return rows


def _targets_markdown(rows: list[ResultRow], scale: dict[str, Any] | None) -> str:
    lines = ["", "### Target: >= 8x fewer visual tokens, clinical micro F1 within 1 point of uncompressed", ""]
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
            f1 = r.metrics.get("clinical_micro_f1")
            ok = ratio >= 8 and f1 is not None and f0 is not None and f1 >= f0 - 0.01
            lines.append(f"- {r.method}: {ratio:.0f}x fewer tokens, micro F1 {f1:.4f} vs {f0:.4f} "
                         f"({(f1 - f0) * 100:+.2f} points), FLOPs {base.flops / max(r.flops, 1):.1f}x fewer: "
                         f"{'met' if ok else 'not met'}")
    if scale:
        lines += ["", "### Full-size CT (untrained model: cost only)", ""]
        for item in scale.get("runs", []):
            if item.get("ok"):
                lines.append(
                    f"- {item['path']} {tuple(item['size'])}: {item['vit_tokens']} ViT tokens -> {item['visual_tokens']} LM tokens; "
                    f"read+preprocess {item['load_s']:.1f} s, encode+prefill+16 tokens {item['report_s']:.1f} s, "
                    f"peak RSS {item['peak_rss_mb']:.0f} MiB"
                )
            else:
                lines.append(f"- {item['path']} {tuple(item['size'])}: failed ({item.get('error', '?')})")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    quality_cost_plot(rows, path, "clinical_micro_f1", "clinical micro F1 (test)",
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
                "budget": budget, "seed": cfg.seed, "hu_bins": list(cfg.data.hu_bins)}
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
    t0 = time.perf_counter()
    pixels = load_ct_volume(spec["volume"], spatial_size=spec["size"], hu_bins=spec.get("hu_bins") or ())[None]
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(pixels, max_new_tokens=16, min_new_tokens=16)
    report_s = time.perf_counter() - t0
    return {"ok": True, "load_s": load_s, "report_s": report_s, "vit_tokens": int(config.num_patches),
            "visual_tokens": int(model.num_visual_tokens), "peak_rss_mb": (_vm_hwm_bytes() or 0) / 2**20}


if __name__ == "__main__":  # the scale subprocess
    print(json.dumps(_scale_child(json.loads(sys.argv[1]))))
