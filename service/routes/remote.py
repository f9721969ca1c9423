"""POST /remote/decode and /remote/encode: diffusers' remote VAE protocol, so that `remote_decode` and
`remote_encode` (diffusers.utils.remote_utils) and the front-ends built on them (SD.Next, ComfyUI nodes) can
use vqserve as their remote decoder.

The protocol: raw little-endian tensor bytes in the body; `shape` (repeated), `dtype`, `scaling_factor`,
`shift_factor`, `output_type` (pil|pt), `image_format` (png|jpg), `partial_postprocess` in the query;
`Accept` picks the reply (`image/png`, `image/jpeg`, or `tensor/binary` with `shape` and `dtype` headers).
VQ semantics: decode computes `latents / scaling_factor + shift_factor` and decodes as diffusers'
`VQModel.decode` does (quantized first unless the model is set to skip it, as Kandinsky's MoVQ pipelines
do); encode returns `(latents - shift_factor) * scaling_factor` of the latents before quantization.

Uint8 replies ride the batcher like /decode. Float replies (`pt` without partial postprocessing, or `pil`
for a client that brings its own processor) need the decoder's raw output, which the engine's batch ops do
not return; they run on the engine's own thread through `_on_engine_thread`, within the queue bound.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from .. import codecs
from ..deps import InferenceGuard, ServicesDep
from ..engine import Engine
from ..errors import ERROR_RESPONSES, ServiceError
from ..runtime import Services
from .common import media_type, negotiate, read_body
from .inference import run_items

router = APIRouter(prefix="/remote", tags=["remote (diffusers)"], dependencies=InferenceGuard)

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_TENSOR_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"tensor/binary": _BINARY}}}
_IMAGE_OR_TENSOR_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"tensor/binary": _BINARY, "image/png": _BINARY}},
}
ModelQuery = Annotated[str | None, Query(description="served model name; default: the first configured")]
ShapeQuery = Annotated[list[int] | None, Query(description="tensor shape, repeated in order")]
FloatQuery = Annotated[float | None, Query()]


def force_not_quantize_default(services: Services, engine: Engine) -> bool:
    """Whether a model decodes remote latents without quantizing them.

    The setting VQSERVE_REMOTE_FORCE_NOT_QUANTIZE (model names) decides when set; otherwise MoVQ-style models
    (`norm_type: spatial`, Kandinsky's decoder, whose pipelines pass `force_not_quantize=True`) skip quantization
    and all others quantize, as `VQModel.decode` does by default.
    """
    configured = services.settings.remote_force_not_quantize
    if configured is not None:
        return engine.name in configured
    return bool(engine.config.get("norm_type") == "spatial")


async def _on_engine_thread(services: Services, engine: Engine, fn: Any, *args: Any) -> Any:
    """Run `fn(model, *args)` on the engine's thread (where everything touching the device runs), holding one
    admission slot so a full queue still answers 429, bounded by the request deadline."""
    ticket = services.batcher.admit(engine.name, announce=False)  # a slot only: it never submits batch items
    try:
        timeout = services.settings.request_timeout_s
        return await asyncio.wait_for(engine.run_on_thread(fn, *args), timeout)
    except TimeoutError as exc:
        raise ServiceError(
            "deadline_exceeded",
            "the request deadline (VQSERVE_REQUEST_TIMEOUT_S) passed",
        ) from exc
    finally:
        ticket.abandon()


def _decode_float(
    model: Any,
    latents: torch.Tensor,
    force_not_quantize: bool,
    unit_range: bool,
) -> torch.Tensor:
    """(B, D, h, w) -> decoder output (B, C, H, W) in [-1, 1], or in [0, 1] as diffusers' processors make."""
    with torch.inference_mode():
        images = model.decode(latents.to(model.device, model.dtype), force_not_quantize=force_not_quantize)
        if unit_range:
            images = (images / 2 + 0.5).clamp(0, 1)
        return images.cpu()


def _read_latents(body: bytes, shape: list[int] | None, dtype: str | None, engine: Engine) -> torch.Tensor:
    if not shape or dtype is None:
        raise ServiceError("invalid_input", "send the query parameters shape (repeated, in order) and dtype")
    if dtype not in codecs.LATENT_DTYPES:
        raise ServiceError("invalid_input", f"dtype {dtype!r}: latents must be one of {codecs.LATENT_DTYPES}")
    latents = codecs.read_tensor(body, shape, dtype)
    if latents.ndim == 3:
        latents = latents.unsqueeze(0)  # (D, h, w) -> (1, D, h, w)
    if latents.ndim != 4 or latents.shape[1] != engine.embed_dim:
        raise ServiceError(
            "invalid_input",
            f"latents must be (B, {engine.embed_dim}, h, w) for model {engine.name!r} (vq_embed_dim "
            f"{engine.embed_dim}); got shape {shape}",
        )
    latents = latents.float()
    if not bool(torch.isfinite(latents).all()):
        raise ServiceError("invalid_input", "latents hold NaN or infinite values")
    return latents


def _unscale(latents: torch.Tensor, scaling_factor: float | None, shift_factor: float | None) -> torch.Tensor:
    if scaling_factor is not None:
        latents = latents / scaling_factor
    if shift_factor is not None:
        latents = latents + shift_factor
    return latents


def _check_size(services: Services, engine: Engine, batch: int, h: int, w: int) -> None:
    settings = services.settings
    if batch > settings.max_images_per_request:
        raise ServiceError(
            "too_many_images",
            f"{batch} images in one request; the limit is {settings.max_images_per_request}",
        )
    pixels = h * w * engine.downsample_factor**2
    if pixels > settings.max_pixels:
        raise ServiceError(
            "image_too_large", f"the output would be {pixels} pixels; the limit is {settings.max_pixels}"
        )


def _tensor_reply(tensor: torch.Tensor, dtype: str) -> Response:
    headers = {"shape": json.dumps(list(tensor.shape)), "dtype": dtype}
    return Response(codecs.tensor_bytes(tensor), media_type="tensor/binary", headers=headers)


@router.post(
    "/decode",
    response_model=None,
    openapi_extra=_TENSOR_BODY,
    responses={
        200: {
            "description": "An image, or a tensor with `shape` and `dtype` headers",
            "content": {"image/png": _BINARY, "image/jpeg": _BINARY, "tensor/binary": _BINARY},
        },
        **ERROR_RESPONSES,
    },
)
async def remote_decode(
    request: Request,
    services: ServicesDep,
    model: ModelQuery = None,
    shape: ShapeQuery = None,
    dtype: Annotated[str | None, Query(description="float16, bfloat16 or float32")] = None,
    scaling_factor: Annotated[float | None, Query(description="latents are divided by it first")] = None,
    shift_factor: Annotated[float | None, Query(description="then this is added")] = None,
    do_scaling: Annotated[
        bool,
        Query(description="deprecated: without scaling_factor, use the model's"),
    ] = False,
    output_type: Annotated[Literal["pil", "pt"], Query(description="pil: an image; pt: a tensor")] = "pil",
    image_format: Annotated[Literal["png", "jpg", "jpeg"], Query()] = "jpg",
    partial_postprocess: Annotated[
        bool,
        Query(description="pt: uint8 (B, H, W, C) instead of floats"),
    ] = False,
    force_not_quantize: Annotated[bool | None, Query(description="default: the model's setting")] = None,
) -> Response:
    """diffusers' `remote_decode`: latents -> an image (pil) or a tensor (pt)."""
    engine = services.engine(model)
    wanted = negotiate(request, ["image/png", "image/jpeg", "tensor/binary"])
    if wanted is None:
        raise ServiceError("not_acceptable", "the reply can be image/png, image/jpeg or tensor/binary")
    if media_type(request) not in ("tensor/binary", "application/octet-stream", ""):
        raise ServiceError(
            "unsupported_media_type",
            "send the latents as raw bytes (Content-Type tensor/binary)",
        )
    if scaling_factor == 0:
        raise ServiceError("invalid_input", "scaling_factor must not be 0")
    if scaling_factor is None and do_scaling:
        scaling_factor = float(engine.config.get("scaling_factor") or 1.0)
    skip_quantize = force_not_quantize
    if skip_quantize is None:
        skip_quantize = force_not_quantize_default(services, engine)
    body = await read_body(request, services.settings.max_body_bytes)
    latents = await services.codec("tensor_decode", _read_latents, body, shape, dtype, engine)
    _check_size(services, engine, latents.shape[0], latents.shape[2], latents.shape[3])
    latents = _unscale(latents, scaling_factor, shift_factor)

    if wanted == "tensor/binary" and not (output_type == "pt" and partial_postprocess):
        # floats: raw decoder output (pt), or in [0, 1] for a client-side processor (pil)
        images = await _on_engine_thread(
            services,
            engine,
            _decode_float,
            latents,
            skip_quantize,
            output_type == "pil",
        )
        return _tensor_reply(images, engine.dtype)

    ticket = services.batcher.admit(engine.name)
    try:
        outputs = await run_items(
            request, services, ticket, "decode_latents", list(latents.unbind(0)), (skip_quantize, None)
        )
    finally:
        ticket.abandon()
    if wanted == "tensor/binary":  # pt with partial postprocessing: uint8 (B, H, W, C)
        return _tensor_reply(torch.from_numpy(np.stack(outputs)), "uint8")
    if len(outputs) != 1:
        raise ServiceError(
            "not_acceptable",
            f"{len(outputs)} images cannot be one image; ask for output_type=pt (tensor/binary)",
        )
    fmt = "png" if wanted == "image/png" else "jpeg"
    content = await services.codec(
        "image_encode",
        codecs.write_image,
        outputs[0],
        fmt,
        services.encode_options,
    )
    return Response(content, media_type=wanted)


def _read_images(
    body: bytes, shape: list[int] | None, dtype: str | None, engine: Engine, max_pixels: int
) -> list[torch.Tensor]:
    """An image file, or a tensor (B, C, H, W) / (C, H, W): floats in [-1, 1] or uint8 in [0, 255] -> model
    inputs (C, H, W) float32 in [-1, 1]."""
    if not shape:
        arr = codecs.read_image(body, channels=engine.in_channels, max_pixels=max_pixels)
        return [codecs.to_model_input(arr, engine.downsample_factor)]
    if dtype is None:
        raise ServiceError("invalid_input", "a tensor body needs the query parameter dtype")
    if dtype not in (*codecs.LATENT_DTYPES, "uint8"):
        raise ServiceError(
            "invalid_input",
            f"dtype {dtype!r}: images must be uint8 or float16/bfloat16/float32",
        )
    images = codecs.read_tensor(body, shape, dtype)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    factor = engine.downsample_factor
    if images.ndim != 4 or images.shape[1] != engine.in_channels:
        raise ServiceError(
            "invalid_input",
            f"images must be (B, {engine.in_channels}, H, W) for model {engine.name!r}; got {shape}",
        )
    if images.shape[2] % factor or images.shape[3] % factor:
        raise ServiceError(
            "invalid_input",
            f"image sides must be multiples of the downsample factor {factor}",
        )
    if images.shape[2] * images.shape[3] > max_pixels:
        raise ServiceError(
            "image_too_large",
            f"images of {images.shape[2]}x{images.shape[3]} exceed the limit",
        )
    floats = images.float() / 127.5 - 1.0 if dtype == "uint8" else images.float()
    if not bool(torch.isfinite(floats).all()):
        raise ServiceError("invalid_input", "the image tensor holds NaN or infinite values")
    return list(floats.unbind(0))


@router.post(
    "/encode",
    response_model=None,
    openapi_extra=_IMAGE_OR_TENSOR_BODY,
    responses={
        200: {
            "description": "Latents (B, D, h, w) with `shape` and `dtype` headers",
            "content": {"tensor/binary": _BINARY},
        },
        **ERROR_RESPONSES,
    },
)
async def remote_encode(
    request: Request,
    services: ServicesDep,
    model: ModelQuery = None,
    shape: ShapeQuery = None,
    dtype: Annotated[
        str | None,
        Query(description="for a tensor body: uint8, float16, bfloat16, float32"),
    ] = None,
    scaling_factor: Annotated[float | None, Query(description="latents are multiplied by it last")] = None,
    shift_factor: Annotated[float | None, Query(description="subtracted before scaling")] = None,
) -> Response:
    """diffusers' `remote_encode`: an image (file or tensor) -> latents before quantization, scaled."""
    engine = services.engine(model)
    ticket = services.batcher.admit(engine.name)
    try:
        body = await read_body(request, services.settings.max_body_bytes)
        if not body:
            raise ServiceError("bad_request", "the body is empty; send an image file or raw tensor bytes")
        inputs = await services.codec(
            "image_decode", _read_images, body, shape, dtype, engine, services.settings.max_pixels
        )
        if len(inputs) > services.settings.max_images_per_request:
            raise ServiceError("too_many_images", f"{len(inputs)} images in one request is over the limit")
        results = await run_items(request, services, ticket, "encode", inputs)
    finally:
        ticket.abandon()
    latents = torch.stack([r.latents for r in results])  # (B, D, h, w) float32
    if shift_factor is not None:
        latents = latents - shift_factor
    if scaling_factor is not None:
        latents = latents * scaling_factor
    return _tensor_reply(latents, "float32")
