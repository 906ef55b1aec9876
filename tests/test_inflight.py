"""InFlight: counting, refusing once closed, waiting until idle, naming what is left."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable

import pytest

import lifecycle
from lifecycle._core.tokens import DEADLINE_EXCEEDED, CancelSource, DeadlineTimer
from lifecycle._serving.inflight import (
    RequestTokens,
    cut_deadline,
    enter_scope,
    exit_scope,
    note_request,
    noted_request,
)
from lifecycle._serving.stopseq import CUT_MARGIN
from tests.fakes import FakeClock
from tests.serving import wait_until


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


# -- wake-ups: by the event, never by polling ------------------------------------------------

WAKE_LATENCY = 0.05  # seconds from the event to the waiter running again


def blocked_in_wait(tracker: lifecycle.InFlight) -> bool:
    # The waiter holds the lock from counting itself in until it waits: seen
    # under the lock, a counted waiter is blocked in the condition's wait.
    with tracker._lock:
        return tracker._waiters > 0


def timed_waiter(wait: Callable[[], object]) -> tuple[threading.Thread, list[float]]:
    """A started thread that runs ``wait()``, then records when it returned."""
    woke: list[float] = []

    def run() -> None:
        wait()
        woke.append(time.monotonic())

    thread = threading.Thread(target=run)
    thread.start()
    return thread, woke


def a_stream_and_a_request() -> tuple[lifecycle.InFlight, lifecycle.Ticket]:
    """A tracker with one long-lived unit and one ordinary one (returned)."""
    tracker = lifecycle.InFlight()
    tracker.enter("stream", long_lived=True)
    ordinary = tracker.enter("GET /")
    assert ordinary is not None
    return tracker, ordinary


@pytest.mark.realtime
def test_waiter_ignoring_long_lived_wakes_when_the_last_ordinary_unit_leaves():
    """A waiter for "only long-lived left" wakes within 50 ms of the last ordinary leave."""
    tracker, ordinary = a_stream_and_a_request()
    result: list[bool] = []
    waiter, woke = timed_waiter(
        lambda: result.append(tracker.wait_idle(timeout=5.0, ignore_long_lived=True))
    )
    wait_until(lambda: blocked_in_wait(tracker), "a waiter blocked")
    left = time.monotonic()
    tracker.leave(ordinary)
    waiter.join(5.0)
    assert result == [True]
    assert woke[0] - left < WAKE_LATENCY


@pytest.mark.realtime
def test_waiter_wakes_when_the_last_ordinary_unit_is_marked_long_lived():
    """Marking the last ordinary unit long-lived wakes a waiter that ignores long-lived work."""
    tracker = lifecycle.InFlight()
    ticket = tracker.enter("GET /events")
    assert ticket is not None
    waiter, woke = timed_waiter(lambda: tracker.wait_idle(timeout=5.0, ignore_long_lived=True))
    wait_until(lambda: blocked_in_wait(tracker), "a waiter blocked")
    marked = time.monotonic()
    tracker.mark_long_lived(ticket)
    waiter.join(5.0)
    assert ticket.long_lived
    assert woke[0] - marked < WAKE_LATENCY


@pytest.mark.realtime
def test_waiter_wakes_when_its_token_is_cancelled():
    """A waiter with a token and no deadline wakes within 50 ms of the token's cancel."""
    tracker = lifecycle.InFlight()
    tracker.enter("stuck")
    source = lifecycle.CancelSource()
    waiter, woke = timed_waiter(lambda: tracker.wait_idle(source.token))
    wait_until(lambda: blocked_in_wait(tracker), "a waiter blocked")
    cancelled = time.monotonic()
    source.cancel("stop")
    waiter.join(5.0)
    assert woke[0] - cancelled < WAKE_LATENCY


@pytest.mark.realtime
def test_async_waiter_ignoring_long_lived_wakes_when_the_last_ordinary_unit_leaves():
    """The asyncio waiter wakes within 50 ms of a leave from another thread, long-lived left."""
    tracker, ordinary = a_stream_and_a_request()
    left: list[float] = []

    def leave() -> None:
        left.append(time.monotonic())
        tracker.leave(ordinary)

    async def main() -> float:
        waiter = asyncio.ensure_future(tracker.wait_idle_async(timeout=5.0, ignore_long_lived=True))
        while not tracker._idle_callbacks:
            await asyncio.sleep(0)
        threading.Thread(target=leave).start()
        assert await asyncio.wait_for(waiter, 5.0) is True
        return time.monotonic()

    woke = asyncio.run(main())
    assert woke - left[0] < WAKE_LATENCY


def test_describe_without_a_limit_lists_every_unit():
    """describe(limit=None) names every unit: what a stop reports as cut is never capped."""
    clock = FakeClock()
    tracker = lifecycle.InFlight(clock=clock)
    for i in range(100):
        tracker.enter(f"GET /{i}")
    lines = tracker.describe(limit=None)
    assert len(lines) == 100
    assert lines[99] == "GET /99 (0.0s)"
    assert len(tracker.describe()) == 21


def test_counts_tells_ordinary_from_long_lived():
    """counts() is (ordinary, long-lived) units in progress."""
    tracker = lifecycle.InFlight()
    tracker.enter("a")
    tracker.enter("b", long_lived=True)
    ticket = tracker.enter("c")
    assert ticket is not None
    tracker.mark_long_lived(ticket)
    assert tracker.counts() == (1, 2)


def test_mark_long_lived_outside_any_request_is_false():
    """mark_long_lived() outside any server's request marks nothing and says so."""
    assert lifecycle.mark_long_lived() is False


# -- slots: one reusable ticket per connection -------------------------------------------


def test_a_slot_counts_as_in_progress_only_between_begin_and_end():
    """A slot is in progress between begin() and end(); total counts each unit it carried."""
    tracker = lifecycle.InFlight()
    slot = tracker.open_slot()
    assert slot is not None
    assert (tracker.count, tracker.total, tracker.running()) == (0, 0, [])
    for path in ("/a", "/b"):
        assert tracker.begin(slot, f"GET {path}")
        assert [t.label for t in tracker.running()] == [f"GET {path}"]
        tracker.end(slot)
    assert (tracker.count, tracker.total) == (0, 2)
    tracker.close_slot(slot)
    assert tracker.total == 2
    assert tracker.wait_idle(timeout=0)


def test_a_slot_names_its_unit_only_when_asked():
    """Without a label, a slot's describe() names the unit in progress when it is read."""
    tracker = lifecycle.InFlight()
    asked: list[str] = []

    def describe() -> str:
        asked.append("GET /orders")
        return asked[-1]

    slot = tracker.open_slot(describe)
    assert slot is not None
    assert tracker.begin(slot)
    assert asked == []
    assert tracker.running()[0].label == "GET /orders"
    assert asked == ["GET /orders"]


def test_a_closed_tracker_refuses_to_begin_in_a_slot():
    """Once closed, begin() refuses (False) and counts the refusal; open_slot() gives None."""
    tracker = lifecycle.InFlight()
    slot = tracker.open_slot()
    assert slot is not None
    tracker.close()
    assert not tracker.begin(slot, "GET /")
    assert tracker.open_slot() is None
    assert (tracker.count, tracker.refused) == (0, 2)


@pytest.mark.realtime
def test_waiter_wakes_when_a_slot_ends_without_the_lock():
    """end() takes no lock on the hot path, yet a waiter wakes within 50 ms of it."""
    tracker = lifecycle.InFlight()
    slot = tracker.open_slot()
    assert slot is not None
    assert tracker.begin(slot, "GET /")
    waiter, woke = timed_waiter(lambda: tracker.wait_idle(timeout=5.0))
    wait_until(lambda: blocked_in_wait(tracker), "a waiter blocked")
    ended = time.monotonic()
    tracker.end(slot)
    waiter.join(5.0)
    assert woke[0] - ended < WAKE_LATENCY


# -- request deadlines and the request scope -------------------------------------------------


def test_the_deadline_of_work_begun_while_draining_is_a_margin_before_its_cut() -> None:
    """cut_deadline: from the shutdown deadline alone, a margin before the cut a stop ending
    by it makes; with the stop's request deadline, the earlier of the two."""
    now = lambda: 100.0  # noqa: E731 - a fixed clock
    assert cut_deadline(130.0, None, clock=now) == pytest.approx(130.0 - 2 * CUT_MARGIN)
    # A short budget keeps a tenth of it at each step, as the cut does.
    assert cut_deadline(100.5, None, clock=now) == pytest.approx(100.405)
    assert cut_deadline(130.0, 120.0, clock=now) == 120.0
    assert cut_deadline(110.0, 125.0, clock=now) == pytest.approx(110.0 - 2 * CUT_MARGIN)
    assert cut_deadline(None, 125.0, clock=now) == 125.0
    assert cut_deadline(None, None, clock=now) is None


class _Scope:
    def __init__(self, answer: bool | None) -> None:
        self.answer = answer
        self.calls = 0

    def _lc_mark_long_lived(self) -> bool | None:
        self.calls += 1
        return self.answer


@pytest.mark.parametrize(("answer", "expected"), [(False, False), (True, True), (None, True)])
def test_mark_long_lived_says_whether_the_scope_had_a_request_of_this_context(
    answer: bool | None, expected: bool
) -> None:
    """mark_long_lived() is False when the scope has no request of this context (it ended)."""
    scope = _Scope(answer)
    reset = enter_scope(scope)
    try:
        assert lifecycle.mark_long_lived() is expected
    finally:
        exit_scope(reset)
    assert scope.calls == 1
    assert lifecycle.mark_long_lived() is False


def test_a_noted_request_is_seen_by_copies_of_the_context_only_as_it_was() -> None:
    """note_request: a copy of the context keeps the request it was copied in."""

    def serve() -> tuple[int, int]:
        note_request(7)
        copy = contextvars.copy_context()
        note_request(8)  # the next request in the same context
        return copy.run(noted_request), noted_request()

    assert contextvars.Context().run(serve) == (7, 8)
    assert contextvars.Context().run(noted_request) == 0  # outside any request


def test_tokens_begun_in_the_drain_delay_are_due_at_the_stops_request_deadline() -> None:
    """Work begun before the stop carries the shutdown's deadline (an upper bound): once the
    stop says its requests are due at requests_by, that token, and what descends from it,
    is cancelled then with DEADLINE_EXCEEDED; the root is not."""
    clock = FakeClock(100.0)
    timer = DeadlineTimer(clock, threaded=False)
    tokens = RequestTokens(timer=timer)
    during = tokens.draining(lambda: 129.6)  # 30 s of shutdown left
    own = CancelSource(during)  # a long-lived request's token, marked in the drain
    assert during.deadline == 129.6
    tokens.renew(101.8)  # the stop begins: its requests are due at 101.8
    after = tokens.draining(lambda: 129.6)
    assert after is not during
    assert after.deadline == 101.8
    clock.advance(1.7)
    timer.fire_due()
    assert not during.cancelled
    clock.advance(0.2)
    timer.fire_due()
    assert during.reason == DEADLINE_EXCEEDED
    assert own.token.reason == DEADLINE_EXCEEDED
    assert after.reason == DEADLINE_EXCEEDED
    assert not tokens.root.cancelled
    tokens.close()


def test_a_drain_token_due_before_the_stops_deadline_keeps_its_own() -> None:
    """No earlier cancel is added when the drain's token is due first; a renew without a
    deadline (a stop that never cuts) leaves it as it was; one without a deadline of its own
    (no shutdown deadline) is due at the stop's; with no drain-delay token, nothing is armed."""
    clock = FakeClock(100.0)
    timer = DeadlineTimer(clock, threaded=False)
    tokens = RequestTokens(timer=timer)
    during = tokens.draining(lambda: 101.0)
    tokens.renew(105.0)
    clock.advance(1.0)
    timer.fire_due()
    assert during.reason == DEADLINE_EXCEEDED
    late = RequestTokens(timer=timer)
    kept = late.draining(lambda: 200.0)
    late.renew(None)
    clock.advance(50.0)
    timer.fire_due()
    assert not kept.cancelled
    unbounded = RequestTokens(timer=timer)
    free = unbounded.draining(lambda: None)  # a shutdown with no deadline
    unbounded.renew(clock() + 5.0)
    clock.advance(5.0)
    timer.fire_due()
    assert free.reason == DEADLINE_EXCEEDED
    assert not unbounded.root.cancelled
    quiet = RequestTokens(timer=timer)
    quiet.renew(110.0)  # no request began in the drain delay: nothing to cancel early
    assert quiet.draining(lambda: 200.0).deadline == 110.0
    for t in (tokens, late, unbounded, quiet):
        t.close()
