"""InFlight: counting, refusing once closed, waiting until idle, naming what is left."""

from __future__ import annotations

import asyncio
import threading

import pytest

import lifecycle
from tests.fakes import FakeClock


def test_enter_and_leave_count() -> None:
    """enter() adds one unit in progress and leave() removes it."""
    tracker = lifecycle.InFlight("jobs")
    a = tracker.enter("a")
    b = tracker.enter("b")
    assert a is not None
    assert b is not None
    assert tracker.count == 2
    tracker.leave(a)
    assert tracker.count == 1
    assert tracker.total == 2


def test_leave_is_idempotent() -> None:
    """Leaving the same ticket twice counts once."""
    tracker = lifecycle.InFlight()
    ticket = tracker.enter()
    assert ticket is not None
    tracker.leave(ticket)
    tracker.leave(ticket)
    assert tracker.count == 0


def test_closed_tracker_refuses_new_work() -> None:
    """After close(), enter() returns None and track() raises Refused naming the tracker."""
    tracker = lifecycle.InFlight("http:8080 requests")
    tracker.close()
    assert tracker.enter("GET /") is None
    with (
        pytest.raises(lifecycle.Refused, match=r"'http:8080 requests' is closed"),
        tracker.track("GET /"),
    ):
        pass
    assert tracker.refused == 2


def test_work_in_progress_goes_on_after_close() -> None:
    """close() refuses new work but does not touch what is in progress."""
    tracker = lifecycle.InFlight()
    ticket = tracker.enter("slow")
    tracker.close()
    assert tracker.count == 1
    assert ticket is not None
    tracker.leave(ticket)
    assert tracker.count == 0


def test_track_leaves_on_error() -> None:
    """track() leaves even when the block raises."""
    tracker = lifecycle.InFlight()
    with pytest.raises(ZeroDivisionError), tracker.track("boom"):
        _ = 1 / 0
    assert tracker.count == 0


def test_wait_idle_returns_at_once_when_idle() -> None:
    """wait_idle() on an idle tracker returns True immediately."""
    assert lifecycle.InFlight().wait_idle(timeout=0) is True


def test_wait_idle_wakes_when_the_last_unit_leaves() -> None:
    """A thread blocked in wait_idle() wakes when the last unit leaves."""
    tracker = lifecycle.InFlight()
    ticket = tracker.enter("x")
    assert ticket is not None
    result: list[bool] = []
    waiting = threading.Thread(target=lambda: result.append(tracker.wait_idle(timeout=10)))
    waiting.start()
    tracker.leave(ticket)
    waiting.join(5)
    assert not waiting.is_alive()
    assert result == [True]


def test_wait_idle_gives_up_when_the_token_is_cancelled() -> None:
    """wait_idle(token) returns False as soon as the token is cancelled."""
    tracker = lifecycle.InFlight()
    tracker.enter("stuck")
    source = lifecycle.CancelSource()
    result: list[bool] = []
    waiting = threading.Thread(target=lambda: result.append(tracker.wait_idle(source.token)))
    waiting.start()
    source.cancel("deadline")
    waiting.join(5)
    assert not waiting.is_alive()
    assert result == [False]


def test_wait_idle_respects_an_expired_deadline() -> None:
    """wait_idle(token) with a deadline already passed returns False without blocking."""
    tracker = lifecycle.InFlight()
    tracker.enter("stuck")
    with lifecycle.CancelSource(timeout=0) as source:
        assert tracker.wait_idle(source.token) is False


def test_wait_idle_can_ignore_long_lived_units() -> None:
    """With ignore_long_lived, only long-lived units left counts as idle."""
    tracker = lifecycle.InFlight()
    tracker.enter("stream", long_lived=True)
    assert tracker.wait_idle(timeout=0, ignore_long_lived=True) is True
    assert tracker.wait_idle(timeout=0) is False


def test_describe_names_what_is_running_oldest_first() -> None:
    """describe() lists labels with their age, oldest first, and truncates."""
    clock = FakeClock()
    tracker = lifecycle.InFlight(clock=clock)
    tracker.enter("GET /old")
    clock.advance(2.0)
    tracker.enter("GET /new")
    clock.advance(1.0)
    assert tracker.describe() == ["GET /old (3.0s)", "GET /new (1.0s)"]
    assert tracker.describe(limit=1) == ["GET /old (3.0s)", "... and 1 more"]


def test_wait_idle_async_wakes_on_leave_from_another_thread() -> None:
    """wait_idle_async() wakes when another thread ends the last unit."""
    tracker = lifecycle.InFlight()
    ticket = tracker.enter("x")
    assert ticket is not None

    async def main() -> bool:
        waiter = asyncio.ensure_future(tracker.wait_idle_async(timeout=10))
        await asyncio.sleep(0)
        threading.Thread(target=tracker.leave, args=(ticket,)).start()
        return await asyncio.wait_for(waiter, 5)

    assert asyncio.run(main()) is True


def test_wait_idle_async_gives_up_on_cancel() -> None:
    """wait_idle_async(token) returns False when the token is cancelled."""
    tracker = lifecycle.InFlight()
    tracker.enter("stuck")
    source = lifecycle.CancelSource()

    async def main() -> bool:
        waiter = asyncio.ensure_future(tracker.wait_idle_async(source.token))
        await asyncio.sleep(0)
        source.cancel("deadline")
        return await asyncio.wait_for(waiter, 5)

    assert asyncio.run(main()) is False
