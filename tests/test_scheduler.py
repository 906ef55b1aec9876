"""The sans-I/O scheduler, one behaviour per test, driven by hand on a fake clock.

The random-case invariants live in test_scheduler_properties.py; these pin
the exact actions, states, exit codes and messages of the named situations.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import random
from collections.abc import Mapping, Sequence

import pytest

from lifecycle import AppState, Cancelled, ComponentState, ExitCode
from lifecycle._core.drain import Drain
from lifecycle._core.errors import (
    DeadlineExceeded,
    DependencyFailed,
    is_cancellation,
    is_deadline_cut,
)
from lifecycle._core.graph import analyze
from lifecycle._core.restart import RestartLimitReached, RestartPolicy
from lifecycle._core.scheduler import (
    Abandon,
    AppStarted,
    CancelRun,
    CancelStart,
    ComponentInfo,
    Finished,
    NodeSpec,
    RunComponent,
    Scheduler,
    StartComponent,
    StopComponent,
)

C = ComponentState


def make(
    declared: Mapping[str, Sequence[str]],
    *,
    shutdown_timeout: float = 30.0,
    drain_delay: float = 0.0,
    **specs: dict[str, object],
) -> Scheduler:
    """A scheduler over ``declared``; each NodeSpec has start 5s / stop 10s unless overridden."""
    nodes = []
    for name in declared:
        fields: dict[str, object] = {"start_timeout": 5.0, "stop_timeout": 10.0}
        fields.update(specs.get(name, {}))
        nodes.append(NodeSpec(name, **fields))  # type: ignore[arg-type]
    return Scheduler(
        analyze(declared), nodes, shutdown_timeout=shutdown_timeout, drain_delay=drain_delay
    )


def running(declared: Mapping[str, Sequence[str]], **kw: object) -> Scheduler:
    """A scheduler whose components all started at t=0 (app RUNNING)."""
    sched = make(declared, **kw)  # type: ignore[arg-type]
    pending = [a.name for a in sched.begin(0.0) if isinstance(a, StartComponent)]
    while pending:
        pending += [
            a.name
            for a in sched.start_finished(pending.pop(0), 0.0)
            if isinstance(a, StartComponent)
        ]
    assert sched.state is AppState.RUNNING
    return sched


# -- starting -----------------------------------------------------------------


def test_begin_starts_every_root_at_once_with_its_deadline():
    """Components without dependencies all start at begin, each with now + start_timeout."""
    sched = make({"db": (), "cache": (), "api": ("db", "cache")}, cache={"start_timeout": 2.0})
    assert sched.begin(100.0) == [StartComponent("db", 105.0), StartComponent("cache", 102.0)]
    assert sched.state is AppState.STARTING


def test_dependent_starts_when_its_last_dependency_returns():
    """A component starts only once every dependency's start returned."""
    sched = make({"db": (), "cache": (), "api": ("db", "cache")})
    sched.begin(0.0)
    assert sched.start_finished("db", 1.0) == []
    assert sched.start_finished("cache", 3.0) == [StartComponent("api", 8.0)]


def test_app_starts_when_the_last_start_returns_and_runs_begin_on_entry():
    """run() begins as its component enters; AppStarted comes after the last start."""
    sched = make({"db": (), "worker": ("db",)}, worker={"has_run": True})
    sched.begin(0.0)
    sched.start_finished("db", 1.0)
    assert sched.start_finished("worker", 2.0) == [RunComponent("worker"), AppStarted()]
    assert sched.state is AppState.RUNNING


def test_component_without_start_enters_at_once():
    """A component without start() is RUNNING as soon as its dependencies are."""
    sched = make({"pool": (), "api": ("pool",)}, pool={"has_start": False})
    assert sched.begin(0.0) == [StartComponent("api", 5.0)]
    assert sched.infos["pool"].state is C.RUNNING


def test_root_without_start_does_not_start_its_dependent_twice():
    """Entering a start-less root inside begin() starts its dependent exactly once."""
    sched = make({"a": (), "b": ("a",)}, a={"has_start": False})
    assert sched.begin(0.0) == [StartComponent("b", 5.0)]


def test_empty_app_starts_and_stops_cleanly():
    """An app without components starts at once and stops with OK."""
    sched = make({})
    assert sched.begin(0.0) == [AppStarted()]
    assert sched.request_shutdown(1.0) == [Finished(ExitCode.OK)]


def test_specs_must_match_the_graph():
    """A scheduler refuses specs that name other components than the graph."""
    with pytest.raises(ValueError, match="specs and graph name different components"):
        Scheduler(analyze({"a": ()}), [NodeSpec("b", 1.0, 1.0)], shutdown_timeout=1.0)


# -- start failures -------------------------------------------------------------


def test_failing_start_rolls_back_what_started_in_reverse():
    """A start that raises cancels starts in progress and stops what started, deepest first."""
    sched = make({"db": (), "cache": (), "api": ("db",), "slow": ()})
    sched.begin(0.0)
    sched.start_finished("db", 1.0)
    sched.start_finished("cache", 1.0)
    actions = sched.start_failed("api", 2.0, RuntimeError("boom"))
    assert actions == [
        CancelStart("slow", "component 'api' failed to start"),
        StopComponent("cache", 12.0),
        StopComponent("db", 12.0),
    ]
    assert sched.state is AppState.STOPPING
    assert sched.startup_failure == ("api", "RuntimeError: boom")
    assert sched.infos["api"].state is C.FAILED


def test_rollback_waits_for_a_cancelled_start_before_stopping_its_dependency():
    """A dependency is stopped only after its starting dependent settled."""
    sched = make({"db": (), "api": ("db",), "bad": ()})
    sched.begin(0.0)
    sched.start_finished("db", 1.0)
    assert sched.start_failed("bad", 2.0, RuntimeError("boom")) == [
        CancelStart("api", "component 'bad' failed to start")
    ]
    assert sched.start_failed("api", 3.0, Cancelled("x")) == [StopComponent("db", 13.0)]


def test_rollback_exits_failed_and_never_stops_failed_or_unstarted_components():
    """After a failed start the exit is FAILED; failed and never-started ones are not stopped."""
    sched = make({"db": (), "api": ("db",)})
    sched.begin(0.0)
    assert sched.start_failed("db", 1.0, RuntimeError("boom")) == [Finished(ExitCode.FAILED)]
    assert sched.state is AppState.FAILED
    assert (sched.infos["db"].stop_called, sched.infos["api"].state) == (False, C.NEW)


def test_start_timeout_abandons_the_start_and_rolls_back():
    """A start past its start_timeout is abandoned with a message and fails the startup."""
    sched = make({"db": (), "api": ()})
    sched.begin(0.0)
    sched.start_finished("api", 1.0)
    assert sched.next_deadline() == 5.0
    why = "start() of 'db' did not return within its start_timeout of 5s; abandoned"
    assert sched.tick(5.0) == [Abandon("db", "start", why), StopComponent("api", 15.0)]
    assert sched.startup_failure == ("db", why)
    assert sched.stop_finished("api", 6.0) == [Finished(ExitCode.FAILED)]
    assert sched.infos["db"].timed_out == "start"


def test_critical_run_raising_during_startup_is_a_startup_failure():
    """A critical worker that crashes while others still start fails the startup."""
    sched = make({"w": (), "slow": ()}, w={"has_run": True})
    sched.begin(0.0)
    sched.start_finished("w", 1.0)
    actions = sched.run_finished("w", 2.0, RuntimeError("crash"))
    assert actions == [
        CancelStart("slow", "component 'w' failed to start"),
        StopComponent("w", 12.0),
    ]
    assert sched.startup_failure == ("w", "run() raised RuntimeError: crash")


# -- aborting a start -------------------------------------------------------------


def test_shutdown_during_startup_cancels_starts_and_exits_ok():
    """A shutdown while starting cancels starts; a start raising Cancelled is no failure."""
    sched = make({"db": (), "api": ("db",)})
    sched.begin(0.0)
    assert sched.request_shutdown(1.0, "SIGTERM") == [CancelStart("db", "SIGTERM")]
    assert sched.start_failed("db", 2.0, Cancelled("SIGTERM")) == [Finished(ExitCode.OK)]
    assert sched.state is AppState.STOPPED
    assert sched.infos["api"].state is C.NEW


def test_start_returning_after_abort_is_stopped_and_nothing_more_starts():
    """A start that returns despite the abort is stopped at once; its dependents never start."""
    sched = make({"db": (), "api": ("db",)})
    sched.begin(0.0)
    sched.request_shutdown(1.0)
    assert sched.start_finished("db", 2.0) == [StopComponent("db", 12.0)]
    assert sched.stop_finished("db", 3.0) == [Finished(ExitCode.OK)]


def test_start_raising_an_error_after_abort_is_a_failure():
    """During an abort, a start raising a real error (not Cancelled) makes the exit FAILED."""
    sched = make({"db": ()})
    sched.begin(0.0)
    sched.request_shutdown(1.0)
    assert sched.start_failed("db", 2.0, RuntimeError("boom")) == [Finished(ExitCode.FAILED)]


def test_start_cutting_work_after_abort_is_a_timeout():
    """During an abort, a start that cut work (DeadlineExceeded: children killed) exits TIMEOUT."""
    sched = make({"group": ()})
    sched.begin(0.0)
    sched.request_shutdown(1.0)
    cut = DeadlineExceeded("group", ["group[0] (pid 4242)"])
    assert sched.start_failed("group", 2.0, cut) == [Finished(ExitCode.TIMEOUT)]


def test_shutdown_before_begin_finishes_at_once():
    """A shutdown requested before anything started finishes cleanly at once."""
    sched = make({"db": ()})
    assert sched.request_shutdown(0.0) == [Finished(ExitCode.OK)]
    assert sched.infos["db"].state is C.NEW


# -- shutting down ------------------------------------------------------------------


def test_drain_delay_stops_nothing_and_cancels_no_run_token():
    """While draining nothing is stopped or cancelled; stopping begins when the drain ends."""
    sched = running({"w": ()}, drain_delay=5.0, w={"has_run": True})
    assert sched.request_shutdown(10.0, "SIGTERM") == []
    assert sched.next_deadline() == 15.0
    assert (sched.tick(14.9), sched.state) == ([], AppState.DRAINING)
    assert (sched.tick(15.0), sched.state) == ([CancelRun("w", "SIGTERM")], AppState.STOPPING)


def test_stop_runs_in_reverse_dependency_order():
    """Dependents stop first; a dependency stops when all its dependents finished stopping."""
    sched = running({"db": (), "api": ("db",), "admin": ("db",)})
    assert sched.request_shutdown(1.0) == [StopComponent("api", 11.0), StopComponent("admin", 11.0)]
    assert sched.stop_finished("api", 2.0) == []
    assert sched.stop_finished("admin", 4.0) == [StopComponent("db", 14.0)]
    assert sched.stop_finished("db", 5.0) == [Finished(ExitCode.OK)]
    assert [sched.infos[n].state for n in ("db", "api", "admin")] == [C.STOPPED] * 3


def test_run_token_is_cancelled_at_its_own_stop_phase_then_stop_is_called():
    """The stop phase cancels run(), waits for it to return, then calls stop()."""
    sched = running({"db": (), "w": ("db",)}, w={"has_run": True})
    assert sched.request_shutdown(1.0, "bye") == [CancelRun("w", "bye")]
    assert sched.run_finished("w", 2.0, Cancelled("bye")) == [StopComponent("w", 12.0)]
    assert sched.stop_finished("w", 3.0) == [StopComponent("db", 13.0)]


def test_stop_deadline_counts_from_the_stop_call():
    """stop()'s token expires stop_timeout after stop() is called, not after run() was cancelled."""
    sched = running({"w": ()}, w={"has_run": True, "stop_timeout": 5.0})
    sched.request_shutdown(1.0)
    assert sched.run_finished("w", 4.0) == [StopComponent("w", 9.0)]
    assert sched.stop_finished("w", 8.0) == [Finished(ExitCode.OK)]


def test_stop_deadline_is_capped_by_the_shutdown_deadline():
    """stop()'s deadline is min(now + stop_timeout, request + shutdown_timeout)."""
    sched = running({"db": ()}, shutdown_timeout=4.0)
    assert sched.request_shutdown(1.0) == [StopComponent("db", 5.0)]


def test_shutdown_request_is_idempotent_and_keeps_the_first_reason():
    """A second request changes nothing; the first reason stays."""
    sched = running({"w": ()}, drain_delay=1.0, w={"has_run": True})
    sched.request_shutdown(1.0, "SIGTERM")
    assert sched.request_shutdown(1.5, "SIGINT") == []
    assert sched.tick(2.0) == [CancelRun("w", "SIGTERM")]
    assert sched.shutdown_reason == "SIGTERM"


def test_component_without_run_or_stop_stops_instantly():
    """A component with neither run nor stop settles the moment its turn comes."""
    sched = running({"flag": (), "api": ("flag",)}, flag={"has_stop": False})
    assert sched.request_shutdown(1.0) == [StopComponent("api", 11.0)]
    assert sched.stop_finished("api", 2.0) == [Finished(ExitCode.OK)]
    assert sched.infos["flag"].state is C.STOPPED
    assert sched.infos["flag"].stop_called is False


# -- run ending on its own ------------------------------------------------------------


def test_critical_run_crash_requests_shutdown_and_fails_the_exit():
    """A critical run() raising while running drains and stops the app; exit FAILED."""
    sched = running({"w": (), "db": ()}, drain_delay=2.0, w={"has_run": True})
    assert sched.run_finished("w", 5.0, RuntimeError("crash")) == []
    assert sched.state is AppState.DRAINING
    assert sched.shutdown_reason == "critical component 'w' failed in run()"
    assert sched.infos["w"].state is C.FAILED
    assert sched.tick(7.0) == [StopComponent("w", 17.0), StopComponent("db", 17.0)]
    sched.stop_finished("w", 8.0)
    assert sched.stop_finished("db", 8.0) == [Finished(ExitCode.FAILED)]


def test_critical_run_returning_requests_a_clean_shutdown():
    """A critical run() returning while running shuts the app down; exit OK."""
    sched = running({"w": ()}, w={"has_run": True, "has_stop": False})
    assert sched.run_finished("w", 5.0) == [Finished(ExitCode.OK)]
    assert sched.shutdown_reason == "critical component 'w' finished in run()"


def test_non_critical_run_crash_only_shows_in_the_report():
    """A non-critical run() raising marks it FAILED; the app runs on, is still stopped, exits OK."""
    sched = running({"w": ()}, w={"has_run": True, "critical": False})
    assert sched.run_finished("w", 5.0, RuntimeError("crash")) == []
    assert (sched.state, sched.infos["w"].state) == (AppState.RUNNING, C.FAILED)
    assert isinstance(sched.infos["w"].run_error, RuntimeError)
    assert sched.request_shutdown(6.0) == [StopComponent("w", 16.0)]
    assert sched.stop_finished("w", 7.0) == [Finished(ExitCode.OK)]


# -- stop failures ------------------------------------------------------------------


def test_stop_raising_fails_the_exit_but_others_still_stop():
    """A stop() raising marks it FAILED, exit FAILED; its dependencies still stop."""
    sched = running({"db": (), "api": ("db",)})
    sched.request_shutdown(1.0)
    assert sched.stop_finished("api", 2.0, RuntimeError("close")) == [StopComponent("db", 12.0)]
    assert sched.stop_finished("db", 3.0) == [Finished(ExitCode.FAILED)]
    assert sched.infos["api"].state is C.FAILED


def test_stop_overrun_is_abandoned_at_its_deadline_and_times_out():
    """A stop() past its stop_timeout is abandoned with a message; exit TIMEOUT."""
    sched = running({"db": (), "api": ("db",)})
    sched.request_shutdown(1.0)
    why = "stop() did not return for 'api' within its stop_timeout of 10s; abandoned"
    assert sched.next_deadline() == 11.0
    assert sched.tick(11.0) == [Abandon("api", "stop", why), StopComponent("db", 21.0)]
    assert sched.stop_finished("db", 12.0) == [Finished(ExitCode.TIMEOUT)]
    assert sched.infos["api"].timed_out == "stop"


def test_timeout_wins_over_failed():
    """With one stop raising and another overrunning, the exit code is TIMEOUT."""
    sched = running({"a": (), "b": ()})
    sched.request_shutdown(1.0)
    sched.stop_finished("a", 2.0, RuntimeError("close"))
    assert sched.tick(11.0)[-1] == Finished(ExitCode.TIMEOUT)


def test_run_ignoring_its_token_is_abandoned_and_stop_is_still_called():
    """A run() past stop_timeout after its cancel is abandoned; stop() is called all the same."""
    sched = running({"w": ()}, w={"has_run": True, "stop_timeout": 2.0})
    sched.request_shutdown(1.0)
    why = "run() did not return for 'w' within its stop_timeout of 2s; abandoned"
    assert sched.tick(3.0) == [Abandon("w", "run", why), StopComponent("w", 5.0)]
    assert sched.stop_finished("w", 4.0) == [Finished(ExitCode.TIMEOUT)]
    assert sched.infos["w"].stop_called is True


def test_zero_stop_timeout_begun_by_a_tick_is_abandoned_in_that_tick():
    """A stop begun by a tick with stop_timeout 0 is abandoned in the same tick."""
    sched = running({"a": (), "b": ("a",)}, a={"stop_timeout": 0.0}, b={"stop_timeout": 1.0})
    sched.request_shutdown(1.0)
    actions = sched.tick(2.0)
    assert [type(a).__name__ for a in actions] == [
        "Abandon",
        "StopComponent",
        "Abandon",
        "Finished",
    ]
    assert actions[-1] == Finished(ExitCode.TIMEOUT)


# -- the shutdown deadline -----------------------------------------------------------


def test_shutdown_deadline_abandons_what_runs_and_never_stops_the_rest():
    """At request + shutdown_timeout, stops in progress are abandoned; waiting ones never stop."""
    sched = running({"db": (), "api": ("db",)}, shutdown_timeout=3.0)
    sched.request_shutdown(1.0)
    assert sched.next_deadline() == 4.0
    assert sched.tick(4.0) == [
        Abandon(
            "api",
            "stop",
            "stop() did not return for 'api' within the shutdown_timeout of 3s; abandoned",
        ),
        Finished(ExitCode.TIMEOUT),
    ]
    db = sched.infos["db"]
    assert (db.state, db.stop_called) == (C.FAILED, False)
    assert str(db.error) == (
        "'db' was not stopped: the shutdown_timeout of 3s passed before its stop phase "
        "could begin (it waits for the components that depend on it)"
    )


def test_drain_is_bounded_by_the_shutdown_timeout():
    """A drain as long as the shutdown_timeout leaves no time: nothing is stopped, TIMEOUT."""
    sched = running({"w": ()}, shutdown_timeout=5.0, drain_delay=5.0, w={"has_run": True})
    sched.request_shutdown(1.0)
    assert sched.tick(6.0) == [
        Abandon(
            "w",
            "run",
            "'w' was not stopped: the shutdown_timeout of 5s passed before its "
            "stop phase could begin (it waits for the components that depend on it)",
        ),
        Finished(ExitCode.TIMEOUT),
    ]


def test_empty_app_with_a_drain_as_long_as_the_timeout_exits_ok():
    """With nothing to abandon, reaching the shutdown deadline is no TIMEOUT."""
    sched = make({}, shutdown_timeout=5.0, drain_delay=5.0)
    sched.begin(0.0)
    sched.request_shutdown(1.0)
    assert sched.tick(6.0) == [Finished(ExitCode.OK)]


def test_starts_cut_by_the_shutdown_deadline_do_not_begin_stops():
    """Abandoning a start at the shutdown deadline does not start its dependency's stop."""
    sched = make({"a": (), "b": ("a",)}, shutdown_timeout=3.0, b={"start_timeout": 100.0})
    sched.begin(0.0)
    sched.start_finished("a", 0.0)
    assert sched.request_shutdown(1.0) == [CancelStart("b", "requested")]
    actions = sched.tick(4.0)
    assert [type(a) for a in actions] == [Abandon, Finished]
    assert actions[-1] == Finished(ExitCode.TIMEOUT)
    assert sched.infos["a"].stop_called is False


def test_no_stop_is_called_when_run_returns_at_the_shutdown_deadline():
    """run() returning exactly at the shutdown deadline leaves no time to call stop()."""
    sched = running({"w": ()}, shutdown_timeout=3.0, w={"has_run": True})
    sched.request_shutdown(1.0)
    assert sched.run_finished("w", 4.0) == [Finished(ExitCode.TIMEOUT)]
    assert sched.infos["w"].stop_called is False


# -- late answers, queries, observers ---------------------------------------------------


def test_late_answers_for_abandoned_calls_change_nothing():
    """Answers for abandoned or never-made calls return no actions."""
    sched = running({"a": (), "b": ()}, a={"stop_timeout": 1.0})
    sched.request_shutdown(1.0)
    sched.tick(2.0)
    assert sched.stop_finished("a", 3.0) == []
    assert sched.run_finished("b", 3.0) == []
    assert sched.start_finished("b", 3.0) == []
    assert sched.infos["a"].timed_out == "stop"


def test_active_lists_calls_in_progress():
    """active() names every call in progress, for stuck diagnostics."""
    sched = make({"db": (), "w": ()}, w={"has_run": True})
    sched.begin(0.0)
    sched.start_finished("w", 0.0)
    assert sorted(sched.active()) == [("db", "start"), ("w", "run")]


def test_next_deadline_is_none_once_done():
    """After Finished no timer is pending."""
    sched = running({"db": ()})
    sched.request_shutdown(1.0)
    sched.stop_finished("db", 2.0)
    assert (sched.done, sched.next_deadline()) == (True, None)


def test_observers_see_every_transition_with_durations():
    """on_component gets (info, from, to, seconds in from); on_app gets (from, to, now)."""
    seen: list[tuple[str, C, C, float]] = []
    app_seen: list[tuple[AppState, AppState, float]] = []

    def on_component(info: ComponentInfo, before: C, after: C, seconds: float) -> None:
        seen.append((info.name, before, after, seconds))

    sched = Scheduler(
        analyze({"db": ()}),
        [NodeSpec("db", 5.0, 5.0)],
        shutdown_timeout=10.0,
        on_component=on_component,
        on_app=lambda before, after, now: app_seen.append((before, after, now)),
    )
    sched.begin(1.0)
    sched.start_finished("db", 3.0)
    sched.request_shutdown(10.0)
    sched.stop_finished("db", 10.5)
    assert seen == [
        ("db", C.NEW, C.STARTING, 0.0),
        ("db", C.STARTING, C.RUNNING, 2.0),
        ("db", C.RUNNING, C.STOPPING, 7.0),
        ("db", C.STOPPING, C.STOPPED, 0.5),
    ]
    assert app_seen == [
        (AppState.NEW, AppState.STARTING, 1.0),
        (AppState.STARTING, AppState.RUNNING, 3.0),
        (AppState.RUNNING, AppState.DRAINING, 10.0),
        (AppState.DRAINING, AppState.STOPPING, 10.0),
        (AppState.STOPPING, AppState.STOPPED, 10.5),
    ]


def test_given_infos_are_kept_up_to_date():
    """The infos mapping passed in is the one updated (app.components shares it)."""
    infos: dict[str, ComponentInfo] = {}
    sched = Scheduler(
        analyze({"db": ()}), [NodeSpec("db", 5.0, 5.0)], shutdown_timeout=1.0, infos=infos
    )
    sched.begin(0.0)
    assert infos["db"].state is C.STARTING
    assert infos["db"].start_began == 0.0


# -- what counts as a cancellation ------------------------------------------------


def _group(*leaves: BaseException) -> BaseExceptionGroup[BaseException]:
    return BaseExceptionGroup("task group", list(leaves))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(Cancelled("bye"), True, id="Cancelled"),
        pytest.param(asyncio.CancelledError(), True, id="asyncio.CancelledError"),
        pytest.param(_group(Cancelled("a"), Cancelled("b")), True, id="group of Cancelled"),
        pytest.param(
            _group(Cancelled("a"), _group(asyncio.CancelledError(), Cancelled("c"))),
            True,
            id="nested group of cancellations",
        ),
        pytest.param(
            _group(Cancelled("a"), RuntimeError("boom")), False, id="group with a real error"
        ),
        pytest.param(
            _group(Cancelled("a"), _group(Cancelled("b"), OSError("deep"))),
            False,
            id="nested group with a real error",
        ),
        pytest.param(RuntimeError("boom"), False, id="an error"),
        pytest.param(KeyboardInterrupt(), False, id="KeyboardInterrupt"),
        pytest.param(
            concurrent.futures.CancelledError(), False, id="concurrent.futures.CancelledError"
        ),
        pytest.param(DeadlineExceeded("api", ["GET /"]), False, id="DeadlineExceeded"),
    ],
)
def test_is_cancellation(error, expected):
    """A cancellation is a Cancelled, an asyncio.CancelledError, or a group of only those."""
    assert expected == is_cancellation(error)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(DeadlineExceeded("api", ["GET /"]), True, id="DeadlineExceeded"),
        pytest.param(TimeoutError("socket timed out"), False, id="plain TimeoutError"),
        pytest.param(
            _group(DeadlineExceeded("api", []), Cancelled("x")),
            True,
            id="group with DeadlineExceeded",
        ),
        pytest.param(
            _group(RuntimeError("close"), _group(DeadlineExceeded("api", []))),
            True,
            id="nested group with DeadlineExceeded and an error",
        ),
        pytest.param(
            _group(TimeoutError("socket"), Cancelled("x")),
            False,
            id="group with a plain TimeoutError",
        ),
        pytest.param(Cancelled("deadline exceeded"), False, id="Cancelled"),
    ],
)
def test_is_deadline_cut(error, expected):
    """Work was cut at a deadline only when a DeadlineExceeded says so, alone or in a group."""
    assert expected == is_deadline_cut(error)


def test_run_ending_with_a_group_of_cancellations_is_a_clean_end():
    """A run whose task group ends in Cancelled leaves after its cancel is no crash: exit OK."""
    sched = running({"w": ()}, w={"has_run": True})
    sched.request_shutdown(1.0)
    ended = _group(Cancelled("bye"), _group(asyncio.CancelledError()))
    assert sched.run_finished("w", 2.0, ended) == [StopComponent("w", 12.0)]
    assert sched.stop_finished("w", 3.0) == [Finished(ExitCode.OK)]
    assert (sched.infos["w"].state, sched.infos["w"].run_error) == (C.STOPPED, None)


def test_run_ending_with_asyncio_cancelled_error_is_a_clean_end():
    """An async run ending in asyncio.CancelledError after its cancel is no crash."""
    sched = running({"w": ()}, w={"has_run": True, "has_stop": False})
    sched.request_shutdown(1.0)
    assert sched.run_finished("w", 2.0, asyncio.CancelledError()) == [Finished(ExitCode.OK)]


def test_run_ending_with_a_mixed_group_is_a_crash():
    """A group mixing a Cancelled with a real error is a failure, and the group is reported."""
    sched = running({"w": ()}, w={"has_run": True, "has_stop": False})
    sched.request_shutdown(1.0)
    mixed = _group(Cancelled("bye"), RuntimeError("lost a message"))
    assert sched.run_finished("w", 2.0, mixed) == [Finished(ExitCode.FAILED)]
    assert (sched.infos["w"].state, sched.infos["w"].run_error) == (C.FAILED, mixed)


def test_aborted_start_ending_with_a_group_of_cancellations_is_no_failure():
    """A start cancelled by the abort that raises a group of Cancelled exits OK."""
    sched = make({"db": ()})
    sched.begin(0.0)
    sched.request_shutdown(1.0)
    ended = _group(Cancelled("x"), Cancelled("y"))
    assert sched.start_failed("db", 2.0, ended) == [Finished(ExitCode.OK)]


# -- what a stop's TimeoutError means --------------------------------------------------


def test_plain_timeout_error_from_stop_is_a_failure_not_a_timeout():
    """A client library's TimeoutError from stop() is FAILED, and nothing counts as abandoned."""
    sched = running({"db": ()})
    sched.request_shutdown(1.0)
    assert sched.stop_finished("db", 2.0, TimeoutError("redis timed out")) == [
        Finished(ExitCode.FAILED)
    ]
    assert (sched.infos["db"].state, sched.infos["db"].timed_out) == (C.FAILED, None)


def test_deadline_exceeded_from_stop_is_a_timeout():
    """A server that cut requests at its deadline (DeadlineExceeded) makes the exit TIMEOUT."""
    sched = running({"api": ()})
    sched.request_shutdown(1.0)
    cut = DeadlineExceeded("api", ["GET /slow (9.0s)"])
    assert sched.stop_finished("api", 2.0, cut) == [Finished(ExitCode.TIMEOUT)]
    assert (sched.infos["api"].state, sched.infos["api"].timed_out) == (C.FAILED, "stop")


@pytest.mark.parametrize(
    "group",
    [
        _group(DeadlineExceeded("api", ["GET /"]), Cancelled("x")),
        _group(RuntimeError("close"), DeadlineExceeded("api", ["GET /"])),
    ],
    ids=["with a cancellation", "with an error"],
)
def test_group_holding_deadline_exceeded_from_stop_is_a_timeout(group):
    """A stop's exception group holding a DeadlineExceeded is TIMEOUT (it wins over FAILED)."""
    sched = running({"api": ()})
    sched.request_shutdown(1.0)
    assert sched.stop_finished("api", 2.0, group) == [Finished(ExitCode.TIMEOUT)]
    assert sched.infos["api"].timed_out == "stop"


# -- the shutdown deadline counts from the request --------------------------------------


def test_shutdown_deadline_counts_from_when_the_request_arrived():
    """Given requested_at, the deadline is requested_at + shutdown_timeout, and caps stop's."""
    sched = running({"db": ()}, shutdown_timeout=5.0)
    assert sched.request_shutdown(10.0, "SIGTERM", requested_at=7.0) == [StopComponent("db", 12.0)]
    assert sched.shutdown_deadline == 12.0


def test_requested_at_is_clamped_between_begin_and_now():
    """requested_at before the app began counts from the begin; one after now counts from now."""
    early = make({"db": ()})
    early.begin(5.0)
    early.request_shutdown(6.0, requested_at=1.0)
    late = running({"db": ()})
    late.request_shutdown(6.0, requested_at=9.0)
    assert (early.shutdown_deadline, late.shutdown_deadline) == (35.0, 36.0)


def test_abort_deadline_counts_from_when_the_request_arrived():
    """A shutdown requested during startup also counts its deadline from requested_at."""
    sched = make({"db": ()}, shutdown_timeout=10.0)
    sched.begin(0.0)
    assert sched.request_shutdown(3.0, requested_at=2.0) == [CancelStart("db", "requested")]
    assert sched.shutdown_deadline == 12.0


def test_request_arriving_after_its_deadline_ends_the_shutdown_at_once():
    """A request handled after requested_at + shutdown_timeout abandons what runs at once."""
    sched = running({"w": ()}, shutdown_timeout=5.0, w={"has_run": True})
    actions = sched.request_shutdown(20.0, requested_at=10.0)
    assert [type(a) for a in actions] == [Abandon, Finished]
    assert actions[-1] == Finished(ExitCode.TIMEOUT)
    assert sched.infos["w"].stop_called is False


def test_request_stamped_before_a_start_timed_out_leaves_the_app_started():
    """A non-critical start abandoned before a backdated request arrives stays a start failure.

    Stamped before the begin, the request's deadline (0) lies before that
    abandonment (21); the app had started then and stays started, and the
    request cuts what is left at once.
    """
    sched = make(
        {"slow": (), "db": ()},
        shutdown_timeout=0.0,
        slow={"critical": False, "has_run": True, "start_timeout": 21.0},
        db={"critical": False, "has_start": False, "has_stop": False},
    )
    assert sched.begin(0.0) == [StartComponent("slow", 21.0)]
    abandon, started = sched.tick(21.0)
    assert (type(abandon), started) == (Abandon, AppStarted())
    assert sched.state is AppState.RUNNING
    assert sched.request_shutdown(57.0, requested_at=-43.0) == [Finished(ExitCode.TIMEOUT)]
    assert sched.shutdown_deadline == 0.0
    assert sched.infos["slow"].state is C.FAILED
    assert sched.infos["slow"].stop_called is False


# -- time never runs backwards --------------------------------------------------------


def test_time_running_backwards_is_clamped_to_the_latest_seen():
    """An earlier ``now`` than one already seen counts as the latest: no negative duration."""
    sched = make({"db": (), "api": ("db",)})
    sched.begin(10.0)
    assert sched.start_finished("db", 8.0) == [StartComponent("api", 15.0)]
    assert sched.infos["db"].start_duration == 0.0


def test_shutdown_requested_with_an_earlier_time_counts_from_the_latest():
    """A shutdown request stamped before the last event times its deadline from that event."""
    sched = running({"db": ()})
    sched.tick(100.0)
    assert sched.request_shutdown(50.0) == [StopComponent("db", 110.0)]
    assert (sched.shutdown_deadline, sched.infos["db"].stop_began) == (130.0, 100.0)


def test_a_stale_tick_fires_nothing_early():
    """A tick carrying an earlier time than one seen fires no deadline before its time."""
    sched = running({"db": ()})
    sched.request_shutdown(1.0)
    sched.tick(5.0)
    assert (sched.tick(3.0), sched.next_deadline()) == ([], 11.0)


def test_nan_time_is_refused():
    """A NaN time is a runner bug: the scheduler refuses it with a message."""
    sched = make({"db": ()})
    with pytest.raises(ValueError, match="now must be a number"):
        sched.begin(math.nan)


# -- critical=False covers start ------------------------------------------------------


def test_non_critical_start_failure_lets_the_app_run_without_it():
    """A non-critical start that raises is FAILED; the app starts and exits OK."""
    sched = make({"db": (), "extra": ()}, extra={"critical": False})
    sched.begin(0.0)
    assert sched.start_failed("extra", 1.0, OSError("nope")) == []
    assert sched.start_finished("db", 2.0) == [AppStarted()]
    assert (sched.state, sched.infos["extra"].state) == (AppState.RUNNING, C.FAILED)
    assert sched.startup_failure is None
    assert sched.request_shutdown(3.0) == [StopComponent("db", 13.0)]
    assert sched.stop_finished("db", 4.0) == [Finished(ExitCode.OK)]
    assert sched.infos["extra"].stop_called is False


def test_non_critical_start_timeout_lets_the_app_run_without_it():
    """A non-critical start past its start_timeout is abandoned; the app runs; exit OK."""
    sched = make({"extra": ()}, extra={"critical": False, "start_timeout": 2.0})
    sched.begin(0.0)
    why = "start() of 'extra' did not return within its start_timeout of 2s; abandoned"
    assert sched.tick(2.0) == [Abandon("extra", "start", why), AppStarted()]
    assert sched.infos["extra"].timed_out == "start"
    assert sched.request_shutdown(3.0) == [Finished(ExitCode.OK)]


def test_non_critical_start_failure_fails_startup_when_a_critical_one_depends_on_it():
    """A critical component depending on a failed non-critical one fails startup, naming both."""
    sched = make({"cache": (), "api": ("cache",)}, cache={"critical": False})
    sched.begin(0.0)
    error = ConnectionRefusedError("refused")
    assert sched.start_failed("cache", 1.0, error) == [Finished(ExitCode.FAILED)]
    assert sched.startup_failure == (
        "cache",
        "ConnectionRefusedError: refused; critical component 'api' depends on it",
    )


def test_critical_dependent_through_non_critical_ones_fails_startup():
    """A critical component needing it through others fails startup too, naming the path."""
    sched = make(
        {"cache": (), "mid": ("cache",), "api": ("mid",)},
        cache={"critical": False},
        mid={"critical": False},
    )
    sched.begin(0.0)
    sched.start_failed("cache", 1.0, OSError("down"))
    assert sched.startup_failure == (
        "cache",
        "OSError: down; critical component 'api' depends on it (through 'mid')",
    )


def test_dependents_of_a_failed_non_critical_component_are_not_started():
    """Non-critical dependents of a failed one stay NEW with an error naming the dependency."""
    sched = make(
        {"db": (), "cache": (), "warm": ("cache",), "stats": ("warm", "db")},
        cache={"critical": False},
        warm={"critical": False},
        stats={"critical": False},
    )
    sched.begin(0.0)
    assert sched.start_failed("cache", 1.0, OSError("down")) == []
    assert sched.start_finished("db", 2.0) == [AppStarted()]
    warm, stats = sched.infos["warm"], sched.infos["stats"]
    assert (warm.state, stats.state) == (C.NEW, C.NEW)
    assert isinstance(warm.error, DependencyFailed)
    assert str(warm.error) == (
        "component 'warm' was not started: it depends on 'cache', which failed to start "
        "(OSError: down); fix 'cache' or remove the dependency"
    )
    assert str(stats.error) == (
        "component 'stats' was not started: it depends on 'warm', which was not started "
        "because 'cache' failed to start (OSError: down); fix 'cache' or remove the dependency"
    )
    assert (warm.failed, stats.failed, sched.infos["db"].failed) == (True, True, False)
    assert sched.request_shutdown(3.0) == [StopComponent("db", 13.0)]
    assert sched.stop_finished("db", 4.0) == [Finished(ExitCode.OK)]


def test_non_critical_start_failing_during_an_abort_is_no_failure():
    """During an abort, a non-critical start raising a real error shows only in the report."""
    sched = make({"extra": ()}, extra={"critical": False})
    sched.begin(0.0)
    sched.request_shutdown(1.0)
    assert sched.start_failed("extra", 2.0, RuntimeError("boom")) == [Finished(ExitCode.OK)]
    assert sched.infos["extra"].state is C.FAILED


# -- restarts -------------------------------------------------------------------------

# No jitter: the delays are exact. R=2 restarts in T=10 s, first delay 1 s, doubling.
RESTART = RestartPolicy("on-failure", max_restarts=2, within=10.0, backoff=1.0, jitter=0.0)


def test_crashed_run_is_restarted_after_the_backoff():
    """A run() raising under on-failure is RESTARTING; at the backoff, RunComponent again."""
    sched = running({"w": ()}, w={"has_run": True, "restart": RESTART})
    assert sched.run_finished("w", 5.0, RuntimeError("crash")) == []
    info = sched.infos["w"]
    assert (sched.state, info.state) == (AppState.RUNNING, C.RESTARTING)
    assert (info.restarts, info.next_restart, info.error) == (1, 6.0, None)
    assert str(info.restart_error) == "crash"
    assert sched.next_deadline() == 6.0
    assert sched.tick(5.9) == []
    assert sched.tick(6.0) == [RunComponent("w")]
    assert (info.state, info.next_restart, info.runs) == (C.RUNNING, None, 2)
    assert sched.active() == [("w", "run")]


def test_consecutive_restarts_double_the_delay():
    """The second restart inside the window waits twice as long as the first."""
    sched = running({"w": ()}, w={"has_run": True, "restart": RESTART})
    sched.run_finished("w", 1.0, RuntimeError("1"))
    sched.tick(2.0)
    sched.run_finished("w", 3.0, RuntimeError("2"))
    assert sched.infos["w"].next_restart == 5.0


def test_intensity_limit_fails_a_critical_component_and_shuts_down():
    """The exit that would be restart R+1 within T: FAILED, the app shuts down, exit FAILED."""
    sched = running({"w": ()}, w={"has_run": True, "restart": RESTART, "has_stop": False})
    sched.run_finished("w", 1.0, RuntimeError("1"))
    sched.tick(2.0)
    sched.run_finished("w", 3.0, RuntimeError("2"))
    sched.tick(5.0)
    assert sched.run_finished("w", 6.0, RuntimeError("3")) == [Finished(ExitCode.FAILED)]
    info = sched.infos["w"]
    assert (info.state, info.restarts) == (C.FAILED, 2)
    assert isinstance(info.error, RestartLimitReached)
    assert str(info.run_error) == "3"
    assert str(info.error) == (
        "component 'w' gave up restarting: run() ended again after 2 restarts within "
        "10s (RuntimeError: 3); fix the cause, or allow more with "
        "RestartPolicy(max_restarts=..., within=...)"
    )
    assert sched.shutdown_reason == "critical component 'w' failed in run()"


def test_restarts_outside_the_window_do_not_count():
    """Crashes further apart than T restart forever, each after the first delay again."""
    sched = running({"w": ()}, w={"has_run": True, "restart": RESTART})
    for k in range(10):
        now = 20.0 * k
        assert sched.run_finished("w", now, RuntimeError("x")) == []
        assert sched.infos["w"].next_restart == now + 1.0
        assert sched.tick(now + 1.0) == [RunComponent("w")]
    assert sched.infos["w"].restarts == 10


def test_on_failure_does_not_restart_a_run_that_returned():
    """on-failure: a critical run() returning shuts the app down cleanly, no restart."""
    sched = running({"w": ()}, w={"has_run": True, "has_stop": False, "restart": RESTART})
    assert sched.run_finished("w", 5.0) == [Finished(ExitCode.OK)]
    assert sched.infos["w"].restarts == 0


def test_always_restarts_a_run_that_returned():
    """always: a run() returning is restarted too."""
    always = RestartPolicy("always", backoff=0.5, jitter=0.0)
    sched = running({"w": ()}, w={"has_run": True, "restart": always})
    assert sched.run_finished("w", 5.0) == []
    assert sched.tick(5.5) == [RunComponent("w")]


def test_always_gives_up_on_a_run_that_keeps_returning():
    """always: a run() returning again past the limit fails it (it must not spin)."""
    always = RestartPolicy("always", max_restarts=1, within=5.0, backoff=0.5, jitter=0.0)
    sched = running({"w": ()}, w={"has_run": True, "restart": always, "has_stop": False})
    sched.run_finished("w", 1.0)
    sched.tick(1.5)
    assert sched.run_finished("w", 2.0) == [Finished(ExitCode.FAILED)]
    assert isinstance(sched.infos["w"].error, RestartLimitReached)
    assert "run() ended again after 1 restart within 5s (it returned)" in str(
        sched.infos["w"].error
    )


def test_shutdown_during_a_backoff_ends_it_and_still_calls_stop():
    """A shutdown while RESTARTING: no restart, its stop phase calls stop() once (rule 3)."""
    sched = running({"w": ()}, w={"has_run": True, "restart": RESTART})
    sched.run_finished("w", 5.0, RuntimeError("crash"))
    assert sched.request_shutdown(5.5) == [StopComponent("w", 15.5)]
    info = sched.infos["w"]
    assert (info.state, info.next_restart) == (C.STOPPING, None)
    assert sched.tick(6.0) == []  # the restart timer is dead
    assert sched.stop_finished("w", 7.0) == [Finished(ExitCode.OK)]
    assert (info.state, info.stop_called) == (C.STOPPED, True)


def test_shutdown_during_a_backoff_without_stop_finishes_at_once():
    """A restarting component without stop ends its stop phase at once."""
    sched = running({"w": ()}, w={"has_run": True, "has_stop": False, "restart": RESTART})
    sched.run_finished("w", 5.0, RuntimeError("crash"))
    assert sched.request_shutdown(5.5) == [Finished(ExitCode.OK)]


def test_shutdown_during_the_drain_delay_cancels_a_pending_restart():
    """The shutdown began: the backoff timer firing during the drain delay restarts nothing."""
    sched = running({"w": ()}, drain_delay=3.0, w={"has_run": True, "restart": RESTART})
    sched.run_finished("w", 5.0, RuntimeError("crash"))
    assert sched.request_shutdown(5.2) == []
    assert sched.tick(6.0) == []
    assert sched.infos["w"].state is C.RESTARTING
    assert sched.tick(8.2) == [StopComponent("w", 18.2)]


def test_run_crashing_during_the_drain_delay_waits_for_its_stop_without_failing():
    """A crash the policy would restart, after the shutdown began: no failure, one stop."""
    sched = running({"w": ()}, drain_delay=3.0, w={"has_run": True, "restart": RESTART})
    sched.request_shutdown(1.0)
    assert sched.run_finished("w", 2.0, RuntimeError("late")) == []
    info = sched.infos["w"]
    assert (info.state, info.restarts, info.error, info.run_error) == (C.RESTARTING, 0, None, None)
    assert str(info.restart_error) == "late"
    assert sched.next_deadline() == 4.0  # the drain, not a restart
    assert sched.tick(4.0) == [StopComponent("w", 14.0)]
    assert sched.stop_finished("w", 5.0) == [Finished(ExitCode.OK)]
    assert info.state is C.STOPPED


def test_run_crashing_in_the_drain_past_its_limit_still_fails():
    """A crash the policy would not restart (limit reached) fails as before, even in the drain."""
    once = RestartPolicy("on-failure", max_restarts=0)
    sched = running({"w": ()}, drain_delay=3.0, w={"has_run": True, "restart": once})
    sched.request_shutdown(1.0)
    sched.run_finished("w", 2.0, RuntimeError("late"))
    assert sched.infos["w"].state is C.FAILED
    sched.tick(4.0)
    assert sched.stop_finished("w", 5.0) == [Finished(ExitCode.FAILED)]


def test_non_critical_component_that_gives_up_only_shows_in_the_report():
    """A non-critical component past its limit is FAILED; the app runs on and exits OK."""
    once = RestartPolicy("on-failure", max_restarts=0)
    sched = running({"w": ()}, w={"has_run": True, "critical": False, "restart": once})
    assert sched.run_finished("w", 1.0, RuntimeError("x")) == []
    assert (sched.state, sched.infos["w"].state) == (AppState.RUNNING, C.FAILED)
    assert sched.request_shutdown(2.0) == [StopComponent("w", 12.0)]
    assert sched.stop_finished("w", 3.0) == [Finished(ExitCode.OK)]


def test_a_worker_crashing_during_startup_is_restarted():
    """A restartable worker crashing while others still start is restarted; startup goes on."""
    sched = make({"w": (), "db": ()}, w={"has_run": True, "has_start": False, "restart": RESTART})
    assert sched.begin(0.0) == [RunComponent("w"), StartComponent("db", 5.0)]
    assert sched.run_finished("w", 1.0, RuntimeError("x")) == []
    assert sched.tick(2.0) == [RunComponent("w")]
    assert sched.start_finished("db", 3.0) == [AppStarted()]


def test_restart_observer_sees_each_attempt_and_the_give_up():
    """on_restart gets (info, attempt, delay, error) per restart and delay None at give-up."""
    seen: list[tuple[str, int, float | None, str | None]] = []
    policy = RestartPolicy("always", max_restarts=1, backoff=0.25, jitter=0.0)
    sched = Scheduler(
        analyze({"w": ()}),
        [NodeSpec("w", 5.0, 5.0, has_run=True, has_start=False, restart=policy)],
        shutdown_timeout=10.0,
        on_restart=lambda info, attempt, delay, error: seen.append(
            (info.name, attempt, delay, None if error is None else str(error))
        ),
    )
    sched.begin(0.0)
    sched.run_finished("w", 1.0, RuntimeError("boom"))
    sched.tick(1.25)
    sched.run_finished("w", 2.0)
    assert seen == [("w", 1, 0.25, "boom"), ("w", 2, None, None)]


def test_restart_transitions_reach_the_component_observer():
    """RUNNING -> RESTARTING -> RUNNING are transitions like the others, with durations."""
    seen: list[tuple[C, C, float]] = []
    sched = Scheduler(
        analyze({"w": ()}),
        [NodeSpec("w", 5.0, 5.0, has_run=True, has_start=False, restart=RESTART)],
        shutdown_timeout=10.0,
        on_component=lambda info, before, after, seconds: seen.append((before, after, seconds)),
    )
    sched.begin(0.0)
    sched.run_finished("w", 4.0, RuntimeError("x"))
    sched.tick(5.0)
    assert seen[-2:] == [(C.RUNNING, C.RESTARTING, 4.0), (C.RESTARTING, C.RUNNING, 1.0)]


def test_restart_jitter_uses_the_given_random_source():
    """The jitter comes from the scheduler's rng: a seeded one gives the same delays."""
    jittery = RestartPolicy("always", max_restarts=1, within=5.0, backoff=1.0, jitter=0.5)

    def delays(seed: int) -> list[float | None]:
        sched = Scheduler(
            analyze({"w": ()}),
            [NodeSpec("w", 5.0, 5.0, has_run=True, has_start=False, restart=jittery)],
            shutdown_timeout=10.0,
            rng=random.Random(seed),
        )
        sched.begin(0.0)
        out = []
        for k in range(5):
            sched.run_finished("w", 10.0 * k)
            out.append(sched.infos["w"].next_restart)
            sched.tick(10.0 * k + 2.0)
        return out

    assert delays(1) == delays(1)
    assert delays(1) != delays(2)
    assert all(0.5 <= d - 10.0 * k <= 1.5 for k, d in enumerate(delays(3)) if d is not None)


def test_adaptive_drain_ends_quiet_after_the_last_arrival_fed_in():
    """A Drain as drain_delay: the drain timer re-arms at last arrival + quiet, then stops."""
    sched = running({"w": ()}, drain_delay=Drain(min=1.0, max=5.0, quiet=0.5))
    assert sched.request_shutdown(10.0) == []
    assert sched.next_deadline() == 11.0
    sched.arrived(10.9)
    assert sched.tick(11.0) == []
    assert sched.next_deadline() == pytest.approx(11.4)
    assert sched.state is AppState.DRAINING
    actions = sched.tick(11.4)
    stops = [a for a in actions if isinstance(a, StopComponent)]
    assert [a.name for a in stops] == ["w"]
    assert stops[0].deadline == pytest.approx(21.4)


def test_adaptive_drain_is_cut_at_max_however_busy():
    """Arrivals keep coming: the drain still ends at began + max."""
    sched = running({"w": ()}, drain_delay=Drain(min=0.0, max=2.0, quiet=1.0))
    sched.request_shutdown(0.0)
    for step in range(1, 40):
        now = step * 0.25
        sched.arrived(now)
        sched.tick(now)
        if sched.state is not AppState.DRAINING:
            break
    assert now == 2.0


# -- the cost of a stop on the shutdown's critical path ------------------------------


def test_a_stop_without_run_arms_one_timer_the_stop_deadline():
    """Its stop phase and its stop() begin together: one timer, stop()'s own deadline.

    A second entry (the wait for a run it does not have) would only be
    popped as stale, on the path of every stop of the shutdown.
    """
    sched = running({"db": (), "api": ("db",)})
    before = len(sched._timers)
    actions = sched.request_shutdown(1.0)
    assert actions == [StopComponent("api", 11.0)]
    added = [t for t in sched._timers[before:] if t[2] == "stop"]
    assert [(when, name) for when, _, _, name, _ in added] == [(11.0, "api")]
    assert sched.next_deadline() == 11.0
    assert sched.stop_finished("api", 2.0) == [StopComponent("db", 12.0)]
    assert [t[3] for t in sched._timers if t[2] == "stop"].count("db") == 1


def test_a_stop_with_run_still_bounds_the_wait_for_run_then_stop_again():
    """With a run: the wait for it is bounded by stop_timeout, stop() then gets its own."""
    sched = running({"w": ()}, w={"has_run": True})
    actions = sched.request_shutdown(1.0)
    assert actions == [CancelRun("w", "requested")]
    assert sched.next_deadline() == 11.0
    assert sched.run_finished("w", 3.0) == [StopComponent("w", 13.0)]
    assert sched.next_deadline() == 13.0  # the wait's timer is stale now
