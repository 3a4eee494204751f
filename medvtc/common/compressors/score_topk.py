"""Top-k selection by an external importance score (FasterVLM), with HiRED-style allocation of
the budget over spatial partitions."""

from __future__ import annotations

import torch

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register, selection_output


def partition_ids(grid: tuple[int, ...], partitions: int, device: torch.device) -> torch.Tensor:
    """Partition id [N] of every token when `grid` is cut into `partitions` near-equal blocks
    laid out by `utils.factor_grid` (block sides follow the grid's aspect ratio)."""
    layout = utils.factor_grid(grid, partitions)
    if layout is None:
        near = utils.achievable(grid, partitions, lambda g, p: utils.factor_grid(g, p) is not None)
        raise ValueError(f"score_topk: partitions={partitions} cannot be laid out inside grid {grid}; try {near}")
    pos = utils.grid_positions(grid, device=device)
    pid = torch.zeros(pos.shape[0], dtype=torch.long, device=device)
    for a, (g, p) in enumerate(zip(grid, layout)):
        pid = pid * p + (pos[:, a] * p) // g
    return pid


@register
class ScoreTopK(TokenCompressor):
    """Keep the K tokens with the highest external importance score (e.g. [CLS] attention).

    Papers: FasterVLM (Zhang et al. 2024, "[CLS] attention is all you need for training-free
    visual token pruning") keeps the top-K tokens by the vision encoder's [CLS] attention.
    HiRED (Arif et al., AAAI 2025) first allocates the budget across image partitions in
    proportion to each partition's [CLS] attention, then takes the top tokens within each.

    `partitions=None`: plain top-K (FasterVLM). `partitions=P`: the grid is cut into P blocks
    (laid out by `utils.factor_grid`, e.g. 2x2 for P=4 on a 2D grid, 2x2x2 for P=8 on a volume,
    contiguous chunks on a plain sequence) and the budget is apportioned with the Sainte-Lague
    highest-averages rule: token of in-partition rank j (0-based) in partition p gets the key
    S_p / (j + 0.5), S_p the partition's score mass, and the K largest keys are kept. This is
    one vectorised sort, gives exactly K in total, never asks a partition for more tokens than
    it has, and within each partition keeps exactly its top-scored tokens.

    What differs: HiRED uses [CLS] attention from an early layer for the allocation and from the
    last layer for the selection, and rounds per partition; here one score tensor serves both
    and the rounding is Sainte-Lague's (proportional, exact total). Negative scores are shifted
    per sample so the minimum is 0 for the allocation (non-negative scores, like attention, are
    used as they are); if all the mass is 0, partitions get budget in proportion to their size.
    Ties are broken by score, then by position.

    Outputs: index (kept ids in source order), size = 1, assign None.

    Cost: no matrix work (0 FLOPs); a top-K, O(N log K), or with partitions two sorts,
    O(N log N).
    """

    name = "score_topk"
    needs_scores = True

    def __init__(self, budget: int | float | None = None, partitions: int | None = None) -> None:
        super().__init__(budget)
        if partitions is not None and (isinstance(partitions, bool) or int(partitions) != partitions or partitions < 1):
            raise ValueError(f"{self.name}: partitions must be a positive int or None, got {partitions!r}")
        self.partitions = None if partitions is None else int(partitions)

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, _ = tokens.shape
        if self.partitions is None or self.partitions == 1:
            index = utils.topk_index(scores, k)
        else:
            index = self._allocated(scores, grid, k)
        return selection_output(tokens, index)

    def _allocated(self, scores: torch.Tensor, grid: tuple[int, ...], k: int) -> torch.Tensor:
        b, n = scores.shape
        p = self.partitions
        pid = partition_ids(grid, p, scores.device).expand(b, n)
        s = scores.detach().double()
        s = s - s.min(dim=1, keepdim=True).values.clamp_max(0)  # only negative scores are shifted
        mass = torch.zeros(b, p, dtype=s.dtype, device=s.device).scatter_add_(1, pid, s)
        count = torch.zeros(b, p, dtype=s.dtype, device=s.device).scatter_add_(1, pid, torch.ones_like(s))
        mass = torch.where(mass.sum(1, keepdim=True) > 0, mass, count)
        # rank of each token inside its partition: sort by score (desc), then stably by partition
        by_score = torch.sort(s, dim=1, descending=True, stable=True).indices
        order = by_score.gather(1, torch.sort(pid.gather(1, by_score), dim=1, stable=True).indices)
        starts = torch.cumsum(count, dim=1) - count  # first sorted position of each partition
        pos = torch.arange(n, device=s.device).expand(b, n)
        rank_sorted = pos - starts.long().gather(1, pid.gather(1, order))
        rank = torch.empty_like(rank_sorted).scatter_(1, order, rank_sorted)
        key = mass.gather(1, pid) / (rank.to(s.dtype) + 0.5)
        # K largest keys; ties by score (the sort above), so take them from the score order
        key_in_score_order = key.gather(1, by_score)
        pick = torch.sort(key_in_score_order, dim=1, descending=True, stable=True).indices[:, :k]
        return by_score.gather(1, pick).sort(dim=1).values

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        return 0.0

    def extra_repr(self) -> str:
        return f"name={self.name!r}, budget={self.budget!r}, partitions={self.partitions}"
