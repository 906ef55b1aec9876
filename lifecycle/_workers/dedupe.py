"""Idempotency for consumers: `Dedupe` and `MemoryDedupe`, an exactly-once effect.

Queues deliver at least once: a message whose consumer was cut at the stop
deadline, or died, or whose ack was lost, is delivered again. A handler
whose effect must happen once (charge a card, send a mail) claims the
message's id before it acts and records it as done after:

* ``claim(m)`` → one of three answers (`Claim`): ``HANDLE`` (first
  delivery, or the earlier claim was released or its lease ran out);
  ``DONE`` (it took effect already: the consumer acks it without handling,
  a duplicate); ``BUSY`` (another handler holds a live claim on it: the
  consumer neither acks nor handles this delivery, and the holder's ack or
  give-back settles the message). Acking a ``BUSY`` delivery would lose the
  message whenever the holder then fails: nothing would bring it back.
* ``done(m)``: the effect happened; the id is remembered (a bounded store).
* ``release(m)``: the handler failed or was cut; a redelivery handles it.

The lease bounds how long a claim whose holder vanished (a process killed
mid-handler) blocks a redelivery: once it runs out, the next ``claim``
wins. Pick it above the longest handler run, or a slow handler and its
redelivery both act.

`MemoryDedupe` keeps the ids in this process only: it removes duplicates
that reach the same process (a give-back redelivered here, a source that
delivers twice). Across processes the store must be shared (a database row
or a Redis key per id, with the same three calls).

Added in 0.3.
"""

from __future__ import annotations

import collections
import enum
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .consumer import Message

__all__ = ["Claim", "Dedupe", "MemoryDedupe"]

DEFAULT_CAPACITY: Final = 100_000
"""Ids a `MemoryDedupe` remembers as done by default (about 10 MB of short ids)."""

DEFAULT_LEASE: Final = 300.0
"""Seconds a claim of a `MemoryDedupe` holds by default."""


class Claim(enum.Enum):
    """What `Dedupe.claim` says about one delivery of a message.

    Only ``HANDLE`` is true, so code written for ``claim() -> bool``
    (``if dedupe.claim(m): ...``) keeps working. A store that answers a
    plain bool means ``True`` = ``HANDLE`` and ``False`` = ``DONE``: such a
    store must not answer False for a live claim (answer ``BUSY``).

    Example::

        seen = MemoryDedupe()
        m = Message("1", "body")
        assert seen.claim(m) is Claim.HANDLE
        assert seen.claim(m) is Claim.BUSY      # its handler still runs
        seen.done(m)
        assert seen.claim(m) is Claim.DONE and not seen.claim(m)

    Added in 0.3.
    """

    HANDLE = "handle"  # nobody holds it and it is not done: run the handler
    DONE = "done"  # took effect already: ack without handling (a duplicate)
    BUSY = "busy"  # a live claim holds it: neither ack nor handle; the holder settles it

    def __bool__(self) -> bool:
        return self is Claim.HANDLE


def as_claim(answer: object) -> Claim:
    """A `Dedupe.claim` answer as a `Claim` (``True``: HANDLE, ``False``: DONE)."""
    if isinstance(answer, Claim):
        return answer
    if isinstance(answer, bool):
        return Claim.HANDLE if answer else Claim.DONE
    raise TypeError(
        f"Dedupe.claim must return a lifecycle Claim (or a bool), got {answer!r}; "
        f"return Claim.HANDLE, Claim.DONE or Claim.BUSY"
    )


@runtime_checkable
class Dedupe(Protocol):
    """An idempotency store: exactly-once effect over at-least-once delivery.

    Called from the consumer's handler threads (or its loop): thread-safe,
    and quick (it runs before and after every handler call).

    Example::

        assert isinstance(MemoryDedupe(), Dedupe)
    """

    def claim(self, message: Message) -> Claim | bool:
        """`Claim.HANDLE`: handle it; ``DONE``: ack it unhandled; ``BUSY``: leave it be.

        ``BUSY`` is for a delivery that another handler holds under a live
        claim: the consumer drops it from its batch without acking it, and
        the holder settles the message. A plain ``True``/``False`` answer
        means ``HANDLE``/``DONE``.
        """
        ...

    def done(self, message: Message) -> None:
        """The effect happened: remember the id (bounded store)."""
        ...

    def release(self, message: Message) -> None:
        """The handler failed or was cut: forget the claim so a redelivery handles it."""
        ...


class MemoryDedupe:
    """An in-process `Dedupe`: the last ``capacity`` ids done (LRU), and leased claims.

    Args:
        capacity: ids remembered as done, at most; the least recently seen
            is forgotten first (a duplicate older than that is handled again).
            Live claims are bounded by the same number.
        lease: seconds a claim holds; an unreleased claim older than that no
            longer blocks a redelivery.
        clock: the monotonic clock (injectable for tests).

    Example::

        seen = MemoryDedupe(capacity=2)
        m = Message("1", "body")
        assert seen.claim(m)                  # first delivery: handle it
        assert seen.claim(m) is Claim.BUSY    # a redelivery while it runs: leave it
        seen.done(m)
        assert seen.claim(m) is Claim.DONE    # done: ack it, unhandled
        n = Message("2", "body")
        assert seen.claim(n)
        seen.release(n)               # the handler failed
        assert seen.claim(n)          # the redelivery handles it

    Added in 0.3.
    """

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        lease: float = DEFAULT_LEASE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        if not isinstance(lease, int | float) or isinstance(lease, bool) or not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds, got {lease!r}")
        self.capacity = capacity
        self.lease = float(lease)
        self.clock = clock
        self._lock = threading.Lock()
        # Invariant: len(_done) <= capacity and len(_claims) <= capacity; an id is in
        # at most one of them; both ordered oldest first.
        self._done: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._claims: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __repr__(self) -> str:
        return (
            f"<MemoryDedupe done={len(self._done)}/{self.capacity} claims={len(self._claims)} "
            f"lease={self.lease:g}s>"
        )

    def __len__(self) -> int:
        """How many ids are remembered as done."""
        return len(self._done)

    @property
    def claims(self) -> int:
        """How many claims are held (expired ones included until they are swept)."""
        return len(self._claims)

    def claim(self, message: Message) -> Claim:
        """HANDLE (and claim it for ``lease`` seconds), DONE or BUSY; see `Dedupe.claim`."""
        key = message.id
        now = self.clock()
        with self._lock:
            if key in self._done:
                self._done.move_to_end(key)
                return Claim.DONE
            expires = self._claims.get(key)
            if expires is not None and now < expires:
                return Claim.BUSY
            self._sweep(now)
            self._claims[key] = now + self.lease
            self._claims.move_to_end(key)
            while len(self._claims) > self.capacity:
                self._claims.popitem(last=False)
            return Claim.HANDLE

    def done(self, message: Message) -> None:
        """Remember ``message.id`` as done; the oldest id goes once ``capacity`` is full."""
        key = message.id
        with self._lock:
            self._claims.pop(key, None)
            self._done[key] = None
            self._done.move_to_end(key)
            while len(self._done) > self.capacity:
                self._done.popitem(last=False)

    def release(self, message: Message) -> None:
        """Forget the claim on ``message.id`` (no-op without one, or once done)."""
        with self._lock:
            self._claims.pop(message.id, None)

    def _sweep(self, now: float) -> None:
        """Drop expired claims from the oldest end (claims are in order of expiry)."""
        while self._claims:
            key, expires = next(iter(self._claims.items()))
            if expires > now:
                return
            del self._claims[key]
