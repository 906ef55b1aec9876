"""The stop sequence of every server kind, written once: sans-I/O, with a sync and an async driver.

A server that stops must not lose a request, and must stop by its deadline.
The order of the steps decides both; it is the same for a threaded HTTP
server, an asyncio one and a middleware inside someone else's server. So the
order lives here, once, as a state machine that owns no clock, no thread and
no socket (the scheduler's trick): a driver feeds it the time and what work
is left (`Work`) and it answers with the next step (an action). The server
carries each step out through a small set of operations (`SyncStopOps`,
`AsyncStopOps`); `drive_sync` and `drive_async` run the loop between the two.
The sequence::

    shutdown requested ──► DRAIN: keep accepting and serving, but every response
    │                      says "Connection: close" and its connection closes
    │                      after it (until stop: the drain delay)
    stop(token) ──► Drain                   (again, for a stop without a shutdown);
                                            requests begun from now on are due a
                                            margin before the cut (request_deadline)
                    CloseListener           take in what the kernel queued, once
                                            (at most a backlog's worth), then close
                                            the listening socket itself
                    CloseIdle               close the keep-alive connections that wait
                                            for a request with nothing buffered
                    Wait("ordinary")        until only long-lived requests remain
                    EndLongLived            cancel the long-lived requests' tokens
                    Wait("requests")        until no request remains
                    Wait("connections")     until every connection ended (CloseIdle
                                            before each wait)
                    Join                    the handler threads or tasks (bounded)
                    Finish(cut=())          the stop returns normally
          at deadline - CUT_MARGIN, from any Wait or the Join:
                    Cut                     end what remains, naming every request cut
                    Join                    bounded by half of what is left
                    Finish(cut=labels)      the stop raises DeadlineExceeded(name, labels)

Why each step exists, and in this order:

* **Drain before the listener closes.** A keep-alive client sends its next
  request on the connection it has; a response without ``Connection: close``
  followed by the server's close loses that next request (measured on
  uvicorn: 16 lost per stop with 16 keep-alive clients). So the responses say
  ``Connection: close`` from the shutdown request on, for as long as the load
  balancer needs to notice the readiness 503, and only then does the stop
  begin.
* **The listening socket itself is closed, after taking in the backlog.**
  Connections the kernel completed but the server did not accept yet are
  reset when the socket closes under them; merely ceasing to call
  ``accept()`` leaves them queued until exit, when they are reset too
  (measured on gunicorn gthread: 14-16 reset per stop). Taking them in first
  and then closing makes every later attempt a refusal, which a load
  balancer sees and routes around. The queue is taken in once, not until it
  is empty: under steady connect-per-request load it never is (a client
  served meanwhile connects again), and a server that waits for an empty
  queue keeps its listener open until the cut (measured: 16 clients, the
  stop ran its whole 5 s and cut what was in flight).
* **Idle keep-alive connections are closed only when nothing is buffered.**
  A connection waiting for its next request with no byte received can be
  closed: nothing is lost. One whose request is already arriving is served
  (with ``Connection: close``). Idle connections are never counted as
  unfinished requests: closing them at the cut is no loss.
* **Ordinary requests are waited for, long-lived ones are asked to end.** A
  stream, a long poll or a websocket would hold the stop until its deadline;
  once only such requests remain, their tokens are cancelled and their
  handlers end them (a request marked long-lived after this point is ended
  at once).
* **Handler threads and tasks are joined.** A process that exits with a
  handler still writing its response cuts that response (measured on the
  stdlib ``ThreadingHTTPServer``: 16 of 16 in-flight requests lost).
* **The cut comes `CUT_MARGIN` before the deadline.** At its deadline the
  runner abandons the stop; cutting 0.1 s earlier leaves the stop the time to
  shut the remaining connections, log what it cut by name and join with a
  bound, so it returns within its budget and says what it cut. With less
  than ``10 * CUT_MARGIN`` of budget, a tenth of the budget is kept instead.

One outcome contract for every server kind: anything cut ⇒ the stop raises
`DeadlineExceeded` whose ``.cut`` holds every request cut (the log line shows
the first 20) ⇒ the app exits with TIMEOUT; nothing cut ⇒ the stop returns
normally.

Added in 0.2.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Final, Literal, Protocol

import attrs

from .._core.errors import DeadlineExceeded
from .._core.log import get_logger
from .._core.tokens import CancelToken

__all__ = [
    "CUT_MARGIN",
    "FIRST_REQUEST_GRACE",
    "FORCE_JOIN",
    "LOG_CUT_LIMIT",
    "Action",
    "AsyncStopOps",
    "CloseIdle",
    "CloseListener",
    "Cut",
    "Drain",
    "EndLongLived",
    "Finish",
    "Join",
    "StopSequence",
    "SyncStopOps",
    "Wait",
    "Waiting",
    "Work",
    "cut_time",
    "drive_async",
    "drive_sync",
    "request_deadline",
]

_log = get_logger()

CUT_MARGIN: Final = 0.1
"""Seconds before the stop deadline at which what still runs is cut.

The runner abandons a stop at its deadline; cutting this much earlier lets the
stop end the remaining requests, log them by name and join its handlers within
its bound. With less than ``10 * CUT_MARGIN`` of budget, a tenth of the budget
is kept instead."""

FIRST_REQUEST_GRACE: Final = 1.0
"""Seconds a new connection may stay silent at stop before it counts as idle.

A connection accepted just before the listener closed usually has its first
request on the way; it is not closed before this grace has passed since it
was accepted. Every server kind applies the same grace."""

FORCE_JOIN: Final = 1.0
"""Seconds the handlers are joined after a cut when the stop has no deadline."""

LOG_CUT_LIMIT: Final = 20
"""How many cut requests the log line names (the exception names them all)."""

Waiting = Literal["ordinary", "requests", "connections"]
"""What a `Wait` waits for: no ordinary request left (long-lived ones may
remain); no request at all; no connection (handler) at all."""


@attrs.frozen
class Work:
    """What a server reports of the work left, at each step of its stop.

    Attributes:
        ordinary: requests in progress that the stop waits for.
        long_lived: requests in progress that are asked to end (streams, long
            polls, websockets: `mark_long_lived`).
        connections: open connections, or handler threads/tasks not yet ended,
            idle keep-alive ones included (0 for a middleware).
    """

    ordinary: int = 0
    long_lived: int = 0
    connections: int = 0

    @property
    def requests(self) -> int:
        """Every request in progress, ordinary or long-lived."""
        return self.ordinary + self.long_lived


# -- the actions -----------------------------------------------------------------------


@attrs.frozen
class Drain:
    """Turn draining on (it usually is already: since the shutdown request).

    Every response from now on says ``Connection: close``. Requests that
    begin from now on carry ``requests_by`` in their token (or the one the
    shutdown deadline gives, when that is earlier): when such a request must
    be done not to be cut (`request_deadline`), a margin before the cut.

    Attributes:
        deadline: the stop's deadline.
        requests_by: ``request_deadline`` of the stop: what the driver passes
            to the server's ``drain``.
    """

    deadline: float | None
    requests_by: float | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class CloseListener:
    """Take in the connections the kernel queued, then close the listening socket.

    By ``until`` at the latest: past it, close the socket under a stuck accept.
    """

    until: float | None


@attrs.frozen
class CloseIdle:
    """Close the idle connections that are safe to close (nothing buffered).

    The driver feeds `StopSequence.idle_closed` with when to look again (a
    connection still in its first-request grace, say), or None.
    """


@attrs.frozen
class Wait:
    """Block until ``what`` holds, the work may have changed, or ``until`` passes.

    Or the stop token is cancelled. Spurious returns are fine: the sequence
    looks again.
    """

    what: Waiting
    until: float | None


@attrs.frozen
class EndLongLived:
    """Cancel the tokens of the long-lived requests; from now on, one marked is ended at once."""


@attrs.frozen
class Cut:
    """End what remains (cancel every request token, shut every connection).

    The driver feeds `StopSequence.cut_done` with the labels of the requests
    cut (``"GET /slow (9.9s)"``, oldest first); idle connections are not
    requests and are not named.
    """


@attrs.frozen
class Join:
    """Join the handler threads or tasks by ``until``; the driver feeds `StopSequence.joined`."""

    until: float | None


@attrs.frozen
class Finish:
    """The stop is over: raise `DeadlineExceeded` if ``cut`` is not empty, else return."""

    cut: tuple[str, ...]


Action = Drain | CloseListener | CloseIdle | Wait | EndLongLived | Cut | Join | Finish
"""One step of the stop sequence."""


def request_deadline(
    now: float, deadline: float | None, margin: float = CUT_MARGIN
) -> float | None:
    """The deadline of the token of a request begun at ``now`` under a stop with ``deadline``.

    A margin before the stop's cut (`cut_time`), by the same rule: a handler
    that works until its token's deadline and then answers has that margin
    to answer before the cut ends its request. A deadline equal to the cut
    would lose that race: the token fires when the cut does (its timer a few
    ms later, even), so the handler is cut just as it answers.

    Example::

        assert request_deadline(0.0, 10.0) == 9.8    # the cut: 9.9
        assert request_deadline(0.0, 0.5) == 0.405   # the cut: 0.45
    """
    if deadline is None:
        return None
    budget = max(deadline - now, 0.0)
    to_cut = min(margin, budget / 10)  # as cut_time
    to_answer = min(margin, (budget - to_cut) / 10)
    return deadline - (to_cut + to_answer)


def cut_time(now: float, deadline: float | None, margin: float = CUT_MARGIN) -> float | None:
    """When a stop that began at ``now`` with ``deadline`` cuts what remains.

    ``margin`` before the deadline, or a tenth of the budget when that is
    smaller; the deadline itself when it has already passed.

    Example::

        assert cut_time(100.0, 110.0) == 109.9
        assert cut_time(100.0, 100.5) == 100.45
    """
    if deadline is None:
        return None
    budget = deadline - now
    return deadline - min(margin, max(budget, 0.0) / 10)


class _Phase(enum.Enum):
    NEW = "new"  # nothing done yet: Drain comes next
    LISTENER = "listener"  # drained: CloseListener comes next
    ORDINARY = "ordinary"  # waiting until only long-lived requests remain
    REQUESTS = "requests"  # long-lived ones asked to end: waiting for every request
    CONNECTIONS = "connections"  # no request left: waiting for every connection
    JOINING = "joining"  # Join issued on the normal path: its result decides
    CUTTING = "cutting"  # Cut issued: Join (bounded) comes next
    CUT_JOINING = "cut joining"  # the bounded join after a cut
    DONE = "done"  # Finish issued


_WAITING: Final = frozenset({_Phase.ORDINARY, _Phase.REQUESTS, _Phase.CONNECTIONS, _Phase.JOINING})


class StopSequence:
    """The stop sequence as a state machine: fed the time and the work left, it answers what next.

    No clock, no thread, no socket: time comes in with every call, so the
    tests drive it on a fake clock. A driver (`drive_sync`, `drive_async`)
    loops: ``action = seq.next(clock(), ops.work(), cancelled=token.cancelled)``,
    carries the action out, and feeds back what the action needs to report
    (`idle_closed`, `cut_done`, `joined`), until `Finish`.

    Args:
        name: the server's name, for the exception and the log.
        now: when the stop began (the driver's clock).
        deadline: the stop token's deadline, or None.
        sockets: the server owns a listener and connections (False for a
            middleware: no `CloseListener`, `CloseIdle`, ``Wait("connections")``
            or `Join` on the normal path).
        margin: seconds before the deadline to cut (`CUT_MARGIN`).

    Example::

        seq = StopSequence("http:8080", now=0.0, deadline=10.0)
        assert seq.next(0.0, Work()) == Drain(deadline=10.0, requests_by=9.8)
        assert seq.next(0.0, Work()) == CloseListener(until=9.9)

    Added in 0.2.
    """

    def __init__(
        self,
        name: str,
        *,
        now: float,
        deadline: float | None,
        sockets: bool = True,
        margin: float = CUT_MARGIN,
    ) -> None:
        self.name = name
        self.began = now
        self.deadline = deadline
        self.sockets = sockets
        self.cut_at = cut_time(now, deadline, margin)
        """When what remains is cut (None: never, the stop has no deadline)."""
        self.requests_by = request_deadline(now, deadline, margin)
        """The deadline of requests begun during the stop (`request_deadline`)."""
        self.cut: tuple[str, ...] = ()
        """Every request cut, oldest first; empty unless the stop cut."""
        self.cut_logged = False
        """Whether a driver logged the cut ("work cut at the stop deadline")."""
        self._phase = _Phase.NEW
        self._close_idle = False  # a CloseIdle is due at the next step
        self._recheck_at: float | None = None  # ... or once this time is reached
        self._waited = False  # a Wait came after the last CloseIdle
        self._joined = True

    def __repr__(self) -> str:
        return f"<StopSequence {self.name!r} {self._phase.value} cut_at={self.cut_at}>"

    @property
    def done(self) -> bool:
        """True once `Finish` was answered."""
        return self._phase is _Phase.DONE

    @property
    def phase(self) -> str:
        """Where the sequence is (``"new"``, ``"ordinary"``, ``"cutting"``...), for logs."""
        return self._phase.value

    # -- feedback --------------------------------------------------------------

    def idle_closed(self, recheck_at: float | None) -> None:
        """After `CloseIdle`: when to look at idle connections again (None: at the next wake)."""
        self._recheck_at = recheck_at

    def cut_done(self, labels: list[str] | tuple[str, ...]) -> None:
        """After `Cut`: the labels of every request cut, oldest first."""
        self.cut = tuple(labels)

    def joined(self, ok: bool) -> None:
        """After `Join`: whether every handler ended in time."""
        self._joined = ok

    # -- the step ----------------------------------------------------------------

    def next(self, now: float, work: Work, *, cancelled: bool = False) -> Action:
        """The next step, given the time, the work left and whether the stop token is cancelled.

        A stop token cancelled before the cut time (its deadline fired early,
        or someone cancelled it) cuts at once.
        """
        phase = self._phase
        if phase is _Phase.DONE:
            return Finish(self.cut)
        if phase is _Phase.NEW:
            self._phase = _Phase.LISTENER
            return Drain(self.deadline, requests_by=self.requests_by)
        if phase is _Phase.LISTENER:
            self._phase = _Phase.ORDINARY
            if self.sockets:
                self._close_idle = True
                return CloseListener(self.cut_at)
        if self._phase is _Phase.JOINING:
            if self._joined:
                self._phase = _Phase.DONE
                return Finish(())
            return self._begin_cut()
        if self._phase in _WAITING and (cancelled or self._past_cut(now)):
            return self._begin_cut()
        if self._phase is _Phase.CUTTING:
            self._phase = _Phase.CUT_JOINING
            return Join(self._cut_join_until(now))
        if self._phase is _Phase.CUT_JOINING:
            self._phase = _Phase.DONE
            return Finish(self.cut)
        if self.sockets and (
            self._close_idle or (self._recheck_at is not None and now >= self._recheck_at)
        ):
            return self._close_idle_step()
        action = self._wait_step(work)
        if isinstance(action, Wait):
            self._waited = True
        return action

    def _close_idle_step(self) -> CloseIdle:
        self._close_idle = False
        self._recheck_at = None
        self._waited = False
        return CloseIdle()

    def _wait_step(self, work: Work) -> Action:
        if self._phase is _Phase.ORDINARY:
            if work.ordinary:
                return Wait("ordinary", self._wait_until())
            self._phase = _Phase.REQUESTS
            return EndLongLived()
        if self._phase is _Phase.REQUESTS:
            if work.requests:
                return Wait("requests", self._wait_until())
            self._phase = _Phase.CONNECTIONS
            if self.sockets and work.connections and self._waited:
                # The last requests' connections may have just turned idle.
                return self._close_idle_step()
        if self._phase is _Phase.CONNECTIONS:
            if self.sockets and work.connections:
                self._close_idle = True  # whatever woke the wait may have left one idle
                return Wait("connections", self._wait_until())
            if not self.sockets:
                self._phase = _Phase.DONE
                return Finish(())
            self._phase = _Phase.JOINING
            return Join(self.cut_at)
        raise AssertionError(f"stop sequence of {self.name!r}: no step from {self._phase}")

    def _past_cut(self, now: float) -> bool:
        return self.cut_at is not None and now >= self.cut_at

    def _wait_until(self) -> float | None:
        if self._recheck_at is None:
            return self.cut_at
        if self.cut_at is None:
            return self._recheck_at
        return min(self.cut_at, self._recheck_at)

    def _begin_cut(self) -> Action:
        self._phase = _Phase.CUTTING
        return Cut()

    def _cut_join_until(self, now: float) -> float:
        if self.deadline is None:
            return now + FORCE_JOIN
        # Half of what is left: the other half is for returning before the
        # runner abandons the stop.
        return now + max(self.deadline - now, 0.0) / 2


# -- the operations a server implements ------------------------------------------------


class SyncStopOps(Protocol):
    """What a threaded server does for `drive_sync`; each method carries out one action.

    Every method runs in the thread that called ``stop``. ``wait`` must
    return as soon as the work may have changed (a request left, one was
    marked long-lived, a connection ended) or ``token`` is cancelled, with no
    polling; ``timeout`` bounds it.
    """

    def work(self) -> Work:
        """The work left now."""

    def drain(self, deadline: float | None) -> None:
        """`Drain`: responses say ``Connection: close`` from now on (idempotent).

        ``deadline`` is `Drain.requests_by`: the deadline of the requests
        that begin from now on.
        """

    def close_listener(self, timeout: float | None) -> None:
        """`CloseListener`: accept what the kernel queued, then close the socket."""

    def close_idle(self, now: float) -> float | None:
        """`CloseIdle`: close the idle connections safe to close; when to look again."""

    def wait(self, what: Waiting, timeout: float | None, token: CancelToken) -> None:
        """`Wait`: block until ``what`` may hold, ``timeout`` passes or ``token`` fires."""

    def end_long_lived(self) -> None:
        """`EndLongLived`: cancel the long-lived requests' tokens."""

    def cut(self) -> list[str]:
        """`Cut`: end everything left; return the labels of the requests cut, oldest first."""

    def join(self, timeout: float | None) -> bool:
        """`Join`: join the handlers within ``timeout``; True if none is left."""


class AsyncStopOps(Protocol):
    """The asyncio twin of `SyncStopOps`: `close_listener`, `wait` and `join` are coroutines.

    Every method runs on the server's event loop; ``wait`` is woken from any
    thread (a token cancelled by the deadline timer) through the loop.
    """

    def work(self) -> Work:
        """The work left now."""

    def drain(self, deadline: float | None) -> None:
        """`Drain`: as `SyncStopOps.drain` (``deadline`` is `Drain.requests_by`)."""

    async def close_listener(self, timeout: float | None) -> None:
        """`CloseListener`: take in what the kernel queued, then close the socket."""

    def close_idle(self, now: float) -> float | None:
        """`CloseIdle`: close the idle connections safe to close; when to look again."""

    async def wait(self, what: Waiting, timeout: float | None, token: CancelToken) -> None:
        """`Wait`: until ``what`` may hold, ``timeout`` passes or ``token`` fires."""

    def end_long_lived(self) -> None:
        """`EndLongLived`: cancel the long-lived requests' tokens."""

    def cut(self) -> list[str]:
        """`Cut`: end everything left; return the labels of the requests cut, oldest first."""

    async def join(self, timeout: float | None) -> bool:
        """`Join`: wait for the handlers within ``timeout``; True if none is left."""


# -- the drivers -------------------------------------------------------------------------


def drive_sync(
    ops: SyncStopOps,
    token: CancelToken,
    *,
    name: str,
    sockets: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> StopSequence:
    """Carry the stop sequence out on a threaded server, in this thread, by ``token``'s deadline.

    Returns the finished sequence when nothing was cut. If an operation
    raises, what remains is cut and the error propagates.

    Raises:
        DeadlineExceeded: requests were cut; ``.cut`` names every one.

    Example::

        def stop(self, token):
            drive_sync(self._ops, token, name=self.name)
    """
    seq = StopSequence(name, now=clock(), deadline=token.deadline, sockets=sockets)
    try:
        while True:
            action = seq.next(clock(), ops.work(), cancelled=token.cancelled)
            if isinstance(action, CloseListener):
                ops.close_listener(_timeout(action.until, clock))
            elif isinstance(action, Wait):
                ops.wait(action.what, _timeout(action.until, clock), token)
            elif isinstance(action, Join):
                seq.joined(ops.join(_timeout(action.until, clock)))
            elif _step(seq, ops, action, clock):
                return seq
    except BaseException:
        _cut_on_error(seq, ops)
        raise


async def drive_async(
    ops: AsyncStopOps,
    token: CancelToken,
    *,
    name: str,
    sockets: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> StopSequence:
    """The asyncio twin of `drive_sync`: carry the sequence out on the running loop.

    If the stop itself is cancelled (the runner abandoned it) or an operation
    raises, what remains is cut and the error propagates.

    Raises:
        DeadlineExceeded: requests were cut; ``.cut`` names every one.

    Example::

        async def stop(self, token):
            await drive_async(self._ops, token, name=self.name)
    """
    seq = StopSequence(name, now=clock(), deadline=token.deadline, sockets=sockets)
    try:
        while True:
            action = seq.next(clock(), ops.work(), cancelled=token.cancelled)
            if isinstance(action, CloseListener):
                await ops.close_listener(_timeout(action.until, clock))
            elif isinstance(action, Wait):
                await ops.wait(action.what, _timeout(action.until, clock), token)
            elif isinstance(action, Join):
                seq.joined(await ops.join(_timeout(action.until, clock)))
            elif _step(seq, ops, action, clock):
                return seq
    except BaseException:
        _cut_on_error(seq, ops)
        raise


def _step(
    seq: StopSequence, ops: SyncStopOps | AsyncStopOps, action: Action, clock: Callable[[], float]
) -> bool:
    """Carry out an action that is the same in both drivers; True once finished."""
    if isinstance(action, Drain):
        ops.drain(action.requests_by)
    elif isinstance(action, CloseIdle):
        seq.idle_closed(ops.close_idle(clock()))
    elif isinstance(action, EndLongLived):
        ops.end_long_lived()
    elif isinstance(action, Cut):
        labels = ops.cut()
        seq.cut_done(labels)
        if labels:
            _log_cut(seq.name, labels)
            seq.cut_logged = True
    elif isinstance(action, Finish):
        if action.cut:
            # Logged by the Cut step (``_log_cut``) unless it cut nothing then.
            raise DeadlineExceeded(seq.name, list(action.cut), logged=seq.cut_logged)
        return True
    return False


def _cut_on_error(seq: StopSequence, ops: SyncStopOps | AsyncStopOps) -> None:
    """An operation raised, or the stop was abandoned: leave nothing running behind."""
    if seq.done or seq.phase in ("cutting", "cut joining"):
        return
    try:
        ops.cut()
    except Exception:  # noqa: BLE001 - the first error is the one that propagates
        _log.exception("cutting after a failed stop raised too", component=seq.name)


def _log_cut(name: str, labels: list[str]) -> None:
    shown = labels[:LOG_CUT_LIMIT]
    if len(labels) > LOG_CUT_LIMIT:
        shown.append(f"... and {len(labels) - LOG_CUT_LIMIT} more")
    _log.error(
        "work cut at the stop deadline",
        component=name,
        running=shown,
        cut=len(labels),
        hint="raise stop_timeout, or make these handlers honour lifecycle.current_token()",
    )


def _timeout(until: float | None, clock: Callable[[], float]) -> float | None:
    return None if until is None else max(0.0, until - clock())
