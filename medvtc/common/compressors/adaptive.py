"""Adaptive per-sample budget: simple inputs get fewer tokens than rich ones."""

from __future__ import annotations

import math

import torch

from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register


def spectral_entropy(tokens: torch.Tensor, max_tokens: int = 1024) -> torch.Tensor:
    """Normalised Renyi-2 spectral entropy of the cosine-similarity matrix, per sample: [B].

    With X the row-normalised tokens (an even subsample of at most max_tokens of them) and
    G = X X^T, the effective rank is tr(G)^2 / ||G||_F^2 (in [1, min(S, D)]); the result is its
    log divided by log(min(S, D)), 0 for identical tokens, near 1 for isotropic ones. No
    eigendecomposition: ||X X^T||_F = ||X^T X||_F, whichever Gram is smaller.
    """
    b, n, d = tokens.shape
    s = min(n, max_tokens)
    pick = (torch.arange(s, device=tokens.device) * n) // s
    x = torch.nn.functional.normalize(tokens[:, pick].float(), dim=-1)  # [B, S, D]
    gram = x.transpose(1, 2) @ x if d <= s else x @ x.transpose(1, 2)
    erank = float(s) ** 2 / gram.pow(2).sum(dim=(1, 2)).clamp_min(1e-12)
    top = min(s, d)
    if top <= 1:
        return torch.zeros(b, device=tokens.device)
    return (erank.clamp_min(1.0).log() / math.log(top)).clamp(0.0, 1.0)


def mean_token_dispersion(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dispersion [B], cosine to the mean token [B, N], distance to the mean token [B, N]).

    dispersion = 1 - mean cosine between each token and the mean token: 0 when every token
    looks like the mean (the mean token "attends" uniformly, zero attention variance), larger
    the more the tokens spread around it. No [B, N, D] temporaries.
    """
    m = tokens.mean(dim=1, keepdim=True)  # [B, 1, D]
    dot = (tokens @ m.transpose(1, 2)).squeeze(-1)  # [B, N]
    sq = torch.linalg.vector_norm(tokens, dim=-1).pow(2)  # [B, N]
    m_sq = m.pow(2).sum(dim=-1)  # [B, 1]
    cos = dot / (sq.sqrt() * m_sq.sqrt()).clamp_min(1e-12)
    dist = (sq - 2 * dot + m_sq).clamp_min(0).sqrt()
    return (1.0 - cos.mean(dim=1)).clamp(0.0, 1.0), cos, dist


@register
class AdaptiveBudget(TokenCompressor):
    """Per-sample budget k_i in [min_ratio K, K] from the input's complexity, then selection.

    After Adaptive-VoCo (Guo & Wang 2025, "VoCo: Complexity-Aware Visual Token Compression":
    a predictor picks each image's compression rate from visual-complexity statistics such as
    patch-token entropy and attention-map variance) and DyMU (Wang et al. 2025: training-free
    dynamic merging whose token count follows image complexity).

    Complexity c_i in [0, 1] = alpha * spectral entropy (normalised Renyi-2 entropy of the token
    cosine-similarity spectrum: identical tokens 0, isotropic 1) + (1 - alpha) * dispersion
    around the mean token (1 - mean cosine to it: 0 when the mean token's attention over the
    tokens is flat, i.e. has zero variance). c is rescaled by `complexity_range` (lo, hi) to
    [0, 1], then k_i = k_min + round(c^gamma (K - k_min)), k_min = max(1, ceil(min_ratio K)):
    monotone, richer inputs keep more tokens. Every statistic is per sample, so k_i does not
    depend on the rest of the batch.

    Inner selection (batched saliency + diversity): tokens are hashed into 2^bits buckets by
    random hyperplanes (SimHash) of the mean-centred tokens, so similar tokens share a bucket;
    tokens are ranked within their bucket by saliency (external `scores`, else distance from
    the mean token) and taken round-robin across buckets (every bucket's best, then every
    bucket's second, ...), the most salient first within a round. This spreads the budget over
    distinct content as DivPrune's max-min diversity does, without its K sequential steps.

    Differences: VoCo learns its rate predictor and DyMU calibrates per-layer merge thresholds
    on data; here the statistics-to-budget map is fixed and `complexity_range` is the knob to
    calibrate on a dataset (ViT features are anisotropic and rarely reach c = 1).

    Shapes: tokens [B, N, D]; out.tokens [B, K, D] with the k_i real tokens first (source
    order) and zero padding; out.mask [B, K] (sum = k_i); out.index [B, K] (padding 0);
    out.size [B, K] (1 real, 0 padding). K (the budget) is the per-sample maximum.
    Cost: S D min(S, D) (S = min(N, 1024)) for the spectrum, ~4 N D for dispersion and
    saliency, 2 N D bits for hashing, sorts O(N log N).
    """

    name = "adaptive"

    def __init__(
        self,
        budget: int | float | None = None,
        min_ratio: float = 0.25,
        alpha: float = 0.5,
        gamma: float = 1.0,
        complexity_range: tuple[float, float] = (0.0, 1.0),
        bits: int | None = None,
        stat_tokens: int = 1024,
        seed: int = 0,
    ) -> None:
        super().__init__(budget)
        if not 0.0 < min_ratio <= 1.0:
            raise ValueError(f"adaptive: min_ratio must be in (0, 1], got {min_ratio}")
        if not 0.0 <= alpha <= 1.0 or gamma <= 0:
            raise ValueError(f"adaptive: need 0 <= alpha <= 1 and gamma > 0, got {alpha}, {gamma}")
        lo, hi = (float(v) for v in complexity_range)
        if not hi > lo:
            raise ValueError(f"adaptive: complexity_range needs lo < hi, got {complexity_range}")
        if bits is not None and not 0 <= bits <= 16:
            raise ValueError(f"adaptive: bits must be in [0, 16], got {bits}")
        if stat_tokens < 2:
            raise ValueError("adaptive: stat_tokens must be >= 2")
        self.min_ratio, self.alpha, self.gamma = min_ratio, alpha, gamma
        self.complexity_range = (lo, hi)
        self.bits, self.stat_tokens, self.seed = bits, stat_tokens, seed
        self._planes: dict[tuple, torch.Tensor] = {}

    def complexity(self, tokens: torch.Tensor) -> torch.Tensor:
        """The rescaled complexity c_i in [0, 1] of every sample: [B]."""
        disp, _, _ = mean_token_dispersion(tokens.float())
        c = self.alpha * spectral_entropy(tokens, self.stat_tokens) + (1 - self.alpha) * disp
        lo, hi = self.complexity_range
        return ((c - lo) / (hi - lo)).clamp(0.0, 1.0)

    def budgets(self, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """k_i for every sample: [B] long in [k_min, k]."""
        k_min = max(1, math.ceil(self.min_ratio * k))
        c = self.complexity(tokens)
        return (k_min + torch.round(c.pow(self.gamma) * (k - k_min))).long().clamp(k_min, k)

    def _hyperplanes(self, d: int, bits: int, like: torch.Tensor) -> torch.Tensor:
        key = (d, bits, like.device, like.dtype)
        if key not in self._planes:
            gen = torch.Generator().manual_seed(self.seed)
            self._planes = {key: torch.randn(d, bits, generator=gen).to(like.device, like.dtype)}
        return self._planes[key]

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, d = tokens.shape
        k_i = self.budgets(tokens, k)
        _, _, dist = mean_token_dispersion(tokens)
        saliency = dist if scores is None else scores.to(tokens.dtype)
        bits = self.bits if self.bits is not None else max(0, min(12, math.ceil(math.log2(max(k, 1)))))
        if bits > 0:
            planes = self._hyperplanes(d, bits, tokens)
            proj = tokens @ planes - tokens.mean(dim=1, keepdim=True) @ planes  # centred SimHash
            weights = 2 ** torch.arange(bits, device=tokens.device)
            bucket = ((proj > 0).long() * weights).sum(dim=-1)  # [B, N]
        else:
            bucket = torch.zeros(b, n, dtype=torch.long, device=tokens.device)
        # rank of each token inside its bucket by saliency (0 = the bucket's most salient)
        by_sal = torch.argsort(saliency, dim=1, descending=True, stable=True)
        by_bucket = torch.argsort(bucket.gather(1, by_sal), dim=1, stable=True)
        order = by_sal.gather(1, by_bucket)  # sorted by (bucket, -saliency)
        sorted_bucket = bucket.gather(1, order)
        first = torch.searchsorted(sorted_bucket, sorted_bucket)
        rank_sorted = torch.arange(n, device=tokens.device).expand(b, n) - first
        rank = torch.empty_like(rank_sorted).scatter_(1, order, rank_sorted)
        # round-robin over buckets: by rank, then saliency
        pick = by_sal.gather(1, torch.argsort(rank.gather(1, by_sal), dim=1, stable=True))[:, :k]
        slot = torch.arange(k, device=tokens.device).expand(b, k)
        real = slot < k_i.unsqueeze(1)
        index = torch.where(real, pick, n + slot).sort(dim=1).values  # real ids first, ascending
        index = torch.where(real, index, torch.zeros_like(index))
        kept = torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, d)) * real.unsqueeze(-1).to(tokens.dtype)
        return CompressorOutput(tokens=kept, index=index, size=real.to(tokens.dtype), mask=real)

    @staticmethod
    def cost(n: int, k: int, d: int, stat_tokens: int = 1024) -> float:
        s = min(n, stat_tokens)
        bits = max(0, min(12, math.ceil(math.log2(max(k, 1)))))
        return float(2 * s * d * min(s, d) + 4 * n * d + 2 * n * d * bits)
