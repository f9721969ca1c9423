"""Pixels <-> model range, and PSNR: the one definition every part of the project uses.

The model works on images in [-1, 1]. `from_uint8` performs the exact float ops of diffusers' `VaeImageProcessor`
(`x / 255`, then `2 * x - 1`), so that indices computed here equal those of diffusers' pipelines bit for bit;
`to_uint8` rounds as its postprocessing does. Layout is the caller's: these functions are element-wise.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def from_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """0..255 (uint8, or floats holding whole numbers) -> float32 in [-1, 1], as diffusers normalises."""
    return pixels.to(torch.float32).div(255.0).mul_(2.0).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Model output in ~[-1, 1] -> uint8 0..255: clamped, then rounded to the nearest level."""
    return images.to(torch.float32).clamp(-1.0, 1.0).add_(1.0).mul_(127.5).round_().to(torch.uint8)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Model output in ~[-1, 1] -> [0, 1], clamped, as diffusers' image processors hand images on."""
    return (images / 2 + 0.5).clamp(0, 1)


def psnr(reference: torch.Tensor | np.ndarray, test: torch.Tensor | np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two images of one shape on the 0..255 scale; inf when identical."""
    if isinstance(reference, np.ndarray) and isinstance(test, np.ndarray) and reference.dtype == test.dtype == np.uint8:
        mse = _squared_error_sum(reference, test) / reference.size  # 8-bit images (every reply): exact and cheap
    else:
        mse = float((_float64(reference) - _float64(test)).pow(2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _squared_error_sum(reference: np.ndarray, test: np.ndarray) -> int:
    """The exact sum of squared differences of two 8-bit images, in integers: the float64 mean of the same
    integers gives the same figure at several passes and copies more."""
    if reference.shape != test.shape:
        raise ValueError(f"images of different shapes: {reference.shape} and {test.shape}")
    diff = np.subtract(reference, test, dtype=np.int64).ravel()
    return int(diff @ diff)


def _float64(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image.to(torch.float64)
    return torch.from_numpy(np.asarray(image, dtype=np.float64))  # a new array: read-only inputs are fine
