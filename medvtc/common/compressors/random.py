"""Random selection: keep K tokens drawn uniformly without replacement.

The floor every learned or heuristic selection must beat (VTC-Bench, "Are we using the right
benchmark", found it competitive with many published methods). Draws come from torch's global
RNG, or from a private generator when `seed` is given, so results are repeatable under a seed.
"""

from __future__ import annotations

import torch

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register, selection_output


@register
class RandomSelection(TokenCompressor):
    """Keep K random tokens per sample, in source order. Cost: O(N log N) for the draw, 0 FLOPs
    of matrix work."""

    name = "random"

    def __init__(self, budget: int | float | None = None, seed: int | None = None) -> None:
        super().__init__(budget)
        self.seed = seed

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, _ = tokens.shape
        gen = None
        if self.seed is not None:
            gen = torch.Generator(device=tokens.device).manual_seed(self.seed)
        noise = torch.rand(b, n, generator=gen, device=tokens.device)
        index = utils.topk_index(noise, k)
        return selection_output(tokens, index)

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        return 0.0
