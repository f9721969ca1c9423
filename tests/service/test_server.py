"""A real `python -m service` on 127.0.0.1: batching across requests, SIGINT, startup errors.

A slow request (reconstructing a large image with one torch thread) holds the engine so that the requests behind it
queue up; the tests read the outcome from /metrics, as an operator would. Overload, client disconnects and the
SIGTERM drain are proven in `tests/reliability` (`test_overload.py`, `test_faults.py`, `test_shutdown.py`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

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
