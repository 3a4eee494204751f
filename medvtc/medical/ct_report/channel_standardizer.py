"""Per-channel standardisation of the CT input channels before the ViT's patch embedding.

Why: the input's tissue-interval channels (`datasets.ct_rate.HUIntervalChannelsd`) differ in
scale by orders of magnitude. The calcium channel ([700, 1000) HU) is zero almost everywhere and a
few tenths in the handful of voxels of a plaque, while the HU window and the soft-tissue channels
vary over the whole body. On the 3600-volume phantom the largest value of that one channel alone
separates volumes with and without arterial or coronary calcification at AUC 0.98 / 0.94, yet a
logistic regression on the trained encoder's pooled tokens reached only 0.68 (the label probe
0.54 / 0.57): the convolution sees the plaque as a small bump among tissue edges and learns
little about it. Dividing each channel by its spread over the training set (as ImageNet pixels are
standardised) makes a rare channel's signal as large as a common one's. A fixed affine map fitted
once before the vision stage (like scikit-learn's StandardScaler); saved with the model. MONAI's
`NormalizeIntensity(channel_wise=True)` standardises each volume by its own statistics, which
would erase the amounts (how much emphysema, how much fluid) that several findings are, hence this
small module.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from medvtc.medical.ct_report.token_standardizer import mean_and_std


class ChannelStandardizer(nn.Module):
    """(x - mean[c]) / std[c] per input channel c, with statistics over every voxel of the training set.

    Args:
        num_channels: C of the input.
        min_std: floor of the fitted standard deviations (a channel that is all but constant would
            otherwise turn rounding noise into large values).

    Shapes:
        forward(x [B, C, *spatial]) -> same shape and dtype; an unfitted standardizer is the identity.
        fit(batches of [B, C, *spatial]) computes the statistics over all voxels of all batches
        (float64 sums).
    """

    def __init__(self, num_channels: int, min_std: float = 0.01) -> None:
        super().__init__()
        self.min_std = float(min_std)
        self.register_buffer("mean", torch.zeros(num_channels))
        self.register_buffer("std", torch.ones(num_channels))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.mean.numel():
            raise ValueError(f"ChannelStandardizer expects [B, {self.mean.numel()}, ...], got {tuple(x.shape)}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape).to(x.dtype)) / self.std.view(shape).to(x.dtype)

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> "ChannelStandardizer":
        c = self.mean.numel()
        voxels = (x.transpose(0, 1).reshape(c, -1).T for x in batches)  # [voxels, C] per batch
        mean, std = mean_and_std(voxels, self.min_std, "ChannelStandardizer.fit", "voxels")
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))
        self.fitted.fill_(True)
        return self

__all__ = ["ChannelStandardizer"]
