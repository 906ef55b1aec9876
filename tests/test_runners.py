"""Behaviour of the runners: one test body, both runners (the `drive` fixture).

Every wait here is bounded (`BOUND`); the tests synchronise on events, not on
sleeps. The few that *are* about time (a timeout, a drain delay) use small
real timeouts and are marked ``realtime``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import LogCapture

import lifecycle
from lifecycle import (
    App,
    AppState,
    AsyncioRunner,
    Cancelled,
    CancelToken,
    ComponentState,
    ConfigError,
    CycleError,
    DeadlineExceeded,
    ExitCode,
    StartupError,
    ThreadedRunner,
    UnknownDependency,
    current_token,
)
from lifecycle._core.threads import sigmask
from lifecycle._runtime import signals as signals_module
from lifecycle._runtime.signals import (
    HELPER_BLOCKED,
    SignalHandlers,
    SignalWakeup,
    helper_thread,
    user_code_thread,
    wait_event,
)
from lifecycle._runtime.watchdog import _guard as exit_guard
from lifecycle._serving.health import HealthServer
from tests.drive import BOUND, RUNNERS, wait_until

THIS_FILE = str(Path(__file__).resolve())


def line_of(marker: str) -> int:
    """The line number in this file of the line holding ``marker`` (stack assertions)."""
    lines = Path(__file__).read_text().splitlines()
    found = [i for i, text in enumerate(lines, 1) if text.rstrip().endswith(marker)]
    assert len(found) == 1, marker
    return found[0]


# -- components that write down what happens to them ---------------------------


class Trace:
    """A thread-safe list of ``(what, name)`` events, with bounded waits."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._cond = threading.Condition()

    def add(self, what: str, name: str) -> None:
        with self._cond:
            self.events.append((what, name))
            self._cond.notify_all()

    def wait_for(self, what: str, name: str, timeout: float = BOUND) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: (what, name) in self.events, timeout)
        assert ok, f"{what} {name} did not happen; saw {self.events}"

    def index(self, what: str, name: str) -> int:
        return self.events.index((what, name))

    def count(self, what: str, name: str) -> int:
        return self.events.count((what, name))

    def of(self, what: str) -> list[str]:
        return [n for w, n in self.events if w == what]


Hook = Callable[[CancelToken], Any]


class Part:
    """A sync component: traces start/stop, runs an optional hook in each."""

    def __init__(
        self, trace: Trace, name: str, *, start: Hook | None = None, stop: Hook | None = None
    ) -> None:
        self.trace, self.name = trace, name
        self.on_start, self.on_stop = start, stop
        self.threads: dict[str, str] = {}

    def start(self, token: CancelToken) -> None:
        self.threads["start"] = threading.current_thread().name
        self.trace.add("start", self.name)
        if self.on_start is not None:
            self.on_start(token)
        self.trace.add("started", self.name)

    def stop(self, token: CancelToken) -> None:
        self.threads["stop"] = threading.current_thread().name
        self.trace.add("stop", self.name)
        if self.on_stop is not None:
            self.on_stop(token)
        self.trace.add("stopped", self.name)


class APart:
    """The async twin of `Part`: hooks are coroutine functions."""

    def __init__(
        self, trace: Trace, name: str, *, start: Hook | None = None, stop: Hook | None = None
    ) -> None:
        self.trace, self.name = trace, name
        self.on_start, self.on_stop = start, stop
        self.threads: dict[str, str] = {}

    async def start(self, token: CancelToken) -> None:
        self.threads["start"] = threading.current_thread().name
        self.trace.add("start", self.name)
        if self.on_start is not None:
            await self.on_start(token)
        self.trace.add("started", self.name)

    async def stop(self, token: CancelToken) -> None:
        self.threads["stop"] = threading.current_thread().name
        self.trace.add("stop", self.name)
        if self.on_stop is not None:
            await self.on_stop(token)
        self.trace.add("stopped", self.name)


def add(
    app: App,
    trace: Trace,
    name: str,
    *,
    flavour: str = "sync",
    depends_on: tuple[str, ...] = (),
    start: Hook | None = None,
    stop: Hook | None = None,
    **kwargs: Any,
) -> Part | APart:
    cls = Part if flavour == "sync" else APart
    return app.add(
        cls(trace, name, start=start, stop=stop), name=name, depends_on=depends_on, **kwargs
    )


def rendezvous(mine: threading.Event, other: threading.Event) -> Hook:
    """A start/stop hook that returns only once the other side has begun too."""

    def sync(token: CancelToken) -> None:
        mine.set()
        assert other.wait(BOUND), "the other call never ran concurrently"

    return sync


def arendezvous(mine: threading.Event, other: threading.Event) -> Hook:
    """The async twin of `rendezvous` (waits without blocking the loop)."""

    async def hook(token: CancelToken) -> None:
        mine.set()
        deadline = time.monotonic() + BOUND
        while not other.is_set():
            assert time.monotonic() < deadline, "the other call never ran concurrently"
            await asyncio.sleep(0.001)

    return hook


FLAVOURS = ["sync", "async"]


def pair(flavour: str) -> tuple[Hook, Hook]:
    a, b = threading.Event(), threading.Event()
    make = rendezvous if flavour == "sync" else arendezvous
    return make(a, b), make(b, a)


def raising(flavour: str, error: BaseException) -> Hook:
    """A start/stop hook of the flavour that raises ``error``."""

    def sync(token: CancelToken) -> None:
        raise error

    async def hook(token: CancelToken) -> None:
        raise error

    return sync if flavour == "sync" else hook


def ready(app: App) -> bool:
    """``app.ready``, read through a call (mypy narrows repeated property reads)."""
    return app.ready


def state(app: App) -> AppState:
    """``app.state``, read through a call (mypy narrows repeated property reads)."""
    return app.state


def events_named(log: Sequence[Mapping[str, Any]], event: str) -> list[Mapping[str, Any]]:
    return [e for e in log if e["event"] == event]


# -- ordering ------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_start_follows_dependencies_and_independent_starts_overlap(drive, flavour):
    """A start begins after its dependencies' starts return; independent ones run together."""
    trace, app = Trace(), App()
    left, right = pair(flavour)
    add(app, trace, "db", flavour=flavour, start=left)
    add(app, trace, "cache", flavour=flavour, start=right)
    add(app, trace, "api", flavour=flavour, depends_on=("db", "cache"))
    add(app, trace, "admin", flavour=flavour, depends_on=("api",))
    drive.start(app)
    assert app.state is AppState.RUNNING
    for dep, user in [("db", "api"), ("cache", "api"), ("api", "admin")]:
        assert trace.index("started", dep) < trace.index("start", user)
    assert drive.stop() == ExitCode.OK


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_stop_is_reverse_order_and_independent_stops_overlap(drive, flavour):
    """A stop begins after its dependents stopped; independent stops run together."""
    trace, app = Trace(), App()
    left, right = pair(flavour)
    add(app, trace, "db", flavour=flavour)
    add(app, trace, "api", flavour=flavour, depends_on=("db",), stop=left)
    add(app, trace, "worker", flavour=flavour, depends_on=("db",), stop=right)
    add(app, trace, "edge", flavour=flavour, depends_on=("api",))
    drive.start(app)
    assert drive.stop() == ExitCode.OK
    for user, dep in [("edge", "api"), ("api", "db"), ("worker", "db")]:
        assert trace.index("stopped", user) < trace.index("stop", dep)
    for name in ("db", "api", "worker", "edge"):
        assert trace.count("stop", name) == 1
        assert app.components[name].state is ComponentState.STOPPED
        assert app.components[name].stop_called
    assert app.state is AppState.STOPPED


def test_stop_is_called_exactly_once_and_stop_is_idempotent(drive):
    """stop() twice, and wait() after it, return the same code; each stop ran once."""
    trace, app = Trace(), App()
    add(app, trace, "a")
    add(app, trace, "b", flavour="async", depends_on=("a",))
    drive.start(app)
    assert drive.stop() == ExitCode.OK
    assert drive.stop() == ExitCode.OK
    assert drive.wait() == ExitCode.OK
    assert trace.of("stop") == ["b", "a"]
    assert app.exit_code == ExitCode.OK


@pytest.mark.realtime
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_run_token_is_cancelled_at_its_own_stop_phase(drive, flavour):
    """A run token survives the request and the drain; it is cancelled at its stop phase."""
    trace, app = Trace(), App(drain_delay=0.3)
    tokens: dict[str, CancelToken] = {}
    seen_during_dependent_stop: list[bool] = []

    if flavour == "sync":

        @app.worker(name="w")
        def w(token: CancelToken) -> None:
            tokens["w"] = token
            trace.add("run", "w")
            token.wait(BOUND)
            trace.add("run-end", "w")

    else:

        @app.worker(name="w")
        async def aw(token: CancelToken) -> None:
            tokens["w"] = token
            trace.add("run", "w")
            await token.wait_async(BOUND)
            trace.add("run-end", "w")

    def api_stop(token: CancelToken) -> None:
        seen_during_dependent_stop.append(tokens["w"].cancelled)

    add(app, trace, "api", depends_on=("w",), stop=api_stop)
    drive.start(app)
    trace.wait_for("run", "w")
    app.request_shutdown("test")
    assert not tokens["w"].cancelled, "cancelled at the request"
    assert drive.wait() == ExitCode.OK
    # api's stop began after the drain; w's token was still live then, so it
    # was live through the whole drain (cancellation is for good).
    began, deadline = app.components["api"].stop_began, app.shutdown_deadline
    assert began is not None
    assert deadline is not None
    requested = deadline - app.shutdown_timeout
    assert began - requested >= 0.3 - 1e-6, "the drain delay was not honoured"
    assert seen_during_dependent_stop == [False], "cancelled before its dependents stopped"
    assert trace.index("stopped", "api") < trace.index("run-end", "w")
    assert tokens["w"].cancelled


# -- startup failures -----------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_failing_start_rolls_back_in_reverse_and_raises_startup_error(drive, flavour):
    """A failing start stops what already started, in reverse; StartupError names it."""
    trace, app = Trace(), App()

    add(app, trace, "a", flavour=flavour)
    add(app, trace, "b", flavour=flavour, depends_on=("a",))
    add(
        app,
        trace,
        "c",
        flavour=flavour,
        depends_on=("b",),
        start=raising(flavour, RuntimeError("no route to db")),
    )
    add(app, trace, "d", flavour=flavour, depends_on=("c",))
    with pytest.raises(StartupError) as caught:
        drive.start(app)
    assert caught.value.component == "c"
    assert "no route to db" in str(caught.value)
    assert app.shutdown_reason == "component 'c' failed to start"
    assert app.shutdown_token.cancelled
    assert drive.wait() == ExitCode.FAILED
    assert trace.of("stop") == ["b", "a"]
    assert trace.of("start") == ["a", "b", "c"]
    assert app.components["c"].state is ComponentState.FAILED
    assert not app.components["c"].stop_called
    assert app.components["d"].state is ComponentState.NEW
    assert app.state is AppState.FAILED


@pytest.mark.realtime
def test_start_timeout_abandons_the_start_and_fails_startup(drive, log_events):
    """A start that overruns start_timeout is abandoned, FAILED; the rest roll back."""
    trace, app = Trace(), App()
    release = threading.Event()
    add(app, trace, "db")
    add(
        app,
        trace,
        "slow",
        depends_on=("db",),
        start=lambda t: release.wait(BOUND),
        start_timeout=0.1,
    )
    try:
        with pytest.raises(StartupError) as caught:
            drive.start(app)
        assert caught.value.component == "slow"
        assert drive.wait() == ExitCode.FAILED
    finally:
        release.set()
    assert app.components["slow"].timed_out == "start"
    assert app.components["slow"].state is ComponentState.FAILED
    assert trace.of("stop") == ["db"]
    stuck = events_named(log_events, "component stuck")
    assert [e["component"] for e in stuck] == ["slow"]


def test_critical_worker_failing_during_startup_is_a_startup_failure(drive):
    """A critical run that raises while others still start fails the startup."""
    trace, app = Trace(), App()
    crashed = threading.Event()

    @app.worker(name="feeder")
    def feeder(token: CancelToken) -> None:
        crashed.set()
        raise ValueError("bad feed")

    def slow_start(token: CancelToken) -> None:
        assert crashed.wait(BOUND)
        token.wait(BOUND)  # released by the abort
        token.raise_if_cancelled()

    add(app, trace, "slow", start=slow_start)
    with pytest.raises(StartupError) as caught:
        drive.start(app)
    assert caught.value.component == "feeder"
    assert drive.wait() == ExitCode.FAILED
    assert app.components["slow"].state is ComponentState.FAILED
    assert not app.components["slow"].stop_called


# -- stop failures ---------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_stop_raising_fails_that_component_and_the_rest_still_stop(drive, flavour, log_events):
    """A stop that raises is FAILED and logged; its dependencies still stop; exit FAILED."""
    trace, app = Trace(), App()

    add(app, trace, "db", flavour=flavour)
    add(
        app,
        trace,
        "api",
        flavour=flavour,
        depends_on=("db",),
        stop=raising(flavour, OSError("socket already closed")),
    )
    drive.start(app)
    assert drive.stop() == ExitCode.FAILED
    assert trace.of("stop") == ["api", "db"]
    assert app.components["api"].state is ComponentState.FAILED
    assert isinstance(app.components["api"].error, OSError)
    assert app.components["db"].state is ComponentState.STOPPED
    raised = events_named(log_events, "stop() raised")
    assert [e["component"] for e in raised] == ["api"]
    assert app.state is AppState.FAILED


def stuck_sync_stop(release: threading.Event) -> Hook:
    def stop(token: CancelToken) -> None:
        release.wait(BOUND)  # <stuck-sync>

    return stop


def stuck_async_stop() -> Hook:
    async def stop(token: CancelToken) -> None:
        await asyncio.sleep(BOUND)  # <stuck-async>

    return stop


@pytest.mark.realtime
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_stop_overrun_is_abandoned_with_its_stack_and_exit_timeout(drive, flavour, log_events):
    """A stop past stop_timeout is abandoned and logged with its stack; others stop; TIMEOUT."""
    trace, app = Trace(), App()
    release = threading.Event()
    hook = stuck_sync_stop(release) if flavour == "sync" else stuck_async_stop()
    add(app, trace, "db")
    add(app, trace, "api", flavour=flavour, depends_on=("db",), stop=hook, stop_timeout=0.1)
    add(app, trace, "side")
    drive.start(app)
    try:
        began = time.monotonic()
        assert drive.stop() == ExitCode.TIMEOUT
        assert time.monotonic() - began < 2.0
    finally:
        release.set()
    info = app.components["api"]
    assert info.state is ComponentState.FAILED
    assert info.timed_out == "stop"
    assert trace.count("stop", "db") == 1
    assert trace.count("stop", "side") == 1
    assert "stopped" not in [w for w, n in trace.events if n == "api"]
    stuck = events_named(log_events, "component stuck")
    assert [e["component"] for e in stuck] == ["api"]
    marker = "# <stuck-sync>" if flavour == "sync" else "# <stuck-async>"
    stack = stuck[0]["stack"]
    assert THIS_FILE in stack
    assert f"line {line_of(marker)}" in stack, stack
    assert app.report()["exit_code"] == ExitCode.TIMEOUT


@pytest.mark.realtime
def test_async_stop_blocking_the_private_loop_is_abandoned_with_its_stack(log_events):
    """ThreadedRunner: an async stop that blocks its loop is still abandoned, stack and line."""
    trace, app = Trace(), App()
    release = threading.Event()

    async def blocking(token: CancelToken) -> None:
        release.wait(BOUND)  # <blocking-loop>

    add(app, trace, "db")
    add(app, trace, "api", flavour="async", depends_on=("db",), stop=blocking, stop_timeout=0.1)
    runner = ThreadedRunner(app, signals=None)
    runner.start()
    try:
        assert runner.stop() == ExitCode.TIMEOUT
    finally:
        release.set()
    assert trace.count("stop", "db") == 1
    (stuck,) = events_named(log_events, "component stuck")
    assert stuck["component"] == "api"
    assert THIS_FILE in stuck["stack"]
    assert f"line {line_of('# <blocking-loop>')}" in stuck["stack"], stuck["stack"]


# -- runtime failures ------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_critical_run_crash_shuts_the_app_down_failed(drive, flavour):
    """A critical run that raises stops the whole app; exit FAILED."""
    trace, app = Trace(), App()
    go = threading.Event()
    add(app, trace, "db")

    if flavour == "sync":

        @app.worker(name="w", depends_on=["db"])
        def w(token: CancelToken) -> None:
            go.wait(BOUND)
            raise KeyError("lost")

    else:

        @app.worker(name="w", depends_on=["db"])
        async def aw(token: CancelToken) -> None:
            while not go.is_set():
                await asyncio.sleep(0.001)
            raise KeyError("lost")

    drive.start(app)
    go.set()
    assert drive.wait() == ExitCode.FAILED
    assert app.components["w"].state is ComponentState.FAILED
    assert isinstance(app.components["w"].run_error, KeyError)
    assert "critical component 'w' failed" in (app.shutdown_reason or "")
    assert app.shutdown_token.cancelled, "servers watching shutdown_token must drain too"
    assert trace.of("stop") == ["db"]


def test_critical_run_returning_shuts_down_ok(drive):
    """A critical run that returns by itself requests a clean shutdown."""
    trace, app = Trace(), App()
    go = threading.Event()
    add(app, trace, "db")

    @app.worker(depends_on=["db"])
    def batch(token: CancelToken) -> None:
        go.wait(BOUND)

    drive.start(app)
    go.set()
    assert drive.wait() == ExitCode.OK
    assert "finished" in (app.shutdown_reason or "")
    assert trace.of("stop") == ["db"]
    assert app.components["batch"].state is ComponentState.STOPPED


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_non_critical_run_crash_keeps_the_app_up(drive, flavour):
    """A non-critical run that raises is FAILED in the report; the app stays up and ready."""
    trace, app = Trace(), App()
    add(app, trace, "db")
    done = threading.Event()

    if flavour == "sync":

        @app.worker(name="w", critical=False)
        def w(token: CancelToken) -> None:
            done.set()
            raise KeyError("lost")

    else:

        @app.worker(name="w", critical=False)
        async def aw(token: CancelToken) -> None:
            done.set()
            raise KeyError("lost")

    drive.start(app)
    assert done.wait(BOUND)
    wait_until(lambda: app.components["w"].state is ComponentState.FAILED)
    assert app.state is AppState.RUNNING
    assert app.ready
    assert app.report()["components"]["w"]["state"] == "failed"
    assert drive.stop() == ExitCode.OK
    assert trace.of("stop") == ["db"]


# -- shutdown while starting, bounds ---------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_shutdown_during_startup_aborts_cleanly(drive, flavour):
    """A request during startup cancels the start token, stops what started; exit OK."""
    trace, app = Trace(), App()
    seen: list[CancelToken] = []

    def slow(token: CancelToken) -> None:
        seen.append(token)
        token.wait(BOUND)
        token.raise_if_cancelled()

    async def aslow(token: CancelToken) -> None:
        seen.append(token)
        await token.wait_async(BOUND)
        token.raise_if_cancelled()

    add(app, trace, "db")
    add(
        app,
        trace,
        "slow",
        flavour=flavour,
        depends_on=("db",),
        start=slow if flavour == "sync" else aslow,
    )
    add(app, trace, "api", depends_on=("slow",))
    starting = drive.start_soon(app)
    trace.wait_for("start", "slow")
    assert not starting.done()
    app.request_shutdown("deploy")
    assert starting.result(BOUND) is None  # no StartupError: an abort is no failure
    assert drive.wait() == ExitCode.OK
    assert seen[0].cancelled
    assert trace.of("stop") == ["db"]
    assert trace.count("start", "api") == 0
    assert app.components["api"].state is ComponentState.NEW
    assert app.state is AppState.STOPPED


def test_shutdown_requested_before_start_starts_nothing(drive):
    """request_shutdown before start(): start returns at once, nothing runs, exit OK."""
    trace, app = Trace(), App()
    add(app, trace, "db")
    app.request_shutdown("never mind")
    drive.start(app)
    assert drive.wait() == ExitCode.OK
    assert trace.events == []


@pytest.mark.realtime
def test_shutdown_timeout_bounds_a_stuck_stop(drive):
    """A stop that would take longer is cut by shutdown_timeout; exit TIMEOUT."""
    trace, app = Trace(), App(shutdown_timeout=0.3, stop_timeout=60)
    release = threading.Event()
    add(app, trace, "db")
    add(app, trace, "api", depends_on=("db",), stop=lambda t: release.wait(BOUND))
    drive.start(app)
    began = time.monotonic()
    try:
        assert drive.stop() == ExitCode.TIMEOUT
        elapsed = time.monotonic() - began
    finally:
        release.set()
    assert 0.25 <= elapsed < 1.5
    assert app.components["api"].timed_out == "stop"
    # db's stop never began: the deadline passed while api was still stopping.
    assert app.components["db"].state is ComponentState.FAILED
    assert not app.components["db"].stop_called


@pytest.mark.realtime
def test_shutdown_timeout_includes_the_drain_delay(drive):
    """A drain longer than shutdown_timeout is cut by it; exit TIMEOUT."""
    trace, app = Trace(), App(shutdown_timeout=0.3, drain_delay=60)
    add(app, trace, "db")
    drive.start(app)
    began = time.monotonic()
    assert drive.stop() == ExitCode.TIMEOUT
    assert time.monotonic() - began < 1.5
    assert trace.count("stop", "db") == 0


@pytest.mark.realtime
def test_stop_token_deadline_is_bounded_by_the_shutdown_deadline(drive):
    """The stop token's deadline is min(now + stop_timeout, shutdown deadline)."""
    trace, app = Trace(), App(shutdown_timeout=2.0, stop_timeout=60)
    deadlines: dict[str, float | None] = {}
    add(app, trace, "db", stop=lambda t: deadlines.setdefault("db", t.deadline))
    add(
        app,
        trace,
        "fast",
        stop=lambda t: deadlines.setdefault("fast", t.deadline),
        stop_timeout=0.5,
    )
    drive.start(app)
    assert drive.stop() == ExitCode.OK
    shutdown_deadline = app.shutdown_deadline
    fast_began = app.components["fast"].stop_began
    assert shutdown_deadline is not None
    assert fast_began is not None
    assert deadlines["db"] == pytest.approx(shutdown_deadline, abs=0.05)
    assert deadlines["fast"] == pytest.approx(fast_began + 0.5, abs=0.05)


# -- readiness, tokens, mixing ----------------------------------------------------


@pytest.mark.realtime
def test_readiness_turns_false_synchronously_on_request(drive):
    """app.ready is False the moment request_shutdown returns, before anything stops."""
    trace, app = Trace(), App(drain_delay=0.5, shutdown_timeout=60)
    add(app, trace, "db")
    drive.start(app)
    assert ready(app)
    app.request_shutdown("deploy")
    assert not ready(app)
    # Cancelled by the runner a moment later, off the caller's thread.
    assert app.shutdown_token.wait(BOUND)
    assert trace.count("stop", "db") == 0
    app.request_shutdown("second reason is ignored")
    assert app.shutdown_reason == "deploy"
    assert drive.wait() == ExitCode.OK
    assert trace.count("stop", "db") == 1


def test_component_ready_probe_is_honoured(drive):
    """A component's ready() returning False (or raising) makes the app unready."""
    app = App()
    probe: dict[str, bool | None] = {"ready": True}

    class Probe:
        def start(self, token: CancelToken) -> None:
            pass

        def ready(self) -> bool:
            if probe["ready"] is None:
                raise RuntimeError("probe broke")
            return bool(probe["ready"])

    app.add(Probe())
    assert not ready(app)  # not running yet
    drive.start(app)
    assert ready(app)
    probe["ready"] = False
    assert not ready(app)
    probe["ready"] = None
    assert not ready(app)
    assert drive.stop() == ExitCode.OK


def test_current_token_is_the_phase_token_in_every_call(drive):
    """current_token() is the token of the call in start, run and stop, sync and async."""
    app = App()
    seen: dict[str, tuple[CancelToken, CancelToken]] = {}

    class Sync:
        def start(self, token: CancelToken) -> None:
            seen["sync.start"] = (token, current_token())

        def run(self, token: CancelToken) -> None:
            seen["sync.run"] = (token, current_token())
            token.wait(BOUND)

        def stop(self, token: CancelToken) -> None:
            seen["sync.stop"] = (token, current_token())

    class Async:
        async def start(self, token: CancelToken) -> None:
            seen["async.start"] = (token, current_token())

        async def run(self, token: CancelToken) -> None:
            seen["async.run"] = (token, current_token())
            await token.wait_async(BOUND)

        async def stop(self, token: CancelToken) -> None:
            seen["async.stop"] = (token, current_token())

    class NoArgs:
        def start(self) -> None:
            seen["noargs.start"] = (current_token(), current_token())

        async def stop(self) -> None:
            seen["noargs.stop"] = (current_token(), current_token())

    app.add(Sync())
    app.add(Async())
    app.add(NoArgs())
    drive.start(app)
    assert current_token().cancelled is False  # outside: the never-cancelled token
    assert drive.stop() == ExitCode.OK
    for key, (given, current) in seen.items():
        assert given is current, key
    for key in ("sync.start", "async.start", "noargs.start", "sync.stop", "noargs.stop"):
        assert seen[key][1].deadline is not None, key
    assert seen["sync.run"][1].deadline is None
    assert seen["sync.run"][1].cancelled
    assert set(seen) == {
        "sync.start", "sync.run", "sync.stop",
        "async.start", "async.run", "async.stop",
        "noargs.start", "noargs.stop",
    }  # fmt: skip


def test_mixed_components_run_where_they_belong(drive):
    """Sync calls run in their own threads; async calls share one event loop."""
    trace, app = Trace(), App()
    loops: list[tuple[str, asyncio.AbstractEventLoop]] = []

    async def on_loop(token: CancelToken) -> None:
        loops.append((threading.current_thread().name, asyncio.get_running_loop()))

    s1 = add(app, trace, "s1")
    add(app, trace, "a1", flavour="async", depends_on=("s1",), start=on_loop, stop=on_loop)
    s2 = add(app, trace, "s2", depends_on=("a1",))
    add(app, trace, "a2", flavour="async", depends_on=("s2",), start=on_loop)
    drive.start(app)
    assert drive.stop() == ExitCode.OK
    assert trace.of("start") == ["s1", "a1", "s2", "a2"]
    assert trace.of("stop") == ["a2", "s2", "a1", "s1"]
    assert len({id(loop) for _, loop in loops}) == 1, "async components share one loop"
    expected = "test:loop" if drive.kind == "asyncio" else "lifecycle:asyncio"
    assert {name for name, _ in loops} == {expected}
    assert s1.threads == {"start": "lifecycle:s1.start", "stop": "lifecycle:s1.stop"}
    assert s2.threads == {"start": "lifecycle:s2.start", "stop": "lifecycle:s2.stop"}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_resources_start_before_yield_and_stop_after(drive, flavour):
    """A resource's code before yield is start, after is stop; app.value gives the yield."""
    trace, app = Trace(), App()
    tokens: list[CancelToken] = []

    if flavour == "sync":

        @app.resource
        def pool(token: CancelToken):
            trace.add("start", "pool")
            tokens.append(current_token())
            yield "the pool"
            tokens.append(current_token())
            trace.add("stop", "pool")

    else:

        @app.resource
        async def pool(token: CancelToken):
            trace.add("start", "pool")
            tokens.append(current_token())
            yield "the pool"
            tokens.append(current_token())
            trace.add("stop", "pool")

    @app.resource(depends_on=[pool], name="client")
    def client():
        trace.add("start", "client")
        yield app.value(pool) + " client"
        trace.add("stop", "client")

    assert app.value(pool) is None
    drive.start(app)
    assert app.value(pool) == "the pool"
    assert app.value("client") == "the pool client"
    assert drive.stop() == ExitCode.OK
    assert trace.events == [
        ("start", "pool"),
        ("start", "client"),
        ("stop", "client"),
        ("stop", "pool"),
    ]
    start_token, stop_token = tokens
    assert start_token is not stop_token
    assert start_token.deadline is not None
    assert stop_token.deadline is not None


def test_resource_yielding_twice_fails_its_stop(drive):
    """A resource that yields twice is FAILED at stop with a message saying so."""
    app = App()

    @app.resource
    def twice():
        yield 1
        yield 2

    drive.start(app)
    assert drive.stop() == ExitCode.FAILED
    assert "yielded more than once" in str(app.components["twice"].error)


# -- configuration errors, running once -------------------------------------------


def test_cycle_is_a_config_error_and_nothing_starts(drive):
    """A dependency cycle: start raises CycleError, nothing started, exit CONFIG."""
    trace, app = Trace(), App()
    add(app, trace, "a", depends_on=("b",))
    add(app, trace, "b", depends_on=("a",))
    add(app, trace, "c")
    with pytest.raises(CycleError) as caught:
        drive.start(app)
    assert caught.value.cycle in (["a", "b", "a"], ["b", "a", "b"])
    assert drive.wait() == ExitCode.CONFIG
    assert trace.events == []
    assert app.state is AppState.FAILED


def test_unknown_dependency_is_a_config_error(drive):
    """An unknown dependency: start raises UnknownDependency with a suggestion."""
    trace, app = Trace(), App()
    add(app, trace, "db")
    add(app, trace, "api", depends_on=("dbb",))
    with pytest.raises(UnknownDependency, match="did you mean 'db'"):
        drive.start(app)
    assert drive.wait() == ExitCode.CONFIG
    assert trace.events == []


@pytest.mark.parametrize("kind", ["thread", "asyncio", "auto"])
def test_run_returns_config_for_invalid_apps(kind, log_events):
    """lifecycle.run returns 2 for a cycle or an unknown dependency; nothing started."""
    for bad in ({"a": ("b",), "b": ("a",)}, {"a": ("nope",)}):
        trace, app = Trace(), App()
        for name, deps in bad.items():
            add(app, trace, name, depends_on=deps)
        assert lifecycle.run(app, runner=kind, signals=None) == ExitCode.CONFIG
        assert trace.events == []


def test_an_app_runs_once(drive):
    """Running an App a second time is a ConfigError that says to build a new one."""
    trace, app = Trace(), App()
    add(app, trace, "db")
    drive.start(app)
    assert drive.stop() == ExitCode.OK
    with pytest.raises(ConfigError, match="an App runs once"):
        drive.start(app)
    with pytest.raises(ConfigError, match="already started"):
        add(app, trace, "late")
    assert trace.count("start", "db") == 1


def test_empty_app_starts_and_stops(drive):
    """An app without components runs and stops cleanly."""
    app = App()
    drive.start(app)
    assert state(app) is AppState.RUNNING
    assert drive.stop() == ExitCode.OK
    assert state(app) is AppState.STOPPED


# -- logging -------------------------------------------------------------------


def test_transitions_and_summary_are_logged(drive, log_events):
    """Each transition is an event with component, from/to state and duration; one summary."""
    trace, app = Trace(), App()
    add(app, trace, "db")
    drive.start(app)
    assert drive.stop() == ExitCode.OK
    moves = [
        (e["component"], e["from_state"], e["to_state"])
        for e in events_named(log_events, "transition")
    ]
    assert moves == [
        ("db", "NEW", "STARTING"),
        ("db", "STARTING", "RUNNING"),
        ("db", "RUNNING", "STOPPING"),
        ("db", "STOPPING", "STOPPED"),
    ]
    assert all(isinstance(e["duration"], float) for e in events_named(log_events, "transition"))
    (summary,) = events_named(log_events, "shutdown summary")
    assert summary["exit_code"] == 0
    assert summary["components"]["db"]["state"] == "stopped"


# -- the surface: context managers, run(), signals off the main thread -------------


def test_threaded_runner_as_context_manager(log_events):
    """``with ThreadedRunner(app)`` starts on entry and stops on exit."""
    trace, app = Trace(), App()
    add(app, trace, "db")
    with ThreadedRunner(app, signals=None) as runner:
        assert app.ready
    assert runner.exit_code == ExitCode.OK
    assert trace.of("stop") == ["db"]


def test_asyncio_runner_as_async_context_manager(log_events):
    """``async with AsyncioRunner(app)`` starts on entry and stops on exit."""
    trace, app = Trace(), App()
    add(app, trace, "db", flavour="async")

    async def main() -> int | None:
        async with AsyncioRunner(app, signals=None) as runner:
            assert app.ready
        return runner.exit_code

    assert asyncio.run(main()) == ExitCode.OK
    assert trace.of("stop") == ["db"]


@pytest.mark.parametrize(
    ("kind", "flavour", "expected_thread"),
    [
        ("auto", "sync", "lifecycle:"),
        ("auto", "async", "MainThread"),
        ("thread", "async", "lifecycle:asyncio"),
        ("asyncio", "sync", "lifecycle:"),
    ],
)
def test_run_picks_the_runner(kind, flavour, expected_thread, log_events):
    """run(runner="auto") picks asyncio when any component is async, threads otherwise."""
    trace, app = Trace(), App()
    where: list[str] = []

    def note(token: CancelToken) -> None:
        where.append(threading.current_thread().name)
        app.request_shutdown("done")

    async def anote(token: CancelToken) -> None:
        note(token)

    add(app, trace, "db", flavour=flavour, start=note if flavour == "sync" else anote)
    assert lifecycle.run(app, runner=kind, signals=None) == ExitCode.OK
    assert where[0].startswith(expected_thread)


def test_run_rejects_an_unknown_runner():
    """run(runner=...) names the allowed values."""
    with pytest.raises(ValueError, match="'auto', 'thread' or 'asyncio'"):
        lifecycle.run(App(), runner="trio")  # type: ignore[arg-type]


def test_runner_needs_an_app():
    """A runner given something else than an App says so."""
    with pytest.raises(TypeError, match=r"needs a lifecycle\.App"):
        ThreadedRunner(object())  # type: ignore[arg-type]


def test_signals_none_touches_no_process_state(drive):
    """signals=None installs no handler, in or out of the main thread."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    seen: list[dict[int, Any]] = []
    app = App()
    add(app, Trace(), "db", start=lambda t: seen.append({s: signal.getsignal(s) for s in before}))
    drive.start(app, signals=None)
    assert drive.stop() == ExitCode.OK
    assert seen == [before]
    assert {s: signal.getsignal(s) for s in before} == before


def test_signals_are_not_installed_off_the_main_thread(drive, log_events):
    """Started off the main thread, a runner installs no handler and says how to embed."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    seen: list[dict[int, Any]] = []
    app = App()
    add(app, Trace(), "db", start=lambda t: seen.append({s: signal.getsignal(s) for s in before}))
    drive.start(app, signals=(signal.SIGTERM, signal.SIGINT))
    assert drive.stop() == ExitCode.OK
    assert seen == [before]
    (warning,) = events_named(log_events, "signal handlers not installed")
    assert "signals=None" in warning["hint"]


@pytest.mark.parametrize("kind", ["thread", "asyncio"])
def test_handlers_are_installed_in_the_main_thread_and_restored(kind, log_events):
    """From the main thread, run() installs its handlers and puts back the previous ones."""
    assert threading.current_thread() is threading.main_thread()

    def mine(signum: int, frame: object) -> None:
        raise AssertionError("not expected to run")

    previous_int = signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        seen: list[Any] = []
        app = App()
        add(app, Trace(), "db", start=lambda t: seen.append(signal.getsignal(signal.SIGTERM)))
        app.add(_Stopper(app))
        assert lifecycle.run(app, runner=kind) == ExitCode.OK
        assert seen
        assert seen[0] is not mine
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is previous_int
        # It owned the process: the exit guard is armed with its code.
        assert exit_guard.code == ExitCode.OK
    finally:
        signal.signal(signal.SIGTERM, previous)
        exit_guard.code = None  # this process is pytest's, not the app's


@contextlib.contextmanager
def _wakeup_fd_of_the_program() -> Iterator[socket.socket]:
    """A wake-up fd installed as a program (an asyncio loop) would; its reading end."""
    reader, writer = socket.socketpair()
    for end in (reader, writer):
        end.setblocking(False)
    before = signal.set_wakeup_fd(writer.fileno())
    try:
        yield reader
    finally:
        signal.set_wakeup_fd(before)
        reader.close()
        writer.close()


def _signal_from_another_thread(signum: int) -> None:
    """``signum`` sent to a thread that is not the main one: its C-level handler runs there."""
    sender = threading.Thread(target=lambda: signal.pthread_kill(threading.get_ident(), signum))
    sender.start()
    sender.join(BOUND)


@pytest.mark.parametrize("kind", ["thread", "asyncio"])
def test_the_wakeup_fd_installed_before_keeps_its_signals_and_is_put_back(kind, log_events):
    """A program's wake-up fd: the signals the runner's wake-up read reach it; it is back after."""
    assert threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        with _wakeup_fd_of_the_program() as reader:
            app = App()
            add(app, Trace(), "db", start=lambda t: _signal_from_another_thread(signal.SIGUSR1))
            app.add(_Stopper(app))
            assert lifecycle.run(app, runner=kind) == ExitCode.OK
            assert reader.recv(64) == bytes([signal.SIGUSR1])
            mine = signal.set_wakeup_fd(-1)
            signal.set_wakeup_fd(mine)
            assert mine != -1
            assert mine == signal.set_wakeup_fd(mine)  # still the program's, not a closed one
    finally:
        signal.signal(signal.SIGUSR1, previous)
        exit_guard.code = None  # this process is pytest's, not the app's


def test_a_signal_on_another_thread_wakes_the_main_threads_wait_at_once(monkeypatch):
    """wait_event on an installed wake-up: a signal that hit another thread runs the handler now.

    The slices are made longer than the wait: only the wake-up can end it.
    """
    monkeypatch.setattr(signals_module, "WAKEUP_SLICE", 4 * BOUND)
    handled = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: handled.set())
    wakeup = SignalWakeup()
    try:
        assert wakeup.install()
        _signal_from_another_thread(signal.SIGUSR1)
        assert wait_event(handled, BOUND, wakeup)
    finally:
        wakeup.restore()
        signal.signal(signal.SIGUSR1, previous)
    assert not wakeup.installed
    assert signal.set_wakeup_fd(-1) == -1


def test_without_a_wakeup_the_main_thread_still_runs_the_handler_within_a_slice():
    """wait_event with no wake-up (signals=None): the handler of a signal on another thread runs."""
    handled = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: handled.set())
    try:
        _signal_from_another_thread(signal.SIGUSR1)
        assert wait_event(handled, BOUND)
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.realtime
@pytest.mark.skipif(not hasattr(resource, "RUSAGE_THREAD"), reason="per-thread CPU is Linux's")
@pytest.mark.parametrize("with_wakeup", [True, False], ids=["wakeup", "slices"])
def test_waiting_in_slices_costs_no_cpu_to_speak_of(with_wakeup):
    """A second of wait_event on the main thread: under 25 ms of its CPU (measured ~0.2 / ~1.1 ms).

    A busy poll would spend most of the second.
    """
    wakeup = SignalWakeup()
    if with_wakeup:
        assert wakeup.install()
    try:
        before = resource.getrusage(resource.RUSAGE_THREAD)
        assert not wait_event(threading.Event(), 1.0, wakeup)
        after = resource.getrusage(resource.RUSAGE_THREAD)
    finally:
        wakeup.restore()
    spent = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert spent < 0.025


def test_a_wakeup_fd_installed_after_ours_is_left_in_place():
    """The program replaced the wake-up fd during the run: restore() leaves its one."""
    wakeup = SignalWakeup()
    assert wakeup.install()
    reader, writer = socket.socketpair()
    try:
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno())
        wakeup.restore()
        assert signal.set_wakeup_fd(-1) == writer.fileno()
    finally:
        signal.set_wakeup_fd(-1)
        reader.close()
        writer.close()
    assert wakeup.fileno() == -1
    wakeup.wake()  # restored: a no-op, not an error


def test_wakeup_is_no_wakeup_off_the_main_thread():
    """Only the main thread may install a wake-up fd: install() says False elsewhere."""
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(SignalWakeup().install()))
    worker.start()
    worker.join(BOUND)
    assert result == [False]


def test_helper_threads_block_signals_and_user_code_started_there_gets_the_programs_mask():
    """A helper thread blocks SIGTERM; a user-code thread it starts has the creator's mask again.

    Both a thread and a process that user code starts inherit the mask; a
    blocked SIGTERM would make ``Process.terminate()`` of such a child a no-op.
    """
    assert signal.SIGTERM in HELPER_BLOCKED
    assert signal.SIGSEGV not in HELPER_BLOCKED
    assert signal.SIGPIPE not in HELPER_BLOCKED
    program = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    seen: dict[str, set[int]] = {}

    def user_code() -> None:
        seen["user"] = signal.pthread_sigmask(signal.SIG_BLOCK, ())

    def helper() -> None:
        seen["helper"] = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        inner = threading.Thread(target=user_code_thread(user_code))
        inner.start()
        inner.join(BOUND)
        plain = threading.Thread(target=lambda: seen.update(plain=signal.pthread_sigmask(0, ())))
        plain.start()
        plain.join(BOUND)

    outer = threading.Thread(target=helper_thread(helper))
    outer.start()
    outer.join(BOUND)
    assert seen["helper"] >= HELPER_BLOCKED
    assert seen["user"] == program
    assert seen["plain"] >= HELPER_BLOCKED  # what a plain thread of a helper would inherit
    assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == program  # the caller's untouched


@pytest.mark.parametrize("kind", ["thread", "asyncio"])
def test_run_without_its_handlers_leaves_the_exit_to_the_owner(kind, log_events):
    """run(signals=None) does not own the process: no exit guard is armed."""
    app = App()
    app.add(_Stopper(app))
    assert lifecycle.run(app, runner=kind, signals=None) == ExitCode.OK
    assert exit_guard.code is None


def test_a_request_made_before_start_is_timed_from_the_start(drive, log_events):
    """A shutdown requested an hour before start() counts its deadline from the start."""
    trace, app = Trace(), App(shutdown_timeout=5)
    add(app, trace, "db")
    app.request_shutdown("never mind")
    app._run.requested_at = time.monotonic() - 3600  # as if requested an hour ago
    before = time.monotonic()
    drive.start(app)
    assert drive.wait() == ExitCode.OK
    deadline = app.shutdown_deadline
    assert deadline is not None
    assert deadline >= before + 5
    assert events_named(log_events, "shutdown deadline missed") == []
    assert trace.events == []


class _Stopper:
    """Requests shutdown as soon as it runs."""

    def __init__(self, app: App) -> None:
        self.app = app

    def run(self, token: CancelToken) -> None:
        self.app.request_shutdown("stopper")
        token.wait(BOUND)


def test_exit_codes_are_documented_values():
    """ExitCode pins the documented numbers."""
    assert [(c.name, int(c)) for c in ExitCode] == [
        ("OK", 0),
        ("FAILED", 1),
        ("CONFIG", 2),
        ("TIMEOUT", 3),
    ]


# -- runner edges ------------------------------------------------------------------


@pytest.mark.parametrize("call", ["stop", "wait"])
def test_stop_or_wait_before_start_raises_saying_to_start_first(drive, call):
    """stop() or wait() on a runner never started raises at once, saying to call start()."""
    drive.make(App("shop"))
    method = drive.stop if call == "stop" else drive.wait
    with pytest.raises(RuntimeError) as caught:
        method()
    assert str(caught.value) == (
        f"cannot {call}: the runner of app 'shop' was never started; call start() first "
        f"(or use the runner as a context manager)"
    )


def test_start_twice_raises_saying_a_runner_runs_once(drive):
    """A second start() of one runner raises RuntimeError, while running and once finished."""
    trace, app = Trace(), App("shop")
    add(app, trace, "db")
    drive.start(app)
    with pytest.raises(RuntimeError, match="cannot start: this runner of app 'shop' was started"):
        drive.start_again()
    assert drive.stop() == ExitCode.OK
    with pytest.raises(RuntimeError, match=r"has finished \(exit code 0\); a runner runs"):
        drive.start_again()
    assert trace.count("start", "db") == 1


# -- user callbacks never run on the control loop -----------------------------------


@pytest.mark.realtime
def test_a_blocking_shutdown_token_callback_cannot_unbound_the_shutdown(drive):
    """A shutdown_token callback blocking 3 s delays nobody: request returns, the app stops."""
    trace, app = Trace(), App(shutdown_timeout=1.0)
    ran = threading.Event()

    def blocking() -> None:
        ran.set()
        time.sleep(3)  # the callback's own business: it blocks only itself

    app.shutdown_token.on_cancel(blocking)
    add(app, trace, "db")
    drive.start(app)
    began = time.monotonic()
    app.request_shutdown("deploy")
    returned = time.monotonic() - began
    assert drive.wait() == ExitCode.OK
    took = time.monotonic() - began
    assert ran.wait(BOUND), "the callback never ran"
    assert returned < 0.5
    assert took < 1.0
    assert trace.of("stop") == ["db"]


@pytest.mark.realtime
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_blocking_run_token_callback_cannot_unbound_the_shutdown(drive, flavour):
    """run's on_cancel(server.shutdown) blocking 3 s: shutdown_timeout=1 cuts at ~1 s; TIMEOUT."""
    app = App(shutdown_timeout=1.0, stop_timeout=10)
    served = threading.Event()
    registered = threading.Event()

    def shutdown() -> None:  # like socketserver's shutdown(): blocks until serving ended
        time.sleep(3)
        served.set()

    if flavour == "sync":

        @app.worker(name="server")
        def serve(token: CancelToken) -> None:
            token.on_cancel(shutdown)
            registered.set()
            served.wait(BOUND)  # serve_forever()

    else:

        @app.worker(name="server")
        async def aserve(token: CancelToken) -> None:
            token.on_cancel(shutdown)
            registered.set()
            while not served.is_set():
                await asyncio.sleep(0.005)

    drive.start(app)
    assert registered.wait(BOUND)  # registered on a live token: it will run when cancelled
    began = time.monotonic()
    assert drive.stop() == ExitCode.TIMEOUT
    took = time.monotonic() - began
    assert 0.9 <= took < 2.0, f"the shutdown took {took:.2f}s"
    assert app.components["server"].timed_out == "stop"


# -- what a run's end means --------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_group_of_cancellations_from_run_is_a_clean_stop(drive, flavour, log_events):
    """A worker whose TaskGroup children honour the token ends with a group of Cancelled: OK."""
    app = App()

    if flavour == "async":

        @app.worker(name="fanout")
        async def fanout(token: CancelToken) -> None:
            async def child() -> None:
                await token.wait_async(BOUND)
                token.raise_if_cancelled()

            async with asyncio.TaskGroup() as group:
                group.create_task(child())
                group.create_task(child())

    else:

        @app.worker(name="fanout")
        def sync_fanout(token: CancelToken) -> None:
            token.wait(BOUND)
            raise BaseExceptionGroup("children", [Cancelled("a"), Cancelled("b")])

    drive.start(app)
    assert drive.stop() == ExitCode.OK
    info = app.components["fanout"]
    assert (info.state, info.run_error) == (ComponentState.STOPPED, None)
    assert events_named(log_events, "run() raised") == []


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_non_critical_start_failure_leaves_the_app_running_without_it(drive, flavour):
    """critical=False covers start: start() does not raise, the app runs; it is FAILED; exit OK."""
    trace, app = Trace(), App()
    add(app, trace, "db")
    down = raising(flavour, ConnectionRefusedError("cache is down"))
    add(app, trace, "cache", flavour=flavour, start=down, critical=False)
    add(app, trace, "api", depends_on=("db",))
    drive.start(app)
    assert state(app) is AppState.RUNNING
    assert ready(app)
    cache = app.report()["components"]["cache"]
    assert (cache["state"], cache["error"]) == ("failed", "ConnectionRefusedError: cache is down")
    assert drive.stop() == ExitCode.OK
    assert trace.of("stop") == ["api", "db"]


@pytest.mark.parametrize(
    ("error", "expected", "timed_out"),
    [
        (TimeoutError("the client's socket timed out"), ExitCode.FAILED, None),
        (DeadlineExceeded("api", ["GET /slow (2.0s)"]), ExitCode.TIMEOUT, "stop"),
    ],
    ids=["TimeoutError", "DeadlineExceeded"],
)
def test_only_deadline_exceeded_from_a_stop_means_timeout(drive, error, expected, timed_out):
    """A plain TimeoutError from stop is a failure (exit 1); DeadlineExceeded, a cut (exit 3)."""
    trace, app = Trace(), App()
    add(app, trace, "api", stop=raising("sync", error))
    drive.start(app)
    assert drive.stop() == expected
    info = app.components["api"]
    assert (info.state, info.timed_out) == (ComponentState.FAILED, timed_out)


def test_explicit_hooks_are_called_instead_of_methods(drive):
    """app.add(obj, start=..., stop=...) calls the hooks, with the token where asked for."""
    calls: list[tuple[str, bool]] = []

    class Pool:
        def open(self, token: CancelToken) -> None:
            calls.append(("open", isinstance(token, CancelToken)))

        def close(self) -> None:
            calls.append(("close", False))

    pool = Pool()
    app = App()
    app.add(pool, name="pool", start=pool.open, stop=pool.close)
    drive.start(app)
    assert drive.stop() == ExitCode.OK
    assert calls == [("open", True), ("close", False)]


# -- loops, the health endpoint and the watchdog ------------------------------------


def test_private_loop_cancels_and_awaits_what_is_left_before_stop_returns(log_events, caplog):
    """ThreadedRunner: a task left on its private loop is cancelled and awaited; finally runs."""
    app = App()
    ended = threading.Event()

    class Spawner:
        async def start(self, token: CancelToken) -> None:
            began = asyncio.Event()

            async def forever() -> None:
                try:
                    began.set()
                    await asyncio.sleep(BOUND * 10)
                finally:
                    ended.set()

            asyncio.get_running_loop().create_task(forever())
            await began.wait()  # inside its try block: a cancel now runs the finally

    app.add(Spawner())
    runner = ThreadedRunner(app, signals=None)
    runner.start()
    assert runner.stop() == ExitCode.OK
    assert ended.is_set(), "the task was not cancelled and awaited before stop() returned"
    gc.collect()
    destroyed = [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()]
    assert destroyed == []


def test_health_endpoint_closes_off_the_event_loop(log_events, monkeypatch):
    """AsyncioRunner: HealthServer.close (it joins threads) runs on a call thread, not the loop."""
    closed_in: list[str] = []
    original = HealthServer.close

    def close(self: HealthServer) -> None:
        closed_in.append(threading.current_thread().name)
        original(self)

    monkeypatch.setattr(HealthServer, "close", close)
    app = App("shop", health=0)
    add(app, Trace(), "db", flavour="async")

    async def main() -> tuple[int | None, str]:
        async with AsyncioRunner(app, signals=None) as runner:
            pass
        return runner.exit_code, threading.current_thread().name

    code, loop_thread = lifecycle.asyncio_run(main())
    assert code == ExitCode.OK
    assert len(closed_in) == 1
    assert closed_in[0] != loop_thread


@pytest.mark.realtime
def test_a_control_loop_stuck_past_the_deadline_is_reported_with_its_stack(drive):
    """A log processor blocking the control loop: the watchdog logs where it is stuck; TIMEOUT."""
    release = threading.Event()
    capture = LogCapture()

    def blocking(
        logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if event.get("event") == "app transition" and event.get("to_state") == "STOPPING":
            release.wait(BOUND)  # <stuck-control>
        return event

    structlog.configure(processors=[blocking, capture], cache_logger_on_first_use=False)
    trace, app = Trace(), App(shutdown_timeout=0.3)
    add(app, trace, "db")
    drive.start(app)
    try:
        app.request_shutdown("deploy")
        wait_until(lambda: bool(events_named(list(capture.entries), "shutdown deadline missed")))
        if drive.kind == "thread":
            # The control thread is stuck, yet wait() returns: the watchdog ended the run.
            assert drive.wait() == ExitCode.TIMEOUT
    finally:
        release.set()
    # An asyncio runner's wait() runs on the blocked loop: it returns once the loop runs again.
    assert drive.wait() == ExitCode.TIMEOUT
    (missed,) = events_named(list(capture.entries), "shutdown deadline missed")
    assert THIS_FILE in missed["stack"]
    assert f"line {line_of('# <stuck-control>')}" in missed["stack"], missed["stack"]
    assert missed["seconds_late"] >= 0.5
    assert missed["exit"] is False  # embedded: reported, not ended


def test_asyncio_run_refuses_a_non_coroutine_and_a_running_loop():
    """asyncio_run needs a coroutine, and cannot nest in a running loop; both say so."""

    async def main() -> int:
        return 7

    with pytest.raises(TypeError, match=r"call the function, as in asyncio_run\(main\(\)\)"):
        lifecycle.asyncio_run(main)  # type: ignore[arg-type]
    assert lifecycle.asyncio_run(main()) == 7

    async def nested() -> None:
        with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
            lifecycle.asyncio_run(main())

    asyncio.run(nested())


def test_asyncio_run_teardown_is_bounded_and_names_what_stays(log_events):
    """A task left behind that swallows cancellation: asyncio_run returns, bounded, naming it."""

    async def stubborn() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(BOUND)  # <swallows>

    async def main() -> str:
        asyncio.get_running_loop().create_task(stubborn(), name="stubborn")
        await asyncio.sleep(0)
        return "done"

    began = time.monotonic()
    assert lifecycle.asyncio_run(main(), teardown_timeout=0.1) == "done"
    assert time.monotonic() - began < 2.0
    (pending,) = events_named(log_events, "task still pending when its event loop closed")
    assert pending["task"] == "stubborn"
    assert f"line {line_of('# <swallows>')}" in pending["stack"]


# -- failure paths: what a caller giving up, a second runner and bad arguments do ---------


@pytest.mark.realtime
def test_a_cancelled_asyncio_start_stops_the_app_and_restores_the_handlers(log_events):
    """asyncio.wait_for(runner.start(), 0.2), start hanging: the app is stopped, handlers back."""
    assert threading.current_thread() is threading.main_thread()
    watched = (signal.SIGTERM, signal.SIGINT)
    before = {s: signal.getsignal(s) for s in watched}
    app = App(shutdown_timeout=0.3, start_timeout=50)

    class Hangs:
        async def start(self, token: CancelToken) -> None:
            await asyncio.sleep(BOUND * 10)  # ignores its token

    app.add(Hangs(), name="hangs")

    async def main() -> None:
        runner = AsyncioRunner(app)  # the default signals: installed, from the main thread
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(runner.start(), 0.2)

    try:
        asyncio.run(main())
        assert {s: signal.getsignal(s) for s in watched} == before
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert app.exit_code == ExitCode.TIMEOUT  # the start was abandoned at the deadline
    assert app.components["hangs"].state is ComponentState.FAILED
    assert events_named(log_events, "lifecycle control loop crashed; this is a bug") == []


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_runner_that_never_claimed_the_app_leaves_it_alone(kind, log_events):
    """A second runner's start() raises ConfigError; its stop() returns CONFIG; the app runs on."""
    trace, app = Trace(), App("shop")
    add(app, trace, "db", flavour="sync" if kind == "thread" else "async")

    def second() -> tuple[int, int]:
        late = ThreadedRunner(app, signals=None)
        with pytest.raises(ConfigError, match="was already run"):
            late.start()
        return late.stop("cleanup of the second runner"), late.wait()

    async def asecond() -> tuple[int, int]:
        late = AsyncioRunner(app, signals=None)
        with pytest.raises(ConfigError, match="was already run"):
            await late.start()
        return await late.stop("cleanup of the second runner"), await late.wait()

    if kind == "thread":
        first = ThreadedRunner(app, signals=None)
        first.start()
        assert second() == (ExitCode.CONFIG, ExitCode.CONFIG)
        assert (ready(app), app.shutdown_reason) == (True, None)
        assert first.stop() == ExitCode.OK
    else:

        async def main() -> None:
            first = AsyncioRunner(app, signals=None)
            await first.start()
            assert await asecond() == (ExitCode.CONFIG, ExitCode.CONFIG)
            assert (ready(app), app.shutdown_reason) == (True, None)
            assert await first.stop() == ExitCode.OK

        lifecycle.asyncio_run(main())
    assert trace.of("stop") == ["db"]


@pytest.mark.parametrize("cls", [ThreadedRunner, AsyncioRunner])
@pytest.mark.parametrize("grace", [None, "abc", math.nan, -1, math.inf, True])
def test_a_bad_signal_grace_is_refused_at_construction(cls, grace):
    """signal_grace must be a finite number of seconds >= 0; the message names it."""
    with pytest.raises(ConfigError, match="signal_grace"):
        cls(App(), signal_grace=grace)
    assert cls(App(), signal_grace=0).signal_grace == 0.0


@pytest.mark.parametrize("cls", [ThreadedRunner, AsyncioRunner])
@pytest.mark.parametrize(
    ("signals", "culprit"),
    [
        ([999], "999 is not a signal"),
        ([signal.SIGTERM, signal.SIGKILL], "SIGKILL cannot be handled"),
        ([signal.SIGSTOP], "SIGSTOP cannot be handled"),
        ([True], "True is not a signal"),
        ([15.0], "15.0 is not a signal"),
        (15, "a tuple of signal numbers, got 15"),
        ("SIGTERM", "a tuple of signal numbers, got 'SIGTERM'"),
    ],
)
def test_bad_signals_are_refused_at_construction(cls, signals, culprit):
    """signals must be catchable signal numbers of this platform; the message names the culprit."""
    with pytest.raises(ConfigError, match=culprit):
        cls(App(), signals=signals)


def test_handlers_are_installed_all_or_none():
    """A signal refusing its handler: ConfigError naming it; the ones installed before are back."""
    assert threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM)
    handlers = SignalHandlers()
    with pytest.raises(ConfigError, match="cannot handle SIGKILL"):
        handlers.install((signal.SIGTERM, signal.SIGKILL), lambda signum, frame: None)
    assert signal.getsignal(signal.SIGTERM) is before


def test_main_raising_under_asyncio_run_stops_the_app_before_it_propagates(log_events):
    """asyncio_run(main()), main raising after start(): stop runs, the error follows, no 'bug'."""
    trace, app = Trace(), App()
    add(app, trace, "db", flavour="async")

    async def main() -> None:
        runner = AsyncioRunner(app, signals=None)
        await runner.start()
        raise RuntimeError("main failed after start")

    with pytest.raises(RuntimeError, match="main failed after start"):
        lifecycle.asyncio_run(main())
    assert trace.of("stop") == ["db"]
    assert app.exit_code == ExitCode.OK
    assert app.shutdown_reason == (
        "the program's main() raised RuntimeError with the app still running"
    )
    assert events_named(log_events, "lifecycle control loop crashed; this is a bug") == []


def test_plain_asyncio_run_cancelling_the_runner_stops_the_app_first(log_events):
    """asyncio.run's teardown cancels the runner's task while the app runs: stop runs, no 'bug'."""
    trace, app = Trace(), App()
    add(app, trace, "db", flavour="sync")

    async def main() -> None:
        runner = AsyncioRunner(app, signals=None)
        await runner.start()  # and main() returns with the app running

    asyncio.run(main())
    assert trace.of("stop") == ["db"]
    assert app.shutdown_reason == "the runner's task was cancelled"
    assert events_named(log_events, "lifecycle control loop crashed; this is a bug") == []


def test_readiness_is_off_as_soon_as_a_critical_run_fails(drive):
    """A critical worker raising: app.ready is False before the control loop has heard of it."""
    blocked, release, go = threading.Event(), threading.Event(), threading.Event()

    def hold(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event.get("event") == "run() raised":  # the control loop, handling the crash
            blocked.set()
            release.wait(BOUND)
        return event

    structlog.configure(processors=[hold, LogCapture()], cache_logger_on_first_use=False)
    app = App()

    @app.worker(name="crasher")
    def crasher(token: CancelToken) -> None:
        assert go.wait(BOUND)
        raise RuntimeError("crashed at once")

    drive.start(app)
    assert ready(app)
    go.set()
    assert blocked.wait(BOUND)
    try:
        assert not ready(app)
    finally:
        release.set()
    assert drive.wait() == ExitCode.FAILED


# -- a run's end and the shutdown, in the order they happened ------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_run_raising_cancelled_on_a_live_token_is_logged_as_a_crash(drive, flavour, log_events):
    """A Cancelled from the run's own inner deadline is a crash with its stack, not an end."""
    app = App("inner", shutdown_timeout=5)

    def inner_deadline(token: CancelToken) -> None:
        with lifecycle.CancelSource(token, timeout=0.0) as own:
            own.token.raise_if_cancelled()

    if flavour == "sync":
        app.worker(name="w", critical=False)(inner_deadline)
    else:

        async def ainner(token: CancelToken) -> None:
            inner_deadline(token)

        app.worker(name="w", critical=False)(ainner)
    drive.start(app)
    wait_until(lambda: app.components["w"].state is ComponentState.FAILED)
    assert drive.stop() == ExitCode.OK
    (raised,) = events_named(log_events, "run() raised")
    assert raised["component"] == "w"
    assert raised["exc_info"][0] is Cancelled


def test_a_run_that_honoured_its_cancelled_token_logs_no_crash(drive, log_events):
    """A run ending with Cancelled once its own token was cancelled ended as asked."""
    app = App("honour", shutdown_timeout=5)

    @app.worker(name="w")
    def w(token: CancelToken) -> None:
        token.wait(BOUND)
        token.raise_if_cancelled()

    drive.start(app)
    assert drive.stop() == ExitCode.OK
    assert events_named(log_events, "run() raised") == []


def test_a_recorded_request_wins_over_a_restart_falling_due_before_its_wake_up(drive):
    """The control loop learns of a recorded request at its next wake-up, before a restart.

    The request's own wake-up is held back here, as if still on its way; the
    restart timer's tick is what wakes the loop. No second run may begin.
    """
    runs: list[int] = []
    app = App("race", shutdown_timeout=5)

    @app.worker(
        name="w",
        restart=lifecycle.RestartPolicy(
            "always", max_restarts=5, within=60.0, backoff=0.3, backoff_max=0.3, jitter=0.0
        ),
    )
    def w(token: CancelToken) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("crash: restart in 0.3 s")
        token.wait(BOUND)

    runner = drive.make(app)
    runner._wake_for_request = lambda: None
    drive._submit(runner.start).result(BOUND)
    wait_until(lambda: app.components["w"].state is ComponentState.RESTARTING)
    app.request_shutdown("test")
    assert drive.wait() == ExitCode.OK
    assert runs == [1]


# -- the shutdown's critical path: what it no longer pays ----------------------------


def test_the_summary_says_what_the_report_says_of_each_component(drive):
    """The summary's components, made from the records, equal the report's summary keys.

    Clean stops, a stop that raised, a stop cut at its deadline (cut_count), a
    non-critical start that failed and the dependent it kept NEW: each entry
    is the report entry's `_SUMMARY_KEYS` that are set, in that order.
    """
    from lifecycle._runtime import runners  # noqa: PLC0415 - the private helper compared

    trace, app = Trace(), App()
    add(app, trace, "db")
    add(app, trace, "api", depends_on=("db",), stop=raising("sync", ValueError("pool gone")))
    cut = DeadlineExceeded("web", ["GET /slow (2.0s)", "GET /slower (3.0s)"])
    add(app, trace, "web", flavour="async", stop=raising("async", cut))
    add(app, trace, "cache", start=raising("sync", OSError("down")), critical=False)
    add(app, trace, "warmer", depends_on=("cache",), critical=False)
    capture = LogCapture()
    structlog.configure(processors=[capture], cache_logger_on_first_use=False)
    try:
        drive.start(app)
        assert drive.stop() == ExitCode.TIMEOUT
    finally:
        structlog.reset_defaults()
    report = app.report()["components"]
    expected = {
        name: {k: entry[k] for k in runners._SUMMARY_KEYS if entry.get(k) is not None}
        for name, entry in report.items()
    }
    made = {name: runners._summary_entry(info) for name, info in app.components.items()}
    assert made == expected
    assert [list(entry) for entry in made.values()] == [list(e) for e in expected.values()]
    assert made["web"]["cut_count"] == 2
    assert made["api"]["error"] == "ValueError: pool gone"
    assert made["warmer"]["state"] == "new"
    assert "DependencyFailed" in made["warmer"]["error"]
    (summary,) = [e for e in capture.entries if e["event"] == "shutdown summary"]
    assert summary["components"] == expected


def test_no_summary_is_made_when_its_level_is_off(drive, monkeypatch):
    """A summary nobody would see is not built: no component's entry is made."""
    from lifecycle._runtime import runners  # noqa: PLC0415 - the function counted

    made: list[str] = []

    def counting(info: Any) -> dict[str, Any]:
        made.append(info.name)
        return {}

    monkeypatch.setattr(runners, "_summary_entry", counting)
    structlog.configure(
        processors=[LogCapture()],
        wrapper_class=structlog.make_filtering_bound_logger(40),  # ERROR and up
    )
    try:
        trace, app = Trace(), App()
        add(app, trace, "db")
        drive.start(app)
        assert drive.stop() == ExitCode.OK
    finally:
        structlog.reset_defaults()
    assert made == []


def test_closed_call_threads_end_one_after_the_other_and_all_of_them():
    """close() wakes one idle thread; each wakes the next as it ends; none is left."""
    from lifecycle._runtime import runners  # noqa: PLC0415 - the pool itself

    pool = runners._CallThreads()
    ran = threading.Event()
    done = threading.Barrier(5, timeout=BOUND)

    def job() -> None:
        ran.set()
        done.wait()

    for _ in range(4):
        pool.submit(job, "lifecycle:test-pool")
    done.wait()  # all four calls ran in four threads at once
    wait_until(lambda: len(pool._idle) == 4)
    threads = [t for t in threading.enumerate() if t.name == "lifecycle:idle"]
    assert len(threads) >= 4
    woken: list[int] = []
    real_end_next = pool._end_next

    def end_next() -> None:
        woken.append(len(pool._closing))
        real_end_next()

    pool._end_next = end_next  # type: ignore[method-assign]
    pool.close()
    for thread in threads:
        thread.join(BOUND)
        assert not thread.is_alive()
    assert woken[:4] == [4, 3, 2, 1]  # the close, then each ending thread: one at a time
    assert pool._closing == []


def test_a_reserved_thread_runs_its_first_call_with_the_programs_mask():
    """A reserved thread blocks the helper signals while idle, unblocks them for its call."""
    from lifecycle._runtime import runners  # noqa: PLC0415 - the pool itself

    if not HELPER_BLOCKED:
        pytest.skip("no signal masks on this platform")
    program = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    pool = runners._CallThreads()
    try:
        pool.reserve(1)
        wait_until(lambda: any(t.name == "lifecycle:idle" for t in threading.enumerate()))
        (idle,) = [t for t in threading.enumerate() if t.name == "lifecycle:idle"]
        status = Path(f"/proc/self/task/{idle.native_id}/status")
        if status.exists():  # Linux: the idle thread's own mask, read from outside it
            (line,) = [li for li in status.read_text().splitlines() if li.startswith("SigBlk:")]
            bits = int(line.split()[1], 16)
            blocked = {n for n in range(1, 65) if bits >> (n - 1) & 1}
            assert {int(s) for s in HELPER_BLOCKED} <= blocked
        seen: list[set[int]] = []
        called = threading.Event()

        def job() -> None:
            seen.append({int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, ())})
            called.set()

        pool.submit(job, "lifecycle:test-mask")
        assert called.wait(BOUND)
        assert seen == [{int(s) for s in program}]
        assert all(type(n) is int for n in sigmask(signal.SIG_BLOCK, ()))  # no enum lookups
    finally:
        pool.close()


def test_the_deadline_timer_is_started_before_the_shutdown_needs_it(drive, monkeypatch):
    """Once the app has run RESERVE_AFTER, a far-deadline token starts the timer thread."""
    from lifecycle._runtime import runners  # noqa: PLC0415 - its warm-up observed

    monkeypatch.setattr(runners, "RESERVE_AFTER", 0.0)
    warmed = threading.Event()
    real = lifecycle.CancelSource

    class Watching(real):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if kwargs.get("timeout") == runners._WARM_TIMEOUT:
                warmed.set()

    monkeypatch.setattr(runners, "CancelSource", Watching)
    trace, app = Trace(), App()
    add(app, trace, "db", flavour="async")  # no sync stop: no call threads, but a deadline
    drive.start(app)
    drive.runner._post(("tick",))  # the control loop runs a round: RESERVE_AFTER is past
    assert warmed.wait(BOUND)
    from lifecycle._core.tokens import _default_timer  # noqa: PLC0415

    assert _default_timer._thread is not None
    assert _default_timer._thread.is_alive()
    assert drive.stop() == ExitCode.OK
    assert trace.of("stop") == ["db"]


def test_sync_stops_on_reserved_threads_run_with_the_programs_mask(drive, monkeypatch):
    """Both runners: a stop on a thread readied ahead of the shutdown has the program's mask.

    The asyncio runner readies them from its loop thread, no helper: the
    threads must not inherit the blocked signals of the helper that starts them.
    """
    from lifecycle._runtime import runners  # noqa: PLC0415 - its reserve observed

    if not HELPER_BLOCKED:
        pytest.skip("no signal masks on this platform")
    monkeypatch.setattr(runners, "RESERVE_AFTER", 0.0)
    program = {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, ())}
    seen: list[tuple[str, set[int]]] = []
    reserved = threading.Event()
    real_reserve = runners._CallThreads.reserve

    def reserve(self: Any, count: int) -> None:
        real_reserve(self, count)
        reserved.set()

    monkeypatch.setattr(runners._CallThreads, "reserve", reserve)

    class Stop:
        def stop(self, token: CancelToken) -> None:
            mask = {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, ())}
            seen.append((threading.current_thread().name, mask))

    app = App()
    for i in range(3):
        app.add(Stop(), name=f"s{i}")
    drive.start(app)
    drive.runner._post(("tick",))
    assert reserved.wait(BOUND)
    wait_until(lambda: sum(t.name == "lifecycle:idle" for t in threading.enumerate()) >= 3)
    assert drive.stop() == ExitCode.OK
    assert sorted(name for name, _ in seen) == [
        "lifecycle:s0.stop",
        "lifecycle:s1.stop",
        "lifecycle:s2.stop",
    ]
    assert [mask for _, mask in seen] == [program] * 3


def test_the_threaded_runner_renders_a_round_once_its_sync_stops_began(monkeypatch):
    """The round's log waits (GIL released) for the stops it handed to threads to begin."""
    from lifecycle._runtime import runners  # noqa: PLC0415 - its bound widened

    monkeypatch.setattr(runners, "BEGIN_BOUND", BOUND)  # no slow thread can outwait it
    began: list[str] = []
    seen_at_render: list[int] = []

    class Stop:
        def __init__(self, name: str) -> None:
            self.name = name

        def stop(self, token: CancelToken) -> None:
            began.append(self.name)
            token.wait(BOUND)  # still running as the round renders: began, not ended

    def processor(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        if event["event"] == "transition" and event["to_state"] == "STOPPING":
            seen_at_render.append(len(began))
        return event

    structlog.configure(processors=[processor, LogCapture()], cache_logger_on_first_use=False)
    try:
        app = App(shutdown_timeout=BOUND, stop_timeout=0.05)
        for i in range(5):
            app.add(Stop(f"s{i}"), name=f"s{i}")
        runner = ThreadedRunner(app, signals=None)
        runner.start()
        assert runner.stop() == ExitCode.TIMEOUT  # each stop waits out its 50 ms
    finally:
        structlog.reset_defaults()
    assert sorted(began) == [f"s{i}" for i in range(5)]
    assert seen_at_render == [5] * 5  # every STOPPING line rendered after all five began


def _cancel_runner_task(app: App) -> list[asyncio.Task[Any]]:
    """Cancel the asyncio runner's control task (as the loop's owner would); the tasks cancelled."""
    control = [t for t in asyncio.all_tasks() if t.get_name() == f"lifecycle:{app.name}"]
    for task in control:
        task.cancel()
    return control


def _stop_tasks(besides: asyncio.Task[Any] | None) -> list[str]:
    return sorted(
        task.get_name()
        for task in asyncio.all_tasks()
        if task is not besides and task.get_name().endswith(".stop")
    )


def test_asyncio_runner_begins_each_call_before_it_makes_the_next(log_events):
    """Stops due together begin in turn: the first runs before the others are made.

    Made all at once, they would all begin only after the last was made: the
    critical path of a graph would pay every layer's making.
    """
    app = App()
    seen: dict[str, list[str]] = {}

    class Part:
        def __init__(self, name: str) -> None:
            self.name = name

        async def stop(self, token: CancelToken) -> None:
            seen[self.name] = _stop_tasks(asyncio.current_task())
            await asyncio.sleep(0)

    for i in range(5):
        app.add(Part(f"p{i}"), name=f"p{i}")

    async def main() -> int | None:
        async with AsyncioRunner(app, signals=None) as runner:
            pass
        return runner.exit_code

    assert asyncio.run(main()) == ExitCode.OK
    assert sorted(seen) == [f"p{i}" for i in range(5)]
    first = min(seen, key=lambda name: len(seen[name]))
    assert seen[first] == [], seen


def test_asyncio_runner_cancelled_between_calls_still_makes_the_rest(log_events):
    """The loop's owner cancels the runner as a round's first stop begins: no stop is dropped.

    The round's other stops are still made and the shutdown completes (not
    abandoned at its deadline); the runner's task then ends cancelled.
    """
    app = App(shutdown_timeout=BOUND)
    called: list[str] = []
    control: list[asyncio.Task[Any]] = []

    class Part:
        def __init__(self, name: str) -> None:
            self.name = name

        async def stop(self, token: CancelToken) -> None:
            if not called:  # the first of the round: cancel the runner's control task
                control.extend(_cancel_runner_task(app))
            called.append(self.name)
            await asyncio.sleep(0)

    for i in range(4):
        app.add(Part(f"p{i}"), name=f"p{i}")

    async def main() -> int | None:
        runner = AsyncioRunner(app, signals=None)
        await runner.start()
        app.request_shutdown("test")
        code = await asyncio.wait_for(runner.wait(), BOUND)
        await asyncio.wait(control, timeout=BOUND)
        return code

    assert asyncio.run(main()) == ExitCode.OK
    assert len(control) == 1
    assert control[0].cancelled()
    assert sorted(called) == [f"p{i}" for i in range(4)]
    assert app.exit_code == ExitCode.OK
    assert all(c.state is ComponentState.STOPPED for c in app.components.values())


def test_asyncio_runner_two_cancels_from_one_round_are_one(log_events):
    """Two stops of one round each cancel the runner's task: one cancellation, a clean stop.

    As when a round's calls began at once: the rest of the round begins while
    the first cancellation is handled, so the second is the same one.
    """
    app = App(shutdown_timeout=BOUND)
    called: list[str] = []

    class Part:
        def __init__(self, name: str) -> None:
            self.name = name

        async def stop(self, token: CancelToken) -> None:
            _cancel_runner_task(app)
            called.append(self.name)
            await asyncio.sleep(0)

    for i in range(2):
        app.add(Part(f"p{i}"), name=f"p{i}")

    async def main() -> int | None:
        runner = AsyncioRunner(app, signals=None)
        await runner.start()
        app.request_shutdown("test")
        return await asyncio.wait_for(runner.wait(), BOUND)

    assert asyncio.run(main()) == ExitCode.OK
    assert sorted(called) == ["p0", "p1"]
    assert all(c.state is ComponentState.STOPPED for c in app.components.values())


def test_asyncio_runner_sync_call_does_not_wait_for_an_async_first_step(log_events):
    """A sync stop goes to its thread at once, not after an earlier async stop's first step.

    The async stop's first step holds the loop until the sync stop has begun
    (bounded): were the sync stop handed over only after it, that wait would
    run out, as the sync stop's own deadline does meanwhile.
    """
    app = App(shutdown_timeout=BOUND)
    began = threading.Event()
    waited: list[bool] = []

    class Flusher:
        async def stop(self, token: CancelToken) -> None:
            waited.append(began.wait(BOUND))  # holds the loop: a synchronous flush
            await asyncio.sleep(0)

    class Client:
        def stop(self, token: CancelToken) -> None:
            began.set()

    app.add(Flusher(), name="flusher")
    app.add(Client(), name="client")

    async def main() -> int | None:
        async with AsyncioRunner(app, signals=None) as runner:
            pass
        return runner.exit_code

    assert asyncio.run(main()) == ExitCode.OK
    assert waited == [True]


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 4])
def test_asyncio_runner_call_cancelled_before_it_began_is_made_again(log_events, turns):
    """Plain ``asyncio.run`` ends ``main()`` while a round's stops are made: each stop still runs.

    Its teardown cancels every task, a stop's task made but not begun too:
    that stop gets a new task (the control loop finishes the app first), so
    every stop is called once and none waits out the shutdown deadline.
    """
    app = App(shutdown_timeout=BOUND * 3)
    called: list[str] = []

    class Part:
        def __init__(self, name: str) -> None:
            self.name = name

        async def stop(self, token: CancelToken) -> None:
            called.append(self.name)
            await asyncio.sleep(0.01)

    for i in range(4):
        app.add(Part(f"p{i}"), name=f"p{i}")

    async def main() -> None:
        runner = AsyncioRunner(app, signals=None)
        await runner.start()
        app.request_shutdown("test")
        for _ in range(turns):
            await asyncio.sleep(0)

    began = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - began < BOUND  # not the shutdown deadline (3 x BOUND)
    assert app.exit_code != ExitCode.TIMEOUT
    assert all(c.state is not ComponentState.STOPPING for c in app.components.values())
    assert sorted(called) == [f"p{i}" for i in range(4)]
