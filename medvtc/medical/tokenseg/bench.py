"""`medvtc bench --task tokenseg`: TokenSeg against MONAI's networks, and what its boundary-aware
selection buys.

For every network of `bench.models` (TokenSeg, UNet, SegResNet, UNETR, SwinUNETR) and every
ablation of `bench.ablations` (TokenSeg with a core compressor, e.g. random / pooling / DivPrune,
in place of its boundary-aware selection, at the same K), trained with the task's config, data,
loss, optimiser, seed and step budget under `bench.output_dir/<name>` (a finished run is reused;
an interrupted one resumes):

- held-out (test split) Dice, IoU, HD95 and surface Dice, per class and mean, by sliding-window
  inference with the training ROI; for TokenSeg rows the share of kept tokens near a label edge;
- parameters; FLOPs (torch's counter, `medvtc.common.accounting`), peak memory and latency of
  one inference forward pass on a 1 x C x S^3 volume for each S of `bench.sizes` (128 and 96),
  with the network built for that input size (UNETR's position embeddings depend on it;
  TokenSeg keeps its N = 400 / K = 100 tokens and plans its cells for that size). The row's
  `flops` / `latency_ms` / `peak_mem_mb` are those of the first size; every size's figures and
  their ratios to SwinUNETR measured in the same run are in `metrics`.

Partial results are written after each network (`<output>/tokenseg.partial.*`), the final
ones to `<output>/tokenseg.{json,md,png}` with the targets checked in the markdown.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from medvtc.common import accounting
from medvtc.common.errors import UserError
from medvtc.common.results import ResultRow, quality_cost_plot, write_results

BASELINE = "swinunetr"


def _variants(cfg) -> list[tuple[str, str, str]]:
    """(row name, model.name, selection) for every network and ablation."""
    out = [(m, m, "boundary") for m in cfg.bench.models]
    out += [(f"tokenseg+{a}", "tokenseg", a) for a in cfg.bench.ablations]
    return out


def _variant_config(cfg, model_name: str, selection: str, row: str):
    model = replace(cfg.model, name=model_name, selection=selection)
    train = cfg.train if cfg.bench.max_steps is None else replace(cfg.train, max_steps=cfg.bench.max_steps)
    return replace(cfg, model=model, train=train, output_dir=str(Path(cfg.bench.output_dir) / row.replace("+", "-")))


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("bench.device=cuda was asked for, but no CUDA device is available")
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu")


def measure_cost(task, vcfg, in_channels: int, num_classes: int, size: int, device: torch.device, repeats: int) -> dict[str, float]:
    """FLOPs, peak memory (above the weights and the input) and latency of one forward pass on
    [1, C, size^3] in eval mode without gradients, for the network built for that size."""
    torch.manual_seed(vcfg.seed)
    held: dict[str, Any] = {}
    try:
        held["model"] = task.build_model(vcfg, in_channels, num_classes, img_size=(size, size, size)).to(device).eval()
        held["x"] = torch.randn(1, in_channels, size, size, size, device=device)

        def fn():
            return held["model"](held["x"])

        with torch.no_grad():
            fn()  # warm-up (cuDNN autotuning, lazy allocations) before the counters
            flops = accounting.count_flops(fn)
            peak = accounting.measure_peak_memory(fn, device)
            latency = accounting.measure_latency(fn, device, warmup=1, repeats=repeats, max_seconds=120.0)
    except (RuntimeError, MemoryError) as e:  # e.g. out of memory: record it, keep benchmarking the rest
        msg = " ".join(str(e).split())[:200]
        print(f"medvtc bench: {vcfg.model.name} at {size}^3 failed: {msg}")
        return {"flops": math.nan, "peak_mem_mb": math.nan, "latency_ms": math.nan, "error": msg}
    finally:
        held.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"flops": flops, "peak_mem_mb": peak, "latency_ms": latency}


def _check_reusable(vcfg, saved: Path, row: str) -> None:
    """A finished run is reused only if it was trained with the settings this run would use."""
    from medvtc.common.config import read_yaml, run_settings_diff, to_dict

    if not saved.is_file():
        return
    diff = run_settings_diff(read_yaml(saved), to_dict(vcfg), ("seed", "data", "model", "train"),
                             keep_whole=("selection_args", "baseline_args"))
    # A MONAI network depends on model.name, img_size and baseline_args only; TokenSeg on the rest.
    monai_keys = {"model.name", "model.img_size", "model.baseline_args"}
    if vcfg.model.name == "tokenseg":
        diff = [d for d in diff if d[0] != "model.baseline_args"]
    else:
        diff = [d for d in diff if not d[0].startswith("model.") or d[0] in monai_keys]
    if diff:
        key, old, new = diff[0]
        raise UserError(
            f"{saved.parent.parent} holds a finished {row!r} run trained with other settings ({key}: {old!r} there, "
            f"{new!r} now{f', and {len(diff) - 1} more' if len(diff) > 1 else ''}); remove that folder or set "
            "bench.output_dir to another one"
        )


def run_benchmark(task, cfg, output: str) -> list[ResultRow]:
    from medvtc.common.config import to_dict
    from medvtc.medical.tokenseg.networks import num_tokens

    torch.manual_seed(cfg.seed)
    task._ensure_data(cfg)
    info = task.info(cfg)
    device = _device(cfg.bench.device)
    sizes = [int(s) for s in cfg.bench.sizes]
    if not sizes:
        raise UserError("bench.sizes is empty: give at least one cubic input size, e.g. [128, 96]")
    rows: list[ResultRow] = []
    costs: dict[str, dict[int, dict[str, float]]] = {}
    for row_name, model_name, selection in _variants(cfg):
        vcfg = _variant_config(cfg, model_name, selection, row_name)
        final = Path(vcfg.output_dir) / "final"
        t0 = time.perf_counter()
        if (final / "model.safetensors").is_file():
            _check_reusable(vcfg, final / "config.yaml", row_name)
        else:
            print(f"medvtc bench: training {row_name} in {vcfg.output_dir}")
            task.train(vcfg, resume=True)
        train_s = time.perf_counter() - t0
        metrics, model, _ = task.evaluate_checkpoint(vcfg, str(final), "test", device)
        params = accounting.count_params(model)
        del model
        costs[row_name] = {s: measure_cost(task, vcfg, info.in_channels, info.num_classes, s, device, cfg.bench.repeats)
                           for s in sizes}
        first = costs[row_name][sizes[0]]
        extra: dict[str, Any] = {k: round(v, 4) for k, v in metrics.items()}
        for s in sizes:
            c = costs[row_name][s]
            extra[f"gflops_{s}"] = round(c["flops"] / 1e9, 2) if not math.isnan(c["flops"]) else None
            extra[f"latency_ms_{s}"] = round(c["latency_ms"], 2) if not math.isnan(c["latency_ms"]) else None
            extra[f"peak_mem_mb_{s}"] = round(c["peak_mem_mb"], 1) if not math.isnan(c["peak_mem_mb"]) else None
            if "error" in c:
                extra[f"error_{s}"] = c["error"]
        if train_s > 5:
            extra["train_s"] = round(train_s, 1)
        row = ResultRow(method=row_name, tokens=num_tokens(model_name, (sizes[0],) * 3, vcfg.model.keep_tokens),
                        flops=first["flops"], params=params, latency_ms=first["latency_ms"], peak_mem_mb=first["peak_mem_mb"],
                        metrics=extra)
        rows.append(row)
        _add_ratios(rows, costs, sizes)
        print(f"medvtc bench: {row_name:20s} dice={metrics.get('dice_mean', math.nan):.4f} hd95={metrics.get('hd95_mean', math.nan):.2f} "
              f"params={params:,} {sizes[0]}^3: {first['latency_ms']:.1f} ms, {first['peak_mem_mb']:.0f} MiB")
        write_results("tokenseg", rows, {"partial": True, **to_dict(cfg)}, output, name="tokenseg.partial", plot=_plot)
    extra_md = targets_markdown(rows, sizes)
    write_results("tokenseg", rows, {**to_dict(cfg), "device": str(device), "sizes": sizes}, output, plot=_plot,
                  markdown_extra=extra_md)
    for suffix in ("json", "md", "png"):
        Path(output, f"tokenseg.partial.{suffix}").unlink(missing_ok=True)
    print(extra_md)
    return rows


def _add_ratios(rows: list[ResultRow], costs: dict[str, dict[int, dict[str, float]]], sizes: list[int]) -> None:
    """Memory and latency relative to SwinUNETR at each size, for every row (once it is known)."""
    base = costs.get(BASELINE)
    if base is None:
        return
    for r in rows:
        for s in sizes:
            mine, ref = costs[r.method][s], base[s]
            for key, short in (("peak_mem_mb", "mem"), ("latency_ms", "latency"), ("flops", "flops")):
                ok = ref[key] and not math.isnan(ref[key]) and not math.isnan(mine[key])
                r.metrics[f"{short}_vs_{BASELINE}_{s}"] = round(mine[key] / ref[key], 4) if ok else None


def targets_markdown(rows: list[ResultRow], sizes: list[int]) -> str:
    lines = ["", "### Targets (issue 5): TokenSeg peak memory <= 0.36x and latency <= 0.32x of SwinUNETR, "
             "mean Dice within 2 points of the best MONAI network", ""]
    by = {r.method: r for r in rows}
    ts = by.get("tokenseg")
    monai_rows = [r for r in rows if r.method in ("unet", "segresnet", "unetr", "swinunetr")]
    if ts is None:
        return "\n".join(lines + ["(no tokenseg row in this run)"]) + "\n"
    for s in sizes:
        mem = ts.metrics.get(f"mem_vs_{BASELINE}_{s}")
        lat = ts.metrics.get(f"latency_vs_{BASELINE}_{s}")
        if mem is None or lat is None:
            lines.append(f"- {s}^3: no SwinUNETR figures to compare with")
            continue
        lines.append(f"- {s}^3: peak memory {mem:.3f}x SwinUNETR ({'met' if mem <= 0.36 else 'not met'}), "
                     f"latency {lat:.3f}x ({'met' if lat <= 0.32 else 'not met'})")
    if monai_rows:
        best = max(monai_rows, key=lambda r: r.metrics.get("dice_mean", -1.0) or -1.0)
        d_ts, d_best = ts.metrics.get("dice_mean"), best.metrics.get("dice_mean")
        if d_ts is not None and d_best is not None:
            gap = (d_best - d_ts) * 100
            lines.append(f"- mean Dice: TokenSeg {d_ts:.4f} vs best MONAI network {best.method} {d_best:.4f} "
                         f"({-gap:+.2f} points): {'met' if gap <= 2.0 else 'not met'}")
    frac = ts.metrics.get("kept_boundary_fraction")
    if frac is not None:
        base = ts.metrics.get("candidate_boundary_fraction")
        lines.append(f"- kept tokens near a label boundary: {frac:.1%} (the paper: over 60 %)"
                     + (f"; of all candidates: {base:.1%}" if base is not None else ""))
    abl = [r for r in rows if r.method.startswith("tokenseg+")]
    if abl:
        lines += ["", "### Ablation: the selection inside TokenSeg (same K)", ""]
        for r in [ts, *abl]:
            lines.append(f"- {r.method}: mean Dice {r.metrics.get('dice_mean', float('nan')):.4f}, "
                         f"near-boundary share {r.metrics.get('kept_boundary_fraction', float('nan')):.1%}")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    quality_cost_plot(rows, path, "dice_mean", "mean Dice (test)",
                      [("peak_mem_mb", "peak inference memory (MiB), first bench size", True),
                       ("latency_ms", "inference latency (ms), first bench size", True)])


__all__ = ["run_benchmark", "measure_cost", "targets_markdown"]
