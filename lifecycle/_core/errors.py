"""The exceptions lifecycle raises.

The tree::

    LifecycleError(Exception)
     ├── ConfigError(LifecycleError, ValueError)   the declaration is invalid
     │    ├── CycleError                           components depend on each other in a loop
     │    ├── UnknownDependency                    depends_on names nothing registered
     │    ├── DuplicateComponent                   two components share a name
     │    └── NotAComponent(ConfigError, TypeError) no start, run or stop to call
     ├── StartupError                              a component failed to start
     ├── DeadlineExceeded(LifecycleError, TimeoutError)  work was cut at a deadline
     └── InvalidTransition(LifecycleError, RuntimeError)  an illegal state change

    Cancelled(BaseException)                       raised by a cancelled token

``Cancelled`` sits outside ``LifecycleError`` and derives from
``BaseException`` on purpose, like ``asyncio.CancelledError`` and
``trio.Cancelled``: it is a *control-flow* signal, not an error, and worker
loops are full of ``except Exception:`` blocks written to keep a loop alive
through bad input. If ``Cancelled`` were an ``Exception`` those blocks would
swallow shutdown and the worker would never stop. Catch it by name when you
mean it (``except lifecycle.Cancelled``).

Every message names the component and says what to do.
"""

from __future__ import annotations

__all__ = [
    "Cancelled",
    "ConfigError",
    "CycleError",
    "DeadlineExceeded",
    "DuplicateComponent",
    "InvalidTransition",
    "LifecycleError",
    "NotAComponent",
    "StartupError",
    "UnknownDependency",
]


class LifecycleError(Exception):
    """Base class of every error lifecycle raises (except `Cancelled`)."""


class ConfigError(LifecycleError, ValueError):
    """The declaration of the app is invalid; nothing was started.

    Subclasses `ValueError`, so ``except ValueError`` catches it too.
    """


class CycleError(ConfigError):
    """Components depend on each other in a loop.

    Attributes:
        cycle: the names around the loop, in dependency order, the first name
            repeated at the end: ``["api", "cache", "api"]`` means *api depends
            on cache, which depends on api*.
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
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"a component named {name!r} is already registered; "
            f"pass a different name= to app.add(...)"
        )


class NotAComponent(ConfigError, TypeError):
    """The object given to ``app.add`` has none of ``start``, ``run``, ``stop``.

    Subclasses `ConfigError` and `TypeError`. The message says what to
    register instead (an instance, a decorated function).
    """


class StartupError(LifecycleError):
    """A component failed to start; what had started was stopped again.

    Attributes:
        component: the name of the component whose start failed (or timed out).
        exit_code: the exit code the app finished with.
    """

    def __init__(self, component: str, message: str, exit_code: int = 1) -> None:
        self.component = component
        self.exit_code = exit_code
        super().__init__(message)


class DeadlineExceeded(LifecycleError, TimeoutError):
    """Work was cut at a deadline: a server's stop ended requests that had not finished.

    Raised by the server components' ``stop`` after they cut what was still
    running, so that the exit code says so (TIMEOUT) and the report names it.

    Attributes:
        cut: what was cut, oldest first (``["GET /slow (12.3s)"]``).
    """

    def __init__(self, component: str, cut: list[str]) -> None:
        self.cut = list(cut)
        shown = ", ".join(self.cut[:5]) + (" ..." if len(self.cut) > 5 else "")
        super().__init__(
            f"{component!r} cut {len(self.cut)} unfinished request(s) at its stop deadline "
            f"({shown}); raise its stop_timeout or make the handlers honour "
            f"lifecycle.current_token()"
        )


class InvalidTransition(LifecycleError, RuntimeError):
    """A component or the app was asked to move between states illegally.

    Attributes:
        subject: the component name, or ``"app"``.
        from_state: the current state.
        to_state: the state that was asked for.
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
    """

    def __init__(self, reason: str = "cancelled") -> None:
        self.reason = reason
        super().__init__(reason)
