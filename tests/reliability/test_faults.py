"""Faults inside the service, on the real tiny model under a real uvicorn (in a thread of this process, so
that one method of the live model can be wrapped): an engine error fails only its own batch; CUDA
out-of-memory splits the batch and retries it smaller; a client that hung up and a request whose deadline
passed in the queue are never computed.

The engine is held busy by a reconstruct whose decoder waits on an event, so what queues behind it is
known."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from model import VQModel
from tests.support.constants import PNG
from tests.support.images import png
from tests.support.servers import Server, serve_in_thread

from . import inputs

pytestmark = pytest.mark.timeout(120)
Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]  # original method -> its replacement


def live_model(server: Server) -> VQModel:
    assert server.app is not None
    model = server.app.state.services.engines["default"].model
    assert isinstance(model, VQModel)
    return model


@contextmanager
def wrapped(model: VQModel, name: str, make: Wrapper) -> Iterator[None]:
    """Replace one method of the live model by `make(original)` for the duration."""
    original = getattr(model, name)
    setattr(model, name, make(original))
    try:
        yield
    finally:
        delattr(model, name)  # back to the class's method


class Recorder:
    """Counts what the engine computed: batch sizes passed to one model method."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def record(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.sizes.append(int(x.shape[0]))
            return original(x, *args, **kwargs)

        return record


@contextmanager
def engine_held(server: Server, pool: ThreadPoolExecutor) -> Iterator[Future[httpx.Response]]:
    """A reconstruct that occupies the engine (its decoder waits on an event) until the block ends."""
    gate = threading.Event()
    entered = threading.Event()

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def blocking(indices: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            entered.set()
            assert gate.wait(timeout=60), "the test never released the engine"
            return original(indices, *args, **kwargs)

        return blocking

    with wrapped(live_model(server), "decode_indices", make):
        holder = pool.submit(post, server.url, "/reconstruct", png(16, 16, seed=99))
        assert entered.wait(timeout=30), "the holding request never reached the engine"
        try:
            yield holder
        finally:
            gate.set()
            holder.result(timeout=60)


def post(url: str, path: str, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=data, headers=headers or PNG, timeout=60)


def decode_body(value: int) -> bytes:
    return b'{"indices": [[%d, %d], [%d, %d]]}' % (value, value, value, value)


@pytest.fixture(scope="module")
def server(tiny_64ch_checkpoint: Path) -> Iterator[Server]:
    with serve_in_thread(tiny_64ch_checkpoint, max_batch_size=16) as running:
        yield running


def test_engine_error_fails_only_its_batch_and_the_next_batch_succeeds(server: Server) -> None:
    failures_before = server.metric("vqserve_request_failures_total", reason="batch_failed")
    fault = {"armed": False}  # armed once the batches are queued (the holder's own encode must pass)

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def failing_once(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if fault["armed"]:
                fault["armed"] = False
                raise RuntimeError("injected engine fault")
            return original(x, *args, **kwargs)

        return failing_once

    json_type = {"content-type": "application/json"}
    with ThreadPoolExecutor(8) as pool, wrapped(live_model(server), "encode", make):
        depth = server.metric("vqserve_queue_depth")
        with engine_held(server, pool) as holder:
            encodes = [pool.submit(post, server.url, "/encode", png(16, 16, seed=i)) for i in range(3)]
            decodes = [pool.submit(post, server.url, "/decode", decode_body(i), json_type) for i in range(2)]
            server.wait_metric("vqserve_queue_depth", depth + 5)
            fault["armed"] = True
        assert holder.result().status_code == 200
        failed = [f.result() for f in encodes]
        served = [f.result() for f in decodes]
    # the encode batch (three requests) failed together, as JSON 500s naming the cause
    assert [r.status_code for r in failed] == [500, 500, 500]
    for reply in failed:
        assert reply.json()["error"]["code"] == "batch_failed"
        assert "injected engine fault" in reply.json()["error"]["message"]
    # the decode batch queued next to it was served
    assert [r.status_code for r in served] == [200, 200]
    assert server.metric("vqserve_request_failures_total", reason="batch_failed") == failures_before + 3
    # and the next encode batch succeeds on the same engine
    assert post(server.url, "/encode", png(16, 16)).status_code == 200
    assert server.metric("vqserve_queue_depth") == depth


def test_cuda_out_of_memory_splits_the_batch_and_retries_smaller(server: Server) -> None:
    images = [png(16, 16, seed=i) for i in range(8)]
    body, ctype = inputs.multipart(images)
    expected = post(server.url, "/encode", body, {"content-type": ctype}).json()  # unpatched answer
    seen: list[int] = []

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def small_gpu(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            seen.append(int(x.shape[0]))
            if x.shape[0] > 2:  # a GPU with room for two images at a time
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return original(x, *args, **kwargs)

        return small_gpu

    with wrapped(live_model(server), "encode", make):
        reply = post(server.url, "/encode", body, {"content-type": ctype})
    assert reply.status_code == 200, reply.text
    assert seen == [8, 4, 2, 2, 4, 2, 2]  # halved until it fits, in order
    assert reply.json() == expected  # the same indices, in request order


def test_out_of_memory_on_a_single_image_fails_that_batch_only(server: Server) -> None:
    before = server.metric("vqserve_request_failures_total", reason="batch_failed")

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def no_gpu(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

        return no_gpu

    with wrapped(live_model(server), "encode", make):
        reply = post(server.url, "/encode", png(16, 16))
    assert reply.status_code == 500
    assert reply.json()["error"]["code"] == "batch_failed"
    assert "OutOfMemoryError" in reply.json()["error"]["message"]
    assert server.metric("vqserve_request_failures_total", reason="batch_failed") == before + 1
    assert post(server.url, "/encode", png(16, 16)).status_code == 200


def test_client_that_disconnects_is_not_computed(server: Server) -> None:
    closed_before = server.metric("vqserve_request_failures_total", reason="client_closed_request")
    recorder = Recorder()
    host, port = server.host_port
    data = png(16, 16)
    with ThreadPoolExecutor(2) as pool, wrapped(live_model(server), "encode", recorder):
        depth = server.metric("vqserve_queue_depth")
        with engine_held(server, pool):
            with socket.create_connection((host, port)) as sock:
                head = f"POST /encode HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
                sock.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
                server.wait_metric("vqserve_queue_depth", depth + 1)
            # the socket closed while the request waited behind the held engine
            closed = closed_before + 1
            server.wait_metric("vqserve_request_failures_total", closed, reason="client_closed_request")
        encoded_by_holder = list(recorder.sizes)
        assert post(server.url, "/encode", data).status_code == 200
    assert encoded_by_holder == [1]  # only the holding reconstruct's own encode ran
    assert recorder.sizes == [1, 1]  # then the follow-up: the dropped request was never computed


def test_deadline_passed_in_the_queue_gives_504_and_no_compute(tiny_64ch_checkpoint: Path) -> None:
    with serve_in_thread(tiny_64ch_checkpoint, request_timeout_s=1.0) as server, ThreadPoolExecutor(4) as pool:
        before = server.metric("vqserve_request_failures_total", reason="deadline_exceeded")
        recorder = Recorder()
        with wrapped(live_model(server), "encode", recorder):
            with engine_held(server, pool):
                queued = pool.submit(post, server.url, "/encode", png(16, 16))
                started = time.monotonic()
                reply = queued.result(timeout=30)
                waited = time.monotonic() - started
                assert recorder.sizes == [1]  # the holder's encode only
            # the engine is free again; a follow-up runs after anything still queued, so had the expired item
            # stayed queued it would have been computed before it
            assert post(server.url, "/encode", png(16, 16)).status_code == 200
            assert recorder.sizes == [1, 1]
        assert reply.status_code == 504
        assert reply.json()["error"]["code"] == "deadline_exceeded"
        assert waited < 5  # answered at the deadline, not when the engine came free
        assert server.metric("vqserve_request_failures_total", reason="deadline_exceeded") >= before + 1
