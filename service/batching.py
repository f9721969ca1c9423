"""The Batcher: admission, per-(model, op, shape, params) queues, batch policy, deadlines, cancellation.

The one way into the engines. A route admits a request before reading its body and runs ops on the ticket:

    async with batcher.admit(model, disconnected=...) as ticket:   # 503 draining, 429 full
        inputs = ...                                                 # decode the body
        outcome = await ticket.run(Op.ENCODE, inputs)                # 504 deadline, 499 client gone
    outcome.values, outcome.batch_size, outcome.queue_s, outcome.compute_s

A ticket holds one `max_queue` slot from admission until its items have started compute (or it ends). Each model
has one worker task: it takes the queue whose head was queued first and forms a batch of up to `max_batch_size`
items, `max_batch_pixels` image pixels and `max_batch_bytes` of activation memory (`engine.cost`). A request that
runs several times (the tiles of a large image, service/tiles.py) queues each run behind what arrived meanwhile,
so small requests interleave with it. The batch goes to the engine at once when the engine is
idle, unless other admitted requests are still decoding their inputs: then it waits for them up to `max_wait_s`
from the oldest item's arrival. A request that steps (sampling from a prior, service/sampling.py) says
`continues=True` on each run but its last: from the moment its results are set until its next run it counts as
decoding again (and the wait runs from that moment), so the steps of concurrent requests keep riding one batch
instead of taking turns with the engine. Items
whose deadline passed or whose client left are dropped before compute; a failing batch fails only its own items
(500) and the worker carries on. All queue state and counters live here;
this module never touches the model and knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from . import metrics
from .errors import BatchAbandoned, ServiceError
from .ops import PREEMPTIBLE_OPS, Op, OpParams, Payload, check_params

logger = logging.getLogger("vqserve.batching")

Disconnected = Callable[[], Awaitable[object]]  # completes when the client has gone away


class Cost(NamedTuple):
    """What one item costs a batch: the image pixels it stands for, and its activation memory on the device."""

    pixels: int
    bytes: int


class BatchEngine(Protocol):
    name: str

    @property
    def prefetches(self) -> bool: ...  # hand it the next batch while one computes (`prefetch`)

    def prefetch(self, op: Op, payloads: list[Payload]) -> None: ...

    def cost(self, op: Op, shape: tuple[int, ...]) -> Cost: ...

    async def compute(
        self,
        op: Op,
        payloads: list[Payload],
        params: OpParams,
        abandoned: Callable[[], bool] | None = None,
        *,
        urgent: bool = False,
    ) -> list[Any]: ...


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 16
    max_batch_pixels: int = 16 * 1024 * 1024
    max_wait_s: float = 0.005
    max_queue: int = 256
    retry_after_s: float = 1.0
    max_batch_bytes: int = 1 << 62  # the memory budget for one batch's activations


def draining_error() -> ServiceError:
    """The one refusal of a draining server, wherever it is noticed."""
    return ServiceError("shutting_down", "the server is shutting down; retry on another replica", retry_after_s=1)


@dataclass
class BatchRecord:
    """Facts of one computed batch, shared by its items."""

    size: int
    compute_s: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """The results of one `Ticket.run`, in input order, with the facts of the batches that computed them."""

    values: list[Any]
    batch_size: int = 0  # the largest batch its items rode in
    queue_s: float = 0.0  # the longest wait of one of its items, from the request's arrival to compute
    compute_s: float = 0.0  # engine time of those batches, together


@dataclass(eq=False)
class Item:
    """One input (an image, an index map, a latent map) waiting for compute."""

    op: Op
    payload: Payload
    params: OpParams
    cost: Cost
    ticket: Ticket
    enqueued: float = field(default_factory=time.monotonic)  # order among queues: a later run queues behind others
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    started: float | None = None  # when its batch went to the engine
    batch: BatchRecord | None = None

    @property
    def key(self) -> Hashable:
        return (self.op, tuple(self.payload.shape), self.payload.dtype, self.params)

    @property
    def dropped(self) -> bool:
        """Never compute it: its request ended (client gone, deadline, error) or it already has an answer."""
        return self.ticket.abandoned or self.future.done()

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)
            self.future.exception()  # a future nobody awaits any more must not log "never retrieved"


class Ticket:
    """An admitted request. `run` queues its inputs and waits; leaving the `async with` ends it."""

    def __init__(self, worker: ModelWorker, arrival: float, deadline: float, disconnected: Disconnected | None):
        self.worker = worker
        self.arrival = arrival
        self.deadline = deadline
        self.continues = False  # its current run is followed by another at once (`run(continues=True)`)
        self._futures: list[asyncio.Future[Any]] = []  # of its current run's items
        self._disconnected = disconnected
        self.decoding = True  # counted in worker.decoding until its first run or its end
        self.holds_slot = True  # counted in batcher.pending until its items started compute or it ends
        self.abandoned = False
        self.batch_size = 0  # the largest batch any of its items rode in (the access log reads it)
        self.tiles = 0  # tiles computed for its inputs larger than a tile (service/tiles.py; the x-tiles header)
        self._waiting = 0  # items of the current run not yet started

    async def __aenter__(self) -> Ticket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def run(
        self, op: Op, inputs: Sequence[Payload], params: OpParams | None = None, *, continues: bool = False
    ) -> Outcome:
        """Compute `op` on every input (batched with everyone's items of the same op, shape and params).

        `continues`: the request runs again as soon as these results are back (the next step of a sampling
        loop), so batches may wait for it up to `max_wait_s` as for a request still decoding."""
        checked = check_params(op, params)
        if self.abandoned:
            raise ServiceError("deadline_exceeded", "the request was dropped before its items were queued")
        batcher = self.worker.batcher
        batcher.retake(self)
        engine = self.worker.engine
        items = [Item(op, t, checked, engine.cost(op, tuple(t.shape)), self) for t in inputs]
        self._waiting = len(items)
        self.continues = continues
        self._futures = [item.future for item in items]
        batcher.decoded(self)
        if not items:
            batcher.release(self)
            return Outcome([])
        self.worker.put(items)
        values = await self._wait(self._futures)
        records = {id(item.batch): item.batch for item in items if item.batch is not None}
        outcome = Outcome(
            values,
            batch_size=max((r.size for r in records.values()), default=0),
            queue_s=max((item.started - self.arrival for item in items if item.started is not None), default=0.0),
            compute_s=sum(r.compute_s for r in records.values()),
        )
        self.batch_size = max(self.batch_size, outcome.batch_size)
        return outcome

    async def _wait(self, futures: list[asyncio.Future[Any]]) -> list[Any]:
        """The results in order; 504 at the deadline, 499 when the client went away (then nothing is computed)."""
        everything = _when_all(futures)
        waiters: set[asyncio.Future[Any]] = {everything}
        watcher = asyncio.ensure_future(self._disconnected()) if self._disconnected is not None else None
        if watcher is not None:
            waiters.add(watcher)
        try:
            timeout = max(0.0, self.deadline - time.monotonic())
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if watcher is not None:
                watcher.cancel()
        if everything in done:
            return [future.result() for future in futures]  # raises the first failure, in input order
        self.close()
        if watcher is not None and watcher in done:
            if not watcher.cancelled():
                watcher.exception()  # a receive that failed means the same: nobody is listening
            raise ServiceError("client_closed", "the client closed the connection before the result was ready")
        raise ServiceError("deadline_exceeded", "the request deadline (VQSERVE_REQUEST_TIMEOUT_S) passed")

    def answered(self) -> bool:
        """Every item of its current run has its result."""
        return all(f.done() and not f.cancelled() and f.exception() is None for f in self._futures)

    def item_started(self) -> None:
        self._waiting -= 1
        if self._waiting <= 0:
            self.worker.batcher.release(self)

    def close(self) -> None:
        """The request ended: drop what has not been computed and give back what it holds."""
        self.abandoned = True
        self.worker.batcher.decoded(self)
        self.worker.batcher.release(self)


def _when_all(futures: list[asyncio.Future[Any]]) -> asyncio.Future[None]:
    """A future that completes (with None, never an error) once every future is done or one has failed."""
    loop = asyncio.get_running_loop()
    joined: asyncio.Future[None] = loop.create_future()
    remaining = len(futures)

    def settle(future: asyncio.Future[Any]) -> None:
        nonlocal remaining
        remaining -= 1
        failed = not future.cancelled() and future.exception() is not None
        if not joined.done() and (failed or future.cancelled() or remaining == 0):
            joined.set_result(None)

    if not futures:
        joined.set_result(None)
    for future in futures:
        future.add_done_callback(settle)
    return joined


class ModelWorker:
    """The queues and the dispatch loop of one model."""

    def __init__(self, batcher: Batcher, engine: BatchEngine) -> None:
        self.batcher = batcher
        self.engine = engine
        self.queues: dict[Hashable, deque[Item]] = {}
        self.wakeup = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.computing = 0  # batches at the engine: one, or a preemptible one and the urgent one it lets in
        self.decoding = 0  # admitted requests still decoding their inputs (or between steps): a batch may wait for them
        self.returned_at = 0.0  # when stepping requests last got their results (a batch may wait for them from then)
        self.task: asyncio.Task[None] | None = None

    def put(self, items: list[Item]) -> None:
        for item in items:
            self.queues.setdefault(item.key, deque()).append(item)
            metrics.QUEUE_DEPTH.labels(self.engine.name, item.op).inc()
        self.wakeup.set()

    async def run(self) -> None:
        ahead: list[Item] | None = None  # the batch taken early, while the one before it computed
        while True:
            batch = ahead or await self._next_batch()
            ahead = None
            if batch[0].op in PREEMPTIBLE_OPS:
                await self._compute_letting_others_in(batch)
            elif self.engine.prefetches:
                ahead = await self._compute_taking_the_next(batch)
            else:
                await self._compute(batch)

    async def _compute_taking_the_next(self, batch: list[Item]) -> list[Item] | None:
        """Compute `batch` and, while it runs, take the batch that would come next once it is full (a full batch
        cannot grow by waiting, so taking it early changes no batch) and hand it to the engine to copy its inputs
        to the device meanwhile (`engine.prefetch`); return it, to compute next."""
        current = asyncio.ensure_future(self._compute(batch))
        ahead: list[Item] | None = None
        try:
            while not current.done():
                self.wakeup.clear()
                ahead = self._full_batch()
                if ahead is not None:
                    self.engine.prefetch(ahead[0].op, [item.payload for item in ahead])
                    break
                arrival = asyncio.ensure_future(self.wakeup.wait())
                await asyncio.wait({current, arrival}, return_when=asyncio.FIRST_COMPLETED)
                arrival.cancel()
            await current
        except BaseException:  # the worker is stopped: the batch taken early goes back to the front of its queue
            current.cancel()
            if ahead is not None:
                self.queues.setdefault(ahead[0].key, deque()).extendleft(reversed(ahead))
            raise
        return ahead

    def _full_batch(self) -> list[Item] | None:
        """The batch `_next_batch` would take next, taken now if it is already full and not preemptible; else None
        (it is left to `_next_batch`, which may wait for it to fill)."""
        self._purge()
        if not self.queues:
            return None
        policy = self.batcher.policy
        key, count = self._candidate(list(self.queues), policy.max_batch_bytes)
        if self.queues[key][0].op in PREEMPTIBLE_OPS or not self._full(key, count):
            return None
        return self._take(key, count)

    def _full(self, key: Hashable, count: int) -> bool:
        """A batch of `count` from the queue `key` cannot grow: it is at the size bound, or the next item did not
        fit (pixels or memory)."""
        return count == self.batcher.policy.max_batch_size or count < len(self.queues[key])

    def _take(self, key: Hashable, count: int) -> list[Item]:
        queue = self.queues[key]
        batch = [queue.popleft() for _ in range(count)]
        if not queue:
            del self.queues[key]
        return batch

    async def _compute_letting_others_in(self, batch: list[Item]) -> None:
        """Compute a preemptible batch (a tile) and, while it runs, hand the engine one urgent batch of the other
        ops at a time, within the memory budget the tile leaves: the tile pauses at a module boundary for it
        (service/preemption.py), so a small request waits for a module, not for a whole tile."""
        room = self.batcher.policy.max_batch_bytes - sum(item.cost.bytes for item in batch)
        long = asyncio.ensure_future(self._compute(batch))
        short: asyncio.Future[list[Item]] | None = None
        try:
            while not long.done():
                short = asyncio.ensure_future(self._next_batch(room=room))
                await asyncio.wait({long, short}, return_when=asyncio.FIRST_COMPLETED)
                if short.done():
                    await self._compute(short.result(), urgent=True)
                else:
                    # not awaited: a cancel of this worker must not be swallowed with it; it has popped nothing
                    # (a batch is taken from the queues in one step, after its last await)
                    short.cancel()
                short = None
        except BaseException:  # the worker is stopped: nothing more is handed to the engine
            long.cancel()
            if short is not None:
                short.cancel()
            raise

    # batch policy
    def _purge(self) -> None:
        now = time.monotonic()
        for key in list(self.queues):
            kept: deque[Item] = deque()
            for item in self.queues[key]:
                if item.dropped:
                    self._dequeued(item, now)
                    item.fail(ServiceError("deadline_exceeded", "request dropped before compute"))
                elif now >= item.ticket.deadline:
                    self._dequeued(item, now)
                    item.fail(ServiceError("deadline_exceeded", "the request deadline passed before compute"))
                else:
                    kept.append(item)
            if kept:
                self.queues[key] = kept
            else:
                del self.queues[key]

    def _dequeued(self, item: Item, now: float) -> None:
        metrics.QUEUE_DEPTH.labels(self.engine.name, item.op).dec()
        item.started = now
        item.ticket.item_started()

    def _candidate(self, keys: list[Hashable], room: int) -> tuple[Hashable, int]:
        """Of `keys`, the queue whose head waited longest, and how many of its items fit one batch (at most `room`
        bytes of activations)."""
        key = min(keys, key=lambda k: self.queues[k][0].enqueued)
        policy = self.batcher.policy
        count, pixels, size = 0, 0, 0
        for item in self.queues[key]:
            over = pixels + item.cost.pixels > policy.max_batch_pixels or size + item.cost.bytes > room
            if count >= policy.max_batch_size or (count and over):
                break
            count += 1
            pixels += item.cost.pixels
            size += item.cost.bytes
        return key, count

    def _eligible(self, room: int | None) -> list[Hashable]:
        """Queues a batch may come from now: all of them, or (`room` given: a preemptible batch computes) those of
        the other ops whose head fits the memory it leaves."""
        if room is None:
            return list(self.queues)
        return [
            key
            for key, queue in self.queues.items()
            if queue[0].op not in PREEMPTIBLE_OPS and queue[0].cost.bytes <= room
        ]

    async def _next_batch(self, room: int | None = None) -> list[Item]:
        """The next batch by the policy; with `room`, an urgent one that may run beside a preemptible batch."""
        policy = self.batcher.policy
        while True:
            self._purge()
            keys = self._eligible(room)
            if not keys:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            key, count = self._candidate(keys, policy.max_batch_bytes if room is None else room)
            waited = time.monotonic() - max(self.queues[key][0].ticket.arrival, self.returned_at)
            if self._full(key, count) or self.decoding <= 0 or waited >= policy.max_wait_s:
                return self._take(key, count)
            # more admitted requests are still decoding (or between steps): give them until max_wait from the oldest
            # arrival (or from when the stepping requests got their results)
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout=policy.max_wait_s - waited)

    async def _compute(self, batch: list[Item], urgent: bool = False) -> None:
        name, op = self.engine.name, batch[0].op
        now = time.monotonic()
        for item in batch:
            self._dequeued(item, now)
            metrics.QUEUE_DURATION.labels(name, op).observe(now - item.ticket.arrival)
        live = [item for item in batch if not item.dropped]
        for item in batch:
            if item.dropped:
                item.fail(ServiceError("deadline_exceeded", "request dropped before compute"))
        if not live:
            return
        self.computing += 1
        self.idle.clear()
        record = BatchRecord(len(live))
        metrics.BATCH_SIZE.labels(name, op).observe(record.size)
        for item in live:
            item.batch = record
        started = time.perf_counter()
        try:
            results = await self.engine.compute(
                op,
                [item.payload for item in live],
                live[0].params,
                abandoned=lambda: all(i.dropped for i in live),
                urgent=urgent,
            )
            if len(results) != len(live):
                raise RuntimeError(f"engine returned {len(results)} results for {len(live)} items")
        except BatchAbandoned:  # every request of the batch ended while it computed: the engine is free again
            logger.info("batch of %d %s items on model %s stopped: none of its requests waits", len(live), op, name)
            for item in live:
                item.fail(ServiceError("deadline_exceeded", "request ended while its batch computed"))
        except Exception as exc:
            logger.exception("batch of %d %s items on model %s failed", len(live), op, name)
            for item in live:
                item.fail(ServiceError("batch_failed", f"the batch failed on the model: {type(exc).__name__}: {exc}"))
        else:
            for item, result in zip(live, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
            # requests whose run continues count as decoding from now, before any other batch is chosen
            for ticket in {id(item.ticket): item.ticket for item in live}.values():
                if ticket.continues and ticket.answered():
                    self.batcher.continuing(ticket)
        finally:
            record.compute_s = time.perf_counter() - started
            metrics.COMPUTE_DURATION.labels(name, op).observe(record.compute_s)
            self.computing -= 1
            if not self.computing:
                self.idle.set()


class Batcher:
    """Admission, its counters, and one `ModelWorker` per engine."""

    def __init__(self, engines: dict[str, BatchEngine], policy: BatchPolicy, request_timeout_s: float) -> None:
        self.policy = policy
        self.request_timeout_s = request_timeout_s
        self.workers = {name: ModelWorker(self, engine) for name, engine in engines.items()}
        self.pending = 0  # admitted requests holding a slot: not yet (fully) started compute
        self.draining = False

    def start(self) -> None:
        for worker in self.workers.values():
            worker.task = asyncio.create_task(worker.run(), name=f"batcher-{worker.engine.name}")

    def admit(self, model: str, disconnected: Disconnected | None = None) -> Ticket:
        """Take a queue slot for one request before its body is decoded: 503 when draining, 429 when full.

        `disconnected`, when given, is awaited while the request waits for results (after its body was read)."""
        if self.draining:
            raise draining_error()
        if self.pending >= self.policy.max_queue:
            raise ServiceError(
                "overloaded",
                f"{self.pending} requests are already queued (max_queue={self.policy.max_queue}); retry later",
                retry_after_s=self.policy.retry_after_s,
            )
        worker = self.workers[model]
        arrival = time.monotonic()
        self.pending += 1
        worker.decoding += 1
        return Ticket(worker, arrival, arrival + self.request_timeout_s, disconnected)

    # the counters, changed only here
    def decoded(self, ticket: Ticket) -> None:
        """The ticket no longer decodes inputs: batches need not wait for it."""
        if ticket.decoding:
            ticket.decoding = False
            ticket.worker.decoding -= 1
            ticket.worker.wakeup.set()

    def continuing(self, ticket: Ticket) -> None:
        """The ticket's run is answered and it runs again at once: until then it holds a slot and counts as
        decoding, and batches may wait for it up to max_wait from now."""
        if ticket.abandoned:
            return
        self.retake(ticket)
        ticket.worker.returned_at = time.monotonic()
        if not ticket.decoding:
            ticket.decoding = True
            ticket.worker.decoding += 1

    def release(self, ticket: Ticket) -> None:
        """The ticket's items have all started compute, or it ended: its slot is free."""
        if ticket.holds_slot:
            ticket.holds_slot = False
            self.pending -= 1

    def retake(self, ticket: Ticket) -> None:
        """A later `run` of an admitted request holds a slot again (it was admitted: never refused midway)."""
        if not ticket.holds_slot:
            ticket.holds_slot = True
            self.pending += 1

    # lifecycle
    def idle(self) -> bool:
        return self.pending == 0 and all(w.idle.is_set() and not w.queues for w in self.workers.values())

    async def drain(self, timeout_s: float) -> bool:
        """Stop admitting and wait until everything admitted is computed; False if the bound passed first."""
        self.draining = True
        end = time.monotonic() + timeout_s
        while not self.idle():
            if time.monotonic() >= end:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self) -> None:
        """Cancel the workers and fail whatever is still queued with 503."""
        self.draining = True
        for worker in self.workers.values():
            if worker.task is not None:
                worker.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.task
            for queue in worker.queues.values():
                for item in queue:
                    metrics.QUEUE_DEPTH.labels(worker.engine.name, item.op).dec()
                    item.fail(ServiceError("shutting_down", "the server shut down before compute"))
            worker.queues.clear()
