"""Hypothesis properties of the codecs and the batcher.

Codecs: whatever bytes arrive (arbitrary, or a valid PNG truncated or with bytes flipped), image, tensor
and base64 decoding either returns a well-formed value or raises a 4xx `ServiceError`, never anything
else; tensors and lossless images survive a round trip exactly; padding keeps the image and replicates its
edges.

Batcher: for any policy and any workload (shapes, ops, batch forms, clients that go away, batches that
fail), admission never exceeds `max_queue` (429 beyond it), every batch holds one (op, shape) within the
size and pixel bounds, every live item gets exactly its own result or its own batch's failure, abandoned
items are never computed, nothing is computed twice, and the queue ends empty."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service import codecs
from service.batching import Batcher, BatchPolicy, Cost
from service.errors import ServiceError
from service.ops import Op, OpParams
from tests.support.images import noise, png

pytestmark = pytest.mark.timeout(120)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
VALID_PNG = png(12, 10, seed=3)


def decodes_or_refuses(data: bytes, channels: int = 3) -> None:
    """The codec contract: a (H, W, channels) uint8 array, or a ServiceError with a 4xx status."""
    arr, error = _outcome(codecs.read_image, data, channels=channels, max_pixels=4096)
    if error is not None:
        assert 400 <= error.status < 500
        assert error.message
    else:
        assert arr.dtype == np.uint8
        assert arr.ndim == 3
        assert arr.shape[2] == channels


def _outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, ServiceError | None]:
    """(result, None) or (None, the ServiceError); any other exception propagates and fails the property."""
    try:
        return fn(*args, **kwargs), None
    except ServiceError as exc:
        return None, exc


# codecs
@SETTINGS
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_are_refused(data: bytes) -> None:
    decodes_or_refuses(data)


@SETTINGS
@given(
    st.integers(0, len(VALID_PNG)),
    st.lists(st.tuples(st.integers(0, len(VALID_PNG) - 1), st.integers(1, 255))),
)
def test_damaged_pngs_decode_or_are_refused(cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID_PNG[:cut] if cut < len(VALID_PNG) else VALID_PNG)
    for position, mask in flips:
        if position < len(data):
            data[position] ^= mask
    decodes_or_refuses(bytes(data))
    decodes_or_refuses(bytes(data), channels=1)


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3]), st.integers(0, 2**32 - 1))
def test_png_round_trip_is_exact(height: int, width: int, channels: int, seed: int) -> None:
    arr = noise(height, width, channels, seed)
    data = codecs.write_image(arr, "png", codecs.ImageCompression())
    assert np.array_equal(codecs.read_image(data, channels=channels, max_pixels=4096), arr)


@SETTINGS
@given(st.integers(1, 30), st.integers(1, 30), st.sampled_from([1, 2, 4, 8, 16]))
def test_padding_keeps_the_image_and_replicates_edges(height: int, width: int, factor: int) -> None:
    arr = noise(height, width, 3)
    padded = codecs.pad_to_multiple(arr, factor)
    assert padded.shape[0] % factor == 0
    assert padded.shape[1] % factor == 0
    assert padded.shape[0] - height < factor
    assert padded.shape[1] - width < factor
    assert np.array_equal(padded[:height, :width], arr)
    assert np.array_equal(padded[height:, :width], np.broadcast_to(arr[-1:], padded[height:, :width].shape))
    right = padded[:, width:]
    assert np.array_equal(right, np.broadcast_to(padded[:, width - 1 : width], right.shape))
    tensor = codecs.to_model_input(arr, factor)
    assert tensor.shape == (3, padded.shape[0], padded.shape[1])
    assert float(tensor.min()) >= -1.0
    assert float(tensor.max()) <= 1.0


@SETTINGS
@given(
    st.sampled_from(sorted(codecs.TENSOR_DTYPES)),
    st.lists(st.integers(1, 5), min_size=1, max_size=4),
    st.data(),
)
def test_tensor_round_trip_and_wrong_size_is_a_422(dtype: str, shape: list[int], data: st.DataObject) -> None:
    torch_dtype = codecs.TENSOR_DTYPES[dtype]
    count = int(np.prod(shape))
    raw = data.draw(st.binary(min_size=count * torch_dtype.itemsize, max_size=count * torch_dtype.itemsize))
    tensor = codecs.read_tensor(raw, shape, dtype)
    assert list(tensor.shape) == shape
    assert tensor.dtype == torch_dtype
    assert codecs.tensor_bytes(tensor) == raw  # bit-exact, NaN payloads included
    wrong = data.draw(st.integers(0, len(raw) + 16).filter(lambda n: n != len(raw)))
    with pytest.raises(ServiceError) as refused:
        codecs.read_tensor((raw + b"\0" * 16)[:wrong], shape, dtype)
    assert refused.value.status == 422


@SETTINGS
@given(st.binary(max_size=512), st.text(max_size=64))
def test_base64_round_trips_and_garbage_is_a_400(data: bytes, text: str) -> None:
    assert codecs.b64decode(codecs.b64encode(data), "x") == data
    assert codecs.b64decode("data:image/png;base64," + codecs.b64encode(data), "x") == data
    _, error = _outcome(codecs.b64decode, text, "x")
    if error is not None:
        assert (error.status, error.code) == (400, "invalid_base64")


def test_png_saved_with_odd_modes_round_trips_through_pillow() -> None:
    """A sanity anchor for the generators above: `tests.support.images` builds real files Pillow reads back."""
    with Image.open(io.BytesIO(VALID_PNG)) as im:
        assert im.size == (10, 12)


# batcher
class RecordingEngine:
    """Computes id * 10 for each payload after yielding to the loop; fails any batch holding a poisoned id."""

    name = "prop"

    def __init__(self, poison: set[int], prefetches: bool = False) -> None:
        self.poison = poison
        self.batches: list[tuple[Op, tuple[int, ...], list[int]]] = []
        self.gate = asyncio.Event()
        self.prefetches = prefetches  # the batcher takes the next full batch early and hands it over here
        self.prefetched = 0

    def prefetch(self, op: Op, payloads: list[torch.Tensor]) -> None:
        self.prefetched += 1

    def cost(self, op: Op, shape: tuple[int, ...]) -> Cost:
        return Cost(shape[-1] * shape[-2], 0)

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
        self.batches.append((op, tuple(payloads[0].shape), ids))
        await self.gate.wait()
        await asyncio.sleep(0)
        if self.poison & set(ids):
            raise RuntimeError("poisoned batch")
        return [i * 10 for i in ids]


request_strategy = st.lists(
    st.tuples(st.sampled_from([Op.ENCODE, Op.DECODE_INDICES]), st.sampled_from([2, 3]), st.booleans()),
    min_size=1,
    max_size=4,
)  # one request: its items as (op, side, abandoned?) -- all items of a request share op and side below


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    max_batch_size=st.integers(1, 6),
    max_batch_pixels=st.integers(1, 40),
    max_queue=st.integers(1, 12),
    requests=st.lists(request_strategy, min_size=1, max_size=16),
    poison_every=st.integers(0, 7),
    prefetches=st.booleans(),
)
def test_batcher_invariants(
    max_batch_size: int,
    max_batch_pixels: int,
    max_queue: int,
    requests: list[list[tuple[Op, int, bool]]],
    poison_every: int,
    prefetches: bool,
) -> None:
    asyncio.run(
        _batcher_scenario(max_batch_size, max_batch_pixels, max_queue, requests, poison_every, prefetches),
    )


async def _batcher_scenario(
    max_batch_size: int,
    max_batch_pixels: int,
    max_queue: int,
    requests: list[list[tuple[Op, int, bool]]],
    poison_every: int,
    prefetches: bool,
) -> None:
    poison = set(range(1, 1000, poison_every)) if poison_every else set()
    engine = RecordingEngine(poison - {0}, prefetches)
    policy = BatchPolicy(
        max_batch_size=max_batch_size, max_batch_pixels=max_batch_pixels, max_wait_s=0.0, max_queue=max_queue
    )
    batcher = Batcher({"prop": engine}, policy, 30.0)
    batcher.start()
    try:
        # hold the engine with one request so that everything below queues behind it
        holder_ticket = batcher.admit("prop")
        holder = asyncio.create_task(holder_ticket.run(Op.ENCODE, [torch.zeros(1, 5, 5)]))
        while not engine.batches:
            await asyncio.sleep(0)

        admitted, refused, next_id = [], 0, 1
        for spec in requests:
            ticket, error = _outcome(batcher.admit, "prop")
            if error is not None:
                assert (error.status, error.code) == (429, "overloaded")
                assert int(error.headers["Retry-After"]) >= 1
                refused += 1
                continue
            op, side, _ = spec[0]
            ids = list(range(next_id, next_id + len(spec)))
            next_id += len(spec)
            task = asyncio.create_task(ticket.run(op, [torch.full((1, side, side), float(i)) for i in ids]))
            admitted.append((ticket, ids, task, spec[0][2]))
        await asyncio.sleep(0)  # every run has queued its items
        assert len(admitted) == min(len(requests), max_queue)  # the queue bound, exactly
        assert refused == len(requests) - len(admitted)

        abandoned_ids = set()
        for ticket, ids, _, abandon in admitted:
            if abandon:  # the client went away while its request waited
                ticket.close()
                abandoned_ids |= set(ids)

        engine.gate.set()
        assert (await asyncio.wait_for(holder, 10)).values == [0]
        for _, ids, task, abandon in admitted:
            (outcome,) = await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
            batches = [b for b in engine.batches if set(ids) & set(b[2])]
            if abandon:
                assert batches == []  # never computed
                assert isinstance(outcome, ServiceError)
            elif any(poison & set(b[2]) for b in batches):
                assert isinstance(outcome, ServiceError)
                assert outcome.code == "batch_failed"
            else:
                assert outcome.values == [i * 10 for i in ids]  # its own results, in order, not a neighbour's
                assert outcome.batch_size == max(len(b[2]) for b in batches)

        computed = [i for _, _, ids in engine.batches for i in ids]
        assert len(computed) == len(set(computed))  # nothing computed twice
        assert not abandoned_ids & set(computed)
        for op, shape, ids in engine.batches[1:]:
            assert len(ids) <= max_batch_size
            side = shape[-1]
            assert len(ids) == 1 or len(ids) * side * side <= max_batch_pixels
            assert op in (Op.ENCODE, Op.DECODE_INDICES)
        # every answer is in; the worker may still be finishing: a batch taken early (prefetches) that holds the
        # remaining items of a failed request drops them, and frees their slot, when the batch before it completes
        for _ in range(100):
            if batcher.pending == 0 and batcher.idle():
                break
            await asyncio.sleep(0.01)
        assert batcher.pending == 0
        assert batcher.idle()
        assert engine.prefetched <= len(engine.batches)  # a batch taken early is one the engine computes next
    finally:
        await batcher.stop()
