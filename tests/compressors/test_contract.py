"""The contract every registered compressor must keep (DESIGN.md "The compressor contract").

Runs over the whole registry, so a new method is checked the moment its file exists.
Method-specific behaviour (reference equivalence, instruction sensitivity) lives in the
per-method test files.
"""

from __future__ import annotations

import math

import pytest
import torch

from medvtc.common.compressors import COMPRESSORS, create_compressor, list_compressors

D, DT, B = 32, 24, 2
GRIDS = {"2d": (8, 8), "3d": (4, 4, 4), "thw": (2, 4, 8)}
K = 16


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    comp = create_compressor(name, dim=D, text_dim=DT)
    return comp


def budget_for(name: str, n: int):
    return 1.0 if name == "identity" else K


def inputs(grid, seed=0, batch=B):
    g = torch.Generator().manual_seed(seed)
    n = math.prod(grid)
    tokens = torch.randn(batch, n, D, generator=g)
    text = torch.randn(batch, 5, DT, generator=g)
    text_mask = torch.ones(batch, 5, dtype=torch.long)
    text_mask[:, -1] = 0
    scores = torch.rand(batch, n, generator=g)
    return tokens, text, text_mask, scores


def call(comp, tokens, grid, budget, text, text_mask, scores):
    return comp(tokens, grid=grid, budget=budget, text=text, text_mask=text_mask, scores=scores)


def test_registry_is_populated():
    assert len(list_compressors()) >= 2
    for name in list_compressors():
        cls = COMPRESSORS.get(name)
        assert cls.__doc__ and len(cls.__doc__.strip()) > 20, f"{name} needs a docstring citing its paper"


@pytest.mark.parametrize("grid_name", list(GRIDS))
@pytest.mark.parametrize("name", list_compressors())
def test_shapes_and_exact_budget(name, grid_name):
    grid = GRIDS[grid_name]
    comp = build(name)
    tokens, text, text_mask, scores = inputs(grid)
    n = tokens.shape[1]
    budget = budget_for(name, n)
    comp.eval()
    out = call(comp, tokens, grid, budget, text, text_mask, scores)
    k = n if name == "identity" else K
    assert out.tokens.ndim == 3 and out.tokens.shape[0] == B
    assert out.tokens.shape[1] == k, f"{name}: asked for {k} tokens, got {out.tokens.shape[1]}"
    assert torch.isfinite(out.tokens).all()
    if out.index is not None:
        assert out.index.shape == (B, k) and out.index.dtype == torch.long
        assert int(out.index.min()) >= 0 and int(out.index.max()) < n
    if out.assign is not None:
        assert out.assign.shape == (B, k, n)
    if out.size is not None:
        assert out.size.shape == (B, k)
        assert (out.size >= 0).all()
    if out.grid is not None:
        assert math.prod(out.grid) == k
    if out.mask is not None:
        assert out.mask.shape == (B, k) and out.mask.dtype == torch.bool


@pytest.mark.parametrize("name", list_compressors())
def test_determinism_under_seed(name):
    grid = GRIDS["2d"]
    tokens, text, text_mask, scores = inputs(grid)
    budget = budget_for(name, tokens.shape[1])
    outs = []
    for _ in range(2):
        comp = build(name, seed=3)
        comp.eval()
        torch.manual_seed(7)
        outs.append(call(comp, tokens, grid, budget, text, text_mask, scores))
    torch.testing.assert_close(outs[0].tokens, outs[1].tokens)
    if outs[0].index is not None:
        assert torch.equal(outs[0].index, outs[1].index)


@pytest.mark.parametrize("grid_name", ["2d", "3d"])
@pytest.mark.parametrize("name", list_compressors())
def test_batch_independence(name, grid_name):
    """Sample 0's output must not depend on what else is in the batch."""
    grid = GRIDS[grid_name]
    comp = build(name)
    comp.eval()
    tokens, text, text_mask, scores = inputs(grid, seed=1)
    other, other_text, _, other_scores = inputs(grid, seed=2)
    budget = budget_for(name, tokens.shape[1])
    torch.manual_seed(11)
    a = call(comp, tokens, grid, budget, text, text_mask, scores)
    tokens2, text2, scores2 = tokens.clone(), text.clone(), scores.clone()
    tokens2[1], text2[1], scores2[1] = other[1], other_text[1], other_scores[1]
    torch.manual_seed(11)
    b = call(comp, tokens2, grid, budget, text2, text_mask, scores2)
    if a.mask is not None:
        assert torch.equal(a.mask[0], b.mask[0])
    torch.testing.assert_close(a.tokens[0], b.tokens[0], atol=1e-5, rtol=1e-4)
    if a.index is not None:
        assert torch.equal(a.index[0], b.index[0])


@pytest.mark.parametrize("name", [n for n in list_compressors() if COMPRESSORS.get(n).learnable])
def test_gradient_flow_for_learnable(name):
    grid = GRIDS["2d"]
    comp = build(name)
    comp.train()
    tokens, text, text_mask, scores = inputs(grid)
    tokens.requires_grad_(True)
    text.requires_grad_(True)
    out = call(comp, tokens, grid, budget_for(name, tokens.shape[1]), text, text_mask, scores)
    loss = (out.tokens.float() ** 2).mean()
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    loss.backward()
    params = [(pname, p) for pname, p in comp.named_parameters() if p.requires_grad]
    assert params, f"{name} is marked learnable but has no trainable parameters"
    missing = [pname for pname, p in params if p.grad is None]
    assert not missing, f"{name}: no gradient reached {missing}"
    assert any(float(p.grad.abs().sum()) > 0 for _, p in params)
    assert all(torch.isfinite(p.grad).all() for _, p in params)


@pytest.mark.parametrize("name", list_compressors())
def test_bad_arguments_raise_value_error(name):
    comp = build(name)
    grid = GRIDS["2d"]
    tokens, text, text_mask, scores = inputs(grid)
    n = tokens.shape[1]
    good = dict(grid=grid, budget=budget_for(name, n), text=text, text_mask=text_mask, scores=scores)
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        comp(tokens[0], **good)
    with pytest.raises(ValueError, match="grid"):
        comp(tokens, **{**good, "grid": (7, 8)})
    for bad in (0, -3, n + 1, 0.0, 1.5, True):
        with pytest.raises(ValueError, match="budget"):
            comp(tokens, **{**good, "budget": bad})
    nan = tokens.clone()
    nan[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        comp(nan, **good)
    if COMPRESSORS.get(name).needs_text:
        with pytest.raises(ValueError, match="text"):
            comp(tokens, **{**good, "text": None, "text_mask": None})
    if COMPRESSORS.get(name).needs_scores:
        with pytest.raises(ValueError, match="scores"):
            comp(tokens, **{**good, "scores": None})
