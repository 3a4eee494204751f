"""The compressor contract (docs/architecture.md, "The compressor contract").

    out = compressor(tokens, grid=..., budget=..., text=..., text_mask=..., scores=...)

    tokens     [B, N, D] visual tokens
    grid       the token layout (H, W), (D, H, W) or (T, H, W); N == prod(grid). None means a
               plain sequence (grid (N,)); methods that need a layout then refuse.
    budget     target count K (int) or keep-ratio (float in (0, 1]); per call. None falls back
               to the budget given at construction.
    text       optional [B, L, Dt] instruction / question embeddings, text_mask [B, L] (1 = real)
    scores     optional [B, N] external importance (e.g. [CLS] attention from the encoder)

Every method is one small class in its own file, registered by name in `COMPRESSORS`, after
kvpress's presses: subclasses implement `compress` on validated inputs and never repeat the
checks done here.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from medvtc.common.compressors import utils
from medvtc.common.registry import Registry


@dataclass
class CompressorOutput:
    """What every compressor returns.

    tokens   [B, K, D'] compressed tokens (D' == D unless a method documents otherwise)
    index    [B, K] long, the source token each output came from (selection), or each output's
             representative source token (merging); None for resamplers.
    assign   [B, K, N] mapping from sources to outputs, hard (0/1) or soft (rows sum to 1 over N
             for pooling-like methods); None where there is no such mapping.
    size     [B, K] how many source tokens each output stands for (ToMe's proportional
             attention adds log(size) to the attention logits).
    grid     the output layout when it is still a grid (pooling, pixel-shuffle, SRC windows).
    mask     [B, K] bool, True for real outputs, when K varies per sample (adaptive budget);
             padded outputs are zero.
    aux_loss a scalar the caller adds to the training loss (e.g. a scorer's budget penalty).
    """

    tokens: torch.Tensor
    index: torch.Tensor | None = None
    assign: torch.Tensor | None = None
    size: torch.Tensor | None = None
    grid: tuple[int, ...] | None = None
    mask: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1]

    def replace(self, **changes: Any) -> "CompressorOutput":
        return replace(self, **changes)


class TokenCompressor(nn.Module):
    """Base class: validates the call, resolves the budget, then calls `compress`.

    Class attributes a method sets:
      name          registry name
      needs_text    the method is instruction-guided: `text` is required
      needs_scores  `scores` is required
      needs_grid    the method uses the spatial layout: `grid` is required
      grid_ranks    the grid ranks it supports, e.g. (2, 3)
      learnable     it has trainable parameters that need a downstream loss
    """

    name: ClassVar[str] = ""
    needs_text: ClassVar[bool] = False
    needs_scores: ClassVar[bool] = False
    needs_grid: ClassVar[bool] = False
    grid_ranks: ClassVar[tuple[int, ...]] = (1, 2, 3)
    learnable: ClassVar[bool] = False

    def __init__(self, budget: int | float | None = None) -> None:
        super().__init__()
        if budget is not None:
            utils.check_budget_type(budget)
        self.budget = budget

    def forward(
        self,
        tokens: torch.Tensor,
        grid: tuple[int, ...] | list[int] | None = None,
        budget: int | float | None = None,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
    ) -> CompressorOutput:
        grid_t = utils.check_tokens_and_grid(tokens, grid, self.name, self.needs_grid, self.grid_ranks)
        if budget is None:
            budget = self.budget
        if budget is None:
            raise ValueError(f"{self.name}: no budget given (pass budget=K or a keep-ratio in (0, 1])")
        k = utils.resolve_budget(budget, tokens.shape[1], self.name)
        if self.needs_text or text is not None:
            text, text_mask = utils.check_text(text, text_mask, tokens.shape[0], self.name, required=self.needs_text)
        if self.needs_scores or scores is not None:
            scores = utils.check_scores(scores, tokens.shape[:2], self.name, required=self.needs_scores)
        return self.compress(tokens, grid_t, k, text=text, text_mask=text_mask, scores=scores)

    def compress(
        self,
        tokens: torch.Tensor,
        grid: tuple[int, ...],
        k: int,
        *,
        text: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        scores: torch.Tensor | None,
    ) -> CompressorOutput:
        raise NotImplementedError

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        """Documented FLOP estimate as a function of N, K, D (benchmarks report measured FLOPs)."""
        return math.nan

    @classmethod
    def default_args(
        cls,
        *,
        budget: int | None,
        grid: tuple[int, ...] | None,
        dim: int | None,
        text_dim: int | None,
        heads: int | None,
        per_call: bool,
    ) -> dict[str, Any]:
        """Constructor arguments this method needs to give `budget` tokens in the caller's
        setting, read by `resolve_compressor` (the caller's own arguments override them).

        budget    K as a token count (None when unknown: the method chooses its own)
        grid      the token layout the module will see, when the caller knows it
        dim, text_dim, heads
                  the caller's token width, instruction width and attention head count
        per_call  False: the module is built for this one budget (a trained model: its
                  checkpoint holds exactly what K needs); True: K is only the largest budget
                  the caller passes per call (a benchmark, a policy whose budget may change),
                  so the module is sized to serve it and otherwise keeps its own defaults.

        A budget the method cannot be built for is a ValueError naming the nearest that work.
        Base: no arguments (methods that take any budget per call need none)."""
        return {}

    @classmethod
    def query_count_args(cls, arg: str, budget: int | None, *, exact: bool) -> dict[str, int]:
        """{arg: K} for a method whose output is the first K of `arg` learned queries (latents):
        exactly K when `exact`, else at least K (the constructor's default when that is larger:
        nothing to set); {} without a budget."""
        if budget is None:
            return {}
        if exact:
            return {arg: int(budget)}
        default = inspect.signature(cls.__init__).parameters[arg].default
        return {arg: int(budget)} if default is inspect.Parameter.empty or budget > default else {}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, budget={self.budget!r}"


def selection_output(tokens: torch.Tensor, index: torch.Tensor) -> CompressorOutput:
    """The output of a pure selection: the kept tokens, their source ids, size 1 each."""
    b, k = index.shape
    return CompressorOutput(
        tokens=utils.gather_tokens(tokens, index),
        index=index,
        size=torch.ones(b, k, device=tokens.device, dtype=tokens.dtype),
    )


COMPRESSORS: Registry[TokenCompressor] = Registry("compressor")


def register(cls: type[TokenCompressor]) -> type[TokenCompressor]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    COMPRESSORS.register(cls.name)(cls)
    return cls
