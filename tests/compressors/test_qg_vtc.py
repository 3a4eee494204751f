"""QG-VTC: the question decides which tokens are kept; the rest is a relevance-weighted merge."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medvtc.common.compressors import create_compressor
from medvtc.common.compressors.qg_vtc import QGVTC

D = 16


def identity_qg(**kw) -> QGVTC:
    comp = QGVTC(dim=D, text_dim=D, **kw)
    with torch.no_grad():
        comp.proj.weight.copy_(torch.eye(D))
        comp.proj.bias.zero_()
    return comp.eval()


def tokens_and_grid(grid, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, math.prod(grid), D, generator=g)


@pytest.mark.parametrize("grid", [(8, 8), (4, 4, 4)])
def test_different_questions_keep_different_tokens(grid):
    x = tokens_and_grid(grid)
    n = x.shape[1]
    a_ids, b_ids = [0, 1, 2, 3], [n - 4, n - 3, n - 2, n - 1]
    text_a, text_b = x[:, a_ids], x[:, b_ids]  # questions "about" two disjoint token sets
    comp = identity_qg(num_merged=2)
    out_a = comp(x, grid=grid, budget=8, text=text_a)
    out_b = comp(x, grid=grid, budget=8, text=text_b)
    for bi in range(2):
        kept_a = set(out_a.index[bi, :6].tolist())
        kept_b = set(out_b.index[bi, :6].tolist())
        assert set(a_ids) <= kept_a and set(b_ids) <= kept_b
        assert kept_a != kept_b
    assert out_a.tokens.shape == (2, 8, D)
    # kept tokens are the input tokens themselves (the relevance gate is straight-through)
    torch.testing.assert_close(out_a.tokens[:, :6], torch.gather(x, 1, out_a.index[:, :6, None].expand(-1, -1, D)))


def test_text_mask_excludes_padding():
    x = tokens_and_grid((8, 8))
    comp = identity_qg(num_merged=0)
    text = torch.cat([x[:, :3], x[:, 60:63]], dim=1)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]] * 2)
    masked = comp(x, budget=3, text=text, text_mask=mask)
    only_real = comp(x, budget=3, text=x[:, :3])
    assert torch.equal(masked.index, only_real.index)
    assert torch.equal(masked.index[0], torch.tensor([0, 1, 2]))


def test_merged_tokens_are_softmax_weighted_group_means():
    x = tokens_and_grid((4, 4), seed=3)
    text = torch.randn(2, 3, D, generator=torch.Generator().manual_seed(4))
    comp = identity_qg(num_merged=2, temperature=0.5)
    out = comp(x, budget=6, text=text)
    rel = comp.relevance(x, text, None)
    for bi in range(2):
        order = rel[bi].argsort(descending=True, stable=True)
        kept, rest = order[:4], order[4:]
        assert set(out.index[bi, :4].tolist()) == set(kept.tolist())
        seeds = rest[:2]
        assert out.index[bi, 4:].tolist() == seeds.tolist()
        sim = F.normalize(x[bi, rest], dim=-1) @ F.normalize(x[bi, seeds], dim=-1).T
        group = sim.argmax(dim=1)
        group[:2] = torch.tensor([0, 1])
        for gi in range(2):
            members = rest[group == gi]
            w = torch.softmax(rel[bi, members] / 0.5, dim=0)
            expected = (w.unsqueeze(-1) * x[bi, members]).sum(0)
            torch.testing.assert_close(out.tokens[bi, 4 + gi], expected, atol=1e-5, rtol=1e-5)
            assert float(out.size[bi, 4 + gi]) == len(members)
    assert float(out.size.sum()) == 2 * 16  # every token is kept or merged exactly once


def test_gradient_reaches_projection_through_a_downstream_loss():
    x = tokens_and_grid((4, 4, 4))
    text = torch.randn(2, 5, 24)
    comp = create_compressor("qg_vtc", dim=D, text_dim=24, num_merged=0)  # kept tokens only: the gate path
    out = comp(x, grid=(4, 4, 4), budget=10, text=text)
    (out.tokens.sum(dim=-1) ** 2).mean().backward()
    assert comp.proj.weight.grad is not None and float(comp.proj.weight.grad.abs().sum()) > 0


def test_budget_edges_and_arguments():
    x = tokens_and_grid((4, 4))
    text = torch.randn(2, 2, D)
    comp = identity_qg(num_merged=4)
    assert comp(x, budget=1, text=text).tokens.shape == (2, 1, D)  # no room to merge: keep 1
    full = comp(x, budget=16, text=text)
    assert torch.equal(full.index.sort(dim=1).values, torch.arange(16).expand(2, 16))
    with pytest.raises(ValueError, match="text"):
        comp(x, budget=4)
    with pytest.raises(ValueError, match="text_dim"):
        comp(x, budget=4, text=torch.randn(2, 2, D + 1))
    with pytest.raises(ValueError, match="reduce"):
        QGVTC(dim=D, reduce="sum")
    with pytest.raises(ValueError, match="num_merged"):
        QGVTC(dim=D, num_merged=-1)


def test_mean_reduce_keeps_the_tokens_both_questions_share():
    x = tokens_and_grid((8, 8))
    shared = x[:, :2].sum(dim=1, keepdim=True)  # a token close to both text tokens
    x = torch.cat([x, shared], dim=1)
    text = x[:, :2]
    mean_out = identity_qg(reduce="mean", num_merged=0)(x, budget=1, text=text)
    max_out = identity_qg(reduce="max", num_merged=0)(x, budget=1, text=text)
    assert (mean_out.index[:, 0] == 64).all()  # best on average over the question
    assert (max_out.index[:, 0] != 64).all()  # max picks a token equal to one text token
