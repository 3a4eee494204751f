"""Identity: keeps every token. The uncompressed reference in every comparison."""

from __future__ import annotations

import torch

from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register


@register
class Identity(TokenCompressor):
    """Returns the tokens unchanged. `budget` must be N (or 1.0); cost 0 FLOPs."""

    name = "identity"

    def __init__(self, budget: int | float | None = 1.0) -> None:
        super().__init__(budget)

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, _ = tokens.shape
        if k != n:
            raise ValueError(f"identity keeps all N={n} tokens; budget must be N or 1.0, got K={k}")
        index = torch.arange(n, device=tokens.device).expand(b, n)
        size = torch.ones(b, n, device=tokens.device, dtype=tokens.dtype)
        return CompressorOutput(tokens=tokens, index=index, size=size, grid=grid)

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        return 0.0
