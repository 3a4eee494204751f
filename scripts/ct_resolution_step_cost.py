"""Rough CPU cost of the ct-report model per training step at two input sizes (issue 18, the Argus
experiment: the phantom at its full 128 x 128 x 64 against downsampled to 64 x 64 x 32):

    OMP_NUM_THREADS=1 python scripts/ct_resolution_step_cost.py [--sizes 64,64,32 128,128,64] [--budget 64]
                                                                [--batch 8] [--steps 2] [key=value ...]

Writes a few phantom CTs with their reports at `data.phantom_shape` into a temporary folder, builds
the task's model (`medvtc/configs/ct-report.yaml` plus overrides; pixel shuffle to `--budget` LM
tokens) at each input size, and times, after one warm-up, the median of `--steps` steps of each
stage that costs differently with the input: `vision` (ViT + label probe, forward + backward +
AdamW), `align` (ViT frozen: the cached tokens -> compressor -> LM), `finetune` (everything, from
the volumes), the ViT's forward alone per volume (building the token cache) and reading +
preprocessing one NIfTI. The reports are the phantom's; the tokenizer is trained on 300 of them
with `model.vocab_size`, as training does on the training split. Rough: a few steps on a shared
machine. Prints one line per size (and the process's peak RSS so far: run one size alone for
its own peak) and the JSON, which `-o FILE` also writes."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _median_step(fn, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--sizes", nargs="+", default=["64,64,32", "128,128,64"])
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("-o", "--output")
    args = parser.parse_args()

    from medvtc.common.accounting import _vm_hwm_bytes
    from medvtc.datasets.ct_phantom import generate_ct_rate
    from medvtc.datasets.ct_rate import read_ct_rate, report_text
    from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS
    from medvtc.medical.ct_report.evaluation import ReportCollator
    from medvtc.medical.ct_report.pretraining import LabelProbe
    from medvtc.medical.ct_report.tokenizer import train_report_tokenizer
    from medvtc.tasks import get_task

    task = get_task("ct-report")
    base = task.load_config(None, args.overrides)
    out: dict = {"batch": args.batch, "steps": args.steps, "budget": args.budget, "threads": torch.get_num_threads(),
                 "phantom_shape": list(base.data.phantom_shape), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "phantom"
        n = max(args.batch, 4)
        generate_ct_rate(root, num_train=n, num_val=1, num_test=1, seed=0, shape=tuple(base.data.phantom_shape),
                         spacing=tuple(base.data.phantom_spacing), progress=False, workers=1)
        records = read_ct_rate(root, "train", 0.0)[: args.batch]
        # the tokenizer as training makes it: model.vocab_size, trained on a few hundred reports
        # (written with tiny volumes: the reports do not depend on the volumes' size)
        corpus = Path(tmp) / "reports"
        generate_ct_rate(corpus, num_train=300, num_val=1, num_test=1, seed=0, shape=(32, 32, 16),
                         spacing=tuple(base.data.phantom_spacing), progress=False, workers=1)
        tok = train_report_tokenizer([report_text(r) for r in read_ct_rate(corpus, "train", 0.0)],
                                     vocab_size=base.model.vocab_size)
        for text in args.sizes:
            size = [int(s) for s in text.split(",")]
            cfg = task.load_config(None, [*args.overrides, f"data.root={root}", f"data.spatial_size={size}",
                                          "model.compressor=pixel_shuffle", f"model.budget={args.budget}"])
            train_set = task.datasets(cfg, ("train",))["train"]
            t = time.perf_counter()
            items = [train_set[i] for i in range(len(records))]
            read_s = (time.perf_counter() - t) / len(items)
            torch.manual_seed(0)
            model = task.build_model(cfg, tok)
            collate = ReportCollator(tok, cfg.model.max_report_tokens)
            batch = collate(items)
            pixels = batch["pixel_values"]
            row = {"input": size, "vit_tokens": int(model.config.num_patches), "lm_tokens": int(model.num_visual_tokens),
                   "read_preprocess_s_per_volume": round(read_s, 3), "report_tokens": int(batch["input_ids"].shape[1])}

            probe = LabelProbe(model, len(CT_RATE_LABELS))
            labels = torch.as_tensor(np.stack([r.labels for r in records]), dtype=torch.float32)
            model.freeze_for_stage("vision")
            opt = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], lr=1e-4)

            def vision_step():
                probe(pixels, labels).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            row["vision_step_s"] = _median_step(vision_step, args.steps)
            model.eval()
            with torch.no_grad():
                row["vit_forward_s_per_volume"] = _median_step(lambda: model.vision_encoder(pixels), args.steps) / len(items)
                tokens = model.vision_encoder(pixels)
            model.train()
            model.freeze_for_stage(1, train_language_model=True)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            cached = {k: v for k, v in batch.items() if k != "pixel_values"} | {"vision_tokens": tokens}

            def align_step():
                model(**cached).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            row["align_step_s"] = _median_step(align_step, args.steps)
            model.freeze_for_stage(2)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

            def finetune_step():
                model(**batch).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            row["finetune_step_s"] = _median_step(finetune_step, args.steps)
            row["peak_rss_mb_so_far"] = (_vm_hwm_bytes() or 0) / 2**20  # the process's peak up to here (sizes run in order)
            row = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
            out["sizes"]["x".join(map(str, size))] = row
            print(f"{'x'.join(map(str, size))}: {row['vit_tokens']} ViT tokens -> {row['lm_tokens']} LM tokens, batch {args.batch}: "
                  f"vision step {row['vision_step_s']:.2f} s, align step (cached tokens) {row['align_step_s']:.2f} s, "
                  f"finetune step {row['finetune_step_s']:.2f} s, ViT forward {row['vit_forward_s_per_volume']:.3f} s/volume, "
                  f"read+preprocess {row['read_preprocess_s_per_volume']:.3f} s/volume, peak RSS so far "
                  f"{row['peak_rss_mb_so_far']:.0f} MiB", flush=True)
    print(json.dumps(out, indent=1))
    if args.output:
        from medvtc.common.io import atomic_write_json

        atomic_write_json(args.output, out)


if __name__ == "__main__":
    main()
