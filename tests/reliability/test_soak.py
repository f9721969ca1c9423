"""Soak: a real `python -m service` answers a long mix of requests (every endpoint and body form, good and
bad input, health and metrics) with the expected status every time; after warm-up its resident memory
grows by less than 5%, and its threads and file descriptors come back to where they were.

CI runs `test_soak_short` (2000 requests, about 10 s). `test_soak_long` runs 20000 and is opt-in:
`VQSERVE_SOAK=1 .venv/bin/pytest tests/reliability/test_soak.py -m slow -s` (its figures are quoted in
RELIABILITY.md)."""

from __future__ import annotations

import base64
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from tests.support.images import png
from tests.support.servers import Server, serving_checkpoint

from . import inputs

WARMUP = 150
THREAD_SLACK = 4  # the thread pools grow on demand and reap idle threads (see test_overload.THREAD_CEILING)


def request_mix() -> list[tuple[str, str, dict[str, Any], int]]:
    """(method, path, httpx keyword arguments, expected status): one of each kind the service answers."""
    ok = png(24, 32, seed=1)
    multipart, multipart_type = inputs.multipart([png(16, 16, seed=s) for s in range(3)])
    indices = np.random.default_rng(0).integers(0, 64, (8, 8)).tolist()
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype("<f4").tobytes()
    png_type, json_type = {"content-type": "image/png"}, {"content-type": "application/json"}
    return [
        ("POST", "/encode", {"content": ok, "headers": png_type}, 200),
        (
            "POST",
            "/encode",
            {"content": ok, "headers": {**png_type, "accept": "application/octet-stream"}},
            200,
        ),
        ("POST", "/encode", {"content": multipart, "headers": {"content-type": multipart_type}}, 200),
        ("POST", "/encode", {"json": {"images": [base64.b64encode(ok).decode()] * 2}}, 200),
        ("POST", "/encode", {"content": ok, "headers": png_type, "params": {"return_latents": "true"}}, 200),
        ("POST", "/decode", {"content": orjson.dumps({"indices": indices}), "headers": json_type}, 200),
        (
            "POST",
            "/decode",
            {"json": {"indices": [indices, indices]}, "headers": {"accept": "application/json"}},
            200,
        ),
        (
            "POST",
            "/decode",
            {
                "content": latents,
                "headers": {"content-type": "tensor/binary"},
                "params": {"shape": [1, 4, 8, 8], "dtype": "float32"},
            },
            200,
        ),
        ("POST", "/reconstruct", {"content": ok, "headers": png_type, "params": {"format": "jpeg"}}, 200),
        ("POST", "/encode", {"content": inputs.truncated_png(), "headers": png_type}, 400),
        ("POST", "/decode", {"json": {"indices": [[0, 64]]}}, 422),
        ("POST", "/encode", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415),
        ("POST", "/encode", {"content": ok, "headers": png_type, "params": {"model": "nope"}}, 404),
        ("GET", "/healthz", {}, 200),
        ("GET", "/readyz", {}, 200),
        ("GET", "/models", {}, 200),
        ("GET", "/metrics", {}, 200),
    ]


def run_mix(server: Server, count: int, workers: int = 8) -> Counter[tuple[str, int]]:
    """`count` requests drawn round-robin from the mix by `workers` threads; each status must be the
    expected one."""
    mix = request_mix()
    outcomes: Counter[tuple[str, int]] = Counter()
    with httpx.Client(base_url=server.url, timeout=60) as client:

        def one(i: int) -> tuple[str, int]:
            method, path, kwargs, expected = mix[i % len(mix)]
            reply = client.request(method, path, **kwargs)
            assert reply.status_code == expected, (method, path, reply.status_code, reply.text[:300])
            return path, reply.status_code

        with ThreadPoolExecutor(workers) as pool:
            outcomes.update(pool.map(one, range(count)))
    return outcomes


def soak(checkpoint: Path, tmp_path: Path, count: int) -> None:
    with serving_checkpoint(checkpoint, tmp_path, "--max-queue", "64") as server:
        run_mix(server, WARMUP)
        time.sleep(0.5)
        rss, threads, fds = server.rss_bytes(), server.threads(), server.fds()
        started = time.monotonic()
        outcomes = run_mix(server, count)
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # closed client sockets leave the server's fd table
        rss_after, threads_after, fds_after = server.rss_bytes(), server.threads(), server.fds()
        assert server.metric("vqserve_queue_depth") == 0
        assert server.metric("vqserve_inflight_requests") == 0
        five_xx = sum(server.metric("vqserve_requests_total", status=str(s)) for s in range(500, 600))
    assert sum(outcomes.values()) == count
    assert five_xx == 0
    assert rss_after < rss * 1.05, (rss, rss_after)
    assert threads_after <= threads + THREAD_SLACK
    assert fds_after <= fds + 2
    print(  # noqa: T201 - figures for RELIABILITY.md (pytest -s)
        f"soak: {count} requests in {elapsed:.1f} s ({count / elapsed:.0f}/s), statuses "
        f"{dict(Counter(status for _, status in outcomes.elements()))}; RSS {rss / 2**20:.1f} -> "
        f"{rss_after / 2**20:.1f} MiB ({(rss_after / rss - 1) * 100:+.1f}%); "
        f"threads {threads} -> {threads_after}; "
        f"fds {fds} -> {fds_after}"
    )


@pytest.mark.timeout(120)
def test_soak_short(tiny_64ch_checkpoint: Path, tmp_path: Path) -> None:
    soak(tiny_64ch_checkpoint, tmp_path, int(os.environ.get("VQSERVE_SOAK_REQUESTS", "2000")))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.environ.get("VQSERVE_SOAK") != "1", reason="opt-in: VQSERVE_SOAK=1 (20000 requests)")
def test_soak_long(tiny_64ch_checkpoint: Path, tmp_path: Path) -> None:
    soak(tiny_64ch_checkpoint, tmp_path, 20_000)
