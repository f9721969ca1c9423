"""A small typed Python client for a vqserve server, sync (`Client`) and async (`AsyncClient`), on httpx.

Binary transfers by default (raw image bytes up, int32 indices and uint8 pixel tensors down), retries on
429 and 503 honouring `Retry-After`, a timeout per request, an optional API key. Images go in as paths, file
bytes, PIL images or numpy arrays; results come back as numpy arrays (`to_pil` makes PIL images of them). The
request building and reply parsing are shared; the two classes differ only in how they send. This module never
imports torch or the server: a client machine needs only httpx, numpy and Pillow.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = (429, 503)
ImageLike = str | Path | bytes | Image.Image | np.ndarray
_NUMPY_TO_WIRE = {
    np.dtype(np.int16): "int16",
    np.dtype(np.int32): "int32",
    np.dtype(np.int64): "int64",
    np.dtype(np.float16): "float16",
    np.dtype(np.float32): "float32",
}
_WIRE_TO_NUMPY = {
    "uint8": np.uint8,
    "int32": np.int32,
    "int64": np.int64,
    "float32": np.float32,
    "float16": np.float16,
}


class VQServeError(Exception):
    """A non-2xx answer: the HTTP status and the server's `{"error": {"code", "message"}}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Reconstruction:
    image: np.ndarray  # (H, W, C) uint8 at the input's size
    psnr: float  # dB against the input, as the server measured it


@dataclass(frozen=True)
class _Call:
    """One HTTP exchange, described independently of sync or async sending."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None


# inputs
def image_file_bytes(image: ImageLike) -> bytes:
    """Any accepted image form -> encoded file bytes (PNG for arrays and PIL images: lossless)."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, str | Path):
        return Path(image).read_bytes()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"numpy images must be uint8 (H, W) or (H, W, C), got {image.dtype}")
        image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, "PNG", compress_level=1)
        return buf.getvalue()
    raise TypeError(f"unsupported image type {type(image).__name__}: give a path, bytes, PIL image or array")


def to_pil(pixels: np.ndarray) -> Image.Image:
    """(H, W, C) uint8 -> a PIL image (L for one channel)."""
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def read_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


# replies
def raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:500] or response.reason_phrase
    raise VQServeError(response.status_code, code, message)


def read_tensor(response: httpx.Response) -> np.ndarray:
    """A binary tensor reply with `shape` and `dtype` headers -> a numpy array (a copy, writable)."""
    shape = json.loads(response.headers["shape"])
    dtype = np.dtype(_WIRE_TO_NUMPY[response.headers["dtype"]]).newbyteorder("<")
    return np.frombuffer(response.content, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def retry_delay(response: httpx.Response | None, attempt: int, backoff: float, max_delay: float) -> float:
    """Retry-After (seconds) when the server sent it, else exponential backoff with jitter; capped."""
    header = response.headers.get("retry-after") if response is not None else None
    if header is not None:
        try:
            return min(max(float(header), 0.0), max_delay)
        except ValueError:
            pass  # an HTTP date: fall back to backoff
    return min(backoff * (2**attempt) * (0.5 + random.random()), max_delay)


class _Base:
    """Configuration and the request/reply logic shared by the sync and async clients."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.25,
        max_retry_delay: float = 30.0,
        model: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_retry_delay = max_retry_delay
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout)

    def _params(self, model: str | None, **extra: Any) -> dict[str, Any]:
        chosen = model or self.model
        params = {k: v for k, v in extra.items() if v is not None}
        return {**params, "model": chosen} if chosen else params

    # request builders
    def _encode_call(self, images: Sequence[ImageLike], model: str | None, binary: bool) -> _Call:
        accept = "application/octet-stream" if binary else "application/json"
        files = [image_file_bytes(image) for image in images]
        if len(files) == 1:
            return _Call(
                "POST",
                "/encode",
                self._params(model),
                {"Content-Type": "application/octet-stream", "Accept": accept},
                content=files[0],
            )
        parts = [("image", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(files)]
        return _Call("POST", "/encode", self._params(model), {"Accept": accept}, files=parts)

    def _decode_call(
        self, array: np.ndarray, model: str | None, force_not_quantize: bool, scaling_factor: float | None
    ) -> _Call:
        wire = _NUMPY_TO_WIRE.get(array.dtype)
        if wire is None:
            kind = "indices" if np.issubdtype(array.dtype, np.integer) else "latents"
            array = array.astype(np.int32 if kind == "indices" else np.float32)
            wire = "int32" if kind == "indices" else "float32"
        params = self._params(
            model,
            shape=list(array.shape),
            dtype=wire,
            force_not_quantize=str(force_not_quantize).lower() if force_not_quantize else None,
            scaling_factor=scaling_factor,
        )
        body = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        headers = {"Content-Type": "tensor/binary", "Accept": "tensor/binary"}
        return _Call("POST", "/decode", params, headers, content=body)

    def _reconstruct_call(self, image: ImageLike, model: str | None) -> _Call:
        headers = {"Content-Type": "application/octet-stream", "Accept": "image/png"}
        return _Call("POST", "/reconstruct", self._params(model), headers, content=image_file_bytes(image))

    # reply parsers
    @staticmethod
    def _encode_reply(response: httpx.Response) -> list[np.ndarray]:
        if response.headers.get("content-type", "").startswith("application/octet-stream"):
            return list(read_tensor(response))
        body = response.json()
        results = body.get("results", [body])
        return [np.asarray(r["indices"], dtype=np.int32) for r in results]

    @staticmethod
    def _decode_reply(response: httpx.Response) -> np.ndarray:
        return read_tensor(response)  # (B, H, W, C) uint8

    @staticmethod
    def _reconstruct_reply(response: httpx.Response) -> Reconstruction:
        return Reconstruction(read_png(response.content), float(response.headers["x-psnr"]))

    def _retry_wait(self, response: httpx.Response | None, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None when this outcome is final. A refused connection
        (`response` None) and 429/503 answers are retried while attempts remain; anything else is final."""
        if attempt >= self.retries or (response is not None and response.status_code not in RETRY_STATUSES):
            return None
        return retry_delay(response, attempt, self.backoff, self.max_retry_delay)

    def _send_args(self, call: _Call) -> dict[str, Any]:
        return {
            "method": call.method,
            "url": self.url + call.path,
            "params": call.params,
            "headers": {**self._headers, **call.headers},
            "content": call.content,
            "files": call.files,
        }


def _as_batch(images: ImageLike | Sequence[ImageLike]) -> tuple[list[ImageLike], bool]:
    """(the images as a list, whether a single image was given)."""
    if isinstance(images, str | Path | bytes | Image.Image | np.ndarray):
        return [images], True
    return list(images), False


def _crop(pixels: np.ndarray, image_size: tuple[int, int] | None) -> np.ndarray:
    return pixels if image_size is None else pixels[:, : image_size[0], : image_size[1]]


class Client(_Base):
    """Synchronous client; thread-safe (one connection pool shared by threads). Use as a context manager."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        transport: httpx.BaseTransport | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(url, **kw)
        self._http = httpx.Client(timeout=self._timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> httpx.Response:
        for attempt in itertools.count():
            try:
                response = self._http.request(**self._send_args(call))
            except httpx.ConnectError:
                if (wait := self._retry_wait(None, attempt)) is None:
                    raise
            else:
                if (wait := self._retry_wait(response, attempt)) is None:
                    raise_for_error(response)
                    return response
            time.sleep(wait)
        raise AssertionError("unreachable")

    def models(self) -> list[dict[str, Any]]:
        """Every served model's ModelInfo (config, codebook size, downsample factor, ...)."""
        models: list[dict[str, Any]] = self._send(_Call("GET", "/models")).json()["models"]
        return models

    def ready(self) -> bool:
        try:
            return self._http.get(self.url + "/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def encode(
        self, images: ImageLike | Sequence[ImageLike], *, model: str | None = None, binary: bool = True
    ) -> np.ndarray | list[np.ndarray]:
        """Image(s) -> int32 index map(s) (h, w); a list in request order when several were given."""
        batch, single = _as_batch(images)
        try:
            results = self._encode_reply(self._send(self._encode_call(batch, model, binary)))
        except VQServeError as exc:
            if not (binary and exc.status == 406):
                raise
            # images of different sizes cannot form one (B, h, w) tensor: fall back to JSON
            results = self._encode_reply(self._send(self._encode_call(batch, model, False)))
        return results[0] if single else results

    def decode(
        self,
        codes: np.ndarray,
        *,
        model: str | None = None,
        image_size: tuple[int, int] | None = None,
        force_not_quantize: bool = False,
        scaling_factor: float | None = None,
    ) -> np.ndarray:
        """Indices (h, w) / (B, h, w) (integers) or latents (B, D, h, w) (floats) -> uint8 (B, H, W, C)."""
        call = self._decode_call(np.asarray(codes), model, force_not_quantize, scaling_factor)
        return _crop(self._decode_reply(self._send(call)), image_size)

    def reconstruct(self, image: ImageLike, *, model: str | None = None) -> Reconstruction:
        """Encode, quantize and decode one image on the server; the result and its PSNR."""
        return self._reconstruct_reply(self._send(self._reconstruct_call(image, model)))


class AsyncClient(_Base):
    """Asynchronous client: the methods of `Client` as coroutines. Use as an async context manager."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(url, **kw)
        self._http = httpx.AsyncClient(timeout=self._timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        for attempt in itertools.count():
            try:
                response = await self._http.request(**self._send_args(call))
            except httpx.ConnectError:
                if (wait := self._retry_wait(None, attempt)) is None:
                    raise
            else:
                if (wait := self._retry_wait(response, attempt)) is None:
                    raise_for_error(response)
                    return response
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def models(self) -> list[dict[str, Any]]:
        """Every served model's ModelInfo."""
        models: list[dict[str, Any]] = (await self._send(_Call("GET", "/models"))).json()["models"]
        return models

    async def ready(self) -> bool:
        try:
            return (await self._http.get(self.url + "/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def encode(
        self, images: ImageLike | Sequence[ImageLike], *, model: str | None = None, binary: bool = True
    ) -> np.ndarray | list[np.ndarray]:
        """Image(s) -> int32 index map(s) (h, w); a list in request order when several were given."""
        batch, single = _as_batch(images)
        try:
            results = self._encode_reply(await self._send(self._encode_call(batch, model, binary)))
        except VQServeError as exc:
            if not (binary and exc.status == 406):
                raise
            results = self._encode_reply(await self._send(self._encode_call(batch, model, False)))
        return results[0] if single else results

    async def decode(
        self,
        codes: np.ndarray,
        *,
        model: str | None = None,
        image_size: tuple[int, int] | None = None,
        force_not_quantize: bool = False,
        scaling_factor: float | None = None,
    ) -> np.ndarray:
        """Indices (h, w) / (B, h, w) or latents (B, D, h, w) -> uint8 (B, H, W, C)."""
        call = self._decode_call(np.asarray(codes), model, force_not_quantize, scaling_factor)
        return _crop(self._decode_reply(await self._send(call)), image_size)

    async def reconstruct(self, image: ImageLike, *, model: str | None = None) -> Reconstruction:
        """Encode, quantize and decode one image on the server; the result and its PSNR."""
        return self._reconstruct_reply(await self._send(self._reconstruct_call(image, model)))
