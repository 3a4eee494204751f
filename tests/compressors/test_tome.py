"""ToMe: identical to a plain loop reference; sizes, assignment and proportional attention."""

from __future__ import annotations

import pytest
import torch

from medvtc.common.compressors import create_compressor
from medvtc.common.compressors import tome as tome_mod
from medvtc.common.compressors.references import tome as reference_tome
from medvtc.common.compressors.tome import ToMe, proportional_attention_bias


def _tokens(n, b=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("n,k,r", [(64, 16, None), (64, 40, None), (37, 5, None), (50, 11, 7), (16, 15, None), (9, 1, None)])
def test_equals_loop_reference(n, k, r):
    x = _tokens(n)
    out = create_compressor("tome", r=r, return_assign=True)(x, budget=k)
    assert out.tokens.shape == (2, k, 8)
    for b in range(2):
        ref = reference_tome(x[b], k, r)
        assert out.index[b].tolist() == [t[2] for t in ref]  # same merges, same survivors
        assert out.size[b].tolist() == [t[1] for t in ref]
        torch.testing.assert_close(out.tokens[b], torch.stack([t[0] for t in ref]), atol=1e-5, rtol=1e-5)
        for j, t in enumerate(ref):
            assert sorted(out.assign[b, j].nonzero().flatten().tolist()) == sorted(t[3])


def test_outputs_are_means_of_their_sources_and_sizes_add_up():
    x = _tokens(4 * 4 * 4)
    out = create_compressor("tome", return_assign=True)(x, grid=(4, 4, 4), budget=10)
    assert torch.equal(out.size.sum(1), torch.full((2,), 64.0, dtype=x.dtype))
    assert torch.equal(out.assign.sum(1), torch.ones(2, 64, dtype=x.dtype))
    torch.testing.assert_close(out.assign.sum(-1), out.size)
    torch.testing.assert_close(out.tokens, (out.assign @ x) / out.size.unsqueeze(-1))


def test_duplicates_are_merged_first():
    # 8 distinct directions, each present 4 times: 32 -> 8 must give back the 8 directions
    g = torch.Generator().manual_seed(1)
    base = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0]
    x = base.repeat_interleave(4, dim=0).unsqueeze(0)
    out = create_compressor("tome")(x, budget=8)
    torch.testing.assert_close(out.tokens[0], base)
    assert out.size[0].tolist() == [4.0] * 8


def test_chunked_similarity_gives_the_same_result(monkeypatch):
    x = _tokens(100)
    full = create_compressor("tome")(x, budget=12)
    monkeypatch.setattr(tome_mod, "_CHUNK_ELEMS", 7)  # a handful of rows per block
    chunked = create_compressor("tome")(x, budget=12)
    assert torch.equal(full.index, chunked.index)
    torch.testing.assert_close(full.tokens, chunked.tokens)


def test_schedule_and_cost():
    assert ToMe.schedule(64, 16) == [32, 16]
    assert ToMe.schedule(37, 5) == [19, 9, 4]
    assert ToMe.schedule(50, 11, r=7) == [7] * 5 + [4]
    assert sum(ToMe.schedule(32768, 410)) == 32768 - 410
    assert ToMe.cost(64, 16, 8) == 2 * 32 * 32 * 8 + 4 * 64 * 8 + 2 * 16 * 16 * 8 + 4 * 32 * 8


def test_proportional_attention_bias_is_log_size():
    size = torch.tensor([[1.0, 2.0, 7.0]])
    torch.testing.assert_close(proportional_attention_bias(size), size.log())
    out = create_compressor("tome")(_tokens(32), budget=5)
    torch.testing.assert_close(proportional_attention_bias(out.size), out.size.log())


def test_gradient_flows_through_merges():
    x = _tokens(32).float().requires_grad_(True)
    out = create_compressor("tome")(x, budget=6)
    out.tokens.sum().backward()
    assert (x.grad.abs().sum(-1) > 0).all()
