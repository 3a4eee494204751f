"""Random selection: K distinct tokens in source order, uniform over positions, repeatable."""

from __future__ import annotations

import torch

from medvtc.common.compressors import create_compressor


def test_keeps_k_distinct_tokens_in_source_order():
    x = torch.randn(3, 50, 4)
    out = create_compressor("random")(x, budget=10)
    assert out.tokens.shape == (3, 10, 4) and out.index.shape == (3, 10)
    for b in range(3):
        idx = out.index[b]
        assert len(set(idx.tolist())) == 10 and torch.equal(idx, idx.sort().values)
        assert torch.equal(out.tokens[b], x[b, idx])
    assert torch.equal(out.size, torch.ones(3, 10))


def test_seed_makes_it_repeatable_and_samples_differ():
    x = torch.randn(2, 40, 4)
    a = create_compressor("random", seed=5)(x, budget=8).index
    b = create_compressor("random", seed=5)(x, budget=8).index
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # one draw per sample, not one for the batch


def test_every_position_is_equally_likely():
    x = torch.zeros(1, 20, 2)
    torch.manual_seed(0)
    counts = torch.zeros(20)
    comp = create_compressor("random")
    for _ in range(2000):
        counts[comp(x, budget=5).index[0]] += 1
    # 2000 draws of 5 of 20: 500 per position expected; binomial sd ~ 19
    assert (counts - 500).abs().max() < 100
