"""VisionSelector: a light learned scorer with a differentiable (straight-through) top-k."""

from __future__ import annotations

import torch
from torch import nn

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register


@register
class VisionSelector(TokenCompressor):
    """Learned token scorer, trained end to end through a straight-through top-k.

    Paper: Zhu et al. 2025, "VisionSelector: End-to-End Learnable Visual Token Compression for
    Efficient Multimodal LLMs": a scorer decoupled from the backbone, a differentiable Top-K and
    a curriculum-annealing strategy to bridge the training/inference gap; any budget at
    inference.

    Here: logits = MLP(LayerNorm(tokens)) [B, N] (+ score_weight * z-scored external `scores`
    when given). Inference (eval mode): hard top-K of the logits, K exact. Training: Gumbel
    noise (optional) is added, the hard top-K of the noisy logits is kept (K exact), and the
    kept tokens are multiplied by a straight-through mask: forward value exactly 1, gradient of
    the relaxed mask sigmoid((z - t) / temperature), t midway between the K-th and (K+1)-th
    logit, so the downstream loss reaches the scorer. `temperature` is a plain attribute the
    training loop may anneal (the paper's curriculum). Optional aux_loss (training only):
    budget_weight * (mean sigmoid(logit) - K/N)^2, which calibrates sigmoid(logit) as a keep
    probability, + entropy_weight * mean binary entropy of the relaxed mask (pushes it to 0/1).

    Differences from the paper: the paper's scorer sees the MLLM's tokens and the relaxed mask
    is applied to all tokens inside the LLM during training; here the output always has exactly
    K tokens (the contract), so only kept tokens carry gradient to the scorer. The scorer's
    size is set by `hidden` (default dim // 4).

    Shapes: tokens [B, N, D] (D == dim); out.tokens [B, K, D]; out.index [B, K] (source order);
    out.size ones. Cost: scorer 2 N D h + 2 N h (+ top-k, O(N log N) comparisons).
    """

    name = "vision_selector"
    learnable = True

    def __init__(
        self,
        dim: int,
        budget: int | float | None = None,
        hidden: int | None = None,
        score_weight: float = 1.0,
        temperature: float = 1.0,
        gumbel: bool = True,
        budget_weight: float = 0.0,
        entropy_weight: float = 0.0,
        chunk_tokens: int = 65536,
    ) -> None:
        super().__init__(budget)
        hidden = max(8, dim // 4) if hidden is None else hidden
        if dim <= 0 or hidden <= 0:
            raise ValueError(f"vision_selector: dim and hidden must be positive, got {dim}, {hidden}")
        if temperature <= 0:
            raise ValueError(f"vision_selector: temperature must be > 0, got {temperature}")
        if budget_weight < 0 or entropy_weight < 0:
            raise ValueError("vision_selector: budget_weight and entropy_weight must be >= 0")
        if chunk_tokens <= 0:
            raise ValueError("vision_selector: chunk_tokens must be positive")
        self.chunk_tokens = chunk_tokens
        self.dim = dim
        self.score_weight = float(score_weight)
        self.temperature = float(temperature)
        self.gumbel = gumbel
        self.budget_weight = float(budget_weight)
        self.entropy_weight = float(entropy_weight)
        self.scorer = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def scorer_logits(self, tokens: torch.Tensor, scores: torch.Tensor | None = None) -> torch.Tensor:
        """One keep-logit per token: [B, N] (the scorer reads chunks of chunk_tokens // B rows)."""
        rows = max(1, self.chunk_tokens // tokens.shape[0])
        logits = torch.cat([self.scorer(tokens[:, s : s + rows]) for s in range(0, tokens.shape[1], rows)], 1).squeeze(-1)
        if scores is not None and self.score_weight != 0.0:
            s = scores.to(logits.dtype)
            z = (s - s.mean(dim=1, keepdim=True)) / s.std(dim=1, keepdim=True, unbiased=False).clamp_min(1e-6)
            logits = logits + self.score_weight * z
        return logits

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, d = tokens.shape
        if d != self.dim:
            raise ValueError(f"vision_selector: tokens have D={d} but the module was built with dim={self.dim}")
        logits = self.scorer_logits(tokens, scores)
        size = torch.ones(b, k, device=tokens.device, dtype=tokens.dtype)
        if not self.training:
            index = utils.topk_index(logits, k)
            return CompressorOutput(tokens=utils.gather_tokens(tokens, index), index=index, size=size)

        z = logits
        if self.gumbel:
            u = torch.rand_like(logits).clamp(1e-6, 1.0 - 1e-6)
            z = logits - torch.log(-torch.log(u))
        top = z.topk(min(k + 1, n), dim=1).values
        kth = top[:, k - 1 : k]
        thresh = (kth + top[:, k : k + 1]) / 2 if k < n else kth - 1.0
        soft = torch.sigmoid((z - thresh.detach()) / self.temperature)  # [B, N] relaxed keep mask
        index = utils.topk_index(z, k)
        kept = utils.gather_tokens(tokens, index)
        soft_k = torch.gather(soft, 1, index).unsqueeze(-1)
        kept = kept + kept * (soft_k - soft_k.detach())  # value: kept; gradient: d kept / d soft
        aux = None
        if self.budget_weight > 0 or self.entropy_weight > 0:
            aux = logits.new_zeros(())
            if self.budget_weight > 0:
                aux = aux + self.budget_weight * (torch.sigmoid(logits).mean(dim=1) - k / n).pow(2).mean()
            if self.entropy_weight > 0:
                p = soft.clamp(1e-6, 1 - 1e-6)
                aux = aux + self.entropy_weight * (-(p * p.log() + (1 - p) * (1 - p).log())).mean()
        return CompressorOutput(tokens=kept, index=index, size=size, aux_loss=aux)

    @staticmethod
    def cost(n: int, k: int, d: int, hidden: int | None = None) -> float:
        h = max(8, d // 4) if hidden is None else hidden
        return float(2 * n * d * h + 2 * n * h + 5 * n * d)
