"""DivPrune: the running-min greedy must select exactly what the plain matrix version selects."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medvtc.common.compressors import create_compressor
from medvtc.common.compressors.divprune import DivPrune
from medvtc.common.compressors.references import divprune_one as reference_divprune


def reference_divprune_recompute(x: torch.Tensor, k: int) -> list[int]:
    """The other obvious version: no stored matrix for the greedy; every step recomputes the
    distances from every token to every selected token and takes the min over the set."""
    xn = F.normalize(x, dim=-1)
    off = 1.0 - xn @ xn.T
    off.fill_diagonal_(float("inf"))
    selected = [int(off.min(dim=1).values.argmax())]
    del off
    while len(selected) < k:
        mind = (1.0 - xn @ xn[selected].T).min(dim=1).values
        mind[selected] = -float("inf")
        selected.append(int(mind.argmax()))
    return selected


@pytest.mark.parametrize("cache_bytes", [1 << 26, 0])  # stored similarity rows / streamed
@pytest.mark.parametrize("grid", [(8, 8), (4, 4, 4), (3, 5, 7)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_identical_to_reference(grid, dtype, cache_bytes):
    g = torch.Generator().manual_seed(0)
    n = math.prod(grid)
    x = torch.randn(3, n, 16, generator=g, dtype=dtype)
    k = n // 4
    comp = DivPrune(sort_positions=False, cache_bytes=cache_bytes)
    order = comp.select(x, k)
    for b in range(3):
        assert order[b].tolist() == reference_divprune(x[b], k)
        assert order[b].tolist() == reference_divprune_recompute(x[b], k)
    out = create_compressor("divprune")(x, grid=grid, budget=k)
    assert torch.equal(out.index, order.sort(dim=1).values)
    assert torch.equal(out.tokens, torch.gather(x, 1, out.index.unsqueeze(-1).expand(-1, -1, 16)))


def test_first_pick_chunked_matches_full(monkeypatch):
    """Force tiny row blocks so the chunked first pick crosses many block boundaries."""
    import medvtc.common.compressors.divprune as mod

    monkeypatch.setattr(mod, "_BLOCK_ELEMENTS", 300)  # 3 rows per block at N=100
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 100, 8, generator=g, dtype=torch.float64)
    for cache_bytes in (1 << 26, 0):
        order = DivPrune(sort_positions=False, cache_bytes=cache_bytes).select(x, 10)
        for b in range(2):
            assert order[b].tolist() == reference_divprune(x[b], 10)


def test_picks_the_outlier_then_one_token_per_cluster():
    """Four tight clusters plus one token opposite all of them: the outlier is the first pick
    (largest nearest-neighbour distance), then the greedy takes exactly one token per cluster."""
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(8, dtype=torch.float64)[:4]
    x = centres.repeat_interleave(10, 0) + 0.01 * torch.randn(40, 8, generator=g, dtype=torch.float64)
    outlier = -centres.sum(0, keepdim=True)
    x = torch.cat([x, outlier]).unsqueeze(0)
    order = DivPrune(sort_positions=False).select(x, 5)[0].tolist()
    assert order[0] == 40
    assert sorted(i // 10 for i in order[1:]) == [0, 1, 2, 3]
    assert order == reference_divprune(x[0], 5)


def test_duplicates_never_picked_twice():
    x = torch.ones(1, 12, 4)
    x[0, 6:] = -1.0
    out = DivPrune()(x, budget=5)
    assert len(set(out.index[0].tolist())) == 5


def test_k_equals_one_and_n():
    x = torch.randn(2, 9, 4)
    assert DivPrune()(x, budget=1).tokens.shape == (2, 1, 4)
    full = DivPrune()(x, budget=9)
    assert torch.equal(full.index, torch.arange(9).expand(2, 9))


def test_cost_formula():
    assert DivPrune.cost(4096, 410, 768) == pytest.approx(4096**2 * 768 + 2 * 409 * 4096 * 768 + 3 * 4096 * 768)
