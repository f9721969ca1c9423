"""Likelihood of code grids under a prior, in bits per code: the training loss and a novelty score.

A uniform prior over K codes costs log2(K) bits per code (7 for 128): anything a trained prior saves below that
(and below the codes' unigram frequencies) is structure it has learnt.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .network import PixelCNNPrior


def bits_per_code(logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) and codes (B, H, W) -> (B,) mean negative log2-likelihood per code (differentiable)."""
    nats = F.cross_entropy(logits.float(), indices.long(), reduction="none")  # (B, H, W)
    return nats.mean(dim=(1, 2)) / math.log(2.0)


@torch.no_grad()
def nll_bits(prior: PixelCNNPrior, indices: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Codes (B, H, W) (and labels (B,), -1 for none) -> (B,) mean bits per code under `prior`, on the CPU.

    Run the prior in eval mode (`from_pretrained` returns it so): dropout would make the score random."""
    indices = indices.to(prior.device)
    check_codes(prior, indices)
    return bits_per_code(prior(indices, labels), indices).cpu()


def check_codes(prior: PixelCNNPrior, indices: torch.Tensor) -> None:
    """Refuse indices outside the codebook with a ValueError (an embedding lookup would fail obscurely)."""
    if indices.is_floating_point():
        raise ValueError("indices must be an integer tensor")
    k = prior.config.num_vq_embeddings
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= k):
        raise ValueError(f"indices must be in [0, {k}), got {int(indices.min())}..{int(indices.max())}")
