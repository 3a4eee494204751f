"""TokenPacker: pooled point queries, injection restricted to each point's own region."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medvtc.common.compressors import create_compressor, utils
from medvtc.common.compressors.tokenpacker import region_map

D = 32
POOL = {2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def make(**kw):
    torch.manual_seed(0)
    return create_compressor("tokenpacker", dim=D, **kw).eval()


def pooled(x, grid, out_grid):
    return utils.from_spatial(POOL[len(grid)](utils.to_spatial(x, grid), out_grid))[0]


def zero_injection(comp):
    with torch.no_grad():
        comp.to_out.weight.zero_()
        comp.to_out.bias.zero_()
        comp.ff[-1].weight.zero_()
        comp.ff[-1].bias.zero_()


@pytest.mark.parametrize("grid,k", [((8, 8), 16), ((5, 7), 6), ((4, 4, 4), 8), ((3, 5, 7), 12)])
def test_zero_injection_gives_the_pooled_point_queries(grid, k):
    comp = make()
    zero_injection(comp)
    x = torch.randn(2, math.prod(grid), D)
    out = comp(x, grid=grid, budget=k)
    assert out.grid == utils.factor_grid(grid, k) and math.prod(out.grid) == k
    torch.testing.assert_close(out.tokens, pooled(x, grid, out.grid))


@pytest.mark.parametrize("grid,out_grid", [((5, 7), (2, 3)), ((8, 8), (4, 4)), ((3, 5, 7), (2, 2, 3))])
def test_region_map_is_the_adaptive_pooling_window(grid, out_grid):
    idx, valid = region_map(grid, out_grid)
    x = torch.randn(1, math.prod(grid), 3)
    region = x[:, idx] * valid[None, :, :, None]
    mean = region.sum(2) / valid.sum(1)[None, :, None]
    torch.testing.assert_close(mean, pooled(x, grid, out_grid))
    # every input cell belongs to at least one region
    assert torch.unique(idx[valid]).numel() == math.prod(grid)


@pytest.mark.parametrize("grid,k", [((8, 8), 16), ((5, 7), 6), ((4, 4, 4), 8)])
def test_injection_only_reads_the_own_region(grid, k):
    comp = make()
    n = math.prod(grid)
    x = torch.randn(1, n, D)
    base = comp(x, grid=grid, budget=k)
    idx, valid = region_map(grid, base.grid)
    inside = torch.zeros(n, dtype=torch.bool)
    inside[idx[0][valid[0]]] = True
    y = x.clone()
    y[:, ~inside] += torch.randn(1, int((~inside).sum()), D)
    out = comp(y, grid=grid, budget=k)
    torch.testing.assert_close(out.tokens[:, 0], base.tokens[:, 0])
    assert (out.tokens[:, 1:] - base.tokens[:, 1:]).abs().max() > 1e-3
    z = x.clone()
    z[:, idx[0, 0]] += 3.0 * torch.randn(D)  # a cell of point 0's region
    assert (comp(z, grid=grid, budget=k).tokens[:, 0] - base.tokens[:, 0]).abs().max() > 1e-3


def test_injection_changes_the_pooled_queries():
    comp = make()
    x = torch.randn(1, 64, D)
    out = comp(x, grid=(8, 8), budget=16)
    assert (out.tokens - pooled(x, (8, 8), (4, 4))).abs().max() > 1e-3


def test_index_size_and_chunking():
    comp = make()
    x = torch.randn(2, 64, D)
    out = comp(x, grid=(8, 8), budget=16)
    assert torch.all(out.size == 4) and out.size.sum(1).eq(64).all()
    # centre token of each 2x2 region lies in that region
    idx, valid = region_map((8, 8), (4, 4))
    assert torch.all((idx == out.index[0][:, None]).any(1))
    comp.chunk_tokens = 9  # one region per chunk at B=2
    torch.testing.assert_close(comp(x, grid=(8, 8), budget=16).tokens, out.tokens, atol=1e-5, rtol=1e-4)


def test_budgets_that_cannot_be_laid_out_name_the_achievable_ones():
    comp = make()
    with pytest.raises(ValueError, match=r"budget K=11.*\[10, 12\]"):
        comp(torch.randn(1, 64, D), grid=(8, 8), budget=11)
    with pytest.raises(ValueError, match="grid"):
        comp(torch.randn(1, 64, D), grid=None, budget=4)


def test_cost_positive():
    assert type(make()).cost(4096, 400, 768) > 4 * 4096 * 768 * 768
