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

Input size (the Argus experiment, issue 18): a variant `<X>x<Y>x<Z>/<method>[@<budget>]` reads
the CT resized to that input instead of `data.spatial_size`, e.g. `128x128x64/pixel_shuffle@64`:
the phantom at its full 128 x 128 x 64, 16 x 16 x 16 = 4096 ViT tokens (8 x 8 x 4 patches)
pixel-shuffled to 64 LM tokens, against `pixel_shuffle@64` (64 x 64 x 32, 512 ViT tokens -> 64).
The ViT's position embeddings and token count follow the input, so each input size has its own
vision stage and token cache: they live in `<shared>/input_<X>x<Y>x<Z>` (the shared folder of the
bench's own `data.spatial_size` is unchanged), trained once and shared by every variant of that
size. A larger input than `data.spatial_size` is not held in memory (`data.cache=false`: 1200
phantoms at 128 x 128 x 64 with eleven channels would take 52 GiB in float32); each volume is read and
preprocessed again when used. `compare_rows` pairs, at each LM token count, every variant that
reads a larger input with every one that reads a smaller input, and states from the paired
bootstrap interval (larger minus smaller, the same test volumes) whether the larger input
**beats** the smaller, is **worse**, or **no difference** is shown (`RESOLUTION_METRICS`; the
verdict is the first one the rows have). Per-label F1 (`f1_<label>`, against the label CSV) is
in every row with its interval; the markdown shows it in a table of its own.

With `bench.scale`, the full-size figures (Argus reads CTs up to 512 x 512 x 256): a phantom CT
rendered at that size and written as NIfTI is read, preprocessed (channels stored in
`scale_dtype`, float16 by default: the ViT casts them slab by slab) and encoded by a model built
for that input (patch `scale_patch`), once through the compressed path (pixel-shuffle to
`scale_budget` tokens) and once uncompressed, each in its own subprocess so one's peak memory
cannot hide the other's. These are untrained models: the figures are cost, not quality.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from medvtc.common import accounting
from medvtc.common.bench_runner import BenchSpec, Evaluation, Variant, parse_variant, run_bench
from medvtc.common.compressors import list_compressors
from medvtc.common.config import load_config, to_dict
from medvtc.common.errors import UserError
from medvtc.common.intervals import as_columns, format_interval, paired_difference_interval, target_status
from medvtc.common.results import ResultRow, quality_cost_plot
from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS
from medvtc.medical.ct_report.evaluation import (
    SMALL_FINDINGS,
    ReportCollator,
    case_statistics,
    generate_reports,
    label_key,
    report_cases,
    score_reports,
    validation_loss,
)

TOKEN_RATIO_TARGET = 8
F1_MARGIN = 0.01  # "clinical micro F1 within 1 point of the uncompressed model"
METHODS: tuple[str, ...] = ("none", "identity", *list_compressors())
# full resolution against downsampled input: the verdict is on the first of these the rows have
# (label micro F1 against the label CSV; clinical micro F1 where the test split has no labels
# CSV), and is stated for the others too (the small findings, where resolution should show)
RESOLUTION_METRICS: tuple[str, ...] = ("label_micro_f1", "small_findings_f1", "clinical_micro_f1")
PER_LABEL_PREFIX = "f1_"
_SIZED = re.compile(r"^(\d+)x(\d+)x(\d+)/(.+)$")


def input_folder(size: Sequence[int]) -> str:
    """The shared-stage folder of one model input size: `input_128x128x64`."""
    return "input_" + "x".join(str(int(s)) for s in size)


def size_text(size: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in size)


class InputSizeVariants(Mapping[str, Sequence[str]]):
    """The bench's named ablations: `<X>x<Y>x<Z>/<method>[@<budget>]` is `<method>[@<budget>]`
    at model input X x Y x Z (`data.spatial_size`), e.g. `128x128x64/pixel_shuffle@64`; plus
    the fixed entries of `named` (none yet). A name of that form with an unknown method or a bad
    budget is an error naming the entry."""

    def __init__(self, methods: Sequence[str], named: Mapping[str, Sequence[str]] | None = None) -> None:
        self.methods = tuple(methods)
        self.named = dict(named or {})

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in self.named or _SIZED.match(key.strip()) is not None)

    def __getitem__(self, key: str) -> list[str]:
        if key in self.named:
            return list(self.named[key])
        m = _SIZED.match(str(key).strip()) if isinstance(key, str) else None
        if m is None:
            raise KeyError(key)
        size = [int(m.group(i)) for i in (1, 2, 3)]
        if min(size) < 1:
            raise UserError(f"bench.variants entry {key!r}: the input size must be positive")
        try:
            inner = parse_variant(m.group(4), None, self.methods)
        except UserError as e:  # "bench.variants entry 'pixle@64': unknown method ..." -> the whole entry's name
            raise UserError(f"bench.variants entry {key!r}: {str(e).partition(': ')[2] or e}") from None
        return [f"data.spatial_size=[{size[0]},{size[1]},{size[2]}]", f"model.compressor={inner.method}",
                *([f"model.budget={inner.budget}"] if inner.budget is not None else [])]

    def __iter__(self) -> Iterator[str]:
        return iter(self.named)

    def __len__(self) -> int:
        return len(self.named)


# Named ablations: variant name -> config overrides (the input-size family; no fixed names yet).
ABLATIONS = InputSizeVariants(METHODS)


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
    methods = METHODS
    settings_sections = ("seed", "data", "model", "stages", "train")
    keep_whole = ("compressor_args",)
    hide_in_table = (PER_LABEL_PREFIX,)  # 18 labels: a table of their own (markdown_extra)

    def __init__(self, task) -> None:
        self.ct_task = task
        self.statistics = case_statistics()
        self._test_sets: dict[str, Any] = {}
        self.input_sizes: dict[str, tuple[int, ...]] = {}  # variant name -> its model input (X, Y, Z)
        self.resolution: dict[str, Any] | None = None  # compare_rows' result
        self._pair_memo: dict[tuple[str, str, str], tuple[float, float]] = {}
        self.plot = _plot

    def variant_config(self, cfg, variant: Variant, seed: int, run_dir: Path):
        from medvtc.common.compressors import resolve_compressor_args

        vcfg = super().variant_config(cfg, variant, seed, run_dir)
        # the tokenizer, lm/vision warm-ups and the ViT token cache do not depend on the compressor;
        # they do on the input size (the ViT's positions and token count): another size, another folder
        shared = cfg.stages.shared_dir or str(Path(cfg.bench.output_dir) / "shared" / f"seed_{seed}")
        size = tuple(int(s) for s in vcfg.data.spatial_size)
        extra = []
        if size != tuple(cfg.data.spatial_size):
            shared = str(Path(shared) / input_folder(size))
            if math.prod(size) > math.prod(cfg.data.spatial_size):
                extra.append("data.cache=false")  # not every volume at this size in memory (module docstring)
        vcfg = load_config(type(cfg), None, [f"stages.shared_dir={shared}", *extra], base=to_dict(vcfg))
        self.input_sizes[variant.name] = size
        m = vcfg.model
        bad = [i for i, (s, p) in enumerate(zip(size, m.patch_size)) if s % p]
        if bad:
            raise UserError(f"bench.variants entry {variant.name!r}: input {size_text(size)} is not divisible by "
                            f"model.patch_size {list(m.patch_size)} (axis {bad[0]})")
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

        seeds = list(cfg.bench.seeds) or [cfg.seed]
        if cfg.stages.shared_dir and len(seeds) > 1:
            raise UserError(f"stages.shared_dir={cfg.stages.shared_dir} holds one seed's warm-up stages; with "
                            f"bench.seeds={seeds} leave it unset (each seed gets bench.output_dir/shared/seed_<s>)")
        self.ct_task._ensure_data(cfg)
        # one shared folder per seed and input size: the bench's own size, and each variant's
        variants = [Variant("none", "none")] + [parse_variant(v, self.ablations, self.methods) for v in self.variant_names(cfg)]
        shared_cfgs: dict[str, Any] = {}
        for seed in seeds:
            for variant in variants:
                vcfg = self.variant_config(cfg, variant, seed, Path(cfg.bench.output_dir) / variant.folder / f"seed_{seed}")
                shared_cfgs.setdefault(vcfg.stages.shared_dir, vcfg)
        for vcfg in shared_cfgs.values():
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
        """The test split preprocessed as `cfg` says (one per input size; kept for the bench)."""
        key = json.dumps(cfg.data.preprocessing(), sort_keys=True)
        if key not in self._test_sets:
            self._test_sets[key] = self.ct_task.datasets(cfg, ("test",))["test"]
        return self._test_sets[key]

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

    def compare_rows(self, rows: list[ResultRow], cfg) -> None:
        """Each row's input size (`input`), and the full-resolution comparison (`self.resolution`)."""
        for r in rows:
            if r.method in self.input_sizes:
                r.metrics["input"] = size_text(self.input_sizes[r.method])
        self.resolution = resolution_comparison(rows, self.input_sizes, self.statistics, self._pair_memo)

    def markdown_extra(self, rows: list[ResultRow], cfg) -> str:
        return (_targets_markdown(rows, self.scale, self.throughput) + per_label_markdown(rows)
                + resolution_markdown(self.resolution))

    def results_config(self, cfg) -> dict[str, Any]:
        return {**to_dict(cfg), "scale": getattr(self, "scale", None), "align_throughput": getattr(self, "throughput", None),
                "resolution": self.resolution}

    scale: dict[str, Any] | None = None
    throughput: dict[str, Any] | None = None


def run_benchmark(task, cfg, output: str, retrain: bool = False) -> list[ResultRow]:
    torch.manual_seed(cfg.seed)
    spec = CTReportBench(task)
    spec.task = cfg.bench.name or "ct-report"  # the results' file names
    return run_bench(spec, cfg, output, retrain=retrain)


# ------------------------------------------------------------------------------------------------
# Full resolution + compression against downsampled input, at equal LM visual tokens
# ------------------------------------------------------------------------------------------------
def resolution_verdict(diff_ci: Sequence[float | None] | None) -> str:
    """The larger input against the smaller from the paired interval of (larger - smaller):
    "beats" when it lies wholly above 0, "worse" when wholly below, else "no difference shown"
    ("no interval" without one)."""
    if diff_ci is None or any(v is None or not math.isfinite(v) for v in diff_ci):
        return "no interval"
    low, high = float(diff_ci[0]), float(diff_ci[1])
    if low > 0:
        return "beats"
    if high < 0:
        return "worse"
    return "no difference shown"


def resolution_pairs(rows: Sequence[ResultRow], input_sizes: Mapping[str, Sequence[int]]) -> list[tuple[ResultRow, ResultRow]]:
    """(larger input, smaller input) for every two rows with the same LM visual-token count
    whose inputs differ in voxel count, larger first; rows of unknown input are left out."""
    known = [r for r in rows if r.method in input_sizes]
    pairs = []
    for hi in known:
        for lo in known:
            if hi.tokens == lo.tokens and math.prod(input_sizes[hi.method]) > math.prod(input_sizes[lo.method]):
                pairs.append((hi, lo))
    return sorted(pairs, key=lambda p: (p[0].tokens, p[0].method, p[1].method))


def resolution_comparison(rows: Sequence[ResultRow], input_sizes: Mapping[str, Sequence[int]],
                          statistics: Mapping[str, Any], memo: dict | None = None) -> dict[str, Any] | None:
    """The paired comparison of every `resolution_pairs` pair on `RESOLUTION_METRICS` and every
    per-label F1: both rows' values, the difference (larger input minus smaller), its 95 %
    paired-bootstrap interval over the same test volumes (seeds averaged) and `resolution_verdict`;
    `verdict` is the first of `RESOLUTION_METRICS` the pair has. None without a pair."""
    memo = {} if memo is None else memo
    pairs = resolution_pairs(rows, input_sizes)
    if not pairs:
        return None
    names = [m for m in (*RESOLUTION_METRICS, *(label_key(x) for x in CT_RATE_LABELS)) if m in statistics]
    out = []
    for hi, lo in pairs:
        entry: dict[str, Any] = {
            "lm_tokens": hi.tokens, "full": hi.method, "downsampled": lo.method,
            "full_input": list(input_sizes[hi.method]), "downsampled_input": list(input_sizes[lo.method]),
            "full_vit_tokens": hi.metrics.get("vit_tokens"), "downsampled_vit_tokens": lo.metrics.get("vit_tokens"),
            "metrics": {},
        }
        same_seeds = bool(hi.cases) and bool(lo.cases) and set(hi.cases) == set(lo.cases)
        for name in names:
            if name not in hi.metrics or name not in lo.metrics:
                continue  # a row without the per-case column (no labels CSV)
            ci = None
            if same_seeds:
                key = (hi.method, lo.method, name)
                if key not in memo:
                    try:
                        memo[key] = paired_difference_interval(
                            statistics[name].statistic, [as_columns(hi.cases[s]) for s in sorted(hi.cases)],
                            [as_columns(lo.cases[s]) for s in sorted(hi.cases)])
                    except (KeyError, ValueError):
                        memo[key] = None
                ci = memo[key]
            a, b = hi.metrics.get(name), lo.metrics.get(name)
            entry["metrics"][name] = {
                "full": a, "downsampled": b, "diff": None if a is None or b is None else round(a - b, 4),
                "diff_ci": None if ci is None or not all(math.isfinite(v) for v in ci) else [round(float(v), 4) for v in ci],
                "verdict": resolution_verdict(ci),
            }
        headline = next((m for m in RESOLUTION_METRICS if m in entry["metrics"]), None)
        entry["metric"] = headline
        entry["verdict"] = entry["metrics"][headline]["verdict"] if headline else "no interval"
        out.append(entry)
    return {"rule": "larger input minus smaller at the same LM visual tokens, 95 % paired bootstrap over the test volumes: "
                    "beats when the interval lies above 0, worse when below, no difference shown when it holds 0",
            "metrics": list(RESOLUTION_METRICS), "pairs": out}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:+.1f}"


def _value(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def resolution_markdown(resolution: dict[str, Any] | None) -> str:
    """The comparison's verdict lines and per-label differences as markdown ("" without pairs)."""
    if not resolution:
        return ""
    lines = ["", "### Full resolution + compression vs downsampled input, at equal LM visual tokens", "",
             f"Verdict: {resolution['rule']}.", ""]
    for p in resolution["pairs"]:
        head = (f"- **{p['lm_tokens']} LM tokens**: {p['full']} ({size_text(p['full_input'])}, {p['full_vit_tokens']} ViT tokens) "
                f"vs {p['downsampled']} ({size_text(p['downsampled_input'])}, {p['downsampled_vit_tokens']} ViT tokens)")
        parts = []
        for name in RESOLUTION_METRICS:
            m = p["metrics"].get(name)
            if m is None:
                continue
            ci = m["diff_ci"]
            parts.append(f"{name} {_value(m['full'])} vs {_value(m['downsampled'])}, {_pct(m['diff'])} points" + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")
                         + f": **{m['verdict']}**")
        lines.append(head + (f": full resolution + compression vs downsampled, on {p['metric']}: **{p['verdict']}**"
                             if p["metric"] else ": no common metric"))
        lines += [f"  - {x}" for x in parts]
    labels = [x for x in CT_RATE_LABELS if any(label_key(x) in p["metrics"] for p in resolution["pairs"])]
    if labels:
        lines += ["", "Per-label F1 difference (points, larger input - smaller; * a small finding):", "",
                  "| label | " + " | ".join(f"{p['full']} - {p['downsampled']}" for p in resolution["pairs"]) + " |",
                  "|" + "---|" * (len(resolution["pairs"]) + 1)]
        for x in labels:
            cells = []
            for p in resolution["pairs"]:
                m = p["metrics"].get(label_key(x))
                if m is None:
                    cells.append("-")
                    continue
                ci = m["diff_ci"]
                cells.append(_pct(m["diff"]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci and None not in ci else "")
                             + (f" {m['verdict']}" if m["verdict"] in ("beats", "worse") else ""))
            lines.append(f"| {x}{' *' if x in SMALL_FINDINGS else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_label_markdown(rows: Sequence[ResultRow]) -> str:
    """Each variant's per-label F1 with its interval (labels as rows, variants as columns)."""
    labels = [x for x in CT_RATE_LABELS if any(label_key(x) in r.metrics for r in rows)]
    if not labels:
        return ""
    lines = ["", "### Per-label F1 (test, against the label CSV; 95 % bootstrap; * a small finding; - undefined: "
             "the label neither present nor predicted)", "",
             "| label | " + " | ".join(r.method for r in rows) + " |", "|" + "---|" * (len(rows) + 1)]
    for x in ("small_findings_f1", *labels):
        key = x if x == "small_findings_f1" else label_key(x)
        name = "mean of the small findings" if x == "small_findings_f1" else x + (" *" if x in SMALL_FINDINGS else "")
        lines.append(f"| {name} | " + " | ".join(format_interval(r.metrics.get(key), r.metrics.get(f"{key}_ci"), 2)
                                               for r in rows) + " |")
    return "\n".join(lines) + "\n"


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
