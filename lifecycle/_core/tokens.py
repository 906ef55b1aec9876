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
  never held while user code or a wake-up runs, so a callback may freely
  create, cancel or wait on other tokens. Re-entrancy means a cancel that
  interrupts code inside the lock (a signal handler) cannot deadlock on it.
* Where callbacks run. A cancellation marks the whole tree first (flags and
  reasons), then runs the library's own wake-ups (`on_cancel_inline`: an
  asyncio waiter's future, a drain flag) in the cancelling thread, always,
  then wakes the threads blocked in ``wait()``, then the user callbacks
  follow. User callbacks (`CancelToken.on_cancel`)
  run in the cancelling thread when user code calls `CancelSource.cancel`,
  and on a lifecycle callback thread when the library cancels
  (`cancel_in_background`: shutdown, stop phases; and every deadline), so
  that a slow callback delays only itself: never the signal path, the
  runner's control thread or loop, nor the deadline timer.
* A failing callback never stops a cancellation: any BaseException it raises
  is logged with its stack ("cancel callback raised") and the traversal
  finishes. Only on the caller's own ``cancel()`` (or an ``on_cancel`` that
  runs at once) is a ``SystemExit`` or ``KeyboardInterrupt`` raised again,
  once every token is cancelled and every other callback ran: the process was
  asked to end, and that must not be swallowed. Other BaseExceptions
  (``Cancelled``, ``asyncio.CancelledError``) describe the callback's own
  cancellation, not the caller's, and are logged only.
* Parents hold their children weakly, so a child that is dropped without
  being closed is collected and forgotten; a closed child detaches at once.
  The tree therefore never grows with the history of a long-lived parent.
  The exception is a registration: a token with a registered callback (or a
  child that has one) is held strongly by its live parents and, while its own
  deadline is pending, by its timer, so that the callback runs even when
  nothing else holds the token (Go's ``AfterFunc`` and .NET's ``Register``
  keep theirs alive the same way). Detaching the last callback, or the
  cancellation itself, lets it go.

Added in 0.1.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import itertools
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Final

import structlog

from .errors import Cancelled

__all__ = [
    "CALLBACK_THREADS",
    "DEADLINE_EXCEEDED",
    "CancelSource",
    "CancelToken",
    "DeadlineTimer",
    "cancel_in_background",
    "cancel_scope",
    "current_token",
    "on_cancel_inline",
    "use_token",
    "wait_callbacks_idle",
]

DEADLINE_EXCEEDED: Final = "deadline exceeded"
"""The `CancelToken.reason` of a token cancelled by its deadline."""

CALLBACK_THREADS: Final = 16
"""The most lifecycle callback threads at once. A callback handed over while
all of them are busy waits in a queue (first in, first out) for the first one
that finishes: at most this many blocked callbacks delay the others."""

_CALLBACK_IDLE_EXIT: Final = 5.0
"""Seconds a callback thread with nothing to do waits before it ends."""

_TIMER_RETRY: Final = 0.01
"""Seconds the deadline timer pauses after an error of its own, before going on."""

_log = structlog.get_logger("lifecycle")

# Guards every token's mutable state (flags, callbacks, children, pins, and
# each timer's ``_keep``). Invariant: never held while user code or a wake-up runs.
_LOCK = threading.RLock()
_ids = itertools.count()

Callback = Callable[[], object]


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


def _check_reason(reason: object) -> str:
    if not isinstance(reason, str):
        raise TypeError(f"reason must be a str, not {type(reason).__name__} ({reason!r})")
    return reason


# -- running callbacks ----------------------------------------------------------


def _describe(callback: Callback) -> str:
    try:
        return repr(callback)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        return f"<{type(callback).__qualname__} object (repr failed)>"


def _run_callback(callback: Callback) -> BaseException | None:
    """Run one callback; log whatever it raises and return it. Never raises."""
    try:
        callback()
    except BaseException as exc:  # noqa: BLE001 - logged; the traversal and the others go on
        # A logger that fails in turn must not break the traversal either.
        with contextlib.suppress(BaseException):
            _log.exception("cancel callback raised", callback=_describe(callback))
        return exc
    return None


def _run_inline(callbacks: Iterable[Callback]) -> BaseException | None:
    """Run callbacks in this thread; return the first SystemExit/KeyboardInterrupt raised."""
    escaped: BaseException | None = None
    for callback in callbacks:
        exc = _run_callback(callback)
        if escaped is None and isinstance(exc, SystemExit | KeyboardInterrupt):
            escaped = exc
    return escaped


class _CallbackExecutor:
    """Runs the user callbacks of library cancellations on daemon threads.

    A callback handed over goes to an idle callback thread if there is one;
    otherwise a new thread starts, up to `CALLBACK_THREADS`; beyond that it
    queues. Threads start one at a time, and a thread that takes a callback
    while more are queued and nobody is idle starts the next one, so a burst
    of quick callbacks is served by few threads and a burst of blocking ones
    gets a thread each. A thread idle for `_CALLBACK_IDLE_EXIT` seconds ends.

    Invariant: every queued callback will be taken: by an idle thread (which
    re-reads the queue whenever it wakes, notified or not), by the thread that
    is starting, or by a busy one when it finishes; a hand-over that finds
    none of these below the bound starts a thread. ``_idle`` and ``_running``
    are written only by the callback threads; the hand-over (which may run in
    any thread, re-entrantly) appends to the queue, adds to sets, and moves
    ``_expected`` by balanced steps (a nested pair cannot lose an update).
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Also the at-fork reinitialisation: the threads do not exist in a
        # forked child and the lock may be held by one of them. Callbacks still
        # queued belong to the parent, which runs them; the child must not
        # repeat their effects.
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)  # idle threads wait here
        self._drained = threading.Condition(self._lock)  # wait_idle() waits here
        self._queue: collections.deque[Callback] = collections.deque()
        self._threads: set[threading.Thread] = set()
        self._starting: set[threading.Thread] = set()
        self._idle = 0
        self._running = 0
        # Background cancellations between announcing (as their root is marked)
        # and their hand-over: whoever saw a token of theirs cancelled must not
        # find the executor idle.
        self._expected = 0
        self._watchers = 0  # threads in wait_idle()
        self._names = itertools.count(1)

    def expect(self) -> None:
        """A background cancellation begins: its `submit` follows (exactly once)."""
        with self._lock:
            self._expected += 1

    def submit(self, callbacks: list[Callback]) -> None:
        """Hand ``callbacks`` over (they start in this order) and end an `expect`.

        Runs no user code.
        """
        with self._lock:
            self._expected -= 1
            if not callbacks:  # the common case: a tree without user callbacks
                if self._watchers and self._is_idle():
                    self._drained.notify_all()
                return
            self._queue.extend(callbacks)
            if self._idle:
                self._work.notify(len(callbacks))
            thread = self._reserve()
        if thread is not None:
            self._start(thread)

    def _is_idle(self) -> bool:
        return not (self._queue or self._running or self._expected)

    def wait_idle(self, timeout: float | None) -> bool:
        with self._lock:
            self._watchers += 1
            try:
                return self._drained.wait_for(self._is_idle, timeout)
            finally:
                self._watchers -= 1

    def _reserve(self) -> threading.Thread | None:
        """A new thread to start, if queued work outnumbers the idle threads (lock held)."""
        if (
            len(self._queue) <= self._idle
            or self._starting
            or len(self._threads) >= CALLBACK_THREADS
        ):
            return None
        thread = threading.Thread(
            target=self._serve, name=f"lifecycle-callbacks-{next(self._names)}", daemon=True
        )
        self._threads.add(thread)
        self._starting.add(thread)
        return thread

    def _start(self, thread: threading.Thread) -> None:
        try:
            thread.start()
        except RuntimeError:  # no more threads, or the interpreter is shutting down
            with self._lock:
                self._threads.discard(thread)
                self._starting.discard(thread)
            with contextlib.suppress(BaseException):
                _log.exception(
                    "cannot start a lifecycle callback thread; queued callbacks wait "
                    "for a running one or the next hand-over"
                )

    def _serve(self) -> None:
        me = threading.current_thread()
        ran = False
        while True:
            with self._lock:
                self._starting.discard(me)
                if ran:
                    self._running -= 1
                callback = self._next(me)
                if callback is None:
                    return
                self._running += 1
                helper = self._reserve()
            if helper is not None:
                self._start(helper)
            _run_callback(callback)
            del callback  # an idle thread holds no callback
            ran = True

    def _next(self, me: threading.Thread) -> Callback | None:
        """The next queued callback, waiting while idle; None to end this thread (lock held)."""
        idle_since: float | None = None
        while not self._queue:
            if self._watchers and self._is_idle():
                self._drained.notify_all()
            now = time.monotonic()
            if idle_since is None:
                idle_since = now
            left = _CALLBACK_IDLE_EXIT - (now - idle_since)
            if left <= 0:
                self._threads.discard(me)
                return None
            self._idle += 1
            try:
                self._work.wait(left)
            finally:
                self._idle -= 1
        return self._queue.popleft()


_executor = _CallbackExecutor()


def wait_callbacks_idle(timeout: float) -> bool:
    """Block until no callback is queued or running on the lifecycle callback threads.

    Returns True when idle, False if ``timeout`` seconds passed first. For
    tests that need the callbacks of a background cancel or a deadline to
    have run. Called from a callback itself it waits for itself: False at the
    timeout.

    Example::

        cancel_in_background(source, "shutdown")
        assert wait_callbacks_idle(5.0)

    Added in 0.1.
    """
    return _executor.wait_idle(_check_timeout(timeout))


class DeadlineTimer:
    """The one timer that fires the deadlines of many tokens.

    The process has one, started lazily on the first deadline. It only marks
    tokens cancelled and wakes their waiters: their user callbacks run on the
    lifecycle callback threads, so the timer thread never runs user code, a
    slow callback delays no other deadline, and an error of the timer's own is
    logged ("deadline timer failed; it keeps running") and the loop goes on.

    Tests create their own with a fake ``clock`` and ``threaded=False``, then
    call `fire_due` after advancing the clock, so deadline logic runs with no
    sleep and no timer thread; `wait_callbacks_idle` waits for the callbacks.

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
        # Tokens with a pending deadline that are pinned (a registration):
        # held strongly here, so the heap's weak entry still finds them.
        # Guarded by the tokens' _LOCK, not by _cond.
        self._keep: set[CancelToken] = set()

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
                self._start_thread()
            elif self._heap[0] is entry:
                self._cond.notify()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lifecycle-deadlines", daemon=True)
        self._thread.start()

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
        """Cancel every token whose deadline has passed; return the next deadline or None.

        Runs no user callback: those go to the lifecycle callback threads.
        """
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
            _cancel_tree(token, DEADLINE_EXCEEDED, background=True)
        return following

    def _loop(self) -> None:
        # Invariant: this loop never ends; it runs no user code (fire_due hands
        # callbacks over), and anything it raises itself is logged.
        while True:
            try:
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
            except BaseException:  # noqa: BLE001 - the one timer must outlive any error
                with contextlib.suppress(BaseException):
                    _log.exception("deadline timer failed; it keeps running")
                with contextlib.suppress(BaseException), self._cond:
                    self._cond.wait(_TIMER_RETRY)  # no busy loop on an error that repeats

    def _after_fork(self) -> None:
        # The thread does not exist in a forked child; locks may be held by
        # threads that vanished. Start over with fresh ones.
        self._cond = threading.Condition(threading.RLock())
        self._thread = None
        if self._threaded and self._heap:
            self._start_thread()


_default_timer = DeadlineTimer()


def _reinit_after_fork() -> None:
    global _LOCK
    _LOCK = threading.RLock()
    _executor._reset()
    _default_timer._after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_reinit_after_fork)


def _repin(token: CancelToken) -> None:
    """Bring the pins of ``token`` and of its ancestors up to date (``_LOCK`` held).

    Invariant: a live token is in each live parent's ``_pinned`` and, while
    its own deadline is pending, in its timer's ``_keep`` (``_held`` says it
    is) iff it has a registered callback or a pinned child. ``_pinned`` is
    None rather than empty.
    """
    stack = [token]
    while stack:
        token = stack.pop()
        wanted = not token.cancelled and (bool(token._callbacks) or token._pinned is not None)
        if wanted is token._held:
            continue
        token._held = wanted
        if token._timer_entry:
            if wanted:
                token._timer._keep.add(token)
            else:
                token._timer._keep.discard(token)
        for parent in token._parents:
            if parent.cancelled:
                continue  # it is cancelling this token right now and holds it meanwhile
            if wanted:
                if parent._pinned is None:
                    parent._pinned = {token}
                else:
                    parent._pinned.add(token)
            elif parent._pinned is not None:
                parent._pinned.discard(token)
                if not parent._pinned:
                    parent._pinned = None
            stack.append(parent)

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
        "_held",
        "_parents",
        "_pinned",
        "_reason",
        "_timer",
        "_timer_entry",
        "cancelled",
    )

    cancelled: bool
    _reason: str | None
    # key -> (callback, inline). Never replaced, only cleared in place: a
    # detach function holds this dict, not the token.
    _callbacks: dict[int, tuple[Callback, bool]]
    _children: weakref.WeakSet[CancelToken] | None
    _pinned: set[CancelToken] | None  # the children that have registrations: held strongly
    _held: bool  # this token is in its parents' _pinned (and its timer's _keep)
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
        self._pinned = None
        self._held = False
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
        # No callback can be registered on a token not yet returned: cancelling
        # it here runs no user code, inline or not.
        if cause is not None:
            _cancel_tree(self, cause, background=False)
        elif own is not None and own_is_earliest:
            # Only a deadline earlier than every parent's needs the timer: a
            # parent's own expiry reaches the child through the tree with the
            # same reason.
            if own <= now:  # a zero timeout, or a deadline already past
                _cancel_tree(self, DEADLINE_EXCEEDED, background=False)
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
        instead of waiting for the timer to fire (and then fires the deadline
        itself, as the timer would: its callbacks go to a callback thread).
        """
        if not self.cancelled and self._deadline is not None:
            if self._timer.clock() < self._deadline:
                return
            _cancel_tree(self, DEADLINE_EXCEEDED, background=True)
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

        No thread per waiter: the cancel, from whatever thread, wakes the loop
        with ``call_soon_threadsafe`` before it returns (a wake-up that runs
        in the cancelling thread even when the library cancels, so it is
        never held up by a slow callback). Returns True if the token is
        cancelled.

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
        detach = self._register(functools.partial(_wake_soon, loop, waiter), inline=True)
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

        Where it runs:

        * your own ``source.cancel()``: in your thread, before ``cancel``
          returns (after the whole tree is marked cancelled);
        * a cancellation by lifecycle itself (the app's shutdown, a
          component's stop phase, a server's stop) and every deadline: on a
          lifecycle callback thread (named ``lifecycle-callbacks-N``), never
          in a signal handler, the runner's control thread or loop, or the
          deadline timer. Callbacks of one such cancellation start in order
          but may overlap; one that blocks delays only itself (up to
          `CALLBACK_THREADS` run at once, the rest queue);
        * already cancelled: in the thread that calls ``on_cancel``, before
          it returns.

        Keep callbacks short: set a flag, wake something, close a handle.
        Anything they raise is logged with its stack ("cancel callback
        raised") and stops nothing else; only a ``SystemExit`` or
        ``KeyboardInterrupt`` raised during your own ``cancel()`` (or an
        ``on_cancel`` that runs at once) reaches you, once the rest is done.

        A registration keeps the token alive while something can still
        cancel it (a parent, a deadline), even if nothing else holds the
        token: detach callbacks you no longer need.

        Returns a function that detaches the callback and returns True if it
        was detached before it ran. It holds the token weakly.

        Example::

            detach = token.on_cancel(lambda: jobs.put(STOP))  # wake the consumer
            try:
                while (job := jobs.get()) is not STOP:
                    handle(job)
            finally:
                detach()
        """
        if not callable(callback):
            raise TypeError(f"on_cancel() needs a callable, got {callback!r}")
        return self._register(callback, inline=False)

    # -- internals ---------------------------------------------------------

    def _register(self, callback: Callback, *, inline: bool) -> Callable[[], bool]:
        key = next(_ids)
        with _LOCK:
            registered = not self.cancelled
            if registered:
                self._callbacks[key] = (callback, inline)
                if not self._held:
                    _repin(self)
        if not registered:
            _reraise(_run_inline((callback,)))
            return _already_fired
        if self.cancelled:
            # A cancel ran re-entrantly (a signal handler) between the check
            # and the insertion; make sure the callback still runs once.
            with _LOCK:
                late = self._callbacks.pop(key, None)
            if late is not None:
                _reraise(_run_inline((late[0],)))
        return _detacher(self, key)

    def _mark(
        self, reason: str, announce: bool = False
    ) -> (
        tuple[list[tuple[Callback, bool]], list[CancelToken], threading.Event | None, bool] | None
    ):
        """Set the cancelled state; return what must be run, cancelled and set next.

        With ``announce``, a token that has callbacks or children tells the
        executor that a hand-over follows (the third item says it did), before
        anyone can see it cancelled.
        """
        with _LOCK:
            if self.cancelled:
                return None
            announced = announce and bool(self._callbacks or self._children)
            if announced:
                _executor.expect()
            self._reason = reason
            self.cancelled = True  # after the reason: whoever sees True sees the reason
            callbacks = list(self._callbacks.values())
            self._callbacks.clear()
            children = list(self._children) if self._children is not None else []
            self._children = None
            self._pinned = None  # ``children`` holds them until they are marked
            event = self._event
            parents, self._parents = self._parents, ()
            for p in parents:
                if p._children is not None:
                    p._children.discard(self)
            if self._held:
                self._held = False
                if self._timer_entry:
                    self._timer._keep.discard(self)
                for p in parents:
                    if p._pinned is not None:
                        p._pinned.discard(self)
                        if not p._pinned:
                            p._pinned = None
                        _repin(p)
        if self._timer_entry:
            self._timer._forget()
        return callbacks, children, event, announced


def _detacher(token: CancelToken, key: int) -> Callable[[], bool]:
    """The function `CancelToken.on_cancel` returns: detaches one registration, once.

    It holds the token's callback table, not the token: holding it does not
    keep the token alive, and it still tells a registration that ran (gone
    from the table) from one that never did.
    """
    callbacks = token._callbacks
    ref = weakref.ref(token)

    def detach() -> bool:
        with _LOCK:
            found = callbacks.pop(key, None) is not None
            if found and not callbacks and (held := ref()) is not None and held._held:
                _repin(held)
        return found

    return detach


def _wake_soon(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
    # RuntimeError: the loop was closed meanwhile, nobody waits any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_resolve, waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _already_fired() -> bool:
    return False


def _reraise(escaped: BaseException | None) -> None:
    if escaped is not None:
        raise escaped


def _cancel_tree(root: CancelToken, reason: str, *, background: bool) -> None:
    """Cancel ``root`` and its descendants, then run their callbacks.

    Iterative, so depth is unlimited. The whole tree is marked before any
    callback runs; the wake-ups run here; user callbacks run here too, or on
    the callback threads when ``background``. Only in the first case can a
    SystemExit or KeyboardInterrupt of a callback reach the caller, after all
    of it.

    Thread waiters are woken after the wake-ups ran: a thread blocked in
    `CancelToken.wait` wakes to find every library wake-up of the tree done
    (a server's drain flag set).

    In the background, the root announces the hand-over as it is marked, if
    it has callbacks or children (only then can there be anything to hand
    over): a lone leaf, a request's token, costs no executor round trip.
    """
    wakeups: list[Callback] = []
    callbacks: list[Callback] = []
    events: list[threading.Event] = []
    escaped: BaseException | None = None
    announced = False
    try:
        stack = [root]
        while stack:
            marked = stack.pop()._mark(reason, background and not announced)
            if marked is None:
                continue
            registered, children, event, announcing = marked
            announced = announced or announcing
            for callback, inline in registered:
                (wakeups if inline else callbacks).append(callback)
            if event is not None:
                events.append(event)
            stack.extend(children)
        escaped = _run_inline(wakeups)
    finally:
        for event in events:
            event.set()
        if announced:
            _executor.submit(callbacks)
    if not background:
        later = _run_inline(callbacks)
        _reraise(escaped or later)


def on_cancel_inline(token: CancelToken, fn: Callable[[], object]) -> Callable[[], bool]:
    """Register one of the library's own wake-ups: it runs in the cancelling thread, always.

    The same as `CancelToken.on_cancel` (once, at once if already cancelled,
    the same detach function), except that it runs inline even when the
    library cancels in the background, before `cancel_in_background`
    returns, so wake latency stays in microseconds. Only for short,
    non-blocking, non-logging code that cannot fail: set a flag, resolve a
    future with ``loop.call_soon_threadsafe``, notify a condition. It may run
    on a runner's control thread or loop, or the deadline timer's thread.

    Example::

        detach = on_cancel_inline(token, functools.partial(loop.call_soon_threadsafe, wake))

    Added in 0.1.
    """
    if not isinstance(token, CancelToken):
        raise TypeError(f"on_cancel_inline() needs a CancelToken, not {type(token).__name__}")
    if not callable(fn):
        raise TypeError(f"on_cancel_inline() needs a callable, got {fn!r}")
    return token._register(fn, inline=True)


def cancel_in_background(source: CancelSource, reason: str) -> None:
    """Cancel ``source``'s tree now, and run its user callbacks on the callback threads.

    Before it returns, every token of the tree reads cancelled with
    ``reason`` (the first reason wins, as with `CancelSource.cancel`), every
    thread blocked in `CancelToken.wait` is woken and every asyncio
    `CancelToken.wait_async` has its wake-up scheduled. The user callbacks
    (`CancelToken.on_cancel`) are handed to the lifecycle callback threads:
    nothing the user registered runs in the caller, so a callback that blocks
    or logs cannot hold it up or deadlock it. What the runtime uses from its
    control thread or loop (shutdown, stop phases, abandoning a call).

    Thread-safe and re-entrant (from a callback, or inside another
    cancellation). Not for signal handlers: it may start a thread, and
    starting one takes locks the interrupted code may hold; a handler should
    record and wake another thread, which calls this.

    Example::

        cancel_in_background(run_source, "stop phase")   # returns at once

    Added in 0.1.
    """
    if not isinstance(source, CancelSource):
        raise TypeError(_not_a_source(source))
    _cancel_tree(source.token, _check_reason(reason), background=True)


def _not_a_source(value: object) -> str:
    hint = (
        "; a token cannot be cancelled: pass the CancelSource that owns source.token"
        if isinstance(value, CancelToken)
        else ""
    )
    return f"cancel_in_background() needs a CancelSource, not {type(value).__name__}{hint}"


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

        Thread-safe. The whole tree is marked cancelled first, then every
        callback of it runs in the calling thread before this returns (use
        `cancel_in_background` to hand them to the callback threads). A
        ``SystemExit`` or ``KeyboardInterrupt`` raised by a callback is
        raised here, once everything else has run; other errors are logged.

        Callable from a signal handler without deadlocking on the tokens' own
        locks (they are re-entrant), but not meant for one: the callbacks
        would then run inside the handler, between two bytecodes of the
        interrupted code, where a callback that logs can deadlock on the
        logger's lock. A handler should only record and wake another thread;
        the runners do exactly that.
        """
        _cancel_tree(self.token, _check_reason(reason), background=False)

    def close(self) -> None:
        """Cancel (reason ``"closed"`` unless already cancelled) and detach from the parents.

        A cancelled token leaves its parents' child sets and drops the
        registrations that kept it alive, so nothing of it stays behind.
        """
        _cancel_tree(self.token, "closed", background=False)

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

        self._detach = self.token._register(on_cancel, inline=True)
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
