"""Matryoshka Query Transformer: one set of nested learned queries serves every budget m <= M."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register
from medvtc.common.compressors.perceiver import chunked_attention


class _QueryLayer(nn.Module):
    """[optional causal self-attention among queries] -> cross-attention to tokens -> MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, causal_self_attention: bool) -> None:
        super().__init__()
        self.heads = heads
        self.causal_self_attention = causal_self_attention
        if causal_self_attention:
            self.norm_self = nn.LayerNorm(dim)
            self.self_qkv = nn.Linear(dim, 3 * dim, bias=False)
            self.self_out = nn.Linear(dim, dim, bias=False)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        hidden = max(1, int(dim * mlp_ratio))
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, q: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor | None, chunk_tokens: int) -> torch.Tensor:
        b, m, d = q.shape
        if self.causal_self_attention:
            qkv = self.self_qkv(self.norm_self(q)).view(b, m, 3, self.heads, d // self.heads)
            qs, ks, vs = qkv.permute(2, 0, 3, 1, 4)  # each [B, h, m, dh]
            logits = torch.matmul(qs, ks.transpose(-1, -2)) * (d // self.heads) ** -0.5  # [B, h, m, m]
            later = torch.ones(m, m, dtype=torch.bool, device=q.device).triu(1)
            sa = torch.matmul(torch.softmax(logits.masked_fill(later, float("-inf")), dim=-1), vs)  # i sees <= i
            q = q + self.self_out(sa.transpose(1, 2).reshape(b, m, d))

        def kv_fn(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = tokens[:, start:end]
            if pos is not None:
                x = x + pos[start:end]
            x = self.norm_kv(x)
            return self.to_k(x), self.to_v(x)

        attn = chunked_attention(self.to_q(self.norm_q(q)), kv_fn, tokens.shape[1], self.heads, None, chunk_tokens)
        q = q + self.to_out(attn)
        return q + self.ff(q)


@register
class MatryoshkaQuery(TokenCompressor):
    """Matryoshka Query Transformer: M nested learned queries; budget m keeps the first m.

    Paper: Hu et al. 2024, "Matryoshka Query Transformer for Large Vision-Language Models"
    (MQT-LLaVA). A query transformer with M latent queries compresses the visual tokens; at each
    training step a random m <= M is drawn and only the first m queries are used, so one model
    serves any m at inference.

    Nesting is exact here: queries never see later queries (no self-attention by default; with
    `causal_self_attention=True` query i attends only to queries <= i), so the first m outputs
    are the same whether m or M queries are computed, and a budget m costs only m queries.
    Budget per call: m = K (K > M is a ValueError). For training, `sample_budget(generator)`
    draws m uniformly from `budget_choices` (default 1..M) and the loop passes it as `budget`;
    the module does not draw budgets behind the caller's back.

    Differences from the paper: MQT-LLaVA feeds a 2D CLIP grid; here the tokens get a fixed
    sinusoidal position encoding of their grid (1D/2D/3D), the query transformer has `depth`
    layers (default 1, cross-attention + MLP) and attention over long inputs is chunked.

    Shapes: tokens [B, N, D] (D == dim); out.tokens [B, m, D]; no index/assign/size/grid.
    Cost (for m queries, r = mlp_ratio): depth * (4 N D^2 keys/values + 4 m D^2 query/output
    + 4 m N D attention + 4 r m D^2 MLP [+ 8 m D^2 + 4 m^2 D causal self-attention]).
    """

    name = "matryoshka"
    learnable = True

    def __init__(
        self,
        dim: int,
        budget: int | float | None = None,
        num_queries: int = 64,
        depth: int = 1,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        causal_self_attention: bool = False,
        positional: bool = True,
        budget_choices: Sequence[int] | None = None,
        chunk_tokens: int = 65536,
    ) -> None:
        super().__init__(budget)
        if dim <= 0 or heads <= 0 or dim % heads:
            raise ValueError(f"matryoshka: dim={dim} must be a positive multiple of heads={heads}")
        if num_queries <= 0 or depth <= 0 or chunk_tokens <= 0:
            raise ValueError("matryoshka: num_queries, depth and chunk_tokens must be positive")
        choices = tuple(range(1, num_queries + 1)) if budget_choices is None else tuple(int(c) for c in budget_choices)
        if not choices or any(c < 1 or c > num_queries for c in choices):
            raise ValueError(f"matryoshka: budget_choices must lie in [1, num_queries={num_queries}], got {choices}")
        self.dim, self.num_queries, self.heads = dim, num_queries, heads
        self.positional, self.chunk_tokens = positional, chunk_tokens
        self.budget_choices = choices
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.layers = nn.ModuleList(
            [_QueryLayer(dim, heads, mlp_ratio, causal_self_attention) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)

    @classmethod
    def default_args(cls, *, budget, heads, per_call, **_) -> dict:
        """K queries (exactly K when built for one budget, at least K for per-call budgets) and
        the caller's head count."""
        args = cls.query_count_args("num_queries", budget, exact=not per_call)
        if heads is not None:
            args["heads"] = heads
        return args

    def sample_budget(self, generator: torch.Generator | None = None) -> int:
        """A training budget m drawn uniformly from `budget_choices` (MQT's random m per step)."""
        i = torch.randint(len(self.budget_choices), (1,), generator=generator).item()
        return self.budget_choices[i]

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, d = tokens.shape
        if d != self.dim:
            raise ValueError(f"matryoshka: tokens have D={d} but the module was built with dim={self.dim}")
        if k > self.num_queries:
            raise ValueError(f"matryoshka: budget K={k} exceeds num_queries={self.num_queries}")
        pos = utils.sinusoidal_positions(grid, d, tokens.device, tokens.dtype) if self.positional else None
        q = self.queries[:k].to(tokens.dtype).unsqueeze(0).repeat(b, 1, 1)  # not a parameter view
        for layer in self.layers:
            q = layer(q, tokens, pos, self.chunk_tokens)
        return CompressorOutput(tokens=self.norm(q))

    @staticmethod
    def cost(n: int, k: int, d: int, depth: int = 1, mlp_ratio: float = 4.0) -> float:
        per_layer = 4 * n * d * d + 4 * k * d * d + 4 * k * n * d + 4 * mlp_ratio * k * d * d
        return float(depth * per_layer)
