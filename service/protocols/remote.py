"""diffusers' remote VAE protocol (`remote_decode` / `remote_encode`): its bodies -> model inputs, and back.

CPU work for the codec pool, checked by the shared input path (`inputs.py`); the routes are `routes/remote.py`.
"""

from __future__ import annotations

import torch

from model.pixels import from_uint8

from .. import codecs
from ..errors import ServiceError
from ..facts import ModelFacts
from ..inputs import (
    DecodeInput,
    LatentFactors,
    check_input_pixels,
    check_latent_area,
    latents_input,
    prepare_images,
    scale_latents,
)
from ..ops import Encoded


def images_from_body(
    body: bytes, shape: list[int] | None, dtype: str | None, facts: ModelFacts, max_pixels: int
) -> list[torch.Tensor]:
    """diffusers' `remote_encode` body: an image file (no shape), or a tensor (B, C, H, W) / (C, H, W) of floats
    in [-1, 1] or uint8 -> model inputs (C, H, W) float32 in [-1, 1].

    A tensor is not padded: its sides must be multiples of the downsample factor, so latents map 1:1 onto it.
    """
    if not shape:
        return [image.tensor for image in prepare_images([body], facts, max_pixels)]
    if dtype is None:
        raise ServiceError("invalid_input", "a tensor body needs the query parameter dtype")
    if dtype not in (*codecs.LATENT_DTYPES, "uint8"):
        raise ServiceError("invalid_input", f"dtype {dtype!r}: images must be uint8 or float16/bfloat16/float32")
    images = codecs.read_tensor(body, shape, dtype)
    if images.ndim == 3:
        images = images.unsqueeze(0)  # (C, H, W) -> (1, C, H, W)
    if images.ndim != 4 or images.shape[1] != facts.config.in_channels:
        raise ServiceError(
            "invalid_input",
            f"images must be (B, {facts.config.in_channels}, H, W) for model {facts.name!r}; got {shape}",
        )
    factor = facts.config.downsample_factor
    height, width = images.shape[2], images.shape[3]
    if height % factor or width % factor:
        raise ServiceError("invalid_input", f"image sides must be multiples of the downsample factor {factor}")
    check_input_pixels(height, width, max_pixels)
    floats = from_uint8(images) if dtype == "uint8" else images.float()
    if not bool(torch.isfinite(floats).all()):
        raise ServiceError("invalid_input", "the image tensor holds NaN or infinite values")
    check_latent_area(height // factor, width // factor, facts, f"a {height}x{width} image")
    return list(floats.unbind(0))


def remote_latents(
    body: bytes,
    shape: list[int] | None,
    dtype: str | None,
    facts: ModelFacts,
    factors: LatentFactors,
) -> DecodeInput:
    """diffusers' `remote_decode` body: float latents (B, D, h, w) or (D, h, w), checked, then
    `latents / scaling_factor + shift_factor` as its pipelines unscale them (checked by the shared input path:
    a 422 unless they stay finite)."""
    if not shape or dtype is None:
        raise ServiceError("invalid_input", "send the query parameters shape (repeated, in order) and dtype")
    if dtype not in codecs.LATENT_DTYPES:
        raise ServiceError("invalid_input", f"dtype {dtype!r}: latents must be one of {codecs.LATENT_DTYPES}")
    latents = codecs.read_tensor(body, shape, dtype)
    return latents_input(latents.unsqueeze(0) if latents.ndim == 3 else latents, facts, None, factors)


def latents_binary(results: list[Encoded], factors: LatentFactors) -> tuple[bytes, list[int]]:
    """diffusers' `remote_encode` reply: float32 (B, D, h, w) `(latents - shift_factor) * scaling_factor`
    (a 422 unless every value stays finite)."""
    latents = scale_latents(torch.stack([r.latents for r in results]), factors)
    return codecs.tensor_bytes(latents), list(latents.shape)


def float_images_binary(images: list[torch.Tensor]) -> tuple[bytes, list[int]]:
    """`remote_decode` float reply: the decoder's (B, C, H, W) in the model's dtype."""
    stacked = torch.stack(images)
    return codecs.tensor_bytes(stacked), list(stacked.shape)
