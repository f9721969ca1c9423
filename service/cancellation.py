"""Stop a batch inside its forward pass once nobody waits for any of its items.

A batch can take seconds (a 640² tile, the 1024² preview of a large image), and a request whose deadline passed or
whose client left is answered at once; without this the engine would finish the batch anyway and everything queued
behind it would wait. One process-wide forward pre-hook checks, on the engine thread only, the predicate the batcher
gave for the batch in progress, and raises `BatchAbandoned` at the next module boundary (every few milliseconds).
The same boundary is where a preemptible batch pauses to let an urgent one in (`service/preemption.py`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .errors import BatchAbandoned

_current = threading.local()  # .abandoned / .pause: the checks of the batch this thread computes, or None
_hook_lock = threading.Lock()
_hook: Any = None


def _check(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
    abandoned = getattr(_current, "abandoned", None)
    if abandoned is not None and abandoned():
        raise BatchAbandoned
    pause = getattr(_current, "pause", None)
    if pause is not None:
        pause()


@contextlib.contextmanager
def stop_when(abandoned: Callable[[], bool] | None, pause: Callable[[], None] | None = None) -> Iterator[None]:
    """Compute the body's forward passes on this thread until `abandoned()` turns true (None: never stop); at
    every module boundary call `pause()` too (a preemptible batch lets an urgent one in: service/preemption.py)."""
    global _hook
    if abandoned is None and pause is None:
        yield
        return
    with _hook_lock:
        if _hook is None:
            _hook = torch.nn.modules.module.register_module_forward_pre_hook(_check)
    _current.abandoned, _current.pause = abandoned, pause
    try:
        yield
    finally:
        _current.abandoned, _current.pause = None, None
