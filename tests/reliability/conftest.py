"""Shared pieces of the reliability suite: a tiny real checkpoint, a real `python -m service` subprocess (for
overload, shutdown and soak, where signals, RSS, threads and file descriptors are the process's own) and a
real uvicorn in a thread of the test process (for faults, where one method of the real model is patched to
fail).

Everything listens on 127.0.0.1 only and every wait is bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.settings import Settings
from tests.servers import ServesMetrics, free_port
from tests.service.conftest import make_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service tests' tiny model with 64 channels per block (2 per norm group), so that a 1x1 image
    (one latent cell) is computable (`test_hostile_input` checks the refusal on a model where it is not),
    and without mid-block attention, whose cost grows with the square of the latent cells: a 1x100000
    image would take 10 s on one CPU thread (the pixel limit bounds that cost in production)."""
    return make_checkpoint(
        tmp_path_factory.mktemp("tiny-reliability"),
        block_out_channels=(64, 64),
        mid_block_add_attention=False,
    )


@dataclass
class Server(ServesMetrics):
    """A served app reachable at `url`: `process` for a subprocess, `app` for one in this process."""

    url: str
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = None
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


def wait_ready(server: Server, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while True:
        if server.process is not None and server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > end:
            raise AssertionError(f"server not ready in {timeout} s:\n{server.log_text()}")
        time.sleep(0.1)


@contextmanager
def serve_process(
    checkpoint: Path,
    tmp_path: Path,
    *flags: str,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """A real `python -m service` on 127.0.0.1 with one torch thread; SIGTERM (then kill) at the end."""
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--model-path", str(checkpoint), "--torch-threads", "1", "--no-warmup", *flags]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    server = Server(f"http://127.0.0.1:{port}", log=log, process=process)
    try:
        wait_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def serve_in_thread(checkpoint: Path, **overrides: object) -> Iterator[Server]:
    """The real app under a real uvicorn on a thread of this process, so a test can reach the live engine."""
    settings = Settings(**{"model_path": checkpoint, "warmup": False, "torch_threads": 1, **overrides})
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    handle = Server(f"http://127.0.0.1:{port}", app=app)
    try:
        wait_ready(handle)
        yield handle
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the in-process server did not stop"
