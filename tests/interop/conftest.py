"""Fixtures for the interoperability tests: a real `python -m service` process on 127.0.0.1 serving the tiny
checkpoint (`tests/conftest.py`), so every client (ours, diffusers', tritonclient) talks to it over a real socket."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from model import VQModel
from tests.support.constants import PNG
from tests.support.servers import Server, hold_engine, start_checkpoint_server, stop_server

KEY = {"authorization": "Bearer k-test"}


def start_server(checkpoint: Path, log: Path, *extra: str) -> Server:
    """`python -m service` on a free port serving `checkpoint` on the CPU, one torch thread, ready when this returns."""
    return start_checkpoint_server(checkpoint, log, "--device", "cpu", *extra, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="session")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tiny_checkpoint, tmp_path_factory.mktemp("logs") / "server.log")
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def reference_model(tiny_checkpoint: Path) -> VQModel:
    return VQModel.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture(scope="session")
def guarded_server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with an API key and a queue of one, so that concurrent requests meet real 429s."""
    log = tmp_path_factory.mktemp("guarded") / "server.log"
    extra = ("--api-keys", "k-test", "--max-queue", "1", "--max-batch-size", "1")
    running = start_server(tiny_checkpoint, log, *extra)
    yield running
    stop_server(running)


@contextmanager
def full_queue(server: Server, image: bytes) -> Iterator[Callable[[], bool]]:
    """The guarded server's queue of one, full on purpose: a slow reconstruct holds the engine and one encode waits
    behind it. Yields a check that it is still full (no encode has left the queue); both finish with 200 after."""
    with ThreadPoolExecutor(2) as pool:
        holder = hold_engine(server, pool, headers=KEY)
        encodes = server.metric("vqserve_batch_size_count", op="encode")
        queued = pool.submit(httpx.post, f"{server.url}/encode", content=image, headers={**PNG, **KEY}, timeout=60)
        server.wait_metric("vqserve_queue_depth", 1, op="encode")
        yield lambda: server.metric("vqserve_batch_size_count", op="encode") == encodes
        assert holder.result().status_code == 200
        assert queued.result().status_code == 200
