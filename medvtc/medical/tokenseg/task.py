"""The `tokenseg` task: TokenSeg and MONAI's networks on MSD-layout data.

    medvtc data  --task tokenseg                      # the embedded MRI phantom set (MSD layout; data.dataset=mni152)
    medvtc train --task tokenseg                      # TokenSeg (model.name=unet|segresnet|unetr|swinunetr|mednext)
    medvtc eval  --task tokenseg                      # test split: Dice, IoU, HD95, NSD per class
    medvtc bench --task tokenseg                      # every network + the selection ablations (bench.variants)
    medvtc segment --checkpoint runs/tokenseg scan.nii.gz -o mask.nii.gz --png

Every network is trained by the shared trainer on the same data (random ROI crops balanced
between foreground and background by RandCropByPosNegLabeld, flips, 90-degree rotations,
intensity jitter), with the same loss (MONAI DiceCELoss), optimiser (AdamW), schedule, seed and
training rule: validation mean Dice every `train.eval_every` steps, the best evaluation's weights
exported as `final/` (`medvtc_selection.json` says which step), training stopped by the shared
trainer's convergence budget (`train.plateau_*`, `train.max_steps` the cap; `convergence.json`).
TokenSeg adds its auxiliary losses: the codebook commitment loss and the BCE of its boundary head
against the distance of each candidate to the nearest label edge. Evaluation runs MONAI's
sliding-window inference over whole volumes with the training ROI.

Point `data.root` at a real MSD task (e.g. Task02_Heart, or Task01_BrainTumour with its four
MRI sequences) to train on it: the reader takes the modalities and classes from dataset.json.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from medvtc.common import checkpoint as ckpt
from medvtc.common.config import save_config
from medvtc.common.errors import UserError
from medvtc.common.io import atomic_directory, atomic_write_json
from medvtc.common.task import Task
from medvtc.common.trainer import Trainer
from medvtc.medical.tokenseg.config import DEFAULT_ROOTS, TokenSegTaskConfig

SELECTION_FILE = "medvtc_selection.json"  # in final/: the step (and validation metrics) of the exported weights


# ------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------
class SegmentationStep:
    """`step_fn` for the trainer: DiceCE on the logits, plus TokenSeg's auxiliary losses."""

    def __init__(self, cfg: TokenSegTaskConfig) -> None:
        from monai.losses import DiceCELoss

        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.cfg = cfg

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        from medvtc.medical.tokenseg.networks import is_tokenseg

        x, y = batch["image"], batch["label"]
        if not is_tokenseg(model):
            seg = self.loss(model(x).float(), y)
            return seg, {"seg": float(seg.detach())}
        inner = ckpt.unwrap(model)
        out = model(x, return_tokens=True)  # through DDP's forward when wrapped
        seg = self.loss(out.logits.float(), y)
        distance = inner.candidate_edge_distance(out, y)
        aux = inner.auxiliary_losses(out, y, distance)
        m = self.cfg.model
        total = seg + m.commitment_loss_weight * aux["commitment"] + m.boundary_loss_weight * aux["boundary"]
        logs = {
            "seg": float(seg.detach()), "commitment": float(aux["commitment"].detach()), "boundary": float(aux["boundary"].detach()),
            "kept_boundary_fraction": float(inner.kept_boundary_fraction(out, y, self.cfg.eval.near_boundary_voxels, distance).mean()),
            "candidate_boundary_fraction": float((distance <= self.cfg.eval.near_boundary_voxels).float().mean()),
        }
        return total, logs


# ------------------------------------------------------------------------------------------------
# The task
# ------------------------------------------------------------------------------------------------
class TokenSegTask(Task):
    name = "tokenseg"
    description = "TokenSeg segmentation (boundary-aware sparse tokens) against MONAI's networks"
    config_class = TokenSegTaskConfig
    commands = ("train", "eval", "bench", "data")

    # -- data ------------------------------------------------------------------------------------
    def _generate(self, cfg: TokenSegTaskConfig, overwrite: bool) -> Path:
        from medvtc.datasets.mri_phantom import generate_mni152, generate_mri_phantom

        d = cfg.data
        if d.dataset == "mni152":
            return generate_mni152(d.resolved_root, overwrite=overwrite)
        return generate_mri_phantom(
            d.resolved_root, num_train=d.num_train, num_val=d.num_val, num_test=d.num_test, seed=d.seed,
            shape=d.phantom_shape, spacing=d.phantom_spacing, num_modalities=d.num_modalities, overwrite=overwrite,
            lesions="subtle" if d.dataset == "phantom_subtle" else "standard",
        )

    def _ensure_data(self, cfg: TokenSegTaskConfig) -> None:
        self.ensure_embedded_data(cfg.data.resolved_root, not cfg.data.root or cfg.data.root in DEFAULT_ROOTS.values(),
                                  "an MSD task folder with dataset.json",
                                  f"generating the embedded {cfg.data.dataset} dataset (MSD layout)",
                                  lambda: self._generate(cfg, overwrite=False))

    def data(self, cfg: TokenSegTaskConfig, inspect: bool = False, overwrite: bool = False) -> int:
        root = Path(cfg.data.resolved_root)
        if not inspect:
            if root.exists() and not overwrite:
                raise UserError(f"{root} already exists; pass --overwrite to replace it or choose another data.root")
            self._generate(cfg, overwrite=overwrite)
        print(self._describe(cfg))
        return 0

    def _describe(self, cfg: TokenSegTaskConfig) -> str:
        from medvtc.datasets.msd import describe, msd_split, read_msd

        info = read_msd(cfg.data.resolved_root)
        splits = {s: msd_split(info, s, cfg.data.val_fraction, cfg.data.test_fraction) for s in ("train", "val", "test")}
        return describe(info, splits)

    def info(self, cfg: TokenSegTaskConfig):
        from medvtc.datasets.msd import read_msd

        return read_msd(cfg.data.resolved_root)

    def dataset(self, cfg: TokenSegTaskConfig, info, split: str, train: bool):
        from medvtc.datasets.msd import MSDSegmentationDataset, msd_split, msd_transforms

        d = cfg.data
        records = msd_split(info, split, d.val_fraction, d.test_fraction)
        if not records:
            raise UserError(f"the {split} split of {info.root} is empty; add cases or change data.val_fraction / data.test_fraction")
        transform = msd_transforms(
            info.in_channels, info.num_classes, train=train, roi_size=cfg.model.img_size, spacing=d.spacing,
            intensity=d.intensity, samples_per_volume=d.samples_per_volume, pos=d.pos, neg=d.neg, augment=d.augment,
            modalities=info.modalities,
        )
        return MSDSegmentationDataset(records, transform, cache=d.cache)

    # -- model -----------------------------------------------------------------------------------
    def build_model(self, cfg: TokenSegTaskConfig, in_channels: int, num_classes: int, img_size=None) -> torch.nn.Module:
        from medvtc.medical.tokenseg.networks import build_network

        return build_network(cfg.model, in_channels, num_classes, img_size)

    def eval_fn(self, cfg: TokenSegTaskConfig, info, progress: bool = False, cases: bool = False):
        """(model, dataset, device) -> the split's metrics (`pipeline.evaluate`); with `cases`,
        (metrics, per-volume columns) (`pipeline.evaluate_cases`)."""
        from medvtc.medical.tokenseg.metrics import class_keys
        from medvtc.medical.tokenseg.pipeline import evaluate_cases

        e = cfg.eval

        def fn(model, dataset, device):
            out = evaluate_cases(model, dataset, device, cfg.model.img_size, info.num_classes, class_keys(info.labels),
                                 sw_batch_size=e.sw_batch_size, overlap=e.overlap, mode=e.mode,
                                 tolerance_mm=e.surface_tolerance_mm, near_boundary_voxels=e.near_boundary_voxels,
                                 max_volumes=e.max_volumes, progress=progress)
            return out if cases else out[0]

        return fn

    # -- train -----------------------------------------------------------------------------------
    def train(self, cfg: TokenSegTaskConfig, resume: bool = False) -> int:
        from medvtc.common.distributed import barrier, cleanup, init_distributed
        from medvtc.datasets.msd import segmentation_collate

        out = Path(cfg.output_dir)
        if not resume and (out / "final").exists():
            raise UserError(f"{out} already holds a finished tokenseg run; pass --resume to continue it or choose another output_dir")
        dist_info = init_distributed("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")
        if dist_info.is_main:
            self._ensure_data(cfg)
        barrier(dist_info)
        info = self.info(cfg)
        train_set = self.dataset(cfg, info, "train", train=True)
        if len(train_set) < cfg.train.batch_size * dist_info.world_size:
            raise UserError(
                f"the train split of {info.root} has {len(train_set)} volume(s), fewer than one batch "
                f"(train.batch_size={cfg.train.batch_size} x {dist_info.world_size} processes); with few volumes take "
                f"several crops from each instead, e.g. train.batch_size=1 data.samples_per_volume={cfg.train.batch_size}"
            )
        val_set = self.dataset(cfg, info, "val", train=False)
        torch.manual_seed(cfg.seed)
        model = self.build_model(cfg, info.in_channels, info.num_classes)
        if dist_info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
            from medvtc.common.accounting import count_params

            print(f"medvtc: {cfg.model.name}: {count_params(model):,} parameters; {info.in_channels} channel(s) "
                  f"({', '.join(info.modalities)}), {info.num_classes} classes; {len(train_set)} train / {len(val_set)} val volumes")
        trainer = Trainer(
            model, train_set, cfg.train, out, seed=cfg.seed, step_fn=SegmentationStep(cfg),
            eval_fn=self.eval_fn(cfg, info), eval_set=val_set, collate_fn=segmentation_collate,
        )
        t0 = time.perf_counter()
        metrics = trainer.fit(resume=resume and ckpt.latest_checkpoint(out / "checkpoints") is not None)
        if dist_info.is_main:
            selected = trainer.load_best()  # train.select_metric: the best validation's weights are the model
            if selected is not None:
                metrics = dict(selected["metrics"])
                conv = trainer.convergence()
                stop = (f"plateau at step {conv['plateau_step']}" if conv["plateau_step"] is not None
                        else f"no plateau before the cap, train.max_steps={cfg.train.max_steps}")
                print(f"medvtc: final model = step {selected['step']} (validation {selected['metric']} "
                      f"{selected['value']:.4f}, the best of {len(conv['history'])} evaluations); {stop}")
            self._save_final(cfg, model, info, out / "final", metrics, selected, trainer.step)
            print(f"medvtc: trained in {time.perf_counter() - t0:.0f} s; model in {out / 'final'}")
            print(self._format_metrics("val", metrics))
        cleanup(dist_info)
        return 0

    def _save_final(self, cfg: TokenSegTaskConfig, model, info, path: Path, metrics: dict[str, float],
                    selected: dict[str, Any] | None = None, last_step: int | None = None) -> None:
        from safetensors.torch import save_model

        from medvtc.common.trainer import CONVERGENCE_FILE
        from medvtc.medical.tokenseg.pipeline import CONFIG_FILE, INFO_FILE

        with atomic_directory(path, overwrite=True) as tmp:
            if selected is not None:  # which step's weights these are, and the validation curve
                atomic_write_json(tmp / SELECTION_FILE, {**selected, "last_step": last_step})
                curve = path.parent / CONVERGENCE_FILE
                if curve.is_file():
                    shutil.copy2(curve, tmp / CONVERGENCE_FILE)
            save_model(model, str(tmp / ckpt.WEIGHTS))
            save_config(cfg, tmp / CONFIG_FILE)
            (tmp / INFO_FILE).write_text(json.dumps({"name": info.name, "modalities": info.modalities,
                                                     "labels": {str(k): v for k, v in info.labels.items()}}, indent=2) + "\n")
            atomic_write_json(tmp / "val_metrics.json", {"split": "val", "metrics": metrics,
                                                         "step": selected["step"] if selected else last_step})

    @staticmethod
    def _format_metrics(split: str, metrics: dict[str, float]) -> str:
        lines = [f"medvtc: {split} split:"]
        means = [k for k in ("dice_mean", "iou_mean", "hd95_mean", "nsd_mean", "kept_boundary_fraction",
                             "candidate_boundary_fraction") if k in metrics]
        lines.append("  " + ", ".join(f"{k}={metrics[k]:.4f}" for k in means))
        per = [k for k in metrics if k not in means]
        if per:
            lines.append("  " + ", ".join(f"{k}={metrics[k]:.4f}" for k in per))
        return "\n".join(lines)

    # -- eval ------------------------------------------------------------------------------------
    def resolve_checkpoint(self, cfg: TokenSegTaskConfig, checkpoint: str | None) -> tuple[Path, TokenSegTaskConfig]:
        """A run folder, its final/ or a checkpoints/step_* folder -> (weights folder, the config
        with the run's model and preprocessing)."""
        from medvtc.common.config import load_config

        path, run_cfg_path = ckpt.resolve_weights_dir(checkpoint or cfg.output_dir, "a tokenseg run")
        if run_cfg_path is not None:
            run = load_config(TokenSegTaskConfig, run_cfg_path)
            # Build and preprocess as trained; data location and eval settings come from the call.
            data = replace(cfg.data, spacing=run.data.spacing, intensity=run.data.intensity)
            cfg = replace(cfg, model=run.model, data=data)
        return path, cfg

    def evaluate_checkpoint(self, cfg: TokenSegTaskConfig, checkpoint: str | None, split: str = "test",
                            device: torch.device | None = None) -> tuple[dict[str, float], torch.nn.Module, Any]:
        metrics, _, model, info = self.evaluate_checkpoint_cases(cfg, checkpoint, split, device)
        return metrics, model, info

    def evaluate_checkpoint_cases(self, cfg: TokenSegTaskConfig, checkpoint: str | None, split: str = "test",
                                  device: torch.device | None = None) -> tuple[dict[str, float], dict[str, list], torch.nn.Module, Any]:
        """(metrics, per-volume columns, model, dataset info) of a trained run on `split` (see
        `pipeline.evaluate_cases`)."""
        from medvtc.common.trainer import resolve_device

        path, cfg = self.resolve_checkpoint(cfg, checkpoint)
        self._ensure_data(cfg)
        info = self.info(cfg)
        dataset = self.dataset(cfg, info, split, train=False)
        model = self.build_model(cfg, info.in_channels, info.num_classes)
        ckpt.load_weights(model, path)
        device = device or resolve_device(cfg.train.device)
        model.to(device).eval()
        with torch.no_grad():
            metrics, cases = self.eval_fn(cfg, info, progress=cfg.train.progress, cases=True)(model, dataset, device)
        return metrics, cases, model, info

    def eval(self, cfg: TokenSegTaskConfig, checkpoint: str | None) -> int:
        metrics, model, info = self.evaluate_checkpoint(cfg, checkpoint)
        path, run_cfg = self.resolve_checkpoint(cfg, checkpoint)
        print(f"medvtc: {run_cfg.model.name} ({path}) on {info.name}:")
        print(self._format_metrics("test", metrics))
        return 0

    # -- bench -----------------------------------------------------------------------------------
    def bench(self, cfg: TokenSegTaskConfig, output: str, retrain: bool = False) -> int:
        from medvtc.medical.tokenseg.bench import run_benchmark

        run_benchmark(self, cfg, output, retrain=retrain)
        return 0


__all__ = ["TokenSegTask", "TokenSegTaskConfig", "SegmentationStep"]
