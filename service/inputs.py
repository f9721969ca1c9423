"""Request payloads -> checked model inputs: the one input path every protocol shares.

CPU work for the codec pool. It checks inputs against the model (channels, index range, latent channels,
finiteness, sizes) and every float parameter of the latents (`scaling_factor`, `shift_factor`: `check_factor`,
then `latents_input` / `scale_latents` once the latents are known), so that the engine only ever sees tensors it
can compute, no reply carries non-finite latents, and every route refuses the same input for the same reason.
Protocol-specific wire formats live in `protocols/`; no HTTP objects here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import orjson
import torch
from pydantic import BaseModel, ValidationError

from . import codecs
from .errors import ServiceError, validation_message
from .facts import ModelFacts
from .ops import Op
from .schemas import DecodeJSONRequest, EncodeJSONRequest

Schema = TypeVar("Schema", bound=BaseModel)


def parse_json(body: bytes, schema: type[Schema]) -> Schema:
    """A JSON body validated against `schema`: 400 when it is not JSON, 422 naming the fields that do not fit."""
    try:
        return schema.model_validate(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise ServiceError("invalid_json", f"body is not valid JSON: {exc}") from exc
    except ValidationError as exc:
        raise ServiceError("invalid_input", validation_message(exc.errors())) from exc


def check_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise ServiceError("too_many_images", f"{count} images in one request; the limit is {max_images}")


def check_input_pixels(h: int, w: int, max_pixels: int) -> None:
    if h * w > max_pixels:
        raise ServiceError("image_too_large", f"images of {h}x{w} = {h * w} pixels exceed the limit of {max_pixels}")


def check_latent_area(h: int, w: int, facts: ModelFacts, what: str) -> None:
    if h * w < facts.config.min_latent_area:
        raise ServiceError(
            "invalid_input",
            f"{what} is too small for model {facts.name!r}: it needs at least {facts.config.min_latent_area} latent "
            f"cells (h x w), got {h}x{w}; send a larger image or index map",
        )


# the float parameters of latents: scaling_factor and shift_factor, on every route that takes them
FLOAT32 = torch.finfo(torch.float32)  # latents travel and are scaled in float32


@dataclass(frozen=True)
class LatentFactors:
    """Diffusion pipelines' latent scaling, checked by `latent_factors`: decoding takes `latents / scale + shift`,
    encoding returns `(latents - shift) * scale`; None leaves that step out."""

    scale: float | None = None
    shift: float | None = None


def check_factor(name: str, value: object, *, divisor: bool) -> float | None:
    """One float parameter of the latents -> a float, or a 422 naming it: a number, finite in float32 (the
    latents' dtype); a `divisor` (a scale) also non-zero and not subnormal in float32, since dividing by
    0 or by a subnormal sends every latent to inf or NaN."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ServiceError("invalid_input", f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or abs(number) > FLOAT32.max:
        raise ServiceError(
            "invalid_input", f"{name} must be a finite number within float32's range (±{FLOAT32.max:.4g}), got {value}"
        )
    if divisor and abs(number) < FLOAT32.tiny:
        raise ServiceError(
            "invalid_input",
            f"{name} must be non-zero and at least float32's smallest normal number ({FLOAT32.tiny:.4g}) in "
            f"magnitude, got {value}: dividing the latents by it overflows them",
        )
    return number


def latent_factors(scaling_factor: object, shift_factor: object = None) -> LatentFactors:
    """The checked factors of a request (422 for a non-finite, zero or subnormal scale, or a non-finite shift)."""
    return LatentFactors(
        check_factor("scaling_factor", scaling_factor, divisor=True),
        check_factor("shift_factor", shift_factor, divisor=False),
    )


def _finite_max(dtype: str) -> float:
    return torch.finfo(codecs.TENSOR_DTYPES.get(dtype, torch.float32)).max


def unscale_latents(latents: torch.Tensor, factors: LatentFactors, facts: ModelFacts) -> torch.Tensor:
    """Float32 latents -> `latents / scale + shift`; a 422 unless every value stays finite in the dtype the
    model computes in (float16 overflows far sooner than float32)."""
    if factors.scale is not None:
        latents = latents / factors.scale
    if factors.shift is not None:
        latents = latents + factors.shift
    decodes_in = min(facts.dtype, facts.decoder_dtype, key=_finite_max)
    limit = _finite_max(decodes_in)
    if not _within(latents, limit):
        raise ServiceError(
            "invalid_input",
            f"latents / scaling_factor ({factors.scale}) + shift_factor ({factors.shift}) leave the finite range of "
            f"{decodes_in} (±{limit:.4g}) that model {facts.name!r} decodes in; send smaller latents or factors",
        )
    return latents


def scale_latents(latents: torch.Tensor, factors: LatentFactors) -> torch.Tensor:
    """Encoded latents as a diffusion pipeline takes them, `(latents - shift) * scale`; a 422 unless every value
    stays finite in float32."""
    if factors.shift is not None:
        latents = latents - factors.shift
    if factors.scale is not None:
        latents = latents * factors.scale
    if not _within(latents, FLOAT32.max):
        raise ServiceError(
            "invalid_input",
            f"(latents - shift_factor ({factors.shift})) * scaling_factor ({factors.scale}) overflows float32; "
            "send smaller factors",
        )
    return latents


def _within(tensor: torch.Tensor, limit: float) -> bool:
    return tensor.numel() == 0 or bool(torch.isfinite(tensor).all() and tensor.abs().max() <= limit)


@dataclass(frozen=True)
class ImageInput:
    tensor: torch.Tensor  # (C, H', W') float32 in [-1, 1], padded to the downsample factor
    original: np.ndarray  # (H, W, C) uint8 as received (after mode conversion)

    @property
    def size(self) -> tuple[int, int]:
        return self.original.shape[0], self.original.shape[1]


@dataclass(frozen=True)
class DecodeInput:
    op: Op  # DECODE_INDICES or DECODE_LATENTS
    tensors: list[torch.Tensor]  # per image: (h, w) int64 or (D, h, w) float32
    crop: tuple[int, int] | None  # [H, W] to crop the outputs to


# images
def images_from_json(body: bytes) -> tuple[list[bytes], bool]:
    """`{"image": b64}` or `{"images": [b64, ...]}` -> the files, and whether it was the batch form."""
    parsed = parse_json(body, EncodeJSONRequest)
    texts = [parsed.image] if parsed.image is not None else list(parsed.images or [])
    return [codecs.b64decode(text, f"image {i}") for i, text in enumerate(texts)], parsed.images is not None


def prepare_images(files: list[bytes], facts: ModelFacts, max_pixels: int) -> list[ImageInput]:
    return [
        _image_input(codecs.read_image(data, channels=facts.config.in_channels, max_pixels=max_pixels), facts)
        for data in files
    ]


def images_from_array(images: np.ndarray, facts: ModelFacts, max_pixels: int) -> list[ImageInput]:
    """(B, H, W, C) uint8 (the Open Inference Protocol's IMAGE) -> model inputs, padded as image files are."""
    if images.ndim != 4 or images.shape[3] != facts.config.in_channels:
        raise ServiceError(
            "invalid_input",
            f"images must be (B, H, W, {facts.config.in_channels}) for model {facts.name!r}; "
            f"got shape {list(images.shape)}",
        )
    check_input_pixels(images.shape[1], images.shape[2], max_pixels)
    return [_image_input(np.ascontiguousarray(image), facts) for image in images]


def _image_input(arr: np.ndarray, facts: ModelFacts) -> ImageInput:
    factor = facts.config.downsample_factor
    tensor = codecs.to_model_input(arr, factor)  # (C, H', W')
    check_latent_area(
        tensor.shape[1] // factor, tensor.shape[2] // factor, facts, f"a {arr.shape[0]}x{arr.shape[1]} image"
    )
    return ImageInput(tensor, arr)


# index maps and latents
def decode_from_json(body: bytes, facts: ModelFacts, factors: LatentFactors | None = None) -> DecodeInput:
    request = parse_json(body, DecodeJSONRequest)
    crop = (request.image_size[0], request.image_size[1]) if request.image_size else None
    if request.indices is not None:
        try:
            arr = np.asarray(request.indices, dtype=np.int64)
        except (ValueError, OverflowError) as exc:
            raise ServiceError("invalid_input", f"indices must be a rectangular array of integers: {exc}") from exc
        return _indices_input(torch.from_numpy(arr), facts, crop)
    if request.latents is None or request.shape is None:  # the schema already requires both
        raise ServiceError("invalid_input", "'latents' needs 'shape'")
    data = codecs.b64decode(request.latents, "latents")
    return latents_input(codecs.read_tensor(data, request.shape, request.dtype), facts, crop, factors)


def decode_from_tensor(
    body: bytes, shape: list[int] | None, dtype: str | None, facts: ModelFacts, factors: LatentFactors | None = None
) -> DecodeInput:
    if not shape or dtype is None:
        raise ServiceError(
            "invalid_input", "a binary tensor needs the query parameters shape (repeated, in order) and dtype"
        )
    tensor = codecs.read_tensor(body, shape, dtype)
    if dtype in codecs.INDEX_DTYPES:
        return _indices_input(tensor, facts, None)
    if dtype in codecs.LATENT_DTYPES:
        return latents_input(tensor, facts, None, factors)
    raise ServiceError(
        "invalid_input",
        f"dtype {dtype!r}: use {'/'.join(codecs.INDEX_DTYPES)} for indices or {'/'.join(codecs.LATENT_DTYPES)} "
        "for latents",
    )


def decode_from_array(array: np.ndarray, facts: ModelFacts, factors: LatentFactors | None = None) -> DecodeInput:
    """Integers (B, h, w) are indices, floats (B, D, h, w) latents (the Open Inference Protocol's tensors)."""
    tensor = torch.from_numpy(np.require(array, requirements="W"))  # a copy of a read-only array: torch warns on those
    if tensor.is_floating_point():
        return latents_input(tensor, facts, None, factors)
    return _indices_input(tensor, facts, None)


def check_decode_limits(decoded: DecodeInput, facts: ModelFacts, max_images: int, max_pixels: int) -> None:
    """413 for more maps than `max_images` or outputs over `max_pixels` (the maps of a request share a shape)."""
    check_count(len(decoded.tensors), max_images)
    h, w = decoded.tensors[0].shape[-2], decoded.tensors[0].shape[-1]
    pixels = h * w * facts.config.downsample_factor**2
    if pixels > max_pixels:
        raise ServiceError("image_too_large", f"the output would be {pixels} pixels; the limit is {max_pixels}")


def _indices_input(indices: torch.Tensor, facts: ModelFacts, crop: tuple[int, int] | None) -> DecodeInput:
    if indices.ndim == 2:
        indices = indices.unsqueeze(0)  # (h, w) -> (1, h, w)
    if indices.ndim != 3 or indices.numel() == 0:
        raise ServiceError("invalid_input", f"indices must be (h, w) or (B, h, w), got shape {list(indices.shape)}")
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= facts.config.codebook_size:
        raise ServiceError(
            "invalid_input",
            f"indices must lie in [0, {facts.config.codebook_size}) for model {facts.name!r}; "
            f"got values in [{low}, {high}]",
        )
    indices = indices.long()
    check_latent_area(indices.shape[1], indices.shape[2], facts, "the index map")
    _check_crop(crop, indices.shape[1], indices.shape[2], facts)
    return DecodeInput(Op.DECODE_INDICES, list(indices.unbind(0)), crop)


def latents_input(
    latents: torch.Tensor, facts: ModelFacts, crop: tuple[int, int] | None, factors: LatentFactors | None = None
) -> DecodeInput:
    """Latents (B, D, h, w), checked, as the model decodes them: `latents / scale + shift` when `factors` say so,
    refused (422) unless every value is finite, before and after, in the dtype the model computes in."""
    if latents.ndim != 4 or latents.shape[1] != facts.config.embed_dim:
        raise ServiceError(
            "invalid_input",
            f"latents must be (B, {facts.config.embed_dim}, h, w) for model {facts.name!r} (vq_embed_dim "
            f"{facts.config.embed_dim}); got shape {list(latents.shape)}",
        )
    latents = latents.float()
    if not bool(torch.isfinite(latents).all()):
        raise ServiceError("invalid_input", "latents hold NaN or infinite values")
    check_latent_area(latents.shape[2], latents.shape[3], facts, "the latent map")
    _check_crop(crop, latents.shape[2], latents.shape[3], facts)
    latents = unscale_latents(latents, factors or LatentFactors(), facts)
    return DecodeInput(Op.DECODE_LATENTS, list(latents.unbind(0)), crop)


def _check_crop(crop: tuple[int, int] | None, h: int, w: int, facts: ModelFacts) -> None:
    if crop is None:
        return
    full = (h * facts.config.downsample_factor, w * facts.config.downsample_factor)
    if not (0 < crop[0] <= full[0] and 0 < crop[1] <= full[1]):
        raise ServiceError(
            "invalid_input", f"image_size {list(crop)} must be positive and within the output {list(full)}"
        )
