"""The `compressors` task: train a learned compressor on token grids, evaluate it, benchmark all.

Training objective (for learned compressors: pixel-shuffle, Perceiver, Matryoshka, TokenPacker,
VisionSelector, QG-VTC, STC/SRC, ...): the compressor keeps K tokens, and a small decoder whose
queries are the grid positions reconstructs all N tokens from them by cross-attention. The loss
is the mean squared reconstruction error, weighted up on the tokens of the class the instruction
names (`focus_weight`), so instruction-guided methods have something to gain from the text.
It is a task-free pretraining of the compressor: what it keeps is what lets the rest be rebuilt.
The model and its loss are in `medvtc.compression.autoencoder`, the data in
`medvtc.compression.token_grids`, the side-by-side benchmark in `medvtc.compression.bench`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvtc.common import checkpoint as ckpt
from medvtc.common.compressors import COMPRESSORS
from medvtc.common.compressors.metrics import coverage, reconstruction_kept
from medvtc.common.config import save_config
from medvtc.common.errors import UserError
from medvtc.common.io import atomic_directory
from medvtc.common.task import Task
from medvtc.common.trainer import TrainConfig, Trainer
from medvtc.compression.autoencoder import CompressionAutoencoder, reconstruction_loss
from medvtc.compression.token_grids import TokenGridDataset, TokenGridSpec, describe, generate_token_grids

DEFAULT_ROOT = "data/token_grids"


@dataclass
class TokenDataConfig:
    """`data.*`: where the token grids are; the generator settings apply to the embedded default."""

    root: str = DEFAULT_ROOT
    grid: tuple[int, ...] = (16, 16)
    dim: int = 64
    text_dim: int = 32
    num_classes: int = 4
    num_train: int = 512
    num_val: int = 64
    num_test: int = 64
    seed: int = 0

    def spec(self) -> TokenGridSpec:
        return TokenGridSpec(
            grid=tuple(self.grid), dim=self.dim, text_dim=self.text_dim, num_classes=self.num_classes,
            num_train=self.num_train, num_val=self.num_val, num_test=self.num_test, seed=self.seed,
        )


@dataclass
class CompressorModelConfig:
    """`model.*`: which compressor, its budget and arguments, and the reconstruction decoder."""

    name: str = "pixel_shuffle"
    budget: float | int = 32
    args: dict[str, Any] = field(default_factory=dict)
    decoder_layers: int = 1
    decoder_heads: int = 4
    focus_weight: float = 4.0

    def validate(self) -> None:
        if self.decoder_layers < 1 or self.decoder_heads < 1:
            raise ValueError("decoder_layers and decoder_heads must be >= 1")
        if self.focus_weight < 0:
            raise ValueError(f"focus_weight must be >= 0, got {self.focus_weight}")


@dataclass
class CompressorBenchConfig:
    """`bench.*`: the side-by-side measurement of every method (see medvtc/compression/bench.py)."""

    methods: list[str] = field(default_factory=list)  # empty = every registered method; method@budget: that budget only
    grids: list[list[int]] = field(default_factory=lambda: [[24, 24], [48, 48], [16, 16, 16], [32, 32, 32]])
    dim: int = 768
    text_dim: int = 64
    batches: list[int] = field(default_factory=lambda: [1, 8])
    budgets: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.11, 0.05])
    repeats: int = 3
    warmup: int = 1
    max_seconds: float = 60.0
    info_batch: int = 8  # scenes the information-kept measures average over (bootstrap interval over them)
    seed: int = 0
    references: bool = True
    target_grid: list[int] = field(default_factory=lambda: [16, 16, 16])
    target_budget: int = 410


@dataclass
class CompressorsConfig:
    seed: int = 0
    output_dir: str = "runs/compressors"
    data: TokenDataConfig = field(default_factory=TokenDataConfig)
    model: CompressorModelConfig = field(default_factory=CompressorModelConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(max_steps=600, batch_size=16, lr=3e-3, warmup_steps=30, save_every=200, eval_every=200, log_every=10)
    )
    bench: CompressorBenchConfig = field(default_factory=CompressorBenchConfig)


class CompressorsTask(Task):
    name = "compressors"
    description = "the shared compressor core"
    config_class = CompressorsConfig

    # -- data --------------------------------------------------------------------------------
    def _ensure_data(self, cfg: CompressorsConfig) -> None:
        root = Path(cfg.data.root)
        if not root.exists():
            if cfg.data.root != DEFAULT_ROOT:
                raise UserError(f"data.root {root} does not exist")
            print(f"medvtc: generating the embedded token-grid dataset at {root}")
            generate_token_grids(root, cfg.data.spec())

    def data(self, cfg: CompressorsConfig, inspect: bool = False, overwrite: bool = False) -> int:
        if inspect:
            print(describe(cfg.data.root))
            return 0
        generate_token_grids(cfg.data.root, cfg.data.spec(), overwrite=overwrite)
        print(describe(cfg.data.root))
        return 0

    # -- model -------------------------------------------------------------------------------
    def build_model(self, cfg: CompressorsConfig, ds: TokenGridDataset) -> CompressionAutoencoder:
        meta = ds.meta
        cls = COMPRESSORS.get(cfg.model.name)
        if cls.needs_text and not ds.has_text:
            raise UserError(f"compressor {cfg.model.name!r} is instruction-guided but {ds.root} has no 'text'")
        model = CompressionAutoencoder(
            cfg.model.name, int(meta["dim"]), int(meta.get("text_dim") or 1), ds.grid, cfg.model.budget,
            cfg.model.args, cfg.model.decoder_layers, cfg.model.decoder_heads,
        )
        # Some compressors create parameters on their first call (pixel-shuffle's projection for
        # the group shape the budget implies): make them exist before the optimizer is built
        # and before a checkpoint is loaded.
        sample = ds[0]
        with torch.no_grad():
            model(sample["tokens"][None], sample["text"][None] if "text" in sample else None,
                  sample["text_mask"][None] if "text_mask" in sample else None)
        return model

    def _step_fn(self, cfg: CompressorsConfig):
        def step(model: nn.Module, batch: dict[str, torch.Tensor]):
            recon, comp = model(batch["tokens"], batch.get("text"), batch.get("text_mask"))
            loss = reconstruction_loss(recon, batch, cfg.model.focus_weight)
            if comp.aux_loss is not None:
                loss = loss + comp.aux_loss
            return loss

        return step

    @staticmethod
    @torch.no_grad()
    def evaluate(model: CompressionAutoencoder, ds: TokenGridDataset, device: torch.device, batch_size: int = 32) -> dict[str, float]:
        sse = sst = focus_sse = focus_sst = 0.0
        kept, cov, n_batches = 0.0, 0.0, 0
        for start in range(0, len(ds), batch_size):
            idx = range(start, min(len(ds), start + batch_size))
            batch = {k: v[list(idx)].to(device) for k, v in ds.arrays.items()}
            x = batch["tokens"].float()
            recon, comp = model(batch["tokens"], batch.get("text"), batch.get("text_mask"))
            err = (recon.float() - x).pow(2).sum(-1)
            var = (x - x.mean(1, keepdim=True)).pow(2).sum(-1)
            sse += float(err.sum())
            sst += float(var.sum())
            if "labels" in batch and "target" in batch:
                focus = (batch["labels"] == batch["target"].unsqueeze(1)).float()
                focus_sse += float((err * focus).sum())
                focus_sst += float((var * focus).sum())
            if not model.compressor.learnable and comp.tokens.shape[-1] == x.shape[-1]:
                # Task-free measures mean something only for outputs in the tokens' own space.
                kept += reconstruction_kept(x, comp.tokens, comp.mask)
                cov += coverage(x, comp.tokens)
            n_batches += 1
        metrics = {"recon_r2": 1 - sse / max(sst, 1e-12)}
        if focus_sst:
            metrics["focus_r2"] = 1 - focus_sse / focus_sst
        if n_batches and kept:
            metrics["nearest_kept"] = kept / n_batches
            metrics["coverage"] = cov / n_batches
        return metrics

    # -- commands ----------------------------------------------------------------------------
    def train(self, cfg: CompressorsConfig, resume: bool = False) -> int:
        self._ensure_data(cfg)
        train_set = TokenGridDataset(cfg.data.root, "train")
        val_set = TokenGridDataset(cfg.data.root, "val")
        torch.manual_seed(cfg.seed)
        model = self.build_model(cfg, train_set)
        out = Path(cfg.output_dir)
        trainer = Trainer(
            model, train_set, cfg.train, out, seed=cfg.seed, step_fn=self._step_fn(cfg),
            eval_fn=self.evaluate, eval_set=val_set,
        )
        if trainer.dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        metrics = trainer.fit(resume=resume)
        if trainer.dist.is_main:
            with atomic_directory(out / "final", overwrite=True) as tmp:
                from safetensors.torch import save_model

                save_model(model, str(tmp / ckpt.WEIGHTS))
                save_config(cfg, tmp / "config.yaml")
            print(f"medvtc: {cfg.model.name} at budget {cfg.model.budget}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            print(f"medvtc: weights and config in {out / 'final'}")
        from medvtc.common.distributed import cleanup

        cleanup(trainer.dist)
        return 0

    def _resolve_checkpoint(self, cfg: CompressorsConfig, checkpoint: str | None) -> tuple[Path, CompressorsConfig]:
        from medvtc.common.config import load_config

        path, run_cfg_path = ckpt.resolve_weights_dir(checkpoint or cfg.output_dir)
        if run_cfg_path is not None:
            run_cfg = load_config(CompressorsConfig, run_cfg_path)
            # The model must be built as it was trained; data and eval settings come from the call.
            cfg = CompressorsConfig(**{**cfg.__dict__, "model": run_cfg.model})
        return path, cfg

    def eval(self, cfg: CompressorsConfig, checkpoint: str | None) -> int:
        path, cfg = self._resolve_checkpoint(cfg, checkpoint)
        self._ensure_data(cfg)
        test_set = TokenGridDataset(cfg.data.root, "test")
        model = self.build_model(cfg, test_set)
        ckpt.load_weights(model, path)
        model.eval()
        metrics = self.evaluate(model, test_set, torch.device("cpu"))
        print(f"medvtc: {cfg.model.name} ({path}) on the test split: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return 0

    def bench(self, cfg: CompressorsConfig, output: str, retrain: bool = False) -> int:
        """`retrain` is accepted for the CLI's sake: this bench trains nothing."""
        from medvtc.compression.bench import run_benchmark

        run_benchmark(cfg.bench, output)
        return 0


__all__ = ["CompressorsTask", "CompressorsConfig", "CompressionAutoencoder"]
