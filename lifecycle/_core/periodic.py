"""When a periodic job runs next: a schedule fed the times its runs began and ended. Pure.

A `Schedule` lays a grid of *slots* ``base + k * interval`` from the first
slot ``base`` on, and answers, each time a run ended, when the next one
begins. The rules:

* **No overlap.** The next run begins no earlier than the previous ended:
  it takes the first slot at or after that end.
* **Missed slots are skipped, not bunched.** A run that overran three slots
  is followed by one run, at the next slot, not by three runs back to back;
  the skipped slots are counted (`Schedule.skipped`).
* **No drift.** Slots are computed from ``base``, never from when a run
  actually began: a late wake-up or a slow run does not push later slots
  back. Each run begins at its slot plus a jitter drawn in ``[0, jitter]``
  seconds (0 by default), so replicas deployed together spread out.

Nothing here reads a clock: the worker passes the times in
(``time.monotonic()`` values), and the random source is injectable.

Example::

    schedule = Schedule(60.0)
    at = schedule.begin(now)            # first="now": at == now
    ...                                 # wait until at, run the job
    at = schedule.ran(started, ended)   # the first slot at or after ended

Added in 0.3.
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal

import attrs

from .errors import ConfigError

__all__ = ["First", "OnError", "Outcome", "Schedule"]

First = Literal["now", "after"] | float
"""When the first run is: ``"now"``, ``"after"`` one interval, or after a delay in seconds."""
OnError = Literal["continue", "fail"]
"""What a run that raised does: log and go on, or fail the component."""


@attrs.frozen
class Outcome:
    """How one run went.

    Attributes:
        ok: it returned (False: it raised).
        at: when it began (a ``time.monotonic()`` value).
        duration: seconds it took.
        error: ``"TypeName: message"`` of what it raised, or None.
    """

    ok: bool
    at: float
    duration: float
    error: str | None = None


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{what} must be a number of seconds, not {value!r}")
    if value < 0:
        raise ConfigError(f"{what} must be >= 0 seconds, got {value!r}")
    return float(value)


class Schedule:
    """The slots of a periodic job and what its runs did.

    Args:
        interval: seconds between slots (> 0, finite).
        jitter: each run begins up to this many seconds after its slot
            (uniformly drawn; 0 by default; less than ``interval``).
        first: ``"now"`` (the first slot is `begin`'s time), ``"after"``
            (one interval later) or a delay in seconds.
        rng: the jitter's random source.

    >>> s = Schedule(10.0)
    >>> s.begin(100.0)
    100.0
    >>> s.ran(started=100.0, ended=103.0)      # next slot
    110.0
    >>> s.ran(started=110.0, ended=135.0)      # overran 120 and 130: skipped
    140.0
    >>> s.runs, s.skipped
    (2, 2)

    Added in 0.3.
    """

    def __init__(
        self,
        interval: float,
        *,
        jitter: float = 0.0,
        first: First = "now",
        rng: random.Random | None = None,
    ) -> None:
        interval = _seconds(interval, "interval")
        if interval == 0 or math.isinf(interval):
            raise ConfigError(
                f"interval must be a positive, finite number of seconds, got {interval!r}; "
                "e.g. every(60.0) for once a minute"
            )
        jitter = _seconds(jitter, "jitter")
        if jitter >= interval:
            raise ConfigError(
                f"jitter={jitter:g}s must be shorter than the interval ({interval:g}s), "
                "or runs would leave their slot"
            )
        if first not in ("now", "after"):
            if isinstance(first, str) or not isinstance(first, int | float):
                raise ConfigError(
                    f"first={first!r} is not a start: use 'now' (run at once), 'after' "
                    "(one interval later) or a number of seconds (first=30.0)"
                )
            first = _seconds(first, "first")
            if math.isinf(first):
                raise ConfigError("first=inf would never run: pass a finite delay in seconds")
        self.interval = interval
        self.jitter = jitter
        self.first: First = first
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - spread, not secrets
        self.base: float | None = None
        """The first slot; None before `begin`."""
        self.slot: int = -1
        """The index of the slot of the run pending or last begun (-1 before `begin`)."""
        self.next_run: float | None = None
        """When the next run begins (its slot plus jitter); None while one runs or before."""
        self.runs = 0
        """Runs that ended."""
        self.errors = 0
        """Runs that raised."""
        self.skipped = 0
        """Slots skipped because a run overran them."""
        self.last: Outcome | None = None
        """How the last run went."""
        self.active = False
        """True from `begin` (or `resume`) until `halted`."""
        # Invariant: True while slot `slot` was taken and its run has not begun
        # (a restart may then still use it).
        self._taken = False

    def begin(self, now: float) -> float:
        """The worker starts at ``now``: lay the grid; return when the first run begins."""
        if self.first == "now":
            base = now
        elif self.first == "after":
            base = now + self.interval
        else:
            base = now + float(self.first)
        self.base = base
        self.active = True
        return self._take(0)

    def resume(self, now: float) -> float:
        """The worker starts again (restarted): the first slot at or after ``now``."""
        if self.base is None:
            return self.begin(now)
        self.active = True
        return self._take(self._slot_at_or_after(now))

    def ran(self, started: float, ended: float, error: str | None = None) -> float:
        """A run began at ``started`` and ended at ``ended``; return when the next begins.

        Args:
            started: when it began.
            ended: when it ended (clamped to no earlier than ``started``).
            error: ``"TypeName: message"`` if it raised, else None.
        """
        ended = max(ended, started)
        self._taken = False
        self.runs += 1
        if error is not None:
            self.errors += 1
        self.last = Outcome(error is None, started, ended - started, error)
        return self._take(self._slot_at_or_after(ended))

    def _slot_at_or_after(self, when: float) -> int:
        assert self.base is not None
        first_free = self.slot if self._taken else self.slot + 1
        k = max(first_free, math.ceil((when - self.base) / self.interval))
        # Float rounding may land one slot early: the slot must not precede `when`.
        while self.base + k * self.interval < when:
            k += 1
        return k

    def _take(self, k: int) -> float:
        """Slot ``k`` is the next: count those skipped; return its time plus the jitter."""
        assert self.base is not None
        if self.slot >= 0:
            self.skipped += max(0, k - self.slot - 1)
        self.slot = k
        self._taken = True
        offset = self._rng.uniform(0.0, self.jitter) if self.jitter else 0.0
        at = self.next_run = self.base + k * self.interval + offset
        return at

    def started(self) -> None:
        """The pending run began: there is no next run time until it ends."""
        self._taken = False
        self.next_run = None

    def halted(self) -> None:
        """The worker ended (its token was cancelled, or it failed): no next run."""
        self.active = False
        self.next_run = None

    def status(
        self, now: float, wall: float | None = None, *, with_error: bool = False
    ) -> dict[str, Any]:
        """A JSON-ready snapshot at ``now``; times as seconds from ``now``.

        With ``wall`` (``time.time()`` read with ``now``) the last run also
        gets ``at``, its wall-clock time in seconds since the epoch; with
        ``with_error`` the last run's error text (``/status`` never shows one).

        >>> s = Schedule(5.0)
        >>> _ = s.begin(0.0); s.started(); _ = s.ran(0.0, 1.5)
        >>> s.status(2.0)["next_run_in"], s.status(2.0)["last"]["outcome"]
        (3.0, 'ok')
        """
        last: dict[str, Any] | None = None
        if self.last is not None:
            last = {
                "outcome": "ok" if self.last.ok else "error",
                "duration": round(self.last.duration, 6),
                "seconds_ago": round(max(0.0, now - self.last.at), 6),
            }
            if wall is not None:
                last["at"] = round(wall - (now - self.last.at), 6)
            if with_error:
                last["error"] = self.last.error
        return {
            "interval": self.interval,
            "next_run_in": None if self.next_run is None else round(self.next_run - now, 6),
            "running": self.active and self.next_run is None,
            "runs": self.runs,
            "errors": self.errors,
            "skipped": self.skipped,
            "last": last,
        }
