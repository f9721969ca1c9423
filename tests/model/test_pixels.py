"""model.pixels: the one pixel conversion and PSNR, checked against diffusers' own image processor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor

from model.pixels import from_uint8, psnr, to_uint8, to_unit_range


def test_from_uint8_is_bit_identical_to_diffusers_normalisation() -> None:
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)  # (1, H, W, C)
    processor = VaeImageProcessor(do_resize=False)
    expected = processor.preprocess(levels.astype(np.float32) / 255.0)  # (1, C, H, W)
    ours = from_uint8(torch.from_numpy(levels).permute(0, 3, 1, 2))
    assert ours.dtype == torch.float32
    assert torch.equal(ours, expected)


def test_to_uint8_round_trips_every_level_and_clamps() -> None:
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(from_uint8(levels)), levels)
    assert to_uint8(torch.tensor([-3.0, 3.0, float("-inf")])).tolist() == [0, 255, 0]


def test_to_unit_range_matches_diffusers_denormalisation() -> None:
    x = torch.linspace(-1.5, 1.5, 31)
    assert torch.equal(to_unit_range(x), VaeImageProcessor.denormalize(x))


def test_psnr_on_tensors_and_read_only_arrays() -> None:
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    a.flags.writeable = False  # as Pillow hands decoded images over
    assert psnr(a, a) == math.inf
    b = np.ones_like(a)  # mse 1
    assert psnr(a, b) == pytest.approx(20 * math.log10(255))
    assert psnr(torch.from_numpy(b), torch.from_numpy(b.copy() * 3)) == pytest.approx(20 * math.log10(255 / 2))


def test_psnr_of_8_bit_images_is_exact_and_agrees_with_the_float_path() -> None:
    """8-bit arrays take an integer path; it gives the float64 path's figure, wraps nothing (255 - 0 is 255, not
    1) and refuses images of different shapes."""
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, (97, 61, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (97, 61, 3), dtype=np.uint8)
    assert psnr(a, b) == psnr(torch.from_numpy(a), torch.from_numpy(b))  # the tensors take the float64 path
    full = np.full((8, 8, 3), 255, dtype=np.uint8)
    assert psnr(np.zeros_like(full), full) == pytest.approx(0.0)  # mse 255²: 0 dB
    with pytest.raises(ValueError, match="different shapes"):
        psnr(a, b[:, :60])
