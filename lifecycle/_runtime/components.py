"""Turn what users register into one internal shape: start / run / stop / ready.

Three things can be registered:

* an object with any of ``start(token)``, ``run(token)``, ``stop(token)`` —
  plain or ``async def`` — and optionally ``ready() -> bool``; or any object
  with explicit hooks, ``app.add(pool, start=pool.open, stop=pool.close)``,
  for methods with other names;
* a *worker* function ``fn(token)`` or ``async fn(token)``: its body is ``run``;
* a *resource* generator (or async generator) function: the code before
  ``yield`` is ``start``, the code after it is ``stop`` (the lifespan style).

Which parameter receives the token, for every one of these callables:

* a parameter annotated ``CancelToken`` (``CancelToken | None``,
  ``Optional[CancelToken]``, ``lifecycle.CancelToken``, and their string forms
  under ``from __future__ import annotations``), positional or keyword-only,
  with or without a default — so ``stop(self, token: CancelToken | None = None)``
  gets it; otherwise
* the first parameter, if it is required (positional, no default) — so
  ``stop(self, token)`` gets it;
* nothing else: ``start(self, paused=False)``, ``stop(self, token=None)``
  (optional and not annotated), ``stop(self, *args)`` and a builtin whose
  signature cannot be read are called with no argument. Objects such as pools
  with a ``close``-like ``stop()`` need no wrapper.

A callable that needs more than that (two required parameters, a required
keyword-only one) is a `ConfigError` at ``add``, not a ``TypeError`` at start.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import types
import typing
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, Literal

import attrs

from .._core.errors import ConfigError, NotAComponent
from .._core.tokens import CancelSource, CancelToken

__all__ = ["Call", "Component", "normalize", "resource", "worker"]

Phase = Literal["start", "run", "stop"]
PHASES: tuple[Phase, ...] = ("start", "run", "stop")


@attrs.frozen
class Call:
    """One of a component's phases, ready to call with a token."""

    fn: Callable[..., Any]
    is_async: bool
    takes_token: bool

    def args(self, token: CancelToken) -> tuple[CancelToken, ...]:
        """The positional arguments to call ``fn`` with."""
        return (token,) if self.takes_token else ()


@attrs.define(eq=False)
class Component:
    """A registered component in its internal shape."""

    name: str
    obj: object
    start: Call | None
    run: Call | None
    stop: Call | None
    ready: Callable[[], bool] | None
    kind: Literal["object", "worker", "resource"]
    driver: _GeneratorResource | _AsyncGeneratorResource | None = None

    @property
    def is_async(self) -> bool:
        """Whether any phase is a coroutine (``"auto"`` then picks asyncio)."""
        return any(c is not None and c.is_async for c in (self.start, self.run, self.stop))

    def phase(self, phase: Phase) -> Call:
        """The call for ``phase`` (it must exist)."""
        call = {"start": self.start, "run": self.run, "stop": self.stop}[phase]
        assert call is not None, f"{self.name} has no {phase}"
        return call


# -- which parameter receives the token ----------------------------------------------

_P = inspect.Parameter
_UNIONS: tuple[object, ...] = (typing.Union, types.UnionType, typing.Annotated)


def _namespace(fn: Callable[..., Any]) -> dict[str, Any]:
    """The globals that ``fn``'s string annotations were written against."""
    target: Any = fn
    while True:
        target = inspect.unwrap(target)
        if isinstance(target, functools.partial):
            target = target.func
        elif inspect.ismethod(target):
            target = target.__func__
        else:
            break
    found = getattr(target, "__globals__", None)
    if found is None:  # a callable instance: its class's __call__
        found = getattr(type(target).__call__, "__globals__", None)
    return found if isinstance(found, dict) else {}


def _is_token_type(annotation: object) -> bool:
    if annotation is CancelToken:
        return True
    if typing.get_origin(annotation) in _UNIONS or isinstance(annotation, types.UnionType):
        return any(_is_token_type(arg) for arg in typing.get_args(annotation))
    return False


def _annotates_token(annotation: object, fn: Callable[..., Any]) -> bool:
    """Whether ``annotation`` is ``CancelToken`` (or a union or string naming it)."""
    # A quoted annotation under ``from __future__ import annotations`` is a string of a
    # string: two evaluations at most.
    for _ in range(2):
        if not isinstance(annotation, str):
            break
        text = annotation
        try:
            # Evaluated as typing.get_type_hints does: the annotation is the user's own code.
            annotation = eval(text, _namespace(fn))  # noqa: S307
        except Exception:  # noqa: BLE001 - e.g. a name imported only for type checkers
            return any(w.split(".")[-1] == "CancelToken" for w in re.findall(r"[\w.]+", text))
    return _is_token_type(annotation)


def _token_parameter(fn: Callable[..., Any], where: str) -> tuple[bool, str | None]:
    """Whether ``fn`` takes the token, and the keyword to pass it by (None: positionally).

    Raises:
        ConfigError: ``fn`` has required parameters the token cannot fill.
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        # A builtin without a readable signature was not written for lifecycle: no token.
        return False, None
    positional = [p for p in params if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)]
    first = positional[0] if positional else None
    fillable = [
        p
        for p in params
        if p is first
        or p.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)
        or (p.kind is _P.VAR_POSITIONAL and first is None)
    ]
    token = next((p for p in fillable if _annotates_token(p.annotation, fn)), None)
    if token is None and first is not None and first.default is _P.empty:
        token = first
    required = [p for p in positional if p.default is _P.empty]
    others = [p for p in required if p is not token]
    if len(required) > 1:
        names = ", ".join(p.name for p in required)
        raise ConfigError(
            f"{where} takes {len(required)} required arguments ({names}); lifecycle passes "
            f"one, the CancelToken, or none: give the others defaults"
        )
    keyword_only = [p for p in params if p.kind is _P.KEYWORD_ONLY and p.default is _P.empty]
    unfilled = next(iter(others + [p for p in keyword_only if p is not token]), None)
    if unfilled is not None:
        kind = "keyword-only parameter" if unfilled.kind is _P.KEYWORD_ONLY else "parameter"
        raise ConfigError(
            f"{where} has a required {kind} {unfilled.name!r}; lifecycle can pass only the "
            f"token (to the first parameter, or one annotated CancelToken): give "
            f"{unfilled.name!r} a default"
        )
    if token is None:
        return False, None
    by_keyword = token.kind is _P.KEYWORD_ONLY or (
        token is not first and token.kind is not _P.VAR_POSITIONAL
    )
    return True, token.name if by_keyword else None


def _call(fn: Callable[..., Any], where: str) -> Call:
    takes_token, keyword = _token_parameter(fn, where)
    target = fn
    if keyword is not None:

        @functools.wraps(fn)
        def target(token: CancelToken) -> Any:
            return fn(**{keyword: token})

    return Call(target, is_async=inspect.iscoroutinefunction(fn), takes_token=takes_token)


# -- what can be registered -----------------------------------------------------------


def describe(obj: object) -> str:
    """A short readable name for an object: its function or class name."""
    name = getattr(obj, "__name__", None)
    if isinstance(name, str) and not isinstance(obj, type):
        return name
    return type(obj).__name__.lower() if not isinstance(obj, type) else obj.__name__


def _called_function(obj: object, name: str) -> str | None:
    """The message for a class, a coroutine or a generator object: the thing, not its call."""
    if isinstance(obj, type):
        cls = obj.__name__
        return f"{cls!r} is a class; register an instance: app.add({cls}()), not app.add({cls})"
    if inspect.iscoroutine(obj):
        obj.close()  # it will never run: closed, it warns of no "never awaited" coroutine
        what, decorator = "a coroutine object", "worker"
    elif inspect.isgenerator(obj) or inspect.isasyncgen(obj):
        what, decorator = (
            f"{'an async' if inspect.isasyncgen(obj) else 'a'} generator object",
            "resource",
        )
    else:
        return None
    fn = obj.__name__
    return (
        f"cannot add {name!r}: it is {what} ({fn}() was called); pass the function, not its "
        f"call: app.{decorator}({fn}), or decorate it with @app.{decorator}"
    )


# Objects whose start/run/stop mean something else, by (module, class): what they are
# and what to register instead. The modules are looked up, not imported: an instance of
# one of their classes means the module is loaded.
_TRAPS = (
    (
        "threading",
        "Thread",
        "a threading.Thread, whose start() and run() would each run its target; register "
        "its target as a worker: @app.worker def job(token): ..., or wrap it in an object "
        "with run(token)",
    ),
    (
        "multiprocessing.process",
        "BaseProcess",
        "a multiprocessing process, whose start() would spawn it and whose run() would run "
        "its target here too; register a worker that starts it, ends it when the token is "
        "cancelled and joins it: @app.worker def job(token): p.start(); "
        "token.on_cancel(p.terminate); p.join()",
    ),
    (
        "concurrent.futures",
        "Executor",
        "a concurrent.futures executor, which has no start, run or stop; give its stop "
        "explicitly: app.add(executor, stop=executor.shutdown)",
    ),
    (
        "asyncio",
        "Future",
        "an asyncio task (or future), already scheduled on its loop; pass the coroutine "
        "function as a worker instead: @app.worker async def job(token): ...",
    ),
)


def _duck_typing_trap(obj: object, name: str) -> str | None:
    """The message for a thread, process, executor or task: their methods are no phases."""
    for module, cls, what in _TRAPS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(obj, getattr(loaded, cls)):
            return f"cannot add {name!r}: it is {what}"
    return None


_HOOK_EXAMPLES = {"start": "open", "run": "serve", "stop": "close"}


def _not_callable_hook(phase: Phase, name: str, hook: object) -> str:
    kind = type(hook).__name__
    article = "an" if kind[:1] in "aeiou" else "a"
    if isinstance(hook, str) and hook.isidentifier():
        fix = f"pass {name}.{hook}, not {hook!r}"
    else:
        fix = f"pass a function or a bound method, such as {name}.{_HOOK_EXAMPLES[phase]}"
    return f"the {phase} hook of {name!r} must be callable, got {hook!r} ({article} {kind}); {fix}"


def _phase(fn: Callable[..., Any], where: str) -> Call:
    """A start/run/stop method or hook as a `Call`; a generator function is refused."""
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise NotAComponent(
            f"{where} is a generator function: calling it runs none of its body; make it a "
            f"plain method, or register a generator function with @app.resource"
        )
    return _call(fn, where)


def normalize(
    obj: object,
    name: str,
    *,
    start: Callable[..., Any] | None = None,
    run: Callable[..., Any] | None = None,
    stop: Callable[..., Any] | None = None,
) -> Component:
    """The `Component` for a registered object.

    ``start``, ``run`` and ``stop`` are explicit hooks — a bound method, a
    function or a lambda, plain or ``async def`` — called instead of the
    object's methods of those names. With any hook given, none of the
    object's own ``start``/``run``/``stop`` is looked up (a phase without a
    hook is simply absent); ``ready()`` is still read from the object. A hook
    receives the token by the module's rules. A lambda is always a plain
    function: for an async hook pass the ``async def`` itself
    (``stop=conn.aclose``), not ``lambda: conn.aclose()``.

    With hooks the object is only the component's handle (its name, what
    ``depends_on`` refers to, its ``ready()``), so a thread or an executor is
    accepted; a class or a coroutine object never is.

    Example::

        normalize(pool, "pool", start=pool.open, stop=pool.close)

    Raises:
        NotAComponent: the object has no start, run or stop; it is a class, a
            coroutine or generator object, or (without hooks) a thread, process,
            executor or asyncio task; or a hook is not callable.
        ConfigError: a phase has required parameters the token cannot fill.
    """
    hooks: dict[Phase, Callable[..., Any] | None] = {"start": start, "run": run, "stop": stop}
    explicit = any(hook is not None for hook in hooks.values())
    refusal = _called_function(obj, name) or (None if explicit else _duck_typing_trap(obj, name))
    if refusal is not None:
        raise NotAComponent(refusal)
    phases: dict[Phase, Call] = {}
    for phase in PHASES:
        fn: Any = hooks[phase] if explicit else getattr(obj, phase, None)
        if fn is None:
            continue
        if not callable(fn):
            raise NotAComponent(
                _not_callable_hook(phase, name, fn)
                if explicit
                else f"component {name!r}: its {phase!r} attribute is a {type(fn).__name__}, "
                f"not a method"
            )
        phases[phase] = _phase(
            fn, f"the {phase} hook of {name!r}" if explicit else f"{name}.{phase}()"
        )
    if not phases:
        hint = (
            "decorate a function with @app.worker or @app.resource"
            if callable(obj)
            else "give it a start(token), run(token) or stop(token) method"
        )
        raise NotAComponent(
            f"cannot add {obj!r} as component {name!r}: it has no start, run or stop method; {hint}"
        )
    ready = getattr(obj, "ready", None)
    return Component(
        name,
        obj,
        phases.get("start"),
        phases.get("run"),
        phases.get("stop"),
        ready if callable(ready) else None,
        "object",
    )


def worker(fn: Callable[..., Any], name: str) -> Component:
    """A worker function: ``fn(token)`` or ``async fn(token)`` is the component's ``run``."""
    if not callable(fn):
        raise NotAComponent(f"@app.worker needs a function, got {fn!r}")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise NotAComponent(
            f"worker {name!r} is a generator function; use @app.resource for the "
            f"start-yield-stop style"
        )
    return Component(name, fn, None, _call(fn, f"worker {name}()"), None, None, "worker")


def _no_yield(name: str) -> str:
    return (
        f"resource {name!r} returned without yielding; a resource must "
        f"yield exactly once (start code, yield, stop code)"
    )


def _yielded_twice(name: str) -> str:
    return (
        f"resource {name!r} yielded more than once; a resource must yield "
        f"exactly once (start code, yield, stop code)"
    )


class _ResourceDriver:
    """What the sync and async generator drivers share."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn = fn
        self.name = name
        self.call = _call(fn, f"resource {name}()")
        # The token the generator function gets: it fires when the phase
        # token in effect (start's, then stop's) does.
        self.source = CancelSource()
        self.value: Any = None

    def _follow(self, token: CancelToken) -> Callable[[], bool]:
        """Forward ``token``'s cancellation to the generator's token while a phase runs."""
        return token.on_cancel(lambda: self.source.cancel(token.reason or "cancelled"))


class _GeneratorResource(_ResourceDriver):
    """Drives a (sync) generator function as start/stop."""

    def __init__(self, fn: Callable[..., Generator[Any, None, None]], name: str) -> None:
        super().__init__(fn, name)
        self.gen: Generator[Any, None, None] | None = None

    def start(self, token: CancelToken) -> None:
        detach = self._follow(token)
        try:
            self.gen = self.call.fn(*self.call.args(self.source.token))
            self.value = next(self.gen)
        except StopIteration:
            raise RuntimeError(_no_yield(self.name)) from None
        finally:
            detach()

    def stop(self, token: CancelToken) -> None:
        if self.gen is None:
            return
        detach = self._follow(token)
        try:
            next(self.gen)
        except StopIteration:
            return
        finally:
            detach()
        self.gen.close()
        raise RuntimeError(_yielded_twice(self.name))


class _AsyncGeneratorResource(_ResourceDriver):
    """Drives an async generator function as start/stop."""

    def __init__(self, fn: Callable[..., AsyncGenerator[Any, None]], name: str) -> None:
        super().__init__(fn, name)
        self.gen: AsyncGenerator[Any, None] | None = None

    async def start(self, token: CancelToken) -> None:
        detach = self._follow(token)
        try:
            self.gen = self.call.fn(*self.call.args(self.source.token))
            self.value = await anext(self.gen)
        except StopAsyncIteration:
            raise RuntimeError(_no_yield(self.name)) from None
        finally:
            detach()

    async def stop(self, token: CancelToken) -> None:
        if self.gen is None:
            return
        detach = self._follow(token)
        try:
            await anext(self.gen)
        except StopAsyncIteration:
            return
        finally:
            detach()
        await self.gen.aclose()
        raise RuntimeError(_yielded_twice(self.name))


def resource(fn: Callable[..., Any], name: str) -> Component:
    """A resource generator function: before ``yield`` is start, after it is stop.

    The function may take one argument, a token that fires when the start is
    cancelled or times out, or when the stop overruns; `current_token()`
    inside gives the phase's own token with its deadline.
    """
    driver: _GeneratorResource | _AsyncGeneratorResource
    if inspect.isasyncgenfunction(fn):
        driver = _AsyncGeneratorResource(fn, name)
        start, stop = Call(driver.start, True, True), Call(driver.stop, True, True)
    elif inspect.isgeneratorfunction(fn):
        driver = _GeneratorResource(fn, name)
        start, stop = Call(driver.start, False, True), Call(driver.stop, False, True)
    else:
        raise NotAComponent(
            f"@app.resource needs a generator function (start code, yield, stop code); "
            f"{name!r} does not yield. For a long-running loop use @app.worker"
        )
    return Component(name, fn, start, None, stop, None, "resource", driver)


def resource_value(component: Component) -> Any:
    """What a resource's generator yielded (None for other components)."""
    return None if component.driver is None else component.driver.value
