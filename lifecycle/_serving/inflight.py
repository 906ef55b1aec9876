"""In-flight tracking: count work in progress, refuse new work once closed, wait until idle.

Any server can use it: ``enter`` when a request begins, ``leave`` when it
ends; at shutdown ``close`` (new work is refused), then ``wait_idle`` under a
token's deadline, and when the deadline hits, ``running()`` names what was
still going — so the log says *which* requests were cut, not just how many.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._core.errors import LifecycleError
from .._core.tokens import CancelToken

__all__ = ["InFlight", "Refused", "Ticket", "cut_deadline"]

_ids = itertools.count(1)


class Refused(LifecycleError):  # noqa: N818 - reads as "the work was refused"
    """New work was refused: the tracker is closed (the server is shutting down).

    Attributes:
        tracker: the name of the `InFlight` that refused.
    """

    def __init__(self, tracker: str) -> None:
        self.tracker = tracker
        super().__init__(
            f"{tracker!r} is closed and refuses new work: the server is shutting down; "
            f"retry on another replica"
        )


class Ticket:
    """One unit of work in progress.

    A plain slotted class rather than an attrs one: one is made per request,
    so its construction is on every server's hot path.

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

    def __init__(self, label: str, began: float, long_lived: bool = False) -> None:
        self.label = label
        self.began = began
        self.long_lived = long_lived
        self.id = next(_ids)

    def __repr__(self) -> str:
        kind = " long-lived" if self.long_lived else ""
        return f"<Ticket #{self.id} {self.label!r}{kind} began={self.began:.3f}>"


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
        self.clock = clock
        self._lock = threading.Lock()
        self._tickets: dict[int, Ticket] = {}
        self._closed = False
        self._idle = threading.Condition(self._lock)
        self._idle_callbacks: list[Callable[[], None]] = []
        self._waiters = 0  # threads blocked in wait_idle
        self.total = 0
        """How many units entered since creation."""
        self.refused = 0
        """How many were refused because the tracker was closed."""

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<InFlight {self.name!r} {state} in_flight={len(self._tickets)}>"

    @property
    def closed(self) -> bool:
        """True once `close` was called: `enter` refuses."""
        return self._closed

    @property
    def count(self) -> int:
        """How many units are in progress now."""
        return len(self._tickets)

    def enter(self, label: str = "", *, long_lived: bool = False) -> Ticket | None:
        """Begin a unit of work; None if the tracker is closed (refuse it)."""
        with self._lock:
            if self._closed:
                self.refused += 1
                return None
            ticket = Ticket(label, self.clock(), long_lived)
            self._tickets[ticket.id] = ticket
            self.total += 1
            return ticket

    def leave(self, ticket: Ticket) -> None:
        """End a unit of work (idempotent)."""
        with self._lock:
            if self._tickets.pop(ticket.id, None) is None or self._tickets:
                return
            if not self._waiters and not self._idle_callbacks:
                return  # the hot path: nobody waits for idle
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
            return sorted(self._tickets.values(), key=lambda t: t.began)

    def describe(self, limit: int = 20) -> list[str]:
        """``["GET /slow (12.3s)", ...]``: what is in progress, oldest first, for logs."""
        now = self.clock()
        tickets = self.running()
        lines = [f"{t.label or f'#{t.id}'} ({now - t.began:.1f}s)" for t in tickets[:limit]]
        if len(tickets) > limit:
            lines.append(f"... and {len(tickets) - limit} more")
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
        """
        end = None if timeout is None else self.clock() + timeout
        if token is not None and token.deadline is not None:
            end = token.deadline if end is None else min(end, token.deadline)
        wake: Callable[[], bool] | None = None
        if token is not None:
            wake = token.on_cancel(self._wake_all)
        try:
            with self._lock:
                self._waiters += 1
                try:
                    while not self._is_idle(ignore_long_lived=ignore_long_lived):
                        if token is not None and token.cancelled:
                            return False
                        # Bounded slices: a token without a deadline still wakes us
                        # through _wake_all; the slice only guards missed wakeups.
                        remaining = 0.5 if end is None else min(0.5, end - self.clock())
                        if remaining <= 0:
                            return False
                        self._idle.wait(remaining)
                    return True
                finally:
                    self._waiters -= 1
        finally:
            if wake is not None:
                wake()

    async def wait_idle_async(
        self,
        token: CancelToken | None = None,
        *,
        timeout: float | None = None,
        ignore_long_lived: bool = False,
    ) -> bool:
        """The asyncio twin of `wait_idle`: no thread is blocked while waiting."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else self.clock() + timeout
        if token is not None and token.deadline is not None:
            end = token.deadline if end is None else min(end, token.deadline)
        while not self._is_idle(ignore_long_lived=ignore_long_lived):
            if token is not None and token.cancelled:
                return False
            remaining = None if end is None else end - self.clock()
            if remaining is not None and remaining <= 0:
                return False
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(waiter: asyncio.Future[None] = waiter) -> None:
                with contextlib.suppress(RuntimeError):  # loop closed: nobody waits
                    loop.call_soon_threadsafe(_resolve, waiter)

            with self._lock:
                self._idle_callbacks.append(wake)
            detach = token.on_cancel(wake) if token is not None else None
            try:
                slice_ = 0.5 if remaining is None else min(0.5, remaining)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), slice_)
            finally:
                if detach is not None:
                    detach()
                with self._lock, contextlib.suppress(ValueError):
                    self._idle_callbacks.remove(wake)
        return True

    def _is_idle(self, *, ignore_long_lived: bool) -> bool:
        if not ignore_long_lived:
            return not self._tickets
        return all(t.long_lived for t in self._tickets.values())

    def _wake_all(self) -> None:
        with self._lock:
            self._idle.notify_all()
            callbacks, self._idle_callbacks = self._idle_callbacks, []
        for callback in callbacks:
            callback()

    def notify(self) -> None:
        """Wake waiters to re-check (after marking a ticket long-lived, say)."""
        self._wake_all()


def _resolve(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def cut_deadline(
    shutdown_deadline: float | None, stop_deadline: float | None
) -> float | None:
    """When work begun now will be cut: the earlier of the shutdown and stop deadlines.

    What every server and middleware gives a request that starts once the
    shutdown was requested (``CancelSource(parent, deadline=cut_deadline(...))``),
    so that ``current_token().deadline`` in its handler says when it ends.
    """
    if stop_deadline is None:
        return shutdown_deadline
    if shutdown_deadline is None:
        return stop_deadline
    return min(shutdown_deadline, stop_deadline)
