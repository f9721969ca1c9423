"""One table from error kind to HTTP status and JSON body `{"error": {"code", "message"}}`.

Every layer raises `ServiceError(kind, message)`; only the exception handlers here turn it into a response, so a
status code is chosen in exactly one place. Unexpected exceptions become a 500 with the same body shape, never a
traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import metrics
from .schemas import ErrorResponse

logger = logging.getLogger("vqserve")

# kind -> (status, code sent to the client)
ERROR_TABLE: dict[str, tuple[int, str]] = {
    "bad_request": (400, "bad_request"),
    "invalid_image": (400, "invalid_image"),
    "invalid_base64": (400, "invalid_base64"),
    "invalid_json": (400, "invalid_json"),
    "unauthorized": (401, "unauthorized"),
    "body_timeout": (408, "body_timeout"),
    "not_found": (404, "not_found"),
    "model_not_found": (404, "model_not_found"),
    "method_not_allowed": (405, "method_not_allowed"),
    "not_acceptable": (406, "not_acceptable"),
    "body_too_large": (413, "body_too_large"),
    "image_too_large": (413, "image_too_large"),
    "too_many_images": (413, "too_many_images"),
    "unsupported_media_type": (415, "unsupported_media_type"),
    "invalid_input": (422, "invalid_input"),
    "client_closed": (499, "client_closed_request"),
    "overloaded": (429, "overloaded"),
    "internal": (500, "internal_error"),
    "batch_failed": (500, "batch_failed"),
    "not_ready": (503, "not_ready"),
    "shutting_down": (503, "shutting_down"),
    "deadline_exceeded": (504, "deadline_exceeded"),
}


# statuses counted in vqserve_request_failures_total{reason=<code>}: the service could not serve, not bad input
FAILURE_STATUSES = frozenset({429, 499, 500, 503, 504})


class ServiceError(Exception):
    """An error with a kind from ERROR_TABLE; `headers` (e.g. Retry-After) ride along to the response."""

    def __init__(self, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        if kind not in ERROR_TABLE:
            raise ValueError(f"unknown error kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return ERROR_TABLE[self.kind][0]

    @property
    def code(self) -> str:
        return ERROR_TABLE[self.kind][1]


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors (query, body or a payload schema) as one line: the first five, each with its place."""
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(error: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(error.code, error.message), status_code=error.status, headers=error.headers)


# OpenAPI: the error responses every inference route may answer
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": desc}
    for status, desc in (
        (400, "Undecodable image, base64 or JSON"),
        (401, "Missing or wrong API key"),
        (404, "Unknown model"),
        (406, "The reply format cannot hold the result"),
        (408, "The body did not arrive within VQSERVE_BODY_TIMEOUT_S"),
        (413, "Body, image or image count over the limits"),
        (415, "Unsupported Content-Type"),
        (422, "Input that does not fit the model"),
        (429, "Queue full; retry after Retry-After seconds"),
        (500, "The batch failed"),
        (503, "Not ready or shutting down"),
        (504, "Deadline passed before compute"),
    )
}


def count_failure(exc: ServiceError) -> None:
    """Count a refusal or failure of accepted work (429, 499, 5xx) in `vqserve_request_failures_total`; a route that
    answers in another protocol's error shape (`/v2`) calls this itself."""
    if exc.status in FAILURE_STATUSES:
        metrics.REQUEST_FAILURES.labels(reason=exc.code).inc()


def install_handlers(app: FastAPI) -> None:
    """Route every exception through the table."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        count_failure(exc)
        return error_response(exc)

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
