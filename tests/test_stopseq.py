"""Tests of `lifecycle._serving.stopseq`: the one stop sequence, sans-I/O, and its two drivers.

The sequence is driven on plain numbers (no clock, no thread); the drivers
run against fake operations on a fake clock and a non-threaded deadline timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lifecycle
from lifecycle import CancelSource, CancelToken, DeadlineExceeded, DeadlineTimer
from lifecycle._serving.stopseq import (
    CUT_MARGIN,
    FORCE_JOIN,
    LOG_CUT_LIMIT,
    Action,
    CloseIdle,
    CloseListener,
    Cut,
    Drain,
    EndLongLived,
    Finish,
    Join,
    StopSequence,
    Wait,
    Waiting,
    Work,
    cut_time,
    drive_async,
    drive_sync,
    request_deadline,
)
from tests.fakes import FakeClock

T0 = 100.0
NONE = Work()


def run(
    seq: StopSequence,
    script: Callable[[Action, float], tuple[float, Work]],
    *,
    now: float = T0,
    work: Work = NONE,
    limit: int = 100,
) -> list[Action]:
    """Step ``seq`` until Finish; ``script(action, now)`` gives the next (now, work)."""
    actions: list[Action] = []
    for _ in range(limit):
        action = seq.next(now, work)
        actions.append(action)
        if isinstance(action, Finish):
            return actions
        if isinstance(action, Cut):
            seq.cut_done([f"cut {i}" for i in range(work.requests)])
        now, work = script(action, now)
    raise AssertionError(f"no Finish after {limit} steps: {actions[-5:]}")


def kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ + (f"({a.what})" if isinstance(a, Wait) else "") for a in actions]


# -- the order of the steps ----------------------------------------------------------------


def test_no_work_runs_every_step_once_in_order():
    """With nothing in progress: drain, close the listener, close idle, end streams, join, done."""
    seq = StopSequence("s", now=T0, deadline=T0 + 10)
    actions = run(seq, lambda a, now: (now, NONE))
    assert actions == [
        Drain(T0 + 10, requests_by=request_deadline(T0, T0 + 10)),
        CloseListener(T0 + 10 - CUT_MARGIN),
        CloseIdle(),
        EndLongLived(),
        Join(T0 + 10 - CUT_MARGIN),
        Finish(()),
    ]
    assert seq.done
    assert seq.next(T0, NONE) == Finish(())


def test_a_middleware_has_no_listener_connections_or_join():
    """Without sockets the sequence is drain, wait, end long-lived, wait, done."""
    seq = StopSequence("mw", now=T0, deadline=None, sockets=False)
    works = iter([Work(long_lived=1), NONE])
    current = [Work(ordinary=1)]

    def script(action: Action, now: float) -> tuple[float, Work]:
        if isinstance(action, Wait):
            current[0] = next(works)
        return now + 1, current[0]

    actions = run(seq, script, work=Work(ordinary=1))
    assert kinds(actions) == [
        "Drain",
        "Wait(ordinary)",
        "EndLongLived",
        "Wait(requests)",
        "Finish",
    ]
    assert actions[1] == Wait("ordinary", None)


def test_ordinary_requests_are_waited_for_before_long_lived_ones_are_ended():
    """EndLongLived comes once no ordinary request is left; then every request is waited for."""
    seq = StopSequence("s", now=T0, deadline=T0 + 10)
    plan = {
        "Wait(ordinary)": [Work(ordinary=1, long_lived=2), Work(long_lived=2)],
        "Wait(requests)": [Work(long_lived=1), Work(connections=1)],
        "Wait(connections)": [NONE],
    }

    def script(action: Action, now: float) -> tuple[float, Work]:
        key = kinds([action])[0]
        if plan.get(key):
            return now + 0.5, plan[key].pop(0)
        return now, current[0]

    current = [Work(ordinary=2, long_lived=2)]
    seq_actions: list[Action] = []
    now, work = T0, current[0]
    for _ in range(50):
        action = seq.next(now, work)
        seq_actions.append(action)
        if isinstance(action, Finish):
            break
        now, work = script(action, now)
        current[0] = work
    assert kinds(seq_actions) == [
        "Drain",
        "CloseListener",
        "CloseIdle",
        "Wait(ordinary)",
        "Wait(ordinary)",
        "EndLongLived",
        "Wait(requests)",
        "Wait(requests)",
        "CloseIdle",
        "Wait(connections)",
        "CloseIdle",
        "Join",
        "Finish",
    ]
    assert seq_actions[-1] == Finish(())


def test_only_long_lived_requests_are_ended_at_once():
    """With only long-lived requests in flight, EndLongLived follows the listener's close."""
    seq = StopSequence("s", now=T0, deadline=T0 + 10)
    assert kinds([seq.next(T0, Work(long_lived=3)) for _ in range(4)]) == [
        "Drain",
        "CloseListener",
        "CloseIdle",
        "EndLongLived",
    ]
    assert seq.next(T0, Work(long_lived=3)) == Wait("requests", T0 + 10 - CUT_MARGIN)


def test_a_request_arriving_during_the_stop_is_waited_for():
    """A request begun on an open connection during the stop holds it like the others."""
    seq = StopSequence("s", now=T0, deadline=None)
    for _ in range(4):
        seq.next(T0, NONE)  # Drain, CloseListener, CloseIdle, EndLongLived
    assert seq.next(T0, Work(ordinary=1, connections=1)) == Wait("requests", None)
    assert seq.next(T0, Work(ordinary=1, connections=1)) == Wait("requests", None)


def test_idle_connections_are_closed_before_every_connection_wait():
    """While only connections remain, each wait is preceded by a CloseIdle."""
    seq = StopSequence("s", now=T0, deadline=None)
    work = Work(connections=2)
    got = kinds([seq.next(T0, work) for _ in range(9)])
    assert got == [
        "Drain",
        "CloseListener",
        "CloseIdle",
        "EndLongLived",
        "Wait(connections)",
        "CloseIdle",
        "Wait(connections)",
        "CloseIdle",
        "Wait(connections)",
    ]


def test_idle_recheck_time_bounds_the_wait_and_brings_a_new_close_idle():
    """A connection still in its first-request grace is looked at again when the grace ends."""
    seq = StopSequence("s", now=T0, deadline=T0 + 10)
    seq.next(T0, NONE)
    seq.next(T0, NONE)
    assert seq.next(T0, Work(ordinary=1)) == CloseIdle()
    seq.idle_closed(T0 + 1)
    assert seq.next(T0, Work(ordinary=1)) == Wait("ordinary", T0 + 1)
    assert seq.next(T0 + 1, Work(ordinary=1)) == CloseIdle()
    seq.idle_closed(None)
    assert seq.next(T0 + 1, Work(ordinary=1)) == Wait("ordinary", T0 + 10 - CUT_MARGIN)


# -- the deadline ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase_work", "expected_before_cut"),
    [
        (Work(ordinary=1), "Wait(ordinary)"),
        (Work(long_lived=1), "Wait(requests)"),
        (Work(connections=1), "Wait(connections)"),
    ],
)
def test_the_deadline_cuts_from_each_wait(phase_work, expected_before_cut):
    """Reaching deadline - CUT_MARGIN in any wait cuts, joins with half what is left, finishes."""
    deadline = T0 + 10
    seq = StopSequence("s", now=T0, deadline=deadline)
    actions = []
    for _ in range(5):
        actions.append(seq.next(T0, phase_work))
        if isinstance(actions[-1], Wait):
            break
    assert kinds(actions)[-1] == expected_before_cut
    cut_at = deadline - CUT_MARGIN
    assert seq.next(cut_at, phase_work) == Cut()
    seq.cut_done(["GET /slow (9.9s)"] if phase_work.requests else [])
    assert seq.next(cut_at, phase_work) == Join(cut_at + CUT_MARGIN / 2)
    expected = ("GET /slow (9.9s)",) if phase_work.requests else ()
    assert seq.next(cut_at, phase_work) == Finish(expected)
    assert seq.cut == expected


def test_just_before_the_cut_time_it_still_waits():
    """One tick before the cut time the sequence waits, until exactly the cut time."""
    seq = StopSequence("s", now=T0, deadline=T0 + 10)
    for _ in range(3):
        seq.next(T0, Work(ordinary=1))
    cut_at = T0 + 10 - CUT_MARGIN
    assert seq.next(cut_at - 1e-6, Work(ordinary=1)) == Wait("ordinary", cut_at)
    assert seq.next(cut_at, Work(ordinary=1)) == Cut()


def test_a_deadline_already_passed_still_closes_the_listener_then_cuts():
    """A stop that begins past its deadline closes the listener first, then cuts at once."""
    seq = StopSequence("s", now=T0, deadline=T0 - 1)
    work = Work(ordinary=1)
    assert seq.next(T0, work) == Drain(T0 - 1, requests_by=T0 - 1)
    assert seq.next(T0, work) == CloseListener(T0 - 1)
    assert seq.next(T0, work) == Cut()
    seq.cut_done(["GET /"])
    assert seq.next(T0, work) == Join(T0)
    assert seq.next(T0, work) == Finish(("GET /",))


def test_the_deadline_passing_during_the_listener_close_cuts_next():
    """If closing the listener took the whole budget, the next step is the cut."""
    seq = StopSequence("s", now=T0, deadline=T0 + 1)
    seq.next(T0, NONE)
    seq.next(T0, NONE)
    assert seq.next(T0 + 1, Work(ordinary=1)) == Cut()


def test_a_join_that_overruns_the_cut_time_cuts():
    """Handlers still alive at the cut time (the join failed) are cut."""
    seq = StopSequence("s", now=T0, deadline=T0 + 10)
    got = [seq.next(T0, NONE) for _ in range(5)]
    assert got[-1] == Join(T0 + 10 - CUT_MARGIN)
    seq.joined(False)
    assert seq.next(T0 + 10 - CUT_MARGIN, NONE) == Cut()
    seq.cut_done([])
    assert isinstance(seq.next(T0 + 9.9, NONE), Join)
    assert seq.next(T0 + 9.95, NONE) == Finish(())


def test_a_join_that_succeeds_at_the_cut_time_finishes_clean():
    """A join that returned True is no cut, even if it returned exactly at the cut time."""
    seq = StopSequence("s", now=T0, deadline=T0 + 10)
    for _ in range(5):
        seq.next(T0, NONE)
    seq.joined(True)
    assert seq.next(T0 + 20, NONE) == Finish(())


def test_a_cancelled_stop_token_cuts_at_once():
    """A stop token cancelled early (before its deadline) cuts at the next step."""
    seq = StopSequence("s", now=T0, deadline=None)
    for _ in range(3):
        seq.next(T0, Work(ordinary=1))
    assert seq.next(T0, Work(ordinary=1), cancelled=True) == Cut()
    seq.cut_done(["GET /"])
    assert seq.next(T0, Work(ordinary=1)) == Join(T0 + FORCE_JOIN)


def test_without_a_deadline_nothing_is_ever_cut():
    """No deadline: the waits are unbounded and the sequence waits as long as work remains."""
    seq = StopSequence("s", now=T0, deadline=None)
    assert seq.cut_at is None
    for _ in range(3):
        seq.next(T0, Work(ordinary=1))
    assert seq.next(T0 + 1e9, Work(ordinary=1)) == Wait("ordinary", None)


@pytest.mark.parametrize(
    ("budget", "margin"),
    [(10.0, CUT_MARGIN), (1.0, CUT_MARGIN), (0.5, 0.05), (0.0, 0.0), (-3.0, 0.0)],
)
def test_cut_margin_is_a_tenth_of_a_short_budget(budget, margin):
    """The cut comes CUT_MARGIN before the deadline, or a tenth of a budget under 1 s."""
    assert cut_time(T0, T0 + budget) == pytest.approx(T0 + budget - margin)
    assert cut_time(T0, None) is None
    assert CUT_MARGIN == 0.1


@pytest.mark.parametrize(
    ("budget", "cut_after", "requests_after"),
    [(10.0, 9.9, 9.8), (0.5, 0.45, 0.405), (0.05, 0.045, 0.0405)],
)
def test_requests_begun_during_the_stop_are_due_a_margin_before_the_cut(
    budget, cut_after, requests_after
):
    """Drain gives requests a deadline before the cut by the cut's own rule: room to answer."""
    seq = StopSequence("s", now=T0, deadline=T0 + budget)
    assert seq.cut_at == pytest.approx(T0 + cut_after)
    assert seq.requests_by == pytest.approx(T0 + requests_after)
    assert request_deadline(T0, T0 + budget) == seq.requests_by
    drain = seq.next(T0, NONE)
    assert drain == Drain(T0 + budget, requests_by=seq.requests_by)
    assert StopSequence("s", now=T0, deadline=None).requests_by is None


def test_the_drivers_pass_the_request_deadline_to_drain():
    """drive_sync and drive_async hand the server the requests' deadline, not the stop's."""
    ops, token = fake(10.0, Work(ordinary=1), [])
    ops.leave_after["ordinary"] = 1.0
    began = ops.clock()
    drive_sync(ops, token, name="s", clock=ops.clock)
    assert ops.drained == [pytest.approx(began + 10.0 - 2 * CUT_MARGIN)]
    aops, atoken = fake(10.0, Work(ordinary=1), [], AsyncFakeOps)
    aops.leave_after["ordinary"] = 1.0
    began = aops.clock()
    asyncio.run(drive_async(aops, atoken, name="aio", clock=aops.clock))
    assert aops.drained == [pytest.approx(began + 10.0 - 2 * CUT_MARGIN)]


def test_every_cut_label_is_kept():
    """The labels fed after a cut are all kept: 100 cut reads as 100."""
    seq = StopSequence("s", now=T0, deadline=T0 + 1)
    seq.next(T0, NONE)
    seq.next(T0, NONE)
    assert seq.next(T0 + 1, Work(ordinary=100)) == Cut()
    labels = [f"GET /{i} (1.0s)" for i in range(100)]
    seq.cut_done(labels)
    seq.next(T0 + 1, NONE)
    finish = seq.next(T0 + 1, NONE)
    assert finish == Finish(tuple(labels))
    assert len(seq.cut) == 100


# -- properties over random runs ---------------------------------------------------------------

works = st.builds(
    Work,
    ordinary=st.integers(0, 3),
    long_lived=st.integers(0, 3),
    connections=st.integers(0, 3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    budget=st.one_of(st.none(), st.floats(-1.0, 20.0)),
    sockets=st.booleans(),
    steps=st.lists(st.tuples(st.floats(0.0, 3.0), works, st.booleans()), max_size=40),
)
def test_the_order_holds_over_random_runs(budget, sockets, steps):
    """Over any times and work: the steps come in order, the cut only at its time, Finish last."""
    deadline = None if budget is None else T0 + budget
    seq = StopSequence("s", now=T0, deadline=deadline, sockets=sockets)
    cut_at = seq.cut_at
    now = T0
    seen: list[Action] = []
    # Once the scripted steps run out, time jumps past any deadline and work ends.
    tail = [(1e6, NONE, False)] * 30
    for dt, work, cancelled in [*steps, *tail]:
        now += dt
        action = seq.next(now, work, cancelled=cancelled)
        seen.append(action)
        if isinstance(action, Cut):
            assert cancelled or (cut_at is not None and now >= cut_at)
            seq.cut_done(["x"] if work.requests else [])
        if isinstance(action, Join):
            seq.joined(work.connections == 0)
        if isinstance(action, Wait):
            assert action.until is None or cut_at is None or action.until <= cut_at
        if isinstance(action, Finish):
            break
    names = [type(a).__name__ for a in seen]
    assert names[0] == "Drain"
    assert names[-1] == "Finish"
    assert names.count("Drain") == 1
    assert names.count("Cut") <= 1
    assert names.count("EndLongLived") <= 1
    if sockets:
        assert names[1] == "CloseListener"
    else:
        assert not {"CloseListener", "CloseIdle"} & set(names)
    if "Cut" in names:
        after = names[names.index("Cut") + 1 :]
        assert after == ["Join", "Finish"]
        assert "EndLongLived" not in after
    finish = seen[-1]
    assert isinstance(finish, Finish)
    assert finish.cut == seq.cut


# -- the drivers ------------------------------------------------------------------------------


class FakeOps:
    """Stop operations on a fake clock: requests leave when the script says so."""

    def __init__(self, clock: FakeClock, timer: DeadlineTimer, work: Work, labels: list[str]):
        self.clock = clock
        self.timer = timer
        self.current = work
        self.labels = labels
        self.calls: list[str] = []
        self.leave_after: dict[Waiting, float] = {}
        self.fail_on: str | None = None
        self.drained: list[float | None] = []

    def _record(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_on:
            raise OSError(f"{name} failed")

    def work(self) -> Work:
        return self.current

    def drain(self, deadline: float | None) -> None:
        self.drained.append(deadline)
        self._record("drain")

    def close_listener(self, timeout: float | None) -> None:
        self._record("close_listener")

    def close_idle(self, now: float) -> float | None:
        self._record("close_idle")
        return None

    def wait(self, what: Waiting, timeout: float | None, token: CancelToken) -> None:
        self._record(f"wait {what}")
        after = self.leave_after.get(what)
        if after is not None and (timeout is None or after <= timeout):
            self.clock.advance(after)
            self.current = NONE
        else:
            assert timeout is not None, "the fake would wait forever"
            self.clock.advance(timeout)
        self.timer.fire_due()

    def end_long_lived(self) -> None:
        self._record("end_long_lived")

    def cut(self) -> list[str]:
        self._record("cut")
        return list(self.labels)

    def join(self, timeout: float | None) -> bool:
        self._record("join")
        return True


class AsyncFakeOps(FakeOps):
    async def close_listener(self, timeout: float | None) -> None:  # type: ignore[override]
        FakeOps.close_listener(self, timeout)

    async def wait(self, what: Waiting, timeout: float | None, token: CancelToken) -> None:  # type: ignore[override]
        if self.fail_on == "hang":
            await asyncio.Event().wait()
        FakeOps.wait(self, what, timeout, token)

    async def join(self, timeout: float | None) -> bool:  # type: ignore[override]
        return FakeOps.join(self, timeout)


def fake(budget: float, work: Work, labels: list[str], cls: type[FakeOps] = FakeOps):
    clock = FakeClock()
    timer = DeadlineTimer(clock, threaded=False)
    token = CancelSource(timeout=budget, timer=timer).token
    return cls(clock, timer, work, labels), token


def test_drive_sync_returns_when_the_work_ends_in_time():
    """The sync driver carries the steps out in order and returns when nothing was cut."""
    ops, token = fake(10.0, Work(ordinary=1), [])
    ops.leave_after["ordinary"] = 1.0
    seq = drive_sync(ops, token, name="s", clock=ops.clock)
    assert ops.calls == [
        "drain",
        "close_listener",
        "close_idle",
        "wait ordinary",
        "end_long_lived",
        "join",
    ]
    assert seq.cut == ()


def test_drive_sync_raises_deadline_exceeded_naming_every_cut_request(log_events):
    """100 requests cut: DeadlineExceeded.cut holds 100 labels; the log shows 20 and the count."""
    labels = [f"GET /{i} (1.0s)" for i in range(100)]
    ops, token = fake(1.0, Work(ordinary=100), labels)
    with pytest.raises(DeadlineExceeded) as raised:
        drive_sync(ops, token, name="api", clock=ops.clock)
    assert raised.value.cut == labels
    assert "cut 100 unfinished request(s)" in str(raised.value)
    assert ops.calls[-2:] == ["cut", "join"]
    assert isinstance(raised.value, lifecycle.LifecycleError)
    events = [e for e in log_events if e["event"] == "work cut at the stop deadline"]
    assert len(events) == 1
    assert events[0]["cut"] == 100
    assert events[0]["running"] == [*labels[:LOG_CUT_LIMIT], "... and 80 more"]


def test_drive_sync_cuts_before_the_deadline_by_the_margin():
    """The sync driver cuts CUT_MARGIN before the token's deadline, not at it."""
    ops, token = fake(10.0, Work(ordinary=1), ["GET /stuck (9.9s)"])
    began = ops.clock()
    with pytest.raises(DeadlineExceeded):
        drive_sync(ops, token, name="s", clock=ops.clock)
    assert ops.clock() - began == pytest.approx(10.0 - CUT_MARGIN)
    assert not token.cancelled


def test_drive_sync_cuts_what_remains_when_an_operation_raises():
    """An operation that raises: what remains is cut, and the error propagates."""
    ops, token = fake(10.0, Work(ordinary=1), [])
    ops.fail_on = "end_long_lived"
    ops.leave_after["ordinary"] = 0.0
    with pytest.raises(OSError, match="end_long_lived failed"):
        drive_sync(ops, token, name="s", clock=ops.clock)
    assert ops.calls[-1] == "cut"


def test_drive_async_runs_the_same_sequence():
    """The async driver carries out the same steps and raises DeadlineExceeded on a cut."""
    ops, token = fake(2.0, Work(ordinary=2), ["GET /a (1.9s)", "GET /b (1.9s)"], AsyncFakeOps)

    async def main() -> Any:
        return await drive_async(ops, token, name="aio", clock=ops.clock)

    with pytest.raises(DeadlineExceeded) as raised:
        asyncio.run(main())
    assert raised.value.cut == ["GET /a (1.9s)", "GET /b (1.9s)"]
    assert ops.calls == [
        "drain",
        "close_listener",
        "close_idle",
        "wait ordinary",
        "cut",
        "join",
    ]


def test_drive_async_cancelled_stop_cuts_and_propagates():
    """An async stop cancelled from outside (the runner gave up) cuts what remains."""
    ops, token = fake(10.0, Work(ordinary=1), [], AsyncFakeOps)
    ops.fail_on = "hang"

    async def main() -> None:
        task = asyncio.ensure_future(drive_async(ops, token, name="aio", clock=ops.clock))
        for _ in range(10):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert ops.calls[-1] == "cut"
