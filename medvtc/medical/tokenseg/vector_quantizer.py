"""TokenSeg's codebook: MONAI's EMA vector quantizer plus dead-code restart, on token sequences.

TokenSeg (arXiv 2601.04519, 2026) quantises its candidate tokens with a VQ-VAE codebook
(van den Oord et al. 2017) so that token representations are stable across acquisitions: each
token is replaced by its nearest code, the codebook follows the tokens by exponential moving
averages, and a commitment loss keeps the encoder close to its codes.

MONAI's `EMAQuantizer` already does the EMA updates, the commitment loss, the straight-through
gradient and the DDP synchronisation of the code statistics; it lacks dead-code restart (codes
that stop being chosen stay where they are forever, so the effective codebook shrinks), which is
the one part written here: after each training step's EMA update, every code whose EMA usage
`ema_cluster_size` is below `dead_code_threshold` is moved onto a randomly drawn token of the
current batch (plus a little noise) and its statistics are reset to one assignment, as in
Jukebox (Dhariwal et al. 2020) and the vqtorch/`vector-quantize-pytorch` "kmeans/restart"
schemes. Also written here: the first training step initialises the whole codebook from that
step's tokens with one assignment each (MONAI starts its EMA sums from a random codebook with
zero counts, so without zero-debiasing its first updates divide a random vector by a tiny count).
"""

from __future__ import annotations

import torch
from monai.networks.layers.vector_quantizer import EMAQuantizer
from torch import nn


class TokenVectorQuantizer(nn.Module):
    """EMA vector quantizer with dead-code restart for tokens [B, N, D].

    Args:
        embedding_dim: D, the token width.
        num_embeddings: M, the codebook size.
        commitment_cost: beta of the commitment loss beta * ||z - sg(q)||^2.
        decay: EMA decay of the codebook statistics.
        dead_code_threshold: a code whose EMA usage (assignments per step) falls below this is
            restarted; 0 disables restarts.
        epsilon: Laplace smoothing of the EMA cluster sizes.

    forward(tokens [B, N, D]) -> (quantized [B, N, D] with straight-through gradient,
    commitment loss (scalar), codes [B, N] long). In eval mode nothing is updated.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_embeddings: int = 512,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        dead_code_threshold: float = 1e-2,
        epsilon: float = 1e-5,
    ) -> None:
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(f"codebook size and width must be >= 1, got {num_embeddings}, {embedding_dim}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0, got {dead_code_threshold}")
        # spatial_dims=2: tokens are laid out as a [B, D, N, 1] "image" for MONAI's quantizer.
        self.quantizer = EMAQuantizer(
            spatial_dims=2, num_embeddings=num_embeddings, embedding_dim=embedding_dim,
            commitment_cost=commitment_cost, decay=decay, epsilon=epsilon,
        )
        self.dead_code_threshold = float(dead_code_threshold)
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.restarts: torch.Tensor
        self.initialized: torch.Tensor

    @property
    def num_embeddings(self) -> int:
        return self.quantizer.num_embeddings

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantizer.embedding.weight

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if tokens.ndim != 3:
            raise ValueError(f"tokens must be [B, N, D], got {tuple(tokens.shape)}")
        if self.training and not bool(self.initialized):
            self._init_from(tokens.detach())
        x = tokens.transpose(1, 2).unsqueeze(-1)  # [B, D, N, 1]
        quantized, loss, codes = self.quantizer(x)
        if self.training and self.dead_code_threshold > 0:
            self._restart_dead(tokens.detach())
        return quantized.squeeze(-1).transpose(1, 2).to(tokens.dtype), loss, codes.squeeze(-1)

    @torch.no_grad()
    def _init_from(self, tokens: torch.Tensor) -> None:
        everything = torch.ones(self.num_embeddings, dtype=torch.bool, device=tokens.device)
        self._reset_codes(everything, tokens)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _reset_codes(self, which: torch.Tensor, tokens: torch.Tensor) -> int:
        """Move the codes `which` [M] bool onto random tokens of the batch; returns how many."""
        q = self.quantizer
        n = int(which.sum())
        if n == 0:
            return 0
        flat = tokens.reshape(-1, tokens.shape[-1]).float()
        pick = torch.randint(flat.shape[0], (n,), device=flat.device)
        spread = flat.std(dim=0, keepdim=True).nan_to_num(0.0).clamp_min(1e-6)
        fresh = flat[pick] + 0.01 * spread * torch.randn(n, flat.shape[1], device=flat.device)
        q.embedding.weight.data[which] = fresh.to(q.embedding.weight.dtype)
        q.ema_w.data[which] = fresh.to(q.ema_w.dtype)
        q.ema_cluster_size.data[which] = 1.0
        if q.ddp_sync and torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank must hold the same codebook: take rank 0's draws
            torch.distributed.broadcast(q.embedding.weight.data, 0)
            torch.distributed.broadcast(q.ema_w.data, 0)
            torch.distributed.broadcast(q.ema_cluster_size.data, 0)
        return n

    @torch.no_grad()
    def _restart_dead(self, tokens: torch.Tensor) -> None:
        dead = self.quantizer.ema_cluster_size < self.dead_code_threshold
        self.restarts += self._reset_codes(dead, tokens)

    @torch.no_grad()
    def usage(self, codes: torch.Tensor) -> dict[str, float]:
        """Codebook perplexity and the share of codes used by `codes` (any shape)."""
        counts = torch.bincount(codes.reshape(-1), minlength=self.num_embeddings).float()
        p = counts / counts.sum().clamp_min(1.0)
        perplexity = torch.exp(-(p * torch.log(p + 1e-10)).sum())
        return {"perplexity": float(perplexity), "used": float((counts > 0).float().mean())}


__all__ = ["TokenVectorQuantizer"]
