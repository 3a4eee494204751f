"""Plain, obviously-correct reference implementations of the greedy and matching methods.

They are written for clarity, one sample at a time with Python loops, and serve two purposes:
the tests assert that the fast, vectorised methods give the same output, and
`medvtc bench --task compressors` times them side by side with the fast ones.

    divprune(tokens [B, N, D], k) -> index [B, K]      (selection order)
    floc(tokens [B, N, D], k)     -> index [B, K]      (naive greedy: every gain every step)
    tome(x [N, D], k, r_max)      -> [(vector, size, representative id, members)]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def divprune_one(x: torch.Tensor, k: int) -> list[int]:
    """DivPrune for one sample [N, D]: full N x N cosine-distance matrix; first pick = argmax over
    i of min_{j != i} d(i, j); then each step recomputes, for every unselected token, its min
    distance over the whole selected set and takes the argmax (first on ties)."""
    xn = F.normalize(x, dim=-1)
    dist = 1.0 - xn @ xn.T
    off = dist.clone()
    off.fill_diagonal_(float("inf"))
    selected = [int(off.min(dim=1).values.argmax())]
    while len(selected) < k:
        mind = dist[selected].min(dim=0).values  # dist is symmetric: rows are contiguous
        mind[selected] = -float("inf")
        selected.append(int(mind.argmax()))
    return selected


def floc_one(x: torch.Tensor, k: int) -> list[int]:
    """Naive facility-location greedy for one sample [N, D]: every step evaluates the marginal
    gain of every unselected token from the full N x N similarity matrix and takes the best
    (first on ties). F(S) = sum_i max_{j in S} max(0, cos(x_i, x_j))."""
    xn = F.normalize(x, dim=-1)
    sim = xn @ xn.T
    cur = torch.zeros(x.shape[0], dtype=x.dtype)
    chosen: list[int] = []
    for _ in range(k):
        gains = (sim - cur.unsqueeze(0)).clamp_min(0).sum(dim=1)
        if chosen:
            gains[chosen] = -float("inf")
        c = int(gains.argmax())
        chosen.append(c)
        cur = torch.maximum(cur, sim[c].clamp_min(0))
    return chosen


def facility_location(x: torch.Tensor, idx: list[int] | torch.Tensor) -> float:
    """The objective F(S) for one sample."""
    xn = F.normalize(x, dim=-1)
    return float((xn @ xn[torch.as_tensor(idx)].T).clamp_min(0).max(dim=1).values.sum())


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(torch.dot(u, v) / (u.norm() * v.norm()))


def tome(x: torch.Tensor, k: int, r_max: int | None = None) -> list[tuple[torch.Tensor, float, int, list[int]]]:
    """Plain ToMe on one sample x [N, D]: a list of (vector, size, id, members) in source order;
    each round splits it alternately into A (even) and B (odd), matches every A token to its
    most similar B token, merges the r best-matched A tokens (ties: lower A first) into their B
    match by size-weighted average, and keeps the survivors in order."""
    toks = [(x[i].clone(), 1.0, i, [i]) for i in range(x.shape[0])]
    while len(toks) > k:
        m = len(toks)
        a_side, b_side = toks[0::2], toks[1::2]
        r = min(m - k, len(a_side), r_max if r_max is not None else m)
        best = []
        for a in a_side:
            best_j, best_v = 0, -math.inf
            for j, bt in enumerate(b_side):
                v = _cos(a[0], bt[0])
                if v > best_v:
                    best_j, best_v = j, v
            best.append((best_v, best_j))
        order = sorted(range(len(a_side)), key=lambda i: (-best[i][0], i))
        merged = set(order[:r])
        new_b = [list(bt) for bt in b_side]
        for i in sorted(merged):
            vec, size, _, members = a_side[i]
            j = best[i][1]
            total = new_b[j][1] + size
            new_b[j][0] = (new_b[j][0] * new_b[j][1] + vec * size) / total
            new_b[j][1] = total
            new_b[j][3] = new_b[j][3] + members
        out = []
        for pos in range(m):
            if pos % 2 == 0:
                if pos // 2 not in merged:
                    out.append(a_side[pos // 2])
            else:
                out.append(tuple(new_b[pos // 2]))
        toks = out
    return toks


def divprune(tokens: torch.Tensor, k: int) -> torch.Tensor:
    return torch.tensor([divprune_one(x, k) for x in tokens], dtype=torch.long)


def floc(tokens: torch.Tensor, k: int) -> torch.Tensor:
    return torch.tensor([floc_one(x, k) for x in tokens], dtype=torch.long)


def tome_batched(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """Representative ids of the ToMe survivors, [B, K]."""
    return torch.tensor([[t[2] for t in tome(x, k)] for x in tokens], dtype=torch.long)


REFERENCES = {"divprune": divprune, "floc": floc, "tome": tome_batched}


def estimated_seconds(name: str, n: int, k: int, d: int, batch: int) -> float:
    """A rough upper estimate of a reference's time on a 2-core CPU, so the benchmark can skip
    runs that would take hours (or need an N x N matrix larger than memory)."""
    if name in ("divprune", "floc") and 3 * n * n * 4 > 8 * 2**30:
        return math.inf
    if name == "divprune":
        return batch * (2 * n * n * d / 2e10 + k * k * n / 2 / 3e8 + k * 2e-5)
    if name == "floc":
        return batch * (2 * n * n * d / 2e10 + k * n * n / 1.5e9)
    if name == "tome":
        rounds = max(1, math.ceil(math.log2(max(2, n / k))) + 1)
        return batch * rounds * (n / 2) ** 2 * 1.5e-5
    return math.inf


def same_output(name: str, tokens: torch.Tensor, fast_out, ref_index: torch.Tensor) -> bool:
    """Whether a fast method's output equals its reference's on these inputs.

    DivPrune and ToMe: the same selected ids. FLoC: the same facility-location objective (ties in
    the greedy may pick different but equally good tokens), within 1e-5 relative.
    """
    fast = fast_out.index
    if name == "floc":
        return all(
            math.isclose(facility_location(x, f), facility_location(x, r), rel_tol=1e-5)
            for x, f, r in zip(tokens, fast, ref_index)
        )
    return bool(torch.equal(fast.sort(dim=1).values, ref_index.sort(dim=1).values))
