"""Segmentation metrics with MONAI: Dice, IoU, HD95 and surface Dice (NSD), per class and mean.

Per case, on one-hot masks without the background class:
- `DiceMetric` and `MeanIoU`;
- `HausdorffDistanceMetric(percentile=95)` in mm (the voxel spacing is passed);
- `SurfaceDiceMetric` (normalised surface Dice) at a tolerance in mm.

Empty classes: a class absent from both prediction and reference is skipped for that case (NaN,
left out of the means). A class present in the reference but never predicted has Dice / IoU /
NSD 0 and HD95 set to the case's field-of-view diagonal in mm (MONAI returns inf there; a
finite worst case, as BraTS-style evaluations use, keeps means meaningful). A class predicted
but absent from the reference: Dice / IoU 0 (MONAI's ignore_empty would skip it; a false
positive lesion must cost something), HD95 / NSD skipped.
Means: per class over cases, then `*_mean` over classes.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Sequence

import numpy as np
import torch

METRICS = ("dice", "iou", "hd95", "nsd")


def class_keys(labels: dict[int, str]) -> list[str]:
    """Metric-name-safe names of the foreground classes, in class order."""
    out = []
    for k in sorted(labels):
        if k == 0:
            continue
        name = re.sub(r"[^0-9a-zA-Z]+", "_", str(labels[k]).strip().lower()).strip("_") or f"class{k}"
        out.append(name if name not in out else f"{name}_{k}")
    return out


def case_metrics(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, spacing: Sequence[float], tolerance_mm: float = 2.0
) -> dict[str, np.ndarray]:
    """pred, label: [*S] integer class maps of one case -> {metric: [num_classes - 1] array}."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDiceMetric
    from monai.networks.utils import one_hot

    p = one_hot(pred.long().reshape(1, 1, *pred.shape), num_classes)
    y = one_hot(label.long().reshape(1, 1, *label.shape), num_classes)
    sp = [float(s) for s in spacing]
    c = num_classes - 1
    has_p = p[0, 1:].flatten(1).any(dim=1).numpy()
    has_y = y[0, 1:].flatten(1).any(dim=1).numpy()
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, sp)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on every empty class
        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(p, y)[0].numpy().astype(float)
        iou = MeanIoU(include_background=False, reduction="none", ignore_empty=False)(p, y)[0].numpy().astype(float)
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(p, y, spacing=sp)[0].numpy().astype(float)
        nsd = SurfaceDiceMetric([float(tolerance_mm)] * c, include_background=False, reduction="none")(p, y, spacing=sp)[0]
        nsd = nsd.numpy().astype(float)
    both_empty = ~has_p & ~has_y
    dice[both_empty] = np.nan
    iou[both_empty] = np.nan
    hd = np.where(has_y & ~has_p, diag, hd)
    hd[~has_y] = np.nan
    hd = np.where(np.isinf(hd), diag, hd)
    nsd = np.where(has_y & ~has_p, 0.0, nsd)
    nsd[~has_y] = np.nan
    return {"dice": dice, "iou": iou, "hd95": hd, "nsd": nsd}


def aggregate(cases: list[dict[str, np.ndarray]], keys: Sequence[str]) -> dict[str, float]:
    """Per class (NaN-aware mean over cases) and `<metric>_mean` (mean over classes)."""
    out: dict[str, float] = {}
    if not cases:
        return out
    for metric in METRICS:
        table = np.stack([c[metric] for c in cases])  # [cases, classes]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_class = np.nanmean(table, axis=0)
        for name, v in zip(keys, per_class):
            out[f"{metric}_{name}"] = float(v)
        finite = per_class[~np.isnan(per_class)]
        out[f"{metric}_mean"] = float(finite.mean()) if finite.size else float("nan")
    return out


__all__ = ["METRICS", "class_keys", "case_metrics", "aggregate"]
