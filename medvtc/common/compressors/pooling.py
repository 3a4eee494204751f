"""Uniform grid average pooling: the image-downsampling baseline, in 2D and 3D."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register


def _windows(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end (exclusive) of every adaptive-pooling window along one axis, with the same
    rule as torch's adaptive pooling: start = floor(i*n_in/n_out), end = ceil((i+1)*n_in/n_out)."""
    i = torch.arange(n_out, device=device)
    start = (i * n_in) // n_out
    end = ((i + 1) * n_in + n_out - 1) // n_out
    return start, end


def _fits(grid: Sequence[int], k: int) -> bool:
    return utils.factor_grid(grid, k) is not None


@register
class GridPooling(TokenCompressor):
    """Average pooling of the token grid to K cells (2D or 3D).

    Paper: the plain downsampling baseline. M3D-LaMed (Bai et al. 2024, BAAI-DCAI/M3D) applies
    `avg_pool3d(2)` to its 3D ViT tokens (2048 -> 256); VTC-Bench ("Are we using the right
    benchmark", 2025) finds image downsampling beats many published token-compression methods.

    What differs: M3D pools with a fixed kernel, so only budgets N/8, N/64, ... exist. Here the
    output grid is chosen per call from K with `utils.factor_grid` (product exactly K, each side
    no larger than the input's, aspect ratio as close to the input's as possible) and pooled with
    adaptive average pooling, so grids that do not divide evenly work too (windows then differ in
    size by at most one token per axis and may overlap by one token, exactly as in
    `torch.nn.functional.adaptive_avg_pool{2,3}d`). A K that cannot be laid out inside the grid
    (e.g. a prime larger than every side) raises a ValueError naming the nearest budgets that can.

    Outputs: tokens [B, K, D], grid (the pooled layout), size (tokens averaged into each cell),
    index (the centre source token of each window, a representative for plotting), and assign
    [B, K, N] (rows sum to 1) only when `return_assign=True`, since it costs N*K memory.

    Cost: every input token is added once and every output divided once: N*D + K*D FLOPs.
    """

    name = "pooling"
    needs_grid = True
    grid_ranks = (2, 3)

    def __init__(self, budget: int | float | None = None, return_assign: bool = False) -> None:
        super().__init__(budget)
        self.return_assign = bool(return_assign)

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, d = tokens.shape
        out_grid = utils.factor_grid(grid, k)
        if out_grid is None:
            near = utils.achievable(grid, k, _fits)
            raise ValueError(
                f"{self.name}: budget K={k} cannot be laid out as a pooled grid inside {grid} "
                f"(each pooled side must be <= the input side); nearest achievable budgets: {near}"
            )
        x = utils.to_spatial(tokens, grid)  # a strided view, no copy
        pool = F.adaptive_avg_pool2d if len(grid) == 2 else F.adaptive_avg_pool3d
        pooled, _ = utils.from_spatial(pool(x, out_grid))

        dev = tokens.device
        starts, ends = zip(*(_windows(g, o, dev) for g, o in zip(grid, out_grid)))
        lengths = [e - s for s, e in zip(starts, ends)]
        centres = [(s + e - 1) // 2 for s, e in zip(starts, ends)]
        size = _outer_product(lengths).to(tokens.dtype)
        strides = [math.prod(grid[a + 1 :]) for a in range(len(grid))]
        index = _outer_sum([c * st for c, st in zip(centres, strides)])
        assign = None
        if self.return_assign:
            axes = [torch.arange(g, device=dev) for g in grid]
            members = [((a >= s[:, None]) & (a < e[:, None])).to(tokens.dtype) for a, s, e in zip(axes, starts, ends)]
            m = members[0]
            for nxt in members[1:]:
                m = torch.kron(m, nxt)
            assign = (m / size[:, None]).expand(b, k, n)
        return CompressorOutput(
            tokens=pooled,
            index=index.expand(b, k),
            assign=assign,
            size=size.expand(b, k),
            grid=tuple(out_grid),
        )

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        return float(n * d + k * d)


def _outer_product(vectors: list[torch.Tensor]) -> torch.Tensor:
    out = vectors[0]
    for v in vectors[1:]:
        out = (out[:, None] * v[None, :]).reshape(-1)
    return out


def _outer_sum(vectors: list[torch.Tensor]) -> torch.Tensor:
    out = vectors[0]
    for v in vectors[1:]:
        out = (out[:, None] + v[None, :]).reshape(-1)
    return out
