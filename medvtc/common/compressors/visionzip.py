"""VisionZip: dominant tokens by importance plus contextual tokens merged from the rest."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register


@register
class VisionZip(TokenCompressor):
    """Keep `K - C` dominant tokens, merge all other tokens into `C` contextual tokens.

    Paper: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language
    Models" (CVPR 2025, arXiv 2412.04467). Dominant tokens are those receiving the most [CLS]
    attention in the vision encoder; the remaining tokens are merged by similarity into a few
    contextual tokens: centres are picked at a uniform stride among the remaining tokens, every
    other remaining token joins its most similar centre, and each group is averaged.

    What differs:
    - Importance: `scores` ([B, N], e.g. [CLS] attention) is used when given, as in the paper.
      Without scores the fallback is the token L2 norm (a saliency proxy: high-norm tokens are
      the ones encoders load global information into). This fallback is NOT the paper's.
    - Similarity: the paper compares the encoder's attention keys; here the tokens themselves,
      by cosine similarity (`utils.nearest_assignment`). Centres always keep themselves.
    - Group means are plain averages (`utils.merge_into`), centre included.
    - C defaults to max(1, K // 8) (the paper's LLaVA setting is 54 + 10 of 64); C is clipped to
      K, so K = 1 gives a single contextual token (the mean of everything).
    Output order: the dominant tokens in source order, then the contextual tokens in the order
    of their centres. index gives the dominant ids and each centre's id; size is 1 for dominant
    tokens and the group size for contextual ones; assign [B, K, N] (hard) only when
    `return_assign=True`.

    Cost (C contextual tokens): similarity of the N-K+C remaining tokens to C centres,
    2*(N-K+C)*C*D FLOPs, plus normalisation and averaging, about 3*N*D; selection is a top-K.
    """

    name = "visionzip"

    def __init__(
        self,
        budget: int | float | None = None,
        num_context: int | None = None,
        return_assign: bool = False,
    ) -> None:
        super().__init__(budget)
        bad = num_context is not None and (
            isinstance(num_context, bool) or int(num_context) != num_context or num_context < 0
        )
        if bad:
            raise ValueError(f"{self.name}: num_context must be a non-negative int or None, got {num_context!r}")
        self.num_context = None if num_context is None else int(num_context)
        self.return_assign = bool(return_assign)

    def contexts_for(self, k: int) -> int:
        c = max(1, k // 8) if self.num_context is None else self.num_context
        return min(c, k)

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, d = tokens.shape
        dev = tokens.device
        c = self.contexts_for(k)
        kd = k - c
        importance = scores if scores is not None else tokens.detach().norm(dim=-1)
        if kd > 0:
            order = torch.sort(importance, dim=1, descending=True, stable=True).indices
            dominant = order[:, :kd].sort(dim=1).values
            rest = order[:, kd:].sort(dim=1).values  # remaining tokens in source order
        else:
            dominant = torch.empty(b, 0, dtype=torch.long, device=dev)
            rest = torch.arange(n, device=dev).expand(b, n)
        parts_tokens = [utils.gather_tokens(tokens, dominant)]
        parts_index = [dominant]
        parts_size = [torch.ones(b, kd, device=dev, dtype=tokens.dtype)]
        group = None
        if c > 0:
            m = rest.shape[1]
            rest_tokens = utils.gather_tokens(tokens, rest)
            centre_pos = (torch.arange(c, device=dev) * m) // c  # uniform stride among the rest
            centres = rest_tokens[:, centre_pos]
            group = utils.nearest_assignment(rest_tokens, centres)  # [B, M] in [0, C)
            group[:, centre_pos] = torch.arange(c, device=dev)
            merged, counts = utils.merge_into(rest_tokens, centres, group)
            parts_tokens.append(merged)
            parts_index.append(rest[:, centre_pos])
            parts_size.append(counts)
        out_tokens = torch.cat(parts_tokens, dim=1)
        index = torch.cat(parts_index, dim=1)
        size = torch.cat(parts_size, dim=1)
        assign = None
        if self.return_assign:
            target = torch.empty(b, n, dtype=torch.long, device=dev)
            target.scatter_(1, dominant, torch.arange(kd, device=dev).expand(b, kd))
            if group is not None:
                target.scatter_(1, rest, group + kd)
            assign = F.one_hot(target, k).to(tokens.dtype).transpose(1, 2)
        return CompressorOutput(tokens=out_tokens, index=index, assign=assign, size=size)

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        c = max(1, k // 8)
        return float(2 * (n - k + c) * c * d + 3 * n * d)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, budget={self.budget!r}, num_context={self.num_context}"
