"""TokenSeg segmentation (after Zeng, Zhou, Zhu and Liu, "TokenSeg: Efficient 3D Medical Image
Segmentation via Hierarchical Visual Token Compression", arXiv 2601.04519, 2026): a multi-scale
hierarchical encoder pools 400 candidate tokens over 4 levels, a boundary-aware tokenizer
(VQ codebook + learned saliency + boundary proximity) keeps 100 of them, and a sparse-to-dense
decoder reprojects them and upsamples with encoder skips. MONAI networks (UNet, SegResNet,
UNETR, SwinUNETR) are trained on the same data for comparison.

    from medvtc.medical.tokenseg import TokenSeg
    net = TokenSeg(spatial_dims=3, in_channels=2, out_channels=3, img_size=(64, 64, 64))

Names are imported lazily (MONAI loads only when first used).
"""

from __future__ import annotations

from medvtc.common.lazy_exports import lazy_exports

_EXPORTS = {
    "TokenSeg": "tokenseg",
    "TokenSegOutput": "tokenseg",
    "HierarchicalEncoder": "hierarchical_encoder",
    "BoundaryAwareTokenizer": "boundary_tokenizer",
    "SparseToDenseDecoder": "sparse_decoder",
    "TokenVectorQuantizer": "vector_quantizer",
    "plan_cells": "hierarchical_encoder",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
