"""`create_app(settings)`: the FastAPI application and its lifespan.

Startup: load every model (on its engine thread), warm up, start the batcher, then report ready. Shutdown (after
uvicorn stopped accepting and waited for in-flight requests): readiness 503, no new admissions, drain what is
queued within VQSERVE_GRACEFUL_TIMEOUT_S, fail the rest with 503, release the engines.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .errors import ServiceError, error_response, install_handlers
from .routes import health, inference, models, oip, remote, web
from .runtime import Services
from .settings import Settings

logger = logging.getLogger("vqserve")
access_logger = logging.getLogger("vqserve.access")

INFERENCE_ENDPOINTS = ("/encode", "/decode", "/reconstruct", "/remote/decode", "/remote/encode")
_V2_MODEL_PATH = re.compile(r"^(/v2|/v2/models/[^/]+(/versions/[^/]+)?)(/(infer|ready))?$")
FIXED_ENDPOINTS = ("/healthz", "/readyz", "/metrics", "/models", "/docs", "/openapi.json", *INFERENCE_ENDPOINTS)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def endpoint_label(path: str) -> str:
    """A bounded label set for metrics: fixed paths, the models template, or 'other'."""
    if path in FIXED_ENDPOINTS:
        return path
    if path.startswith("/models/"):
        return "/models/{name}"
    if path.startswith("/v2/health/"):
        return path if path in ("/v2/health/live", "/v2/health/ready") else "other"
    match = _V2_MODEL_PATH.match(path)
    if match:
        return "/v2" if match[1] == "/v2" else "/v2/models/{name}" + (match[3] or "")
    return "other"


class RequestContextMiddleware:
    """Request id (from x-request-id or new), one access-log line and the request metrics per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        endpoint = endpoint_label(scope["path"])
        inference_request = endpoint in INFERENCE_ENDPOINTS or endpoint == "/v2/models/{name}/infer"
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append("x-request-id", request_id)
                services = getattr(scope["app"].state, "services", None)
                if services is not None and services.draining:
                    # no keep-alive while draining: a request sent on an idle connection just as the server
                    # closes it would be lost without an answer; a fresh connection gets 503 or a clean refusal
                    headers["connection"] = "close"
            await send(message)

        if inference_request:
            metrics.INFLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            if inference_request:
                metrics.INFLIGHT.dec()
            metrics.REQUESTS.labels(endpoint, str(status)).inc()
            metrics.REQUEST_DURATION.labels(endpoint).observe(duration)
            state = scope.get("state", {})
            access_logger.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(duration * 1000, 2),
                    "batch_size": state.get("batch_size"),
                    "request_id": request_id,
                },
            )


class BodyGuardMiddleware:
    """Bounds every request body on every route, whoever reads it: at most `max_body_bytes` (413, refused from
    Content-Length before a byte is read, else as soon as the count passes it) and all of it within
    `body_timeout_s` of arrival (408), so a slow-loris client cannot hold a queue slot or a codec thread forever.

    The errors are raised from `receive`, inside the route, so the exception handlers answer them as JSON (and
    the /v2 routes in their protocol's shape). It is the only body bound: routes just call `request.body()`.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.timeout = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            error = ServiceError(
                "body_too_large", f"body of {int(declared)} bytes exceeds the limit of {self.limit} bytes"
            )
            await error_response(error)(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout
        size, complete = 0, False

        async def guarded_receive() -> Message:
            nonlocal size, complete
            if complete:  # after the body only the disconnect is left to wait for: never bounded here
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise ServiceError(
                    "body_timeout", f"the request body did not arrive within {self.timeout:g} s"
                ) from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.limit:
                    raise ServiceError("body_too_large", f"body exceeds the limit of {self.limit} bytes")
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        await self.app(scope, guarded_receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for engine in services.engines.values():
            await asyncio.to_thread(engine.load)
            metrics.MODEL_INFO.labels(
                engine.name, engine.device, engine.dtype, str(engine.codebook_size), str(engine.downsample_factor)
            ).set(1)
        services.batcher.start()
        services.ready = True
        logger.info("ready", extra={"models": list(services.engines)})
        try:
            yield
        finally:
            services.start_draining()
            if not await services.batcher.drain(settings.graceful_timeout_s):
                logger.warning("graceful timeout passed with work queued; failing it with 503")
            await services.batcher.stop()
            for engine in services.engines.values():
                engine.close()
            services.codec_pool.shutdown(wait=False, cancel_futures=True)
            logger.info("stopped")

    app = FastAPI(
        title="vqserve",
        version="0.1.0",
        summary="Serve diffusers-compatible VQModel autoencoders: images <-> codebook indices.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_handlers(app)
    app.include_router(inference.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(remote.router)  # diffusers' remote VAE protocol (issue 6)
    app.include_router(oip.health_router)  # Open Inference Protocol / KServe v2 (issue 6)
    app.include_router(oip.router)
    app.include_router(oip.infer_router)
    app.include_router(web.router)  # the page at / (issue 9)
    # outermost last: request context, then CORS (so that refusals carry its headers), then the body guard
    app.add_middleware(
        BodyGuardMiddleware, max_body_bytes=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "x-psnr", "shape", "dtype", "retry-after"],
        )
    app.add_middleware(RequestContextMiddleware)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus the body schemas that `openapi_extra` refers to."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in inference.OPENAPI_MODELS:
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in model_schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault(model.__name__, model_schema)
    app.openapi_schema = schema
    return schema
