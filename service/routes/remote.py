"""POST /remote/decode and /remote/encode: diffusers' remote VAE protocol, so that `remote_decode` and
`remote_encode` (diffusers.utils.remote_utils) and the front-ends built on them (SD.Next, ComfyUI nodes) can
use vqserve as their remote decoder.

The protocol: raw little-endian tensor bytes in the body; `shape` (repeated), `dtype`, `scaling_factor`,
`shift_factor`, `output_type` (pil|pt), `image_format` (png|jpg), `partial_postprocess` in the query;
`Accept` picks the reply (`image/png`, `image/jpeg`, or `tensor/binary` with `shape` and `dtype` headers).
VQ semantics: decode computes `latents / scaling_factor + shift_factor` and decodes as diffusers'
`VQModel.decode` does (quantized first unless the model is set to skip it, as Kandinsky's MoVQ pipelines
do); encode returns `(latents - shift_factor) * scaling_factor` of the latents before quantization.

Inputs are read and checked by the shared input path, in the codec pool (wire format: `protocols/remote.py`).
Every reply rides the batcher: uint8 images as /decode does, float replies (`pt` without partial
postprocessing, or `pil` for a client that brings its own processor) as the engine op DECODE_FLOAT.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from .. import codecs, tiles
from ..deps import InferenceGuard, ModelQuery, ServicesDep
from ..errors import ServiceError
from ..facts import ModelFacts
from ..inputs import check_count, check_decode_limits, latent_factors
from ..ops import FloatDecode, LatentDecode, Op
from ..protocols.remote import float_images_binary, images_from_body, latents_binary, remote_latents
from ..protocols.rest import images_binary
from ..runtime import Services
from .admission import admit
from .bodies import tensor_response
from .negotiation import media_type, negotiate
from .openapi import binary, replies, request_body

router = APIRouter(prefix="/remote", tags=["remote (diffusers)"], dependencies=InferenceGuard)

ShapeQuery = Annotated[list[int] | None, Query(description="tensor shape, repeated in order")]


def force_not_quantize_default(services: Services, facts: ModelFacts) -> bool:
    """Whether a model decodes remote latents without quantizing them.

    The setting VQSERVE_REMOTE_FORCE_NOT_QUANTIZE (model names) decides when set; otherwise MoVQ-style models
    (`norm_type: spatial`, Kandinsky's decoder, whose pipelines pass `force_not_quantize=True`) skip quantization
    and all others quantize, as `VQModel.decode` does by default.
    """
    configured = services.settings.remote_force_not_quantize
    if configured is not None:
        return facts.name in configured
    return facts.config.norm_type == "spatial"


@router.post(
    "/decode",
    response_model=None,
    openapi_extra=request_body(binary("tensor/binary")),
    responses=replies(
        "An image, or a tensor with `shape` and `dtype` headers", binary("image/png", "image/jpeg", "tensor/binary")
    ),
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
    facts = services.model(model)
    # image_format picks the image type when Accept leaves it open (none, or a wildcard); `jpg` is `jpeg`
    image_types = ["image/png", "image/jpeg"] if image_format == "png" else ["image/jpeg", "image/png"]
    wanted = negotiate(request, [*image_types, "tensor/binary"])
    if wanted is None:
        raise ServiceError("not_acceptable", "the reply can be image/png, image/jpeg or tensor/binary")
    if media_type(request) not in ("tensor/binary", "application/octet-stream", ""):
        raise ServiceError(
            "unsupported_media_type",
            "send the latents as raw bytes (Content-Type tensor/binary)",
        )
    if scaling_factor is None and do_scaling:
        scaling_factor = facts.config.scaling_factor
    factors = latent_factors(scaling_factor, shift_factor)  # 422 for non-finite, zero or subnormal factors
    skip_quantize = force_not_quantize
    if skip_quantize is None:
        skip_quantize = force_not_quantize_default(services, facts)
    floats = wanted == "tensor/binary" and not (output_type == "pt" and partial_postprocess)
    settings = services.settings
    async with admit(request, services, facts) as ticket:
        body = await request.body()
        latents = await services.offload("tensor_decode", remote_latents, body, shape, dtype, facts, factors)
        check_decode_limits(latents, facts, settings.max_images_per_request, settings.max_pixels)
        if floats:  # raw decoder output (pt), or in [0, 1] for a client-side processor (pil)
            params: FloatDecode | LatentDecode = FloatDecode(skip_quantize, unit_range=output_type == "pil")
            outcome = await tiles.run(ticket, services, facts, Op.DECODE_FLOAT, latents.tensors, params)
        else:
            outcome = await tiles.run(
                ticket, services, facts, Op.DECODE_LATENTS, latents.tensors, LatentDecode(skip_quantize)
            )
    outputs = outcome.values
    if floats:
        content, out_shape = await services.offload("tensor_encode", float_images_binary, outputs)
        return tensor_response(content, out_shape, facts.dtype)
    if wanted == "tensor/binary":  # pt with partial postprocessing: uint8 (B, H, W, C)
        content, out_shape = await services.offload("tensor_encode", images_binary, outputs)
        return tensor_response(content, out_shape, "uint8")
    if len(outputs) != 1:
        raise ServiceError(
            "not_acceptable",
            f"{len(outputs)} images cannot be one image; ask for output_type=pt (tensor/binary)",
        )
    fmt = "png" if wanted == "image/png" else "jpeg"
    content = await services.offload("image_encode", codecs.write_image, outputs[0], fmt, services.compression)
    return Response(content, media_type=wanted)


@router.post(
    "/encode",
    response_model=None,
    openapi_extra=request_body(binary("tensor/binary", "image/png")),
    responses=replies("Latents (B, D, h, w) with `shape` and `dtype` headers", binary("tensor/binary")),
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
    facts = services.model(model)
    factors = latent_factors(scaling_factor, shift_factor)  # 422 for non-finite, zero or subnormal factors
    settings = services.settings
    async with admit(request, services, facts) as ticket:
        body = await request.body()
        if not body:
            raise ServiceError("bad_request", "the body is empty; send an image file or raw tensor bytes")
        inputs = await services.offload(
            "image_decode", images_from_body, body, shape, dtype, facts, settings.max_pixels
        )
        check_count(len(inputs), settings.max_images_per_request)
        results = (await tiles.run(ticket, services, facts, Op.ENCODE, inputs)).values
    content, out_shape = await services.offload("tensor_encode", latents_binary, results, factors)
    return tensor_response(content, out_shape, "float32")
