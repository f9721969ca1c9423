"""Test images as arrays, as Pillow images and as file bytes, for every test package.

Pure functions of their arguments (seeded), so every run sends the same bytes. Images built to break things
(bombs, damaged files, odd modes) stay with the reliability suite in `tests/reliability/inputs.py`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Uniform random pixels, (H, W, channels) uint8."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def random_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """`noise` as a Pillow image in mode RGB, RGBA or L."""
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = noise(height, width, channels, seed)
    return Image.fromarray(arr[:, :, 0] if channels == 1 else arr, mode)


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish random image (so reconstructions are not pure noise) as (H, W, 3) uint8."""
    small = noise(max(1, height // 4), max(1, width // 4), seed=seed)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))


def image_bytes(image: Image.Image | np.ndarray, fmt: str = "PNG", **save_args: object) -> bytes:
    """The file an image (or an (H, W[, C]) uint8 array) saves to in `fmt`."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, fmt, **save_args)
    return buf.getvalue()


def png(height: int = 16, width: int = 16, seed: int = 0, mode: str = "RGB") -> bytes:
    """A PNG of `random_image`."""
    return image_bytes(random_image(height, width, mode, seed))


def decode_png(data: bytes) -> np.ndarray:
    """Image file bytes -> the array Pillow reads."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)
