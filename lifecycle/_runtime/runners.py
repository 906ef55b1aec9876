"""The runners: drivers that turn the scheduler's decisions into threads, tasks and exits.

Both runners share `_Driver`: it claims the app's `Run`, owns the
`Scheduler`, carries out its actions, keeps the tokens of every call in
progress, logs what is stuck and handles signals. They differ only at the
edge — where a call runs and how an event reaches the control loop:

* `ThreadedRunner`: a control thread reads events from a ``SimpleQueue``
  (re-entrant, so a signal handler may post to it). Sync calls run in daemon
  threads; async calls run on one private event-loop thread.
* `AsyncioRunner`: a control task reads events from an ``asyncio.Queue`` in
  the running loop (posted with ``call_soon_threadsafe``). Async calls are
  tasks; sync calls run in daemon threads so that a blocking ``stop`` never
  blocks the loop.

Calls run in *daemon* threads that the runner tracks itself (not an executor,
whose threads are joined at exit): a call that overruns is abandoned, and an
abandoned thread must not keep the process alive.

Invariants that keep every bound true:

* The signal handler only records and wakes: it writes plain attributes
  (`Run.request`: readiness off, the reason, the time) and posts to the
  control loop's queue and the watchdog's; logging, cancelling
  ``shutdown_token`` and a forced exit happen where those posts land. Both
  runners install it with ``signal.signal``, the asyncio runner too:
  ``loop.add_signal_handler`` would run the handler later, in the loop, so a
  loop blocked by a synchronous call would keep readiness on; a Python-level
  handler runs in the main thread as soon as the signal arrives, and flips it
  there (``call_soon_threadsafe`` then wakes the loop).
* A signal that hits any thread runs that handler at once: the kernel may
  deliver a process-directed signal to a component's thread, where only the
  C-level handler runs, and CPython runs the Python-level one in the main
  thread. The runner points ``signal.set_wakeup_fd`` at a `SignalWakeup`
  that the main thread waits on: ``wait()``/``start()`` of the threaded
  runner wait on it (`wait_event`), the asyncio runner's loop reads it.
* The control thread/loop never runs a user's ``on_cancel`` callback: every
  cancellation it makes (shutdown, start and run tokens, abandoned calls, the
  end of the app) goes through `cancel_in_background`, so a callback that
  blocks delays only itself.
* What the control loop cannot keep — a deadline while an ``async def``
  blocks the event loop — the `Watchdog` thread keeps; once the app has
  finished, it no longer acts (the runner's own teardown is bounded itself).
* Logging never breaks the control loop: every log call goes through the
  library's logger (``_core/log.py``), which swallows a failing processor
  or handler (one line on stderr, once per process).
* A caller that gives up on the app — an exception escaping ``start()`` or
  `run`'s wait, a cancelled ``start()`` — stops it first, bounded by the
  shutdown deadline, and restores the handlers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import math
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from types import FrameType, TracebackType
from typing import Any, Final, Literal

import attrs

from .._core.drain import Drain
from .._core.errors import (
    ConfigError,
    DeadlineExceeded,
    StartupError,
    cut_of,
    describe_error,
    is_cancellation,
    unlogged,
)
from .._core.log import get_logger
from .._core.restart import RestartLimitReached
from .._core.scheduler import (
    Abandon,
    Action,
    AppStarted,
    CancelRun,
    CancelStart,
    ComponentInfo,
    Finished,
    Phase,
    RunComponent,
    Scheduler,
    StartComponent,
    StopComponent,
)
from .._core.states import AppState, ComponentState, ExitCode
from .._core.threads import program_mask, sigmask
from .._core.tokens import CancelSource, _current, cancel_in_background
from .app import App, Blueprint, check_seconds
from .components import Call
from .loop import TEARDOWN_TIMEOUT, asyncio_run, close_loop, finish_before_teardown
from .run import Run, log_restart
from .signals import (
    SignalHandlers,
    SignalWakeup,
    check_signals,
    exit_after_report,
    helper_thread,
    signal_name,
    user_code_thread,
    wait_event,
)
from .stacks import task_stack, thread_stack, user_traceback
from .systemd import NO_NOTIFIER, Notifier, notifier_for
from .watchdog import MARGIN, Watchdog, guard_interpreter_exit, wait_timeout

__all__ = ["AsyncioRunner", "ThreadedRunner", "run"]

_log = get_logger()
DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)

HEALTH_CLOSE_BOUND = 5.0
"""Seconds the asyncio runner waits for the health endpoint to close (off the loop)."""

LOOP_JOIN_BOUND = 2 * TEARDOWN_TIMEOUT + 0.5
"""Seconds the threaded runner waits for its private loop's teardown; a loop blocked
by a synchronous call is left. The watchdog does not count it: the app finished by then."""

TEARDOWN_BOUND = HEALTH_CLOSE_BOUND + LOOP_JOIN_BOUND
"""Seconds a runner's own teardown may take once the app finished (its loop, its health
endpoint): what an abort waits for past the shutdown deadline and the watchdog's margin."""

PROGRESS_EVERY = 1.0
"""Seconds between two "still stopping" lines while components are stopping."""

BEGIN_BOUND = 0.005
"""Seconds the control loop waits at most for the sync calls of a round to begin."""

# What the shutdown summary says of each component (the report has more).
_SUMMARY_KEYS = ("state", "error", "timed_out", "start_seconds", "stop_seconds", "cut_count")


def _summary_entry(info: ComponentInfo) -> dict[str, Any]:
    """A component's line of the shutdown summary: its report's `_SUMMARY_KEYS` that are set.

    The same values as ``App.report()["components"][name]`` (a test holds
    them equal), made without the rest of the entry.
    """
    entry: dict[str, Any] = {"state": info.state._value_}  # .value, without its descriptor
    error = info.error
    if error is not None:
        entry["error"] = describe_error(error)
    if info.timed_out is not None:
        entry["timed_out"] = info.timed_out
    began, ended = info.start_began, info.start_ended
    if began is not None and ended is not None:
        entry["start_seconds"] = round(ended - began, 6)
    began, ended = info.stop_began, info.stop_ended
    if began is not None and ended is not None:
        entry["stop_seconds"] = round(ended - began, 6)
    if error is not None:
        cut = cut_of(error)
        if cut:
            entry["cut_count"] = len(cut)
    return entry


def _outcome(code: int) -> str:
    """The exit code's name, lower case ("ok", "timeout"), or "exit N" for another."""
    try:
        return ExitCode(code).name.lower()
    except ValueError:
        return f"exit {code}"


# Events posted to the control loop.
_Done = tuple[Literal["done"], str, Phase, BaseException | None]
_Shutdown = tuple[Literal["shutdown"]]
_Signal = tuple[Literal["signal"], int, float, bool]  # signum, when, repeated
_Tick = tuple[Literal["tick"]]
_Event = _Done | _Shutdown | _Signal | _Tick
_SHUTDOWN: _Shutdown = ("shutdown",)


def _check_grace(value: object) -> float:
    grace = check_seconds(value, "signal_grace")
    assert grace is not None
    if not math.isfinite(grace):
        raise ConfigError(
            f"signal_grace must be a finite number of seconds, got {value!r}; e.g. "
            f"signal_grace=1.0 (a repeat after it forces the exit)"
        )
    return grace


# The actions that begin a component's call, and the phase each calls.
_PHASES: Final[dict[type[Action], Phase]] = {
    StartComponent: "start",
    RunComponent: "run",
    StopComponent: "stop",
}


class _RunnerState(enum.Enum):
    """Where a runner is in its one life; a call illegal in a state says why."""

    NEW = "new"  # built; start() not called yet: wait() and stop() are errors
    STARTED = "started"  # start() was called: wait() and stop() wait for the end
    FINISHED = "finished"  # the app finished; wait() and stop() return its code


@attrs.define(eq=False)
class _Handle:
    """A call in progress: its token and where it runs (for diagnostics)."""

    source: CancelSource
    began: float
    thread_ident: int | None = None
    task: asyncio.Task[Any] | None = None
    task_loop: asyncio.AbstractEventLoop | None = None


class _Driver:
    """What both runners share. Subclasses implement `_post`, `_spawn_*`."""

    _systemd: Notifier = NO_NOTIFIER  # sd_notify; set in _prepare (systemd.py)
    # Whether the control loop waits for a round's sync calls to begin (`_await_threads`):
    # the threaded runner's own thread does; the asyncio runner's loop is the app's.
    _awaits_begins = False

    def __init__(
        self,
        app: App,
        *,
        signals: Iterable[int] | None = DEFAULT_SIGNALS,
        signal_grace: float = 1.0,
    ) -> None:
        if not isinstance(app, App):
            raise TypeError(f"a runner needs a lifecycle.App, got {type(app).__name__}")
        self.app = app
        self.signals = check_signals(signals)
        self.signal_grace = _check_grace(signal_grace)
        self.clock: Callable[[], float] = time.monotonic
        self.scheduler: Scheduler | None = None
        self.exit_code: int | None = None
        self._state = _RunnerState.NEW
        self._run: Run | None = None
        self._blueprint: Blueprint | None = None
        self._handles: dict[tuple[str, Phase], _Handle] = {}
        self._started = threading.Event()
        self._finished = threading.Event()
        self._finish_lock = threading.Lock()
        self._handlers = SignalHandlers()
        self._handlers_installed = False
        self._wakeup = SignalWakeup()
        self._first_signal: float | None = None
        self._repeats = 0  # signals ignored within the grace; the first is logged, then a count
        self._app_since: float | None = None  # when the app entered its current state
        self._progress_at: float | None = None  # when the next "still stopping" line is due
        # Per component, the last error logged as "<phase>() raised" (held: ids are reused).
        self._logged_errors: dict[str, BaseException] = {}
        self._began = 0.0
        self._health: Any = None
        self._threads = _CallThreads()
        self._handed = 0  # sync calls handed to call threads in this round
        self._began_calls: queue.SimpleQueue[None] = queue.SimpleQueue()  # one per call begun
        self._rlog = _RoundLog()
        self._stop_wave = 0  # call threads to keep ready once the app runs
        self._any_stop = False  # a stop() to call: ready the deadline timer too
        self._reserve_at: float | None = None  # when to ready them (clock time)
        self._watchdog: Watchdog | None = None
        self._control_ident: int | None = None
        # Set by `run`, which owns the process: a missed deadline then ends it.
        self._run_owns_process = False
        self._gave_up = False

    @property
    def _owns_process(self) -> bool:
        return self._run_owns_process and self._handlers_installed

    # -- the runner's own states ---------------------------------------------

    def _begin(self) -> None:
        """``start()`` was called; raise if this runner was started before."""
        if self._state is not _RunnerState.NEW:
            ended = (
                f"has finished (exit code {self.exit_code})"
                if self._state is _RunnerState.FINISHED
                else "was started already"
            )
            raise RuntimeError(
                f"cannot start: this runner of app {self.app.name!r} {ended}; a runner runs "
                f"its app once: build a new App and a new runner to run again"
            )
        self._state = _RunnerState.STARTED

    def _check_started(self, what: str) -> None:
        if self._state is _RunnerState.NEW:
            raise RuntimeError(
                f"cannot {what}: the runner of app {self.app.name!r} was never started; call "
                f"start() first (or use the runner as a context manager)"
            )

    @property
    def _claimed(self) -> bool:
        """Whether this runner drives the app (its ``start()`` claimed the app's run)."""
        return self._run is not None

    def _abort_request(self, reason: str) -> float | None:
        """Request the shutdown as the caller gives up on the app; how long to wait for it.

        The wait is bounded: the shutdown deadline, the watchdog's margin
        (by then the watchdog has ended a stuck run) and the teardown.
        """
        self.app.request_shutdown(reason)
        deadline = self.app.shutdown_deadline
        if deadline is None:  # pragma: no cover - a request sets it
            return 0.0
        return wait_timeout(deadline + MARGIN + TEARDOWN_BOUND - time.monotonic())

    def _undo_prepare(self) -> None:
        """The handlers could not be installed: end the prepared run before it began."""
        self._close_health()
        self._systemd.close()
        if self._watchdog is not None:
            self._watchdog.stop()
        assert self._run is not None
        self._run.detach()
        self._finish_now(ExitCode.CONFIG)

    # -- preparing ---------------------------------------------------------

    def _prepare(self) -> list[Action]:
        """Claim the app's run, validate it and build the scheduler; return its first actions.

        Raises:
            ConfigError: the declaration is invalid, or the app was run
                before (exit code CONFIG).
        """
        app = self.app
        try:
            run = self._run = app._claim()
        except ConfigError:
            self.exit_code = ExitCode.CONFIG  # this runner's code; the app keeps its own
            self._set_started()
            self._set_finished()
            raise
        try:
            blueprint = self._blueprint = app._blueprint()
        except ConfigError as error:
            _log.error("invalid app declaration", app=app.name, error=str(error))
            self._finish_now(ExitCode.CONFIG)
            raise
        self._stop_wave = _widest_sync_stop_wave(blueprint)
        self._any_stop = any(c.stop is not None for c in blueprint.components.values())
        plan = blueprint.plan
        if not plan.fits:
            _log.warning(
                "shutdown budget overrun",
                app=app.name,
                plan=plan.describe(),
                path=list(plan.path),
                hint="raise shutdown_timeout or lower the stop_timeouts on this path",
            )
        sched = self.scheduler = Scheduler(
            blueprint.graph,
            blueprint.specs,
            shutdown_timeout=app.shutdown_timeout,
            drain_delay=app.drain_delay,
            infos=run.infos,
            on_component=self._log_component,
            on_app=self._log_app,
            name=app.name,
        )
        self._start_health(run)
        # Under systemd (NOTIFY_SOCKET), when this runner speaks for the process.
        self._systemd = notifier_for(self)
        watchdog = self._watchdog = Watchdog(
            app.name,
            deadline=lambda: run.shutdown_deadline,
            on_missed=self._deadline_missed,
            on_force=self._force,
        )
        # Restarts are logged in the round's order, as the events that caused them.
        sched.on_restart = lambda info, attempt, delay, error: log_restart(
            info, attempt, delay, error, log=self._rlog
        )
        run.attach(sched, self._wake_for_request, watchdog.wake)
        watchdog.start()
        self._began = self.clock()
        if run.shutdown_reason is not None:  # requested before start()
            return sched.request_shutdown(
                self._began, run.shutdown_reason, requested_at=run.requested_at
            )
        return sched.begin(self._began)

    def _start_health(self, run: Run) -> None:
        address = self.app.health_address
        if address is None:
            return
        from .._serving.health import HealthServer  # noqa: PLC0415 - only when asked for

        host, port = address
        try:
            self._health = HealthServer(self.app, host, port)
            self._health.start()
        except OSError as error:
            message = (
                f"app {self.app.name!r}: the health endpoint cannot listen on {host}:{port} "
                f"({error.strerror or error}); choose another port in App(health=...)"
            )
            _log.error("invalid app declaration", app=self.app.name, error=message)
            self._finish_now(ExitCode.CONFIG)
            raise ConfigError(message) from None
        run.health_address = (host, self._health.port)  # the port chosen for 0

    def _finish_now(self, code: ExitCode) -> None:
        """Finished before the control loop began (an invalid declaration)."""
        self.exit_code = code
        assert self._run is not None
        self._run.finish(code, AppState.FAILED if code else AppState.STOPPED)
        self._set_started()
        self._set_finished()

    def _wake_for_request(self) -> None:
        # Signal-safe: `Run.request` calls it, possibly in a signal handler.
        self._post(_SHUTDOWN)

    # -- logging -----------------------------------------------------------

    def _log_component(
        self, info: ComponentInfo, before: ComponentState, after: ComponentState, spent: float
    ) -> None:
        if after is ComponentState.FAILED and info.error is not None:
            fields = _moved_fields((info.name, before, after, spent))
            fields["error"] = describe_error(info.error)
            if not self._reported(info):
                self._rlog.error("transition", **fields)
            else:
                self._rlog.debug("transition", **fields)
            return
        # The common case, twice per component stopped: four values held,
        # the event built at the round's end, and only if DEBUG is on.
        self._rlog.moved(info.name, before, after, spent)

    def _reported(self, info: ComponentInfo) -> bool:
        """Whether a component's failure has an ERROR entry of its own.

        Each failure is one entry: what ``start``/``run``/``stop`` raised is
        logged with its traceback as it arrives, a cut by the server that cut
        ("work cut at the stop deadline"), a timeout by "component stuck"
        with the stack (logged right after this transition, in the same
        round); the transition itself is then a DEBUG line.
        """
        error = info.error
        return (
            self._logged_errors.get(info.name) is error
            or isinstance(error, RestartLimitReached)  # "restart limit reached" said it
            or (error is not None and unlogged(error) is None)
            # A call of it still runs past its timeout: "component stuck" follows.
            or (info.timed_out is not None and any(n == info.name for n, _ in self._handles))
        )

    def _log_app(self, before: AppState, after: AppState, now: float) -> None:
        self._systemd.app_moved(after, now)  # microseconds: one datagram, MSG_DONTWAIT
        run, sched = self._run, self.scheduler
        assert run is not None
        assert sched is not None
        run.state = after
        if after in (AppState.DRAINING, AppState.STOPPING) and sched.shutdown_reason is not None:
            # The shutdown begins: requested (the token is cancelled here, off
            # the signal path) or decided by the scheduler itself (a critical
            # run ended, a start failed), readiness, shutdown_token and the
            # report say so alike, before the app moves on.
            run.adopt(sched.shutdown_reason)
        since, self._app_since = self._app_since, now
        reason = self.app.shutdown_reason if after is not AppState.STARTING else None
        self._rlog.debug(
            "app transition",
            app=self.app.name,
            from_state=before.name,
            to_state=after.name,
            duration=0.0 if since is None else round(now - since, 6),
            reason=reason,
        )
        self._log_phase(before, after, now, reason)

    def _log_phase(
        self, before: AppState, after: AppState, now: float, reason: str | None
    ) -> None:
        """The shutdown's phases, one INFO line each: requested, draining, stopping."""
        sched = self.scheduler
        assert sched is not None
        name = self.app.name
        deadline = sched.shutdown_deadline
        left = None if deadline is None or math.isinf(deadline) else round(deadline - now, 3)
        if after in (AppState.DRAINING, AppState.STOPPING) and before in (
            AppState.STARTING,
            AppState.RUNNING,
        ):
            fields: dict[str, Any] = {"app": name, "reason": reason, "budget": left}
            if self._first_signal is not None:
                fields["hint"] = (
                    f"send the signal again after {self.signal_grace:g}s to force the exit"
                )
            self._rlog.info("shutdown requested", **fields)
        if after is AppState.DRAINING:
            drain = sched.drain_delay
            if isinstance(drain, Drain):
                self._rlog.info(
                    "draining",
                    app=name,
                    min=drain.min,
                    max=drain.max,
                    quiet=drain.quiet,
                    hint="readiness is off; the drain ends once no request arrived for "
                    "quiet seconds",
                )
            elif drain > 0:
                self._rlog.info("draining", app=name, seconds=drain, hint="readiness is off")
        elif after is AppState.STOPPING:
            self._progress_at = now + PROGRESS_EVERY
            self._rlog.info("stopping", app=name, budget=left)

    def _log_summary(self, code: int) -> None:
        """The run's last line: INFO on exit OK; WARNING on TIMEOUT; ERROR on a failure.

        Its components are the `_SUMMARY_KEYS` of each one's `App.report`
        entry, made from the records directly (the shutdown waits for this
        line: a whole report of 400 components takes milliseconds).
        """
        method = "info" if code == ExitCode.OK else "warning"
        if code not in (ExitCode.OK, ExitCode.TIMEOUT):
            method = "error"
        if not _log.enabled(method):
            return
        assert self._run is not None
        components = {name: _summary_entry(info) for name, info in self._run.infos.items()}
        getattr(self._rlog, method)(
            "shutdown summary",
            app=self.app.name,
            exit_code=int(code),
            outcome=_outcome(code),
            reason=self.app.shutdown_reason,
            duration=round(self.clock() - self._began, 6),
            components=components,
        )

    def _log_progress(self, now: float) -> None:
        """While stopping, once a second: what is still stopping, for how long, of what budget."""
        at = self._progress_at
        if at is None or now < at:
            return
        sched, run = self.scheduler, self._run
        assert sched is not None
        assert run is not None
        if sched.state is not AppState.STOPPING:
            self._progress_at = None
            return
        self._progress_at = now + PROGRESS_EVERY
        still = []
        busy = {n for n, _ in self._handles}  # a call still runs (a late stop() included)
        for name, info in run.infos.items():
            stopping = info.state is ComponentState.STOPPING or (
                name in busy and info.state is ComponentState.FAILED
            )
            if stopping and info.stop_began is not None:
                budget = self.app._stop_budget(name)  # the app's own plan
                shown = "unbounded" if math.isinf(budget) else f"{budget:g}s"
                still.append(f"{name} {now - info.stop_began:.1f}s of {shown}")
        if not still:
            return
        deadline = sched.shutdown_deadline
        self._rlog.info(
            "still stopping",
            app=self.app.name,
            components=still,
            budget_left=None if deadline is None or math.isinf(deadline) else round(
                max(0.0, deadline - now), 1
            ),
        )

    def _log_signal(self, signum: int, at: float, repeated: bool) -> None:
        name = signal_name(signum)
        first = at if self._first_signal is None else self._first_signal
        if not repeated:
            self._rlog.debug(
                "signal received",
                app=self.app.name,
                signal=name,
                hint=f"shutting down gracefully; send it again after {self.signal_grace:g}s "
                f"to force the exit",
            )
            return
        self._repeats += 1
        if self._repeats > 1:
            return  # a storm: counted, and the count logged once as the run ends
        after = max(0.0, first + self.signal_grace - at)
        self._rlog.warning(
            "repeated signal ignored",
            app=self.app.name,
            signal=name,
            seconds_since_first=round(at - first, 3),
            hint=f"a repeat within signal_grace ({self.signal_grace:g}s) of the first counts "
            f"as the first; send it again after {after:.1f}s to force the exit (further "
            f"repeats within the grace are counted, not logged one by one)",
        )

    def _log_repeats(self) -> None:
        if self._repeats > 1:
            self._rlog.warning(
                "repeated signals ignored",
                app=self.app.name,
                count=self._repeats,
                hint=f"signals within signal_grace ({self.signal_grace:g}s) of the first count "
                f"as the first",
            )

    # -- the control loop's work ---------------------------------------------

    def _dispatch(self, event: _Event) -> list[Action]:
        sched, run = self.scheduler, self._run
        assert sched is not None
        assert run is not None
        now = self.clock()
        actions: list[Action] = []
        if sched.wants_arrivals:  # an adaptive drain: the latest arrival first
            # Watching nothing, it cannot tell that traffic stopped: busy, to max.
            app = self.app
            sched.arrived(app.last_arrival() if app.arrival_sources else now)
        if event[0] == "done":
            _, name, phase, error = event
            handle = self._handles.pop((name, phase), None)
            if handle is None:
                return self._begin_recorded(now) + sched.tick(now)  # answered late: abandoned
            # A run that honoured its cancelled token ended as asked; a
            # Cancelled on a live token (its own deadline ran out) is a crash;
            # a cut is logged once, by the server that cut.
            shown = None if error is None else unlogged(error)
            if (
                error is not None
                and shown is not None
                and not (
                    phase == "run" and is_cancellation(error) and handle.source.token.cancelled
                )
            ):
                self._logged_errors[name] = error
                if isinstance(shown, DeadlineExceeded):
                    # lifecycle's own account of a cut (what, and the fix): no traceback
                    self._rlog.error(
                        f"{phase}() raised",
                        component=name,
                        phase=phase,
                        error=describe_error(shown).partition(": ")[2],
                    )
                else:
                    self._rlog.error(
                        f"{phase}() raised",
                        component=name,
                        phase=phase,
                        exc_info=(type(shown), shown, user_traceback(shown)),
                    )
            if phase == "start":
                actions += (
                    sched.start_finished(name, now)
                    if error is None
                    else sched.start_failed(name, now, error)
                )
            elif phase == "run":
                actions += sched.run_finished(name, now, error)
            else:
                actions += sched.stop_finished(name, now, error)
        elif event[0] == "shutdown":
            if run.shutdown_reason is not None:
                actions += self._begin_shutdown(now)
        elif event[0] == "signal":
            _, signum, at, repeated = event
            self._log_signal(signum, at, repeated)
        actions += self._begin_recorded(now)
        actions += sched.tick(now)
        self._log_progress(now)
        return actions

    def _begin_recorded(self, now: float) -> list[Action]:
        """A request recorded whose wake-up is still on its way begins before any timer fires.

        Events are decided in the order they arrived (a start that returned
        before the request came is a start, and the app drains rather than
        aborts); but a timer falling due now (a restart, a start timeout)
        comes after a request already recorded.
        """
        sched, run = self.scheduler, self._run
        assert sched is not None
        assert run is not None
        if sched.shutdown_reason is None and run.shutdown_reason is not None:
            return self._begin_shutdown(now)
        return []

    def _begin_shutdown(self, now: float) -> list[Action]:
        """Tell the scheduler of the recorded request (idempotent: the first reason wins)."""
        sched, run = self.scheduler, self._run
        assert sched is not None
        assert run is not None
        assert run.shutdown_reason is not None
        actions = sched.request_shutdown(now, run.shutdown_reason, requested_at=run.requested_at)
        # Usually cancelled already, as the app began draining (_log_app);
        # not when this request was being recorded at that very moment.
        run.cancel_shutdown_token()
        return actions

    def _execute(self, actions: list[Action]) -> None:
        if self._gave_up:
            return  # the watchdog ended this run: start nothing more
        for action in actions:
            if isinstance(action, StartComponent):
                self._call(action.name, "start", action.deadline)
            elif isinstance(action, RunComponent):
                self._call(action.name, "run", None)
            elif isinstance(action, StopComponent):
                self._call(action.name, "stop", action.deadline)
            elif isinstance(action, CancelStart | CancelRun):
                phase: Phase = "start" if isinstance(action, CancelStart) else "run"
                handle = self._handles.get((action.name, phase))
                if handle is not None:
                    cancel_in_background(handle.source, action.reason)
            elif isinstance(action, Abandon):
                self._abandon(action)
            elif isinstance(action, AppStarted):
                if self._any_stop:
                    self._reserve_at = self.clock() + RESERVE_AFTER
                self._rlog.info(
                    "app started",
                    app=self.app.name,
                    duration=round(self.clock() - self._began, 6),
                )
                self._set_started()
            elif isinstance(action, Finished):
                self._finish(action.exit_code)
        self._flush_calls()

    def _flush_calls(self) -> None:
        """Hand over the calls `_execute` gathered (the threaded runner's async ones)."""

    def _await_threads(self) -> bool:
        """Let the sync calls handed over this round begin; False if it handed none (or not asked).

        Each call thread, woken, needs the GIL to begin: while the control
        loop holds it to render the round's log events, they wait (up to the
        interpreter's switch interval, 5 ms). So the loop waits here, GIL
        released, until each has begun (taken the GIL and run into its
        call), `BEGIN_BOUND` at most, then renders.
        """
        handed, self._handed = self._handed, 0
        if not handed or not self._awaits_begins:
            return False
        end = time.monotonic() + BEGIN_BOUND
        for _ in range(handed):
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                self._began_calls.get(timeout=left)
            except queue.Empty:
                break  # a thread slow to run: it begins without us (a late put is harmless)
        return True

    def _next_timeout(self) -> float | None:
        """How long the control loop may wait for the next event (None: no bound)."""
        assert self.scheduler is not None
        deadline = self.scheduler.next_deadline()
        if self._progress_at is not None:
            deadline = self._progress_at if deadline is None else min(deadline, self._progress_at)
        if self._reserve_at is not None:
            deadline = self._reserve_at if deadline is None else min(deadline, self._reserve_at)
        return None if deadline is None else wait_timeout(deadline - self.clock())

    def _ready_threads(self) -> None:
        """Once the app has run `RESERVE_AFTER` seconds, ready the threads its shutdown needs.

        Not at once: an app stopped within a second of its start (a test)
        would pay for threads it never uses; nor during the shutdown, whose
        calls it would delay.
        """
        at = self._reserve_at
        if at is None or self.clock() < at:
            return
        self._reserve_at = None
        assert self.scheduler is not None
        if self.scheduler.state is AppState.RUNNING:
            if self._stop_wave:
                self._threads.reserve(self._stop_wave)
            # The first token with a deadline starts the process's deadline timer
            # thread, and waits for it to run (milliseconds on a busy machine):
            # the first stop() of the shutdown would. A token of a far deadline,
            # closed at once, starts it now.
            CancelSource(timeout=_WARM_TIMEOUT).close()

    def _call_of(self, name: str, phase: Phase) -> Call | None:
        """The component's call for ``phase`` (None: it has no such method)."""
        assert self._blueprint is not None
        call: Call | None = getattr(self._blueprint.components[name], phase)
        return call

    def _call(self, name: str, phase: Phase, deadline: float | None) -> None:
        source = CancelSource(deadline=deadline)
        handle = _Handle(source, self.clock())
        self._handles[(name, phase)] = handle
        call = self._call_of(name, phase)
        assert call is not None, f"{name} has no {phase}"
        if call.is_async:
            self._spawn_async(name, phase, call, handle)
        else:
            self._spawn_thread(name, phase, call, handle)

    def _thread_body(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        handle.thread_ident = threading.get_ident()
        if self._awaits_begins:
            self._began_calls.put(None)  # the control thread waits for it (_await_threads)
        token = handle.source.token
        error: BaseException | None = None
        # use_token's work, without its generator: the token is current in the call.
        try:
            reset = _current.set(token)
            try:
                call.fn(token) if call.takes_token else call.fn()
            finally:
                _current.reset(reset)
        except BaseException as exc:  # noqa: BLE001 - every outcome is reported to the scheduler
            error = exc
        self._ended(name, phase, error)

    async def _task_body(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        handle.task = asyncio.current_task()
        handle.task_loop = asyncio.get_running_loop()
        handle.thread_ident = threading.get_ident()  # the loop's thread
        token = handle.source.token
        error: BaseException | None = None
        try:
            reset = _current.set(token)  # as in _thread_body
            try:
                await (call.fn(token) if call.takes_token else call.fn())
            finally:
                _current.reset(reset)
        except BaseException as exc:  # noqa: BLE001 - every outcome is reported to the scheduler
            error = exc
        self._ended(name, phase, error)

    def _ended(self, name: str, phase: Phase, error: BaseException | None) -> None:
        """A call returned or raised (in its own thread or task): tell the control loop.

        A critical component's ``run`` ending means a shutdown (rule 5):
        readiness is off from here, before the control loop hears of it.
        """
        run = self._run
        if phase == "run" and run is not None:
            run.run_ended(name)  # readiness off for a critical one (until its restart)
        self._post_ended(("done", name, phase, error))

    def _post_ended(self, event: _Event) -> None:
        """`_post` for a call that ended (never on the signal path)."""
        self._post(event)

    def _spawn_thread(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        self._handed += 1
        self._threads.submit(
            lambda: self._thread_body(name, phase, call, handle), f"lifecycle:{name}.{phase}"
        )

    def _abandon(self, action: Abandon) -> None:
        handle = self._handles.pop((action.name, action.phase), None)
        stack = _stack_of(handle) if handle is not None else "(not running)"
        self._rlog.error(
            "component stuck",
            component=action.name,
            phase=action.phase,
            reason=action.reason,
            stack=stack,
        )
        if handle is None:
            return
        cancel_in_background(handle.source, action.reason)
        task, loop = handle.task, handle.task_loop
        if task is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing to cancel
                loop.call_soon_threadsafe(task.cancel)

    def _finish(self, code: int) -> None:
        """The scheduler is done: record the code, release every call, log the summary."""
        run = self._run
        assert run is not None
        with self._finish_lock:
            if self.exit_code is not None:
                return  # the watchdog gave up on this run first
            self.exit_code = code
        run.finish(ExitCode(code))
        run.detach()
        for handle in list(self._handles.values()):
            cancel_in_background(handle.source, "app finished")
        self._log_repeats()
        try:
            self._log_summary(code)
        except Exception:  # noqa: BLE001 - the run is over; its summary must not end the loop
            _log.exception("the shutdown summary could not be made", app=self.app.name)

    def _close_health(self) -> None:
        health, self._health = self._health, None
        if health is None:
            return
        try:
            health.close()
        except Exception:  # noqa: BLE001 - teardown carries on; the app's code stands
            _log.exception("the health endpoint failed to close", app=self.app.name)

    def _teardown(self) -> None:
        """After the control loop ended (the health endpoint closed): wake waiters and release.

        The waiters first: each idle call thread that `_CallThreads.close`
        wakes takes the GIL to end, and a waiter woken after them would wait
        its turn behind all of them.
        """
        self._set_started()
        self._set_finished()
        self._threads.close()
        self._systemd.close()
        if self._watchdog is not None:
            self._watchdog.stop()

    # -- what the watchdog does ------------------------------------------------

    def _deadline_missed(self) -> None:
        """The run is past its shutdown deadline by the watchdog's margin (watchdog thread)."""
        if self.exit_code is not None:
            # The app finished in time: what remains is the runner's own
            # teardown (the private loop's leftovers), which is bounded itself.
            return
        code = ExitCode.TIMEOUT
        if self._owns_process:
            exit_after_report(self._report_missed, code)
        self._report_missed()
        self._give_up(ExitCode.TIMEOUT)

    def _report_missed(self) -> None:
        run = self._run
        deadline = None if run is None else run.shutdown_deadline
        late = 0.0 if deadline is None else time.monotonic() - deadline
        if self._owns_process:
            self._systemd.last_word(
                f"shutdown deadline missed, exit code {int(ExitCode.TIMEOUT)}"
            )
        still = self._log_still_running("shutdown deadline missed: component still running")
        _log.critical(
            "shutdown deadline missed",
            app=self.app.name,
            seconds_late=round(late, 3),
            stack=thread_stack(self._control_ident) or "(no stack)",
            still_running=still,
            exit=self._owns_process,
            hint=self._stuck_hint(),
        )

    def _stuck_hint(self) -> str:
        return "the runner's control thread is blocked at the stack shown"

    def _give_up(self, code: ExitCode) -> None:
        """Embedded, past the deadline: what the runner can still do without its loop."""

    def _force(self, signum: int) -> None:
        """A second signal, past the grace: say what still runs, exit at once (watchdog thread)."""
        exit_after_report(lambda: self._report_forced(signum), 128 + signum)

    def _report_forced(self, signum: int) -> None:
        self._systemd.last_word(
            f"forced exit by a second {signal_name(signum)}, exit code {128 + signum}"
        )
        still = self._log_still_running("forced exit: component still running")
        _log.critical(
            "forced exit",
            app=self.app.name,
            signal=signal_name(signum),
            exit_code=128 + signum,
            still_running=still,
        )

    def _log_still_running(self, event: str) -> list[str]:
        """Log each call in progress with its stack; return their ``name.phase``."""
        handles: dict[tuple[str, Phase], _Handle] = {}
        for _ in range(3):  # the control loop may change the table meanwhile
            with contextlib.suppress(RuntimeError):
                handles = dict(self._handles)
                break
        for (name, phase), handle in handles.items():
            _log.error(
                event,
                component=name,
                phase=phase,
                seconds=round(self.clock() - handle.began, 3),
                stack=_stack_of(handle),
            )
        return [f"{n}.{p}" for n, p in handles]

    # -- signals -----------------------------------------------------------

    def _install_signals(self) -> None:
        """Install the handlers once the run is prepared; on failure end it before it began.

        Raises:
            ConfigError: a signal refused its handler (none is left installed).
        """
        if self.signals is None:
            return
        try:
            self._handlers_installed = self._handlers.install(self.signals, self._on_signal)
        except ConfigError as error:
            _log.error("signal handlers not installed", app=self.app.name, error=str(error))
            self._undo_prepare()
            raise
        if not self._handlers_installed:
            _log.warning(
                "signal handlers not installed",
                app=self.app.name,
                reason="Python only allows signal handlers in the main thread",
                hint="pass signals=None and call app.request_shutdown() from your own handler",
            )
            return
        # Whichever thread a signal hits, its C-level handler writes here,
        # which wakes the main thread to run `_on_signal`.
        self._wakeup.install()
        # The runner speaks for the process from now on. An app with nothing
        # to start (only workers) was RUNNING before: say so now (READY=1).
        sched = self.scheduler
        if sched is not None and sched.state is not AppState.STARTING:
            self._systemd.app_moved(sched.state, self.clock())

    def _restore_signals(self) -> None:
        self._handlers.restore()
        self._wakeup.restore()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes of whatever it was
        # doing, which may hold any lock (a logger's): only plain attribute
        # writes and signal-safe posts (the control loop's queue, the
        # watchdog's). Readiness is off when this returns (Run.request).
        now = time.monotonic()
        first = self._first_signal
        if first is None:
            self._first_signal = now
            self._post(("signal", signum, now, False))
            assert self._run is not None
            self._run.request(f"signal {signal_name(signum)}")
            return
        if self._finished.is_set():
            return
        if now - first < self.signal_grace:
            self._post(("signal", signum, now, True))  # a storm of signals behaves like one
            return
        assert self._watchdog is not None
        self._watchdog.force(signum)

    # -- hooks -------------------------------------------------------------

    def _post(self, event: _Event) -> None:
        raise NotImplementedError

    def _spawn_async(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        raise NotImplementedError

    def _set_started(self) -> None:
        self._started.set()

    def _set_finished(self) -> None:
        self._state = _RunnerState.FINISHED
        self._finished.set()

    def _startup_error(self) -> StartupError | None:
        sched = self.scheduler
        if sched is None or sched.startup_failure is None:
            return None
        name, why = sched.startup_failure
        return StartupError(
            name,
            f"component {name!r} failed to start: {why}; the components that had "
            f"started were stopped again (exit code {self.exit_code}). "
            f"See the log for its stack.",
            exit_code=self.exit_code if self.exit_code is not None else 1,
        )


def _stack_of(handle: _Handle) -> str:
    """Where a call is right now: its thread's frames or its task's chain of awaits."""
    task = handle.task
    if task is not None and not getattr(task.get_coro(), "cr_running", False):
        return task_stack(task) or "(no stack: the task has not begun or already ended)"
    # A thread's call, or a task running right now (blocking its loop): the
    # frames are those of its thread.
    return (
        thread_stack(handle.thread_ident) or "(no stack: the call has not begun or already ended)"
    )


_Moved = tuple[str, ComponentState, ComponentState, float]
"""A component's DEBUG transition held in a round: its fields are made at the round's end."""


def _moved_fields(moved: _Moved) -> dict[str, Any]:
    name, before, after, spent = moved
    return {
        "component": name,
        "from_state": before.name,
        "to_state": after.name,
        "duration": round(spent, 6),
    }


class _RoundLog:
    """The control loop's logger: a round's events are emitted once its calls have begun.

    A round is one pass of the control loop: the events that arrived are
    decided, then the actions carried out. Within it, the control thread's
    log events wait, in order, and are emitted at its end, so that rendering
    them (25 us each with a structlog that drops everything, more with one that
    renders) never delays the next wave of stops. Outside a round, and from
    any other thread (the watchdog's), an event is logged at once.

    The round's DEBUG events are dropped at its end, unbuilt, when DEBUG is
    off (`Logger.enabled`, checked once per round); a component's
    transition (`moved`) is held as its four values, its fields made only
    when it is emitted.
    """

    def __init__(self) -> None:
        self._held: list[tuple[str, str, dict[str, Any] | _Moved]] | None = None
        self._ident: int | None = None

    def hold(self) -> None:
        self._held, self._ident = [], threading.get_ident()

    def release(self) -> None:
        held, self._held = self._held, None
        if not held:
            return
        debug = _log.enabled("debug")
        _log.emit_all(
            (method, event, _moved_fields(fields) if isinstance(fields, tuple) else fields)
            for method, event, fields in held
            if debug or method != "debug"
        )

    def moved(self, name: str, before: ComponentState, after: ComponentState, spent: float) -> None:
        """Log a component's transition at DEBUG (``spent``: seconds in ``before``)."""
        moved = (name, before, after, spent)
        if self._held is not None and threading.get_ident() == self._ident:
            self._held.append(("debug", "transition", moved))
            return
        if _log.enabled("debug"):
            _log.debug("transition", **_moved_fields(moved))

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if self._held is not None and threading.get_ident() == self._ident:
            if fields.get("exc_info") is True:
                fields["exc_info"] = sys.exc_info()  # the exception being handled now
            self._held.append((method, event, fields))
            return
        getattr(_log, method)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._emit("critical", event, fields)


RESERVE_MAX = 64
"""At most this many call threads are kept ready for the shutdown's widest wave."""
RESERVE_AFTER = 1.0
"""Seconds the app runs before the call threads for its shutdown are readied."""
_WARM_TIMEOUT = 86400.0
"""The timeout of the token that starts the deadline timer ahead of the shutdown."""


def _widest_sync_stop_wave(blueprint: Blueprint) -> int:
    """How many sync stops one wave of the shutdown can begin together (at most `RESERVE_MAX`).

    A wave is the components at one distance from the top of the graph:
    distance 0 has no dependents and stops first, distance k once
    something at k-1 has stopped.
    """
    graph, components = blueprint.graph, blueprint.components
    distance: dict[str, int] = {}
    for name in reversed(graph.order):  # every dependent before what it depends on
        distance[name] = max((distance[d] + 1 for d in graph.dependents[name]), default=0)
    waves: dict[int, int] = {}
    for name, wave in distance.items():
        stop = components[name].stop
        if stop is not None and not stop.is_async:
            waves[wave] = waves.get(wave, 0) + 1
    return min(max(waves.values(), default=0), RESERVE_MAX)


class _CallThreads:
    """Daemon threads for sync calls, reused from one call to the next.

    Starting a thread per call costs milliseconds on a busy machine (1-2 ms
    each in a small VM, most of it waiting for the new thread to run), which
    a layered shutdown would pay once per stop of its widest layer. Here a
    thread whose call returned waits for the next one; a call that never
    returns simply keeps its thread, and the pool starts another. `reserve`
    has threads started ahead of need, in the background, so that the
    calls of one wave of stops begin together. Idle threads beyond the
    reserve end after `IDLE` seconds without work; all end when the runner
    finishes.
    """

    IDLE = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[tuple[Callable[[], None], str] | None]] = []
        self._closed = False
        self._closing: list[queue.SimpleQueue[tuple[Callable[[], None], str] | None]] = []
        self._reserve = 0

    def submit(self, job: Callable[[], None], name: str) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            self._start(inbox, name)
        inbox.put((job, name))

    def reserve(self, count: int) -> None:
        """Keep ``count`` idle threads ready from now on; start the missing ones off this thread.

        The caller (the control loop) does not wait for them: their inboxes
        are idle at once, and a call handed to one runs as soon as its
        thread does.
        """
        inboxes: list[queue.SimpleQueue[tuple[Callable[[], None], str] | None]] = []
        with self._lock:
            if self._closed:
                return
            self._reserve = count
            for _ in range(count - len(self._idle)):
                inbox: queue.SimpleQueue[tuple[Callable[[], None], str] | None]
                inbox = queue.SimpleQueue()
                inboxes.append(inbox)
                self._idle.append(inbox)
        if not inboxes:
            return

        # The starter runs no user code; the threads it starts do, with the
        # program's mask, which the starter (a helper thread) knows whoever
        # called (the asyncio runner's loop thread is no helper). Until its
        # first call a reserved thread runs no user code either: it keeps the
        # starter's blocked mask and sets the program's as that call begins.
        def start_all() -> None:
            program = program_mask()
            for inbox in inboxes:
                body = self._worker(inbox, program)
                threading.Thread(target=body, name="lifecycle:idle", daemon=True).start()

        threading.Thread(
            target=helper_thread(start_all), name="lifecycle:pool-starter", daemon=True
        ).start()

    def close(self) -> None:
        """End the idle threads (and each busy one as its call returns), one after the other.

        One is woken here and each wakes the next as it ends: woken all at
        once, they would all queue for the GIL ahead of the thread this
        runner just woke (the caller of ``stop()``), which then returns
        milliseconds late.
        """
        with self._lock:
            self._closed = True
            self._closing, self._idle = self._idle, []
        self._end_next()

    def _end_next(self) -> None:
        """Wake the next idle thread to end (as `close` began, or as the previous one ends)."""
        with self._lock:
            inbox = self._closing.pop() if self._closing else None
        if inbox is not None:
            inbox.put(None)

    def _start(
        self, inbox: queue.SimpleQueue[tuple[Callable[[], None], str] | None], name: str
    ) -> None:
        work = user_code_thread(self._worker(inbox))
        threading.Thread(target=work, name=name, daemon=True).start()

    def _worker(
        self,
        inbox: queue.SimpleQueue[tuple[Callable[[], None], str] | None],
        program: set[int] | None = None,
    ) -> Callable[[], None]:
        return lambda: self._work(inbox, program)

    def _work(
        self,
        inbox: queue.SimpleQueue[tuple[Callable[[], None], str] | None],
        program: set[int] | None,
    ) -> None:
        """Run the calls handed to ``inbox``; ``program``: the mask to set as the first begins.

        A reserved thread, until its first call, runs no user code: it
        blocks the asynchronous signals as lifecycle's helpers do (the
        starter's mask, inherited), and its calls run with the program's.
        """
        me = threading.current_thread()
        while True:
            try:
                item = inbox.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    # Invariant: at least `_reserve` idle threads stay while the pool is open.
                    if inbox in self._idle and len(self._idle) > self._reserve:
                        self._idle.remove(inbox)
                        return
                continue  # a job was handed over just now, or this thread is reserved
            if item is None:
                self._end_next()
                return
            job, me.name = item
            if program is not None:
                sigmask(signal.SIG_SETMASK, program)
                program = None
            job()  # _thread_body: never raises
            me.name = "lifecycle:idle"
            with self._lock:
                if self._closed:
                    return
                self._idle.append(inbox)


_Gathered = tuple[Coroutine[Any, Any, None], str]


class _PrivateLoop:
    """One event-loop thread for the async components of a threaded app.

    Closing it stops the loop and runs the shared bounded teardown in the
    loop's thread: coroutines still pending (abandoned calls, tasks the
    components spawned) are cancelled and awaited, so their ``finally``
    blocks run now, on the loop, instead of at garbage collection.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=user_code_thread(self._main), name="lifecycle:asyncio", daemon=True
        )
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            close_loop(self.loop)

    def submit(self, coros: list[_Gathered]) -> None:
        """Run ``coros`` (with their task names) as tasks of the loop, with one wake-up.

        Raises:
            RuntimeError: the loop is closed.
        """
        self.loop.call_soon_threadsafe(self._create_tasks, coros)

    def _create_tasks(self, coros: list[_Gathered]) -> None:
        # The tasks are not lost to garbage collection: each one's handle holds it.
        for coro, name in coros:
            self.loop.create_task(coro, name=name)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # closed already
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(LOOP_JOIN_BOUND)


class ThreadedRunner(_Driver):
    """Runs an app on threads: ``start()``, ``wait()``, ``stop()``, or ``with``.

    Sync components run in daemon threads; async ones on one private event
    loop thread. The control loop runs in its own thread, so the caller is
    free between ``start()`` and ``wait()``.

    Args:
        app: the `App` to run (an App runs once).
        signals: the signals that request a graceful shutdown; a second one,
            after ``signal_grace`` seconds, forces the exit with 128 + signum.
            ``None`` installs no handler and touches no process-global state:
            the way to embed an app in a process that owns its signals.
        signal_grace: repeated signals within this many seconds of the first
            count as one (a storm of SIGTERMs is one SIGTERM).

    ``stop()`` or ``wait()`` before ``start()``, and a second ``start()``,
    raise ``RuntimeError`` saying so. Should the control thread itself be
    stuck past the shutdown deadline (a log handler that blocks), a watchdog
    logs its stack and ``wait()`` returns TIMEOUT.

    Example::

        with lifecycle.ThreadedRunner(app, signals=None) as runner:
            assert app.ready
            do_work()
        # leaving the block stopped the app; runner.exit_code says how it went

    Added in 0.1.
    """

    _awaits_begins = True

    def __init__(
        self,
        app: App,
        *,
        signals: Iterable[int] | None = DEFAULT_SIGNALS,
        signal_grace: float = 1.0,
    ) -> None:
        super().__init__(app, signals=signals, signal_grace=signal_grace)
        self._queue: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._loop: _PrivateLoop | None = None
        self._gathered: list[_Gathered] = []  # async calls to hand over, with task names
        self._control: threading.Thread | None = None

    def start(self) -> None:
        """Start every component in dependency order; return once all run.

        Raises:
            ConfigError: the declaration is invalid; nothing started (exit CONFIG).
            StartupError: a component failed to start; what had started was
                stopped again, and ``wait()`` returns the exit code.
            RuntimeError: this runner was started before.
        """
        self._begin()
        actions = self._prepare()
        self._install_signals()
        # It runs no user code (the calls go to user-code threads, the
        # callbacks to the callback threads): it leaves signals to the main thread.
        self._control = threading.Thread(
            target=helper_thread(lambda: self._control_loop(actions)),
            name=f"lifecycle:{self.app.name}",
            daemon=True,
        )
        self._control.start()
        try:
            wait_event(self._started, None, self._wakeup)
            error = self._startup_error()
            if error is not None:
                wait_event(self._finished, None, self._wakeup)
        except BaseException as why:  # KeyboardInterrupt, or a handler's exception
            self._abort(f"{type(why).__name__} during start()")
            raise
        if error is not None:
            self._restore_signals()
            raise error

    def wait(self) -> int:
        """Block until the app has stopped; return the exit code.

        Raises:
            RuntimeError: the runner was never started.
        """
        self._check_started("wait")
        wait_event(self._finished, None, self._wakeup)
        self._restore_signals()
        assert self.exit_code is not None
        return self.exit_code

    def stop(self, reason: str = "stop() called") -> int:
        """Request shutdown, wait for it, return the exit code (idempotent).

        A runner whose ``start()`` failed to claim the app (it was run by
        another runner) leaves the app alone and returns its own code, CONFIG.

        Raises:
            RuntimeError: the runner was never started.
        """
        self._check_started("stop")
        if self._claimed:
            self.app.request_shutdown(reason)
        return self.wait()

    def _abort(self, reason: str) -> None:
        """An exception escapes a wait: stop the app (bounded), restore the handlers."""
        try:
            if self._claimed and not self._finished.is_set():
                wait_event(self._finished, self._abort_request(reason), self._wakeup)
        finally:
            self._restore_signals()

    def __enter__(self) -> ThreadedRunner:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop("the runner's with-block ended")

    def _post(self, event: _Event) -> None:
        self._queue.put(event)

    def _set_started(self) -> None:
        super()._set_started()
        self._wakeup.wake()

    def _set_finished(self) -> None:
        super()._set_finished()
        self._wakeup.wake()

    def _spawn_async(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        self._gathered.append(
            (self._task_body(name, phase, call, handle), f"lifecycle:{name}.{phase}")
        )

    def _flush_calls(self) -> None:
        if not self._gathered:
            return
        if self._loop is None:
            self._loop = _PrivateLoop()
        gathered, self._gathered = self._gathered, []
        self._loop.submit(gathered)  # one wake-up of the loop thread per wave

    def _give_up(self, code: ExitCode) -> None:
        # The control thread is stuck: end the run from here, so wait() returns.
        with self._finish_lock:
            if self.exit_code is not None:
                return
            self.exit_code = code
            self._gave_up = True
        assert self._run is not None
        self._run.finish(code, AppState.FAILED)
        self._run.detach()
        self._close_health()
        self._threads.close()
        self._set_started()
        self._set_finished()

    def _control_loop(self, actions: list[Action]) -> None:
        self._control_ident = threading.get_ident()
        sched = self.scheduler
        assert sched is not None
        try:
            self._execute(actions)
            while self.exit_code is None:
                # No deadline pending means the app simply runs: the next
                # event (a shutdown request, a crash) is what wakes us.
                timeout = self._next_timeout()
                try:
                    event: _Event = self._queue.get(timeout=timeout)
                except queue.Empty:
                    event = ("tick",)
                self._rlog.hold()
                try:
                    actions = self._dispatch(event)
                    # What else arrived meanwhile (a wave of stops ending together)
                    # is decided before anything is carried out, so the next wave's
                    # calls begin together rather than one event apart.
                    while True:
                        try:
                            event = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        actions += self._dispatch(event)
                    self._execute(actions)
                    if not self._await_threads() and actions:
                        # Let the threads just woken (the private loop's) take the
                        # GIL and begin before this round's log events are rendered.
                        time.sleep(0)
                finally:
                    self._rlog.release()
                self._ready_threads()
        except BaseException:  # noqa: BLE001 - a crash must still end the app, never hang it
            _log.critical("lifecycle control loop crashed; this is a bug", exc_info=True)
            self._finish(ExitCode.FAILED)
        finally:
            try:
                self._close_health()
                if self._loop is not None:
                    self._loop.close()
            finally:
                self._teardown()


class AsyncioRunner(_Driver):
    """Runs an app in the running asyncio loop: ``await start()``, ``wait()``, ``stop()``.

    Async components are tasks in this loop; sync ones run in daemon
    threads, so a blocking ``stop`` never blocks the loop.

    Args:
        app: the `App` to run (an App runs once).
        signals: as for `ThreadedRunner`; ``None`` installs no handler.
        signal_grace: as for `ThreadedRunner`.

    Run the program with `lifecycle.asyncio_run` rather than ``asyncio.run``:
    its teardown is bounded, where ``asyncio.run`` waits without a bound for
    an abandoned task that swallows its cancellation.

    The loop is the application's, so a synchronous call inside an ``async
    def`` (``time.sleep``, a blocking client) stops the runner's timers with
    it. Past the shutdown deadline a watchdog thread then logs the loop's
    stack (the blocking line); under `lifecycle.run` it also ends the process
    with TIMEOUT. Embedded, nothing can preempt the blocking call: ``wait()``
    returns once the loop runs again.

    Example::

        async def main():
            async with lifecycle.AsyncioRunner(app) as runner:
                await runner.wait()     # until SIGTERM
            return runner.exit_code

        sys.exit(lifecycle.asyncio_run(main()))

    Added in 0.1.
    """

    def __init__(
        self,
        app: App,
        *,
        signals: Iterable[int] | None = DEFAULT_SIGNALS,
        signal_grace: float = 1.0,
    ) -> None:
        super().__init__(app, signals=signals, signal_grace=signal_grace)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Event] | None = None
        self._control: asyncio.Task[None] | None = None
        self._started_async: asyncio.Event | None = None
        self._finished_async: asyncio.Event | None = None
        # Events of call threads waiting for the loop, and whether a wake-up is on its way.
        self._from_threads: collections.deque[_Event] = collections.deque()
        self._threads_wake = False

    async def start(self) -> None:
        """Start every component in dependency order; return once all run.

        Raises:
            ConfigError: the declaration is invalid; nothing started (exit CONFIG).
            StartupError: a component failed to start; what had started was
                stopped again, and ``wait()`` returns the exit code.
            RuntimeError: this runner was started before.
        """
        self._begin()
        self._loop = asyncio.get_running_loop()
        self._control_ident = threading.get_ident()
        self._queue = asyncio.Queue()
        self._started_async = asyncio.Event()
        self._finished_async = asyncio.Event()
        actions = self._prepare()
        self._install_signals()
        self._control = self._loop.create_task(
            self._control_loop(actions), name=f"lifecycle:{self.app.name}"
        )
        finish_before_teardown(self._loop, self)
        try:
            await self._started_async.wait()
            error = self._startup_error()
            if error is not None:
                await self._finished_async.wait()
        except BaseException as why:  # cancelled (asyncio.wait_for(start(), ...)), interrupted
            await self._abort(f"{type(why).__name__} during start()")
            raise
        if error is not None:
            self._restore_signals()
            raise error

    async def wait(self) -> int:
        """Wait until the app has stopped; return the exit code.

        Raises:
            RuntimeError: the runner was never started.
        """
        self._check_started("wait")
        assert self._finished_async is not None
        await self._finished_async.wait()
        self._restore_signals()
        assert self.exit_code is not None
        return self.exit_code

    async def stop(self, reason: str = "stop() called") -> int:
        """Request shutdown, wait for it, return the exit code (idempotent).

        Raises:
            RuntimeError: the runner was never started.
        """
        self._check_started("stop")
        if self._claimed:
            self.app.request_shutdown(reason)
        return await self.wait()

    async def _abort(self, reason: str) -> None:
        """Giving up on the app (start() cancelled, main() ended): stop it, bounded; restore."""
        try:
            if self._claimed and not self._finished.is_set():
                timeout = self._abort_request(reason)
                assert self._finished_async is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._finished_async.wait(), timeout)
        finally:
            self._restore_signals()

    async def _finish_before_teardown(self, reason: str) -> None:
        """`asyncio_run`: the program's main() ended with the app still running."""
        await self._abort(reason)

    async def __aenter__(self) -> AsyncioRunner:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop("the runner's with-block ended")

    def _install_signals(self) -> None:
        super()._install_signals()
        loop, fd = self._loop, self._wakeup.fileno()
        if loop is not None and fd >= 0:
            # A signal that hits another thread wakes the loop's select here;
            # the main thread then runs `_on_signal` before the next callback.
            loop.add_reader(fd, self._wakeup.drain)

    def _restore_signals(self) -> None:
        loop, fd = self._loop, self._wakeup.fileno()
        if loop is not None and fd >= 0 and threading.current_thread() is threading.main_thread():
            loop.remove_reader(fd)  # a no-op on a closed loop
        super()._restore_signals()

    def _post(self, event: _Event) -> None:
        loop, q = self._loop, self._queue
        if loop is None or q is None:
            return
        # RuntimeError: the loop is closed; the app is long finished.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(q.put_nowait, event)

    def _post_ended(self, event: _Event) -> None:
        q = self._queue
        if q is not None and threading.get_ident() == self._control_ident:
            # A task of this loop: no wake-up through the loop's self-pipe needed.
            # (Not for `_post` itself: a signal handler may interrupt put_nowait here.)
            q.put_nowait(event)
            return
        # A call thread's: one wake-up of the loop for a burst of them (a wave of
        # sync stops ending together), not a self-pipe write and read each. The
        # append comes before the check, the clear before the drain: an event
        # that finds a wake-up on its way is taken by it.
        self._from_threads.append(event)
        if self._threads_wake:
            return
        self._threads_wake = True
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed; the app long finished
            loop.call_soon_threadsafe(self._take_from_threads)

    def _take_from_threads(self) -> None:
        """In the loop: queue what the call threads posted since the last wake-up, in order."""
        self._threads_wake = False
        q, posted = self._queue, self._from_threads
        while posted:
            event = posted.popleft()
            if q is not None:
                q.put_nowait(event)

    def _set_started(self) -> None:
        super()._set_started()
        if self._started_async is not None:
            self._started_async.set()

    def _set_finished(self) -> None:
        super()._set_finished()
        if self._finished_async is not None:
            self._finished_async.set()

    def _spawn_async(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        assert self._loop is not None
        task = self._loop.create_task(
            self._task_body(name, phase, call, handle), name=f"lifecycle:{name}.{phase}"
        )
        task.add_done_callback(functools.partial(self._unbegun, name, phase, handle))

    def _unbegun(self, name: str, phase: Phase, handle: _Handle, task: asyncio.Task[None]) -> None:
        """Make again a call whose task was cancelled before its first step.

        The loop's owner cancelling every task (``asyncio.run``'s teardown)
        can reach a task made but not begun: its body never runs, so the
        call is never made and the scheduler would wait for it until its
        deadline. The runner's own cancellations reach only begun tasks. While
        the run goes on (its control loop finishes the app first, as for the
        calls it makes after such a cancellation), the call gets a new task,
        with the same token and deadline; once the run ended, it is reported
        ended, cancelled.
        """
        if handle.task is not None or not task.cancelled():
            return
        if self.exit_code is None and self._handles.get((name, phase)) is handle:
            call = self._call_of(name, phase)
            if call is not None:
                self._spawn_async(name, phase, call, handle)
                return
        self._ended(name, phase, asyncio.CancelledError())

    def _stuck_hint(self) -> str:
        return (
            "the event loop is blocked by a synchronous call at the stack shown: await an "
            "async API instead, or move the call to a thread (asyncio.to_thread)"
        )

    async def _close_health_off_loop(self) -> None:
        """`HealthServer.close` joins threads: run it on a call thread, not in the loop."""
        if self._health is None:
            return
        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()

        def close() -> None:
            self._close_health()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_resolve, closed)

        self._threads.submit(close, f"lifecycle:{self.app.name}.health-close")
        await asyncio.wait({closed}, timeout=HEALTH_CLOSE_BOUND)

    async def _drive(self, actions: list[Action]) -> None:
        """Carry out ``actions``, then every event's, until the app finished."""
        sched, q = self.scheduler, self._queue
        assert sched is not None
        assert q is not None
        self._execute(actions)
        while self.exit_code is None:
            if q.empty():
                timeout = self._next_timeout()
                try:
                    async with asyncio.timeout(timeout):
                        event: _Event = await q.get()
                except TimeoutError:
                    event = ("tick",)
            else:
                event = q.get_nowait()
            self._rlog.hold()
            try:
                actions = self._dispatch(event)
                while not q.empty():  # decided together, then carried out (as the threaded loop)
                    actions += self._dispatch(q.get_nowait())
                await self._execute_in_turn(actions)
            finally:
                self._rlog.release()
            self._ready_threads()

    async def _execute_in_turn(self, actions: list[Action]) -> None:
        """Carry out ``actions``; the async calls after the round's last sync call begin in turn.

        Each such call begins (up to its first await) before the next is made.
        Not all made first, then all begun: the stops that a round of ended
        stops makes due (a layer of the graph) would then all begin only once
        the last was made (about 1.7 ms for 40 stops), and every layer's
        critical path would pay it. A stop of 400 components in 10 layers of
        20 ms stops took 223 ms (median of 6), 218 ms so. Up to the round's
        last sync call the actions are carried out together, as before: a sync
        call goes to its thread at once, never behind an async call's first
        step (which may hold the loop), since its deadline is already running.
        (With the loop's default task factory: an eager one, such as Python
        3.12's ``asyncio.eager_task_factory``, runs a task's first step as the
        task is made, before a sync call later in the round.)

        The calls begin before this round's log events are rendered. A
        cancellation of the control loop meanwhile makes the rest of the round
        (no decided action is dropped) and lets it begin, as one cancellation
        with any that those first steps make, then goes on.
        """
        split = 1 + max(
            (i for i, action in enumerate(actions) if self._is_sync_call(action)), default=-1
        )
        steps = [actions[:split]] if split else []
        steps += [[action] for action in actions[split:]]
        for index, step in enumerate(steps):
            self._execute(step)
            if type(step[-1]) not in _PHASES:
                continue
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                self._execute([action for later in steps[index + 1 :] for action in later])
                # They begin now, while this cancellation is handled: one that
                # their first steps make is this one, as when a round began at once.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0)
                raise

    def _is_sync_call(self, action: Action) -> bool:
        if not isinstance(action, StartComponent | RunComponent | StopComponent):
            return False
        call = self._call_of(action.name, _PHASES[type(action)])
        return call is not None and not call.is_async

    async def _control_loop(self, actions: list[Action]) -> None:
        try:
            try:
                await self._drive(actions)
            except asyncio.CancelledError:
                if self.exit_code is not None:
                    raise
                # The loop's owner cancels what is left in it (asyncio.run's
                # teardown) while the app runs: stop the app first, bounded by
                # its shutdown deadline, then end as asked.
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                self.app.request_shutdown("the runner's task was cancelled")
                await self._drive([])
                raise
            await self._close_health_off_loop()
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError):
                if self.exit_code is None:
                    _log.error(
                        "the runner's task was cancelled again before the app finished",
                        app=self.app.name,
                        still_running=self._log_still_running("abandoned: component"),
                        hint="let lifecycle.asyncio_run end the program's loop: it stops "
                        "the app before cancelling what is left",
                    )
            else:
                _log.critical("lifecycle control loop crashed; this is a bug", exc_info=True)
            self._finish(ExitCode.FAILED)
            self._close_health()  # cancelled or crashed: no awaiting any more
            raise
        finally:
            self._teardown()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


RunnerKind = Literal["auto", "thread", "asyncio"]


def run(
    app: App,
    *,
    runner: RunnerKind = "auto",
    signals: Iterable[int] | None = DEFAULT_SIGNALS,
) -> int:
    """Start the app, serve until a signal or a shutdown request, stop it; return the exit code.

    With its signal handlers installed (the default, in the main thread),
    ``run`` owns the process, and keeps the shutdown bounded whatever the
    components do: should the control loop miss the shutdown deadline by
    half a second (an ``async def`` blocking the event loop), a watchdog
    logs where it is stuck and ends the process with TIMEOUT; and the
    non-daemon threads the components started that outlive ``run`` get
    until the shutdown deadline (half a second at least) once the
    interpreter begins to exit, then are logged with their stacks and no
    longer waited for: the process exits with the code it was exiting with
    (the ``sys.exit`` code; 1 after an unhandled exception). Threads the
    program starts after ``run`` returned are its own, joined as usual.

    An exception escaping the wait (Ctrl-C while SIGINT is not among
    ``signals``, a handler of the program's that raises) first stops the
    app, bounded by its shutdown deadline, and restores the handlers; then
    it propagates.

    Args:
        app: the `App` to run.
        runner: ``"thread"``, ``"asyncio"``, or ``"auto"`` (asyncio when any
            component is async).
        signals: the signals that request a graceful shutdown; None for none
            (then the process's owner also decides when it exits).

    Returns:
        An `ExitCode` value, or 128 + signum after a forced exit.

    Raises:
        ConfigError: ``signals`` holds something no process can handle
            (SIGKILL, SIGSTOP, a number that is no signal); nothing was
            installed.
        ValueError: ``runner`` is none of the three.

    Example::

        if __name__ == "__main__":
            sys.exit(lifecycle.run(app))

    Added in 0.1.
    """
    if runner not in ("auto", "thread", "asyncio"):
        raise ValueError(f"runner must be 'auto', 'thread' or 'asyncio', got {runner!r}")
    kind = runner
    if kind == "auto":
        kind = "asyncio" if app._any_async else "thread"
    before = set(threading.enumerate())
    driver: ThreadedRunner | AsyncioRunner
    if kind == "thread":
        driver = ThreadedRunner(app, signals=signals)
        driver._run_owns_process = True
        code = _serve(driver)
    else:
        driver = AsyncioRunner(app, signals=signals)
        driver._run_owns_process = True
        code = asyncio_run(_serve_async(driver))
    if driver._owns_process:
        started = [t for t in threading.enumerate() if not t.daemon and t not in before]
        guard_interpreter_exit(code, app.shutdown_deadline, started)
    return code


def _serve(runner: ThreadedRunner) -> int:
    """`run`'s body on threads: start, wait, the exit code.

    An exception escaping the wait (Ctrl-C with SIGINT not among the
    signals, a handler of the program's that raises) first stops the app,
    bounded by its shutdown deadline, and restores the handlers.
    """
    try:
        runner.start()
    except ConfigError:
        return int(ExitCode.CONFIG)
    except StartupError:
        pass  # logged; wait() gives the code
    try:
        return runner.wait()
    except BaseException as why:
        runner._abort(f"{type(why).__name__} while run() waited")
        raise


async def _serve_async(runner: AsyncioRunner) -> int:
    """`run`'s body on asyncio: the twin of `_serve` (asyncio_run turns Ctrl-C into a cancel)."""
    try:
        await runner.start()
    except ConfigError:
        return int(ExitCode.CONFIG)
    except StartupError:
        pass  # logged; wait() gives the code
    try:
        return await runner.wait()
    except BaseException as why:
        await runner._abort(f"{type(why).__name__} while run() waited")
        raise
