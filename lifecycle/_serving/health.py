"""The probe endpoint: ``/livez``, ``/readyz``, ``/startupz`` and ``/status`` over HTTP.

`HealthServer` is a deliberately small HTTP/1.1 server on the standard
library's sockets, with its own daemon threads, so that health stays
answerable while everything else in the process starts, drains and stops.
The runners start one before the first component starts and close it after
the last one stopped when ``App(health=...)`` is set; it can also be run by
hand around any `App`.

What each path answers (GET and HEAD; any other method is ``405``)::

    /livez      200 from the start to the very end of the shutdown; 503 once
                the app has finished (the server closes right after)
    /readyz     200 iff app.ready: running, no shutdown requested, every
                component ready(); 503 from the instant shutdown is requested,
                and when the ready() calls do not answer within 1 s
    /startupz   200 once the app has reached RUNNING (and from then on,
                through the shutdown); 503 while starting
    /status, /  JSON: app name, state, live, ready, started, and each
                component's state, a ``failed`` flag (never an error text),
                with a restart policy its ``restarts`` and
                ``next_restart_in`` (seconds, or null),
                and for a periodic job ``periodic``: interval, next_run_in,
                runs, errors, skipped slots, and the last run's outcome
                ("ok"/"error"), duration, seconds_ago and wall-clock ``at``

Probes accept ``?verbose`` for a line per check, in the Kubernetes style.

The server is made for a port that anything on a pod network can reach, and
no number of slow, idle or non-reading clients can keep a probe from being
answered:

* One thread (the selector) accepts every connection and reads request
  heads without blocking: a connection holds no thread. A head has
  `REQUEST_TIMEOUT` (2 s) to arrive, else ``408``, and at most 8192 bytes,
  the empty line that ends it included, else ``431`` (however it is split
  into packets); a malformed one gets ``400`` (``505`` for a version other
  than 1.x).
* At most `MAX_CONNECTIONS` (256) are open. A new one evicts the oldest whose
  head is still incomplete, else the oldest already answered (its response
  sent, its close awaited). A connection whose head is complete is never
  evicted: a flood only ever evicts its own, and an accepted probe is always
  answered. Requests waiting for ``ready()`` hold at most half the
  connections (more get ``503`` with ``Retry-After: 1`` at once), so that a
  flood of them leaves answered ones for a ``/livez`` to evict. Should
  every open connection still be owed an answer, the newcomer is refused
  instead: answered at once if its head came with it and needs no
  ``ready()``, else ``503`` with ``Retry-After: 1``, and closed (a probe that
  is refused fails this period and is retried the next).
* Responses are small and written without blocking by the same thread; a
  client that has not taken its response and closed within `WRITE_TIMEOUT`
  (1 s) is dropped. Every response says ``Connection: close``.
* The components' ``ready()`` (user code, behind ``/readyz`` and
  ``/status``) run on a second thread, one evaluation at a time, and must
  answer within `READY_TIMEOUT` (1 s): a ``ready()`` that blocks makes
  ``/readyz`` 503 rather than freezing the endpoint; one that raises makes
  it 503, and a ``SystemExit`` or ``CancelledError`` that escapes is logged
  and the thread carries on. ``/livez`` and ``/startupz`` never call user
  code and never wait for it.

No response carries a stack trace or an error message, and what a client
sends never logs anything above debug; the one warning a flood causes (the
connection cap) is logged at most once per 10 s.

Added in 0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import math
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, NamedTuple, TypeAlias
from urllib.parse import parse_qs, urlsplit

import attrs

from .._core.log import get_logger
from .._core.states import AppState, ComponentState
from .._core.threads import helper_thread, user_code_thread
from .._core.tokens import on_cancel_inline

if TYPE_CHECKING:
    from .._core.views import AppView

__all__ = ["PATHS", "Answer", "HealthAnswers", "HealthServer", "Ticket", "error_answer"]

_log = get_logger()

MAX_HEAD_BYTES = 8192
"""Request line, headers and the empty line that ends them, in bytes; more is ``431``."""
REQUEST_TIMEOUT = 2.0
"""Seconds a client has to send its request head (a probe has no body); then ``408``."""
READY_TIMEOUT = 1.0
"""Seconds the components' ``ready()`` have to answer; then ``/readyz`` is ``503``."""
WRITE_TIMEOUT = 1.0
"""Seconds a client has to take its response and close; one that does not is dropped."""
MAX_CONNECTIONS = 256
"""Connections open at once; a new one evicts the oldest incomplete (else answered) one."""
RETRY_AFTER = 1
"""Seconds a refused client is told to wait (``Retry-After``) with its ``503``."""
BACKLOG = 1024
"""``listen()`` backlog: room for a burst of connections between two turns of the
selector (a full queue drops new SYNs, which clients resend only after a second)."""

_JOIN_TIMEOUT: Final = 1.0  # close() waits at most this long for the selector thread
_LINGER_BYTES: Final = 65536  # after a response, at most this much input is drained
_RECV_SIZE: Final = 4096
_ACCEPTS_PER_TURN: Final = 64  # accept() calls in a row before connections get a turn
_ACCEPT_PAUSE: Final = 0.1  # seconds without accepting after accept() failed (no fds)
_LOG_EVERY: Final = 10.0  # a repeated warning or error is logged once per this many seconds

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_HEADER_LINE = re.compile(_TOKEN + rb":[\t\x20-\x7e\x80-\xff]*")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_HEAD_END_SPAN: Final = 4  # the longest match of _HEAD_END

_FINAL = frozenset({AppState.STOPPED, AppState.FAILED})
_STARTED = frozenset({AppState.RUNNING, AppState.DRAINING})
_ALLOWED = ("GET", "HEAD")
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"
_WAKE: Final = "wake"  # selector key data of the wake-up socket
_LISTEN: Final = "listen"  # ... and of the listening socket

_Answer: TypeAlias = tuple[HTTPStatus, str, bytes]  # a route's: status, content type, body

PATHS: Final = ("/livez", "/readyz", "/startupz", "/status", "/")
"""The paths the health endpoint answers (`HealthAnswers.begin` says 404 to any other)."""


class Answer(NamedTuple):
    """What the health endpoint answers to one request, whatever carries it.

    ``headers`` are the ones a transport must send as they are
    (``Content-Type``, ``Cache-Control: no-store``, and ``Allow`` or
    ``Retry-After`` where the status calls for them); the framing is the
    transport's: `HealthServer` adds ``Content-Length`` and ``Connection:
    close``, and sends no body to a ``HEAD``.

    Example::

        status, headers, body = answers.answer("GET", "/livez")
        assert status == HTTPStatus.OK and body.startswith(b"ok")
    """

    status: HTTPStatus
    headers: tuple[tuple[str, str], ...]
    body: bytes


class _ServerState(enum.Enum):
    NEW = "new"
    """Created, or a start() failed (it may be called again); not listening."""
    STARTING = "starting"
    """start() is binding and starting the threads; a close() now makes it abort."""
    SERVING = "serving"
    """Listening and answering."""
    CLOSED = "closed"
    """Closed (or closing). Final: a HealthServer does not reopen."""


class _Phase(enum.Enum):
    READING = "reading"
    """The request head is arriving: the connection is incomplete."""
    WAITING = "waiting"
    """The head is complete; its answer waits for an evaluation of ``ready()``."""
    ANSWERING = "answering"
    """The response is being written, then what the client still sends drained."""
    CLOSED = "closed"
    """Closed: answered, timed out, evicted or failed. Final."""


class _RequestError(Exception):
    """A request the server answers with an error status, without internals."""

    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


@attrs.frozen
class _Verdict:
    """What an evaluation of ``app.ready`` gave."""

    ready: bool
    note: str | None = None
    """Why the app gave no answer (shown as a failed check), or None."""
    failed: bool = False
    """``app.ready`` raised: the request is answered ``500``."""


_READY = _Verdict(ready=True)
_NOT_READY = _Verdict(ready=False)
_FAILED = _Verdict(ready=False, failed=True)


@attrs.frozen
class Ticket:
    """A request whose answer waits for an evaluation of ``ready()``: `HealthAnswers.finish` it.

    ``overdue`` is the ``time.monotonic()`` by which it is answered
    whatever ``ready()`` does (the evaluation's start plus the ready timeout).
    """

    route: Callable[[bool, _Verdict], _Answer]
    verbose: bool
    evaluation: int  # the number of the evaluation it waits for
    overdue: float
    readiness: _Readiness = attrs.field(repr=False)


class _Head:
    """A request head arriving in pieces (sans-I/O): the same outcome however it is split.

    The head is the request line, the header lines and the empty line that
    ends them (CRLF or bare LF), at most `MAX_HEAD_BYTES` bytes, that empty
    line included; empty lines before the request line are dropped and not
    counted (RFC 9112 2.2).
    """

    __slots__ = ("_buffer", "_scanned")

    def __init__(self) -> None:
        self._buffer = bytearray()
        # Invariant: the first _scanned bytes of _buffer hold no end of the head.
        self._scanned = 0

    def __len__(self) -> int:
        """Bytes received of the head so far (empty lines before it not counted)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> bytes | None:
        """Take ``data``: the complete head, its terminator excluded, once it is; else None.

        Raises:
            _RequestError: 431, the head does not end within `MAX_HEAD_BYTES`.
        """
        buffer = self._buffer
        buffer += data
        if buffer and buffer[0] in b"\r\n":
            del buffer[: len(buffer) - len(buffer.lstrip(b"\r\n"))]
            self._scanned = 0
        # Searching no further than the limit: a match found ends within it.
        start = max(0, self._scanned - _HEAD_END_SPAN + 1)
        end = _HEAD_END.search(buffer, start, MAX_HEAD_BYTES)
        if end is not None:
            return bytes(buffer[: end.start()])
        if len(buffer) >= MAX_HEAD_BYTES:
            raise _RequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        self._scanned = len(buffer)
        return None

    def clear(self) -> None:
        self._buffer.clear()
        self._scanned = 0


@attrs.define(eq=False)
class _Conn:
    """One client connection; only the selector thread touches it."""

    sock: socket.socket
    deadline: float  # time.monotonic() by which the current phase must end
    phase: _Phase = _Phase.READING
    head: _Head = attrs.Factory(_Head)
    out: memoryview | None = None  # the response not sent yet; None once all is sent
    drained: int = 0  # bytes read after the response
    events: int = 0  # the selector events it is registered for; 0: not registered
    pending: Ticket | None = None  # while WAITING
    head_only: bool = False  # the request waiting is a HEAD
    may_wait: bool = True  # False: admitted over the cap, so it may not wait for ready()


class _Throttle:
    """Lets an event through at most once per ``every`` seconds; counts the ones held back.

    Not thread-safe: each thread that logs has its own.
    """

    def __init__(self, every: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._next = -math.inf
        self._held = 0

    def __call__(self) -> int | None:
        """None to hold this one back; else how many were held back since the last one."""
        now = self._clock()
        if now < self._next:
            self._held += 1
            return None
        held, self._held, self._next = self._held, 0, now + self._every
        return held

    def log(self, level: Literal["warning", "error"], event: str, **fields: object) -> None:
        """Log ``event`` unless held back, with how many were held back since the last."""
        held = self()
        if held is not None:
            getattr(_log, level)(event, not_logged_since=held, **fields)


def _log_app_error(throttle: _Throttle, app: str, *, answering: int = 500) -> None:
    """Log the exception being handled, an app's (not a client's), once per interval."""
    message = f"health endpoint: reading the app raised; answering {answering}"
    throttle.log("error", message, app=app, exc_info=True)


class _Readiness:
    """Evaluates ``app.ready`` (the users' ``ready()``) on a thread of its own, within a bound.

    The selector thread asks (`ask`), the evaluation runs here, and its end
    wakes the selector, which collects it (`answered`). One evaluation at a
    time: a request made while one runs shares its answer; one made after it
    overran its bound gets `overrun` at once, and no second evaluation starts
    until the stuck one returns.
    """

    def __init__(
        self, app: AppView, timeout: float, wake: Callable[[], None], *, name: str
    ) -> None:
        self._app = app
        self._timeout = timeout
        self._wake = wake
        self._cond = threading.Condition(threading.Lock())
        # Guarded by _cond. Invariant: answered <= asked; evaluation number
        # `asked` is running (or about to) iff answered < asked, begun at `began`.
        self._asked = 0
        self._answered = 0
        self._verdict = _NOT_READY
        self._began = -math.inf
        self._closed = False
        self._errors = _Throttle(_LOG_EVERY)  # the evaluating thread's
        self._overruns = _Throttle(_LOG_EVERY)  # the selector thread's
        self._overrun_logged = 0  # selector thread: the last evaluation whose overrun was logged
        self.overrun = _Verdict(
            ready=False, note=f"ready() of {app.name!r} did not answer within {timeout:g}s"
        )
        # ready() is user code: a process it starts must not inherit SIGTERM
        # blocked, whichever thread (a runner's control thread) starts this one.
        self._thread = threading.Thread(target=user_code_thread(self._run), name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Let the thread end; it does once a stuck evaluation returns (never waited for)."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def ask(self, now: float) -> tuple[int, float]:
        """Start an evaluation unless one runs: ``(its number, when it is overdue)``."""
        with self._cond:
            if self._answered == self._asked:
                self._asked += 1
                self._began = now
                self._cond.notify()
            return self._asked, self._began + self._timeout

    def answered(self) -> tuple[int, _Verdict]:
        """The number and the answer of the last evaluation that ended."""
        with self._cond:
            return self._answered, self._verdict

    def overran(self, evaluation: int) -> _Verdict:
        """The answer for a request whose evaluation is overdue (logged once for each)."""
        if evaluation > self._overrun_logged:
            self._overrun_logged = evaluation
            self._overruns.log(
                "warning",
                f"health endpoint: {self.overrun.note}; /readyz answers 503 until it "
                f"returns (keep ready() quick: return a flag the component maintains)",
                app=self._app.name,
            )
        return self.overrun

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._answered == self._asked and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                evaluation = self._asked
            verdict = self._evaluate()
            with self._cond:
                self._answered, self._verdict = evaluation, verdict
            self._wake()

    def _evaluate(self) -> _Verdict:
        try:
            return _READY if self._app.ready else _NOT_READY
        except Exception:  # noqa: BLE001 - answered 500; the endpoint keeps serving
            _log_app_error(self._errors, self._app.name)
            return _FAILED
        except BaseException:  # noqa: BLE001 - SystemExit & co.: this thread has nobody to pass it to
            # Like a component's ready() that raises: "not ready". Letting it
            # propagate would end this thread, and /readyz would be 503 for good.
            _log_app_error(
                self._errors, self._app.name, answering=HTTPStatus.SERVICE_UNAVAILABLE.value
            )
            return _NOT_READY


class HealthAnswers:
    """What the health endpoint answers, for any transport: one code path for every answer.

    `HealthServer` answers with it, and so do the integrations that serve
    the probes on their own port (``health_paths=True``): the same paths
    (`PATHS`), statuses, headers and bodies. ``/livez`` and ``/startupz``
    are answered at once and never call user code. ``/readyz`` and
    ``/status`` need an evaluation of ``app.ready`` (the components'
    ``ready()``, user code): it runs on a thread of its own with the
    program's signal mask, one at a time, shared by the requests that arrive
    while it runs; a request is answered when it ends, or ``ready_timeout``
    after it began ("not ready", saying why), whichever comes first. Once
    shutdown is requested they say "not ready" at once, calling nothing.

    Three ways to ask, one answer:

    * `answer` blocks the calling thread, ``ready_timeout`` at most;
    * `answer_async` awaits as long, never blocking the event loop;
    * `begin` never blocks: an `Answer`, or a `Ticket` that `finish` turns
      into one once the evaluation ended (``wake`` is called then, from the
      evaluating thread) or the ticket is ``overdue``.

    `start` before asking what needs an evaluation (it starts the thread
    and watches the shutdown request), `close` after; after `close` those
    paths say "not ready" at once. `finish` and `answer_async` of one
    instance are meant for one thread or loop at a time (`answer` for any).

    Example::

        answers = HealthAnswers(app)
        answers.start()
        status, headers, body = answers.answer("GET", "/readyz", "verbose")
        ...
        answers.close()
    """

    def __init__(
        self,
        app: AppView,
        *,
        ready_timeout: float = READY_TIMEOUT,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.ready_timeout = _seconds(ready_timeout, "ready_timeout")
        self._wake = wake
        self._readiness: _Readiness | None = None
        self._closed = False
        self._detach: Callable[[], bool] | None = None
        # Invariant: once True, stays True (the app reached RUNNING at some point).
        self._reached_running = False
        self._lock = threading.Lock()  # guards _waiters and the throttled logs below
        self._waiters: list[Callable[[], None]] = []
        self._app_errors = _Throttle(_LOG_EVERY)
        self._routes: dict[str, Callable[[bool], _Answer]] = {
            "/livez": self._livez,
            "/startupz": self._startupz,
        }
        # Routes that need app.ready, evaluated off the asking thread.
        self._ready_routes: dict[str, Callable[[bool, _Verdict], _Answer]] = {
            "/readyz": self._readyz,
            "/status": self._status,
            "/": self._status,
        }

    def __repr__(self) -> str:
        return f"<HealthAnswers app={self.app.name!r}>"

    def start(self, *, name: str = "lifecycle-health:ready") -> None:
        """Start the evaluating thread (``name``) and watch the app's shutdown request.

        Call it in the thread whose signal mask ``ready()`` should have (or
        in a lifecycle helper thread, which hands on the program's). Again
        after `close` (a `HealthServer` start that failed is retried), it
        starts afresh.
        """
        self._readiness = _Readiness(self.app, self.ready_timeout, self._evaluated, name=name)
        self._closed = False
        self._detach = on_cancel_inline(self.app.shutdown_token, self._note_shutdown_request)
        self._readiness.start()

    def close(self) -> None:
        """Let the evaluating thread end (a stuck ``ready()`` is not waited for). Idempotent."""
        self._closed = True
        detach, self._detach = self._detach, None
        if detach is not None:
            detach()
        if self._readiness is not None:
            self._readiness.close()
        self._evaluated()  # whoever waits looks again, and finds "not ready"

    def begin(
        self,
        method: str,
        path: str,
        query: str = "",
        *,
        now: float | None = None,
        admit: Callable[[], bool] | None = None,
    ) -> Answer | Ticket:
        """The answer to ``method path?query``, or a `Ticket` when it waits for ``ready()``.

        Never blocks. ``admit`` is asked only when the answer would wait:
        False answers ``503`` with ``Retry-After`` instead (a transport's cap
        on waiting requests). ``now``: ``time.monotonic()`` by default.
        """
        plain = self._routes.get(path)
        needs_ready = self._ready_routes.get(path)
        if plain is None and needs_ready is None:
            return error_answer(HTTPStatus.NOT_FOUND)
        if method not in _ALLOWED:
            return error_answer(HTTPStatus.METHOD_NOT_ALLOWED)
        verbose = "verbose" in parse_qs(query, keep_blank_values=True)
        if plain is not None:
            try:
                return _answer_of(*plain(verbose))
            except Exception:  # noqa: BLE001 - a probe must never take the server down
                with self._lock:
                    _log_app_error(self._app_errors, self.app.name)
                return error_answer(HTTPStatus.INTERNAL_SERVER_ERROR)
        assert needs_ready is not None
        readiness = self._readiness
        if self._shutdown_requested() or self._closed:
            return self._render(needs_ready, verbose, _NOT_READY)  # no user code then
        if readiness is None:
            raise RuntimeError(
                f"{self!r} was not started: call start() before asking for "
                f"{path} (it starts the thread that evaluates ready())"
            )
        if admit is not None and not admit():
            return error_answer(HTTPStatus.SERVICE_UNAVAILABLE)
        now = time.monotonic() if now is None else now
        evaluation, overdue = readiness.ask(now)
        ticket = Ticket(needs_ready, verbose, evaluation, overdue, readiness)
        if overdue <= now:
            return self._render(needs_ready, verbose, self._overran(ticket))
        return ticket

    def finish(self, ticket: Ticket, now: float | None = None) -> Answer | None:
        """The ticket's answer once its evaluation ended or it is overdue; None until then."""
        evaluation, verdict = ticket.readiness.answered()
        if evaluation < ticket.evaluation:
            now = time.monotonic() if now is None else now
            if now < ticket.overdue and not self._closed:
                return None
            verdict = self._overran(ticket) if now >= ticket.overdue else _NOT_READY
        return self._render(ticket.route, ticket.verbose, verdict)

    def answer(self, method: str, path: str, query: str = "") -> Answer:
        """The answer, waiting in this thread for ``ready()`` (``ready_timeout`` at most)."""
        got = self.begin(method, path, query)
        while isinstance(got, Ticket):
            woken = threading.Event()
            wake = woken.set
            self._add_waiter(wake)
            try:
                done = self.finish(got)
                if done is None:
                    woken.wait(max(0.0, got.overdue - time.monotonic()))
                    done = self.finish(got)
            finally:
                self._remove_waiter(wake)
            if done is not None:
                return done
        return got

    async def answer_async(self, method: str, path: str, query: str = "") -> Answer:
        """The answer, awaiting ``ready()`` (``ready_timeout`` at most) off the event loop."""
        got = self.begin(method, path, query)
        if not isinstance(got, Ticket):
            return got
        loop = asyncio.get_running_loop()
        while True:
            future: asyncio.Future[None] = loop.create_future()

            def wake(future: asyncio.Future[None] = future) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(_resolve, future)

            self._add_waiter(wake)
            try:
                done = self.finish(got)
                if done is not None:
                    return done
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, got.overdue - time.monotonic())):
                        await future
            finally:
                self._remove_waiter(wake)

    def _add_waiter(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._waiters.append(wake)

    def _remove_waiter(self, wake: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):  # woken: taken off already
            self._waiters.remove(wake)

    def _evaluated(self) -> None:
        # The evaluating thread (or close()): an evaluation ended; wake whoever waits.
        if self._wake is not None:
            self._wake()
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()

    def _overran(self, ticket: Ticket) -> _Verdict:
        with self._lock:
            return ticket.readiness.overran(ticket.evaluation)

    def _render(
        self, route: Callable[[bool, _Verdict], _Answer], verbose: bool, verdict: _Verdict
    ) -> Answer:
        if verdict.failed:
            return error_answer(HTTPStatus.INTERNAL_SERVER_ERROR)
        try:
            return _answer_of(*route(verbose, verdict))
        except Exception:  # noqa: BLE001 - a probe must never take the server down
            with self._lock:
                _log_app_error(self._app_errors, self.app.name)
            return error_answer(HTTPStatus.INTERNAL_SERVER_ERROR)

    # -- the routes ----------------------------------------------------------

    def _started(self) -> bool:
        if self.app.state in _STARTED:
            self._reached_running = True
        return self._reached_running

    def _note_shutdown_request(self) -> None:
        # Runs inline in the thread that requested the shutdown (maybe a
        # signal handler), before the runner moves the app on: the state read
        # here is the one the request interrupted. Reads and sets a flag only.
        if self.app.state in _STARTED:
            self._reached_running = True

    def _shutdown_requested(self) -> bool:
        return self.app.shutdown_reason is not None

    def _ready(self, verdict: _Verdict) -> bool:
        # A shutdown requested while the evaluation ran still turns it down.
        return verdict.ready and not self._shutdown_requested()

    def _livez(self, verbose: bool) -> _Answer:
        state = self.app.state
        alive = state not in _FINAL
        checks = [(alive, f"runner {'alive' if alive else 'finished'} (app {state.value})")]
        return _probe("livez", alive, checks, verbose, failure="finished")

    def _startupz(self, verbose: bool) -> _Answer:
        started = self._started()
        state = self.app.state
        checks = [(started, f"app {'has reached running' if started else state.value}")]
        return _probe("startupz", started, checks, verbose, failure="not started")

    def _readyz(self, verbose: bool, verdict: _Verdict) -> _Answer:
        app = self.app
        ready = self._ready(verdict)
        failure = verdict.note or "not ready"
        if not verbose:
            return _probe("readyz", ready, [], verbose, failure=failure)
        state = app.state
        requested = self._shutdown_requested()
        checks = [
            (state is AppState.RUNNING, f"app {state.value}"),
            (not requested, "shutdown requested" if requested else "shutdown not requested"),
        ]
        for name, info in list(app.components.items()):
            ok = info.state is ComponentState.RUNNING
            note = "" if ok or info.critical else ", not critical"
            checks.append((ok, f"component {name} {info.state.value}{note}"))
        if verdict.note is not None:
            checks.append((False, verdict.note))
        return _probe("readyz", ready, checks, verbose, failure=failure)

    def _status(self, verbose: bool, verdict: _Verdict) -> _Answer:
        app = self.app
        state = app.state
        now, wall = time.monotonic(), time.time()
        components: dict[str, dict[str, object]] = {}
        for name, info in list(app.components.items()):
            entry: dict[str, object] = {
                "state": info.state.value,
                "failed": info.state is ComponentState.FAILED
                or info.error is not None
                or info.run_error is not None,
            }
            if info.restart_policy is not None:
                entry["restarts"] = info.restarts
                entry["next_restart_in"] = (
                    None
                    if info.next_restart is None
                    else round(max(0.0, info.next_restart - now), 3)
                )
            if info.periodic is not None:
                entry["periodic"] = info.periodic.status(now, wall)  # no error text
            components[name] = entry
        document = {
            "app": app.name,
            "state": state.value,
            "live": state not in _FINAL,
            "ready": self._ready(verdict),
            "started": self._started(),
            "components": components,
        }
        body = json.dumps(document, indent=2 if verbose else None) + "\n"
        return HTTPStatus.OK, _JSON, body.encode("utf-8")


class HealthServer:
    """Serves an app's liveness, readiness and startup probes over HTTP.

    ``start()`` binds and listens (``SO_REUSEADDR``, backlog 1024) and returns
    once connections are accepted; ``close()`` closes the listener (new
    probes are refused at once) and every connection, within milliseconds.
    ``close()`` is idempotent and safe from any thread, before ``start()``
    too, and during it (the start aborts); a closed server does not restart.
    Used as a context manager it starts on entry, raising what ``start()``
    raises, and closes on exit.

    The answers read the app without taking any lock its runner holds.
    ``/readyz`` and ``/status`` evaluate ``app.ready`` (it calls the
    components' ``ready()``, treating an exception as "not ready"; so is a
    ``BaseException`` that escapes it, such as ``SystemExit``, logged with its
    traceback) at most once per request, on a thread of their own: requests
    that arrive while an
    evaluation runs share its answer. One that has not answered within
    ``ready_timeout`` makes ``/readyz`` 503 (the body says why) and
    ``/status`` say ``"ready": false``, at once and without a second
    evaluation, until it returns. Once shutdown is requested they say "not
    ready" without calling anything.

    ``/livez`` stays 200 during the whole shutdown, draining and stopping
    included: a failing liveness probe makes the kubelet kill the container,
    which would cut a graceful shutdown short. Only an app that has finished
    is reported dead. ``/startupz`` stays 200 once the app has been seen
    running (by a probe, or at the shutdown request).

    Args:
        app: the app whose health is served (an `App`, or any `AppView`).
        host: the address to bind; ``"0.0.0.0"`` (or ``"::"``) to be
            reachable from outside the pod or host, loopback by default.
        port: the port; 0 picks a free one (see `port` after `start`).
        request_timeout: seconds a client has to send its request head
            (2 by default; a probe sends it in one packet), then ``408``.
        ready_timeout: seconds the components' ``ready()`` have to answer
            (1 by default), then ``/readyz`` is ``503`` saying so; a probe
            whose ``timeoutSeconds`` is above it gets that answer rather
            than a timeout (both count as "not ready").
        max_connections: connections open at once (256 by default); a new
            one evicts the oldest whose head is incomplete, else the oldest
            answered one, else is refused with ``503``; at most half of them
            wait for ``ready()``.

    Example::

        with HealthServer(app, "127.0.0.1", 0) as health:
            url = f"http://127.0.0.1:{health.port}/readyz"
            ...  # 200 while app.ready, else 503

    Usually you only write ``App(..., health=("0.0.0.0", 8081))`` and the
    runner does this. In the Kubernetes container spec::

        ports:
          - {name: health, containerPort: 8081}
        startupProbe:           # until the app first reached RUNNING
          httpGet: {path: /startupz, port: health}
          periodSeconds: 2
          failureThreshold: 30  # allows 60 s to start
        livenessProbe:          # restart a wedged process, not a draining one
          httpGet: {path: /livez, port: health}
          periodSeconds: 10
          failureThreshold: 3
        readinessProbe:         # 503 from the instant SIGTERM arrives
          httpGet: {path: /readyz, port: health}
          periodSeconds: 2
          failureThreshold: 1   # keep periodSeconds * failureThreshold < drain_delay

    and in the pod spec, ``terminationGracePeriodSeconds`` above the app's
    ``shutdown_timeout``.

    Added in 0.1.
    """

    def __init__(
        self,
        app: AppView,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        ready_timeout: float = READY_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(
                f"port must be an int from 0 to 65535 (0: any free port), got {port!r}"
            )
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ValueError(
                f"max_connections must be a positive int (default {MAX_CONNECTIONS}), "
                f"got {max_connections!r}"
            )
        self.app = app
        self.request_timeout = _seconds(request_timeout, "request_timeout")
        self.ready_timeout = _seconds(ready_timeout, "ready_timeout")
        self.max_connections = max_connections
        # Requests waiting for ready() hold at most half the connections, so that
        # a flood of them leaves room for /livez to evict answered ones.
        self._max_waiting = max(1, max_connections // 2)
        self._address: tuple[str, int] = (host, port)
        self._state = _ServerState.NEW
        # Guards _state and _starter. Re-entrant: close() may interrupt start()
        # on the same thread, from a signal handler.
        self._lock = threading.RLock()
        self._start_ended = threading.Condition(self._lock)
        self._starter: int | None = None  # the thread inside start(), while STARTING
        self._wake_lock = threading.Lock()  # guards _wake_w: woken from any thread, closed once
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        # Every answer comes from here; an evaluation's end wakes the selector.
        self._answers = HealthAnswers(app, ready_timeout=self.ready_timeout, wake=self._wake)
        # The selector thread's alone. Each phase's connections in the order
        # they entered it, which is also the order of their deadlines (a
        # phase's deadline is a fixed time after a moment that only moves on).
        self._selector: selectors.BaseSelector | None = None
        self._phases: dict[_Phase, dict[_Conn, None]] = {
            phase: {} for phase in (_Phase.READING, _Phase.WAITING, _Phase.ANSWERING)
        }
        self._accepting_again: float | None = None  # when accepting resumes after a pause
        self._cap_warnings = _Throttle(_LOG_EVERY)
        self._accept_errors = _Throttle(_LOG_EVERY)
        self._app_errors = _Throttle(_LOG_EVERY)

    def __repr__(self) -> str:
        host, port = self._address
        return f"<HealthServer app={self.app.name!r} {host}:{port} {self._state.value}>"

    # -- public ------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` bound once started (the requested ones before)."""
        return self._address

    @property
    def port(self) -> int:
        """The port; once started, the one the system picked for port 0."""
        return self._address[1]

    def start(self) -> None:
        """Bind, listen, and begin answering in a daemon thread.

        Raises:
            OSError: the address cannot be bound (in use, not local, no such
                host); the server may be started again.
            RuntimeError: the server is starting, serving or closed already,
                or `close` was called while it started.
        """
        with self._lock:
            self._check_can_start()
            self._state = _ServerState.STARTING
            self._starter = threading.get_ident()
        try:
            try:
                self._launch()
            except BaseException:
                self._shut()
                with self._lock:
                    if self._state is _ServerState.STARTING:
                        self._state = _ServerState.NEW
                raise
            with self._lock:
                aborted = self._state is _ServerState.CLOSED
                if not aborted:
                    self._state = _ServerState.SERVING
            if aborted:
                self._shut()
                raise RuntimeError(
                    f"{self!r} was closed while it started; a HealthServer cannot be "
                    f"restarted, create a new one"
                )
        finally:
            with self._lock:
                self._starter = None
                self._start_ended.notify_all()
        _log.info("health endpoint listening", app=self.app.name, address=list(self._address))

    def _check_can_start(self) -> None:
        if self._state is _ServerState.STARTING:
            raise RuntimeError(f"{self!r} is starting in another thread; start() it only once")
        if self._state is _ServerState.SERVING:
            raise RuntimeError(f"{self!r} is already serving; start() it only once")
        if self._state is _ServerState.CLOSED:
            raise RuntimeError(
                f"{self!r} was closed; a HealthServer cannot be restarted, create a new one"
            )

    def _launch(self) -> None:
        """Bind, and start the threads (while STARTING; `_shut` undoes any part of it)."""
        listener = self._bind()
        self._listener = listener
        bound = listener.getsockname()
        self._address = (str(bound[0]), int(bound[1]))
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        name = f"lifecycle-health:{self.port}"
        wake_r = self._wake_r
        # It runs no user code (ready() runs on the answers' own thread).
        self._thread = threading.Thread(
            target=helper_thread(lambda: self._serve(listener, wake_r)), name=name, daemon=True
        )
        self._answers.start(name=f"{name}:ready")
        self._thread.start()

    def close(self) -> None:
        """Close the listener and every connection; return within milliseconds.

        Wakes the selector thread, which closes every socket it holds, and
        waits for it (at most a second, were the process starved of CPU). A
        ``ready()`` that is stuck is not waited for: its thread ends when it
        returns. Idempotent; safe from any thread, and before `start`. During
        a `start` in another thread it makes that start abort and waits for
        it (at most a second, too); called on the thread inside `start` (from
        a signal handler) it returns at once, and `start` aborts when resumed.
        """
        with self._lock:
            state, self._state = self._state, _ServerState.CLOSED
            ended = True
            if state is _ServerState.STARTING and self._starter != threading.get_ident():
                ended = self._start_ended.wait_for(lambda: self._starter is None, _JOIN_TIMEOUT)
        if not ended:
            _log.warning(
                f"health endpoint: start() did not end within {_JOIN_TIMEOUT:g}s of close(); "
                f"it closes what it opened when it does",
                app=self.app.name,
            )
        if state is _ServerState.SERVING:
            self._shut()  # else nothing was started, or the aborted start() shuts it

    def _shut(self) -> None:
        """Release what `_launch` took, any part of it. Once per start, by whoever ends it."""
        self._answers.close()
        self._wake()
        thread = self._thread
        if thread is not None and thread.ident is not None:  # started
            if thread is not threading.current_thread():
                thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                _log.warning(
                    f"health endpoint: its thread did not end within {_JOIN_TIMEOUT:g}s of "
                    f"close(); it closes its connections when it gets to run",
                    app=self.app.name,
                )
        elif self._wake_r is not None:
            self._wake_r.close()  # else the selector thread closes it
        self._wake_r = None
        with self._wake_lock:
            if self._wake_w is not None:
                self._wake_w.close()
                self._wake_w = None
        listener, self._listener = self._listener, None
        if listener is not None:
            # Normally closed by the selector thread already. Closing the socket
            # (not just no longer accepting) makes the kernel refuse new probes.
            listener.close()
            _log.info("health endpoint closed", app=self.app.name, address=list(self._address))

    def __enter__(self) -> HealthServer:
        """`start`, raising what it raises: a server is entered once, as it starts once."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the probes ----------------------------------------------------------

    def _answer(self, conn: _Conn, head: bytes, now: float) -> bytes | None:
        """The response to a complete head; None when it waits for ``ready()`` (parked).

        Raises:
            _RequestError: the head is malformed.
        """
        method, path, query = _parse(head)
        head_only = method == "HEAD"

        def admit() -> bool:
            # Requests waiting for ready() hold at most half the connections.
            if conn.may_wait and len(self._phases[_Phase.WAITING]) < self._max_waiting:
                return True
            if conn.may_wait:
                self._cap_warnings.log(
                    "warning",
                    f"health endpoint: {self._max_waiting} requests wait for ready() already "
                    f"(half the connection cap); answering more with 503 "
                    f"(Retry-After: {RETRY_AFTER})",
                    app=self.app.name,
                )
            return False

        got = self._answers.begin(method, path, query, now=now, admit=admit)
        if isinstance(got, Answer):
            return _wire(got, head_only=head_only)
        conn.pending = got
        conn.head_only = head_only
        self._move(conn, _Phase.WAITING, got.overdue)
        self._watch(conn, 0)
        return None

    # -- serving: one selector thread for every connection ---------------------

    def _bind(self) -> socket.socket:
        host, port = self._address
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_w is not None:
                # BlockingIOError: a wake-up is pending already.
                with contextlib.suppress(OSError):
                    self._wake_w.send(b"x")

    def _open(self) -> int:
        """How many connections are open (read from any thread: approximate)."""
        return sum(len(conns) for conns in self._phases.values())

    def _serve(self, listener: socket.socket, wake: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        self._selector = selector
        try:
            selector.register(wake, selectors.EVENT_READ, _WAKE)
            selector.register(listener, selectors.EVENT_READ, _LISTEN)
            while self._state is not _ServerState.CLOSED:  # started while STARTING
                self._turn(selector, listener, wake)
        except Exception:  # noqa: BLE001 - logged; the endpoint closes rather than hang
            # A fault in this module, not in a request (each is handled on its
            # own); a closed endpoint makes the probes fail, as they should.
            _log.error("health endpoint stopped on an internal error", exc_info=True)
        finally:
            for conns in self._phases.values():
                for conn in list(conns):
                    self._close(conn)
            selector.close()
            listener.close()
            wake.close()

    def _turn(
        self, selector: selectors.BaseSelector, listener: socket.socket, wake: socket.socket
    ) -> None:
        due = self._next_deadline()
        timeout = None if due is None else max(0.0, due - time.monotonic())
        events = selector.select(timeout)
        now = time.monotonic()
        for key, mask in events:
            if key.data is _WAKE:
                with contextlib.suppress(OSError):
                    wake.recv(_RECV_SIZE)
            elif key.data is _LISTEN:
                self._accept(listener, now)
            else:
                self._on_event(key.data, mask, now)
        self._deliver(now)
        self._expire(listener, now)

    def _next_deadline(self) -> float | None:
        deadlines = [next(iter(conns)).deadline for conns in self._phases.values() if conns]
        if self._accepting_again is not None:
            deadlines.append(self._accepting_again)
        return min(deadlines, default=None)

    def _accept(self, listener: socket.socket, now: float) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                # Out of file descriptors or similar: pause rather than spin.
                self._accept_errors.log(
                    "warning",
                    f"health endpoint cannot accept connections ({error}); "
                    f"retrying every {_ACCEPT_PAUSE:g}s (raise the open-files limit)",
                    app=self.app.name,
                )
                self._accepting_again = now + _ACCEPT_PAUSE
                with contextlib.suppress(KeyError, ValueError):
                    self._selector_of().unregister(listener)
                return
            self._admit(sock, now)

    def _admit(self, sock: socket.socket, now: float) -> None:
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            return
        # Invariant: no connection whose head is complete is ever evicted. One
        # admitted over the cap (every open one is owed an answer) is let go in
        # this same turn: answered if its head is there and needs no ready(),
        # else refused with a 503.
        over = self._open() >= self.max_connections and not self._evict()
        conn = _Conn(sock, deadline=now + self.request_timeout, may_wait=not over)
        self._phases[_Phase.READING][conn] = None
        self._watch(conn, selectors.EVENT_READ)
        # A probe usually sends its head with the handshake: read it right away.
        self._on_event(conn, selectors.EVENT_READ, now)
        if over:
            if conn.phase is _Phase.READING:
                self._reply(conn, _error_response(HTTPStatus.SERVICE_UNAVAILABLE), now)
            self._let_go(conn)

    def _evict(self) -> bool:
        """Let go of the oldest incomplete connection, else of the oldest answered one.

        False when there is none: every open connection is owed an answer.
        """
        victim = next(iter(self._phases[_Phase.READING]), None)
        which = "incomplete"
        if victim is None:
            answering = self._phases[_Phase.ANSWERING]
            victim = next((conn for conn in answering if conn.out is None), None)
            which = "answered"
        if victim is None:
            self._cap_warnings.log(
                "warning",
                f"health endpoint at its connection cap ({self.max_connections}) and every "
                f"connection is owed an answer; refusing new ones with 503 "
                f"(Retry-After: {RETRY_AFTER}) unless they need no ready()",
                app=self.app.name,
            )
            return False
        self._cap_warnings.log(
            "warning",
            f"health endpoint at its connection cap ({self.max_connections}); "
            f"evicting the oldest {which} connection",
            app=self.app.name,
        )
        self._let_go(victim)
        return True

    def _let_go(self, conn: _Conn) -> None:
        """Close ``conn`` now, first reading what it sent (bounded).

        Closing with unread input makes the kernel send a reset, which can
        destroy a response the client has not read yet.
        """
        if conn.phase is _Phase.CLOSED:
            return
        with contextlib.suppress(OSError):
            for _ in range(_LINGER_BYTES // _RECV_SIZE):
                if not conn.sock.recv(_RECV_SIZE):
                    break
        self._close(conn)

    def _on_event(self, conn: _Conn, mask: int, now: float) -> None:
        if conn.phase is _Phase.CLOSED:
            return  # evicted earlier in this turn
        try:
            if conn.phase is _Phase.READING:
                self._read(conn, now)
            elif conn.out is not None:
                self._send(conn)
            else:
                self._drain(conn)
        except OSError:
            self._close(conn)  # reset or gone: nobody left to answer
        except Exception:  # noqa: BLE001 - what a client sends never stops the server
            _log.debug("health endpoint dropped a connection on an error", exc_info=True)
            self._close(conn)

    def _read(self, conn: _Conn, now: float) -> None:
        try:
            chunk = conn.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if chunk:
            self._scan(conn, chunk, now)
        elif conn.head:
            self._reply(conn, _error_response(HTTPStatus.BAD_REQUEST), now)  # cut short
        else:
            self._close(conn)  # closed without asking anything

    def _scan(self, conn: _Conn, chunk: bytes, now: float) -> None:
        try:
            head = conn.head.feed(chunk)
            if head is None:
                return
            response = self._answer(conn, head, now)
        except _RequestError as error:
            response = _error_response(error.status)
        except Exception:  # noqa: BLE001 - a probe must never take the server down
            _log_app_error(self._app_errors, self.app.name)
            response = _error_response(HTTPStatus.INTERNAL_SERVER_ERROR)
        if response is not None:
            self._reply(conn, response, now)

    def _reply(self, conn: _Conn, response: bytes, now: float) -> None:
        conn.head.clear()
        conn.pending = None
        conn.out = memoryview(response)
        self._move(conn, _Phase.ANSWERING, now + WRITE_TIMEOUT)
        try:
            self._send(conn)
        except OSError:
            self._close(conn)

    def _send(self, conn: _Conn) -> None:
        assert conn.out is not None
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        conn.out = conn.out[sent:]
        if conn.out:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        conn.out = None
        # Half-close, then drain what the client still sends: closing a socket
        # with unread input makes the kernel send a reset, which can destroy
        # the response before the client reads it (e.g. after a 431).
        conn.sock.shutdown(socket.SHUT_WR)
        self._watch(conn, selectors.EVENT_READ)

    def _drain(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        conn.drained += len(data)
        if not data or conn.drained >= _LINGER_BYTES:
            self._close(conn)

    def _deliver(self, now: float) -> None:
        """Answer the requests whose evaluation has ended."""
        waiting = self._phases[_Phase.WAITING]
        while waiting:
            # In the order of their evaluations: the first still owed ends the turn.
            conn = next(iter(waiting))
            assert conn.pending is not None
            answer = self._answers.finish(conn.pending, now)
            if answer is None:
                return
            self._reply(conn, _wire(answer, head_only=conn.head_only), now)

    def _expire(self, listener: socket.socket, now: float) -> None:
        """Act on every deadline that has passed, oldest first in each phase."""
        reading = self._phases[_Phase.READING]
        while reading and (conn := next(iter(reading))).deadline <= now:
            self._reply(conn, _error_response(HTTPStatus.REQUEST_TIMEOUT), now)
        waiting = self._phases[_Phase.WAITING]
        while waiting and (conn := next(iter(waiting))).deadline <= now:
            assert conn.pending is not None
            answer = self._answers.finish(conn.pending, now)  # overdue: never None
            assert answer is not None
            self._reply(conn, _wire(answer, head_only=conn.head_only), now)
        answering = self._phases[_Phase.ANSWERING]
        while answering and (conn := next(iter(answering))).deadline <= now:
            self._close(conn)  # it does not read, or does not close
        if self._accepting_again is not None and self._accepting_again <= now:
            self._accepting_again = None
            self._selector_of().register(listener, selectors.EVENT_READ, _LISTEN)

    def _selector_of(self) -> selectors.BaseSelector:
        assert self._selector is not None
        return self._selector

    def _move(self, conn: _Conn, phase: _Phase, deadline: float) -> None:
        del self._phases[conn.phase][conn]
        conn.phase, conn.deadline = phase, deadline
        self._phases[phase][conn] = None

    def _watch(self, conn: _Conn, events: int) -> None:
        """Register ``conn`` for ``events`` only (0: for none)."""
        if events == conn.events:
            return
        selector = self._selector_of()
        if not conn.events:
            selector.register(conn.sock, events, conn)
        elif not events:
            selector.unregister(conn.sock)
        else:
            selector.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        if conn.phase is _Phase.CLOSED:
            return
        del self._phases[conn.phase][conn]
        conn.phase = _Phase.CLOSED
        if conn.events:
            with contextlib.suppress(KeyError, ValueError):
                self._selector_of().unregister(conn.sock)
            conn.events = 0
        conn.sock.close()


def _seconds(value: object, name: str) -> float:
    """A timeout argument: a positive, finite number of seconds."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _probe(
    name: str,
    ok: bool,
    checks: list[tuple[bool, str]],
    verbose: bool,
    *,
    failure: str,
) -> tuple[HTTPStatus, str, bytes]:
    status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
    if verbose:
        lines = [f"[{'+' if passed else '-'}]{what}" for passed, what in checks]
        lines.append(f"{name} check {'passed' if ok else 'failed'}")
        text = "\n".join(lines)
    else:
        text = "ok" if ok else failure
    return status, _TEXT, (text + "\n").encode("utf-8")


def _parse(head: bytes) -> tuple[str, str, str]:
    """``(method, path, query)`` of a request head.

    Raises:
        _RequestError: malformed (400) or an HTTP version other than 1.x (505).
    """
    lines = head.split(b"\n")
    request_line = lines[0].removesuffix(b"\r")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        raise _RequestError(HTTPStatus.BAD_REQUEST)
    for line in lines[1:]:
        if _HEADER_LINE.fullmatch(line.removesuffix(b"\r")) is None:
            raise _RequestError(HTTPStatus.BAD_REQUEST)
    if match.group(3) != b"1":
        raise _RequestError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
    method = match.group(1).decode("ascii")
    target = match.group(2).decode("ascii")
    if target.startswith("/"):
        path, _, query = target.partition("?")
    elif target.startswith(("http://", "https://")):
        try:
            parts = urlsplit(target)
        except ValueError:
            raise _RequestError(HTTPStatus.BAD_REQUEST) from None
        path, query = parts.path or "/", parts.query
    else:
        raise _RequestError(HTTPStatus.BAD_REQUEST)
    return method, path, query


def error_answer(status: HTTPStatus) -> Answer:
    """The answer with an error ``status``: a one-line body, no internals.

    With ``Allow`` for 405 and ``Retry-After`` for 503 (a refusal).

    Example::

        assert error_answer(HTTPStatus.NOT_FOUND).status == 404
    """
    extra: tuple[tuple[str, str], ...] = ()
    if status is HTTPStatus.METHOD_NOT_ALLOWED:
        extra = (("Allow", ", ".join(_ALLOWED)),)
    elif status is HTTPStatus.SERVICE_UNAVAILABLE:  # a refusal: the probes' 503s are not errors
        extra = (("Retry-After", str(RETRY_AFTER)),)
    body = f"{status.value} {status.phrase.lower()}\n".encode("ascii")
    return _answer_of(status, _TEXT, body, extra)


def _answer_of(
    status: HTTPStatus, content_type: str, body: bytes, extra: tuple[tuple[str, str], ...] = ()
) -> Answer:
    headers = (
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        *extra,
    )
    return Answer(status, headers, body)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _error_response(status: HTTPStatus, *, head_only: bool = False) -> bytes:
    return _wire(error_answer(status), head_only=head_only)


def _wire(answer: Answer, *, head_only: bool = False) -> bytes:
    """One complete response, to be written in one send (no Nagle delay between parts)."""
    status, headers, body = answer
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", f"{headers[0][0]}: {headers[0][1]}"]
    lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in headers[1:])
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body
