"""The REST protocol's replies (/encode, /decode, /reconstruct): model outputs -> JSON, tensor and image bodies.

CPU work for the codec pool; the routes in `routes/inference.py` pick which one by content negotiation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import torch

from model.pixels import psnr

from .. import codecs
from ..errors import ServiceError
from ..facts import ModelFacts
from ..inputs import ImageInput
from ..ops import Encoded


def encode_json(
    facts: ModelFacts,
    inputs: list[ImageInput],
    results: list[Encoded],
    batch_form: bool,
    return_latents: bool,
    nll_bits: list[float] | None = None,
) -> bytes:
    entries = []
    for i, (image, result) in enumerate(zip(inputs, results, strict=True)):
        entry: dict[str, Any] = {
            "shape": list(result.indices.shape),
            "image_size": list(image.size),
            "codebook_size": facts.config.codebook_size,
            "indices": result.indices.tolist(),
        }
        if return_latents:
            entry["latents"] = codecs.b64encode(codecs.tensor_bytes(result.latents.float()))
            entry["latents_shape"] = list(result.latents.shape)
        if nll_bits is not None:
            entry["nll_bits"] = nll_bits[i]
        entries.append(entry)
    body: dict[str, Any] = (
        {"model": facts.name, "results": entries} if batch_form else {"model": facts.name, **entries[0]}
    )
    return orjson.dumps(body)


def encode_binary(results: list[Encoded]) -> tuple[bytes, list[int]]:
    shapes = {tuple(r.indices.shape) for r in results}
    if len(shapes) != 1:
        raise ServiceError(
            "not_acceptable", "images of different sizes cannot form one (B, h, w) tensor; ask for application/json"
        )
    stacked = torch.stack([r.indices for r in results]).to(torch.int32)
    return codecs.tensor_bytes(stacked), list(stacked.shape)


def image_sizes_header(inputs: list[ImageInput]) -> str:
    """The binary encode reply's `image_size` header: `[[H, W], ...]`, one per image, as the JSON replies hold."""
    return orjson.dumps([list(image.size) for image in inputs]).decode()


def reconstruct_reply(
    image: ImageInput, output: np.ndarray, fmt: str, options: codecs.ImageCompression
) -> tuple[bytes, float]:
    height, width = image.size
    cropped = output[:height, :width]
    return codecs.write_image(cropped, fmt, options), psnr(image.original, cropped)


def reconstruct_json(
    model: str, image: ImageInput, output: np.ndarray, options: codecs.ImageCompression
) -> tuple[bytes, float]:
    """The reconstruction as JSON: base64 PNG, PSNR, its shape and the input's size."""
    png, quality = reconstruct_reply(image, output, "png", options)
    height, width = image.size
    body = {
        "model": model,
        "image": codecs.b64encode(png),
        "psnr": quality,
        "shape": [height, width, int(output.shape[2])],
        "image_size": [height, width],
    }
    return orjson.dumps(body), quality


def crop_outputs(outputs: list[np.ndarray], crop: tuple[int, int] | None) -> list[np.ndarray]:
    if crop is None:
        return outputs
    return [out[: crop[0], : crop[1]] for out in outputs]


def images_json(outputs: list[np.ndarray], fmt: str, options: codecs.ImageCompression) -> bytes:
    return orjson.dumps({"images": [codecs.b64encode(codecs.write_image(o, fmt, options)) for o in outputs]})


def images_binary(outputs: list[np.ndarray]) -> tuple[bytes, list[int]]:
    shapes = {o.shape for o in outputs}
    if len(shapes) != 1:
        raise ServiceError("not_acceptable", "outputs of different sizes cannot form one tensor; ask for JSON")
    stacked = np.ascontiguousarray(np.stack(outputs))  # (B, H, W, C) uint8
    return stacked.tobytes(), list(stacked.shape)


def samples_json(
    model: str,
    seed: int,
    grids: list[torch.Tensor],
    images: list[np.ndarray],
    fmt: str,
    options: codecs.ImageCompression,
) -> bytes:
    """/generate and /complete as JSON: each sample's code grid and its image (base64)."""
    samples = [
        {"indices": grid.tolist(), "image": codecs.b64encode(codecs.write_image(image, fmt, options))}
        for grid, image in zip(grids, images, strict=True)
    ]
    return orjson.dumps({"model": model, "shape": list(grids[0].shape), "seed": seed, "samples": samples})
