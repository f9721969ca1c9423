"""POST /generate and /complete: draw code grids from a model's learned prior (service/sampling.py steps them
through the batcher) and reply with their codes and images by `Accept`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .. import sampling
from ..codecs import write_image
from ..deps import InferenceGuard, ModelQuery, ServicesDep
from ..errors import ServiceError
from ..facts import ModelFacts
from ..protocols.rest import images_binary, samples_json
from ..runtime import Services
from ..schemas import CompleteRequest, GenerateRequest, GenerateResponse
from .admission import admit
from .bodies import tensor_response
from .negotiation import media_type, negotiate
from .openapi import BINARY, binary, replies, request_body

router = APIRouter(tags=["generation"], dependencies=InferenceGuard)

# what a reply may be: one sample is a PNG by default, several JSON (`*/*` included), as /decode answers
ONE_SAMPLE = ["image/png", "application/json", "tensor/binary", "application/octet-stream"]
SEVERAL_SAMPLES = ["application/json", "tensor/binary", "application/octet-stream"]
SAMPLE_REPLIES = replies(
    "The samples: one PNG (count 1: the default); JSON with each one's code grid and base64 PNG (the default for "
    "several); or uint8 (B, H, W, C) as tensor/binary. Header x-seed: the seed they were drawn with",
    {
        "application/json": {"schema": {"$ref": "#/components/schemas/GenerateResponse"}},
        **binary("image/png"),
        "tensor/binary": BINARY,
    },
)


def _json_body(name: str, required: bool = True) -> dict[str, object]:
    extra = request_body({"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}})
    extra["requestBody"]["required"] = required
    return extra


def _wanted(request: Request, count: int) -> str:
    """The reply's media type for `count` samples; 406 (before any sampling) when Accept names none of them."""
    wanted = negotiate(request, ONE_SAMPLE if count == 1 else SEVERAL_SAMPLES)
    if wanted is None:
        forms = "image/png, application/json or tensor/binary" if count == 1 else "application/json or tensor/binary"
        raise ServiceError("not_acceptable", f"{count} sample(s) can be {forms} (one PNG holds one sample)")
    return wanted


async def _json(request: Request) -> bytes:
    body = await request.body()
    kind = media_type(request)
    if body and kind != "application/json":
        raise ServiceError(
            "unsupported_media_type", f"Content-Type {kind or '(none)'!r} is not accepted; send application/json"
        )
    return body


async def _reply(services: Services, facts: ModelFacts, sampled: sampling.Sampled, wanted: str) -> Response:
    seed = {"x-seed": str(sampled.draw.seed)}
    options = services.compression
    if wanted == "image/png":
        content = await services.offload("image_encode", write_image, sampled.images[0], "png", options)
        return Response(content, media_type="image/png", headers=seed)
    if wanted == "application/json":
        content = await services.offload(
            "image_encode", samples_json, facts.name, sampled.draw.seed, sampled.grids, sampled.images, "png", options
        )
        return Response(content, media_type="application/json", headers=seed)
    body, shape = await services.offload("tensor_encode", images_binary, sampled.images)
    response = tensor_response(body, shape, "uint8")
    response.headers.update(seed)
    return response


@router.post(
    "/generate",
    response_model=None,
    openapi_extra=_json_body("GenerateRequest", required=False),
    responses=SAMPLE_REPLIES,
)
async def generate(request: Request, services: ServicesDep, model: ModelQuery = None) -> Response:
    """Draw new code grids from the model's prior (of the grid shape it was trained on) and decode them."""
    facts = services.model(model)
    sampling.check_prior(facts)  # 422 no_prior before the body is read
    async with admit(request, services, facts) as ticket:
        body = await _json(request)
        job = await services.offload(
            "json_decode", sampling.generation_job, body, facts, services.settings.max_images_per_request
        )
        wanted = _wanted(request, job.draw.count)
        sampling.check_fits(services, facts, job.shape)
        sampled = await sampling.draw(ticket, services, facts, job)
    return await _reply(services, facts, sampled, wanted)


@router.post("/complete", response_model=None, openapi_extra=_json_body("CompleteRequest"), responses=SAMPLE_REPLIES)
async def complete(request: Request, services: ServicesDep, model: ModelQuery = None) -> Response:
    """Redraw the cells of a code grid where `mask` is 1 from the model's prior, keeping the others, and decode."""
    facts = services.model(model)
    sampling.check_prior(facts)
    settings = services.settings
    async with admit(request, services, facts) as ticket:
        body = await _json(request)
        job = await services.offload(
            "json_decode",
            sampling.completion_job,
            body,
            facts,
            settings.max_images_per_request,
            settings.max_pixels,
        )
        wanted = _wanted(request, job.draw.count)
        sampling.check_fits(services, facts, job.shape)
        sampled = await sampling.draw(ticket, services, facts, job)
    return await _reply(services, facts, sampled, wanted)


OPENAPI_MODELS = (GenerateRequest, CompleteRequest, GenerateResponse)
