"""TokenCarve: information scores equal their SVD definition; K kept; merged tokens are the
(similarity-weighted) averages of their groups."""

from __future__ import annotations

import pytest
import torch

from medvtc.common.compressors import create_compressor, utils
from medvtc.common.compressors.tokencarve import information_contribution


def _tokens(n=64, b=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g, dtype=torch.float64)


def _svd_info(x, r, kind):
    u, s, _ = torch.linalg.svd(x, full_matrices=False)  # x [N, D]
    u, s = u[:, :r], s[:r]
    return (u**2).sum(-1) if kind == "leverage" else (u.abs() * s).sum(-1)


@pytest.mark.parametrize("kind", ["leverage", "singular"])
@pytest.mark.parametrize("n,d,r", [(64, 8, 5), (64, 8, 8), (12, 20, 7), (12, 20, 12)])
def test_information_contribution_matches_svd(kind, n, d, r):
    x = _tokens(n, d=d)
    got = information_contribution(x, r, kind)
    for b in range(2):
        torch.testing.assert_close(got[b].double(), _svd_info(x[b], r, kind), atol=1e-4, rtol=1e-4)
    if kind == "leverage":  # leverages over all components sum to the rank
        assert abs(float(got[0].sum()) - min(r, n, d)) < 1e-3


def test_keeps_top_k_of_the_information_score():
    x = _tokens()
    out = create_compressor("tokencarve")(x, grid=(8, 8), budget=10)
    assert out.tokens.shape == (2, 10, 8) and out.index.shape == (2, 10)
    for b in range(2):
        info = _svd_info(x[b], 8, "leverage")  # r = min(K, N, D) = 8
        assert out.index[b].tolist() == sorted(torch.topk(info, 10).indices.tolist())


def test_unique_tokens_survive_duplicates_are_merged():
    g = torch.Generator().manual_seed(3)
    basis = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0]
    copies = basis[0] + 1e-3 * torch.randn(40, 8, generator=g, dtype=torch.float64)
    unique = basis[1:4] * 1.0
    x = torch.cat([copies[:20], unique, copies[20:]]).unsqueeze(0)  # unique tokens at 20, 21, 22
    out = create_compressor("tokencarve")(x, budget=4)
    assert {20, 21, 22} <= set(out.index[0].tolist())
    copy_slot = [j for j, i in enumerate(out.index[0].tolist()) if i not in (20, 21, 22)][0]
    assert out.size[0, copy_slot] == 40  # every near-copy was folded into the one kept copy
    torch.testing.assert_close(out.tokens[0, copy_slot], copies.mean(0), atol=1e-3, rtol=0)
    for j, i in enumerate(out.index[0].tolist()):
        if i != out.index[0, copy_slot]:
            torch.testing.assert_close(out.tokens[0, j], x[0, i])  # orthogonal: weight 0, unchanged


def _ref_merge(x, kept, weighting):
    """Loop reference for one sample: each pruned token joins its most cosine-similar kept token."""
    groups = {i: [(i, 1.0)] for i in kept}
    for j in range(x.shape[0]):
        if j in kept:
            continue
        sims = [float(torch.dot(x[j], x[i]) / (x[j].norm() * x[i].norm())) for i in kept]
        best = max(range(len(kept)), key=lambda t: (sims[t], -t))
        w = max(sims[best], 0.0) if weighting == "similarity" else 1.0
        groups[kept[best]].append((j, w))
    tokens, sizes = [], []
    for i in kept:
        tot = sum(w for _, w in groups[i])
        tokens.append(sum(x[j] * w for j, w in groups[i]) / tot)
        sizes.append(float(sum(1 for _, w in groups[i] if w > 0)))
    return torch.stack(tokens), sizes


@pytest.mark.parametrize("weighting", ["similarity", "uniform"])
def test_merged_tokens_are_weighted_averages(weighting):
    x = _tokens(48, d=6)
    out = create_compressor("tokencarve", merge_weighting=weighting, return_assign=True)(x, grid=(6, 8), budget=12)
    for b in range(2):
        tokens, sizes = _ref_merge(x[b], out.index[b].tolist(), weighting)
        torch.testing.assert_close(out.tokens[b], tokens)
        assert out.size[b].tolist() == sizes
    torch.testing.assert_close(out.assign.sum(-1), out.size)
    if weighting == "uniform":
        assert torch.equal(out.size.sum(1), torch.full((2,), 48.0, dtype=x.dtype))
        torch.testing.assert_close(out.tokens, (out.assign @ x) / out.size.unsqueeze(-1))


def test_scores_steer_selection():
    x = _tokens()
    s = torch.rand(2, 64, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    only_scores = create_compressor("tokencarve", alpha=0.0)(x, budget=10, scores=s)
    assert torch.equal(only_scores.index, utils.topk_index(s, 10))
    only_info = create_compressor("tokencarve", alpha=1.0)(x, budget=10, scores=s)
    no_scores = create_compressor("tokencarve")(x, budget=10)
    assert torch.equal(only_info.index, no_scores.index)


def test_full_budget_is_identity_and_wide_tokens_work():
    x = _tokens(16, d=32)  # D > N: the N x N Gram branch
    out = create_compressor("tokencarve")(x, budget=16)
    torch.testing.assert_close(out.tokens, x)
    out = create_compressor("tokencarve", information="singular")(x, budget=5)
    assert out.tokens.shape == (2, 5, 32)
    with pytest.raises(ValueError, match="merge_weighting"):
        create_compressor("tokencarve", merge_weighting="max")
    with pytest.raises(ValueError, match="alpha"):
        create_compressor("tokencarve", alpha=2.0)


def test_gradient_flows_to_kept_and_merged_tokens():
    x = _tokens().float().requires_grad_(True)
    out = create_compressor("tokencarve", merge_weighting="uniform")(x, budget=8)
    out.tokens.sum().backward()
    assert (x.grad.abs().sum(-1) > 0).all()
