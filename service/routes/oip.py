"""The Open Inference Protocol (KServe v2, Triton's HTTP API) routes: health, metadata and inference per model.

The wire format (tensors, binary extension, metadata) is `protocols/oip.py`. Every answer inside /v2 after the
body guard (refusals of the API key and of readiness included) is the protocol's `{"error": "<message>"}`, with
its status from the one error table; a body refused by `Content-Length` before the route runs keeps the
service's shape (both documented). Compute goes through the batcher like every other route.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from .. import tiles
from ..deps import ServicesDep, require_api_key
from ..errors import ServiceError, count_failure
from ..protocols.oip import (
    OIPError,
    build_response,
    check_version,
    collect_outputs,
    model_metadata,
    parse_request,
    to_model_inputs,
)
from ..runtime import Services
from ..schemas import InferenceResponse, OIPErrorResponse
from .admission import admit
from .openapi import BINARY, request_body

# the API key and readiness are checked inside the handlers (not as router dependencies), so that their
# refusals answer in the protocol's error shape too
health_router = APIRouter(prefix="/v2", tags=["open inference protocol"])
router = APIRouter(prefix="/v2", tags=["open inference protocol"])
infer_router = APIRouter(prefix="/v2", tags=["open inference protocol"])


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI: the protocol's error replies; 408 and 413 may also come from the body guard in the service's shape."""
    either = {
        "anyOf": [{"$ref": "#/components/schemas/OIPErrorResponse"}, {"$ref": "#/components/schemas/ErrorResponse"}]
    }
    described = {
        400: "Malformed request: not a v2 inference request",
        401: "Missing or wrong API key",
        404: "Unknown model or version",
        408: "The body did not arrive within VQSERVE_BODY_TIMEOUT_S",
        413: "Body, image or image count over the limits",
        422: "Input that does not fit the model: indices outside the codebook, a shape it cannot take, bad latents",
        429: "Queue full; retry after Retry-After seconds",
        500: "The batch failed",
        503: "Not ready or shutting down",
        504: "Deadline passed before compute",
    }
    replies: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        if status in (408, 413):
            replies[status] = {"description": described[status], "content": {"application/json": {"schema": either}}}
        else:
            replies[status] = {"model": OIPErrorResponse, "description": described[status]}
    return replies


READY = {"type": "object", "properties": {"ready": {"type": "boolean"}}, "required": ["ready"]}
MODEL_READY = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    "required": ["name", "ready"],
}
INFER_BODY = request_body(
    {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        # binary-data extension: the JSON header (Inference-Header-Content-Length bytes), then the tensor bytes
        "application/octet-stream": BINARY,
    }
)
INFER_REPLIES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferenceResponse,
        "description": "The outputs; with binary outputs, the JSON header (Inference-Header-Content-Length) and "
        "their bytes",
        "content": {"application/octet-stream": BINARY},
    },
    **_errors(400, 401, 404, 408, 413, 422, 429, 500, 503, 504),
}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The protocol's error shape: `{"error": "<message>"}`."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _guard(request: Request, services: Services, *, serving: bool) -> None:
    """The API key (and, for inference, readiness), as the other inference routes' dependencies check them."""
    await require_api_key(request, services)
    if serving:
        services.refuse_unless_serving()


@health_router.get("/health/live")
async def live() -> dict[str, bool]:
    """v2 liveness."""
    return {"live": True}


@health_router.get(
    "/health/ready",
    responses={503: {"description": "Loading or draining", "content": {"application/json": {"schema": READY}}}},
)
async def ready(services: ServicesDep) -> JSONResponse:
    """v2 readiness: every model loaded and warmed, not draining."""
    ok = services.readiness().ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@health_router.get("")
async def server_metadata() -> dict[str, Any]:
    """v2 server metadata."""
    return {"name": "vqserve", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


@router.get("/models/{name}", responses=_errors(401, 404, 503))
@router.get("/models/{name}/versions/{version}", responses=_errors(401, 404, 503))
async def metadata(name: str, request: Request, services: ServicesDep, version: str | None = None) -> JSONResponse:
    """v2 model metadata: the named input and output tensors."""
    try:
        await _guard(request, services, serving=False)
        check_version(version)
        return JSONResponse(model_metadata(services.model(name)))
    except (OIPError, ServiceError) as exc:
        return _error(exc.status, exc.message, exc.headers if isinstance(exc, ServiceError) else None)


MODEL_READY_REPLIES: dict[int | str, dict[str, Any]] = {
    **_errors(401, 404),
    503: {"description": "Loading or draining", "content": {"application/json": {"schema": MODEL_READY}}},
}


@router.get("/models/{name}/ready", responses=MODEL_READY_REPLIES)
@router.get("/models/{name}/versions/{version}/ready", responses=MODEL_READY_REPLIES)
async def model_ready(name: str, request: Request, services: ServicesDep, version: str | None = None) -> JSONResponse:
    """v2 model readiness."""
    try:
        await _guard(request, services, serving=False)
        check_version(version)
        if name not in services.engines:
            services.model(name)  # 404 in the table's words
    except (OIPError, ServiceError) as exc:
        return _error(exc.status, exc.message, exc.headers if isinstance(exc, ServiceError) else None)
    readiness = services.readiness()
    ok = readiness.ready and readiness.models[name]
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


@infer_router.post("/models/{name}/infer", openapi_extra=INFER_BODY, responses=INFER_REPLIES)
@infer_router.post("/models/{name}/versions/{version}/infer", openapi_extra=INFER_BODY, responses=INFER_REPLIES)
async def infer(
    name: str,
    request: Request,
    services: ServicesDep,
    version: str | None = None,
    header_length: Annotated[
        str | None,
        Header(alias="Inference-Header-Content-Length", description="binary-data extension: the JSON header's bytes"),
    ] = None,
) -> Response:
    """v2 inference: IMAGE -> INDICES (and LATENTS); INDICES or LATENTS -> IMAGE."""
    try:
        await _guard(request, services, serving=True)
        check_version(version)
        facts, settings = services.model(name), services.settings
        async with admit(request, services, facts) as ticket:
            body = await request.body()
            parsed = await services.offload("oip_decode", parse_request, body, header_length)
            op, items, params = await services.offload(
                "oip_decode",
                to_model_inputs,
                parsed,
                facts,
                settings.max_images_per_request,
                settings.max_pixels,
            )
            results = (await tiles.run(ticket, services, facts, op, items, params)).values
        arrays = await services.offload("oip_encode", collect_outputs, op, results)
        content, head_length = await services.offload("oip_encode", build_response, facts.name, parsed, arrays)
    except OIPError as exc:
        return _error(exc.status, exc.message)
    except ServiceError as exc:
        count_failure(exc)
        return _error(exc.status, exc.message, exc.headers)
    if head_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(head_length)},
    )
