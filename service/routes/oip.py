"""The Open Inference Protocol (KServe v2, Triton's HTTP API) routes: health, metadata and inference per model.

The wire format (tensors, binary extension, metadata) is `protocols/oip.py`. Errors inside /v2 answer the
protocol's `{"error": "<message>"}` (statuses from the one error table); compute goes through the batcher like
every other route.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response

from .. import tiles
from ..deps import InferenceGuard, ServicesDep, require_api_key
from ..errors import ServiceError, count_failure
from ..ops import Op
from ..protocols.oip import (
    OIPError,
    build_response,
    check_version,
    collect_outputs,
    latent_params,
    model_metadata,
    parse_request,
    to_model_inputs,
)
from .admission import admit

health_router = APIRouter(prefix="/v2", tags=["open inference protocol"])
router = APIRouter(prefix="/v2", tags=["open inference protocol"], dependencies=[Depends(require_api_key)])
infer_router = APIRouter(prefix="/v2", tags=["open inference protocol"], dependencies=InferenceGuard)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The protocol's error shape: `{"error": "<message>"}`."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@health_router.get("/health/live")
async def live() -> dict[str, bool]:
    """v2 liveness."""
    return {"live": True}


@health_router.get("/health/ready")
async def ready(services: ServicesDep) -> JSONResponse:
    """v2 readiness: every model loaded and warmed, not draining."""
    ok = services.readiness().ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@health_router.get("")
async def server_metadata() -> dict[str, Any]:
    """v2 server metadata."""
    return {"name": "vqserve", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def metadata(name: str, services: ServicesDep, version: str | None = None) -> JSONResponse:
    """v2 model metadata: the named input and output tensors."""
    try:
        check_version(version)
        return JSONResponse(model_metadata(services.model(name)))
    except (OIPError, ServiceError) as exc:
        return _error(exc.status, exc.message)


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(name: str, services: ServicesDep, version: str | None = None) -> JSONResponse:
    """v2 model readiness."""
    try:
        check_version(version)
        if name not in services.engines:
            services.model(name)  # 404 in the table's words
    except (OIPError, ServiceError) as exc:
        return _error(exc.status, exc.message)
    readiness = services.readiness()
    ok = readiness.ready and readiness.models[name]
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


@infer_router.post("/models/{name}/infer")
@infer_router.post("/models/{name}/versions/{version}/infer")
async def infer(
    name: str,
    request: Request,
    services: ServicesDep,
    version: str | None = None,
    header_length: Annotated[int | None, Header(alias="Inference-Header-Content-Length")] = None,
) -> Response:
    """v2 inference: IMAGE -> INDICES (and LATENTS); INDICES or LATENTS -> IMAGE."""
    try:
        check_version(version)
        facts, settings = services.model(name), services.settings
        async with admit(request, services, facts) as ticket:
            body = await request.body()
            parsed = await services.offload("oip_decode", parse_request, body, header_length)
            op, items = await services.offload(
                "oip_decode",
                to_model_inputs,
                parsed.tensor,
                facts,
                settings.max_images_per_request,
                settings.max_pixels,
            )
            params = latent_params(parsed.parameters) if op == Op.DECODE_LATENTS else None
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
