"""Every way a request ends without its result (504 at the deadline in the queue or during compute, 499 when
the client left while queued) leaves no asyncio error behind: no "exception was never retrieved" (every 504
logged `_GatheringFuture exception was never retrieved` before the batcher was rewritten), no task destroyed
while pending. Checked on the real tiny model under a real uvicorn in a thread of this process, so that the
garbage collector can be run and the `asyncio` logger read."""

from __future__ import annotations

import gc
import logging
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.images import png
from tests.support.servers import serve_in_thread

from .test_faults import engine_held, post

pytestmark = pytest.mark.timeout(120)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def asyncio_log() -> Iterator[list[logging.LogRecord]]:
    """What the `asyncio` logger says (never-retrieved exceptions, destroyed pending tasks) during the block."""
    handler = Records()
    log = logging.getLogger("asyncio")
    log.addHandler(handler)
    try:
        yield handler.records
    finally:
        log.removeHandler(handler)


def test_504s_and_499s_log_no_asyncio_errors(tiny_64ch_checkpoint: Path) -> None:
    with (
        asyncio_log() as records,
        serve_in_thread(tiny_64ch_checkpoint, request_timeout_s=1.0) as server,
        ThreadPoolExecutor(8) as pool,
    ):
        deadline_before = server.metric("vqserve_request_failures_total", reason="deadline_exceeded")
        closed_before = server.metric("vqserve_request_failures_total", reason="client_closed_request")
        with engine_held(server, pool) as holder:  # its own deadline passes while it computes: 504 too
            queued = [pool.submit(post, server.url, "/encode", png(16, 16, seed=i)) for i in range(3)]
            queued += [pool.submit(post, server.url, "/reconstruct", png(24, 24, seed=i)) for i in range(2)]
            with socket.create_connection(server.host_port, timeout=10) as sock:  # leaves while queued: 499
                data = png(16, 16, seed=7)
                head = "POST /encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                head += f"Content-Length: {len(data)}"
                sock.sendall(head.encode() + b"\r\n\r\n" + data)
                time.sleep(0.3)
            statuses = [reply.result(timeout=30).status_code for reply in queued]
            server.wait_metric("vqserve_request_failures_total", closed_before + 1, reason="client_closed_request")
        assert holder.result().status_code == 504
        assert post(server.url, "/encode", png(16, 16)).status_code == 200  # the engine serves on
        deadlines = server.metric("vqserve_request_failures_total", reason="deadline_exceeded") - deadline_before
        del queued, holder
        for _ in range(3):
            gc.collect()
            time.sleep(0.1)
    assert statuses == [504] * 5
    assert deadlines == 6
    complaints = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert not [m for m in complaints if "never retrieved" in m or "destroyed but it is pending" in m], complaints
    assert complaints == []
