"""Host <-> device copies of whole batches for the engine thread: pinned buffers, non-blocking, on a copy stream.

On a CUDA device a batch is stacked straight into page-locked (pinned) host memory (torch's caching host
allocator reuses those blocks), copied with `non_blocking=True` on a stream of its own, and the compute stream
waits for that copy by an event instead of the host waiting: the host thread is free to stack the next tensors
(and the outputs' copy back) while the GPU copies. Results come back into pinned memory, non-blocking, with one
synchronisation per batch. On the CPU (and MPS) these are plain stacks and no-op moves, so the CPU path is
unchanged. Everything here runs on an engine thread (one of an engine's two computes at a time), except `prefetch`.

The next batch's copy overlaps the current batch's compute: while a batch computes, the batcher takes the next one
(when a full one waits) and `prefetch` stacks and copies its inputs on a thread of its own; the compute of that
batch then finds them on the device (`to_device` of the very same tensors) and only orders its stream after the
copy. A prefetch that no compute asks for (its items were dropped meanwhile) is forgotten after `PREFETCHED_MAX`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import torch

PREFETCHED_MAX = 4  # prefetched batches kept for a compute to claim; older ones are dropped


@dataclass
class _Copy:
    """A batch on its way to the device: the tensor, and (CUDA) the event its copy stream records when done."""

    batch: torch.Tensor
    copied: torch.cuda.Event | None


@dataclass(eq=False)  # compared by identity: its tensors have no truth value
class _Prefetch:
    tensors: tuple[torch.Tensor, ...]
    copy: Future[_Copy]
    used: Callable[[], None]  # called when a compute claims it (the engine's metric)

    def holds(self, tensors: Sequence[torch.Tensor]) -> bool:
        return len(tensors) == len(self.tensors) and all(a is b for a, b in zip(tensors, self.tensors, strict=True))


class Transfers:
    """The copies of one engine's device; `to_device`/`to_host` are the only ways batches cross."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self._lock = threading.Lock()  # `prefetch` runs on the event loop's thread, `to_device` on an engine's
        self._prefetched: deque[_Prefetch] = deque(maxlen=PREFETCHED_MAX)

    def to_device(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack CPU tensors of one shape into one batch on the device, ready for the current stream: the prefetched
        copy when `prefetch` was given these very tensors, else a copy now."""
        prefetched = self._claim(tensors)
        copy = prefetched.copy.result() if prefetched is not None else self._start_copy(tensors)
        if prefetched is not None:
            prefetched.used()
        if copy.copied is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(copy.copied)  # the GPU orders the copy before the compute; the host does not wait
            copy.batch.record_stream(compute)  # the allocator must not reuse it before the compute stream is done
        return copy.batch

    def prefetch(self, tensors: Sequence[torch.Tensor], executor: Executor, used: Callable[[], None]) -> None:
        """Start stacking and copying a batch that is to compute next, on `executor`'s thread; `to_device` of the
        same tensors takes the result (waiting for the stacking if it is still under way)."""
        entry = _Prefetch(tuple(tensors), executor.submit(self._start_copy, tensors), used)
        with self._lock:
            self._prefetched.append(entry)  # a bounded deque: the oldest unclaimed one falls out

    def _claim(self, tensors: Sequence[torch.Tensor]) -> _Prefetch | None:
        with self._lock:
            for entry in self._prefetched:
                if entry.holds(tensors):
                    self._prefetched.remove(entry)
                    return entry
        return None

    def _start_copy(self, tensors: Sequence[torch.Tensor]) -> _Copy:
        if not self.cuda:
            return _Copy(torch.stack(list(tensors)).to(self.device), None)
        first = tensors[0]
        staged = torch.empty((len(tensors), *first.shape), dtype=first.dtype, pin_memory=True)
        torch.stack(list(tensors), out=staged)
        assert self._copy_stream is not None
        with torch.cuda.stream(self._copy_stream):
            batch = staged.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        return _Copy(batch, copied)

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """A device result on the CPU (pinned, copied non-blocking, one synchronisation)."""
        if not self.cuda or tensor.device.type != "cuda":
            return tensor.cpu()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host
