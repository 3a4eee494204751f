"""The boundary-aware tokenizer: VQ codebook (commitment loss, EMA, dead-code restart), label-edge
distances, the boundary target and loss, and the near-boundary share of kept tokens."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from medvtc.medical.tokenseg import boundary as bd
from medvtc.medical.tokenseg.vector_quantizer import TokenVectorQuantizer

from .conftest import cube_label


def _clusters(n_per: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0], [0, 0, 0, 4.0]])
    pts = centres.repeat_interleave(n_per, 0) + 0.1 * torch.randn(4 * n_per, 4, generator=g)
    return pts[torch.randperm(len(pts), generator=g)].reshape(2, -1, 4), centres


def test_first_step_initialises_codes_from_data_and_commitment_loss_is_beta_mse():
    torch.manual_seed(0)
    vq = TokenVectorQuantizer(4, num_embeddings=8, commitment_cost=0.25, decay=0.9)
    tokens, _ = _clusters()
    q, loss, codes = vq(tokens)
    assert bool(vq.initialized)
    # every code sits on (a jittered copy of) a batch token
    dist = torch.cdist(vq.codebook, tokens.reshape(-1, 4)).amin(dim=1)
    assert dist.max() < 0.1
    assert codes.shape == (2, 128) and q.shape == tokens.shape
    assert torch.allclose(loss, 0.25 * F.mse_loss(q.detach(), tokens), rtol=1e-4)
    # straight-through: the gradient of the quantised tokens w.r.t. the inputs is the identity
    x = tokens.clone().requires_grad_(True)
    vq.eval()
    qx, _, _ = vq(x)
    qx.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_ema_updates_move_codes_to_cluster_means_and_eval_freezes_them():
    torch.manual_seed(1)
    vq = TokenVectorQuantizer(4, num_embeddings=8, decay=0.8, dead_code_threshold=0.0)
    for step in range(40):
        tokens, centres = _clusters(seed=step)
        vq(tokens)
    used = torch.unique(vq(tokens)[2])
    # each cluster is represented by a code close to its mean
    dist = torch.cdist(centres, vq.codebook[used]).amin(dim=1)
    assert dist.max() < 0.15
    vq.eval()
    before = vq.codebook.clone()
    vq(tokens + 1.0)
    assert torch.equal(vq.codebook, before)


def test_dead_codes_are_restarted_on_batch_tokens_only_in_training():
    torch.manual_seed(2)
    vq = TokenVectorQuantizer(4, num_embeddings=8, decay=0.99, dead_code_threshold=0.5)
    tokens, _ = _clusters()
    vq(tokens)  # initialise: every count is 1
    q = vq.quantizer
    q.embedding.weight.data[5] = 100.0  # a code far from everything, never chosen ...
    q.ema_w.data[5] = 100.0
    q.ema_cluster_size.data[5] = 0.0  # ... and dead by its usage
    restarts = int(vq.restarts)
    vq.eval()
    vq(tokens)
    assert vq.codebook[5].eq(100.0).all()  # no restart outside training
    vq.train()
    vq(tokens)
    assert int(vq.restarts) > restarts
    assert torch.cdist(vq.codebook[5:6], tokens.reshape(-1, 4)).min() < 0.2  # moved onto a batch token
    assert float(q.ema_cluster_size[5]) == 1.0
    assert vq.usage(vq(tokens)[2])["used"] > 0


def test_label_edges_and_distance():
    lab = cube_label(batch=1)
    edges = bd.label_edges(lab)
    assert edges[0, 0, 4, 8, 8] and edges[0, 0, 3, 8, 8]  # both sides of the cube's face
    assert not edges[0, 0, 20, 20, 20] and not edges[0, 0, 5, 5, 5] and edges[0, 0, 6, 6, 6]  # 6: next to the inner cube
    dist = bd.edge_distance(lab)
    assert dist[edges].eq(0).all()
    assert float(dist[0, 0, 23, 8, 8]) == pytest.approx(9.0)  # 9 voxels from the face at x = 14 (edge voxel x = 14)
    flat = torch.zeros(1, 1, 8, 8, 8, dtype=torch.uint8)
    assert bd.edge_distance(flat).eq(bd.NO_EDGE).all()


def test_box_min_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    values = torch.rand(2, 1, 12, 10, 9, generator=g)
    lo = torch.stack([torch.randint(0, s - 1, (2, 15), generator=g) for s in (12, 10, 9)], dim=-1)
    size = torch.stack([torch.randint(1, 5, (2, 15), generator=g) for _ in range(3)], dim=-1)
    boxes = torch.stack([lo, lo + size], dim=2)  # [2, 15, 2, 3], some past the edge (clipped)
    got = bd.box_min(values, boxes)
    for b, k in itertools.product(range(2), range(15)):
        (x0, y0, z0), (x1, y1, z1) = boxes[b, k].tolist()
        assert got[b, k] == values[b, 0, x0:x1, y0:y1, z0:z1].min()


def test_boundary_target_loss_and_kept_fraction(tiny_net):
    net = tiny_net()
    label = cube_label(batch=2)
    out = net(torch.randn(2, 2, 32, 32, 32), return_tokens=True)
    d = net.candidate_edge_distance(out, label)
    assert d.shape == (2, 40)
    # a candidate box containing an edge voxel has distance 0 and target 1
    g = out.geometry
    inside = [i for i in range(40) if (g.boxes[i, 0] <= 4).all() and (g.boxes[i, 1] > 4).all()]
    assert inside and (d[:, inside] == 0).all()
    target = bd.box_proximity_target(d, net.boundary_sigma)
    aux = net.auxiliary_losses(out, label, d)
    assert torch.allclose(aux["boundary"], F.binary_cross_entropy_with_logits(out.boundary_logits, target))
    assert aux["commitment"] > 0
    # the near-boundary share of kept tokens, by hand
    kept_d = d.gather(1, out.kept_index)
    assert torch.allclose(net.kept_boundary_fraction(out, label, tolerance=2.0), (kept_d <= 2.0).float().mean(1))


def test_training_the_boundary_head_steers_the_selection_to_edges(tiny_net):
    """With importance = boundary proximity only, training the tokenizer on the boundary loss makes
    the kept tokens the ones near the label's edges."""
    net = tiny_net(saliency_weight=0.0, keep_tokens=4).eval()  # eval: the codebook stays fixed
    label = torch.zeros(1, 1, 32, 32, 32, dtype=torch.uint8)
    label[:, :, 22:30, 22:30, 22:30] = 1  # a small cube in a corner: most candidates are far from it
    x = torch.randn(1, 2, 32, 32, 32, generator=torch.Generator().manual_seed(0)) + 3.0 * label.float()
    with torch.no_grad():
        _, candidates = net.encoder(x)  # fixed encoder: only the tokenizer learns here
    geometry = net.encoder.geometry(x.shape[2:])
    out = net(x, return_tokens=True)
    d = net.candidate_edge_distance(out, label)
    target = bd.box_proximity_target(d, net.boundary_sigma)
    near = d <= 2.0

    def kept_near() -> float:
        with torch.no_grad():
            tok = net.tokenizer(candidates, geometry)
        return float(near.gather(1, tok.kept_index).float().mean())

    start = kept_near()
    opt = torch.optim.Adam(net.tokenizer.parameters(), lr=5e-3)
    for _ in range(80):
        tok = net.tokenizer(candidates, geometry)
        loss = F.binary_cross_entropy_with_logits(tok.boundary_logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = kept_near()
    share = float(near.float().mean())
    assert share < 0.5  # most candidates are not near the edge ...
    assert near.sum() >= 4 and end == 1.0 and end > start  # ... but all kept ones are
