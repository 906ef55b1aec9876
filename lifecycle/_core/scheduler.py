"""The sans-I/O scheduler: every ordering and failure decision, and nothing else.

A runner feeds it events — *start of X returned*, *stop of Y raised*, *a
shutdown was requested*, *time is now T* — and gets back a list of actions to
carry out: start X with this deadline, cancel Z's run token, stop Y, abandon
W, finish with exit code C. It owns no thread, no event loop and no clock;
time comes in with every event. That is what lets the threaded and asyncio
runners share every rule, and what lets the tests drive thousands of random
graphs, durations and failures through it on a fake clock.

The rules it implements are the ordering and failure rules in
docs/explanation.md. Invariants (checked by the property tests):

* Time never runs backwards: every entry point takes ``now = max(now, the
  latest now seen)``, so no duration is negative, no deadline moves earlier,
  and a runner whose clock readings race (a reading taken before another
  event was fed) cannot make a deadline fire early.
* A component starts only when every dependency is RUNNING (entered).
* A component's stop phase begins only when every dependent that began
  starting has *settled* (its start failed, or its stop phase ended).
* Every *entered* component (its start returned, or it has no start) gets
  exactly one stop phase, unless the shutdown deadline passes first.
* Nothing begins at or after the shutdown deadline: no stop phase, no
  ``stop()`` call (there is no time left for it).
* The shutdown deadline is set once, to ``shutdown_timeout`` after the
  request arrived (``requested_at``, clamped between the app's begin and
  ``now``) or after the startup failure; ``stop()`` gets
  ``min(now + stop_timeout, shutdown_deadline)``.
* A start that fails (raises, or overruns its start_timeout) fails the
  startup when its component is critical or a critical component depends on
  it, directly or through others. Otherwise only that component is FAILED,
  its dependents are never started (they stay NEW, ``.error`` a
  `DependencyFailed`), and the app starts without them; the exit code
  does not count it.
* Events for a phase that was abandoned, or that never began, are ignored:
  late answers from abandoned threads change nothing.
* Restarts (a `RestartPolicy` other than "never"): only ``run`` is started
  again, never ``start`` or ``stop``; a restart is granted only before the
  shutdown began, and a pending one is dropped the moment it begins (the
  component waits for its stop phase in RESTARTING, and ``stop`` is then
  called once, as for any entered component). A run that ends after the
  shutdown began, before its stop phase, in a way the policy would have
  restarted, is no failure either: ``restart_error`` holds what it raised
  and it waits in RESTARTING the same way. At most ``max_restarts``
  restarts are granted in any ``within`` seconds, counted at the exits
  (`Restarts`); the exit past that fails the component with
  `RestartLimitReached`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Literal

import attrs

from .drain import Drain
from .errors import DependencyFailed, describe_error, is_cancellation, is_deadline_cut
from .graph import Graph
from .periodic import Schedule
from .restart import RestartLimitReached, RestartPolicy, Restarts
from .states import (
    AppState,
    ComponentState,
    ExitCode,
    check_app_move,
    check_component_move,
)

__all__ = [
    "Abandon",
    "Action",
    "AppStarted",
    "CancelRun",
    "CancelStart",
    "ComponentInfo",
    "Finished",
    "NodeSpec",
    "RunComponent",
    "Scheduler",
    "StartComponent",
    "StopComponent",
]

Phase = Literal["start", "run", "stop"]

_STARTING: Final = ComponentState.STARTING
_RUNNING: Final = ComponentState.RUNNING
_RESTARTING: Final = ComponentState.RESTARTING
_STOPPING: Final = ComponentState.STOPPING


@attrs.frozen
class NodeSpec:
    """What the scheduler needs to know of one component."""

    name: str
    start_timeout: float
    stop_timeout: float
    critical: bool = True
    has_start: bool = True
    has_run: bool = False
    has_stop: bool = True
    restart: RestartPolicy = attrs.field(factory=RestartPolicy)
    """When its ``run`` is started again once it ended (only with ``has_run``)."""


@attrs.define(eq=False)
class ComponentInfo:
    """The live record of one component: state, error and timings.

    ``app.components[name]`` returns these. Times are values of the runner's
    monotonic clock; durations are in seconds.

    Attributes:
        name: the component's name.
        state: its `ComponentState`.
        error: the exception that failed it (None while healthy); for a
            component left NEW because a dependency failed to start, the
            `DependencyFailed` saying which.
        critical: whether its failure stops the app. A non-critical
            component whose start fails is FAILED and the app runs without
            it, unless a critical component depends on it.
        depends_on: the names it depends on.
        start_began / start_ended / stop_began / stop_ended: phase times or None.
        timed_out: the phase that overran ("start" or "stop"), or None.
        stop_called: whether its ``stop`` was called (exactly once, or never).
        run_error: what ``run`` raised, if it did (and was not restarted).
        runs: how many times ``run`` was called (1 + the restarts granted
            so far, once it ran).
        restarts: restarts granted by its restart policy.
        next_restart: when the pending restart happens, or None.
        restart_error: what the last restarted ``run`` raised (None if it
            returned, or it never restarted).
        restart_policy: its `RestartPolicy`, or None if it never restarts.
        periodic: for a periodic worker (``@app.every``), its schedule
            (next run, last outcome); None otherwise.

    Example::

        info = app.components["db"]
        if info.state is lifecycle.ComponentState.FAILED:
            print(info.name, info.error, info.timed_out, info.stop_duration)
    """

    name: str
    critical: bool = True
    depends_on: tuple[str, ...] = ()
    state: ComponentState = ComponentState.NEW
    error: BaseException | None = None
    start_began: float | None = None
    start_ended: float | None = None
    stop_began: float | None = None
    stop_ended: float | None = None
    timed_out: Phase | None = None
    stop_called: bool = False
    run_error: BaseException | None = None
    runs: int = 0
    restarts: int = 0
    next_restart: float | None = None
    restart_error: BaseException | None = None
    restart_policy: RestartPolicy | None = None
    periodic: Schedule | None = None

    @property
    def failed(self) -> bool:
        """True once it FAILED, or was left NEW because a dependency failed to start."""
        return self.state is ComponentState.FAILED or (
            self.state is ComponentState.NEW and self.error is not None
        )

    @property
    def start_duration(self) -> float | None:
        """Seconds ``start`` took, or None if it did not end."""
        if self.start_began is None or self.start_ended is None:
            return None
        return self.start_ended - self.start_began

    @property
    def stop_duration(self) -> float | None:
        """Seconds the stop phase took (waiting for ``run`` included), or None."""
        if self.stop_began is None or self.stop_ended is None:
            return None
        return self.stop_ended - self.stop_began


# -- actions ---------------------------------------------------------------


@attrs.frozen
class StartComponent:
    """Call the component's ``start`` with a token that expires at ``deadline``."""

    name: str
    deadline: float


@attrs.frozen
class RunComponent:
    """Call the component's ``run`` with a fresh token (no deadline)."""

    name: str


@attrs.frozen
class CancelStart:
    """Cancel the token of the component's ``start`` in progress."""

    name: str
    reason: str


@attrs.frozen
class CancelRun:
    """Cancel the component's ``run`` token: its stop phase has begun."""

    name: str
    reason: str


@attrs.frozen
class StopComponent:
    """Call the component's ``stop`` with a token that expires at ``deadline``."""

    name: str
    deadline: float


@attrs.frozen
class Abandon:
    """The component overran ``phase``: log where it is stuck, cancel its token, leave it."""

    name: str
    phase: Phase
    reason: str


@attrs.frozen
class AppStarted:
    """Every component started: the app is RUNNING."""


@attrs.frozen
class Finished:
    """The app is done; exit with ``exit_code``."""

    exit_code: ExitCode


Action = (
    StartComponent
    | RunComponent
    | CancelStart
    | CancelRun
    | StopComponent
    | Abandon
    | AppStarted
    | Finished
)

ComponentObserver = Callable[[ComponentInfo, ComponentState, ComponentState, float], None]
AppObserver = Callable[[AppState, AppState, float], None]
RestartObserver = Callable[[ComponentInfo, int, float | None, BaseException | None], None]
"""``(info, attempt, delay, error)`` per restart granted; ``delay`` None when it gave up."""


@attrs.define(eq=False)
class _Node:
    spec: NodeSpec
    info: ComponentInfo
    deps: tuple[_Node, ...] = ()
    users: tuple[_Node, ...] = ()
    waiting_deps: int = 0  # dependencies not yet entered
    unsettled_users: int = 0  # dependents that began starting and have not settled
    entered: bool = False  # start returned (or there was none): must get a stop phase
    settled: bool = False  # nothing more will happen to it
    skipped: bool = False  # never to start: a dependency's start failed (excused)
    start_active: bool = False
    start_cancelled: bool = False
    run_active: bool = False
    stop_phase: bool = False  # its stop phase began
    stop_active: bool = False  # its stop() is running
    stop_deadline: float = math.inf  # deadline of the wait for run(), then of stop()
    epoch: int = 0  # bumps on every phase change; stale timer entries carry an old one
    restarts: Restarts | None = None  # its restart state (None: "never")
    restart_pending: bool = False  # RESTARTING, its timer armed: only before the shutdown
    running_since: float | None = None  # when it entered RUNNING or RESTARTING


class Scheduler:
    """Decides what happens next; a runner carries it out.

    Every method takes ``now`` (the runner's monotonic time) and returns the
    actions to carry out, in order. A ``now`` earlier than one already seen
    counts as that one: time never runs backwards here. Not thread-safe: a
    runner feeds it from one thread or one event loop.

    Args:
        graph: the validated dependency graph.
        specs: one `NodeSpec` per name in the graph.
        infos: the records to keep up to date (``app.components``); created if omitted.
        shutdown_timeout: bounds the whole shutdown, drain delay included.
        drain_delay: seconds between readiness turning off and the first stop,
            or a `Drain`: the drain then ends at ``Drain.end`` of the arrivals
            fed in with `arrived`.
        on_component: called on every component transition
            ``(info, from_state, to_state, seconds_in_from_state)``.
        on_app: called on every app transition ``(from, to, now)``.
        on_restart: called when a restart is granted ``(info, attempt,
            delay, error)``, and with ``delay`` None when it gives up.
        rng: the random source of the restarts' jitter (a seeded one in tests).
    """

    def __init__(
        self,
        graph: Graph,
        specs: Iterable[NodeSpec],
        *,
        shutdown_timeout: float,
        drain_delay: float | Drain = 0.0,
        infos: dict[str, ComponentInfo] | None = None,
        on_component: ComponentObserver | None = None,
        on_app: AppObserver | None = None,
        on_restart: RestartObserver | None = None,
        rng: random.Random | None = None,
        name: str = "app",
    ) -> None:
        by_name = {spec.name: spec for spec in specs}
        if set(by_name) != set(graph.order):
            raise ValueError("specs and graph name different components")
        self.name = name
        self.shutdown_timeout = shutdown_timeout
        self.drain_delay = drain_delay
        self._on_component = on_component
        self._on_app = on_app
        self.on_restart = on_restart
        infos = infos if infos is not None else {}
        self._nodes: dict[str, _Node] = {}
        for n in graph.order:
            info = infos.get(n)
            if info is None:
                info = infos[n] = ComponentInfo(
                    n, critical=by_name[n].critical, depends_on=graph.depends_on[n]
                )
            spec = by_name[n]
            node = self._nodes[n] = _Node(spec, info)
            if spec.has_run and spec.restart.restarts:
                node.restarts = Restarts(spec.restart, rng)
                info.restart_policy = spec.restart
        for n, node in self._nodes.items():
            node.deps = tuple(self._nodes[d] for d in graph.depends_on[n])
            node.users = tuple(self._nodes[u] for u in graph.dependents[n])
            node.waiting_deps = len(node.deps)
        self.infos = infos

        self.state = AppState.NEW
        self._state_since = 0.0
        self.app_entered: dict[AppState, float] = {}
        """When the app first entered each state it has been in (the runner's clock)."""
        self.exit_code: ExitCode | None = None
        self.shutdown_reason: str | None = None
        self.shutdown_deadline: float | None = None
        self.startup_failure: tuple[str, str] | None = None
        self._failed = False
        self._timed_out = False
        # Nodes neither entered nor excused (a non-critical start failure and
        # the dependents it keeps from starting): the app starts at 0.
        self._unresolved = len(self._nodes)
        self._busy = 0  # starts in progress + entered nodes not yet settled
        # Invariant: the time every decision uses never decreases (see _clock).
        self._last_now = -math.inf
        self._began: float | None = None
        self._timers: list[tuple[float, int, str, str, int]] = []
        self._seq = itertools.count()
        self._drain_began: float | None = None  # when a Drain began (None: none yet)
        self._last_arrival: float | None = None  # the latest arrival fed to `arrived`

    # -- queries -----------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once `Finished` was emitted."""
        return self.exit_code is not None

    @property
    def shutting_down(self) -> bool:
        """True from the shutdown request (or the startup failure) on."""
        return self.shutdown_deadline is not None or self.done

    def next_deadline(self) -> float | None:
        """When to call `tick` next at the latest, or None if no timer is pending."""
        while self._timers:
            when, _, kind, name, epoch = self._timers[0]
            if self._timer_live(kind, name, epoch):
                return when
            heapq.heappop(self._timers)
        return None

    def active(self) -> list[tuple[str, Phase]]:
        """The calls in progress, ``(name, phase)``: for stuck diagnostics."""
        found: list[tuple[str, Phase]] = []
        for n, node in self._nodes.items():
            if node.start_active:
                found.append((n, "start"))
            if node.run_active:
                found.append((n, "run"))
            if node.stop_active:
                found.append((n, "stop"))
        return found

    # -- events ------------------------------------------------------------

    def begin(self, now: float) -> list[Action]:
        """Start the app: every component without dependencies starts now."""
        now = self._clock(now)
        actions: list[Action] = []
        self._began = now
        self._move_app(AppState.STARTING, now)
        if not self._nodes:
            self._move_app(AppState.RUNNING, now)
            actions.append(AppStarted())
            return actions
        # Collect the roots first: starting one without a start() enters it at
        # once, which may bring a dependent's waiting_deps to 0 mid-loop.
        roots = [node for node in self._nodes.values() if node.waiting_deps == 0]
        for node in roots:
            self._start(node, now, actions)
        return actions

    def start_finished(self, name: str, now: float) -> list[Action]:
        """The component's ``start`` returned."""
        now = self._clock(now)
        node = self._nodes[name]
        actions: list[Action] = []
        if self._end_start(node, now):
            self._enter(node, now, actions)
        return actions

    def start_failed(self, name: str, now: float, error: BaseException) -> list[Action]:
        """The component's ``start`` raised ``error``.

        A cancellation (`is_cancellation`) of a start the scheduler cancelled
        is the abort it asked for, no failure.
        """
        now = self._clock(now)
        node = self._nodes[name]
        actions: list[Action] = []
        if not self._end_start(node, now):
            return actions
        node.info.error = error
        self._move(node, ComponentState.FAILED, now)
        excused = False
        if not (node.start_cancelled and is_cancellation(error)):
            if is_deadline_cut(error):
                self._timed_out = True  # it cut work (a group killing its children): TIMEOUT
            why = describe_error(error)
            excused = self._start_failure(node, why, now, actions)
        self._settle(node, now, actions)
        if excused:
            self._maybe_started(now, actions)
        return actions

    def run_finished(
        self, name: str, now: float, error: BaseException | None = None
    ) -> list[Action]:
        """The component's ``run`` returned (``error`` None) or raised ``error``.

        Once its stop phase cancelled the token, ending by a cancellation
        (`is_cancellation`: a `Cancelled`, or a task group of them) is the
        expected end; anything else it raises is a failure.
        """
        now = self._clock(now)
        node = self._nodes[name]
        actions: list[Action] = []
        if not node.run_active:
            return actions
        node.run_active = False
        if node.stop_phase:
            if error is not None and not is_cancellation(error):
                node.info.run_error = error
                self._fail(node, error, now)
            self._after_run(node, now, actions)
            return actions
        node.info.run_error = error
        if (
            node.restarts is not None
            and self.shutting_down
            and node.restarts.would_restart(now, failed=error is not None)
        ):
            # The policy would restart it, but the shutdown began: the exit is
            # what a restart would have absorbed, no failure (the exit code does
            # not depend on when it crashed in the drain). It waits in
            # RESTARTING for its stop phase; stop() is still called once.
            node.info.run_error = None
            node.info.restart_error = error
            self._move(node, ComponentState.RESTARTING, now)
            return actions
        if node.restarts is not None and not self.shutting_down:
            delay = node.restarts.exited(now, failed=error is not None)
            if delay is not None:
                node.info.run_error = None  # not failed: restarting
                self._restart_later(node, delay, error, now)
                return actions
            if node.restarts.gave_up:
                limit = RestartLimitReached(name, node.spec.restart, node.restarts.count, error)
                limit.__cause__ = error
                self._restart_observed(node, node.restarts.count + 1, None, error)
                error = limit
        if error is not None:
            self._fail(node, error, now)
        if not node.spec.critical:
            return actions  # the report shows it; the app stays up
        what = "failed" if error is not None else "finished"
        if self.state is AppState.STARTING and error is not None:
            why = (
                str(error)
                if isinstance(error, RestartLimitReached)
                else f"run() raised {describe_error(error)}"
            )
            self._startup_failed(node, why, now, actions)
        else:
            if error is not None:
                self._failed = True
            actions.extend(
                self.request_shutdown(now, f"critical component {name!r} {what} in run()")
            )
        return actions

    def stop_finished(
        self, name: str, now: float, error: BaseException | None = None
    ) -> list[Action]:
        """The component's ``stop`` returned (``error`` None) or raised ``error``.

        Any error fails it (exit FAILED). Only a cut at the deadline
        (`is_deadline_cut`: a `DeadlineExceeded`, alone or in a group) means
        something was abandoned: exit TIMEOUT and ``timed_out == "stop"``. A
        plain ``TimeoutError`` (a client's socket timeout) is an ordinary error.
        """
        now = self._clock(now)
        node = self._nodes[name]
        actions: list[Action] = []
        if not node.stop_active:
            return actions
        node.stop_active = False
        if error is not None:
            self._fail(node, error, now)
            if is_deadline_cut(error):
                self._timed_out = True
                node.info.timed_out = "stop"
        self._end_stop(node, now, actions)
        return actions

    def request_shutdown(
        self, now: float, reason: str = "requested", *, requested_at: float | None = None
    ) -> list[Action]:
        """Begin the shutdown (idempotent: the first reason wins).

        While starting this aborts the start; while running it begins the
        drain delay; afterwards it does nothing.

        Args:
            now: the runner's time.
            reason: why; the first reason given is kept.
            requested_at: when the request arrived (a signal handler records
                it), if earlier than ``now``: the shutdown deadline,
                `shutdown_deadline`, is ``requested_at + shutdown_timeout``,
                with ``requested_at`` clamped to no earlier than the app's
                begin and no later than ``now``. Everything else (the drain
                delay, the stop phases) counts from ``now``. A request handled
                after its deadline already passed abandons what runs at once.

        Example::

            # in the runner, off the signal path:
            actions = scheduler.request_shutdown(clock(), "signal SIGTERM", requested_at=at)
        """
        now = self._clock(now)
        actions: list[Action] = []
        opened = self.shutdown_deadline is None
        if self.shutdown_reason is None:
            self.shutdown_reason = reason
        if self.state is AppState.NEW:
            # Nothing started: finish at once, cleanly.
            self._began = now
            self._move_app(AppState.STARTING, now)
            self._begin_shutdown(now, now, actions)
        elif self.state is AppState.STARTING and self.shutdown_deadline is None:
            self._begin_shutdown(self._deadline_basis(now, requested_at), now, actions)
        elif self.state is AppState.RUNNING:
            deadline = self._open_deadline(self._deadline_basis(now, requested_at))
            self._move_app(AppState.DRAINING, now)
            drain = self.drain_delay
            if isinstance(drain, Drain):
                self._drain_began = now
                self._arm(drain.end(now, self._last_arrival, deadline), "drain", "", 0)
            elif drain <= 0:
                self._begin_stopping(now, actions)
            else:
                self._arm(min(now + drain, deadline), "drain", "", 0)
        else:
            opened = False
        if opened and self.shutdown_deadline is not None and self.shutdown_deadline < now:
            actions.extend(self.tick(now))  # it arrived too late: the deadline passed
        return actions

    def arrived(self, at: float | None) -> None:
        """A request or connection arrived at ``at`` (the latest one a runner knows of).

        Only an adaptive drain (a `Drain` as ``drain_delay``) uses it: its
        timer, as it fires, ends the drain or moves to ``Drain.end`` of the
        latest arrival. None (nothing arrived) and earlier times change nothing.

        Example::

            scheduler.arrived(app.last_arrival())
            actions = scheduler.tick(clock())
        """
        if at is not None and (self._last_arrival is None or at > self._last_arrival):
            self._last_arrival = at

    @property
    def wants_arrivals(self) -> bool:
        """True while arrivals matter (a `Drain`, running or draining): feed `arrived` first."""
        return isinstance(self.drain_delay, Drain) and self.state in (
            AppState.RUNNING,
            AppState.DRAINING,
        )

    def tick(self, now: float) -> list[Action]:
        """Time is ``now``: fire every deadline that has passed."""
        now = self._clock(now)
        actions: list[Action] = []
        while self._timers and self._timers[0][0] <= now and not self.done:
            _, _, kind, name, epoch = heapq.heappop(self._timers)
            if not self._timer_live(kind, name, epoch):
                continue
            if kind == "drain":
                self._drain_due(now, actions)
            elif kind == "shutdown":
                self._shutdown_expired(now, actions)
            elif kind == "start":
                self._start_expired(self._nodes[name], now, actions)
            elif kind == "restart":
                self._restart_now(self._nodes[name], now, actions)
            else:
                self._stop_expired(self._nodes[name], now, actions)
        return actions

    # -- internals ---------------------------------------------------------

    def _clock(self, now: float) -> float:
        """``now``, or the latest time seen if ``now`` is earlier: time never runs back."""
        if now >= self._last_now:
            self._last_now = now
            return now
        if now < self._last_now:
            return self._last_now
        raise ValueError(
            f"now must be a number, got {now!r}: pass the runner's time.monotonic() value"
        )

    def _deadline_basis(self, now: float, requested_at: float | None) -> float:
        """When the shutdown deadline counts from: ``requested_at`` clamped into [begin, now]."""
        if requested_at is None:
            return now
        if math.isnan(requested_at):
            raise ValueError(
                "requested_at must be a number, got nan: pass the time.monotonic() "
                "value recorded when the shutdown request arrived, or None"
            )
        began = now if self._began is None else self._began
        return min(max(requested_at, began), now)

    def _open_deadline(self, basis: float) -> float:
        """Set the shutdown deadline, once, ``shutdown_timeout`` after ``basis``."""
        deadline = self.shutdown_deadline = basis + self.shutdown_timeout
        self._arm(deadline, "shutdown", "", 0)
        for node in self._nodes.values():
            if node.restart_pending:
                # The shutdown began: no restart (it waits in RESTARTING for its stop phase).
                node.restart_pending = False
                node.epoch += 1
                node.info.next_restart = None
        return deadline

    def _end_start(self, node: _Node, now: float) -> bool:
        """The start call of ``node`` ended; False if it was not running (a late answer)."""
        if not node.start_active:
            return False
        node.start_active = False
        node.epoch += 1
        node.info.start_ended = now
        self._busy -= 1
        return True

    def _timer_live(self, kind: str, name: str, epoch: int) -> bool:
        if kind == "drain":
            return self.state is AppState.DRAINING
        if kind == "shutdown":
            return not self.done
        node = self._nodes[name]
        if node.epoch != epoch:
            return False
        if kind == "restart":
            return node.restart_pending
        return node.start_active if kind == "start" else node.stop_phase and not node.settled

    def _arm(self, when: float, kind: str, name: str, epoch: int) -> None:
        if math.isfinite(when):
            heapq.heappush(self._timers, (when, next(self._seq), kind, name, epoch))

    def _move(self, node: _Node, target: ComponentState, now: float) -> None:
        info = node.info
        before = info.state
        if before is target:
            return
        check_component_move(info.name, before, target)
        # How long it was in ``before`` (a chain of identity tests: this runs
        # twice per component stopped, on the shutdown's critical path).
        if before is _STARTING:
            since = info.start_began
        elif before is _RUNNING or before is _RESTARTING:
            since = node.running_since
        elif before is _STOPPING:
            since = info.stop_began
        else:
            since = None
        if target is _RUNNING or target is _RESTARTING:
            node.running_since = now
        info.state = target
        if self._on_component is not None:
            self._on_component(info, before, target, 0.0 if since is None else now - since)

    def _fail(self, node: _Node, error: BaseException, now: float) -> None:
        """Mark FAILED (once; the first error is kept) and count it for the exit code."""
        if node.info.error is None:
            node.info.error = error
        if node.info.state is not ComponentState.FAILED:
            self._move(node, ComponentState.FAILED, now)
        if node.spec.critical or node.stop_phase:
            self._failed = True

    def _move_app(self, target: AppState, now: float) -> None:
        before = self.state
        check_app_move(self.name, before, target)
        self.state = target
        self._state_since = now
        self.app_entered.setdefault(target, now)
        if self._on_app is not None:
            self._on_app(before, target, now)

    def _start(self, node: _Node, now: float, actions: list[Action]) -> None:
        node.info.start_began = now
        self._move(node, ComponentState.STARTING, now)
        for dep in node.deps:
            dep.unsettled_users += 1
        if not node.spec.has_start:
            node.info.start_ended = now
            self._enter(node, now, actions)
            return
        node.start_active = True
        node.epoch += 1
        self._busy += 1
        deadline = now + node.spec.start_timeout
        self._arm(deadline, "start", node.spec.name, node.epoch)
        actions.append(StartComponent(node.spec.name, deadline))

    def _enter(self, node: _Node, now: float, actions: list[Action]) -> None:
        """Its start returned: it is RUNNING and owes a stop phase."""
        node.entered = True
        self._busy += 1
        self._unresolved -= 1
        self._move(node, ComponentState.RUNNING, now)
        if self.shutting_down:
            # Aborting or rolling back: no run, no dependents; it is already
            # stoppable unless a dependent is still settling.
            if node.unsettled_users == 0:
                self._begin_stop(node, now, actions)
            return
        if node.spec.has_run:
            node.run_active = True
            node.info.runs += 1
            actions.append(RunComponent(node.spec.name))
        for user in node.users:
            user.waiting_deps -= 1
            if user.waiting_deps == 0:
                self._start(user, now, actions)
        self._maybe_started(now, actions)

    def _restart_later(
        self, node: _Node, delay: float, error: BaseException | None, now: float
    ) -> None:
        """Its run ended and its policy grants a restart: RESTARTING until ``now + delay``."""
        assert node.restarts is not None
        info = node.info
        info.restart_error = error
        info.restarts = node.restarts.count
        info.next_restart = now + delay
        node.restart_pending = True
        node.epoch += 1
        self._move(node, ComponentState.RESTARTING, now)
        self._arm(now + delay, "restart", node.spec.name, node.epoch)
        self._restart_observed(node, info.restarts, delay, error)

    def _restart_observed(
        self, node: _Node, attempt: int, delay: float | None, error: BaseException | None
    ) -> None:
        if self.on_restart is not None:
            self.on_restart(node.info, attempt, delay, error)

    def _restart_now(self, node: _Node, now: float, actions: list[Action]) -> None:
        """The backoff is over (and no shutdown began): run again."""
        node.restart_pending = False
        node.epoch += 1
        node.run_active = True
        node.info.next_restart = None
        node.info.runs += 1
        self._move(node, ComponentState.RUNNING, now)
        actions.append(RunComponent(node.spec.name))

    def _maybe_started(self, now: float, actions: list[Action]) -> None:
        """Every component entered or is excused: the app is RUNNING."""
        if self._unresolved == 0 and self.state is AppState.STARTING:
            self._move_app(AppState.RUNNING, now)
            actions.append(AppStarted())

    def _start_failure(self, node: _Node, why: str, now: float, actions: list[Action]) -> bool:
        """Its start raised or overran its own start_timeout; True if that is excused.

        Excused when no critical component needs it: it is non-critical, and
        no critical component depends on it, directly or through others.
        Then its dependents will never start; the app runs without them.
        """
        if not node.spec.critical:
            path = self._critical_dependent(node)
            if path is None:
                self._skip_dependents(node, why)
                self._unresolved -= 1
                return True
            critical, through = path[-1], path[-2:0:-1]
            why += f"; critical component {critical.spec.name!r} depends on it"
            if through:
                why += " (through " + ", ".join(repr(n.spec.name) for n in through) + ")"
        self._startup_failed(node, why, now, actions)
        return False

    @staticmethod
    def _dependents_of(root: _Node) -> Iterator[tuple[_Node, _Node]]:
        """``(user, via)`` for each component depending on ``root``, directly or not.

        Once each, nearest first (breadth-first); ``via`` is the dependency
        of ``user`` it was reached through.
        """
        seen = {root}
        queue = [root]
        for current in queue:
            for user in current.users:
                if user not in seen:
                    seen.add(user)
                    queue.append(user)
                    yield user, current

    def _critical_dependent(self, node: _Node) -> list[_Node] | None:
        """The chain from ``node`` up to its nearest critical dependent, or None if none."""
        came_from: dict[_Node, _Node] = {}
        for user, via in self._dependents_of(node):
            came_from[user] = via
            if user.spec.critical:
                path = [user]
                while path[-1] is not node:
                    path.append(came_from[path[-1]])
                return path[::-1]
        return None

    def _skip_dependents(self, root: _Node, why: str) -> None:
        """Mark everything depending on ``root`` as never to start, naming the cause."""
        for user, via in self._dependents_of(root):
            if not user.skipped:
                user.skipped = True
                self._unresolved -= 1
                user.info.error = DependencyFailed(
                    user.spec.name, via.spec.name, root.spec.name, why
                )

    def _startup_failed(self, node: _Node, why: str, now: float, actions: list[Action]) -> None:
        self._failed = True
        if self.state is not AppState.STARTING:
            return
        if self.startup_failure is None:
            self.startup_failure = (node.spec.name, why)
            if self.shutdown_reason is None:
                self.shutdown_reason = f"component {node.spec.name!r} failed to start"
        if self.shutdown_deadline is None:
            self._begin_shutdown(now, now, actions)

    def _begin_shutdown(self, basis: float, now: float, actions: list[Action]) -> None:
        """Abort or roll back a start: cancel starts, stop what entered."""
        self._open_deadline(basis)
        self._move_app(AppState.STOPPING, now)
        reason = self.shutdown_reason or "shutdown"
        for node in self._nodes.values():
            if node.start_active and not node.start_cancelled:
                node.start_cancelled = True
                actions.append(CancelStart(node.spec.name, reason))
        self._stop_ready(now, actions)

    def _drain_due(self, now: float, actions: list[Action]) -> None:
        """The drain timer fired: stop, unless an adaptive drain must wait for quiet."""
        drain, began = self.drain_delay, self._drain_began
        if isinstance(drain, Drain) and began is not None:
            assert self.shutdown_deadline is not None
            end = drain.end(began, self._last_arrival, self.shutdown_deadline)
            if end > now:
                # Invariant: end only moves later, bounded by began + max.
                self._arm(end, "drain", "", 0)
                return
        self._begin_stopping(now, actions)

    def _begin_stopping(self, now: float, actions: list[Action]) -> None:
        """The drain delay is over: stop in reverse dependency order."""
        self._move_app(AppState.STOPPING, now)
        self._stop_ready(now, actions)

    def _stop_ready(self, now: float, actions: list[Action]) -> None:
        for node in self._nodes.values():
            if node.entered and not node.stop_phase and node.unsettled_users == 0:
                self._begin_stop(node, now, actions)
        self._maybe_finish(now, actions)

    def _begin_stop(self, node: _Node, now: float, actions: list[Action]) -> None:
        assert self.shutdown_deadline is not None
        if now >= self.shutdown_deadline:
            # No time left: the shutdown timer (due now) reports it as never stopped.
            return
        node.stop_phase = True
        node.epoch += 1
        node.info.stop_began = now
        if node.info.state in (ComponentState.RUNNING, ComponentState.RESTARTING):
            self._move(node, ComponentState.STOPPING, now)
        deadline = min(now + node.spec.stop_timeout, self.shutdown_deadline)
        node.stop_deadline = deadline
        if node.run_active:
            # The wait for run() to return is bounded by this timer; without a
            # run, _after_run arms stop()'s own right away (or settles it).
            self._arm(deadline, "stop", node.spec.name, node.epoch)
            actions.append(CancelRun(node.spec.name, self.shutdown_reason or "shutdown"))
            return
        self._after_run(node, now, actions)

    def _after_run(self, node: _Node, now: float, actions: list[Action]) -> None:
        if node.spec.has_stop:
            assert self.shutdown_deadline is not None
            if now >= self.shutdown_deadline:
                # No time left to call stop(): the shutdown deadline excuses it (rule 3).
                self._timed_out = True
                node.info.timed_out = "stop"
                if node.info.error is None:
                    node.info.error = TimeoutError(
                        f"stop() of {node.spec.name!r} was not called: the shutdown_timeout "
                        f"of {self.shutdown_timeout:g}s passed while run() was ending"
                    )
                self._move(node, ComponentState.FAILED, now)
                self._end_stop(node, now, actions)
                return
            # Rule 7: stop's token expires stop_timeout after stop() is called
            # (not after the stop phase began), capped by the shutdown deadline.
            node.stop_deadline = min(now + node.spec.stop_timeout, self.shutdown_deadline)
            node.epoch += 1  # the timer of the wait for run() is stale now
            self._arm(node.stop_deadline, "stop", node.spec.name, node.epoch)
            node.stop_active = True
            node.info.stop_called = True
            actions.append(StopComponent(node.spec.name, node.stop_deadline))
        else:
            self._end_stop(node, now, actions)

    def _end_stop(self, node: _Node, now: float, actions: list[Action]) -> None:
        node.info.stop_ended = now
        if node.info.state is ComponentState.STOPPING:
            self._move(node, ComponentState.STOPPED, now)
        self._settle(node, now, actions)

    def _settle(self, node: _Node, now: float, actions: list[Action]) -> None:
        """Nothing more will happen to ``node``: its dependencies may stop."""
        node.settled = True
        node.epoch += 1
        if node.entered:
            self._busy -= 1
        for dep in node.deps:
            dep.unsettled_users -= 1
            if (
                self.shutting_down
                and self.state is AppState.STOPPING
                and dep.unsettled_users == 0
                and dep.entered
                and not dep.stop_phase
            ):
                self._begin_stop(dep, now, actions)
        self._maybe_finish(now, actions)

    def _maybe_finish(self, now: float, actions: list[Action]) -> None:
        if self.done or self.state is not AppState.STOPPING or self._busy:
            return
        if self._timed_out:
            code = ExitCode.TIMEOUT
        elif self._failed:
            code = ExitCode.FAILED
        else:
            code = ExitCode.OK
        self.exit_code = code
        self._move_app(AppState.STOPPED if code is ExitCode.OK else AppState.FAILED, now)
        actions.append(Finished(code))

    def _start_expired(
        self, node: _Node, now: float, actions: list[Action], *, by_shutdown: bool = False
    ) -> None:
        name = node.spec.name
        if by_shutdown:
            why = (
                f"start() of {name!r} was still running when the shutdown_timeout of "
                f"{self.shutdown_timeout:g}s passed; abandoned"
            )
        else:
            why = (
                f"start() of {name!r} did not return within its start_timeout of "
                f"{node.spec.start_timeout:g}s; abandoned"
            )
        error = TimeoutError(why)
        node.info.timed_out = "start"
        actions.append(Abandon(name, "start", why))
        self._end_start(node, now)
        node.info.error = error
        self._move(node, ComponentState.FAILED, now)
        excused = not by_shutdown and self._start_failure(node, why, now, actions)
        self._settle(node, now, actions)
        if excused:
            self._maybe_started(now, actions)

    def _stop_expired(self, node: _Node, now: float, actions: list[Action]) -> None:
        name = node.spec.name
        shutdown_cut = self.shutdown_deadline is not None and now >= self.shutdown_deadline
        limit = (
            f"the shutdown_timeout of {self.shutdown_timeout:g}s"
            if shutdown_cut
            else f"its stop_timeout of {node.spec.stop_timeout:g}s"
        )
        waiting = "run() did not return" if node.run_active else "stop() did not return"
        error = TimeoutError(f"{waiting} for {name!r} within {limit}; abandoned")
        node.info.timed_out = "stop"
        actions.append(Abandon(name, "run" if node.run_active else "stop", str(error)))
        self._timed_out = True
        if node.info.error is None:
            node.info.error = error
        if node.info.state is not ComponentState.FAILED:
            self._move(node, ComponentState.FAILED, now)
        if node.run_active and not shutdown_cut:
            # Rule 3: stop() is still called exactly once; only the shutdown
            # deadline excuses it. It often is what unblocks a stuck run().
            node.run_active = False
            self._after_run(node, now, actions)
            return
        node.run_active = False
        node.stop_active = False
        self._end_stop(node, now, actions)

    def _shutdown_expired(self, now: float, actions: list[Action]) -> None:
        """The global deadline: abandon what runs; what never stopped never will."""
        if self._busy:
            self._timed_out = True  # something is abandoned (an empty app just finishes)
        if self.state is AppState.DRAINING:
            self._move_app(AppState.STOPPING, now)
        for node in self._nodes.values():
            if node.start_active:
                node.start_cancelled = True
                self._start_expired(node, now, actions, by_shutdown=True)
        for node in self._nodes.values():
            if node.settled or not node.entered:
                continue
            if node.stop_phase:
                self._stop_expired(node, now, actions)
                continue
            # Never reached its stop phase: not stopped, but not left running blind.
            error = TimeoutError(
                f"{node.spec.name!r} was not stopped: the shutdown_timeout of "
                f"{self.shutdown_timeout:g}s passed before its stop phase could begin "
                f"(it waits for the components that depend on it)"
            )
            if node.run_active:
                actions.append(Abandon(node.spec.name, "run", str(error)))
                node.run_active = False
            if node.info.error is None:
                node.info.error = error
            node.info.timed_out = "stop"
            if node.info.state is not ComponentState.FAILED:
                self._move(node, ComponentState.FAILED, now)
            node.stop_phase = True
            node.info.stop_ended = now
            self._settle(node, now, actions)
        self._maybe_finish(now, actions)
