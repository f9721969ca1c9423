"""Evaluation on held-out images: PSNR of the 8-bit reconstructions, codebook usage and perplexity.

PSNR is `model.pixels.psnr` of the input and its reconstruction, both rounded to 8 bits by `model.pixels.to_uint8`
as the service returns images, with peak 255 (inf for an exact reconstruction).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch

from model import VQModel
from model.pixels import psnr, to_uint8


@torch.no_grad()
def evaluate(model: VQModel, names: list[str], images: torch.Tensor, batch_size: int = 4) -> dict[str, Any]:
    """Reconstruct `images` (N, C, H, W) through the codebook; PSNR per source name and mean over all images."""
    was_training = model.training
    model.eval()
    per_name: dict[str, list[float]] = defaultdict(list)
    counts = torch.zeros(model.codebook_size, dtype=torch.long)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(model.device)
        _, indices = model.quantize(model.encode(x))
        recon = model.decode_indices(indices)
        counts += torch.bincount(indices.flatten().cpu(), minlength=model.codebook_size)
        for i in range(len(x)):
            per_name[names[start + i]].append(psnr(to_uint8(x[i]), to_uint8(recon[i])))
    model.train(was_training)
    probs = counts.double() / counts.sum()
    nonzero = probs[probs > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    all_psnr = [v for values in per_name.values() for v in values]
    return {
        "psnr_mean": round(sum(all_psnr) / len(all_psnr), 3),
        "psnr_per_image": {name: round(sum(v) / len(v), 3) for name, v in per_name.items()},
        "n_crops": len(all_psnr),
        "crop": int(images.shape[-1]),
        "codebook_usage": round(int((counts > 0).sum()) / model.codebook_size, 4),
        "perplexity": round(math.exp(entropy), 1),
    }
