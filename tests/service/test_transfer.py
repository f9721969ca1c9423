"""`service/transfer.py`: batches cross to the device and back; on CUDA through pinned memory on a copy stream."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.transfer import PREFETCHED_MAX, Transfers


def test_cpu_transfers_are_plain_stacks() -> None:
    items = [torch.full((3, 4, 5), float(i)) for i in range(3)]
    moves = Transfers(torch.device("cpu"))
    batch = moves.to_device(items)
    assert torch.equal(batch, torch.stack(items))
    assert moves.to_host(batch) is batch  # already on the host: no copy


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_transfers_are_pinned_and_ordered() -> None:
    device = torch.device("cuda")
    moves = Transfers(device)
    items = [torch.randn(3, 64, 64) for _ in range(4)]
    batch = moves.to_device(items)
    assert batch.device.type == "cuda"
    result = moves.to_host((batch * 2).contiguous(memory_format=torch.channels_last))
    assert result.is_pinned()
    assert torch.equal(result, torch.stack(items) * 2)
    indices = moves.to_host(torch.arange(10, device=device, dtype=torch.int32))
    assert indices.tolist() == list(range(10))


def test_a_prefetched_batch_is_claimed_by_the_compute_of_the_same_tensors() -> None:
    """`prefetch` stacks on its executor's thread; `to_device` of those very tensors takes that stack (no second
    copy, `used` called once); other tensors, even equal ones, are copied anew."""
    items = [torch.full((3, 4, 5), float(i)) for i in range(3)]
    moves = Transfers(torch.device("cpu"))
    claimed: list[int] = []
    with ThreadPoolExecutor(1) as copier:
        moves.prefetch(items, copier, lambda: claimed.append(1))
        equal = [t.clone() for t in items]
        other = moves.to_device(equal)
        assert claimed == []  # equal values are not the batch that was prefetched
        batch = moves.to_device(list(items))
        assert claimed == [1]
        assert torch.equal(batch, torch.stack(items))
        assert torch.equal(other, batch)
        again = moves.to_device(items)  # claimed once: a later compute of the same tensors copies again
        assert claimed == [1]
        assert again is not batch


def test_unclaimed_prefetches_are_forgotten_beyond_the_bound() -> None:
    """A prefetched batch whose items were dropped before compute is never claimed; only the newest few are kept."""
    moves = Transfers(torch.device("cpu"))
    batches = [[torch.full((2, 2), float(i))] for i in range(PREFETCHED_MAX + 2)]
    claimed: list[int] = []
    with ThreadPoolExecutor(1) as copier:
        for i, batch in enumerate(batches):
            moves.prefetch(batch, copier, lambda i=i: claimed.append(i))  # type: ignore[misc]
        moves.to_device(batches[0])  # the oldest fell out: copied anew
        moves.to_device(batches[-1])
    assert claimed == [PREFETCHED_MAX + 1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_prefetch_copies_on_the_copy_stream_and_the_compute_waits_for_it() -> None:
    device = torch.device("cuda")
    moves = Transfers(device)
    items = [torch.randn(3, 256, 256) for _ in range(8)]
    claimed: list[int] = []
    with ThreadPoolExecutor(1) as copier:
        moves.prefetch(items, copier, lambda: claimed.append(1))
        batch = moves.to_device(items)
    assert claimed == [1]
    assert batch.device.type == "cuda"
    assert torch.equal(moves.to_host(batch * 1), torch.stack(items))
