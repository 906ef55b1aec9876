"""Restart policies for run-style components, as Erlang/OTP supervisors have them. Pure.

A `RestartPolicy` says *whether* a component whose ``run`` ended is started
again (``mode``), *how soon* (``backoff``, doubling per consecutive failure
up to ``backoff_max``, spread by ``jitter``) and *when to give up* (the
intensity: at most ``max_restarts`` restarts in any ``within`` seconds, the
OTP supervisor's ``intensity`` and ``period``, whose defaults 1 in 5 s are
kept here). `Restarts` is the state one component carries across its
restarts: fed the time of each exit, it answers with the delay before the
next run, or ``None``.

As in OTP, the intensity is counted on the exits themselves: the exit that
would be the R + 1-th restart inside any ``within`` seconds gives up. The
backoff is driven by the consecutive failures: it doubles per run that
ended sooner than ``reset_after`` seconds after it began, and starts over
after one that stayed up that long. A run that crashes at once therefore
ends in `RestartLimitReached`: the policy refuses, at construction, the
numbers under which its first ``max_restarts`` backoffs alone would span
more than ``within``.

Nothing here reads a clock or sleeps: the caller passes ``now`` and arms
its own timer. The random source for the jitter is injectable, so a test
can fix it.

The modes, in OTP's words:

* ``"never"`` (OTP *temporary*): the run ends, the component is done.
* ``"on-failure"`` (OTP *transient*): restarted when ``run`` raised, not
  when it returned.
* ``"always"`` (OTP *permanent*): restarted whenever ``run`` ended, by
  returning or by raising.

Added in 0.3.
"""

from __future__ import annotations

import collections
import math
import random
from typing import Literal, get_args

import attrs

from .errors import ConfigError, LifecycleError, describe_error

__all__ = ["RestartLimitReached", "RestartMode", "RestartPolicy", "Restarts", "as_policy"]

RestartMode = Literal["never", "on-failure", "always"]
_MODES: tuple[str, ...] = get_args(RestartMode)


def _check_mode(_instance: object, _attribute: object, value: object) -> None:
    if value not in _MODES:
        choices = ", ".join(repr(m) for m in _MODES)
        raise ConfigError(f"RestartPolicy mode={value!r} is unknown: use one of {choices}")


def _check_count(_instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"RestartPolicy {attribute.name}={value!r} must be a whole number >= 0 "
            "(0 gives up at the first exit that would restart)"
        )


def _check_seconds(_instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"RestartPolicy {attribute.name}={value!r} must be a number of seconds")
    if value < 0:
        raise ConfigError(
            f"RestartPolicy {attribute.name}={value!r} is negative: pass a delay in seconds >= 0"
        )


def _check_within(_instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    _check_seconds(_instance, attribute, value)
    if value == 0:
        raise ConfigError(
            "RestartPolicy within=0 is an empty window: pass the period in seconds over "
            "which max_restarts are counted (> 0; math.inf counts over the whole run)"
        )


def _check_backoff(_instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    _check_seconds(_instance, attribute, value)
    if math.isinf(value):  # type: ignore[arg-type]
        raise ConfigError(
            f"RestartPolicy {attribute.name}=inf would never restart: pass a finite delay"
        )


def _check_reset_after(
    _instance: object, attribute: attrs.Attribute[float | None], value: object
) -> None:
    if value is None:
        return
    _check_seconds(_instance, attribute, value)  # type: ignore[arg-type]
    if value == 0:
        raise ConfigError(
            "RestartPolicy reset_after=0 would never double the backoff: pass the seconds a "
            "run must stay up to count as healthy (> 0), or None for within"
        )


def _default_backoff_max(policy: RestartPolicy) -> float:
    """Half the window shared by the restarts, at most 10 s (and at least ``backoff``)."""
    if policy.max_restarts == 0:
        return max(policy.backoff, 10.0)
    return max(policy.backoff, min(10.0, policy.within / (2 * policy.max_restarts)))


def _check_jitter(_instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    _check_seconds(_instance, attribute, value)
    if value >= 1:  # type: ignore[operator]
        raise ConfigError(
            f"RestartPolicy jitter={value!r} must be below 1 (a fraction of the delay: "
            "0.1 spreads each delay by +/-10%)"
        )


class RestartLimitReached(LifecycleError):  # noqa: N818 - reads as what happened, like Cancelled
    """A component's ``run`` ended once more than its restart policy allows.

    Its ``.error`` when it gave up; ``__cause__`` (and ``.run_error`` of
    the component) is what the last run raised, None if it returned.

    Attributes:
        component: the component's name.
        restarts: the restarts it had been granted.

    Example::

        info = app.components["poller"]
        if isinstance(info.error, lifecycle.RestartLimitReached):
            print(info.error.restarts, info.run_error)   # what the last run raised

    Added in 0.3.
    """

    def __init__(
        self, component: str, policy: RestartPolicy, restarts: int, last: BaseException | None
    ) -> None:
        how = "it returned" if last is None else describe_error(last)
        plural = "" if restarts == 1 else "s"
        super().__init__(
            f"component {component!r} gave up restarting: run() ended again after "
            f"{restarts} restart{plural} within {policy.within:g}s ({how}); fix the cause, "
            f"or allow more with RestartPolicy(max_restarts=..., within=...)"
        )
        self.component = component
        self.restarts = restarts


@attrs.frozen
class RestartPolicy:
    """When a run-style component whose ``run`` ended is started again.

    Attributes:
        mode: ``"never"``, ``"on-failure"`` (``run`` raised) or ``"always"``
            (``run`` ended, however).
        max_restarts: the intensity R: at most R restarts in any ``within``
            seconds; the exit that would make it R + 1 gives up, and the
            component is FAILED.
        within: the period T, in seconds, over which restarts are counted.
        backoff: the delay before the first restart; each consecutive failure
            (a run that ended less than ``reset_after`` after it began)
            doubles it.
        backoff_max: the cap of the doubling (>= ``backoff``); by default half
            the window shared by the restarts, ``within / (2 * max_restarts)``,
            at most 10 s.
        jitter: each delay is multiplied by ``1 + uniform(-jitter, +jitter)``,
            so that replicas that crashed together do not restart together.
        reset_after: how long a run must stay up for the backoff to start
            over; None (the default) means ``within``.

    A restart is counted at the exit that asks for it, as OTP does: any
    R + 1 restarts granted span more than ``within`` seconds, and an exit
    gives up exactly when R restarts were granted in the ``within`` seconds
    before it. A run that crashes at once, forever, gives up after at most
    R restarts: ``max_restarts * backoff_max * (1 + jitter) >= within``
    would space such a loop's restarts out past the window, and is refused.

    ``SystemExit`` and ``KeyboardInterrupt`` raised by ``run`` count as a
    failure, like any other exception (``"on-failure"`` restarts them).

    >>> policy = RestartPolicy("on-failure", max_restarts=3, within=60.0)
    >>> policy.mode, policy.max_restarts
    ('on-failure', 3)
    >>> try:
    ...     RestartPolicy(backoff=5, backoff_max=1)
    ... except ValueError as error:
    ...     print(error)
    RestartPolicy backoff=5 is above backoff_max=1: pass backoff <= backoff_max
    >>> try:
    ...     RestartPolicy(backoff=-1)
    ... except ValueError as error:
    ...     print(error)
    RestartPolicy backoff=-1 is negative: pass a delay in seconds >= 0

    Added in 0.3.
    """

    mode: RestartMode = attrs.field(default="never", validator=_check_mode)
    max_restarts: int = attrs.field(default=1, validator=_check_count)
    within: float = attrs.field(default=5.0, validator=_check_within)
    backoff: float = attrs.field(default=0.1, validator=_check_backoff)
    backoff_max: float = attrs.field(
        default=attrs.Factory(_default_backoff_max, takes_self=True), validator=_check_backoff
    )
    jitter: float = attrs.field(default=0.1, validator=_check_jitter)
    reset_after: float | None = attrs.field(default=None, validator=_check_reset_after)

    def __attrs_post_init__(self) -> None:
        if self.backoff > self.backoff_max:
            raise ConfigError(
                f"RestartPolicy backoff={self.backoff:g} is above backoff_max="
                f"{self.backoff_max:g}: pass backoff <= backoff_max"
            )
        if self.mode == "never" or self.max_restarts == 0:
            return
        span = self.max_restarts * self.backoff_max * (1.0 + self.jitter)
        if span >= self.within:
            plural = "" if self.max_restarts == 1 else "s"
            raise ConfigError(
                f"RestartPolicy max_restarts={self.max_restarts} within={self.within:g}s "
                f"with backoff_max={self.backoff_max:g} and jitter={self.jitter:g} could never "
                f"give up on a crash loop: {self.max_restarts} delay{plural} at their longest take "
                f"{span:.4g}s, not less than the window; lower backoff_max below "
                f"{self.within / (self.max_restarts * (1.0 + self.jitter)):.4g}s (or leave it "
                "out), raise within, or lower max_restarts"
            )

    @property
    def reset_time(self) -> float:
        """Seconds a run must stay up to reset the backoff (``reset_after``, or ``within``)."""
        return self.within if self.reset_after is None else self.reset_after

    @property
    def restarts(self) -> bool:
        """Whether this policy ever restarts (its mode is not ``"never"``)."""
        return self.mode != "never"


def as_policy(
    value: RestartMode | RestartPolicy | None,
    *,
    owner: str | None = None,
    what: str = "restart",
) -> RestartPolicy:
    """A `RestartPolicy` from what ``add(..., restart=...)`` accepts.

    Args:
        value: a mode, a policy, or None (``"never"``).
        owner: the component's name, for the error message.
        what: the argument's name in the message (``"restart"``).

    >>> as_policy("always").mode
    'always'
    >>> as_policy(None).mode
    'never'
    """
    if value is None:
        return RestartPolicy()
    if isinstance(value, RestartPolicy):
        return value
    if isinstance(value, str) and value in _MODES:
        return RestartPolicy(value)
    choices = ", ".join(repr(m) for m in _MODES)
    of = "" if owner is None else f" of {owner!r}"
    raise ConfigError(
        f"{what}={value!r}{of} is not a restart policy: use one of {choices} or a RestartPolicy"
    )


class Restarts:
    """The restart state of one component: fed its exits, it grants restarts or gives up.

    >>> r = Restarts(RestartPolicy("on-failure", max_restarts=2, within=10, jitter=0))
    >>> r.exited(now=0.0, failed=True)     # first restart after the backoff
    0.1
    >>> r.exited(now=1.0, failed=True)     # up 0.9 s (< within): consecutive, doubled
    0.2
    >>> r.exited(now=2.0, failed=True) is None, r.gave_up   # a third in 10 s: give up
    (True, True)
    >>> r.count
    2

    Added in 0.3.
    """

    policy: RestartPolicy
    count: int
    """Restarts granted so far."""
    gave_up: bool
    """True once an exit reached the intensity limit; no restart is granted after."""
    next_restart: float | None
    """When the last granted restart happens (the exit time plus the delay), or None."""
    last_delay: float | None
    """The delay of the last granted restart, or None."""
    failures: int
    """Consecutive failures: runs that ended sooner than ``reset_after`` after they began."""

    def __init__(self, policy: RestartPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.count = 0
        self.gave_up = False
        self.next_restart = None
        self.last_delay = None
        self.failures = 0
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 (jitter, not cryptography)
        # Invariant: the exit times of the restarts granted, increasing; only
        # those at most `within` before the latest exit are kept. Windows are
        # closed: any R + 1 granted restarts' exits span strictly more than `within`.
        self._times: collections.deque[float] = collections.deque()
        self._began: float | None = None  # when the current run began (a granted restart's time)

    @property
    def times(self) -> tuple[float, ...]:
        """The exit times of the granted restarts still inside the window."""
        return tuple(self._times)

    def _wants(self, failed: bool) -> bool:
        mode = self.policy.mode
        return not self.gave_up and mode != "never" and (mode == "always" or failed)

    def _recent(self, now: float) -> int:
        low = now - self.policy.within
        return sum(1 for t in self._times if t >= low)

    def would_restart(self, now: float, failed: bool) -> bool:
        """Whether `exited` would grant a restart now, changing nothing."""
        return self._wants(failed) and self._recent(now) < self.policy.max_restarts

    def exited(self, now: float, failed: bool) -> float | None:
        """The delay before restarting, or None: do not restart.

        None when the mode says no (``"never"``; ``"on-failure"`` and the run
        returned) or when the intensity limit is reached: then `gave_up` is
        True and stays so.
        """
        policy = self.policy
        self.next_restart = None
        if not self._wants(failed):
            return None
        while self._times and self._times[0] < now - policy.within:
            self._times.popleft()
        if len(self._times) >= policy.max_restarts:
            self.gave_up = True
            return None
        if self._began is not None and now - self._began >= policy.reset_time:
            self.failures = 0  # it stayed up long enough: the backoff starts over
        delay = min(policy.backoff * 2.0 ** min(self.failures, 64), policy.backoff_max)
        if policy.jitter:
            delay *= 1.0 + self._rng.uniform(-policy.jitter, policy.jitter)
        self.failures += 1
        self._times.append(now)
        self.count += 1
        self.next_restart = self._began = now + delay
        self.last_delay = delay
        return delay
