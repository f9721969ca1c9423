"""The edge in front of the routes, on every request.

The HTTP protocol (`BoundedHttpToolsProtocol`, uvicorn's httptools protocol with bounds): open connections, the time
and size of the request line and headers, all bounded before the parser has buffered more than the limit and
before a request reaches the app. Then the ASGI middlewares: request context (request id, access log, request
metrics, bounded metric labels), the body guard (every body bounded in size and time; a client that leaves
mid-body is a 499) and HEAD (answered like GET without a body, on every GET route).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_remote_addr

from . import metrics
from .error_handlers import error_response, raw_error_response
from .errors import ServiceError, count_failure

access_logger = logging.getLogger("vqserve.access")
logger = logging.getLogger("vqserve")

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
    """Request id (from x-request-id or new), one access-log line and the request metrics per request;
    `on_inference_end` is called as each inference request ends (the app releases memory once all are done)."""

    def __init__(self, app: ASGIApp, on_inference_end: Callable[[], object] | None = None) -> None:
        self.app = app
        self.on_inference_end = on_inference_end

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
            # the request's state ends with it: its ticket refers back to the request (the disconnect watcher), so
            # the pair, with the request's cached body, would otherwise wait for the cyclic garbage collector
            state.clear()
            if inference_request and self.on_inference_end is not None:
                self.on_inference_end()


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
        size, complete, answered = 0, False, False

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
                if not answered:  # the client left mid-body: its request ends here as a 499, not a server error
                    raise ServiceError("client_closed", "the client closed the connection before the body was complete")
            return message

        async def watched_send(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, guarded_receive, watched_send)


class HeadMiddleware:
    """HEAD is answered like GET without a body, on every route that answers GET (load balancers and uptime
    checkers probe with HEAD): the request runs as GET and the body is dropped, so the status and headers,
    Content-Length included, are GET's. The access log and the metrics still say HEAD (they read the outer scope).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may take before its request reaches the app (settings `max_connections`,
    `header_timeout_s`, `max_header_bytes`, `max_headers`)."""

    max_connections: int = 1000
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100


LINGER_S = 1.0  # after a refusal, what the client still sends is read and dropped this long, then the socket closes
MAX_LINGERING = 64  # refused connections lingering at once; beyond, a refusal is written and the socket closed at once


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with every connection bounded before its request reaches the app.

    - At most `max_connections` open connections: one more is answered 503 (`too_many_connections`, Retry-After)
      at accept and closed.
    - The request line and headers must arrive within `header_timeout_s` of the connection opening (on a kept-alive
      connection: of the next request's first byte): 408 `header_timeout` and close; a connection that sent nothing
      is closed without a reply, as an idle keep-alive connection is.
    - At most `max_header_bytes` of request line and headers and `max_headers` header fields: 431
      `headers_too_large` and close. The head is fed to the parser in pieces that never go past what is left of the
      limit: httptools joins the pieces of a header into one bytes object (a 200 MB header cost 400 MB of memory),
      so the parser never holds more than the limit, however much is sent.

    A refusal is written whole, the write side is shut, and what the client still sends is dropped for `LINGER_S`
    before the close, so that a client still sending reads the answer rather than a connection reset; at most
    `MAX_LINGERING` refused connections linger at once, so open sockets stay within `max_connections` plus
    that, whatever the rate of new connections. Refusals are
    counted in `vqserve_requests_total{endpoint="other"}` (and 503 in `vqserve_request_failures_total`) and logged
    at most once a second per kind. A head pipelined behind a body that arrived in the same read is counted from
    the next read: at most one socket read (256 KiB) more is parsed for it.
    """

    limits = ConnectionLimits()
    lingering = 0  # refused connections of this process still open, on the base class

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between requests or reading a request line and headers
        self._head_started = False  # a byte of the current head arrived
        self._head_bytes = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._lingers = False

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type[BoundedHttpToolsProtocol]:
        """The protocol class uvicorn instantiates per connection (`uvicorn.Config(http=...)`)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    # connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport, self.client = transport, get_remote_addr(transport)
            message = f"{self.limits.max_connections} connections are open (VQSERVE_MAX_CONNECTIONS); retry later"
            self._refuse(ServiceError("too_many_connections", message, retry_after_s=1))
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._lingers:
            self._lingers = False
            BoundedHttpToolsProtocol.lingering -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: read and dropped
        if not self._in_head:
            super().data_received(data)  # a body: bounded by the body guard
            return
        if self._head_timer is None:  # the first byte of the next request on a kept-alive connection
            self._arm_head_timer()
        self._head_started = True
        limit, offset = self.limits.max_header_bytes, 0
        while offset < len(data) and self._in_head:
            # up to the limit: a head still incomplete there is refused; one complete within it was at most the limit
            piece = data[offset : offset + limit - self._head_bytes]
            offset += len(piece)
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self._refused or self.transport.is_closing():
                return
            if self._in_head and (self._head_bytes >= limit or self._header_count > self.limits.max_headers):
                self._refuse_head()
                return
        if offset < len(data):
            super().data_received(data[offset:])

    # parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count <= self.limits.max_headers:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        self._cancel_head_timer()
        if self._header_count > self.limits.max_headers:
            self._refuse_head()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._in_head, self._head_started, self._head_bytes = True, False, 0

    # bounds
    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._head_started and not self._answering():
            self.transport.close()  # nothing sent: closed like an idle keep-alive connection
            return
        message = f"the request line and headers did not arrive within {self.limits.header_timeout_s:g} s"
        self._refuse(ServiceError("header_timeout", message))

    def _refuse_head(self) -> None:
        limits = self.limits
        message = (
            f"the request line and headers exceed {limits.max_header_bytes} bytes or {limits.max_headers} fields"
            " (VQSERVE_MAX_HEADER_BYTES, VQSERVE_MAX_HEADERS)"
        )
        self._refuse(ServiceError("headers_too_large", message))

    def _answering(self) -> bool:
        """A response on this connection is still to be written (a next head was pipelined behind it)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, error: ServiceError) -> None:
        self._refused = True
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        _note_refusal(error, self.client)
        if self.transport.is_closing():
            return
        if self._answering():
            # never write into the middle of another response: that one is finished, then the connection closes
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self.transport.write(raw_error_response(error))
        if BoundedHttpToolsProtocol.lingering >= MAX_LINGERING or not self.transport.can_write_eof():
            self.transport.close()  # the answer is flushed first
            return
        self.transport.write_eof()
        self._lingers = True
        BoundedHttpToolsProtocol.lingering += 1
        self.loop.call_later(LINGER_S, self.transport.close)


_refusals_logged: dict[str, float] = {}
_refusals_unlogged: Counter[str] = Counter()


def _note_refusal(error: ServiceError, client: tuple[str, int] | None) -> None:
    """Count a refusal made before the app; log it, at most once a second per kind (a flood must not flood the log)."""
    metrics.REQUESTS.labels("other", str(error.status)).inc()
    count_failure(error)
    now = time.monotonic()
    if now - _refusals_logged.get(error.code, -math.inf) < 1.0:
        _refusals_unlogged[error.code] += 1
        return
    _refusals_logged[error.code] = now
    logger.warning(
        "refused before the app: %s",
        error.message,
        extra={
            "status": error.status,
            "code": error.code,
            "client": f"{client[0]}:{client[1]}" if client else None,
            "refused_unlogged": _refusals_unlogged.pop(error.code, 0),
        },
    )


def _batch_size(state: dict[str, Any]) -> int | None:
    """The largest batch the request's items rode in, from its ticket (see routes/admission.py)."""
    ticket = state.get("ticket")
    size = getattr(ticket, "batch_size", 0)
    return int(size) if size else None
