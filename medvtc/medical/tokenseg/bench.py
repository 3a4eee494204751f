"""`medvtc bench --task tokenseg`: TokenSeg against MONAI's networks, and what its boundary-aware
selection buys.

Run through the shared runner (`medvtc.common.bench_runner`). Each variant of `bench.variants` is
a network (`tokenseg`, `unet`, `segresnet`, `unetr`, `swinunetr`, `mednext`: the method sets
`model.name`; `tokenseg@K` also sets TokenSeg's kept tokens `model.keep_tokens`), a named network
variant of `NETWORK_VARIANTS` (`swinunetr24`: SwinUNETR at feature size 24) or a named selection
ablation of `SELECTION_ABLATIONS` (TokenSeg with a core compressor, e.g. random / pooling /
DivPrune, in place of its boundary-aware selection, at the same K). Each is trained once per seed
of `bench.seeds` with the task's config, data, loss, optimiser and training rule under
`bench.output_dir/<variant>/seed_<s>`, and reused on a later run only when it was trained with
the same settings (`--retrain` trains it again; an interrupted run resumes). A MONAI network's
weights depend on `model.name`, `model.img_size` and `model.baseline_args` alone among the
`model.*` keys, TokenSeg's on every `model.*` key but `baseline_args`: only those count.

The training rule is the trainer's convergence budget (`train.plateau_*`, with `bench.max_steps`
or `train.max_steps` as the cap): validation mean Dice every `train.eval_every` steps, the best
evaluation's weights exported as the run's model, training stopped once the best has gained no
more than `train.plateau_delta` over the last `train.plateau_window` of the steps. Since the
evaluations then decide the weights, `train.eval_every` counts among the settings. Each row
records where its runs stopped (`plateau_step`: null when a run reached the cap, `train_steps`),
which step's weights it tests (`best_step`, `val_dice_best`) and the validation curve
(`dice_mean_val_curve`: [step, Dice] per evaluation, per seed), drawn in the PNG's last panel
with the plateau marked.

- held-out (test split) Dice, IoU, HD95 and surface Dice (NSD), per class and mean, by
  sliding-window inference with the training ROI, per volume in the json (`cases`); the row's
  `<metric>_mean` is the mean over classes of the per-class means over volumes (as `medvtc eval`
  reports it), with its 95 % bootstrap interval over the test volumes (`_ci`) and the paired
  difference to SwinUNETR (`_diff`, `_diff_ci`); the same for each class's Dice. For TokenSeg
  rows the share of kept tokens near a label edge;
- parameters; FLOPs (torch's counter, `medvtc.common.accounting`), peak memory and latency of
  one inference forward pass on a 1 x C x S^3 volume for each S of `bench.sizes` (128 and 96),
  with the network built for that input size (UNETR's position embeddings depend on it;
  TokenSeg keeps its N = 400 / K = 100 tokens and plans its cells for that size), measured for
  every network one after the other once all are trained. The row's `flops` / `latency_ms` /
  `peak_mem_mb` are those of the first size; every size's figures and their ratios to
  SwinUNETR are in `metrics`.

Partial results (quality only) are written after each variant (`<output>/tokenseg.partial.*`),
the final ones to `<output>/tokenseg.{json,md,png}` with the targets checked in the markdown (the
Dice target on the paired difference interval, `intervals.target_status`).
"""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from medvtc.common import accounting
from medvtc.common.bench_runner import BenchSpec, CaseStatistic, Evaluation, Variant, run_bench
from medvtc.common.config import replace, to_dict
from medvtc.common.errors import UserError
from medvtc.common.intervals import Statistic, as_columns, format_interval, mean_of, paired_difference_interval, target_status
from medvtc.common.results import ResultRow, quality_cost_plot

BASELINE = "swinunetr"
NETWORKS = ("tokenseg", "unet", "segresnet", "unetr", "swinunetr", "mednext")
# Named network variants: a MONAI network at the settings users pick for efficiency (variant name ->
# config overrides; baseline_args is merged into, so other networks' arguments stay)
NETWORK_VARIANTS: dict[str, list[str]] = {
    "swinunetr24": ["model.name=swinunetr", "model.baseline_args.swinunetr.feature_size=24"],
}
MONAI_NETWORKS = (*NETWORKS[1:], *NETWORK_VARIANTS)
# Named selection ablations: TokenSeg with a core compressor selecting its K tokens in place of the
# boundary-aware selection.
SELECTION_ABLATIONS: dict[str, list[str]] = {
    "tokenseg_random": ["model.name=tokenseg", "model.selection=random"],
    "tokenseg_pooling": ["model.name=tokenseg", "model.selection=pooling"],
    "tokenseg_divprune": ["model.name=tokenseg", "model.selection=divprune"],
}
ABLATIONS: dict[str, list[str]] = {**NETWORK_VARIANTS, **SELECTION_ABLATIONS}  # every named variant
# model.* keys a MONAI network's run depends on (the others configure TokenSeg)
MONAI_KEYS = frozenset({"model.name", "model.img_size", "model.baseline_args"})
METRICS = ("dice", "iou", "hd95", "nsd")
MEM_TARGET, LATENCY_TARGET, DICE_MARGIN = 0.36, 0.32, 0.02


def class_mean(metric: str, classes: Sequence[str]) -> Statistic:
    """The statistic `<metric>_mean` of a set of volumes: per class the mean over the volumes
    where it counts (per-case columns `<metric>_<class>`, NaN where it does not), then the mean
    over classes (`metrics.aggregate`, so the row shows what `medvtc eval` shows)."""
    per_class = [mean_of(f"{metric}_{c}") for c in classes]

    def statistic(cases: Mapping[str, np.ndarray]) -> float:
        values = np.array([f(cases) for f in per_class], dtype=float)
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else math.nan

    statistic.__name__ = f"class_mean_of_{metric}"
    return statistic


def case_statistics(classes: Sequence[str]) -> dict[str, CaseStatistic]:
    """The row's quality metrics with intervals: the class means, then each class's Dice."""
    stats = {f"{m}_mean": CaseStatistic(class_mean(m, classes)) for m in METRICS}
    stats.update({f"dice_{c}": CaseStatistic(mean_of(f"dice_{c}")) for c in classes})
    return stats


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


def _finite(x: float, digits: int) -> float | None:
    return None if x is None or math.isnan(x) else round(x, digits)


def size_metrics(costs: Mapping[int, Mapping[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    """Every size's GFLOPs, latency and peak memory (and error) as row metrics."""
    out: dict[str, Any] = {}
    for s in sizes:
        c = costs[s]
        out[f"gflops_{s}"] = _finite(c["flops"] / 1e9, 2)
        out[f"latency_ms_{s}"] = _finite(c["latency_ms"], 2)
        out[f"peak_mem_mb_{s}"] = _finite(c["peak_mem_mb"], 1)
        if "error" in c:
            out[f"error_{s}"] = c["error"]
    return out


def ratios(costs: Mapping[str, Mapping[int, Mapping[str, float]]], sizes: Sequence[int]) -> dict[str, dict[str, float | None]]:
    """Memory, latency and FLOPs relative to SwinUNETR at each size, per variant (empty without
    a SwinUNETR row)."""
    base = costs.get(BASELINE)
    if base is None:
        return {}
    out: dict[str, dict[str, float | None]] = {}
    for name, mine_by_size in costs.items():
        out[name] = {}
        for s in sizes:
            mine, ref = mine_by_size[s], base[s]
            for key, short in (("peak_mem_mb", "mem"), ("latency_ms", "latency"), ("flops", "flops")):
                ok = ref[key] and not math.isnan(ref[key]) and not math.isnan(mine[key])
                out[name][f"{short}_vs_{BASELINE}_{s}"] = round(mine[key] / ref[key], 4) if ok else None
    return out


class TokenSegBench(BenchSpec):
    task = "tokenseg"
    reference = BASELINE
    method_key = "model.name"
    budget_key = "model.keep_tokens"  # tokenseg@K: TokenSeg keeping K tokens
    methods = NETWORKS
    ablations = ABLATIONS
    settings_sections = ("seed", "data", "model", "train")
    keep_whole = ("selection_args", "baseline_args")

    def __init__(self, task, cfg) -> None:
        self.seg_task = task
        # the results' file stem: another dataset's bench must not replace the phantom's files
        self.task = cfg.bench.name or ("tokenseg" if cfg.data.dataset == "phantom" else f"tokenseg_{cfg.data.dataset}")
        self.device = _device(cfg.bench.device)
        self.sizes = [int(s) for s in cfg.bench.sizes]
        if not self.sizes:
            raise UserError("bench.sizes is empty: give at least one cubic input size, e.g. [128, 96]")
        self.statistics: dict[str, CaseStatistic] = {}
        self.info = None
        self.plot = _plot

    # -- config -----------------------------------------------------------------------------
    def variant_config(self, cfg, variant: Variant, seed: int, run_dir: Path):
        if variant.budget is not None and variant.method != "tokenseg":
            raise UserError(f"bench.variants entry {variant.name!r}: a budget (kept tokens) applies to tokenseg only")
        vcfg = super().variant_config(cfg, variant, seed, run_dir)
        if cfg.bench.max_steps is not None:
            vcfg = replace(vcfg, train=replace(vcfg.train, max_steps=int(cfg.bench.max_steps)))
        if (problem := vcfg.train.plateau_problem()) is not None:  # before hours of training, not at its start
            raise UserError(problem)
        return vcfg

    def settings(self, cfg_tree):
        flat = super().settings(cfg_tree)
        flat.pop("data.cache", None)  # in-memory caching of the volumes changes no weight
        if (cfg_tree.get("model") or {}).get("name", "tokenseg") == "tokenseg":
            flat.pop("model.baseline_args", None)
        else:  # a MONAI network ignores TokenSeg's settings
            flat = {k: v for k, v in flat.items() if not k.startswith("model.") or k in MONAI_KEYS}
        return flat

    def eval_settings(self, cfg) -> dict[str, Any]:
        return {"split": "test", "eval": to_dict(cfg.eval), "data_root": str(Path(cfg.data.resolved_root).resolve()),
                "device": str(self.device)}

    # -- work -------------------------------------------------------------------------------
    def prepare(self, cfg) -> None:
        from medvtc.medical.tokenseg.metrics import class_keys

        self.seg_task._ensure_data(cfg)
        self.info = self.seg_task.info(cfg)
        self.statistics = case_statistics(class_keys(self.info.labels))

    def is_trained(self, run_dir: Path) -> bool:
        return (run_dir / "final" / "model.safetensors").is_file()

    def train(self, vcfg) -> None:
        self.seg_task.train(vcfg, resume=True)

    def evaluate(self, vcfg, variant: Variant) -> Evaluation:
        from medvtc.medical.tokenseg.networks import num_tokens

        final = Path(vcfg.output_dir) / "final"
        metrics, cases, model, _ = self.seg_task.evaluate_checkpoint_cases(vcfg, str(final), "test", self.device)
        params = accounting.count_params(model)
        del model
        # NaN (a class that does not count in a volume) as null: the json stays strict
        cases = {k: [None if isinstance(x, float) and math.isnan(x) else x for x in v] for k, v in cases.items()}
        return Evaluation(
            cases=cases, metrics={**{k: round(v, 4) for k, v in metrics.items()}, **convergence_metrics(final)},
            cost={"tokens": num_tokens(vcfg.model.name, (self.sizes[0],) * 3, vcfg.model.keep_tokens), "params": params},
        )

    def measure_costs(self, vcfgs):
        """Every network's cost at each size, one after the other on the same device."""
        from medvtc.medical.tokenseg.networks import num_tokens

        info, r = self.info, self.sizes
        costs = {name: {s: measure_cost(self.seg_task, v, info.in_channels, info.num_classes, s, self.device, v.bench.repeats)
                        for s in r} for name, v in vcfgs.items()}
        rel = ratios(costs, r)
        out = {}
        for name, v in vcfgs.items():
            torch.manual_seed(v.seed)
            params = accounting.count_params(self.seg_task.build_model(v, info.in_channels, info.num_classes))
            first = costs[name][r[0]]
            out[name] = {"tokens": num_tokens(v.model.name, (r[0],) * 3, v.model.keep_tokens), "params": params,
                         "flops": first["flops"], "latency_ms": first["latency_ms"], "peak_mem_mb": first["peak_mem_mb"],
                         "metrics": {**size_metrics(costs[name], r), **rel.get(name, {})}}
            print(f"medvtc bench: {name:20s} params={params:,} {r[0]}^3: {first['latency_ms']:.1f} ms, "
                  f"{first['peak_mem_mb']:.0f} MiB")
        return out

    # -- output -----------------------------------------------------------------------------
    def markdown_extra(self, rows: list[ResultRow], cfg) -> str:
        note = dataset_note(self.info) if self.info is not None else ""
        return (f"\n{note}\n" if note else "") + targets_markdown(rows, self.sizes) + convergence_markdown(rows, cfg)

    def results_config(self, cfg) -> dict[str, Any]:
        out = {**to_dict(cfg), "device": str(self.device), "sizes": self.sizes}
        if self.info is not None:
            out["dataset"] = {"name": self.info.name, "note": dataset_note(self.info)}
        return out


def convergence_metrics(final: Path) -> dict[str, Any]:
    """A run's convergence record (`final/convergence.json`, written by the trainer when it selects)
    as row metrics: `plateau_step` (null: the run reached the cap), `train_steps`, `best_step` and
    `val_dice_best` (the exported weights' validation), `dice_mean_val_curve` ([step, value] per
    evaluation). Empty for a run trained without selection."""
    from medvtc.common.trainer import CONVERGENCE_FILE

    path = final / CONVERGENCE_FILE
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    return {"plateau_step": doc.get("plateau_step"), "train_steps": doc.get("steps"), "best_step": doc.get("best_step"),
            "val_dice_best": None if doc.get("best_value") is None else round(float(doc["best_value"]), 4),
            "dice_mean_val_curve": [[int(s), round(float(v), 4)] for s, v in doc.get("history", [])]}


def dataset_note(info) -> str:
    """What the data is, for the markdown and the json; for the MNI152 set, that it is one subject."""
    from medvtc.datasets.msd import msd_split

    if info.name != "MNI152":
        return ""
    test = len(msd_split(info, "test"))
    return (f"**Data: MNI152, ONE subject.** nilearn's MNI152 2009 T1 template (real MRI, an average brain) with grey / "
            f"white matter labels from its probability maps; every network trains on its left hemisphere, selects on a "
            f"block of the mirrored right hemisphere and is tested on the other {test} blocks. The intervals resample "
            f"{test} regions of one brain, not subjects: they show that the pipeline runs on a real MRI and how the "
            f"networks transfer across hemispheres, nothing about other subjects, scanners or pathologies.")


def _per_seed(value: Any, seeds: int) -> list[Any]:
    """A row metric as one value per seed (the runner keeps one seed's value as it is)."""
    if seeds > 1 and isinstance(value, list) and len(value) == seeds:
        return value
    return [value]


def convergence_markdown(rows: list[ResultRow], cfg) -> str:
    """Where each network's training stopped, and which step's weights it tests."""
    t = cfg.train
    shown = [r for r in rows if "best_step" in r.metrics or "best_step_per_seed" in r.metrics]
    if not shown:
        return ""
    rule = (f"stopped once validation mean Dice gained no more than {t.plateau_delta:g} over the last "
            f"{t.plateau_window:.0%} of the steps (not before step {t.plateau_min_steps})" if t.plateau
            else "no convergence budget: trained to the cap")
    cap = cfg.bench.max_steps or t.max_steps
    lines = ["", f"### Convergence: validation mean Dice every {t.eval_every} steps; {rule}; cap {cap} steps; each run "
             "tests its best validation's weights", ""]
    for r in shown:
        m = r.metrics
        seeds = len(m["best_step_per_seed"]) if isinstance(m.get("best_step_per_seed"), list) else 1
        plateau = _per_seed(m.get("plateau_step_per_seed", m.get("plateau_step")), seeds)
        best = _per_seed(m.get("best_step_per_seed", m.get("best_step")), seeds)
        value = _per_seed(m.get("val_dice_best_per_seed", m.get("val_dice_best")), seeds)
        stops = ", ".join("cap" if p is None else str(p) for p in plateau)
        picks = ", ".join(f"{b} ({v:.4f})" if v is not None else str(b) for b, v in zip(best, value))
        lines.append(f"- {r.method}: plateau at step {stops}; best validation at step {picks}")
    return "\n".join(lines) + "\n"


def run_benchmark(task, cfg, output: str, retrain: bool = False) -> list[ResultRow]:
    torch.manual_seed(cfg.seed)
    rows = run_bench(TokenSegBench(task, cfg), cfg, output, retrain=retrain)
    return rows


def _dice_difference(a: ResultRow, b: ResultRow) -> tuple[float, float] | None:
    """Paired-bootstrap interval of mean Dice, row a minus row b, over the same test volumes
    (from the rows' per-case results); None without them."""
    if not a.cases or not b.cases or set(a.cases) != set(b.cases):
        return None
    first = next(iter(a.cases.values()))
    classes = [k[5:] for k in first if k.startswith("dice_") and k != "dice_mean"]
    try:
        return paired_difference_interval(class_mean("dice", classes), [as_columns(c) for c in a.cases.values()],
                                          [as_columns(c) for c in b.cases.values()])
    except (KeyError, ValueError):
        return None


def targets_markdown(rows: list[ResultRow], sizes: list[int]) -> str:
    lines = ["", f"### Targets (issue 5): TokenSeg peak memory <= {MEM_TARGET}x and latency <= {LATENCY_TARGET}x of "
             f"SwinUNETR, mean Dice within {DICE_MARGIN * 100:.0f} points of the best MONAI network (met only when the "
             "whole paired-difference interval lies above -2 points)", ""]
    by = {r.method: r for r in rows}
    ts = by.get("tokenseg")
    monai_rows = [r for r in rows if r.method in MONAI_NETWORKS]
    if ts is None:
        return "\n".join(lines + ["(no tokenseg row in this run)"]) + "\n"
    for s in sizes:
        mem = ts.metrics.get(f"mem_vs_{BASELINE}_{s}")
        lat = ts.metrics.get(f"latency_vs_{BASELINE}_{s}")
        if mem is None or lat is None:
            lines.append(f"- {s}^3: no SwinUNETR figures to compare with")
            continue
        lines.append(f"- {s}^3: peak memory {mem:.3f}x SwinUNETR ({'met' if mem <= MEM_TARGET else 'not met'}), "
                     f"latency {lat:.3f}x ({'met' if lat <= LATENCY_TARGET else 'not met'})")
    scored = [r for r in monai_rows if r.metrics.get("dice_mean") is not None]
    if scored:
        best = max(scored, key=lambda r: r.metrics["dice_mean"])
        d_ts, d_best = ts.metrics.get("dice_mean"), best.metrics["dice_mean"]
        ci = _dice_difference(ts, best)
        if d_ts is None or ci is None:
            lines.append(f"- mean Dice: no paired difference of TokenSeg to {best.method}")
        else:
            lines.append(f"- mean Dice: TokenSeg {d_ts:.4f} vs best MONAI network {best.method} {d_best:.4f} "
                         f"({(d_ts - d_best) * 100:+.2f} points [{ci[0] * 100:+.2f}, {ci[1] * 100:+.2f}]): "
                         f"**{target_status(ci, DICE_MARGIN)}**")
    frac = ts.metrics.get("kept_boundary_fraction")
    if frac is not None:
        base = ts.metrics.get("candidate_boundary_fraction")
        lines.append(f"- kept tokens near a label boundary: {frac:.1%} (the paper: over 60 %)"
                     + (f"; of all candidates: {base:.1%}" if base is not None else ""))
    abl = [r for r in rows if r.method in SELECTION_ABLATIONS or (r.method.startswith("tokenseg") and r is not ts)]
    if abl:
        lines += ["", "### Ablation: the selection inside TokenSeg (same K); mean Dice, paired difference to TokenSeg, "
                  "share of kept tokens near a boundary", ""]
        for r in [ts, *abl]:
            m = r.metrics
            diff = "" if r is ts else (
                f", {format_interval((m.get('dice_mean') or math.nan) - (ts.metrics.get('dice_mean') or math.nan), ci, signed=True)}"
                if (ci := _dice_difference(r, ts)) is not None else ", no paired difference")
            lines.append(f"- {r.method}: mean Dice {format_interval(m.get('dice_mean'), m.get('dice_mean_ci'), 4)}{diff}, "
                         f"near-boundary share {m.get('kept_boundary_fraction', float('nan')):.1%}")
    return "\n".join(lines) + "\n"


def _curves(value: Any) -> list[list[list[float]]]:
    """A row's `dice_mean_val_curve` as one curve per seed (one seed's is kept as it is)."""
    if not isinstance(value, list) or not value:
        return []
    return [c for c in value if isinstance(c, list)] if isinstance(value[0][0], list) else [value]


def plot_validation_curves(ax, rows: list[dict[str, Any]]) -> None:
    """Each row's validation mean Dice against the step, one line per seed, the plateau step
    marked (x) and the exported (best) evaluation circled."""
    drawn = False
    for r in rows:
        m = r.get("metrics", {})
        curves = _curves(m.get("dice_mean_val_curve"))
        if not curves:
            continue
        seeds = len(curves)
        plateau = _per_seed(m.get("plateau_step_per_seed", m.get("plateau_step")), seeds)
        best = _per_seed(m.get("best_step_per_seed", m.get("best_step")), seeds)
        color = None
        for i, curve in enumerate(curves):
            steps, values = [c[0] for c in curve], [c[1] for c in curve]
            (line,) = ax.plot(steps, values, lw=1, color=color, label=r["method"] if i == 0 else None)
            color = line.get_color()
            at = dict(zip(steps, values))
            if i < len(plateau) and plateau[i] in at:
                ax.plot([plateau[i]], [at[plateau[i]]], marker="x", ms=8, mew=2, color=color)
            if i < len(best) and best[i] in at:
                ax.plot([best[i]], [at[best[i]]], marker="o", ms=6, mfc="none", color=color)
        drawn = True
    ax.set_xlabel("training step (x: plateau, o: exported weights)")
    ax.set_ylabel("validation mean Dice")
    if drawn:
        ax.legend(fontsize=7)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    # the partial results have no costs yet (measured once every network is trained): empty
    # panels on linear axes then, a log axis needs a point
    costed = any(isinstance(r.get("latency_ms"), (int, float)) and math.isfinite(r["latency_ms"]) for r in rows)
    curves = any(r.get("metrics", {}).get("dice_mean_val_curve") for r in rows)
    quality_cost_plot(rows, path, "dice_mean", "mean Dice (test, 95 % CI)",
                      [("peak_mem_mb", "peak inference memory (MiB), first bench size", costed),
                       ("latency_ms", "inference latency (ms), first bench size", costed)],
                      extra=[lambda ax: plot_validation_curves(ax, rows)] if curves else ())


__all__ = ["ABLATIONS", "NETWORK_VARIANTS", "SELECTION_ABLATIONS", "TokenSegBench", "case_statistics", "class_mean",
           "convergence_markdown", "convergence_metrics", "dataset_note", "measure_cost", "plot_validation_curves", "ratios",
           "run_benchmark", "targets_markdown"]
