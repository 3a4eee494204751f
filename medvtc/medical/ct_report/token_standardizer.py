"""Per-position standardisation of the ViT's tokens before the compressor.

Why: CT volumes share their anatomy, so each ViT token is dominated by what sits at its grid
position (lung, heart, spine), which is the same in every patient. In our runs the spread of a
token across patients was only 4-13 % of its spread overall, and the language model ignored
the image (image_gain 0.0001 after 400 steps with a frozen encoder). Subtracting each
position's mean over the training set and dividing by its standard deviation leaves the
patient-specific part, which is what the report is about; with it the same run reached an
image_gain of 0.0033 (0.0065 after 600 steps). It is a fixed affine map fitted once on the
training set after the vision warm-up (like scikit-learn's StandardScaler), not a batch
statistic, so inference does not depend on the batch and a saved model carries its statistics.
No library provides a per-token scaler over a fitted dataset, hence this small module.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class TokenStandardizer(nn.Module):
    """(tokens - mean) / std with statistics per grid position and channel.

    Args:
        num_tokens: N, the ViT grid size.
        dim: D, the token width.
        min_std: floor of the fitted standard deviations (positions that are nearly constant,
            such as the air around the body, would otherwise amplify noise).

    Shapes:
        forward(tokens [B, N, D]) -> [B, N, D]; an unfitted standardizer is the identity.
        fit(batches of [B, N, D]) computes the statistics over all batches (float64 sums).
    """

    def __init__(self, num_tokens: int, dim: int, min_std: float = 0.01) -> None:
        super().__init__()
        self.min_std = float(min_std)
        self.register_buffer("mean", torch.zeros(num_tokens, dim))
        self.register_buffer("std", torch.ones(num_tokens, dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the identity (unfitted)."""
        self.mean.zero_()
        self.std.fill_(1.0)
        self.fitted.fill_(False)

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1:] != self.mean.shape:
            raise ValueError(f"TokenStandardizer expects [B, {', '.join(map(str, self.mean.shape))}], got {tuple(tokens.shape)}")
        return (tokens - self.mean.to(tokens.dtype)) / self.std.to(tokens.dtype)

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> "TokenStandardizer":
        mean, std = mean_and_std(batches, self.min_std, "TokenStandardizer.fit", "samples")
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))
        self.fitted.fill_(True)
        return self


@torch.no_grad()
def mean_and_std(batches: Iterable[torch.Tensor], min_std: float, who: str, unit: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased standard deviation (floored at `min_std`) over dim 0 of all `batches`
    together, from float64 running sums (the batches are never held at once). `who` / `unit`
    name the caller and what dim 0 counts in the error for fewer than 2 of them."""
    total = total_sq = None
    count = 0
    for batch in batches:
        t = batch.detach().to(torch.float64)
        total = t.sum(0) if total is None else total + t.sum(0)
        total_sq = (t * t).sum(0) if total_sq is None else total_sq + (t * t).sum(0)
        count += t.shape[0]
    if count < 2:
        raise ValueError(f"{who} needs at least 2 {unit}, got {count}")
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0) * count / (count - 1)
    return mean, var.sqrt().clamp_min(min_std)

__all__ = ["TokenStandardizer", "mean_and_std"]
