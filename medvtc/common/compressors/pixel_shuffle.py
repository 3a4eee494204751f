"""Pixel-shuffle (space-to-depth) token compression in 2D and 3D, with a learned projection."""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
from torch import nn

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register


def _divisors(g: int) -> list[int]:
    return [f for f in range(1, g + 1) if g % f == 0]


def group_factors(grid: Sequence[int], k: int) -> tuple[int, ...] | None:
    """Per-axis group sizes r with r_i | grid_i and prod(r) == N / k, as isotropic as possible
    (least squares on log r_i against log (N/k)^(1/rank)); None when no such factors exist."""
    grid = tuple(int(g) for g in grid)
    n = math.prod(grid)
    if k <= 0 or n % k:
        return None
    group = n // k
    target = math.log(group) / len(grid)
    best: tuple[float, tuple[int, ...]] | None = None
    for cand in itertools.product(*(_divisors(g) for g in grid)):
        if math.prod(cand) != group:
            continue
        err = sum((math.log(c) - target) ** 2 for c in cand)
        if best is None or err < best[0] - 1e-12:
            best = (err, cand)
    return best[1] if best else None


def _fits(grid: Sequence[int], k: int) -> bool:
    return group_factors(grid, k) is not None


def _unreachable(name: str, grid: Sequence[int], k: int) -> str:
    near = utils.achievable(grid, k, _fits)
    return (
        f"{name}: budget K={k} cannot be split into groups whose sides divide grid {tuple(grid)} "
        f"(N/K must be an integer product of divisors of the sides); nearest achievable budgets: {near}"
    )


@register
class PixelShuffle(TokenCompressor):
    """Space-to-depth: concatenate each r_1 x r_2 (x r_3) group of neighbouring tokens along the
    channels (D * prod(r)) and project back to `out_dim` with a Linear layer.

    Paper: Argus (Liu et al., arXiv 2406.07146, ACL Findings 2025) compares visual-token
    compressors for 3D CT report generation and favours pixel shuffle (secondary source); the
    operator itself is InternVL's / Idefics' pixel shuffle, extended here to 3D volumes.

    What differs: the group factors are chosen per call from the budget (prod(grid)/K =
    prod(r), each r_i dividing its grid side, as isotropic as possible) unless fixed with
    `factors=`; a K without such factors raises a ValueError naming the nearest budgets that
    work. The projection is initialised to average the group (weight = [I/R, ..., I/R], bias 0,
    R = prod(r)), so an untrained pixel-shuffle equals average pooling and training can move
    beyond it. When `out_dim != dim` the initial weight is [E/R, ..., E/R] with E the
    rectangular identity `eye(out_dim, dim)` (truncate or zero-pad channels). Argus places an
    MLP projector after the shuffle; here only the one Linear is part of the compressor.

    Parameters: one Linear(dim * R, out_dim) per group shape. With `factors=` it is built at
    construction (use this for training, DDP and checkpoints). Without it, the Linear for a new
    group shape is created on first use (deterministic init); call `projection(factors)` to
    create it before building an optimiser or loading a state dict.

    Outputs: tokens [B, K, out_dim], grid (the shuffled layout), size (= R for every output),
    index (the group's centre source token, a representative).

    Cost: the Linear dominates: 2 * K * (R * D) * out_dim = 2 * N * D * out_dim FLOPs
    (2 * N * D^2 at out_dim = D), plus a copy of the N*D tokens for the regrouping.
    """

    name = "pixel_shuffle"
    needs_grid = True
    grid_ranks = (2, 3)
    learnable = True

    def __init__(
        self,
        budget: int | float | None = None,
        dim: int | None = None,
        out_dim: int | None = None,
        factors: Sequence[int] | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__(budget)
        if dim is None or int(dim) <= 0:
            raise ValueError(f"{self.name}: needs the token width dim=D (a positive int), got {dim!r}")
        self.dim = int(dim)
        self.out_dim = self.dim if out_dim is None else int(out_dim)
        if self.out_dim <= 0:
            raise ValueError(f"{self.name}: out_dim must be positive, got {out_dim!r}")
        self.bias = bool(bias)
        self.factors = None if factors is None else tuple(int(f) for f in factors)
        if self.factors is not None and (len(self.factors) not in self.grid_ranks or any(f <= 0 for f in self.factors)):
            raise ValueError(f"{self.name}: factors must be 2 or 3 positive ints, got {factors!r}")
        self.proj = nn.ModuleDict()
        if self.factors is not None:
            self.projection(self.factors)

    @classmethod
    def default_args(cls, *, budget, grid, per_call, **_) -> dict:
        """Built for one budget on a known grid: the group factors for K, so the projection
        exists before an optimiser or a state dict sees the module (a K no factors give is a
        ValueError naming the nearest budgets that do). Per-call budgets: factors per call."""
        if per_call or budget is None or grid is None:
            return {}
        factors = group_factors(grid, budget)
        if factors is None:
            raise ValueError(_unreachable(cls.name, grid, budget))
        return {"factors": factors}

    @staticmethod
    def _key(factors: Sequence[int]) -> str:
        return "x".join(str(int(f)) for f in factors)

    def projection(self, factors: Sequence[int], device=None, dtype=None) -> nn.Linear:
        """The Linear for a group shape, created (initialised to the group average) if new."""
        key = self._key(factors)
        if key not in self.proj:
            r = math.prod(int(f) for f in factors)
            lin = nn.Linear(self.dim * r, self.out_dim, bias=self.bias, device=device, dtype=dtype)
            with torch.no_grad():
                eye = torch.eye(self.out_dim, self.dim, device=lin.weight.device, dtype=lin.weight.dtype)
                lin.weight.copy_(eye.repeat(1, r) / r)
                if lin.bias is not None:
                    lin.bias.zero_()
            self.proj[key] = lin
        return self.proj[key]

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, d = tokens.shape
        if d != self.dim:
            raise ValueError(f"{self.name}: built for dim={self.dim}, got tokens with D={d}")
        if self.factors is not None:
            r = self.factors
            if len(r) != len(grid) or any(g % f for g, f in zip(grid, r)) or n // math.prod(r) != k:
                fixed = n // math.prod(r) if len(r) == len(grid) and not any(g % f for g, f in zip(grid, r)) else None
                raise ValueError(
                    f"{self.name}: fixed factors {r} do not give budget K={k} on grid {grid}"
                    + (f" (they give K={fixed})" if fixed else " (they must divide every side)")
                )
        else:
            r = group_factors(grid, k)
            if r is None:
                raise ValueError(_unreachable(self.name, grid, k))
        out_grid = tuple(g // f for g, f in zip(grid, r))
        rank = len(grid)
        # [B, o1, r1, o2, r2, (o3, r3), D] -> [B, o1, o2, (o3), r1, r2, (r3), D] -> [B, K, R*D]
        split = [s for o, f in zip(out_grid, r) for s in (o, f)]
        x = tokens.reshape(b, *split, d)
        perm = [0] + [1 + 2 * a for a in range(rank)] + [2 + 2 * a for a in range(rank)] + [1 + 2 * rank]
        x = x.permute(*perm).reshape(b, k, math.prod(r) * d)
        lin = self.projection(r, device=tokens.device, dtype=tokens.dtype)
        out = lin(x)

        dev = tokens.device
        strides = [math.prod(grid[a + 1 :]) for a in range(rank)]
        index = torch.zeros((), dtype=torch.long, device=dev)
        for o, f, st in zip(out_grid, r, strides):
            centre = torch.arange(o, device=dev) * f + (f - 1) // 2
            index = (index.reshape(-1, 1) + (centre * st).reshape(1, -1)).reshape(-1)
        size = torch.full((b, k), float(math.prod(r)), device=dev, dtype=tokens.dtype)
        return CompressorOutput(tokens=out, index=index.expand(b, k), size=size, grid=out_grid)

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        return float(2 * n * d * d)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, budget={self.budget!r}, dim={self.dim}, out_dim={self.out_dim}, "
            f"factors={self.factors}"
        )
