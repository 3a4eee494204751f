"""Score top-k: keeps exactly the top-scored ids; HiRED-style partition allocation is
proportional, exact and equal to a loop reference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from medvtc.common.compressors import create_compressor, utils


def _inputs(grid, b=2, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = math.prod(grid)
    return torch.randn(b, n, d, generator=g), torch.rand(b, n, generator=g)


def _ref_partition_ids(grid, p):
    layout = utils.factor_grid(grid, p)
    ids = []
    for coord in itertools.product(*(range(g) for g in grid)):  # row-major order
        pid = 0
        for c, g, q in zip(coord, grid, layout):
            pid = pid * q + (c * q) // g
        ids.append(pid)
    return ids


def _ref_hired(scores, pid, p, k):
    """Loop reference: Sainte-Lague seats per partition, then top scores within each."""
    lo = min(min(scores), 0.0)
    s = [v - lo for v in scores]
    mass = [sum(v for v, q in zip(s, pid) if q == part) for part in range(p)]
    count = [sum(1 for q in pid if q == part) for part in range(p)]
    if sum(mass) == 0:
        mass = [float(c) for c in count]
    seats = [0] * p
    for _ in range(k):
        open_parts = [q for q in range(p) if seats[q] < count[q]]
        best = max(open_parts, key=lambda q: mass[q] / (seats[q] + 0.5))
        seats[best] += 1
    kept = []
    for part in range(p):
        members = [i for i in range(len(s)) if pid[i] == part]
        members.sort(key=lambda i: (-scores[i], i))
        kept += members[: seats[part]]
    return sorted(kept), seats


def test_plain_topk_keeps_exactly_the_top_scored_ids():
    x, s = _inputs((8, 8))
    out = create_compressor("score_topk")(x, grid=(8, 8), budget=10, scores=s)
    for b in range(2):
        expected = sorted(torch.argsort(s[b], descending=True)[:10].tolist())
        assert out.index[b].tolist() == expected
        # nothing outside the kept set scores higher than anything inside it
        kept = torch.zeros(64, dtype=torch.bool)
        kept[out.index[b]] = True
        assert s[b][kept].min() > s[b][~kept].max()
    torch.testing.assert_close(out.tokens, utils.gather_tokens(x, out.index))
    assert out.assign is None and torch.equal(out.size, torch.ones(2, 10))


def test_partition_budget_is_proportional_to_partition_mass():
    grid = (4, 4)
    pid = torch.tensor(_ref_partition_ids(grid, 4))
    block = {0: [2.0, 1.0, 1.0, 0.0], 1: [1.0, 0.5, 0.5, 0.0], 2: [0.5, 0.25, 0.25, 0.0], 3: [0.5, 0.25, 0.25, 0.0]}
    scores = torch.zeros(1, 16)
    seen = {q: 0 for q in range(4)}
    for i in range(16):
        q = int(pid[i])
        scores[0, i] = block[q][seen[q]]
        seen[q] += 1
    x = torch.randn(1, 16, 3)
    out = create_compressor("score_topk", partitions=4)(x, grid=grid, budget=8, scores=scores)
    kept_parts = pid[out.index[0]].tolist()
    assert [kept_parts.count(q) for q in range(4)] == [4, 2, 1, 1]  # masses 4:2:1:1
    # within each partition the top-scored tokens were taken
    for q in range(4):
        members = (pid == q).nonzero().flatten()
        chosen = [i for i in out.index[0].tolist() if pid[i] == q]
        others = [i for i in members.tolist() if i not in chosen]
        if others:
            assert scores[0, chosen].min() >= scores[0, others].max()


def test_partition_capacity_is_respected_and_total_is_exact():
    grid = (4, 4)
    pid = torch.tensor(_ref_partition_ids(grid, 4))
    scores = torch.where(pid == 0, 1.0, 0.0).unsqueeze(0)
    x = torch.randn(1, 16, 3)
    out = create_compressor("score_topk", partitions=4)(x, grid=grid, budget=6, scores=scores)
    assert out.index.shape == (1, 6)
    assert set((pid == 0).nonzero().flatten().tolist()) <= set(out.index[0].tolist())
    assert len(set(out.index[0].tolist())) == 6


@pytest.mark.parametrize(
    "grid,p,k",
    [((8, 8), 4, 13), ((4, 4, 4), 8, 20), ((30,), 3, 7), ((2, 4, 8), 4, 9), ((5, 7), 6, 11), ((6, 6), 4, 36)],
)
def test_partitions_match_loop_reference(grid, p, k):
    x, s = _inputs(grid, seed=k)
    s = s * 2 - 0.5  # include negative scores
    out = create_compressor("score_topk", partitions=p)(x, grid=grid, budget=k, scores=s)
    pid = _ref_partition_ids(grid, p)
    for b in range(2):
        kept, seats = _ref_hired(s[b].tolist(), pid, p, k)
        assert out.index[b].tolist() == kept
        assert sum(seats) == k
    torch.testing.assert_close(out.tokens, utils.gather_tokens(x, out.index))


def test_one_partition_equals_plain_topk_and_bad_partitions_raise():
    x, s = _inputs((8, 8))
    plain = create_compressor("score_topk")(x, grid=(8, 8), budget=12, scores=s)
    one = create_compressor("score_topk", partitions=1)(x, grid=(8, 8), budget=12, scores=s)
    assert torch.equal(plain.index, one.index)
    with pytest.raises(ValueError, match="partitions"):
        create_compressor("score_topk", partitions=0)
    with pytest.raises(ValueError, match="partitions=17"):
        create_compressor("score_topk", partitions=17)(x[:, :16], grid=(4, 4), budget=4, scores=s[:, :16])
    with pytest.raises(ValueError, match="scores"):
        create_compressor("score_topk")(x, grid=(8, 8), budget=4)
