"""A real `python -m service` on 127.0.0.1: batching, overload, client disconnects, SIGTERM drain, startup errors.

A slow request (reconstructing a large image with one torch thread) holds the engine so that what happens to the
requests behind it is deterministic; the tests read the outcome from /metrics, as an operator would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.servers import Server, free_port, serving

from .conftest import png

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
PNG = {"content-type": "image/png"}
SLOW_SIDE = 320  # a reconstruct of this size keeps the engine busy for a while on one thread


@contextmanager
def serve(checkpoint: Path, tmp_path: Path, *flags: str) -> Iterator[Server]:
    args = ["--model-path", str(checkpoint), "--torch-threads", "1", "--no-warmup", *flags]
    with serving(args, tmp_path / f"server-{time.monotonic_ns()}.log", checkpoint=checkpoint) as server:
        yield server


def post(url: str, path: str, data: bytes, timeout: float = 90) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=data, headers=PNG, timeout=timeout)


def hold_engine(server: Server, pool: ThreadPoolExecutor) -> Future[httpx.Response]:
    """Start one slow reconstruct and return once it is computing (its batch was dispatched)."""
    before = server.metric("vqserve_batch_size_count", op="reconstruct")
    slow = pool.submit(post, server.url, "/reconstruct", png(SLOW_SIDE, SLOW_SIDE, seed=9))
    server.wait_metric("vqserve_batch_size_count", before + 1, op="reconstruct")
    return slow


def test_concurrent_requests_are_batched(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with serve(tiny_checkpoint, tmp_path, "--max-batch-size", "16") as server, ThreadPoolExecutor(8) as pool:
        slow = hold_engine(server, pool)
        replies = [pool.submit(post, server.url, "/encode", png(32, 32, seed=i)) for i in range(6)]
        assert all(r.result().status_code == 200 for r in replies)
        assert slow.result().status_code == 200
        batches = server.metric("vqserve_batch_size_count", op="encode")
        singles = server.metric("vqserve_batch_size_bucket", op="encode", le="1.0")
        assert batches - singles >= 1, "no encode batch held more than one request"
        assert server.metric("vqserve_batch_size_sum", op="encode") == 6
        assert batches < 6


def test_overload_answers_429_with_retry_after(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with serve(tiny_checkpoint, tmp_path, "--max-queue", "1") as server, ThreadPoolExecutor(4) as pool:
        slow = hold_engine(server, pool)
        queued = pool.submit(post, server.url, "/encode", png(16, 16))
        server.wait_metric("vqserve_queue_depth", 1, op="encode")
        started = time.monotonic()
        refused = post(server.url, "/encode", png(16, 16))
        assert refused.status_code == 429
        assert time.monotonic() - started < 5  # at once, not after the queue moved
        assert refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["retry-after"]) >= 1
        assert queued.result().status_code == 200
        assert slow.result().status_code == 200
        assert server.metric("vqserve_request_failures_total", reason="overloaded") == 1


def test_disconnected_client_is_not_computed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with serve(tiny_checkpoint, tmp_path) as server, ThreadPoolExecutor(2) as pool:
        slow = hold_engine(server, pool)
        body = png(16, 16)
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            head = f"POST /encode HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
            head += f"Content-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body)
            server.wait_metric("vqserve_queue_depth", 1, op="encode")
        # the socket is closed while the request waits behind the slow one
        server.wait_metric("vqserve_request_failures_total", 1, reason="client_closed_request")
        assert slow.result().status_code == 200
        follow_up = post(server.url, "/encode", png(8, 8))  # the engine moved on; the dropped one never ran
        assert follow_up.status_code == 200
        assert server.metric("vqserve_batch_size_sum", op="encode") == 1


def test_sigterm_drains_admitted_requests_and_exits_zero(tiny_checkpoint: Path, tmp_path: Path) -> None:
    flags = ("--shutdown-delay-s", "1.5", "--graceful-timeout-s", "60")
    with serve(tiny_checkpoint, tmp_path, *flags) as server, ThreadPoolExecutor(4) as pool:
        slow = hold_engine(server, pool)
        queued = [pool.submit(post, server.url, "/encode", png(16, 16, seed=i)) for i in range(2)]
        server.wait_metric("vqserve_queue_depth", 2, op="encode")
        server.process.send_signal(signal.SIGTERM)
        # readiness flips at once; new work is refused with 503 while the listener is still open
        end = time.monotonic() + 1.0
        while httpx.get(f"{server.url}/readyz", timeout=5).status_code != 503:
            assert time.monotonic() < end, "readiness did not flip"
        refused = post(server.url, "/encode", png(16, 16))
        assert (refused.status_code, refused.headers.get("retry-after")) == (503, "1")
        # every admitted request completes, then the process exits 0
        assert slow.result().status_code == 200
        assert [f.result().status_code for f in queued] == [200, 200]
        assert server.process.wait(timeout=60) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/healthz", timeout=2)


def test_sigint_also_exits_zero(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with serve(tiny_checkpoint, tmp_path) as server:
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=30) == 0
        log = server.log.read_text()
        assert '"msg":"request"' in log  # structured access lines were written
        assert '"request_id"' in log


def test_missing_checkpoint_exits_with_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model-path", str(missing), "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VQSERVE_LOG_LEVEL": "info"},
    )
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "VQSERVE_MODEL_PATH" in result.stderr
    assert "--model-path" in result.stderr
