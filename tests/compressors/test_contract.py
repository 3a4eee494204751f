"""The contract every registered compressor must keep (docs/architecture.md, "The compressor contract").

Runs over the whole registry, so a new method is checked the moment its file exists.
Method-specific behaviour (reference equivalence, instruction sensitivity) lives in the
per-method test files.
"""

from __future__ import annotations

import inspect
import math
import pkgutil
from pathlib import Path

import pytest
import torch

import medvtc.common.compressors as compressors_pkg
from medvtc.common.compressors import (
    COMPRESSORS,
    TokenCompressor,
    accepted_args,
    create_compressor,
    list_compressors,
    resolve_compressor,
    resolve_compressor_args,
)
from medvtc.common.errors import ConfigError

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


# -- one file per method, named after it -------------------------------------------------------

TESTS = Path(__file__).parent
HELPERS = {"base", "utils", "metrics", "references", "resolve"}  # not methods


@pytest.mark.parametrize("name", list_compressors())
def test_module_file_and_test_file_are_named_after_the_method(name):
    module = COMPRESSORS.get(name).__module__
    assert module == f"medvtc.common.compressors.{name}", f"{name!r} is defined in {module}, not {name}.py"
    assert (TESTS / f"test_{name}.py").is_file(), f"{name!r} has no tests/compressors/test_{name}.py"


def test_every_module_of_the_package_is_a_method_or_a_helper():
    modules = {m.name for m in pkgutil.iter_modules(compressors_pkg.__path__) if not m.name.startswith("_")}
    assert modules - HELPERS == set(list_compressors())


# -- the resolver ----------------------------------------------------------------------------------


def test_resolver_takes_the_defaults_from_the_class():
    comp = resolve_compressor("perceiver", 12, grid=(4, 4, 4), dim=D, text_dim=DT, heads=4)
    assert type(comp).__name__ == "PerceiverResampler"
    assert (comp.num_latents, comp.heads, comp.budget) == (12, 4, 12)
    mq = resolve_compressor("matryoshka", 12, dim=D, heads=2)
    assert (mq.num_queries, mq.heads) == (12, 2)
    # what the class declares is what the resolver passes
    assert resolve_compressor_args("perceiver", 12, dim=D, heads=4) == {"dim": D, "budget": 12, "num_latents": 12, "heads": 4}
    assert TokenCompressor.default_args(budget=12, grid=(4, 4), dim=D, text_dim=DT, heads=4, per_call=False) == {}
    # no head count from the caller: the method's own
    assert resolve_compressor("perceiver", 12, dim=D).heads == 8


def test_user_args_override_the_defaults():
    comp = resolve_compressor("perceiver", 12, {"num_latents": 20, "heads": 2, "depth": 1}, dim=D, heads=4)
    assert (comp.num_latents, comp.heads, comp.depth) == (20, 2, 1)
    ps = resolve_compressor("pixel_shuffle", 16, {"factors": (4, 1)}, grid=(8, 8), dim=D)
    assert ps.factors == (4, 1)
    # the context too: a method's text width from its own arguments
    assert resolve_compressor("stc", 8, {"text_dim": 5}, dim=D, text_dim=DT).text_dim == 5


def test_pixel_shuffle_factors_come_from_grid_and_budget():
    ps = resolve_compressor("pixel_shuffle", 8, grid=(4, 4, 4), dim=D)
    assert ps.factors == (2, 2, 2) and list(ps.proj) == ["2x2x2"]  # the Linear exists before any call
    assert resolve_compressor("pixel_shuffle", 6, grid=(4, 6), dim=D).factors == (2, 2)
    assert resolve_compressor("pixel_shuffle", 0.25, grid=(8, 8), dim=D).factors == (2, 2)  # keep-ratio on the grid
    with pytest.raises(ValueError, match=r"K=7 .*nearest achievable budgets: \[4, 8\]"):
        resolve_compressor("pixel_shuffle", 7, grid=(4, 4, 4), dim=D)
    # budget per call: the factors are chosen per call, the Linear on first use
    lazy = resolve_compressor("pixel_shuffle", 8, grid=(4, 4, 4), dim=D, per_call=True)
    assert lazy.factors is None and len(lazy.proj) == 0 and lazy.budget is None


def test_per_call_budgets_keep_the_query_counts_that_serve_them():
    """per_call=True: at least K queries (the default when larger), no budget at construction."""
    assert resolve_compressor("perceiver", 12, dim=D, per_call=True).num_latents == 32
    assert resolve_compressor("perceiver", 40, dim=D, per_call=True).num_latents == 40
    assert resolve_compressor("matryoshka", 80, dim=D, per_call=True).num_queries == 80
    assert resolve_compressor("stc", 20, dim=D, text_dim=DT, per_call=True).num_queries == 20
    assert resolve_compressor("stc", 4, dim=D, text_dim=DT, per_call=True).num_queries == 16
    assert resolve_compressor("perceiver", 12, dim=D, per_call=True).budget is None
    # Compressor-VLA splits its budget itself: num_queries is STC's most, not K
    assert resolve_compressor("compressor_vla", 80, grid=(16, 16), dim=D, text_dim=DT, per_call=True).num_queries == 16
    # no budget: every method's own defaults
    assert resolve_compressor_args("perceiver", None, dim=D, per_call=True) == {"dim": D}


def test_none_is_no_compressor_and_identity_the_keep_all_module():
    assert resolve_compressor("none", 64, {"num_latents": 3}, grid=(4, 4, 4), dim=D) is None
    assert resolve_compressor_args("none", 64) == {} and accepted_args("none", {"window": 2}) == {}
    ident = resolve_compressor("identity", 64, grid=(4, 4, 4), dim=D, text_dim=DT)
    assert type(ident).__name__ == "Identity" and ident.budget == 64


def test_unknown_name_is_the_registry_error():
    with pytest.raises(ConfigError) as registry:
        create_compressor("no_such_method")
    with pytest.raises(ConfigError) as resolver:
        resolve_compressor("no_such_method", 8, dim=D)
    assert str(resolver.value) == str(registry.value)
    assert "unknown compressor 'no_such_method'" in str(resolver.value) and "perceiver" in str(resolver.value)
    with pytest.raises(ConfigError, match="has no argument 'num_latnts'"):
        resolve_compressor("perceiver", 8, {"num_latnts": 8}, dim=D)


def test_accepted_args_keeps_what_the_constructor_takes():
    base = {"num_queries": 2, "num_heads": 4, "window": 2, "use_instruction": False, "dim": 9, "budget": 3}
    assert accepted_args("stc", base) == {"num_queries": 2, "num_heads": 4}
    assert accepted_args("src", base) == {"num_heads": 4, "window": 2}
    assert accepted_args("pooling", base) == {}


@pytest.mark.parametrize("grid_name", ["2d", "3d"])
@pytest.mark.parametrize("name", list_compressors())
def test_resolved_module_gives_its_budget_without_a_per_call_budget(name, grid_name):
    """Built for K by the resolver (defaults from the class), the module's own budget is K, and
    the class's defaults are arguments its constructor takes."""
    grid = GRIDS[grid_name]
    n = math.prod(grid)
    k = n if name == "identity" else K
    cls = COMPRESSORS.get(name)
    defaults = cls.default_args(budget=k, grid=grid, dim=D, text_dim=DT, heads=4, per_call=False)
    params = inspect.signature(cls.__init__).parameters
    assert set(defaults) <= set(params), f"{name}: defaults {sorted(defaults)} not all constructor arguments"
    torch.manual_seed(0)
    comp = resolve_compressor(name, k, grid=grid, dim=D, text_dim=DT, heads=4).eval()
    tokens, text, text_mask, scores = inputs(grid)
    out = call(comp, tokens, grid, None, text, text_mask, scores)
    assert out.tokens.shape[:2] == (B, k)
