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
  ``Optional[CancelToken]``, ``Optional["CancelToken"]``, ``lifecycle.CancelToken``,
  ``Annotated[CancelToken, ...]``, and their string forms under
  ``from __future__ import annotations``), positional or keyword-only,
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

What is async: an ``async def``, and anything that hands its call to one —
a callable instance whose ``__call__`` is ``async def``, a `functools.partial`
of it, a sync decorator made with `functools.wraps` around it. Such a phase
is awaited; should the sync layer return a plain value instead, that value
is the result. A sync wrapper that runs the coroutine itself
(``asyncio.run``, asgiref's ``async_to_sync``) therefore cannot be a phase:
it would be called on the running loop; pass the async function. A sync phase that
still returns an awaitable — an ``async def`` behind a wrapper without
``functools.wraps`` — raises `TypeError` naming the component and the phase,
its coroutine closed: it fails the phase rather than being left unawaited.

What counts as a phase: ``start``, ``run``, ``stop`` and ``ready`` are looked
up with `inspect.getattr_static`, on the object, its class, and the class it
claims through ``__class__`` (so a ``Mock(spec=Cls)`` has the phases ``Cls``
defines). Names a ``__getattr__`` makes up are not phases: a bare ``Mock()``
or a remote-object proxy is refused, and a proxy given hooks has no
``ready``. A phase found is read once, at ``add``; a property that raises is
a `NotAComponent` naming the component and the attribute.

``ready()`` is called synchronously by readiness probes, so it must be a
plain function callable with no argument: an async or generator ``ready``,
one with a required parameter, or a ``ready`` that is a bool is a
`ConfigError` at ``add``.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import types
import typing
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from typing import Any, Literal

import attrs

from .._core.errors import ConfigError, NotAComponent
from .._core.periodic import First, OnError
from .._core.tokens import CancelSource, CancelToken, cancel_in_background, on_cancel_inline
from .._workers.periodic import PeriodicWorker

__all__ = [
    "Call",
    "Component",
    "normalize",
    "own_attribute",
    "periodic",
    "resource",
    "worker",
]

Phase = Literal["start", "run", "stop"]
PHASES: tuple[Phase, ...] = ("start", "run", "stop")


@attrs.frozen
class Call:
    """One of a component's phases, ready to call with a token.

    ``fn`` is the user's ``async def`` itself, or a wrapper around the user's
    callable: an async one that awaits what a sync layer returns, or, for a
    plain function, one that raises `TypeError` if the call returns an
    awaitable (nothing would await it).
    """

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


# -- what a callable hands its call to ---------------------------------------------

_P = inspect.Parameter
_LAYERS = 32  # followed at most, so that a __wrapped__ cycle ends


def _layers(fn: object) -> Iterator[object]:
    """``fn`` and each callable it hands its call to, outermost first.

    Followed as `inspect.signature` reads them: a `functools.partial`'s
    function, a bound method's function, ``__wrapped__`` (which
    `functools.wraps` sets), and a callable instance's class ``__call__``.
    ``__wrapped__`` and ``__call__`` are read statically: no ``__getattr__``
    or property runs.
    """
    target = fn
    for _ in range(_LAYERS):
        yield target
        wrapped = inspect.getattr_static(target, "__wrapped__", None)
        if isinstance(target, functools.partial):
            target = target.func
        elif inspect.ismethod(target):
            target = target.__func__
        elif wrapped is not None and callable(wrapped):
            target = wrapped
        elif not isinstance(target, type) and not inspect.isroutine(target):
            call = inspect.getattr_static(type(target), "__call__", None)
            if not inspect.isfunction(call):
                return
            target = call
        else:
            return


def _code_is(fn: object, predicate: Callable[[Any], bool]) -> bool:
    """``predicate(fn)`` (an `inspect` code-flag test), for functions with real code flags.

    A ``MagicMock`` made by ``create_autospec`` poses as a function whose
    flags answer every such test yes; its flags are no int.
    """
    flags = getattr(getattr(fn, "__code__", None), "co_flags", 0)
    return isinstance(flags, int) and predicate(fn)


def _is_async(fn: object) -> bool:
    """Whether calling ``fn`` gives a coroutine to await: it, or a layer it hands to, is async."""
    return any(_code_is(layer, inspect.iscoroutinefunction) for layer in _layers(fn))


def _is_generator_function(fn: object) -> bool:
    return _code_is(fn, inspect.isgeneratorfunction) or _code_is(fn, inspect.isasyncgenfunction)


def _namespace(fn: Callable[..., Any]) -> dict[str, Any]:
    """The globals that ``fn``'s string annotations were written against: its innermost layer's."""
    found: dict[str, Any] = {}
    for layer in _layers(fn):
        namespace = getattr(layer, "__globals__", None)
        if isinstance(namespace, dict):
            found = namespace
    return found


# -- which parameter receives the token ----------------------------------------------

# What an annotation that cannot be evaluated (a name imported only for type checkers)
# may say and still mean the token: ``CancelToken``, ``x.CancelToken``, either one in
# ``Optional[...]`` or with ``| None``; not ``Callable[[CancelToken], None]``.
_TOKEN_NAME = r"""['"]?(?:\w+\.)*CancelToken['"]?"""  # noqa: S105 - a pattern, no secret
_TOKEN_TEXT = re.compile(
    rf"(?:\w+\.)*Optional\[\s*{_TOKEN_NAME}\s*\]"
    rf"|{_TOKEN_NAME}(?:\s*\|\s*None)?"
    rf"|None\s*\|\s*{_TOKEN_NAME}"
)
# A quoted annotation under ``from __future__ import annotations`` is a string of a
# string: evaluated twice at most.
_EVALUATIONS = 2


def _annotates_token(annotation: object, fn: Callable[..., Any], evaluated: int = 0) -> bool:
    """Whether ``annotation`` is ``CancelToken`` or names it.

    Through unions (``| None``, ``Optional``), ``Annotated`` (its type, not its
    metadata), strings and forward references (``Optional["CancelToken"]``).
    """
    if isinstance(annotation, typing.ForwardRef):
        annotation = annotation.__forward_arg__
    if isinstance(annotation, str):
        if evaluated == _EVALUATIONS:
            return False
        try:
            # Evaluated as typing.get_type_hints does: the annotation is the user's own code.
            value = eval(annotation, _namespace(fn))  # noqa: S307
        except Exception:  # noqa: BLE001 - e.g. a name imported only for type checkers
            return _TOKEN_TEXT.fullmatch(annotation.strip()) is not None
        return _annotates_token(value, fn, evaluated + 1)
    if annotation is CancelToken:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # Annotated[T, metadata...]: T alone is the type
        return _annotates_token(typing.get_args(annotation)[0], fn, evaluated)
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        return any(_annotates_token(arg, fn, evaluated) for arg in typing.get_args(annotation))
    return False


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


def _awaitable(result: object) -> str | None:
    """What ``result`` is if it is awaitable ("a coroutine", "a Future"), else None.

    A coroutine is closed: it will never run, and closed it warns of no
    "never awaited" coroutine. Other awaitables (a future, a task) belong to
    whoever made them and are left alone.
    """
    if not inspect.isawaitable(result):
        return None
    if inspect.iscoroutine(result):
        result.close()
        return "a coroutine"
    return _a(type(result).__name__)


def _call(fn: Callable[..., Any], where: str, what: str) -> Call:
    """``fn`` as a `Call`; ``where`` names it at ``add``, ``what`` when it runs ("run of 'job'")."""
    takes_token, keyword = _token_parameter(fn, where)
    if keyword is None and _code_is(fn, inspect.iscoroutinefunction):
        return Call(fn, is_async=True, takes_token=takes_token)

    def call(args: tuple[CancelToken, ...]) -> Any:
        return fn(**{keyword: args[0]}) if keyword is not None else fn(*args)

    if _is_async(fn):

        async def awaited(*args: CancelToken) -> Any:
            # A sync layer (a decorator) may return a plain value: nothing to await then.
            result = call(args)
            return await result if inspect.isawaitable(result) else result

        return Call(awaited, is_async=True, takes_token=takes_token)

    def checked(*args: CancelToken) -> Any:
        result = call(args)
        kind = _awaitable(result)
        if kind == "a coroutine":
            raise TypeError(
                f"{what} returned a coroutine: it is an async function behind a sync "
                f"wrapper; decorate with functools.wraps, or make the wrapper async def"
            )
        if kind is not None:
            name = type(result).__name__
            raise TypeError(
                f"{what} returned {kind}, which nothing would await: lifecycle runs a plain "
                f"def in a thread; make it async def and await the {name} there"
            )
        return result

    return Call(checked, is_async=False, takes_token=takes_token)


# -- what can be registered -----------------------------------------------------------


def _a(noun: str) -> str:
    """``noun`` with its article: "an int", "a str"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _safe_repr(obj: object) -> str:
    """``repr(obj)``, or the default ``<Cls object at 0x...>`` if its ``__repr__`` raises."""
    try:
        return repr(obj)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        return object.__repr__(obj)


def describe(obj: object) -> str:
    """A short readable name for an object: its function or class name."""
    if isinstance(obj, type):
        return obj.__name__
    try:
        name = getattr(obj, "__name__", None)
    except Exception:  # noqa: BLE001 - a proxy's __getattr__ may raise anything
        name = None
    return name if isinstance(name, str) else type(obj).__name__.lower()


def _made_by_a_call(obj: object) -> str | None:
    """What ``obj`` is if calling a coroutine or generator function made it, else None."""
    if inspect.iscoroutine(obj):
        return "a coroutine object"
    if inspect.isasyncgen(obj):
        return "an async generator object"
    if inspect.isgenerator(obj):
        return "a generator object"
    return None


def _discard(obj: object) -> None:
    """Close ``obj`` if it is a coroutine: it will never run, and closed it warns of nothing."""
    if inspect.iscoroutine(obj):
        obj.close()


def _called_function(obj: object, name: str) -> str | None:
    """The message for a class, a coroutine or a generator object: the thing, not its call."""
    if isinstance(obj, type):
        cls = obj.__name__
        return f"{cls!r} is a class; register an instance: app.add({cls}()), not app.add({cls})"
    what = _made_by_a_call(obj)
    if what is None:
        return None
    _discard(obj)
    decorator = "worker" if what == "a coroutine object" else "resource"
    fn = getattr(obj, "__name__", "fn")
    return (
        f"cannot add {name!r}: it is {what} ({fn}() was called); pass the function, not its "
        f"call: app.{decorator}({fn}), or decorate it with @app.{decorator}"
    )


def _called_hook(phase: Phase, name: str, obj: object, hook: object) -> str | None:
    """The message for a hook that is a coroutine or generator object (``stop=c.aclose()``)."""
    what = _made_by_a_call(hook)
    if what is None:
        return None
    prefix = "cr" if inspect.iscoroutine(hook) else "ag" if inspect.isasyncgen(hook) else "gi"
    code, frame = getattr(hook, f"{prefix}_code"), getattr(hook, f"{prefix}_frame")
    fn = getattr(hook, "__name__", "fn")
    # Not begun yet, its frame holds its arguments: the first is the object for a method.
    if code.co_argcount and frame is not None and frame.f_locals.get(code.co_varnames[0]) is obj:
        fn = f"{name}.{fn}"
    _discard(hook)
    return f"the {phase} hook of {name!r} is {what}: you called it; pass {fn}, not {fn}()"


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
_HOOKS_EXAMPLE = "app.add(obj, start=obj.open, stop=obj.close)"


def _not_callable_hook(phase: Phase, name: str, hook: object) -> str:
    if isinstance(hook, str) and hook.isidentifier():
        fix = f"pass {name}.{hook}, not {hook!r}"
    else:
        fix = f"pass a function or a bound method, such as {name}.{_HOOK_EXAMPLES[phase]}"
    return (
        f"the {phase} hook of {name!r} must be callable, got {_safe_repr(hook)} "
        f"({_a(type(hook).__name__)}); {fix}"
    )


def _not_a_method(phase: Phase, name: str, value: object) -> str:
    return (
        f"component {name!r}: its {phase!r} attribute is {_a(type(value).__name__)}, not a "
        f"method; lifecycle calls {phase}(token): make it a method, or pass the phases as "
        f"hooks, which skips this lookup: {_HOOKS_EXAMPLE}"
    )


def _no_phases(obj: object, name: str) -> str:
    what = f"cannot add {_safe_repr(obj)} as component {name!r}"
    if inspect.getattr_static(type(obj), "__getattr__", None) is not None:
        return (
            f"{what}: it has no start, run or stop methods of its own (attributes produced by "
            f"__getattr__ are not looked up): pass explicit hooks, app.add(obj, "
            f"start=obj.start, stop=obj.stop), or give a mock a spec: Mock(spec=TheClass)"
        )
    hint = (
        "decorate a function with @app.worker or @app.resource"
        if callable(obj)
        else "give it a start(token), run(token) or stop(token) method"
    )
    return f"{what}: it has no start, run or stop method; {hint}"


_ABSENT = object()


def _claimed_class(obj: object) -> type:
    """The class ``obj`` says it is (``__class__``): a ``Mock(spec=Cls)`` says ``Cls``."""
    try:
        claimed = obj.__class__
    except Exception:  # noqa: BLE001 - a property that raises claims nothing
        return type(obj)
    return claimed if isinstance(claimed, type) else type(obj)


def own_attribute(obj: object, attr: str, name: str) -> Any:
    """``obj.attr`` if ``obj`` has it of its own, else None; ``__getattr__`` never invents it.

    "Of its own": `inspect.getattr_static` finds it on the object or its
    class, or on the class the object claims through ``__class__`` (a
    ``Mock(spec=Cls)``, a transparent proxy). Only then is it read, once.

    Example::

        bind = own_attribute(obj, "lifecycle_bind", name)

    Raises:
        NotAComponent: reading it raised (a property that fails); the message
            names the component ``name`` and the attribute.
    """
    if inspect.getattr_static(obj, attr, _ABSENT) is _ABSENT:
        claimed = _claimed_class(obj)
        if claimed is type(obj) or inspect.getattr_static(claimed, attr, _ABSENT) is _ABSENT:
            return None
    try:
        return getattr(obj, attr)
    except Exception as exc:
        # Hooks skip the lookup of start, run and stop; nothing skips that of the others.
        hooks = f", or pass the phases as hooks: {_HOOKS_EXAMPLE}" if attr in PHASES else ""
        raise NotAComponent(
            f"component {name!r}: reading its {attr!r} attribute raised "
            f"{type(exc).__name__}: {exc}; lifecycle reads {attr!r} once, at add: make it a "
            f"plain method{hooks}"
        ) from exc


_PROBES_CALL = (
    "readiness probes call it synchronously: make it a plain def that returns a cached flag"
)


def _probe(obj: object, name: str) -> Callable[[], bool] | None:
    """``obj``'s ``ready()``, checked to be a plain quick call; None if it has none.

    Raises:
        ConfigError: ``ready`` is async, a generator function, needs an
            argument, or is a bool rather than a method.
    """
    ready = own_attribute(obj, "ready", name)
    if ready is None:
        return None
    if not callable(ready):
        if isinstance(ready, bool):
            raise ConfigError(
                f"ready of {name!r} is a bool, not a method; readiness probes call ready(): "
                f"make it a method, def ready(self) -> bool: return self._ready"
            )
        return None  # another attribute of that name (an Event, say) is no probe
    where = f"ready() of {name!r}"
    if _is_async(ready) or _code_is(ready, inspect.isasyncgenfunction):
        raise ConfigError(f"{where} is async; {_PROBES_CALL}")
    if _code_is(ready, inspect.isgeneratorfunction):
        raise ConfigError(
            f"{where} is a generator function, whose call is always truthy; {_PROBES_CALL}"
        )
    try:
        params = inspect.signature(ready).parameters.values()
    except (TypeError, ValueError):
        params = {}.values()  # a builtin without a readable signature: trusted
    variadic = (_P.VAR_POSITIONAL, _P.VAR_KEYWORD)
    needed = next((p for p in params if p.default is _P.empty and p.kind not in variadic), None)
    if needed is not None:
        raise ConfigError(
            f"{where} has a required parameter {needed.name!r}; readiness probes call it with "
            f"no argument: give {needed.name!r} a default"
        )

    def probe() -> bool:
        result = ready()
        kind = _awaitable(result)
        if kind is not None:
            raise TypeError(f"{where} returned {kind}; {_PROBES_CALL}")
        return bool(result)

    return probe


def _phase(fn: Callable[..., Any], where: str, what: str) -> Call:
    """A start/run/stop method or hook as a `Call`; a generator function is refused."""
    if _is_generator_function(fn):
        raise NotAComponent(
            f"{where} is a generator function: calling it runs none of its body; make it a "
            f"plain method, or register a generator function with @app.resource"
        )
    return _call(fn, where, what)


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
        NotAComponent: the object has no start, run or stop of its own; it is a
            class, a coroutine or generator object, or (without hooks) a
            thread, process, executor or asyncio task; a hook is not callable
            (or was called: a coroutine object); reading a phase raised.
        ConfigError: a phase has required parameters the token cannot fill;
            ``ready`` is not a plain function callable with no argument.
    """
    hooks: dict[Phase, Callable[..., Any] | None] = {"start": start, "run": run, "stop": stop}
    explicit = any(hook is not None for hook in hooks.values())
    # Every called hook is closed before the first refusal: none is left unawaited.
    called = [_called_hook(phase, name, obj, hook) for phase, hook in hooks.items()]
    refusal = next((message for message in called if message is not None), None)
    refusal = refusal or _called_function(obj, name)
    refusal = refusal or (None if explicit else _duck_typing_trap(obj, name))
    if refusal is not None:
        raise NotAComponent(refusal)
    phases: dict[Phase, Call] = {}
    for phase in PHASES:
        fn: Any = hooks[phase] if explicit else own_attribute(obj, phase, name)
        if fn is None:
            continue
        if not callable(fn):
            raise NotAComponent(
                _not_callable_hook(phase, name, fn) if explicit else _not_a_method(phase, name, fn)
            )
        where = f"the {phase} hook of {name!r}" if explicit else f"{name}.{phase}()"
        phases[phase] = _phase(fn, where, f"{phase} of {name!r}")
    if not phases:
        raise NotAComponent(_no_phases(obj, name))
    return Component(
        name,
        obj,
        phases.get("start"),
        phases.get("run"),
        phases.get("stop"),
        _probe(obj, name),
        "object",
    )


def worker(fn: Callable[..., Any], name: str) -> Component:
    """A worker function: ``fn(token)`` or ``async fn(token)`` is the component's ``run``."""
    if not callable(fn):
        raise NotAComponent(f"@app.worker needs a function, got {_safe_repr(fn)}")
    if _is_generator_function(fn):
        raise NotAComponent(
            f"worker {name!r} is a generator function; use @app.resource for the "
            f"start-yield-stop style"
        )
    run = _call(fn, f"worker {name}()", f"run of {name!r}")
    return Component(name, fn, None, run, None, None, "worker")


def periodic(
    fn: Callable[..., Any],
    name: str,
    *,
    interval: float,
    jitter: float,
    first: First,
    on_error: OnError,
) -> tuple[Component, PeriodicWorker]:
    """A periodic job: ``fn(token)`` or ``async fn(token)`` run by a `PeriodicWorker`."""
    if not callable(fn):
        raise NotAComponent(f"@app.every needs a function, got {_safe_repr(fn)}")
    if _is_generator_function(fn):
        raise NotAComponent(
            f"periodic job {name!r} is a generator function; @app.every calls a plain or "
            f"async function once per interval"
        )
    job = _call(fn, f"periodic job {name}()", f"run of {name!r}")
    runner = PeriodicWorker(
        lambda token: job.fn(*job.args(token)),
        interval=interval,
        jitter=jitter,
        first=first,
        on_error=on_error,
        name=name,
        is_async=job.is_async,
    )
    run = Call(runner.run, is_async=job.is_async, takes_token=True)
    return Component(name, fn, None, run, None, None, "worker"), runner


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
        self.call = _call(fn, f"resource {name}()", f"start of {name!r}")
        # The token the generator function gets: it fires when the phase
        # token in effect (start's, then stop's) does.
        self.source = CancelSource()
        self.value: Any = None

    def _follow(self, token: CancelToken) -> Callable[[], bool]:
        """Forward ``token``'s cancellation to the generator's token while a phase runs."""
        # Inline: the forwarding itself is a flag flip; the generator's own
        # callbacks then run on the callback threads, off the cancelling thread.
        return on_cancel_inline(
            token, lambda: cancel_in_background(self.source, token.reason or "cancelled")
        )


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
