"""DivPrune: diversity-based visual token pruning as greedy max-min selection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register, selection_output

# Rows of the first-pick distance block per matmul; a function of N only (not of the batch), so
# a sample's numbers never depend on what else is in the batch.
_BLOCK_ELEMENTS = 1 << 22
_BLOCK_ROWS = 256  # rows per block below the element cap: small blocks stay in cache (measured)


def _first_pick(xn: torch.Tensor, store: torch.Tensor | None = None) -> torch.Tensor:
    """argmax_i min_{j != i} (1 - cos(x_i, x_j)) per sample: [B] long (first index on ties).

    Works on similarities (min_j fl(1 - s_ij) == fl(1 - max_j s_ij) exactly, as rounding is
    monotone) and uses their symmetry: row block I is multiplied only with the columns j >= the
    block's start, and every product updates both the rows' and the columns' maxima, so the
    pairwise work is about N^2 * D / 2 multiply-adds. A block holds at most `_BLOCK_ELEMENTS`
    entries per sample, whatever N is. With `store` ([B, N, N]) the similarities are also
    written there, both halves, so the greedy steps can read rows instead of recomputing them.
    """
    b, n, _ = xn.shape
    rows = max(1, min(_BLOCK_ROWS, _BLOCK_ELEMENTS // n))
    col_max = torch.full((b, n), -float("inf"), device=xn.device, dtype=xn.dtype)  # over earlier rows
    nn_sim = torch.empty(b, n, device=xn.device, dtype=xn.dtype)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sim = torch.bmm(xn[:, start:stop], xn[:, start:].transpose(1, 2))  # [B, r, N - start]
        if store is not None:
            store[:, start:stop, start:] = sim
            store[:, start:, start:stop] = sim.transpose(1, 2)
        local = torch.arange(stop - start, device=xn.device)
        sim[:, local, local] = -float("inf")  # a token is not its own neighbour
        row_part = sim.amax(dim=2)  # neighbours j >= start
        torch.maximum(col_max[:, start:], sim.amax(dim=1), out=col_max[:, start:])
        # neighbours j < start were seen as columns of the earlier row blocks
        nn_sim[:, start:stop] = torch.maximum(row_part, col_max[:, start:stop])
    return (1.0 - nn_sim).argmax(dim=1)  # +inf everywhere when N == 1: the lone token


@register
class DivPrune(TokenCompressor):
    """DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large
    Multimodal Models", CVPR 2025): keep the K tokens that form a max-min diverse subset under
    the cosine distance d(i, j) = 1 - cos(x_i, x_j), chosen greedily. The first token is the one
    whose distance to its nearest other token is largest; every later step adds the token whose
    minimum distance to the already selected set is largest (ties go to the lowest index).

    Differences from the paper: the paper's code builds the full N x N distance matrix; here the
    first pick is computed in symmetric row blocks and the greedy steps keep a running [B, N]
    min-distance vector, updated with the distances to the newly selected token only. Those
    come from the stored similarity rows when one sample's N x N similarity fits in
    `cache_bytes` (default 64 MiB: N <= 4096 in float32), else from one [N, D] x [D] product per
    step, so above that memory stays O(B*N*D) plus a block and N=32768 runs with B=8. The
    selection is the same as the matrix version's (up to float rounding of near-ties).
    Already-selected tokens are masked out, so exact duplicates are never picked twice. The
    paper prunes inside the LLM's input; here it is a standalone compressor. Outputs are in
    source order by default (`sort_positions=False` keeps the greedy order).

    Cost: first pick N^2 * D / 2 multiply-adds (the paper's choice of first token needs every
    pair; symmetry halves it); greedy steps (K - 1) * N * D when streamed ((K - 1) * N reads
    when stored); normalisation 3 * N * D. In FLOPs (2 per multiply-add), streamed form:
    N^2*D + 2*(K-1)*N*D + 3*N*D. The first pick dominates whenever K < N / 2.
    """

    name = "divprune"

    def __init__(
        self, budget: int | float | None = None, cache_bytes: int = 1 << 26, sort_positions: bool = True
    ) -> None:
        super().__init__(budget)
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValueError(f"divprune: cache_bytes must be an int >= 0, got {cache_bytes!r}")
        self.cache_bytes = cache_bytes
        self.sort_positions = sort_positions

    @torch.no_grad()
    def select(self, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """The greedy max-min selection in pick order: [B, k] long."""
        b, n, _ = tokens.shape
        work = tokens if tokens.dtype in (torch.float32, torch.float64) else tokens.float()
        xn = F.normalize(work, dim=-1)
        batch = torch.arange(b, device=tokens.device)
        order = torch.empty(b, k, dtype=torch.long, device=tokens.device)
        store = None
        if k > 1 and n * n * xn.element_size() <= self.cache_bytes:  # per sample: batch-independent
            store = torch.empty(b, n, n, device=xn.device, dtype=xn.dtype)

        def sim_to(pick: torch.Tensor) -> torch.Tensor:  # cos(x_i, x_pick) for all i: [B, N]
            if store is not None:
                return store[batch, pick]
            return torch.bmm(xn, xn[batch, pick].unsqueeze(-1)).squeeze(-1)

        pick = _first_pick(xn, store)
        order[:, 0] = pick
        # running min distance of every token to the selected set; selected ones are -inf
        mind = torch.full((b, n), float("inf"), device=xn.device, dtype=xn.dtype)
        for step in range(1, k):
            torch.minimum(mind, 1.0 - sim_to(pick), out=mind)
            mind[batch, pick] = -float("inf")
            pick = mind.argmax(dim=1)
            order[:, step] = pick
        return order

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        index = self.select(tokens.detach(), k)
        if self.sort_positions:
            index = index.sort(dim=1).values
        return selection_output(tokens, index)

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        return float(n * n * d + 2 * max(k - 1, 0) * n * d + 3 * n * d)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cache_bytes={self.cache_bytes}, sort_positions={self.sort_positions}"
