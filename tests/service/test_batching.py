"""The batcher's policy with a fake engine whose timing the tests control (a gate each batch waits on)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import torch

from service.batching import Batcher, BatchPolicy, Cost, Outcome, Ticket
from service.errors import ServiceError
from service.ops import LatentDecode, NoParams, Op, OpParams

pytestmark = pytest.mark.timeout(20)


class FakeEngine:
    """Records batches (payload ids); waits on `gate` while set; fails batches holding id `poison`."""

    name = "fake"

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.params: list[OpParams] = []
        self.urgent: list[bool] = []  # per batch: handed over while a preemptible batch computed
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.poison: int | None = None
        self.delay = 0.0  # seconds each batch takes, yielding to the loop as an engine thread would
        self.gated_ops: frozenset[Op] | None = None  # only batches of these ops wait at the gate (None: all)
        self.bytes_per_pixel = 0
        self.prefetches = False  # True: the batcher hands over the next full batch while one computes
        self.prefetched: list[list[int]] = []  # the batches handed over early (payload ids), in order

    def prefetch(self, op: Op, payloads: list[torch.Tensor]) -> None:
        self.prefetched.append([int(p.flatten()[0]) for p in payloads])

    def cost(self, op: Op, shape: tuple[int, ...]) -> Cost:
        pixels = shape[-1] * shape[-2]
        return Cost(pixels, pixels * self.bytes_per_pixel)

    async def compute(
        self,
        op: Op,
        payloads: list[torch.Tensor],
        params: OpParams,
        abandoned: Callable[[], bool] | None = None,
        *,
        urgent: bool = False,
    ) -> list[Any]:
        ids = [int(p.flatten()[0]) for p in payloads]
        self.batches.append(ids)
        self.params.append(params)
        self.urgent.append(urgent)
        self.started.set()
        if self.gate is not None and (self.gated_ops is None or op in self.gated_ops):
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.poison in ids:
            raise RuntimeError("poisoned batch")
        return [i * 10 for i in ids]


def item(ident: int, side: int = 2) -> torch.Tensor:
    return torch.full((1, side, side), float(ident))


def run(test: Callable[[Batcher, FakeEngine], Awaitable[None]], **policy: Any) -> None:
    async def main() -> None:
        engine = FakeEngine()
        engine.prefetches = policy.pop("prefetches", False)
        timeout = policy.pop("timeout", 10.0)
        batcher = Batcher({"fake": engine}, BatchPolicy(**{"max_wait_s": 0.0, **policy}), timeout)
        batcher.start()
        try:
            await test(batcher, engine)
        finally:
            await batcher.stop()

    asyncio.run(main())


async def submit(
    batcher: Batcher, *inputs: torch.Tensor, op: Op = Op.ENCODE, ticket: Ticket | None = None
) -> tuple[Ticket, asyncio.Task[Outcome]]:
    """Admit (unless a ticket is given) and start `run` as a task; its items are queued when this returns."""
    ticket = ticket or batcher.admit("fake")
    task = asyncio.create_task(ticket.run(op, list(inputs)))
    await asyncio.sleep(0)  # run() queues its items before its first await
    return ticket, task


async def value(task: asyncio.Task[Outcome]) -> Any:
    """The one result of a single-input run."""
    (result,) = (await task).values
    return result


async def busy(batcher: Batcher, engine: FakeEngine, ident: int = 0) -> asyncio.Task[Outcome]:
    """Occupy the engine with one batch held at the gate."""
    engine.gate = asyncio.Event()
    _, task = await submit(batcher, item(ident))
    await asyncio.wait_for(engine.started.wait(), 2)
    return task


def test_idle_engine_computes_at_once_without_waiting() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        started = time.monotonic()
        _, task = await submit(batcher, item(7))
        assert await value(task) == 70
        assert time.monotonic() - started < 0.5  # max_wait is 2 s but nothing else was coming

    run(body, max_wait_s=2.0)


def test_items_arriving_while_busy_ride_one_batch() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        tasks = [(await submit(batcher, item(i)))[1] for i in (1, 2, 3)]
        assert engine.gate is not None
        engine.gate.set()
        assert await value(first) == 0
        assert [await value(t) for t in tasks] == [10, 20, 30]
        assert engine.batches == [[0], [1, 2, 3]]

    run(body)


def test_outcome_carries_the_facts_of_its_batches() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        ticket, task = await submit(batcher, item(1), item(2), item(3))
        await asyncio.sleep(0.05)
        assert engine.gate is not None
        engine.gate.set()
        await first
        outcome = await task
        assert outcome.values == [10, 20, 30]
        assert outcome.batch_size == 2  # max_batch_size 2: its items rode batches of 2 and 1
        assert outcome.queue_s >= 0.05
        assert outcome.compute_s > 0
        assert ticket.batch_size == 2

    run(body, max_batch_size=2)


def test_max_batch_size_and_pixels_split_batches() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        tasks = [(await submit(batcher, item(i)))[1] for i in range(1, 6)]
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.gather(first, *tasks)
        assert engine.batches == [[0], [1, 2], [3, 4], [5]]

    run(body, max_batch_size=2)
    run(body, max_batch_size=8, max_batch_pixels=8)  # 4 pixels per item: two fit


def test_one_queue_per_op_shape_and_params() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        tasks = [(await submit(batcher, item(i, side=2 + i % 2)))[1] for i in range(1, 5)]
        tasks.append((await submit(batcher, item(9), op=Op.RECONSTRUCT))[1])
        for ident, force in ((6, True), (7, False), (8, True)):
            ticket = batcher.admit("fake")
            tasks.append(asyncio.create_task(ticket.run(Op.DECODE_LATENTS, [item(ident)], LatentDecode(force))))
        await asyncio.sleep(0)
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.gather(first, *tasks)
        assert sorted(engine.batches[1:]) == [[1, 3], [2, 4], [6, 8], [7], [9]]
        assert engine.params[0] == NoParams()
        assert LatentDecode(True) in engine.params
        assert LatentDecode(False) in engine.params

    run(body)


def test_an_op_refuses_another_ops_parameters() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        async with batcher.admit("fake") as ticket:
            with pytest.raises(TypeError, match="LatentDecode"):
                await ticket.run(Op.ENCODE, [item(1)], LatentDecode())
        assert batcher.pending == 0

    run(body)


def test_waits_for_admitted_requests_still_decoding_up_to_max_wait() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        late = batcher.admit("fake")  # admitted, inputs still being decoded
        _, early = await submit(batcher, item(1))
        await asyncio.sleep(0.05)
        _, later = await submit(batcher, item(2), ticket=late)
        assert [await value(early), await value(later)] == [10, 20]
        assert engine.batches == [[1, 2]]
        # an admitted request that never comes delays the batch by at most max_wait
        batcher.admit("fake")
        started = time.monotonic()
        _, alone = await submit(batcher, item(3))
        assert await value(alone) == 30
        assert 0.25 <= time.monotonic() - started < 2.0

    run(body, max_wait_s=0.3)


def test_full_queue_answers_429_at_once_then_recovers() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        _, second = await submit(batcher, item(1))
        with pytest.raises(ServiceError) as info:
            batcher.admit("fake")
        assert info.value.status == 429
        assert info.value.headers["Retry-After"] == "1"
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.gather(first, second)
        _, third = await submit(batcher, item(2))
        assert await value(third) == 20

    run(body, max_queue=1)  # the computing request no longer counts, the queued one does


def test_expired_items_fail_504_and_are_never_computed() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        _, late = await submit(batcher, item(5))
        await asyncio.sleep(0.3)  # past the 0.2 s deadline while queued
        with pytest.raises(ServiceError) as info:
            await late
        assert info.value.status == 504
        with pytest.raises(ServiceError):
            await first  # computing when its deadline passed: the caller stops waiting too
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.sleep(0.05)
        assert [5] not in engine.batches
        assert batcher.pending == 0

    run(body, timeout=0.2)


def test_a_client_that_leaves_stops_its_request_before_compute() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        left = asyncio.Event()
        ticket = batcher.admit("fake", disconnected=left.wait)
        _, gone = await submit(batcher, item(4), item(5), ticket=ticket)
        _, kept = await submit(batcher, item(6))
        left.set()  # the client disconnected
        with pytest.raises(ServiceError) as info:
            await gone
        assert info.value.status == 499
        assert engine.gate is not None
        engine.gate.set()
        await first
        assert await value(kept) == 60
        assert engine.batches == [[0], [6]]
        assert batcher.pending == 0

    run(body)


def test_a_ticket_that_ends_without_running_gives_back_its_slot() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        async with batcher.admit("fake"):
            assert batcher.pending == 1
            assert batcher.workers["fake"].decoding == 1
        assert batcher.pending == 0
        assert batcher.workers["fake"].decoding == 0
        with contextlib.suppress(ValueError):
            async with batcher.admit("fake"):
                raise ValueError("a bad body")
        assert batcher.pending == 0

    run(body, max_queue=1)


def test_failing_batch_fails_only_its_items_and_the_worker_goes_on() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        engine.poison = 1
        first = await busy(batcher, engine)
        _, bad = await submit(batcher, item(1))
        _, other_shape = await submit(batcher, item(2, side=3))
        assert engine.gate is not None
        engine.gate.set()
        await first
        with pytest.raises(ServiceError) as info:
            await bad
        assert info.value.status == 500
        assert await value(other_shape) == 20
        _, after = await submit(batcher, item(3))
        assert await value(after) == 30

    run(body)


def test_draining_refuses_new_requests_and_finishes_admitted_ones() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        _, queued = await submit(batcher, item(1))
        drain = asyncio.create_task(batcher.drain(5.0))
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceError) as info:
            batcher.admit("fake")
        assert info.value.status == 503
        assert engine.gate is not None
        engine.gate.set()
        assert await drain is True
        assert [await value(first), await value(queued)] == [0, 10]

    run(body)


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
        _, next_up = await submit(batcher, item(1))  # the oldest head: dispatched next
        gone, dropped = await submit(batcher, item(2, side=3))
        gone.close()
        gate = release_and_hold_the_next(engine)
        await first
        await next_batch_started(engine, 2)
        assert list(batcher.workers["fake"].queues) == []
        with pytest.raises(ServiceError) as info:
            await dropped
        assert info.value.status == 504
        gate.set()
        assert await value(next_up) == 10
        assert engine.batches == [[0], [1]]

    run(body)


def test_expired_item_behind_a_live_one_is_dropped_at_the_next_wakeup() -> None:
    """An item admitted earlier but submitted later sits behind a younger head: its deadline still counts."""

    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        now = time.monotonic()

        async def submit_arrived(ago: float, payload: torch.Tensor) -> asyncio.Task[Outcome]:
            ticket = batcher.admit("fake")
            ticket.arrival, ticket.deadline = now - ago, now - ago + 10.0
            return (await submit(batcher, payload, ticket=ticket))[1]

        next_up = await submit_arrived(1.0, item(5))  # queued first: its queue goes first
        young = await submit_arrived(0.5, item(3, side=3))
        expired = await submit_arrived(11.0, item(4, side=3))  # past its 10 s deadline, behind `young`
        gate = release_and_hold_the_next(engine)
        await first
        await next_batch_started(engine, 2)
        assert engine.batches[1] == [5]
        with pytest.raises(ServiceError) as info:
            await expired
        assert info.value.status == 504
        assert not young.done()
        gate.set()
        assert [await value(next_up), await value(young)] == [50, 30]
        assert [4] not in engine.batches

    run(body)


def test_batches_fit_the_memory_budget_and_a_later_run_queues_behind_newer_work() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        ticket = batcher.admit("fake")
        _, early = await submit(batcher, item(1), ticket=ticket)
        _, other = await submit(batcher, item(2, side=3))  # another queue, queued after `early`
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.gather(first, early)
        _, later = await submit(batcher, item(3), item(4), item(5), ticket=ticket)  # the same request runs again
        await asyncio.gather(other, later)
        assert engine.batches == [[0], [1], [2], [3, 4], [5]]  # 2 items of 4 bytes fit the 8-byte budget

    def cost(op: Op, shape: tuple[int, ...]) -> Cost:
        return Cost(1, 4)

    async def patched(batcher: Batcher, engine: FakeEngine) -> None:
        engine.cost = cost  # type: ignore[method-assign]
        await body(batcher, engine)

    run(patched, max_batch_bytes=8)


async def stepping(batcher: Batcher, ident: int, steps: int, continues: bool) -> list[int]:
    """A request that runs `steps` times one after another, as a sampling loop does (item ids ident*100 + step)."""
    results = []
    async with batcher.admit("fake") as ticket:
        for step in range(steps):
            outcome = await ticket.run(Op.ENCODE, [item(ident * 100 + step)], continues=continues)
            results.extend(outcome.values)
    return results


async def two_steppers(batcher: Batcher, engine: FakeEngine, continues: bool) -> None:
    """Request 1 steps 6 times; request 2 arrives while its first step computes and steps 5 times."""
    engine.gate = asyncio.Event()
    engine.delay = 0.01
    first = asyncio.create_task(stepping(batcher, 1, 6, continues))
    await asyncio.wait_for(engine.started.wait(), 2)
    second = asyncio.create_task(stepping(batcher, 2, 5, continues))
    await asyncio.sleep(0.01)  # its first step is queued behind the first request's
    engine.gate.set()
    assert await first == [(100 + s) * 10 for s in range(6)]
    assert await second == [(200 + s) * 10 for s in range(5)]
    assert batcher.pending == 0
    assert batcher.workers["fake"].decoding == 0


def test_steps_of_concurrent_requests_that_continue_ride_one_batch() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        await two_steppers(batcher, engine, continues=True)
        # once the second request is queued, each step of the first waits for it, and they go in step
        assert [sorted(b) for b in engine.batches] == [[100], *[[101 + s, 200 + s] for s in range(5)]]

    run(body, max_wait_s=5.0)  # the wait ends as soon as the stepping request has queued: never 5 s


def test_steps_that_do_not_continue_take_turns_with_the_engine() -> None:
    """Why `continues`: without it a request back from its step finds the engine busy with the other's, and the
    two never share a batch."""

    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        await two_steppers(batcher, engine, continues=False)
        turns = [[100], [200], [101], [201], [102], [202], [103], [203], [104], [204], [105]]
        assert engine.batches == turns

    run(body, max_wait_s=5.0)


def test_a_continuing_request_that_ends_gives_back_what_it_holds() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        async with batcher.admit("fake") as ticket:
            await ticket.run(Op.ENCODE, [item(1)], continues=True)
            assert (batcher.pending, batcher.workers["fake"].decoding) == (1, 1)  # it will run again
        assert (batcher.pending, batcher.workers["fake"].decoding) == (0, 0)  # it ended instead
        # a batch need not wait for a request that left between its steps
        started = time.monotonic()
        _, alone = await submit(batcher, item(2))
        assert await value(alone) == 20
        assert time.monotonic() - started < 2.0

    run(body, max_wait_s=5.0)


async def prefetched(engine: FakeEngine, count: int) -> None:
    """Wait until the engine has been handed its `count`-th batch early."""

    async def handed() -> None:
        while len(engine.prefetched) < count:
            await asyncio.sleep(0.001)

    await asyncio.wait_for(handed(), 2)


def test_a_full_batch_is_handed_over_early_while_one_computes() -> None:
    """VQSERVE_PREFETCH: the next full batch is taken while one computes (its inputs go to the device meanwhile)
    and computed next, as it would have been."""

    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        tasks = [(await submit(batcher, item(i)))[1] for i in (1, 2, 3)]
        await prefetched(engine, 1)
        assert engine.prefetched == [[1, 2]]
        assert engine.batches == [[0]]
        assert engine.gate is not None
        engine.gate.set()
        assert [await value(t) for t in (first, *tasks)] == [0, 10, 20, 30]
        assert engine.batches == [[0], [1, 2], [3]]

    run(body, prefetches=True, max_batch_size=2)


def test_a_batch_that_could_still_grow_is_not_taken_early() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        first = await busy(batcher, engine)
        tasks = [(await submit(batcher, item(i)))[1] for i in (1, 2)]
        await asyncio.sleep(0.05)
        assert engine.prefetched == []  # two of four: items arriving meanwhile may still join it
        tasks += [(await submit(batcher, item(i)))[1] for i in (3, 4)]
        await prefetched(engine, 1)
        assert engine.prefetched == [[1, 2, 3, 4]]
        assert engine.gate is not None
        engine.gate.set()
        assert [await value(t) for t in (first, *tasks)] == [0, 10, 20, 30, 40]
        assert engine.batches == [[0], [1, 2, 3, 4]]

    run(body, prefetches=True, max_batch_size=4)


def test_a_batch_taken_early_is_answered_503_when_the_batcher_stops() -> None:
    """Nothing admitted is lost: the batch taken early goes back to its queue, and stopping fails it."""

    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        await busy(batcher, engine)
        tasks = [(await submit(batcher, item(i)))[1] for i in (1, 2)]
        await prefetched(engine, 1)
        await batcher.stop()
        for task in tasks:
            with pytest.raises(ServiceError) as info:
                await asyncio.wait_for(task, 2)
            assert (info.value.status, info.value.code) == (503, "shutting_down")
        assert engine.batches == [[0]]

    run(body, prefetches=True, max_batch_size=2)
