"""Exceptions -> JSON responses through the one table in `errors.py`: the web framework's edge of the errors.

Unexpected exceptions become a 500 with the same body shape, never a traceback in a reply. A client that went away
(starlette's `ClientDisconnect`) is a 499, never a 500. `raw_error_response` is the same reply as bytes on the wire,
for refusals made by the HTTP protocol before a request reaches the app (see `middleware.BoundedHttpToolsProtocol`).
"""

from __future__ import annotations

import http
import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import metrics
from .errors import ERROR_TABLE, ServiceError, count_failure, error_body, validation_message

logger = logging.getLogger("vqserve")


def error_response(error: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(error.code, error.message), status_code=error.status, headers=error.headers)


def raw_error_response(error: ServiceError) -> bytes:
    """`error_response` as a whole HTTP/1.1 response that closes the connection."""
    body = orjson.dumps(error_body(error.code, error.message))
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        **{name.lower(): value for name, value in error.headers.items()},
        "connection": "close",
    }
    head = f"HTTP/1.1 {error.status} {http.HTTPStatus(error.status).phrase}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (head + "\r\n").encode("latin-1") + body


def install_handlers(app: FastAPI) -> None:
    """Route every exception through the table."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        count_failure(exc)
        return error_response(exc)

    @app.exception_handler(ClientDisconnect)
    async def _client_disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # the body guard turns a disconnect into this error itself; this covers a read that bypassed it
        return await _service_error(request, ServiceError("client_closed", "the client closed the connection"))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ServiceError("invalid_input", validation_message(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return JSONResponse(
            error_body(ERROR_TABLE[kind][1], str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        metrics.REQUEST_FAILURES.labels(reason="internal_error").inc()
        return error_response(ServiceError("internal", f"internal error: {type(exc).__name__}"))
