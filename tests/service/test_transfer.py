"""`service/transfer.py`: batches cross to the device and back; on CUDA through pinned memory on a copy stream."""

from __future__ import annotations

import pytest
import torch

from service.transfer import Transfers


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
