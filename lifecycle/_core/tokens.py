"""Context-style cancellation: `CancelSource`, `CancelToken`, `current_token`.

The Python analogue of Go's ``context.Context`` and .NET's
``CancellationToken``. A `CancelSource` owns the right to cancel; its
`CancelToken` is what you hand out. Tokens form a tree: a child is cancelled
when any parent is, with the parent's reason, and its deadline is the earliest
of its own and its parents'.

Design notes (the invariants the rest of the package relies on):

* ``token.cancelled`` is a plain slot attribute. Reading it costs what reading
  any attribute costs; nothing polls the clock. Deadlines are enforced by *one*
  shared timer thread (`DeadlineTimer`) that cancels each token when its
  deadline passes, so ``cancelled`` turns true within a few milliseconds of the
  deadline without anyone asking.
* One process-wide re-entrant lock guards every token's mutable state. It is
  never held while user code runs (callbacks, waiter wake-ups), so a callback
  may freely create, cancel or wait on other tokens. Re-entrancy means a
  signal handler that calls `CancelSource.cancel` while the interrupted code
  was inside the lock cannot deadlock.
* Parents hold their children weakly, so a child that is dropped without
  being closed is collected and forgotten; a closed child detaches at once.
  The tree therefore never grows with the history of a long-lived parent.

Added in 0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Final

import structlog

from .errors import Cancelled

__all__ = [
    "DEADLINE_EXCEEDED",
    "CancelSource",
    "CancelToken",
    "DeadlineTimer",
    "cancel_scope",
    "current_token",
    "use_token",
]

DEADLINE_EXCEEDED: Final = "deadline exceeded"
"""The `CancelToken.reason` of a token cancelled by its deadline."""

_log = structlog.get_logger("lifecycle")

# Guards every token's mutable state (flags, callbacks, children, event).
# Invariant: never held while user code or a wake-up runs.
_LOCK = threading.RLock()
_ids = itertools.count()


def _check_timeout(timeout: object, name: str = "timeout") -> float | None:
    """Validate a timeout argument: None or a finite-or-infinite number >= 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"{name} must be a number of seconds or None, not {type(timeout).__name__} "
            f"({timeout!r})"
        )
    value = float(timeout)
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 seconds or None, got {timeout!r}")
    return value


def _check_deadline(deadline: object) -> float | None:
    """Validate a deadline argument: None or a number (a ``time.monotonic()`` value)."""
    if deadline is None:
        return None
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        raise TypeError(
            f"deadline must be a time.monotonic() value or None, not "
            f"{type(deadline).__name__} ({deadline!r})"
        )
    if math.isnan(deadline):
        raise ValueError("deadline must be a time.monotonic() value, got nan")
    return float(deadline)


class DeadlineTimer:
    """The one timer that fires the deadlines of many tokens.

    The process has one, started lazily on the first deadline. Tests create
    their own with a fake ``clock`` and ``threaded=False``, then call
    `fire_due` after advancing the clock, so deadline logic runs with no sleep
    and no thread.

    Example::

        clock = FakeClock()
        timer = DeadlineTimer(clock, threaded=False)
        source = CancelSource(timeout=5, timer=timer)
        clock.advance(5)
        timer.fire_due()
        assert source.token.reason == "deadline exceeded"

    Args:
        clock: a ``time.monotonic``-like function; deadlines are values of it.
        threaded: run a daemon thread that fires deadlines as they pass.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, threaded: bool = True
    ) -> None:
        self.clock = clock
        self._threaded = threaded
        # Re-entrant: a signal handler that cancels a token with a deadline
        # calls _forget while the interrupted code may be inside this lock.
        self._cond = threading.Condition(threading.RLock())
        # Heap of (deadline, seq, weakref to token). Entries of tokens that
        # were cancelled otherwise stay until due, counted in _stale, and are
        # swept out when they are more than half of the heap.
        self._heap: list[tuple[float, int, weakref.ref[CancelToken]]] = []
        self._stale = 0
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<DeadlineTimer pending={len(self._heap)} threaded={self._threaded}>"

    def _schedule(self, token: CancelToken, deadline: float) -> None:
        # The callback counts an entry whose token was dropped before its
        # deadline as stale, so that the sweep below reclaims it.
        entry = (deadline, next(_ids), weakref.ref(token, self._dropped))
        with self._cond:
            if self._stale > 256 and self._stale * 2 > len(self._heap):
                self._sweep()
            heapq.heappush(self._heap, entry)
            if not self._threaded:
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="lifecycle-deadlines", daemon=True
                )
                self._thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()

    def _dropped(self, _ref: object) -> None:
        # A weakref callback may run anywhere, even inside this timer's lock
        # in the same thread: a plain increment, no lock (the count is a hint).
        self._stale += 1

    def _forget(self) -> None:
        """Count one heap entry whose token no longer needs it."""
        with self._cond:
            self._stale += 1

    def _sweep(self) -> None:
        alive = [e for e in self._heap if (t := e[2]()) is not None and not t.cancelled]
        heapq.heapify(alive)
        self._heap = alive
        self._stale = 0

    def pending(self) -> int:
        """How many deadlines are waiting to fire (stale ones included until swept)."""
        with self._cond:
            return len(self._heap)

    def fire_due(self) -> float | None:
        """Cancel every token whose deadline has passed; return the next deadline or None."""
        now = self.clock()
        due: list[CancelToken] = []
        with self._cond:
            while self._heap and self._heap[0][0] <= now:
                token = heapq.heappop(self._heap)[2]()
                if token is not None and not token.cancelled:
                    due.append(token)
                elif self._stale:
                    self._stale -= 1
            following = self._heap[0][0] if self._heap else None
        for token in due:
            _cancel_tree(token, DEADLINE_EXCEEDED)
        return following

    def _loop(self) -> None:
        while True:
            self.fire_due()
            with self._cond:
                if not self._heap:
                    # Idle: sleep until a deadline is scheduled (bounded, to
                    # survive any missed notification).
                    self._cond.wait(60.0)
                else:
                    delay = self._heap[0][0] - self.clock()
                    if delay > 0:
                        self._cond.wait(delay)

    def _after_fork(self) -> None:
        # The thread does not exist in a forked child; locks may be held by
        # threads that vanished. Start over with fresh ones.
        self._cond = threading.Condition(threading.RLock())
        self._thread = None
        if self._threaded and self._heap:
            self._thread = threading.Thread(
                target=self._loop, name="lifecycle-deadlines", daemon=True
            )
            self._thread.start()


_default_timer = DeadlineTimer()


def _reinit_after_fork() -> None:
    global _LOCK
    _LOCK = threading.RLock()
    _default_timer._after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_reinit_after_fork)


class CancelToken:
    """A read-only view of a cancellation: check it, wait on it, react to it.

    Tokens are made by a `CancelSource` (``source.token``); a component gets
    one in each of ``start(token)``, ``run(token)`` and ``stop(token)``, and
    deep code finds the current one with `current_token()`.

    Example::

        def run(token: lifecycle.CancelToken) -> None:
            while not token.cancelled:
                job = queue.get(timeout=token.remaining() or 1.0)
                handle(job)

    Attributes:
        cancelled: True once cancelled or once the deadline has passed. A
            plain attribute: reading it is as cheap as reading any attribute.
            Read-only; cancel through the `CancelSource`.

    Added in 0.1.
    """

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_children",
        "_deadline",
        "_event",
        "_parents",
        "_reason",
        "_timer",
        "_timer_entry",
        "cancelled",
    )

    cancelled: bool
    _reason: str | None
    _callbacks: dict[int, Callable[[], object]]
    _children: weakref.WeakSet[CancelToken] | None
    _event: threading.Event | None
    _timer_entry: bool
    _timer: DeadlineTimer
    _deadline: float | None
    _parents: tuple[CancelToken, ...]

    def __init__(self) -> None:
        raise TypeError("CancelToken is not created directly; use CancelSource().token")

    @classmethod
    def _make(
        cls,
        parents: tuple[CancelToken, ...],
        timeout: float | None,
        timer: DeadlineTimer | None,
        deadline: float | None = None,
    ) -> CancelToken:
        self = object.__new__(cls)
        self.cancelled = False
        self._reason = None
        self._callbacks = {}
        self._children = None
        self._event = None
        self._timer_entry = False
        if timer is None:
            timer = parents[0]._timer if parents else _default_timer
        self._timer = timer
        inherited = min(
            (p._deadline for p in parents if p._deadline is not None), default=None
        )
        now = timer.clock()
        own = None if timeout is None else now + timeout
        if deadline is not None and (own is None or deadline < own):
            own = deadline
        own_is_earliest = own is not None and (inherited is None or own < inherited)
        self._deadline = own if own_is_earliest else inherited
        cause: str | None = None
        with _LOCK:
            # Registration with the parents and the check of their state are
            # one atomic step: a parent cancelled concurrently either sees
            # this child or this child sees it cancelled.
            live = tuple(p for p in parents if p is not _NEVER)
            for p in live:
                if p.cancelled:
                    cause = p._reason
                    break
            if cause is None:
                for p in live:
                    if p._children is None:
                        p._children = weakref.WeakSet()
                    p._children.add(self)
            self._parents = live if cause is None else ()
        if cause is None:
            # A parent cancelled re-entrantly (a signal handler) inside the
            # block above may have missed this child; catch up, as on_cancel does.
            cause = next((p._reason for p in live if p.cancelled), None)
        if cause is not None:
            _cancel_tree(self, cause)
        elif own is not None and own_is_earliest:
            # Only a deadline earlier than every parent's needs the timer: a
            # parent's own expiry reaches the child through the tree with the
            # same reason.
            if own <= now:  # a zero timeout, or a deadline already past
                _cancel_tree(self, DEADLINE_EXCEEDED)
            elif not math.isinf(own):
                self._timer_entry = True
                timer._schedule(self, own)
        return self

    def __repr__(self) -> str:
        parts = [f"cancelled reason={self._reason!r}" if self.cancelled else "active"]
        if self._deadline is not None:
            parts.append(f"remaining={self.remaining():.3f}s")
        return f"<CancelToken {' '.join(parts)}>"

    @property
    def reason(self) -> str | None:
        """Why it was cancelled: the first cause wins; None while not cancelled."""
        return self._reason if self.cancelled else None

    @property
    def deadline(self) -> float | None:
        """The deadline as a ``time.monotonic()`` value, or None for no deadline."""
        return self._deadline

    def remaining(self) -> float | None:
        """Seconds left until the deadline, never negative; None without a deadline.

        Example::

            sock.settimeout(token.remaining())
        """
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._timer.clock())

    def raise_if_cancelled(self) -> None:
        """Raise `Cancelled` (with the reason) if cancelled or past the deadline.

        Exact at the deadline: it reads the clock when the token has one,
        instead of waiting for the timer to fire.
        """
        if not self.cancelled and self._deadline is not None:
            if self._timer.clock() < self._deadline:
                return
            _cancel_tree(self, DEADLINE_EXCEEDED)
        if self.cancelled:
            raise Cancelled(self._reason or "cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        """Block this thread until cancelled or ``timeout`` seconds pass.

        Returns True if the token is cancelled. A deadline wakes the waiter
        as it passes. Use `wait_async` in asyncio code instead.

        Example::

            while not token.wait(5.0):   # every 5 s until shutdown
                flush_metrics()
        """
        seconds = _check_timeout(timeout)
        with _LOCK:
            if self._event is None and not self.cancelled:
                self._event = threading.Event()
            event = self._event
        # Checked after the lock too: a cancel that ran re-entrantly (a signal
        # handler) before the event existed will not set it.
        if self.cancelled or event is None:
            return True
        return event.wait(seconds)

    async def wait_async(self, timeout: float | None = None) -> bool:
        """Wait in an asyncio task until cancelled or ``timeout`` seconds pass.

        No thread per waiter: the cancel, from whatever thread or signal
        handler, wakes the loop with ``call_soon_threadsafe``. Returns True if
        the token is cancelled.

        Example::

            async def run(token):
                while not await token.wait_async(1.0):
                    await tick()
        """
        seconds = _check_timeout(timeout)
        if self.cancelled:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            # RuntimeError: the loop was closed meanwhile, nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, waiter)

        detach = self.on_cancel(wake)
        try:
            if seconds is None:
                await waiter
            else:
                try:
                    async with asyncio.timeout(seconds):
                        await waiter
                except TimeoutError:
                    return self.cancelled
        finally:
            detach()
        return True

    def on_cancel(self, callback: Callable[[], object]) -> Callable[[], bool]:
        """Run ``callback()`` once when cancelled; at once if already cancelled.

        The callback runs in the thread that cancels (the deadline timer's, for
        a deadline), outside any lock. It should be quick and must not block;
        one that raises is logged and does not stop the others.

        Returns a function that detaches the callback and returns True if it
        was detached before it ran.

        Example::

            detach = token.on_cancel(server.shutdown)
            try:
                server.serve_forever()
            finally:
                detach()
        """
        if not callable(callback):
            raise TypeError(f"on_cancel() needs a callable, got {callback!r}")
        key = next(_ids)
        with _LOCK:
            if not self.cancelled:
                self._callbacks[key] = callback
                registered = True
            else:
                registered = False
        if not registered:
            _run_callback(callback)
            return _already_fired
        if self.cancelled:
            # A cancel ran re-entrantly (a signal handler) between the check
            # and the insertion; make sure the callback still runs once.
            with _LOCK:
                late = self._callbacks.pop(key, None)
            if late is not None:
                _run_callback(late)

        def detach() -> bool:
            with _LOCK:
                return self._callbacks.pop(key, None) is not None

        return detach

    # -- internals ---------------------------------------------------------

    def _mark(self, reason: str) -> tuple[list[Callable[[], object]], list[CancelToken]] | None:
        """Set the cancelled state; return what must be run and cancelled next."""
        with _LOCK:
            if self.cancelled:
                return None
            self._reason = reason
            self.cancelled = True  # after the reason: whoever sees True sees the reason
            callbacks = list(self._callbacks.values())
            self._callbacks.clear()
            children = list(self._children) if self._children is not None else []
            self._children = None
            event = self._event
            parents, self._parents = self._parents, ()
            for p in parents:
                if p._children is not None:
                    p._children.discard(self)
        if self._timer_entry:
            self._timer._forget()
        if event is not None:
            event.set()
        return callbacks, children

    def _detach(self) -> None:
        with _LOCK:
            parents, self._parents = self._parents, ()
            for p in parents:
                if p._children is not None:
                    p._children.discard(self)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _already_fired() -> bool:
    return False


def _run_callback(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception:  # noqa: BLE001 - any callback error is logged, the rest still run
        _log.exception("cancel callback raised; the others still run", callback=repr(callback))


def _cancel_tree(root: CancelToken, reason: str) -> None:
    """Cancel ``root`` and its descendants; iterative, so depth is unlimited."""
    stack = [root]
    while stack:
        marked = stack.pop()._mark(reason)
        if marked is None:
            continue
        callbacks, children = marked
        for callback in callbacks:
            _run_callback(callback)
        stack.extend(children)


class CancelSource:
    """Owns the right to cancel a `CancelToken`; hand out ``source.token``.

    Args:
        parent: a token whose cancellation cancels this one (with its reason).
        timeout: seconds until the token cancels itself with reason
            ``"deadline exceeded"``; the effective deadline is the earliest
            of this, ``deadline`` and the parent's.
        deadline: the same as an absolute value of the timer's clock
            (``time.monotonic()``), e.g. ``app.shutdown_deadline``; one
            already past gives a token born cancelled.
        timer: the `DeadlineTimer` that fires deadlines (tests pass one with a
            fake clock); children inherit their parent's.

    Raises:
        TypeError: ``parent`` is not a `CancelToken`, or ``timeout`` or
            ``deadline`` is no number.
        ValueError: ``timeout`` is negative or NaN, or ``deadline`` is NaN.

    Example::

        with lifecycle.CancelSource(parent_token, timeout=2.0) as scope:
            fetch(url, token=scope.token)
        # leaving the block cancels the scope and detaches it from the parent

    Added in 0.1.
    """

    __slots__ = ("__weakref__", "token")

    token: CancelToken

    def __init__(
        self,
        parent: CancelToken | None = None,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        timer: DeadlineTimer | None = None,
    ) -> None:
        if parent is not None and not isinstance(parent, CancelToken):
            raise TypeError(
                f"parent must be a CancelToken or None, not {type(parent).__name__}; "
                f"pass source.token rather than the source"
                if isinstance(parent, CancelSource)
                else f"parent must be a CancelToken or None, not {type(parent).__name__}"
            )
        seconds = _check_timeout(timeout)
        self.token = CancelToken._make(
            (parent,) if parent is not None else (), seconds, timer, _check_deadline(deadline)
        )

    @classmethod
    def linked(
        cls,
        *tokens: CancelToken,
        timeout: float | None = None,
        deadline: float | None = None,
        timer: DeadlineTimer | None = None,
    ) -> CancelSource:
        """A source cancelled as soon as any of ``tokens`` is (with that token's reason).

        Example::

            # stop waiting on shutdown *or* when the client goes away
            either = CancelSource.linked(app_token, request_token, timeout=30)
        """
        for i, t in enumerate(tokens):
            if not isinstance(t, CancelToken):
                raise TypeError(
                    f"linked() takes CancelTokens; argument {i} is {type(t).__name__} ({t!r})"
                )
        seconds = _check_timeout(timeout)
        self = object.__new__(cls)
        self.token = CancelToken._make(tuple(tokens), seconds, timer, _check_deadline(deadline))
        return self

    def __repr__(self) -> str:
        return f"<CancelSource {self.token!r}>"

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel the token and its descendants. Idempotent: the first reason wins.

        Thread-safe, and safe to call from a signal handler. Callbacks run in
        the calling thread before this returns.
        """
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        _cancel_tree(self.token, reason)

    def close(self) -> None:
        """Cancel (reason ``"closed"`` unless already cancelled) and detach from the parents."""
        _cancel_tree(self.token, "closed")
        self.token._detach()

    def __enter__(self) -> CancelSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _never() -> CancelToken:
    token = CancelToken._make((), None, None)
    token._parents = ()
    return token


_NEVER: Final = _never()
_current: ContextVar[CancelToken] = ContextVar("lifecycle_current_token")


def current_token() -> CancelToken:
    """The token of the component call or request being served in this thread or task.

    The runners set it around every ``start``/``run``/``stop`` call and the
    servers around every request, so deep code can honour shutdown and
    deadlines without a parameter threaded through every call. Outside any of
    them it returns a token that is never cancelled (never None).

    Example::

        def query(sql):
            token = lifecycle.current_token()
            return db.execute(sql, timeout=token.remaining())
    """
    return _current.get(_NEVER)


@contextmanager
def use_token(token: CancelToken) -> Iterator[CancelToken]:
    """Make ``token`` the `current_token()` inside the block (this thread or task).

    What the runners and servers use; use it in your own servers and tests.

    Example::

        with lifecycle.use_token(request_source.token):
            handle(request)
    """
    if not isinstance(token, CancelToken):
        raise TypeError(f"use_token() needs a CancelToken, not {type(token).__name__}")
    reset = _current.set(token)
    try:
        yield token
    finally:
        _current.reset(reset)


class cancel_scope:  # noqa: N801 - used like a function: ``async with cancel_scope(token)``
    """Cancel the enclosed asyncio block when ``token`` fires; raise `Cancelled` out of it.

    The bridge between tokens and asyncio cancellation: the task is cancelled
    the moment the token is (from any thread), the ``CancelledError`` unwinds
    the block, and leaves it as `Cancelled` with the token's reason. An outer
    cancellation of the task (someone called ``task.cancel()``) is *not*
    swallowed: it propagates as ``CancelledError``, exactly as with
    ``asyncio.timeout``.

    Example::

        async def run(token):
            async with lifecycle.cancel_scope(token):
                await consume_forever()     # cancelled at shutdown
    """

    def __init__(self, token: CancelToken) -> None:
        if not isinstance(token, CancelToken):
            raise TypeError(f"cancel_scope() needs a CancelToken, not {type(token).__name__}")
        self.token = token
        self._task: asyncio.Task[Any] | None = None
        self._fired = False
        self._exited = False
        self._base = 0
        self._detach: Callable[[], bool] = _already_fired

    async def __aenter__(self) -> cancel_scope:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("cancel_scope() must be used inside an asyncio task")
        self._task = task
        self._base = task.cancelling()
        self.token.raise_if_cancelled()
        loop = asyncio.get_running_loop()

        def on_cancel() -> None:
            # RuntimeError: the loop was closed, the task is gone anyway.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._fire)

        self._detach = self.token.on_cancel(on_cancel)
        return self

    def _fire(self) -> None:
        if self._exited or self._task is None:
            return
        self._fired = True
        self._task.cancel(msg=f"lifecycle token cancelled: {self.token.reason}")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._detach()
        self._exited = True
        if self._fired and self._task is not None:
            outer_pending = self._task.uncancel() > self._base
            if exc_type is asyncio.CancelledError and not outer_pending:
                raise Cancelled(self.token.reason or "cancelled") from None
