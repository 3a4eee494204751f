"""One runner for every `medvtc bench`: variants, seeds, train-or-reuse, intervals, partial results.

A task describes its benchmark with a `BenchSpec` (what a variant changes in its config, how to
train and evaluate one, which per-case statistics get intervals); `run_bench` does the rest, the
same way for every task:

- **Variants**, one grammar everywhere: `method` (e.g. `pooling`, `none`), `method@budget`
  (`pixel_shuffle@64`, `tome@0.25`), or a named ablation from the task's table
  (`BenchSpec.ablations`: name -> config overrides, e.g. `stc_only`). A method sets
  `BenchSpec.method_key`, a budget `BenchSpec.budget_key`.
- **Seeds**: `bench.seeds` (default `[0]`); each variant trains once per seed, in
  `bench.output_dir/<variant>/seed_<s>`. Rows report the mean over seeds, the per-seed values
  (`<metric>_per_seed`) and intervals that resample the test cases once for all seeds.
- **Train or reuse by settings**: before training, the run folder gets `bench_settings.json`,
  the flattened training-relevant keys (`BenchSpec.settings_sections`, less bookkeeping). A
  finished or partial run is reused (a partial one resumes) only when every key matches;
  otherwise the bench stops with one line naming the first differing key, or, with `--retrain`,
  deletes that run and trains it again (a matching run is never deleted). A run made by hand with `medvtc train` (no
  bench_settings.json) is checked against its saved `config.yaml`.
- **Evaluation results are kept** with the run (`bench_eval.json`, keyed by the settings and
  the evaluation's own settings), so a stopped bench resumes where it stopped: finished variants
  are neither retrained nor re-evaluated.
- **Intervals**: every metric of `BenchSpec.statistics` gets `<m>_ci` (95 % percentile
  bootstrap over test cases, 2,000 resamples; Wilson for success rates) and, against the
  reference variant, `<m>_diff_ci` (paired bootstrap over the same cases). Per-case results go
  into the json (`row["cases"]`), so intervals can be recomputed.
- **Other comparisons**: `BenchSpec.compare_rows` sees the rows (with their intervals and
  per-case results) before every write, for paired comparisons between two variants that are not
  the reference (ct-report: full resolution against downsampled input); `hide_in_table` keeps a
  family of metrics (ct-report's per-label F1) in the json but out of the markdown's main table.
- **Partial results** (`<task>.partial.*`) are written after each variant; the final files
  replace them at the end.
- **CPU time**: each run's training (`train_cpu_s`, summed over resumes by the trainer) and
  evaluation (`eval_cpu_s`, kept in `bench_eval.json`), plus this call's cost measurements, are
  summed into the results' `config.cpu_time` and a line of the markdown: what the whole bench
  cost, however many calls and resumes it took. A run with no CPU record (trained before it was
  kept) is named there, not guessed.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from medvtc.common.accounting import cpu_seconds
from medvtc.common.config import TRAIN_BOOKKEEPING, flatten_config, load_config, read_yaml, to_dict
from medvtc.common.errors import UserError
from medvtc.common.intervals import (
    Statistic,
    as_columns,
    bootstrap_interval,
    paired_difference_interval,
    wilson_interval,
)
from medvtc.common.io import atomic_write_json
from medvtc.common.results import ResultRow, write_results

SETTINGS_FILE = "bench_settings.json"
EVAL_FILE = "bench_eval.json"
TRAIN_FILE = "bench_train.json"


# ------------------------------------------------------------------------------------------------
# Variants
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """A bench variant: its name as written, the method and budget it sets, and the config
    overrides (`key.sub=value`) of a named ablation."""

    name: str
    method: str | None = None
    budget: int | float | None = None
    overrides: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        return self.name.replace("@", "_").replace("/", "_")


def _number(text: str, variant: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise UserError(f"bench.variants entry {variant!r}: budget {text!r} is not a number") from None


def parse_variant(text: str, ablations: Mapping[str, Sequence[str]] | None = None,
                  methods: Sequence[str] | None = None) -> Variant:
    """`method`, `method@budget` or a named ablation (see the module docstring). `methods`, when
    given, lists the valid method names (an unknown one is an error naming them)."""
    text = str(text).strip()
    ablations = {} if ablations is None else ablations  # a generated table may be empty when listed
    if text in ablations:
        return Variant(text, overrides=tuple(ablations[text]))
    method, at, budget = text.partition("@")
    if not method or (at and not budget):
        raise UserError(f"bench.variants entry {text!r}: expected 'method', 'method@budget' or one of the named "
                        f"ablations ({', '.join(sorted(ablations)) or 'none here'})")
    if methods is not None and method not in methods:
        choices = sorted(set(methods) | set(ablations))
        raise UserError(f"bench.variants entry {text!r}: unknown method {method!r}; valid: {', '.join(choices)}")
    return Variant(text, method=method, budget=_number(budget, text) if budget else None)


# ------------------------------------------------------------------------------------------------
# What a task provides
# ------------------------------------------------------------------------------------------------
@dataclass
class CaseStatistic:
    """A quality metric computed from per-case results: `statistic(cases)` (per-case columns ->
    a number), its interval kind, and its row name."""

    statistic: Statistic
    interval: Literal["bootstrap", "wilson"] = "bootstrap"
    # for "wilson": the per-case 0/1 column whose mean is the rate
    column: str | None = None


@dataclass
class Evaluation:
    """What evaluating one trained run gives: per-case columns (lists, one entry per test case,
    same order for every variant), metrics without intervals (diagnostics, extra figures) and,
    when measured per run, the cost fields of the row."""

    cases: dict[str, list[Any]]
    metrics: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)  # tokens, flops, params, latency_ms, peak_mem_mb
    # a variant measured at several settings (the compressors bench: grids x batches x budgets)
    # gives its rows itself; they carry no cases, so no intervals
    rows: list[ResultRow] | None = None
    # wall and CPU seconds the evaluation took (set by the runner; None: not recorded)
    seconds: float | None = None
    cpu_seconds: float | None = None


class BenchSpec:
    """A task's benchmark (see the module docstring). Subclasses set the class attributes and
    implement `train` and `evaluate`; the rest has defaults."""

    task: str = ""
    reference: str | None = "none"  # the variant every row is compared with
    method_key: str | None = "model.compressor"
    budget_key: str | None = "model.budget"
    methods: Sequence[str] | None = None  # valid method names (None: not checked here)
    ablations: Mapping[str, Sequence[str]] = {}
    settings_sections: tuple[str, ...] = ("seed", "data", "model", "stages", "train")
    keep_whole: tuple[str, ...] = ("compressor_args",)
    statistics: Mapping[str, CaseStatistic] = {}
    trains: bool = True
    retrain: bool = False  # set by run_bench: --retrain was given

    # -- config -----------------------------------------------------------------------------
    def variant_overrides(self, variant: Variant) -> list[str]:
        out = []
        if variant.method is not None and self.method_key:
            out.append(f"{self.method_key}={variant.method}")
        if variant.budget is not None and self.budget_key:
            out.append(f"{self.budget_key}={variant.budget}")
        return out + list(variant.overrides)

    def variant_config(self, cfg: Any, variant: Variant, seed: int, run_dir: Path) -> Any:
        """The config a variant trains with: the bench's config plus the variant's overrides,
        the seed and the run folder."""
        overrides = self.variant_overrides(variant) + [f"seed={seed}", f"output_dir={run_dir}"]
        return load_config(type(cfg), None, overrides, base=to_dict(cfg))

    def settings(self, cfg_tree: Mapping[str, Any]) -> dict[str, Any]:
        """The flattened keys a run's weights depend on (from a config as a dict)."""
        flat = flatten_config({k: cfg_tree[k] for k in self.settings_sections if k in cfg_tree}, self.keep_whole)
        # selection (and the convergence budget on it) make the evaluations' timing change the weights
        bookkeeping = TRAIN_BOOKKEEPING - ({"eval_every"} if flat.get("train.select_metric") else set())
        flat = {k: v for k, v in flat.items() if not (k.startswith("train.") and k[6:] in bookkeeping)}
        return json.loads(json.dumps(flat, default=str))  # tuples -> lists, as read back from json

    def eval_settings(self, cfg: Any) -> dict[str, Any]:
        """What an evaluation depends on besides the weights (test split, decoding, episodes...)."""
        return {}

    # -- work -------------------------------------------------------------------------------
    def is_trained(self, run_dir: Path) -> bool:
        return (run_dir / "final").is_dir()

    def train_seconds(self, run_dir: Path) -> float | None:
        """Seconds the run spent training, carried over resumes: the trainer's own `train_s`
        in the run's metrics.csv (None when there is none: the runner then times its call)."""
        from medvtc.common.trainer import read_training_summary

        summary = read_training_summary(run_dir) if (run_dir / "metrics.csv").is_file() else None
        return None if not summary or "train_s" not in summary else float(summary["train_s"])

    def train_cpu_seconds(self, run_dir: Path) -> float | None:
        """CPU seconds the run spent training, over all resumes (the trainer's `train_cpu_s`);
        None when its log has none."""
        from medvtc.common.trainer import read_training_summary

        summary = read_training_summary(run_dir) if (run_dir / "metrics.csv").is_file() else None
        return None if not summary or "train_cpu_s" not in summary else float(summary["train_cpu_s"])

    def weights_signature(self, run_dir: Path) -> list[list[Any]]:
        """(file, size, mtime) of the run's final weights: a saved evaluation of other weights (a
        run retrained by hand under the same settings) is never reused."""
        final = run_dir / "final"
        files = sorted(final.rglob("*.safetensors")) if final.is_dir() else []
        return [[str(f.relative_to(run_dir)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]

    def train(self, vcfg: Any) -> None:
        raise NotImplementedError

    def evaluate(self, vcfg: Any, variant: Variant) -> Evaluation:
        raise NotImplementedError

    def after_all(self, cfg: Any, vcfgs: Mapping[str, Any]) -> None:
        """Work once every variant is trained and evaluated, before the final files (extra
        measurements that `markdown_extra` / `results_config` then report)."""

    def measure_costs(self, vcfgs: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]] | None:
        """Costs measured together after every variant is trained (the robot policies are timed
        round by round, side by side); None when `evaluate` measures them per run."""
        return None

    def prepare(self, cfg: Any) -> None:
        """Checks and data before the first (long) training run."""

    def variant_names(self, cfg: Any) -> list[str]:
        """The variants to run, as written (`bench.variants`)."""
        return list(cfg.bench.variants)

    # -- output -----------------------------------------------------------------------------
    # metric-name prefixes kept in the json but left out of the markdown's main and difference
    # tables (a family of metrics the spec shows in a table of its own, in `markdown_extra`)
    hide_in_table: tuple[str, ...] = ()

    def compare_rows(self, rows: list[ResultRow], cfg: Any) -> None:
        """Comparisons between rows other than against the reference (ct-report: full resolution
        against downsampled input at equal budgets), once the rows have their intervals and
        cases; called before every write (partial and final), so `results_config` and
        `markdown_extra` can report what it found. It may add metrics to the rows."""

    def extra_rows(self) -> list[ResultRow]:
        """Rows that belong to no one variant (the compressors bench's reference implementations),
        appended after the variants' rows."""
        return []

    def markdown_extra(self, rows: list[ResultRow], cfg: Any) -> str:
        return ""

    plot: Callable[[list[dict[str, Any]], Path], None] | None = None

    def results_config(self, cfg: Any) -> dict[str, Any]:
        return to_dict(cfg)


# ------------------------------------------------------------------------------------------------
# Train or reuse
# ------------------------------------------------------------------------------------------------
def settings_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for each differing key; a key only one side has counts
    as differing (its value shown as <absent>)."""
    absent = "<absent>"
    keys = list(current) + [k for k in saved if k not in current]
    return [(k, saved.get(k, absent), current.get(k, absent)) for k in keys if saved.get(k, absent) != current.get(k, absent)]


# train.* keys added after runs were made, and the values at which they change nothing: left out
# of the settings there, so that older runs (whose settings lack them) stay reusable
_OFF_WHEN = {
    "train.select_metric": lambda flat: flat.get("train.select_metric") is None and flat.get("train.select_mode", "max") == "max",
    "train.select_mode": lambda flat: flat.get("train.select_metric") is None and flat.get("train.select_mode", "max") == "max",
    "train.plateau_window": lambda flat: not flat.get("train.plateau_window"),
    "train.plateau_delta": lambda flat: not flat.get("train.plateau_window"),
    "train.plateau_min_steps": lambda flat: not flat.get("train.plateau_window"),
}


def comparable_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A run's settings less the train.* keys that are off (`_OFF_WHEN`): what reuse compares."""
    return {k: v for k, v in settings.items() if not (k in _OFF_WHEN and _OFF_WHEN[k](settings))}


def run_settings(spec: BenchSpec, cfg_tree: Mapping[str, Any]) -> dict[str, Any]:
    return comparable_settings(spec.settings(cfg_tree))


def _saved_settings(spec: BenchSpec, run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / SETTINGS_FILE
    if path.is_file():
        return comparable_settings(json.loads(path.read_text())["settings"])
    for candidate in (run_dir / "config.yaml", run_dir / "final" / "config.yaml"):
        if candidate.is_file():  # a run made with `medvtc train` into this folder
            return run_settings(spec, read_yaml(candidate))
    return None


def train_or_reuse(spec: BenchSpec, vcfg: Any, run_dir: Path, retrain: bool, log: Callable[[str], None]) -> tuple[str, float | None]:
    """Train the run in `run_dir` unless a matching one is there; returns (status, train seconds)
    with status "reused", "resumed" or "trained"."""
    current = run_settings(spec, to_dict(vcfg))
    status = "trained"
    if run_dir.exists() and any(run_dir.iterdir()):
        saved = _saved_settings(spec, run_dir)
        diff = settings_diff(saved, current) if saved is not None else [("settings", "<unknown>", "<this bench's>")]
        if diff and not retrain:
            key, old, new = diff[0]
            more = f", and {len(diff) - 1} more" if len(diff) > 1 else ""
            raise UserError(f"{run_dir} holds a run trained with other settings ({key}: {old!r} there, {new!r} now{more}); "
                            "pass --retrain to train it again, or set bench.output_dir to another folder")
        if diff:  # only with --retrain: a run of other settings is replaced, a matching one never
            log(f"medvtc bench: --retrain: removing {run_dir}")
            shutil.rmtree(run_dir)
        elif spec.is_trained(run_dir):
            return "reused", _train_seconds(spec, run_dir)
        else:
            status = "resumed"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / SETTINGS_FILE, {"settings": current})
    log(f"medvtc bench: {'resuming' if status == 'resumed' else 'training'} {run_dir}")
    (run_dir / EVAL_FILE).unlink(missing_ok=True)  # results of older weights
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    spec.train(vcfg)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    if spec.train_seconds(run_dir) is None:  # no training log to read it from: this call's times
        atomic_write_json(run_dir / TRAIN_FILE, {"train_s": round(wall, 1), "train_cpu_s": round(cpu, 3),
                                                 "note": "wall and CPU seconds of the bench's last training call"})
    return status, _train_seconds(spec, run_dir)


def _train_seconds(spec: BenchSpec, run_dir: Path) -> float | None:
    logged = spec.train_seconds(run_dir)
    if logged is not None:
        return round(float(logged), 1)
    record = run_dir / TRAIN_FILE
    return json.loads(record.read_text()).get("train_s") if record.is_file() else None


def train_cpu_seconds(spec: BenchSpec, run_dir: Path) -> float | None:
    """The run's training CPU seconds: the trainer's log, else the runner's record of its call."""
    logged = spec.train_cpu_seconds(run_dir)
    if logged is not None or spec.train_seconds(run_dir) is not None:
        return None if logged is None else round(float(logged), 3)
    record = run_dir / TRAIN_FILE
    return json.loads(record.read_text()).get("train_cpu_s") if record.is_file() else None


def evaluate_or_reuse(spec: BenchSpec, vcfg: Any, variant: Variant, run_dir: Path, log: Callable[[str], None]) -> Evaluation:
    key = {"settings": run_settings(spec, to_dict(vcfg)), "eval": json.loads(json.dumps(spec.eval_settings(vcfg), default=str)),
           "weights": spec.weights_signature(run_dir)}
    path = run_dir / EVAL_FILE
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            if doc.get("key") == key:
                log(f"medvtc bench: reusing the evaluation in {path}")
                return Evaluation(doc["cases"], doc["metrics"], doc.get("cost", {}),
                                  seconds=doc.get("eval_s"), cpu_seconds=doc.get("eval_cpu_s"))
        except (OSError, json.JSONDecodeError, KeyError):
            pass
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    ev = spec.evaluate(vcfg, variant)
    ev.seconds, ev.cpu_seconds = round(time.perf_counter() - t0, 1), round(cpu_seconds() - cpu0, 3)
    atomic_write_json(path, {"key": key, "cases": ev.cases, "metrics": ev.metrics, "cost": ev.cost,
                             "eval_s": ev.seconds, "eval_cpu_s": ev.cpu_seconds})
    return ev


# ------------------------------------------------------------------------------------------------
# Rows and intervals
# ------------------------------------------------------------------------------------------------
def _interval(stat: CaseStatistic, case_sets: list[dict[str, np.ndarray]], seed: int) -> tuple[float, float]:
    # Wilson for one seed's episodes; with several seeds the same episodes are played by each,
    # so they are not independent trials: the case bootstrap of the seed mean instead
    if stat.interval == "wilson" and len(case_sets) == 1:
        successes = sum(int(np.sum(c[stat.column])) for c in case_sets)
        trials = sum(len(c[stat.column]) for c in case_sets)
        return wilson_interval(successes, trials)
    return bootstrap_interval(stat.statistic, case_sets, seed=seed)


def _rounded(x: float, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def add_intervals(spec: BenchSpec, rows: list[ResultRow], cases: Mapping[str, list[dict[str, np.ndarray]]], seed: int = 0,
                  memo: dict[tuple[str, str, str], tuple[float, float]] | None = None) -> None:
    """`<m>`, `<m>_per_seed`, `<m>_ci` and, against the reference row, `<m>_diff` / `<m>_diff_ci`
    for every statistic of the spec, into each row's metrics. `memo` keeps intervals already
    computed (the partial results after each variant would otherwise redo every row's)."""
    memo = {} if memo is None else memo
    ref = cases.get(spec.reference) if spec.reference else None
    for row in rows:
        sets = cases[row.method]
        for name, stat in spec.statistics.items():
            try:
                per_seed = [stat.statistic(c) for c in sets]
            except KeyError:
                continue  # a variant without that per-case column (e.g. no labels CSV)
            row.metrics[name] = _rounded(float(np.mean(per_seed)))
            if len(sets) > 1:
                row.metrics[f"{name}_per_seed"] = [_rounded(v) for v in per_seed]
            if (row.method, name, "ci") not in memo:
                memo[(row.method, name, "ci")] = _interval(stat, sets, seed)
            row.metrics[f"{name}_ci"] = [_rounded(v) for v in memo[(row.method, name, "ci")]]
            if ref is not None and row.method != spec.reference:
                try:
                    base = float(np.mean([stat.statistic(c) for c in ref]))
                    if (row.method, name, "diff") not in memo:
                        memo[(row.method, name, "diff")] = paired_difference_interval(stat.statistic, sets, ref, seed=seed)
                    diff_ci = memo[(row.method, name, "diff")]
                except (KeyError, ValueError):
                    continue  # the reference lacks the column, or other cases
                row.metrics[f"{name}_diff"] = _rounded(float(np.mean(per_seed)) - base)
                row.metrics[f"{name}_diff_ci"] = [_rounded(v) for v in diff_ci]


def _mean_metrics(evals: list[Evaluation]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in evals[0].metrics:
        values = [e.metrics.get(key) for e in evals]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = _rounded(float(np.mean(values))) if len(values) > 1 else values[0]
            if len(values) > 1:
                out[f"{key}_per_seed"] = values
        else:
            out[key] = values[0] if len(values) == 1 else values
    return out


def _row(name: str, evals: list[Evaluation], cost: Mapping[str, Any] | None) -> ResultRow:
    c = dict(cost or evals[0].cost)
    metrics = _mean_metrics(evals)
    metrics.update(c.pop("metrics", {}))
    return ResultRow(method=name, tokens=int(c.get("tokens", 0) or 0), flops=float(c.get("flops", math.nan)),
                     params=int(c.get("params", 0) or 0), latency_ms=float(c.get("latency_ms", math.nan)),
                     peak_mem_mb=float(c.get("peak_mem_mb", math.nan)), metrics=metrics)


# ------------------------------------------------------------------------------------------------
# The runner
# ------------------------------------------------------------------------------------------------
def run_bench(spec: BenchSpec, cfg: Any, output: str | Path, retrain: bool = False,
              log: Callable[[str], None] = print) -> list[ResultRow]:
    b = cfg.bench
    variants = [parse_variant(v, spec.ablations, spec.methods) for v in spec.variant_names(cfg)]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise UserError(f"bench.variants lists a variant twice: {names}")
    seeds = [int(s) for s in getattr(b, "seeds", [cfg.seed])] or [int(cfg.seed)]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"bench.seeds lists a seed twice: {seeds}")
    t_start = time.perf_counter()
    # every variant's config first: a bad override fails before hours of training
    plan: list[tuple[Variant, int, Path, Any]] = []
    # a spec that does not train writes no run folder, so it needs no bench.output_dir
    runs = Path(b.output_dir) if spec.trains else Path(getattr(b, "output_dir", None) or cfg.output_dir)
    for v in variants:
        for s in seeds:
            run_dir = runs / v.folder / f"seed_{s}"
            plan.append((v, s, run_dir, spec.variant_config(cfg, v, s, run_dir)))
    spec.retrain = retrain  # a spec may act on it in prepare (e.g. ct-report's shared stages)
    spec.prepare(cfg)

    evals: dict[str, list[Evaluation]] = {}
    cases: dict[str, list[dict[str, np.ndarray]]] = {}
    status: dict[str, list[str]] = {}
    train_s: dict[str, list[float | None]] = {}
    vcfgs: dict[str, Any] = {}
    rows: list[ResultRow] = []
    memo: dict[tuple[str, str, str], tuple[float, float]] = {}
    cpu = CpuLedger()
    for v, s, run_dir, vcfg in plan:
        if spec.trains:
            st, secs = train_or_reuse(spec, vcfg, run_dir, retrain, log)
            cpu.add(f"{v.name}/seed_{s}", "train", train_cpu_seconds(spec, run_dir))
            ev = evaluate_or_reuse(spec, vcfg, v, run_dir, log)
        else:
            st, secs = "untrained", None
            cpu0 = cpu_seconds()
            ev = spec.evaluate(vcfg, v)
            ev.cpu_seconds = round(cpu_seconds() - cpu0, 3)
        cpu.add(f"{v.name}/seed_{s}", "eval", ev.cpu_seconds)
        evals.setdefault(v.name, []).append(ev)
        cases.setdefault(v.name, []).append(as_columns(ev.cases))
        status.setdefault(v.name, []).append(st)
        train_s.setdefault(v.name, []).append(secs)
        vcfgs.setdefault(v.name, vcfg)  # the first seed's config stands for the variant in cost runs
        if len(evals[v.name]) == len(seeds):
            rows = _rows(spec, evals, None, cases, status, train_s, seeds, memo)
            if evals[v.name][0].rows is None:
                log(f"medvtc bench: {v.name}: " + _summary(rows[-1], spec))
            spec.compare_rows(rows, cfg)
            write_results(spec.task, rows + spec.extra_rows(), {"partial": True, **spec.results_config(cfg),
                                                                "reference": spec.reference}, output,
                          name=f"{spec.task}.partial", plot=spec.plot, hide=spec.hide_in_table)

    cpu0 = cpu_seconds()
    spec.after_all(cfg, vcfgs)
    costs = spec.measure_costs(vcfgs)
    cpu.add("bench", "costs", round(cpu_seconds() - cpu0, 3))
    rows = _rows(spec, evals, costs, cases, status, train_s, seeds, memo)
    for r in rows:
        for part in ("train", "eval"):
            known = [cpu.runs.get(f"{r.method}/seed_{s}", {}).get(part) for s in seeds]
            if known and None not in known:
                r.metrics[f"{part}_cpu_s"] = known[0] if len(seeds) == 1 else round(float(np.mean(known)), 1)
    spec.compare_rows(rows, cfg)
    rows += spec.extra_rows()
    config = {**spec.results_config(cfg), "seeds": seeds, "elapsed_s": round(time.perf_counter() - t_start, 1),
              "cpu_time": cpu.summary(), "reference": spec.reference}
    extra = cpu.markdown() + spec.markdown_extra(rows, cfg)
    write_results(spec.task, rows, config, output, plot=spec.plot, markdown_extra=extra, hide=spec.hide_in_table)
    for suffix in ("json", "md", "png"):
        Path(output, f"{spec.task}.partial.{suffix}").unlink(missing_ok=True)
    if extra:
        log(extra)
    return rows


class CpuLedger:
    """CPU seconds of a bench's parts, per run ("<variant>/seed_<s>": {"train", "eval"}) and for
    the bench's own work ("bench": {"costs"}); a part whose time was never recorded is None, and
    the total says which runs it leaves out rather than guessing them."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, float | None]] = {}

    def add(self, run: str, part: str, seconds: float | None) -> None:
        self.runs.setdefault(run, {})[part] = None if seconds is None else float(seconds)

    def summary(self) -> dict[str, Any]:
        parts: dict[str, float] = {}
        for times in self.runs.values():
            for part, secs in times.items():
                if secs is not None:
                    parts[part] = parts.get(part, 0.0) + secs
        unknown = sorted(f"{run} ({part})" for run, times in self.runs.items() for part, secs in times.items() if secs is None)
        return {"total_cpu_s": round(sum(parts.values()), 3), **{f"{p}_cpu_s": round(v, 3) for p, v in parts.items()},
                "unknown": unknown, "per_run": self.runs,
                "note": "user + system CPU seconds (all threads, finished worker processes), summed over runs, resumes "
                        "and calls; costs: this call's cost measurements"}

    def markdown(self) -> str:
        s = self.summary()
        parts = ", ".join(f"{p} {s[f'{p}_cpu_s'] / 3600:.2f} h" for p in ("train", "eval", "costs") if f"{p}_cpu_s" in s)
        line = f"\nTotal CPU time: {s['total_cpu_s'] / 3600:.2f} h ({parts}; user + system, all runs and resumes)"
        if s["unknown"]:
            line += f"; not recorded (trained or evaluated before CPU time was kept): {', '.join(s['unknown'])}"
        return line + ".\n"


def _rows(spec: BenchSpec, evals, costs, cases, status, train_s, seeds, memo) -> list[ResultRow]:
    """Every finished variant's row (or its own rows), with intervals, status and cases."""
    rows: list[ResultRow] = []
    complete = {n: cases[n] for n, ev in evals.items() if len(ev) == len(seeds)}  # not a variant still running
    for name, ev in evals.items():
        if name not in complete:
            continue
        if ev[0].rows is not None:
            rows.extend(ev[0].rows)
            continue
        row = _row(name, ev, costs.get(name) if costs else None)
        _finish_rows(spec, [row], complete, evals, status, train_s, seeds, memo)
        rows.append(row)
    return rows


def _finish_rows(spec: BenchSpec, rows: list[ResultRow], cases, evals, status, train_s, seeds, memo) -> None:
    add_intervals(spec, rows, cases, memo=memo)
    for r in rows:
        r.metrics["run"] = status[r.method][0] if len(seeds) == 1 else status[r.method]
        secs = train_s[r.method]
        if all(x is not None for x in secs) and spec.trains:
            r.metrics["train_s"] = secs[0] if len(seeds) == 1 else round(float(np.mean(secs)), 1)
        r.cases = {f"seed_{s}": e.cases for s, e in zip(seeds, evals[r.method])}


def _summary(row: ResultRow, spec: BenchSpec) -> str:
    parts = []
    for name in list(spec.statistics)[:2]:
        if name in row.metrics and row.metrics[name] is not None:
            ci = row.metrics.get(f"{name}_ci")
            parts.append(f"{name}={row.metrics[name]:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and None not in ci else ""))
    return ", ".join(parts) + f" ({row.metrics.get('run')})"


__all__ = [
    "BenchSpec", "CaseStatistic", "Evaluation", "Variant", "add_intervals", "evaluate_or_reuse", "parse_variant",
    "CpuLedger", "run_bench", "settings_diff", "train_cpu_seconds", "train_or_reuse",
]
