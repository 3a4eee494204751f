"""Perceiver resampler (Flamingo; RadFM's 3D visual compressor): learnable latents read the tokens.

Also holds two small helpers that the other query-based methods of this family reuse:
`chunked_attention`
(multi-head attention of a few queries over a long token sequence, computed in chunks of the
sequence with a running softmax so that N = 32^3 tokens never need a full [B, N, D] key or
value tensor at once).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register

KVFn = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def chunked_attention(
    q: torch.Tensor,
    kv_fn: KVFn,
    n: int,
    heads: int,
    extra_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk_tokens: int = 65536,
) -> torch.Tensor:
    """Softmax attention of queries q [B, Q, D] over n source rows plus optional extra rows.

    kv_fn(start, end) returns the projected keys and values [B, end-start, D] of source rows
    [start, end); extra_kv are further keys/values [B, E, D] attended jointly (the Perceiver's
    latents). When B*n <= chunk_tokens everything is one softmax over all rows; otherwise the
    source is read in chunks of chunk_tokens // B rows with a running (max, sum) softmax, which
    gives the same result with memory O(chunk * D).
    Plain matmuls rather than scaled_dot_product_attention, because torch's FlopCounterMode
    counts no FLOPs for SDPA on CPU and the benchmarks report measured FLOPs.
    Returns [B, Q, D] (heads merged).
    """
    b, nq, d = q.shape
    qh = _split_heads(q, heads)
    rows = max(1, chunk_tokens // b)
    scale = (d // heads) ** -0.5
    if n <= rows:
        k, v = kv_fn(0, n)
        if extra_kv is not None:
            k, v = torch.cat([k, extra_kv[0]], 1), torch.cat([v, extra_kv[1]], 1)
        attn = torch.softmax(torch.matmul(qh, _split_heads(k, heads).transpose(-1, -2)) * scale, dim=-1)
        return torch.matmul(attn, _split_heads(v, heads)).transpose(1, 2).reshape(b, nq, d)

    m = torch.full((b, heads, nq, 1), -math.inf, device=q.device, dtype=q.dtype)
    denom = torch.zeros(b, heads, nq, 1, device=q.device, dtype=q.dtype)
    acc = torch.zeros_like(qh)

    def step(k: torch.Tensor, v: torch.Tensor) -> None:
        nonlocal m, denom, acc
        s = torch.matmul(qh, _split_heads(k, heads).transpose(-1, -2)) * scale  # [B, h, Q, c]
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
        p = torch.exp(s - m_new)
        corr = torch.exp(m - m_new)
        denom = denom * corr + p.sum(dim=-1, keepdim=True)
        acc = acc * corr + torch.matmul(p, _split_heads(v, heads))
        m = m_new

    for start in range(0, n, rows):
        step(*kv_fn(start, min(n, start + rows)))
    if extra_kv is not None:
        step(*extra_kv)
    return (acc / denom).transpose(1, 2).reshape(b, nq, d)


class _FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: float) -> None:
        hidden = max(1, int(dim * mult))
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class _PerceiverLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.ff = _FeedForward(dim, mlp_ratio)

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
        lat_n = self.norm_latents(latents)

        def kv_fn(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.norm_media(tokens[:, start:end] + pos[start:end])
            return self.to_k(x), self.to_v(x)

        extra = (self.to_k(lat_n), self.to_v(lat_n))  # latents attend to [tokens; latents]
        attn = chunked_attention(self.to_q(lat_n), kv_fn, tokens.shape[1], self.heads, extra, chunk_tokens)
        latents = latents + self.to_out(attn)
        return latents + self.ff(latents)


@register
class PerceiverResampler(TokenCompressor):
    """Perceiver resampler: `num_latents` learned latents cross-attend to the visual tokens.

    Paper: Alayrac et al. 2022, "Flamingo" (Perceiver Resampler), as used by RadFM (Wu et al.
    2023) to turn a 3D CT/MRI ViT's tokens into 32 tokens per image. Each of `depth` layers:
    latents <- latents + Attn(q=LN(latents), kv=[LN(tokens + pos); LN(latents)]), then
    latents <- latents + MLP(latents); a final LayerNorm.

    Differences from the paper: Flamingo adds learned per-frame time embeddings; here the input
    tokens get a fixed sinusoidal encoding of their grid position (2D (H, W), 3D (D, H, W) or
    (T, H, W), split evenly over the axes), so one module serves any grid size. The budget K
    keeps the first K latents (K <= num_latents, else ValueError); latents still attend to all
    num_latents latents, so unlike `matryoshka` the first K outputs depend on the others and the
    module is meant to be trained at the K it is used with. Attention over long inputs is
    chunked (running softmax, `chunk_tokens` rows of the batch at a time): at inference,
    B = 8, N = 32^3, D = 768 needs about 0.8 GB beyond the input.

    Shapes: tokens [B, N, D] (D == dim), grid any rank; out.tokens [B, K, D]; no index, assign,
    size or grid (resampled tokens do not stand for particular source tokens).

    Cost per layer (M = num_latents): keys/values 4 (N + M) D^2, queries and output 4 M D^2,
    attention 4 M (N + M) D, MLP 4 r M D^2 (r = mlp_ratio); total = depth * that.
    """

    name = "perceiver"
    learnable = True

    def __init__(
        self,
        dim: int,
        budget: int | float | None = None,
        num_latents: int = 32,
        depth: int = 2,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        chunk_tokens: int = 65536,
    ) -> None:
        super().__init__(budget)
        if dim <= 0 or heads <= 0 or dim % heads:
            raise ValueError(f"perceiver: dim={dim} must be a positive multiple of heads={heads}")
        if num_latents <= 0 or depth <= 0 or chunk_tokens <= 0:
            raise ValueError("perceiver: num_latents, depth and chunk_tokens must be positive")
        self.dim, self.num_latents, self.depth, self.heads = dim, num_latents, depth, heads
        self.chunk_tokens = chunk_tokens
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.layers = nn.ModuleList([_PerceiverLayer(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self._pos_cache: tuple[tuple, torch.Tensor] | None = None

    @classmethod
    def default_args(cls, *, budget, heads, per_call, **_) -> dict:
        """K latents (exactly K when built for one budget: RadFM's 32 are its K; at least K for
        per-call budgets) and the caller's head count."""
        args = cls.query_count_args("num_latents", budget, exact=not per_call)
        if heads is not None:
            args["heads"] = heads
        return args

    def positions(self, grid: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        key = (grid, self.dim, like.device, like.dtype)
        if self._pos_cache is None or self._pos_cache[0] != key:
            self._pos_cache = (key, utils.sinusoidal_positions(grid, self.dim, like.device, like.dtype))
        return self._pos_cache[1]

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, d = tokens.shape
        if d != self.dim:
            raise ValueError(f"perceiver: tokens have D={d} but the module was built with dim={self.dim}")
        if k > self.num_latents:
            raise ValueError(f"perceiver: budget K={k} exceeds num_latents={self.num_latents}")
        pos = self.positions(grid, tokens)
        # a fresh tensor, not a view of the parameter (module hooks such as torch's FlopCounterMode
        # reject parameter views made under no_grad as submodule inputs)
        latents = self.latents.to(tokens.dtype).unsqueeze(0).repeat(b, 1, 1)
        for layer in self.layers:
            latents = layer(latents, tokens, pos, self.chunk_tokens)
        return CompressorOutput(tokens=self.norm(latents[:, :k]))

    @staticmethod
    def cost(n: int, k: int, d: int, num_latents: int = 32, depth: int = 2, mlp_ratio: float = 4.0) -> float:
        m = num_latents
        per_layer = 4 * (n + m) * d * d + 4 * m * d * d + 4 * m * (n + m) * d + 4 * mlp_ratio * m * d * d
        return float(depth * per_layer)
