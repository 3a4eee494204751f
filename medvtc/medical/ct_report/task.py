"""The `ct-report` task: train, evaluate and benchmark the CT report generator.

    medvtc data  --task ct-report            # the embedded phantom dataset, CT-RATE layout
    medvtc train --task ct-report            # tokenizer, warm-ups, stage 1, stage 2
    medvtc eval  --task ct-report            # test split: BLEU, ROUGE-L, METEOR, clinical F1
    medvtc report --checkpoint runs/ct-report/final scan.nii.gz

Training follows Argus (arXiv 2406.07146) in two stages after warm-ups that stand in for its
pretrained LLM and ViT (we build both from scratch: no hub access; see `pretraining.py`):
- `lm` (off by default, `stages.lm_steps`): the language model alone learns the reports'
  language. Measured on the phantom: an LM warmed up on text alone learned to ignore the image
  in the later stages (image_gain 0.0000), so the default trains the LM with the images only.
  Skipped when `model.language_model_path` names a local pretrained checkpoint.
- `vision`: the ViT learns the 18 CT-RATE labels through a linear probe (skipped when the
  training split has no labels CSV). These two do not depend on the compressor, so they (and the
  tokenizer) live in `stages.shared_dir` when it is set: the benchmark's variants share them.
- then the per-position statistics of the ViT's tokens are fitted on the training split
  (`token_standardizer.py`).
- stage 1 (`align`): the compressor and projector train with the ViT frozen. Argus also freezes
  its pretrained LM here; ours is untrained, so by default (`stages.align_language_model`) it
  trains too, and learns to read the image while the ViT's features cannot drift. (With the ViT
  unfrozen from the start, at full or a tenth of the learning rate, the LM never used the image.)
- stage 2 (`finetune`, the `train.*` keys): everything trains, the ViT unfrozen.
Each stage is a run of the shared trainer in its own folder under `output_dir`, so `--resume`
continues whichever stage was interrupted and skips the finished ones.

With a pretrained LM (`model.language_model_path`) and `model.lora_rank` > 0, the LM trains only
through LoRA adapters (peft) wherever a stage trains it; the final model is saved with them and
reloads with them (`CTReportModel`'s docstring). `model.gradient_checkpointing` covers ViT and LM.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from medvtc.common import checkpoint as ckpt
from medvtc.common.config import save_config
from medvtc.common.errors import UserError
from medvtc.common.io import atomic_directory, atomic_write_json
from medvtc.common.task import Task
from medvtc.common.trainer import TrainConfig, Trainer
from medvtc.datasets.ct_rate import report_text
from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS
from medvtc.medical.ct_report.evaluation import ReportCollator, generate_reports, score_reports, validation_loss
from medvtc.medical.ct_report.pipeline import PREPROCESSOR_FILE

DEFAULT_ROOT = "data/ct_rate_phantom"
STAGES = ("lm", "vision", "align", "finetune")
SHARED_STAGES = ("lm", "vision")  # independent of the compressor: can live in stages.shared_dir


@dataclass
class CTReportDataConfig:
    """`data.*`: where the CT-RATE-layout data is, how volumes are preprocessed, and the settings
    of the embedded phantom generator (used only when `root` is the default and missing)."""

    root: str = DEFAULT_ROOT
    spatial_size: tuple[int, int, int] = (64, 64, 32)
    spacing: tuple[float, float, float] | None = None  # mm; null keeps the scan's own before resizing
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    # HU edges of extra input channels, one per interval (the fraction of each voxel's tissue in
    # it; see datasets.ct_rate.HUIntervalChannelsd); [] gives the window channel alone. Default
    # edges: LAA-950 (emphysema), -700 and -250 (ground glass, consolidation), fat, fluid, soft
    # tissue, 130 (Agatston calcium), 700 (above the phantom's bone, 320-650 HU: vascular and
    # coronary calcium alone in [700, 1000); without this edge it shared bone's channel and was
    # invisible at 64 x 64 x 32), 1000 (metal).
    hu_bins: tuple[float, ...] = (-950.0, -700.0, -250.0, -30.0, 20.0, 100.0, 130.0, 700.0, 1000.0)
    resize: Literal["resize", "crop_pad"] = "resize"
    val_fraction: float = 0.1
    cache: bool = True
    # a folder that keeps every preprocessed volume on disk (datasets.volume_cache), keyed by the
    # preprocessing and each file's path, size and mtime: later epochs and runs read it back
    # instead of decoding and resampling the NIfTI again; null: off
    persistent_cache_dir: str | None = None
    # storage of the preprocessed channels (memory, both caches, the model's input): float16 halves
    # it (a 512 x 512 x 256 CT: 1280 MiB instead of 2560) at a rounding of <= 2**-12 per value; the
    # ViT casts it slab by slab (datasets.ct_rate.CHANNEL_DTYPES, vision_encoder.CTViTEncoder)
    dtype: Literal["float32", "float16"] = "float32"
    num_train: int = 1200
    num_val: int = 50
    num_test: int = 300  # a micro F1 near 0.7 needs about 250 volumes for a 95 % interval of +-3 points
    phantom_shape: tuple[int, int, int] = (128, 128, 64)
    phantom_spacing: tuple[float, float, float] = (3.0, 3.0, 5.0)
    seed: int = 0

    def validate(self) -> None:
        if any(s < 1 for s in self.spatial_size):
            raise ValueError(f"spatial_size must be positive, got {list(self.spatial_size)}")
        if not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"hu_window must be [low, high] with low < high, got {list(self.hu_window)}")
        if any(b <= a for a, b in zip(self.hu_bins, self.hu_bins[1:])):
            raise ValueError(f"hu_bins must be strictly increasing HU edges (or []), got {list(self.hu_bins)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def preprocessing(self) -> dict[str, Any]:
        return {
            "spatial_size": list(self.spatial_size),
            "spacing": None if self.spacing is None else list(self.spacing),
            "hu_window": list(self.hu_window),
            "hu_bins": list(self.hu_bins),
            "resize": self.resize,
            # only when not float32, so the fingerprints and preprocessor files made before stay valid
            **({"dtype": self.dtype} if self.dtype != "float32" else {}),
        }


@dataclass
class CTReportModelConfig:
    """`model.*`: the 3D ViT, the compressor from the core, and the language model."""

    patch_size: tuple[int, int, int] = (8, 8, 4)
    vision_hidden_size: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    vision_mlp_dim: int = 256
    vision_stem: Literal["patch", "conv"] = "conv"  # conv: a small convolutional stem (see vision_encoder.conv_stem)
    compressor: str = "pixel_shuffle"  # any core compressor, or "none"
    budget: float | int = 64  # visual tokens kept (int) or keep-ratio (float)
    compressor_args: dict[str, Any] = field(default_factory=dict)
    language_model_path: str | None = None  # a local causal-LM checkpoint; null builds a small Llama
    lm_hidden_size: int = 192
    lm_layers: int = 3
    lm_heads: int = 4
    lm_intermediate_size: int = 512
    vocab_size: int = 2000
    max_report_tokens: int = 256
    prompt: str = "Findings:"
    # recompute the ViT's and the LM's blocks in the backward pass (torch's non-reentrant
    # activation checkpointing, through transformers' gradient_checkpointing_enable)
    gradient_checkpointing: bool = False
    standardize_visual_tokens: bool = True  # per-position standardisation of the ViT tokens (token_standardizer.py)
    # per-channel standardisation of the input before the ViT, fitted on training volumes before
    # the vision stage (channel_standardizer.py: makes the sparse calcium channel visible; test
    # clinical micro F1 +8.0 points at 1200 volumes, +9.2 at 3600, paired)
    standardize_vision_input: bool = True
    # its floor on a channel's std, i.e. the largest gain (1 / floor) on a channel. 1200 volumes,
    # probe val AUC of the calcifications at step 1400: 0.94 / 0.95 with 0.01, 0.60 / 0.54 with
    # 0.05 (not learnt), but emphysema 0.91 with 0.01 against 1.00 with 0.05 and without
    vision_input_min_std: float = 0.01
    # LoRA adapters (peft) on the pretrained LM of language_model_path: 0 trains the LM's own
    # weights; > 0 trains only adapters of this rank wherever a stage trains the LM
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    # Llama's attention projections (configuration_ct_report.DEFAULT_LORA_TARGET_MODULES, not
    # imported here: this module loads without transformers); [all-linear] for every linear layer
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # > 0: a head on the compressed tokens predicts the 18 findings in align and finetune, its
    # binary cross-entropy (weighted by the training prevalence) added to the LM's loss with this
    # weight, so the kept tokens must carry the findings (modeling_ct_report, finding_head); 0: off
    finding_loss_weight: float = 1.0
    # the LM also reads one "present"/"absent" token per finding: the true ones in training, the
    # head's decisions (probability >= finding_threshold) when writing; needs finding_loss_weight > 0
    finding_tokens: bool = True
    finding_threshold: float = 0.5
    # after training, replace finding_threshold by one global threshold chosen on the val split by
    # the head's micro F1 (finding_threshold.py: the prevalence-weighted loss makes the head
    # over-call at 0.5); the saved model carries it, calibration.json the curve
    calibrate_finding_threshold: bool = True

    def validate(self) -> None:
        if self.finding_tokens and self.finding_loss_weight <= 0:
            raise ValueError("finding_tokens=true needs the finding head that decides them: set model.finding_loss_weight > 0, "
                             "or model.finding_tokens=false")
        if not 0.0 < self.finding_threshold < 1.0:
            raise ValueError(f"finding_threshold must be a probability in (0, 1), got {self.finding_threshold}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: no LoRA), got {self.lora_rank}")
        if self.lora_rank and not self.language_model_path:
            raise ValueError(
                f"lora_rank={self.lora_rank} adapts a pretrained LM: set model.language_model_path to a local "
                "causal-LM checkpoint, or lora_rank=0 (the Llama built from scratch trains in full)"
            )
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules or not all(self.lora_target_modules):
            raise ValueError(f"lora_target_modules must name at least one module of the LM (e.g. [q_proj, v_proj]), got {self.lora_target_modules}")


@dataclass
class CTReportStagesConfig:
    """`stages.*`: the stages before the end-to-end one (which uses `train.*`)."""

    lm_steps: int = 0
    lm_lr: float = 1e-3
    lm_batch_size: int = 16
    vision_steps: int = 1600
    vision_lr: float = 5e-4
    vision_batch_size: int = 8
    align_steps: int = 600
    align_lr: float = 1e-3
    align_language_model: bool = True  # stage 1 also trains the LM (ours starts untrained; see the module docstring)
    shared_dir: str | None = None  # where the tokenizer, lm and vision stages live (null: output_dir)
    # align reads the frozen ViT's tokens from an on-disk cache (medvtc.common.token_cache) in
    # shared_dir/token_cache, encoded once and reused by every run with the same ViT weights
    cache_tokens: bool = True
    # train.* keys per stage (lm, vision, align, finetune), over what the stage takes from train.*
    # and the keys above. The stages before finetune evaluate, select and stop only as set here:
    # by default the vision stage is validated every 200 steps (macro ROC-AUC of its probe on the
    # val split, and per label) and keeps its best weights. E.g. a convergence budget for it:
    # {vision: {eval_every: 200, select_metric: auc, plateau_window: 0.25, plateau_delta: 0.005}}
    overrides: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"vision": {"eval_every": 200, "select_metric": "auc"}})

    def validate(self) -> None:
        for name in ("lm_steps", "vision_steps", "align_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        keys = {f.name for f in dataclasses.fields(TrainConfig)}
        for stage, over in (self.overrides or {}).items():
            if stage not in STAGES:
                raise ValueError(f"overrides: unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
            if not isinstance(over, dict):
                raise ValueError(f"overrides.{stage} must map train.* keys to values, got {over!r}")
            unknown = sorted(set(over) - keys)
            if unknown:
                raise ValueError(f"overrides.{stage}: {unknown[0]!r} is not a train.* key (valid: {', '.join(sorted(keys))})")


@dataclass
class CTReportGenerationConfig:
    """`generation.*`: decoding for eval and `medvtc report`."""

    max_new_tokens: int = 256
    num_beams: int = 1
    batch_size: int = 16
    max_eval_samples: int = 0  # 0 = the whole split


@dataclass
class CTReportBenchConfig:
    """`bench.*`: each variant `compressor@budget` is trained with the same config and budget;
    `<X>x<Y>x<Z>/compressor@budget` reads the CT at that input size instead (bench.py)."""

    variants: list[str] = field(default_factory=lambda: [
        "none", "pooling@64", "pixel_shuffle@64", "pixel_shuffle@8", "perceiver@64", "matryoshka@64", "qg_vtc@64",
    ])
    output_dir: str = "runs/bench-ct-report"
    name: str | None = None  # the results' file names (benchmarks/results/<name>.*); null: ct-report
    seeds: list[int] = field(default_factory=lambda: [0])  # each variant trains once per seed
    repeats: int = 3
    throughput_steps: int = 20  # align-stage steps timed from volumes and from the token cache (0: skip)
    scale: bool = True  # also the full-size 512 x 512 x 256 CT figures
    scale_size: tuple[int, int, int] = (512, 512, 256)
    scale_patch: tuple[int, int, int] = (16, 16, 16)
    scale_budget: int = 2048
    # the full-size CT's channels are stored in this dtype (data.dtype; float16: within 3 GB peak RSS)
    scale_dtype: Literal["float32", "float16"] = "float16"


@dataclass
class CTReportTaskConfig:
    seed: int = 0
    output_dir: str = "runs/ct-report"
    data: CTReportDataConfig = field(default_factory=CTReportDataConfig)
    model: CTReportModelConfig = field(default_factory=CTReportModelConfig)
    stages: CTReportStagesConfig = field(default_factory=CTReportStagesConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(max_steps=200, batch_size=8, lr=5e-4, warmup_steps=20, save_every=50, eval_every=0, log_every=10)
    )
    generation: CTReportGenerationConfig = field(default_factory=CTReportGenerationConfig)
    bench: CTReportBenchConfig = field(default_factory=CTReportBenchConfig)


def _stage_weights(stage_dir: Path, tcfg: TrainConfig) -> Path:
    """The weights a finished stage hands on: its selected best when it selects, else its last."""
    from medvtc.common.trainer import BEST_FILE

    if tcfg.select_metric and (stage_dir / "best" / BEST_FILE).is_file():
        return stage_dir / "best"
    return ckpt.latest_checkpoint(stage_dir / "checkpoints")


@torch.no_grad()
def finding_head_probabilities(model, dataset, device, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The finding head's probabilities on every volume of `dataset` and their labels, both (N, 18)."""
    from medvtc.medical.ct_report.pretraining import label_collate

    was = model.training
    model.eval()
    probs, truth = [], []
    for start in range(0, len(dataset), batch_size):
        batch = label_collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
        probs.append(model.predict_findings(batch["pixel_values"].to(device)).float().cpu())
        truth.append(batch["labels"].float())
    model.train(was)
    return torch.cat(probs), torch.cat(truth)


def finding_head_metrics(model, dataset, device, batch_size: int = 16) -> dict[str, float]:
    """What the compressed tokens carry of the findings, read by the finding head alone (no
    report): micro F1 at the model's finding_threshold and macro ROC-AUC (MONAI) over the labels with both
    classes in the split. Against the reports' label_micro_f1 it says whether findings are lost
    in the tokens or in the writing."""
    from monai.metrics import compute_roc_auc

    from medvtc.medical.ct_report.finding_threshold import micro_f1_at

    p, t = finding_head_probabilities(model, dataset, device, batch_size)
    threshold = float(getattr(model.config, "finding_threshold", 0.5))
    both = [j for j in range(t.shape[1]) if 0 < t[:, j].sum() < len(t)]
    return {"finding_head_micro_f1": micro_f1_at(p.numpy(), t.numpy(), threshold),
            "finding_head_auc": float(compute_roc_auc(p[:, both], t[:, both], average="macro")) if both else float("nan")}


def _loss_step(model, batch):
    out = model(**batch)
    return out if isinstance(out, torch.Tensor) else out.loss


# ------------------------------------------------------------------------------------------------
# The task
# ------------------------------------------------------------------------------------------------
class CTReportTask(Task):
    name = "ct-report"
    description = "CT report generation (Argus-style 3D VLM with visual-token compression)"
    config_class = CTReportTaskConfig
    commands = ("train", "eval", "bench", "data")

    # -- data ------------------------------------------------------------------------------------
    def _ensure_data(self, cfg: CTReportTaskConfig) -> None:
        self.ensure_embedded_data(cfg.data.root, cfg.data.root == DEFAULT_ROOT, "a CT-RATE-layout folder",
                                  "generating the embedded CT phantom dataset (CT-RATE layout)",
                                  lambda: self._generate(cfg, overwrite=False))
        # A phantom set written under other generator settings (an older default, say) is used as
        # it is, never silently rewritten; say so, since the figures then differ from the README's.
        meta = Path(cfg.data.root) / "medvtc_phantom.json"
        if meta.is_file():
            d = cfg.data
            written = json.loads(meta.read_text())
            wanted = {"num_train": d.num_train, "num_val": d.num_val, "num_test": d.num_test, "seed": d.seed,
                      "shape": list(d.phantom_shape), "spacing_mm": list(d.phantom_spacing)}
            differ = [k for k, v in wanted.items() if written.get(k) != v]
            if differ:
                print(f"medvtc: note: the phantom set in {d.root} was written with other settings "
                      f"({', '.join(f'{k}={written.get(k)}' for k in differ)}; the config asks for "
                      f"{', '.join(f'{k}={wanted[k]}' for k in differ)}); using it as it is. "
                      f"`medvtc data --task ct-report --overwrite` rewrites it.")

    def _generate(self, cfg: CTReportTaskConfig, overwrite: bool) -> Path:
        from medvtc.datasets.ct_phantom import generate_ct_rate

        d = cfg.data
        return generate_ct_rate(
            d.root, num_train=d.num_train, num_val=d.num_val, num_test=d.num_test, seed=d.seed,
            shape=tuple(d.phantom_shape), spacing=tuple(d.phantom_spacing), overwrite=overwrite,
        )

    def data(self, cfg: CTReportTaskConfig, inspect: bool = False, overwrite: bool = False) -> int:
        if not inspect:
            if Path(cfg.data.root).exists() and not overwrite:
                raise UserError(f"{cfg.data.root} already exists; pass --overwrite to replace it or choose another data.root")
            self._generate(cfg, overwrite=overwrite)
        print(self._describe(cfg))
        return 0

    def _describe(self, cfg: CTReportTaskConfig) -> str:
        from medvtc.datasets.ct_rate import read_ct_rate
        from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS

        lines = [f"CT-RATE-layout dataset at {cfg.data.root}"]
        for split in ("train", "val", "test"):
            records = read_ct_rate(cfg.data.root, split, cfg.data.val_fraction)
            labels = np.stack([r.labels for r in records]) if records and records[0].labels is not None else None
            lines.append(f"  {split}: {len(records)} volumes" + (f", {labels.sum(1).mean():.2f} positive labels per volume" if labels is not None else ""))
            if split == "train" and labels is not None:
                prev = labels.mean(0)
                lines.append("  train prevalence: " + ", ".join(f"{n} {p:.0%}" for n, p in zip(CT_RATE_LABELS, prev)))
        return "\n".join(lines)

    def datasets(self, cfg: CTReportTaskConfig, splits: Sequence[str]) -> dict[str, Any]:
        from medvtc.datasets.ct_rate import CTReportDataset, read_ct_rate

        d = cfg.data
        return {
            s: CTReportDataset(
                read_ct_rate(d.root, s, d.val_fraction), spatial_size=d.spatial_size, spacing=d.spacing,
                hu_window=d.hu_window, resize=d.resize, cache=d.cache, hu_bins=d.hu_bins,
                persistent_cache=d.persistent_cache_dir or None, dtype=d.dtype,
            )
            for s in splits
        }

    # -- model -----------------------------------------------------------------------------------
    def tokenizer(self, cfg: CTReportTaskConfig, train_set, out: Path, is_main: bool = True):
        """The user's LM tokenizer, or one trained on the training reports (saved in out/tokenizer
        so that a resumed run uses the same one)."""
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        from medvtc.medical.ct_report.tokenizer import train_report_tokenizer

        if cfg.model.language_model_path:
            try:
                return AutoTokenizer.from_pretrained(cfg.model.language_model_path, local_files_only=True)
            except (OSError, ValueError) as e:
                raise UserError(f"could not load a tokenizer from model.language_model_path={cfg.model.language_model_path}: {e}") from None
        path = out / "tokenizer"
        if not (path / "tokenizer.json").is_file():
            tok = train_report_tokenizer([report_text(r) for r in train_set.records], vocab_size=cfg.model.vocab_size)
            if is_main:
                with atomic_directory(path, overwrite=True) as tmp:
                    tok.save_pretrained(tmp)
            from medvtc.common.distributed import barrier, init_distributed

            barrier(init_distributed("cpu"))
        return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)

    def build_model(self, cfg: CTReportTaskConfig, tokenizer):
        from medvtc.datasets.ct_rate import ct_input_channels
        from medvtc.medical.ct_report.configuration_ct_report import CTReportConfig
        from medvtc.medical.ct_report.modeling_ct_report import CTReportModel

        m = cfg.model
        text_config = None
        if not m.language_model_path:
            text_config = dict(
                hidden_size=m.lm_hidden_size, num_hidden_layers=m.lm_layers, num_attention_heads=m.lm_heads,
                num_key_value_heads=m.lm_heads, intermediate_size=m.lm_intermediate_size,
            )
        try:
            config = CTReportConfig.from_tokenizer(
                tokenizer, image_size=tuple(cfg.data.spatial_size), in_channels=ct_input_channels(cfg.data.hu_bins),
                patch_size=tuple(m.patch_size),
                vision_hidden_size=m.vision_hidden_size, vision_layers=m.vision_layers, vision_heads=m.vision_heads,
                vision_mlp_dim=m.vision_mlp_dim, vision_stem=m.vision_stem, vision_gradient_checkpointing=m.gradient_checkpointing,
                standardize_visual_tokens=m.standardize_visual_tokens, standardize_vision_input=m.standardize_vision_input,
                vision_input_min_std=m.vision_input_min_std,
                compressor=m.compressor, compressor_budget=m.budget, compressor_args=dict(m.compressor_args),
                text_config=text_config, language_model_path=m.language_model_path or None, prompt=m.prompt,
                lora_rank=m.lora_rank, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                lora_target_modules=list(m.lora_target_modules),
                num_finding_labels=len(CT_RATE_LABELS) if m.finding_loss_weight > 0 else 0,
                finding_loss_weight=m.finding_loss_weight,
                finding_tokens=m.finding_tokens, finding_threshold=m.finding_threshold,
            )
            model = CTReportModel(config)  # a lora_target_modules name that matches no LM module is a ValueError
        except ValueError as e:
            raise UserError(f"model config: {e}") from None
        if m.gradient_checkpointing:
            # the ViT's blocks (already on through vision_gradient_checkpointing) and the LM's
            # decoder layers. Non-reentrant: gradients reach the adapters and the visual tokens
            # even where the LM's input embeddings are frozen (LoRA), with no enable_input_require_grads.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    # -- train -----------------------------------------------------------------------------------
    def _stage_configs(self, cfg: CTReportTaskConfig) -> dict[str, TrainConfig]:
        """Each stage's TrainConfig: train.* with the stage's own steps / lr / batch size; the
        stages before finetune neither evaluate, select nor stop early (train.*'s selection and
        convergence budget are finetune's) unless `stages.overrides` says so for them."""
        s = cfg.stages
        base = cfg.train
        quiet = dict(eval_every=0, select_metric=None, plateau_window=None)
        stages = {
            "lm": replace(base, max_steps=s.lm_steps, lr=s.lm_lr, batch_size=s.lm_batch_size, warmup_steps=min(base.warmup_steps, s.lm_steps // 5), **quiet),
            "vision": replace(base, max_steps=s.vision_steps, lr=s.vision_lr, batch_size=s.vision_batch_size, warmup_steps=min(base.warmup_steps, s.vision_steps // 5), **quiet),
            "align": replace(base, max_steps=s.align_steps, lr=s.align_lr, warmup_steps=min(base.warmup_steps, s.align_steps // 5), **quiet),
            "finetune": base,
        }
        for stage, over in (s.overrides or {}).items():
            try:
                stages[stage] = replace(stages[stage], **over)
                stages[stage].validate()
            except (TypeError, ValueError) as e:
                raise UserError(f"stages.overrides.{stage}: {e}") from None
            if (problem := stages[stage].plateau_problem()) is not None:
                raise UserError(f"stages.overrides.{stage}: {problem.replace('train.', '')}")
        return stages

    INPUT_STATISTICS_VOLUMES = 256  # training volumes the input channels' statistics are fitted on

    def _fit_input_standardizer(self, model, train_set, verbose: bool) -> None:
        """Fit the ViT's input standardizer (model.standardize_vision_input) on the first
        `INPUT_STATISTICS_VOLUMES` training volumes (plenty for C means and stds; reading all of
        CT-RATE's would take hours), before the vision stage; a resumed or finished stage loads
        the fitted statistics with its weights."""
        from medvtc.medical.ct_report.pretraining import label_collate

        standardizer = model.vision_encoder.input_standardizer
        if standardizer is None or standardizer.is_fitted:
            return
        n = min(len(train_set), self.INPUT_STATISTICS_VOLUMES)
        standardizer.fit(label_collate([train_set[i] for i in range(s, min(n, s + 16))])["pixel_values"]
                         for s in range(0, n, 16))
        if verbose:
            print(f"medvtc: input channel statistics fitted on {n} training volumes (std per channel: "
                  + ", ".join(f"{v:.3g}" for v in standardizer.std.tolist()) + ")")

    def _fingerprint(self, cfg: CTReportTaskConfig, stage: str) -> dict[str, Any]:
        """What a shared stage's weights depend on: reusing them under other settings is an error."""
        m, d, s = cfg.model, cfg.data, cfg.stages
        fp: dict[str, Any] = {"seed": cfg.seed, "data_root": str(Path(d.root).resolve()), "val_fraction": d.val_fraction}
        if stage == "lm":
            keys = ("lm_hidden_size", "lm_layers", "lm_heads", "lm_intermediate_size", "vocab_size", "max_report_tokens", "prompt")
            fp.update({k: getattr(m, k) for k in keys}, steps=s.lm_steps, lr=s.lm_lr, batch_size=s.lm_batch_size)
        else:
            keys = ("patch_size", "vision_hidden_size", "vision_layers", "vision_heads", "vision_mlp_dim", "vision_stem")
            fp.update({k: getattr(m, k) for k in keys}, preprocessing=d.preprocessing(), steps=s.vision_steps,
                      lr=s.vision_lr, batch_size=s.vision_batch_size)
            if m.standardize_vision_input:  # only when on, so the fingerprints made before stay valid
                fp.update(standardize_vision_input=True, vision_input_min_std=m.vision_input_min_std)
        if (s.overrides or {}).get(stage):  # selection and early stopping change the weights
            fp["overrides"] = dict(sorted(s.overrides[stage].items()))
        return json.loads(json.dumps(fp))  # tuples -> lists, as read back from done.json

    def _check_fingerprint(self, done: Path, fingerprint: dict[str, Any], stage: str) -> None:
        stored = json.loads(done.read_text()).get("fingerprint")
        if stored is None or stored == fingerprint:
            return
        diff = sorted(k for k in fingerprint.keys() | stored.keys() if stored.get(k) != fingerprint.get(k))
        k = diff[0]
        raise UserError(
            f"stage {stage} in {done.parent} was trained with other settings ({k}: {stored.get(k)!r} there, "
            f"{fingerprint.get(k)!r} now); choose another stages.shared_dir / output_dir or restore the settings"
        )

    def _stage_module(self, stage: str, model, train_set):
        """The module a stage's trainer optimises and checkpoints: the whole model for Argus' stages,
        a wrapper holding only the LM or the ViT for the warm-ups (see pretraining.py)."""
        from medvtc.medical.ct_report.pretraining import LabelProbe, TextOnlyLM, label_pos_weight

        if stage == "lm":
            return TextOnlyLM(model)
        if stage == "vision":
            labels = torch.as_tensor(np.stack([r.labels for r in train_set.records]))
            return LabelProbe(model, labels.shape[1], label_pos_weight(labels))
        return model

    def train(self, cfg: CTReportTaskConfig, resume: bool = False) -> int:
        from medvtc.common.distributed import barrier, cleanup, init_distributed
        from medvtc.medical.ct_report.pretraining import label_collate, label_probe_metrics

        out = Path(cfg.output_dir)
        shared = Path(cfg.stages.shared_dir) if cfg.stages.shared_dir else out
        started = [p for p in out.glob("stage_*/checkpoints") if ckpt.latest_checkpoint(p) is not None]
        if not resume and (started or (out / "final").exists()):
            raise UserError(f"{out} already holds a ct-report run; pass --resume to continue it or choose another output_dir")
        dist_info = init_distributed("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")
        if dist_info.is_main:
            self._ensure_data(cfg)
        barrier(dist_info)
        sets = self.datasets(cfg, ("train", "val"))
        train_set, val_set = sets["train"], sets["val"]
        if dist_info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        tokenizer = self.tokenizer(cfg, train_set, shared, dist_info.is_main)
        torch.manual_seed(cfg.seed)
        model = self.build_model(cfg, tokenizer)
        collate = ReportCollator(tokenizer, cfg.model.max_report_tokens)
        stage_cfgs = self._stage_configs(cfg)
        has_labels = bool(train_set.records) and train_set.records[0].labels is not None
        findings = model.finding_head is not None
        if findings:
            if not has_labels:
                raise UserError(f"model.finding_loss_weight={cfg.model.finding_loss_weight} needs the findings of the "
                                f"training volumes: {cfg.data.root} has no labels CSV for its train split")
            from medvtc.medical.ct_report.pretraining import label_pos_weight

            model.finding_pos_weight.copy_(label_pos_weight(torch.as_tensor(np.stack([r.labels for r in train_set.records]))))
        # align and finetune also hand the findings to the finding head; the validation loss
        # stays the LM's (and image_gain its dependence on the image)
        train_collate = ReportCollator(tokenizer, cfg.model.max_report_tokens, findings=findings)
        t0 = time.perf_counter()
        for stage in STAGES:
            tcfg = stage_cfgs[stage]
            if tcfg.max_steps == 0 or (stage == "lm" and cfg.model.language_model_path):
                continue
            if stage == "vision" and not has_labels:
                if dist_info.is_main:
                    print("medvtc: stage vision skipped: the training split has no labels CSV")
                continue
            stage_dir = (shared if stage in SHARED_STAGES else out) / f"stage_{stage}"
            fingerprint = self._fingerprint(cfg, stage) if stage in SHARED_STAGES else None
            module = self._stage_module(stage, model, train_set)
            done = stage_dir / "done.json"
            if stage == "vision" and not done.is_file():
                self._fit_input_standardizer(model, train_set, dist_info.is_main)
            if done.is_file():
                if fingerprint is not None:
                    self._check_fingerprint(done, fingerprint, stage)
                ckpt.load_weights(module, _stage_weights(stage_dir, tcfg))
                if dist_info.is_main:
                    print(f"medvtc: stage {stage} already finished; weights from {_stage_weights(stage_dir, tcfg)}")
                continue
            standardizer = model.token_standardizer
            cache = None
            if stage == "align" and cfg.stages.cache_tokens:
                cache = self.token_cache(cfg, model, train_set, shared, dist_info)
            if stage in ("align", "finetune") and standardizer is not None and not standardizer.is_fitted:
                # once, on the warmed-up encoder; the stages' checkpoints then carry the statistics
                if cache is not None:
                    standardizer.fit(torch.stack([cache.tokens(i) for i in range(s, min(len(cache), s + 16))])
                                     for s in range(0, len(cache), 16))
                else:
                    images = (label_collate([train_set[i] for i in range(s, min(len(train_set), s + 16))])["pixel_values"]
                              for s in range(0, len(train_set), 16))
                    model.fit_token_standardizer(images)
                if dist_info.is_main:
                    print(f"medvtc: visual-token statistics fitted on {len(train_set)} training volumes")
            counts = model.freeze_for_stage(
                {"lm": "lm", "vision": "vision", "align": 1, "finetune": 2}[stage],
                train_language_model=cfg.stages.align_language_model,
            )
            if dist_info.is_main:
                print(f"medvtc: stage {stage}: {tcfg.max_steps} steps, trainable " + ", ".join(f"{k} {v:,}" for k, v in counts.items() if v))
            if stage == "lm":
                data, eval_set, eval_fn, collate_fn = [report_text(r) for r in train_set.records], None, None, collate
            elif stage == "vision":
                data, eval_set, collate_fn = train_set, val_set, label_collate
                eval_fn = lambda m, ds, dev: label_probe_metrics(m, ds, dev, names=CT_RATE_LABELS)  # noqa: E731
            else:
                data, eval_set, collate_fn = train_set, val_set, train_collate
                eval_fn = lambda m, ds, dev: validation_loss(m, ds, dev, collate)  # noqa: E731
                if cache is not None:
                    from medvtc.common.token_cache import CachedTokenDataset

                    extras = [{"report": report_text(r), **({"labels": torch.as_tensor(np.asarray(r.labels), dtype=torch.float32)}
                                                            if findings else {})} for r in train_set.records]
                    data = CachedTokenDataset(cache, extras, key="vision_tokens")
            trainer = Trainer(
                module, data, tcfg, stage_dir, seed=cfg.seed, step_fn=_loss_step, eval_fn=eval_fn, eval_set=eval_set,
                collate_fn=collate_fn,
            )
            has_ckpt = ckpt.latest_checkpoint(stage_dir / "checkpoints") is not None
            metrics = trainer.fit(resume=resume and has_ckpt)
            best = trainer.load_best()  # the selected weights go on to the next stage (None: no selection)
            if dist_info.is_main:
                record = {"stage": stage, "steps": tcfg.max_steps, "metrics": metrics}
                if best is not None:
                    record["selected"] = best
                    metrics = best.get("metrics", metrics)
                    print(f"medvtc: stage {stage}: kept step {best['step']} ({best['metric']}={best['value']:.4f})")
                if fingerprint is not None:
                    record["fingerprint"] = fingerprint
                atomic_write_json(done, record)
                if metrics:
                    print(f"medvtc: stage {stage} done: " + ", ".join(f"val {k}={v:.4f}" for k, v in metrics.items()))
            barrier(dist_info)
        model.requires_grad_(True)
        if dist_info.is_main:
            if findings and cfg.model.calibrate_finding_threshold:
                self._calibrate_finding_threshold(cfg, model, val_set, out)
            else:  # a resumed run saved without calibration: no stale curve beside it
                (out / self.CALIBRATION_FILE).unlink(missing_ok=True)
            self._save_final(cfg, model, tokenizer, out / "final")
            print(f"medvtc: trained in {time.perf_counter() - t0:.0f} s; model in {out / 'final'}")
            self._report_split(cfg, model, tokenizer, val_set, "val", out / "final" / "val_metrics.json")
        cleanup(dist_info)
        return 0

    CALIBRATION_FILE = "calibration.json"

    def _calibrate_finding_threshold(self, cfg: CTReportTaskConfig, model, val_set, out: Path) -> None:
        """Set the model's finding_threshold to the global one chosen on the val split by the
        head's micro F1 (model.calibrate_finding_threshold; finding_threshold.py: the
        one-standard-error rule, and why), and record the curve in `out/calibration.json`."""
        from medvtc.medical.ct_report.finding_threshold import choose_finding_threshold

        if not len(val_set) or val_set.records[0].labels is None:
            print("medvtc: finding threshold kept at "
                  f"{model.config.finding_threshold:g}: the val split has no labels to calibrate it on")
            (out / self.CALIBRATION_FILE).unlink(missing_ok=True)
            return
        device = next(model.parameters()).device
        probs, truth = finding_head_probabilities(model, val_set, device)
        threshold, curve, se = choose_finding_threshold(probs.numpy(), truth.numpy(), default=cfg.model.finding_threshold)
        at_default = curve.get(float(cfg.model.finding_threshold))
        model.config.finding_threshold = threshold
        atomic_write_json(out / self.CALIBRATION_FILE, {
            "finding_threshold": threshold, "rule": "one standard error", "val_volumes": len(val_set),
            "val_head_micro_f1": curve[threshold], "val_best_micro_f1": max(curve.values()), "bootstrap_se": se,
            "configured_threshold": cfg.model.finding_threshold, "val_head_micro_f1_at_configured": at_default,
            "curve": {f"{t:.2f}": round(f, 6) for t, f in curve.items()}})
        print(f"medvtc: finding threshold {threshold:g}, chosen on the {len(val_set)} val volumes (head micro F1 "
              f"{curve[threshold]:.4f}" + (f"; {at_default:.4f} at the configured {cfg.model.finding_threshold:g})"
                                           if at_default is not None else ")"))

    def token_cache(self, cfg: CTReportTaskConfig, model, dataset, shared: Path, dist_info=None):
        """The frozen ViT's tokens of every volume of `dataset`, encoded once into
        `shared/token_cache` (medvtc.common.token_cache) and reused by every run whose ViT
        weights, preprocessing and volumes are the same (the bench's variants share one)."""
        from medvtc.common.token_cache import TokenCache, module_fingerprint

        encoder = model.vision_encoder
        was_training = encoder.training
        encoder.eval()
        device = encoder.patch_embedding.position_embeddings.device
        fingerprint = {"encoder": module_fingerprint(encoder), "preprocessing": cfg.data.preprocessing(),
                       "data_root": str(Path(cfg.data.root).resolve()), "volumes": [r.volume_name for r in dataset.records]}

        def encode(items: list[dict[str, Any]]) -> torch.Tensor:
            return encoder(torch.stack([it["image"] for it in items]).to(device=device))  # the encoder casts to its dtype

        is_main = dist_info is None or dist_info.is_main
        try:
            if is_main:
                return TokenCache.get_or_build(shared / "token_cache", fingerprint, encode, dataset, seed=cfg.seed,
                                               progress=cfg.train.progress)
            # other DDP ranks wait for rank 0's store on the file system (no collective to time out)
            return TokenCache.wait_for(shared / "token_cache", fingerprint, len(dataset), seed=cfg.seed)
        finally:
            encoder.train(was_training)

    def _save_final(self, cfg: CTReportTaskConfig, model, tokenizer, path: Path) -> None:
        with atomic_directory(path, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / PREPROCESSOR_FILE, cfg.data.preprocessing())
            save_config(cfg, tmp / "medvtc_config.yaml")

    def _report_split(self, cfg: CTReportTaskConfig, model, tokenizer, dataset, split: str, path: Path | None) -> dict[str, float]:
        device = next(model.parameters()).device
        predictions = generate_reports(model, tokenizer, dataset, device, cfg.generation)
        metrics = score_reports(predictions, dataset)
        metrics.update(validation_loss(model, dataset, device, ReportCollator(tokenizer, cfg.model.max_report_tokens)))
        if getattr(model, "finding_head", None) is not None and dataset.records and dataset.records[0].labels is not None:
            metrics.update(finding_head_metrics(model, dataset, device))
        print(f"medvtc: {split} split ({len(predictions)} volumes, {model.num_visual_tokens} visual tokens):")
        keys = ["clinical_micro_f1", "clinical_macro_f1", "label_micro_f1", "label_macro_f1", "bleu1", "bleu4", "rouge_l", "meteor",
                "distinct_reports", "image_gain", "finding_head_micro_f1", "finding_head_auc"]
        print("  " + ", ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics))
        if predictions:
            print(f"  sample {dataset.records[0].volume_name}:")
            print(f"    generated: {predictions[0]}")
            print(f"    reference: {report_text(dataset.records[0])}")
        if path is not None:
            atomic_write_json(path, {"split": split, "metrics": metrics, "reports": [
                {"volume": r.volume_name, "generated": p, "reference": report_text(r)}
                for r, p in zip(dataset.records, predictions)
            ]})
        return metrics

    # -- eval ------------------------------------------------------------------------------------
    def eval(self, cfg: CTReportTaskConfig, checkpoint: str | None) -> int:
        from medvtc.medical.ct_report.pipeline import CTReportGenerator

        gen = CTReportGenerator.from_pretrained(checkpoint or cfg.output_dir)
        if gen.preprocessing != cfg.data.preprocessing():
            # Evaluate as the model was trained, whatever the current config says.
            cfg = replace(cfg, data=replace(cfg.data, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in gen.preprocessing.items()}))
        self._ensure_data(cfg)
        test_set = self.datasets(cfg, ("test",))["test"]
        self._report_split(cfg, gen.model, gen.tokenizer, test_set, "test", None)
        return 0

    # -- bench -----------------------------------------------------------------------------------
    def bench(self, cfg: CTReportTaskConfig, output: str, retrain: bool = False) -> int:
        from medvtc.medical.ct_report.bench import run_benchmark

        run_benchmark(self, cfg, output, retrain=retrain)
        return 0


__all__ = ["CTReportTask", "CTReportTaskConfig", "ReportCollator", "generate_reports", "score_reports"]
