"""Test doubles shared by the suite: a fake clock (trio's MockClock idea), a fake app,
and the legal state moves as documented (written out independently of lifecycle._core.states)."""

from __future__ import annotations

import threading
import time

from lifecycle import AppState, CancelSource, CancelToken, ComponentState


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


class FakeApp:
    """What a server component reads of its App: a name, a shutdown token and deadline."""

    def __init__(self, shutdown_timeout: float = 30.0, name: str = "fake-app") -> None:
        self.name = name
        self._source = CancelSource()
        self.shutdown_timeout = shutdown_timeout
        self.shutdown_deadline: float | None = None

    @property
    def shutdown_token(self) -> CancelToken:
        return self._source.token

    def request_shutdown(self) -> None:
        self.shutdown_deadline = time.monotonic() + self.shutdown_timeout
        self._source.cancel("test shutdown")


_C = ComponentState
_A = AppState

# The documented moves, written out independently of lifecycle._core.states: a
# component NEW -> STARTING -> RUNNING -> STOPPING -> STOPPED, FAILED from
# STARTING, RUNNING or STOPPING (never from NEW: a component kept from starting
# by a failed dependency stays NEW, its .error says why), and with a restart
# policy RUNNING -> RESTARTING -> RUNNING | STOPPING | FAILED; an app NEW ->
# STARTING -> RUNNING -> DRAINING -> STOPPING -> STOPPED | FAILED, and
# STARTING -> STOPPING (rollback or abort).
LEGAL_COMPONENT_MOVES = {
    (_C.NEW, _C.STARTING),
    (_C.STARTING, _C.RUNNING),
    (_C.STARTING, _C.FAILED),
    (_C.RUNNING, _C.STOPPING),
    (_C.RUNNING, _C.FAILED),
    (_C.RUNNING, _C.RESTARTING),
    (_C.RESTARTING, _C.RUNNING),
    (_C.RESTARTING, _C.STOPPING),
    (_C.RESTARTING, _C.FAILED),
    (_C.STOPPING, _C.STOPPED),
    (_C.STOPPING, _C.FAILED),
}
LEGAL_APP_MOVES = {
    (_A.NEW, _A.STARTING),
    (_A.STARTING, _A.RUNNING),
    (_A.STARTING, _A.STOPPING),
    (_A.RUNNING, _A.DRAINING),
    (_A.DRAINING, _A.STOPPING),
    (_A.STOPPING, _A.STOPPED),
    (_A.STOPPING, _A.FAILED),
}
