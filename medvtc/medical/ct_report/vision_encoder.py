"""The 3D ViT that reads a CT volume (the vision encoder of Argus, Liu et al., arXiv 2406.07146),
assembled from MONAI's `PatchEmbeddingBlock`, `Convolution` and `TransformerBlock`."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from monai.networks.blocks import Convolution, PatchEmbeddingBlock, TransformerBlock
from monai.utils import ensure_tuple_rep
from torch import nn
from torch.utils.checkpoint import checkpoint


def conv_stem(spatial_dims: int, in_channels: int, patch_size: Sequence[int], hidden_size: int, channels: int = 16) -> nn.Sequential:
    """A convolutional patch embedding (Xiao et al., "Early Convolutions Help Transformers See
    Better", NeurIPS 2021): stride-2 3x3x3 convolutions (BatchNorm + GELU), doubling the channels
    from `channels`, until each axis is downsampled by its patch size, then a 1x1x1 projection to
    `hidden_size`. [B, C, X, Y, Z] -> [B, hidden_size, X/px, Y/py, Z/pz].

    Why: trained from scratch on a few hundred CTs, the plain ViT's single linear patch projection
    learned next to nothing about the findings in our runs (mean label AUC 0.51 after 300 steps),
    where this stem reached 0.60. BatchNorm rather than instance/group norm, because those remove
    each volume's mean intensity, and density is what several findings are (emphysema, effusion).
    Patch sizes must be powers of two."""
    for p in patch_size:
        if p < 1 or p & (p - 1):
            raise ValueError(f"the conv stem needs power-of-two patch sizes, got {tuple(patch_size)}")
    steps = max(int(p).bit_length() - 1 for p in patch_size)
    layers: list[nn.Module] = []
    remaining, c_in = list(patch_size), in_channels
    for i in range(steps):
        strides = tuple(2 if r > 1 else 1 for r in remaining)
        remaining = [r // s for r, s in zip(remaining, strides)]
        c_out = channels * 2**i
        layers.append(Convolution(spatial_dims, c_in, c_out, strides=strides, kernel_size=3, act="GELU", norm="BATCH"))
        c_in = c_out
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
    layers.append(conv(c_in, hidden_size, kernel_size=1))
    return nn.Sequential(*layers)


class CTViTEncoder(nn.Module):
    """A 3D ViT: patch embedding + learned position embeddings, `num_layers` pre-norm transformer
    blocks, a final LayerNorm; no [CLS] token (every output is a patch token, so the tokens form a
    grid a compressor can pool or shuffle). The patch embedding is MONAI's strided convolution
    (`stem="patch"`, the plain ViT) or a small convolutional stem (`stem="conv"`, `conv_stem`).

    Args:
        spatial_dims: 3 for volumes (2 works too).
        in_channels: C of the input (1 for CT).
        img_size: (X, Y, Z) of the input; fixed, because the position embeddings are learned.
        patch_size: (px, py, pz), dividing img_size.
        hidden_size: token width D.
        num_layers, num_heads, mlp_dim: transformer depth, heads (D % heads == 0), MLP width.
        dropout_rate: dropout of the embeddings, attention and MLP.
        stem: "patch" (one strided convolution per patch) or "conv" (`conv_stem`; power-of-two
            patch sizes; its BatchNorm statistics are frozen with the encoder, see
            `CTReportModel.train`).
        qkv_bias: bias of the fused qkv projection.
        use_sdpa: run attention through `torch.nn.functional.scaled_dot_product_attention`
            (MONAI's `use_flash_attention=True`). This never materialises the [heads, N, N]
            attention matrix, so a 512x512x256 CT with 16^3 patches (N = 16384 tokens) fits:
            the einsum path would need 4 bytes * heads * N^2 = 4 GiB per sample and layer.
        gradient_checkpointing: recompute every block in the backward pass
            (`torch.utils.checkpoint`, non-reentrant) to trade compute for activation memory.

    Shapes:
        forward(x [B, C, X, Y, Z]) -> tokens [B, N, D], N = (X/px)(Y/py)(Z/pz), ordered
        row-major over `self.grid` = (X/px, Y/py, Z/pz) (the last axis varies fastest), which is
        the layout `CompressorOutput`'s grid-based compressors expect.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        img_size: Sequence[int] | int = (64, 64, 32),
        patch_size: Sequence[int] | int = (8, 8, 4),
        hidden_size: int = 192,
        num_layers: int = 4,
        num_heads: int = 4,
        mlp_dim: int = 384,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        use_sdpa: bool = True,
        gradient_checkpointing: bool = False,
        stem: str = "patch",
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.img_size = tuple(ensure_tuple_rep(img_size, spatial_dims))
        self.patch_size = tuple(ensure_tuple_rep(patch_size, spatial_dims))
        for s, p in zip(self.img_size, self.patch_size):
            if s % p:
                raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {self.patch_size}")
        self.grid: tuple[int, ...] = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = math.prod(self.grid)
        self.hidden_size = hidden_size
        self.dropout_rate = dropout_rate
        self.gradient_checkpointing = gradient_checkpointing

        # conv patch embedding (a strided Conv3d) + learnable position embeddings, MONAI's ViT recipe
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=in_channels,
            img_size=self.img_size,
            patch_size=self.patch_size,
            hidden_size=hidden_size,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type="learnable",
            dropout_rate=dropout_rate,
            spatial_dims=spatial_dims,
        )
        if stem == "conv":
            # MONAI's block flattens whatever `patch_embeddings` returns and adds the positions.
            self.patch_embedding.patch_embeddings = conv_stem(spatial_dims, in_channels, self.patch_size, hidden_size)
        elif stem != "patch":
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        self.stem = stem
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(
                    hidden_size,
                    mlp_dim,
                    num_heads,
                    dropout_rate=dropout_rate,
                    qkv_bias=qkv_bias,
                    use_flash_attention=use_sdpa,
                )
                for _ in range(num_layers)
            ]
        )
        for block in self.blocks:
            # MONAI 1.5's TransformerBlock builds a cross-attention branch (4 D^2 weights + a
            # LayerNorm) even with with_cross_attention=False and never calls it. Drop it: dead
            # weights would inflate the parameter count, get no gradient (DDP would need
            # find_unused_parameters) and be saved in every checkpoint.
            block.cross_attn = nn.Identity()
            block.norm_cross_attn = nn.Identity()
        self.norm = nn.LayerNorm(hidden_size)

    def train(self, mode: bool = True) -> "CTViTEncoder":
        super().train(mode)
        # MONAI's SABlock passes `dropout_p=self.dropout_rate` to SDPA unconditionally, so
        # attention dropout would stay on in eval mode; switch it with the module's mode.
        for block in self.blocks:
            block.attn.dropout_rate = self.dropout_rate if mode else 0.0
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, X, Y, Z] -> tokens [B, N, D] on the grid `self.grid`."""
        expected = (self.in_channels, *self.img_size)
        if x.ndim != self.spatial_dims + 2 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"CTViTEncoder expects [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        h = self.patch_embedding(x)  # [B, N, D]; Conv3d output flattened over (X', Y', Z')
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            h = checkpoint(block, h, use_reentrant=False) if ckpt else block(h)
        return self.norm(h)


__all__ = ["CTViTEncoder", "conv_stem"]
