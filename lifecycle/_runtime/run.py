"""`Run`: the state of one run of an `App`, owned by the driver that runs it.

`App` is the user's registry: what was declared. Everything one run of it
changes — the app's and the components' states, the shutdown request, its
token and deadline, the exit code, the health endpoint's bound address —
lives in one `Run`. The App creates it (an App runs once) and reads it for
its properties; the driver that claims it writes it through the methods
below, and nothing else of the App.

Invariant: `request` is signal-safe. A signal handler runs between two
bytecodes of the main thread, which may hold any lock (a logger's, a
queue's); so `request` only writes plain attributes and calls the wake-ups
it was given, each of which is itself signal-safe (``SimpleQueue.put``,
``loop.call_soon_threadsafe``). Everything else — cancelling
`shutdown_token`, logging, the scheduler — happens where the wake-up lands:
on the driver's control thread or loop, or, with no driver attached (before
``start()``, after the end), on the ``lifecycle-deferred`` thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .._core.errors import describe_error
from .._core.log import Logger, get_logger
from .._core.scheduler import ComponentInfo, Scheduler
from .._core.states import AppState, ExitCode
from .._core.tokens import CancelSource, CancelToken, cancel_in_background
from . import deferred
from .signals import in_signal_handler

__all__ = ["HANDOFF_BOUND", "Run"]

Wake = Callable[[], None]
_log = get_logger()

HANDOFF_BOUND = 5.0
"""Seconds a plain call of `Run.request` (no runner attached, not in a signal handler)
waits for the ``lifecycle-deferred`` thread to cancel the token: it is done in
microseconds, so a plain call's token reads cancelled when it returns."""


class Run:
    """The per-run state of an App: written by its driver, read by the App.

    Args:
        shutdown_timeout: the app's bound on its shutdown; with no scheduler
            yet, the deadline is this long after the request.
    """

    def __init__(self, shutdown_timeout: float) -> None:
        self.shutdown_timeout = shutdown_timeout
        self.infos: dict[str, ComponentInfo] = {}
        """Name -> live record, in registration order (the scheduler updates them)."""
        self.state = AppState.NEW
        self.exit_code: ExitCode | None = None
        self.health_address: tuple[str, int] | None = None
        """Where the health endpoint listens, once bound (the port chosen for 0)."""
        # Written by `request`, from any thread or a signal handler: plain
        # attributes, ``requested_at`` before ``shutdown_reason`` (whoever sees
        # the reason sees the time).
        self.requested_at: float | None = None
        self.shutdown_reason: str | None = None
        self.critical_down: str | None = None
        """The first critical component whose ``run`` ended, written by the call's own
        thread as it ends: readiness is off from then on, before the driver hears of it.
        Not for a component with a restart policy: its readiness comes back when it
        runs again (see `run_exits`)."""
        self.restartable: set[str] = set()
        """Names of the components with a restart policy (written at registration)."""
        self.run_exits: dict[str, int] = {}
        """Name -> how many of its ``run`` calls ended, written by each call's own thread
        as it ends (one call of a component at a time). With ``ComponentInfo.runs`` (the
        calls begun) it tells whether a component's run is live right now."""
        self._recording = threading.Lock()  # only ever tried, never waited on
        self._source = CancelSource()
        self._scheduler: Scheduler | None = None
        self._began: float | None = None
        self._wake: Wake | None = None
        self._watchers: tuple[Wake, ...] = ()
        deferred.start()  # here, not in a signal handler: starting a thread takes locks

    # -- what the App reads --------------------------------------------------

    @property
    def shutdown_token(self) -> CancelToken:
        """Cancelled once a shutdown was requested (by the driver, off the signal path)."""
        return self._source.token

    @property
    def scheduler(self) -> Scheduler | None:
        """The scheduler of the driver that took this run over, or None before."""
        return self._scheduler

    @property
    def shutdown_deadline(self) -> float | None:
        """The scheduler's shutdown deadline; until it has one, what it will be.

        The scheduler counts ``shutdown_timeout`` from the request, or from
        the run's begin for a request made before it; a request it has not
        handled yet (it is on its way to the control loop) gets the same.
        """
        sched = self._scheduler
        if sched is not None and sched.shutdown_deadline is not None:
            return sched.shutdown_deadline
        at = self.requested_at
        if at is None:
            return None
        began = self._began
        return (at if began is None else max(at, began)) + self.shutdown_timeout

    # -- requests, from anywhere ---------------------------------------------

    def request(self, reason: str) -> bool:
        """Record a shutdown request and wake the driver; False if one was recorded before.

        Signal-safe (see the module's invariant). With no driver attached
        (before ``start()``, after the end) the token is cancelled on the
        ``lifecycle-deferred`` thread, its callbacks on lifecycle callback
        threads; a caller that is not in a signal handler waits for that
        (`HANDOFF_BOUND` at most), so the token reads cancelled when it
        returns. Inside a handler it cannot wait: the code it interrupted may
        hold the token's locks, so the cancel happens a moment later.
        """
        if not self._record(reason):
            return False
        wake = self._wake
        if wake is not None:
            wake()
        else:
            deferred.defer(self.cancel_shutdown_token)
            if not in_signal_handler():
                self._source.token.wait(HANDOFF_BOUND)
        self._notify_watchers()
        return True

    def _record(self, reason: str) -> bool:
        # A non-blocking try: a request being recorded at this very moment
        # (another thread, or the code this signal handler interrupted) wins.
        if not self._recording.acquire(blocking=False):
            return False
        try:
            if self.shutdown_reason is not None:
                return False
            self.requested_at = time.monotonic()
            self.shutdown_reason = reason
            return True
        finally:
            self._recording.release()

    def _notify_watchers(self) -> None:
        for watcher in self._watchers:
            watcher()

    def run_ended(self, name: str) -> None:
        """A ``run`` call of ``name`` ended; called in that call's own thread or task.

        Readiness is off from here for a critical component (rule 5), before
        the driver hears of it: for good if it has no restart policy
        (`critical_down`), until its next run begins if it has one.
        """
        self.run_exits[name] = self.run_exits.get(name, 0) + 1
        if self.critical_down is None and name not in self.restartable:
            info = self.infos.get(name)
            if info is not None and info.critical:
                self.critical_down = name

    def run_live(self, name: str) -> bool:
        """Whether a ``run`` call of ``name`` began and has not ended yet."""
        runs = self.infos[name].runs
        return runs > 0 and self.run_exits.get(name, 0) < runs

    # -- the driver's side ---------------------------------------------------

    def attach(self, scheduler: Scheduler, wake: Wake, *watchers: Wake) -> None:
        """The driver takes over: it owns ``scheduler``; ``wake`` reaches its control loop.

        Both ``wake`` and ``watchers`` must be signal-safe; watchers are woken
        on every shutdown request, whoever made it (the watchdog).
        """
        self._began = time.monotonic()
        self._scheduler = scheduler
        if scheduler.on_restart is None:
            scheduler.on_restart = log_restart
        self._watchers = watchers
        self._wake = wake

    def detach(self) -> None:
        """The driver is done: later requests go to the ``lifecycle-deferred`` thread.

        A request recorded meanwhile (its wake-up reached a driver that no
        longer reads) has its token cancelled here.
        """
        self._wake = None
        self._watchers = ()
        self.cancel_shutdown_token()

    def adopt(self, reason: str) -> None:
        """The scheduler began the shutdown, requested or by itself (a critical run ended).

        Readiness, the reason and the token then say so alike (the first
        reason recorded stays); the driver is not woken (it knows).
        """
        if self.shutdown_reason is None and self._record(reason):
            self._notify_watchers()
        self.cancel_shutdown_token()

    def cancel_shutdown_token(self) -> None:
        """Cancel `shutdown_token` if a shutdown was requested; callbacks run off this thread."""
        reason = self.shutdown_reason
        if reason is not None and not self._source.token.cancelled:
            cancel_in_background(self._source, reason)

    def finish(self, code: ExitCode, state: AppState | None = None) -> None:
        """The run is over with ``code``; ``state`` when the scheduler did not set it."""
        self.exit_code = code
        if state is not None:
            self.state = state


def log_restart(
    info: ComponentInfo,
    attempt: int,
    delay: float | None,
    error: BaseException | None,
    log: Logger | Any = None,
) -> None:
    """Log a restart granted (``restart``, a warning) or refused at the limit (an error).

    Called by the scheduler on the driver's control thread or loop; ``log``
    is the driver's (its round's events keep their order), else the library's.
    """
    log = _log if log is None else log
    what = "returned" if error is None else describe_error(error)
    if delay is None:
        log.error(
            "restart limit reached",
            component=info.name,
            attempt=attempt,
            restarts=info.restarts,
            error=what,
            hint="the component is FAILED; raise max_restarts or within of its "
            "RestartPolicy, or fix what makes run() end",
        )
        return
    log.warning(
        "restart",
        component=info.name,
        attempt=attempt,
        delay=round(delay, 6),
        error=what,
    )
