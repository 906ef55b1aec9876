"""`_components`: what users register, turned into start / run / stop calls."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import multiprocessing
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, Optional, Union
from unittest import mock

import pytest

import lifecycle
from lifecycle import (
    App,
    CancelSource,
    CancelToken,
    ConfigError,
    ExitCode,
    NotAComponent,
    ThreadedRunner,
)
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
    """A phase gets the token only through a required first parameter (or a CancelToken one)."""

    class Shapes:
        def start(self) -> None: ...

        def run(self, token: CancelToken) -> None: ...

        def stop(self, *args: Any) -> None: ...

    c = normalize(Shapes(), "shapes")
    assert c.start is not None
    assert c.run is not None
    assert c.stop is not None
    assert (c.start.takes_token, c.run.takes_token, c.stop.takes_token) == (False, True, False)
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


def test_callables_without_signature_get_no_token():
    """A builtin whose signature cannot be read is called without the token."""

    class Builtin:
        stop = max  # a builtin whose signature inspect.signature cannot read

    c = normalize(Builtin(), "b")
    assert c.stop is not None
    assert not c.stop.takes_token


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
        "two.stop() takes 2 required arguments (token, force); lifecycle passes one, "
        "the CancelToken, or none: give the others defaults"
    )


def test_classes_are_not_components():
    """A class is rejected with the instance to register instead."""
    with pytest.raises(NotAComponent) as caught:
        normalize(Full, "full")
    assert str(caught.value) == (
        "'Full' is a class; register an instance: app.add(Full()), not app.add(Full)"
    )


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


# -- which parameter receives the token -------------------------------------------

TOKEN = CancelSource().token


def _invoke(call: Call | None, token: CancelToken = TOKEN) -> Any:
    """Call a phase the way the runners do, awaiting it if it is async."""
    assert call is not None
    result = call.fn(*call.args(token))
    return asyncio.run(result) if call.is_async else result


def paused_default(self, paused=False):
    return (paused,)


def annotated_other(self, paused: bool = False):
    return (paused,)


def unannotated_optional(self, token=None):
    return (token,)


def no_parameters(self):
    return ()


def bare_required(self, token):
    return (token,)


def annotated_required(self, token: CancelToken):
    return (token,)


def string_optional(self, token: "CancelToken | None" = None):  # noqa: UP037 - the string form
    return (token,)


def dotted_optional(self, token: lifecycle.CancelToken | None = None):
    return (token,)


def typing_optional(self, token: Optional[CancelToken] = None):  # noqa: UP045 - the typing form
    return (token,)


def unresolvable_token(self, token: missing.CancelToken | None = None):  # type: ignore[name-defined]  # noqa: F821 - on purpose
    return (token,)


def unresolvable_other(self, flag: Missing = None):  # type: ignore[name-defined]  # noqa: F821 - on purpose
    return (flag,)


def forward_optional(self, token: Optional["CancelToken"] = None):  # noqa: UP037, UP045 - the forms under test
    return (token,)


def forward_union(self, token: Union["CancelToken", None] = None):  # noqa: UP007, UP037 - the forms under test
    return (token,)


def annotated_token(self, token: Annotated[CancelToken | None, "the stop token"] = None):
    return (token,)


def annotated_forward(self, token: Annotated[Optional["CancelToken"], "doc"] = None):  # noqa: UP037, UP045 - the forms under test
    return (token,)


def token_in_metadata_only(self, flag: Annotated[bool, CancelToken] = False):
    return (flag,)


def unresolvable_optional(self, token: Optional[missing.CancelToken] = None):  # type: ignore[name-defined]  # noqa: F821, UP045 - on purpose
    return (token,)


def unresolvable_callable(self, cb: Callable[[missing.CancelToken], None] | None = None):  # type: ignore[name-defined]  # noqa: F821 - on purpose
    return (cb,)


def unresolvable_list(self, tokens: list[missing.CancelToken] | None = None):  # type: ignore[name-defined]  # noqa: F821 - on purpose
    return (tokens,)


def var_args(self, *args):
    return args


def var_args_token(self, *args: CancelToken):
    return args


def token_after_option(self, force: bool = False, token: CancelToken | None = None):
    return (force, token)


def keyword_only_token(self, *, token: CancelToken):
    return (token,)


def keyword_only_optional_token(self, *, token: CancelToken | None = None):
    return (token,)


def token_and_options(self, token: CancelToken, **options: Any):
    return (token, *options)


async def async_paused(self, paused=False):
    return (paused,)


async def async_token(self, token: CancelToken | None = None):
    return (token,)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (paused_default, (False,)),
        (annotated_other, (False,)),
        (unannotated_optional, (None,)),
        (no_parameters, ()),
        (bare_required, (TOKEN,)),
        (annotated_required, (TOKEN,)),
        (string_optional, (TOKEN,)),
        (dotted_optional, (TOKEN,)),
        (typing_optional, (TOKEN,)),
        (unresolvable_token, (TOKEN,)),
        (unresolvable_other, (None,)),
        (forward_optional, (TOKEN,)),
        (forward_union, (TOKEN,)),
        (annotated_token, (TOKEN,)),
        (annotated_forward, (TOKEN,)),
        (token_in_metadata_only, (False,)),
        (unresolvable_optional, (TOKEN,)),
        (unresolvable_callable, (None,)),
        (unresolvable_list, (None,)),
        (var_args, ()),
        (var_args_token, (TOKEN,)),
        (token_after_option, (False, TOKEN)),
        (keyword_only_token, (TOKEN,)),
        (keyword_only_optional_token, (TOKEN,)),
        (token_and_options, (TOKEN,)),
        (async_paused, (False,)),
        (async_token, (TOKEN,)),
    ],
    ids=lambda v: v.__name__ if callable(v) else "",
)
@pytest.mark.parametrize("phase", ["start", "run", "stop"])
def test_token_goes_only_to_a_required_first_or_annotated_parameter(method, expected, phase):
    """The token fills a required first parameter or one annotated CancelToken, else nothing."""
    obj = type("Shape", (), {phase: method})()
    c = normalize(obj, "shape")
    assert expected == _invoke(getattr(c, phase))


@pytest.mark.parametrize(
    ("cls", "phase"),
    [
        (lifecycle.HTTPServer, "start"),
        (lifecycle.HTTPServer, "stop"),
        (lifecycle.AsyncStreamServer, "start"),
        (lifecycle.AsyncStreamServer, "stop"),
        (lifecycle.ASGIMiddleware, "stop"),
    ],
)
def test_library_servers_optional_token_is_still_passed(cls, phase):
    """The servers' ``token: CancelToken | None = None`` phases keep receiving the token."""
    holder = type("Holder", (), {})()
    setattr(holder, phase, functools.partial(getattr(cls, phase), holder))
    call = getattr(normalize(holder, "server"), phase)
    assert call is not None
    assert call.takes_token


def test_required_keyword_only_parameter_is_a_config_error():
    """A required keyword-only parameter cannot be filled: rejected at add, named."""

    class Kw:
        def start(self, token: CancelToken, *, mode: str) -> None: ...

    with pytest.raises(ConfigError) as caught:
        App().add(Kw(), name="x")
    assert str(caught.value) == (
        "x.start() has a required keyword-only parameter 'mode'; lifecycle can pass only "
        "the token (to the first parameter, or one annotated CancelToken): give 'mode' a default"
    )


def test_required_parameter_besides_an_annotated_token_is_a_config_error():
    """A token annotated CancelToken does not make another required parameter fillable."""

    class Late:
        def stop(self, config: dict[str, Any], token: CancelToken) -> None: ...

    with pytest.raises(ConfigError, match=r"late\.stop\(\) takes 2 required arguments"):
        normalize(Late(), "late")


def test_generator_method_is_rejected():
    """A phase that is a generator function would run nothing: rejected, pointing to resource."""

    class Gen:
        def run(self, token: CancelToken) -> Iterator[None]:
            yield

    with pytest.raises(NotAComponent) as caught:
        normalize(Gen(), "gen")
    assert str(caught.value) == (
        "gen.run() is a generator function: calling it runs none of its body; make it a "
        "plain method, or register a generator function with @app.resource"
    )


# -- objects that are not components -----------------------------------------------


def test_thread_is_rejected_and_its_target_never_runs():
    """A threading.Thread is refused at add (its target would run twice); it never runs."""
    hits: list[int] = []
    thread = threading.Thread(target=lambda: hits.append(1))
    app = App()
    with pytest.raises(NotAComponent) as caught:
        app.add(thread, name="job")
    assert str(caught.value) == (
        "cannot add 'job': it is a threading.Thread, whose start() and run() would each run "
        "its target; register its target as a worker: @app.worker def job(token): ..., or "
        "wrap it in an object with run(token)"
    )
    assert isinstance(caught.value, ConfigError)
    assert not app.components
    assert not thread.is_alive()
    assert hits == []


def test_thread_subclass_is_rejected():
    """A Thread subclass that overrides run is refused the same way."""

    class Poller(threading.Thread):
        def run(self) -> None: ...

    with pytest.raises(NotAComponent, match=r"it is a threading\.Thread, whose start\(\)"):
        App().add(Poller())


@pytest.mark.parametrize(
    "make",
    [
        multiprocessing.Process,
        multiprocessing.get_context("spawn").Process,
        multiprocessing.get_context("fork").Process,
    ],
    ids=["default", "spawn", "fork"],
)
def test_process_is_rejected(make):
    """A multiprocessing process (of any start method) is refused, saying what to register."""
    process = make(target=print)
    with pytest.raises(NotAComponent) as caught:
        App().add(process, name="crunch")
    assert str(caught.value) == (
        "cannot add 'crunch': it is a multiprocessing process, whose start() would spawn it "
        "and whose run() would run its target here too; register a worker that starts it, "
        "ends it when the token is cancelled and joins it: @app.worker def job(token): "
        "p.start(); token.on_cancel(p.terminate); p.join()"
    )
    assert process.pid is None  # never started


def test_executor_is_rejected_with_the_hook_to_use():
    """An executor is refused by duck typing; the message gives the explicit stop hook."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        with pytest.raises(NotAComponent) as caught:
            App().add(executor, name="pool")
        assert str(caught.value) == (
            "cannot add 'pool': it is a concurrent.futures executor, which has no start, run "
            "or stop; give its stop explicitly: app.add(executor, stop=executor.shutdown)"
        )
        c = normalize(executor, "pool", stop=executor.shutdown)
        assert c.stop is not None
        assert not c.stop.takes_token  # shutdown(wait=True): waits for the queued work


def test_asyncio_task_is_rejected():
    """An asyncio task is refused: register the coroutine function as a worker."""

    async def job(token: CancelToken) -> None: ...

    async def main() -> str:
        task = asyncio.ensure_future(job(TOKEN))
        try:
            with pytest.raises(NotAComponent) as caught:
                normalize(task, "job")
        finally:
            await task
        return str(caught.value)

    assert asyncio.run(main()) == (
        "cannot add 'job': it is an asyncio task (or future), already scheduled on its loop; "
        "pass the coroutine function as a worker instead: @app.worker async def job(token): ..."
    )


def test_coroutine_object_is_rejected_and_closed():
    """A coroutine object (the function was called) is refused and closed: no 'never awaited'."""

    async def consume(token: CancelToken) -> None: ...

    coro = consume(TOKEN)
    with pytest.raises(NotAComponent) as caught:
        App().add(coro, name="consume")  # type: ignore[unused-coroutine]  # refused, closed
    assert str(caught.value) == (
        "cannot add 'consume': it is a coroutine object (consume() was called); pass the "
        "function, not its call: app.worker(consume), or decorate it with @app.worker"
    )
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


def test_generator_object_is_rejected():
    """A generator object (a resource function that was called) is refused: pass the function."""

    def pool() -> Iterator[None]:
        yield

    gen = pool()
    with pytest.raises(NotAComponent) as caught:
        App().add(gen, name="pool")
    assert str(caught.value) == (
        "cannot add 'pool': it is a generator object (pool() was called); pass the "
        "function, not its call: app.resource(pool), or decorate it with @app.resource"
    )


def test_class_is_rejected_even_with_hooks():
    """Hooks do not make a class acceptable: its ready() would be unbound."""

    class Pool:
        @classmethod
        def open(cls) -> None: ...

    with pytest.raises(NotAComponent, match=r"register an instance: app\.add\(Pool\(\)\)"):
        normalize(Pool, "pool", start=Pool.open)


# -- explicit hooks ----------------------------------------------------------------


class Pool:
    """An object whose lifecycle methods have other names (and its own start)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def open(self, token: CancelToken) -> None:
        self.calls.append(("open", (token,)))

    def serve(self, token: CancelToken | None = None) -> None:
        self.calls.append(("serve", (token,)))

    def close(self, wait: bool = True) -> None:
        self.calls.append(("close", (wait,)))

    def start(self, token: CancelToken) -> None:
        self.calls.append(("start", (token,)))

    def stop(self, token: CancelToken) -> None:
        self.calls.append(("stop", (token,)))

    def ready(self) -> bool:
        return True


def test_hooks_of_bound_methods_with_other_names():
    """Hooks are called instead of start/run/stop, with the token by the same rules."""
    pool = Pool()
    c = normalize(pool, "pool", start=pool.open, run=pool.serve, stop=pool.close)
    assert (c.obj, c.kind) == (pool, "object")
    for phase in ("start", "run", "stop"):
        _invoke(c.phase(phase))
    assert pool.calls == [("open", (TOKEN,)), ("serve", (TOKEN,)), ("close", (True,))]
    assert c.ready is not None
    assert c.ready()


def test_hooks_replace_the_lookup_of_the_objects_own_methods():
    """With any hook given, the object's own start/run/stop are not looked up."""
    pool = Pool()
    c = normalize(pool, "pool", stop=pool.close)
    assert (c.start, c.run) == (None, None)
    _invoke(c.stop)
    assert pool.calls == [("close", (True,))]


def test_async_hooks():
    """Async hooks are coroutines, awaited; the token rules hold for them too."""
    seen: list[tuple[object, ...]] = []

    class Conn:
        async def connect(self, token: CancelToken) -> None:
            seen.append(("connect", token))

        async def aclose(self, force: bool = False) -> None:
            seen.append(("aclose", force))

    conn = Conn()
    c = normalize(conn, "conn", start=conn.connect, stop=conn.aclose)
    assert c.is_async
    _invoke(c.start)
    _invoke(c.stop)
    assert seen == [("connect", TOKEN), ("aclose", False)]
    assert c.ready is None


def test_lambda_hooks():
    """A lambda hook gets the token only if it has a parameter for it."""
    seen: list[object] = []
    obj = object()
    c = normalize(
        obj,
        "thing",
        start=lambda token: seen.append(token),  # noqa: PLW0108 - a lambda on purpose
        stop=lambda: seen.append(0),
    )
    _invoke(c.start)
    _invoke(c.stop)
    assert seen == [TOKEN, 0]


def test_hooks_make_threads_acceptable():
    """Explicit hooks are the user's statement: a thread given them is accepted."""
    thread = threading.Thread(target=lambda: None)
    c = normalize(thread, "t", start=thread.start, stop=thread.join)
    assert c.start is not None
    assert c.stop is not None
    assert (c.start.takes_token, c.stop.takes_token) == (False, False)


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        (
            "close",
            "the stop hook of 'pool' must be callable, got 'close' (a str); "
            "pass pool.close, not 'close'",
        ),
        (
            3,
            "the stop hook of 'pool' must be callable, got 3 (an int); "
            "pass a function or a bound method, such as pool.close",
        ),
    ],
    ids=["str", "int"],
)
def test_hook_that_is_not_callable(hook, message):
    """A hook that cannot be called is a ConfigError naming the component and the hook."""
    with pytest.raises(NotAComponent) as caught:
        normalize(Pool(), "pool", stop=hook)
    assert message == str(caught.value)
    assert isinstance(caught.value, ConfigError)


def test_hook_with_two_required_parameters():
    """A hook needing two arguments is rejected at once, named as the hook."""

    def close(token: CancelToken, force: bool) -> None: ...

    with pytest.raises(ConfigError) as caught:
        normalize(Pool(), "pool", stop=close)
    assert str(caught.value) == (
        "the stop hook of 'pool' takes 2 required arguments (token, force); lifecycle "
        "passes one, the CancelToken, or none: give the others defaults"
    )


def test_app_add_with_hooks_runs_them():
    """app.add(obj, start=..., stop=...) runs the hooks, not the object's own methods."""
    pool = Pool()
    app = App()
    app.add(pool, name="pool", start=pool.open, stop=pool.close)
    runner = ThreadedRunner(app, signals=None)
    runner.start()
    assert runner.stop() == ExitCode.OK
    assert [name for name, _ in pool.calls] == ["open", "close"]


# -- async callables that inspect.iscoroutinefunction does not see ------------------


class AsyncCallable:
    """A callable instance whose ``__call__`` is a coroutine function."""

    async def __call__(self, token: CancelToken) -> tuple[str, CancelToken]:
        return ("called", token)


def passes_through(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A sync decorator, made with functools.wraps, that returns what ``fn`` returns."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


async def called(token: CancelToken) -> tuple[str, CancelToken]:
    return ("called", token)


class Decorated:
    @passes_through
    async def run(self, token: CancelToken) -> tuple[str, CancelToken]:
        return ("called", token)


@pytest.mark.parametrize(
    "make",
    [
        AsyncCallable,
        lambda: passes_through(called),
        lambda: functools.partial(AsyncCallable()),
        lambda: passes_through(AsyncCallable()),
        lambda: functools.partial(passes_through(called)),
        lambda: Decorated().run,
    ],
    ids=[
        "instance",
        "wraps",
        "partial-of-instance",
        "wraps-of-instance",
        "partial-of-wraps",
        "method",
    ],
)
def test_async_callables_behind_instances_wrappers_and_partials_are_awaited(make):
    """An async __call__, a wraps decorator or a partial around async def is an async phase."""
    c = normalize(object(), "h", run=make())
    assert c.run is not None
    assert c.run.is_async
    assert c.is_async  # "auto" picks the asyncio runner
    assert _invoke(c.run) == ("called", TOKEN)


def test_async_worker_instance_is_async():
    """A callable instance with async __call__ registered as a worker is awaited too."""
    c = worker(AsyncCallable(), "job")
    assert c.run is not None
    assert c.run.is_async
    assert _invoke(c.run) == ("called", TOKEN)


def test_wrapper_that_ran_the_coroutine_itself_returns_its_value():
    """A wraps decorator around async def that returns a plain value: the value, nothing awaited."""

    def finished(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(token: CancelToken) -> str:
            return "done"

        return wrapper

    c = normalize(object(), "h", run=finished(called))
    assert c.run is not None
    assert c.run.is_async
    assert _invoke(c.run) == "done"


def test_async_callable_instance_run_is_awaited_by_the_runner():
    """run=Job() with an async __call__ runs, awaited, until its token is cancelled."""
    began = threading.Event()
    reasons: list[str | None] = []

    class Job:
        async def __call__(self, token: CancelToken) -> None:
            began.set()
            await token.wait_async(30.0)
            reasons.append(token.reason)

    app = App()
    app.add(object(), name="h", run=Job())
    runner = ThreadedRunner(app, signals=None)
    runner.start()
    assert began.wait(10.0)
    assert runner.stop() == ExitCode.OK
    assert len(reasons) == 1
    assert reasons[0] is not None


def _async_behind_a_bare_wrapper() -> tuple[Callable[[CancelToken], Any], list[Any]]:
    """A sync wrapper without functools.wraps around async def, and the coroutines it made."""
    made: list[Any] = []

    async def job(token: CancelToken) -> None: ...

    def wrapper(token: CancelToken) -> Any:
        made.append(job(token))
        return made[-1]

    return wrapper, made


def test_sync_phase_returning_a_coroutine_fails_loudly_and_closes_it():
    """A plain def that returns a coroutine raises TypeError naming it; the coroutine is closed."""
    wrapper, made = _async_behind_a_bare_wrapper()
    c = normalize(object(), "job", run=wrapper)
    assert c.run is not None
    assert not c.run.is_async  # nothing static says it is async
    with pytest.raises(TypeError) as caught:
        _invoke(c.run)
    assert str(caught.value) == (
        "run of 'job' returned a coroutine: it is an async function behind a sync wrapper; "
        "decorate with functools.wraps, or make the wrapper async def"
    )
    assert [inspect.getcoroutinestate(coro) for coro in made] == [inspect.CORO_CLOSED]


def test_sync_phase_returning_a_coroutine_fails_the_app():
    """Under a runner, that TypeError is the component's error: the app fails, nothing warns."""
    wrapper, made = _async_behind_a_bare_wrapper()
    app = App()
    app.add(object(), name="job", run=wrapper)
    runner = ThreadedRunner(app, signals=None)
    runner.start()
    assert runner.wait() == ExitCode.FAILED
    error = app.components["job"].error
    assert isinstance(error, TypeError)
    assert str(error).startswith("run of 'job' returned a coroutine")
    assert [inspect.getcoroutinestate(coro) for coro in made] == [inspect.CORO_CLOSED]


def test_sync_phase_returning_another_awaitable_fails_loudly():
    """A plain def that returns a Future (not a coroutine) is refused too, and left alone."""
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        c = normalize(object(), "job", start=lambda: future)
        with pytest.raises(TypeError) as caught:
            _invoke(c.start)
        assert str(caught.value) == (
            "start of 'job' returned a Future, which nothing would await: lifecycle runs a "
            "plain def in a thread; make it async def and await the Future there"
        )
        assert not future.cancelled()
    finally:
        loop.close()


# -- ready() ----------------------------------------------------------------------


async def _async_ready() -> bool:
    return False


class AsyncReady:
    async def stop(self) -> None: ...

    async def ready(self) -> bool:
        return False


class AsyncCallableReady:
    def stop(self) -> None: ...

    ready = AsyncCallable()


class WrappedAsyncReady:
    def stop(self) -> None: ...

    ready = staticmethod(passes_through(_async_ready))


@pytest.mark.parametrize("cls", [AsyncReady, AsyncCallableReady, WrappedAsyncReady])
def test_async_ready_is_refused_at_add(cls):
    """An async ready() would always be truthy: refused at add, saying to make it a plain def."""
    app = App()
    with pytest.raises(ConfigError) as caught:
        app.add(cls(), name="x")
    assert str(caught.value) == (
        "ready() of 'x' is async; readiness probes call it synchronously: make it a plain "
        "def that returns a cached flag"
    )
    assert not app.components


def test_async_ready_is_refused_with_hooks_too():
    """With explicit hooks ready() is still read, and still refused when async."""
    obj = AsyncReady()
    with pytest.raises(ConfigError, match=r"ready\(\) of 'x' is async"):
        normalize(obj, "x", stop=obj.stop)


class GeneratorReady:
    def stop(self) -> None: ...

    def ready(self) -> Iterator[bool]:
        yield False


class ReadyNeedsArgument:
    def stop(self) -> None: ...

    def ready(self, token: CancelToken) -> bool:
        return True


class ReadyProperty:
    def __init__(self) -> None:
        self._ready = False

    def stop(self) -> None: ...

    @property
    def ready(self) -> bool:
        return self._ready


class ReadyFlag:
    def __init__(self) -> None:
        self.ready = False

    def stop(self) -> None: ...


_BOOL_READY = (
    "ready of 'x' is a bool, not a method; readiness probes call ready(): make it a "
    "method, def ready(self) -> bool: return self._ready"
)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (
            GeneratorReady,
            "ready() of 'x' is a generator function, whose call is always truthy; readiness "
            "probes call it synchronously: make it a plain def that returns a cached flag",
        ),
        (
            ReadyNeedsArgument,
            "ready() of 'x' has a required parameter 'token'; readiness probes call it with "
            "no argument: give 'token' a default",
        ),
        (ReadyProperty, _BOOL_READY),
        (ReadyFlag, _BOOL_READY),
    ],
    ids=["generator", "argument", "property", "flag"],
)
def test_ready_that_no_probe_can_call_is_refused(cls, message):
    """A generator ready(), one needing an argument, or a bool ready: refused, never ignored."""
    with pytest.raises(ConfigError) as caught:
        normalize(cls(), "x")
    assert message == str(caught.value)


def test_ready_returning_a_coroutine_at_run_time_means_not_ready():
    """A sync-wrapped async ready() that slipped through raises, so the app is not ready."""
    wrapper, made = _async_behind_a_bare_wrapper()

    class Sneaky:
        def stop(self) -> None: ...

        def ready(self) -> Any:
            return wrapper(TOKEN)

    c = normalize(Sneaky(), "x")
    assert c.ready is not None
    with pytest.raises(TypeError) as caught:
        c.ready()
    assert str(caught.value) == (
        "ready() of 'x' returned a coroutine; readiness probes call it synchronously: make "
        "it a plain def that returns a cached flag"
    )
    assert [inspect.getcoroutinestate(coro) for coro in made] == [inspect.CORO_CLOSED]


# -- attributes are looked up without running code ----------------------------------


class RaisingProperty:
    def stop(self) -> None: ...

    @property
    def start(self) -> Callable[[], None]:
        raise RuntimeError("not connected")


class AttributeErrorProperty:
    def stop(self) -> None: ...

    @property
    def start(self) -> Callable[[], None]:
        raise AttributeError("_conn")


@pytest.mark.parametrize(
    ("cls", "error"),
    [
        (RaisingProperty, "RuntimeError: not connected"),
        (AttributeErrorProperty, "AttributeError: _conn"),
    ],
    ids=["RuntimeError", "AttributeError"],
)
def test_phase_property_that_raises_names_the_component(cls, error):
    """A start property that raises is a ConfigError naming component and phase, never dropped."""
    with pytest.raises(NotAComponent) as caught:
        App().add(cls(), name="db")
    assert str(caught.value) == (
        f"component 'db': reading its 'start' attribute raised {error}; lifecycle reads "
        f"'start' once, at add: make it a plain method, or pass the phases as hooks: "
        f"app.add(obj, start=obj.open, stop=obj.close)"
    )
    assert isinstance(caught.value.__cause__, RuntimeError | AttributeError)


def test_ready_property_that_raises_names_the_component():
    """A ready property that raises is reported the same way (hooks would not skip it)."""

    class BadReady:
        def stop(self) -> None: ...

        @property
        def ready(self) -> Callable[[], bool]:
            raise RuntimeError("boom")

    with pytest.raises(NotAComponent) as caught:
        normalize(BadReady(), "x")
    assert str(caught.value) == (
        "component 'x': reading its 'ready' attribute raised RuntimeError: boom; lifecycle "
        "reads 'ready' once, at add: make it a plain method"
    )


class Proxy:
    """Answers any attribute through __getattr__, like a remote-object proxy."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __getattr__(self, attr: str) -> Callable[..., None]:
        self.asked.append(attr)
        return lambda *args: None


def test_getattr_proxy_is_not_a_component():
    """Attributes made up by __getattr__ are not phases: refused, and __getattr__ is never asked."""
    proxy = Proxy()
    with pytest.raises(NotAComponent) as caught:
        normalize(proxy, "remote")
    assert str(caught.value) == (
        f"cannot add {proxy!r} as component 'remote': it has no start, run or stop methods "
        f"of its own (attributes produced by __getattr__ are not looked up): pass explicit "
        f"hooks, app.add(obj, start=obj.start, stop=obj.stop), or give a mock a spec: "
        f"Mock(spec=TheClass)"
    )
    assert proxy.asked == []


def test_getattr_proxy_with_hooks_has_no_ready_probe():
    """With hooks, ready is looked up statically too: a proxy is not asked per probe."""
    proxy = Proxy()
    c = normalize(proxy, "remote", stop=lambda: None)
    assert c.ready is None
    assert proxy.asked == []


def test_bare_mock_is_not_a_component():
    """A Mock() answers every name; it is refused rather than taken for a full component."""
    with pytest.raises(NotAComponent, match="has no start, run or stop methods of its own"):
        App().add(mock.Mock(), name="m")


class StartStop:
    def start(self, token: CancelToken) -> None: ...

    async def stop(self, token: CancelToken) -> None: ...

    def ready(self) -> bool:
        return True


def test_mock_with_a_spec_has_the_phases_of_its_class():
    """Mock(spec=Cls) stands for Cls: its phases (and ready) are those Cls defines."""
    m = mock.Mock(spec=StartStop)
    c = normalize(m, "m")
    assert c.start is not None
    assert c.run is None
    assert c.stop is not None
    assert c.stop.is_async  # the spec's stop is async: an AsyncMock
    assert c.ready is not None


def test_autospec_mock_gets_the_token():
    """create_autospec keeps the signatures: the phases receive the token."""
    m = mock.create_autospec(StartStop, instance=True)
    c = normalize(m, "m")
    assert c.start is not None
    assert c.start.takes_token
    _invoke(c.start)
    m.start.assert_called_once_with(TOKEN)


def test_mock_with_phases_set_explicitly():
    """A Mock whose start and stop were assigned has those phases and nothing else."""
    m = mock.Mock()
    m.start = mock.Mock()
    m.stop = mock.Mock()
    c = normalize(m, "m")
    assert (c.run, c.ready) == (None, None)
    assert c.start is not None
    assert c.stop is not None


def test_spec_mock_runs_under_the_runner():
    """A Mock(spec=Cls) component is started and stopped (its async stop awaited)."""
    m = mock.Mock(spec=StartStop)
    app = App()
    app.add(m, name="m")
    with ThreadedRunner(app, signals=None):
        assert app.ready
    m.start.assert_called_once_with()
    m.stop.assert_awaited_once_with()


# -- messages for what cannot be added ---------------------------------------------


def test_object_whose_repr_raises_is_still_described():
    """An object with no phases and a raising __repr__ gets NotAComponent, not the repr's error."""

    class Weird:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    weird = Weird()
    with pytest.raises(NotAComponent) as caught:
        normalize(weird, "w")
    assert str(caught.value) == (
        f"cannot add {object.__repr__(weird)} as component 'w': it has no start, run or stop "
        f"method; give it a start(token), run(token) or stop(token) method"
    )


def test_non_callable_phase_attribute_says_what_to_do():
    """A start that is an int: 'an int', and the two ways out."""

    class Odd:
        start = 3

    with pytest.raises(NotAComponent) as caught:
        normalize(Odd(), "odd")
    assert str(caught.value) == (
        "component 'odd': its 'start' attribute is an int, not a method; lifecycle calls "
        "start(token): make it a method, or pass the phases as hooks, which skips this "
        "lookup: app.add(obj, start=obj.open, stop=obj.close)"
    )


class Conn:
    async def aclose(self) -> None: ...


async def shutdown() -> None: ...


def test_coroutine_object_as_hook_is_closed_and_explained():
    """stop=conn.aclose() (called) is refused, closed, and the message shows the call to drop."""
    conn = Conn()
    coro = conn.aclose()
    with pytest.raises(NotAComponent) as caught:
        normalize(conn, "conn", stop=coro)  # type: ignore[arg-type]
    assert str(caught.value) == (
        "the stop hook of 'conn' is a coroutine object: you called it; pass conn.aclose, "
        "not conn.aclose()"
    )
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


def test_coroutine_of_a_function_as_hook():
    """A called plain async function as hook: the message names the function, no object."""
    coro = shutdown()
    with pytest.raises(NotAComponent) as caught:
        normalize(Conn(), "conn", stop=coro)  # type: ignore[arg-type]
    assert str(caught.value) == (
        "the stop hook of 'conn' is a coroutine object: you called it; pass shutdown, "
        "not shutdown()"
    )
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


# -- periodic jobs ----------------------------------------------------------------------


def test_periodic_job_is_a_run_style_component():
    """@app.every builds a component with only run, async exactly when the job is."""
    from lifecycle._runtime.components import periodic  # noqa: PLC0415 - one test's import

    def sync_job(token):
        pass

    async def async_job():
        pass

    options = {"interval": 1.0, "jitter": 0.0, "first": "now", "on_error": "continue"}
    component, worker = periodic(sync_job, "s", **options)  # type: ignore[arg-type]
    assert (component.start, component.stop, component.is_async) == (None, None, False)
    assert component.run is not None
    assert worker.name == "s"
    component, worker = periodic(async_job, "a", **options)  # type: ignore[arg-type]
    assert component.is_async
    assert worker.is_async


def test_periodic_job_refuses_a_generator_function():
    """A generator function is no periodic job: the message says what @app.every calls."""
    from lifecycle._runtime.components import periodic  # noqa: PLC0415 - one test's import

    def gen(token):
        yield

    with pytest.raises(NotAComponent, match="periodic job 'gen' is a generator function"):
        periodic(gen, "gen", interval=1.0, jitter=0.0, first="now", on_error="continue")
