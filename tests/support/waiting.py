"""Waiting in tests for something another thread or process does, with a bound: a failure names what never came."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 60.0, interval_s: float = 0.02) -> None:
    """Poll `condition` every `interval_s` until it is true; fail naming `what` after `timeout_s`."""
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, f"{what}: not in {timeout_s} s"
        time.sleep(interval_s)
