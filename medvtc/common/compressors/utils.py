"""Checks and small tensor helpers shared by the compressors (batched, no loops over tokens)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def check_budget_type(budget: object) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ValueError(f"budget must be an int K or a float keep-ratio in (0, 1], got {budget!r}")


def resolve_budget(budget: int | float, n: int, name: str = "compressor") -> int:
    """An int is K itself (1 <= K <= N); a float in (0, 1] is a keep-ratio, K = round(ratio*N)."""
    check_budget_type(budget)
    if isinstance(budget, float):
        if not (0.0 < budget <= 1.0) or math.isnan(budget):
            raise ValueError(f"{name}: a float budget is a keep-ratio in (0, 1], got {budget}")
        return max(1, min(n, int(round(budget * n))))
    if budget <= 0 or budget > n:
        raise ValueError(f"{name}: budget K must satisfy 0 < K <= N={n}, got {budget}")
    return int(budget)


def check_tokens_and_grid(
    tokens: torch.Tensor,
    grid: Sequence[int] | None,
    name: str,
    needs_grid: bool,
    grid_ranks: Sequence[int],
) -> tuple[int, ...]:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"{name}: tokens must be a [B, N, D] tensor, got {shape}")
    b, n, d = tokens.shape
    if b == 0 or n == 0 or d == 0:
        raise ValueError(f"{name}: tokens must be non-empty [B, N, D], got {tuple(tokens.shape)}")
    if not tokens.is_floating_point():
        raise ValueError(f"{name}: tokens must be floating point, got {tokens.dtype}")
    # One float64 sum finds any NaN/Inf without the [B, N, D] boolean temporary that
    # isfinite() would allocate (1.3 GB at B=8, N=32768, D=768); float64 cannot overflow here.
    if not bool(torch.isfinite(tokens.sum(dtype=torch.float64))):
        raise ValueError(f"{name}: tokens contain NaN or Inf")
    if grid is None:
        if needs_grid:
            raise ValueError(f"{name}: needs the token layout: pass grid=(H, W) or (D, H, W) with prod(grid) == N={n}")
        return (n,)
    grid_t = tuple(int(g) for g in grid)
    if any(g <= 0 for g in grid_t) or math.prod(grid_t) != n:
        raise ValueError(f"{name}: grid {grid_t} does not match N={n} tokens (prod(grid) must equal N)")
    if len(grid_t) not in grid_ranks:
        raise ValueError(f"{name}: grid of rank {len(grid_t)} not supported; expected rank in {tuple(grid_ranks)}")
    return grid_t


def check_text(
    text: torch.Tensor | None,
    text_mask: torch.Tensor | None,
    batch: int,
    name: str,
    required: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if text is None:
        if required:
            raise ValueError(f"{name}: is instruction-guided and needs text=[B, L, Dt] embeddings")
        return None, None
    if text.ndim != 3 or text.shape[0] != batch:
        raise ValueError(f"{name}: text must be [B={batch}, L, Dt], got {tuple(text.shape)}")
    if not bool(torch.isfinite(text).all()):
        raise ValueError(f"{name}: text embeddings contain NaN or Inf")
    if text_mask is not None:
        if tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise ValueError(f"{name}: text_mask must be [B, L]={tuple(text.shape[:2])}, got {tuple(text_mask.shape)}")
        if not bool((text_mask != 0).any(dim=1).all()):
            raise ValueError(f"{name}: every sample needs at least one real text token in text_mask")
    return text, text_mask


def check_scores(scores: torch.Tensor | None, shape: Sequence[int], name: str, required: bool) -> torch.Tensor | None:
    if scores is None:
        if required:
            raise ValueError(f"{name}: needs scores=[B, N] importance (e.g. [CLS] attention)")
        return None
    if tuple(scores.shape) != tuple(shape):
        raise ValueError(f"{name}: scores must be [B, N]={tuple(shape)}, got {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{name}: scores contain NaN or Inf")
    return scores


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D], index [B, K] -> [B, K, D]."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def topk_index(scores: torch.Tensor, k: int, sort_positions: bool = True) -> torch.Tensor:
    """Indices of the k highest scores per row; kept in source order when `sort_positions`."""
    idx = scores.topk(k, dim=1).indices
    return idx.sort(dim=1).values if sort_positions else idx


def pooled_text(text: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
    """Masked mean over L: [B, L, Dt] -> [B, Dt]."""
    if text_mask is None:
        return text.mean(dim=1)
    m = text_mask.to(text.dtype).unsqueeze(-1)
    return (text * m).sum(1) / m.sum(1).clamp_min(1.0)


def one_hot_assign(index: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """index [B, K] -> hard assignment [B, K, N] with a 1 at each kept source."""
    return F.one_hot(index, n).to(dtype)


def nearest_assignment(sources: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """For every source token the index of its most cosine-similar target: [B, N] in [0, K)."""
    s = F.normalize(sources, dim=-1)
    t = F.normalize(targets, dim=-1)
    return torch.bmm(s, t.transpose(1, 2)).argmax(dim=-1)


def merge_into(
    tokens: torch.Tensor,
    targets: torch.Tensor,
    assignment: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average `tokens` [B, N, D] into K groups given by `assignment` [B, N] -> (means, sizes).

    `targets` [B, K, D] only fixes K and the dtype; groups nobody joins keep their target.
    `weights` [B, N] weights the average (defaults to 1).
    """
    b, n, d = tokens.shape
    k = targets.shape[1]
    w = torch.ones(b, n, device=tokens.device, dtype=tokens.dtype) if weights is None else weights.to(tokens.dtype)
    sums = torch.zeros(b, k, d, device=tokens.device, dtype=tokens.dtype)
    sums.scatter_add_(1, assignment.unsqueeze(-1).expand(-1, -1, d), tokens * w.unsqueeze(-1))
    mass = torch.zeros(b, k, device=tokens.device, dtype=tokens.dtype).scatter_add_(1, assignment, w)
    # Sizes in at least float32: bf16 cannot count past 256 exactly.
    count_dtype = torch.promote_types(tokens.dtype, torch.float32)
    counts = torch.zeros(b, k, device=tokens.device, dtype=count_dtype).scatter_add_(
        1, assignment, torch.ones(b, n, device=tokens.device, dtype=count_dtype)
    )
    means = torch.where(mass.unsqueeze(-1) > 0, sums / mass.clamp_min(1e-12).unsqueeze(-1), targets)
    return means, counts


def grid_positions(grid: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """Integer coordinates of every token in a grid, row-major: [N, len(grid)]."""
    axes = [torch.arange(g, device=device) for g in grid]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1)


def to_spatial(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """[B, N, D] -> [B, D, *grid] (channels first, for pooling and convolutions)."""
    b, n, d = tokens.shape
    return tokens.transpose(1, 2).reshape(b, d, *grid)


def from_spatial(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """[B, D, *grid] -> ([B, N, D], grid)."""
    b, d = x.shape[:2]
    grid = tuple(x.shape[2:])
    return x.reshape(b, d, -1).transpose(1, 2), grid


def factor_grid(grid: Sequence[int], k: int) -> tuple[int, ...] | None:
    """An output grid with prod == k and each side <= the input's, as close as possible to the
    input's aspect ratio; None when k cannot be laid out inside `grid`.

    Used by grid-structured methods (pooling) so that a budget is honoured exactly.
    """
    grid = tuple(grid)
    ratio = (math.prod(grid) / k) ** (1.0 / len(grid))
    best: tuple[float, tuple[int, ...]] | None = None

    def rec(prefix: tuple[int, ...], remaining: int) -> None:
        nonlocal best
        i = len(prefix)
        if i == len(grid) - 1:
            if remaining <= grid[i]:
                cand = prefix + (remaining,)
                err = sum((math.log(c) - math.log(g / ratio)) ** 2 for c, g in zip(cand, grid))
                if best is None or err < best[0]:
                    best = (err, cand)
            return
        for f in range(1, min(grid[i], remaining) + 1):
            if remaining % f == 0:
                rec(prefix + (f,), remaining // f)

    rec((), k)
    return best[1] if best else None


def achievable(grid: Sequence[int], k: int, ok) -> list[int]:
    """The budgets nearest to k (below and above) for which `ok(grid, K)` holds."""
    n = math.prod(grid)
    below = next((c for c in range(k - 1, 0, -1) if ok(grid, c)), None)
    above = next((c for c in range(k + 1, n + 1) if ok(grid, c)), None)
    return [c for c in (below, above) if c is not None]


def sinusoidal_positions(
    grid: Sequence[int], dim: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fixed sin/cos encoding of every cell of a 1D/2D/3D grid, row-major: [N, dim].

    The channels are split evenly over the axes (a remainder of channels stays zero); each axis
    uses the Transformer's geometric frequencies on its integer coordinate.
    """
    pos = grid_positions(grid, device).to(torch.float32)  # [N, R]
    rank = pos.shape[1]
    per_axis = (dim // rank) // 2 * 2
    half = per_axis // 2
    if half == 0:
        return torch.zeros(pos.shape[0], dim, device=device, dtype=dtype)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
    angles = pos.unsqueeze(-1) * freqs  # [N, R, half]
    enc = torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(pos.shape[0], rank * per_axis)
    return F.pad(enc, (0, dim - rank * per_axis)).to(dtype)
