"""Grid pooling: equals torch's pooling, honours K exactly, reports achievable budgets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medvtc.common.compressors import create_compressor
from medvtc.common.compressors.pooling import _windows


def _tokens(grid, b=2, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, math.prod(grid), d, generator=g, dtype=torch.float64)


def _spatial(x, grid):
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


def test_equals_avg_pool2d_on_divisible_grid():
    x = _tokens((8, 8))
    out = create_compressor("pooling")(x, grid=(8, 8), budget=16)
    ref = F.avg_pool2d(_spatial(x, (8, 8)), 2).flatten(2).transpose(1, 2)
    assert out.grid == (4, 4)
    torch.testing.assert_close(out.tokens, ref)
    assert torch.equal(out.size, torch.full((2, 16), 4.0, dtype=x.dtype))


def test_equals_avg_pool3d_on_divisible_volume():
    grid = (4, 4, 8)
    x = _tokens(grid)
    out = create_compressor("pooling")(x, grid=grid, budget=16)
    ref = F.avg_pool3d(_spatial(x, grid), 2).flatten(2).transpose(1, 2)
    assert out.grid == (2, 2, 4)
    torch.testing.assert_close(out.tokens, ref)
    # keep-ratio budgets resolve to the same K
    out2 = create_compressor("pooling")(x, grid=grid, budget=0.125)
    torch.testing.assert_close(out2.tokens, ref)


def test_non_divisible_grid_matches_explicit_window_means():
    grid = (5, 7)
    x = _tokens(grid, b=1, d=3)
    comp = create_compressor("pooling", return_assign=True)
    out = comp(x, grid=grid, budget=6)
    assert out.tokens.shape == (1, 6, 3) and math.prod(out.grid) == 6
    oh, ow = out.grid
    xs = _spatial(x, grid)[0]
    c = 0
    for i in range(oh):  # loop reference: torch's adaptive window rule, written out
        h0, h1 = (i * 5) // oh, -((-(i + 1) * 5) // oh)
        for j in range(ow):
            w0, w1 = (j * 7) // ow, -((-(j + 1) * 7) // ow)
            torch.testing.assert_close(out.tokens[0, c], xs[:, h0:h1, w0:w1].mean(dim=(1, 2)))
            assert out.size[0, c] == (h1 - h0) * (w1 - w0)
            assert out.index[0, c] == ((h0 + h1 - 1) // 2) * 7 + (w0 + w1 - 1) // 2
            c += 1
    # the soft assignment reproduces the output and its rows sum to 1
    assert out.assign.shape == (1, 6, 35)
    torch.testing.assert_close(out.assign.sum(-1), torch.ones(1, 6, dtype=x.dtype))
    torch.testing.assert_close(out.assign @ x, out.tokens)


def test_windows_helper_matches_adaptive_pool():
    for n_in, n_out in [(7, 3), (5, 2), (16, 16), (9, 4)]:
        s, e = _windows(n_in, n_out, torch.device("cpu"))
        x = torch.arange(n_in, dtype=torch.float64).view(1, 1, n_in)
        ref = F.adaptive_avg_pool1d(x, n_out)[0, 0]
        mine = torch.stack([x[0, 0, a:b].mean() for a, b in zip(s.tolist(), e.tolist())])
        torch.testing.assert_close(mine, ref)


def test_impossible_budget_names_nearest_achievable():
    x = _tokens((4, 4))
    with pytest.raises(ValueError, match=r"nearest achievable budgets: \[6, 8\]"):
        create_compressor("pooling")(x, grid=(4, 4), budget=7)
    x3 = _tokens((4, 4, 4))
    with pytest.raises(ValueError, match=r"budget K=13.*\[12, 16\]"):
        create_compressor("pooling")(x3, grid=(4, 4, 4), budget=13)


def test_needs_a_2d_or_3d_grid():
    x = _tokens((4, 4))
    comp = create_compressor("pooling")
    with pytest.raises(ValueError, match="grid"):
        comp(x, grid=None, budget=4)
    with pytest.raises(ValueError, match="rank"):
        comp(x, grid=(16,), budget=4)


def test_gradient_reaches_tokens():
    x = _tokens((6, 6)).float().requires_grad_(True)
    out = create_compressor("pooling")(x, grid=(6, 6), budget=9)
    out.tokens.sum().backward()
    # every token is in exactly one 2x2 window: d(sum of means)/dx = 1/4
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.25))
