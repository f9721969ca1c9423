"""Shared pieces of the reliability suite: a tiny real checkpoint, a real `python -m service` subprocess (for
overload, shutdown and soak, where signals, RSS, threads and file descriptors are the process's own) and a
real uvicorn in a thread of the test process (for faults, where one method of the real model is patched to
fail).

Everything listens on 127.0.0.1 only and every wait is bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from service.app import create_app
from service.settings import Settings
from tests.servers import Server, free_port, serving, wait_ready
from tests.service.conftest import make_checkpoint


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


@contextmanager
def serve_process(
    checkpoint: Path,
    tmp_path: Path,
    *flags: str,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """A real `python -m service` on 127.0.0.1 with one torch thread; SIGTERM (then kill) at the end."""
    args = ["--model-path", str(checkpoint), "--torch-threads", "1", "--no-warmup", *flags]
    with serving(args, tmp_path / f"server-{time.monotonic_ns()}.log", env=env) as server:
        yield server


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
