"""Identity: every token, unchanged, in order; any budget other than N is refused."""

from __future__ import annotations

import pytest
import torch

from medvtc.common.compressors import create_compressor


def test_keeps_every_token_unchanged_in_order():
    x = torch.randn(2, 12, 4)
    for budget in (1.0, 12, None):  # None: the constructor's 1.0
        out = create_compressor("identity")(x, grid=(3, 4), budget=budget)
        assert out.tokens is x
        assert torch.equal(out.index, torch.arange(12).expand(2, 12))
        assert torch.equal(out.size, torch.ones(2, 12)) and out.grid == (3, 4)


@pytest.mark.parametrize("budget", [11, 0.5])
def test_refuses_a_budget_below_n(budget):
    with pytest.raises(ValueError, match="identity keeps all N=12 tokens"):
        create_compressor("identity")(torch.randn(1, 12, 4), budget=budget)


def test_costs_nothing():
    assert create_compressor("identity").cost(4096, 4096, 768) == 0.0
    assert not list(create_compressor("identity").parameters())
