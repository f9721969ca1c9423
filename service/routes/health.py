"""Liveness, readiness and Prometheus metrics: always open, never waiting behind the engines."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from .. import metrics
from ..deps import ServicesDep
from ..schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> HealthResponse:
    """Liveness: 200 while the process serves."""
    return HealthResponse()


@router.get("/readyz", responses={503: {"model": ReadyResponse, "description": "Loading or draining"}})
async def readyz(services: ServicesDep) -> Response:
    """Readiness: 200 only when every model is loaded and warmed and the service is not draining."""
    readiness = services.readiness()
    body = ReadyResponse(status=readiness.status, models=readiness.models)
    return Response(
        orjson.dumps(body.model_dump()), status_code=200 if readiness.ready else 503, media_type="application/json"
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def prometheus_metrics() -> Response:
    """Prometheus text exposition."""
    content, content_type = metrics.render()
    return Response(content, media_type=content_type)
