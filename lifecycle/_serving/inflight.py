"""In-flight tracking and the request scope: what is in progress, and which request this is.

`InFlight`: any server can use it: ``enter`` when a request begins, ``leave``
when it ends; at shutdown ``close`` (new work is refused), then ``wait_idle``
under a token's deadline, and when the deadline hits, ``running()`` names what
was still going -- so the log says *which* requests were cut, not just how
many. Waiters are woken by the events that can end their wait (a leave, a
unit marked long-lived, the token's cancellation), never by polling.

The request scope: every server kind (threaded or asyncio, server or
middleware) makes the request it serves findable through one context
variable, so that `mark_long_lived()` works in any handler, sync or async.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from contextvars import Token as ContextToken
from typing import Any, Protocol

from .._core.errors import LifecycleError
from .._core.tokens import (
    DEADLINE_EXCEEDED,
    CancelSource,
    CancelToken,
    DeadlineTimer,
    _current,
    cancel_in_background,
    current_token,
    on_cancel_inline,
)
from .stopseq import request_deadline

__all__ = [
    "InFlight",
    "Refused",
    "RequestScope",
    "RequestTokens",
    "Slot",
    "Ticket",
    "bind_scope",
    "current_scope",
    "cut_deadline",
    "describe_work",
    "enter_scope",
    "exit_scope",
    "mark_long_lived",
    "note_request",
    "noted_request",
]

_ids = itertools.count(1)


class Refused(LifecycleError):  # noqa: N818 - reads as "the work was refused"
    """New work was refused: the tracker is closed (the server is shutting down).

    Attributes:
        tracker: the name of the `InFlight` that refused.

    Example:
        >>> tracker = lifecycle.InFlight("api")
        >>> tracker.close()
        >>> try:
        ...     with tracker.track("GET /"):
        ...         pass
        ... except lifecycle.Refused as refused:
        ...     print(refused.tracker)
        api
    """

    def __init__(self, tracker: str) -> None:
        self.tracker = tracker
        super().__init__(
            f"{tracker!r} is closed and refuses new work: the server is shutting down; "
            f"retry on another replica"
        )


class Ticket:
    """One unit of work in progress.

    A plain slotted class rather than an attrs one: one is made per unit of
    work entered with `InFlight.enter`, so its construction is on the hot
    path of whoever tracks with it.

    Attributes:
        label: what it is (``"GET /orders"``), for the report of what was cut.
        began: when it entered (the tracker's clock).
        long_lived: a stream, websocket or long poll: asked to end (by
            cancelling its token) instead of being waited for.
        id: unique per process.

    Example::

        ticket = tracker.enter("GET /events", long_lived=True)
        try:
            stream_events()
        finally:
            tracker.leave(ticket)
    """

    __slots__ = ("began", "id", "label", "long_lived")

    active = True
    """Whether the unit is in progress: always, for a ticket `InFlight.enter` made;
    only between `InFlight.begin` and `InFlight.end`, for a `Slot`."""

    def __init__(self, label: str, began: float, long_lived: bool = False) -> None:
        self.label = label
        self.began = began
        self.long_lived = long_lived
        self.id = next(_ids)

    def __repr__(self) -> str:
        kind = " long-lived" if self.long_lived else ""
        return f"<Ticket #{self.id} {self.label!r}{kind} began={self.began:.3f}>"


class Slot(Ticket):
    """A ticket reused by the successive units of one connection: nothing is made per request.

    Opened once per connection (`InFlight.open_slot`), it is in progress only
    between `InFlight.begin` and `InFlight.end`, and leaves the tracker with
    `InFlight.close_slot`. A server's hot path then writes a few attributes
    per request instead of building a ticket and taking a lock twice.

    Args:
        describe: makes the label of the unit in progress when it is read
            (for a log or a cut), so that no label is built per request.

    Attributes:
        uses: how many units it carried so far.

    Example::

        slot = tracker.open_slot()          # when the connection is accepted
        while request := read_request():
            tracker.begin(slot, f"GET {request.path}")
            try:
                serve(request)
            finally:
                tracker.end(slot)
        tracker.close_slot(slot)            # when the connection ends
    """

    __slots__ = ("_describe", "_text", "active", "uses")

    def __init__(self, describe: Callable[[], str] | None = None) -> None:
        self._describe = describe
        super().__init__("", 0.0)
        self.active = False
        self.uses = 0

    @property
    def label(self) -> str:
        """What the unit in progress is; made only when read, by ``describe`` if given."""
        describe = self._describe
        return describe() if describe is not None else self._text

    @label.setter
    def label(self, value: str) -> None:
        self._text = value


class InFlight:
    """Tracks work in progress for graceful shutdown. Thread-safe; asyncio-friendly.

    Args:
        name: for messages and logs (``"http:8080 requests"``).
        clock: a ``time.monotonic``-like function (tests pass a fake one).

    Example::

        tracker = lifecycle.InFlight("jobs")

        def handle(job):
            with tracker.track(f"job {job.id}"):
                process(job)

        def stop(token):
            tracker.close()                    # refuse new jobs
            if not tracker.wait_idle(token):   # until idle or the deadline
                log.warning("cut", running=tracker.describe())

    Added in 0.1.
    """

    def __init__(
        self, name: str = "requests", *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        # An instance attribute: called as ``self.clock()``, CPython 3.11 looks
        # it up its unspecialised way each time (a method call on an instance
        # attribute); the request paths read it into a local, then call it.
        self.clock = clock
        self._lock = threading.Lock()
        # Tickets entered and slots opened, in progress or (slots) not.
        self._tickets: dict[int, Ticket] = {}
        self._closed = False
        self._idle = threading.Condition(self._lock)
        self._idle_callbacks: list[Callable[[], None]] = []
        # Invariant: a waiter counts itself in _waiters (or registers its
        # callback) *before* it looks at the tickets, and `end` clears
        # ``active`` *before* it looks at _waiters: so an `end` without the
        # lock either is seen by the waiter's look or sees the waiter.
        self._waiters = 0  # threads blocked in wait_idle
        self._entered = 0  # tickets entered, plus the uses of slots closed
        self.refused = 0
        """How many were refused because the tracker was closed."""
        self.last_arrival: float | None = None
        """``clock()`` value of the last unit entered, begun or slot opened; None before.

        A plain attribute stored on the hot path (the clock read it already
        makes): an adaptive drain (`lifecycle.Drain`) reads it."""

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<InFlight {self.name!r} {state} in_flight={self.count}>"

    @property
    def closed(self) -> bool:
        """True once `close` was called: `enter` refuses."""
        return self._closed

    @property
    def count(self) -> int:
        """How many units are in progress now."""
        with self._lock:
            return sum(1 for t in self._tickets.values() if t.active)

    @property
    def total(self) -> int:
        """How many units entered (or began in a slot) since creation."""
        with self._lock:
            return self._entered + sum(
                t.uses for t in self._tickets.values() if isinstance(t, Slot)
            )

    def enter(self, label: str = "", *, long_lived: bool = False) -> Ticket | None:
        """Begin a unit of work; None if the tracker is closed (refuse it)."""
        with self._lock:
            if self._closed:
                self.refused += 1
                return None
            ticket = Ticket(label, at := self.clock(), long_lived)
            self.last_arrival = at
            self._tickets[ticket.id] = ticket
            self._entered += 1
            return ticket

    def leave(self, ticket: Ticket) -> None:
        """End a unit of work (idempotent)."""
        with self._lock:
            if self._tickets.pop(ticket.id, None) is None:
                return
            if not self._waiters and not self._idle_callbacks:
                return  # the hot path: nobody waits
            # A waiter may wait for "only long-lived left", which this leave
            # can make true while tickets remain: wake every waiter to re-check.
            self._idle.notify_all()
            callbacks, self._idle_callbacks = self._idle_callbacks, []
        for callback in callbacks:
            callback()

    def open_slot(
        self, describe: Callable[[], str] | None = None, *, slot: Slot | None = None
    ) -> Slot | None:
        """A `Slot` for the units of one connection, not in progress yet; None if closed.

        ``slot`` registers a `Slot` made by the caller (of a subclass that
        carries the server's own state) instead of making one.
        """
        with self._lock:
            if self._closed:
                self.refused += 1
                return None
            if slot is None:
                slot = Slot(describe)
            self._tickets[slot.id] = slot
            self.last_arrival = self.clock()  # a connection arrived
            return slot

    def begin(self, slot: Slot, label: str | None = None) -> bool:
        """Begin a unit in ``slot`` (the hot path: no lock, nothing made); False if closed.

        Without a ``label``, the slot's ``describe`` names the unit when asked.
        """
        if self._closed:
            with self._lock:
                self.refused += 1
            return False
        if label is not None:
            slot.label = label
        clock = self.clock  # read, then called: see the note on `clock`
        self.last_arrival = slot.began = clock()
        slot.long_lived = False
        slot.uses += 1
        slot.active = True
        return True

    def end(self, slot: Slot) -> None:
        """End the unit in ``slot`` (the hot path: no lock unless someone waits)."""
        slot.active = False
        if self._waiters or self._idle_callbacks:
            self._wake_all()

    def close_slot(self, slot: Slot) -> None:
        """The connection ended: ``slot`` leaves the tracker (idempotent)."""
        with self._lock:
            if self._tickets.pop(slot.id, None) is not None:
                self._entered += slot.uses
        self.end(slot)

    def mark_long_lived(self, ticket: Ticket) -> None:
        """Turn ``ticket`` long-lived and wake the waiters that ignore long-lived work.

        Example::

            ticket = tracker.enter("GET /events")
            tracker.mark_long_lived(ticket)     # a stream: stop asks it to end
        """
        with self._lock:
            ticket.long_lived = True
            if not self._waiters and not self._idle_callbacks:
                return
            self._idle.notify_all()
            callbacks, self._idle_callbacks = self._idle_callbacks, []
        for callback in callbacks:
            callback()

    @contextlib.contextmanager
    def track(self, label: str = "", *, long_lived: bool = False) -> Iterator[Ticket]:
        """``with tracker.track("GET /"):`` — enter and leave around a block.

        Raises:
            Refused: the tracker is closed.
        """
        ticket = self.enter(label, long_lived=long_lived)
        if ticket is None:
            raise Refused(self.name)
        try:
            yield ticket
        finally:
            self.leave(ticket)

    def close(self) -> None:
        """Refuse new work from now on. Work in progress goes on."""
        with self._lock:
            self._closed = True

    def running(self) -> list[Ticket]:
        """The units in progress, oldest first."""
        with self._lock:
            return sorted((t for t in self._tickets.values() if t.active), key=lambda t: t.began)

    def counts(self) -> tuple[int, int]:
        """``(ordinary, long_lived)``: how many units of each kind are in progress."""
        ordinary = long_lived = 0
        with self._lock:
            for t in self._tickets.values():
                if t.active:
                    if t.long_lived:
                        long_lived += 1
                    else:
                        ordinary += 1
        return ordinary, long_lived

    def describe(self, limit: int | None = 20) -> list[str]:
        """``["GET /slow (12.3s)", ...]``: what is in progress, oldest first, for logs.

        With a ``limit``, the lines past it are summed up in a last
        ``"... and N more"`` line; ``limit=None`` lists every unit (what a stop
        reports as cut).
        """
        tickets = self.running()
        shown = tickets if limit is None else tickets[:limit]
        lines = describe_work(shown, self.clock())
        if len(tickets) > len(shown):
            lines.append(f"... and {len(tickets) - len(shown)} more")
        return lines

    def wait_idle(
        self,
        token: CancelToken | None = None,
        *,
        timeout: float | None = None,
        ignore_long_lived: bool = False,
    ) -> bool:
        """Block until nothing is in progress, the token is cancelled, or ``timeout``.

        With ``ignore_long_lived`` it returns as soon as only long-lived units
        remain (so the caller can ask them to end). Returns True if idle
        (in that sense) when it returns.

        No polling: a waiter is woken by what can end its wait -- a `leave`,
        a `mark_long_lived`, `notify`, the token's cancellation or the end of
        its time.
        """
        end = self._end(token, timeout)
        detach = _on_cancel_inline(token, self._wake_all) if token is not None else None
        try:
            with self._lock:
                self._waiters += 1
                try:
                    while not self._is_idle(ignore_long_lived=ignore_long_lived):
                        if token is not None and token.cancelled:
                            return False
                        if end is None:
                            self._idle.wait()
                            continue
                        remaining = end - self.clock()
                        if remaining <= 0:
                            return False
                        self._idle.wait(remaining)
                    return True
                finally:
                    self._waiters -= 1
        finally:
            if detach is not None:
                detach()

    async def wait_idle_async(
        self,
        token: CancelToken | None = None,
        *,
        timeout: float | None = None,
        ignore_long_lived: bool = False,
    ) -> bool:
        """The asyncio twin of `wait_idle`: no thread is blocked while waiting, no polling."""
        loop = asyncio.get_running_loop()
        end = self._end(token, timeout)
        while True:
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(waiter: asyncio.Future[None] = waiter) -> None:
                with contextlib.suppress(RuntimeError):  # loop closed: nobody waits
                    loop.call_soon_threadsafe(_resolve, waiter)

            # Registered before the look (the class invariant): a leave or an
            # end from another thread cannot fall between the two.
            with self._lock:
                self._idle_callbacks.append(wake)
                if self._is_idle(ignore_long_lived=ignore_long_lived):
                    self._idle_callbacks.remove(wake)
                    return True
            detach = _on_cancel_inline(token, wake) if token is not None else None
            try:
                if token is not None and token.cancelled:
                    return False
                remaining = None if end is None else end - self.clock()
                if remaining is not None and remaining <= 0:
                    return False
                try:
                    async with asyncio.timeout(remaining):
                        await waiter
                except TimeoutError:
                    return self._is_idle(ignore_long_lived=ignore_long_lived)
            finally:
                if detach is not None:
                    detach()
                with self._lock, contextlib.suppress(ValueError):
                    self._idle_callbacks.remove(wake)

    def _end(self, token: CancelToken | None, timeout: float | None) -> float | None:
        end = None if timeout is None else self.clock() + timeout
        if token is not None and token.deadline is not None:
            end = token.deadline if end is None else min(end, token.deadline)
        return end

    def _is_idle(self, *, ignore_long_lived: bool) -> bool:
        if ignore_long_lived:
            return all(t.long_lived or not t.active for t in self._tickets.values())
        return not any(t.active for t in self._tickets.values())

    def _wake_all(self) -> None:
        with self._lock:
            self._idle.notify_all()
            callbacks, self._idle_callbacks = self._idle_callbacks, []
        for callback in callbacks:
            callback()

    def notify(self) -> None:
        """Wake waiters to re-check (after changing a ticket's ``long_lived`` by hand, say)."""
        self._wake_all()


def _resolve(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Work(Protocol):
    """Anything in progress that a stop may have to name: a label and a start time."""

    @property
    def label(self) -> str: ...

    @property
    def began(self) -> float: ...


def describe_work(work: Iterable[_Work], now: float) -> list[str]:
    """``["GET /slow (12.3s)", ...]``, oldest first: the one format of what was cut.

    Every server kind names the requests it cut with these lines, in its log
    and in `DeadlineExceeded.cut`. A unit without a label is named by its id
    when it has one.
    """
    return [f"{_name(w)} ({now - w.began:.1f}s)" for w in sorted(work, key=_began)]


def _name(work: _Work) -> str:
    return work.label or f"#{getattr(work, 'id', '?')}"


def _began(work: _Work) -> float:
    return work.began


def cut_deadline(
    shutdown_deadline: float | None,
    stop_deadline: float | None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> float | None:
    """The deadline of work begun now: a margin before it would be cut, the earlier one.

    ``stop_deadline`` is what the stop sequence gives requests begun during
    the stop (`Drain.requests_by`: a margin before its cut). Before the stop
    began, only the shutdown deadline is known: the stop ends by it at the
    latest, so the request deadline is `request_deadline` of a stop that ends
    at the shutdown deadline. What every server and middleware gives a
    request that starts once the shutdown was requested
    (``CancelSource(parent, deadline=cut_deadline(...))``), so that a handler
    that works until ``current_token().deadline`` still answers before the cut.

    Example::

        # 30 s of shutdown left: requests are done 0.2 s before it, 0.1 s before the cut.
        assert cut_deadline(130.0, None, clock=lambda: 100.0) == 129.8
    """
    if shutdown_deadline is not None:
        shutdown_deadline = request_deadline(clock(), shutdown_deadline)
    if stop_deadline is None:
        return shutdown_deadline
    if shutdown_deadline is None:
        return stop_deadline
    return min(shutdown_deadline, stop_deadline)


# -- the request scope ------------------------------------------------------------------


class RequestScope(Protocol):
    """What serves the current request, as `mark_long_lived` sees it.

    Each server kind has its own (a handler, a middleware's request): marking
    turns the request's ticket long-lived and gives the request a token of
    its own, made current for the rest of the request, which the stop
    cancels to end it. It returns False when the calling context holds no
    request of the scope's in progress (a context copied from a request that
    ended); None or True otherwise.
    """

    def _lc_mark_long_lived(self) -> bool | None: ...


_scope: ContextVar[RequestScope | None] = ContextVar("lifecycle_request_scope", default=None)
# Which of its scope's requests the context belongs to: a scope that serves
# request after request in one context (a connection's handler, a pooled
# middleware slot) writes its `Slot.uses` here as each begins, so that a
# context copied from one request (a thread the handler started) is told
# apart from the later requests of the same scope. One write per request.
_request_use: ContextVar[int] = ContextVar("lifecycle_request_use", default=0)
note_request = _request_use.set
"""``note_request(slot.uses)``: the request begun in ``slot`` is the one of this context."""
noted_request = _request_use.get
"""``noted_request()``: the `Slot.uses` of the request this context belongs to (0: none)."""
# Token -> (a weak reference to) the scope of the request it belongs to. The
# value is weak: a scope refers to its token, which would otherwise keep the
# entry, and the scope, alive for ever.
_token_scopes: weakref.WeakKeyDictionary[CancelToken, weakref.ref[RequestScope]] = (
    weakref.WeakKeyDictionary()
)
_scopes_lock = threading.Lock()


def enter_scope(scope: RequestScope) -> ContextToken[RequestScope | None]:
    """Make ``scope`` the request of this thread or task; pass the result to `exit_scope`."""
    return _scope.set(scope)


def exit_scope(reset: ContextToken[RequestScope | None]) -> None:
    """Undo `enter_scope`."""
    _scope.reset(reset)


def bind_scope(token: CancelToken, scope: RequestScope) -> None:
    """Make ``scope`` the current request scope wherever ``token`` is the current token.

    For a server whose requests each run under a token of their own (reused
    from one request to the next): it then writes one context variable per
    request, the token, instead of two.
    """
    with _scopes_lock:
        _token_scopes[token] = weakref.ref(scope)


def current_scope() -> RequestScope | None:
    """The scope of the request served in this thread or task, or None outside any.

    The scope of the middleware request whose record is current (innermost:
    a middleware runs inside a server's connection), else the scope a server
    entered (`enter_scope`), else the one bound to `current_token()`
    (`bind_scope`).
    """
    current = _current.get(None)
    if current.__class__ is tuple:  # a request's record: (a weak ref. to its scope, n, token)
        owner: RequestScope | None = current[0]()
        return owner
    if current.__class__ is functools.partial:  # a request's record: its server is the scope
        server: RequestScope = current.args[0]
        return server
    scope = _scope.get()
    if scope is not None:
        return scope
    with _scopes_lock:
        ref = _token_scopes.get(current_token())
    return None if ref is None else ref()


def mark_long_lived() -> bool:
    r"""Mark the request being served in this thread or task as long-lived.

    A long-lived request -- a stream, a long poll, a websocket -- would hold a
    graceful stop until its deadline. Once marked, the server's stop does not
    wait for it with the others: when only long-lived requests remain it
    cancels their tokens, and the handler is expected to end the stream
    promptly and return. The call gives the request a token of its own and
    makes it `current_token()` for the rest of the request: read the token
    *after* marking. A request marked once its server began ending the
    long-lived ones has its token cancelled at once.

    Works in handlers served by `HTTPServer`, `TCPServer`, `WSGIServer`,
    `AsyncStreamServer` and under `WSGIMiddleware` and `ASGIMiddleware`.

    Only the request whose context the call runs in is marked: from a
    context copied in a handler (``contextvars.copy_context()``, a thread it
    started), the request it was copied from, while it is in progress;
    once that request ended the call marks nothing and returns False, even
    if the same connection serves another request by then.

    Returns:
        True if there was a request to mark; False outside any request, or
        once the request of this context ended.

    Example::

        class Events(BaseHTTPRequestHandler):
            def do_GET(self):
                lifecycle.mark_long_lived()
                token = lifecycle.current_token()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                while not token.wait(1.0):      # until the server stops
                    self.wfile.write(b"data: tick\\n\\n")

    Added in 0.1; works in every server kind since 0.2.
    """
    scope = current_scope()
    if scope is None:
        return False
    return scope._lc_mark_long_lived() is not False


class RequestTokens:
    """The tokens a server's requests share, so that none is made per ordinary request.

    * `root`: the token of every request begun before the drain; cancelled
      only when the stop cuts (`cut`).
    * `draining`: once the drain began, the token of every request begun from
      then on: one shared child of `root` carrying the deadline by which such
      work must be done not to be cut (`cut_deadline`: a margin before the
      cut), made when it is first asked for, made again by `renew` when the
      stop begins (with `Drain.requests_by`).

    What ``.deadline`` of a draining token means: before the stop began
    (during the app's drain delay) only the shutdown deadline is known, so
    it is an upper bound, the latest the stop can cut; once the stop begins
    (`renew`), a token handed out in the drain delay whose deadline is later
    than the stop's `Drain.requests_by` is cancelled then, with
    ``DEADLINE_EXCEEDED`` -- as is every token made from it (a request
    marked long-lived) -- so that a handler waiting on its token still
    answers before the cut. Tokens handed out from then on carry
    ``requests_by`` as their deadline. Its cost: one linked source and one
    deadline per stop, nothing per request.

    A long-lived request makes a token of its own when it is marked (a child
    of the one it had), which the stop cancels to end it. A request that
    arrives during the stop gets the live shared token: nothing but its
    deadline or the cut cancels it.

    Args:
        timer: the `DeadlineTimer` of the tokens' deadlines (tests pass one
            with a fake clock); the process's by default.

    Example::

        tokens = RequestTokens()
        token = tokens.draining(lambda: app.shutdown_deadline) if draining else tokens.root
    """

    __slots__ = ("_drain", "_due", "_lock", "_source", "_sources", "_timer", "root")

    def __init__(self, *, timer: DeadlineTimer | None = None) -> None:
        self._timer = timer
        self._source = CancelSource(timer=timer)
        self.root = self._source.token
        self._drain: CancelToken | None = None
        # Linked into the token of the drain delay; cancelled once the stop's
        # requests are due (None: no such token, or its cancel is armed).
        self._due: CancelSource | None = None
        self._sources: list[CancelSource] = []
        self._lock = threading.Lock()

    def draining(self, deadline: Callable[[], float | None]) -> CancelToken:
        """The shared token of requests begun now, while draining (made once, lazily).

        Asked for before `renew` (the drain delay), its deadline is
        ``deadline()``, an upper bound: `renew` cancels it once the stop's
        own request deadline passes, if that comes first.
        """
        token = self._drain
        if token is None:
            with self._lock:
                if self._drain is None:
                    # Only before the stop began: renew sets _drain for good.
                    due = CancelSource(timer=self._timer)
                    source = CancelSource.linked(self.root, due.token, deadline=deadline())
                    self._sources += (due, source)
                    self._due = due
                    self._drain = source.token
                token = self._drain
        return token

    def renew(self, deadline: float | None) -> None:
        """The stop began: requests begun from now on share a new token with ``deadline``.

        ``deadline`` is `Drain.requests_by` (or the earlier `cut_deadline`):
        the token handed out in the drain delay, if any and due later, is
        cancelled then with ``DEADLINE_EXCEEDED``.
        """
        armed: CancelSource | None = None
        with self._lock:
            before, due = self._drain, self._due
            self._drain = self._child(deadline)
            if due is not None and deadline is not None and before is not None:
                self._due = None
                if before.deadline is None or before.deadline > deadline:
                    armed = CancelSource(deadline=deadline, timer=self._timer)
                    self._sources.append(armed)
        if armed is not None and due is not None:
            on_cancel_inline(armed.token, functools.partial(_due_now, armed.token, due))

    def _child(self, deadline: float | None) -> CancelToken:
        if deadline is None:
            return self.root
        source = CancelSource(self.root, deadline=deadline)
        self._sources.append(source)
        return source.token

    def cut(self, reason: str) -> None:
        """Cancel every request's token (the stop's cut); user callbacks run off this thread."""
        cancel_in_background(self._source, reason)

    def close(self) -> None:
        """The server stopped: cancel and release every token (reason ``"closed"`` if none yet)."""
        self._source.close()
        with self._lock:
            sources, self._sources = self._sources, []
            self._due = None
        for source in sources:
            source.close()


def _due_now(timer: CancelToken, due: CancelSource) -> None:
    """The stop's request deadline passed: the drain delay's requests are due (timer thread).

    Not when ``timer`` was closed with the server (`RequestTokens.close`).
    """
    if timer.reason == DEADLINE_EXCEEDED:
        cancel_in_background(due, DEADLINE_EXCEEDED)


# The servers' wake-ups (drain flags, waiters) run in the cancelling thread.
_on_cancel_inline = on_cancel_inline
