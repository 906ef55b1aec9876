"""`App`: the registry users talk to, its introspection, its report and its plan."""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, overload

import attrs

from .._core.drain import Drain, drain_bounds
from .._core.errors import (
    ConfigError,
    DuplicateComponent,
    UnknownDependency,
    cut_of,
    describe_error,
)
from .._core.graph import Graph, analyze, critical_path
from .._core.periodic import First, OnError
from .._core.restart import RestartMode, RestartPolicy, as_policy
from .._core.scheduler import ComponentInfo, NodeSpec
from .._core.states import AppState, ComponentState, ExitCode
from .._core.tokens import CancelToken
from .._workers.periodic import PeriodicWorker
from .components import (
    Component,
    describe,
    normalize,
    own_attribute,
    periodic,
    resource,
    resource_value,
    worker,
)
from .run import Run

__all__ = ["App", "Blueprint", "ShutdownPlan"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
Restart = RestartMode | RestartPolicy | None


def check_seconds(value: object, what: str, *, allow_none: bool = False) -> float | None:
    """A number of seconds >= 0, validated; ``math.inf`` for no limit.

    A value of ``threading.TIMEOUT_MAX`` (about 292 years) or more is no limit
    either: it is ``math.inf`` from here on, since no thread can wait that long
    (``OverflowError``).

    Raises:
        ConfigError: not a number (a bool is none), NaN or negative; the
            message names ``what``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be a number of seconds, not {value!r}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise ConfigError(f"{what} must be >= 0 seconds (math.inf for no limit), got {value!r}")
    return math.inf if seconds >= threading.TIMEOUT_MAX else seconds


def _check_health(health: object) -> tuple[str, int] | None:
    if health is None:
        return None
    if isinstance(health, int) and not isinstance(health, bool):
        health = ("127.0.0.1", health)
    if (
        isinstance(health, tuple)
        and len(health) == 2
        and isinstance(health[0], str)
        and isinstance(health[1], int)
        and 0 <= health[1] <= 65535
    ):
        return (health[0], health[1])
    raise ConfigError(
        f"health must be a port number, a (host, port) tuple or None, got {health!r}; "
        f"e.g. health=8081 or health=('0.0.0.0', 8081)"
    )


@attrs.frozen
class ShutdownPlan:
    """The worst case of a shutdown, computed from the declared timeouts.

    Attributes:
        drain_delay: the app's drain delay.
        path: the chain of components whose stop timeouts add up to the
            longest wait, in stop order (each must wait for the one before).
        path_timeouts: the longest stop phase of each component on ``path``:
            its stop_timeout, twice for a component with both ``run`` and
            ``stop`` (``run`` gets stop_timeout to return, then ``stop`` does).
        worst_case: ``drain_delay + sum(path_timeouts)``.
        shutdown_timeout: the app's global bound.
        fits: ``worst_case <= shutdown_timeout``: when False, a slow shutdown
            is cut by the global deadline before the last components stop.

    Example::

        plan = app.plan()
        if not plan.fits:
            raise SystemExit(f"shutdown budget: {plan.describe()}")
    """

    drain_delay: float
    path: tuple[str, ...]
    path_timeouts: tuple[float, ...]
    worst_case: float
    shutdown_timeout: float

    @property
    def fits(self) -> bool:
        """Whether the worst case fits in ``shutdown_timeout``."""
        return self.worst_case <= self.shutdown_timeout

    def describe(self) -> str:
        """One line: ``drain 5s + api 10s -> db 10s = 25s of 30s``."""
        steps = " -> ".join(
            f"{n} {t:g}s" for n, t in zip(self.path, self.path_timeouts, strict=True)
        )
        verdict = "fits" if self.fits else "OVERRUNS"
        return (
            f"drain {self.drain_delay:g}s + {steps or 'nothing'} = {self.worst_case:g}s, "
            f"{verdict} shutdown_timeout {self.shutdown_timeout:g}s"
        )


_NONE = object()


def _arrival_sources(obj: object, name: str) -> list[object]:
    """What of ``obj`` has a ``last_arrival``: itself, its tracker, its middleware, its tracker."""
    found: dict[int, object] = {}
    layer = [obj]
    for _ in range(3):
        below: list[object] = []
        for candidate in layer:
            if inspect.getattr_static(candidate, "last_arrival", _NONE) is not _NONE:
                found[id(candidate)] = candidate
            for attr in ("tracker", "middleware"):
                inner = own_attribute(candidate, attr, name)
                if inner is not None and inner is not candidate:
                    below.append(inner)
        layer = below
    return list(found.values())


@attrs.define(eq=False)
class _Entry:
    component: Component
    depends_on: tuple[object, ...]
    start_timeout: float | None
    stop_timeout: float | None
    critical: bool
    restart: RestartPolicy = attrs.field(factory=RestartPolicy)


@attrs.frozen
class Blueprint:
    """What a driver needs of an App's declaration for one run, validated.

    Attributes:
        graph: the dependency graph.
        specs: what the scheduler needs of each component, in start order.
        components: name -> the component in its internal shape.
        plan: the worst-case shutdown (logged when it overruns).
    """

    graph: Graph
    specs: tuple[NodeSpec, ...]
    components: Mapping[str, Component]
    plan: ShutdownPlan


class App:
    """The components of a service, their dependencies and their timeouts.

    Args:
        name: for logs and reports.
        shutdown_timeout: bounds the whole shutdown, drain delay included.
        drain_delay: after a shutdown request, seconds to keep serving with
            readiness off before the first stop (so load balancers notice),
            or a `Drain` (at least ``min``, at most ``max`` seconds, ending
            once no request or connection arrived for ``quiet`` seconds).
        stop_timeout: default per-component bound on its stop phase.
        start_timeout: default per-component bound on ``start``.
        health: serve ``/livez``, ``/readyz``, ``/startupz`` and ``/status``
            on this port (loopback) or ``(host, port)``, from the start of
            startup to the very end of shutdown. In a pod use
            ``("0.0.0.0", 8081)`` so the kubelet can reach it. None: off.

    Example::

        app = lifecycle.App("shop", drain_delay=5, shutdown_timeout=30)
        db = app.add(Pool(dsn))
        app.add(HttpServer(port=8080), depends_on=[db])

        @app.worker(depends_on=[db])
        def mailer(token):
            while not token.wait(1.0):
                send_pending()

        sys.exit(lifecycle.run(app))

    Added in 0.1.
    """

    def __init__(
        self,
        name: str = "app",
        *,
        shutdown_timeout: float = 30.0,
        drain_delay: float | Drain = 0.0,
        stop_timeout: float = 10.0,
        start_timeout: float = 30.0,
        health: tuple[str, int] | int | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"the app's name must be a non-empty str, got {name!r}")
        self.name = name
        self.shutdown_timeout = check_seconds(shutdown_timeout, "shutdown_timeout") or 0.0
        self.drain_delay: float | Drain = (
            drain_delay
            if isinstance(drain_delay, Drain)
            else check_seconds(drain_delay, "drain_delay") or 0.0
        )
        self.stop_timeout = check_seconds(stop_timeout, "stop_timeout") or 0.0
        self.start_timeout = check_seconds(start_timeout, "start_timeout") or 0.0
        self._health_address = _check_health(health)
        self._entries: dict[str, _Entry] = {}
        self._names_by_id: dict[int, str] = {}
        # What records arrivals (an InFlight, a middleware): read by an adaptive drain.
        self._arrivals: list[object] = []
        self._lock = threading.Lock()
        self._frozen = False
        # An App runs once: its one run's state, which the driver claims.
        self._run = Run(self.shutdown_timeout)

    def __repr__(self) -> str:
        return f"<App {self.name!r} {self._run.state} components={len(self._entries)}>"

    # -- registration ------------------------------------------------------

    def add(
        self,
        component: T,
        *,
        name: str | None = None,
        depends_on: Iterable[object] = (),
        start_timeout: float | None = None,
        stop_timeout: float | None = None,
        critical: bool = True,
        restart: Restart = None,
        start: Callable[..., Any] | None = None,
        run: Callable[..., Any] | None = None,
        stop: Callable[..., Any] | None = None,
    ) -> T:
        """Register a component; return it (so it can be named in ``depends_on``).

        Args:
            component: an object with any of ``start(token)``, ``run(token)``,
                ``stop(token)`` (plain or async) and optionally ``ready()``;
                or any object, with explicit hooks.
            name: unique name; defaults to the name a lifecycle server was
                given (``HTTPServer(handler, address, name="api")``), else
                the class name in lower case (``-2``, ``-3``... appended
                when taken).
            depends_on: names or component objects this one needs; they start
                before it and stop after it. May be registered later.
            start_timeout: bound on ``start``; the app's default if None.
            stop_timeout: bound on the stop phase; the app's default if None.
            critical: if False, a failure in ``start`` or ``run`` is reported
                but does not stop the app (unless a critical component
                depends on it).
            restart: when ``run`` is started again once it ended:
                ``"never"`` (the default), ``"on-failure"`` (it raised),
                ``"always"``, or a `RestartPolicy` (limits and backoff). Only
                ``run`` is restarted, after the backoff; ``start`` and
                ``stop`` are still called once. Past the policy's limit the
                component is FAILED (a critical one then shuts the app down).
                Only for components with ``run``.
            start: an explicit hook called instead of the object's ``start``
                (for objects whose methods have other names): a bound method,
                a function or a lambda, plain or ``async def``. With any hook
                given, the object's own ``start``/``run``/``stop`` are not
                looked up.
            run: the same for ``run``.
            stop: the same for ``stop``.

        Raises:
            DuplicateComponent: ``name`` is taken.
            NotAComponent: the object has no start, run or stop.
            ConfigError: a negative or NaN timeout, a restart policy for a
                component without ``run``, or the app already started.

        A component that defines ``lifecycle_bind(app)`` has it called here,
        once: that is how server components find the app's `shutdown_token`
        and deadline without being handed the app twice.

        Example::

            db = app.add(Database(dsn), stop_timeout=5)
            app.add(Api(), name="api", depends_on=[db])
            app.add(pool, start=pool.open, stop=pool.close, depends_on=[db])
        """
        return self._register(
            component,
            lambda n: normalize(component, n, start=start, run=run, stop=stop),
            name=name,
            depends_on=depends_on,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
            critical=critical,
            restart=restart,
        )

    @overload
    def worker(self, fn: F, /) -> F: ...

    @overload
    def worker(
        self,
        *,
        name: str | None = None,
        depends_on: Iterable[object] = (),
        start_timeout: float | None = None,
        stop_timeout: float | None = None,
        critical: bool = True,
        restart: Restart = None,
    ) -> Callable[[F], F]: ...

    def worker(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        depends_on: Iterable[object] = (),
        start_timeout: float | None = None,
        stop_timeout: float | None = None,
        critical: bool = True,
        restart: Restart = None,
    ) -> F | Callable[[F], F]:
        """Register ``fn(token)`` (or ``async fn(token)``) as a long-running worker.

        The function is the component's ``run``: it starts once its
        dependencies run and must return when its token is cancelled (at its
        stop phase). Returns the function, usable in ``depends_on``.

        With ``restart="on-failure"`` (or a `RestartPolicy`) a worker that
        raises is started again after a backoff, instead of failing.

        Example::

            @app.worker(depends_on=["db"], critical=False)
            async def reindex(token):
                while not await token.wait_async(60):
                    await rebuild_index()

            @app.worker(restart=lifecycle.RestartPolicy("on-failure", max_restarts=5, within=60))
            def listen(token):
                for event in subscribe(token):
                    handle(event)
        """
        return self._decorate(
            worker,
            fn,
            name=name,
            depends_on=depends_on,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
            critical=critical,
            restart=restart,
        )

    @overload
    def resource(self, fn: F, /) -> F: ...

    @overload
    def resource(
        self,
        *,
        name: str | None = None,
        depends_on: Iterable[object] = (),
        start_timeout: float | None = None,
        stop_timeout: float | None = None,
        critical: bool = True,
        restart: Restart = None,
    ) -> Callable[[F], F]: ...

    def resource(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        depends_on: Iterable[object] = (),
        start_timeout: float | None = None,
        stop_timeout: float | None = None,
        critical: bool = True,
        restart: Restart = None,
    ) -> F | Callable[[F], F]:
        """Register a generator function: code before ``yield`` starts, code after stops.

        Plain or async generators; the function may take one argument, a
        token. What it yields is available as ``app.value(fn)``.

        Example::

            @app.resource(stop_timeout=5)
            def pool():
                p = create_pool(dsn)
                yield p
                p.close()
        """
        return self._decorate(
            resource,
            fn,
            name=name,
            depends_on=depends_on,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
            critical=critical,
            restart=restart,
        )

    def every(
        self,
        interval: float,
        *,
        jitter: float = 0.0,
        first: First = "now",
        on_error: OnError = "continue",
        name: str | None = None,
        depends_on: Iterable[object] = (),
        start_timeout: float | None = None,
        stop_timeout: float | None = None,
        critical: bool = True,
        restart: Restart = None,
    ) -> Callable[[F], F]:
        """Register ``fn(token)`` (or ``async fn(token)``) to run every ``interval`` seconds.

        A run-style component (a `PeriodicWorker`): it runs once its
        dependencies run, then at every slot ``start + k * interval``,
        until its stop phase cancels its token, which also ends the wait
        between two runs at once. A run never overlaps the previous one: a
        run that overran some slots is followed by one run at the next
        slot (the skipped slots are counted, not made up).

        Args:
            interval: seconds between slots (> 0).
            jitter: each run begins up to this many seconds after its slot
                (uniformly drawn; less than ``interval``).
            first: ``"now"`` (run at once), ``"after"`` (one interval
                later) or a delay in seconds.
            on_error: a run that raises is logged with its stack and
                counted; ``"continue"`` goes on at the next slot,
                ``"fail"`` fails the component (and ``restart`` applies).
            name: as for `add` (the function's name by default).
            depends_on: as for `add`.
            start_timeout: as for `add`.
            stop_timeout: as for `add`: the wait for a run in progress to end.
            critical: as for `add`.
            restart: as for `add`; with ``on_error="fail"``, it restarts
                the schedule after a failed run.

        The next run and the last outcome (ok or error, its duration, when)
        are in `report` and ``/status``. Returns the function.

        Example::

            @app.every(60.0, jitter=5.0, depends_on=["db"])
            def purge_sessions(token):
                db.execute("DELETE FROM sessions WHERE expires < now()")

        A bare ``@app.every`` (no interval) is refused, and so is a
        restarting ``restart=`` with ``on_error="continue"``: such a run never
        raises, so it could never be restarted.

        Added in 0.3.
        """
        if callable(interval):
            raise ConfigError(
                f"@app.every needs its interval: use @app.every(60.0) above "
                f"{getattr(interval, '__name__', interval)!r}, not a bare @app.every"
            )
        if on_error == "continue" and restart is not None and as_policy(restart).restarts:
            raise ConfigError(
                f"@app.every(restart={restart!r}) with on_error='continue' can never restart: "
                "a run that raises is logged and the schedule goes on, so run() never ends "
                "by itself; pass on_error='fail' to fail and restart it, or drop restart="
            )

        def register(fn: F) -> F:
            made: list[PeriodicWorker] = []

            def build(n: str) -> Component:
                component, runner = periodic(
                    fn, n, interval=interval, jitter=jitter, first=first, on_error=on_error
                )
                made.append(runner)
                return component

            self._register(
                fn,
                build,
                name=name,
                depends_on=depends_on,
                start_timeout=start_timeout,
                stop_timeout=stop_timeout,
                critical=critical,
                restart=restart,
            )
            self._run.infos[made[0].name].periodic = made[0].schedule
            return fn

        return register

    def _decorate(
        self, build: Callable[[Any, str], Component], fn: F | None, **options: Any
    ) -> F | Callable[[F], F]:
        """What `worker` and `resource` share: usable bare or with arguments."""

        def register(f: F) -> F:
            return self._register(f, lambda n: build(f, n), **options)

        return register(fn) if fn is not None else register

    def _register(
        self,
        obj: T,
        build: Callable[[str], Component],
        *,
        name: str | None,
        depends_on: Iterable[object],
        start_timeout: float | None,
        stop_timeout: float | None,
        critical: bool,
        restart: Restart = None,
    ) -> T:
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"name must be a non-empty str, got {name!r}")
        if name is None:
            # A lifecycle server given a name of its own is registered under it.
            declared = own_attribute(obj, "_lc_name", describe(obj))
            if isinstance(declared, str) and declared:
                name = declared
        label = name or describe(obj)
        policy = as_policy(restart, owner=label)
        start_s = check_seconds(start_timeout, f"start_timeout of {label!r}", allow_none=True)
        stop_s = check_seconds(stop_timeout, f"stop_timeout of {label!r}", allow_none=True)
        if isinstance(depends_on, str | bytes):
            depends_on = (depends_on,)
        deps = tuple(depends_on)
        with self._lock:
            if self._frozen:
                raise ConfigError(
                    f"cannot add {label!r}: app {self.name!r} has already started; "
                    f"declare every component before running the app"
                )
            if name is None:
                name = label
                n = 2
                while name in self._entries:
                    name = f"{label}-{n}"
                    n += 1
            elif name in self._entries:
                raise DuplicateComponent(name)
            if id(obj) in self._names_by_id:
                raise DuplicateComponent(self._names_by_id[id(obj)])
            component = build(name)
            if policy.restarts and component.run is None:
                raise ConfigError(
                    f"component {name!r} has no run(), so restart={restart!r} has nothing to "
                    f"restart: a restart policy starts run() again once it ended; remove "
                    f"restart=..., or register a worker (or an object with run(token))"
                )
            bind = own_attribute(obj, "lifecycle_bind", name)
            if callable(bind):
                bind(self)
            for source in _arrival_sources(obj, name):
                self.watch_arrivals(source)
            self._entries[name] = _Entry(component, deps, start_s, stop_s, critical, policy)
            self._names_by_id[id(obj)] = name
            self._run.infos[name] = ComponentInfo(
                name, critical=critical, restart_policy=policy if policy.restarts else None
            )
            if policy.restarts:
                self._run.restartable.add(name)
        return obj

    # -- introspection -----------------------------------------------------

    @property
    def state(self) -> AppState:
        """The app's `AppState`."""
        return self._run.state

    @property
    def components(self) -> Mapping[str, ComponentInfo]:
        """Name -> `ComponentInfo` (state, error, timings), in registration order."""
        return MappingProxyType(self._run.infos)

    @property
    def shutdown_token(self) -> CancelToken:
        """A token cancelled when shutdown is requested, once readiness is off.

        Servers watch it to start draining: keep serving, but answer with
        ``Connection: close``. Component ``run`` tokens are *not* cancelled
        then; they are at the component's own stop phase.

        It is cancelled off the thread that requested, never inside a
        signal handler: a moment after the request by the runner's control
        thread or loop; with no runner running (before ``start()``) by the
        ``lifecycle-deferred`` thread, before `request_shutdown` returns
        (except in a signal handler, which cannot wait: a moment after).
        Its ``on_cancel`` callbacks run on a lifecycle callback thread: a slow
        one delays only itself. Readiness is off before `request_shutdown`
        returns, always.

        Example::

            app.shutdown_token.on_cancel(lambda: log.info("draining"))
        """
        return self._run.shutdown_token

    @property
    def shutdown_deadline(self) -> float | None:
        """``time.monotonic()`` value by which the shutdown must end; None before a request.

        The scheduler's deadline, ``shutdown_timeout`` after the request (after
        the start, for a request made before it).
        """
        return self._run.shutdown_deadline

    @property
    def shutdown_reason(self) -> str | None:
        """Why the shutdown was requested, or None."""
        return self._run.shutdown_reason

    @property
    def exit_code(self) -> ExitCode | None:
        """The exit code once the app finished, else None."""
        return self._run.exit_code

    @property
    def health_address(self) -> tuple[str, int] | None:
        """Where the health endpoint listens: ``(host, port)``, or None without one.

        Once the app runs, the port is the one bound (the port the system chose
        for ``health=0``).
        """
        return self._run.health_address or self._health_address

    @property
    def ready(self) -> bool:
        """Whether the app should receive traffic.

        True while RUNNING, until a shutdown is requested (it turns False
        synchronously in `request_shutdown` and in the runner's signal
        handler) or a critical component's ``run`` ends (False as it ends, in
        its own thread, before the shutdown it causes), and while every
        component's ``ready()`` (where defined) returns True. A non-critical
        component that failed is shown in the report but does not make the
        app unready. A critical component with a restart policy makes the
        app unready from the moment its ``run`` ends until it runs again
        (RESTARTING in between); a non-critical one restarting does not.
        """
        run = self._run
        if (
            run.shutdown_reason is not None
            or run.critical_down is not None
            or run.state is not AppState.RUNNING
        ):
            return False
        for entry_name, entry in self._entries.items():
            info = run.infos[entry_name]
            if info.state is not ComponentState.RUNNING:
                if info.state is ComponentState.RESTARTING and not info.critical:
                    continue  # a non-critical one restarting leaves the app ready
                if info.critical or not info.failed:
                    return False
                continue
            if info.critical and entry_name in run.restartable and not run.run_live(entry_name):
                return False  # its run ended; RESTARTING (or a failure) comes next
            probe = entry.component.ready
            if probe is None:
                continue
            try:
                if not probe():
                    return False
            except Exception:  # noqa: BLE001 - a probe that raises means "not ready"
                return False
        return True

    def value(self, component: object) -> Any:
        """What a ``@app.resource`` generator yielded (None before it started).

        Example::

            conn = app.value(pool)      # or app.value("pool")
        """
        name = self._resolve(component, asker=None)
        return resource_value(self._entries[name].component)

    def graph(self) -> Graph:
        """The validated dependency graph.

        Raises:
            UnknownDependency, CycleError: the declaration is invalid.
        """
        declared = {
            name: [self._resolve(d, asker=name) for d in entry.depends_on]
            for name, entry in self._entries.items()
        }
        return analyze(declared)

    def start_order(self) -> list[str]:
        """Every component name, each after its dependencies.

        Raises:
            UnknownDependency, CycleError: the declaration is invalid.
        """
        return list(self.graph().order)

    def watch_arrivals(self, source: object) -> None:
        """Let an adaptive drain (`Drain`) read ``source.last_arrival`` (idempotent).

        ``App.add`` does it for the servers it is given (their ``tracker``,
        their ``middleware``) and a middleware bound to the app does it for
        itself; call it for what serves requests outside them, such as an
        `InFlight` of your own. An app with a `Drain` that watches nothing
        drains to ``max``: it cannot tell that traffic stopped.

        Example::

            >>> app = lifecycle.App()
            >>> app.watch_arrivals(lifecycle.InFlight("jobs"))
            >>> app.last_arrival() is None
            True

        Added in 0.4.
        """
        if all(seen is not source for seen in self._arrivals):
            self._arrivals.append(source)

    @property
    def arrival_sources(self) -> tuple[object, ...]:
        """What an adaptive drain reads arrivals from (see `watch_arrivals`)."""
        return tuple(self._arrivals)

    def last_arrival(self) -> float | None:
        """When the last request or connection arrived at any of the app's servers; None if none.

        A ``time.monotonic()`` value: the latest ``last_arrival`` of the
        components' trackers (`InFlight`), middlewares and servers, and of
        any component with a ``last_arrival`` attribute of its own. An
        adaptive drain (`Drain`) ends ``quiet`` seconds after it.

        Example::

            >>> lifecycle.App().last_arrival() is None
            True

        Added in 0.4.
        """
        latest: float | None = None
        for source in self._arrivals:
            at = getattr(source, "last_arrival", None)
            if isinstance(at, float) and (latest is None or at > latest):
                latest = at
        return latest

    def plan(self) -> ShutdownPlan:
        """The worst-case shutdown: drain delay + the heaviest chain of stop timeouts.

        Example::

            >>> app.plan().describe()
            'drain 5s + api 10s -> db 10s = 25s, fits shutdown_timeout 30s'
        """
        graph = self.graph()
        total, path = critical_path(graph, self._stop_budget)
        drain_max = drain_bounds(self.drain_delay)[1]  # a Drain: its worst case, max
        return ShutdownPlan(
            drain_delay=drain_max,
            path=path,
            path_timeouts=tuple(self._stop_budget(n) for n in path),
            worst_case=drain_max + total,
            shutdown_timeout=self.shutdown_timeout,
        )

    def report(self) -> dict[str, Any]:
        """A JSON-ready snapshot: the app and every component's state, error and timings.

        Times are seconds since the run began (the app entered STARTING):
        ``phases`` maps each app state the run has reached to when it was
        entered; each component has ``start_at`` / ``stop_at`` (when that
        phase began, or None) beside ``start_seconds`` / ``stop_seconds``
        (how long it took), its ``depends_on``, ``start_timeout`` and
        ``stop_budget`` (the longest its stop phase may take; None for no
        bound), and, when its stop cut work
        at the deadline, ``cut`` (the first 20, oldest first) and
        ``cut_count``. `lifecycle.timeline` draws this as a Gantt chart.

        Example::

            report = app.report()
            print(report["state"], report["exit_code"], report["phases"].get("stopping"))
        """
        run = self._run
        sched = run.scheduler
        return self._report_from(
            run.infos,
            {} if sched is None else dict(sched.app_entered),
            time.monotonic(),
            state=run.state.value,
            ready=self.ready,
            exit_code=None if run.exit_code is None else int(run.exit_code),
            shutdown_reason=run.shutdown_reason,
        )

    def _report_from(
        self,
        infos: Mapping[str, ComponentInfo],
        entered: Mapping[AppState, float],
        now: float,
        **head: Any,
    ) -> dict[str, Any]:
        """A `report` of ``infos``, the times the app ``entered`` each state, at ``now``.

        ``head`` is what stands before the declaration's own fields (the state,
        the exit code...): the run's, or a simulation's (`lifecycle.testing`).
        """
        origin = entered.get(AppState.STARTING)

        def since(at: float | None) -> float | None:
            return None if at is None or origin is None else round(at - origin, 6)

        return {
            "app": self.name,
            **head,
            "shutdown_timeout": _finite(self.shutdown_timeout),
            "drain_delay": _drain_json(self.drain_delay),
            "phases": {state.value: since(at) for state, at in entered.items()},
            "components": {
                name: self._component_report(name, info, since, now)
                for name, info in infos.items()
            },
        }

    def _declared_deps(self, name: str) -> list[str]:
        """The names ``name`` was declared to depend on (before a run resolved them)."""
        entry = self._entries.get(name)
        if entry is None:
            return []
        return [
            d if isinstance(d, str) else self._names_by_id.get(id(d), repr(d))
            for d in entry.depends_on
        ]

    def _component_report(
        self,
        name: str,
        info: ComponentInfo,
        since: Callable[[float | None], float | None],
        now: float,
    ) -> dict[str, Any]:
        """One component's entry of `report` (``since``: a time to seconds since the start)."""
        entry: dict[str, Any] = {
            "state": info.state.value,
            "critical": info.critical,
            "error": None if info.error is None else describe_error(info.error),
            "timed_out": info.timed_out,
            "start_seconds": _round(info.start_duration),
            "stop_seconds": _round(info.stop_duration),
            "start_at": since(info.start_began),
            "stop_at": since(info.stop_began),
            "depends_on": list(info.depends_on) or self._declared_deps(name),
            "start_timeout": _finite(self._start_timeout(name)),
            "stop_budget": _finite(self._stop_budget(name)),
            "stop_called": info.stop_called,
            "restarts": info.restarts,
            "next_restart_in": None
            if info.next_restart is None
            else round(max(0.0, info.next_restart - now), 6),
        }
        if info.restart_error is not None:
            error = info.restart_error
            entry["restart_error"] = describe_error(error)
        cut = cut_of(info.error)  # a cut inside an exception group counts too
        if cut:
            entry["cut"] = cut[:20]
            entry["cut_count"] = len(cut)
        if info.periodic is not None:
            entry["periodic"] = info.periodic.status(now, time.time(), with_error=True)
        return entry

    # -- control -----------------------------------------------------------

    def request_shutdown(self, reason: str = "requested") -> None:
        """Ask the app to shut down. Thread-safe, signal-safe, idempotent.

        Readiness turns False before this returns; `shutdown_token` is
        cancelled off this thread (see there); the runner then drains and
        stops. In a signal handler it only records the request and wakes
        another thread, so it is safe in a signal handler of your own, in
        every state of the app. Called before the app runs, it makes
        ``run()`` return at once.

        Example::

            signal.signal(signal.SIGHUP, lambda signum, frame: app.request_shutdown("SIGHUP"))
        """
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        self._run.request(reason)

    # -- the driver's interface ------------------------------------------------

    def _claim(self) -> Run:
        """Hand this app's one `Run` to a driver; the declaration is closed from now on.

        Raises:
            ConfigError: the app was already run.
        """
        with self._lock:
            if self._frozen:
                raise ConfigError(
                    f"app {self.name!r} was already run (it is {self._run.state}); an App runs "
                    f"once: build a new App to run again"
                )
            self._frozen = True
        return self._run

    def _blueprint(self) -> Blueprint:
        """The validated declaration, for the driver that claimed the run.

        Raises:
            UnknownDependency, CycleError: the declaration is invalid.
        """
        graph = self.graph()
        return Blueprint(
            graph=graph,
            specs=tuple(self._node_specs(graph)),
            components=MappingProxyType({n: e.component for n, e in self._entries.items()}),
            plan=self.plan(),
        )

    @property
    def _any_async(self) -> bool:
        return any(e.component.is_async for e in self._entries.values())

    def _stop_timeout(self, name: str) -> float:
        own = self._entries[name].stop_timeout
        return self.stop_timeout if own is None else own

    def _stop_budget(self, name: str) -> float:
        """The longest a component's stop phase may take.

        A component with both ``run`` and ``stop`` gets ``stop_timeout`` for
        ``run`` to return once its token is cancelled, then ``stop_timeout``
        again for ``stop`` (rule 7: stop's token expires stop_timeout after
        stop is called).
        """
        c = self._entries[name].component
        both = c.run is not None and c.stop is not None
        return self._stop_timeout(name) * (2 if both else 1)

    def _start_timeout(self, name: str) -> float:
        own = self._entries[name].start_timeout
        return self.start_timeout if own is None else own

    def _resolve(self, ref: object, asker: str | None) -> str:
        """The name of a dependency given by name or by object.

        With ``asker`` (resolving depends_on), an unknown *name* is left for
        analyze() to report with the closest match; an unknown object is
        reported here. Without it (a lookup), anything unknown is a KeyError.
        """
        name = ref if isinstance(ref, str) else self._names_by_id.get(id(ref))
        if name is None and asker is not None:
            raise UnknownDependency(asker, describe(ref), list(self._entries), None)
        if asker is None and name not in self._entries:
            raise KeyError(
                f"{ref!r} is not a component of app {self.name!r} "
                f"(registered: {', '.join(self._entries) or 'none'})"
            )
        assert name is not None
        return name

    def _node_specs(self, graph: Graph) -> list[NodeSpec]:
        specs = []
        for name in graph.order:
            entry = self._entries[name]
            c = entry.component
            self._run.infos[name].depends_on = graph.depends_on[name]
            specs.append(
                NodeSpec(
                    name,
                    start_timeout=self._start_timeout(name),
                    stop_timeout=self._stop_timeout(name),
                    critical=entry.critical,
                    has_start=c.start is not None,
                    has_run=c.run is not None,
                    has_stop=c.stop is not None,
                    restart=entry.restart,
                )
            )
        return specs


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _finite(value: float) -> float | None:
    """JSON has no infinity: an unbounded timeout is None."""
    return None if math.isinf(value) else value


def _drain_json(drain: float | Drain) -> float | dict[str, float | None] | None:
    if isinstance(drain, Drain):
        return {"min": drain.min, "max": _finite(drain.max), "quiet": drain.quiet}
    return _finite(drain)
