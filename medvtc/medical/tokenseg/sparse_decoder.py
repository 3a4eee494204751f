"""TokenSeg's sparse-to-dense decoder: kept tokens are mixed, reprojected onto the coarse grid
at their positions, then progressively upsampled with encoder skip connections.

After TokenSeg (Zeng, Zhou, Zhu and Liu, arXiv 2601.04519, 2026), section "sparse-to-dense
decoder": token reprojection, progressive upsampling and skip connections reconstruct the full
resolution mask from the K kept tokens.

How ours does it:
1. Mixing: `num_layers` pre-norm transformer encoder layers (torch's `TransformerEncoderLayer`;
   MONAI's `TransformerBlock` always builds cross-attention weights that would sit unused, which
   DDP rejects) over the K kept tokens (K = 100, so self-attention costs K^2 D: the global
   context is cheap).
2. Reprojection (written here; no library scatters boxes of tokens onto a grid): the coarse
   grid is the encoder's level `coarse_level` grid (stride 2^coarse_level, default 8). Each
   kept token is painted over every coarse voxel its box overlaps with weight 1 / (its box's
   volume in coarse voxels), so a small (fine-level) token dominates a large one where they
   overlap; each coarse voxel takes the weighted mean of the tokens covering it, a learned
   "empty" vector where none does, plus a coverage channel (1 where some token lies). The
   encoder's dense features at this level and coarser are not used: what the decoder knows
   at the coarse scale comes through the kept tokens only.
3. Progressive upsampling: a MONAI `UnetResBlock` on the reprojected grid, then one MONAI
   `UnetUpBlock` (transposed convolution, concatenation with the encoder skip of that level,
   residual conv block) per level down to full resolution, and a 1x1x1 output convolution.

Shapes: kept [B, K, D], boxes [B, K, 2, 3] (input voxels [lo, hi)), skips[l] [B, f*2^l,
*ceil(S/2^l)] -> logits [B, out_channels, *S].
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, UnetUpBlock
from torch import nn


def _fit(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop or zero-pad the spatial dims of x to `size` (odd skip sizes after ceil-division)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    pad: list[int] = []
    for have, want in zip(reversed(x.shape[2:]), reversed(tuple(size))):
        pad += [0, max(0, want - have)]
    x = F.pad(x, pad)
    slices = (slice(None), slice(None)) + tuple(slice(0, s) for s in size)
    return x[slices]


def reproject(
    tokens: torch.Tensor, boxes: torch.Tensor, grid: Sequence[int], stride: int, empty: torch.Tensor
) -> torch.Tensor:
    """Paint tokens [B, K, D] with input-voxel boxes [B, K, 2, R] onto a coarse grid of the
    given `stride`: [B, D + 1, *grid] (the last channel is coverage). See the module docstring."""
    b, k, d = tokens.shape
    grid = tuple(int(g) for g in grid)
    lo = torch.div(boxes[:, :, 0], stride, rounding_mode="floor")
    hi = torch.div(boxes[:, :, 1] + stride - 1, stride, rounding_mode="floor")
    hi = torch.maximum(hi, lo + 1)
    member = None
    volume = torch.ones(b, k, device=tokens.device, dtype=tokens.dtype)
    for a, n in enumerate(grid):
        idx = torch.arange(n, device=tokens.device)
        m = ((idx >= lo[..., a : a + 1]) & (idx < hi[..., a : a + 1])).to(tokens.dtype)  # [B, K, n]
        volume = volume * m.sum(-1).clamp_min(1)
        member = m if member is None else member.unsqueeze(-1) * m.view(b, k, *([1] * a), n)
    assert member is not None
    weights = member.reshape(b, k, -1) / volume.unsqueeze(-1)  # [B, K, V]
    mass = weights.sum(1)  # [B, V]
    painted = torch.einsum("bkv,bkd->bdv", weights, tokens) / mass.clamp_min(1e-6).unsqueeze(1)
    covered = (mass > 0).to(tokens.dtype).unsqueeze(1)  # [B, 1, V]
    painted = painted * covered + empty.to(tokens.dtype).view(1, d, 1) * (1 - covered)
    return torch.cat([painted, covered], dim=1).reshape(b, d + 1, *grid)


class SparseToDenseDecoder(nn.Module):
    """Sparse-to-dense decoder of TokenSeg (arXiv 2601.04519, 2026); see the module docstring.

    Args:
        spatial_dims: 3.
        token_dim: D of the kept tokens.
        out_channels: segmentation classes (background included).
        feature_size: f of the encoder (level l skip has f * 2^l channels).
        coarse_level: the level whose grid the tokens are reprojected to (1..4; default 3).
        num_layers, num_heads, mlp_ratio: the token mixer (0 layers: no mixing).
        norm_name: normalisation of the MONAI conv blocks.
    """

    def __init__(
        self,
        spatial_dims: int,
        token_dim: int,
        out_channels: int,
        feature_size: int = 16,
        coarse_level: int = 3,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        norm_name: str | tuple = "instance",
    ) -> None:
        super().__init__()
        if not 1 <= coarse_level <= 4:
            raise ValueError(f"coarse_level must be in 1..4, got {coarse_level}")
        if num_layers and token_dim % num_heads:
            raise ValueError(f"token_dim={token_dim} must be divisible by num_heads={num_heads}")
        self.spatial_dims = spatial_dims
        self.coarse_level = coarse_level
        channels = [feature_size * 2**lev for lev in range(coarse_level + 1)]
        self.mixer = nn.ModuleList(
            nn.TransformerEncoderLayer(token_dim, num_heads, int(token_dim * mlp_ratio), dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(num_layers)
        )
        self.mixer_norm = nn.LayerNorm(token_dim) if num_layers else nn.Identity()
        self.empty = nn.Parameter(torch.zeros(token_dim))
        self.bottleneck = UnetResBlock(spatial_dims, token_dim + 1, channels[coarse_level], kernel_size=3, stride=1, norm_name=norm_name)
        self.up = nn.ModuleList(
            UnetUpBlock(spatial_dims, channels[lev], channels[lev - 1], kernel_size=3, stride=1,
                        upsample_kernel_size=2, norm_name=norm_name)
            for lev in range(coarse_level, 0, -1)
        )
        self.out = UnetOutBlock(spatial_dims, channels[0], out_channels)

    def forward(self, kept: torch.Tensor, boxes: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        t = kept
        for block in self.mixer:
            t = block(t)
        t = self.mixer_norm(t)
        c = self.coarse_level
        grid = skips[c].shape[2:]
        x = reproject(t, boxes, grid, 2**c, self.empty)
        x = self.bottleneck(x)
        for i, block in enumerate(self.up):
            skip = skips[c - 1 - i]
            up = _fit(block.transp_conv(x), skip.shape[2:])
            x = block.conv_block(torch.cat([up, skip], dim=1))
        return self.out(x)


__all__ = ["SparseToDenseDecoder", "reproject"]
