"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from structlog.testing import LogCapture

from tests.drive import RUNNERS, Drive
from tests.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock at t=1000 that moves only with ``advance``."""
    return FakeClock()


@pytest.fixture
def log_events() -> Iterator[list[MutableMapping[str, Any]]]:
    """Capture structlog events (reset per test; the capture is not thread-safe,
    so read it after the threads that log have been joined)."""
    capture = LogCapture()
    structlog.configure(processors=[capture], cache_logger_on_first_use=False)
    try:
        yield capture.entries
    finally:
        structlog.reset_defaults()


@pytest.fixture(params=RUNNERS)
def drive(
    request: pytest.FixtureRequest, log_events: list[MutableMapping[str, Any]]
) -> Iterator[Drive]:
    """The runner under test, threaded or asyncio (like anyio's ``anyio_backend``)."""
    d = Drive(request.param)
    try:
        yield d
    finally:
        d.close()
