"""A VQ model's training data as code grids: what the prior trains and is evaluated on.

The digits VQ model trained on the first 1,497 of scikit-learn's digits and was evaluated on the last 300
(`data.digits`); its codes keep that split, with each digit's class as its label. Encoding happens once, up front:
the prior never sees pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from model import VQModel
from model.training import data

DIGITS_SOURCE = "sklearn.datasets.load_digits"  # how model.train's training.json names the digits data


@dataclass(frozen=True)
class CodeSplits:
    train: torch.Tensor  # (N, H, W) int64 codes of the VQ model's training images
    train_labels: torch.Tensor  # (N,) int64
    held_out: torch.Tensor  # (M, H, W) codes of the images the VQ model was evaluated on
    held_out_labels: torch.Tensor  # (M,)
    num_labels: int


@torch.no_grad()
def encode(model: VQModel, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1] -> codes (N, H/f, W/f) int64 on the CPU."""
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(model.device, model.dtype)
        out.append(model.quantize(model.encode(x))[1].cpu())
    return torch.cat(out)


def training_data_of(vq_dir: Path) -> str:
    """The data a VQ checkpoint was trained on, from its training.json: 'digits' is the one a prior supports."""
    record_path = vq_dir / "training.json"
    if not record_path.is_file():
        raise ValueError(f"{vq_dir} has no training.json: cannot tell which data its codes should come from")
    source = str(json.loads(record_path.read_text()).get("data", {}).get("source", ""))
    if source.startswith(DIGITS_SOURCE):
        return "digits"
    raise ValueError(
        f"{vq_dir} was trained on {source or 'unrecorded data'!r}; the prior trains only on labelled data, so far "
        "scikit-learn's digits (a VQ model trained with --preset digits)"
    )


def digits_codes(model: VQModel) -> CodeSplits:
    train_images, held_out_images = data.digits(model.config.in_channels)
    train_labels, held_out_labels = data.digit_labels()
    return CodeSplits(
        encode(model, train_images), train_labels, encode(model, held_out_images), held_out_labels, num_labels=10
    )
