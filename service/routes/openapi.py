"""OpenAPI documentation the routes cannot infer: bodies they read themselves, replies per media type, the error
replies every inference route may give, and the schemas `openapi_extra` refers to."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from ..schemas import ErrorResponse

BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}


def binary(*media_types: str) -> dict[str, Any]:
    """OpenAPI `content` for raw bytes in each of `media_types`."""
    return dict.fromkeys(media_types, BINARY)


def request_body(content: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body itself (FastAPI cannot infer it)."""
    return {"requestBody": {"required": True, "content": content}}


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


def replies(description: str, content: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """`responses` of an inference route: what its 200 holds, then every error it may answer."""
    return {200: {"description": description, "content": content}, **ERROR_RESPONSES}


def install_schema(app: FastAPI, body_models: Iterable[type[BaseModel]]) -> None:
    """Serve the generated schema plus the body schemas that `openapi_extra` refers to."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        generated = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        components = generated.setdefault("components", {}).setdefault("schemas", {})
        for model in body_models:
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in model_schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components.setdefault(model.__name__, model_schema)
        app.openapi_schema = generated
        return generated

    app.openapi = schema  # type: ignore[method-assign]
