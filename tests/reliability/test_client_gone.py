"""Clients that go away: a client that hangs up mid-upload is a 499 (`client_closed_request`), counted as a
failure of that reason and logged in one access line, never a 500 with a `ClientDisconnect` traceback; and a
soak of disconnect churn (reconstructs whose clients close 0.2 s after sending) leaves the resident memory
where completed requests of the same size had it, once the server is idle again: a finished request's
request/ticket pair is freed at once, with its body, and the memory the allocator kept is handed back when idle.

A real `python -m service` on 127.0.0.1 with the tiny model; raw sockets, so the client can leave at any byte
(the reference-cycle and idle-release checks run in this process)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from starlette.requests import ClientDisconnect, Request

from service.app import IDLE_BEFORE_TRIM_S, create_app, release_memory_when_idle
from service.batching import Ticket
from service.settings import Settings
from tests.support.constants import PNG
from tests.support.images import png
from tests.support.servers import Server, parse_metric
from tests.support.servers import serving_checkpoint as serve_process
from tests.support.waiting import wait_until

from . import inputs

pytestmark = pytest.mark.timeout(120)


def raw_request(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode("latin-1") + body


def bodies() -> list[tuple[str, str, dict[str, str], bytes]]:
    """(name, path, headers, full body) of every way a body reaches the service."""
    image = png(64, 64, seed=3)
    multipart, multipart_type = inputs.multipart([image, image])
    indices = np.random.default_rng(0).integers(0, 64, (16, 16)).tolist()
    oip = {"inputs": [{"name": "IMAGE", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [0] * 192}]}
    return [
        ("png", "/reconstruct", {"content-type": "image/png"}, image),
        ("multipart", "/encode", {"content-type": multipart_type}, multipart),
        ("json", "/decode", {"content-type": "application/json"}, orjson.dumps({"indices": indices})),
        ("oip", "/v2/models/default/infer", {"content-type": "application/json"}, orjson.dumps(oip)),
        ("remote", "/remote/encode", {"content-type": "image/png"}, image),
    ]


def log_lines_with(server: Server, text: str) -> list[dict[str, object]]:
    lines = [line for line in server.log_text().splitlines() if text in line]
    return [orjson.loads(line) for line in lines]


@pytest.fixture(scope="module")
def server(tiny_64ch_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # batches of at most 4: the warm-up of the soak reaches the largest batch the churn can form
    with serve_process(
        tiny_64ch_checkpoint, tmp_path_factory.mktemp("client-gone"), "--max-batch-size", "4"
    ) as running:
        yield running


@pytest.mark.parametrize(("name", "path", "headers", "body"), bodies(), ids=[b[0] for b in bodies()])
@pytest.mark.parametrize("sent", ["headers only", "half the body"])
def test_a_client_that_leaves_mid_upload_is_a_499_not_a_500(
    server: Server, name: str, path: str, headers: dict[str, str], body: bytes, sent: str
) -> None:
    request_id = f"gone-{name}-{sent.replace(' ', '-')}-{uuid.uuid4().hex[:8]}"
    before = {
        "499": server.metric("vqserve_requests_total", status="499"),
        "500": server.metric("vqserve_requests_total", status="500"),
        "client_closed": server.metric("vqserve_request_failures_total", reason="client_closed_request"),
        "internal": server.metric("vqserve_request_failures_total", reason="internal_error"),
    }
    full = raw_request("POST", path, {**headers, "content-length": str(len(body)), "x-request-id": request_id}, body)
    cut = len(full) - len(body) + (len(body) // 2 if sent == "half the body" else 0)
    with socket.create_connection(server.host_port, timeout=10) as sock:
        sock.sendall(full[:cut])
        time.sleep(0.3)  # the route is reading the body when the client leaves
    wait_until(lambda: log_lines_with(server, request_id), "the access log line", 15)
    assert server.metric("vqserve_requests_total", status="499") == before["499"] + 1
    assert server.metric("vqserve_requests_total", status="500") == before["500"]
    assert (
        server.metric("vqserve_request_failures_total", reason="client_closed_request") == before["client_closed"] + 1
    )
    assert server.metric("vqserve_request_failures_total", reason="internal_error") == before["internal"]
    (line,) = log_lines_with(server, request_id)  # one line: the access line, with the status
    assert line["status"] == 499
    assert line["level"] == "info"
    log = server.log_text()
    assert "ClientDisconnect" not in log
    assert "Traceback" not in log


def test_a_client_that_leaves_while_its_result_is_computed_is_a_499(server: Server) -> None:
    request_id = f"gone-waiting-{uuid.uuid4().hex[:8]}"
    body = png(256, 256, seed=4)
    request = raw_request(
        "POST",
        "/reconstruct",
        {"content-type": "image/png", "content-length": str(len(body)), "x-request-id": request_id},
        body,
    )
    with socket.create_connection(server.host_port, timeout=10) as sock:
        sock.sendall(request)
        time.sleep(0.1)
    wait_until(lambda: log_lines_with(server, request_id), "the access log line", 15)
    (line,) = log_lines_with(server, request_id)
    assert line["status"] == 499
    assert "Traceback" not in server.log_text()


def test_a_finished_request_leaves_no_reference_cycle(tiny_64ch_checkpoint: Path) -> None:
    """Its request and ticket (which refer to each other) are freed when it ends, with the body the request
    cached, not when the cyclic garbage collector next runs: a 512x512 PNG is 0.8 MB a request."""
    settings = Settings(model_path=tiny_64ch_checkpoint, warmup=False, torch_threads=1)
    with TestClient(create_app(settings)) as client:
        gc.collect()
        gc.disable()
        try:
            for seed in range(5):
                assert client.post("/encode", content=png(32, 32, seed=seed), headers=PNG).status_code == 200
            assert client.post("/encode", content=b"not a png", headers=PNG).status_code == 400
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = Counter(type(o).__name__ for o in gc.garbage if isinstance(o, (Ticket, Request)))
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert left == Counter()


def test_a_client_disconnect_raised_past_the_body_guard_is_a_499_too(tiny_64ch_checkpoint: Path) -> None:
    """starlette's ClientDisconnect, wherever it comes from, goes through the errors table: 499, not 500."""

    async def reads_past_the_guard() -> None:
        raise ClientDisconnect()

    app = create_app(Settings(model_path=tiny_64ch_checkpoint, warmup=False, torch_threads=1))
    app.add_api_route("/test-disconnect", reads_past_the_guard, methods=["POST"])
    before = parse_metric(generate_latest().decode(), "vqserve_request_failures_total", reason="client_closed_request")
    with TestClient(app, raise_server_exceptions=True) as client:
        reply = client.post("/test-disconnect")
    assert reply.status_code == 499
    assert reply.json()["error"]["code"] == "client_closed_request"
    after = parse_metric(generate_latest().decode(), "vqserve_request_failures_total", reason="client_closed_request")
    assert after == before + 1


def test_memory_is_released_once_the_batcher_is_idle_and_never_while_busy() -> None:
    """`release_memory_when_idle` trims once after a burst of work, only when nothing computes or is queued."""

    class Batcher:
        busy = True

        def idle(self) -> bool:
            return not self.busy

    async def scenario() -> list[float]:
        batcher, work_ended, trims = Batcher(), asyncio.Event(), []
        services = type("Services", (), {"batcher": batcher})()
        task = asyncio.create_task(
            release_memory_when_idle(services, work_ended, lambda: trims.append(time.monotonic()))
        )
        await asyncio.sleep(2 * IDLE_BEFORE_TRIM_S)
        assert trims == []  # no work yet
        for _ in range(4):  # a burst: requests keep ending
            work_ended.set()
            await asyncio.sleep(IDLE_BEFORE_TRIM_S / 4)
        await asyncio.sleep(3 * IDLE_BEFORE_TRIM_S)
        assert trims == []  # the batcher is still computing
        batcher.busy = False
        idle_since = time.monotonic()
        await asyncio.sleep(3 * IDLE_BEFORE_TRIM_S)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return [t - idle_since for t in trims]

    (after,) = asyncio.run(scenario())
    assert after <= 2 * IDLE_BEFORE_TRIM_S


# the soak: 192x192 reconstructs of the tiny model (64 channels at full size: 9 MiB a feature map), so that it
# stays short on one torch thread; the churn is what the issue measured with 512x512 on the default model
SOAK_SIDE = 192
CHURN_S = 6.0
CHURN_CLIENTS = 8
RSS_SLACK = 64 * 2**20


def wait_idle(server: Server, timeout_s: float = 60.0) -> None:
    """Nothing queued or in flight, no batch computing (a batch that started for clients who then left runs to
    its end), and then long enough for the service's idle memory release (0.5 s after the last work)."""
    end = time.monotonic() + timeout_s
    while True:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        busy = (
            parse_metric(text, "vqserve_queue_depth"),
            parse_metric(text, "vqserve_inflight_requests"),
            parse_metric(text, "vqserve_batch_size_count")
            - parse_metric(text, "vqserve_compute_duration_seconds_count"),
        )
        if not any(busy):
            break
        assert time.monotonic() < end, f"the server did not go idle: {busy}"
        time.sleep(0.1)
    time.sleep(1.5)


@pytest.mark.timeout(60)
def test_disconnect_churn_soak_leaves_no_memory_behind(server: Server) -> None:
    image = png(SOAK_SIDE, SOAK_SIDE, seed=5)
    request = raw_request(
        "POST", "/reconstruct", {"content-type": "image/png", "content-length": str(len(image))}, image
    )
    started = time.monotonic()
    # the working set of completed requests of this size, in batches as large as the churn's (the engine keeps
    # scratch memory for the largest batch it has computed: that is not what the soak looks for)
    with ThreadPoolExecutor(CHURN_CLIENTS) as pool:
        warm = [
            pool.submit(httpx.post, f"{server.url}/reconstruct", content=image, headers=PNG, timeout=60)
            for _ in range(CHURN_CLIENTS)
        ]
        assert all(reply.result().status_code == 200 for reply in warm)
    wait_idle(server)
    rss_before = server.rss_bytes()
    computed_before = server.metric("vqserve_batch_size_sum", op="reconstruct")
    gone_before = server.metric("vqserve_requests_total", endpoint="/reconstruct", status="499")
    stop_at = time.monotonic() + CHURN_S

    def churn() -> int:
        sent = 0
        while time.monotonic() < stop_at:
            with socket.create_connection(server.host_port, timeout=10) as sock:
                sock.sendall(request)
                time.sleep(0.2)
            sent += 1
        return sent

    with ThreadPoolExecutor(CHURN_CLIENTS) as pool:
        sent = sum(pool.map(lambda _: churn(), range(CHURN_CLIENTS)))
    wait_idle(server)
    rss_after = server.rss_bytes()
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    computed = parse_metric(text, "vqserve_batch_size_sum", op="reconstruct") - computed_before
    gone = parse_metric(text, "vqserve_requests_total", endpoint="/reconstruct", status="499") - gone_before
    five_xx = sum(parse_metric(text, "vqserve_requests_total", status=str(s)) for s in range(500, 600))
    print(  # noqa: T201 - figures for RELIABILITY.md (pytest -s)
        f"disconnect churn: {sent} requests in {CHURN_S:.0f} s, {gone:.0f} answered 499, {computed:.0f} images "
        f"computed; RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB once idle "
        f"({(rss_after / rss_before - 1) * 100:+.1f}%); {time.monotonic() - started:.0f} s"
    )
    assert five_xx == 0
    assert gone == sent
    assert computed > 4, "the churn never reached the engine: nothing was measured"
    # before the fix this churn left 130-190 MiB behind (at 330-450 MiB); after it, 0 to 41 MiB
    assert rss_after < rss_before + RSS_SLACK, (rss_before, rss_after)
