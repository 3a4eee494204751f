"""The compressors task's model: a compressor followed by a reconstruction decoder.

`CompressionAutoencoder` keeps K tokens with a registered compressor and rebuilds all N tokens
from them by cross-attention from grid-position queries; `reconstruction_loss` is the mean
squared error, weighted up on the tokens of the class the instruction names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medvtc.common.compressors import create_compressor
from medvtc.common.compressors.utils import sinusoidal_positions


class CompressionAutoencoder(nn.Module):
    """compressor -> K tokens -> decoder (grid-position queries, cross-attention) -> N tokens.

    tokens [B, N, D], grid, text [B, L, Dt] -> reconstruction [B, N, D] and the compressor output.
    """

    def __init__(self, name: str, dim: int, text_dim: int, grid: tuple[int, ...], budget: float | int,
                 args: dict[str, Any] | None = None, decoder_layers: int = 1, decoder_heads: int = 4) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.budget = budget
        self.compressor = create_compressor(name, dim=dim, text_dim=text_dim, **(args or {}))
        self.register_buffer("queries", sinusoidal_positions(self.grid, dim), persistent=False)
        self.query_proj = nn.Linear(dim, dim)
        # Where each kept token came from: without it the decoder's position queries cannot
        # find the token that covers them (content alone does not say where it was).
        self.memory_pos = nn.Linear(dim, dim)
        layer = nn.TransformerDecoderLayer(dim, decoder_heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, decoder_layers)
        self.out = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None):
        comp = self.compressor(tokens, grid=self.grid, budget=self.budget, text=text, text_mask=text_mask)
        memory = comp.tokens
        if memory.shape[-1] == self.queries.shape[-1]:
            if comp.index is not None:
                memory = memory + self.memory_pos(self.queries[comp.index])
            elif comp.assign is not None:
                weights = comp.assign / comp.assign.sum(-1, keepdim=True).clamp_min(1e-6)
                memory = memory + self.memory_pos(weights @ self.queries)
        pad = None if comp.mask is None else ~comp.mask
        q = self.query_proj(self.queries).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        recon = self.out(self.decoder(q, memory, memory_key_padding_mask=pad))
        return recon, comp


def reconstruction_loss(recon: torch.Tensor, batch: dict[str, torch.Tensor], focus_weight: float) -> torch.Tensor:
    err = (recon.float() - batch["tokens"].float()).pow(2).mean(-1)  # [B, N]
    weight = torch.ones_like(err)
    if focus_weight and "labels" in batch and "target" in batch:
        weight = weight + focus_weight * (batch["labels"] == batch["target"].unsqueeze(1)).float()
    return (err * weight).sum() / weight.sum()


__all__ = ["CompressionAutoencoder", "reconstruction_loss"]
