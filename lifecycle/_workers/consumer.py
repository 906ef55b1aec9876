"""Queue consumers that lose nothing at shutdown: `Consumer` (threads) and `AsyncConsumer` (tasks).

A consumer pulls messages from a `MessageSource` (three calls: ``fetch`` a
batch, ``ack`` what was handled, ``give_back`` what was not) and runs a
handler on each, at most ``concurrency`` at a time. It is an ordinary
component: ``app.add(Consumer(source, handle, concurrency=8))``. Its
``run(token)`` fetches until the token is cancelled (the component's stop
phase begins); its ``stop(token)`` drains what is in flight by the stop
token's deadline. The sequence::

    run(token) ── fetch, hand out, ack ... until the token is cancelled, then:
                  stop fetching at once; give back what was fetched and not
                  started (a fetch that returns later gives its batch back too)
    stop(token) ─ wait for the handlers in flight; ack each as it finishes
                  at the warning time (a margin before the cut): cancel the
                  handlers' tokens, so that `current_token()` tells them
                  at deadline - margin (the cut): give back what still runs,
                  name it in the log, raise `DeadlineExceeded` (exit TIMEOUT)

Why each step, from what breaks in practice:

* **Ack what finishes during the stop.** A consumer that stops acking once
  shutdown begins hands finished work back, and another consumer runs it a
  second time (the familiar "late-ack task requeued after a warm shutdown").
  The source must therefore stay usable until the consumer's ``stop``
  returned: close a connection pool in a component the consumer depends on.
* **Give back the prefetched messages.** Left in a buffer they are stuck
  until the broker's visibility timeout or claim idle time runs out; given
  back, another consumer takes them at once.
* **Fetching stops before the handlers do, acking does not.** Nothing new
  starts once the stop phase begins, but the consumer keeps its source alive
  for the acks of the handlers still running.
* **Cut a margin before the deadline.** At its deadline the runner abandons
  the stop; cutting earlier leaves the time to give the unfinished messages
  back, so another consumer gets them now rather than after a claim timeout,
  and to name them. The margin is ``CUT_MARGIN`` (0.1 s), or a tenth of the
  budget when that is smaller, as for the servers.

Outcomes of one message (each counted in `ConsumerStats`):

* the handler returned: ``Dedupe.done``, then ``ack`` (handled, acked);
* the handler raised: logged with its stack, ``Dedupe.release``, ``give_back``
  (failed, given back); the consumer carries on with the next one. Whether a
  message that keeps failing goes to a dead-letter queue is the source's
  concern (`Message.deliveries` counts its deliveries);
* `Dedupe.claim` said ``DONE``: ``ack`` without handling (duplicates);
* `Dedupe.claim` said ``BUSY`` (another handler holds a live claim on the
  same id, e.g. a source redelivered it while it runs): dropped from this
  batch, neither acked nor handled (busy); the holder's ack or give-back
  settles the message;
* fetched and not started at the stop: ``give_back`` (given back);
* still running at the cut, or ended by its cancelled token: ``give_back``
  and named in `DeadlineExceeded` (cut). A cut handler that finishes later
  is neither acked nor given back again: its message is already back in the
  queue, and its ``Dedupe.done`` turns the redelivery into a duplicate.

A handler's ack or give-back counts as in flight until it returns: the stop
waits for it like for a handler. One still running at the deadline (a broker
that stopped answering) is named in `DeadlineExceeded` ("still acking"), so
the exit code says that handled work may run again. The counts are what the
source confirmed: a ``give_back`` (or ``ack``) that returns an int reports
how many it took; one that returns None took them all; one that raises took
none.

A fetch that raises is logged with its stack and retried after a backoff
(0.05 s, doubling up to 2 s, cut short by the stop): a broker that restarts
must not end the service. With ``max_fetch_failures=n``, the n-th failure in
a row fails the component instead (its ``run`` raises the error; a critical
consumer then shuts the app down with exit code FAILED), after giving back
and draining as for any stop.

Added in 0.3.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Literal, Protocol, runtime_checkable

import attrs

from .._core.errors import DeadlineExceeded, is_cancellation
from .._core.log import get_logger
from .._core.threads import user_code_thread
from .._core.tokens import CancelSource, CancelToken, cancel_in_background, use_token
from .dedupe import Claim, Dedupe, MemoryDedupe, as_claim

__all__ = [
    "CUT_MARGIN",
    "AsyncConsumer",
    "AsyncMessageSource",
    "AsyncQueueSource",
    "Consumer",
    "ConsumerStats",
    "Dedupe",
    "Message",
    "MessageSource",
    "QueueSource",
]

_log = get_logger()

CUT_MARGIN: Final = 0.1
"""Seconds before the stop deadline at which a consumer cuts what still runs.

A tenth of the budget when that is smaller. The handlers' tokens are
cancelled a second margin earlier (by the same rule), so that a handler that
honours its token ends before the cut. The servers use the same margin."""

WAKE: Final = 0.5
"""Seconds: the longest any wait of a consumer's threads or tasks lasts before it looks again.

Every wait is woken by the event it waits for; this bound only keeps a lost
wake-up from turning into a hang."""

BACKOFF_FIRST: Final = 0.05
"""Seconds before the first retry of a fetch that raised; doubles per failure in a row."""

BACKOFF_MAX: Final = 2.0
"""Seconds: the longest wait between two fetch attempts after failures."""

FETCH_GRACE: Final = 1.0
"""Seconds a stop waits for a fetch in progress to return (and its batch to be given back).

A fetch returns early once its token is cancelled, or within about a second
anyway; one that blocks longer does not hold the stop: it is left to return
later, when its batch is given back if the process still lives."""

LOG_CUT_LIMIT: Final = 20
"""Cut messages named one by one in the log line (`DeadlineExceeded.cut` holds them all)."""


@attrs.frozen
class Message:
    """One delivery of one message.

    Attributes:
        id: unique within its source (a Redis entry id ``"1700000000000-0"``).
        body: what the source delivered (a Redis entry's field dict).
        deliveries: times the source delivered it, this one included.

    Example::

        m = Message("1", {"order": 7})
        assert m.deliveries == 1
    """

    id: str
    body: Any
    deliveries: int = 1


@runtime_checkable
class MessageSource(Protocol):
    """One consumer's view of a queue, for `Consumer`.

    Called from the consumer's threads (one fetcher, ``concurrency`` handler
    threads, the stop's thread), so it must be thread-safe.

    Example::

        assert isinstance(QueueSource(queue.Queue()), MessageSource)
    """

    def fetch(self, limit: int, token: CancelToken) -> Sequence[Message]:
        """Up to ``limit`` messages; ``[]`` when there are none.

        Blocks at most about a second, and returns early (``[]`` is fine)
        once ``token`` is cancelled.
        """
        ...

    def ack(self, messages: Sequence[Message]) -> int | None:
        """Handled: never deliver these again.

        May return how many it acked (counted in `ConsumerStats.acked`);
        None means all of them.
        """
        ...

    def give_back(self, messages: Sequence[Message]) -> int | None:
        """Not handled (not started, failed or cut): make them available to another consumer.

        May return how many it gave back (one another consumer took meanwhile
        is not); None means all of them.
        """
        ...


@runtime_checkable
class AsyncMessageSource(Protocol):
    """`MessageSource` as coroutines, for `AsyncConsumer` (all called on its loop).

    Example::

        assert isinstance(AsyncQueueSource(asyncio.Queue()), AsyncMessageSource)
    """

    async def fetch(self, limit: int, token: CancelToken) -> Sequence[Message]:
        """Up to ``limit`` messages; see `MessageSource.fetch`."""
        ...

    async def ack(self, messages: Sequence[Message]) -> int | None:
        """Handled: never deliver these again (how many, or None: all)."""
        ...

    async def give_back(self, messages: Sequence[Message]) -> int | None:
        """Not handled: make them available to another consumer now (how many, or None: all)."""
        ...


@attrs.frozen
class ConsumerStats:
    """What a consumer did so far (a snapshot; `Consumer.stats`).

    Attributes:
        fetched: messages the source delivered.
        handled: handler calls that returned.
        failed: handler calls that raised (given back), cut ones excluded.
        duplicates: messages `Dedupe.claim` found done (acked, not handled).
        acked: messages acknowledged (handled and duplicates).
        given_back: messages the source confirmed given back (not started, failed, cut).
        cut: messages cut at the stop deadline (given back, named).
        in_flight: handlers running now.
        buffered: messages fetched and not started now.
        fetch_errors: fetches that raised.
        source_errors: ``ack``/``give_back``/dedupe calls that raised (logged).
        busy: deliveries `Dedupe.claim` found held by another live claim
            (dropped: neither acked nor handled; the holder settles them).

    Example::

        stats = Consumer(QueueSource(queue.Queue()), print).stats()
        assert stats.handled == 0 and stats.in_flight == 0
    """

    fetched: int = 0
    handled: int = 0
    failed: int = 0
    duplicates: int = 0
    acked: int = 0
    given_back: int = 0
    cut: int = 0
    in_flight: int = 0
    buffered: int = 0
    fetch_errors: int = 0
    source_errors: int = 0
    busy: int = 0


# -- the part both consumers share: sans-I/O bookkeeping under one lock -------------------


def _stop_times(now: float, deadline: float | None) -> tuple[float, float] | tuple[None, None]:
    """(warn, cut): when the handlers' tokens are cancelled, and when what runs is cut.

    The cut: `CUT_MARGIN` before the deadline, or a tenth of the budget when
    smaller; the warning the same rule again before the cut.
    """
    if deadline is None:
        return None, None
    budget = max(deadline - now, 0.0)
    to_cut = min(CUT_MARGIN, budget / 10)
    to_answer = min(CUT_MARGIN, (budget - to_cut) / 10)
    return deadline - to_cut - to_answer, deadline - to_cut


_State = Literal["running", "acking", "giving back", "cut"]


@attrs.define(eq=False)
class _Job:
    """One message taken by a handler."""

    message: Message
    began: float
    source: CancelSource
    # running: the handler runs; acking / giving back: it ended, that call is in
    # progress (the job stays in the ledger's running until the call returns);
    # cut: the stop gave it back (whatever the handler does later is ignored).
    state: _State = "running"
    warned: bool = False  # its token was cancelled by the stop's warning
    cut: bool = False  # ended by that warning: counted and named as cut
    # Later deliveries of the same id that `Dedupe.claim` found BUSY under this job's claim:
    # settled with it (acked with it, or given back with it). Only appended to under the
    # ledger's lock while state == "running", so fixed once the job ended.
    followers: list[Message] = attrs.field(factory=list)
    task: asyncio.Task[None] | None = None

    def batch(self) -> list[Message]:
        """Its message and its followers: what its ack or give_back sends."""
        return [self.message, *self.followers]

    def label(self, now: float) -> str:
        return (
            f"message {self.message.id} (delivery {self.message.deliveries}, "
            f"{max(now - self.began, 0.0):.1f}s)"
        )


Outcome = Literal["handled", "failed", "duplicate", "busy", "cancelled"]
"""How a handler call ended; ``cancelled``: its asyncio task was cancelled from outside;
``duplicate`` / ``busy``: `Dedupe.claim` answered DONE / BUSY (the handler did not run)."""

_Next = Literal["ack", "give_back", "drop", "late"]
"""What follows the end of a handler (`_Ledger.ended`); ``late``: the stop cut it already."""


class _Ledger:
    """What a consumer holds and counts, and every decision about a message.

    Invariants (under ``lock``):

    * a message fetched is in exactly one place: ``buffer`` (not started),
      ``running`` (taken by a handler, or its ack / give_back in progress),
      handed to exactly one of ack / give_back by the method that removed it
      from there, or dropped as ``busy``: then it follows the job of this
      consumer that holds the same id (settled with it), or, held by another
      consumer, it is left to that holder;
    * once ``stopping``, nothing enters ``buffer`` or ``running``;
    * ``len(running) <= concurrency`` and ``len(buffer) + len(running) <=
      concurrency + prefetch``, except that one fetch may overshoot its
      ``limit`` if the source returns more than asked (kept, not dropped).
    """

    def __init__(self, concurrency: int, prefetch: int, notify: Callable[[], None]) -> None:
        # Re-entrant: the drivers wait on a condition of it and call its methods inside.
        self.lock = threading.RLock()
        self.concurrency = concurrency
        self.capacity = concurrency + prefetch
        self.notify = notify  # called under the lock after every change
        self.buffer: collections.deque[Message] = collections.deque()
        self.running: dict[int, _Job] = {}
        self.stopping = False
        self.started = False
        self.fetching = False  # the fetcher is alive
        self.cut_labels: list[str] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.peak = 0  # the most handlers running at once, ever

    def stats(self) -> ConsumerStats:
        with self.lock:
            c = self.counts
            return ConsumerStats(
                fetched=c["fetched"],
                handled=c["handled"],
                failed=c["failed"],
                duplicates=c["duplicates"],
                acked=c["acked"],
                given_back=c["given_back"],
                cut=c["cut"],
                in_flight=sum(1 for j in self.running.values() if j.state == "running"),
                buffered=len(self.buffer),
                fetch_errors=c["fetch_errors"],
                source_errors=c["source_errors"],
                busy=c["busy"],
            )

    def room(self) -> int:
        """How many messages the fetcher may ask for now (0 when stopping)."""
        with self.lock:
            if self.stopping:
                return 0
            return max(self.capacity - len(self.buffer) - len(self.running), 0)

    def fetched(self, batch: Sequence[Message]) -> list[Message]:
        """Take in a fetched batch; what is returned must be given back (the stop began)."""
        with self.lock:
            self.counts["fetched"] += len(batch)
            if self.stopping:
                return list(batch)
            self.buffer.extend(batch)
            self.notify()
            return []

    def take(self, now: float, parent: CancelToken) -> _Job | None:
        """The next message for a free handler, or None (nothing buffered, or stopping)."""
        with self.lock:
            if self.stopping or not self.buffer or len(self.running) >= self.concurrency:
                return None
            job = _Job(self.buffer.popleft(), now, CancelSource(parent))
            self.running[id(job)] = job
            self.peak = max(self.peak, len(self.running))
            self.notify()
            return job

    def begin_stop(self) -> list[Message]:
        """Stop taking in: what was buffered, to give back (empty on a second call)."""
        with self.lock:
            self.stopping = True
            rest = list(self.buffer)
            self.buffer.clear()
            self.notify()
            return rest

    def ended(self, job: _Job, outcome: Outcome, now: float) -> _Next:
        """The handler of ``job`` ended: what to do with its message."""
        with self.lock:
            if job.state == "cut":
                return "late"
            if outcome == "busy":
                self.counts["busy"] += 1
                self.running.pop(id(job), None)
                holder = next(
                    (
                        j
                        for j in self.running.values()
                        if j.message.id == job.message.id and j.state == "running"
                    ),
                    None,
                )
                if holder is not None:
                    # Settled with the holder: acked if it is, given back if it is.
                    holder.followers.append(job.message)
                self.notify()
                return "drop"
            if outcome in ("failed", "cancelled"):
                if job.warned:
                    # Ended by the stop's warning (or failed after it): cut and named.
                    job.cut = True
                    self.counts["cut"] += 1
                    self.cut_labels.append(job.label(now))
                else:
                    self.counts[outcome] += 1
                job.state = "giving back"
                return "give_back"
            self.counts["duplicates" if outcome == "duplicate" else outcome] += 1
            job.state = "acking"
            return "ack"

    def settled(self, job: _Job, acked: int, given_back: int) -> None:
        """The ack or give_back of ``job`` returned (``acked``/``given_back``: confirmed)."""
        with self.lock:
            self.counts["acked"] += acked
            self.counts["given_back"] += given_back
            if job.cut and not given_back:
                self.counts["cut_kept"] += 1
            self.running.pop(id(job), None)
            self.notify()

    def cut_given(self, cut: int, given: int) -> None:
        """The give_back of ``cut`` messages cut by the stop took ``given`` of them."""
        with self.lock:
            self.counts["cut_kept"] += max(cut - given, 0)

    def unsettled(self, now: float) -> tuple[list[str], int]:
        """(labels, kept): what the stop could not settle by its deadline.

        The labels name the jobs whose ack or give_back has not returned and
        that are not named as cut already; kept counts the cut messages the
        source did not take back (its give_back raised, answered fewer, or
        has not returned).
        """
        with self.lock:
            jobs = [j for j in self.running.values() if j.state in ("acking", "giving back")]
            labels = [f"{j.label(now)} still {j.state}" for j in jobs if not j.cut]
            return labels, self.counts["cut_kept"] + sum(1 for j in jobs if j.cut)

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def busy(self) -> bool:
        """Whether a handler runs or settles."""
        with self.lock:
            return bool(self.running)

    def warn(self) -> list[_Job]:
        """The jobs whose tokens the stop's warning cancels (marked warned)."""
        with self.lock:
            jobs = [j for j in self.running.values() if j.state == "running"]
            for job in jobs:
                job.warned = True
            return jobs

    def cut(self, now: float) -> list[_Job]:
        """Cut what still runs: those jobs, removed (their messages to give back)."""
        with self.lock:
            jobs = [j for j in self.running.values() if j.state == "running"]
            for job in jobs:
                job.state = "cut"
                self.running.pop(id(job))
                self.cut_labels.append(job.label(now))
            self.counts["cut"] += len(jobs)
            self.notify()
            return jobs


def _messages_cut(
    component: str, cut: list[str], unsettled: list[str], kept: int
) -> DeadlineExceeded:
    """`DeadlineExceeded` for messages cut or left unsettled, worded for what happened."""
    if not unsettled and not kept:
        return DeadlineExceeded(component, cut, what="gave back {n} unfinished message(s)")
    parts = []
    if len(cut) > kept:
        parts.append(f"gave back {len(cut) - kept} unfinished message(s)")
    if kept:
        parts.append(
            f"could not give back {kept} unfinished message(s) (pending in the source "
            f"until it redelivers them)"
        )
    if unsettled:
        parts.append(
            f"left {len(unsettled)} message(s) still acking or giving back (they may run again)"
        )
    return DeadlineExceeded(component, cut + unsettled, what="; ".join(parts))


_RAISED: Final = object()
"""The answer of an ``ack``/``give_back`` that raised (logged where it is counted)."""


def _confirmed(answer: object, asked: int) -> int:
    """How many of ``asked`` messages an ``ack``/``give_back`` took: an int answer, or all."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        return max(0, min(answer, asked))
    return asked


def _check(concurrency: object, prefetch: object, max_fetch_failures: object) -> None:
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    if prefetch is not None and (
        not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0
    ):
        raise ValueError(f"prefetch must be an int >= 0 or None, got {prefetch!r}")
    if max_fetch_failures is not None and (
        not isinstance(max_fetch_failures, int)
        or isinstance(max_fetch_failures, bool)
        or max_fetch_failures < 1
    ):
        raise ValueError(
            f"max_fetch_failures must be an int >= 1 or None (retry for ever), got "
            f"{max_fetch_failures!r}"
        )


def _backoff(failures: int) -> float:
    return min(BACKOFF_FIRST * 2.0 ** min(failures - 1, 16), BACKOFF_MAX)


def _name_of(handler: object) -> str:
    name = getattr(handler, "__name__", None)
    return f"consumer:{name}" if isinstance(name, str) else "consumer"


class _Base:
    """What `Consumer` and `AsyncConsumer` share: configuration, stats, logging."""

    def __init__(
        self,
        handler: Callable[[Message], object],
        *,
        concurrency: int,
        prefetch: int | None,
        dedupe: Dedupe | None,
        name: str | None,
        max_fetch_failures: int | None,
        notify: Callable[[], None],
    ) -> None:
        _check(concurrency, prefetch, max_fetch_failures)
        self.handler = handler
        self.concurrency = concurrency
        self.prefetch = concurrency if prefetch is None else prefetch
        self.dedupe = dedupe
        self.name = name if name is not None else _name_of(handler)
        self.max_fetch_failures = max_fetch_failures
        self._ledger = _Ledger(concurrency, self.prefetch, notify)
        self._fatal: BaseException | None = None
        self._jobs_source = CancelSource()  # the parent of every message's token
        self._fetch_source: CancelSource | None = None

    def stats(self) -> ConsumerStats:
        """A snapshot of the counts (`ConsumerStats`), safe to call from any thread."""
        return self._ledger.stats()

    @property
    def peak_concurrency(self) -> int:
        """The most handlers that ever ran at once (never above ``concurrency``)."""
        return self._ledger.peak

    def _skip(self, message: Message) -> Outcome | None:
        """`Dedupe.claim`'s verdict: None to run the handler, else the outcome without it.

        A claim that raises (logged) counts as failed: the message is given back.
        """
        if self.dedupe is None:
            return None
        try:
            claim = as_claim(self.dedupe.claim(message))
        except Exception:  # noqa: BLE001 - a failing store must not stop the consumer
            self._ledger.count("source_errors")
            _log.exception(
                "dedupe claim raised; message given back",
                component=self.name,
                message=message.id,
            )
            return "failed"
        if claim is Claim.DONE:
            return "duplicate"
        if claim is Claim.BUSY:
            return "busy"
        return None

    def _decide(
        self, job: _Job, outcome: Outcome, error: BaseException | None
    ) -> Literal["ack", "give_back"] | None:
        """Record the end of ``job``'s handler: what the driver sends for it, if anything."""
        message = job.message
        follow = self._ledger.ended(job, outcome, time.monotonic())
        if follow == "late":
            # Cut: given back already. Record the effect if it happened after all.
            if outcome == "handled":
                self._dedupe_call("done", message)
            elif outcome in ("failed", "cancelled"):
                self._dedupe_call("release", message)
            return None
        if follow == "drop":
            return None  # the live claim is another job's: it settles the message
        if follow == "give_back":
            if error is not None and not job.cut:
                self._log_failure(job, error)
            self._dedupe_call("release", message)
            return "give_back"
        if outcome == "handled":
            self._dedupe_call("done", message)
        return "ack"

    def _dedupe_call(self, what: Literal["done", "release"], message: Message) -> None:
        if self.dedupe is None:
            return
        try:
            getattr(self.dedupe, what)(message)
        except Exception:  # noqa: BLE001 - logged; the message's fate is decided already
            self._ledger.count("source_errors")
            _log.exception(f"dedupe {what} raised", component=self.name, message=message.id)

    def _log_failure(self, job: _Job, error: BaseException) -> None:
        _log.error(
            "handler raised; message given back",
            component=self.name,
            message=job.message.id,
            deliveries=job.message.deliveries,
            exc_info=(type(error), error, error.__traceback__),
        )

    def _log_source_error(self, what: str, messages: Sequence[Message]) -> None:
        self._ledger.count("source_errors")
        _log.exception(
            f"{what} raised",
            component=self.name,
            messages=[m.id for m in messages[:LOG_CUT_LIMIT]],
            hint="the source keeps these pending; it redelivers them later"
            if what == "ack"
            else "the source redelivers them once their claim times out",
        )

    def _fetch_failed(self, error: BaseException, failures: int) -> bool:
        """Log a failed fetch; True when it is the last one allowed (the component fails)."""
        self._ledger.count("fetch_errors")
        last = self.max_fetch_failures is not None and failures >= self.max_fetch_failures
        _log.error(
            "fetch raised",
            component=self.name,
            failures_in_a_row=failures,
            retry_in=None if last else round(_backoff(failures), 3),
            exc_info=(type(error), error, error.__traceback__),
        )
        if last:
            self._fatal = error
        return last

    def _warn_fetching(self, hint: str) -> None:
        if self._ledger.fetching:
            _log.warning("fetch still running at the stop deadline", component=self.name, hint=hint)

    def _idle(self, began: float) -> Callable[[], bool]:
        """What a stop waits for: no handler in flight, and the fetcher ended or out of grace."""
        ledger = self._ledger

        def idle() -> bool:
            fetch_over = not ledger.fetching or time.monotonic() >= began + FETCH_GRACE
            return not ledger.running and fetch_over

        return idle

    def _begin_run(self, token: CancelToken) -> CancelSource:
        """Mark the consumer started (once only); the fetcher's cancel source, under ``token``."""
        ledger = self._ledger
        with ledger.lock:
            if ledger.started:
                raise RuntimeError(
                    f"{self.name!r} ran already; a consumer runs once: make a new one"
                )
            ledger.started = True
            ledger.fetching = True
        self._fetch_source = CancelSource(token)
        return self._fetch_source

    def _take_buffer(self) -> list[Message]:
        """Stop taking in: what was fetched and not started, to give back (logged)."""
        rest = self._ledger.begin_stop()
        if rest:
            _log.info("given back, not started", component=self.name, count=len(rest))
        return rest

    def _take_in(self, batch: Sequence[Message]) -> list[Message]:
        """Take in a fetched batch; what arrived after the stop began, to give back (logged)."""
        late = self._ledger.fetched(batch)
        if late:
            _log.info("given back, fetched after the stop", component=self.name, count=len(late))
        return late

    def _cancel_fetch(self) -> None:
        if self._fetch_source is not None:
            self._fetch_source.cancel("consumer stopping")

    def _stop_plan(
        self, token: CancelToken
    ) -> tuple[float | None, float | None, Callable[[], bool]]:
        """(warn at, cut at, what the stop waits for), from now and ``token``'s deadline."""
        began = time.monotonic()
        warn_at, cut_at = _stop_times(began, token.deadline)
        return warn_at, cut_at, self._idle(began)

    def _given(self, messages: Sequence[Message], job: _Job | None, answer: object) -> int:
        """Count what a give_back took (`_RAISED`: it raised); that count."""
        given = 0 if answer is _RAISED else _confirmed(answer, len(messages))
        if job is not None:
            self._ledger.settled(job, 0, given)
        else:
            self._ledger.count("given_back", given)
        return given

    def _acked(self, job: _Job, answer: object) -> None:
        """Count what an ack took (`_RAISED`: it raised)."""
        acked = 0 if answer is _RAISED else _confirmed(answer, len(job.batch()))
        self._ledger.settled(job, acked, 0)

    def _finish_stop(self, unsettled: tuple[list[str], int]) -> None:
        """Log and raise what the stop cut or could not settle (``_Ledger.unsettled``)."""
        labels, kept = unsettled
        cut = list(self._ledger.cut_labels)
        if not cut and not labels:
            return
        hint = "raise the stop_timeout, or make the handler honour lifecycle.current_token()"
        if not labels and not kept:
            _log.error(
                "messages cut at the stop deadline; given back",
                component=self.name,
                count=len(cut),
                cut=cut[:LOG_CUT_LIMIT],
                hint=hint,
            )
        else:
            _log.error(
                "messages cut or unsettled at the stop deadline",
                component=self.name,
                count=len(cut) + len(labels),
                cut=cut[:LOG_CUT_LIMIT],
                given_back=max(len(cut) - kept, 0),
                not_given_back=kept,
                unsettled=labels[:LOG_CUT_LIMIT],
                hint=f"{hint}; an ack or give_back that did not return is pending in the "
                f"source: it redelivers those messages later",
            )
        raise _messages_cut(self.name, cut, labels, kept)


# -- the threaded consumer ---------------------------------------------------------------


class Consumer(_Base):
    """A queue consumer component on threads: one fetcher and ``concurrency`` handler threads.

    Args:
        source: where messages come from (`MessageSource`, thread-safe).
        handler: ``handler(message)``, called in a handler thread. Inside it
            ``lifecycle.current_token()`` is that message's token, cancelled
            shortly before the stop's deadline cuts the message.
        concurrency: handlers running at once, at most.
        prefetch: messages fetched ahead of the free handlers (default:
            ``concurrency``). Given back at the stop, never lost.
        dedupe: a `Dedupe` store for an exactly-once effect (`MemoryDedupe`).
        name: the name in logs and in `DeadlineExceeded` (default
            ``"consumer:<handler name>"``); ``app.add`` names the component.
        max_fetch_failures: fail the component at that many failed fetches in
            a row (default None: log, back off, retry for ever).

    Example::

        q = queue.Queue()
        for n in range(3):
            q.put(n)
        seen = []
        consumer = Consumer(QueueSource(q), lambda m: seen.append(m.body), concurrency=2)
        with lifecycle.CancelSource() as run_source:
            worker = threading.Thread(target=consumer.run, args=(run_source.token,))
            worker.start()
            q.join()                       # every message acked
            run_source.cancel("done")      # what the runner does at the stop phase
            worker.join(5)
        consumer.stop(lifecycle.CancelSource(timeout=5).token)
        assert sorted(seen) == [0, 1, 2] and consumer.stats().acked == 3

    Added in 0.3.
    """

    def __init__(
        self,
        source: MessageSource,
        handler: Callable[[Message], object],
        *,
        concurrency: int = 1,
        prefetch: int | None = None,
        dedupe: Dedupe | None = None,
        name: str | None = None,
        max_fetch_failures: int | None = None,
    ) -> None:
        super().__init__(
            handler,
            concurrency=concurrency,
            prefetch=prefetch,
            dedupe=dedupe,
            name=name,
            max_fetch_failures=max_fetch_failures,
            notify=self._wake,
        )
        # The ledger's lock is the condition's: a wait sees every change.
        self._cond = threading.Condition(self._ledger.lock)
        self.source = source
        self._threads: list[threading.Thread] = []

    def __repr__(self) -> str:
        return f"<Consumer {self.name!r} concurrency={self.concurrency}>"

    def _wake(self) -> None:
        self._cond.notify_all()  # called by the ledger under its lock

    def _wait(self, until: Callable[[], bool], deadline: float | None) -> bool:
        """Wait (under the lock) until ``until()`` or ``deadline``; the last ``until()``."""
        while not until():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            bound = WAKE if deadline is None else min(WAKE, deadline - now)
            self._cond.wait(bound)
        return True

    # -- run -------------------------------------------------------------------

    def run(self, token: CancelToken) -> None:
        """Fetch and handle until ``token`` is cancelled; then stop fetching and give back.

        Returns at once when the token is cancelled, without waiting for a
        fetch in progress (what it returns later is given back) or for the
        handlers (``stop`` waits for them).

        Raises:
            RuntimeError: the consumer ran already (a consumer runs once).
            Exception: the last fetch error, after ``max_fetch_failures`` in a row.
        """
        fetch = self._begin_run(token)
        threads = [threading.Thread(target=user_code_thread(self._fetch_loop), daemon=True)]
        threads[0].name = f"lifecycle:{self.name}.fetch"
        for i in range(self.concurrency):
            thread = threading.Thread(target=user_code_thread(self._handle_loop), daemon=True)
            thread.name = f"lifecycle:{self.name}.handler-{i}"
            threads.append(thread)
        self._threads = threads
        try:
            for thread in threads:
                thread.start()
            while not fetch.token.wait(WAKE):
                pass
        finally:
            fetch.cancel("consumer stopping")
            self._give_back_buffer()
        if self._fatal is not None:
            raise self._fatal

    def _fetch_cancelled(self) -> bool:
        fetch = self._fetch_source
        return fetch is not None and fetch.token.cancelled

    def _give_back_buffer(self) -> None:
        rest = self._take_buffer()
        if rest:
            self._give_back(rest)

    def _give_back(self, messages: Sequence[Message], job: _Job | None = None) -> int:
        """Give ``messages`` back; how many the source confirmed (counted)."""
        answer: object
        try:
            answer = self.source.give_back(messages)
        except Exception:  # noqa: BLE001 - logged; the source redelivers them later
            self._log_source_error("give_back", messages)
            answer = _RAISED
        return self._given(messages, job, answer)

    def _ack(self, job: _Job) -> None:
        answer: object
        try:
            answer = self.source.ack(job.batch())
        except Exception:  # noqa: BLE001 - logged; the source redelivers it
            self._log_source_error("ack", job.batch())
            answer = _RAISED
        self._acked(job, answer)

    def _fetch_loop(self) -> None:
        ledger = self._ledger
        fetch = self._fetch_source
        assert fetch is not None
        failures = 0
        try:
            while True:
                with ledger.lock:
                    self._wait(lambda: ledger.stopping or ledger.room() > 0, None)
                if fetch.token.cancelled:
                    return
                want = ledger.room()
                if want <= 0:
                    continue
                try:
                    batch = list(self.source.fetch(want, fetch.token))
                except BaseException as error:  # noqa: BLE001 - logged, backed off, retried
                    if is_cancellation(error) and self._fetch_cancelled():
                        return
                    failures += 1
                    if self._fetch_failed(error, failures):
                        fetch.cancel("fetch failed")
                        return
                    fetch.token.wait(_backoff(failures))
                    continue
                failures = 0
                late = self._take_in(batch)
                if late:
                    self._give_back(late)
        finally:
            with ledger.lock:
                ledger.fetching = False
                self._wake()

    def _handle_loop(self) -> None:
        ledger = self._ledger
        while True:
            with ledger.lock:
                self._wait(lambda: ledger.stopping or bool(ledger.buffer), None)
            job = ledger.take(time.monotonic(), self._jobs_source.token)
            if job is None:
                if ledger.stopping:
                    return
                continue
            try:
                self._process(job)
            finally:
                job.source.close()

    def _process(self, job: _Job) -> None:
        error: BaseException | None = None
        outcome = self._skip(job.message)
        if outcome is None:
            try:
                with use_token(job.source.token):
                    self.handler(job.message)
                outcome = "handled"
            except BaseException as exc:  # noqa: BLE001 - counted, logged, given back
                error, outcome = exc, "failed"
        self._settle(job, outcome, error)

    def _settle(self, job: _Job, outcome: Outcome, error: BaseException | None) -> None:
        then = self._decide(job, outcome, error)
        if then == "ack":
            self._ack(job)
        elif then == "give_back":
            self._give_back(job.batch(), job)

    # -- stop ------------------------------------------------------------------

    def stop(self, token: CancelToken) -> None:
        """Finish what is in flight by ``token``'s deadline; give back and name what is not.

        Raises:
            DeadlineExceeded: messages were still running at the cut (they
                were given back; ``.cut`` names them): the exit code is TIMEOUT.
        """
        ledger = self._ledger
        if not ledger.started:
            return
        self._cancel_fetch()
        self._give_back_buffer()
        warn_at, cut_at, idle = self._stop_plan(token)
        with ledger.lock:
            done = self._wait(idle, warn_at)
        if not done and ledger.busy():
            for job in ledger.warn():
                cancel_in_background(job.source, "stop deadline")
            with ledger.lock:
                done = self._wait(idle, cut_at)
        cut = ledger.cut(time.monotonic()) if not done else []
        if cut:
            for job in cut:
                cancel_in_background(job.source, "stop deadline")
                self._dedupe_call("release", job.message)
            ledger.cut_given(len(cut), self._give_back([m for job in cut for m in job.batch()]))
        if ledger.busy() and cut_at is not None and token.deadline is not None:
            # An ack or give_back in progress: half-way from the cut to the deadline.
            with ledger.lock:
                self._wait(lambda: not ledger.running, (cut_at + token.deadline) / 2)
        self._warn_fetching(
            "a fetch must return within about a second once its token is "
            "cancelled; what it returns is given back while the process lives"
        )
        self._finish_stop(ledger.unsettled(time.monotonic()))


# -- the asyncio consumer -----------------------------------------------------------------


class _Signal:
    """Wake every coroutine waiting for a change (asyncio, one loop)."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, until: Callable[[], bool], deadline: float | None) -> bool:
        while not until():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            bound = WAKE if deadline is None else min(WAKE, deadline - now)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait((waiter,), timeout=bound)
            finally:
                self._waiters.discard(waiter)
        return True


AsyncHandler = Callable[[Message], Awaitable[object]]


class AsyncConsumer(_Base):
    """`Consumer` for asyncio: an async source and an ``async def`` handler, tasks on one loop.

    The same arguments, sequence and counts as `Consumer`; ``run`` and
    ``stop`` are coroutines (so ``lifecycle.run`` picks the asyncio runner).
    At the cut the handler tasks still running are also cancelled. Its
    ``dedupe`` must be a `MemoryDedupe`: a store's calls run on the loop, and
    one that waits on the network would hold the loop and the stop (a
    ``TypeError`` says so).

    Example::

        async def main() -> list[int]:
            q: asyncio.Queue[int] = asyncio.Queue()
            for n in range(3):
                q.put_nowait(n)
            seen = []

            async def handle(m):
                seen.append(m.body)

            consumer = AsyncConsumer(AsyncQueueSource(q), handle, concurrency=2)
            with lifecycle.CancelSource() as run_source:
                task = asyncio.create_task(consumer.run(run_source.token))
                await q.join()
                run_source.cancel("done")
                await task
            await consumer.stop(lifecycle.CancelSource(timeout=5).token)
            return sorted(seen)

        assert asyncio.run(main()) == [0, 1, 2]

    Added in 0.3.
    """

    def __init__(
        self,
        source: AsyncMessageSource,
        handler: AsyncHandler,
        *,
        concurrency: int = 1,
        prefetch: int | None = None,
        dedupe: Dedupe | None = None,
        name: str | None = None,
        max_fetch_failures: int | None = None,
    ) -> None:
        if dedupe is not None and not isinstance(dedupe, MemoryDedupe):
            raise TypeError(
                f"AsyncConsumer: dedupe must be a MemoryDedupe, got {type(dedupe).__name__}: "
                f"its claim/done/release run on the event loop, and a store that waits on "
                f"the network (RedisDedupe) blocks the loop, and with it the stop, while it "
                f"is slow or stalled; use Consumer (threads) with that store, or leave "
                f"dedupe unset and check the mark from the handler with an async client"
            )
        self._signal = _Signal()
        super().__init__(
            handler,
            concurrency=concurrency,
            prefetch=prefetch,
            dedupe=dedupe,
            name=name,
            max_fetch_failures=max_fetch_failures,
            notify=self._signal.notify,
        )
        self.source = source
        self.async_handler = handler
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<AsyncConsumer {self.name!r} concurrency={self.concurrency}>"

    async def run(self, token: CancelToken) -> None:
        """As `Consumer.run`, on the running loop."""
        fetch = self._begin_run(token)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._fetch_loop(), name=f"lifecycle:{self.name}.fetch")]
        tasks += [
            loop.create_task(self._handle_loop(), name=f"lifecycle:{self.name}.handler-{i}")
            for i in range(self.concurrency)
        ]
        self._tasks.update(tasks)
        for task in tasks:
            task.add_done_callback(self._tasks.discard)
        try:
            while not await fetch.token.wait_async(WAKE):
                pass
        finally:
            fetch.cancel("consumer stopping")
            await self._give_back_buffer()
        if self._fatal is not None:
            raise self._fatal

    async def _give_back_buffer(self) -> None:
        rest = self._take_buffer()
        if rest:
            await self._give_back(rest)

    async def _give_back(self, messages: Sequence[Message], job: _Job | None = None) -> int:
        """Give ``messages`` back; how many the source confirmed (counted)."""
        answer: object
        try:
            answer = await self.source.give_back(messages)
        except Exception:  # noqa: BLE001 - logged; the source redelivers them later
            self._log_source_error("give_back", messages)
            answer = _RAISED
        return self._given(messages, job, answer)

    async def _ack(self, job: _Job) -> None:
        answer: object
        try:
            answer = await self.source.ack(job.batch())
        except Exception:  # noqa: BLE001 - logged; the source redelivers it
            self._log_source_error("ack", job.batch())
            answer = _RAISED
        self._acked(job, answer)

    async def _fetch_loop(self) -> None:
        ledger = self._ledger
        fetch = self._fetch_source
        assert fetch is not None
        failures = 0
        try:
            while True:
                await self._signal.wait(lambda: ledger.stopping or ledger.room() > 0, None)
                if fetch.token.cancelled:
                    return
                want = ledger.room()
                if want <= 0:
                    continue
                try:
                    batch = list(await self.source.fetch(want, fetch.token))
                except Exception as error:  # noqa: BLE001 - logged, backed off, retried
                    failures += 1
                    if self._fetch_failed(error, failures):
                        fetch.cancel("fetch failed")
                        return
                    await fetch.token.wait_async(_backoff(failures))
                    continue
                failures = 0
                late = self._take_in(batch)
                if late:
                    await self._give_back(late)
        finally:
            with ledger.lock:
                ledger.fetching = False
                self._signal.notify()

    async def _handle_loop(self) -> None:
        ledger = self._ledger
        while True:
            await self._signal.wait(lambda: ledger.stopping or bool(ledger.buffer), None)
            job = ledger.take(time.monotonic(), self._jobs_source.token)
            if job is None:
                if ledger.stopping:
                    return
                continue
            job.task = asyncio.current_task()
            try:
                await self._process(job)
            finally:
                job.task = None
                job.source.close()

    async def _process(self, job: _Job) -> None:
        message = job.message
        error: BaseException | None = None
        outcome = self._skip(message)
        if outcome is None:
            try:
                with use_token(job.source.token):
                    await self.async_handler(message)
                outcome = "handled"
            except BaseException as exc:
                error, outcome = exc, "failed"
                task = asyncio.current_task()
                if job.state == "cut":
                    await self._settle(job, outcome, error)
                    raise  # the stop cancelled this task: end it
                if isinstance(exc, asyncio.CancelledError) and task and task.cancelling():
                    # The task itself is cancelled (its loop ends): give back, then end.
                    _log.warning(
                        "handler task cancelled; message given back",
                        component=self.name,
                        message=message.id,
                    )
                    await self._settle(job, "cancelled", None)
                    raise
        await self._settle(job, outcome, error)

    async def _settle(self, job: _Job, outcome: Outcome, error: BaseException | None) -> None:
        then = self._decide(job, outcome, error)
        if then == "ack":
            await self._ack(job)
        elif then == "give_back":
            await self._give_back(job.batch(), job)

    async def _end_tasks(self, token: CancelToken) -> None:
        """Cancel the consumer's tasks still alive (a fetch that overran) and wait, bounded."""
        rest = [t for t in self._tasks if not t.done()]
        if not rest:
            return
        for task in rest:
            task.cancel()
        left = WAKE if token.deadline is None else token.deadline - time.monotonic()
        if left > 0:
            await asyncio.wait(rest, timeout=min(WAKE, left / 2))

    async def stop(self, token: CancelToken) -> None:
        """As `Consumer.stop`; the handler tasks still running at the cut are cancelled too."""
        ledger = self._ledger
        if not ledger.started:
            return
        self._cancel_fetch()
        await self._give_back_buffer()
        warn_at, cut_at, idle = self._stop_plan(token)
        done = await self._signal.wait(idle, warn_at)
        if not done and ledger.busy():
            for job in ledger.warn():
                cancel_in_background(job.source, "stop deadline")
            done = await self._signal.wait(idle, cut_at)
        cut = ledger.cut(time.monotonic()) if not done else []
        if cut:
            tasks = []
            for job in cut:
                cancel_in_background(job.source, "stop deadline")
                self._dedupe_call("release", job.message)
                if job.task is not None:
                    job.task.cancel()
                    tasks.append(job.task)
            batch = [m for job in cut for m in job.batch()]
            ledger.cut_given(len(cut), await self._give_back(batch))
            left = None if token.deadline is None else token.deadline - time.monotonic()
            if tasks and (left is None or left > 0):
                await asyncio.wait(tasks, timeout=WAKE if left is None else min(WAKE, left / 2))
        if ledger.busy() and cut_at is not None and token.deadline is not None:
            await self._signal.wait(lambda: not ledger.running, (cut_at + token.deadline) / 2)
        self._warn_fetching(
            "a fetch must return within about a second once its token is "
            "cancelled; it is cancelled now, and what it had fetched stays pending "
            "in the source until it redelivers it"
        )
        # Read before the tasks are cancelled: an ack cancelled now never returns.
        unsettled = ledger.unsettled(time.monotonic())
        await self._end_tasks(token)
        self._finish_stop(unsettled)


# -- in-process sources --------------------------------------------------------------------

_ids = itertools.count(1)  # ids of the messages the in-process sources wrap: unique per process

POLL: Final = 0.05
"""Seconds: how often `QueueSource.fetch` looks at its token while the queue is empty."""

FETCH_WAIT: Final = 1.0
"""Seconds an in-process source's fetch waits for a first message before returning ``[]``."""


def _wrap(item: object) -> Message:
    return item if isinstance(item, Message) else Message(str(next(_ids)), item)


class QueueSource:
    """A `MessageSource` over a stdlib `queue.Queue` (one process, threads).

    Items put on the queue are message bodies (each wrapped in a `Message`
    with a fresh id as it is fetched) or `Message` objects. ``ack`` calls
    ``task_done`` per message, so ``queue.join()`` returns once every message
    was handled or skipped as a duplicate. ``give_back`` puts each message
    back **at the end** of the queue (`queue.Queue` has no put-at-front; the
    order of the given-back messages among themselves is kept) with
    ``deliveries`` one higher, then calls ``task_done`` for its earlier get.
    A bounded queue that is full blocks ``give_back`` until there is room.

    Example::

        q = queue.Queue()
        q.put("hello")
        source = QueueSource(q)
        (m,) = source.fetch(10, lifecycle.CancelSource().token)
        source.give_back([m])
        (again,) = source.fetch(10, lifecycle.CancelSource().token)
        assert (again.id, again.deliveries) == (m.id, 2)
        source.ack([again])

    Added in 0.3.
    """

    def __init__(self, q: queue.Queue[Any], *, wait: float = FETCH_WAIT) -> None:
        self.queue = q
        self.wait = wait

    def __repr__(self) -> str:
        return f"<QueueSource qsize={self.queue.qsize()}>"

    def fetch(self, limit: int, token: CancelToken) -> list[Message]:
        """Up to ``limit`` messages: waits up to ``wait`` for the first (polling the token)."""
        end = time.monotonic() + self.wait
        first: object = None
        while True:
            if token.cancelled:
                return []
            left = end - time.monotonic()
            if left <= 0:
                return []
            try:
                first = self.queue.get(timeout=min(POLL, left))
                break
            except queue.Empty:
                continue
        batch = [_wrap(first)]
        while len(batch) < limit:
            try:
                batch.append(_wrap(self.queue.get_nowait()))
            except queue.Empty:
                break
        return batch

    def ack(self, messages: Sequence[Message]) -> None:
        """Handled: ``task_done`` for each."""
        for _ in messages:
            self.queue.task_done()

    def give_back(self, messages: Sequence[Message]) -> None:
        """Put each back at the end of the queue, ``deliveries + 1``."""
        for m in messages:
            self.queue.put(attrs.evolve(m, deliveries=m.deliveries + 1))
            self.queue.task_done()


class AsyncQueueSource:
    """An `AsyncMessageSource` over an `asyncio.Queue` (one loop).

    As `QueueSource`: bodies are wrapped in messages, ``ack`` is
    ``task_done``, ``give_back`` puts back **at the end** with ``deliveries``
    one higher. ``fetch`` waits for the first message or the token's
    cancellation, whichever comes first, at most ``wait`` seconds.

    Example::

        async def main() -> int:
            q: asyncio.Queue[str] = asyncio.Queue()
            q.put_nowait("hello")
            source = AsyncQueueSource(q)
            (m,) = await source.fetch(10, lifecycle.CancelSource().token)
            await source.ack([m])
            return q.qsize()

        assert asyncio.run(main()) == 0

    Added in 0.3.
    """

    def __init__(self, q: asyncio.Queue[Any], *, wait: float = FETCH_WAIT) -> None:
        self.queue = q
        self.wait = wait

    def __repr__(self) -> str:
        return f"<AsyncQueueSource qsize={self.queue.qsize()}>"

    async def fetch(self, limit: int, token: CancelToken) -> list[Message]:
        """Up to ``limit`` messages; ``[]`` after ``wait`` seconds, early on cancellation."""
        if token.cancelled:
            return []
        if self.queue.empty():
            getter = asyncio.ensure_future(self.queue.get())
            cancelled = asyncio.ensure_future(token.wait_async(self.wait))
            try:
                await asyncio.wait((getter, cancelled), return_when=asyncio.FIRST_COMPLETED)
            finally:
                cancelled.cancel()
                if not getter.done():
                    getter.cancel()
            if getter.cancelled() or not getter.done():
                return []
            batch = [_wrap(getter.result())]
        else:
            batch = [_wrap(self.queue.get_nowait())]
        while len(batch) < limit and not self.queue.empty():
            batch.append(_wrap(self.queue.get_nowait()))
        return batch

    async def ack(self, messages: Sequence[Message]) -> None:
        """Handled: ``task_done`` for each."""
        for _ in messages:
            self.queue.task_done()

    async def give_back(self, messages: Sequence[Message]) -> None:
        """Put each back at the end of the queue, ``deliveries + 1``."""
        for m in messages:
            await self.queue.put(attrs.evolve(m, deliveries=m.deliveries + 1))
            self.queue.task_done()
