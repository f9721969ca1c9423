"""POST /encode, /decode, /reconstruct: parse and validate, hand CPU work to the codec pool and images to the
batcher, pick the reply format. Handlers never compute tensors themselves."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from ..batching import Item
from ..deps import InferenceGuard, ServicesDep
from ..engine import Engine
from ..errors import ERROR_RESPONSES, ServiceError
from ..payloads import (
    ImageInput,
    ModelFacts,
    crop_outputs,
    decode_from_json,
    decode_from_tensor,
    encode_binary,
    encode_json,
    images_binary,
    images_json,
    min_latent_area,
    prepare_images,
    reconstruct_reply,
)
from ..runtime import Services
from ..schemas import DecodeJSONRequest, DecodeJSONResponse, EncodeBatchResponse, EncodeJSONRequest, EncodeResponse
from .common import await_results, media_type, negotiate, note_batch, read_body, read_image_files

router = APIRouter(tags=["inference"], dependencies=InferenceGuard)

ImageFormat = Literal["png", "jpeg", "webp"]
ModelQuery = Annotated[str | None, Query(description="served model name; default: the first configured")]
FormatQuery = Annotated[ImageFormat | None, Query(description="image format of the reply; overrides Accept")]
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
FORMAT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
TENSOR_TYPES = ("tensor/binary", "application/octet-stream")

_BINARY = {"schema": {"type": "string", "format": "binary"}}
IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": _BINARY,
            "image/jpeg": _BINARY,
            "image/webp": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["image"],
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/EncodeJSONRequest"}},
        },
    }
}
DECODE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/DecodeJSONRequest"}},
            "tensor/binary": _BINARY,
            "application/octet-stream": _BINARY,
        },
    }
}


def facts(engine: Engine) -> ModelFacts:
    return ModelFacts(
        engine.name,
        engine.in_channels,
        engine.embed_dim,
        engine.downsample_factor,
        engine.codebook_size,
        min_latent_area(engine.config),
    )


async def run_items(
    request: Request, services: Services, ticket: Any, op: str, tensors: list[Any], params: tuple[Any, ...] = ()
) -> list[Any]:
    """Queue one item per tensor and wait for all of them."""
    factor = ticket.worker.engine.downsample_factor
    items = [Item(op, t, pixels=_pixels(op, t, factor), params=params) for t in tensors]
    results = await await_results(request, ticket, services.batcher.submit(ticket, items))
    note_batch(request, ticket)
    return results


def _pixels(op: str, tensor: Any, factor: int) -> int:
    """Image pixels the item stands for (the input for encode, the output for decode)."""
    h, w = tensor.shape[-2], tensor.shape[-1]
    return int(h * w if op in ("encode", "reconstruct") else h * w * factor * factor)


async def _images(request: Request, services: Services, engine: Engine) -> tuple[list[ImageInput], bool]:
    files, batch_form = await read_image_files(request, services)
    inputs = await services.codec("image_decode", prepare_images, files, facts(engine), services.settings.max_pixels)
    return inputs, batch_form


@router.post(
    "/encode",
    response_model=None,
    openapi_extra=IMAGE_BODY,
    responses={
        200: {
            "description": "Code indices: one result, or `results` for a batch form; int32 (B, h, w) as binary",
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            {"$ref": "#/components/schemas/EncodeResponse"},
                            {"$ref": "#/components/schemas/EncodeBatchResponse"},
                        ]
                    }
                },
                "application/octet-stream": _BINARY,
            },
        },
        **ERROR_RESPONSES,
    },
)
async def encode(
    request: Request,
    services: ServicesDep,
    model: ModelQuery = None,
    return_latents: Annotated[bool, Query(description="also return the latents before quantization")] = False,
) -> Response:
    """Encode images to codebook indices (and optionally latents)."""
    engine = services.engine(model)
    ticket = services.batcher.admit(engine.name)
    try:
        inputs, batch_form = await _images(request, services, engine)
        results = await run_items(request, services, ticket, "encode", [i.tensor for i in inputs])
    finally:
        ticket.abandon()
    if negotiate(request, ["application/json", "application/octet-stream"]) == "application/octet-stream":
        body, shape = await services.codec("tensor_encode", encode_binary, results)
        return Response(body, media_type="application/octet-stream", headers=_tensor_headers(shape, "int32"))
    content = await services.codec(
        "json_encode", encode_json, facts(engine), inputs, results, batch_form, return_latents
    )
    return Response(content, media_type="application/json")


@router.post(
    "/decode",
    response_model=None,
    openapi_extra=DECODE_BODY,
    responses={
        200: {
            "description": "One image, base64 images as JSON, or uint8 (B, H, W, C) as tensor/binary",
            "content": {
                "image/png": _BINARY,
                "image/jpeg": _BINARY,
                "image/webp": _BINARY,
                "application/json": {"schema": {"$ref": "#/components/schemas/DecodeJSONResponse"}},
                "tensor/binary": _BINARY,
            },
        },
        **ERROR_RESPONSES,
    },
)
async def decode(
    request: Request,
    services: ServicesDep,
    model: ModelQuery = None,
    force_not_quantize: Annotated[bool, Query(description="decode latents without quantizing them")] = False,
    scaling_factor: Annotated[float | None, Query(description="divide latents by this first")] = None,
    format: FormatQuery = None,  # noqa: A002 - the contract's name
    shape: Annotated[list[int] | None, Query(description="binary body: tensor shape, repeated in order")] = None,
    dtype: Annotated[
        str | None, Query(description="binary body: int16/int32/int64 or float16/bfloat16/float32")
    ] = None,
) -> Response:
    """Decode codebook indices or latents to images."""
    engine = services.engine(model)
    if scaling_factor is not None and (scaling_factor == 0 or not math.isfinite(scaling_factor)):
        raise ServiceError(
            "invalid_input", f"scaling_factor must be a finite number other than 0, got {scaling_factor}"
        )
    wanted = negotiate(
        request, ["image/png", "image/jpeg", "image/webp", "application/json", *TENSOR_TYPES], override=None
    )
    if format is None and wanted is None:
        raise ServiceError(
            "not_acceptable", "the reply can be image/png, image/jpeg, image/webp, application/json or tensor/binary"
        )
    ticket = services.batcher.admit(engine.name)
    try:
        kind = media_type(request)
        body = await read_body(request, services.settings.max_body_bytes)
        if kind == "application/json":
            parsed = await services.codec("json_decode", decode_from_json, body, facts(engine))
        elif kind in TENSOR_TYPES:
            parsed = await services.codec("tensor_decode", decode_from_tensor, body, shape, dtype, facts(engine))
        else:
            raise ServiceError(
                "unsupported_media_type",
                f"Content-Type {kind or '(none)'!r} is not accepted; send application/json or tensor/binary",
            )
        _check_decode_limits(services, engine, parsed.tensors)
        params = (force_not_quantize, scaling_factor) if parsed.op == "decode_latents" else ()
        outputs = crop_outputs(
            await run_items(request, services, ticket, parsed.op, parsed.tensors, params), parsed.crop
        )
    finally:
        ticket.abandon()
    return await _image_reply(services, outputs, format, wanted)


def _check_decode_limits(services: Services, engine: Engine, tensors: list[Any]) -> None:
    settings = services.settings
    if len(tensors) > settings.max_images_per_request:
        raise ServiceError(
            "too_many_images", f"{len(tensors)} images in one request; the limit is {settings.max_images_per_request}"
        )
    h, w = tensors[0].shape[-2], tensors[0].shape[-1]
    pixels = h * w * engine.downsample_factor**2
    if pixels > settings.max_pixels:
        raise ServiceError(
            "image_too_large", f"the output would be {pixels} pixels; the limit is {settings.max_pixels}"
        )


async def _image_reply(services: Services, outputs: list[Any], fmt: str | None, wanted: str | None) -> Response:
    options = services.encode_options
    if fmt is not None or wanted in IMAGE_TYPES:
        fmt = fmt or IMAGE_TYPES[wanted or "image/png"]
        if len(outputs) > 1:
            raise ServiceError(
                "not_acceptable",
                f"{len(outputs)} images cannot be one {fmt.upper()}; ask for application/json or tensor/binary",
            )
        from ..codecs import write_image

        content = await services.codec("image_encode", write_image, outputs[0], fmt, options)
        return Response(content, media_type=FORMAT_TYPES[fmt])
    if wanted == "application/json":
        content = await services.codec("image_encode", images_json, outputs, "png", options)
        return Response(content, media_type="application/json")
    body, shape = await services.codec("tensor_encode", images_binary, outputs)
    return Response(body, media_type="tensor/binary", headers=_tensor_headers(shape, "uint8"))


def _tensor_headers(shape: list[int], dtype: str) -> dict[str, str]:
    return {"shape": json.dumps(shape), "dtype": dtype}


@router.post(
    "/reconstruct",
    response_model=None,
    openapi_extra=IMAGE_BODY,
    responses={
        200: {
            "description": "The reconstruction at the input's size; header x-psnr in dB",
            "content": {"image/png": _BINARY, "image/jpeg": _BINARY, "image/webp": _BINARY},
        },
        **ERROR_RESPONSES,
    },
)
async def reconstruct(
    request: Request,
    services: ServicesDep,
    model: ModelQuery = None,
    format: FormatQuery = None,  # noqa: A002
) -> Response:
    """Encode, quantize and decode one image; report PSNR against the input."""
    engine = services.engine(model)
    fmt = format or IMAGE_TYPES.get(negotiate(request, list(IMAGE_TYPES)) or "image/png", "png")
    ticket = services.batcher.admit(engine.name)
    try:
        inputs, _ = await _images(request, services, engine)
        if len(inputs) != 1:
            raise ServiceError("invalid_input", f"/reconstruct takes one image, got {len(inputs)}")
        (output,) = await run_items(request, services, ticket, "reconstruct", [inputs[0].tensor])
    finally:
        ticket.abandon()
    content, quality = await services.codec(
        "image_encode", reconstruct_reply, inputs[0], output, fmt, services.encode_options
    )
    return Response(content, media_type=FORMAT_TYPES[fmt], headers={"x-psnr": f"{quality:.4f}"})


# schemas referenced from openapi_extra must be registered with the app's components
OPENAPI_MODELS = (EncodeJSONRequest, EncodeResponse, EncodeBatchResponse, DecodeJSONRequest, DecodeJSONResponse)
