"""Periodic jobs: the pure `Schedule` on a fake clock, the worker, and ``@app.every``.

The schedule's promises (no overlap, no drift, missed slots skipped) are
checked over random run durations and wake-up delays with hypothesis; the
worker's loop runs against a fake token whose ``wait`` moves a fake clock;
one real-runner test per runner checks that a shutdown ends the wait at once.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import random
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle import (
    App,
    Cancelled,
    CancelSource,
    CancelToken,
    ComponentState,
    ConfigError,
    ExitCode,
)
from lifecycle._core.periodic import Schedule
from lifecycle._core.restart import RestartPolicy
from lifecycle._workers.periodic import PeriodicWorker
from tests.drive import BOUND, wait_until
from tests.fakes import FakeClock

# -- the schedule -----------------------------------------------------------------------


def test_first_run_now_after_or_after_a_delay():
    """first="now" runs at begin, "after" one interval later, a number that many seconds."""
    assert Schedule(10.0).begin(100.0) == 100.0
    assert Schedule(10.0, first="after").begin(100.0) == 110.0
    assert Schedule(10.0, first=2.5).begin(100.0) == 102.5


def test_next_run_is_the_next_slot_not_interval_after_the_end():
    """A 3 s run in a 10 s grid: the next begins at the slot, 7 s after it ended (no drift)."""
    s = Schedule(10.0)
    s.begin(0.0)
    assert s.ran(0.0, 3.0) == 10.0
    assert s.ran(10.4, 12.0) == 20.0  # a late wake-up does not push the grid


def test_overrunning_run_skips_the_missed_slots():
    """A run over 2.5 slots: one run at the next free slot; 2 slots counted as skipped."""
    s = Schedule(10.0)
    s.begin(0.0)
    assert s.ran(0.0, 25.0) == 30.0
    assert s.skipped == 2
    assert s.ran(30.0, 31.0) == 40.0
    assert s.skipped == 2


def test_run_ending_exactly_on_a_slot_takes_that_slot():
    """Ending at the slot's instant: the next run begins then, no slot is skipped."""
    s = Schedule(10.0)
    s.begin(0.0)
    assert s.ran(0.0, 10.0) == 10.0
    assert s.skipped == 0


def test_outcomes_are_recorded():
    """ran() records ok or the error, the duration and when; runs and errors are counted."""
    s = Schedule(5.0)
    s.begin(0.0)
    s.ran(0.0, 1.0)
    s.ran(5.0, 7.5, "KeyError: 'x'")
    assert (s.runs, s.errors) == (2, 1)
    assert s.last is not None
    assert (s.last.ok, s.last.at, s.last.duration, s.last.error) == (
        False,
        5.0,
        2.5,
        "KeyError: 'x'",
    )
    status = s.status(8.0, wall=1_000_008.0, with_error=True)
    assert status == {
        "interval": 5.0,
        "next_run_in": 2.0,
        "running": False,
        "runs": 2,
        "errors": 1,
        "skipped": 0,
        "last": {
            "outcome": "error",
            "duration": 2.5,
            "seconds_ago": 3.0,
            "at": 1_000_005.0,
            "error": "KeyError: 'x'",
        },
    }
    assert "error" not in s.status(8.0)["last"]  # /status never shows error text


def test_resume_after_a_restart_keeps_the_grid():
    """Restarted, the worker resumes at the first slot at or after now, on the same grid."""
    s = Schedule(10.0)
    s.begin(0.0)
    s.ran(0.0, 1.0)
    assert s.resume(33.0) == 40.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 0}, "interval must be a positive, finite number of seconds, got 0.0"),
        ({"interval": math.inf}, "interval must be a positive, finite number"),
        ({"interval": -1}, "interval must be >= 0 seconds, got -1"),
        ({"interval": math.nan}, "interval must be a number of seconds, not nan"),
        ({"interval": 5, "jitter": 5}, "jitter=5s must be shorter than the interval (5s)"),
        (
            {"interval": 5, "first": "later"},
            "first='later' is not a start: use 'now' (run at once), 'after' (one interval later) "
            "or a number of seconds",
        ),
        ({"interval": 5, "first": math.inf}, "first=inf would never run"),
    ],
)
def test_invalid_schedule_names_the_field(kwargs, message):
    """Bad arguments are ConfigErrors that name the argument."""
    with pytest.raises(ConfigError) as caught:
        Schedule(**kwargs)
    assert str(caught.value).startswith(message)


@settings(max_examples=300, deadline=None)
@given(
    interval=st.integers(1, 50).map(float),
    jitter_share=st.sampled_from([0.0, 0.0, 0.5, 0.9]),
    first=st.sampled_from(["now", "after", 0.0, 7.0]),
    runs=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 30)), max_size=40),
    seed=st.integers(0, 1000),
)
def test_schedule_never_overlaps_never_drifts_and_skips_missed_slots(
    interval, jitter_share, first, runs, seed
):
    """Any run durations and wake-up delays: no overlap, drift bounded, missed slots skipped."""
    jitter = interval * jitter_share
    s = Schedule(interval, jitter=jitter, first=first, rng=random.Random(seed))
    now = 1000.0
    at = s.begin(now)
    assert s.base is not None
    slots: list[int] = []
    previous_end = -math.inf
    for duration_tenths, late_tenths in runs:
        # Drift bounded: every planned start is its slot plus at most the jitter.
        k = s.slot
        slot_time = s.base + k * interval
        assert slot_time <= at <= slot_time + jitter + 1e-9
        # No overlap: the planned start is no earlier than the previous end.
        assert at >= previous_end - 1e-9
        started = at + late_tenths / 10  # the worker woke a little late
        ended = started + duration_tenths / 10
        slots.append(k)
        skipped_before = s.skipped
        at = s.ran(started, ended)
        # Missed slots skipped, not bunched: the next slot is the first one at or after
        # the end, and every slot between is one this run covered (it was running then).
        nxt = s.slot
        assert s.base + nxt * interval >= ended - 1e-9
        assert nxt == k + 1 or s.base + (nxt - 1) * interval < ended
        assert s.skipped - skipped_before == nxt - k - 1
        previous_end = ended
    assert slots == sorted(set(slots))  # one run per slot at most


# -- the worker on a fake clock -----------------------------------------------------


class FakeToken:
    """A token whose ``wait`` moves a fake clock instead of blocking; cancel by hand."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.cancelled = False
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if not self.cancelled and timeout is not None:
            self.waits.append(timeout)
            self.clock.advance(timeout)
        return self.cancelled

    async def wait_async(self, timeout: float | None = None) -> bool:
        return self.wait(timeout)


def test_worker_runs_at_each_slot_on_a_fake_clock(clock):
    """Every 10 s from t0: runs begin at t0, t0+10, t0+20 ... whatever each run takes."""
    token = FakeToken(clock)
    begun: list[float] = []

    def job(t: Any) -> None:
        begun.append(clock())
        clock.advance(3.0 if len(begun) % 2 else 7.5)
        if len(begun) == 5:
            t.cancelled = True

    w = PeriodicWorker(job, interval=10.0, clock=clock)
    t0 = clock()
    w.run(token)  # type: ignore[arg-type]
    assert begun == [t0, t0 + 10, t0 + 20, t0 + 30, t0 + 40]
    assert w.schedule.runs == 5  # the fifth returned (its token cancelled meanwhile): counted
    assert w.schedule.next_run is None
    assert not w.schedule.active


def test_worker_skips_the_slots_an_overrun_covered(clock):
    """A 25 s run in a 10 s grid: the next run at t0+30, two slots skipped."""
    token = FakeToken(clock)
    begun: list[float] = []

    def job(t: Any) -> None:
        begun.append(clock())
        clock.advance(25.0 if len(begun) == 1 else 1.0)
        if len(begun) == 3:
            t.cancelled = True

    w = PeriodicWorker(job, interval=10.0, clock=clock)
    t0 = clock()
    w.run(token)  # type: ignore[arg-type]
    assert begun == [t0, t0 + 30, t0 + 40]
    assert w.schedule.skipped == 2


def test_errors_are_logged_counted_and_the_job_goes_on(clock, log_events):
    """on_error="continue": a run that raises is logged with its stack; the next slot runs."""
    token = FakeToken(clock)
    seen: list[int] = []

    def job(t: Any) -> None:
        seen.append(1)
        if len(seen) == 3:
            t.cancelled = True
        if len(seen) % 2:
            raise ValueError(f"bad {len(seen)}")

    w = PeriodicWorker(job, interval=1.0, clock=clock, name="purge")
    w.run(token)  # type: ignore[arg-type]
    assert len(seen) == 3
    assert (w.schedule.runs, w.schedule.errors) == (3, 2)
    assert w.schedule.last is not None
    assert w.schedule.last.error == "ValueError: bad 3"
    logged = [e for e in log_events if e["event"] == "periodic run raised"]
    assert [e["component"] for e in logged] == ["purge", "purge"]
    assert logged[0]["exc_info"][0] is ValueError


def test_on_error_fail_raises_from_run(clock):
    """on_error="fail": the error ends run(); the schedule records it first."""
    token = FakeToken(clock)

    def job(t: Any) -> None:
        raise KeyError("gone")

    w = PeriodicWorker(job, interval=1.0, on_error="fail", clock=clock)
    with pytest.raises(KeyError):
        w.run(token)  # type: ignore[arg-type]
    assert (w.schedule.runs, w.schedule.errors) == (1, 1)


def test_unknown_on_error_is_refused():
    """on_error takes "continue" or "fail"; anything else is a ConfigError saying so."""
    with pytest.raises(ConfigError, match="on_error='ignore' of periodic job 'p' is unknown"):
        PeriodicWorker(lambda t: None, interval=1.0, on_error="ignore", name="p")  # type: ignore[arg-type]


def test_jitter_delays_each_run_within_its_bound(clock):
    """With jitter=2 every run begins between its slot and 2 s after it."""
    token = FakeToken(clock)
    begun: list[float] = []

    def job(t: Any) -> None:
        begun.append(clock())
        if len(begun) == 50:
            t.cancelled = True

    w = PeriodicWorker(job, interval=10.0, jitter=2.0, clock=clock, rng=random.Random(7))
    t0 = clock()
    w.run(token)  # type: ignore[arg-type]
    offsets = [b - (t0 + 10 * k) for k, b in enumerate(begun)]
    assert all(0 <= o <= 2.0 for o in offsets)
    assert len({round(o, 6) for o in offsets}) > 10


def test_async_worker_awaits_an_async_job(clock):
    """An async job gets an async run(); the loop is the same."""
    token = FakeToken(clock)
    begun: list[float] = []

    async def job(t: Any) -> None:
        await asyncio.sleep(0)
        begun.append(clock())
        if len(begun) == 3:
            t.cancelled = True

    w = PeriodicWorker(job, interval=5.0, clock=clock)
    assert w.is_async
    t0 = clock()
    asyncio.run(w.run(token))  # type: ignore[arg-type]
    assert begun == [t0, t0 + 5, t0 + 10]


def test_a_job_cut_by_the_shutdown_records_no_outcome():
    """A job that ends by raising Cancelled from its cancelled token ends run() quietly."""
    source = CancelSource()

    def job(token: CancelToken) -> None:
        source.cancel("shutdown")
        token.raise_if_cancelled()

    w = PeriodicWorker(job, interval=60.0)
    w.run(source.token)
    assert (w.schedule.runs, w.schedule.errors) == (0, 0)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_job_cancelled_by_its_own_deadline_is_a_run_error(clock, log_events, flavour):
    """Cancelled from the job while the worker's token is live: logged, counted, the job goes on."""
    token = FakeToken(clock)
    seen: list[int] = []

    def job(t: Any) -> None:
        seen.append(1)
        if len(seen) == 3:
            t.cancelled = True
        # What CancelSource(token, timeout=...).token.raise_if_cancelled() raises at its deadline.
        raise Cancelled("deadline exceeded")

    async def ajob(t: Any) -> None:
        job(t)

    w = PeriodicWorker(ajob if flavour == "async" else job, interval=1.0, clock=clock, name="j")
    if flavour == "async":
        asyncio.run(w.run(token))  # type: ignore[arg-type]
    else:
        w.run(token)  # type: ignore[arg-type]
    # The third run raised once the worker's token was cancelled: the shutdown's cut, no outcome.
    assert (len(seen), w.schedule.runs, w.schedule.errors) == (3, 2, 2)
    assert w.schedule.last is not None
    assert w.schedule.last.error == "Cancelled: deadline exceeded"
    logged = [e for e in log_events if e["event"] == "periodic run raised"]
    assert [e["exc_info"][0] for e in logged] == [Cancelled, Cancelled]


def test_a_job_cancelled_by_its_own_deadline_fails_under_on_error_fail(clock):
    """on_error="fail": a Cancelled of the job's own making ends run() as the error it is."""
    token = FakeToken(clock)

    def job(t: Any) -> None:
        raise Cancelled("deadline exceeded")

    w = PeriodicWorker(job, interval=1.0, on_error="fail", clock=clock)
    with pytest.raises(Cancelled):
        w.run(token)  # type: ignore[arg-type]
    assert (w.schedule.runs, w.schedule.errors) == (1, 1)


def test_a_job_past_its_own_deadline_keeps_the_app_running(drive):
    """A real per-run deadline (CancelSource(token, timeout=...)) does not end the worker."""
    app = App("t", shutdown_timeout=5.0)
    third = threading.Event()
    runs: list[int] = []

    @app.every(0.01, name="job", stop_timeout=2.0)
    def job(token: CancelToken) -> None:
        runs.append(1)
        if len(runs) >= 3:
            third.set()
        with CancelSource(token, timeout=0.001) as own:
            own.token.wait(BOUND)
            own.token.raise_if_cancelled()

    drive.start(app)
    assert third.wait(BOUND)
    info = app.components["job"]
    assert info.state is ComponentState.RUNNING
    assert info.periodic is not None
    assert info.periodic.errors >= 2
    assert drive.stop() == ExitCode.OK


# -- @app.every through the runners -------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_shutdown_ends_the_wait_between_runs_at_once(drive, flavour):
    """A job every hour, waiting for its next slot: stop() returns at once, bounded."""
    app = App()
    ran = threading.Event()

    if flavour == "sync":

        @app.every(3600.0, name="hourly")
        def hourly(token: CancelToken) -> None:
            ran.set()

    else:

        @app.every(3600.0, name="hourly")
        async def ahourly(token: CancelToken) -> None:
            ran.set()

    drive.start(app)
    assert ran.wait(BOUND)
    schedule = app.components["hourly"].periodic
    assert schedule is not None
    wait_until(lambda: schedule.next_run is not None)  # waiting for the next slot
    began = time.monotonic()
    assert drive.stop() == ExitCode.OK
    elapsed = time.monotonic() - began
    assert elapsed < 2.0, f"the stop took {elapsed:.3f}s: the wait did not end at once"
    assert app.components["hourly"].state is ComponentState.STOPPED
    assert schedule.runs == 1


def test_every_runs_repeatedly_and_reports_its_schedule(drive):
    """A job every 10 ms runs again and again; the report and /status show its schedule."""
    app = App(health=0)
    three = threading.Event()
    count = [0]

    @app.every(0.01, name="tick")
    def tick(token: CancelToken) -> None:
        count[0] += 1
        if count[0] >= 3:
            three.set()

    drive.start(app)
    assert three.wait(BOUND)
    wait_until(lambda: app.components["tick"].periodic.runs >= 3)  # type: ignore[union-attr]
    periodic = app.report()["components"]["tick"]["periodic"]
    assert periodic["interval"] == 0.01
    assert periodic["last"]["outcome"] == "ok"
    assert periodic["last"]["error"] is None
    assert periodic["runs"] >= 3
    address = app.health_address
    assert address is not None
    conn = http.client.HTTPConnection("127.0.0.1", address[1], timeout=BOUND)
    try:
        conn.request("GET", "/status")
        document = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    status = document["components"]["tick"]["periodic"]
    assert status["runs"] >= 3
    assert status["last"]["outcome"] == "ok"
    assert "error" not in status["last"]
    assert drive.stop() == ExitCode.OK


def test_on_error_fail_with_a_restart_policy_restarts_the_schedule(drive):
    """on_error="fail" fails the run; restart="on-failure" starts the worker again."""
    app = App()
    seen: list[int] = []
    again = threading.Event()

    @app.every(
        0.01,
        name="job",
        on_error="fail",
        restart=RestartPolicy("on-failure", max_restarts=3, within=60, backoff=0.01),
    )
    def job(token: CancelToken) -> None:
        seen.append(1)
        if len(seen) == 1:
            raise RuntimeError("first run fails")
        again.set()

    drive.start(app)
    assert again.wait(BOUND)
    info = app.components["job"]
    assert info.restarts == 1
    assert info.periodic is not None
    assert info.periodic.errors == 1
    assert drive.stop() == ExitCode.OK


def test_every_validates_at_registration():
    """Bad arguments to @app.every fail at the decorator, naming the argument."""
    app = App()
    with pytest.raises(ConfigError, match="interval must be a positive"):
        app.every(0)(lambda token: None)
    with pytest.raises(ConfigError, match="on_error='retry'"):
        app.every(1.0, on_error="retry")(lambda token: None)  # type: ignore[arg-type]
    assert dict(app.components) == {}


def test_bare_every_is_refused():
    """@app.every without its interval names the fix instead of registering nothing."""
    app = App()
    with pytest.raises(ConfigError, match=r"use @app.every\(60.0\) above 'purge'"):

        @app.every  # type: ignore[arg-type]
        def purge(token: CancelToken) -> None:
            pass

    assert dict(app.components) == {}


@pytest.mark.parametrize("restart", ["on-failure", "always", RestartPolicy("always")])
def test_restart_with_on_error_continue_is_refused(restart):
    """restart= cannot apply when on_error="continue" (run never raises): say to pass "fail"."""
    app = App()
    with pytest.raises(ConfigError, match="with on_error='continue' can never restart") as caught:
        app.every(1.0, restart=restart)(lambda token: None)
    assert "pass on_error='fail'" in str(caught.value)
    app.every(1.0, restart="never")(lambda token: None)  # a policy that never restarts is fine
    app.every(1.0, on_error="fail", restart=restart, name="f")(lambda token: None)


def test_every_returns_the_function_usable_in_depends_on():
    """@app.every returns the function: other components may depend on it by object."""
    app = App()

    @app.every(5.0)
    def refresh(token: CancelToken) -> None:
        pass

    app.add(PeriodicWorker(lambda t: None, interval=1.0), name="other", depends_on=[refresh])
    assert app.start_order() == ["refresh", "other"]


def test_resume_may_use_the_slot_taken_before_a_failure():
    """Failed with on_error="fail" and restarted before the next slot: that slot still runs."""
    s = Schedule(10.0)
    s.begin(0.0)
    s.started()
    assert s.ran(0.0, 1.0, "KeyError: 'x'") == 10.0  # taken, then run() raised
    assert s.resume(2.0) == 10.0
    assert s.skipped == 0
