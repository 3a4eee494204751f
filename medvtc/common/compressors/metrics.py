"""Task-free measures of how much of the original tokens a compressed set keeps.

- `reconstruction_kept`: reconstruct every original token by its nearest compressed token
  (cosine nearest, then the compressed token itself) and report 1 - relative squared error,
  sum ||x - x_hat||^2 / sum ||x - mean||^2. 1 means lossless; 0 is as good as the mean token.
- `coverage`: the facility-location objective: mean over original tokens of the best cosine
  similarity to any compressed token, with negative similarity clipped to 0 (FLoC's objective).

Both are batched and chunked over N so they run at N=32768.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _best_match(original: torch.Tensor, kept: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For each original token: (best cosine similarity, index of that kept token)."""
    kn = F.normalize(kept.float(), dim=-1)
    sims, idxs = [], []
    for start in range(0, original.shape[1], chunk):
        on = F.normalize(original[:, start : start + chunk].float(), dim=-1)
        s = torch.bmm(on, kn.transpose(1, 2))
        best = s.max(dim=-1)
        sims.append(best.values)
        idxs.append(best.indices)
    return torch.cat(sims, 1), torch.cat(idxs, 1)


@torch.no_grad()
def reconstruction_kept(original: torch.Tensor, kept: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """1 - relative reconstruction error of `original` [B, N, D] from `kept` [B, K, D]."""
    if mask is not None:  # padded outputs must never be chosen
        kept = torch.where(mask.unsqueeze(-1), kept, torch.full_like(kept, 0.0))
    _, idx = _best_match(original, kept)
    recon = torch.gather(kept.float(), 1, idx.unsqueeze(-1).expand(-1, -1, kept.shape[-1]))
    x = original.float()
    err = (x - recon).pow(2).sum()
    var = (x - x.mean(dim=1, keepdim=True)).pow(2).sum().clamp_min(1e-12)
    return float(1.0 - err / var)


@torch.no_grad()
def coverage(original: torch.Tensor, kept: torch.Tensor) -> float:
    sims, _ = _best_match(original, kept)
    return float(sims.clamp_min(0).mean())
