"""Request payloads -> model inputs and model outputs -> reply bodies, for every inference route (/encode,
/decode, /reconstruct, and the /remote and /v2 protocol adapters).

CPU work that runs in the codec pool (via `Services.codec`). It checks inputs against the model (index range,
latent channels, finiteness, sizes) so the engine only ever sees tensors it can compute, and so that every route
refuses the same input for the same reason. No HTTP objects here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
import torch
from pydantic import BaseModel, ValidationError

from . import codecs
from .engine import EncodeResult, Engine
from .errors import ServiceError, validation_message
from .schemas import DecodeJSONRequest, EncodeJSONRequest

Schema = TypeVar("Schema", bound=BaseModel)


@dataclass(frozen=True)
class ModelFacts:
    """What input checks need to know about a model."""

    name: str
    in_channels: int
    embed_dim: int
    downsample_factor: int
    codebook_size: int
    min_latent_area: int = 1  # latent cells (h * w) one image needs; see `min_latent_area`

    @classmethod
    def of(cls, engine: Engine) -> ModelFacts:
        """Read from a loaded engine; `Services.facts` keeps one per model rather than one per request."""
        return cls(
            engine.name,
            engine.in_channels,
            engine.embed_dim,
            engine.downsample_factor,
            engine.codebook_size,
            min_latent_area(engine.config),
        )


def min_latent_area(config: dict[str, Any]) -> int:
    """The fewest latent cells (h * w) the model can compute for one image.

    GroupNorm refuses a group of a single value, and at the latent resolution the norms see the last two
    block_out_channels (C channels, h * w cells, C / norm_num_groups channels per group): with one channel per
    group a 1x1 latent (a 1x1 image, a 1x1 index map) would fail inside the model, so it is refused as 422 first.
    """
    channels = min(list(config.get("block_out_channels") or [2])[-2:])
    groups = int(config.get("norm_num_groups") or 1)
    return 1 if channels // max(groups, 1) >= 2 else 2


def _check_latent_area(h: int, w: int, facts: ModelFacts, what: str) -> None:
    if h * w < facts.min_latent_area:
        raise ServiceError(
            "invalid_input",
            f"{what} is too small for model {facts.name!r}: it needs at least {facts.min_latent_area} latent cells "
            f"(h x w), got {h}x{w}; send a larger image or index map",
        )


def check_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise ServiceError("too_many_images", f"{count} images in one request; the limit is {max_images}")


def _check_input_pixels(h: int, w: int, max_pixels: int) -> None:
    if h * w > max_pixels:
        raise ServiceError("image_too_large", f"images of {h}x{w} = {h * w} pixels exceed the limit of {max_pixels}")


def parse_json(body: bytes, schema: type[Schema]) -> Schema:
    """A JSON body validated against `schema`: 400 when it is not JSON, 422 naming the fields that do not fit."""
    try:
        return schema.model_validate(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise ServiceError("invalid_json", f"body is not valid JSON: {exc}") from exc
    except ValidationError as exc:
        raise ServiceError("invalid_input", validation_message(exc.errors())) from exc


@dataclass(frozen=True)
class ImageInput:
    tensor: torch.Tensor  # (C, H', W') float32 in [-1, 1], padded to the downsample factor
    original: np.ndarray  # (H, W, C) uint8 as received (after mode conversion)

    @property
    def size(self) -> tuple[int, int]:
        return self.original.shape[0], self.original.shape[1]


@dataclass(frozen=True)
class DecodeInput:
    op: str  # "decode_indices" or "decode_latents"
    tensors: list[torch.Tensor]  # per image: (h, w) int64 or (D, h, w) float32
    crop: tuple[int, int] | None  # [H, W] to crop the outputs to


# encode / reconstruct
def images_from_json(body: bytes) -> tuple[list[bytes], bool]:
    """`{"image": b64}` or `{"images": [b64, ...]}` -> the files, and whether it was the batch form."""
    parsed = parse_json(body, EncodeJSONRequest)
    texts = [parsed.image] if parsed.image is not None else list(parsed.images or [])
    return [codecs.b64decode(text, f"image {i}") for i, text in enumerate(texts)], parsed.images is not None


def prepare_images(files: list[bytes], facts: ModelFacts, max_pixels: int) -> list[ImageInput]:
    return [
        _image_input(codecs.read_image(data, channels=facts.in_channels, max_pixels=max_pixels), facts)
        for data in files
    ]


def images_from_array(images: np.ndarray, facts: ModelFacts, max_pixels: int) -> list[ImageInput]:
    """(B, H, W, C) uint8 (the Open Inference Protocol's IMAGE) -> model inputs, padded as image files are."""
    if images.ndim != 4 or images.shape[3] != facts.in_channels:
        raise ServiceError(
            "invalid_input",
            f"images must be (B, H, W, {facts.in_channels}) for model {facts.name!r}; got shape {list(images.shape)}",
        )
    _check_input_pixels(images.shape[1], images.shape[2], max_pixels)
    return [_image_input(np.ascontiguousarray(image), facts) for image in images]


def _image_input(arr: np.ndarray, facts: ModelFacts) -> ImageInput:
    factor = facts.downsample_factor
    tensor = codecs.to_model_input(arr, factor)  # (C, H', W')
    _check_latent_area(
        tensor.shape[1] // factor, tensor.shape[2] // factor, facts, f"a {arr.shape[0]}x{arr.shape[1]} image"
    )
    return ImageInput(tensor, arr)


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
    if images.ndim != 4 or images.shape[1] != facts.in_channels:
        raise ServiceError(
            "invalid_input", f"images must be (B, {facts.in_channels}, H, W) for model {facts.name!r}; got {shape}"
        )
    factor = facts.downsample_factor
    height, width = images.shape[2], images.shape[3]
    if height % factor or width % factor:
        raise ServiceError("invalid_input", f"image sides must be multiples of the downsample factor {factor}")
    _check_input_pixels(height, width, max_pixels)
    floats = images.float() / 127.5 - 1.0 if dtype == "uint8" else images.float()
    if not bool(torch.isfinite(floats).all()):
        raise ServiceError("invalid_input", "the image tensor holds NaN or infinite values")
    _check_latent_area(height // factor, width // factor, facts, f"a {height}x{width} image")
    return list(floats.unbind(0))


def encode_json(
    facts: ModelFacts,
    inputs: list[ImageInput],
    results: list[EncodeResult],
    batch_form: bool,
    return_latents: bool,
) -> bytes:
    entries = []
    for image, result in zip(inputs, results, strict=True):
        entry: dict[str, Any] = {
            "shape": list(result.indices.shape),
            "image_size": list(image.size),
            "codebook_size": facts.codebook_size,
            "indices": result.indices.tolist(),
        }
        if return_latents:
            entry["latents"] = codecs.b64encode(codecs.tensor_bytes(result.latents.float()))
            entry["latents_shape"] = list(result.latents.shape)
        entries.append(entry)
    body: dict[str, Any] = (
        {"model": facts.name, "results": entries} if batch_form else {"model": facts.name, **entries[0]}
    )
    return orjson.dumps(body)


def latents_binary(
    results: list[EncodeResult], shift_factor: float | None, scaling_factor: float | None
) -> tuple[bytes, list[int]]:
    """diffusers' `remote_encode` reply: float32 (B, D, h, w) `(latents - shift_factor) * scaling_factor`."""
    latents = torch.stack([r.latents for r in results])
    if shift_factor is not None:
        latents = latents - shift_factor
    if scaling_factor is not None:
        latents = latents * scaling_factor
    return codecs.tensor_bytes(latents), list(latents.shape)


def encode_binary(results: list[EncodeResult]) -> tuple[bytes, list[int]]:
    shapes = {tuple(r.indices.shape) for r in results}
    if len(shapes) != 1:
        raise ServiceError(
            "not_acceptable", "images of different sizes cannot form one (B, h, w) tensor; ask for application/json"
        )
    stacked = torch.stack([r.indices for r in results]).to(torch.int32)
    return codecs.tensor_bytes(stacked), list(stacked.shape)


def reconstruct_reply(
    image: ImageInput, output: np.ndarray, fmt: str, options: codecs.EncodeOptions
) -> tuple[bytes, float]:
    height, width = image.size
    cropped = output[:height, :width]
    return codecs.write_image(cropped, fmt, options), codecs.psnr(image.original, cropped)


# decode
def decode_from_json(body: bytes, facts: ModelFacts) -> DecodeInput:
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
    return _latents_input(codecs.read_tensor(data, request.shape, request.dtype), facts, crop)


def decode_from_tensor(body: bytes, shape: list[int] | None, dtype: str | None, facts: ModelFacts) -> DecodeInput:
    if not shape or dtype is None:
        raise ServiceError(
            "invalid_input", "a binary tensor needs the query parameters shape (repeated, in order) and dtype"
        )
    tensor = codecs.read_tensor(body, shape, dtype)
    if dtype in codecs.INDEX_DTYPES:
        return _indices_input(tensor, facts, None)
    if dtype in codecs.LATENT_DTYPES:
        return _latents_input(tensor, facts, None)
    raise ServiceError(
        "invalid_input",
        f"dtype {dtype!r}: use {'/'.join(codecs.INDEX_DTYPES)} for indices or {'/'.join(codecs.LATENT_DTYPES)} "
        "for latents",
    )


def decode_from_array(array: np.ndarray, facts: ModelFacts) -> DecodeInput:
    """Integers (B, h, w) are indices, floats (B, D, h, w) latents (the Open Inference Protocol's tensors)."""
    tensor = torch.from_numpy(array)
    if tensor.is_floating_point():
        return _latents_input(tensor, facts, None)
    return _indices_input(tensor, facts, None)


def remote_latents(
    body: bytes,
    shape: list[int] | None,
    dtype: str | None,
    facts: ModelFacts,
    scaling_factor: float | None,
    shift_factor: float | None,
) -> DecodeInput:
    """diffusers' `remote_decode` body: float latents (B, D, h, w) or (D, h, w), checked, then
    `latents / scaling_factor + shift_factor` as its pipelines unscale them."""
    if not shape or dtype is None:
        raise ServiceError("invalid_input", "send the query parameters shape (repeated, in order) and dtype")
    if dtype not in codecs.LATENT_DTYPES:
        raise ServiceError("invalid_input", f"dtype {dtype!r}: latents must be one of {codecs.LATENT_DTYPES}")
    latents = codecs.read_tensor(body, shape, dtype)
    checked = _latents_input(latents.unsqueeze(0) if latents.ndim == 3 else latents, facts, None)
    unscaled = []
    for item in checked.tensors:
        if scaling_factor is not None:
            item = item / scaling_factor
        if shift_factor is not None:
            item = item + shift_factor
        unscaled.append(item)
    return DecodeInput(checked.op, unscaled, None)


def check_decode_limits(decoded: DecodeInput, facts: ModelFacts, max_images: int, max_pixels: int) -> None:
    """413 for more maps than `max_images` or outputs over `max_pixels` (the maps of a request share a shape)."""
    check_count(len(decoded.tensors), max_images)
    h, w = decoded.tensors[0].shape[-2], decoded.tensors[0].shape[-1]
    pixels = h * w * facts.downsample_factor**2
    if pixels > max_pixels:
        raise ServiceError("image_too_large", f"the output would be {pixels} pixels; the limit is {max_pixels}")


def _indices_input(indices: torch.Tensor, facts: ModelFacts, crop: tuple[int, int] | None) -> DecodeInput:
    if indices.ndim == 2:
        indices = indices.unsqueeze(0)  # (h, w) -> (1, h, w)
    if indices.ndim != 3 or indices.numel() == 0:
        raise ServiceError("invalid_input", f"indices must be (h, w) or (B, h, w), got shape {list(indices.shape)}")
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= facts.codebook_size:
        raise ServiceError(
            "invalid_input",
            f"indices must lie in [0, {facts.codebook_size}) for model {facts.name!r}; got values in [{low}, {high}]",
        )
    indices = indices.long()
    _check_latent_area(indices.shape[1], indices.shape[2], facts, "the index map")
    _check_crop(crop, indices.shape[1], indices.shape[2], facts)
    return DecodeInput("decode_indices", list(indices.unbind(0)), crop)


def _latents_input(latents: torch.Tensor, facts: ModelFacts, crop: tuple[int, int] | None) -> DecodeInput:
    if latents.ndim != 4 or latents.shape[1] != facts.embed_dim:
        raise ServiceError(
            "invalid_input",
            f"latents must be (B, {facts.embed_dim}, h, w) for model {facts.name!r} (vq_embed_dim "
            f"{facts.embed_dim}); got shape {list(latents.shape)}",
        )
    latents = latents.float()
    if not bool(torch.isfinite(latents).all()):
        raise ServiceError("invalid_input", "latents hold NaN or infinite values")
    _check_latent_area(latents.shape[2], latents.shape[3], facts, "the latent map")
    _check_crop(crop, latents.shape[2], latents.shape[3], facts)
    return DecodeInput("decode_latents", list(latents.unbind(0)), crop)


def _check_crop(crop: tuple[int, int] | None, h: int, w: int, facts: ModelFacts) -> None:
    if crop is None:
        return
    full = (h * facts.downsample_factor, w * facts.downsample_factor)
    if not (0 < crop[0] <= full[0] and 0 < crop[1] <= full[1]):
        raise ServiceError(
            "invalid_input", f"image_size {list(crop)} must be positive and within the output {list(full)}"
        )


def crop_outputs(outputs: list[np.ndarray], crop: tuple[int, int] | None) -> list[np.ndarray]:
    if crop is None:
        return outputs
    return [out[: crop[0], : crop[1]] for out in outputs]


def images_json(outputs: list[np.ndarray], fmt: str, options: codecs.EncodeOptions) -> bytes:
    return orjson.dumps({"images": [codecs.b64encode(codecs.write_image(o, fmt, options)) for o in outputs]})


def images_binary(outputs: list[np.ndarray]) -> tuple[bytes, list[int]]:
    shapes = {o.shape for o in outputs}
    if len(shapes) != 1:
        raise ServiceError("not_acceptable", "outputs of different sizes cannot form one tensor; ask for JSON")
    stacked = np.ascontiguousarray(np.stack(outputs))  # (B, H, W, C) uint8
    return stacked.tobytes(), list(stacked.shape)
