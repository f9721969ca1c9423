"""`service.client` against a real server: indices, pixels and PSNR equal an in-process reference model; sync
and async (every test of a method runs with both clients); batches; retries on a real 429 (from a queue made full
on purpose) and on refused connections; readiness; API keys; timeouts."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from model import VQModel
from service.client import AsyncClient, Client, Encoding, VQServeError, retry_delay
from tests.support.images import image_bytes, random_rgb
from tests.support.reference import model_input, model_output
from tests.support.servers import Server, free_port

from .conftest import full_queue


def ref_indices(model: VQModel, arr: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        _, indices = model.quantize(model.encode(model_input(arr)))
    return indices[0].numpy()


def ref_decode(model: VQModel, indices: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model_output(model.decode_indices(torch.from_numpy(indices).long()))


KINDS = ["sync", "async"]


class RunToCompletion:
    """An AsyncClient whose coroutine methods run to completion on an event loop of its own: the tests written for
    `Client` run unchanged against the async client (the real client and a real server, nothing stands in)."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)
        return lambda *args, **kwargs: self.loop.run_until_complete(method(*args, **kwargs))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


@contextmanager
def open_client(kind: str, url: str, **options: Any) -> Iterator[Any]:
    """A `Client` (kind "sync") or an `AsyncClient` run to completion (kind "async") at `url`."""
    if kind == "sync":
        with Client(url, **options) as c:
            yield c
        return
    runner = RunToCompletion(AsyncClient(url, **options))
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture(params=KINDS)
def client(request: pytest.FixtureRequest, server: Server) -> Iterator[Client]:
    with open_client(request.param, server.url, timeout=30) as c:
        yield c


def test_encode_one_image_in_every_form(client: Client, reference_model: VQModel, tmp_path: Path) -> None:
    arr = random_rgb(32, 48, seed=1)
    expected = ref_indices(reference_model, arr)
    path = tmp_path / "a.png"
    path.write_bytes(image_bytes(arr))
    for form in (arr, Image.fromarray(arr), image_bytes(arr), path, str(path)):
        got = client.encode(form)
        assert isinstance(got, Encoding)
        assert got.indices.dtype == np.int32
        assert got.image_size == (32, 48)
        assert got.latents is None  # only on request
        np.testing.assert_array_equal(got.indices, expected)
        np.testing.assert_array_equal(np.asarray(got), expected)  # an array wherever numpy wants one


def test_encode_decode_round_trips_to_the_original_size(client: Client, reference_model: VQModel) -> None:
    """A 33x17 image pads to the code grid of 36x20; its Encoding decodes back to 33x17, alone or in a batch."""
    odd = random_rgb(33, 17, seed=4)
    encoding = client.encode(odd)
    assert encoding.image_size == (33, 17)
    assert client.decode(encoding).shape == (1, 33, 17, 3)
    padded = client.decode(encoding.indices)  # bare indices: the padded size, as before
    assert padded.shape[1:3] == tuple(reference_model.downsample_factor * n for n in encoding.shape)
    batch = client.encode([odd, random_rgb(34, 18, seed=5)])  # the same grid: one binary reply
    assert [e.image_size for e in batch] == [(33, 17), (34, 18)]
    assert client.decode(batch[1]).shape == (1, 34, 18, 3)


def test_encode_can_return_latents_that_decode(client: Client, reference_model: VQModel) -> None:
    arr = random_rgb(32, 32, seed=7)
    encoding = client.encode(arr, return_latents=True)
    assert encoding.latents is not None
    assert encoding.latents.shape == (reference_model.config.embed_dim, *encoding.shape)
    with torch.inference_mode():
        expected = reference_model.encode(model_input(arr))[0].numpy()
    assert np.abs(encoding.latents - expected).max() < 1e-4
    np.testing.assert_array_equal(encoding.indices, ref_indices(reference_model, arr))
    # the latents decode (quantized on the server) to what the indices decode to
    np.testing.assert_array_equal(client.decode(encoding.latents[None]), client.decode(encoding))


def test_encode_batch_same_and_mixed_sizes(client: Client, reference_model: VQModel) -> None:
    same = [random_rgb(32, 32, seed=s) for s in range(3)]
    got = client.encode(same)
    assert isinstance(got, list)
    for arr, encoding in zip(same, got, strict=True):
        np.testing.assert_array_equal(encoding.indices, ref_indices(reference_model, arr))
    mixed = [random_rgb(32, 32, seed=5), random_rgb(16, 40, seed=6)]  # cannot stack: JSON fallback
    got = client.encode(mixed)
    assert [g.shape for g in got] == [(16, 16), (8, 20)]
    assert [g.image_size for g in got] == [(32, 32), (16, 40)]
    for arr, encoding in zip(mixed, got, strict=True):
        np.testing.assert_array_equal(encoding.indices, ref_indices(reference_model, arr))


def test_decode_indices_and_latents(client: Client, reference_model: VQModel) -> None:
    rng = np.random.default_rng(0)
    indices = rng.integers(0, reference_model.codebook_size, (2, 8, 12)).astype(np.int32)
    pixels = client.decode(indices)
    assert pixels.shape == (2, 16, 24, 3)
    assert pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - ref_decode(reference_model, indices).astype(int)).max() <= 1
    cropped = client.decode(indices[0], image_size=(15, 20))
    assert cropped.shape == (1, 15, 20, 3)

    latents = rng.standard_normal((1, reference_model.config.embed_dim, 8, 8)).astype(np.float32)
    with torch.inference_mode():
        expected = model_output(reference_model.decode(torch.from_numpy(latents)))
        unquantized = model_output(reference_model.decode(torch.from_numpy(latents), force_not_quantize=True))
    assert np.abs(client.decode(latents).astype(int) - expected.astype(int)).max() <= 1
    got = client.decode(latents, force_not_quantize=True)
    assert np.abs(got.astype(int) - unquantized.astype(int)).max() <= 1


def test_reconstruct_returns_image_and_psnr(client: Client, reference_model: VQModel) -> None:
    arr = random_rgb(24, 32, seed=3)
    result = client.reconstruct(arr)
    expected = ref_decode(reference_model, ref_indices(reference_model, arr)[None])[0]
    assert result.image.shape == arr.shape
    assert np.abs(result.image.astype(int) - expected.astype(int)).max() <= 1
    mse = np.mean((arr.astype(float) - result.image.astype(float)) ** 2)
    assert result.psnr == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-3)


def test_models_and_errors(client: Client, reference_model: VQModel) -> None:
    (info,) = client.models()
    assert info["codebook_size"] == reference_model.codebook_size
    assert info["downsample_factor"] == reference_model.downsample_factor
    with pytest.raises(VQServeError) as excinfo:
        client.decode(np.full((4, 4), 10_000, dtype=np.int32))
    assert excinfo.value.status == 422
    assert excinfo.value.code == "invalid_input"
    with pytest.raises(VQServeError) as excinfo:
        client.encode(b"not an image")
    assert excinfo.value.status in (400, 422)


def test_async_client_matches_sync(server: Server, reference_model: VQModel) -> None:
    images = [random_rgb(32, 32, seed=s) for s in range(4)]

    async def run() -> tuple[list[np.ndarray], np.ndarray, float]:
        async with AsyncClient(server.url, timeout=30) as c:
            encoded = await asyncio.gather(*(c.encode(a) for a in images))
            pixels = await c.decode(np.stack(encoded))  # type: ignore[arg-type]
            rec = await c.reconstruct(images[0])
            assert (await c.models())[0]["codebook_size"] == reference_model.codebook_size
            return encoded, pixels, rec.psnr  # type: ignore[return-value]

    encoded, pixels, quality = asyncio.run(run())
    for arr, encoding in zip(images, encoded, strict=True):
        np.testing.assert_array_equal(encoding.indices, ref_indices(reference_model, arr))
    assert pixels.shape == (4, 32, 32, 3)
    assert math.isfinite(quality)


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_raises(server: Server, kind: str) -> None:
    with open_client(kind, server.url, timeout=1e-4, retries=0) as c, pytest.raises(httpx.TimeoutException):
        c.encode(random_rgb(256, 256))


@pytest.mark.parametrize("kind", KINDS)
def test_ready_is_not_retried(server: Server, kind: str) -> None:
    with open_client(kind, server.url) as c:
        assert c.ready() is True
    started = time.monotonic()
    with open_client(kind, f"http://127.0.0.1:{free_port()}", retries=20, max_retry_delay=0.1) as c:
        assert c.ready() is False  # nothing listens: refused, answered at once (retried, it would take ~2 s)
    assert time.monotonic() - started < 1.0


@contextmanager
def listening_late(port: int, delay: float) -> Iterator[list[str]]:
    """An HTTP server that starts listening on `port` only after `delay` seconds and answers GET /models; yields
    the paths it was asked for."""
    asked: list[str] = []

    class Models(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = json.dumps({"models": [{"name": "late"}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    up = threading.Event()
    servers: list[ThreadingHTTPServer] = []

    def listen() -> None:
        time.sleep(delay)
        servers.append(ThreadingHTTPServer(("127.0.0.1", port), Models))
        up.set()
        servers[0].serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        yield asked
    finally:
        assert up.wait(timeout=delay + 5), f"nothing listened on port {port}"
        servers[0].shutdown()
        servers[0].server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("kind", KINDS)
def test_refused_connections_are_retried(kind: str) -> None:
    port = free_port()
    with open_client(kind, f"http://127.0.0.1:{port}", retries=0) as c, pytest.raises(httpx.ConnectError):
        c.models()  # no retries: the refusal is final
    with listening_late(port, delay=0.5) as asked:
        with open_client(kind, f"http://127.0.0.1:{port}", retries=50, backoff=0.05, max_retry_delay=0.1) as c:
            assert c.models() == [{"name": "late"}]  # refused for 0.5 s, then answered
        assert asked == ["/models"]


def test_retry_delay_honours_retry_after() -> None:
    assert retry_delay(httpx.Response(429, headers={"Retry-After": "2"}), 0, 0.25, 30.0) == 2.0
    assert retry_delay(httpx.Response(429, headers={"Retry-After": "120"}), 0, 0.25, 5.0) == 5.0
    backoff = retry_delay(httpx.Response(503), 3, 0.25, 30.0)
    assert 0.25 * 8 * 0.5 <= backoff <= 0.25 * 8 * 1.5


def test_api_key(guarded_server: Server) -> None:
    with Client(guarded_server.url) as anonymous, pytest.raises(VQServeError) as excinfo:
        anonymous.models()
    assert excinfo.value.status == 401
    with Client(guarded_server.url, api_key="k-test") as keyed:
        assert keyed.models()[0]["name"] == "default"


def encode_burst(server: Server, image: bytes, retries: int, kind: str = "sync") -> list[int]:
    """8 concurrent encodes through one client (threads for `Client`, tasks for `AsyncClient`): the final status
    of each. Retries wait Retry-After, capped at 0.25 s, so a burst ends within seconds of the queue moving and
    `retries` bounds how long it may take."""
    options: dict[str, Any] = {"api_key": "k-test", "retries": retries, "max_retry_delay": 0.25, "timeout": 60}
    if kind == "async":

        async def burst() -> list[int]:
            async with AsyncClient(server.url, **options) as c:

                async def one() -> int:
                    try:
                        await c.encode(image)
                        return 200
                    except VQServeError as exc:
                        return exc.status

                return list(await asyncio.gather(*(one() for _ in range(8))))

        return asyncio.run(burst())
    with Client(server.url, **options) as c:

        def one(_: int) -> int:
            try:
                c.encode(image)
                return 200
            except VQServeError as exc:
                return exc.status

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(8)))


@pytest.mark.parametrize("kind", KINDS)
def test_a_full_queue_answers_429_at_once(guarded_server: Server, kind: str) -> None:
    image = image_bytes(random_rgb(32, 32, seed=9))
    overloaded = guarded_server.metric("vqserve_request_failures_total", reason="overloaded")
    with full_queue(guarded_server, image) as still_full:
        assert encode_burst(guarded_server, image, retries=0, kind=kind) == [429] * 8
        assert still_full(), "the engine moved on during the burst: hold it longer (a larger reconstruct)"
    assert guarded_server.metric("vqserve_request_failures_total", reason="overloaded") == overloaded + 8


@pytest.mark.parametrize("kind", KINDS)
def test_retries_ride_out_a_full_queue(guarded_server: Server, kind: str) -> None:
    image = image_bytes(random_rgb(32, 32, seed=10))
    overloaded = guarded_server.metric("vqserve_request_failures_total", reason="overloaded")
    with full_queue(guarded_server, image), ThreadPoolExecutor(1) as runner:
        burst = runner.submit(encode_burst, guarded_server, image, 60, kind)  # at most 60 x 0.25 s of waiting each
        # the burst meets the full queue (8 refusals counted by the server), then rides it out
        guarded_server.wait_metric("vqserve_request_failures_total", overloaded + 8, reason="overloaded")
        assert burst.result(timeout=60) == [200] * 8
