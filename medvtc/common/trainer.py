"""The trainer every task shares.

- device chosen automatically (CUDA if present, else CPU); bf16 autocast on CUDA;
- gradient accumulation and clipping; warm-up then cosine / linear / constant LR schedule;
- seeded, and deterministic on CPU: a run killed at any moment and resumed with `resume=True`
  ends with the same weights as one that was not (the data order, RNG states, optimizer and
  scheduler all continue from the checkpoint);
- a progress bar with loss and throughput; metrics to TensorBoard and to `metrics.csv`, with
  `train_s`, the seconds spent in the training loop over all resumes, and `train_cpu_s`, the CPU
  seconds it used (this process and its finished workers; `read_training_summary`);
- a periodic evaluation hook, and checkpoint selection on it: with `select_metric` the weights of
  the best evaluation so far are kept in `output_dir/best` (`best.json` says which step and value;
  ties go to the later step) and `load_best()` puts them back into the model;
- a convergence budget on that evaluation (`plateau_window`, `plateau_delta`,
  `plateau_min_steps`; `max_steps` is the cap): training stops at the first evaluation where the
  best `select_metric` so far is no more than `plateau_delta` better than the best before the last
  `plateau_window` of the steps so far (`plateau_reached`). The evaluation history lives in the
  checkpoints' training state, so a killed and resumed run stops at the same step; a run that
  selects writes `convergence.json` (`CONVERGENCE_FILE`: the history, best step, plateau step);
- atomic safetensors checkpoints (see `medvtc.common.checkpoint`);
- DistributedDataParallel when launched by `torchrun` (gloo on CPU, NCCL on GPU): samplers are
  sharded, logged metrics are averaged over ranks, only rank 0 writes.

A task supplies the model, the datasets and two functions:
`step_fn(model, batch) -> loss | (loss, {name: float})` and
`eval_fn(model, dataset, device) -> {name: float}` (run on rank 0, RNG state preserved).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

import torch
from safetensors.torch import save_model
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from medvtc.common import checkpoint as ckpt
from medvtc.common.accounting import cpu_seconds
from medvtc.common.distributed import DistInfo, all_reduce_mean, barrier, init_distributed
from medvtc.common.errors import UserError
from medvtc.common.io import atomic_directory, atomic_path, atomic_write_json
from medvtc.common.seeding import get_rng_state, seed_everything, set_rng_state
from medvtc.common.threads import configure_threads

BEST_FILE = "best.json"
CONVERGENCE_FILE = "convergence.json"  # the validation curve, best step and plateau step of a selecting run
StepFn = Callable[[torch.nn.Module, Any], Any]
EvalFn = Callable[[torch.nn.Module, Dataset, torch.device], Mapping[str, float]]


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings shared by every task (`train.*` keys)."""

    max_steps: int = 200
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 0
    # torch CPU threads; 0: OMP_NUM_THREADS if set, else the cores this process may use
    # (medvtc.common.threads: why, and how OpenMP's threads wait under contention)
    threads: int = 0
    log_every: int = 10
    eval_every: int = 0
    # a metric the evaluation returns: the weights of its best evaluation are kept in
    # output_dir/best (select_mode: max or min). Selection changes the weights a run yields, so
    # eval_every counts as a setting then (medvtc.common.config.TRAIN_BOOKKEEPING says otherwise).
    select_metric: str | None = None
    select_mode: Literal["max", "min"] = "max"
    # convergence budget on select_metric (needs eval_every): stop at the first evaluation, at or
    # after plateau_min_steps, where the best value so far beats the best before the last
    # plateau_window of the steps so far (a fraction in (0, 1)) by no more than plateau_delta
    # (absolute, in the metric's units); max_steps stays the cap. null or 0: off.
    plateau_window: float | None = None
    plateau_delta: float = 0.0
    plateau_min_steps: int = 0
    save_every: int = 100
    keep_last: int = 2
    progress: bool = True
    deterministic: bool = True

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "save_every", "num_workers", "keep_last", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.select_mode not in ("max", "min"):
            raise ValueError(f"select_mode must be 'max' or 'min', got {self.select_mode!r}")
        if self.select_metric is not None and (not isinstance(self.select_metric, str) or not self.select_metric):
            raise ValueError(f"select_metric must be a metric name or null, got {self.select_metric!r}")
        w = self.plateau_window
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not (w == 0 or 0 < w < 1)):
            raise ValueError(f"plateau_window must be a fraction of the steps so far in (0, 1), or 0 / null for off, got {w!r}")
        if isinstance(self.plateau_delta, bool) or not isinstance(self.plateau_delta, (int, float)) \
                or not math.isfinite(self.plateau_delta) or self.plateau_delta < 0:
            raise ValueError(f"plateau_delta must be a number >= 0 (the metric's units), got {self.plateau_delta!r}")
        if isinstance(self.plateau_min_steps, bool) or not isinstance(self.plateau_min_steps, int) or self.plateau_min_steps < 0:
            raise ValueError(f"plateau_min_steps must be an integer >= 0, got {self.plateau_min_steps!r}")

    def plateau_problem(self) -> str | None:
        """What the convergence budget lacks to run (None: nothing, or it is off). Checked when
        training starts, not on loading: a run's saved config.yaml from before these keys existed
        gets today's defaults and must still load for evaluation."""
        if not self.plateau:
            return None
        if not self.select_metric:
            return f"train.plateau_window={self.plateau_window} needs train.select_metric (the evaluation metric it watches)"
        if self.eval_every < 1:
            return f"train.plateau_window={self.plateau_window} needs train.eval_every >= 1 (evaluations to watch), got {self.eval_every}"
        return None

    @property
    def plateau(self) -> bool:
        """Whether the convergence budget is on."""
        return bool(self.plateau_window)


def plateau_reached(history: list[tuple[int, float]] | list[list[Any]], step: int, window: float | None, delta: float,
                    mode: str = "max", min_steps: int = 0) -> bool:
    """The convergence rule (see `TrainConfig.plateau_window`): at `step`, with the evaluations
    `history` ((step, value), any order), has the best value improved by no more than `delta`
    over the last `window * step` steps? Needs an evaluation at or before the window's start
    (step * (1 - window)); non-finite values never count as an improvement."""
    if not window or step < max(1, min_steps):
        return False
    start = step * (1.0 - window)
    done = [(int(s), float(v)) for s, v in history if int(s) <= step and math.isfinite(float(v))]
    before = [v for s, v in done if s <= start]
    if not before:
        return False
    now = [v for _, v in done]
    gain = max(now) - max(before) if mode == "max" else min(before) - min(now)
    return gain <= delta + 1e-12  # float noise: a gain of exactly delta counts as no gain


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda was asked for, but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        if cfg.schedule == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape

    return fn


def move_to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def default_step_fn(model: torch.nn.Module, batch: Any) -> Any:
    return model(batch)


def _split_loss(out: Any) -> tuple[torch.Tensor, dict[str, float]]:
    if isinstance(out, tuple):
        loss, logs = out
        return loss, {k: float(v) for k, v in (logs or {}).items()}
    if isinstance(out, Mapping):
        logs = {k: float(v) for k, v in out.items() if k != "loss" and _is_scalar(v)}
        return out["loss"], logs
    return out, {}


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)


class _ResumeSampler(Sampler[int]):
    """The sharded, seeded order of one epoch, starting `skip` samples in.

    `DistributedSampler` gives a per-epoch permutation from (seed, epoch); resuming mid-epoch
    needs the same permutation with the consumed prefix dropped, which torch does not offer.
    """

    def __init__(self, base: DistributedSampler, skip: int) -> None:
        self.base = base
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


class MetricsLogger:
    """`metrics.csv` (long format: step, split, metric, value) and TensorBoard, on rank 0."""

    FIELDS = ["step", "split", "metric", "value", "time"]

    def __init__(self, output_dir: Path, resume_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.path = output_dir / "metrics.csv"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            # A killed run may have logged steps past its last checkpoint: drop them, since the
            # resumed run logs them again.
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.FIELDS)
                w.writeheader()
                w.writerows(rows)
        else:
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.FIELDS).writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:  # tensorboard is a dependency; keep training if it is broken
            self.tb = None

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        now = time.time()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS)
            for k, v in metrics.items():
                w.writerow({"step": step, "split": split, "metric": k, "value": f"{float(v):.6g}", "time": f"{now:.3f}"})
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{split}/{k}", float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def read_training_summary(run_dir: str | Path, up_to_step: int | None = None) -> dict[str, float] | None:
    """What a finished or interrupted run's `metrics.csv` says of its training, or None without
    one: `steps` (last logged), `train_loss` (the last logging window's mean), `train_s`, the
    seconds spent in the training loop over all resumes, and `train_cpu_s`, its CPU seconds (absent
    for runs begun before CPU time was recorded). Runs logged before `train_s` existed get
    an estimate from the rows' times (first to last train row, stretched over the steps before the
    first row), which also counts any pause between a kill and its resume. `up_to_step` ignores
    rows logged after that step (a killed run's rows past its checkpoint)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if r.get("split") == "train" and (up_to_step is None or int(r["step"]) <= up_to_step)]
    if not rows:
        return None
    last = max(int(r["step"]) for r in rows)
    at_last = {r["metric"]: float(r["value"]) for r in rows if int(r["step"]) == last}
    summary: dict[str, float] = {"steps": last}
    if "loss" in at_last:
        summary["train_loss"] = at_last["loss"]
    if "train_cpu_s" in at_last:
        summary["train_cpu_s"] = at_last["train_cpu_s"]
    if "train_s" in at_last:
        summary["train_s"] = at_last["train_s"]
    else:
        first = min(int(r["step"]) for r in rows)
        t_first = min(float(r["time"]) for r in rows if int(r["step"]) == first)
        t_last = max(float(r["time"]) for r in rows if int(r["step"]) == last)
        if last > first:
            summary["train_s"] = (t_last - t_first) * last / (last - first)
    return summary


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        train_set: Dataset,
        cfg: TrainConfig,
        output_dir: str | Path,
        *,
        seed: int = 0,
        step_fn: StepFn = default_step_fn,
        eval_fn: EvalFn | None = None,
        eval_set: Dataset | None = None,
        collate_fn: Callable | None = None,
        params: list[torch.nn.Parameter] | None = None,
    ) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.step_fn = step_fn
        self.eval_fn = eval_fn
        self.eval_set = eval_set
        self.collate_fn = collate_fn
        self.train_set = train_set
        self.device = resolve_device(cfg.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        # torchrun sets OMP_NUM_THREADS=1 per process unless the user chose a number
        self.threads = configure_threads(cfg.threads)
        seed_everything(seed, deterministic=cfg.deterministic)
        if len(train_set) < cfg.batch_size * self.dist.world_size:
            raise UserError(
                f"the training set has {len(train_set)} samples, fewer than one batch "
                f"(train.batch_size={cfg.batch_size} x {self.dist.world_size} processes)"
            )
        self.model = model.to(self.device)
        trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise UserError("the model has no trainable parameters for this stage")
        decay = [p for p in trainable if p.ndim >= 2]
        no_decay = [p for p in trainable if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.ddp_model: torch.nn.Module = self.model
        if self.dist.enabled:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None,
            )
        use_bf16 = self.device.type == "cuda" and cfg.precision in ("auto", "bf16")
        use_bf16 |= self.device.type == "cpu" and cfg.precision == "bf16"
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
        )
        self.step = 0
        self.epoch = 0
        self.samples_into_epoch = 0  # per rank
        self.train_seconds = 0.0  # in the training loop, summed over resumes
        # its CPU time, summed over resumes; None once resumed from a checkpoint that did not count it
        self.train_cpu_seconds: float | None = 0.0
        self.ckpt_root = self.output_dir / "checkpoints"
        self.best_dir = self.output_dir / "best"
        self.best: dict[str, Any] | None = None  # {"step", "metric", "value"} of the kept weights
        self.history: list[tuple[int, float]] = []  # (step, select_metric) of every evaluation, on rank 0
        self.plateau_step: int | None = None  # the step where the convergence budget stopped training
        if (problem := cfg.plateau_problem()) is not None:
            raise UserError(problem)
        if cfg.select_metric and (eval_fn is None or eval_set is None):
            raise UserError(f"train.select_metric={cfg.select_metric!r} needs an evaluation, but this task gave none")

    # -- state -------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "samples_into_epoch": self.samples_into_epoch,
            "train_seconds": self.train_seconds,
            "train_cpu_seconds": self.train_cpu_seconds,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": get_rng_state(),
            "world_size": self.dist.world_size,
            "eval_history": [[int(s), float(v)] for s, v in self.history],
            "plateau_step": self.plateau_step,
        }

    def save(self) -> None:
        if self.dist.is_main:
            ckpt.save_checkpoint(self.ckpt_root, self.step, self.model, self._state(), keep_last=self.cfg.keep_last)
        barrier(self.dist)

    def resume(self) -> bool:
        """Load the latest checkpoint if there is one; returns whether one was loaded."""
        path = ckpt.latest_checkpoint(self.ckpt_root)
        if path is None:
            return False
        ckpt.load_weights(self.model, path)
        state = ckpt.load_training_state(path)
        if state.get("world_size", 1) != self.dist.world_size:
            raise UserError(
                f"checkpoint {path} was written by {state.get('world_size')} processes; resume it "
                f"with the same number (this run has {self.dist.world_size})"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.samples_into_epoch = int(state["samples_into_epoch"])
        best = self.best_dir / BEST_FILE
        if self.cfg.select_metric and best.is_file():
            self.best = json.loads(best.read_text())
            if self.best.get("step", 0) > self.step:  # written after the checkpoint we resume from
                self.best = None
        if "eval_history" in state:
            self.history = [(int(s), float(v)) for s, v in state["eval_history"] if int(s) <= self.step]
        else:  # a checkpoint written before the history was kept: the log has it
            self.history = self._logged_history()
        stopped = state.get("plateau_step")
        self.plateau_step = int(stopped) if stopped is not None and self.cfg.plateau else None
        if "train_seconds" in state:
            self.train_seconds = float(state["train_seconds"])
        else:  # a checkpoint written before train_seconds existed: estimate it from the log
            logged = read_training_summary(self.output_dir, up_to_step=self.step) or {}
            self.train_seconds = float(logged.get("train_s", 0.0))
        # unknown (never a guess) when the checkpoint predates CPU accounting
        cpu = state.get("train_cpu_seconds")
        self.train_cpu_seconds = None if cpu is None else float(cpu)
        return True

    # -- selection ---------------------------------------------------------------------------
    def _keep_best(self, metrics: Mapping[str, float]) -> None:
        """Keep the weights in output_dir/best when `metrics` is the best evaluation so far."""
        name = self.cfg.select_metric
        if not name or not self.dist.is_main:
            return
        if name not in metrics:
            raise UserError(f"train.select_metric={name!r} is not a metric of this task's evaluation: "
                            f"it gives {sorted(metrics)}")
        value = float(metrics[name])
        if self.best is not None:
            old = float(self.best["value"])
            if not (value >= old if self.cfg.select_mode == "max" else value <= old):
                return
        self.best = {"step": self.step, "metric": name, "value": value, "mode": self.cfg.select_mode,
                     "metrics": {k: float(v) for k, v in metrics.items()}}
        with atomic_directory(self.best_dir, overwrite=True) as tmp:
            save_model(self.model, str(tmp / ckpt.WEIGHTS))
            (tmp / BEST_FILE).write_text(json.dumps(self.best, indent=1) + "\n")

    def _logged_history(self) -> list[tuple[int, float]]:
        """(step, select_metric) of the evaluations metrics.csv holds up to the current step."""
        path = self.output_dir / "metrics.csv"
        name = self.cfg.select_metric
        if not name or not path.is_file():
            return []
        with open(path, newline="") as f:
            rows = [(int(r["step"]), float(r["value"])) for r in csv.DictReader(f)
                    if r.get("split") == "eval" and r.get("metric") == name and int(r["step"]) <= self.step]
        return sorted(dict(rows).items())

    def _record(self, metrics: Mapping[str, float]) -> None:
        """Add this evaluation to the history the convergence rule reads (one entry per step)."""
        name = self.cfg.select_metric
        if not name or not self.dist.is_main or name not in metrics:
            return
        self.history = [(s, v) for s, v in self.history if s != self.step] + [(self.step, float(metrics[name]))]

    def _plateaued(self) -> bool:
        """Whether the convergence rule stops training at this step (decided on rank 0, shared)."""
        cfg = self.cfg
        stop = self.dist.is_main and plateau_reached(self.history, self.step, cfg.plateau_window, cfg.plateau_delta,
                                                     cfg.select_mode, cfg.plateau_min_steps)
        if self.dist.enabled:
            stop = all_reduce_mean({"stop": float(stop)}, self.dist, self.device)["stop"] > 0
        if stop:
            self.plateau_step = self.step
            if self.dist.is_main:
                start = self.step * (1.0 - float(cfg.plateau_window))
                print(f"medvtc: plateau at step {self.step}: the best {cfg.select_metric} improved by no more than "
                      f"{cfg.plateau_delta:g} since step {start:.0f} (the last {cfg.plateau_window:g} of the steps); "
                      f"stopping before train.max_steps={cfg.max_steps}")
        return bool(stop)

    def convergence(self) -> dict[str, Any]:
        """What `convergence.json` holds: the rule, the evaluation history, the best evaluation,
        where training stopped and why."""
        cfg = self.cfg
        finite = [(s, v) for s, v in self.history if math.isfinite(v)]
        sign = 1.0 if cfg.select_mode == "max" else -1.0
        best = max(finite, key=lambda sv: (sign * sv[1], sv[0])) if finite else None  # ties: the later step
        if self.best is not None:  # the kept weights' evaluation
            best = (int(self.best["step"]), float(self.best["value"]))
        return {
            "metric": cfg.select_metric, "mode": cfg.select_mode,
            "rule": {"plateau_window": cfg.plateau_window or None, "plateau_delta": cfg.plateau_delta,
                     "plateau_min_steps": cfg.plateau_min_steps, "eval_every": cfg.eval_every, "max_steps": cfg.max_steps},
            "stopped_by": "plateau" if self.plateau_step is not None else "max_steps",
            "plateau_step": self.plateau_step, "steps": self.step,
            "best_step": None if best is None else best[0], "best_value": None if best is None else best[1],
            "history": [[s, v] for s, v in sorted(self.history)],
        }

    def load_best(self) -> dict[str, Any] | None:
        """Load the kept best weights into the model; returns their record (None: no selection)."""
        if not self.cfg.select_metric or not (self.best_dir / BEST_FILE).is_file():
            return None
        ckpt.load_weights(self.model, self.best_dir)
        return json.loads((self.best_dir / BEST_FILE).read_text())

    # -- data --------------------------------------------------------------------------------
    def _loader(self, skip: int) -> DataLoader:
        base = DistributedSampler(
            self.train_set,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
        )
        base.set_epoch(self.epoch)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch * 1009 + self.dist.rank)
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            sampler=_ResumeSampler(base, skip),
            num_workers=self.cfg.num_workers,
            collate_fn=self.collate_fn,
            drop_last=True,
            generator=gen,
            persistent_workers=False,
        )

    def _micro_batches(self) -> Iterator[Any]:
        """Endless micro-batches; keeps `epoch` / `samples_into_epoch` up to date for resume."""
        while True:
            loader = self._loader(self.samples_into_epoch)
            for batch in loader:
                self.samples_into_epoch += self.cfg.batch_size
                yield batch
            self.epoch += 1
            self.samples_into_epoch = 0

    # -- loop --------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        if self.eval_fn is None or self.eval_set is None:
            return {}
        metrics: dict[str, float] = {}
        if self.dist.is_main:
            rng = get_rng_state()  # evaluation must not change the training trajectory
            self.model.eval()
            with torch.no_grad(), self.autocast():
                metrics = {k: float(v) for k, v in self.eval_fn(self.model, self.eval_set, self.device).items()}
            self.model.train()
            set_rng_state(rng)
        barrier(self.dist)
        return metrics

    def fit(self, resume: bool = False) -> dict[str, float]:
        cfg = self.cfg
        if resume:
            resumed = self.resume()
            if not resumed and self.dist.is_main:
                print(f"medvtc: no checkpoint under {self.ckpt_root}; starting from step 0")
        elif ckpt.latest_checkpoint(self.ckpt_root) is not None:
            raise UserError(
                f"{self.output_dir} already holds a run's checkpoints; pass --resume to continue it "
                f"or choose another output directory"
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        logger = MetricsLogger(self.output_dir, self.step, enabled=self.dist.is_main)
        progress = None
        if self.dist.is_main and cfg.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        self.model.train()
        batches = self._micro_batches()
        last_eval: dict[str, float] = {}
        stopped = self.plateau_step is not None  # a run resumed after its convergence budget stopped it
        evaluated_last = False  # the loop's last step was evaluated (the convergence budget stopped it)
        window_loss, window_n, window_samples, window_t0 = 0.0, 0, 0, time.perf_counter()
        extra_sums: dict[str, float] = {}
        seconds_before, loop_t0 = self.train_seconds, time.perf_counter()
        cpu_before, cpu_t0 = self.train_cpu_seconds, cpu_seconds()
        try:
            while self.step < cfg.max_steps and not stopped:
                self.optimizer.zero_grad(set_to_none=True)
                for micro in range(cfg.grad_accum):
                    batch = move_to(next(batches), self.device)
                    sync = micro == cfg.grad_accum - 1 or not self.dist.enabled
                    ctx = nullcontext() if sync else self.ddp_model.no_sync()
                    with ctx:
                        with self.autocast():
                            loss, logs = _split_loss(self.step_fn(self.ddp_model, batch))
                        if not torch.isfinite(loss):
                            raise RuntimeError(f"loss is {loss.item()} at step {self.step}")
                        (loss / cfg.grad_accum).backward()
                    window_loss += float(loss.detach())
                    window_n += 1
                    window_samples += cfg.batch_size * self.dist.world_size
                    for k, v in logs.items():
                        extra_sums[k] = extra_sums.get(k, 0.0) + v
                grad_norm = None
                if cfg.grad_clip is not None:
                    params = [p for g in self.optimizer.param_groups for p in g["params"]]
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                self.train_seconds = seconds_before + time.perf_counter() - loop_t0
                if cpu_before is not None:
                    self.train_cpu_seconds = cpu_before + cpu_seconds() - cpu_t0

                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    elapsed = max(time.perf_counter() - window_t0, 1e-9)
                    metrics = {"loss": window_loss / window_n, "lr": self.scheduler.get_last_lr()[0]}
                    metrics.update({k: v / window_n for k, v in extra_sums.items()})
                    if grad_norm is not None:
                        metrics["grad_norm"] = grad_norm
                    metrics = all_reduce_mean(metrics, self.dist, self.device)
                    metrics["samples_per_s"] = window_samples / elapsed
                    metrics["train_s"] = self.train_seconds
                    if self.train_cpu_seconds is not None:
                        metrics["train_cpu_s"] = self.train_cpu_seconds
                    logger.log(self.step, "train", metrics)
                    if progress is not None:
                        progress.set_postfix(loss=f"{metrics['loss']:.4f}", sps=f"{metrics['samples_per_s']:.1f}")
                    window_loss, window_n, window_samples, window_t0 = 0.0, 0, 0, time.perf_counter()
                    extra_sums = {}
                if progress is not None:
                    progress.update(1)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step != cfg.max_steps:
                    last_eval = self.evaluate()
                    logger.log(self.step, "eval", last_eval)
                    self._keep_best(last_eval)
                    self._record(last_eval)
                    if cfg.plateau and self._plateaued():
                        stopped = evaluated_last = True  # this evaluation is the last: saved below
                        break
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step != cfg.max_steps:
                    self.save()
            self.save()
            if not evaluated_last:  # at the cap (or resumed after a stop): the last evaluation
                last_eval = self.evaluate()
                logger.log(self.step, "eval", last_eval)
                self._keep_best(last_eval)
                self._record(last_eval)
            if cfg.select_metric and self.dist.is_main:
                atomic_write_json(self.output_dir / CONVERGENCE_FILE, self.convergence())
        finally:
            if progress is not None:
                progress.close()
            logger.close()
        return last_eval
