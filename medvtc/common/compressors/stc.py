"""Compressor-VLA's Semantic Task Compressor (STC): instruction-modulated learnable queries."""

from __future__ import annotations

import math

import torch
from torch import nn

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register


def sinusoidal_grid_features(grid: tuple[int, ...], num_freqs: int, device=None, dtype=None) -> torch.Tensor:
    """Sinusoidal features of every grid cell's normalised coordinates: [N, 3 * 2 * num_freqs].

    Each axis's coordinate is mapped to (i + 0.5) / size in (0, 1), then to sin/cos at
    frequencies pi * 2^f, f < num_freqs. Grids of rank < 3 are padded with zero features, so
    one projection serves (N,), (H, W) and (D, H, W) / (T, H, W) grids alike.
    """
    if len(grid) > 3:
        raise ValueError(f"positional features support grids of rank <= 3, got {grid}")
    pos = utils.grid_positions(grid, device=device).to(torch.float32)  # [N, r]
    size = torch.tensor(grid, device=device, dtype=torch.float32)
    coord = (pos + 0.5) / size  # [N, r]
    freqs = math.pi * 2.0 ** torch.arange(num_freqs, device=device, dtype=torch.float32)
    ang = coord.unsqueeze(-1) * freqs  # [N, r, F]
    feats = torch.cat([ang.sin(), ang.cos()], dim=-1)  # [N, r, 2F]
    pad = torch.zeros(feats.shape[0], 3 - len(grid), 2 * num_freqs, device=device)
    return torch.cat([feats, pad], dim=1).flatten(1).to(dtype or torch.float32)


@register
class SemanticTaskCompressor(TokenCompressor):
    """Semantic Task Compressor (STC) of Compressor-VLA ("Compressor-VLA: Instruction-Guided
    Visual Token Compression for Efficient Robotic Manipulation", arXiv 2511.18950, 2025):
    `num_queries` learnable queries, modulated by FiLM from the pooled instruction,
    q' = q * (1 + gamma) + beta with (gamma, beta) = MLP(mean of the real text tokens), read ALL
    visual tokens through multi-head cross-attention, then a LayerNorm + MLP residual block:
    q'' = q' + Attn(LN(q'), LN(x) [+ pos], LN(x)); out = q'' + MLP(LN(q'')).
    Budget K <= num_queries: the output is the first K queries (queries do not interact, so
    they are the same as when all are computed). `out.assign` is the cross-attention weights
    [B, K, N], averaged over heads.

    Optional positional encoding (`pos_embed=True`): sinusoidal features of the grid
    coordinates (2D or 3D, see `sinusoidal_grid_features`) through a learned linear map,
    zero-initialised, added to the keys only, so the queries can attend by location.

    Differences from the paper: no public code; the block layout (pre-norm, MLP ratio 4, FiLM
    MLP width, query init N(0, 1) so that the FiLM shift does not swamp the queries at
    initialisation) follows the explainer's description and common practice, and the paper's
    per-camera use is left to the caller. Without text (only reachable through
    `compressor_vla(use_instruction=False)`, the "no instruction guidance" ablation) FiLM is
    the identity (gamma = beta = 0).

    Cost (multiply-adds): K/V projections 2*N*D^2, attention 2*K*N*D, query path
    K*(2*D^2 + 8*D^2), FiLM MLP Dt*H + H*2D (H = D); in FLOPs
    2*(2*N*D^2 + 2*K*N*D + 10*K*D^2 + 3*D^2) with Dt = D.
    """

    name = "stc"
    needs_text = True
    learnable = True

    def __init__(
        self,
        dim: int,
        text_dim: int | None = None,
        budget: int | float | None = None,
        num_queries: int = 16,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        pos_embed: bool = False,
        pos_freqs: int = 8,
    ) -> None:
        super().__init__(budget)
        ints = (("dim", dim), ("num_queries", num_queries), ("num_heads", num_heads), ("pos_freqs", pos_freqs))
        for arg, val in ints:
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"stc: {arg} must be a positive int, got {val!r}")
        if dim % num_heads:
            raise ValueError(f"stc: dim={dim} must be divisible by num_heads={num_heads}")
        self.dim = dim
        self.text_dim = dim if text_dim is None else text_dim
        self.num_queries = num_queries
        self.num_heads = num_heads
        self.pos_freqs = pos_freqs
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.queries = nn.Parameter(torch.randn(num_queries, dim))  # unit scale: not swamped by beta
        self.film = nn.Sequential(nn.Linear(self.text_dim, dim), nn.GELU(), nn.Linear(dim, 2 * dim))
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.pos_proj: nn.Linear | None = None
        if pos_embed:
            self.pos_proj = nn.Linear(3 * 2 * pos_freqs, dim)
            nn.init.zeros_(self.pos_proj.weight)
            nn.init.zeros_(self.pos_proj.bias)

    @classmethod
    def default_args(cls, *, budget, **_) -> dict:
        """At least K queries: num_queries is raised to K when its default (16, the paper's per
        camera) is smaller, never lowered, so modules built before the resolver keep their
        query count."""
        return cls.query_count_args("num_queries", budget, exact=False)

    def film_params(self, text: torch.Tensor | None, text_mask: torch.Tensor | None, batch: int, ref: torch.Tensor):
        """(gamma, beta), each [B, D]; zeros when there is no text (no instruction guidance)."""
        if text is None:
            zero = torch.zeros(batch, self.dim, device=ref.device, dtype=ref.dtype)
            return zero, zero
        if text.shape[-1] != self.text_dim:
            raise ValueError(
                f"{self.name}: text embeddings have Dt={text.shape[-1]}, expected text_dim={self.text_dim}"
            )
        gamma, beta = self.film(utils.pooled_text(text, text_mask).to(ref.dtype)).chunk(2, dim=-1)
        return gamma, beta

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, d = tokens.shape
        if d != self.dim:
            raise ValueError(f"{self.name}: tokens have D={d}, expected dim={self.dim}")
        if k > self.num_queries:
            raise ValueError(
                f"{self.name}: budget K={k} exceeds num_queries={self.num_queries}; "
                f"choose a budget in [1, {self.num_queries}] or build it with more queries"
            )
        q = self.queries[:k].to(tokens.dtype).unsqueeze(0).expand(b, -1, -1)
        gamma, beta = self.film_params(text, text_mask, b, q)
        q = q * (1.0 + gamma.unsqueeze(1)) + beta.unsqueeze(1)
        kv = self.norm_kv(tokens)
        keys = kv
        if self.pos_proj is not None:
            feats = sinusoidal_grid_features(grid, self.pos_freqs, device=tokens.device, dtype=tokens.dtype)
            keys = kv + self.pos_proj(feats).unsqueeze(0)
        attended, weights = self.attn(self.norm_q(q), keys, kv, need_weights=True, average_attn_weights=True)
        h = q + attended
        h = h + self.mlp(self.norm_mlp(h))
        return CompressorOutput(tokens=h, assign=weights)

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        return float(2 * (2 * n * d * d + 2 * k * n * d + 10 * k * d * d + 3 * d * d))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, dim={self.dim}, text_dim={self.text_dim}, num_queries={self.num_queries}, "
            f"num_heads={self.num_heads}, pos_embed={self.pos_proj is not None}"
        )
