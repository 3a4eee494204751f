"""Label boundaries for TokenSeg: edge maps, distance to the nearest edge, and per-cell minima.

TokenSeg (Zeng, Zhou, Zhu and Liu, "TokenSeg: Efficient 3D Medical Image Segmentation via
Hierarchical Visual Token Compression", arXiv 2601.04519, 2026) supervises its importance score
with the proximity of every candidate token to a label boundary, and reports the share of kept
tokens that lie near one. Both need, for each token's box of voxels, the smallest distance from
the box to a label edge; these helpers compute it.

- `label_edges(label)`: a voxel is an edge voxel when its 3x3x3 neighbourhood holds another label
  value (every class boundary counts, background included). Max/min pooling, batched.
- `edge_distance(label)`: Euclidean distance (voxels) of every voxel to the nearest edge voxel,
  through MONAI's `distance_transform_edt` (scipy, or cupy on CUDA when installed). A volume with
  no edge (one label everywhere) gets `no_edge_distance` everywhere.
- `box_min(values, boxes)`: the minimum of a map over each token's box, [B, K].

Written by hand because no library gives "distance from an arbitrary box to the nearest label
edge"; MONAI gives the distance transform used underneath.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NO_EDGE = 1e4  # distance given to every voxel of a volume without any label edge


def label_edges(label: torch.Tensor) -> torch.Tensor:
    """label [B, 1, *S] (integer class ids, any dtype) -> bool [B, 1, *S], True on edge voxels."""
    if label.ndim not in (4, 5) or label.shape[1] != 1:
        raise ValueError(f"label must be [B, 1, *spatial] with 2 or 3 spatial dims, got {tuple(label.shape)}")
    x = label.float()
    pool = F.max_pool3d if x.ndim == 5 else F.max_pool2d
    hi = pool(x, 3, 1, 1)
    lo = -pool(-x, 3, 1, 1)
    return hi != lo


def edge_distance(label: torch.Tensor, no_edge_distance: float = NO_EDGE) -> torch.Tensor:
    """label [B, 1, *S] -> float32 [B, 1, *S]: distance in voxels to the nearest label edge."""
    from monai.transforms.utils import distance_transform_edt

    edges = label_edges(label)
    out = torch.empty(edges.shape, dtype=torch.float32, device=label.device)
    for b in range(edges.shape[0]):
        e = edges[b]
        if not bool(e.any()):
            out[b] = no_edge_distance
            continue
        dist = distance_transform_edt((~e).to(torch.uint8).cpu())
        out[b] = torch.as_tensor(dist, dtype=torch.float32).to(label.device)
    return out


def box_min(values: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Minimum of `values` [B, 1, *S] over each box of `boxes` [B, K, 2, R] (integer voxel
    bounds, lo inclusive, hi exclusive, one row per axis) -> [B, K].

    Boxes are axis-aligned, so the minimum is separable. The last axis is reduced once per
    distinct interval (token boxes share few distinct intervals per axis: the cell windows of
    each level), then every box's slab is gathered ([B, K, *S[:-1]], small) and reduced over the
    remaining axes with masks. Memory stays at K x prod(S[:-1]) per sample, never K x prod(S).
    """
    b, k = boxes.shape[:2]
    spatial = tuple(values.shape[2:])
    rank = len(spatial)
    if boxes.shape[-1] != rank:
        raise ValueError(f"boxes have {boxes.shape[-1]} axes, values {rank}")
    boxes = boxes.long()
    lo = boxes[:, :, 0].clamp(0)
    hi = torch.minimum(boxes[:, :, 1], torch.tensor(spatial, device=boxes.device)).clamp_min(lo + 1)
    big = torch.finfo(values.dtype).max
    # last axis: one reduction per distinct interval
    last = torch.stack([lo[..., -1], hi[..., -1]], dim=-1).reshape(-1, 2)
    uniq, inverse = torch.unique(last, dim=0, return_inverse=True)
    table = torch.stack([values[:, 0, ..., int(s) : int(e)].amin(dim=-1) for s, e in uniq.tolist()], dim=1)  # [B, U, *S[:-1]]
    x = table.gather(1, inverse.view(b, k, *([1] * (rank - 1))).expand(b, k, *spatial[:-1]))
    for a in range(rank - 1):  # x: [B, K, S_a, ..., S_{rank-2}]
        n = spatial[a]
        idx = torch.arange(n, device=values.device)
        inside = (idx >= lo[..., a : a + 1]) & (idx < hi[..., a : a + 1])  # [B, K, n]
        shape = (b, k, n) + (1,) * (rank - 2 - a)
        x = torch.where(inside.view(shape), x, torch.full((), big, dtype=x.dtype, device=x.device)).amin(dim=2)
    return x


def box_proximity_target(distance_to_box: torch.Tensor, sigma: float) -> torch.Tensor:
    """Boundary proximity in [0, 1]: exp(-d / sigma); 1 for a box containing an edge voxel."""
    return torch.exp(-distance_to_box.clamp_min(0) / max(float(sigma), 1e-6))


def boundary_fraction(
    distance_to_box: torch.Tensor, tolerance: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Share of boxes whose nearest label edge is at most `tolerance` voxels away, per sample
    [B] (boxes that contain an edge voxel have distance 0). `mask` [B, K] excludes padding."""
    near = (distance_to_box <= tolerance).float()
    if mask is None:
        return near.mean(dim=1)
    m = mask.float()
    return (near * m).sum(1) / m.sum(1).clamp_min(1.0)


__all__ = ["NO_EDGE", "label_edges", "edge_distance", "box_min", "box_proximity_target", "boundary_fraction"]
