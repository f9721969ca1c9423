"""Real `python -m service` processes on 127.0.0.1 for the tests whose behaviour crosses a socket.

One place starts a server on a free port, waits for /readyz (failing with the server's log if it exits or never
turns ready), reads its metrics, holds its engine busy, and stops it with SIGTERM as an orchestrator would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.images import png

ROOT = Path(__file__).resolve().parents[1]
SLOW_SIDE = 320  # a reconstruct of this size keeps a tiny test model busy for seconds on one torch thread


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`, in Prometheus text."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class ServesMetrics:
    """`metric` and `wait_metric` for anything with a `url` and a `log_text()` to show when a wait fails."""

    url: str

    def log_text(self) -> str:
        raise NotImplementedError

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels`."""
        return parse_metric(httpx.get(f"{self.url}/metrics", timeout=10).text, name, **labels)

    def wait_metric(self, name: str, at_least: float, timeout: float = 30, **labels: str) -> None:
        end = time.monotonic() + timeout
        while self.metric(name, **labels) < at_least:
            if time.monotonic() > end:
                raise AssertionError(f"{name}{labels} stayed below {at_least}; log:\n{self.log_text()[-3000:]}")
            time.sleep(0.02)


def hold_engine(
    server: ServesMetrics, pool: ThreadPoolExecutor, side: int = SLOW_SIDE, headers: dict[str, str] | None = None
) -> Future[httpx.Response]:
    """Start one slow reconstruct on `pool` and return once it is computing (its batch went to the engine).

    What is sent next queues behind it, so that batching, overload and shutdown meet a known queue."""
    before = server.metric("vqserve_batch_size_count", op="reconstruct")
    slow = pool.submit(
        httpx.post,
        f"{server.url}/reconstruct",
        content=png(side, side, seed=9),
        headers={"content-type": "image/png", **(headers or {})},
        timeout=90,
    )
    server.wait_metric("vqserve_batch_size_count", before + 1, op="reconstruct")
    return slow


@dataclass
class Server(ServesMetrics):
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    checkpoint: Path | None = None

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def start_server(
    args: Sequence[str],
    log: Path,
    checkpoint: Path | None = None,
    timeout_s: float = 90.0,
    env: dict[str, str] | None = None,
) -> Server:
    """`python -m service --host 127.0.0.1 --port <free> *args`; returns once /readyz answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), *args]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=sink, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log, checkpoint)
    end = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > end:
            stop_server(server)
            raise AssertionError(f"server not ready in {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def stop_server(server: Server, timeout_s: float = 30.0) -> None:
    """SIGTERM (graceful drain), then SIGKILL if it does not exit in time."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@contextmanager
def serving(args: Sequence[str], log: Path, **kwargs: object) -> Iterator[Server]:
    server = start_server(args, log, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        stop_server(server)
