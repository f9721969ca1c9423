"""Overload against a real `python -m service`: a small queue and an offered load several times what the
engine can compute. Every answer is a 200 or a 429 with Retry-After (no 5xx, no dropped connection),
accepted requests finish well within their deadline, resident memory, threads and file descriptors stay
flat, and the server is ready the moment the load stops."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.images import png
from tests.support.servers import Server, serving_checkpoint

pytestmark = pytest.mark.timeout(180)
CLIENTS = 48
LOAD_S = 6.0
TIMEOUT_S = 10.0
MAX_QUEUE = 4
# main + engine + 4 codec threads + anyio's pool for sync dependencies (40) + asyncio's default pool (6) +
# slack:
# the pools grow on demand and reap idle threads, so the count wanders a little but never past this
THREAD_CEILING = 56


Reply = tuple[int, float, httpx.Headers]  # status, latency (s), headers


async def offer_load(server: Server, bodies: list[bytes], seconds: float) -> list[Reply]:
    """CLIENTS closed-loop clients posting /encode for `seconds`: (status, latency, headers) per reply."""
    replies: list[Reply] = []
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:

        async def one_client(k: int) -> None:
            n = 0
            while time.monotonic() < end:
                started = time.monotonic()
                body = bodies[(k + n) % len(bodies)]
                reply = await client.post("/encode", content=body, headers={"content-type": "image/png"})
                replies.append((reply.status_code, time.monotonic() - started, reply.headers))
                if reply.status_code == 429:
                    assert reply.json()["error"]["code"] == "overloaded"
                n += 1

        await asyncio.gather(*(one_client(k) for k in range(CLIENTS)))
    return replies


def test_overload_sheds_with_429_and_stays_flat(tiny_64ch_checkpoint: Path, tmp_path: Path) -> None:
    # one 128x128 image per batch on one torch thread: the engine serves a few dozen a second at most
    flags = ("--max-queue", str(MAX_QUEUE), "--max-batch-size", "1", "--request-timeout-s", str(TIMEOUT_S))
    bodies = [png(128, 128, seed=i) for i in range(8)]
    with serving_checkpoint(tiny_64ch_checkpoint, tmp_path, *flags) as server:
        # warm-up as long as the measured run: the thread pools fill up and every worker thread's allocator
        # arena
        # is touched (a shorter warm-up leaves a few % of RSS growth that is start-up, not a leak)
        asyncio.run(offer_load(server, bodies, LOAD_S))
        time.sleep(0.5)
        rss, threads, fds = server.rss_bytes(), server.threads(), server.fds()
        overloaded = server.metric("vqserve_request_failures_total", reason="overloaded")

        started = time.monotonic()
        replies = asyncio.run(offer_load(server, bodies, LOAD_S))
        elapsed = time.monotonic() - started
        assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200  # ready the moment load stops
        time.sleep(0.5)  # closed client sockets leave the server's fd table
        rss_after, threads_after, fds_after = server.rss_bytes(), server.threads(), server.fds()
        assert server.metric("vqserve_queue_depth") == 0
        assert server.metric("vqserve_inflight_requests") == 0
        shed_counted = server.metric("vqserve_request_failures_total", reason="overloaded") - overloaded

    statuses = Counter(status for status, _, _ in replies)
    assert set(statuses) <= {200, 429}, statuses
    served, shed = statuses[200], statuses[429]
    # several times capacity: what was offered is at least 3x what could be served
    assert served > 0
    assert shed >= 2 * served, statuses
    assert shed_counted == shed  # each 429 is counted once, by reason, for the operator
    for status, latency, headers in replies:
        assert latency < TIMEOUT_S  # nothing waited out its deadline (that would have been a 504)
        if status == 429:
            assert int(headers["retry-after"]) >= 1
    # refused at once, not after waiting for the queue (client-side latency on a shared 2-core machine)
    shed_latency = sorted(latency for status, latency, _ in replies if status == 429)
    assert shed_latency[len(shed_latency) // 2] < 0.5
    # flat: within 10 %. Under a 429 storm ~50 threads (anyio's pool for the sync dependencies) each touch
    # their own malloc arena, and RSS settles by a few % over the first minute (measured: +3.7 % over 30 s,
    # then flat); the < 5 % leak bound over thousands of requests is test_soak's
    assert rss_after < rss * 1.10, (rss, rss_after)
    assert threads_after <= min(threads + 4, THREAD_CEILING)
    assert fds_after <= fds + 2
    print(  # noqa: T201 - the figures RELIABILITY.md quotes (pytest -s)
        f"overload: {len(replies)} requests in {elapsed:.1f} s ({len(replies) / elapsed:.0f}/s offered), "
        f"{served} served ({served / elapsed:.0f}/s), {shed} shed with 429; "
        f"max served latency {max(lat for s, lat, _ in replies if s == 200):.2f} s, median 429 "
        f"{shed_latency[len(shed_latency) // 2] * 1000:.0f} ms; "
        f"RSS {rss / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB; threads {threads} -> {threads_after}; "
        f"fds {fds} -> {fds_after}"
    )
