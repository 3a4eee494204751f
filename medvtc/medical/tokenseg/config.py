"""The `tokenseg` task's configuration (`data.*`, `model.*`, `eval.*`, `bench.*`, and the whole).

Its own module so that what reads a trained run's `config.yaml` (`pipeline.Segmenter`) does not
depend on the task that writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from medvtc.common.trainer import TrainConfig

DEFAULT_ROOTS = {"phantom": "data/tokenseg_phantom", "phantom_subtle": "data/tokenseg_phantom_subtle",
                 "mni152": "data/tokenseg_mni152"}


@dataclass
class TokenSegDataConfig:
    """`data.*`: where the MSD-layout data is, how volumes are prepared, and the embedded
    generators' settings (used only when `root` is missing)."""

    root: str | None = None  # an MSD task folder; null: data/tokenseg_<dataset>
    # which embedded set `medvtc data` writes: phantom, phantom_subtle (the same cases with small,
    # faint lesions: mri_phantom.py) or mni152
    dataset: Literal["phantom", "phantom_subtle", "mni152"] = "phantom"
    spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5)  # mm after Spacingd; null keeps the scan's
    intensity: Literal["zscore", "percentile", "none"] = "zscore"
    samples_per_volume: int = 1  # RandCropByPosNegLabeld crops per volume and step
    pos: float = 1.0
    neg: float = 1.0
    augment: bool = True
    val_fraction: float = 0.1  # used when the data has no medvtc_splits.json
    test_fraction: float = 0.2
    cache: bool = True
    num_train: int = 40
    num_val: int = 8
    num_test: int = 16
    phantom_shape: tuple[int, int, int] = (64, 64, 64)
    phantom_spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    num_modalities: int = 2
    seed: int = 0

    @property
    def resolved_root(self) -> str:
        return self.root if self.root else DEFAULT_ROOTS[self.dataset]

    def validate(self) -> None:
        if self.samples_per_volume < 1:
            raise ValueError(f"samples_per_volume must be >= 1, got {self.samples_per_volume}")
        if self.pos < 0 or self.neg < 0 or self.pos + self.neg == 0:
            raise ValueError(f"pos and neg must be >= 0 and not both 0, got {self.pos}, {self.neg}")
        if self.spacing is not None and any(s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive, got {list(self.spacing)}")


@dataclass
class TokenSegModelConfig:
    """`model.*`: which network, and TokenSeg's settings (ignored by the MONAI networks)."""

    name: Literal["tokenseg", "unet", "segresnet", "unetr", "swinunetr", "mednext"] = "tokenseg"
    img_size: tuple[int, int, int] = (64, 64, 32)  # training crop and sliding-window ROI (SwinUNETR: multiples of 32)
    feature_size: int = 16
    num_tokens: int = 400
    keep_tokens: int = 100
    token_dim: int = 128
    codebook_size: int = 512
    commitment_cost: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.03
    saliency_weight: float = 0.5
    selection: str = "boundary"  # or a core compressor for the ablations: random, pooling, divprune
    selection_args: dict[str, Any] = field(default_factory=dict)
    level_weights: list[float] = field(default_factory=lambda: [0.4, 0.3, 0.2, 0.1])
    tokens_per_level: list[int] | None = None
    coarse_level: int = 3
    mixer_layers: int = 2
    mixer_heads: int = 4
    boundary_sigma: float = 2.0
    boundary_loss_weight: float = 0.5
    commitment_loss_weight: float = 1.0
    baseline_args: dict[str, Any] = field(default_factory=dict)  # per MONAI network: {swinunetr: {feature_size: 24}}

    def validate(self) -> None:
        if any(s < 8 for s in self.img_size):
            raise ValueError(f"img_size sides must be >= 8, got {list(self.img_size)}")


@dataclass
class TokenSegEvalConfig:
    """`eval.*`: sliding-window inference and metrics."""

    sw_batch_size: int = 4
    overlap: float = 0.25
    mode: Literal["constant", "gaussian"] = "gaussian"
    surface_tolerance_mm: float = 2.0  # NSD tolerance
    near_boundary_voxels: float = 2.0  # a kept token within this of a label edge counts as near it
    max_volumes: int = 0  # 0: the whole split

    def validate(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {self.sw_batch_size}")


DEFAULT_BENCH_VARIANTS = ["tokenseg", "unet", "segresnet", "unetr", "swinunetr", "swinunetr24", "mednext",
                          "tokenseg_random", "tokenseg_pooling", "tokenseg_divprune"]


@dataclass
class TokenSegBenchConfig:
    """`bench.*`: every variant (a network, `tokenseg@K`, or a named ablation of
    `medvtc.medical.tokenseg.bench.ABLATIONS`: TokenSeg with a core compressor in place of its
    boundary-aware selection, or a network variant such as `swinunetr24`) trained once per seed with
    the task's config and training rule."""

    variants: list[str] = field(default_factory=lambda: list(DEFAULT_BENCH_VARIANTS))
    seeds: list[int] = field(default_factory=lambda: [0])  # each variant trains once per seed
    output_dir: str = "runs/bench-tokenseg"  # runs in output_dir/<variant>/seed_<s>
    sizes: list[int] = field(default_factory=lambda: [128, 96])  # cubic inputs for memory / latency / FLOPs
    repeats: int = 5
    max_steps: int | None = None  # the cap on training steps per network; null: train.max_steps
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # the results' file stem (<output>/<name>.json); null: tokenseg, or tokenseg_<dataset> for an
    # embedded set other than the phantom (data.dataset=mni152: tokenseg_mni152)
    name: str | None = None

    def validate(self) -> None:
        if self.name is not None and (not self.name or any(c in self.name for c in "/\\ .")):
            raise ValueError(f"name must be a file stem (no '/', '.', spaces) or null, got {self.name!r}")
        if not self.variants:
            raise ValueError("variants is empty: name at least one network or ablation")
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one training seed, e.g. [0]")


@dataclass
class TokenSegTaskConfig:
    seed: int = 0
    output_dir: str = "runs/tokenseg"
    data: TokenSegDataConfig = field(default_factory=TokenSegDataConfig)
    model: TokenSegModelConfig = field(default_factory=TokenSegModelConfig)
    # converged training: validation mean Dice every eval_every steps, the best evaluation's weights
    # kept (and exported as final/), stopped once it gains no more than 0.5 point over the last 20 %
    # of the steps (not before 1000), max_steps the cap (medvtc.common.trainer.plateau_reached); a
    # constant learning rate after warm-up, so that where a network stops does not depend on a
    # cosine schedule stretched over the cap
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(max_steps=6000, batch_size=2, lr=5e-4, schedule="constant", warmup_steps=20,
                                            save_every=100, eval_every=100, log_every=10, select_metric="dice_mean",
                                            select_mode="max", plateau_window=0.2, plateau_delta=0.005,
                                            plateau_min_steps=1000)
    )
    eval: TokenSegEvalConfig = field(default_factory=TokenSegEvalConfig)
    bench: TokenSegBenchConfig = field(default_factory=TokenSegBenchConfig)


__all__ = [
    "DEFAULT_BENCH_VARIANTS",
    "DEFAULT_ROOTS",
    "TokenSegBenchConfig",
    "TokenSegDataConfig",
    "TokenSegEvalConfig",
    "TokenSegModelConfig",
    "TokenSegTaskConfig",
]
