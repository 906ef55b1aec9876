"""An adaptive drain: how long to keep serving after readiness turned off. Pure.

A fixed ``drain_delay`` waits the same seconds whether or not traffic still
arrives. A `Drain` waits at least ``min`` seconds (the load balancer's known
reaction time), at most ``max``, and ends earlier once no new request or
connection has arrived for ``quiet`` seconds. Quiet is measured after
``min`` too: the drain ends at ``max(began + min, last_arrival + quiet)``,
capped at ``began + max`` and never past the shutdown deadline.

Nothing here reads a clock: the scheduler passes the times in
(``time.monotonic()`` values), and the serving layer records arrivals.

Example::

    >>> from lifecycle import Drain
    >>> drain = Drain(min=1.5, max=10.0, quiet=0.5)
    >>> drain.end(began=100.0, last_arrival=None)
    101.5
    >>> drain.end(began=100.0, last_arrival=103.0)
    103.5
    >>> drain.end(began=100.0, last_arrival=109.9)
    110.0

Added in 0.4.
"""

from __future__ import annotations

import math

import attrs

from .errors import ConfigError

__all__ = ["Drain", "drain_bounds"]


def _check(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"Drain {name} must be a number of seconds, not {value!r}: "
            f"pass e.g. Drain(min=1.5, max=10, quiet=0.5)"
        )
    if not math.isfinite(value):
        raise ConfigError(
            f"Drain {name} must be a finite number of seconds, got {value!r}: "
            f"pass e.g. Drain(min=1.5, max=10, quiet=0.5)"
        )
    return float(value)


def _min(value: object) -> float:
    return _check("min", value)


def _max(value: object) -> float:
    return _check("max", value)


def _quiet(value: object) -> float:
    return _check("quiet", value)


@attrs.frozen
class Drain:
    """Keep serving after readiness turned off until traffic stops.

    Pass it as ``App(drain_delay=Drain(...))`` instead of a fixed number of
    seconds. Readiness turns off at once, as with a fixed delay; the drain
    lasts at least ``min`` seconds, at most ``max``, and ends earlier once no
    new request or connection has arrived for ``quiet`` seconds. It never
    runs past the shutdown deadline (``shutdown_timeout``).

    Args:
        min: seconds the drain lasts at least: how long the load balancer
            takes to notice readiness turned off (>= 0, finite).
        max: seconds the drain lasts at most (>= ``min``, finite).
        quiet: seconds without a new arrival after which the drain ends
            (> 0, finite).

    Example::

        >>> import lifecycle
        >>> app = lifecycle.App(drain_delay=lifecycle.Drain(min=1.5, max=10, quiet=0.5))
        >>> app.drain_delay.max
        10.0

    Added in 0.4.
    """

    min: float = attrs.field(converter=_min)
    max: float = attrs.field(converter=_max)
    quiet: float = attrs.field(converter=_quiet)

    def __attrs_post_init__(self) -> None:
        if self.min < 0:
            raise ConfigError(
                f"Drain min must be >= 0 seconds, got {self.min!r}: "
                f"pass the load balancer's reaction time, e.g. Drain(min=1.5, ...)"
            )
        if self.max < self.min:
            raise ConfigError(
                f"Drain max ({self.max!r}) must be >= min ({self.min!r}): "
                f"pass e.g. Drain(min={self.min!r}, max={max(self.min, 10.0)!r}, ...)"
            )
        if self.quiet <= 0:
            raise ConfigError(
                f"Drain quiet must be > 0 seconds, got {self.quiet!r}: "
                f"pass e.g. Drain(..., quiet=0.5); for a fixed delay pass a number "
                f"as drain_delay instead"
            )

    def end(self, began: float, last_arrival: float | None, deadline: float = math.inf) -> float:
        """When a drain that began at ``began`` ends, given the last arrival so far.

        ``max(began + min, last_arrival + quiet)``, capped at ``began + max``
        and at ``deadline``. ``last_arrival`` None means none arrived.
        """
        end = began + self.min
        if last_arrival is not None:
            end = max(end, last_arrival + self.quiet)
        return min(end, began + self.max, deadline)


def drain_bounds(delay: float | Drain) -> tuple[float, float]:
    """``(min, max)`` seconds of a drain delay, a fixed one or a `Drain`."""
    if isinstance(delay, Drain):
        return delay.min, delay.max
    return float(delay), float(delay)
