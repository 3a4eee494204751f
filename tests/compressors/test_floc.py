"""FLoC: the lazy greedy must reach the naive greedy's objective with far fewer gain evaluations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medvtc.common.compressors import create_compressor, metrics
from medvtc.common.compressors.floc import FLoC, _singleton_gains
from medvtc.common.compressors.references import facility_location as objective
from medvtc.common.compressors.references import floc_one


def naive_greedy(x: torch.Tensor, k: int) -> tuple[list[int], float]:
    """The package's naive greedy (every gain every step) and the objective it reaches."""
    idx = floc_one(x, k)
    return idx, objective(x, idx)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("grid,d", [((8, 8), 16), ((4, 4, 4), 8), ((2, 6, 10), 32)])
def test_same_objective_as_naive_greedy(grid, d, dtype):
    g = torch.Generator().manual_seed(0)
    n = math.prod(grid)
    x = torch.randn(3, n, d, generator=g, dtype=dtype)
    k = max(2, n // 5)
    comp = FLoC(sort_positions=False, block=4)
    order = comp.select(x, k)
    for b in range(3):
        ref_idx, ref_val = naive_greedy(x[b], k)
        got = objective(x[b], order[b].tolist())
        assert got == pytest.approx(ref_val, rel=1e-5)
        assert float(comp.last_objective[b]) == pytest.approx(ref_val, rel=1e-5)
        if dtype == torch.float64:  # no near-ties at this precision: the very same picks
            assert order[b].tolist() == ref_idx
    assert len(set(order[0].tolist())) == k


@pytest.mark.parametrize("cache_bytes", [1 << 26, 0])  # cached similarity / streamed blocks
def test_lazy_evaluations_far_below_naive(cache_bytes):
    g = torch.Generator().manual_seed(1)
    n, k = 2048, 205
    x = torch.randn(1, n, 32, generator=g)
    comp = FLoC(block=8, cache_bytes=cache_bytes, sort_positions=False)
    order = comp.select(x, k)
    ev = comp.last_evaluations
    assert ev.shape == (1,)
    assert int(ev[0]) >= n + 8 * (k - 1)  # the singletons plus at least one block per step
    assert int(ev[0]) < 0.1 * n * k, ev  # naive greedy: N * K evaluations (random data: the hard case)
    assert float(comp.last_objective[0]) == pytest.approx(objective(x[0], order[0].tolist()), rel=1e-5)


def test_clustered_tokens_get_one_facility_per_cluster():
    g = torch.Generator().manual_seed(2)
    centres = torch.eye(16)[:6]
    x = centres.repeat_interleave(20, 0) + 0.05 * torch.randn(120, 16, generator=g)
    out = FLoC()(x.unsqueeze(0), budget=6)
    assert sorted(int(i) // 20 for i in out.index[0]) == list(range(6))
    assert metrics.coverage(x.unsqueeze(0), out.tokens) > 0.9


def test_singleton_gains_blocks(monkeypatch):
    import medvtc.common.compressors.floc as mod

    g = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(2, 50, 8, generator=g, dtype=torch.float64), dim=-1)
    full = torch.bmm(x, x.transpose(1, 2)).clamp_min(0).sum(dim=2)
    monkeypatch.setattr(mod, "_BLOCK_ELEMENTS", 150)  # 3 rows per block
    torch.testing.assert_close(_singleton_gains(x), full)


def test_k_equals_n_and_duplicates():
    x = torch.ones(1, 10, 4)
    out = FLoC()(x, budget=10)
    assert torch.equal(out.index[0], torch.arange(10))
    out = create_compressor("floc")(torch.randn(2, 9, 4), budget=1)
    assert out.tokens.shape == (2, 1, 4)


def test_block_argument_checked():
    with pytest.raises(ValueError, match="block"):
        FLoC(block=0)


def test_small_blocks_and_streaming_reach_the_same_objective(monkeypatch):
    """Streamed gains (no cached matrix) with a tiny block cap still match the naive greedy."""
    import medvtc.common.compressors.floc as mod

    monkeypatch.setattr(mod, "_BLOCK_ELEMENTS", 400)  # at most 4 rows per block at N=100
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 100, 8, generator=g, dtype=torch.float64)
    comp = FLoC(block=16, cache_bytes=0, sort_positions=False)
    order = comp.select(x, 20)
    for b in range(2):
        ref_idx, ref_val = naive_greedy(x[b], 20)
        assert order[b].tolist() == ref_idx
        assert float(comp.last_objective[b]) == pytest.approx(ref_val, rel=1e-9)
