"""Restart policies: the pure `Restarts` state, and restarts through both runners.

The scheduler's restart decisions are pinned on a fake clock in
test_scheduler.py and over random crash schedules in
test_scheduler_properties.py; here: the policy's validation and arithmetic,
then what a user sees with a real runner (states, readiness, logs,
``/status``, the report), each test against the threaded and the asyncio
runner from one fixture.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import random
import threading
import time

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle import App, AppState, CancelToken, ComponentState, ConfigError, ExitCode
from lifecycle._core.restart import RestartLimitReached, RestartPolicy, Restarts, as_policy
from tests.drive import BOUND, wait_until

C = ComponentState


# -- the policy -----------------------------------------------------------------------


def test_policy_defaults_are_otp_s():
    """The default policy never restarts; the intensity defaults to OTP's 1 in 5 s."""
    policy = RestartPolicy()
    assert (policy.mode, policy.max_restarts, policy.within) == ("never", 1, 5.0)
    assert (policy.backoff, policy.backoff_max, policy.jitter) == (0.1, 2.5, 0.1)
    assert policy.reset_after is None
    assert policy.reset_time == 5.0


def test_default_backoff_max_is_half_the_window_shared_by_the_restarts():
    """backoff_max defaults to within / (2 * max_restarts), at most 10 s, at least backoff."""
    assert RestartPolicy("always", max_restarts=5, within=60).backoff_max == 6.0
    assert RestartPolicy("always", max_restarts=1, within=600).backoff_max == 10.0
    assert RestartPolicy("always", max_restarts=0).backoff_max == 10.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "sometimes"}, "RestartPolicy mode='sometimes' is unknown: use one of 'never'"),
        ({"max_restarts": -1}, "RestartPolicy max_restarts=-1 must be a whole number >= 0"),
        ({"max_restarts": 1.5}, "RestartPolicy max_restarts=1.5 must be a whole number >= 0"),
        ({"within": 0}, "RestartPolicy within=0 is an empty window"),
        ({"within": math.nan}, "RestartPolicy within=nan must be a number of seconds"),
        ({"backoff": -0.1}, "RestartPolicy backoff=-0.1 is negative: pass a delay in seconds"),
        ({"backoff": math.inf}, "RestartPolicy backoff=inf would never restart"),
        ({"backoff_max": math.nan}, "RestartPolicy backoff_max=nan must be a number"),
        ({"jitter": 1.0}, "RestartPolicy jitter=1.0 must be below 1"),
        ({"jitter": -0.5}, "RestartPolicy jitter=-0.5 is negative"),
        ({"backoff": 5, "backoff_max": 1}, "RestartPolicy backoff=5 is above backoff_max=1"),
        ({"reset_after": 0}, "RestartPolicy reset_after=0 would never double the backoff"),
        ({"reset_after": -1}, "RestartPolicy reset_after=-1 is negative"),
        (
            {"mode": "always", "max_restarts": 10, "within": 5, "backoff_max": 10},
            "RestartPolicy max_restarts=10 within=5s with backoff_max=10 and jitter=0.1 could "
            "never give up on a crash loop: 10 delays at their longest take 110s",
        ),
        (
            {"mode": "on-failure", "within": 5, "backoff": 5, "jitter": 0},
            "RestartPolicy max_restarts=1 within=5s with backoff_max=5 and jitter=0 could never",
        ),
    ],
)
def test_invalid_policy_names_the_field_and_the_fix(kwargs, message):
    """A bad field is refused at once, as a ConfigError naming it and saying what to pass."""
    with pytest.raises(ConfigError) as caught:
        RestartPolicy(**kwargs)
    assert str(caught.value).startswith(message)


def test_as_policy_takes_a_mode_or_a_policy():
    """restart= takes a mode string, a RestartPolicy or None; anything else is refused."""
    assert as_policy("on-failure") == RestartPolicy("on-failure")
    policy = RestartPolicy("always", max_restarts=3)
    assert as_policy(policy) is policy
    assert as_policy(None) == RestartPolicy()
    with pytest.raises(ConfigError, match="restart=True is not a restart policy"):
        as_policy(True)  # type: ignore[arg-type]


def test_restarts_never_and_on_failure_say_no_without_giving_up():
    """'never' never restarts; 'on-failure' not after a clean return; neither gives up."""
    never = Restarts(RestartPolicy("never"))
    assert (never.exited(0.0, failed=True), never.gave_up) == (None, False)
    on_failure = Restarts(RestartPolicy("on-failure", jitter=0.0))
    assert (on_failure.exited(0.0, failed=False), on_failure.gave_up) == (None, False)
    assert on_failure.exited(1.0, failed=True) == 0.1


def test_backoff_doubles_and_is_capped():
    """Consecutive restarts double the delay up to backoff_max."""
    policy = RestartPolicy("always", max_restarts=10, within=1000, backoff=1, backoff_max=5)
    r = Restarts(attrs.evolve(policy, jitter=0.0))
    delays = []
    now = 0.0
    for _ in range(5):
        delay = r.exited(now, failed=True)
        assert delay is not None
        delays.append(delay)
        now += delay + 1.0
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert r.count == 5


def test_backoff_starts_over_after_a_run_that_stayed_up():
    """A run up ``reset_after`` (default ``within``) resets the backoff; a shorter one does not."""
    r = Restarts(RestartPolicy("always", max_restarts=5, within=100, backoff=1, jitter=0))
    assert r.exited(0.0, failed=True) == 1.0  # the run from 1.0 ...
    assert r.exited(50.0, failed=True) == 2.0  # ... was up 49 s < 100: consecutive
    assert r.exited(152.0, failed=True) == 1.0  # up 100 s (from 52): starts over
    short = Restarts(
        RestartPolicy("always", max_restarts=5, within=100, backoff=1, jitter=0, reset_after=3)
    )
    assert [short.exited(t, failed=True) for t in (0.0, 2.0, 10.0)] == [1.0, 2.0, 1.0]


def test_backoff_never_falls_back_in_a_crash_loop():
    """Runs that crash at once: the delays only grow to backoff_max, then stay there."""
    policy = RestartPolicy("always", max_restarts=20, within=1000, backoff=0.1, jitter=0)
    r = Restarts(policy)
    now, delays = 0.0, []
    while (delay := r.exited(now, failed=True)) is not None:
        delays.append(delay)
        now += delay
    assert delays == sorted(delays)
    assert delays[-1] == policy.backoff_max == 10.0
    assert (r.count, r.gave_up) == (20, True)


@pytest.mark.parametrize(("r", "within"), [(1, 5), (5, 5), (6, 5), (10, 5), (10, 60), (3, 1)])
def test_a_crash_loop_gives_up_after_max_restarts(r, within):
    """A run that crashes at once, forever, gives up after exactly R restarts, within T."""
    limits = Restarts(RestartPolicy("on-failure", max_restarts=r, within=within))
    now = 0.0
    while (delay := limits.exited(now, failed=True)) is not None:
        now += delay
        assert limits.count <= r
    assert (limits.count, limits.gave_up) == (r, True)
    assert now <= within


@given(
    st.integers(0, 6),
    st.floats(0.5, 100),
    st.floats(0, 2),
    st.sampled_from([0.0, 0.1, 0.5]),
    st.lists(st.floats(0, 50), max_size=30),
    st.integers(0, 2**32 - 1),
)
@settings(max_examples=300, deadline=None)
def test_any_history_then_a_crash_loop_gives_up(r, within, backoff, jitter, runs, seed):
    """Whatever ran before, runs that then crash at once end in a give-up within R + 1 exits."""
    try:
        policy = RestartPolicy(
            "always", max_restarts=r, within=within, backoff=backoff, jitter=jitter
        )
    except ConfigError:
        return  # unreachable limits are refused
    limits = Restarts(policy, random.Random(seed))
    now = 0.0
    for up in runs:  # runs of any length, each granted or not
        delay = limits.exited(now, failed=True)
        if delay is None:
            return
        now += delay + up
    for _ in range(r + 1):
        delay = limits.exited(now, failed=True)
        if delay is None:
            break
        now += delay
    assert limits.gave_up


def test_jitter_stays_within_its_fraction():
    """Each delay is the backoff times 1 +/- jitter, from the given random source."""
    policy = RestartPolicy("always", max_restarts=1, within=5.0, backoff=2.0, jitter=0.25)
    delays = []
    for seed in range(200):
        delay = Restarts(policy, random.Random(seed)).exited(0.0, failed=True)
        assert delay is not None
        delays.append(delay)
    assert all(1.5 <= d <= 2.5 for d in delays)
    assert min(delays) < 1.6  # spread, not constant
    assert max(delays) > 2.4


def test_zero_max_restarts_gives_up_at_the_first_exit():
    """max_restarts=0: the first exit that would restart gives up."""
    r = Restarts(RestartPolicy("always", max_restarts=0))
    assert (r.exited(0.0, failed=True), r.gave_up, r.count) == (None, True, 0)
    assert r.exited(100.0, failed=True) is None  # final


# -- through the runners ----------------------------------------------------------------

FAST = RestartPolicy("on-failure", max_restarts=5, within=60.0, backoff=0.01, jitter=0.0)
SLOW = RestartPolicy(
    "on-failure", max_restarts=1, within=120.0, backoff=60.0, backoff_max=60.0, jitter=0.0
)


class Flaky:
    """A component whose run() raises for its first ``crashes`` calls, then runs until cancelled."""

    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.calls: dict[str, int] = {"start": 0, "run": 0, "stop": 0}
        self.running = threading.Event()  # set when a run that will not crash begins
        self._lock = threading.Lock()

    def start(self, token: CancelToken) -> None:
        self.calls["start"] += 1

    def run(self, token: CancelToken) -> None:
        with self._lock:
            self.calls["run"] += 1
            crash = self.calls["run"] <= self.crashes
        if crash:
            raise RuntimeError(f"crash {self.calls['run']}")
        self.running.set()
        token.wait(BOUND)

    def stop(self, token: CancelToken) -> None:
        self.calls["stop"] += 1


class AsyncFlaky(Flaky):
    """The same, with an ``async def run``."""

    async def run(self, token: CancelToken) -> None:  # type: ignore[override]
        with self._lock:
            self.calls["run"] += 1
            crash = self.calls["run"] <= self.crashes
        if crash:
            await asyncio.sleep(0)
            raise RuntimeError(f"crash {self.calls['run']}")
        self.running.set()
        await token.wait_async(BOUND)


@pytest.mark.parametrize("cls", [Flaky, AsyncFlaky], ids=["sync", "async"])
def test_crashing_run_is_restarted_and_the_app_stays_up(drive, log_events, cls):
    """Two crashes, two restarts: run() is called 3 times, start() and stop() once each."""
    app = App()
    flaky = app.add(cls(crashes=2), name="flaky", restart=FAST)
    drive.start(app)
    assert flaky.running.wait(BOUND)
    wait_until(lambda: app.components["flaky"].state is C.RUNNING)
    info = app.components["flaky"]
    assert (info.restarts, info.runs, info.error, info.run_error) == (2, 3, None, None)
    assert str(info.restart_error) == "crash 2"
    assert app.state is AppState.RUNNING
    assert drive.stop() == ExitCode.OK
    assert flaky.calls == {"start": 1, "run": 3, "stop": 1}
    assert info.state is C.STOPPED
    restarts = [e for e in log_events if e["event"] == "restart"]
    assert [(e["component"], e["attempt"], e["delay"], e["error"]) for e in restarts] == [
        ("flaky", 1, 0.01, "RuntimeError: crash 1"),
        ("flaky", 2, 0.02, "RuntimeError: crash 2"),
    ]
    moves = [
        (e["from_state"], e["to_state"])
        for e in log_events
        if e["event"] == "transition" and e["component"] == "flaky"
    ]
    assert moves.count(("RUNNING", "RESTARTING")) == 2
    assert moves.count(("RESTARTING", "RUNNING")) == 2


def test_worker_past_its_limit_fails_and_shuts_the_app_down(drive, log_events):
    """A critical worker crashing a third time under max_restarts=2: FAILED, exit FAILED."""
    app = App()
    calls = []

    @app.worker(restart=RestartPolicy("always", max_restarts=2, within=60, backoff=0.01))
    def crasher(token: CancelToken) -> None:
        calls.append(1)
        raise KeyError(len(calls))

    drive.start(app)
    assert drive.wait() == ExitCode.FAILED
    info = app.components["crasher"]
    assert (info.state, info.restarts, len(calls)) == (C.FAILED, 2, 3)
    assert isinstance(info.error, RestartLimitReached)
    assert isinstance(info.run_error, KeyError)
    assert app.report()["components"]["crasher"]["error"].startswith(
        "RestartLimitReached: component 'crasher' gave up restarting: run() ended again "
        "after 2 restarts within 60s (KeyError: 3)"
    )
    assert next(e for e in log_events if e["event"] == "restart limit reached")["attempt"] == 3


def test_readiness_is_off_while_a_critical_component_restarts(drive):
    """RESTARTING (a 60 s backoff): the app is unready, its report and state say why."""
    app = App()
    app.add(Flaky(crashes=1), name="flaky", restart=SLOW)
    drive.start(app)
    wait_until(lambda: app.components["flaky"].state is C.RESTARTING)
    assert app.state is AppState.RUNNING
    assert not app.ready
    entry = app.report()["components"]["flaky"]
    assert (entry["state"], entry["restarts"], entry["restart_error"]) == (
        "restarting",
        1,
        "RuntimeError: crash 1",
    )
    assert 50 < entry["next_restart_in"] <= 60
    assert drive.stop() == ExitCode.OK


def test_readiness_comes_back_when_the_restarted_run_begins(drive):
    """Ready again once the restart ran: readiness follows the critical component."""
    app = App()
    flaky = app.add(Flaky(crashes=1), name="flaky", restart=FAST)
    drive.start(app)
    assert flaky.running.wait(BOUND)
    wait_until(lambda: app.ready)
    assert app.components["flaky"].restarts == 1
    assert drive.stop() == ExitCode.OK


def test_a_non_critical_component_restarting_leaves_the_app_ready(drive):
    """A non-critical component in its backoff does not turn readiness off."""
    app = App()
    app.add(Flaky(crashes=1), name="flaky", restart=SLOW, critical=False)
    drive.start(app)
    wait_until(lambda: app.components["flaky"].state is C.RESTARTING)
    assert app.ready
    assert drive.stop() == ExitCode.OK


def test_shutdown_during_a_backoff_ends_it_at_once_and_calls_stop(drive):
    """A 60 s backoff pending: stop() returns at once; no restart; stop() called once."""
    app = App()
    flaky = app.add(Flaky(crashes=1), name="flaky", restart=SLOW)
    drive.start(app)
    wait_until(lambda: app.components["flaky"].state is C.RESTARTING)
    began = time.monotonic()
    assert drive.stop() == ExitCode.OK
    assert time.monotonic() - began < 5.0  # the backoff is 60 s
    assert flaky.calls == {"start": 1, "run": 1, "stop": 1}
    info = app.components["flaky"]
    assert (info.state, info.next_restart, info.stop_called) == (C.STOPPED, None, True)


def test_status_document_shows_restarts_and_the_next_restart(drive):
    """/status: state "restarting", the restart count and seconds to the next one."""
    app = App(health=0)
    app.add(Flaky(crashes=1), name="flaky", restart=SLOW)
    app.add(Flaky(crashes=0), name="plain")
    drive.start(app)
    wait_until(lambda: app.components["flaky"].state is C.RESTARTING)
    address = app.health_address
    assert address is not None
    conn = http.client.HTTPConnection("127.0.0.1", address[1], timeout=BOUND)
    try:
        conn.request("GET", "/status")
        document = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    flaky, plain = document["components"]["flaky"], document["components"]["plain"]
    assert (flaky["state"], flaky["failed"], flaky["restarts"]) == ("restarting", False, 1)
    assert 50 < flaky["next_restart_in"] <= 60
    assert plain == {"state": "running", "failed": False}  # no policy: no restart fields
    assert document["ready"] is False
    assert drive.stop() == ExitCode.OK


def test_restart_is_refused_for_a_component_without_run():
    """restart= on a component that has no run() is a ConfigError that says why."""
    app = App()
    with pytest.raises(ConfigError) as caught:
        app.add(object(), name="pool", start=lambda: None, restart="always")
    assert str(caught.value) == (
        "component 'pool' has no run(), so restart='always' has nothing to restart: a "
        "restart policy starts run() again once it ended; remove restart=..., or register "
        "a worker (or an object with run(token))"
    )
    assert "pool" not in app.components


def test_resource_takes_restart_and_refuses_it():
    """@app.resource takes the same keywords as add: restart= is refused (it has no run)."""
    app = App()
    with pytest.raises(ConfigError, match="has no run"):

        @app.resource(restart="on-failure")
        def pool():
            yield 1
