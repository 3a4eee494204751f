"""`medvtc bench --task compressors`: every registered compressor measured side by side.

For each method, grid (N tokens), batch and budget: FLOPs (torch's counter), parameters,
median latency, extra peak memory, and two task-free measures of information kept
(`metrics.reconstruction_kept`, `metrics.coverage`) on structured synthetic token grids (the
token-grid generator at D=768), so that the measures mean something: random Gaussian tokens
have nothing to keep. Learned methods are measured at random initialisation: their speed and
memory are real, their information-kept figures are not meaningful untrained and are left out.

The plain reference implementations (`compressors.references`) are timed on the same inputs,
with a check that their output is identical, and the targets of the compressor-core issue are
measured explicitly (DivPrune and FLoC at N=4096, K=410: >= 5x faster than the reference).

Rows whose expected time exceeds `max_seconds` (from the same method's time at a smaller budget)
are skipped and listed as skipped, so one slow greedy method cannot hold up the whole run.

`bench.methods` takes the variant grammar of every `medvtc bench`
(`medvtc.common.bench_runner.parse_variant`): a registered method name measures it at every
budget of `bench.budgets`, `method@budget` (`pooling@0.25`, `tome@64`) at that one budget only
(a method may be listed once per pinned budget); an empty list means every registered method.
Unknown names and repeated entries are one error before any measurement. The bench runs through
the shared runner (`run_bench` with `CompressorsBench`, a spec that trains nothing): each
method is one variant that gives its own rows (one per grid, batch and budget), partial results
(`compressors.partial.*`) are written after every method and removed once the final files are
written, and the reference implementations and speed targets come after the last method.

The information-kept measures are per-scene means over `bench.info_batch` structured scenes
(each scene its own draw of the generator), with a 95 % percentile-bootstrap interval over the
scenes (`nearest_kept_ci`, `coverage_ci`); they are measured on the smallest batch's rows, with
one more call of the method on the `info_batch` scenes (or on the row's own scenes when that call
would exceed `max_seconds`; `info_scenes` says how many). The scenes are the same for every
method, so two methods' per-scene values pair; the rows carry them as `cases`.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medvtc.common import accounting
from medvtc.common.bench_runner import BenchSpec, Evaluation, Variant, parse_variant, run_bench
from medvtc.common.compressors import COMPRESSORS, create_compressor, list_compressors
from medvtc.common.compressors.metrics import coverage, reconstruction_kept
from medvtc.common.compressors.utils import resolve_budget
from medvtc.common.errors import UserError
from medvtc.common.intervals import bootstrap_interval, mean_of
from medvtc.common.results import ResultRow
from medvtc.compression.token_grids import TokenGridSpec, class_tables, sample_scene


def bench_inputs(grid: tuple[int, ...], dim: int, text_dim: int, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Structured token grids at the benchmark's size, plus instruction and [CLS]-like scores."""
    spec = TokenGridSpec(grid=grid, dim=dim, text_dim=text_dim, num_classes=4, seed=seed)
    tables = class_tables(spec)
    samples = [sample_scene(spec, 0, i, tables) for i in range(batch)]
    tokens = torch.from_numpy(np.stack([s["tokens"] for s in samples]))
    text = torch.from_numpy(np.stack([s["text"] for s in samples]))
    text_mask = torch.from_numpy(np.stack([s["text_mask"] for s in samples]))
    # A [CLS]-attention stand-in: softmax attention of the mean token over all tokens.
    query = tokens.mean(1, keepdim=True)
    scores = torch.softmax((query @ tokens.transpose(1, 2)).squeeze(1) / math.sqrt(dim), dim=-1)
    return {"tokens": tokens, "text": text, "text_mask": text_mask, "scores": scores}


def _call(comp, inputs: dict[str, torch.Tensor], grid, k) -> Callable[[], Any]:
    return lambda: comp(inputs["tokens"], grid=grid, budget=k, text=inputs["text"], text_mask=inputs["text_mask"], scores=inputs["scores"])


def _measure(fn: Callable[[], Any], module, repeats: int, warmup: int, max_seconds: float):
    """FLOPs and peak memory in one counted call (it doubles as warm-up), then timed repeats."""
    gc.collect()
    flops_box: dict[str, float] = {}
    out_box: dict[str, Any] = {}

    def counted():
        with accounting.flop_counter() as counter:
            out_box["out"] = fn()
        flops_box["flops"] = float(counter.get_total_flops())

    t0 = time.perf_counter()
    with torch.no_grad():
        peak = accounting.measure_peak_memory(counted)
    first = time.perf_counter() - t0
    remaining_warmup = max(0, warmup - 1) if first < max_seconds / 4 else 0
    reps = repeats if first < max_seconds / 2 else 1
    latency = accounting.measure_latency(fn, warmup=remaining_warmup, repeats=reps, max_seconds=max_seconds)
    return flops_box["flops"], peak, latency, out_box["out"]


def bench_variants(cfg) -> list[Variant]:
    """`bench.methods` through the variant grammar (every registered method when empty); unknown
    names and repeated entries are one clear error before any work."""
    variants = [parse_variant(m, methods=list_compressors()) for m in cfg.methods or list_compressors()]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise UserError(f"bench.methods lists a method twice: {names}")
    return variants


def _budgets(v: Variant, cfg) -> list[float | int]:
    if v.budget is not None:  # method@budget: that budget only
        return [v.budget]
    return [1.0] if v.method == "identity" else sorted(cfg.budgets)  # small K first


class CompressorsBench(BenchSpec):
    """The compressors bench as a runner spec: a variant is a method (or `method@budget`),
    measured at every grid x batch x budget (its own rows: `Evaluation.rows`); nothing trains;
    the information-kept measures carry intervals over scenes. The plain references are
    timed after every method (`extra_rows`), then the speed targets."""

    task = "compressors"
    reference = None
    method_key = None
    budget_key = None
    trains = False

    def __init__(self, bench_cfg, log: Callable[[str], None]) -> None:
        self.b, self.log = bench_cfg, log
        self.methods = list_compressors()
        self.skipped: list[str] = []
        self.history: dict[tuple[str, int], tuple[int, int, float]] = {}  # (method, batch) -> (N, K, seconds)
        self.fast_rows: list[ResultRow] = []
        self.reference_rows: list[ResultRow] = []
        self.budgets_of: dict[str, list[float | int]] = {}
        self.targets_md, self.targets = "", {}
        self._inputs: dict[tuple[tuple[int, ...], int], dict[str, torch.Tensor]] = {}
        self.t_start = time.perf_counter()
        self.plot = plot_information_kept

    def variant_names(self, cfg) -> list[str]:
        return list(self.b.methods or list_compressors())

    def variant_config(self, cfg, variant: Variant, seed: int, run_dir: Path):
        self.budgets_of.setdefault(variant.method, [])
        self.budgets_of[variant.method] = sorted(set(self.budgets_of[variant.method]) | set(_budgets(variant, self.b)))
        return cfg

    def inputs(self, grid: tuple[int, ...], batch: int) -> dict[str, torch.Tensor]:
        # generated once per grid and batch, shared by every method (about 1 GiB at the defaults)
        if (grid, batch) not in self._inputs:
            self._inputs[(grid, batch)] = bench_inputs(grid, self.b.dim, self.b.text_dim, batch, self.b.seed)
        return self._inputs[(grid, batch)]

    def evaluate(self, vcfg, variant: Variant) -> Evaluation:
        cfg, name = self.b, variant.method
        cls = COMPRESSORS.get(name)
        largest_n = max(math.prod(g) for g in cfg.grids)
        rows: list[ResultRow] = []
        for grid_list in cfg.grids:
            grid = tuple(int(g) for g in grid_list)
            n = math.prod(grid)
            for batch in cfg.batches:
                inputs = self.inputs(grid, batch)
                for i, budget in enumerate(_budgets(variant, cfg)):
                    row = self._measure_row(cls, name, inputs, grid, n, batch, budget,
                                            must_run=n == largest_n and batch == min(cfg.batches) and i == 0)
                    if row is not None:
                        rows.append(row)
        self.fast_rows.extend(rows)
        return Evaluation(cases={}, rows=rows)

    def _measure_row(self, cls, name, inputs, grid, n, batch, budget, must_run: bool) -> ResultRow | None:
        cfg = self.b
        k = resolve_budget(budget, n, name)
        # Every method gets one row at the largest N (batch 1, smallest budget): the proof that it
        # runs there on this machine; other rows are skipped when the same method's last row,
        # scaled by its cost formula, says they would be slow.
        est = _estimate(cls, self.history.get((name, batch)), n, k, cfg.dim)
        if est > cfg.max_seconds and not must_run:
            self.skipped.append(f"{name} N={n} B={batch} K={k}: expected ~{est:.0f} s > {cfg.max_seconds:.0f} s")
            return None
        torch.manual_seed(cfg.seed)
        comp = _sized_for(name, k, grid, cfg).eval()
        fn = _call(comp, inputs, grid, k)
        try:
            flops, peak, latency, out = _measure(fn, comp, cfg.repeats, cfg.warmup, cfg.max_seconds)
        except ValueError as e:
            # Grid-structured methods refuse budgets they cannot lay out; measure the nearest one
            # they can instead (the row's `tokens` says which).
            near = _nearest_budget(str(e), k)
            if near is None:
                self.skipped.append(f"{name} N={n} B={batch} K={k}: {e}")
                return None
            k = near
            fn = _call(comp, inputs, grid, k)
            flops, peak, latency, out = _measure(fn, comp, cfg.repeats, cfg.warmup, cfg.max_seconds)
        self.history[(name, batch)] = (n, k, latency / 1e3)
        metrics: dict[str, Any] = {"N": n, "grid": "x".join(map(str, grid)), "batch": batch,
                                   "budget": budget, "kept_ratio": out.tokens.shape[1] / n}
        cases = None
        if not cls.learnable and out.tokens.shape[-1] == cfg.dim and batch == min(cfg.batches):
            info, cases = self._information_kept(comp, grid, k, inputs, out, batch, latency)
            metrics.update(info)
        metrics["learned"] = cls.learnable
        row = ResultRow(name, int(out.tokens.shape[1]), flops, accounting.count_params(comp), latency, peak, metrics,
                        cases=cases)
        self.log(f"{name:16s} N={n:6d} B={batch} K={k:6d} {latency:10.1f} ms {peak:8.1f} MiB {flops / 1e9:8.2f} GFLOP")
        del out, comp
        gc.collect()
        return row

    def _information_kept(self, comp, grid, k, inputs, out, batch, latency_ms) -> tuple[dict[str, Any], dict[str, Any]]:
        """nearest_kept and coverage: the mean over `info_batch` scenes with its bootstrap 95 %
        interval (metrics), and the per-scene values (cases, under the input seed)."""
        scenes = self.b.info_batch
        if scenes != batch and latency_ms / 1e3 * scenes / batch <= self.b.max_seconds:
            inputs = self.inputs(grid, scenes)
            with torch.no_grad():
                out = _call(comp, inputs, grid, k)()
        else:  # the row's own scenes (a slow method at a large N: one more call would cost too much)
            scenes = batch
        tokens, kept, mask = inputs["tokens"], out.tokens, out.mask
        cases: dict[str, list] = {"scene": list(range(scenes)), "nearest_kept": [], "coverage": []}
        for i in range(scenes):
            cases["nearest_kept"].append(reconstruction_kept(tokens[i:i + 1], kept[i:i + 1],
                                                             None if mask is None else mask[i:i + 1]))
            cases["coverage"].append(coverage(tokens[i:i + 1], kept[i:i + 1]))
        metrics: dict[str, Any] = {"info_scenes": scenes}
        for name in ("nearest_kept", "coverage"):
            metrics[name] = float(np.mean(cases[name]))
            if scenes > 1:
                metrics[f"{name}_ci"] = list(bootstrap_interval(mean_of(name), {name: np.asarray(cases[name])}))
        return metrics, {f"seed_{self.b.seed}": cases}

    def after_all(self, cfg, vcfgs) -> None:
        from medvtc.common.compressors import references

        if self.b.references:
            for grid_list in self.b.grids:
                grid = tuple(int(g) for g in grid_list)
                for batch in self.b.batches:
                    self.reference_rows.extend(_reference_rows(references, self.inputs(grid, batch), grid, self.b,
                                                               self.fast_rows, self.skipped, self.log, self.budgets_of))
        self._inputs.clear()
        gc.collect()
        self.targets_md, self.targets = _targets(self.b, references, self.log, list(self.budgets_of))

    def extra_rows(self) -> list[ResultRow]:
        return list(self.reference_rows)

    def results_config(self, cfg) -> dict[str, Any]:
        return {**asdict(self.b), "skipped": list(self.skipped), "targets": self.targets,
                "elapsed_s": round(time.perf_counter() - self.t_start, 1),
                "notes": "peak_mem_mb is the extra peak over the memory in use before the call (inputs "
                         "excluded); information-kept measures only for training-free methods."}

    def markdown_extra(self, rows: list[ResultRow], cfg) -> str:
        skipped = "\n### Skipped rows\n\n" + "\n".join(f"- {s}" for s in self.skipped) + "\n" if self.skipped else ""
        return self.targets_md + skipped


def run_benchmark(cfg, output: str | Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    """`cfg` is the compressors task's `bench` section (CompressorBenchConfig)."""
    from types import SimpleNamespace

    bench_variants(cfg)  # unknown names and repeated entries: one clear error before any work
    torch.manual_seed(cfg.seed)
    spec = CompressorsBench(cfg, log)
    run_bench(spec, SimpleNamespace(bench=cfg, seed=cfg.seed, output_dir=str(output)), output, log=log)
    paths = {suffix: Path(output) / f"compressors.{suffix}" for suffix in ("json", "md", "png")}
    log(f"wrote {paths['json']}, {paths['md']}, {paths['png']} in {time.perf_counter() - spec.t_start:.0f} s")
    return paths


def _sized_for(name: str, k: int, grid: tuple[int, ...], cfg):
    """The method built by the core resolver to serve budget K per call: query-based
    resamplers get at least K queries (their default when larger), so that every budget is
    measured; everything else keeps its defaults (Compressor-VLA splits its budget itself)."""
    from medvtc.common.compressors import resolve_compressor

    return resolve_compressor(name, k, grid=grid, dim=cfg.dim, text_dim=cfg.text_dim, per_call=True)


def _estimate(cls, last: tuple[int, int, float] | None, n: int, k: int, d: int) -> float:
    """Seconds a row should take, from the method's last row scaled by its `cost(n, k, d)`."""
    if last is None:
        return 0.0
    n0, k0, t0 = last
    c0, c1 = cls.cost(n0, k0, d), cls.cost(n, k, d)
    if math.isfinite(c0) and math.isfinite(c1) and c0 > 0 and c1 > 0:
        return t0 * c1 / c0
    return t0 * (n / n0) * max(1.0, k / k0)


def _nearest_budget(message: str, k: int) -> int | None:
    import re

    found = [int(x) for x in re.findall(r"\b\d+\b", message.split("nearest")[-1])] if "nearest" in message else []
    return min(found, key=lambda c: abs(c - k)) if found else None


def _reference_rows(references, inputs, grid, cfg, rows, skipped, log, budgets_of) -> list[ResultRow]:
    """The plain references, timed on the same inputs as their fast counterparts (at the budgets
    the fast ones were measured at)."""
    out_rows = []
    n = math.prod(grid)
    batch = inputs["tokens"].shape[0]
    for name, ref in references.REFERENCES.items():
        if name not in budgets_of:
            continue
        for budget in budgets_of[name]:
            k = resolve_budget(budget, n, name)
            fast = next((r for r in rows if r.method == name and r.metrics.get("N") == n and r.metrics.get("batch") == batch and r.tokens == k), None)
            est = references.estimated_seconds(name, n, k, cfg.dim, batch)
            if fast is None or est > cfg.max_seconds:
                skipped.append(f"{name}[reference] N={n} B={batch} K={k}: expected {est:.0f} s > {cfg.max_seconds:.0f} s")
                continue
            fn = lambda: ref(inputs["tokens"], k)  # noqa: E731
            flops, peak, latency, _ = _measure(fn, None, 1, 0, cfg.max_seconds)
            out_rows.append(ResultRow(f"{name}[reference]", k, flops, 0, latency, peak,
                                      {"N": n, "grid": "x".join(map(str, grid)), "batch": batch, "budget": budget,
                                       "speedup_of_fast": latency / fast.latency_ms}))
            log(f"{name + '[ref]':16s} N={n:6d} B={batch} K={k:6d} {latency:10.1f} ms  ({latency / fast.latency_ms:.1f}x the fast one)")
    return out_rows


def _targets(cfg, references, log, methods) -> tuple[str, dict[str, Any]]:
    """DivPrune and FLoC at `target_grid`, `target_budget` (N=4096, K=410 by default), B=1:
    speed ratio against the plain reference and whether the output is the same."""
    wanted = [m for m in ("divprune", "floc") if m in methods and m in references.REFERENCES]
    if not wanted:
        return "", {}
    grid = tuple(cfg.target_grid)
    k = cfg.target_budget
    inputs = bench_inputs(grid, cfg.dim, cfg.text_dim, 1, cfg.seed)
    results: dict[str, Any] = {"grid": list(grid), "k": k}
    lines = [f"### Targets: N={math.prod(grid)} ({'x'.join(map(str, grid))}), K={k}, D={cfg.dim}, batch 1", "",
             "| method | fast ms | reference ms | speed-up | same output |", "|---|---|---|---|---|"]
    for name in wanted:
        comp = create_compressor(name, dim=cfg.dim, text_dim=cfg.text_dim).eval()
        fast_out = comp(inputs["tokens"], grid=grid, budget=k)
        fast_ms = accounting.measure_latency(lambda: comp(inputs["tokens"], grid=grid, budget=k), warmup=1, repeats=3)
        ref = references.REFERENCES[name]
        ref_out = ref(inputs["tokens"], k)
        ref_ms = accounting.measure_latency(lambda: ref(inputs["tokens"], k), warmup=0, repeats=3)
        same = references.same_output(name, inputs["tokens"], fast_out, ref_out)
        results[name] = {"fast_ms": fast_ms, "reference_ms": ref_ms, "speedup": ref_ms / fast_ms, "same_output": same}
        lines.append(f"| {name} | {fast_ms:.1f} | {ref_ms:.1f} | {ref_ms / fast_ms:.1f}x | {same} |")
        log(f"target {name}: {ref_ms / fast_ms:.1f}x faster than the reference, same output: {same}")
    return "\n".join(lines) + "\n", results


def plot_information_kept(rows: list[dict[str, Any]], path: Path) -> None:
    """Information kept (nearest reconstruction) against keep-ratio, per method, one panel per N (batch 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({r["metrics"].get("N") for r in rows if "nearest_kept" in r["metrics"]})
    if not ns:
        fig, ax = plt.subplots()
        ax.text(0.5, 0.5, "no information-kept rows", ha="center")
        fig.savefig(path, format="png")
        plt.close(fig)
        return
    fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 4.2), squeeze=False)
    methods = sorted({r["method"] for r in rows if "nearest_kept" in r["metrics"]})
    cmap = plt.get_cmap("tab20")
    for ax, n in zip(axes[0], ns):
        for i, m in enumerate(methods):
            pts = sorted((r["metrics"]["kept_ratio"], r["metrics"]["nearest_kept"]) for r in rows
                         if r["method"] == m and r["metrics"].get("N") == n and r["metrics"].get("batch") == min(
                             rr["metrics"].get("batch", 1) for rr in rows) and "nearest_kept" in r["metrics"])
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=m, color=cmap(i % 20))
        grid = next(r["metrics"]["grid"] for r in rows if r["metrics"].get("N") == n)
        ax.set_title(f"N={n} ({grid})")
        ax.set_xlabel("tokens kept / N")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("information kept (1 - rel. recon. error)")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


__all__ = ["run_benchmark", "bench_inputs", "bench_variants", "plot_information_kept"]
