"""DESIGN.md's ordering and failure rules 1-7, asserted over random apps.

Every case is a random DAG of up to 60 components with random start, run and
stop behaviour, timeouts, drain delay and shutdown moments, simulated on a
fake clock by `tests.sim`. The checks below restate each rule from the
outside — from the trace of calls, the actions and the observed state moves —
and never reuse the scheduler's own bookkeeping to decide what should have
happened. Rules 8 and 9 (readiness, signal handlers) belong to the runners.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict

from hypothesis import example, given, settings

from lifecycle._core.graph import Graph, analyze
from lifecycle._core.scheduler import (
    CancelRun,
    NodeSpec,
    RunComponent,
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
from tests.strategies import Case, cases, clean_cases, one_fault_cases

C = ComponentState
A = AppState



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
        self.deadline = result.scheduler.shutdown_deadline

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
            assert stop_deadline == [min(t + spec.stop_timeout, deadline)], name
            end = t + script.stop.duration if script.stop.outcome != "hangs" else math.inf
            outcome = v.entries(name, "stop", "end", "fail", "abandoned")
            assert_ends(outcome, end, stop_deadline[0], name)


def check_no_calls_after_deadline(v: View) -> None:
    """Nothing begins at or after the shutdown deadline: no time is left for it."""
    if v.deadline is None:
        return
    assert v.shutdown_began is not None
    for entry in v.r.actions:
        if entry.seq < v.shutdown_began.seq:
            continue
        if isinstance(entry.action, (StartComponent, RunComponent, StopComponent, CancelRun)):
            assert entry.time < v.deadline, f"{entry} at the shutdown deadline {v.deadline}"


def check_rule4_rollback(v: View) -> None:
    """Rule 4: a failing or timed-out start aborts startup; the app never runs."""
    failures = []
    for name in v.graph.order:
        spec = v.specs[name]
        for entry in v.entries(name, "start", "fail", "abandoned"):
            begin = v.entries(name, "start", "begin")[0].time
            own_timeout = entry.kind == "abandoned" and entry.time == begin + spec.start_timeout
            if entry.detail == "StartBoom" or own_timeout:
                failures.append(entry)
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
    """The exit code, derived from the trace alone (DESIGN.md ExitCode)."""
    timeout = failed = False
    for name in v.graph.order:
        spec, info = v.specs[name], v.r.infos[name]
        start_begin = v.entries(name, "start", "begin")
        for entry in v.entries(name, "start", "fail", "abandoned"):
            if entry.detail == "StartBoom":
                failed = True
            elif entry.kind == "abandoned":
                if entry.time == start_begin[0].time + spec.start_timeout:
                    failed = True  # its own start_timeout
                else:
                    timeout = True  # cut by the shutdown deadline
        cancelled = bool(v.entries(name, "run", "cancel"))
        for entry in v.entries(name, "run", "fail"):
            if entry.detail == "RunBoom" and (spec.critical or cancelled):
                failed = True
        if v.entries(name, "stop", "fail"):
            failed = True
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


def check_rule6_component_states(v: View) -> None:
    """Rule 6 and States: a component ends FAILED exactly when something of it failed."""
    if v.r.exit_code is None:
        return
    for name in v.graph.order:
        info = v.r.infos[name]
        if not v.started(name):
            assert info.state is C.NEW
            assert info.error is None
            continue
        bad = (
            not v.entered(name)
            or info.stop_began is None
            or any(e.detail == "RunBoom" for e in v.entries(name, "run", "fail"))
            or bool(v.entries(name, "stop", "fail"))
            or bool(v.entries(name, "run", "abandoned") or v.entries(name, "stop", "abandoned"))
            or not v.stop_called_if_any(name)
        )
        assert info.state is (C.FAILED if bad else C.STOPPED), name
        assert (info.error is not None) == bad, name


def check_rule7_bounds(v: View) -> None:
    """Rule 7: the shutdown, drain included, ends by request + shutdown_timeout."""
    began = v.shutdown_began
    if began is None:
        assert v.deadline is None
        return
    assert v.deadline == began.time + v.case.shutdown_timeout
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


def check_all(case: Case) -> SimResult:
    """Simulate ``case`` and assert every rule over it."""
    v = View(case, case.run())
    check_ends(v)
    check_moves_are_legal(v)
    check_rule1_start_order(v)
    check_rule2_stop_order(v)
    check_rule3_stop_calls(v)
    check_rule3_call_timing(v)
    check_no_calls_after_deadline(v)
    check_rule4_rollback(v)
    check_rule5_critical_run(v)
    check_exit_code(v)
    check_rule6_component_states(v)
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
def test_rules_hold_for_any_app(case: Case) -> None:
    """Rules 1-7, the exit code and the state moves hold for any graph and behaviour."""
    check_all(case)


@settings(max_examples=300, deadline=None)
@given(cases(max_nodes=8, dense=True))
def test_rules_hold_when_small_apps_fail_everywhere(case: Case) -> None:
    """The rules hold when most components of a small app misbehave at once."""
    check_all(case)


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
