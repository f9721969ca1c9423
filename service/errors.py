"""One table from error kind to HTTP status and error code, and `ServiceError`, which every layer raises.

A status code is chosen in exactly one place: here. This module knows nothing of the web framework (the batcher
and the codecs raise these errors too); `error_handlers.py` turns them into responses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from . import metrics

# kind -> (status, code sent to the client)
ERROR_TABLE: dict[str, tuple[int, str]] = {
    "bad_request": (400, "bad_request"),
    "invalid_image": (400, "invalid_image"),
    "invalid_base64": (400, "invalid_base64"),
    "invalid_json": (400, "invalid_json"),
    "unauthorized": (401, "unauthorized"),
    "body_timeout": (408, "body_timeout"),
    "header_timeout": (408, "header_timeout"),
    "not_found": (404, "not_found"),
    "model_not_found": (404, "model_not_found"),
    "method_not_allowed": (405, "method_not_allowed"),
    "not_acceptable": (406, "not_acceptable"),
    "body_too_large": (413, "body_too_large"),
    "image_too_large": (413, "image_too_large"),
    "too_many_images": (413, "too_many_images"),
    "unsupported_media_type": (415, "unsupported_media_type"),
    "headers_too_large": (431, "headers_too_large"),
    "invalid_input": (422, "invalid_input"),
    "invalid_label": (422, "invalid_label"),  # a class the model's prior was not trained on
    "no_prior": (422, "no_prior"),  # /generate, /complete, return_nll on a model whose checkpoint has no prior/
    "client_closed": (499, "client_closed_request"),
    "overloaded": (429, "overloaded"),
    "internal": (500, "internal_error"),
    "batch_failed": (500, "batch_failed"),
    "not_ready": (503, "not_ready"),
    "shutting_down": (503, "shutting_down"),
    "too_many_connections": (503, "too_many_connections"),
    "deadline_exceeded": (504, "deadline_exceeded"),
}


# statuses counted in vqserve_request_failures_total{reason=<code>}: the service could not serve, not bad input
FAILURE_STATUSES = frozenset({429, 499, 500, 503, 504})


class ServiceError(Exception):
    """An error with a kind from ERROR_TABLE; `headers` and `retry_after_s` ride along to the response."""

    def __init__(
        self, kind: str, message: str, headers: dict[str, str] | None = None, retry_after_s: float | None = None
    ) -> None:
        if kind not in ERROR_TABLE:
            raise ValueError(f"unknown error kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s  # when the client may try again (429, 503); a header at the HTTP edge
        self._headers = headers or {}

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers that ride along: the given ones, and Retry-After (whole seconds, rounded up)."""
        if self.retry_after_s is None:
            return dict(self._headers)
        return {**self._headers, "Retry-After": str(max(1, math.ceil(self.retry_after_s)))}

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


def count_failure(exc: ServiceError) -> None:
    """Count a refusal or failure of accepted work (429, 499, 5xx) in `vqserve_request_failures_total`; a route that
    answers in another protocol's error shape (`/v2`) calls this itself."""
    if exc.status in FAILURE_STATUSES:
        metrics.REQUEST_FAILURES.labels(reason=exc.code).inc()


class ModelLoadError(RuntimeError):
    """A configured model that cannot be served; the message names the path and the setting to change."""


_MAX_LINE = 600  # characters of a one-line failure message (a checkpoint's key lists can be long)


def one_line(exc: BaseException) -> str:
    """The message of `exc` on one line, whitespace collapsed, bounded: how startup failures are reported."""
    text = " ".join(str(exc).split())
    return text if len(text) <= _MAX_LINE else text[: _MAX_LINE - 3] + "..."


class BatchAbandoned(Exception):  # noqa: N818 - a signal, not a failure: every owner of the batch has left
    """Raised inside a batch's forward pass once every item of it has been dropped (`service/cancellation.py`)."""
