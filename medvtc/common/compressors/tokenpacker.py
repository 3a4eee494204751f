"""TokenPacker: coarse point queries from pooling, refined by attention to their own fine region."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medvtc.common.compressors import utils
from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register

_ADAPTIVE_POOL = {2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def _axis_regions(n: int, m: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-pooling cells of one axis (n inputs -> m outputs): (index [m, r], valid [m, r]).

    Cell i covers [floor(i n / m), ceil((i + 1) n / m)), exactly the window of
    adaptive_avg_pool; r is the longest window; short windows are padded (valid False).
    """
    i = torch.arange(m, device=device)
    start = (i * n) // m
    end = ((i + 1) * n + m - 1) // m
    r = int((end - start).max())
    idx = start[:, None] + torch.arange(r, device=device)[None]
    valid = idx < end[:, None]
    return torch.minimum(idx, end[:, None] - 1), valid


def region_map(grid: tuple[int, ...], out_grid: tuple[int, ...], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """For every output cell (row-major over out_grid) the flat input ids of its region.

    Returns (index [K, R], valid [K, R]) with R the largest region size; invalid slots repeat a
    valid id and must be masked. The regions are the adaptive average pooling windows, so the
    masked mean of a region equals adaptive_avg_pool's output for that cell.
    """
    rank = len(grid)
    strides = [math.prod(grid[a + 1 :]) for a in range(rank)]
    flat = torch.zeros((1,) * (2 * rank), dtype=torch.long, device=device)
    valid = torch.ones((1,) * (2 * rank), dtype=torch.bool, device=device)
    for a in range(rank):
        idx, ok = _axis_regions(grid[a], out_grid[a], device)
        shape = [1] * (2 * rank)
        shape[a], shape[rank + a] = idx.shape
        flat = flat + (idx * strides[a]).view(shape)
        valid = valid & ok.view(shape)
    k = math.prod(out_grid)
    return flat.reshape(k, -1), valid.reshape(k, -1)


def region_centres(grid: tuple[int, ...], out_grid: tuple[int, ...], device=None) -> torch.Tensor:
    """The flat input id of the centre cell of every output cell's region: [K]."""
    centre = torch.zeros((1,) * len(grid), dtype=torch.long, device=device)
    for a in range(len(grid)):
        idx, ok = _axis_regions(grid[a], out_grid[a], device)
        mid = torch.gather(idx, 1, ((ok.sum(1) - 1) // 2).unsqueeze(1)).squeeze(1)
        shape = [1] * len(grid)
        shape[a] = -1
        centre = centre + (mid * math.prod(grid[a + 1 :])).view(shape)
    return centre.reshape(-1)


def _factorable(grid, k) -> bool:
    return utils.factor_grid(grid, k) is not None


@register
class TokenPacker(TokenCompressor):
    """TokenPacker's coarse-to-fine region-to-point injection, in 2D and 3D.

    Paper: Li et al. 2024, "TokenPacker: Efficient Visual Projector for Multimodal LLM". The
    visual grid is downsampled into low-resolution point queries (the coarse, overall view);
    each point query then cross-attends to the high-resolution tokens of its own local region
    (region-to-point injection) and the result updates the point query.

    Here: the output layout is utils.factor_grid(grid, K) (exactly K points, aspect kept);
    point queries are adaptive average pooling of the tokens (the paper interpolates
    bilinearly); each point attends (multi-head, `heads`) only to the input cells that pooled
    into it (adaptive pooling windows, so grids that do not divide evenly work: regions then
    differ in size by one and are masked); out = q + W_o Attn(LN q, LN region) followed by a
    residual MLP. The paper uses region features from several ViT layers as keys/values; here
    there is one level (the tokens given), and the projection to the LLM width is left to the
    caller. Budgets that cannot be laid out inside the grid (a prime K larger than every side)
    are a ValueError that names the nearest achievable budgets.

    Shapes: tokens [B, N, D] (D == dim), grid (H, W) or (D, H, W)/(T, H, W);
    out.tokens [B, K, D], out.grid the output layout, out.index [B, K] each region's centre
    token, out.size [B, K] region sizes.

    Cost (R ~ N/K region size): pooling N D, queries/output/MLP (4 + 4 r) K D^2, keys/values
    on the regions 4 K R D^2 (~4 N D^2), attention 4 K R D (~4 N D).
    """

    name = "tokenpacker"
    needs_grid = True
    grid_ranks = (2, 3)
    learnable = True

    def __init__(
        self,
        dim: int,
        budget: int | float | None = None,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        chunk_tokens: int = 65536,
    ) -> None:
        super().__init__(budget)
        if dim <= 0 or heads <= 0 or dim % heads:
            raise ValueError(f"tokenpacker: dim={dim} must be a positive multiple of heads={heads}")
        if chunk_tokens <= 0:
            raise ValueError("tokenpacker: chunk_tokens must be positive")
        self.dim, self.heads, self.chunk_tokens = dim, heads, chunk_tokens
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        hidden = max(1, int(dim * mlp_ratio))
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self._region_cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def output_grid(self, grid: tuple[int, ...], k: int) -> tuple[int, ...]:
        out_grid = utils.factor_grid(grid, k)
        if out_grid is None:
            near = utils.achievable(grid, k, _factorable)
            raise ValueError(
                f"tokenpacker: budget K={k} cannot be laid out as a grid inside {grid}; "
                f"nearest achievable budgets: {near}"
            )
        return out_grid

    def regions(self, grid, out_grid, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(index [K, R], valid [K, R], centre [K]) of the regions, cached for the last layout."""
        key = (grid, out_grid, device)
        if self._region_cache is None or self._region_cache[0] != key:
            self._region_cache = (key, (*region_map(grid, out_grid, device), region_centres(grid, out_grid, device)))
        return self._region_cache[1]

    def _inject(self, q: torch.Tensor, tokens: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """q [B, c, D] projected queries of c cells, idx/valid [c, R] -> attended values [B, c, D]."""
        b, c, d = q.shape
        h, dh = self.heads, d // self.heads
        region = self.norm_kv(tokens[:, idx])  # [B, c, R, D]
        r = region.shape[2]
        k = self.to_k(region).view(b, c, r, h, dh).transpose(2, 3)  # [B, c, h, R, dh]
        v = self.to_v(region).view(b, c, r, h, dh).transpose(2, 3)
        qh = q.view(b, c, h, 1, dh)
        logits = torch.matmul(qh, k.transpose(-1, -2)) * dh**-0.5  # [B, c, h, 1, R]
        if not bool(valid.all()):
            logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
        # plain matmuls, not SDPA: FlopCounterMode counts no SDPA FLOPs on CPU
        return torch.matmul(torch.softmax(logits, dim=-1), v).reshape(b, c, d)

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, d = tokens.shape
        if d != self.dim:
            raise ValueError(f"tokenpacker: tokens have D={d} but the module was built with dim={self.dim}")
        out_grid = self.output_grid(grid, k)
        coarse, _ = utils.from_spatial(_ADAPTIVE_POOL[len(grid)](utils.to_spatial(tokens, grid), out_grid))
        idx, valid, centre = self.regions(grid, out_grid, tokens.device)
        q = self.to_q(self.norm_q(coarse))
        cells = max(1, self.chunk_tokens // (b * idx.shape[1]))
        attn = torch.cat(
            [self._inject(q[:, s : s + cells], tokens, idx[s : s + cells], valid[s : s + cells]) for s in range(0, k, cells)],
            dim=1,
        )
        out = coarse + self.to_out(attn)
        out = out + self.ff(out)
        count = valid.sum(dim=1)
        return CompressorOutput(
            tokens=out,
            index=centre.unsqueeze(0).expand(b, k),
            size=count.to(tokens.dtype).unsqueeze(0).expand(b, k),
            grid=out_grid,
        )

    @staticmethod
    def cost(n: int, k: int, d: int, mlp_ratio: float = 4.0) -> float:
        return float(n * d + (4 + 4 * mlp_ratio) * k * d * d + 4 * n * d * d + 4 * n * d)
