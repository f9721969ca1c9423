"""Request payloads -> model inputs and model outputs -> reply bodies, for the inference routes.

CPU work that runs in the codec pool (via `Services.codec`). It checks inputs against the model (index range,
latent channels, finiteness, sizes) so the engine only ever sees tensors it can compute. No HTTP objects here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch
from pydantic import ValidationError

from . import codecs
from .engine import EncodeResult
from .errors import ServiceError
from .schemas import DecodeJSONRequest


@dataclass(frozen=True)
class ModelFacts:
    """What input checks need to know about a model."""

    name: str
    in_channels: int
    embed_dim: int
    downsample_factor: int
    codebook_size: int
    min_latent_area: int = 1  # latent cells (h * w) one image needs; see `min_latent_area`


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
def prepare_images(files: list[bytes], facts: ModelFacts, max_pixels: int) -> list[ImageInput]:
    out = []
    for data in files:
        arr = codecs.read_image(data, channels=facts.in_channels, max_pixels=max_pixels)
        tensor = codecs.to_model_input(arr, facts.downsample_factor)  # (C, H', W')
        factor = facts.downsample_factor
        _check_latent_area(
            tensor.shape[1] // factor, tensor.shape[2] // factor, facts, f"a {arr.shape[0]}x{arr.shape[1]} image"
        )
        out.append(ImageInput(tensor, arr))
    return out


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
    try:
        request = DecodeJSONRequest.model_validate(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise ServiceError("invalid_json", f"body is not valid JSON: {exc}") from exc
    except ValidationError as exc:
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]]
        raise ServiceError("invalid_input", "; ".join(parts)) from exc
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
    if latents.ndim != 4:
        raise ServiceError("invalid_input", f"latents must be (B, C, h, w), got shape {list(latents.shape)}")
    if latents.shape[1] != facts.embed_dim:
        raise ServiceError(
            "invalid_input",
            f"latents have {latents.shape[1]} channels; model {facts.name!r} takes {facts.embed_dim} (vq_embed_dim)",
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
