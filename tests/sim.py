"""A deterministic discrete-event simulator that drives the `Scheduler` on a fake clock.

Each component follows a `Script`: how long its ``start`` takes and whether
it returns, raises or hangs (and whether it honours a cancelled start token);
how its ``run`` ends (only when cancelled, or by returning or raising on its
own) and what it does once cancelled; how long its ``stop`` takes and how it
ends. `simulate` feeds the scheduler the events those scripts produce, in time
order, carries out its actions, and calls ``tick`` whenever
``next_deadline()`` comes before the next event. At equal times events come
before deadlines: a call that ends exactly at its deadline made it.

Calls end the ways real ones do: ``run`` and an aborted ``start`` may end
with an exception group (an ``asyncio.TaskGroup``'s) made only of
cancellations, or mixing one with a real error; ``stop`` may raise a plain
``TimeoutError`` (a client's socket timeout), a `DeadlineExceeded` (a server
cut requests), or a group holding one.

The runner's clock is imperfect too: a shutdown request may carry the moment
it arrived (``requested_at``, a lag before its delivery, or even after it),
and a scheduler call made at the instant of the previous one may carry an
earlier time (``slips``: a clock reading taken before another event was fed).
The scheduler must take the latest time it saw, so every check stays exact.

The simulator is strict about the protocol between a runner and the
scheduler — a second ``start``/``run``/``stop`` of one component, a cancel or
abandon of a call that is not in progress, a late answer that changes
something, a deadline in the past, a start deadline other than now +
start_timeout, a shutdown deadline that moves — and raises `SimulationError`
at once. The ordering rules in docs/explanation.md are asserted on the
`SimResult` by the tests.

Times are floats; the strategies use whole numbers so that sums are exact.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, NamedTuple

import attrs

from lifecycle._core.errors import Cancelled, DeadlineExceeded
from lifecycle._core.graph import Graph
from lifecycle._core.scheduler import (
    Abandon,
    Action,
    AppStarted,
    CancelRun,
    CancelStart,
    ComponentInfo,
    Finished,
    NodeSpec,
    Phase,
    RunComponent,
    Scheduler,
    StartComponent,
    StopComponent,
)
from lifecycle._core.states import AppState, ComponentState, ExitCode

__all__ = [
    "ActionEntry",
    "AppMove",
    "ComponentMove",
    "RunScript",
    "Script",
    "SimResult",
    "SimulationError",
    "StartScript",
    "StopScript",
    "TraceEntry",
    "simulate",
]

Outcome = Literal["ok", "raises", "hangs"]
StopOutcome = Literal["ok", "raises", "hangs", "times out", "cut", "cut group"]
CancelAs = Literal["cancelled", "group", "mixed"]
RunEnds = Literal["cancelled", "returns", "raises"]
OnCancel = Literal["returns", "cancelled", "cancelled group", "raises", "mixed group", "hangs"]
Kind = Literal["begin", "end", "fail", "cancel", "abandoned", "late"]


class SimulationError(AssertionError):
    """The scheduler broke the runner protocol, or the simulation did not end."""


class StartBoom(Exception):
    """What a scripted ``start`` raises."""


class RunBoom(Exception):
    """What a scripted ``run`` raises."""


class StopBoom(Exception):
    """What a scripted ``stop`` raises."""


def cancelled_group() -> BaseExceptionGroup[BaseException]:
    """What a task group raises when every child honoured the token (nested, both kinds)."""
    inner = BaseExceptionGroup("inner task group", [asyncio.CancelledError()])
    return BaseExceptionGroup("task group", [Cancelled("simulated"), inner])


def mixed_group(error: Exception) -> BaseExceptionGroup[BaseException]:
    """A task group where one child honoured the token and another crashed."""
    return BaseExceptionGroup("task group", [Cancelled("simulated"), error])


def _stop_error(name: str, outcome: StopOutcome) -> BaseException | None:
    """What a scripted ``stop`` that ends raises, by its outcome."""
    cut = DeadlineExceeded(name, ["GET /simulated (1.0s)"])
    return {
        "ok": None,
        "raises": StopBoom(name),
        "times out": TimeoutError(f"{name}: simulated client socket timeout"),
        "cut": cut,
        "cut group": BaseExceptionGroup("task group", [cut, Cancelled("simulated")]),
    }[outcome]


@attrs.frozen
class StartScript:
    """``start`` ends ``duration`` after it began: returns, raises `StartBoom`, or never.

    ``cancel_delay``: once its token is cancelled it raises this much later
    (if it has not ended before); None ignores the cancellation. It raises
    ``cancel_as``: a `Cancelled`, a group of cancellations, or a group
    mixing a `Cancelled` with a `StartBoom` (a failure).
    """

    duration: float = 0.0
    outcome: Outcome = "ok"
    cancel_delay: float | None = None
    cancel_as: CancelAs = "cancelled"


@attrs.frozen
class RunScript:
    """How ``run`` ends.

    ``ends``: "cancelled" runs until its token is cancelled; "returns" and
    "raises" (`RunBoom`) end on their own ``at`` seconds after it began,
    unless cancelled before. Once cancelled it ``on_cancel``s after
    ``return_delay``: returns, raises `Cancelled` or a group of
    cancellations, raises `RunBoom` or a group mixing it with a `Cancelled`,
    or hangs.
    """

    ends: RunEnds = "cancelled"
    at: float = 0.0
    on_cancel: OnCancel = "returns"
    return_delay: float = 0.0


@attrs.frozen
class StopScript:
    """``stop`` ends ``duration`` after it began, or never (``outcome`` "hangs").

    It returns ("ok") or raises: `StopBoom` ("raises"), a plain
    ``TimeoutError`` ("times out"), `DeadlineExceeded` ("cut"), or a group
    of a `DeadlineExceeded` and a `Cancelled` ("cut group").
    """

    duration: float = 0.0
    outcome: StopOutcome = "ok"


@attrs.frozen
class Script:
    """The behaviour of one component; phases its `NodeSpec` lacks are ignored."""

    start: StartScript = StartScript()
    run: RunScript = RunScript()
    stop: StopScript = StopScript()


class TraceEntry(NamedTuple):
    """One thing that happened to one call: ``(time, name, phase, kind, ...)``.

    ``kind`` is "begin", "end" (returned), "fail" (raised; ``detail`` names the
    exception, or a group's leaves joined by "+", like "Cancelled+RunBoom"),
    "cancel" (its token was cancelled by the scheduler),
    "abandoned", or "late" (an answer for an abandoned call, ignored).
    ``seq`` orders trace entries and state moves among themselves.
    """

    time: float
    name: str
    phase: Phase
    kind: Kind
    detail: str
    seq: int


class ActionEntry(NamedTuple):
    """An action the scheduler returned.

    ``source`` is the call it answered: "begin", "tick", "shutdown", "start",
    "run" or "stop". ``seq`` orders it among trace entries and state moves;
    within one scheduler call, the moves come first.
    """

    time: float
    source: str
    action: Action
    seq: int


class ComponentMove(NamedTuple):
    """A component transition the scheduler reported; ``seq`` orders all moves.

    ``spent``: the seconds in ``before`` the scheduler reported.
    """

    seq: int
    time: float
    name: str
    before: ComponentState
    after: ComponentState
    spent: float


class AppMove(NamedTuple):
    """An app transition the scheduler reported; ``seq`` orders all moves."""

    seq: int
    time: float
    before: AppState
    after: AppState


@attrs.define
class SimResult:
    """What happened.

    Attributes:
        trace: every call's begin, end, cancellation and abandonment, in order.
        actions: every action the scheduler returned, in order.
        component_moves / app_moves: the transitions the observers saw.
        exit_code / finished_at: from `Finished` (None if it never came).
        started_at: when `AppStarted` came, or None.
        requested_at: the first shutdown request the simulator delivered.
        request_basis: when the request that began the shutdown arrived, as
            the scheduler must count it (its ``requested_at`` clamped between
            the begin, t=0, and its delivery), or None if no request began it.
        deadline_hit: the shutdown deadline passed before the app finished.
        slips: how many scheduler calls carried a time earlier than the last one.
        scheduler / infos: the scheduler and its component records at the end.
    """

    scheduler: Scheduler
    infos: dict[str, ComponentInfo]
    trace: list[TraceEntry] = attrs.Factory(list)
    actions: list[ActionEntry] = attrs.Factory(list)
    component_moves: list[ComponentMove] = attrs.Factory(list)
    app_moves: list[AppMove] = attrs.Factory(list)
    exit_code: ExitCode | None = None
    finished_at: float | None = None
    started_at: float | None = None
    requested_at: float | None = None
    request_basis: float | None = None
    deadline_hit: bool = False
    slips: int = 0
    steps: int = 0

    def entries(self, name: str, phase: Phase, kind: Kind) -> list[TraceEntry]:
        """The trace entries of one component's phase of one kind."""
        return [e for e in self.trace if e.name == name and e.phase == phase and e.kind == kind]


class _Call:
    """The simulator's side of one call: in progress, ended, or abandoned."""

    __slots__ = ("due", "state", "token")

    def __init__(self) -> None:
        self.state: Literal["active", "ended", "abandoned"] = "active"
        self.due = math.inf  # when its pending answer arrives
        self.token = 0  # the pending answer carries it; older answers are stale


class _Event(NamedTuple):
    time: float
    seq: int
    kind: Literal["shutdown", "start", "run", "stop"]
    name: str
    error: BaseException | None
    token: int  # for a shutdown: its index in shutdown_at


class _Simulation:
    def __init__(
        self,
        graph: Graph,
        specs: Iterable[NodeSpec],
        scripts: Mapping[str, Script],
        *,
        shutdown_timeout: float,
        drain_delay: float,
        max_steps: int | None,
        request_lags: Sequence[float | None],
        slips: Sequence[float],
    ) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.scripts = scripts
        self.request_lags = request_lags
        self.slips = slips
        self.slip_index = 0
        self.fed = -math.inf  # the latest time fed to the scheduler
        self.now = 0.0
        self.seq = itertools.count()
        self.events: list[_Event] = []
        self.calls: dict[tuple[str, Phase], _Call] = {}
        self.max_steps = max_steps if max_steps is not None else 50 * len(self.specs) + 1000
        self.scheduler = Scheduler(
            graph,
            self.specs.values(),
            shutdown_timeout=shutdown_timeout,
            drain_delay=drain_delay,
            on_component=self._on_component,
            on_app=self._on_app,
        )
        self.result = SimResult(self.scheduler, self.scheduler.infos)

    # -- observers ---------------------------------------------------------

    def _on_component(
        self, info: ComponentInfo, before: ComponentState, after: ComponentState, spent: float
    ) -> None:
        move = ComponentMove(next(self.seq), self.now, info.name, before, after, spent)
        self.result.component_moves.append(move)

    def _on_app(self, before: AppState, after: AppState, now: float) -> None:
        if now != self.now:
            raise SimulationError(f"app moved {before}->{after} at {now}, but it is {self.now}")
        self.result.app_moves.append(AppMove(next(self.seq), now, before, after))

    # -- the loop ----------------------------------------------------------

    def _time(self) -> float:
        """The time to feed the scheduler: now, or, at the instant already fed, maybe earlier."""
        fed, self.fed = self.fed, max(self.fed, self.now)
        if self.now == fed and self.slips:
            slip = self.slips[self.slip_index % len(self.slips)]
            self.slip_index += 1
            if slip > 0:
                self.result.slips += 1
                return self.now - slip
        return self.now

    def run(self, shutdown_at: Iterable[float]) -> SimResult:
        for index, when in enumerate(shutdown_at):
            self._push(when, "shutdown", "", None, index)
        self._apply(self.scheduler.begin(self._time()), "begin")
        sched = self.scheduler
        shutdown_deadline: float | None = None
        while True:
            self.result.steps += 1
            if self.result.steps > self.max_steps:
                raise SimulationError(
                    f"no end after {self.max_steps} steps at t={self.now}: "
                    f"state {sched.state}, active {sched.active()}"
                )
            if shutdown_deadline is None:
                shutdown_deadline = sched.shutdown_deadline
            elif sched.shutdown_deadline != shutdown_deadline:
                raise SimulationError(
                    f"the shutdown deadline moved from {shutdown_deadline} "
                    f"to {sched.shutdown_deadline} at t={self.now}"
                )
            deadline = sched.next_deadline()
            if self.events and (deadline is None or self.events[0].time <= deadline):
                self._deliver(heapq.heappop(self.events))
            elif deadline is not None:
                if deadline < self.now:
                    raise SimulationError(f"deadline {deadline} is before now={self.now}")
                self.now = deadline
                expired = (
                    sched.shutdown_deadline is not None and deadline >= sched.shutdown_deadline
                )
                if expired and not sched.done:
                    self.result.deadline_hit = True
                self._apply(sched.tick(self._time()), "tick")
            else:
                break
        if sched.done != (self.result.exit_code is not None):
            raise SimulationError("scheduler.done disagrees with the Finished action")
        return self.result

    def _push(
        self,
        when: float,
        kind: Literal["shutdown", "start", "run", "stop"],
        name: str,
        error: BaseException | None,
        token: int,
    ) -> None:
        heapq.heappush(self.events, _Event(when, next(self.seq), kind, name, error, token))

    def _answer(self, name: str, phase: Phase, when: float, error: BaseException | None) -> None:
        """Schedule the answer of a call in progress, replacing any pending one."""
        call = self.calls[name, phase]
        call.token += 1
        call.due = when
        if math.isfinite(when):
            self._push(when, phase, name, error, call.token)

    def _trace(self, name: str, phase: Phase, kind: Kind, detail: str = "") -> None:
        entry = TraceEntry(self.now, name, phase, kind, detail, next(self.seq))
        self.result.trace.append(entry)

    def _deliver(self, event: _Event) -> None:
        if event.time < self.now:
            raise SimulationError(f"event {event} is in the past (now={self.now})")
        self.now = event.time
        if event.kind == "shutdown":
            self._request(event.token)
            return
        phase: Phase = event.kind
        call = self.calls[event.name, phase]
        if event.token != call.token:
            return  # replaced by an earlier answer (a cancellation)
        error = event.error
        if call.state == "abandoned":
            self._trace(event.name, phase, "late", _describe(error))
            late = self._call_scheduler(phase, event.name, error)
            if late:
                raise SimulationError(f"late answer {event} changed something: {late}")
            return
        assert call.state == "active"
        call.state = "ended"
        self._trace(event.name, phase, "end" if error is None else "fail", _describe(error))
        self._apply(self._call_scheduler(phase, event.name, error), phase)

    def _request(self, index: int) -> None:
        """Deliver shutdown request ``index``, stamped with when it arrived (if it lags)."""
        sched, now = self.scheduler, self.now
        if self.result.requested_at is None:
            self.result.requested_at = now
        lag = self.request_lags[index] if index < len(self.request_lags) else None
        requested_at = None if lag is None else now - lag
        opened, done = sched.shutdown_deadline is None, sched.done
        actions = sched.request_shutdown(
            self._time(), "simulated request", requested_at=requested_at
        )
        if opened and sched.shutdown_deadline is not None:
            # Computed here, independently: the arrival, clamped to [begin, delivery].
            self.result.request_basis = (
                now if requested_at is None else min(max(requested_at, 0.0), now)
            )
            if sched.shutdown_deadline < now and not done:
                self.result.deadline_hit = True  # handled after its deadline had passed
        self._apply(actions, "shutdown")

    def _call_scheduler(self, phase: Phase, name: str, error: BaseException | None) -> list[Action]:
        sched, now = self.scheduler, self._time()
        if phase == "start":
            if error is None:
                return sched.start_finished(name, now)
            return sched.start_failed(name, now, error)
        if phase == "run":
            return sched.run_finished(name, now, error)
        return sched.stop_finished(name, now, error)

    # -- actions -----------------------------------------------------------

    def _apply(self, actions: list[Action], source: str) -> None:
        for action in actions:
            self.result.actions.append(ActionEntry(self.now, source, action, next(self.seq)))
            if self.result.exit_code is not None:
                raise SimulationError(f"{action} after Finished")
            self._apply_one(action)

    def _begin(self, name: str, phase: Phase) -> _Call:
        if name not in self.specs:
            raise SimulationError(f"{phase} of unknown component {name!r}")
        if (name, phase) in self.calls:
            raise SimulationError(f"{phase}() of {name!r} called twice (at {self.now})")
        spec = self.specs[name]
        has = {"start": spec.has_start, "run": spec.has_run, "stop": spec.has_stop}[phase]
        if not has:
            raise SimulationError(f"{phase}() of {name!r} called, but it has none")
        call = self.calls[name, phase] = _Call()
        self._trace(name, phase, "begin")
        return call

    def _active(self, name: str, phase: Phase, what: str) -> _Call:
        call = self.calls.get((name, phase))
        if call is None or call.state != "active":
            state = "never called" if call is None else call.state
            raise SimulationError(f"{what} for {phase}() of {name!r}, which is {state}")
        return call

    def _apply_one(self, action: Action) -> None:
        now = self.now
        match action:
            case StartComponent(name, deadline):
                self._begin(name, "start")
                spec, script = self.specs[name], self.scripts[name].start
                if deadline != now + spec.start_timeout:
                    raise SimulationError(f"start deadline of {name!r} is {deadline}")
                if script.outcome != "hangs":
                    boom = StartBoom(name) if script.outcome == "raises" else None
                    self._answer(name, "start", now + script.duration, boom)
            case RunComponent(name):
                self._begin(name, "run")
                run = self.scripts[name].run
                if run.ends != "cancelled":
                    crash = RunBoom(name) if run.ends == "raises" else None
                    self._answer(name, "run", now + run.at, crash)
            case StopComponent(name, deadline):
                self._begin(name, "stop")
                if deadline < now:
                    raise SimulationError(f"stop deadline of {name!r} is in the past")
                stop = self.scripts[name].stop
                if stop.outcome != "hangs":
                    self._answer(name, "stop", now + stop.duration, _stop_error(name, stop.outcome))
            case CancelStart(name, _):
                call = self._active(name, "start", "CancelStart")
                self._trace(name, "start", "cancel")
                start = self.scripts[name].start
                delay = start.cancel_delay
                if delay is not None and now + delay < call.due:
                    aborted: BaseException = {
                        "cancelled": Cancelled("simulated"),
                        "group": cancelled_group(),
                        "mixed": mixed_group(StartBoom(name)),
                    }[start.cancel_as]
                    self._answer(name, "start", now + delay, aborted)
            case CancelRun(name, _):
                call = self._active(name, "run", "CancelRun")
                self._trace(name, "run", "cancel")
                run = self.scripts[name].run
                if run.on_cancel != "hangs" and now + run.return_delay < call.due:
                    answer: BaseException | None = {
                        "returns": None,
                        "cancelled": Cancelled("simulated"),
                        "cancelled group": cancelled_group(),
                        "raises": RunBoom(name),
                        "mixed group": mixed_group(RunBoom(name)),
                    }[run.on_cancel]
                    self._answer(name, "run", now + run.return_delay, answer)
            case Abandon(name, phase, _):
                call = self._active(name, phase, "Abandon")
                call.state = "abandoned"
                self._trace(name, phase, "abandoned")
            case AppStarted():
                if self.result.started_at is not None:
                    raise SimulationError("AppStarted twice")
                self.result.started_at = now
            case Finished(code):
                self.result.exit_code = code
                self.result.finished_at = now


def _describe(error: BaseException | None) -> str:
    """The exception's type name, or a group's leaves' names joined by "+"."""
    if error is None:
        return ""
    if isinstance(error, BaseExceptionGroup):
        return "+".join(_describe(inner) for inner in error.exceptions)
    return type(error).__name__


def simulate(
    graph: Graph,
    specs: Iterable[NodeSpec],
    scripts: Mapping[str, Script],
    *,
    shutdown_timeout: float,
    drain_delay: float = 0.0,
    shutdown_at: Iterable[float] = (),
    request_lags: Sequence[float | None] = (),
    slips: Sequence[float] = (),
    max_steps: int | None = None,
) -> SimResult:
    """Run the app from t=0 until nothing more can happen; see the module docstring.

    ``shutdown_at``: times at which ``request_shutdown`` is called (the first
    one counts; at t=0 it comes after ``begin``). ``request_lags[i]``: how
    long before its delivery request ``i`` arrived (its ``requested_at``;
    negative: a stamp after the delivery; None or missing: no stamp).
    ``slips``: cycled through on every scheduler call made at the instant of
    the previous one; a positive slip feeds the time that much earlier.
    Raises `SimulationError` on a protocol violation or after ``max_steps``
    steps.
    """
    sim = _Simulation(
        graph,
        specs,
        scripts,
        shutdown_timeout=shutdown_timeout,
        drain_delay=drain_delay,
        max_steps=max_steps,
        request_lags=request_lags,
        slips=slips,
    )
    return sim.run(shutdown_at)
