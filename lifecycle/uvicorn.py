"""`lifecycle.uvicorn`: uvicorn (FastAPI, Starlette, any ASGI app) as a lifecycle component.

``pip install 'lifecycle[uvicorn]'``, then in ``main()``::

    app = lifecycle.App("api", drain_delay=5, health=8081)
    app.add(lifecycle.uvicorn.Server(fastapi_app, host="0.0.0.0", port=8000))
    sys.exit(lifecycle.run(app))

`Server` runs a real ``uvicorn.Server`` -- uvicorn's own HTTP and websocket
protocols, its ``Config``, its lifespan -- on the runner's event loop (the
asyncio runner's, or the threaded runner's loop thread), and gives it the
stop sequence every lifecycle server kind has. uvicorn alone, on SIGTERM,
closes its listener at once (no drain), sends no ``Connection: close`` on the
last responses of keep-alive connections (16 of 16 such connections lose
their next request per stop, measured), waits without a bound for streams
and websockets (``timeout_graceful_shutdown`` is None by default), and, since
0.29, installs its own SIGINT/SIGTERM handlers around ``serve()`` and raises
the signal again once it returns, which kills an embedding process before its
other components stop. Here uvicorn never touches a signal: `Server` does not
call ``serve()`` (whose ``capture_signals`` installs them); it drives
uvicorn's pieces itself, and its ``uvicorn.Server`` has ``capture_signals``
made a no-op besides.

Requires uvicorn 0.30 or later (tested with 0.54).

Added in 0.2.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import math
import select
import socket
import time
import traceback
import weakref
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType, TracebackType
from typing import Any, Final, cast

try:
    import uvicorn as _uvicorn
    from uvicorn.server import Server as _UvicornServer
except ImportError as _error:  # pragma: no cover - the extra is installed in the test env
    raise ImportError(
        "lifecycle.uvicorn needs uvicorn 0.30 or later: pip install 'lifecycle[uvicorn]'"
    ) from _error

from ._core.errors import DeadlineExceeded
from ._core.log import get_logger
from ._core.tokens import CancelSource, CancelToken, current_token, on_cancel_inline
from ._core.views import AppView, ShutdownView
from ._serving.aioserver import StopWaiter, take_in_queued_then_close
from ._serving.asgi import ASGIApp, ASGIMiddleware, Receive, Scope, Send, _call_served
from ._serving.health import HealthAnswers
from ._serving.listening import Listening, state_word
from ._serving.stopseq import CUT_MARGIN, FIRST_REQUEST_GRACE, FORCE_JOIN, cut_time

__all__ = ["HEALTH_PATHS", "LIFESPAN_RESERVE", "MIN_UVICORN", "Server"]

_log = get_logger()

MIN_UVICORN: Final = (0, 30)
"""The oldest uvicorn this integration supports (``lifecycle[uvicorn]`` requires it)."""

LIFESPAN_RESERVE: Final = 0.5
"""Seconds of the stop budget kept for the app's lifespan shutdown (a tenth of the
budget when that is smaller): requests still running are cut that much earlier, so
that the lifespan shutdown runs within the stop's deadline even when the stop cuts."""

HEALTH_PATHS: Final = ("/livez", "/readyz", "/startupz")
"""What ``Server(..., health_paths=True)`` answers on the traffic port itself,
with the answers of `lifecycle.HealthServer`."""

# Why a stop in progress cuts at once: a later call of stop has an earlier cut time.
_CLOSE_HEADER: Final = (b"connection", b"close")
_CUT_NOW_REASON: Final = "another stop's deadline came first"
_MIDDLEWARE_CODE: Final = ASGIMiddleware.__call__.__code__  # a request's frame in its stack
_IDLE_POLL: Final = 0.01  # seconds between two looks at uvicorn's connections (no hook tells)
_REJECTED_OPTIONS: Final = {
    "app": "pass the app as the first argument",
    "host": "pass host= to Server",
    "port": "pass port= to Server",
    "backlog": "pass backlog= to Server",
    "uds": "lifecycle.uvicorn.Server listens on host:port only",
    "fd": "lifecycle.uvicorn.Server listens on host:port only",
    "reload": "reloading restarts processes; run uvicorn's reloader instead",
    "workers": "one Server is one process; run several replicas",
    "timeout_graceful_shutdown": "the stop is bounded by the component's stop_timeout "
    "(app.add(server, stop_timeout=...))",
}


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _version(getattr(_uvicorn, "__version__", "0")) < MIN_UVICORN:  # pragma: no cover
    raise ImportError(
        f"lifecycle.uvicorn needs uvicorn {'.'.join(map(str, MIN_UVICORN))} or later, "
        f"found {_uvicorn.__version__}: pip install -U 'lifecycle[uvicorn]'"
    )


class _EmbeddedUvicorn(_UvicornServer):
    """uvicorn's ``Server``, never installing a signal handler.

    `Server` does not call ``serve()``; should anyone (``server.uvicorn.serve()``),
    ``capture_signals`` installs nothing and raises no signal again afterwards:
    the signals belong to the lifecycle runner.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Inner:
    """The layer between `ASGIMiddleware` and the user's app, inside the request's token.

    * answers the health paths, when asked to;
    * a websocket: when its token is cancelled (the stop ends long-lived
      requests, or cuts), uvicorn's own websocket shutdown closes it with
      1012 (service restart), which the app sees as a disconnect.

    An ordinary HTTP request does not pass here unless ``health_paths`` is on
    (the middleware hands it to the app itself); with it, it costs one call
    and no frame: ``__call__`` returns the app's own awaitable (the
    middleware awaits it). Where a cut
    request was stuck is read from its task's stack as it is cut
    (`Server._log_stuck`), not from here.
    """

    __slots__ = ("app", "server")

    def __init__(self, server: Server, app: ASGIApp) -> None:
        self.server = server
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        kind = scope["type"]
        if kind == "http":
            answers = self.server._answers
            if answers is None or scope.get("path") not in HEALTH_PATHS:
                return self.app(scope, receive, send)
            return _answer_probe(answers, scope, send)
        if kind == "websocket":
            return self._websocket(scope, receive, send)
        return self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        detach = on_cancel_inline(current_token(), self.server._websockets_asked_to_end)
        try:
            await self.app(scope, receive, send)
        finally:
            detach()


class Server(Listening):
    """A uvicorn server for an ASGI app (FastAPI, Starlette, ...) that drains without loss.

    Args:
        app: the ASGI 3 application object (not its import string).
        host: the address to listen on; ``"0.0.0.0"`` to be reachable from
            outside the container.
        port: the port; 0 picks a free one (see `port` once started).
        name: for logs; ``"uvicorn:HOST:PORT"`` by default.
        health_paths: also answer ``/livez``, ``/readyz`` and ``/startupz``
            on this port, with `lifecycle.HealthServer`'s answers (``/readyz``
            turns 503 the instant shutdown is requested), for a load
            balancer that can only check the traffic port. Those paths then
            never reach ``app``.
        backlog: the listen backlog.
        **options: passed to ``uvicorn.Config`` (``proxy_headers``,
            ``timeout_keep_alive``, ``ws``, ``http``, ``lifespan``,
            ``log_level``, ``access_log``, ssl options...). ``log_config``
            defaults to None: uvicorn's loggers propagate to your logging
            setup instead of uvicorn reconfiguring logging for the whole
            process. ``timeout_graceful_shutdown``, ``reload``, ``workers``,
            ``uds`` and ``fd`` are refused (the stop is bounded by the
            component's ``stop_timeout``).

    The app is wrapped in `lifecycle.ASGIMiddleware` (pass one yourself to
    keep a handle on it): every request and websocket is tracked, and
    inside the app `lifecycle.current_token` is the request's token. The
    app's ASGI lifespan runs inside this component: its startup in `start`
    (a failed startup fails the component), its shutdown at the end of
    `stop`, every time, also when the stop cut requests.

    What happens on SIGTERM, step by step:

    1. The runner marks the app not ready (``/readyz`` 503, on the health
       port and on ``health_paths``) and begins the drain delay. This
       server keeps accepting and serving; every response from now on says
       ``Connection: close`` and uvicorn closes its connection after it, so
       keep-alive clients reconnect (elsewhere, once the load balancer has
       noticed) instead of sending their next request into a closing socket.
    2. Its stop begins (after the components that depend on it stopped):
       the connections the kernel already queued are accepted, then the
       listening socket closes: later connection attempts are refused,
       which a load balancer sees and routes around.
    3. The requests in progress finish; one that arrives on a connection
       still open is served (with ``Connection: close``).
    4. Streams (`lifecycle.mark_long_lived`, e.g. SSE) have their tokens
       cancelled: they end themselves. Websockets are closed by uvicorn with
       code 1012 (service restart); the app receives the disconnect.
    5. Idle keep-alive connections are closed, each at a moment nothing is
       arriving on it (a connection whose request is arriving is served
       first; one accepted less than `FIRST_REQUEST_GRACE` ago gets that
       long to send its first request).
    6. The app's lifespan shutdown runs.

    The whole stop is bounded by its token (the component's
    ``stop_timeout``, within the app's ``shutdown_timeout``). Requests still
    running `CUT_MARGIN` (plus `LIFESPAN_RESERVE`) before that deadline are
    cut: cancelled, logged by name with the stack where each was stuck, and
    the stop raises `lifecycle.DeadlineExceeded` after the lifespan
    shutdown, so the exit code is TIMEOUT.

    Example::

        import sys
        import lifecycle
        from fastapi import FastAPI

        api = FastAPI()

        @api.get("/")
        async def hello():
            return {"hello": "world"}

        def main():
            app = lifecycle.App("api", drain_delay=5, health=8081)
            app.add(lifecycle.uvicorn.Server(api, host="0.0.0.0", port=8000))
            sys.exit(lifecycle.run(app))

    Raises:
        TypeError: ``app`` is not an ASGI application object, or an option
            is unknown to ``uvicorn.Config``.
        ValueError: a bad port or backlog, or a refused option.

    Added in 0.2.
    """

    KIND = "uvicorn"

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        name: str | None = None,
        health_paths: bool = False,
        backlog: int = 2048,
        **options: Any,
    ) -> None:
        _check_app(app)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535 (0: any free port), got {port!r}")
        if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
            raise ValueError(f"backlog must be a positive int, got {backlog!r}")
        for option, why in _REJECTED_OPTIONS.items():
            if option in options:
                raise ValueError(f"lifecycle.uvicorn.Server does not take {option}=: {why}")
        self.host = host
        self.backlog = backlog
        self._requested_port = port
        self._name = name
        self._address: tuple[str, int] | None = None
        interface = options.pop("interface", "asgi3")
        if interface not in ("auto", "asgi3"):
            raise ValueError(
                f"lifecycle.uvicorn.Server serves ASGI 3 apps only, got interface={interface!r}: "
                f"leave interface out (or pass 'asgi3')"
            )
        self._wrap(app, name, health_paths=bool(health_paths))
        self._answers: HealthAnswers | None = None
        self._health_paths = bool(health_paths)
        options.setdefault("log_config", None)
        try:
            # The middleware's bound ``__call__``, declared ASGI 3: uvicorn calls
            # it without the generic call of an instance (an argument tuple and a
            # lookup of ``__call__`` per request).
            config = _uvicorn.Config(
                self.middleware.__call__,
                host=host,
                port=port,
                backlog=backlog,
                interface="asgi3",
                **options,
            )
        except TypeError as error:
            raise TypeError(
                f"lifecycle.uvicorn.Server: an option is not one of uvicorn.Config's: {error}"
            ) from None
        self.config = config
        """The ``uvicorn.Config`` (loaded when the server starts)."""
        self.uvicorn: _UvicornServer | None = None
        """The ``uvicorn.Server`` while running (its ``server_state``), else None."""
        self._listener: asyncio.Server | None = None
        self._starting = False  # start() runs (a stop waits for it to end)
        self._lifespan_started = False  # the lifespan startup completed; no shutdown yet
        self._stopping = False  # a stop began
        self._stopped = False  # the stop ended; _outcome is final
        self._outcome: BaseException | None = None  # what the stop raised (None: it returned)
        self._outcome_tb: TracebackType | None = None  # ... and where, as it first left the stop
        self._cut_labels: list[str] = []  # the requests the stop cut
        self._cut_now = CancelSource()  # cancelled: the stop running cuts at once
        self._waiter = StopWaiter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepted: weakref.WeakKeyDictionary[asyncio.Protocol, float] = (
            weakref.WeakKeyDictionary()
        )
        self._shut: weakref.WeakSet[asyncio.Protocol] = weakref.WeakSet()
        self._stuck_logged: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._quiet = _QuietCut()  # on uvicorn's error logger while the stop cuts
        self._main: asyncio.Future[None] | None = None
        self._app: ShutdownView | None = None

    def _wrap(self, app: ASGIApp, name: str | None, *, health_paths: bool) -> None:
        """Put `ASGIMiddleware` (the one passed, or one of ours) around ``app``, wired to us."""
        self._own_middleware = not isinstance(app, ASGIMiddleware)
        if isinstance(app, ASGIMiddleware):
            user_app = app.asgi_app
            app.asgi_app = _Inner(self, user_app)
            self.middleware = app
        else:
            user_app = app
            self.middleware = ASGIMiddleware(_Inner(self, app), name=name or "uvicorn")
        """The `lifecycle.ASGIMiddleware` around the app (the one passed, if it was one)."""
        if not health_paths:
            # The inner layer only passes HTTP requests on then: they go to the app itself.
            self.middleware._http_app = user_app
        self.middleware._about_to_cut = self._about_to_cut
        # uvicorn's HTTP protocols announce a close only when the request asked
        # for one: the server makes the responses in progress at the drain say
        # it (`_close_after_responses`), so that no ``send`` is wrapped per
        # request before the drain.
        self.middleware._announce_close = self._announce_close
        # uvicorn runs each request and websocket in a task of its own.
        self.middleware._own_task = True

    def __repr__(self) -> str:
        state = state_word(
            stopped=self._stopped,
            stopping=self._stopping,
            draining=self.middleware.draining,
            listening=self._listener is not None,
        )
        return f"<lifecycle.uvicorn.Server {self.name!r} {state}>"

    # -- lifecycle -------------------------------------------------------------

    def lifecycle_bind(self, app: ShutdownView) -> None:
        """Drain once ``app``'s shutdown is requested (``App.add`` calls this)."""
        self.middleware.lifecycle_bind(app)
        self._app = app
        if self._health_paths:
            if not _is_app_view(app):
                raise TypeError(
                    f"health_paths=True needs the lifecycle.App the server is added to, got {app!r}"
                )
            self._answers = HealthAnswers(cast(AppView, app))

    async def start(self, token: CancelToken | None = None) -> None:
        """Run the app's lifespan startup, then listen; return once connections are accepted.

        A `stop` that begins before or during the start wins: the server
        never listens (or stops listening before that stop returns), the
        lifespan that started is shut down by that stop, and start raises.

        Raises:
            RuntimeError: it was already started, or stopped (before or while
                it was starting), the app's lifespan startup failed, or
                ``health_paths=True`` on a server not added to an App.
            OSError: the address cannot be bound; the message names it and the way out.
        """
        if self._stopping:
            raise RuntimeError(
                f"server {self.name!r} was stopped; a stopped server does not listen "
                f"again (create a new one)"
            )
        if self._starting or self.uvicorn is not None:
            raise RuntimeError(
                f"server {self.name!r} was already started; a server starts once "
                f"(create a new one to listen again)"
            )
        if self._health_paths and self._answers is None:
            raise RuntimeError(
                f"server {self.name!r} has health_paths=True but no app to report on: "
                f"add it with app.add(server)"
            )
        self._starting = True
        try:
            await self._start()
        finally:
            self._starting = False
            self._waiter.wake()  # a stop may be waiting for the start to end
        if self._stop_began():
            if self._stop_ended():
                await self._shutdown_lifespan()  # the stop ended before the start did
            raise RuntimeError(
                f"server {self.name!r} was stopped while it was starting; its stop "
                f"closed the listener (create a new server to listen again)"
            )
        _log.info("uvicorn listening", component=self.name, address=f"{self._address}")

    async def _start(self) -> None:
        """Lifespan startup, then bind and listen, unless a stop began meanwhile.

        Invariant: the socket listens only once ``_listener`` holds it, so
        the stop (which waits for the start to end) closes it; until then it
        is bound without listening, and the kernel refuses connections to it.
        """
        config = self.config
        if not config.loaded:
            config.load()
        sock = self._bind()
        if self._own_middleware:
            self.middleware.name = self.name  # with the real port: the cut names it
        loop = asyncio.get_running_loop()
        self._loop = loop
        server = _EmbeddedUvicorn(config)
        self.uvicorn = server
        server.lifespan = lifespan = config.lifespan_class(config)
        listener: asyncio.Server | None = None
        try:
            await lifespan.startup()
            self._check_lifespan_started(lifespan)
            self._lifespan_started = True
            if self._stop_began():
                sock.close()  # never listened
                return
            listener = await loop.create_server(
                self._protocol, sock=sock, backlog=self.backlog, ssl=config.ssl, start_serving=False
            )
            server.servers = [listener]
            await server.on_tick(0)  # the Server and Date headers, as uvicorn's startup leaves them
            if self._stop_began():
                listener.close()  # never listened
                return
            if self._answers is not None:
                self._answers.start(name=f"lifecycle:{self.name}.ready")
            self._listener = listener
            await listener.start_serving()
        except BaseException:
            if not self._stop_began() or self._listener is None:
                # Failed or cancelled (a start timeout): end what was made. Only a
                # listener a stop is waiting for is left to it (it takes in the queue).
                await self._undo_start(sock, listener)
            raise
        if self._stop_began():
            return  # the stop waiting for this start closes the listener
        # uvicorn's main loop refreshes the Date header every second, until the stop.
        self._main = asyncio.ensure_future(server.main_loop())
        self._main.add_done_callback(self._main_loop_ended)

    def _stop_began(self) -> bool:
        """Whether a stop began (read again after each await of the start)."""
        return self._stopping

    def _stop_ended(self) -> bool:
        return self._stopped

    async def _undo_start(self, sock: socket.socket, listener: asyncio.Server | None) -> None:
        """A start that did not complete: nothing listens, nothing is served, lifespan down."""
        self._listener = None
        sock.close()
        if listener is not None:
            listener.close()
        server = self.uvicorn
        if server is not None:
            for protocol in list(server.server_state.connections):
                transport = getattr(protocol, "transport", None)
                if transport is not None:
                    transport.abort()
        if self._answers is not None:
            self._answers.close()
        with contextlib.suppress(Exception):
            await self._shutdown_lifespan()

    async def _shutdown_lifespan(self) -> None:
        """The app's lifespan shutdown, once, if its startup completed."""
        server = self.uvicorn
        if server is None or not self._lifespan_started:
            return
        self._lifespan_started = False
        if not server.force_exit:
            await server.lifespan.shutdown()

    def _check_lifespan_started(self, lifespan: Any) -> None:
        if lifespan.should_exit:
            raise RuntimeError(
                f"server {self.name!r}: the ASGI app's lifespan startup failed (uvicorn "
                f"logged why, on the 'uvicorn.error' logger); fix the app's startup, or "
                f"pass lifespan='off' if the app has none"
            )

    def _main_loop_ended(self, task: asyncio.Future[None]) -> None:
        """React to uvicorn's main loop ending by itself (``limit_max_requests``): the app stops."""
        if self._stopping or task.cancelled():
            return
        error = task.exception()
        if error is not None:
            _log.error("uvicorn's main loop raised", component=self.name, exc_info=error)
        else:
            _log.info("uvicorn's main loop ended (limit_max_requests)", component=self.name)
        request = getattr(self._app, "request_shutdown", None)
        if callable(request):
            request(f"{self.name}: uvicorn's main loop ended")

    def ready(self) -> bool:
        """True while listening (until stop begins)."""
        listener = self._listener
        return (
            listener is not None
            and not self._starting
            and not self._stopping
            and listener.is_serving()
        )

    async def stop(self, token: CancelToken | None = None) -> None:
        """Stop without losing a request: the sequence in the class docstring, bounded by ``token``.

        Returns when every connection has ended and the lifespan shutdown
        ran; at once when nothing was in flight. Once it returned, the port
        refuses connections, also when it was called before or during
        `start` (which then raises and never listens, or stops listening).
        Called again while it runs, it returns when the first call does,
        with the same outcome, but by its own token's deadline (cutting
        then if the first call would cut later); called after it finished,
        it returns that outcome at once.

        Raises:
            DeadlineExceeded: requests were cut; ``.cut`` names every one.
        """
        if token is None:
            token = current_token()
        if self._stopping:
            await self._join_stop(token)
            return
        self._stopping = True
        driving = CancelSource.linked(token, self._cut_now.token)
        try:
            await self._stop_sequence(driving.token)
        except Exception as error:  # DeadlineExceeded, or an operation's error: every call's
            self._outcome, self._outcome_tb = error, error.__traceback__
            raise
        except BaseException:  # abandoned (cancelled): the later calls get what was cut
            self._outcome = self._cut_outcome()
            raise
        else:
            self._quiet.release()
        finally:
            driving.close()
            self._stopped = True
            self._waiter.wake()

    async def _join_stop(self, token: CancelToken) -> None:
        """A call of ``stop`` while (or after) another ran: its outcome, by ``token``'s deadline."""
        try:
            if not self._stopped:
                await self._wait(
                    lambda: self._stopped, cut_time(time.monotonic(), token.deadline), token
                )
            if not self._stopped:
                # This call's cut time came first (or its token fired): the running
                # stop cuts now; what is left of this call's budget is for its join.
                self._cut_now.cancel(_CUT_NOW_REASON)
                remaining = token.remaining()
                join_by = time.monotonic() + (FORCE_JOIN if remaining is None else remaining)
                await self._wait(lambda: self._stopped, join_by, None)
        except BaseException:
            self._cut_now.cancel(_CUT_NOW_REASON)  # abandoned: leave nothing running
            raise
        if not self._stopped:
            cut = self._cut_outcome()  # the stop cut, and is still joining
            if cut is not None:
                raise cut
            return
        outcome = self._outcome
        if outcome is not None:
            raise outcome.with_traceback(self._outcome_tb)

    async def _wait(
        self, holds: Callable[[], bool], until: float | None, token: CancelToken | None
    ) -> None:
        """Until ``holds()``, ``until`` passed or ``token`` fired; spurious wakes looked past."""
        while not holds() and not (token is not None and token.cancelled):
            timeout = None if until is None else until - time.monotonic()
            if timeout is not None and timeout <= 0:
                return
            await self._waiter.wait(holds, timeout, token)

    def _cut_outcome(self) -> DeadlineExceeded | None:
        """What a stop that cut without finishing amounts to: the cut, if it named requests."""
        if not self._cut_labels:
            return None
        return DeadlineExceeded(self.name, self._cut_labels, logged=True)  # by the first stop

    async def _stop_sequence(self, token: CancelToken) -> None:
        if self._starting:
            # A start is running: it listens only if no stop began, so wait for it
            # to end, then close what it made.
            await self._wait(
                lambda: not self._starting, cut_time(time.monotonic(), token.deadline), token
            )
        server = self.uvicorn
        if server is None or not self._lifespan_started:
            return  # never started, a start that failed (it undid itself), or one still starting
        server.should_exit = True
        if self._main is not None:
            self._main.cancel()
        deadline = token.deadline
        requests_by = None
        if deadline is not None:
            budget = max(0.0, deadline - time.monotonic())
            requests_by = max(0.0, budget - min(LIFESPAN_RESERVE, budget / 10))
        cut: DeadlineExceeded | None = None
        try:
            with CancelSource(token, timeout=requests_by) as requests:
                try:
                    if self._listener is not None:
                        await self._close_listener(
                            cut_time(time.monotonic(), requests.token.deadline)
                        )
                    await self.middleware.stop(requests.token)
                except DeadlineExceeded as error:
                    cut = error  # named and logged by the middleware; raised below
                    self._cut_labels = list(error.cut)
                await self._close_connections(requests.token, cut=cut is not None)
        except asyncio.CancelledError:
            self._abandon()  # the stop's task was cancelled: leave nothing running
            raise
        finally:
            listener, self._listener = self._listener, None
            if listener is not None:
                listener.close()  # if the sequence did not get to it
            try:
                await self._shutdown_lifespan()
            finally:
                if self._answers is not None:
                    self._answers.close()
        if cut is not None:
            raise cut

    # -- listening ---------------------------------------------------------------

    def _bind(self) -> socket.socket:
        host, port = self.host, self._requested_port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as error:
            raise OSError(
                error.errno, f"server {self.name!r}: cannot resolve host {host!r}: {error}"
            ) from None
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
        except OSError as error:
            sock.close()
            hint = (
                f"port {port} is in use: stop what listens there (ss -ltnp 'sport = :{port}'), "
                f"or pass another port (0 picks a free one)"
                if error.errno == errno.EADDRINUSE
                else "check the host and port (a port below 1024 needs privileges)"
            )
            raise OSError(
                error.errno, f"server {self.name!r} cannot listen on {host}:{port}: {hint}"
            ) from None
        sock.setblocking(False)
        bound = sock.getsockname()
        self._address = (str(bound[0]), int(bound[1]))
        return sock

    def _announce_close(self) -> None:
        """The drain began (in any thread): the responses not started yet will say close.

        Run at once on the server's loop, else scheduled on it: a response
        that the loop starts before it runs the call does not say it, and its
        connection is closed once idle, as at any stop.
        """
        loop = self._loop
        if loop is None:
            return  # not serving: no response in progress
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._close_after_responses()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nothing in progress
            loop.call_soon_threadsafe(self._close_after_responses)

    def _close_after_responses(self) -> None:
        """Each request in progress whose response has not started: ``connection: close``.

        uvicorn's HTTP/1.1 protocols put the cycle's ``default_headers`` in
        front of the app's headers and close the connection after a response
        that says ``connection: close``; a cycle gets its own list here, so
        that requests begun later (which the middleware answers with the close)
        and websockets are untouched.
        """
        server = self.uvicorn
        if server is None:
            return
        for protocol in list(server.server_state.connections):
            cycle = getattr(protocol, "cycle", None)
            if cycle is None or getattr(cycle, "response_started", True):
                continue
            headers = getattr(cycle, "default_headers", None)
            if isinstance(headers, list) and _CLOSE_HEADER not in headers:
                cycle.default_headers = [*headers, _CLOSE_HEADER]

    def _protocol(self) -> asyncio.Protocol:
        """One connection's uvicorn protocol, as uvicorn's own startup makes it."""
        server = self.uvicorn
        assert server is not None
        config = self.config
        protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config,
            server_state=server.server_state,
            app_state=server.lifespan.state,
            _loop=self._loop,
        )
        self._accepted[protocol] = time.monotonic()
        return protocol

    async def _close_listener(self, until: float | None) -> None:
        """Take in what the kernel queued, once, then close the listening socket itself.

        asyncio's ``Server.close()`` alone resets connections the kernel
        completed but the loop had not accepted yet; here they are taken in
        first, then the socket closes and later attempts are refused, and only
        then are they served. The queue is taken in once: at most what it can
        hold (``backlog + 1``), and by ``until`` (the stop's cut time), so a
        queue refilled as fast as it is taken in cannot keep the listener open.
        """
        listener = self._listener
        assert listener is not None
        timeout = None if until is None else max(0.0, until - time.monotonic())
        await take_in_queued_then_close(
            listener,
            self._protocol,
            self.name,
            backlog=self.backlog,
            timeout=timeout,
            ssl=self.config.ssl,
        )

    # -- connections -------------------------------------------------------------

    def _websockets_asked_to_end(self) -> None:
        # Inline in the cancelling thread: only schedule.
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._end_websockets)

    def _end_websockets(self) -> None:
        """Close every open websocket through uvicorn's own shutdown: close code 1012."""
        server = self.uvicorn
        ws_class = getattr(self.config, "ws_protocol_class", None)
        if server is None or not isinstance(ws_class, type):
            return
        for protocol in list(server.server_state.connections):
            if isinstance(protocol, ws_class) and protocol not in self._shut:
                self._shut.add(protocol)
                protocol.shutdown()

    def _close_idle(self, now: float) -> None:
        """Shut each connection down (uvicorn's way) at a moment that loses nothing.

        An idle HTTP connection is closed by it, a busy one told to close
        after its response; skipped for now: one with a request arriving
        (bytes in the kernel or in h11's buffer), and one accepted less than
        `FIRST_REQUEST_GRACE` ago (its first request is usually on the way).
        """
        server = self.uvicorn
        assert server is not None
        ws_class = getattr(self.config, "ws_protocol_class", None)
        for protocol in list(server.server_state.connections):
            if protocol in self._shut:
                continue
            is_ws = isinstance(ws_class, type) and isinstance(protocol, ws_class)
            if not is_ws:
                accepted = self._accepted.get(protocol, -math.inf)
                if now < accepted + FIRST_REQUEST_GRACE or _has_input(protocol):
                    continue
            self._shut.add(protocol)
            protocol.shutdown()

    async def _close_connections(self, token: CancelToken, *, cut: bool) -> None:
        """Until every connection and request task ended; cut what remains near the deadline.

        After a cut (``cut``) what remains is ended at once.

        Raises:
            DeadlineExceeded: requests that began after the middleware's stop
                were still running at the deadline.
        """
        server = self.uvicorn
        assert server is not None
        state = server.server_state
        cut_at = cut_time(time.monotonic(), token.deadline)
        while state.connections or state.tasks:
            now = time.monotonic()
            if cut or token.cancelled or (cut_at is not None and now >= cut_at):
                await self._cut_connections(token, named=not cut)
                return
            self._close_idle(now)
            # uvicorn offers no hook for a closed connection: look again shortly.
            await asyncio.sleep(_IDLE_POLL)

    async def _cut_connections(self, token: CancelToken, *, named: bool) -> None:
        """The deadline: abort every connection, cancel every request task, name what was cut."""
        server = self.uvicorn
        assert server is not None
        state = server.server_state
        labels = self.middleware.running() if named else []
        if labels:
            self._cut_labels = labels
        tasks = list(state.tasks)
        self._quiet.hold(tasks)
        for task in tasks:
            self._log_stuck(task)
            task.cancel()
        for protocol in list(state.connections):
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abort()
        if tasks:
            remaining = token.remaining()
            bound = CUT_MARGIN if remaining is None else max(0.0, remaining / 2)
            await asyncio.wait(tasks, timeout=min(CUT_MARGIN, bound))
        if labels:
            _log.error(
                "work cut at the stop deadline",
                component=self.name,
                running=labels[:20],
                cut=len(labels),
                hint="raise stop_timeout, or make these handlers honour lifecycle.current_token()",
            )
            raise DeadlineExceeded(self.name, labels, logged=True)

    def _abandon(self) -> None:
        """The stop's task was cancelled: cut what runs at once, without waiting for it."""
        server = self.uvicorn
        assert server is not None
        if not self._cut_labels:
            self._cut_labels = self.middleware.running()
        tasks = list(server.server_state.tasks)
        self._quiet.hold(tasks)  # stays on: they end after the abandoned stop
        for task in tasks:
            self._log_stuck(task)
            task.cancel()
        for protocol in list(server.server_state.connections):
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abort()

    def _about_to_cut(self, task: asyncio.Task[Any]) -> None:
        """The middleware cuts ``task``: where it is stuck, and no traceback of uvicorn's for it."""
        self._quiet.hold([task])
        self._log_stuck(task)

    def _log_stuck(self, task: asyncio.Task[Any]) -> None:
        """A request about to be cut: where it is stuck (its task's frames below the middleware).

        Called just before ``task`` is cancelled, while it still waits where
        it was stuck; 20 such logs per stop at most.
        """
        if task in self._stuck_logged or len(self._stuck_logged) >= 20:
            return
        call = _call_served(task, self.middleware._calls)
        if call is None:
            return  # not serving a request (a connection between two)
        self._stuck_logged.add(task)
        scope: Scope = call.args[1]
        frames = _awaiting_frames(task)
        for i, frame in enumerate(frames):
            if frame.f_code is _MIDDLEWARE_CODE:
                frames = frames[i + 1 :]  # from the app down
                break
        stack = "".join(traceback.StackSummary.extract((f, f.f_lineno) for f in frames).format())
        method = scope.get("method", "WS") if scope["type"] == "http" else "WS"
        # The cut itself is one ERROR entry ("work cut at the stop deadline");
        # where each request was, its detail, at WARNING.
        _log.warning(
            "request cut at the stop deadline",
            component=self.name,
            request=f"{method} {scope.get('path', '')}",
            stack=f"Stack where it was cut (most recent call last):\n{stack}",
        )


class _QuietCut(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" for the requests the stop itself cut.

    A cut request's task is cancelled, and uvicorn logs the ``CancelledError``
    with its traceback at ERROR on ``uvicorn.error``: a second entry, with a
    library traceback, for a cut the stop logs once ("work cut at the stop
    deadline", and at WARNING the stack of each request where it was cut).
    Only the records of those tasks are dropped, and only while the filter
    is on (from the cut to the end of the stop).
    """

    def __init__(self) -> None:
        super().__init__("lifecycle.uvicorn")
        self.tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()

    def hold(self, tasks: list[asyncio.Task[Any]]) -> None:
        self.tasks.update(tasks)
        logging.getLogger("uvicorn.error").addFilter(self)  # once: addFilter keeps one

    def release(self) -> None:
        logging.getLogger("uvicorn.error").removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, asyncio.CancelledError):
            return True
        try:
            task = asyncio.current_task()
        except RuntimeError:  # not in a loop's thread
            return True
        return task not in self.tasks


# -- helpers ---------------------------------------------------------------------


def _check_app(app: object) -> None:
    """Refuse what cannot be an ASGI 3 application object, saying what to pass."""
    if isinstance(app, str):
        raise TypeError(
            f"lifecycle.uvicorn.Server needs the ASGI app object, not an import string "
            f"({app!r}): import it and pass it, as in Server(app)"
        )
    if inspect.isclass(app):
        raise TypeError(
            f"lifecycle.uvicorn.Server needs an ASGI app instance, got the class "
            f"{app.__name__}: pass {app.__name__}() (an instance), or the app object"
        )
    if not callable(app):
        raise TypeError(
            f"lifecycle.uvicorn.Server needs an ASGI app: an async callable "
            f"app(scope, receive, send), got {type(app).__name__} {app!r}"
        )


async def _answer_probe(answers: HealthAnswers, scope: Scope, send: Send) -> None:
    """``/livez``, ``/readyz``, ``/startupz`` on the traffic port: the health endpoint's answers.

    ``/readyz`` evaluates ``app.ready`` (the components' ``ready()``, user
    code) on the answers' own thread, never on the event loop, and says 503
    from the instant shutdown is requested without calling anything.
    """
    method = scope.get("method", "GET")
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    status, headers, body = await answers.answer_async(method, scope["path"], query)
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode("ascii")))
    await send({"type": "http.response.start", "status": int(status), "headers": raw})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def _awaiting_frames(task: asyncio.Task[Any]) -> list[FrameType]:
    """The frames of ``task``'s await chain, outermost first, down to what it waits on.

    ``Task.get_stack()`` gives the outermost coroutine's frame only (a
    suspended frame has no ``f_back``); the chain is followed through each
    coroutine's ``cr_await`` instead.
    """
    frames: list[FrameType] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(frames) < 200:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        frames.append(frame)
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return frames


def _is_app_view(app: object) -> bool:
    return all(hasattr(app, a) for a in ("state", "ready", "shutdown_reason", "components"))


def _has_input(protocol: asyncio.Protocol) -> bool:
    """Whether a next request is arriving: bytes in h11's buffer or in the kernel."""
    conn = getattr(protocol, "conn", None)
    trailing = getattr(conn, "trailing_data", None)
    if isinstance(trailing, tuple) and trailing and trailing[0]:
        return True
    transport = getattr(protocol, "transport", None)
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed meanwhile: nothing to serve
        return False
