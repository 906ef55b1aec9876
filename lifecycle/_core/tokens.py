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
  deadline without anyone asking. A token is read-only from outside: assigning
  an attribute raises AttributeError (this module writes through the slots'
  descriptors).
* One process-wide re-entrant lock guards every token's mutable state. It is
  never held while user code or a wake-up runs, so a callback may freely
  create, cancel or wait on other tokens.
* Re-entrant entries. A signal handler, or a finalizer the garbage collector
  runs, can enter this module between two bytecodes of code of the same
  thread that is already inside it, where the lock keeps nobody out. So every
  change to the tree happens inside a critical section, marked by a flag; an
  operation entered while its thread is inside one never reads or writes
  half-updated state: it queues its change, and the interrupted operation
  applies it before it returns. A cancellation waits its turn; a new child
  links in then (cancelled, if its parent was meanwhile); a registration's pin
  follows. The re-entrant call itself returns at once.
* Asynchronous exceptions. The KeyboardInterrupt of a Ctrl-C can land anywhere
  in a cancellation. A cancellation therefore keeps its work (tokens still to
  mark, wake-ups, callbacks) in a `_Traversal` known process-wide, moves work
  between its queues only in single C-level calls, and takes each callback
  off its queue in the very step that calls it: an interrupt loses nothing.
  The cancellation resumes and raises the interrupt once it has finished; if
  interrupts keep it from making progress, the next cancellation (or
  `wait_callbacks_idle`) adopts and finishes it. The interpreter fact this
  relies on: CPython delivers a signal handler's exception only as a function
  starts, at a backward jump, or as a call returns; a callback interrupted as
  it starts, before its first line, is run again.
* A second cancellation of a tree that another thread is cancelling returns
  only once that one has marked every token and run its wake-ups (not its user
  callbacks), so both keep the same promises. The waiting thread holds no lock,
  and a cancellation waits only after running its own wake-ups, so two never
  wait on each other; one re-entered in the thread it waits for, or made from
  a wake-up of a cancellation its own thread drives (where the other may be
  waiting on it in turn), helps instead.
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
  asked to end, and that must not be swallowed. One raised by a wake-up (it
  can only be a Ctrl-C's) is raised again by every cancellation. Other
  BaseExceptions (``Cancelled``, ``asyncio.CancelledError``) describe the
  callback's own cancellation, not the caller's, and are logged only.
* Parents hold their children weakly, so a child that is dropped without
  being closed is collected and forgotten; a closed child detaches at once.
  The tree therefore never grows with the history of a long-lived parent.
  The exception is a registration: a token with a registered callback is
  held strongly by its anchors, the nearest root or own-deadline token on
  each path up (a root is what its owner holds; an own-deadline token that
  holds one is kept by its timer until its deadline), so that the callback
  runs even when nothing else holds the token (Go's ``AfterFunc`` and .NET's
  ``Register`` keep theirs alive the same way). The token holds everything
  between itself and its anchors through its parents. Registering and
  detaching cost the number of anchors (one in a tree), not the depth.
  Detaching the last callback, or the cancellation itself, lets it go.

Added in 0.1.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dis
import functools
import heapq
import itertools
import math
import operator
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Final, TypeVar, cast

from .errors import Cancelled
from .log import get_logger
from .threads import helper_thread, user_code_thread

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

_WAIT_POLL: Final = 0.05
"""Seconds between two looks of a second cancellation at the one it waits for
(a notification normally comes first; the look finds one whose thread gave up)."""

_log = get_logger()

# Guards every token's mutable state (flags, callbacks, children, pins), each
# timer's heap and ``_keep``, and ``_m``. Invariant: never held while user code
# or a wake-up runs.
_LOCK = threading.RLock()
# Notified when a cancellation has run its wake-ups (second cancellations wait on it).
# Re-entrant: a signal handler's cancellation may notify inside a notify.
_PROGRESS = threading.Condition(threading.RLock())
_ids = itertools.count(1)  # registration keys (negated for wake-ups) and heap tie-breakers
_get_ident: Final = threading.get_ident
_TIMEOUT_MAX: Final = threading.TIMEOUT_MAX
_RESUME: Final = dis.opmap["RESUME"]  # the first instruction of every function
_NOTHING: Final = object()  # in no queue: ``iter(queue.popleft, _NOTHING)`` pops until empty
_present: Final[Callable[[object], bool]] = functools.partial(operator.is_not, None)
_NONES: Final = itertools.repeat(None)  # endless: the default of every pop below

Callback = Callable[[], object]
_Call = TypeVar("_Call", bound=Callable[[], object])
_T = TypeVar("_T")

# The phases of a cancellation, in order.
_MARKING: Final = 0  # tokens still to mark
_WAKING: Final = 1  # marked; wake-ups to run, thread waiters to wake
_WOKEN: Final = 2  # user callbacks to run or hand over
_DONE: Final = 3


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


def _clamp(seconds: float | None) -> float | None:
    """A timeout the OS can wait for: at most ``threading.TIMEOUT_MAX``.

    That is 292 years on Linux; a longer wait lasts that long instead of being refused.
    """
    return None if seconds is None else min(seconds, _TIMEOUT_MAX)


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


# -- the shared state and its critical sections --------------------------------


class _Machine:
    """What every operation on tokens shares (``_LOCK`` guards it).

    A critical section is the stretch of an operation, under ``_LOCK``, during
    which ``busy`` is set: inside it the tree may be half-updated. ``busy`` is
    set only by the thread holding ``_LOCK``, so a thread that takes the lock
    and finds it set is re-entering its own critical section (a signal
    handler, a finalizer) and defers its change.
    """

    __slots__ = (
        "abandoned",
        "after",
        "busy",
        "later",
        "marking",
        "waking",
        "watching",
    )

    def __init__(self) -> None:
        self.busy = False
        # Changes of re-entrant entries, each idempotent, applied by the
        # interrupted operation before its critical section ends.
        self.later: collections.deque[Callable[[], object]] = collections.deque()
        # Cancellations (and at-once callbacks) of re-entrant entries, run by the
        # interrupted operation once its critical section has ended.
        self.after: collections.deque[_Traversal] = collections.deque()
        # The cancellation marking in the open critical section: a child that
        # links in under one of its cancelled tokens joins its walk.
        self.marking: _Traversal | None = None
        # The cancellations that began marking and have not woken yet (run their
        # wake-ups, woken their waiters), oldest first: those with tokens still to
        # mark (a walk an interrupt cut short) are among them, and a second
        # cancellation waits for them. Those past it, running user callbacks (any
        # number, one per thread), are in no list: no operation scans them.
        self.waking: dict[_Traversal, None] = {}
        # The cancellations that began marking, are not finished, and no thread
        # drives: the next cancellation adopts them.
        # In both, an entry is added before its state needs it and removed after:
        # one too many is possible (each use re-checks it), one missing is not.
        self.abandoned: dict[_Traversal, None] = {}
        # Threads waiting on _PROGRESS (a hint: notify only when one waits).
        self.watching = 0

    def after_fork(self, me: int) -> None:
        # The threads that were inside a critical section, or cancelling, do not
        # exist in a forked child. Their cancellations keep the tokens still to
        # mark (the child's copy of the tree must end whole), not their wake-ups
        # and callbacks: the parent runs those, the child must not repeat them.
        self.busy = False
        self.marking = None
        self.watching = 0
        # Those past their wake-ups and driven by a vanished thread are forgotten:
        # only their user callbacks were left, and those are the parent's.
        for tr in list({**self.waking, **self.abandoned}):
            if tr.owner != me:
                self.abandoned[tr] = None
                tr.owner = None
                tr.wakeups = tr.callbacks = None
                tr.events = tr.waits = None
                tr.announced = False


_m = _Machine()


def _in_section(change: Callable[..., _T], *args: Any) -> _T:
    """Make ``change(*args)`` this thread's critical section (``_LOCK`` held, not busy).

    The changes that re-entrant entries deferred meanwhile are applied before it ends.
    """
    _m.busy = True
    try:
        done = change(*args)
        if _m.later:
            _apply_later()
        return done
    finally:
        _m.busy = False  # first in the block: no interrupt is delivered before it
        _m.marking = None


def _apply_later() -> None:
    """Apply the changes re-entrant entries deferred (critical section).

    Each change is idempotent and leaves the queue only once applied: one an
    interrupt cut short is applied again by the next critical section.
    """
    later = _m.later
    while later:
        later[0]()
        later.popleft()


def _run_after() -> None:
    """Run the cancellations re-entrant entries deferred, now that no critical section is open.

    In a critical section (this thread re-entered its own, or another thread's
    is open) it leaves them to the operation that opened it.
    """
    if _m.busy or not _m.after:
        return
    outcome = _Outcome()
    _run_claimed(_m.after, outcome, log=False)
    _reraise(outcome.escaped)


# -- running callbacks ----------------------------------------------------------


class _Outcome:
    """What a run of callbacks must raise once the rest has run."""

    __slots__ = ("escaped",)

    def __init__(self) -> None:
        self.escaped: BaseException | None = None


def _describe(callback: Callback) -> str:
    try:
        return repr(callback)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        return f"<{type(callback).__qualname__} object (repr failed)>"


def _log_failure(callback: Callback) -> None:
    """Log the exception being handled, raised by ``callback``. Never raises."""
    # A logger that fails in turn must not break the traversal either.
    with contextlib.suppress(BaseException):
        _log.exception("cancel callback raised", callback=_describe(callback))


def _run_claimed(queue: collections.deque[_Call], outcome: _Outcome, *, log: bool) -> None:
    """Run every callable of ``queue`` in this thread, each exactly once, even under Ctrl-C.

    A callable leaves the queue in the very step that calls it (between the
    ``popleft`` of the ``for`` and the call, no interrupt is delivered): an
    interrupt landing between two leaves the rest queued, and one landing as a
    callable starts, before its first line, puts it back at the front, since
    it never ran. Either propagates; a run resumed later goes on with the rest.
    With ``log``, what a callable raises is logged and the first SystemExit or
    KeyboardInterrupt is kept in ``outcome``; without, the first exception is.
    """
    popleft = queue.popleft
    try:
        for callback in iter(popleft, _NOTHING):
            try:
                callback()
            except BaseException as exc:
                # No call may come before the requeue: an interrupt could land on it.
                tb = exc.__traceback__
                entry = None if tb is None else tb.tb_next
                if (
                    entry is not None
                    and entry.tb_lasti >= 0
                    and entry.tb_frame.f_code.co_code[entry.tb_lasti] == _RESUME
                ) or (entry is None and not log):
                    # Interrupted as it started, or (one of this module's, all
                    # Python) refused before it began (RecursionError): it never ran.
                    queue.appendleft(callback)
                    raise
                if log:
                    _log_failure(callback)
                if outcome.escaped is None and (
                    not log or isinstance(exc, SystemExit | KeyboardInterrupt)
                ):
                    outcome.escaped = exc
    except IndexError:  # popleft on the empty queue: every callable ran
        if queue:  # an interrupt's own IndexError
            raise


def _reraise(escaped: BaseException | None) -> None:
    if escaped is not None:
        raise escaped


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
    any thread, re-entrantly) appends to the queue, adds to sets, and adds and
    removes its cancellation in ``_expecting`` (idempotent: a hand-over cut
    short and repeated moves nothing twice).
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
        # Background cancellations between announcing (as their roots are
        # marked) and their hand-over: whoever saw a token of theirs cancelled
        # must not find the executor idle.
        self._expecting: set[_Traversal] = set()
        self._watchers = 0  # threads in wait_idle()
        self._names = itertools.count(1)

    def expect(self, tr: _Traversal) -> None:
        """A background cancellation begins: its `submit` follows."""
        with self._lock:
            tr.announced = True  # before the add: an interrupt lands after it, if at all
            self._expecting.add(tr)

    def submit(self, tr: _Traversal) -> None:
        """Hand over ``tr``'s callbacks (they start in this order) and end its `expect`.

        Runs no user code. Idempotent: a hand-over cut short is completed by the next.
        """
        thread = None
        with self._lock:
            before = len(self._queue)
            callbacks = tr.callbacks
            if callbacks:
                with contextlib.suppress(IndexError):  # popleft on the empty queue: all moved
                    self._queue.extend(iter(callbacks.popleft, _NOTHING))
            self._expecting.discard(tr)
            added = len(self._queue) - before
            if not self._queue:  # the common case: a tree without user callbacks
                if self._watchers and self._is_idle():
                    self._drained.notify_all()
            else:
                if added > 0 and self._idle:
                    self._work.notify(added)
                # Even with nothing added: a hand-over repeated after an interrupt
                # may find a thread it began to start missing.
                thread = self._reserve()
        if thread is not None:
            self._start(thread)

    def _is_idle(self) -> bool:
        return not (self._queue or self._running or self._expecting)

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
        # The callbacks are user code: the program's mask, even when a helper
        # thread (the deadline timer, a server's) cancelled.
        thread = threading.Thread(
            target=user_code_thread(self._serve),
            name=f"lifecycle-callbacks-{next(self._names)}",
            daemon=True,
        )
        self._threads.add(thread)
        self._starting.add(thread)
        return thread

    def _start(self, thread: threading.Thread) -> None:
        try:
            thread.start()
        except BaseException as exc:
            # RuntimeError: no more threads, or the interpreter is shutting down.
            # Anything else: an interrupt (Ctrl-C) in the middle of the start.
            if not thread.is_alive():  # it never began: the next hand-over starts one
                with self._lock:
                    self._threads.discard(thread)
                    self._starting.discard(thread)
            if not isinstance(exc, RuntimeError):
                raise
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
            try:
                callback()
            except BaseException:  # noqa: BLE001 - logged; the other callbacks go on
                _log_failure(callback)
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
    timeout. A cancellation that Ctrl-C broke off for good is finished first.

    Example::

        cancel_in_background(source, "shutdown")
        assert wait_callbacks_idle(5.0)

    Added in 0.1.
    """
    seconds = _check_timeout(timeout)
    if _m.abandoned:
        _adopt_abandoned()
    return _executor.wait_idle(_clamp(seconds))


# -- the deadline timer ----------------------------------------------------------

_timers: weakref.WeakSet[DeadlineTimer] = weakref.WeakSet()  # reinitialised at fork


class DeadlineTimer:
    """The one timer that fires the deadlines of many tokens.

    The process has one, started lazily on the first deadline. It only marks
    tokens cancelled and wakes their waiters: their user callbacks run on the
    lifecycle callback threads, so the timer thread never runs user code, a
    slow callback delays no other deadline's cancellation or waiters, and an
    error of the timer's own is logged ("deadline timer failed; it keeps
    running") and the loop goes on. The callbacks themselves share
    `CALLBACK_THREADS` (16) threads: while 16 callbacks block, the next ones
    queue (their tokens are cancelled and their waiters woken on time).
    A timeout too long for the OS to wait for (``timeout=1e10``) is waited for
    as long as it can. A threaded timer goes on in a forked child.

    Tests create their own with a fake ``clock`` and ``threaded=False``, then
    call `fire_due` after advancing the clock, so deadline logic runs with no
    sleep and no timer thread; `wait_callbacks_idle` waits for the callbacks.
    Deadlines of two clocks never meet in one token: a source whose parents'
    deadlines, or whose own, are on timers of different clocks is refused; so
    is a deadline of its own, without ``timer=``, under parents without one
    whose timers are on different clocks (which clock would count it?).

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
        # The timer thread sleeps on it. The heap changes only under both _LOCK
        # (in a critical section) and this; the timer thread reads it under this.
        self._cond = threading.Condition(threading.RLock())
        # Heap of (deadline, seq, weakref to token). Entries of tokens that
        # were cancelled otherwise stay until due, counted in _stale, and are
        # swept out when they are more than half of the heap.
        self._heap: list[tuple[float, int, weakref.ref[CancelToken]]] = []
        self._stale = 0
        self._thread: threading.Thread | None = None
        # Tokens with a pending deadline that hold a registration (their own, or
        # one they anchor): held strongly here, so the heap's weak entry still
        # finds them. Guarded by _LOCK.
        self._keep: set[CancelToken] = set()
        _timers.add(self)

    def __repr__(self) -> str:
        return f"<DeadlineTimer pending={len(self._heap)} threaded={self._threaded}>"

    def _schedule(self, token: CancelToken, deadline: float) -> None:
        """Add ``token``'s deadline (critical section)."""
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
        self._thread = threading.Thread(
            target=helper_thread(self._loop), name="lifecycle-deadlines", daemon=True
        )
        self._thread.start()

    def _dropped(self, _ref: object) -> None:
        # A weakref callback may run anywhere, even inside a critical section of
        # this thread: a plain increment, no lock (the count is a hint).
        self._stale += 1

    def _forget(self) -> None:
        """Count one heap entry whose token no longer needs it (critical section)."""
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
        with _LOCK:
            if _m.busy:  # re-entered inside a critical section: the next call fires them
                with self._cond:
                    return self._heap[0][0] if self._heap else None
            due, following = _in_section(self._take_due, now)
        try:
            if due is not None:
                due()
        finally:
            _run_after()
        return following

    def _take_due(self, now: float) -> tuple[_Traversal | None, float | None]:
        """Move the due tokens to a background cancellation, known to all (critical section).

        Each entry leaves the heap after its token joined the cancellation, so an
        interrupt loses no deadline.
        """
        due: _Traversal | None = None
        with self._cond:
            heap = self._heap
            while heap and heap[0][0] <= now:
                token = heap[0][2]()
                if token is not None and not token.cancelled:
                    if due is None:
                        due = _Traversal([], background=True, owner=None)
                        # Abandoned until this thread drives it.
                        _m.waking[due] = _m.abandoned[due] = None
                    due.stack.append((token, DEADLINE_EXCEEDED))
                elif self._stale:
                    self._stale -= 1
                heapq.heappop(heap)
            following = heap[0][0] if heap else None
        return due, following

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
                            self._cond.wait(_clamp(delay))
            except BaseException:  # noqa: BLE001 - the one timer must outlive any error
                with contextlib.suppress(BaseException):
                    _log.exception("deadline timer failed; it keeps running")
                with contextlib.suppress(BaseException), self._cond:
                    self._cond.wait(_TIMER_RETRY)  # no busy loop on an error that repeats

    def _after_fork(self) -> None:
        # The thread does not exist in a forked child; the lock may be held by
        # a thread that vanished. Start over with fresh ones.
        self._cond = threading.Condition(threading.RLock())
        self._thread = None
        if self._threaded and self._heap:
            self._start_thread()


_default_timer = DeadlineTimer()


def _reinit_after_fork() -> None:
    global _LOCK, _PROGRESS
    _LOCK = threading.RLock()
    _PROGRESS = threading.Condition(threading.RLock())
    _m.after_fork(_get_ident())
    _executor._reset()
    for timer in list(_timers):
        timer._after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_reinit_after_fork)


class _MixedTimer(DeadlineTimer):
    """The timer of a token whose undated parents are on timers of different clocks.

    It fires nothing: such a token has no deadline, and one of its own (or of a
    child that would inherit this timer) is refused until ``timer=`` says which
    clock to count on. Its clock equals no other, so no deadline can meet it.
    """

    def __init__(self, first: DeadlineTimer, second: DeadlineTimer) -> None:
        super().__init__(self._now, threaded=False)
        self.first, self.second = first, second

    def _now(self) -> float:
        return time.monotonic()

    def __repr__(self) -> str:
        return f"<DeadlineTimer of mixed clocks: {self.first!r} and {self.second!r}>"


def _no_clock_for(mixed: _MixedTimer) -> str:
    first, second = mixed.first, mixed.second
    while isinstance(first, _MixedTimer):  # name the timers the user made
        inner: _MixedTimer = first
        first, second = inner.first, inner.second
    return (
        f"a timeout or deadline needs one clock, and this token's parents are on "
        f"timers of different clocks: {first!r} (clock {first.clock!r}) and {second!r} "
        f"(clock {second.clock!r}); pass timer= (one of them) to say which clock it counts on"
    )


def _common_timer(parents: tuple[CancelToken, ...]) -> DeadlineTimer:
    """The first parent's timer, or a `_MixedTimer` if another one's is on another clock."""
    timer = parents[0]._timer
    for parent in parents[1:]:
        if parent._timer.clock != timer.clock:
            return _MixedTimer(timer, parent._timer)
    return timer


def _timer_for(
    parents: tuple[CancelToken, ...], timer: DeadlineTimer | None, own_deadline: bool
) -> DeadlineTimer:
    """The timer of a new token: ``timer``, or its parents'.

    Raises ValueError when the token would compare deadlines of two clocks:
    its parents' deadlines, and its own, must all be on timers of one clock;
    and when it has a deadline of its own, no ``timer``, and no dated parent
    to take the clock from, while its parents are on timers of different
    clocks (taking either would count the deadline on a clock nobody advances).
    """
    if not parents:
        return _default_timer if timer is None else timer
    dated = [p._timer for p in parents if p._deadline is not None]
    if timer is None:
        if dated:
            timer = dated[0]
        else:
            timer = parents[0]._timer if len(parents) == 1 else _common_timer(parents)
            if own_deadline and isinstance(timer, _MixedTimer):
                raise ValueError(_no_clock_for(timer))
    for other in dated if dated or own_deadline else ():
        if other.clock != timer.clock:
            raise ValueError(
                f"tokens from different DeadlineTimers cannot be linked: this token's "
                f"deadline is on {timer!r} (clock {timer.clock!r}), a parent's on "
                f"{other!r} (clock {other.clock!r}); pass the same timer= to every "
                f"source of the tree, or drop one of the deadlines"
            )
    return timer


# -- registrations and what keeps them alive -------------------------------------


def _anchors_of(token: CancelToken) -> tuple[CancelToken, ...]:
    """The tokens that hold ``token`` while it has a registration (critical section).

    The nearest root or own-deadline token on each path up. Computed once, on
    the first registration, for ``token`` and for the ancestors lacking it
    (iteratively: any depth); a live token's anchors never change.
    """
    stack = [token]
    while stack:
        current = stack[-1]
        missing = [p for p in current._parents if p._anchors is None]
        if missing:
            stack.extend(missing)
            continue
        stack.pop()
        if current._anchors is None:
            _set_anchors(current, _nearest_anchors(current._parents))
    anchors = token._anchors
    assert anchors is not None
    return anchors


def _nearest_anchors(parents: tuple[CancelToken, ...]) -> tuple[CancelToken, ...]:
    """Each parent itself if it anchors (a root, or its own deadline), else its anchors."""
    found: dict[CancelToken, None] = {}
    for parent in parents:
        if parent._timer_entry or not parent._parents:
            found[parent] = None
        else:
            found.update(dict.fromkeys(parent._anchors or ()))
    return tuple(found)


def _sync_keep(token: CancelToken) -> None:
    """Keep ``token`` in its timer's ``_keep`` iff it must be (critical section).

    A token with a pending deadline is kept iff it holds a registration: its own
    or one it anchors.
    """
    if token._timer_entry:
        keep = token._timer._keep
        if not token.cancelled and (token._callbacks or token._pinned):
            keep.add(token)
        else:
            keep.discard(token)


def _sync_pin(token: CancelToken) -> None:
    """Bring the pins of ``token`` up to date (critical section). Idempotent.

    Invariant: a live token is in each of its anchors' ``_pinned`` (``_held``
    says it is) iff it has a registered callback. ``_pinned`` is None rather
    than empty. ``_held`` changes last, so a run cut short is redone in full.
    """
    wanted = not token.cancelled and bool(token._callbacks)
    if wanted is token._held:
        return
    anchors = token._anchors
    for anchor in _anchors_of(token) if anchors is None else anchors:
        pinned = anchor._pinned
        if wanted:
            if pinned is None:
                _set_pinned(anchor, pinned := set())
            pinned.add(token)
        elif pinned is not None:
            pinned.discard(token)
            if not pinned:
                _set_pinned(anchor, None)
        if anchor._timer_entry:
            _sync_keep(anchor)
    if token._timer_entry:
        _sync_keep(token)
    _set_held(token, wanted)


# -- cancellations ------------------------------------------------------------------


class _Traversal(_Outcome):
    """One cancellation's work, kept where an interrupt cannot lose it.

    ``stack`` holds the (token, reason) pairs still to mark. Marking a token
    moves its wake-ups and user callbacks and its thread waiters' event here,
    unlinks it, and replaces it on the stack by its children, in that order:
    every step can be repeated, so a walk cut short is resumed by the next
    with nothing lost and nothing twice. Then the wake-ups run, the events are
    set, and the user callbacks run in the owner's thread, or go to the
    callback threads when ``background``. Calling it drives it to the end.
    """

    __slots__ = (
        "announced",
        "background",
        "callbacks",
        "events",
        "marked",
        "owner",
        "phase",
        "stack",
        "waits",
        "wakeups",
    )

    def __init__(
        self, stack: list[tuple[CancelToken, str]], *, background: bool, owner: int | None
    ) -> None:
        super().__init__()
        self.stack = stack
        self.background = background
        self.owner = owner  # the thread driving it; None: nobody does (adopt it)
        self.phase = _MARKING
        self.marked = 0  # tokens it marked: its progress
        self.wakeups: collections.deque[Callback] | None = None
        self.callbacks: collections.deque[Callback] | None = None
        self.events: list[threading.Event] | None = None
        # Cancellations that marked part of this one's tree first: it returns
        # only once they have woken (run their wake-ups, woken their waiters).
        self.waits: list[_Traversal] | None = None
        self.announced = False  # the executor expects this one's hand-over

    def __call__(self) -> None:
        """Drive it to the end in this thread; raise what must reach the caller."""
        self.owner = _get_ident()
        try:
            if _m.abandoned:
                _m.abandoned.pop(self, None)
            self._finish()
        finally:
            # No call in these lines: no interrupt is delivered before the owner is
            # cleared. One that began marking and stopped short is left to adoption.
            if self.phase != _DONE and (self.phase != _MARKING or self in _m.waking):
                _m.abandoned[self] = None
            self.owner = None
            if _m.watching:
                _notify_progress()

    def _finish(self) -> None:
        interrupt: BaseException | None = None
        progress: tuple[int, ...] | None = None
        while True:
            try:
                if not self._drive():
                    return  # deferred: the interrupted operation drives it
                break
            except BaseException as exc:
                if interrupt is None:
                    interrupt = exc
                now = self._progress()
                if now == progress:
                    raise  # interrupted without progress: the next cancellation adopts it
                progress = now
        escaped = interrupt if interrupt is not None else self.escaped
        self.escaped = None
        _reraise(escaped)

    def _progress(self) -> tuple[int, ...]:
        return (
            self.phase,
            self.marked,
            len(self.stack),
            len(self.wakeups or ()),
            len(self.callbacks or ()),
        )

    def _drive(self) -> bool:
        """Take every step left; False if deferred (re-entered inside a critical section)."""
        if self.phase == _MARKING:
            with _LOCK:
                if _m.busy:
                    _m.after.append(self)
                    return False
                _in_section(self._mark)
        if self.phase == _WAKING:
            self._wake()
            self.phase = _WOKEN
            _m.waking.pop(self, None)
            if _m.watching:
                _notify_progress()
        if self.phase == _WOKEN:
            if self.waits:
                self._wait_for_others()
            if self.background:
                if self.announced or self.callbacks:
                    _executor.submit(self)
            elif self.callbacks:
                _run_claimed(self.callbacks, self, log=True)
            self.phase = _DONE
            if _m.waking:  # an entry an interrupt left behind
                _m.waking.pop(self, None)
        return True

    def _mark(self) -> None:
        """Mark this tree, and finish the marking of any other (critical section)."""
        _m.waking[self] = None
        if (
            self.background
            and not self.announced
            and any(t._callbacks or t._children for t, _ in self.stack)
        ):
            _executor.expect(self)
        _m.marking = self
        while True:
            for tr in list(_m.waking):
                if tr.stack:
                    tr._walk(self)
            if not _m.later:
                break
            _apply_later()
        self.phase = _WAKING

    def _walk(self, driver: _Traversal) -> None:
        """Mark the tokens of ``stack`` and collect their work (critical section)."""
        stack = self.stack
        while stack:
            token, reason = stack[-1]
            if not token.cancelled:
                _set_reason(token, reason)
                _set_cancelled(token, True)  # after the reason: whoever sees True sees it
                self.marked += 1
            elif driver is self and self.waits is None:
                # Another cancellation marked it first: wait until that one has woken.
                self.waits = [t for t in list(_m.waking) if t is not self and t.phase < _WOKEN]
            table = token._callbacks
            if table:
                keys = list(table)
                wakeups = self.wakeups
                if wakeups is None:
                    self.wakeups = wakeups = collections.deque()
                callbacks = self.callbacks
                if callbacks is None:
                    self.callbacks = callbacks = collections.deque()
                # One C-level call each moves them: popped from the table as queued here.
                if min(keys) > 0:  # user callbacks only, the common case
                    callbacks.extend(_popping(table, keys))
                else:
                    wakeups.extend(_popping(table, [k for k in keys if k < 0]))
                    callbacks.extend(_popping(table, [k for k in keys if k > 0]))
            event = token._event
            if event is not None:
                events = self.events
                if events is None:
                    self.events = events = []
                events.append(event)  # twice, after an interrupt: setting it twice is harmless
            parents = token._parents
            if parents:
                for parent in parents:
                    siblings = parent._children
                    if siblings is not None:
                        siblings.discard(token)
                _set_parents(token, ())
            if token._held:
                _sync_pin(token)
            if token._timer_entry:
                token._timer._keep.discard(token)
                token._timer._forget()
                _set_timer_entry(token, False)
            children = token._children
            cause = token._reason if token._reason is not None else reason
            stack[-1:] = [(child, cause) for child in children] if children else ()
            if children is not None:
                _set_children(token, None)

    def _wake(self) -> None:
        """Run the wake-ups left, then wake the thread waiters (any thread may help)."""
        if self.wakeups:
            _run_claimed(self.wakeups, self, log=True)
        for event in self.events or ():
            if not event.is_set():  # a helper set it: no need for its lock
                event.set()

    def _wait_for_others(self) -> None:
        """Return once every cancellation in ``waits`` has woken, helping each first.

        Helping (its wake-ups are taken one by one, each runs once; its events are
        set) leaves it at most a wake-up it is running. That one is waited for,
        but never where waiting could deadlock, where it is helped only: a
        cancellation suspended beneath this call in this thread; this thread
        holding a lock of this module (a signal handler interrupted code holding
        it); or this call made from a wake-up of a cancellation this thread
        drives, which the other may be waiting on in turn (two threads' wake-ups
        each cancelling again the tree the other is waking).
        """
        me = _get_ident()
        inside: bool | None = None  # this thread is in a wake-up of its own cancellation
        for other in self.waits or ():
            while other.phase < _WOKEN:
                owner = other.owner
                if owner is None:  # its thread gave up: finish it here
                    _adopt(other)
                    continue
                other._wake()
                if owner == me or _holds(_LOCK) or _holds(_executor._lock):
                    break
                if inside is None:
                    inside = any(
                        t.owner == me and t.phase == _WAKING
                        for t in list(_m.waking)
                        if t is not self
                    )
                if inside:
                    break
                with _PROGRESS:
                    _m.watching += 1
                    try:
                        if other.phase < _WOKEN and other.owner is not None:
                            _PROGRESS.wait(_WAIT_POLL)
                    finally:
                        _m.watching -= 1
        self.waits = None


def _holds(lock: object) -> bool:
    """Whether this thread holds the RLock ``lock``."""
    # RLock._is_owned is what threading.Condition relies on; typeshed omits it.
    return bool(lock._is_owned())  # type: ignore[attr-defined]


def _popping(table: dict[int, Callback], keys: list[int]) -> Iterator[Callback]:
    """The callbacks of ``keys``, each popped from ``table`` as it is taken (lazily, in C).

    A key that a re-entrant detach popped meanwhile is skipped.
    """
    return cast(Iterator[Callback], filter(_present, map(table.pop, keys, _NONES)))


def _notify_progress() -> None:
    with _PROGRESS:
        _PROGRESS.notify_all()


def _adopt(tr: _Traversal) -> None:
    """Finish ``tr`` in this thread, unless some thread drives it already."""
    with _LOCK:
        if tr.owner is not None or tr.phase == _DONE:
            return
        tr.owner = _get_ident()
    try:
        tr()
    finally:
        tr.owner = None  # also when the call never began (an interrupt as it started)


def _adopt_abandoned() -> None:
    """Finish the cancellations whose thread gave up (interrupted without progress)."""
    if _m.busy:
        return
    abandoned = _m.abandoned
    for tr in list(abandoned):
        if tr.phase == _DONE:
            abandoned.pop(tr, None)
        elif tr.owner is None and tr not in _m.after:  # a queued one runs where it was queued
            _adopt(tr)


def _cancel_soon(token: CancelToken, reason: str) -> None:
    """Cancel ``token`` from inside a critical section (critical section)."""
    if not (token._callbacks or token._children or token._event or token._held):
        # Nothing registered, below or waiting: the two stores are all of it.
        if not token.cancelled:
            _set_reason(token, reason)
            _set_cancelled(token, True)
        return
    marking = _m.marking
    if marking is not None:
        marking.stack.append((token, reason))  # joins the walk under way
    else:
        _m.after.append(_Traversal([(token, reason)], background=False, owner=_get_ident()))


def _attach(
    token: CancelToken, parents: tuple[CancelToken, ...], at: float | None, expired: bool
) -> None:
    """Link a new token under its parents and schedule its deadline ``at`` (critical section).

    A parent already cancelled cancels it instead, with its reason; so does an
    ``expired`` deadline. Idempotent but for a second heap entry, which is harmless.
    """
    cause = DEADLINE_EXCEEDED if expired else None
    for parent in parents:
        if parent.cancelled:
            cause = parent._reason  # a parent's reason comes first: it was cancelled before
            break
    if cause is not None:
        _cancel_soon(token, cause)
        return
    for parent in parents:
        children = parent._children
        if children is None:
            _set_children(parent, children := weakref.WeakSet())
        children.add(token)
    _set_parents(token, parents)
    if at is not None:
        token._timer._schedule(token, at)
        _set_timer_entry(token, True)


def _cancel_tree(root: CancelToken, reason: str, *, background: bool) -> None:
    """Cancel ``root`` and its descendants, then run their callbacks.

    Iterative, so depth is unlimited. The whole tree is marked before any
    callback runs; the wake-ups run here; user callbacks run here too, or on
    the callback threads when ``background``. Only in the first case can a
    SystemExit or KeyboardInterrupt of a callback reach the caller, after all
    of it (a Ctrl-C's reaches it in both).

    Thread waiters are woken after the wake-ups ran: a thread blocked in
    `CancelToken.wait` wakes to find every library wake-up of the tree done
    (a server's drain flag set).

    In the background, the executor is told a hand-over follows before a
    root is marked, if a root has callbacks or children (only then can there
    be anything to hand over): a lone leaf, a request's token, costs no
    executor round trip.
    """
    m = _m
    if root.cancelled and not (m.waking or m.abandoned or m.after):
        return  # cancelled before, and none is under way that it would wait for or finish
    try:
        _Traversal([(root, reason)], background=background, owner=_get_ident())()
    finally:
        _run_after()
    if _m.abandoned:
        _adopt_abandoned()


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
    `CancelToken.wait_async` has its wake-up scheduled; if another thread is
    cancelling the tree already, it returns once that one has done all this.
    The user callbacks (`CancelToken.on_cancel`) are handed to the lifecycle
    callback threads: nothing the user registered runs in the caller, so a
    callback that blocks or logs cannot hold it up or deadlock it. What the
    runtime uses from its control thread or loop (shutdown, stop phases,
    abandoning a call).

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


# -- tokens ---------------------------------------------------------------------------


def _wake_soon(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
    # RuntimeError: the loop was closed meanwhile, nobody waits any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_resolve, waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _already_fired() -> bool:
    return False


def _never_fires() -> bool:
    return True


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
            Read-only (assigning it raises AttributeError); cancel through
            the `CancelSource`.

    Added in 0.1.
    """

    __slots__ = (
        "__weakref__",
        "_anchors",
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
    # key -> callback (a negative key: a wake-up). Created on the first
    # registration, then never replaced: a detach function holds this dict.
    _callbacks: dict[int, Callback] | None
    _children: weakref.WeakSet[CancelToken] | None
    _pinned: set[CancelToken] | None  # the registered tokens it anchors: held strongly
    _held: bool  # this token is in its anchors' _pinned
    _anchors: tuple[CancelToken, ...] | None  # see _anchors_of; None until needed
    _event: threading.Event | None
    _timer_entry: bool  # its own deadline is on its timer's heap (pending)
    _timer: DeadlineTimer
    _deadline: float | None
    _parents: tuple[CancelToken, ...]

    def __init__(self) -> None:
        raise TypeError("CancelToken is not created directly; use CancelSource().token")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(
            f"CancelToken.{name} is read-only; cancel through its CancelSource "
            f"(source.cancel(reason))"
        )

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    @classmethod
    def _make(
        cls,
        parents: tuple[CancelToken, ...],
        timeout: float | None,
        timer: DeadlineTimer | None,
        deadline: float | None = None,
    ) -> CancelToken:
        live = tuple(p for p in parents if p is not _NEVER)
        timer = _timer_for(live, timer, timeout is not None or deadline is not None)
        inherited: float | None = None
        for parent in live:
            if parent._deadline is not None and (inherited is None or parent._deadline < inherited):
                inherited = parent._deadline
        now = timer.clock()
        own = None if timeout is None else now + timeout
        if deadline is not None and (own is None or deadline < own):
            own = deadline
        self = object.__new__(cls)
        _set_cancelled(self, False)
        _set_reason(self, None)
        _set_callbacks(self, None)
        _set_children(self, None)
        _set_pinned(self, None)
        _set_held(self, False)
        _set_anchors(self, None)
        _set_event(self, None)
        _set_timer_entry(self, False)
        _set_timer(self, timer)
        _set_parents(self, ())
        at: float | None = None
        expired = False
        if own is not None and (inherited is None or own < inherited):
            # Only a deadline earlier than every parent's needs the timer: a
            # parent's own expiry reaches the child through the tree with the
            # same reason.
            _set_deadline(self, own)
            expired = own <= now  # a zero timeout, or a deadline already past
            at = None if expired or math.isinf(own) else own
        else:
            _set_deadline(self, inherited)
        with _LOCK:
            if _m.busy:
                # Re-entered inside a critical section (a signal handler, a
                # finalizer): born cancelled at once if a parent is already (the
                # token is new: nothing else to touch), else it links in later.
                if expired or any(p.cancelled for p in live):
                    _attach(self, live, at, expired)
                else:
                    _m.later.append(functools.partial(_attach, self, live, at, False))
                return self
            _in_section(_attach, self, live, at, expired)
        if _m.after:
            _run_after()
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
        """The deadline as a ``time.monotonic()`` value, or None for no deadline.

        An upper bound: the token may be cancelled earlier by its source, a
        parent or a linked token. A request token handed out during an app's
        drain delay is one such case: the server's stop cancels it with
        `DEADLINE_EXCEEDED` a margin before its cut, once it knows when that is.
        """
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
        as it passes. A timeout longer than the OS can wait for waits as long
        as it can (``threading.TIMEOUT_MAX``). Use `wait_async` in asyncio
        code instead.

        Example::

            while not token.wait(5.0):   # every 5 s until shutdown
                flush_metrics()
        """
        seconds = _check_timeout(timeout)
        with _LOCK:
            if self._event is None and not self.cancelled:
                _set_event(self, threading.Event())
            event = self._event
        # Checked after the lock too: a cancel that ran re-entrantly (a signal
        # handler) before the event existed will not set it.
        if self.cancelled or event is None:
            return True
        return event.wait(_clamp(seconds))

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
            if seconds is None or seconds >= _TIMEOUT_MAX:
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
        token: detach callbacks you no longer need. The token that
        `current_token()` returns outside any component is never cancelled:
        a registration on it is not kept at all (its detach returns True).

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
        if self is _NEVER:
            return _never_fires  # it never fires: nothing to keep
        key = -next(_ids) if inline else next(_ids)
        with _LOCK:
            if _m.busy:
                # Re-entered inside a critical section (a signal handler): the
                # insert is one step, the pin follows when the section ends.
                table = _insert(self, key, callback, nested=True)
                if table is not None:
                    return _detacher(self, table, key)
                late = _Traversal([], background=False, owner=_get_ident())
                late.phase = _WAKING if inline else _WOKEN
                queue = collections.deque((callback,))
                late.wakeups, late.callbacks = (queue, None) if inline else (None, queue)
                _m.after.append(late)  # runs once the interrupted operation ends
                return _already_fired
            table = _in_section(_insert, self, key, callback, False)
        if _m.after:
            _run_after()
        if table is None:
            outcome = _Outcome()
            _run_claimed(collections.deque((callback,)), outcome, log=True)
            _reraise(outcome.escaped)
            return _already_fired
        return _detacher(self, table, key)


def _insert(
    token: CancelToken, key: int, callback: Callback, nested: bool
) -> dict[int, Callback] | None:
    """Register ``callback`` under ``key``; None if ``token`` is cancelled (critical section).

    ``nested``: re-entered inside another critical section, whose end updates the pin.
    """
    if token.cancelled:
        return None
    table = token._callbacks
    if table is None:
        _set_callbacks(token, table := {})
    table[key] = callback
    if not token._held:
        if nested:
            _m.later.append(functools.partial(_sync_pin, token))
        else:
            _sync_pin(token)
    return table


def _slot_setter(name: str) -> Callable[[CancelToken, Any], None]:
    """Write a slot of a token past its read-only ``__setattr__`` (as fast as can be)."""
    setter: Callable[[CancelToken, Any], None] = CancelToken.__dict__[name].__set__
    return setter


_set_cancelled: Final = _slot_setter("cancelled")
_set_reason: Final = _slot_setter("_reason")
_set_callbacks: Final = _slot_setter("_callbacks")
_set_children: Final = _slot_setter("_children")
_set_pinned: Final = _slot_setter("_pinned")
_set_held: Final = _slot_setter("_held")
_set_anchors: Final = _slot_setter("_anchors")
_set_event: Final = _slot_setter("_event")
_set_timer_entry: Final = _slot_setter("_timer_entry")
_set_timer: Final = _slot_setter("_timer")
_set_deadline: Final = _slot_setter("_deadline")
_set_parents: Final = _slot_setter("_parents")


def _detacher(token: CancelToken, table: dict[int, Callback], key: int) -> Callable[[], bool]:
    """The function `CancelToken.on_cancel` returns: detaches one registration, once.

    It holds the token's callback table, not the token: holding it does not
    keep the token alive, and it still tells a registration that ran (gone
    from the table) from one that never did. The pop is one step, so a
    detach landing anywhere in a cancellation is exact: whichever pops the
    callback first owns it.
    """
    ref = weakref.ref(token)

    def detach() -> bool:
        with _LOCK:
            found = table.pop(key, None) is not None
            if found and not table and (held := ref()) is not None and held._held:
                if _m.busy:  # re-entered inside a critical section: unpin when it ends
                    _m.later.append(functools.partial(_sync_pin, held))
                else:
                    _in_section(_sync_pin, held)
        if _m.after:
            _run_after()
        return found

    return detach


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
        ValueError: ``timeout`` is negative or NaN, ``deadline`` is NaN, or
            the token would compare deadlines of timers on different clocks,
            or it has a deadline of its own, no ``timer``, and parents on
            timers of different clocks (pass ``timer=`` to pick the clock).

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
        `cancel_in_background` to hand them to the callback threads); if
        another thread is cancelling the tree already, this returns once that
        one has marked it and run its wake-ups. A ``SystemExit`` or
        ``KeyboardInterrupt`` raised by a callback is raised here, once
        everything else has run; other errors are logged. A Ctrl-C landing
        in the middle is raised once the cancellation is complete.

        Callable from a signal handler: landing inside another token
        operation of the same thread, it returns at once and the cancel
        happens as that operation ends. But not meant for one: the callbacks
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


_NEVER: Final = CancelToken._make((), None, None)
CurrentValue = CancelToken | functools.partial[Any] | tuple[Any, ...]
"""What `_current` holds: a token, or a request's record (below)."""
_current: ContextVar[CurrentValue] = ContextVar("lifecycle_current_token")
# What is current is a token, or a request's record: a tuple ``(a weak
# reference to its scope, n, token)`` made per request
# (`lifecycle.WSGIMiddleware`'s), or a
# ``functools.partial`` whose first argument is the server that made it and
# answers ``server._lc_token_of(record)`` (`lifecycle.ASGIMiddleware`'s, whose
# record is the request's ``send`` too). A server that writes its record there
# says with one context variable both the request's token and which request
# the context belongs to (a context copied from it, a thread it started, is
# told apart from later requests).
# Its methods, bound once for the request paths of the servers: a method call on
# `_current` imported into another module compiles to an attribute load (CPython
# 3.11), which makes a bound method object every call; these are called as names.
_get_current = _current.get
_set_current = _current.set
_reset_current = _current.reset


def _token_of_record(record: functools.partial[Any] | tuple[Any, ...]) -> CancelToken:
    if record.__class__ is tuple:
        own: CancelToken = record[2]
        return own
    token: CancelToken = record.args[0]._lc_token_of(record)  # type: ignore[union-attr]
    return token


def current_token() -> CancelToken:
    """The token of the component call or request being served in this thread or task.

    The runners set it around every ``start``/``run``/``stop`` call and the
    servers around every request, so deep code can honour shutdown and
    deadlines without a parameter threaded through every call. Outside any of
    them it returns a token that is never cancelled (never None); callbacks
    registered on that one are not kept, as they can never run.

    Example::

        def query(sql):
            token = lifecycle.current_token()
            return db.execute(sql, timeout=token.remaining())
    """
    value = _current.get(_NEVER)
    kind = value.__class__
    if kind is tuple or kind is functools.partial:
        return _token_of_record(value)  # type: ignore[arg-type]
    return value  # type: ignore[return-value]


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
