"""ToMe: bipartite soft matching with size tracking, repeated until exactly K tokens remain."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medvtc.common.compressors.base import CompressorOutput, TokenCompressor, register

# Elements of one A-chunk x B similarity block (float32: 64M elements = 256 MiB). At N=32768,
# B=8 the full A x B matrix would be 8 GiB; chunking keeps it to one block at a time.
_CHUNK_ELEMS = 1 << 26


def proportional_attention_bias(size: torch.Tensor) -> torch.Tensor:
    """ToMe's proportional attention: add log(size) to the attention logits of each key, so a
    merged token counts as many times as the tokens it stands for. size [B, K] -> [B, K];
    broadcast as bias[:, None, None, :] over [B, heads, queries, keys]."""
    return size.clamp_min(torch.finfo(size.dtype).tiny).log()


def _best_match(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row of `a` [B, Na, D]: the max cosine similarity to `b` [B, Nb, D] and its
    argmax, computed in A-row chunks so that only one [B, chunk, Nb] block lives at a time."""
    an = F.normalize(a, dim=-1)
    bn = F.normalize(b, dim=-1).transpose(1, 2)
    bsz, na, nb = a.shape[0], a.shape[1], b.shape[1]
    chunk = max(1, _CHUNK_ELEMS // max(1, bsz * nb))
    vals, idxs = [], []
    for s in range(0, na, chunk):
        best = torch.bmm(an[:, s : s + chunk], bn).max(dim=-1)
        vals.append(best.values)
        idxs.append(best.indices)
    return torch.cat(vals, 1), torch.cat(idxs, 1)


def merge_round(
    x: torch.Tensor, size: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One round of bipartite soft matching on x [B, M, D] with sizes [B, M], merging r tokens.

    A = even positions, B = odd positions. Each A token finds its most cosine-similar B token;
    the r A tokens with the highest such similarity are merged into their B match by
    size-weighted average. Returns (x', size', keep [B, M] bool, newpos [B, M]): the surviving
    tokens in their previous relative order, and for every old position its new position.
    """
    bsz, m, d = x.shape
    with torch.no_grad():
        node_max, node_idx = _best_match(x[:, 0::2].detach(), x[:, 1::2].detach())
        edge = torch.sort(node_max, dim=1, descending=True, stable=True).indices[:, :r]
        src = 2 * edge  # positions of the merged A tokens
        dst = 2 * node_idx.gather(1, edge) + 1  # positions of their B matches
        keep = torch.ones(bsz, m, dtype=torch.bool, device=x.device)
        keep.scatter_(1, src, False)
        newpos = torch.cumsum(keep, dim=1) - 1
        newpos = newpos.scatter(1, src, newpos.gather(1, dst))
        changed = torch.zeros_like(keep).scatter_(1, dst, True)
    weighted = x.to(size.dtype) * size.unsqueeze(-1)
    src_d, dst_d = src.unsqueeze(-1).expand(-1, -1, d), dst.unsqueeze(-1).expand(-1, -1, d)
    weighted = weighted.scatter_add(1, dst_d, weighted.gather(1, src_d))
    size = size.scatter_add(1, dst, size.gather(1, src))
    # only the B tokens that absorbed something change (others stay bit-identical)
    x = torch.where(changed.unsqueeze(-1), (weighted / size.unsqueeze(-1)).to(x.dtype), x)
    return x[keep].view(bsz, m - r, d), size[keep].view(bsz, m - r), keep, newpos


@register
class ToMe(TokenCompressor):
    """Token Merging by bipartite soft matching, repeated in rounds until exactly K remain.

    Paper: Bolya et al., "Token Merging: Your ViT but Faster" (ICLR 2023), bipartite soft
    matching with size tracking and proportional attention (official code:
    facebookresearch/ToMe, tome/merge.py).

    One round on M tokens: split them alternately into A (even positions) and B (odd), find for
    every A token its most cosine-similar B token, merge the r A tokens with the most similar
    matches into those B tokens by size-weighted average (sizes add up). r = min(M - K, |A|,
    `r`), so rounds repeat until exactly K tokens remain; with the default `r=None` each round
    merges as many as it may (up to half), i.e. about log2(N/K) rounds.

    What differs from the paper:
    - ToMe runs one round inside every transformer block, on the attention keys, with a fixed r
      per block; here it is a standalone compressor on the tokens themselves, rounds back to
      back, r chosen to land exactly on K.
    - Surviving tokens stay in source order (official ToMe concatenates [unmerged A, B]); the
      order matters here because it drives the next round's A/B alternation (on a row-major
      grid of even width, alternate columns), so a round always pairs spatial neighbours'
      sets. Tokens keep the source order of their representative.
    - No protected [CLS] token (the inputs are patch tokens only).
    The matching itself is not differentiated (as in ToMe); gradients flow through the merges.

    Outputs: tokens [B, K, D], size [B, K] (source tokens per output, at least float32; pass to
    `proportional_attention_bias`), index (each output's representative source id: the token
    that absorbed the others, which is always a B-side survivor), and assign [B, K, N] (hard,
    one-hot) only when `return_assign=True`.

    Cost: a round on M tokens costs 2*(M/2)^2*D for the similarities plus ~4*M*D for
    normalisation and merging; summed over the rounds (about (2/3)*N^2*D for N >> K with
    maximal rounds). `cost` simulates the round schedule.
    """

    name = "tome"

    def __init__(self, budget: int | float | None = None, r: int | None = None, return_assign: bool = False) -> None:
        super().__init__(budget)
        if r is not None and (isinstance(r, bool) or int(r) != r or r < 1):
            raise ValueError(f"{self.name}: r (merges per round) must be a positive int or None, got {r!r}")
        self.r = None if r is None else int(r)
        self.return_assign = bool(return_assign)

    @staticmethod
    def schedule(n: int, k: int, r: int | None = None) -> list[int]:
        """Merges per round to go from n to k tokens."""
        rounds, m = [], n
        while m > k:
            step = min(m - k, (m + 1) // 2, r if r is not None else m)
            rounds.append(step)
            m -= step
        return rounds

    def compress(self, tokens, grid, k, *, text, text_mask, scores) -> CompressorOutput:
        b, n, d = tokens.shape
        x = tokens
        # sizes (and the weighted sums) in at least float32: bf16 cannot count past 256
        size = torch.ones(b, n, device=tokens.device, dtype=torch.promote_types(tokens.dtype, torch.float32))
        ids = torch.arange(n, device=tokens.device).expand(b, n)
        source_slot = ids  # for every source token, its current position
        for r in self.schedule(n, k, self.r):
            m = x.shape[1]
            x, size, keep, newpos = merge_round(x, size, r)
            ids = ids[keep].view(b, m - r)
            if self.return_assign:
                source_slot = newpos.gather(1, source_slot)
        assign = None
        if self.return_assign:
            assign = F.one_hot(source_slot, k).to(tokens.dtype).transpose(1, 2)
        return CompressorOutput(tokens=x, index=ids, assign=assign, size=size)

    @staticmethod
    def cost(n: int, k: int, d: int) -> float:
        total, m = 0.0, n
        for r in ToMe.schedule(n, k):
            na, nb = (m + 1) // 2, m // 2
            total += 2.0 * na * nb * d + 4.0 * m * d
            m -= r
        return total

    def extra_repr(self) -> str:
        return f"name={self.name!r}, budget={self.budget!r}, r={self.r}"
