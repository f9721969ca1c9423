"""POST /encode, /decode, /reconstruct: parse and validate, hand CPU work to the codec pool and inputs to the
batcher, pick the reply format. Handlers never compute tensors themselves."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from .. import sampling, tiles
from ..batching import Ticket
from ..codecs import write_image
from ..deps import InferenceGuard, ModelQuery, ServicesDep
from ..errors import ServiceError
from ..facts import ModelFacts
from ..inputs import (
    ImageInput,
    check_decode_limits,
    decode_from_json,
    decode_from_tensor,
    latent_factors,
    prepare_images,
)
from ..ops import LatentDecode, Op, PriorNLL
from ..protocols.rest import (
    crop_outputs,
    encode_binary,
    encode_json,
    image_sizes_header,
    images_binary,
    images_json,
    reconstruct_json,
    reconstruct_reply,
)
from ..runtime import Services
from ..schemas import (
    DecodeJSONRequest,
    DecodeJSONResponse,
    EncodeBatchResponse,
    EncodeJSONRequest,
    EncodeResponse,
    ErrorResponse,
    InferenceRequest,
    OIPErrorResponse,
    ReconstructJSONResponse,
)
from .admission import admit
from .bodies import read_image_files, tensor_response
from .negotiation import media_type, negotiate
from .openapi import BINARY, binary, replies, request_body

router = APIRouter(tags=["inference"], dependencies=InferenceGuard)

# `jpg` is `jpeg`: diffusers' remote protocol spells it so, and people type it
ImageFormat = Literal["png", "jpeg", "jpg", "webp"]
FormatQuery = Annotated[
    ImageFormat | None, Query(description="image format of the reply (`jpg` is `jpeg`); overrides Accept")
]
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
FORMAT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
TENSOR_TYPES = ("tensor/binary", "application/octet-stream")
DECODE_TYPES = ("image/png", "image/jpeg", "image/webp", "application/json", *TENSOR_TYPES)
RECONSTRUCT_TYPES = ("image/png", "image/jpeg", "image/webp", "application/json")
MANY_IMAGES_TYPES = ("application/json", *TENSOR_TYPES)  # what several images can be sent as

IMAGE_BODY = request_body(
    {
        **binary("image/png", "image/jpeg", "image/webp", "application/octet-stream"),
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["image"],
            }
        },
        "application/json": {"schema": {"$ref": "#/components/schemas/EncodeJSONRequest"}},
    }
)
DECODE_BODY = request_body(
    {
        "application/json": {"schema": {"$ref": "#/components/schemas/DecodeJSONRequest"}},
        **binary("tensor/binary", "application/octet-stream"),
    }
)


async def _images(request: Request, services: Services, facts: ModelFacts) -> tuple[list[ImageInput], bool]:
    files, batch_form = await read_image_files(request, services)
    inputs = await services.offload("image_decode", prepare_images, files, facts, services.settings.max_pixels)
    return inputs, batch_form


@router.post(
    "/encode",
    response_model=None,
    openapi_extra=IMAGE_BODY,
    responses=replies(
        "Code indices: one result, or `results` for a batch form; int32 (B, h, w) as binary",
        {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"$ref": "#/components/schemas/EncodeResponse"},
                        {"$ref": "#/components/schemas/EncodeBatchResponse"},
                    ]
                }
            },
            "application/octet-stream": BINARY,
        },
    ),
)
async def encode(
    request: Request,
    services: ServicesDep,
    model: ModelQuery = None,
    return_latents: Annotated[bool, Query(description="also return the latents before quantization")] = False,
    return_nll: Annotated[
        bool, Query(description="also return nll_bits: mean bits per code under the model's prior (422 no_prior)")
    ] = False,
    label: Annotated[
        int | None, Query(description="with return_nll: the class the likelihood is conditioned on; -1: none")
    ] = None,
) -> Response:
    """Encode images to codebook indices (and optionally latents, and their likelihood under the prior)."""
    facts = services.model(model)
    nll_label = sampling.check_label(facts, label) if return_nll else None  # 422 no_prior before any work
    async with admit(request, services, facts) as ticket:
        inputs, batch_form = await _images(request, services, facts)
        if return_nll:  # 413 before encoding for a grid the prior cannot run on within the memory budget
            factor = facts.config.downsample_factor
            for h, w in {(i.tensor.shape[-2] // factor, i.tensor.shape[-1] // factor) for i in inputs}:
                sampling.check_fits(services, facts, (h, w))
        results = (await tiles.run(ticket, services, facts, Op.ENCODE, [i.tensor for i in inputs])).values
        nll = await _nll(ticket, results, nll_label) if return_nll else None
    if negotiate(request, ["application/json", "application/octet-stream"]) == "application/octet-stream":
        body, shape = await services.offload("tensor_encode", encode_binary, results)
        reply = tensor_response(body, shape, "int32", "application/octet-stream")
        reply.headers["image_size"] = image_sizes_header(inputs)  # the sizes to crop back to when decoding
        if nll is not None:
            reply.headers["x-nll-bits"] = json.dumps(nll)
        return reply
    content = await services.offload(
        "json_encode", encode_json, facts, inputs, results, batch_form, return_latents, nll
    )
    return Response(content, media_type="application/json")


async def _nll(ticket: Ticket, results: list[Any], label: int | None) -> list[float]:
    """Each encoded grid's mean bits per code under the model's prior (batched with other requests' grids)."""
    return list((await ticket.run(Op.PRIOR_NLL, sampling.nll_inputs(results), PriorNLL(label))).values)


@router.post(
    "/decode",
    response_model=None,
    openapi_extra=DECODE_BODY,
    responses=replies(
        "One image, base64 images as JSON, or uint8 (B, H, W, C) as tensor/binary",
        {
            **binary("image/png", "image/jpeg", "image/webp"),
            "application/json": {"schema": {"$ref": "#/components/schemas/DecodeJSONResponse"}},
            "tensor/binary": BINARY,
        },
    ),
)
async def decode(
    request: Request,
    services: ServicesDep,
    model: ModelQuery = None,
    force_not_quantize: Annotated[bool, Query(description="decode latents without quantizing them")] = False,
    scaling_factor: Annotated[
        float | None, Query(description="divide latents by this first: finite, not 0, not subnormal")
    ] = None,
    format: FormatQuery = None,  # noqa: A002 - the contract's name
    shape: Annotated[list[int] | None, Query(description="binary body: tensor shape, repeated in order")] = None,
    dtype: Annotated[
        str | None, Query(description="binary body: int16/int32/int64 or float16/bfloat16/float32")
    ] = None,
) -> Response:
    """Decode codebook indices or latents to images."""
    facts = services.model(model)
    factors = latent_factors(scaling_factor)  # 422 for a non-finite, zero or subnormal scale, before any work
    if format is None and negotiate(request, DECODE_TYPES) is None:
        raise ServiceError(
            "not_acceptable", "the reply can be image/png, image/jpeg, image/webp, application/json or tensor/binary"
        )
    settings = services.settings
    async with admit(request, services, facts) as ticket:
        kind = media_type(request)
        body = await request.body()
        if kind == "application/json":
            parsed = await services.offload("json_decode", decode_from_json, body, facts, factors)
        elif kind in TENSOR_TYPES:
            parsed = await services.offload("tensor_decode", decode_from_tensor, body, shape, dtype, facts, factors)
        else:
            raise ServiceError(
                "unsupported_media_type",
                f"Content-Type {kind or '(none)'!r} is not accepted; send application/json or tensor/binary",
            )
        check_decode_limits(parsed, facts, settings.max_images_per_request, settings.max_pixels)
        params = LatentDecode(force_not_quantize) if parsed.op == Op.DECODE_LATENTS else None  # already scaled
        outcome = await tiles.run(ticket, services, facts, parsed.op, parsed.tensors, params)
    return await _image_reply(request, services, crop_outputs(outcome.values, parsed.crop), format)


async def _image_reply(request: Request, services: Services, outputs: list[Any], fmt: str | None) -> Response:
    """One image as an image by default; several as JSON by default (`*/*` included), since no image type holds
    them; an Accept that names only image types for several images, or `format` with several, is 406."""
    options = services.compression
    wanted = negotiate(request, DECODE_TYPES if len(outputs) == 1 else MANY_IMAGES_TYPES)
    if fmt is not None or wanted is None:
        fmt = fmt or "png"
        if len(outputs) > 1:
            raise ServiceError(
                "not_acceptable",
                f"{len(outputs)} images cannot be one {fmt.upper()}; ask for application/json or tensor/binary",
            )
        content = await services.offload("image_encode", write_image, outputs[0], fmt, options)
        return Response(content, media_type=FORMAT_TYPES[fmt])
    if wanted in IMAGE_TYPES:
        content = await services.offload("image_encode", write_image, outputs[0], IMAGE_TYPES[wanted], options)
        return Response(content, media_type=wanted)
    if wanted == "application/json":
        content = await services.offload("image_encode", images_json, outputs, "png", options)
        return Response(content, media_type="application/json")
    body, shape = await services.offload("tensor_encode", images_binary, outputs)
    return tensor_response(body, shape, "uint8")


@router.post(
    "/reconstruct",
    response_model=None,
    openapi_extra=IMAGE_BODY,
    responses=replies(
        "The reconstruction at the input's size; header x-psnr in dB; as JSON with `Accept: application/json`",
        {
            **binary("image/png", "image/jpeg", "image/webp"),
            "application/json": {"schema": {"$ref": "#/components/schemas/ReconstructJSONResponse"}},
        },
    ),
)
async def reconstruct(
    request: Request,
    services: ServicesDep,
    model: ModelQuery = None,
    format: FormatQuery = None,  # noqa: A002
) -> Response:
    """Encode, quantize and decode one image; report PSNR against the input."""
    facts = services.model(model)
    wanted = negotiate(request, RECONSTRUCT_TYPES)
    if format is None and wanted is None:
        raise ServiceError("not_acceptable", "the reply can be image/png, image/jpeg, image/webp or application/json")
    async with admit(request, services, facts) as ticket:
        inputs, _ = await _images(request, services, facts)
        if len(inputs) != 1:
            raise ServiceError("invalid_input", f"/reconstruct takes one image, got {len(inputs)}")
        (output,) = (await tiles.run(ticket, services, facts, Op.RECONSTRUCT, [inputs[0].tensor])).values
    if format is None and wanted == "application/json":
        content, quality = await services.offload(
            "image_encode", reconstruct_json, facts.name, inputs[0], output, services.compression
        )
        return Response(content, media_type="application/json", headers={"x-psnr": f"{quality:.4f}"})
    fmt = format or IMAGE_TYPES[wanted or "image/png"]
    content, quality = await services.offload(
        "image_encode", reconstruct_reply, inputs[0], output, fmt, services.compression
    )
    return Response(content, media_type=FORMAT_TYPES[fmt], headers={"x-psnr": f"{quality:.4f}"})


# schemas referenced from openapi_extra must be registered with the app's components (`app.py` registers this
# tuple): the REST bodies, and the Open Inference Protocol's request and error shapes (`routes/oip.py`)
OPENAPI_MODELS = (
    EncodeJSONRequest,
    EncodeResponse,
    EncodeBatchResponse,
    DecodeJSONRequest,
    DecodeJSONResponse,
    ErrorResponse,
    InferenceRequest,
    OIPErrorResponse,
    ReconstructJSONResponse,
)
