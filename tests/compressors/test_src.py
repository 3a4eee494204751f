"""SRC: one token per window, query = window mean + instruction MLP, attention inside the window."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medvtc.common.compressors import create_compressor, utils
from medvtc.common.compressors.src import (
    SpatialRefinementCompressor,
    choose_windows,
    window_view,
)

D, DT = 32, 24


def make(seed=0, **kw) -> SpatialRefinementCompressor:
    torch.manual_seed(seed)
    return create_compressor("src", dim=D, text_dim=DT, **kw).eval()


def data(grid, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, math.prod(grid), D, generator=g)
    t1 = torch.randn(batch, 5, DT, generator=g)
    t2 = torch.randn(batch, 5, DT, generator=g)
    return x, t1, t2


def pooled(x, grid, win):
    spatial = utils.to_spatial(x, grid)
    pool = F.avg_pool2d if len(grid) == 2 else F.avg_pool3d
    return utils.from_spatial(pool(spatial, kernel_size=win, stride=win))


@pytest.mark.parametrize("grid,budget,win", [((8, 8), None, (2, 2)), ((4, 4, 4), None, (2, 2, 2)),
                                             ((8, 8), 8, (2, 4)), ((4, 6, 8), 12, (2, 2, 4)),
                                             ((2, 4, 8), 16, (1, 2, 2))])
@torch.no_grad()
def test_uniform_attention_is_the_window_mean(grid, budget, win):
    comp = make()
    comp.k_proj.weight.zero_()
    comp.k_proj.bias.zero_()
    x, t1, _ = data(grid)
    out = comp(x, grid=grid, budget=budget, text=t1)
    expected, out_grid = pooled(x, grid, win)
    assert out.grid == out_grid and out.tokens.shape == expected.shape
    torch.testing.assert_close(out.tokens, expected, atol=1e-6, rtol=1e-5)
    assert (out.size == math.prod(win)).all()


@torch.no_grad()
def test_output_is_a_convex_combination_of_its_window():
    """Sharp attention (large key weights) still stays inside each window's convex hull, and the
    representative index lies in the right window."""
    grid = (4, 4, 4)
    comp = make()
    comp.k_proj.weight.mul_(50.0)
    x, t1, _ = data(grid)
    out = comp(x, grid=grid, text=t1)
    xw = window_view(x, grid, (2, 2, 2))  # [B, 8, 8, D]
    assert (out.tokens <= xw.amax(dim=2) + 1e-5).all() and (out.tokens >= xw.amin(dim=2) - 1e-5).all()
    ids = window_view(torch.arange(64).view(1, 64, 1), grid, (2, 2, 2))[0, :, :, 0]
    for m in range(8):
        assert set(out.index[:, m].tolist()) <= set(ids[m].tolist())


@pytest.mark.parametrize("grid", [(8, 8), (4, 4, 4)])
@torch.no_grad()
def test_different_instructions_change_the_output(grid):
    comp = make()
    x, t1, t2 = data(grid)
    a = comp(x, grid=grid, text=t1)
    b = comp(x, grid=grid, text=t2)
    assert float((a.tokens - b.tokens).abs().max()) > 1e-3
    comp.text_mlp[-1].weight.zero_()  # the instruction acts through the MLP only
    a = comp(x, grid=grid, text=t1)
    b = comp(x, grid=grid, text=t2)
    torch.testing.assert_close(a.tokens, b.tokens)


@torch.no_grad()
def test_query_is_window_mean_plus_instruction_mlp():
    """Attention depends on q = mean(window) + MLP(pooled text): check the logits by hand."""
    grid = (4, 4)
    comp = make(num_heads=1)
    x, t1, _ = data(grid, batch=1)
    mask = torch.tensor([[1, 1, 0, 0, 0]])
    out = comp(x, grid=grid, text=t1, text_mask=mask)
    xw = window_view(x, grid, (2, 2))[0]  # [4, 4, D]
    q = xw.mean(dim=1) + comp.text_mlp(t1[0, :2].mean(dim=0))
    logits = torch.einsum("md,mwd->mw", comp.q_proj(comp.norm_q(q)), comp.k_proj(comp.norm_k(xw))) / math.sqrt(D)
    expected = torch.einsum("mw,mwd->md", logits.softmax(-1), xw)
    torch.testing.assert_close(out.tokens[0], expected, atol=1e-5, rtol=1e-5)


def test_window_choice_and_impossible_budgets():
    assert choose_windows((8, 8), 16, 2) == (2, 2)
    assert choose_windows((4, 4, 4), 8, 2) == (2, 2, 2)
    assert choose_windows((4, 4, 4), 16, 2) == (1, 2, 2)
    assert choose_windows((8, 8), 4, 2) == (4, 4)
    assert choose_windows((7, 7), 5, 2) is None
    comp = make()
    x, t1, _ = data((7, 7))
    with pytest.raises(ValueError, match=r"achievable budgets nearest to K: \[1, 7\]"):
        comp(x, grid=(7, 7), budget=5, text=t1)
    with pytest.raises(ValueError, match="budget"):
        comp(x, grid=(7, 7), text=t1)  # 2 does not divide 7: no default budget
    with pytest.raises(ValueError, match="grid"):
        comp(torch.randn(1, 16, D), text=t1[:1], budget=4)  # needs a grid
    with pytest.raises(ValueError, match="rank"):
        comp(torch.randn(1, 16, D), grid=(16,), text=t1[:1], budget=4)


def test_gradients_reach_every_parameter():
    comp = make().train()
    x, t1, _ = data((4, 4, 4))
    comp(x, grid=(4, 4, 4), budget=16, text=t1).tokens.pow(2).mean().backward()
    for name, p in comp.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
