"""Matryoshka query transformer: the first m outputs do not depend on the later queries."""

from __future__ import annotations

import pytest
import torch

from medvtc.common.compressors import create_compressor

D = 32


def make(**kw):
    torch.manual_seed(0)
    return create_compressor("matryoshka", dim=D, num_queries=24, **kw).eval()


@pytest.mark.parametrize("kw", [{}, {"depth": 2, "causal_self_attention": True}])
@pytest.mark.parametrize("grid", [(8, 8), (2, 4, 8)])
def test_first_m_identical_for_m_and_M(kw, grid):
    comp = make(**kw)
    x = torch.randn(2, 64, D)
    full = comp(x, grid=grid, budget=24).tokens
    for m in (1, 5, 23):
        part = comp(x, grid=grid, budget=m).tokens
        assert part.shape == (2, m, D)
        torch.testing.assert_close(part, full[:, :m], atol=1e-6, rtol=1e-5)


def test_self_attention_is_causal_not_bidirectional():
    """Changing a later query must leave earlier outputs untouched but change its own."""
    comp = make(depth=2, causal_self_attention=True)
    x = torch.randn(1, 64, D)
    before = comp(x, grid=(8, 8), budget=24).tokens
    with torch.no_grad():
        comp.queries[10] += torch.randn(D)
    after = comp(x, grid=(8, 8), budget=24).tokens
    torch.testing.assert_close(after[:, :10], before[:, :10])
    assert (after[:, 10:] - before[:, 10:]).abs().max() > 1e-4


def test_only_used_queries_get_gradient():
    comp = make().train()
    out = comp(torch.randn(2, 64, D), grid=(8, 8), budget=6)
    out.tokens.pow(2).mean().backward()
    g = comp.queries.grad
    assert g[:6].abs().sum() > 0
    assert torch.all(g[6:] == 0)


def test_output_depends_on_tokens():
    comp = make()
    x = torch.randn(1, 64, D)
    a = comp(x, grid=(8, 8), budget=4).tokens
    b = comp(x.flip(1), grid=(8, 8), budget=4).tokens
    assert (a - b).abs().max() > 1e-4


def test_sample_budget():
    comp = make(budget_choices=(2, 4, 8, 16))
    draws = {comp.sample_budget(torch.Generator().manual_seed(s)) for s in range(40)}
    assert draws == {2, 4, 8, 16}
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [comp.sample_budget(g1) for _ in range(5)] == [comp.sample_budget(g2) for _ in range(5)]
    assert 1 <= make().sample_budget() <= 24
    with pytest.raises(ValueError, match="budget_choices"):
        create_compressor("matryoshka", dim=D, num_queries=8, budget_choices=(4, 9))


def test_budget_above_num_queries_is_an_error():
    with pytest.raises(ValueError, match="budget"):
        make()(torch.randn(1, 64, D), grid=(8, 8), budget=25)


def test_chunked_equals_full():
    comp = make(depth=2)
    x = torch.randn(2, 48, D)
    full = comp(x, grid=(4, 12), budget=7).tokens
    comp.chunk_tokens = 10
    torch.testing.assert_close(comp(x, grid=(4, 12), budget=7).tokens, full, atol=1e-5, rtol=1e-4)


def test_cost_scales_with_m():
    cls = type(make())
    assert cls.cost(4096, 8, D) < cls.cost(4096, 64, D)


def test_measured_flops_match_the_documented_cost():
    from medvtc.common.accounting import module_flops

    comp = make()
    x = torch.randn(1, 128, D)
    for m in (4, 24):
        assert module_flops(comp, x, grid=(8, 16), budget=m) == type(comp).cost(128, m, D)
