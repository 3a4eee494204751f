"""Hierarchical pyramid: candidate geometry, exact K in every mode, coarse-where-flat."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from medvtc.common.compressors import create_compressor

D = 16


def make(**kw):
    return create_compressor("pyramid", **kw)


def brute_cell_mean(x, grid, origin, level):
    """Mean of the level-0 tokens in the 2^level box at `origin` (clipped), by plain loops."""
    side = 2**level
    ranges = [range(o, min(o + side, g)) for o, g in zip(origin, grid)]
    ids = [sum(c * math.prod(grid[a + 1 :]) for a, c in enumerate(cell)) for cell in itertools.product(*ranges)]
    return x[:, ids].mean(1), len(ids)


@pytest.mark.parametrize(
    "grid,count",
    [((8, 8), 64 + 16 + 4), ((4, 4, 4), 64 + 8 + 1), ((5, 7), 35 + 12 + 4), ((3, 5, 7), 105 + 24 + 4), ((9,), 9 + 5 + 3)],
)
def test_candidate_count_levels_and_positions(grid, count):
    comp = make(levels=3)
    x = torch.randn(2, math.prod(grid), D)
    cand, levels, positions = comp.candidates(x, grid)
    lay = comp.layout(grid)
    assert cand.shape == (2, count, D) and levels.shape == (count,) and positions.shape == (count, len(grid))
    assert torch.equal(levels, torch.sort(levels).values)  # fine to coarse
    for c in range(count):  # every candidate is the mean of its box
        lev = int(levels[c])
        origin = (positions[c] * 2**lev).tolist()
        assert origin == lay.origin[c].tolist()
        mean, vol = brute_cell_mean(x, grid, origin, lev)
        torch.testing.assert_close(cand[:, c], mean)
        assert vol == int(lay.volume[c])
    for lev in range(3):  # each level's cells tile the grid exactly once
        assert int(lay.volume[levels == lev].sum()) == math.prod(grid)


def test_levels_stop_when_the_grid_is_one_cell():
    lay = make(levels=6).layout((4, 4))
    assert lay.grids == ((4, 4), (2, 2), (1, 1))
    assert lay.num_candidates == 16 + 4 + 1


@pytest.mark.parametrize("mode", ["cover", "score", "partition"])
@pytest.mark.parametrize("grid", [(8, 8), (4, 4, 4), (5, 7)])
def test_exact_budget_and_consistent_outputs(mode, grid):
    comp = make(mode=mode)
    n = math.prod(grid)
    x = torch.randn(2, n, D)
    cand, levels, positions = comp.candidates(x, grid)
    lay = comp.layout(grid)
    for k in (1, 3, 10, n // 2, n):
        out = comp(x, grid=grid, budget=k)
        idx, lv, pos = comp.select(x, grid, k)
        assert out.tokens.shape == (2, k, D) and idx.shape == (2, k)
        assert torch.all(idx[:, 1:] > idx[:, :-1])  # distinct, ascending
        assert torch.equal(lv, levels[idx]) and torch.equal(pos, positions[idx])
        torch.testing.assert_close(out.tokens, torch.gather(cand, 1, idx[..., None].expand(-1, -1, D)))
        assert torch.equal(out.index, lay.centre[idx]) and int(out.index.max()) < n
        torch.testing.assert_close(out.size, lay.volume[idx].float())


def _ancestor_pairs(lay, idx):
    """How many kept cells lie inside another kept cell (overlap count)."""
    org, lev = lay.origin[idx], lay.levels[idx]
    side = 2 ** lev
    inside = (org[:, None] >= org[None]) & (org[:, None] < org[None] + side[None, :, None])
    inside = inside.all(-1) & (lev[:, None] < lev[None])
    return int(inside.sum())


@pytest.mark.parametrize("grid", [(8, 8), (4, 4, 4), (5, 7)])
def test_partition_never_overlaps(grid):
    comp = make(mode="partition")
    n = math.prod(grid)
    x = torch.randn(3, n, D)
    lay = comp.layout(grid)
    for k in (2, 7, n // 3, n - 1):
        idx, _, _ = comp.select(x, grid, k)
        for b in range(3):
            assert _ancestor_pairs(lay, idx[b]) == 0
    idx, lv, _ = comp.select(x, grid, n)
    # K = N: the full-resolution grid (an edge cell with a single child may stand for it)
    assert torch.all(lay.volume[idx] == 1) and _ancestor_pairs(lay, idx[0]) == 0


def _half_flat_image(h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(D, generator=g).expand(1, h, w, D).clone()
    x[:, :, w // 2 :] += torch.randn(1, h, w // 2, D, generator=g)  # right half: detail
    x[:, :, : w // 2] += 0.01 * torch.randn(1, h, w // 2, D, generator=g)  # left half: flat
    return x.reshape(1, h * w, D)


@pytest.mark.parametrize("mode", ["cover", "partition"])
def test_coarse_cells_cover_flat_regions_fine_cells_the_detail(mode):
    comp = make(mode=mode)
    x = _half_flat_image()
    lay = comp.layout((16, 16))
    idx, lv, _ = comp.select(x, (16, 16), 64)
    right = lay.origin[idx[0], 1] >= 8
    # the flat left half is represented only by coarse cells; the fine cells go to the detail
    assert torch.all(lv[0][~right] > 0)
    assert int((lv[0][right] == 0).sum()) > 20
    # and the left half is covered (every left level-0 cell lies in some kept cell)
    covered = torch.zeros(16, 16, dtype=torch.bool)
    for c in idx[0].tolist():
        o, s = lay.origin[c].tolist(), 2 ** int(lay.levels[c])
        covered[o[0] : o[0] + s, o[1] : o[1] + s] = True
    assert covered[:, :8].all()


def test_cover_keeps_the_coarsest_level_first():
    comp = make(mode="cover")
    x = torch.randn(1, 64, D)
    _, lv, _ = comp.select(x, (8, 8), 4)
    assert torch.all(lv == 2)
    _, lv, _ = comp.select(x, (8, 8), 10)
    assert int((lv == 2).sum()) == 4


def test_external_scores_pick_the_salient_corner():
    comp = make(mode="score")
    x = torch.randn(1, 64, D)
    scores = torch.zeros(1, 8, 8)
    scores[:, :2, :2] = 1.0
    idx, lv, pos = comp.select(x, (8, 8), 5, scores.reshape(1, 64))
    # the 4 corner tokens and the level-1 cell that is their mean (same pooled score)
    assert lv.tolist() == [[0, 0, 0, 0, 1]]
    assert torch.all(comp.layout((8, 8)).origin[idx] < 2)


def test_bad_arguments():
    for kw in ({"levels": 0}, {"mode": "nope"}, {"score_pool": "sum"}, {"level_prior": (1.0,)}):
        with pytest.raises(ValueError):
            make(**kw)
    prior = make(level_prior=(1.0, 0.0, 0.0), mode="score")
    _, lv, _ = prior.select(torch.randn(1, 64, D), (8, 8), 20)
    assert torch.all(lv == 0)


def test_chunked_pooling_and_distances_match():
    x = torch.randn(2, 3 * 5 * 7, D)
    full = make(mode="partition")
    small = make(mode="partition", chunk_tokens=3)
    torch.testing.assert_close(small.candidates(x, (3, 5, 7))[0], full.candidates(x, (3, 5, 7))[0])
    torch.testing.assert_close(small.candidate_scores(x, (3, 5, 7)), full.candidate_scores(x, (3, 5, 7)))
    assert torch.equal(small(x, grid=(3, 5, 7), budget=20).index, full(x, grid=(3, 5, 7), budget=20).index)


def test_neighbourhood_mean_against_loops():
    from medvtc.common.compressors.pyramid import _neighbourhood_mean

    x = torch.randn(1, 2, 2, 3, 4)
    got = _neighbourhood_mean(x)
    for i, j, k in itertools.product(range(2), range(3), range(4)):
        box = x[:, :, max(0, i - 1) : i + 2, max(0, j - 1) : j + 2, max(0, k - 1) : k + 2]
        torch.testing.assert_close(got[:, :, i, j, k], box.mean(dim=(2, 3, 4)))


@pytest.mark.parametrize("grid", [(9,), (1, 6, 6), (2, 3, 11)])
def test_detail_path_on_unusual_grids(grid):
    n = math.prod(grid)
    x = torch.randn(2, n, D)
    for mode in ("cover", "score", "partition"):
        out = make(mode=mode)(x, grid=grid, budget=max(1, n // 3))
        assert out.tokens.shape == (2, max(1, n // 3), D) and torch.isfinite(out.tokens).all()
