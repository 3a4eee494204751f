"""FLoC: facility-location token selection with a batched lazy greedy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register, selection_output

# Entries per sample in one similarity block; a function of N only (never of the batch), so a
# sample's numbers do not depend on what else is in the batch.
_BLOCK_ELEMENTS = 1 << 22
_BLOCK_ROWS = 256  # rows per block below the element cap: small blocks stay in cache (measured)


def _work_dtype(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _singleton_gains(xn: torch.Tensor) -> torch.Tensor:
    """F({c}) = sum_i max(0, cos(x_i, x_c)) for every c: [B, N], in similarity blocks.

    The similarity is symmetric, so row block I is multiplied only with columns j >= its start;
    each product adds to the rows' sums and (beyond the block) to the columns' sums: about
    N^2 * D / 2 multiply-adds and never more than `_BLOCK_ELEMENTS` entries per sample.
    """
    b, n, _ = xn.shape
    rows = max(1, min(_BLOCK_ROWS, _BLOCK_ELEMENTS // n))
    col_acc = torch.zeros(b, n, device=xn.device, dtype=xn.dtype)  # sums over earlier row blocks
    gains = torch.empty(b, n, device=xn.device, dtype=xn.dtype)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sim = torch.bmm(xn[:, start:stop], xn[:, start:].transpose(1, 2)).clamp_min_(0.0)
        gains[:, start:stop] = sim.sum(dim=2) + col_acc[:, start:stop]
        col_acc[:, stop:] += sim[:, :, stop - start :].sum(dim=1)
    return gains


@register
class FLoC(TokenCompressor):
    """FLoC (Cho et al., "FLoC: Facility Location-Based Efficient Visual Token Compression for
    Long Video Understanding", 2025): keep the K tokens that maximise the facility-location
    function F(S) = sum_i max_{j in S} max(0, cos(x_i, x_j)), a monotone submodular objective,
    with the lazy greedy algorithm (Minoux), which gives the same (1 - 1/e)-approximate greedy
    set as the plain greedy while evaluating few marginal gains.

    Lazy greedy, batched: every token keeps an upper bound of its marginal gain (its last
    evaluated gain; by submodularity gains only shrink). Each step re-evaluates the `block`
    tokens with the largest stale bounds at once per sample, and accepts the best fresh gain if
    it is >= the largest bound left stale; otherwise the block doubles (capped at
    `_BLOCK_ELEMENTS` / N rows) over the next stale tokens, for the undecided samples only. The
    first step's gains are exact (all singleton values), so it needs no re-evaluation. A gain
    is sum_i max(0, cos(x_i, c) - cur_i) with cur_i the current coverage. When one sample's
    N x N similarity fits in `cache_bytes` (default 64 MiB: N <= 4096 in float32) it is
    computed once and a gain costs O(N); above that nothing N x N is kept: singleton values
    come from symmetric row blocks and each re-evaluation from one [m, D] x [D, N] product, so
    N=32768 with B=8 fits in memory.
    `last_evaluations` [B] counts marginal-gain evaluations per sample (the N singleton gains
    included; the naive greedy needs N * K); `last_objective` [B] holds F(S).

    Differences from the paper: a standalone, query-agnostic compressor over any token set
    (the paper applies it to video-LLM frame tokens, possibly per segment); block
    re-evaluation instead of one-at-a-time heap pops; ties go to the lowest index. Outputs are
    in source order by default (`sort_positions=False` keeps the greedy order).

    Cost (data-dependent; E = lazy re-evaluations, typically a few per cent of N*K or less, far
    fewer on clustered features): similarities N^2*D multiply-adds (cached) or N^2*D/2
    (streamed); gains E*N (cached) or E*N*D (streamed); coverage updates K*N. In FLOPs, with
    the streamed form and E = block*K for the estimate: N^2*D + 2*(E + K)*N*D.
    """

    name = "floc"

    def __init__(
        self,
        budget: int | float | None = None,
        block: int = 16,
        cache_bytes: int = 1 << 26,
        sort_positions: bool = True,
    ) -> None:
        super().__init__(budget)
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"floc: block must be a positive int, got {block!r}")
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValueError(f"floc: cache_bytes must be an int >= 0, got {cache_bytes!r}")
        self.block = block
        self.cache_bytes = cache_bytes
        self.sort_positions = sort_positions
        self.last_evaluations: torch.Tensor | None = None
        self.last_objective: torch.Tensor | None = None

    @torch.no_grad()
    def select(self, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """Lazy-greedy facility-location selection in pick order: [B, k] long."""
        xn = F.normalize(_work_dtype(tokens), dim=-1)
        b, n, _ = xn.shape
        dev = xn.device
        batch = torch.arange(b, device=dev)
        neg_inf = -float("inf")

        sim_all = None
        if n * n * xn.element_size() <= self.cache_bytes:  # per sample: batch-independent
            sim_all = torch.bmm(xn, xn.transpose(1, 2))  # small enough to keep: rows cost O(N)
            bounds = torch.empty(b, n, device=dev, dtype=xn.dtype)
            rows = max(1, _BLOCK_ELEMENTS // n)
            for start in range(0, n, rows):
                bounds[:, start : start + rows] = sim_all[:, start : start + rows].clamp_min(0).sum(dim=2)
        else:
            bounds = _singleton_gains(xn)  # exact gains for the empty set, in blocks
        evaluations = torch.full((b,), n, dtype=torch.long, device=dev)
        cur = torch.zeros(b, n, device=dev, dtype=xn.dtype)
        order = torch.empty(b, k, dtype=torch.long, device=dev)

        def sim_rows(rows_b: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            """cos(x_c, x_i) for candidates cols [a, m] of samples rows_b [a]: [a, m, N]."""
            if sim_all is not None:
                return sim_all[rows_b.unsqueeze(1), cols]
            x_a = xn if rows_b.numel() == b else xn[rows_b]
            return torch.bmm(utils.gather_tokens(x_a, cols), x_a.transpose(1, 2))

        pick = bounds.argmax(dim=1)
        for step in range(k):
            if step > 0:
                pick = self._lazy_step(sim_rows, cur, bounds, evaluations)
            order[:, step] = pick
            bounds[batch, pick] = neg_inf  # never again
            torch.maximum(cur, sim_rows(batch, pick.unsqueeze(1)).squeeze(1), out=cur)  # stays >= 0
        self.last_objective = cur.sum(dim=1)
        self.last_evaluations = evaluations
        return order

    def _lazy_step(self, sim_rows, cur, bounds, evaluations) -> torch.Tensor:
        """One lazy-greedy step; updates `bounds` and `evaluations` in place, returns picks [B]."""
        b, n = bounds.shape
        dev = bounds.device
        neg_inf = -float("inf")
        fresh = torch.zeros(b, n, dtype=torch.bool, device=dev)
        pick = torch.empty(b, dtype=torch.long, device=dev)
        active = torch.arange(b, device=dev)
        max_rows = max(1, _BLOCK_ELEMENTS // n)  # a block of gains never exceeds this many rows
        m = min(self.block, max_rows)
        while active.numel() > 0:
            cur_a = cur if active.numel() == b else cur[active]
            stale = bounds[active].masked_fill(fresh[active], neg_inf)
            take = min(m + 1, n)
            top = stale.topk(take, dim=1)
            cand = top.indices[:, : min(m, n)]
            valid = top.values[:, : min(m, n)] > neg_inf  # fewer stale tokens than m
            next_bound = top.values[:, m] if take > m else torch.full_like(top.values[:, 0], neg_inf)
            gains = sim_rows(active, cand).sub_(cur_a.unsqueeze(1)).clamp_min_(0.0).sum(dim=2)  # [a, m], fresh copy
            rows = active.unsqueeze(1).expand_as(cand)
            bounds[rows[valid], cand[valid]] = gains[valid]
            fresh[rows[valid], cand[valid]] = True
            evaluations[active] += valid.sum(dim=1)
            best_val, best_idx = bounds[active].masked_fill(~fresh[active], neg_inf).max(dim=1)
            done = best_val >= next_bound
            pick[active[done]] = best_idx[done]
            active = active[~done]
            m = min(2 * m, max_rows)
        return pick

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        index = self.select(tokens.detach(), k)
        if self.sort_positions:
            index = index.sort(dim=1).values
        return selection_output(tokens, index)

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        e = 16 * k
        return float(n * n * d + 2 * (e + k) * n * d)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block={self.block}, sort_positions={self.sort_positions}"
