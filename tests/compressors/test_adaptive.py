"""Adaptive budget: per-sample k_i follows input complexity; padded outputs are masked."""

from __future__ import annotations

import math

import pytest
import torch

from medvtc.common.compressors import create_compressor
from medvtc.common.compressors.adaptive import spectral_entropy

D = 32


def make(**kw):
    return create_compressor("adaptive", **kw)


def flat_and_rich(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    flat = torch.randn(1, 1, D, generator=g).expand(1, n, D) + 0.01 * torch.randn(1, n, D, generator=g)
    rich = torch.randn(1, n, D, generator=g)
    return torch.cat([flat, rich])


def test_simple_input_gets_fewer_tokens_than_rich():
    comp = make(min_ratio=0.25)
    x = flat_and_rich()
    out = comp(x, grid=(8, 8), budget=16)
    k = out.mask.sum(1)
    assert out.tokens.shape == (2, 16, D) and out.mask.shape == (2, 16)
    assert int(k[0]) < int(k[1])
    assert int(k[0]) == 4  # min_ratio * K for a constant image
    assert int(k[1]) >= 12
    assert torch.equal(k, comp.budgets(x, 16))


def test_budget_is_monotone_in_richness():
    comp = make()
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 1, D, generator=g).expand(1, 64, D)
    noise = torch.randn(1, 64, D, generator=g)
    ks = [int(comp.budgets(base + a * noise, 32)) for a in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert ks == sorted(ks) and ks[0] < ks[-1]


def test_outputs_mask_index_and_padding():
    comp = make()
    x = flat_and_rich(seed=3)
    out = comp(x, grid=(8, 8), budget=20)
    for b in range(2):
        k = int(out.mask[b].sum())
        assert torch.all(out.mask[b, :k]) and not torch.any(out.mask[b, k:])  # real first
        real = out.index[b, :k]
        assert torch.all(real[1:] > real[:-1])  # distinct, in source order
        torch.testing.assert_close(out.tokens[b, :k], x[b, real])
        assert torch.all(out.tokens[b, k:] == 0) and torch.all(out.size[b, k:] == 0)
        assert torch.all(out.size[b, :k] == 1)


def test_spectral_entropy_range():
    x = flat_and_rich()
    e = spectral_entropy(x)
    assert e[0] < 0.05 and e[1] > 0.7
    two = torch.zeros(1, 64, D)
    two[0, :32, 0] = 1
    two[0, 32:, 1] = 1
    assert math.isclose(float(spectral_entropy(two)), math.log(2) / math.log(D), rel_tol=1e-4)


def test_min_ratio_one_gives_the_full_budget_and_scores_drive_selection():
    comp = make(min_ratio=1.0, bits=0)
    x = flat_and_rich()
    scores = torch.rand(2, 64)
    out = comp(x, grid=(8, 8), budget=10, scores=scores)
    assert torch.all(out.mask)
    assert torch.equal(out.index, scores.topk(10, dim=1).indices.sort(1).values)


def test_selection_spreads_over_distinct_content():
    """Pure saliency would take only the rarer, more salient cluster; the buckets take both."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(D, generator=g), torch.randn(D, generator=g)
    x = torch.cat([a.expand(48, D), b.expand(16, D)]) + 0.01 * torch.randn(64, D, generator=g)
    x = x.unsqueeze(0)
    scores = torch.cat([torch.zeros(48), torch.ones(16)]).unsqueeze(0) + 0.01 * torch.rand(1, 64, generator=g)
    out = make(min_ratio=1.0, bits=3)(x, grid=(8, 8), budget=8, scores=scores)
    from_a = int((out.index < 48).sum())
    assert 2 <= from_a <= 6
    pure = make(min_ratio=1.0, bits=0)(x, grid=(8, 8), budget=8, scores=scores)
    assert int((pure.index < 48).sum()) == 0


def test_large_batch_is_per_sample():
    comp = make()
    x = flat_and_rich()
    alone = comp(x[:1], grid=(8, 8), budget=16)
    together = comp(x, grid=(8, 8), budget=16)
    assert torch.equal(alone.mask[0], together.mask[0]) and torch.equal(alone.index[0], together.index[0])


def test_bad_arguments():
    for kw in ({"min_ratio": 0.0}, {"alpha": 2.0}, {"complexity_range": (0.5, 0.5)}, {"bits": 20}):
        with pytest.raises(ValueError):
            make(**kw)
