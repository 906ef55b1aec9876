"""`_components`: what users register, turned into start / run / stop calls."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from lifecycle import CancelSource, CancelToken, ConfigError, NotAComponent
from lifecycle._runtime.components import (
    Call,
    describe,
    normalize,
    resource,
    resource_value,
    worker,
)


class Full:
    def start(self, token: CancelToken) -> None:
        pass

    def run(self, token: CancelToken) -> None:
        pass

    async def stop(self, token: CancelToken) -> None:
        pass

    def ready(self) -> bool:
        return True


def test_object_phases_and_their_kinds():
    """normalize() finds each phase, whether it is async, and the ready probe."""
    obj = Full()
    c = normalize(obj, "full")
    assert (c.name, c.kind, c.obj) == ("full", "object", obj)
    assert c.start is not None
    assert not c.start.is_async
    assert c.run is not None
    assert not c.run.is_async
    assert c.stop is not None
    assert c.stop.is_async
    assert c.ready is not None
    assert c.ready()
    assert c.is_async
    assert c.phase("stop") is c.stop


def test_missing_phases_are_none_and_sync_objects_are_not_async():
    """A component with only stop has no start or run; it is not async."""

    class OnlyStop:
        def stop(self) -> None:
            pass

    c = normalize(OnlyStop(), "s")
    assert (c.start, c.run, c.ready) == (None, None, None)
    assert not c.is_async
    with pytest.raises(AssertionError, match="s has no start"):
        c.phase("start")


def test_token_argument_detection():
    """A phase gets the token only if it takes a positional argument (or *args)."""

    class Shapes:
        def start(self) -> None: ...

        def run(self, token: CancelToken) -> None: ...

        def stop(self, *args: Any) -> None: ...

    c = normalize(Shapes(), "shapes")
    assert c.start is not None
    assert c.run is not None
    assert c.stop is not None
    assert (c.start.takes_token, c.run.takes_token, c.stop.takes_token) == (False, True, True)
    token = CancelSource().token
    assert c.start.args(token) == ()
    assert c.run.args(token) == (token,)


def test_optional_second_argument_is_fine():
    """Extra parameters with defaults do not count as required."""

    class Opt:
        def start(self, token: CancelToken, retries: int = 3) -> None: ...

    c = normalize(Opt(), "opt")
    assert c.start is not None
    assert c.start.takes_token


def test_callables_without_signature_get_the_token():
    """Builtins whose signature cannot be read are passed the token."""

    class Builtin:
        stop = print  # a builtin: inspect.signature may not read it

    c = normalize(Builtin(), "b")
    assert c.stop is not None
    assert c.stop.takes_token


def test_partial_objects_are_inspected_through():
    """functools.partial phases are inspected as what they call."""

    def stop(token: CancelToken, why: str) -> None: ...

    class P:
        def __init__(self) -> None:
            self.stop = functools.partial(stop, why="x")

    c = normalize(P(), "p")
    assert c.stop is not None
    assert c.stop.takes_token


def test_two_required_arguments_are_a_config_error():
    """A phase that needs two arguments is rejected with the names and the fix."""

    class Two:
        def stop(self, token: CancelToken, force: bool) -> None: ...

    with pytest.raises(ConfigError) as caught:
        normalize(Two(), "two")
    assert str(caught.value) == (
        "two.stop() takes 2 required arguments (token, force); it is called with one, "
        "the CancelToken, or none: give the others defaults"
    )


def test_classes_are_not_components():
    """A class is rejected with the instance to register instead."""
    with pytest.raises(NotAComponent, match=r"register an instance: app.add\(Full\(\)\)"):
        normalize(Full, "full")


def test_describe_names():
    """describe(): function name, class name for classes, lower-cased class name for objects."""

    def fn() -> None: ...

    assert describe(fn) == "fn"
    assert describe(Full) == "Full"
    assert describe(Full()) == "full"


def test_worker_component():
    """A worker's function is its run; sync or async; nothing else."""

    async def consume(token: CancelToken) -> None: ...

    c = worker(consume, "consume")
    assert (c.kind, c.start, c.stop) == ("worker", None, None)
    assert c.run is not None
    assert c.run.is_async
    assert c.run.fn is consume
    with pytest.raises(NotAComponent, match="needs a function"):
        worker(3, "three")  # type: ignore[arg-type]


def test_resource_rejects_plain_functions():
    """A resource must be a generator function; the message points to @app.worker."""
    with pytest.raises(NotAComponent, match="does not yield"):
        resource(lambda: None, "nope")


# -- resource drivers -----------------------------------------------------------


def test_sync_resource_runs_before_and_after_yield():
    """start runs up to yield (keeping the value); stop runs the rest."""
    steps: list[str] = []

    def pool() -> Iterator[str]:
        steps.append("open")
        yield "P"
        steps.append("close")

    c = resource(pool, "pool")
    assert c.kind == "resource"
    assert not c.is_async
    assert c.start is not None
    assert c.stop is not None
    assert resource_value(c) is None
    token = CancelSource().token
    c.start.fn(*c.start.args(token))
    assert resource_value(c) == "P"
    c.stop.fn(*c.stop.args(token))
    assert steps == ["open", "close"]


def test_resource_token_follows_the_phase_token():
    """The generator's token is cancelled when a phase's token is (start or stop)."""
    seen: list[CancelToken] = []

    def pool(token: CancelToken) -> Iterator[None]:
        seen.append(token)
        yield
        assert token.cancelled  # the stop token was cancelled before stop was called

    c = resource(pool, "pool")
    assert c.start is not None
    assert c.stop is not None
    c.start.fn(CancelSource().token)
    assert not seen[0].cancelled
    stop_source = CancelSource()
    stop_source.cancel("deadline exceeded")
    c.stop.fn(stop_source.token)
    assert seen[0].reason == "deadline exceeded"


def test_resource_stop_before_start_does_nothing():
    """stop() of a resource whose start never ran is a no-op."""

    called: list[str] = []

    def pool() -> Iterator[None]:
        called.append("body")
        yield

    c = resource(pool, "pool")
    assert c.stop is not None
    c.stop.fn(CancelSource().token)
    assert called == []


def test_resource_that_does_not_yield_or_yields_twice():
    """Returning without yielding fails start; yielding twice fails stop."""

    def empty() -> Iterator[None]:
        return
        yield

    c = resource(empty, "empty")
    assert c.start is not None
    with pytest.raises(RuntimeError, match="'empty' returned without yielding"):
        c.start.fn(CancelSource().token)

    def twice() -> Iterator[int]:
        yield 1
        yield 2

    c = resource(twice, "twice")
    assert c.start is not None
    assert c.stop is not None
    c.start.fn(CancelSource().token)
    with pytest.raises(RuntimeError, match="'twice' yielded more than once"):
        c.stop.fn(CancelSource().token)


def test_async_resource_driver():
    """The async twin: start/stop are coroutines; errors as for the sync one."""
    steps: list[str] = []

    async def pool(token: CancelToken) -> AsyncIterator[str]:
        steps.append("open")
        yield "P"
        steps.append("close")

    async def empty() -> AsyncIterator[None]:
        return
        yield

    async def twice() -> AsyncIterator[int]:
        yield 1
        yield 2

    async def main() -> None:
        token = CancelSource().token
        c = resource(pool, "pool")
        assert c.is_async
        assert c.start is not None
        assert c.stop is not None
        await c.start.fn(token)
        assert resource_value(c) == "P"
        await c.stop.fn(token)
        assert steps == ["open", "close"]

        e = resource(empty, "empty")
        assert e.start is not None
        with pytest.raises(RuntimeError, match="returned without yielding"):
            await e.start.fn(token)

        t = resource(twice, "twice")
        assert t.start is not None
        assert t.stop is not None
        await t.start.fn(token)
        with pytest.raises(RuntimeError, match="yielded more than once"):
            await t.stop.fn(token)

    asyncio.run(main())


def test_call_is_frozen():
    """Call is an immutable record."""
    call = Call(print, is_async=False, takes_token=True)
    with pytest.raises(AttributeError):
        call.is_async = True  # type: ignore[misc]
