"""Test doubles shared by the suite: a fake clock (trio's MockClock idea)."""

from __future__ import annotations

import threading


class FakeClock:
    """A ``time.monotonic`` stand-in that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds``; return the new time."""
        assert seconds >= 0, "time only moves forward"
        with self._lock:
            self._now += seconds
            return self._now
