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

from medvtc.medical.ct_report.channel_standardizer import ChannelStandardizer

# Input elements (batch x channels x voxels) per slab when a compact (float16) input is embedded
# slab by slab: 4 Mi float32 elements = 16 MiB (a 10 x 64 x 64 x 32 volume, the training size, is 2.5 Mi).
_SLAB_ELEMENTS = 1 << 22


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
        standardize_input: standardise each input channel by its training-set mean and std
            before the patch embedding (`input_standardizer`, a `ChannelStandardizer`, fitted
            by the caller; the identity until then).
        input_min_std: the standardizer's floor on a channel's std (the largest gain it gives).

    Input dtype: `x` of the weights' dtype goes through as it is; a lower-precision float `x`
    (float16 channels, `datasets.ct_rate.CHANNEL_DTYPES`) is embedded slab by slab along X
    (`embed_patches`): each slab of whole patch rows is cast to the weights' dtype, embedded, and
    only its tokens are kept, so the input never exists whole in float32 (a 512 x 512 x 256 CT's
    ten channels: 2560 MiB). Other dtypes are cast whole, as `x.to(weights' dtype)`.

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
        standardize_input: bool = False,
        input_min_std: float = 0.01,
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
        self.input_standardizer = ChannelStandardizer(in_channels, input_min_std) if standardize_input else None

    def _stem_input(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """What the patch embedding reads: `x` (or a slab of it) in the weights' dtype, standardised."""
        x = x.to(dtype)
        return x if self.input_standardizer is None else self.input_standardizer(x)

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
        weight_dtype = self.patch_embedding.position_embeddings.dtype
        if x.is_floating_point() and x.dtype.itemsize < weight_dtype.itemsize:
            h = self.embed_patches(x)  # a compact input: slab by slab
        else:
            h = self.patch_embedding(self._stem_input(x, weight_dtype))  # [B, N, D]; Conv3d output flattened over (X', Y', Z')
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            h = checkpoint(block, h, use_reentrant=False) if ckpt else block(h)
        return self.norm(h)

    def _halo(self) -> tuple[int, int]:
        """Input rows along X that a slab needs before and after its own patches so that the
        embedding of every patch in it is the whole volume's: none for the plain patch embedding
        (kernel = stride, no padding: each patch alone); for the conv stem the reach of a token's
        receptive field beyond its patch, traced back through the convolutions (output j of a
        convolution reads inputs stride * j - padding ... + kernel - 1), rounded up to whole
        patches so that every slab starts on each layer's stride grid. Conv stem, 8-voxel patches
        along X: rows -7 ... 7 around a patch of rows 0 ... 7, so (8, 0)."""
        lo, hi = 0, 0  # the receptive field of token 0, in the current layer's input positions
        convs = [m for m in self.patch_embedding.patch_embeddings.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        for m in reversed(convs):
            k, st, pad = m.kernel_size[0], m.stride[0], m.padding[0]
            lo, hi = st * lo - pad, st * hi - pad + k - 1
        px = self.patch_size[0]
        return -(-max(0, -lo) // px) * px, -(-max(0, hi - (px - 1)) // px) * px

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, X, Y, Z] in any float dtype -> patch embeddings + positions [B, N, D], as
        `self.patch_embedding(x.to(weights' dtype))`, but cast and embedded one slab of whole
        patch rows along X at a time (about `_SLAB_ELEMENTS` input elements, at least one patch
        row), plus the `_halo()` rows before and after it, embedded and dropped; only the
        tokens are concatenated. The patch embedding is local along X (a strided convolution, or the
        conv stem within its receptive field), so each token is what the whole volume gives, up
        to float rounding (the convolution may sum in another order on a smaller input).

        A conv stem whose BatchNorm is in training mode normalises with the whole batch's
        statistics, which slabs would change: it is given the whole input cast at once.

        Why not MONAI's `sliding_window_inference`: it stitches a whole network's outputs, and a
        ViT's tokens are not local (global attention); only its patch embedding is, so it is the
        part run slab by slab, through MONAI's own block (its projection, positions, dropout)."""
        pe = self.patch_embedding
        dtype = pe.position_embeddings.dtype
        stem = pe.patch_embeddings
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in stem.modules()):
            return pe(self._stem_input(x, dtype))
        px, n_x = self.patch_size[0], x.shape[2]
        row = max(1, x[:, :, :1].numel())
        step = max(1, _SLAB_ELEMENTS // (row * px)) * px
        before, after = self._halo()
        parts = []
        for x0 in range(0, n_x, step):
            x1 = min(n_x, x0 + step)
            a, b = max(0, x0 - before), min(n_x, x1 + after)
            y = stem(self._stem_input(x[:, :, a:b], dtype))  # [B, D, (b - a) / px, Y', Z']
            parts.append(y[:, :, (x0 - a) // px : (x1 - a) // px])
        y = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
        # the rest of MONAI's PatchEmbeddingBlock.forward (proj_type="conv")
        return pe.dropout(y.flatten(2).transpose(-1, -2) + pe.position_embeddings)


__all__ = ["CTViTEncoder", "conv_stem"]
