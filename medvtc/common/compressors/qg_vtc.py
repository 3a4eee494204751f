"""QG-VTC: question-guided selection of the relevant tokens plus a soft merge of the rest."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register


@register
class QGVTC(TokenCompressor):
    """QG-VTC (Li et al., "QG-VTC: Question-Guided Visual Token Compression in MLLMs for
    Efficient VQA", arXiv 2504.00654, 2025): embed the question into the visual feature space
    with a learnable layer, score every visual token by its correlation with the question, keep
    the most relevant tokens and softly recycle the others.

    Here: the text tokens [B, L, Dt] go through a learnable Linear(text_dim, dim); a token's
    relevance is its cosine similarity to each real text token (padding excluded through
    `text_mask`), reduced by max (default) or mean over the text. The top K - M tokens are kept
    as they are (M = min(num_merged, K - 1), and M = 0 when K = N); the remaining tokens are
    softly merged into M tokens: the M most relevant of them seed the groups, every other rest
    token joins its most cosine-similar seed, and each group becomes the softmax(relevance /
    temperature)-weighted average of its members. Outputs: the kept tokens in source order, then
    the merged ones (most relevant seed first); `index` gives each output's (seed) source
    token, `size` the group sizes.

    Trainable through a downstream loss: gradients reach the projection through the merge
    weights and through a straight-through relevance gate on the kept tokens,
    x * g / stop_grad(g) with g = sigmoid(relevance / temperature): the kept tokens' values are
    exactly the input tokens, but d loss / d relevance is nonzero.

    Differences from the paper: the paper compresses progressively inside the vision encoder
    (several ViT layers, Q/K/V correlation) with a pretrained text encoder; this is one
    standalone stage on given token and text embeddings, the selection is a hard top-k and the
    soft recycling uses nearest-seed groups instead of the paper's attention-based averaging.

    Cost: projection L*Dt*D, relevance N*L*D (+ 3*N*D normalisation), nearest-seed grouping
    (N-K+M)*M*D, merge (N-K+M)*D multiply-adds; in FLOPs
    2*(L*Dt*D + N*L*D + (N-K+M)*M*D) + 4*N*D with L text tokens (Dt = D assumed in `cost`,
    L = 16, M = 4).
    """

    name = "qg_vtc"
    needs_text = True
    learnable = True

    def __init__(
        self,
        dim: int,
        text_dim: int | None = None,
        budget: int | float | None = None,
        num_merged: int = 4,
        reduce: str = "max",
        temperature: float = 0.1,
    ) -> None:
        super().__init__(budget)
        if isinstance(num_merged, bool) or not isinstance(num_merged, int) or num_merged < 0:
            raise ValueError(f"qg_vtc: num_merged must be an int >= 0, got {num_merged!r}")
        if reduce not in ("max", "mean"):
            raise ValueError(f"qg_vtc: reduce must be 'max' or 'mean', got {reduce!r}")
        if not (temperature > 0) or math.isinf(temperature):
            raise ValueError(f"qg_vtc: temperature must be a finite number > 0, got {temperature!r}")
        self.dim = dim
        self.text_dim = dim if text_dim is None else text_dim
        self.num_merged = num_merged
        self.reduce = reduce
        self.temperature = float(temperature)
        self.proj = nn.Linear(self.text_dim, dim)

    def relevance(self, tokens: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
        """Question relevance of every visual token: [B, N], cosine in [-1, 1]."""
        if text.shape[-1] != self.text_dim:
            raise ValueError(f"qg_vtc: text embeddings have Dt={text.shape[-1]}, expected text_dim={self.text_dim}")
        if tokens.shape[-1] != self.dim:
            raise ValueError(f"qg_vtc: tokens have D={tokens.shape[-1]}, expected dim={self.dim}")
        q = F.normalize(self.proj(text.to(self.proj.weight.dtype)), dim=-1)  # [B, L, D]
        sim = torch.bmm(F.normalize(tokens.to(q.dtype), dim=-1), q.transpose(1, 2))  # [B, N, L]
        if text_mask is None:
            return sim.amax(dim=2) if self.reduce == "max" else sim.mean(dim=2)
        real = (text_mask != 0).unsqueeze(1)  # [B, 1, L]
        if self.reduce == "max":
            return sim.masked_fill(~real, -float("inf")).amax(dim=2)
        w = real.to(sim.dtype)
        return (sim * w).sum(dim=2) / w.sum(dim=2)

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, d = tokens.shape
        rel = self.relevance(tokens, text, text_mask).to(tokens.dtype)  # [B, N]
        m = 0 if k == n else min(self.num_merged, k - 1)
        keep = k - m
        ranked = rel.detach().argsort(dim=1, descending=True, stable=True)
        kept_idx = ranked[:, :keep].sort(dim=1).values  # source order
        gate = torch.sigmoid(rel / self.temperature)
        kept_gate = torch.gather(gate, 1, kept_idx)
        kept = utils.gather_tokens(tokens, kept_idx) * (kept_gate / kept_gate.detach()).unsqueeze(-1)
        ones = torch.ones(b, keep, device=tokens.device, dtype=tokens.dtype)
        if m == 0:
            return CompressorOutput(tokens=kept, index=kept_idx, size=ones)

        rest_idx = ranked[:, keep:]  # [B, R], most relevant first; the first M seed the groups
        rest = utils.gather_tokens(tokens, rest_idx)
        seeds = rest[:, :m]
        group = utils.nearest_assignment(rest.detach(), seeds.detach())  # [B, R] in [0, M)
        group[:, :m] = torch.arange(m, device=tokens.device)  # a seed always leads its own group
        rest_rel = torch.gather(rel, 1, rest_idx) / self.temperature
        weights = torch.exp(rest_rel - rest_rel.detach().amax(dim=1, keepdim=True))  # softmax numerators
        merged, counts = utils.merge_into(rest, seeds, group, weights)
        return CompressorOutput(
            tokens=torch.cat([kept, merged], dim=1),
            index=torch.cat([kept_idx, rest_idx[:, :m]], dim=1),
            size=torch.cat([ones, counts], dim=1),
        )

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        ell, m = 16, min(4, max(k - 1, 0)) if k < n else 0
        r = n - k + m
        return float(2 * (ell * d * d + n * ell * d + r * m * d) + 4 * n * d)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, dim={self.dim}, text_dim={self.text_dim}, num_merged={self.num_merged}, "
            f"reduce={self.reduce!r}, temperature={self.temperature}"
        )
