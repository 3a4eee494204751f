"""VisionSelector: hard top-k of the scorer at inference, straight-through top-k in training."""

from __future__ import annotations

import pytest
import torch

from medvtc.common.compressors import create_compressor, utils

D = 32


def make(**kw):
    torch.manual_seed(0)
    return create_compressor("vision_selector", dim=D, **kw)


def test_eval_is_hard_topk_of_scorer_logits():
    comp = make().eval()
    x = torch.randn(3, 64, D)
    out = comp(x, grid=(8, 8), budget=10)
    expected = utils.topk_index(comp.scorer_logits(x), 10)
    assert torch.equal(out.index, expected)
    torch.testing.assert_close(out.tokens, utils.gather_tokens(x, expected))
    assert out.aux_loss is None
    # the kept logits are the 10 highest
    logits = comp.scorer_logits(x)
    kept = logits.gather(1, out.index)
    dropped = logits.scatter(1, out.index, float("-inf"))
    assert torch.all(kept.min(1).values >= dropped.max(1).values)


def test_train_values_are_exact_and_gradient_reaches_the_scorer():
    comp = make(gumbel=False).train()
    x = torch.randn(2, 64, D)
    out = comp(x, grid=(8, 8), budget=12)
    assert out.tokens.shape == (2, 12, D)
    # without noise the training selection is the inference selection
    assert torch.equal(out.index, utils.topk_index(comp.scorer_logits(x), 12))
    torch.testing.assert_close(out.tokens, utils.gather_tokens(x, out.index), atol=0, rtol=0)
    out.tokens.pow(2).mean().backward()
    for name, p in comp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gumbel_training_selection_is_random_but_exact_k():
    comp = make(gumbel=True).train()
    x = torch.randn(1, 64, D)
    torch.manual_seed(1)
    a = comp(x, grid=(8, 8), budget=16).index
    torch.manual_seed(2)
    b = comp(x, grid=(8, 8), budget=16).index
    assert a.shape == b.shape == (1, 16)
    assert not torch.equal(a, b)
    assert torch.unique(a).numel() == 16


def test_external_scores_steer_the_selection():
    comp = make(score_weight=100.0).eval()
    x = torch.randn(2, 64, D)
    scores = torch.rand(2, 64)
    out = comp(x, grid=(8, 8), budget=8, scores=scores)
    assert torch.equal(out.index, utils.topk_index(scores, 8))


def test_aux_loss_options():
    x = torch.randn(2, 64, D)
    assert make().train()(x, grid=(8, 8), budget=8).aux_loss is None
    comp = make(budget_weight=1.0, entropy_weight=0.1).train()
    out = comp(x, grid=(8, 8), budget=8)
    assert out.aux_loss is not None and out.aux_loss.ndim == 0 and out.aux_loss > 0
    out.aux_loss.backward()
    assert comp.scorer[-1].weight.grad.abs().sum() > 0
    assert comp.eval()(x, grid=(8, 8), budget=8).aux_loss is None


def test_budget_term_calibrates_keep_probability():
    """A few steps on the budget term alone pull mean sigmoid(logit) towards K/N."""
    comp = make(budget_weight=1.0).train()
    x = torch.randn(4, 64, D)
    gap0 = (torch.sigmoid(comp.scorer_logits(x)).mean() - 8 / 64).abs().item()
    for _ in range(30):
        comp.zero_grad()
        comp(x, grid=(8, 8), budget=8).aux_loss.backward()
        with torch.no_grad():
            for p in comp.parameters():
                p -= 2.0 * p.grad
    gap1 = (torch.sigmoid(comp.scorer_logits(x)).mean() - 8 / 64).abs().item()
    assert gap1 < 0.5 * gap0


def test_bad_constructor_args():
    with pytest.raises(ValueError):
        make(temperature=0.0)
    with pytest.raises(ValueError):
        make(budget_weight=-1.0)
