"""The ordering and failure rules 1-7 of docs/explanation.md, asserted over random apps.

Every case is a random DAG of up to 60 components with random start, run and
stop behaviour (exception groups included), criticality, timeouts, drain
delay, shutdown moments and request stamps, and a clock that sometimes
slips back, simulated on a fake clock by `tests.sim`. The checks below
restate each rule from the outside — from the trace of calls, the actions
and the observed state moves — and never reuse the scheduler's own
bookkeeping to decide what should have happened. Rules 8 and 9 (readiness,
signal handlers) belong to the runners.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
from collections import defaultdict

import attrs
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from lifecycle._core.errors import DependencyFailed
from lifecycle._core.graph import Graph, analyze
from lifecycle._core.restart import RestartLimitReached, RestartPolicy
from lifecycle._core.scheduler import (
    Action,
    CancelRun,
    NodeSpec,
    RunComponent,
    Scheduler,
    StartComponent,
    StopComponent,
)
from lifecycle._core.states import AppState, ComponentState, ExitCode
from tests.fakes import LEGAL_APP_MOVES, LEGAL_COMPONENT_MOVES
from tests.sim import (
    AppMove,
    ComponentMove,
    RunScript,
    Script,
    SimResult,
    StartScript,
    StopScript,
    TraceEntry,
)
from tests.strategies import _BIASED_TRUE as BIASED_TRUE
from tests.strategies import _LIVES as LIVES
from tests.strategies import _MODE as MODE
from tests.strategies import (
    Case,
    RestartCase,
    RunLife,
    cases,
    clean_cases,
    declarations,
    one_fault_cases,
)

C = ComponentState
A = AppState


def leaves(detail: str) -> list[str]:
    """The exception names in a trace entry's detail (a group's leaves are joined by "+")."""
    return detail.split("+")


class View:
    """Derived facts about one simulation, for the checks."""

    def __init__(self, case: Case, result: SimResult) -> None:
        self.case = case
        self.r = result
        self.graph: Graph = analyze(case.declared)
        self.specs: dict[str, NodeSpec] = {s.name: s for s in case.specs}
        self.scripts: dict[str, Script] = dict(case.scripts)
        self.moves: dict[str, list[ComponentMove]] = defaultdict(list)
        for move in result.component_moves:
            self.moves[move.name].append(move)
        self.calls: dict[tuple[str, str], list[TraceEntry]] = defaultdict(list)
        for entry in result.trace:
            self.calls[entry.name, entry.phase].append(entry)
        # The shutdown deadline, and the moment it cut the shutdown: later than
        # the deadline only for a request handled after its deadline had passed.
        self.raw_deadline = result.scheduler.shutdown_deadline
        began = self.shutdown_began
        self.deadline = (
            None
            if self.raw_deadline is None or began is None
            else max(self.raw_deadline, began.time)
        )

    def moved_to(self, name: str, state: ComponentState) -> ComponentMove | None:
        return next((m for m in self.moves[name] if m.after is state), None)

    def app_moved_to(self, state: AppState) -> AppMove | None:
        return next((m for m in self.r.app_moves if m.after is state), None)

    def app_state_before(self, seq: int) -> AppState:
        state = A.NEW
        for move in self.r.app_moves:
            if move.seq > seq:
                break
            state = move.after
        return state

    @functools.cached_property
    def shutdown_began(self) -> AppMove | None:
        """The app move that began the shutdown (drain, abort or rollback)."""
        return next((m for m in self.r.app_moves if m.after in (A.DRAINING, A.STOPPING)), None)

    def started(self, name: str) -> bool:
        return self.moved_to(name, C.STARTING) is not None

    def entered(self, name: str) -> bool:
        return self.moved_to(name, C.RUNNING) is not None

    def entries(self, name: str, phase: str, *kinds: str) -> list[TraceEntry]:
        return [e for e in self.calls[name, phase] if e.kind in kinds]

    def stop_called_if_any(self, name: str) -> bool:
        """Its stop() was called, or it has none."""
        return not self.specs[name].has_stop or bool(self.entries(name, "stop", "begin"))

    def settled_at(self, name: str) -> float | None:
        """When nothing more could happen to a component that began starting."""
        info = self.r.infos[name]
        return info.stop_ended if self.entered(name) else info.start_ended

    @functools.cached_property
    def needed(self) -> dict[str, bool]:
        """Whether a component is critical or a critical one depends on it, directly or not."""
        needed: dict[str, bool] = {}
        for name in reversed(self.graph.order):  # dependents first
            users = self.graph.dependents[name]
            needed[name] = self.specs[name].critical or any(needed[u] for u in users)
        return needed

    def start_failure(self, name: str) -> TraceEntry | None:
        """Its start raised a real error, or overran its own start_timeout (not the shutdown's).

        At a tie the start's own timer fires first (it was armed first); a
        request handled after its deadline cuts the start at once instead.
        Only a shutdown that began before the abandonment can have cut it: a
        request stamped long before its delivery has a deadline that lies
        before a start abandoned earlier by its own timer, when no shutdown
        was known yet (time fed to the scheduler never runs backwards).
        """
        begins = self.entries(name, "start", "begin")
        began = self.shutdown_began
        for entry in self.entries(name, "start", "fail", "abandoned"):
            if entry.kind == "fail" and "StartBoom" in leaves(entry.detail):
                return entry
            own = begins[0].time + self.specs[name].start_timeout
            cut_first = (
                began is not None
                and began.seq < entry.seq
                and self.raw_deadline is not None
                and self.raw_deadline < entry.time
            )
            if entry.kind == "abandoned" and entry.time == own and not cut_first:
                return entry
        return None

    def excused(self, name: str) -> bool:
        """Its start failed, but nothing critical needs it: the app goes on without it."""
        return not self.needed[name] and self.start_failure(name) is not None

    @functools.cached_property
    def skipped(self) -> set[str]:
        """Components that depend, directly or not, on an excused start failure."""
        found: set[str] = set()
        queue = [name for name in self.graph.order if self.excused(name)]
        for name in queue:
            for user in self.graph.dependents[name]:
                if user not in found:
                    found.add(user)
                    queue.append(user)
        return found


# -- the checks, one per rule ------------------------------------------------


def check_ends(v: View) -> None:
    """The simulation ends; without a shutdown trigger the app just keeps running."""
    r = v.r
    if r.exit_code is None:
        assert r.requested_at is None, "a shutdown was requested but the app never finished"
        assert r.scheduler.state is A.RUNNING
        assert not r.scheduler.active() or all(p == "run" for _, p in r.scheduler.active())
    elif v.case.shutdown_at:
        assert r.finished_at is not None


def check_moves_are_legal(v: View) -> None:
    """Every observed transition is legal and chained; finals agree with the exit code."""
    for name in v.graph.order:
        state = C.NEW
        for move in v.moves[name]:
            assert move.before is state, f"{name}: move {move} does not follow {state}"
            assert (move.before, move.after) in LEGAL_COMPONENT_MOVES, f"{name}: {move}"
            state = move.after
        assert v.r.infos[name].state is state
    state_app = A.NEW
    for app_move in v.r.app_moves:
        assert app_move.before is state_app
        assert (app_move.before, app_move.after) in LEGAL_APP_MOVES, app_move
        state_app = app_move.after
    assert v.r.scheduler.state is state_app
    if v.r.exit_code is not None:
        expected = A.STOPPED if v.r.exit_code is ExitCode.OK else A.FAILED
        assert state_app is expected


def check_rule1_start_order(v: View) -> None:
    """Rule 1: a start begins once every dependency's start returned, and not later."""
    left_starting = next((m for m in v.r.app_moves if m.before is A.STARTING), None)
    for name in v.graph.order:
        deps = v.graph.depends_on[name]
        starting = v.moved_to(name, C.STARTING)
        begins = v.entries(name, "start", "begin")
        if starting is None:
            assert not begins
        else:
            if v.specs[name].has_start:
                assert [e.time for e in begins] == [starting.time]
            else:
                assert not begins
            for dep in deps:
                running = v.moved_to(dep, C.RUNNING)
                assert running is not None, f"{name} started before {dep} entered"
                assert running.seq < starting.seq
                if v.specs[dep].has_start:
                    ended = v.entries(dep, "start", "end")
                    assert ended
                    assert ended[0].time <= starting.time
        # Independent components start concurrently: as soon as allowed.
        if not deps:
            assert starting is not None, f"root {name} never started"
            assert starting.time == 0.0, f"root {name} not at t=0"
            continue
        entered = [v.moved_to(dep, C.RUNNING) for dep in deps]
        if any(m is None for m in entered):
            assert starting is None
            continue
        last = max((m for m in entered if m is not None), key=lambda m: m.seq)
        if left_starting is None or left_starting.seq > last.seq:
            assert starting is not None, f"{name} never started though its deps entered"
            assert starting.time == last.time, f"{name} started late"
        else:
            assert starting is None, f"{name} started after startup ended"


def check_rule2_stop_order(v: View) -> None:
    """Rule 2: a stop phase begins once every started dependent settled, and not later."""
    stopping = v.app_moved_to(A.STOPPING)
    for name in v.graph.order:
        info = v.r.infos[name]
        if info.stop_began is None:
            continue
        assert stopping is not None
        assert info.stop_began >= stopping.time
        running = v.moved_to(name, C.RUNNING)
        assert running is not None, f"{name} has a stop phase but never entered"
        waits = [stopping.time, running.time]
        for user in v.graph.dependents[name]:
            if not v.started(user):
                continue
            settled = v.settled_at(user)
            assert settled is not None, f"{name} stopped before its dependent {user} settled"
            assert settled <= info.stop_began, f"{name} stopped before {user} was done"
            waits.append(settled)
        assert info.stop_began == max(waits), f"{name}'s stop phase began late"


def check_rule3_stop_calls(v: View) -> None:
    """Rule 3: stop exactly once for what entered, never for the rest; run tokens."""
    r = v.r
    finished = r.exit_code is not None
    for name in v.graph.order:
        spec, info = v.specs[name], r.infos[name]
        stops = v.entries(name, "stop", "begin")
        runs = v.entries(name, "run", "begin")
        cancels = v.entries(name, "run", "cancel")
        assert len(stops) <= 1
        assert len(runs) <= 1
        assert len(cancels) <= 1
        assert info.stop_called == bool(stops)
        if not v.entered(name):
            # A failed or never-started component is never run, cancelled or stopped.
            assert not stops, f"{name} stopped though it never started"
            assert not runs, f"{name} run though it never started"
            assert info.stop_began is None, name
            continue
        if finished and r.finished_at != v.deadline:
            # Only the shutdown deadline excuses a missing stop phase or stop call.
            assert info.stop_began is not None, f"{name} entered but never stopped"
            assert len(stops) == int(spec.has_stop), f"{name}: stop called {len(stops)}x"
        if stops:
            assert info.stop_began is not None
            assert stops[0].time >= info.stop_began
            for run_entry in v.entries(name, "run", "end", "fail", "abandoned"):
                assert run_entry.seq < stops[0].seq or run_entry.kind == "late"
            if runs:
                assert v.entries(name, "run", "end", "fail", "abandoned"), (
                    f"{name}: stop called while run() still runs"
                )
        # run: once, at the moment it entered, unless the app was shutting down.
        running = v.moved_to(name, C.RUNNING)
        assert running is not None
        shutting = v.shutdown_began is not None and v.shutdown_began.seq < running.seq
        if spec.has_run and not shutting:
            assert [e.time for e in runs] == [running.time], f"{name}: run not started"
        else:
            assert not runs
        # The run token is cancelled exactly when its own stop phase begins.
        if cancels:
            assert cancels[0].time == info.stop_began, f"{name}: run cancelled early"
            # Trace entries are recorded after the scheduler call that emitted them,
            # which may also have finished the app.
            assert v.app_state_before(cancels[0].seq) in (A.STOPPING, A.STOPPED, A.FAILED)
        elif runs and info.stop_began is not None:
            ended = v.entries(name, "run", "end", "fail")
            assert ended, f"{name}: run never cancelled"
            assert ended[0].time <= info.stop_began, f"{name}: run never cancelled"


def assert_ends(outcome: list[TraceEntry], end: float, limit: float, name: str) -> None:
    """A call due to end at ``end`` with deadline ``limit`` ended then, or was abandoned.

    At ``end == limit`` either is right: a call begun or cancelled by a tick may
    be abandoned in that same tick, before the runner could answer.
    """
    got = [(e.time, e.kind == "abandoned") for e in outcome]
    if end < limit:
        assert got == [(end, False)], f"{name}: {outcome} instead of ending at {end}"
    elif end > limit:
        assert got == [(limit, True)], f"{name}: {outcome} instead of abandoned at {limit}"
    else:
        assert [time for time, _ in got] == [end], f"{name}: {outcome}"


def check_rule3_call_timing(v: View) -> None:
    """Each call ends as scripted, or is abandoned exactly at its deadline."""
    deadline = v.deadline if v.deadline is not None else math.inf
    for name in v.graph.order:
        spec, script = v.specs[name], v.scripts[name]
        begins = v.entries(name, "start", "begin")
        if begins:
            t = begins[0].time
            end = t + script.start.duration if script.start.outcome != "hangs" else math.inf
            for cancel in v.entries(name, "start", "cancel"):
                if script.start.cancel_delay is not None:
                    end = min(end, cancel.time + script.start.cancel_delay)
            limit = min(t + spec.start_timeout, deadline)
            outcome = v.entries(name, "start", "end", "fail", "abandoned")
            assert_ends(outcome, end, limit, name)
        info = v.r.infos[name]
        cancels = v.entries(name, "run", "cancel")
        if cancels:
            assert info.stop_began is not None
            phase_limit = min(info.stop_began + spec.stop_timeout, deadline)
            run_begin = v.entries(name, "run", "begin")[0].time
            run = script.run
            end = run_begin + run.at if run.ends != "cancelled" else math.inf
            if run.on_cancel != "hangs":
                end = min(end, cancels[0].time + run.return_delay)
            outcome = v.entries(name, "run", "end", "fail", "abandoned")
            assert_ends(outcome, end, phase_limit, name)
        stops = v.entries(name, "stop", "begin")
        if stops:
            t = stops[0].time
            stop_deadline = [
                e.action.deadline
                for e in v.r.actions
                if isinstance(e.action, StopComponent) and e.action.name == name
            ]
            # Rule 7: the stop token's deadline.
            assert stop_deadline == [min(t + spec.stop_timeout, v.raw_deadline or math.inf)], name
            end = t + script.stop.duration if script.stop.outcome != "hangs" else math.inf
            outcome = v.entries(name, "stop", "end", "fail", "abandoned")
            assert_ends(outcome, end, stop_deadline[0], name)


def check_no_calls_after_deadline(v: View) -> None:
    """Nothing begins at or after the shutdown deadline: no time is left for it."""
    if v.raw_deadline is None:
        return
    assert v.shutdown_began is not None
    for entry in v.r.actions:
        if entry.seq < v.shutdown_began.seq:
            continue
        if isinstance(entry.action, (StartComponent, RunComponent, StopComponent, CancelRun)):
            assert entry.time < v.raw_deadline, f"{entry} at the deadline {v.raw_deadline}"


def check_rule4_rollback(v: View) -> None:
    """Rule 4: a start failure of a component something critical needs aborts startup."""
    failures = sorted(
        (f for name in v.graph.order if v.needed[name] and (f := v.start_failure(name))),
        key=lambda entry: entry.seq,
    )
    if not failures:
        return
    first = failures[0]
    assert v.r.exit_code in (ExitCode.FAILED, ExitCode.TIMEOUT)
    if v.app_state_before(first.seq) is A.STARTING:
        assert v.r.started_at is None
        assert v.r.scheduler.startup_failure is not None
        assert v.r.scheduler.startup_failure[0] == first.name
        rollback = v.app_moved_to(A.STOPPING)
        assert rollback is not None
        assert rollback.time == first.time


def check_rule4_app_starts_without_excused(v: View) -> None:
    """Rule 4: the app starts once every component entered or is excused, and not before.

    An excused component is a non-critical one whose start failed while no
    critical component depends on it; its dependents never start.
    """
    resolved: list[ComponentMove] | None = []
    for name in v.graph.order:
        if name in v.skipped:
            continue
        move = v.moved_to(name, C.FAILED if v.excused(name) else C.RUNNING)
        if move is None or resolved is None:
            resolved = None
            continue
        resolved.append(move)
    began = v.shutdown_began
    if resolved is not None:
        last = max(resolved, key=lambda m: m.seq, default=None)
        if began is None or last is None or last.seq < began.seq:
            assert v.r.started_at == (0.0 if last is None else last.time)
            return
    assert v.r.started_at is None


def check_rule5_critical_run(v: View) -> None:
    """Rule 5: a critical run ending on its own shuts the app down at once."""
    for name in v.graph.order:
        if not v.specs[name].critical:
            continue
        cancels = v.entries(name, "run", "cancel")
        ended = v.entries(name, "run", "end", "fail")
        if not ended or (cancels and cancels[0].seq < ended[0].seq):
            continue
        end = ended[0]
        state = v.app_state_before(end.seq)
        following = [m for m in v.r.app_moves if m.seq > end.seq]
        if state is A.RUNNING:
            assert following
            assert following[0].after is A.DRAINING
            assert following[0].time == end.time, f"{name} ended but the app kept running"
        elif state is A.STARTING:
            assert following
            assert following[0].after is A.STOPPING
            assert following[0].time == end.time
            if end.kind == "fail":
                assert v.r.scheduler.startup_failure is not None
        if end.kind == "fail":
            assert v.r.exit_code in (ExitCode.FAILED, ExitCode.TIMEOUT, None)


def expected_exit_code(v: View) -> ExitCode:
    """The exit code, derived from the trace alone.

    FAILED: a start failure that something critical needs, a critical run
    crashing (or any run crashing once cancelled; a group of cancellations
    is no crash), any stop raising. TIMEOUT, which wins: something was
    abandoned, never stopped for lack of time, or a stop cut requests
    (DeadlineExceeded, alone or in a group; a plain TimeoutError is FAILED).
    """
    timeout = failed = False
    for name in v.graph.order:
        spec, info = v.specs[name], v.r.infos[name]
        failure = v.start_failure(name)
        if failure is not None and v.needed[name]:
            failed = True
        if any(e is not failure for e in v.entries(name, "start", "abandoned")):
            timeout = True  # cut by the shutdown deadline
        cancelled = bool(v.entries(name, "run", "cancel"))
        for entry in v.entries(name, "run", "fail"):
            if "RunBoom" in leaves(entry.detail) and (spec.critical or cancelled):
                failed = True
        for entry in v.entries(name, "stop", "fail"):
            failed = True
            if "DeadlineExceeded" in leaves(entry.detail):
                timeout = True
        if v.entries(name, "run", "abandoned") or v.entries(name, "stop", "abandoned"):
            timeout = True
        if v.entered(name) and (info.stop_began is None or not v.stop_called_if_any(name)):
            timeout = True  # the shutdown deadline passed before its stop (phase)
    if timeout:
        return ExitCode.TIMEOUT
    return ExitCode.FAILED if failed else ExitCode.OK


def check_exit_code(v: View) -> None:
    """Rules 4-6 and ExitCode: the code follows from what happened; TIMEOUT wins."""
    if v.r.exit_code is not None:
        assert v.r.exit_code is expected_exit_code(v)


def check_never_started(v: View) -> None:
    """A component never started is NEW; its error names the failed dependency, if one kept it."""
    for name in v.graph.order:
        info = v.r.infos[name]
        if v.started(name):
            continue
        assert info.state is C.NEW, name
        assert info.failed == (name in v.skipped), name
        if name not in v.skipped:
            assert info.error is None, name
            continue
        error = info.error
        assert isinstance(error, DependencyFailed), name
        assert error.component == name
        assert error.dependency in v.graph.depends_on[name]
        assert error.dependency in v.skipped or v.excused(error.dependency)
        assert v.excused(error.cause)
        assert error.cause in str(error)


def check_rule6_component_states(v: View) -> None:
    """Rule 6 and States: a component ends FAILED exactly when something of it failed."""
    if v.r.exit_code is None:
        return
    for name in v.graph.order:
        info = v.r.infos[name]
        if not v.started(name):
            continue  # check_never_started
        bad = (
            not v.entered(name)
            or info.stop_began is None
            or any("RunBoom" in leaves(e.detail) for e in v.entries(name, "run", "fail"))
            or bool(v.entries(name, "stop", "fail"))
            or bool(v.entries(name, "run", "abandoned") or v.entries(name, "stop", "abandoned"))
            or not v.stop_called_if_any(name)
        )
        assert info.state is (C.FAILED if bad else C.STOPPED), name
        assert (info.error is not None) == bad, name
        assert info.failed == bad, name


def check_timed_out(v: View) -> None:
    """``timed_out`` names the phase that overran; a plain TimeoutError from stop is none."""
    if v.r.exit_code is None:
        return
    for name in v.graph.order:
        info = v.r.infos[name]
        cut = any("DeadlineExceeded" in leaves(e.detail) for e in v.entries(name, "stop", "fail"))
        overran = bool(v.entries(name, "run", "abandoned") or v.entries(name, "stop", "abandoned"))
        never_stopped = info.stop_began is None or not v.stop_called_if_any(name)
        expected = None
        if v.entries(name, "start", "abandoned"):
            expected = "start"
        elif v.entered(name) and (cut or overran or never_stopped):
            expected = "stop"
        assert info.timed_out == expected, name


def check_time_runs_forward(v: View) -> None:
    """With a clock that slips back: no negative duration, no deadline earlier than due."""
    if v.r.slips:
        event("the clock slipped back")
    times = [
        time
        for _, time in sorted(
            [(m.seq, m.time) for m in v.r.component_moves]
            + [(m.seq, m.time) for m in v.r.app_moves]
        )
    ]
    assert times == sorted(times)
    assert all(m.spent >= 0 for m in v.r.component_moves)
    for info in v.r.infos.values():
        assert (info.start_duration or 0.0) >= 0, info.name
        assert (info.stop_duration or 0.0) >= 0, info.name
    for entry in v.r.actions:
        action = entry.action
        if isinstance(action, (StartComponent, StopComponent)):
            assert action.deadline >= entry.time, entry
        if isinstance(action, StopComponent):
            # No earlier than the deadline of the wait for run() that preceded it.
            info, spec = v.r.infos[action.name], v.specs[action.name]
            assert info.stop_began is not None
            assert v.raw_deadline is not None
            wait_deadline = min(info.stop_began + spec.stop_timeout, v.raw_deadline)
            assert action.deadline >= wait_deadline, entry


def check_rule7_bounds(v: View) -> None:
    """Rule 7: the shutdown, drain included, ends by request + shutdown_timeout.

    The request counts from when it arrived (its stamp, clamped between the
    begin and its delivery); a shutdown the app began itself, from then.
    """
    began = v.shutdown_began
    if began is None:
        assert v.raw_deadline is None
        return
    basis = began.time if v.r.request_basis is None else v.r.request_basis
    assert v.raw_deadline == basis + v.case.shutdown_timeout
    assert v.deadline is not None
    if v.r.finished_at is not None:
        assert v.r.finished_at <= v.deadline
    if v.r.deadline_hit:
        assert v.r.finished_at == v.deadline, "the shutdown deadline did not end the app"
    if began.after is A.DRAINING:
        stopping = v.app_moved_to(A.STOPPING)
        assert stopping is not None
        assert stopping.time == min(began.time + v.case.drain_delay, v.deadline)
        # Nothing stops and no run token is cancelled while draining.
        for entry in v.r.actions:
            if isinstance(entry.action, (StopComponent, CancelRun)):
                assert entry.time >= stopping.time


def note_coverage(v: View) -> None:
    """Name the rare paths a case took, for ``--hypothesis-show-statistics``."""
    if any(v.excused(name) for name in v.graph.order):
        event("a non-critical start failure was excused")
    if any(v.needed[n] and not v.specs[n].critical and v.start_failure(n) for n in v.graph.order):
        event("a non-critical start failure failed the startup")
    if v.deadline is not None and v.raw_deadline is not None and v.deadline > v.raw_deadline:
        event("a request was handled after its deadline")
    details = {e.detail for e in v.r.trace if e.kind == "fail"}
    if any("+" in d and "RunBoom" not in d and "StartBoom" not in d for d in details):
        event("a call ended in a group of cancellations")
    if any("DeadlineExceeded" in leaves(d) for d in details):
        event("a stop cut requests")


def check_all(case: Case) -> SimResult:
    """Simulate ``case`` and assert every rule over it."""
    v = View(case, case.run())
    note_coverage(v)
    check_ends(v)
    check_moves_are_legal(v)
    check_rule1_start_order(v)
    check_rule2_stop_order(v)
    check_rule3_stop_calls(v)
    check_rule3_call_timing(v)
    check_no_calls_after_deadline(v)
    check_rule4_rollback(v)
    check_rule4_app_starts_without_excused(v)
    check_rule5_critical_run(v)
    check_exit_code(v)
    check_never_started(v)
    check_rule6_component_states(v)
    check_timed_out(v)
    check_time_runs_forward(v)
    check_rule7_bounds(v)
    return v.r


# -- corner cases found along the way -------------------------------------------


def _spec(name: str, **kw: object) -> NodeSpec:
    fields: dict[str, object] = {"start_timeout": 10.0, "stop_timeout": 10.0}
    fields.update(kw)
    return NodeSpec(name, **fields)  # type: ignore[arg-type]


# A root without start() enters inside begin() and made its dependent start twice.
NO_START_ROOT = Case(
    {"a": (), "b": ("a",)},
    (_spec("a", has_start=False), _spec("b")),
    {"a": Script(), "b": Script()},
    shutdown_timeout=30.0,
    shutdown_at=(5.0,),
)
# The shutdown deadline abandoned b's start and so began a's stop, at the deadline.
START_CUT_BY_DEADLINE = Case(
    {"a": (), "b": ("a",)},
    (_spec("a"), _spec("b", start_timeout=100.0)),
    {"a": Script(), "b": Script(start=StartScript(outcome="hangs"))},
    shutdown_timeout=3.0,
    shutdown_at=(1.0,),
)
# run() ignores its cancelled token past stop_timeout: stop() must still be called.
RUN_OVERRUNS_STOP_TIMEOUT = Case(
    {"w": ()},
    (_spec("w", has_run=True, stop_timeout=2.0),),
    {"w": Script(run=RunScript(on_cancel="hangs"), stop=StopScript(duration=1.0))},
    shutdown_timeout=30.0,
    shutdown_at=(1.0,),
)
# run() took 3 of the 5s stop_timeout: stop() still gets 5s (rule 7), not 2.
SLOW_RUN_THEN_STOP = Case(
    {"w": ()},
    (_spec("w", has_run=True, stop_timeout=5.0),),
    {"w": Script(run=RunScript(return_delay=3.0), stop=StopScript(duration=4.0))},
    shutdown_timeout=30.0,
    shutdown_at=(1.0,),
)
# Nothing to stop and a drain as long as the shutdown_timeout: OK, not TIMEOUT.
EMPTY_APP_LONG_DRAIN = Case({}, (), {}, shutdown_timeout=5.0, drain_delay=5.0, shutdown_at=(1.0,))
# A stop with stop_timeout 0, begun by a tick: abandoned in that same tick.
ZERO_STOP_TIMEOUT_FROM_TICK = Case(
    {"a": (), "b": ("a",)},
    (_spec("a", stop_timeout=0.0), _spec("b", stop_timeout=1.0)),
    {"a": Script(), "b": Script(stop=StopScript(outcome="hangs"))},
    shutdown_timeout=30.0,
    shutdown_at=(1.0,),
)
# run() returns exactly at the shutdown deadline: no time is left to call stop().
RUN_RETURNS_AT_DEADLINE = Case(
    {"w": ()},
    (_spec("w", has_run=True, stop_timeout=50.0),),
    {"w": Script(run=RunScript(return_delay=19.0))},
    shutdown_timeout=19.0,
    shutdown_at=(60.0,),
)
# A non-critical run() raising while running shows in the report only.
NON_CRITICAL_RUN_RAISES = Case(
    {"w": ()},
    (_spec("w", has_run=True, critical=False),),
    {"w": Script(run=RunScript(ends="raises", at=5.0))},
    shutdown_timeout=30.0,
    shutdown_at=(10.0,),
)
# A critical run() returning during startup aborts it (exit OK); nothing else starts.
CRITICAL_RUN_RETURNS_DURING_STARTUP = Case(
    {"w": (), "slow": (), "late": ("slow",)},
    (_spec("w", has_run=True), _spec("slow"), _spec("late")),
    {
        "w": Script(run=RunScript(ends="returns", at=1.0)),
        "slow": Script(start=StartScript(duration=5.0)),
        "late": Script(),
    },
    shutdown_timeout=30.0,
)


# A non-critical start fails; its non-critical dependent never starts; the app runs.
NON_CRITICAL_START_FAILS = Case(
    {"db": (), "cache": (), "warm": ("cache",)},
    (_spec("db"), _spec("cache", critical=False), _spec("warm", critical=False)),
    {"db": Script(), "cache": Script(start=StartScript(outcome="raises")), "warm": Script()},
    shutdown_timeout=30.0,
    shutdown_at=(5.0,),
)
# A non-critical start fails, and a critical component needs it through another: rollback.
NON_CRITICAL_NEEDED_THROUGH_ANOTHER = Case(
    {"cache": (), "mid": ("cache",), "api": ("mid",), "db": ()},
    (_spec("cache", critical=False), _spec("mid", critical=False), _spec("api"), _spec("db")),
    {
        "cache": Script(start=StartScript(duration=2.0, outcome="raises")),
        "mid": Script(),
        "api": Script(),
        "db": Script(start=StartScript(duration=1.0)),
    },
    shutdown_timeout=30.0,
)
# A non-critical start overruns its start_timeout: abandoned, the app runs, exit OK.
NON_CRITICAL_START_OVERRUNS = Case(
    {"slow": (), "db": ()},
    (_spec("slow", critical=False, start_timeout=3.0), _spec("db")),
    {"slow": Script(start=StartScript(outcome="hangs")), "db": Script()},
    shutdown_timeout=30.0,
    shutdown_at=(5.0,),
)
# Runs end in task groups: all cancellations (clean) and mixed with a crash (FAILED).
RUNS_END_IN_GROUPS = Case(
    {"clean": (), "mixed": ()},
    (_spec("clean", has_run=True), _spec("mixed", has_run=True, critical=False)),
    {
        "clean": Script(run=RunScript(on_cancel="cancelled group")),
        "mixed": Script(run=RunScript(on_cancel="mixed group")),
    },
    shutdown_timeout=30.0,
    shutdown_at=(1.0,),
)
# A start aborted by the shutdown ends in a group of cancellations: no failure.
ABORTED_START_ENDS_IN_A_GROUP = Case(
    {"db": ()},
    (_spec("db"),),
    {"db": Script(start=StartScript(duration=9.0, cancel_delay=1.0, cancel_as="group"))},
    shutdown_timeout=30.0,
    shutdown_at=(2.0,),
)
# A plain TimeoutError from stop is FAILED; a cut in a group is TIMEOUT, which wins.
STOPS_TIME_OUT_AND_CUT = Case(
    {"redis": (), "api": ()},
    (_spec("redis"), _spec("api")),
    {
        "redis": Script(stop=StopScript(outcome="times out")),
        "api": Script(stop=StopScript(duration=2.0, outcome="cut group")),
    },
    shutdown_timeout=30.0,
    shutdown_at=(1.0,),
)
# The request is handled long after it arrived: past its deadline, all is cut at once.
REQUEST_HANDLED_AFTER_ITS_DEADLINE = Case(
    {"db": (), "w": ("db",)},
    (_spec("db"), _spec("w", has_run=True)),
    {"db": Script(), "w": Script()},
    shutdown_timeout=5.0,
    shutdown_at=(20.0,),
    request_lags=(10.0,),
)
# The clock slips back at repeated instants: every decision keeps the latest time.
CLOCK_SLIPS_BACK = Case(
    {"db": (), "api": ("db",), "w": ("db",)},
    (_spec("db"), _spec("api"), _spec("w", has_run=True)),
    {"db": Script(), "api": Script(start=StartScript(duration=2.0)), "w": Script()},
    shutdown_timeout=30.0,
    drain_delay=1.0,
    shutdown_at=(2.0, 2.0),
    request_lags=(None, 1.0),
    slips=(1000.0, 1.0, 3.0),
)

# A non-critical start overran its own start_timeout at 21 and the app started;
# at 57 came a request stamped before the begin, so its deadline is 0, before
# that abandonment. No shutdown existed at 21: the start failed on its own, the
# app had started, and the late request cuts what is left at once (TIMEOUT).
START_TIMED_OUT_BEFORE_A_BACKDATED_REQUEST = Case(
    {"c0": (), "c1": ()},
    (
        _spec("c0", critical=False, has_run=True, start_timeout=21.0, stop_timeout=41.0),
        _spec("c1", critical=False, has_start=False, has_stop=False),
    ),
    {"c0": Script(start=StartScript(outcome="hangs")), "c1": Script()},
    shutdown_timeout=0.0,
    shutdown_at=(57.0,),
    request_lags=(100.0,),
)
# The same request delivered at 21, the instant the start's own timer is due:
# events come first, so the shutdown (deadline already past) cuts the start,
# which is no start failure, and the app never starts.
START_CUT_AT_ITS_TIMEOUT_BY_A_BACKDATED_REQUEST = attrs.evolve(
    START_TIMED_OUT_BEFORE_A_BACKDATED_REQUEST, shutdown_at=(21.0,)
)


# The random-case tests run hundreds of whole simulations. Passing, on a
# 2-core machine, 300 small apps take 2.7-9.4 s, 200 clean cases 11-25 s,
# 300 single faults 8-19 s, and 500 apps of up to 60 components 36-99 s, the
# higher figures under load. Shrinking a failure replays many more; under the
# global 60 s timeout it would end as a bare Timeout that hides the falsifying
# example, so these tests get 180 s.
SIMULATION_BOUND = pytest.mark.timeout(180)


@SIMULATION_BOUND
@settings(max_examples=500, deadline=None)
@given(cases())
@example(NO_START_ROOT)
@example(START_CUT_BY_DEADLINE)
@example(RUN_OVERRUNS_STOP_TIMEOUT)
@example(SLOW_RUN_THEN_STOP)
@example(EMPTY_APP_LONG_DRAIN)
@example(ZERO_STOP_TIMEOUT_FROM_TICK)
@example(RUN_RETURNS_AT_DEADLINE)
@example(NON_CRITICAL_RUN_RAISES)
@example(CRITICAL_RUN_RETURNS_DURING_STARTUP)
@example(NON_CRITICAL_START_FAILS)
@example(NON_CRITICAL_NEEDED_THROUGH_ANOTHER)
@example(NON_CRITICAL_START_OVERRUNS)
@example(RUNS_END_IN_GROUPS)
@example(ABORTED_START_ENDS_IN_A_GROUP)
@example(STOPS_TIME_OUT_AND_CUT)
@example(REQUEST_HANDLED_AFTER_ITS_DEADLINE)
@example(CLOCK_SLIPS_BACK)
@example(START_TIMED_OUT_BEFORE_A_BACKDATED_REQUEST)
@example(START_CUT_AT_ITS_TIMEOUT_BY_A_BACKDATED_REQUEST)
def test_rules_hold_for_any_app(case: Case) -> None:
    """Rules 1-7, the exit code and the state moves hold for any graph and behaviour."""
    check_all(case)


@SIMULATION_BOUND
@settings(max_examples=300, deadline=None)
@given(cases(max_nodes=8, dense=True))
@example(START_TIMED_OUT_BEFORE_A_BACKDATED_REQUEST)
@example(START_CUT_AT_ITS_TIMEOUT_BY_A_BACKDATED_REQUEST)
def test_rules_hold_when_small_apps_fail_everywhere(case: Case) -> None:
    """The rules hold when most components of a small app misbehave at once."""
    check_all(case)


def test_a_start_timed_out_before_a_backdated_request_is_excused() -> None:
    """A request stamped before a start timed out did not cut that start: the app had started."""
    case = START_TIMED_OUT_BEFORE_A_BACKDATED_REQUEST
    v = View(case, case.run())
    assert (v.r.started_at, v.r.request_basis, v.raw_deadline) == (21.0, 0.0, 0.0)
    assert v.r.deadline_hit
    assert v.start_failure("c0") is not None
    assert v.excused("c0")
    check_rule4_app_starts_without_excused(v)
    assert v.r.exit_code is ExitCode.TIMEOUT
    check_exit_code(v)


def test_a_start_cut_at_its_timeout_by_a_backdated_request_is_no_start_failure() -> None:
    """Delivered at the instant the start times out, a past-deadline request cuts it first."""
    case = START_CUT_AT_ITS_TIMEOUT_BY_A_BACKDATED_REQUEST
    v = View(case, case.run())
    assert v.r.started_at is None
    assert [(e.time, e.kind) for e in v.r.trace] == [
        (0.0, "begin"),
        (21.0, "cancel"),
        (21.0, "abandoned"),
    ]
    assert v.start_failure("c0") is None
    check_rule4_app_starts_without_excused(v)
    assert v.r.exit_code is ExitCode.TIMEOUT
    check_exit_code(v)


@SIMULATION_BOUND
@settings(max_examples=300, deadline=None)
@given(one_fault_cases())
def test_rules_hold_with_a_single_fault(case: Case) -> None:
    """One fault of each kind, alone, gets exactly the exit code and states it deserves."""
    check_all(case)


def _critical_path(graph: Graph, weight: dict[str, float]) -> float:
    """Longest chain of ``weight`` from a component nobody depends on down to a root."""
    memo: dict[str, float] = {}
    for name in reversed(graph.order):  # dependents before their dependencies
        memo[name] = weight[name] + max(
            (memo[user] for user in graph.dependents[name]), default=0.0
        )
    return max(memo.values(), default=0.0)


def _start_path(graph: Graph, weight: dict[str, float]) -> float:
    memo: dict[str, float] = {}
    for name in graph.order:
        memo[name] = weight[name] + max((memo[d] for d in graph.depends_on[name]), default=0.0)
    return max(memo.values(), default=0.0)


@SIMULATION_BOUND
@settings(max_examples=200, deadline=None)
@given(clean_cases())
def test_clean_shutdown_takes_drain_plus_critical_path(case: Case) -> None:
    """Without failures, shutdown takes drain + the critical path of stop phases, not the sum."""
    result = check_all(case)
    graph = analyze(case.declared)
    specs = {s.name: s for s in case.specs}
    start_w = {
        n: case.scripts[n].start.duration if specs[n].has_start else 0.0 for n in graph.order
    }
    stop_w = {
        n: (case.scripts[n].run.return_delay if specs[n].has_run else 0.0)
        + (case.scripts[n].stop.duration if specs[n].has_stop else 0.0)
        for n in graph.order
    }
    assert result.exit_code is ExitCode.OK
    assert result.started_at == _start_path(graph, start_w)
    assert result.requested_at is not None
    assert result.finished_at is not None
    shutdown = result.finished_at - result.requested_at
    assert shutdown == case.drain_delay + _critical_path(graph, stop_w)
    assert all(info.state is C.STOPPED for info in result.infos.values())


# -- restarts -------------------------------------------------------------------------


@st.composite
def valid_restart_policies(draw: st.DrawFn) -> RestartPolicy:
    """Any policy `RestartPolicy` accepts; whole-number times, the jitter 0 or up to a half.

    Drawn numbers whose crash loop could not reach the limit (refused at
    construction) get the smallest whole ``within`` that makes them valid.
    """
    mode = draw(MODE)
    r = draw(st.integers(0, 4))
    backoff = float(draw(st.integers(0, 6)))
    backoff_max = draw(st.none() | st.integers(0, 20).map(lambda b: float(b) + backoff))
    jitter = draw(st.sampled_from([0.0, 0.0, 0.25, 0.5]))
    within = float(draw(st.integers(1, 40)))
    if mode != "never":
        longest = backoff if backoff_max is None else backoff_max  # the default is <= or backoff
        if backoff_max is not None or backoff * 2 * r > within:
            within = max(within, math.floor(r * longest * (1 + jitter)) + 1.0)
    reset_after = draw(st.none() | st.integers(1, 40).map(float))
    return RestartPolicy(
        mode,  # type: ignore[arg-type]
        max_restarts=r,
        within=within,
        backoff=backoff,
        jitter=jitter,
        reset_after=reset_after,
        **({} if backoff_max is None else {"backoff_max": backoff_max}),
    )


@st.composite
def restart_cases(draw: st.DrawFn, max_nodes: int = 6) -> RestartCase:
    """Small random graphs; most components run, under random policies and crash schedules."""
    declared = draw(declarations(max_nodes))
    specs, lives = [], {}
    for name in declared:
        has_run = draw(st.sampled_from([True, True, True, False]))
        specs.append(
            NodeSpec(
                name,
                start_timeout=100.0,
                stop_timeout=100.0,
                critical=draw(st.booleans()),
                has_start=draw(st.booleans()),
                has_run=has_run,
                has_stop=draw(BIASED_TRUE),
                restart=draw(valid_restart_policies()) if has_run else RestartPolicy(),
            )
        )
        lives[name] = tuple(draw(LIVES)) if has_run else ()
    return RestartCase(
        declared,
        tuple(specs),
        lives,
        shutdown_at=draw(st.none() | st.integers(0, 120).map(float)),
        shutdown_timeout=10_000.0,
        drain_delay=float(draw(st.integers(0, 10))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


# A restart policy adds RESTARTING (run ended, the next run pending) to the drawn moves.
RESTART_MOVES = {
    (C.RUNNING, C.RESTARTING),
    (C.RESTARTING, C.RUNNING),
    (C.RESTARTING, C.STOPPING),
    (C.RESTARTING, C.FAILED),
}


@attrs.define
class RestartRun:
    """What happened when a `RestartCase` was driven: actions, moves and run ends, in order."""

    scheduler: Scheduler
    actions: list[tuple[int, float, Action]] = attrs.Factory(list)
    moves: list[tuple[int, float, str, ComponentState, ComponentState]] = attrs.Factory(list)
    app_moves: list[tuple[int, float, AppState]] = attrs.Factory(list)
    run_ends: list[tuple[int, float, str, bool]] = attrs.Factory(list)  # seq, now, name, raised


def drive_restarts(case: RestartCase) -> RestartRun:
    """Drive the scheduler through ``case`` on a fake clock; starts and stops take 1 s.

    A run ends on its own as its `RunLife` says (in order), else when its
    token is cancelled (at once). The shutdown comes at ``shutdown_at``.
    """
    seq = itertools.count()
    clock = [0.0]
    out = RestartRun(None)  # type: ignore[arg-type]
    sched = Scheduler(
        analyze(case.declared),
        case.specs,
        shutdown_timeout=case.shutdown_timeout,
        drain_delay=case.drain_delay,
        rng=random.Random(case.seed),
        on_component=lambda info, before, after, _s: out.moves.append(
            (next(seq), clock[0], info.name, before, after)
        ),
        on_app=lambda _before, after, now: out.app_moves.append((next(seq), now, after)),
    )
    out.scheduler = sched
    events: list[tuple[float, int, str, str, int, bool]] = []  # when, seq, kind, name, epoch
    used: dict[str, int] = defaultdict(int)
    epoch: dict[str, int] = defaultdict(int)

    def carry(actions: list[Action]) -> None:
        now = clock[0]
        for action in actions:
            out.actions.append((next(seq), now, action))
            if isinstance(action, StartComponent):
                heapq.heappush(events, (now + 1, next(seq), "start", action.name, 0, False))
            elif isinstance(action, StopComponent):
                heapq.heappush(events, (now + 1, next(seq), "stop", action.name, 0, False))
            elif isinstance(action, RunComponent):
                name = action.name
                epoch[name] += 1
                k, lives = used[name], case.lives[name]
                used[name] += 1
                if k < len(lives):
                    life = lives[k]
                    item = (now + life.duration, next(seq), "run", name, epoch[name], life.raises)
                    heapq.heappush(events, item)
            elif isinstance(action, CancelRun):
                epoch[action.name] += 1
                heapq.heappush(events, (now, next(seq), "cancelled", action.name, 0, False))

    carry(sched.begin(0.0))
    requested = case.shutdown_at is None
    for _ in range(100_000):
        if sched.done:
            break
        times = [t for t in (sched.next_deadline(),) if t is not None]
        if events:
            times.append(events[0][0])
        if not requested:
            assert case.shutdown_at is not None
            times.append(case.shutdown_at)
        if not times:
            break
        clock[0] = now = max(clock[0], min(times))
        if not requested and case.shutdown_at is not None and case.shutdown_at <= now:
            requested = True
            carry(sched.request_shutdown(now, "test"))
        elif events and events[0][0] <= now:
            _, _, kind, name, at_epoch, raises = heapq.heappop(events)
            if kind == "start":
                carry(sched.start_finished(name, now))
            elif kind == "stop":
                carry(sched.stop_finished(name, now))
            elif kind == "cancelled":
                out.run_ends.append((next(seq), now, name, False))
                carry(sched.run_finished(name, now))
            elif at_epoch == epoch[name]:  # a run ending on its own, not cancelled before
                out.run_ends.append((next(seq), now, name, raises))
                carry(sched.run_finished(name, now, RuntimeError("crash") if raises else None))
        else:
            carry(sched.tick(now))
    else:
        raise AssertionError("the simulation did not settle")
    return out


def check_restarts(case: RestartCase, out: RestartRun) -> None:
    """The restart invariants, and rule 3 and the exit code with restarts in play."""
    sched = out.scheduler
    specs = {s.name: s for s in case.specs}
    began = [(s, t) for s, t, after in out.app_moves if after in (A.DRAINING, A.STOPPING)]
    shutdown_seq = began[0][0] if began else math.inf
    state = dict.fromkeys(specs, C.NEW)
    for _, _, name, before, after in out.moves:
        assert state[name] is before, name
        assert (before, after) in LEGAL_COMPONENT_MOVES | RESTART_MOVES, (name, before, after)
        state[name] = after
    for name, spec in specs.items():
        info, policy = sched.infos[name], spec.restart
        runs = [(s, t) for s, t, a in out.actions if isinstance(a, RunComponent) and a.name == name]
        restarts = [t for _, t in runs[1:]]
        # No restart once the shutdown began.
        assert all(s < shutdown_seq for s, _ in runs[1:]), name
        # The intensity limit, counted at the exits as OTP does: any R + 1
        # granted restarts' exits span more than T, and each grant had fewer
        # than R others in the T seconds before it.
        r = policy.max_restarts
        granted = [
            t
            for s, t, n, _b, after in out.moves
            if n == name and after is C.RESTARTING and s < shutdown_seq
        ]
        for i in range(len(granted) - r):
            assert granted[i + r] - granted[i] > policy.within, (name, granted)
        for i, t in enumerate(granted):
            assert sum(1 for u in granted[:i] if u >= t - policy.within) < r, (name, granted)
        assert len(granted) == info.restarts, name
        assert len(restarts) <= info.restarts <= len(restarts) + 1, name
        if policy.mode == "never":
            assert restarts == [], name
        ends = [(t, raised) for _, t, n, raised in out.run_ends if n == name]
        if policy.mode == "on-failure":
            # Every restart follows a run that raised.
            for t in restarts:
                assert any(raised for te, raised in ends if te <= t), name
        if isinstance(info.error, RestartLimitReached):
            # Exact: it gave up only with R restarts already inside the window.
            gave_up = next(t for _, t, n, _b, after in out.moves if n == name and after is C.FAILED)
            recent = [t for t in granted if gave_up - policy.within <= t <= gave_up]
            assert len(recent) == r, (name, granted, gave_up)
            assert policy.mode != "never"
    if sched.done:
        for name, spec in specs.items():
            info = sched.infos[name]
            entered = any(n == name and after is C.RUNNING for *_, n, _b, after in out.moves)
            assert info.state in ((C.STOPPED, C.FAILED) if entered else (C.NEW,)), name
            stops = [
                a for _, _, a in out.actions if isinstance(a, StopComponent) and a.name == name
            ]
            # Rule 3: one stop() per component that entered (the deadline is far away here).
            owed = entered and spec.has_stop
            assert len(stops) == (1 if owed else 0), name
            assert info.stop_called == owed, name
        critical_failed = any(
            sched.infos[n].state is C.FAILED for n, s in specs.items() if s.critical
        )
        assert sched.exit_code is (ExitCode.FAILED if critical_failed else ExitCode.OK)
    elif case.shutdown_at is not None:
        raise AssertionError("a requested shutdown did not finish")
    else:
        # Nothing ends the app: nobody is left RESTARTING without a timer.
        for name in specs:
            assert sched.infos[name].state is not C.RESTARTING or sched.next_deadline() is not None


# A crash every 1 s under "at most 2 in 10 s": the third crash gives up.
CRASH_LOOP = RestartCase(
    {"w": ()},
    (
        NodeSpec(
            "w",
            10.0,
            10.0,
            has_run=True,
            restart=RestartPolicy("on-failure", max_restarts=2, within=10.0, jitter=0.0),
        ),
    ),
    {"w": tuple(RunLife(1.0, raises=True) for _ in range(5))},
    shutdown_at=None,
    shutdown_timeout=100.0,
    drain_delay=0.0,
    seed=0,
)
# Exits at 0 and 4 (runs of 0 s and 2 s, backoffs 2 s and 4 s): two restarts
# asked for within 5 s, so the second exit gives up. Counted at exit + delay
# (2 and 8), the second would have been granted.
EXITS_COUNTED = RestartCase(
    {"w": ()},
    (
        NodeSpec(
            "w",
            10.0,
            10.0,
            has_run=True,
            has_start=False,
            restart=RestartPolicy(
                "on-failure", max_restarts=1, within=5.0, backoff=2.0, backoff_max=4.0, jitter=0
            ),
        ),
    ),
    {"w": (RunLife(0.0, raises=True), RunLife(2.0, raises=True), RunLife(0.0, raises=True))},
    shutdown_at=None,
    shutdown_timeout=100.0,
    drain_delay=0.0,
    seed=0,
)

# The shutdown arrives during a 5 s backoff: no restart, stop() still called.
SHUTDOWN_IN_BACKOFF = RestartCase(
    {"w": ()},
    (
        NodeSpec(
            "w",
            10.0,
            10.0,
            has_run=True,
            restart=RestartPolicy("always", within=20.0, backoff=5.0, jitter=0),
        ),
    ),
    {"w": (RunLife(1.0, raises=False),)},
    shutdown_at=4.0,
    shutdown_timeout=100.0,
    drain_delay=0.0,
    seed=0,
)


@settings(max_examples=150, deadline=None)
@given(restart_cases())
@example(CRASH_LOOP)
@example(EXITS_COUNTED)
@example(SHUTDOWN_IN_BACKOFF)
def test_restart_rules_hold_for_any_crash_schedule(case: RestartCase) -> None:
    """At most R restarts in any T, none after the shutdown began, one stop each, exact exit."""
    out = drive_restarts(case)
    check_restarts(case, out)
    if any(sched_info.restarts for sched_info in out.scheduler.infos.values()):
        event("a component was restarted")
    if any(isinstance(i.error, RestartLimitReached) for i in out.scheduler.infos.values()):
        event("a component gave up restarting")
    if any(before is C.RESTARTING and after is C.STOPPING for *_, before, after in out.moves):
        event("a shutdown ended a backoff")


def test_crash_loop_gives_up_at_the_third_crash() -> None:
    """The named crash loop: two restarts, then FAILED and exit FAILED."""
    out = drive_restarts(CRASH_LOOP)
    info = out.scheduler.infos["w"]
    assert (info.restarts, info.state, out.scheduler.exit_code) == (2, C.FAILED, ExitCode.FAILED)


def test_the_intensity_is_counted_at_the_exits() -> None:
    """Two exits 4 s apart under 1 in 5 s: the second gives up, however long the backoffs."""
    out = drive_restarts(EXITS_COUNTED)
    check_restarts(EXITS_COUNTED, out)
    info = out.scheduler.infos["w"]
    assert (info.restarts, info.state) == (1, C.FAILED)
    assert isinstance(info.error, RestartLimitReached)
