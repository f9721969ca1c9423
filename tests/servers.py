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
from typing import TYPE_CHECKING

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.images import png

if TYPE_CHECKING:
    from fastapi import FastAPI

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
    """A served app reachable at `url`: a `python -m service` subprocess (`process`, `log`) or an app served on a
    thread of the test process (`app`), for tests that reach into the live engine."""

    url: str
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    checkpoint: Path | None = None
    app: FastAPI | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)

    def log_text(self) -> str:
        return self.log.read_text() if self.log is not None and self.log.exists() else ""

    # what the OS says about the server process
    def _proc(self) -> Path:
        assert self.process is not None, "process figures need a subprocess server"
        return Path(f"/proc/{self.process.pid}")

    def rss_bytes(self) -> int:
        for line in (self._proc() / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def threads(self) -> int:
        return len(list((self._proc() / "task").iterdir()))

    def fds(self) -> int:
        return len(list((self._proc() / "fd").iterdir()))


def wait_ready(server: Server, timeout_s: float = 90.0) -> None:
    """Return once /readyz answers 200; fail with the server's log if its process exits or time runs out."""
    end = time.monotonic() + timeout_s
    while True:
        if server.process is not None and server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log_text()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > end:
            raise AssertionError(f"server not ready in {timeout_s:.0f} s:\n{server.log_text()[-4000:]}")
        time.sleep(0.1)


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
    try:
        wait_ready(server, timeout_s)
    except AssertionError:
        stop_server(server)
        raise
    return server


def stop_server(server: Server, timeout_s: float = 30.0) -> None:
    """SIGTERM (graceful drain), then SIGKILL if it does not exit in time."""
    assert server.process is not None, "only a subprocess server is stopped by signal"
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
