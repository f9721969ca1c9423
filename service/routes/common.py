"""HTTP helpers shared by the inference routes: input forms, content negotiation, OpenAPI reply documentation,
tensor replies, and queueing items then awaiting their results while watching for a disconnected client and the
deadline. No tensors are computed here.

Bodies are read with `request.body()`: `BodyGuardMiddleware` (app.py) bounds every body, in size and in time, on
every route, and its errors surface from that call inside the route.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import Response
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from ..batching import Item, Ticket
from ..errors import ERROR_RESPONSES, ServiceError
from ..payloads import check_count, images_from_json
from ..runtime import Services

RAW_IMAGE_TYPES = ("application/octet-stream",)
ModelQuery = Annotated[str | None, Query(description="served model name; default: the first configured")]


# OpenAPI documentation of bodies the routes read themselves
BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}


def binary(*media_types: str) -> dict[str, Any]:
    """OpenAPI `content` for raw bytes in each of `media_types`."""
    return dict.fromkeys(media_types, BINARY)


def request_body(content: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body itself (FastAPI cannot infer it)."""
    return {"requestBody": {"required": True, "content": content}}


def replies(description: str, content: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """`responses` of an inference route: what its 200 holds, then every error it may answer."""
    return {200: {"description": description, "content": content}, **ERROR_RESPONSES}


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def tensor_response(body: bytes, shape: list[int], dtype: str, media: str = "tensor/binary") -> Response:
    """Raw little-endian tensor bytes; the `shape` (a JSON list) and `dtype` headers say how to read them."""
    return Response(body, media_type=media, headers={"shape": json.dumps(shape), "dtype": dtype})


async def read_image_files(request: Request, services: Services) -> tuple[list[bytes], bool]:
    """Image files from a raw body, a multipart `image` field, or JSON base64 (`image` / `images`), and whether
    the request used a batch form (multipart or `images`), which is answered with a `results` list."""
    settings = services.settings
    kind = media_type(request)
    body = await request.body()
    if kind.startswith("image/") or kind in RAW_IMAGE_TYPES:
        files, batch_form = [body], False
    elif kind == "multipart/form-data":
        files, batch_form = await _multipart_images(request, body, settings.max_images_per_request), True
    elif kind == "application/json":
        files, batch_form = await services.codec("json_decode", images_from_json, body)
    else:
        raise ServiceError(
            "unsupported_media_type",
            f"Content-Type {kind or '(none)'!r} is not accepted; send image/*, application/octet-stream, "
            "multipart/form-data (field 'image') or application/json",
        )
    if not files or any(len(f) == 0 for f in files):
        raise ServiceError("bad_request", "no image data in the request")
    check_count(len(files), settings.max_images_per_request)
    return files, batch_form


async def _multipart_images(request: Request, body: bytes, max_files: int) -> list[bytes]:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_files + 1, max_fields=16)
    parser.spool_max_size = len(body)  # the body is in memory already: never spill files to a (read-only) disk
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ServiceError("bad_request", f"malformed multipart body: {exc.message}") from exc
    try:
        files = []
        for value in form.getlist("image"):
            if isinstance(value, str):
                raise ServiceError("bad_request", "multipart field 'image' must be a file, not text")
            files.append(await value.read())
        if not files:
            raise ServiceError("bad_request", "multipart body has no file in the field 'image'")
        return files
    finally:
        await form.close()


def negotiate(request: Request, offered: Sequence[str], override: str | None = None) -> str | None:
    """The offered media type the client prefers by `Accept` (q-values honoured); the first when unspecified.

    None when the client named only types that are not offered.
    """
    if override is not None:
        return override
    header = request.headers.get("accept", "").strip()
    if not header:
        return offered[0]
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")):
        fields = [f.strip() for f in part.split(";")]
        quality = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                with contextlib.suppress(ValueError):
                    quality = float(value)
        if fields[0] and quality > 0:
            ranked.append((-quality, position, fields[0].lower()))
    for _, _, wanted in sorted(ranked):
        if wanted in ("*/*", "*"):
            return offered[0]
        for candidate in offered:
            if wanted == candidate or (wanted.endswith("/*") and candidate.startswith(wanted[:-1])):
                return candidate
    return None


async def wait_disconnect(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_items(
    request: Request, services: Services, ticket: Ticket, op: str, tensors: list[Any], params: tuple[Any, ...] = ()
) -> list[Any]:
    """Queue one item per tensor on the admitted ticket and wait for all of them, in order."""
    factor = services.engine(ticket.worker.engine.name).downsample_factor
    items = [Item(op, t, pixels=_pixels(op, t, factor), params=params) for t in tensors]
    results = await await_results(request, ticket, services.batcher.submit(ticket, items))
    note_batch(request, ticket)
    return results


def _pixels(op: str, tensor: Any, factor: int) -> int:
    """Image pixels the item stands for (the input for encode, the output for decode)."""
    h, w = tensor.shape[-2], tensor.shape[-1]
    return int(h * w if op in ("encode", "reconstruct") else h * w * factor * factor)


async def await_results(request: Request, ticket: Ticket, futures: list[asyncio.Future[Any]]) -> list[Any]:
    """The results in order; 504 at the deadline; 499 (nobody listens) when the client went away."""
    gathered: asyncio.Future[list[Any]] = asyncio.gather(*futures)
    disconnect: asyncio.Future[None] = asyncio.create_task(wait_disconnect(request))
    waiters: set[asyncio.Future[Any]] = {gathered, disconnect}
    try:
        timeout = max(0.0, ticket.deadline - time.monotonic())
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
    if gathered in done:
        results: list[Any] = gathered.result()
        return results
    gathered.cancel()
    ticket.abandon()
    if disconnect in done and not disconnect.cancelled():
        raise ServiceError("client_closed", "the client closed the connection before the result was ready")
    raise ServiceError("deadline_exceeded", "the request deadline (VQSERVE_REQUEST_TIMEOUT_S) passed")


def note_batch(request: Request, ticket: Ticket) -> None:
    """Record the batch size(s) the request rode in, for the access log."""
    sizes = [item.batch_size for item in ticket.items if item.batch_size]
    if sizes:
        request.state.batch_size = max(sizes)
