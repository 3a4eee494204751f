"""Perceiver resampler: position-aware, input-dependent, first-K slicing, chunked attention."""

from __future__ import annotations

import pytest
import torch

from medvtc.common.compressors import create_compressor
from medvtc.common.compressors.perceiver import chunked_attention
from medvtc.common.compressors.utils import sinusoidal_positions as sincos_positions

D = 32


def make(**kw):
    torch.manual_seed(0)
    return create_compressor("perceiver", dim=D, **kw).eval()


def test_output_depends_on_tokens_and_positions():
    comp = make()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 64, D, generator=g)
    a = comp(x, grid=(8, 8), budget=8).tokens
    b = comp(x + 0.5 * torch.randn(2, 64, D, generator=g), grid=(8, 8), budget=8).tokens
    assert a.shape == (2, 8, D)
    assert (a - b).abs().max() > 1e-3
    # a plain perceiver is permutation invariant; the grid encoding makes it position aware
    perm = torch.randperm(64, generator=g)
    c = comp(x[:, perm], grid=(8, 8), budget=8).tokens
    assert (a - c).abs().max() > 1e-4
    # ... and the same tokens on a different layout give a different result
    d = comp(x, grid=(4, 16), budget=8).tokens
    assert (a - d).abs().max() > 1e-4


def test_first_k_slicing():
    comp = make(num_latents=16)
    x = torch.randn(2, 64, D)
    full = comp(x, grid=(4, 4, 4), budget=16).tokens
    part = comp(x, grid=(4, 4, 4), budget=5).tokens
    torch.testing.assert_close(part, full[:, :5])


def test_budget_above_num_latents_is_an_error():
    comp = make(num_latents=8)
    with pytest.raises(ValueError, match="budget"):
        comp(torch.randn(1, 64, D), grid=(8, 8), budget=9)
    with pytest.raises(ValueError, match="dim"):
        comp(torch.randn(1, 64, D + 8), grid=(8, 8), budget=4)
    with pytest.raises(ValueError):
        create_compressor("perceiver", dim=30, heads=8)


def test_chunked_attention_matches_full_and_runs_in_chunks():
    comp = make()
    x = torch.randn(3, 60, D)
    full = comp(x, grid=(3, 4, 5), budget=10).tokens
    comp.chunk_tokens = 7  # 2 rows per chunk at B=3: 30 chunks plus the latents
    chunked = comp(x, grid=(3, 4, 5), budget=10).tokens
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-4)


def test_chunked_attention_helper_against_softmax_reference():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 16, generator=g) for n in (3, 50, 50))
    extra = (torch.randn(2, 4, 16, generator=g), torch.randn(2, 4, 16, generator=g))
    kk, vv = torch.cat([k, extra[0]], 1), torch.cat([v, extra[1]], 1)
    heads = 4
    qh, kh, vh = (t.view(2, -1, heads, 4).transpose(1, 2) for t in (q, kk, vv))
    ref = torch.softmax(qh @ kh.transpose(-1, -2) / 2.0, dim=-1) @ vh
    ref = ref.transpose(1, 2).reshape(2, 3, 16)
    for chunk in (1000, 9):
        out = chunked_attention(q, lambda s, e: (k[:, s:e], v[:, s:e]), 50, heads, extra, chunk)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_sincos_positions_distinct_and_bounded():
    for grid in ((8, 8), (2, 4, 8), (10,)):
        pe = sincos_positions(grid, 30)
        n = torch.tensor(grid).prod().item()
        assert pe.shape == (n, 30)
        assert pe.abs().max() <= 1.0
        assert torch.unique(pe, dim=0).shape[0] == n


def test_gradient_reaches_latents_in_train_mode():
    comp = make().train()
    out = comp(torch.randn(2, 27, D), grid=(3, 3, 3), budget=4)
    out.tokens.pow(2).mean().backward()
    assert comp.latents.grad is not None and comp.latents.grad.abs().sum() > 0


def test_cost_grows_with_n():
    cls = type(make())
    assert 0 < cls.cost(64, 8, D) < cls.cost(4096, 8, D)


def test_measured_flops_match_the_documented_cost():
    """Attention is plain matmuls, so torch's FLOP counter sees it (it counts no CPU SDPA)."""
    from medvtc.common.accounting import module_flops

    comp = make(num_latents=16, depth=2)
    x = torch.randn(1, 128, D)
    measured = module_flops(comp, x, grid=(4, 4, 8), budget=16)
    assert measured == type(comp).cost(128, 16, D, num_latents=16, depth=2)
