"""Compressor-VLA: STC (task context) tokens followed by SRC (spatial detail) tokens."""

from __future__ import annotations

import math

import torch

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register
from medvtc.common.compressors.src import SpatialRefinementCompressor, window_options
from medvtc.common.compressors.stc import SemanticTaskCompressor


@register
class CompressorVLA(TokenCompressor):
    """Compressor-VLA ("Compressor-VLA: Instruction-Guided Visual Token Compression for
    Efficient Robotic Manipulation", arXiv 2511.18950, 2025): the policy receives the
    Semantic Task Compressor's tokens (holistic, instruction-modulated context; `stc`)
    concatenated with the Spatial Refinement Compressor's tokens (one per window; `src`), in
    that order. K = K_stc + K_src: SRC uses its default window (K_src = N / window^rank) and STC
    gets the rest, which must lie in [1, num_queries]; the paper's 16 + 64 per camera is
    num_queries=16, window=2 on a 16 x 16 grid (K = 80).

    When the default window leaves STC no valid share (e.g. K=16 on an 8 x 8 grid, where SRC
    alone would take all 16), `strict=False` (default) picks per-axis SRC windows that divide
    the grid, leave STC 1..num_queries tokens, and stay closest to the default window (then the
    largest STC share); `strict=True` raises instead. Either way a budget with no valid split
    raises a ValueError that lists the budgets that work. `last_split` records
    (K_stc, K_src, SRC window) of the latest call.

    `use_instruction=False` is the paper's "no instruction guidance" ablation: text is not
    needed and is ignored (FiLM is the identity in STC, the SRC instruction MLP gets a zero
    input). With `use_instruction=True` text is required (checked per instance).

    Differences from the paper: one camera per call (call it per camera and concatenate, as
    the paper does); see `stc` and `src` for the module-level differences.

    Cost: stc.cost(N, K_stc, D) + src.cost(N, K_src, D) (each module projects all N tokens
    for its own keys); the staticmethod assumes the default split on a 2D grid with window 2,
    K_src = N/4, K_stc = K - N/4.
    """

    name = "compressor_vla"
    needs_text = False  # per instance: required when use_instruction is True (checked in compress)
    needs_grid = True
    grid_ranks = (2, 3)
    learnable = True

    def __init__(
        self,
        dim: int,
        text_dim: int | None = None,
        budget: int | float | None = None,
        num_queries: int = 16,
        window: int = 2,
        num_heads: int = 8,
        use_instruction: bool = True,
        pos_embed: bool = False,
        strict: bool = False,
    ) -> None:
        super().__init__(budget)
        self.stc = SemanticTaskCompressor(
            dim=dim, text_dim=text_dim, num_queries=num_queries, num_heads=num_heads, pos_embed=pos_embed
        )
        self.src = SpatialRefinementCompressor(dim=dim, text_dim=text_dim, window=window, num_heads=num_heads)
        self.num_queries = num_queries
        self.window = window
        self.use_instruction = bool(use_instruction)
        self.strict = bool(strict)
        self.last_split: tuple[int, int, tuple[int, ...]] | None = None

    @classmethod
    def default_args(cls, **_) -> dict:
        """None: the module splits K between STC and SRC itself (`split`); `num_queries` is
        STC's most, not K, and keeps the paper's 16."""
        return {}

    def default_budget(self, grid: tuple[int, ...]) -> int | None:
        src = self.src.default_budget(grid)
        return None if src is None else src + self.num_queries

    def forward(self, tokens, grid=None, budget=None, text=None, text_mask=None, scores=None) -> CompressorOutput:
        if budget is None and self.budget is None and grid is not None:
            try:
                budget = self.default_budget(tuple(int(g) for g in grid))  # still validated by the base
            except (TypeError, ValueError):
                pass  # a malformed grid: the base reports it
        return super().forward(tokens, grid=grid, budget=budget, text=text, text_mask=text_mask, scores=scores)

    def split(self, grid: tuple[int, ...], k: int) -> tuple[int, tuple[int, ...]]:
        """(K_stc, SRC window) for budget k, or ValueError listing the budgets that work."""
        q = self.num_queries
        default_src = self.src.default_budget(grid)
        if default_src is not None and 1 <= k - default_src <= q:
            return k - default_src, (self.window,) * len(grid)
        options = window_options(tuple(grid))
        if not self.strict:
            best = None
            for count, wins in options.items():
                if not 1 <= k - count <= q:
                    continue
                for win in wins:
                    dist = sum((math.log(w) - math.log(self.window)) ** 2 for w in win)
                    cand = (round(dist, 9), -(k - count), win)
                    if best is None or cand < best:
                        best = cand
            if best is not None:
                return -best[1], best[2]
        with_default = (
            f"[{default_src + 1}, {default_src + q}]" if default_src is not None
            else f"none ({self.window} does not divide every side)"
        )
        msg = (
            f"{self.name}: budget K={k} cannot be split into 1..{q} STC tokens plus SRC windows on grid "
            f"{tuple(grid)}; budgets that work with the default {self.window}-window SRC: {with_default}"
        )
        if not self.strict:
            ok = {c + s for c in options for s in range(1, q + 1)}
            near = utils.achievable(grid, k, lambda _g, kk: kk in ok)
            msg += f"; nearest budgets with any SRC window: {near}"
        raise ValueError(msg)

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        if self.use_instruction and text is None:
            raise ValueError(
                f"{self.name}: is instruction-guided and needs text=[B, L, Dt] embeddings "
                "(build it with use_instruction=False for the no-instruction ablation)"
            )
        if not self.use_instruction:
            text, text_mask = None, None
        k_stc, win = self.split(grid, k)
        src = self.src.compress_windows(tokens, grid, win, text, text_mask)
        stc = self.stc.compress(tokens, grid, k_stc, text=text, text_mask=text_mask, scores=None)
        self.last_split = (k_stc, src.num_tokens, win)
        return CompressorOutput(tokens=torch.cat([stc.tokens, src.tokens], dim=1))

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        k_src = n // 4
        k_stc = max(k - k_src, 1)
        return SemanticTaskCompressor.cost(n, k_stc, d) + SpatialRefinementCompressor.cost(n, k_src, d)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_queries={self.num_queries}, window={self.window}, "
            f"use_instruction={self.use_instruction}, strict={self.strict}"
        )
