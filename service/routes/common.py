"""HTTP helpers shared by the inference routes: bounded body reading, input forms, content negotiation, and
awaiting batch results while watching for a disconnected client and the deadline. No tensors are computed here."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from ..batching import Ticket
from ..errors import ServiceError
from ..runtime import Services
from ..schemas import EncodeJSONRequest

RAW_IMAGE_TYPES = ("application/octet-stream",)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError("body_too_large", f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError("body_too_large", f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ServiceError("invalid_json", f"body is not valid JSON: {exc}") from exc


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


async def read_image_files(request: Request, services: Services) -> tuple[list[bytes], bool]:
    """Image files from a raw body, a multipart `image` field, or JSON base64 (`image` / `images`), and whether
    the request used a batch form (multipart or `images`), which is answered with a `results` list."""
    settings = services.settings
    kind = media_type(request)
    body = await read_body(request, settings.max_body_bytes)
    if kind.startswith("image/") or kind in RAW_IMAGE_TYPES:
        files, batch_form = [body], False
    elif kind == "multipart/form-data":
        files, batch_form = await _multipart_images(request, body, settings.max_images_per_request), True
    elif kind == "application/json":
        files, batch_form = await services.codec("json_decode", _json_images, body)
    else:
        raise ServiceError(
            "unsupported_media_type",
            f"Content-Type {kind or '(none)'!r} is not accepted; send image/*, application/octet-stream, "
            "multipart/form-data (field 'image') or application/json",
        )
    if not files or any(len(f) == 0 for f in files):
        raise ServiceError("bad_request", "no image data in the request")
    if len(files) > settings.max_images_per_request:
        raise ServiceError(
            "too_many_images",
            f"{len(files)} images in one request; the limit is {settings.max_images_per_request}",
        )
    return files, batch_form


def _json_images(body: bytes) -> tuple[list[bytes], bool]:
    from ..codecs import b64decode

    try:
        parsed = EncodeJSONRequest.model_validate(parse_json(body))
    except ValidationError as exc:
        raise ServiceError("invalid_input", validation_message(exc)) from exc
    texts = [parsed.image] if parsed.image is not None else list(parsed.images or [])
    return [b64decode(text, f"image {i}") for i, text in enumerate(texts)], parsed.images is not None


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
