"""Helpers shared by the stdlib server tests (test_http, test_wsgi)."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from lifecycle import CancelSource
from tests.fakes import FakeApp

WAIT = 10.0  # bound on every wait expected to finish at once


def serving(srv: Any, release: Callable[[], None]) -> Iterator[Any]:
    """Fixture body: bind ``srv`` to a FakeApp, start it, yield it, stop it (bounded).

    ``release`` opens whatever the test's handlers may still be blocked on,
    before the stop, so that teardown never waits for a held request.
    """
    app = FakeApp()
    srv.lifecycle_bind(app)
    srv.app = app  # for the tests
    srv.start(CancelSource().token)
    yield srv
    release()
    srv.stop(CancelSource(timeout=WAIT).token)
    assert srv.wait_stopped(WAIT)


def connect(srv: Any) -> http.client.HTTPConnection:
    """An open keep-alive HTTP connection to ``srv``."""
    host, port = srv.address
    conn = http.client.HTTPConnection(host, port, timeout=WAIT)
    conn.connect()
    return conn


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait (bounded) until ``predicate()`` holds: for a state no event announces."""
    end = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        assert time.monotonic() < end, f"{what}: not within {timeout}s"
        pause.wait(0.002)
