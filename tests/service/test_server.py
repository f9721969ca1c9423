"""A real `python -m service` on 127.0.0.1: batching across requests, SIGINT, startup errors.

A slow request (reconstructing a large image with one torch thread) holds the engine so that the requests behind it
queue up; the tests read the outcome from /metrics, as an operator would. Overload, client disconnects and the
SIGTERM drain are proven in `tests/reliability` (`test_overload.py`, `test_faults.py`, `test_shutdown.py`).
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.__main__ import fit_open_files, uvicorn_config
from service.middleware import BoundedHttpToolsProtocol, ConnectionLimits
from service.settings import Settings
from tests.support.constants import PNG, ROOT
from tests.support.images import png
from tests.support.servers import free_port, hold_engine, serving_checkpoint

pytestmark = pytest.mark.timeout(120)


def post(url: str, path: str, data: bytes, timeout: float = 90) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=data, headers=PNG, timeout=timeout)


def test_concurrent_requests_are_batched(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with (
        serving_checkpoint(tiny_checkpoint, tmp_path, "--max-batch-size", "16") as server,
        ThreadPoolExecutor(8) as pool,
    ):
        slow = hold_engine(server, pool)
        replies = [pool.submit(post, server.url, "/encode", png(32, 32, seed=i)) for i in range(6)]
        assert all(r.result().status_code == 200 for r in replies)
        assert slow.result().status_code == 200
        batches = server.metric("vqserve_batch_size_count", op="encode")
        singles = server.metric("vqserve_batch_size_bucket", op="encode", le="1.0")
        assert batches - singles >= 1, "no encode batch held more than one request"
        assert server.metric("vqserve_batch_size_sum", op="encode") == 6
        assert batches < 6


def test_with_prefetch_on_the_next_full_batch_is_copied_ahead(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`--prefetch on` (a GPU's default): behind a slow request, full batches are taken and copied ahead while
    the batch before them computes; every request is answered, and images sent alone first get the same codes."""
    images = [png(32, 32, seed=i) for i in range(6)]
    with (
        serving_checkpoint(tiny_checkpoint, tmp_path, "--max-batch-size", "2", "--prefetch", "on") as server,
        ThreadPoolExecutor(8) as pool,
    ):
        alone = [post(server.url, "/encode", image).json()["indices"] for image in images[:2]]
        slow = hold_engine(server, pool)
        replies = [pool.submit(post, server.url, "/encode", image) for image in images]
        assert all(r.result().status_code == 200 for r in replies)
        assert slow.result().status_code == 200
        assert server.metric("vqserve_prefetched_batches_total", op="encode") >= 1
        assert server.metric("vqserve_batch_size_sum", op="encode") == 2 + 6
    together = [r.result().json()["indices"] for r in replies[:2]]
    assert together == alone  # the same image, the same codes, batched and prefetched or not


def test_sigint_also_exits_zero(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with serving_checkpoint(tiny_checkpoint, tmp_path) as server:
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


def test_uvicorn_runs_the_bounded_protocol_with_the_settings_limits() -> None:
    settings = Settings(max_connections=7, header_timeout_s=1.5, max_header_bytes=4096, max_headers=12)
    config = uvicorn_config(object(), settings)
    assert isinstance(config.http, type)
    assert issubclass(config.http, BoundedHttpToolsProtocol)
    assert config.http.limits == ConnectionLimits(
        max_connections=7, header_timeout_s=1.5, max_header_bytes=4096, max_headers=12
    )
    assert BoundedHttpToolsProtocol.limits == ConnectionLimits()  # the base class is left as it was


@pytest.mark.parametrize(
    ("soft", "hard", "raised_to", "warns"),
    [(1024, 4096, 1256, False), (256, 512, 512, True), (65536, 65536, None, False)],
)
def test_the_open_file_limit_is_raised_to_fit_max_connections(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    soft: int,
    hard: int,
    raised_to: int | None,
    warns: bool,
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, hard))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: calls.append(limits))
    with caplog.at_level(logging.WARNING, logger="vqserve"):
        fit_open_files(1000)
    assert calls == ([] if raised_to is None else [(raised_to, hard)])
    assert ("open-file limit" in caplog.text) is warns
