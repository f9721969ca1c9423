"""Request bodies in the forms the REST routes take (raw image, multipart, JSON base64) and raw tensor replies.

Bodies are read with `request.body()`: `BodyGuardMiddleware` (middleware.py) bounds every body, in size and in
time, on every route, and its errors surface from that call inside the route.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

from fastapi.responses import Response
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from ..errors import ServiceError
from ..inputs import check_count, images_from_json
from ..runtime import Services
from .negotiation import media_type

RAW_IMAGE_TYPES = ("application/octet-stream",)


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
        files, batch_form = await services.offload("json_decode", images_from_json, body)
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
