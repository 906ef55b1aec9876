"""Component and app states: exactly the documented moves, and their error messages.

The legal moves (transcribed in `tests.fakes`): a component goes NEW ->
STARTING -> RUNNING -> STOPPING -> STOPPED, and to FAILED from STARTING,
RUNNING or STOPPING; with a restart policy RUNNING -> RESTARTING -> RUNNING,
STOPPING or FAILED; an app goes NEW -> STARTING -> RUNNING -> DRAINING ->
STOPPING -> STOPPED | FAILED, and STARTING -> STOPPING for a rollback or abort.
"""

from __future__ import annotations

import itertools

import pytest

from lifecycle import (
    AppState,
    ComponentState,
    ExitCode,
    InvalidTransition,
    LifecycleError,
)
from lifecycle._core.states import check_app_move, check_component_move
from tests.fakes import LEGAL_APP_MOVES, LEGAL_COMPONENT_MOVES

C = ComponentState
A = AppState

# A restart policy adds RESTARTING: run ended, the next run is pending.
RESTART_MOVES = {
    (C.RUNNING, C.RESTARTING),
    (C.RESTARTING, C.RUNNING),
    (C.RESTARTING, C.STOPPING),
    (C.RESTARTING, C.FAILED),
}
COMPONENT_MOVES = LEGAL_COMPONENT_MOVES | RESTART_MOVES
APP_MOVES = LEGAL_APP_MOVES


@pytest.mark.parametrize(("before", "after"), list(itertools.product(C, C)))
def test_component_moves_are_exactly_the_drawn_ones(before, after):
    """A component move is legal exactly when it is one of the documented moves."""
    if (before, after) in COMPONENT_MOVES:
        check_component_move("db", before, after)
    else:
        with pytest.raises(InvalidTransition):
            check_component_move("db", before, after)


@pytest.mark.parametrize(("before", "after"), list(itertools.product(A, A)))
def test_app_moves_are_exactly_the_drawn_ones(before, after):
    """An app move is legal exactly when it is one of the documented moves."""
    if (before, after) in APP_MOVES:
        check_app_move("app", before, after)
    else:
        with pytest.raises(InvalidTransition):
            check_app_move("app", before, after)


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        (C.NEW, C.RUNNING, "from NEW to RUNNING; a new component can only start"),
        (
            C.STARTING,
            C.STOPPING,
            "from STARTING to STOPPING; a starting component can only finish starting or fail",
        ),
        (
            C.RUNNING,
            C.STOPPED,
            "from RUNNING to STOPPED; a running component can only begin stopping, fail or restart",
        ),
        (
            C.STOPPING,
            C.RUNNING,
            "from STOPPING to RUNNING; a stopping component can only finish stopping or fail",
        ),
        (
            C.RESTARTING,
            C.STOPPED,
            "from RESTARTING to STOPPED; a restarting component can only run again, "
            "begin stopping or fail",
        ),
        (
            C.STOPPED,
            C.STARTING,
            "from STOPPED to STARTING; a stopped component is final; "
            "register a new component to run again",
        ),
        (
            C.FAILED,
            C.STARTING,
            "from FAILED to STARTING; a failed component is final; "
            "register a new component to run again",
        ),
    ],
)
def test_illegal_component_move_message_names_component_and_way_out(before, after, message):
    """InvalidTransition names the component, both states and what the state allows."""
    with pytest.raises(InvalidTransition) as caught:
        check_component_move("db", before, after)
    assert str(caught.value) == f"component 'db': cannot move {message}"
    assert (caught.value.from_state, caught.value.to_state) == (before, after)
    assert caught.value.subject == "component 'db'"


@pytest.mark.parametrize(
    ("before", "after", "hint"),
    [
        (A.NEW, A.RUNNING, "a new app can only start"),
        (
            A.STARTING,
            A.DRAINING,
            "a starting app can only finish starting or stop (rollback/abort)",
        ),
        (A.RUNNING, A.STOPPING, "a running app can only begin draining"),
        (A.DRAINING, A.RUNNING, "a draining app can only begin stopping"),
        (A.STOPPING, A.RUNNING, "a stopping app can only finish"),
        (A.STOPPED, A.STARTING, "an App runs once; create a new App to run again"),
        (A.FAILED, A.STARTING, "an App runs once; create a new App to run again"),
    ],
)
def test_illegal_app_move_message_names_app_and_way_out(before, after, hint):
    """InvalidTransition for the app names it, both states and what the state allows."""
    with pytest.raises(InvalidTransition) as caught:
        check_app_move("shop", before, after)
    assert str(caught.value) == f"app 'shop': cannot move from {before} to {after}; {hint}"


def test_staying_in_a_state_is_no_move():
    """Moving to the current state is illegal too: nothing moves to itself."""
    with pytest.raises(InvalidTransition, match="from RUNNING to RUNNING"):
        check_component_move("db", C.RUNNING, C.RUNNING)


def test_invalid_transition_is_a_runtime_and_lifecycle_error():
    """InvalidTransition can be caught as RuntimeError or LifecycleError."""
    assert issubclass(InvalidTransition, RuntimeError)
    assert issubclass(InvalidTransition, LifecycleError)


def test_states_print_as_their_names():
    """str() of a state is its name, as in the messages and logs."""
    assert (str(C.STOPPING), str(A.DRAINING)) == ("STOPPING", "DRAINING")


def test_exit_codes_have_the_documented_values():
    """ExitCode is an IntEnum: OK 0, FAILED 1, CONFIG 2, TIMEOUT 3."""
    assert [(code.name, int(code)) for code in ExitCode] == [
        ("OK", 0),
        ("FAILED", 1),
        ("CONFIG", 2),
        ("TIMEOUT", 3),
    ]


def test_states_hash_by_identity_in_c_and_still_work_as_keys():
    """Members hash as the objects they are (the scheduler's hot lookups), keys as before."""
    for member in [*ComponentState, *AppState]:
        assert hash(member) == object.__hash__(member)
        assert type(member).__hash__ is object.__hash__  # type: ignore[comparison-overlap]
    table = {state: state.value for state in ComponentState}
    assert table[ComponentState.STOPPED] == "stopped"
    assert ComponentState("running") in {ComponentState.RUNNING}
    assert {AppState["STOPPING"]: 1}[AppState.STOPPING] == 1
