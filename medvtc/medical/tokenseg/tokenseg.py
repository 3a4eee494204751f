"""TokenSeg: boundary-aware sparse-token 3D segmentation, as a MONAI-style network.

Zeng, Zhou, Zhu and Liu, "TokenSeg: Efficient 3D Medical Image Segmentation via Hierarchical
Visual Token Compression", arXiv 2601.04519 (2026). The paper reports 94.49 % Dice / 89.61 % IoU
on 960 breast DCE-MRI cases with 64 % less GPU memory and 68 % lower latency than dense networks.

    from medvtc.medical.tokenseg import TokenSeg
    net = TokenSeg(spatial_dims=3, in_channels=4, out_channels=4, img_size=(96, 96, 96))
    logits = net(x)                                    # [B, 4, 96, 96, 96]
    logits = sliding_window_inference(volume, (96, 96, 96), 2, net)
    out = net(x, return_tokens=True)                   # logits + kept tokens + aux tensors
    losses = net.auxiliary_losses(out, label)          # {"commitment": ..., "boundary": ...}
    frac = net.kept_boundary_fraction(out, label)      # [B] share of kept tokens near an edge

Pipeline (see each part's file):
    x [B, C, *S] -> HierarchicalEncoder -> skips (5 levels) + N candidates [B, N, D]
      -> BoundaryAwareTokenizer -> K kept tokens [B, K, D] with boxes [B, K, 2, 3]
      -> SparseToDenseDecoder (mix, reproject to the coarse grid, upsample with skips)
      -> logits [B, out_channels, *S]

Training: the task adds to the segmentation loss (Dice + CE) the codebook's commitment loss and
a BCE between the boundary head and exp(-d / boundary_sigma), d the distance in voxels from each
candidate's box to the nearest label edge (`auxiliary_losses`). The codebook follows the
tokens by EMA (no gradient), with dead-code restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medvtc.medical.tokenseg import boundary as bd
from medvtc.medical.tokenseg.boundary_tokenizer import BOUNDARY_SELECTION, BoundaryAwareTokenizer
from medvtc.medical.tokenseg.hierarchical_encoder import DEFAULT_LEVEL_WEIGHTS, CandidateGeometry, HierarchicalEncoder
from medvtc.medical.tokenseg.sparse_decoder import SparseToDenseDecoder


@dataclass
class TokenSegOutput:
    """What `TokenSeg.forward(x, return_tokens=True)` returns.

    logits           [B, out_channels, *S]
    kept_boxes       [B, K, 2, R] long: each kept token's box in input voxels, [lo, hi) per axis
    kept_levels      [B, K] long in 1..4
    kept_index       [B, K] long: candidate ids (for pooling: the centre cell of each window)
    membership       [B, K, N] bool or None: candidates merged into each kept token (pooling)
    importance       [B, N] the importance score of every candidate (in [0, 1])
    saliency_logits, boundary_logits [B, N]
    codes            [B, N] long: codebook entry of every candidate
    commitment_loss  scalar
    geometry         the candidates' levels, boxes and centres (batch-independent)
    """

    logits: torch.Tensor
    kept_boxes: torch.Tensor
    kept_levels: torch.Tensor
    kept_index: torch.Tensor
    membership: torch.Tensor | None
    importance: torch.Tensor
    saliency_logits: torch.Tensor
    boundary_logits: torch.Tensor
    codes: torch.Tensor
    commitment_loss: torch.Tensor
    geometry: CandidateGeometry


class TokenSeg(nn.Module):
    """TokenSeg (arXiv 2601.04519, 2026), MONAI conventions.

    Args:
        spatial_dims: 3.
        in_channels: input channels (MRI sequences).
        out_channels: classes including background.
        img_size: the input size (sliding-window ROI) the candidate layout is planned for.
        num_tokens: N candidate tokens over 4 levels (400 in the paper).
        keep_tokens: K tokens kept (100 in the paper).
        token_dim: D.
        feature_size: f; level l of the encoder has f * 2^l channels.
        codebook_size, commitment_cost, ema_decay, dead_code_threshold: the VQ codebook.
        saliency_weight: weight of the saliency head in the importance score.
        selection: "boundary" (TokenSeg) or a core compressor name for the ablations
            ("random", "pooling", "divprune", ...); selection_args: its keyword arguments.
        level_weights / tokens_per_level: the split of the N candidates over the levels.
        coarse_level: the encoder level whose grid the kept tokens are reprojected to.
        mixer_layers, mixer_heads: transformer blocks over the kept tokens.
        boundary_sigma: length scale (voxels) of the boundary-proximity target exp(-d / sigma).
        norm_name: normalisation of the MONAI conv blocks.

    Input x [B, in_channels, *img_size] (other sizes work when each level's feature grid holds
    its cell grid); output logits [B, out_channels, *x.shape[2:]].
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        img_size: Sequence[int] | int = (96, 96, 96),
        num_tokens: int = 400,
        keep_tokens: int = 100,
        token_dim: int = 128,
        feature_size: int = 16,
        codebook_size: int = 512,
        commitment_cost: float = 0.25,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.03,
        saliency_weight: float = 0.5,
        selection: str = BOUNDARY_SELECTION,
        selection_args: dict[str, Any] | None = None,
        level_weights: Sequence[float] = DEFAULT_LEVEL_WEIGHTS,
        tokens_per_level: Sequence[int] | None = None,
        coarse_level: int = 3,
        mixer_layers: int = 2,
        mixer_heads: int = 4,
        boundary_sigma: float = 2.0,
        norm_name: str | tuple = "instance",
    ) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"TokenSeg is a 3D network: spatial_dims must be 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.encoder = HierarchicalEncoder(
            spatial_dims, in_channels, img_size, num_tokens=num_tokens, token_dim=token_dim,
            feature_size=feature_size, level_weights=level_weights, tokens_per_level=tokens_per_level, norm_name=norm_name,
        )
        self.img_size = self.encoder.img_size
        self.num_tokens = self.encoder.num_tokens
        if not 1 <= keep_tokens <= self.num_tokens:
            raise ValueError(f"keep_tokens={keep_tokens} must be in [1, num_tokens={self.num_tokens}]")
        self.keep_tokens = keep_tokens
        self.tokenizer = BoundaryAwareTokenizer(
            token_dim, keep_tokens, codebook_size, commitment_cost, ema_decay, dead_code_threshold,
            saliency_weight, selection, selection_args, spatial_dims,
        )
        self.decoder = SparseToDenseDecoder(
            spatial_dims, token_dim, out_channels, feature_size, coarse_level, mixer_layers, mixer_heads, norm_name=norm_name,
        )
        self.boundary_sigma = float(boundary_sigma)

    @property
    def selection(self) -> str:
        return self.tokenizer.selection

    def forward(self, x: torch.Tensor, return_tokens: bool = False) -> torch.Tensor | TokenSegOutput:
        if x.ndim != 2 + self.spatial_dims or x.shape[1] != self.in_channels:
            raise ValueError(f"TokenSeg expects [B, {self.in_channels}, D, H, W], got {tuple(x.shape)}")
        skips, candidates = self.encoder(x)
        geometry = self.encoder.geometry(x.shape[2:], x.device)
        tok = self.tokenizer(candidates, geometry)
        logits = self.decoder(tok.kept, tok.kept_boxes, skips)
        if not return_tokens:
            return logits
        return TokenSegOutput(
            logits=logits, kept_boxes=tok.kept_boxes, kept_levels=tok.kept_levels, kept_index=tok.kept_index,
            membership=tok.membership, importance=tok.importance, saliency_logits=tok.saliency_logits,
            boundary_logits=tok.boundary_logits, codes=tok.codes, commitment_loss=tok.commitment_loss, geometry=geometry,
        )

    # -- training signals and diagnostics -----------------------------------------------------
    @torch.no_grad()
    def candidate_edge_distance(self, out: TokenSegOutput, label: torch.Tensor) -> torch.Tensor:
        """[B, N]: distance (voxels) from every candidate's box to the nearest edge of `label`
        ([B, 1, *S], class ids, same size as the input)."""
        dist = bd.edge_distance(label)
        b = label.shape[0]
        boxes = out.geometry.boxes.unsqueeze(0).expand(b, -1, -1, -1)
        return bd.box_min(dist, boxes)

    def auxiliary_losses(
        self, out: TokenSegOutput, label: torch.Tensor, distance: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """{"commitment": the codebook's commitment loss, "boundary": BCE of the boundary head
        against exp(-d / boundary_sigma)}. Add them (weighted) to the segmentation loss."""
        if distance is None:
            distance = self.candidate_edge_distance(out, label)
        target = bd.box_proximity_target(distance, self.boundary_sigma)
        bce = F.binary_cross_entropy_with_logits(out.boundary_logits.float(), target.float())
        return {"commitment": out.commitment_loss, "boundary": bce}

    @torch.no_grad()
    def kept_edge_distance(self, out: TokenSegOutput, label: torch.Tensor, distance: torch.Tensor | None = None) -> torch.Tensor:
        """[B, K]: distance (voxels) from each kept token's box to the nearest label edge."""
        if distance is None:
            distance = self.candidate_edge_distance(out, label)
        if out.membership is not None:
            big = torch.finfo(distance.dtype).max
            return torch.where(out.membership, distance.unsqueeze(1), big).amin(dim=2)
        return distance.gather(1, out.kept_index)

    @torch.no_grad()
    def kept_boundary_fraction(
        self, out: TokenSegOutput, label: torch.Tensor, tolerance: float = 2.0, distance: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B]: the share of kept tokens whose box lies within `tolerance` voxels of a label
        edge (a box containing an edge voxel counts; the paper reports over 60 %)."""
        return bd.boundary_fraction(self.kept_edge_distance(out, label, distance), tolerance)


__all__ = ["TokenSeg", "TokenSegOutput"]
