"""`lifecycle.aiohttp`: run an aiohttp web application as a component, with a zero-loss stop.

Three lines in ``main()``::

    app = lifecycle.App(drain_delay=5)
    app.add(lifecycle.aiohttp.Server(web_app, port=8080))
    sys.exit(lifecycle.run(app))

`Server` runs the ``web.Application`` with ``web.AppRunner(web_app,
handle_signals=False)`` and a ``web.TCPSite`` on the event loop of the
runner (the asyncio runner's loop, or the threaded runner's loop thread):
lifecycle owns the signals, and the stop is lifecycle's stop sequence (the
same for every server kind), not ``AppRunner.cleanup()``, whose
``shutdown_timeout`` can wait twice its value per connection and which
leaves websockets open.

What the integration adds to the application, without touching its code:
every request runs through one wrapping request handler, which tracks it,
makes `lifecycle.current_token` the request's token (cancelled when the stop
cuts; carrying the cut's deadline once shutdown was requested) and, once
the app drains, makes its response say ``Connection: close``; a websocket
(an ``Upgrade: websocket`` request) is long-lived from the start, and
`lifecycle.mark_long_lived` works in any handler.

Needs aiohttp (``pip install 'lifecycle[aiohttp]'``); checked with aiohttp
3.14. It reads a few attributes of aiohttp's connection protocol
(``RequestHandler``) to tell an idle keep-alive connection from a busy one;
the test suite pins them.

Added in 0.2.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import select
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, cast

try:
    from aiohttp import WSCloseCode, hdrs, web
    from aiohttp.web_protocol import RequestHandler
except ImportError as _error:  # pragma: no cover - exercised in a child process
    raise ImportError(
        f"lifecycle.aiohttp needs aiohttp, which is not importable ({_error}); "
        f"install it with: pip install 'lifecycle[aiohttp]'"
    ) from _error

from ._core.log import get_logger
from ._core.tokens import CancelSource, CancelToken, _current, _get_current, current_token
from ._core.views import ShutdownView
from ._runtime.stacks import task_stack
from ._serving.aioserver import _Serving, take_in_queued_then_close
from ._serving.health import HealthAnswers
from ._serving.inflight import describe_work
from ._serving.listening import Listening, state_word
from ._serving.stopseq import (
    CUT_MARGIN,
    FIRST_REQUEST_GRACE,
    FORCE_JOIN,
    LOG_CUT_LIMIT,
    Waiting,
    Work,
    cut_time,
    drive_async,
)

if TYPE_CHECKING:
    from ._core.views import AppView

__all__ = ["Server"]

_log = get_logger()

_CUT_REASON = "server stop deadline: request cut"
_GOING_AWAY_MESSAGE: Final = b"server shutting down"
_HEALTH_PATHS: Final = ("/livez", "/readyz")

_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class _Call:
    """A request in progress, as a stop names it (made when needed, not per request).

    Long-lived requests keep one from the moment they are marked; the label
    is built from the request when a stop needs it.
    """

    __slots__ = ("began", "request", "source", "task", "websocket")

    def __init__(self, request: web.BaseRequest, began: float) -> None:
        self.request = request
        self.began = began
        self.source: CancelSource | None = None  # own token, once long-lived
        self.task: asyncio.Task[Any] | None = None  # known once long-lived
        self.websocket = False

    @property
    def label(self) -> str:
        request = self.request
        if self.websocket:
            return f"WS {request.path}"
        return f"{request.method} {request.path}"


class Server(Listening, _Serving):
    """An aiohttp ``web.Application`` served as a lifecycle component, with a zero-loss stop.

    Args:
        app: the ``aiohttp.web.Application`` to serve (not yet started
            elsewhere: its routes and signals are frozen by this server's start).
        host: the address to listen on; ``"0.0.0.0"`` (the default) is every
            IPv4 interface, what a container needs; ``"127.0.0.1"`` for local only.
        port: the port; 0 picks a free one (see `port` after start).
        name: for logs; ``"aiohttp:HOST:PORT"`` by default.
        backlog: the listen backlog (128).
        health_paths: also answer ``GET /livez`` and ``GET /readyz`` on this
            port, from the same state as lifecycle's `HealthServer`:
            ``/readyz`` is 503 from the instant shutdown is requested.
        runner_options: passed to ``web.AppRunner`` (``access_log=None``,
            ``keepalive_timeout=75``, ...); not ``handle_signals``, which
            stays False: lifecycle owns the signals.

    What happens on SIGTERM, step by step:

    1. **Readiness off, drain.** ``/readyz`` (lifecycle's health endpoint,
       or this port's with ``health_paths=True``) answers 503 at once. For
       the app's ``drain_delay`` the server keeps accepting and serving, and
       every response says ``Connection: close`` (aiohttp then closes the
       connection after it), so keep-alive clients and load balancers move
       to another replica instead of sending their next request into a close.
    2. **The stop** (in reverse dependency order, under this component's
       ``stop_timeout``): the connections the kernel already queued are
       taken in (once: at most ``backlog + 1``) and the listening socket is
       closed, so new connections are refused, which a load balancer sees;
       the site is stopped.
    3. **on_shutdown** signals run.
    4. Idle keep-alive connections (nothing received) are closed; the
       ordinary requests in progress are waited for (one arriving on a
       connection still open is served, with ``Connection: close``).
    5. **Long-lived requests end:** their tokens are cancelled, and every
       websocket is closed with code 1001 (GOING AWAY); the server waits for
       their handlers.
    6. **on_cleanup** signals (and cleanup contexts) run, also after a cut.
    7. **A stuck handler** is cut `CUT_MARGIN` before the stop deadline: its
       connection is closed, its stack logged, and the stop raises
       `lifecycle.DeadlineExceeded` naming every request cut: the exit code
       is TIMEOUT. Every step is bounded by the stop's token.

    In a handler, `lifecycle.current_token` is the request's token, and
    ``server.draining`` says that the app is shutting down.

    Example::

        from aiohttp import web
        import lifecycle, lifecycle.aiohttp

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="hello")

        def main() -> int:
            web_app = web.Application()
            web_app.router.add_get("/", hello)
            app = lifecycle.App("api", drain_delay=5, health=8081)
            app.add(lifecycle.aiohttp.Server(web_app, port=8080), name="http")
            return lifecycle.run(app)

    Added in 0.2.
    """

    KIND = "aiohttp"

    def __init__(
        self,
        app: web.Application,
        host: str = "0.0.0.0",  # noqa: S104 - a service in a container listens on every interface
        port: int = 8080,
        *,
        name: str | None = None,
        backlog: int = 128,
        health_paths: bool = False,
        **runner_options: Any,
    ) -> None:
        if not isinstance(app, web.Application):
            hint = (  # type: ignore[unreachable, unused-ignore]
                "pass the web.Application itself, not its AppRunner"
                if isinstance(app, web.BaseRunner)
                else "build one with aiohttp.web.Application() and add your routes to it"
            )
            raise TypeError(
                f"lifecycle.aiohttp.Server needs an aiohttp.web.Application, got "
                f"{type(app).__name__} ({app!r}); {hint}"
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535 (0: any free port), got {port!r}")
        if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
            raise ValueError(f"backlog must be a positive int, got {backlog!r}")
        if "handle_signals" in runner_options:
            raise ValueError(
                "handle_signals cannot be set: lifecycle owns SIGTERM and SIGINT and stops "
                "the aiohttp app itself (lifecycle.run(app) installs the handlers)"
            )
        if app.frozen:
            raise RuntimeError(
                f"the web.Application {app!r} is frozen: it was already started by another "
                f"runner; give lifecycle.aiohttp.Server a new web.Application"
            )
        super().__init__()
        self.app = app
        """The ``aiohttp.web.Application`` served."""
        self.host = host
        self.backlog = backlog
        self.health_paths = health_paths
        self._requested_port = port
        self._name = name
        self._runner_options = runner_options
        self._address: tuple[str, int] | None = None
        self._runner: web.AppRunner | None = None
        self._starting = False  # start() runs (a stop waits for it to end)
        self._site: web.TCPSite | None = None
        self._web_server: web.Server | None = None
        self._app_handler: _Handler = _not_started  # the app's own, once started
        self._loop: asyncio.AbstractEventLoop | None = None
        # Every request in progress: its key (_request_key) -> (request, when it
        # began). Invariant: _long's keys are a subset of _calls'.
        self._calls: dict[object, tuple[web.BaseRequest, float]] = {}
        self.last_arrival: float | None = None  # when the last request began (a monotonic time)
        self._long: dict[object, _Call] = {}  # the long-lived ones (websockets, marked)
        self._closers: set[asyncio.Task[Any]] = set()  # websockets being closed with 1001
        self._first_seen: dict[RequestHandler, float] = {}  # silent connections, for the grace
        self._stop_token: CancelToken | None = None
        self._signal_error: BaseException | None = None
        self._health: HealthAnswers | None = None
        self._ops = _StopOps(self)
        if health_paths:
            self._add_health_routes()

    def __repr__(self) -> str:
        state = state_word(
            stopped=self._stopped,
            stopping=self._stopping,
            draining=self.draining,
            listening=self._runner is not None,
        )
        return f"<lifecycle.aiohttp.Server {self.name!r} {state} in_flight={self.in_flight}>"

    @property
    def in_flight(self) -> int:
        """How many requests (websockets included) are in progress now."""
        return len(self._calls)

    @property
    def runner(self) -> web.AppRunner:
        """The ``web.AppRunner`` once started (for its ``addresses``, say).

        Raises:
            RuntimeError: the server has not started.
        """
        if self._runner is None:
            raise RuntimeError(f"server {self.name!r} has no runner before start()")
        return self._runner

    def running(self) -> list[str]:
        """``["GET /slow (12.3s)", "WS /feed (40.1s)"]``: what is in progress, oldest first."""
        return describe_work(self._snapshot(), time.monotonic())

    def _snapshot(self) -> list[_Call]:
        """Every request in progress, oldest first (the long-lived ones with their tokens)."""
        calls = [
            self._long.get(key) or _Call(request, began)
            for key, (request, began) in list(self._calls.items())
        ]
        return sorted(calls, key=lambda c: c.began)

    # -- lifecycle -------------------------------------------------------------

    def lifecycle_bind(self, app: ShutdownView) -> None:
        """Drain once ``app``'s shutdown is requested (``App.add`` calls this)."""
        super().lifecycle_bind(app)
        if self.health_paths:
            self._health = HealthAnswers(cast("AppView", app))

    async def start(self, token: CancelToken | None = None) -> None:
        """Run the app's startup (``on_startup``, cleanup contexts), then listen.

        Returns once connections are accepted. If listening fails, the
        app's ``on_cleanup`` runs before the error propagates.

        Raises:
            RuntimeError: it was already started, or ``health_paths=True``
                and the server was not added to a `lifecycle.App`.
            OSError: the address cannot be bound (the message names the port
                and the fix when it is in use).
        """
        if self._stopping:
            raise RuntimeError(
                f"server {self.name!r} was stopped; a stopped server does not listen "
                f"again (create a new one, with a new web.Application)"
            )
        if self._starting or self._runner is not None:
            raise RuntimeError(
                f"server {self.name!r} was already started; a server starts once "
                f"(create a new one, with a new web.Application, to listen again)"
            )
        if self.health_paths and self._health is None:
            raise RuntimeError(
                f"server {self.name!r} has health_paths=True but belongs to no lifecycle.App, "
                f"whose state /livez and /readyz report: add it with app.add(server)"
            )
        self._starting = True
        try:
            await self._start()
        finally:
            self._starting = False
            self._waiter.wake()  # a stop may be waiting for the start to end
        if self._stopping:
            raise RuntimeError(
                f"server {self.name!r} was stopped while it was starting; its stop "
                f"closed what the start made (create a new server to listen again)"
            )

    async def _start(self) -> None:
        """Set the runner up, then listen unless a stop began meanwhile.

        Invariant: a stop that began during on_startup finds no site (it
        waits for this start, which then undoes on_startup with on_cleanup);
        one that began while the site listens finds ``_site`` set once this
        start ended, and stops it like a started server.
        """
        options = {"handle_signals": False, **self._runner_options}
        runner = web.AppRunner(self.app, **options)
        self._runner = runner
        await runner.setup()  # on_startup and the cleanup contexts' setup
        if self._stopping:
            await self._cleanup_after_failed_start(runner)  # never listened
            return
        server = runner.server
        assert server is not None
        self._web_server = server
        self._app_handler = server.request_handler
        server.request_handler = self._handle
        original_lost = server.connection_lost

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            original_lost(handler, exc)
            if self._stopping:
                self._after_connection(handler)

        # Our own web.Server instance: told when a connection ends (the stop waits for that).
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        self._loop = asyncio.get_running_loop()
        site = web.TCPSite(runner, self.host, self._requested_port, backlog=self.backlog)
        # Invariant: the listener's accept callbacks run in a copy of this context,
        # every connection's task in a copy of theirs, every request's in a copy of
        # its connection's: with the server's token in it, a request begun before
        # the drain finds its token current already and sets nothing.
        listening = contextvars.copy_context()
        listening.run(_current.set, self._tokens.root)
        try:
            await self._loop.create_task(site.start(), context=listening)
        except OSError as error:
            await self._cleanup_after_failed_start(runner)
            raise _bind_error(error, self.host, self._requested_port) from error
        except BaseException:
            await self._cleanup_after_failed_start(runner)
            raise
        self._site = site
        if self._stopped:
            # The stop gave up waiting for this start and ended: nothing else will close it.
            self._release()
            for transport in list(server._connections.values()):
                transport.abort()
            await self._run_cleanup(current_token())
            return
        if self._health is not None:  # before any request is handled: no await in between
            self._health.start(name=f"lifecycle:{self.name}.ready")
        listener = _listener(site)
        sockets = listener.sockets if listener is not None else ()
        self._address = (
            (str(sockets[0].getsockname()[0]), site.port)
            if sockets
            else (
                self.host,
                site.port,
            )
        )

    async def _cleanup_after_failed_start(self, runner: web.AppRunner) -> None:
        try:
            await runner.cleanup()  # on_cleanup: undo what on_startup set up
        except Exception:  # noqa: BLE001 - the start's own error is the one that propagates
            _log.exception("aiohttp on_cleanup raised after a failed start", component=self.name)
        self._runner = None

    def ready(self) -> bool:
        """True while listening (until the stop begins)."""
        return self._site is not None and not self._stopping

    async def stop(self, token: CancelToken | None = None) -> None:
        """Stop without losing a request: the steps of the class docstring, by ``token``'s deadline.

        Once it returned, the port refuses connections, also when it was
        called before or during `start` (which then raises; on_cleanup
        undoes an on_startup that ran). Called again while it runs, it
        returns when the first call does, with the same outcome, but by its
        own token's deadline (cutting then if the first call would cut
        later); called after it finished, it returns that outcome at once.

        Raises:
            DeadlineExceeded: requests were cut `CUT_MARGIN` before ``token``'s
                deadline; ``.cut`` names every one (idle connections are never named).
            Exception: what an ``on_shutdown`` or ``on_cleanup`` receiver
                raised (logged with its stack), when nothing was cut.
        """
        if token is None:
            token = current_token()
        await self._stop_once(token, self.name, self._stop_sequence)

    async def _stop_sequence(self, token: CancelToken) -> None:
        if self._starting:
            # on_startup or the bind runs: the start listens only if no stop began,
            # so wait for it to end, then stop what it made.
            until = cut_time(time.monotonic(), token.deadline)
            while self._starting and not token.cancelled:
                timeout = None if until is None else until - time.monotonic()
                if timeout is not None and timeout <= 0:
                    break
                await self._waiter.wait(lambda: not self._starting, timeout, token)
        self._stop_token = token
        if self._site is None:
            self._release()  # never listened (a start still running undoes itself)
            return
        try:
            await drive_async(self._ops, token, name=self.name)
        except asyncio.CancelledError:
            self._release()
            raise  # the runner abandoned the stop: no time is left for on_cleanup
        except BaseException:
            self._release()
            await self._run_cleanup(token)
            raise
        self._release()
        await self._run_cleanup(token)
        if self._signal_error is not None:
            raise self._signal_error

    def _release(self) -> None:
        """After the sequence: nothing of the server is left running."""
        self._tokens.close()
        if self._health is not None:
            self._health.close()
        if self._detach_drain is not None:
            self._detach_drain()
        for closer in self._closers:
            closer.cancel()
        site, self._site = self._site, None
        if site is not None:
            listener = _listener(site)
            if listener is not None:
                listener.close()  # if the sequence did not get to it

    # -- requests ----------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The request handler of aiohttp's server: every request goes through here.

        The hot path adds about 8 500 simulated CPU cycles to a request
        (``python -m benchmarks.counted --rows aiohttp``: 0.85 us on a 2-core
        machine where aiohttp's handler alone takes 6.3 us): one dict entry
        (the request and its start time), one read of a context variable
        (the token, inherited from the listener's context), plain reads of
        ``draining`` and of the parser's upgrade flag; nothing made per
        request for a stop.
        """
        key = request._payload_writer  # _request_key, inlined
        calls = self._calls
        calls[key] = (request, at := _monotonic())
        self.last_arrival = at  # read by an adaptive drain (lifecycle.Drain)
        try:
            if self.draining:
                _announce_close(request)
                token = self._request_token()
            else:
                token = self._tokens.root
            if request._message.upgrade and _is_websocket(request):
                call = self._mark(key)  # long-lived from the start
                assert call is not None
                assert call.source is not None
                call.websocket = True
                token = call.source.token
            # Each request runs in a task of its own (aiohttp copies the context):
            # setting the token here makes it current for this request only. One
            # begun before the drain inherits it from the listener's context, and
            # reading it is 0.07 us cheaper than setting it; a connection made in
            # another context (or by a loop that copies none) gets it set here.
            if _get_current(None) is not token:
                _current.set(token)
            # A request in progress when the drain begins is told on the loop
            # (_close_in_flight): its response, not yet begun, says close too.
            # (Read, then called: called as a method, an instance attribute is
            # looked up CPython's unspecialised way each time.)
            handler = self._app_handler
            return await handler(request)
        finally:
            del calls[key]
            if self._long:
                ended = self._long.pop(key, None)
                if ended is not None and ended.source is not None:
                    ended.source.close()
            if self._stopping:
                self._waiter.wake()  # the stop may be waiting for this request

    def _begin_drain(self) -> None:
        # Runs as the shutdown token fires, in the cancelling thread: a flag, and
        # a wake-up of the loop, which tells the requests in progress (their
        # responses, not yet begun, will say Connection: close).
        self.draining = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing in flight
                loop.call_soon_threadsafe(self._close_in_flight)

    def _close_in_flight(self) -> None:
        for request, _ in list(self._calls.values()):
            _announce_close(request)

    def _lc_mark_long_lived(self) -> bool:
        # The request marked is the one whose _handle is on the caller's stack;
        # from a task or thread of its own, there is none: nothing is marked.
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            if frame.f_code is _HANDLE_CODE:
                call = self._mark(frame.f_locals.get("key"))
                if call is None or call.source is None:
                    return False
                _current.set(call.source.token)  # for the rest of the request
                return True
            frame = frame.f_back
        return False

    def _mark(self, key: object) -> _Call | None:
        """Make the request ``key`` long-lived: a token of its own, cancelled when streams end."""
        if key is None:
            return None
        call = self._long.get(key)
        if call is not None:
            return call
        entry = self._calls.get(key)
        if entry is None:
            return None
        call = _Call(*entry)

        def keep(source: CancelSource) -> None:
            call.source = source
            self._long[key] = call

        self._long_lived_source(keep)
        with contextlib.suppress(RuntimeError):  # no running task: nothing to cancel at the cut
            call.task = asyncio.current_task()
        if self._stopping:
            self._waiter.wake()
        return call

    def _after_connection(self, handler: RequestHandler) -> None:
        """A connection was lost during the stop: wake the stop once aiohttp forgot it."""
        self._first_seen.pop(handler, None)
        task = handler._task_handler
        if task is not None and not task.done():
            # aiohttp removes the connection when its task is done (a callback added before).
            task.add_done_callback(lambda _: self._waiter.wake())
        else:
            self._waiter.wake()

    def _work(self) -> Work:
        long_lived = len(self._long)
        server = self._web_server
        connections = 0 if server is None else len(server._connections)
        return Work(len(self._calls) - long_lived, long_lived, connections + len(self._closers))

    # -- signals -------------------------------------------------------------------

    async def _run_signal(
        self, what: str, coro: Coroutine[Any, Any, None], timeout: float | None
    ) -> None:
        """Run the app's ``on_shutdown`` or ``on_cleanup`` within ``timeout`` and the stop token.

        An error is logged with its stack and kept for `stop` to raise; a
        receiver still running at the bound is cancelled, logged with its stack.
        """
        task = asyncio.ensure_future(coro)
        token = self._stop_token
        waiters: set[asyncio.Future[Any]] = {task}
        fired: asyncio.Task[bool] | None = None
        if token is not None and what == "on_shutdown":
            # on_cleanup runs even after the token fired (a cut); on_shutdown stops at it.
            fired = asyncio.ensure_future(token.wait_async())
            waiters.add(fired)
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if fired is not None:
                fired.cancel()
        if not task.done():
            stack = task_stack(task) or "(no stack)"
            task.cancel()
            await asyncio.wait({task}, timeout=CUT_MARGIN / 2)
            _log.error(
                f"aiohttp {what} did not finish within the stop's bound; cancelled",
                component=self.name,
                stack=stack,
                hint=f"make the {what} receivers quick, or raise stop_timeout",
            )
            return
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            _log.error(f"aiohttp {what} raised", component=self.name, exc_info=error, signal=what)
            if self._signal_error is None:
                self._signal_error = error

    async def _run_cleanup(self, token: CancelToken) -> None:
        remaining = token.remaining()
        if remaining is None and token.cancelled:
            remaining = FORCE_JOIN
        await self._run_signal("on_cleanup", self.app.cleanup(), remaining)

    # -- health on the traffic port ------------------------------------------------

    def _add_health_routes(self) -> None:
        router = self.app.router
        taken = [
            path
            for path in _HEALTH_PATHS
            for resource in router.resources()
            if resource.canonical == path
        ]
        if taken:
            raise ValueError(
                f"health_paths=True adds GET {' and '.join(_HEALTH_PATHS)}, but the "
                f"web.Application already routes {', '.join(taken)}; remove those routes, "
                f"or pass health_paths=False and use App(health=PORT)"
            )
        router.add_get("/livez", self._probe)
        router.add_get("/readyz", self._probe)

    async def _probe(self, request: web.Request) -> web.Response:
        """``/livez`` and ``/readyz``: the health endpoint's own answers (`HealthAnswers`).

        ``/readyz`` evaluates the components' ``ready()`` (user code) on the
        answers' thread, never on the loop, one evaluation at a time, and
        says 503 within its ready timeout should ``ready()`` block; once
        shutdown is requested it says 503 without calling anything.
        """
        health = self._health
        assert health is not None
        status, headers, body = await health.answer_async(
            request.method, request.path, request.query_string
        )
        return web.Response(status=status, body=body, headers=dict(headers))


async def _not_started(request: web.BaseRequest) -> web.StreamResponse:
    raise RuntimeError("lifecycle.aiohttp.Server received a request before its start()")


_HANDLE_CODE = Server._handle.__code__
_monotonic = time.monotonic


class _StopOps:
    """The stop sequence's operations (`AsyncStopOps`) on a `Server`."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def work(self) -> Work:
        return self.server._work()

    def drain(self, deadline: float | None) -> None:
        self.server._drain(deadline)
        self.server._close_in_flight()

    async def close_listener(self, timeout: float | None) -> None:
        """Take in what the kernel queued, close the listening socket, stop the site, on_shutdown.

        `take_in_queued_then_close`: once, at most ``backlog + 1``
        connections, by ``timeout``; they are served once the socket is
        closed, and every later connection attempt is refused.
        """
        server = self.server
        site = server._site
        web_server = server._web_server
        if site is None or web_server is None:
            return
        listener = _listener(site)
        if listener is not None:
            await take_in_queued_then_close(
                listener, web_server, server.name, backlog=server.backlog, timeout=timeout
            )
        await site.stop()  # unregisters the site (its listener is closed already)
        await server._run_signal("on_shutdown", server.app.shutdown(), timeout)

    def close_idle(self, now: float) -> float | None:
        server = self.server
        web_server = server._web_server
        loop = server._loop
        if web_server is None or loop is None:
            return None
        loop_now = loop.time()
        recheck: float | None = None
        for conn, transport in list(web_server._connections.items()):
            if not _is_idle(conn) or transport.is_closing():
                continue
            if conn._request_count == 0:
                accepted = _accepted_at(server, conn, loop_now)
                due = accepted + FIRST_REQUEST_GRACE
                if due > loop_now:
                    # Just accepted: its first request is usually on the way.
                    at = now + (due - loop_now)
                    recheck = at if recheck is None else min(recheck, at)
                    continue
            if _has_input(transport):
                continue  # a request is arriving: it is served, with Connection: close
            conn.force_close()
        return recheck

    async def wait(self, what: Waiting, timeout: float | None, token: CancelToken) -> None:
        server = self.server
        await server._waiter.wait(lambda: _holds(server._work(), what), timeout, token)

    def end_long_lived(self) -> None:
        server = self.server
        calls = list(server._long.values())
        server._end_long_lived([c.source for c in calls if c.source is not None])
        loop = asyncio.get_running_loop()
        for call in calls:
            if not call.websocket or call.task is None:
                continue
            for ws in _websockets_of(call.task):
                closer = loop.create_task(_going_away(ws, server.name))
                server._closers.add(closer)

                def forget(task: asyncio.Task[Any]) -> None:
                    server._closers.discard(task)
                    server._waiter.wake()

                closer.add_done_callback(forget)

    def cut(self) -> list[str]:
        server = self.server
        calls = server._snapshot()
        now = time.monotonic()
        cut = describe_work(calls, now)
        tasks = _tasks_serving(calls)
        for call in calls[:LOG_CUT_LIMIT]:
            task = tasks.get(call)
            # The cut itself is one ERROR entry ("work cut at the stop deadline");
            # where each request was, its detail, at WARNING.
            _log.warning(
                "request cut at the stop deadline",
                component=server.name,
                request=describe_work([call], now)[0],
                stack=(task_stack(task) if task is not None else None) or "(no stack)",
            )
        server._tokens.cut(_CUT_REASON)
        for closer in server._closers:
            closer.cancel()
        web_server = server._web_server
        if web_server is not None:
            for conn, transport in list(web_server._connections.items()):
                handler_task = conn._task_handler
                if handler_task is not None:
                    handler_task.cancel()
                transport.abort()
        for task in tasks.values():
            task.cancel()
        return server._record_cut(cut)

    async def join(self, timeout: float | None) -> bool:
        server = self.server
        end = None if timeout is None else time.monotonic() + timeout
        while server._work().connections:
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            await server._waiter.wait(lambda: not server._work().connections, remaining)
        return not server._work().connections


# -- helpers ---------------------------------------------------------------------------------


def _listener(site: web.TCPSite) -> asyncio.Server | None:
    """The asyncio server behind a started ``TCPSite`` (None before its start)."""
    return cast("asyncio.Server | None", site._server)


def _is_websocket(request: web.BaseRequest) -> bool:
    """A websocket handshake (called only when aiohttp's parser saw an upgrade)."""
    return request.headers.get(hdrs.UPGRADE, "").strip().lower() == "websocket"


def _announce_close(request: web.BaseRequest) -> None:
    """Make every response to ``request`` not yet begun say ``Connection: close``.

    aiohttp decides a response's keep-alive from ``request.keep_alive`` (a
    cached property) when the response is prepared; also for a response the
    handler prepares itself (a stream, a file).
    """
    request._cache["keep_alive"] = False


def _is_idle(conn: RequestHandler) -> bool:
    """Between two requests: waiting for the next one, nothing queued, no handler running."""
    waiter = conn._waiter
    return (
        not conn._request_in_progress
        and not conn._messages
        and waiter is not None
        and not waiter.done()
    )


def _accepted_at(server: Server, conn: RequestHandler, loop_now: float) -> float:
    """When a connection that sent no request yet was accepted, on the loop's clock."""
    if conn._keepalive_timeout > 0:
        # aiohttp arms the keep-alive timer at the accept (loop time + timeout).
        return conn._next_keepalive_close_time - conn._keepalive_timeout
    return server._first_seen.setdefault(conn, loop_now)


def _has_input(transport: asyncio.BaseTransport) -> bool:
    """Whether bytes of a next request wait in the kernel for this connection."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed meanwhile: nothing to serve
        return False


def _holds(work: Work, what: Waiting) -> bool:
    if what == "ordinary":
        return work.ordinary == 0
    if what == "requests":
        return work.requests == 0
    return work.connections == 0


def _frames_of(task: asyncio.Task[Any]) -> list[FrameType]:
    """The frames of ``task``'s chain of awaited coroutines, outermost first."""
    frames: list[FrameType] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        frames.append(frame)
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return frames


def _websockets_of(task: asyncio.Task[Any]) -> list[web.WebSocketResponse]:
    """The open websockets a request's task holds: locals of the coroutines it awaits.

    aiohttp keeps no reference from a request to the ``WebSocketResponse``
    its handler made; the handler holds it while it serves it (``async for
    msg in ws`` awaits ``ws.receive()``, whose ``self`` it is).
    """
    found: dict[int, web.WebSocketResponse] = {}
    for frame in _frames_of(task):
        for value in frame.f_locals.values():
            if isinstance(value, web.WebSocketResponse) and value.prepared and not value.closed:
                found[id(value)] = value
    return list(found.values())


async def _going_away(ws: web.WebSocketResponse, name: str) -> None:
    """Close ``ws`` with 1001 GOING AWAY (the handler's ``receive()`` then returns CLOSING)."""
    try:
        await ws.close(code=WSCloseCode.GOING_AWAY, message=_GOING_AWAY_MESSAGE)
    except Exception as error:  # noqa: BLE001 - the peer went away first: nothing to close
        _log.debug("closing a websocket failed", component=name, error=repr(error))


def _request_key(request: web.BaseRequest) -> object:
    """The key of a request in progress in ``Server._calls``: its payload writer.

    aiohttp's requests are not hashable; aiohttp makes a payload writer for
    each request, which hashes by identity: cheaper than ``id(request)`` (a
    call that also raises an audit event).
    """
    return request._payload_writer


def _tasks_serving(calls: list[_Call]) -> dict[_Call, asyncio.Task[Any]]:
    """The task serving each of ``calls``, found at the cut (not recorded per request)."""
    found = {call: call.task for call in calls if call.task is not None}
    if len(found) == len(calls):
        return found
    by_key = {_request_key(call.request): call for call in calls}
    for task in asyncio.all_tasks():
        for frame in _frames_of(task):
            if frame.f_code is _HANDLE_CODE:
                call = by_key.get(frame.f_locals.get("key"))
                if call is not None:
                    found.setdefault(call, task)
                break
    return found


def _bind_error(error: OSError, host: str, port: int) -> OSError:
    """An actionable ``OSError`` for a failed bind: the port, and what to do."""
    where = f"{host}:{port}"
    if error.errno == errno.EADDRINUSE:
        message = (
            f"lifecycle.aiohttp.Server cannot listen on {where}: the port is already in use "
            f"(another process, or a previous run still exiting); stop that process, or "
            f"pass another port= (port=0 picks a free one)"
        )
    elif error.errno == errno.EACCES:
        message = (
            f"lifecycle.aiohttp.Server cannot listen on {where}: permission denied; ports "
            f"below 1024 need privileges: use a port above 1023"
        )
    elif error.errno == errno.EADDRNOTAVAIL:
        message = (
            f"lifecycle.aiohttp.Server cannot listen on {where}: no such local address; "
            f"use host='0.0.0.0' (every interface) or an address of this machine"
        )
    else:
        message = f"lifecycle.aiohttp.Server cannot listen on {where}: {error.strerror or error}"
    return OSError(error.errno, message)
