"""The one way a test serves the app: a real `python -m service` subprocess, a real uvicorn on a thread of the
test process, or the in-process `TestClient` (no socket).

- `start_server` / `serving`: `python -m service` on 127.0.0.1 and a free port, for tests whose behaviour crosses a
  socket or belongs to the process (signals, RSS, threads, file descriptors). `launch` underneath starts any
  command that serves (the installed entry point in `tests/deploy`); `start_checkpoint_server` and
  `serving_checkpoint` serve one checkpoint with one torch thread. Each waits for /readyz (failing with the
  server's log if it exits or never turns ready) and stops with SIGTERM as an orchestrator would.
- `serve_in_thread`: the real app under a real uvicorn on a thread of this process, for tests that reach into the
  live engine (patching a method of the model) while requests cross a real socket.
- `app_client`: the real app and its lifespan through `TestClient`, for tests of the HTTP contract.

And for all of them: metrics read-outs (`parse_metric`, `Server.metric`, `wait_metric`) and `hold_engine`, which
keeps the engine busy so that what is sent next meets a known queue. The app, uvicorn and TestClient are imported
where they are used, so that importing this module (as the deploy checks and `docs/screenshot.py` do) stays cheap.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.constants import ROOT
from tests.support.images import png

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from service.settings import Settings

SLOW_SIDE = 320  # a reconstruct of this size keeps a tiny test model busy for seconds on one torch thread
# (`hold_engine` waits for one `reconstruct` batch: a side over VQSERVE_TILE_SIZE would run as tiles instead)


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


def launch(
    command: Sequence[str],
    log: Path,
    url: str,
    *,
    cwd: Path = ROOT,
    env: dict[str, str],
    checkpoint: Path | None = None,
    timeout_s: float = 90.0,
) -> Server:
    """Run `command` (a server that will listen at `url`) in `cwd` with exactly `env`, its stdout and stderr to
    `log` (a file, not a pipe: an unread pipe would block a chatty server); returns once /readyz answers 200."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    server = Server(url, process, log, checkpoint)
    try:
        wait_ready(server, timeout_s)
    except AssertionError:
        stop_server(server)
        raise
    return server


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
    return launch(command, log, f"http://127.0.0.1:{port}", env=environment, checkpoint=checkpoint, timeout_s=timeout_s)


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
def stopping(server: Server) -> Iterator[Server]:
    """Yield a started subprocess `server`; `stop_server` it however the with block ends."""
    try:
        yield server
    finally:
        stop_server(server)


def serving(args: Sequence[str], log: Path, **kwargs: object) -> AbstractContextManager[Server]:
    """`start_server(args, log, **kwargs)`, stopped at the end of the with block."""
    return stopping(start_server(args, log, **kwargs))  # type: ignore[arg-type]


def start_checkpoint_server(checkpoint: Path, log: Path, *flags: str, env: dict[str, str] | None = None) -> Server:
    """`python -m service --model-path <checkpoint> --torch-threads 1 *flags`, ready; `server.checkpoint` is set."""
    args = ["--model-path", str(checkpoint), "--torch-threads", "1", *flags]
    return start_server(args, log, checkpoint=checkpoint, env=env)


def serving_checkpoint(
    checkpoint: Path, log_dir: Path, *flags: str, env: dict[str, str] | None = None
) -> AbstractContextManager[Server]:
    """`start_checkpoint_server` without warmup, logging to a new file in `log_dir`; SIGTERM (then kill) at the end."""
    log = log_dir / f"server-{time.monotonic_ns()}.log"
    return stopping(start_checkpoint_server(checkpoint, log, "--no-warmup", *flags, env=env))


def app_settings(checkpoint: Path | None, **overrides: object) -> Settings:
    """The app's settings serving `checkpoint` as `default`, without warmup, then `overrides`."""
    from service.settings import Settings

    return Settings(**{"model_path": checkpoint, "warmup": False, **overrides})


@contextmanager
def app_client(checkpoint: Path | None, **overrides: object) -> Iterator[TestClient]:
    """The real app (`app_settings`) through `TestClient`, its lifespan run on entry and on exit."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(app_settings(checkpoint, **overrides))) as client:
        yield client


@contextmanager
def serve_in_thread(checkpoint: Path, **overrides: object) -> Iterator[Server]:
    """The real app (`app_settings`, one torch thread unless `overrides` say otherwise) under a real uvicorn on a
    thread of this process, so a test can reach the live engine through `server.app`."""
    import uvicorn

    from service.app import create_app

    app = create_app(app_settings(checkpoint, **{"torch_threads": 1, **overrides}))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    handle = Server(f"http://127.0.0.1:{port}", app=app, checkpoint=checkpoint)
    try:
        wait_ready(handle)
        yield handle
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the in-process server did not stop"
