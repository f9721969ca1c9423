"""Sampling under a real uvicorn (the app on a thread of this process, so the test can watch the live engine):
the raster steps of concurrent /generate requests ride one batch (the batch-size histogram shows it) and draw the
same samples as alone; an encode that arrives meanwhile is served between two steps; and a request whose client
leaves, or whose deadline passes, stops sampling within one step (the engine's step counter stops)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.engine import Engine
from service.ops import Op
from tests.support.constants import PNG
from tests.support.images import png
from tests.support.servers import Server, serve_in_thread
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)
CELLS = 16  # the 4x4 grid of tiny_prior_checkpoint's prior: steps per sample


@pytest.fixture(scope="module")
def server(tiny_prior_checkpoint: Path) -> Iterator[Server]:
    # a generous max_wait: on a loaded machine a request back from its step must still find the batch waiting
    with serve_in_thread(tiny_prior_checkpoint, max_wait_ms=200) as running:
        yield running


def engine_of(server: Server) -> Engine:
    assert server.app is not None
    engine: Engine = server.app.state.services.engines["default"]
    return engine


def generate(server: Server, **body: Any) -> list[list[list[int]]]:
    response = httpx.post(f"{server.url}/generate", json=body, headers={"accept": "application/json"}, timeout=120)
    assert response.status_code == 200, response.text
    return [sample["indices"] for sample in response.json()["samples"]]


def steps_metric(server: Server, suffix: str, **labels: str) -> float:
    return server.metric(f"vqserve_batch_size_{suffix}", op="prior_step", **labels)


class HeldSteps:
    """The engine's prior step, held at a gate once it has started: what a test does meanwhile meets a request
    that is mid-sampling."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()
        step = engine._prior_step

        def held(payloads: list[Any]) -> list[int]:
            self.started.set()
            assert self.gate.wait(timeout=60), "the test never opened the gate"
            return step(payloads)

        monkeypatch.setattr(engine, "_prior_step", held)


def test_concurrent_sampling_requests_batch_their_steps(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    seeds = [1, 2, 3, 4]
    alone = {seed: generate(server, seed=seed, label=0) for seed in seeds}
    before = {
        "batches": steps_metric(server, "count"),
        "items": steps_metric(server, "sum"),
        "single": steps_metric(server, "bucket", le="1.0"),
        "codes": server.metric("vqserve_sampled_codes_total", model="default"),
    }
    held = HeldSteps(engine_of(server), monkeypatch)
    with ThreadPoolExecutor(len(seeds)) as pool:
        futures = {seeds[0]: pool.submit(generate, server, seed=seeds[0], label=0)}
        assert held.started.wait(timeout=60)  # the first request's first step computes; the others queue theirs
        futures.update({seed: pool.submit(generate, server, seed=seed, label=0) for seed in seeds[1:]})
        server.wait_metric("vqserve_queue_depth", len(seeds) - 1, op="prior_step")
        held.gate.set()
        together = {seed: future.result() for seed, future in futures.items()}
    assert together == alone  # batching changes nothing in what each draws
    batches = steps_metric(server, "count") - before["batches"]
    assert steps_metric(server, "sum") - before["items"] == len(seeds) * CELLS
    assert server.metric("vqserve_sampled_codes_total", model="default") - before["codes"] == len(seeds) * CELLS
    shared = batches - (steps_metric(server, "bucket", le="1.0") - before["single"])
    assert shared >= 1  # batches of more than one step
    # the first request's step alone, then the four in step: about 16 batches for 64 steps, not in turns
    assert batches <= CELLS + 4


def test_an_encode_is_served_between_two_steps_of_a_sampling_request(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_of(server)
    ops: list[Op] = []
    compute = engine.compute

    async def recording(op: Op, payloads: list[Any], params: Any, **kwargs: Any) -> list[Any]:
        ops.append(op)
        return await compute(op, payloads, params, **kwargs)

    monkeypatch.setattr(engine, "compute", recording)
    held = HeldSteps(engine, monkeypatch)
    with ThreadPoolExecutor(2) as pool:
        sampling = pool.submit(generate, server, count=2, seed=5)
        assert held.started.wait(timeout=60)
        encode = pool.submit(httpx.post, f"{server.url}/encode", content=png(8, 8), headers=PNG, timeout=60)
        server.wait_metric("vqserve_queue_depth", 1, op="encode")  # it arrived during the first step
        held.gate.set()
        assert encode.result().status_code == 200
        assert len(sampling.result()) == 2
    steps = [i for i, op in enumerate(ops) if op == Op.PRIOR_STEP]
    assert len(steps) == CELLS
    # it runs right after the step it arrived during: a long sampling request does not hold it back
    assert ops.index(Op.ENCODE) == steps[0] + 1
    assert ops[-1] == Op.DECODE_INDICES


def raw_generate(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        "POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def test_a_client_that_leaves_stops_sampling_within_one_step(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_of(server)
    held = HeldSteps(engine, monkeypatch)
    codes = server.metric("vqserve_sampled_codes_total", model="default")
    gone = server.metric("vqserve_request_failures_total", reason="client_closed_request")
    with socket.create_connection(server.host_port, timeout=10) as sock:
        sock.sendall(raw_generate({"count": 3, "seed": 1}))
        assert held.started.wait(timeout=60)  # its first step is computing
    server.wait_metric("vqserve_request_failures_total", gone + 1, reason="client_closed_request")
    held.gate.set()
    services = server.app.state.services  # type: ignore[union-attr]
    wait_until(services.batcher.idle, "the batcher idle")
    # the step in flight stopped at its first module once its request was gone (service/cancellation.py): no code
    # of it was drawn, and no later step was computed
    assert server.metric("vqserve_sampled_codes_total", model="default") == codes


def test_a_deadline_stops_sampling_within_one_step(
    tiny_prior_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_in_thread(tiny_prior_checkpoint, request_timeout_s=1.0) as short:
        held = HeldSteps(engine_of(short), monkeypatch)
        codes = short.metric("vqserve_sampled_codes_total", model="default")
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(httpx.post, f"{short.url}/generate", json={"count": 2}, timeout=60)
            assert held.started.wait(timeout=60)
            response = reply.result()  # the deadline passes while its first step is held
        assert (response.status_code, response.json()["error"]["code"]) == (504, "deadline_exceeded")
        held.gate.set()
        services = short.app.state.services  # type: ignore[union-attr]
        wait_until(services.batcher.idle, "the batcher idle")
        # the held step stopped inside its forward pass (its request had been answered): nothing drawn after 504
        assert short.metric("vqserve_sampled_codes_total", model="default") == codes
