"""Turn what users register into one internal shape: start / run / stop / ready.

Three things can be registered:

* an object with any of ``start(token)``, ``run(token)``, ``stop(token)`` —
  plain or ``async def`` — and optionally ``ready() -> bool``;
* a *worker* function ``fn(token)`` or ``async fn(token)``: its body is ``run``;
* a *resource* generator (or async generator) function: the code before
  ``yield`` is ``start``, the code after it is ``stop`` (the lifespan style).

Methods may also take no argument at all (``def stop(self)``), so existing
objects such as pools with a ``close``-like ``stop()`` need no wrapper.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, Literal

import attrs

from .._core.errors import ConfigError, NotAComponent
from .._core.tokens import CancelSource, CancelToken

__all__ = ["Call", "Component", "normalize", "resource", "worker"]

Phase = Literal["start", "run", "stop"]


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


def _takes_token(fn: Callable[..., Any], where: str) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: pass the token
        return True
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
    if len(required) > 1:
        names = ", ".join(p.name for p in required)
        raise ConfigError(
            f"{where} takes {len(required)} required arguments ({names}); it is called "
            f"with one, the CancelToken, or none: give the others defaults"
        )
    return bool(positional) or varargs


def _call(fn: Callable[..., Any], where: str) -> Call:
    return Call(
        fn,
        is_async=inspect.iscoroutinefunction(fn),
        takes_token=_takes_token(fn, where),
    )


def describe(obj: object) -> str:
    """A short readable name for an object: its function or class name."""
    name = getattr(obj, "__name__", None)
    if isinstance(name, str) and not isinstance(obj, type):
        return name
    return type(obj).__name__.lower() if not isinstance(obj, type) else obj.__name__


def normalize(obj: object, name: str) -> Component:
    """The `Component` for a registered object.

    Raises:
        NotAComponent: the object has no start, run or stop.
    """
    if isinstance(obj, type):
        raise NotAComponent(
            f"{obj.__name__!r} is a class; register an instance: app.add({obj.__name__}())"
        )
    phases: dict[str, Call] = {}
    for phase in ("start", "run", "stop"):
        fn = getattr(obj, phase, None)
        if fn is None:
            continue
        if not callable(fn):
            raise NotAComponent(
                f"component {name!r}: its {phase!r} attribute is a {type(fn).__name__}, "
                f"not a method"
            )
        phases[phase] = _call(fn, f"{name}.{phase}()")
    if not phases:
        hint = (
            "decorate a function with @app.worker or @app.resource"
            if callable(obj)
            else "give it a start(token), run(token) or stop(token) method"
        )
        raise NotAComponent(
            f"cannot add {obj!r} as component {name!r}: it has no start, run or stop method; "
            f"{hint}"
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
        self.takes_token = _takes_token(fn, f"resource {name}()")
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
            self.gen = self.fn(self.source.token) if self.takes_token else self.fn()
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
            self.gen = self.fn(self.source.token) if self.takes_token else self.fn()
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
