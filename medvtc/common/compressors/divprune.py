"""DivPrune: diversity-based visual token pruning as greedy max-min selection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register

# Rows of the first-pick distance block per matmul; a function of N only (not of the batch), so
# a sample's numbers never depend on what else is in the batch.
_BLOCK_ELEMENTS = 1 << 22


def _first_pick(xn: torch.Tensor) -> torch.Tensor:
    """argmax_i min_{j != i} (1 - cos(x_i, x_j)) per sample: [B] long (first index on ties).

    Uses the symmetry of the distance: row block I is multiplied only with the columns j >= the
    block's start, and every product updates both the rows' minima and the columns' minima, so
    the pairwise work is about N^2 * D / 2 multiply-adds. A block holds at most
    `_BLOCK_ELEMENTS` entries per sample, whatever N is.
    """
    b, n, _ = xn.shape
    rows = max(1, _BLOCK_ELEMENTS // n)
    inf = float("inf")
    col_min = torch.full((b, n), inf, device=xn.device, dtype=xn.dtype)  # min over earlier rows
    nn_dist = torch.empty(b, n, device=xn.device, dtype=xn.dtype)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        dist = 1.0 - torch.bmm(xn[:, start:stop], xn[:, start:].transpose(1, 2))  # [B, r, N - start]
        local = torch.arange(stop - start, device=xn.device)
        dist[:, local, local] = inf  # a token is not its own neighbour
        row_part = dist.min(dim=2).values  # neighbours j >= start
        torch.minimum(col_min[:, start:], dist.min(dim=1).values, out=col_min[:, start:])
        # neighbours j < start were seen as columns of the earlier row blocks
        nn_dist[:, start:stop] = torch.minimum(row_part, col_min[:, start:stop])
    return nn_dist.argmax(dim=1)  # +inf everywhere when N == 1: the lone token


@register
class DivPrune(TokenCompressor):
    """DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large
    Multimodal Models", CVPR 2025): keep the K tokens that form a max-min diverse subset under
    the cosine distance d(i, j) = 1 - cos(x_i, x_j), chosen greedily. The first token is the one
    whose distance to its nearest other token is largest; every later step adds the token whose
    minimum distance to the already selected set is largest (ties go to the lowest index).

    Differences from the paper: the paper's code builds the full N x N distance matrix; here the
    first pick is computed in row blocks and the greedy steps keep a running [B, N] min-distance
    vector, updated with the distances to the newly selected token only (one [N, D] x [D]
    product per step), so memory stays O(B*N) beyond a block and N=32768 runs with B=8. The
    selection is the same as the matrix version's (up to float rounding of near-ties).
    Already-selected tokens are masked out, so exact duplicates are never picked twice. The
    paper prunes inside the LLM's input; here it is a standalone compressor. Outputs are in
    source order by default (`sort_positions=False` keeps the greedy order).

    Cost: first pick N^2 * D / 2 multiply-adds (the paper's choice of first token needs every
    pair; symmetry halves it); greedy steps (K - 1) * N * D; normalisation 3 * N * D. In FLOPs
    (2 per multiply-add): N^2*D + 2*(K-1)*N*D + 3*N*D. The first pick dominates whenever
    K < N / 2.
    """

    name = "divprune"

    def __init__(self, budget: int | float | None = None, sort_positions: bool = True) -> None:
        super().__init__(budget)
        self.sort_positions = sort_positions

    @torch.no_grad()
    def select(self, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """The greedy max-min selection in pick order: [B, k] long."""
        b, n, _ = tokens.shape
        xn = F.normalize(tokens, dim=-1)
        batch = torch.arange(b, device=tokens.device)
        order = torch.empty(b, k, dtype=torch.long, device=tokens.device)
        first = _first_pick(xn)
        order[:, 0] = first
        if k == 1:
            return order
        # running min distance of every token to the selected set; selected ones are -inf
        mind = 1.0 - torch.bmm(xn, xn[batch, first].unsqueeze(-1)).squeeze(-1)  # [B, N]
        mind[batch, first] = -float("inf")
        for step in range(1, k):
            pick = mind.argmax(dim=1)
            order[:, step] = pick
            if step + 1 < k:
                dist = 1.0 - torch.bmm(xn, xn[batch, pick].unsqueeze(-1)).squeeze(-1)
                torch.minimum(mind, dist, out=mind)
                mind[batch, pick] = -float("inf")
        return order

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b = tokens.shape[0]
        index = self.select(tokens.detach(), k)
        if self.sort_positions:
            index = index.sort(dim=1).values
        return CompressorOutput(
            tokens=utils.gather_tokens(tokens, index),
            index=index,
            size=torch.ones(b, k, device=tokens.device, dtype=tokens.dtype),
        )

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        return float(n * n * d + 2 * max(k - 1, 0) * n * d + 3 * n * d)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sort_positions={self.sort_positions}"
