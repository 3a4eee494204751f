"""Sliding-window inference, evaluation, and a trained segmenter for scripts and `medvtc segment`.

    from medvtc.medical.tokenseg.pipeline import Segmenter
    seg = Segmenter.from_pretrained("runs/tokenseg")         # a run folder or its final/
    result = seg("scan.nii.gz")                               # mask in the scan's own voxel grid
    result.mask, result.affine, result.kept_boxes             # kept tokens in model space

A trained model folder (`output_dir/final`, written by `medvtc train --task tokenseg`) holds
`model.safetensors`, the run's `config.yaml` (network and preprocessing) and
`dataset_info.json` (modalities and classes), so a scan is always prepared as in training.
Inference is MONAI's `sliding_window_inference` with the training ROI; for TokenSeg the
predictor also records each window's kept tokens, shifted into volume coordinates, and (given
a label) the share of them near a label boundary.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from medvtc.common.errors import UserError

CONFIG_FILE = "config.yaml"
INFO_FILE = "dataset_info.json"


@dataclass
class TokenRecord:
    """Kept tokens of every sliding window, in (preprocessed) volume voxel coordinates."""

    boxes: list[torch.Tensor] = field(default_factory=list)  # [K, 2, 3] per window
    levels: list[torch.Tensor] = field(default_factory=list)  # [K] per window
    fractions: list[float] = field(default_factory=list)  # near-boundary share of kept tokens per window (with a label)
    base_rates: list[float] = field(default_factory=list)  # near-boundary share of all candidates per window

    def all_boxes(self) -> torch.Tensor:
        return torch.cat(self.boxes) if self.boxes else torch.zeros(0, 2, 3, dtype=torch.long)

    def all_levels(self) -> torch.Tensor:
        return torch.cat(self.levels) if self.levels else torch.zeros(0, dtype=torch.long)


class WindowPredictor:
    """Predictor for `sliding_window_inference(..., with_coord=True)` on one volume: returns the
    logits and, for TokenSeg, records the kept tokens (and their boundary share if `label`
    [1, 1, *S] is given)."""

    def __init__(self, model: torch.nn.Module, image_size: Sequence[int], roi: Sequence[int],
                 label: torch.Tensor | None = None, tolerance: float = 2.0) -> None:
        from medvtc.medical.tokenseg.networks import is_tokenseg

        self.model = model
        self.tokens = is_tokenseg(model)
        self.size = [int(s) for s in image_size]
        # sliding_window_inference pads a volume smaller than the ROI by (half, rest) per axis
        self.pad = [max(int(r) - s, 0) // 2 for r, s in zip(roi, self.size)]
        self.label = label
        if label is not None and any(self.pad):
            pads: list[int] = []
            for p, r, s in zip(reversed(self.pad), reversed(list(roi)), reversed(self.size)):
                pads += [p, max(int(r) - s, 0) - p]
            self.label = torch.nn.functional.pad(label, pads)
        self.tolerance = tolerance
        self.record = TokenRecord()

    def __call__(self, window: torch.Tensor, slices: Sequence[Sequence[slice]]) -> torch.Tensor:
        if not self.tokens:
            return self.model(window)
        out = self.model(window, return_tokens=True)
        starts = torch.tensor([[sl.start - p for sl, p in zip(s[2:], self.pad)] for s in slices], device=window.device)
        upper = torch.tensor(self.size, device=window.device)
        boxes = out.kept_boxes + starts[:, None, None, :]
        boxes = torch.minimum(boxes.clamp_min(0), upper)
        for b in range(window.shape[0]):
            self.record.boxes.append(boxes[b].cpu())
            self.record.levels.append(out.kept_levels[b].cpu())
        if self.label is not None:
            lab = torch.cat([self.label[tuple(s)] for s in slices]).to(window.device)
            d = self.model.candidate_edge_distance(out, lab)
            self.record.fractions.extend(self.model.kept_boundary_fraction(out, lab, self.tolerance, d).tolist())
            self.record.base_rates.extend((d <= self.tolerance).float().mean(dim=1).tolist())
        return out.logits


def sliding_window_predict(
    model: torch.nn.Module, image: torch.Tensor, roi: Sequence[int], *, sw_batch_size: int = 4, overlap: float = 0.25,
    mode: str = "gaussian", label: torch.Tensor | None = None, tolerance: float = 2.0,
) -> tuple[torch.Tensor, TokenRecord]:
    """image [1, C, *S] -> (logits [1, classes, *S], kept-token record)."""
    from monai.inferers import sliding_window_inference

    if image.shape[0] != 1:
        raise ValueError("sliding_window_predict takes one volume at a time")
    predictor = WindowPredictor(model, image.shape[2:], roi, label, tolerance)
    with warnings.catch_warnings():
        # MONAI 1.5 indexes with lists of slices, which torch >= 2.8 warns about on every window
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
        logits = sliding_window_inference(image, tuple(int(r) for r in roi), sw_batch_size, predictor, overlap=overlap,
                                          mode=mode, with_coord=True)
    return torch.as_tensor(logits), predictor.record


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, device: torch.device, roi: Sequence[int], num_classes: int,
             class_names: Sequence[str], *, sw_batch_size: int = 4, overlap: float = 0.25, mode: str = "gaussian",
             tolerance_mm: float = 2.0, near_boundary_voxels: float = 2.0, max_volumes: int = 0,
             progress: bool = False) -> dict[str, float]:
    """Dice / IoU / HD95 / NSD per class and mean over `dataset` (items with image, label and
    spacing), plus for TokenSeg `kept_boundary_fraction` (share of kept tokens within
    `near_boundary_voxels` of a label edge) and `candidate_boundary_fraction` (the same share
    among all candidates: what a selection blind to boundaries would get)."""
    return evaluate_cases(model, dataset, device, roi, num_classes, class_names, sw_batch_size=sw_batch_size,
                          overlap=overlap, mode=mode, tolerance_mm=tolerance_mm, near_boundary_voxels=near_boundary_voxels,
                          max_volumes=max_volumes, progress=progress)[0]


@torch.no_grad()
def evaluate_cases(model: torch.nn.Module, dataset, device: torch.device, roi: Sequence[int], num_classes: int,
                   class_names: Sequence[str], *, sw_batch_size: int = 4, overlap: float = 0.25, mode: str = "gaussian",
                   tolerance_mm: float = 2.0, near_boundary_voxels: float = 2.0, max_volumes: int = 0,
                   progress: bool = False) -> tuple[dict[str, float], dict[str, list[Any]]]:
    """`evaluate`'s metrics and the per-volume values they come from: {"case": [volume names],
    "<metric>_<class>": [...], "<metric>_mean": [...]} for metric in dice, iou, hd95, nsd (the
    per-volume mean is over the classes that count in that volume; NaN where none does), one
    entry per volume in dataset order. The split's figures (`aggregate`) are recomputable from
    the per-class columns: NaN-aware mean over volumes per class, then the mean over classes."""
    from tqdm.auto import tqdm

    from medvtc.medical.tokenseg.metrics import METRICS, aggregate, case_metrics

    was_training = model.training
    model.eval()
    n = len(dataset) if max_volumes <= 0 else min(len(dataset), max_volumes)
    cases, names, fractions, base = [], [], [], []
    for i in tqdm(range(n), desc="eval", unit="vol", disable=not progress, dynamic_ncols=True):
        item = dataset[i]
        image = item["image"][None].to(device)
        label = item["label"][None].to(device)
        logits, record = sliding_window_predict(model, image, roi, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode,
                                                label=label, tolerance=near_boundary_voxels)
        pred = logits.argmax(dim=1)[0].cpu()
        cases.append(case_metrics(pred, item["label"][0].cpu(), num_classes, item["spacing"].tolist(), tolerance_mm))
        names.append(str(item.get("name", i)))
        fractions.extend(record.fractions)
        base.extend(record.base_rates)
    model.train(was_training)
    metrics = aggregate(cases, class_names)
    if fractions:
        metrics["kept_boundary_fraction"] = float(np.mean(fractions))
        metrics["candidate_boundary_fraction"] = float(np.mean(base))
    columns: dict[str, list[Any]] = {"case": names}
    for metric in METRICS:
        for j, cls in enumerate(class_names):
            columns[f"{metric}_{cls}"] = [float(c[metric][j]) for c in cases]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a volume where no class counts: NaN
            columns[f"{metric}_mean"] = [float(np.nanmean(c[metric])) for c in cases]
    return metrics, columns


# ------------------------------------------------------------------------------------------------
# A trained model
# ------------------------------------------------------------------------------------------------
def resolve_model_dir(path: str | Path) -> Path:
    """A run's output_dir or its final/ folder -> the folder holding the trained model."""
    p = Path(path).expanduser()
    if (p / "final" / "model.safetensors").is_file():
        p = p / "final"
    missing = [f for f in ("model.safetensors", CONFIG_FILE, INFO_FILE) if not (p / f).is_file()]
    if missing:
        raise UserError(f"{p} is not a trained tokenseg model folder (missing {', '.join(missing)}); pass the run folder "
                        "that `medvtc train --task tokenseg` wrote, or its final/ folder")
    return p


@dataclass
class Segmentation:
    """One segmented scan."""

    mask: np.ndarray  # uint8 [X, Y, Z] in the input's voxel grid
    affine: np.ndarray  # the input's affine
    model_image: np.ndarray  # float32 [C, *S'] the preprocessed input (model space)
    model_mask: np.ndarray  # uint8 [*S'] the prediction in model space
    kept_boxes: torch.Tensor  # [W*K, 2, 3] kept tokens in model-space voxels
    kept_levels: torch.Tensor  # [W*K]


class Segmenter:
    """A trained network with its preprocessing; `__call__(path)` segments one NIfTI scan."""

    def __init__(self, model: torch.nn.Module, cfg: Any, info: dict[str, Any], device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.info = info
        self.modalities = list(info["modalities"])
        self.labels = {int(k): v for k, v in info["labels"].items()}

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> "Segmenter":
        from medvtc.common import checkpoint as ckpt
        from medvtc.common.config import load_config
        from medvtc.medical.tokenseg.config import TokenSegTaskConfig
        from medvtc.medical.tokenseg.networks import build_network

        p = resolve_model_dir(path)
        cfg = load_config(TokenSegTaskConfig, p / CONFIG_FILE)
        try:
            info = json.loads((p / INFO_FILE).read_text())
            in_ch, classes = len(info["modalities"]), len(info["labels"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{p / INFO_FILE} is not a valid dataset info file: {e}") from None
        model = build_network(cfg.model, in_ch, classes)
        ckpt.load_weights(model, p)
        return cls(model, cfg, info, device)

    def transforms(self):
        from medvtc.datasets.msd import msd_transforms

        d = self.cfg.data
        return msd_transforms(len(self.modalities), None, train=False, spacing=d.spacing, intensity=d.intensity,
                              with_label=False, modalities=self.modalities)

    @torch.no_grad()
    def __call__(self, path: str | Path) -> Segmentation:
        import nibabel as nib
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        from medvtc.datasets.msd import unwrap_user_error
        from medvtc.datasets.nifti import check_nifti_file

        path = check_nifti_file(path, "image")
        pre = self.transforms()
        try:
            data = pre({"image": str(path)})
        except Exception as exc:
            user = unwrap_user_error(exc)
            if user is not None:
                raise user from None
            raise
        image = data["image"]
        e = self.cfg.eval
        logits, record = sliding_window_predict(self.model, torch.as_tensor(image)[None].to(self.device), self.cfg.model.img_size,
                                                sw_batch_size=e.sw_batch_size, overlap=e.overlap, mode=e.mode)
        pred = logits.argmax(dim=1).to(torch.uint8).cpu()  # [1, *S']
        pred_meta = MetaTensor(pred, meta=dict(image.meta), applied_operations=list(image.applied_operations))
        inverted = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True)({"pred": pred_meta, "image": image})
        mask = np.asarray(torch.as_tensor(inverted["pred"])[0].round().clamp(0, 255).to(torch.uint8).numpy())
        affine = np.asarray(nib.load(str(path)).affine)
        return Segmentation(
            mask=mask, affine=affine, model_image=torch.as_tensor(image).numpy(), model_mask=pred[0].numpy(),
            kept_boxes=record.all_boxes(), kept_levels=record.all_levels(),
        )


__all__ = ["TokenRecord", "WindowPredictor", "sliding_window_predict", "evaluate", "evaluate_cases", "Segmenter", "Segmentation", "resolve_model_dir"]
