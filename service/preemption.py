"""Let a short batch in while a long one computes: the long one pauses at a module boundary, then goes on.

A tile of a large image (a 640² tile: ~1-2 s of CPU) is a batch like any other, so a small request that arrives
just after it started would wait for all of it. Instead the batcher may hand the engine one *urgent* batch while a
*preemptible* one (the tiled ops, `ops.PREEMPTIBLE_OPS`) is in progress: the urgent batch runs on the engine's
second thread, and the preemptible one waits at its next module boundary (every few milliseconds; the hook is
`service/cancellation.py`'s) until the urgent batch is done. Only one of them computes at any moment, so the two
never fight over the cores, and the paused batch's activations stay where they are (the batcher keeps the urgent
batch within the memory budget that is left).

Fairness the other way: a paused batch computes again for at least as long as the urgent work that paused it
before it lets the next one in, so a stream of small requests takes at most about half of the engine from a large
one, and the large one still finishes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class Baton:
    """Who computes on one engine: one batch at a time; a preemptible batch lets an urgent one in at a boundary."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._busy = False  # a batch holds the baton (computing, or paused with the baton lent)
        self._lent = False  # a paused preemptible batch lent the baton to one urgent batch, and gets it back after
        self._returned = False  # the urgent batch it was lent to has ended
        self._urgent_waiting = 0
        self._owed = 0.0  # seconds the preemptible batch computes before it may pause again
        self._resumed = 0.0  # when the preemptible batch last started or resumed

    @property
    def busy(self) -> bool:
        """A batch holds the baton."""
        return self._busy

    @property
    def urgent_waiting(self) -> int:
        """Urgent holders waiting to be let in."""
        return self._urgent_waiting

    @contextlib.contextmanager
    def hold(self, *, urgent: bool = False) -> Iterator[None]:
        """Compute the body holding the baton. An urgent holder is let in by a preemptible batch at its next
        module boundary (`let_urgent_in`); any other waits until the holder ends."""
        with self._cond:
            if urgent:
                self._urgent_waiting += 1
            try:
                while self._busy and not (urgent and self._lent):
                    self._cond.wait()
            finally:
                if urgent:
                    self._urgent_waiting -= 1
            borrowed = self._lent
            self._lent = False
            self._busy = True
            if not borrowed:
                self._resumed, self._owed = self._clock(), 0.0
        try:
            yield
        finally:
            with self._cond:
                if borrowed:  # back to the paused batch, before any other waiter can take it
                    self._returned = True
                else:
                    self._busy = False
                self._cond.notify_all()

    def let_urgent_in(self) -> bool:
        """Called by the preemptible batch's thread at a module boundary while it holds the baton: if an urgent
        batch waits (and this batch has computed what it is owed), lend it the baton and wait for it back. True if
        it paused."""
        if not self._urgent_waiting:  # read without the lock: the common case costs one attribute read
            return False
        with self._cond:
            if not self._urgent_waiting or self._clock() - self._resumed < self._owed:
                return False
            paused = self._clock()
            self._lent, self._returned = True, False
            self._cond.notify_all()
            while not self._returned:
                self._cond.wait()
            self._resumed = self._clock()
            self._owed = self._resumed - paused  # compute as long as the urgent work took before pausing again
            return True
