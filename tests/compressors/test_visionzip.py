"""VisionZip: keeps the dominant tokens, merges the rest into averaged contextual tokens."""

from __future__ import annotations

import pytest
import torch

from medvtc.common.compressors import create_compressor, utils


def _inputs(n=64, b=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g, dtype=torch.float64), torch.rand(b, n, generator=g, dtype=torch.float64)


def _ref_visionzip(x, importance, k, c):
    """Loop reference for one sample: x [N, D], importance [N]."""
    n = x.shape[0]
    kd = k - c
    order = sorted(range(n), key=lambda i: (-float(importance[i]), i))
    dominant = sorted(order[:kd])
    rest = sorted(order[kd:])
    m = len(rest)
    centres = [rest[(j * m) // c] for j in range(c)]
    groups = [[] for _ in range(c)]
    for i in rest:
        if i in centres:
            groups[centres.index(i)].append(i)
            continue
        sims = [float(torch.dot(x[i], x[t]) / (x[i].norm() * x[t].norm())) for t in centres]
        groups[max(range(c), key=lambda j: (sims[j], -j))].append(i)
    tokens = [x[i] for i in dominant] + [torch.stack([x[i] for i in grp]).mean(0) for grp in groups]
    sizes = [1.0] * kd + [float(len(grp)) for grp in groups]
    return torch.stack(tokens), dominant + centres, sizes


@pytest.mark.parametrize("k,c", [(16, None), (20, 5), (9, 1), (64, 8)])
def test_matches_loop_reference_with_scores(k, c):
    x, s = _inputs()
    comp = create_compressor("visionzip", num_context=c)
    out = comp(x, grid=(8, 8), budget=k, scores=s)
    cc = comp.contexts_for(k)
    assert cc == (max(1, k // 8) if c is None else c)
    for b in range(2):
        tokens, index, sizes = _ref_visionzip(x[b], s[b], k, cc)
        assert out.index[b].tolist() == index
        torch.testing.assert_close(out.tokens[b], tokens)
        assert out.size[b].tolist() == sizes
    assert torch.equal(out.size.sum(1), torch.full((2,), 64.0, dtype=x.dtype))


def test_keeps_the_dominant_tokens_and_their_values():
    x, s = _inputs()
    out = create_compressor("visionzip", num_context=4)(x, grid=(8, 8), budget=20, scores=s)
    for b in range(2):
        top = sorted(torch.topk(s[b], 16).indices.tolist())
        assert out.index[b, :16].tolist() == top
    torch.testing.assert_close(out.tokens[:, :16], utils.gather_tokens(x, out.index[:, :16]))


def test_without_scores_falls_back_to_l2_norm_saliency():
    x, _ = _inputs(b=1)
    loud = [3, 17, 40, 41, 63]
    x[0, loud] *= 10.0
    out = create_compressor("visionzip", num_context=2)(x, budget=7)
    assert out.index[0, :5].tolist() == loud


def test_contextual_tokens_are_group_averages_via_assign():
    x, s = _inputs()
    out = create_compressor("visionzip", return_assign=True)(x, grid=(8, 8), budget=24, scores=s)
    assert out.assign.shape == (2, 24, 64)
    assert torch.equal(out.assign.sum(1), torch.ones(2, 64, dtype=x.dtype))  # every source once
    torch.testing.assert_close(out.assign.sum(-1), out.size)
    torch.testing.assert_close(out.tokens, (out.assign @ x) / out.size.unsqueeze(-1))


def test_edge_budgets():
    x, s = _inputs()
    one = create_compressor("visionzip")(x, budget=1, scores=s)
    torch.testing.assert_close(one.tokens[:, 0], x.mean(1))
    plain = create_compressor("visionzip", num_context=0)(x, budget=10, scores=s)
    ref = create_compressor("score_topk")(x, budget=10, scores=s)
    assert torch.equal(plain.index, ref.index)
    with pytest.raises(ValueError, match="num_context"):
        create_compressor("visionzip", num_context=-1)


def test_gradient_reaches_all_merged_tokens():
    x, s = _inputs()
    x = x.float().requires_grad_(True)
    out = create_compressor("visionzip")(x, budget=16, scores=s.float())
    out.tokens.sum().backward()
    assert (x.grad.abs().sum(-1) > 0).all()  # every token is either kept or merged
