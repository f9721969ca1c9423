"""Reference pixel conversions: what tests compute expected values with, independently of the code under test.

Written out here from diffusers' `VaeImageProcessor` (normalise `x / 255 * 2 - 1`; postprocess by clamping to
[-1, 1], then `(x + 1) * 127.5` rounded to uint8), never imported from `model.pixels` or `service.codecs`: a
reference that called the code under test would agree with any bug in it.
"""

from __future__ import annotations

import numpy as np
import torch


def normalise(pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """0..255 -> float32 in [-1, 1], element-wise, as diffusers normalises: `x / 255 * 2 - 1`."""
    return torch.as_tensor(pixels).float() / 255.0 * 2.0 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """~[-1, 1] -> uint8 0..255, element-wise, as diffusers postprocesses: `((x.clamp(-1, 1) + 1) * 127.5).round()`."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def model_input(images: np.ndarray) -> torch.Tensor:
    """(H, W, C) or (B, H, W, C) uint8 pixels -> a contiguous (B, C, H, W) float32 batch in [-1, 1]."""
    batch = torch.from_numpy(images if images.ndim == 4 else images[None])
    return normalise(batch.permute(0, 3, 1, 2)).contiguous()


def model_output(images: torch.Tensor) -> np.ndarray:
    """A (B, C, H, W) model output in ~[-1, 1] -> (B, H, W, C) uint8 pixels."""
    return to_uint8(images).permute(0, 2, 3, 1).numpy()
