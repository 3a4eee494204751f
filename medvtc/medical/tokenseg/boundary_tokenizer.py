"""TokenSeg's boundary-aware tokenizer: VQ codebook, importance (learned saliency + boundary
proximity) and top-K selection through the compressor core.

After TokenSeg (Zeng, Zhou, Zhu and Liu, arXiv 2601.04519, 2026), section "boundary-aware
tokenizer": the N candidate tokens are quantised with a VQ-VAE codebook (commitment loss, EMA
codebook updates), an importance score combines a learned saliency head with a boundary
proximity estimate, and the K most important tokens (K = 100 of N = 400 in the paper) are kept;
over 60 % of them lie near tumour boundaries.

How ours does it:
- Codebook: `TokenVectorQuantizer` (MONAI's `EMAQuantizer` + dead-code restart).
- Each quantised token gets its level embedding and a Fourier embedding of its box (centre and
  size in normalised input coordinates): z = q + level + position.
- Two heads on z: saliency s (a logit) and boundary proximity b (a logit). Importance
  I = w * sigmoid(s) + (1 - w) * sigmoid(b), w = `saliency_weight`.
- b is supervised (in `TokenSeg.auxiliary_losses`) with exp(-d / sigma), d the distance in
  voxels from the token's box to the nearest label edge. s has no target of its own: the kept
  tokens pass through a straight-through gate t * (1 + I - sg(I)), whose value is t but whose
  gradient tells the importance score whether scaling a kept token up would lower the
  segmentation loss (the paper does not say how its saliency head is trained; this is ours).
- Selection: the core's `score_topk` compressor keeps the K candidates of highest I (in source
  order). For the ablations, `selection` names any core compressor instead: selections
  (`random`, `divprune`, ...) pick K of the N candidates from the tokens alone; `pooling` is
  the core's uniform grid pooling of the finest level's cell grid to K cells (the
  downsampling baseline), each output covering the union of its cells' boxes.

Shapes: tokens [B, N, D] -> kept [B, K, D], kept boxes [B, K, 2, 3] (input voxels [lo, hi)),
kept levels [B, K], kept candidate ids [B, K], membership [B, K, N] (pooling only), importance /
saliency / boundary logits [B, N], codes [B, N], commitment loss (scalar).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medvtc.common.compressors import COMPRESSORS, create_compressor
from medvtc.medical.tokenseg.hierarchical_encoder import NUM_LEVELS, CandidateGeometry
from medvtc.medical.tokenseg.vector_quantizer import TokenVectorQuantizer

BOUNDARY_SELECTION = "boundary"


@dataclass
class TokenizerOutput:
    kept: torch.Tensor  # [B, K, D]
    kept_boxes: torch.Tensor  # [B, K, 2, R] long
    kept_levels: torch.Tensor  # [B, K] long
    kept_index: torch.Tensor  # [B, K] long, candidate ids (a representative cell for pooling)
    membership: torch.Tensor | None  # [B, K, N] bool: candidates merged into each kept token
    importance: torch.Tensor  # [B, N]
    saliency_logits: torch.Tensor  # [B, N]
    boundary_logits: torch.Tensor  # [B, N]
    codes: torch.Tensor  # [B, N] long
    commitment_loss: torch.Tensor  # scalar


class BoxEmbedding(nn.Module):
    """Fourier features of a box's normalised centre and size -> [.., D] (continuous, so any
    input size and any sliding-window position gets a meaningful embedding)."""

    def __init__(self, dim: int, spatial_dims: int = 3, num_frequencies: int = 8) -> None:
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(num_frequencies)) * math.pi, persistent=False)
        self.proj = nn.Linear(2 * spatial_dims * 2 * num_frequencies, dim)

    def forward(self, centres: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        x = torch.cat([centres, sizes], dim=-1).unsqueeze(-1) * self.freqs  # [.., 2R, F]
        return self.proj(torch.cat([x.sin(), x.cos()], dim=-1).flatten(-2))


def _head(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))


class BoundaryAwareTokenizer(nn.Module):
    """Boundary-aware tokenizer of TokenSeg (arXiv 2601.04519, 2026); see the module docstring.

    Args:
        token_dim: D.
        keep_tokens: K, tokens kept (100 in the paper).
        codebook_size, commitment_cost, ema_decay, dead_code_threshold: the VQ codebook.
        saliency_weight: w in I = w * sigmoid(saliency) + (1 - w) * sigmoid(boundary).
        selection: "boundary" (importance top-K through the core's `score_topk`) or the name of
            a core compressor for the ablations (random, pooling, divprune, ...).
        selection_args: keyword arguments for that compressor.
        spatial_dims: 3.
    """

    def __init__(
        self,
        token_dim: int = 128,
        keep_tokens: int = 100,
        codebook_size: int = 512,
        commitment_cost: float = 0.25,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.03,
        saliency_weight: float = 0.5,
        selection: str = BOUNDARY_SELECTION,
        selection_args: dict[str, Any] | None = None,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if keep_tokens < 1:
            raise ValueError(f"keep_tokens must be >= 1, got {keep_tokens}")
        if not 0.0 <= saliency_weight <= 1.0:
            raise ValueError(f"saliency_weight must be in [0, 1], got {saliency_weight}")
        self.keep_tokens = int(keep_tokens)
        self.saliency_weight = float(saliency_weight)
        self.selection = selection
        self.quantizer = TokenVectorQuantizer(token_dim, codebook_size, commitment_cost, ema_decay, dead_code_threshold)
        self.level_embedding = nn.Embedding(NUM_LEVELS, token_dim)
        self.box_embedding = BoxEmbedding(token_dim, spatial_dims)
        self.saliency_head = _head(token_dim)
        self.boundary_head = _head(token_dim)
        args = dict(selection_args or {})
        if selection == BOUNDARY_SELECTION:
            self.selector = create_compressor("score_topk", budget=self.keep_tokens, **args)
        else:
            cls = COMPRESSORS.get(selection)  # unknown names: a ConfigError listing the registry
            if cls.needs_text or cls.needs_scores:
                raise ValueError(f"selection {selection!r} needs {'text' if cls.needs_text else 'scores'}; "
                                 "TokenSeg's ablations take compressors that work from the tokens alone")
            if cls.needs_grid and selection != "pooling":
                raise ValueError(f"selection {selection!r} needs a token grid; of the grid methods TokenSeg supports 'pooling'")
            if selection == "pooling":
                args.setdefault("return_assign", True)
            self.selector = create_compressor(selection, budget=self.keep_tokens, **args)

    def forward(self, tokens: torch.Tensor, geometry: CandidateGeometry) -> TokenizerOutput:
        b, n, _ = tokens.shape
        quantized, commitment, codes = self.quantizer(tokens)
        z = quantized + self.level_embedding(geometry.levels - 1) + self.box_embedding(geometry.centres, geometry.sizes)
        sal = self.saliency_head(z).squeeze(-1)
        bnd = self.boundary_head(z).squeeze(-1)
        w = self.saliency_weight
        importance = w * torch.sigmoid(sal) + (1.0 - w) * torch.sigmoid(bnd)
        membership = None
        if self.selection == BOUNDARY_SELECTION:
            out = self.selector(z, budget=self.keep_tokens, scores=importance.float())
            index = out.index
            gate = importance.gather(1, index).unsqueeze(-1)
            kept = out.tokens * (1.0 + gate - gate.detach())
            boxes = geometry.boxes[index]
        elif self.selection == "pooling":
            n1 = geometry.offsets[1]
            out = self.selector(z[:, :n1], grid=geometry.cells[0], budget=self.keep_tokens)
            kept, index = out.tokens, out.index
            membership = torch.zeros(b, out.tokens.shape[1], n, dtype=torch.bool, device=z.device)
            membership[..., :n1] = out.assign > 0
            boxes = self._union_boxes(membership, geometry)
        else:
            out = self.selector(z, budget=self.keep_tokens)
            if out.index is None and out.assign is None:
                raise ValueError(f"selection {self.selection!r} returns neither source ids nor an assignment, "
                                 "so its tokens have no position to reproject to")
            kept = out.tokens
            if out.assign is not None:
                membership = out.assign > 0
                boxes = self._union_boxes(membership, geometry)
                index = out.index if out.index is not None else out.assign.argmax(dim=-1)
            else:
                index = out.index
                boxes = geometry.boxes[index]
        return TokenizerOutput(
            kept=kept, kept_boxes=boxes, kept_levels=geometry.levels[index], kept_index=index,
            membership=membership, importance=importance, saliency_logits=sal, boundary_logits=bnd,
            codes=codes, commitment_loss=commitment,
        )

    @staticmethod
    def _union_boxes(membership: torch.Tensor, geometry: CandidateGeometry) -> torch.Tensor:
        """The bounding box of the candidates merged into each output: [B, K, 2, R]."""
        big = torch.iinfo(torch.long).max
        m = membership.unsqueeze(-1)  # [B, K, N, 1]
        lo = torch.where(m, geometry.boxes[:, 0], big).amin(dim=2)
        hi = torch.where(m, geometry.boxes[:, 1], -1).amax(dim=2)
        return torch.stack([lo, hi], dim=2)


__all__ = ["BoundaryAwareTokenizer", "TokenizerOutput", "BoxEmbedding", "BOUNDARY_SELECTION"]
