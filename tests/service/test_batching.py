"""The batcher's policy with a fake engine whose timing the tests control (a gate each batch waits on)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import torch

from service.batching import Batcher, BatchPolicy, Item, Ticket
from service.errors import ServiceError

pytestmark = pytest.mark.timeout(20)


class FakeEngine:
    """Records batches (payload ids); waits on `gate` while set; fails batches holding id `poison`."""

    name = "fake"

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.poison: int | None = None

    async def compute(self, op: str, payloads: list[torch.Tensor], params: tuple[Any, ...]) -> list[Any]:
        ids = [int(p.flatten()[0]) for p in payloads]
        self.batches.append(ids)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.poison in ids:
            raise RuntimeError("poisoned batch")
        return [i * 10 for i in ids]


def item(ident: int, side: int = 2, op: str = "encode") -> Item:
    return Item(op, torch.full((1, side, side), float(ident)), pixels=side * side)


def run(test: Callable[[Batcher, FakeEngine], Awaitable[None]], **policy: Any) -> None:
    async def main() -> None:
        engine = FakeEngine()
        timeout = policy.pop("timeout", 10.0)
        batcher = Batcher({"fake": engine}, BatchPolicy(**{"max_wait_s": 0.0, **policy}), timeout)
        batcher.start()
        try:
            await test(batcher, engine)
        finally:
            await batcher.stop()

    asyncio.run(main())


def submit(batcher: Batcher, *items: Item) -> tuple[Ticket, list[asyncio.Future[Any]]]:
    ticket = batcher.admit("fake")
    return ticket, batcher.submit(ticket, list(items))


async def busy(batcher: Batcher, engine: FakeEngine, ident: int = 0) -> asyncio.Future[Any]:
    """Occupy the engine with one batch held at the gate."""
    engine.gate = asyncio.Event()
    _, (future,) = submit(batcher, item(ident))
    await asyncio.wait_for(engine.started.wait(), 2)
    return future


def test_idle_engine_computes_at_once_without_waiting() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        started = time.monotonic()
        _, (future,) = submit(batcher, item(7))
        assert await future == 70
        assert time.monotonic() - started < 0.5  # max_wait is 2 s but nothing else was coming

    run(body, max_wait_s=2.0)


def test_items_arriving_while_busy_ride_one_batch() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        futures = [submit(batcher, item(i))[1][0] for i in (1, 2, 3)]
        assert engine.gate is not None
        engine.gate.set()
        assert await first == 0
        assert await asyncio.gather(*futures) == [10, 20, 30]
        assert engine.batches == [[0], [1, 2, 3]]

    run(body)


def test_max_batch_size_and_pixels_split_batches() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        futures = [submit(batcher, item(i))[1][0] for i in range(1, 6)]
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.gather(first, *futures)
        assert engine.batches == [[0], [1, 2], [3, 4], [5]]

    run(body, max_batch_size=2)
    run(body, max_batch_size=8, max_batch_pixels=8)  # 4 pixels per item: two fit


def test_one_queue_per_shape() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        futures = [submit(batcher, item(i, side=2 + i % 2))[1][0] for i in range(1, 5)]
        futures.append(submit(batcher, item(9, op="reconstruct"))[1][0])
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.gather(first, *futures)
        assert sorted(engine.batches[1:]) == [[1, 3], [2, 4], [9]]

    run(body)


def test_waits_for_admitted_requests_still_decoding_up_to_max_wait() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        late = batcher.admit("fake")  # admitted, inputs still being decoded
        _, (early,) = submit(batcher, item(1))
        await asyncio.sleep(0.05)
        (later,) = batcher.submit(late, [item(2)])
        assert await asyncio.gather(early, later) == [10, 20]
        assert engine.batches == [[1, 2]]
        # an announced request that never comes delays the batch by at most max_wait
        batcher.admit("fake")
        started = time.monotonic()
        _, (alone,) = submit(batcher, item(3))
        assert await alone == 30
        assert 0.25 <= time.monotonic() - started < 2.0

    run(body, max_wait_s=0.3)


def test_full_queue_answers_429_at_once_then_recovers() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        _, (second,) = submit(batcher, item(1))
        with pytest.raises(ServiceError) as info:
            batcher.admit("fake")
        assert info.value.status == 429
        assert info.value.headers["Retry-After"] == "1"
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.gather(first, second)
        _, (third,) = submit(batcher, item(2))
        assert await third == 20

    run(body, max_queue=1)  # the computing request no longer counts, the queued one does


def test_expired_items_fail_504_and_are_never_computed() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        _, (late,) = submit(batcher, item(5))
        await asyncio.sleep(0.3)  # past the 0.2 s deadline while queued
        assert engine.gate is not None
        engine.gate.set()
        await first
        with pytest.raises(ServiceError) as info:
            await late
        assert info.value.status == 504
        assert [5] not in engine.batches

    run(body, timeout=0.2)


def test_abandoned_requests_are_dropped_before_compute() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        gone, _ = submit(batcher, item(4), item(5))
        _, (kept,) = submit(batcher, item(6))
        gone.abandon()  # the client disconnected
        assert engine.gate is not None
        engine.gate.set()
        await first
        assert await kept == 60
        assert engine.batches == [[0], [6]]
        assert batcher.pending == 0

    run(body)


def test_failing_batch_fails_only_its_items_and_the_worker_goes_on() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        engine.poison = 1
        first = await busy(batcher, engine)
        _, (bad,) = submit(batcher, item(1))
        _, (other_shape,) = submit(batcher, item(2, side=3))
        assert engine.gate is not None
        engine.gate.set()
        await first
        with pytest.raises(ServiceError) as info:
            await bad
        assert info.value.status == 500
        assert await other_shape == 20
        _, (after,) = submit(batcher, item(3))
        assert await after == 30

    run(body)


def test_draining_refuses_new_requests_and_finishes_admitted_ones() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        _, (queued,) = submit(batcher, item(1))
        drain = asyncio.create_task(batcher.drain(5.0))
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceError) as info:
            batcher.admit("fake")
        assert info.value.status == 503
        assert engine.gate is not None
        engine.gate.set()
        assert await drain is True
        assert await asyncio.gather(first, queued) == [0, 10]

    run(body)


def test_slot_only_tickets_do_not_hold_batches_back() -> None:
    """A slot taken by work that never submits items (protocol adapters) counts against max_queue only."""

    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        slot = batcher.admit("fake", announce=False)
        started = time.monotonic()
        _, (future,) = submit(batcher, item(1))
        assert await future == 10
        assert time.monotonic() - started < 0.5  # max_wait is 2 s: nothing waited for the slot-only ticket
        assert batcher.pending == 1
        slot.release()
        assert batcher.pending == 0
        assert batcher.workers["fake"].announced == 0

    run(body, max_wait_s=2.0)


async def next_batch_started(engine: FakeEngine, count: int) -> None:
    """Wait until the engine has been given its `count`-th batch."""

    async def started() -> None:
        while len(engine.batches) < count:
            await asyncio.sleep(0.001)

    await asyncio.wait_for(started(), 2)


def release_and_hold_the_next(engine: FakeEngine) -> asyncio.Event:
    """Let the batch at the gate finish, and hold the next one at a new gate (returned)."""
    held, engine.gate = engine.gate, asyncio.Event()
    assert held is not None
    held.set()
    return engine.gate


def test_abandoned_request_in_another_queue_is_dropped_at_the_next_wakeup() -> None:
    """Not only the queue being dispatched is purged: the abandoned item goes while the next batch computes."""

    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        _, (next_up,) = submit(batcher, item(1))  # the oldest head: dispatched next
        gone, (dropped,) = submit(batcher, item(2, side=3))
        gone.abandon()
        gate = release_and_hold_the_next(engine)
        await first
        await next_batch_started(engine, 2)
        assert dropped.done()
        with pytest.raises(ServiceError) as info:
            dropped.result()
        assert info.value.status == 504
        assert list(batcher.workers["fake"].queues) == []
        gate.set()
        assert await next_up == 10
        assert engine.batches == [[0], [1]]

    run(body)


def test_expired_item_behind_a_live_one_is_dropped_at_the_next_wakeup() -> None:
    """An item admitted earlier but submitted later sits behind a younger head: its deadline still counts."""

    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        now = time.monotonic()

        def submit_arrived(ago: float, payload: Item) -> asyncio.Future[Any]:
            ticket = batcher.admit("fake", arrival=now - ago)
            return batcher.submit(ticket, [payload])[0]

        young = submit_arrived(0.5, item(3, side=3))
        expired = submit_arrived(11.0, item(4, side=3))  # past its 10 s deadline, behind `young`
        next_up = submit_arrived(1.0, item(5))  # older than `young`: its queue goes first
        gate = release_and_hold_the_next(engine)
        await first
        await next_batch_started(engine, 2)
        assert engine.batches[1] == [5]
        assert expired.done()
        with pytest.raises(ServiceError) as info:
            expired.result()
        assert info.value.status == 504
        assert not young.done()
        gate.set()
        assert await asyncio.gather(next_up, young) == [50, 30]
        assert [4] not in engine.batches

    run(body)
