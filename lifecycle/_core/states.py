"""Component and app states, and the moves between them. Pure.

Component::

    NEW ──► STARTING ──► RUNNING ──► STOPPING ──► STOPPED
               │          │  ▲  ▲       │
               │          ▼  │  │       │
               │       RESTARTING ──────┤   (a restart policy: run ended, next run pending)
               │            │           │
               └────────────┴───────────┴──► FAILED   (and from RUNNING)

RESTARTING goes back to RUNNING when the run begins again, to STOPPING when
the shutdown begins during the backoff (no restart then), or to FAILED when
the shutdown deadline passes before its stop phase.

App::

    NEW ──► STARTING ──► RUNNING ──► DRAINING ──► STOPPING ──► STOPPED | FAILED
               │                                     ▲
               └─────────────────────────────────────┘  (rollback or abort)
"""

from __future__ import annotations

import enum

from .errors import InvalidTransition

__all__ = ["AppState", "ComponentState", "ExitCode", "check_app_move", "check_component_move"]


class ComponentState(enum.Enum):
    """Where a component is in its life. Added in 0.1.

    Example:
        >>> class Part:
        ...     def start(self, token): pass
        >>> app = lifecycle.App("shop")
        >>> _ = app.add(Part(), name="worker")
        >>> app.components["worker"].state
        <ComponentState.NEW: 'new'>
    """

    NEW = "new"
    """Registered, not started yet. A component that will never start because
    a dependency failed to start stays NEW, with ``.error`` saying which (a
    failure needs a call that failed: FAILED comes only from STARTING,
    RUNNING or STOPPING)."""
    STARTING = "starting"
    """``start`` is running."""
    RUNNING = "running"
    """``start`` returned (and ``run``, if any, is running)."""
    RESTARTING = "restarting"
    """``run`` ended and its restart policy starts it again after a backoff
    (``.restarts`` counts them, ``.next_restart`` says when). Not ready: a
    critical component restarting makes the app unready until it runs
    again. Added in 0.3."""
    STOPPING = "stopping"
    """Its stop phase: ``run`` was asked to end, then ``stop`` is running."""
    STOPPED = "stopped"
    """Stopped cleanly. Final."""
    FAILED = "failed"
    """``start`` or ``stop`` raised or timed out, or ``run`` raised. Final;
    ``.error`` says why. A component that failed in ``run`` is still stopped."""

    def __str__(self) -> str:
        return self.name

    # Members are singletons compared by identity: hash them by identity too,
    # in C (Enum's own __hash__ hashes the name in Python, on every dict and
    # set lookup of the scheduler's hot path).
    __hash__ = object.__hash__


class AppState(enum.Enum):
    """Where the app is in its life. Added in 0.1.

    Example:
        >>> app = lifecycle.App("shop")
        >>> app.state
        <AppState.NEW: 'new'>
        >>> with lifecycle.ThreadedRunner(app, signals=None):
        ...     print(app.state)
        RUNNING
        >>> app.state
        <AppState.STOPPED: 'stopped'>
    """

    NEW = "new"
    """Components are being declared; nothing runs."""
    STARTING = "starting"
    """Starting components in dependency order."""
    RUNNING = "running"
    """Every component started; serving."""
    DRAINING = "draining"
    """Shutdown requested: readiness is off, nothing stopped yet (the drain delay)."""
    STOPPING = "stopping"
    """Stopping components in reverse dependency order (also a startup rollback)."""
    STOPPED = "stopped"
    """Finished with exit code OK. Final."""
    FAILED = "failed"
    """Finished with any other exit code. Final."""

    def __str__(self) -> str:
        return self.name

    __hash__ = object.__hash__  # as for ComponentState: identity, in C


_C = ComponentState
_COMPONENT_MOVES: dict[ComponentState, frozenset[ComponentState]] = {
    _C.NEW: frozenset({_C.STARTING}),
    _C.STARTING: frozenset({_C.RUNNING, _C.FAILED}),
    _C.RUNNING: frozenset({_C.STOPPING, _C.FAILED, _C.RESTARTING}),
    _C.RESTARTING: frozenset({_C.RUNNING, _C.STOPPING, _C.FAILED}),
    _C.STOPPING: frozenset({_C.STOPPED, _C.FAILED}),
    _C.STOPPED: frozenset(),
    _C.FAILED: frozenset(),
}
_COMPONENT_HINTS: dict[ComponentState, str] = {
    _C.NEW: "a new component can only start",
    _C.STARTING: "a starting component can only finish starting or fail",
    _C.RUNNING: "a running component can only begin stopping, fail or restart",
    _C.RESTARTING: "a restarting component can only run again, begin stopping or fail",
    _C.STOPPING: "a stopping component can only finish stopping or fail",
    _C.STOPPED: "a stopped component is final; register a new component to run again",
    _C.FAILED: "a failed component is final; register a new component to run again",
}

_A = AppState
_APP_MOVES: dict[AppState, frozenset[AppState]] = {
    _A.NEW: frozenset({_A.STARTING}),
    _A.STARTING: frozenset({_A.RUNNING, _A.STOPPING}),
    _A.RUNNING: frozenset({_A.DRAINING}),
    _A.DRAINING: frozenset({_A.STOPPING}),
    _A.STOPPING: frozenset({_A.STOPPED, _A.FAILED}),
    _A.STOPPED: frozenset(),
    _A.FAILED: frozenset(),
}
_APP_HINTS: dict[AppState, str] = {
    _A.NEW: "a new app can only start",
    _A.STARTING: "a starting app can only finish starting or stop (rollback/abort)",
    _A.RUNNING: "a running app can only begin draining",
    _A.DRAINING: "a draining app can only begin stopping",
    _A.STOPPING: "a stopping app can only finish",
    _A.STOPPED: "an App runs once; create a new App to run again",
    _A.FAILED: "an App runs once; create a new App to run again",
}


def check_component_move(name: str, current: ComponentState, target: ComponentState) -> None:
    """Raise `InvalidTransition` unless ``current -> target`` is legal for a component."""
    if target not in _COMPONENT_MOVES[current]:
        raise InvalidTransition(f"component {name!r}", current, target, _COMPONENT_HINTS[current])


def check_app_move(name: str, current: AppState, target: AppState) -> None:
    """Raise `InvalidTransition` unless ``current -> target`` is legal for an app."""
    if target not in _APP_MOVES[current]:
        raise InvalidTransition(f"app {name!r}", current, target, _APP_HINTS[current])


class ExitCode(enum.IntEnum):
    """The process exit code `run` returns: ``sys.exit(lifecycle.run(app))``. Added in 0.1.

    Besides these, ``128 + signum`` means a second signal forced the exit
    (130 for SIGINT, 143 for SIGTERM), like a shell reports a killed child.

    Example:
        >>> app = lifecycle.App("shop")
        >>> runner = lifecycle.ThreadedRunner(app, signals=None)
        >>> runner.start()
        >>> lifecycle.ExitCode(runner.stop("deploy"))
        <ExitCode.OK: 0>
        >>> int(lifecycle.ExitCode.TIMEOUT)
        3
    """

    OK = 0
    """Clean stop, including one asked for by SIGTERM."""
    FAILED = 1
    """A critical component (or one a critical component depends on) failed
    to start (error or start timeout), a critical one crashed in ``run``, or
    a ``stop`` raised — a plain ``TimeoutError`` included. A non-critical
    component's failure shows in the report, not in the code."""
    CONFIG = 2
    """The declaration is invalid (cycle, unknown dependency); nothing started."""
    TIMEOUT = 3
    """The shutdown ran past a stop timeout or the shutdown timeout and
    something was abandoned, or a server cut requests at its deadline (its
    ``stop`` raised `DeadlineExceeded`, alone or in an exception group).
    Wins over FAILED."""
