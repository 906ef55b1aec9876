"""Load an `App` from ``module:attribute`` and compute its plan: start waves and shutdown budget.

What the command line (``lifecycle run``, ``check``, ``graph``, ``k8s``) asks
of an application before running it, computed from its declaration alone:
nothing is started.

Example::

    >>> import lifecycle
    >>> from lifecycle._tools.plan import plan
    >>> app = lifecycle.App("shop", drain_delay=5, shutdown_timeout=30, stop_timeout=10)
    >>> db = app.add(object(), name="db", stop=lambda: None)
    >>> _ = app.add(object(), name="api", depends_on=[db], stop=lambda: None)
    >>> p = plan(app)
    >>> p.waves, p.stop_path, p.needed, p.overrun
    ((('db',), ('api',)), ('api', 'db'), 25.0, False)
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from typing import Any

import attrs

from .._core.drain import drain_bounds
from .._core.errors import ConfigError
from .._core.graph import critical_path
from .._runtime.app import App

__all__ = ["LoadError", "Plan", "load_app", "plan"]


class LoadError(ConfigError):
    """``module:attribute`` does not name an `App` (or a factory of one).

    A `ConfigError` (hence a `ValueError`): the message names the module, the
    attribute and what was found there, and says what to type instead.
    """


@attrs.frozen
class Plan:
    """What an app's declaration promises, before anything starts.

    Attributes:
        name: the app's name.
        start_order: every component, each after its dependencies.
        waves: the concurrent start waves: the names in one wave are
            independent of each other and start together, once the wave
            before has started.
        drain_min: the shortest drain delay (a fixed ``drain_delay``: itself).
        drain_max: the longest drain delay (a fixed ``drain_delay``: itself).
        stop_path: the chain of components whose stop timeouts add up to the
            longest wait, in stop order (each waits for the one before).
        stop_seconds: the sum of the stop budgets along ``stop_path``: a
            component's ``stop_timeout``, twice for one with both ``run`` and
            ``stop`` (``run`` is given its timeout to return, then ``stop``).
        shutdown_timeout: the app's bound on the whole shutdown.
        health: the health endpoint's ``(host, port)``, None without one.
        stop_waves: the concurrent stop waves, in stop order: wave 0 holds
            what nothing depends on; a name stops once every name depending
            on it has stopped.
        stop_budgets: the stop budget of each name on ``stop_path``, in order
            (they add up to ``stop_seconds``).
    """

    name: str
    start_order: tuple[str, ...]
    waves: tuple[tuple[str, ...], ...]
    drain_min: float
    drain_max: float
    stop_path: tuple[str, ...]
    stop_seconds: float
    shutdown_timeout: float
    health: tuple[str, int] | None
    stop_waves: tuple[tuple[str, ...], ...] = ()
    stop_budgets: tuple[float, ...] = ()

    @property
    def needed(self) -> float:
        """The worst-case shutdown: ``drain_max + stop_seconds``."""
        return self.drain_max + self.stop_seconds

    @property
    def overrun(self) -> bool:
        """Whether the worst case exceeds ``shutdown_timeout`` (the last stops would be cut)."""
        return self.needed > self.shutdown_timeout

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form, with ``needed`` and ``overrun``."""
        return {
            "name": self.name,
            "start_order": list(self.start_order),
            "waves": [list(w) for w in self.waves],
            "stop_waves": [list(w) for w in self.stop_waves],
            "drain_min": self.drain_min,
            "drain_max": self.drain_max,
            "stop_path": list(self.stop_path),
            "stop_budgets": list(self.stop_budgets),
            "stop_seconds": self.stop_seconds,
            "needed": self.needed,
            "shutdown_timeout": self.shutdown_timeout,
            "overrun": self.overrun,
            "health": None if self.health is None else list(self.health),
        }


def _stop_waves(
    order: tuple[str, ...], dependents: dict[str, tuple[str, ...]]
) -> tuple[tuple[str, ...], ...]:
    height: dict[str, int] = {}
    for name in reversed(order):
        height[name] = max((height[u] + 1 for u in dependents[name]), default=0)
    waves: list[list[str]] = [[] for _ in range(max(height.values(), default=-1) + 1)]
    for name in order:
        waves[height[name]].append(name)
    return tuple(tuple(w) for w in waves)


def plan(app: App) -> Plan:
    """The app's `Plan`, from its declaration (nothing is started).

    Raises:
        UnknownDependency, CycleError: the declaration is invalid (both are
            `ConfigError`; the message says what to change).

    Example::

        p = plan(app)
        if p.overrun:
            print(f"shutdown needs {p.needed:g}s but shutdown_timeout is {p.shutdown_timeout:g}s")
    """
    graph = app.graph()
    # The stop budgets App.plan uses (one source of truth), whatever the drain delay is.
    budget = app._stop_budget
    total, path = critical_path(graph, budget)
    low, high = drain_bounds(app.drain_delay)
    return Plan(
        name=app.name,
        start_order=graph.order,
        waves=graph.layers,
        drain_min=low,
        drain_max=high,
        stop_path=path,
        stop_seconds=float(total),
        shutdown_timeout=float(app.shutdown_timeout),
        health=app.health_address,
        stop_waves=_stop_waves(graph.order, dict(graph.dependents)),
        stop_budgets=tuple(float(budget(n)) for n in path),
    )


# -- loading ---------------------------------------------------------------------------

_EXAMPLE = "e.g. myservice.main:app or myservice.main:create_app"


def _where(error: BaseException) -> str:
    """`` (at FILE:LINE)`` for the innermost frame of ``error``'s traceback, or ``""``."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename}:{last.lineno})"


def _describe(value: object) -> str:
    """What a value is, for a message: ``a dict``, ``the module 'x'``, ``an int (3)``."""
    if inspect.ismodule(value):
        return f"the module {value.__name__!r}"
    if inspect.isclass(value):
        return f"the class {value.__module__}.{value.__qualname__}"
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{article} {kind} ({text})"


def _candidates(module: object) -> tuple[list[str], list[str]]:
    """The names in ``module`` holding Apps, and its public functions (possible factories)."""
    apps: list[str] = []
    factories: list[str] = []
    for key, value in sorted(vars(module).items()):
        if key.startswith("_"):
            continue
        if isinstance(value, App):
            apps.append(key)
        elif inspect.isfunction(value) and value.__module__ == getattr(module, "__name__", None):
            factories.append(key)
    return apps, factories


def _missing_hint(module_name: str, module: object) -> str:
    apps, factories = _candidates(module)
    if apps:
        return f"its Apps: {', '.join(apps)}; e.g. {module_name}:{apps[0]}"
    if factories:
        return (
            f"it holds no App; its functions (a factory returning an App would do): "
            f"{', '.join(factories)}"
        )
    return "it holds no App and no function"


def _import(module_name: str, spec: str) -> object:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise LoadError(
                f"cannot import {module_name!r} (from {spec!r}): no module named {missing!r} "
                f"in the current directory ({cwd}) or on sys.path; run from the directory "
                f"holding it, or set PYTHONPATH ({_EXAMPLE})"
            ) from None
        raise LoadError(
            f"importing {module_name!r} (from {spec!r}) failed: it imports {missing!r}, which "
            f"is not installed{_where(error)}; install it in this environment"
        ) from error
    except Exception as error:
        raise LoadError(
            f"importing {module_name!r} (from {spec!r}) raised {type(error).__name__}: "
            f"{error}{_where(error)}; fix the module so that it imports"
        ) from error


def _call(factory: Any, spec: str) -> object:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        required = [
            p.name
            for p in signature.parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if required:
            raise LoadError(
                f"{spec} is a callable that needs arguments ({', '.join(required)}); lifecycle "
                f"calls a factory with none: give them defaults, or point at an App or at a "
                f"zero-argument function returning one"
            )
    try:
        return factory()
    except ConfigError:
        raise
    except Exception as error:
        raise LoadError(
            f"calling {spec}() raised {type(error).__name__}: {error}{_where(error)}; "
            f"fix the factory so that it returns a lifecycle.App"
        ) from error


def load_app(spec: str) -> App:
    """The `App` that ``spec`` (``module:attribute``) names, or that the factory there returns.

    The current directory is put on ``sys.path`` first, as gunicorn and
    uvicorn do, so that ``lifecycle run service:app`` finds ``./service.py``.
    The attribute may be dotted (``module:holder.app``). When it is not an App
    but a callable, it is called with no arguments and must return one.

    Raises:
        LoadError: the spec is malformed, the module cannot be imported, the
            attribute is missing, or it is (or returns) something other than
            an App; the message says what was found and what to type.
        ConfigError: the factory itself raised one (a duplicate component).

    Example::

        app = load_app("myservice.main:app")
    """
    module_name, colon, attribute = spec.partition(":")
    module_name, attribute = module_name.strip(), attribute.strip()
    if not colon or not module_name or not attribute:
        raise LoadError(
            f"expected MODULE:ATTRIBUTE naming a lifecycle.App or a function returning one, "
            f"got {spec!r} ({_EXAMPLE})"
        )
    module = _import(module_name, spec)
    value: object = module
    walked: list[str] = []
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            owner = f"{module_name}.{'.'.join(walked)}" if walked else module_name
            where = getattr(module, "__file__", None) or module_name
            hint = _missing_hint(module_name, module) if not walked else "check the name"
            raise LoadError(
                f"{owner!r} ({where}) has no attribute {part!r} (from {spec!r}); {hint}"
            ) from None
        walked.append(part)
    if isinstance(value, App):
        return value
    if inspect.isclass(value) and issubclass(value, App):
        raise LoadError(
            f"{spec} is the class {value.__qualname__} itself, not an App; point at an "
            f"instance (app = lifecycle.App('name', ...)) or at a function returning one"
        )
    if inspect.isclass(value) or not callable(value):
        raise LoadError(
            f"{spec} is {_describe(value)}, not a lifecycle.App; point at an App "
            f"(app = lifecycle.App(...)) or at a zero-argument function returning one"
        )
    made = _call(value, spec)
    if isinstance(made, App):
        return made
    if inspect.iscoroutine(made):
        made.close()
        raise LoadError(
            f"{spec} is an async function; lifecycle calls the factory before any event loop "
            f"runs: make it a plain def returning the App"
        )
    raise LoadError(
        f"{spec}() returned {_describe(made)}, not a lifecycle.App; make the factory "
        f"return the App it builds"
    )
