"""`PixelCNNPrior`: a gated PixelCNN over a VQ model's code grid, optionally class-conditional.

`forward(indices (B, H, W), labels (B,) | None) -> logits (B, K, H, W)`: the logits at (i, j) are a distribution
over the code at (i, j) given every code before it in raster order (and the label). It is fully convolutional, so
any grid runs; the config's `grid_size` records the grid it was trained on. Labels: 0 .. num_labels - 1 are
classes; `num_labels` or -1 means "no label" (trained with label dropout, so one prior samples both ways).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model.checkpoint import check_keys

from . import checkpoint
from .config import PriorConfig
from .layers import GatedLayer, down_shift, right_shift


class PixelCNNPrior(nn.Module):
    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.hidden_channels
        self.embedding = nn.Embedding(config.num_vq_embeddings, channels)
        self.layers = nn.ModuleList(
            GatedLayer(channels, config.kernel_size, config.num_labels, config.dropout)
            for _ in range(config.num_layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, config.output_channels, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(config.output_channels, config.num_vq_embeddings, kernel_size=1),
        )

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def label_indices(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """(B,) labels with -1 for "no label" -> (B,) embedding rows (`num_labels` for "no label"); checked.

        None for an unconditional prior, which takes no labels (only "no label" ones)."""
        config = self.config
        if labels is None:
            return None if not config.conditional else torch.full((batch,), config.unlabelled, device=self.device)
        labels = labels.to(device=self.device, dtype=torch.long)
        if labels.shape != (batch,):
            raise ValueError(f"labels must be shaped ({batch},), got {tuple(labels.shape)}")
        unlabelled = (labels == -1) | (labels == config.unlabelled)
        if not config.conditional:
            if not bool(unlabelled.all()):
                raise ValueError("this prior is unconditional (num_labels 0): it takes no labels")
            return None
        if bool(((labels < -1) | (labels > config.unlabelled)).any()):
            raise ValueError(f"labels must be in 0..{config.num_labels - 1}, or -1 for no label")
        return torch.where(unlabelled, config.unlabelled, labels)

    def forward(self, indices: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (B, H, W) int64 in [0, K), labels (B,) or None -> logits (B, K, H, W), causal in raster order."""
        if indices.ndim != 3:
            raise ValueError(f"indices must be shaped (B, H, W), got {tuple(indices.shape)}")
        rows = self.label_indices(labels, indices.shape[0])
        x = self.embedding(indices.long()).permute(0, 3, 1, 2)  # (B, C, H, W)
        # shifted once: the vertical stack holds rows above, the horizontal the cells to the left
        vertical, horizontal = down_shift(x), right_shift(x)  # (B, C, H, W) each
        for layer in self.layers:
            vertical, horizontal = layer(vertical, horizontal, rows)
        return self.head(horizontal)  # (B, K, H, W)

    # checkpoints
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> PixelCNNPrior:
        """Load `path/config.json` + `path/prior.safetensors` with strict key checking, in eval mode."""
        directory = checkpoint.prior_dir(path)
        prior = cls(checkpoint.read_config(directory))
        state = checkpoint.read_state_dict(directory)
        check_keys(set(prior.state_dict()), set(state))
        prior.load_state_dict(state, strict=True)
        prior.eval().requires_grad_(False)
        return prior.to(device)

    def save_pretrained(self, path: str | Path) -> Path:
        return checkpoint.write(path, self.config, self.state_dict())
