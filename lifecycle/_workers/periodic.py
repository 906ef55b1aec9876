"""Periodic jobs: `PeriodicWorker` runs a function every ``interval`` seconds until shutdown.

It is a run-style component (``@app.every(60)`` registers one): its
``run(token)`` waits for the next slot of its `Schedule`, runs the job,
and again, until the token is cancelled at the component's stop phase.
What it promises, each from a way periodic loops go wrong in practice:

* **It never overlaps itself.** The next run begins after the previous one
  ended, at the next slot of the grid ``start + k * interval``; a run that
  overran some slots is followed by one run at the next slot (the skipped
  ones are counted), never by a burst that "catches up".
* **It does not drift.** Slots come from the grid, not from "sleep
  interval after the run": after a thousand runs the thousandth still
  begins at ``start + 1000 * interval`` (plus at most ``jitter``).
* **A shutdown ends the wait at once.** It waits with ``token.wait`` (or
  ``await token.wait_async``), which returns the moment the token is
  cancelled; a job in progress gets the same token, to honour between and
  during its steps. ``time.sleep`` in a loop would hold the stop phase
  for up to an interval.
* **A run that raises does not end the job** (``on_error="continue"``):
  logged with its stack, counted, and the next slot comes as usual. With
  ``on_error="fail"`` the error ends ``run``: the component fails (a
  critical one shuts the app down), or its restart policy restarts it.

The next run and the last outcome (ok or error, duration, when) are in
``app.report()`` and the health endpoint's ``/status``.

Added in 0.3.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Callable
from typing import Any, get_args

from .._core.errors import ConfigError, describe_error, is_cancellation
from .._core.log import get_logger
from .._core.periodic import First, OnError, Schedule
from .._core.tokens import CancelToken

__all__ = ["PeriodicWorker"]

_log = get_logger()


class PeriodicWorker:
    """Runs ``job(token)`` at every slot of a `Schedule` until its token is cancelled.

    Args:
        job: the function; sync (run in the worker's thread) or ``async
            def`` (awaited in the loop). It gets the worker's run token.
        interval: seconds between slots.
        jitter: each run begins up to this many seconds after its slot.
        first: ``"now"``, ``"after"`` (one interval) or a delay in seconds.
        on_error: ``"continue"`` (log, count, go on) or ``"fail"`` (``run``
            raises the error).
        name: for the log; `App.every` sets the registered name.
        clock: the monotonic clock (a fake one in tests).
        rng: the jitter's random source (a seeded one in tests).

    ``run`` is a coroutine function when ``job`` is one. Register it with
    ``app.add(worker, run=worker.run)`` — or let ``@app.every`` do it:

    >>> from lifecycle._core.tokens import CancelSource
    >>> calls = []
    >>> w = PeriodicWorker(lambda token: calls.append(1), interval=3600.0)
    >>> source = CancelSource()
    >>> w.job = lambda token: (calls.append(1), source.cancel("done"))
    >>> w.run(source.token)   # runs once ("now"), then the cancelled token ends the wait
    >>> len(calls), w.schedule.runs
    (1, 1)

    Added in 0.3.
    """

    def __init__(
        self,
        job: Callable[[CancelToken], Any],
        *,
        interval: float,
        jitter: float = 0.0,
        first: First = "now",
        on_error: OnError = "continue",
        name: str = "periodic",
        is_async: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if on_error not in get_args(OnError):
            raise ConfigError(
                f"on_error={on_error!r} of periodic job {name!r} is unknown: use "
                "'continue' (log and go on) or 'fail' (fail the component)"
            )
        self.job = job
        self.schedule = Schedule(interval, jitter=jitter, first=first, rng=rng)
        self.on_error: OnError = on_error
        self.name = name
        self.is_async = inspect.iscoroutinefunction(job) if is_async is None else is_async
        self._clock = clock
        self.run: Callable[[CancelToken], Any] = self._run_async if self.is_async else self._run

    def __repr__(self) -> str:
        return f"<PeriodicWorker {self.name!r} every {self.schedule.interval:g}s>"

    def _first(self) -> float:
        s = self.schedule
        now = self._clock()
        return s.begin(now) if s.base is None else s.resume(now)

    def _failed(self, error: BaseException, started: float) -> float:
        """Log and count a run that raised; the next run's time (or raise, on_error="fail").

        A cancellation while the worker's own token is live (the job's own
        deadline, ``CancelSource(token, timeout=...)``) is such a run error too.
        """
        ended = self._clock()
        described = describe_error(error)
        at = self.schedule.ran(started, ended, described)
        _log.error(
            "periodic run raised",
            component=self.name,
            duration=round(ended - started, 6),
            errors=self.schedule.errors,
            on_error=self.on_error,
            exc_info=(type(error), error, error.__traceback__),
        )
        if self.on_error == "fail":
            raise error
        return at

    def _run(self, token: CancelToken) -> None:
        s = self.schedule
        try:
            at = self._first()
            while True:
                # Invariant: `at` is no earlier than the end of the last run.
                delay = at - self._clock()
                if token.wait(delay) if delay > 0 else token.cancelled:
                    return
                s.started()
                started = self._clock()
                try:
                    self.job(token)
                except Exception as error:  # noqa: BLE001 - the job's errors are logged and counted
                    at = self._failed(error, started)
                    continue
                except BaseException as error:
                    if not is_cancellation(error):
                        raise
                    if token.cancelled:
                        return  # the shutdown cut the run: no outcome to record
                    # Invariant: only the worker's token ends the worker; a
                    # cancellation of the job's own making is a run error.
                    at = self._failed(error, started)
                    continue
                at = s.ran(started, self._clock())
        finally:
            s.halted()

    async def _run_async(self, token: CancelToken) -> None:
        s = self.schedule
        try:
            at = self._first()
            while True:
                delay = at - self._clock()
                if await token.wait_async(delay) if delay > 0 else token.cancelled:
                    return
                s.started()
                started = self._clock()
                try:
                    result = self.job(token)
                    if inspect.isawaitable(result):
                        await result
                except Exception as error:  # noqa: BLE001 - the job's errors are logged and counted
                    at = self._failed(error, started)
                    continue
                except BaseException as error:
                    if not is_cancellation(error):
                        raise
                    if token.cancelled:
                        return
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # the task itself is cancelled: let it end
                    at = self._failed(error, started)
                    continue
                at = s.ran(started, self._clock())
        finally:
            s.halted()
