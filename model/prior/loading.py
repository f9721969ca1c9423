"""Finding and checking the prior of a VQ checkpoint: `load_prior_for(vq_dir, vq_config)`."""

from __future__ import annotations

from pathlib import Path

import torch

from model.checkpoint import CONFIG_NAME, CheckpointError
from model.config import VQModelConfig

from . import checkpoint
from .network import PixelCNNPrior


def load_prior_for(
    vq_dir: str | Path, vq_config: VQModelConfig, device: str | torch.device = "cpu"
) -> PixelCNNPrior | None:
    """The prior in `vq_dir/prior/`, or None when there is none.

    A prior trained for another codebook size would index codes the VQ model does not have (or never produce
    some): it is refused with a `CheckpointError` before its weights are read."""
    directory = Path(vq_dir) / checkpoint.PRIOR_SUBFOLDER
    if not directory.exists():
        return None
    if not (directory / CONFIG_NAME).is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}")
    config = checkpoint.read_config(directory)
    if config.num_vq_embeddings != vq_config.num_vq_embeddings:
        raise CheckpointError(
            f"the prior in {directory} models a codebook of {config.num_vq_embeddings} codes, but the VQ model "
            f"in {vq_dir} has num_vq_embeddings={vq_config.num_vq_embeddings}: retrain it for this model "
            f"(python -m model.train_prior --vq {vq_dir})"
        )
    return PixelCNNPrior.from_pretrained(directory, device=device)
