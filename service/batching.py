"""The Batcher: bounded admission, per-(model, op, shape) queues, batch policy, deadlines, cancellation.

Routes `admit` a request (429 at once when `max_queue` requests already wait, 503 when draining), decode its
inputs, then `submit` one `Item` per image and await the futures. One worker task per model picks the queue whose
oldest item is oldest and forms a batch of up to `max_batch_size` items and `max_batch_pixels` pixels. The batch
goes to the engine as soon as the engine is idle, unless other admitted requests for that model are still being
decoded: then it waits for them up to `max_wait_ms` counted from the oldest item's arrival. Expired items (504)
and items whose client went away are dropped before compute. A failing batch fails only its own items (500) and
the worker carries on. This module never touches the model; the engine never sees a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from . import metrics
from .errors import ServiceError

logger = logging.getLogger("vqserve.batching")


class BatchEngine(Protocol):
    name: str

    async def compute(self, op: str, payloads: list[torch.Tensor], params: tuple[Any, ...]) -> list[Any]: ...


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 16
    max_batch_pixels: int = 16 * 1024 * 1024
    max_wait_s: float = 0.005
    max_queue: int = 256
    retry_after_s: int = 1


@dataclass(eq=False)
class Item:
    """One image (or one index map / latent) waiting for compute."""

    op: str
    payload: torch.Tensor
    pixels: int
    params: tuple[Any, ...] = ()
    arrival: float = field(default_factory=time.monotonic)
    deadline: float = float("inf")
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    ticket: Ticket | None = None
    abandoned: bool = False  # the client went away or its deadline passed: never compute it
    batch_size: int = 0  # the size of the batch it was computed in (for the access log)

    @property
    def key(self) -> Hashable:
        return (self.op, tuple(self.payload.shape), self.payload.dtype, self.params)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)
            self.future.exception()  # a future nobody awaits any more must not log "never retrieved"


class Ticket:
    """An admitted request: holds one `max_queue` slot until its items are computed or it ends."""

    def __init__(self, worker: ModelWorker, arrival: float, deadline: float, announced: bool = True) -> None:
        self.worker = worker
        self.arrival = arrival
        self.deadline = deadline
        self.announced = announced  # counted in worker.announced until it submits or ends
        self.items: list[Item] = []
        self._waiting = 0
        self.submitted = False
        self.released = False

    def started(self, item: Item) -> None:
        self._waiting -= 1
        if self._waiting <= 0:
            self.release()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.worker.batcher.pending -= 1
            if self.announced and not self.submitted:
                self.worker.announced -= 1
                self.worker.wakeup.set()

    def abandon(self) -> None:
        """The client is gone or the deadline passed: drop what has not been computed."""
        for item in self.items:
            item.abandoned = True
        self.release()


class ModelWorker:
    """The queues and the dispatch loop of one model."""

    def __init__(self, batcher: Batcher, engine: BatchEngine) -> None:
        self.batcher = batcher
        self.engine = engine
        self.queues: dict[Hashable, deque[Item]] = {}
        self.wakeup = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.announced = 0  # admitted requests still decoding their inputs
        self.task: asyncio.Task[None] | None = None

    def put(self, items: list[Item]) -> None:
        for item in items:
            self.queues.setdefault(item.key, deque()).append(item)
            metrics.QUEUE_DEPTH.labels(self.engine.name, item.op).inc()
        self.wakeup.set()

    async def run(self) -> None:
        while True:
            batch = await self._next_batch()
            await self._compute(batch)

    # batch policy
    def _purge(self) -> None:
        now = time.monotonic()
        for key in list(self.queues):
            queue = self.queues[key]
            kept: deque[Item] = deque()
            for item in queue:
                if item.abandoned or item.future.done():
                    self._dequeued(item)
                    item.fail(ServiceError("deadline_exceeded", "request dropped before compute"))
                elif now >= item.deadline:
                    self._dequeued(item)
                    item.fail(ServiceError("deadline_exceeded", "the request deadline passed before compute"))
                else:
                    kept.append(item)
            if kept:
                self.queues[key] = kept
            else:
                del self.queues[key]

    def _dequeued(self, item: Item) -> None:
        metrics.QUEUE_DEPTH.labels(self.engine.name, item.op).dec()
        if item.ticket is not None:
            item.ticket.started(item)

    def _candidate(self) -> tuple[Hashable, int]:
        """The queue whose head waited longest, and how many of its items fit one batch."""
        key = min(self.queues, key=lambda k: self.queues[k][0].arrival)
        policy = self.batcher.policy
        count, pixels = 0, 0
        for item in self.queues[key]:
            if count >= policy.max_batch_size or (count and pixels + item.pixels > policy.max_batch_pixels):
                break
            count += 1
            pixels += item.pixels
        return key, count

    async def _next_batch(self) -> list[Item]:
        policy = self.batcher.policy
        while True:
            self._purge()
            if not self.queues:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            key, count = self._candidate()
            queue = self.queues[key]
            waited = time.monotonic() - queue[0].arrival
            full = count == policy.max_batch_size or count < len(queue)
            if full or self.announced <= 0 or waited >= policy.max_wait_s:
                batch = [queue.popleft() for _ in range(count)]
                if not queue:
                    del self.queues[key]
                return batch
            # more admitted requests are still decoding: give them until max_wait from the oldest arrival
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout=policy.max_wait_s - waited)

    async def _compute(self, batch: list[Item]) -> None:
        name, op = self.engine.name, batch[0].op
        now = time.monotonic()
        for item in batch:
            self._dequeued(item)
            metrics.QUEUE_DURATION.labels(name, op).observe(now - item.arrival)
        live = [item for item in batch if not item.abandoned and not item.future.done()]
        for item in batch:
            if item not in live:
                item.fail(ServiceError("deadline_exceeded", "request dropped before compute"))
        if not live:
            return
        self.idle.clear()
        metrics.BATCH_SIZE.labels(name, op).observe(len(live))
        for item in live:
            item.batch_size = len(live)
        started = time.perf_counter()
        try:
            results = await self.engine.compute(op, [item.payload for item in live], live[0].params)
            if len(results) != len(live):
                raise RuntimeError(f"engine returned {len(results)} results for {len(live)} items")
        except Exception as exc:
            logger.exception("batch of %d %s items on model %s failed", len(live), op, name)
            for item in live:
                item.fail(ServiceError("batch_failed", f"the batch failed on the model: {type(exc).__name__}: {exc}"))
        else:
            for item, result in zip(live, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
        finally:
            metrics.COMPUTE_DURATION.labels(name, op).observe(time.perf_counter() - started)
            self.idle.set()


class Batcher:
    """Admission and one `ModelWorker` per engine."""

    def __init__(self, engines: dict[str, BatchEngine], policy: BatchPolicy, request_timeout_s: float) -> None:
        self.policy = policy
        self.request_timeout_s = request_timeout_s
        self.workers = {name: ModelWorker(self, engine) for name, engine in engines.items()}
        self.pending = 0  # admitted requests not yet (fully) computed
        self.draining = False

    def start(self) -> None:
        for worker in self.workers.values():
            worker.task = asyncio.create_task(worker.run(), name=f"batcher-{worker.engine.name}")

    def admit(self, model: str, arrival: float | None = None, announce: bool = True) -> Ticket:
        """Take a queue slot for one request before its body is decoded: 503 when draining, 429 when full.

        `announce=False` holds a slot only (work that never submits items): batches then need not wait for it.
        """
        if self.draining:
            raise ServiceError(
                "shutting_down", "the server is shutting down; retry on another replica", {"Retry-After": "1"}
            )
        if self.pending >= self.policy.max_queue:
            raise ServiceError(
                "overloaded",
                f"{self.pending} requests are already queued (max_queue={self.policy.max_queue}); retry later",
                {"Retry-After": str(self.policy.retry_after_s)},
            )
        worker = self.workers[model]
        arrival = time.monotonic() if arrival is None else arrival
        self.pending += 1
        if announce:
            worker.announced += 1
        return Ticket(worker, arrival, arrival + self.request_timeout_s, announced=announce)

    def submit(self, ticket: Ticket, items: list[Item]) -> list[asyncio.Future[Any]]:
        """Queue the request's items (all in the same per-shape queues as everyone else's)."""
        if ticket.released:
            raise ServiceError("deadline_exceeded", "the request was dropped before its items were queued")
        for item in items:
            item.ticket = ticket
            item.arrival = ticket.arrival
            item.deadline = ticket.deadline
        ticket.items = items
        ticket._waiting = len(items)
        ticket.submitted = True
        ticket.worker.announced -= 1
        ticket.worker.put(items)
        if not items:
            ticket.release()
        return [item.future for item in items]

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
