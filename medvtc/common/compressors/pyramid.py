"""Hierarchical multi-scale token pyramid: choose K cells across scales (coarse where flat,
fine where detailed). The candidate machinery (`candidates`, `select`, `layout`) is public so
that TokenSeg's hierarchical encoder can build on it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register

_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
MODES = ("cover", "score", "partition")


@dataclass(frozen=True)
class PyramidLayout:
    """Where every candidate of a grid's pyramid sits (batch-independent, fine to coarse).

    grids     the grid of each level; level l pools cells of 2^l per axis (fewer at the edges)
    kernels   the pooling window of each level (min(2^l, side) per axis)
    offsets   the first candidate id of each level, plus the total count C at the end
    levels    [C] long, the level of each candidate
    positions [C, R] long, its integer coordinates in its own level's grid
    origin    [C, R] long, the first level-0 cell it covers (positions * 2^level)
    volume    [C] long, how many level-0 tokens it averages
    centre    [C] long, the flat level-0 id of its centre token
    parents   per level l < top: [N_l] long, the id (within level l + 1) of each cell's parent
    """

    grids: tuple[tuple[int, ...], ...]
    kernels: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    levels: torch.Tensor
    positions: torch.Tensor
    origin: torch.Tensor
    volume: torch.Tensor
    centre: torch.Tensor
    parents: tuple[torch.Tensor, ...]

    @property
    def num_candidates(self) -> int:
        return self.offsets[-1]


def build_layout(grid: Sequence[int], levels: int, device=None) -> PyramidLayout:
    grid = tuple(int(g) for g in grid)
    grids, kernels = [grid], [(1,) * len(grid)]
    for lev in range(1, levels):
        g = tuple(-(-s // 2**lev) for s in grid)
        if g == grids[-1]:  # already one cell per axis: further levels would repeat it
            break
        grids.append(g)
        kernels.append(tuple(min(2**lev, s) for s in grid))
    strides0 = torch.tensor([math.prod(grid[a + 1 :]) for a in range(len(grid))], device=device)
    sides = torch.tensor(grid, device=device)
    lv, pos, org, vol, cen, offsets = [], [], [], [], [], [0]
    for lev, (g, ker) in enumerate(zip(grids, kernels)):
        p = utils.grid_positions(g, device)  # [N_l, R]
        step = torch.tensor(ker, device=device)
        start = p * step
        extent = torch.minimum(start + step, sides) - start
        lv.append(torch.full((p.shape[0],), lev, dtype=torch.long, device=device))
        pos.append(p)
        org.append(start)
        vol.append(extent.prod(dim=1))
        cen.append(((start + (extent - 1) // 2) * strides0).sum(dim=1))
        offsets.append(offsets[-1] + p.shape[0])
    parents = []
    for lev in range(len(grids) - 1):
        up = grids[lev + 1]
        up_strides = torch.tensor([math.prod(up[a + 1 :]) for a in range(len(up))], device=device)
        parents.append(((pos[lev] // 2) * up_strides).sum(dim=1))
    return PyramidLayout(
        grids=tuple(grids),
        kernels=tuple(kernels),
        offsets=tuple(offsets),
        levels=torch.cat(lv),
        positions=torch.cat(pos),
        origin=torch.cat(org),
        volume=torch.cat(vol),
        centre=torch.cat(cen),
        parents=tuple(parents),
    )


def _pool(x: torch.Tensor, grid: tuple[int, ...], kernel: tuple[int, ...], op=_AVG_POOL, chunk: int = 0) -> torch.Tensor:
    """[B, N, C] on `grid` -> [B, N_l, C] pooled over `kernel` windows (ceil mode: partial edge
    windows average only their real cells). With chunk > 0 the channels are pooled in slices
    of about chunk rows' worth of memory, so no full channels-first copy of x is made."""
    if all(k == 1 for k in kernel):
        return x
    b, n, c = x.shape
    width = c if chunk <= 0 else max(1, min(c, c * chunk // (b * n)))

    def one(part: torch.Tensor) -> torch.Tensor:
        return utils.from_spatial(op[len(grid)](utils.to_spatial(part, grid), kernel, kernel, ceil_mode=True))[0]

    if width >= c:
        return one(x)
    return torch.cat([one(x[..., s : s + width]) for s in range(0, c, width)], dim=-1)


def _row_dist(x: torch.Tensor, ref: torch.Tensor, ref_idx: torch.Tensor, rows: int) -> torch.Tensor:
    """||x[:, i] - ref[:, ref_idx[i]]|| for every i, read in chunks of rows: [B, n]."""
    n = x.shape[1]
    return torch.cat(
        [(x[:, s : s + rows] - ref[:, ref_idx[s : s + rows]]).norm(dim=-1) for s in range(0, n, rows)], dim=1
    )


def _neighbourhood_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the 3^d box around every cell of [B, C, *grid] (cells outside the grid are
    not counted; axes of size 1 are left alone)."""
    grid = x.shape[2:]
    ker = tuple(3 if g > 1 else 1 for g in grid)
    pad: list[int] = []
    for k in reversed(ker):
        pad += [k // 2, k // 2]
    pool = _AVG_POOL[len(grid)]
    ones = torch.ones((1, 1, *grid), device=x.device, dtype=x.dtype)
    return pool(F.pad(x, pad), ker, 1) / pool(F.pad(ones, pad), ker, 1)


@register
class HierarchicalPyramid(TokenCompressor):
    """Multi-scale token pyramid: K cells chosen across L levels, coarse where flat, fine where
    there is detail. Training-free.

    After the multi-scale candidate pyramids of hierarchical tokenizers (TokenSeg, arXiv
    2601.04519: 400 candidates over 4 levels at 2^-l, non-overlapping pooled cells, then an
    importance score keeps 100) and quadtree/Laplacian-pyramid coding. Level 0 is the tokens;
    level l averages 2^l cells per axis (ceil mode: odd sides give smaller edge cells).
    Candidates are concatenated fine to coarse; `candidates()` returns them with their level and
    position, `select()` returns ids into that list, `layout()` every candidate's geometry.

    Score of a candidate: external `scores` pooled to its cell (mean or max) when given; else
    its detail, the distance of its mean token from its parent's mean token (the coarsest
    level: from the mean of its 3^d neighbourhood), times a level prior. The default prior
    sqrt(cell volume) makes the score sqrt of the squared reconstruction error the candidate
    removes on top of its parent (a scale-normalised detail); `level_prior` gives per-level
    multipliers instead. Modes: "cover" (default) keeps the coarsest level first, so every
    region has a coarse token (flat regions stay coarse), and spends the rest of the budget on
    the finer cells with most detail (overlapping, like a Laplacian pyramid); "score" is a plain
    top-K of the score across levels; "partition" is the non-overlap option: a quadtree-style
    partition refined where the detail is (a kept coarse cell suppresses all its descendants),
    exactly K cells, the few surplus lowest-score leaves dropped (see `_partition`).

    Differences: TokenSeg's scorer is learned and boundary-aware (VQ-VAE + importance); here the
    default score is a training-free detail measure. Since the contract requires out.index to be
    source-token ids (< N), out.index is each kept cell's centre token and out.size its cell
    volume; the ids into the candidate list come from `select()`.

    Shapes: tokens [B, N, D], grid rank 1-3; C ~ N (1 + 2^-d + 4^-d ...) candidates;
    out.tokens [B, K, D] (cell means), out.index [B, K], out.size [B, K].
    Cost: pooling L N D, detail ~3 C D (C ~ 4N/3 in 2D), top-K over C: ~(L + 4) N D.
    """

    name = "pyramid"

    def __init__(
        self,
        budget: int | float | None = None,
        levels: int = 3,
        mode: str = "cover",
        level_prior: Sequence[float] | None = None,
        score_pool: str = "mean",
        chunk_tokens: int = 65536,
    ) -> None:
        super().__init__(budget)
        if levels < 1:
            raise ValueError(f"pyramid: levels must be >= 1, got {levels}")
        if mode not in MODES:
            raise ValueError(f"pyramid: mode must be one of {MODES}, got {mode!r}")
        if score_pool not in ("mean", "max"):
            raise ValueError(f"pyramid: score_pool must be 'mean' or 'max', got {score_pool!r}")
        if level_prior is not None:
            level_prior = tuple(float(p) for p in level_prior)
            if len(level_prior) != levels or any(not math.isfinite(p) or p < 0 for p in level_prior):
                raise ValueError(f"pyramid: level_prior needs {levels} finite values >= 0, got {level_prior}")
        if chunk_tokens <= 0:
            raise ValueError("pyramid: chunk_tokens must be positive")
        self.levels, self.mode, self.level_prior = levels, mode, level_prior
        self.score_pool, self.chunk_tokens = score_pool, chunk_tokens
        self._layout_cache: tuple[tuple, PyramidLayout] | None = None

    # ---- the reusable candidate machinery -------------------------------------------------
    def layout(self, grid: Sequence[int], device=None) -> PyramidLayout:
        key = (tuple(grid), str(device))
        if self._layout_cache is None or self._layout_cache[0] != key:
            self._layout_cache = (key, build_layout(grid, self.levels, device))
        return self._layout_cache[1]

    def pyramid(self, tokens: torch.Tensor, grid: Sequence[int]) -> list[torch.Tensor]:
        """The mean tokens of every level, [B, N_l, D] each (level 0 is `tokens` itself)."""
        lay = self.layout(grid, tokens.device)
        return [_pool(tokens, tuple(grid), ker, chunk=self.chunk_tokens) for ker in lay.kernels]

    def candidates(self, tokens: torch.Tensor, grid: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cand_tokens [B, C, D], levels [C], positions [C, R]) over all levels, fine to coarse."""
        lay = self.layout(grid, tokens.device)
        return torch.cat(self.pyramid(tokens, grid), dim=1), lay.levels, lay.positions

    def candidate_scores(
        self, tokens: torch.Tensor, grid: Sequence[int], scores: torch.Tensor | None = None,
        pyramid: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The selection score of every candidate, [B, C] (before the mode's ordering)."""
        grid = tuple(grid)
        lay = self.layout(grid, tokens.device)
        top = len(lay.grids) - 1
        if scores is not None:
            op = _AVG_POOL if self.score_pool == "mean" else _MAX_POOL
            s = scores.to(tokens.dtype).unsqueeze(-1)
            per = [_pool(s, grid, ker, op).squeeze(-1) for ker in lay.kernels]
            prior = torch.ones(lay.num_candidates, device=tokens.device, dtype=tokens.dtype)
        else:
            pyr = self.pyramid(tokens, grid) if pyramid is None else pyramid
            rows = max(1, self.chunk_tokens // tokens.shape[0])
            per = [_row_dist(pyr[lev], pyr[lev + 1], lay.parents[lev], rows) for lev in range(top)]
            spatial = utils.to_spatial(pyr[top], lay.grids[top])
            hood = _neighbourhood_mean(spatial)
            per.append((pyr[top] - utils.from_spatial(hood)[0]).norm(dim=-1))
            prior = lay.volume.to(tokens.dtype).sqrt()
        if self.level_prior is not None:
            prior = torch.tensor(self.level_prior, device=tokens.device, dtype=tokens.dtype)[lay.levels]
        return torch.cat(per, dim=1) * prior

    def select(
        self, tokens: torch.Tensor, grid: Sequence[int], k: int, scores: torch.Tensor | None = None,
        pyramid: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pick k candidates per sample: (ids into the candidate list [B, k] ascending, their
        levels [B, k], their positions [B, k, R])."""
        lay = self.layout(grid, tokens.device)
        c = lay.num_candidates
        if not 1 <= k <= c:
            raise ValueError(f"pyramid: budget K={k} must be in [1, {c}] candidates")
        key = self.candidate_scores(tokens, grid, scores, pyramid)
        span = (key.amax(dim=1, keepdim=True) - key.amin(dim=1, keepdim=True)) + 1.0
        if self.mode == "cover":
            is_top = (lay.levels == len(lay.grids) - 1).to(key.dtype)
            index = utils.topk_index(key + is_top * span, k)
        elif self.mode == "score":
            index = utils.topk_index(key, k)
        else:
            index = self._partition(key, k, lay)
        return index, lay.levels[index], lay.positions[index]

    def _partition(self, key: torch.Tensor, k: int, lay: PyramidLayout) -> torch.Tensor:
        """Non-overlapping choice: a quadtree-style partition refined where detail is, exactly k
        cells.

        A cell's split score is the highest score among its descendants (so a parent always
        splits before its children); splitting the j highest-ranked cells (ties: coarser
        first) gives a partition whose leaf count grows with j by (children - 1) per split. A
        per-sample binary search finds the smallest j with >= k leaves; the surplus (at most
        2^d - 2) lowest-scoring leaves are dropped. Kept cells never overlap: a kept coarse cell
        suppresses all its descendants.
        """
        b, c = key.shape
        off, top = lay.offsets, len(lay.grids) - 1
        if top == 0:
            return utils.topk_index(key, k)
        split = torch.full_like(key, -math.inf)
        for lev in range(top):  # fine to coarse: parent's score = max over its children's
            child = torch.maximum(key[:, off[lev] : off[lev + 1]], split[:, off[lev] : off[lev + 1]])
            parent = split[:, off[lev + 1] : off[lev + 2]].scatter_reduce(
                1, lay.parents[lev].expand(b, -1), child, reduce="amax", include_self=True
            )
            split = torch.cat([split[:, : off[lev + 1]], parent, split[:, off[lev + 2] :]], dim=1)
        coarse_first = torch.arange(c - 1, -1, -1, device=key.device)
        order = coarse_first[torch.argsort(split[:, coarse_first], dim=1, descending=True, stable=True)]
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(c, device=key.device).expand(b, c))

        def leaves(j: torch.Tensor) -> torch.Tensor:
            want = rank < j  # [B, C]; level-0 cells have -inf and rank last, j <= C - N
            parts = [None] * (top + 1)
            active = torch.ones(b, off[top + 1] - off[top], dtype=torch.bool, device=key.device)
            for lev in range(top, -1, -1):
                s = active & want[:, off[lev] : off[lev + 1]] if lev > 0 else torch.zeros_like(active)
                parts[lev] = active & ~s
                if lev > 0:
                    active = s[:, lay.parents[lev - 1]]
            return torch.cat(parts, dim=1)

        lo = torch.zeros(b, 1, dtype=torch.long, device=key.device)
        hi = torch.full((b, 1), c - lay.offsets[1], dtype=torch.long, device=key.device)
        for _ in range(int(c - lay.offsets[1]).bit_length() + 1):
            mid = (lo + hi) // 2
            enough = leaves(mid).sum(dim=1, keepdim=True) >= k
            hi = torch.where(enough, mid, hi)
            lo = torch.where(enough, lo, mid + 1)
        leaf = leaves(hi)
        span = (key.amax(dim=1, keepdim=True) - key.amin(dim=1, keepdim=True)) + 1.0
        return utils.topk_index(key - (~leaf).to(key.dtype) * span, k)

    # ---- the contract ----------------------------------------------------------------------
    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, d = tokens.shape
        pyr = self.pyramid(tokens, grid)
        index, levels, _ = self.select(tokens, grid, k, scores, pyr)
        lay = self.layout(grid, tokens.device)
        out = torch.zeros(b, k, d, device=tokens.device, dtype=tokens.dtype)
        for lev, x in enumerate(pyr):
            local = (index - lay.offsets[lev]).clamp(0, x.shape[1] - 1)
            out = torch.where((levels == lev).unsqueeze(-1), utils.gather_tokens(x, local), out)
        return CompressorOutput(
            tokens=out,
            index=lay.centre[index],
            size=lay.volume[index].to(tokens.dtype),
        )

    @staticmethod
    def cost(n: int, k: int, d: int, levels: int = 3) -> float:
        return float((levels + 4) * n * d)
