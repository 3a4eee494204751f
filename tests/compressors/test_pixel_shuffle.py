"""Pixel shuffle: untrained it equals pooling; the layout and factors are right; it trains."""

from __future__ import annotations

import math

import pytest
import torch

from medvtc.common.compressors import create_compressor
from medvtc.common.compressors.pixel_shuffle import group_factors

D = 8


def _tokens(grid, b=2, d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, math.prod(grid), d, generator=g)


@pytest.mark.parametrize("grid,k", [((8, 8), 16), ((4, 4, 4), 8), ((4, 6), 6), ((2, 4, 8), 8)])
def test_untrained_equals_pooling(grid, k):
    x = _tokens(grid)
    ps = create_compressor("pixel_shuffle", dim=D)(x, grid=grid, budget=k)
    r = group_factors(grid, k)
    out_grid = tuple(g // f for g, f in zip(grid, r))
    assert ps.grid == out_grid and ps.tokens.shape == (2, k, D)
    # explicit group means (reshape reference), and pooling on the same output grid
    split = [s for o, f in zip(out_grid, r) for s in (o, f)]
    ref = x.reshape(2, *split, D).mean(dim=tuple(2 + 2 * a for a in range(len(grid)))).reshape(2, k, D)
    torch.testing.assert_close(ps.tokens, ref, atol=1e-5, rtol=1e-5)
    pool = create_compressor("pooling")(x, grid=grid, budget=k)
    if pool.grid == out_grid:
        torch.testing.assert_close(ps.tokens, pool.tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(ps.size, torch.full((2, k), float(math.prod(r))))


def test_concatenation_order_is_row_major_within_the_group():
    grid = (4, 6)
    x = _tokens(grid, b=1)
    comp = create_compressor("pixel_shuffle", dim=D, factors=(2, 3))
    lin = comp.projection((2, 3))
    with torch.no_grad():  # pick group position (1, 2): the bottom-right token of each 2x3 block
        lin.weight.zero_()
        lin.weight[:, 5 * D : 6 * D] = torch.eye(D)
    out = comp(x, grid=grid, budget=4)
    ref = x.reshape(1, 4, 6, D)[:, 1::2, 2::3].reshape(1, 4, D)
    torch.testing.assert_close(out.tokens, ref)
    assert out.grid == (2, 2)


def test_factors_are_isotropic_and_divide_the_grid():
    assert group_factors((8, 8), 16) == (2, 2)
    assert group_factors((16, 16, 16), 512) == (2, 2, 2)
    assert group_factors((4, 6), 4) == (2, 3)
    assert group_factors((8, 8), 24) is None
    assert group_factors((4, 4), 16) == (1, 1)
    for grid, k in [((2, 4, 8), 16), ((6, 10), 5), ((3, 5, 7), 35)]:
        r = group_factors(grid, k)
        assert all(g % f == 0 for g, f in zip(grid, r)) and math.prod(grid) // math.prod(r) == k


def test_impossible_budget_names_nearest_achievable():
    x = _tokens((8, 8))
    comp = create_compressor("pixel_shuffle", dim=D)
    with pytest.raises(ValueError, match=r"nearest achievable budgets: \[16, 32\]"):
        comp(x, grid=(8, 8), budget=24)


def test_fixed_factors_refuse_other_budgets():
    x = _tokens((8, 8))
    comp = create_compressor("pixel_shuffle", dim=D, factors=(2, 2))
    assert comp(x, grid=(8, 8), budget=16).tokens.shape == (2, 16, D)
    with pytest.raises(ValueError, match="K=16"):
        comp(x, grid=(8, 8), budget=8)
    assert len(list(comp.parameters())) == 2  # built at construction: weight and bias


def test_needs_dim_and_out_dim_changes_width():
    with pytest.raises(ValueError, match="dim"):
        create_compressor("pixel_shuffle")
    x = _tokens((4, 4, 4))
    out = create_compressor("pixel_shuffle", dim=D, out_dim=5)(x, grid=(4, 4, 4), budget=8)
    assert out.tokens.shape == (2, 8, 5)
    # eye(5, 8)/R init: the first 5 channels of the group mean
    ref = x.reshape(2, 2, 2, 2, 2, 2, 2, D).mean(dim=(2, 4, 6)).reshape(2, 8, D)[..., :5]
    torch.testing.assert_close(out.tokens, ref, atol=1e-5, rtol=1e-5)


def test_training_moves_beyond_pooling():
    grid = (4, 4)
    x = _tokens(grid)
    target = torch.randn(2, 4, D, generator=torch.Generator().manual_seed(5))
    comp = create_compressor("pixel_shuffle", dim=D, factors=(2, 2))
    opt = torch.optim.SGD(comp.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        loss = (comp(x, grid=grid, budget=4).tokens - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
