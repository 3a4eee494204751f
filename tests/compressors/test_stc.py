"""STC: FiLM-modulated learnable queries; the instruction changes where the queries look."""

from __future__ import annotations

import math

import pytest
import torch

from medvtc.common.compressors import create_compressor
from medvtc.common.compressors.stc import SemanticTaskCompressor, sinusoidal_grid_features

D, DT = 32, 24


def make(seed=0, **kw) -> SemanticTaskCompressor:
    torch.manual_seed(seed)
    return create_compressor("stc", dim=D, text_dim=DT, **kw).eval()


def data(grid, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, math.prod(grid), D, generator=g)
    t1 = torch.randn(batch, 6, DT, generator=g)
    t2 = torch.randn(batch, 6, DT, generator=g)
    return x, t1, t2


@pytest.mark.parametrize("grid", [(8, 8), (4, 4, 4), (2, 4, 8)])
@pytest.mark.parametrize("pos_embed", [False, True])
def test_shapes_and_assign_rows_are_distributions(grid, pos_embed):
    comp = make(pos_embed=pos_embed)
    x, t1, _ = data(grid)
    out = comp(x, grid=grid, budget=12, text=t1)
    n = math.prod(grid)
    assert out.tokens.shape == (2, 12, D)
    assert out.assign.shape == (2, 12, n)
    torch.testing.assert_close(out.assign.sum(-1), torch.ones(2, 12))
    assert out.index is None and out.grid is None


def test_different_instructions_change_attention_and_outputs():
    comp = make()
    x, t1, t2 = data((8, 8))
    with torch.no_grad():
        a = comp(x, grid=(8, 8), budget=16, text=t1)
        b = comp(x, grid=(8, 8), budget=16, text=t2)
    assert float((a.assign - b.assign).abs().max()) > 1e-3
    assert float((a.tokens - b.tokens).abs().max()) > 1e-2


def test_instruction_acts_only_through_film():
    comp = make()
    with torch.no_grad():
        comp.film[-1].weight.zero_()
        comp.film[-1].bias.zero_()
    x, t1, t2 = data((4, 4, 4))
    a = comp(x, grid=(4, 4, 4), budget=8, text=t1)
    b = comp(x, grid=(4, 4, 4), budget=8, text=t2)
    torch.testing.assert_close(a.tokens, b.tokens)
    torch.testing.assert_close(a.assign, b.assign)


def test_film_formula():
    """With the attention and MLP branches zeroed, the output is q * (1 + gamma) + beta exactly."""
    comp = make()
    with torch.no_grad():
        comp.attn.out_proj.weight.zero_()
        comp.attn.out_proj.bias.zero_()
        comp.mlp[-1].weight.zero_()
        comp.mlp[-1].bias.zero_()
    x, t1, _ = data((8, 8))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[:, 4:] = 0
    out = comp(x, grid=(8, 8), budget=5, text=t1, text_mask=mask)
    pooled = t1[:, :4].mean(dim=1)
    gamma, beta = comp.film(pooled).chunk(2, dim=-1)
    expected = comp.queries[:5].unsqueeze(0) * (1 + gamma.unsqueeze(1)) + beta.unsqueeze(1)
    torch.testing.assert_close(out.tokens, expected)


def test_first_k_queries_and_budget_limit():
    comp = make(num_queries=16)
    x, t1, _ = data((8, 8))
    full = comp(x, grid=(8, 8), budget=16, text=t1)
    part = comp(x, grid=(8, 8), budget=4, text=t1)
    torch.testing.assert_close(part.tokens, full.tokens[:, :4])
    torch.testing.assert_close(part.assign, full.assign[:, :4])
    with pytest.raises(ValueError, match="num_queries"):
        comp(x, grid=(8, 8), budget=17, text=t1)
    with pytest.raises(ValueError, match="text"):
        comp(x, grid=(8, 8), budget=4)
    with pytest.raises(ValueError, match="num_heads"):
        SemanticTaskCompressor(dim=30, num_heads=8)


@torch.no_grad()
def test_positional_encoding_lets_queries_find_a_location():
    """Identical tokens everywhere: without positions attention is uniform; the (trained, here
    set by hand) positional map makes a query prefer one region of a 3D grid."""
    grid = (4, 4, 4)
    x = torch.ones(1, 64, D)
    t = torch.randn(1, 3, DT)
    plain = make(pos_embed=False)(x, grid=grid, budget=2, text=t)
    torch.testing.assert_close(plain.assign, torch.full((1, 2, 64), 1 / 64))
    comp = make(pos_embed=True)
    assert float(comp(x, grid=grid, budget=2, text=t).assign.std()) < 1e-6  # zero-initialised
    comp.pos_proj.weight.normal_(0, 1.0)
    out = comp(x, grid=grid, budget=2, text=t)
    assert float(out.assign.std()) > 1e-3
    feats = sinusoidal_grid_features(grid, 8)
    assert feats.shape == (64, 48) and len({tuple(r.tolist()) for r in feats}) == 64  # distinct cells


def test_gradient_reaches_queries_film_and_positions():
    comp = make(pos_embed=True).train()
    with torch.no_grad():
        comp.pos_proj.weight.normal_(0, 0.1)
    x, t1, _ = data((4, 4, 4))
    out = comp(x, grid=(4, 4, 4), budget=8, text=t1)
    out.tokens.pow(2).mean().backward()
    for name in ("queries", "film.0.weight", "pos_proj.weight", "attn.in_proj_weight"):
        grad = dict(comp.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
