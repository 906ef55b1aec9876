"""Idempotency for consumers: `Dedupe` and `MemoryDedupe`, an exactly-once effect.

Queues deliver at least once: a message whose consumer was cut at the stop
deadline, or died, or whose ack was lost, is delivered again. A handler
whose effect must happen once (charge a card, send a mail) claims the
message's id before it acts and records it as done after:

* ``claim(m)`` → True: handle it (first delivery, or the earlier claim was
  released or its lease ran out); False: done already, or being handled
  under a live claim: the consumer acks it without handling (a duplicate).
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
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .consumer import Message

__all__ = ["Dedupe", "MemoryDedupe"]

DEFAULT_CAPACITY: Final = 100_000
"""Ids a `MemoryDedupe` remembers as done by default (about 10 MB of short ids)."""

DEFAULT_LEASE: Final = 300.0
"""Seconds a claim of a `MemoryDedupe` holds by default."""


@runtime_checkable
class Dedupe(Protocol):
    """An idempotency store: exactly-once effect over at-least-once delivery.

    Called from the consumer's handler threads (or its loop): thread-safe,
    and quick (it runs before and after every handler call).

    Example::

        assert isinstance(MemoryDedupe(), Dedupe)
    """

    def claim(self, message: Message) -> bool:
        """True: handle it. False: done already, or claimed under a live lease: ack it."""
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
        assert seen.claim(m)          # first delivery: handle it
        assert not seen.claim(m)      # a redelivery while it runs: skip
        seen.done(m)
        assert not seen.claim(m)      # done: skip
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

    def claim(self, message: Message) -> bool:
        """True if ``message`` should be handled; see `Dedupe.claim`."""
        key = message.id
        now = self.clock()
        with self._lock:
            if key in self._done:
                self._done.move_to_end(key)
                return False
            expires = self._claims.get(key)
            if expires is not None and now < expires:
                return False
            self._sweep(now)
            self._claims[key] = now + self.lease
            self._claims.move_to_end(key)
            while len(self._claims) > self.capacity:
                self._claims.popitem(last=False)
            return True

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
