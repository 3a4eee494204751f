"""TokenSeg's multi-scale hierarchical encoder: a 3D CNN over 4 resolution levels whose cells
are pooled into candidate tokens, each carrying its level and 3D position.

After TokenSeg (Zeng, Zhou, Zhu and Liu, "TokenSeg: Efficient 3D Medical Image Segmentation via
Hierarchical Visual Token Compression", arXiv 2601.04519, 2026), section "multi-scale
hierarchical encoder": a feature pyramid with L = 4 levels at downsampling 2^-l (l = 1..4); at
each level non-overlapping local cells are pooled into tokens, and the tokens of all levels are
concatenated into a pool of N = 400 candidates (global context from the coarse levels, boundary
detail from the fine ones).

What is ours: the paper does not give its cell layout, so `plan_cells` splits the N candidates
over the levels by `level_weights` (default 0.4/0.3/0.2/0.1, fine to coarse) and lays each
level's share out as a cell grid of exactly that many cells inside the level's feature grid,
as close to the feature grid's aspect ratio as an exact count allows (the total is exactly
`num_tokens`). Cells are adaptive-average-pooling windows of the level's feature map (exactly
non-overlapping when the sides divide; otherwise neighbouring windows share at most one
feature voxel, as in torch's adaptive pooling). The stages are MONAI `UnetResBlock`s (a stride-1
stem at full resolution, then four stride-2 stages), so the full-resolution and stride-2/4
features double as the decoder's skip connections.

Shapes (spatial_dims = 3, input [B, C, D, H, W], f = feature_size):
    skips      [B, f*2^l, ceil(D/2^l), ceil(H/2^l), ceil(W/2^l)] for l = 0..4
    tokens     [B, N, token_dim]  pooled cell features, projected (content only)
    levels     [N] long in 1..4
    boxes      [N, 2, 3] long: each token's input-voxel box [lo, hi) per axis
    centres    [N, 3] float: box centres normalised to [0, 1] by the input size
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetResBlock
from torch import nn

from medvtc.common.compressors import utils

NUM_LEVELS = 4
DEFAULT_LEVEL_WEIGHTS = (0.4, 0.3, 0.2, 0.1)


def feature_grid(img_size: Sequence[int], level: int) -> tuple[int, ...]:
    """Feature-map size at `level` (stride 2^level, 3x3x3 convolutions with padding 1)."""
    return tuple(-(-int(s) // 2**level) for s in img_size)


def _aspect_error(cells: Sequence[int], grid: Sequence[int]) -> float:
    ratio = (math.prod(grid) / math.prod(cells)) ** (1.0 / len(grid))
    return sum((math.log(c) - math.log(g / ratio)) ** 2 for c, g in zip(cells, grid))


def _best_layout(grid: Sequence[int], target: int, slack: float) -> tuple[int, ...] | None:
    """Among counts within `slack` (relative) of `target` that fit inside `grid`, the cell grid
    with the best aspect ratio (counts nearer the target break near-ties)."""
    cap = math.prod(grid)
    lo = max(1, int(math.floor(target * (1 - slack))))
    hi = min(cap, max(lo, int(math.ceil(target * (1 + slack)))))
    best: tuple[float, tuple[int, ...]] | None = None
    for count in range(lo, hi + 1):
        cells = utils.factor_grid(grid, count)
        if cells is None:
            continue
        score = _aspect_error(cells, grid) + 0.5 * abs(math.log(count / max(target, 1)))
        if best is None or score < best[0]:
            best = (score, cells)
    return None if best is None else best[1]


def plan_cells(
    img_size: Sequence[int],
    num_tokens: int = 400,
    level_weights: Sequence[float] = DEFAULT_LEVEL_WEIGHTS,
    tokens_per_level: Sequence[int] | None = None,
) -> tuple[tuple[int, ...], ...]:
    """Cell grid of each level 1..4 (fine to coarse); their cell counts sum to `num_tokens`.

    With `tokens_per_level` the counts are given (each must fit exactly inside its level's
    feature grid). Otherwise levels are filled from the coarsest: each takes about its weighted
    share (plus what coarser levels could not take), choosing a count within 25 % of it that
    gives well-shaped cells; levels 2 and 1 then share the exact remainder, split so that both
    get well-shaped cells near their shares.
    """
    grids = [feature_grid(img_size, lev) for lev in range(1, NUM_LEVELS + 1)]
    if tokens_per_level is not None:
        counts = [int(c) for c in tokens_per_level]
        if len(counts) != NUM_LEVELS or any(c < 1 for c in counts):
            raise ValueError(f"tokens_per_level needs {NUM_LEVELS} positive counts (fine to coarse), got {list(tokens_per_level)}")
        out = []
        for lev, (g, c) in enumerate(zip(grids, counts), start=1):
            cells = utils.factor_grid(g, c)
            if cells is None:
                near = utils.achievable(g, c, lambda gg, kk: utils.factor_grid(gg, kk) is not None)
                raise ValueError(f"tokens_per_level[{lev - 1}]={c} cannot be laid out as cells inside level {lev}'s "
                                 f"feature grid {g} (img_size {tuple(img_size)}); nearest that fit: {near}")
            out.append(cells)
        return tuple(out)
    if len(level_weights) != NUM_LEVELS or any(w < 0 for w in level_weights) or sum(level_weights) <= 0:
        raise ValueError(f"level_weights needs {NUM_LEVELS} non-negative weights, got {list(level_weights)}")
    capacity = sum(math.prod(g) for g in grids)
    if not NUM_LEVELS <= num_tokens <= capacity:
        raise ValueError(f"num_tokens={num_tokens} must be in [{NUM_LEVELS}, {capacity}] for img_size {tuple(img_size)} "
                         f"(one cell per feature voxel at most)")
    total_w = float(sum(level_weights))
    counts = [0] * NUM_LEVELS
    cells: list[tuple[int, ...] | None] = [None] * NUM_LEVELS
    carry = 0.0
    for i in range(NUM_LEVELS - 1, 0, -1):  # coarse to level 2
        left_for_finer = num_tokens - sum(counts) - i  # at least one token per finer level
        target = min(num_tokens * level_weights[i] / total_w + carry, math.prod(grids[i]), left_for_finer)
        target = max(1, int(round(target)))
        layout = _best_layout(grids[i], target, 0.25) or _best_layout(grids[i], target, 1.0)
        assert layout is not None  # count 1 always fits
        cells[i] = layout
        counts[i] = math.prod(layout)
        carry = target - counts[i]
    # finest level: the exact remainder; level 2 gives or takes tokens so that both get
    # well-shaped cells (the pair with the smallest aspect error, then the smallest shift)
    best: tuple[float, tuple[int, ...], tuple[int, ...]] | None = None
    fixed = sum(counts[2:])
    want1 = num_tokens - fixed - counts[1]
    for c2 in range(1, min(math.prod(grids[1]), num_tokens - fixed - 1) + 1):
        rest = num_tokens - fixed - c2
        if rest > math.prod(grids[0]):
            continue
        l2 = utils.factor_grid(grids[1], c2)
        l1 = utils.factor_grid(grids[0], rest) if l2 is not None else None
        if l1 is None:
            continue
        score = (_aspect_error(l1, grids[0]) + _aspect_error(l2, grids[1])
                 + 0.5 * abs(math.log(c2 / counts[1])) + 0.5 * abs(math.log(rest / max(1, want1))))
        if best is None or score < best[0]:
            best = (score, l2, l1)
    if best is None:
        raise ValueError(f"no exact layout of {num_tokens} candidate tokens for img_size {tuple(img_size)}; "
                         "give tokens_per_level explicitly")
    cells[1], cells[0] = best[1], best[2]
    return tuple(c for c in cells if c is not None)


def cell_windows(grid: Sequence[int], cells: Sequence[int], device=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per axis, the [start, end) feature-voxel window of every cell, by torch's adaptive
    pooling rule: start = floor(i*n/c), end = ceil((i+1)*n/c)."""
    out = []
    for n, c in zip(grid, cells):
        i = torch.arange(c, device=device)
        out.append(((i * n) // c, ((i + 1) * n + c - 1) // c))
    return out


@dataclass
class CandidateGeometry:
    """Where the candidates of one input size sit (batch-independent)."""

    levels: torch.Tensor  # [N] long, 1..4
    boxes: torch.Tensor  # [N, 2, R] long, input voxels [lo, hi)
    centres: torch.Tensor  # [N, R] float in [0, 1]
    sizes: torch.Tensor  # [N, R] float in (0, 1]: box side / input side
    offsets: tuple[int, ...]  # first candidate of each level, plus N at the end
    cells: tuple[tuple[int, ...], ...]  # the cell grid of each level


def candidate_geometry(img_size: Sequence[int], cells: Sequence[Sequence[int]], device=None) -> CandidateGeometry:
    img = torch.tensor([int(s) for s in img_size], device=device)
    levels, boxes, offsets = [], [], [0]
    for lev, cgrid in enumerate(cells, start=1):
        fgrid = feature_grid(img_size, lev)
        wins = cell_windows(fgrid, cgrid, device)
        pos = utils.grid_positions(cgrid, device)  # [n, R]
        lo = torch.stack([wins[a][0][pos[:, a]] for a in range(len(cgrid))], dim=1) * 2**lev
        hi = torch.stack([wins[a][1][pos[:, a]] for a in range(len(cgrid))], dim=1) * 2**lev
        hi = torch.minimum(hi, img)
        boxes.append(torch.stack([lo, hi], dim=1))
        levels.append(torch.full((pos.shape[0],), lev, dtype=torch.long, device=device))
        offsets.append(offsets[-1] + pos.shape[0])
    box = torch.cat(boxes)
    size = (box[:, 1] - box[:, 0]).float() / img
    centre = (box[:, 0] + box[:, 1]).float() / 2 / img
    return CandidateGeometry(torch.cat(levels), box, centre, size, tuple(offsets), tuple(tuple(c) for c in cells))


class HierarchicalEncoder(nn.Module):
    """Multi-scale hierarchical encoder of TokenSeg (arXiv 2601.04519, 2026).

    Args:
        spatial_dims: 3 (volumes). 2 works for slices but is not what the paper does.
        in_channels: input channels C (e.g. 4 MRI sequences for MSD Task01_BrainTumour).
        img_size: the input size the cell layout is planned for (the sliding-window ROI).
        num_tokens: N, candidate tokens over the 4 levels (400 in the paper).
        token_dim: width of each candidate token.
        feature_size: f; level l has f * 2^l channels (l = 0 is the full-resolution stem).
        level_weights / tokens_per_level: how the N candidates are split (see `plan_cells`).
        norm_name: normalisation of the MONAI blocks ("instance", "batch", ...).

    forward(x [B, C, *img_size]) -> (skips: list of 5 feature maps, tokens [B, N, token_dim]).
    Other input sizes work as long as every level's feature grid is at least as large as its
    cell grid (the layout stays the one planned for `img_size`; the cells get larger).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        img_size: Sequence[int] | int,
        num_tokens: int = 400,
        token_dim: int = 128,
        feature_size: int = 16,
        level_weights: Sequence[float] = DEFAULT_LEVEL_WEIGHTS,
        tokens_per_level: Sequence[int] | None = None,
        norm_name: str | tuple = "instance",
    ) -> None:
        super().__init__()
        if isinstance(img_size, int):
            img_size = (img_size,) * spatial_dims
        if len(img_size) != spatial_dims:
            raise ValueError(f"img_size {tuple(img_size)} does not have spatial_dims={spatial_dims} sides")
        self.spatial_dims = spatial_dims
        self.img_size = tuple(int(s) for s in img_size)
        if math.prod(feature_grid(self.img_size, NUM_LEVELS)) < 2:
            raise ValueError(f"img_size {self.img_size} is too small: the stride-16 level would be a single voxel, "
                             "which instance normalisation cannot normalise; use sides of at least 32 (or 17)")
        self.cells = plan_cells(self.img_size, num_tokens, level_weights, tokens_per_level)
        self.num_tokens = sum(math.prod(c) for c in self.cells)
        self.channels = tuple(feature_size * 2**lev for lev in range(NUM_LEVELS + 1))
        self.stages = nn.ModuleList()
        prev = in_channels
        for lev, ch in enumerate(self.channels):
            self.stages.append(UnetResBlock(spatial_dims, prev, ch, kernel_size=3, stride=1 if lev == 0 else 2, norm_name=norm_name))
            prev = ch
        # pooling and a linear map commute, so each level is pooled first and projected after
        self.project = nn.ModuleList(
            nn.Sequential(nn.Linear(self.channels[lev], token_dim), nn.LayerNorm(token_dim)) for lev in range(1, NUM_LEVELS + 1)
        )
        self._geometry: dict[tuple, CandidateGeometry] = {}

    def geometry(self, input_size: Sequence[int], device=None) -> CandidateGeometry:
        key = (tuple(int(s) for s in input_size), str(device))
        if key not in self._geometry:
            for lev, cgrid in enumerate(self.cells, start=1):
                fgrid = feature_grid(input_size, lev)
                if any(c > f for c, f in zip(cgrid, fgrid)):
                    raise ValueError(
                        f"input size {tuple(input_size)} is too small for the cell layout planned for img_size "
                        f"{self.img_size}: level {lev} has a {fgrid} feature grid but {cgrid} cells"
                    )
            self._geometry[key] = candidate_geometry(input_size, self.cells, device)
        return self._geometry[key]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        h = x
        for stage in self.stages:
            h = stage(h)
            skips.append(h)
        pool = F.adaptive_avg_pool3d if self.spatial_dims == 3 else F.adaptive_avg_pool2d
        tokens = []
        for lev, cgrid in enumerate(self.cells, start=1):
            pooled = pool(skips[lev], cgrid)  # [B, C_l, *cells]
            tokens.append(self.project[lev - 1](pooled.flatten(2).transpose(1, 2)))
        return skips, torch.cat(tokens, dim=1)


__all__ = ["HierarchicalEncoder", "CandidateGeometry", "plan_cells", "candidate_geometry", "feature_grid", "cell_windows"]
