"""ASGI middlewares: request context (request id, access log, request metrics, bounded metric labels) and the
body guard (every body bounded in size and time). They run outside the routes, on every request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .error_handlers import error_response
from .errors import ServiceError

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
                tiles = getattr(scope.get("state", {}).get("ticket"), "tiles", 0)
                if tiles:
                    headers.append("x-tiles", str(tiles))  # how many tiles were computed for the reply
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
                    "batch_size": _batch_size(state),
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


def _batch_size(state: dict[str, Any]) -> int | None:
    """The largest batch the request's items rode in, from its ticket (see routes/admission.py)."""
    ticket = state.get("ticket")
    size = getattr(ticket, "batch_size", 0)
    return int(size) if size else None
