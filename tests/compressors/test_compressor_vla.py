"""Compressor-VLA: STC tokens then SRC tokens, the instruction steering both."""

from __future__ import annotations

import math

import pytest
import torch

from medvtc.common.compressors import COMPRESSORS, create_compressor
from medvtc.common.compressors.compressor_vla import CompressorVLA

D, DT = 32, 24


def make(seed=0, **kw) -> CompressorVLA:
    torch.manual_seed(seed)
    return create_compressor("compressor_vla", dim=D, text_dim=DT, **kw).eval()


def data(grid, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, math.prod(grid), D, generator=g)
    t1 = torch.randn(batch, 5, DT, generator=g)
    t2 = torch.randn(batch, 5, DT, generator=g)
    return x, t1, t2


@pytest.mark.parametrize("grid,budget,split", [((16, 16), None, (16, 64)), ((8, 8), 20, (4, 16)),
                                               ((4, 4, 4), 12, (4, 8)), ((2, 4, 8), None, (16, 8))])
@torch.no_grad()
def test_concatenates_stc_then_src(grid, budget, split):
    comp = make()
    x, t1, _ = data(grid)
    out = comp(x, grid=grid, budget=budget, text=t1)
    k_stc, k_src = split
    assert out.tokens.shape == (2, k_stc + k_src, D)
    assert comp.last_split[:2] == split
    stc = comp.stc(x, grid=grid, budget=k_stc, text=t1)
    src = comp.src(x, grid=grid, budget=k_src, text=t1)
    torch.testing.assert_close(out.tokens[:, :k_stc], stc.tokens)
    torch.testing.assert_close(out.tokens[:, k_stc:], src.tokens)


@torch.no_grad()
def test_paper_configuration_two_cameras_give_160_tokens():
    comp = make()
    cams = [data((16, 16), seed=s)[0] for s in (1, 2)]
    text = data((16, 16))[1]
    tokens = torch.cat([comp(c, grid=(16, 16), text=text).tokens for c in cams], dim=1)
    assert tokens.shape == (2, 160, D)


@pytest.mark.parametrize("grid", [(8, 8), (4, 4, 4)])
@torch.no_grad()
def test_instruction_changes_both_parts(grid):
    comp = make()
    x, t1, t2 = data(grid)
    n = math.prod(grid)
    k = n // 2 ** len(grid) + 8
    a = comp(x, grid=grid, budget=k, text=t1).tokens
    b = comp(x, grid=grid, budget=k, text=t2).tokens
    assert float((a[:, :8] - b[:, :8]).abs().max()) > 1e-2  # STC
    assert float((a[:, 8:] - b[:, 8:]).abs().max()) > 1e-3  # SRC


@torch.no_grad()
def test_no_instruction_ablation_ignores_text():
    grid = (8, 8)
    x, t1, t2 = data(grid)
    comp = make(use_instruction=False)
    none = comp(x, grid=grid, budget=24)
    a = comp(x, grid=grid, budget=24, text=t1)
    b = comp(x, grid=grid, budget=24, text=t2)
    torch.testing.assert_close(none.tokens, a.tokens)
    torch.testing.assert_close(a.tokens, b.tokens)
    # identity FiLM in STC: its tokens equal an STC whose FiLM outputs zeros
    comp.stc.film[-1].weight.zero_()
    comp.stc.film[-1].bias.zero_()
    stc = comp.stc(x, grid=grid, budget=8, text=t1)
    torch.testing.assert_close(a.tokens[:, :8], stc.tokens)
    with_text = make(use_instruction=True)
    with pytest.raises(ValueError, match="text"):
        with_text(x, grid=grid, budget=24)
    assert COMPRESSORS.get("compressor_vla").needs_text is False


def test_budget_splits_and_errors():
    comp = make()
    x, t1, _ = data((8, 8))
    out = comp(x, grid=(8, 8), budget=16, text=t1)  # default window would leave STC nothing
    assert out.tokens.shape == (2, 16, D) and comp.last_split == (8, 8, (2, 4))
    strict = make(strict=True)
    with pytest.raises(ValueError, match=r"budgets that work with the default 2-window SRC: \[17, 32\]"):
        strict(x, grid=(8, 8), budget=16, text=t1)
    with pytest.raises(ValueError, match=r"\[17, 32\]"):
        strict(x, grid=(8, 8), budget=40, text=t1)
    x7 = torch.randn(1, 49, D)
    with pytest.raises(ValueError, match=r"nearest budgets with any SRC window: \[23\]"):
        comp(x7, grid=(7, 7), budget=40, text=t1[:1])
    with pytest.raises(ValueError, match="grid"):
        comp(x, budget=20, text=t1)


def test_trains_end_to_end_both_parts():
    comp = make().train()
    x, t1, _ = data((4, 4, 4))
    comp(x, grid=(4, 4, 4), budget=12, text=t1).tokens.pow(2).mean().backward()
    for name in ("stc.queries", "stc.film.0.weight", "src.text_mlp.0.weight", "src.q_proj.weight"):
        grad = dict(comp.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
