"""Host <-> device copies of whole batches for the engine thread: pinned buffers, non-blocking, on a copy stream.

On a CUDA device a batch is stacked straight into page-locked (pinned) host memory (torch's caching host
allocator reuses those blocks), copied with `non_blocking=True` on a stream of its own, and the compute stream
waits for that copy by an event instead of the host waiting: the host thread is free to stack the next tensors
(and the outputs' copy back) while the GPU copies. Results come back into pinned memory, non-blocking, with one
synchronisation per batch. On the CPU (and MPS) these are plain stacks and no-op moves, so the CPU path is
unchanged. Everything here runs on an engine thread (one of an engine's two computes at a time).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Transfers:
    """The copies of one engine's device; `to_device`/`to_host` are the only ways batches cross."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(device) if self.cuda else None

    def to_device(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack CPU tensors of one shape into one batch on the device, ready for the current stream."""
        if not self.cuda:
            return torch.stack(list(tensors)).to(self.device)
        first = tensors[0]
        staged = torch.empty((len(tensors), *first.shape), dtype=first.dtype, pin_memory=True)
        torch.stack(list(tensors), out=staged)
        assert self._copy_stream is not None
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            batch = staged.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        compute.wait_event(copied)  # the GPU orders the copy before the compute; the host does not wait
        batch.record_stream(compute)  # the allocator must not reuse it before the compute stream is done
        return batch

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """A device result on the CPU (pinned, copied non-blocking, one synchronisation)."""
        if not self.cuda or tensor.device.type != "cuda":
            return tensor.cpu()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host
