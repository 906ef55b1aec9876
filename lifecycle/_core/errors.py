"""The exceptions lifecycle raises.

The tree::

    LifecycleError(Exception)
     ├── ConfigError(LifecycleError, ValueError)   the declaration is invalid
     │    ├── CycleError                           components depend on each other in a loop
     │    ├── UnknownDependency                    depends_on names nothing registered
     │    ├── DuplicateComponent                   two components share a name
     │    └── NotAComponent(ConfigError, TypeError) nothing lifecycle can start, run or stop
     ├── StartupError                              a component failed to start
     ├── DependencyFailed                          not started: a dependency failed to start
     ├── DeadlineExceeded(LifecycleError, TimeoutError)  work was cut at a deadline
     ├── HTTPError(LifecycleError, ValueError)     a request refused by the HTTP/1.1 parser
     ├── Refused                                   an InFlight tracker is closed
     └── InvalidTransition(LifecycleError, RuntimeError)  an illegal state change

    Cancelled(BaseException)                       raised by a cancelled token

``Cancelled`` sits outside ``LifecycleError`` and derives from
``BaseException`` on purpose, like ``asyncio.CancelledError`` and
``trio.Cancelled``: it is a *control-flow* signal, not an error, and worker
loops are full of ``except Exception:`` blocks written to keep a loop alive
through bad input. If ``Cancelled`` were an ``Exception`` those blocks would
swallow shutdown and the worker would never stop. Catch it by name when you
mean it (``except lifecycle.Cancelled``).

Two questions are asked of what a component's call raised, by the
scheduler and the runners alike, and answered here once:

* `is_cancellation`: did the call end because its token was cancelled?
  True for `Cancelled`, for ``asyncio.CancelledError``, and for an exception
  group (an ``asyncio.TaskGroup``'s, say) whose every leaf is one of those.
* `is_deadline_cut`: was work cut at a deadline? True for `DeadlineExceeded`
  and for a group holding one. A plain ``TimeoutError`` (a client library's
  socket timeout) is an ordinary error, not a cut.

Every message names the component and says what to do.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

__all__ = [
    "Cancelled",
    "ConfigError",
    "CycleError",
    "DeadlineExceeded",
    "DependencyFailed",
    "DuplicateComponent",
    "InvalidTransition",
    "LifecycleError",
    "NotAComponent",
    "StartupError",
    "UnknownDependency",
    "cut_of",
    "describe_error",
    "is_cancellation",
    "is_deadline_cut",
    "unlogged",
]


def describe_error(error: BaseException) -> str:
    """``"Type: message"`` for a log line or a report, whatever the exception's ``__str__`` does.

    An exception of a third-party library whose ``__str__`` raises (or
    returns something that is not a str) must not break a shutdown: its
    ``repr`` is used instead, and failing that a placeholder.

    Example:
        >>> describe_error(OSError("no database"))
        'OSError: no database'
        >>> class Odd(Exception):
        ...     def __str__(self): raise RuntimeError("broken")
        >>> describe_error(Odd()).startswith("Odd: <str() failed")
        True
    """
    name = type(error).__name__
    try:
        text = str(error)
        if isinstance(text, str):
            return f"{name}: {text}"
    except Exception:  # noqa: BLE001, S110 - the fallbacks below say so
        pass
    try:
        shown = object.__repr__(error)
    except Exception:  # noqa: BLE001 - nothing more to try
        shown = name
    return f"{name}: <str() failed; {shown}>"


class LifecycleError(Exception):
    """Base class of every error lifecycle raises (except `Cancelled`).

    Example:
        >>> issubclass(lifecycle.ConfigError, lifecycle.LifecycleError)
        True
    """


class ConfigError(LifecycleError, ValueError):
    """The declaration of the app is invalid; nothing was started.

    Subclasses `ValueError`, so ``except ValueError`` catches it too.

    Example:
        >>> class Part:
        ...     def start(self, token): pass
        >>> app = lifecycle.App("shop")
        >>> _ = app.add(Part(), name="api", depends_on=["db"])
        >>> try:
        ...     app.start_order()
        ... except lifecycle.ConfigError as error:
        ...     print(type(error).__name__)
        UnknownDependency
    """


class CycleError(ConfigError):
    """Components depend on each other in a loop.

    Attributes:
        cycle: the names around the loop, in dependency order, the first name
            repeated at the end: ``["api", "cache", "api"]`` means *api depends
            on cache, which depends on api*.

    Example:
        >>> class Part:
        ...     def start(self, token): pass
        >>> app = lifecycle.App("shop")
        >>> _ = app.add(Part(), name="api", depends_on=["cache"])
        >>> _ = app.add(Part(), name="cache", depends_on=["api"])
        >>> try:
        ...     app.start_order()
        ... except lifecycle.CycleError as error:
        ...     print(error.cycle)
        ['api', 'cache', 'api']
    """

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = list(cycle)
        drawn = " -> ".join(self.cycle)
        super().__init__(
            f"dependency cycle: {drawn} (each depends on the next); "
            f"remove one of these depends_on links to break the loop"
        )


class UnknownDependency(ConfigError):
    """A component depends on a name that is not registered.

    Attributes:
        component: the component that declared the dependency.
        dependency: the name it asked for.
        suggestion: the closest registered name, or None.

    Example:
        >>> class Part:
        ...     def start(self, token): pass
        >>> app = lifecycle.App("shop")
        >>> _ = app.add(Part(), name="database")
        >>> _ = app.add(Part(), name="api", depends_on=["databse"])
        >>> try:
        ...     app.start_order()
        ... except lifecycle.UnknownDependency as error:
        ...     print(error.component, error.dependency, error.suggestion)
        api databse database
    """

    def __init__(
        self,
        component: str,
        dependency: str,
        registered: list[str],
        suggestion: str | None,
    ) -> None:
        self.component = component
        self.dependency = dependency
        self.suggestion = suggestion
        hint = f"did you mean {suggestion!r}? " if suggestion else ""
        known = ", ".join(sorted(registered)) or "none"
        super().__init__(
            f"component {component!r} depends on {dependency!r}, which is not registered "
            f"({hint}registered: {known}); add it with app.add(...) or fix the name"
        )


class DuplicateComponent(ConfigError):
    """Two components were registered under the same name.

    Attributes:
        name: the name registered twice.

    Example:
        >>> class Part:
        ...     def start(self, token): pass
        >>> app = lifecycle.App("shop")
        >>> _ = app.add(Part(), name="db")
        >>> try:
        ...     app.add(Part(), name="db")
        ... except lifecycle.DuplicateComponent as error:
        ...     print(error.name)
        db
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"a component named {name!r} is already registered; "
            f"pass a different name= to app.add(...)"
        )


class NotAComponent(ConfigError, TypeError):
    """The object given to ``app.add`` cannot be a component.

    It has none of ``start``, ``run``, ``stop`` of its own; or it is a class,
    a coroutine or generator object, a thread, process, executor or asyncio
    task; or a hook is not callable. Subclasses `ConfigError` and `TypeError`.
    The message says what to register instead.

    Example:
        >>> try:
        ...     lifecycle.App("shop").add(object())
        ... except lifecycle.NotAComponent:
        ...     print("refused")
        refused
    """


class StartupError(LifecycleError):
    """A component failed to start; what had started was stopped again.

    Attributes:
        component: the name of the component whose start failed (or timed out).
        exit_code: the exit code the app finished with.

    Example:
        >>> class Broken:
        ...     def start(self, token):
        ...         raise OSError("no database")
        >>> app = lifecycle.App("shop")
        >>> _ = app.add(Broken(), name="db")
        >>> try:
        ...     lifecycle.ThreadedRunner(app, signals=None).start()
        ... except lifecycle.StartupError as error:
        ...     print(error.component, error.exit_code)
        db 1
    """

    def __init__(self, component: str, message: str, exit_code: int = 1) -> None:
        self.component = component
        self.exit_code = exit_code
        super().__init__(message)


class DependencyFailed(LifecycleError):
    """A component was not started because a dependency of it failed to start.

    Only non-critical components end up here: when a non-critical component's
    ``start`` fails and no critical component depends on it, the app runs
    without it and without everything that depends on it. Those dependents
    stay NEW (they never began starting) with this as their ``.error``.

    Attributes:
        component: the component that was not started.
        dependency: its dependency that failed or was itself not started.
        cause: the component whose ``start`` failed, at the root of the chain.

    Example::

        info = app.components["warm_cache"]
        if info.state is lifecycle.ComponentState.NEW and info.failed:
            print(info.error)
            # component 'warm_cache' was not started: it depends on 'cache', which
            # failed to start (ConnectionRefusedError: ...); fix 'cache' or remove
            # the dependency
    """

    def __init__(self, component: str, dependency: str, cause: str, why: str) -> None:
        self.component = component
        self.dependency = dependency
        self.cause = cause
        if dependency == cause:
            what = f"{dependency!r}, which failed to start"
        else:
            what = f"{dependency!r}, which was not started because {cause!r} failed to start"
        super().__init__(
            f"component {component!r} was not started: it depends on {what} ({why}); "
            f"fix {cause!r} or remove the dependency"
        )


class DeadlineExceeded(LifecycleError, TimeoutError):
    """Work was cut at a deadline: a server's stop ended requests that had not finished.

    Raised by the server components' ``stop`` after they cut what was still
    running, so that the exit code says so (TIMEOUT) and the report names it.

    Args:
        component: the component that cut.
        cut: what was cut.
        what: the message's wording of what was cut (``"cut 2 unfinished
            request(s)"``); a consumer gives back messages.
        logged: whether the cut was logged already, where it happened (the
            runner then logs no second entry for it).

    Attributes:
        cut: what was cut, oldest first (``["GET /slow (12.3s)"]``).
        logged: as given.

    Example:
        >>> error = lifecycle.DeadlineExceeded("api", ["GET /slow (12.3s)"])
        >>> isinstance(error, TimeoutError), error.cut
        (True, ['GET /slow (12.3s)'])
        >>> print(error)  # doctest: +ELLIPSIS
        'api' cut 1 unfinished request(s) at its stop deadline (GET /slow (12.3s)); raise ...
    """

    # Class defaults: a subclass may not call this __init__.
    logged: bool = False
    cut: list[str] | tuple[str, ...] = ()

    def __init__(
        self,
        component: str,
        cut: list[str],
        *,
        what: str = "cut {n} unfinished request(s)",
        logged: bool = False,
    ) -> None:
        self.cut = list(cut)
        self.logged = logged
        shown = ", ".join(self.cut[:5]) + (" ..." if len(self.cut) > 5 else "")
        super().__init__(
            f"{component!r} {what.format(n=len(self.cut))} at its stop deadline "
            f"({shown}); raise its stop_timeout or make the handlers honour "
            f"lifecycle.current_token()"
        )


class InvalidTransition(LifecycleError, RuntimeError):
    """A component or the app was asked to move between states illegally.

    Attributes:
        subject: the component name, or ``"app"``.
        from_state: the current state.
        to_state: the state that was asked for.

    Example:
        >>> from lifecycle._core.states import check_component_move
        >>> try:
        ...     check_component_move("db", lifecycle.ComponentState.NEW,
        ...                          lifecycle.ComponentState.STOPPED)
        ... except lifecycle.InvalidTransition as error:
        ...     print(error.subject, error.from_state, error.to_state)
        component 'db' NEW STOPPED
    """

    def __init__(self, subject: str, from_state: object, to_state: object, hint: str) -> None:
        self.subject = subject
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(f"{subject}: cannot move from {from_state} to {to_state}; {hint}")


class Cancelled(BaseException):
    """Raised by `CancelToken.raise_if_cancelled` and `cancel_scope` once a token is cancelled.

    Derives from `BaseException`, not `Exception`, so that a worker's
    ``except Exception:`` cannot swallow a shutdown (see the module docstring).

    Attributes:
        reason: why the token was cancelled (``"deadline exceeded"`` for deadlines).

    Example:
        >>> source = lifecycle.CancelSource()
        >>> source.cancel("shutdown")
        >>> try:
        ...     source.token.raise_if_cancelled()
        ... except lifecycle.Cancelled as stop:
        ...     print(stop.reason, isinstance(stop, Exception))
        shutdown False
    """

    def __init__(self, reason: str = "cancelled") -> None:
        self.reason = reason
        super().__init__(reason)


def _leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions inside ``error``: itself, or every leaf of a (nested) group."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _is_one_cancellation(error: BaseException) -> bool:
    if isinstance(error, Cancelled):
        return True
    # asyncio's CancelledError, recognised without importing asyncio (the core
    # is sans-I/O): if asyncio was never imported, nothing can have raised it.
    # Not concurrent.futures.CancelledError: an Exception a Future's result()
    # raises, which says another piece of work was cancelled, not this call.
    asyncio_exceptions = sys.modules.get("asyncio.exceptions")
    return asyncio_exceptions is not None and isinstance(error, asyncio_exceptions.CancelledError)


def is_cancellation(error: BaseException) -> bool:
    """Whether ``error`` says only that a call was cancelled, and nothing failed.

    True for `Cancelled`, for ``asyncio.CancelledError``, and for an exception
    group whose every leaf (through nested groups) is one of those — what an
    ``asyncio.TaskGroup`` raises when all its children honoured the token. A
    group mixing a cancellation with a real error is a failure: False.

    Example::

        try:
            worker.run(token)
        except BaseException as error:
            if not is_cancellation(error):
                log.error("run() crashed", exc_info=error)
    """
    return all(_is_one_cancellation(leaf) for leaf in _leaves(error))


def is_deadline_cut(error: BaseException) -> bool:
    """Whether ``error`` says that work was cut at a deadline (exit code TIMEOUT).

    True for `DeadlineExceeded` (a server's ``stop`` cut unfinished requests)
    and for an exception group holding one anywhere, whatever else it holds:
    something was cut, and a cut outranks a failure, as TIMEOUT outranks
    FAILED in the exit code. A plain ``TimeoutError`` — a client library's
    socket timeout — is an ordinary failure: False.

    Example::

        is_deadline_cut(DeadlineExceeded("api", ["GET /slow (9.0s)"]))  # True
        is_deadline_cut(TimeoutError("redis: timed out"))  # False
    """
    return any(isinstance(leaf, DeadlineExceeded) for leaf in _leaves(error))


def cut_of(error: BaseException | None) -> list[str]:
    """What ``error`` says was cut: the ``cut`` of every `DeadlineExceeded` in it (groups too).

    Example:
        >>> group = ExceptionGroup("stop", [DeadlineExceeded("a", ["GET /x (1.0s)"]), OSError()])
        >>> cut_of(group)
        ['GET /x (1.0s)']
    """
    if error is None:
        return []
    return [
        str(label)
        for leaf in _leaves(error)
        if isinstance(leaf, DeadlineExceeded)
        for label in getattr(leaf, "cut", ())
    ]


def unlogged(error: BaseException) -> BaseException | None:
    """``error`` less the cuts already logged where they happened; None if nothing is left.

    A cut is logged once, by the server that cut (`DeadlineExceeded.logged`);
    an exception group of a stop that joined several (an ``asyncio.TaskGroup``)
    keeps only what was not said yet.

    Example:
        >>> said = DeadlineExceeded("a", ["GET /x (1.0s)"], logged=True)
        >>> unlogged(said) is None
        True
        >>> rest = unlogged(ExceptionGroup("stop", [said, OSError("disk")]))
        >>> [type(e).__name__ for e in rest.exceptions]
        ['OSError']
    """

    def said(leaf: BaseException) -> bool:
        return isinstance(leaf, DeadlineExceeded) and leaf.logged

    if said(error):
        return None
    if isinstance(error, BaseExceptionGroup):
        _, rest = error.split(said)
        return rest
    return error
