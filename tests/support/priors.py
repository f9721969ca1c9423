"""Random-weight PixelCNN priors on disk, for tests: `build_prior(vq_dir)` adds a `prior/` to a VQ checkpoint.

The prior is small (8 channels, 6 layers: every cell of a 7x7 grid still sees every cell before it) and seeded, so
its logits and samples are the same in every test process.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model.prior import PRIOR_SUBFOLDER, PixelCNNPrior, PriorConfig


def tiny_prior(
    num_vq_embeddings: int = 16, grid_size: tuple[int, int] = (5, 6), num_labels: int = 3, seed: int = 0
) -> PixelCNNPrior:
    """A seeded random-init prior in eval mode."""
    torch.manual_seed(seed)
    config = PriorConfig(
        num_vq_embeddings=num_vq_embeddings,
        grid_size=grid_size,
        num_labels=num_labels,
        hidden_channels=8,
        num_layers=6,
        output_channels=16,
    )
    return PixelCNNPrior(config).eval()


def build_prior(vq_dir: Path, num_labels: int = 3, seed: int = 0, num_vq_embeddings: int | None = None) -> Path:
    """Save a tiny prior matching the codebook of the VQ checkpoint in `vq_dir` (or `num_vq_embeddings`) into
    `vq_dir/prior`; returns that folder."""
    k = num_vq_embeddings or json.loads((vq_dir / "config.json").read_text())["num_vq_embeddings"]
    prior = tiny_prior(k, (7, 7), num_labels, seed)
    return prior.save_pretrained(vq_dir / PRIOR_SUBFOLDER)
