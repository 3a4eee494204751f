"""Compressor-VLA's Spatial Refinement Compressor (SRC): instruction-biased window attention."""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import nn

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register


def _divisors(g: int) -> list[int]:
    return [w for w in range(1, g + 1) if g % w == 0]


@functools.lru_cache(maxsize=256)
def window_options(grid: tuple[int, ...]) -> dict[int, list[tuple[int, ...]]]:
    """Every per-axis window (each side dividing its axis) grouped by output count."""
    opts: dict[int, list[tuple[int, ...]]] = {}
    for win in itertools.product(*[_divisors(g) for g in grid]):
        count = math.prod(g // w for g, w in zip(grid, win))
        opts.setdefault(count, []).append(win)
    return opts


def choose_windows(grid: tuple[int, ...], k: int, window: int) -> tuple[int, ...] | None:
    """Per-axis windows dividing `grid` that give exactly k windows, None if there are none.

    The default (window,) * rank wins when it fits; otherwise the most isotropic window (least
    spread of log sizes), then the one closest to the default, then the one that pools the
    leading axis (depth / time) least.
    """
    default = (window,) * len(grid)
    if all(g % w == 0 for g, w in zip(grid, default)) and math.prod(g // w for g, w in zip(grid, default)) == k:
        return default
    cands = window_options(tuple(grid)).get(k)
    if not cands:
        return None

    def key(win: tuple[int, ...]):
        logs = [math.log(w) for w in win]
        mean = sum(logs) / len(logs)
        spread = sum((v - mean) ** 2 for v in logs)
        dist = sum((v - math.log(window)) ** 2 for v in logs)
        return (round(spread, 9), round(dist, 9), win)

    return min(cands, key=key)


def achievable_counts(grid: tuple[int, ...]) -> set[int]:
    return set(window_options(tuple(grid)))


def window_view(x: torch.Tensor, grid: tuple[int, ...], win: tuple[int, ...]) -> torch.Tensor:
    """[B, N, C] on `grid` -> [B, M, W, C]: M windows (row-major over the output grid), each
    with its W = prod(win) tokens in row-major order."""
    b, _, c = x.shape
    r = len(grid)
    out = [g // w for g, w in zip(grid, win)]
    shape = [b]
    for o, w in zip(out, win):
        shape += [o, w]
    y = x.reshape(*shape, c)
    perm = [0] + [1 + 2 * i for i in range(r)] + [2 + 2 * i for i in range(r)] + [1 + 2 * r]
    return y.permute(*perm).reshape(b, math.prod(out), math.prod(win), c)


@register
class SpatialRefinementCompressor(TokenCompressor):
    """Spatial Refinement Compressor (SRC) of Compressor-VLA ("Compressor-VLA: Instruction-Guided
    Visual Token Compression for Efficient Robotic Manipulation", arXiv 2511.18950, 2025): the
    grid is cut into w x w (2D) or w x w x w (3D) windows (default w = 2); each window's query
    is its downsampled tokens (the window mean) PLUS an MLP of the pooled instruction (added,
    not FiLM), and cross-attention inside the window (the query attends to the window's own
    tokens) yields one token per window: out = sum_j a_j x_j with
    a = softmax_j(<W_q LN(q), W_k LN(x_j)> / sqrt(d_head)) per head. `out.grid` is the output
    grid, `out.index` each window's most-attended source token, `out.size` the window size.

    Budget: the natural K is prod(grid) / w^rank (used when no budget is given). For any other
    K, per-axis window sizes that divide the grid and give exactly K windows are chosen (like
    pixel shuffle; the most isotropic such window); when none exists a ValueError lists the
    nearest achievable budgets.

    Differences from the paper: no public code. The values are the raw window tokens (identity
    value and output projections; each head mixes its own channel slice), so every output is a
    convex combination of its window's tokens, stays in the input feature space, and reduces
    exactly to the window mean (the paper's downsampling) when attention is uniform. Without
    text (only reachable through `compressor_vla(use_instruction=False)`) the MLP gets a zero
    input.

    Cost (multiply-adds): key projection N*D^2, query projection K*D^2, logits and weighted sum
    2*N*D, window means N*D, instruction MLP Dt*D + D^2; in FLOPs
    2*(N*D^2 + K*D^2 + 2*N*D + 2*D^2) + N*D with Dt = D.
    """

    name = "src"
    needs_text = True
    needs_grid = True
    grid_ranks = (2, 3)
    learnable = True

    def __init__(
        self,
        dim: int,
        text_dim: int | None = None,
        budget: int | float | None = None,
        window: int = 2,
        num_heads: int = 8,
    ) -> None:
        super().__init__(budget)
        for arg, val in (("dim", dim), ("window", window), ("num_heads", num_heads)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"src: {arg} must be a positive int, got {val!r}")
        if dim % num_heads:
            raise ValueError(f"src: dim={dim} must be divisible by num_heads={num_heads}")
        self.dim = dim
        self.text_dim = dim if text_dim is None else text_dim
        self.window = window
        self.num_heads = num_heads
        self.text_mlp = nn.Sequential(nn.Linear(self.text_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm_q = nn.LayerNorm(dim)
        self.norm_k = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)

    def default_budget(self, grid: tuple[int, ...]) -> int | None:
        if any(g % self.window for g in grid):
            return None
        return math.prod(g // self.window for g in grid)

    def forward(self, tokens, grid=None, budget=None, text=None, text_mask=None, scores=None) -> CompressorOutput:
        if budget is None and self.budget is None and grid is not None:
            try:
                budget = self.default_budget(tuple(int(g) for g in grid))  # still validated by the base
            except (TypeError, ValueError):
                pass  # a malformed grid: the base reports it
        return super().forward(tokens, grid=grid, budget=budget, text=text, text_mask=text_mask, scores=scores)

    def windows_for(self, grid: tuple[int, ...], k: int) -> tuple[int, ...]:
        win = choose_windows(tuple(grid), k, self.window)
        if win is None:
            counts = achievable_counts(tuple(grid))
            near = utils.achievable(grid, k, lambda _g, c: c in counts)
            raise ValueError(
                f"{self.name}: budget K={k} cannot be made of windows that divide grid {tuple(grid)}; "
                f"achievable budgets nearest to K: {near}"
            )
        return win

    def compress_windows(self, tokens, grid, win, text, text_mask) -> CompressorOutput:
        """SRC with the per-axis window `win` already chosen (used by compressor_vla)."""
        b, n, d = tokens.shape
        if d != self.dim:
            raise ValueError(f"{self.name}: tokens have D={d}, expected dim={self.dim}")
        h = self.num_heads
        dh = d // h
        xw = window_view(tokens, grid, win)  # [B, M, W, D]
        m, w = xw.shape[1], xw.shape[2]
        if text is None:
            pooled = torch.zeros(b, self.text_dim, device=tokens.device, dtype=tokens.dtype)
        else:
            if text.shape[-1] != self.text_dim:
                raise ValueError(
                    f"{self.name}: text embeddings have Dt={text.shape[-1]}, expected text_dim={self.text_dim}"
                )
            pooled = utils.pooled_text(text, text_mask).to(tokens.dtype)
        query = xw.mean(dim=2) + self.text_mlp(pooled).unsqueeze(1)  # [B, M, D]
        qh = self.q_proj(self.norm_q(query)).view(b, m, h, dh)
        kh = self.k_proj(self.norm_k(xw)).view(b, m, w, h, dh)
        logits = torch.einsum("bmhc,bmwhc->bmhw", qh, kh) / math.sqrt(dh)
        attn = logits.softmax(dim=-1)  # [B, M, H, W]
        out = torch.einsum("bmhw,bmwhc->bmhc", attn, xw.view(b, m, w, h, dh)).reshape(b, m, d)
        src_ids = window_view(torch.arange(n, device=tokens.device).view(1, n, 1), grid, win)[0, :, :, 0]  # [M, W]
        best = attn.detach().mean(dim=2).argmax(dim=-1)  # [B, M]
        index = torch.gather(src_ids.expand(b, -1, -1), 2, best.unsqueeze(-1)).squeeze(-1)
        out_grid = tuple(g // ww for g, ww in zip(grid, win))
        size = torch.full((b, m), float(w), device=tokens.device, dtype=tokens.dtype)
        return CompressorOutput(tokens=out, index=index, size=size, grid=out_grid)

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        return self.compress_windows(tokens, grid, self.windows_for(grid, k), text, text_mask)

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        return float(2 * (n * d * d + k * d * d + 2 * n * d + 2 * d * d) + n * d)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, dim={self.dim}, text_dim={self.text_dim}, window={self.window}, "
            f"num_heads={self.num_heads}"
        )
