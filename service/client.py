"""A small typed Python client for a vqserve server, sync (`Client`) and async (`AsyncClient`), on httpx.

Binary transfers by default (raw image bytes up, int32 indices and uint8 pixel tensors down), retries on
429 and 503 honouring `Retry-After`, a timeout per request, an optional API key. Images go in as paths, file
bytes, PIL images or numpy arrays; results come back as numpy arrays (`to_pil` makes PIL images of them). The
operations are written once, as flows (generators of the HTTP calls each makes) with one retry policy; the two
classes run them and differ only in how they send and sleep. This module never imports torch or the server: a
client machine needs only httpx, numpy and Pillow.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import inspect
import io
import itertools
import json
import random
import time
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

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


@dataclass(frozen=True, eq=False)
class Encoding:
    """What `encode` returns per image: the index map, the image's size before padding, the latents on request.

    It converts to its indices wherever numpy expects an array (`np.asarray(e)`, `np.stack([e1, e2])`), and
    `decode(e)` crops back to `image_size`, so a 33x17 image decodes as 33x17, not as the padded 36x20."""

    indices: np.ndarray  # (h, w) int32
    image_size: tuple[int, int] | None  # (H, W) of the input before padding (None: a server without the header)
    latents: np.ndarray | None = None  # (D, h, w) float32 before quantization, with return_latents=True

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.indices.shape)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self.indices if dtype is None else self.indices.astype(dtype)


@dataclass(frozen=True)
class Reconstruction:
    image: np.ndarray  # (H, W, C) uint8 at the input's size
    psnr: float  # dB against the input, as the server measured it


@dataclass(frozen=True)
class Samples:
    """What /generate and /complete drew: sample b is `indices[b]`, decoded to `images[b]`."""

    indices: np.ndarray  # (B, h, w) int32 code grids
    images: np.ndarray  # (B, H, W, C) uint8
    seed: int  # the seed they were drawn with: the given one, or the one the server chose


@dataclass(frozen=True)
class _Call:
    """One HTTP exchange, described independently of sync or async sending."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    checked: bool = True  # False: sent once and answered as it came (no retries, no VQServeError)


_T = TypeVar("_T")
_P = ParamSpec("_P")
_F = TypeVar("_F", bound=Callable[..., Any])
# an operation, once for both clients: yields the calls it makes and is sent their responses (or has their errors
# raised at the yield); returns the operation's result
_Flow = Generator[_Call, httpx.Response, _T]
# what a client sends: seconds to wait first, the call; it is sent back the response or the transport error
_Outcome = httpx.Response | httpx.TransportError
_Steps = Generator[tuple[float, _Call], _Outcome, _T]


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
    """Configuration, the operations (as flows) and the retry policy, shared by the sync and async clients."""

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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Names each public method made from a flow (`_sync`, `_async`) after the attribute that holds it."""
        super().__init_subclass__(**kwargs)
        for name, attr in vars(cls).items():
            if hasattr(attr, "__wrapped__"):
                attr.__name__, attr.__qualname__ = name, f"{cls.__qualname__}.{name}"

    def _params(self, model: str | None, **extra: Any) -> dict[str, Any]:
        chosen = model or self.model
        params = {k: v for k, v in extra.items() if v is not None}
        return {**params, "model": chosen} if chosen else params

    # the operations: the public methods of both clients are made of these (`_sync`, `_async`)
    def _models(self) -> _Flow[list[dict[str, Any]]]:
        """Every served model's ModelInfo (config, codebook size, downsample factor, ...)."""
        response = yield _Call("GET", "/models")
        models: list[dict[str, Any]] = response.json()["models"]
        return models

    def _ready(self) -> _Flow[bool]:
        """Whether the server answers /readyz with 200; False too when it cannot be reached. Not retried."""
        try:
            response = yield _Call("GET", "/readyz", checked=False)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    def _encode(
        self,
        images: ImageLike | Sequence[ImageLike],
        *,
        model: str | None = None,
        binary: bool = True,
        return_latents: bool = False,
    ) -> _Flow[Encoding | list[Encoding]]:
        """Image(s) -> `Encoding` (int32 `indices` (h, w), `image_size`, `latents` with `return_latents=True`); a
        list in request order when several were given."""
        batch, single = _as_batch(images)
        binary = binary and not return_latents  # latents come only in the JSON reply
        try:
            response = yield self._encode_call(batch, model, binary, return_latents)
        except VQServeError as exc:
            if not (binary and exc.status == 406):
                raise
            # images of different sizes cannot form one (B, h, w) tensor: fall back to JSON
            response = yield self._encode_call(batch, model, False, return_latents)
        if response.headers.get("content-type", "").startswith("application/octet-stream"):
            indices = list(read_tensor(response))
            header = response.headers.get("image_size")  # [[H, W], ...] per image
            sizes = [(int(h), int(w)) for h, w in json.loads(header)] if header else [None] * len(indices)
            results = [Encoding(idx, size) for idx, size in zip(indices, sizes, strict=True)]
        else:
            body = response.json()
            results = [_encoding(r) for r in body.get("results", [body])]
        return results[0] if single else results

    def _encode_call(self, images: Sequence[ImageLike], model: str | None, binary: bool, latents: bool) -> _Call:
        accept = "application/octet-stream" if binary else "application/json"
        files = [image_file_bytes(image) for image in images]
        params = self._params(model, return_latents="true" if latents else None)
        if len(files) == 1:
            headers = {"Content-Type": "application/octet-stream", "Accept": accept}
            return _Call("POST", "/encode", params, headers, content=files[0])
        parts = [("image", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(files)]
        return _Call("POST", "/encode", params, {"Accept": accept}, files=parts)

    def _decode(
        self,
        codes: np.ndarray | Encoding,
        *,
        model: str | None = None,
        image_size: tuple[int, int] | None = None,
        force_not_quantize: bool = False,
        scaling_factor: float | None = None,
    ) -> _Flow[np.ndarray]:
        """Indices (h, w) / (B, h, w) (integers), latents (B, D, h, w) (floats) or an `Encoding` -> uint8
        (B, H, W, C), cropped to `image_size` (an `Encoding`'s own by default: the original image's size)."""
        if isinstance(codes, Encoding) and image_size is None:
            image_size = codes.image_size
        array = np.asarray(codes)
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
        response = yield _Call("POST", "/decode", params, headers, content=body)
        pixels = read_tensor(response)  # (B, H, W, C) uint8
        return pixels if image_size is None else pixels[:, : image_size[0], : image_size[1]]

    def _reconstruct(self, image: ImageLike, *, model: str | None = None) -> _Flow[Reconstruction]:
        """Encode, quantize and decode one image on the server; the result and its PSNR."""
        headers = {"Content-Type": "application/octet-stream", "Accept": "image/png"}
        response = yield _Call("POST", "/reconstruct", self._params(model), headers, content=image_file_bytes(image))
        return Reconstruction(read_png(response.content), float(response.headers["x-psnr"]))

    def _generate(
        self,
        count: int = 1,
        *,
        label: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        first_sample: int = 0,
        model: str | None = None,
    ) -> _Flow[Samples]:
        """Draw `count` new code grids from the model's prior (of `label`'s class; None: unconditional) and their
        images. The same seed gives the same samples; sample b of a call is sample `first_sample + b` of the seed."""
        draw = _draw_body(count, label, temperature, top_k, seed, first_sample)
        response = yield self._samples_call("/generate", draw, model)
        return _samples(response)

    def _complete(
        self,
        indices: np.ndarray,
        mask: np.ndarray,
        count: int = 1,
        *,
        label: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        first_sample: int = 0,
        model: str | None = None,
    ) -> _Flow[Samples]:
        """Redraw the cells of the (h, w) code grid `indices` where `mask` is true, in raster order, from the model's
        prior (the others are kept exactly); `count` completions and their images."""
        draw = _draw_body(count, label, temperature, top_k, seed, first_sample)
        grid = {"indices": np.asarray(indices).astype(int).tolist(), "mask": np.asarray(mask).astype(int).tolist()}
        response = yield self._samples_call("/complete", {**draw, **grid}, model)
        return _samples(response)

    def _samples_call(self, path: str, body: dict[str, Any], model: str | None) -> _Call:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        return _Call("POST", path, self._params(model), headers, content=json.dumps(body).encode())

    # running a flow: its calls through the retry policy; the clients' `_run` send what this yields
    def _steps(self, flow: _Flow[_T]) -> _Steps[_T]:
        """`flow` with each of its calls made through `_attempts`: what a call ends in goes back into the flow, a
        response sent, an error raised at its yield (so that the flow may handle it); the flow's result returned."""
        try:
            call = next(flow)
            while True:
                try:
                    response = yield from self._attempts(call)
                except Exception as exc:
                    call = flow.throw(exc)
                else:
                    call = flow.send(response)
        except StopIteration as done:
            return cast(_T, done.value)

    def _attempts(self, call: _Call) -> _Steps[httpx.Response]:
        """The attempts at one call until its outcome is final: the response, else raises the error."""
        outcome = yield 0.0, call
        for attempt in itertools.count():
            if (wait := self._retry_wait(call, outcome, attempt)) is None:
                break
            outcome = yield wait, call
        if isinstance(outcome, httpx.TransportError):
            raise outcome
        if call.checked:
            raise_for_error(outcome)
        return outcome

    def _retry_wait(self, call: _Call, outcome: _Outcome, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None when this outcome is final. A refused connection and
        429/503 answers are retried while attempts remain; anything else, and a call not `checked`, is final."""
        response = outcome if isinstance(outcome, httpx.Response) else None
        refused = isinstance(outcome, httpx.ConnectError)
        retried = refused if response is None else response.status_code in RETRY_STATUSES
        if not (call.checked and retried and attempt < self.retries):
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


def _encoding(result: dict[str, Any]) -> Encoding:
    """One JSON encode result -> an `Encoding` (latents decoded from base64 float32 when present)."""
    latents = None
    if "latents" in result:
        raw = base64.b64decode(result["latents"])
        latents = np.frombuffer(raw, dtype="<f4").reshape(result["latents_shape"]).astype(np.float32)
    height, width = result["image_size"]
    return Encoding(np.asarray(result["indices"], dtype=np.int32), (int(height), int(width)), latents)


def _as_batch(images: ImageLike | Sequence[ImageLike]) -> tuple[list[ImageLike], bool]:
    """(the images as a list, whether a single image was given)."""
    if isinstance(images, str | Path | bytes | Image.Image | np.ndarray):
        return [images], True
    return list(images), False


def _draw_body(
    count: int, label: int | None, temperature: float, top_k: int | None, seed: int | None, first_sample: int
) -> dict[str, Any]:
    body: dict[str, Any] = {"count": count, "temperature": float(temperature), "first_sample": first_sample}
    for name, value in (("label", label), ("top_k", top_k), ("seed", seed)):
        if value is not None:
            body[name] = value
    return body


def _samples(response: httpx.Response) -> Samples:
    body = response.json()
    samples = body["samples"]
    indices = np.asarray([sample["indices"] for sample in samples], dtype=np.int32)
    images = np.stack([read_png(base64.b64decode(sample["image"])) for sample in samples])
    return Samples(indices, images, int(body["seed"]))


def _documented(method: _F, flow: Callable[..., Any]) -> _F:
    """`method` with the docstring and signature of `flow`, its return the flow's result: what help() shows."""
    functools.update_wrapper(method, flow)
    result = flow.__annotations__["return"].removeprefix("_Flow[").removesuffix("]")  # unevaluated strings
    public: Any = method
    public.__annotations__ = {**flow.__annotations__, "return": result}
    public.__signature__ = inspect.signature(flow).replace(return_annotation=result)
    return method


def _sync(flow: Callable[Concatenate[_Base, _P], _Flow[_T]]) -> Callable[Concatenate[Client, _P], _T]:
    """A `Client` method running `flow`."""

    def method(self: Client, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return self._run(flow(self, *args, **kwargs))

    return _documented(method, flow)


def _async(
    flow: Callable[Concatenate[_Base, _P], _Flow[_T]],
) -> Callable[Concatenate[AsyncClient, _P], Coroutine[Any, Any, _T]]:
    """An `AsyncClient` coroutine method running `flow`."""

    async def method(self: AsyncClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self._run(flow(self, *args, **kwargs))

    return _documented(method, flow)


class Client(_Base):
    """Synchronous client; thread-safe (one connection pool shared by threads). Use as a context manager."""

    def __init__(self, url: str = DEFAULT_URL, *, transport: httpx.BaseTransport | None = None, **kw: Any) -> None:
        super().__init__(url, **kw)
        self._http = httpx.Client(timeout=self._timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    models = _sync(_Base._models)
    ready = _sync(_Base._ready)
    encode = _sync(_Base._encode)
    decode = _sync(_Base._decode)
    reconstruct = _sync(_Base._reconstruct)
    generate = _sync(_Base._generate)
    complete = _sync(_Base._complete)

    def _run(self, flow: _Flow[_T]) -> _T:
        steps = self._steps(flow)
        try:
            step = next(steps)
            while True:
                step = steps.send(self._send(*step))
        except StopIteration as done:
            return cast(_T, done.value)

    def _send(self, wait: float, call: _Call) -> _Outcome:
        if wait:
            time.sleep(wait)
        try:
            return self._http.request(**self._send_args(call))
        except httpx.TransportError as exc:
            return exc


class AsyncClient(_Base):
    """Asynchronous client: the methods of `Client` as coroutines. Use as an async context manager."""

    def __init__(self, url: str = DEFAULT_URL, *, transport: httpx.AsyncBaseTransport | None = None, **kw: Any) -> None:
        super().__init__(url, **kw)
        self._http = httpx.AsyncClient(timeout=self._timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    models = _async(_Base._models)
    ready = _async(_Base._ready)
    encode = _async(_Base._encode)
    decode = _async(_Base._decode)
    reconstruct = _async(_Base._reconstruct)
    generate = _async(_Base._generate)
    complete = _async(_Base._complete)

    async def _run(self, flow: _Flow[_T]) -> _T:
        steps = self._steps(flow)
        try:
            step = next(steps)
            while True:
                step = steps.send(await self._send(*step))
        except StopIteration as done:
            return cast(_T, done.value)

    async def _send(self, wait: float, call: _Call) -> _Outcome:
        if wait:
            await asyncio.sleep(wait)
        try:
            return await self._http.request(**self._send_args(call))
        except httpx.TransportError as exc:
            return exc
