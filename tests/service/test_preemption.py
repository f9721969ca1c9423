"""A tile batch pauses at a module boundary to let one urgent batch in (`service/preemption.py`): the baton's
hand-over and fairness, the engine's two threads computing exactly what they compute alone (the tile's replaced
norms stay on its own thread), and the batcher handing over only other ops within the memory that is left."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from service import metrics
from service.batching import Batcher
from service.engine import Engine
from service.ops import NoParams, Op, Tile
from service.preemption import Baton
from service.settings import Settings
from tests.service.test_batching import FakeEngine, item, run, submit, value
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


# the baton
def test_an_urgent_holder_runs_at_the_next_boundary_of_a_preemptible_one() -> None:
    baton = Baton()
    log: list[str] = []

    def preemptible() -> None:
        with baton.hold():
            for step in range(6):
                if step == 3:
                    wait_until(lambda: baton.urgent_waiting, "the urgent holder to wait")
                if baton.let_urgent_in():
                    log.append("resumed")
                log.append(f"step {step}")

    def urgent() -> None:
        with baton.hold(urgent=True):
            log.append("urgent")

    long = threading.Thread(target=preemptible)
    long.start()
    wait_until(lambda: "step 2" in log, "the preemptible holder to start")
    short = threading.Thread(target=urgent)
    short.start()
    long.join(10)
    short.join(10)
    assert log == ["step 0", "step 1", "step 2", "urgent", "resumed", "step 3", "step 4", "step 5"]


def test_a_plain_holder_waits_for_the_whole_preemptible_batch() -> None:
    baton = Baton()
    log: list[str] = []
    waiting = threading.Event()

    def preemptible() -> None:
        with baton.hold():
            waiting.wait(10)
            for step in range(3):
                assert not baton.let_urgent_in()  # nothing urgent waits: never pauses
                log.append(f"step {step}")

    def plain() -> None:
        waiting.set()
        with baton.hold():
            log.append("plain")

    long = threading.Thread(target=preemptible)
    long.start()
    wait_until(lambda: baton.busy, "the preemptible holder to hold")
    other = threading.Thread(target=plain)
    other.start()
    long.join(10)
    other.join(10)
    assert log == ["step 0", "step 1", "step 2", "plain"]


def test_a_paused_batch_computes_as_long_as_the_urgent_work_took_before_pausing_again() -> None:
    now = [0.0]
    baton = Baton(clock=lambda: now[0])
    decisions: list[bool] = []
    urgent_done = threading.Event()

    def urgent(seconds: float) -> None:
        with baton.hold(urgent=True):
            now[0] += seconds  # the urgent batch "computes" for this long
        urgent_done.set()

    with baton.hold():
        first = threading.Thread(target=urgent, args=(2.0,))
        first.start()
        wait_until(lambda: baton.urgent_waiting, "the first urgent holder")
        decisions.append(baton.let_urgent_in())  # pauses: the first urgent batch runs for 2 s
        first.join(10)
        second = threading.Thread(target=urgent, args=(0.5,))
        second.start()
        wait_until(lambda: baton.urgent_waiting, "the second urgent holder")
        now[0] += 1.0
        decisions.append(baton.let_urgent_in())  # 1 s computed of the 2 s owed: not yet
        now[0] += 1.0
        decisions.append(baton.let_urgent_in())  # 2 s: pauses again
        second.join(10)
    assert decisions == [True, False, True]
    assert urgent_done.is_set()


# the engine: two threads, one computing at a time, each computing what it computes alone
@contextmanager
def tile_held_at_a_boundary(engine: Engine, module_count: int) -> Iterator[list[str]]:
    """Record which engine thread enters each module; the tile thread waits at its `module_count`-th module
    until an urgent batch waits for the baton (so that the hand-over happens inside the tile, every time)."""
    log: list[str] = []
    urgent_thread = f"engine-{engine.name}-urgent"

    def hook(module: torch.nn.Module, args: object) -> None:
        name = threading.current_thread().name
        if not name.startswith(f"engine-{engine.name}"):
            return
        lane = "urgent" if name.startswith(urgent_thread) else "tile"
        log.append(lane)
        if lane == "tile" and log.count("tile") == module_count:
            wait_until(lambda: engine._baton.urgent_waiting, "the urgent batch to wait", 10, 0.001)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield log
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("tile_op", "stats_op", "urgent_op"),
    [(Op.ENCODE_TILE, Op.ENCODE_STATS, Op.ENCODE), (Op.DECODE_TILE, Op.DECODE_STATS, Op.DECODE_INDICES)],
)
def test_an_urgent_batch_runs_inside_a_tile_and_both_compute_what_they_compute_alone(
    tiny_checkpoint: Path, tile_op: Op, stats_op: Op, urgent_op: Op
) -> None:
    settings = Settings(model_path=tiny_checkpoint, warmup=False)
    engine = Engine(settings.model_specs()[0], settings)
    engine.load()
    generator = torch.Generator().manual_seed(3)
    if tile_op == Op.ENCODE_TILE:
        large = torch.rand(3, 64, 64, generator=generator) * 2 - 1
        small = torch.rand(3, 16, 16, generator=generator) * 2 - 1
    else:
        large = torch.randint(0, 64, (16, 16), generator=generator)
        small = torch.randint(0, 64, (4, 4), generator=generator)
    (stats,) = engine.run(stats_op, [large])
    tile = Tile(large, stats)
    (tile_alone,) = engine.run(tile_op, [tile])
    (small_alone,) = engine.run(urgent_op, [small])
    pauses = metrics.BATCH_PAUSES.labels(engine.name, tile_op)._value.get()

    async def both() -> tuple[object, object]:
        long = asyncio.ensure_future(engine.compute(tile_op, [tile], NoParams()))
        await asyncio.to_thread(wait_until, lambda: "tile" in log, "the tile to start", 10, 0.001)
        (short,) = await engine.compute(urgent_op, [small], NoParams(), urgent=True)
        (tiled,) = await long
        return tiled, short

    try:
        with tile_held_at_a_boundary(engine, module_count=4) as log:
            tiled, short = asyncio.run(both())
    finally:
        engine.close()
    first_urgent, last_urgent = log.index("urgent"), len(log) - 1 - log[::-1].index("urgent")
    assert "urgent" not in log[:4]
    assert "tile" in log[last_urgent:]  # the tile resumed after the urgent batch, whose modules ran in one stretch
    assert log[first_urgent : last_urgent + 1] == ["urgent"] * (last_urgent - first_urgent + 1)
    assert metrics.BATCH_PAUSES.labels(engine.name, tile_op)._value.get() == pauses + 1
    if urgent_op == Op.ENCODE:
        assert torch.equal(short.indices, small_alone.indices)
        assert torch.equal(short.latents, small_alone.latents)
    else:
        assert (short == small_alone).all()
    assert torch.equal(tiled, tile_alone)


# the batcher
def test_other_ops_are_handed_over_while_a_tile_batch_computes() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        engine.gate, engine.gated_ops = asyncio.Event(), frozenset({Op.ENCODE_TILE})
        _, tile = await submit(batcher, item(1, side=4), op=Op.ENCODE_TILE)
        await asyncio.wait_for(engine.started.wait(), 2)
        _, small = await submit(batcher, item(2))
        answered = await asyncio.wait_for(value(small), 2)
        assert answered == 20  # answered while the tile is held
        assert not tile.done()
        assert not batcher.idle()  # the tile still computes after the urgent batch ended
        _, second_tile = await submit(batcher, item(3, side=4), op=Op.DECODE_TILE)
        await asyncio.sleep(0.05)
        assert engine.batches == [[1], [2]]  # another tile op is never handed over beside a tile
        engine.gate.set()
        assert await value(tile) == 10
        assert await value(second_tile) == 30
        assert engine.urgent == [False, True, False]

    run(body)


def test_an_urgent_batch_fits_the_memory_the_tile_leaves() -> None:
    async def body(batcher: Batcher, engine: FakeEngine) -> None:
        engine.bytes_per_pixel = 5  # a 4x4 tile: 80 bytes of a 100-byte budget; a 2x2 item 20, a 3x3 one 45
        engine.gate, engine.gated_ops = asyncio.Event(), frozenset({Op.ENCODE_TILE})
        _, tile = await submit(batcher, item(1, side=4), op=Op.ENCODE_TILE)
        await asyncio.wait_for(engine.started.wait(), 2)
        _, too_large = await submit(batcher, item(2, side=3))
        _, fits = await submit(batcher, item(3, side=2))
        assert await asyncio.wait_for(value(fits), 2) == 30
        await asyncio.sleep(0.05)
        assert not too_large.done()  # waits for the tile's memory
        engine.gate.set()
        assert await value(too_large) == 20
        assert engine.batches == [[1], [3], [2]]
        assert engine.urgent == [False, True, False]

    run(body, max_batch_bytes=100)
